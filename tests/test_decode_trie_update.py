"""Catalog growth in place: `SIDTrie.add_items` with preallocated capacity, consistent with
removals and restores, checked against fresh builds and a reference Python set, no retracing."""

from __future__ import annotations

import collections

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neo_jax.decode.beam_search import sid_beam_search
from neo_jax.decode.cache import left_pad
from neo_jax.decode.interface import Constraints, prefill
from neo_jax.decode.testing import markov_cache
from neo_jax.decode.trie import SIDTrie, admissible_children
from neo_jax.sid.types import SIDMap
from trie_fixtures import ARRAYS, NAMES, SIZES, UNIVERSE, VOCAB, markov_model, shuffle

# Every possible SID, each owned by one catalog row (a fixed shuffle).
OWNER = shuffle(0)  # row of UNIVERSE[i]
SID_OF_ROW = {int(OWNER[i]): UNIVERSE[i] for i in range(len(UNIVERSE))}
ROW_CAPACITY = len(UNIVERSE) + 2  # two spare rows, used to try taking an existing SID
CAPACITY = 40
MAX_INITIAL = 18  # capacity - initial >= 22 = the most level-2 nodes: shapes never vary

MODEL = markov_model(1)
TRACES = collections.Counter()


def sid_map_of(rows) -> SIDMap:
  codes = np.full((len(UNIVERSE), 3), -1, np.int32)
  types = np.zeros(len(UNIVERSE), np.int32)
  for r in range(len(UNIVERSE)):
    types[r] = SID_OF_ROW[r][0]
  for r in rows:
    codes[r] = SID_OF_ROW[r][1]
  return SIDMap(NAMES, SIZES, codes, types)


def add(trie, rows, live=True):
  rows = list(rows)
  codes = np.array([SID_OF_ROW[r][1] for r in rows], np.int32).reshape(-1, 3)
  types = np.array([SID_OF_ROW[r][0] for r in rows], np.int32)
  return trie.add_items(np.array(rows, np.int64), codes, types, live=live)


@jax.jit
def search_all(trie, cache, pre):
  """Beam search with more beams than leaf slots: returns every admissible item."""
  TRACES['search'] += 1
  return sid_beam_search(MODEL, cache, pre, Constraints(trie, ARRAYS), CAPACITY)


@jax.jit
def admissible_tables(trie):
  """Per level, (ok, child) of every node row and code, as the decoding masks see them."""
  TRACES['tables'] += 1
  out = []
  for level in range(trie.num_levels):
    nodes = jnp.arange(trie.bitmaps[level].shape[0], dtype=jnp.int32)
    out.append(admissible_children(trie, level, nodes[:, None]))
  return out


def admissible_paths(trie) -> dict:
  """{(type, codes): catalog row} of every SID the masks let decoding complete."""
  tables = [(np.asarray(ok)[:, 0], np.asarray(child)[:, 0])
            for ok, child in admissible_tables(trie)]
  frontier = [((t,), t) for t in range(trie.num_types)]
  for ok, child in tables:
    frontier = [(path + (int(c),), int(child[node, c]))
                for path, node in frontier for c in np.flatnonzero(ok[node])]
  leaf_item = np.asarray(trie.leaf_item)
  return {(p[0], p[1:]): int(leaf_item[leaf]) for p, leaf in frontier}


@pytest.fixture(scope='module')
def prompt():
  tokens, positions, valid = left_pad([[1, 2, VOCAB.sid_open_id]], 0)
  cache = markov_cache(1, tokens.shape[1] + 3)
  return prefill(MODEL, cache, jnp.asarray(tokens), jnp.asarray(positions),
                 jnp.asarray(valid))


@st.composite
def scenarios(draw):
  rows = list(range(len(UNIVERSE)))
  initial = draw(st.lists(st.sampled_from(rows), min_size=1, max_size=MAX_INITIAL,
                          unique=True))
  ops = draw(st.lists(st.tuples(st.sampled_from(['add', 'add', 'remove', 'restore', 'steal']),
                                st.lists(st.sampled_from(rows), max_size=12, unique=True),
                                st.booleans()),
                      min_size=1, max_size=5))
  return initial, ops


