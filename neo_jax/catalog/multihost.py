"""Which process of a multi-process JAX job writes the run's shared files, and the barrier
after they are written.

In a job of several JAX processes (`jax.distributed.initialize`, one process per host on a
slice, or `experiments.multiprocess` on one machine) every process computes the same run in
memory (the same config and seed: the same data, SIDs, tokenizer and examples) but only
process 0 writes the files that live once per run under the workdir (the dataset it builds,
the SID map, the tokenizer, config.json, logs, TensorBoard, summaries, result.json), the way
MaxText and t5x do. Orbax checkpoints are the exception: every process writes its shards.

Where another process must read what process 0 wrote, both call `barrier(name)` after the
write, never a poll of the file system, so that a process never waits on a file while
another waits in a collective. The barrier is two steps:
  1. the coordination service's barrier (`jax.distributed`'s client, `BARRIER_TIMEOUT_S`):
     it waits as long as process 0's writing takes;
  2. then `multihost_utils.sync_global_devices`, a collective of one device per process,
     which the processes now enter together.
The order matters on a loaded machine: XLA's CPU collectives (gloo) give up when a peer
joins a device group's first collective more than 30 s after the others ("Gloo context
initialization failed: ... GetKeyValue() timed out"), while a collective whose group has met
once waits as long as it must. Entering together after step 1 keeps every group's first
collective within that window. A single process (no `jax.distributed`) is the writer and its
barriers are no-ops, so one-process runs are unchanged.
"""

from __future__ import annotations

import itertools

import jax
import numpy as np
from jax._src import distributed as jax_distributed  # the coordination client, as orbax uses it
from jax.experimental import multihost_utils

# Seconds a process waits at a barrier for the others (process 0 may be building a dataset).
BARRIER_TIMEOUT_S = 3600
# Barrier names are made unique by a count that advances alike in every process.
_COUNT = itertools.count()


def distributed() -> bool:
  """Whether this process is part of a multi-process job (`jax.distributed` initialised with
  more than one process). Does not initialise a backend in a single-process run."""
  return jax.distributed.is_initialized() and jax.process_count() > 1


def process_index() -> int:
  """This process's index in the job (0 in a single-process run)."""
  return jax.process_index() if distributed() else 0


def is_writer() -> bool:
  """Whether this process writes the run's shared files (process 0, or the only process)."""
  return process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process of the job reached `barrier(name)` (the same name, in the
  same order in every process); no-op in a single-process run."""
  if not distributed():
    return
  key = f'neo_jax/{next(_COUNT)}/{name}'
  client = jax_distributed.global_state.client
  if client is not None:
    client.wait_at_barrier(key, BARRIER_TIMEOUT_S * 1000)
  multihost_utils.sync_global_devices(key)


def all_true(flag: bool) -> bool:
  """Whether `flag` holds in every process (one all-gather in a multi-process job): for
  decisions every process must take alike, such as setting a checkpoint aside."""
  if not distributed():
    return bool(flag)
  flags = multihost_utils.process_allgather(np.asarray([bool(flag)], np.int32), tiled=True)
  return bool(np.all(np.asarray(flags) == 1))


def from_process_0(value: int) -> int:
  """Process 0's `value` in every process (one broadcast in a multi-process job): for a
  number every process must use alike but each could measure differently, such as the steps
  a time budget allows."""
  if not distributed():
    return int(value)
  return int(multihost_utils.broadcast_one_to_all(np.asarray(int(value), np.int32)))


__all__ = ['all_true', 'barrier', 'distributed', 'from_process_0', 'is_writer',
           'process_index']
