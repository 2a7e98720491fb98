"""Hand-built models that follow the decoding contract, for tests and benchmarks.

`markov_lm` is a second-order Markov chain over tokens with fixed logit tables:

  logits(next | history) = first_RxV[last % R] + second_RxV[previous % R]
                           + position_PxV[position of last % P]

where `last` is the newest valid token and `previous` the valid token before it (no term when
there is none). It keeps the history in a cache with the default layout (a (1, N, S, 1, 1)
leaf, an (N, S) leaf and a scalar write index), so a search that hands a beam the wrong
parent's cache, or feeds wrong positions, gets wrong logits. Its probabilities are easy to
recompute in numpy (`markov_logits`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def markov_cache(batch: int, max_len: int) -> dict:
  """An empty cache for `markov_lm`: room for max_len tokens per row."""
  return {
      'tokens': jnp.full((1, batch, max_len, 1, 1), -1, jnp.int32),
      'positions': jnp.zeros((batch, max_len), jnp.int32),
      'end': jnp.zeros((), jnp.int32),
  }


def markov_lm(first_RxV: np.ndarray, second_RxV: np.ndarray | None = None,
              position_PxV: np.ndarray | None = None):
  """A step_fn for the chain above (tables float32, R rows; a token t uses row t % R)."""
  first = jnp.asarray(first_RxV, jnp.float32)
  second = None if second_RxV is None else jnp.asarray(second_RxV, jnp.float32)
  by_position = None if position_PxV is None else jnp.asarray(position_PxV, jnp.float32)
  rows = first.shape[0]

  def step_fn(tokens_NxT, positions_NxT, cache, valid_NxT):
    n, t = tokens_NxT.shape
    end = cache['end']
    stored_NxT = jnp.where(valid_NxT, tokens_NxT, -1).astype(jnp.int32)
    history = jax.lax.dynamic_update_slice(cache['tokens'], stored_NxT[None, :, :, None, None],
                                           (0, 0, end, 0, 0))
    positions = jax.lax.dynamic_update_slice(cache['positions'], positions_NxT.astype(jnp.int32),
                                             (0, end))
    cache = {'tokens': history, 'positions': positions, 'end': end + t}
    hist_NxS = history[0, :, :, 0, 0]
    s = hist_NxS.shape[1]
    # Index of the newest valid token at or before each slot (-1 if none).
    idx_NxS = jnp.where(hist_NxS >= 0, jnp.arange(s, dtype=jnp.int32), -1)
    newest_NxS = jax.lax.cummax(idx_NxS, axis=1)
    slots_T = end + jnp.arange(t, dtype=jnp.int32)
    last_NxT = jnp.take_along_axis(newest_NxS, jnp.broadcast_to(slots_T, (n, t)), axis=1)
    before_NxT = jnp.where(
        last_NxT > 0,
        jnp.take_along_axis(newest_NxS, jnp.maximum(last_NxT - 1, 0), axis=1), -1)
    last_tok = jnp.take_along_axis(hist_NxS, jnp.maximum(last_NxT, 0), axis=1)
    before_tok = jnp.take_along_axis(hist_NxS, jnp.maximum(before_NxT, 0), axis=1)
    logits = jnp.where((last_NxT >= 0)[..., None], first[last_tok % rows], 0.0)
    if second is not None:
      logits = logits + jnp.where((before_NxT >= 0)[..., None], second[before_tok % rows], 0.0)
    if by_position is not None:
      last_pos = jnp.take_along_axis(positions, jnp.maximum(last_NxT, 0), axis=1)
      logits = logits + jnp.where((last_NxT >= 0)[..., None],
                                  by_position[last_pos % by_position.shape[0]], 0.0)
    return logits, cache

  return step_fn


def rows_only(step_fn):
  """A row_step_fn from a step_fn: the full logits, then only the requested rows (for tests of
  the rows-only plumbing; a real model computes only those rows, see Decoder.logits_from_hidden).
  """

  def row_step_fn(tokens_NxT, positions_NxT, cache, valid_NxT, rows_R):
    logits, cache = step_fn(tokens_NxT, positions_NxT, cache, valid_NxT)
    return jnp.take(logits, rows_R, axis=-1), cache

  return row_step_fn


def split_head(step_fn):
  """(hidden_fn, head_fn) from a step_fn whose "hidden state" is its full logits, so that the
  rows a head_fn returns are exactly those of the full logits (tests of the rows-only path)."""

  def hidden_fn(tokens_NxT, positions_NxT, cache, valid_NxT):
    return step_fn(tokens_NxT, positions_NxT, cache, valid_NxT)

  def head_fn(hidden_NxV, rows_NxR=None):
    if rows_NxR is None:
      return hidden_NxV
    return jnp.take_along_axis(hidden_NxV, rows_NxR, axis=-1)

  return hidden_fn, head_fn


def markov_logits(first_RxV: np.ndarray, second_RxV: np.ndarray | None, history: list[int],
                  position_PxV: np.ndarray | None = None) -> np.ndarray:
  """Numpy reference: the (V,) next-token logits of `markov_lm` after `history` (the valid
  ids, at positions 0, 1, ...)."""
  rows = first_RxV.shape[0]
  out = np.zeros(first_RxV.shape[1], np.float64)
  if history:
    out += first_RxV[history[-1] % rows]
  if second_RxV is not None and len(history) >= 2:
    out += second_RxV[history[-2] % rows]
  if position_PxV is not None and history:
    out += position_PxV[(len(history) - 1) % position_PxV.shape[0]]
  return out
