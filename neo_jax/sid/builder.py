"""Builds, validates, saves and loads the SID map.

One residual k-means quantiser per entity type (a shared one hurt badly in the paper). Items
of a type whose k-means codes coincide form a collision group; the policy decides what the
group becomes:

* 'disambiguate' (default): one extra level is appended whose code is the item's rank in its
  group (most popular first when a popularity is known, else catalog row order). Its size is
  the largest group of that type (at least 1), so every item is reachable and unique.
* 'popular': only the most popular item of a group keeps its codes (ties: lowest catalog
  row); the others get codes -1 and are unreachable.

Methods (`method=`): 'rkmeans' (default) quantises the embeddings; the two ablations of the
paper ignore them: 'random' draws distinct random codes with the level sizes residual k-means
would have had (seeded), 'atomic' gives every item one code, its rank within its type (a
single level of size N_t per type, no collisions).

Per-type depth: `levels` may be a dict type -> M_t. Every type still has the same number of
levels (decoding has static shapes): a type with M_t < max M gets levels of size 1 (code 0)
after its k-means levels, before the disambiguation level.

On disk a map is a directory holding `sid_map.npz` (arrays) and `sid_map.json` (manifest with
a checksum of the codes), each written atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import tempfile
import time
import zipfile
from typing import Any, Mapping, Sequence, Union

import jax
import numpy as np

from neo_jax.catalog import atomic
from neo_jax.catalog.types import Catalog
from neo_jax.sid.kmeans import residual_kmeans
from neo_jax.sid.stream_kmeans import residual_kmeans_streaming
from neo_jax.sid.types import SIDMap

COLLISION_POLICIES = ('disambiguate', 'popular')
METHODS = ('rkmeans', 'random', 'atomic')
NPZ_NAME = 'sid_map.npz'
MANIFEST_NAME = 'sid_map.json'
FORMAT = 'neo_jax.sid_map'
FORMAT_VERSION = 1

KSpec = Union[int, Sequence[int], Mapping[str, Union[int, Sequence[int]]]]


def _levels_per_type(levels, type_names: tuple[str, ...]) -> dict[str, int]:
  def ok(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1

  if isinstance(levels, Mapping):
    unknown = sorted(set(levels) - set(type_names))
    missing = [t for t in type_names if t not in levels]
    if unknown or missing:
      raise ValueError(f'levels dict must cover exactly the entity types {type_names}; '
                       f'unknown {unknown}, missing {missing}')
    bad = {t: v for t, v in levels.items() if not ok(v)}
    if bad:
      raise ValueError(f'levels must be positive ints, got {bad}')
    return {t: int(levels[t]) for t in type_names}
  if not ok(levels):
    raise ValueError(f'levels must be a positive int or a dict type -> int, got {levels!r}')
  return {t: int(levels) for t in type_names}


def _level_ks(k: KSpec, type_names: tuple[str, ...], levels) -> dict[str, tuple[int, ...]]:
  """Requested K per type per k-means level from an int, a per-level tuple, or a dict;
  `levels` is an int or a dict type -> number of levels."""
  lv = _levels_per_type(levels, type_names)

  def one(spec, what, levels):
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
      ks = (int(spec),) * levels
    elif isinstance(spec, (tuple, list)):
      ks = tuple(spec)
      if len(ks) != levels:
        raise ValueError(f'{what}: {len(ks)} per-level sizes {ks} for levels={levels}')
      if not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in ks):
        raise ValueError(f'{what}: per-level sizes must be ints, got {ks}')
      ks = tuple(int(x) for x in ks)
    else:
      raise ValueError(f'{what}: expected an int or a tuple of {levels} ints, got {spec!r}')
    if any(x < 1 for x in ks):
      raise ValueError(f'{what}: every K must be >= 1, got {ks}')
    return ks

  if isinstance(k, Mapping):
    unknown = sorted(set(k) - set(type_names))
    if unknown:
      raise ValueError(f'k has entries for unknown entity types {unknown}; known: {type_names}')
    missing = [t for t in type_names if t not in k]
    if missing:
      raise ValueError(f'k has no entry for entity types {missing}')
    return {t: one(k[t], f'k[{t!r}]', lv[t]) for t in type_names}
  if isinstance(k, (tuple, list)) and len(set(lv.values())) > 1:
    raise ValueError('a per-level k tuple needs the same number of levels for every type; '
                     'give k as a dict per type')
  return {t: one(k, 'k', lv[t]) for t in type_names}


def grown_k(catalog: Catalog, k: int, levels, codes_per_item: float) -> dict[str, int]:
  """K per entity type, grown with the type's size: the smallest K >= `k` with
  K ** levels >= codes_per_item x (items of the type), so that a larger catalog keeps about as
  few items sharing a full code (which the disambiguation level then tells apart by rank)
  instead of piling them onto a codebook sized for a small one. `codes_per_item` 0 gives `k`
  for every type. `levels`: an int or a dict type -> int, as in `build_sid_map`."""
  if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
    raise ValueError(f'k must be a positive int to grow it per type, got {k!r}')
  if codes_per_item < 0:
    raise ValueError(f'codes_per_item must be >= 0, got {codes_per_item}')
  names = tuple(catalog.type_names)
  lv = _levels_per_type(levels, names)
  counts = np.bincount(np.asarray(catalog.type_index), minlength=len(names))
  out = {}
  for t, name in enumerate(names):
    want, kt = codes_per_item * int(counts[t]), int(k)
    while kt ** lv[name] < want:  # integer powers: no rounding at the boundary
      kt += 1
    out[name] = kt
  return out


def _random_codes(n: int, sizes: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
  """(n, len(sizes)) int32 codes, distinct whenever prod(sizes) >= n, else uniform."""
  total = int(np.prod(np.asarray(sizes, dtype=object)))
  if total >= n and total < 2**62:
    flat = rng.choice(total, n, replace=False)
  else:
    flat = None
  codes = np.empty((n, len(sizes)), np.int32)
  for l in reversed(range(len(sizes))):
    if flat is None:
      codes[:, l] = rng.integers(0, sizes[l], n)
    else:
      codes[:, l] = flat % sizes[l]
      flat = flat // sizes[l]
  return codes


def _perplexity_ratio(codes: np.ndarray, k: int) -> float:
  p = np.bincount(codes, minlength=k).astype(np.float64) / codes.shape[0]
  p = p[p > 0]
  return float(np.exp(-np.sum(p * np.log(p)))) / k


def _resolve_popularity(catalog: Catalog, popularity, required: bool
                        ) -> tuple[np.ndarray | None, str]:
  n = len(catalog)
  if popularity is not None:
    pop = np.asarray(popularity, np.float64)
    if pop.shape != (n,):
      raise ValueError(f'popularity must have shape ({n},), got {pop.shape}')
    if not np.all(np.isfinite(pop)):
      raise ValueError(f'popularity has {int(np.sum(~np.isfinite(pop)))} non-finite entries')
    return pop, 'argument'
  pop = np.asarray(catalog.popularity, np.float64)
  if pop.shape == (n,) and np.all(np.isfinite(pop)):
    return pop, 'catalog'
  if required:
    raise ValueError("collision='popular' needs a popularity for every item: the catalog's "
                     f'is missing for {int(np.sum(~np.isfinite(pop)))} of {n} items; pass '
                     'popularity= (e.g. Dataset.item_counts())')
  return None, 'row_order'


@dataclasses.dataclass(frozen=True)
class _KMeans:
  """How the 'rkmeans' method runs k-means: one in-memory Lloyd per level, or streamed in
  batches of `batch_size` (mini-batch updates if `minibatch`, sharded over `mesh`) when any
  of the three is set."""
  iters: int
  tol: float
  batch_size: int | None
  minibatch: bool
  mesh: Any

  @property
  def streaming(self) -> bool:
    return self.batch_size is not None or self.minibatch or self.mesh is not None

  def fit(self, emb_NxD: np.ndarray, rows: np.ndarray, ks: tuple[int, ...], key: jax.Array
          ) -> tuple[np.ndarray, list[np.ndarray], dict]:
    """(len(rows), len(ks)) int32 codes of the rows `rows` of `emb_NxD`, the codebooks
    (one (K_l, D) array per level) and the k-means report (k_l{l}, mse_input, mse_l{l},
    iterations_l{l}, k_clamped)."""
    if self.streaming:
      x_t = emb_NxD[rows] if rows.size < emb_NxD.shape[0] else emb_NxD  # one type: no copy
      return residual_kmeans_streaming(
          x_t, ks, key=key, iters=self.iters, tol=self.tol,
          batch_size=self.batch_size or 65536, minibatch=self.minibatch, mesh=self.mesh)
    return residual_kmeans(emb_NxD[rows], ks, iters=self.iters, key=key, tol=self.tol)


def _checked_embeddings(emb_NxD, n: int, streaming: bool) -> np.ndarray:
  """The (n, D) embeddings as a numpy array: float32 when k-means runs in memory; a streamed
  array (e.g. a memmap) is left as it is and not scanned here."""
  emb = emb_NxD if isinstance(emb_NxD, np.ndarray) else np.asarray(emb_NxD)
  if emb.ndim != 2 or emb.shape[0] != n:
    raise ValueError(f'embeddings must have shape ({n}, D) for {n} catalog items, '
                     f'got {emb.shape}')
  if not np.issubdtype(emb.dtype, np.floating):
    raise ValueError(f'embeddings must be floating point, got dtype {emb.dtype}')
  if not streaming:
    if not np.all(np.isfinite(emb)):
      raise ValueError('embeddings must be finite floating-point values')
    emb = emb.astype(np.float32)
  return emb


def _type_codes(method: str, kmeans: _KMeans, emb_NxD: np.ndarray, rows: np.ndarray,
                ks: tuple[int, ...], m_t: int, kmeans_levels: int, key: jax.Array,
                rng_seed: list[int]
                ) -> tuple[np.ndarray, tuple[int, ...], dict, tuple[np.ndarray, ...] | None]:
  """(kcodes, sizes, info, codebooks) of one type's items `rows`: (R, kmeans_levels) int32
  codes (one column for 'atomic'), the size of each of those levels, the quantiser's report
  and the type's m_t codebooks ('rkmeans'; None for the ablations). A type with m_t <
  kmeans_levels levels gets size-1 filler levels (code 0) after its own."""
  info: dict = {}
  codebooks = None
  if method == 'atomic':
    return np.arange(rows.size, dtype=np.int32)[:, None], (int(rows.size),), info, None
  if method == 'random':
    sizes = tuple(min(kk, rows.size) for kk in ks)
    info['k_clamped'] = sum(kk > rows.size for kk in ks)
    kcodes = _random_codes(rows.size, sizes, np.random.default_rng(rng_seed))
  else:
    kcodes, cbs, info = kmeans.fit(emb_NxD, rows, ks, key)
    codebooks = tuple(np.asarray(cb, np.float32) for cb in cbs)
    sizes = tuple(info[f'k_l{l}'] for l in range(m_t))
  if m_t < kmeans_levels:
    # Shallower type: size-1 filler levels keep every type at the same depth.
    kcodes = np.concatenate([kcodes, np.zeros((rows.size, kmeans_levels - m_t), np.int32)],
                            axis=1)
    sizes = sizes + (1,) * (kmeans_levels - m_t)
  return kcodes, sizes, info, codebooks


@dataclasses.dataclass(frozen=True)
class _Groups:
  """One type's groups of identical k-means codes."""
  rank: np.ndarray  # (R,) int64: rank in the group, most popular (then lowest row) first
  colliding: int  # items in a group of two or more
  colliding_groups: int
  max_group: int


