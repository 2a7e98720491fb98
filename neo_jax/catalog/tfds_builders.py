"""TFDS builders that write datasets as array_record, and the way back to `Dataset`.

tensorflow-datasets 4.9 builds and reads array_record without TensorFlow installed (checked
with TF absent: `GeneratorBasedBuilder(file_format='array_record').download_and_prepare()`,
`builder.as_data_source()` and `tfds.builder_from_directory(dir).as_data_source()` work;
`as_dataset()` is the tf.data path and needs TF, so nothing here calls it). Two details of
TFDS matter for a faithful round trip: examples are shuffled by key hash unless the info sets
`disable_shuffling=True` (set here, so record order is the source's order), and
`dataset_info_from_configs` looks for a package folder of metadata files that a builder
defined outside a TFDS package lacks (so the info is built directly).

A dataset is one builder with one config per table (TFDS fixes the features per config):
  items         id, type, title, description, tags, attributes (JSON object text),
                popularity (float32, NaN = absent)
  interactions  blocks of up to EVENTS_PER_RECORD events in file order: user_id, item_id
                (string arrays), timestamp (int64 array), extra (JSON text: a list, per
                extra column named by the meta record's `extra_columns`, of the values)
  users         id, attributes (JSON text), summary, has_summary
  queries       query, item_ids, user_id, has_user_id, timestamp, has_timestamp
  meta          one record `json`: the dataset name, extra column names, `skipped` counts
                and the build `report`
each with a single split named after the table, written to
`<data_dir>/<builder name>/<table>/<version>/`. TFDS cannot write an empty split, so a table
without records (no users, no queries) gets no folder, and `load_built` reads it as empty.

Builders (`build(...)` makes all tables):
  `MovieLens100k` ('movielens100k'): from the installed `recbole` package, or `source=` an
    official `ml-100k.zip` / extracted folder / folder of RecBole atomic files
    (neo_jax/catalog/movielens.py).
  `GenericDataset` ('generic'): any directory in the generic format, read and validated by
    `catalog.io.load_dataset` (same policies, same errors).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from neo_jax.catalog import atomic
from neo_jax.catalog import io as catalog_io
from neo_jax.catalog import movielens
from neo_jax.catalog.types import Catalog, Dataset, DatasetError, Interactions, Query, User

TABLES = ('items', 'interactions', 'users', 'queries', 'meta')
VERSION = '1.0.0'
_RELEASE_NOTES = {VERSION: 'First release.'}
# Records fetched per random-access call when reading a table back.
_READ_BATCH = 8192
# Interactions are stored in blocks of this many events per record: one record per event
# made building MovieLens-100k take 25 s and reading it back 15 s (TFDS encodes and decodes
# every record in Python), blocks make both a fraction of a second.
EVENTS_PER_RECORD = 4096


def _features(table: str) -> tfds.features.FeaturesDict:
  text = tfds.features.Text
  spec = {
      'items': {'id': text(), 'type': text(), 'title': text(), 'description': text(),
                'tags': tfds.features.Sequence(text()), 'attributes': text(),
                'popularity': np.float32},
      'interactions': {
          'user_id': tfds.features.Tensor(shape=(None,), dtype=np.str_),
          'item_id': tfds.features.Tensor(shape=(None,), dtype=np.str_),
          'timestamp': tfds.features.Tensor(shape=(None,), dtype=np.int64,
                                            encoding=tfds.features.Encoding.BYTES),
          'extra': text()},
      'users': {'id': text(), 'attributes': text(), 'summary': text(),
                'has_summary': np.bool_},
      'queries': {'query': text(), 'item_ids': tfds.features.Sequence(text()),
                  'user_id': text(), 'has_user_id': np.bool_, 'timestamp': np.int64,
                  'has_timestamp': np.bool_},
      'meta': {'json': text()},
  }[table]
  return tfds.features.FeaturesDict(spec)


def _records(ds: Dataset, table: str, report: dict[str, Any]) -> Iterator[dict[str, Any]]:
  """The records of one table, in the dataset's order."""
  if table == 'items':
    c = ds.catalog
    for n in range(len(c)):
      yield {'id': c.ids[n], 'type': c.type_of(n), 'title': c.titles[n],
             'description': c.descriptions[n], 'tags': list(c.tags[n]),
             'attributes': json.dumps(c.attributes[n], ensure_ascii=False, sort_keys=True),
             'popularity': np.float32(c.popularity[n])}
  elif table == 'interactions':
    inter, ids = ds.interactions, ds.catalog.ids
    columns = list(inter.extra)
    users, items = inter.user_index.tolist(), inter.item_index.tolist()
    for start in range(0, len(inter), EVENTS_PER_RECORD):
      stop = min(start + EVENTS_PER_RECORD, len(inter))
      yield {'user_id': np.array([inter.user_names[u] for u in users[start:stop]], object),
             'item_id': np.array([ids[i] for i in items[start:stop]], object),
             'timestamp': inter.timestamp[start:stop],
             'extra': json.dumps([inter.extra[c][start:stop] for c in columns],
                                 ensure_ascii=False)}
  elif table == 'users':
    for user in ds.users.values():
      yield {'id': user.id,
             'attributes': json.dumps(user.attributes, ensure_ascii=False, sort_keys=True),
             'summary': user.summary or '', 'has_summary': user.summary is not None}
  elif table == 'queries':
    ids = ds.catalog.ids
    for q in ds.queries:
      yield {'query': q.text, 'item_ids': [ids[i] for i in q.item_index],
             'user_id': q.user_id or '', 'has_user_id': q.user_id is not None,
             'timestamp': int(q.timestamp or 0), 'has_timestamp': q.timestamp is not None}
  elif table == 'meta':
    yield {'json': json.dumps({'name': ds.name, 'extra_columns': list(ds.interactions.extra),
                               'skipped': ds.skipped, 'report': report}, sort_keys=True)}
  else:
    raise ValueError(f'unknown table {table!r}; tables are {TABLES}')


