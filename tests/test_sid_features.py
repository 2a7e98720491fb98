"""Hashed TF-IDF featuriser, catalog embedding and user-embedding loading."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from neo_jax.catalog.types import Catalog
from neo_jax.sid import features

TEXTS = [
    'Alien invasion: space station thriller',
    'Space station crew, alien thriller',
    'Romantic comedy, love in Paris',
    'Paris love story; romantic comedy',
    'Cooking seasonal vegetables recipes',
    'Alien invasion: space station thriller',  # duplicate of text 0
]


def make_catalog(titles, types=None):
  n = len(titles)
  types = types or ['movie'] * n
  names = tuple(sorted(set(types)))
  return Catalog(ids=[f'i{j}' for j in range(n)], type_names=names,
                 type_index=np.array([names.index(t) for t in types], np.int32),
                 titles=list(titles), descriptions=[''] * n, tags=[()] * n,
                 attributes=[{} for _ in range(n)], popularity=np.full(n, np.nan, np.float32))


def ref_tfidf(texts, num_buckets):
  """Reference: dense hashed TF-IDF vectors in bucket space (before the projection)."""
  grams = [features.ngrams(t) for t in texts]
  buckets = [[zlib.crc32(g.encode()) % num_buckets for g in gs] for gs in grams]
  df = np.zeros(num_buckets)
  for bs in buckets:
    for b in set(bs):
      df[b] += 1
  idf = np.log((1 + len(texts)) / (1 + df)) + 1
  out = np.zeros((len(texts), num_buckets))
  for i, bs in enumerate(buckets):
    for b in set(bs):
      out[i, b] = (1 + np.log(bs.count(b))) * idf[b]
  return out


def test_ngrams():
  assert features.ngrams('The Matrix, reloaded!') == [
      'the', 'matrix', 'reloaded', 'the matrix', 'matrix reloaded']


def test_identical_texts_identical_unit_vectors():
  enc = features.HashedTfidfEncoder.fit(TEXTS, dim=64, seed=1)
  v = enc.encode(TEXTS)
  assert v.shape == (6, 64) and v.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(v[0], v[5])
  # Batching does not change a text's vector.
  np.testing.assert_array_equal(enc.encode(TEXTS[2:3])[0], v[2])


def test_shared_words_closer_than_unrelated():
  enc = features.HashedTfidfEncoder.fit(TEXTS, dim=128, seed=0)
  v = enc.encode(TEXTS).astype(np.float64)
  cos = v @ v.T
  assert cos[0, 1] > cos[0, 2] + 0.2 and cos[0, 1] > cos[0, 4] + 0.2
  assert cos[2, 3] > cos[2, 0] + 0.2 and cos[2, 3] > cos[2, 4] + 0.2


def test_projection_preserves_tfidf_geometry():
  # With a projection as wide as the bucket space is sparse, cosines of the projected vectors
  # track those of the exact TF-IDF vectors (Johnson-Lindenstrauss).
  enc = features.HashedTfidfEncoder.fit(TEXTS, dim=4096, num_buckets=1 << 12, nnz=8, seed=0)
  v = enc.encode(TEXTS).astype(np.float64)
  ref = ref_tfidf(TEXTS, 1 << 12)
  ref /= np.linalg.norm(ref, axis=1, keepdims=True)
  np.testing.assert_allclose(v @ v.T, ref @ ref.T, atol=0.08)


def test_seed_changes_projection_not_similarity_order():
  a = features.HashedTfidfEncoder.fit(TEXTS, dim=64, seed=0).encode(TEXTS)
  b = features.HashedTfidfEncoder.fit(TEXTS, dim=64, seed=1).encode(TEXTS)
  assert not np.allclose(a, b)
  c = features.HashedTfidfEncoder.fit(TEXTS, dim=64, seed=0).encode(TEXTS)
  np.testing.assert_array_equal(a, c)


def test_text_without_words_is_an_error():
  enc = features.HashedTfidfEncoder.fit(TEXTS, dim=16)
  with pytest.raises(ValueError, match='text 1 has no word characters'):
    enc.encode(['fine', '?!'])
  with pytest.raises(ValueError, match='zero texts'):
    features.HashedTfidfEncoder.fit([])


def test_embed_catalog_batches_match_direct_encoding():
  cat = make_catalog(TEXTS)
  enc = features.HashedTfidfEncoder.fit(features.catalog_texts(cat), dim=32)
  seen = []
  emb = features.embed_catalog(cat, enc, batch_size=4, progress=lambda d, n: seen.append((d, n)))
  np.testing.assert_array_equal(emb, enc.encode([cat.text(i) for i in range(len(cat))]))
  assert seen == [(4, 6), (6, 6)]


def test_embed_catalog_checks_encoder_output():

  class Broken:
    name, dim = 'broken', 3

    def encode(self, texts):
      return np.zeros((len(texts), 2), np.float32)

  with pytest.raises(ValueError, match='broken returned shape'):
    features.embed_catalog(make_catalog(TEXTS), Broken())


def test_load_embeddings(tmp_path):
  cat = make_catalog(TEXTS)
  good = np.arange(6 * 4, dtype=np.float64).reshape(6, 4)
  np.save(tmp_path / 'good.npy', good)
  out = features.load_embeddings(tmp_path / 'good.npy', cat, dim=4)
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, good.astype(np.float32))

  np.save(tmp_path / 'rows.npy', good[:5])
  with pytest.raises(ValueError, match='5 rows but the catalog has 6'):
    features.load_embeddings(tmp_path / 'rows.npy', cat)
  with pytest.raises(ValueError, match='D=4, expected 8'):
    features.load_embeddings(tmp_path / 'good.npy', cat, dim=8)
  bad = good.copy()
  bad[3, 1] = np.inf
  np.save(tmp_path / 'inf.npy', bad)
  with pytest.raises(ValueError, match="first at row 3 \\(item 'i3'\\)"):
    features.load_embeddings(tmp_path / 'inf.npy', cat)
  np.save(tmp_path / 'int.npy', good.astype(np.int64))
  with pytest.raises(ValueError, match='floating point'):
    features.load_embeddings(tmp_path / 'int.npy', cat)
  np.save(tmp_path / 'flat.npy', good.ravel())
  with pytest.raises(ValueError, match='2-D'):
    features.load_embeddings(tmp_path / 'flat.npy', cat)
  (tmp_path / 'junk.npy').write_bytes(b'not an array')
  with pytest.raises(ValueError, match='not a readable'):
    features.load_embeddings(tmp_path / 'junk.npy', cat)
  with pytest.raises(FileNotFoundError, match='does not exist'):
    features.load_embeddings(tmp_path / 'missing.npy', cat)


def test_minilm_embedding_of_a_catalog_reports_one_progress_over_every_chunk(monkeypatch):
  from neo_jax.catalog import progress  # pylint: disable=g-import-not-at-top
  from neo_jax.sid import job, minilm  # pylint: disable=g-import-not-at-top

  class FakeMiniLM:  # the encoder's interface, without its weights
    dim, name = 3, 'fake-minilm'

    def __init__(self, batch_size, progress):
      assert progress is False  # the job reports, not each chunk's encode call
      del batch_size

    def encode(self, texts):
      return np.ones((len(texts), self.dim), np.float32)

  lines = []
  monkeypatch.setattr(minilm, 'MiniLMEncoder', FakeMiniLM)
  monkeypatch.setattr(progress, 'EVERY_S', 1e-9)
  monkeypatch.setattr(progress, '_stderr', lines.append)
  monkeypatch.setattr(progress, '_enabled', True)
  n = 4096 * 2 + 5  # three chunks of embed_catalog
  cat = make_catalog([f'title {i}' for i in range(n)])
  kw = dict(tfidf_dim=8, seed=0, batch_size=64, sequences=None, cf_dim=4, cf_window=2)
  emb, name = job._embed_one(cat, 'minilm', progress=True, **kw)
  assert emb.shape == (n, 3) and name == 'fake-minilm'
  # One meter: its counts run over the whole catalog (4,096, 8,192, 8,197), then it closes.
  assert lines[:3] == [l for l in lines if '/8,197 texts' in l]
  assert ['4,096/', '8,192/', '8,197/'] == [l.split()[1][:6] for l in lines[:3]]
  assert lines[-1].startswith('minilm: 8,197 texts in ')
  lines.clear()
  job._embed_one(cat, 'minilm', progress=False, **kw)
  assert not lines
