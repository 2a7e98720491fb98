"""The Llama-family decoder (SmolLM2, Llama 3.x, Qwen2/Qwen3) in Flax NNX, with a KV cache.

Layers are stacked: every per-layer weight has a leading `num_layers` axis and the blocks run
under `lax.scan`, so compile time does not grow with depth. Parameter names and layouts map
1:1 onto the Hugging Face checkpoints (W is the HF `weight`, N/K query/kv heads, H head_dim,
F mlp_dim; layer i of ours is row i of the stacked array):

  ours                             shape          HF tensor (layer i: model.layers.i.)
  embed_tokens                     (V, D)         model.embed_tokens.weight
  layers.input_layernorm           (nl, D)        input_layernorm.weight
  layers.q_proj                    (nl, D, N, H)  self_attn.q_proj.weight (N*H, D) -> W.T
  layers.k_proj, layers.v_proj     (nl, D, K, H)  self_attn.{k,v}_proj.weight (K*H, D) -> W.T
  layers.q_bias                    (nl, N, H)     self_attn.q_proj.bias (N*H,)      [qkv_bias]
  layers.k_bias, layers.v_bias     (nl, K, H)     self_attn.{k,v}_proj.bias (K*H,)  [qkv_bias]
  layers.q_norm, layers.k_norm     (nl, H)        self_attn.{q,k}_norm.weight       [qk_norm]
  layers.o_proj                    (nl, N, H, D)  self_attn.o_proj.weight (D, N*H) -> W.T
  layers.post_attention_layernorm  (nl, D)        post_attention_layernorm.weight
  layers.gate_proj, layers.up_proj (nl, D, F)     mlp.{gate,up}_proj.weight (F, D) -> W.T
  layers.down_proj                 (nl, F, D)     mlp.down_proj.weight (D, F) -> W.T
  norm                             (D,)           model.norm.weight
  lm_head                          (V, D)         lm_head.weight                    [untied]

Serving on a CPU can swap `layers` for `UnrolledLayers` (the same weights, one array per
layer, the blocks run in a Python loop; `run_layers` takes either): XLA:CPU then reads each
layer's weights in place, where slicing them out of the stack inside `lax.scan` costs a copy
per layer and, in bfloat16, loses its fast dot (neo_jax/decode/ranker.py `serving_model`).

"-> W.T" means transpose, then reshape the fused head axis row-major into (heads, head_dim),
e.g. q_proj = W.T.reshape(D, N, H) and o_proj = W.T.reshape(N, H, D).

RoPE follows the HF convention (rotate_half over the first/second halves of each head), so
HF weights load unpermuted; GGUF files store q/k rows permuted for llama.cpp's interleaved
RoPE and need the inverse permutation on import.
"""

from __future__ import annotations

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from neo_jax.model.config import ModelConfig
from neo_jax.model.sharding import constrain

# Finite, so that a fully masked row (a padding query) yields a uniform softmax, not NaN.
NEG_INF = -1e30
_INIT_STD = 0.02  # HF `initializer_range` of all four backbones


@flax.struct.dataclass
class Cache:
  """Keys/values of the tokens decoded so far; a pytree with static shapes.

  Attributes:
    k, v: (num_layers, B, S, num_kv_heads, head_dim), keys after RoPE.
    valid_BxS: bool, slot s of row b holds a real token (False for left padding and for
      slots not yet written).
    end: int32 scalar, the next slot to write (the same for every row).
  """

  k: jax.Array
  v: jax.Array
  valid_BxS: jax.Array
  end: jax.Array

  @property
  def batch(self) -> int:
    return self.k.shape[1]

  @property
  def max_len(self) -> int:
    return self.k.shape[2]


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> Cache:
  """An empty cache of `max_len` slots for `batch` rows; dtype defaults to `cfg.dtype`."""
  if batch < 1 or max_len < 1:
    raise ValueError(f'init_cache needs batch >= 1 and max_len >= 1, got {batch}, {max_len}')
  dtype = jnp.dtype(cfg.dtype if dtype is None else dtype)
  shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
  return Cache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
               valid_BxS=jnp.zeros((batch, max_len), bool), end=jnp.zeros((), jnp.int32))


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
  """(head_dim // 2,) float32 RoPE angular frequencies (radians per position)."""
  h = cfg.head_dim
  inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, h, 2, dtype=np.float64) / h))
  if cfg.rope_llama3_scaling is not None:
    factor, low, high, original_len = cfg.rope_llama3_scaling
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths (beyond the original context) are slowed down by `factor`, short ones
    # kept, and the band in between interpolated linearly in original_len / wavelen.
    long_wave = wavelen > original_len / low
    short_wave = wavelen < original_len / high
    smooth = (original_len / wavelen - low) / (high - low)
    mid = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    inv_freq = np.where(long_wave, inv_freq / factor, np.where(short_wave, inv_freq, mid))
  return inv_freq.astype(np.float32)


