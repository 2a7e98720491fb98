"""Beams that read the prompt's cache in place (shared_prompt.SharedPromptDecoder) rank exactly
as beams that each copy it (the reference path), on tiny random decoders."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from neo_jax.decode.beam_search import code_beam_search, sid_beam_search, vocab_beam_search
from neo_jax.decode.cache import left_pad
from neo_jax.decode.interface import BeamStepModel, Constraints, prefill
from neo_jax.decode.shared_prompt import SharedPromptDecoder, beam_model, gather_beams
from neo_jax.decode.trie import SIDTrie, SIDVocabArrays, request_filter
from neo_jax.model.config import get_config
from neo_jax.model.decoder import Decoder
from neo_jax.model.lora import apply_lora
from neo_jax.sid.types import SIDMap
from neo_jax.tokenizer.sid_vocab import SIDVocab

TEXT_VOCAB = 40
SIZES = {'a': (6, 4, 3), 'b': (5, 5, 2)}


def _catalog(rng):
  codes, types = [], []
  for ti, t in enumerate(SIZES):
    flat = rng.choice(int(np.prod(SIZES[t])), size=40, replace=False)
    codes.append(np.stack(np.unravel_index(flat, SIZES[t]), axis=1))
    types.append(np.full(40, ti))
  return SIDMap(tuple(SIZES), SIZES, np.concatenate(codes).astype(np.int32),
                np.concatenate(types).astype(np.int32))


def _model(vocab, seed=0, **overrides):
  cfg = get_config('tiny', vocab_size=vocab.end + 3, d_model=32, num_heads=4, num_kv_heads=2,
                   head_dim=8, mlp_dim=48, **overrides)
  model = Decoder(cfg, rngs=nnx.Rngs(seed))
  state = nnx.state(model)
  state['embed_tokens'].set_value(state['embed_tokens'].get_value() * 5)  # sharper scores
  nnx.update(model, state)
  return model


def _prefilled(model, vocab, room):
  rng = np.random.default_rng(4)
  prompts = [list(rng.integers(3, TEXT_VOCAB, n)) + [vocab.sid_open_id] for n in (3, 9, 6)]
  tokens, positions, valid = (jnp.asarray(x) for x in left_pad(prompts, 0))
  cache = model.init_cache(len(prompts), tokens.shape[1] + room)
  return prefill(model, cache, tokens, positions, valid)


@pytest.fixture(scope='module')
def setup():
  rng = np.random.default_rng(0)
  sid_map = _catalog(rng)
  vocab = SIDVocab(tuple(SIZES), SIZES, TEXT_VOCAB)
  trie = SIDTrie.build(sid_map, vocab)
  return sid_map, vocab, trie, SIDVocabArrays.from_vocab(vocab)


def _both(model, vocab, trie, arrays, k, score, allowed=None, request=None):
  pre, cache = _prefilled(model, vocab, room=trie.num_levels)
  constraints = Constraints(trie=trie, vocab=arrays, allowed_types_BxT=allowed, request=request)
  return [jax.tree.map(np.asarray, sid_beam_search(model, cache, pre, constraints, k,
                                                   score=score, shared_prompt=shared))
          for shared in (True, False)]


@pytest.mark.parametrize('score', ['vocab', 'codes'])
@pytest.mark.parametrize('k', [1, 7, 30])
def test_shared_prompt_ranks_as_copied_prompt(setup, score, k):
  sid_map, vocab, trie, arrays = setup
  model = _model(vocab)
  allowed = jnp.asarray([[True, True], [True, False], [False, True]])
  request = request_filter(trie, excluded=[[0, 1, 2], [], [50, 60]], batch=3, width=4)
  (items, scores), (ref_items, ref_scores) = _both(model, vocab, trie, arrays, k, score,
                                                   allowed, request)
  np.testing.assert_array_equal(items, ref_items)
  np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-4)
  assert (items[:, 0] >= 0).all()


def test_shared_prompt_with_biases_qk_norm_and_lora(setup):
  """The Qwen-style block (qkv biases, q/k norms) and LoRA layers go through the same step."""
  _, vocab, trie, arrays = setup
  model = _model(vocab, seed=2, qkv_bias=True, qk_norm=True)
  model = apply_lora(model, rank=2, alpha=4.0, seed=1)
  state = nnx.state(model)
  # Non-zero adapters, so that the LoRA delta takes part.
  state = jax.tree.map(lambda x: x + 0.05 if x.ndim >= 3 else x, state)
  nnx.update(model, state)
  (items, scores), (ref_items, ref_scores) = _both(model, vocab, trie, arrays, 12, 'codes')
  np.testing.assert_array_equal(items, ref_items)
  np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-4)


def test_vocab_beam_search_shared_equals_copied(setup):
  _, vocab, _, _ = setup
  model = _model(vocab, seed=5)
  pre, cache = _prefilled(model, vocab, room=4)
  got = [jax.tree.map(np.asarray, vocab_beam_search(model, cache, pre, 6, 4, shared_prompt=s))
         for s in (True, False)]
  np.testing.assert_array_equal(got[0][0], got[1][0])
  np.testing.assert_allclose(got[0][1], got[1][1], rtol=1e-5, atol=1e-4)


def test_beam_step_equals_decode_hidden_on_a_copied_cache(setup):
  """One step of K beams: the hidden states equal the decoder's on per-beam copies."""
  _, vocab, _, _ = setup
  model = _model(vocab, seed=7)
  pre, cache = _prefilled(model, vocab, room=2)
  shared = SharedPromptDecoder(model)
  assert isinstance(shared, BeamStepModel) and beam_model(model) is not None
  b, k = 3, 4
  tokens = jnp.asarray(np.random.default_rng(1).integers(3, TEXT_VOCAB, (b, k)), jnp.int32)
  positions = jnp.broadcast_to(pre.positions_B[:, None] + 1, (b, k))
  h, beams = shared.beam_step(tokens, positions, cache, shared.init_beam_cache(b, k, 2))
  copied = jax.tree.map(lambda x: jnp.repeat(x, k, axis=1) if x.ndim == 5 else
                        (jnp.repeat(x, k, axis=0) if x.ndim == 2 else x), cache)
  ref, _ = model.decode_hidden(tokens.reshape(-1, 1), positions.reshape(-1, 1), copied,
                               jnp.ones((b * k, 1), bool))
  np.testing.assert_allclose(np.asarray(h).reshape(b * k, -1), np.asarray(ref)[:, 0],
                             rtol=1e-5, atol=1e-5)
  assert int(beams.end) == 1
  # Reordering beams moves their decoded keys with them, within each request.
  parent = jnp.asarray([[3, 3, 0, 1]] * b, jnp.int32)
  moved = gather_beams(beams, parent)
  np.testing.assert_array_equal(np.asarray(moved.k)[:, :, 0], np.asarray(beams.k)[:, :, 3])
  np.testing.assert_array_equal(np.asarray(moved.k)[:, :, 2], np.asarray(beams.k)[:, :, 0])


