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
              'rec_valid': [ex('recommend', 'v')], 'search_valid': [ex('search', 'v')],
              'rec_test': [ex('recommend', 't')], 'search_test': [ex('search', 't')],
              'explain_test': [], 'summary_test': []}
  split = Split(train={'u': np.array([0, 1], np.int32)},
                valid=[Target('u', np.array([0, 1]), 2)],
                test=[Target('u', np.array([0, 1, 2]), 3)])
  return protocol.SplitGuard(examples, split, str(tmp_path / 'access.json'))


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
  guard.open_test()
  assert guard.examples('rec_test', 'final/requests')[0].prompt == 't prompt'
  log = json.load(open(tmp_path / 'access.json'))
  splits = [(r['stage'], r['split']) for r in log['reads']]
  assert ('train/x', 'train') in splits and ('tune', 'valid') in splits
  # Refused reads are not logged; every test read comes after open_test.
  test_orders = [r['order'] for r in log['reads'] if r['split'] == 'test']
  assert min(test_orders) == log['test_opened_at']
  with pytest.raises(ValueError, match='unknown split'):
    protocol.SplitGuard({'rec_other': []}, Split({}, [], []), None)


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
