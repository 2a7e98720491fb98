"""The paper's optimiser: AdamW b=(0.9, 0.95), weight decay, global-norm clipping, linear
warmup then cosine decay. The grounding stage trains only some rows of some matrices (the SID
rows of the embedding and the head), which optax's per-leaf masks cannot express, so an
`update_mask` pytree (broadcastable to the parameters) zeroes both the gradients that enter
the optimiser and the updates that leave it (the second also stops weight decay)."""

from __future__ import annotations

from typing import Any

import jax
import optax


def schedule(*, steps: int, learning_rate: float, warmup_steps: int,
             final_lr_fraction: float = 0.1) -> optax.Schedule:
  """Learning rate by step (0-based): 0 -> `learning_rate` linearly over `warmup_steps`
  (capped at steps - 1), then a cosine down to `learning_rate * final_lr_fraction` at
  `steps`."""
  warmup = min(int(warmup_steps), max(int(steps) - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=float(learning_rate), warmup_steps=warmup,
      decay_steps=max(int(steps), warmup + 1),
      end_value=float(learning_rate) * float(final_lr_fraction))


def _multiply_by(mask: Any) -> optax.GradientTransformation:

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u * m.astype(u.dtype), updates, mask), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_optimizer(learning_rate: optax.Schedule, *, b1: float, b2: float,
                   weight_decay: float, clip_norm: float, update_mask: Any = None
                   ) -> optax.GradientTransformation:
  """Clip to global norm `clip_norm`, then AdamW(b1, b2, decoupled `weight_decay`) with the
  learning rate `learning_rate(step)` (`schedule(...)`); `update_mask` (optional, shaped like
  the parameters, 0/1) zeroes the gradients before and the updates after."""
  parts = []
  if update_mask is not None:
    parts.append(_multiply_by(update_mask))
  parts += [
      optax.clip_by_global_norm(float(clip_norm)),
      optax.adamw(learning_rate, b1=float(b1), b2=float(b2), weight_decay=float(weight_decay)),
  ]
  if update_mask is not None:
    parts.append(_multiply_by(update_mask))
  return optax.chain(*parts)
