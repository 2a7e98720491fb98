"""Scorers of what NEO writes, beyond ranking: steerability, user understanding and
recsplanation faithfulness.

- Type steerability: the share of named items whose entity type is the one the prompt asked
  for, when only the prompt's `Type:` changes and decoding does not restrict the type.
- Format steerability: the share of answers in the format the prompt asked for, when only the
  prompt's `Format:` changes and decoding admits every format. The answer is checked, not only
  its form: `ids` holds well-formed SID spans and nothing else but whitespace / punctuation;
  `text` names a catalog item by its title (`TitleMatcher`) and holds no SID markup; `mixed`
  holds a well-formed span and words outside it.
- User understanding: precision / recall of the attributes a generated summary names against
  the user's own profile (`neo_jax.tasks.facts.score_summary`), averaged over users.
- Faithfulness: `neo_jax.tasks.rationale.check_rationale` on generated explanations of the
  item each answer names, aggregated.

Every scorer takes plain text (SID markup included) and returns flat figures in [0, 1] plus
counts, so that nothing is averaged over an empty set silently (`count` 0 means no figure).
"""

from __future__ import annotations

import re
import unicodedata
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


# Articles a catalog title may carry at its end ('Usual Suspects, The'; MovieLens style).
_ARTICLES = frozenset({'the', 'a', 'an', 'la', 'le', 'les', 'l', 'il', 'el', 'lo', 'los', 'las',
                       'der', 'die', 'das', 'un', 'une', 'o'})
_ARTICLE_RE = re.compile(r"\s*([^\W\d_]+)'?\s*")
_YEAR_RE = re.compile(r'\s*\(\s*\d{4}\s*\)\s*$')
_PAREN_TAIL_RE = re.compile(r'\s*\(([^()]*)\)\s*$')
_WORD_RE = re.compile(r'[^\W_]+')
_BREAK_CHARS = frozenset('.!?;:\n')
_WELL_FORMED_RE = re.compile(re.escape(SID_OPEN) + r'((?:\s*' + CODE_RE.pattern + r')+)\s*'
                             + re.escape(SID_CLOSE))


def _tokens(text: str) -> tuple[tuple[str, ...], tuple[bool, ...]]:
  """The words of `text` (accents folded, lower-cased; anything but letters and digits
  separates them) and, per word, whether a sentence break ('.', '!', '?', ';', ':', a new
  line) stands between it and the word before."""
  folded = unicodedata.normalize('NFKD', text)
  folded = ''.join(c for c in folded if not unicodedata.combining(c)).lower()
  words, breaks, end = [], [], 0
  for m in _WORD_RE.finditer(folded):
    words.append(m.group(0))
    breaks.append(bool(words[:-1]) and any(c in _BREAK_CHARS for c in folded[end:m.start()]))
    end = m.end()
  return tuple(words), tuple(breaks)


def normalise_words(text: str) -> tuple[str, ...]:
  """The words of `text` for title matching: accents folded, lower-cased, split at anything
  that is not a letter or digit (punctuation and extra spaces do not count)."""
  return _tokens(text)[0]


def _variants(title: str) -> dict[tuple[str, ...], frozenset[int]]:
  """`title_variants`, each with the positions of the sentence breaks inside it."""
  base = _YEAR_RE.sub('', title).strip() or title
  names = [base]
  core = base
  while (m := _PAREN_TAIL_RE.search(core)) and _PAREN_TAIL_RE.sub('', core).strip():
    names.append(m.group(1))
    core = _PAREN_TAIL_RE.sub('', core).strip()
  names.append(core)
  out = {}
  for name in names:
    words, breaks = _tokens(name)
    if not words:
      continue
    out[words] = frozenset(i for i, b in enumerate(breaks) if b)
    head, sep, last = name.rpartition(',')
    article = _ARTICLE_RE.fullmatch(last)
    if sep and article and article.group(1).lower() in _ARTICLES:
      hw, hb = _tokens(head)
      if hw:
        aw = _tokens(article.group(1))[0]
        out[aw + hw] = frozenset(i + len(aw) for i, b in enumerate(hb) if b and i)
  return out


def title_variants(title: str) -> set[tuple[str, ...]]:
  """The word sequences (`normalise_words`) that name `title`: without its trailing
  '(year)'; without any trailing parenthesised alternative title, and that alternative on its
  own; each also with a trailing ', The' (or another article) moved to the front. A variant
  with the year is not needed: the year-less one matches inside it."""
  return set(_variants(title))


