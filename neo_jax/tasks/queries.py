"""Search queries generated from item text, for datasets without real queries.

Each template turns facts of one item into a query; the query's relevant items are every item
of the type it names that has all the facts the query states (not only the item it came from), so
relevance is exact. The templates (`QUERY_TEMPLATES`):

| name | phrasing | facts (relevant items have all of them) | split |
|---|---|---|---|
| title | `{title}` | same title (case-insensitive), any type | train only |
| title_words | `{words} {type}` | the 1-2 title words | train, valid, test |
| tag_year | `{tag} {type}s from {year}` | the tag, the year | train, valid, test |
| two_tags | `{tag} and {tag2} {type}s` | both tags | train, valid, test |
| attribute | `{type}s with {relation} {value}` | the attribute value | train, valid, test |
| called | `the {type} called {words}` | the 1-2 title words | valid, test |
| tag_era | `a {tag} {type} from the {era}` | the tag, the decade | valid, test |
| tags_year | `{type} from {year} about {tag} and {tag2}` | both tags, the year | valid, test |

Title words are the title's words of 3+ letters that are not stop words, in title order
(two drawn at random when there are more). Tags, years and decades are `facts`' readings of
the item; `attribute` uses plain string attributes only (a user's `director`, `author`, ...),
never knowledge-graph attributes (`kg:`), whose values are opaque ids. Held-out templates
state the same kinds of facts in other words and are used only in evaluation, so evaluation
also measures phrasings never trained on.

The split is by relevant item (`builders.split_queries_by_item`): no item relevant to a valid
or test query is relevant to any training query, so a training query can never hand over an
evaluated item in other words (`{words} {type}` trained, `the {type} called {words}` tested,
with the same title words). Held-out-template queries are offered to test and valid first;
bare titles only ever train, and drop out of training when their item is held out (title ->
SID grounding from catalog metadata covers every item anyway).
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Sequence

import numpy as np

from neo_jax.catalog.types import Catalog, Query
from neo_jax.tasks import facts
from neo_jax.tasks.builders import split_queries_by_item


@dataclasses.dataclass(frozen=True)
class QueryTemplate:
  name: str
  text: str
  facts: tuple[str, ...]  # of: title, words, tag, tag2, year, era, relation
  heldout: bool


QUERY_TEMPLATES = (
    QueryTemplate('title', '{title}', ('title',), False),
    QueryTemplate('title_words', '{words} {type}', ('words',), False),
    QueryTemplate('tag_year', '{tag} {type}s from {year}', ('tag', 'year'), False),
    QueryTemplate('two_tags', '{tag} and {tag2} {type}s', ('tag', 'tag2'), False),
    QueryTemplate('attribute', '{type}s with {relation} {value}', ('relation',), False),
    QueryTemplate('called', 'the {type} called {words}', ('words',), True),
    QueryTemplate('tag_era', 'a {tag} {type} from the {era}', ('tag', 'era'), True),
    QueryTemplate('tags_year', '{type} from {year} about {tag} and {tag2}',
                  ('tag', 'tag2', 'year'), True),
)
STOP_WORDS = frozenset(
    'the and for with from into over under about this that his her its their our your a an of'
    ' to in on at by or as is are was were be not no part volume episode'.split())
_WORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9']*")


def title_words(title: str) -> list[str]:
  """Lower-cased words of 3+ characters that are not stop words, in title order."""
  return [w for w in (m.group(0).lower() for m in _WORD_RE.finditer(title))
          if len(w) >= 3 and w not in STOP_WORDS]


@dataclasses.dataclass
class GeneratedQueries:
  """Queries by part; `template_of[text]` names the template a query came from (every
  generated query, also those the split left out)."""

  train: list[Query]
  valid: list[Query]
  test: list[Query]
  template_of: dict[str, str]
  heldout_templates: tuple[str, ...]
  # Generated queries left out, by reason (too broad, duplicate text, and the split's
  # reasons of `builders.split_queries_by_item`): counted, not silent.
  skipped: dict[str, int]

  def is_heldout(self, query: Query) -> bool:
    return self.template_of[query.text] in self.heldout_templates


class _Index:
  """Inverted indexes (type, fact) -> rows, so relevance is exact and cheap at any size."""

  def __init__(self, catalog: Catalog):
    self.by = collections.defaultdict(set)
    for r in range(len(catalog)):
      t = catalog.type_of(r)
      # A bare title names no type: its relevant items are that title's items of every type.
      self.by['*', 'title', catalog.titles[r].strip().lower()].add(r)
      for w in set(title_words(catalog.titles[r])):
        self.by[t, 'word', w].add(r)
      for tag in catalog.tags[r]:
        self.by[t, 'tag', tag].add(r)
      year = facts.item_year(catalog, r)
      if year is not None:
        self.by[t, 'year', year].add(r)
        self.by[t, 'era', facts.era_of(year)].add(r)
      for key, v in catalog.attributes[r].items():
        if _plain_attribute(key, v):
          self.by[t, 'attr', key, v.strip()].add(r)

  def rows(self, keys) -> set[int]:
    sets = sorted((self.by[k] for k in keys), key=len)
    return set.intersection(*sets) if sets else set()


def _plain_attribute(key: str, v) -> bool:
  return (isinstance(v, str) and bool(v.strip()) and not key.startswith(facts.KG_PREFIX) and
          facts.relation_name(key) is not None)


def _fill(template: QueryTemplate, catalog: Catalog, row: int, rng: np.random.Generator):
  """(query text, index keys) for `row`, or None when the item lacks a fact the template
  needs."""
  t = catalog.type_of(row)
  fields, keys = {'type': t}, []
  tags = list(catalog.tags[row])
  year = facts.item_year(catalog, row)
  for fact in template.facts:
    if fact == 'title':
      fields['title'] = catalog.titles[row].strip()
      keys.append(('*', 'title', fields['title'].lower()))
    elif fact == 'words':
      words = title_words(catalog.titles[row])
      if not words:
        return None
      if len(words) > 2:
        pick = np.sort(rng.choice(len(words), 2, replace=False))
        words = [words[i] for i in pick]
      fields['words'] = ' '.join(words)
      keys += [(t, 'word', w) for w in words]
    elif fact == 'tag':
      if not tags:
        return None
      fields['tag'] = tags.pop(int(rng.integers(len(tags))))
      keys.append((t, 'tag', fields['tag']))
    elif fact == 'tag2':
      if not tags:
        return None
      fields['tag2'] = tags.pop(int(rng.integers(len(tags))))
      keys.append((t, 'tag', fields['tag2']))
    elif fact in ('year', 'era'):
      if year is None:
        return None
      fields['year'], fields['era'] = year, facts.era_of(year)
      keys.append((t, fact, year if fact == 'year' else fields['era']))
    elif fact == 'relation':
      attrs = sorted((k, v) for k, v in catalog.attributes[row].items()
                     if _plain_attribute(k, v))
      if not attrs:
        return None
      key, value = attrs[int(rng.integers(len(attrs)))]
      fields['relation'], fields['value'] = facts.relation_name(key), value.strip()
      keys.append((t, 'attr', key, value.strip()))
    else:
      raise ValueError(f'template {template.name!r} names unknown fact {fact!r}')
  return template.text.format(**fields), keys


def generate_queries(catalog: Catalog, *, queries_per_item: int = 1,
                     heldout_per_item: int = 1, max_relevant: int = 20,
                     valid_fraction: float = 0.05, test_fraction: float = 0.05,
                     templates: Sequence[QueryTemplate] = QUERY_TEMPLATES,
                     extra_train_draws: int = 0, seed: int = 0) -> GeneratedQueries:
  """Generated search queries, split by item so that evaluation asks only for items no
  training query is relevant to, and held-out templates are never trained on.

  Per item (in row order), up to `queries_per_item` of the applicable training templates and
  up to `heldout_per_item` of the held-out ones are drawn at random. A query whose text was
  already generated is skipped (its relevant set is the same), one with more than
  `max_relevant` relevant items is skipped as too broad to evaluate; both are counted.
  All of them are then split by `builders.split_queries_by_item(valid_fraction,
  test_fraction)` (fractions of all generated queries), held-out-template queries offered to
  test and valid first and never trained on, bare titles never evaluated (title grounding
  trains on them anyway); what the split leaves out is counted in `skipped` too.

  `extra_train_draws` > 0 then adds training queries only (`_extra_training_queries`): that
  many more draws per item of the training templates other than the bare title, each kept
  when its text is new, it is not too broad and none of its relevant items is relevant to a
  valid or test query. They come from their own random stream, after the split, so the valid
  and test queries are the same with or without them: more phrasings of the items a model
  may learn from, never a word about an evaluated item.

  Returns:
    `GeneratedQueries`; each `Query.item_index` lists the item the query came from first, then
    the other relevant items in row order. Deterministic given the arguments.
  """
  if queries_per_item < 0 or heldout_per_item < 0 or extra_train_draws < 0:
    raise ValueError('queries_per_item, heldout_per_item and extra_train_draws must be >= 0, '
                     f'got {queries_per_item}, {heldout_per_item}, {extra_train_draws}')
  if max_relevant < 1:
    raise ValueError(f'max_relevant must be >= 1, got {max_relevant}')
  names = [t.name for t in templates]
  if len(set(names)) != len(names):
    raise ValueError(f'template names must be unique, got {names}')
  index = _Index(catalog)
  rng = np.random.default_rng(seed)
  seen: dict[str, str] = {}
  skipped: collections.Counter = collections.Counter()
  generated = {False: [], True: []}
  for r in range(len(catalog)):
    for heldout, k in ((False, queries_per_item), (True, heldout_per_item)):
      pool = [t for t in templates if t.heldout == heldout]
      filled = []
      for n in rng.permutation(len(pool)):
        if len(filled) == k:
          break
        got = _fill(pool[n], catalog, r, rng)
        if got is not None:
          filled.append((pool[n], *got))
      for template, text, keys in filled:
        relevant = _vet(text, keys, r, index, seen, max_relevant, skipped, 'generated_queries')
        if relevant is not None:
          seen[text.lower()] = template.name
          generated[heldout].append(Query(text, _rows(r, relevant)))
  queries = [q for q in generated[False] + generated[True]]
  template_of = {q.text: seen[q.text.lower()] for q in queries}
  heldout_names = tuple(t.name for t in templates if t.heldout)
  # A bare title is what title grounding (`text_to_sid_examples`) trains on: evaluating it
  # would measure memorised pairs, so title queries never go to valid or test.
  train, valid, test, split_skipped = split_queries_by_item(
      queries, valid_fraction, test_fraction, seed,
      never_train=[q.text for q in generated[True]],
      never_heldout=[q.text for q in generated[False] if template_of[q.text] == 'title'])
  skipped.update(split_skipped)
  if extra_train_draws:
    held = {r for q in valid + test for r in q.item_index}
    extra = _extra_training_queries(catalog, index, templates, extra_train_draws, held, seen,
                                    max_relevant, seed, skipped)
    template_of.update({q.text: seen[q.text.lower()] for q in extra})
    train = train + extra
  return GeneratedQueries(train, valid, test, template_of, heldout_names, dict(skipped))


def _extra_training_queries(catalog: Catalog, index: _Index,
                            templates: Sequence[QueryTemplate], draws: int, held: set[int],
                            seen: dict[str, str], max_relevant: int, seed: int,
                            skipped: collections.Counter) -> list[Query]:
  """`draws` rounds over the items not in `held`: per item one applicable training template
  other than the bare title, drawn at random and filled. A query is kept when its text is not
  in `seen` (which it joins), it has at most `max_relevant` relevant items and none of them is
  in `held`; the others are counted in `skipped` ('extra_train_queries_...')."""
  pool = [t for t in templates if not t.heldout and t.facts != ('title',)]
  out = []
  if not pool:
    return out
  for d in range(draws):
    rng = np.random.default_rng([seed, 7919, d])  # its own stream: the split is unchanged
    for r in range(len(catalog)):
      if r in held:
        continue
      for n in rng.permutation(len(pool)):
        got = _fill(pool[n], catalog, r, rng)
        if got is not None:
          break
      else:
        continue
      text, keys = got
      relevant = _vet(text, keys, r, index, seen, max_relevant, skipped, 'extra_train_queries')
      if relevant is None:
        continue
      if relevant & held:
        skipped['extra_train_queries_relevant_items_held_out'] += 1
        continue
      seen[text.lower()] = pool[n].name
      out.append(Query(text, _rows(r, relevant)))
  return out


def _vet(text: str, keys, row: int, index: _Index, seen: dict[str, str], max_relevant: int,
         skipped: collections.Counter, reason: str) -> set[int] | None:
  """The rows relevant to a query generated from item `row`, or None (counted in `skipped`
  as '<reason>_duplicate_text' or '<reason>_too_broad') when its text is already in `seen`
  (its relevant set is the same) or it has more than `max_relevant` relevant items."""
  if text.lower() in seen:
    skipped[f'{reason}_duplicate_text'] += 1
    return None
  relevant = index.rows(keys)
  if row not in relevant:
    raise AssertionError(f'query {text!r} does not match its own item {row}')
  if len(relevant) > max_relevant:
    skipped[f'{reason}_too_broad'] += 1
    return None
  return relevant


def _rows(row: int, relevant: set[int]) -> tuple[int, ...]:
  """A query's `item_index`: the item it came from first, then the others in row order."""
  return (row,) + tuple(sorted(relevant - {row}))
