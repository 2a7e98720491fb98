"""Facts about items and users read from the data, as the text tasks cite them.

Item facts (all optional, read from `Catalog`):
  tags: `Catalog.tags` (MovieLens: genres; synthetic data: topic words).
  year: `attributes['year']` (or `'release_year'`), an int or a string of 4 digits.
  era: the decade of the year, written '1990s'.
  relations: every other string attribute, as a set of values: knowledge-graph attributes
    `kg:<relation>` (MovieLens: Freebase entity ids joined by '|') split on '|', any other
    string attribute (e.g. a user's own `director`) as one value. Each has a readable name
    (`relation_name`): 'kg:film.film.directed_by' -> 'director'. Values of KG relations are
    opaque ids, so text never names them; it names the relation and the item that shares it.

User facts (`UserProfile`, from the user's own data):
  tags: the most frequent tags over the history (ties: alphabetical), or on synthetic data
    the generator's `attributes['top_topics']`;
  eras: the most frequent decade(s) of the history's items that have a year;
  main_type: the most frequent entity type of the history (or `attributes['main_type']`);
  demographics: from `User.attributes`: `age` as a bracket ('18-24', ...), `gender`
    ('M'/'F' or words) as 'male'/'female', `occupation` as given.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any, Iterable, Mapping, Sequence

from neo_jax.catalog.types import Catalog, User

YEAR_KEYS = ('year', 'release_year')
KG_PREFIX = 'kg:'
KG_JOIN = '|'
# Attributes that are not facts to cite: ids and numbers (years are handled on their own).
NOT_RELATIONS = frozenset(YEAR_KEYS + ('freebase_id', 'id', 'url', 'imdb_url', 'zip_code'))
# Readable names of knowledge-graph relations (the last part of a Freebase relation name),
# in the order rationales prefer them; any other relation reads as its last part with '_'
# as spaces. Relations that do not describe a shared property (sequel, prequel) are skipped.
RELATION_NAMES = {
    'directed_by': 'director',
    'written_by': 'writer',
    'actor': 'actor',
    'starring': 'actor',
    'produced_by': 'producer',
    'cinematography': 'cinematographer',
    'production_companies': 'production company',
    'subjects': 'subject',
    'award_won': 'award',
    'genre': 'genre',
    'award_nomination': 'award nomination',
    'rating': 'content rating',
    'country': 'country',
    'language': 'language',
}
SKIP_RELATIONS = frozenset({'sequel', 'prequel'})
# Age brackets (lower bound inclusive) used by MovieLens-style surveys.
AGE_BRACKETS = ((0, 'under 18'), (18, '18-24'), (25, '25-34'), (35, '35-44'), (45, '45-54'),
                (55, '55 and over'))
GENDERS = {'m': 'male', 'male': 'male', 'man': 'male', 'f': 'female', 'female': 'female',
           'woman': 'female'}


def relation_name(key: str) -> str | None:
  """Readable name of an attribute key, or None if it is not a citable relation."""
  if key in NOT_RELATIONS:
    return None
  if key.startswith(KG_PREFIX):
    last = key[len(KG_PREFIX):].rsplit('.', 1)[-1]
    if last in SKIP_RELATIONS:
      return None
    return RELATION_NAMES.get(last, last.replace('_', ' '))
  return key.replace('_', ' ')


def item_year(catalog: Catalog, row: int) -> int | None:
  """The item's year, or None when it has none (or an unreadable one)."""
  attrs = catalog.attributes[row]
  for key in YEAR_KEYS:
    v = attrs.get(key)
    if isinstance(v, bool):
      continue
    if isinstance(v, int) and 1000 <= v <= 2999:
      return v
    if isinstance(v, float) and v.is_integer() and 1000 <= v <= 2999:
      return int(v)
    if isinstance(v, str) and re.fullmatch(r'[12]\d{3}', v.strip()):
      return int(v)
  return None


