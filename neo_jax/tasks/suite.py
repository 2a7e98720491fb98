"""Every task's examples for one dataset: what a training pipeline feeds its two stages and
what validation reads (`build_task_examples`), and, only once the final evaluation opens the
test split, the test examples (`build_test_examples`).

What is held out, and where it is decided:
- search queries: `split_search_queries`, called before anything is fitted (the tokenizer sees
  the training queries only). The dataset's own queries (`Dataset.queries`) or, when it has
  none, queries generated from item text (`queries.generate_queries`, whose held-out
  templates appear only in evaluation), split by relevant item
  (`builders.split_queries_by_item`): no item relevant to a valid or test query is relevant to
  a training query.
- user summaries: `heldout_summary_users`, a seeded fraction of users whose summary is never
  a training target (`catalog.splits.fit_view` empties it); `summary_test` asks for theirs.
- recommendation: the split's validation and test targets; `build_task_examples` takes a
  split without test targets and the fit view of the dataset.

Query -> SID grounding uses the training queries only. User summaries are the dataset's own
where users have one, else written from the user's profile (`builders.user_profile_examples`).
Recsplanation is next-item recommendation in the mixed format (the SID span, then a rationale
citing facts shared with the history). Evaluation prompts carry only what a request knows:
a recommendation prompt's `Type:` is the type of the last history item shown, a search
prompt's the type its query names (`prompts.named_type`) or `any`.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, Sequence

import numpy as np

from neo_jax.catalog.splits import Split, Target
from neo_jax.catalog.types import Catalog, Dataset, Query, User
from neo_jax.sid.types import SIDMap
from neo_jax.tasks import builders
from neo_jax.tasks.queries import GeneratedQueries, generate_queries
from neo_jax.tasks.types import Example
from neo_jax.tokenizer.sid_vocab import SIDVocab


@dataclasses.dataclass
class QuerySplit:
  """Search queries by part (`split_search_queries`); `skipped` counts what was left out."""

  train: list[Query]
  valid: list[Query]
  test: list[Query]
  source: str  # 'data' (Dataset.queries) or 'generated'
  generated: GeneratedQueries | None
  skipped: dict[str, int]


@dataclasses.dataclass(frozen=True)
class HeldOut:
  """What `build_test_examples` needs beyond the test targets: kept aside, never built into
  an example before the test split is opened."""

  test_queries: list[Query]
  summary_users: frozenset[str]


@dataclasses.dataclass
class TaskExamples:
  """Examples by use; `eval` keys: rec_valid, search_valid (validation only; the test
  examples come from `build_test_examples(heldout, ...)`)."""

  grounding: list[Example]
  capability: list[Example]
  eval: dict[str, list[Example]]
  query_source: str  # 'data' or 'generated'
  queries: dict[str, list[Query]]  # 'train', 'valid'
  generated: GeneratedQueries | None
  skipped: dict[str, int]
  heldout: HeldOut


def split_search_queries(ds: Dataset, *, valid_fraction: float, test_fraction: float,
                         queries_per_item: int = 1, heldout_queries_per_item: int = 1,
                         max_relevant: int = 20, extra_query_draws: int = 0,
                         seed: int = 0) -> QuerySplit:
  """The search queries of `ds` split train / valid / test by relevant item.

  The dataset's own queries when it has any (`builders.split_queries_by_item`), else queries
  generated from item text (`queries.generate_queries` with `queries_per_item`,
  `heldout_queries_per_item` and `max_relevant`, which splits them by item too, and with
  `extra_query_draws` that many more training-template draws per item, for training only).
  Call it before fitting anything: the tokenizer and every fitted component see `train` only.
  """
  if ds.queries:
    if extra_query_draws:
      raise ValueError(f'extra_query_draws={extra_query_draws} draws more generated queries, '
                       f'but the dataset has {len(ds.queries)} queries of its own and none '
                       'are generated: set it to 0')
    train, valid, test, skipped = builders.split_queries_by_item(
        ds.queries, valid_fraction, test_fraction, seed)
    return QuerySplit(train, valid, test, 'data', None, dict(skipped))
  generated = generate_queries(
      ds.catalog, queries_per_item=queries_per_item, heldout_per_item=heldout_queries_per_item,
      max_relevant=max_relevant, valid_fraction=valid_fraction, test_fraction=test_fraction,
      extra_train_draws=extra_query_draws, seed=seed)
  return QuerySplit(generated.train, generated.valid, generated.test, 'generated', generated,
                    dict(generated.skipped))


def heldout_summary_users(user_ids: Iterable[str], fraction: float,
                          seed: int) -> frozenset[str]:
  """A seeded random `fraction` of the distinct `user_ids` (at least one when `fraction` > 0
  and there are users) whose summary is never a training target."""
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f'fraction must be in [0, 1], got {fraction}')
  ids = sorted(set(user_ids))
  if fraction == 0 or not ids:
    return frozenset()
  k = min(len(ids), max(1, round(fraction * len(ids))))
  pick = np.random.default_rng(seed).permutation(len(ids))[:k]
  return frozenset(ids[int(n)] for n in pick)


def build_task_examples(ds: Dataset, split: Split, sid_map: SIDMap, vocab: SIDVocab, *,
                        queries: QuerySplit, summary_heldout: frozenset[str] = frozenset(),
                        history_len: int = 10, train_targets_per_user: int | None = 10,
                        mixed_fraction: float = 0.3, max_relevant: int = 20,
                        query_grounding: bool = True, history_window: int = 0,
                        history_context: int = 3, grounding_text: str = 'title',
                        title_repeats: int = 1, seed: int = 0) -> TaskExamples:
  """All training and validation examples (see the module docstring).

  Args:
    ds: the fit view of the dataset (`catalog.splits.fit_view`): training events, training
      queries, held-out summaries emptied.
    split: the split without its test targets (`catalog.splits.without_test`).
    queries: `split_search_queries`' parts; `train` trains, `valid` validates, `test` is only
      kept in `TaskExamples.heldout`.
    summary_heldout: users whose summary is never a training target
      (`heldout_summary_users`).
    max_relevant: at most this many relevant items per training search completion
      (evaluation examples keep every relevant item).
    grounding_text: 'title', 'full' or 'full_lower' (`builders.text_to_sid_examples`).
    title_repeats: the grounding stage holds each item's bare title -> SID example (and its
      lower case, with 'full_lower') this many times in all, each copy phrased by its own
      prompt draw: drills for the title -> SID memory search needs, at a fraction of a
      whole grounding pass. The capability stage keeps the grounding examples once.

  Grounding = catalog metadata of every item (SID -> text, text -> SID, SID -> type) and,
  with `query_grounding`, training query -> SID. Capability = recommendation (ids, and mixed
  with probability `mixed_fraction`), history continuation when `history_window` > 0 (windows
  of that many training items, `builders.history_examples`), search on the training queries,
  user summaries of users not in `summary_heldout`, and the grounding examples again (so the
  second stage keeps them). Returns counts of everything left out in `skipped` (by builder
  and reason).

  Raises:
    ValueError: `split` holds test targets (test material must not reach example building).
  """
  if split.test:
    raise ValueError(f'the split holds {len(split.test)} test targets: build training and '
                     'validation examples from catalog.splits.without_test(split); test '
                     'examples come from build_test_examples once the test split is opened')
  skipped: dict = {}
  cat = ds.catalog
  if queries.generated is not None:
    skipped['generate_queries'] = dict(queries.generated.skipped)
  else:
    skipped['split_queries'] = dict(queries.skipped)
  grounding = (builders.sid_to_text_examples(cat, sid_map, vocab, text=grounding_text,
                                             seed=seed)
               + builders.text_to_sid_examples(cat, sid_map, vocab, text=grounding_text,
                                               seed=seed)
               + builders.sid_to_type_examples(cat, sid_map, vocab, seed=seed))
  if query_grounding:
    grounding += builders.query_grounding_examples(queries.train, cat, sid_map, vocab,
                                                   seed=seed,
                                                   skipped=_sub(skipped, 'query_grounding'))
  if title_repeats < 1:
    raise ValueError(f'title_repeats must be >= 1, got {title_repeats}')
  drills = [x for r in range(1, title_repeats)
            for x in builders.text_to_sid_examples(cat, sid_map, vocab, text=grounding_text,
                                                   seed=seed + r, bare=True)]
  rec_train = builders.recommend_examples(
      split, cat, sid_map, vocab, mode='train', history_len=history_len,
      max_targets_per_user=train_targets_per_user, mixed_fraction=mixed_fraction, seed=seed,
      skipped=_sub(skipped, 'recommend_train'))
  search_train = builders.search_examples(queries.train, cat, sid_map, vocab,
                                          max_items=max_relevant, seed=seed,
                                          skipped=_sub(skipped, 'search_train'))
  summary_seqs = {u: s for u, s in split.train.items() if u not in summary_heldout}
  held_users = len(split.train) - len(summary_seqs)
  if held_users:
    _sub(skipped, 'user_summary_train')['summary_heldout_users'] = held_users
  summaries = builders.user_profile_examples(summary_seqs, cat, sid_map, vocab, users=ds.users,
                                             history_len=history_len, seed=seed,
                                             skipped=_sub(skipped, 'user_summary_train'))
  history = (builders.history_examples(split, cat, sid_map, vocab, window=history_window,
                                       context=history_context, seed=seed,
                                       skipped=_sub(skipped, 'history'))
             if history_window > 0 else [])
  evals = {
      'rec_valid': builders.recommend_examples(
          split, cat, sid_map, vocab, mode='valid', history_len=history_len, seed=seed,
          skipped=_sub(skipped, 'rec_valid')),
      'search_valid': builders.search_examples(queries.valid, cat, sid_map, vocab, seed=seed,
                                               skipped=_sub(skipped, 'search_valid')),
  }
  return TaskExamples(grounding=grounding + drills,
                      capability=rec_train + history + search_train +
                      summaries + grounding, eval=evals, query_source=queries.source,
                      queries={'train': list(queries.train), 'valid': list(queries.valid)},
                      generated=queries.generated, skipped=_flatten(skipped),
                      heldout=HeldOut(list(queries.test), frozenset(summary_heldout)))


def build_test_examples(heldout: HeldOut, test_targets: Sequence[Target], catalog: Catalog,
                        users: Mapping[str, User], sid_map: SIDMap, vocab: SIDVocab, *,
                        history_len: int = 10, seed: int = 0,
                        skipped: dict[str, int] | None = None) -> dict[str, list[Example]]:
  """The test examples; call only once the final evaluation opens the test split.

  Keys: 'rec_test' (format ids) and 'explain_test' (mixed) over `test_targets`, prompts typed
  by the last history item; 'search_test' over `heldout.test_queries`; 'summary_test' for the
  users of `heldout.summary_users` that have a test target, history = that target's history,
  completion = the user's given summary in `users` (the full records, not the fit view) or
  else the one written from their profile (as `builders.user_profile_examples` writes it).
  `skipped`, if given, gets the counts of what was left out, by key and reason.
  """
  counts: dict = {}
  summary_histories = {tg.user_id: tg.history for tg in test_targets
                       if tg.user_id in heldout.summary_users}
  out = {
      'rec_test': builders.recommend_examples(
          list(test_targets), catalog, sid_map, vocab, mode='eval', history_len=history_len,
          seed=seed, skipped=_sub(counts, 'rec_test')),
      'explain_test': builders.recommend_examples(
          list(test_targets), catalog, sid_map, vocab, mode='eval', output_format='mixed',
          history_len=history_len, seed=seed),
      'search_test': builders.search_examples(heldout.test_queries, catalog, sid_map, vocab,
                                              seed=seed, skipped=_sub(counts, 'search_test')),
      'summary_test': builders.user_profile_examples(
          summary_histories, catalog, sid_map, vocab, users=users, history_len=history_len,
          seed=seed, skipped=_sub(counts, 'summary_test')),
  }
  if skipped is not None:
    for k, v in _flatten(counts).items():
      skipped[k] = skipped.get(k, 0) + v
  return out


def _sub(parent: dict[str, dict[str, int]], name: str) -> dict[str, int]:
  """A fresh counter dict for one builder, reported under `name/` by `_flatten`."""
  return parent.setdefault(name, {})


def _flatten(skipped: dict) -> dict[str, int]:
  out = {}
  for k, v in skipped.items():
    if isinstance(v, dict):
      out.update({f'{k}/{kk}': int(vv) for kk, vv in v.items()})
    else:
      out[k] = int(v)
  return dict(sorted(out.items()))
