"""Serving with the layers unrolled (`UnrolledLayers`, `serving_model(unroll_layers=True)`) and
a prefill that computes only some head rows: the same hidden states, caches and rankings as the
stacked model under `lax.scan` and the full head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from neo_jax.decode.beam_search import first_level_tokens, sid_beam_search
from neo_jax.decode.cache import left_pad
from neo_jax.decode.interface import Constraints, prefill
from neo_jax.decode.ranker import (default_unroll_layers, search_batch, serving_dtype,
                                    serving_model)
from neo_jax.decode.trie import SIDTrie, SIDVocabArrays, request_filter
from neo_jax.model.config import get_config
from neo_jax.model.decoder import NEG_INF, Decoder, UnrolledLayers, run_layers
from neo_jax.model.lora import apply_lora
from neo_jax.run import config as config_lib
from neo_jax.sid.types import SIDMap
from neo_jax.tokenizer.sid_vocab import SIDVocab

TEXT_VOCAB = 40
SIZES = {'a': (6, 4, 3), 'b': (5, 5, 2)}


@pytest.fixture(scope='module')
def setup():
  rng = np.random.default_rng(0)
  codes, types = [], []
  for ti, t in enumerate(SIZES):
    flat = rng.choice(int(np.prod(SIZES[t])), size=40, replace=False)
    codes.append(np.stack(np.unravel_index(flat, SIZES[t]), axis=1))
    types.append(np.full(40, ti))
  sid_map = SIDMap(tuple(SIZES), SIZES, np.concatenate(codes).astype(np.int32),
                   np.concatenate(types).astype(np.int32))
  vocab = SIDVocab(tuple(SIZES), SIZES, TEXT_VOCAB)
  return vocab, SIDTrie.build(sid_map, vocab), SIDVocabArrays.from_vocab(vocab)


def _model(vocab, seed=0, lora=False, **overrides):
  cfg = get_config('tiny', vocab_size=vocab.end + 3, d_model=32, num_heads=4, num_kv_heads=2,
                   head_dim=8, mlp_dim=48, num_layers=3, **overrides)
  model = Decoder(cfg, rngs=nnx.Rngs(seed))
  if lora:
    model = apply_lora(model, rank=2, alpha=4.0, seed=1)
  state = nnx.state(model)
  # Sharper scores, and non-zero LoRA adapters so that their delta takes part.
  state = jax.tree.map(lambda x: x * 5 if x.ndim == 2 else (x + 0.05 if x.ndim >= 3 else x),
                       state)
  nnx.update(model, state)
  return model


def _prompts(vocab):
  rng = np.random.default_rng(4)
  prompts = [list(rng.integers(3, TEXT_VOCAB, n)) + [vocab.sid_open_id] for n in (3, 9, 6)]
  return tuple(jnp.asarray(x) for x in left_pad(prompts, 0))


def _unrolled(model):
  return nnx.merge(*serving_model(model, None, unroll_layers=True))


@pytest.mark.parametrize('variant', [dict(), dict(qkv_bias=True, qk_norm=True, lora=True)])
def test_unrolled_forward_and_cache_equal_the_scanned_ones(setup, variant):
  vocab, _, _ = setup
  model = _model(vocab, seed=2, **variant)
  served = _unrolled(model)
  assert isinstance(served.layers, UnrolledLayers) and served.layers.num_layers == 3
  assert not isinstance(model.layers, UnrolledLayers)  # the model itself is unchanged
  tokens, positions, valid = _prompts(vocab)
  np.testing.assert_allclose(served.hidden(tokens, positions), model.hidden(tokens, positions),
                             rtol=1e-5, atol=1e-5)
  outs = []
  for m in (model, served):
    cache = m.init_cache(tokens.shape[0], tokens.shape[1] + 2)
    h, cache = m.decode_hidden(tokens, positions, cache, valid)
    outs.append((h, cache.k, cache.v))
  for got, want in zip(outs[1], outs[0]):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Restacked, the weights are the (LoRA-merged) stacked ones.
  for name, arr in served.layers.stacked().items():
    np.testing.assert_allclose(arr, model.layers.stacked()[name], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('score', ['codes', 'vocab'])
def test_unrolled_search_program_ranks_as_scanned(setup, score):
  """The served program (`search_batch`: prefill, then the search with the beams reading the
  prompt cache in place) with unrolled layers returns the scanned model's items and scores."""
  vocab, trie, arrays = setup
  model = _model(vocab, seed=3, qkv_bias=True)
  request = request_filter(trie, excluded=[[0, 1, 2], [], [50, 60]], batch=3, width=4)
  constraints = Constraints(trie=trie, vocab=arrays, allowed_types_BxT=None, request=request)
  tokens, positions, valid = _prompts(vocab)
  got = []
  for unroll in (False, True):
    graphdef, state = serving_model(model, None, unroll_layers=unroll)
    got.append(jax.tree.map(np.asarray, search_batch(
        graphdef, state, constraints, tokens, positions, valid, num_beams=9, score=score)))
  np.testing.assert_array_equal(got[1][0], got[0][0])
  np.testing.assert_allclose(got[1][1], got[0][1], rtol=1e-5, atol=1e-4)
  assert (got[1][0][:, 0] >= 0).all()


