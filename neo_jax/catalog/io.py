"""Reading and writing the generic dataset directory (neo_jax/ARCHITECTURE.md, "Data contracts").

A dataset directory holds:
  items.jsonl         one object per line: `id` (str, unique), `type` (str, [A-Za-z0-9_-]+),
                      `title` (non-empty str); optional `description` (str), `tags` (list of
                      str), `attributes` (object of scalars), `popularity` (finite number).
  interactions.csv    header with at least `user_id,item_id,timestamp` (integer seconds); any
                      other columns are kept, as strings, in `Interactions.extra`.
  queries.jsonl       optional: `query` (non-empty str), `item_ids` (non-empty list of str),
                      optional `user_id` (str), `timestamp` (int).
  users.jsonl         optional: `id` (str, unique), optional `attributes` (object), `summary` (str).

Optional fields may also be given as JSON null, which means absent. Blank lines in the JSONL
files are ignored; unknown fields are an error (a misspelt `titel` must not pass silently).
Every problem raises `DatasetError` naming the file, the 1-based line and the field.

The directory may be local or on any file system `etils.epath` supports (`gs://bucket/data`):
files are read through `catalog.atomic.open_text`, and `write_dataset` writes through
`catalog.atomic.atomic_directory`, which on an object store uploads items.jsonl and then
interactions.csv last, so that a reader never takes a half-uploaded directory for a dataset.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import itertools
import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from etils import epath

from neo_jax.catalog import atomic
from neo_jax.catalog.types import Catalog, Dataset, DatasetError, Interactions, Query, User

ITEMS_FILE = 'items.jsonl'
INTERACTIONS_FILE = 'interactions.csv'
QUERIES_FILE = 'queries.jsonl'
USERS_FILE = 'users.jsonl'

TYPE_NAME_RE = re.compile(r'[A-Za-z0-9_-]+')
UNKNOWN_ITEM_POLICIES = ('error', 'skip')
OUT_OF_ORDER_POLICIES = ('allow', 'error')
REQUIRED_COLUMNS = ('user_id', 'item_id', 'timestamp')

# Keys of `Dataset.skipped` that the 'skip' policy fills.
SKIP_UNKNOWN_INTERACTIONS = 'interactions_with_unknown_item'
SKIP_UNKNOWN_QUERIES = 'queries_with_only_unknown_items'
SKIP_UNKNOWN_QUERY_IDS = 'query_item_ids_unknown'

_ITEM_FIELDS = frozenset(
    ('id', 'type', 'title', 'description', 'tags', 'attributes', 'popularity'))
_QUERY_FIELDS = frozenset(('query', 'item_ids', 'user_id', 'timestamp'))
_USER_FIELDS = frozenset(('id', 'attributes', 'summary'))
# At most 18 digits so that every accepted value fits int64 without an overflow check.
_TIMESTAMP_RE = re.compile(r'-?[0-9]{1,18}')
_TIMESTAMPS_RE = re.compile(r'(?:-?[0-9]{1,18}\n)*-?[0-9]{1,18}')
_CSV_BATCH_ROWS = 1 << 20


# ---------------------------------------------------------------------------------------------
# Field checks shared by the JSONL readers.


def _json_lines(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
  """Yields (1-based line number, object) for each non-blank line of a JSONL file."""
  with atomic.open_text(path) as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise DatasetError(path, line_no, None,
                           f'invalid JSON ({e.msg} at column {e.colno})') from None
      if not isinstance(obj, dict):
        raise DatasetError(path, line_no, None,
                           f'expected a JSON object, got {type(obj).__name__}')
      yield line_no, obj


def _check_fields(path, line_no, obj, allowed):
  unknown = obj.keys() - allowed
  if unknown:
    field = sorted(unknown)[0]
    raise DatasetError(path, line_no, field,
                       f'unknown field; allowed fields are {sorted(allowed)}')


def _required_str(path, line_no, obj, field) -> str:
  if field not in obj or obj[field] is None:
    raise DatasetError(path, line_no, field, 'missing required field')
  value = obj[field]
  if not isinstance(value, str):
    raise DatasetError(path, line_no, field, f'must be a string, got {_json_type(value)}')
  if not value.strip():
    raise DatasetError(path, line_no, field, 'must be a non-empty string')
  return value


def _optional_str(path, line_no, obj, field) -> str | None:
  value = obj.get(field)
  if value is not None and not isinstance(value, str):
    raise DatasetError(path, line_no, field, f'must be a string, got {_json_type(value)}')
  return value


def _optional_object(path, line_no, obj, field, scalars_only) -> dict[str, Any]:
  value = obj.get(field)
  if value is None:
    return {}
  if not isinstance(value, dict):
    raise DatasetError(path, line_no, field, f'must be an object, got {_json_type(value)}')
  if scalars_only:
    for key, v in value.items():
      if v is not None and not isinstance(v, (str, int, float, bool)):
        raise DatasetError(path, line_no, f'{field}.{key}',
                           f'attribute values must be scalars, got {_json_type(v)}')
  return value


def _str_list(path, line_no, obj, field, required) -> list[str]:
  value = obj.get(field)
  if value is None:
    if required:
      raise DatasetError(path, line_no, field, 'missing required field')
    return []
  if not isinstance(value, list):
    raise DatasetError(path, line_no, field, f'must be a list, got {_json_type(value)}')
  for v in value:
    if not isinstance(v, str) or not v:
      raise DatasetError(path, line_no, field,
                         f'every element must be a non-empty string, got {v!r}')
  if required and not value:
    raise DatasetError(path, line_no, field, 'must be a non-empty list')
  return value


def _json_type(value) -> str:
  if value is None:
    return 'null'
  if isinstance(value, bool):
    return 'boolean'
  if isinstance(value, (int, float)):
    return 'number'
  if isinstance(value, str):
    return 'string'
  if isinstance(value, list):
    return 'list'
  if isinstance(value, dict):
    return 'object'
  return type(value).__name__


# ---------------------------------------------------------------------------------------------
# Readers.


def read_items(path: str, allowed_types: frozenset[str] | None = None) -> Catalog:
  """The catalog of a generic-format items.jsonl file (`load_dataset` reads the dataset's
  with it; `experiments.add_items` the new items).

  Args:
    path: the items file (one JSON object a line; fields: module docstring).
    allowed_types: the entity types an item may have (None: any type name of the format).

  Raises:
    DatasetError: naming the file, line and field of the first bad item (unknown field, type
      or field type, duplicate id, no items).
  """
  ids, types, titles, descriptions, tags, attributes, popularity = [], [], [], [], [], [], []
  first_line: dict[str, int] = {}
  for line_no, obj in _json_lines(path):
    _check_fields(path, line_no, obj, _ITEM_FIELDS)
    item_id = _required_str(path, line_no, obj, 'id')
    if item_id in first_line:
      raise DatasetError(path, line_no, 'id',
                         f'duplicate item id {item_id!r} (first on line {first_line[item_id]})')
    first_line[item_id] = line_no
    type_name = _required_str(path, line_no, obj, 'type')
    if not TYPE_NAME_RE.fullmatch(type_name):
      raise DatasetError(path, line_no, 'type',
                         f'entity type {type_name!r} must match {TYPE_NAME_RE.pattern}')
    if allowed_types is not None and type_name not in allowed_types:
      raise DatasetError(path, line_no, 'type',
                         f'unknown entity type {type_name!r}; the declared types are '
                         f'{sorted(allowed_types)}')
    title = _required_str(path, line_no, obj, 'title')
    description = _optional_str(path, line_no, obj, 'description') or ''
    item_tags = tuple(_str_list(path, line_no, obj, 'tags', required=False))
    item_attributes = _optional_object(path, line_no, obj, 'attributes', scalars_only=True)
    pop = obj.get('popularity')
    if pop is None:
      pop = math.nan
    elif isinstance(pop, bool) or not isinstance(pop, (int, float)) or not math.isfinite(pop):
      raise DatasetError(path, line_no, 'popularity', f'must be a finite number, got {pop!r}')
    ids.append(item_id)
    types.append(type_name)
    titles.append(title)
    descriptions.append(description)
    tags.append(item_tags)
    attributes.append(item_attributes)
    popularity.append(pop)
  if not ids:
    raise DatasetError(path, None, None, 'no items')
  type_names = tuple(sorted(set(types)))
  type_to_index = {t: i for i, t in enumerate(type_names)}
  return Catalog(
      ids=ids,
      type_names=type_names,
      type_index=np.fromiter((type_to_index[t] for t in types), np.int32, len(types)),
      titles=titles,
      descriptions=descriptions,
      tags=tags,
      attributes=attributes,
      popularity=np.asarray(popularity, np.float32),
      _id_to_index={item_id: n for n, item_id in enumerate(ids)},
  )


def _csv_line_of_row(path: str, row: int) -> int:
  """1-based file line on which data row `row` (0-based, header excluded) starts."""
  with atomic.open_text(path, newline='') as f:
    reader = csv.reader(f)
    line = 1
    for n, _ in enumerate(reader):
      if n == row + 1:
        return line
      line = reader.line_num + 1
  raise AssertionError(f'{path} has no data row {row}')


def _read_interactions(path: str, catalog: Catalog, on_unknown_item: str,
                       skipped: dict[str, int]) -> Interactions:
  id_to_index = catalog._id_to_index or {i: n for n, i in enumerate(catalog.ids)}
  user_to_index: dict[str, int] = {}
  user_parts, item_parts, time_parts = [], [], []
  extra: dict[str, list[str]] = {}
  unknown_count = 0
  with atomic.open_text(path, newline='') as f:
    reader = csv.reader(f)
    try:
      header = next(reader)
    except StopIteration:
      raise DatasetError(path, 1, None, 'empty file; expected a header row') from None
    except csv.Error as e:
      raise DatasetError(path, 1, None, f'malformed CSV: {e}') from None
    if len(set(header)) != len(header):
      dup = next(c for c in header if header.count(c) > 1)
      raise DatasetError(path, 1, dup, 'column appears more than once in the header')
    for column in REQUIRED_COLUMNS:
      if column not in header:
        raise DatasetError(path, 1, column,
                           f'header lacks this required column; header is {header}')
    num_columns = len(header)
    user_col, item_col, time_col = (header.index(c) for c in REQUIRED_COLUMNS)
    extra_cols = [(i, c) for i, c in enumerate(header) if c not in REQUIRED_COLUMNS]
    for name in (c for _, c in extra_cols):
      extra[name] = []
    row_base = 0
    while True:
      try:
        batch = list(itertools.islice(reader, _CSV_BATCH_ROWS))
      except csv.Error as e:
        raise DatasetError(path, reader.line_num, None, f'malformed CSV: {e}') from None
      if not batch:
        break
      for n, row in enumerate(batch):
        if len(row) != num_columns:
          raise DatasetError(path, _csv_line_of_row(path, row_base + n), None,
                             f'expected {num_columns} fields, got {len(row)}')
      columns = list(zip(*batch))
      del batch
      users, items, times = columns[user_col], columns[item_col], columns[time_col]
      for name, values in (('user_id', users), ('item_id', items)):
        if '' in values:
          n = values.index('')
          raise DatasetError(path, _csv_line_of_row(path, row_base + n), name, 'empty value')

      if not _TIMESTAMPS_RE.fullmatch('\n'.join(times)):
        n = next(n for n, t in enumerate(times) if not _TIMESTAMP_RE.fullmatch(t))
        raise DatasetError(path, _csv_line_of_row(path, row_base + n), 'timestamp',
                           f'must be an integer number of seconds, got {times[n]!r}')
      # The pattern above already proved every value a plain integer that fits int64.
      time_B = np.fromiter(map(int, times), np.int64, len(times))

      item_B = np.fromiter((id_to_index.get(i, -1) for i in items), np.int64, len(items))
      known_B = item_B >= 0
      if not known_B.all():
        if on_unknown_item == 'error':
          n = int(np.argmin(known_B))
          raise DatasetError(
              path, _csv_line_of_row(path, row_base + n), 'item_id',
              f'unknown item id {items[n]!r} (not in {ITEMS_FILE}); '
              "load with on_unknown_item='skip' to skip and count such rows")
        unknown_count += int((~known_B).sum())
        keep = np.flatnonzero(known_B)
        item_B, time_B = item_B[keep], time_B[keep]
        users = [users[k] for k in keep.tolist()]
        for i, name in extra_cols:
          extra[name].extend(columns[i][k] for k in keep.tolist())
      else:
        for i, name in extra_cols:
          extra[name].extend(columns[i])
      # dict.setdefault evaluates len() before inserting, so new users get the next index.
      user_parts.append(np.fromiter(
          (user_to_index.setdefault(u, len(user_to_index)) for u in users), np.int32,
          len(users)))
      item_parts.append(item_B.astype(np.int32))
      time_parts.append(time_B)
      row_base += len(items)
  if unknown_count:
    skipped[SKIP_UNKNOWN_INTERACTIONS] = unknown_count

  def cat(parts, dtype):
    return np.concatenate(parts).astype(dtype) if parts else np.zeros((0,), dtype)

  return Interactions(
      user_names=list(user_to_index),
      user_index=cat(user_parts, np.int32),
      item_index=cat(item_parts, np.int32),
      timestamp=cat(time_parts, np.int64),
      extra=extra,
  )


def _read_queries(path: str, catalog: Catalog, on_unknown_item: str,
                  skipped: dict[str, int]) -> list[Query]:
  id_to_index = catalog._id_to_index or {i: n for n, i in enumerate(catalog.ids)}
  queries = []
  all_unknown = unknown_ids = 0
  for line_no, obj in _json_lines(path):
    _check_fields(path, line_no, obj, _QUERY_FIELDS)
    text = _required_str(path, line_no, obj, 'query')
    item_ids = _str_list(path, line_no, obj, 'item_ids', required=True)
    if len(set(item_ids)) != len(item_ids):
      raise DatasetError(path, line_no, 'item_ids', f'repeated item id in {item_ids}')
    user_id = _optional_str(path, line_no, obj, 'user_id')
    timestamp = obj.get('timestamp')
    if timestamp is not None and (isinstance(timestamp, bool) or
                                  not isinstance(timestamp, int)):
      raise DatasetError(path, line_no, 'timestamp',
                         f'must be an integer number of seconds, got {timestamp!r}')
    rows = []
    for item_id in item_ids:
      row = id_to_index.get(item_id)
      if row is None:
        if on_unknown_item == 'error':
          raise DatasetError(
              path, line_no, 'item_ids',
              f'unknown item id {item_id!r} (not in {ITEMS_FILE}); '
              "load with on_unknown_item='skip' to skip and count such ids")
        unknown_ids += 1
      else:
        rows.append(row)
    if not rows:
      all_unknown += 1
      continue
    queries.append(Query(text=text, item_index=tuple(rows), user_id=user_id,
                         timestamp=timestamp))
  if unknown_ids:
    skipped[SKIP_UNKNOWN_QUERY_IDS] = unknown_ids
  if all_unknown:
    skipped[SKIP_UNKNOWN_QUERIES] = all_unknown
  return queries


def _read_users(path: str) -> dict[str, User]:
  users: dict[str, User] = {}
  first_line: dict[str, int] = {}
  for line_no, obj in _json_lines(path):
    _check_fields(path, line_no, obj, _USER_FIELDS)
    user_id = _required_str(path, line_no, obj, 'id')
    if user_id in first_line:
      raise DatasetError(path, line_no, 'id',
                         f'duplicate user id {user_id!r} (first on line {first_line[user_id]})')
    first_line[user_id] = line_no
    users[user_id] = User(
        id=user_id,
        attributes=_optional_object(path, line_no, obj, 'attributes', scalars_only=False),
        summary=_optional_str(path, line_no, obj, 'summary'),
    )
  return users


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
  """Pauses the cyclic garbage collector, restoring its previous state afterwards.

  Loading builds millions of small containers that are all alive, so each automatic full
  collection rescans them: measured on 1M items and 2.4M events, reading interactions took
  37 s with the collector and 14 s without. The containers built here (strings, tuples, dicts
  of scalars) form no reference cycles, so pausing it frees nothing later than otherwise.
  """
  was_enabled = gc.isenabled()
  gc.disable()
  try:
    yield
  finally:
    if was_enabled:
      gc.enable()


def load_dataset(directory: str | os.PathLike, name: str | None = None,
                 on_unknown_item: str = 'error', allowed_types: Sequence[str] | None = None,
                 on_out_of_order: str = 'allow') -> Dataset:
  """Reads a generic dataset directory.

  Args:
    directory: holds items.jsonl and interactions.csv, optionally queries.jsonl, users.jsonl.
    name: the dataset's name; default the directory's base name.
    on_unknown_item: what to do with an interaction or query naming an item id that is not in
      items.jsonl: 'error' raises; 'skip' drops the interaction (or the unknown id of a query,
      and the query when none of its ids is known) and counts it in `Dataset.skipped`.
    allowed_types: the declared entity types; an item of any other type is an error (catches
      a misspelt type such as 'moive', which would otherwise become a type of its own).
      None accepts every name matching TYPE_NAME_RE.
    on_out_of_order: interactions need not be sorted by time; 'allow' keeps file order (splits
      sort each user's events by time, ties in file order; `interaction_report` counts the
      events that come before an earlier-numbered event of the same user), 'error' rejects
      the first event whose timestamp is earlier than its user's previous event in the file.

  Returns:
    The dataset; catalog rows in items.jsonl order, interactions in file order.

  Raises:
    DatasetError: naming file, line and field of the first problem found.
  """
  if on_unknown_item not in UNKNOWN_ITEM_POLICIES:
    raise ValueError(
        f'on_unknown_item must be one of {UNKNOWN_ITEM_POLICIES}, got {on_unknown_item!r}')
  if on_out_of_order not in OUT_OF_ORDER_POLICIES:
    raise ValueError(
        f'on_out_of_order must be one of {OUT_OF_ORDER_POLICIES}, got {on_out_of_order!r}')
  if allowed_types is not None:
    if isinstance(allowed_types, str):
      raise ValueError(f'allowed_types must be a sequence of type names, got {allowed_types!r}')
    for t in allowed_types:
      if not isinstance(t, str) or not TYPE_NAME_RE.fullmatch(t):
        raise ValueError(f'allowed_types: {t!r} does not match {TYPE_NAME_RE.pattern}')
    allowed_types = frozenset(allowed_types)
  directory = os.fspath(directory)
  atomic.is_remote(directory)  # an unknown scheme is named here

  def join(name: str) -> str:
    return os.fspath(epath.Path(directory) / name)

  def is_file(path: str) -> bool:
    return epath.Path(path).exists() and not epath.Path(path).is_dir()

  if not epath.Path(directory).is_dir():
    raise DatasetError(directory, None, None, 'not a directory')
  for required in (ITEMS_FILE, INTERACTIONS_FILE):
    if not is_file(join(required)):
      raise DatasetError(join(required), None, None, 'required file is missing')
  skipped: dict[str, int] = {}
  with _gc_paused():
    catalog = read_items(join(ITEMS_FILE), allowed_types)
    interactions_path = join(INTERACTIONS_FILE)
    interactions = _read_interactions(interactions_path, catalog, on_unknown_item, skipped)
    if on_out_of_order == 'error':
      bad = _first_out_of_order(interactions)
      if bad is not None:
        row, previous = bad
        user = interactions.user_names[int(interactions.user_index[row])]
        # Skipped rows shift the row numbering, so the file line is then not known here.
        if skipped.get(SKIP_UNKNOWN_INTERACTIONS):
          where = None
        else:
          where = _csv_line_of_row(interactions_path, row)
        raise DatasetError(
            interactions_path, where, 'timestamp',
            f'user {user!r}: timestamp {int(interactions.timestamp[row])} is earlier than '
            f'the previous event of this user ({int(interactions.timestamp[previous])}); '
            "events must be sorted by time within each user, or load with "
            "on_out_of_order='allow' (splits sort them)")
    queries_path = join(QUERIES_FILE)
    queries = (_read_queries(queries_path, catalog, on_unknown_item, skipped)
               if is_file(queries_path) else [])
    users_path = join(USERS_FILE)
    users = _read_users(users_path) if is_file(users_path) else {}
  if name is None:
    name = atomic.as_path(directory).name
  return Dataset(name=name, catalog=catalog, interactions=interactions, queries=queries,
                 users=users, skipped=skipped)


def _first_out_of_order(interactions: Interactions) -> tuple[int, int] | None:
  """(row, previous row of the same user) of the first event earlier than its predecessor."""
  rows = out_of_order_rows(interactions)
  if not rows.size:
    return None
  row = int(rows[0])
  same = np.flatnonzero(interactions.user_index[:row] == interactions.user_index[row])
  return row, int(same[-1])


def out_of_order_rows(interactions: Interactions) -> np.ndarray:
  """Rows (ascending) whose timestamp is earlier than the same user's previous row."""
  n = len(interactions)
  if n == 0:
    return np.zeros(0, np.int64)
  order = np.lexsort((np.arange(n), interactions.user_index))  # by user, then file order
  users, times = interactions.user_index[order], interactions.timestamp[order]
  bad = np.zeros(n, bool)
  bad[1:] = (users[1:] == users[:-1]) & (times[1:] < times[:-1])
  return np.sort(order[bad])


