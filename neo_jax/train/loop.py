"""One training stage: a pure jitted step over (params, opt_state), resumable checkpoints,
progress lines and metric logs.

NEO trains in two stages that share this loop: "grounding" (the backbone frozen, only SID rows
of the embedding and head updated, through `update_mask`) and "capability" (full fine-tuning).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tensorboardX import SummaryWriter

from neo_jax.model import sharding
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


def make_train_step(graphdef: nnx.GraphDef, rest: nnx.State,
                    tx: optax.GradientTransformation, grad_accum_steps: int = 1):
  """The pure train step `(params, opt_state, batch) -> (params, opt_state, metrics)`.

  The loss is the token-weighted mean of `masked_lm_loss` over the whole batch; with
  grad_accum_steps > 1 the batch is split into that many micro-batches whose gradients are
  summed in a `lax.scan`, which gives the same update with less activation memory.
  """
  accum = int(grad_accum_steps)

  def loss_and_grads(params, batch):
    def loss_fn(p, micro):
      m = nnx.merge(graphdef, p, rest)
      logits = m(micro['tokens'], micro['positions'], micro['segment_ids'])
      loss, metrics = masked_lm_loss(logits, micro)
      # Token-weighted sums, so that micro-batches add up to the whole batch's mean.
      return loss * metrics['loss_tokens'], metrics

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum == 1:
      (total, metrics), grads = grad_fn(params, batch)
      count = metrics['loss_tokens']
      correct = metrics['accuracy'] * count
    else:
      micro = jax.tree.map(lambda x: x.reshape((accum, -1) + x.shape[1:]), batch)

      def body(carry, mb):
        g_acc, total, count, correct = carry
        (t, m), g = grad_fn(params, mb)
        return (jax.tree.map(jnp.add, g_acc, g), total + t, count + m['loss_tokens'],
                correct + m['accuracy'] * m['loss_tokens']), None

      zeros = jax.tree.map(jnp.zeros_like, params)
      (grads, total, count, correct), _ = jax.lax.scan(
          body, (zeros, 0.0, 0.0, 0.0), micro)
    count = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / count, grads)
    return grads, {'loss': total / count, 'accuracy': correct / count, 'loss_tokens': count}

  def step_fn(params, opt_state, batch):
    grads, metrics = loss_and_grads(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    metrics['grad_norm'] = optax.tree.norm(grads)
    return optax.apply_updates(params, updates), opt_state, metrics

  return step_fn


def _batch_spec(mesh: Mesh | None, rules: Mapping[str, Any]) -> NamedSharding | None:
  if mesh is None:
    return None
  axes = rules.get('batch')
  return NamedSharding(mesh, PartitionSpec(axes))


def train_stage(model: nnx.Module, data: PackedData, cfg: ml_collections.ConfigDict, *,
                name: str, workdir: str, update_mask: Any = None,
                mesh: Mesh | None = None, rules: Mapping[str, Any] = sharding.LOGICAL_RULES,
                log: Callable[[str], None] = print) -> dict[str, float]:
  """Trains `model` in place for cfg.steps steps on `data`; returns summary metrics.

  cfg: steps, learning_rate, warmup_steps, b1, b2, weight_decay, clip_norm, log_every,
  checkpoint_every, optional grad_accum_steps (micro-batches per step; the batch size must be
  a multiple of it; the update equals the one of the whole batch).
  With `mesh`, parameters and optimizer state are sharded by the logical rules
  (neo_jax/model/sharding.py), the batch is split over the rules' 'batch' axes, and the step
  is one jitted program with explicit in/out shardings and donated state. Without a mesh the
  step runs on the default device.
  If `workdir/checkpoints/<name>` holds a checkpoint, training resumes from its step (batches
  are a pure function of the step, so the resumed run sees the same data and, on the same
  machine, reaches the same parameters). Raises NonFiniteLossError on a NaN/inf loss, leaving
  the last good checkpoint in place.
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  steps = int(cfg.steps)
  accum = int(cfg.get('grad_accum_steps', 1))
  if accum < 1 or data.batch_size % accum:
    raise ValueError(f'[{name}] grad_accum_steps={accum} must be >= 1 and divide the batch '
                     f'size {data.batch_size}')
  tx = optimizer_lib.make_optimizer(cfg, update_mask)
  batch_sharding = _batch_spec(mesh, rules)
  if mesh is not None:
    param_sharding = sharding.param_shardings(params, mesh, rules)
    params = jax.device_put(params, param_sharding)
    rest = jax.device_put(rest, NamedSharding(mesh, PartitionSpec()))
    with jax.set_mesh(mesh):
      opt_state = jax.jit(tx.init)(params)
    opt_sharding = jax.tree.map(lambda x: x.sharding, opt_state)
  else:
    opt_state = tx.init(params)

  ckpt_dir = os.path.join(os.path.abspath(workdir), 'checkpoints', name)
  summary_path = os.path.join(ckpt_dir, 'summary.json')
  manager = ocp.CheckpointManager(
      ckpt_dir, options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
  start = 0
  if manager.latest_step() is not None:
    start = int(manager.latest_step())
    restored = manager.restore(start, args=ocp.args.StandardRestore(
        {'params': params, 'opt_state': opt_state}))
    params, opt_state = restored['params'], restored['opt_state']
    log(f'[{name}] resumed from step {start} ({ckpt_dir})')

  step_fn = make_train_step(graphdef, rest, tx, accum)

  if mesh is None:
    train_step = jax.jit(step_fn, donate_argnums=(0, 1))
  else:
    replicated = NamedSharding(mesh, PartitionSpec())
    train_step = jax.jit(
        step_fn, donate_argnums=(0, 1),
        in_shardings=(param_sharding, opt_sharding, batch_sharding),
        out_shardings=(param_sharding, opt_sharding, replicated))

  logs_dir = os.path.join(workdir, 'logs')
  os.makedirs(logs_dir, exist_ok=True)
  jsonl = os.path.join(logs_dir, f'{name}.jsonl')
  writer = SummaryWriter(os.path.join(workdir, 'tensorboard', name))
  log_every = max(1, int(cfg.get('log_every', 50)))
  ckpt_every = int(cfg.get('checkpoint_every', 0))
  tokens_per_step = data.batch_size * data.seq_len
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

  context = jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()
  with context, sharding.axis_rules(rules):
    for step in range(start + 1, steps + 1):
      batch = data.batch(step - 1)
      batch = (jax.device_put(batch, batch_sharding) if batch_sharding is not None
               else {k: jnp.asarray(v) for k, v in batch.items()})
      params, opt_state, metrics = train_step(params, opt_state, batch)
      if pending is not None:
        drain(pending)
      pending = (step, metrics)
      if ckpt_every and step % ckpt_every == 0 and step < steps:
        # Check this step's loss before saving, so that a checkpoint is never non-finite.
        drain(pending)
        pending = None
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
  if not history:  # the stage had finished before: report what it reported then
    if os.path.exists(summary_path):
      with open(summary_path) as f:
        return json.load(f)
    log(f'[{name}] finished before at step {start} but its summary.json is missing (killed '
        'while writing it?); its final loss is unknown')
    return {'steps': steps, 'seconds': 0.0, 'final_loss': float('nan'),
            'resumed_from_step': start}
  # The last step's loss is exactly reproducible (resume included); the mean over the last
  # 10% of steps is the less noisy figure to compare runs by.
  tail = history[-max(1, len(history) // 10):]
  summary = {
      'steps': steps,
      'seconds': seconds,
      'final_loss': history[-1]['loss'],
      'final_accuracy': history[-1]['accuracy'],
      'tail_mean_loss': float(np.mean([h['loss'] for h in tail])),
      'tokens_per_s': (steps - start) * tokens_per_step / max(seconds, 1e-9),
      'resumed_from_step': start,
  }
  tmp = summary_path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(summary, f)
  os.replace(tmp, summary_path)
  return summary

