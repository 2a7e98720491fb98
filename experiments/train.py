r"""Training only: data, SIDs, tokenizer, examples, then NEO's two stages, resumable.

  python -m experiments.train --config=experiments/configs/quickstart.py --workdir=W

Rerunning the same command after an interruption (even SIGKILL) resumes each stage from its
last checkpoint in W (`--config.capability.checkpoint_every=N` sets the cadence) and reaches
the same final loss as an uninterrupted run. Ends by printing the `result.json` object.
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
  _, _, facts = pipeline.run_training(_CONFIG.value, _WORKDIR.value)
  last = 'capability' if _CONFIG.value.capability.steps > 0 else 'grounding'
  facts['final_loss'] = facts[f'train/{last}_final_loss']
  report.write_result(_WORKDIR.value, facts)
  print(json.dumps(facts))


if __name__ == '__main__':
  app.run(main)