def interaction_report(dataset: Dataset) -> dict[str, int]:
  """Counts of what documented policies do with a dataset's interactions; nothing is hidden.

  `interactions_out_of_order`: events earlier than their user's previous event in file order
  (kept; splits sort each user's events by time, ties in file order).
  `users_with_fewer_than_2_interactions`: kept for training, never evaluated (splits count
  them in `Split.skipped`). `users_without_interactions`: in users.jsonl but with no event.
  `duplicate_interactions`: rows repeating a (user, item, timestamp) of an earlier row (kept).
  """
  inter = dataset.interactions
  counts = np.bincount(inter.user_index, minlength=len(inter.user_names))
  seen_users = set(inter.user_names)
  triples = np.stack([inter.user_index.astype(np.int64), inter.item_index.astype(np.int64),
                      inter.timestamp], axis=1) if len(inter) else np.zeros((0, 3), np.int64)
  distinct = np.unique(triples, axis=0).shape[0] if len(inter) else 0
  return {
      'interactions_out_of_order': int(out_of_order_rows(inter).size),
      'users_with_fewer_than_2_interactions': int((counts < 2).sum()),
      'users_without_interactions': sum(u not in seen_users for u in dataset.users),
      'duplicate_interactions': len(inter) - distinct,
  }


# ---------------------------------------------------------------------------------------------
# Writers.