def _table_size(ds: Dataset, table: str) -> int:
  return {'items': len(ds.catalog), 'interactions': len(ds.interactions),
          'users': len(ds.users), 'queries': len(ds.queries), 'meta': 1}[table]


class _TableBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes one table (the builder config) of the dataset that `_read` returns.

  Subclasses set `name` and implement `_read() -> (Dataset, report dict)`. The dataset is
  read once per builder object; `build` shares it across the tables' builders.
  """

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = _RELEASE_NOTES
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=t, description=f'the {t} table',
                                             release_notes=_RELEASE_NOTES) for t in TABLES]

  # TFDS 4.9.10 finds a builder's source file through `importlib_resources`, a package it
  # declares only for Python < 3.9 and that is not installed here; the file is known anyway.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, data_dir: str, config: str,
               loaded: tuple[Dataset, dict[str, Any]] | None = None, **kwargs):
    self._loaded = loaded
    super().__init__(data_dir=data_dir, config=config, file_format='array_record', **kwargs)

  def _read(self) -> tuple[Dataset, dict[str, Any]]:
    raise NotImplementedError

  def loaded(self) -> tuple[Dataset, dict[str, Any]]:
    if self._loaded is None:
      self._loaded = self._read()
    return self._loaded

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=(self.__doc__ or '').strip(),
                                 features=_features(self.builder_config.name),
                                 disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {self.builder_config.name: self._generate_examples()}

  def _generate_examples(self):
    ds, report = self.loaded()
    for n, record in enumerate(_records(ds, self.builder_config.name, report)):
      yield n, record


class MovieLens100k(_TableBuilder):
  """MovieLens-100k (GroupLens): 943 users, 1682 movies, 100000 ratings with timestamps.

  Movies keep title, year, genres (tags) and Freebase knowledge-graph facts (attributes);
  users keep age, gender, occupation and zip code; the rating is an extra interaction column.
  """

  name = 'movielens100k'

  def __init__(self, *, source: str | None = None, **kwargs):
    self._source = source
    super().__init__(**kwargs)

  def _read(self):
    ds, stats = movielens.read_movielens100k(self._source)
    return ds, {'movielens': stats.as_dict()}


class GenericDataset(_TableBuilder):
  """A dataset directory in neo_jax's generic format (data/README.md)."""

  name = 'generic'

  def __init__(self, *, source: str, on_unknown_item: str = 'error',
               allowed_types: Sequence[str] | None = None, on_out_of_order: str = 'allow',
               **kwargs):
    if not source:
      raise ValueError('GenericDataset needs source=<a directory in the generic format>')
    self._load_args = dict(directory=source, on_unknown_item=on_unknown_item,
                           allowed_types=allowed_types, on_out_of_order=on_out_of_order)
    super().__init__(**kwargs)

  def _read(self):
    return catalog_io.load_dataset(**self._load_args), {}


