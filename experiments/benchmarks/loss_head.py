r"""The train step with the LM head at every position against the head at the loss positions
only (`neo_jax.train.loop.masked_lm_loss_at`), side by side in one run.

  python -m experiments.benchmarks.loss_head                 # MovieLens-shaped, this device
  XLA_FLAGS=--xla_cpu_multi_thread_eigen=false taskset -c 1 \
      python -m experiments.benchmarks.loss_head             # one CPU core, as a training lane

The model and batch have the MovieLens config's shapes (2 blocks, d_model 128, 1,568 tokens,
32 rows of 128, AdamW). Each `--rows` case draws loss positions per row (a normal around the
mean, one row at the maximum: the counts of the packed grounding and capability rows of
movielens100k.py are 22 / 50 and 50 / 98), builds the three steps (head everywhere, at the
loss positions of each row, at those of the whole batch, each bound `loss_positions_bound` of
the batch), checks that their losses and gradient norms agree, and times them in interleaved
rounds so that a drifting machine slows every variant alike. Prints median step times and
their ratios to the head everywhere; ends with the result.json line.
"""

import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from neo_jax.model.config import get_config
from neo_jax.model.decoder import Decoder
from neo_jax.run import rundir
from neo_jax.train import loop
from neo_jax.train import optimizer as optimizer_lib
from neo_jax.train.data import PackedData

_ROWS = flags.DEFINE_list('rows', ['22:50', '50:98'],
                          'Cases of loss positions per row, mean:max.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Rows per step.')
_SEQ_LEN = flags.DEFINE_integer('seq_len', 128, 'Tokens per row.')
_ROUNDS = flags.DEFINE_integer('rounds', 6, 'Interleaved timing rounds.')
_STEPS = flags.DEFINE_integer('steps', 4, 'Timed steps per variant per round.')
_WORKDIR = flags.DEFINE_string('workdir', '', 'If set, result.json is also written there.')


def _data(mean: int, most: int, batch: int, seq_len: int, vocab: int, seed: int = 0
          ) -> PackedData:
  rng = np.random.default_rng(seed)
  mask = np.zeros((batch, seq_len), bool)
  for r in range(batch):
    n = most if r == 0 else int(np.clip(rng.normal(mean, mean / 3), 1, most))
    mask[r, rng.choice(seq_len - 1, n, replace=False) + 1] = True
  return PackedData(rng.integers(0, vocab, (batch, seq_len)).astype(np.int32),
                    np.ones((batch, seq_len), np.int32),
                    np.tile(np.arange(seq_len, dtype=np.int32), (batch, 1)), mask, batch, seed,
                    {})


def main(argv):
  del argv
  cfg = get_config('tiny', vocab_size=1568, d_model=128, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=32, mlp_dim=384)
  graphdef, params, rest = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
  tx = optimizer_lib.make_optimizer(
      optimizer_lib.schedule(steps=1000, learning_rate=1e-3, warmup_steps=10), b1=0.9,
      b2=0.95, weight_decay=0.01, clip_norm=1.0)
  b, l = _BATCH.value, _SEQ_LEN.value
  result = {'device': jax.devices()[0].device_kind, 'batch_size': b, 'seq_len': l}
  print(f'{"rows mean:max":>14} {"variant":>12} {"positions":>10} {"step ms":>8} {"ratio":>6}')
  for case in _ROWS.value:
    mean, most = map(int, case.split(':'))
    data = _data(mean, most, b, l, cfg.vocab_size)
    batch = {k: jnp.asarray(v) for k, v in data.batch(0).items()}
    variants = {'everywhere': (0, 1), 'per_row': (loop.loss_positions_bound(data, 1), 1),
                'per_batch': (loop.loss_positions_bound(data, b), b)}
    steps, first = {}, {}
    for name, (k, group) in variants.items():
      steps[name] = jax.jit(loop.make_train_step(graphdef, rest, tx, loss_positions=k,
                                                 rows_per_group=group))
      _, _, m = steps[name](params, tx.init(params), batch)
      first[name] = (float(m['loss']), float(m['grad_norm']))
    for name, (loss, norm) in first.items():
      if not (np.isclose(loss, first['everywhere'][0], rtol=1e-5)
              and np.isclose(norm, first['everywhere'][1], rtol=1e-4)):
        raise AssertionError(f'{case} {name}: loss {loss}, grad norm {norm} differ from the '
                             f'head everywhere {first["everywhere"]}')
    opt_state = tx.init(params)
    times = {name: [] for name in steps}
    for _ in range(_ROUNDS.value):
      for name, step in steps.items():
        for _ in range(_STEPS.value):
          t = time.perf_counter()
          jax.block_until_ready(step(params, opt_state, batch))
          times[name].append(time.perf_counter() - t)
    base = float(np.median(times['everywhere']))
    for name, (k, _) in variants.items():
      ms = float(np.median(times[name])) * 1e3
      ratio = ms / 1e3 / base
      print(f'{case:>14} {name:>12} {k or b * (l - 1):>10} {ms:>8.0f} {ratio:>6.3f}')
      result[f'{case}/{name}/step_ms'] = ms
      result[f'{case}/{name}/ratio'] = ratio
      result[f'{case}/{name}/positions'] = k or b * (l - 1)
  if _WORKDIR.value:
    rundir.write_result(_WORKDIR.value, result)
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
