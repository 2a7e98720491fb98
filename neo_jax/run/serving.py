"""Requests to a trained NEO, validated and answered in batches: what `experiments.generate
--workdir` (interactive and JSONL batch modes) and the Colab demo use.

A request is a JSON object (or the short command form of `parse_command`):

  task        'recommend' | 'search' | 'describe' | 'explain' | 'prompt' (default 'prompt'
              when only `prompt` is given)
  user        a user id of the dataset             (recommend, describe, explain)
  query       search text                           (search)
  item        a catalog item id                     (explain)
  type        an entity type of the catalog         (recommend, search, prompt; optional)
  format      'ids' | 'text' | 'mixed'              (recommend; search: 'ids'; prompt)
  k           items wanted, 1..MAX_K (default 10)   (recommend, search)
  exclude_history  true | false (default true)      (recommend)
  allow       item ids the answer may hold: a list, or one string of ids separated by commas
                                                    (recommend, search, prompt; optional)
  added_since unix seconds or an ISO date: only items `experiments.add_items` added at or
              after it (recommend, search, prompt; optional; with `allow`: items in both)
  prompt      a raw prompt, SID markup allowed      (prompt)
  id          any JSON scalar, echoed in the answer (all)

What each task asks of the model (the prompts are the training templates, first phrasing):
  recommend  the user's most recent `history_len` items (all interactions, by time) -> the
             next item of `type` (default: the type of the user's last item). 'ids' and
             'mixed': the k best items by trie-constrained beam search (score = log
             probability of the SID); 'text' and 'mixed' also generate the answer's text.
  search     the query -> the k best items of `type`; without a type, of every type, merged
             by score.
  describe   the user's history -> a summary of the user (generated text).
  explain    the user's history in the 'mixed' format, the trie restricted to `item` (an
             allow-list of one), so the SID the model writes is that item's -> the model's
             rationale for it (if the model writes no SID, its text is returned as it is).
  prompt     any prompt text -> generated text in `format` (default 'mixed'), SIDs
             constrained to catalog items (of `type` when given).
Unknown fields, users, items, types, formats and tasks, fields a task does not take and
missing required fields raise `RequestError` with the reason.

The catalog a Service answers from is the run's with the changes of `experiments.add_items`
(`neo_jax.run.catalog_update`) when it is built with `catalog_base`: added items are
generated, withdrawn ones never (`explain` refuses them). `allow` / `added_since` restrict a
request to live items (the paper's "new releases" constraint); an allow-set with no live item
answers no item. `reload_catalog` follows a newer catalog version in place (no recompilation
while the trie's spare capacity lasts); `answer_file(follow_catalog=True)` does so before each
chunk when the version changed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from neo_jax.catalog import atomic
from neo_jax.catalog.splits import user_sequences
from neo_jax.decode.ranker import NEORanker, serving_dtype
from neo_jax.run import catalog_update
from neo_jax.run.stages import Artifacts
from neo_jax.tasks import builders
from neo_jax.tasks import prompts
from neo_jax.tasks.types import OUTPUT_FORMATS
from neo_jax.tokenizer.cut import PromptTooLongError, cut_prompt

TASKS = ('recommend', 'search', 'describe', 'explain', 'prompt')
MAX_K = 100
# The fields each task takes (besides `task` and `id`), required ones first in REQUIRED.
TASK_FIELDS = {
    'recommend': ('user', 'type', 'format', 'k', 'exclude_history', 'allow', 'added_since'),
    'search': ('query', 'type', 'format', 'k', 'allow', 'added_since'),
    'describe': ('user',),
    'explain': ('user', 'item'),
    'prompt': ('prompt', 'type', 'format', 'allow', 'added_since'),
}
REQUIRED = {'recommend': ('user',), 'search': ('query',), 'describe': ('user',),
            'explain': ('user', 'item'), 'prompt': ('prompt',)}
FIELDS = ('task', 'id', 'user', 'query', 'item', 'type', 'format', 'k', 'exclude_history',
          'allow', 'added_since', 'prompt')


class RequestError(ValueError):
  """A request that cannot be answered; the message says why."""


@dataclasses.dataclass(frozen=True)
class Request:
  task: str
  user: str | None = None
  query: str | None = None
  item: int | None = None  # catalog row
  type: str | None = None
  format: str = 'ids'
  k: int = 10
  exclude_history: bool = True
  prompt: str | None = None
  id: Any = None
  allow: tuple[str, ...] | None = None  # as given
  added_since: int | str | None = None  # as given
  allowed: tuple[int, ...] | None = None  # the live catalog rows admitted (None: no limit)


def _history_window(seq: np.ndarray, reachable: np.ndarray, n: int) -> np.ndarray:
  """The last n items of `seq` that have an SID (the model can only read those)."""
  seq = np.asarray(seq, np.int64)
  return seq[reachable[seq]][-n:]


class Service:
  """Validates and answers requests against one trained run.

  Args:
    art: the run's artifacts (`neo_jax.run.workdir.load_workdir`), model and trie included.
    prompt_len: token width of prompts (the pipeline uses train.seq_len - 8).
    history_len: how many recent items a prompt shows (the run's tasks.history_len).
    batch_size: requests per compiled batch (1 for an interactive session).
    max_new_tokens: generated text length cap.
    catalog_base: the run's trained catalog (`catalog_update.base_of(run)`): the Service
      answers from its current catalog state (items added and withdrawn by
      `experiments.add_items`) and can `reload_catalog`. None: `art` as it is, no reload.
    dtype: the precision it ranks and generates in (`neo_jax.decode.ranker.serving_dtype`:
      'auto', the run's `eval.dtype` default, is bfloat16 on a CPU).
  """

  def __init__(self, art: Artifacts, *, prompt_len: int, history_len: int, batch_size: int = 16,
               max_new_tokens: int = 48, catalog_base: catalog_update.Base | None = None,
               dtype: str = 'auto'):
    if art.model is None or art.trie is None:
      raise ValueError('Service needs artifacts with a model and a trie')
    self.base = catalog_base
    if catalog_base is None:
      self.state = catalog_update.initial_state(art.dataset.catalog, art.sid_map)
    else:
      self.state = catalog_update.load_state(catalog_base)
      art = catalog_update.apply_to_artifacts(art, self.state)
    self.art = art
    self.catalog = art.dataset.catalog
    self.history_len = int(history_len)
    self.max_new_tokens = int(max_new_tokens)
    self.ranker = NEORanker(art.model, art.tokenizer, art.trie, prompt_len=prompt_len,
                            batch_size=batch_size, progress_label='serving',
                            dtype=serving_dtype(dtype))
    self.histories = user_sequences(art.dataset.interactions)
    self.reachable = art.sid_map.reachable()

  # -- the catalog's changes -------------------------------------------------------------------

  def reload_catalog(self) -> dict[str, Any]:
    """Follows the run's current catalog version (`experiments.add_items`) in place: added
    items go into the ranker's trie (no recompilation while its spare capacity lasts, else one
    growth), withdrawn ones out. Returns {'version', 'added', 'removed', 'grown', 'items',
    'live_items'} (added/removed: rows changed by this reload)."""
    if self.base is None:
      raise catalog_update.CatalogUpdateError(
          'this Service was built without its run (catalog_base): it cannot reload the catalog')
    after = catalog_update.load_state(self.base)
    try:
      facts = catalog_update.update_ranker(self.ranker, self.state, after)
    except ValueError as e:
      raise catalog_update.CatalogUpdateError(
          f'{catalog_update.update_dir(self.base.workdir)}: the catalog went back to an earlier '
          f'state ({e}); restart the service') from None
    self.state = after
    self.catalog = after.catalog
    self.art = dataclasses.replace(
        self.art, dataset=dataclasses.replace(self.art.dataset, catalog=after.catalog),
        sid_map=after.sid_map, trie=self.ranker.trie)
    self.reachable = after.sid_map.reachable()
    return {'version': after.version, **facts, 'items': len(after.catalog),
            'live_items': int(after.live().sum())}

  def catalog_changed(self) -> bool:
    """Whether the run's catalog version is not the one answered from (False without a run)."""
    return (self.base is not None
            and catalog_update.current_version(self.base.workdir) != self.state.version)

  def catalog_facts(self) -> dict[str, Any]:
    """The catalog answered from: version (None: as trained), items, added, removed, live."""
    st = self.state
    return {'version': st.version, 'items': len(st.catalog),
            'added': len(st.catalog) - st.base_items, 'removed': int(st.removed.sum()),
            'live_items': int(st.live().sum())}

  # -- validation ------------------------------------------------------------------------------

  def history(self, user: str) -> np.ndarray:
    """The catalog rows the prompts of `user` show, oldest first."""
    return _history_window(self.histories[user], self.reachable, self.history_len)

  def parse(self, obj: Any) -> Request:
    """A validated `Request` from a decoded JSON value (see the module docstring)."""
    if not isinstance(obj, Mapping):
      raise RequestError(f'a request must be a JSON object, got {type(obj).__name__}')
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
      raise RequestError(f'unknown field(s) {unknown}; known: {list(FIELDS)}')
    given = {k: v for k, v in obj.items() if v is not None}
    task = given.pop('task', 'prompt' if 'prompt' in given else None)
    if task is None:
      raise RequestError("missing field 'task' (one of " + ', '.join(TASKS) + ')')
    if task not in TASKS:
      raise RequestError(f'unknown task {task!r}; known: {list(TASKS)}')
    rid = given.pop('id', None)
    if rid is not None and not isinstance(rid, (str, int, float, bool)):
      raise RequestError("field 'id' must be a JSON scalar")
    if isinstance(rid, float) and not math.isfinite(rid):
      raise RequestError(f"field 'id' must be a finite number or a string, got {rid!r} "
                         '(strict JSON has no NaN or Infinity)')
    extra = sorted(set(given) - set(TASK_FIELDS[task]))
    if extra:
      raise RequestError(f'field(s) {extra} do not apply to task {task!r} (its fields: '
                         f'{list(TASK_FIELDS[task])})')
    missing = [f for f in REQUIRED[task] if f not in given]
    if missing:
      raise RequestError(f'task {task!r} needs field(s) {missing}')
    out: dict[str, Any] = {'task': task, 'id': rid}

    if 'user' in given:
      user = given['user']
      if isinstance(user, int) and not isinstance(user, bool):
        user = str(user)
      if not isinstance(user, str):
        raise RequestError(f"field 'user' must be a string, got {user!r}")
      if user not in self.histories:
        raise RequestError(f'unknown user {user!r}')
      out['user'] = user
    if 'item' in given:
      item = given['item']
      if isinstance(item, int) and not isinstance(item, bool):
        item = str(item)
      if not isinstance(item, str):
        raise RequestError(f"field 'item' must be a string (an item id), got {item!r}")
      try:
        row = self.catalog.index_of(item)
      except KeyError:
        raise RequestError(f'unknown item {item!r}') from None
      if not self.reachable[row]:
        raise RequestError(f'item {item!r} has no SID (a collision policy made it unreachable)')
      if self.state.removed[row]:
        raise RequestError(f'item {item!r} was withdrawn from the catalog '
                           f'(experiments.add_items --remove): it is never generated')
      out['item'] = row
    if 'type' in given:
      if given['type'] not in self.catalog.type_names:
        raise RequestError(f'unknown type {given["type"]!r}; known: '
                           f'{list(self.catalog.type_names)}')
      out['type'] = given['type']
    if 'format' in given:
      if given['format'] not in OUTPUT_FORMATS:
        raise RequestError(f'unknown format {given["format"]!r}; known: '
                           f'{list(OUTPUT_FORMATS)}')
      if task == 'search' and given['format'] != 'ids':
        raise RequestError("search answers in format 'ids' only (the only search format the "
                           'model is trained on)')
      out['format'] = given['format']
    elif task in ('prompt', 'explain'):
      out['format'] = 'mixed'
    elif task == 'describe':
      out['format'] = 'text'
    if 'k' in given:
      k = given['k']
      if isinstance(k, str) and k.strip().isdigit():
        k = int(k)
      if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise RequestError(f"field 'k' must be an integer in [1, {MAX_K}], got {k!r}")
      out['k'] = k
    if 'exclude_history' in given:
      ex = given['exclude_history']
      if isinstance(ex, str) and ex.lower() in ('true', 'false'):
        ex = ex.lower() == 'true'
      if not isinstance(ex, bool):
        raise RequestError(f"field 'exclude_history' must be true or false, got {ex!r}")
      out['exclude_history'] = ex
    for field in ('query', 'prompt'):
      if field in given:
        text = given[field]
        if not isinstance(text, str) or not text.strip():
          raise RequestError(f'field {field!r} must be a non-empty string')
        out[field] = text
    if 'prompt' in out:
      try:
        self.art.tokenizer.encode(out['prompt'])
      except ValueError as e:
        raise RequestError(f'prompt: {e}') from None
    if 'allow' in given or 'added_since' in given:
      out.update(self._allowed(given.get('allow'), given.get('added_since')))
    req = Request(**out)
    if req.task == 'recommend' and req.type is None:
      req = dataclasses.replace(req, type=self._default_type(req.user))
    self._check_fits(req)
    return req

  def _allowed(self, allow: Any, added_since: Any) -> dict[str, Any]:
    """The `allow` / `added_since` fields of a request, checked, with the live rows they
    admit (`allowed`, possibly empty)."""
    out: dict[str, Any] = {}
    if allow is not None:
      if isinstance(allow, str):
        allow = [a.strip() for a in allow.split(',') if a.strip()]
      if not isinstance(allow, list) or not allow:
        raise RequestError("field 'allow' must be a non-empty list of item ids (or a string "
                           f'of ids separated by commas), got {allow!r}')
      ids = []
      for a in allow:
        if isinstance(a, int) and not isinstance(a, bool):
          a = str(a)
        if not isinstance(a, str):
          raise RequestError(f"field 'allow': item ids are strings, got {a!r}")
        ids.append(a)
      out['allow'] = tuple(ids)
    if added_since is not None:
      if isinstance(added_since, bool) or not isinstance(added_since, (int, str)):
        raise RequestError("field 'added_since' must be unix seconds or an ISO date, got "
                           f'{added_since!r}')
      out['added_since'] = added_since
    try:
      rows = catalog_update.allowed_rows(self.state, ids=out.get('allow'),
                                         added_since=out.get('added_since'))
    except catalog_update.CatalogUpdateError as e:
      raise RequestError(str(e)) from None
    out['allowed'] = tuple(rows)
    return out

  def _check_fits(self, req: Request) -> None:
    """RequestError when a prompt of `req` cannot fit the model's prompt width even with its
    older history items cut (a long raw prompt or query: cutting would cut its
    instruction)."""
    room = self.ranker.prompt_len - 2  # bos and the `[SID]` a ranking appends
    types = ([req.type] if req.type or req.task != 'search'
             else list(self.catalog.type_names))
    for t in types:
      try:
        cut_prompt(self.art.tokenizer.encode(self.prompt_of(req, t)), room,
                   self.art.tokenizer)
      except PromptTooLongError as e:
        raise RequestError(f'{req.task}: {e}') from None

  def _default_type(self, user: str) -> str:
    if len(self.catalog.type_names) == 1:
      return self.catalog.type_names[0]
    seq = self.histories[user]
    if not seq.size:
      raise RequestError(f'user {user!r} has no history: give the type to recommend')
    return self.catalog.type_of(int(seq[-1]))

  def parse_command(self, line: str) -> Request:
    """The short command form: `recommend user=U type=movie format=mixed k=10`,
    `search "dark sci-fi" type=movie` (or query="..."), `describe user=U`,
    `explain user=U item=I`, `prompt <raw prompt text>`. Any other line is a search over
    every type for that text."""
    line = line.strip()
    if not line:
      raise RequestError('empty request')
    head, _, rest = line.partition(' ')
    if head == 'prompt':
      return self.parse({'task': 'prompt', 'prompt': rest})
    if head not in TASKS:
      return self.parse({'task': 'search', 'query': line})
    try:
      words = shlex.split(rest)
    except ValueError as e:
      raise RequestError(f'cannot split {rest!r}: {e}') from None
    obj: dict[str, Any] = {'task': head}
    bare = []
    for w in words:
      key, eq, value = w.partition('=')
      if eq and key in FIELDS and key != 'task':
        obj[key] = value
      else:
        bare.append(w)
    if bare:
      if head != 'search':
        raise RequestError(f'{head} takes key=value fields ({", ".join(TASK_FIELDS[head])}), '
                           f'got {" ".join(bare)!r}')
      if 'query' in obj:
        raise RequestError(f'query given twice: query={obj["query"]!r} and {" ".join(bare)!r}')
      obj['query'] = ' '.join(bare)
    return self.parse(obj)

  # -- prompts ---------------------------------------------------------------------------------

  def _history_body(self, user: str) -> str:
    return prompts.render_history(self.art.sid_map, self.art.tokenizer.sid, self.history(user))

  def prompt_of(self, req: Request, type_name: str | None = None) -> str:
    """The model prompt of `req` (for search without a type: of `type_name`)."""
    if req.task == 'recommend':
      return prompts.render_prompt('recommend', req.type, req.format, 0,
                                   self._history_body(req.user))
    if req.task == 'search':
      return prompts.render_prompt('search', type_name or req.type, 'ids', 0,
                                   prompts.plain_text(req.query))
    if req.task == 'describe':
      return prompts.render_prompt('user_summary', prompts.USER_TYPE, 'text', 0,
                                   self._history_body(req.user))
    if req.task == 'explain':
      return prompts.render_prompt('recommend', self.catalog.type_of(req.item), 'mixed', 0,
                                   self._history_body(req.user))
    return req.prompt

  # -- answering -------------------------------------------------------------------------------

  def _item(self, row: int, score: float | None = None, rank: int | None = None
            ) -> dict[str, Any]:
    out = {'id': self.catalog.ids[row], 'title': self.catalog.titles[row],
           'type': self.catalog.type_of(row)}
    if rank is not None:
      out = {'rank': rank, **out}
    if score is not None:
      out['score'] = round(float(score), 4)
    return out

  def answer(self, reqs: Sequence[Request]) -> list[dict[str, Any]]:
    """Answers of `reqs`, in order, each a JSON-ready dict: the request's fields, `prompt`,
    `items` (ranked, with id, title, type and score) when ranked, `text` and `text_items`
    (the items the text names) when generated. Ranking runs as one batched beam search
    (num_beams = the largest k), generation as one batched call per output format."""
    answers: list[dict[str, Any]] = []
    rank_jobs: list[tuple[int, str, str | None, Sequence[int], Sequence[int] | None]] = []
    gen_jobs: dict[str, list[tuple[int, str, str | None, Sequence[int] | None]]] = {}
    for n, req in enumerate(reqs):
      ans: dict[str, Any] = {'task': req.task}
      if req.id is not None:
        ans['id'] = req.id
      for field in ('user', 'query', 'type', 'format'):
        if getattr(req, field) is not None:
          ans[field] = getattr(req, field)
      if req.item is not None:
        ans['item'] = self._item(req.item)
      if req.allow is not None:
        ans['allow'] = list(req.allow)
      if req.added_since is not None:
        ans['added_since'] = req.added_since
      allowed = None if req.allowed is None else list(req.allowed)
      if allowed is not None:
        ans['allowed_items'] = len(allowed)
      if req.task == 'recommend':
        ans['k'] = req.k
        ans['history'] = [self._item(int(r)) for r in self.history(req.user)]
        ans['prompt'] = self.prompt_of(req)
        excluded = list(map(int, self.histories[req.user])) if req.exclude_history else []
        if req.format in ('ids', 'mixed'):
          rank_jobs.append((n, ans['prompt'], req.type, excluded, allowed))
        if req.format in ('text', 'mixed'):
          gen_jobs.setdefault(req.format, []).append((n, ans['prompt'], req.type, allowed))
      elif req.task == 'search':
        ans['k'] = req.k
        types = [req.type] if req.type else list(self.catalog.type_names)
        if len(types) == 1:
          ans['prompt'] = self.prompt_of(req, types[0])
        else:  # one prompt per type; their items are merged by score
          ans['prompts'] = [self.prompt_of(req, t) for t in types]
        for t in types:
          rank_jobs.append((n, self.prompt_of(req, t), t, [], allowed))
      elif req.task in ('describe', 'explain'):
        if req.task == 'describe':
          ans['history'] = [self._item(int(r)) for r in self.history(req.user)]
        ans['prompt'] = self.prompt_of(req)
        gen_jobs.setdefault(req.format, []).append(
            (n, ans['prompt'], None, None if req.item is None else [req.item]))
      else:
        ans['prompt'] = req.prompt
        gen_jobs.setdefault(req.format, []).append((n, req.prompt, req.type, allowed))
      answers.append(ans)

    for n, *_ in rank_jobs:
      answers[n]['items'] = []  # stays empty when no item is admissible
    if rank_jobs:
      beams = max(reqs[n].k for n, *_ in rank_jobs)
      allow = [j[4] for j in rank_jobs]
      items, scores = self.ranker.rank(
          [j[1] for j in rank_jobs], [j[2] for j in rank_jobs], beams,
          excluded=[j[3] for j in rank_jobs],
          allowed=allow if any(a is not None for a in allow) else None)
      merged: dict[int, list[tuple[float, int]]] = {}
      for (n, *_), row_items, row_scores in zip(rank_jobs, items, scores):
        merged.setdefault(n, []).extend(
            (float(s), int(i)) for i, s in zip(row_items, row_scores) if i >= 0)
      for n, cands in merged.items():
        best = sorted(cands, key=lambda c: -c[0])[:reqs[n].k]
        answers[n]['items'] = [self._item(i, s, r + 1) for r, (s, i) in enumerate(best)]
    for fmt, jobs in gen_jobs.items():
      allowed = [j[3] for j in jobs]
      outs = self.ranker.generate(
          [j[1] for j in jobs], fmt, target_types=[j[2] for j in jobs],
          max_new_tokens=self.max_new_tokens,
          allowed=allowed if any(a is not None for a in allowed) else None)
      for (n, *_), (text, _) in zip(jobs, outs):
        answers[n]['text'] = text
        named = builders.describe_items(text, self.art.sid_map, self.art.tokenizer.sid,
                                        self.catalog)
        answers[n]['text_items'] = [
            self._item(row) if row is not None else {'id': None, 'title': None, 'type': t}
            for row, _, t in named]
    return answers

  def answer_timed(self, reqs: Sequence[Request]) -> tuple[list[dict[str, Any]], float]:
    t0 = time.perf_counter()
    out = self.answer(reqs)
    return out, time.perf_counter() - t0


def _reject_constant(name: str) -> Any:
  raise ValueError(f'{name} is not JSON (strict JSON has no NaN or Infinity)')


def parse_line(svc: Service, line: str) -> Request:
  """A request from one JSONL line (strict JSON: NaN and Infinity are refused)."""
  try:
    obj = json.loads(line, parse_constant=_reject_constant)
  except ValueError as e:
    raise RequestError(f'bad JSON: {e}') from None
  return svc.parse(obj)


def answered_lines(out_path: str) -> set[int]:
  """The input line numbers that `out_path` (an answer file of `answer_file`) holds a record
  of, after cutting a last line that a killed writer left unfinished."""
  if not atomic.as_path(out_path).exists():
    return set()
  atomic.repair_jsonl(out_path)
  done = set()
  for n, rec in enumerate(atomic.read_jsonl(out_path), start=1):
    if not isinstance(rec, dict) or not isinstance(rec.get('line'), int):
      raise ValueError(f'{out_path}:{n}: not an answer record of this tool (no "line")')
    done.add(rec['line'])
  return done


def answer_file(svc: Service, in_path: str, out_path: str, *, resume: bool = False,
                chunk: int = 256, follow_catalog: bool = False,
                log: Callable[[str], None] = print) -> dict[str, Any]:
  """Answers the JSONL requests of `in_path` into `out_path`, one record per non-blank line.

  Each record is `{"line": n, ...answer}` or `{"line": n, "error": ...}`, strict JSON. Lines
  are read and answered `chunk` requests at a time, and each chunk's records (its answers and
  the bad lines read with it, by line) are appended and synced when it is done, so that a
  kill loses at most the chunk in progress. A bad line (`RequestError`) is a record with the
  reason; an unexpected error while answering a chunk is a record for each of its lines
  (`"error": "internal error ..."`, `"internal": true`) and the batch goes on.

  resume: `out_path` may hold records of an interrupted run of the same input: those lines
  are skipped (their records kept) and the rest answered, so every line is answered exactly
  once. Without it an existing, non-empty `out_path` is refused (FileExistsError), so nothing
  is overwritten by mistake.

  follow_catalog: before reading each chunk, `svc.reload_catalog()` when the run's catalog
  version changed (`experiments.add_items` ran meanwhile): the chunk's requests are checked
  and answered against the new catalog.

  Returns:
    answered, bad (request errors), failed (lines of chunks that failed), blank_lines,
    resumed_lines (skipped: already in out_path), seconds_answer, prompts_cut and
    history_items_cut (prompts that lost history items to fit, `NEORanker.prompt_tokens`);
    with follow_catalog, catalog_reloads and catalog_version (the last one answered from).
  """
  out = atomic.as_path(out_path)
  if not resume and out.exists() and out.stat().length > 0:
    raise FileExistsError(f'{out_path} exists; pass --resume to answer only the lines it '
                          'lacks, or remove it')
  done = answered_lines(out_path) if resume else set()
  counts = {'answered': 0, 'bad': 0, 'failed': 0, 'blank_lines': 0,
            'resumed_lines': len(done), 'seconds_answer': 0.0}
  if follow_catalog:
    counts['catalog_reloads'] = 0
  svc.ranker.reset_cut_stats()
  pending: list[tuple[int, Request]] = []
  records: list[dict[str, Any]] = []

  def flush():
    if pending:
      reqs = [r for _, r in pending]
      try:
        out, dt = svc.answer_timed(reqs)
      except Exception as e:  # pylint: disable=broad-except
        # A failure of the model or a bug, not of a request: reported for these lines.
        reason = ' '.join(f'{type(e).__name__}: {e}'.split())[:500]
        log(f'{in_path}: lines {pending[0][0]}..{pending[-1][0]}: internal error: {reason}')
        counts['failed'] += len(pending)
        records.extend({'line': n, 'error': f'internal error answering this chunk: {reason}',
                        'internal': True} for n, _ in pending)
      else:
        counts['seconds_answer'] += dt
        counts['answered'] += len(out)
        records.extend({'line': n, **ans} for (n, _), ans in zip(pending, out))
    writer.append(sorted(records, key=lambda r: r['line']))
    log(f'answered {counts["answered"]} requests ({counts["seconds_answer"]:.1f}s)')
    pending.clear()
    records.clear()

  def start_chunk():
    if follow_catalog and svc.catalog_changed():
      facts = svc.reload_catalog()
      counts['catalog_reloads'] += 1
      log(f'catalog reloaded: version {facts["version"]}, {facts["added"]} added, '
          f'{facts["removed"]} withdrawn, {facts["live_items"]} live items')

  with atomic.JsonlAppender(out_path, truncate=not resume) as writer, \
      atomic.open_text(in_path) as f:
    for n, line in enumerate(f, start=1):
      if not line.strip():
        counts['blank_lines'] += 1
        continue
      if n in done:
        continue
      if not pending and not records:
        start_chunk()
      try:
        pending.append((n, parse_line(svc, line)))
      except RequestError as e:
        counts['bad'] += 1
        records.append({'line': n, 'error': str(e)})
        log(f'{in_path}:{n}: {e}')
      if len(pending) >= chunk:
        flush()
    if pending or records:
      flush()
  counts.update(svc.ranker.reset_cut_stats())
  if follow_catalog:
    counts['catalog_version'] = svc.state.version
  return counts


def format_answer(ans: dict[str, Any]) -> str:
  """A human-readable rendering of one answer of `Service.answer` (the interactive mode)."""
  def item(it):
    return f'{it["title"]!r} ({it["type"]}, id {it["id"]})'

  what = ans['task']
  bits = [f'{k}={ans[k]}' for k in ('user', 'type', 'format', 'k') if k in ans]
  if 'allow' in ans:
    bits.append('allow=' + ','.join(ans['allow']))
  if 'added_since' in ans:
    bits.append(f'added_since={ans["added_since"]}')
  if 'allowed_items' in ans:
    bits.append(f'({ans["allowed_items"]} live items admitted)')
  if 'query' in ans:
    bits.insert(0, repr(ans['query']))
  if 'item' in ans:
    bits.append(f'item={item(ans["item"])}')
  lines = [f'== {what} ' + ' '.join(bits)]
  if ans.get('history'):
    lines.append(f'history ({len(ans["history"])} most recent, oldest first): '
                 + '; '.join(repr(h['title']) for h in ans['history']))
  if 'items' in ans:
    if not ans['items']:
      lines.append('items: none (no admissible item)')
    for it in ans['items']:
      score = it.get('score')
      lines.append(f'{it["rank"]:>3}. {item(it)}' + (
          '' if score is None or math.isnan(score) else f'  log-prob {score:.3f}'))
  if 'text' in ans:
    lines.append(f'text: {ans["text"]}')
    for it in ans['text_items']:
      lines.append('  names ' + (item(it) if it['id'] is not None else
                                 '<an SID of no catalog item>'))
  return '\n'.join(lines)