def _collision_groups(kcodes_RxL: np.ndarray, rows: np.ndarray, pop: np.ndarray | None
                      ) -> _Groups:
  _, group, group_size = np.unique(kcodes_RxL, axis=0, return_inverse=True, return_counts=True)
  group = group.reshape(-1)
  neg_pop = -pop[rows] if pop is not None else np.zeros(rows.size)
  order = np.lexsort((rows, neg_pop, group))
  starts = np.concatenate([[0], np.cumsum(group_size)[:-1]])
  rank = np.empty(rows.size, np.int64)
  rank[order] = np.arange(rows.size) - starts[group[order]]
  return _Groups(rank=rank, colliding=int(np.sum(group_size[group] > 1)),
                 colliding_groups=int(np.sum(group_size > 1)), max_group=int(group_size.max()))


def _assign_codes(codes_NxL: np.ndarray, rows: np.ndarray, kcodes: np.ndarray,
                  sizes: tuple[int, ...], groups: _Groups, method: str, collision: str
                  ) -> tuple[tuple[int, ...], int]:
  """Writes one type's final codes into `codes_NxL` by the collision policy; returns the
  type's level sizes (with the disambiguation level) and its number of unreachable items."""
  if method == 'atomic':
    codes_NxL[rows] = kcodes
    return sizes, 0
  if collision == 'disambiguate':
    kmeans_levels = kcodes.shape[1]
    codes_NxL[rows, :kmeans_levels] = kcodes
    codes_NxL[rows, kmeans_levels] = groups.rank
    return sizes + (groups.max_group,), 0
  keep = groups.rank == 0
  codes_NxL[rows[keep], :] = kcodes[keep]
  return sizes, int(np.sum(~keep))


