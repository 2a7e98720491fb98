"""Evaluation splits over users' chronological sequences, chosen by `make_split(spec)`.

Leave-one-out by time (SASRec, TIGER, RecBole): per user, the last interaction is the test
target, the one before it the validation target; training sees everything before the
validation target. Users with fewer than `min_events` interactions cannot be evaluated; they
are kept for training only and counted in `Split.skipped`.

Global temporal split (`temporal_split`, the paper's protocol): global cutoffs t_valid <=
t_test; training is everything before t_valid; each user's first event after a cutoff is
that user's target, predicted from all of the user's earlier events.

Every split orders a user's events by timestamp, and events of one user at the same timestamp by
`tie_key`: a fixed pseudo-random key of the (user id, catalog row) pair. The split then depends
neither on file order nor on catalog order (breaking ties by catalog row would make the test
target the tied item of the highest row; on MovieLens-100k, whose rows follow movie ids, that
is systematically the later, less popular movie, for the 44% of users whose last two events
tie). `Split.test_target_ties` counts the users whose test target the tie-break decided
(reported by `make_split` as `test_target_ties`).

What a fitted component may see: `train_interactions` (the events of `Split.train` only) and
`fit_view` (those events, the training queries, the users with held-out summaries emptied).
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Collection, Sequence

import numpy as np

from neo_jax.catalog.types import Dataset, Interactions, Query


@dataclasses.dataclass(frozen=True)
class Target:
  user_id: str
  history: np.ndarray  # (H,) int32 catalog rows, oldest first
  target: int  # catalog row


@dataclasses.dataclass
class Split:
  train: dict[str, np.ndarray]  # user -> (T,) int32 rows, oldest first, no eval targets
  valid: list[Target]
  test: list[Target]
  skipped: dict[str, int] = dataclasses.field(default_factory=dict)
  # Users whose test target shares its timestamp with a neighbouring event of theirs, so that
  # the tie-break (`tie_key`) decided which event is the target: in leave-one-out the event
  # before it (the validation target), in the temporal split the event after it (the event
  # before it lies before the cutoff).
  test_target_ties: int = 0


def tie_key(interactions: Interactions) -> np.ndarray:
  """(E,) uint64: splitmix64 of (crc32 of the user id << 32) ^ catalog row: a fixed key of
  each (user, item) pair, unrelated to file order, catalog order or popularity."""
  crc = np.array([zlib.crc32(str(u).encode()) for u in interactions.user_names], np.uint64)
  z = ((crc[interactions.user_index] << np.uint64(32))
       ^ interactions.item_index.astype(np.uint64))
  with np.errstate(over='ignore'):
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return z ^ (z >> np.uint64(31))


def event_order(interactions: Interactions) -> np.ndarray:
  """(E,) event indices sorted by (user, timestamp, `tie_key`), then catalog row and file
  order (which only order events equal in all of these, i.e. the same item at the same
  time)."""
  return np.lexsort((np.arange(len(interactions)), interactions.item_index,
                     tie_key(interactions), interactions.timestamp, interactions.user_index))


def user_sequences(interactions: Interactions) -> dict[str, np.ndarray]:
  """user id -> (T,) int32 catalog rows sorted by time; ties in timestamp are broken by
  `tie_key` (never by file order or catalog order)."""
  order = event_order(interactions)
  users = interactions.user_index[order]
  items = interactions.item_index[order].astype(np.int32)
  bounds = np.flatnonzero(np.diff(users)) + 1
  out = {}
  for chunk_users, chunk_items in zip(np.split(users, bounds), np.split(items, bounds)):
    if chunk_users.size:
      out[interactions.user_names[int(chunk_users[0])]] = chunk_items
  return out


def _user_times(interactions: Interactions) -> dict[str, np.ndarray]:
  """user id -> (T,) int64 timestamps, in `user_sequences`' order."""
  order = event_order(interactions)
  users = interactions.user_index[order]
  times = interactions.timestamp[order].astype(np.int64)
  bounds = np.flatnonzero(np.diff(users)) + 1
  return {interactions.user_names[int(u[0])]: t
          for u, t in zip(np.split(users, bounds), np.split(times, bounds)) if u.size}


