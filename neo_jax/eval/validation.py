"""The validation protocol that baselines tune and early-stop on: which requests, which
protocol switches, which figure.

A `Validator` holds the validation requests (`split.valid` targets for recommendation, queries
for search) and the protocol (each history excluded from its ranking unless `exclude_history`
is False, as in the evaluation's primary figures; full-ranking figures
at `ks`; `metric` the one figure to maximise). A baseline gets it in `fit(..., validator=...)`
and hands it a ranking function; it never reads the requests itself, so the protocol stays
the evaluation's and the baselines do not depend on this package (`neo_jax.baselines.base.
Validation` is the part of this class they use). A ranking function is a baseline's:

  recommend: rank_fn(histories, target_types, k, exclude=None) -> (N, k) int catalog rows
  search:    rank_fn(query_texts, target_types, k)               -> (N, k) int catalog rows

best first, -1 padded, where a history is (H,) int catalog rows, oldest first. Each request
asks for what is known at request time (`request_types`): the type of the last history item
(recommendation), the type the query names, else any (search) -- never the target's type.

`recommend_metrics` / `search_metrics` compute the same figures for any requests (e.g. a
benchmark's test split).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from neo_jax.catalog.splits import Target
from neo_jax.catalog.types import Catalog, Query
from neo_jax.eval import metrics
from neo_jax.tasks import prompts

RankRecommend = Callable[..., np.ndarray]
RankSearch = Callable[[Sequence[str], Sequence[str | None], int], np.ndarray]


def subsample_targets(targets: Sequence[Target], max_requests: int | None, seed: int
                      ) -> list[Target]:
  """At most `max_requests` of `targets` (all for None): a fixed random subset drawn with
  `seed`, in their order."""
  targets = list(targets)
  if max_requests is not None and len(targets) > max_requests:
    idx = np.sort(np.random.default_rng(seed).choice(len(targets), max_requests, False))
    targets = [targets[i] for i in idx]
  return targets


def history_types(catalog: Catalog, histories: Sequence[Sequence[int]]) -> list[str | None]:
  """The type each recommendation request asks for: its last history item's (None: empty)."""
  return [catalog.type_of(int(h[-1])) if len(h) else None for h in histories]


def query_types(catalog: Catalog, texts: Sequence[str]) -> list[str | None]:
  """The type each search request asks for: the one the query names, else None (any)."""
  return [prompts.named_type(t, catalog.type_names) for t in texts]


def recommend_metrics(catalog: Catalog, targets: Sequence[Target], rank_fn: RankRecommend, *,
                      ks: Sequence[int] = metrics.DEFAULT_KS, exclude_history: bool = False,
                      max_requests: int | None = None, seed: int = 0,
                      any_type: bool = False) -> dict[str, float]:
  """Full-ranking figures (`metrics.ranking_metrics`) of next-item recommendation over
  `targets`, each request being its target's history and asking for its last item's type; at
  most `max_requests` of them (`subsample_targets`). With `exclude_history` each request's
  history is excluded from its ranking; with `any_type` every request asks for any type."""
  if not targets:
    raise ValueError('no targets to evaluate')
  targets = subsample_targets(targets, max_requests, seed)
  types = ([None] * len(targets) if any_type else
           history_types(catalog, [t.history for t in targets]))
  exclude = [t.history for t in targets] if exclude_history else None
  ranked = rank_fn([t.history for t in targets], types, max(ks), exclude=exclude)
  return metrics.ranking_metrics(ranked, [[t.target] for t in targets], ks, exclude=exclude)


def search_metrics(catalog: Catalog, queries: Sequence[Query], rank_fn: RankSearch, *,
                   ks: Sequence[int] = metrics.DEFAULT_KS,
                   target_types: Sequence[str | None] | None = None) -> dict[str, float]:
  """Full-ranking figures of search over `queries`; a query asks for the type it names (else
  any type) unless `target_types` is given."""
  queries = list(queries)
  if not queries:
    raise ValueError('no queries to evaluate')
  if target_types is None:
    target_types = query_types(catalog, [q.text for q in queries])
  ranked = rank_fn([q.text for q in queries], target_types, max(ks))
  return metrics.ranking_metrics(ranked, [list(q.item_index) for q in queries], ks)


class Validator:
  """The validation requests and protocol (see the module docstring).

  Args:
    catalog: the items (for each request's target type).
    targets: the recommendation requests, `split.valid` (may be empty: nothing to tune on).
    queries: the search requests (may be empty).
    exclude_history: exclude each history from its ranking (the evaluation's primary
      protocol; default).
    ks: the cutoffs of the figures.
    metric: the figure to maximise, a key of `metrics.ranking_metrics` at one of `ks`.
    any_type: recommendation requests ask for any type instead of the last history item's
      (for data whose next item is often of another type than the last one).
    max_requests, seed: at most this many recommendation requests (None: all), a fixed
      random subset drawn with `seed`; `with_subsample` gives the same protocol over another
      subset. Search requests are never subsampled.
  """

  def __init__(self, catalog: Catalog, targets: Sequence[Target],
               queries: Sequence[Query] = (), *, exclude_history: bool = True,
               ks: Sequence[int] = (10,), metric: str = 'ndcg@10',
               max_requests: int | None = None, seed: int = 0, any_type: bool = False):
    ks = tuple(int(k) for k in ks)
    name, _, k = metric.partition('@')
    if name not in ('hr', 'recall', 'ndcg', 'mrr') or (k and int(k) not in ks) or (
        name != 'mrr' and not k):
      raise ValueError(f'metric {metric!r} is not a figure at ks={ks}')
    self.catalog = catalog
    self.targets = list(targets)
    self.queries = list(queries)
    self.exclude_history = bool(exclude_history)
    self.ks = ks
    self.metric = metric
    self.max_requests = max_requests
    self.seed = int(seed)
    self.any_type = bool(any_type)

  def with_subsample(self, max_requests: int | None, seed: int) -> Validator:
    """The same protocol over at most `max_requests` of all the targets (None: all), drawn
    with `seed` (replacing this validator's subsample)."""
    return Validator(self.catalog, self.targets, self.queries,
                     exclude_history=self.exclude_history, ks=self.ks, metric=self.metric,
                     max_requests=max_requests, seed=seed, any_type=self.any_type)

  def recommend(self, rank_fn: RankRecommend) -> dict[str, float]:
    """The figures of `rank_fn` on the recommendation requests (raises when there are none)."""
    return recommend_metrics(self.catalog, self.targets, rank_fn, ks=self.ks,
                             exclude_history=self.exclude_history,
                             max_requests=self.max_requests, seed=self.seed,
                             any_type=self.any_type)

  def search(self, rank_fn: RankSearch) -> dict[str, float]:
    """The figures of `rank_fn` on the search requests (raises when there are none)."""
    return search_metrics(self.catalog, self.queries, rank_fn, ks=self.ks)

  def __repr__(self) -> str:
    args: dict[str, Any] = dict(targets=len(self.targets), queries=len(self.queries),
                                exclude_history=self.exclude_history, ks=self.ks,
                                metric=self.metric, max_requests=self.max_requests,
                                seed=self.seed)
    return 'Validator(' + ', '.join(f'{k}={v}' for k, v in args.items()) + ')'
