"""Reference rankers that NEO is compared with, behind one interface (`Baseline`).

Every baseline is fitted on the training split (`fit(dataset, split)`), tunes its few
hyperparameters and stops early on the validation split only (`valid=True`), and then ranks
the whole catalog for each request:

  rank_recommend(requests, target_types, k, exclude=None) -> (N, k) int32 catalog rows
  rank_search(queries, target_types, k)                    -> (N, k) int32 catalog rows

best first, restricted to the request's target type when one is given (the prompt names the
type for NEO, so the baselines get it too), padded with -1 when fewer items are allowed.
A recommendation request is a user's history (catalog rows, oldest first), a
`splits.Target` (its `.history`), or a user id (that user's training sequence, i.e. the
history that the validation target is predicted from). `exclude[b]`, when given, lists rows
request b must not get (see `metrics` for the protocol: nothing is excluded by default).
A baseline that cannot do a task lists only the others in `tasks` and raises on the other
call.

This module holds the interface, the shared ranking helpers and the two simplest baselines:
- Popularity: items ranked by their number of training interactions (the query or history is
  ignored).
- BM25: our own Okapi BM25 (k1=1.2, b=0.75, Lucene-style IDF) between a text and every item's
  text (title, description, tags). For search the text is the query; for recommendation it is
  the text of the last items of the history (a content-based recommender). `BM25S` (the
  `bm25s` library) is the search baseline; this one stays as an independent cross-check.
SASRec (`sasrec.py`), dense MiniLM retrieval (`dense.py`) and a TIGER-style generative
retriever (`tiger.py`) implement the same interface.
"""

from __future__ import annotations

import abc
import re
import time
from typing import Any, Sequence, Union

import numpy as np
import scipy.sparse as sp

from neo_jax.catalog.splits import Split, Target
from neo_jax.catalog.types import Catalog, Dataset, Query
from neo_jax.eval import metrics

_WORD = re.compile(r"[a-z0-9]+")

Request = Union[np.ndarray, Sequence[int], Target, str]


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
      if t not in catalog.type_names:
        raise ValueError(f'unknown target type {t!r}; the catalog has {catalog.type_names}')
      mask[b] = catalog.type_index == catalog.type_names.index(t)
  return mask


def rank_scores(catalog: Catalog, scores_BxN: np.ndarray, target_types: Sequence[str | None],
                k: int, exclude: Sequence[Sequence[int]] | None = None) -> np.ndarray:
  """(B, k) int32: the k best-scoring allowed items per request, best first, -1 padded.

  Allowed = of the request's target type (any type for None) and not in `exclude[b]`.
  Ties are broken by the lower row, so the ranking is deterministic.
  """
  scores = np.asarray(scores_BxN, np.float64)
  if scores.shape != (len(target_types), len(catalog)):
    raise ValueError(f'scores of shape {scores.shape}, expected ({len(target_types)}, '
                     f'{len(catalog)})')
  if k < 1:
    raise ValueError(f'k must be >= 1, got {k}')
  if np.isnan(scores).any():
    raise ValueError('scores hold NaN')
  allowed = _type_mask(catalog, target_types)
  if exclude is not None:
    if len(exclude) != len(target_types):
      raise ValueError(f'{len(target_types)} requests but {len(exclude)} exclusion sets')
    for b, rows in enumerate(exclude):
      allowed[b, np.asarray(list(rows), np.int64)] = False
  # Order by (score desc, row asc) exactly: sort keys instead of adding a tie-break epsilon,
  # which could reorder nearly equal scores.
  width = min(k, scores.shape[1])
  out = np.full((scores.shape[0], k), -1, np.int32)
  for b in range(scores.shape[0]):
    rows = np.flatnonzero(allowed[b])
    s = scores[b, rows]
    if rows.size > width:
      keep = np.argpartition(-s, width - 1)[:width]
      cut = s[keep].min()
      keep = np.flatnonzero(s >= cut)  # every item tied with the cut competes by row
      rows, s = rows[keep], s[keep]
    order = np.lexsort((rows, -s))[:width]
    out[b, :order.size] = rows[order]
  return out


