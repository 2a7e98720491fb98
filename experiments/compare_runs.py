r"""Two runs' NEO models on the same validation requests: paired bootstrap intervals.

  python -m experiments.compare_runs --a=W_ARM --b=W_BASE            # NEO-multi of each
  python -m experiments.compare_runs --a=W --b=W --system=neo_multi --b_system=neo_mono_recommend

How a recipe change is chosen without opening the test split: train both recipes with
`experiments.evaluate --config.experiment.open_test=false` (each writes
`valid_per_request.npz`: every NEO model's per-request validation figures, beside the keys of
the requests), then compare them here. The two runs must have ranked the same requests (the
same data, split, seed and `experiment.neo_valid_requests`): the request keys are checked, and
a mismatch is an error that names the first differing request, never a silent misalignment.

Prints, for each metric both runs have, the mean of each, the difference a - b and its 95%
paired bootstrap interval (`neo_jax.eval.stats.paired_bootstrap`), then one JSON line.
"""

from __future__ import annotations

import sys

from absl import flags
import numpy as np

from experiments import common
from neo_jax.catalog import atomic
from neo_jax.eval import stats
from neo_jax.run import config as config_lib
from neo_jax.run.experiment import VALID_PER_REQUEST

_A = flags.DEFINE_string('a', None, 'The workdir of the run whose figures come first (a - b).')
_B = flags.DEFINE_string('b', None, 'The workdir it is compared with.')
_SYSTEM = flags.DEFINE_string('system', 'neo_multi', 'The system of --a (neo_multi, '
                              'neo_mono_recommend, neo_mono_search).')
_B_SYSTEM = flags.DEFINE_string('b_system', '', "The system of --b ('': --system).")
_RESAMPLES = flags.DEFINE_integer('resamples', 1000, 'Bootstrap resamples.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the bootstrap resample indices.')


def load(workdir: str) -> dict[str, np.ndarray]:
  """The `valid_per_request.npz` of `workdir` as a dict (UserError naming the file when a run
  did not write it)."""
  path = atomic.as_path(workdir) / VALID_PER_REQUEST
  if not path.exists():
    raise config_lib.UserError(
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
      raise config_lib.UserError(f'--{side} has no figures of {system!r}; it has {have}')
  for key in sorted(k for k in a if k.startswith(f'{system_a}/')):
    metric = key[len(system_a) + 1:]
    other = b.get(f'{system_b}/{metric}')
    if other is None:
      continue
    task = 'search' if metric.startswith('search_') else 'recommend'
    ka, kb = a.get(f'requests/{task}'), b.get(f'requests/{task}')
    if ka is None or kb is None or ka.shape != kb.shape or not np.array_equal(ka, kb):
      first = _first_difference(ka, kb)
      raise config_lib.UserError(
          f'the two runs ranked different {task} requests ({first}): compare runs of the same '
          'data, split, seed and experiment.neo_valid_requests')
    r = stats.paired_bootstrap(a[key], other, resamples=resamples, seed=seed)
    out[metric] = {'a': float(np.mean(a[key])), 'b': float(np.mean(other)),
                   'diff': r['diff'], 'ci_low': r['ci_low'], 'ci_high': r['ci_high'],
                   'n': int(r['n'])}
  if not out:
    raise config_lib.UserError(f'{system_a} and {system_b} share no metric')
  return out


def _first_difference(ka, kb) -> str:
  if ka is None or kb is None:
    return 'one run has none'
  if ka.shape != kb.shape:
    return f'{ka.size} against {kb.size} requests'
  i = int(np.flatnonzero(ka != kb)[0])
  return f'request {i}: {ka[i]!r} against {kb[i]!r}'


def main(argv):
  common.start(argv)
  if not _A.value or not _B.value:
    raise config_lib.UserError('--a and --b (two workdirs) are required')
  system_b = _B_SYSTEM.value or _SYSTEM.value
  figures = compare(load(_A.value), load(_B.value), _SYSTEM.value, system_b,
                    resamples=_RESAMPLES.value, seed=_SEED.value)
  print(f'a = {_SYSTEM.value} of {_A.value}\nb = {system_b} of {_B.value}')
  print(f'{"metric":<16}{"a":>9}{"b":>9}{"a - b":>9}  95% interval    n')
  for m, f in figures.items():
    print(f'{m:<16}{f["a"]:>9.4f}{f["b"]:>9.4f}{f["diff"]:>+9.4f}  '
          f'[{f["ci_low"]:+.4f}, {f["ci_high"]:+.4f}] {f["n"]}')
  sys.stdout.flush()
  print(atomic.dumps({'a': _A.value, 'b': _B.value, 'system_a': _SYSTEM.value,
                      'system_b': system_b, 'figures': figures}, sort_keys=True))


if __name__ == '__main__':
  common.run(main)
