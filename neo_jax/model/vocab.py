"""Growing a backbone's vocabulary by the SID token block, and the grounding-stage mask.

New rows go at the end ([old_V, new_V)), so every existing token id and its logits row are
unchanged. With tied embeddings the LM head is the embedding matrix: the new head rows ARE
the new embedding rows (one set of parameters, trained once, used twice). Untied models get
new head rows of their own.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from neo_jax.model.decoder import Decoder

INIT_MODES = ('mean', 'centroid')


def _new_rows(old_VxD: jax.Array, n_new: int, init: str, key, noise_scale: float,
              given) -> jax.Array:
  if init == 'centroid':
    rows = jnp.asarray(given, jnp.float32)
    if rows.shape != (n_new, old_VxD.shape[1]):
      raise ValueError(f"init='centroid' needs row vectors of shape {(n_new, old_VxD.shape[1])}"
                       f', got {rows.shape}')
    if not bool(jnp.all(jnp.isfinite(rows))):
      raise ValueError('row init vectors contain non-finite values')
    return rows
  old = old_VxD.astype(jnp.float32)
  mean_D = old.mean(axis=0)
  # Noise is relative to the spread of the existing rows, so the default suits any
  # checkpoint's scale; it only breaks the symmetry between otherwise identical rows.
  std_D = old.std(axis=0)
  noise = jax.random.normal(key, (n_new, old.shape[1]), jnp.float32)
  return mean_D + noise_scale * std_D * noise


def _grow(var: nnx.Param, rows_NxD: jax.Array) -> None:
  old = var[...]
  new = jnp.concatenate([old, rows_NxD.astype(old.dtype)], axis=0)
  sharding = getattr(old, 'sharding', None)
  if isinstance(sharding, NamedSharding):
    # Keep the layout the model was created with (device_put fails loudly if the new row
    # count does not divide over the mesh axes of the vocabulary).
    new = jax.device_put(new, sharding)
  var.set_value(new)


def extend_vocab(model: Decoder, new_vocab_size: int, *, init: str = 'mean', rng: jax.Array,
                 noise_scale: float = 0.01, row_init=None, head_row_init=None) -> Decoder:
  """Adds rows [old_V, new_vocab_size) to the embedding (and the untied head), in place.

  Args:
    model: the decoder; its `cfg.vocab_size` is updated.
    new_vocab_size: the new V (> old V).
    init: 'mean': every new row = mean of the existing rows + Gaussian noise whose std per
      dimension is `noise_scale` x the std of the existing rows in that dimension.
      'centroid': the new rows are `row_init` exactly (e.g. projected SID centroids).
    rng: a jax PRNG key for the noise.
    noise_scale: relative noise std for init='mean' (0 gives identical rows).
    row_init: (new_V - old_V, D) vectors for init='centroid'; must be None for 'mean'.
    head_row_init: untied models only: (new_V - old_V, D) vectors for the new head rows.
      Default: the mean rule over the existing head rows for 'mean', `row_init` for
      'centroid'.

  Returns:
    the same model object.
  """
  if init not in INIT_MODES:
    raise ValueError(f'init={init!r} is not one of {INIT_MODES}')
  cfg = model.cfg
  old_v = cfg.vocab_size
  if not isinstance(new_vocab_size, (int, np.integer)) or new_vocab_size <= old_v:
    raise ValueError(f'new_vocab_size={new_vocab_size!r} must be an int > the current '
                     f'vocab_size {old_v}')
  if init == 'mean' and row_init is not None:
    raise ValueError("row_init is only used with init='centroid'")
  if init == 'centroid' and row_init is None:
    raise ValueError("init='centroid' needs row_init of shape (new rows, d_model)")
  if cfg.tie_embeddings and head_row_init is not None:
    raise ValueError('head_row_init given for a tied model: its head rows are the embedding '
                     'rows')
  if noise_scale < 0:
    raise ValueError(f'noise_scale must be >= 0, got {noise_scale}')
  rng = jnp.asarray(rng) if not isinstance(rng, jax.Array) else rng
  if not (jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) or
          (rng.dtype == jnp.uint32 and rng.shape == (2,))):
    raise ValueError(f'rng must be a jax PRNG key, got {rng.dtype} {rng.shape}')
  n_new = int(new_vocab_size) - old_v
  embed_key, head_key = jax.random.split(rng)
  _grow(model.embed_tokens,
        _new_rows(model.embed_tokens[...], n_new, init, embed_key, noise_scale, row_init))
  if not cfg.tie_embeddings:
    if head_row_init is not None:
      head_rows = _new_rows(model.lm_head[...], n_new, 'centroid', None, 0.0, head_row_init)
    else:
      head_rows = _new_rows(model.lm_head[...], n_new, init, head_key, noise_scale, row_init)
    _grow(model.lm_head, head_rows)
  model.cfg = cfg.replace(vocab_size=int(new_vocab_size))
  return model


def sid_row_mask(model: Decoder, first_sid_row: int) -> nnx.State:
  """float32 masks shaped like `nnx.state(model)`: 1.0 where the grounding stage trains.

  Trainable: embedding rows >= first_sid_row and (untied) LM-head rows >= first_sid_row.
  Every mask broadcasts against its parameter: (V, 1) for embedding and head, all-ones
  shapes (1, ..., 1) of zeros for every other parameter. Multiply gradients (or optimizer
  updates) by it leaf by leaf, e.g. `jax.tree.map(jnp.multiply, grads, mask)`.
  """
  v = model.cfg.vocab_size
  if not 0 <= first_sid_row <= v:
    raise ValueError(f'first_sid_row={first_sid_row} outside [0, vocab_size={v}]')
  rows_Vx1 = (jnp.arange(v)[:, None] >= first_sid_row).astype(jnp.float32)
  flat = []
  for path, var in nnx.to_flat_state(nnx.state(model)):
    if path in (('embed_tokens',), ('lm_head',)):
      mask = rows_Vx1
    else:
      mask = jnp.zeros((1,) * var.get_value().ndim, jnp.float32)
    flat.append((path, var.replace(mask)))
  return nnx.from_flat_state(flat)


def count_params(model: nnx.Module) -> int:
  """Number of parameter scalars (works on abstract models from nnx.eval_shape too)."""
  return sum(math.prod(var.get_value().shape)
             for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)))
