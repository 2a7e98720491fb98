"""Times residual k-means SIDs at catalog scale (the 1M items x 384 dimensions target).

  python -m experiments.benchmarks.sids --num_items=1000000
  python -m experiments.benchmarks.sids --num_items=50000 --dim=128 --mode=in_memory

Random-but-clustered unit vectors (`--centers` latent clusters, Gaussian noise) are generated
chunk by chunk into one (N, D) float32 array, then quantised with `--levels` levels of
`--k` codes. `--mode=streaming` (default) streams batches of `--batch_size` items through
`stream_kmeans.residual_kmeans_streaming` (mini-batch updates unless --nominibatch), sharded
over every local device when there are several; `--mode=in_memory` runs
`kmeans.residual_kmeans` (the whole array on one device; small N only).

Prints the devices, per-level figures, seconds, and the peak resident memory of the process
(`resource.getrusage`, which includes the JAX runtime) against the size of the embedding
matrix; the last line is the JSON result (also written to --workdir/result.json if given).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

from neo_jax.catalog import progress
from neo_jax.run import rundir
from neo_jax.sid import kmeans as km
from neo_jax.sid import stream_kmeans as sk

_N = flags.DEFINE_integer('num_items', 1_000_000, 'items to quantise')
_D = flags.DEFINE_integer('dim', 384, 'embedding dimension (all-MiniLM-L6-v2: 384)')
_K = flags.DEFINE_integer('k', 256, 'codes per level')
_LEVELS = flags.DEFINE_integer('levels', 4, 'residual k-means levels')
_ITERS = flags.DEFINE_integer('iters', 8, 'maximum passes (epochs) per level')
_TOL = flags.DEFINE_float('tol', 1e-3, 'relative squared-error decrease that stops a level')
_BATCH = flags.DEFINE_integer('batch_size', 65536, 'items per device batch (streaming)')
_MINIBATCH = flags.DEFINE_bool('minibatch', True, 'mini-batch updates (streaming)')
_SAMPLE = flags.DEFINE_integer('init_sample', 32768, 'k-means++ seeding sample (streaming)')
_MODE = flags.DEFINE_enum('mode', 'streaming', ['streaming', 'in_memory'], 'implementation')
_CENTERS = flags.DEFINE_integer('centers', 2000, 'latent clusters of the synthetic data')
_SEED = flags.DEFINE_integer('seed', 0, 'data and k-means seed')
_WORKDIR = flags.DEFINE_string('workdir', None, 'optional: write result.json here')


def _peak_rss_bytes() -> int:
  # Linux reports ru_maxrss in KiB (macOS in bytes).
  r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(r) if sys.platform == 'darwin' else int(r) * 1024


def clustered_embeddings(n: int, d: int, centers: int, seed: int,
                         chunk: int = 65536) -> np.ndarray:
  """(n, d) float32 unit vectors around `centers` random directions, made chunk by chunk."""
  rng = np.random.default_rng(seed)
  c = rng.normal(size=(centers, d)).astype(np.float32)
  out = np.empty((n, d), np.float32)
  for lo in progress.track(range(0, n, chunk), 'generating embeddings', unit='chunks'):
    m = min(chunk, n - lo)
    x = c[rng.integers(0, centers, m)] + 0.6 * rng.standard_normal((m, d), np.float32)
    out[lo:lo + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
  return out


def main(argv):
  del argv
  devices = jax.devices()
  print(f'devices: {len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), '
        f'{os.cpu_count()} host cores')
  t0 = time.perf_counter()
  x = clustered_embeddings(_N.value, _D.value, _CENTERS.value, _SEED.value)
  gen_s = time.perf_counter() - t0
  matrix = x.nbytes
  rss_after_data = _peak_rss_bytes()
  print(f'data: {x.shape} float32 = {matrix / 2**20:.0f} MiB, generated in {gen_s:.1f}s')
  ks = (_K.value,) * _LEVELS.value
  t0 = time.perf_counter()
  if _MODE.value == 'streaming':
    mesh = sk.data_mesh() if len(devices) > 1 else None
    _, _, info = sk.residual_kmeans_streaming(
        x, ks, seed=_SEED.value, iters=_ITERS.value, tol=_TOL.value, batch_size=_BATCH.value,
        minibatch=_MINIBATCH.value, mesh=mesh, init_sample=_SAMPLE.value, progress=True)
  else:
    _, _, info = km.residual_kmeans(x, ks, seed=_SEED.value, iters=_ITERS.value, tol=_TOL.value)
  seconds = time.perf_counter() - t0
  peak = _peak_rss_bytes()
  passes = sum(info[f'iterations_l{l}'] for l in range(_LEVELS.value))
  for l in range(_LEVELS.value):
    print(f'level {l}: K={info[f"k_l{l}"]}, passes {info[f"iterations_l{l}"]}, '
          f'mse {info[f"mse_l{l}"]:.5f}, utilisation {info[f"utilisation_l{l}"]:.3f}')
  print(f'quantised {_N.value} x {_D.value} in {seconds:.1f}s ({_N.value / seconds:.0f} '
        f'items/s); peak RSS {peak / 2**20:.0f} MiB = {peak / matrix:.2f}x the embedding '
        f'matrix (after generating the data: {rss_after_data / 2**20:.0f} MiB)')
  result = {
      'num_items': _N.value, 'dim': _D.value, 'k': _K.value, 'levels': _LEVELS.value,
      'mode': _MODE.value, 'minibatch': bool(_MINIBATCH.value), 'batch_size': _BATCH.value,
      'iters': _ITERS.value, 'tol': _TOL.value, 'devices': len(devices),
      'device_kind': devices[0].device_kind, 'host_cores': os.cpu_count(),
      'seconds': seconds, 'lloyd_passes': passes, 'items_per_s': _N.value / seconds,
      'peak_rss_mib': peak / 2**20, 'matrix_mib': matrix / 2**20,
      'peak_rss_over_matrix': peak / matrix, 'mse_input': info['mse_input'],
  }
  result.update({k: v for k, v in info.items() if k.startswith(('mse_l', 'utilisation_l'))})
  if _WORKDIR.value:
    rundir.write_result(_WORKDIR.value, result)
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
