"""Ranking metrics and baselines against hand-computed and brute-force references."""

import math

import numpy as np
import pytest

from neo_jax.catalog.splits import leave_one_out
from neo_jax.catalog.types import Catalog, Dataset, Interactions, Query
from neo_jax.baselines import base as baselines
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


def _dataset():
  """The 6-item catalog and 4 users whose sequences follow 'jazz' and 'apple' words."""
  cat = _catalog()
  seqs = {'u0': [0, 1, 4, 5], 'u1': [2, 3, 4, 3], 'u2': [0, 0, 1, 5, 1], 'u3': [3, 2]}
  users, items, ts = [], [], []
  for u, (name, seq) in enumerate(seqs.items()):
    users += [u] * len(seq)
    items += seq
    ts += list(range(len(seq)))
  inter = Interactions(list(seqs), np.array(users, np.int32), np.array(items, np.int32),
                       np.array(ts, np.int64))
  return Dataset('tiny', cat, inter), leave_one_out(inter)


def test_rank_scores_brute_force():
  cat = _catalog()
  rng = np.random.default_rng(1)
  scores = rng.integers(0, 3, size=(20, len(cat))).astype(float)  # many ties
  types = [(None, 'a', 'b')[i % 3] for i in range(20)]
  exclude = [list(rng.choice(len(cat), size=i % 3, replace=False)) for i in range(20)]
  got = baselines.rank_scores(cat, scores, types, 5, exclude)
  assert got.dtype == np.int32 and got.shape == (20, 5)
  for b in range(20):
    allowed = [n for n in range(len(cat)) if (types[b] is None or cat.type_of(n) == types[b])
               and n not in exclude[b]]
    expect = sorted(allowed, key=lambda n: (-scores[b, n], n))[:5]
    assert got[b].tolist() == expect + [-1] * (5 - len(expect))
  with pytest.raises(ValueError, match='unknown target type'):
    baselines.rank_scores(cat, scores[:1], ['c'], 3)
  with pytest.raises(ValueError, match='NaN'):
    baselines.rank_scores(cat, np.full((1, len(cat)), np.nan), [None], 3)


def test_popularity_fit_counts_training_split_only():
  ds, split = _dataset()
  pop = baselines.Popularity()
  facts = pop.fit(ds, split)
  # Training = all but the last two events of users with >= 3 events; u3 (2 events) kept whole.
  train = [0, 1] + [2, 3] + [0, 0, 1] + [3, 2]
  assert facts['train_interactions'] == len(train)
  counts = np.bincount(train, minlength=6)
  got = pop.rank_recommend(['u0', np.array([1]), split.test[0]], ['a', 'b', None], 6)
  for row, t in zip(got, ['a', 'b', None]):
    allowed = [n for n in range(6) if t is None or ds.catalog.type_of(n) == t]
    expect = sorted(allowed, key=lambda n: (-counts[n], n))
    assert row.tolist() == expect + [-1] * (6 - len(expect))
  excl = pop.rank_recommend([[0]], ['a'], 3, exclude=[[0, 1]])
  assert excl.tolist() == [[5, -1, -1]]
  with pytest.raises(NotImplementedError, match='sasrec|does not'):
    type('S', (baselines.Popularity,), {'tasks': ('search',)})(
        ds.catalog, np.zeros(1, int)).rank_recommend([[0]], ['a'], 1)


def test_baseline_rejects_bad_requests():
  ds, split = _dataset()
  with pytest.raises(RuntimeError, match='fit'):
    baselines.Popularity().rank_recommend([[0]], ['a'], 1)
  pop = baselines.Popularity()
  pop.fit(ds, split)
  with pytest.raises(KeyError, match='unknown user'):
    pop.rank_recommend(['nobody'], ['a'], 1)
  with pytest.raises(ValueError, match='history rows'):
    pop.rank_recommend([[99]], ['a'], 1)
  with pytest.raises(ValueError, match='target types'):
    pop.rank_recommend([[0], [1]], ['a'], 1)


def test_bm25_fit_tunes_on_validation_only():
  ds, split = _dataset()
  bm = baselines.BM25()
  facts = bm.fit(ds, split)
  grid = {last: facts[f'valid_ndcg@10/last={last}'] for last in baselines.BM25.LAST_GRID}
  assert facts['last'] == max(grid, key=lambda last: (grid[last], -last))
  # The validation figure is the metric of the chosen setting, recomputed independently.
  bm.last = facts['last']
  ranked = bm.rank_recommend(split.valid, [ds.catalog.type_of(t.target) for t in split.valid],
                             10)
  assert metrics.ndcg_at_k(ranked, [[t.target] for t in split.valid], 10) == pytest.approx(
      facts['valid_ndcg@10'])
  q = [Query('jazz night', (3,)), Query('green apple', (1,))]
  facts = baselines.BM25().fit(ds, split, valid_queries=q)
  assert facts['valid_search_ndcg@10'] == 1.0
