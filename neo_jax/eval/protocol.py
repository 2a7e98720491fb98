"""The split protocol: which data each stage of an experiment may read, the evaluation requests
every system answers, and the figures computed from their rankings.

Every read of evaluation data goes through a `SplitGuard` that logs which stage read which
split (written to `split_access.json`) and refuses any test read before `open_test()`, which
the experiment calls once, after every model is trained and every baseline tuned. The guard
does not hold test examples before that: it holds a function that builds them, called by
`open_test()`. In a job of several JAX processes every process's guard logs and refuses the
same reads in memory, and process 0 alone writes the log (`catalog.multihost.is_writer`).

One task's requests (`Requests`) are shared by every system, under one protocol:
  * every system ranks the whole catalog;
  * the entity type a request asks for is what a system may know at request time: the type
    of the last item of the user's history (recommendation), the type the query names, else
    any type (search) -- never the target's type;
  * the primary figures exclude the user's whole history from every system's ranking (the
    data has no repeated interactions); `exclude=False` gives the figures with nothing
    excluded (comparable with RecBole's sequential models). Search excludes nothing.
NEO ranks the requests' prompts, the baselines their histories (recommendation) or query texts
(search); `task_figures` turns a ranking into the report's figures and `per_request` into the
per-request values that the paired bootstrap (`eval.stats`) resamples.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from neo_jax.catalog import atomic
from neo_jax.catalog import multihost
from neo_jax.catalog.splits import Split, Target
from neo_jax.catalog.types import Catalog
from neo_jax.decode.ranker import NEORanker
from neo_jax.eval import metrics
from neo_jax.tasks import builders
from neo_jax.tasks.types import Example

# Which split each examples key belongs to.
SPLIT_OF = {'grounding': 'train', 'capability': 'train', 'rec_valid': 'valid',
            'search_valid': 'valid', 'summary_valid': 'valid', 'rec_test': 'test',
            'explain_test': 'test', 'search_test': 'test', 'summary_test': 'test'}
TASKS = ('recommend', 'search')


class TestSplitAccessError(RuntimeError):
  """A stage asked for test data before the final evaluation."""


def subsample(examples: Sequence[Any], n: int, seed: int) -> list[Any]:
  """At most `n` of `examples` (all when n <= 0), a fixed random subset in their order."""
  if n <= 0 or len(examples) <= n:
    return list(examples)
  idx = np.sort(np.random.default_rng(seed).choice(len(examples), n, replace=False))
  return [examples[i] for i in idx]


class SplitGuard:
  """The only way an experiment reads evaluation data; logs every read by stage and split.

  The log (a list of {'stage', 'split', 'what', 'order'}) is rewritten to `path` after every
  read, so that a test can check which split each stage read and that no test read happened
  before `open_test()`. In a multi-process job only process 0 writes it; every process keeps
  the same log in `reads`.
  """

  def __init__(self, examples: dict[str, list[Example]], split: Split, path: str | None,
               test_examples: Callable[[], dict[str, list[Example]]] | None = None):
    """examples: the training and validation examples (test keys are refused: they are built
    by `test_examples()` when `open_test()` is called); split: the whole split."""
    unknown = sorted(set(examples) - set(SPLIT_OF))
    if unknown:
      raise ValueError(f'examples keys of unknown split: {unknown}; known: {sorted(SPLIT_OF)}')
    early = sorted(k for k in examples if SPLIT_OF[k] == 'test')
    if early:
      raise ValueError(f'test examples {early} given before the test split is opened; pass '
                       'a function that builds them (test_examples=)')
    self._examples = dict(examples)
    self._build_test = test_examples
    self._split = split
    self.path = path
    self.reads: list[dict[str, Any]] = []
    self.test_open = False

  def _read(self, part: str, what: str, stage: str) -> None:
    if part == 'test' and not self.test_open:
      raise TestSplitAccessError(f'stage {stage!r} read test data ({what}) before the final '
                                 'evaluation')
    self.reads.append({'stage': stage, 'split': part, 'what': what, 'order': len(self.reads)})
    # A reader sees the previous log or this one, never half of one; one writer per job.
    if self.path and multihost.is_writer():
      atomic.write_json(self.path, {'test_opened_at': self._opened_at(), 'reads': self.reads},
                        indent=1)

  def _opened_at(self) -> int | None:
    for r in self.reads:
      if r['what'] == 'open_test':
        return r['order']
    return None

  def examples(self, key: str, stage: str) -> list[Example]:
    if key not in SPLIT_OF:
      raise KeyError(f'no examples {key!r}; known: {sorted(SPLIT_OF)}')
    self._read(SPLIT_OF[key], key, stage)  # raises for test data before open_test()
    if key not in self._examples:
      raise KeyError(f'no examples {key!r}; have {sorted(self._examples)}')
    return self._examples[key]

  def targets(self, part: str, stage: str) -> list[Target]:
    """The split's valid or test targets (user, history, target)."""
    if part not in ('valid', 'test'):
      raise ValueError(f"targets of 'valid' or 'test', got {part!r}")
    self._read(part, f'{part}_targets', stage)
    return getattr(self._split, part)

  def fit_view(self, stage: str) -> Split:
    """The split without its test targets: what baselines are fitted and tuned on."""
    self._read('train', 'split_without_test', stage)
    return dataclasses.replace(self._split, test=[])

  def open_test(self) -> None:
    """Opens the test split (once) and builds its examples."""
    if self.test_open:
      raise RuntimeError('the test split is opened once')
    self.test_open = True
    self._read('test', 'open_test', 'final')
    if self._build_test is not None:
      built = self._build_test()
      bad = sorted(k for k in built if SPLIT_OF.get(k) != 'test')
      if bad:
        raise ValueError(f'the test example builder returned non-test keys {bad}')
      self._examples.update(built)


