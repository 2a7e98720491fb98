r"""Runs a command as several JAX processes on this machine: a real multi-process job (one
`jax.distributed` coordinator on 127.0.0.1, every process with its own devices), the way a
multi-host slice runs it, without the slice.

  python -m experiments.multiprocess --processes=2 --devices_per_process=2 -- \
      experiments.train --config=experiments/configs/tiny.py --workdir=W \
      --config.train.mesh=4,1,1

Everything after `--` is a module and its arguments, run in every process as
`python -m MODULE ARGS` would run it, after `jax.distributed.initialize(127.0.0.1:PORT,
processes, process_id)` (on the CPU with gloo collectives and `devices_per_process` CPU
devices per process) and the backend's initialisation. Each process's output lines are
prefixed `[pN] `. In such a job neo_jax's process 0 alone writes the run's shared files and
every process writes its shards of the orbax checkpoints (neo_jax/catalog/multihost.py).

A process whose module raises or exits with a non-zero status leaves at once (`os._exit`,
skipping jax.distributed's shutdown barrier, which would wait for the others). When a process
ends with an error or is killed (SIGKILL included), the others are stopped (SIGTERM, then
SIGKILL after `--grace_s`), the launcher prints one line `error: ...` naming the process
that failed first (a watcher thread per process records when each ended) and how it ended,
and exits with status 1: rerunning the same command resumes from the last checkpoints
(experiments.train resumes every stage). All processes ending with status 0 is status 0.

On several hosts there is no launcher: every host runs one command, the same but for its
process index, and `join` (the launcher's workers use it too) joins the job:

  python -m experiments.train --distributed --coordinator_address=HOST0:PORT \
      --num_processes=N --process_id=I --config=... --workdir=W

(`distributed_args` checks the three flags; a bad value is an error naming the flag.)

The launcher parses its own arguments with argparse, not absl flags: the module it runs
parses the rest with its own absl flags, and the two must not share one flag registry.
"""

from __future__ import annotations