def test_shared_step_refuses_mismatched_caches(setup):
  _, vocab, _, _ = setup
  model = _model(vocab)
  pre, cache = _prefilled(model, vocab, room=2)
  shared = SharedPromptDecoder(model)
  with pytest.raises(ValueError, match='requests x'):
    shared.beam_step(jnp.zeros((2, 4), jnp.int32), jnp.zeros((2, 4), jnp.int32), cache,
                     shared.init_beam_cache(2, 4, 2))
  with pytest.raises(TypeError, match='Decoder'):
    SharedPromptDecoder(object())


@pytest.mark.parametrize('score', ['vocab', 'codes'])
def test_code_beam_search_equals_trie_search_over_a_full_catalog(score):
  """Unconstrained SID decoding of one type (no trie) equals the trie-constrained search when
  the catalog holds every SID of that type."""
  sizes = {'x': (4, 3, 2)}
  vocab = SIDVocab(('x',), sizes, TEXT_VOCAB)
  codes = np.stack(np.unravel_index(np.arange(24), sizes['x']), axis=1).astype(np.int32)
  sid_map = SIDMap(('x',), sizes, codes, np.zeros(24, np.int32))
  trie = SIDTrie.build(sid_map, vocab)
  arrays = SIDVocabArrays.from_vocab(vocab)
  model = _model(vocab, seed=9)
  pre, cache = _prefilled(model, vocab, room=3)
  items, scores = sid_beam_search(model, cache, pre, Constraints(trie=trie, vocab=arrays), 10,
                                  score=score)
  tokens, code_scores = code_beam_search(model, cache, pre, arrays.offsets_TxL[0], sizes['x'],
                                         10, score=score)
  got = np.asarray(tokens) - np.asarray(arrays.offsets_TxL[0])[None, None, :]
  want = codes[np.asarray(items)]
  np.testing.assert_array_equal(got, want)
  np.testing.assert_allclose(np.asarray(code_scores), np.asarray(scores), rtol=1e-5, atol=1e-4)
