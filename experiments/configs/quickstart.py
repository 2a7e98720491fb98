"""Quickstart: the whole NEO pipeline, small, on a 2-core CPU in about 12 minutes.

MovieLens-100k (TFDS build from the installed recbole package) -> hashed TF-IDF item features
-> residual k-means SIDs (3 levels x 16 codes + a disambiguation level) -> sentencepiece + SID
tokens -> a 1M-parameter Llama-style decoder -> grounding stage (100 steps) -> capability stage
(900 steps) -> constrained beam search on 300 test users and 300 held-out generated queries,
beside popularity and BM25 (untuned: their default hyperparameters).

The decoder starts from random weights (the pretrained SmolLM2 backbone is
quickstart_smollm2.py), so learning rates are those of training from scratch, not the paper's
fine-tuning rates (1e-3 grounding / 1e-4 capability). Every key, its default and its meaning:
`python -m experiments.quickstart --print_config`; override any, e.g.
`--config.capability.steps=200`.
"""

import ml_collections

from neo_jax.run import config


def get_config() -> ml_collections.ConfigDict:
  c = config.defaults()
  c.data.dataset = 'movielens100k'
  c.model.update(dict(preset='tiny', d_model=128, num_layers=4, num_heads=4, num_kv_heads=2,
                      head_dim=32, mlp_dim=384))
  # The quickstart compares with the two simplest baselines at their default settings, and
  # skips the steerability and understanding measures (experiments.evaluate runs them).
  c.experiment.baselines = ('popularity', 'bm25')
  c.experiment.tune_baselines = False
  c.experiment.steer_requests = 0
  c.experiment.understanding_requests = 0
  return c
