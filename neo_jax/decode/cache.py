"""The cache helpers beams need, and left padding of prompts.

The model's cache (see neo_jax/decode/interface.py) is any pytree. By default every leaf has
the batch dimension N at axis 1 (k/v as (layers, N, S, H, D)) except scalar leaves (shared, e.g.
an int32 write index) and leaves of rank 1 or 2 ((N,) or (N, S), batch at axis 0). A model with
another layout passes its own `cache_batch_axis(leaf) -> int | None` to the searches.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

CacheBatchAxis = Callable[[Any], 'int | None']


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
