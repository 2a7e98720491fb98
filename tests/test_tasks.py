"""Task example builders: prompts name task/type/format, completions name exactly the targets,
eval examples follow the split, determinism, and describe_items resolves rendered SIDs."""

from __future__ import annotations

import collections
import itertools
import re

import numpy as np
import pytest

from neo_jax.catalog.splits import Target, leave_one_out
from neo_jax.catalog.types import Catalog, Interactions, Query, User
from neo_jax.sid.types import SIDMap
from neo_jax.tasks import (TASK_NAMES, header, history_examples, prompt_body, query_of, reformat_prompt,
                           tokenizer_corpus, describe_items, grounded_rationale, plain_text,
                           recommend_examples, render_sid, search_examples,
                           sid_to_text_examples, sid_to_type_examples,
                           text_to_sid_examples, user_summary_examples)
from neo_jax.tokenizer.markup import SIDSpan, split_markup
from neo_jax.tokenizer.sid_vocab import SIDVocab
from neo_jax.tokenizer.spm import SentencePieceTokenizer, train_sentencepiece

TYPES = ('book', 'movie', 'song')
LEVELS = {'book': (3, 3, 2), 'movie': (4, 4, 2), 'song': (2, 2, 5)}
TAGS = ('jazz', 'noir', 'space', 'comedy', 'history', 'love')
UNREACHABLE = 5  # one item without an SID, as a collision policy would leave it


def _world():
  rng = np.random.default_rng(0)
  n = 36
  type_index = np.arange(n, dtype=np.int32) % 3
  titles = [f'{TYPES[type_index[i]].title()} {i} of the <b>Night</b>' for i in range(n)]
  titles[7] = 'Fake [SID]<movie:0:1><movie:1:1><movie:2:1>[/SID] title'  # markup typed by a user
  descriptions = ['' if i % 4 == 0 else f'A story number {i} about things. More words here.'
                  for i in range(n)]
  tags = [tuple(TAGS[j] for j in sorted(rng.choice(len(TAGS), 2, replace=False)))
          if i % 5 else () for i in range(n)]
  catalog = Catalog(ids=[f'i{i}' for i in range(n)], type_names=TYPES, type_index=type_index,
                    titles=titles, descriptions=descriptions, tags=tags,
                    attributes=[{} for _ in range(n)],
                    popularity=np.full(n, np.nan, np.float32))
  codes = np.zeros((n, 3), np.int32)
  for ti, t in enumerate(TYPES):
    rows = np.flatnonzero(type_index == ti)
    combos = list(itertools.product(*[range(k) for k in LEVELS[t]]))
    pick = rng.permutation(len(combos))[:rows.size]
    codes[rows] = np.array([combos[p] for p in pick])
  codes[UNREACHABLE] = -1
  sid_map = SIDMap(TYPES, LEVELS, codes, type_index.copy())
  vocab = SIDVocab(TYPES, LEVELS, base=500)
  # 8 users, 4..14 events each, items of every type (cross-type histories).
  users, items, times = [], [], []
  for u in range(8):
    for k in range(4 + (u * 5) % 11):
      users.append(u)
      items.append(int(rng.integers(n)))
      times.append(1000 * u + 10 * k)
  inter = Interactions(user_names=[f'u{u}' for u in range(8)],
                       user_index=np.array(users, np.int32),
                       item_index=np.array(items, np.int32), timestamp=np.array(times))
  return catalog, sid_map, vocab, leave_one_out(inter)


CATALOG, SID_MAP, VOCAB, SPLIT = _world()


def _span(row):
  """Independent rendering of an item's SID from the raw codes."""
  t = TYPES[SID_MAP.type_index[row]]
  return '[SID]' + ''.join(f'<{t}:{l}:{int(c)}>' for l, c in enumerate(SID_MAP.codes[row])) + '[/SID]'


def _spans(text):
  return re.findall(r'\[SID\].*?\[/SID\]', text)


def _reachable(rows):
  return [int(r) for r in rows if r != UNREACHABLE]


