"""Exports a TFDS-built dataset (experiments.build_dataset) to the generic format.

  python -m experiments.export_dataset --built=W/tfds/movielens100k --workdir=W2

Writes W2/data (the generic format: items.jsonl, interactions.csv, ...) and W2/result.json
(counts, the data directory), and prints the result object last.
"""

from __future__ import annotations

import json
import os

from absl import flags

from experiments import common
from neo_jax.catalog import tfds_builders
from neo_jax.run import rundir

flags.adopt_module_key_flags(common)
_BUILT = flags.DEFINE_string('built', None, 'A built dataset folder: <workdir>/tfds/<name>.',
                             required=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory: the dataset goes to '
                               '<workdir>/data.', required=True)
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace a non-empty <workdir>/data.')


def main(argv):
  common.start(argv)
  out = os.path.join(_WORKDIR.value, 'data')
  ds = tfds_builders.export_generic(_BUILT.value, out, overwrite=_OVERWRITE.value)
  result = {'name': ds.name, 'data_dir': out, 'num_items': len(ds.catalog),
            'num_users': len(ds.interactions.user_names),
            'num_interactions': len(ds.interactions), 'num_queries': len(ds.queries),
            'num_user_profiles': len(ds.users)}
  rundir.write_result(_WORKDIR.value, result)
  print(json.dumps(result, sort_keys=True))


if __name__ == '__main__':
  common.run(main)
