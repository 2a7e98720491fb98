"""Fitting an over-long prompt into a token budget without losing its instruction.

Every prompt states its task, type and format in a header, and the history of SID spans (the
oldest first) dominates its length. A prompt longer than its budget therefore loses its
oldest history items, each a whole SID span with the separator after it, and never a token of
the header or of the rest of the text; the newest history item is always kept. A prompt that
still does not fit (no history to shorten, or a text too long for the budget on its own)
raises `PromptTooLongError`: cutting it anywhere else would change what it asks.

Training (`train.data.tokenize_example`) and inference (`decode.ranker.NEORanker`) cut the
same way, so the model reads at inference the prompts it was trained on.
"""

from __future__ import annotations

from typing import Sequence

from neo_jax.tokenizer.base import Tokenizer


class PromptTooLongError(ValueError):
  """A prompt that does not fit its token budget even without its older history items."""


def _history_run(ids: Sequence[int], tokenizer: Tokenizer) -> list[tuple[int, int]]:
  """[(start, stop)] token ranges of the first run of SID spans separated by whitespace only
  (the history): each range is a span and the whitespace after it, up to the next span."""
  sid = tokenizer.sid
  opens = [i for i, t in enumerate(ids) if t == sid.sid_open_id]
  closes = [i for i, t in enumerate(ids) if t == sid.sid_close_id]
  spans = list(zip(opens, closes))
  run = []
  for (o, c), (o_next, _) in zip(spans, spans[1:]):
    gap = list(ids[c + 1:o_next])
    if tokenizer.decode(gap).strip():
      break  # text between two spans: the history ends here
    run.append((o, o_next))
  return run


def cut_prompt(ids: Sequence[int], room: int, tokenizer: Tokenizer) -> tuple[list[int], int]:
  """(`ids` cut to at most `room` tokens, the number of history items removed).

  Removes the oldest SID spans of the prompt's history (with their separators) until it
  fits; a prompt that fits is returned unchanged.

  Raises:
    PromptTooLongError: the prompt does not fit even with only its newest history item.
  """
  ids = list(ids)
  excess = len(ids) - int(room)
  if excess <= 0:
    return ids, 0
  removed, stop = 0, None
  for start, stop_at in _history_run(ids, tokenizer):
    if excess <= 0:
      break
    if stop is None:
      first = start
    excess -= stop_at - start
    stop = stop_at
    removed += 1
  if excess > 0:
    raise PromptTooLongError(
        f'prompt of {len(ids)} tokens does not fit {room} tokens even with '
        f'{"only its newest history item" if removed else "no history to shorten"} '
        f'({excess} tokens too many); its instruction header is never cut')
  return ids[:first] + ids[stop:], removed
