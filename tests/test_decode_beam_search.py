"""Trie-constrained beam search equals exhaustive enumeration under a fixed-table Markov model."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import hypothesis
import hypothesis.strategies as st

from neo_jax.decode.beam_search import NEG_INF, sid_beam_search, vocab_beam_search
from neo_jax.decode.cache import left_pad
from neo_jax.decode.interface import Constraints, Prefill, prefill
from neo_jax.decode.testing import markov_cache, markov_lm, markov_logits
from neo_jax.decode.trie import SIDTrie, SIDVocabArrays, request_filter
from neo_jax.sid.types import SIDMap
from neo_jax.tokenizer.sid_vocab import SIDVocab

TEXT_VOCAB = 6
PAD = 0


def log_softmax(x):
  x = x - x.max()
  return x - np.log(np.exp(x).sum())


def random_catalog(rng, sizes, counts):
  """Random distinct SIDs: counts[t] items of type t, rows shuffled."""
  names = tuple(sizes)
  codes, types = [], []
  for ti, t in enumerate(names):
    flat = rng.choice(int(np.prod(sizes[t])), size=counts[ti], replace=False)
    codes.append(np.stack(np.unravel_index(flat, sizes[t]), axis=1))
    types.append(np.full(counts[ti], ti))
  codes = np.concatenate(codes).astype(np.int32)
  types = np.concatenate(types).astype(np.int32)
  perm = rng.permutation(len(types))
  return SIDMap(names, sizes, codes[perm], types[perm])


def code_log_softmax(logits, vocab, level, type_name=None):
  """log-softmax over the real level-`level` codes (of one type, or of all types at level 0)."""
  names = vocab.type_names if type_name is None else (type_name,)
  toks = [vocab.token_id(t, level, c) for t in names for c in range(vocab.level_sizes[t][level])]
  out = np.full(logits.shape, -np.inf)
  out[toks] = log_softmax(logits[toks])
  return out


def exhaustive(sid_map, vocab, tables, prompt, allowed_types, keep=None, score_mode='vocab'):
  """Every admissible item (of an allowed type, in `keep` when given) scored by the numpy
  chain, best first: [(score, row)]."""
  first, second, position = tables
  out = []
  for n in range(len(sid_map)):
    t = int(sid_map.type_index[n])
    if not allowed_types[t] or (keep is not None and n not in keep):
      continue
    history, score = list(prompt), 0.0
    for l, c in enumerate(sid_map.codes[n]):
      tok = vocab.token_id(sid_map.type_names[t], l, int(c))
      logits = markov_logits(first, second, history, position)
      if score_mode == 'vocab':
        score += log_softmax(logits)[tok]
      else:
        score += code_log_softmax(logits, vocab, l, None if l == 0 else sid_map.type_names[t])[tok]
      history.append(tok)
    out.append((score, n))
  return sorted(out, reverse=True)


def reference_beam_search(sid_map, vocab, tables, prompt, allowed_types, num_beams):
  """A plain-Python beam search over the SID map's prefixes (no trie): [(score, row)]."""
  first, second, position = tables
  paths = {}
  for n in range(len(sid_map)):
    if allowed_types[int(sid_map.type_index[n])]:
      paths[(int(sid_map.type_index[n]),) + tuple(int(c) for c in sid_map.codes[n])] = n
  beams = [(0.0, list(prompt), ())]
  for level in range(sid_map.num_levels):
    candidates = []
    for score, history, path in beams:
      logp = log_softmax(markov_logits(first, second, history, position))
      # path is (type, c_0..c_{level-1}), or () before the first code.
      nexts = sorted({p[:level + 2] for p in paths if p[:len(path)] == path})
      for nxt in nexts:
        tok = vocab.token_id(sid_map.type_names[nxt[0]], level, nxt[-1])
        candidates.append((score + logp[tok], history + [tok], nxt))
    beams = sorted(candidates, key=lambda c: -c[0])[:num_beams]
  return [(score, paths[path]) for score, _, path in beams]


@pytest.fixture(scope='module')
def setup():
  rng = np.random.default_rng(0)
  sizes = {'a': (3, 4, 2), 'b': (5, 2, 3)}
  sid_map = random_catalog(rng, sizes, counts=(14, 20))
  vocab = SIDVocab(('a', 'b'), sizes, TEXT_VOCAB)
  v = vocab.end + 2  # logits wider than the SID block, as with a padded vocabulary
  first = rng.normal(0, 2, (v, v)).astype(np.float32)
  second = rng.normal(0, 2, (v, v)).astype(np.float32)
  position = rng.normal(0, 2, (5, v)).astype(np.float32)
  model = markov_lm(first, second, position)
  prompts = [[1, 2, vocab.sid_open_id], [3, vocab.sid_open_id],
             [4, 5, 1, 2, vocab.sid_open_id]]
  allowed = np.array([[True, True], [True, False], [False, True]])
  tokens, positions, valid = left_pad(prompts, PAD)
  cache = markov_cache(len(prompts), tokens.shape[1] + sid_map.num_levels)
  pre, cache = prefill(model, cache, jnp.asarray(tokens), jnp.asarray(positions),
                       jnp.asarray(valid))
  return dict(sid_map=sid_map, vocab=vocab, tables=(first, second, position),
              model=model, prompts=prompts, allowed=allowed, cache=cache, prefill=pre,
              trie=SIDTrie.build(sid_map, vocab), arrays=SIDVocabArrays.from_vocab(vocab))