def test_prefill_with_rows_computes_those_logits_only(setup):
  vocab, trie, arrays = setup
  model = _model(vocab, seed=4)
  tokens, positions, valid = _prompts(vocab)
  v = model.cfg.vocab_size
  rows = first_level_tokens(arrays, trie.kmax[0], v)
  full, cache_full = prefill(model, model.init_cache(3, tokens.shape[1]), tokens, positions,
                             valid)
  part, cache_part = prefill(model, model.init_cache(3, tokens.shape[1]), tokens, positions,
                             valid, rows=rows, vocab_size=v)
  got, want = np.asarray(part.logits_BxV), np.asarray(full.logits_BxV)
  on = np.zeros(v, bool)
  on[np.asarray(rows)] = True
  np.testing.assert_allclose(got[:, on], want[:, on], rtol=1e-5, atol=1e-5)
  assert (got[:, ~on] == NEG_INF).all() and on.sum() < v
  np.testing.assert_array_equal(cache_part.k, cache_full.k)
  # The 'codes' search reads only those rows: the same ranking from either prefill.
  constraints = Constraints(trie=trie, vocab=arrays, allowed_types_BxT=None, request=None)
  a, b = (jax.tree.map(np.asarray, sid_beam_search(model, c, p, constraints, 8, score='codes'))
          for p, c in ((full, cache_full), (part, cache_part)))
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='vocab_size'):
    prefill(model, model.init_cache(3, tokens.shape[1]), tokens, positions, valid, rows=rows)


def test_run_layers_and_unrolled_layers_checks():
  with pytest.raises(ValueError, match='number of layers'):
    UnrolledLayers({'a': jnp.zeros((2, 3)), 'b': jnp.zeros((3, 3))})
  layers = UnrolledLayers({'w': jnp.arange(3.0)[:, None] * jnp.ones((3, 2))})
  x, ys = run_layers(lambda x, xs: (x + xs[0]['w'], xs[1] * 2), jnp.zeros(2), layers,
                     (jnp.arange(3.0),))
  np.testing.assert_array_equal(x, [3.0, 3.0])
  np.testing.assert_array_equal(ys, [0.0, 2.0, 4.0])
  assert default_unroll_layers(None) is False and default_unroll_layers('float32') is False
  assert default_unroll_layers('bfloat16') == (jax.default_backend() == 'cpu')


def test_serving_precision_choices_and_the_config_key():
  cpu = jax.default_backend() == 'cpu'
  assert serving_dtype('auto') == ('bfloat16' if cpu else None)
  assert serving_dtype('model') is None
  assert serving_dtype('float32') == 'float32' and serving_dtype('bfloat16') == 'bfloat16'
  with pytest.raises(ValueError, match="unknown serving precision 'fp8'"):
    serving_dtype('fp8')
  cfg = config_lib.defaults()
  assert cfg.eval.dtype == 'auto'
  cfg.eval.dtype = 'half'
  with pytest.raises(config_lib.ConfigError, match='eval.dtype'):
    config_lib.validate(cfg)
