"""Real multi-process training on one machine: `experiments.multiprocess` starts two JAX
processes (coordinator on 127.0.0.1, gloo CPU collectives, 2 CPU devices each) running
`experiments.train` on one global (1, 4, 1) mesh, and the result must equal one process
with 4 devices on the same mesh: the same final loss, each process loading only its rows of
every global batch, orbax checkpoints with files of both processes, and after a SIGKILL of
one process a clear error and a rerun that resumes to the same final loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, 'tests')
# The tiny config on a mesh that splits parameters over both processes (fsdp = 4), so that
# each process owns shards the other does not and both write checkpoint data.
TRAIN = ['experiments.train', '--config=experiments/configs/tiny.py',
         '--config.train.mesh=1,4,1', '--config.sid.shard=false',
         '--config.capability.checkpoint_every=2']
# A safety net, not the measure: on an idle 2-core machine a run takes well under a minute,
# but a machine loaded by other jobs stretches every process's start, compile and step.
TIMEOUT = 1800


def _env(**extra) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  env.update(PYTHONPATH=REPO + os.pathsep + TESTS, **extra)
  return env


def _finals(stdout: str) -> list[float]:
  """The final_loss of the result object each process printed as its last line."""
  return [json.loads(l.split('] ', 1)[1])['final_loss'] for l in stdout.splitlines()
          if l.startswith(('[p0] {', '[p1] {'))]


def _launch(workdir, spy_dir, kill: str = '', extra=(), budget: str = ''
            ) -> subprocess.CompletedProcess:
  cmd = [sys.executable, '-m', 'experiments.multiprocess', '--processes=2',
         '--devices_per_process=2', '--', 'mp_spy'] + TRAIN + list(extra) + [
             f'--workdir={workdir}']
  env = _env(SPY_DIR=str(spy_dir), SPY_KILL=kill, SPY_BUDGET=budget)
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=TIMEOUT)


@pytest.fixture(scope='module')
def one_process(tmp_path_factory) -> dict:
  """The reference: one process, 4 CPU devices, the same mesh and config."""
  workdir = tmp_path_factory.mktemp('one')
  env = _env(XLA_FLAGS='--xla_force_host_platform_device_count=4', JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-m'] + TRAIN + [f'--workdir={workdir}'], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _rows(spy_dir, process: int) -> list[dict]:
  with open(os.path.join(spy_dir, f'rows_{process}.jsonl')) as f:
    return [json.loads(l) for l in f]


def test_two_processes_equal_one(one_process, tmp_path):
  workdir, spy = tmp_path / 'w', tmp_path / 'spy'
  spy.mkdir()
  proc = _launch(workdir, spy)
  assert proc.returncode == 0, proc.stdout[-4000:]
  assert 'launched 2 processes' in proc.stdout
  # Both processes print the result object; both must hold the one-process final loss.
  finals = _finals(proc.stdout)
  assert len(finals) == 2, proc.stdout[-3000:]
  want = one_process['final_loss']
  for got in finals:
    assert got == pytest.approx(want, rel=1e-6, abs=1e-6), (finals, want)
  # Each process asked for only its half of every global batch of 8 rows, for every step.
  for p in (0, 1):
    calls = _rows(spy, p)
    assert calls and {c['batch_size'] for c in calls} == {8}
    assert {tuple(c['rows']) for c in calls} == {(4 * p, 4 * p + 4)}, calls[:3]
  assert [c['step'] for c in _rows(spy, 0)] == [c['step'] for c in _rows(spy, 1)]
  # The last checkpoint of the capability stage holds data written by both processes.
  ckpt = workdir / 'neo_multi' / 'checkpoints' / 'capability' / '8'
  assert (ckpt / 'commit_success.txt').exists() or (ckpt / '_CHECKPOINT_METADATA').exists()
  names = {p.name for p in ckpt.rglob('*')}
  assert {'ocdbt.process_0', 'ocdbt.process_1'} <= names, sorted(names)


def test_sigkill_of_one_process_stops_the_job_and_the_rerun_resumes(one_process, tmp_path):
  """Process 1 is SIGKILLed in the capability stage: the launcher names it, no final
  checkpoint exists, and the rerun resumes both stages to the one-process final loss.

  No longer skipped: on 2026-12-06 it passed 3 times in a row under pytest (SCHED_IDLE,
  nice 19, on the shared 2-core CPU: 22:18 at a load of about 7, then 2:40 and 2:02 once the
  CPU was free), after one run before them had timed out (its killed launch got about 13 CPU
  seconds in its 1800 s beside two MovieLens evaluations); see /work/notes/note21_s4.md.
  """
  workdir, spy = tmp_path / 'w', tmp_path / 'spy'
  spy.mkdir()
  # Process 1 dies at its 11th batch: grounding took 4, so capability step 7 of 8, after the
  # checkpoint of step 6 was started.
  killed = _launch(workdir, spy, kill='1:11')
  assert killed.returncode == 1, killed.stdout[-4000:]
  last = killed.stdout.strip().splitlines()[-1]
  assert last.startswith('error: process 1 of 2') and 'SIGKILL' in last, last
  assert 'Rerun the same command' in last
  assert not (workdir / 'neo_multi' / 'checkpoints' / 'capability' / '8').exists()
  rerun = _launch(workdir, tmp_path)
  assert rerun.returncode == 0, rerun.stdout[-4000:]
  # The finished grounding stage is restored, capability continues from its last checkpoint.
  assert '[grounding] resumed from step 4' in rerun.stdout
  assert '[capability] resumed from step' in rerun.stdout
  finals = _finals(rerun.stdout)
  assert len(finals) == 2, rerun.stdout[-3000:]
  for got in finals:
    assert got == pytest.approx(one_process['final_loss'], rel=1e-6, abs=1e-6)


def test_a_time_budget_decides_the_same_steps_in_both_processes(tmp_path):
  """A capability stage whose time budget is spent by the end of its warmup, process 0
  deciding warmup + 1 = 4 of 8 steps while process 1 is made to decide 6 (`mp_spy`'s
  SPY_BUDGET): both take process 0's 4, recompile the step for it and finish with the same
  final loss; budget.json and the final checkpoint say 4."""
  workdir, spy = tmp_path / 'w', tmp_path / 'spy'
  spy.mkdir()
  proc = _launch(workdir, spy, budget='1:6',
                 extra=['--config.capability.warmup_steps=3',
                        '--config.capability.time_budget_s=0.000001'])
  assert proc.returncode == 0, proc.stdout[-4000:]
  assert proc.stdout.count('-> 4 of 8 steps') == 2, proc.stdout[-4000:]  # [p0] and [p1]
  assert '-> 6 of 8' not in proc.stdout
  finals = _finals(proc.stdout)
  assert len(finals) == 2 and finals[0] == finals[1], finals
  stage = workdir / 'neo_multi' / 'checkpoints' / 'capability'
  assert json.loads((stage / 'budget.json').read_text())['steps'] == 4
  assert json.loads((stage / 'summary.json').read_text())['model_step'] == 4
  assert (stage / '4').exists() and not (stage / '8').exists()


class _Proc:
  """A finished (or running: rc None) process for the launcher's bookkeeping."""

  def __init__(self, rc):
    self.returncode = rc

  def poll(self):
    return self.returncode


