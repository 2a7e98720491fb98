"""SID quality report (brute force over pairs), ablation methods, per-type depth, streaming."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from neo_jax.catalog.types import Catalog
from neo_jax.sid import builder
from neo_jax.sid import quality
from neo_jax.sid.types import SIDMap


def make_catalog(types):
  n = len(types)
  names = tuple(sorted(set(types)))
  return Catalog(ids=[f'i{j}' for j in range(n)], type_names=names,
                 type_index=np.array([names.index(t) for t in types], np.int32),
                 titles=[f'item {j}' for j in range(n)], descriptions=[''] * n,
                 tags=[()] * n, attributes=[{} for _ in range(n)],
                 popularity=np.full(n, np.nan, np.float32))


def brute_force(sid_map, emb, t, plen):
  ti = sid_map.type_names.index(t)
  rows = [i for i in range(len(sid_map)) if sid_map.type_index[i] == ti
          and sid_map.codes[i, 0] >= 0]
  u = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  cos = [float(u[a] @ u[b]) for a, b in itertools.combinations(rows, 2)
         if np.array_equal(sid_map.codes[a, :plen], sid_map.codes[b, :plen])]
  groups = {}
  for r in rows:
    groups.setdefault(tuple(sid_map.codes[r, :plen]), []).append(r)
  err = sum(float(np.sum((emb[g] - emb[g].mean(0)) ** 2)) for g in groups.values())
  return (np.mean(cos) if cos else float('nan')), err / len(rows)


def test_quality_report_matches_brute_force():
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(42, 5)).astype(np.float32)
  codes = np.stack([rng.integers(0, 3, 42), rng.integers(0, 2, 42), np.arange(42) % 7], 1)
  codes = codes.astype(np.int32)
  codes[5] = -1  # unreachable: left out
  sid_map = SIDMap(type_names=('book', 'movie'), level_sizes={'book': (3, 2, 7),
                                                              'movie': (3, 2, 7)},
                   codes=codes, type_index=np.array([1] * 30 + [0] * 12, np.int32))
  rep = quality.quality_report(sid_map, emb)
  for t in ('book', 'movie'):
    for plen in range(4):
      coh, err = brute_force(sid_map, emb, t, plen)
      if np.isnan(coh):
        assert f'{t}/coherence_p{plen}' not in rep
      else:
        np.testing.assert_allclose(rep[f'{t}/coherence_p{plen}'], coh, atol=1e-6)
      np.testing.assert_allclose(rep[f'{t}/recon_mse_p{plen}'], err, atol=1e-5)
  movie = codes[np.array([1] * 30 + [0] * 12) == 1]
  movie = movie[movie[:, 0] >= 0]
  p = np.bincount(movie[:, 0], minlength=3) / len(movie)
  np.testing.assert_allclose(rep['movie/utilisation_l0'], np.exp(-np.sum(p * np.log(p))) / 3)


def clustered_catalog(seed=0):
  rng = np.random.default_rng(seed)
  types = ['movie'] * 120 + ['book'] * 60
  centers = rng.normal(size=(6, 8)) * 3
  emb = (centers[rng.integers(0, 6, 180)] + rng.normal(size=(180, 8))).astype(np.float32)
  return make_catalog(types), emb


def test_rkmeans_beats_random_and_atomic_on_coherence(tmp_path):
  cat, emb = clustered_catalog()
  reports = {}
  for method in ('rkmeans', 'random', 'atomic'):
    sid_map, rep = builder.build_sid_map(cat, emb, levels=2, k=8, method=method, seed=1)
    builder.validate_sid_map(sid_map)
    assert sid_map.reachable().all() and rep['unreachable_items'] == 0
    reports[method] = quality.quality_report(sid_map, emb)
    png = quality.plot_report(reports[method], sid_map, tmp_path / f'{method}.png', method)
    assert open(png, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
    if method == 'atomic':
      assert sid_map.num_levels == 1 and sid_map.level_sizes == {'book': (60,), 'movie': (120,)}
      for ti in range(2):
        assert sorted(sid_map.codes[sid_map.type_index == ti, 0]) == list(
            range(int(np.sum(sid_map.type_index == ti))))
      assert rep['collision_rate'] == 0
    if method == 'random':
      assert sid_map.level_sizes['movie'][:2] == (8, 8)
      # 64 code pairs for 60 books: distinct random codes, no collision; 120 movies collide.
      assert rep['book/collision_rate'] == 0 and rep['book/max_group'] == 1
      assert rep['movie/collision_rate'] > 0 and sid_map.level_sizes['movie'][2] >= 2
  assert reports['rkmeans']['coherence_p1'] > reports['random']['coherence_p1'] + 0.3
  assert reports['rkmeans']['recon_mse_p1'] < 0.5 * reports['random']['recon_mse_p1']


def test_per_type_depth_and_streaming_path():
  cat, emb = clustered_catalog(1)
  sid_map, rep = builder.build_sid_map(cat, emb, levels={'movie': 3, 'book': 1},
                                       k={'movie': (4, 4, 4), 'book': 8}, seed=0)
  assert sid_map.num_levels == 4
  assert sid_map.level_sizes['book'][1:3] == (1, 1)
  assert np.all(sid_map.codes[sid_map.type_index == 0, 1:3] == 0)
  assert rep['book/kmeans_levels'] == 1 and rep['movie/kmeans_levels'] == 3
  assert 'book/mse_l1' not in rep and 'movie/mse_l2' in rep
  streamed, srep = builder.build_sid_map(cat, emb, levels=2, k=4, batch_size=32, seed=0,
                                         minibatch=True, iters=5, tol=1e-3)
  assert streamed.reachable().all() and srep['mse_l1'] < srep['mse_input']
  assert streamed.meta['minibatch'] is True
  with pytest.raises(ValueError, match='unknown SID method'):
    builder.build_sid_map(cat, emb, method='lsh')
  with pytest.raises(ValueError, match='levels dict'):
    builder.build_sid_map(cat, emb, levels={'movie': 2})
  with pytest.raises(ValueError, match='per-level k tuple'):
    builder.build_sid_map(cat, emb, levels={'movie': 2, 'book': 1}, k=(4, 4))
