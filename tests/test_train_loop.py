"""The training stage loop: loss masking, grounding row masks, exact resume, NaN stop."""

import json
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from neo_jax.model import vocab as vocab_lib
from neo_jax.model.config import get_config
from neo_jax.model.decoder import Decoder
from neo_jax.train import loop
from neo_jax.train.data import PackedData

V_TEXT, V = 48, 64


def _model(seed=0):
  cfg = get_config('tiny', vocab_size=V_TEXT, d_model=32, num_layers=2, num_heads=2,
                   num_kv_heads=1, head_dim=16, mlp_dim=64)
  m = Decoder(cfg, rngs=nnx.Rngs(seed))
  vocab_lib.extend_vocab(m, V, rng=jax.random.key(1))
  return m


def _data(rows=16, seq_len=16, batch_size=4, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, V, size=(rows, seq_len)).astype(np.int32)
  segs = np.ones((rows, seq_len), np.int32)
  segs[:, seq_len // 2:] = 2
  segs[:, -2:] = 0
  pos = np.concatenate([np.arange(seq_len // 2)] * 2)[None].repeat(rows, 0).astype(np.int32)
  mask = np.zeros((rows, seq_len), bool)
  mask[:, 4:8] = True
  mask[:, 12:14] = True
  return PackedData(tokens, segs, pos, mask, batch_size, seed, {})


def _cfg(steps, lr=1e-2, ckpt_every=0):
  return loop.StageSettings(
      steps=steps, learning_rate=lr, warmup_steps=2, b1=0.9, b2=0.95, weight_decay=0.01,
      clip_norm=1.0, log_every=100, checkpoint_every=ckpt_every)


def test_masked_lm_loss_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 6, 10)).astype(np.float32)
  batch = {'tokens': rng.integers(0, 10, (2, 6)),
           'segment_ids': np.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]]),
           'loss_mask': np.array([[0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 1]], bool)}
  loss, m = loop.masked_lm_loss(jnp.asarray(logits), {k: jnp.asarray(v) for k, v in batch.items()})
  terms = []
  for b in range(2):
    for t in range(5):
      seg_ok = batch['segment_ids'][b, t + 1] == batch['segment_ids'][b, t] > 0
      if batch['loss_mask'][b, t + 1] and seg_ok:
        z = logits[b, t]
        lse = np.log(np.exp(z - z.max()).sum()) + z.max()
        terms.append(lse - z[batch['tokens'][b, t + 1]])
  # Row 0: targets 1, 2 count; 3 starts a new segment; 4 counts; 5 is padding. Row 1: 2, 3, 5.
  assert len(terms) == 6
  np.testing.assert_allclose(float(loss), np.mean(terms), rtol=1e-5)
  assert float(m['loss_tokens']) == 6


@pytest.mark.parametrize('rows_per_group', [1, 2, 4])
def test_loss_at_loss_positions_equals_the_full_head(rows_per_group):
  """The LM head at the loss positions only (per row, per 2 rows, per batch) gives the full
  head's loss, accuracy, token count and gradients; a bound one short drops a target."""
  model = _model()
  data = _data(rows=4, seq_len=16)
  mask = data.loss_mask.copy()
  mask[0] = False  # a row without a loss position
  mask[1, 1:8] = True  # 7 targets in segment 1, and 2 in segment 2: 9
  data = PackedData(data.tokens, data.segment_ids, data.positions, mask, 4, 0, {})
  k = loop.loss_positions_bound(data, rows_per_group)
  assert k == {1: 9, 2: 15, 4: 21}[rows_per_group]  # rows of 9, 6, 6 and 0 targets
  assert loop.head_positions(model, data, rows_per_group, multiple=1) == k
  assert loop.head_positions(model, data, 1) == 0  # 16 >= seq_len - 1: nothing saved
  batch = {n: jnp.asarray(getattr(data, n)) for n in ('tokens', 'segment_ids', 'positions',
                                                       'loss_mask')}
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(p, bound):
    m = nnx.merge(graphdef, p, rest)
    if bound == 0:
      return loop.masked_lm_loss(m(batch['tokens'], batch['positions'], batch['segment_ids']),
                                 batch)
    return loop.masked_lm_loss_at(m, batch, bound, rows_per_group)

  (full, fm), fg = jax.value_and_grad(loss, has_aux=True)(params, 0)
  (at, am), ag = jax.value_and_grad(loss, has_aux=True)(params, k)
  np.testing.assert_allclose(float(at), float(full), rtol=1e-6)
  for key in ('accuracy', 'loss_tokens'):
    np.testing.assert_allclose(float(am[key]), float(fm[key]), rtol=1e-6)
  for (path, a), (_, b) in zip(nnx.to_flat_state(fg), nnx.to_flat_state(ag)):
    np.testing.assert_allclose(np.asarray(b.get_value()), np.asarray(a.get_value()),
                               rtol=1e-5, atol=1e-7, err_msg=str(path))
  # This batch's fullest group (9, then 9 / 12, then 21 targets) is the tight bound: one less
  # drops a target.
  tight = {1: 9, 2: 12, 4: 21}[rows_per_group]
  (_, exact), _ = jax.value_and_grad(loss, has_aux=True)(params, tight)
  (_, short), _ = jax.value_and_grad(loss, has_aux=True)(params, tight - 1)
  assert float(exact['loss_tokens']) == float(fm['loss_tokens']) == 21
  assert float(short['loss_tokens']) == 20


