"""Training lanes: an experiment's independent trainings in processes of their own, each on its
own share of the CPU cores (`experiment.lanes`).

On a CPU, one process training a small model does not keep two cores busy: on the project's
2-core machine one process trains at ~6,500 tokens/s on both cores and ~5,100 on one, so two
single-core processes do ~1.6x the work of one two-core process. `run_experiment` with
`experiment.lanes=2` trains NEO-multi in a second process (a lane), which then fits TIGER
(handed back through `save` / `load`), while the first fits the other baselines and then trains
NEO-mono; every model is the one a serial run trains (same config, same seed, same examples). This module holds the process side: which cores a lane may use
(`cpu_share`), pinning a fresh lane process to them before JAX starts its thread pools (`pin`),
confining the main process to its share while a lane runs (`confined`), and a lane's process
(`Lane`: started, waited for, or for a file it writes).

Only for the CPU backend: lanes on one accelerator would compete for its memory. A lane is a
'spawn' process, so a script that calls `run_experiment` with lanes must guard its top level
with `if __name__ == '__main__':` (the lane imports the script's main module again).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import threading
import time
from typing import Any, Callable

import jax

from neo_jax.catalog import multihost
from neo_jax.run import config as config_lib

_ONE_CORE_FLAG = '--xla_cpu_multi_thread_eigen=false'


def resolve(lanes: int) -> int:
  """`experiment.lanes` as a number of lanes: 0 (auto) is 2 for one process on a CPU machine
  with 2 or more cores, else 1; any other value is itself."""
  if lanes != 0:
    return int(lanes)
  ok = (not multihost.distributed() and jax.default_backend() == 'cpu'
        and len(os.sched_getaffinity(0)) >= 2)
  return 2 if ok else 1


class LaneError(RuntimeError):
  """A lane's process ended without finishing its work."""


def cpu_share(lane: int, lanes: int, cpus: set[int] | None = None) -> list[int]:
  """The cores lane `lane` of `lanes` may use: a contiguous share of `cpus` (default: the
  cores this process may use), the first lanes getting one more when they do not divide.

  Raises:
    ConfigError: fewer cores than lanes.
    ValueError: a lane index out of range.
  """
  cpus = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
  if not 0 <= lane < lanes:
    raise ValueError(f'lane {lane} out of range for {lanes} lanes')
  if len(cpus) < lanes:
    raise config_lib.ConfigError(
        f'experiment.lanes={lanes} needs at least {lanes} CPU cores; this process may use '
        f'{len(cpus)}')
  base, extra = divmod(len(cpus), lanes)
  start = lane * base + min(lane, extra)
  return cpus[start:start + base + (1 if lane < extra else 0)]


def backend_started() -> bool:
  """Whether JAX has created its backends (and with them its thread pools) in this process."""
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  return xla_bridge.backends_are_initialized()


def pin(cores: list[int]) -> None:
  """Restricts a fresh lane process to `cores` (its `cpu_share`, computed by the main process
  before it confines itself), before JAX starts its thread pools; with a single core, XLA's
  Eigen kernels run single-threaded too (a pool of threads on one core only competes with
  itself).

  Raises:
    LaneError: JAX has already started in this process (a lane is a fresh process).
  """
  if backend_started():
    raise LaneError('lanes.pin: JAX has already started in this process; a lane pins itself '
                    'first thing in a fresh process')
  os.sched_setaffinity(0, cores)
  if len(cores) == 1 and _ONE_CORE_FLAG not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _ONE_CORE_FLAG).strip()


def _threads() -> list[int]:
  return [int(t) for t in os.listdir('/proc/self/task')]


@contextlib.contextmanager
def confined(cores: list[int]):
  """Every thread of this process (JAX's pools included) on `cores` inside the block, and
  back on the cores it had after: the main process's share while a lane runs beside it."""
  before = os.sched_getaffinity(0)
  for tid in _threads():
    _set_affinity(tid, cores)
  try:
    yield
  finally:
    for tid in _threads():
      _set_affinity(tid, before)


def _set_affinity(tid: int, cores) -> None:
  try:
    os.sched_setaffinity(tid, cores)
  except ProcessLookupError:  # the thread ended meanwhile
    pass


def check_backend() -> None:
  """Lanes are for one process on the CPU backend.

  Raises:
    ConfigError: JAX's default backend is an accelerator, or the run has several processes.
  """
  if multihost.distributed():
    raise config_lib.ConfigError('experiment.lanes > 1 is for one process on one CPU machine; '
                                 'this run has several JAX processes (set experiment.lanes=1)')
  if jax.default_backend() != 'cpu':
    raise config_lib.ConfigError(
        f'experiment.lanes > 1 is for CPU machines; this one runs on '
        f'{jax.default_backend()} (set experiment.lanes=1)')


# How often a lane checks that the process that started it still runs.
PARENT_POLL_S = 1.0


def _watch_parent(parent_pid: int, name: str, poll_s: float) -> None:
  """Ends this lane process once the process that started it is gone (killed, or ended
  without stopping it: a daemon process is only stopped by a parent that exits normally), so
  that no orphan lane trains on alone. Runs in a daemon thread of the lane."""
  while os.getppid() == parent_pid:
    time.sleep(poll_s)
  print(f'lane {name}: the process that started it (pid {parent_pid}) is gone; stopping',
        file=sys.stderr, flush=True)
  os._exit(1)  # pylint: disable=protected-access


def _lane_main(parent_pid: int, name: str, poll_s: float, target: Callable[..., Any],
               args: tuple[Any, ...]) -> None:
  """A lane process: `target(*args)` while a watcher ends it with its parent."""
  threading.Thread(target=_watch_parent, args=(parent_pid, name, poll_s), daemon=True,
                   name='neo-lane-parent-watch').start()
  target(*args)


class Lane:
  """One started lane: `target(*args)` in a fresh ('spawn') process. Its output goes to this
  process's stdout/stderr. `wait_for(path)` waits for a file the lane writes; `join()` waits
  for its end. Both raise LaneError when the process ended with an error; `stop()` ends it.
  A lane ends itself within `PARENT_POLL_S` of this process's end, however it ends (SIGKILL
  included)."""

  def __init__(self, name: str, target: Callable[..., Any], args: tuple[Any, ...]):
    self.name = name
    self._process = multiprocessing.get_context('spawn').Process(
        target=_lane_main, args=(os.getpid(), name, PARENT_POLL_S, target, args),
        name=f'neo-lane-{name}', daemon=True)
    self._process.start()

  def _failed(self) -> LaneError:
    return LaneError(f'lane {self.name} (pid {self._process.pid}) ended with exit status '
                     f'{self._process.exitcode}; its error is in the output above')

  def wait_for(self, path: str, poll_s: float = 1.0) -> None:
    """Returns once `path` exists. Raises LaneError if the lane ends first without it."""
    while not os.path.exists(path):
      if not self._process.is_alive():
        if os.path.exists(path):
          return
        if self._process.exitcode != 0:
          raise self._failed()
        raise LaneError(f'lane {self.name} finished without writing {path}')
      time.sleep(poll_s)

  def join(self) -> None:
    """Waits for the lane to end. Raises LaneError if it failed."""
    self._process.join()
    if self._process.exitcode != 0:
      raise self._failed()

  def stop(self) -> None:
    """Ends the lane if it still runs (after an error elsewhere)."""
    if self._process.is_alive():
      self._process.terminate()
      self._process.join(30)
