"""The baseline interface, popularity and our BM25 against brute-force references, the
registry, and the shared training / early-stopping helper."""

import math
import time

import jax.numpy as jnp
import numpy as np
import pytest

from neo_jax.baselines import base
from neo_jax.baselines import registry
from neo_jax.baselines import training
from neo_jax.baselines.bm25 import BM25, BM25S, words
from neo_jax.baselines.popularity import Popularity
from neo_jax.catalog.splits import Split, leave_one_out
from neo_jax.catalog.types import Catalog, Dataset, Interactions, Query
from neo_jax.eval import metrics
from neo_jax.eval.validation import Validator


def _catalog():
  titles = ['red apple pie', 'green apple', 'blue sky jazz', 'jazz night', 'apple jazz fusion',
            'quiet night']
  types = np.array([0, 0, 1, 1, 1, 0], np.int32)
  n = len(titles)
  return Catalog(ids=[str(i) for i in range(n)], type_names=('a', 'b'), type_index=types,
                 titles=titles, descriptions=[''] * n, tags=[()] * n, attributes=[{}] * n,
                 popularity=np.full(n, np.nan, np.float32))


def _dataset():
  """The 6-item catalog and 4 users whose sequences follow 'jazz' and 'apple' words."""
  cat = _catalog()
  seqs = {'u0': [0, 1, 4, 5], 'u1': [2, 3, 4, 3], 'u2': [0, 0, 1, 5, 1], 'u3': [3, 2]}
  users, items, ts = [], [], []
  for u, (name, seq) in enumerate(seqs.items()):
    users += [u] * len(seq)
    items += seq
    ts += list(range(len(seq)))
  inter = Interactions(list(seqs), np.array(users, np.int32), np.array(items, np.int32),
                       np.array(ts, np.int64))
  return Dataset('tiny', cat, inter), leave_one_out(inter)


def _one_user(rows):
  """The 6-item catalog and one user whose training sequence is `rows`."""
  cat = _catalog()
  rows = np.asarray(rows, np.int32)
  inter = Interactions(['u'], np.zeros(rows.size, np.int32), rows,
                       np.arange(rows.size, dtype=np.int64))
  return Dataset('tiny', cat, inter), Split(train={'u': rows}, valid=[], test=[])


def test_popularity_ranks_by_count_within_type():
  ds, split = _one_user([5, 5, 5, 1, 0, 0, 3, 3, 4])
  pop = Popularity()
  assert pop.fit(ds, split)['train_interactions'] == 9
  for rank in (lambda t: pop.rank_recommend([[0]] * len(t), t, 3),
               lambda t: pop.rank_search(['x'] * len(t), t, 3)):
    ranked = rank(['a', 'b', None])
    np.testing.assert_array_equal(ranked[0], [5, 0, 1])
    np.testing.assert_array_equal(ranked[1], [3, 4, 2])
    np.testing.assert_array_equal(ranked[2], [5, 0, 3])


def test_bm25_matches_formula():
  ds, split = _one_user([0])
  cat = ds.catalog
  bm = BM25()
  assert bm.fit(ds, split) == {'k1': 1.2, 'b': 0.75, 'last': 5,
                               'fit_seconds': bm.fit_facts['fit_seconds']}
  docs = [words(cat.text(i)) for i in range(len(cat))]
  avg = np.mean([len(d) for d in docs])
  query = 'apple jazz apple'
  expect = []
  for d in docs:
    s = 0.0
    for w in set(words(query)):
      df = sum(w in x for x in docs)
      idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
      tf = d.count(w)
      s += idf * tf * 2.2 / (tf + 1.2 * (1 - 0.75 + 0.75 * len(d) / avg))
    expect.append(s)
  np.testing.assert_allclose(bm.scores([query])[0], expect, rtol=1e-9)
  assert bm.rank_search([query], ['b'], k=1)[0, 0] == 4  # 'apple jazz fusion' among type b
  hist = bm.rank_recommend([np.array([3])], ['a'], k=1)
  assert hist[0, 0] == 5  # 'jazz night' -> 'quiet night'


