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

Liveness and request filters. Leaves are numbered in (type, codes) order, so the leaves under
any node form one contiguous range [lo, hi), found by following first children down (one gather
per level, `leaf_range`). The bitmaps are structural and never change; which items may be
generated is decided by counts over leaf ranges:

  live_prefix    (n_leaves + 1,) int32  number of live leaves before each leaf.
  item_leaf      (n_rows,) int32        leaf of each catalog row, -1 for unreachable rows.

A code is admissible iff its bitmap bit is set and the leaf range of its child holds at least
one admissible item (live, and for a request also not excluded, in its allow-list when it has
one, not yet named): `admissible_children`. Every admissible prefix therefore completes into
an admissible item, so decoding never reaches a dead end. Removing items (`set_live`) rewrites
`live_prefix` (one cumsum) with the same shapes, so compiled searches keep working and a
removed item is never generated after the update.

Allow-sets. A request's own allow-list is part of its `RequestFilter`; an allow-set shared
by a batch (the new releases) is `SIDTrie.only(rows)`, a liveness update like a removal.

Capacity and catalog growth. Every array may be longer than what it holds
(`SIDTrie.build(..., capacity=C)`): level l >= 1 has room for more nodes, the leaves for C
items, `item_leaf` for more catalog rows. Unused node rows sit after the used ones with empty
bitmaps and a rank directory equal to the number of used children, so they behave as childless
nodes at the end of the level (their leaf range is empty), and unused leaves are never live.
`add_items` inserts new SIDs in place: new nodes take their place in (type, codes) order, which
shifts the indices after them, and every level's arrays are rewritten by vectorised numpy
(inserts, a bit OR per new edge, one cumsum for the rank directory) in O(size of the trie),
without sorting the catalog again, with unchanged shapes, so compiled searches serve the grown
catalog without recompiling. Shapes depend only on the capacity, never on the content. When
the slack is spent, `grow(capacity)` copies the trie into larger arrays (new shapes: one more
compilation).
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
    bitmaps: per level l, (n_l, W_l) uint32 child bitmaps (n_l: node rows, used or not).
    child_base: per level l, (n_l, W_l) int32 rank directory with the first child folded in.
    leaf_item: (n_items,) int32 catalog row of each leaf, leaves in (type, codes) order; -1 in
      unused leaf slots.
    live_prefix: (n_items + 1,) int32 number of live leaves before each leaf.
    item_leaf: (n_rows,) int32 leaf of each catalog row, -1 where the row is not in the trie.
    kmax: static, per level the largest K over types (the width of a level's code mask).
    num_types: static, number of entity types (= number of level-0 nodes).
    level_sizes: static, per type the K of each level (codes of added items are checked
      against them).
  """

  bitmaps: tuple[jax.Array, ...]
  child_base: tuple[jax.Array, ...]
  leaf_item: jax.Array
  live_prefix: jax.Array
  item_leaf: jax.Array
  kmax: tuple[int, ...] = struct.field(pytree_node=False)
  num_types: int = struct.field(pytree_node=False)
  level_sizes: tuple[tuple[int, ...], ...] = struct.field(pytree_node=False, default=())

  @property
  def num_levels(self) -> int:
    return len(self.kmax)

  @property
  def num_items(self) -> int:
    """Leaf slots: the capacity in items (static, the shape that jitted code sees)."""
    return int(self.leaf_item.shape[0])

  @property
  def num_rows(self) -> int:
    """Catalog rows `item_leaf` covers (row ids of added items must be below it)."""
    return int(self.item_leaf.shape[0])

  @property
  def nbytes(self) -> int:
    """Bytes held by the trie's arrays (capacity included)."""
    arrays = (list(self.bitmaps) + list(self.child_base)
              + [self.leaf_item, self.live_prefix, self.item_leaf])
    return int(sum(a.size * a.dtype.itemsize for a in arrays))

  def used_counts(self) -> tuple[int, ...]:
    """Used node rows per level 0..L-1, then used leaves (host ints; reads a few scalars)."""
    counts = [self.num_types]
    for l in range(self.num_levels):
      last = counts[-1] - 1
      base = int(self.child_base[l][last, -1])
      counts.append(base + int(np.bitwise_count(np.asarray(self.bitmaps[l][last, -1]))))
    return tuple(counts)

  @property
  def num_leaves(self) -> int:
    """Items held (live or not), at most `num_items`."""
    return self.used_counts()[-1]

  @classmethod
  def build(cls, sid_map: SIDMap, sid_vocab: SIDVocab, live: np.ndarray | None = None,
            capacity: int | None = None, row_capacity: int | None = None) -> SIDTrie:
    """Builds the trie of every reachable item of `sid_map` (vectorised, O(N log N)).

    Args:
      sid_map: the catalog's SIDs.
      sid_vocab: the SID token layout.
      live: optional (n_rows,) bool, which rows may be generated now (default: all); the
        others are built in and can be switched on later with `set_live`.
      capacity: items the trie can hold (default: exactly the reachable ones); the slack
        (capacity - reachable items) is room for `add_items`: as many leaf slots, and up to as
        many new node rows per level.
      row_capacity: catalog rows `item_leaf` covers, at least len(sid_map) (default: len(sid_map)
        plus the slack), so that added items can have new row ids.

    Raises ValueError when the map and the vocabulary disagree on types or level sizes, when a
    code lies outside its level's range, when a row is only partly -1, when two items share an
    SID, when no item is reachable, when `live` has the wrong shape, or when a capacity is
    smaller than what the map already needs.
    """
    arrays = build_trie_arrays(sid_map, sid_vocab)
    n_rows = int(np.asarray(sid_map.codes).shape[0])
    n_leaves = int(arrays.leaf_item.size)
    capacity = n_leaves if capacity is None else int(capacity)
    if capacity < n_leaves:
      raise ValueError(f'capacity {capacity} is below the {n_leaves} items of the SID map')
    slack = capacity - n_leaves
    row_capacity = n_rows + slack if row_capacity is None else int(row_capacity)
    if row_capacity < n_rows:
      raise ValueError(f'row_capacity {row_capacity} is below the {n_rows} rows of the SID map')
    live_leaf = np.ones(n_leaves, np.int32)
    if live is not None:
      live = np.asarray(live)
      if live.shape != (n_rows,) or live.dtype != bool:
        raise ValueError(f'live must be a ({n_rows},) bool array, got {live.dtype} {live.shape}')
      live_leaf = live[arrays.leaf_item].astype(np.int32)
    sizes_TxL = np.array([sid_vocab.level_sizes[t] for t in sid_vocab.type_names], np.int64)
    bitmaps, child_base = [], []
    for l, (bitmap, base) in enumerate(zip(arrays.bitmaps, arrays.child_base)):
      rows = bitmap.shape[0] if l == 0 else min(bitmap.shape[0] + slack,
                                                _max_nodes(sizes_TxL, l))
      bitmaps.append(_pad_rows(bitmap, rows, 0))
      n_next = n_leaves if l + 1 == len(arrays.kmax) else arrays.bitmaps[l + 1].shape[0]
      child_base.append(_pad_rows(base, rows, n_next))
    return cls.from_arrays(
        bitmaps, child_base, _pad_rows(arrays.leaf_item, capacity, -1),
        _pad_rows(live_leaf, capacity, 0), row_capacity, kmax=arrays.kmax,
        num_types=arrays.num_types,
        level_sizes=tuple(tuple(int(k) for k in row) for row in sizes_TxL))

  @classmethod
  def from_arrays(cls, bitmaps, child_base, leaf_item: np.ndarray, live_leaf: np.ndarray,
                  row_capacity: int, *, kmax, num_types, level_sizes) -> SIDTrie:
    """The trie from host arrays already padded to their capacities (leaf_item -1 and
    live_leaf 0 in unused leaf slots); derives live_prefix and item_leaf."""
    used = leaf_item >= 0
    item_leaf = np.full(row_capacity, -1, np.int32)
    item_leaf[leaf_item[used]] = np.flatnonzero(used).astype(np.int32)
    live_prefix = np.r_[0, np.cumsum(np.where(used, live_leaf, 0))].astype(np.int32)
    return cls(bitmaps=tuple(jnp.asarray(b) for b in bitmaps),
               child_base=tuple(jnp.asarray(c) for c in child_base),
               leaf_item=jnp.asarray(leaf_item.astype(np.int32)),
               live_prefix=jnp.asarray(live_prefix), item_leaf=jnp.asarray(item_leaf),
               kmax=tuple(kmax), num_types=int(num_types), level_sizes=tuple(level_sizes))

  @property
  def num_live(self) -> int:
    return int(self.live_prefix[-1])

  def set_live(self, items: Sequence[int] | np.ndarray, live: bool) -> SIDTrie:
    """The same trie with catalog rows `items` removed (live=False) or restored (live=True).

    Shapes are unchanged, so every compiled search and generation serves the updated trie
    without recompiling. Raises ValueError for a row outside the catalog or not in the trie.
    """
    items = np.asarray(items, np.int64).reshape(-1)
    n_rows = int(self.item_leaf.shape[0])
    bad = items[(items < 0) | (items >= n_rows)]
    if bad.size:
      raise ValueError(f'catalog rows {bad[:5].tolist()} are outside [0, {n_rows})')
    leaves = np.asarray(self.item_leaf)[items]
    if (leaves < 0).any():
      raise ValueError(f'catalog rows {items[leaves < 0][:5].tolist()} have no SID in the trie; '
                       'add them first (SIDTrie.add_items)')
    if leaves.size == 0:
      return self
    # Pad to a power of two with repeats of the first leaf (same value): few compiled shapes.
    padded = np.full(1 << (leaves.size - 1).bit_length(), leaves[0], np.int32)
    padded[:leaves.size] = leaves
    return self.replace(live_prefix=_set_live(self.live_prefix, jnp.asarray(padded),
                                              jnp.asarray(bool(live))))

  def grow(self, capacity: int, row_capacity: int | None = None) -> SIDTrie:
    """The same items (live or not) in arrays with room for `capacity` items: what
    `add_items` needs once the slack is spent. New shapes, so compiled searches compile once
    more for the grown trie (grow by a factor, e.g. doubling, to make that rare).

    Args:
      capacity: leaf slots, at least the current `num_items`; the slack over the held items
        is also the room for new node rows per level, as in `build`.
      row_capacity: catalog rows `item_leaf` covers, at least the current `num_rows`
        (default: the current rows plus the added capacity).
    """
    capacity = int(capacity)
    if capacity < self.num_items:
      raise ValueError(f'grow: capacity {capacity} is below the current {self.num_items}')
    row_capacity = (self.num_rows + capacity - self.num_items if row_capacity is None
                    else int(row_capacity))
    if row_capacity < self.num_rows:
      raise ValueError(f'grow: row_capacity {row_capacity} is below the current '
                       f'{self.num_rows}')
    counts = self.used_counts()
    n_leaves = counts[-1]
    slack = capacity - n_leaves
    sizes_TxL = np.array(self.level_sizes or [self.kmax] * self.num_types, np.int64)
    bitmaps, child_base = [], []
    for l in range(self.num_levels):
      have = int(self.bitmaps[l].shape[0])
      rows = have if l == 0 else max(have, min(counts[l] + slack, _max_nodes(sizes_TxL, l)))
      bitmaps.append(_pad_rows(np.asarray(self.bitmaps[l])[:counts[l]], rows, 0))
      child_base.append(_pad_rows(np.asarray(self.child_base[l])[:counts[l]], rows,
                                  counts[l + 1]))
    live_leaf = np.diff(np.asarray(self.live_prefix))[:n_leaves]
    return SIDTrie.from_arrays(
        bitmaps, child_base, _pad_rows(np.asarray(self.leaf_item)[:n_leaves], capacity, -1),
        _pad_rows(live_leaf, capacity, 0), row_capacity, kmax=self.kmax,
        num_types=self.num_types, level_sizes=self.level_sizes)

  def only(self, items: Sequence[int] | np.ndarray) -> SIDTrie:
    """The same trie where only the live rows among `items` may be generated: an allow-set
    shared by a whole batch (e.g. the new releases), of any size, as one liveness update.
    Shapes are unchanged, so compiled searches serve it without recompiling; per-request
    allow-lists are `request_filter(allowed=...)`. Rows outside the catalog raise ValueError;
    rows not in the trie (or removed) are ignored: they cannot be generated anyway."""
    items = np.asarray(items, np.int64).reshape(-1)
    bad = items[(items < 0) | (items >= self.num_rows)]
    if bad.size:
      raise ValueError(f'catalog rows {bad[:5].tolist()} are outside [0, {self.num_rows})')
    leaves = np.asarray(self.item_leaf)[items]
    keep = np.zeros(self.num_items, np.int32)
    keep[leaves[leaves >= 0]] = 1
    live = np.diff(np.asarray(self.live_prefix)) * keep
    return self.replace(live_prefix=jnp.asarray(np.r_[0, np.cumsum(live)].astype(np.int32)))

  def live_rows(self) -> np.ndarray:
    """(n,) int64 catalog rows that may be generated now, ascending."""
    live = np.diff(np.asarray(self.live_prefix)) > 0
    return np.sort(np.asarray(self.leaf_item)[live].astype(np.int64))

  def add_items(self, items: Sequence[int] | np.ndarray, sids: Sequence[Sequence[int]] |
                np.ndarray, types: Sequence[int] | np.ndarray | None = None,
                live: bool = True) -> SIDTrie:
    """The trie with new catalog rows `items` holding SIDs not in the trie yet, same shapes.

    Vectorised over the new items: one walk down the current trie finds, per level, which
    prefixes exist and where the new ones go in (type, codes) order; then each level gets its
    new node rows inserted, one bit per new edge, and its rank directory recomputed (a
    cumsum). O(new items x levels) lookups plus O(size of the trie) numpy copies; no sort of
    the catalog. A compiled search keeps working on the result without recompiling.

    Args:
      items: (N,) catalog row ids, distinct, in [0, num_rows), not in the trie yet (a row
        that is in the trie but removed comes back with `set_live(items, True)`).
      sids: (N, L) int codes; code l of an item of type t in [0, level_sizes[t][l]).
      types: (N,) int type indices (may be omitted when the trie has one type).
      live: whether the new items may be generated at once (else `set_live` them later).

    Raises ValueError naming the first bad item: wrong shapes or ranges, a row already in the
    trie, an SID already held by another row (live or removed) or given twice, or when the
    capacity is exhausted (saying how much is needed).
    """
    items, codes, types = self._check_new_items(items, sids, types)
    if items.size == 0:
      return self
    num_levels = self.num_levels
    order = np.lexsort([codes[:, l] for l in reversed(range(num_levels))] + [types])
    items, codes, types = items[order], codes[order], types[order]
    m = items.size
    counts = self.used_counts()
    bitmaps_old = [np.asarray(b)[:counts[l]] for l, b in enumerate(self.bitmaps)]
    bases_old = [np.asarray(c)[:counts[l]] for l, c in enumerate(self.child_base)]

    # Walk down. Per item: whether its level-l node exists already (then `old` is its index),
    # else `ins` = its insertion position among the old level-l nodes (the number of old nodes
    # whose prefix sorts before it); `new` = its index after the update.
    exists = np.ones(m, bool)
    old = types.copy()
    ins = np.zeros(m, np.int64)
    new = types.copy()
    inserts = [np.zeros(0, np.int64)]  # per level, insertion positions of new nodes (sorted)
    new_edges = []  # per level, (parent's new index, code) of each new edge
    prefix_start = np.r_[True, types[1:] != types[:-1]]
    for l in range(num_levels):
      n_l, n_next = counts[l], counts[l + 1]
      code = codes[:, l]
      word, bit = code // _WORD, (code % _WORD).astype(np.uint32)
      parent = np.where(exists, old, 0)
      word_bits = bitmaps_old[l][parent, word]
      has = exists & (((word_bits >> bit) & 1) == 1)
      below = np.bitwise_count(word_bits & ((np.uint32(1) << bit) - np.uint32(1)))
      at_old = bases_old[l][parent, word].astype(np.int64) + below
      # A new parent's children go where the old node it was inserted before starts its own.
      first_child_old = np.r_[bases_old[l][:, 0].astype(np.int64), n_next]
      child_pos = np.where(exists, at_old, first_child_old[np.minimum(ins, n_l)])
      if l == num_levels - 1 and has.any():
        i = int(np.flatnonzero(has)[0])
        holder = int(np.asarray(self.leaf_item)[int(at_old[i])])
        raise ValueError(f'SID {codes[i].tolist()} of type {int(types[i])} (new row '
                         f'{int(items[i])}) is already held by catalog row {holder}')
      prefix_start = prefix_start | np.r_[True, code[1:] != code[:-1]]
      starts = ~has & prefix_start  # the first item of each new child
      pos_new = child_pos[starts]
      first_of = np.maximum.accumulate(np.where(starts, np.arange(m), 0))
      group = np.cumsum(starts) - 1
      new_index_of_group = pos_new + np.arange(pos_new.size)
      new_edges.append((new[starts], code[starts]))
      # An old child moves right by the new children inserted at or before its position.
      moved = at_old + np.searchsorted(pos_new, at_old, side='right')
      next_new = np.where(has, moved, np.r_[new_index_of_group, 0][np.maximum(group, 0)])
      ins = np.where(has, 0, child_pos[first_of])
      old = np.where(has, at_old, 0)
      exists = has
      new = next_new
      inserts.append(pos_new)

    # Capacity: new node rows per level, leaves, checked before anything is written.
    short = []
    for l in range(1, num_levels):
      need = counts[l] + inserts[l].size
      if need > self.bitmaps[l].shape[0]:
        short.append(f'level {l} needs {need} node rows, has {self.bitmaps[l].shape[0]}')
    need_leaves = counts[-1] + m
    if need_leaves > self.num_items:
      short.append(f'{need_leaves} leaf slots needed, has {self.num_items}')
    if short:
      raise ValueError(f'trie capacity exhausted adding {m} items: {"; ".join(short)}; '
                       f'rebuild with SIDTrie.build(..., capacity>={need_leaves})')

    bitmaps, child_base = [], []
    for l in range(num_levels):
      bitmap = np.insert(bitmaps_old[l], inserts[l], 0, axis=0)
      parent, code = new_edges[l]
      np.bitwise_or.at(bitmap, (parent, code // _WORD),
                       np.left_shift(np.uint32(1), (code % _WORD).astype(np.uint32)))
      flat = np.bitwise_count(bitmap).astype(np.int64).reshape(-1)
      base = (np.cumsum(flat) - flat).reshape(bitmap.shape)
      rows = self.bitmaps[l].shape[0]
      bitmaps.append(_pad_rows(bitmap, rows, 0))
      child_base.append(_pad_rows(base.astype(np.int32), rows, int(flat.sum())))
    used = counts[-1]
    leaf_item = np.insert(np.asarray(self.leaf_item)[:used], inserts[-1], items)
    live_old = np.diff(np.asarray(self.live_prefix))[:used]
    live_leaf = np.insert(live_old, inserts[-1], int(bool(live)))
    return SIDTrie.from_arrays(
        bitmaps, child_base, _pad_rows(leaf_item, self.num_items, -1),
        _pad_rows(live_leaf, self.num_items, 0), self.num_rows, kmax=self.kmax,
        num_types=self.num_types, level_sizes=self.level_sizes)

  def _check_new_items(self, items, sids, types):
    """Validated (items, codes, types) as int64 arrays for `add_items`."""
    items = np.asarray(items)
    codes = np.asarray(sids)
    n = items.reshape(-1).size
    if items.ndim != 1 or (n and not np.issubdtype(items.dtype, np.integer)):
      raise ValueError(f'items must be a 1-D int array, got {items.dtype} {items.shape}')
    if codes.shape != (n, self.num_levels) or (n and not np.issubdtype(codes.dtype,
                                                                       np.integer)):
      raise ValueError(f'sids must be ({n}, {self.num_levels}) ints, got {codes.dtype} '
                       f'{codes.shape}')
    if types is None:
      if self.num_types != 1:
        raise ValueError(f'the trie has {self.num_types} entity types: give types')
      types = np.zeros(n, np.int64)
    types = np.asarray(types)
    if types.shape != (n,) or (n and not np.issubdtype(types.dtype, np.integer)):
      raise ValueError(f'types must be ({n},) ints, got {types.dtype} {types.shape}')
    items, codes, types = (x.astype(np.int64) for x in (items, codes, types))
    bad = np.flatnonzero((items < 0) | (items >= self.num_rows))
    if bad.size:
      raise ValueError(f'new item rows {items[bad[:5]].tolist()} are outside [0, '
                       f'{self.num_rows}); rebuild with a larger row_capacity')
    bad = np.flatnonzero((types < 0) | (types >= self.num_types))
    if bad.size:
      raise ValueError(f'new item row {int(items[bad[0]])}: type {int(types[bad[0]])} is not in '
                       f'[0, {self.num_types})')
    sizes_TxL = np.array(self.level_sizes or [self.kmax] * self.num_types, np.int64)
    out = (codes < 0) | (codes >= sizes_TxL[types])
    if out.any():
      i, l = (int(x[0]) for x in np.nonzero(out))
      raise ValueError(f'new item row {int(items[i])}: code {int(codes[i, l])} at level {l} is '
                       f'outside [0, {int(sizes_TxL[types[i], l])}) of type {int(types[i])}')
    uniq, counts = np.unique(items, return_counts=True)
    if (counts > 1).any():
      raise ValueError(f'new item rows are given twice: {uniq[counts > 1][:5].tolist()}')
    held = np.asarray(self.item_leaf)[items] >= 0
    if held.any():
      raise ValueError(f'catalog rows {items[held][:5].tolist()} are in the trie already '
                       '(a removed row comes back with set_live(rows, True))')
    keys = np.c_[types, codes]
    uniq, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    if (counts > 1).any():
      i = np.flatnonzero(counts[inverse.reshape(-1)] > 1)[:2]
      raise ValueError(f'new item rows {items[i].tolist()} share the SID '
                       f'{codes[i[0]].tolist()} of type {int(types[i[0]])}')
    return items, codes, types


def lookup_items(trie: SIDTrie, types_N: np.ndarray, codes_NxL: np.ndarray,
                 live_only: bool = True) -> np.ndarray:
  """Host lookup of SIDs: the catalog row holding each (type, codes), -1 where none does.

  For parsing what unconstrained decoding produced. Vectorised numpy walk down the bitmaps
  (L lookups per SID). Out-of-range types or codes give -1; with live_only, so do removed items.

  Args:
    trie: the trie.
    types_N: (N,) int type indices.
    codes_NxL: (N, L) int codes.

  Returns:
    (N,) int32 catalog rows.
  """
  types_N = np.asarray(types_N, np.int64).reshape(-1)
  codes_NxL = np.asarray(codes_NxL, np.int64).reshape(types_N.size, trie.num_levels)
  sizes_TxL = np.array(trie.level_sizes or [trie.kmax] * trie.num_types, np.int64)
  ok = (types_N >= 0) & (types_N < trie.num_types)
  node = np.where(ok, types_N, 0)
  ok &= np.all((codes_NxL >= 0) & (codes_NxL < sizes_TxL[node]), axis=1)
  for l in range(trie.num_levels):
    code = np.where(ok, codes_NxL[:, l], 0)
    word, bit = code // _WORD, (code % _WORD).astype(np.uint32)
    word_bits = np.asarray(trie.bitmaps[l])[node, word]
    ok &= ((word_bits >> bit) & 1) == 1
    below = np.bitwise_count(word_bits & ((np.uint32(1) << bit) - np.uint32(1)))
    node = np.where(ok, np.asarray(trie.child_base[l])[node, word].astype(np.int64) + below, 0)
  if live_only:
    live = np.diff(np.asarray(trie.live_prefix)) > 0
    ok &= live[node]
  return np.where(ok, np.asarray(trie.leaf_item)[node], -1).astype(np.int32)


def _pad_rows(x: np.ndarray, rows: int, value) -> np.ndarray:
  """x with rows appended (filled with `value`) up to `rows` rows."""
  if x.shape[0] == rows:
    return x
  pad = np.full((rows - x.shape[0],) + x.shape[1:], value, x.dtype)
  return np.concatenate([x, pad])


def _max_nodes(sizes_TxL: np.ndarray, level: int) -> int:
  """Most distinct nodes level `level` can have: per type the product of the K before it."""
  return int(np.sum(np.prod(sizes_TxL[:, :level], axis=1)))


@jax.jit
def _set_live(live_prefix: jax.Array, leaves: jax.Array, live: jax.Array) -> jax.Array:
  alive = jnp.diff(live_prefix).at[leaves].set(live.astype(jnp.int32))
  return jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(alive, dtype=jnp.int32)])


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
    # A node without children (a type without items) gets the next node's first child, so
    # first children never decrease and leaf ranges stay contiguous.
    first_child = np.searchsorted(parent, np.arange(n_nodes))
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