import argparse
import math
import os
import runpy
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  """(launcher options, [module, its args...]) of a command line split at `--`."""
  if '--' not in argv:
    raise SystemExit('error: give the module to run after `--` (e.g. -- experiments.train '
                     '--workdir=W)')
  cut = argv.index('--')
  p = argparse.ArgumentParser(prog='python -m experiments.multiprocess',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('--processes', type=int, default=2, help='JAX processes to start (>= 1)')
  p.add_argument('--devices_per_process', type=int, default=1,
                 help='CPU devices of each process (--platform=cpu)')
  p.add_argument('--platform', default='cpu', choices=('cpu', 'gpu'),
                 help="'cpu': gloo collectives, fake CPU devices; 'gpu': process i sees "
                 'GPU i (devices_per_process GPUs each)')
  p.add_argument('--port', type=int, default=0, help='coordinator port (0: a free one)')
  p.add_argument('--grace_s', type=float, default=3.0,
                 help='seconds the others get to stop after one failed, before SIGKILL (JAX '
                 "catches SIGTERM for its preemption notice, so a JAX process rarely stops "
                 'before SIGKILL)')
  p.add_argument('--heartbeat_timeout_s', type=int, default=30,
                 help='seconds without a heartbeat before the coordinator gives up on a '
                 'process (a backstop: the launcher stops the job first)')
  # Internal: how the launcher starts each process.
  p.add_argument('--worker', type=int, default=-1, help=argparse.SUPPRESS)
  p.add_argument('--coordinator', default='', help=argparse.SUPPRESS)
  opts = p.parse_args(argv[:cut])
  command = argv[cut + 1:]
  if not command:
    p.error('no module after `--`')
  if opts.processes < 1 or opts.devices_per_process < 1:
    p.error(f'--processes ({opts.processes}) and --devices_per_process '
            f'({opts.devices_per_process}) must be >= 1')
  return opts, command


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def worker(opts: argparse.Namespace, command: list[str]) -> None:
  """One process of the job: joins the coordinator, then runs the module as __main__."""
  import jax  # pylint: disable=g-import-not-at-top  (the config must be set before any use)
  if opts.platform == 'cpu':
    jax.config.update('jax_platforms', 'cpu')
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.config.update('jax_num_cpu_devices', opts.devices_per_process)
    local_ids = None
  else:
    first = opts.worker * opts.devices_per_process
    local_ids = list(range(first, first + opts.devices_per_process))
  join(opts.coordinator, opts.processes, opts.worker, local_device_ids=local_ids,
       heartbeat_timeout_s=opts.heartbeat_timeout_s)
  module, args = command[0], command[1:]
  sys.argv = [module] + args
  status = _run_module(module)
  if status:
    # Leave at once: a normal exit runs jax.distributed's shutdown barrier, which waits for
    # the other processes (still training, or waiting on this one) until their timeouts,
    # so the launcher would see another process fail first and name it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # pylint: disable=protected-access


def _check_address(address: str) -> None:
  host, sep, port = address.rpartition(':')
  if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
    raise ValueError(f'--coordinator_address={address!r}: expected HOST:PORT, the address of '
                     "process 0's host and a port free there (e.g. 10.0.0.1:8476), the same "
                     'in every process')


def distributed_args(distributed: bool, coordinator_address: str | None,
                     num_processes: int | None, process_id: int | None) -> dict | None:
  """The `join` arguments of the flags `--distributed`, `--coordinator_address`,
  `--num_processes` and `--process_id`: None when not distributed; {} for --distributed
  alone (jax.distributed detects the job: TPU VMs, SLURM, ...); else the three, checked.

  Raises:
    ValueError: naming the flag, for a value that cannot join a job (a malformed address, a
      count under 1, an index outside [0, count)), some of the three without the others, or
      any of them without --distributed.
  """
  given = {'--coordinator_address': coordinator_address, '--num_processes': num_processes,
           '--process_id': process_id}
  named = [k for k, v in given.items() if v is not None]
  if not distributed:
    if named:
      raise ValueError(f'{", ".join(named)}: only with --distributed (a multi-process job)')
    return None
  if not named:
    return {}
  if len(named) < 3:
    missing = [k for k in given if k not in named]
    raise ValueError(f'{", ".join(named)} without {", ".join(missing)}: give all three (every '
                     'host the same address and count, each its own index), or none to let '
                     'jax.distributed detect the job')
  _check_address(coordinator_address)
  if num_processes < 1:
    raise ValueError(f'--num_processes={num_processes}: a job has at least 1 process')
  if not 0 <= process_id < num_processes:
    raise ValueError(f'--process_id={process_id}: must be in [0, {num_processes}) for '
                     f'--num_processes={num_processes} (0 runs the coordinator)')
  return {'coordinator_address': coordinator_address, 'num_processes': num_processes,
          'process_id': process_id}


def join(coordinator_address: str | None = None, num_processes: int | None = None,
         process_id: int | None = None, local_device_ids: list[int] | None = None,
         heartbeat_timeout_s: int | None = None) -> str:
  """Joins this process to a multi-process job (`jax.distributed.initialize`; None values are
  detected by jax) and starts the backend at once; returns a line saying which process of how
  many this is, with its devices.

  The backend starts now, in every process, before the module's own work: initialised lazily,
  a process could enter the topology exchange (a collective of all processes) while another
  is still busy elsewhere, or never comes because it failed first.

  Raises:
    ValueError: jax.distributed is already initialised (a command run by this launcher, whose
      workers have joined the job, must not ask for --distributed again).
  """
  import jax  # pylint: disable=g-import-not-at-top  (the launcher itself never imports jax)
  if jax.distributed.is_initialized():
    raise ValueError('this process has already joined a job (under '
                     'experiments.multiprocess every process is joined; drop --distributed)')
  kwargs = {} if heartbeat_timeout_s is None else {
      'heartbeat_timeout_seconds': heartbeat_timeout_s}
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             local_device_ids=local_device_ids, **kwargs)
  return (f'joined process {jax.process_index()} of {jax.process_count()} (coordinator '
          f'{coordinator_address or "detected"}): {jax.local_device_count()} of '
          f'{jax.device_count()} devices here')


def _run_module(module: str) -> int:
  """Runs `module` as __main__; its exit status (an uncaught exception: traceback, 1)."""
  try:
    runpy.run_module(module, run_name='__main__', alter_sys=True)
  except SystemExit as e:
    if e.code is None or isinstance(e.code, int):
      return int(e.code or 0)
    print(e.code, file=sys.stderr)
    return 1
  except BaseException:  # pylint: disable=broad-except  (KeyboardInterrupt included)
    traceback.print_exc()
    return 1
  return 0


def _pump(stream, prefix: str, out) -> None:
  for line in iter(stream.readline, ''):
    out.write(prefix + line)
    out.flush()
  stream.close()