@dataclasses.dataclass
class Requests:
  """One task's evaluation requests, shared by every system. `types` are the entity types the
  requests ask for (request-time knowledge, see the module docstring; None: any type)."""

  task: str  # 'recommend' or 'search'
  examples: list[Example]
  relevant: list[list[int]]
  types: list[str | None]
  histories: list[np.ndarray] | None = None  # recommend: each user's whole history
  queries: list[str] | None = None  # search: the query text

  @property
  def prompts(self) -> list[str]:
    return [e.prompt for e in self.examples]

  def excluded(self, exclude: bool) -> list[np.ndarray] | None:
    """What each request's ranking must leave out: the user's whole history for
    recommendation when `exclude`, else nothing."""
    return self.histories if exclude and self.task == 'recommend' else None


def make_requests(guard: SplitGuard, part: str, task: str, n: int, seed: int, stage: str
                  ) -> Requests:
  """At most `n` (all for 0) requests of `task` on split `part` ('valid' or 'test')."""
  key = {'recommend': 'rec', 'search': 'search'}[task] + f'_{part}'
  exs = subsample(guard.examples(key, stage), n, seed)
  req = Requests(task, exs, [list(e.target_items) for e in exs], [e.target_type for e in exs])
  if task == 'recommend':
    by_user = {t.user_id: t.history for t in guard.targets(part, stage)}
    req.histories = [by_user[e.user_id] for e in exs]
  else:
    req.queries = [builders.query_of(e) for e in exs]
  return req


def rank_neo(ranker: NEORanker, req: Requests, num_beams: int, catalog: Catalog,
             reachable: np.ndarray, constrained: bool = True, exclude: bool = True
             ) -> tuple[np.ndarray, int, int]:
  """(items (B, num_beams), SIDs checked, valid): every returned item must be a reachable
  catalog item of the requested type (and, with `exclude`, not in the user's history),
  counted, never assumed. Constrained, -1 means fewer admissible items than beams (not
  counted) and the history is excluded inside the search (`NEORanker.rank(excluded=)`);
  unconstrained, -1 is a beam whose tokens name no live item: counted, as invalid, and the
  history items it names are dropped from its ranking afterwards (counted as valid: the model
  may name them, the protocol leaves them out)."""
  excluded = req.excluded(exclude)
  if constrained:
    items, _ = ranker.rank(req.prompts, req.types, num_beams=num_beams, excluded=excluded)
  else:
    items, _, _ = ranker.rank(req.prompts, req.types, num_beams=num_beams, constrained=False)
  checked = valid = 0
  for b, (row, t) in enumerate(zip(items, req.types)):
    banned = set() if excluded is None or not constrained else set(excluded[b].tolist())
    for item in (row[row >= 0] if constrained else row):
      checked += 1
      valid += bool(item >= 0 and reachable[item] and int(item) not in banned and
                    (t is None or catalog.type_of(int(item)) == t))
  if not constrained and excluded is not None:
    items = _drop(items, excluded)
  return items, checked, valid


