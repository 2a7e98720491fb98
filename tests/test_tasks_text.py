"""Text tasks from the data: generated search queries (held-out templates), user profiles and
their scorer, rationales citing shared facts and the faithfulness checker. References are
brute-force scans of a small MovieLens-like catalog and hand-computed answers."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from neo_jax.catalog.splits import Target, leave_one_out
from neo_jax.catalog.types import Catalog, Dataset, Interactions, Query, User
from neo_jax.sid.types import SIDMap
from neo_jax.tasks import (TASK_NAMES, UserProfile, check_rationale, generate_queries,
                           grounded_rationale, named_attributes, profile_summary,
                           query_grounding_examples, recommend_examples, score_summary,
                           search_examples, user_profile, user_profile_examples)
from neo_jax.tasks import build_task_examples, prompt_body, type_field
from neo_jax.tasks.facts import SummaryVocabulary
from neo_jax.tokenizer.markup import SIDSpan, split_markup
from neo_jax.tokenizer.sid_vocab import SIDVocab

TYPES = ('book', 'movie')
LEVELS = {'book': (3, 4), 'movie': (6, 6)}
GENRES = ('Action', 'Comedy', 'Drama', 'Rock and Roll', 'Sci-Fi', 'War')
TITLE_WORDS = ('night', 'river', 'star', 'garden', 'ghost', 'city', 'war', 'love')


def _world():
  rng = np.random.default_rng(0)
  n = 40
  type_index = (np.arange(n) % 4 != 3).astype(np.int32)  # every 4th item is a book
  titles, tags, attrs = [], [], []
  for i in range(n):
    words = rng.choice(TITLE_WORDS, 2, replace=False)
    titles.append(f'The {words[0].title()} {words[1].title()}' + (f' {i}' if i % 3 else ''))
    tags.append(tuple(GENRES[j] for j in sorted(rng.choice(len(GENRES), 1 + i % 3,
                                                           replace=False))))
    a = {}
    if i % 5:
      a['year'] = int(rng.choice([1975, 1988, 1994, 1995, 1997]))
    if type_index[i] == 1:
      a['kg:film.film.directed_by'] = f'm.d{i % 4}'
      a['kg:film.film.language'] = 'm.en'
      a['kg:film.film.sequel'] = f'm.s{i}'
      a['freebase_id'] = f'm.f{i}'
    else:
      a['author'] = f'Author {i % 3}'
    attrs.append(a)
  titles[2] = 'Quote "Me" Now'  # a title with double quotes
  titles[6] = titles[5]  # two movies with one title
  cat = Catalog(ids=[f'i{i}' for i in range(n)], type_names=TYPES, type_index=type_index,
                titles=titles, descriptions=[''] * n, tags=tags, attributes=attrs,
                popularity=np.full(n, np.nan, np.float32))
  codes = np.zeros((n, 2), np.int32)
  for ti, t in enumerate(TYPES):
    rows = np.flatnonzero(type_index == ti)
    combos = list(itertools.product(*[range(k) for k in LEVELS[t]]))
    codes[rows] = np.array([combos[p] for p in rng.permutation(len(combos))[:rows.size]])
  return cat, SIDMap(TYPES, LEVELS, codes, type_index.copy()), SIDVocab(TYPES, LEVELS, base=300)


CAT, SID_MAP, VOCAB = _world()


def _check_header(ex, type_field):
  assert f'Task: {TASK_NAMES[ex.task]}.' in ex.prompt
  assert f'Type: {type_field}.' in ex.prompt
  assert f'Format: {ex.output_format}.' in ex.prompt
  assert ex.prompt.endswith(' ')
  pieces = split_markup(ex.prompt + ex.completion, VOCAB)
  assert sum(isinstance(p, SIDSpan) for p in pieces) == (ex.prompt + ex.completion).count('[SID]')


def _span(row):
  t = TYPES[SID_MAP.type_index[row]]
  return '[SID]' + ''.join(f'<{t}:{l}:{int(c)}>' for l, c in enumerate(SID_MAP.codes[row])) + \
      '[/SID]'


# -- generated queries -------------------------------------------------------------------------

def _words(title):
  return {w.lower() for w in re.findall(r"[A-Za-z0-9][A-Za-z0-9']*", title)}


def _year(i):
  return CAT.attributes[i].get('year')


def _brute_relevant(template, text):
  """Independent relevance: parse the query text back by its template, scan every item."""
  def rows(type_name, pred):
    return {i for i in range(len(CAT)) if TYPES[CAT.type_index[i]] == type_name and pred(i)}
  if template == 'title':
    return set.union(*(rows(t, lambda i: CAT.titles[i].lower() == text.lower()) for t in TYPES))
  patterns = {
      'title_words': r'(?P<words>.+) (?P<type>\w+)',
      'called': r'the (?P<type>\w+) called (?P<words>.+)',
      'tag_year': r'(?P<tag>.+) (?P<type>\w+)s from (?P<year>\d{4})',
      'two_tags': r'(?P<tags>.+) (?P<type>\w+)s',
      'attribute': r'(?P<type>\w+)s with (?P<rel>\w+) (?P<value>.+)',
      'tag_era': r'a (?P<tag>.+) (?P<type>\w+) from the (?P<era>\d{4})s',
      'tags_year': r'(?P<type>\w+) from (?P<year>\d{4}) about (?P<tags>.+)',
  }
  m = re.fullmatch(patterns[template], text)
  assert m, (template, text)
  g = m.groupdict()
  if 'tags' in g:  # 'A and B' where a genre may itself hold ' and '
    (g['tag'], g['tag2']), = [(a, b) for a in GENRES for b in GENRES
                              if f'{a} and {b}' == g['tags']]

  def ok(i):
    if 'words' in g and g['words'] and not set(g['words'].split()) <= _words(CAT.titles[i]):
      return False
    if g.get('tag') and g['tag'] not in CAT.tags[i]:
      return False
    if g.get('tag2') and g['tag2'] not in CAT.tags[i]:
      return False
    if g.get('year') and _year(i) != int(g['year']):
      return False
    if g.get('era') and (_year(i) is None or _year(i) // 10 * 10 != int(g['era'])):
      return False
    if g.get('rel') and CAT.attributes[i].get(g['rel']) != g['value']:
      return False
    return True
  return rows(g['type'], ok)


def test_generated_queries_relevance_and_heldout_templates():
  kw = dict(queries_per_item=2, heldout_per_item=1, max_relevant=6, valid_fraction=0.05,
            test_fraction=0.05)
  g = generate_queries(CAT, seed=3, **kw)
  heldout = {'called', 'tag_era', 'tags_year'}
  assert set(g.heldout_templates) == heldout
  everything = g.train + g.valid + g.test
  texts = [q.text.lower() for q in everything]
  assert len(texts) == len(set(texts))  # one query per text, in one part only
  assert not {g.template_of[q.text] for q in g.train} & heldout
  assert 'title' not in {g.template_of[q.text] for q in g.valid + g.test}  # grounding trains them
  # Held-out templates are offered to evaluation first: here they fill it.
  assert {g.template_of[q.text] for q in g.valid + g.test} <= heldout
  assert {g.template_of[q.text] for q in g.train} >= {'title', 'title_words', 'tag_year'}
  # Split by item: no evaluated item is relevant to a training query; valid and test apart.
  items = [{r for q in part for r in q.item_index} for part in (g.train, g.valid, g.test)]
  assert not items[0] & (items[1] | items[2]) and not items[1] & items[2]
  assert len(g.valid) == len(g.test) == 5
  generated = len(g.template_of)
  assert g.skipped['never_train_not_evaluated'] > 0 and g.skipped['relevant_items_held_out'] > 0
  assert generated == len(everything) + g.skipped['never_train_not_evaluated'] + g.skipped[
      'relevant_items_held_out']
  for q in everything:
    template = g.template_of[q.text]
    assert g.is_heldout(q) == (template in heldout)
    want = _brute_relevant(template, q.text)
    assert set(q.item_index) == want and len(q.item_index) == len(want), (template, q.text)
    assert 1 <= len(want) <= 6
    assert list(q.item_index[1:]) == sorted(q.item_index[1:])
    assert 'm.' not in q.text  # knowledge-graph ids never appear in query text
  assert g.skipped.get('generated_queries_too_broad', 0) > 0
  again = generate_queries(CAT, seed=3, **kw)
  assert (again.train, again.valid, again.test) == (g.train, g.valid, g.test)
  other = generate_queries(CAT, seed=4, **kw)
  assert other.train != g.train


def test_extra_training_query_draws_leave_evaluation_unchanged():
  kw = dict(queries_per_item=1, heldout_per_item=1, max_relevant=6, valid_fraction=0.05,
            test_fraction=0.05, seed=3)
  base = generate_queries(CAT, **kw)
  g = generate_queries(CAT, extra_train_draws=3, **kw)
  # The evaluated queries, and the training queries there were, are exactly the same.
  assert (g.valid, g.test) == (base.valid, base.test)
  assert g.train[:len(base.train)] == base.train
  extra = g.train[len(base.train):]
  assert len(extra) > 0
  held = {r for q in g.valid + g.test for r in q.item_index}
  texts = [q.text.lower() for q in g.train + g.valid + g.test]
  assert len(texts) == len(set(texts))
  for q in extra:
    template = g.template_of[q.text]
    assert template not in ('title', 'called', 'tag_era', 'tags_year'), q.text
    want = _brute_relevant(template, q.text)
    assert set(q.item_index) == want and 1 <= len(want) <= 6, (template, q.text)
    assert not want & held, q.text  # never a word about an evaluated item
  # More draws add more (distinct) phrasings; what they could not keep is counted.
  more = generate_queries(CAT, extra_train_draws=6, **kw)
  assert len(more.train) > len(g.train)
  assert sum(v for k, v in more.skipped.items() if k.startswith('extra_train_queries_')) > 0
  with pytest.raises(ValueError, match='extra_train_draws'):
    generate_queries(CAT, extra_train_draws=-1)


def test_query_examples_from_generated_queries():
  g = generate_queries(CAT, seed=0)
  for build, task in ((search_examples, 'search'), (query_grounding_examples, 'text_to_sid')):
    exs = build(g.train + g.valid + g.test, CAT, SID_MAP, VOCAB, max_items=2, seed=0)
    # One example per query; its type is the one its text names (titles name none: any).
    want = []
    for q in g.train + g.valid + g.test:
      named = [t for t in TYPES if re.search(rf'\b{t}s?\b', q.text, re.I)]
      type_name = named[0] if len(named) == 1 else None
      assert (type_name is None) == (g.template_of[q.text] == 'title')
      rows = [r for r in q.item_index if type_name in (None, TYPES[CAT.type_index[r]])]
      want.append((q.text, type_name, tuple(rows[:2])))
    assert len(exs) == len(want)
    for ex, (text, type_name, rows) in zip(exs, want):
      assert ex.task == task and ex.output_format == 'ids'
      _check_header(ex, type_name or 'any')
      assert ex.target_items == rows and ex.target_type == type_name
      assert ex.completion == ' '.join(_span(r) for r in rows)
      assert text in ex.prompt


# -- user understanding ------------------------------------------------------------------------

def test_user_profile_known_answers():
  # The first 8 movies; tags and decades counted here by brute force.
  hist = [i for i in range(len(CAT)) if TYPES[CAT.type_index[i]] == 'movie'][:8]
  tag_counts = {}
  for i in hist:
    for t in CAT.tags[i]:
      tag_counts[t] = tag_counts.get(t, 0) + 1
  want_tags = tuple(sorted(tag_counts, key=lambda t: (-tag_counts[t], t))[:2])
  decades = [(_year(i) // 10 * 10) for i in hist if _year(i)]
  top_decade = max(sorted(set(decades)), key=decades.count)
  user = User('u', {'age': 23, 'gender': 'F', 'occupation': 'librarian', 'zip_code': '1'})
  p = user_profile(CAT, hist, user, top_tags=2)
  assert p == UserProfile(tags=want_tags, eras=(f'{top_decade}s',), main_type='movie',
                          age='18-24', gender='female', occupation='librarian')
  assert user_profile(CAT, hist, User('v', {'age': 17})).age == 'under 18'
  assert user_profile(CAT, hist, User('v', {'age': 60})).age == '55 and over'
  # Synthetic users: the generator's topics and main type are the truth.
  syn = User('s', {'main_type': 'book', 'top_topics': ['jazz', 'space']})
  assert user_profile(CAT, hist, syn) == UserProfile(
      tags=('jazz', 'space'), eras=(f'{top_decade}s',), main_type='book')
  assert user_profile(CAT, [], None) == UserProfile()


def test_summary_scorer_known_answers():
  users = [User('a', {'occupation': 'writer'}), User('b', {'occupation': 'other'}),
           User('c', {'top_topics': ['classical music']})]
  vocab = SummaryVocabulary.build(CAT, users, extra_tags=['music'])
  profile = UserProfile(tags=('Comedy', 'Drama'), eras=('1990s',), main_type='movie',
                        age='25-34', gender='male', occupation='writer')
  text = ('Loves Comedy and Horror movies from the 1980s, and classical music. '
          'A woman aged 25-34.')
  named = named_attributes(text, vocab)
  assert named == {('tag', 'comedy'), ('tag', 'classical music'), ('main_type', 'movie'),
                   ('era', '1980s'), ('gender', 'female'), ('age', '25-34')}
  s = score_summary(text, profile, vocab)
  assert s['named'] == 6 and s['true'] == 7 and s['correct'] == 3
  assert s['precision'] == pytest.approx(3 / 6) and s['recall'] == pytest.approx(3 / 7)
  assert s['f1'] == pytest.approx(2 * (1 / 2) * (3 / 7) / (1 / 2 + 3 / 7))
  # Word boundaries: 'Warrior' is not the tag War, 'Sci-Fi' is one tag.
  assert named_attributes('Warriors of Sci-Fi', vocab) == {('tag', 'sci-fi')}
  assert score_summary('', profile, vocab)['precision'] == 0.0
  # A summary written from a profile names exactly the profile.
  rng = np.random.default_rng(0)
  for _ in range(5):
    text = profile_summary(profile, rng)
    assert named_attributes(text, vocab) == profile.attributes(), text
    assert score_summary(text, profile, vocab)['f1'] == 1.0


def test_user_profile_examples():
  seqs = {'u2': np.array([0, 1, 2, 4, 5], np.int32), 'u1': np.array([8, 9], np.int32),
          'u0': np.array([], np.int32)}
  users = {'u1': User('u1', {'age': 30, 'gender': 'M', 'occupation': 'writer'}),
           'u2': User('u2', summary='Given summary [SID]')}
  skipped = {}
  exs = user_profile_examples(seqs, CAT, SID_MAP, VOCAB, users=users, history_len=3, seed=0,
                              skipped=skipped)
  assert [ex.user_id for ex in exs] == ['u1', 'u2']
  assert skipped == {'users_without_history': 1}
  for ex in exs:
    assert ex.task == 'user_summary' and ex.output_format == 'text'
    _check_header(ex, 'user')
    assert re.findall(r'\[SID\].*?\[/SID\]', ex.prompt) == [_span(r) for r in seqs[ex.user_id][-3:]]
  assert 'Profile: male, aged 25-34, occupation writer.' in exs[0].completion
  assert exs[1].completion == 'Given summary (SID)'
  own = user_profile_examples(seqs, CAT, SID_MAP, VOCAB, users=users, use_given_summary=False)
  assert 'Given summary' not in own[1].completion
  vocab = SummaryVocabulary.build(CAT, users.values())
  profile = user_profile(CAT, seqs['u2'], users['u2'])
  assert score_summary(own[1].completion, profile, vocab)['f1'] == 1.0


# -- recsplanation -----------------------------------------------------------------------------

def _movie_rows():
  return [i for i in range(len(CAT)) if TYPES[CAT.type_index[i]] == 'movie']


def test_rationale_cites_relations_and_era():
  movies = _movie_rows()
  # Two movies with the same director (i % 4 equal) and no shared tag.
  pairs = [(a, b) for a in movies for b in movies
           if a != b and a % 4 == b % 4 and not set(CAT.tags[a]) & set(CAT.tags[b])]
  a, b = pairs[0]
  r = grounded_rationale(CAT, a, [b], np.random.default_rng(0))
  assert f'same director as "{CAT.titles[b]}"' in r and 'language' not in r
  # Era: the item's decade held by more than half of the history's dated items.
  dated = [i for i in movies if _year(i)]
  target = next(i for i in dated if _year(i) >= 1990)
  era_hist = [i for i in dated if i != target and 1990 <= _year(i) < 2000][:3]
  era_hist += [i for i in range(3, len(CAT), 4) if not _year(i)][:2]  # undated books
  r = grounded_rationale(CAT, target, era_hist, np.random.default_rng(0), max_ties=3)
  assert 'from the 1990s, like most of your history' in r
  assert f' from {_year(target)}' in r
  old = [i for i in dated if _year(i) < 1990]
  r = grounded_rationale(CAT, target, old, np.random.default_rng(0), max_ties=3)
  assert 'like most of your history' not in r


def test_generated_rationales_are_faithful():
  rng = np.random.default_rng(1)
  for trial in range(150):
    target = int(rng.integers(len(CAT)))
    history = [int(h) for h in rng.choice(len(CAT), int(rng.integers(0, 8)), replace=False)]
    r = grounded_rationale(CAT, target, history, rng, max_ties=int(rng.integers(1, 4)))
    c = check_rationale(r, CAT, target, history)
    assert c.faithful and c.unparsed == '', (r, c)
    assert c.num_claims >= 3  # title, type, and a tie or a type/new/repeat statement


def test_checker_catches_false_claims():
  movies = _movie_rows()
  target = next(i for i in movies if len(CAT.tags[i]) >= 2 and _year(i) and
                'kg:film.film.directed_by' in CAT.attributes[i] and i != 6 and i != 5)
  history = [h for h in movies if h != target][:6]
  title, tag = CAT.titles[target], CAT.tags[target][0]
  not_tag = next(t for t in GENRES if t not in CAT.tags[target])
  other = next(h for h in history if tag not in CAT.tags[h])
  same_dir = [h for h in history if h % 4 == target % 4]
  diff_dir = next(h for h in history if h % 4 != target % 4)
  base = f'{title}, a movie about {tag}'

  def kinds_false(text, hist=history):
    c = check_rationale(text, CAT, target, hist)
    return c.faithful, sorted(k.kind for k in c.claims if not k.supported)

  assert kinds_false(base + '.') == (True, [])
  assert kinds_false(f'{title}, a book about {tag}.') == (False, ['type'])
  assert kinds_false(f'{base} and {not_tag}.') == (False, ['tag'])
  assert kinds_false(f'{base} from {_year(target) + 1}.') == (False, ['year'])
  assert kinds_false(f'Some Other Film, a movie about {tag}.')[1] == ['title']
  assert kinds_false(f'{base}, which you engaged with before.') == (False, ['repeat'])
  assert kinds_false(f'{base}, new to your history.') == (True, [])
  assert kinds_false(f'{base}, new to your history.', history + [target]) == (False, ['new'])
  assert kinds_false(f'{base}; it shares {tag} with "{CAT.titles[other]}".') == (
      False, ['shared_tag'])
  assert kinds_false(f'{base}; like "Nowhere Film" ({tag}).') == (False, ['shared_tag'])
  assert kinds_false(f'{base}; same director as "{CAT.titles[diff_dir]}".') == (
      False, ['shared_relation'])
  if same_dir:
    assert kinds_false(f'{base}; same director as "{CAT.titles[same_dir[0]]}".') == (True, [])
  assert kinds_false(f'{base}; same sequel as "{CAT.titles[history[0]]}".') == (
      False, ['shared_relation'])
  wrong_era = '1970s' if _year(target) >= 1980 else '1990s'
  assert kinds_false(f'{base}; from the {wrong_era}, like most of your history.') == (
      False, ['era'])
  c = check_rationale(f'{base}. Also it is great fun.', CAT, target, history)
  assert c.faithful and c.unparsed == 'Also it is great fun'
  # A mixed completion: the SID span in front is skipped; tags joined by ' and ' split right.
  rock = next(i for i in range(len(CAT)) if 'Rock and Roll' in CAT.tags[i])
  text = f'{_span(rock)} {CAT.titles[rock]}, a {CAT.type_of(rock)} about Rock and Roll.'
  c = check_rationale(text, CAT, rock, [])
  assert c.faithful and [k.value for k in c.claims if k.kind == 'tag'] == ['Rock and Roll']


def test_mixed_recommendations_carry_faithful_rationales():
  targets = [Target(f'u{n}', np.array([(n * 7 + k) % len(CAT) for k in range(5)], np.int32),
                    (n * 11 + 3) % len(CAT)) for n in range(20)]
  exs = recommend_examples(targets, CAT, SID_MAP, VOCAB, mode='eval', output_format='mixed',
                           history_len=4, seed=0)
  for ex, tg in zip(exs, targets):
    _check_header(ex, ex.target_type)
    assert ex.completion.startswith(_span(tg.target) + ' ')
    c = check_rationale(ex.completion, CAT, tg.target, list(tg.history[-4:]))
    assert c.faithful and c.unparsed == '', ex.completion


# -- every task at once ------------------------------------------------------------------------

def _dataset(queries=()):
  rng = np.random.default_rng(5)
  users, items, times = [], [], []
  for u in range(10):
    for k in range(4 + u % 5):
      users.append(u)
      items.append(int(rng.integers(len(CAT))))
      times.append(100 * u + k)
  inter = Interactions([f'u{u}' for u in range(10)], np.array(users, np.int32),
                       np.array(items, np.int32), np.array(times, np.int64))
  people = {f'u{u}': User(f'u{u}', {'age': 20 + 3 * u, 'gender': 'MF'[u % 2],
                                    'occupation': ('writer', 'nurse')[u % 2]})
            for u in range(0, 10, 2)}
  people['u1'] = User('u1', summary='Reads a lot.')
  return Dataset('toy', CAT, inter, list(queries), people)


def test_build_task_examples_every_task_and_no_eval_query_in_training():
  from neo_jax.catalog.splits import fit_view, without_test
  from neo_jax.tasks.suite import build_test_examples, split_search_queries
  ds = _dataset()
  split = leave_one_out(ds.interactions)
  qs = split_search_queries(ds, valid_fraction=0.1, test_fraction=0.1, seed=1)
  held = frozenset({'u3', 'u4'})
  view = fit_view(ds, split, queries=qs.train, hide_summaries=held)
  suite = build_task_examples(view, without_test(split), SID_MAP, VOCAB, queries=qs,
                              summary_heldout=held, history_len=3, seed=1)
  assert suite.query_source == 'generated' and suite.generated is not None
  assert set(suite.eval) == {'rec_valid', 'search_valid'}
  tests = build_test_examples(suite.heldout, split.test, CAT, ds.users, SID_MAP, VOCAB,
                              history_len=3, seed=1)
  assert set(tests) == {'rec_test', 'explain_test', 'search_test', 'summary_test'}
  everything = suite.capability + [e for v in {**suite.eval, **tests}.values() for e in v]
  assert {e.task for e in everything} == {'recommend', 'search', 'user_summary', 'sid_to_text',
                                          'text_to_sid', 'sid_to_type'}
  for ex in everything:
    _check_header(ex, type_field(ex.task, ex.target_type))
  assert all(ex in suite.capability for ex in suite.grounding)

  def body(ex):
    return prompt_body(ex.prompt, ex.task, ex.target_type, ex.output_format)
  trained = {body(e) for e in suite.capability if e.task in ('search', 'text_to_sid')}
  evaluated = {body(e) for e in suite.eval['search_valid'] + tests['search_test']}
  assert evaluated and not trained & evaluated
  # No item an evaluated query asks for is the answer of a trained query.
  trained_items = {r for e in suite.capability if e.task == 'search' for r in e.target_items}
  assert not trained_items & {r for e in suite.eval['search_valid'] + tests['search_test']
                              for r in e.target_items}
  heldout = {q.text for q in suite.queries['valid'] + suite.heldout.test_queries
             if suite.generated.is_heldout(q)}
  assert heldout and heldout <= evaluated
  # Query grounding uses the generated training phrasings, not only titles.
  q_ground = {body(e) for e in suite.grounding if e.task == 'text_to_sid'}
  assert {q.text for q in suite.queries['train']} <= q_ground
  # User summaries: the given one where there is one, else the profile's; none of a held-out
  # user, whose summary only the test asks for.
  summaries = {e.user_id: e.completion for e in suite.capability if e.task == 'user_summary'}
  assert summaries['u1'] == 'Reads a lot.'
  assert 'occupation writer' in summaries['u0'] and 'Profile:' not in summaries['u5']
  assert not held & set(summaries)
  assert suite.skipped['user_summary_train/summary_heldout_users'] == 2
  assert [e.user_id for e in tests['summary_test']] == ['u3', 'u4']
  assert 'occupation writer' in tests['summary_test'][1].completion  # u4's profile
  mixed = tests['explain_test']
  assert len(mixed) == len(split.test) and all(e.output_format == 'mixed' for e in mixed)
  for ex, tg in zip(mixed, split.test):
    assert check_rationale(ex.completion, CAT, tg.target, list(tg.history[-3:])).faithful
  # Test material never reaches example building.
  with pytest.raises(ValueError, match='test targets'):
    build_task_examples(view, split, SID_MAP, VOCAB, queries=qs)
  # A dataset with its own queries uses them.
  own_ds = _dataset([Query('night stars', (0, 1))] * 3 + [Query('stars', (2,))])
  own_qs = split_search_queries(own_ds, valid_fraction=0.25, test_fraction=0.25, seed=1)
  assert own_qs.source == 'data' and own_qs.generated is None
  own = build_task_examples(fit_view(own_ds, split, queries=own_qs.train, hide_summaries=()),
                            without_test(split), SID_MAP, VOCAB, queries=own_qs, seed=1)
  assert own.query_source == 'data' and own.generated is None
