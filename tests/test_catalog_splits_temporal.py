"""Tests of the global temporal split and `make_split` (neo_jax/catalog/splits.py) against a
brute-force pure-Python reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neo_jax.catalog.splits import (leave_one_out, make_split, temporal_cutoffs, tie_key,
                                    temporal_split)
from neo_jax.catalog.types import Interactions


def _random_interactions(seed: int, num_users: int = 15, num_events: int = 120) -> Interactions:
  rng = np.random.default_rng(seed)
  return Interactions(
      user_names=[f'u{u}' for u in range(num_users)],
      user_index=rng.integers(0, num_users, num_events).astype(np.int32),
      item_index=rng.integers(0, 40, num_events).astype(np.int32),
      # Few distinct times: ties with each other and with the cutoffs are common.
      timestamp=rng.integers(0, 12, num_events).astype(np.int64),
  )


def _reference(inter: Interactions, t_valid: int, t_test: int, horizon):
  """Straight from the definition, one event at a time."""
  events = {}
  key = tie_key(inter)
  for e in range(len(inter)):
    user = inter.user_names[int(inter.user_index[e])]
    events.setdefault(user, []).append((int(inter.timestamp[e]), int(key[e]),
                                        int(inter.item_index[e]), e))
  train, valid, test = {}, [], []
  skipped = {'valid_targets_without_history': 0, 'test_targets_without_history': 0,
             'users_with_fewer_than_2_interactions': 0}
  valid_end = t_test if horizon is None else min(t_test, t_valid + horizon)
  test_end = math.inf if horizon is None else t_test + horizon
  for user, evs in events.items():
    evs.sort()
    if len(evs) < 2:
      skipped['users_with_fewer_than_2_interactions'] += 1
    evs = [(t, item, e) for t, _, item, e in evs]
    before = [item for t, item, _ in evs if t < t_valid]
    if before:
      train[user] = before
    for out, lo, hi, key in ((valid, t_valid, valid_end, 'valid_targets_without_history'),
                             (test, t_test, test_end, 'test_targets_without_history')):
      for k, (t, item, _) in enumerate(evs):
        if t >= lo:
          if t < hi:
            if k == 0:
              skipped[key] += 1
            else:
              out.append((user, [i for _, i, _ in evs[:k]], item))
          break
  return train, valid, test, {k: v for k, v in skipped.items() if v}


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('cutoffs,horizon', [((4, 8), None), ((4, 8), 2), ((6, 6), None),
                                             ((0, 11), 3), ((3, 9), 100)])
def test_temporal_split_matches_reference(seed, cutoffs, horizon):
  inter = _random_interactions(seed)
  # A user with a single event, to exercise that count.
  inter.user_names.append('lonely')
  inter.user_index = np.append(inter.user_index, np.int32(len(inter.user_names) - 1))
  inter.item_index = np.append(inter.item_index, np.int32(3))
  inter.timestamp = np.append(inter.timestamp, np.int64(5))
  split = temporal_split(inter, *cutoffs, horizon=horizon)
  train, valid, test, skipped = _reference(inter, *cutoffs, horizon)
  assert {u: s.tolist() for u, s in split.train.items()} == train
  assert [(t.user_id, t.history.tolist(), t.target) for t in split.valid] == sorted(
      valid, key=lambda v: int(v[0][1:]) if v[0] != 'lonely' else 10**9)
  assert [(t.user_id, t.history.tolist(), t.target) for t in split.test] == sorted(
      test, key=lambda v: int(v[0][1:]) if v[0] != 'lonely' else 10**9)
  assert split.skipped == skipped
  for t in split.valid + split.test:
    assert t.history.dtype == np.int32


def test_temporal_split_known_answer():
  # user a: times 1,2,5,7,9; user b: 6 (first event in the valid window), 10.
  inter = Interactions(
      user_names=['a', 'b'],
      user_index=np.array([0, 0, 1, 0, 0, 0, 1], np.int32),
      item_index=np.array([10, 11, 20, 12, 13, 14, 21], np.int32),
      timestamp=np.array([1, 2, 6, 5, 7, 9, 10], np.int64))
  split = temporal_split(inter, t_valid=5, t_test=8)
  assert {u: s.tolist() for u, s in split.train.items()} == {'a': [10, 11]}
  assert [(t.user_id, t.history.tolist(), t.target) for t in split.valid] == [
      ('a', [10, 11], 12)]
  assert [(t.user_id, t.history.tolist(), t.target) for t in split.test] == [
      ('a', [10, 11, 12, 13], 14), ('b', [20], 21)]
  assert split.skipped == {'valid_targets_without_history': 1}


@pytest.mark.parametrize('n', [1, 7, 10, 101])
def test_temporal_cutoffs_reference(n):
  rng = np.random.default_rng(n)
  ts = rng.integers(0, 1000, n)
  t_valid, t_test = temporal_cutoffs(ts, 0.2, 0.1)
  s = sorted(ts.tolist())
  assert t_test == s[math.floor(n * (1 - 0.1))]
  assert t_valid == s[math.floor(n * (1 - 0.1 - 0.2))]
  # At least the fraction of events lies at or after each cutoff.
  assert sum(t >= t_test for t in s) >= 0.1 * n
  assert sum(t >= t_valid for t in s) >= 0.3 * n


def test_make_split_specs():
  inter = _random_interactions(0)
  loo, params = make_split(inter, 'leave_one_out')
  assert params == {'test_target_ties': loo.test_target_ties}
  assert len(loo.test) == len(leave_one_out(inter).test)
  split, params = make_split(inter, 'temporal:0.25,0.25,3')
  t_valid, t_test = temporal_cutoffs(inter.timestamp, 0.25, 0.25)
  assert params == {'t_valid': t_valid, 't_test': t_test, 'horizon': 3,
                    'test_target_ties': split.test_target_ties}
  ref = temporal_split(inter, t_valid, t_test, 3)
  assert [t.target for t in split.test] == [t.target for t in ref.test]
  assert make_split(inter, 'temporal')[1] == dict(
      zip(('t_valid', 't_test'), temporal_cutoffs(inter.timestamp, 0.1, 0.1)),
      test_target_ties=make_split(inter, 'temporal')[0].test_target_ties)
  for bad in ('lou', 'temporal:0.5', 'temporal:a,b', 'leave_one_out:3', 'temporal:0.6,0.6'):
    with pytest.raises(ValueError):
      make_split(inter, bad)
  with pytest.raises(ValueError, match='t_valid <= t_test'):
    temporal_split(inter, 5, 4)


def _shuffled(inter: Interactions, seed: int) -> Interactions:
  perm = np.random.default_rng(seed).permutation(len(inter))
  return Interactions(list(inter.user_names), inter.user_index[perm], inter.item_index[perm],
                      inter.timestamp[perm], {k: [v[p] for p in perm] for k, v in
                                              inter.extra.items()})


def _as_tuples(split):
  return ({u: s.tolist() for u, s in split.train.items()},
          sorted((t.user_id, t.history.tolist(), t.target) for t in split.valid),
          sorted((t.user_id, t.history.tolist(), t.target) for t in split.test),
          split.skipped, split.test_target_ties)


@pytest.mark.parametrize('spec', ['leave_one_out', 'temporal:0.3,0.3', 'temporal:0.2,0.2,4'])
def test_split_does_not_depend_on_file_order(spec):
  # Every event of a user at one time: only the tie-break orders them.
  inter = _random_interactions(7)
  inter.timestamp = (inter.timestamp // 4).astype(np.int64)
  want = _as_tuples(make_split(inter, spec)[0])
  for seed in range(4):
    assert _as_tuples(make_split(_shuffled(inter, seed), spec)[0]) == want


def test_test_target_ties_counted():
  # a: last two events tie (t=5); b: no tie; c: the last event ties with the one after the
  # validation target only (not counted); d: too short to evaluate.
  inter = Interactions(
      user_names=['a', 'b', 'c', 'd'],
      user_index=np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 3], np.int32),
      item_index=np.array([9, 3, 1, 4, 5, 6, 1, 2, 3, 4, 7], np.int32),
      timestamp=np.array([1, 5, 5, 1, 2, 3, 1, 2, 2, 3, 0], np.int64))
  split, params = make_split(inter, 'leave_one_out')
  assert params['test_target_ties'] == split.test_target_ties == 1
  # a's tied events (items 3 and 1 at t=5) are ordered by `tie_key`.
  key = dict(zip(inter.item_index[:3].tolist(), tie_key(inter)[:3].tolist()))
  first, last = sorted([3, 1], key=key.get)
  assert [(t.user_id, t.target) for t in split.test] == [('a', last), ('b', 6), ('c', 4)]
  assert [(t.user_id, t.target) for t in split.valid] == [('a', first), ('b', 5), ('c', 3)]
  # Temporal: a tie at the test cutoff decides the target when two events share its time.
  inter = Interactions(
      user_names=['a', 'b'], user_index=np.array([0, 0, 0, 1, 1, 1], np.int32),
      item_index=np.array([5, 8, 2, 1, 2, 3], np.int32),
      timestamp=np.array([1, 10, 10, 1, 10, 11], np.int64))
  split = temporal_split(inter, 5, 10)
  assert split.test_target_ties == 1
  key = dict(zip(inter.item_index[1:3].tolist(), tie_key(inter)[1:3].tolist()))
  first = min([8, 2], key=key.get)  # a's events 8 and 2 tie at the cutoff t=10
  assert [(t.user_id, t.target) for t in split.test] == [('a', first), ('b', 2)]


@pytest.mark.parametrize('spec', ['leave_one_out', 'temporal:0.3,0.2'])
def test_train_interactions_hold_exactly_the_training_events(spec):
  from neo_jax.catalog.splits import train_interactions, user_sequences
  inter = _random_interactions(3)
  inter.extra = {'rating': [str(e) for e in range(len(inter))]}
  split, _ = make_split(inter, spec)
  sub = train_interactions(inter, split)
  assert sub.user_names == inter.user_names
  got = user_sequences(sub)
  assert {u: s.tolist() for u, s in got.items()} == {
      u: s.tolist() for u, s in split.train.items() if len(s)}
  # The columns stay aligned: each kept event is one of the input's, with its own extra.
  events = {(inter.user_index[e], inter.item_index[e], inter.timestamp[e], inter.extra[
      'rating'][e]) for e in range(len(inter))}
  kept = [(sub.user_index[e], sub.item_index[e], sub.timestamp[e], sub.extra['rating'][e])
          for e in range(len(sub))]
  assert len(set(kept)) == len(kept) and set(kept) <= events
  # No validation or test event: a user's kept events all come before its first target.
  times = {}
  for u, _, t, _ in kept:
    times.setdefault(inter.user_names[u], []).append(t)
  for tg in split.valid + split.test:
    n = len(split.train.get(tg.user_id, ()))
    assert len(times.get(tg.user_id, [])) == n <= len(tg.history)
  with pytest.raises(ValueError, match='not made from'):
    train_interactions(_random_interactions(4), split)


def test_fit_view_hides_summaries_and_evaluation_material():
  from neo_jax.catalog.splits import fit_view, without_test
  from neo_jax.catalog.types import Catalog, Dataset, Query, User
  inter = _random_interactions(5)
  n = 40
  cat = Catalog([f'i{i}' for i in range(n)], ('movie',), np.zeros(n, np.int32),
                [f't{i}' for i in range(n)], [''] * n, [()] * n, [{}] * n,
                np.zeros(n, np.float32))
  users = {u: User(u, {'age': 3}, summary=f'summary of {u}') for u in inter.user_names}
  queries = [Query('q1', (1,)), Query('q2', (2,)), Query('q3', (3,))]
  ds = Dataset('d', cat, inter, queries, users, {'x': 1})
  split = leave_one_out(inter)
  view = fit_view(ds, split, queries=queries[:1], hide_summaries={'u1', 'u2'})
  assert view.catalog is cat and view.queries == queries[:1] and view.skipped == {'x': 1}
  assert {u for u, r in view.users.items() if r.summary is None} == {'u1', 'u2'}
  assert view.users['u1'].attributes == {'age': 3}
  assert view.users['u3'].summary == 'summary of u3' and ds.users['u1'].summary
  assert len(view.interactions) == sum(len(s) for s in split.train.values()) < len(inter)
  bare = without_test(split)
  assert bare.test == [] and split.test and bare.valid == split.valid
