"""Dense (MiniLM) retrieval: exact-text queries, cosine vs numpy, the embedding cache."""

import dataclasses

import numpy as np
import pytest

from neo_jax.catalog.splits import Split, Target
from neo_jax.catalog.types import Catalog, Dataset, Interactions
from neo_jax.baselines import dense
from neo_jax.eval.validation import Validator
from neo_jax.sid.features import HashedTfidfEncoder

TITLES = ['A quiet cabin in the snowy mountains', 'Jazz standards played on a late night radio',
          'Cooking fresh pasta with tomatoes and basil', 'The history of Roman aqueducts',
          'A detective hunts a thief across Paris', 'Learning to sail on a windy lake',
          'Birdsong recorded at dawn in a forest', 'A guide to growing tomatoes at home']


def _dataset(titles=TITLES):
  n = len(titles)
  cat = Catalog(ids=[str(i) for i in range(n)], type_names=('a', 'b'),
                type_index=np.array([i % 2 for i in range(n)], np.int32), titles=list(titles),
                descriptions=[''] * n, tags=[()] * n, attributes=[{}] * n,
                popularity=np.full(n, np.nan, np.float32))
  inter = Interactions(['u'], np.zeros(3, np.int32), np.array([2, 0, 7], np.int32),
                       np.arange(3, dtype=np.int64))
  split = Split(train={'u': np.array([2], np.int32)},
                valid=[Target('u', np.array([2], np.int32), 0)],
                test=[Target('u', np.array([2, 0], np.int32), 7)])
  return Dataset('tiny', cat, inter), split


class CountingEncoder:
  """A real (hashed TF-IDF) encoder that counts the texts it encodes."""

  def __init__(self, texts):
    self.inner = HashedTfidfEncoder.fit(texts, dim=64, seed=0)
    self.encoded = 0

  @property
  def name(self):
    return self.inner.name

  def encode(self, texts):
    self.encoded += len(texts)
    return self.inner.encode(texts)


def test_minilm_exact_text_query_ranks_its_item_first():
  ds, split = _dataset()
  model = dense.Dense(batch_size=4)
  facts = model.fit(ds, split, validator=Validator(ds.catalog, split.valid))
  assert set(facts) >= {f'valid_ndcg@10/last={n}' for n in dense.Dense.LAST_GRID}
  assert facts['dim'] == 384 and 'all-MiniLM-L6-v2' in facts['encoder']
  types = [ds.catalog.type_of(i) for i in range(len(TITLES))]
  ranked = model.rank_search(TITLES, types, 3)
  np.testing.assert_array_equal(ranked[:, 0], np.arange(len(TITLES)))
  for row, t in zip(ranked, types):
    assert all(ds.catalog.type_of(int(r)) == t for r in row)
  # Meaning, not words: no shared content word with 'A guide to growing tomatoes at home'.
  assert model.rank_search(['vegetable gardening tips'], [None], 1)[0, 0] == 7
  # The nearest type-b item to a history of the pasta recipe is the tomato-growing guide.
  assert model.rank_recommend([np.array([2])], ['b'], 1)[0, 0] == 7


def test_scores_are_cosine_and_cache_is_reused(tmp_path):
  ds, split = _dataset()
  texts = [ds.catalog.text(i) for i in range(len(TITLES))]
  enc = CountingEncoder(texts)
  model = dense.Dense(encoder=enc, cache_dir=str(tmp_path))
  assert model.fit(ds, split)['cached'] == 0.0
  queries = ['tomatoes', 'night radio jazz']
  raw_items, raw_q = enc.inner.encode(texts), enc.inner.encode(queries)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  np.testing.assert_allclose(model.search_scores(queries), unit(raw_q) @ unit(raw_items).T,
                             rtol=1e-5, atol=1e-6)
  # A fresh model on the same catalog and encoder reads the cache: no item is encoded again.
  enc2 = CountingEncoder(texts)
  again = dense.Dense(encoder=enc2, cache_dir=str(tmp_path))
  assert again.fit(ds, split)['cached'] == 1.0 and enc2.encoded == 0
  np.testing.assert_array_equal(again.item_emb, model.item_emb)
  # A changed catalog text invalidates it.
  ds3, _ = _dataset(TITLES[:-1] + ['Something else entirely'])
  enc3 = CountingEncoder(texts)
  assert dense.Dense(encoder=enc3, cache_dir=str(tmp_path)).fit(
      ds3, split)['cached'] == 0.0
  assert enc3.encoded == len(TITLES)


def test_bad_embeddings_are_refused(tmp_path):
  ds, split = _dataset()

  @dataclasses.dataclass
  class NaNEncoder:
    name: str = 'nan'

    def encode(self, texts):
      return np.full((len(texts), 4), np.nan, np.float32)

  with pytest.raises(ValueError, match='non-finite item embeddings'):
    dense.Dense(encoder=NaNEncoder()).fit(ds, split)
  with pytest.raises(ValueError, match='non-finite item embeddings'):
    dense.Dense(encoder=NaNEncoder(), cache_dir=str(tmp_path)).fit(ds, split)
  assert not list(tmp_path.iterdir())  # refused before anything was cached
  with pytest.raises(RuntimeError, match='fit'):
    dense.Dense(encoder=NaNEncoder()).rank_search(['x'], [None], 1)


def test_the_sid_build_and_the_dense_baseline_encode_the_catalog_once(tmp_path, monkeypatch):
  """`sid.job.embed(cache_dir=)` writes the MiniLM part of the SID embeddings; a second build
  and the dense baseline read it and encode nothing; a changed catalog encodes again."""
  from neo_jax.sid import job, minilm
  ds, split = _dataset()
  calls = []
  real = minilm.MiniLMEncoder.encode
  monkeypatch.setattr(minilm.MiniLMEncoder, 'encode',
                      lambda self, texts, *a, **k: (calls.append(len(texts)),
                                                    real(self, texts, *a, **k))[1])
  emb, name = job.embed(ds.catalog, 'minilm', batch_size=4, progress=False,
                        cache_dir=str(tmp_path))
  assert calls == [len(TITLES)] and 'all-MiniLM-L6-v2' in name
  again, _ = job.embed(ds.catalog, 'minilm', batch_size=4, progress=False,
                       cache_dir=str(tmp_path))
  assert calls == [len(TITLES)]
  np.testing.assert_array_equal(again, emb)
  # minilm+cf: the MiniLM columns come from the cache too.
  both, _ = job.embed(ds.catalog, 'minilm+cf', sequences=[np.array([2, 0, 7])], cf_dim=4,
                      progress=False, cache_dir=str(tmp_path))
  assert calls == [len(TITLES)]
  np.testing.assert_allclose(both[:, :384], emb / np.linalg.norm(emb, axis=1, keepdims=True),
                             rtol=1e-6)
  model = dense.Dense(batch_size=4, cache_dir=str(tmp_path))
  assert model.fit(ds, split)['cached'] == 1.0 and calls == [len(TITLES)]
  np.testing.assert_array_equal(model.item_emb, model._unit(emb, 'item'))
  ds2, _ = _dataset(TITLES[:-1] + ['Something else entirely'])
  assert dense.Dense(batch_size=4, cache_dir=str(tmp_path)).fit(ds2, split)['cached'] == 0.0
  assert calls == [len(TITLES), len(TITLES)]
  # Without a cache folder the SID build encodes every time, as before.
  job.embed(ds.catalog, 'minilm', batch_size=4, progress=False)
  assert calls[-1] == len(TITLES) and len(calls) == 3
