"""Leak tests: nothing that is fitted (tokenizer, SID encoders, NEO's examples, baselines) sees
a validation or test event, query or held-out summary, and the test examples do not exist
before the final evaluation opens the test split.

Each test states the leak it would catch and checks the control (the material is there to be
leaked), so that none of them can pass vacuously.
"""

import numpy as np
import pytest

from experiments.configs import tiny
from neo_jax.baselines import base as baselines_base
from neo_jax.baselines import registry as baselines_registry
from neo_jax.catalog.splits import user_sequences
from neo_jax.eval.protocol import TestSplitAccessError
from neo_jax.run import experiment
from neo_jax.run import stages
from neo_jax.tasks import builders


def _quiet(_):
  pass


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """(cfg, artifacts, guard, facts, texts the tokenizer was trained on) of the tiny config."""
  seen = {}
  real = stages.train_sentencepiece

  def spy(texts, **kwargs):
    seen['texts'] = list(texts)
    return real(seen['texts'], **kwargs)

  stages.train_sentencepiece = spy
  try:
    cfg = tiny.get_config()
    cfg.tasks.summary_heldout_fraction = 0.25
    cfg, art, guard, facts = experiment.prepare(cfg, str(tmp_path_factory.mktemp('w')), _quiet)
  finally:
    stages.train_sentencepiece = real
  return cfg, art, guard, facts, seen['texts']


def _full(cfg, tmp):
  """The whole dataset and split of the tiny config (what a leak would read)."""
  ds = stages.load_data(cfg, tmp, _quiet)
  return ds, stages.split_data(cfg, ds, _quiet)


def test_tokenizer_trains_on_training_queries_and_summaries_only(prepared, tmp_path):
  cfg, art, _, _, texts = prepared
  ds, data = _full(cfg, str(tmp_path))
  corpus = set(texts)
  held_queries = [q.text for q in data.queries.valid + data.queries.test]
  train_queries = [q.text for q in data.queries.train]
  assert held_queries and train_queries
  # A held-out query's text may equal an item text or a training query by chance: only texts
  # that are nowhere in the training material must be absent.
  allowed = set(train_queries) | {ds.catalog.text(i) for i in range(len(ds.catalog))}
  assert not [t for t in held_queries if t in corpus and t not in allowed]
  assert set(train_queries) <= corpus  # control: the training queries are there
  held_summaries = [ds.users[u].summary for u in data.summary_heldout if ds.users[u].summary]
  train_summaries = [u.summary for uid, u in ds.users.items()
                     if u.summary and uid not in data.summary_heldout]
  assert held_summaries and train_summaries
  leaked = [s for s in held_summaries if s in corpus and s not in set(train_summaries)]
  assert not leaked
  assert set(train_summaries) <= corpus


def test_view_holds_no_evaluation_event(prepared, tmp_path):
  cfg, art, guard, facts, _ = prepared
  ds, data = _full(cfg, str(tmp_path))
  seqs = user_sequences(art.dataset.interactions)
  assert seqs == {} or all(np.array_equal(seqs[u], data.split.train[u]) for u in seqs)
  assert data.split.valid and data.split.test  # control
  # Leave-one-out: every evaluated user's view sequence lacks its valid and test targets.
  full = user_sequences(ds.interactions)
  for tg in data.split.test:
    view = seqs.get(tg.user_id, np.zeros(0, np.int64))
    assert view.size <= full[tg.user_id].size - 2
  assert facts['view/heldout_events'] == len(ds.interactions) - len(art.dataset.interactions) > 0
  assert art.split.test == []
  assert art.dataset.item_counts().sum() == sum(s.size for s in data.split.train.values())


