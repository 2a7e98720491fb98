"""The bitmap trie admits exactly the catalog's SIDs (walked through its own jnp lookups)."""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neo_jax.decode.trie import (SIDTrie, SIDVocabArrays, allowed_types_mask, child_index,
                                 codes_mask, root_codes_mask)
from neo_jax.sid.types import SIDMap
from neo_jax.tokenizer.sid_vocab import SIDVocab


@st.composite
def sid_maps(draw):
  """A random multi-type SID map: distinct SIDs per type, some unreachable rows, maybe an
  empty type; K up to 70 so that some levels span several bitmap words."""
  num_types = draw(st.integers(1, 3))
  num_levels = draw(st.integers(1, 3))
  names = tuple(f't{i}' for i in range(num_types))
  sizes = {n: tuple(draw(st.sampled_from([1, 2, 3, 31, 32, 33, 70])) for _ in range(num_levels))
           for n in names}
  rng = np.random.default_rng(draw(st.integers(0, 2**31)))
  codes, types = [], []
  for ti, n in enumerate(names):
    space = int(np.prod(sizes[n]))
    count = draw(st.integers(1 if ti == 0 else 0, min(space, 25)))  # >= 1 item overall
    flat = rng.choice(space, size=count, replace=False)
    codes.append(np.stack(np.unravel_index(flat, sizes[n]), axis=1))
    types.append(np.full(count, ti))
  codes = np.concatenate(codes).astype(np.int32)
  types = np.concatenate(types).astype(np.int32)
  unreachable = draw(st.integers(0, 3))
  codes = np.concatenate([codes, np.full((unreachable, num_levels), -1, np.int32)])
  types = np.concatenate([types, rng.integers(0, num_types, unreachable).astype(np.int32)])
  perm = rng.permutation(len(types))
  sid_map = SIDMap(names, sizes, codes[perm], types[perm])
  base = draw(st.integers(0, 50))
  allowed = np.array([draw(st.booleans()) for _ in range(num_types)])
  return sid_map, SIDVocab(names, sizes, base), allowed


@jax.jit
def lookup_tables(trie: SIDTrie):
  """Per level, for every node and code: (admitted (n_l, kmax_l), child index (n_l, kmax_l))."""
  out = []
  for level in range(trie.num_levels):
    nodes_N = jnp.arange(trie.bitmaps[level].shape[0], dtype=jnp.int32)
    codes_NxK = jnp.broadcast_to(jnp.arange(trie.kmax[level], dtype=jnp.int32),
                                 nodes_N.shape + (trie.kmax[level],))
    out.append((codes_mask(trie, level, nodes_N),
                child_index(trie, level, jnp.broadcast_to(nodes_N[:, None], codes_NxK.shape),
                            codes_NxK)))
  return out


def walk(trie: SIDTrie, root_mask_TxK0: np.ndarray) -> dict[tuple[int, ...], int]:
  """All paths the trie admits from the given level-0 mask: (type, codes...) -> catalog row."""
  # One compiled call tabulates every lookup; the walk then follows the tables.
  tables = [(np.asarray(m), np.asarray(c)) for m, c in lookup_tables(trie)]
  frontier = [((t,), t) for t in range(trie.num_types)]  # (path so far, node)
  for level, (mask, children) in enumerate(tables):
    if level == 0:
      mask = mask & root_mask_TxK0
    frontier = [(path + (int(c),), int(children[node, c]))
                for path, node in frontier for c in np.flatnonzero(mask[node])]
  leaf_item = np.asarray(trie.leaf_item)
  return {path: int(leaf_item[leaf]) for path, leaf in frontier}


def catalog_paths(sid_map: SIDMap, allowed_types: np.ndarray | None = None):
  out = {}
  for n in np.flatnonzero(sid_map.reachable()):
    t = int(sid_map.type_index[n])
    if allowed_types is None or allowed_types[t]:
      out[(t,) + tuple(int(c) for c in sid_map.codes[n])] = int(n)
  return out