def test_loss_positions_bound_counts_the_rows_a_small_data_repeats(tmp_path, monkeypatch):
  """Fewer rows than a batch: `PackedData.batch` repeats them, and the bound counts every row
  as often as a group can hold it; the stage then trains on every loss position (its losses
  equal those of the head at every position)."""
  data = _data(rows=3, seq_len=16, batch_size=8)  # 6 targets a row
  assert loop.loss_positions_bound(data, 2) == 12
  assert loop.loss_positions_bound(data, 3) == 18
  assert loop.loss_positions_bound(data, 8) == 3 * 18  # 8 rows of 3: each up to 3 times
  assert len(data.batch(0)['tokens']) == 8
  at = loop.train_stage(_model(), data, _cfg(3), name='c', workdir=str(tmp_path / 'at'),
                        log=lambda s: None)
  assert loop.head_positions(_model(), data, 8) == 56  # 54 rounded up: the head path ran
  monkeypatch.setattr(loop, 'head_positions', lambda *a, **k: 0)
  full = loop.train_stage(_model(), data, _cfg(3), name='c', workdir=str(tmp_path / 'full'),
                          log=lambda s: None)
  np.testing.assert_allclose(at['final_loss'], full['final_loss'], rtol=1e-5)


def test_grounding_mask_trains_only_sid_rows(tmp_path):
  model = _model()
  before = jax.tree.map(np.array, nnx.state(model))
  mask = vocab_lib.sid_row_mask(model, V_TEXT)
  loop.train_stage(model, _data(), _cfg(3), name='g', workdir=str(tmp_path),
                   update_mask=mask, log=lambda s: None)
  after = nnx.state(model)
  emb_b = np.asarray(before['embed_tokens'].get_value())
  emb_a = np.asarray(after['embed_tokens'].get_value())
  np.testing.assert_array_equal(emb_a[:V_TEXT], emb_b[:V_TEXT])
  assert np.abs(emb_a[V_TEXT:] - emb_b[V_TEXT:]).max() > 0
  flat_b = dict(nnx.to_flat_state(before))
  for path, var in nnx.to_flat_state(after):
    if path != ('embed_tokens',):
      np.testing.assert_array_equal(np.asarray(var.get_value()),
                                    np.asarray(flat_b[path].get_value()),
                                    err_msg=str(path))


def test_training_lowers_loss_and_resume_is_exact(tmp_path):
  data = _data()
  straight = _model()
  s = loop.train_stage(straight, data, _cfg(8, ckpt_every=4), name='c',
                       workdir=str(tmp_path / 'a'), log=lambda s: None)
  assert s['steps'] == 8
  first = _model()
  hist = loop.train_stage(first, data, _cfg(1), name='c', workdir=str(tmp_path / 'probe'),
                          log=lambda s: None)
  assert s['final_loss'] < hist['final_loss']
  # Simulate a run killed after the step-4 checkpoint: drop the final checkpoint, rerun.
  shutil.copytree(tmp_path / 'a', tmp_path / 'b')
  shutil.rmtree(tmp_path / 'b' / 'checkpoints' / 'c' / '8')
  resumed = _model(seed=123)  # different init: everything must come from the checkpoint
  lines = []
  loop.train_stage(resumed, data, _cfg(8, ckpt_every=4), name='c', workdir=str(tmp_path / 'b'),
                   log=lines.append)
  assert any('resumed from step 4' in l for l in lines)
  for (p, a), (_, b) in zip(nnx.to_flat_state(nnx.state(straight)),
                            nnx.to_flat_state(nnx.state(resumed))):
    np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()),
                                  err_msg=str(p))


