"""'centroid' SID row init: the affine fit, residual centroids and rows against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from neo_jax.model import sid_init
from neo_jax.sid.types import SIDMap
from neo_jax.tokenizer.sid_vocab import SIDVocab

E, D, V_TEXT = 5, 6, 30
SIZES = {'a': (3, 2), 'b': (2, 4)}


def _setup(seed=0):
  rng = np.random.default_rng(seed)
  n = 40
  type_index = rng.integers(0, 2, n).astype(np.int32)
  codes = np.zeros((n, 2), np.int32)
  for i in range(n):
    k0, k1 = SIZES['ab'[type_index[i]]]
    codes[i] = rng.integers(0, k0), rng.integers(0, k1)
  codes[type_index == 1, 1] = np.minimum(codes[type_index == 1, 1], 2)  # b's code 3 unused
  codes[5] = -1  # one unreachable item
  sid_map = SIDMap(('a', 'b'), SIZES, codes, type_index)
  x = rng.standard_normal((n, E))
  table = rng.standard_normal((V_TEXT, D))
  titles = [list(rng.integers(0, V_TEXT, rng.integers(1, 5))) for _ in range(n)]
  return sid_map, x, table, titles


def test_fit_affine_map_recovers_an_exact_affine_relation():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((50, E))
  a, c = rng.standard_normal((E, D)), rng.standard_normal(D)
  w, b = sid_init.fit_affine_map(x, x @ a + c, ridge=0.0)
  np.testing.assert_allclose(w, a, atol=1e-9)
  np.testing.assert_allclose(b, c, atol=1e-9)
  with pytest.raises(ValueError, match='same N'):
    sid_init.fit_affine_map(x, x[:3] @ a)


def test_centroid_rows_match_brute_force():
  sid_map, x, table, titles = _setup()
  vocab = SIDVocab(('a', 'b'), SIZES, base=V_TEXT)
  rows = sid_init.centroid_rows(table, vocab, sid_map, x, titles, ridge=0.0)
  assert rows.shape == (vocab.size, D) and rows.dtype == np.float32
  ok = [i for i in range(len(x)) if sid_map.codes[i, 0] >= 0]
  # Brute force: plain lstsq on [x, 1], loops for the centroids.
  y = np.array([table[titles[i]].mean(0) for i in ok])
  coef = np.linalg.lstsq(np.c_[x[ok], np.ones(len(ok))], y, rcond=None)[0]
  project = lambda v: v @ coef[:E] + coef[E]
  np.testing.assert_allclose(rows[0], table.mean(0), rtol=1e-5)
  np.testing.assert_allclose(rows[1], table.mean(0), rtol=1e-5)
  for ti, t in enumerate('ab'):
    members = [i for i in ok if sid_map.type_index[i] == ti]
    c0 = {c: x[[i for i in members if sid_map.codes[i, 0] == c]].mean(0)
          for c in range(SIZES[t][0]) if any(sid_map.codes[i, 0] == c for i in members)}
    for c in range(SIZES[t][0]):
      want = project(c0.get(c, x[members].mean(0)))
      np.testing.assert_allclose(rows[vocab.token_id(t, 0, c) - V_TEXT], want, rtol=1e-4,
                                 atol=1e-5)
    for c in range(SIZES[t][1]):
      users = [i for i in members if sid_map.codes[i, 1] == c]
      resid = (np.mean([x[i] - c0[sid_map.codes[i, 0]] for i in users], axis=0) if users
               else np.zeros(E))
      np.testing.assert_allclose(rows[vocab.token_id(t, 1, c) - V_TEXT], project(resid),
                                 rtol=1e-4, atol=1e-5)


def test_centroid_rows_check_inputs():
  sid_map, x, table, titles = _setup()
  with pytest.raises(ValueError, match='different blocks'):
    sid_init.centroid_rows(table, SIDVocab(('a',), {'a': (3, 2)}, V_TEXT), sid_map, x, titles)
  vocab = SIDVocab(('a', 'b'), SIZES, base=V_TEXT)
  with pytest.raises(ValueError, match='titles for'):
    sid_init.centroid_rows(table, vocab, sid_map, x, titles[:-1])
  with pytest.raises(ValueError, match='embedding has'):
    sid_init.centroid_rows(table[:-1], vocab, sid_map, x, titles)