def era_of(year: int | None) -> str | None:
  """1994 -> '1990s'."""
  return None if year is None else f'{year // 10 * 10}s'


def item_era(catalog: Catalog, row: int) -> str | None:
  return era_of(item_year(catalog, row))


def item_relations(catalog: Catalog, row: int) -> dict[str, frozenset[str]]:
  """relation key -> its values, for every citable string attribute of the item."""
  out = {}
  for key, v in catalog.attributes[row].items():
    if not isinstance(v, str) or not v.strip() or relation_name(key) is None:
      continue
    values = v.split(KG_JOIN) if key.startswith(KG_PREFIX) else [v.strip()]
    values = frozenset(x for x in values if x)
    if values:
      out[key] = values
  return out


def relation_priority(key: str) -> tuple[int, str]:
  """Sort key: the relations of `RELATION_NAMES` in its order first, then the rest by name."""
  last = key[len(KG_PREFIX):].rsplit('.', 1)[-1] if key.startswith(KG_PREFIX) else key
  order = list(RELATION_NAMES)
  return (order.index(last) if last in order else len(order), key)


def age_bracket(age: Any) -> str | None:
  if isinstance(age, bool):
    return None
  try:
    a = int(age)
  except (TypeError, ValueError):
    return None
  if a < 0:
    return None
  label = None
  for lower, name in AGE_BRACKETS:
    if a >= lower:
      label = name
  return label


def gender_word(gender: Any) -> str | None:
  return GENDERS.get(str(gender).strip().lower()) if gender is not None else None


@dataclasses.dataclass(frozen=True)
class UserProfile:
  """What a user summary may state about a user, each from the user's own data."""

  tags: tuple[str, ...] = ()
  eras: tuple[str, ...] = ()
  main_type: str | None = None
  age: str | None = None  # an `AGE_BRACKETS` label
  gender: str | None = None  # 'male' / 'female'
  occupation: str | None = None

  def attributes(self) -> set[tuple[str, str]]:
    """(kind, value) pairs, lower-cased: what a summary is scored against."""
    out = {('tag', t.lower()) for t in self.tags} | {('era', e) for e in self.eras}
    for kind in ('main_type', 'age', 'gender', 'occupation'):
      v = getattr(self, kind)
      if v:
        out.add((kind, v.lower()))
    return out


def _top(counter: collections.Counter, k: int) -> tuple[str, ...]:
  return tuple(v for v, _ in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:k])


def user_profile(catalog: Catalog, history: Sequence[int], user: User | None = None, *,
                 top_tags: int = 3, top_eras: int = 1) -> UserProfile:
  """The user's profile from their history (catalog rows) and attributes.

  Args:
    history: the user's items, any order (counts matter, not order).
    user: the `User` record, if any: demographics, and on synthetic data `top_topics` /
      `main_type`, which replace the counted tags / type (they are the generator's truth).
    top_tags, top_eras: how many tags / decades to keep.
  """
  if top_tags < 0 or top_eras < 0:
    raise ValueError(f'top_tags and top_eras must be >= 0, got {top_tags}, {top_eras}')
  history = [int(h) for h in history]
  attrs = user.attributes if user is not None else {}
  tags = collections.Counter(t for h in history for t in catalog.tags[h])
  eras = collections.Counter(e for e in (item_era(catalog, h) for h in history) if e)
  types = collections.Counter(catalog.type_of(h) for h in history)
  topics = attrs.get('top_topics')
  if isinstance(topics, (list, tuple)) and topics:
    top = tuple(str(t) for t in topics[:top_tags])
  else:
    top = _top(tags, top_tags)
  main_type = attrs.get('main_type')
  if not isinstance(main_type, str) or not main_type:
    main_type = _top(types, 1)[0] if types else None
  occupation = attrs.get('occupation')
  occupation = str(occupation).strip() if occupation not in (None, '') else None
  return UserProfile(tags=top, eras=_top(eras, top_eras), main_type=main_type,
                     age=age_bracket(attrs.get('age')),
                     gender=gender_word(attrs.get('gender')), occupation=occupation)


