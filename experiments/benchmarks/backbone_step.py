"""Seconds per forward+backward step of a pretrained backbone (next-token loss, all params).

  python -m experiments.benchmarks.backbone_step --backbone=smollm2-135m --batch=1 --seq_len=128

Prints load time, compile time and the mean/min over --steps timed steps, then the result line.
"""

from __future__ import annotations

import json
import time

from absl import app
from absl import flags
import jax
import numpy as np
import optax
from flax import nnx

from neo_jax.catalog import progress
from neo_jax.model import backbones

_BACKBONE = flags.DEFINE_string('backbone', 'smollm2-135m', 'packaged name or path')
_BATCH = flags.DEFINE_integer('batch', 1, 'rows per step')
_SEQ = flags.DEFINE_integer('seq_len', 128, 'tokens per row')
_STEPS = flags.DEFINE_integer('steps', 3, 'timed steps after the compile')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'compute dtype')
_REMAT = flags.DEFINE_enum('remat', 'none', ['none', 'full', 'dots'], 'remat policy')


def main(argv):
  del argv
  t0 = time.perf_counter()
  model, _ = backbones.load_backbone(_BACKBONE.value, dtype=_DTYPE.value, remat=_REMAT.value)
  seconds_load = time.perf_counter() - t0
  tokens = np.random.default_rng(0).integers(0, model.cfg.vocab_size,
                                             (_BATCH.value, _SEQ.value + 1)).astype(np.int32)

  @nnx.jit
  def grad_step(model, tokens):
    def loss_fn(model):
      logits = model(tokens[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    return loss, optax.global_norm(grads)

  t0 = time.perf_counter()
  loss, gnorm = jax.block_until_ready(grad_step(model, tokens))
  seconds_compile = time.perf_counter() - t0
  times = []
  for _ in progress.track(range(_STEPS.value), f'{_BACKBONE.value}: timed steps',
                          unit='steps'):
    t0 = time.perf_counter()
    jax.block_until_ready(grad_step(model, tokens))
    times.append(time.perf_counter() - t0)
  result = {'backbone': _BACKBONE.value, 'batch': _BATCH.value, 'seq_len': _SEQ.value,
            'dtype': _DTYPE.value, 'remat': _REMAT.value, 'device': jax.devices()[0].platform,
            'seconds_load': seconds_load, 'seconds_compile_and_first_step': seconds_compile,
            'seconds_per_step_mean': float(np.mean(times)),
            'seconds_per_step_min': float(np.min(times)), 'loss': float(loss),
            'grad_norm': float(gnorm)}
  print(f'{_BACKBONE.value} fwd+bwd {_BATCH.value}x{_SEQ.value}: '
        f'{result["seconds_per_step_mean"]:.3f} s/step (min {result["seconds_per_step_min"]:.3f}),'
        f' compile+first {seconds_compile:.1f} s, loss {float(loss):.3f} (random tokens)')
  print(json.dumps(result, sort_keys=True))


if __name__ == '__main__':
  app.run(main)