def test_sid_encoder_and_examples_see_no_test_target(prepared, tmp_path):
  cfg, art, guard, _, _ = prepared
  _, data = _full(cfg, str(tmp_path))
  test_target = {tg.user_id: tg.target for tg in data.split.test}
  valid_target = {tg.user_id: tg.target for tg in data.split.valid}
  exs = guard.examples('capability', 'test') + guard.examples('grounding', 'test')
  rec = [e for e in exs if e.task in ('recommend', 'history') and e.user_id in test_target]
  assert rec  # control
  for e in rec:
    assert test_target[e.user_id] not in e.target_items or \
        test_target[e.user_id] in data.split.train[e.user_id]
    assert valid_target[e.user_id] not in e.target_items or \
        valid_target[e.user_id] in data.split.train[e.user_id]


def test_test_examples_do_not_exist_before_the_test_split_opens(tmp_path):
  cfg = tiny.get_config()
  cfg, art, guard, _ = experiment.prepare(cfg, str(tmp_path), _quiet)
  for key in ('rec_test', 'search_test', 'summary_test', 'explain_test'):
    with pytest.raises(TestSplitAccessError):
      guard.examples(key, 'early')
    assert key not in guard._examples
  with pytest.raises(TestSplitAccessError):
    guard.targets('test', 'early')
  guard.open_test()
  assert guard.examples('rec_test', 'final')
  assert guard.examples('search_test', 'final')


def test_summaries_are_scored_on_users_never_trained_on(tmp_path):
  cfg = tiny.get_config()
  cfg.tasks.summary_heldout_fraction = 0.25
  cfg, art, guard, _ = experiment.prepare(cfg, str(tmp_path), _quiet)
  trained = {e.user_id for e in guard.examples('capability', 'x') if e.task == 'user_summary'}
  guard.open_test()
  scored = {e.user_id for e in guard.examples('summary_test', 'final')}
  assert scored and trained  # control
  assert not scored & trained


def test_no_item_relevant_to_a_test_query_is_relevant_to_a_training_query(prepared):
  _, _, guard, _, _ = prepared
  search_train = {i for e in guard.examples('capability', 'x') if e.task == 'search'
                  for i in e.target_items}
  valid = {i for e in guard.examples('search_valid', 'x') for i in e.target_items}
  assert search_train and valid  # control
  assert not search_train & valid
  guard.open_test()
  test = {i for e in guard.examples('search_test', 'final') for i in e.target_items}
  assert test and not search_train & test and not valid & test


class _Spy(baselines_base.Baseline):
  """Records what it is fitted on."""
  name = 'spy'
  tasks = ('recommend',)
  seen = {}

  def _fit(self, dataset, split, validator):
    _Spy.seen['interactions'] = dataset.interactions
    _Spy.seen['split'] = split
    _Spy.seen['queries'] = list(dataset.queries)
    return {}

  def recommend_scores(self, histories):
    return np.zeros((len(histories), len(self.catalog)))


def test_a_baseline_cannot_see_a_test_event(prepared, tmp_path, monkeypatch):
  cfg, art, guard, _, _ = prepared
  ds, data = _full(cfg, str(tmp_path))
  monkeypatch.setitem(baselines_registry.BASELINES, 'spy', lambda args: _Spy())
  cfg = experiment.config_lib.validate(cfg)
  cfg.experiment.baselines = ('spy',)
  cfg.experiment.tune_baselines = False
  experiment.fit_baselines(cfg, art, guard, str(tmp_path), _quiet)
  inter, split = _Spy.seen['interactions'], _Spy.seen['split']
  assert split.test == []
  seqs = user_sequences(inter)
  full = user_sequences(ds.interactions)
  checked = 0
  for tg in data.split.test:
    got = seqs.get(tg.user_id, np.zeros(0, np.int64))
    # The view holds a strict prefix of the user's events that ends before the test target.
    assert got.size < full[tg.user_id].size
    assert np.array_equal(got, full[tg.user_id][:got.size])
    assert got.size <= len(tg.history) - 1 or not data.split.valid
    checked += 1
  assert checked
  held = {q.text for q in data.queries.test}
  assert held and not held & {q.text for q in _Spy.seen['queries']}
