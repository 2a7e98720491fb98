"""Example builders: catalog, sequences, queries and users -> prompt/completion `Example`s.

Every builder is deterministic given its `seed` (users are visited in sorted id order, queries
and targets in the order given). Items without an SID (made unreachable by a collision policy)
cannot be written: they are left out of histories and training targets, and every such
omission is counted in the optional `skipped` dict a caller passes in (nothing is dropped
silently). Free text from the data (titles, queries, summaries) goes through
`prompts.plain_text`, so it can never be parsed as SID markup.
"""

from __future__ import annotations

import re
from typing import Collection, Iterable, Iterator, Mapping, Sequence

import numpy as np

from neo_jax.catalog.splits import Split, Target
from neo_jax.catalog.types import Catalog, Query, User
from neo_jax.sid.types import SIDMap
from neo_jax.tasks import facts
from neo_jax.tasks import prompts
from neo_jax.tasks.rationale import grounded_rationale
from neo_jax.tasks.types import OUTPUT_FORMATS, Example
from neo_jax.tokenizer.sid_vocab import CODE_RE, SID_CLOSE, SID_OPEN, SIDVocab

# Prompt helpers callers reach through this module too.
reformat_prompt = prompts.reformat_prompt
template_texts = prompts.template_texts

_SPAN_RE = re.compile(re.escape(SID_OPEN) + '(.*?)' + re.escape(SID_CLOSE), re.DOTALL)
_CODES_RE = re.compile('(?:' + CODE_RE.pattern + ')+')


def _check_inputs(catalog: Catalog, sid_map: SIDMap, vocab: SIDVocab) -> None:
  if len(catalog) != len(sid_map):
    raise ValueError(f'catalog has {len(catalog)} items but the SID map {len(sid_map)}')
  if tuple(catalog.type_names) != tuple(sid_map.type_names):
    raise ValueError(f'catalog types {catalog.type_names} != SID map types '
                     f'{sid_map.type_names}')
  if not np.array_equal(catalog.type_index, sid_map.type_index):
    raise ValueError('catalog and SID map disagree on the type of some items')
  _check_vocab(sid_map, vocab)


def _check_vocab(sid_map: SIDMap, vocab: SIDVocab) -> None:
  if tuple(vocab.type_names) != tuple(sid_map.type_names):
    raise ValueError(f'SID vocab types {vocab.type_names} != SID map types '
                     f'{sid_map.type_names}')
  for t in sid_map.type_names:
    if tuple(vocab.level_sizes[t]) != tuple(int(k) for k in sid_map.level_sizes[t]):
      raise ValueError(f'SID vocab level sizes {vocab.level_sizes[t]} != SID map level sizes '
                       f'{sid_map.level_sizes[t]} for type {t!r}')


def _format_sampler(output_format: str | Sequence[str] | Mapping[str, float],
                    mixed_fraction: float | None):
  """(formats, probabilities or None) from the builder arguments, validated."""
  if mixed_fraction is not None:
    if not isinstance(output_format, str):
      raise ValueError('mixed_fraction needs a single base output_format, got '
                       f'{output_format!r}')
    if not 0.0 <= mixed_fraction <= 1.0:
      raise ValueError(f'mixed_fraction must be in [0, 1], got {mixed_fraction}')
    if output_format != 'mixed':
      output_format = {output_format: 1.0 - mixed_fraction, 'mixed': mixed_fraction}
  if isinstance(output_format, str):
    formats, probs = (output_format,), None
  elif isinstance(output_format, Mapping):
    formats = tuple(output_format)
    weights = np.array([float(output_format[f]) for f in formats])
    if not formats or np.any(weights < 0) or weights.sum() <= 0:
      raise ValueError(f'output_format weights must be >= 0 with a positive sum, got '
                       f'{dict(output_format)}')
    probs = weights / weights.sum()
  else:
    formats, probs = tuple(output_format), None
  if not formats:
    raise ValueError('output_format is empty')
  for f in formats:
    if f not in OUTPUT_FORMATS:
      raise ValueError(f'unknown output format {f!r}; known: {OUTPUT_FORMATS}')
  return formats, probs


