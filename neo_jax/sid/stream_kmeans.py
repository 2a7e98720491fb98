"""Residual k-means that streams items in batches, optionally data-parallel over a mesh.

For catalogs too big for one device array (1M-10M items), `kmeans.residual_kmeans` cannot
hold the points and their residuals at once. Here:

* The points stay on the host (an (N, D) array or a read-only np.memmap); only one batch of
  `batch_size` rows is on the devices at a time. Residuals are never stored: a batch's
  residual at level l is recomputed on device from its points, its codes of levels < l and the
  earlier codebooks. Host memory is the points + (N, M) int32 codes + O(batch).
* With a `mesh` (a 1-D mesh whose axis is named 'data'), each batch is split across devices;
  `lloyd_stats` runs per shard under `jax.shard_map` and the additive statistics (sums,
  counts, squared error) are `psum`-reduced, the farthest points all-gathered and top-k'ed.
  Every device ends with the same statistics, so the result equals the one-device result up
  to float summation order.
* `minibatch=False`: exact Lloyd, one centroid update per pass over all batches; it stops
  when no assignment changes, or when a pass lowered the squared error by less than `tol`
  (relative). `minibatch=True`: Sculley (2010) mini-batch k-means, centroids updated after
  every batch with per-centroid step 1/(points it has seen): c_k is then the running mean of
  every point ever assigned to it. A pass is an epoch over the (seeded, shuffled) batches.
* Empty clusters after a pass are reseeded at the pass's farthest points (the i-th empty
  cluster at the i-th farthest), as in `kmeans.update_centroids`.
* Initialisation: k-means++ on a seeded sample of `init_sample` rows of the residuals.
"""

from __future__ import annotations

import functools
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from neo_jax.catalog import progress as progress_lib
from neo_jax.sid import kmeans as km

DATA_AXIS = 'data'


def _check_mesh(mesh) -> int:
  if mesh is None:
    return 1
  if DATA_AXIS not in mesh.axis_names:
    raise ValueError(f"mesh axes {mesh.axis_names} have no {DATA_AXIS!r} axis to shard "
                     'items over')
  others = [a for a in mesh.axis_names if a != DATA_AXIS and mesh.shape[a] != 1]
  if others:
    raise ValueError(f'k-means shards items over {DATA_AXIS!r} only; axes {others} must have '
                     'size 1')
  return int(mesh.shape[DATA_AXIS])


def _local_stats(x_BxD, codes_BxP, valid_B, cents_KxD, prev_cbs, chunk):
  """Stats of one (shard of a) batch: residual after the earlier levels, then lloyd_stats."""
  r_BxD = x_BxD
  for l, cb in enumerate(prev_cbs):
    r_BxD = r_BxD - cb[codes_BxP[:, l]]
  s = km.lloyd_stats(r_BxD, valid_B, cents_KxD, chunk=chunk)
  return s.assign_B, s.d2_B, s.sums_KxD, s.counts_K, s.sse, s.far_d2_F, s.far_x_FxD


@functools.lru_cache(maxsize=64)
def _stats_fn(mesh, chunk):
  """A jitted (x, codes, valid, cents, prev_cbs) -> stats, sharded over `mesh` if given."""
  if mesh is None:
    return jax.jit(functools.partial(_local_stats, chunk=chunk))

  def sharded(x_BxD, codes_BxP, valid_B, cents_KxD, prev_cbs):
    assign, d2, sums, counts, sse, far_d2, far_x = _local_stats(
        x_BxD, codes_BxP, valid_B, cents_KxD, prev_cbs, chunk)
    sums = jax.lax.psum(sums, DATA_AXIS)
    counts = jax.lax.psum(counts, DATA_AXIS)
    sse = jax.lax.psum(sse, DATA_AXIS)
    # Farthest points: gather every shard's top-F, keep the global top-F.
    all_d2 = jax.lax.all_gather(far_d2, DATA_AXIS, tiled=True)
    all_x = jax.lax.all_gather(far_x, DATA_AXIS, tiled=True)
    top_d2, top_idx = jax.lax.top_k(all_d2, far_d2.shape[0])
    return assign, d2, sums, counts, sse, top_d2, all_x[top_idx]

  data, rep = P(DATA_AXIS), P()
  fn = jax.shard_map(sharded, mesh=mesh, in_specs=(data, data, data, rep, rep),
                     out_specs=(data, data, rep, rep, rep, rep, rep), check_vma=False)
  return jax.jit(fn)