class _Means:
  """Item-weighted means of a figure over the types that have it."""

  def __init__(self):
    self.sums: dict[str, list[float]] = {}  # key -> [weighted sum, weight]

  def add(self, key: str, value: float, weight: int) -> None:
    acc = self.sums.setdefault(key, [0.0, 0.0])
    acc[0] += value * weight
    acc[1] += weight

  def means(self) -> dict[str, float]:
    return {key: num / den for key, (num, den) in self.sums.items()}


def _type_report(t: str, kcodes: np.ndarray, sizes: tuple[int, ...], groups: _Groups,
                 unreachable: int, levels: int, info: dict, means: _Means
                 ) -> dict[str, float]:
  """The '{t}/...' figures of one type but its seconds (see build_sid_map), adding its
  item-weighted ones to `means`; `levels`: its quantised levels (1 for 'atomic')."""
  n_t = int(kcodes.shape[0])
  report = {
      f'{t}/num_items': n_t,
      f'{t}/collision_rate': groups.colliding / n_t,
      f'{t}/colliding_groups': groups.colliding_groups,
      f'{t}/max_group': groups.max_group,
      f'{t}/unreachable_items': unreachable,
      f'{t}/kmeans_levels': levels,
      f'{t}/k_clamped': int(info.get('k_clamped', 0)),
  }
  if 'mse_input' in info:
    report[f'{t}/mse_input'] = info['mse_input']
    means.add('mse_input', info['mse_input'], n_t)
  for l in range(levels):
    report[f'{t}/k_l{l}'] = int(sizes[l])
    report[f'{t}/utilisation_l{l}'] = _perplexity_ratio(kcodes[:, l], int(sizes[l]))
    means.add(f'utilisation_l{l}', report[f'{t}/utilisation_l{l}'], n_t)
    if f'mse_l{l}' in info:
      report[f'{t}/mse_l{l}'] = info[f'mse_l{l}']
      report[f'{t}/iterations_l{l}'] = info[f'iterations_l{l}']
      means.add(f'mse_l{l}', info[f'mse_l{l}'], n_t)
  return report


