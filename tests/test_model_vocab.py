"""Vocabulary extension and the grounding-stage mask."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from neo_jax.model import config as config_lib
from neo_jax.model.decoder import Decoder
from neo_jax.model.vocab import count_params, extend_vocab, sid_row_mask

OLD_V, NEW_V, D = 512, 600, 64
TOKENS = np.random.default_rng(0).integers(0, OLD_V, (2, 8)).astype(np.int32)


def _model(tied: bool, seed: int = 0) -> Decoder:
  """Random weights from numpy on eval_shape'd parameters (no init program to compile)."""
  cfg = config_lib.get_config('tiny', tie_embeddings=tied)
  model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(seed)
  for _, var in nnx.to_flat_state(nnx.state(model)):
    var.set_value(jnp.asarray(0.1 * rng.standard_normal(var.get_value().shape), jnp.float32))
  return model


@nnx.jit
def _logits(model, tokens):
  return model(tokens)


@pytest.mark.parametrize('tied', [True, False])
def test_mean_init_keeps_old_logits_and_adds_noisy_mean_rows(tied):
  model = _model(tied)
  before = np.asarray(_logits(model, TOKENS))
  old_embed = np.asarray(model.embed_tokens[...], np.float64)
  old_head = old_embed if tied else np.asarray(model.lm_head[...], np.float64)
  n_before = count_params(model)

  assert extend_vocab(model, NEW_V, rng=jax.random.key(1), noise_scale=0.05) is model
  assert model.cfg.vocab_size == NEW_V
  assert count_params(model) == n_before + (NEW_V - OLD_V) * D * (1 if tied else 2)
  after = np.asarray(_logits(model, TOKENS))
  assert after.shape == (2, 8, NEW_V)
  np.testing.assert_allclose(after[..., :OLD_V], before, atol=1e-6, rtol=0)

  embed = np.asarray(model.embed_tokens[...], np.float64)
  np.testing.assert_array_equal(embed[:OLD_V], old_embed)
  heads = [(embed, old_embed)]
  if tied:
    assert not hasattr(model, 'lm_head')
    np.testing.assert_array_equal(np.asarray(model.head_weight()), embed.astype(np.float32))
  else:
    head = np.asarray(model.lm_head[...], np.float64)
    np.testing.assert_array_equal(head[:OLD_V], old_head)
    heads.append((head, old_head))
    # Embedding and head rows get independent noise.
    assert not np.allclose(head[OLD_V:] - old_head.mean(0), embed[OLD_V:] - old_embed.mean(0))
  for new, old in heads:
    z = (new[OLD_V:] - old.mean(0)) / old.std(0)  # the noise, in units of the row spread
    assert abs(z.std() - 0.05) < 0.005 and abs(z.mean()) < 0.005
    assert len(np.unique(new[OLD_V:, 0])) == NEW_V - OLD_V  # symmetry broken


def test_zero_noise_gives_exact_mean_and_centroid_gives_given_rows():
  model = _model(tied=True)
  old = np.asarray(model.embed_tokens[...], np.float64)
  extend_vocab(model, 520, rng=jax.random.key(2), noise_scale=0.0)
  np.testing.assert_allclose(np.asarray(model.embed_tokens[...])[OLD_V:],
                             np.broadcast_to(old.mean(0), (8, D)), atol=1e-7)

  untied = _model(tied=False)
  rows = np.random.default_rng(3).standard_normal((NEW_V - OLD_V, D)).astype(np.float32)
  head_rows = np.random.default_rng(4).standard_normal((NEW_V - OLD_V, D)).astype(np.float32)
  extend_vocab(untied, NEW_V, init='centroid', rng=jax.random.key(5), row_init=rows,
               head_row_init=head_rows)
  np.testing.assert_array_equal(np.asarray(untied.embed_tokens[...])[OLD_V:], rows)
  np.testing.assert_array_equal(np.asarray(untied.lm_head[...])[OLD_V:], head_rows)

  untied2 = _model(tied=False)
  extend_vocab(untied2, NEW_V, init='centroid', rng=jax.random.key(5), row_init=rows)
  np.testing.assert_array_equal(np.asarray(untied2.lm_head[...])[OLD_V:], rows)


def test_extend_vocab_rejects_bad_input():
  model = _model(tied=True)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match='must be an int >'):
    extend_vocab(model, OLD_V, rng=key)
  with pytest.raises(ValueError, match='not one of'):
    extend_vocab(model, NEW_V, init='zeros', rng=key)
  with pytest.raises(ValueError, match='needs row_init'):
    extend_vocab(model, NEW_V, init='centroid', rng=key)
  with pytest.raises(ValueError, match='shape'):
    extend_vocab(model, NEW_V, init='centroid', rng=key, row_init=np.zeros((3, D)))
  with pytest.raises(ValueError, match="only used with init='centroid'"):
    extend_vocab(model, NEW_V, rng=key, row_init=np.zeros((NEW_V - OLD_V, D)))
  with pytest.raises(ValueError, match='tied'):
    extend_vocab(model, NEW_V, init='centroid', rng=key,
                 row_init=np.zeros((NEW_V - OLD_V, D)),
                 head_row_init=np.zeros((NEW_V - OLD_V, D)))
  with pytest.raises(ValueError, match='PRNG key'):
    extend_vocab(model, NEW_V, rng=np.float32(3.0))
  assert model.cfg.vocab_size == OLD_V and model.embed_tokens[...].shape == (OLD_V, D)


@pytest.mark.parametrize('tied', [True, False])
def test_sid_row_mask_covers_exactly_the_new_rows(tied):
  model = _model(tied)
  extend_vocab(model, NEW_V, rng=jax.random.key(6))
  first = OLD_V
  mask = sid_row_mask(model, first)
  flat = dict(nnx.to_flat_state(mask))
  params = dict(nnx.to_flat_state(nnx.state(model)))
  assert set(flat) == set(params)
  trainable = {('embed_tokens',)} | (set() if tied else {('lm_head',)})
  want_rows = (np.arange(NEW_V) >= first).astype(np.float32)[:, None]
  for path, var in flat.items():
    m = np.asarray(var.get_value())
    assert m.dtype == np.float32
    p_shape = params[path].get_value().shape
    assert np.broadcast_shapes(m.shape, p_shape) == p_shape
    if path in trainable:
      assert m.shape == (NEW_V, 1)
      np.testing.assert_array_equal(m, want_rows)
    else:
      assert m.size == 1 and m.item() == 0.0

  # Applied to real gradients it leaves exactly the SID rows.
  sid_tokens = np.concatenate([TOKENS, TOKENS % 88 + OLD_V], axis=1)

  def loss(model):
    return jnp.mean(jax.nn.log_softmax(model(sid_tokens))[..., OLD_V + 3])

  grads = nnx.jit(nnx.grad(loss))(model)
  masked = jax.tree.map(jnp.multiply, grads, mask)
  for path, var in nnx.to_flat_state(masked):
    g = np.asarray(var.get_value())
    if path in trainable:
      assert (g[:first] == 0).all() and (np.abs(g[first:]).sum(-1) > 0).any()
    else:
      assert (g == 0).all()
  with pytest.raises(ValueError, match='first_sid_row'):
    sid_row_mask(model, NEW_V + 1)
