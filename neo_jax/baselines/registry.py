"""The baselines by name: how an experiment builds and fits them.

`BASELINES` maps a name to make(args) -> an unfitted `Baseline` (args: a plain dict of
constructor arguments, e.g. a config's `baseline_args.<name>`); `register_baseline` adds one;
`fit_baselines` builds, fits and (with a validator) tunes the named ones and returns their
facts as flat `<name>/...` keys. A registry entry imports its module only when asked, so a
baseline whose module or class is not in this checkout is reported missing, not fatal.
"""

from __future__ import annotations

import importlib
import os
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from neo_jax.baselines import base
from neo_jax.catalog.splits import Split
from neo_jax.catalog.types import Dataset

Make = Callable[[dict[str, Any]], base.Baseline]
Log = Callable[[str], None]


def lazy(module: str, attr: str, config_attr: str | None = None) -> Make:
  """A registry entry: imports `module` when the baseline is asked for and builds
  `attr(**args)`, or `attr(config_attr(**args))` for baselines configured by a dataclass."""

  def make(args: dict[str, Any]) -> base.Baseline:
    mod = importlib.import_module(module)
    cls = getattr(mod, attr)
    if config_attr is not None:
      return cls(getattr(mod, config_attr)(**args))
    return cls(**args)

  return make


BASELINES: dict[str, Make] = {
    'popularity': lazy('neo_jax.baselines.popularity', 'Popularity'),
    'bm25': lazy('neo_jax.baselines.bm25', 'BM25'),
    'bm25s': lazy('neo_jax.baselines.bm25', 'BM25S'),
    'dense': lazy('neo_jax.baselines.dense', 'Dense'),
    'sasrec': lazy('neo_jax.baselines.sasrec', 'SASRec', 'SASRecConfig'),
    'tiger': lazy('neo_jax.baselines.tiger', 'TIGER', 'TIGERConfig'),
}


# Baselines whose fitted model can be saved in one process and loaded in another (`save`,
# `load`): an experiment's second training lane fits them (`run.experiment`).
LANE_BASELINES = ('tiger',)


def load_fitted(name: str, directory: str, dataset: Dataset, split: Split, sid_map: Any,
                log: Log | None = None) -> base.Baseline:
  """A baseline of `LANE_BASELINES` that another process fitted on `dataset` / `split`
  (with NEO's `sid_map`) and saved to `directory`.

  Raises:
    ValueError: `name` is not a baseline that can be saved and loaded.
  """
  if name not in LANE_BASELINES:
    raise ValueError(f'baseline {name!r} cannot be loaded from a directory; those that can: '
                     f'{LANE_BASELINES}')
  cls = type(make_baseline(name))
  return cls.load(directory, dataset, split, sid_map, log)


def register_baseline(name: str, make: Make) -> None:
  """Adds (or replaces) a baseline by name: `make(args)` returns an unfitted Baseline."""
  if not name or '/' in name:
    raise ValueError(f'baseline name must be non-empty without "/", got {name!r}')
  BASELINES[name] = make


def make_baseline(name: str, args: Mapping[str, Any] | None = None, log: Log | None = None
                  ) -> base.Baseline:
  """An unfitted baseline by name (KeyError for an unknown name; ImportError or
  AttributeError when its module or class is not in this checkout). `log`: where a baseline
  that reports progress (it has a `log` attribute: SASRec's and TIGER's epochs, Dense's
  embedding) writes its lines."""
  if name not in BASELINES:
    raise KeyError(f'unknown baseline {name!r}; known: {sorted(BASELINES)}')
  b = BASELINES[name](dict(args or {}))
  if log is not None and hasattr(b, 'log'):
    b.log = log
  return b


def _now() -> tuple[float, float]:
  """(wall seconds, this process's CPU seconds over all threads)."""
  return time.perf_counter(), time.process_time()


def fit_baselines(names: Sequence[str], args: Mapping[str, Mapping[str, Any]],
                  dataset: Dataset, split: Split, validator: base.Validation | None, log: Log,
                  cache_root: str | None = None, sid_map: Any = None
                  ) -> tuple[dict[str, base.Baseline], dict[str, Any]]:
  """Builds, fits (`split.train`) and, given a `validator`, tunes (its validation requests)
  each named baseline; returns (fitted baselines by name, flat facts).

  Args:
    names: registry names, fitted in this order.
    args: name -> constructor arguments (plain values; a name without an entry gets none).
    dataset, split: what to fit on; `split` must hold no test targets.
    validator: the validation protocol (`neo_jax.eval.validation.Validator`); None fits
      every baseline with its constructor's hyperparameters, untuned.
    log: progress lines (each baseline's too: `make_baseline`).
    cache_root: a baseline taking a `cache_dir` (dense: item embeddings) caches under
      <cache_root>/<name> unless its args name one.
    sid_map: NEO's SID map, given to TIGER when its own is None (the same SIDs, so the
      comparison isolates the language model).

  Facts: a baseline whose module or class is not in this checkout gets `<name>/status`
  'missing: ...' and nothing else; every other gets its numeric and string fit facts as
  `<name>/fit/<key>`, `seconds/baseline_<name>` (wall) and `cpu_seconds/baseline_<name>`
  (this process's CPU seconds: on a shared machine the figure to size a run by), and
  `<name>/status` 'ok'.
  """
  if split.test:
    raise ValueError('baselines must be fitted on a split without test targets')
  fitted: dict[str, base.Baseline] = {}
  out: dict[str, Any] = {}
  for name in names:
    t0 = _now()
    kwargs = dict(args.get(name, {}))
    if cache_root is not None and name in ('dense',) and 'cache_dir' not in kwargs:
      kwargs['cache_dir'] = os.path.join(cache_root, name)
    try:
      b = make_baseline(name, kwargs, log)
    except (ImportError, AttributeError) as err:
      out[f'{name}/status'] = f'missing: {type(err).__name__}: {err}'
      log(f'baseline {name}: missing ({err})')
      continue
    if name == 'tiger' and sid_map is not None and getattr(b, 'sid_map', 0) is None:
      b.sid_map = sid_map
    fit_facts = b.fit(dataset, split, validator=validator)
    fitted[name] = b
    for k, v in fit_facts.items():
      if isinstance(v, (int, float, np.floating, np.integer, str)) and not isinstance(v, bool):
        out[f'{name}/fit/{k}'] = v
    wall, cpu = _now()
    out[f'seconds/baseline_{name}'] = wall - t0[0]
    out[f'cpu_seconds/baseline_{name}'] = cpu - t0[1]
    out[f'{name}/status'] = 'ok'
    log(f'baseline {name}: fitted' + (', tuned on validation' if validator is not None else '')
        + f' ({wall - t0[0]:.1f}s)')
  return fitted, out
