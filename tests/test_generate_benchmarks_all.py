"""experiments/benchmarks/all.py's bookkeeping (not the benchmarks themselves, which are
scripts): every benchmark file has settings for both sizes, a failing benchmark becomes a
FAILED row with its error, and key figures are picked by the documented patterns."""

from __future__ import annotations

import json
import os

from experiments.benchmarks import all as bench_all


def test_every_benchmark_has_settings_for_both_sizes():
  names = bench_all.discover()
  assert {'train', 'decode', 'sids', 'backbone_step'} <= set(names)
  assert 'all' not in names and '__init__' not in names
  for size in ('small', 'full'):
    assert set(names) <= set(bench_all.SIZES[size]), (size, names)


def test_a_failing_benchmark_is_a_failed_row_with_its_error(tmp_path):
  # A module that does not exist: the subprocess exits 1 with ModuleNotFoundError.
  bad = bench_all.run_one('no_such_benchmark', [], str(tmp_path), timeout_s=60)
  assert not bad['ok'] and bad['error'].startswith('exit status 1')
  assert 'no_such_benchmark' in bad['error']
  assert os.path.exists(bad['log'])
  good = {'ok': True, 'seconds': 12.0, 'command': 'x',
          'result': {'tiny/tokens_per_second': 6877.5, 'tiny/mfu': 0.158, 'device': 'cpu',
                     'tiny/batch_size': 8}}
  text = bench_all.summary_markdown('small', {'cpu': 'test cpu', 'cpu_cores': 2},
                                    {'train': good, 'no_such_benchmark': bad}, 20.0)
  rows = [l for l in text.splitlines() if l.startswith('| ')]
  assert '| cpu | test cpu |' in rows
  train = [r for r in rows if r.startswith('| train |')][0]
  assert train == '| train | ok | tiny/tokens_per_second 6878; tiny/mfu 0.158 | 12 |'
  failed = [r for r in rows if r.startswith('| no_such_benchmark |')][0]
  assert '| FAILED | exit status 1' in failed


def test_key_figures_fall_back_to_the_first_numbers():
  assert bench_all.key_figures('unknown', {'a': 'text', 'b': 1.5, 'c': True, 'd': 2}) == {
      'b': 1.5, 'd': 2}
  machine = bench_all.machine()
  assert machine['cpu_cores'] >= 1 and machine['jax_backend']
  json.dumps(machine)
