"""Prompt templates: every prompt states the task, the target type and the output format.

A prompt is text with SID markup that ends with a space, so that `prompt + completion` is the
full training text and the first thing a model writes is the completion's first word or
`[SID]`. Every template contains the same header `Task: <name>. Type: <type>. Format: <fmt>.`
(only its position and the surrounding words vary), so task conditioning stays unambiguous for a
tiny model while the phrasing still varies. Prompts are kept short: the SID spans of the
history dominate their length.
"""

from __future__ import annotations

import re

import numpy as np

from neo_jax.sid.types import SIDMap
from neo_jax.tasks.types import OUTPUT_FORMATS, TASKS
from neo_jax.tokenizer.sid_vocab import CODE_RE, SID_CLOSE, SID_OPEN, SIDVocab

# The words each task is called by in prompts.
TASK_NAMES = {
    'recommend': 'recommend',
    'search': 'search',
    'user_summary': 'summarize user',
    'sid_to_text': 'describe item',
    'text_to_sid': 'find item',
    'sid_to_type': 'name item type',
    'history': 'continue history',
}
# The `Type:` field where the output is not an item of one entity type.
USER_TYPE = 'user'  # user_summary: the output describes the user
# sid_to_type (naming the type would give the answer away), a search query that names no
# type, a recommendation request with no history, a mixed-type history window.
ANY_TYPE = 'any'
NO_HISTORY = 'none'

# Fields: {header} always; {history}, {query}, {item}, {text} per task.
TEMPLATES: dict[str, tuple[str, ...]] = {
    'recommend': (
        '{header} History: {history}. Answer: ',
        '{header} The user engaged with {history}. Next: ',
        'History: {history}. {header} Answer: ',
    ),
    'search': (
        '{header} Query: {query}. Answer: ',
        '{header} Find items for: {query}. Answer: ',
        'Query: {query}. {header} Answer: ',
    ),
    'user_summary': (
        '{header} History: {history}. Answer: ',
        '{header} The user engaged with {history}. Summary: ',
        'History: {history}. {header} Answer: ',
    ),
    'sid_to_text': (
        '{header} Item: {item}. Answer: ',
        '{header} What is {item}? Answer: ',
        'Item: {item}. {header} Answer: ',
    ),
    'text_to_sid': (
        '{header} Item: {text}. Answer: ',
        '{header} Which item is this: {text}? Answer: ',
        'Item: {text}. {header} Answer: ',
    ),
    'sid_to_type': (
        '{header} Item: {item}. Answer: ',
        '{header} What kind of item is {item}? Answer: ',
        'Item: {item}. {header} Answer: ',
    ),
    # The completion continues the history itself (see builders.history_examples); the words
    # before it are those that precede a history in the recommend prompts.
    'history': (
        '{header} History: {history}',
        '{header} The user engaged with {history}',
    ),
}
# Rationales of 'mixed' completions (see builders.grounded_rationale and check_rationale); every
# field is a fact from the catalog. Grammar (what the faithfulness checker parses):
#   rationale := what (REPEAT | ('; ' tie)+ | SAME_TYPE | NEW) '.'
#   what      := WHAT_TAGS or WHAT, then YEAR when the item has a year
# Titles other than the item's own are quoted ("..."), so they can be found again in the text.
WHAT_TAGS = '{title}, a {type} about {tags}'
WHAT = '{title}, a {type}'
YEAR = ' from {year}'
RATIONALE_REPEAT = '{what}, which you engaged with before.'
RATIONALE_SHARED = ('{what}; it shares {tag} with "{other}".', '{what}; like "{other}" ({tag}).')
RATIONALE_SAME_TYPE = '{what}, matching the {type} items in your history.'
RATIONALE_NEW = '{what}, new to your history.'
# Ties, joined by '; ' after `what`: a tag shared with a history item (the two phrasings of
# RATIONALE_SHARED), a knowledge-graph / attribute relation shared with a history item, the
# item's era being that of most of the history items with a year.
TIE_TAG = ('it shares {tag} with "{other}"', 'like "{other}" ({tag})')
TIE_RELATION = 'same {relation} as "{other}"'
TIE_ERA = 'from the {era}, like most of your history'
# User summaries written from a profile (builders.profile_summary); each part is optional.
SUMMARY_TAGS = ('Favourite {noun}: {tags}.', 'Mostly into {tags}.')
SUMMARY_TYPE_ERA = ('Mostly {type}s from the {era}.', 'Prefers {type}s from the {era}.')
SUMMARY_TYPE = 'Mostly {type}s.'
SUMMARY_PROFILE = 'Profile: {parts}.'

