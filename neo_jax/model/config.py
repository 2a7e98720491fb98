"""Decoder hyper-parameters and the presets of the backbones NEO is built on.

Presets copy the published `config.json` of each checkpoint so that a later import maps its
tensors 1:1 onto `Decoder`'s parameters (see decoder.py for the name/shape table).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

_DTYPES = ('float32', 'bfloat16', 'float16')
REMAT_POLICIES = ('none', 'full', 'dots')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A Llama-family decoder.

  Attributes:
    vocab_size: rows of the embedding (and of the LM head), text + SID block.
    d_model: width of the residual stream.
    num_layers: decoder blocks.
    num_heads: query heads.
    num_kv_heads: key/value heads (grouped-query attention); divides num_heads.
    head_dim: width of one head (not necessarily d_model // num_heads: Qwen3 differs).
    mlp_dim: hidden width of the SwiGLU MLP.
    rope_theta: RoPE base.
    norm_eps: RMSNorm epsilon.
    tie_embeddings: the LM head is the embedding matrix (no separate head parameter).
    max_seq_len: the longest position the checkpoint was trained for; informational (RoPE is
      computed from positions on the fly), used by callers to size caches and packing.
    dtype: compute dtype of activations ('float32', 'bfloat16', 'float16'); logits are float32.
    param_dtype: storage dtype of the parameters.
    qk_norm: Qwen3: RMSNorm over head_dim on every query and key head before RoPE.
    qkv_bias: Qwen2: additive bias on the q, k and v projections.
    rope_llama3_scaling: Llama 3.1/3.2 frequency scaling, as (factor, low_freq_factor,
      high_freq_factor, original_max_position_embeddings), or None for plain RoPE.
    remat: rematerialisation of each decoder block in the backward pass: 'none' (keep all
      activations), 'full' (keep only the block inputs), 'dots' (keep the projection matmul
      outputs, recompute the rest). Changes memory and speed, never values.
  """

  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  rope_theta: float = 10000.0
  norm_eps: float = 1e-5
  tie_embeddings: bool = False
  max_seq_len: int = 2048
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  qk_norm: bool = False
  qkv_bias: bool = False
  rope_llama3_scaling: tuple[float, float, float, int] | None = None
  remat: str = 'none'

  def __post_init__(self):
    for name in ('vocab_size', 'd_model', 'num_layers', 'num_heads', 'num_kv_heads', 'head_dim',
                 'mlp_dim', 'max_seq_len'):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f'ModelConfig.{name} must be a positive int, got {value!r}')
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f'ModelConfig.num_heads={self.num_heads} is not a multiple of '
                       f'num_kv_heads={self.num_kv_heads}')
    if self.head_dim % 2:
      raise ValueError(f'ModelConfig.head_dim={self.head_dim} must be even for RoPE')
    if self.rope_theta <= 0 or self.norm_eps <= 0:
      raise ValueError(f'ModelConfig.rope_theta ({self.rope_theta}) and norm_eps '
                       f'({self.norm_eps}) must be positive')
    for name in ('dtype', 'param_dtype'):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(f'ModelConfig.{name}={getattr(self, name)!r} is not one of {_DTYPES}')
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f'ModelConfig.remat={self.remat!r} is not one of {REMAT_POLICIES}')
    if self.rope_llama3_scaling is not None:
      if len(self.rope_llama3_scaling) != 4:
        raise ValueError('ModelConfig.rope_llama3_scaling must be (factor, low_freq_factor, '
                         f'high_freq_factor, original_max_position_embeddings), got '
                         f'{self.rope_llama3_scaling!r}')
      _, low, high, _ = self.rope_llama3_scaling
      if not high > low:
        raise ValueError(f'rope_llama3_scaling: high_freq_factor ({high}) must exceed '
                         f'low_freq_factor ({low})')

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def storage_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  def replace(self, **overrides) -> ModelConfig:
    return dataclasses.replace(self, **overrides)


PRESETS: dict[str, ModelConfig] = {
    # For tests: every code path, tiny shapes.
    'tiny': ModelConfig(
        vocab_size=512, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
        mlp_dim=128, rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=True, max_seq_len=128),
    # HuggingFaceTB/SmolLM2-135M.
    'smollm2-135m': ModelConfig(
        vocab_size=49152, d_model=576, num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
        mlp_dim=1536, rope_theta=100000.0, norm_eps=1e-5, tie_embeddings=True,
        max_seq_len=8192),
    # Qwen/Qwen3-0.6B.
    'qwen3-0.6b': ModelConfig(
        vocab_size=151936, d_model=1024, num_layers=28, num_heads=16, num_kv_heads=8,
        head_dim=128, mlp_dim=3072, rope_theta=1000000.0, norm_eps=1e-6, tie_embeddings=True,
        max_seq_len=40960, qk_norm=True),
    # meta-llama/Llama-3.2-1B.
    'llama-3.2-1b': ModelConfig(
        vocab_size=128256, d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8,
        head_dim=64, mlp_dim=8192, rope_theta=500000.0, norm_eps=1e-5, tie_embeddings=True,
        max_seq_len=131072, rope_llama3_scaling=(32.0, 1.0, 4.0, 8192)),
}


def get_config(name: str, **overrides) -> ModelConfig:
  """The preset `name` with fields replaced by `overrides` (e.g. dtype='bfloat16')."""
  if name not in PRESETS:
    raise KeyError(f'unknown model preset {name!r}; known: {sorted(PRESETS)}')
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise TypeError(f'unknown ModelConfig field(s) {unknown}; fields: {sorted(fields)}')
  return dataclasses.replace(PRESETS[name], **overrides)
