"""Pretrained weights in and out: llama.cpp GGUF files and Hugging Face safetensors directories.

Every format goes through one intermediate: a dict of numpy arrays under the Hugging Face
tensor names and layouts (`model.layers.{i}.self_attn.q_proj.weight` (N*H, D), ...), which
`params_from_hf` maps onto `Decoder`'s stacked parameters with the table of decoder.py and
`hf_from_model` maps back.

GGUF (llama.cpp): tensor names differ (`blk.{i}.attn_q.weight`, ...), numpy shapes are already
HF's (out, in) after dequantisation (Q4_1, Q8_0, ... via `gguf.quants.dequantize`), and for
the `llama` architecture the q/k rows of every head are permuted for llama.cpp's interleaved
RoPE: HF row (half j, index i) of a head sits at GGUF row (i, j), which `_unpermute_rope`
undoes. Qwen2/Qwen3 GGUFs use the rotate-half RoPE and are stored unpermuted. The model
config comes from the `{arch}.*` metadata.

Safetensors: `config.json` + `model.safetensors` or shards listed in
`model.safetensors.index.json`. The format (8-byte little-endian header length, JSON header,
raw little-endian data) is read and written here directly so that bf16 works with numpy
(through ml_dtypes, which jax ships). Layouts: Llama (`LlamaForCausalLM`, incl. SmolLM2 and
Llama 3.x rope scaling), Qwen2 (`Qwen2ForCausalLM`, qkv bias) and Qwen3 (`Qwen3ForCausalLM`,
q/k RMSNorm).
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Callable, Mapping

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from neo_jax.catalog import atomic
from neo_jax.model.config import ModelConfig
from neo_jax.model.decoder import Decoder

CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'

# -- the HF intermediate -----------------------------------------------------------------------

_LAYER_LINEAR = {  # ours -> HF suffix under model.layers.{i}.
    'q_proj': 'self_attn.q_proj.weight', 'k_proj': 'self_attn.k_proj.weight',
    'v_proj': 'self_attn.v_proj.weight', 'o_proj': 'self_attn.o_proj.weight',
    'gate_proj': 'mlp.gate_proj.weight', 'up_proj': 'mlp.up_proj.weight',
    'down_proj': 'mlp.down_proj.weight',
}
_LAYER_VECTOR = {
    'input_layernorm': 'input_layernorm.weight',
    'post_attention_layernorm': 'post_attention_layernorm.weight',
    'q_norm': 'self_attn.q_norm.weight', 'k_norm': 'self_attn.k_norm.weight',
    'q_bias': 'self_attn.q_proj.bias', 'k_bias': 'self_attn.k_proj.bias',
    'v_bias': 'self_attn.v_proj.bias',
}


def _layer_shapes(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
  """ours name -> (HF shape of one layer, our per-layer shape)."""
  d, n, k, h, f = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
  shapes = {
      'input_layernorm': ((d,), (d,)), 'post_attention_layernorm': ((d,), (d,)),
      'q_proj': ((n * h, d), (d, n, h)), 'k_proj': ((k * h, d), (d, k, h)),
      'v_proj': ((k * h, d), (d, k, h)), 'o_proj': ((d, n * h), (n, h, d)),
      'gate_proj': ((f, d), (d, f)), 'up_proj': ((f, d), (d, f)), 'down_proj': ((d, f), (f, d)),
  }
  if cfg.qk_norm:
    shapes.update(q_norm=((h,), (h,)), k_norm=((h,), (h,)))
  if cfg.qkv_bias:
    shapes.update(q_bias=((n * h,), (n, h)), k_bias=((k * h,), (k, h)),
                  v_bias=((k * h,), (k, h)))
  return shapes


def _check_shape(name: str, arr: np.ndarray, want: tuple[int, ...]) -> None:
  if tuple(arr.shape) != tuple(want):
    raise ValueError(f'checkpoint tensor {name!r} has shape {tuple(arr.shape)}, expected '
                     f'{tuple(want)} for this model config')


def params_from_hf(cfg: ModelConfig, get: Callable[[str], np.ndarray | None]
                   ) -> dict[str, np.ndarray]:
  """Our parameters (flat names: 'embed_tokens', 'layers.q_proj', ...) from HF tensors.

  Args:
    cfg: the model config the tensors must fit.
    get: HF tensor name -> numpy array (HF layout), or None when the checkpoint lacks it.

  Raises:
    ValueError: a missing tensor or a shape that does not fit `cfg`.
  """
  def need(name):
    arr = get(name)
    if arr is None:
      raise ValueError(f'checkpoint has no tensor {name!r}')
    return arr

  out = {}
  emb = need('model.embed_tokens.weight')
  _check_shape('model.embed_tokens.weight', emb, (cfg.vocab_size, cfg.d_model))
  out['embed_tokens'] = emb
  norm = need('model.norm.weight')
  _check_shape('model.norm.weight', norm, (cfg.d_model,))
  out['norm'] = norm
  if not cfg.tie_embeddings:
    head = need('lm_head.weight')
    _check_shape('lm_head.weight', head, (cfg.vocab_size, cfg.d_model))
    out['lm_head'] = head
  for ours, (hf_shape, our_shape) in _layer_shapes(cfg).items():
    suffix = _LAYER_LINEAR.get(ours) or _LAYER_VECTOR[ours]
    per_layer = []
    for i in range(cfg.num_layers):
      name = f'model.layers.{i}.{suffix}'
      arr = need(name)
      _check_shape(name, arr, hf_shape)
      # Linear weights are (out, in) in HF; ours are (in, out) with the head axis unfused.
      per_layer.append((arr.T if arr.ndim == 2 else arr).reshape(our_shape))
    out['layers.' + ours] = np.stack(per_layer)
  return out


def model_from_params(cfg: ModelConfig, params: Mapping[str, np.ndarray]) -> Decoder:
  """A `Decoder` holding `params` (flat names as from `params_from_hf`) in `cfg.param_dtype`.

  Built from abstract shapes, so no random initialisation runs.
  """
  model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
  seen = set()
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    name = '.'.join(str(p) for p in path)
    if name not in params:
      raise ValueError(f'no value for parameter {name!r}')
    value = np.asarray(params[name])
    _check_shape(name, value, var.get_value().shape)
    if not np.all(np.isfinite(value.astype(np.float32))):
      raise ValueError(f'parameter {name!r} has non-finite values')
    var.set_value(jnp.asarray(value.astype(np.float32), cfg.storage_dtype))
    seen.add(name)
  extra = sorted(set(params) - seen)
  if extra:
    raise ValueError(f'values given for unknown parameters {extra}')
  return model


def hf_from_model(model: Decoder, dtype=np.float32) -> dict[str, np.ndarray]:
  """The model's weights as HF-named tensors (inverse of `params_from_hf`), cast to dtype."""
  cfg = model.cfg
  out = {'model.embed_tokens.weight': np.asarray(model.embed_tokens[...], np.float32),
         'model.norm.weight': np.asarray(model.norm[...], np.float32)}
  if not cfg.tie_embeddings:
    out['lm_head.weight'] = np.asarray(model.lm_head[...], np.float32)
  stacked = model.layers.stacked()
  for ours, (hf_shape, _) in _layer_shapes(cfg).items():
    suffix = _LAYER_LINEAR.get(ours) or _LAYER_VECTOR[ours]
    arr = np.asarray(stacked[ours], np.float32)
    for i in range(cfg.num_layers):
      layer = arr[i]
      # Linear: ours is HF's (out, in) transposed, with the head axis unfused.
      layer = layer.reshape(hf_shape[::-1]).T if ours in _LAYER_LINEAR else layer.reshape(
          hf_shape)
      out[f'model.layers.{i}.{suffix}'] = np.ascontiguousarray(layer)
  return {k: v.astype(dtype) for k, v in out.items()}