class Baseline(abc.ABC):
  """The interface of every baseline (see the module docstring)."""

  name: str = 'baseline'
  tasks: tuple[str, ...] = ('recommend', 'search')

  def __init__(self):
    self.catalog: Catalog | None = None
    self.split: Split | None = None
    self.fit_facts: dict[str, Any] = {}

  def _fitted(self) -> Catalog:
    if self.catalog is None:
      raise RuntimeError(f'{self.name}: call fit(dataset, split) first')
    return self.catalog

  def fit(self, dataset: Dataset, split: Split, *, valid: bool = True,
          valid_queries: Sequence[Query] | None = None, exclude_history: bool = False
          ) -> dict[str, Any]:
    """Fits on `split.train`; with `valid`, tunes on `split.valid` (recommendation) and on
    `valid_queries` (search, when given), never on the test split. `exclude_history`: the
    protocol tuned for (the same one the evaluation uses). Returns flat facts (seconds,
    chosen hyperparameters, validation figures), also kept as `fit_facts`."""
    t0 = time.perf_counter()
    self.catalog, self.split = dataset.catalog, split
    facts = self._fit(dataset, split, valid=valid, valid_queries=valid_queries,
                      exclude_history=exclude_history)
    facts['fit_seconds'] = time.perf_counter() - t0
    self.fit_facts = facts
    return facts

  @abc.abstractmethod
  def _fit(self, dataset: Dataset, split: Split, *, valid: bool,
           valid_queries: Sequence[Query] | None, exclude_history: bool) -> dict[str, Any]:
    ...

  def histories(self, requests: Sequence[Request]) -> list[np.ndarray]:
    """Each request as its history: (H,) int64 catalog rows, oldest first."""
    catalog = self._fitted()
    out = []
    for b, r in enumerate(requests):
      if isinstance(r, Target):
        h = r.history
      elif isinstance(r, str):
        if self.split is None or r not in self.split.train:
          raise KeyError(f'request {b}: unknown user id {r!r}')
        h = self.split.train[r]
      else:
        h = r
      h = np.asarray(h, np.int64).reshape(-1)
      if h.size and (h.min() < 0 or h.max() >= len(catalog)):
        raise ValueError(f'request {b}: history rows must be in [0, {len(catalog)}), got '
                         f'{h.min()}..{h.max()}')
      out.append(h)
    return out

  def rank_recommend(self, requests: Sequence[Request], target_types: Sequence[str | None],
                     k: int, *, exclude: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """(N, k) int32 next-item recommendations per request (see the module docstring)."""
    if 'recommend' not in self.tasks:
      raise NotImplementedError(f'{self.name} does not recommend (tasks: {self.tasks})')
    if len(requests) != len(target_types):
      raise ValueError(f'{len(requests)} requests but {len(target_types)} target types')
    catalog = self._fitted()
    hist = self.histories(requests)
    return rank_scores(catalog, self.recommend_scores(hist), target_types, k, exclude)

  def rank_search(self, queries: Sequence[str], target_types: Sequence[str | None], k: int
                  ) -> np.ndarray:
    """(N, k) int32 items for each text query (see the module docstring)."""
    if 'search' not in self.tasks:
      raise NotImplementedError(f'{self.name} does not search (tasks: {self.tasks})')
    if len(queries) != len(target_types):
      raise ValueError(f'{len(queries)} queries but {len(target_types)} target types')
    catalog = self._fitted()
    return rank_scores(catalog, self.search_scores(list(queries)), target_types, k)

  def recommend_scores(self, histories: list[np.ndarray]) -> np.ndarray:
    """(N, num_items) scores, higher is better."""
    raise NotImplementedError(f'{self.name} does not recommend')

  def search_scores(self, queries: list[str]) -> np.ndarray:
    """(N, num_items) scores, higher is better."""
    raise NotImplementedError(f'{self.name} does not search')


def recommend_metrics(baseline: Baseline, targets: Sequence[Target], *,
                      ks: Sequence[int] = metrics.DEFAULT_KS, exclude_history: bool = False,
                      max_requests: int | None = None, seed: int = 0) -> dict[str, float]:
  """Full-ranking metrics of next-item recommendation over `targets` (e.g. `split.valid`),
  each request asking for its target's type; at most `max_requests` of them (a fixed random
  subset)."""
  targets = list(targets)
  if not targets:
    raise ValueError('no targets to evaluate')
  if max_requests is not None and len(targets) > max_requests:
    idx = np.sort(np.random.default_rng(seed).choice(len(targets), max_requests, False))
    targets = [targets[i] for i in idx]
  catalog = baseline._fitted()
  types = [catalog.type_of(t.target) for t in targets]
  exclude = [t.history for t in targets] if exclude_history else None
  ranked = baseline.rank_recommend(targets, types, max(ks), exclude=exclude)
  return metrics.ranking_metrics(ranked, [[t.target] for t in targets], ks, exclude=exclude)


def search_metrics(baseline: Baseline, queries: Sequence[Query], *,
                   ks: Sequence[int] = metrics.DEFAULT_KS,
                   target_types: Sequence[str | None] | None = None) -> dict[str, float]:
  """Full-ranking metrics of search over `queries`; the target type of each query is the type
  of its first relevant item unless `target_types` is given."""
  queries = list(queries)
  if not queries:
    raise ValueError('no queries to evaluate')
  catalog = baseline._fitted()
  if target_types is None:
    target_types = [catalog.type_of(q.item_index[0]) for q in queries]
  ranked = baseline.rank_search([q.text for q in queries], target_types, max(ks))
  return metrics.ranking_metrics(ranked, [list(q.item_index) for q in queries], ks)


def train_rows(split: Split) -> np.ndarray:
  """All training interactions' catalog rows."""
  seqs = [s for s in split.train.values() if s.size]
  return np.concatenate(seqs).astype(np.int64) if seqs else np.zeros(0, np.int64)


class Popularity(Baseline):
  """Items by their number of training interactions. `Popularity(catalog, train_rows)` is
  usable at once (the older call); `Popularity().fit(dataset, split)` counts `split.train`."""

  name = 'popularity'

  def __init__(self, catalog: Catalog | None = None, train_item_rows: np.ndarray | None = None):
    super().__init__()
    if (catalog is None) != (train_item_rows is None):
      raise ValueError('give both catalog and train_item_rows, or neither (then call fit)')
    if catalog is not None:
      self._count(catalog, train_item_rows)

  def _count(self, catalog: Catalog, rows: np.ndarray) -> None:
    self.catalog = catalog
    self.counts = np.bincount(np.asarray(rows, np.int64),
                              minlength=len(catalog)).astype(np.float64)

  def _fit(self, dataset, split, *, valid, valid_queries, exclude_history):
    del valid, valid_queries, exclude_history  # nothing to tune
    self._count(dataset.catalog, train_rows(split))
    return {'train_interactions': int(self.counts.sum())}

  def recommend_scores(self, histories):
    return np.broadcast_to(self.counts, (len(histories), self.counts.size))

  def search_scores(self, queries):
    return np.broadcast_to(self.counts, (len(queries), self.counts.size))

  def rank(self, target_types: Sequence[str | None], k: int) -> np.ndarray:
    """(B, k) rows by popularity within each request's type (-1 padded)."""
    catalog = self._fitted()
    scores = np.broadcast_to(self.counts, (len(target_types), self.counts.size))
    return rank_scores(catalog, scores, target_types, k)


class BM25(Baseline):
  """Okapi BM25 over item text, ours (see the module docstring). `BM25(catalog)` is usable
  at once; `BM25().fit(dataset, split)` also tunes, on validation, how many of the last
  history items form a recommendation query and, with validation queries, k1 and b."""

  name = 'bm25'
  LAST_GRID = (1, 3, 5, 10)
  K1_B_GRID = ((1.2, 0.75), (0.9, 0.4), (1.5, 0.75), (1.2, 0.9), (2.0, 0.75))

  def __init__(self, catalog: Catalog | None = None, k1: float = 1.2, b: float = 0.75,
               last: int = 5, max_valid_requests: int = 1000):
    super().__init__()
    self.last = int(last)
    self.max_valid_requests = max_valid_requests
    if catalog is not None:
      self.catalog = catalog
      self._index(catalog, k1, b)
    else:
      self.k1, self.b = k1, b

  def _index(self, catalog: Catalog, k1: float, b: float) -> None:
    if k1 < 0 or not 0 <= b <= 1:
      raise ValueError(f'BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}')
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

  def _fit(self, dataset, split, *, valid, valid_queries, exclude_history):
    facts: dict[str, Any] = {}
    if valid and valid_queries:
      best = None
      for k1, b in self.K1_B_GRID:
        self._index(dataset.catalog, k1, b)
        score = search_metrics(self, valid_queries, ks=(10,))['ndcg@10']
        facts[f'valid_search_ndcg@10/k1={k1},b={b}'] = score
        if best is None or score > best[0]:
          best = (score, k1, b)
      facts['valid_search_ndcg@10'] = best[0]
      self._index(dataset.catalog, best[1], best[2])
    else:
      self._index(dataset.catalog, self.k1, self.b)
    facts.update(k1=self.k1, b=self.b)
    if valid and split.valid:
      tune_last_items(self, split, exclude_history, facts)
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

  def rank(self, texts: Sequence[str], target_types: Sequence[str | None], k: int
           ) -> np.ndarray:
    return rank_scores(self._fitted(), self.scores(texts), target_types, k)

  def rank_for_histories(self, histories: Sequence[np.ndarray],
                         target_types: Sequence[str | None], k: int, last: int = 5
                         ) -> np.ndarray:
    """Content-based recommendation: BM25 of the last `last` history items' text."""
    catalog = self._fitted()
    texts = [' '.join(catalog.text(int(i)) for i in h[-last:]) for h in histories]
    return self.rank(texts, target_types, k)


class BM25S(Baseline):
  """Search by BM25 through the `bm25s` library (method 'lucene'), one index per entity type
  (IDF and average length within the type; a request without a type uses an index over the
  whole catalog). k1 and b are tuned on validation queries when `fit` gets them.

  Differences from our `BM25` (tests/test_eval_baselines_bm25.py checks that, given the same
  tokens and one index, the scores are ours / (k1 + 1)): bm25s's tokeniser keeps words of two
  or more word characters and drops English stop words (ours keeps every [a-z0-9]+ run);
  Lucene's term weight leaves out the constant factor (k1 + 1) (same ranking); a query word
  repeated counts each time (once in ours); and the index is per type (ours is global).
  """

  name = 'bm25s'
  tasks = ('search',)
  K1_B_GRID = BM25.K1_B_GRID

  def __init__(self, k1: float = 1.2, b: float = 0.75, stopwords: str | None = 'en'):
    super().__init__()
    if k1 < 0 or not 0 <= b <= 1:
      raise ValueError(f'BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}')
    self.k1, self.b, self.stopwords = k1, b, stopwords
    self._indexes: dict[str | None, Any] = {}

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

  def _fit(self, dataset, split, *, valid, valid_queries, exclude_history):
    del split, exclude_history
    facts: dict[str, Any] = {}
    if valid and valid_queries:
      best = None
      for k1, b in self.K1_B_GRID:
        self.k1, self.b, self._indexes = k1, b, {}
        score = search_metrics(self, valid_queries, ks=(10,))['ndcg@10']
        facts[f'valid_search_ndcg@10/k1={k1},b={b}'] = score
        if best is None or score > best[0]:
          best = (score, k1, b)
      facts['valid_search_ndcg@10'] = best[0]
      self.k1, self.b = best[1], best[2]
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
    return rank_scores(catalog, scores, target_types, k)


def tune_last_items(ranker, split, exclude_history: bool, facts: dict) -> None:
  """Sets `ranker.last` (how many of the latest history items form a recommendation query)
  to the point of `ranker.LAST_GRID` with the best validation NDCG@10, recording each point's
  score in `facts`."""
  best = None
  for last in ranker.LAST_GRID:
    ranker.last = last
    score = recommend_metrics(ranker, split.valid, ks=(10,), exclude_history=exclude_history,
                              max_requests=ranker.max_valid_requests)['ndcg@10']
    facts[f'valid_ndcg@10/last={last}'] = score
    if best is None or score > best[0]:
      best = (score, last)
  ranker.last = best[1]
  facts['valid_ndcg@10'] = best[0]