def _pick(rng: np.random.Generator, options: Sequence[str], probs=None) -> str:
  if len(options) == 1:
    return options[0]
  return options[int(rng.choice(len(options), p=probs))]


def _count(skipped: dict[str, int] | None, key: str, n: int = 1) -> None:
  if skipped is not None and n:
    skipped[key] = skipped.get(key, 0) + int(n)


def _reachable_window(seq: np.ndarray, reachable: np.ndarray, history_len: int,
                      skipped: dict[str, int] | None) -> np.ndarray:
  """The last `history_len` items of `seq` that have an SID."""
  keep = reachable[seq]
  _count(skipped, 'unreachable_history_items', int(np.sum(~keep[-history_len:])))
  return seq[keep][-history_len:]


def _item_completion(catalog: Catalog, sid_map: SIDMap, vocab: SIDVocab, target: int,
                     history: Sequence[int], output_format: str,
                     rng: np.random.Generator) -> str:
  if output_format == 'text':
    return prompts.plain_text(catalog.titles[target])
  span = prompts.render_sid(sid_map, vocab, target)
  if output_format == 'ids':
    return span
  return span + ' ' + grounded_rationale(catalog, target, history, rng)


def recommend_examples(data: Split | Mapping[str, np.ndarray] | Sequence[Target],
                       catalog: Catalog, sid_map: SIDMap, vocab: SIDVocab, *,
                       mode: str = 'train', eval_split: str = 'test',
                       output_format: str | Sequence[str] | Mapping[str, float] = 'ids',
                       mixed_fraction: float | None = None, history_len: int = 10,
                       max_targets_per_user: int | None = 10, seed: int = 0,
                       skipped: dict[str, int] | None = None) -> list[Example]:
  """Next-item recommendation: history (SID spans, any types) -> the next item.

  Args:
    data: train mode: a `Split` (its `train` sequences) or user -> (T,) rows oldest first;
      evaluation modes: a `Split` or a sequence of `Target`s.
    catalog, sid_map, vocab: the items, their SIDs and the SID token layout.
    mode: 'train': per user, targets at sliding-window positions t >= 1 (history = the items
      before t), at most `max_targets_per_user` of them drawn at random. 'eval': one example
      per target, in order, history = `Target.history`; the targets are `data` itself or, for
      a `Split`, its `eval_split` list. 'valid' / 'test': 'eval' with that `eval_split`.
    eval_split: 'valid' or 'test', the `Split` list that mode 'eval' reads.
    output_format: 'ids' (the SID span), 'mixed' (SID span + grounded rationale) or 'text'
      (the title); a sequence of formats draws one per example uniformly, a mapping
      format -> weight draws with those weights.
    mixed_fraction: shorthand for `{output_format: 1 - f, 'mixed': f}`.
    history_len: H, the number of most recent items shown.
    max_targets_per_user: cap on train examples per user (None: every position).
    seed: seeds template, position and format choices.
    skipped: if given, counts of what was left out are added to it.

  Returns:
    Examples with task 'recommend' and target_items = (target,). The prompt's `Type:` and
    `Example.target_type`: in training, the target's type (that is how type steering is
    learned); in evaluation, the type of the last item of the shown history (`ANY_TYPE` in the
    prompt and None when nothing is shown), never the target's type, which a request does not
    know (no oracle input). In evaluation a target without an SID still gets its example (it
    counts as a miss), with an empty completion.
  """
  _check_inputs(catalog, sid_map, vocab)
  formats, probs = _format_sampler(output_format, mixed_fraction)
  if history_len < 1:
    raise ValueError(f'history_len must be >= 1, got {history_len}')
  if max_targets_per_user is not None and max_targets_per_user < 1:
    raise ValueError(f'max_targets_per_user must be >= 1 or None, got {max_targets_per_user}')
  if mode in ('valid', 'test'):
    mode, eval_split = 'eval', mode
  rng = np.random.default_rng(seed)
  reachable = sid_map.reachable()
  out = []

  def make(history_rows, target, user_id, can_write):
    fmt = _pick(rng, formats, probs)
    if mode == 'train':
      type_name = catalog.type_of(target)
    else:  # what a request knows: the type of the last item shown, never the target's
      type_name = catalog.type_of(int(history_rows[-1])) if len(history_rows) else None
    prompt = prompts.render_prompt('recommend', prompts.type_field('recommend', type_name),
                                   fmt, rng, prompts.render_history(sid_map, vocab,
                                                                    history_rows))
    completion = (_item_completion(catalog, sid_map, vocab, target, history_rows, fmt, rng)
                  if can_write else '')
    return Example('recommend', prompt, completion, fmt, type_name, (int(target),), user_id)

  if mode == 'train':
    if isinstance(data, Split):
      sequences = data.train
    elif isinstance(data, Mapping):
      sequences = data
    else:
      raise TypeError(f'train mode needs a Split or a mapping user -> sequence, got '
                      f'{type(data).__name__}')
    for user in sorted(sequences):
      seq = np.asarray(sequences[user], np.int64)
      positions = np.arange(1, seq.size)
      ok = reachable[seq[positions]]
      _count(skipped, 'unreachable_targets', int(np.sum(~ok)))
      positions = positions[ok]
      if max_targets_per_user is not None and positions.size > max_targets_per_user:
        positions = np.sort(rng.choice(positions, max_targets_per_user, replace=False))
      for t in positions:
        history = _reachable_window(seq[:t], reachable, history_len, skipped)
        out.append(make(history, int(seq[t]), user, True))
  elif mode == 'eval':
    if isinstance(data, Split):
      if eval_split not in ('valid', 'test'):
        raise ValueError(f"eval_split must be 'valid' or 'test', got {eval_split!r}")
      targets = getattr(data, eval_split)
    else:
      targets = list(data)
    for tg in targets:
      if not isinstance(tg, Target):
        raise TypeError(f'evaluation needs Target objects, got {type(tg).__name__}')
      history = _reachable_window(np.asarray(tg.history, np.int64), reachable, history_len,
                                  skipped)
      can_write = bool(reachable[tg.target])
      if not can_write:
        _count(skipped, 'unreachable_targets')
      out.append(make(history, int(tg.target), tg.user_id, can_write))
  else:
    raise ValueError(f"mode must be 'train', 'eval', 'valid' or 'test', got {mode!r}")
  return out