BUILDERS = {b.name: b for b in (MovieLens100k, GenericDataset)}


def build(name: str, data_dir: str, overwrite: bool = False,
          **kwargs) -> tuple[Dataset, dict[str, Any], str]:
  """Builds every table of dataset `name` under `data_dir` (array_record).

  Args:
    name: a key of BUILDERS ('movielens100k', 'generic').
    data_dir: the TFDS data directory; tables go to `<data_dir>/<name>/<table>/<version>`.
    overwrite: replace an existing `<data_dir>/<name>`; without it an existing build is an
      error (TFDS would otherwise keep old tables beside new ones from another source).
      The build is atomic: every table is written into a staging folder beside the target,
      which is renamed into place at the end, so `<data_dir>/<name>` is either absent, the
      previous build or the complete new one, whatever stops the build. A remote `data_dir`
      (`atomic.is_remote`): built in a local staging folder and uploaded, each table's
      `dataset_info.json` (what makes `load_built` see a table) last.
    **kwargs: passed to the builder (`source=`, and for 'generic' the load policies).

  Returns:
    (the dataset as read from the source, the source's report, the built folder
    `<data_dir>/<name>` that `load_built` reads).

  Raises:
    DatasetError: the source is malformed (named file, line and field); nothing is written.
    FileExistsError: `<data_dir>/<name>` exists and `overwrite` is False.
  """
  if name not in BUILDERS:
    raise ValueError(f'unknown dataset {name!r}; known: {sorted(BUILDERS)}')
  cls = BUILDERS[name]
  remote = atomic.is_remote(data_dir)
  data_dir = atomic.location(data_dir)
  target = os.path.join(data_dir, cls.name)
  if atomic.as_path(target).exists() and not overwrite:
    raise FileExistsError(f'{target} exists; pass overwrite=True to rebuild it')
  # A builder of the source only (nothing written); TFDS itself is given local folders.
  first = cls(data_dir=tempfile.gettempdir() if remote else data_dir, config='meta', **kwargs)
  loaded = first.loaded()  # Reads and validates the source before anything is written.
  # Built in a staging data_dir beside the target and renamed into place when every table is
  # written: a build killed half-way leaves no `target` (the next build starts over and
  # removes the staging folder), never one that a reader would take for a build.
  with atomic.staging_directory(target) as staging:
    for table in TABLES:
      if _table_size(loaded[0], table) == 0:
        continue
      builder = cls(data_dir=staging, config=table, loaded=loaded, **kwargs)
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
          download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
    built = os.path.join(staging, cls.name)
    atomic.replace_directory(built, target, last=_infos(built) if remote else ())
  return loaded[0], loaded[1], target


def _infos(built: str) -> list[str]:
  """The `dataset_info.json` of every table under the local build `built` (relative)."""
  return sorted(os.path.relpath(os.path.join(root, 'dataset_info.json'), built)
                for root, _, names in os.walk(built) if 'dataset_info.json' in names)


@contextlib.contextmanager
def _readable(built: str | os.PathLike) -> Iterator[str]:
  """`built` as a local folder TFDS reads: itself, or a remote build's local copy (TFDS reads
  array_record files from local paths), removed after."""
  if not atomic.is_remote(built):
    yield os.fspath(built)
    return
  tmp = tempfile.mkdtemp(prefix='neo_jax-tfds-')
  try:
    atomic.copy_tree(built, tmp)
    yield tmp
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _table_dir(built: str, table: str) -> str | None:
  folder = os.path.join(built, table)
  if not os.path.isdir(folder):
    return None
  versions = sorted(v for v in os.listdir(folder)
                    if os.path.isfile(os.path.join(folder, v, 'dataset_info.json')))
  if not versions:
    return None
  if VERSION in versions:
    return os.path.join(folder, VERSION)
  raise DatasetError(folder, None, None, f'no version {VERSION} (found {versions})')


