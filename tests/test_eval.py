"""Ranking metrics and baselines against hand-computed and brute-force references."""

import math

import numpy as np
import pytest

from neo_jax.catalog.types import Catalog
from neo_jax.eval import baselines, metrics


def test_metrics_hand_computed():
  ranked = np.array([[5, 3, 9], [1, 2, 3], [7, -1, -1]])
  relevant = [[3], [4], [7, 8]]
  # request 0: hit at rank 2; request 1: miss; request 2: one of two relevant at rank 1.
  assert metrics.recall_at_k(ranked, relevant, 1) == pytest.approx((0 + 0 + 1 / 1) / 3)
  assert metrics.recall_at_k(ranked, relevant, 3) == pytest.approx((1 + 0 + 1 / 2) / 3)
  ndcg0 = 1 / math.log2(3)
  ndcg2 = 1.0 / (1 + 1 / math.log2(3))
  assert metrics.ndcg_at_k(ranked, relevant, 3) == pytest.approx((ndcg0 + 0 + ndcg2) / 3)


def test_metrics_brute_force_random():
  rng = np.random.default_rng(0)
  ranked = np.stack([rng.permutation(50)[:10] for _ in range(40)])
  relevant = [list(rng.choice(50, size=rng.integers(1, 4), replace=False)) for _ in range(40)]
  for k in (1, 5, 10):
    recalls, ndcgs = [], []
    for r, rel in zip(ranked, relevant):
      top = list(r[:k])
      hits = [x in rel for x in top]
      recalls.append(sum(hits) / min(len(rel), k))
      dcg = sum(1 / math.log2(i + 2) for i, h in enumerate(hits) if h)
      idcg = sum(1 / math.log2(i + 2) for i in range(min(len(rel), k)))
      ndcgs.append(dcg / idcg)
    assert metrics.recall_at_k(ranked, relevant, k) == pytest.approx(np.mean(recalls))
    assert metrics.ndcg_at_k(ranked, relevant, k) == pytest.approx(np.mean(ndcgs))


def test_metrics_reject_mismatched_input():
  with pytest.raises(ValueError, match='relevance sets'):
    metrics.recall_at_k(np.zeros((2, 3), int), [[1]], 3)
  with pytest.raises(ValueError, match='no relevant'):
    metrics.ndcg_at_k(np.zeros((1, 3), int), [[]], 3)


def _catalog():
  titles = ['red apple pie', 'green apple', 'blue sky jazz', 'jazz night', 'apple jazz fusion',
            'quiet night']
  types = np.array([0, 0, 1, 1, 1, 0], np.int32)
  n = len(titles)
  return Catalog(ids=[str(i) for i in range(n)], type_names=('a', 'b'), type_index=types,
                 titles=titles, descriptions=[''] * n, tags=[()] * n, attributes=[{}] * n,
                 popularity=np.full(n, np.nan, np.float32))


def test_popularity_ranks_by_count_within_type():
  cat = _catalog()
  pop = baselines.Popularity(cat, np.array([5, 5, 5, 1, 0, 0, 3, 3, 4]))
  ranked = pop.rank(['a', 'b', None], k=3)
  np.testing.assert_array_equal(ranked[0], [5, 0, 1])
  np.testing.assert_array_equal(ranked[1], [3, 4, 2])
  np.testing.assert_array_equal(ranked[2], [5, 0, 3])


def test_bm25_matches_formula():
  cat = _catalog()
  bm = baselines.BM25(cat)
  docs = [baselines.words(cat.text(i)) for i in range(len(cat))]
  avg = np.mean([len(d) for d in docs])
  query = 'apple jazz apple'
  expect = []
  for d in docs:
    s = 0.0
    for w in set(baselines.words(query)):
      df = sum(w in x for x in docs)
      idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
      tf = d.count(w)
      s += idf * tf * 2.2 / (tf + 1.2 * (1 - 0.75 + 0.75 * len(d) / avg))
    expect.append(s)
  np.testing.assert_allclose(bm.scores([query])[0], expect, rtol=1e-9)
  assert bm.rank([query], ['b'], k=1)[0, 0] == 4  # 'apple jazz fusion' among type b
  hist = bm.rank_for_histories([np.array([3])], ['a'], k=1)
  assert hist[0, 0] == 5  # 'jazz night' -> 'quiet night'
