"""Times residual k-means on synthetic clustered unit vectors.

  python -m experiments.benchmarks.sid_kmeans --n=50000 --d=128 --k=256 --levels=4

Prints one line per run (the first includes jit compilation) and, last, a JSON object with
the figures of the warm run.
"""

from __future__ import annotations

import json
import time

from absl import app
from absl import flags
import numpy as np

from neo_jax.sid.kmeans import residual_kmeans

_N = flags.DEFINE_integer('n', 50_000, 'points')
_D = flags.DEFINE_integer('d', 128, 'dimensions')
_K = flags.DEFINE_integer('k', 256, 'codes per level')
_LEVELS = flags.DEFINE_integer('levels', 4, 'residual levels')
_ITERS = flags.DEFINE_integer('iters', 50, 'maximum Lloyd passes per level')
_CENTERS = flags.DEFINE_integer('centers', 300, 'latent clusters of the synthetic data')
_RUNS = flags.DEFINE_integer('runs', 2, 'timed runs (the first compiles)')


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(_CENTERS.value, _D.value))
  x = centers[rng.integers(0, _CENTERS.value, _N.value)] + 0.5 * rng.normal(
      size=(_N.value, _D.value))
  x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
  info = {}
  for run in range(_RUNS.value):
    t0 = time.perf_counter()
    _, _, info = residual_kmeans(x, (_K.value,) * _LEVELS.value, seed=0, iters=_ITERS.value)
    print(f'run {run}: {time.perf_counter() - t0:.2f}s')
  passes = sum(info[f'iterations_l{l}'] for l in range(_LEVELS.value))
  result = {'n': _N.value, 'd': _D.value, 'k': _K.value, 'levels': _LEVELS.value,
            'seconds': info['seconds'], 'lloyd_passes': passes,
            'ms_per_pass': 1e3 * info['seconds'] / max(passes, 1)}
  result.update({key: v for key, v in info.items() if key.startswith(('mse', 'utilisation'))})
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