def _drop(items_BxK: np.ndarray, excluded: Sequence[np.ndarray]) -> np.ndarray:
  """Each row without the items of its exclusion list (and without invalid -1 beams), closed
  up to the left, -1 padded."""
  out = np.full(items_BxK.shape, -1, np.int64)
  for b, (row, ex) in enumerate(zip(np.asarray(items_BxK), excluded)):
    keep = row[(row >= 0) & ~np.isin(row, np.asarray(ex))]
    _, first = np.unique(keep, return_index=True)
    keep = keep[np.sort(first)]
    out[b, :keep.size] = keep
  return out


def metric_prefix(system: str, task: str, exclude: bool = True, primary: bool = True) -> str:
  """Result keys: `<system>/<metric>` for recommendation under the primary protocol (`exclude`
  == `primary`: the history excluded, unless the data repeats items), beside it
  `<system>/nothing_excluded/<metric>` or `<system>/history_excluded/<metric>`;
  `<system>/search_<metric>` for search."""
  if task != 'recommend':
    return f'{system}/search_'
  if exclude == primary:
    return f'{system}/'
  return f'{system}/nothing_excluded/' if not exclude else f'{system}/history_excluded/'


def per_request(ranked_BxK: np.ndarray, req: Requests, ks: Sequence[int]
                ) -> dict[str, np.ndarray]:
  """(B,) values of every metric for each request (what the paired bootstrap resamples)."""
  return metrics.per_request_metrics(np.asarray(ranked_BxK), req.relevant, tuple(ks))


def task_figures(prefix: str, ranked_BxK: np.ndarray, req: Requests, catalog: Catalog,
                 ks: Sequence[int]) -> dict[str, float]:
  """`<prefix><metric>` (hr@k, recall@k, ndcg@k, mrr over full rankings) over all requests,
  and per target type / cross-type subsets (target's type != last history item's type) for
  recommendation when the catalog has several types."""
  ranked = np.asarray(ranked_BxK)
  out = {f'{prefix}{m}': v for m, v in
         metrics.ranking_metrics(ranked, req.relevant, tuple(ks)).items()}
  if req.task == 'recommend' and len(catalog.type_names) > 1:
    types = np.array([catalog.type_of(int(r[0])) for r in req.relevant])
    last = np.array([catalog.type_of(int(h[-1])) if len(h) else '' for h in req.histories])
    subsets = {f'type_{t}': types == t for t in catalog.type_names}
    subsets['cross_type'] = types != last
    for name, sel in subsets.items():
      if sel.any():
        sub = metrics.ranking_metrics(ranked[sel], [r for r, s in zip(req.relevant, sel) if s],
                                      (10,))
        out[f'{prefix}{name}/hr@10'] = sub['hr@10']
        out[f'{prefix}{name}/ndcg@10'] = sub['ndcg@10']
        out[f'{prefix}{name}/requests'] = int(sel.sum())
  return out


def rank_baseline(baseline: Any, req: Requests, k: int, exclude: bool = True) -> np.ndarray:
  """(B, k) rows of a fitted baseline (`neo_jax.baselines`) for the requests: its history
  ranking for recommendation (the history excluded with `exclude`), its query ranking for
  search."""
  if req.task == 'recommend':
    ranked = baseline.rank_recommend(req.histories, req.types, k,
                                     exclude=req.excluded(exclude))
  else:
    ranked = baseline.rank_search(req.queries, req.types, k)
  ranked = np.asarray(ranked)
  if ranked.shape[0] != len(req.examples):
    raise ValueError(f'{type(baseline).__name__} returned {ranked.shape[0]} rankings for '
                     f'{len(req.examples)} requests')
  return ranked
