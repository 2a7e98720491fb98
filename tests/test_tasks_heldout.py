"""What evaluation holds out, end to end on a small multi-type synthetic dataset: search
queries split by relevant item, held-out summary users, the fit view (no validation or test
event, query or hidden summary), test examples built only from what `build_test_examples` is
given, and prompts that carry only what a request knows (no oracle type)."""

from __future__ import annotations

import collections
import itertools
import math

import numpy as np
import pytest

from neo_jax.catalog import synthetic as syn
from neo_jax.catalog.splits import fit_view, make_split, user_sequences, without_test
from neo_jax.catalog.types import Query
from neo_jax.sid.types import SIDMap
from neo_jax.tasks.builders import (recommend_examples, search_examples, split_queries_by_item,
                                    tokenizer_corpus)
from neo_jax.tasks.prompts import named_type, plain_text
from neo_jax.tasks.queries import generate_queries
from neo_jax.tasks.suite import (build_task_examples, build_test_examples,
                                 heldout_summary_users, split_search_queries)
from neo_jax.tokenizer.sid_vocab import SIDVocab

DS = syn.generate_synthetic(syn.SyntheticConfig(
    items_per_type=40, num_topics=5, topics_per_user=(1, 2), num_users=30, min_events=5,
    max_events=12, num_queries=80, cross_type_prob=0.4))
CAT = DS.catalog
TYPES = CAT.type_names


