"""Trie support for fresh items: growing the capacity when the slack is spent, and an
allow-set shared by a batch (`SIDTrie.only`) served without recompiling."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neo_jax.decode.beam_search import sid_beam_search
from neo_jax.decode.cache import left_pad
from neo_jax.decode.interface import Constraints, prefill
from neo_jax.decode.testing import markov_cache
from neo_jax.decode.trie import SIDTrie, lookup_items
from neo_jax.sid.types import SIDMap
from trie_fixtures import ARRAYS, NAMES, SIZES, UNIVERSE, VOCAB, markov_model, shuffle

ORDER = shuffle(3)  # row r holds UNIVERSE[ORDER[r]]
MODEL = markov_model(4)
TRACES = collections.Counter()


def sid_map_of(n_rows: int) -> SIDMap:
  codes = np.array([UNIVERSE[ORDER[r]][1] for r in range(n_rows)], np.int32)
  types = np.array([UNIVERSE[ORDER[r]][0] for r in range(n_rows)], np.int32)
  return SIDMap(NAMES, SIZES, codes, types)


def all_lookups(trie):
  types = np.array([u[0] for u in UNIVERSE])
  codes = np.array([u[1] for u in UNIVERSE])
  return lookup_items(trie, types, codes, live_only=True)


def used_arrays(trie):
  counts = trie.used_counts()
  return ([np.asarray(b)[:counts[l]] for l, b in enumerate(trie.bitmaps)]
          + [np.asarray(c)[:counts[l]] for l, c in enumerate(trie.child_base)]
          + [np.asarray(trie.leaf_item)[:counts[-1]]])


def add_rows(trie, rows):
  rows = np.asarray(rows, np.int64)
  codes = np.array([UNIVERSE[ORDER[r]][1] for r in rows], np.int64).reshape(-1, 3)
  types = np.array([UNIVERSE[ORDER[r]][0] for r in rows], np.int64)
  return trie.add_items(rows, codes, types)


def test_grow_then_add_equals_a_fresh_build():
  trie = SIDTrie.build(sid_map_of(10), VOCAB, row_capacity=12)  # no slack for items
  with pytest.raises(ValueError, match='capacity exhausted'):
    add_rows(trie, [10])
  trie = trie.set_live([3], False)
  grown = trie.grow(2 * trie.num_items)
  assert grown.num_items == 20 and grown.num_rows == 22
  np.testing.assert_array_equal(all_lookups(grown), all_lookups(trie))
  for a, b in zip(used_arrays(grown), used_arrays(trie)):
    np.testing.assert_array_equal(a, b)
  grown = add_rows(grown, range(10, 20))
  fresh = SIDTrie.build(sid_map_of(20), VOCAB).set_live([3], False)
  for a, b in zip(used_arrays(grown), used_arrays(fresh)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(all_lookups(grown), all_lookups(fresh))
  assert grown.live_rows().tolist() == [r for r in range(20) if r != 3]
  with pytest.raises(ValueError, match='below the current'):
    grown.grow(5)


@jax.jit
def search_all(trie, cache, pre):
  TRACES['search'] += 1
  return sid_beam_search(MODEL, cache, pre, Constraints(trie, ARRAYS), 24)


def test_only_restricts_generation_to_an_allow_set_without_recompiling():
  tokens, positions, valid = left_pad([[1, 2, VOCAB.sid_open_id]], 0)
  cache = markov_cache(1, tokens.shape[1] + 3)
  pre, cache = prefill(MODEL, cache, jnp.asarray(tokens), jnp.asarray(positions),
                       jnp.asarray(valid))
  trie = SIDTrie.build(sid_map_of(20), VOCAB, capacity=24).set_live([5], False)
  items, _ = search_all(trie, cache, pre)
  got = np.asarray(items)[0]
  assert sorted(got[got >= 0].tolist()) == [r for r in range(20) if r != 5]
  traces = TRACES['search']
  allow = [1, 5, 7, 18]  # 5 is removed: it stays out
  only = trie.only(allow)
  items, _ = search_all(only, cache, pre)
  got = np.asarray(items)[0]
  assert sorted(got[got >= 0].tolist()) == [1, 7, 18]
  assert TRACES['search'] == traces  # same shapes: the compiled search served it
  assert only.live_rows().tolist() == [1, 7, 18]
  assert trie.live_rows().size == 19  # the original is untouched
  with pytest.raises(ValueError, match='outside'):
    trie.only([99])
