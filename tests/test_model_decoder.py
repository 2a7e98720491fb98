"""Decoder: an independent numpy forward, causality, packing, KV-cache decoding, row logits."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from neo_jax.model import config as config_lib
from neo_jax.model.decoder import Decoder, init_cache
from neo_jax.model.vocab import count_params

B, L, S = 3, 16, 16  # the only forward shapes used below, to keep compiles few


def _randomize(model: Decoder, seed: int) -> Decoder:
  """Weights of a realistic scale (the 0.02 init makes every logit ~0 and hides bugs)."""
  rng = np.random.default_rng(seed)
  dtype = model.cfg.storage_dtype
  for path, var in nnx.to_flat_state(nnx.state(model)):
    shape = var.get_value().shape
    name = path[-1]
    if 'norm' in name or 'layernorm' in name:
      value = 1.0 + 0.2 * rng.standard_normal(shape)
    elif name.endswith('bias'):
      value = 0.3 * rng.standard_normal(shape)
    elif name in ('embed_tokens', 'lm_head'):
      value = 0.3 * rng.standard_normal(shape)
    else:
      fan_in = shape[1] if name != 'o_proj' else shape[1] * shape[2]
      value = rng.standard_normal(shape) / math.sqrt(fan_in)
    var.set_value(jnp.asarray(value, dtype))
  return model


def _make(cfg, seed: int) -> Decoder:
  """A decoder with `_randomize` weights; shapes from eval_shape, so no init is compiled."""
  return _randomize(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))), seed)


# -- the numpy reference: HF-layout weights, torch-Linear style `x @ W.T`, float64 -------------


def _hf_weights(model: Decoder) -> dict[str, np.ndarray]:
  """Our parameters converted to the HF tensor layouts documented in decoder.py."""
  cfg = model.cfg
  d, n, k, h = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  lay = {name: np.asarray(v, np.float64) for name, v in model.layers.stacked().items()}
  w = {'embed': np.asarray(model.embed_tokens[...], np.float64),
       'norm': np.asarray(model.norm[...], np.float64)}
  w['lm_head'] = (w['embed'] if cfg.tie_embeddings
                  else np.asarray(model.lm_head[...], np.float64))
  for i in range(cfg.num_layers):
    p = f'{i}.'
    w[p + 'in_norm'] = lay['input_layernorm'][i]
    w[p + 'post_norm'] = lay['post_attention_layernorm'][i]
    w[p + 'q'] = lay['q_proj'][i].reshape(d, n * h).T
    w[p + 'k'] = lay['k_proj'][i].reshape(d, k * h).T
    w[p + 'v'] = lay['v_proj'][i].reshape(d, k * h).T
    w[p + 'o'] = lay['o_proj'][i].reshape(n * h, d).T
    w[p + 'gate'] = lay['gate_proj'][i].T
    w[p + 'up'] = lay['up_proj'][i].T
    w[p + 'down'] = lay['down_proj'][i].T
    if cfg.qkv_bias:
      for x in 'qkv':
        w[p + x + '_bias'] = lay[x + '_bias'][i].reshape(-1)
    if cfg.qk_norm:
      w[p + 'q_norm'] = lay['q_norm'][i]
      w[p + 'k_norm'] = lay['k_norm'][i]
  return w


def _np_rms(x, weight, eps):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _np_inv_freq(cfg) -> np.ndarray:
  h = cfg.head_dim
  inv = np.array([cfg.rope_theta ** (-(2 * i) / h) for i in range(h // 2)])
  if cfg.rope_llama3_scaling is not None:
    factor, low, high, old_len = cfg.rope_llama3_scaling
    out = []
    for f in inv:
      wavelen = 2 * np.pi / f
      if wavelen < old_len / high:
        out.append(f)
      elif wavelen > old_len / low:
        out.append(f / factor)
      else:
        s = (old_len / wavelen - low) / (high - low)
        out.append((1 - s) * f / factor + s * f)
    inv = np.array(out)
  return inv


def _np_rope(x_LxNxH, pos_L, inv_freq):
  freqs = pos_L[:, None] * inv_freq[None, :]
  emb = np.concatenate([freqs, freqs], axis=-1)[:, None, :]
  half = x_LxNxH.shape[-1] // 2
  rotated = np.concatenate([-x_LxNxH[..., half:], x_LxNxH[..., :half]], axis=-1)
  return x_LxNxH * np.cos(emb) + rotated * np.sin(emb)


def _np_forward(model: Decoder, tokens, positions, segments) -> np.ndarray:
  """float64 logits (B, L, V), one sequence and one head at a time."""
  cfg = model.cfg
  w = _hf_weights(model)
  n, k, h, eps = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.norm_eps
  inv_freq = _np_inv_freq(cfg)
  out = []
  for b in range(tokens.shape[0]):
    x = w['embed'][tokens[b]]
    length = x.shape[0]
    allowed = np.array([[j <= i and segments[b, i] == segments[b, j] for j in range(length)]
                        for i in range(length)])
    for i in range(cfg.num_layers):
      p = f'{i}.'
      hn = _np_rms(x, w[p + 'in_norm'], eps)
      q, kk, v = hn @ w[p + 'q'].T, hn @ w[p + 'k'].T, hn @ w[p + 'v'].T
      if cfg.qkv_bias:
        q, kk, v = q + w[p + 'q_bias'], kk + w[p + 'k_bias'], v + w[p + 'v_bias']
      q = q.reshape(length, n, h)
      kk = kk.reshape(length, k, h)
      v = v.reshape(length, k, h)
      if cfg.qk_norm:
        q = _np_rms(q, w[p + 'q_norm'], eps)
        kk = _np_rms(kk, w[p + 'k_norm'], eps)
      q = _np_rope(q, positions[b].astype(np.float64), inv_freq)
      kk = _np_rope(kk, positions[b].astype(np.float64), inv_freq)
      heads = []
      for head in range(n):
        kv = head // (n // k)
        scores = q[:, head] @ kk[:, kv].T / np.sqrt(h)
        scores = np.where(allowed, scores, -np.inf)
        probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        heads.append(probs @ v[:, kv])
      x = x + np.concatenate(heads, axis=-1) @ w[p + 'o'].T
      hn = _np_rms(x, w[p + 'post_norm'], eps)
      gate = hn @ w[p + 'gate'].T
      x = x + ((gate / (1 + np.exp(-gate))) * (hn @ w[p + 'up'].T)) @ w[p + 'down'].T
    out.append(_np_rms(x, w['norm'], eps) @ w['lm_head'].T)
  return np.stack(out)


# -- shared jitted entry points (one compile per model structure) ------------------------------


@nnx.jit
def _forward(model, tokens, positions, segments):
  return model(tokens, positions, segments)


def _packed_batch(rng):
  """Row 0: sequences A (5) and B (7) packed + 4 pads; row 1: A alone; row 2: B alone."""
  a = rng.integers(0, 512, 5)
  b = rng.integers(0, 512, 7)
  tokens = rng.integers(0, 512, (B, L))  # pads hold random tokens on purpose
  segments = np.zeros((B, L), np.int32)
  positions = np.zeros((B, L), np.int32)
  tokens[0, :5], tokens[0, 5:12] = a, b
  segments[0, :5], segments[0, 5:12] = 1, 2
  positions[0, :5], positions[0, 5:12] = np.arange(5), np.arange(7)
  tokens[1, :5], segments[1, :5], positions[1, :5] = a, 1, np.arange(5)
  tokens[2, :7], segments[2, :7], positions[2, :7] = b, 1, np.arange(7)
  return tokens.astype(np.int32), positions, segments


@pytest.fixture(scope='module')
def tiny():
  return _make(config_lib.get_config('tiny'), seed=1)


def test_forward_matches_numpy_reference(tiny):
  rng = np.random.default_rng(2)
  tokens, positions, segments = _packed_batch(rng)
  got = np.asarray(_forward(tiny, tokens, positions, segments))
  want = _np_forward(tiny, tokens, positions, segments)
  assert got.dtype == np.float32 and got.shape == (B, L, 512)
  real = segments > 0  # padding outputs are unspecified
  assert np.abs(want[real]).max() > 1.0  # the comparison is not between near-zeros
  np.testing.assert_allclose(got[real], want[real], atol=1e-5, rtol=1e-5)


def test_variant_qwen_flags_untied_llama3_rope_match_numpy():
  cfg = config_lib.get_config('tiny', qk_norm=True, qkv_bias=True, tie_embeddings=False,
                              rope_llama3_scaling=(8.0, 1.0, 4.0, 256))
  model = _make(cfg, seed=4)
  # head_dim 16, theta 1e4: wavelengths 6..2e4 cover all three bands of the llama3 rule.
  inv_freq = _np_inv_freq(cfg)
  plain = _np_inv_freq(config_lib.get_config('tiny'))
  assert (inv_freq == plain).any() and (inv_freq == plain / 8).any()
  assert ((inv_freq != plain) & (inv_freq != plain / 8)).any()
  tokens = np.random.default_rng(5).integers(0, 512, (B, L)).astype(np.int32)
  positions = np.broadcast_to(np.arange(100, 100 + L, dtype=np.int32), (B, L))
  got = np.asarray(nnx.jit(lambda m, t, p: m(t, p))(model, tokens, positions))
  want = _np_forward(model, tokens, positions, np.ones((B, L), np.int32))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_causality_through_gradients(tiny):
  tokens = np.random.default_rng(6).integers(0, 512, (1, L)).astype(np.int32)
  x = tiny.embed(jnp.asarray(tokens))
  probe = jnp.asarray(np.random.default_rng(7).standard_normal(512), jnp.float32)

  def per_position(x):
    logits = tiny.logits_from_hidden(tiny.hidden_from_embeddings(x))
    return logits[0] @ probe  # (L,)

  jac_LxLxD = np.asarray(jax.jit(jax.jacrev(per_position))(x))[:, 0]
  norms = np.abs(jac_LxLxD).sum(-1)  # [t, s]: sensitivity of output t to input s
  future = np.triu(np.ones((L, L), bool), k=1)
  assert (norms[future] == 0).all()
  assert (norms[~future] > 0).all()


def test_packed_segments_equal_separate_sequences(tiny):
  rng = np.random.default_rng(8)
  tokens, positions, segments = _packed_batch(rng)
  logits = np.asarray(_forward(tiny, tokens, positions, segments))
  np.testing.assert_allclose(logits[0, :5], logits[1, :5], atol=1e-5)
  np.testing.assert_allclose(logits[0, 5:12], logits[2, :7], atol=1e-5)
  # Whatever the padding tokens are, real positions are unchanged.
  tokens2 = tokens.copy()
  tokens2[segments == 0] = (tokens2[segments == 0] + 17) % 512
  logits2 = np.asarray(_forward(tiny, tokens2, positions, segments))
  np.testing.assert_array_equal(logits2[segments > 0], logits[segments > 0])


def _decode_loop(model, cache, tokens_BxN, positions_BxN):
  """Teacher-forced T=1 steps inside lax.while_loop; returns logits (B, N, V), cache."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, cache, tokens_BxN, positions_BxN):
    m = nnx.merge(graphdef, state)
    n = tokens_BxN.shape[1]
    out = jnp.zeros((tokens_BxN.shape[0], n, m.cfg.vocab_size), jnp.float32)

    def body(carry):
      i, cache, out = carry
      tok = jax.lax.dynamic_slice_in_dim(tokens_BxN, i, 1, axis=1)
      pos = jax.lax.dynamic_slice_in_dim(positions_BxN, i, 1, axis=1)
      logits, cache = m.decode(tok, pos, cache)
      return i + 1, cache, jax.lax.dynamic_update_slice_in_dim(out, logits, i, axis=1)

    _, cache, out = jax.lax.while_loop(lambda c: c[0] < n, body, (0, cache, out))
    return out, cache

  return run(state, cache, tokens_BxN, positions_BxN)


