"""Hand-built models that follow the decoding protocol, for tests and benchmarks.

`markov_lm` is a second-order Markov chain over tokens with fixed logit tables, a
`DecodingModel` (neo_jax/decode/interface.py):

  logits(next | history) = first_RxV[last % R] + second_RxV[previous % R]
                           + position_PxV[position of last % P]

where `last` is the newest valid token and `previous` the valid token before it (no term when
there is none). It keeps the history in a cache with the default layout (a (1, N, S, 1, 1)
leaf, an (N, S) leaf and a scalar write index), so a search that hands a beam the wrong
parent's cache, or feeds wrong positions, gets wrong logits. Its probabilities are easy to
recompute in numpy (`markov_logits`). Its "hidden state" is the full logits (D = V) and its LM
head picks rows of them, so a rows-only head returns exactly the full head's entries.
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


class MarkovLM:
  """The chain above as a `DecodingModel`; hashed by identity (a static argument of searches)."""

  def __init__(self, first_RxV: np.ndarray, second_RxV: np.ndarray | None = None,
               position_PxV: np.ndarray | None = None):
    self.first = jnp.asarray(first_RxV, jnp.float32)
    self.second = None if second_RxV is None else jnp.asarray(second_RxV, jnp.float32)
    self.by_position = None if position_PxV is None else jnp.asarray(position_PxV, jnp.float32)

  def init_cache(self, batch: int, max_len: int) -> dict:
    return markov_cache(batch, max_len)

  def decode_hidden(self, tokens_NxT, positions_NxT, cache, valid_NxT):
    """Appends the valid tokens to the history; returns (logits (N, T, V) float32, cache)."""
    first, second, by_position = self.first, self.second, self.by_position
    rows = first.shape[0]
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

  def logits_from_hidden(self, h, rows=None):
    """The "hidden state" is the logits (..., V): rows None -> all of them; rows (R,) -> those
    entries (..., R); rows (N, R) -> row set n for h[n], (N, ..., R)."""
    if rows is None:
      return h
    rows = jnp.asarray(rows)
    if rows.ndim == 1:
      return jnp.take(h, rows, axis=-1)
    rows_Nx1xR = rows.reshape((rows.shape[0],) + (1,) * (h.ndim - 2) + (rows.shape[1],))
    return jnp.take_along_axis(h, rows_Nx1xR, axis=-1)


def markov_lm(first_RxV: np.ndarray, second_RxV: np.ndarray | None = None,
              position_PxV: np.ndarray | None = None) -> MarkovLM:
  """A `MarkovLM` for the chain above (tables float32, R rows; a token t uses row t % R)."""
  return MarkovLM(first_RxV, second_RxV, position_PxV)


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
