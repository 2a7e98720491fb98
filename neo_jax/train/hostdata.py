"""Per-host batches: each process materialises only its rows of the global batch, and the
global `jax.Array` is assembled with `jax.make_array_from_process_local_data`.

On a multi-host slice (one process per host, `jax.distributed.initialize()` first) the batch
is sharded over the mesh axes of the rules' 'batch' entry; the rows a process needs are those
its addressable devices hold, a contiguous block of the global batch when the mesh keeps each
host's devices together (jax.make_mesh does). A single process (process_count 1) takes the
same path with the whole batch as its block, so the code that runs on a pod is the code that
runs in the tests.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import numpy as np


def host_row_range(sharding: jax.sharding.Sharding, global_rows: int,
                   devices: Sequence[jax.Device] | None = None) -> tuple[int, int]:
  """[start, stop) of the global batch rows that `devices` (default: this process's
  addressable devices) hold under `sharding` (a sharding of arrays whose first dimension is
  the batch). Raises if those rows are not one contiguous block."""
  idx = sharding.devices_indices_map((global_rows, 1))
  devices = list(sharding.addressable_devices if devices is None else devices)
  if not devices:
    raise ValueError('no devices: this process holds no shard of the batch')
  ranges = set()
  for d in devices:
    if d not in idx:
      raise ValueError(f'device {d} is not in the sharding {sharding}')
    start, stop, _ = idx[d][0].indices(global_rows)
    ranges.add((start, stop))
  lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
  covered = np.zeros(hi - lo, bool)
  for start, stop in ranges:
    covered[start - lo:stop - lo] = True
  if not covered.all():
    raise ValueError(f'the batch rows of these devices are not contiguous ({sorted(ranges)}); '
                     'order the mesh so that each host holds one block of the batch')
  return lo, hi


def assemble(local: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding,
             global_rows: int) -> dict[str, jax.Array]:
  """The global batch from this process's rows (`local[k]` is (stop - start, ...), the rows
  of `host_row_range`), one `jax.make_array_from_process_local_data` call per array."""
  out = {}
  for k, v in local.items():
    v = np.asarray(v)
    out[k] = jax.make_array_from_process_local_data(sharding, v, (global_rows,) + v.shape[1:])
  return out