def build_sid_map(catalog: Catalog, embeddings_NxD, *, levels=3, k: KSpec = 256,
                  collision: str = 'disambiguate', popularity=None, seed: int = 0,
                  iters: int = 50, encoder_name: str | None = None, method: str = 'rkmeans',
                  tol: float = 0.0, batch_size: int | None = None, minibatch: bool = False,
                  mesh=None) -> tuple[SIDMap, dict[str, float]]:
  """Quantises each entity type's item embeddings into SIDs.

  Args:
    catalog: the N items.
    embeddings_NxD: (N, D) float item embeddings, row n = item n.
    levels: number of residual k-means levels (the 'disambiguate' policy adds one more): an
      int, or a dict type name -> int (per-type depth, see the module docstring).
    k: K per level: an int (all types, all levels), a tuple of `levels` ints (all types), or a
      dict type name -> int or tuple covering every type. A K larger than the number of items
      of a type is clamped to that number (reported as '{type}/k_clamped').
    collision: 'disambiguate' or 'popular' (see the module docstring).
    popularity: (N,) popularity per item; default the catalog's when it has one for every
      item. Required (here or in the catalog) by 'popular'; orders ranks for 'disambiguate'.
    seed: k-means seed; type t uses `fold_in(PRNGKey(seed), t)`.
    iters: maximum Lloyd passes (epochs when mini-batch) per level.
    encoder_name: recorded in the map's meta (which encoder produced the embeddings).
    method: 'rkmeans', or the ablations 'random' and 'atomic' (module docstring).
    tol: stop a level once a pass lowers its squared error by less than this fraction.
    batch_size, minibatch, mesh: when any is set, k-means streams the items in batches of
      `batch_size` (default 65536), with mini-batch updates if `minibatch`, sharded over the
      'data' axis of `mesh` if given (`stream_kmeans`); else one in-memory Lloyd per level.

  Returns:
    (sid_map, report): the map carries its codebooks ('rkmeans': `SIDMap.codebooks`, what
    `sid.quantiser.freeze` keeps to place new items); the report is a flat dict of numbers,
    overall and per type
    ('{type}/...'): num_items, collision_rate (share of items whose k-means codes equal
    another item's), colliding_groups, max_group, unreachable_items, k_l{l} (effective K),
    k_clamped, utilisation_l{l} (perplexity of code usage / K), mse_input and mse_l{l}
    (mean squared residual norm before / after level l; rkmeans only), seconds.
  """
  t_start = time.perf_counter()
  if collision not in COLLISION_POLICIES:
    raise ValueError(f'unknown collision policy {collision!r}; known: {COLLISION_POLICIES}')
  if method not in METHODS:
    raise ValueError(f'unknown SID method {method!r}; known: {METHODS}')
  n = len(catalog)
  kmeans = _KMeans(iters=iters, tol=tol, batch_size=batch_size, minibatch=minibatch, mesh=mesh)
  emb = _checked_embeddings(embeddings_NxD, n, kmeans.streaming)
  type_names = tuple(catalog.type_names)
  type_index = np.asarray(catalog.type_index, np.int32)
  lv = _levels_per_type(levels, type_names)
  ks = _level_ks(k, type_names, levels)
  kmeans_levels = max(lv.values())
  pop, pop_source = _resolve_popularity(catalog, popularity, required=collision == 'popular')

  if method == 'atomic':
    num_levels = 1
  else:
    num_levels = kmeans_levels + (1 if collision == 'disambiguate' else 0)
  codes_NxL = np.full((n, num_levels), -1, np.int32)
  level_sizes: dict[str, tuple[int, ...]] = {}
  report: dict[str, float] = {}
  colliding = unreachable = 0
  means = _Means()
  codebooks: dict[str, tuple[np.ndarray, ...] | None] = {}
  base_key = jax.random.PRNGKey(seed)
  for ti, t in enumerate(type_names):
    t0 = time.perf_counter()
    rows = np.flatnonzero(type_index == ti)
    if rows.size == 0:
      raise ValueError(f'entity type {t!r} has no items; the catalog is inconsistent')
    kcodes, sizes, info, codebooks[t] = _type_codes(
        method, kmeans, emb, rows, ks[t], lv[t], kmeans_levels,
        jax.random.fold_in(base_key, ti), [int(seed), ti, 0x5EED])
    groups = _collision_groups(kcodes, rows, pop)
    level_sizes[t], unreachable_t = _assign_codes(codes_NxL, rows, kcodes, sizes, groups,
                                                  method, collision)
    seconds = time.perf_counter() - t0
    report.update(_type_report(t, kcodes, level_sizes[t], groups, unreachable_t,
                               1 if method == 'atomic' else lv[t], info, means))
    report[f'{t}/seconds'] = seconds
    colliding += groups.colliding
    unreachable += unreachable_t
    logging.info('SIDs (%s) for %s: %d items, K=%s, collision rate %.4f, %.1fs', method, t,
                 rows.size, level_sizes[t], groups.colliding / rows.size, seconds)

  report['num_items'] = n
  report['num_types'] = len(type_names)
  report['num_levels'] = num_levels
  report['collision_rate'] = colliding / n
  report['unreachable_items'] = unreachable
  report.update(means.means())
  report['seconds'] = time.perf_counter() - t_start

  meta = {
      'method': method,
      'kmeans_levels': int(kmeans_levels),
      'levels_per_type': lv,
      'num_levels': num_levels,
      'k_requested': {t: list(ks[t]) for t in type_names},
      'seed': int(seed),
      'iters': int(iters),
      'tol': float(tol),
      'minibatch': bool(minibatch),
      'collision': collision,
      'popularity_source': pop_source,
      'encoder': encoder_name,
      'embedding_dim': int(emb.shape[1]),
  }
  sid_map = SIDMap(type_names=type_names, level_sizes=level_sizes, codes=codes_NxL,
                   type_index=type_index.copy(), meta=meta,
                   codebooks=codebooks if method == 'rkmeans' else None)
  validate_sid_map(sid_map)
  return sid_map, report


