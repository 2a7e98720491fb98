"""Checkpoint import/export: tiny random GGUF (Q4_1, Q8_0, F16, F32 tensors) and safetensors
directories (Llama, Qwen2, Qwen3; single file, sharded, bf16) checked against an independent
float64 numpy forward pass over the Hugging Face tensors; export -> import round trips."""

from __future__ import annotations

import json
import os

import gguf
import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

from neo_jax.model import backbones, checkpoints, vocab
from neo_jax.model.config import ModelConfig
from neo_jax.tokenizer.bpe import BPETokenizer

V, D, NL, N, K, H, F = 96, 64, 2, 4, 2, 16, 128
TOKENS = np.array([[5, 17, 3, 90, 41, 41, 0, 77, 12, 64]], np.int32)


def _hf_config(kind: str, tied: bool) -> dict:
  return {'model_type': kind, 'vocab_size': V, 'hidden_size': D, 'num_hidden_layers': NL,
          'num_attention_heads': N, 'num_key_value_heads': K, 'head_dim': H,
          'intermediate_size': F, 'rope_theta': 5000.0, 'rms_norm_eps': 1e-5,
          'tie_word_embeddings': tied, 'max_position_embeddings': 256}


def _random_hf(kind: str, tied: bool, seed: int) -> dict[str, np.ndarray]:
  """HF-named float32 tensors of a realistic scale."""
  rng = np.random.default_rng(seed)
  w = {'model.embed_tokens.weight': 0.5 * rng.standard_normal((V, D)),
       'model.norm.weight': 1 + 0.2 * rng.standard_normal(D)}
  if not tied:
    w['lm_head.weight'] = 0.5 * rng.standard_normal((V, D))
  for i in range(NL):
    p = f'model.layers.{i}.'
    for name, shape in (('self_attn.q_proj', (N * H, D)), ('self_attn.k_proj', (K * H, D)),
                        ('self_attn.v_proj', (K * H, D)), ('self_attn.o_proj', (D, N * H)),
                        ('mlp.gate_proj', (F, D)), ('mlp.up_proj', (F, D)),
                        ('mlp.down_proj', (D, F))):
      w[p + name + '.weight'] = rng.standard_normal(shape) / np.sqrt(shape[1])
    w[p + 'input_layernorm.weight'] = 1 + 0.2 * rng.standard_normal(D)
    w[p + 'post_attention_layernorm.weight'] = 1 + 0.2 * rng.standard_normal(D)
    if kind == 'qwen3':
      w[p + 'self_attn.q_norm.weight'] = 1 + 0.2 * rng.standard_normal(H)
      w[p + 'self_attn.k_norm.weight'] = 1 + 0.2 * rng.standard_normal(H)
    if kind == 'qwen2':
      for name, rows in (('q', N * H), ('k', K * H), ('v', K * H)):
        w[p + f'self_attn.{name}_proj.bias'] = 0.3 * rng.standard_normal(rows)
  return {k: v.astype(np.float32) for k, v in w.items()}


# -- the reference: HF semantics in float64, one token row at a time ----------------------------


def _rms(x, w, eps=1e-5):
  return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _rotate(x, pos, theta=5000.0):
  """HF rotate-half RoPE on (L, heads, H)."""
  inv = theta ** (-np.arange(0, H, 2) / H)
  ang = pos[:, None] * inv[None]
  cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]
  a, b = x[..., :H // 2], x[..., H // 2:]
  return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)


