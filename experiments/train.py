r"""Training only: data, SIDs, tokenizer, examples, then NEO's two stages, resumable.

  python -m experiments.train --config=experiments/configs/quickstart.py --workdir=W

Rerunning the same command after an interruption (even SIGKILL) resumes each stage from its
last checkpoint in W (`--config.capability.checkpoint_every=N` sets the cadence) and reaches
the same final loss as an uninterrupted run. Ends by printing the `result.json` object.

The paper's ablations are configs: experiments/configs/ablation_no_grounding.py,
ablation_stages_merged.py, ablation_random_init.py (SmolLM2 shape, random weights). A config
may also set task mixture weights (tasks.mixture), validation during training
(<stage>.eval_every, train.best_metric, train.restore_best, train.valid_requests) and LoRA
for the capability stage (capability.lora_rank, lora_alpha); see neo_jax/pipeline.train.
"""

import json

from absl import app

from experiments import common
from experiments import report
from neo_jax.run import stages as pipeline


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
