"""Test module for tests/test_multiprocess_train.py, run under experiments.multiprocess:
process 1 fails at once (a user error, status 1) while process 0 waits for it at a barrier,
as a process that failed before its first collective leaves the others waiting. The
launcher must name process 1 and stop process 0."""

import sys

import jax
from jax.experimental import multihost_utils

if __name__ == '__main__':
  if jax.process_index() == 1:
    sys.exit('error: process 1 fails on purpose')
  print('process 0 waits at the barrier', flush=True)
  multihost_utils.sync_global_devices('mp_fail: never reached by process 1')
  print('process 0 passed the barrier', flush=True)
