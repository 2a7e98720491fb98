"""Tests of the global temporal split and `make_split` (neo_jax/catalog/splits.py) against a
brute-force pure-Python reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neo_jax.catalog.splits import (leave_one_out, make_split, temporal_cutoffs,
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
  for e in range(len(inter)):
    user = inter.user_names[int(inter.user_index[e])]
    events.setdefault(user, []).append((int(inter.timestamp[e]), e, int(inter.item_index[e])))
  train, valid, test = {}, [], []
  skipped = {'valid_targets_without_history': 0, 'test_targets_without_history': 0,
             'users_with_fewer_than_2_interactions': 0}
  valid_end = t_test if horizon is None else min(t_test, t_valid + horizon)
  test_end = math.inf if horizon is None else t_test + horizon
  for user, evs in events.items():
    evs.sort()
    if len(evs) < 2:
      skipped['users_with_fewer_than_2_interactions'] += 1
    before = [item for t, _, item in evs if t < t_valid]
    if before:
      train[user] = before
    for out, lo, hi, key in ((valid, t_valid, valid_end, 'valid_targets_without_history'),
                             (test, t_test, test_end, 'test_targets_without_history')):
      for k, (t, _, item) in enumerate(evs):
        if t >= lo:
          if t < hi:
            if k == 0:
              skipped[key] += 1
            else:
              out.append((user, [i for _, _, i in evs[:k]], item))
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
  assert params == {} and len(loo.test) == len(leave_one_out(inter).test)
  split, params = make_split(inter, 'temporal:0.25,0.25,3')
  t_valid, t_test = temporal_cutoffs(inter.timestamp, 0.25, 0.25)
  assert params == {'t_valid': t_valid, 't_test': t_test, 'horizon': 3}
  ref = temporal_split(inter, t_valid, t_test, 3)
  assert [t.target for t in split.test] == [t.target for t in ref.test]
  assert make_split(inter, 'temporal')[1] == dict(
      zip(('t_valid', 't_test'), temporal_cutoffs(inter.timestamp, 0.1, 0.1)))
  for bad in ('lou', 'temporal:0.5', 'temporal:a,b', 'leave_one_out:3', 'temporal:0.6,0.6'):
    with pytest.raises(ValueError):
      make_split(inter, bad)
  with pytest.raises(ValueError, match='t_valid <= t_test'):
    temporal_split(inter, 5, 4)