def test_the_launcher_names_the_killed_process_not_its_victims():
  from experiments import multiprocess  # pylint: disable=g-import-not-at-top
  # Process 0 failed on its collective after process 1 was SIGKILLed: process 1 is named.
  assert multiprocess._first_failed([_Proc(1), _Proc(-9)]) == 1
  assert multiprocess._first_failed([_Proc(None), _Proc(2), _Proc(1)]) == 1
  assert multiprocess._first_failed([_Proc(0), _Proc(None)]) is None
  # With the times the watchers saw: the first to end is named, whatever its index or how
  # it ended; within TIE_S of it a process killed by a signal goes first.
  tie = multiprocess.TIE_S
  assert multiprocess._first_failed([_Proc(1), _Proc(1)], {0: 10.0 + 2 * tie, 1: 10.0}) == 1
  assert multiprocess._first_failed([_Proc(-6), _Proc(-9)], {0: 10.0 + 2 * tie, 1: 10.0}) == 1
  assert multiprocess._first_failed([_Proc(-9), _Proc(1)], {0: 10.0 + tie / 2, 1: 10.0}) == 0
  assert multiprocess._first_failed([_Proc(-6), _Proc(-9)], {0: 10.0, 1: 10.0 + tie / 2}) == 0
  assert multiprocess._how(-9) == 'was killed by SIGKILL'
  assert multiprocess._how(3) == 'exited with status 3'
  with pytest.raises(SystemExit):
    multiprocess.parse(['--processes=2'])  # no module after --


def test_a_process_that_fails_is_named_and_the_others_stopped(tmp_path):
  """Process 1 exits with an error before its first collective while process 0 waits for it
  at a barrier: process 1 leaves at once (no shutdown barrier), the launcher names it and
  stops process 0, which never passes the barrier."""
  cmd = [sys.executable, '-m', 'experiments.multiprocess', '--processes=2',
         '--devices_per_process=1', '--', 'mp_fail']
  proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True,
                        timeout=TIMEOUT)
  assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
  last = proc.stdout.strip().splitlines()[-1]
  assert last.startswith('error: process 1 of 2') and 'exited with status 1' in last, last
  assert '[p1] error: process 1 fails on purpose' in proc.stdout
  assert 'process 0 passed the barrier' not in proc.stdout