def test_rank_scores_brute_force():
  cat = _catalog()
  rng = np.random.default_rng(1)
  scores = rng.integers(0, 3, size=(20, len(cat))).astype(float)  # many ties
  types = [(None, 'a', 'b')[i % 3] for i in range(20)]
  exclude = [list(rng.choice(len(cat), size=i % 3, replace=False)) for i in range(20)]
  got = base.rank_scores(cat, scores, types, 5, exclude)
  assert got.dtype == np.int32 and got.shape == (20, 5)
  for b in range(20):
    allowed = [n for n in range(len(cat)) if (types[b] is None or cat.type_of(n) == types[b])
               and n not in exclude[b]]
    expect = sorted(allowed, key=lambda n: (-scores[b, n], n))[:5]
    assert got[b].tolist() == expect + [-1] * (5 - len(expect))
  with pytest.raises(ValueError, match='unknown target type'):
    base.rank_scores(cat, scores[:1], ['c'], 3)
  with pytest.raises(ValueError, match='NaN'):
    base.rank_scores(cat, np.full((1, len(cat)), np.nan), [None], 3)


def test_popularity_fit_counts_training_split_only():
  ds, split = _dataset()
  pop = Popularity()
  facts = pop.fit(ds, split)
  # Training = all but the last two events of users with >= 3 events; u3 (2 events) kept whole.
  train = [0, 1] + [2, 3] + [0, 0, 1] + [3, 2]
  assert facts['train_interactions'] == len(train)
  counts = np.bincount(train, minlength=6)
  got = pop.rank_recommend(['u0', np.array([1]), split.test[0]], ['a', 'b', None], 6)
  for row, t in zip(got, ['a', 'b', None]):
    allowed = [n for n in range(6) if t is None or ds.catalog.type_of(n) == t]
    expect = sorted(allowed, key=lambda n: (-counts[n], n))
    assert row.tolist() == expect + [-1] * (6 - len(expect))
  excl = pop.rank_recommend([[0]], ['a'], 3, exclude=[[0, 1]])
  assert excl.tolist() == [[5, -1, -1]]
  search_only = type('S', (Popularity,), {'tasks': ('search',)})()
  search_only.fit(ds, split)
  with pytest.raises(NotImplementedError, match='does not recommend'):
    search_only.rank_recommend([[0]], ['a'], 1)


def test_baseline_rejects_bad_requests():
  ds, split = _dataset()
  with pytest.raises(RuntimeError, match='fit'):
    Popularity().rank_recommend([[0]], ['a'], 1)
  pop = Popularity()
  pop.fit(ds, split)
  with pytest.raises(KeyError, match='unknown user'):
    pop.rank_recommend(['nobody'], ['a'], 1)
  with pytest.raises(ValueError, match='history rows'):
    pop.rank_recommend([[99]], ['a'], 1)
  with pytest.raises(ValueError, match='target types'):
    pop.rank_recommend([[0], [1]], ['a'], 1)


def test_bm25_fit_tunes_on_validation_only():
  ds, split = _dataset()
  bm = BM25()
  facts = bm.fit(ds, split, validator=Validator(ds.catalog, split.valid))
  grid = {last: facts[f'valid_ndcg@10/last={last}'] for last in BM25.LAST_GRID}
  assert facts['last'] == max(grid, key=lambda last: (grid[last], -last))
  assert (facts['k1'], facts['b']) == (1.2, 0.75)  # no queries: k1 and b as given
  # The validation figure is the metric of the chosen setting, recomputed independently.
  ranked = bm.rank_recommend(split.valid, [ds.catalog.type_of(t.target) for t in split.valid],
                             10)
  assert metrics.ndcg_at_k(ranked, [[t.target] for t in split.valid], 10) == pytest.approx(
      facts['valid_ndcg@10'])
  q = [Query('jazz night', (3,)), Query('green apple', (1,))]
  facts = BM25().fit(ds, split, validator=Validator(ds.catalog, [], q))
  assert facts['valid_search_ndcg@10'] == 1.0
  assert not any(k.startswith('valid_ndcg') for k in facts)  # no targets: `last` as given


