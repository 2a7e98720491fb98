"""Test instrumentation for tests/test_multiprocess_train.py: runs a module (`python -m
mp_spy MODULE ARGS...`, under experiments.multiprocess) after wrapping
`neo_jax.train.data.PackedData.batch`, which records every call's global step and rows to
$SPY_DIR/rows_<process index>.jsonl and, when $SPY_KILL is 'P:N', SIGKILLs process P at its
N-th call (a crash at a known point of training)."""

import json
import os
import runpy
import signal
import sys

import jax

from neo_jax.train import data

_ORIGINAL = data.PackedData.batch
_CALLS = [0]


def _spied(self, step, rows=None):
  _CALLS[0] += 1
  me = jax.process_index()
  with open(os.path.join(os.environ['SPY_DIR'], f'rows_{me}.jsonl'), 'a') as f:
    f.write(json.dumps({'step': int(step), 'rows': list(rows) if rows else None,
                        'batch_size': self.batch_size}) + '\n')
  kill = os.environ.get('SPY_KILL', '')
  if kill:
    process, call = (int(x) for x in kill.split(':'))
    if me == process and _CALLS[0] == call:
      os.kill(os.getpid(), signal.SIGKILL)
  return _ORIGINAL(self, step, rows)


if __name__ == '__main__':
  data.PackedData.batch = _spied
  sys.argv = sys.argv[1:]
  runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)
