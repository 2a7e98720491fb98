r"""Training throughput: tokens/s per chip and model FLOPs utilisation (MFU) per preset.

  python -m experiments.benchmarks.train                       # tiny and smollm2-135m
  python -m experiments.benchmarks.train --presets=smollm2-135m --batch_size=32  # on a GPU

Defaults follow the device: on an accelerator sequence length 1024, bf16 compute (f32
parameters), batch 8 (tiny) / 16 (larger presets); on a CPU sequence length 128, f32, batch
8 / 1, so that both presets finish in a few minutes on 2 cores.

Times the library's own jitted train step (`neo_jax.train.loop.make_train_step`: forward,
backward, AdamW) on random tokens, after a warm-up that compiles it. Model FLOPs per token
follow the PaLM convention: 6 x (matmul parameters, LM head included, embedding lookup not)
+ 12 x layers x heads x head_dim x sequence length. The peak that MFU divides by is the
accelerator's published dense peak for the compute dtype when the device is known (H100/H200
SXM: 989 TFLOP/s bf16; for f32 the 67 TFLOP/s FP32 figure, not the TF32 tensor-core one); on
a CPU there is no published figure, so the peak is measured in the same run as the best of a
few large f32 matmuls, and the printed line says so.
Ends with the result.json line.
"""

import json
import os
import platform
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.benchmarks import flops
from neo_jax.catalog import progress
from neo_jax.run import rundir
from neo_jax.model.config import get_config
from neo_jax.model.decoder import Decoder
from neo_jax.train import loop
from neo_jax.train import optimizer as optimizer_lib

_PRESETS = flags.DEFINE_list('presets', ['tiny', 'smollm2-135m'], 'Model presets to time.')
_SEQ_LEN = flags.DEFINE_integer('seq_len', 0, 'Tokens per row; 0 = 1024 on accelerators, '
                                '128 on CPU.')
_BATCH = flags.DEFINE_integer('batch_size', 0,
                              'Rows per step; 0 = 8 for tiny; for larger presets 1 on CPU, '
                              '16 on accelerators.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Timed steps after the warm-up.')
_DTYPE = flags.DEFINE_string('dtype', '', "Compute dtype; '' = float32 on CPU, bfloat16 "
                             'on accelerators. Parameters stay float32.')
_REMAT = flags.DEFINE_enum('remat', 'none', ['none', 'dots', 'full'],
                           'Activation rematerialisation of the decoder blocks.')
_WORKDIR = flags.DEFINE_string('workdir', '', 'If set, result.json is also written there.')

def _time_preset(name: str, seq_len: int, batch: int, dtype: str, steps: int,
                 remat: str = 'none') -> dict:
  cfg = get_config(name, dtype=dtype, param_dtype='float32', remat=remat)
  model = Decoder(cfg, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optimizer_lib.make_optimizer(
      optimizer_lib.schedule(steps=1000, learning_rate=1e-4, warmup_steps=10), b1=0.9, b2=0.95,
      weight_decay=0.01, clip_norm=1.0)
  opt_state = tx.init(params)
  step = jax.jit(loop.make_train_step(graphdef, rest, tx), donate_argnums=(0, 1))
  rng = np.random.default_rng(0)
  batch_np = {
      'tokens': rng.integers(0, cfg.vocab_size, (batch, seq_len)).astype(np.int32),
      'positions': np.tile(np.arange(seq_len, dtype=np.int32), (batch, 1)),
      'segment_ids': np.ones((batch, seq_len), np.int32),
      'loss_mask': np.ones((batch, seq_len), bool),
  }
  data = {k: jnp.asarray(v) for k, v in batch_np.items()}
  t = time.perf_counter()
  params, opt_state, m = step(params, opt_state, data)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t
  times = []
  for _ in progress.track(range(steps), f'{name}: timed steps', unit='steps'):
    t = time.perf_counter()
    params, opt_state, m = step(params, opt_state, data)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  step_s = float(np.median(times))
  tokens_per_s = batch * seq_len / step_s / jax.local_device_count()
  return {
      'params': sum(x.size for x in jax.tree.leaves(params)),
      'seq_len': seq_len, 'batch_size': batch, 'dtype': dtype,
      'first_step_seconds': compile_s, 'step_seconds': step_s,
      'tokens_per_second': tokens_per_s,
      'model_flops_per_token': flops.flops_per_token(cfg, seq_len),
      'loss': float(m['loss']),
  }


def main(argv):
  del argv
  device = jax.devices()[0]
  on_cpu = device.platform == 'cpu'
  dtype = _DTYPE.value or ('float32' if on_cpu else 'bfloat16')
  kind = device.device_kind
  if on_cpu:
    peak, peak_source = flops.measured_matmul_peak(), 'measured 2048^2 f32 matmul, this CPU'
  else:
    peak = flops.published_peak(kind, dtype)
    peak_source = f'published dense {dtype} peak of {kind}' if peak else 'unknown'
  cpu = platform.processor() or platform.machine()
  seq_len = _SEQ_LEN.value or (128 if on_cpu else 1024)
  description = f'{kind} x{jax.local_device_count()} ({cpu}, {os.cpu_count()} CPUs)'
  print(f'device: {description}; peak '
        f'{peak / 1e12 if peak else float("nan"):.3f} TFLOP/s ({peak_source})')
  result = {'device': kind, 'device_description': description,
            'num_devices': jax.local_device_count(),
            'peak_flops_per_second': peak or float('nan'), 'peak_source': peak_source,
            'remat': _REMAT.value}
  print(f'{"preset":<14} {"params":>12} {"batch x len":>12} {"step s":>9} {"tokens/s":>10} '
        f'{"MFU":>7}')
  for name in _PRESETS.value:
    batch = _BATCH.value or (8 if name == 'tiny' else 1 if on_cpu else 16)
    r = _time_preset(name, seq_len, batch, dtype, _STEPS.value, _REMAT.value)
    mfu = r['tokens_per_second'] * r['model_flops_per_token'] / peak if peak else float('nan')
    print(f'{name:<14} {r["params"]:>12,} {f"{batch} x {seq_len}":>12} '
          f'{r["step_seconds"]:>9.3f} {r["tokens_per_second"]:>10,.0f} {mfu:>7.1%}')
    for k, v in r.items():
      result[f'{name}/{k}'] = v
    result[f'{name}/mfu'] = mfu
  if _WORKDIR.value:
    rundir.write_result(_WORKDIR.value, result)
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
