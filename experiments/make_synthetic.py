"""Writes a synthetic multi-type dataset in the generic format.

  python -m experiments.make_synthetic --workdir=W --num_items=30000 --num_users=20000

Writes the dataset to W/data (use it with --data_dir=W/data) and W/result.json; prints
progress lines (rate, ETA) and, last, the result object (counts, seconds).
"""

from __future__ import annotations

import json
import time

import os

from absl import flags

from experiments import common
from neo_jax.catalog import synthetic
from neo_jax.run import rundir

flags.adopt_module_key_flags(common)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory: the dataset goes to '
                               '<workdir>/data.', required=True)
_NUM_ITEMS = flags.DEFINE_integer(
    'num_items', None, 'Total items, split evenly over --types; default: the config default.')
_TYPES = flags.DEFINE_list('types', ['movie', 'book', 'podcast'], 'Entity types.')
_NUM_USERS = flags.DEFINE_integer('num_users', None, 'Users; default: the config default.')
_NUM_QUERIES = flags.DEFINE_integer('num_queries', None, 'Search queries.')
_NUM_TOPICS = flags.DEFINE_integer('num_topics', None, 'Latent topics.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed; equal flags give identical files.')
_CHUNK_SIZE = flags.DEFINE_integer('chunk_size', 100_000, 'Items generated per step.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace a non-empty <workdir>/data.')


def _config() -> synthetic.SyntheticConfig:
  overrides = {'seed': _SEED.value}
  if _NUM_ITEMS.value is not None:
    base, extra = divmod(_NUM_ITEMS.value, len(_TYPES.value))
    overrides['item_counts'] = {t: base + (i < extra) for i, t in enumerate(_TYPES.value)}
  elif _TYPES.present:
    default = synthetic.SyntheticConfig().num_items
    overrides['item_counts'] = {t: default // len(_TYPES.value) for t in _TYPES.value}
  for name, flag in (('num_users', _NUM_USERS), ('num_queries', _NUM_QUERIES),
                     ('num_topics', _NUM_TOPICS)):
    if flag.value is not None:
      overrides[name] = flag.value
  return synthetic.SyntheticConfig(**overrides)


class _Progress:
  """Prints a line per stage at most every few seconds: done/total, rate, ETA."""

  def __init__(self, every_s: float = 5.0):
    self.every_s = every_s
    self.stage, self.stage_start, self.last_print = None, 0.0, -1e9

  def __call__(self, stage: str, done: int, total: int, seconds: float):
    if stage != self.stage:
      self.stage, self.stage_start, self.last_print = stage, self._previous_end, -1e9
    self._previous_end = seconds
    if seconds - self.last_print < self.every_s and done < total:
      return
    self.last_print = seconds
    elapsed = max(seconds - self.stage_start, 1e-9)
    rate = done / elapsed
    eta = (total - done) / rate if rate > 0 else float('inf')
    print(f'{stage}: {done:,}/{total:,}  {rate:,.0f} {stage}/s  eta {eta:,.0f}s', flush=True)

  _previous_end = 0.0


def main(argv):
  common.start(argv)
  config = _config()
  start = time.perf_counter()
  out = os.path.join(_WORKDIR.value, 'data')
  summary = synthetic.write_synthetic(config, out, chunk_size=_CHUNK_SIZE.value,
                                      overwrite=_OVERWRITE.value, progress=_Progress())
  summary['wall_seconds'] = round(time.perf_counter() - start, 3)
  summary['data_dir'] = out
  rundir.write_result(_WORKDIR.value, summary)
  print(json.dumps(rundir.json_safe(summary), sort_keys=True))


if __name__ == '__main__':
  common.run(main)
