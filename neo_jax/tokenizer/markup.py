"""Strict parser of SID markup in text: `[SID]<t:0:c0><t:1:c1>...[/SID]`.

Every tokenizer uses this to split a string into plain-text pieces and SID spans, so that
all of them accept and reject exactly the same markup. A well-formed span holds exactly
`num_levels` codes of one known type, levels 0, 1, ... in order, each code within its level's
K. Code markup outside a span, nested or unclosed spans, stray `[/SID]` and any text inside a
span are errors; the message names the problem and the character position (0-based).
"""

from __future__ import annotations

import dataclasses
import re

from neo_jax.tokenizer.sid_vocab import CODE_RE, SID_CLOSE, SID_OPEN, SIDVocab

# One alternation so that a single left-to-right scan sees every piece of markup in order.
_MARKUP_RE = re.compile(
    re.escape(SID_OPEN) + '|' + re.escape(SID_CLOSE) + '|' + CODE_RE.pattern)


@dataclasses.dataclass(frozen=True)
class SIDSpan:
  """One well-formed SID span.

  Attributes:
    type_name: the entity type of every code in the span.
    codes: (num_levels,) code per level.
    start: character offset of `[SID]` in the parsed text.
    end: character offset one past `[/SID]`.
  """

  type_name: str
  codes: tuple[int, ...]
  start: int
  end: int


def split_markup(text: str, vocab: SIDVocab) -> list[str | SIDSpan]:
  """Splits `text` into plain-text pieces (non-empty str) and SID spans, in order.

  Concatenating the text pieces with `vocab.render(span.type_name, span.codes)` of every span
  gives back `text` exactly.

  Raises:
    ValueError: malformed markup; the message names the problem and its position.
  """
  out: list[str | SIDSpan] = []
  pos = 0  # end of the last consumed piece
  open_at = None  # position of the current span's `[SID]`, None outside a span
  span_type = None
  span_codes: list[int] = []
  for m in _MARKUP_RE.finditer(text):
    gap = text[pos:m.start()]
    token = m.group(0)
    if open_at is None:
      if gap:
        out.append(gap)
      if token == SID_OPEN:
        open_at, span_type, span_codes = m.start(), None, []
      elif token == SID_CLOSE:
        raise ValueError(f'{SID_CLOSE!r} at position {m.start()} without an open {SID_OPEN!r}')
      else:
        raise ValueError(f'SID code {token!r} at position {m.start()} is outside an '
                         f'{SID_OPEN}...{SID_CLOSE} span')
    else:
      if gap:
        raise ValueError(f'unexpected text {gap!r} at position {pos} inside the SID span '
                         f'opened at position {open_at}')
      if token == SID_OPEN:
        raise ValueError(f'nested {SID_OPEN!r} at position {m.start()} inside the SID span '
                         f'opened at position {open_at}')
      if token == SID_CLOSE:
        if len(span_codes) != vocab.num_levels:
          raise ValueError(f'SID span at position {open_at} has {len(span_codes)} codes, '
                           f'expected {vocab.num_levels}')
        out.append(SIDSpan(span_type, tuple(span_codes), open_at, m.end()))
        open_at = None
      else:
        type_name, level, code = m.group(1), int(m.group(2)), int(m.group(3))
        _check_code(vocab, token, m.start(), type_name, level, code, span_type,
                    len(span_codes))
        span_type = type_name
        span_codes.append(code)
    pos = m.end()
  if open_at is not None:
    raise ValueError(f'unclosed SID span: {SID_OPEN!r} at position {open_at} has no '
                     f'{SID_CLOSE!r}')
  if pos < len(text):
    out.append(text[pos:])
  return out


def _check_code(vocab: SIDVocab, token: str, at: int, type_name: str, level: int, code: int,
                span_type: str | None, expected_level: int) -> None:
  if type_name not in vocab.level_sizes:
    raise ValueError(f'unknown entity type {type_name!r} in SID code {token!r} at position '
                     f'{at}; known: {vocab.type_names}')
  if span_type is not None and type_name != span_type:
    raise ValueError(f'SID code {token!r} at position {at} has type {type_name!r} but the '
                     f'span started with type {span_type!r}')
  if expected_level >= vocab.num_levels:
    raise ValueError(f'SID code {token!r} at position {at} is one code too many: an SID has '
                     f'{vocab.num_levels} levels')
  if level != expected_level:
    raise ValueError(f'SID code {token!r} at position {at} has level {level}, expected level '
                     f'{expected_level} (levels run 0..{vocab.num_levels - 1} in order)')
  k = vocab.level_sizes[type_name][level]
  if code >= k:
    raise ValueError(f'SID code {token!r} at position {at}: code {code} out of range '
                     f'[0, {k}) for {type_name} level {level}')
