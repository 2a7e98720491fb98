"""The multi-host form of `experiments.train`: one command per host, `--distributed` with
`--coordinator_address`, `--num_processes` and `--process_id` (passed to
jax.distributed.initialize). Bad values are refused with one line naming the flag, before
anything is written; two such commands on 127.0.0.1 join one job."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from experiments import multiprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 1800  # a safety net for a loaded machine: each command imports jax and flax (at
# SCHED_IDLE beside two busy jobs one import took over 15 minutes of wall time)


@pytest.mark.parametrize('distributed,address,count,index', [
    (False, None, None, None), (True, None, None, None), (True, 'host0:8476', 2, 1),
    (True, '10.0.0.1:1', 1, 0), (True, '[::1]:65535', 3, 2)])
def test_good_flags_give_the_arguments_of_initialize(distributed, address, count, index):
  got = multiprocess.distributed_args(distributed, address, count, index)
  if not distributed:
    assert got is None
  elif address is None:
    assert got == {}  # jax.distributed detects the job (TPU VMs, SLURM)
  else:
    assert got == {'coordinator_address': address, 'num_processes': count,
                   'process_id': index}


@pytest.mark.parametrize('distributed,address,count,index,flag', [
    (False, 'host0:8476', 2, 0, '--coordinator_address'),
    (False, None, None, 1, '--process_id'),
    (True, 'host0', 2, 0, "--coordinator_address='host0'"),
    (True, 'host0:0', 2, 0, "--coordinator_address='host0:0'"),
    (True, 'host0:99999', 2, 0, "--coordinator_address='host0:99999'"),
    (True, ':8476', 2, 0, "--coordinator_address=':8476'"),
    (True, 'host0:8476', 0, 0, '--num_processes=0'),
    (True, 'host0:8476', 2, 2, '--process_id=2'),
    (True, 'host0:8476', 2, -1, '--process_id=-1'),
    (True, 'host0:8476', None, 0, 'without --num_processes'),
    (True, None, 2, None, 'without --coordinator_address, --process_id')])
def test_bad_flags_are_refused_naming_the_flag(distributed, address, count, index, flag):
  with pytest.raises(ValueError) as err:
    multiprocess.distributed_args(distributed, address, count, index)
  assert str(err.value).startswith(flag) or flag in str(err.value), str(err.value)


def _env(**extra) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  env.update(PYTHONPATH=REPO, JAX_PLATFORMS='cpu', **extra)
  return env


def _train(args, **env):
  return subprocess.Popen([sys.executable, '-m', 'experiments.train'] + args, cwd=REPO,
                          env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def test_the_command_refuses_a_bad_flag_in_one_line_and_writes_nothing(tmp_path):
  workdir = tmp_path / 'w'
  out, err = _train(['--distributed', '--coordinator_address=127.0.0.1:8476',
                     '--num_processes=2', '--process_id=2', f'--workdir={workdir}',
                     '--config=experiments/configs/tiny.py']).communicate(timeout=TIMEOUT)
  assert err.strip().splitlines()[-1] == (
      'error: --process_id=2: must be in [0, 2) for --num_processes=2 (0 runs the '
      'coordinator)'), err[-2000:]
  assert 'Traceback' not in err and not out
  assert not workdir.exists()


def test_one_command_per_process_joins_one_job(tmp_path):
  """Two commands, as two hosts would run them (here both on 127.0.0.1, 2 CPU devices
  each): each joins the same job of 2 processes and 4 devices. --print_config ends each
  command after it joined, before any training."""
  address = f'127.0.0.1:{multiprocess.free_port()}'
  procs = [_train(['--distributed', f'--coordinator_address={address}', '--num_processes=2',
                   f'--process_id={i}', f'--workdir={tmp_path / "w"}', '--print_config',
                   '--config=experiments/configs/tiny.py'], JAX_NUM_CPU_DEVICES='2')
           for i in (0, 1)]
  try:
    outs = [p.communicate(timeout=TIMEOUT) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for i, (p, (out, err)) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, err[-3000:]
    assert (f'joined process {i} of 2 (coordinator {address}): 2 of 4 devices here'
            in err.splitlines()), err[-3000:]
    assert 'train.mesh' in out  # the resolved config was printed
