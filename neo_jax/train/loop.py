"""One training stage: a pure jitted step over (params, opt_state), resumable checkpoints,
progress lines and metric logs.

NEO trains in two stages that share this loop: "grounding" (the backbone frozen, only SID rows
of the embedding and head updated, through `update_mask`) and "capability" (full fine-tuning).

In a multi-process job every process runs the same loop on its rows of each batch; orbax
checkpoints are written by all of them (each its shards), the stage's log files (JSON lines,
TensorBoard, summary.json) by process 0 alone (`catalog/multihost.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tensorboardX import SummaryWriter

from neo_jax.catalog import atomic
from neo_jax.catalog import multihost
from neo_jax.model import sharding
from neo_jax.train import hostdata
from neo_jax.train import optimizer as optimizer_lib
from neo_jax.train.data import PackedData


class NonFiniteLossError(FloatingPointError):
  """A step whose loss or gradient norm is NaN or infinite (its update was not applied and
  no checkpoint holds it)."""


class CorruptCheckpointError(RuntimeError):
  """A checkpoint that cannot be restored, or restores to other values than were saved."""


@dataclasses.dataclass(frozen=True)
class StageSettings:
  """The settings of one training stage (a stage's config section: cfg.grounding,
  cfg.capability). Values are converted to the field's type (int or float) on construction.

  steps: optimizer updates. learning_rate (peak), warmup_steps, final_lr_fraction: the
  warmup-cosine schedule (`optimizer.schedule`). b1, b2, weight_decay, clip_norm: AdamW and
  global-norm clipping (`optimizer.make_optimizer`). log_every: steps between progress lines
  and metric records. checkpoint_every: steps between checkpoints (0: only the last step and
  the validation steps). eval_every: steps between validations (0 = off); eval_batches:
  validation batches per evaluation (0 = all). grad_accum_steps: micro-batches per step (the
  batch size must be a multiple of it; the update equals the one of the whole batch).
  time_budget_s: seconds the stage may take (0: no limit). The number of steps is then decided
  once, at the end of the warmup (`probe_step`), from the time the warmup's steps took:
  `budgeted_steps` (never more than `steps`, never fewer than warmup_steps + 1). The warmup's
  learning rates do not depend on the number of steps, so the steps before the decision are
  the ones a run planned with the decided number would take; the cosine then ends at the
  decided step. The decision is written to the stage's checkpoint folder (budget.json) and a
  resumed stage keeps it. It depends on the machine's speed: compare runs by their steps.
  """
  steps: int
  learning_rate: float
  warmup_steps: int
  b1: float
  b2: float
  weight_decay: float
  clip_norm: float
  final_lr_fraction: float = 0.1
  log_every: int = 50
  checkpoint_every: int = 0
  eval_every: int = 0
  eval_batches: int = 0
  grad_accum_steps: int = 1
  time_budget_s: float = 0.0

  def __post_init__(self):
    cast = {'int': int, 'float': float}
    for f in dataclasses.fields(self):
      object.__setattr__(self, f.name, cast[f.type](getattr(self, f.name)))

  @classmethod
  def from_dict(cls, section: Mapping[str, Any]) -> StageSettings:
    """The settings named in `section` (a dict or ConfigDict, e.g. `cfg.capability`); its other
    keys (lora_rank, lora_alpha: the run layer's) are left out. Missing optional keys take the
    defaults above; a missing required one raises TypeError."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in section.items() if k in names})

  def schedule(self) -> optax.Schedule:
    return optimizer_lib.schedule(steps=self.steps, learning_rate=self.learning_rate,
                                  warmup_steps=self.warmup_steps,
                                  final_lr_fraction=self.final_lr_fraction)

  def optimizer(self, update_mask: Any = None) -> optax.GradientTransformation:
    return optimizer_lib.make_optimizer(self.schedule(), b1=self.b1, b2=self.b2,
                                        weight_decay=self.weight_decay,
                                        clip_norm=self.clip_norm, update_mask=update_mask)

  def probe_step(self) -> int:
    """The step after which a time budget decides the number of steps (the last warmup
    step), or 0 when the stage has no budget or is too short for one to matter (steps <=
    warmup_steps + 1)."""
    if self.time_budget_s <= 0 or self.steps <= self.warmup_steps + 1:
      return 0
    return self.warmup_steps


def budgeted_steps(*, steps: int, warmup_steps: int, probe_step: int, elapsed_s: float,
                   step_s: float, time_budget_s: float) -> int:
  """The steps a stage with `time_budget_s` seconds trains: `probe_step` steps done in
  `elapsed_s` (compilation included), then as many more at `step_s` seconds each as the
  rest of the budget holds; at most `steps` (the planned number) and at least
  warmup_steps + 1 (so that the steps already taken keep their learning rates)."""
  left = float(time_budget_s) - float(elapsed_s)
  if left <= 0:
    fit = int(probe_step)
  elif step_s <= 0:  # too fast to measure: everything fits
    fit = int(steps)
  else:
    fit = int(probe_step) + int(left // float(step_s))
  return int(min(int(steps), max(fit, int(warmup_steps) + 1)))


@dataclasses.dataclass(frozen=True)
class CheckpointPolicy:
  """Which checkpoints a stage keeps: the last `keep_last` (>= 1) and, when the stage
  validates, the best by `best_metric` (a 'valid/...' key) in direction `best_mode` ('min',
  'max', or None/'' for best_mode_of's choice by the name); `restore_best`: the model ends
  the stage with the best checkpoint's parameters."""
  best_metric: str = 'valid/loss'
  best_mode: str | None = None
  restore_best: bool = False
  keep_last: int = 2


def _targets_and_weights(batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """(B, L-1) next tokens and float weights: position t predicts token t+1, which counts only
  when its loss_mask is set and it is in the same (non-padding) packed segment as its input."""
  weights = (batch['loss_mask'][:, 1:]
             & (batch['segment_ids'][:, 1:] == batch['segment_ids'][:, :-1])
             & (batch['segment_ids'][:, 1:] > 0)).astype(jnp.float32)
  return batch['tokens'][:, 1:], weights


def _weighted_ce(logits: jax.Array, targets: jax.Array, weights: jax.Array
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
  logits = logits.astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  count = jnp.maximum(weights.sum(), 1.0)
  loss = (losses * weights).sum() / count
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return loss, {'loss': loss, 'accuracy': (correct * weights).sum() / count,
                'loss_tokens': weights.sum()}


def masked_lm_loss(logits_BxLxV: jax.Array, batch: dict[str, jax.Array]
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Next-token cross-entropy on the tokens whose loss_mask is set (the completions).

  Position t predicts token t+1; a target counts only if it is in the same packed segment as
  its input, so no example ever learns from its neighbour.
  """
  targets, weights = _targets_and_weights(batch)
  return _weighted_ce(logits_BxLxV[:, :-1], targets, weights)


def loss_positions_bound(data: PackedData, rows: int) -> int:
  """The most loss positions (targets `masked_lm_loss` counts) that `rows` consecutive rows
  of a batch of `data` can hold together, an exact bound for `masked_lm_loss_at` whatever rows
  a batch draws: the sum of the `rows` largest rows' counts, since consecutive rows of a batch
  are distinct rows of the data (`PackedData.batch`), except when the data has fewer rows
  than that, and a batch repeats them: then every row as often as it can appear."""
  _, weights = _targets_and_weights({'tokens': data.tokens, 'loss_mask': data.loss_mask,
                                     'segment_ids': data.segment_ids})
  counted = np.asarray(weights).sum(1).astype(np.int64)
  rows = max(int(rows), 1)
  if rows > len(counted):
    return int(-(-rows // max(len(counted), 1)) * counted.sum())
  return int(np.sort(counted)[::-1][:rows].sum())


def masked_lm_loss_at(model: nnx.Module, batch: dict[str, jax.Array], positions: int,
                      rows_per_group: int = 1) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`masked_lm_loss` of `model` on `batch`, with the LM head and the softmax computed only at
  the loss positions instead of all B x L: the same loss (up to the order of float sums) for
  a fraction of the head's cost when completions are short (`model` has `hidden` and
  `logits_from_hidden`, as `Decoder`).

  The batch's rows are taken in groups of `rows_per_group` consecutive rows (1: each row on
  its own; B: the whole batch), and each group's first `positions` loss positions get the
  head. Exact only when no group holds more (`loss_positions_bound(data, rows_per_group)`);
  a group is one device's rows when the batch is sharded, so the gather stays on it."""
  h_BxLxD = model.hidden(batch['tokens'], batch['positions'], batch['segment_ids'])[:, :-1]
  targets, weights = _targets_and_weights(batch)
  b, l = weights.shape
  if b % rows_per_group:
    raise ValueError(f'rows_per_group={rows_per_group} does not divide the batch of {b} rows')
  group = lambda x: x.reshape((b // rows_per_group, rows_per_group * l) + x.shape[2:])
  # Each group's loss positions first, in order (a stable sort of 'not a loss position').
  at_GxK = jnp.argsort(group(weights) <= 0, axis=1, stable=True)[:, :int(positions)]
  take = lambda x: jnp.take_along_axis(group(x), at_GxK, axis=1)
  h_GxKxD = jnp.take_along_axis(group(h_BxLxD), at_GxK[..., None], axis=1)
  return _weighted_ce(model.logits_from_hidden(h_GxKxD), take(targets), take(weights))


def head_positions(model: nnx.Module, data: PackedData, rows_per_group: int,
                   multiple: int = 8) -> int:
  """The loss positions per group of `rows_per_group` rows at which a train step on `data`
  runs the LM head (`make_train_step`'s loss_positions): `loss_positions_bound` rounded up
  to `multiple`; 0 (every position) when that saves nothing or `model` cannot compute logits
  from hidden states."""
  if not (hasattr(model, 'hidden') and hasattr(model, 'logits_from_hidden')):
    return 0
  k = -(-loss_positions_bound(data, rows_per_group) // multiple) * multiple
  return k if 0 < k < rows_per_group * (data.seq_len - 1) else 0


def make_train_step(graphdef: nnx.GraphDef, rest: nnx.State,
                    tx: optax.GradientTransformation, grad_accum_steps: int = 1, *,
                    with_frozen: bool = False, loss_positions: int = 0,
                    rows_per_group: int = 1):
  """The pure train step `(params, opt_state, batch) -> (params, opt_state, metrics)`.

  The loss is the token-weighted mean of `masked_lm_loss` over the whole batch; with
  grad_accum_steps > 1 the batch is split into that many micro-batches whose gradients are
  summed in a `lax.scan`, which gives the same update with less activation memory.
  with_frozen: the step takes a fourth argument, the frozen parameters (split from the model
  between the trained ones and `rest`: `nnx.split(model, trainable, nnx.Param, ...)`), which
  get no gradient and no optimizer state (LoRA).
  loss_positions > 0: the LM head and softmax run only at that many loss positions per group
  of `rows_per_group` rows of a micro-batch (`masked_lm_loss_at`; the caller guarantees no
  group holds more); 0: at every position.
  """
  accum = int(grad_accum_steps)

  def loss_and_grads(params, frozen, batch):
    def loss_fn(p, micro):
      m = nnx.merge(graphdef, p, frozen, rest) if with_frozen else nnx.merge(graphdef, p, rest)
      if loss_positions:
        loss, metrics = masked_lm_loss_at(m, micro, loss_positions, rows_per_group)
      else:
        loss, metrics = masked_lm_loss(m(micro['tokens'], micro['positions'],
                                         micro['segment_ids']), micro)
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
    updates, new_opt_state = tx.update(grads, opt_state, params)
    metrics['grad_norm'] = optax.tree.norm(grads)
    # A non-finite loss or gradient leaves the state as it was (the host stops on it, see
    # `_Run.drain`): a bad batch can never turn the parameters into NaN, let alone a
    # checkpoint.
    finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm'])
    keep = lambda new, old: jnp.where(finite, new, old)
    return (jax.tree.map(keep, optax.apply_updates(params, updates), params),
            jax.tree.map(keep, new_opt_state, opt_state), metrics)

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




def _words(x: jax.Array) -> jax.Array:
  """The bits of `x` as a flat uint32 vector (one word per element of 1, 2 or 4 bytes, two
  per 8-byte element)."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32).ravel()
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}.get(x.dtype.itemsize, jnp.uint32)
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).ravel()


@jax.jit
def _leaf_sums(leaves: list[jax.Array]) -> list[jax.Array]:
  out = []
  for x in leaves:
    w = _words(x)
    # Integer sums wrap exactly, in any order: the same on every sharding of the array.
    weight = jnp.arange(w.size, dtype=jnp.uint32) * jnp.uint32(0x9E3779B1) + jnp.uint32(1)
    out.append(jnp.stack([jnp.sum(w, dtype=jnp.uint32), jnp.sum(w * weight, dtype=jnp.uint32)]))
  return out


def state_checksums(tree: Any) -> dict[str, list[int]]:
  """{leaf path: [sum of its 32-bit words, position-weighted sum]} (both mod 2^32): what a
  checkpoint records of its arrays, so that a restore can tell that it read back exactly what
  was saved (orbax checks no content: a checkpoint whose bytes were overwritten restores to
  other values without an error). Computed on the devices, sharded or not."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  if not flat:
    return {}
  sums = jax.device_get(_leaf_sums([jnp.asarray(x) for _, x in flat]))
  return {jax.tree_util.keystr(p): [int(a), int(b)] for (p, _), (a, b) in zip(flat, sums)}


def saved_checksums(manager: ocp.CheckpointManager, step: int) -> dict[str, Any] | None:
  """The checksums a checkpoint recorded ({'params': ..., 'opt_state': ...}); None for a
  checkpoint written before they were recorded."""
  custom = getattr(manager.metadata(step), 'custom_metadata', None) or {}
  return custom.get('checksums')


def verify_checksums(saved: Mapping[str, Any] | None, restored: Mapping[str, Any],
                     where: str) -> None:
  """Raises CorruptCheckpointError when an item of `restored` (e.g. 'params') differs from
  the checksums the checkpoint recorded for it (`saved`; None: nothing to check)."""
  if not saved:
    return
  for item, tree in restored.items():
    if item not in saved:
      continue
    want, got = saved[item], state_checksums(tree)
    bad = sorted(k for k in want if got.get(k) != list(want[k]))
    if bad:
      raise CorruptCheckpointError(
          f'{where}: {len(bad)} of {len(want)} arrays of {item!r} differ from what was saved '
          f'(checksum), e.g. {bad[:3]}: the checkpoint\'s files are damaged')


def _check(name: str, settings: StageSettings, policy: CheckpointPolicy, data: PackedData,
           validates: bool) -> None:
  accum = settings.grad_accum_steps
  if accum < 1 or data.batch_size % accum:
    raise ValueError(f'[{name}] grad_accum_steps={accum} must be >= 1 and divide the batch '
                     f'size {data.batch_size}')
  eval_every = settings.eval_every
  if eval_every < 0:
    raise ValueError(f'[{name}] eval_every must be >= 0 (0 = off), got {eval_every}')
  if eval_every and not validates:
    raise ValueError(f'[{name}] eval_every={eval_every} but neither validation data nor an '
                     'eval_fn was given')
  if int(policy.keep_last) < 1:
    raise ValueError(f'[{name}] keep_last must be >= 1, got {policy.keep_last}')
  if settings.time_budget_s < 0:
    raise ValueError(f'[{name}] time_budget_s must be >= 0 (0 = no limit), got '
                     f'{settings.time_budget_s}')
  if settings.time_budget_s > 0 and settings.warmup_steps < 3:
    raise ValueError(f'[{name}] time_budget_s={settings.time_budget_s} needs warmup_steps >= 3 '
                     f'(the warmup is where the step time is measured), got '
                     f'{settings.warmup_steps}')
  best_mode_of(policy.best_metric, policy.best_mode)


@dataclasses.dataclass
class _Placed:
  """The split model and optimizer state on their devices; shardings None without a mesh."""
  params: nnx.State
  frozen: nnx.State
  rest: nnx.State
  opt_state: Any
  param_sharding: Any = None
  frozen_sharding: Any = None
  opt_sharding: Any = None


def _place(params: nnx.State, frozen: nnx.State, rest: nnx.State,
           tx: optax.GradientTransformation, mesh: Mesh | None,
           rules: Mapping[str, Any]) -> _Placed:
  """Puts the state on the default device, or shards it by `rules` over `mesh` (optimizer
  state initialised in place, with the parameters' shardings)."""
  if mesh is None:
    return _Placed(params, frozen, rest, tx.init(params))
  param_sharding = sharding.param_shardings(params, mesh, rules)
  frozen_sharding = sharding.param_shardings(frozen, mesh, rules)
  params = jax.device_put(params, param_sharding)
  frozen = jax.device_put(frozen, frozen_sharding)
  rest = jax.device_put(rest, NamedSharding(mesh, PartitionSpec()))
  with jax.set_mesh(mesh):
    opt_state = jax.jit(tx.init)(params)
  opt_sharding = jax.tree.map(lambda x: x.sharding, opt_state)
  return _Placed(params, frozen, rest, opt_state, param_sharding, frozen_sharding, opt_sharding)


def _checkpoint_manager(ckpt_dir: str, policy: CheckpointPolicy,
                        validates: bool) -> ocp.CheckpointManager:
  """Keeps the last `policy.keep_last` checkpoints, and the best by `policy.best_metric` when
  the stage validates (`validates`: eval_every > 0)."""
  keep = int(policy.keep_last)
  if validates:
    mode = best_mode_of(policy.best_metric, policy.best_mode)
    best_fn = lambda metrics: float(metrics[policy.best_metric])
    preserve = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(n=keep),
        ocp.checkpoint_managers.BestN(get_metric_fn=best_fn, reverse=(mode == 'min'), n=1,
                                      keep_checkpoints_without_metrics=False)])
    options = ocp.CheckpointManagerOptions(create=True, best_fn=best_fn, best_mode=mode,
                                           preservation_policy=preserve)
  else:  # no validation, no best: the last keep_last checkpoints
    options = ocp.CheckpointManagerOptions(
        create=True, preservation_policy=ocp.checkpoint_managers.LatestN(n=keep))
  # Saves are asynchronous (orbax's default): the step loop continues while they write.
  return ocp.CheckpointManager(ckpt_dir, options=options)


def _head_group(batch_size: int, grad_accum_steps: int, mesh: Mesh | None,
                rules: Mapping[str, Any]) -> int:
  """Rows per group of `masked_lm_loss_at`: one device's rows of a micro-batch (all of them
  without a mesh), so that gathering a group's loss positions never crosses devices; 1 (each
  row alone) when the micro-batch does not split evenly over the devices."""
  rows = batch_size // grad_accum_steps
  if mesh is None:
    return rows
  axes = sharding.mesh_axes_of('batch', rules) if 'batch' in rules else ()  # as _batch_spec
  shards = math.prod(mesh.shape[a] for a in axes)
  return rows // shards if rows % shards == 0 else 1


def _compile(graphdef: nnx.GraphDef, placed: _Placed, tx: optax.GradientTransformation,
             grad_accum_steps: int, mesh: Mesh | None, batch_sharding: NamedSharding | None,
             head_at: tuple[int, int] = (0, 1)):
  """(train_step, eval_step), jitted: `train_step(params, opt_state, batch, frozen)` donates
  the state; with a mesh both have explicit in/out shardings. head_at: `make_train_step`'s
  (loss_positions, rows_per_group) (the train step only)."""
  step_fn = make_train_step(graphdef, placed.rest, tx, grad_accum_steps, with_frozen=True,
                            loss_positions=head_at[0], rows_per_group=head_at[1])
  eval_loss_fn = make_eval_step(graphdef, placed.rest)
  if mesh is None:
    return jax.jit(step_fn, donate_argnums=(0, 1)), jax.jit(eval_loss_fn)
  replicated = NamedSharding(mesh, PartitionSpec())
  p, f, o = placed.param_sharding, placed.frozen_sharding, placed.opt_sharding
  train_step = jax.jit(step_fn, donate_argnums=(0, 1),
                       in_shardings=(p, o, batch_sharding, f), out_shardings=(p, o, replicated))
  eval_step = jax.jit(eval_loss_fn, in_shardings=(p, f, batch_sharding),
                      out_shardings=replicated)
  return train_step, eval_step


class _Logs:
  """Where a stage's figures go: `log` lines, <workdir>/logs/<name>.jsonl and TensorBoard
  (<workdir>/tensorboard/<name>, scalars '<name>/<key>'); in a multi-process job the files
  are process 0's alone (the others only print their lines).

  The JSON-lines log holds each step once: on a resume from step `start`, the records of
  later steps (written before the kill, about to be written again) and a line cut by the kill
  are dropped first."""

  def __init__(self, workdir: str, name: str, log: Callable[[str], None], start: int = 0):
    logs_dir = os.path.join(workdir, 'logs')
    self.name, self.log = name, log
    self.jsonl = os.path.join(logs_dir, f'{name}.jsonl')
    self.appender = self.writer = None
    if not multihost.is_writer():
      return
    atomic.as_path(logs_dir).mkdir(parents=True, exist_ok=True)
    self._keep_until(start)
    self.appender = atomic.JsonlAppender(self.jsonl)
    self.writer = _TensorBoard(os.path.join(workdir, 'tensorboard', name), log)

  def _keep_until(self, start: int) -> None:
    if not atomic.as_path(self.jsonl).exists():
      return
    atomic.repair_jsonl(self.jsonl)
    records = atomic.read_jsonl(self.jsonl)
    kept = [r for r in records if int(r.get('step', 0)) <= start]
    if len(kept) != len(records):
      atomic.write_text(self.jsonl, ''.join(atomic.dumps(r) + '\n' for r in kept))

  def record(self, step: int, record: Mapping[str, Any], scalars: Mapping[str, float]) -> None:
    if self.appender is None:
      return
    self.appender.append([record])
    for k, v in scalars.items():
      self.writer.add_scalar(f'{self.name}/{k}', v, step)

  def close(self) -> None:
    if self.appender is not None:
      self.appender.close()
      self.writer.close()


class _TensorBoard:
  """tensorboardX's SummaryWriter on `directory`. tensorboardX writes local folders only (its
  own gs:// writer needs google-cloud-storage, not installed), so for a remote `directory`
  (`catalog.atomic.is_remote`) the event files are written to a local temporary folder and
  uploaded whole, replacing the previous copy, at most every UPLOAD_EVERY_S seconds and on
  `close`: a kill loses there the scalars of the last interval at most (the JSON-lines log
  keeps every step)."""

  UPLOAD_EVERY_S = 60.0

  def __init__(self, directory: str, log: Callable[[str], None]):
    self.directory = directory
    self.local = directory
    if atomic.is_remote(directory):
      self.local = tempfile.mkdtemp(prefix='neo_jax-tensorboard-')
      log(f'tensorboard: events written to {self.local}, uploaded to {directory} every '
          f'{self.UPLOAD_EVERY_S:.0f} s and at the end of the stage')
    self.writer = SummaryWriter(self.local)
    self.uploaded = time.monotonic()

  def add_scalar(self, tag: str, value: float, step: int) -> None:
    self.writer.add_scalar(tag, value, step)
    if (self.local != self.directory
        and time.monotonic() - self.uploaded > self.UPLOAD_EVERY_S):
      self.upload()

  def upload(self) -> None:
    """Copies the local event files to the remote directory (whole objects)."""
    self.writer.flush()
    for root, _, names in os.walk(self.local):
      for name in names:
        rel = os.path.relpath(os.path.join(root, name), self.local)
        with open(os.path.join(root, name), 'rb') as f:
          atomic.write_bytes(os.path.join(self.directory, rel), f.read())
    self.uploaded = time.monotonic()

  def close(self) -> None:
    self.writer.close()
    if self.local != self.directory:
      self.upload()
      shutil.rmtree(self.local, ignore_errors=True)


def _budget_path(ckpt_dir: str) -> str:
  return os.path.join(ckpt_dir, 'budget.json')


def budget_decision(ckpt_dir: str) -> dict[str, Any] | None:
  """The time budget's decision a stage recorded in its checkpoint folder `ckpt_dir`
  (budget.json: steps, planned_steps, time_budget_s, probe_step, probe_seconds,
  step_seconds), or None when it took none."""
  path = _budget_path(ckpt_dir)
  if not atomic.as_path(path).exists():
    return None
  with atomic.open_text(path) as f:
    return json.load(f)


def _read_budget(ckpt_dir: str, settings: StageSettings, name: str) -> dict[str, Any] | None:
  """`budget_decision(ckpt_dir)`, checked against `settings`. Raises ValueError when it
  was taken for another plan (other planned steps or budget)."""
  budget = budget_decision(ckpt_dir)
  if budget is None:
    return None
  path = _budget_path(ckpt_dir)
  if (int(budget['planned_steps']) != settings.steps
      or float(budget['time_budget_s']) != settings.time_budget_s):
    raise ValueError(
        f'[{name}] {path} decided {budget["steps"]} steps for a plan of '
        f'{budget["planned_steps"]} steps in {budget["time_budget_s"]} s, not for this one '
        f'({settings.steps} steps in {settings.time_budget_s} s): start this stage over (delete '
        'the folder)')
  return budget


def _set_aside(ckpt_dir: str, step: int) -> str:
  """Moves checkpoint `step` out of the stage's checkpoints (orbax no longer sees it) into
  `<ckpt_dir>.set_aside/<step>[-n]`, kept for inspection; returns where. In a multi-process
  job process 0 moves it and every process returns after the move."""
  aside = ckpt_dir + '.set_aside'
  dest = aside
  if multihost.is_writer():
    atomic.as_path(aside).mkdir(parents=True, exist_ok=True)
    dest, n = os.path.join(aside, str(step)), 1
    while atomic.as_path(dest).exists():
      dest, n = os.path.join(aside, f'{step}-{n}'), n + 1
    atomic.move_tree(os.path.join(ckpt_dir, str(step)), dest)
  multihost.barrier(f'set_aside:{ckpt_dir}:{step}')
  return dest


def _resume(make_manager: Callable[[], ocp.CheckpointManager], placed: _Placed, ckpt_dir: str,
            name: str, log: Callable[[str], None]
            ) -> tuple[ocp.CheckpointManager, int, list[int]]:
  """(the checkpoint manager, the step to continue after, the checkpoints set aside): the
  newest checkpoint that
  restores and matches its checksums (its parameters and optimizer state replace `placed`'s,
  keeping their shardings), or 0. A checkpoint that fails (truncated, overwritten, half
  deleted) is set aside (`_set_aside`) with a warning naming the error, and the previous one
  is tried: the steps after it are trained again, reaching the same state."""
  set_aside: list[int] = []
  manager = make_manager()
  while manager.latest_step() is not None:
    step = int(manager.latest_step())
    restored, reason = None, 'it did not restore in another process'
    try:
      restored = manager.restore(step, args=ocp.args.StandardRestore(
          {'params': placed.params, 'opt_state': placed.opt_state}))
      verify_checksums(saved_checksums(manager, step), restored,
                       os.path.join(ckpt_dir, str(step)))
    except MemoryError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      # orbax and tensorstore raise many kinds of errors for damaged files.
      reason = ' '.join(f'{type(e).__name__}: {e}'.split())[:300]
      restored = None
    # Every process of a multi-process job takes the same decision.
    if not multihost.all_true(restored is not None):
      manager.close()
      where = _set_aside(ckpt_dir, step)
      manager = make_manager()  # a fresh view of the directory, without that step
      set_aside.append(step)
      log(f'[{name}] WARNING: checkpoint step {step} cannot be restored ({reason}); moved to '
          f'{where}; falling back to the previous checkpoint '
          f'({manager.latest_step() if manager.latest_step() is not None else "none: from the start"})')
      continue
    placed.params, placed.opt_state = restored['params'], restored['opt_state']
    log(f'[{name}] resumed from step {step} ({ckpt_dir})')
    return manager, step, set_aside
  return manager, 0, set_aside


@dataclasses.dataclass
class _Run:
  """A stage in progress: the step loop, validation and checkpoints over `state`, whose
  params and opt_state each step replaces (the old buffers are donated)."""
  name: str
  settings: StageSettings
  policy: CheckpointPolicy
  model: nnx.Module
  data: PackedData
  valid_data: PackedData | None
  eval_fn: Callable[[nnx.Module], Mapping[str, float]] | None
  state: _Placed
  train_step: Callable[..., Any]
  eval_step: Callable[..., Any]
  in_sharding: jax.sharding.Sharding
  manager: ocp.CheckpointManager
  ckpt_dir: str
  logs: _Logs
  start: int
  set_aside: list[int] = dataclasses.field(default_factory=list)
  # A time budget: (train_step, eval_step) compiled for other settings (the decided steps'
  # schedule), the budget's decision (None until taken) and when the stage started.
  compile_for: Callable[[StageSettings], tuple[Any, Any]] | None = None
  budget: dict[str, Any] | None = None
  t_start: float = dataclasses.field(default_factory=time.perf_counter)

  def __post_init__(self):
    # Each process loads only its rows of every global batch (all of them in one process)
    # and the global arrays are assembled from the processes' parts.
    self.host_rows = hostdata.host_row_range(self.in_sharding, self.data.batch_size)
    self.sched = self.settings.schedule()
    self.tokens_per_step = self.data.batch_size * self.data.seq_len
    self.history: list[dict[str, float]] = []
    self.last_valid: dict[str, float] = {}
    self.t0 = time.perf_counter()
    self.t_last, self.step_last = self.t0, self.start

  def put(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    return hostdata.assemble(batch, self.in_sharding, self.data.batch_size)

  def best_value(self, step: int) -> float:
    return float(self.manager.metrics(step)[self.policy.best_metric])

  def save(self, step: int, metrics: Mapping[str, float] | None = None) -> None:
    if step in self.manager.all_steps():
      return  # a resumed run re-reaching a saved step: same parameters, already on disk
    state = {'params': self.state.params, 'opt_state': self.state.opt_state}
    checksums = {k: state_checksums(v) for k, v in state.items()}
    self.manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics,
                      custom_metadata={'checksums': checksums})

  def validate(self, step: int) -> dict[str, float]:
    """The validation metrics of the current parameters, logged: 'valid/loss' (nats per
    token), 'valid/accuracy', 'valid/loss_tokens' over `valid_data`, 'valid/<key>' of
    `eval_fn`."""
    out: dict[str, float] = {}
    if self.valid_data is not None:
      sums = None
      lo, hi = self.host_rows
      for batch in valid_batches(self.valid_data, self.settings.eval_batches):
        s = self.eval_step(self.state.params, self.state.frozen,
                           self.put({k: v[lo:hi] for k, v in batch.items()}))
        sums = s if sums is None else jax.tree.map(jnp.add, sums, s)
      sums = {k: float(v) for k, v in jax.device_get(sums).items()}
      n = max(sums['loss_tokens'], 1.0)
      out.update({'valid/loss': sums['loss_sum'] / n, 'valid/accuracy': sums['correct'] / n,
                  'valid/loss_tokens': sums['loss_tokens']})
    if self.eval_fn is not None:
      # The callback reads the model; the next step donates these buffers.
      nnx.update(self.model, self.state.params)
      out.update({f'valid/{k}': float(v) for k, v in self.eval_fn(self.model).items()})
    if self.policy.best_metric not in out:
      raise ValueError(f'[{self.name}] best_metric {self.policy.best_metric!r} is not among '
                       f'the validation metrics {sorted(out)}')
    self.logs.log(f'[{self.name}] step {step}/{self.settings.steps} ' + ' '.join(
        f'{k} {v:.4f}' for k, v in out.items() if k != 'valid/loss_tokens'))
    self.logs.record(step, {'step': step, **out}, out)
    return out

  def drain(self, step: int, metrics: Mapping[str, jax.Array]) -> None:
    """Reads a step's metrics from the device (one step late, so the host never stalls):
    stops on a non-finite loss, keeps the history, logs every log_every steps and the last."""
    steps = self.settings.steps
    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not (math.isfinite(m['loss']) and math.isfinite(m['grad_norm'])):
      # The step left the state unchanged (make_train_step); nothing after it was saved.
      self.manager.wait_until_finished()
      what = (f'loss {m["loss"]}' if not math.isfinite(m['loss'])
              else f'gradient norm {m["grad_norm"]} (loss {m["loss"]:.4f})')
      last = self.manager.latest_step()
      raise NonFiniteLossError(
          f'[{self.name}] non-finite {what} at step {step}; its update was not applied; last '
          'good checkpoint: ' + (f'step {last} in {self.ckpt_dir}' if last is not None else
                                 'none (the stage starts over on a rerun)'))
    m['step'] = step
    m['learning_rate'] = float(self.sched(step - 1))
    self.history.append(m)
    if step % max(1, self.settings.log_every) == 0 or step == steps:
      now = time.perf_counter()
      tps = (step - self.step_last) * self.tokens_per_step / max(now - self.t_last, 1e-9)
      eta = (steps - step) * (now - self.t_last) / max(step - self.step_last, 1)
      self.logs.log(f'[{self.name}] step {step}/{steps} loss {m["loss"]:.4f} '
                    f'acc {m["accuracy"]:.3f} tokens/s {tps:,.0f} eta {eta:.0f}s')
      m['tokens_per_s'] = tps
      self.t_last, self.step_last = now, step
      self.logs.record(step, m, {k: v for k, v in m.items() if k != 'step'})

  def decide(self, probe: int, t_first: float, first: int) -> bool:
    """The time budget's decision at step `probe` (its metrics computed): the steps after
    the first one this process ran (`first`, finished at `t_first`, compilation included)
    give the step time; the same number in every process (process 0's); written to
    budget.json; a smaller number of steps recompiles the step with its schedule (returns
    whether it did)."""
    now = time.perf_counter()
    step_s = (now - t_first) / max(probe - first, 1)
    planned = self.settings.steps
    steps = multihost.from_process_0(budgeted_steps(
        steps=planned, warmup_steps=self.settings.warmup_steps, probe_step=probe,
        elapsed_s=now - self.t_start, step_s=step_s,
        time_budget_s=self.settings.time_budget_s))
    self.budget = {'steps': steps, 'planned_steps': planned,
                   'time_budget_s': self.settings.time_budget_s, 'probe_step': probe,
                   'probe_seconds': round(now - self.t_start, 3),
                   'step_seconds': round(step_s, 4)}
    if multihost.is_writer():
      atomic.write_json(_budget_path(self.ckpt_dir), self.budget)
    self.logs.log(f'[{self.name}] time budget {self.settings.time_budget_s:.0f} s: '
                  f'{step_s:.3f} s/step after {probe} warmup steps ({now - self.t_start:.0f} s '
                  f'so far) -> {steps} of {planned} steps' +
                  (' (the schedule ends there)' if steps < planned else ''))
    if steps < planned:
      self.settings = dataclasses.replace(self.settings, steps=steps)
      self.sched = self.settings.schedule()
      self.train_step, self.eval_step = self.compile_for(self.settings)
    return steps < planned

  def run_steps(self) -> None:
    """Steps start+1 .. steps; validates every eval_every steps and at the last, checkpoints
    then, every checkpoint_every steps and at the last. With a time budget not yet decided,
    the number of steps is decided at the probe step (`decide`); nothing is saved before."""
    eval_every = self.settings.eval_every
    ckpt_every = self.settings.checkpoint_every
    probe = self.settings.probe_step() if self.budget is None else 0
    if probe and self.start:
      raise ValueError(
          f'[{self.name}] {self.ckpt_dir} holds a checkpoint of step {self.start} but no '
          'budget.json: it was not trained with time_budget_s (start this stage over: delete '
          'the folder)')
    t_first, recompiled = 0.0, False
    pending = None  # (step, metrics on device)
    step = self.start
    while step < self.settings.steps:
      step += 1
      batch = self.put(self.data.batch(step - 1, rows=self.host_rows))
      if (step == self.start + 1 or recompiled) and multihost.distributed():
        self.compile_together(batch)
        recompiled = False
      self.state.params, self.state.opt_state, metrics = self.train_step(
          self.state.params, self.state.opt_state, batch, self.state.frozen)
      if probe and step in (self.start + 1, probe):
        jax.block_until_ready(metrics)
        if step == self.start + 1:
          t_first = time.perf_counter()
        if step == probe:
          recompiled = self.decide(probe, t_first, self.start + 1)
          probe = 0
      steps = self.settings.steps
      if pending is not None:
        self.drain(*pending)
      pending = (step, metrics)
      if probe:  # no checkpoint (nor validation) before the budget's decision
        continue
      evaluate = bool(eval_every) and (step % eval_every == 0 or step == steps)
      if evaluate or step == steps or (ckpt_every and step % ckpt_every == 0):
        # Check this step's loss before saving, so that a checkpoint is never non-finite.
        self.drain(*pending)
        pending = None
        if evaluate:
          self.last_valid = self.validate(step)
        self.save(step, self.last_valid if evaluate else None)
    if pending is not None:
      self.drain(*pending)

  def compile_together(self, batch: Mapping[str, jax.Array]) -> None:
    """Multi-process: compiles the step ahead (its first call then runs the cached
    executable) and waits at a barrier, so that every process runs the first step, whose
    collectives form the mesh's device groups, at the same moment however long each took to
    compile (`catalog/multihost.py`)."""
    self.train_step.lower(self.state.params, self.state.opt_state, batch,
                          self.state.frozen).compile()
    multihost.barrier(f'{self.name}: compiled')

  def restore_best(self) -> tuple[int | None, bool]:
    """(best step or None without validation, whether its parameters were restored): with
    policy.restore_best, the state takes the best checkpoint's parameters unless that is the
    last step."""
    self.manager.wait_until_finished()
    best_step = self.manager.best_step() if self.settings.eval_every else None
    if not (self.policy.restore_best and best_step is not None
            and best_step != self.settings.steps):
      return best_step, False
    restored = self.manager.restore(best_step, args=ocp.args.StandardRestore(
        {'params': self.state.params, 'opt_state': self.state.opt_state}))
    verify_checksums(saved_checksums(self.manager, best_step), restored,
                     os.path.join(self.ckpt_dir, str(best_step)))
    self.state.params = restored['params']
    self.logs.log(f'[{self.name}] restored the best checkpoint: step {best_step}, '
                  f'{self.policy.best_metric} {self.best_value(best_step):.4f}')
    return best_step, True

  def summary(self, seconds: float, model_step: int) -> dict[str, float]:
    """The stage's figures, written to <checkpoints>/summary.json; for a stage that had
    finished before (no step run now), the ones written then. `model_step`: the checkpoint
    whose parameters the model ends the stage with (the best one when it was restored), what
    a reload of the trained model must read."""
    summary_path = os.path.join(self.ckpt_dir, 'summary.json')
    steps, start = self.settings.steps, self.start
    if not self.history:  # the stage had finished before: report what it reported then
      if atomic.as_path(summary_path).exists():
        with atomic.open_text(summary_path) as f:
          return json.load(f)
      self.logs.log(f'[{self.name}] finished before at step {start} but its summary.json is '
                    'missing (killed while writing it?); its final loss is unknown')
      return {'steps': steps, 'seconds': 0.0, 'final_loss': float('nan'),
              'resumed_from_step': start}
    # The last step's loss is exactly reproducible (resume included); the mean over the last
    # 10% of steps is the less noisy figure to compare runs by.
    history = self.history
    tail = history[-max(1, len(history) // 10):]
    summary = {
        'steps': steps,
        'seconds': seconds,
        'final_loss': history[-1]['loss'],
        'final_accuracy': history[-1]['accuracy'],
        'tail_mean_loss': float(np.mean([h['loss'] for h in tail])),
        'tokens_per_s': (steps - start) * self.tokens_per_step / max(seconds, 1e-9),
        'resumed_from_step': start,
        'checkpoints_set_aside': len(self.set_aside),
        'model_step': model_step,
        **{f'final_{k}': v for k, v in self.last_valid.items()},
    }
    if self.budget is not None:
      summary.update({'planned_steps': self.budget['planned_steps'],
                      'budget_step_seconds': self.budget['step_seconds']})
    if multihost.is_writer():
      atomic.write_json(summary_path, summary)
    return summary


def train_stage(model: nnx.Module, data: PackedData, settings: StageSettings, *,
                name: str, workdir: str, update_mask: Any = None,
                mesh: Mesh | None = None, rules: Mapping[str, Any] = sharding.LOGICAL_RULES,
                log: Callable[[str], None] = print, trainable: Any = nnx.Param,
                valid_data: PackedData | None = None,
                eval_fn: Callable[[nnx.Module], Mapping[str, float]] | None = None,
                checkpoints: CheckpointPolicy = CheckpointPolicy()) -> dict[str, float]:
  """Trains `model` in place for settings.steps steps on `data` (or fewer when
  settings.time_budget_s decides so: StageSettings); returns summary metrics.

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
  Validation: every settings.eval_every steps and at the last step, the token-weighted loss
  and accuracy on `valid_data` (never trained on) and the metrics of `eval_fn(model)` are
  logged as 'valid/loss', 'valid/accuracy', 'valid/<key>' (JSONL, TensorBoard), and a
  checkpoint with those metrics is saved. `checkpoints` says which checkpoints are kept (the
  last ones and the best by a validation metric) and whether the stage ends with the best.
  If `workdir/checkpoints/<name>` holds a checkpoint, training resumes from its last step
  (batches are a pure function of the step, so the resumed run sees the same data and, on
  the same machine, reaches the same parameters). Raises NonFiniteLossError on a NaN/inf
  loss, leaving the last good checkpoint in place.

  Returns:
    steps, seconds, final_loss, final_accuracy, tail_mean_loss (mean over the last 10% of
    steps), tokens_per_s, resumed_from_step, final_valid/<key> (the last validation),
    best_step (-1 without validation), best_value (nan without), restored_best. Logs go to
    <workdir>/logs/<name>.jsonl and <workdir>/tensorboard/<name>.
  """
  t_start = time.perf_counter()
  _check(name, settings, checkpoints, data, valid_data is not None or eval_fn is not None)
  ckpt_dir = atomic.location(os.path.join(workdir, 'checkpoints', name))
  budget = _read_budget(ckpt_dir, settings, name) if settings.time_budget_s > 0 else None
  if budget is not None:  # decided before this resume: the same steps, the same schedule
    settings = dataclasses.replace(settings, steps=int(budget['steps']))
  graphdef, params, frozen, rest = nnx.split(model, trainable, nnx.Param, ...)
  tx = settings.optimizer(update_mask)
  batch_sharding = _batch_spec(mesh, rules)
  state = _place(params, frozen, rest, tx, mesh, rules)
  manager, start, set_aside = _resume(
      lambda: _checkpoint_manager(ckpt_dir, checkpoints, validates=bool(settings.eval_every)),
      state, ckpt_dir, name, log)

  group = _head_group(data.batch_size, settings.grad_accum_steps, mesh, rules)
  head_at = (head_positions(model, data, group), group)
  if head_at[0]:
    log(f'[{name}] LM head at most at {head_at[0]} of the {group * (data.seq_len - 1)} '
        f'positions of {group} rows: every loss position, and only those')

  def compile_for(s: StageSettings):
    return _compile(graphdef, state, s.optimizer(update_mask), s.grad_accum_steps, mesh,
                    batch_sharding, head_at)

  train_step, eval_step = compile_for(settings)
  in_sharding = (batch_sharding if batch_sharding is not None
                 else jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
  run = _Run(name=name, settings=settings, policy=checkpoints, model=model, data=data,
             valid_data=valid_data, eval_fn=eval_fn, state=state, train_step=train_step,
             eval_step=eval_step, in_sharding=in_sharding, manager=manager, ckpt_dir=ckpt_dir,
             logs=_Logs(workdir, name, log, start), start=start, set_aside=set_aside,
             compile_for=compile_for, budget=budget, t_start=t_start)
  context = jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()
  try:
    with context, sharding.axis_rules(rules):
      run.run_steps()
      best_step, restored_best = run.restore_best()
  except BaseException:
    run.logs.close()  # what was logged stays; the checkpoints saved so far are finished
    manager.wait_until_finished()
    raise
  best_value = run.best_value(best_step) if best_step is not None else float('nan')
  manager.wait_until_finished()
  manager.close()
  run.logs.close()
  nnx.update(model, state.params)
  summary = run.summary(time.perf_counter() - run.t0,
                        best_step if restored_best else run.settings.steps)
  best = {'best_step': best_step if best_step is not None else -1, 'best_value': best_value,
          'restored_best': restored_best}
  return {**summary, **best}