@hypothesis.settings(max_examples=20, deadline=None, derandomize=True)
@hypothesis.given(scenarios())
def test_adds_removes_restores_match_a_reference_set_without_retracing(prompt, scenario):
  initial, ops = scenario
  pre, cache = prompt
  trie = SIDTrie.build(sid_map_of(initial), VOCAB, capacity=CAPACITY, row_capacity=ROW_CAPACITY)
  shapes = jax.tree.map(jnp.shape, trie)
  present, live = set(initial), set(initial)  # the reference

  def check(trie):
    assert jax.tree.map(jnp.shape, trie) == shapes
    expected = {SID_OF_ROW[r]: r for r in live}
    assert admissible_paths(trie) == expected
    items, _ = search_all(trie, cache, pre)
    items = np.asarray(items)[0]
    assert sorted(items[items >= 0].tolist()) == sorted(live)
    assert trie.num_live == len(live) and trie.num_leaves == len(present)

  check(trie)
  traces = dict(TRACES)  # compiled once (for these shapes); no update may retrace
  for kind, rows, flag in ops:
    if kind == 'add':
      new = [r for r in rows if r not in present]
      if len(present) + len(new) > CAPACITY:
        need = len(present) + len(new)
        with pytest.raises(ValueError, match=f'capacity exhausted.*capacity>={need}'):
          add(trie, new, flag)
        continue
      trie = add(trie, new, live=flag)
      present |= set(new)
      live |= set(new) if flag else set()
    elif kind == 'steal':  # a spare row asks for an SID some row already holds
      held = [r for r in rows if r in present]
      if not held:
        continue
      with pytest.raises(ValueError, match=f'already held by catalog row {held[0]}'):
        trie.add_items([len(UNIVERSE)], [SID_OF_ROW[held[0]][1]], [SID_OF_ROW[held[0]][0]])
      continue
    else:
      rows = [r for r in rows if r in present]
      trie = trie.set_live(rows, kind == 'restore') if rows else trie
      live = (live | set(rows)) if kind == 'restore' else (live - set(rows))
    check(trie)
  assert dict(TRACES) == traces


@hypothesis.settings(max_examples=25, deadline=None, derandomize=True)
@hypothesis.given(st.data())
def test_added_trie_equals_a_fresh_build(data):
  """The in-place inserts produce exactly the arrays a from-scratch sorted build gives."""
  rows = data.draw(st.lists(st.sampled_from(range(len(UNIVERSE))), min_size=2,
                            max_size=len(UNIVERSE), unique=True))
  cut = data.draw(st.integers(1, len(rows) - 1))
  cut2 = data.draw(st.integers(cut, len(rows)))
  trie = SIDTrie.build(sid_map_of(rows[:cut]), VOCAB, capacity=len(UNIVERSE))
  trie = add(add(trie, rows[cut:cut2]), rows[cut2:])
  fresh = SIDTrie.build(sid_map_of(rows), VOCAB)
  counts = trie.used_counts()
  assert counts == fresh.used_counts()
  for l in range(3):
    np.testing.assert_array_equal(np.asarray(trie.bitmaps[l])[:counts[l]], fresh.bitmaps[l])
    np.testing.assert_array_equal(np.asarray(trie.child_base[l])[:counts[l]],
                                  fresh.child_base[l])
    # Unused rows: empty, and pointing past the used children.
    assert not np.asarray(trie.bitmaps[l])[counts[l]:].any()
    assert (np.asarray(trie.child_base[l])[counts[l]:] == counts[l + 1]).all()
  n = counts[-1]
  np.testing.assert_array_equal(np.asarray(trie.leaf_item)[:n], fresh.leaf_item)
  assert (np.asarray(trie.leaf_item)[n:] == -1).all()
  np.testing.assert_array_equal(np.asarray(trie.item_leaf)[:len(UNIVERSE)], fresh.item_leaf)
  np.testing.assert_array_equal(np.asarray(trie.live_prefix)[:n + 1], fresh.live_prefix)


def test_capacity_default_and_row_capacity():
  trie = SIDTrie.build(sid_map_of([0, 1, 2]), VOCAB, capacity=5)
  assert trie.num_items == 5 and trie.num_rows == len(UNIVERSE) + 2 and trie.num_leaves == 3
  grown = add(trie, [3, 4])
  assert grown.num_leaves == 5 and grown.num_live == 5
  with pytest.raises(ValueError, match='capacity exhausted.*6 leaf slots needed, has 5'):
    add(grown, [5])
  with pytest.raises(ValueError, match='below the 3 items'):
    SIDTrie.build(sid_map_of([0, 1, 2]), VOCAB, capacity=2)


def test_added_items_removed_and_restored_and_added_dead():
  trie = SIDTrie.build(sid_map_of([0, 1]), VOCAB, capacity=6)
  trie = add(trie, [2, 3], live=False)
  assert set(admissible_paths(trie).values()) == {0, 1}
  trie = trie.set_live([3], True).set_live([0], False)
  assert set(admissible_paths(trie).values()) == {1, 3}
  with pytest.raises(ValueError, match=r'catalog rows \[0\] are in the trie already'):
    add(trie, [0])  # removed, not gone: it comes back with set_live


def test_bad_additions_are_rejected():
  trie = SIDTrie.build(sid_map_of([0]), VOCAB, capacity=8)
  t, codes = SID_OF_ROW[5]
  bad_code = list(codes)
  bad_code[1] = SIZES[NAMES[t]][1]
  with pytest.raises(ValueError, match='give types'):
    trie.add_items([5], [codes])
  with pytest.raises(ValueError, match='at level 1 is outside'):
    trie.add_items([5], [bad_code], [t])
  with pytest.raises(ValueError, match='outside'):
    trie.add_items([trie.num_rows], [codes], [t])
  with pytest.raises(ValueError, match='share the SID'):
    trie.add_items([5, 6], [codes, codes], [t, t])
  with pytest.raises(ValueError, match='given twice'):
    add(trie, [5, 5])
  with pytest.raises(ValueError, match=r'sids must be \(1, 3\)'):
    trie.add_items([5], [codes[:2]], [t])
  assert add(trie, []) is trie
