"""Tests of neo_jax/catalog/splits.py against a brute-force pure-Python reference."""

from __future__ import annotations

import numpy as np
import pytest

from neo_jax.catalog.splits import leave_one_out, user_sequences
from neo_jax.catalog.types import Interactions


def _random_interactions(seed: int, num_users: int, num_events: int) -> Interactions:
  rng = np.random.default_rng(seed)
  return Interactions(
      user_names=[f'user{u}' for u in range(num_users)],
      user_index=rng.integers(0, num_users, num_events).astype(np.int32),
      item_index=rng.integers(0, 50, num_events).astype(np.int32),
      # Few distinct times, so ties (broken by catalog row) are common.
      timestamp=rng.integers(0, 6, num_events).astype(np.int64),
  )


def _brute_force_sequences(inter: Interactions) -> dict[str, list[int]]:
  events: dict[str, list[tuple[int, int, int]]] = {}
  for e in range(len(inter)):
    user = inter.user_names[int(inter.user_index[e])]
    events.setdefault(user, []).append(
        (int(inter.timestamp[e]), int(inter.item_index[e]), e))
  return {u: [item for _, item, _ in sorted(evs)] for u, evs in events.items()}


@pytest.mark.parametrize('seed', range(5))
def test_user_sequences_match_brute_force(seed):
  # More user names than users with events: those without events have no sequence.
  inter = _random_interactions(seed, num_users=12, num_events=int(30 + 20 * seed))
  got = user_sequences(inter)
  want = _brute_force_sequences(inter)
  assert set(got) == set(want)
  for user, seq in got.items():
    assert seq.dtype == np.int32
    assert seq.tolist() == want[user], user


def test_user_sequences_known_answer():
  inter = Interactions(
      user_names=['a', 'b'],
      user_index=np.array([1, 0, 0, 1, 0, 0], np.int32),
      item_index=np.array([10, 11, 12, 13, 14, 15], np.int32),
      timestamp=np.array([5, 3, 1, 5, 3, 9], np.int64),
  )
  got = user_sequences(inter)
  assert got['a'].tolist() == [12, 11, 14, 15]  # 11 and 14 tie at t=3: catalog row order
  assert got['b'].tolist() == [10, 13]
  # Ties are broken by catalog row, not by file order.
  swapped = Interactions(inter.user_names, inter.user_index,
                         np.array([13, 14, 12, 10, 11, 15], np.int32), inter.timestamp)
  got = user_sequences(swapped)
  assert got['a'].tolist() == [12, 11, 14, 15] and got['b'].tolist() == [10, 13]


@pytest.mark.parametrize('seed,min_events', [(0, 3), (1, 3), (2, 5), (3, 4)])
def test_leave_one_out_matches_brute_force(seed, min_events):
  inter = _random_interactions(seed, num_users=15, num_events=60)
  split = leave_one_out(inter, min_events=min_events)
  sequences = _brute_force_sequences(inter)
  want_train, want_valid, want_test, short = {}, {}, {}, 0
  for user, seq in sequences.items():
    if len(seq) < min_events:
      want_train[user] = seq
      short += 1
    else:
      want_train[user] = seq[:-2]
      want_valid[user] = (seq[:-2], seq[-2])
      want_test[user] = (seq[:-1], seq[-1])
  assert {u: s.tolist() for u, s in split.train.items()} == want_train
  assert {t.user_id: (t.history.tolist(), t.target) for t in split.valid} == want_valid
  assert {t.user_id: (t.history.tolist(), t.target) for t in split.test} == want_test
  assert len(split.valid) == len(want_valid) and len(split.test) == len(want_test)
  if short:
    assert split.skipped == {'users_with_too_few_events_for_eval': short}
  else:
    assert split.skipped == {}
  # Training never contains a user's two evaluation targets (positions -2 and -1).
  for t in split.test:
    assert len(split.train[t.user_id]) == len(t.history) - 1


def test_leave_one_out_rejects_small_min_events():
  inter = _random_interactions(0, num_users=3, num_events=10)
  with pytest.raises(ValueError, match='min_events'):
    leave_one_out(inter, min_events=2)