def validate_sid_map(sid_map: SIDMap) -> None:
  """Raises ValueError unless the map satisfies the SIDMap contract: every type has level
  sizes of the same length L >= 1, all >= 1; codes is (N, L) int32; a row is either all -1
  (unreachable) or has each code within its level's size; reachable SIDs are unique per type.
  """
  codes, type_index = sid_map.codes, sid_map.type_index
  names = tuple(sid_map.type_names)
  if codes.ndim != 2 or codes.shape[1] < 1:
    raise ValueError(f'codes must be (N, L) with L >= 1, got shape {codes.shape}')
  if codes.dtype != np.int32:
    raise ValueError(f'codes must be int32, got {codes.dtype}')
  n, num_levels = codes.shape
  if type_index.shape != (n,):
    raise ValueError(f'type_index must have shape ({n},), got {type_index.shape}')
  if n and (type_index.min() < 0 or type_index.max() >= len(names)):
    raise ValueError(f'type_index values must lie in [0, {len(names)})')
  if set(sid_map.level_sizes) != set(names):
    raise ValueError(f'level_sizes types {sorted(sid_map.level_sizes)} != type_names {names}')
  for t in names:
    sizes = np.asarray(sid_map.level_sizes[t], np.int64)
    if sizes.shape != (num_levels,) or np.any(sizes < 1):
      raise ValueError(f'level sizes of {t!r} must be {num_levels} ints >= 1, got '
                       f'{tuple(sid_map.level_sizes[t])}')
  for ti, t in enumerate(names):
    sizes = np.asarray(sid_map.level_sizes[t], np.int64)
    c = codes[type_index == ti]
    reach = c[:, 0] >= 0
    if np.any(c[~reach] != -1):
      raise ValueError(f'{t!r}: a row with code -1 at level 0 must be -1 at every level')
    cr = c[reach]
    bad = (cr < 0) | (cr >= sizes[None, :])
    if np.any(bad):
      row, level = np.argwhere(bad)[0]
      raise ValueError(f'{t!r}: code {int(cr[row, level])} at level {int(level)} outside '
                       f'[0, {int(sizes[level])})')
    if cr.shape[0] and np.unique(cr, axis=0).shape[0] != cr.shape[0]:
      raise ValueError(f'{t!r}: two reachable items share an SID')