# -- GGUF --------------------------------------------------------------------------------------

_GGUF_ARCHS = ('llama', 'qwen2', 'qwen3')
_GGUF_LAYER = {  # llama.cpp name under blk.{i}. -> HF suffix under model.layers.{i}.
    'attn_norm.weight': 'input_layernorm.weight',
    'ffn_norm.weight': 'post_attention_layernorm.weight',
    'attn_q.weight': 'self_attn.q_proj.weight', 'attn_k.weight': 'self_attn.k_proj.weight',
    'attn_v.weight': 'self_attn.v_proj.weight', 'attn_output.weight': 'self_attn.o_proj.weight',
    'attn_q.bias': 'self_attn.q_proj.bias', 'attn_k.bias': 'self_attn.k_proj.bias',
    'attn_v.bias': 'self_attn.v_proj.bias',
    'attn_q_norm.weight': 'self_attn.q_norm.weight',
    'attn_k_norm.weight': 'self_attn.k_norm.weight',
    'ffn_gate.weight': 'mlp.gate_proj.weight', 'ffn_up.weight': 'mlp.up_proj.weight',
    'ffn_down.weight': 'mlp.down_proj.weight',
}
_GGUF_GLOBAL = {'token_embd.weight': 'model.embed_tokens.weight',
                'output_norm.weight': 'model.norm.weight', 'output.weight': 'lm_head.weight'}