def history_examples(sequences: Split | Mapping[str, np.ndarray], catalog: Catalog,
                     sid_map: SIDMap, vocab: SIDVocab, *, window: int = 12, context: int = 3,
                     seed: int = 0, skipped: dict[str, int] | None = None) -> list[Example]:
  """History continuation: each user's training sequence cut into windows of `window` items,
  the completion being the window's SID spans (each item learned from the ones before it),
  the prompt the `context` items before the window.

  This is next-item recommendation with every position of the window as a target: one
  example teaches `window` transitions where a `recommend` example teaches one, which is what
  lets a model trained from scratch see as many transitions as a sequential recommender
  (SASRec trains on every position). The words before the spans are those that precede a
  history in the recommend prompts. Items without an SID are dropped from the sequence
  (counted). The `Type:` field is the window's one type, or `any` for a mixed-type window.

  Args:
    sequences: a `Split` (its `train` sequences) or user -> (T,) catalog rows, oldest first.
    window: W >= 1, items per completion.
    context: C >= 0, items shown in the prompt before the window (fewer at the start).

  Returns:
    Examples with task 'history', format 'ids', target_items = the window's rows.
  """
  _check_inputs(catalog, sid_map, vocab)
  if window < 1 or context < 0:
    raise ValueError(f'need window >= 1 and context >= 0, got window={window}, '
                     f'context={context}')
  if isinstance(sequences, Split):
    sequences = sequences.train
  rng = np.random.default_rng(seed)
  reachable = sid_map.reachable()
  out = []
  for user in sorted(sequences):
    seq = np.asarray(sequences[user], np.int64)
    keep = reachable[seq]
    _count(skipped, 'unreachable_items', int(np.sum(~keep)))
    seq = seq[keep]
    for start in range(0, seq.size, window):
      rows = seq[start:start + window]
      types = {catalog.type_of(int(r)) for r in rows}
      type_name = types.pop() if len(types) == 1 else None
      before = prompts.render_history(sid_map, vocab, seq[max(0, start - context):start])
      body = before + ' ' if start > 0 and context > 0 else ''
      prompt = prompts.render_prompt('history', prompts.type_field('history', type_name),
                                     'ids', rng, body)
      completion = prompts.render_history(sid_map, vocab, rows) + '.'
      out.append(Example('history', prompt, completion, 'ids', type_name,
                         tuple(int(r) for r in rows), user))
  return out


