"""The fault-injection harness end to end, bounded for CI: one SIGKILL in the capability
stage and one in batch generation, each rerun equal to the uninterrupted run; a damaged
newest checkpoint, an infinite gradient and a full disk each detected
(`python -m experiments.faults`, experiments/faults.py)."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bounded_fault_injection(tmp_path):
  w = tmp_path / 'faults'
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.faults', f'--workdir={w}', '--kills=1', '--seed=3',
       '--stages=capability,generate',
       '--cases=checkpoint_bytes,non_finite_gradient,full_disk'],
      cwd=REPO, capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.loads((w / 'result.json').read_text())
  assert json.loads(proc.stdout.strip().splitlines()[-1]) == result
  assert result['kills'] == 2 and result['survived'] == 2
  assert result['corruptions'] == 3 and result['detected'] == 3
  cases = {k: v for k, v in result.items() if k.startswith('case/')}
  assert len(cases) == 5 and all(v.startswith('ok') for v in cases.values()), cases


def test_the_kill_follows_the_commands_output_and_a_silent_hang_is_a_failure(tmp_path):
  """`run_and_kill` kills after the named output line (not at a clock time), reports a command
  that ended first, and turns a command that stops printing into a Failure, not a hang."""
  import pytest  # pylint: disable=g-import-not-at-top
  from experiments import faults  # pylint: disable=g-import-not-at-top
  log = str(tmp_path / 'log')
  prints = lambda n, then: [sys.executable, '-u', '-c',
                            f'import time\nfor i in range({n}): print(i)\n{then}']
  assert faults.run_and_kill(prints(3, 'time.sleep(60)'), log, 2, 0.1, timeout=30)
  assert open(log).read().rstrip().endswith('### SIGKILL after output line 3 (+0.10s)')
  assert not faults.run_and_kill(prints(2, 'pass'), log, 5, 0.1, timeout=30)
  with pytest.raises(faults.Failure, match='printed 1 lines, not the 4'):
    faults.run_and_kill(prints(1, 'time.sleep(60)'), log, 3, 0.1, timeout=2)