class TitleMatcher:
  """Finds the catalog items a text names by title: a `title_variants` sequence of whole words
  in the text, with no sentence break in the text where the title has none ('War. The user'
  does not name 'War, The'; 'Dr Strangelove' names 'Dr. Strangelove'). Built once per catalog:
  variants are indexed by their first word, so a text of W words costs O(W x variants
  sharing a first word).

  Known limit: a one-word title ('Heat') matches that word anywhere in a text.
  """

  def __init__(self, titles: Sequence[str]):
    self.num_titles = len(titles)
    self._by_first: dict[str, list[tuple[tuple[str, ...], frozenset[int], int]]] = {}
    for row, title in enumerate(titles):
      for words, breaks in _variants(str(title)).items():
        self._by_first.setdefault(words[0], []).append((words, breaks, row))

  def _matches(self, text: str):
    words, breaks = _tokens(text)
    for i, w in enumerate(words):
      for variant, allowed, row in self._by_first.get(w, ()):
        if (words[i:i + len(variant)] == variant and
            all(j in allowed for j in range(1, len(variant)) if breaks[i + j])):
          yield row

  def find(self, text: str) -> list[int]:
    """Rows whose title `text` names, in order of first mention, each once."""
    return list(dict.fromkeys(self._matches(text)))

  def names_item(self, text: str) -> bool:
    """Whether `text` names any catalog item (stops at the first)."""
    return next(self._matches(text), None) is not None


def _well_formed(span_codes: str) -> bool:
  """A span's code tokens are one type's levels 0, 1, 2, ... in order."""
  codes = CODE_RE.findall(span_codes)
  return (len({t for t, _, _ in codes}) == 1 and
          [int(lvl) for _, lvl, _ in codes] == list(range(len(codes))))


def split_spans(text: str) -> tuple[int, bool, str]:
  """(well-formed SID spans, whether any SID markup is malformed, the text outside the
  well-formed spans). Malformed: an unterminated or empty span, a stray `[/SID]`, a span with
  anything but codes of one type at levels 0, 1, ... inside, a code token outside a span."""
  good = 0
  bad = False

  def cut(m):
    nonlocal good, bad
    if _well_formed(m.group(1)):
      good += 1
    else:
      bad = True
    return ' '
  rest = _WELL_FORMED_RE.sub(cut, text)
  bad = bad or SID_OPEN in rest or SID_CLOSE in rest or bool(CODE_RE.search(rest))
  return good, bad, rest


def answers_format(wanted: str, text: str, matcher: TitleMatcher | None) -> bool:
  """Whether `text` is a `wanted`-format answer (module docstring). Without a matcher a `text`
  answer only has to hold words and no SID markup (the form, not the answer)."""
  spans, malformed, rest = split_spans(text)
  has_words = bool(normalise_words(rest))
  if wanted == 'ids':
    return spans >= 1 and not malformed and not has_words
  if wanted == 'mixed':
    return spans >= 1 and not malformed and has_words
  if wanted == 'text':
    if spans or malformed or not has_words:
      return False
    return matcher is None or matcher.names_item(text)
  raise ValueError(f'unknown output format {wanted!r}; known: {prompts.OUTPUT_FORMATS}')


def format_steerability(requested: Sequence[str], texts: Sequence[str],
                        titles: Sequence[str] | TitleMatcher | None = None
                        ) -> dict[str, float | int | str]:
  """Share of answers in the requested format (`answers_format`), overall and per format
  (`format_steerability/<fmt>`), with the answer count.

  Args:
    requested: (B,) the format each prompt asked for.
    texts: (B,) the answers.
    titles: the catalog's titles (or a `TitleMatcher` built from them once): a `text` answer
      must name one. None: `text` answers are judged by form only (and
      `format_steerability/text_check` says so).
  Returns: format_steerability, format_steerability/<fmt>, answers,
    format_steerability/form_only (the share by `output_format_of` alone: the form, not the
    answer), format_steerability/text_names_item (among `text` requests, the share of answers
    naming a catalog item, markup or not; only with titles), format_steerability/text_check.
  """
  if len(requested) != len(texts):
    raise ValueError(f'{len(requested)} requested formats but {len(texts)} answers')
  for f in requested:
    if f not in prompts.OUTPUT_FORMATS:
      raise ValueError(f'unknown output format {f!r}; known: {prompts.OUTPUT_FORMATS}')
  matcher = titles if isinstance(titles, TitleMatcher) or titles is None else TitleMatcher(titles)
  ok = np.array([answers_format(f, t, matcher) for f, t in zip(requested, texts)], bool)
  form = np.array([output_format_of(t) == f for f, t in zip(requested, texts)], bool)
  nan = float('nan')
  out: dict[str, float | int | str] = {
      'format_steerability': float(ok.mean()) if ok.size else nan, 'answers': int(ok.size),
      'format_steerability/form_only': float(form.mean()) if form.size else nan,
      'format_steerability/text_check': ('names a catalog title' if matcher is not None
                                         else 'form only (no catalog titles given)')}
  for fmt in prompts.OUTPUT_FORMATS:
    sel = np.array([f == fmt for f in requested], bool)
    if sel.any():
      out[f'format_steerability/{fmt}'] = float(ok[sel].mean())
  text_answers = [t for f, t in zip(requested, texts) if f == 'text']
  if matcher is not None and text_answers:
    out['format_steerability/text_names_item'] = float(np.mean(
        [matcher.names_item(t) for t in text_answers]))
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