def _reference_logits(w: dict[str, np.ndarray], kind: str, tokens) -> np.ndarray:
  w = {k: v.astype(np.float64) for k, v in w.items()}
  x = w['model.embed_tokens.weight'][tokens]
  length = len(tokens)
  pos = np.arange(length, dtype=np.float64)
  for i in range(NL):
    p = f'model.layers.{i}.'
    h = _rms(x, w[p + 'input_layernorm.weight'])
    proj = {}
    for name in 'qkv':
      proj[name] = h @ w[p + f'self_attn.{name}_proj.weight'].T
      if kind == 'qwen2':
        proj[name] = proj[name] + w[p + f'self_attn.{name}_proj.bias']
    q = proj['q'].reshape(length, N, H)
    k = proj['k'].reshape(length, K, H)
    v = proj['v'].reshape(length, K, H)
    if kind == 'qwen3':
      q, k = _rms(q, w[p + 'self_attn.q_norm.weight']), _rms(k, w[p + 'self_attn.k_norm.weight'])
    q, k = _rotate(q, pos), _rotate(k, pos)
    heads = []
    for n in range(N):
      s = q[:, n] @ k[:, n // (N // K)].T / np.sqrt(H)
      s = np.where(np.tril(np.ones((length, length), bool)), s, -np.inf)
      e = np.exp(s - s.max(-1, keepdims=True))
      heads.append((e / e.sum(-1, keepdims=True)) @ v[:, n // (N // K)])
    x = x + np.concatenate(heads, -1) @ w[p + 'self_attn.o_proj.weight'].T
    h = _rms(x, w[p + 'post_attention_layernorm.weight'])
    g = h @ w[p + 'mlp.gate_proj.weight'].T
    x = x + (g / (1 + np.exp(-g)) * (h @ w[p + 'mlp.up_proj.weight'].T)) @ \
        w[p + 'mlp.down_proj.weight'].T
    del h
  head = w.get('lm_head.weight', w['model.embed_tokens.weight'])
  return _rms(x, w['model.norm.weight']) @ head.T


@nnx.jit
def _logits(model, tokens):
  return model(tokens)


def _check_forward(model, w, kind):
  got = np.asarray(_logits(model, TOKENS))[0]
  want = _reference_logits(w, kind, TOKENS[0])
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * np.abs(want).max())


# -- GGUF --------------------------------------------------------------------------------------


def _q4_1(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Quantises (rows, cols) to Q4_1 bytes (rows, cols / 32 * 20) and returns them with the
  values they decode to. Block: f16 scale d, f16 min m, 16 bytes; byte j holds value j in
  its low nibble and value j + 16 in its high nibble; value = q * d + m."""
  rows, cols = x.shape
  blocks = x.reshape(rows, cols // 32, 32).astype(np.float64)
  lo, hi = blocks.min(-1, keepdims=True), blocks.max(-1, keepdims=True)
  d = ((hi - lo) / 15).astype(np.float16)
  m = lo.astype(np.float16)
  d64, m64 = d.astype(np.float64), m.astype(np.float64)
  q = np.clip(np.round((blocks - m64) / np.where(d64 == 0, 1, d64)), 0, 15).astype(np.uint8)
  packed = q[..., :16] | (q[..., 16:] << 4)
  raw = np.concatenate([d.view(np.uint8), m.view(np.uint8), packed], -1)
  return raw.reshape(rows, -1), (q * d64 + m64).reshape(rows, cols).astype(np.float32)


def _q8_0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Q8_0: per 32 values an f16 scale d = max|x| / 127 and 32 int8 q; value = q * d."""
  rows, cols = x.shape
  blocks = x.reshape(rows, cols // 32, 32).astype(np.float64)
  d = (np.abs(blocks).max(-1, keepdims=True) / 127).astype(np.float16)
  d64 = d.astype(np.float64)
  q = np.clip(np.round(blocks / np.where(d64 == 0, 1, d64)), -127, 127).astype(np.int8)
  raw = np.concatenate([d.view(np.uint8), q.view(np.uint8)], -1)
  return raw.reshape(rows, -1), (q * d64).reshape(rows, cols).astype(np.float32)


def _llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
  """convert_hf_to_gguf's q/k permutation, written from its definition: per head, the rows
  (half j, index i) are reordered to (index i, half j)."""
  return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
      w.shape)


# 96 byte-level tokens: printable ASCII, then 'Ġ' (space) and 'Ċ' (newline); no merges.
TINY_VOCAB = [chr(c) for c in range(ord('!'), ord('~') + 1)] + ['\u0120', '\u010a']


def _write_gguf(path: str, w: dict[str, np.ndarray], tokenizer: bool = False
                ) -> dict[str, np.ndarray]:
  """A tiny llama GGUF of the HF tensors `w`; returns the HF tensors as the file decodes."""
  writer = gguf.GGUFWriter(path, 'llama')
  if tokenizer:
    writer.add_tokenizer_model('gpt2')
    writer.add_tokenizer_pre('smollm')
    writer.add_token_list(TINY_VOCAB)
    writer.add_token_types([1] * V)
    writer.add_token_merges([])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(94)  # 'Ġ': generation stops at the first space
  writer.add_block_count(NL)
  writer.add_context_length(256)
  writer.add_embedding_length(D)
  writer.add_feed_forward_length(F)
  writer.add_head_count(N)
  writer.add_head_count_kv(K)
  writer.add_rope_freq_base(5000.0)
  writer.add_layer_norm_rms_eps(1e-5)
  writer.add_vocab_size(V)
  decoded = {}

  def put(gguf_name, hf_name, kind, permute_heads=None):
    x = w[hf_name]
    stored = _llama_cpp_permute(x, permute_heads) if permute_heads else x
    if kind == 'q4_1':
      raw, back = _q4_1(stored)
      writer.add_tensor(gguf_name, raw, raw_dtype=gguf.GGMLQuantizationType.Q4_1)
    elif kind == 'q8_0':
      raw, back = _q8_0(stored)
      writer.add_tensor(gguf_name, raw, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    elif kind == 'f16':
      back = stored.astype(np.float16)
      writer.add_tensor(gguf_name, back)
      back = back.astype(np.float32)
    else:
      back = stored
      writer.add_tensor(gguf_name, stored)
    if permute_heads:  # what the file holds, in HF row order (inverse of the permutation)
      inv = np.argsort(_llama_cpp_permute(np.arange(x.shape[0]), permute_heads))
      back = back[inv]
    decoded[hf_name] = back

  put('token_embd.weight', 'model.embed_tokens.weight', 'q8_0')
  put('output_norm.weight', 'model.norm.weight', 'f32')
  for i in range(NL):
    p, b = f'model.layers.{i}.', f'blk.{i}.'
    put(b + 'attn_norm.weight', p + 'input_layernorm.weight', 'f32')
    put(b + 'ffn_norm.weight', p + 'post_attention_layernorm.weight', 'f32')
    put(b + 'attn_q.weight', p + 'self_attn.q_proj.weight', 'q4_1', N)
    put(b + 'attn_k.weight', p + 'self_attn.k_proj.weight', 'q4_1', K)
    put(b + 'attn_v.weight', p + 'self_attn.v_proj.weight', 'f16')
    put(b + 'attn_output.weight', p + 'self_attn.o_proj.weight', 'q4_1')
    put(b + 'ffn_gate.weight', p + 'mlp.gate_proj.weight', 'q4_1')
    put(b + 'ffn_up.weight', p + 'mlp.up_proj.weight', 'q8_0')
    put(b + 'ffn_down.weight', p + 'mlp.down_proj.weight', 'q4_1')
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return decoded


def test_gguf_import_dequantises_unpermutes_and_matches_numpy(tmp_path):
  w = _random_hf('llama', tied=True, seed=0)
  path = str(tmp_path / 'tiny.gguf')
  decoded = _write_gguf(path, w)
  # Quantisation really changed the weights (so the check below is about the decoded values).
  assert np.abs(decoded['model.layers.0.self_attn.q_proj.weight']
                - w['model.layers.0.self_attn.q_proj.weight']).max() > 1e-3
  model, _ = checkpoints.load_gguf(path)
  cfg = model.cfg
  assert (cfg.vocab_size, cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads,
          cfg.head_dim, cfg.mlp_dim, cfg.tie_embeddings, cfg.max_seq_len) == (
              V, D, NL, N, K, H, F, True, 256)
  assert cfg.rope_theta == 5000.0 and not cfg.qk_norm and not cfg.qkv_bias
  _check_forward(model, decoded, 'llama')
  # Without undoing the permutation the model would differ: the test can fail.
  hf = checkpoints.hf_from_model(model)
  np.testing.assert_allclose(hf['model.layers.1.self_attn.k_proj.weight'],
                             decoded['model.layers.1.self_attn.k_proj.weight'], atol=1e-6)


def test_gguf_rejects_unknown_architecture(tmp_path):
  path = str(tmp_path / 'x.gguf')
  writer = gguf.GGUFWriter(path, 'mamba')
  writer.add_tensor('token_embd.weight', np.zeros((4, 32), np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  with pytest.raises(ValueError, match="architecture 'mamba'"):
    checkpoints.load_gguf(path)


# -- safetensors -------------------------------------------------------------------------------


def _write_dir(directory, kind, tied, w, shards=1, dtype=np.float32):
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    json.dump(_hf_config(kind, tied), f)
  names = sorted(w)
  if shards == 1:
    safetensors.numpy.save_file({k: w[k].astype(dtype) for k in names},
                                os.path.join(directory, 'model.safetensors'))
    return
  weight_map = {}
  for s in range(shards):
    fname = f'model-{s + 1:05d}-of-{shards:05d}.safetensors'
    part = names[s::shards]
    safetensors.numpy.save_file({k: w[k].astype(dtype) for k in part},
                                os.path.join(directory, fname))
    weight_map.update({k: fname for k in part})
  with open(os.path.join(directory, 'model.safetensors.index.json'), 'w') as f:
    json.dump({'metadata': {}, 'weight_map': weight_map}, f)


@pytest.mark.parametrize('kind,tied,shards', [('qwen3', False, 3), ('qwen2', True, 1)])
def test_safetensors_import_matches_numpy(tmp_path, kind, tied, shards):
  w = _random_hf(kind, tied, seed=1)
  _write_dir(str(tmp_path), kind, tied, w, shards=shards)
  model = checkpoints.load_safetensors_dir(str(tmp_path))
  assert model.cfg.qk_norm == (kind == 'qwen3') and model.cfg.qkv_bias == (kind == 'qwen2')
  assert model.cfg.tie_embeddings == tied
  _check_forward(model, w, kind)


def test_safetensors_bf16_file_is_read_exactly(tmp_path):
  w = _random_hf('llama', True, seed=2)
  bf = {k: v.astype(ml_dtypes.bfloat16) for k, v in w.items()}
  _write_dir(str(tmp_path), 'llama', True, bf)  # written by the safetensors package
  model = checkpoints.load_safetensors_dir(str(tmp_path), param_dtype='bfloat16')
  hf = checkpoints.hf_from_model(model)
  for k, v in bf.items():
    np.testing.assert_array_equal(hf[k], v.astype(np.float32), err_msg=k)


def test_export_then_import_round_trip_and_other_readers(tmp_path):
  w = _random_hf('qwen2', False, seed=3)
  _write_dir(str(tmp_path / 'src'), 'qwen2', False, w)
  model = checkpoints.load_safetensors_dir(str(tmp_path / 'src'))
  out = str(tmp_path / 'out')
  checkpoints.export_safetensors_dir(model, out)
  # An independent reader (the safetensors package) sees exactly the HF tensors.
  read = safetensors.numpy.load_file(os.path.join(out, 'model.safetensors'))
  assert sorted(read) == sorted(w)
  for k in w:
    np.testing.assert_array_equal(read[k], w[k], err_msg=k)
  with open(os.path.join(out, 'config.json')) as f:
    hf_cfg = json.load(f)
  assert hf_cfg['architectures'] == ['Qwen2ForCausalLM']
  assert checkpoints.hf_config_to_model_config(hf_cfg) == model.cfg
  again = checkpoints.load_safetensors_dir(out)
  for (p1, a), (p2, b) in zip(nnx.to_flat_state(nnx.state(model)),
                              nnx.to_flat_state(nnx.state(again))):
    assert p1 == p2
    np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()))
  # bf16 export is the bf16 rounding of every tensor.
  checkpoints.export_safetensors_dir(model, str(tmp_path / 'bf'), dtype='bfloat16')
  read = checkpoints.read_safetensors(str(tmp_path / 'bf' / 'model.safetensors'))
  for k in w:
    np.testing.assert_array_equal(read[k], w[k].astype(ml_dtypes.bfloat16), err_msg=k)


def test_config_translation_llama3_scaling_round_trip():
  cfg = ModelConfig(vocab_size=V, d_model=D, num_layers=NL, num_heads=N, num_kv_heads=K,
                    head_dim=H, mlp_dim=F, tie_embeddings=True,
                    rope_llama3_scaling=(32.0, 1.0, 4.0, 8192))
  hf = checkpoints.model_config_to_hf(cfg)
  assert hf['model_type'] == 'llama' and hf['rope_scaling']['rope_type'] == 'llama3'
  assert checkpoints.hf_config_to_model_config(hf) == cfg


def test_import_errors_name_the_problem(tmp_path):
  w = _random_hf('llama', True, seed=4)
  bad = dict(w)
  del bad['model.layers.1.mlp.up_proj.weight']
  _write_dir(str(tmp_path / 'a'), 'llama', True, bad)
  with pytest.raises(ValueError, match=r"no tensor 'model.layers.1.mlp.up_proj.weight'"):
    checkpoints.load_safetensors_dir(str(tmp_path / 'a'))
  bad = dict(w, **{'model.norm.weight': np.ones(D + 1, np.float32)})
  _write_dir(str(tmp_path / 'b'), 'llama', True, bad)
  with pytest.raises(ValueError, match=r"'model.norm.weight' has shape \(65,\)"):
    checkpoints.load_safetensors_dir(str(tmp_path / 'b'))
  bad = dict(w, **{'model.extra.weight': np.ones(3, np.float32)})
  _write_dir(str(tmp_path / 'c'), 'llama', True, bad)
  with pytest.raises(ValueError, match='not used by the config'):
    checkpoints.load_safetensors_dir(str(tmp_path / 'c'))
  with pytest.raises(ValueError, match="model_type 'gpt2'"):
    checkpoints.hf_config_to_model_config(dict(_hf_config('llama', True), model_type='gpt2'))
  with pytest.raises(FileNotFoundError, match='config.json'):
    checkpoints.load_safetensors_dir(str(tmp_path / 'nothing'))


def test_load_backbone_gguf_with_tokenizer_and_greedy_generation(tmp_path):
  w = _random_hf('llama', tied=True, seed=5)
  path = str(tmp_path / 'tok.gguf')
  decoded = _write_gguf(path, w, tokenizer=True)
  model, tok = backbones.load_backbone(path)
  assert tok.text_vocab_size == V and tok.eos_id == 94
  prompt = tok.encode_text('Hi!\nok')
  assert prompt == [TINY_VOCAB.index(c) for c in ['H', 'i', '!', '\u010a', 'o', 'k']]
  ids, timing = backbones.greedy_generate(model, prompt, max_new_tokens=6, eos_id=tok.eos_id)
  assert timing['seconds'] > 0
  # Reference: argmax of the numpy full forward, one token at a time, stopping at eos.
  seq, want = list(prompt), []
  for _ in range(6):
    nxt = int(np.argmax(_reference_logits(decoded, 'llama', np.array(seq))[-1]))
    want.append(nxt)
    seq.append(nxt)
    if nxt == tok.eos_id:
      break
  assert ids == want


def test_export_with_bpe_tokenizer_reloads(tmp_path):
  w = _random_hf('llama', tied=True, seed=6)
  path = str(tmp_path / 'tok.gguf')
  _write_gguf(path, w, tokenizer=True)
  model, tok = backbones.load_backbone(path)
  tok = tok.with_sids(['movie'], {'movie': (3, 2)})  # what a NEO run exports
  with pytest.raises(ValueError, match='tokenizer has 103 ids but the model 96 rows'):
    checkpoints.export_safetensors_dir(model, str(tmp_path / 'x'), tokenizer=tok)
  vocab.extend_vocab(model, tok.vocab_size, rng=jax.random.key(0))
  out = str(tmp_path / 'export')
  checkpoints.export_safetensors_dir(model, out, tokenizer=tok)
  assert {'config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json'} <= set(
      os.listdir(out))
  again = checkpoints.load_safetensors_dir(out)
  np.testing.assert_array_equal(np.asarray(again.embed_tokens[...]),
                                np.asarray(model.embed_tokens[...]))
  with open(os.path.join(out, 'config.json')) as f:
    assert json.load(f)['eos_token_id'] == 94
  reloaded = BPETokenizer.load(out)
  s = 'a[SID]<movie:0:2><movie:1:1>[/SID]!'
  assert reloaded.encode(s) == tok.encode(s) and reloaded.decode(tok.encode(s)) == s
  model2, tok2 = backbones.load_backbone(out)
  assert model2.cfg == model.cfg and tok2.encode(s) == tok.encode(s)
