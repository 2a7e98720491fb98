"""Two runs' NEO models compared on the same validation requests (`experiments.compare_runs`).

`experiments.evaluate` writes every first-seed NEO model's per-request validation figures to
`<workdir>/valid_per_request.npz` (`experiment.write_valid_per_request`), with the keys of the
requests (`experiment.request_keys`). Two runs of the same data, split, seed and
`experiment.neo_valid_requests` ranked the same requests; `compare` checks that and gives the
paired bootstrap interval of each metric both have.
"""

from __future__ import annotations

import numpy as np

from neo_jax.catalog import atomic
from neo_jax.eval import stats
from neo_jax.run.config import UserError
from neo_jax.run.experiment import VALID_PER_REQUEST


def load(workdir: str) -> dict[str, np.ndarray]:
  """The `valid_per_request.npz` of `workdir` as a dict (UserError naming the file when a run
  did not write it)."""
  path = atomic.as_path(workdir) / VALID_PER_REQUEST
  if not path.exists():
    raise UserError(
        f'{path}: no per-request validation figures (written by experiments.evaluate with '
        'experiment.neo_valid_requests > 0, since this file was added)')
  with np.load(atomic.for_reading(str(path))) as z:
    return {k: z[k] for k in z.files}


def compare(a: dict[str, np.ndarray], b: dict[str, np.ndarray], system_a: str, system_b: str,
            *, resamples: int = 1000, seed: int = 0) -> dict[str, dict[str, float]]:
  """metric -> {a, b, diff, ci_low, ci_high, n} for every metric both systems have.

  Raises:
    UserError: a system absent from its run, or two runs whose requests differ.
  """
  out: dict[str, dict[str, float]] = {}
  for side, per, system in (('a', a, system_a), ('b', b, system_b)):
    if not any(k.startswith(f'{system}/') for k in per):
      have = sorted({k.split('/')[0] for k in per if not k.startswith('requests/')})
      raise UserError(f'run {side} has no figures of {system!r}; it has {have}')
  aligned: set[str] = set()  # the tasks whose request keys were checked
  for key in sorted(k for k in a if k.startswith(f'{system_a}/')):
    metric = key[len(system_a) + 1:]
    other = b.get(f'{system_b}/{metric}')
    if other is None:
      continue
    task = 'search' if metric.startswith('search_') else 'recommend'
    if task not in aligned:
      ka, kb = a.get(f'requests/{task}'), b.get(f'requests/{task}')
      if ka is None or kb is None or ka.shape != kb.shape or not np.array_equal(ka, kb):
        first = _first_difference(ka, kb)
        raise UserError(
            f'the two runs ranked different {task} requests ({first}): compare runs of the '
            'same data, split, seed and experiment.neo_valid_requests')
      aligned.add(task)
    r = stats.paired_bootstrap(a[key], other, resamples=resamples, seed=seed)
    out[metric] = {'a': float(np.mean(a[key])), 'b': float(np.mean(other)),
                   'diff': r['diff'], 'ci_low': r['ci_low'], 'ci_high': r['ci_high'],
                   'n': int(r['n'])}
  if not out:
    raise UserError(f'{system_a} and {system_b} share no metric')
  return out


def _first_difference(ka, kb) -> str:
  if ka is None or kb is None:
    return 'one run has none'
  if ka.shape != kb.shape:
    return f'{ka.size} against {kb.size} requests'
  i = int(np.flatnonzero(ka != kb)[0])
  return f'request {i}: {str(ka[i])!r} against {str(kb[i])!r}'