@hypothesis.settings(max_examples=30, deadline=None, derandomize=True)
@hypothesis.given(sid_maps())
def test_trie_admits_exactly_the_catalog(case):
  sid_map, vocab, allowed = case
  trie = SIDTrie.build(sid_map, vocab)
  assert trie.num_items == int(sid_map.reachable().sum())
  roots = np.asarray(root_codes_mask(trie, None, batch=1))[0]
  assert walk(trie, roots) == catalog_paths(sid_map)
  restricted = np.asarray(root_codes_mask(trie, jnp.asarray(allowed[None])))[0]
  assert walk(trie, restricted) == catalog_paths(sid_map, allowed)


def test_bitmap_words_and_rank_directory_at_known_values():
  # Type a: K=(2, 40), so level 1 has two words; codes 1, 33, 39 under prefix 0.
  sizes = {'a': (2, 40)}
  codes = np.array([[0, 39], [0, 1], [1, 5], [0, 33]], np.int32)
  sid_map = SIDMap(('a',), sizes, codes, np.zeros(4, np.int32))
  trie = SIDTrie.build(sid_map, SIDVocab(('a',), sizes, 0))
  np.testing.assert_array_equal(np.asarray(trie.bitmaps[0]), [[0b11]])
  np.testing.assert_array_equal(np.asarray(trie.bitmaps[1]),
                                [[1 << 1, (1 << 1) | (1 << 7)], [1 << 5, 0]])
  # Leaves in code order: (0,1) (0,33) (0,39) (1,5) -> catalog rows 1, 3, 0, 2.
  np.testing.assert_array_equal(np.asarray(trie.child_base[1]), [[0, 1], [3, 4]])
  np.testing.assert_array_equal(np.asarray(trie.leaf_item), [1, 3, 0, 2])


def test_vocab_arrays_match_sid_vocab():
  sizes = {'a': (3, 4), 'b': (5, 2)}
  vocab = SIDVocab(('a', 'b'), sizes, 100)
  arrays = SIDVocabArrays.from_vocab(vocab)
  for ti, t in enumerate(('a', 'b')):
    for l in range(2):
      assert int(arrays.offsets_TxL[ti, l]) == vocab.token_id(t, l, 0)
      assert int(arrays.sizes_TxL[ti, l]) == sizes[t][l]
  assert (arrays.open_id, arrays.close_id, arrays.base, arrays.end) == (100, 101, 100, 116)


@pytest.mark.parametrize('codes, types, message', [
    ([[0, 1], [0, 1]], [0, 0], 'share the SID'),
    ([[0, 4], [1, 1]], [0, 0], 'outside'),
    ([[0, -1], [1, 1]], [0, 0], 'partly -1'),
    ([[-1, -1]], [0], 'no reachable item'),
    ([[0, 1]], [2], 'type_index'),
])
def test_bad_maps_are_rejected(codes, types, message):
  sizes = {'a': (2, 4), 'b': (2, 4)}
  sid_map = SIDMap(('a', 'b'), sizes, np.array(codes, np.int32), np.array(types, np.int32))
  with pytest.raises(ValueError, match=message):
    SIDTrie.build(sid_map, SIDVocab(('a', 'b'), sizes, 0))


def test_map_and_vocab_must_agree():
  sid_map = SIDMap(('a',), {'a': (2, 4)}, np.array([[0, 1]], np.int32), np.zeros(1, np.int32))
  with pytest.raises(ValueError, match='level sizes'):
    SIDTrie.build(sid_map, SIDVocab(('a',), {'a': (2, 5)}, 0))
  with pytest.raises(ValueError, match='types'):
    SIDTrie.build(sid_map, SIDVocab(('b',), {'b': (2, 4)}, 0))


def test_allowed_types_mask():
  mask = allowed_types_mask(('book', 'movie', 'song'), ['movie', None, ('book', 'song')])
  np.testing.assert_array_equal(mask, [[False, True, False], [True, True, True],
                                       [True, False, True]])
  with pytest.raises(ValueError, match="unknown entity type 'film'"):
    allowed_types_mask(('book', 'movie'), ['film'])
