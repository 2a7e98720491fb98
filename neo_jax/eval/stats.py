"""Statistics of the comparison: paired bootstrap intervals of differences between systems
measured on the same requests, and the mean / spread of a figure over seeds. numpy only.

The paired bootstrap resamples requests (users for recommendation, queries for search) with
replacement and applies the SAME resample to both systems, so that what varies between
requests (some users are easy for every system) cancels out of the difference; the interval
is the percentile interval of the resampled mean differences. The report states its intervals
with at least 1000 resamples; any number >= 1 is accepted here (tests use fewer).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

# Resamples drawn at once: bounds memory at _CHUNK * n indices (n requests).
_CHUNK = 256


def _as_values(x, name: str) -> np.ndarray:
  arr = np.asarray(x, dtype=np.float64)
  if arr.ndim != 1:
    raise ValueError(f'{name} must be one value per request (1-D); got shape {arr.shape}')
  if arr.size == 0:
    raise ValueError(f'{name} is empty')
  if not np.all(np.isfinite(arr)):
    raise ValueError(f'{name} holds {int(np.sum(~np.isfinite(arr)))} NaN or infinite values')
  return arr


def paired_bootstrap(a_B, b_B, *, resamples: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
  """Paired bootstrap interval of mean(a) - mean(b).

  Args:
    a_B, b_B: (B,) per-request figures of two systems on the same B requests, aligned.
    resamples: bootstrap resamples (>= 1; the report uses >= 1000).
    seed: of the resample indices (the same seed gives the same interval).
    level: coverage of the percentile interval, in (0, 1).
  Returns: diff (mean(a) - mean(b) on the full sample), ci_low, ci_high (the (1-level)/2 and
    (1+level)/2 quantiles of the resampled mean differences), resamples, n (= B).
  Raises:
    ValueError: different lengths, empty input, NaN / infinite values, resamples < 1, level
      outside (0, 1).
  """
  a = _as_values(a_B, 'a')
  b = _as_values(b_B, 'b')
  if a.shape != b.shape:
    raise ValueError(f'paired samples of different lengths: {a.size} and {b.size}')
  if int(resamples) < 1:
    raise ValueError(f'resamples must be >= 1, got {resamples}')
  if not 0.0 < level < 1.0:
    raise ValueError(f'level must be in (0, 1), got {level}')
  resamples = int(resamples)
  d = a - b
  n = d.size
  rng = np.random.default_rng(seed)
  means = np.empty(resamples, np.float64)
  for start in range(0, resamples, _CHUNK):
    k = min(_CHUNK, resamples - start)
    idx = rng.integers(0, n, size=(k, n))
    means[start:start + k] = d[idx].mean(axis=1)
  lo, hi = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
  return {'diff': float(d.mean()), 'ci_low': float(lo), 'ci_high': float(hi),
          'resamples': resamples, 'n': int(n)}


def verdict(ci_low: float, ci_high: float) -> str:
  """'better' (the interval lies above zero), 'worse' (below zero) or 'within noise'."""
  if ci_low > 0:
    return 'better'
  if ci_high < 0:
    return 'worse'
  return 'within noise'


def compare(per_request: Mapping[str, Mapping[str, np.ndarray]],
            pairs: Sequence[tuple[str, str]], metrics: Sequence[str], *,
            resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, object]:
  """Paired bootstrap comparisons of systems, as flat result keys.

  Args:
    per_request: system -> metric -> (B,) per-request figures; for one metric every system's
      array is over the same requests in the same order.
    pairs: (a, b) systems to compare; a pair is skipped for a metric either system lacks
      (a system absent from `per_request` is skipped too).
    metrics: the metrics to compare.
    resamples, seed, level: of `paired_bootstrap` (one seed for every comparison).
  Returns: for each compared (a, b, metric), with P = f'compare/{a}_vs_{b}/{metric}':
    P/diff, P/ci_low, P/ci_high (floats), P/n (requests), P/verdict ('better' when ci_low > 0,
    'worse' when ci_high < 0, else 'within noise'); plus bootstrap/resamples, bootstrap/seed
    and bootstrap/level when anything was compared.
  Raises:
    ValueError: two arrays of one comparison differ in length, or hold NaN (from
      `paired_bootstrap`).
  """
  out: dict[str, object] = {}
  for a, b in pairs:
    for metric in metrics:
      va = per_request.get(a, {}).get(metric)
      vb = per_request.get(b, {}).get(metric)
      if va is None or vb is None:
        continue
      try:
        r = paired_bootstrap(va, vb, resamples=resamples, seed=seed, level=level)
      except ValueError as e:
        raise ValueError(f'{a} vs {b} on {metric}: {e}') from e
      p = f'compare/{a}_vs_{b}/{metric}'
      out[f'{p}/diff'] = r['diff']
      out[f'{p}/ci_low'] = r['ci_low']
      out[f'{p}/ci_high'] = r['ci_high']
      out[f'{p}/n'] = r['n']
      out[f'{p}/verdict'] = verdict(r['ci_low'], r['ci_high'])
  if out:
    out['bootstrap/resamples'] = int(resamples)
    out['bootstrap/seed'] = int(seed)
    out['bootstrap/level'] = float(level)
  return out


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
  """(mean, sample standard deviation with ddof=1) of a figure over seeds. The standard
  deviation of a single value is None (undefined), never NaN.

  Raises:
    ValueError: no values, or a None / NaN / infinite value (a failed seed must be reported,
      not averaged away).
  """
  vals = list(values)
  if not vals:
    raise ValueError('mean_std of no values')
  if any(v is None or not math.isfinite(float(v)) for v in vals):
    raise ValueError(f'mean_std of a missing or non-finite value: {vals}')
  arr = np.asarray(vals, np.float64)
  std = float(arr.std(ddof=1)) if arr.size > 1 else None
  return float(arr.mean()), std