class _Batches:
  """Fixed-size, zero-padded batches of rows of host arrays, placed on the mesh."""

  def __init__(self, x_NxD, batch_size: int, mesh):
    self.x = x_NxD
    self.n, self.d = x_NxD.shape
    ndev = _check_mesh(mesh)
    # Round up to a multiple of the device count and never larger than needed.
    bs = min(int(batch_size), self.n)
    self.bs = -(-bs // ndev) * ndev
    self.num = -(-self.n // self.bs)
    self.mesh = mesh
    self.sharding = NamedSharding(mesh, P(DATA_AXIS)) if mesh is not None else None

  def _put(self, a):
    return jax.device_put(a, self.sharding) if self.sharding is not None else jnp.asarray(a)

  def get(self, b: int, codes_NxP: np.ndarray):
    lo, hi = b * self.bs, min((b + 1) * self.bs, self.n)
    m = hi - lo
    x = np.asarray(self.x[lo:hi], dtype=np.float32)
    if not np.all(np.isfinite(x)):
      bad = lo + int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
      raise ValueError(f'points have non-finite values (first at row {bad})')
    if m < self.bs:
      x = np.concatenate([x, np.zeros((self.bs - m, self.d), np.float32)])
    c = np.zeros((self.bs, codes_NxP.shape[1]), np.int32)
    c[:m] = codes_NxP[lo:hi]
    valid = np.arange(self.bs) < m
    return lo, hi, self._put(x), self._put(c), self._put(valid)


def _merge_far(far_d2, far_x, d2, x, f):
  """Host top-f merge of farthest-point lists (descending by distance)."""
  if far_d2 is None:
    return d2, x
  all_d2 = np.concatenate([far_d2, d2])
  all_x = np.concatenate([far_x, x])
  idx = np.argsort(-all_d2, kind='stable')[:f]
  return all_d2[idx], all_x[idx]


def _key_seed(key) -> int:
  return int(jax.random.randint(key, (), 0, np.iinfo(np.int32).max))


def _residual_rows(x_NxD, rows, codes_NxP, cbs):
  r = np.asarray(x_NxD[rows], np.float32)
  for l, cb in enumerate(cbs):
    r = r - cb[codes_NxP[rows, l]]
  return r


def fit_level(x_NxD, codes_NxP: np.ndarray, prev_cbs: list[np.ndarray], init_KxD: np.ndarray,
              *, iters: int, tol: float = 0.0, batch_size: int = 65536,
              minibatch: bool = False, mesh=None, seed: int = 0, progress: str | None = None,
              log=None):
  """Lloyd or mini-batch k-means on the residuals of one level, streaming the points.

  Args:
    x_NxD: (N, D) host points (np.ndarray or np.memmap).
    codes_NxP: (N, P) int32 codes of the P earlier levels.
    prev_cbs: P codebooks (K_l, D) of the earlier levels.
    init_KxD: (K, D) starting centroids.
    iters: maximum passes over the data (>= 0).
    tol: stop once a pass lowers the squared error by less than this fraction (0: only stop
      when no assignment changes).
    batch_size: rows on the devices at a time (rounded up to a multiple of the device count).
    minibatch: mini-batch updates (see the module docstring) instead of one update per pass.
    mesh: optional mesh with a 'data' axis to shard each batch over.
    seed: shuffles the batch order of each mini-batch epoch.
    progress: label of the progress lines (`neo_jax.catalog.progress`: passes done out of
      `iters`, with the last pass's mse and changed assignments; the ETA is for all `iters`
      passes, an early stop ends sooner), or None for none.
    log: where the progress lines go (None: stderr).

  Returns:
    KMeansResult (codes, squared distances and counts for the final centroids).
  """
  if iters < 0:
    raise ValueError(f'iters must be >= 0, got {iters}')
  if tol < 0:
    raise ValueError(f'tol must be >= 0, got {tol}')
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  n, _ = x_NxD.shape
  cents = np.asarray(init_KxD, np.float32).copy()
  k = cents.shape[0]
  batches = _Batches(x_NxD, batch_size, mesh)
  chunk = km._chunk_for(batches.bs // _check_mesh(mesh), k)  # pylint: disable=protected-access
  step = _stats_fn(mesh, chunk)
  cbs_dev = tuple(jnp.asarray(cb) for cb in prev_cbs)
  rng = np.random.default_rng(seed)
  prev_assign = np.full(n, -1, np.int32)
  seen_K = np.zeros(k, np.float64)
  prev_sse = None
  iterations = reseeded = 0
  meter = progress_lib.Progress(progress or '', iters, unit='passes', log=log,
                                on=None if progress else False)
  note = ''

  for _ in range(iters):
    order = rng.permutation(batches.num) if minibatch else np.arange(batches.num)
    sums = np.zeros((k, cents.shape[1]), np.float64)
    counts = np.zeros(k, np.int64)
    sse, changed, far_d2, far_x = 0.0, 0, None, None
    for b in order:
      lo, hi, xb, cb, vb = batches.get(int(b), codes_NxP)
      assign, _, s_sums, s_counts, s_sse, f_d2, f_x = step(xb, cb, vb, jnp.asarray(cents),
                                                            cbs_dev)
      assign = np.asarray(assign)[:hi - lo]
      changed += int(np.sum(assign != prev_assign[lo:hi]))
      prev_assign[lo:hi] = assign
      s_sums, s_counts = np.asarray(s_sums, np.float64), np.asarray(s_counts)
      sse += float(s_sse)
      counts += s_counts
      far_d2, far_x = _merge_far(far_d2, far_x, np.asarray(f_d2), np.asarray(f_x), k)
      if minibatch:
        seen_K += s_counts
        step_K = np.where(seen_K > 0, s_counts / np.maximum(seen_K, 1), 0.0)
        means = s_sums / np.maximum(s_counts, 1)[:, None]
        cents = (cents + step_K[:, None] * (means - cents)).astype(np.float32)
      else:
        sums += s_sums
      meter.update(1 / batches.num, note)
    note = f'mse {sse / n:.5f}, {changed:,} changed'
    if changed == 0:  # the centroids are a fixed point: nothing left to update
      break
    empty = np.flatnonzero(counts == 0)
    if not minibatch:
      cents = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
    if empty.size:
      # Reseed the i-th empty cluster at the i-th farthest point of this pass.
      take = np.minimum(np.arange(empty.size), far_x.shape[0] - 1)
      cents[empty] = far_x[take]
      seen_K[empty] = 0
      reseeded += int(empty.size)
    iterations += 1
    if tol > 0 and prev_sse is not None and prev_sse - sse <= tol * prev_sse:
      break
    prev_sse = sse

  # Final assignment to the returned centroids.
  codes = np.empty(n, np.int32)
  d2 = np.empty(n, np.float32)
  counts = np.zeros(k, np.int64)
  for b in range(batches.num):
    lo, hi, xb, cb, vb = batches.get(b, codes_NxP)
    assign, d2b, _, s_counts, _, _, _ = step(xb, cb, vb, jnp.asarray(cents), cbs_dev)
    codes[lo:hi] = np.asarray(assign)[:hi - lo]
    d2[lo:hi] = np.asarray(d2b)[:hi - lo]
    counts += np.asarray(s_counts)
  meter.close(f'{iterations} passes, mse {float(np.mean(d2)):.5f}')
  return km.KMeansResult(centroids=cents, codes=codes, sq_dist=d2,
                         counts=counts.astype(np.int32), iterations=iterations,
                         reseeded=reseeded)


def residual_kmeans_streaming(x_NxD, level_ks: tuple[int, ...], *, seed: int = 0,
                              key: jax.Array | None = None, iters: int = 50, tol: float = 0.0,
                              batch_size: int = 65536, minibatch: bool = False, mesh=None,
                              init_sample: int = 65536, progress: bool = True, log=None
                              ) -> tuple[np.ndarray, list[np.ndarray], dict]:
  """Residual k-means over streamed batches; same outputs as `kmeans.residual_kmeans`.

  Args:
    x_NxD: (N, D) floating host array or np.memmap (not copied; read batch by batch).
    level_ks: requested K per level (clamped to N).
    seed, key: level l uses `fold_in(key or PRNGKey(seed), l)` for its k-means++ sample and
      seeding and for the mini-batch order.
    iters, tol, batch_size, minibatch, mesh: see `fit_level`.
    init_sample: rows of the residuals that k-means++ seeds from (>= K is used).
    progress: print per-level progress lines (see `fit_level`); False: none.
    log: where they go (None: stderr).

  Returns:
    (codes_NxM, codebooks, info) as in `kmeans.residual_kmeans`.
  """
  t0 = time.perf_counter()
  if getattr(x_NxD, 'ndim', None) != 2 or x_NxD.shape[0] == 0 or x_NxD.shape[1] == 0:
    raise ValueError(f'x_NxD must be a non-empty 2-D array, got shape '
                     f'{getattr(x_NxD, "shape", None)}')
  if not np.issubdtype(x_NxD.dtype, np.floating):
    raise ValueError(f'x_NxD must be floating point, got dtype {x_NxD.dtype}')
  level_ks = tuple(int(k) for k in level_ks)
  if not level_ks or any(k < 1 for k in level_ks):
    raise ValueError(f'level_ks must be a non-empty tuple of positive ints, got {level_ks}')
  if init_sample < 1:
    raise ValueError(f'init_sample must be >= 1, got {init_sample}')
  n = x_NxD.shape[0]
  base = jax.random.PRNGKey(seed) if key is None else key
  codes = np.zeros((n, len(level_ks)), np.int32)
  codebooks: list[np.ndarray] = []
  info: dict = {}
  # Mean squared norm of the input, streamed.
  sq = 0.0
  for lo in range(0, n, batch_size):
    sq += float(np.sum(np.square(np.asarray(x_NxD[lo:lo + batch_size], np.float64))))
  info['mse_input'] = sq / n
  clamped = 0
  for level, k_req in enumerate(level_ks):
    k = min(k_req, n)
    clamped += k < k_req
    lkey = jax.random.fold_in(base, level)
    lseed = _key_seed(lkey)
    m = min(n, max(init_sample, k))
    rows = np.sort(np.random.default_rng(lseed).choice(n, m, replace=False))
    sample = _residual_rows(x_NxD, rows, codes, codebooks)
    init = km.kmeans_plusplus(sample, k, lkey)
    res = fit_level(x_NxD, codes[:, :level], codebooks, init, iters=iters, tol=tol,
                    batch_size=batch_size, minibatch=minibatch, mesh=mesh, seed=lseed,
                    progress=f'k-means level {level} (K={k})' if progress else None,
                    log=log)
    codes[:, level] = res.codes
    codebooks.append(res.centroids)
    info[f'k_requested_l{level}'] = k_req
    info[f'k_l{level}'] = k
    info[f'mse_l{level}'] = float(np.mean(res.sq_dist.astype(np.float64)))
    p = res.counts[res.counts > 0].astype(np.float64) / n
    info[f'utilisation_l{level}'] = float(np.exp(-np.sum(p * np.log(p)))) / k
    info[f'iterations_l{level}'] = res.iterations
    info[f'reseeded_l{level}'] = res.reseeded
    logging.info('streaming k-means level %d: K=%d, %d passes, mse %.5f', level, k,
                 res.iterations, info[f'mse_l{level}'])
  info['k_clamped'] = int(clamped)
  info['seconds'] = time.perf_counter() - t0
  return codes, codebooks, info


def data_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh named 'data' over `devices` (default: all)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.sharding.Mesh(np.array(devices), (DATA_AXIS,))


__all__ = ['DATA_AXIS', 'data_mesh', 'fit_level', 'residual_kmeans_streaming']
