"""Shared test settings: no progress lines (`neo_jax.catalog.progress`), in this process and in
the commands tests start (the variable is inherited), whatever the caller's environment says;
tests that check the lines turn them on themselves."""

import os

import pytest

os.environ['NEO_PROGRESS'] = '0'


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
