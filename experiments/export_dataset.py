"""Exports a TFDS-built dataset (experiments.build_dataset) to the generic format.

  python -m experiments.export_dataset --built=W/tfds/movielens100k --out=D

Prints a one-line JSON summary (counts, output directory) last.
"""

from __future__ import annotations

import json
import sys

from absl import app
from absl import flags

from neo_jax.catalog import tfds_builders
from neo_jax.catalog.types import DatasetError

_BUILT = flags.DEFINE_string('built', None, 'A built dataset folder: <data_dir>/<name>.',
                             required=True)
_OUT = flags.DEFINE_string('out', None, 'Directory to write in the generic format.',
                           required=True)
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace a non-empty --out.')


def main(argv):
  del argv
  try:
    ds = tfds_builders.export_generic(_BUILT.value, _OUT.value, overwrite=_OVERWRITE.value)
  except (DatasetError, FileExistsError) as e:
    print(f'cannot export: {e}', file=sys.stderr)
    sys.exit(1)
  print(json.dumps({'name': ds.name, 'out': _OUT.value, 'num_items': len(ds.catalog),
                    'num_users': len(ds.interactions.user_names),
                    'num_interactions': len(ds.interactions), 'num_queries': len(ds.queries),
                    'num_user_profiles': len(ds.users)}, sort_keys=True))


if __name__ == '__main__':
  app.run(main)
