"""Tests of neo_jax/catalog/splits.py against a brute-force pure-Python reference."""

from __future__ import annotations

import numpy as np
import pytest

from neo_jax.catalog.splits import leave_one_out, tie_key, user_sequences
from neo_jax.catalog.types import Interactions


def _random_interactions(seed: int, num_users: int, num_events: int) -> Interactions:
  rng = np.random.default_rng(seed)
  return Interactions(
      user_names=[f'user{u}' for u in range(num_users)],
      user_index=rng.integers(0, num_users, num_events).astype(np.int32),
      item_index=rng.integers(0, 50, num_events).astype(np.int32),
      # Few distinct times, so ties (broken by `tie_key`) are common.
      timestamp=rng.integers(0, 6, num_events).astype(np.int64),
  )


def _brute_force_sequences(inter: Interactions) -> dict[str, list[int]]:
  key = tie_key(inter)
  events: dict[str, list[tuple[int, int, int, int]]] = {}
  for e in range(len(inter)):
    user = inter.user_names[int(inter.user_index[e])]
    events.setdefault(user, []).append(
        (int(inter.timestamp[e]), int(key[e]), int(inter.item_index[e]), e))
  return {u: [item for _, _, item, _ in sorted(evs)] for u, evs in events.items()}


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
  key = dict(zip(inter.item_index.tolist(), tie_key(inter).tolist()))
  tied = sorted([11, 14], key=key.get)  # 11 and 14 tie at t=3: `tie_key` order
  assert got['a'].tolist() == [12] + tied + [15]
  assert got['b'].tolist() == [10, 13]
  # Ties are broken by the key, not by file order.
  swapped = Interactions(inter.user_names, inter.user_index,
                         np.array([13, 14, 12, 10, 11, 15], np.int32), inter.timestamp)
  got = user_sequences(swapped)
  assert got['a'].tolist() == [12] + tied + [15] and got['b'].tolist() == [10, 13]


def test_ties_are_not_broken_by_catalog_order():
  # 400 users whose two events tie: a catalog-row tie-break would put the higher row last
  # every time (on MovieLens-100k, the later and less popular movie); the key does so for
  # about half of them.
  n = 400
  rng = np.random.default_rng(0)
  lo = rng.integers(0, 500, n)
  inter = Interactions(user_names=[f'u{u}' for u in range(n)],
                       user_index=np.repeat(np.arange(n), 2).astype(np.int32),
                       item_index=np.stack([lo, lo + 1 + rng.integers(0, 500, n)], 1)
                       .reshape(-1).astype(np.int32),
                       timestamp=np.zeros(2 * n, np.int64))
  seqs = user_sequences(inter)
  higher_last = np.mean([seqs[f'u{u}'][1] > seqs[f'u{u}'][0] for u in range(n)])
  assert 0.4 < higher_last < 0.6


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
