"""Scorers of what NEO writes, beyond ranking: steerability, user understanding and
recsplanation faithfulness.

- Type steerability: the share of named items whose entity type is the one the prompt asked
  for, when only the prompt's `Type:` changes and decoding does not restrict the type.
- Format steerability: the share of answers in the format the prompt asked for (`ids`: SID
  spans only; `text`: no SID span; `mixed`: both), when only the prompt's `Format:` changes and
  decoding admits every format.
- User understanding: precision / recall of the attributes a generated summary names against
  the user's own profile (`neo_jax.tasks.facts.score_summary`), averaged over users.
- Faithfulness: `neo_jax.tasks.rationale.check_rationale` on generated explanations of the
  item each answer names, aggregated.

Every scorer takes plain text (SID markup included) and returns flat figures in [0, 1] plus
counts, so that nothing is averaged over an empty set silently (`count` 0 means no figure).
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from neo_jax.catalog.types import Catalog
from neo_jax.tasks import facts
from neo_jax.tasks import prompts
from neo_jax.tasks import rationale
from neo_jax.tokenizer.sid_vocab import CODE_RE, SID_CLOSE, SID_OPEN

_SPAN_RE = re.compile(re.escape(SID_OPEN) + '(.*?)' + re.escape(SID_CLOSE), re.DOTALL)
_OPEN_TAIL_RE = re.compile(re.escape(SID_OPEN) + '(?!.*' + re.escape(SID_CLOSE) + ')(.*)$',
                           re.DOTALL)


def retype_prompt(prompt: str, task: str, old_type: str, new_type: str) -> str:
  """`prompt` with its header's `Type:` changed from `old_type` to `new_type` (nothing else).

  Raises:
    ValueError: the prompt does not hold exactly one `task` header of type `old_type`.
  """
  for fmt in prompts.OUTPUT_FORMATS:
    old = prompts.header(task, old_type, fmt)
    if prompt.count(old) == 1:
      return prompt.replace(old, prompts.header(task, new_type, fmt))
  raise ValueError(f'no single {task!r} header of type {old_type!r} in prompt {prompt!r}')


def span_types(text: str) -> list[str | None]:
  """The entity type of each SID span in `text`, in order, read from its first code token
  (`<type:level:code>`); None for a span without a code token. An unterminated final span
  counts too (an unconstrained decoder may stop inside one)."""
  spans = _SPAN_RE.findall(text)
  rest = _SPAN_RE.sub('', text)
  tail = _OPEN_TAIL_RE.search(rest)
  if tail:
    spans.append(tail.group(1))
  out = []
  for s in spans:
    m = CODE_RE.search(s)
    out.append(m.group(1) if m else None)
  return out


def output_format_of(text: str) -> str:
  """'ids' (SID spans and separators only), 'text' (no SID span, some text), 'mixed' (both),
  or 'empty' (neither)."""
  has_span = SID_OPEN in text
  words = re.sub(r'[\s,;.]+', ' ', _SPAN_RE.sub(' ', text).replace(SID_OPEN, ' ')).strip()
  words = CODE_RE.sub('', words).strip()
  if has_span:
    return 'mixed' if words else 'ids'
  return 'text' if words else 'empty'


def type_steerability(requested: Sequence[str], named_types: Sequence[Sequence[str | None]]
                      ) -> dict[str, float]:
  """Share of named items (over all answers) of the requested type.

  Args:
    requested: (B,) the type each prompt asked for.
    named_types: (B, *) the types of the items each answer named (e.g. every beam's item,
      or `span_types` of a generated text); None = an item of no known type (never correct).
  Returns: type_steerability (the share; NaN when no item was named), items, answers_all_on_type
    (share of answers whose every named item has the requested type, among answers naming one).
  """
  if len(requested) != len(named_types):
    raise ValueError(f'{len(requested)} requested types but {len(named_types)} answers')
  hits = total = all_ok = answered = 0
  for want, got in zip(requested, named_types):
    got = list(got)
    hits += sum(t == want for t in got)
    total += len(got)
    if got:
      answered += 1
      all_ok += all(t == want for t in got)
  return {'type_steerability': hits / total if total else float('nan'), 'items': total,
          'answers_all_on_type': all_ok / answered if answered else float('nan')}


def format_steerability(requested: Sequence[str], texts: Sequence[str]) -> dict[str, float]:
  """Share of answers whose `output_format_of` is the requested format, overall and per
  format (`format_steerability/<fmt>`), with the answer count."""
  if len(requested) != len(texts):
    raise ValueError(f'{len(requested)} requested formats but {len(texts)} answers')
  for f in requested:
    if f not in prompts.OUTPUT_FORMATS:
      raise ValueError(f'unknown output format {f!r}; known: {prompts.OUTPUT_FORMATS}')
  ok = np.array([output_format_of(t) == f for f, t in zip(requested, texts)], bool)
  out = {'format_steerability': float(ok.mean()) if ok.size else float('nan'),
         'answers': int(ok.size)}
  for fmt in prompts.OUTPUT_FORMATS:
    sel = np.array([f == fmt for f in requested], bool)
    if sel.any():
      out[f'format_steerability/{fmt}'] = float(ok[sel].mean())
  return out


def summary_understanding(texts: Sequence[str], profiles: Sequence[facts.UserProfile],
                          vocab: facts.SummaryVocabulary) -> dict[str, float]:
  """Mean precision / recall / F1 of the attributes named in each generated summary against
  that user's profile, and the share of summaries naming nothing."""
  if len(texts) != len(profiles):
    raise ValueError(f'{len(texts)} summaries but {len(profiles)} profiles')
  if not texts:
    return {'summary_precision': float('nan'), 'summary_recall': float('nan'),
            'summary_f1': float('nan'), 'summary_empty': float('nan'), 'summaries': 0}
  scores = [facts.score_summary(t, p, vocab) for t, p in zip(texts, profiles)]
  return {
      'summary_precision': float(np.mean([s['precision'] for s in scores])),
      'summary_recall': float(np.mean([s['recall'] for s in scores])),
      'summary_f1': float(np.mean([s['f1'] for s in scores])),
      'summary_empty': float(np.mean([s['named'] == 0 for s in scores])),
      'summaries': len(scores)}