def _rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
  # Statistics in float32 whatever the compute dtype (as the HF reference does).
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return y.astype(x.dtype) * weight.astype(x.dtype)


def _rope(x_BxTxNxH: jax.Array, positions_BxT: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  angle_BxTxF = positions_BxT.astype(jnp.float32)[..., None] * inv_freq
  cos = jnp.cos(angle_BxTxF)[:, :, None, :]
  sin = jnp.sin(angle_BxTxF)[:, :, None, :]
  x = x_BxTxNxH.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxNxH.dtype)


def project(spec: str, x: jax.Array, w: jax.Array, dt) -> jax.Array:
  """`einsum(spec, x, w)` in compute dtype `dt`, accumulated in float32, returned in `dt`.

  With dt float32 this is the plain einsum. With bfloat16 the operands are bfloat16 and the
  sums float32 (as the MXU does; on x86 CPUs it is also the fast path: a bfloat16 dot with
  bfloat16 output runs ~7x slower in XLA:CPU than one that accumulates in float32)."""
  out = jnp.einsum(spec, x.astype(dt), w.astype(dt), preferred_element_type=jnp.float32)
  return out.astype(dt)


def _attend(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask_BxTxS) -> jax.Array:
  """Grouped-query attention: query head n reads kv head n // (N // K) (HF repeat_kv)."""
  b, t, n, h = q_BxTxNxH.shape
  kv = k_BxSxKxH.shape[2]
  q = q_BxTxNxH.reshape(b, t, kv, n // kv, h)
  scores = jnp.einsum('btkgh,bskh->bkgts', q, k_BxSxKxH, preferred_element_type=jnp.float32)
  scores = scores * (1.0 / math.sqrt(h))
  scores = jnp.where(mask_BxTxS[:, None, None], scores, NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(v_BxSxKxH.dtype)
  out = project('bkgts,bskh->btkgh', probs, v_BxSxKxH, v_BxSxKxH.dtype)
  return out.reshape(b, t, n, h)


def _param(rngs: nnx.Rngs | None, shape, dtype, logical_axes, init: str = 'normal') -> nnx.Param:
  if init == 'normal':
    value = _INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32)
  elif init == 'ones':
    value = jnp.ones(shape, jnp.float32)
  else:
    value = jnp.zeros(shape, jnp.float32)
  return nnx.Param(value.astype(dtype), logical_axes=logical_axes)


class DecoderLayers(nnx.Module):
  """The weights of all `num_layers` blocks, stacked on a leading axis."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    nl, d, n, k, h, f = (cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.num_kv_heads,
                         cfg.head_dim, cfg.mlp_dim)
    dt = cfg.storage_dtype
    self.input_layernorm = _param(None, (nl, d), dt, ('layers', 'norm'), 'ones')
    self.q_proj = _param(rngs, (nl, d, n, h), dt, ('layers', 'embed', 'q_heads', 'head_dim'))
    self.k_proj = _param(rngs, (nl, d, k, h), dt, ('layers', 'embed', 'kv_heads', 'head_dim'))
    self.v_proj = _param(rngs, (nl, d, k, h), dt, ('layers', 'embed', 'kv_heads', 'head_dim'))
    if cfg.qkv_bias:
      self.q_bias = _param(None, (nl, n, h), dt, ('layers', 'q_heads', 'head_dim'), 'zeros')
      self.k_bias = _param(None, (nl, k, h), dt, ('layers', 'kv_heads', 'head_dim'), 'zeros')
      self.v_bias = _param(None, (nl, k, h), dt, ('layers', 'kv_heads', 'head_dim'), 'zeros')
    if cfg.qk_norm:
      self.q_norm = _param(None, (nl, h), dt, ('layers', 'norm'), 'ones')
      self.k_norm = _param(None, (nl, h), dt, ('layers', 'norm'), 'ones')
    self.o_proj = _param(rngs, (nl, n, h, d), dt, ('layers', 'q_heads', 'head_dim', 'embed'))
    self.post_attention_layernorm = _param(None, (nl, d), dt, ('layers', 'norm'), 'ones')
    self.gate_proj = _param(rngs, (nl, d, f), dt, ('layers', 'embed', 'mlp'))
    self.up_proj = _param(rngs, (nl, d, f), dt, ('layers', 'embed', 'mlp'))
    self.down_proj = _param(rngs, (nl, f, d), dt, ('layers', 'mlp', 'embed'))

  def stacked(self) -> dict[str, jax.Array]:
    """The per-layer arrays by name, each with the leading num_layers axis."""
    return {name: var[...] for name, var in vars(self).items() if isinstance(var, nnx.Param)}


class UnrolledLayers(nnx.Module):
  """The block weights of `DecoderLayers` (or its LoRA form, adapters merged), one array per
  layer: `{name}_{i}`. For serving; `stacked()` restacks them, `per_layer()` lists them."""

  def __init__(self, stacked: dict[str, jax.Array]):
    sizes = {int(a.shape[0]) for a in stacked.values()}
    if len(sizes) != 1:
      raise ValueError(f'stacked block weights disagree on the number of layers: {sizes}')
    self.names = tuple(sorted(stacked))
    self.num_layers = sizes.pop()
    for name in self.names:
      arr = stacked[name]
      for i in range(self.num_layers):
        setattr(self, f'{name}_{i}', nnx.Param(arr[i]))

  def per_layer(self) -> list[dict[str, jax.Array]]:
    """Layer i's weights by name, for each i."""
    return [{name: getattr(self, f'{name}_{i}')[...] for name in self.names}
            for i in range(self.num_layers)]

  def stacked(self) -> dict[str, jax.Array]:
    """The per-layer arrays by name, stacked on a leading num_layers axis."""
    layers = self.per_layer()
    return {name: jnp.stack([p[name] for p in layers]) for name in self.names}


def run_layers(body, x, layers, per_layer_xs=()):
  """`x, ys = body(x, (p, *xs_i))` through every layer i, p its weights and xs_i row i of each
  array of `per_layer_xs` (e.g. a cache's keys); returns (x, ys stacked on a leading axis).

  `lax.scan` over the stacked weights, or a Python loop for `UnrolledLayers`."""
  if not isinstance(layers, UnrolledLayers):
    return jax.lax.scan(body, x, (layers.stacked(),) + tuple(per_layer_xs))
  ys = []
  for i, p in enumerate(layers.per_layer()):
    x, y = body(x, (p,) + tuple(a[i] for a in per_layer_xs))
    ys.append(y)
  if all(y is None for y in ys):
    return x, None
  return x, jax.tree.map(lambda *a: jnp.stack(a), *ys)


def attention_inputs(cfg: ModelConfig, p: dict[str, jax.Array], x_Bx_xD, positions_Bx_):
  """A block's queries, keys and values (rotated) for its input `x` (..., D) at `positions`
  (...): the input norm, the projections (and biases), the q/k norms and RoPE. Shared by the
  decoder's `_block` and the beam step of `neo_jax.decode.shared_prompt`."""
  dt = cfg.compute_dtype
  inv_freq = rope_inv_freq(cfg)
  h = _rms_norm(x_Bx_xD, p['input_layernorm'], cfg.norm_eps)
  q = project('...d,dnh->...nh', h, p['q_proj'], dt)
  k = project('...d,dkh->...kh', h, p['k_proj'], dt)
  v = project('...d,dkh->...kh', h, p['v_proj'], dt)
  if cfg.qkv_bias:
    q = q + p['q_bias'].astype(dt)
    k = k + p['k_bias'].astype(dt)
    v = v + p['v_bias'].astype(dt)
  if cfg.qk_norm:
    q = _rms_norm(q, p['q_norm'], cfg.norm_eps)
    k = _rms_norm(k, p['k_norm'], cfg.norm_eps)
  return _rope(q, positions_Bx_, inv_freq), _rope(k, positions_Bx_, inv_freq), v


def _block(cfg: ModelConfig, p: dict[str, jax.Array], x_BxTxD, positions_BxT, mask_BxTxS,
           cache_k=None, cache_v=None, end=None):
  """One decoder block. With a cache, the new keys/values are written at slot `end` and the
  queries attend over the whole cache; returns (x, (k, v)) where k, v are what was attended."""
  dt = cfg.compute_dtype
  q, k, v = attention_inputs(cfg, p, x_BxTxD, positions_BxT)
  q = constrain(q, ('batch', 'length', 'act_heads', None))
  if cache_k is not None:
    k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), (0, end, 0, 0))
    v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), (0, end, 0, 0))
  attn = _attend(q, k.astype(dt), v.astype(dt), mask_BxTxS)
  x = x_BxTxD + project('btnh,nhd->btd', attn, p['o_proj'], dt)
  x = constrain(x, ('batch', 'length', 'act_embed'))
  h = _rms_norm(x, p['post_attention_layernorm'], cfg.norm_eps)
  gate = project('btd,df->btf', h, p['gate_proj'], dt)
  up = project('btd,df->btf', h, p['up_proj'], dt)
  act = constrain(jax.nn.silu(gate) * up, ('batch', 'length', 'act_mlp'))
  x = x + project('btf,fd->btd', act, p['down_proj'], dt)
  return constrain(x, ('batch', 'length', 'act_embed')), (k, v)


