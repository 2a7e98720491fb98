"""Validation during training: the validation loss, the best checkpoint kept and restored,
and validation examples disjoint from training."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.configs import quickstart
from neo_jax.run import training
from neo_jax.catalog.splits import leave_one_out
from neo_jax.catalog.types import Dataset, Interactions
from neo_jax.tasks.suite import build_task_examples, split_search_queries
from neo_jax.train import loop
from test_tasks import CATALOG, SID_MAP, VOCAB
from test_train_loop import _cfg, _data, _model


def _flat(model):
  return {p: np.array(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}


def _direct_loss(model, data):
  """Token-weighted next-token loss over every validation row, computed in numpy."""
  logits = np.asarray(model(jnp.asarray(data.tokens), jnp.asarray(data.positions),
                            jnp.asarray(data.segment_ids)), np.float64)
  total, count = 0.0, 0
  for b in range(data.num_rows):
    for t in range(data.seq_len - 1):
      seg = data.segment_ids[b]
      if data.loss_mask[b, t + 1] and seg[t + 1] == seg[t] > 0:
        z = logits[b, t]
        total += np.log(np.exp(z - z.max()).sum()) + z.max() - z[data.tokens[b, t + 1]]
        count += 1
  return total / count


def test_best_checkpoint_by_an_eval_metric_is_kept_and_restored(tmp_path):
  # A scripted metric: its best (max) is at the 2nd evaluation, step 2.
  scores = iter([0.1, 0.5, 0.3, 0.2, 0.4, 0.0])
  snapshots = {}

  def eval_fn(model):
    snapshots[len(snapshots) + 1] = _flat(model)
    return {'score': next(scores)}

  model = _model()
  valid = _data(rows=6, seed=1)  # 6 rows, batch 4: the last batch is padded
  cfg = dataclasses.replace(_cfg(6), eval_every=1)
  summary = loop.train_stage(model, _data(), cfg, name='c', workdir=str(tmp_path),
                             log=lambda s: None, valid_data=valid, eval_fn=eval_fn,
                             checkpoints=loop.CheckpointPolicy(best_metric='valid/score',
                                                               restore_best=True, keep_last=2))
  assert summary['best_step'] == 2 and summary['best_value'] == 0.5
  assert summary['restored_best']
  final = _flat(model)
  for path, value in snapshots[2].items():
    np.testing.assert_array_equal(final[path], value, err_msg=str(path))
  assert not all(np.array_equal(final[p], snapshots[6][p]) for p in final)
  # The last 2 checkpoints and the best one remain.
  kept = sorted(int(d.name) for d in (tmp_path / 'checkpoints' / 'c').iterdir()
                if d.name.isdigit())
  assert kept == [2, 5, 6]
  # Every evaluation is logged; the last one's validation loss is that of the step-6 model.
  records = [json.loads(l) for l in open(tmp_path / 'logs' / 'c.jsonl')]
  valid_records = [r for r in records if 'valid/loss' in r]
  assert [r['step'] for r in valid_records] == [1, 2, 3, 4, 5, 6]
  assert [r['valid/score'] for r in valid_records] == [0.1, 0.5, 0.3, 0.2, 0.4, 0.0]
  ref_model = _model()
  nnx.update(ref_model, nnx.from_flat_state(
      [(p, v.replace(jnp.asarray(snapshots[6][p])))
       for p, v in nnx.to_flat_state(nnx.state(ref_model))]))
  np.testing.assert_allclose(valid_records[-1]['valid/loss'], _direct_loss(ref_model, valid),
                             rtol=1e-5)

  # valid/loss, min: the best is the step of the smallest logged validation loss.
  model2 = _model()
  # Big steps: a non-monotone loss.
  cfg = dataclasses.replace(cfg, steps=4, eval_every=1, learning_rate=0.3)
  s2 = loop.train_stage(model2, _data(), cfg, name='d', workdir=str(tmp_path),
                        log=lambda s: None, valid_data=valid)
  losses = [json.loads(l)['valid/loss'] for l in open(tmp_path / 'logs' / 'd.jsonl')
            if 'valid/loss' in l]
  assert s2['best_step'] == int(np.argmin(losses)) + 1
  assert s2['best_value'] == min(losses) and not s2['restored_best']


def test_validation_examples_are_disjoint_from_training():
  rng = np.random.default_rng(0)
  users = np.repeat(np.arange(10), 8).astype(np.int32)
  inter = Interactions(user_names=[f'u{u}' for u in range(10)], user_index=users,
                       item_index=rng.integers(0, len(CATALOG), users.size).astype(np.int32),
                       timestamp=np.arange(users.size))
  ds = Dataset('world', CATALOG, inter)
  split = leave_one_out(inter)
  split.test = []  # example building never sees test targets
  queries = split_search_queries(ds, valid_fraction=0.2, test_fraction=0.0, seed=0)
  te = build_task_examples(ds, split, SID_MAP, VOCAB, queries=queries, history_len=4, seed=0)
  examples = {'grounding': te.grounding, 'capability': te.capability, **te.eval}
  cfg = quickstart.get_config()
  plan = training.stage_plan(cfg, examples)
  trained = [e for _, exs, _ in plan for e in exs]
  valid, dropped = training.validation_examples(examples, trained)
  assert valid and dropped == 0
  pairs = {(e.prompt, e.completion) for e in trained}
  assert not any((e.prompt, e.completion) in pairs for e in valid)
  assert {e.task for e in valid} <= {'recommend', 'search'}
  # A validation example that equals a training one is dropped and counted.
  valid2, dropped2 = training.validation_examples(examples, trained + valid[:3])
  assert dropped2 == 3 and valid2 == valid[3:]
