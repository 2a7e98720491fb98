"""Evaluation splits over users' chronological sequences.

Leave-one-out by time (SASRec, TIGER, RecBole): per user, the last interaction is the test
target, the one before it the validation target; training sees everything before the
validation target. Users with fewer than `min_events` interactions cannot be evaluated; they
are kept for training only and counted in `Split.skipped`.
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
