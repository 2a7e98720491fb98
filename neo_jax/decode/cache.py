"""The model-side contract of decoding, and the cache helpers beams need.

Decoding never looks inside the model. It calls a t5x-style closure

  step_fn(tokens_NxT int32, positions_NxT int32, cache, valid_NxT bool)
      -> (logits_NxTxV float32, cache)

which appends T tokens per row to the cache and returns the next-token logits at each of them.
`cache` is any pytree; by default every leaf has the batch dimension N at axis 1 (k/v as
(layers, N, S, H, D)) except scalar leaves (shared, e.g. an int32 write index) and leaves of
rank 1 or 2 ((N,) or (N, S), batch at axis 0). A model with another layout passes its own
`cache_batch_axis(leaf) -> int | None`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

StepFn = Callable[[jax.Array, jax.Array, Any, jax.Array], tuple[jax.Array, Any]]
# row_step_fn(tokens_NxT, positions_NxT, cache, valid_NxT, rows_R int32) -> (logits_NxTxR, cache):
# the same step, computing only the LM-head rows `rows_R` (e.g. Decoder.decode_hidden followed
# by Decoder.logits_from_hidden(h, rows_R)).
RowStepFn = Callable[[jax.Array, jax.Array, Any, jax.Array, jax.Array], tuple[jax.Array, Any]]
CacheBatchAxis = Callable[[Any], 'int | None']
# The same step split in two, so that a caller can choose which LM-head rows to compute after
# seeing the state (interleaved generation computes only SID code rows inside spans):
#   hidden_fn(tokens_NxT, positions_NxT, cache, valid_NxT) -> (hidden_NxTxD, cache)
#   head_fn(hidden_NxD, rows) -> logits: rows None -> (N, V); rows (N, R) int32 -> (N, R), row
#   set n for hidden n (Decoder.decode_hidden and Decoder.logits_from_hidden).
HiddenFn = Callable[[jax.Array, jax.Array, Any, jax.Array], tuple[jax.Array, Any]]
HeadFn = Callable[[jax.Array, 'jax.Array | None'], jax.Array]


def default_cache_batch_axis(leaf) -> int | None:
  """Batch axis of a cache leaf under the default layout (see the module docstring)."""
  ndim = jnp.ndim(leaf)
  if ndim == 0:
    return None
  if ndim <= 2:
    return 0
  return 1


def repeat_batch(cache, repeats: int,
                 cache_batch_axis: CacheBatchAxis = default_cache_batch_axis):
  """Repeats every row of the cache `repeats` times, row-major: new row b * repeats + k = b.

  Used to give each of K beams its own copy of a request's prompt cache, which is computed once
  per request.
  """

  def rep(leaf):
    axis = cache_batch_axis(leaf)
    return leaf if axis is None else jnp.repeat(leaf, repeats, axis=axis)

  return jax.tree.map(rep, cache)


def gather_batch(cache, index_N: jax.Array,
                 cache_batch_axis: CacheBatchAxis = default_cache_batch_axis):
  """New row n of the cache = old row index_N[n] (int32, each in range)."""

  def take(leaf):
    axis = cache_batch_axis(leaf)
    return leaf if axis is None else jnp.take(leaf, index_N, axis=axis, mode='clip')

  return jax.tree.map(take, cache)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int,
             length: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Left-pads token lists into one batch, so that every prompt ends at the last column.

  Args:
    prompts: B lists of token ids, each non-empty.
    pad_id: id written in the padding.
    length: T, at least the longest prompt; defaults to the longest prompt.

  Returns:
    tokens_BxT int32, positions_BxT int32 (0 at each prompt's first token, 0 in the padding),
    valid_BxT bool (False in the padding).
  """
  if not prompts:
    raise ValueError('left_pad needs at least one prompt')
  lengths = [len(p) for p in prompts]
  if min(lengths) == 0:
    raise ValueError(f'prompt {lengths.index(0)} is empty')
  t = max(lengths) if length is None else int(length)
  if t < max(lengths):
    raise ValueError(f'length {t} is shorter than the longest prompt ({max(lengths)})')
  tokens = np.full((len(prompts), t), pad_id, np.int32)
  valid = np.zeros((len(prompts), t), bool)
  for b, p in enumerate(prompts):
    tokens[b, t - len(p):] = p
    valid[b, t - len(p):] = True
  positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0).astype(np.int32)
  return tokens, positions, valid


@functools.partial(jax.jit, static_argnames='step_fn')
def prefill(step_fn: StepFn, cache, tokens_BxT: jax.Array, positions_BxT: jax.Array,
            valid_BxT: jax.Array) -> tuple[jax.Array, jax.Array, Any]:
  """Runs left-padded prompts through the model once.

  Returns:
    last_logits_BxV float32 (the next-token logits after each prompt), last_positions_B int32
    (the position of each prompt's last token), and the cache.
  """
  logits_BxTxV, cache = step_fn(tokens_BxT, positions_BxT, cache, valid_BxT)
  return logits_BxTxV[:, -1].astype(jnp.float32), positions_BxT[:, -1], cache
