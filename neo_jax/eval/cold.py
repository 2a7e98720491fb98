"""Cold-start evaluation: items no model was trained on, added after training the way a fresh
item is (`sid.quantiser.assign_sids`), then searched for and recommended.

`hold_out(dataset, fraction, seed)` picks a fraction of each entity type's items (at least
one warm item is kept per type) and cuts the data in two:

  warm   the dataset every model is trained on: the catalog without the cold items, no event
         on a cold item, no search query with a cold relevant item; users unchanged. Its rows
         are the original rows in order, without the cold ones.
  full   the same data with the catalog reordered (warm rows first, then the cold ones), the
         numbering of the warm catalog once the cold items are appended to it: what the
         requests and the extended SID map use.

`cold_requests(...)` builds what is measured, in the full numbering:
  search        the data's search queries with a cold relevant item (relevant: their cold
                items), asking for the type of those items;
  title_search  each cold item's title as a query (relevant: the item);
  recommend     the test targets of the full data's split that are cold items (history: the
                user's events before the target, every item known by then, cold ones
                included), asking for the type of the last history item, history excluded.
                (Ties in time are broken by catalog row, as every split is: the full data's
                rows are reordered, so a few tied users may get another target than in the
                original numbering.)

`extend_sid_map(...)` gives the cold items SIDs through the warm map's frozen quantiser;
`rank_neo` / `rank_baseline` rank the requests; `figures` turns rankings into the flat
`cold/<system>/<task>/<metric>` keys of `result.json`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from neo_jax.catalog.splits import make_split
from neo_jax.catalog.types import Catalog, Dataset, Interactions
from neo_jax.decode.ranker import NEORanker
from neo_jax.eval import metrics
from neo_jax.sid import quantiser as qlib
from neo_jax.sid.types import SIDMap
from neo_jax.tasks import prompts
from neo_jax.tokenizer.cut import PromptTooLongError
from neo_jax.tokenizer.sid_vocab import SIDVocab

TASKS = ('search', 'title_search', 'recommend')


@dataclasses.dataclass
class ColdSplit:
  """The data cut by `hold_out` (module docstring).

  Attributes:
    warm: what models are trained on.
    full: everything, catalog rows reordered: warm rows 0..W-1, then the cold ones.
    order: (N,) original row of each full row.
    num_warm: W.
    facts: counts (cold items per type, events and queries held out).
  """
  warm: Dataset
  full: Dataset
  order: np.ndarray
  num_warm: int
  facts: dict[str, Any]

  @property
  def cold_rows(self) -> np.ndarray:
    """Full rows of the cold items (W..N-1)."""
    return np.arange(self.num_warm, len(self.full.catalog))


@dataclasses.dataclass
class ColdRequests:
  """One task's requests: prompts' bodies, target types, relevant and excluded rows."""
  task: str
  texts: list[str]  # search: the query; recommend: '' (the history is `history`)
  types: list[str]
  relevant: list[list[int]]
  history: list[np.ndarray]

  def __len__(self) -> int:
    return len(self.relevant)


def choose_cold(catalog: Catalog, fraction: float, seed: int) -> np.ndarray:
  """Original rows of the cold items: round(fraction * n_t) per type t, at most n_t - 1 (a
  type keeps a warm item to be quantised by), drawn with a fixed generator; sorted."""
  if not 0.0 < fraction < 1.0:
    raise ValueError(f'the cold fraction must lie in (0, 1), got {fraction}')
  rng = np.random.default_rng([int(seed), 0xC01D])
  picked = []
  for t in catalog.type_names:
    rows = catalog.items_of_type(t)
    k = min(int(round(fraction * rows.size)), rows.size - 1)
    if k > 0:
      picked.append(rng.choice(rows, k, replace=False))
  return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def _take(catalog: Catalog, rows: np.ndarray) -> Catalog:
  rows = [int(r) for r in rows]
  return Catalog(ids=[catalog.ids[r] for r in rows], type_names=catalog.type_names,
                 type_index=catalog.type_index[rows].astype(np.int32),
                 titles=[catalog.titles[r] for r in rows],
                 descriptions=[catalog.descriptions[r] for r in rows],
                 tags=[catalog.tags[r] for r in rows],
                 attributes=[catalog.attributes[r] for r in rows],
                 popularity=catalog.popularity[rows].astype(np.float32))


def _remap_events(inter: Interactions, new_of_old: np.ndarray, keep: np.ndarray
                  ) -> Interactions:
  """The events `keep` (bool per event), items renumbered, users renumbered first-seen."""
  users = inter.user_index[keep]
  names, first = np.unique(users, return_index=True)
  order = names[np.argsort(first)]
  user_new = np.full(len(inter.user_names), -1, np.int64)
  user_new[order] = np.arange(order.size)
  idx = np.flatnonzero(keep)
  return Interactions(user_names=[inter.user_names[u] for u in order],
                      user_index=user_new[users].astype(np.int32),
                      item_index=new_of_old[inter.item_index[keep]].astype(np.int32),
                      timestamp=inter.timestamp[keep].copy(),
                      extra={k: [v[i] for i in idx] for k, v in inter.extra.items()})


def hold_out(dataset: Dataset, fraction: float, seed: int) -> ColdSplit:
  """The warm and full data of a cold-start evaluation (module docstring)."""
  cat = dataset.catalog
  n = len(cat)
  cold = choose_cold(cat, fraction, seed)
  is_cold = np.zeros(n, bool)
  is_cold[cold] = True
  order = np.r_[np.flatnonzero(~is_cold), cold].astype(np.int64)
  new_of_old = np.empty(n, np.int64)
  new_of_old[order] = np.arange(n)
  num_warm = n - cold.size
  inter = dataset.interactions
  warm_events = ~is_cold[inter.item_index]
  everything = np.ones(len(inter), bool)
  warm_queries = [q for q in dataset.queries if not is_cold[list(q.item_index)].any()]
  full_queries = [dataclasses.replace(q, item_index=tuple(int(new_of_old[i])
                                                          for i in q.item_index))
                  for q in dataset.queries]
  full = Dataset(name=dataset.name, catalog=_take(cat, order),
                 interactions=_remap_events(inter, new_of_old, everything),
                 queries=full_queries, users=dict(dataset.users), skipped=dict(dataset.skipped))
  warm = Dataset(name=dataset.name, catalog=_take(cat, order[:num_warm]),
                 interactions=_remap_events(inter, new_of_old, warm_events),
                 queries=[q for q in full_queries if max(q.item_index) < num_warm],
                 users=dict(dataset.users), skipped=dict(dataset.skipped))
  facts = {'cold/items': int(cold.size), 'cold/fraction': float(fraction),
           'cold/events_held_out': int((~warm_events).sum()),
           'cold/queries_held_out': len(dataset.queries) - len(warm_queries)}
  facts.update({f'cold/items/{t}': int(np.sum(cat.type_index[cold] == ti))
                for ti, t in enumerate(cat.type_names)})
  return ColdSplit(warm, full, order, num_warm, facts)


def cold_requests(split: ColdSplit, split_method: str) -> dict[str, ColdRequests]:
  """The search, title_search and recommend requests about cold items (module docstring)."""
  full, w = split.full, split.num_warm
  cat = full.catalog
  out = {}
  qs = [q for q in full.queries if any(i >= w for i in q.item_index)]
  rel = [sorted(i for i in q.item_index if i >= w) for q in qs]
  out['search'] = ColdRequests('search', [q.text for q in qs], [cat.type_of(r[0]) for r in rel],
                               rel, [np.zeros(0, np.int64)] * len(qs))
  cold = split.cold_rows.tolist()
  out['title_search'] = ColdRequests('title_search', [cat.titles[r] for r in cold],
                                     [cat.type_of(r) for r in cold], [[r] for r in cold],
                                     [np.zeros(0, np.int64)] * len(cold))
  fsplit, _ = make_split(full.interactions, split_method)
  targets = [t for t in fsplit.test if t.target >= w and len(t.history)]
  out['recommend'] = ColdRequests(
      'recommend', [''] * len(targets), [cat.type_of(int(t.history[-1])) for t in targets],
      [[int(t.target)] for t in targets], [np.asarray(t.history, np.int64) for t in targets])
  return out


def in_original_rows(req: ColdRequests, order: np.ndarray) -> ColdRequests:
  """The requests with rows in the original catalog's numbering (`ColdSplit.order`): what a
  model trained on the whole catalog (the upper bound) is asked."""
  order = np.asarray(order, np.int64)
  return dataclasses.replace(req, relevant=[[int(order[r]) for r in rel] for rel in req.relevant],
                             history=[order[h] for h in req.history])


def extend_sid_map(warm_map: SIDMap, quantiser: qlib.FrozenQuantiser, split: ColdSplit
                   ) -> tuple[SIDMap, dict[str, int]]:
  """The warm map with the cold items appended (full rows W..N-1), their SIDs from their text
  through the warm map's frozen quantiser, the path every new item takes."""
  cat = split.full.catalog
  cold = split.cold_rows.tolist()
  types = [cat.type_of(r) for r in cold]
  codes, facts = qlib.assign_sids(warm_map, quantiser, ids=[cat.ids[r] for r in cold],
                                  texts=[cat.text(r) for r in cold], types=types)
  return qlib.extend_sid_map(warm_map, codes, types), facts


