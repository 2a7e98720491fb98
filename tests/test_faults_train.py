"""Training faults: a non-finite gradient never reaches a checkpoint (the step is not applied
and the stage stops naming it and the last good checkpoint), a damaged newest checkpoint
falls back to the previous one, and the metric log holds each step once after a resume."""

import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from neo_jax.train import loop
from test_train_loop import _cfg, _data, _model


@jax.custom_vjp
def _scaled_grad(x, scale):
  return x


def _fwd(x, scale):
  return x, scale


def _bwd(scale, g):
  return g * scale, jnp.zeros_like(scale)


_scaled_grad.defvjp(_fwd, _bwd)


class Scaled(nnx.Module):
  """The decoder with its logits' gradient multiplied by `scale` (not a parameter): inf
  injects a non-finite gradient while the loss stays finite."""

  def __init__(self, inner, scale):
    self.inner = inner
    self.scale = nnx.Variable(jnp.float32(scale))

  def __call__(self, tokens, positions, segment_ids):
    return _scaled_grad(self.inner(tokens, positions, segment_ids), self.scale.get_value())


def _flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_non_finite_gradient_is_not_applied_and_stops_naming_the_last_checkpoint(tmp_path):
  data, quiet = _data(), (lambda s: None)
  model = Scaled(_model(), 1.0)
  loop.train_stage(model, data, _cfg(4, ckpt_every=2), name='c', workdir=str(tmp_path),
                   log=quiet)
  good = _flat(nnx.state(model, nnx.Param))
  # The same run continued with a poisoned gradient: the loss is finite, the gradient not.
  poisoned = Scaled(_model(seed=5), float('inf'))
  with pytest.raises(loop.NonFiniteLossError) as err:
    loop.train_stage(poisoned, data, _cfg(8, ckpt_every=1), name='c', workdir=str(tmp_path),
                     log=quiet)
  msg = str(err.value)
  assert 'non-finite gradient norm' in msg and 'at step 5' in msg
  assert 'last good checkpoint: step 4' in msg and 'not applied' in msg
  ckpt = tmp_path / 'checkpoints' / 'c'
  steps = sorted(int(d) for d in os.listdir(ckpt) if d.isdigit())
  assert max(steps) == 4  # nothing after the bad step was saved
  # The newest checkpoint still holds the good parameters (restored by a finite rerun).
  again = Scaled(_model(seed=9), 1.0)
  lines = []
  loop.train_stage(again, data, _cfg(4, ckpt_every=2), name='c', workdir=str(tmp_path),
                   log=lines.append)
  assert any('resumed from step 4' in l for l in lines)
  for k, v in _flat(nnx.state(again, nnx.Param)).items():
    np.testing.assert_array_equal(v, good[k], err_msg=k)


def test_the_step_leaves_the_state_unchanged_on_a_non_finite_gradient():
  model = Scaled(_model(), float('inf'))
  graphdef, params, frozen, rest = nnx.split(model, nnx.Param, nnx.Param, ...)
  tx = _cfg(4).optimizer()
  step = loop.make_train_step(graphdef, rest, tx, with_frozen=True)
  opt_state = tx.init(params)
  batch = {k: jnp.asarray(v) for k, v in _data().batch(0).items()}
  new_params, new_opt, metrics = step(params, opt_state, batch, frozen)
  assert np.isfinite(float(metrics['loss'])) and not np.isfinite(float(metrics['grad_norm']))
  for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for a, b in zip(jax.tree.leaves(new_opt), jax.tree.leaves(opt_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _flip_bytes(step_dir):
  files = sorted(glob.glob(os.path.join(step_dir, 'default', '**', 'd', '*'), recursive=True),
                 key=os.path.getsize)
  raw = bytearray(open(files[-1], 'rb').read())
  for i in range(len(raw) // 3, len(raw) // 3 + 16):
    raw[i] ^= 0xFF
  open(files[-1], 'wb').write(bytes(raw))


def _truncate_metadata(step_dir):
  path = os.path.join(step_dir, 'default', '_METADATA')
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize('damage', [_flip_bytes, _truncate_metadata])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
  data = _data()
  straight = _model()
  s = loop.train_stage(straight, data, _cfg(8, ckpt_every=4), name='c',
                       workdir=str(tmp_path / 'a'), log=lambda s: None)
  shutil.copytree(tmp_path / 'a', tmp_path / 'b')
  ckpt = tmp_path / 'b' / 'checkpoints' / 'c'
  damage(str(ckpt / '8'))
  lines = []
  resumed = _model(seed=123)
  r = loop.train_stage(resumed, data, _cfg(8, ckpt_every=4), name='c',
                       workdir=str(tmp_path / 'b'), log=lines.append)
  warning = [l for l in lines if 'WARNING' in l]
  assert len(warning) == 1 and 'checkpoint step 8 cannot be restored' in warning[0]
  assert 'previous checkpoint (4)' in warning[0]
  if damage is _flip_bytes:  # orbax reads these bytes without an error: the checksum sees them
    assert 'checksum' in warning[0]
  assert any('resumed from step 4' in l for l in lines)
  assert r['checkpoints_set_aside'] == 1 and r['final_loss'] == s['final_loss']
  assert os.path.isdir(str(ckpt) + '.set_aside/8')  # kept for inspection, not deleted
  assert sorted(int(d) for d in os.listdir(ckpt) if d.isdigit()) == [4, 8]
  for k, v in _flat(nnx.state(straight)).items():
    np.testing.assert_array_equal(_flat(nnx.state(resumed))[k], v, err_msg=k)
  # The metric log holds each step once, though steps 5..8 ran twice.
  records = [json.loads(l) for l in open(tmp_path / 'b' / 'logs' / 'c.jsonl')]
  assert [r['step'] for r in records] == sorted({r['step'] for r in records})


def test_log_drops_a_torn_line_and_the_steps_after_the_resume(tmp_path):
  data = _data()
  settings = loop.StageSettings(steps=6, learning_rate=1e-2, warmup_steps=2, b1=0.9, b2=0.95,
                                weight_decay=0.01, clip_norm=1.0, log_every=1,
                                checkpoint_every=3)
  loop.train_stage(_model(), data, settings, name='c', workdir=str(tmp_path),
                   log=lambda s: None)
  # As if killed after step 5's record was half written: checkpoint 6 never made it.
  shutil.rmtree(tmp_path / 'checkpoints' / 'c' / '6')
  log_path = tmp_path / 'logs' / 'c.jsonl'
  text = log_path.read_text()
  log_path.write_text(text[:text.rindex('{"')] + '{"step": 6, "lo')
  loop.train_stage(_model(), data, settings, name='c', workdir=str(tmp_path),
                   log=lambda s: None)
  steps = [json.loads(l)['step'] for l in log_path.read_text().splitlines()]
  assert steps == [1, 2, 3, 4, 5, 6]
