"""Bitmap trie of the valid SIDs, as a pytree of jnp arrays usable inside jitted decoding.

Layout. An SID of type t is the path root_t -> c_0 -> c_1 -> ... -> c_{L-1} -> leaf. Level l
holds the nodes whose children are level-l codes: level 0 has one root per entity type (node t
is the root of type t, even when the type has no items), level l >= 1 has one node per distinct
(type, c_0..c_{l-1}) prefix, and the children of the last level are leaves, one per catalog item.
Only occupied nodes are stored. For level l with Kmax_l = max over types of K_{t,l} codes and
W_l = ceil(Kmax_l / 32) words:

  bitmaps[l]     (n_l, W_l) uint32  bit c of node n is set iff code c leads to a child.
  child_base[l]  (n_l, W_l) int32   index (in level l+1, or in `leaf_item` for the last level)
                                    of node n's first child whose code lies in word w: the
                                    first child of n plus the popcount of the words before w.

Children of a node are numbered consecutively in code order, so
  child(n, c) = child_base[l][n, c // 32] + popcount(bitmaps[l][n, c // 32] & ((1 << c % 32) - 1))
which is two gathers and a few bit ops, with no search. Folding the first-child index into the
rank directory saves one gather and one int32 per node compared with storing them apart.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from neo_jax.sid.types import SIDMap
from neo_jax.tokenizer.sid_vocab import SIDVocab

_WORD = 32


@struct.dataclass
class SIDTrie:
  """The valid SIDs of a catalog (see the module docstring for the layout).

  Attributes:
    bitmaps: per level l, (n_l, W_l) uint32 child bitmaps.
    child_base: per level l, (n_l, W_l) int32 rank directory with the first child folded in.
    leaf_item: (n_items,) int32 catalog row of each leaf, leaves in (type, codes) order.
    kmax: static, per level the largest K over types (the width of a level's code mask).
    num_types: static, number of entity types (= number of level-0 nodes).
  """

  bitmaps: tuple[jax.Array, ...]
  child_base: tuple[jax.Array, ...]
  leaf_item: jax.Array
  kmax: tuple[int, ...] = struct.field(pytree_node=False)
  num_types: int = struct.field(pytree_node=False)

  @property
  def num_levels(self) -> int:
    return len(self.kmax)

  @property
  def num_items(self) -> int:
    return int(self.leaf_item.shape[0])

  @property
  def nbytes(self) -> int:
    """Bytes held by the trie's arrays."""
    arrays = list(self.bitmaps) + list(self.child_base) + [self.leaf_item]
    return int(sum(a.size * a.dtype.itemsize for a in arrays))

  @classmethod
  def build(cls, sid_map: SIDMap, sid_vocab: SIDVocab) -> SIDTrie:
    """Builds the trie of every reachable item of `sid_map` (vectorised, O(N log N)).

    Raises ValueError when the map and the vocabulary disagree on types or level sizes, when a
    code lies outside its level's range, when a row is only partly -1, when two items share an
    SID, or when no item is reachable.
    """
    arrays = build_trie_arrays(sid_map, sid_vocab)
    return cls(
        bitmaps=tuple(jnp.asarray(b) for b in arrays.bitmaps),
        child_base=tuple(jnp.asarray(c) for c in arrays.child_base),
        leaf_item=jnp.asarray(arrays.leaf_item),
        kmax=arrays.kmax,
        num_types=arrays.num_types)


@dataclasses.dataclass
class TrieArrays:
  """The numpy form of `SIDTrie` (same fields), as built on the host."""

  bitmaps: list[np.ndarray]
  child_base: list[np.ndarray]
  leaf_item: np.ndarray
  kmax: tuple[int, ...]
  num_types: int


def _check_map_against_vocab(sid_map: SIDMap, sid_vocab: SIDVocab) -> np.ndarray:
  """Validates the map; returns sizes_TxL (int64) of each type's levels."""
  if tuple(sid_map.type_names) != tuple(sid_vocab.type_names):
    raise ValueError(f'SID map types {sid_map.type_names} differ from the SID vocabulary '
                     f'types {sid_vocab.type_names}')
  if sid_map.num_levels != sid_vocab.num_levels:
    raise ValueError(f'SID map has {sid_map.num_levels} levels, the SID vocabulary '
                     f'{sid_vocab.num_levels}')
  for t in sid_map.type_names:
    if tuple(sid_map.level_sizes[t]) != tuple(sid_vocab.level_sizes[t]):
      raise ValueError(f'level sizes of type {t!r} differ: SID map {sid_map.level_sizes[t]}, '
                       f'SID vocabulary {sid_vocab.level_sizes[t]}')
  codes = np.asarray(sid_map.codes)
  type_index = np.asarray(sid_map.type_index)
  if codes.ndim != 2 or type_index.shape != (codes.shape[0],):
    raise ValueError(f'SID map codes must be (N, L) with type_index (N,), got {codes.shape} '
                     f'and {type_index.shape}')
  num_types = len(sid_map.type_names)
  if type_index.size and (type_index.min() < 0 or type_index.max() >= num_types):
    bad = int(np.flatnonzero((type_index < 0) | (type_index >= num_types))[0])
    raise ValueError(f'SID map row {bad}: type_index {int(type_index[bad])} is not in '
                     f'[0, {num_types})')
  unreachable = codes[:, 0] < 0
  partial = np.any(codes < 0, axis=1) & np.any(codes >= 0, axis=1)
  if partial.any():
    bad = int(np.flatnonzero(partial)[0])
    raise ValueError(f'SID map row {bad}: codes {codes[bad].tolist()} are partly -1; an '
                     'unreachable item must have all codes -1')
  sizes_TxL = np.array([sid_vocab.level_sizes[t] for t in sid_map.type_names], np.int64)
  limit_NxL = sizes_TxL[type_index]
  out_of_range = ~unreachable[:, None] & ((codes < 0) | (codes >= limit_NxL))
  if out_of_range.any():
    row, level = (int(x[0]) for x in np.nonzero(out_of_range))
    raise ValueError(f'SID map row {row}: code {int(codes[row, level])} at level {level} is '
                     f'outside [0, {int(limit_NxL[row, level])}) of type '
                     f'{sid_map.type_names[int(type_index[row])]!r}')
  return sizes_TxL


def build_trie_arrays(sid_map: SIDMap, sid_vocab: SIDVocab) -> TrieArrays:
  """Numpy build of the trie; see `SIDTrie.build`."""
  sizes_TxL = _check_map_against_vocab(sid_map, sid_vocab)
  num_types, num_levels = sizes_TxL.shape
  kmax = tuple(int(k) for k in sizes_TxL.max(axis=0))
  codes_all = np.asarray(sid_map.codes)
  rows = np.flatnonzero(codes_all[:, 0] >= 0)
  if rows.size == 0:
    raise ValueError('SID map has no reachable item; cannot build a trie')
  if rows.size >= 2**31:
    raise ValueError(f'{rows.size} items do not fit int32 leaf indices')
  types = np.asarray(sid_map.type_index)[rows].astype(np.int64)
  codes = codes_all[rows].astype(np.int64)
  # Sort by (type, c_0, ..., c_{L-1}): then every trie node is a run of consecutive rows and
  # children come in code order, which is what the rank directory assumes.
  order = np.lexsort([codes[:, l] for l in reversed(range(num_levels))] + [types])
  types, codes, rows = types[order], codes[order], rows[order]
  m = rows.size

  # starts[l][i]: row i begins a new prefix of length l (the type plus l codes).
  starts = [np.ones(m, bool)]
  starts[0][1:] = types[1:] != types[:-1]
  for l in range(num_levels):
    s = starts[-1].copy()
    s[1:] |= codes[1:, l] != codes[:-1, l]
    starts.append(s)
  if not starts[num_levels].all():
    dup = np.flatnonzero(~starts[num_levels])[0]
    raise ValueError(f'catalog rows {int(rows[dup - 1])} and {int(rows[dup])} share the SID '
                     f'{codes[dup].tolist()} of type {sid_map.type_names[int(types[dup])]!r}; '
                     'resolve collisions before building the trie')
  # node_of[l][i]: index of row i's level-l node. Level 0 nodes are the type roots.
  node_of = [types] + [np.cumsum(starts[l]) - 1 for l in range(1, num_levels + 1)]

  bitmaps, child_base = [], []
  for l in range(num_levels):
    n_nodes = num_types if l == 0 else int(node_of[l][-1]) + 1
    words = -(-kmax[l] // _WORD)
    first = np.flatnonzero(starts[l + 1])  # one row per child (a level-(l+1) node or a leaf)
    parent = node_of[l][first]
    code = codes[first, l]
    # Distinct (parent, code) pairs set distinct bits, so summing powers of two is an OR;
    # float64 represents every sum of distinct bits of a 32-bit word exactly.
    flat = parent * words + code // _WORD
    bits = np.ldexp(1.0, (code % _WORD).astype(np.int32))
    bitmap = np.bincount(flat, weights=bits, minlength=n_nodes * words)
    bitmap = bitmap.astype(np.uint64).astype(np.uint32).reshape(n_nodes, words)
    # Children are numbered in sorted order, so a parent's first child is where it first occurs.
    first_child = np.zeros(n_nodes, np.int64)
    is_first = np.ones(first.size, bool)
    is_first[1:] = parent[1:] != parent[:-1]
    first_child[parent[is_first]] = np.flatnonzero(is_first)
    counts = np.bitwise_count(bitmap).astype(np.int64)
    base = first_child[:, None] + np.cumsum(counts, axis=1) - counts
    bitmaps.append(bitmap)
    child_base.append(base.astype(np.int32))
  return TrieArrays(bitmaps=bitmaps, child_base=child_base, leaf_item=rows.astype(np.int32),
                    kmax=kmax, num_types=int(num_types))


def codes_mask(trie: SIDTrie, level: int, node: jax.Array) -> jax.Array:
  """Which level-`level` codes lead to a child of each node.

  Args:
    trie: the trie.
    level: static level in [0, num_levels).
    node: int32 array of any shape S, valid node indices of that level (at level 0: types).

  Returns:
    bool array S + (kmax[level],).
  """
  words_SxW = trie.bitmaps[level][node]
  shifts = jnp.arange(_WORD, dtype=jnp.uint32)
  bits = (words_SxW[..., None] >> shifts) & jnp.uint32(1)
  bits = bits.reshape(node.shape + (-1,))[..., :trie.kmax[level]]
  return bits.astype(bool)


def child_index(trie: SIDTrie, level: int, node: jax.Array, code: jax.Array) -> jax.Array:
  """Index of the child reached from `node` by `code` (same shapes, int32).

  The result indexes level `level + 1`, or `leaf_item` when `level` is the last one. Only
  meaningful where `codes_mask` admits the code; elsewhere it is some in-range index.
  """
  code = code.astype(jnp.int32)
  word = code // _WORD
  bit = (code % _WORD).astype(jnp.uint32)
  bitmap = trie.bitmaps[level][node, word]
  below = bitmap & ((jnp.uint32(1) << bit) - jnp.uint32(1))
  return trie.child_base[level][node, word] + jax.lax.population_count(below).astype(jnp.int32)


def root_codes_mask(trie: SIDTrie, allowed_types_BxT: jax.Array | None,
                    batch: int | None = None) -> jax.Array:
  """Admissible level-0 codes per request: (B, T, kmax[0]) bool.

  Args:
    trie: the trie.
    allowed_types_BxT: bool, which entity types each request may name; None allows all (then
      `batch` gives B).
    batch: B when `allowed_types_BxT` is None.
  """
  roots_TxK = codes_mask(trie, 0, jnp.arange(trie.num_types, dtype=jnp.int32))
  if allowed_types_BxT is None:
    if batch is None:
      raise ValueError('root_codes_mask needs allowed_types_BxT or batch')
    return jnp.broadcast_to(roots_TxK, (batch,) + roots_TxK.shape)
  if allowed_types_BxT.ndim != 2 or allowed_types_BxT.shape[1] != trie.num_types:
    raise ValueError(f'allowed_types_BxT must be (B, {trie.num_types}), got '
                     f'{allowed_types_BxT.shape}')
  return roots_TxK[None] & allowed_types_BxT.astype(bool)[:, :, None]


def allowed_types_mask(type_names: Sequence[str],
                       requested: Sequence[str | Sequence[str] | None]) -> np.ndarray:
  """The (B, T) bool `allowed_types_BxT` of B requests.

  Args:
    type_names: the T entity types, in SID vocabulary order.
    requested: per request, one type name, several, or None for every type.
  """
  mask = np.zeros((len(requested), len(type_names)), bool)
  for b, req in enumerate(requested):
    if req is None:
      mask[b] = True
      continue
    for name in ([req] if isinstance(req, str) else req):
      if name not in type_names:
        raise ValueError(f'request {b}: unknown entity type {name!r}; known: {tuple(type_names)}')
      mask[b, list(type_names).index(name)] = True
  return mask


@struct.dataclass
class SIDVocabArrays:
  """The token layout of the SID block as arrays (see neo_jax/tokenizer/sid_vocab.py).

  Attributes:
    offsets_TxL: int32, token id of code 0 of level l of type t.
    sizes_TxL: int32, K of level l of type t.
    open_id, close_id: static ids of `[SID]` and `[/SID]`.
    base, end: static, the SID block is [base, end); text tokens are [0, base).
  """

  offsets_TxL: jax.Array
  sizes_TxL: jax.Array
  open_id: int = struct.field(pytree_node=False)
  close_id: int = struct.field(pytree_node=False)
  base: int = struct.field(pytree_node=False)
  end: int = struct.field(pytree_node=False)

  @classmethod
  def from_vocab(cls, sid_vocab: SIDVocab) -> SIDVocabArrays:
    if sid_vocab.end >= 2**31:
      raise ValueError(f'SID token ids up to {sid_vocab.end} do not fit int32')
    sizes = np.array([sid_vocab.level_sizes[t] for t in sid_vocab.type_names], np.int32)
    return cls(offsets_TxL=jnp.asarray(sid_vocab.offsets_TxL, jnp.int32),
               sizes_TxL=jnp.asarray(sizes), open_id=int(sid_vocab.sid_open_id),
               close_id=int(sid_vocab.sid_close_id), base=int(sid_vocab.base),
               end=int(sid_vocab.end))