# -- scoring a generated summary ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SummaryVocabulary:
  """The attribute values a summary is searched for (lower-case)."""

  tags: frozenset[str]
  types: frozenset[str]
  occupations: frozenset[str]

  @classmethod
  def build(cls, catalog: Catalog, users: Iterable[User] = (),
            extra_tags: Iterable[str] = ()) -> 'SummaryVocabulary':
    """Every tag of the catalog (+ `extra_tags`, + synthetic users' `top_topics`), every entity
    type, every occupation among `users`."""
    users = list(users)
    tags = {t.lower() for ts in catalog.tags for t in ts} | {t.lower() for t in extra_tags}
    occupations = set()
    for u in users:
      topics = u.attributes.get('top_topics')
      if isinstance(topics, (list, tuple)):
        tags |= {str(t).lower() for t in topics}
      occ = u.attributes.get('occupation')
      if occ not in (None, ''):
        occupations.add(str(occ).strip().lower())
    return cls(frozenset(tags), frozenset(t.lower() for t in catalog.type_names),
               frozenset(occupations))


def _phrase_re(phrase: str) -> re.Pattern:
  return re.compile(r'(?<![\w-])' + re.escape(phrase) + r'(?![\w-])', re.IGNORECASE)


def named_attributes(text: str, vocab: SummaryVocabulary) -> set[tuple[str, str]]:
  """The (kind, value) attributes a summary names, by these string rules (case-insensitive):

  tag: a vocabulary tag as a whole phrase (not inside a longer word or hyphenated word); a
    tag that is part of a longer named tag is not counted again ('music' in 'classical music');
  era: a decade written '1990s';
  main_type: an entity type, singular or plural ('movie', 'movies');
  age: an `AGE_BRACKETS` label ('25-34', 'under 18', '55 and over');
  gender: 'male', 'female', 'man', 'woman' (as whole words);
  occupation: a vocabulary occupation as a whole phrase.
  """
  out: set[tuple[str, str]] = set()
  found = [t for t in vocab.tags if _phrase_re(t).search(text)]
  for t in found:
    if not any(t != o and _phrase_re(t).search(o) for o in found):
      out.add(('tag', t))
  out |= {('era', m) for m in re.findall(r'(?<!\d)(1[0-9]\d0s|20\d0s)(?!\w)', text)}
  for t in vocab.types:
    if _phrase_re(t).search(text) or _phrase_re(t + 's').search(text):
      out.add(('main_type', t))
  for _, label in AGE_BRACKETS:
    if _phrase_re(label).search(text):
      out.add(('age', label))
  for word, g in GENDERS.items():
    if len(word) > 1 and _phrase_re(word).search(text):
      out.add(('gender', g))
  for occ in vocab.occupations:
    if _phrase_re(occ).search(text):
      out.add(('occupation', occ))
  # A tag that is also an occupation or a type word counts once, as the more specific kind.
  out -= {('tag', v) for k, v in out if k in ('occupation', 'main_type')}
  return out


def score_summary(text: str, profile: UserProfile,
                  vocab: SummaryVocabulary) -> dict[str, float | int]:
  """Precision / recall of the attributes a (generated) summary names against the profile.

  precision = |named & true| / |named| (0 when nothing is named), recall = |named & true| /
  |true|, both over (kind, value) pairs; see `named_attributes` for the matching rules.
  """
  named = named_attributes(text, vocab)
  true = profile.attributes()
  hit = len(named & true)
  precision = hit / len(named) if named else 0.0
  recall = hit / len(true) if true else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {'precision': precision, 'recall': recall, 'f1': f1, 'named': len(named),
          'true': len(true), 'correct': hit}


def vocabulary_from(catalog: Catalog, users: Mapping[str, User] | Iterable[User] = ()
                    ) -> SummaryVocabulary:
  users = users.values() if isinstance(users, Mapping) else users
  return SummaryVocabulary.build(catalog, users)