_FIELDS = {'recommend': 'history', 'search': 'query', 'user_summary': 'history',
           'sid_to_text': 'item', 'text_to_sid': 'text', 'sid_to_type': 'item',
           'history': 'history'}

# Free text (titles, queries, summaries) must never be parsed as SIDs by `Tokenizer.encode`.
_MARKUP_RE = re.compile(re.escape(SID_OPEN) + '|' + re.escape(SID_CLOSE) + '|' + CODE_RE.pattern)


def header(task: str, type_name: str, output_format: str) -> str:
  """`Task: <name>. Type: <type>. Format: <format>.`"""
  if task not in TASKS:
    raise ValueError(f'unknown task {task!r}; known: {TASKS}')
  if output_format not in OUTPUT_FORMATS:
    raise ValueError(f'unknown output format {output_format!r}; known: {OUTPUT_FORMATS}')
  return f'Task: {TASK_NAMES[task]}. Type: {type_name}. Format: {output_format}.'


def render_prompt(task: str, type_name: str, output_format: str,
                  template: int | np.random.Generator, body: str) -> str:
  """Fills one template of `task` with its one body field.

  Args:
    task: one of `TASKS`.
    type_name: the `Type:` field (entity type, or `USER_TYPE` / `ANY_TYPE`).
    output_format: one of `OUTPUT_FORMATS`.
    template: index into `TEMPLATES[task]`, or a generator that draws one uniformly.
    body: the history / query / item / text, already rendered (SID markup allowed).
  """
  if task not in TEMPLATES:
    raise ValueError(f'unknown task {task!r}; known: {TASKS}')
  templates = TEMPLATES[task]
  if isinstance(template, np.random.Generator):
    template = int(template.integers(len(templates)))
  if not 0 <= template < len(templates):
    raise ValueError(f'template {template} out of range [0, {len(templates)}) for {task}')
  return templates[template].format(header=header(task, type_name, output_format),
                                    **{_FIELDS[task]: body})


def type_field(task: str, target_type: str | None) -> str:
  """What the `Type:` field of a `task` prompt says for an example with `target_type`:
  `USER_TYPE` for user summaries, `ANY_TYPE` for sid_to_type and wherever `target_type` is
  None (a query naming no type, an empty history, a mixed-type history window)."""
  if task == 'user_summary':
    return USER_TYPE
  if task == 'sid_to_type' or target_type is None:
    return ANY_TYPE
  return target_type


def named_type(text: str, type_names) -> str | None:
  """The one entity type of `type_names` that `text` (a search query) names as a whole word,
  singular or with a plural 's', case-insensitively; None when it names none or several.

  This is what a request carries: the `Type:` of a search prompt is read from the query
  itself, never from the relevant items (which a request does not know)."""
  found = set()
  for name in type_names:
    pattern = r'(?<!\w)' + re.escape(name) + r's?(?!\w)'
    if re.search(pattern, text, re.IGNORECASE):
      found.add(name)
  return found.pop() if len(found) == 1 else None


