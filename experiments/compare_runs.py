r"""Two runs' NEO models on the same validation requests: paired bootstrap intervals.

  python -m experiments.compare_runs --a=W_ARM --b=W_BASE            # NEO-multi of each
  python -m experiments.compare_runs --a=W --b=W --system=neo_multi --b_system=neo_mono

How a recipe change is chosen without opening the test split: train both recipes with
`experiments.evaluate --config.experiment.open_test=false` (each writes
`valid_per_request.npz`: every NEO model's per-request validation figures, beside the keys of
the requests), then compare them here. The two runs must have ranked the same requests (the
same data, split, seed and `experiment.neo_valid_requests`): the request keys are checked, and
a mismatch is an error that names the first differing request, never a silent misalignment.

Prints, for each metric both runs have, the mean of each, the difference a - b and its 95%
paired bootstrap interval (`neo_jax.eval.stats.paired_bootstrap`; neo_jax/run/paired.py), then
one JSON line.
"""

from __future__ import annotations

import sys

from absl import flags

from experiments import common
from neo_jax.catalog import atomic
from neo_jax.run import config as config_lib
from neo_jax.run import paired

_A = flags.DEFINE_string('a', None, 'The workdir of the run whose figures come first (a - b).')
_B = flags.DEFINE_string('b', None, 'The workdir it is compared with.')
_SYSTEM = flags.DEFINE_string('system', 'neo_multi', 'The system of --a: neo_multi, or '
                              'neo_mono (its recommend and search models).')
_B_SYSTEM = flags.DEFINE_string('b_system', '', "The system of --b ('': --system).")
_RESAMPLES = flags.DEFINE_integer('resamples', 1000, 'Bootstrap resamples.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the bootstrap resample indices.')


def main(argv):
  common.start(argv)
  if not _A.value or not _B.value:
    raise config_lib.UserError('--a and --b (two workdirs) are required')
  system_b = _B_SYSTEM.value or _SYSTEM.value
  figures = paired.compare(paired.load(_A.value), paired.load(_B.value), _SYSTEM.value,
                           system_b, resamples=_RESAMPLES.value, seed=_SEED.value)
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