def _how(rc: int) -> str:
  if rc < 0:
    try:
      return f'was killed by {signal.Signals(-rc).name}'
    except ValueError:
      return f'was killed by signal {-rc}'
  return f'exited with status {rc}'


def _stop(procs: list[subprocess.Popen], grace_s: float) -> None:
  """SIGTERM to every running process, SIGKILL to those still running after grace_s."""
  for p in procs:
    if p.poll() is None:
      p.terminate()
  deadline = time.monotonic() + grace_s
  for p in procs:
    try:
      p.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def _interrupted(signum, frame) -> None:
  del frame
  raise KeyboardInterrupt(f'signal {signum}')


# Deaths this close to the first one may be its consequence (a process whose collective
# failed when its peer died) or be observed out of order: among them a process killed by a
# signal is the one to name.
TIE_S = 1.0


def _first_failed(procs: list[subprocess.Popen],
                  died: dict[int, float] | None = None) -> int | None:
  """The process whose failure to report, None while none has failed: the first to die
  (`died`: process -> time.monotonic() of its end, as its watcher saw it), a process killed
  by a signal before one that exited with an error among those that ended within TIE_S of
  it, then the lowest index."""
  died = died or {}
  failed = [(died.get(i, math.inf), i) for i, p in enumerate(procs)
            if p.poll() not in (None, 0)]
  if not failed:
    return None
  first = min(t for t, _ in failed)
  near = [(procs[i].returncode >= 0, t, i) for t, i in failed
          if t == first or t - first <= TIE_S]
  return min(near)[2]


def _watch(proc: subprocess.Popen, i: int, died: dict[int, float],
           changed: threading.Event) -> None:
  """Waits for process `i` to end and records when (its watcher thread)."""
  proc.wait()
  died[i] = time.monotonic()
  changed.set()


def _die_with_parent() -> None:
  """In each child before it runs: SIGKILL it when the launcher dies (Linux), so that a
  killed launcher leaves no process waiting on a collective forever."""
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass  # not Linux: the launcher's own stop() is the only guard


def launch(opts: argparse.Namespace, command: list[str]) -> int:
  """Starts the processes, relays their output, stops the job when one fails: the status."""
  port = opts.port or free_port()
  base = [sys.executable, '-m', 'experiments.multiprocess', f'--processes={opts.processes}',
          f'--devices_per_process={opts.devices_per_process}', f'--platform={opts.platform}',
          f'--heartbeat_timeout_s={opts.heartbeat_timeout_s}',
          f'--coordinator=127.0.0.1:{port}']
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  env['PYTHONPATH'] = REPO + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
  procs, pumps = [], []
  died: dict[int, float] = {}
  changed = threading.Event()
  for i in range(opts.processes):
    p = subprocess.Popen(base + [f'--worker={i}', '--'] + command, env=env, cwd=os.getcwd(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         preexec_fn=_die_with_parent)
    procs.append(p)
    t = threading.Thread(target=_pump, args=(p.stdout, f'[p{i}] ', sys.stdout), daemon=True)
    t.start()
    pumps.append(t)
    threading.Thread(target=_watch, args=(p, i, died, changed), daemon=True).start()
  signal.signal(signal.SIGTERM, _interrupted)  # stop the processes as Ctrl-C does
  print(f'launched {opts.processes} processes (pids {[p.pid for p in procs]}), coordinator '
        f'127.0.0.1:{port}', flush=True)
  failed = None
  try:
    while failed is None and len(died) < len(procs):
      changed.wait(timeout=1.0)
      changed.clear()
      failed = _first_failed(procs, dict(died))
    if failed is not None:
      # Let a death that is its consequence (or observed late) be recorded before naming.
      time.sleep(min(TIE_S, 0.5))
      failed = _first_failed(procs, dict(died))
  except KeyboardInterrupt:
    _stop(procs, opts.grace_s)
    raise
  if failed is not None:
    _stop(procs, opts.grace_s)
  for t in pumps:
    t.join(timeout=5)
  if failed is None:
    return 0
  print(f'error: process {failed} of {opts.processes} (pid {procs[failed].pid}) '
        f'{_how(procs[failed].returncode)}; stopped the other processes. Rerun the same '
        'command to resume from the last checkpoints.', flush=True)
  return 1


def main(argv: list[str]) -> int:
  opts, command = parse(argv)
  if opts.worker >= 0:
    worker(opts, command)
    return 0
  return launch(opts, command)


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
