"""Ablation 'random initialisation' (the paper's ablation table): the SmolLM2 quickstart
(experiments/configs/quickstart_smollm2.py) with a randomly initialised decoder of the same
shape (preset smollm2-135m) instead of the pretrained SmolLM2-135M weights. The tokenizer is
still SmolLM2's (with the SID block), so only the starting weights differ.

The tiny preset of experiments/configs/quickstart.py always starts from random weights, so for
it this ablation is the quickstart itself; there is nothing to change.

Only `model.random_init` changes (read by neo_jax.run.stages.build_model).
"""

import ml_collections

from experiments.configs import quickstart_smollm2


def get_config() -> ml_collections.ConfigDict:
  c = quickstart_smollm2.get_config()
  c.model.random_init = True
  return c
