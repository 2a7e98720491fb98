"""Config of experiments/build_sids.py: the paper's SID settings, scaled to the catalog.

The paper: residual k-means, M=4 levels, K=256 codes per level, one quantiser per entity
type, from text embeddings. Here: MiniLM embeddings, 3 levels x 64 codes (+1 disambiguation
level), K clamped per type to its number of items (MovieLens-100k has 1682 movies).
"""

import ml_collections

from neo_jax.run import config


def get_config() -> ml_collections.ConfigDict:
  c = config.defaults()
  c.data.synthetic.update(dict(items_per_type=2000, num_users=500, num_queries=100))
  c.sid.update(dict(encoder='minilm', levels=3, k=64, iters=50, tol=1e-4))
  return c