def _unpermute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Inverse of llama.cpp's q/k row permutation: per head, GGUF row (i, j) (i < H/2, j < 2)
  holds HF row (j, i) (half j of the head, index i within the half). Works on (rows, ...)."""
  rows = w.shape[0]
  h = rows // n_heads
  return w.reshape(n_heads, h // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_field(reader, key: str, default=None):
  field = reader.fields.get(key)
  if field is None:
    return default
  return field.contents()


def gguf_config(reader, **overrides) -> ModelConfig:
  """ModelConfig from the `{arch}.*` metadata of an open `gguf.GGUFReader`."""
  path = getattr(reader, 'path', '<gguf>')
  arch = _gguf_field(reader, 'general.architecture')
  if arch not in _GGUF_ARCHS:
    raise ValueError(f'{path}: GGUF architecture {arch!r} is not supported; known: '
                     f'{_GGUF_ARCHS}')
  names = {t.name for t in reader.tensors}
  if 'rope_freqs.weight' in names:
    raise ValueError(f'{path}: per-frequency RoPE factors (rope_freqs.weight, Llama 3.x '
                     'scaling) are not supported from GGUF; import the safetensors checkpoint')

  def need(key):
    value = _gguf_field(reader, f'{arch}.{key}')
    if value is None:
      raise ValueError(f'{path}: GGUF metadata lacks {arch}.{key}')
    return value

  d = int(need('embedding_length'))
  n = int(need('attention.head_count'))
  tokens = _gguf_field(reader, 'tokenizer.ggml.tokens')
  vocab = _gguf_field(reader, f'{arch}.vocab_size')
  if vocab is None:
    if tokens is None:
      raise ValueError(f'{path}: GGUF has neither {arch}.vocab_size nor tokenizer.ggml.tokens')
    vocab = len(tokens)
  head_dim = _gguf_field(reader, f'{arch}.attention.key_length') or d // n
  fields = dict(
      vocab_size=int(vocab), d_model=d, num_layers=int(need('block_count')), num_heads=n,
      num_kv_heads=int(_gguf_field(reader, f'{arch}.attention.head_count_kv', n)),
      head_dim=int(head_dim), mlp_dim=int(need('feed_forward_length')),
      rope_theta=float(_gguf_field(reader, f'{arch}.rope.freq_base', 10000.0)),
      norm_eps=float(need('attention.layer_norm_rms_epsilon')),
      tie_embeddings='output.weight' not in names,
      max_seq_len=int(_gguf_field(reader, f'{arch}.context_length', 2048)),
      qk_norm=arch == 'qwen3', qkv_bias=arch == 'qwen2')
  fields.update(overrides)
  return ModelConfig(**fields)


def gguf_tensor(tensor) -> np.ndarray:
  """float32 numpy array (numpy axis order = HF (out, in)) of one GGUF tensor, dequantised."""
  import gguf  # pylint: disable=g-import-not-at-top  (heavy; only GGUF users pay for it)
  kind = tensor.tensor_type
  if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
    arr = np.asarray(tensor.data, np.float32)
  else:
    try:
      arr = gguf.quants.dequantize(tensor.data, kind)
    except NotImplementedError as e:
      raise ValueError(f'GGUF tensor {tensor.name!r}: quantisation {kind.name} is not '
                       f'supported by gguf.quants.dequantize') from e
  # ggml lists dims innermost first; numpy wants them outermost first.
  shape = tuple(int(s) for s in reversed(tensor.shape))
  return np.asarray(arr, np.float32).reshape(shape)


def load_gguf(path: str, **overrides) -> tuple[Decoder, object]:
  """Loads a GGUF model file into a `Decoder`.

  Args:
    path: the .gguf file.
    **overrides: ModelConfig fields to replace (e.g. dtype='bfloat16'); shapes must fit.

  Returns:
    (decoder, the open gguf.GGUFReader) — the reader also holds the tokenizer metadata
    (see neo_jax.tokenizer.bpe.BPETokenizer.from_gguf).
  """
  import gguf  # pylint: disable=g-import-not-at-top
  _local_only(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'GGUF file {path!r} does not exist')
  reader = gguf.GGUFReader(path)
  cfg = gguf_config(reader, **overrides)
  arch = _gguf_field(reader, 'general.architecture')
  by_hf: dict[str, object] = {}
  for t in reader.tensors:
    if t.name in _GGUF_GLOBAL:
      by_hf[_GGUF_GLOBAL[t.name]] = t
      continue
    parts = t.name.split('.', 2)
    if len(parts) == 3 and parts[0] == 'blk' and parts[2] in _GGUF_LAYER:
      by_hf[f'model.layers.{parts[1]}.{_GGUF_LAYER[parts[2]]}'] = t
    else:
      raise ValueError(f'{path}: unexpected GGUF tensor {t.name!r}')

  def get(name):
    t = by_hf.get(name)
    if t is None:
      return None
    arr = gguf_tensor(t)
    if arch == 'llama' and ('q_proj' in name or 'k_proj' in name):
      arr = _unpermute_rope(arr, cfg.num_heads if 'q_proj' in name else cfg.num_kv_heads)
    return arr

  params = params_from_hf(cfg, get)
  used = set(_needed_hf_names(cfg))
  unused = sorted(set(by_hf) - used)
  if unused:
    raise ValueError(f'{path}: GGUF tensors not used by the config: {unused[:5]}')
  return model_from_params(cfg, params), reader


def _needed_hf_names(cfg: ModelConfig) -> list[str]:
  names = ['model.embed_tokens.weight', 'model.norm.weight']
  if not cfg.tie_embeddings:
    names.append('lm_head.weight')
  for ours in _layer_shapes(cfg):
    suffix = _LAYER_LINEAR.get(ours) or _LAYER_VECTOR[ours]
    names += [f'model.layers.{i}.{suffix}' for i in range(cfg.num_layers)]
  return names


# -- safetensors -------------------------------------------------------------------------------

_ST_DTYPES = {'F32': np.dtype('<f4'), 'F16': np.dtype('<f2'), 'BF16': np.dtype(ml_dtypes.bfloat16),
              'F64': np.dtype('<f8')}
_HF_ARCHS = {'llama': 'LlamaForCausalLM', 'qwen2': 'Qwen2ForCausalLM',
             'qwen3': 'Qwen3ForCausalLM'}


def _local_only(path: str) -> None:
  """Hugging Face and GGUF files are local: a URI (`catalog.atomic.is_remote`) is a
  ValueError saying so."""
  if atomic.is_remote(path):
    raise ValueError(f'{path}: Hugging Face and GGUF weights are read (memory-mapped) and '
                     'written on local paths only; copy them to or from a local folder')


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of one .safetensors file (memory-mapped, read-only numpy arrays)."""
  _local_only(path)
  with open(path, 'rb') as f:
    head = f.read(8)
    if len(head) != 8:
      raise ValueError(f'{path}: not a safetensors file (shorter than 8 bytes)')
    (n,) = struct.unpack('<Q', head)
    try:
      header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f'{path}: malformed safetensors header: {e}') from e
  data = np.memmap(path, np.uint8, mode='r', offset=8 + n) if os.path.getsize(path) > 8 + n \
      else np.zeros(0, np.uint8)
  out = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    dtype = _ST_DTYPES.get(info.get('dtype'))
    if dtype is None:
      raise ValueError(f'{path}: tensor {name!r} has unsupported dtype {info.get("dtype")!r}; '
                       f'supported: {sorted(_ST_DTYPES)}')
    begin, end = info['data_offsets']
    shape = tuple(info['shape'])
    if end - begin != math.prod(shape) * dtype.itemsize or end > data.size:
      raise ValueError(f'{path}: tensor {name!r} byte range [{begin}, {end}) does not fit '
                       f'shape {shape} x {dtype} or the file')
    out[name] = data[begin:end].view(dtype).reshape(shape)
  return out


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
  """Writes numpy arrays (f32, f16, bf16) as one .safetensors file (atomically)."""
  names = {v: k for k, v in _ST_DTYPES.items()}
  header: dict[str, object] = {}
  if metadata:
    header['__metadata__'] = {str(k): str(v) for k, v in metadata.items()}
  offset = 0
  arrays = []
  for name in sorted(tensors):
    arr = np.ascontiguousarray(tensors[name])
    if arr.dtype not in names:
      raise ValueError(f'tensor {name!r}: dtype {arr.dtype} cannot be written; use one of '
                       f'{sorted(names.values())}')
    header[name] = {'dtype': names[arr.dtype], 'shape': list(arr.shape),
                    'data_offsets': [offset, offset + arr.nbytes]}
    offset += arr.nbytes
    arrays.append(arr)
  raw = json.dumps(header, separators=(',', ':')).encode('utf-8')
  raw += b' ' * (-len(raw) % 8)  # keeps the data 8-byte aligned, as the reference writer does
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(struct.pack('<Q', len(raw)))
    f.write(raw)
    for arr in arrays:
      f.write(arr.tobytes())
  os.replace(tmp, path)


