"""Ranking metrics over full rankings of the catalog (no sampled negatives).

A ranker scores every catalog item (of the requested type) and returns each request's top-K
catalog rows, best first, as `ranked_BxK` (int, -1 = empty slot, e.g. when a type has fewer
than K items). `relevant` holds each request's relevant rows (one for next-item
recommendation, one or several for search). Per request, with hit_i = 1 when the item at
rank i (0-based) is relevant:

  HR@k      1 if any of the top k is relevant, else 0 (hit rate);
  Recall@k  |relevant in top k| / |relevant|;
  NDCG@k    sum_{i<k} hit_i / log2(i + 2), divided by the ideal DCG of min(|relevant|, k)
            relevant items at the top (binary gains);
  MRR       1 / (1 + rank of the first relevant item) within the given ranking, 0 when none
            is in it: it is MRR@K with K the ranking's width, so compare methods at the same K
            (beam search returns as many items as it has beams).
With one relevant item HR@k = Recall@k. Every metric is averaged over requests.

Exclusion (the `exclude` argument): the protocol of this project is full ranking with
NOTHING excluded by default, because in data with repeat consumption the next item can be one
already seen. A protocol that excludes items (RecBole's general recommenders exclude the
user's training items; its sequential models, SASRec included, exclude nothing) passes them
per request: they are removed from the ranking, which closes up, before the metrics are taken;
relevant items are never excluded (as RecBole: history minus positives). Removal after
truncation can leave fewer than k items, so a ranker should also apply the same exclusion
when it ranks (every baseline's `rank_recommend(..., exclude=...)` does); then this step
changes nothing and only guards against a ranker that did not.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_KS = (1, 5, 10, 30)


def _check(ranked_BxK, relevant: Sequence[Sequence[int]], exclude) -> np.ndarray:
  ranked = np.asarray(ranked_BxK)
  if ranked.ndim != 2:
    raise ValueError(f'ranked must be (requests, K), got shape {ranked.shape}')
  if not np.issubdtype(ranked.dtype, np.integer):
    raise ValueError(f'ranked must hold integer catalog rows, got dtype {ranked.dtype}')
  if len(relevant) != ranked.shape[0]:
    raise ValueError(f'{ranked.shape[0]} rankings but {len(relevant)} relevance sets')
  if exclude is not None and len(exclude) != ranked.shape[0]:
    raise ValueError(f'{ranked.shape[0]} rankings but {len(exclude)} exclusion sets')
  if (ranked < -1).any():
    raise ValueError(f'ranked holds {int(ranked.min())}; rows are >= 0, -1 marks an empty slot')
  for b, row in enumerate(ranked):
    items = row[row >= 0]
    if np.unique(items).size != items.size:
      raise ValueError(f'request {b} ranks an item twice: {row.tolist()}')
  return ranked


def apply_exclusion(ranked_BxK, relevant: Sequence[Sequence[int]],
                    exclude: Sequence[Sequence[int]]) -> np.ndarray:
  """(B, K) int64: each row without its excluded items (minus the relevant ones), closed up
  to the left and padded with -1."""
  ranked = _check(ranked_BxK, relevant, exclude)
  out = np.full(ranked.shape, -1, np.int64)
  for b, (row, rel, exc) in enumerate(zip(ranked, relevant, exclude)):
    drop = np.setdiff1d(np.asarray(list(exc), np.int64), np.asarray(list(rel), np.int64))
    kept = row[(row >= 0) & ~np.isin(row, drop)]
    out[b, :kept.size] = kept
  return out


def _hits(ranked_BxK: np.ndarray, relevant: Sequence[Sequence[int]]) -> np.ndarray:
  """(B, K) bool: whether each ranked item is relevant to its request."""
  hits = np.zeros(ranked_BxK.shape, bool)
  for b, rel in enumerate(relevant):
    if len(rel) == 0:
      raise ValueError(f'request {b} has no relevant items')
    hits[b] = np.isin(ranked_BxK[b], np.asarray(list(rel))) & (ranked_BxK[b] >= 0)
  return hits


def per_request_metrics(ranked_BxK, relevant: Sequence[Sequence[int]],
                        ks: Sequence[int] = DEFAULT_KS,
                        exclude: Sequence[Sequence[int]] | None = None
                        ) -> dict[str, np.ndarray]:
  """Each metric for each request: {'hr@k', 'recall@k', 'ndcg@k' for k in ks, 'mrr'} -> (B,)
  float64 (see the module docstring for definitions and `exclude`)."""
  if exclude is not None:
    ranked = apply_exclusion(ranked_BxK, relevant, exclude)
  else:
    ranked = _check(ranked_BxK, relevant, None)
  if any(int(k) < 1 for k in ks):
    raise ValueError(f'every k must be >= 1, got {list(ks)}')
  hits = _hits(ranked, relevant)
  n_rel = np.array([len(set(r)) for r in relevant], np.float64)
  width = max([ranked.shape[1]] + [int(k) for k in ks])
  discounts = 1.0 / np.log2(np.arange(width) + 2.0)
  cum = np.cumsum(discounts)
  out = {}
  for k in ks:
    h = hits[:, :k]
    out[f'hr@{k}'] = h.any(1).astype(np.float64)
    out[f'recall@{k}'] = h.sum(1) / n_rel
    dcg = (h * discounts[:h.shape[1]]).sum(1)
    ideal = cum[np.minimum(n_rel, k).astype(np.int64) - 1]
    out[f'ndcg@{k}'] = dcg / ideal
  out['mrr'] = hits.any(1) / (hits.argmax(1) + 1.0)
  return out


def ranking_metrics(ranked_BxK, relevant: Sequence[Sequence[int]],
                    ks: Sequence[int] = DEFAULT_KS,
                    exclude: Sequence[Sequence[int]] | None = None) -> dict[str, float]:
  """Mean over requests of every metric of `per_request_metrics`."""
  return {name: float(v.mean()) if v.size else float('nan')
          for name, v in per_request_metrics(ranked_BxK, relevant, ks, exclude).items()}


def recall_at_k(ranked_BxK, relevant, k: int) -> float:
  """Mean over requests of |relevant in top k| / |relevant|."""
  return ranking_metrics(ranked_BxK, relevant, (k,))[f'recall@{k}']


def hit_rate_at_k(ranked_BxK, relevant, k: int) -> float:
  """Share of requests with at least one relevant item in the top k."""
  return ranking_metrics(ranked_BxK, relevant, (k,))[f'hr@{k}']


def ndcg_at_k(ranked_BxK, relevant, k: int) -> float:
  """Mean NDCG@k with binary gains (ideal DCG over min(|relevant|, k) items)."""
  return ranking_metrics(ranked_BxK, relevant, (k,))[f'ndcg@{k}']


def mrr(ranked_BxK, relevant) -> float:
  """Mean reciprocal rank of the first relevant item within the given ranking (0 if absent)."""
  return ranking_metrics(ranked_BxK, relevant, (1,))['mrr']
