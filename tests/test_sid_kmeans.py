"""K-means in JAX against a float64 numpy reference of the same algorithm."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neo_jax.sid import kmeans as km


# ---------------------------------------------------------------- numpy reference


def ref_kmeans_pp(x, u):
  """Indices picked by k-means++ driven by uniforms u (inverse CDF of D^2 weights)."""
  x = x.astype(np.float64)
  n = x.shape[0]
  picked = [min(int(np.floor(float(u[0]) * n)), n - 1)]
  mind2 = np.sum((x - x[picked[0]]) ** 2, axis=1)
  for j in range(1, len(u)):
    cdf = np.cumsum(mind2)
    if cdf[-1] > 0:
      idx = min(int(np.searchsorted(cdf, float(u[j]) * cdf[-1], side='right')), n - 1)
    else:
      idx = n - 1
    picked.append(idx)
    mind2 = np.minimum(mind2, np.sum((x - x[idx]) ** 2, axis=1))
  return np.array(picked)


def ref_lloyd(x, c, iters):
  """Lloyd with reseeding of the i-th empty cluster at the i-th farthest point."""
  x = x.astype(np.float64)
  c = c.astype(np.float64).copy()
  k = c.shape[0]
  prev = None
  it = 0
  reseeded = 0
  while it < iters:
    d2 = np.sum((x[:, None, :] - c[None, :, :]) ** 2, axis=-1)
    assign = np.argmin(d2, axis=1)
    if prev is not None and np.array_equal(assign, prev):
      break
    mind2 = d2[np.arange(len(x)), assign]
    far = np.argsort(-mind2, kind='stable')
    counts = np.bincount(assign, minlength=k)
    new = np.zeros_like(c)
    rank = 0
    for j in range(k):
      if counts[j]:
        new[j] = x[assign == j].mean(axis=0)
      else:
        new[j] = x[far[rank]]
        rank += 1
        reseeded += 1
    c, prev = new, assign
    it += 1
  d2 = np.sum((x[:, None, :] - c[None, :, :]) ** 2, axis=-1)
  return c, np.argmin(d2, axis=1), it, reseeded


# ---------------------------------------------------------------- data


def blobs(n_per, centers, scale, seed):
  rng = np.random.default_rng(seed)
  centers = np.asarray(centers, np.float32)
  labels = np.repeat(np.arange(len(centers)), n_per)
  x = centers[labels] + scale * rng.normal(size=(len(labels), centers.shape[1]))
  perm = rng.permutation(len(labels))
  return x[perm].astype(np.float32), labels[perm]


# Most tests share this one (N, D) so that jit compiles once per K.
N, D = 120, 6
X = np.random.default_rng(7).normal(size=(N, D)).astype(np.float32)


# ---------------------------------------------------------------- tests


def test_kmeans_plusplus_matches_reference():
  key = jax.random.PRNGKey(3)
  k = 9
  cents = km.kmeans_plusplus(X, k, key)
  u = np.asarray(km.init_uniforms(key, k))
  idx = ref_kmeans_pp(X, u)
  assert len(set(idx.tolist())) == k  # D^2 sampling never re-picks a centroid
  np.testing.assert_array_equal(cents, X[idx])


def test_lloyd_matches_reference_from_same_init():
  init = km.kmeans_plusplus(X, 9, jax.random.PRNGKey(11))
  res = km.lloyd(X, init, iters=100)
  c_ref, assign_ref, it_ref, _ = ref_lloyd(X, init, 100)
  np.testing.assert_array_equal(res.codes, assign_ref)
  np.testing.assert_allclose(res.centroids, c_ref, atol=1e-5)
  assert res.iterations == it_ref
  assert res.iterations < 100  # converged, so the early stop was exercised
  d2_ref = np.sum((X - c_ref[assign_ref]) ** 2, axis=1)
  np.testing.assert_allclose(res.sq_dist, d2_ref, atol=1e-4)
  np.testing.assert_array_equal(res.counts, np.bincount(assign_ref, minlength=9))


def test_lloyd_fixed_iteration_count_matches_reference():
  init = X[:9] + 0.01
  for iters in (0, 1, 2):
    res = km.lloyd(X, init, iters=iters)
    c_ref, assign_ref, it_ref, _ = ref_lloyd(X, init, iters)
    assert res.iterations == it_ref == iters
    np.testing.assert_allclose(res.centroids, c_ref, atol=1e-5)
    np.testing.assert_array_equal(res.codes, assign_ref)


def test_recovers_well_separated_clusters():
  centers = 10.0 * np.eye(5, D)[:, :D]
  x, labels = blobs(24, centers, 0.3, seed=1)
  assert x.shape == (N, D)
  res = km.kmeans(x, 5, jax.random.PRNGKey(0), iters=50)
  # Perfect recovery up to relabelling: the contingency table is a permutation matrix.
  table = np.zeros((5, 5), int)
  np.add.at(table, (res.codes, labels), 1)
  assert np.all((table == 0) | (table == 24)), table
  assert np.all(table.sum(axis=0) == 24) and np.all(table.sum(axis=1) == 24)
  np.testing.assert_allclose(np.sort(res.centroids, axis=0), np.sort(centers, axis=0), atol=0.2)


def test_empty_cluster_repair_triggers_and_matches_reference():
  centers = 10.0 * np.eye(3, D)
  x, _ = blobs(40, centers, 0.5, seed=2)
  # Two far-away centroids own no point after the first assignment.
  init = np.concatenate([centers[:1], np.full((2, D), 100.0, np.float32),
                         np.full((1, D), -100.0, np.float32)]).astype(np.float32)
  res = km.lloyd(x, init, iters=50)
  assert res.reseeded >= 3
  assert np.all(res.counts > 0), res.counts
  assert np.all(np.bincount(res.codes, minlength=4) > 0)
  c_ref, assign_ref, it_ref, reseeded_ref = ref_lloyd(x, init, 50)
  np.testing.assert_array_equal(res.codes, assign_ref)
  np.testing.assert_allclose(res.centroids, c_ref, atol=1e-4)
  assert (res.iterations, res.reseeded) == (it_ref, reseeded_ref)


def test_stats_merge_like_a_cross_device_reduce():
  c = jnp.asarray(X[:7])
  valid = jnp.ones((N,), bool)
  full = km.lloyd_stats(jnp.asarray(X), valid, c)
  a = km.lloyd_stats(jnp.asarray(X[:60]), valid[:60], c)
  b = km.lloyd_stats(jnp.asarray(X[60:]), valid[60:], c)
  merged = km.merge_stats(a, b)
  np.testing.assert_allclose(merged.sums_KxD, full.sums_KxD, atol=1e-4)
  np.testing.assert_array_equal(merged.counts_K, full.counts_K)
  np.testing.assert_allclose(merged.sse, full.sse, rtol=1e-5)
  np.testing.assert_allclose(merged.far_d2_F, full.far_d2_F, rtol=1e-6)
  np.testing.assert_array_equal(merged.far_x_FxD, full.far_x_FxD)
  # Chunked distance blocks give the same statistics.
  chunked = km.lloyd_stats(jnp.asarray(X), valid, c, chunk=40)
  np.testing.assert_array_equal(chunked.assign_B, full.assign_B)
  np.testing.assert_allclose(chunked.sums_KxD, full.sums_KxD, atol=1e-5)


def test_padding_rows_count_nowhere():
  c = jnp.asarray(X[:7])
  valid = jnp.arange(N) < 100
  x_junk = np.array(X)
  x_junk[100:] = 1e3  # padding content must not matter
  s = km.lloyd_stats(jnp.asarray(x_junk), valid, c)
  ref = km.lloyd_stats(jnp.asarray(X[:100]), jnp.ones((100,), bool), c)
  np.testing.assert_array_equal(s.counts_K, ref.counts_K)
  np.testing.assert_allclose(s.sums_KxD, ref.sums_KxD, atol=1e-4)
  np.testing.assert_allclose(s.far_d2_F, ref.far_d2_F, rtol=1e-6)


def test_residual_levels_lower_reconstruction_error():
  codes, books, info = km.residual_kmeans(X, (9, 9, 9), seed=0, iters=30)
  assert codes.shape == (N, 3) and codes.dtype == np.int32
  recon = np.zeros_like(X, dtype=np.float64)
  errors = [np.mean(np.sum(X.astype(np.float64) ** 2, axis=1))]
  for level in range(3):
    recon += books[level][codes[:, level]]
    errors.append(np.mean(np.sum((X - recon) ** 2, axis=1)))
  assert all(e1 < e0 for e0, e1 in zip(errors, errors[1:])), errors
  for level in range(3):
    np.testing.assert_allclose(info[f'mse_l{level}'], errors[level + 1], rtol=1e-4)
    p = np.bincount(codes[:, level], minlength=9) / N
    p = p[p > 0]
    np.testing.assert_allclose(info[f'utilisation_l{level}'], np.exp(-np.sum(p * np.log(p))) / 9,
                               rtol=1e-6)
  assert info['k_clamped'] == 0


def test_deterministic_by_seed():
  c1, b1, _ = km.residual_kmeans(X, (9, 9), seed=5, iters=30)
  c2, b2, _ = km.residual_kmeans(X, (9, 9), seed=5, iters=30)
  c3, _, _ = km.residual_kmeans(X, (9, 9), seed=6, iters=30)
  np.testing.assert_array_equal(c1, c2)
  for a, b in zip(b1, b2):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(c1, c3)


def test_k_clamped_to_number_of_points():
  x = X[:5]
  codes, books, info = km.residual_kmeans(x, (9, 3), seed=0, iters=10)
  assert [b.shape[0] for b in books] == [5, 3]
  assert (info['k_l0'], info['k_requested_l0'], info['k_clamped']) == (5, 9, 1)
  assert sorted(codes[:, 0].tolist()) == [0, 1, 2, 3, 4]  # one point per centroid
  assert info['mse_l0'] < 1e-10


def test_bad_input_errors():
  with pytest.raises(ValueError, match='2-D'):
    km.residual_kmeans(X[0], (4,))
  with pytest.raises(ValueError, match='non-finite'):
    km.residual_kmeans(np.full((4, 2), np.nan), (2,))
  with pytest.raises(ValueError, match='positive'):
    km.residual_kmeans(X, (4, 0))
  with pytest.raises(ValueError, match='centroids'):
    km.lloyd(X[:3], X[:4], 5)


def test_chunked_distances_used_for_large_problems(monkeypatch):
  # Shrink the thresholds so that this small problem takes the row-block path.
  monkeypatch.setattr(km, '_MAX_DIST_ELEMS', 1)
  monkeypatch.setattr(km, '_BLOCK_DIST_ELEMS', 256)
  assert km._chunk_for(120, 9) == 8
  init = km.kmeans_plusplus(X, 9, jax.random.PRNGKey(11))
  res = km.lloyd(X, init, iters=100)
  c_ref, assign_ref, it_ref, _ = ref_lloyd(X, init, 100)
  np.testing.assert_array_equal(res.codes, assign_ref)
  np.testing.assert_allclose(res.centroids, c_ref, atol=1e-5)
  assert res.iterations == it_ref
