"""Progress lines for the steps that can take long (embedding, k-means, a baseline's epochs,
ranking many requests, benchmarks).

One style for the whole project, the shape of the training loop's step lines: a plain line
every `every_s` seconds (default 10) and a closing line,

  minilm: 4,096/100,000 texts, 310 texts/s, eta 5m09s
  minilm: 100,000 texts in 5m22s, 310 texts/s

never a carriage-return bar, so that the lines read the same on a terminal and in a log file.
A step that ends within `every_s` prints nothing. The rate is the mean since the step began
(the first batch's compilation included, so an early ETA errs long).

Lines go to `log` when the caller has one (the run's log), else to stderr. They are off:
  - after `set_enabled(False)` (this process), or
  - when the environment has NEO_PROGRESS=0 (tests/conftest.py sets it: tests print no
    progress; NEO_PROGRESS=1 turns them on whatever the flags say), or
  - when the command line gave absl's `--verbosity` below 0 (`--verbosity=-1`).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, Iterable, Iterator, TypeVar

ENV = 'NEO_PROGRESS'
EVERY_S = 10.0

Log = Callable[[str], None]
T = TypeVar('T')

_enabled: bool | None = None


def set_enabled(on: bool | None) -> None:
  """Turns progress lines on or off for this process (None: back to the environment and the
  flags)."""
  global _enabled
  _enabled = on


def _verbosity_below_zero() -> bool:
  """Whether the command line asked for absl verbosity < 0 (`--verbosity=-1`)."""
  try:
    from absl import flags  # local: the library does not need absl to run
  except ImportError:
    return False
  fv = flags.FLAGS
  if not fv.is_parsed() or 'verbosity' not in fv:
    return False
  return bool(fv['verbosity'].present) and int(fv.verbosity) < 0


def enabled() -> bool:
  """Whether progress lines are printed now (see the module docstring)."""
  if _enabled is not None:
    return _enabled
  env = os.environ.get(ENV, '').strip().lower()
  if env in ('0', 'false', 'no', 'off'):
    return False
  if env in ('1', 'true', 'yes', 'on'):
    return True
  if env:
    raise ValueError(f'{ENV}={os.environ[ENV]!r}: expected 0 or 1')
  return not _verbosity_below_zero()


def duration(seconds: float) -> str:
  """'42s', '5m09s', '2h03m'."""
  s = max(0, int(round(seconds)))
  if s < 100:
    return f'{s}s'
  if s < 6000:
    return f'{s // 60}m{s % 60:02d}s'
  return f'{s // 3600}h{s % 3600 // 60:02d}m'


def _count(x: float) -> str:
  return f'{x:,.0f}' if float(x).is_integer() else f'{x:,.2f}'


def _rate(rate: float) -> str:
  return f'{rate:,.0f}' if rate >= 10 else f'{rate:.2f}'


def _stderr(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


class Progress:
  """Counts work done and prints a progress line every `every_s` seconds.

  Args:
    label: what runs (the line's first word), e.g. 'minilm' or 'sasrec lr=0.001'.
    total: how much work there is (None: unknown, then no ETA).
    unit: what is counted ('texts', 'batches', 'epochs'); '' prints bare numbers.
    every_s: seconds between lines (> 0; None: `EVERY_S`, read when the step starts).
    log: where lines go (None: stderr).
    on: print at all (None: `enabled()` when the step starts).
    clock: seconds, monotonic (tests pass a fake one).
  """

  def __init__(self, label: str, total: float | None = None, *, unit: str = '',
               every_s: float | None = None, log: Log | None = None, on: bool | None = None,
               clock: Callable[[], float] = time.perf_counter):
    if total is not None and total < 0:
      raise ValueError(f'{label}: total must be >= 0, got {total}')
    every_s = EVERY_S if every_s is None else every_s
    if every_s <= 0:
      raise ValueError(f'{label}: every_s must be > 0, got {every_s}')
    self.label, self.total, self.unit, self.every_s = label, total, unit, float(every_s)
    self.log = log or _stderr
    self.on = enabled() if on is None else bool(on)
    self.clock = clock
    self.done = 0.0
    self.start = self.last = clock()
    self.printed = 0
    self.closed = False

  def _unit(self) -> str:
    return f' {self.unit}' if self.unit else ''

  def line(self, note: str = '') -> str:
    """The current progress line (done/total, rate, ETA and `note`)."""
    elapsed = max(self.clock() - self.start, 1e-9)
    rate = self.done / elapsed
    done = _count(self.done) + (f'/{_count(self.total)}' if self.total is not None else '')
    parts = [f'{self.label}: {done}{self._unit()}', f'{_rate(rate)}{self._unit()}/s']
    if self.total is not None and rate > 0:
      parts.append(f'eta {duration((self.total - self.done) / rate)}')
    if note:
      parts.append(note)
    return ', '.join(parts)

  def update(self, n: float = 1, note: str = '') -> None:
    """Adds `n` to the work done; prints a line if `every_s` passed since the last one."""
    self.done += n
    now = self.clock()
    if self.on and not self.closed and now - self.last >= self.every_s:
      self.last = now
      self.printed += 1
      self.log(self.line(note))

  def close(self, note: str = '') -> None:
    """Ends the step: a closing line (work, time, rate) if a progress line was printed."""
    if self.closed:
      return
    self.closed = True
    if self.on and self.printed:
      elapsed = self.clock() - self.start
      rate = self.done / max(elapsed, 1e-9)
      parts = [f'{self.label}: {_count(self.done)}{self._unit()} in {duration(elapsed)}',
               f'{_rate(rate)}{self._unit()}/s'] + ([note] if note else [])
      self.log(', '.join(parts))

  def __enter__(self) -> Progress:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.closed = True  # a failed step's error says enough


def track(iterable: Iterable[T], label: str, total: float | None = None, *, unit: str = '',
          every_s: float | None = None, log: Log | None = None, on: bool | None = None
          ) -> Iterator[T]:
  """Yields the items of `iterable`, counting each one (`Progress`); total defaults to
  len(iterable) when it has one."""
  if total is None and hasattr(iterable, '__len__'):
    total = len(iterable)  # type: ignore[arg-type]
  with Progress(label, total, unit=unit, every_s=every_s, log=log, on=on) as p:
    for item in iterable:
      yield item
      p.update()


__all__ = ['ENV', 'EVERY_S', 'Progress', 'duration', 'enabled', 'set_enabled', 'track']
