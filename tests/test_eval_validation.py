"""The validation protocol object: requests, subsets, exclusion and figures it hands a ranker."""

import numpy as np
import pytest

from neo_jax.catalog.splits import Target
from neo_jax.catalog.types import Catalog, Query
from neo_jax.eval import metrics
from neo_jax.eval.validation import Validator, recommend_metrics, search_metrics


def _catalog(n=8):
  return Catalog(ids=[str(i) for i in range(n)], type_names=('a', 'b'),
                 type_index=(np.arange(n) % 2).astype(np.int32),
                 titles=[f't{i}' for i in range(n)], descriptions=[''] * n, tags=[()] * n,
                 attributes=[{}] * n, popularity=np.full(n, np.nan, np.float32))


class Recorder:
  """A ranking function that returns fixed rows and records what it was asked."""

  def __init__(self, rows):
    self.rows = rows
    self.calls = []

  def __call__(self, requests, types, k, exclude=None):
    self.calls.append((requests, types, k, exclude))
    return np.tile(np.asarray(self.rows)[:k], (len(requests), 1))


def _targets():
  return [Target(f'u{i}', np.array([i % 8, (i + 1) % 8], np.int32), (i + 3) % 8)
          for i in range(20)]


def test_recommend_hands_histories_types_and_exclusions():
  cat = _catalog()
  # Each target's type (its parity) differs from its last history item's.
  targets = [Target(f'u{i}', np.array([i % 8, (i + 1) % 8], np.int32), (i + 4) % 8)
             for i in range(20)]
  rank = Recorder([3, 5, 7, 1, 0, 2, 4, 6])
  v = Validator(cat, targets, exclude_history=True, ks=(1, 10))
  got = v.recommend(rank)
  (requests, types, k, exclude), = rank.calls
  # The type asked is the last history item's (request-time knowledge), never the target's:
  # here they differ for every request.
  assert k == 10 and types == [cat.type_of(int(t.history[-1])) for t in targets]
  assert all(cat.type_of(t.target) != ty for t, ty in zip(targets, types))
  assert all(np.array_equal(r, t.history) for r, t in zip(requests, targets))
  assert all(np.array_equal(e, t.history) for e, t in zip(exclude, targets))
  ranked = rank(requests, types, 10)
  assert got == metrics.ranking_metrics(ranked, [[t.target] for t in targets], (1, 10),
                                        exclude=exclude)
  Validator(cat, targets, exclude_history=False).recommend(rank)
  assert rank.calls[-1][3] is None
  Validator(cat, targets).recommend(rank)
  assert rank.calls[-1][3] is not None  # the history is excluded by default


def test_subsets_are_fixed_and_replaced_by_with_subsample():
  cat = _catalog()
  targets = _targets()
  rank = Recorder(list(range(8)))
  v = Validator(cat, targets, max_requests=5, seed=3, exclude_history=False)
  v.recommend(rank)
  v.recommend(rank)
  first, second = rank.calls[-2][0], rank.calls[-1][0]
  idx = np.sort(np.random.default_rng(3).choice(20, 5, False))
  assert all(np.array_equal(a, targets[i].history) for a, i in zip(first, idx))
  assert all(np.array_equal(a, b) for a, b in zip(first, second))
  sub = v.with_subsample(None, 0)
  assert (sub.max_requests, sub.seed, sub.metric) == (None, 0, 'ndcg@10')
  sub.recommend(rank)
  assert len(rank.calls[-1][0]) == 20
  assert recommend_metrics(cat, targets, rank, ks=(10,), max_requests=5, seed=3) == \
      v.recommend(rank)
  with pytest.raises(ValueError, match='no targets'):
    Validator(cat, []).recommend(rank)


def test_search_types_from_the_query_text_never_the_relevant_items():
  cat = _catalog()
  queries = [Query('x', (1, 2)), Query('y b', (4,))]
  seen = []

  def rank(texts, types, k):
    seen.append((texts, types, k))
    return np.array([[1, 3, 5], [4, 2, 0]])[:, :k]

  got = Validator(cat, [], queries, ks=(1, 3), metric='hr@1').search(rank)
  # 'x' names no type (any); 'y b' names type 'b' although its relevant item is of type 'a'.
  assert seen == [(['x', 'y b'], [None, 'b'], 3)]
  assert got['hr@1'] == 1.0 and got['recall@3'] == pytest.approx((0.5 + 1) / 2)
  assert search_metrics(cat, queries, rank, ks=(3,), target_types=[None, None])['hr@3'] == 1.0
  assert seen[-1][1] == [None, None]
  with pytest.raises(ValueError, match='no queries'):
    Validator(cat, []).search(rank)


def test_metric_must_be_a_figure_at_ks():
  cat = _catalog()
  assert Validator(cat, [], ks=(5,), metric='mrr').metric == 'mrr'
  for bad in ('ndcg@10', 'auc@5', 'hr'):
    with pytest.raises(ValueError, match='is not a figure'):
      Validator(cat, [], ks=(5,), metric=bad)
