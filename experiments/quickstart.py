r"""The main job: the whole NEO pipeline, small, end to end, and a results table.

  python -m experiments.quickstart --workdir=runs/quickstart
  python -m experiments.quickstart --workdir=W --config.capability.steps=200

Writes its artifacts under --workdir and ends by printing the `result.json` object.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import report
from neo_jax import pipeline

_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for every artifact of the run.',
                               required=True)
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Call jax.distributed.initialize() first (multi-host TPU/GPU).')
_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(__file__), 'configs', 'quickstart.py'),
    'Experiment config file.', lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  if _DISTRIBUTED.value:
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize()
  out = pipeline.run(_CONFIG.value, _WORKDIR.value)
  print(report.results_table(out['result']))
  print(report.generations_text(out['generations']))
  report.write_result(_WORKDIR.value, out['result'])
  print(json.dumps(out['result']))


if __name__ == '__main__':
  app.run(main)