def _check_header(ex, type_field):
  assert f'Task: {TASK_NAMES[ex.task]}.' in ex.prompt
  assert f'Type: {type_field}.' in ex.prompt
  assert f'Format: {ex.output_format}.' in ex.prompt
  assert ex.prompt.endswith(' ')
  # The strict tokenizer parser accepts prompt + completion: free text made no markup.
  pieces = split_markup(ex.prompt + ex.completion, VOCAB)
  assert sum(isinstance(p, SIDSpan) for p in pieces) == len(_spans(ex.prompt + ex.completion))


def _check_ids_completion(ex):
  want = [_span(r) for r in ex.target_items]
  if ex.output_format == 'ids':
    assert ex.completion == ' '.join(want)
  elif ex.output_format == 'mixed':
    assert ex.completion.startswith(want[0] + ' ')
    assert _spans(ex.completion) == want[:1]
  else:
    assert _spans(ex.completion) == []


def test_history_examples_cover_every_training_transition():
  exs = history_examples(SPLIT, CATALOG, SID_MAP, VOCAB, window=3, context=2, seed=0)
  for user, seq in SPLIT.train.items():
    rows = _reachable(seq)
    mine = [e for e in exs if e.user_id == user]
    # The windows, in order, are the user's reachable training sequence, cut every 3 items.
    assert [list(e.target_items) for e in mine] == [rows[i:i + 3]
                                                     for i in range(0, len(rows), 3)]
    for k, e in enumerate(mine):
      assert e.task == 'history' and e.output_format == 'ids'
      types = {TYPES[SID_MAP.type_index[r]] for r in e.target_items}
      _check_header(e, types.pop() if len(types) == 1 else 'any')
      assert e.completion == ' '.join(_span(r) for r in e.target_items) + '.'
      # The prompt shows the (at most) 2 items before the window and nothing after it.
      assert _spans(e.prompt) == [_span(r) for r in rows[max(0, 3 * k - 2):3 * k]]
  with pytest.raises(ValueError, match='window'):
    history_examples(SPLIT, CATALOG, SID_MAP, VOCAB, window=0)


@pytest.mark.parametrize('fmt', ['ids', 'mixed', 'text'])
def test_recommend_train(fmt):
  skipped = {}
  exs = recommend_examples(SPLIT, CATALOG, SID_MAP, VOCAB, mode='train', output_format=fmt,
                           history_len=3, max_targets_per_user=None, seed=1, skipped=skipped)
  # Every sliding-window position whose target has an SID, per user.
  want = [(u, t) for u in sorted(SPLIT.train) for t in range(1, len(SPLIT.train[u]))
          if SPLIT.train[u][t] != UNREACHABLE]
  assert len(exs) == len(want)
  for ex, (u, t) in zip(exs, want):
    seq = SPLIT.train[u]
    assert ex.user_id == u and ex.target_items == (int(seq[t]),)
    assert ex.task == 'recommend' and ex.output_format == fmt
    assert ex.target_type == TYPES[CATALOG.type_index[seq[t]]]
    _check_header(ex, ex.target_type)
    _check_ids_completion(ex)
    history = _reachable(seq[:t])[-3:]
    assert _spans(ex.prompt) == [_span(r) for r in history]
    if fmt == 'text':
      assert ex.completion == plain_text(CATALOG.titles[seq[t]])
  n_unreachable = sum(int(np.sum(s[1:] == UNREACHABLE)) for s in SPLIT.train.values())
  assert skipped.get('unreachable_targets', 0) == n_unreachable


def test_recommend_train_cap_and_determinism():
  kw = dict(mode='train', output_format=('ids', 'mixed'), max_targets_per_user=2)
  a = recommend_examples(SPLIT.train, CATALOG, SID_MAP, VOCAB, seed=3, **kw)
  b = recommend_examples(SPLIT.train, CATALOG, SID_MAP, VOCAB, seed=3, **kw)
  c = recommend_examples(SPLIT.train, CATALOG, SID_MAP, VOCAB, seed=4, **kw)
  assert a == b and a != c
  per_user = {}
  for ex in a:
    per_user[ex.user_id] = per_user.get(ex.user_id, 0) + 1
  assert max(per_user.values()) == 2
  assert {ex.output_format for ex in a} == {'ids', 'mixed'}
  # Several phrasings are in use.
  assert len({ex.prompt.split('[SID]')[0] for ex in a}) > 1


