"""LoRA adapters: zero-init leaves the model unchanged, only adapters and SID rows train, the
merged model computes what the adapted one does, and the merge is W + (alpha/r) A @ B."""

import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from neo_jax.model import lora
from neo_jax.train import loop
from test_train_loop import V_TEXT, _cfg, _data, _model
from test_train_sharded import _COMMON, REPO


def _tokens():
  rng = np.random.default_rng(0)
  return jnp.asarray(rng.integers(0, 64, (2, 12)).astype(np.int32))


def _flat(model):
  return {p: np.array(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}


def test_zero_init_adapters_leave_logits_unchanged():
  model = _model()
  before = np.asarray(model(_tokens()))
  lora.apply_lora(model, rank=4, alpha=8.0, seed=1)
  assert lora.has_lora(model)
  np.testing.assert_array_equal(np.asarray(model(_tokens())), before)
  names = {p[-1] for p, _ in nnx.to_flat_state(nnx.state(model, lora.LoRAParam))}
  assert names == {f'{t}_lora_{ab}' for t in lora.TARGETS for ab in 'ab'}
  with pytest.raises(ValueError, match='already has LoRA'):
    lora.apply_lora(model, rank=4, alpha=8.0)
  with pytest.raises(ValueError, match='rank must be >= 1'):
    lora.apply_lora(_model(), rank=0, alpha=8.0)


def test_merged_forward_equals_adapted_and_merge_is_w_plus_scaled_ab():
  model = _model()
  w_o = np.array(model.layers.o_proj.get_value(), np.float64)  # (nl, N, H, D)
  lora.apply_lora(model, rank=3, alpha=6.0, seed=2)
  rng = np.random.default_rng(1)
  for t in lora.TARGETS:  # non-zero B, as after training
    b = getattr(model.layers, f'{t}_lora_b')
    b.set_value(jnp.asarray(rng.normal(0, 0.05, b.get_value().shape), jnp.float32))
  a_o = np.array(model.layers.o_proj_lora_a.get_value(), np.float64)  # (nl, N, H, r)
  b_o = np.array(model.layers.o_proj_lora_b.get_value(), np.float64)  # (nl, r, D)
  adapted = np.asarray(model(_tokens()))
  lora.merge_lora(model)
  assert not lora.has_lora(model)
  assert not nnx.state(model, lora.LoRAParam)
  np.testing.assert_allclose(np.asarray(model(_tokens())), adapted, rtol=1e-5, atol=1e-5)
  expect = w_o + 2.0 * np.einsum('lnhr,lrd->lnhd', a_o, b_o)
  np.testing.assert_allclose(np.asarray(model.layers.o_proj.get_value()), expect, rtol=1e-5,
                             atol=1e-6)
  with pytest.raises(ValueError, match='no LoRA adapters'):
    lora.merge_lora(model)


def test_a_lora_stage_trains_only_adapters_and_sid_rows(tmp_path):
  model = lora.apply_lora(_model(), rank=2, alpha=4.0, seed=0)
  before = _flat(model)
  loop.train_stage(model, _data(), _cfg(2), name='l', workdir=str(tmp_path),
                   log=lambda s: None, trainable=lora.trainable_filter(),
                   update_mask=lora.update_mask(model, V_TEXT))
  after = _flat(model)
  for path, value in after.items():
    name = path[-1]
    if 'lora' in name:
      assert np.abs(value - before[path]).max() > 0, path
    elif name in ('embed_tokens', 'lm_head'):
      np.testing.assert_array_equal(value[:V_TEXT], before[path][:V_TEXT], err_msg=str(path))
      assert np.abs(value[V_TEXT:] - before[path][V_TEXT:]).max() > 0, path
    else:
      np.testing.assert_array_equal(value, before[path], err_msg=str(path))


_LORA_SHARDED = '''
import tempfile
from neo_jax.model import lora, sharding
from neo_jax.train import loop

assert jax.device_count() == 8, jax.devices()
with tempfile.TemporaryDirectory() as d:
  results = []
  for mesh in (None, sharding.make_mesh(2, 2, 2)):
    model = lora.apply_lora(make_model(), rank=2, alpha=4.0, seed=0)
    summary = loop.train_stage(model, make_data(), make_cfg(), name=f'm{mesh is None}',
                               workdir=d, mesh=mesh, log=lambda s: None,
                               trainable=lora.trainable_filter(),
                               update_mask=lora.update_mask(model, 48))
    lora.merge_lora(model)
    results.append((summary['final_loss'], flat_params(model)))
  (loss0, p0), (loss1, p1) = results
  np.testing.assert_allclose(loss1, loss0, rtol=1e-5)
  for k, v in p0.items():
    np.testing.assert_allclose(p1[k], v, rtol=2e-4, atol=2e-5, err_msg=k)
  print('ok', loss0, loss1)
'''


def test_lora_stage_on_a_2x2x2_mesh_equals_one_device():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8 '
             '--xla_backend_optimization_level=0', JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, '-c', textwrap.dedent(_COMMON + _LORA_SHARDED)],
                        env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert proc.stdout.count('ok ') == 1, proc.stdout
