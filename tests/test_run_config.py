"""The config schema: every config file validates, unknown keys and bad values are rejected by
name with the closest valid key, and the trained-state difference lists what changed."""

import importlib
import json
import os

import ml_collections
import pytest

from neo_jax.run import config as config_lib
from neo_jax.run import rundir

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       'experiments', 'configs')


def _with(**changes) -> ml_collections.ConfigDict:
  c = config_lib.defaults().to_dict()
  for path, value in changes.items():
    *head, last = path.split('__')
    node = c
    for h in head:
      node = node.setdefault(h, {})
    node[last] = value
  return ml_collections.ConfigDict(c)


@pytest.mark.parametrize('name', sorted(f[:-3] for f in os.listdir(CONFIGS)
                                        if f.endswith('.py') and f != '__init__.py'))
def test_every_config_file_validates(name):
  cfg = importlib.import_module(f'experiments.configs.{name}').get_config()
  if name == 'generic':
    cfg.data.data_dir = '/some/dir'  # the one key a user must give
  out = config_lib.validate(cfg)
  assert set(out) == set(config_lib.SCHEMA.fields)


def test_defaults_cover_the_schema_and_validate():
  c = config_lib.defaults()
  assert config_lib.validate(c).to_dict() == c.to_dict()
  described = config_lib.describe(c).splitlines()
  # One line per key: value and meaning.
  assert len(described) == len(config_lib._flat(c.to_dict()))
  assert any(line.startswith('capability.steps = 900  # optimizer steps') for line in described)


@pytest.mark.parametrize('changes,message', [
    ({'capability__stepz': 3}, "unknown config key 'capability.stepz'; did you mean "
                               "'capability.steps'?"),
    ({'dat': {}}, "unknown config key 'dat'; did you mean 'data'?"),
    ({'data__dataset': 'movielens1m'}, "did you mean 'movielens100k'?"),
    ({'capability__steps': -1}, 'capability.steps=-1: must be >= 0'),
    ({'capability__steps': 'ten'}, 'capability.steps: expected int'),
    ({'train__merge_stages': 1}, 'expected true or false'),
    ({'sid__encoder': 'minilm+cff'}, "unknown encoder part 'cff' (did you mean 'cf'?)"),
    ({'data__split': 'temporal:a,b'}, 'temporal:V,T'),
    ({'train__mesh': '2,2'}, 'three positive ints'),
    ({'experiment__baselines': 'popularity,bm2'}, "unknown name 'bm2' (did you mean 'bm25'?)"),
    ({'tasks__mixture': 'recommend:x'}, "weight 'x' is not a number"),
    ({'eval__ks': (1, 50)}, 'must be at least max(eval.ks)=50'),
    ({'data__dataset': 'generic'}, 'needs the dataset directory: --data_dir=D'),
    ({'baseline_args__sasrek': {'max_epochs': 1}}, "did you mean 'sasrec'?"),
    ({'capability__time_budget_s': -1.0}, 'capability.time_budget_s=-1.0: must be >= 0'),
    ({'grounding__time_budget_s': 60.0, 'grounding__warmup_steps': 2},
     'grounding.time_budget_s=60.0 needs grounding.warmup_steps >= 3'),
    ({'capability__time_budget_s': 60.0, 'train__merge_stages': True},
     'merged stages train under the sum of grounding.time_budget_s and '
     'capability.time_budget_s: set both or neither'),
    ({'capability__time_budget_s': 60.0, 'experiment__ablations': ('stages_merged',)},
     'set both or neither'),
])
def test_bad_keys_and_values_are_named(changes, message):
  with pytest.raises(config_lib.ConfigError) as err:
    config_lib.validate(_with(**changes))
  assert message in str(err.value)


