"""Config of experiments/build_sids.py: the paper's SID settings, scaled to the catalog.

The paper: residual k-means, M=4 levels, K=256 codes per level, one quantiser per entity
type. K is clamped per type to its number of items (MovieLens-100k has 1682 movies).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # --dataset=synthetic generates this catalog in memory.
  c.synthetic = ml_collections.ConfigDict(dict(items_per_type=2000, num_users=500,
                                               num_queries=100, seed=0))
  # cf_dim / cf_window: the collaborative encoder's size and co-occurrence window.
  c.encoder = ml_collections.ConfigDict(dict(tfidf_dim=128, batch_size=64, cf_dim=64,
                                             cf_window=3))
  c.sid = ml_collections.ConfigDict(dict(
      levels=3,                  # residual k-means levels (+1 disambiguation level)
      k=64,                      # codes per level (int, or edit to a per-type dict)
      collision='disambiguate',  # or 'popular' (the paper's: most popular item keeps it)
      method='rkmeans',          # or the ablations 'random', 'atomic'
      iters=50,                  # maximum Lloyd passes (epochs if minibatch) per level
      tol=1e-4,                  # stop a level when a pass gains less than this (relative)
      batch_size=0,              # > 0: stream items in batches (big catalogs)
      minibatch=False,           # mini-batch updates (with batch_size)
      shard=True,                # shard items over every local device when there are several
      popularity='train',        # 'train' (leave-one-out train split counts), 'all', 'none'
  ))
  return c
