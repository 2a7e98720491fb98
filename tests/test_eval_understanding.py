"""Steerability, user-understanding and faithfulness scorers against hand-made cases whose
answers are worked out by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neo_jax.catalog.types import Catalog
from neo_jax.eval import understanding as u
from neo_jax.tasks import facts

S1 = '[SID]<movie:0:1><movie:1:2>[/SID]'
S2 = '[SID]<book:0:3><book:1:0>[/SID]'


def _catalog():
  return Catalog(ids=['a', 'b', 'c'], type_names=('book', 'movie'),
                 type_index=np.array([1, 0, 1], np.int32),
                 titles=['Night Garden', 'Blue Train', 'Red Sky'], descriptions=['', '', ''],
                 tags=[('jazz', 'noir'), ('trains', 'jazz'), ()],
                 attributes=[{'year': 1994}, {}, {}], popularity=np.zeros(3, np.float32))


def test_span_types_and_formats():
  assert u.span_types(f'{S1} and {S2}') == ['movie', 'book']
  assert u.span_types('no spans here') == []
  # An unterminated last span still names its type; a span without codes names none.
  assert u.span_types(f'{S2} [SID]<podcast:0:1>') == ['book', 'podcast']
  assert u.span_types('[SID][/SID]') == [None]
  assert u.output_format_of(f'{S1}, {S2}') == 'ids'
  assert u.output_format_of(f'{S1} Night Garden, a movie.') == 'mixed'
  assert u.output_format_of('Night Garden') == 'text'
  assert u.output_format_of(' , ') == 'empty'


def test_type_steerability_counts_items():
  # Answers: 3 items of which 2 on type; 1 item on type; 2 items, none (one unknown).
  out = u.type_steerability(['movie', 'book', 'movie'],
                            [['movie', 'movie', 'book'], ['book'], ['book', None]])
  assert out['type_steerability'] == pytest.approx(3 / 6)
  assert out['items'] == 6
  assert out['answers_all_on_type'] == pytest.approx(1 / 3)
  empty = u.type_steerability(['movie'], [[]])
  assert math.isnan(empty['type_steerability']) and empty['items'] == 0
  with pytest.raises(ValueError, match='2 requested types but 1 answers'):
    u.type_steerability(['a', 'b'], [['a']])


def test_format_steerability():
  texts = [f'{S1}', 'Night Garden', f'{S1} Night Garden', 'Night Garden']
  out = u.format_steerability(['ids', 'text', 'mixed', 'ids'], texts)
  assert out['format_steerability'] == pytest.approx(3 / 4)
  assert out['format_steerability/ids'] == pytest.approx(1 / 2)
  assert out['format_steerability/text'] == 1.0 and out['format_steerability/mixed'] == 1.0
  assert out['format_steerability/text_check'] == 'form only (no catalog titles given)'
  with pytest.raises(ValueError, match="unknown output format 'xml'"):
    u.format_steerability(['xml'], ['x'])


TITLES = ['Toy Story (1995)', 'Usual Suspects, The (1995)', 'War, The (1994)',
          'City of Lost Children, The (Cité des enfants perdus, La) (1995)',
          'Dr. Strangelove or: How I Learned to Stop Worrying and Love the Bomb (1963)']


def test_title_matcher():
  m = u.TitleMatcher(TITLES)
  assert m.find('Toy Story (1995)') == [0]
  # Case, punctuation, spacing and the year do not matter; the article may lead or trail.
  assert m.find('you may like   toy-story, and THE USUAL SUSPECTS!') == [0, 1]
  assert m.find('Usual Suspects, The (1995)') == [1]
  assert m.find('the city of lost children') == [3]
  assert m.find('Cite des enfants perdus, La') == [3]
  assert m.find('Dr Strangelove or How I Learned to Stop Worrying and Love the Bomb') == [4]
  # Whole words only; no sentence break where the title has none; the bare article-less
  # 'War' (a genre) is not the title 'War, The'.
  assert m.find('toy storyteller') == [] and m.find('story toy') == []
  assert m.find('Mostly into Drama and War. The rest is comedy.') == []
  assert m.find('Mostly into Drama and War.') == []
  assert m.find('The War') == [2]
  assert u.title_variants('Usual Suspects, The (1995)') == {('usual', 'suspects', 'the'),
                                                           ('the', 'usual', 'suspects')}


def test_format_steerability_checks_the_answer():
  m = u.TitleMatcher(TITLES)
  summary = 'Favourite genres: Drama and War. Mostly movies from the 1990s. Profile: male.'
  cases = [
      ('text', summary, False),                       # a user summary names no item
      ('text', 'Toy Story (1995)', True),             # a title
      ('text', 'I recommend the usual suspects.', True),
      ('text', f'Toy Story (1995) {S1}', False),      # a title, but a span too
      ('text', 'Toy Story [SID]<movie:0:1>', False),  # unterminated span
      ('ids', S1, True),
      ('ids', f'{S1}, {S2}.', True),                  # punctuation between spans
      ('ids', f'{S1} Toy Story', False),              # extra prose
      ('ids', '[SID]<movie:1:2><movie:0:1>[/SID]', False),  # levels out of order
      ('ids', '[SID]<movie:0:1><book:1:2>[/SID]', False),   # two types in one span
      ('ids', '[SID][/SID]', False),                  # empty span
      ('ids', f'{S1} <movie:0:3>', False),            # a code outside a span
      ('ids', f'{S1} [SID]<movie:0:1>', False),       # well-formed then unterminated
      ('mixed', f'{S1} Toy Story, a movie.', True),
      ('mixed', S1, False),                           # no words
      ('mixed', 'Toy Story, a movie.', False),        # no span
      ('mixed', f'[SID]<movie:1:2>[/SID] Toy Story', False),  # no well-formed span
  ]
  for fmt, text, want in cases:
    assert u.answers_format(fmt, text, m) is want, (fmt, text)
  out = u.format_steerability([c[0] for c in cases], [c[1] for c in cases], TITLES)
  assert out['format_steerability'] == pytest.approx(5 / len(cases))
  assert out['format_steerability/text'] == pytest.approx(2 / 5)
  assert out['format_steerability/ids'] == pytest.approx(2 / 8)
  assert out['format_steerability/mixed'] == pytest.approx(1 / 4)
  # Text requests naming an item (markup or not): the title, the usual suspects, the title
  # beside a span, the unterminated one.
  assert out['format_steerability/text_names_item'] == pytest.approx(4 / 5)
  assert out['format_steerability/text_check'] == 'names a catalog title'
  assert out['answers'] == len(cases)
  # The form alone would pass the summary (text) and more.
  assert out['format_steerability/form_only'] > out['format_steerability']
  # A prebuilt matcher gives the same figures as the titles.
  assert u.format_steerability([c[0] for c in cases], [c[1] for c in cases], m) == out


def test_retype_prompt_changes_only_the_type():
  p = 'Task: recommend. Type: movie. Format: ids. History: [SID]<movie:0:1>[/SID]. Answer: '
  q = u.retype_prompt(p, 'recommend', 'movie', 'book')
  assert q == p.replace('Type: movie.', 'Type: book.')
  with pytest.raises(ValueError, match='no single'):
    u.retype_prompt(p, 'recommend', 'podcast', 'book')


def test_summary_understanding_hand_made():
  vocab = facts.SummaryVocabulary(tags=frozenset({'drama', 'comedy', 'romance'}),
                                  types=frozenset({'movie'}),
                                  occupations=frozenset({'student'}))
  profile = facts.UserProfile(tags=('Drama', 'Comedy'), eras=('1990s',), main_type='movie',
                              age='25-34', gender='male', occupation='student')
  # True attributes: drama, comedy, 1990s, movie, 25-34, male, student (7).
  # Named: drama (true), romance (false), 1990s (true), movies (true) -> precision 3/4,
  # recall 3/7.
  out = u.summary_understanding(['Mostly into Drama and Romance. Mostly movies from the 1990s.',
                                 'Nothing of note.'], [profile, profile], vocab)
  p1, r1 = 3 / 4, 3 / 7
  assert out['summary_precision'] == pytest.approx((p1 + 0.0) / 2)
  assert out['summary_recall'] == pytest.approx((r1 + 0.0) / 2)
  assert out['summary_f1'] == pytest.approx((2 * p1 * r1 / (p1 + r1)) / 2)
  assert out['summary_empty'] == pytest.approx(1 / 2)
  assert out['summaries'] == 2
  assert math.isnan(u.summary_understanding([], [], vocab)['summary_precision'])


def test_rationale_faithfulness_hand_made():
  cat = _catalog()
  good = f'{S1} Night Garden, a movie about jazz and noir from 1994; it shares jazz with "Blue Train".'
  # Wrong type and a tag the item does not have: two unsupported claims.
  bad = f'{S1} Night Garden, a book about trains.'
  out = u.rationale_faithfulness([good, bad, 'no item named', f'{S1} '], cat, [0, 0, None, 0],
                                 [[1], [1], [1], [1]])
  # good: title, type, jazz, noir, year, shared_tag = 6 claims, all true; bad: title (true),
  # type (false), trains (false) = 3 claims; the last names an item but explains nothing.
  assert out['faithful'] == pytest.approx(1 / 4)
  assert out['claims_supported'] == pytest.approx(7 / 9)
  assert out['no_item'] == pytest.approx(1 / 4)
  assert out['no_rationale'] == pytest.approx(1 / 4)
  assert out['unparsed'] == 0.0
  assert out['explanations'] == 4
  with pytest.raises(ValueError):
    u.rationale_faithfulness(['x'], cat, [0, 1], [[1]])