def test_lists_and_numbers_are_normalised():
  c = config_lib.validate(_with(experiment__baselines='popularity, bm25',
                                experiment__ablations=('no_grounding,stages_merged',),
                                eval__ks='1,5', capability__learning_rate=1,
                                tasks__mixture='recommend:2,search:1'))
  assert c.experiment.baselines == ('popularity', 'bm25')
  assert c.experiment.ablations == ('no_grounding', 'stages_merged')
  assert c.eval.ks == (1, 5)
  assert c.capability.learning_rate == 1.0 and isinstance(c.capability.learning_rate, float)
  assert config_lib.parse_mixture(c.tasks.mixture) == {'recommend': 2.0, 'search': 1.0}
  assert config_lib.parse_mixture('') is None


def test_lookup_names_the_closest_key():
  assert config_lib.lookup('capability.steps').default == 900
  assert isinstance(config_lib.lookup('data'), config_lib.Section)
  assert config_lib.lookup('baseline_args.sasrec.max_epochs')  # free constructor arguments
  with pytest.raises(config_lib.ConfigError, match="did you mean 'grounding.learning_rate'"):
    config_lib.lookup('grounding.learning_rat')
  with pytest.raises(config_lib.ConfigError, match='is a value, not a section'):
    config_lib.lookup('seed.x')


def test_trained_state_diff_ignores_what_does_not_change_training():
  a = config_lib.defaults().to_dict()
  b = _with(eval__max_requests=5, grounding__log_every=7, experiment__baselines='bm25',
            model__remat='full', baseline_args__sasrec={'max_epochs': 2}).to_dict()
  assert config_lib.trained_state_diff(a, b) == []
  c = _with(model__d_model=64, seed=3, tasks__mixture='search:1').to_dict()
  assert config_lib.trained_state_diff(a, c) == [
      'model.d_model: 0 -> 64', 'seed: 0 -> 3', 'tasks.mixture: "" -> "search:1"']


def test_a_key_newer_than_the_recorded_config_counts_as_what_those_runs_trained_with():
  """A run recorded before `model.sid_init` existed trained its SID rows with 'mean': its
  config matches 'mean' and differs from 'random'."""
  old = config_lib.defaults().to_dict()
  del old['model']['sid_init']
  mean = _with(model__sid_init='mean').to_dict()
  assert config_lib.trained_state_diff(old, mean) == []
  assert config_lib.trained_state_diff(old, _with(model__sid_init='random').to_dict()) == [
      'model.sid_init: "mean" -> "random"']


def test_claim_refuses_a_changed_config_and_keeps_the_recorded_one(tmp_path):
  w = str(tmp_path / 'w')
  first = config_lib.validate(_with(model__d_model=32))
  rundir.claim(w, first)
  rundir.claim(w, config_lib.validate(_with(model__d_model=32, eval__max_requests=3)))
  with pytest.raises(rundir.RunDirError, match=r'model.d_model: 32 -> 64'):
    rundir.claim(w, config_lib.validate(_with(model__d_model=64)))
  assert json.loads(open(os.path.join(w, 'config.json')).read())['model']['d_model'] == 32
  (tmp_path / 'w' / 'checkpoints').mkdir()
  rundir.claim(w, config_lib.validate(_with(model__d_model=64)), overwrite=True)
  assert not (tmp_path / 'w' / 'checkpoints').exists()
  assert json.load(open(os.path.join(w, 'config.json')))['model']['d_model'] == 64


def test_claim_refuses_a_directory_that_is_not_a_run(tmp_path):
  (tmp_path / 'mine').mkdir()
  (tmp_path / 'mine' / 'notes.txt').write_text('mine')
  for overwrite in (False, True):
    with pytest.raises(rundir.RunDirError, match='not a neo_jax workdir'):
      rundir.claim(str(tmp_path / 'mine'), config_lib.defaults(), overwrite=overwrite)
  assert (tmp_path / 'mine' / 'notes.txt').read_text() == 'mine'


def test_result_json_is_strict(tmp_path):
  path = rundir.write_result(str(tmp_path), {'a': float('nan'), 'b': [float('inf'), 1.0]})
  text = open(path).read()
  assert 'NaN' not in text and 'Infinity' not in text
  assert json.loads(text) == {'a': None, 'b': [None, 1.0]}
  assert not os.path.exists(path + '.tmp')