def search_examples(queries: Iterable[Query], catalog: Catalog, sid_map: SIDMap,
                    vocab: SIDVocab, *, max_items: int | None = None, seed: int = 0,
                    skipped: dict[str, int] | None = None) -> list[Example]:
  """Text search: query -> the SID spans of its relevant items, format 'ids'.

  One example per query. Its `Type:` is what the request itself says: the one catalog type
  the query text names (`prompts.named_type`), else `prompts.ANY_TYPE`; never read from the
  relevant items. The completion lists the query's relevant items of the named type (every
  relevant item for 'any'); a query naming a type none of its relevant items has is left out
  (counted). The same rule holds for training, query grounding and evaluation.

  Args:
    queries: the queries; `Query.item_index` are catalog rows.
    max_items: at most this many items per completion (None: all of them).
    seed: seeds template choices.
    skipped: counts of left-out items and queries are added to it.

  Returns:
    Examples with target_type = the named type or None, target_items = the rows named in the
    completion, in order.
  """
  return _query_examples('search', queries, catalog, sid_map, vocab, max_items, seed, skipped)


def query_grounding_examples(queries: Iterable[Query], catalog: Catalog, sid_map: SIDMap,
                             vocab: SIDVocab, *, max_items: int | None = 3, seed: int = 0,
                             skipped: dict[str, int] | None = None) -> list[Example]:
  """Grounding "text query -> SID": task 'text_to_sid', format ids, the query text (e.g. the
  training part of `queries.generate_queries`, never its evaluation parts) -> the SID spans of
  its relevant items, with the type rule of `search_examples`. Complements
  `text_to_sid_examples` (title + description) with the phrasings of the query templates."""
  return _query_examples('text_to_sid', queries, catalog, sid_map, vocab, max_items, seed,
                         skipped)


def _query_examples(task, queries, catalog, sid_map, vocab, max_items, seed, skipped):
  _check_inputs(catalog, sid_map, vocab)
  if max_items is not None and max_items < 1:
    raise ValueError(f'max_items must be >= 1 or None, got {max_items}')
  rng = np.random.default_rng(seed)
  reachable = sid_map.reachable()
  out = []
  for n, q in enumerate(queries):
    type_name = prompts.named_type(q.text, catalog.type_names)
    rows: list[int] = []
    for r in q.item_index:
      r = int(r)
      if not 0 <= r < len(catalog):
        raise ValueError(f'query {n} ({q.text!r}) names item row {r}, out of range '
                         f'[0, {len(catalog)})')
      if type_name is not None and catalog.type_of(r) != type_name:
        _count(skipped, 'relevant_items_of_other_types')
        continue
      if not reachable[r]:
        _count(skipped, 'unreachable_relevant_items')
        continue
      if r not in rows:
        rows.append(r)
    if not rows:
      _count(skipped, 'queries_without_reachable_items')
      continue
    if max_items is not None and len(rows) > max_items:
      _count(skipped, 'relevant_items_over_max_items', len(rows) - max_items)
      rows = rows[:max_items]
    prompt = prompts.render_prompt(task, prompts.type_field(task, type_name), 'ids', rng,
                                   prompts.plain_text(q.text))
    completion = ' '.join(prompts.render_sid(sid_map, vocab, r) for r in rows)
    out.append(Example(task, prompt, completion, 'ids', type_name, tuple(rows), q.user_id))
  return out


