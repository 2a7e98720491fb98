"""Streaming / mini-batch / data-parallel k-means against numpy references and one device."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from neo_jax.sid import kmeans as km
from neo_jax.sid import stream_kmeans as sk


def clustered(n, d, centers, seed, noise=0.3):
  rng = np.random.default_rng(seed)
  c = rng.normal(size=(centers, d))
  return (c[rng.integers(0, centers, n)] + noise * rng.normal(size=(n, d))).astype(np.float32)


def ref_lloyd(x, c, iters):
  """float64 Lloyd; the i-th empty cluster is reseeded at the i-th farthest point."""
  x, c = x.astype(np.float64), c.astype(np.float64).copy()
  prev = None
  for _ in range(iters):
    d2 = ((x[:, None] - c[None]) ** 2).sum(-1)
    a = d2.argmin(1)
    if prev is not None and np.array_equal(a, prev):
      break
    far = np.argsort(-d2[np.arange(len(x)), a], kind='stable')
    counts = np.bincount(a, minlength=len(c))
    empty = np.flatnonzero(counts == 0)
    for j in np.flatnonzero(counts):
      c[j] = x[a == j].mean(0)
    c[empty] = x[far[:len(empty)]]
    prev = a
  return c, ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)


def ref_minibatch(x, c, epochs, bs, seed):
  """float64 Sculley mini-batch k-means: c_k = running mean of all points assigned to it."""
  x, c = x.astype(np.float64), c.astype(np.float64).copy()
  rng = np.random.default_rng(seed)
  seen = np.zeros(len(c))
  nb = -(-len(x) // bs)
  for _ in range(epochs):
    for b in rng.permutation(nb):
      xb = x[b * bs:(b + 1) * bs]
      a = ((xb[:, None] - c[None]) ** 2).sum(-1).argmin(1)
      for j in np.unique(a):
        m = a == j
        seen[j] += m.sum()
        c[j] += (xb[m].sum(0) - m.sum() * c[j]) / seen[j]
  return c


def test_streaming_lloyd_matches_reference():
  x = clustered(150, 6, 5, seed=0)
  init = x[[0, 1, 2, 3, 4, 5, 6]].copy()
  init[6] = init[5]  # a duplicate centroid: one cluster starts empty and is reseeded
  res = sk.fit_level(x, np.zeros((150, 0), np.int32), [], init, iters=30, batch_size=40)
  c_ref, a_ref = ref_lloyd(x, init, 30)
  np.testing.assert_allclose(res.centroids, c_ref, atol=1e-4)
  np.testing.assert_array_equal(res.codes, a_ref)
  assert res.reseeded >= 1 and res.counts.sum() == 150


def test_minibatch_matches_reference():
  x = clustered(120, 5, 4, seed=1)
  init = x[:6].copy()
  res = sk.fit_level(x, np.zeros((120, 0), np.int32), [], init, iters=3, batch_size=32,
                     minibatch=True, seed=7)
  np.testing.assert_allclose(res.centroids, ref_minibatch(x, init, 3, 32, 7), atol=1e-4)


def test_tol_stops_early_and_inmemory_tol():
  x = clustered(400, 8, 12, seed=2, noise=1.0)
  init = x[:12]
  full = sk.fit_level(x, np.zeros((400, 0), np.int32), [], init, iters=100, batch_size=128)
  early = sk.fit_level(x, np.zeros((400, 0), np.int32), [], init, iters=100, batch_size=128,
                       tol=0.05)
  assert early.iterations < full.iterations
  assert early.mse <= 1.1 * full.mse
  mem_full = km.lloyd(x, init, 100)
  mem_early = km.lloyd(x, init, 100, tol=0.05)
  assert mem_early.iterations < mem_full.iterations
  assert mem_full.iterations == full.iterations


def test_residual_streaming_equals_in_memory():
  # With the whole data as the seeding sample and exact Lloyd, streaming == in memory.
  x = clustered(300, 8, 10, seed=3)
  codes_m, cbs_m, info_m = km.residual_kmeans(x, (8, 4, 300), seed=5, iters=40)
  codes_s, cbs_s, info_s = sk.residual_kmeans_streaming(x, (8, 4, 500), seed=5, iters=40,
                                                        batch_size=64, init_sample=10_000)
  np.testing.assert_array_equal(codes_m[:, :2], codes_s[:, :2])
  for a, b in zip(cbs_m[:2], cbs_s[:2]):
    np.testing.assert_allclose(a, b, atol=1e-4)
  assert info_s['k_l2'] == 300 and info_s['k_clamped'] == 1
  assert info_s['mse_l2'] < 1e-6
  np.testing.assert_allclose(info_s['mse_l1'], info_m['mse_l1'], rtol=1e-4)


def test_memmap_input_and_bad_input(tmp_path):
  x = clustered(100, 4, 3, seed=4)
  np.save(tmp_path / 'x.npy', x)
  mm = np.load(tmp_path / 'x.npy', mmap_mode='r')
  codes, _, _ = sk.residual_kmeans_streaming(mm, (3, 2), iters=5, batch_size=32)
  assert codes.shape == (100, 2)
  bad = x.copy()
  bad[57, 1] = np.nan
  with pytest.raises(ValueError, match='row 57'):
    sk.residual_kmeans_streaming(bad, (3,), iters=2, batch_size=32, init_sample=8)
  with pytest.raises(ValueError, match='level_ks'):
    sk.residual_kmeans_streaming(x, (), iters=2)
  with pytest.raises(ValueError, match="'data'"):
    sk.fit_level(x, np.zeros((100, 0), np.int32), [], x[:3], iters=1,
                 mesh=jax.sharding.Mesh(np.array(jax.devices()[:1]), ('model',)))


_SHARDED = textwrap.dedent('''
    import jax, numpy as np
    from neo_jax.sid import stream_kmeans as sk
    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    c = rng.normal(size=(20, 16))
    x = (c[rng.integers(0, 20, 1000)] + 0.2 * rng.normal(size=(1000, 16))).astype(np.float32)
    mesh = sk.data_mesh()
    for mb in (False, True):
      kw = dict(seed=3, iters=8, batch_size=256, minibatch=mb, init_sample=500)
      c1, cb1, i1 = sk.residual_kmeans_streaming(x, (16, 8), **kw)
      c8, cb8, i8 = sk.residual_kmeans_streaming(x, (16, 8), mesh=mesh, **kw)
      np.testing.assert_array_equal(c1, c8)
      for a, b in zip(cb1, cb8):
        np.testing.assert_allclose(a, b, atol=1e-4)
      assert i1['iterations_l0'] == i8['iterations_l0']
    print('SHARDED_OK')
''')


def test_sharded_over_8_devices_equals_one_device():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, '-c', _SHARDED], env=env, cwd=root,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and 'SHARDED_OK' in out.stdout, out.stderr[-3000:]