def test_non_finite_loss_stops_with_clear_error(tmp_path):
  model = _model()
  state = nnx.state(model)
  emb = state['embed_tokens']
  emb.set_value(emb.get_value().at[5].set(jnp.nan))
  nnx.update(model, state)
  data = _data()
  data.tokens[:, :] = 5
  with pytest.raises(loop.NonFiniteLossError, match='non-finite loss'):
    loop.train_stage(model, data, _cfg(3), name='n', workdir=str(tmp_path), log=lambda s: None)


def test_stage_settings_from_a_config_section():
  section = ml_collections.ConfigDict(dict(
      steps=5, learning_rate=3e-3, warmup_steps=2, final_lr_fraction=0.1, b1=0.9, b2=0.95,
      weight_decay=0.01, clip_norm=1.0, log_every=50, checkpoint_every=0, eval_every=0,
      eval_batches=0, lora_rank=4, lora_alpha=0.0))
  s = loop.StageSettings.from_dict(section)
  assert (s.steps, s.learning_rate) == (5, 3e-3) and not hasattr(s, 'lora_rank')
  assert s.grad_accum_steps == 1 and isinstance(s.steps, int) and isinstance(s.b1, float)
  assert loop.StageSettings(steps=5.0, learning_rate=1, warmup_steps=1, b1=0.9, b2=0.95,
                            weight_decay=0, clip_norm=1).steps == 5
  with pytest.raises(TypeError, match='clip_norm'):
    loop.StageSettings.from_dict({k: v for k, v in section.items() if k != 'clip_norm'})
  with pytest.raises(ValueError, match='divide the batch'):
    loop.train_stage(_model(), _data(), loop.StageSettings.from_dict(
        {**section.to_dict(), 'grad_accum_steps': 3}), name='x', workdir='/nonexistent')
  with pytest.raises(ValueError, match="best_mode must be 'min' or 'max'"):
    loop.train_stage(_model(), _data(), s, name='x', workdir='/nonexistent',
                     checkpoints=loop.CheckpointPolicy(best_mode='up'))


def _budgeted(steps, budget, warmup=3, ckpt_every=0):
  return loop.StageSettings(
      steps=steps, learning_rate=1e-2, warmup_steps=warmup, b1=0.9, b2=0.95, weight_decay=0.01,
      clip_norm=1.0, log_every=100, checkpoint_every=ckpt_every, time_budget_s=budget)


def _same_params(a, b):
  for (p, x), (_, y) in zip(nnx.to_flat_state(nnx.state(a)), nnx.to_flat_state(nnx.state(b))):
    np.testing.assert_array_equal(np.asarray(x.get_value()), np.asarray(y.get_value()),
                                  err_msg=str(p))


def test_budgeted_steps_fit_the_time_left():
  kw = dict(steps=1000, warmup_steps=20, probe_step=20)
  # 30 s spent on 20 steps, 1.5 s a step: (300 - 30) / 1.5 = 180 more steps.
  assert loop.budgeted_steps(elapsed_s=30.0, step_s=1.5, time_budget_s=300.0, **kw) == 200
  assert loop.budgeted_steps(elapsed_s=30.0, step_s=1.5, time_budget_s=1e6, **kw) == 1000
  # Spent already, or nothing left: the warmup and one step (never fewer).
  assert loop.budgeted_steps(elapsed_s=400.0, step_s=1.5, time_budget_s=300.0, **kw) == 21
  assert loop.budgeted_steps(elapsed_s=30.0, step_s=1.5, time_budget_s=31.0, **kw) == 21
  assert loop.budgeted_steps(elapsed_s=30.0, step_s=0.0, time_budget_s=300.0, **kw) == 1000
  s = _budgeted(10, 5.0)
  assert s.probe_step() == 3 and _budgeted(10, 0.0).probe_step() == 0
  assert _budgeted(4, 5.0).probe_step() == 0  # too short for the budget to cut anything


