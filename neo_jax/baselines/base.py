"""The interface of every baseline NEO is compared with (`Baseline`) and its shared helpers.

Every baseline is fitted on the training split (`fit(dataset, split)`); given a validator
(`fit(dataset, split, validator=...)`, an `neo_jax.eval.validation.Validator`: the
validation requests and protocol, described here by `Validation`) it also tunes its few
hyperparameters and stops early on validation only. Then it ranks the whole catalog for each
request:

  rank_recommend(requests, target_types, k, exclude=None) -> (N, k) int32 catalog rows
  rank_search(queries, target_types, k)                    -> (N, k) int32 catalog rows

best first, restricted to the request's target type when one is given (the prompt names the
type for NEO, so the baselines get it too), padded with -1 when fewer items are allowed.
A recommendation request is a user's history (catalog rows, oldest first), a
`splits.Target` (its `.history`), or a user id (that user's training sequence, i.e. the
history that the validation target is predicted from). `exclude[b]`, when given, lists rows
request b must not get (see `neo_jax.eval.metrics` for the protocol: nothing is excluded by
default). A baseline that cannot do a task lists only the others in `tasks` and raises on the
other call.

The baselines: `popularity.Popularity`, `bm25.BM25` and `bm25.BM25S`, `dense.Dense` (MiniLM),
`sasrec.SASRec` and `tiger.TIGER` (both trained by `training.train_early_stopping`);
`registry` builds and fits them by name.
"""

from __future__ import annotations

import abc
import time
from typing import Any, Callable, Protocol, Sequence, Union

import numpy as np

from neo_jax.catalog.splits import Split, Target
from neo_jax.catalog.types import Catalog, Dataset

Request = Union[np.ndarray, Sequence[int], Target, str]


class Validation(Protocol):
  """What a baseline needs of the validation protocol (`neo_jax.eval.validation.Validator`).

  `targets` / `queries`: the recommendation / search requests (a baseline only checks that
  there are some); `metric`: the figure to maximise (e.g. 'ndcg@10'); `recommend(rank_fn)` /
  `search(rank_fn)`: the figures (metric name -> mean over requests) of a ranking function
  with the signature of `Baseline.rank_recommend` / `Baseline.rank_search`;
  `with_subsample(max_requests, seed)`: the same protocol over a fixed random subset of at
  most `max_requests` recommendation requests (None: all).
  """

  targets: Sequence[Any]
  queries: Sequence[Any]
  metric: str

  def with_subsample(self, max_requests: int | None, seed: int) -> Validation:
    ...

  def recommend(self, rank_fn: Callable[..., np.ndarray]) -> dict[str, float]:
    ...

  def search(self, rank_fn: Callable[..., np.ndarray]) -> dict[str, float]:
    ...


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

  def fit(self, dataset: Dataset, split: Split, *, validator: Validation | None = None
          ) -> dict[str, Any]:
    """Fits on `split.train`; with a `validator`, tunes and stops early on its requests
    (validation: never the test split), under its protocol. Without one, fits with the
    constructor's hyperparameters as they are. Returns flat facts (seconds, chosen
    hyperparameters, validation figures), also kept as `fit_facts`."""
    t0 = time.perf_counter()
    self.catalog, self.split = dataset.catalog, split
    facts = self._fit(dataset, split, validator)
    facts['fit_seconds'] = time.perf_counter() - t0
    self.fit_facts = facts
    return facts

  @abc.abstractmethod
  def _fit(self, dataset: Dataset, split: Split, validator: Validation | None
           ) -> dict[str, Any]:
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


def train_rows(split: Split) -> np.ndarray:
  """(T,) int64: all training interactions' catalog rows."""
  seqs = [s for s in split.train.values() if s.size]
  return np.concatenate(seqs).astype(np.int64) if seqs else np.zeros(0, np.int64)


def tune_last_items(ranker: Baseline, validator: Validation, facts: dict[str, Any]) -> None:
  """Sets `ranker.last` (how many of the latest history items form a recommendation query)
  to the point of `ranker.LAST_GRID` with the best validation figure on at most
  `ranker.max_valid_requests` requests (seed 0), recording each point's figure in `facts`
  (`valid_<metric>/last=<n>`, and the best as `valid_<metric>`)."""
  validator = validator.with_subsample(ranker.max_valid_requests, 0)
  key = f'valid_{validator.metric}'
  best = None
  for last in ranker.LAST_GRID:
    ranker.last = last
    score = validator.recommend(ranker.rank_recommend)[validator.metric]
    facts[f'{key}/last={last}'] = score
    if best is None or score > best[0]:
      best = (score, last)
  ranker.last = best[1]
  facts[key] = best[0]
