"""What the pipeline entry points (`quickstart`, `train`) share: their flags and start-up."""

import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for every artifact of the run.',
                              required=True)
DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Call jax.distributed.initialize() first (multi-host TPU/GPU).')
CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(__file__), 'configs', 'quickstart.py'),
    'Experiment config file.', lock_config=True)


def start(argv) -> None:
  """Rejects stray arguments, quiets orbax's per-step INFO logs, joins a multi-host run."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  if DISTRIBUTED.value:
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize()