def _sids():
  k = math.isqrt(len(CAT)) + 1
  levels = {t: (k, k) for t in TYPES}
  codes = np.zeros((len(CAT), 2), np.int32)
  for ti in range(len(TYPES)):
    rows = np.flatnonzero(CAT.type_index == ti)
    codes[rows] = np.array([(n // k, n % k) for n in range(rows.size)])
  return SIDMap(TYPES, levels, codes, CAT.type_index.copy()), SIDVocab(TYPES, levels, base=400)


SID_MAP, VOCAB = _sids()


def _items(queries):
  return {int(r) for q in queries for r in q.item_index}


# -- search queries split by item --------------------------------------------------------------

@pytest.mark.parametrize('seed', range(3))
def test_generated_queries_are_split_by_item(seed):
  g = generate_queries(CAT, valid_fraction=0.1, test_fraction=0.1, seed=seed)
  train, valid, test = _items(g.train), _items(g.valid), _items(g.test)
  assert g.train and g.valid and g.test
  assert not train & (valid | test) and not valid & test
  # The old leak: a trained '{words} {type}' and a tested 'the {type} called {words}' for one
  # item. No training query of any template names an evaluated item now.
  for q in g.train:
    assert not set(q.item_index) & (valid | test), q.text
  assert not any(g.is_heldout(q) for q in g.train)
  assert all(g.template_of[q.text] != 'title' for q in g.valid + g.test)
  # Every generated query is in one part or counted as left out.
  left_out = g.skipped['never_train_not_evaluated'] + g.skipped['relevant_items_held_out']
  assert len(g.template_of) == len(g.train) + len(g.valid) + len(g.test) + left_out


def test_split_queries_by_item_rule():
  queries = [Query(f'q{n}', (n % 17, (3 * n) % 17)) for n in range(40)]
  queries += [Query('Q1 ', (16,)), Query('Q5', (5,)), Query('solo', (30,)),
              Query('title', (31,))]
  kw = dict(never_train=['q5', 'q6'], never_heldout=['title'])
  train, valid, test, skipped = split_queries_by_item(queries, 0.1, 0.1, 3, **kw)
  assert (train, valid, test, skipped) == split_queries_by_item(queries, 0.1, 0.1, 3, **kw)
  assert len(test) == 4 and 1 <= len(valid) <= 4  # round(0.1 * 44) each, when items allow
  # never_train queries are offered to evaluation first; 'Q5' goes with 'q5'.
  assert {'q5', 'Q5', 'q6'} <= {q.text for q in test}
  for a, b in itertools.combinations((train, valid, test), 2):
    assert not _items(a) & _items(b)
  ids = [[queries.index(q) for q in p] for p in (train, valid, test)]
  assert all(p == sorted(p) for p in ids)  # input order kept
  # Identical texts (case and spaces aside) land together.
  assert [n for n, p in enumerate(ids) if 1 in p] == [n for n, p in enumerate(ids) if 40 in p]
  # never_train queries are evaluated or counted, never trained.
  evaluated = {q.text for q in valid + test}
  assert 'never_train_not_evaluated' not in skipped
  assert queries[-1] in train and queries[-2] in train  # untouched items train
  assert len(train) + len(valid) + len(test) + sum(skipped.values()) == len(queries)
  # Brute force: a query trains iff its text group is not held out, not never_train, and
  # the group's items touch no held-out item.
  held = _items(valid) | _items(test)
  group = collections.defaultdict(set)
  for q in queries:
    group[q.text.strip().lower()].update(q.item_index)
  want = [q for q in queries if q.text not in evaluated and q.text not in ('q5', 'Q5', 'q6')
          and not group[q.text.strip().lower()] & held]
  assert train == want
  with pytest.raises(ValueError, match='must be < 1'):
    split_queries_by_item(queries, 0.6, 0.5, 0)


def test_split_search_queries_uses_data_queries_split_by_item():
  qs = split_search_queries(DS, valid_fraction=0.1, test_fraction=0.1, seed=0)
  assert qs.source == 'data' and qs.generated is None
  assert not _items(qs.train) & (_items(qs.valid) | _items(qs.test))
  assert not _items(qs.valid) & _items(qs.test)
  assert len(qs.train) + len(qs.valid) + len(qs.test) + sum(qs.skipped.values()) == len(
      DS.queries)
  texts = [{q.text for q in p} for p in (qs.train, qs.valid, qs.test)]
  assert not any(a & b for a, b in itertools.combinations(texts, 2))
  # Drawing more generated queries makes no sense for the data's own: said, not ignored.
  with pytest.raises(ValueError, match='extra_query_draws=2.*queries of its own'):
    split_search_queries(DS, valid_fraction=0.1, test_fraction=0.1, extra_query_draws=2, seed=0)


# -- held-out summaries ------------------------------------------------------------------------

def test_heldout_summary_users():
  users = [f'u{n}' for n in range(30)]
  a = heldout_summary_users(users, 0.2, seed=1)
  assert len(a) == 6 and a <= set(users)
  assert a == heldout_summary_users(reversed(users + users), 0.2, seed=1)
  assert a != heldout_summary_users(users, 0.2, seed=2)
  assert len(heldout_summary_users(users, 0.001, seed=0)) == 1
  assert heldout_summary_users(users, 0.0, seed=0) == frozenset()
  assert heldout_summary_users([], 0.5, seed=0) == frozenset()
  with pytest.raises(ValueError):
    heldout_summary_users(users, 1.5, seed=0)


# -- prompts carry only what a request knows ---------------------------------------------------

def test_eval_recommend_prompt_type_is_the_last_history_items():
  split, _ = make_split(DS.interactions, 'leave_one_out')
  exs = recommend_examples(split.test, CAT, SID_MAP, VOCAB, mode='eval', history_len=4)
  differs = 0
  for ex, tg in zip(exs, split.test):
    last = CAT.type_of(int(tg.history[-1]))
    assert ex.target_type == last and f'Type: {last}.' in ex.prompt
    differs += last != CAT.type_of(tg.target)
  assert differs > 0  # cross-type targets exist, and their type is not given away
  # Training keeps the target's type (that is how type steering is learned).
  train = recommend_examples(split, CAT, SID_MAP, VOCAB, mode='train')
  assert all(ex.target_type == CAT.type_of(ex.target_items[0]) for ex in train)
  # Nothing shown: any.
  from neo_jax.catalog.splits import Target
  (ex,) = recommend_examples([Target('x', np.zeros(0, np.int32), 3)], CAT, SID_MAP, VOCAB,
                             mode='eval')
  assert ex.target_type is None and 'Type: any.' in ex.prompt


def test_search_prompt_type_is_read_from_the_query():
  exs = search_examples(DS.queries, CAT, SID_MAP, VOCAB)
  assert len(exs) == len(DS.queries)
  kinds = collections.Counter()
  for ex, q in zip(exs, DS.queries):
    named = named_type(q.text, TYPES)
    assert ex.target_type == named and f'Type: {named or "any"}.' in ex.prompt
    want = [r for r in dict.fromkeys(q.item_index) if named in (None, CAT.type_of(r))]
    assert list(ex.target_items) == want
    kinds[named is None] += 1
  assert kinds[True] and kinds[False]


# -- the whole flow ----------------------------------------------------------------------------

@pytest.mark.parametrize('spec', ['leave_one_out', 'temporal:0.2,0.2'])
def test_fit_view_and_examples_hold_nothing_of_the_test(spec):
  split, _ = make_split(DS.interactions, spec)
  qs = split_search_queries(DS, valid_fraction=0.1, test_fraction=0.1, seed=0)
  held = heldout_summary_users(DS.users, 0.2, seed=0)
  view = fit_view(DS, split, queries=qs.train, hide_summaries=held)
  # The view: training events only, training queries only, held-out summaries hidden.
  assert {u: s.tolist() for u, s in user_sequences(view.interactions).items()} == {
      u: s.tolist() for u, s in split.train.items() if len(s)}
  corpus = set(tokenizer_corpus(view.catalog, view.queries, view.users))
  eval_texts = {q.text for q in qs.valid + qs.test} - {q.text for q in qs.train}
  assert eval_texts and not eval_texts & corpus
  hidden = {DS.users[u].summary for u in held} - {
      DS.users[u].summary for u in DS.users if u not in held}
  assert hidden and not hidden & corpus
  assert 'Task: search. Type: any. Format: ids.' in '\n'.join(corpus)
  with pytest.raises(ValueError, match='test targets'):
    build_task_examples(view, split, SID_MAP, VOCAB, queries=qs)
  te = build_task_examples(view, without_test(split), SID_MAP, VOCAB, queries=qs,
                           summary_heldout=held, history_len=4, seed=0)
  assert set(te.eval) == {'rec_valid', 'search_valid'}
  assert te.heldout.test_queries == qs.test and te.heldout.summary_users == held
  # Held-out summary users get no summary training example.
  assert not {e.user_id for e in te.capability if e.task == 'user_summary'} & held
  # No validation or test target is a training recommendation target of its user, unless
  # the user met the item in training too.
  for tg in split.valid + split.test:
    seen = set(split.train.get(tg.user_id, np.zeros(0)).tolist())
    for e in te.capability:
      if e.task == 'recommend' and e.user_id == tg.user_id and e.target_items == (tg.target,):
        assert tg.target in seen
  tests = build_test_examples(te.heldout, split.test, CAT, DS.users, SID_MAP, VOCAB,
                              history_len=4, seed=0)
  assert [e.user_id for e in tests['rec_test']] == [t.user_id for t in split.test]
  with_test = {t.user_id for t in split.test}
  assert [e.user_id for e in tests['summary_test']] == sorted(held & with_test)
  for e in tests['summary_test']:
    assert e.completion == DS.users[e.user_id].summary  # the given summary, not hidden here
  assert len(tests['search_test']) == len(qs.test)


def test_title_repeats_drill_bare_titles_in_the_grounding_stage_only():
  """`title_repeats=3` with 'full_lower': the grounding stage holds every reachable item's bare
  title and its lower case (when it differs) two more times, phrased by other prompt draws;
  the capability stage and every other example are those of title_repeats=1."""
  split, _ = make_split(DS.interactions, 'leave_one_out')
  qs = split_search_queries(DS, valid_fraction=0.1, test_fraction=0.1, seed=0)
  view = fit_view(DS, split, queries=qs.train, hide_summaries=frozenset())
  once, drilled = (build_task_examples(view, without_test(split), SID_MAP, VOCAB, queries=qs,
                                       grounding_text='full_lower', title_repeats=n, seed=0)
                   for n in (1, 3))
  assert drilled.grounding[:len(once.grounding)] == once.grounding
  assert drilled.capability == once.capability and drilled.eval == once.eval
  drills = drilled.grounding[len(once.grounding):]
  reachable = [r for r in range(len(CAT)) if SID_MAP.codes[r, 0] >= 0]
  cased = [r for r in reachable if CAT.titles[r].lower() != CAT.titles[r]]
  assert len(drills) == 2 * (len(reachable) + len(cased))
  assert {e.task for e in drills} == {'text_to_sid'}
  for ex in drills:
    (r,) = ex.target_items
    assert (plain_text(CAT.titles[r]) in ex.prompt
            or plain_text(CAT.titles[r].lower()) in ex.prompt)
    assert plain_text(f'{CAT.titles[r]} - ') not in ex.prompt  # never the full text
  # The two copies of an item's title are phrased by different prompt draws.
  by_prompt = collections.Counter(e.prompt for e in drills)
  assert len(by_prompt) > len(drills) // 2
  with pytest.raises(ValueError, match='title_repeats'):
    build_task_examples(view, without_test(split), SID_MAP, VOCAB, queries=qs, title_repeats=0)
