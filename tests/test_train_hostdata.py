"""Per-host data: simulated hosts' row blocks, assembled, equal the global batch; one process
goes through jax.make_array_from_process_local_data and gets the whole batch."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from neo_jax.train import hostdata
from test_train_loop import _data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SIMULATED = '''
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from neo_jax.model import sharding
from neo_jax.train import hostdata
from test_train_loop import _data

assert jax.device_count() == 8
data = _data(rows=40, batch_size=8)
for shape in [(8, 1, 1), (4, 2, 1), (2, 2, 2), (1, 1, 8)]:
  mesh = sharding.make_mesh(*shape)
  s = NamedSharding(mesh, PartitionSpec(('data', 'fsdp')))
  # Two simulated hosts: the first and the second half of the mesh's devices.
  flat = list(mesh.devices.flat)
  hosts = [flat[:4], flat[4:]]
  for step in (0, 3, 7):
    want = data.batch(step)
    ranges = [hostdata.host_row_range(s, 8, h) for h in hosts]
    local = [data.batch(step, rows=r) for r in ranges]
    idx = s.devices_indices_map((8, 16))
    for key in want:
      # Each device's shard cut from its own host's rows only, then one global array.
      shards = []
      for h, (lo, hi), part in zip(hosts, ranges, local):
        for d in h:
          a, b, _ = idx[d][0].indices(8)
          assert lo <= a and b <= hi
          shards.append(jax.device_put(part[key][a - lo:b - lo], d))
      arr = jax.make_array_from_single_device_arrays(want[key].shape, s, shards)
      np.testing.assert_array_equal(np.asarray(arr), want[key])
    # The hosts' blocks, in order, are the global batch.
    if shape[2] == 1:
      assert ranges == [(0, 4), (4, 8)], ranges
  print('ok', shape)
'''


def test_simulated_hosts_assemble_the_global_batch():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu', PYTHONPATH=REPO + os.pathsep + os.path.join(REPO, 'tests'))
  proc = subprocess.run([sys.executable, '-c', textwrap.dedent(_SIMULATED)], env=env,
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert proc.stdout.count('ok ') == 4, proc.stdout


def test_one_process_assembles_its_whole_batch():
  assert jax.process_count() == 1
  data = _data(rows=12, batch_size=4)
  s = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  assert hostdata.host_row_range(s, 4) == (0, 4)
  got = hostdata.assemble(data.batch(2, rows=(0, 4)), s, 4)
  for k, v in data.batch(2).items():
    assert got[k].sharding == s and got[k].shape == v.shape
    np.testing.assert_array_equal(np.asarray(got[k]), v)
  np.testing.assert_array_equal(data.batch(5, rows=(1, 3))['tokens'],
                                data.batch(5)['tokens'][1:3])
  with pytest.raises(ValueError, match='outside the batch'):
    data.batch(0, rows=(2, 9))
