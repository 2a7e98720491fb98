"""Counting XLA compilations (`jax.monitoring`'s backend-compile events), whatever function the
code under test compiles: `with compiled() as names: ...` collects the name of every function
compiled in the block."""

from __future__ import annotations

import contextlib
from typing import Iterator

import jax

_BACKEND_COMPILE = '/jax/core/compile/backend_compile_duration'
_ACTIVE: list[list[str]] = []


def _listener(event: str, duration: float, **kwargs) -> None:
  del duration
  if event == _BACKEND_COMPILE:
    for names in _ACTIVE:
      names.append(str(kwargs.get('fun_name', '?')))


jax.monitoring.register_event_duration_secs_listener(_listener)


@contextlib.contextmanager
def compiled() -> Iterator[list[str]]:
  """The names of the functions compiled while the block runs (a list filled in place)."""
  names: list[str] = []
  _ACTIVE.append(names)
  try:
    yield names
  finally:
    _ACTIVE.remove(names)
