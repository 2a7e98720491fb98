"""One training stage: a pure jitted step over (params, opt_state), resumable checkpoints,
progress lines and metric logs.

NEO trains in two stages that share this loop: "grounding" (the backbone frozen, only SID rows
of the embedding and head updated, through `update_mask`) and "capability" (full fine-tuning).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from tensorboardX import SummaryWriter

from neo_jax.train import optimizer as optimizer_lib
from neo_jax.train.data import PackedData


class NonFiniteLossError(FloatingPointError):
  pass


def masked_lm_loss(logits_BxLxV: jax.Array, batch: dict[str, jax.Array]
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Next-token cross-entropy on the tokens whose loss_mask is set (the completions).

  Position t predicts token t+1; a target counts only if it is in the same packed segment as
  its input, so no example ever learns from its neighbour.
  """
  targets = batch['tokens'][:, 1:]
  weights = (batch['loss_mask'][:, 1:]
             & (batch['segment_ids'][:, 1:] == batch['segment_ids'][:, :-1])
             & (batch['segment_ids'][:, 1:] > 0)).astype(jnp.float32)
  logits = logits_BxLxV[:, :-1].astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  count = jnp.maximum(weights.sum(), 1.0)
  loss = (losses * weights).sum() / count
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return loss, {'loss': loss, 'accuracy': (correct * weights).sum() / count,
                'loss_tokens': weights.sum()}


def _log_jsonl(path: str, record: dict[str, Any]) -> None:
  with open(path, 'a') as f:
    f.write(json.dumps(record) + '\n')


def train_stage(model: nnx.Module, data: PackedData, cfg: ml_collections.ConfigDict, *,
                name: str, workdir: str, update_mask: Any = None,
                log: Callable[[str], None] = print) -> dict[str, float]:
  """Trains `model` in place for cfg.steps steps on `data`; returns summary metrics.

  cfg: steps, learning_rate, warmup_steps, b1, b2, weight_decay, clip_norm, log_every,
  checkpoint_every. If `workdir/checkpoints/<name>` holds a checkpoint, training resumes from
  its step (batches are a pure function of the step, so the resumed run sees the same data).
  Raises NonFiniteLossError on a NaN/inf loss, leaving the last good checkpoint in place.
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optimizer_lib.make_optimizer(cfg, update_mask)
  opt_state = tx.init(params)
  steps = int(cfg.steps)

  ckpt_dir = os.path.join(os.path.abspath(workdir), 'checkpoints', name)
  manager = ocp.CheckpointManager(
      ckpt_dir, options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
  start = 0
  if manager.latest_step() is not None:
    start = int(manager.latest_step())
    restored = manager.restore(start, args=ocp.args.StandardRestore(
        {'params': params, 'opt_state': opt_state}))
    params, opt_state = restored['params'], restored['opt_state']
    log(f'[{name}] resumed from step {start} ({ckpt_dir})')

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, batch):
    def loss_fn(p):
      m = nnx.merge(graphdef, p, rest)
      logits = m(batch['tokens'], batch['positions'], batch['segment_ids'])
      return masked_lm_loss(logits, batch)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    metrics['grad_norm'] = optax.tree.norm(grads)
    return optax.apply_updates(params, updates), opt_state, metrics

  logs_dir = os.path.join(workdir, 'logs')
  os.makedirs(logs_dir, exist_ok=True)
  jsonl = os.path.join(logs_dir, f'{name}.jsonl')
  writer = SummaryWriter(os.path.join(workdir, 'tensorboard', name))
  log_every = max(1, int(cfg.get('log_every', 50)))
  ckpt_every = int(cfg.get('checkpoint_every', 0))
  tokens_per_step = data.batch_size * data.tokens.shape[1]
  sched = optimizer_lib.schedule(cfg)

  def save(step):
    manager.save(step, args=ocp.args.StandardSave({'params': params, 'opt_state': opt_state}))

  pending = None  # (step, metrics on device): read one step late so the host never stalls
  history: list[dict[str, float]] = []
  t0 = time.perf_counter()
  t_last, step_last = t0, start

  def drain(step_and_metrics):
    nonlocal t_last, step_last
    step, metrics = step_and_metrics
    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not math.isfinite(m['loss']):
      manager.wait_until_finished()
      raise NonFiniteLossError(
          f'[{name}] non-finite loss {m["loss"]} at step {step}; last good checkpoint: '
          f'step {manager.latest_step()} in {ckpt_dir}')
    m['step'] = step
    m['learning_rate'] = float(sched(step - 1))
    history.append(m)
    if step % log_every == 0 or step == steps:
      now = time.perf_counter()
      tps = (step - step_last) * tokens_per_step / max(now - t_last, 1e-9)
      eta = (steps - step) * (now - t_last) / max(step - step_last, 1)
      log(f'[{name}] step {step}/{steps} loss {m["loss"]:.4f} acc {m["accuracy"]:.3f} '
          f'tokens/s {tps:,.0f} eta {eta:.0f}s')
      m['tokens_per_s'] = tps
      t_last, step_last = now, step
      _log_jsonl(jsonl, m)
      for k, v in m.items():
        if k != 'step':
          writer.add_scalar(f'{name}/{k}', v, step)

  for step in range(start + 1, steps + 1):
    batch = {k: jnp.asarray(v) for k, v in data.batch(step - 1).items()}
    params, opt_state, metrics = train_step(params, opt_state, batch)
    if pending is not None:
      drain(pending)
    pending = (step, metrics)
    if ckpt_every and step % ckpt_every == 0 and step < steps:
      save(step)
  if pending is not None:
    drain(pending)
  if steps > start:
    save(steps)
  manager.wait_until_finished()
  manager.close()
  writer.close()
  nnx.update(model, params)
  seconds = time.perf_counter() - t0
  final = history[-1] if history else {}
  # Average of the last 10% of steps: a less noisy figure than the last batch alone.
  tail = history[-max(1, len(history) // 10):]
  return {
      'steps': steps,
      'seconds': seconds,
      'final_loss': float(np.mean([h['loss'] for h in tail])) if tail else float('nan'),
      'final_accuracy': float(np.mean([h['accuracy'] for h in tail])) if tail else float('nan'),
      'tokens_per_s': (steps - start) * tokens_per_step / max(seconds, 1e-9),
      'last_step_loss': final.get('loss', float('nan')),
  }