def user_summary_examples(users: Mapping[str, User] | Iterable[User],
                          sequences: Split | Mapping[str, np.ndarray], sid_map: SIDMap,
                          vocab: SIDVocab, *, history_len: int = 10,
                          seed: int = 0,
                          skipped: dict[str, int] | None = None) -> list[Example]:
  """User understanding: history -> the user's summary text, format 'text'.

  Args:
    users: user id -> `User` (as in `Dataset.users`) or the `User`s; only users with a
      summary give examples.
    sequences: a `Split` (its `train` sequences, so no evaluation target leaks) or user ->
      (T,) rows oldest first.
    history_len: H, the number of most recent items shown.
  """
  _check_vocab(sid_map, vocab)
  if history_len < 1:
    raise ValueError(f'history_len must be >= 1, got {history_len}')
  users = list(users.values()) if isinstance(users, Mapping) else list(users)
  seqs = sequences.train if isinstance(sequences, Split) else sequences
  rng = np.random.default_rng(seed)
  reachable = sid_map.reachable()
  out = []
  for user in sorted(users, key=lambda u: u.id):
    if not user.summary:
      _count(skipped, 'users_without_summary')
      continue
    seq = seqs.get(user.id)
    if seq is None or len(seq) == 0:
      _count(skipped, 'users_with_summary_but_no_history')
      continue
    history = _reachable_window(np.asarray(seq, np.int64), reachable, history_len, skipped)
    prompt = prompts.render_prompt('user_summary', prompts.USER_TYPE, 'text',
                                   rng,
                                   prompts.render_history(sid_map, vocab, history))
    out.append(Example('user_summary', prompt, prompts.plain_text(user.summary), 'text',
                       None, (), user.id))
  return out


def profile_summary(profile: facts.UserProfile, rng: np.random.Generator,
                    tag_noun: str = 'genres') -> str:
  """A user summary stating the profile's facts (`prompts.SUMMARY_*`): favourite tags, main
  type and era, then demographics. '' when the profile holds nothing."""
  parts = []
  if profile.tags:
    tags = [prompts.plain_text(t) for t in profile.tags]
    listed = tags[0] if len(tags) == 1 else ', '.join(tags[:-1]) + ' and ' + tags[-1]
    parts.append(_pick(rng, prompts.SUMMARY_TAGS).format(noun=tag_noun, tags=listed))
  if profile.main_type and profile.eras:
    parts.append(_pick(rng, prompts.SUMMARY_TYPE_ERA).format(
        type=profile.main_type, era=' and the '.join(profile.eras)))
  elif profile.main_type:
    parts.append(prompts.SUMMARY_TYPE.format(type=profile.main_type))
  demo = []
  if profile.gender:
    demo.append(profile.gender)
  if profile.age:
    demo.append(f'aged {profile.age}')
  if profile.occupation:
    demo.append(f'occupation {prompts.plain_text(profile.occupation)}')
  if demo:
    parts.append(prompts.SUMMARY_PROFILE.format(parts=', '.join(demo)))
  return ' '.join(parts)


def user_profile_examples(sequences: Split | Mapping[str, np.ndarray], catalog: Catalog,
                          sid_map: SIDMap, vocab: SIDVocab, *,
                          users: Mapping[str, User] | Iterable[User] = (),
                          history_len: int = 10, top_tags: int = 3, top_eras: int = 1,
                          tag_noun: str = 'genres', use_given_summary: bool = True,
                          seed: int = 0,
                          skipped: dict[str, int] | None = None) -> list[Example]:
  """User understanding with targets from the user's own data: history -> summary, format text.

  For every user with a history (sorted by id): the summary the data gives
  (`User.summary`, e.g. the synthetic generator's) when `use_given_summary`, else one written
  by `profile_summary` from `facts.user_profile` over the user's whole (training) sequence and
  `User.attributes` (demographics; synthetic `top_topics` / `main_type`). The prompt shows the
  last `history_len` items with an SID.

  Args:
    sequences: a `Split` (its `train` sequences, so no evaluation target leaks) or user ->
      (T,) rows oldest first.
    users: user records by id (or the records); users without one get a profile from their
      history alone.
  """
  _check_inputs(catalog, sid_map, vocab)
  if history_len < 1:
    raise ValueError(f'history_len must be >= 1, got {history_len}')
  users = dict(users) if isinstance(users, Mapping) else {u.id: u for u in users}
  seqs = sequences.train if isinstance(sequences, Split) else sequences
  rng = np.random.default_rng(seed)
  reachable = sid_map.reachable()
  out = []
  for user_id in sorted(seqs):
    seq = np.asarray(seqs[user_id], np.int64)
    if seq.size == 0:
      _count(skipped, 'users_without_history')
      continue
    user = users.get(user_id)
    if use_given_summary and user is not None and user.summary:
      summary = prompts.plain_text(user.summary)
    else:
      profile = facts.user_profile(catalog, seq, user, top_tags=top_tags, top_eras=top_eras)
      summary = profile_summary(profile, rng, tag_noun)
    if not summary:
      _count(skipped, 'users_with_empty_profile')
      continue
    history = _reachable_window(seq, reachable, history_len, skipped)
    prompt = prompts.render_prompt('user_summary', prompts.USER_TYPE, 'text', rng,
                                   prompts.render_history(sid_map, vocab, history))
    out.append(Example('user_summary', prompt, summary, 'text', None, (), user_id))
  return out


