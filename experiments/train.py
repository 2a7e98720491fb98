r"""Training only: data, SIDs, tokenizer, examples, then NEO's two stages, resumable.

  python -m experiments.train --config=experiments/configs/quickstart.py --workdir=W

Rerunning the same command after an interruption (even SIGKILL) resumes each stage from its
last checkpoint in W (`--config.capability.checkpoint_every=N` sets the cadence) and reaches
the same final loss as an uninterrupted run. Ends by printing the `result.json` object.
"""

import json

from absl import app

from experiments import common
from experiments import report
from neo_jax import pipeline


def main(argv):
  common.start(argv)
  cfg = common.CONFIG.value
  _, _, facts = pipeline.run_training(cfg, common.WORKDIR.value)
  # The last stage that ran (capability, unless it had 0 steps and stages are not merged).
  last = [s for s in ('grounding', 'capability') if f'train/{s}_final_loss' in facts]
  if not last:
    raise ValueError('no training stage ran: grounding.steps and capability.steps are both 0')
  facts['final_loss'] = facts[f'train/{last[-1]}_final_loss']
  report.write_result(common.WORKDIR.value, facts)
  print(json.dumps(facts))


if __name__ == '__main__':
  app.run(main)
