"""Ranking metrics over full rankings (no sampled negatives).

`ranked_BxK` holds each request's top-K catalog rows, best first (-1 = empty slot);
`relevant` holds each request's set of relevant rows. With one relevant item per request
(next-item recommendation) Recall@K is the hit rate HR@K.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _hits(ranked_BxK: np.ndarray, relevant: Sequence[Sequence[int]], k: int) -> np.ndarray:
  ranked = np.asarray(ranked_BxK)[:, :k]
  if len(relevant) != ranked.shape[0]:
    raise ValueError(f'{ranked.shape[0]} rankings but {len(relevant)} relevance sets')
  hits = np.zeros(ranked.shape, bool)
  for b, rel in enumerate(relevant):
    if len(rel) == 0:
      raise ValueError(f'request {b} has no relevant items')
    hits[b] = np.isin(ranked[b], np.asarray(list(rel))) & (ranked[b] >= 0)
  return hits


def recall_at_k(ranked_BxK, relevant, k: int) -> float:
  """Mean over requests of |relevant in top k| / min(|relevant|, k)."""
  hits = _hits(ranked_BxK, relevant, k)
  denom = np.array([min(len(r), k) for r in relevant], np.float64)
  return float(np.mean(hits.sum(1) / denom))


def ndcg_at_k(ranked_BxK, relevant, k: int) -> float:
  """Mean NDCG@k with binary gains: sum_i hit_i / log2(i + 2), divided by the ideal DCG."""
  hits = _hits(ranked_BxK, relevant, k)
  discounts = 1.0 / np.log2(np.arange(hits.shape[1]) + 2.0)
  dcg = (hits * discounts).sum(1)
  ideal = np.array([discounts[:min(len(r), k)].sum() for r in relevant])
  return float(np.mean(dcg / ideal))


def ranking_metrics(ranked_BxK, relevant, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
  out = {}
  for k in ks:
    out[f'recall@{k}'] = recall_at_k(ranked_BxK, relevant, k)
    out[f'ndcg@{k}'] = ndcg_at_k(ranked_BxK, relevant, k)
  return out