def _grounding_rows(sid_map: SIDMap, items: Sequence[int] | None) -> np.ndarray:
  reachable = sid_map.reachable()
  if items is None:
    return np.flatnonzero(reachable)
  rows = np.asarray(items, np.int64).reshape(-1)
  bad = rows[(rows < 0) | (rows >= len(sid_map))]
  if bad.size:
    raise ValueError(f'item rows {bad[:5].tolist()} out of range [0, {len(sid_map)})')
  if not reachable[rows].all():
    raise ValueError(f'item rows {rows[~reachable[rows]][:5].tolist()} have no SID')
  return rows


def _first_words(text: str, n: int) -> str:
  words = text.split()
  return ' '.join(words[:n])


GROUNDING_TEXTS = ('title', 'full', 'full_lower')


def _check_text(text: str) -> None:
  if text not in GROUNDING_TEXTS:
    raise ValueError(f'grounding text {text!r}; known: {", ".join(GROUNDING_TEXTS)}')


def _with_tags(catalog: Catalog, r: int, text: str) -> str:
  """`text` followed by the item's tags (`text. tag, tag`), or `text` when it has none."""
  return f'{text}. {", ".join(catalog.tags[r])}' if catalog.tags[r] else text


def sid_to_text_examples(catalog: Catalog, sid_map: SIDMap, vocab: SIDVocab, *,
                         items: Sequence[int] | None = None, description_words: int = 24,
                         text: str = 'title', seed: int = 0) -> list[Example]:
  """Grounding: SID -> `title. description` (first `description_words` words), format text;
  with text='full' or 'full_lower' followed by the item's tags (`. tag, tag`).

  Args:
    items: catalog rows to describe (default: every item with an SID).
  """
  _check_inputs(catalog, sid_map, vocab)
  _check_text(text)
  rng = np.random.default_rng(seed)
  out = []
  for r in _grounding_rows(sid_map, items):
    r = int(r)
    type_name = catalog.type_of(r)
    prompt = prompts.render_prompt('sid_to_text', type_name, 'text', rng,
                                   prompts.render_sid(sid_map, vocab, r))
    completion = catalog.titles[r]
    desc = _first_words(catalog.descriptions[r], description_words)
    if desc:
      completion += '. ' + desc
    if text != 'title':
      completion = _with_tags(catalog, r, completion)
    out.append(Example('sid_to_text', prompt, prompts.plain_text(completion), 'text', type_name,
                       (r,)))
  return out