def test_output_format_weights_and_mode_aliases():
  kw = dict(max_targets_per_user=None, seed=2)
  mixed = recommend_examples(SPLIT, CATALOG, SID_MAP, VOCAB, mixed_fraction=0.25, **kw)
  share = np.mean([ex.output_format == 'mixed' for ex in mixed])
  assert {ex.output_format for ex in mixed} == {'ids', 'mixed'} and 0.1 < share < 0.4
  weighted = recommend_examples(SPLIT, CATALOG, SID_MAP, VOCAB,
                                output_format={'ids': 0.75, 'mixed': 0.25}, **kw)
  assert weighted == mixed
  none = recommend_examples(SPLIT, CATALOG, SID_MAP, VOCAB, mixed_fraction=0.0, **kw)
  assert {ex.output_format for ex in none} == {'ids'}
  for which in ('valid', 'test'):
    assert (recommend_examples(SPLIT, CATALOG, SID_MAP, VOCAB, mode=which) ==
            recommend_examples(SPLIT, CATALOG, SID_MAP, VOCAB, mode='eval', eval_split=which))


def test_prompt_body_and_reformat():
  exs = recommend_examples(SPLIT, CATALOG, SID_MAP, VOCAB, mode='test', history_len=4, seed=5)
  for ex, tg in zip(exs, SPLIT.test):
    want = ' '.join(_span(r) for r in _reachable(tg.history)[-4:])
    assert prompt_body(ex.prompt, 'recommend', ex.target_type, 'ids') == want
    text = reformat_prompt(ex.prompt, 'recommend', ex.target_type, 'text')
    assert text == ex.prompt.replace('Format: ids.', 'Format: text.')
    assert prompt_body(text, 'recommend', ex.target_type, 'text') == want
  with pytest.raises(ValueError, match='matches no'):
    prompt_body(exs[0].prompt, 'recommend', exs[0].target_type, 'mixed')


@pytest.mark.parametrize('which', ['valid', 'test'])
def test_recommend_eval_follows_split(which):
  targets = getattr(SPLIT, which)
  exs = recommend_examples(SPLIT, CATALOG, SID_MAP, VOCAB, mode='eval', eval_split=which,
                           history_len=4, seed=0)
  assert len(exs) == len(targets)
  for ex, tg in zip(exs, targets):
    assert ex.user_id == tg.user_id and ex.target_items == (tg.target,)
    history = _reachable(tg.history)[-4:]
    # A request knows the history, not the target: the type is the last shown item's.
    assert ex.target_type == TYPES[CATALOG.type_index[history[-1]]]
    _check_header(ex, ex.target_type)
    assert _spans(ex.prompt) == [_span(r) for r in history]
    if tg.target == UNREACHABLE:
      assert ex.completion == ''
    else:
      _check_ids_completion(ex)


def test_recommend_eval_never_leaks_target():
  # The target appears nowhere before it in the history: its SID must not be in the prompt.
  tg = Target('x', np.array([0, 1, 2, 3], np.int32), 4)
  (ex,) = recommend_examples([tg], CATALOG, SID_MAP, VOCAB, mode='eval', output_format='mixed')
  assert _span(4) not in ex.prompt
  assert ex.completion.startswith(_span(4))
  # A target without an SID still gets its example (a certain miss), with nothing to write.
  skipped = {}
  (ex,) = recommend_examples([Target('y', np.array([0, 1], np.int32), UNREACHABLE)], CATALOG,
                             SID_MAP, VOCAB, mode='eval', skipped=skipped)
  assert ex.completion == '' and ex.target_items == (UNREACHABLE,)
  assert skipped == {'unreachable_targets': 1}
  # Test targets come after validation targets in time: the test history ends with them.
  for v, t in zip(SPLIT.valid, SPLIT.test):
    assert list(t.history) == list(v.history) + [v.target]


