"""The experiment's validation protocol pieces without training: the split guard refuses test
reads before the final evaluation and logs every read; baselines see no test targets;
a baseline whose module is absent is reported missing, never as a 0."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neo_jax.catalog.splits import Split, Target
from neo_jax.catalog.types import Catalog, Dataset, Interactions
from neo_jax.run import experiment
from neo_jax.tasks.types import Example


def _guard(tmp_path):
  ex = lambda task, split_name: Example(task, f'{split_name} prompt', 'x', 'ids', 'movie', (1,))
  examples = {'grounding': [ex('sid_to_text', 'g')], 'capability': [ex('recommend', 'c')],
              'rec_valid': [ex('recommend', 'v')], 'search_valid': [ex('search', 'v')],
              'rec_test': [ex('recommend', 't')], 'search_test': [ex('search', 't')],
              'explain_test': [], 'summary_test': []}
  split = Split(train={'u': np.array([0, 1], np.int32)},
                valid=[Target('u', np.array([0, 1]), 2)],
                test=[Target('u', np.array([0, 1, 2]), 3)])
  return experiment.SplitGuard(examples, split, str(tmp_path / 'access.json'))


def test_guard_refuses_test_before_final(tmp_path):
  guard = _guard(tmp_path)
  assert guard.examples('capability', 'train/x')[0].prompt == 'c prompt'
  assert guard.targets('valid', 'tune')[0].target == 2
  view = guard.fit_view('fit')
  assert view.test == [] and view.valid and guard.targets('valid', 'x')  # original kept
  for read in (lambda: guard.examples('rec_test', 'train/x'),
               lambda: guard.examples('search_test', 'tune'),
               lambda: guard.targets('test', 'tune')):
    with pytest.raises(experiment.TestSplitAccessError, match='before the final evaluation'):
      read()
  guard.open_test()
  assert guard.examples('rec_test', 'final/requests')[0].prompt == 't prompt'
  log = json.load(open(tmp_path / 'access.json'))
  splits = [(r['stage'], r['split']) for r in log['reads']]
  assert ('train/x', 'train') in splits and ('tune', 'valid') in splits
  # Refused reads are not logged; every test read comes after open_test.
  test_orders = [r['order'] for r in log['reads'] if r['split'] == 'test']
  assert min(test_orders) == log['test_opened_at']
  with pytest.raises(ValueError, match='unknown split'):
    experiment.SplitGuard({'rec_other': []}, Split({}, [], []), None)


def test_config_lists_and_unknown_names():
  assert experiment.names('no_grounding, random_sids') == ('no_grounding', 'random_sids')
  assert experiment.names(('a,b', 'c')) == ('a', 'b', 'c')
  from experiments.configs import synthetic
  cfg = synthetic.get_config()
  cfg.experiment.ablations = ('random_init',)  # the tiny decoder has no pretrained weights
  with pytest.raises(ValueError, match='needs a pretrained backbone'):
    experiment.run_experiment(cfg, '/nonexistent/never/written')
  cfg.experiment.ablations = ('bogus',)
  with pytest.raises(ValueError, match="unknown ablation 'bogus'"):
    experiment.run_experiment(cfg, '/nonexistent/never/written')


def test_missing_baseline_is_reported_missing(monkeypatch):
  cat = Catalog(ids=['a', 'b', 'c'], type_names=('movie',), type_index=np.zeros(3, np.int32),
                titles=['A', 'B', 'C'], descriptions=['', '', ''], tags=[(), (), ()],
                attributes=[{}, {}, {}], popularity=np.zeros(3, np.float32))
  ds = Dataset('t', cat, Interactions(['u', 'v'], np.zeros(2, np.int32), np.zeros(2, np.int32),
                                      np.zeros(2, np.int64)))
  split = Split(train={'u': np.array([2, 2, 1], np.int32), 'v': np.array([2], np.int32)},
                valid=[Target('u', np.array([2, 2, 1]), 0)], test=[])
  monkeypatch.setitem(experiment.BASELINES, 'ghost',
                      experiment._lazy('neo_jax.eval.no_such_module', 'Ghost'))
  fitted, out = experiment.fit_baselines(['popularity', 'ghost'], {}, ds, split, [],
                                         lambda s: None)
  assert list(fitted) == ['popularity']
  assert out['popularity/status'] == 'ok'
  assert out['ghost/status'].startswith('missing: ModuleNotFoundError')
  assert not any(k.startswith('ghost/') and k != 'ghost/status' for k in out)
  # Popularity counts the training split only: 2 (three times), then 1, then 0.
  ranked = fitted['popularity'].rank_recommend([np.array([0])], ['movie'], 3)
  assert ranked.tolist() == [[2, 1, 0]]
  with pytest.raises(ValueError, match='without test targets'):
    experiment.fit_baselines(['popularity'], {}, ds, Split(split.train, split.valid,
                                                           [Target('u', np.array([1]), 0)]),
                             [], print)


def test_generic_config_data_dir(tmp_path):
  from experiments.configs import generic
  cfg = generic.get_config()
  with pytest.raises(ValueError, match='--config.data_dir=D'):
    experiment._apply_data_dir(cfg)
  cfg.data_dir = str(tmp_path)
  c = experiment._apply_data_dir(cfg)
  assert (c.data.source, c.data.path) == ('generic', str(tmp_path))
  cfg.data_dir = str(tmp_path / 'absent')
  with pytest.raises(ValueError, match='is not a directory'):
    experiment._apply_data_dir(cfg)