def text_to_sid_examples(catalog: Catalog, sid_map: SIDMap, vocab: SIDVocab, *,
                         items: Sequence[int] | None = None, description_words: int = 8,
                         description_prob: float = 0.5, text: str = 'title', seed: int = 0,
                         bare: bool = False) -> list[Example]:
  """Grounding: title (+ the first `description_words` words of the description, with
  probability `description_prob`) -> SID span, format ids. text='full': two examples per
  item, the bare title and `title - description words. tags` (the facts search queries
  name), the second left out when it equals the first. text='full_lower': also the bare
  title lower-cased (how search queries are typed; the text vocabulary is cased), left out
  when it equals the title. `bare`: the bare title alone (and, with 'full_lower', its lower
  case): the drills of `suite.build_task_examples(title_repeats=)`."""
  _check_inputs(catalog, sid_map, vocab)
  _check_text(text)
  if not 0.0 <= description_prob <= 1.0:
    raise ValueError(f'description_prob must be in [0, 1], got {description_prob}')
  rng = np.random.default_rng(seed)
  out = []
  for r in _grounding_rows(sid_map, items):
    r = int(r)
    type_name = catalog.type_of(r)
    title = catalog.titles[r]
    desc = _first_words(catalog.descriptions[r], description_words).rstrip('.')
    if bare:
      texts = [title] + ([title.lower()] if text == 'full_lower' and title.lower() != title
                         else [])
    elif text != 'title':
      full = _with_tags(catalog, r, f'{title} - {desc}' if desc else title)
      texts = [title] + ([full] if full != title else [])
      if text == 'full_lower' and title.lower() != title:
        texts.append(title.lower())
    else:
      texts = [f'{title} - {desc}' if desc and rng.random() < description_prob else title]
    for t in texts:
      prompt = prompts.render_prompt('text_to_sid', type_name, 'ids', rng, prompts.plain_text(t))
      out.append(Example('text_to_sid', prompt, prompts.render_sid(sid_map, vocab, r), 'ids',
                         type_name, (r,)))
  return out


def sid_to_type_examples(catalog: Catalog, sid_map: SIDMap, vocab: SIDVocab, *,
                         items: Sequence[int] | None = None, seed: int = 0) -> list[Example]:
  """Grounding: SID -> its entity type name, format text. The prompt's `Type:` is
  `prompts.ANY_TYPE` and target_type None, since naming the type would give the answer."""
  _check_inputs(catalog, sid_map, vocab)
  rng = np.random.default_rng(seed)
  out = []
  for r in _grounding_rows(sid_map, items):
    r = int(r)
    prompt = prompts.render_prompt('sid_to_type', prompts.ANY_TYPE, 'text',
                                   rng,
                                   prompts.render_sid(sid_map, vocab, r))
    out.append(Example('sid_to_type', prompt, catalog.type_of(r), 'text', None, (r,)))
  return out


def tokenizer_corpus(catalog: Catalog, queries: Iterable[Query] = (),
                     users: Mapping[str, User] | Iterable[User] = ()) -> Iterator[str]:
  """Sentences to train a text vocabulary on: item texts, queries, user summaries and every
  prompt header and template (every type, `user` and `any`), so that the words prompts are
  made of get their own pieces.

  Pass what a fitted component may see (`catalog.splits.fit_view`): the training queries
  only and the users with held-out summaries emptied, so that no evaluation text shapes the
  vocabulary. Item texts are catalog metadata, known for every item."""
  for i in range(len(catalog)):
    yield catalog.text(i)
  for q in queries:
    yield q.text
  for u in (users.values() if isinstance(users, Mapping) else users):
    if u.summary:
      yield u.summary
  yield from prompts.template_texts(catalog.type_names)


def query_of(example: Example) -> str:
  """The query text of a search example (as written in its prompt; its `Type:` is the named
  type or `any`)."""
  if example.task != 'search':
    raise ValueError(f'query_of needs a search example, got task {example.task!r}')
  return prompts.prompt_body(example.prompt, 'search', example.target_type,
                             example.output_format)


def _check_fractions(valid_fraction: float, test_fraction: float) -> None:
  for name, f in (('valid_fraction', valid_fraction), ('test_fraction', test_fraction)):
    if not 0.0 <= f < 1.0:
      raise ValueError(f'{name} must be in [0, 1), got {f}')
  if valid_fraction + test_fraction >= 1.0:
    raise ValueError(f'valid_fraction + test_fraction must be < 1, got '
                     f'{valid_fraction + test_fraction}')