def constraints(s, trie=None, allowed=None, request=None):
  return Constraints(trie=s['trie'] if trie is None else trie, vocab=s['arrays'],
                     allowed_types_BxT=None if allowed is None else jnp.asarray(allowed),
                     request=request)


@pytest.mark.parametrize('num_beams', [1, 7, 30])
def test_beam_search_matches_reference_and_exhaustive_enumeration(setup, num_beams):
  s = setup
  items, scores = sid_beam_search(s['model'], s['cache'], s['prefill'],
                                  constraints(s, allowed=s['allowed']), num_beams)
  items, scores = np.asarray(items), np.asarray(scores)
  assert items.shape == scores.shape == (len(s['prompts']), num_beams)
  for b, prompt in enumerate(s['prompts']):
    top = reference_beam_search(s['sid_map'], s['vocab'], s['tables'], prompt,
                                s['allowed'][b], num_beams)
    if num_beams == 30:
      # 30 beams exceed the number of prefixes at every level but the last, so nothing is
      # pruned and the search must return the exhaustive top 30.
      ref = exhaustive(s['sid_map'], s['vocab'], s['tables'], prompt,
                       s['allowed'][b])
      assert [n for _, n in top] == [n for _, n in ref[:num_beams]]
    np.testing.assert_array_equal(items[b, :len(top)], [n for _, n in top])
    np.testing.assert_allclose(scores[b, :len(top)], [x for x, _ in top], rtol=1e-5, atol=1e-4)
    # Fewer admissible items than beams: the rest are -1 / NEG_INF.
    np.testing.assert_array_equal(items[b, len(top):], -1)
    np.testing.assert_array_equal(scores[b, len(top):], np.float32(NEG_INF))


def test_all_types_allowed_by_default(setup):
  s = setup
  items, _ = sid_beam_search(s['model'], s['cache'], s['prefill'], constraints(s), 7)
  for b, prompt in enumerate(s['prompts']):
    ref = reference_beam_search(s['sid_map'], s['vocab'], s['tables'], prompt,
                                [True, True], 7)
    np.testing.assert_array_equal(np.asarray(items[b]), [n for _, n in ref])


def greedy_trap():
  """A chain where the greedy first code leads to a worse item than the beam finds.

  One type, K=(2, 2), items (0,0)=row 0, (0,1)=row 1, (1,0)=row 2. After `[SID]` code 0 has
  p=0.6, code 1 p=0.4; after code 0 the second codes have p=0.55/0.45, after code 1 p=0.9/0.1.
  Best item: (1,0) with 0.36; greedy takes (0,0) with 0.33.
  """
  sizes = {'a': (2, 2)}
  vocab = SIDVocab(('a',), sizes, 2)
  sid_map = SIDMap(('a',), sizes, np.array([[0, 0], [0, 1], [1, 0]], np.int32),
                   np.zeros(3, np.int32))
  v = vocab.end
  table = np.full((v, v), -1e4, np.float32)
  c0 = [vocab.token_id('a', 0, c) for c in range(2)]
  c1 = [vocab.token_id('a', 1, c) for c in range(2)]
  table[vocab.sid_open_id, c0] = np.log([0.6, 0.4])
  table[c0[0], c1] = np.log([0.55, 0.45])
  table[c0[1], c1] = np.log([0.9, 0.1])
  return sid_map, vocab, table


def test_beam_finds_the_item_greedy_misses():
  sid_map, vocab, table = greedy_trap()
  model = markov_lm(table)
  tokens, positions, valid = left_pad([[1, vocab.sid_open_id]], PAD)
  trie, arrays = SIDTrie.build(sid_map, vocab), SIDVocabArrays.from_vocab(vocab)
  results = {}
  for k in (1, 2):
    cache = markov_cache(1, 4)
    pre, cache = prefill(model, cache, jnp.asarray(tokens), jnp.asarray(positions),
                         jnp.asarray(valid))
    items, scores = sid_beam_search(model, cache, pre, Constraints(trie, arrays), k)
    results[k] = (np.asarray(items)[0], np.asarray(scores)[0])
  np.testing.assert_array_equal(results[1][0], [0])
  np.testing.assert_allclose(results[1][1], np.log([0.6 * 0.55]), rtol=1e-5)
  np.testing.assert_array_equal(results[2][0], [2, 0])
  np.testing.assert_allclose(results[2][1], np.log([0.4 * 0.9, 0.6 * 0.55]), rtol=1e-5)


