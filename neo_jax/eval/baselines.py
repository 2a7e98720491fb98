"""Reference rankers that NEO is compared with.

- Popularity: items ranked by their number of training interactions.
- Text match: Okapi BM25 (k1=1.2, b=0.75) between a text and every item's text (title,
  description, tags). For search the text is the query; for recommendation it is the text of
  the last items of the history (a content-based recommender).

Every ranker returns (B, K) catalog rows, best first, restricted to the request's target type
when one is given: the prompt names the type for NEO, so the baselines get it too.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from neo_jax.catalog.types import Catalog

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
  return _WORD.findall(text.lower())


def _top_k(scores_BxN: np.ndarray, k: int) -> np.ndarray:
  k = min(k, scores_BxN.shape[1])
  part = np.argpartition(-scores_BxN, k - 1, axis=1)[:, :k]
  order = np.argsort(-np.take_along_axis(scores_BxN, part, 1), axis=1, kind='stable')
  return np.take_along_axis(part, order, 1)


def _type_mask(catalog: Catalog, target_types: Sequence[str | None]) -> np.ndarray:
  """(B, N) bool: the items each request may return."""
  mask = np.ones((len(target_types), len(catalog)), bool)
  for b, t in enumerate(target_types):
    if t is not None:
      mask[b] = catalog.type_index == catalog.type_names.index(t)
  return mask


class Popularity:

  def __init__(self, catalog: Catalog, train_item_rows: np.ndarray):
    self.catalog = catalog
    self.counts = np.bincount(np.asarray(train_item_rows, np.int64),
                              minlength=len(catalog)).astype(np.float64)

  def rank(self, target_types: Sequence[str | None], k: int) -> np.ndarray:
    # Ties broken by row so the ranking is deterministic.
    base = self.counts - np.arange(len(self.catalog)) * 1e-9
    scores = np.where(_type_mask(self.catalog, target_types), base[None], -np.inf)
    return _top_k(scores, k)


class BM25:

  def __init__(self, catalog: Catalog, k1: float = 1.2, b: float = 0.75):
    self.catalog = catalog
    self.k1, self.b = k1, b
    self.vocab: dict[str, int] = {}
    rows, cols = [], []
    for n in range(len(catalog)):
      for w in words(catalog.text(n)):
        rows.append(n)
        cols.append(self.vocab.setdefault(w, len(self.vocab)))
    tf = sp.csr_matrix((np.ones(len(rows)), (rows, cols)),
                       shape=(len(catalog), len(self.vocab)))
    tf.sum_duplicates()
    doc_len = np.asarray(tf.sum(1)).ravel()
    df = np.bincount(tf.indices, minlength=len(self.vocab))
    self.idf = np.log(1.0 + (len(catalog) - df + 0.5) / (df + 0.5))
    norm = k1 * (1 - b + b * doc_len / max(doc_len.mean(), 1e-9))
    tf = tf.tocoo()
    weights = tf.data * (k1 + 1) / (tf.data + norm[tf.row])
    # (V, N): a query's scores are a sum of rows of this matrix.
    self.term_item = sp.csr_matrix((weights * self.idf[tf.col], (tf.col, tf.row)),
                                   shape=(len(self.vocab), len(catalog)))

  def scores(self, texts: Sequence[str]) -> np.ndarray:
    """(B, N) BM25 scores; repeated query words count once."""
    rows, cols = [], []
    for b, text in enumerate(texts):
      for w in set(words(text)):
        if w in self.vocab:
          rows.append(b)
          cols.append(self.vocab[w])
    q = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(texts), len(self.vocab)))
    return np.asarray((q @ self.term_item).todense())

  def rank(self, texts: Sequence[str], target_types: Sequence[str | None], k: int
           ) -> np.ndarray:
    # Ties (e.g. no shared word) are broken by row so the ranking is deterministic.
    s = self.scores(texts) - np.arange(len(self.catalog))[None] * 1e-9
    s = np.where(_type_mask(self.catalog, target_types), s, -np.inf)
    return _top_k(s, k)

  def rank_for_histories(self, histories: Sequence[np.ndarray],
                         target_types: Sequence[str | None], k: int, last: int = 5
                         ) -> np.ndarray:
    """Content-based recommendation: BM25 of the last `last` history items' text."""
    texts = [' '.join(self.catalog.text(int(i)) for i in h[-last:]) for h in histories]
    return self.rank(texts, target_types, k)
