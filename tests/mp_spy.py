"""Test instrumentation for tests/test_multiprocess_train.py: runs a module (`python -m
mp_spy MODULE ARGS...`, under experiments.multiprocess) after wrapping
`neo_jax.train.data.PackedData.batch`, which records every call's global step and rows to
$SPY_DIR/rows_<process index>.jsonl and, when $SPY_KILL is 'P:N', SIGKILLs process P at its
N-th call (a crash at a known point of training). When $SPY_BUDGET is 'P:N', process P's
`neo_jax.train.loop.budgeted_steps` returns N whatever it measured (processes that disagree
on a time budget's decision: each must take process 0's)."""

import json
import os
import runpy
import signal
import sys

import jax

from neo_jax.train import data
from neo_jax.train import loop

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


def _own_budget(process: int, steps: int):
  original = loop.budgeted_steps

  def budgeted(**kwargs):
    mine = original(**kwargs)
    return steps if jax.process_index() == process else mine

  return budgeted


if __name__ == '__main__':
  data.PackedData.batch = _spied
  if os.environ.get('SPY_BUDGET'):
    loop.budgeted_steps = _own_budget(*(int(x) for x in os.environ['SPY_BUDGET'].split(':')))
  sys.argv = sys.argv[1:]
  runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)
