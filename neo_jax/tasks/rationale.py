"""Recsplanation: rationales that cite facts an item shares with a history, and a checker that
tells whether the facts a (generated) rationale cites are true.

A rationale follows the grammar documented in `prompts` (WHAT_TAGS ... TIE_ERA): the item's
title, type, tags and year, then what ties it to the history: the item itself seen before,
a tag shared with a history item, a knowledge-graph / attribute relation shared with a history
item (e.g. 'same director as "Heat"'), the era of most of the history, else the item's type
among the history's types, else that it is new. Titles other than the item's own are quoted.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Sequence

import numpy as np

from neo_jax.catalog.types import Catalog
from neo_jax.tasks import facts
from neo_jax.tasks import prompts
from neo_jax.tokenizer.sid_vocab import SID_CLOSE, SID_OPEN


def quote_title(title: str) -> str:
  """A title as rationales quote it: markup defused, double quotes made single."""
  return prompts.plain_text(title).replace('"', "'")


def _era_share(catalog: Catalog, history: Sequence[int], era: str) -> float:
  eras = [e for e in (facts.item_era(catalog, h) for h in history) if e]
  return eras.count(era) / len(eras) if eras else 0.0


def _tag_tie(catalog, target, history):
  target_tags = catalog.tags[target]
  for h in reversed(history):
    if h == target:
      continue
    shared = [t for t in target_tags if t in set(catalog.tags[h])]
    if shared:
      return shared[0], h
  return None


def _relation_tie(catalog, target, history):
  rels = facts.item_relations(catalog, target)
  if not rels:
    return None
  # The most telling relation first (a shared director before a shared language), then the
  # most recent history item that shares it.
  others = [(h, facts.item_relations(catalog, h)) for h in reversed(history) if h != target]
  for key in sorted(rels, key=facts.relation_priority):
    for h, other in others:
      if key in other and rels[key] & other[key]:
        return facts.relation_name(key), h
  return None


def grounded_rationale(catalog: Catalog, target: int, history: Sequence[int],
                       rng: np.random.Generator, max_tags: int = 2, max_ties: int = 2) -> str:
  """A short explanation of `target` built only from catalog facts.

  Names the item's title, type, up to `max_tags` tags and its year, then what ties it to
  the history: the item itself appearing earlier; else up to `max_ties` ties, in this order:
  a tag shared with the most recent history item that has one, a relation shared with a
  history item (the first relation in `facts.relation_priority` order that any history item
  shares, with the most recent such item), the
  item's era when it is that of more than half the history items with a year; else other
  items of the same type; else that it is new.
  """
  if max_ties < 1:
    raise ValueError(f'max_ties must be >= 1, got {max_ties}')
  target = int(target)
  title = prompts.plain_text(catalog.titles[target])
  type_name = catalog.type_of(target)
  tags = [prompts.plain_text(t) for t in catalog.tags[target][:max_tags]]
  if tags:
    what = prompts.WHAT_TAGS.format(title=title, type=type_name, tags=' and '.join(tags))
  else:
    what = prompts.WHAT.format(title=title, type=type_name)
  year = facts.item_year(catalog, target)
  if year is not None:
    what += prompts.YEAR.format(year=year)
  history = [int(h) for h in history]
  if target in history:
    return prompts.RATIONALE_REPEAT.format(what=what)
  ties = []
  tag = _tag_tie(catalog, target, history)
  if tag is not None:
    ties.append(prompts.TIE_TAG[int(rng.integers(len(prompts.TIE_TAG)))].format(
        tag=prompts.plain_text(tag[0]), other=quote_title(catalog.titles[tag[1]])))
  rel = _relation_tie(catalog, target, history)
  if rel is not None:
    ties.append(prompts.TIE_RELATION.format(relation=rel[0],
                                            other=quote_title(catalog.titles[rel[1]])))
  era = facts.era_of(year)
  if era is not None and _era_share(catalog, history, era) > 0.5:
    ties.append(prompts.TIE_ERA.format(era=era))
  if ties:
    return what + '; ' + '; '.join(ties[:max_ties]) + '.'
  if any(catalog.type_index[h] == catalog.type_index[target] for h in history):
    return prompts.RATIONALE_SAME_TYPE.format(what=what, type=type_name)
  return prompts.RATIONALE_NEW.format(what=what)


# -- faithfulness ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Claim:
  kind: str  # title, type, tag, year, repeat, same_type, new, shared_tag, shared_relation, era
  value: str
  supported: bool


@dataclasses.dataclass(frozen=True)
class RationaleCheck:
  """The claims found in a rationale and whether each is true of the item and the history.

  faithful: at least one claim, and every claim supported. unparsed: the text left after
  removing every recognised clause and punctuation ('' when the rationale follows the grammar
  fully); a checker cannot vouch for text it does not understand, so callers should report
  it (e.g. the share of rationales with unparsed text).
  """

  claims: tuple[Claim, ...]
  unparsed: str

  @property
  def num_claims(self) -> int:
    return len(self.claims)

  @property
  def num_supported(self) -> int:
    return sum(c.supported for c in self.claims)

  @property
  def faithful(self) -> bool:
    return bool(self.claims) and all(c.supported for c in self.claims)


_TAG_TIE_RES = (re.compile(r'it shares (?P<tag>[^;"]+?) with "(?P<other>[^"]*)"'),
                re.compile(r'like "(?P<other>[^"]*)" \((?P<tag>[^()]*)\)'))
_REL_TIE_RE = re.compile(r'same (?P<rel>[^;"]+?) as "(?P<other>[^"]*)"')
_ERA_TIE_RE = re.compile(r'from the (?P<era>\d{3}0s), like most of your history')
_REPEAT_RE = re.compile(r'which you engaged with before')
_SAME_TYPE_RE = re.compile(r'matching the (?P<type>[A-Za-z0-9_-]+) items in your history')
_NEW_RE = re.compile(r'new to your history')
_WHAT_RE = re.compile(r', a (?P<type>[A-Za-z0-9_-]+)(?: about (?P<tags>.+?))?'
                      r'(?: from (?P<year>\d{4}))?(?=[,;.]|$)')


def _split_tags(text: str, known: set[str]) -> list[str]:
  """'a and b and c' -> tags, joining pieces greedily when a known tag contains ' and '."""
  pieces = text.split(' and ')
  out, i = [], 0
  while i < len(pieces):
    for j in range(len(pieces), i, -1):
      cand = ' and '.join(pieces[i:j])
      if cand in known or j == i + 1:
        out.append(cand)
        i = j
        break
  return out


def check_rationale(text: str, catalog: Catalog, target: int,
                    history: Sequence[int]) -> RationaleCheck:
  """Parses the claims of a rationale about `target` (for a user with `history`) and checks
  each against the catalog.

  Args:
    text: the rationale; a leading `[SID]...[/SID]` span (as in a mixed completion) and
      whitespace are ignored.
    target: the catalog row the rationale explains.
    history: the rows the prompt showed, oldest first.

  Claims and when each is supported:
    title: the text starts with the item's title (as `prompts.plain_text` writes it);
    type / tag / year: the item's type, one of its tags, its year;
    repeat: the item is in the history; new: it is not; same_type: the named type is the
      item's and some history item has it;
    shared_tag: the tag is the item's and a history item with that (quoted) title has it too;
    shared_relation: some attribute with that readable name (`facts.relation_name`) has a
      value in common between the item and a history item with that title;
    era: the item's decade, held by more than half of the history items with a year.
  """
  target = int(target)
  history = [int(h) for h in history]
  text = text.strip()
  if text.startswith(SID_OPEN) and SID_CLOSE in text:
    text = text[text.index(SID_CLOSE) + len(SID_CLOSE):].strip()
  claims: list[Claim] = []
  title = prompts.plain_text(catalog.titles[target])
  rest = text
  if text.startswith(title):
    claims.append(Claim('title', title, True))
    rest = text[len(title):]
  else:
    head = re.split(r', a ', text, maxsplit=1)[0]
    claims.append(Claim('title', head, False))
    rest = text[len(head):]
  by_title = collections.defaultdict(list)
  for h in history:
    by_title[quote_title(catalog.titles[h])].append(h)
  item_tags = set(catalog.tags[target])
  item_tags_plain = {prompts.plain_text(t): t for t in item_tags}
  known_tags = {prompts.plain_text(t) for ts in catalog.tags for t in ts}
  consumed = []  # spans of `rest` that claims explain

  m = _WHAT_RE.match(rest)
  if m:
    consumed.append(m.span())
    claims.append(Claim('type', m['type'], m['type'] == catalog.type_of(target)))
    if m['tags']:
      for t in _split_tags(m['tags'], known_tags):
        claims.append(Claim('tag', t, t in item_tags_plain))
    if m['year']:
      claims.append(Claim('year', m['year'], facts.item_year(catalog, target) == int(m['year'])))
  for m in _REPEAT_RE.finditer(rest):
    consumed.append(m.span())
    claims.append(Claim('repeat', '', target in history))
  for m in _NEW_RE.finditer(rest):
    consumed.append(m.span())
    claims.append(Claim('new', '', target not in history))
  for m in _SAME_TYPE_RE.finditer(rest):
    consumed.append(m.span())
    t = m['type']
    claims.append(Claim('same_type', t, t == catalog.type_of(target) and
                        any(catalog.type_of(h) == t for h in history)))
  for pattern in _TAG_TIE_RES:
    for m in pattern.finditer(rest):
      consumed.append(m.span())
      tag = item_tags_plain.get(m['tag'])
      ok = tag is not None and any(tag in catalog.tags[h] for h in by_title.get(m['other'], ()))
      claims.append(Claim('shared_tag', f'{m["tag"]} / {m["other"]}', ok))
  for m in _REL_TIE_RE.finditer(rest):
    consumed.append(m.span())
    rels = facts.item_relations(catalog, target)
    ok = False
    for h in by_title.get(m['other'], ()):
      other = facts.item_relations(catalog, h)
      ok |= any(facts.relation_name(k) == m['rel'] and k in other and rels[k] & other[k]
                for k in rels)
    claims.append(Claim('shared_relation', f'{m["rel"]} / {m["other"]}', ok))
  for m in _ERA_TIE_RE.finditer(rest):
    consumed.append(m.span())
    era = m['era']
    ok = facts.item_era(catalog, target) == era and _era_share(catalog, history, era) > 0.5
    claims.append(Claim('era', era, ok))
  left = list(rest)
  for a, b in consumed:
    left[a:b] = [' '] * (b - a)
  unparsed = re.sub(r'[\s,;.]+', ' ', ''.join(left)).strip()
  return RationaleCheck(tuple(claims), unparsed)