def array_sha256(arr: np.ndarray) -> str:
  """Checksum of an array's dtype, shape and bytes (what manifests record)."""
  return _sha256(arr)


def _sha256(arr: np.ndarray) -> str:
  h = hashlib.sha256()
  h.update(f'{arr.dtype.str}{arr.shape}'.encode())
  h.update(np.ascontiguousarray(arr).tobytes())
  return h.hexdigest()


def atomic_write(path: str, write_fn, mode: str) -> None:
  """Writes `path` through `write_fn(file)` into a temporary sibling, fsynced, then renamed
  over `path`: a reader sees the old file or the whole new one, never a part."""
  _atomic_write(path, write_fn, mode)


def _atomic_write(path: str, write_fn, mode: str) -> None:
  if atomic.is_remote(path):  # one object write of what write_fn wrote to memory
    buf = io.BytesIO() if 'b' in mode else io.StringIO()
    write_fn(buf)
    data = buf.getvalue()
    atomic.write_bytes(path, data if 'b' in mode else data.encode('utf-8'))
    return
  directory = os.path.dirname(path) or '.'
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path), suffix='.tmp')
  try:
    with os.fdopen(fd, mode) as f:
      write_fn(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def save_sid_map(sid_map: SIDMap, directory: str | os.PathLike) -> None:
  """Writes `sid_map.npz` and `sid_map.json` under `directory` (created if needed), each via
  a temp file + os.replace. The map is validated first; `meta` must be JSON-serialisable."""
  validate_sid_map(sid_map)
  directory = os.fspath(directory)
  atomic.as_path(directory).mkdir(parents=True, exist_ok=True)
  names = tuple(sid_map.type_names)
  codes = np.asarray(sid_map.codes, np.int32)
  type_index = np.asarray(sid_map.type_index, np.int32)
  sizes_TxL = np.array([sid_map.level_sizes[t] for t in names], np.int32)
  manifest = {
      'format': FORMAT,
      'version': FORMAT_VERSION,
      'num_items': int(codes.shape[0]),
      'num_levels': int(codes.shape[1]),
      'type_names': list(names),
      'level_sizes': {t: [int(x) for x in sid_map.level_sizes[t]] for t in names},
      'items_per_type': {t: int(np.sum(type_index == ti)) for ti, t in enumerate(names)},
      'reachable_items': int(np.sum(codes[:, 0] >= 0)),
      'seed': sid_map.meta.get('seed'),
      'encoder': sid_map.meta.get('encoder'),
      'codes_sha256': _sha256(codes),
      'type_index_sha256': _sha256(type_index),
      'meta': sid_map.meta,
  }
  try:
    text = json.dumps(manifest, indent=2, sort_keys=True)
  except TypeError as e:
    raise ValueError(f'SIDMap.meta must be JSON-serialisable: {e}') from e
  _atomic_write(os.path.join(directory, NPZ_NAME),
                lambda f: np.savez(f, codes=codes, type_index=type_index, level_sizes=sizes_TxL,
                                   type_names=np.array(names, dtype=str)), 'wb')
  _atomic_write(os.path.join(directory, MANIFEST_NAME), lambda f: f.write(text + '\n'), 'w')


def load_sid_map(directory: str | os.PathLike) -> SIDMap:
  """Reads a map written by `save_sid_map`, checking it against its manifest and contract."""
  directory = os.fspath(directory)
  mpath = os.path.join(directory, MANIFEST_NAME)
  apath = os.path.join(directory, NPZ_NAME)
  for p in (mpath, apath):
    if not atomic.as_path(p).exists():
      raise FileNotFoundError(f'{p}: missing (not a saved SID map directory?)')
  try:
    with atomic.open_text(mpath) as f:
      manifest = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{mpath}: not valid JSON ({e})') from e
  if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
    raise ValueError(f'{mpath}: not an SID map manifest (format != {FORMAT!r})')
  if manifest.get('version') != FORMAT_VERSION:
    raise ValueError(f'{mpath}: unsupported version {manifest.get("version")!r}, '
                     f'expected {FORMAT_VERSION}')
  required = ('num_items', 'num_levels', 'type_names', 'level_sizes', 'codes_sha256',
              'type_index_sha256', 'meta')
  missing = [key for key in required if key not in manifest]
  if missing:
    raise ValueError(f'{mpath}: manifest lacks fields {missing}')
  try:
    with np.load(atomic.for_reading(apath), allow_pickle=False) as z:
      arrays = {key: z[key] for key in z.files}
  except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f'{apath}: unreadable ({e})') from e
  for key in ('codes', 'type_index', 'level_sizes', 'type_names'):
    if key not in arrays:
      raise ValueError(f'{apath}: missing array {key!r}')
  codes, type_index = arrays['codes'], arrays['type_index']
  names = tuple(str(x) for x in arrays['type_names'].tolist())
  n, num_levels = manifest['num_items'], manifest['num_levels']
  if codes.shape != (n, num_levels) or codes.dtype != np.int32:
    raise ValueError(f'{apath}: codes are {codes.dtype}{codes.shape}, manifest says '
                     f'int32({n}, {num_levels})')
  if type_index.shape != (n,) or type_index.dtype != np.int32:
    raise ValueError(f'{apath}: type_index is {type_index.dtype}{type_index.shape}, '
                     f'expected int32({n},)')
  if list(names) != list(manifest['type_names']):
    raise ValueError(f'{apath}: type names {names} != manifest {manifest["type_names"]}')
  sizes_TxL = arrays['level_sizes']
  level_sizes = {t: tuple(int(x) for x in manifest['level_sizes'].get(t, ())) for t in names}
  if sizes_TxL.shape != (len(names), num_levels) or any(
      tuple(int(x) for x in sizes_TxL[ti]) != level_sizes[t] for ti, t in enumerate(names)):
    raise ValueError(f'{apath}: level sizes {sizes_TxL.tolist()} disagree with the manifest '
                     f'{manifest["level_sizes"]}')
  if _sha256(codes) != manifest['codes_sha256']:
    raise ValueError(f'{apath}: codes checksum mismatch (file corrupted or not the one the '
                     'manifest describes)')
  if _sha256(type_index) != manifest['type_index_sha256']:
    raise ValueError(f'{apath}: type_index checksum mismatch')
  sid_map = SIDMap(type_names=names, level_sizes=level_sizes, codes=codes,
                   type_index=type_index, meta=dict(manifest['meta']))
  try:
    validate_sid_map(sid_map)
  except ValueError as e:
    raise ValueError(f'{directory}: invalid SID map: {e}') from e
  return sid_map
