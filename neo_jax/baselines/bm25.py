"""BM25 between a text and every item's text (title, description, tags): two implementations.

- BM25: our own Okapi BM25 (k1=1.2, b=0.75, Lucene-style IDF) over one index of the whole
  catalog. For search the text is the query; for recommendation it is the text of the last
  `last` items of the history (a content-based recommender).
- BM25S: the `bm25s` library, search only, one index per entity type. It is the search
  baseline; ours stays as an independent cross-check and the content-based recommender.

With a validator, both tune k1 and b on the validation queries (`K1_B_GRID`) and BM25 also
tunes `last` on the validation targets (`base.tune_last_items`); without one they keep the
constructor's values.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from neo_jax.baselines import base

_WORD = re.compile(r"[a-z0-9]+")

K1_B_GRID = ((1.2, 0.75), (0.9, 0.4), (1.5, 0.75), (1.2, 0.9), (2.0, 0.75))


def words(text: str) -> list[str]:
  """Our BM25's tokens: every run of [a-z0-9] in the lower-cased text."""
  return _WORD.findall(text.lower())


def _check_k1_b(k1: float, b: float) -> None:
  if k1 < 0 or not 0 <= b <= 1:
    raise ValueError(f'BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}')


def tune_k1_b(model, validator: base.Validation, facts: dict[str, Any]) -> None:
  """Sets (k1, b) of `model` (`model.set_k1_b`) to the point of `K1_B_GRID` with the best
  validation search figure, recording each point's figure in `facts`
  (`valid_search_<metric>/k1=..,b=..`, and the best as `valid_search_<metric>`)."""
  key = f'valid_search_{validator.metric}'
  best = None
  for k1, b in K1_B_GRID:
    model.set_k1_b(k1, b)
    score = validator.search(model.rank_search)[validator.metric]
    facts[f'{key}/k1={k1},b={b}'] = score
    if best is None or score > best[0]:
      best = (score, k1, b)
  facts[key] = best[0]
  model.set_k1_b(best[1], best[2])


class BM25(base.Baseline):
  """Okapi BM25 over item text, ours (see the module docstring).

  Args:
    k1, b: BM25's term-frequency saturation and length normalisation (tuned with a validator
      that has queries).
    last: how many of the latest history items form a recommendation query (tuned with a
      validator that has targets, over `LAST_GRID`).
    max_valid_requests: validation targets used to tune `last` (a fixed subset, seed 0).
  """

  name = 'bm25'
  LAST_GRID = (1, 3, 5, 10)
  K1_B_GRID = K1_B_GRID

  def __init__(self, k1: float = 1.2, b: float = 0.75, last: int = 5,
               max_valid_requests: int | None = 1000):
    super().__init__()
    _check_k1_b(k1, b)
    self.k1, self.b = k1, b
    self.last = int(last)
    self.max_valid_requests = max_valid_requests

  def set_k1_b(self, k1: float, b: float) -> None:
    """Rebuilds the index with these parameters."""
    _check_k1_b(k1, b)
    catalog = self._fitted()
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

  def _fit(self, dataset, split, validator):
    del dataset, split  # the catalog is self.catalog; nothing is learned from interactions
    facts: dict[str, Any] = {}
    if validator is not None and validator.queries:
      tune_k1_b(self, validator, facts)
    else:
      self.set_k1_b(self.k1, self.b)
    facts.update(k1=self.k1, b=self.b)
    if validator is not None and validator.targets:
      base.tune_last_items(self, validator, facts)
    facts['last'] = self.last
    return facts

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

  def search_scores(self, queries):
    return self.scores(queries)

  def recommend_scores(self, histories):
    catalog = self._fitted()
    texts = [' '.join(catalog.text(int(i)) for i in h[-self.last:]) for h in histories]
    return self.scores(texts)


class BM25S(base.Baseline):
  """Search by BM25 through the `bm25s` library (method 'lucene'), one index per entity type
  (IDF and average length within the type; a request without a type uses an index over the
  whole catalog). k1 and b are tuned on the validation queries when `fit` gets a validator
  that has some.

  Differences from our `BM25` (tests/test_baselines_bm25.py checks that, given the same
  tokens and one index, the scores are ours / (k1 + 1)): bm25s's tokeniser keeps words of two
  or more word characters and drops English stop words (ours keeps every [a-z0-9]+ run);
  Lucene's term weight leaves out the constant factor (k1 + 1) (same ranking); a query word
  repeated counts each time (once in ours); and the index is per type (ours is global).
  """

  name = 'bm25s'
  tasks = ('search',)
  K1_B_GRID = K1_B_GRID

  def __init__(self, k1: float = 1.2, b: float = 0.75, stopwords: str | None = 'en'):
    super().__init__()
    _check_k1_b(k1, b)
    self.k1, self.b, self.stopwords = k1, b, stopwords
    self._indexes: dict[str | None, Any] = {}

  def set_k1_b(self, k1: float, b: float) -> None:
    """Sets the parameters; the indexes are rebuilt on their next use."""
    _check_k1_b(k1, b)
    self.k1, self.b, self._indexes = k1, b, {}

  def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
    import bm25s  # pylint: disable=g-import-not-at-top
    return bm25s.tokenize(list(texts), stopwords=self.stopwords, return_ids=False,
                          show_progress=False)

  def _index(self, type_name: str | None):
    """(catalog rows, bm25s.BM25) of one type's index, built on first use."""
    if type_name not in self._indexes:
      import bm25s  # pylint: disable=g-import-not-at-top
      catalog = self._fitted()
      rows = (np.arange(len(catalog)) if type_name is None
              else catalog.items_of_type(type_name))
      retriever = bm25s.BM25(k1=self.k1, b=self.b, method='lucene')
      retriever.index(self.tokenize([catalog.text(int(r)) for r in rows]), show_progress=False)
      self._indexes[type_name] = (rows, retriever)
    return self._indexes[type_name]

  def _fit(self, dataset, split, validator):
    del dataset, split  # the catalog is self.catalog; nothing is learned from interactions
    facts: dict[str, Any] = {}
    if validator is not None and validator.queries:
      tune_k1_b(self, validator, facts)
    self._indexes = {}
    facts.update(k1=self.k1, b=self.b)
    return facts

  def rank_search(self, queries, target_types, k):
    if len(queries) != len(target_types):
      raise ValueError(f'{len(queries)} queries but {len(target_types)} target types')
    catalog = self._fitted()
    scores = np.full((len(queries), len(catalog)), -np.inf)
    tokens = self.tokenize(queries)
    for n, (toks, t) in enumerate(zip(tokens, target_types)):
      rows, retriever = self._index(t)
      # An empty query (every word a stop word) scores every item 0: popularity-free ties,
      # broken by row like every other ranking here.
      scores[n, rows] = retriever.get_scores(toks) if toks else 0.0
    return base.rank_scores(catalog, scores, target_types, k)