def _read_table(built: str, table: str) -> list[dict[str, Any]]:
  path = _table_dir(built, table)
  if path is None:
    return []
  source = tfds.builder_from_directory(path).as_data_source()[table]
  out = []
  for start in range(0, len(source), _READ_BATCH):
    keys = list(range(start, min(start + _READ_BATCH, len(source))))
    out.extend(source.__getitems__(keys))
  return out


def _text(b) -> str:
  return b.decode('utf-8') if isinstance(b, bytes) else str(b)


def load_built(built: str | os.PathLike) -> Dataset:
  """Reads a built dataset (`<data_dir>/<name>`, as `build` returns; local or a URI) back
  into a `Dataset`.

  Equal to the dataset the builder read from its source, except `Dataset.name`, which comes
  from the meta record, and attributes, which went through JSON (tuples become lists).

  Raises:
    DatasetError: the folder is not a built dataset (missing items/interactions/meta).
  """
  with _readable(built) as local:
    return _load_local(local, os.fspath(built))


def _load_local(built: str, shown: str) -> Dataset:
  """`load_built` of the local folder `built`; errors name `shown` (where it came from)."""
  for table in ('items', 'interactions', 'meta'):
    if _table_dir(built, table) is None:
      raise DatasetError(os.path.join(shown, table), None, None,
                         f'missing built table {table!r} (run the builder first)')
  meta = json.loads(_text(_read_table(built, 'meta')[0]['json']))

  items = _read_table(built, 'items')
  ids = [_text(r['id']) for r in items]
  types = [_text(r['type']) for r in items]
  type_names = tuple(sorted(set(types)))
  type_to_index = {t: i for i, t in enumerate(type_names)}
  index = {i: n for n, i in enumerate(ids)}
  catalog = Catalog(
      ids=ids, type_names=type_names,
      type_index=np.array([type_to_index[t] for t in types], np.int32),
      titles=[_text(r['title']) for r in items],
      descriptions=[_text(r['description']) for r in items],
      tags=[tuple(_text(t) for t in r['tags']) for r in items],
      attributes=[json.loads(_text(r['attributes'])) for r in items],
      popularity=np.array([r['popularity'] for r in items], np.float32),
      _id_to_index=index)

  blocks = _read_table(built, 'interactions')
  columns = meta['extra_columns']
  user_ids = [_text(u) for b in blocks for u in b['user_id']]
  item_ids = [_text(i) for b in blocks for i in b['item_id']]
  extra: dict[str, list[str]] = {c: [] for c in columns}
  for b in blocks:
    values = json.loads(_text(b['extra']))
    for c, v in zip(columns, values):
      extra[c].extend(v)
  user_index: dict[str, int] = {}
  interactions = Interactions(
      user_names=[],
      user_index=np.fromiter((user_index.setdefault(u, len(user_index)) for u in user_ids),
                             np.int32, len(user_ids)),
      item_index=np.fromiter((index[i] for i in item_ids), np.int32, len(item_ids)),
      timestamp=(np.concatenate([np.asarray(b['timestamp'], np.int64) for b in blocks])
                 if blocks else np.zeros(0, np.int64)),
      extra=extra)
  interactions.user_names = list(user_index)

  users = {}
  for r in _read_table(built, 'users'):
    uid = _text(r['id'])
    users[uid] = User(id=uid, attributes=json.loads(_text(r['attributes'])),
                      summary=_text(r['summary']) if r['has_summary'] else None)
  queries = [Query(text=_text(r['query']),
                   item_index=tuple(index[_text(i)] for i in r['item_ids']),
                   user_id=_text(r['user_id']) if r['has_user_id'] else None,
                   timestamp=int(r['timestamp']) if r['has_timestamp'] else None)
             for r in _read_table(built, 'queries')]
  return Dataset(name=meta['name'], catalog=catalog, interactions=interactions,
                 queries=queries, users=users, skipped=dict(meta['skipped']))


def built_report(built: str | os.PathLike) -> dict[str, Any]:
  """The build report stored in a built dataset's meta record."""
  with _readable(built) as local:
    return json.loads(_text(_read_table(local, 'meta')[0]['json']))['report']


def export_generic(built: str | os.PathLike, out_dir: str | os.PathLike,
                   overwrite: bool = False) -> Dataset:
  """Writes a built dataset in the generic format (atomically); returns it."""
  ds = load_built(built)
  catalog_io.write_dataset(ds, out_dir, overwrite=overwrite)
  return ds