def test_grounded_rationale_known_answers():
  cat = Catalog(ids=['a', 'b', 'c'], type_names=('book', 'movie'),
                type_index=np.array([1, 0, 1], np.int32),
                titles=['Night Garden', 'Blue Train', 'Red Sky'], descriptions=['', '', ''],
                tags=[('jazz', 'noir'), ('trains', 'jazz'), ()], attributes=[{}, {}, {}],
                popularity=np.zeros(3, np.float32))
  rng = np.random.default_rng(0)
  r = grounded_rationale(cat, 0, [1], rng)
  assert r.startswith('Night Garden, a movie about jazz and noir')
  assert 'jazz' in r and 'Blue Train' in r
  assert grounded_rationale(cat, 2, [0], rng) == 'Red Sky, a movie, matching the movie items in your history.'
  assert grounded_rationale(cat, 2, [1], rng) == 'Red Sky, a movie, new to your history.'
  assert grounded_rationale(cat, 0, [0, 1], rng).endswith('which you engaged with before.')


def test_search_examples():
  queries = [
      Query('jazz movies [SID] <book:0:1>', (1, 4, 0, 7, 1), user_id='u1'),  # movie, book, ...
      Query('only unreachable', (UNREACHABLE,)),
      Query('songs', (2, 8)),
  ]
  queries += [Query('anything at night', (1, 0, 2, UNREACHABLE)),  # names no type: any
               Query('books and songs', (0, 2)),  # names two types: any
               Query('a movie', (0, 2)),  # names a type none of its items has: left out
               Query('jazz movies', (1, 4, 0, 7))]  # names one type: its items only
  skipped = {}
  exs = search_examples(queries, CATALOG, SID_MAP, VOCAB, seed=0, skipped=skipped)
  assert skipped == {'unreachable_relevant_items': 2, 'queries_without_reachable_items': 2,
                     'relevant_items_of_other_types': 2 + 1}
  # One example per query; the type is the one the query text names, else any (the first
  # query names both movies and 'book').
  assert [(ex.target_type, ex.target_items) for ex in exs] == [
      (None, (1, 4, 0, 7)), ('song', (2, 8)), (None, (1, 0, 2)), (None, (0, 2)),
      ('movie', (1, 4, 7))]
  assert exs[0].user_id == 'u1'
  for ex in exs:
    assert ex.task == 'search' and ex.output_format == 'ids'
    _check_header(ex, ex.target_type or 'any')
    _check_ids_completion(ex)
  assert 'jazz movies (SID) (book:0:1)' in exs[0].prompt
  assert [query_of(ex) for ex in exs] == ['jazz movies (SID) (book:0:1)', 'songs',
                                          'anything at night', 'books and songs',
                                          'jazz movies']
  capped = search_examples(queries[:1], CATALOG, SID_MAP, VOCAB, max_items=2)
  assert capped[0].target_items == (1, 4)
  _check_ids_completion(capped[0])


def test_named_type():
  from neo_jax.tasks.prompts import named_type
  types = ('book', 'movie', 'tv-show')
  for text, want in (('jazz movies', 'movie'), ('The MOVIE', 'movie'), ('a book', 'book'),
                     ('tv-shows about space', 'tv-show'), ('bookshelf stories', None),
                     ('books and movies', None), ('moviegoers', None), ('songs', None),
                     ('movie of the movies', 'movie'), ('', None)):
    assert named_type(text, types) == want, text


def test_user_summary_examples():
  users = {'u0': User('u0', summary='Likes jazz.'), 'u3': User('u3'),
           'u5': User('u5', summary='Space fan'), 'nobody': User('nobody', summary='x')}
  skipped = {}
  exs = user_summary_examples(users, SPLIT, SID_MAP, VOCAB, history_len=2,
                              skipped=skipped)
  assert [ex.user_id for ex in exs] == ['u0', 'u5']
  in_window = sum(int(np.sum(SPLIT.train[u][-2:] == UNREACHABLE)) for u in ('u0', 'u5'))
  want = {'users_without_summary': 1, 'users_with_summary_but_no_history': 1}
  if in_window:
    want['unreachable_history_items'] = in_window
  assert skipped == want
  for ex in exs:
    assert ex.task == 'user_summary' and ex.output_format == 'text' and ex.target_type is None
    _check_header(ex, 'user')
    history = _reachable(SPLIT.train[ex.user_id])[-2:]
    assert _spans(ex.prompt) == [_span(r) for r in history]
  assert exs[0].completion == 'Likes jazz.' and exs[1].completion == 'Space fan'


