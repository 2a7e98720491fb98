"""Collaborative item embeddings (neo_jax/sid/collaborative.py) and encoder combinations."""

import numpy as np
import pytest

from neo_jax.sid import collaborative
from neo_jax.sid import job


def test_cooccurrence_counts_by_hand():
  m = collaborative.cooccurrence_counts([np.array([0, 1, 2]), np.array([2, 1])], 4, window=2)
  want = np.zeros((4, 4))
  # (0,1) d=1, (1,2) d=1 twice (once per sequence, either order), (0,2) d=2.
  want[0, 1] = want[1, 0] = 1.0
  want[1, 2] = want[2, 1] = 2.0
  want[0, 2] = want[2, 0] = 0.5
  np.testing.assert_allclose(m.toarray(), want)


def test_ppmi_keeps_only_positive_associations():
  c = collaborative.cooccurrence_counts([np.array([0, 1, 0, 1]), np.array([2, 3, 2, 3])], 4, 1)
  p = collaborative.ppmi(c).toarray()
  assert p[0, 1] > 0 and p[2, 3] > 0
  assert p[0, 2] == 0 and p[1, 3] == 0
  assert (p >= 0).all()


def test_embeddings_put_co_consumed_items_together():
  rng = np.random.default_rng(0)
  # Two communities: items 0-9 are consumed together, 10-19 together; item 20 never.
  seqs = [rng.permutation(10) + (10 if u % 2 else 0) for u in range(200)]
  emb, facts = collaborative.cooccurrence_embeddings(seqs, 21, dim=4, window=2)
  assert emb.shape == (21, 4) and emb.dtype == np.float32
  assert facts['items_without_cooccurrence'] == 1
  np.testing.assert_array_equal(emb[20], 0.0)
  u = emb[:20] / np.linalg.norm(emb[:20], axis=1, keepdims=True)
  sim = u @ u.T
  within = (sim[:10, :10].mean() + sim[10:, 10:].mean()) / 2
  across = sim[:10, 10:].mean()
  assert within > across + 0.5, (within, across)


def test_embeddings_deterministic_and_sparse_path_agrees(monkeypatch):
  rng = np.random.default_rng(1)
  seqs = [rng.integers(0, 40, size=30) for _ in range(50)]
  a, _ = collaborative.cooccurrence_embeddings(seqs, 40, dim=6)
  b, _ = collaborative.cooccurrence_embeddings(seqs, 40, dim=6)
  np.testing.assert_array_equal(a, b)
  monkeypatch.setattr(collaborative, '_DENSE_SVD_MAX_ITEMS', 0)
  c, _ = collaborative.cooccurrence_embeddings(seqs, 40, dim=6)
  # Same subspace: the Gram matrices agree (singular values here are distinct enough).
  np.testing.assert_allclose(a @ a.T, c @ c.T, atol=1e-3)


def test_bad_input_is_named():
  with pytest.raises(ValueError, match='item rows must be in'):
    collaborative.cooccurrence_counts([np.array([0, 5])], 3)
  with pytest.raises(ValueError, match='window'):
    collaborative.cooccurrence_counts([np.array([0, 1])], 3, window=0)
  with pytest.raises(ValueError, match='dim'):
    collaborative.cooccurrence_embeddings([np.array([0, 1])], 3, dim=0)


def test_encoder_combination(tiny_catalog_and_sequences):
  catalog, seqs = tiny_catalog_and_sequences
  with pytest.raises(ValueError, match="needs the training sequences"):
    job.embed(catalog, 'cf')
  with pytest.raises(ValueError, match='names a part twice'):
    job.embed(catalog, 'tfidf+tfidf', sequences=seqs)
  with pytest.raises(ValueError, match='unknown encoder'):
    job.embed(catalog, 'tfidf+bogus', sequences=seqs)
  t, _ = job.embed(catalog, 'tfidf', tfidf_dim=16)
  c, cname = job.embed(catalog, 'cf', sequences=seqs, cf_dim=8)
  both, name = job.embed(catalog, 'tfidf+cf', tfidf_dim=16, sequences=seqs, cf_dim=8)
  assert name.startswith('hashed_tfidf(') and '+cf(' in name and cname.startswith('cf(')
  assert both.shape == (len(catalog), 16 + 8)
  # Each part scaled to unit rows by hand, then concatenated.
  t_unit = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
  np.testing.assert_allclose(both[:, :16], t_unit, rtol=1e-5, atol=1e-6)
  norms = np.linalg.norm(both[:, 16:], axis=1)
  np.testing.assert_allclose(norms[norms > 0], 1.0, rtol=1e-5)
  np.testing.assert_allclose(both[:, 16:], c, rtol=1e-5, atol=1e-6)


@pytest.fixture
def tiny_catalog_and_sequences():
  from neo_jax.catalog import synthetic
  from neo_jax.catalog.splits import make_split
  ds = synthetic.generate_synthetic(synthetic.SyntheticConfig(
      items_per_type=20, num_users=40, num_queries=5, seed=0))
  split, _ = make_split(ds.interactions, 'leave_one_out')
  return ds.catalog, list(split.train.values())
