"""neo_jax.run.workdir: a tiny run trained in memory, then reloaded from its workdir alone, gives
the same logits as the in-memory model; every missing or inconsistent piece is named."""

from __future__ import annotations

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import quickstart
from neo_jax.run import config as config_lib
from neo_jax.run import experiment
from neo_jax.run import stages
from neo_jax.run import workdir as workdir_lib

# The quickstart's own config, shrunk (the sizes of tests/test_quickstart.py, synthetic data).
TINY = {
    'data.dataset': 'synthetic', 'data.synthetic.items_per_type': 40,
    'data.synthetic.num_users': 120, 'data.synthetic.num_queries': 120, 'sid.k': 4,
    'sid.iters': 5, 'model.d_model': 32, 'model.num_layers': 1, 'model.num_heads': 2,
    'model.num_kv_heads': 1, 'model.head_dim': 16, 'model.mlp_dim': 64,
    'train.batch_size': 8, 'grounding.steps': 3, 'capability.steps': 4,
}


def tiny_config():
  cfg = quickstart.get_config()
  for key, value in TINY.items():
    node = cfg
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config_lib.validate(cfg)


def train_tiny(cfg, workdir: str):
  """NEO-multi of `cfg` trained in `workdir` the way the experiment trains it: (artifacts with
  the model, every task's examples)."""
  cfg, art, guard, _ = experiment.prepare(cfg, workdir, lambda s: None)
  art.model, _ = experiment.train_neo(experiment.MAIN_RUN, cfg, art, guard, workdir,
                                      lambda s: None)
  guard.open_test()
  return art, {k: guard.examples(k, 'test') for k in ('rec_test', 'search_test')}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  w = str(tmp_path_factory.mktemp('run'))
  art, examples = train_tiny(tiny_config(), w)
  return w, art, examples


def _logits(model, tokens):
  return np.asarray(model(jnp.asarray(tokens)))


def test_reloaded_model_gives_the_trained_logits(trained):
  w, art, examples = trained
  run = workdir_lib.load_run(w, examples=True)
  assert (run.stage, run.step) == ('capability', 4)
  tokens = np.array([[art.tokenizer.bos_id] + art.tokenizer.encode(examples['rec_test'][0].prompt)
                     [:30]], np.int32)
  want = _logits(art.model, tokens)
  got = _logits(run.artifacts.model, tokens)
  np.testing.assert_array_equal(got, want)
  # ... and not those of the untrained model the config builds (the restore did something).
  fresh = stages.build_model(run.config, run.artifacts.tokenizer)
  assert np.abs(_logits(fresh, tokens) - want).max() > 1e-4
  # Every other piece is the one the run built.
  np.testing.assert_array_equal(run.artifacts.sid_map.codes, art.sid_map.codes)
  assert run.artifacts.dataset.catalog.ids == art.dataset.catalog.ids
  assert run.artifacts.tokenizer.vocab_size == art.tokenizer.vocab_size
  assert run.artifacts.tokenizer.encode('Task: recommend.') == art.tokenizer.encode(
      'Task: recommend.')
  # The experiment's artifacts hold the split without its test targets; a reloaded run (for
  # serving) the whole split.
  assert art.split.test == [] and run.artifacts.split.test
  assert run.artifacts.trie.num_items == int(art.sid_map.reachable().sum())
  assert [e.prompt for e in run.examples['rec_test']] == [e.prompt for e in examples['rec_test']]
  assert workdir_lib.load_workdir(w).sid_map.codes.shape == art.sid_map.codes.shape


def _copy(w, tmp_path):
  dst = tmp_path / 'copy'
  shutil.copytree(w, dst)
  return str(dst)


def _edit_config(w, fn):
  path = os.path.join(w, 'config.json')
  with open(path) as f:
    cfg = json.load(f)
  fn(cfg)
  with open(path, 'w') as f:
    json.dump(cfg, f)


def test_missing_and_inconsistent_pieces_are_named(trained, tmp_path):
  w, _, _ = trained
  with pytest.raises(workdir_lib.WorkdirError, match='no such directory'):
    workdir_lib.load_run(str(tmp_path / 'nowhere'))
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(workdir_lib.WorkdirError, match='holds no trained model'):
    workdir_lib.load_run(str(empty))

  c = _copy(w, tmp_path)
  run_dir = os.path.join(c, 'neo_multi')
  assert workdir_lib.load_run(run_dir).run_dir == run_dir  # a run directory loads too
  # Training "stopped early": the config asks for more capability steps than were saved.
  _edit_config(run_dir, lambda cfg: cfg['capability'].update(steps=10))
  with pytest.raises(workdir_lib.WorkdirError, match=r"stage 'capability' stopped at step 4 of 10"):
    workdir_lib.load_run(c)
  # ... unless the stage's time budget decided 4 steps (loop.budgeted_steps): then it is done.
  budget = os.path.join(run_dir, 'checkpoints', 'capability', 'budget.json')
  with open(budget, 'w') as f:
    json.dump({'steps': 4, 'planned_steps': 10, 'time_budget_s': 60.0}, f)
  assert workdir_lib.load_run(c).run_dir == run_dir
  os.remove(budget)
  # A model shape that is not the checkpoint's.
  _edit_config(run_dir, lambda cfg: (cfg['capability'].update(steps=4),
                                     cfg['model'].update(mlp_dim=48)))
  with pytest.raises(workdir_lib.WorkdirError, match='do not match the model'):
    workdir_lib.load_run(c)
  _edit_config(run_dir, lambda cfg: cfg['model'].update(mlp_dim=64))
  # A config this version does not know.
  _edit_config(run_dir, lambda cfg: cfg['data'].update(source='synthetic'))
  with pytest.raises(workdir_lib.WorkdirError, match="not a config of this version"):
    workdir_lib.load_run(c)
  _edit_config(run_dir, lambda cfg: cfg['data'].pop('source'))

  shutil.rmtree(os.path.join(c, 'tokenizer'))
  with pytest.raises(workdir_lib.WorkdirError, match='tokenizer: missing'):
    workdir_lib.load_run(c)
  shutil.rmtree(os.path.join(run_dir, 'checkpoints', 'capability'))
  with pytest.raises(workdir_lib.WorkdirError, match='capability: no checkpoint'):
    workdir_lib.load_run(c)
  shutil.rmtree(os.path.join(c, 'data'))
  with pytest.raises(workdir_lib.WorkdirError, match='data: missing'):
    workdir_lib.load_run(c)
