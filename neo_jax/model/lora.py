"""LoRA: low-rank adapters on the attention and MLP projections of the decoder.

`apply_lora(model, rank, alpha)` replaces `model.layers` (a `DecoderLayers`) by `LoRALayers`,
which keeps the base weights and adds, for each target projection W of shape
(num_layers, *in_dims, *out_dims), two factors A (num_layers, *in_dims, r) and
B (num_layers, r, *out_dims); the decoder then runs with W + (alpha / r) * A @ B per layer.
The decoder reads its block weights only through `layers.stacked()`, so it needs no change.
B starts at zero, so a freshly adapted model computes exactly what the base model does.

Training only the adapters (and the SID rows of the embedding and head, which are new in
NEO's vocabulary and have nothing to adapt from) is `trainable_filter()` with the row mask
`update_mask(model, first_sid_row)`, for `train.loop.train_stage(trainable=..., update_mask=
...)`: the base weights are frozen, get no optimizer state and are not checkpointed.
`merge_lora(model)` folds the adapters into the base weights and puts the plain
`DecoderLayers` back, so decoding and export see an ordinary decoder.

The per-step cost: the adapted weights are formed for the whole stack every forward (one
weight-sized product per target), and the gradient reaches A and B through the full-size
weight gradient, so compute is close to full fine-tuning; memory saves the optimizer state
of the base weights.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from neo_jax.model.decoder import Decoder, DecoderLayers

# Projection -> number of input dimensions after the layer axis (the rest are outputs).
TARGET_IN_DIMS = {'q_proj': 1, 'k_proj': 1, 'v_proj': 1, 'o_proj': 2,
                  'gate_proj': 1, 'up_proj': 1, 'down_proj': 1}
TARGETS = tuple(TARGET_IN_DIMS)


class LoRAParam(nnx.Param):
  """An adapter factor (a Param, so it trains; its own type, so filters can pick it)."""


class LoRALayers(nnx.Module):
  """`DecoderLayers` plus low-rank adapters; `stacked()` returns the adapted weights."""

  def __init__(self, base: DecoderLayers, rank: int, alpha: float, *, rngs: nnx.Rngs,
               targets: Sequence[str] = TARGETS):
    if int(rank) < 1:
      raise ValueError(f'LoRA rank must be >= 1, got {rank}')
    if not float(alpha) > 0:
      raise ValueError(f'LoRA alpha must be > 0, got {alpha}')
    unknown = [t for t in targets if t not in TARGET_IN_DIMS]
    if unknown or not targets:
      raise ValueError(f'LoRA targets {list(targets)}: unknown {unknown}; choose from '
                       f'{TARGETS}')
    self.base = base
    self.rank = int(rank)
    self.scale = float(alpha) / int(rank)
    self.targets = tuple(targets)
    for name in self.targets:
      w = getattr(base, name)
      shape = w.get_value().shape
      axes = tuple(w.get_metadata()['logical_axes'])
      n_in = TARGET_IN_DIMS[name]
      fan_in = math.prod(shape[1:1 + n_in])
      a = jax.random.normal(rngs.params(), shape[:1 + n_in] + (self.rank,), jnp.float32)
      dtype = w.get_value().dtype
      setattr(self, f'{name}_lora_a', LoRAParam(
          (a / math.sqrt(fan_in)).astype(dtype), logical_axes=axes[:1 + n_in] + (None,)))
      setattr(self, f'{name}_lora_b', LoRAParam(
          jnp.zeros((shape[0], self.rank) + shape[1 + n_in:], dtype),
          logical_axes=(axes[0], None) + axes[1 + n_in:]))

  def delta(self, name: str) -> jax.Array:
    """(alpha / r) * A @ B for projection `name`, shaped like its weight."""
    a = getattr(self, f'{name}_lora_a')[...]
    b = getattr(self, f'{name}_lora_b')[...]
    nl, r = a.shape[0], a.shape[-1]
    d = jnp.einsum('lir,lro->lio', a.reshape(nl, -1, r), b.reshape(nl, r, -1),
                   preferred_element_type=jnp.float32)
    return (self.scale * d).reshape(a.shape[:-1] + b.shape[2:])

  def stacked(self) -> dict[str, jax.Array]:
    p = self.base.stacked()
    for name in self.targets:
      p[name] = p[name] + self.delta(name).astype(p[name].dtype)
    return p


def has_lora(model: Decoder) -> bool:
  return isinstance(model.layers, LoRALayers)


def apply_lora(model: Decoder, rank: int, alpha: float, *, seed: int = 0,
               targets: Sequence[str] = TARGETS) -> Decoder:
  """Adds adapters to `model` in place (see the module docstring); returns it."""
  if has_lora(model):
    raise ValueError('the model already has LoRA adapters (merge_lora first)')
  model.layers = LoRALayers(model.layers, rank, alpha, rngs=nnx.Rngs(seed), targets=targets)
  return model


def merge_lora(model: Decoder) -> Decoder:
  """Folds the adapters into the base weights in place and removes them; returns `model`."""
  if not has_lora(model):
    raise ValueError('the model has no LoRA adapters to merge')
  lora = model.layers
  base = lora.base
  for name in lora.targets:
    w = getattr(base, name)
    w.set_value((w.get_value() + lora.delta(name).astype(w.get_value().dtype)))
  model.layers = base
  return model


def trainable_filter():
  """The parameters a LoRA stage trains: the adapters and the embedding / LM head (whose
  SID rows `update_mask` selects)."""
  return nnx.Any(LoRAParam, nnx.PathContains('embed_tokens'), nnx.PathContains('lm_head'))


def update_mask(model: Decoder, first_sid_row: int) -> nnx.State:
  """float32 masks shaped like `nnx.state(model, trainable_filter())`: 1 on every adapter,
  and on the embedding / head rows >= first_sid_row (the SID rows), 0 on the text rows."""
  v = model.cfg.vocab_size
  if not 0 <= first_sid_row <= v:
    raise ValueError(f'first_sid_row={first_sid_row} outside [0, vocab_size={v}]')
  rows_Vx1 = (jnp.arange(v)[:, None] >= first_sid_row).astype(jnp.float32)
  flat = []
  for path, var in nnx.to_flat_state(nnx.state(model, trainable_filter())):
    if isinstance(var, LoRAParam):
      mask = jnp.ones((1,) * var.get_value().ndim, jnp.float32)
    else:
      mask = rows_Vx1
    flat.append((path, var.replace(mask)))
  return nnx.from_flat_state(flat)