def test_bad_shapes_are_rejected(setup):
  s = setup
  with pytest.raises(ValueError, match='allowed_types_BxT'):
    sid_beam_search(s['model'], s['cache'], s['prefill'],
                    constraints(s, allowed=np.ones((3, 5), bool)), 3)
  with pytest.raises(ValueError, match='SID block ends'):
    short = Prefill(s['prefill'].logits_BxV[:, :10], s['prefill'].positions_B)
    sid_beam_search(s['model'], s['cache'], short, constraints(s), 3)
  # A bare step function (the old calling convention) is not a DecodingModel.
  with pytest.raises(TypeError, match='decode_hidden'):
    sid_beam_search(s['model'].decode_hidden, s['cache'], s['prefill'], constraints(s), 3)


def _search(s, trie, num_beams, allowed, request=None, **kwargs):
  items, scores = sid_beam_search(s['model'], s['cache'], s['prefill'],
                                  constraints(s, trie, allowed, request), num_beams, **kwargs)
  return np.asarray(items), np.asarray(scores)


def test_code_scores_equal_exhaustive(setup):
  """score='codes' (level-normalised, through the rows-only LM head) equals exhaustive scoring
  with the same normalisation when the beams cover every item."""
  s = setup
  items, scores = _search(s, s['trie'], 40, s['allowed'], score='codes')
  for b, prompt in enumerate(s['prompts']):
    ref = exhaustive(s['sid_map'], s['vocab'], s['tables'], prompt, s['allowed'][b],
                     score_mode='codes')
    np.testing.assert_array_equal(items[b, :len(ref)], [n for _, n in ref])
    np.testing.assert_allclose(scores[b, :len(ref)], [x for x, _ in ref], rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(items[b, len(ref):], -1)


@hypothesis.settings(max_examples=25, deadline=None, derandomize=True)
@hypothesis.given(data=st.data())
def test_filtered_beam_search_equals_exhaustive_on_filtered_catalog(setup, data):
  """Random removals, exclusions, allow-lists and allowed types: with more beams than items
  the search returns exactly the admissible items, ranked as exhaustive search ranks them
  (so no inadmissible item ever appears and no admissible one is lost)."""
  s = setup
  n = len(s['sid_map'])
  rows = st.lists(st.integers(0, n - 1), max_size=6)
  removed = data.draw(rows)
  excluded = [data.draw(rows) for _ in s['prompts']]
  allow = [data.draw(st.one_of(st.none(), rows)) for _ in s['prompts']]
  allowed = np.array([[data.draw(st.booleans()) for _ in range(2)] for _ in s['prompts']])
  trie = s['trie'].set_live(removed, False) if removed else s['trie']
  request = request_filter(trie, excluded=excluded, allowed=allow, width=6)
  items, scores = _search(s, trie, 40, allowed, request=request)
  for b, prompt in enumerate(s['prompts']):
    keep = (set(range(n)) - set(removed) - set(excluded[b])) & set(
        range(n) if allow[b] is None else allow[b])
    ref = exhaustive(s['sid_map'], s['vocab'], s['tables'], prompt, allowed[b], keep)
    got = items[b][items[b] >= 0].tolist()
    assert got == [r for _, r in ref]
    np.testing.assert_allclose(scores[b, :len(ref)], [x for x, _ in ref], rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(items[b, len(ref):], -1)


def test_removed_items_are_never_returned_and_restore_works(setup):
  s = setup
  full, _ = _search(s, s['trie'], 7, s['allowed'])
  gone = sorted({int(x) for x in full[:, :3].ravel() if x >= 0})
  trie = s['trie'].set_live(gone, False)
  assert trie.num_live == len(s['sid_map']) - len(gone)
  items, _ = _search(s, trie, 7, s['allowed'])
  assert not set(items.ravel().tolist()) & set(gone)
  back, _ = _search(s, trie.set_live(gone, True), 7, s['allowed'])
  np.testing.assert_array_equal(back, full)
  with pytest.raises(ValueError, match='outside'):
    s['trie'].set_live([len(s['sid_map'])], False)


def test_vocab_beam_search_matches_brute_force(setup):
  """The unconstrained baseline: with K >= V the first step keeps every token; 2 steps."""
  s = setup
  v = s['prefill'].logits_BxV.shape[1]
  tokens, scores = vocab_beam_search(s['model'], s['cache'], s['prefill'], v, 2)
  first, second, position = s['tables']
  for b, prompt in enumerate(s['prompts']):
    lp0 = log_softmax(markov_logits(first, second, prompt, position))
    best = sorted(((lp0[a] + log_softmax(markov_logits(first, second, prompt + [a],
                                                       position))[c], a, c)
                   for a in range(v) for c in range(v)), reverse=True)[:v]
    np.testing.assert_array_equal(np.asarray(tokens[b]), [[a, c] for _, a, c in best])
    np.testing.assert_allclose(np.asarray(scores[b]), [x for x, _, _ in best], rtol=1e-5,
                               atol=1e-4)