def num_nodes(trie: SIDTrie, level: int) -> int:
  """Nodes of level `level` in [0, num_levels]; level num_levels counts the leaves."""
  if level == trie.num_levels:
    return trie.num_items
  return int(trie.bitmaps[level].shape[0])


def leaf_range(trie: SIDTrie, level: int, node: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[lo, hi) leaf range under nodes of level `level` (num_levels: the nodes are leaves).

  node: int32, any shape; num_nodes(level) is allowed and gives the empty range at the end.
  Costs 2 (num_levels - level) gathers.
  """

  def first_leaf(x):
    for m in range(level, trie.num_levels):
      n_m = num_nodes(trie, m)
      first = trie.child_base[m][jnp.clip(x, 0, n_m - 1), 0]
      x = jnp.where(x >= n_m, num_nodes(trie, m + 1), first)
    return x

  node = node.astype(jnp.int32)
  return first_leaf(node), first_leaf(node + 1)


_PAD = np.iinfo(np.int32).max


@struct.dataclass
class RequestFilter:
  """Per-request item constraints, as sorted leaf ids (padded with int32 max).

  Attributes:
    excluded_BxE: live leaves request b must not name (e.g. its history), sorted, distinct.
    allowed_BxA: where `has_allow_list_B`, the only live leaves request b may name (already
      without its excluded ones), sorted, distinct.
    has_allow_list_B: bool, whether request b has an allow-list.
  """

  excluded_BxE: jax.Array
  allowed_BxA: jax.Array
  has_allow_list_B: jax.Array

  @property
  def batch(self) -> int:
    return int(self.has_allow_list_B.shape[0])


def _sorted_live_leaves(trie: SIDTrie, items_BxS: jax.Array) -> jax.Array:
  """Catalog rows (-1 = padding) -> their live leaves, sorted and distinct, padded."""
  n_rows = trie.item_leaf.shape[0]
  in_range = (items_BxS >= 0) & (items_BxS < n_rows)
  leaf = jnp.where(in_range, trie.item_leaf[jnp.clip(items_BxS, 0, n_rows - 1)], -1)
  safe = jnp.clip(leaf, 0, trie.num_items - 1)
  live = (leaf >= 0) & (trie.live_prefix[safe + 1] > trie.live_prefix[safe])
  leaf = jnp.sort(jnp.where(live, leaf, _PAD), axis=1)
  dup = jnp.concatenate([jnp.zeros_like(leaf[:, :1], bool), leaf[:, 1:] == leaf[:, :-1]], 1)
  return jnp.sort(jnp.where(dup, _PAD, leaf), axis=1)


def count_in_range(sorted_BxS: jax.Array, lo: jax.Array, hi: jax.Array) -> jax.Array:
  """Number of entries of row b of `sorted_BxS` in [lo[b, ...], hi[b, ...]) (int32)."""
  shape = lo.shape
  lo2, hi2 = lo.reshape(shape[0], -1), hi.reshape(shape[0], -1)
  count = jax.vmap(lambda s, a, b: jnp.searchsorted(s, b) - jnp.searchsorted(s, a))(
      sorted_BxS, lo2, hi2)
  return count.astype(jnp.int32).reshape(shape)


@jax.jit
def make_request_filter(trie: SIDTrie, excluded_items_BxE: jax.Array,
                        allowed_items_BxA: jax.Array, has_allow_list_B: jax.Array
                        ) -> RequestFilter:
  """A `RequestFilter` from catalog rows (-1 pads; rows not in the trie or not live are
  ignored, which is harmless: they can never be named anyway).

  Args:
    trie: the trie (its current liveness is applied).
    excluded_items_BxE: int32 rows each request must not name; E may be 1 with all -1.
    allowed_items_BxA: int32 rows each request may only name, used where has_allow_list_B.
    has_allow_list_B: bool.
  """
  excluded = _sorted_live_leaves(trie, excluded_items_BxE.astype(jnp.int32))
  allowed = _sorted_live_leaves(trie, allowed_items_BxA.astype(jnp.int32))
  # Drop excluded leaves from the allow-list so that one count answers for both.
  pos = jax.vmap(jnp.searchsorted)(excluded, allowed)
  hit = jnp.take_along_axis(excluded, jnp.minimum(pos, excluded.shape[1] - 1), axis=1) == allowed
  allowed = jnp.sort(jnp.where(hit & (allowed != _PAD), _PAD, allowed), axis=1)
  return RequestFilter(excluded_BxE=excluded, allowed_BxA=allowed,
                       has_allow_list_B=has_allow_list_B.astype(bool))


def request_filter(trie: SIDTrie, excluded: Sequence[Sequence[int]] | None = None,
                   allowed: Sequence[Sequence[int] | None] | None = None,
                   batch: int | None = None, width: int | None = None) -> RequestFilter:
  """Host convenience: a `RequestFilter` from per-request lists of catalog rows.

  Args:
    trie: the trie.
    excluded: per request, rows it must not name (None: nothing excluded).
    allowed: per request, the only rows it may name, or None for no allow-list.
    batch: B when both lists are None.
    width: pad both lists to this many entries (fixed shapes reuse compiled searches);
      default: the longest list.
  Raises ValueError when the lists disagree on B or a row is not an int in [0, n_rows).
  """
  sizes = {len(x) for x in (excluded, allowed) if x is not None}
  if batch is not None:
    sizes.add(int(batch))
  if len(sizes) != 1:
    raise ValueError(f'request_filter: batch sizes disagree or are missing: {sorted(sizes)}')
  b = sizes.pop()
  n_rows = int(trie.item_leaf.shape[0])

  def pad(lists, name):
    longest = max([1] + [len(x) for x in lists if x is not None])
    if width is not None and width < longest:
      raise ValueError(f'{name}: a list of {longest} rows does not fit width {width}')
    out = np.full((b, longest if width is None else width), -1, np.int32)
    for i, x in enumerate(lists):
      if x is None:
        continue
      x = np.asarray(list(x), np.int64)
      bad = x[(x < 0) | (x >= n_rows)]
      if bad.size:
        raise ValueError(f'{name}[{i}]: catalog rows {bad[:5].tolist()} outside [0, {n_rows})')
      out[i, :x.size] = x
    return out

  excl = pad(excluded if excluded is not None else [None] * b, 'excluded')
  allw = pad(allowed if allowed is not None else [None] * b, 'allowed')
  has = np.array([allowed is not None and allowed[i] is not None for i in range(b)], bool)
  return make_request_filter(trie, jnp.asarray(excl), jnp.asarray(allw), jnp.asarray(has))


def admissible_count(trie: SIDTrie, lo: jax.Array, hi: jax.Array,
                     request: RequestFilter | None = None,
                     named_BxI: jax.Array | None = None) -> jax.Array:
  """How many admissible items lie in leaf ranges [lo, hi) (shapes (B, ...) int32).

  Admissible: live; for a request filter also not excluded and in the allow-list where there
  is one; not among `named_BxI` (leaves a row has already named, -1 padded; they are admissible
  items themselves, so subtracting them is exact).
  """
  lo_c = jnp.clip(lo, 0, trie.num_items)
  hi_c = jnp.clip(hi, 0, trie.num_items)
  count = trie.live_prefix[hi_c] - trie.live_prefix[lo_c]
  if request is not None:
    excl = count - count_in_range(request.excluded_BxE, lo_c, hi_c)
    allow = count_in_range(request.allowed_BxA, lo_c, hi_c)
    has = request.has_allow_list_B.reshape((-1,) + (1,) * (lo.ndim - 1))
    count = jnp.where(has, allow, excl)
  if named_BxI is not None:
    flat_lo = lo_c.reshape(lo.shape[0], -1, 1)
    flat_hi = hi_c.reshape(lo.shape[0], -1, 1)
    named = named_BxI[:, None, :]
    inside = (named >= flat_lo) & (named < flat_hi) & (named >= 0)
    count = count - jnp.sum(inside, axis=-1).reshape(lo.shape)
  return count


def admissible_children(trie: SIDTrie, level: int, node: jax.Array,
                        request: RequestFilter | None = None,
                        named_BxI: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Which level-`level` codes of each node lead to an admissible item, and their children.

  Args:
    trie: the trie.
    level: static level in [0, num_levels).
    node: int32 (B, ...) valid node indices of that level (level 0: types).
    request, named_BxI: as in `admissible_count` (their B is node's first axis).

  Returns:
    (ok (B, ..., kmax) bool, child (B, ..., kmax) int32 index in level + 1 or leaf).
  """
  codes = jnp.arange(trie.kmax[level], dtype=jnp.int32)
  child = child_index(trie, level, node[..., None], codes)
  structural = codes_mask(trie, level, node)
  n_next = num_nodes(trie, level + 1)
  child = jnp.where(structural, child, n_next)
  lo, hi = leaf_range(trie, level + 1, child)
  ok = structural & (admissible_count(trie, lo, hi, request, named_BxI) > 0)
  return ok, jnp.minimum(child, n_next - 1)


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
