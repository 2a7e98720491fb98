"""Training with early stopping on validation, shared by the trained baselines (SASRec, TIGER).

`train_early_stopping` runs Adam over shuffled epochs of a model's training arrays
(`epoch_batches`), evaluates on validation after every epoch, keeps the best epoch's state and
stops after `patience` epochs without improvement, at `max_epochs`, or once past a deadline;
without validation it trains a fixed number of epochs and keeps the last state.
`grid_search` tries hyperparameter points that way within one time budget and picks the best.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence, TypeVar

import jax
import numpy as np
import optax

from neo_jax.catalog import progress

Log = Callable[[str], None]
Point = TypeVar('Point')
Tried = tuple[Point, Any, 'TrainResult']  # (point, aux, result) of `grid_search`


def epoch_batches(rng: np.random.Generator, n: int, batch_size: int):
  """One shuffled epoch over n rows in batches of `batch_size`: yields (rows (batch_size,)
  int, real (batch_size,) bool). The last partial batch is filled with row 0 marked not
  real (to be masked out), so one compiled program serves every batch."""
  order = rng.permutation(n)
  order = np.concatenate([order, np.full((-n) % batch_size, -1)])
  for start in range(0, order.size, batch_size):
    idx = order[start:start + batch_size]
    real = idx >= 0
    yield np.where(real, idx, 0), real


@dataclasses.dataclass
class TrainResult:
  """One training run. `state`: the kept parameters (the best epoch's with validation, else
  the last epoch's); `score`: the validation figure of that epoch (nan without validation,
  -1 if no epoch gave a figure above it); `best_epoch` (1-based; 0 if none); `epochs`: epochs
  trained; `seconds`: training wall time, validation included; `history`: one record per
  epoch ('epoch', 'loss' (mean over batches), 'seconds' since the start, and `valid_<name>`
  for every validation figure); `stopped`: why training ended ('patience', 'time budget' or
  'max_epochs')."""

  state: Any
  score: float
  best_epoch: int
  epochs: int
  seconds: float
  history: list[dict[str, Any]]
  stopped: str = 'max_epochs'


def _format(record: dict[str, Any]) -> str:
  return ' '.join(f'{k}={v:.4f}' if isinstance(v, float) else f'{k}={v}'
                  for k, v in record.items())


def _eta(seconds: float, epoch: int, epochs: int, deadline: float | None) -> str:
  """Time left to the last epoch at the mean epoch time so far, or to the deadline if sooner."""
  left = (epochs - epoch) * seconds / epoch
  if deadline is not None:
    left = min(left, max(deadline - time.perf_counter(), 0.0))
  return progress.duration(left)


def recommend_validation(validator: Any, max_requests: int | None, seed: int,
                         install: Callable[[Any], None], rank_fn: Callable[..., np.ndarray]
                         ) -> tuple[Callable[[Any], dict[str, float]] | None, str]:
  """(evaluate, metric) for `train_early_stopping` from a validator (`base.Validation`): its
  recommendation figures over a fixed subset of `max_requests` targets drawn with `seed`,
  after `install(state)` makes `state` the model that `rank_fn` ranks with. Without a
  validator: (None, 'ndcg@10'), no validation."""
  if validator is None:
    return None, 'ndcg@10'
  validator = validator.with_subsample(max_requests, seed)

  def evaluate(state):
    install(state)
    return validator.recommend(rank_fn)

  return evaluate, validator.metric


def train_early_stopping(loss_fn: Callable[..., jax.Array], state: Any,
                         arrays: Sequence[np.ndarray], *, lr: float, batch_size: int, seed: int,
                         epochs: int, patience: int,
                         evaluate: Callable[[Any], dict[str, float]] | None = None,
                         metric: str = 'ndcg@10', deadline: float | None = None,
                         dropout_keys: bool = False, label: str = 'train',
                         log: Log = lambda s: None) -> TrainResult:
  """Trains `state` with Adam(lr) on `loss_fn` (see the module docstring).

  Args:
    loss_fn: loss_fn(state, *batch) -> scalar, or loss_fn(state, *batch, key) with
      `dropout_keys`; `batch` holds a batch's rows of each of `arrays`, those of the loss
      mask switched off on the padding rows of a partial batch.
    state: the initial parameters (an `nnx.State`, or any pytree).
    arrays: (W, ...) training arrays, one row per example; the last one is the (W, L) bool
      loss mask.
    lr, batch_size: Adam's learning rate; examples per step.
    seed: seeds the epochs' shuffling (`np.random.default_rng(seed)`) and, with
      `dropout_keys`, the key stream (`jax.random.key(seed)`, split once per step).
    epochs: the most epochs to train.
    patience: with `evaluate`, stop after this many epochs without a better figure.
    evaluate: evaluate(state) -> validation figures, after every epoch; None: no validation.
    metric: the figure of `evaluate` to maximise.
    deadline: `time.perf_counter()` value after which no further epoch starts; the first
      epoch itself stops at the deadline (after the batch in flight; that partial epoch is
      validated and kept as usual), so that an epoch longer than the whole budget (a catalog
      of tens of thousands of items) cannot overrun it. Later epochs run whole.
    label, log: each epoch's record is logged as '<label> key=value ... eta=<time>' (eta: to
      `epochs`, or to the deadline if sooner; patience may stop before), and an epoch longer
      than 10 s logs progress lines over its batches (`neo_jax.catalog.progress`); errors
      name label.
  """
  tx = optax.adam(lr)
  opt_state = tx.init(state)

  @jax.jit
  def step(state, opt_state, *batch):
    loss, grads = jax.value_and_grad(loss_fn)(state, *batch)
    updates, opt_state = tx.update(grads, opt_state, state)
    return optax.apply_updates(state, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  key = jax.random.key(seed) if dropout_keys else None
  *inputs, mask = arrays
  best, bad, history = (-1.0, state, 0), 0, []
  t0 = time.perf_counter()
  stopped = 'max_epochs'
  num_batches = -(-mask.shape[0] // batch_size)
  for epoch in range(1, epochs + 1):
    losses = []
    for idx, real in progress.track(epoch_batches(rng, mask.shape[0], batch_size),
                                    f'{label} epoch {epoch}', num_batches, unit='batches',
                                    log=log):
      batch = [a[idx] for a in inputs] + [mask[idx] & real[:, None]]
      if key is not None:
        key, sub = jax.random.split(key)
        batch.append(sub)
      state, opt_state, loss = step(state, opt_state, *batch)
      if losses:  # one step in flight at most, so that the progress lines count finished steps
        losses[-1].block_until_ready()
      losses.append(loss)
      if epoch == 1 and deadline is not None and time.perf_counter() > deadline:
        if len(losses) < num_batches:
          stopped = f'time budget within epoch 1 ({len(losses)} of {num_batches} batches)'
        break
    mean_loss = float(np.mean(jax.device_get(losses)))
    if not np.isfinite(mean_loss):
      raise FloatingPointError(f'{label}: the loss is {mean_loss} at epoch {epoch}')
    record: dict[str, Any] = {'epoch': epoch, 'loss': mean_loss,
                              'seconds': time.perf_counter() - t0}
    if evaluate is not None:
      figures = evaluate(state)
      record.update({f'valid_{k}': v for k, v in figures.items()})
      if figures[metric] > best[0]:
        best, bad = (figures[metric], state, epoch), 0
      else:
        bad += 1
    else:
      best = (float('nan'), state, epoch)
    history.append(record)
    log(f'{label} {_format(record)} eta={_eta(record["seconds"], epoch, epochs, deadline)}')
    if evaluate is not None and bad >= patience:
      stopped = 'patience'
      break
    if deadline is not None and time.perf_counter() > deadline and epoch < epochs:
      if stopped == 'max_epochs':
        stopped = 'time budget'
      break
  return TrainResult(state=best[1], score=best[0], best_epoch=best[2], epochs=len(history),
                     seconds=time.perf_counter() - t0, history=history, stopped=stopped)


def stop_facts(result: TrainResult, tried: int, points: int) -> dict[str, Any]:
  """How a grid search ended, for the report's budget table: `stopped` (why the kept point's
  training ended, and how many grid points the time budget let run)."""
  return {'stopped': f'{result.stopped} at epoch {result.epochs} (best {result.best_epoch}); '
                     f'{tried} of {points} grid points run',
          'train_seconds': result.seconds}


def grid_search(points: Sequence[Point],
                train: Callable[[Point, float | None], tuple[Any, TrainResult]],
                budget_s: float, *, whole_first: bool = False, label: str = 'grid',
                log: Log = lambda s: None) -> tuple[list[Tried], Tried]:
  """Trains each point in order while time is left (the first point always runs):
  `train(point, deadline)` -> (what the caller needs beside the state, e.g. the model's
  graphdef; the result), deadline a `time.perf_counter()` value `budget_s` seconds from the
  start. whole_first: the first point gets no deadline (it trains to its own stopping rule
  however long that takes, so that a slower machine narrows the grid but never shortens the
  first point's training); the budget, counted from the start, then only decides whether
  further points start. Returns (every (point, aux, result) tried, in order; the first with
  the highest score)."""
  deadline = time.perf_counter() + budget_s
  tried: list[Tried] = []
  best = None
  for point in points:
    if tried and time.perf_counter() > deadline:
      log(f'{label}: time budget spent; {len(tried)} of {len(points)} grid points tried')
      break
    aux, result = train(point, None if whole_first and not tried else deadline)
    tried.append((point, aux, result))
    if best is None or result.score > best[2].score:
      best = tried[-1]
  return tried, best
