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
from neo_jax.train import hostdata
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
                    tx: optax.GradientTransformation, grad_accum_steps: int = 1, *,
                    with_frozen: bool = False):
  """The pure train step `(params, opt_state, batch) -> (params, opt_state, metrics)`.

  The loss is the token-weighted mean of `masked_lm_loss` over the whole batch; with
  grad_accum_steps > 1 the batch is split into that many micro-batches whose gradients are
  summed in a `lax.scan`, which gives the same update with less activation memory.
  with_frozen: the step takes a fourth argument, the frozen parameters (split from the model
  between the trained ones and `rest`: `nnx.split(model, trainable, nnx.Param, ...)`), which
  get no gradient and no optimizer state (LoRA).
  """
  accum = int(grad_accum_steps)

  def loss_and_grads(params, frozen, batch):
    def loss_fn(p, micro):
      m = nnx.merge(graphdef, p, frozen, rest) if with_frozen else nnx.merge(graphdef, p, rest)
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

  def step_fn(params, opt_state, batch, frozen=None):
    grads, metrics = loss_and_grads(params, frozen, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    metrics['grad_norm'] = optax.tree.norm(grads)
    return optax.apply_updates(params, updates), opt_state, metrics

  return step_fn


def make_eval_step(graphdef: nnx.GraphDef, rest: nnx.State):
  """`(params, frozen, batch) -> sums` of the masked LM loss over a batch: 'loss_sum'
  (nats), 'correct' and 'loss_tokens' (token counts), to be added up over batches."""

  def eval_fn(params, frozen, batch):
    m = nnx.merge(graphdef, params, frozen, rest)
    _, metrics = masked_lm_loss(m(batch['tokens'], batch['positions'], batch['segment_ids']),
                                batch)
    n = metrics['loss_tokens']
    return {'loss_sum': metrics['loss'] * n, 'correct': metrics['accuracy'] * n,
            'loss_tokens': n}

  return eval_fn


def valid_batches(data: PackedData, max_batches: int = 0):
  """The validation rows in order, `data.batch_size` at a time (the last batch padded with
  empty rows: segment 0, no loss), at most `max_batches` batches (0 = all rows)."""
  b = data.batch_size
  n = -(-data.num_rows // b)
  if max_batches:
    n = min(n, int(max_batches))
  for i in range(n):
    rows = slice(i * b, (i + 1) * b)
    batch = {'tokens': data.tokens[rows], 'segment_ids': data.segment_ids[rows],
             'positions': data.positions[rows], 'loss_mask': data.loss_mask[rows]}
    pad = b - batch['tokens'].shape[0]
    if pad:
      batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield batch


def _batch_spec(mesh: Mesh | None, rules: Mapping[str, Any]) -> NamedSharding | None:
  if mesh is None:
    return None
  axes = rules.get('batch')
  return NamedSharding(mesh, PartitionSpec(axes))


def best_mode_of(metric: str, mode: str | None = None) -> str:
  """'min' or 'max': `mode` when given, else 'min' for losses ('.../loss') and 'max' for the
  rest (recall, ndcg, accuracy)."""
  if mode:
    if mode not in ('min', 'max'):
      raise ValueError(f"best_mode must be 'min' or 'max', got {mode!r}")
    return mode
  return 'min' if metric.split('/')[-1].endswith('loss') else 'max'


def train_stage(model: nnx.Module, data: PackedData, cfg: ml_collections.ConfigDict, *,
                name: str, workdir: str, update_mask: Any = None,
                mesh: Mesh | None = None, rules: Mapping[str, Any] = sharding.LOGICAL_RULES,
                log: Callable[[str], None] = print, trainable: Any = nnx.Param,
                valid_data: PackedData | None = None,
                eval_fn: Callable[[nnx.Module], Mapping[str, float]] | None = None,
                best_metric: str = 'valid/loss', best_mode: str | None = None,
                restore_best: bool = False, keep_last: int = 2) -> dict[str, float]:
  """Trains `model` in place for cfg.steps steps on `data`; returns summary metrics.

  cfg: steps, learning_rate, warmup_steps, b1, b2, weight_decay, clip_norm, log_every,
  checkpoint_every, optional grad_accum_steps (micro-batches per step; the batch size must be
  a multiple of it; the update equals the one of the whole batch), optional eval_every
  (0 = off) and eval_batches (validation batches per evaluation, 0 = all).
  With `mesh`, parameters and optimizer state are sharded by the logical rules
  (neo_jax/model/sharding.py), the batch is split over the rules' 'batch' axes, and the step
  is one jitted program with explicit in/out shardings and donated state. Without a mesh the
  step runs on the default device. Each process loads only its rows of every global batch
  and the batch is assembled with jax.make_array_from_process_local_data (neo_jax/train/
  hostdata.py), one process included; every process packs the same `data` (deterministic).
  trainable: an nnx filter of the parameters that train (default all); the other parameters
  are frozen (no gradient, no optimizer state, not checkpointed: they must come back the same
  on a rerun, as the previous stage's result does). `update_mask` is shaped like the trainable
  parameters.
  Validation: every cfg.eval_every steps and at the last step, the token-weighted loss and
  accuracy on `valid_data` (never trained on) and the metrics of `eval_fn(model)` are logged
  as 'valid/loss', 'valid/accuracy', 'valid/<key>' (JSONL, TensorBoard), and a checkpoint with
  those metrics is saved. The checkpoint manager keeps the last `keep_last` checkpoints and
  the best by `best_metric` (direction `best_mode`, see best_mode_of); with `restore_best`
  the model ends the stage with the best checkpoint's parameters.
  If `workdir/checkpoints/<name>` holds a checkpoint, training resumes from its last step
  (batches are a pure function of the step, so the resumed run sees the same data and, on
  the same machine, reaches the same parameters). Raises NonFiniteLossError on a NaN/inf
  loss, leaving the last good checkpoint in place.
  """
  graphdef, params, frozen, rest = nnx.split(model, trainable, nnx.Param, ...)
  steps = int(cfg.steps)
  accum = int(cfg.get('grad_accum_steps', 1))
  if accum < 1 or data.batch_size % accum:
    raise ValueError(f'[{name}] grad_accum_steps={accum} must be >= 1 and divide the batch '
                     f'size {data.batch_size}')
  eval_every = int(cfg.get('eval_every', 0))
  if eval_every < 0:
    raise ValueError(f'[{name}] eval_every must be >= 0 (0 = off), got {eval_every}')
  if eval_every and valid_data is None and eval_fn is None:
    raise ValueError(f'[{name}] eval_every={eval_every} but neither validation data nor an '
                     'eval_fn was given')
  if int(keep_last) < 1:
    raise ValueError(f'[{name}] keep_last must be >= 1, got {keep_last}')
  mode = best_mode_of(best_metric, best_mode)
  tx = optimizer_lib.make_optimizer(cfg, update_mask)
  batch_sharding = _batch_spec(mesh, rules)
  if mesh is not None:
    param_sharding = sharding.param_shardings(params, mesh, rules)
    frozen_sharding = sharding.param_shardings(frozen, mesh, rules)
    params = jax.device_put(params, param_sharding)
    frozen = jax.device_put(frozen, frozen_sharding)
    rest = jax.device_put(rest, NamedSharding(mesh, PartitionSpec()))
    with jax.set_mesh(mesh):
      opt_state = jax.jit(tx.init)(params)
    opt_sharding = jax.tree.map(lambda x: x.sharding, opt_state)
  else:
    opt_state = tx.init(params)

  ckpt_dir = os.path.join(os.path.abspath(workdir), 'checkpoints', name)
  summary_path = os.path.join(ckpt_dir, 'summary.json')
  best_fn = lambda metrics: float(metrics[best_metric])
  if eval_every:
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(n=int(keep_last)),
        ocp.checkpoint_managers.BestN(get_metric_fn=best_fn, reverse=(mode == 'min'), n=1,
                                      keep_checkpoints_without_metrics=False)])
    options = ocp.CheckpointManagerOptions(create=True, best_fn=best_fn, best_mode=mode,
                                           preservation_policy=policy)
  else:  # no validation, no best: the last keep_last checkpoints
    options = ocp.CheckpointManagerOptions(
        create=True, preservation_policy=ocp.checkpoint_managers.LatestN(n=int(keep_last)))
  # Saves are asynchronous (orbax's default): the step loop continues while they write.
  manager = ocp.CheckpointManager(ckpt_dir, options=options)
  start = 0
  if manager.latest_step() is not None:
    start = int(manager.latest_step())
    restored = manager.restore(start, args=ocp.args.StandardRestore(
        {'params': params, 'opt_state': opt_state}))
    params, opt_state = restored['params'], restored['opt_state']
    log(f'[{name}] resumed from step {start} ({ckpt_dir})')

  step_fn = make_train_step(graphdef, rest, tx, accum, with_frozen=True)
  eval_loss_fn = make_eval_step(graphdef, rest)

  if mesh is None:
    train_step = jax.jit(step_fn, donate_argnums=(0, 1))
    eval_step = jax.jit(eval_loss_fn)
  else:
    replicated = NamedSharding(mesh, PartitionSpec())
    train_step = jax.jit(
        step_fn, donate_argnums=(0, 1),
        in_shardings=(param_sharding, opt_sharding, batch_sharding, frozen_sharding),
        out_shardings=(param_sharding, opt_sharding, replicated))
    eval_step = jax.jit(eval_loss_fn,
                        in_shardings=(param_sharding, frozen_sharding, batch_sharding),
                        out_shardings=replicated)

  # Each process loads only its rows of every global batch (all of them in one process) and
  # the global arrays are assembled from the processes' parts.
  in_sharding = (batch_sharding if batch_sharding is not None
                 else jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
  host_rows = hostdata.host_row_range(in_sharding, data.batch_size)

  def put(batch):
    return hostdata.assemble(batch, in_sharding, data.batch_size)

  logs_dir = os.path.join(workdir, 'logs')
  os.makedirs(logs_dir, exist_ok=True)
  jsonl = os.path.join(logs_dir, f'{name}.jsonl')
  writer = SummaryWriter(os.path.join(workdir, 'tensorboard', name))
  log_every = max(1, int(cfg.get('log_every', 50)))
  ckpt_every = int(cfg.get('checkpoint_every', 0))
  tokens_per_step = data.batch_size * data.seq_len
  sched = optimizer_lib.schedule(cfg)

  def save(step, metrics=None):
    if step in manager.all_steps():
      return  # a resumed run re-reaching a saved step: same parameters, already on disk
    manager.save(step, args=ocp.args.StandardSave({'params': params, 'opt_state': opt_state}),
                 metrics=metrics)

  def validate(step) -> dict[str, float]:
    out: dict[str, float] = {}
    if valid_data is not None:
      sums = None
      lo, hi = host_rows
      for batch in valid_batches(valid_data, int(cfg.get('eval_batches', 0))):
        s = eval_step(params, frozen, put({k: v[lo:hi] for k, v in batch.items()}))
        sums = s if sums is None else jax.tree.map(jnp.add, sums, s)
      sums = {k: float(v) for k, v in jax.device_get(sums).items()}
      n = max(sums['loss_tokens'], 1.0)
      out.update({'valid/loss': sums['loss_sum'] / n, 'valid/accuracy': sums['correct'] / n,
                  'valid/loss_tokens': sums['loss_tokens']})
    if eval_fn is not None:
      nnx.update(model, params)  # the callback reads the model; the next step donates these
      out.update({f'valid/{k}': float(v) for k, v in eval_fn(model).items()})
    if best_metric not in out:
      raise ValueError(f'[{name}] best_metric {best_metric!r} is not among the validation '
                       f'metrics {sorted(out)}')
    log(f'[{name}] step {step}/{steps} ' + ' '.join(
        f'{k} {v:.4f}' for k, v in out.items() if k != 'valid/loss_tokens'))
    _log_jsonl(jsonl, {'step': step, **out})
    for k, v in out.items():
      writer.add_scalar(f'{name}/{k}', v, step)
    return out

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

  last_valid: dict[str, float] = {}
  context = jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()
  with context, sharding.axis_rules(rules):
    for step in range(start + 1, steps + 1):
      batch = put(data.batch(step - 1, rows=host_rows))
      params, opt_state, metrics = train_step(params, opt_state, batch, frozen)
      if pending is not None:
        drain(pending)
      pending = (step, metrics)
      evaluate = bool(eval_every) and (step % eval_every == 0 or step == steps)
      if evaluate or step == steps or (ckpt_every and step % ckpt_every == 0):
        # Check this step's loss before saving, so that a checkpoint is never non-finite.
        drain(pending)
        pending = None
        if evaluate:
          last_valid = validate(step)
        save(step, last_valid if evaluate else None)
    if pending is not None:
      drain(pending)
    manager.wait_until_finished()
    best_step = manager.best_step() if eval_every else None
    restored_best = False
    if restore_best and best_step is not None and best_step != steps:
      restored = manager.restore(best_step, args=ocp.args.StandardRestore(
          {'params': params, 'opt_state': opt_state}))
      params = restored['params']
      restored_best = True
      log(f'[{name}] restored the best checkpoint: step {best_step}, {best_metric} '
          f'{best_fn(manager.metrics(best_step)):.4f}')
  best_value = best_fn(manager.metrics(best_step)) if best_step is not None else float('nan')
  manager.wait_until_finished()
  manager.close()
  writer.close()
  nnx.update(model, params)
  seconds = time.perf_counter() - t0
  best = {'best_step': best_step if best_step is not None else -1, 'best_value': best_value,
          'restored_best': restored_best}
  if not history:  # the stage had finished before: report what it reported then
    if os.path.exists(summary_path):
      with open(summary_path) as f:
        return {**json.load(f), **best}
    log(f'[{name}] finished before at step {start} but its summary.json is missing (killed '
        'while writing it?); its final loss is unknown')
    return {'steps': steps, 'seconds': 0.0, 'final_loss': float('nan'),
            'resumed_from_step': start, **best}
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
      **{f'final_{k}': v for k, v in last_valid.items()},
  }
  tmp = summary_path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(summary, f)
  os.replace(tmp, summary_path)
  return {**summary, **best}
