"""Dense retrieval with a sentence encoder (all-MiniLM-L6-v2 by default): the zero-shot
embedding-search baseline.

Every item's text (`Catalog.text`: title, description, tags) is encoded once into a unit
vector, cached under `cache_dir` when one is given (`sid.features.read_text_embeddings`: keyed
by the encoder's name and a hash of the texts, so a changed catalog or encoder re-encodes; the
SID build shares the cache); a query is encoded the same way and
items are ranked by cosine similarity within the requested type. For recommendation (a
content-based recommender, like BM25's) the query vector is the mean of the last `last`
history items' vectors, `last` tuned on the validation split. Nothing is trained.

In a job of several JAX processes every process encodes (or reads) the same embeddings, and
process 0 alone writes the cache (`catalog.multihost.is_writer`); the processes check the
cache together (a barrier after the check), so every process takes the same decision and
reports the same `cached` fact.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from neo_jax.baselines import base
from neo_jax.catalog import atomic
from neo_jax.catalog import multihost
from neo_jax.sid import features


class Dense(base.Baseline):
  """Cosine top-k over item-text embeddings (see the module docstring).

  Args:
    encoder: a `sid.features.TextEncoder` (`.name`, `.encode(texts) -> (N, D)`); default the
      packaged all-MiniLM-L6-v2 (`sid.minilm.MiniLMEncoder`).
    cache_dir: where item embeddings are cached (`text_embeddings.npy` + `.json`).
    batch_size: MiniLM texts per forward pass (default encoder only).
    last: how many of the latest history items' vectors are averaged into a recommendation
      query (tuned with a validator that has targets, over `LAST_GRID`).
    max_valid_requests: validation targets used to tune `last` (a fixed subset, seed 0).
    log: where the default encoder's progress lines go (None: stderr).
  """

  name = 'dense'
  LAST_GRID = (1, 3, 5, 10)

  def __init__(self, encoder: Any = None, cache_dir: str | None = None, batch_size: int = 64,
               last: int = 5, max_valid_requests: int | None = 1000,
               log: Callable[[str], None] | None = None):
    super().__init__()
    self.log = log
    self._encoder = encoder
    self.batch_size = batch_size
    self.cache_dir = cache_dir
    self.last = int(last)
    self.max_valid_requests = max_valid_requests
    self.item_emb: np.ndarray | None = None

  @property
  def encoder(self):
    if self._encoder is None:
      from neo_jax.sid import minilm  # pylint: disable=g-import-not-at-top (90 MB of weights)
      self._encoder = minilm.MiniLMEncoder(batch_size=self.batch_size, log=self.log)
    return self._encoder

  def _unit(self, emb: np.ndarray, what: str) -> np.ndarray:
    emb = np.asarray(emb, np.float32)
    if not np.isfinite(emb).all():
      raise ValueError(f'{self.encoder.name} gave non-finite {what} embeddings')
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    # An all-zero vector (e.g. hashed TF-IDF of an empty text) stays zero: similarity 0.
    return emb / np.where(norm > 0, norm, 1.0)

  def item_embeddings(self, catalog) -> tuple[np.ndarray, bool]:
    """((N, D) unit vectors, whether they came from the cache). The cache
    (`sid.features.read_text_embeddings`) holds the encoder's output: the SID build of the
    same run writes it when its encoder has a MiniLM part, so the catalog is encoded once."""
    texts = features.catalog_texts(catalog)
    key = features.text_embeddings_key(self.encoder.name, texts)
    cached = features.read_text_embeddings(self.cache_dir, key) if self.cache_dir else None
    if self.cache_dir:  # every process has checked before process 0 may write
      multihost.barrier(f'dense cache:{atomic.location(self.cache_dir)}')
    if cached is not None:
      return self._unit(cached, 'item'), True
    emb = np.asarray(self.encoder.encode(texts), np.float32)
    unit = self._unit(emb, 'item')  # refuses non-finite vectors before they are cached
    if self.cache_dir and multihost.is_writer():
      features.write_text_embeddings(self.cache_dir, emb, key)
    return unit, False

  def _fit(self, dataset, split, validator):
    del split  # nothing is learned from interactions
    # Nothing to tune for search: the encoder is used as it is.
    self.item_emb, cached = self.item_embeddings(dataset.catalog)
    facts: dict[str, Any] = {'encoder': self.encoder.name, 'cached': float(cached),
                             'dim': int(self.item_emb.shape[1])}
    if validator is not None and validator.targets:
      base.tune_last_items(self, validator, facts)
    facts['last'] = self.last
    return facts

  def search_scores(self, queries):
    q = self._unit(self.encoder.encode(list(queries)), 'query')
    return q @ self.item_emb.T

  def recommend_scores(self, histories):
    q = np.zeros((len(histories), self.item_emb.shape[1]), np.float32)
    for b, h in enumerate(histories):
      if h.size:
        q[b] = self.item_emb[h[-self.last:]].mean(0)
    return q @ self.item_emb.T