def hf_config_to_model_config(hf: Mapping, **overrides) -> ModelConfig:
  """ModelConfig from a Hugging Face `config.json` dict (llama, qwen2, qwen3)."""
  kind = hf.get('model_type')
  if kind not in _HF_ARCHS:
    raise ValueError(f'config.json model_type {kind!r} is not supported; known: '
                     f'{sorted(_HF_ARCHS)}')
  for key in ('vocab_size', 'hidden_size', 'num_hidden_layers', 'num_attention_heads',
              'intermediate_size'):
    if key not in hf:
      raise ValueError(f'config.json lacks {key!r}')
  n = int(hf['num_attention_heads'])
  scaling = None
  rs = hf.get('rope_scaling')
  if rs:
    rtype = rs.get('rope_type', rs.get('type'))
    if rtype != 'llama3':
      raise ValueError(f'config.json rope_scaling type {rtype!r} is not supported (only '
                       "'llama3')")
    scaling = (float(rs['factor']), float(rs['low_freq_factor']), float(rs['high_freq_factor']),
               int(rs['original_max_position_embeddings']))
  if kind == 'llama' and hf.get('mlp_bias'):
    raise ValueError('config.json: mlp_bias=True is not supported')
  qkv_bias = kind == 'qwen2' or (kind == 'llama' and bool(hf.get('attention_bias', False)))
  if kind == 'llama' and qkv_bias and hf.get('attention_bias'):
    raise ValueError('config.json: a Llama attention_bias also biases o_proj, which is not '
                     'supported')
  fields = dict(
      vocab_size=int(hf['vocab_size']), d_model=int(hf['hidden_size']),
      num_layers=int(hf['num_hidden_layers']), num_heads=n,
      num_kv_heads=int(hf.get('num_key_value_heads') or n),
      head_dim=int(hf.get('head_dim') or int(hf['hidden_size']) // n),
      mlp_dim=int(hf['intermediate_size']), rope_theta=float(hf.get('rope_theta', 10000.0)),
      norm_eps=float(hf.get('rms_norm_eps', 1e-6)),
      tie_embeddings=bool(hf.get('tie_word_embeddings', False)),
      max_seq_len=int(hf.get('max_position_embeddings', 2048)),
      qk_norm=kind == 'qwen3', qkv_bias=qkv_bias, rope_llama3_scaling=scaling)
  fields.update(overrides)
  return ModelConfig(**fields)


def model_config_to_hf(cfg: ModelConfig) -> dict:
  """A Hugging Face `config.json` dict describing `cfg` (llama, qwen2 or qwen3 layout)."""
  if cfg.qk_norm and cfg.qkv_bias:
    raise ValueError('no HF layout has both q/k norm and qkv bias')
  kind = 'qwen3' if cfg.qk_norm else 'qwen2' if cfg.qkv_bias else 'llama'
  if kind == 'qwen2' and cfg.head_dim * cfg.num_heads != cfg.d_model:
    raise ValueError('Qwen2 configs derive head_dim from hidden_size / heads; this config '
                     f'has head_dim={cfg.head_dim} != {cfg.d_model} / {cfg.num_heads}')
  out = {
      'architectures': [_HF_ARCHS[kind]], 'model_type': kind,
      'vocab_size': cfg.vocab_size, 'hidden_size': cfg.d_model,
      'num_hidden_layers': cfg.num_layers, 'num_attention_heads': cfg.num_heads,
      'num_key_value_heads': cfg.num_kv_heads, 'head_dim': cfg.head_dim,
      'intermediate_size': cfg.mlp_dim, 'rope_theta': cfg.rope_theta,
      'rms_norm_eps': cfg.norm_eps, 'tie_word_embeddings': cfg.tie_embeddings,
      'max_position_embeddings': cfg.max_seq_len, 'hidden_act': 'silu',
      'torch_dtype': 'bfloat16' if cfg.param_dtype == 'bfloat16' else 'float32',
      'attention_bias': False, 'mlp_bias': False,
  }
  if cfg.rope_llama3_scaling is not None:
    factor, low, high, original = cfg.rope_llama3_scaling
    out['rope_scaling'] = {'rope_type': 'llama3', 'factor': factor, 'low_freq_factor': low,
                           'high_freq_factor': high,
                           'original_max_position_embeddings': original}
  return out


def load_safetensors_dir(directory: str, **overrides) -> Decoder:
  """Loads a Hugging Face checkpoint directory (config.json + model*.safetensors)."""
  _local_only(directory)
  cfg_path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f'{directory}: no {CONFIG_FILE}')
  with open(cfg_path) as f:
    cfg = hf_config_to_model_config(json.load(f), **overrides)
  index_path = os.path.join(directory, INDEX_FILE)
  if os.path.isfile(index_path):
    with open(index_path) as f:
      weight_map = json.load(f).get('weight_map')
    if not isinstance(weight_map, dict):
      raise ValueError(f'{index_path}: no weight_map')
    files = sorted(set(weight_map.values()))
  elif os.path.isfile(os.path.join(directory, WEIGHTS_FILE)):
    files, weight_map = [WEIGHTS_FILE], None
  else:
    raise FileNotFoundError(f'{directory}: neither {WEIGHTS_FILE} nor {INDEX_FILE}')
  tensors: dict[str, np.ndarray] = {}
  for name in files:
    for key, arr in read_safetensors(os.path.join(directory, name)).items():
      if key in tensors:
        raise ValueError(f'{directory}: tensor {key!r} appears in more than one shard')
      if weight_map is not None and weight_map.get(key) != name:
        raise ValueError(f'{directory}: tensor {key!r} is in {name} but the index says '
                         f'{weight_map.get(key)!r}')
      tensors[key] = arr
  if weight_map is not None:
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
      raise ValueError(f'{directory}: tensors listed in the index but absent: {missing[:5]}')

  def get(name):
    arr = tensors.get(name)
    return None if arr is None else np.asarray(arr, np.float32)

  params = params_from_hf(cfg, get)
  needed = set(_needed_hf_names(cfg))
  # A tied checkpoint may still carry a copy of the head; anything else unused is an error.
  unused = sorted(set(tensors) - needed - {'lm_head.weight'})
  if unused:
    raise ValueError(f'{directory}: tensors not used by the config: {unused[:5]}')
  return model_from_params(cfg, params)


