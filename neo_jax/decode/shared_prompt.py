"""Beams that share their request's prompt cache: the decoder's step for K beams per request.

A beam search (neo_jax/decode/beam_search.py) runs the prompt once per request; its K beams then
differ only in the few tokens each has decoded since. Giving every beam a copy of the prompt's
keys and values (`cache.repeat_batch`) and re-gathering the whole cache by parent at every step
moves K copies of the prompt through memory for nothing. Here a beam step reads the prompt's
cache of its request as it is (one row per request, never copied) and keeps only the decoded
tokens' keys and values per beam, in a `BeamCache` of a few slots.

The attention of a beam's new token is one softmax over the concatenation of [its request's
prompt slots, its own decoded slots]: the same scores, masks and normalisation as attending
over a per-beam copy of the whole cache (the K beams of a request are simply K queries against
the one prompt), so the search's results equal the copying path's up to float rounding
(tests/test_decode_shared_prompt.py).

`SharedPromptDecoder` wraps `neo_jax.model.decoder.Decoder` (plain or with LoRA layers: it
reads the block weights through `layers.stacked()` as the decoder does) and follows both
`interface.DecodingModel` (by delegation) and `interface.BeamStepModel`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from neo_jax.model.decoder import (NEG_INF, Cache, Decoder, _rms_norm, attention_inputs,
                                   project, run_layers)


@struct.dataclass
class BeamCache:
  """Keys/values of the tokens each beam decoded after the shared prompt.

  Attributes:
    k, v: (num_layers, B, K, L, num_kv_heads, head_dim), keys after RoPE; slot l holds the
      beam's l-th decoded token.
    end: int32 scalar, the next slot to write (the same for every beam).
  """

  k: jax.Array
  v: jax.Array
  end: jax.Array


def gather_beams(beam_cache, parent_BxK: jax.Array):
  """New beam k of request b = old beam parent_BxK[b, k] of the same request.

  Layout of every non-scalar leaf: batch at axis 1, beam at axis 2 (as `BeamCache`); scalar
  leaves are shared and kept.
  """

  def take(leaf):
    if jnp.ndim(leaf) == 0:
      return leaf
    index = parent_BxK.reshape((1,) + parent_BxK.shape + (1,) * (leaf.ndim - 3))
    return jnp.take_along_axis(leaf, index.astype(jnp.int32), axis=2)

  return jax.tree.map(take, beam_cache)


def _attend_shared(q_BxKxNxH, pk_BxSxCxH, pv_BxSxCxH, prompt_valid_BxS, bk_BxKxLxCxH,
                   bv_BxKxLxCxH, beam_valid_L):
  """Grouped-query attention of each beam's query over [prompt slots; its decoded slots],
  one softmax over both (query head n reads kv head n // (N // C), as the decoder's)."""
  b, k, n, h = q_BxKxNxH.shape
  c = pk_BxSxCxH.shape[2]
  s = pk_BxSxCxH.shape[1]
  dt = q_BxKxNxH.dtype
  q = q_BxKxNxH.reshape(b, k, c, n // c, h)
  scale = 1.0 / math.sqrt(h)
  sp = jnp.einsum('bkcgh,bsch->bcgks', q, pk_BxSxCxH.astype(dt),
                  preferred_element_type=jnp.float32) * scale
  sp = jnp.where(prompt_valid_BxS[:, None, None, None, :], sp, NEG_INF)
  sb = jnp.einsum('bkcgh,bklch->bcgkl', q, bk_BxKxLxCxH.astype(dt),
                  preferred_element_type=jnp.float32) * scale
  sb = jnp.where(beam_valid_L, sb, NEG_INF)
  probs = jax.nn.softmax(jnp.concatenate([sp, sb], axis=-1), axis=-1).astype(dt)
  out = (project('bcgks,bsch->bkcgh', probs[..., :s], pv_BxSxCxH, dt)
         + project('bcgkl,bklch->bkcgh', probs[..., s:], bv_BxKxLxCxH, dt))
  return out.reshape(b, k, n, h)


class SharedPromptDecoder:
  """A `Decoder` whose beams read their request's prompt cache without copying it.

  Hashed by identity like the models the searches take as a static argument; build it inside
  the jitted function that builds the decoder (e.g. after `nnx.merge`).
  """

  def __init__(self, model: Decoder):
    if not isinstance(model, Decoder):
      raise TypeError(f'SharedPromptDecoder wraps a neo_jax Decoder, got {type(model).__name__}')
    self.model = model
    self.cfg = model.cfg

  # -- interface.DecodingModel, by delegation --------------------------------------------------

  def decode_hidden(self, tokens_NxT, positions_NxT, cache, valid_NxT):
    return self.model.decode_hidden(tokens_NxT, positions_NxT, cache, valid_NxT)

  def logits_from_hidden(self, h, rows=None):
    return self.model.logits_from_hidden(h, rows)

  def init_cache(self, batch: int, max_len: int, dtype=None) -> Cache:
    return self.model.init_cache(batch, max_len, dtype)

  # -- interface.BeamStepModel ------------------------------------------------------------------

  def init_beam_cache(self, batch: int, beams: int, length: int, dtype=None) -> BeamCache:
    """Room for `length` decoded tokens per beam; dtype defaults to the compute dtype."""
    cfg = self.cfg
    if min(batch, beams, length) < 1:
      raise ValueError(f'init_beam_cache needs batch, beams, length >= 1, got {batch}, '
                       f'{beams}, {length}')
    shape = (cfg.num_layers, batch, beams, length, cfg.num_kv_heads, cfg.head_dim)
    dtype = jnp.dtype(cfg.dtype if dtype is None else dtype)
    return BeamCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                     end=jnp.zeros((), jnp.int32))

  def beam_step(self, tokens_BxK: jax.Array, positions_BxK: jax.Array, prompt_cache: Cache,
                beam_cache: BeamCache) -> tuple[jax.Array, BeamCache]:
    """Feeds one token per beam; returns (final-normed hidden (B, K, D), beam cache).

    Beam k of request b attends to the valid slots of prompt_cache row b and to its own decoded
    slots up to and including the new one (written at beam_cache.end). The caller keeps
    end < the beam cache's length (under jit an overflow would overwrite the last slot).
    """
    cfg = self.cfg
    b, k = tokens_BxK.shape
    if prompt_cache.k.shape[1] != b or beam_cache.k.shape[1:3] != (b, k):
      raise ValueError(f'{b} requests x {k} beams, but the prompt cache holds '
                       f'{prompt_cache.k.shape[1]} rows and the beam cache '
                       f'{beam_cache.k.shape[1:3]}')
    end = beam_cache.end.astype(jnp.int32)
    beam_valid_L = jnp.arange(beam_cache.k.shape[3], dtype=jnp.int32) <= end
    x = self.model.embed(tokens_BxK)

    def body(x, xs):
      p, pk, pv, bk, bv = xs
      return self._block(p, x, positions_BxK, pk, pv, prompt_cache.valid_BxS, bk, bv, end,
                         beam_valid_L)

    x, (k_new, v_new) = run_layers(
        body, x, self.model.layers,
        (prompt_cache.k, prompt_cache.v, beam_cache.k, beam_cache.v))
    h = _rms_norm(x, self.model.norm[...], cfg.norm_eps)
    return h, BeamCache(k=k_new, v=v_new, end=end + 1)

  def _block(self, p, x_BxKxD, positions_BxK, pk, pv, prompt_valid_BxS, bk, bv, end,
             beam_valid_L):
    """One decoder block for one token per beam (the decoder's `_block`, shared attention)."""
    cfg = self.cfg
    dt = cfg.compute_dtype
    q, k, v = attention_inputs(cfg, p, x_BxKxD, positions_BxK)
    bk = jax.lax.dynamic_update_slice(bk, k[:, :, None].astype(bk.dtype), (0, 0, end, 0, 0))
    bv = jax.lax.dynamic_update_slice(bv, v[:, :, None].astype(bv.dtype), (0, 0, end, 0, 0))
    attn = _attend_shared(q, pk, pv, prompt_valid_BxS, bk, bv, beam_valid_L)
    x = x_BxKxD + project('bknh,nhd->bkd', attn, p['o_proj'], dt)
    h = _rms_norm(x, p['post_attention_layernorm'], cfg.norm_eps)
    gate = project('bkd,df->bkf', h, p['gate_proj'], dt)
    up = project('bkd,df->bkf', h, p['up_proj'], dt)
    x = x + project('bkf,fd->bkd', jax.nn.silu(gate) * up, p['down_proj'], dt)
    return x, (bk, bv)


def beam_model(model):
  """`model` itself when it follows `interface.BeamStepModel`, a `SharedPromptDecoder` for a
  plain `Decoder`, None for any other model (it decodes beams through copied caches)."""
  if hasattr(model, 'beam_step') and hasattr(model, 'init_beam_cache'):
    return model
  if isinstance(model, Decoder):
    return SharedPromptDecoder(model)
  return None