def neo_prompts(req: ColdRequests, sid_map: SIDMap, sid_vocab: SIDVocab, history_len: int
                ) -> list[str]:
  """The training templates' first phrasing of each request (as serving asks)."""
  if req.task == 'recommend':
    return [prompts.render_prompt('recommend', t, 'ids', 0, prompts.render_history(
        sid_map, sid_vocab, h[-history_len:])) for t, h in zip(req.types, req.history)]
  return [prompts.render_prompt('search', t, 'ids', 0, prompts.plain_text(q))
          for t, q in zip(req.types, req.texts)]


def subset(req: ColdRequests, keep: np.ndarray) -> ColdRequests:
  """The requests where `keep` (bool per request) is True."""
  idx = np.flatnonzero(keep)
  return dataclasses.replace(req, texts=[req.texts[i] for i in idx],
                             types=[req.types[i] for i in idx],
                             relevant=[req.relevant[i] for i in idx],
                             history=[req.history[i] for i in idx])


def fits(ranker: NEORanker, req: ColdRequests, sid_map: SIDMap, sid_vocab: SIDVocab,
         history_len: int) -> np.ndarray:
  """(B,) bool: whether each request's NEO prompt fits the ranker's prompt width (a prompt
  whose instruction and query alone are too long cannot be asked; the caller drops those
  requests for every system and counts them)."""
  ok = np.ones(len(req), bool)
  for i, p in enumerate(neo_prompts(req, sid_map, sid_vocab, history_len)):
    try:
      ranker.prompt_tokens(p)
    except PromptTooLongError:
      ok[i] = False
  return ok


