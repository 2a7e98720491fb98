"""The paper's optimiser: AdamW b=(0.9, 0.95), weight decay, global-norm clipping, linear
warmup then cosine decay. The grounding stage trains only some rows of some matrices (the SID
rows of the embedding and the head), which optax's per-leaf masks cannot express, so an
`update_mask` pytree (broadcastable to the parameters) zeroes both the gradients that enter
the optimiser and the updates that leave it (the second also stops weight decay)."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax


def schedule(cfg: ml_collections.ConfigDict) -> optax.Schedule:
  warmup = min(int(cfg.warmup_steps), max(int(cfg.steps) - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=float(cfg.learning_rate), warmup_steps=warmup,
      decay_steps=max(int(cfg.steps), warmup + 1),
      end_value=float(cfg.learning_rate) * float(cfg.get('final_lr_fraction', 0.1)))


def _multiply_by(mask: Any) -> optax.GradientTransformation:

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u * m.astype(u.dtype), updates, mask), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_optimizer(cfg: ml_collections.ConfigDict, update_mask: Any = None
                   ) -> optax.GradientTransformation:
  """cfg: learning_rate, warmup_steps, steps, b1, b2, weight_decay, clip_norm."""
  parts = []
  if update_mask is not None:
    parts.append(_multiply_by(update_mask))
  parts += [
      optax.clip_by_global_norm(float(cfg.clip_norm)),
      optax.adamw(schedule(cfg), b1=float(cfg.b1), b2=float(cfg.b2),
                  weight_decay=float(cfg.weight_decay)),
  ]
  if update_mask is not None:
    parts.append(_multiply_by(update_mask))
  return optax.chain(*parts)
