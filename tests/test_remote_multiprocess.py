"""A multi-process job writing its workdir to a bucket: two JAX processes (the launcher,
experiments/multiprocess.py, 2 CPU devices each, mesh 1,4,1 so that each process holds
shards the other does not) run `experiments.train` on the tiny config with
--workdir=gs://bucket/w, every process seeing the same fake bucket (tests/gcs_run.py over
tests/fake_gcs.py: renames refused, orbax's tensorstore mapped onto the same folder). Both
must reach the final loss of one process with 4 devices on a local workdir, and the last
checkpoint in the bucket must hold both processes' data, committed without a rename."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, 'tests')
TRAIN = ['experiments.train', '--config=experiments/configs/tiny.py',
         '--config.train.mesh=1,4,1', '--config.sid.shard=false',
         '--config.capability.checkpoint_every=2']
TIMEOUT = 1800  # a safety net for a loaded machine; idle, each run takes about a minute


def _env(**extra) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  env.update(PYTHONPATH=REPO + os.pathsep + TESTS, **extra)
  return env


def test_two_processes_write_one_run_to_a_bucket(tmp_path):
  one = subprocess.run(
      [sys.executable, '-m'] + TRAIN + [f'--workdir={tmp_path / "local"}'], cwd=REPO,
      env=_env(XLA_FLAGS='--xla_force_host_platform_device_count=4', JAX_PLATFORMS='cpu'),
      capture_output=True, text=True, timeout=TIMEOUT)
  assert one.returncode == 0, one.stderr[-3000:]
  want = json.loads(one.stdout.strip().splitlines()[-1])['final_loss']
  root = tmp_path / 'gcs'
  cmd = [sys.executable, '-m', 'experiments.multiprocess', '--processes=2',
         '--devices_per_process=2', '--', 'gcs_run'] + TRAIN + ['--workdir=gs://bucket/w']
  proc = subprocess.run(cmd, cwd=REPO, env=_env(GCS_ROOT=str(root)), capture_output=True,
                        text=True, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stdout[-4000:]
  finals = [json.loads(l.split('] ', 1)[1])['final_loss'] for l in proc.stdout.splitlines()
            if l.startswith(('[p0] {', '[p1] {'))]
  assert finals == [pytest.approx(want, rel=1e-6, abs=1e-6)] * 2, (finals, want)
  w = root / 'bucket' / 'w'
  ckpt = w / 'neo_multi' / 'checkpoints' / 'capability' / '8'
  assert (ckpt / 'commit_success.txt').exists()  # orbax's object-store commit, not a rename
  names = {p.name for p in ckpt.rglob('*')}
  assert {'ocdbt.process_0', 'ocdbt.process_1'} <= names, sorted(names)
  for name in ('config.json', 'result.json', 'sids/sid_map/sid_map.npz', 'tokenizer/spm.model',
               'neo_multi/logs/capability.jsonl', 'neo_multi/checkpoints/capability/summary.json'):
    assert (w / name).exists(), name
  assert len(os.listdir(w / 'neo_multi' / 'tensorboard' / 'capability')) == 1
  calls = [set(json.load(open(tmp_path / n))) for n in os.listdir(tmp_path)
           if n.startswith('calls_')]
  assert len(calls) == 2 and all('tensorstore' in c for c in calls)
  assert not any(c & {'rename', 'replace'} for c in calls)
  assert not [p for p in os.listdir(REPO) if p.startswith('gs:')]
