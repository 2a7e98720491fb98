"""Progress lines: rate and ETA when on, nothing when quiet, quiet in tests by default."""

import os
import subprocess
import sys

import pytest

from neo_jax.catalog import progress


class Clock:
  def __init__(self):
    self.t = 100.0

  def __call__(self):
    return self.t


def _run(on, every_s=10.0, total=100, steps=10, step_s=3.0):
  clock, lines = Clock(), []
  p = progress.Progress('embed', total, unit='texts', every_s=every_s, log=lines.append, on=on,
                        clock=clock)
  for _ in range(steps):
    clock.t += step_s
    p.update(total / steps)
  p.close()
  return lines


def test_lines_carry_rate_and_eta():
  lines = _run(True)
  # 10 steps of 10 texts, 3 s each, a line every 10 s: at 12 s, 24 s (4 and 8 steps), then
  # the closing line.
  assert lines == ['embed: 40/100 texts, 3.33 texts/s, eta 18s',
                   'embed: 80/100 texts, 3.33 texts/s, eta 6s',
                   'embed: 100 texts in 30s, 3.33 texts/s']


def test_quiet_prints_nothing():
  assert _run(False) == []


def test_short_step_prints_nothing():
  assert _run(True, step_s=0.5) == []


def test_unknown_total_has_no_eta_and_notes_are_appended():
  clock, lines = Clock(), []
  p = progress.Progress('kmeans', unit='passes', every_s=1, log=lines.append, on=True,
                        clock=clock)
  clock.t += 200
  p.update(4, note='mse 0.01')
  assert lines == ['kmeans: 4 passes, 0.02 passes/s, mse 0.01']


def test_track_counts_items_and_closes():
  lines = []
  out = list(progress.track(range(3), 'x', every_s=1e-9, log=lines.append, on=True))
  assert out == [0, 1, 2]
  assert [line.split(',')[0] for line in lines] == ['x: 1/3', 'x: 2/3', 'x: 3/3', 'x: 3 in 0s']


def test_failed_step_has_no_closing_line():
  lines = []
  with pytest.raises(RuntimeError):
    with progress.Progress('x', 2, every_s=1e-9, log=lines.append, on=True) as p:
      p.update()
      raise RuntimeError('boom')
  assert len(lines) == 1 and lines[0].startswith('x: 1/2')


def test_bad_arguments():
  with pytest.raises(ValueError, match='total'):
    progress.Progress('x', -1)
  with pytest.raises(ValueError, match='every_s'):
    progress.Progress('x', every_s=0)


def test_durations():
  assert [progress.duration(s) for s in (0, 42, 309, 7380)] == ['0s', '42s', '5m09s', '2h03m']


def test_quiet_in_tests_and_by_environment(monkeypatch):
  assert os.environ['NEO_PROGRESS'] == '0'  # tests/conftest.py
  assert not progress.enabled()
  monkeypatch.setenv('NEO_PROGRESS', '1')
  assert progress.enabled()
  monkeypatch.setenv('NEO_PROGRESS', 'maybe')
  with pytest.raises(ValueError, match='NEO_PROGRESS'):
    progress.enabled()
  progress.set_enabled(True)
  try:
    monkeypatch.setenv('NEO_PROGRESS', '0')
    assert progress.enabled()
  finally:
    progress.set_enabled(None)


_SCRIPT = """
import sys
from absl import app, flags
from neo_jax.catalog import progress
def main(argv):
  print(progress.enabled())
app.run(main)
"""


@pytest.mark.parametrize('args,expected', [([], 'True'), (['--verbosity=-1'], 'False'),
                                           (['--verbosity=1'], 'True')])
def test_verbosity_flag(args, expected):
  env = {k: v for k, v in os.environ.items() if k != 'NEO_PROGRESS'}
  out = subprocess.run([sys.executable, '-c', _SCRIPT, *args], env=env, check=True,
                       capture_output=True, text=True).stdout.split()
  assert out == [expected]
