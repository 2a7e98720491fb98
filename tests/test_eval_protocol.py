"""The experiment's validation protocol pieces without training: the split guard refuses test
reads before the final evaluation and logs every read; a bad experiment config is refused
before anything is written. (The baselines' side, fitting without test targets and reporting
a missing baseline, is in tests/test_baselines.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from neo_jax.catalog.splits import Split, Target
from neo_jax.eval import protocol
from neo_jax.run import config as config_lib
from neo_jax.run import experiment
from neo_jax.tasks.types import Example


def _guard(tmp_path):
  ex = lambda task, split_name: Example(task, f'{split_name} prompt', 'x', 'ids', 'movie', (1,))
  examples = {'grounding': [ex('sid_to_text', 'g')], 'capability': [ex('recommend', 'c')],
              'rec_valid': [ex('recommend', 'v')], 'search_valid': [ex('search', 'v')]}
  built = []

  def test_examples():
    built.append(1)
    return {'rec_test': [ex('recommend', 't')], 'search_test': [ex('search', 't')],
            'explain_test': [], 'summary_test': []}

  split = Split(train={'u': np.array([0, 1], np.int32)},
                valid=[Target('u', np.array([0, 1]), 2)],
                test=[Target('u', np.array([0, 1, 2]), 3)])
  guard = protocol.SplitGuard(examples, split, str(tmp_path / 'access.json'),
                              test_examples=test_examples)
  guard.built = built
  return guard


def test_guard_refuses_test_before_final(tmp_path):
  guard = _guard(tmp_path)
  assert guard.examples('capability', 'train/x')[0].prompt == 'c prompt'
  assert guard.targets('valid', 'tune')[0].target == 2
  view = guard.fit_view('fit')
  assert view.test == [] and view.valid and guard.targets('valid', 'x')  # original kept
  for read in (lambda: guard.examples('rec_test', 'train/x'),
               lambda: guard.examples('search_test', 'tune'),
               lambda: guard.targets('test', 'tune')):
    with pytest.raises(protocol.TestSplitAccessError, match='before the final evaluation'):
      read()
  assert not guard.built  # the test examples do not exist yet
  guard.open_test()
  assert guard.built == [1]
  assert guard.examples('rec_test', 'final/requests')[0].prompt == 't prompt'
  with pytest.raises(RuntimeError, match='opened once'):
    guard.open_test()
  log = json.load(open(tmp_path / 'access.json'))
  splits = [(r['stage'], r['split']) for r in log['reads']]
  assert ('train/x', 'train') in splits and ('tune', 'valid') in splits
  # Refused reads are not logged; every test read comes after open_test.
  test_orders = [r['order'] for r in log['reads'] if r['split'] == 'test']
  assert min(test_orders) == log['test_opened_at']
  with pytest.raises(ValueError, match='unknown split'):
    protocol.SplitGuard({'rec_other': []}, Split({}, [], []), None)
  with pytest.raises(ValueError, match='before the test split is opened'):
    protocol.SplitGuard({'rec_test': []}, Split({}, [], []), None)


def test_requests_exclude_the_history_for_every_system():
  ex = Example('recommend', 'p', 'x', 'ids', 'movie', (3,), 'u')
  req = protocol.Requests('recommend', [ex], [[3]], ['movie'], histories=[np.array([0, 1, 2])])
  assert req.excluded(True)[0].tolist() == [0, 1, 2]
  assert req.excluded(False) is None
  search = protocol.Requests('search', [ex], [[3]], [None], queries=['q'])
  assert search.excluded(True) is None
  assert protocol.metric_prefix('sasrec', 'recommend') == 'sasrec/'
  assert protocol.metric_prefix('sasrec', 'recommend', False) == 'sasrec/nothing_excluded/'
  assert protocol.metric_prefix('bm25', 'search', False) == 'bm25/search_'
  # An unconstrained decoder's history items are dropped from its ranking, closed up.
  got = protocol._drop(np.array([[5, 1, -1, 7, 2]]), [np.array([1, 2])])
  assert got.tolist() == [[5, 7, -1, -1, -1]]


def test_bad_experiment_config_is_refused_before_anything_is_written(tmp_path):
  from experiments.configs import synthetic
  cfg = synthetic.get_config()
  cfg.experiment.ablations = ('random_init',)  # the tiny decoder has no pretrained weights
  with pytest.raises(config_lib.ConfigError, match='needs a pretrained backbone'):
    experiment.run_experiment(cfg, str(tmp_path / 'w'))
  cfg.experiment.ablations = ('bogus',)
  with pytest.raises(config_lib.ConfigError, match="unknown name 'bogus'"):
    experiment.run_experiment(cfg, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()
