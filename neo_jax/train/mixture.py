"""Task mixture weights: resample a stage's examples so that its tasks appear in given
proportions.

`apply_mixture(examples, weights, seed)` returns a new example list of the same total size as
the examples of the tasks it keeps (those of weight > 0), in which task t holds
`round(N * w_t / sum(w))` examples (largest-remainder rounding, so the counts add up to N
exactly). Proportions are counted in examples, not tokens. A task with fewer examples than
its share is repeated whole as often as it fits and then topped up by a seeded sample without
replacement; a task with more is subsampled without replacement. Weight 0 removes a task (how
NEO-mono trains on recommendation alone). The result is deterministic in `seed` and keeps the
input order within each task; packing shuffles it anyway.

Every task in the examples must be named in the weights (0 removes it), and every task named
with a positive weight must have examples: a mixture that cannot be honoured is an error,
never silently approximated.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from neo_jax.tasks.types import TASKS, Example


def task_counts(examples: Sequence[Example]) -> dict[str, int]:
  """Number of examples of each task, in TASKS order (tasks without examples omitted)."""
  counts: dict[str, int] = {}
  for ex in examples:
    counts[ex.task] = counts.get(ex.task, 0) + 1
  return {t: counts[t] for t in TASKS if t in counts}


def mixture_counts(available: Mapping[str, int], weights: Mapping[str, float]
                   ) -> dict[str, int]:
  """How many examples of each task the mixture keeps (see the module docstring).

  Args:
    available: task -> number of examples there are.
    weights: task -> non-negative weight; every task of `available` must be named.
  Returns:
    task -> target count for the tasks of positive weight (sums to the available examples of
    those tasks).
  """
  weights = {str(k): v for k, v in dict(weights).items()}
  unknown = sorted(set(weights) - set(TASKS))
  if unknown:
    raise ValueError(f'tasks.mixture names unknown task(s) {unknown}; known tasks: {TASKS}')
  for t, w in weights.items():
    if not isinstance(w, (int, float)) or not np.isfinite(w) or w < 0:
      raise ValueError(f'tasks.mixture[{t!r}] must be a finite number >= 0, got {w!r}')
  unnamed = [t for t in available if t not in weights]
  if unnamed:
    raise ValueError(f'tasks.mixture does not name task(s) {unnamed} of this stage (name each '
                     f'task of {list(available)}; weight 0 removes one)')
  missing = [t for t, w in weights.items() if w > 0 and available.get(t, 0) == 0]
  if missing:
    raise ValueError(f'tasks.mixture gives weight > 0 to task(s) {missing} that have no '
                     f'examples in this stage (it has {list(available)})')
  kept = [t for t in TASKS if weights.get(t, 0) > 0]
  if not kept:
    raise ValueError('tasks.mixture gives every task weight 0: nothing to train on')
  total = sum(available[t] for t in kept)
  w = np.array([float(weights[t]) for t in kept])
  exact = total * w / w.sum()
  counts = np.floor(exact).astype(int)
  # Largest remainder: the leftover examples go to the tasks whose share was cut the most.
  for i in np.argsort(-(exact - counts), kind='stable')[:total - counts.sum()]:
    counts[i] += 1
  return {t: int(c) for t, c in zip(kept, counts)}


def apply_mixture(examples: Sequence[Example], weights: Mapping[str, float] | None,
                  seed: int = 0) -> list[Example]:
  """The examples resampled to the task proportions of `weights` (None or empty: unchanged).

  Deterministic in `seed`; see the module docstring for the rule.
  """
  if not weights:
    return list(examples)
  by_task: dict[str, list[Example]] = {}
  for ex in examples:
    by_task.setdefault(ex.task, []).append(ex)
  counts = mixture_counts({t: len(v) for t, v in by_task.items()}, weights)
  out: list[Example] = []
  for task, n in counts.items():
    pool = by_task[task]
    rng = np.random.default_rng([seed, TASKS.index(task)])
    repeats, rest = divmod(n, len(pool))
    idx = np.concatenate([np.tile(np.arange(len(pool)), repeats),
                          np.sort(rng.choice(len(pool), rest, replace=False))])
    out.extend(pool[j] for j in idx)
  return out