def test_grounding_examples():
  reachable = [r for r in range(len(CATALOG)) if r != UNREACHABLE]
  to_text = sid_to_text_examples(CATALOG, SID_MAP, VOCAB, description_words=3)
  to_sid = text_to_sid_examples(CATALOG, SID_MAP, VOCAB, description_prob=1.0)
  to_type = sid_to_type_examples(CATALOG, SID_MAP, VOCAB)
  for exs in (to_text, to_sid, to_type):
    assert [ex.target_items for ex in exs] == [(r,) for r in reachable]
  for ex in to_text:
    (r,) = ex.target_items
    _check_header(ex, TYPES[CATALOG.type_index[r]])
    assert _spans(ex.prompt) == [_span(r)]
    desc = ' '.join(CATALOG.descriptions[r].split()[:3])
    assert ex.completion == plain_text(CATALOG.titles[r] + ('. ' + desc if desc else ''))
  for ex in to_sid:
    (r,) = ex.target_items
    _check_header(ex, TYPES[CATALOG.type_index[r]])
    _check_ids_completion(ex)
    assert plain_text(CATALOG.titles[r]) in ex.prompt
    if CATALOG.descriptions[r]:
      assert 'A story number' in ex.prompt
  for ex in to_type:
    (r,) = ex.target_items
    _check_header(ex, 'any')
    assert ex.target_type is None and ex.completion == TYPES[CATALOG.type_index[r]]
  with pytest.raises(ValueError, match='have no SID'):
    sid_to_type_examples(CATALOG, SID_MAP, VOCAB, items=[UNREACHABLE])


def test_describe_items_round_trip():
  for r in range(len(CATALOG)):
    if r == UNREACHABLE:
      with pytest.raises(ValueError, match='no SID'):
        render_sid(SID_MAP, VOCAB, r)
      continue
    text = f'Try {render_sid(SID_MAP, VOCAB, r)} tonight.'
    assert describe_items(text, SID_MAP, VOCAB, CATALOG) == [
        (r, CATALOG.titles[r], TYPES[CATALOG.type_index[r]])]
  # A mixed completion names its item first; unknown and malformed spans resolve to None.
  (ex,) = recommend_examples([Target('x', np.array([0, 1], np.int32), 4)], CATALOG, SID_MAP,
                             VOCAB, mode='eval', output_format='mixed')
  assert describe_items(ex.completion, SID_MAP, VOCAB, CATALOG)[0][0] == 4
  free = [c for c in itertools.product(range(4), range(4), range(2))
          if SID_MAP.item_of('movie', c) is None][0]
  nowhere = '[SID]' + ''.join(f'<movie:{l}:{c}>' for l, c in enumerate(free)) + '[/SID]'
  text = f'{_span(0)} and {nowhere} and [SID]<movie:0:1>[/SID] and [SID]junk[/SID]'
  assert describe_items(text, SID_MAP, VOCAB, CATALOG) == [
      (0, CATALOG.titles[0], 'book'), (None, None, 'movie'), (None, None, None),
      (None, None, None)]


def test_mismatched_inputs_raise():
  bad_vocab = SIDVocab(TYPES, {**LEVELS, 'song': (2, 2, 4)}, base=500)
  with pytest.raises(ValueError, match='level sizes'):
    sid_to_type_examples(CATALOG, SID_MAP, bad_vocab)
  with pytest.raises(ValueError, match="mode must be 'train', 'eval'"):
    recommend_examples(SPLIT, CATALOG, SID_MAP, VOCAB, mode='predict')
  with pytest.raises(ValueError, match='unknown output format'):
    recommend_examples(SPLIT, CATALOG, SID_MAP, VOCAB, output_format='json')