# Re-exported: where the catalog layer (and every layer above) gets its atomic directory.
atomic_directory = atomic.atomic_directory


def _float32_json(x) -> float:
  # The shortest decimal that reads back as the same float32, so files stay readable.
  return float(str(np.float32(x)))


def item_json(catalog: Catalog, n: int) -> dict[str, Any]:
  """Row `n` of `catalog` as its generic-format JSON object (what `read_items` reads back
  equal): absent optional fields (empty description, tags, attributes; NaN popularity) left
  out, popularity as the shortest decimal of its float32."""
  obj: dict[str, Any] = {'id': catalog.ids[n], 'type': catalog.type_of(n),
                         'title': catalog.titles[n]}
  if catalog.descriptions[n]:
    obj['description'] = catalog.descriptions[n]
  if catalog.tags[n]:
    obj['tags'] = list(catalog.tags[n])
  if catalog.attributes[n]:
    obj['attributes'] = catalog.attributes[n]
  if not np.isnan(catalog.popularity[n]):
    obj['popularity'] = _float32_json(catalog.popularity[n])
  return obj


def write_dataset(dataset: Dataset, directory: str | os.PathLike,
                  overwrite: bool = False) -> None:
  """Writes `dataset` in the generic format, atomically (temporary directory, then rename; on
  an object store uploaded with interactions.csv last: module docstring).

  Absent optional fields (empty description, tags, attributes; NaN popularity; None
  user_id/timestamp/summary) are left out, so `load_dataset` reads back an equal dataset.
  `Dataset.name` and `Dataset.skipped` are not stored; users of `Interactions.user_names`
  without events cannot be represented and do not come back.

  Raises:
    ValueError: the dataset breaks the format (bad type name, empty title, repeated id).
    FileExistsError: `directory` is not empty and `overwrite` is False.
  """
  catalog, inter = dataset.catalog, dataset.interactions
  for t in catalog.type_names:
    if not TYPE_NAME_RE.fullmatch(t):
      raise ValueError(f'entity type {t!r} must match {TYPE_NAME_RE.pattern}')
  if len(set(catalog.ids)) != len(catalog.ids):
    raise ValueError('catalog ids are not unique')
  for n, title in enumerate(catalog.titles):
    if not title.strip():
      raise ValueError(f'item {catalog.ids[n]!r} has an empty title')
  for column in inter.extra:
    if column in REQUIRED_COLUMNS:
      raise ValueError(f'extra interaction column {column!r} clashes with a required column')

  with atomic_directory(directory, overwrite, last=(ITEMS_FILE, INTERACTIONS_FILE)) as tmp:
    with open(os.path.join(tmp, ITEMS_FILE), 'w', encoding='utf-8') as f:
      for n in range(len(catalog)):
        f.write(json.dumps(item_json(catalog, n), ensure_ascii=False) + '\n')

    with open(os.path.join(tmp, INTERACTIONS_FILE), 'w', encoding='utf-8', newline='') as f:
      writer = csv.writer(f, lineterminator='\n')
      extra_names = list(inter.extra)
      writer.writerow(list(REQUIRED_COLUMNS) + extra_names)
      users = [inter.user_names[u] for u in inter.user_index.tolist()]
      items = [catalog.ids[i] for i in inter.item_index.tolist()]
      writer.writerows(zip(users, items, inter.timestamp.tolist(),
                           *(inter.extra[c] for c in extra_names)))

    if dataset.queries:
      with open(os.path.join(tmp, QUERIES_FILE), 'w', encoding='utf-8') as f:
        for q in dataset.queries:
          obj = {'query': q.text, 'item_ids': [catalog.ids[i] for i in q.item_index]}
          if q.user_id is not None:
            obj['user_id'] = q.user_id
          if q.timestamp is not None:
            obj['timestamp'] = int(q.timestamp)
          f.write(json.dumps(obj, ensure_ascii=False) + '\n')

    if dataset.users:
      with open(os.path.join(tmp, USERS_FILE), 'w', encoding='utf-8') as f:
        for user in dataset.users.values():
          obj = {'id': user.id}
          if user.attributes:
            obj['attributes'] = user.attributes
          if user.summary is not None:
            obj['summary'] = user.summary
          f.write(json.dumps(obj, ensure_ascii=False) + '\n')