def export_safetensors_dir(model: Decoder, directory: str, tokenizer=None,
                           dtype: str | None = None) -> None:
  """Writes `model` as a Hugging Face checkpoint directory other tools can load.

  Files: config.json, model.safetensors (dtype: 'float32' or 'bfloat16', default the model's
  param_dtype), and, if `tokenizer` is given, whatever its `save` writes (the BPE tokenizer
  writes a `tokenizer.json` whose added tokens are the SID block; see tokenizer/bpe.py).
  """
  _local_only(directory)
  dtype = dtype or model.cfg.param_dtype
  np_dtypes = {'float32': np.float32, 'bfloat16': ml_dtypes.bfloat16, 'float16': np.float16}
  if dtype not in np_dtypes:
    raise ValueError(f'export dtype {dtype!r} is not one of {sorted(np_dtypes)}')
  os.makedirs(directory, exist_ok=True)
  hf_cfg = model_config_to_hf(model.cfg)
  hf_cfg['torch_dtype'] = dtype
  if tokenizer is not None:
    hf_cfg.update(bos_token_id=int(tokenizer.bos_id), eos_token_id=int(tokenizer.eos_id),
                  pad_token_id=int(tokenizer.pad_id))
    if tokenizer.vocab_size != model.cfg.vocab_size:
      raise ValueError(f'tokenizer has {tokenizer.vocab_size} ids but the model '
                       f'{model.cfg.vocab_size} rows')
  write_safetensors(os.path.join(directory, WEIGHTS_FILE),
                    hf_from_model(model, np_dtypes[dtype]), metadata={'format': 'pt'})
  with open(os.path.join(directory, CONFIG_FILE), 'w') as f:
    json.dump(hf_cfg, f, indent=1)
  if tokenizer is not None:
    tokenizer.save(directory)
