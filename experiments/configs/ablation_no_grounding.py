"""Ablation 'no grounding' (the paper's ablation table): the quickstart without the grounding
stage; the capability stage starts from the freshly extended vocabulary (SID rows initialised
to the mean of the text rows) and still sees the grounding examples among its own.

Everything else is experiments/configs/quickstart.py; only `grounding.steps` changes.
"""

import ml_collections

from experiments.configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  c = quickstart.get_config()
  c.grounding.steps = 0
  return c