def reformat_prompt(prompt: str, task: str, target_type: str | None,
                    output_format: str) -> str:
  """`prompt` with its `Format:` changed to `output_format` (the rest unchanged)."""
  type_name = type_field(task, target_type)
  new = header(task, type_name, output_format)
  for fmt in OUTPUT_FORMATS:
    old = header(task, type_name, fmt)
    if prompt.count(old) == 1:
      return prompt.replace(old, new)
  raise ValueError(f'no single {task!r} header of type {type_name!r} in prompt {prompt!r}')


def prompt_body(prompt: str, task: str, target_type: str | None, output_format: str) -> str:
  """The history / query / item / text field a `task` prompt was filled with.

  Raises:
    ValueError: `prompt` is not one of `TEMPLATES[task]` with this header.
  """
  head = header(task, type_field(task, target_type), output_format)
  field = _FIELDS[task]
  for template in TEMPLATES[task]:
    before, after = template.split('{' + field + '}')
    pattern = (re.escape(before.format(header=head)) + '(.*)' +
               re.escape(after.format(header=head)))
    m = re.fullmatch(pattern, prompt, re.DOTALL)
    if m:
      return m.group(1)
  raise ValueError(f'prompt {prompt!r} matches no {task!r} template with header {head!r}')


def template_texts(type_names: tuple[str, ...] | list[str] = ()) -> list[str]:
  """The fixed words of every prompt and rationale, for training a text vocabulary: headers
  of every task, format and type in `type_names` (plus the user/any types), each template
  with empty fields, and the rationale phrases."""
  types = tuple(type_names) + (USER_TYPE, ANY_TYPE)
  out = []
  for task, templates in TEMPLATES.items():
    for type_name in types:
      for fmt in OUTPUT_FORMATS:
        head = header(task, type_name, fmt)
        out.extend(t.format(header=head, **{_FIELDS[task]: ''}) for t in templates)
  rationales = (RATIONALE_REPEAT,) + RATIONALE_SHARED + (RATIONALE_SAME_TYPE, RATIONALE_NEW)
  for type_name in types:
    what = WHAT_TAGS.format(title='', type=type_name, tags='') + YEAR.format(year='')
    out.extend(r.format(what=what, type=type_name, tag='', other='') for r in rationales)
    out.append(what + '; ' + '; '.join(
        (TIE_RELATION.format(relation='', other=''), TIE_ERA.format(era=''))) + '.')
    out.extend(t.format(noun='', tags='', type=type_name, era='') for t in
               SUMMARY_TAGS + SUMMARY_TYPE_ERA + (SUMMARY_TYPE,))
  out.append(SUMMARY_PROFILE.format(parts=''))
  return out


def plain_text(text: str) -> str:
  """`text` with anything that reads as SID markup defused: `[SID]` -> `(SID)`,
  `[/SID]` -> `(/SID)`, `<t:l:c>` -> `(t:l:c)`. Other text is unchanged."""
  return _MARKUP_RE.sub(lambda m: '(' + m.group(0)[1:-1] + ')', text)


def render_sid(sid_map: SIDMap, sid_vocab: SIDVocab, item_row: int) -> str:
  """SID markup of catalog row `item_row`: `[SID]<t:0:c0>...[/SID]`.

  Raises:
    ValueError: the row is out of range or the item has no SID (collision policy).
  """
  row = int(item_row)
  if not 0 <= row < len(sid_map):
    raise ValueError(f'item row {row} out of range [0, {len(sid_map)})')
  codes = sid_map.codes[row]
  if codes[0] < 0:
    raise ValueError(f'item row {row} has no SID (unreachable under the collision policy)')
  return sid_vocab.render(sid_map.type_names[int(sid_map.type_index[row])], codes)


def render_history(sid_map: SIDMap, sid_vocab: SIDVocab, rows) -> str:
  """SID spans of `rows` (oldest first) separated by spaces, or `NO_HISTORY` when empty."""
  spans = [render_sid(sid_map, sid_vocab, r) for r in rows]
  return ' '.join(spans) if spans else NO_HISTORY
