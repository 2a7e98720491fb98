"""Ablation 'stages merged' (the paper's ablation table): one training stage instead of two.

`train.merge_stages` makes neo_jax.run.training.train run a single stage, 'capability', with full
fine-tuning on the capability examples plus the grounding examples not already among them,
for grounding.steps + capability.steps steps (as many updates as the two stages together)
with the capability stage's optimiser settings (see neo_jax.run.training.stage_plan).

Everything else is experiments/configs/quickstart.py.
"""

import ml_collections

from experiments.configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  c = quickstart.get_config()
  c.train.merge_stages = True
  return c
