"""The paired bootstrap and the seed statistics against cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from neo_jax.eval import stats


def _unpaired_interval(a, b, resamples, seed, level=0.95):
  """What an unpaired bootstrap would give: a and b resampled independently."""
  rng = np.random.default_rng(seed)
  n = len(a)
  ia = rng.integers(0, n, size=(resamples, n))
  ib = rng.integers(0, n, size=(resamples, n))
  diffs = a[ia].mean(1) - b[ib].mean(1)
  return np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])


def test_identical_systems_differ_by_nothing():
  a = np.random.default_rng(0).random(300)
  r = stats.paired_bootstrap(a, a.copy(), resamples=1000, seed=3)
  assert r['diff'] == 0.0 and r['ci_low'] == 0.0 and r['ci_high'] == 0.0
  assert r['resamples'] == 1000 and r['n'] == 300
  assert stats.verdict(r['ci_low'], r['ci_high']) == 'within noise'


def test_noisy_equal_systems_interval_contains_zero():
  rng = np.random.default_rng(1)
  a = (rng.random(500) < 0.3).astype(float)
  b = (rng.random(500) < 0.3).astype(float)
  r = stats.paired_bootstrap(a, b, resamples=2000, seed=0)
  assert r['ci_low'] < r['diff'] < r['ci_high']
  assert r['diff'] == pytest.approx(a.mean() - b.mean())
  # Two independent hit-rates of 0.3 over 500 users: the standard error of the difference
  # is about sqrt(2 * 0.21 / 500) = 0.029; a 95% interval spans about 4 of them.
  assert 0.08 < r['ci_high'] - r['ci_low'] < 0.15


def test_better_on_every_request_excludes_zero():
  rng = np.random.default_rng(2)
  b = rng.random(200)
  a = b + 0.01 + 0.05 * rng.random(200)
  r = stats.paired_bootstrap(a, b, resamples=1000, seed=0)
  assert r['ci_low'] > 0.01 and r['ci_high'] < 0.06
  assert stats.verdict(r['ci_low'], r['ci_high']) == 'better'
  w = stats.paired_bootstrap(b, a, resamples=1000, seed=0)
  assert w['ci_high'] < 0 and stats.verdict(w['ci_low'], w['ci_high']) == 'worse'
  assert w['ci_low'] == pytest.approx(-r['ci_high']) and w['diff'] == pytest.approx(-r['diff'])


def test_pairing_matters():
  # Requests differ a lot in difficulty (base), a beats b by a little on each of them: the
  # paired interval excludes zero, an unpaired one (which sees the spread of base) does not.
  rng = np.random.default_rng(4)
  base = rng.random(400)
  b = base
  a = base + 0.02 + 0.02 * rng.standard_normal(400)
  paired = stats.paired_bootstrap(a, b, resamples=2000, seed=0)
  assert paired['ci_low'] > 0
  lo, hi = _unpaired_interval(a, b, 2000, seed=0)
  assert lo < 0 < hi


def test_deterministic_under_a_seed_and_chunk_independent():
  rng = np.random.default_rng(5)
  a, b = rng.random(1000), rng.random(1000)
  r1 = stats.paired_bootstrap(a, b, resamples=3000, seed=7)
  r2 = stats.paired_bootstrap(list(a), list(b), resamples=3000, seed=7)
  assert r1 == r2
  r3 = stats.paired_bootstrap(a, b, resamples=3000, seed=8)
  assert (r3['ci_low'], r3['ci_high']) != (r1['ci_low'], r1['ci_high'])
  # The chunked draw is the draw of all resamples at once.
  d = a - b
  idx = np.random.default_rng(7).integers(0, 1000, size=(3000, 1000))
  lo, hi = np.quantile(d[idx].mean(1), [0.025, 0.975])
  assert r1['ci_low'] == pytest.approx(lo) and r1['ci_high'] == pytest.approx(hi)


def test_level_widens_the_interval():
  rng = np.random.default_rng(6)
  a, b = rng.random(300), rng.random(300)
  r90 = stats.paired_bootstrap(a, b, resamples=1000, seed=0, level=0.90)
  r99 = stats.paired_bootstrap(a, b, resamples=1000, seed=0, level=0.99)
  assert r99['ci_low'] < r90['ci_low'] and r99['ci_high'] > r90['ci_high']


@pytest.mark.parametrize('a,b,kw,match', [
    ([1.0, 2.0], [1.0], {}, 'different lengths'),
    ([], [], {}, 'empty'),
    ([1.0, float('nan')], [1.0, 2.0], {}, 'NaN'),
    ([1.0, 2.0], [1.0, float('inf')], {}, 'NaN or infinite'),
    ([1.0], [1.0], {'resamples': 0}, 'resamples must be >= 1'),
    ([1.0], [1.0], {'level': 1.0}, 'level'),
    ([[1.0]], [[1.0]], {}, '1-D'),
])
def test_errors(a, b, kw, match):
  with pytest.raises(ValueError, match=match):
    stats.paired_bootstrap(a, b, **kw)


def test_compare_flat_keys():
  rng = np.random.default_rng(0)
  base = rng.random(100)
  per_request = {
      'neo_multi': {'ndcg@10': base + 0.1, 'hr@10': base},
      'sasrec': {'ndcg@10': base, 'hr@10': base},
      'bm25': {'search_hr@10': rng.random(50)},
  }
  out = stats.compare(per_request, [('neo_multi', 'sasrec'), ('neo_multi', 'bm25'),
                                    ('neo_multi', 'absent')],
                      ['ndcg@10', 'hr@10', 'search_hr@10'], resamples=1000, seed=1)
  p = 'compare/neo_multi_vs_sasrec'
  assert out[f'{p}/ndcg@10/diff'] == pytest.approx(0.1)
  assert out[f'{p}/ndcg@10/ci_low'] == pytest.approx(0.1)
  assert out[f'{p}/ndcg@10/verdict'] == 'better'
  assert out[f'{p}/hr@10/diff'] == 0.0 and out[f'{p}/hr@10/verdict'] == 'within noise'
  assert out[f'{p}/hr@10/n'] == 100
  # Only metrics both systems have: nothing for bm25 (no shared metric) or an absent system.
  assert not any(k.startswith(('compare/neo_multi_vs_bm25', 'compare/neo_multi_vs_absent'))
                 for k in out)
  assert out['bootstrap/resamples'] == 1000 and out['bootstrap/seed'] == 1
  assert stats.compare(per_request, [('sasrec', 'bm25')], ['hr@10']) == {}
  bad = {'x': {'m': np.zeros(3)}, 'y': {'m': np.zeros(4)}}
  with pytest.raises(ValueError, match='x vs y on m: paired samples of different lengths'):
    stats.compare(bad, [('x', 'y')], ['m'])


def test_mean_std():
  m, s = stats.mean_std([0.1, 0.2, 0.3])
  assert m == pytest.approx(0.2) and s == pytest.approx(0.1)
  assert stats.mean_std([0.5]) == (0.5, None)
  with pytest.raises(ValueError, match='no values'):
    stats.mean_std([])
  with pytest.raises(ValueError, match='non-finite'):
    stats.mean_std([0.1, None])
  with pytest.raises(ValueError, match='non-finite'):
    stats.mean_std([0.1, float('nan')])