def rationale_faithfulness(texts: Sequence[str], catalog: Catalog, items: Sequence[int | None],
                           histories: Sequence[Sequence[int]]) -> dict[str, float]:
  """Faithfulness of generated explanations.

  Args:
    texts: (B,) generated mixed answers (a SID span, then the rationale).
    items: (B,) the catalog row each answer's span names (the item the rationale must be
      about), None when the answer named no valid item: such answers are counted as not
      faithful (`no_item`), never dropped.
    histories: (B,) the rows the prompt showed.
  Returns: faithful (share of answers whose every claim is true, at least one claim),
    claims_supported (share of all claims that are true), unparsed (share of answers with
    text the checker does not understand), no_item (share without an item), no_rationale
    (share naming an item but writing no text besides SID spans: not faithful, no claims),
    explanations.
  """
  if not len(texts) == len(items) == len(histories):
    raise ValueError(f'{len(texts)} texts, {len(items)} items, {len(histories)} histories')
  faithful = unparsed = no_item = no_text = claims = supported = 0
  for text, item, hist in zip(texts, items, histories):
    if item is None:
      no_item += 1
      continue
    if not _SPAN_RE.sub('', text).strip():
      no_text += 1
      continue
    check = rationale.check_rationale(text, catalog, int(item), hist)
    faithful += check.faithful
    unparsed += bool(check.unparsed)
    claims += check.num_claims
    supported += check.num_supported
  n = len(texts)
  nan = float('nan')
  return {'faithful': faithful / n if n else nan,
          'claims_supported': supported / claims if claims else nan,
          'unparsed': unparsed / n if n else nan, 'no_item': no_item / n if n else nan,
          'no_rationale': no_text / n if n else nan, 'explanations': n}