def test_kv_cache_left_padded_prefill_and_steps_equal_full_forward(tiny):
  rng = np.random.default_rng(9)
  lengths, width, steps = [3, 5, 8], 8, 5
  prompts = [rng.integers(0, 512, n) for n in lengths]
  cont = rng.integers(0, 512, (B, steps)).astype(np.int32)
  # Left-padded prefill; pads hold random tokens and position 0.
  tokens = rng.integers(0, 512, (B, width)).astype(np.int32)
  valid = np.zeros((B, width), bool)
  positions = np.zeros((B, width), np.int32)
  for b, p in enumerate(prompts):
    tokens[b, width - len(p):] = p
    valid[b, width - len(p):] = True
    positions[b, width - len(p):] = np.arange(len(p))
  cache = init_cache(tiny.cfg, B, S)
  prefill = nnx.jit(lambda m, t, p, c, v: m.decode(t, p, c, v))
  logits_pre, cache = prefill(tiny, tokens, positions, cache, valid)
  assert int(cache.end) == width
  step_pos = np.array(lengths, np.int32)[:, None] + np.arange(steps, dtype=np.int32)
  logits_steps, cache = _decode_loop(tiny, cache, cont, step_pos)
  assert int(cache.end) == width + steps

  # Reference: each row's real sequence alone, right-padded to L, through the full forward.
  full_tokens = np.zeros((B, L), np.int32)
  segments = np.zeros((B, L), np.int32)
  for b, p in enumerate(prompts):
    seq = np.concatenate([p, cont[b]])
    full_tokens[b, :len(seq)], segments[b, :len(seq)] = seq, 1
  full = np.asarray(_forward(tiny, full_tokens, np.broadcast_to(np.arange(L), (B, L)),
                             segments))
  logits_pre, logits_steps = np.asarray(logits_pre), np.asarray(logits_steps)
  for b, n in enumerate(lengths):
    np.testing.assert_allclose(logits_pre[b, width - n:], full[b, :n], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(logits_steps[b], full[b, n:n + steps], atol=1e-5, rtol=1e-5)


def test_decode_checks_inputs(tiny):
  cache = init_cache(tiny.cfg, 2, 4)
  with pytest.raises(ValueError, match='do not fit'):
    tiny.decode(jnp.zeros((2, 5), jnp.int32), jnp.zeros((2, 5), jnp.int32), cache)
  with pytest.raises(ValueError, match='overflow'):
    tiny.decode(jnp.zeros((2, 2), jnp.int32), jnp.zeros((2, 2), jnp.int32),
                cache.replace(end=jnp.int32(3)))
  with pytest.raises(ValueError, match='cache.k has shape'):
    tiny.decode(jnp.zeros((3, 1), jnp.int32), jnp.zeros((3, 1), jnp.int32), cache)
  with pytest.raises(ValueError, match='positions_BxT has shape'):
    tiny.decode(jnp.zeros((2, 1), jnp.int32), jnp.zeros((2, 2), jnp.int32), cache)
  with pytest.raises(ValueError, match='integer'):
    tiny(jnp.zeros((2, 3), jnp.float32))


def test_logits_from_hidden_rows_equal_gathered_full_logits(tiny):
  rng = np.random.default_rng(10)
  tokens = rng.integers(0, 512, (B, L)).astype(np.int32)
  h = nnx.jit(lambda m, t: m.hidden(t))(tiny, tokens)
  full = np.asarray(tiny.logits_from_hidden(h))
  rows = rng.integers(0, 512, 7)
  np.testing.assert_allclose(np.asarray(tiny.logits_from_hidden(h, rows)), full[..., rows],
                             atol=1e-5, rtol=1e-5)
  rows_BxK = rng.integers(0, 512, (B, 7))
  got = np.asarray(tiny.logits_from_hidden(h, rows_BxK))
  assert got.shape == (B, L, 7)
  for b in range(B):
    np.testing.assert_allclose(got[b], full[b][:, rows_BxK[b]], atol=1e-5, rtol=1e-5)
  last_BxD = h[:, -1]  # the decoding use: one hidden state per row
  np.testing.assert_allclose(np.asarray(tiny.logits_from_hidden(last_BxD, rows_BxK)),
                             np.take_along_axis(full[:, -1], rows_BxK, axis=1), atol=1e-5,
                             rtol=1e-5)
  with pytest.raises(ValueError, match='rows must have shape'):
    tiny.logits_from_hidden(h, np.zeros((1, 2, 3), np.int32))


def test_remat_policy_is_applied_to_each_block():
  tokens = np.zeros((1, 4), np.int32)

  def grad_jaxpr(remat):
    model = _make(config_lib.get_config('tiny', num_layers=1, remat=remat), seed=0)
    return str(jax.make_jaxpr(nnx.grad(lambda m: m(tokens).sum()))(model))

  # Tracing only: rematerialisation is JAX's; what is ours is that the policy reaches scan.
  assert 'remat' not in grad_jaxpr('none')
  full, dots = grad_jaxpr('full'), grad_jaxpr('dots')
  assert 'remat' in full and 'policy=None' in full  # save nothing
  assert 'remat' in dots and 'only_if_no_batch_dims=True' in dots


@pytest.mark.parametrize('name,published', [
    ('smollm2-135m', 134_515_008),
    ('qwen3-0.6b', 596_049_920),
    ('llama-3.2-1b', 1_235_814_400),
])
def test_preset_parameter_counts_match_published(name, published):
  cfg = config_lib.get_config(name)
  abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
  assert count_params(abstract) == published


def test_config_validation():
  assert config_lib.get_config('tiny', dtype='bfloat16').dtype == 'bfloat16'
  assert config_lib.get_config('tiny').replace(vocab_size=600).vocab_size == 600
  with pytest.raises(KeyError, match='unknown model preset'):
    config_lib.get_config('gpt5')
  with pytest.raises(TypeError, match='unknown ModelConfig field'):
    config_lib.get_config('tiny', vocab=3)
  with pytest.raises(ValueError, match='num_kv_heads'):
    config_lib.get_config('tiny', num_kv_heads=3)
  with pytest.raises(ValueError, match='dtype'):
    config_lib.get_config('tiny', dtype='float64')
  with pytest.raises(ValueError, match='remat'):
    config_lib.get_config('tiny', remat='some')


def test_bfloat16_compute_tracks_float32_and_cache_matches_forward(tiny):
  cfg = tiny.cfg.replace(dtype='bfloat16', param_dtype='bfloat16')
  model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
  nnx.update(model, jax.tree.map(lambda x: x.astype(jnp.bfloat16), nnx.state(tiny)))
  tokens = np.random.default_rng(13).integers(0, 512, (B, L)).astype(np.int32)
  positions = np.broadcast_to(np.arange(L, dtype=np.int32), (B, L))
  want = np.asarray(_forward(tiny, tokens, positions, np.ones((B, L), np.int32)))

  @nnx.jit
  def run(model):
    full = model(tokens)
    cache = init_cache(model.cfg, B, S)
    assert cache.k.dtype == jnp.bfloat16
    decoded, _ = model.decode(tokens, positions, cache)
    return full, decoded

  full, decoded = (np.asarray(x) for x in run(model))
  assert full.dtype == np.float32
  # bf16 keeps ~3 significant digits; errors stay a few percent of the logit scale.
  assert np.abs(full - want).max() < 0.05 * np.abs(want).max()
  np.testing.assert_allclose(decoded, full, atol=0.02 * np.abs(want).max())