def leave_one_out(interactions: Interactions, min_events: int = 3) -> Split:
  if min_events < 3:
    raise ValueError(f'leave-one-out needs min_events >= 3, got {min_events}')
  split = Split(train={}, valid=[], test=[])
  short = 0
  times = _user_times(interactions)
  for user, seq in user_sequences(interactions).items():
    if seq.size < min_events:
      split.train[user] = seq
      short += 1
      continue
    split.train[user] = seq[:-2]
    split.valid.append(Target(user, seq[:-2], int(seq[-2])))
    split.test.append(Target(user, seq[:-1], int(seq[-1])))
    ts = times[user]
    split.test_target_ties += int(ts[-1] == ts[-2])
  if short:
    split.skipped['users_with_too_few_events_for_eval'] = short
  return split


def temporal_cutoffs(timestamps: np.ndarray, valid_fraction: float,
                     test_fraction: float) -> tuple[int, int]:
  """Global cutoffs (t_valid, t_test) from the fractions of events that fall after them.

  With the E timestamps sorted ascending as `ts`, t_test = ts[floor(E * (1 - test_fraction))]
  and t_valid = ts[floor(E * (1 - test_fraction - valid_fraction))]: at least the given
  fraction of events lies at or after each cutoff (more when timestamps tie).
  """
  if not (0 < valid_fraction and 0 < test_fraction and valid_fraction + test_fraction < 1):
    raise ValueError('need 0 < valid_fraction, 0 < test_fraction, sum < 1; got '
                     f'{valid_fraction}, {test_fraction}')
  ts = np.sort(np.asarray(timestamps, np.int64))
  if ts.size == 0:
    raise ValueError('no interactions to place cutoffs in')
  n = ts.size
  return (int(ts[int(np.floor(n * (1 - test_fraction - valid_fraction)))]),
          int(ts[int(np.floor(n * (1 - test_fraction)))]))


def temporal_split(interactions: Interactions, t_valid: int, t_test: int,
                   horizon: int | None = None) -> Split:
  """Global temporal split (the paper's protocol): the past is context, the future is target.

  Each user's events sorted by time (ties in timestamp broken by `tie_key`):
    train[user]  = the events before t_valid (users with none are absent);
    valid target = the user's first event in [t_valid, t_test) (and, with `horizon`, before
                   t_valid + horizon), history = all the user's events before it;
    test target  = the user's first event at or after t_test (and, with `horizon`, before
                   t_test + horizon), history = all the user's events before it, including
                   those of the validation window (known context at test time).
  A user gets a target only when its history is non-empty. Counted in `Split.skipped`:
  `valid_targets_without_history`, `test_targets_without_history` (users whose first event
  falls in the window, so there is nothing to recommend from), and `users_with_fewer_than_2_
  interactions` (never evaluated, kept in train when before t_valid).
  """
  if t_valid > t_test:
    raise ValueError(f'need t_valid <= t_test, got {t_valid} > {t_test}')
  if horizon is not None and horizon <= 0:
    raise ValueError(f'horizon must be positive seconds, got {horizon}')
  valid_end = t_test if horizon is None else min(t_test, t_valid + horizon)
  test_end = None if horizon is None else t_test + horizon
  order = event_order(interactions)
  split = Split(train={}, valid=[], test=[])
  counts = {'valid_targets_without_history': 0, 'test_targets_without_history': 0,
            'users_with_fewer_than_2_interactions': 0}
  users = interactions.user_index[order]
  bounds = np.flatnonzero(np.diff(users)) + 1
  for rows in np.split(order, bounds):
    if not rows.size:
      continue
    user = interactions.user_names[int(interactions.user_index[rows[0]])]
    seq = interactions.item_index[rows].astype(np.int32)
    ts = interactions.timestamp[rows]
    if seq.size < 2:
      counts['users_with_fewer_than_2_interactions'] += 1
    n_train = int(np.searchsorted(ts, t_valid, side='left'))
    if n_train:
      split.train[user] = seq[:n_train]
    for targets, start, end, key in ((split.valid, t_valid, valid_end,
                                      'valid_targets_without_history'),
                                     (split.test, t_test, test_end,
                                      'test_targets_without_history')):
      k = int(np.searchsorted(ts, start, side='left'))
      if k >= ts.size or (end is not None and ts[k] >= end):
        continue
      if k == 0:
        counts[key] += 1
        continue
      targets.append(Target(user, seq[:k], int(seq[k])))
      if targets is split.test and k + 1 < ts.size and ts[k + 1] == ts[k]:
        split.test_target_ties += 1
  split.skipped.update({k: v for k, v in counts.items() if v})
  return split


SPLIT_METHODS = ('leave_one_out', 'temporal')


