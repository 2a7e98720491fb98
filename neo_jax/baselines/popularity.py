"""The popularity baseline: items ranked by their number of training interactions, whatever
the history or query (within the requested type, like every baseline)."""

from __future__ import annotations

import numpy as np

from neo_jax.baselines import base


class Popularity(base.Baseline):
  """Items by their number of training interactions (`split.train`); nothing to tune."""

  name = 'popularity'

  def __init__(self):
    super().__init__()
    self.counts: np.ndarray | None = None  # (N,) float64 training interactions per item

  def _fit(self, dataset, split, validator):
    del validator  # nothing to tune
    self.counts = np.bincount(base.train_rows(split),
                              minlength=len(dataset.catalog)).astype(np.float64)
    return {'train_interactions': int(self.counts.sum())}

  def recommend_scores(self, histories):
    return np.broadcast_to(self.counts, (len(histories), self.counts.size))

  def search_scores(self, queries):
    return np.broadcast_to(self.counts, (len(queries), self.counts.size))
