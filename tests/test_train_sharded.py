"""The sharded train step equals the single-device step, and gradient accumulation equals the
whole batch. Multi-device cases run on 8 fake CPU devices in a subprocess."""

import os
import subprocess
import sys
import textwrap

import numpy as np

from neo_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_COMMON = '''
import jax, numpy as np
from flax import nnx
from neo_jax.model.config import get_config
from neo_jax.model.decoder import Decoder
from neo_jax.train.data import PackedData
from neo_jax.train.loop import StageSettings

def make_model():
  cfg = get_config('tiny', vocab_size=64, d_model=32, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=8, mlp_dim=64)
  return Decoder(cfg, rngs=nnx.Rngs(0))

def make_data(batch_size=8, rows=32, seq_len=16):
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 64, (rows, seq_len)).astype(np.int32)
  segs = np.ones((rows, seq_len), np.int32)
  segs[:, 10:] = 2
  segs[:, -1] = 0
  pos = np.concatenate([np.arange(10), np.arange(6)])[None].repeat(rows, 0).astype(np.int32)
  mask = np.zeros((rows, seq_len), bool)
  mask[:, 5:10] = True
  mask[:, 12:15] = True
  return PackedData(tokens, segs, pos, mask, batch_size, 0, {})

def make_cfg(accum=1):
  return StageSettings(
      steps=3, learning_rate=1e-2, warmup_steps=1, b1=0.9, b2=0.95, weight_decay=0.01,
      clip_norm=1.0, log_every=100, checkpoint_every=0, grad_accum_steps=accum)

def flat_params(model):
  return {'/'.join(map(str, p)): np.asarray(v.get_value())
          for p, v in nnx.to_flat_state(nnx.state(model))}
'''

_SHARDED = _COMMON + '''
import sys, tempfile
from neo_jax.model import sharding
from neo_jax.train import loop

assert jax.device_count() == 8, jax.devices()
with tempfile.TemporaryDirectory() as d:
  ref = make_model()
  ref_summary = loop.train_stage(ref, make_data(), make_cfg(), name='r', workdir=d,
                                 log=lambda s: None)
  ref_params = flat_params(ref)
  for shape in [(8, 1, 1), (2, 4, 1), (2, 2, 2)]:
    mesh = sharding.make_mesh(*shape)
    model = make_model()
    summary = loop.train_stage(model, make_data(), make_cfg(), name=f's{shape}', workdir=d,
                               mesh=mesh, log=lambda s: None)
    got = flat_params(model)
    emb = nnx.state(model)['embed_tokens'].get_value()
    assert emb.sharding.mesh.shape == mesh.shape, emb.sharding
    for k, v in ref_params.items():
      np.testing.assert_allclose(got[k], v, rtol=2e-4, atol=2e-5, err_msg=f'{shape} {k}')
    np.testing.assert_allclose(summary['final_loss'], ref_summary['final_loss'], rtol=1e-5)
    print('ok', shape, summary['final_loss'])
'''


def test_sharded_step_equals_single_device_on_8_fake_devices():
  # Optimisation level 0 cuts compile time; the values do not depend on it.
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8 '
             '--xla_backend_optimization_level=0',
             JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, '-c', textwrap.dedent(_SHARDED)], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert proc.stdout.count('ok ') == 3, proc.stdout


def test_grad_accumulation_equals_whole_batch(tmp_path):
  ns = {}
  exec(_COMMON, ns)  # the same model/data/config factories as the subprocess test
  whole, micro = ns['make_model'](), ns['make_model']()
  s1 = loop.train_stage(whole, ns['make_data'](), ns['make_cfg'](1), name='a',
                        workdir=str(tmp_path), log=lambda s: None)
  s4 = loop.train_stage(micro, ns['make_data'](), ns['make_cfg'](4), name='b',
                        workdir=str(tmp_path), log=lambda s: None)
  np.testing.assert_allclose(s4['final_loss'], s1['final_loss'], rtol=1e-5)
  a, b = ns['flat_params'](whole), ns['flat_params'](micro)
  for k in a:
    np.testing.assert_allclose(b[k], a[k], rtol=2e-4, atol=2e-5, err_msg=k)
