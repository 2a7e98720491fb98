"""Every task's examples for one dataset in one call: what a training pipeline feeds its two
stages and what evaluation reads.

Search queries are the dataset's own (`Dataset.queries`, split by `builders.split_queries`)
or, when it has none, generated from item text (`queries.generate_queries`, whose held-out
templates appear only in evaluation). Query -> SID grounding uses the training queries only.
User summaries are the dataset's own where users have one, else written from the user's
profile (`builders.user_profile_examples`). Recsplanation is next-item recommendation in the
mixed format (the SID span, then a rationale citing facts shared with the history).
"""

from __future__ import annotations

import dataclasses

from neo_jax.catalog.splits import Split
from neo_jax.catalog.types import Dataset, Query
from neo_jax.sid.types import SIDMap
from neo_jax.tasks import builders
from neo_jax.tasks.queries import GeneratedQueries, generate_queries
from neo_jax.tasks.types import Example
from neo_jax.tokenizer.sid_vocab import SIDVocab


@dataclasses.dataclass
class TaskExamples:
  """Examples by use; `eval` keys: rec_valid, rec_test, explain_test (mixed format),
  search_valid, search_test, summary_test (histories up to each user's test target)."""

  grounding: list[Example]
  capability: list[Example]
  eval: dict[str, list[Example]]
  query_source: str  # 'data' or 'generated'
  queries: dict[str, list[Query]]
  generated: GeneratedQueries | None
  skipped: dict[str, int]


def build_task_examples(ds: Dataset, split: Split, sid_map: SIDMap, vocab: SIDVocab, *,
                        history_len: int = 10, train_targets_per_user: int | None = 10,
                        mixed_fraction: float = 0.3, query_valid_fraction: float = 0.05,
                        query_test_fraction: float = 0.05, queries_per_item: int = 1,
                        heldout_queries_per_item: int = 1, max_relevant: int = 20,
                        query_grounding: bool = True, history_window: int = 0,
                        history_context: int = 3, seed: int = 0) -> TaskExamples:
  """All task examples of `ds` under `split` (see the module docstring).

  Capability examples = recommendation (ids, and mixed with probability `mixed_fraction`),
  search, user summaries, history continuation when `history_window` > 0 (windows of that
  many training items, `builders.history_examples`), and the grounding examples again (so the
  second stage keeps them).
  Returns counts of everything left out in `skipped` (by builder and reason).
  """
  skipped: dict = {}
  cat = ds.catalog
  generated = None
  if ds.queries:
    train_q, valid_q, test_q = builders.split_queries(
        ds.queries, query_valid_fraction, query_test_fraction, seed)
    source = 'data'
  else:
    generated = generate_queries(
        cat, queries_per_item=queries_per_item, heldout_per_item=heldout_queries_per_item,
        max_relevant=max_relevant, valid_fraction=query_valid_fraction,
        test_fraction=query_test_fraction, seed=seed)
    train_q, valid_q, test_q = generated.train, generated.valid, generated.test
    source = 'generated'
    skipped['generate_queries'] = dict(generated.skipped)
  grounding = (builders.sid_to_text_examples(cat, sid_map, vocab, seed=seed)
               + builders.text_to_sid_examples(cat, sid_map, vocab, seed=seed)
               + builders.sid_to_type_examples(cat, sid_map, vocab, seed=seed))
  if query_grounding:
    grounding += builders.query_grounding_examples(train_q, cat, sid_map, vocab, seed=seed,
                                                   skipped=_sub(skipped, 'query_grounding'))
  rec_train = builders.recommend_examples(
      split, cat, sid_map, vocab, mode='train', history_len=history_len,
      max_targets_per_user=train_targets_per_user, mixed_fraction=mixed_fraction, seed=seed,
      skipped=_sub(skipped, 'recommend_train'))
  search_train = builders.search_examples(train_q, cat, sid_map, vocab, seed=seed,
                                          skipped=_sub(skipped, 'search_train'))
  summaries = builders.user_profile_examples(split, cat, sid_map, vocab, users=ds.users,
                                             history_len=history_len, seed=seed,
                                             skipped=_sub(skipped, 'user_summary_train'))
  history = (builders.history_examples(split, cat, sid_map, vocab, window=history_window,
                                       context=history_context, seed=seed,
                                       skipped=_sub(skipped, 'history'))
             if history_window > 0 else [])
  test_histories = {tg.user_id: tg.history for tg in split.test}
  evals = {
      'rec_valid': builders.recommend_examples(
          split, cat, sid_map, vocab, mode='valid', history_len=history_len, seed=seed,
          skipped=_sub(skipped, 'rec_valid')),
      'rec_test': builders.recommend_examples(
          split, cat, sid_map, vocab, mode='test', history_len=history_len, seed=seed,
          skipped=_sub(skipped, 'rec_test')),
      'explain_test': builders.recommend_examples(
          split, cat, sid_map, vocab, mode='test', output_format='mixed',
          history_len=history_len, seed=seed),
      'search_valid': builders.search_examples(valid_q, cat, sid_map, vocab, seed=seed,
                                               skipped=_sub(skipped, 'search_valid')),
      'search_test': builders.search_examples(test_q, cat, sid_map, vocab, seed=seed,
                                              skipped=_sub(skipped, 'search_test')),
      'summary_test': builders.user_profile_examples(
          test_histories, cat, sid_map, vocab, users=ds.users, history_len=history_len,
          seed=seed, skipped=_sub(skipped, 'summary_test')),
  }
  return TaskExamples(grounding=grounding, capability=rec_train + history + search_train +
                      summaries + grounding, eval=evals, query_source=source,
                      queries={'train': train_q, 'valid': valid_q, 'test': test_q},
                      generated=generated, skipped=_flatten(skipped))


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