def test_no_validator_keeps_the_constructor_hyperparameters():
  ds, split = _dataset()
  facts = BM25(k1=0.9, b=0.4, last=3).fit(ds, split)
  assert {k: v for k, v in facts.items() if k != 'fit_seconds'} == {'k1': 0.9, 'b': 0.4,
                                                                     'last': 3}
  facts = BM25S(k1=2.0, b=0.3).fit(ds, split)
  assert {k: v for k, v in facts.items() if k != 'fit_seconds'} == {'k1': 2.0, 'b': 0.3}
  with pytest.raises(ValueError, match='k1 >= 0'):
    BM25(b=1.5)


# -- registry ----------------------------------------------------------------------------------

class _FakeTIGER(Popularity):
  """Stands in for TIGER in the registry: popularity with a `sid_map` slot."""

  def __init__(self, sid_map=None):
    super().__init__()
    self.sid_map = sid_map


def test_registry_fits_tunes_and_reports(monkeypatch, tmp_path):
  ds, split = _dataset()
  view = Split(split.train, split.valid, [])  # what an experiment fits baselines on
  monkeypatch.setitem(registry.BASELINES, 'ghost',
                      registry.lazy('neo_jax.baselines.no_such_module', 'Ghost'))
  monkeypatch.setitem(registry.BASELINES, 'tiger', lambda args: _FakeTIGER(**args))

  class Encoder:
    name = 'ones'

    def encode(self, texts):
      return np.ones((len(texts), 3), np.float32)

  logs = []
  validator = Validator(ds.catalog, split.valid, [Query('jazz night', (3,))])
  fitted, out = registry.fit_baselines(
      ['popularity', 'ghost', 'bm25', 'dense', 'tiger'],
      {'bm25': {'max_valid_requests': 2}, 'dense': {'encoder': Encoder()}}, ds, view,
      validator, logs.append, cache_root=str(tmp_path), sid_map='neo sids')
  assert list(fitted) == ['popularity', 'bm25', 'dense', 'tiger']
  assert out['ghost/status'].startswith('missing: ModuleNotFoundError')
  assert not any(k.startswith('ghost/') and k != 'ghost/status' for k in out)
  for name in fitted:
    assert out[f'{name}/status'] == 'ok'
    assert out[f'seconds/baseline_{name}'] >= 0 and f'cpu_seconds/baseline_{name}' in out
    assert out[f'{name}/fit/fit_seconds'] == fitted[name].fit_facts['fit_seconds']
  assert out['popularity/fit/train_interactions'] == 9
  assert out['bm25/fit/valid_search_ndcg@10'] == 1.0 and 'bm25/fit/valid_ndcg@10' in out
  # Numbers and strings (e.g. the encoder's name, how training stopped) are reported; other
  # values (arrays, objects) are not.
  assert out['dense/fit/encoder'] == fitted['dense'].fit_facts['encoder']
  assert all(isinstance(v, (int, float, str)) for v in out.values())
  assert fitted['dense'].cache_dir == str(tmp_path / 'dense')
  assert (tmp_path / 'dense' / 'text_embeddings.npy').exists()
  assert fitted['tiger'].sid_map == 'neo sids'
  assert len(logs) == 5 and 'tuned on validation' in logs[0]
  # A TIGER with its own SIDs keeps them; no validator: fitted untuned.
  fitted, out = registry.fit_baselines(['tiger', 'bm25'], {'tiger': {'sid_map': 'own'}}, ds,
                                       view, None, print, sid_map='neo sids')
  assert fitted['tiger'].sid_map == 'own'
  assert out['bm25/fit/last'] == 5 and not any('valid' in k for k in out)
  with pytest.raises(ValueError, match='without test targets'):
    registry.fit_baselines(['popularity'], {}, ds, split, None, print)


def test_registry_names():
  assert set(registry.BASELINES) >= {'popularity', 'bm25', 'bm25s', 'dense', 'sasrec', 'tiger'}
  assert isinstance(registry.make_baseline('bm25', {'last': 3}), BM25)
  with pytest.raises(KeyError, match='unknown baseline'):
    registry.make_baseline('nope')
  with pytest.raises(ValueError, match='without "/"'):
    registry.register_baseline('a/b', lambda args: Popularity())


# -- the shared training helper ----------------------------------------------------------------

