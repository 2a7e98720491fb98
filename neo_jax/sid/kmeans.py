"""K-means and residual k-means in JAX.

The pieces, from the inside out:

* `lloyd_stats(x_BxD, valid_B, centroids_KxD)`: assignment of a batch of points and the
  per-cluster sums, counts and squared error, plus the batch's farthest points. Sums, counts
  and error add across batches (a `psum` across devices); the farthest points merge by a
  top-k over the union (`merge_stats`, an all-gather + top-k across devices).
* `update_centroids(stats, centroids_KxD)`: means of the non-empty clusters; an empty cluster
  is reseeded at the point farthest from its current centroid (the i-th empty cluster, in
  index order, at the i-th farthest point).
* `lloyd(...)`: jitted Lloyd iterations in a `lax.while_loop`, stopping early once no
  assignment changes (then the centroids are a fixed point, so the result equals running all
  `iters` iterations).
* `kmeans_plusplus(...)`: k-means++ seeding driven by `init_uniforms(key, k)`, one uniform per
  centroid, sampled by inverse CDF so that a reference implementation fed the same uniforms
  picks the same points.
* `kmeans(...)` and `residual_kmeans(...)`: host-level entry points.

Points are padded up to a coarse grid of sizes (at most 1/8 extra rows) and masked, so that
catalogs of nearby sizes share one compiled program.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from neo_jax.catalog import progress as progress_lib


class LloydStats(NamedTuple):
  """Sufficient statistics of one assignment pass over a batch of B points.

  Attributes:
    assign_B: (B,) int32 cluster of each point (arbitrary for padding rows).
    d2_B: (B,) float32 squared distance of each point to its centroid; -1 on padding rows.
    sums_KxD: (K, D) float32 sum of the points of each cluster.  [additive]
    counts_K: (K,) int32 number of points in each cluster.  [additive]
    sse: () float32 sum of squared distances.  [additive]
    far_d2_F: (F,) float32 the F largest distances of the batch, descending (-1 = none).
    far_x_FxD: (F, D) float32 the corresponding points.
  """

  assign_B: jax.Array
  d2_B: jax.Array
  sums_KxD: jax.Array
  counts_K: jax.Array
  sse: jax.Array
  far_d2_F: jax.Array
  far_x_FxD: jax.Array


def _nearest(x_BxD, x_sq_B, centroids_KxD):
  """Nearest centroid and squared distance to it, for a block of points."""
  # argmin_k |x - c_k|^2 = argmax_k (x.c_k - |c_k|^2 / 2): one matmul plus one reduction,
  # with |x|^2 added back only for the winner.
  half_c_sq_K = 0.5 * jnp.sum(centroids_KxD * centroids_KxD, axis=-1)
  score_BxK = x_BxD @ centroids_KxD.T - half_c_sq_K[None, :]
  assign_B = jnp.argmax(score_BxK, axis=-1).astype(jnp.int32)
  best_B = jnp.take_along_axis(score_BxK, assign_B[:, None], axis=-1)[:, 0]
  # Clamped at 0 against cancellation when a point sits on its centroid.
  return assign_B, jnp.maximum(x_sq_B - 2.0 * best_B, 0.0)


def lloyd_stats(x_BxD: jax.Array, valid_B: jax.Array, centroids_KxD: jax.Array,
                x_sq_B: jax.Array | None = None, chunk: int | None = None) -> LloydStats:
  """Assigns a batch of points to the nearest centroid and accumulates cluster statistics.

  Args:
    x_BxD: (B, D) float32 points.
    valid_B: (B,) bool, False on padding rows (they count nowhere).
    centroids_KxD: (K, D) float32.
    x_sq_B: optional precomputed (B,) squared norms of `x_BxD`.
    chunk: if set (static, must divide B), distances are computed `chunk` points at a time,
      so that the (B, K) distance matrix is never materialised (memory, and cache locality).

  Returns:
    LloydStats; the number F of farthest points kept is min(K, B).
  """
  if x_sq_B is None:
    x_sq_B = jnp.sum(x_BxD * x_BxD, axis=-1)
  b, d = x_BxD.shape
  k = centroids_KxD.shape[0]
  if chunk is None or chunk >= b:
    assign_B, d2_B = _nearest(x_BxD, x_sq_B, centroids_KxD)
  else:
    if b % chunk:
      raise ValueError(f'chunk {chunk} must divide the batch size {b}')
    assign_CxS, d2_CxS = jax.lax.map(
        lambda xs: _nearest(xs[0], xs[1], centroids_KxD),
        (x_BxD.reshape(b // chunk, chunk, d), x_sq_B.reshape(b // chunk, chunk)))
    assign_B, d2_B = assign_CxS.reshape(b), d2_CxS.reshape(b)
  d2_B = jnp.where(valid_B, d2_B, -1.0)
  # Padding rows go to an extra segment that is dropped.
  seg_B = jnp.where(valid_B, assign_B, k)
  sums_KxD = jax.ops.segment_sum(x_BxD, seg_B, num_segments=k + 1)[:k]
  counts_K = jax.ops.segment_sum(valid_B.astype(jnp.int32), seg_B, num_segments=k + 1)[:k]
  sse = jnp.sum(jnp.maximum(d2_B, 0.0))
  far_d2_F, far_idx_F = jax.lax.top_k(d2_B, min(k, b))
  return LloydStats(assign_B, d2_B, sums_KxD, counts_K, sse, far_d2_F, x_BxD[far_idx_F])


def merge_stats(a: LloydStats, b: LloydStats) -> LloydStats:
  """Statistics of the concatenation [a's batch; b's batch] (what a cross-device reduce does)."""
  k = a.counts_K.shape[0]
  far_d2 = jnp.concatenate([a.far_d2_F, b.far_d2_F])
  far_x = jnp.concatenate([a.far_x_FxD, b.far_x_FxD])
  top_d2, top_idx = jax.lax.top_k(far_d2, min(k, far_d2.shape[0]))
  return LloydStats(
      assign_B=jnp.concatenate([a.assign_B, b.assign_B]),
      d2_B=jnp.concatenate([a.d2_B, b.d2_B]),
      sums_KxD=a.sums_KxD + b.sums_KxD,
      counts_K=a.counts_K + b.counts_K,
      sse=a.sse + b.sse,
      far_d2_F=top_d2,
      far_x_FxD=far_x[top_idx])


def update_centroids(stats: LloydStats, centroids_KxD: jax.Array) -> tuple[jax.Array, jax.Array]:
  """New centroids from the statistics of an assignment pass.

  Returns:
    (centroids_KxD, num_reseeded): means of non-empty clusters; the i-th empty cluster (in
    index order) moves to the i-th farthest point, so it owns at least that point next pass.
  """
  del centroids_KxD  # every cluster is either re-estimated or reseeded
  counts_K = stats.counts_K
  empty_K = counts_K == 0
  means_KxD = stats.sums_KxD / jnp.maximum(counts_K, 1).astype(jnp.float32)[:, None]
  rank_K = jnp.cumsum(empty_K.astype(jnp.int32)) - 1
  num_far = stats.far_d2_F.shape[0]
  reseed_KxD = stats.far_x_FxD[jnp.clip(rank_K, 0, num_far - 1)]
  new_KxD = jnp.where(empty_K[:, None], reseed_KxD, means_KxD)
  return new_KxD, jnp.sum(empty_K.astype(jnp.int32))


@functools.partial(jax.jit, static_argnames=('chunk',))
def _lloyd_core(x_NxD, valid_N, init_KxD, iters, tol, chunk):
  x_sq_N = jnp.sum(x_NxD * x_NxD, axis=-1)
  n = x_NxD.shape[0]

  def cond(carry):
    it, _, _, changed, _, _, converged = carry
    return (it < iters) & changed & ~converged

  def body(carry):
    it, c_KxD, prev_N, _, reseeded, prev_sse, _ = carry
    stats = lloyd_stats(x_NxD, valid_N, c_KxD, x_sq_N, chunk)
    changed = jnp.any((stats.assign_B != prev_N) & valid_N)
    new_KxD, num_empty = update_centroids(stats, c_KxD)
    # Relative decrease of the squared error over the last update; the update of this pass
    # is still made (as in the streaming version), then the loop stops.
    converged = (tol > 0) & (it > 0) & (prev_sse - stats.sse <= tol * prev_sse)
    return (it + 1, new_KxD, stats.assign_B, changed, reseeded + num_empty, stats.sse,
            converged)

  init = (jnp.int32(0), init_KxD, jnp.full((n,), -1, jnp.int32), jnp.bool_(True), jnp.int32(0),
          jnp.float32(0), jnp.bool_(False))
  it, c_KxD, _, changed, reseeded, _, _ = jax.lax.while_loop(cond, body, init)
  # The pass that found no change updated nothing: do not count it.
  it = it - (~changed).astype(jnp.int32)
  final = lloyd_stats(x_NxD, valid_N, c_KxD, x_sq_N, chunk)
  return c_KxD, final.assign_B, final.d2_B, final.counts_K, final.sse, it, reseeded


@functools.partial(jax.jit, static_argnames=('k',))
def _kmeans_pp_core(x_NxD, n_valid, u_K, k):
  n = x_NxD.shape[0]
  x_sq_N = jnp.sum(x_NxD * x_NxD, axis=-1)
  valid_N = jnp.arange(n) < n_valid
  first = jnp.minimum(jnp.floor(u_K[0] * n_valid).astype(jnp.int32), n_valid - 1)
  c0_D = x_NxD[first]
  cents_KxD = jnp.zeros((k, x_NxD.shape[1]), x_NxD.dtype).at[0].set(c0_D)

  def d2_to(c_D):
    return jnp.maximum(x_sq_N - 2.0 * (x_NxD @ c_D) + jnp.sum(c_D * c_D), 0.0)

  mind2_N = jnp.where(valid_N, d2_to(c0_D), 0.0)

  def body(j, carry):
    cents_KxD, mind2_N = carry
    cdf_N = jnp.cumsum(mind2_N)
    total = cdf_N[-1]
    # side='right' never lands on a zero-weight point (an existing centroid or padding); when
    # every remaining distance is 0 (fewer distinct points than K) take the last valid point.
    idx = jnp.searchsorted(cdf_N, u_K[j] * total, side='right')
    idx = jnp.where(total > 0, jnp.minimum(idx, n_valid - 1), n_valid - 1).astype(jnp.int32)
    c_D = x_NxD[idx]
    cents_KxD = cents_KxD.at[j].set(c_D)
    mind2_N = jnp.where(valid_N, jnp.minimum(mind2_N, d2_to(c_D)), 0.0)
    return cents_KxD, mind2_N

  cents_KxD, _ = jax.lax.fori_loop(1, k, body, (cents_KxD, mind2_N))
  return cents_KxD


# Distances are computed in row blocks once the (N, K) matrix would pass _MAX_DIST_ELEMS
# (memory); below that one matrix is as fast or faster on CPU (measured: 50k x 256 x 128,
# ~55 ms per Lloyd pass either way on 2 cores), so small problems are not chunked.
_MAX_DIST_ELEMS = 1 << 25
_BLOCK_DIST_ELEMS = 1 << 24


def _padded_size(n: int) -> int:
  """Smallest m * 2^e >= n with m < 16 and e = max(0, bit_length(n) - 4): <= 1/8 padding."""
  e = max(0, n.bit_length() - 4)
  return -(-n // (1 << e)) << e


def _chunk_for(npad: int, k: int) -> int | None:
  """Rows per distance block (a power of two dividing `npad`), or None for one block."""
  if npad * k <= _MAX_DIST_ELEMS:
    return None
  pow2_divisor = npad & -npad
  rows = 1 << max(0, (_BLOCK_DIST_ELEMS // k).bit_length() - 1)
  return min(pow2_divisor, rows)


def _as_points(x_NxD, name='x_NxD') -> np.ndarray:
  x = np.asarray(x_NxD)
  if x.ndim != 2:
    raise ValueError(f'{name} must be 2-D (N, D), got shape {x.shape}')
  if x.shape[0] == 0 or x.shape[1] == 0:
    raise ValueError(f'{name} must be non-empty, got shape {x.shape}')
  if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
    raise ValueError(f'{name} must be numeric, got dtype {x.dtype}')
  x = x.astype(np.float32)
  if not np.all(np.isfinite(x)):
    raise ValueError(f'{name} has non-finite values')
  return x


def _padded(x: np.ndarray) -> tuple[jax.Array, jax.Array]:
  n = x.shape[0]
  npad = _padded_size(n)
  xp = np.zeros((npad, x.shape[1]), np.float32)
  xp[:n] = x
  return jnp.asarray(xp), jnp.arange(npad) < n


def init_uniforms(key: jax.Array, k: int) -> jax.Array:
  """(k,) float32 uniforms in [0, 1) that drive `kmeans_plusplus`: u[0] picks the first
  centroid uniformly, u[j] picks centroid j by inverse CDF of the D^2 weights."""
  return jax.random.uniform(key, (k,), jnp.float32)


def kmeans_plusplus(x_NxD, k: int, key: jax.Array) -> np.ndarray:
  """k-means++ seeding (Arthur & Vassilvitskii 2007), one sample per centroid.

  Args:
    x_NxD: (N, D) points, N >= k.
    k: number of centroids.
    key: jax PRNG key.

  Returns:
    (k, D) float32 initial centroids, each a row of `x_NxD`.
  """
  x = _as_points(x_NxD)
  n = x.shape[0]
  if not 1 <= k <= n:
    raise ValueError(f'k must be in [1, N={n}], got {k}')
  xp, _ = _padded(x)
  return np.asarray(_kmeans_pp_core(xp, jnp.int32(n), init_uniforms(key, k), k=k))


@dataclasses.dataclass(frozen=True)
class KMeansResult:
  """Attributes:
    centroids: (K, D) float32.
    codes: (N,) int32 nearest centroid of each point (for the returned centroids).
    sq_dist: (N,) float32 squared distance of each point to its centroid.
    counts: (K,) int32 points per cluster.
    iterations: centroid updates made (<= iters; fewer when assignments stopped changing).
    reseeded: empty clusters reseeded, summed over iterations.
  """

  centroids: np.ndarray
  codes: np.ndarray
  sq_dist: np.ndarray
  counts: np.ndarray
  iterations: int
  reseeded: int

  @property
  def mse(self) -> float:
    """Mean squared distance of a point to its centroid."""
    return float(np.mean(self.sq_dist))


def lloyd(x_NxD, init_centroids_KxD, iters: int, tol: float = 0.0) -> KMeansResult:
  """Lloyd iterations from given centroids, with empty-cluster reseeding.

  Args:
    x_NxD: (N, D) points.
    init_centroids_KxD: (K, D) starting centroids, K <= N.
    iters: maximum number of update passes (>= 0).
    tol: also stop after a pass that lowered the squared error by less than this fraction of
      the previous pass's (0: stop only when no assignment changes).

  Returns:
    KMeansResult; `codes` is the assignment to the final centroids.
  """
  x = _as_points(x_NxD)
  c = _as_points(init_centroids_KxD, 'init_centroids_KxD')
  n = x.shape[0]
  if c.shape[1] != x.shape[1]:
    raise ValueError(f'centroids have D={c.shape[1]}, points have D={x.shape[1]}')
  if c.shape[0] > n:
    raise ValueError(f'K={c.shape[0]} centroids for only N={n} points')
  if iters < 0:
    raise ValueError(f'iters must be >= 0, got {iters}')
  if not tol >= 0:
    raise ValueError(f'tol must be >= 0, got {tol}')
  xp, valid = _padded(x)
  cents, assign, d2, counts, _, it, reseeded = _lloyd_core(
      xp, valid, jnp.asarray(c), jnp.int32(iters), jnp.float32(tol),
      chunk=_chunk_for(xp.shape[0], c.shape[0]))
  return KMeansResult(centroids=np.asarray(cents), codes=np.asarray(assign)[:n],
                      sq_dist=np.asarray(d2)[:n], counts=np.asarray(counts),
                      iterations=int(it), reseeded=int(reseeded))


def kmeans(x_NxD, k: int, key: jax.Array, iters: int = 50, tol: float = 0.0) -> KMeansResult:
  """k-means++ seeding then Lloyd. Deterministic for a given key."""
  return lloyd(x_NxD, kmeans_plusplus(x_NxD, k, key), iters, tol)


def _perplexity(codes: np.ndarray, k: int) -> float:
  p = np.bincount(codes, minlength=k).astype(np.float64)
  p = p[p > 0] / codes.shape[0]
  return float(np.exp(-np.sum(p * np.log(p))))


def residual_kmeans(x_NxD, level_ks: tuple[int, ...], seed: int = 0, iters: int = 50,
                    key: jax.Array | None = None, tol: float = 0.0, progress: bool = True,
                    log=None) -> tuple[np.ndarray, list[np.ndarray], dict]:
  """Residual k-means: level l clusters what levels < l left unexplained.

  A level whose K exceeds the number of points N is clamped to K = N (then level l already
  reproduces every point exactly; later levels see zero residuals).

  Args:
    x_NxD: (N, D) points.
    level_ks: requested K of each level.
    seed: integer seed; level l uses `fold_in(PRNGKey(seed), l)`.
    iters: maximum Lloyd passes per level.
    key: a PRNG key to use instead of `PRNGKey(seed)` (e.g. one stream per entity type).
    tol: relative squared-error decrease below which a level stops early (see `lloyd`).
    progress: progress lines, one unit a level (`neo_jax.catalog.progress`: levels done,
      rate, ETA, the last level's mse); False: none. A level runs in one compiled loop.
    log: where the progress lines go (None: stderr).

  Returns:
    codes_NxM: (N, M) int32, M = len(level_ks).
    codebooks: M arrays (K_l, D) float32 with the effective (clamped) K_l; the reconstruction
      of point n is sum_l codebooks[l][codes[n, l]].
    info: flat dict: 'k_requested_l{l}', 'k_l{l}' (effective), 'k_clamped' (number of
      clamped levels), 'mse_l{l}' (mean squared residual norm after level l; 'mse_input'
      before any level), 'utilisation_l{l}' (perplexity of code usage / K_l),
      'iterations_l{l}', 'reseeded_l{l}', 'seconds'.
  """
  t0 = time.perf_counter()
  x = _as_points(x_NxD)
  level_ks = tuple(int(k) for k in level_ks)
  if not level_ks or any(k < 1 for k in level_ks):
    raise ValueError(f'level_ks must be a non-empty tuple of positive ints, got {level_ks}')
  n = x.shape[0]
  base = jax.random.PRNGKey(seed) if key is None else key
  residual = x.copy()
  codes = np.zeros((n, len(level_ks)), np.int32)
  codebooks = []
  info: dict = {'mse_input': float(np.mean(np.sum(residual.astype(np.float64) ** 2, axis=1)))}
  clamped = 0
  meter = progress_lib.Progress(f'k-means (N={n})', len(level_ks), unit='levels', log=log,
                                on=None if progress else False)
  for level, k_req in enumerate(level_ks):
    k = min(k_req, n)
    clamped += k < k_req
    res = kmeans(residual, k, jax.random.fold_in(base, level), iters, tol)
    codes[:, level] = res.codes
    codebooks.append(res.centroids)
    residual = residual - res.centroids[res.codes]
    info[f'k_requested_l{level}'] = k_req
    info[f'k_l{level}'] = k
    info[f'mse_l{level}'] = float(np.mean(np.sum(residual.astype(np.float64) ** 2, axis=1)))
    info[f'utilisation_l{level}'] = _perplexity(res.codes, k) / k
    info[f'iterations_l{level}'] = res.iterations
    info[f'reseeded_l{level}'] = res.reseeded
    meter.update(1, f'mse {info[f"mse_l{level}"]:.5f} after level {level} (K={k})')
  meter.close()
  info['k_clamped'] = int(clamped)
  info['seconds'] = time.perf_counter() - t0
  return codes, codebooks, info


@functools.partial(jax.jit, static_argnames=('chunk',))
def _assign_core(x_NxD, valid_N, centroids_KxD, chunk):
  x_sq_N = jnp.sum(x_NxD * x_NxD, axis=-1)
  return lloyd_stats(x_NxD, valid_N, centroids_KxD, x_sq_N, chunk).assign_B


def assign_residual(x_NxD, codebooks: list[np.ndarray]) -> np.ndarray:
  """Codes of points under fixed residual codebooks: level l assigns what levels < l left
  to its nearest centroid.

  The arithmetic is `residual_kmeans`'s final assignment (points padded the same way, the
  same `lloyd_stats`, residuals subtracted in float32 numpy), so the points the codebooks were
  fitted on in memory get their own codes back.

  Args:
    x_NxD: (N, D) points.
    codebooks: M arrays (K_l, D), as `residual_kmeans` returns them.

  Returns:
    (N, M) int32 codes.
  """
  x = _as_points(x_NxD)
  if not codebooks:
    raise ValueError('assign_residual needs at least one codebook')
  n = x.shape[0]
  codes = np.zeros((n, len(codebooks)), np.int32)
  residual = x.copy()
  for level, cb in enumerate(codebooks):
    cb = _as_points(cb, f'codebooks[{level}]')
    if cb.shape[1] != x.shape[1]:
      raise ValueError(f'codebook {level} has D={cb.shape[1]}, points have D={x.shape[1]}')
    xp, valid = _padded(residual)
    assign = _assign_core(xp, valid, jnp.asarray(cb), chunk=_chunk_for(xp.shape[0], cb.shape[0]))
    codes[:, level] = np.asarray(assign)[:n]
    residual = residual - cb[codes[:, level]]
  return codes


__all__ = [
    'KMeansResult', 'LloydStats', 'assign_residual', 'init_uniforms', 'kmeans',
    'kmeans_plusplus', 'lloyd', 'lloyd_stats', 'merge_stats', 'residual_kmeans',
    'update_centroids',
]
