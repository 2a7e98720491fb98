"""The split protocol: which data each stage of an experiment may read, the evaluation requests
every system answers, and the figures computed from their rankings.

Every read of evaluation data goes through a `SplitGuard` that logs which stage read which
split (written to `split_access.json`) and refuses any test read before `open_test()`, which
the experiment calls once, after every model is trained and every baseline tuned.

One task's requests (`Requests`) are shared by every system: NEO ranks their prompts, the
baselines their histories (recommendation) or query texts (search); `task_figures` turns a
ranking into the figures of the report (full ranking over the catalog, nothing excluded).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import numpy as np

from neo_jax.catalog.splits import Split, Target
from neo_jax.catalog.types import Catalog
from neo_jax.decode.ranker import NEORanker
from neo_jax.eval import metrics
from neo_jax.tasks import builders
from neo_jax.tasks.types import Example

# Which split each examples key belongs to.
SPLIT_OF = {'grounding': 'train', 'capability': 'train', 'rec_valid': 'valid',
            'search_valid': 'valid', 'rec_test': 'test', 'explain_test': 'test',
            'search_test': 'test', 'summary_test': 'test'}
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
  before `open_test()`.
  """

  def __init__(self, examples: dict[str, list[Example]], split: Split, path: str | None):
    unknown = sorted(set(examples) - set(SPLIT_OF))
    if unknown:
      raise ValueError(f'examples keys of unknown split: {unknown}; known: {sorted(SPLIT_OF)}')
    self._examples = examples
    self._split = split
    self.path = path
    self.reads: list[dict[str, Any]] = []
    self.test_open = False

  def _read(self, part: str, what: str, stage: str) -> None:
    if part == 'test' and not self.test_open:
      raise TestSplitAccessError(f'stage {stage!r} read test data ({what}) before the final '
                                 'evaluation')
    self.reads.append({'stage': stage, 'split': part, 'what': what, 'order': len(self.reads)})
    if self.path:
      tmp = self.path + '.tmp'
      with open(tmp, 'w') as f:
        json.dump({'test_opened_at': self._opened_at(), 'reads': self.reads}, f, indent=1)
      os.replace(tmp, self.path)

  def _opened_at(self) -> int | None:
    for r in self.reads:
      if r['what'] == 'open_test':
        return r['order']
    return None

  def examples(self, key: str, stage: str) -> list[Example]:
    if key not in self._examples:
      raise KeyError(f'no examples {key!r}; have {sorted(self._examples)}')
    self._read(SPLIT_OF[key], key, stage)
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
    self.test_open = True
    self._read('test', 'open_test', 'final')


@dataclasses.dataclass
class Requests:
  """One task's evaluation requests, shared by every system."""

  task: str  # 'recommend' or 'search'
  examples: list[Example]
  relevant: list[list[int]]
  types: list[str | None]
  histories: list[np.ndarray] | None = None  # recommend: each user's whole history
  queries: list[str] | None = None  # search: the query text

  @property
  def prompts(self) -> list[str]:
    return [e.prompt for e in self.examples]


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
             reachable: np.ndarray, constrained: bool = True) -> tuple[np.ndarray, int, int]:
  """(items (B, num_beams), SIDs checked, valid): every returned item must be a reachable
  catalog item of the requested type, counted, never assumed. Constrained, -1 means fewer
  admissible items than beams (not counted); unconstrained, -1 is a beam whose tokens name no
  live item: counted, as invalid."""
  if constrained:
    items, _ = ranker.rank(req.prompts, req.types, num_beams=num_beams)
  else:
    items, _, _ = ranker.rank(req.prompts, req.types, num_beams=num_beams, constrained=False)
  checked = valid = 0
  for row, t in zip(items, req.types):
    for item in (row[row >= 0] if constrained else row):
      checked += 1
      valid += bool(item >= 0 and reachable[item] and
                    (t is None or catalog.type_of(int(item)) == t))
  return items, checked, valid


def metric_prefix(system: str, task: str) -> str:
  """Result keys: `<system>/<metric>` for recommendation, `<system>/search_<metric>`."""
  return f'{system}/' if task == 'recommend' else f'{system}/search_'


def task_figures(prefix: str, ranked_BxK: np.ndarray, req: Requests, catalog: Catalog,
                 ks: Sequence[int]) -> dict[str, float]:
  """`<prefix><metric>` (hr@k, recall@k, ndcg@k, mrr over full rankings) over all requests,
  and per target type / cross-type subsets for recommendation when the catalog has several
  types."""
  ranked = np.asarray(ranked_BxK)
  out = {f'{prefix}{m}': v for m, v in
         metrics.ranking_metrics(ranked, req.relevant, tuple(ks)).items()}
  if req.task == 'recommend' and len(catalog.type_names) > 1:
    types = np.array([str(t) for t in req.types])
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


def rank_baseline(baseline: Any, req: Requests, k: int) -> np.ndarray:
  """(B, k) rows of a fitted baseline (`neo_jax.baselines`) for the requests: its history
  ranking for recommendation, its query ranking for search."""
  if req.task == 'recommend':
    ranked = baseline.rank_recommend(req.histories, req.types, k)
  else:
    ranked = baseline.rank_search(req.queries, req.types, k)
  ranked = np.asarray(ranked)
  if ranked.shape[0] != len(req.examples):
    raise ValueError(f'{type(baseline).__name__} returned {ranked.shape[0]} rankings for '
                     f'{len(req.examples)} requests')
  return ranked
