"""`experiments.train` killed with SIGKILL mid-stage and rerun with the same command resumes
from its last checkpoint and ends with the same final loss as an uninterrupted run."""

import json
import signal
import subprocess
import sys
import time

from test_quickstart import REPO, TINY

OVERRIDES = dict(TINY, **{'data.dataset': 'synthetic', 'capability.steps': 60,
                          'capability.checkpoint_every': 10,
                          'capability.log_every': 10})


def _cmd(workdir):
  return ([sys.executable, '-m', 'experiments.train', f'--workdir={workdir}']
          + [f'--config.{k}={v}' for k, v in OVERRIDES.items()])


def _run(workdir):
  proc = subprocess.run(_cmd(workdir), cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout, json.loads(proc.stdout.strip().splitlines()[-1])


def test_sigkill_then_rerun_reaches_the_same_final_loss(tmp_path):
  _, straight = _run(tmp_path / 'straight')

  killed = tmp_path / 'killed'
  proc = subprocess.Popen(_cmd(killed), cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  first_ckpt = killed / 'neo_multi' / 'checkpoints' / 'capability' / '10'
  deadline = time.time() + 500
  while not first_ckpt.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, 'the run finished before it could be killed'
  assert not (killed / 'result.json').exists()

  out, resumed = _run(killed)
  assert 'neo_multi [grounding] resumed from step 3' in out  # finished before the kill
  step = int(out.split('neo_multi [capability] resumed from step ')[1].split()[0])
  assert 10 <= step < 60
  assert resumed['neo_multi/train/capability_resumed_from_step'] == step
  assert resumed['final_loss'] == straight['final_loss']
  assert (resumed['neo_multi/train/grounding_final_loss']
          == straight['neo_multi/train/grounding_final_loss'])
