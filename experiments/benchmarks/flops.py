"""Model FLOPs and peak rates that the training benchmarks divide by (no flags: shared by
experiments/benchmarks/train.py and accelerator.py; not a benchmark of its own).

Model FLOPs per token follow the PaLM convention: 6 x (matmul parameters, LM head included,
embedding lookup not) + 12 x layers x heads x head_dim x sequence length. Peaks are the
accelerators' published dense rates per compute dtype (H100/H200 SXM: 989 TFLOP/s bf16, 67
TFLOP/s plain fp32, not the TF32 tensor-core figure); on a CPU there is no published figure
and the peak is measured.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

# Published dense peaks (FLOP/s) per device kind substring and compute dtype.
PEAKS = {
    ('H100', 'bfloat16'): 989e12, ('H100', 'float32'): 67e12,
    ('H200', 'bfloat16'): 989e12, ('H200', 'float32'): 67e12,
    ('A100', 'bfloat16'): 312e12, ('A100', 'float32'): 19.5e12,
}


def flops_per_token(cfg, seq_len: int) -> float:
  """Training FLOPs per token (forward + backward) of a decoder config at `seq_len`."""
  d, l = cfg.d_model, cfg.num_layers
  per_layer = (d * cfg.num_heads * cfg.head_dim  # q
               + 2 * d * cfg.num_kv_heads * cfg.head_dim  # k, v
               + cfg.num_heads * cfg.head_dim * d  # o
               + 3 * d * cfg.mlp_dim)  # gate, up, down
  matmul_params = l * per_layer + cfg.vocab_size * d  # + LM head
  return 6.0 * matmul_params + 12.0 * l * cfg.num_heads * cfg.head_dim * seq_len


def published_peak(device_kind: str, dtype: str) -> float | None:
  """The published dense peak of a device kind for a compute dtype, or None if unknown."""
  return next((v for (k, dt), v in PEAKS.items() if k in device_kind and dt == dtype), None)


def measured_matmul_peak(n: int = 2048, dtype: str = 'float32', device=None,
                         repeats: int = 5) -> float:
  """FLOP/s of the best of `repeats` n x n x n matmuls (after a compile) on `device`."""
  device = device or jax.devices()[0]
  a = jax.device_put(jnp.ones((n, n), dtype), device)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2.0 * n ** 3 / best
