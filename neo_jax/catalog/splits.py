"""Evaluation splits over users' chronological sequences, chosen by `make_split(spec)`.

Leave-one-out by time (SASRec, TIGER, RecBole): per user, the last interaction is the test
target, the one before it the validation target; training sees everything before the
validation target. Users with fewer than `min_events` interactions cannot be evaluated; they
are kept for training only and counted in `Split.skipped`.

Global temporal split (`temporal_split`, the paper's protocol): global cutoffs t_valid <=
t_test; training is everything before t_valid; each user's first event after a cutoff is
that user's target, predicted from all of the user's earlier events.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from neo_jax.catalog.types import Interactions


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


def user_sequences(interactions: Interactions) -> dict[str, np.ndarray]:
  """user id -> (T,) int32 catalog rows sorted by time; ties keep file order."""
  order = np.lexsort((np.arange(len(interactions)), interactions.timestamp,
                      interactions.user_index))
  users = interactions.user_index[order]
  items = interactions.item_index[order].astype(np.int32)
  bounds = np.flatnonzero(np.diff(users)) + 1
  out = {}
  for chunk_users, chunk_items in zip(np.split(users, bounds), np.split(items, bounds)):
    if chunk_users.size:
      out[interactions.user_names[int(chunk_users[0])]] = chunk_items
  return out


def leave_one_out(interactions: Interactions, min_events: int = 3) -> Split:
  if min_events < 3:
    raise ValueError(f'leave-one-out needs min_events >= 3, got {min_events}')
  split = Split(train={}, valid=[], test=[])
  short = 0
  for user, seq in user_sequences(interactions).items():
    if seq.size < min_events:
      split.train[user] = seq
      short += 1
      continue
    split.train[user] = seq[:-2]
    split.valid.append(Target(user, seq[:-2], int(seq[-2])))
    split.test.append(Target(user, seq[:-1], int(seq[-1])))
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

  Each user's events sorted by time (ties in file order):
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
  order = np.lexsort((np.arange(len(interactions)), interactions.timestamp,
                      interactions.user_index))
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
  """
  method, _, args = spec.partition(':')
  if method == 'leave_one_out' and not args:
    return leave_one_out(interactions), {}
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
    return temporal_split(interactions, t_valid, t_test, horizon), params
  raise ValueError(f'unknown split {spec!r}; use one of {SPLIT_METHODS} '
                   "('temporal:V,T[,H]' sets its fractions and horizon)")