def test_examples_fit_the_token_budget():
  # A small context (128 tokens) must hold H=10 histories: that is what keeps prompts short.
  corpus = list(tokenizer_corpus(CATALOG, [Query('jazz movies', (1,))], [User('u', summary='x')]))
  assert header('recommend', 'movie', 'mixed') in '\n'.join(corpus)
  tok = SentencePieceTokenizer.from_sid_map(train_sentencepiece(corpus, 600), SID_MAP)
  exs = recommend_examples(SPLIT, CATALOG, SID_MAP, tok.sid, output_format=('ids', 'mixed'),
                           history_len=10, max_targets_per_user=None)
  exs += recommend_examples(SPLIT, CATALOG, SID_MAP, tok.sid, mode='eval', history_len=10)
  lengths = [len(tok.encode(ex.prompt + ex.completion)) for ex in exs]
  assert max(lengths) <= 128, max(lengths)


def test_full_grounding_text_adds_the_tags_and_a_bare_title_example():
  reachable = [r for r in range(len(CATALOG)) if r != UNREACHABLE]
  assert any(CATALOG.tags[r] for r in reachable) and any(CATALOG.descriptions[r]
                                                         for r in reachable)
  to_text = sid_to_text_examples(CATALOG, SID_MAP, VOCAB, description_words=3, text='full')
  to_sid = text_to_sid_examples(CATALOG, SID_MAP, VOCAB, text='full')
  for ex in to_text:
    (r,) = ex.target_items
    desc = ' '.join(CATALOG.descriptions[r].split()[:3])
    want = CATALOG.titles[r] + ('. ' + desc if desc else '')
    if CATALOG.tags[r]:
      want += '. ' + ', '.join(CATALOG.tags[r])
    assert ex.completion == plain_text(want)
  by_item = collections.defaultdict(list)
  for ex in to_sid:
    _check_ids_completion(ex)
    by_item[ex.target_items[0]].append(ex.prompt)
  assert sorted(by_item) == reachable
  for r, found in by_item.items():
    full = CATALOG.titles[r]
    desc = ' '.join(CATALOG.descriptions[r].split()[:8]).rstrip('.')
    if desc:
      full += ' - ' + desc
    if CATALOG.tags[r]:
      full += '. ' + ', '.join(CATALOG.tags[r])
    texts = [CATALOG.titles[r]] + ([full] if full != CATALOG.titles[r] else [])
    assert len(found) == len(texts)
    for prompt, text in zip(found, texts):
      assert plain_text(text) in prompt
    if len(texts) == 2:  # the first is the bare title, not the full text
      assert plain_text(full) not in found[0]
  with pytest.raises(ValueError, match='grounding text'):
    text_to_sid_examples(CATALOG, SID_MAP, VOCAB, text='titles')


def test_full_lower_grounding_text_adds_the_lower_cased_title():
  full = text_to_sid_examples(CATALOG, SID_MAP, VOCAB, text='full')
  lower = text_to_sid_examples(CATALOG, SID_MAP, VOCAB, text='full_lower')
  cased = [r for r in range(len(CATALOG)) if r != UNREACHABLE
           and CATALOG.titles[r].lower() != CATALOG.titles[r]]
  assert cased  # the fixture has titles with capitals
  # The 'full' examples first, then one lower-cased bare title per item whose title has
  # capitals, with that item's SID.
  by_item = collections.defaultdict(list)
  for ex in lower:
    by_item[ex.target_items[0]].append(ex)
  extra = [exs[-1] for r, exs in by_item.items() if r in cased]
  assert len(lower) == len(full) + len(cased) == len(full) + len(extra)
  for ex in extra:
    (r,) = ex.target_items
    _check_ids_completion(ex)
    assert plain_text(CATALOG.titles[r].lower()) in ex.prompt
    assert plain_text(CATALOG.titles[r]) not in ex.prompt
  # sid_to_text is the 'full' one.
  assert ([e.completion for e in sid_to_text_examples(CATALOG, SID_MAP, VOCAB, text='full')]
          == [e.completion for e in sid_to_text_examples(CATALOG, SID_MAP, VOCAB,
                                                          text='full_lower')])