def _quadratic():
  """A one-parameter problem: the loss of w on a batch (x (B, 1), mask (B, 1)) is the masked
  mean of (w - x)^2."""

  def loss_fn(w, x, mask):
    return jnp.sum(mask * (w - x) ** 2) / jnp.maximum(jnp.sum(mask), 1)

  x = np.arange(10, dtype=np.float32)[:, None]
  return loss_fn, (x, np.ones((10, 1), bool))


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience():
  loss_fn, arrays = _quadratic()
  scores = iter([0.1, 0.3, 0.2, 0.3, 0.25, 0.9])
  seen = []

  def evaluate(state):
    seen.append(float(state))
    return {'ndcg@10': next(scores), 'hr@10': 0.0}

  r = training.train_early_stopping(loss_fn, jnp.float32(0.0), arrays, lr=0.1, batch_size=4,
                                    seed=0, epochs=10, patience=3, evaluate=evaluate)
  # Epoch 2 is best; epochs 3-5 do not beat it (a tie is no improvement): stop after 5.
  assert (r.best_epoch, r.epochs, r.score) == (2, 5, 0.3)
  assert float(r.state) == seen[1]
  assert [h['epoch'] for h in r.history] == [1, 2, 3, 4, 5]
  assert r.history[1]['valid_ndcg@10'] == 0.3 and 'valid_hr@10' in r.history[1]
  # Without validation: every epoch, the last state; the same batches, so the same state.
  plain = training.train_early_stopping(loss_fn, jnp.float32(0.0), arrays, lr=0.1,
                                        batch_size=4, seed=0, epochs=5, patience=1)
  assert plain.epochs == 5 and math.isnan(plain.score) and plain.best_epoch == 5
  assert float(plain.state) == seen[4]
  # Past the deadline, no further epoch starts.
  late = training.train_early_stopping(loss_fn, jnp.float32(0.0), arrays, lr=0.1,
                                       batch_size=4, seed=0, epochs=5, patience=1,
                                       deadline=0.0)
  assert late.epochs == 1
  # ... and the first epoch stops at it too (after one batch here: 1 of the 3).
  assert late.stopped == 'time budget within epoch 1 (1 of 3 batches)'
  assert plain.stopped == 'max_epochs'
  with pytest.raises(FloatingPointError, match='toy: the loss is nan'):
    training.train_early_stopping(lambda w, x, m: w * jnp.nan, jnp.float32(0.0), arrays,
                                  lr=0.1, batch_size=4, seed=0, epochs=1, patience=1,
                                  label='toy')


def test_epoch_batches_pad_the_last_batch():
  batches = list(training.epoch_batches(np.random.default_rng(0), 5, 2))
  rows = np.concatenate([idx[real] for idx, real in batches])
  assert sorted(rows.tolist()) == list(range(5)) and len(batches) == 3
  assert batches[-1][1].tolist() == [True, False] and batches[-1][0][1] == 0


def test_grid_search_picks_the_first_best_within_the_budget():
  def train(point, deadline):
    del deadline
    return f'aux{point}', training.TrainResult(None, {1: 0.2, 2: 0.5, 3: 0.5}[point], 1, 1, 0.0,
                                               [])

  tried, best = training.grid_search([1, 2, 3], train, 100.0)
  assert [p for p, _, _ in tried] == [1, 2, 3] and best[:2] == (2, 'aux2')
  logs = []
  tried, best = training.grid_search([1, 2, 3], train, -1.0, label='m', log=logs.append)
  assert [p for p, _, _ in tried] == [1] and best[0] == 1
  assert logs == ['m: time budget spent; 1 of 3 grid points tried']


def test_grid_search_whole_first_exempts_only_the_first_point_from_the_deadline():
  deadlines = []

  def train(point, deadline):
    deadlines.append(deadline)
    return None, training.TrainResult(None, float(point), 1, 1, 0.0, [])

  tried, _ = training.grid_search([1, 2, 3], train, 100.0, whole_first=True)
  assert len(tried) == 3 and deadlines[0] is None
  assert deadlines[1] == deadlines[2] and deadlines[1] > time.perf_counter()
  deadlines.clear()
  tried, _ = training.grid_search([1, 2, 3], train, 100.0)
  assert deadlines[0] is not None and len(set(deadlines)) == 1
  deadlines.clear()  # a spent budget: the first point still runs whole, no other starts
  tried, best = training.grid_search([1, 2, 3], train, -1.0, whole_first=True)
  assert deadlines == [None] and best[0] == 1
