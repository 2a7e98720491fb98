"""Shared test settings: no progress lines (`neo_jax.catalog.progress`), in this process and in
the commands tests start (the variable is inherited), whatever the caller's environment says;
tests that check the lines turn them on themselves."""

import os

import jax  # pylint: disable=unused-import
import pytest

os.environ['NEO_PROGRESS'] = '0'


@pytest.fixture(scope='session', autouse=True)
def _shared_compilation_cache(tmp_path_factory):
  """The commands tests start (experiments.evaluate, quickstart, the multi-process runs, the
  notebook's kernel, ...) share one persistent XLA compilation cache for the test run: most of
  a tiny run's time is compiling (the tiny quickstart: 161 s cold, 39 s with its programs
  cached), and many commands compile the same programs. The cache sits in the run's
  temporary folder (with xdist the workers' common parent), which pytest's retention
  removes; a size limit turns on jax's file lock, so two workers' commands never read an entry
  half written. Only started commands see it: this process read its jax config at the
  `import jax` above, before these variables, so the tests that count compilations in process
  (tests/jit_compiles.py) still see every one."""
  run_dir = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    run_dir = run_dir.parent
  cache = run_dir / 'xla_compilation_cache'
  cache.mkdir(exist_ok=True)
  os.environ.update(JAX_COMPILATION_CACHE_DIR=str(cache),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
                    JAX_COMPILATION_CACHE_MAX_SIZE=str(8 << 30))
  yield


@pytest.fixture
def every_call(monkeypatch):
  """Progress lines at every update (no 10 s wait); the process-wide switch restored after."""
  from neo_jax.catalog import progress  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(progress, 'EVERY_S', 1e-9)
  yield
  progress.set_enabled(None)


@pytest.fixture
def progress_on(every_call):  # pylint: disable=redefined-outer-name,unused-argument
  """`every_call` with progress switched on process-wide."""
  from neo_jax.catalog import progress  # pylint: disable=g-import-not-at-top
  progress.set_enabled(True)


# The modules of the longest tests, longest first (seconds of their longest test with
# `-n 2 --dist worksteal` on the 2-core EPYC, 2026-12-07): collected first, so that under
# xdist's work stealing they start early and the run ends on short tests, not on one long test
# with the other worker idle. Only the order changes; every module keeps its own test order.
_LONG_FIRST = (
    'test_accelerator',  # 402 s
    'test_lanes',  # 267
    'test_evaluate',  # 251
    'test_compare_runs',  # 210
    'test_faults',  # 205
    'test_fresh_items_cold',  # 186 (setup)
    'test_multiprocess_train',  # 122
    'test_notebook',  # 106
    'test_train_loop',  # 105
    'test_quickstart',  # 99
    'test_train_sharded',  # 94
    'test_train_resume',  # 94
    'test_decode_ranker',  # 91
    'test_remote_workdir',  # 91 (setup)
    'test_remote_multiprocess',  # 81
)


def pytest_collection_modifyitems(session, config, items):  # pylint: disable=unused-argument
  rank = {name: n for n, name in enumerate(_LONG_FIRST)}
  module = lambda item: os.path.splitext(os.path.basename(str(item.fspath)))[0]
  items.sort(key=lambda item: rank.get(module(item), len(rank)))  # stable: order kept within