def split_queries_by_item(queries: Sequence[Query], valid_fraction: float,
                          test_fraction: float, seed: int = 0, *,
                          never_train: Collection[str] | None = None,
                          never_heldout: Collection[str] | None = None
                          ) -> tuple[list[Query], list[Query], list[Query], dict[str, int]]:
  """Deterministic (train, valid, test, skipped) split of search queries by relevant item.

  Guarantees: no item relevant to a valid or test query is relevant to a training query, and
  valid and test queries share no relevant item, so evaluation never asks for an item some
  trained query already led to (with other words for the same title, say).

  Queries are grouped by text (case and surrounding space ignored; a group moves as one, its
  relevant items the union of its members'). Groups are visited in a seeded random order, the
  groups of `never_train` texts (e.g. held-out-template queries, so that evaluation keeps its
  unseen phrasings) first. A group joins test while test holds fewer than
  round(test_fraction * len(queries)) queries, else valid while it holds fewer than
  round(valid_fraction * len(queries)), in either case only if its items touch none of the
  other held-out part's items. Training is then every remaining query whose items touch no
  held-out item and whose text is not in `never_train`. Texts in `never_heldout` (e.g. bare
  titles, which title grounding trains on anyway) only ever train.

  Returns:
    train, valid, test, each in input order, and the queries left out by reason:
    'relevant_items_held_out' (a remaining query touching a valid or test item),
    'never_train_not_evaluated' (a `never_train` query that no held-out part took).
  """
  _check_fractions(valid_fraction, test_fraction)
  queries = list(queries)
  never_train = {t.strip().lower() for t in (never_train or ())}
  never_heldout = {t.strip().lower() for t in (never_heldout or ())}
  groups: dict[str, list[int]] = {}
  for n, q in enumerate(queries):
    groups.setdefault(q.text.strip().lower(), []).append(n)
  keys = list(groups)
  items = {k: {int(r) for n in groups[k] for r in queries[n].item_index} for k in keys}
  order = np.random.default_rng(seed).permutation(len(keys))
  order = ([g for g in order if keys[g] in never_train] +
           [g for g in order if keys[g] not in never_train])
  want = (round(len(queries) * test_fraction), round(len(queries) * valid_fraction))
  held: tuple[list[int], list[int]] = ([], [])  # test, valid query indices
  held_items: tuple[set[int], set[int]] = (set(), set())
  rest = []
  for g in order:
    key = keys[g]
    for part in (0, 1):
      if (key not in never_heldout and len(held[part]) < want[part]
          and not items[key] & held_items[1 - part]):
        held[part].extend(groups[key])
        held_items[part].update(items[key])
        break
    else:
      rest.append(key)
  touched = held_items[0] | held_items[1]
  skipped: dict[str, int] = {}
  train = []
  for key in rest:
    if key in never_train:
      _count(skipped, 'never_train_not_evaluated', len(groups[key]))
    elif items[key] & touched:
      _count(skipped, 'relevant_items_held_out', len(groups[key]))
    else:
      train.extend(groups[key])
  test, valid = ([queries[n] for n in sorted(p)] for p in held)
  return [queries[n] for n in sorted(train)], valid, test, skipped


def describe_items(text: str, sid_map: SIDMap, vocab: SIDVocab,
                   catalog: Catalog) -> list[tuple[int | None, str | None, str | None]]:
  """Resolves every `[SID]...[/SID]` span of a (generated) text, in order.

  Returns:
    (row, title, type) per span: the catalog row and title of the item it names, or None for
    both when the span names no catalog item; type is the span's entity type, or None when the
    span is not a well-formed SID (mixed or unknown types, wrong levels, other text inside).
  """
  out = []
  for m in _SPAN_RE.finditer(text):
    inner = m.group(1)
    if not _CODES_RE.fullmatch(inner):
      out.append((None, None, None))
      continue
    codes = CODE_RE.findall(inner)
    types = {t for t, _, _ in codes}
    levels = [int(l) for _, l, _ in codes]
    type_name = codes[0][0]
    if (len(types) != 1 or type_name not in vocab.level_sizes or
        levels != list(range(vocab.num_levels))):
      out.append((None, None, None))
      continue
    row = sid_map.item_of(type_name, tuple(int(c) for _, _, c in codes))
    out.append((row, None if row is None else catalog.titles[row], type_name))
  return out