def make_split(interactions: Interactions, spec: str) -> tuple[Split, dict[str, int | float]]:
  """The split a config names, and its parameters (for the run's report).

  `spec` is one of
    'leave_one_out'                     leave_one_out(interactions)
    'temporal' or 'temporal:V,T[,H]'    temporal_split with cutoffs from
                                        temporal_cutoffs(valid_fraction=V, test_fraction=T)
                                        (default 0.1,0.1) and optional horizon H seconds.
  The parameters always hold `test_target_ties` (`Split.test_target_ties`).
  """
  method, _, args = spec.partition(':')
  if method == 'leave_one_out' and not args:
    split = leave_one_out(interactions)
    return split, {'test_target_ties': split.test_target_ties}
  if method == 'temporal':
    try:
      values = [float(a) for a in args.split(',')] if args else [0.1, 0.1]
    except ValueError:
      values = []
    if len(values) not in (2, 3):
      raise ValueError(f"bad split spec {spec!r}: use 'temporal:V,T' or 'temporal:V,T,H' "
                       '(fractions of events for validation and test, horizon seconds)')
    t_valid, t_test = temporal_cutoffs(interactions.timestamp, values[0], values[1])
    horizon = int(values[2]) if len(values) == 3 else None
    params = {'t_valid': t_valid, 't_test': t_test}
    if horizon is not None:
      params['horizon'] = horizon
    split = temporal_split(interactions, t_valid, t_test, horizon)
    params['test_target_ties'] = split.test_target_ties
    return split, params
  raise ValueError(f'unknown split {spec!r}; use one of {SPLIT_METHODS} '
                   "('temporal:V,T[,H]' sets its fractions and horizon)")


def without_test(split: Split) -> Split:
  """A copy of `split` without its test targets (what may reach anything fitted)."""
  return dataclasses.replace(split, train=dict(split.train), valid=list(split.valid), test=[],
                             skipped=dict(split.skipped))


def train_interactions(interactions: Interactions, split: Split) -> Interactions:
  """The events that make up `split.train`: per user, the first len(split.train[user]) events
  in the split's order (`event_order`); none of a user absent from it. Every column (and
  `extra`) is subset alike, in file order; `user_names` is unchanged.

  Raises:
    ValueError: `split` was not made from `interactions` (the kept events' sequences differ
      from `split.train`).
  """
  order = event_order(interactions)
  users = interactions.user_index[order]
  n_train = np.zeros(len(interactions.user_names), np.int64)
  index = {name: n for n, name in enumerate(interactions.user_names)}
  for user, seq in split.train.items():
    if user not in index:
      raise ValueError(f'split user {user!r} has no interactions')
    n_train[index[user]] = len(seq)
  starts = np.zeros(users.size, np.int64)
  if users.size:
    new = np.concatenate([[True], users[1:] != users[:-1]])
    first = np.flatnonzero(new)
    starts = first[np.cumsum(new) - 1]
  rank = np.arange(users.size) - starts
  keep = np.zeros(len(interactions), bool)
  keep[order[rank < n_train[users]]] = True
  rows = np.flatnonzero(keep)
  out = Interactions(user_names=list(interactions.user_names),
                     user_index=interactions.user_index[rows],
                     item_index=interactions.item_index[rows],
                     timestamp=interactions.timestamp[rows],
                     extra={k: [v[r] for r in rows.tolist()]
                            for k, v in interactions.extra.items()})
  got = user_sequences(out)
  if set(got) != {u for u, s in split.train.items() if len(s)} or any(
      not np.array_equal(got[u], split.train[u]) for u in got):
    raise ValueError('the split was not made from these interactions: its training '
                     'sequences differ from the events they select')
  return out


def fit_view(dataset: Dataset, split: Split, *, queries: Sequence[Query],
             hide_summaries: Collection[str]) -> Dataset:
  """The dataset a fitted component (SIDs, tokenizer, NEO, baselines) may see: the events of
  `split.train` (`train_interactions`), the given (training) `queries`, and the user records
  with `summary` emptied (None) for the ids in `hide_summaries`. Catalog and `skipped` are the
  same objects' contents; no validation or test event is in it."""
  hide = frozenset(hide_summaries)
  users = {uid: (dataclasses.replace(u, summary=None) if uid in hide else u)
           for uid, u in dataset.users.items()}
  return Dataset(name=dataset.name, catalog=dataset.catalog,
                 interactions=train_interactions(dataset.interactions, split),
                 queries=list(queries), users=users, skipped=dict(dataset.skipped))
