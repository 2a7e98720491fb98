"""Runs a module as __main__ with gs:// served by tests/fake_gcs.py from the folder named by
$GCS_ROOT: `python -m gcs_run MODULE ARGS...` (tests/ on PYTHONPATH), e.g. as the module of
`experiments.multiprocess`, so that every process of a job sees the same fake bucket. The
operations each process made on gs:// go to $GCS_ROOT/../calls_<pid>.json however it ends."""

import json
import os
import runpy
import sys

from fake_gcs import fake_gcs


def main() -> None:
  root = os.environ['GCS_ROOT']
  module, args = sys.argv[1], sys.argv[2:]
  sys.argv = [module] + args
  with fake_gcs(root) as fake:
    try:
      runpy.run_module(module, run_name='__main__', alter_sys=True)
    finally:
      calls = os.path.join(os.path.dirname(os.path.abspath(root)), f'calls_{os.getpid()}.json')
      with open(calls, 'w') as f:
        json.dump(sorted({op for op, _ in fake.calls}), f)


if __name__ == '__main__':
  main()