def rank_neo(ranker: NEORanker, req: ColdRequests, sid_map: SIDMap, sid_vocab: SIDVocab,
             history_len: int, k: int) -> np.ndarray:
  """(B, k) rows NEO ranks for the requests (trie-constrained beam search over the extended
  catalog, history excluded for recommendation)."""
  if not len(req):
    return np.zeros((0, k), np.int32)
  excluded = [h.tolist() for h in req.history] if req.task == 'recommend' else None
  items, _ = ranker.rank(neo_prompts(req, sid_map, sid_vocab, history_len), req.types, k,
                         excluded=excluded)
  return np.asarray(items)[:, :k]


def rank_baseline(baseline: Any, req: ColdRequests, k: int) -> np.ndarray:
  """(B, k) rows a fitted baseline (`baselines.base.Baseline`) ranks for the requests."""
  if not len(req):
    return np.zeros((0, k), np.int32)
  if req.task == 'recommend':
    return baseline.rank_recommend(req.history, req.types, k,
                                   exclude=[h.tolist() for h in req.history])
  return baseline.rank_search(req.texts, req.types, k)


def figures(system: str, req: ColdRequests, ranked_BxK: np.ndarray,
            ks: Sequence[int] = (10,)) -> dict[str, float | int | None]:
  """`cold/<system>/<task>/{hr@k, ndcg@k}` and `cold/<task>/requests` (None when there is no
  request: nothing to measure)."""
  out: dict[str, float | int | None] = {f'cold/{req.task}/requests': len(req)}
  if not len(req):
    for k in ks:
      out[f'cold/{system}/{req.task}/hr@{k}'] = None
      out[f'cold/{system}/{req.task}/ndcg@{k}'] = None
    return out
  exclude = [h.tolist() for h in req.history] if req.task == 'recommend' else None
  m = metrics.ranking_metrics(ranked_BxK, req.relevant, ks, exclude=exclude)
  for k in ks:
    out[f'cold/{system}/{req.task}/hr@{k}'] = m[f'hr@{k}']
    out[f'cold/{system}/{req.task}/ndcg@{k}'] = m[f'ndcg@{k}']
  return out


__all__ = ['ColdRequests', 'ColdSplit', 'TASKS', 'choose_cold', 'cold_requests',
           'extend_sid_map', 'figures', 'fits', 'hold_out', 'in_original_rows',
           'neo_prompts', 'rank_baseline', 'subset',
           'rank_neo']