def _check_tokens(name: str, tokens, other: dict[str, Any]):
  if tokens.ndim != 2:
    raise ValueError(f'{name} must be 2-D (batch, length), got shape {tokens.shape}')
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f'{name} must be integer token ids, got dtype {tokens.dtype}')
  for other_name, arr in other.items():
    if arr is not None and tuple(arr.shape) != tuple(tokens.shape):
      raise ValueError(f'{other_name} has shape {tuple(arr.shape)}, expected '
                       f'{tuple(tokens.shape)} like {name}')


class Decoder(nnx.Module):
  """Decoder-only LM: embed -> num_layers x (RMSNorm, GQA+RoPE, RMSNorm, SwiGLU) -> RMSNorm ->
  LM head (the embedding matrix when `cfg.tie_embeddings`). Logits are float32."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dt = cfg.storage_dtype
    self.embed_tokens = _param(rngs, (cfg.vocab_size, cfg.d_model), dt, ('vocab', 'embed'))
    self.layers = DecoderLayers(cfg, rngs=rngs)
    self.norm = _param(None, (cfg.d_model,), dt, ('norm',), 'ones')
    if not cfg.tie_embeddings:
      self.lm_head = _param(rngs, (cfg.vocab_size, cfg.d_model), dt, ('vocab', 'embed'))

  # -- pieces ---------------------------------------------------------------------------------

  def embed(self, tokens_BxL: jax.Array) -> jax.Array:
    """(B, L) int token ids -> (B, L, D) input embeddings in the compute dtype."""
    # Gathering from a table split over 'embed' makes the partitioner replicate the result
    # before splitting it by batch; all-gathering that (small) dimension first avoids it.
    table_VxD = constrain(self.embed_tokens[...], ('vocab', None))
    x = jnp.take(table_VxD, tokens_BxL, axis=0).astype(self.cfg.compute_dtype)
    return constrain(x, ('batch', 'length', 'act_embed'))

  def head_weight(self) -> jax.Array:
    """(V, D) rows of the LM head (the embedding matrix when tied)."""
    return (self.embed_tokens if self.cfg.tie_embeddings else self.lm_head)[...]

  def hidden_from_embeddings(self, x_BxLxD: jax.Array, positions_BxL: jax.Array | None = None,
                             segment_ids_BxL: jax.Array | None = None) -> jax.Array:
    """The training forward from input embeddings; returns final-normed (B, L, D).

    Token i attends to token j iff j <= i and segment_ids[i] == segment_ids[j] (packed
    sequences never see each other; segment 0 is padding). positions default to arange(L).
    """
    cfg = self.cfg
    b, l, _ = x_BxLxD.shape
    if positions_BxL is None:
      positions_BxL = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    if segment_ids_BxL is None:
      segment_ids_BxL = jnp.ones((b, l), jnp.int32)
    for name, arr in (('positions_BxL', positions_BxL), ('segment_ids_BxL', segment_ids_BxL)):
      if tuple(arr.shape) != (b, l):
        raise ValueError(f'{name} has shape {tuple(arr.shape)}, expected {(b, l)}')
    causal_LxL = jnp.tril(jnp.ones((l, l), bool))
    same_BxLxL = segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :]
    mask_BxLxL = causal_LxL[None] & same_BxLxL

    def body(x, xs):
      x, _ = _block(cfg, xs[0], x, positions_BxL, mask_BxLxL)
      return x, None

    if cfg.remat == 'full':
      body = jax.checkpoint(body, prevent_cse=False)
    elif cfg.remat == 'dots':
      body = jax.checkpoint(body, prevent_cse=False,
                            policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    x, _ = run_layers(body, x_BxLxD.astype(cfg.compute_dtype), self.layers)
    return _rms_norm(x, self.norm[...], cfg.norm_eps)

  def hidden(self, tokens_BxL: jax.Array, positions_BxL: jax.Array | None = None,
             segment_ids_BxL: jax.Array | None = None) -> jax.Array:
    """(B, L) tokens -> final-normed hidden states (B, L, D); masking as in __call__."""
    tokens_BxL = jnp.asarray(tokens_BxL)
    _check_tokens('tokens_BxL', tokens_BxL,
                  {'positions_BxL': positions_BxL, 'segment_ids_BxL': segment_ids_BxL})
    return self.hidden_from_embeddings(self.embed(tokens_BxL), positions_BxL, segment_ids_BxL)

  def logits_from_hidden(self, h: jax.Array, rows: jax.Array | None = None) -> jax.Array:
    """float32 logits from hidden states h (..., D).

    rows=None: all V rows -> (..., V). rows (K,) int: only those head rows -> (..., K).
    rows (B, K) int: row set b for h[b] (h is (B, ..., D)) -> (B, ..., K).
    """
    dt = self.cfg.compute_dtype
    w_VxD = self.head_weight().astype(dt)
    h = h.astype(dt)
    if rows is None:
      logits = jnp.einsum('...d,vd->...v', h, w_VxD, preferred_element_type=jnp.float32)
      if logits.ndim == 3:
        logits = constrain(logits, ('batch', 'length', 'act_vocab'))
      return logits
    rows = jnp.asarray(rows)
    if not jnp.issubdtype(rows.dtype, jnp.integer):
      raise ValueError(f'rows must be integer vocabulary rows, got dtype {rows.dtype}')
    if rows.ndim == 1:
      w_KxD = jnp.take(w_VxD, rows, axis=0)
      return jnp.einsum('...d,kd->...k', h, w_KxD, preferred_element_type=jnp.float32)
    if rows.ndim == 2:
      if h.ndim < 2 or h.shape[0] != rows.shape[0]:
        raise ValueError(f'batched rows {rows.shape} need h of shape (B={rows.shape[0]}, ..., '
                         f'D), got {h.shape}')
      w_BxKxD = jnp.take(w_VxD, rows, axis=0)
      h_BxMxD = h.reshape(h.shape[0], -1, h.shape[-1])
      logits = jnp.einsum('bmd,bkd->bmk', h_BxMxD, w_BxKxD, preferred_element_type=jnp.float32)
      return logits.reshape(h.shape[:-1] + (rows.shape[1],))
    raise ValueError(f'rows must have shape (K,) or (B, K), got {rows.shape}')

  # -- training forward -----------------------------------------------------------------------

  def __call__(self, tokens_BxL: jax.Array, positions_BxL: jax.Array | None = None,
               segment_ids_BxL: jax.Array | None = None) -> jax.Array:
    """(B, L) tokens -> float32 logits (B, L, V); causal within each segment."""
    return self.logits_from_hidden(self.hidden(tokens_BxL, positions_BxL, segment_ids_BxL))

  # -- incremental decoding -------------------------------------------------------------------

  def decode_hidden(self, tokens_BxT: jax.Array, positions_BxT: jax.Array, cache: Cache,
                    valid_BxT: jax.Array | None = None) -> tuple[jax.Array, Cache]:
    """Appends T tokens per row at cache slots [end, end + T); returns (h (B, T, D), cache).

    Each new token attends to every valid slot at or before its own slot. Prompts of
    different lengths are left-padded: prefill with valid_BxT False on the pads and positions
    counting real tokens only (pads' positions are ignored), then decode T=1 steps.
    The caller keeps end + T <= cache.max_len (checked here only when `end` is concrete:
    under jit an overflow would overwrite the last slots).
    """
    cfg = self.cfg
    tokens_BxT = jnp.asarray(tokens_BxT)
    _check_tokens('tokens_BxT', tokens_BxT,
                  {'positions_BxT': positions_BxT, 'valid_BxT': valid_BxT})
    b, t = tokens_BxT.shape
    if cache.k.shape != (cfg.num_layers, b, cache.max_len, cfg.num_kv_heads, cfg.head_dim):
      raise ValueError(f'cache.k has shape {cache.k.shape}, expected (num_layers='
                       f'{cfg.num_layers}, B={b}, S, {cfg.num_kv_heads}, {cfg.head_dim})')
    if t > cache.max_len:
      raise ValueError(f'{t} new tokens do not fit a cache of {cache.max_len} slots')
    if not isinstance(cache.end, jax.core.Tracer) and int(cache.end) + t > cache.max_len:
      raise ValueError(f'cache overflow: end={int(cache.end)} + {t} new tokens > max_len '
                       f'{cache.max_len}')
    if valid_BxT is None:
      valid_BxT = jnp.ones((b, t), bool)
    end = cache.end.astype(jnp.int32)
    valid_BxS = jax.lax.dynamic_update_slice(cache.valid_BxS, valid_BxT.astype(bool), (0, end))
    slot_T = end + jnp.arange(t, dtype=jnp.int32)
    causal_TxS = jnp.arange(cache.max_len, dtype=jnp.int32)[None, :] <= slot_T[:, None]
    mask_BxTxS = valid_BxS[:, None, :] & causal_TxS[None]

    def body(x, xs):
      p, ck, cv = xs
      return _block(cfg, p, x, positions_BxT, mask_BxTxS, ck, cv, end)

    x, (k, v) = run_layers(body, self.embed(tokens_BxT), self.layers, (cache.k, cache.v))
    new_cache = Cache(k=k, v=v, valid_BxS=valid_BxS, end=end + t)
    return _rms_norm(x, self.norm[...], cfg.norm_eps), new_cache

  def decode(self, tokens_BxT: jax.Array, positions_BxT: jax.Array, cache: Cache,
             valid_BxT: jax.Array | None = None) -> tuple[jax.Array, Cache]:
    """`decode_hidden` followed by the full LM head: (float32 logits (B, T, V), cache)."""
    h, cache = self.decode_hidden(tokens_BxT, positions_BxT, cache, valid_BxT)
    return self.logits_from_hidden(h), cache

  def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> Cache:
    return init_cache(self.cfg, batch, max_len, dtype)