def test_time_budget_cut_equals_a_run_planned_with_those_steps(tmp_path):
  """A budget spent by the end of the warmup cuts the stage to warmup + 1 steps; the model is
  the one a run planned with that many steps trains (the warmup's learning rates do not
  depend on the plan), saved at that step, and budget.json records the decision."""
  data = _data()
  cut, lines = _model(), []
  s = loop.train_stage(cut, data, _budgeted(12, 1e-6), name='c', workdir=str(tmp_path / 'a'),
                       log=lines.append)
  assert s['steps'] == 4 and s['planned_steps'] == 12 and s['model_step'] == 4
  assert any('-> 4 of 12 steps' in l for l in lines)
  budget = json.loads((tmp_path / 'a' / 'checkpoints' / 'c' / 'budget.json').read_text())
  assert (budget['steps'], budget['planned_steps'], budget['probe_step']) == (4, 12, 3)
  assert sorted(p.name for p in (tmp_path / 'a' / 'checkpoints' / 'c').iterdir()
                if p.name.isdigit()) == ['4']
  planned = _model()
  loop.train_stage(planned, data, _budgeted(4, 0.0), name='c', workdir=str(tmp_path / 'b'),
                   log=lambda s: None)
  _same_params(cut, planned)
  # A rerun reads the decision: the stage is finished, nothing trains again.
  again = loop.train_stage(_model(seed=5), data, _budgeted(12, 1e-6), name='c',
                           workdir=str(tmp_path / 'a'), log=lambda s: None)
  assert again['steps'] == 4
  # Another plan in the same folder is refused, naming the file.
  with pytest.raises(ValueError, match='budget.json decided 4 steps for a plan of 12'):
    loop.train_stage(_model(), data, _budgeted(20, 1e-6), name='c',
                     workdir=str(tmp_path / 'a'), log=lambda s: None)


def test_time_budget_that_fits_changes_nothing_and_resume_keeps_the_decision(tmp_path):
  data = _data()
  free = _model()
  loop.train_stage(free, data, _budgeted(8, 0.0, ckpt_every=4), name='c',
                   workdir=str(tmp_path / 'free'), log=lambda s: None)
  roomy = _model()
  s = loop.train_stage(roomy, data, _budgeted(8, 1e6, ckpt_every=4), name='c',
                       workdir=str(tmp_path / 'a'), log=lambda s: None)
  assert s['steps'] == 8 and s['planned_steps'] == 8
  _same_params(free, roomy)
  # Killed after the step-4 checkpoint: the resumed stage keeps budget.json's decision (no
  # second probe) and ends where the straight run did.
  shutil.copytree(tmp_path / 'a', tmp_path / 'b')
  shutil.rmtree(tmp_path / 'b' / 'checkpoints' / 'c' / '8')
  lines = []
  resumed = _model(seed=9)
  loop.train_stage(resumed, data, _budgeted(8, 1e6, ckpt_every=4), name='c',
                   workdir=str(tmp_path / 'b'), log=lines.append)
  assert any('resumed from step 4' in l for l in lines)
  assert not any('time budget' in l for l in lines)
  _same_params(free, resumed)
  # No checkpoint before the decision: a checkpoint cadence inside the warmup saves nothing.
  loop.train_stage(_model(), data, _budgeted(8, 1e6, ckpt_every=1), name='c',
                   workdir=str(tmp_path / 'c'), log=lambda s: None)
  saved = sorted(int(p.name) for p in (tmp_path / 'c' / 'checkpoints' / 'c').iterdir()
                 if p.name.isdigit())
  assert min(saved) > 3


def test_time_budget_needs_a_warmup_to_measure():
  with pytest.raises(ValueError, match='needs warmup_steps >= 3'):
    loop.train_stage(_model(), _data(), _budgeted(8, 10.0, warmup=2), name='x',
                     workdir='/nonexistent')
  with pytest.raises(ValueError, match='time_budget_s must be >= 0'):
    loop.train_stage(_model(), _data(), _budgeted(8, -1.0), name='x', workdir='/nonexistent')
