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
