"""Ranking metrics against hand-computed and brute-force references."""

import math

import numpy as np
import pytest

from neo_jax.eval import metrics


def test_metrics_hand_computed():
  ranked = np.array([[5, 3, 9], [1, 2, 3], [7, -1, -1]])
  relevant = [[3], [4], [7, 8]]
  # request 0: hit at rank 2; request 1: miss; request 2: one of two relevant at rank 1.
  assert metrics.hit_rate_at_k(ranked, relevant, 1) == pytest.approx(1 / 3)
  assert metrics.hit_rate_at_k(ranked, relevant, 3) == pytest.approx(2 / 3)
  assert metrics.recall_at_k(ranked, relevant, 1) == pytest.approx((0 + 0 + 1 / 2) / 3)
  assert metrics.recall_at_k(ranked, relevant, 3) == pytest.approx((1 + 0 + 1 / 2) / 3)
  ndcg0 = 1 / math.log2(3)
  ndcg2 = 1.0 / (1 + 1 / math.log2(3))
  assert metrics.ndcg_at_k(ranked, relevant, 3) == pytest.approx((ndcg0 + 0 + ndcg2) / 3)
  # NDCG@1 of request 2: its one slot holds a relevant item, ideal DCG@1 = 1.
  assert metrics.ndcg_at_k(ranked, relevant, 1) == pytest.approx((0 + 0 + 1) / 3)
  assert metrics.mrr(ranked, relevant) == pytest.approx((1 / 2 + 0 + 1) / 3)
  all_k = metrics.ranking_metrics(ranked, relevant)
  assert set(all_k) == {f'{m}@{k}' for m in ('hr', 'recall', 'ndcg') for k in (1, 5, 10, 30)
                        } | {'mrr'}
  # k beyond the ranking's width: the missing slots are misses.
  assert all_k['hr@30'] == pytest.approx(2 / 3)
  assert all_k['ndcg@30'] == pytest.approx((ndcg0 + 0 + ndcg2) / 3)


def test_metrics_several_relevant_hand_computed():
  # 4 relevant, 2 found at ranks 1 and 4 of 5.
  ranked = np.array([[10, 0, 1, 11, 2]])
  relevant = [[10, 11, 12, 13]]
  got = metrics.ranking_metrics(ranked, relevant, ks=(1, 5))
  assert got['hr@1'] == 1.0 and got['recall@1'] == pytest.approx(0.25)
  assert got['recall@5'] == pytest.approx(0.5)
  dcg = 1 + 1 / math.log2(5)
  idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4) + 1 / math.log2(5)
  assert got['ndcg@5'] == pytest.approx(dcg / idcg)
  assert got['ndcg@1'] == pytest.approx(1.0)
  assert got['mrr'] == 1.0


def test_metrics_exclusion_closes_up_and_keeps_relevant():
  ranked = np.array([[4, 9, 2, 7, -1], [3, 1, 5, 6, 8]])
  relevant = [[7], [3]]
  # Request 0 excludes 4 and 2 (its history): 7 moves from rank 4 to rank 2. Request 1
  # "excludes" its own target 3 too, which must be kept (history minus positives).
  exclude = [[4, 2], [3, 1]]
  closed = metrics.apply_exclusion(ranked, relevant, exclude)
  np.testing.assert_array_equal(closed, [[9, 7, -1, -1, -1], [3, 5, 6, 8, -1]])
  got = metrics.ranking_metrics(ranked, relevant, ks=(1, 2), exclude=exclude)
  assert got['hr@1'] == pytest.approx(0.5) and got['hr@2'] == 1.0
  assert got['ndcg@2'] == pytest.approx((1 / math.log2(3) + 1) / 2)
  assert got['mrr'] == pytest.approx((1 / 2 + 1) / 2)
  plain = metrics.ranking_metrics(ranked, relevant, ks=(2,))
  assert plain['hr@2'] == pytest.approx(0.5)


def test_metrics_brute_force_random():
  rng = np.random.default_rng(0)
  ranked = np.stack([rng.permutation(50)[:30] for _ in range(40)])
  relevant = [list(rng.choice(50, size=rng.integers(1, 4), replace=False)) for _ in range(40)]
  got = metrics.ranking_metrics(ranked, relevant)
  rrs = []
  for r, rel in zip(ranked, relevant):
    first = [i for i, x in enumerate(r) if x in rel]
    rrs.append(1 / (first[0] + 1) if first else 0.0)
  assert got['mrr'] == pytest.approx(np.mean(rrs))
  for k in (1, 5, 10, 30):
    hrs, recalls, ndcgs = [], [], []
    for r, rel in zip(ranked, relevant):
      top = list(r[:k])
      hits = [x in rel for x in top]
      hrs.append(float(any(hits)))
      recalls.append(sum(hits) / len(rel))
      dcg = sum(1 / math.log2(i + 2) for i, h in enumerate(hits) if h)
      idcg = sum(1 / math.log2(i + 2) for i in range(min(len(rel), k)))
      ndcgs.append(dcg / idcg)
    assert got[f'hr@{k}'] == pytest.approx(np.mean(hrs))
    assert got[f'recall@{k}'] == pytest.approx(np.mean(recalls))
    assert got[f'ndcg@{k}'] == pytest.approx(np.mean(ndcgs))


def test_metrics_reject_bad_input():
  with pytest.raises(ValueError, match='relevance sets'):
    metrics.recall_at_k(np.zeros((2, 3), int), [[1]], 3)
  with pytest.raises(ValueError, match='no relevant'):
    metrics.ndcg_at_k(np.array([[0, 1, 2]]), [[]], 3)
  with pytest.raises(ValueError, match='twice'):
    metrics.ranking_metrics(np.array([[1, 2, 1]]), [[1]])
  with pytest.raises(ValueError, match='exclusion sets'):
    metrics.ranking_metrics(np.array([[1, 2]]), [[1]], exclude=[[], []])
  with pytest.raises(ValueError, match='empty slot'):
    metrics.ranking_metrics(np.array([[1, -2]]), [[1]])
  with pytest.raises(ValueError, match='integer'):
    metrics.ranking_metrics(np.array([[1.0, 2.0]]), [[1]])
