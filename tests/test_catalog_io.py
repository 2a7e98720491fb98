"""Tests of the generic dataset reader and writer (neo_jax/catalog/io.py)."""

from __future__ import annotations

import gc
import json
import math
import os
import pathlib
import time

import numpy as np
import pytest

from neo_jax.catalog import io
from neo_jax.catalog.types import (Catalog, Dataset, DatasetError, Interactions, Query,
                                   User)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
AMAZON = REPO_ROOT / '..' / 'shared' / 'data' / 'amazon-arts-office'


def _write(directory: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
  directory.mkdir(parents=True, exist_ok=True)
  for name, text in files.items():
    (directory / name).write_text(text, encoding='utf-8')
  return directory


def _items(*objs) -> str:
  return ''.join(json.dumps(o) + '\n' for o in objs)


GOOD_ITEMS = _items(
    {'id': 'b1', 'type': 'book', 'title': 'Dune', 'tags': ['scifi', 'desert'],
     'popularity': 3},
    {'id': 'm1', 'type': 'movie', 'title': 'Alien', 'description': 'In space.',
     'attributes': {'year': 1979, 'color': True, 'rating': 8.5, 'studio': None}},
    {'id': 'b2', 'type': 'book', 'title': 'Emma', 'description': None},
)
GOOD_INTERACTIONS = ('timestamp,item_id,user_id,rating\n'
                     '100,m1,bob,5\n'
                     '50,b1,alice,4\n'
                     '70,b2,bob,"3,5"\n'
                     '-20,b1,bob,\n')


def assert_datasets_equal(a: Dataset, b: Dataset):
  ca, cb = a.catalog, b.catalog
  assert ca.ids == cb.ids
  assert ca.type_names == cb.type_names
  np.testing.assert_array_equal(ca.type_index, cb.type_index)
  assert ca.type_index.dtype == cb.type_index.dtype == np.int32
  assert ca.titles == cb.titles
  assert ca.descriptions == cb.descriptions
  assert ca.tags == cb.tags
  assert ca.attributes == cb.attributes
  assert ca.popularity.dtype == cb.popularity.dtype == np.float32
  np.testing.assert_array_equal(ca.popularity, cb.popularity)  # NaN == NaN here
  ia, ib = a.interactions, b.interactions
  assert ia.user_names == ib.user_names
  for field in ('user_index', 'item_index', 'timestamp'):
    x, y = getattr(ia, field), getattr(ib, field)
    assert x.dtype == y.dtype, field
    np.testing.assert_array_equal(x, y, err_msg=field)
  assert ia.extra == ib.extra
  assert a.queries == b.queries
  assert a.users == b.users


def test_load_known_answer(tmp_path):
  d = io.load_dataset(_write(tmp_path / 'ds', {
      'items.jsonl': GOOD_ITEMS + '\n',  # a trailing blank line is not a row
      'interactions.csv': GOOD_INTERACTIONS,
      'queries.jsonl': _items({'query': 'desert planet', 'item_ids': ['b1']},
                              {'query': 'classics', 'item_ids': ['b2', 'm1'],
                               'user_id': 'bob', 'timestamp': 7}),
      'users.jsonl': _items({'id': 'bob', 'summary': 'Reads classics.',
                             'attributes': {'top': ['a', 'b']}},
                            {'id': 'carol'}),
  }))
  assert d.name == 'ds'
  c = d.catalog
  assert c.ids == ['b1', 'm1', 'b2']
  assert c.type_names == ('book', 'movie')
  assert c.type_index.tolist() == [0, 1, 0]
  assert c.titles == ['Dune', 'Alien', 'Emma']
  assert c.descriptions == ['', 'In space.', '']
  assert c.tags == [('scifi', 'desert'), (), ()]
  assert c.attributes == [{}, {'year': 1979, 'color': True, 'rating': 8.5, 'studio': None},
                          {}]
  assert c.popularity[0] == 3.0 and math.isnan(c.popularity[1]) and math.isnan(c.popularity[2])
  assert c.index_of('b2') == 2
  i = d.interactions
  assert i.user_names == ['bob', 'alice']
  assert i.user_index.tolist() == [0, 1, 0, 0]
  assert i.item_index.tolist() == [1, 0, 2, 0]
  assert i.timestamp.tolist() == [100, 50, 70, -20]
  assert i.timestamp.dtype == np.int64 and i.item_index.dtype == np.int32
  assert i.extra == {'rating': ['5', '4', '3,5', '']}
  assert d.queries == [Query('desert planet', (0,)), Query('classics', (2, 1), 'bob', 7)]
  assert d.users == {'bob': User('bob', {'top': ['a', 'b']}, 'Reads classics.'),
                     'carol': User('carol')}
  assert d.skipped == {}
  assert io.load_dataset(tmp_path / 'ds', name='other').name == 'other'
  assert gc.isenabled()  # the loader pauses the collector and restores it


def _awkward_dataset() -> Dataset:
  catalog = Catalog(
      ids=['a,1', 'q"2', 'ü 3', 'plain'],
      type_names=('album', 'movie'),
      type_index=np.array([1, 0, 1, 1], np.int32),
      titles=['Comma, title', 'Quote "title"', 'Ünïcødé\nnewline', 'T'],
      descriptions=['', 'desc', '', 'x'],
      tags=[(), ('a', 'b,c'), ('ü',), ()],
      attributes=[{}, {'k': 1.25, 'flag': False}, {'s': 'v'}, {}],
      popularity=np.array([np.nan, 0.1, 7.0, 1e-8], np.float32),
  )
  interactions = Interactions(
      user_names=['u,1', 'u"2'],
      user_index=np.array([0, 1, 0], np.int32),
      item_index=np.array([3, 0, 1], np.int32),
      timestamp=np.array([2**40, -5, 0], np.int64),
      extra={'note': ['multi\nline', 'x', ''], 'src': ['a', 'b', 'c']},
  )
  return Dataset(
      name='awk', catalog=catalog, interactions=interactions,
      queries=[Query('find "it"', (1, 2)), Query('q', (0,), user_id='u,1', timestamp=3)],
      users={'u,1': User('u,1', {'n': 1}, 'Likes ü.'), 'x': User('x', {}, None)},
  )


def test_write_then_load_round_trip(tmp_path):
  original = _awkward_dataset()
  io.write_dataset(original, tmp_path / 'awk')
  assert sorted(os.listdir(tmp_path)) == ['awk']  # no temporary directory left behind
  loaded = io.load_dataset(tmp_path / 'awk')
  assert_datasets_equal(original, loaded)
  assert loaded.name == 'awk'
  # Writing what was read gives the same bytes.
  io.write_dataset(loaded, tmp_path / 'again')
  for name in ('items.jsonl', 'interactions.csv', 'queries.jsonl', 'users.jsonl'):
    assert (tmp_path / 'awk' / name).read_bytes() == (tmp_path / 'again' / name).read_bytes()


def test_write_is_atomic_and_guards_existing(tmp_path):
  target = tmp_path / 'ds'
  _write(target, {'keep.txt': 'old'})
  with pytest.raises(FileExistsError):
    io.write_dataset(_awkward_dataset(), target)
  assert os.listdir(target) == ['keep.txt']
  bad = _awkward_dataset()
  bad.catalog.type_names = ('al bum', 'movie')
  with pytest.raises(ValueError, match='al bum'):
    io.write_dataset(bad, target, overwrite=True)
  assert os.listdir(target) == ['keep.txt']
  # A failure inside the atomic block leaves the old directory and no temporary files.
  with pytest.raises(RuntimeError):
    with io.atomic_directory(target, overwrite=True) as tmp:
      pathlib.Path(tmp, 'half.txt').write_text('x')
      raise RuntimeError('boom')
  assert sorted(os.listdir(tmp_path)) == ['ds'] and os.listdir(target) == ['keep.txt']
  io.write_dataset(_awkward_dataset(), target, overwrite=True)
  assert sorted(os.listdir(target)) == ['interactions.csv', 'items.jsonl', 'queries.jsonl',
                                        'users.jsonl']
  assert sorted(os.listdir(tmp_path)) == ['ds']


# (file that is broken, its text, expected line, expected field, words in the message)
_ERROR_CASES = {
    'duplicate_id': ('items.jsonl', GOOD_ITEMS + _items({'id': 'm1', 'type': 'x',
                                                         'title': 't'}),
                     4, 'id', 'duplicate item id'),
    'missing_title': ('items.jsonl', _items({'id': 'z', 'type': 'book', 'title': 'ok'},
                                            {'id': 'y', 'type': 'book'}),
                      2, 'title', 'missing'),
    'empty_title': ('items.jsonl', _items({'id': 'y', 'type': 'book', 'title': '  '}),
                    1, 'title', 'non-empty'),
    'bad_type_name': ('items.jsonl', _items({'id': 'y', 'type': 'sci fi', 'title': 't'}),
                      1, 'type', 'must match'),
    'bad_json': ('items.jsonl', GOOD_ITEMS + '{"id": "q", "type": "book", "title": }\n',
                 4, None, 'invalid JSON'),
    'unknown_field': ('items.jsonl', _items({'id': 'y', 'type': 'b', 'titel': 't'}),
                      1, 'titel', 'unknown field'),
    'tags_not_list': ('items.jsonl', _items({'id': 'y', 'type': 'b', 'title': 't',
                                             'tags': 'a,b'}), 1, 'tags', 'list'),
    'nested_attribute': ('items.jsonl', _items({'id': 'y', 'type': 'b', 'title': 't',
                                                'attributes': {'k': [1]}}),
                         1, 'attributes.k', 'scalars'),
    'popularity_string': ('items.jsonl', _items({'id': 'y', 'type': 'b', 'title': 't',
                                                 'popularity': '5'}),
                          1, 'popularity', 'finite number'),
    'bad_timestamp': ('interactions.csv', 'user_id,item_id,timestamp\nu,m1,10\nu,b1,12.5\n',
                      3, 'timestamp', 'integer'),
    'timestamp_underscore': ('interactions.csv', 'user_id,item_id,timestamp\nu,m1,1_0\n',
                             2, 'timestamp', 'integer'),
    # The quoted field spans two lines, so the bad row starts on line 4, not 3.
    'bad_timestamp_after_multiline': (
        'interactions.csv', 'user_id,item_id,timestamp,n\nu,m1,1,"a\nb"\nu,b1,x,\n',
        4, 'timestamp', 'integer'),
    'unknown_item': ('interactions.csv', 'user_id,item_id,timestamp\nu,m1,1\nu,zz,2\n',
                     3, 'item_id', "unknown item id 'zz'"),
    'missing_column': ('interactions.csv', 'user,item_id,timestamp\nu,m1,1\n',
                       1, 'user_id', 'header lacks'),
    'short_row': ('interactions.csv', 'user_id,item_id,timestamp\nu,m1,1\nu,b1\n',
                  3, None, 'expected 3 fields, got 2'),
    'empty_user': ('interactions.csv', 'user_id,item_id,timestamp\n,m1,1\n',
                   2, 'user_id', 'empty'),
    'query_unknown_item': ('queries.jsonl', _items({'query': 'x', 'item_ids': ['m1', 'no']}),
                           1, 'item_ids', "unknown item id 'no'"),
    'query_empty_ids': ('queries.jsonl', _items({'query': 'x', 'item_ids': []}),
                        1, 'item_ids', 'non-empty'),
    'user_duplicate': ('users.jsonl', _items({'id': 'a'}, {'id': 'a'}), 2, 'id', 'duplicate'),
}


@pytest.mark.parametrize('case', sorted(_ERROR_CASES))
def test_bad_input_names_file_line_field(tmp_path, case):
  broken, text, line, field, words = _ERROR_CASES[case]
  files = {'items.jsonl': GOOD_ITEMS, 'interactions.csv': GOOD_INTERACTIONS}
  files[broken] = text
  with pytest.raises(DatasetError) as info:
    io.load_dataset(_write(tmp_path, files))
  err = info.value
  assert os.path.basename(err.path) == broken
  assert err.line == line
  assert err.field == field
  message = str(err)
  assert broken in message and f'line {line}' in message and words in message
  if field is not None:
    assert repr(field) in message


def test_missing_required_file(tmp_path):
  with pytest.raises(DatasetError, match='interactions.csv.*missing'):
    io.load_dataset(_write(tmp_path, {'items.jsonl': GOOD_ITEMS}))


def test_unknown_items_skip_policy_counts(tmp_path):
  directory = _write(tmp_path, {
      'items.jsonl': GOOD_ITEMS,
      'interactions.csv': ('user_id,item_id,timestamp,x\n'
                           'ghost,zz,1,a\nbob,m1,2,b\nbob,yy,3,c\nann,b1,4,d\n'),
      'queries.jsonl': _items({'query': 'a', 'item_ids': ['nope', 'b2']},
                              {'query': 'b', 'item_ids': ['nope', 'never']},
                              {'query': 'c', 'item_ids': ['m1']}),
  })
  with pytest.raises(DatasetError):
    io.load_dataset(directory)
  d = io.load_dataset(directory, on_unknown_item='skip')
  assert d.skipped == {io.SKIP_UNKNOWN_INTERACTIONS: 2, io.SKIP_UNKNOWN_QUERY_IDS: 3,
                       io.SKIP_UNKNOWN_QUERIES: 1}
  # 'ghost' only had a skipped event, so it is not a user.
  assert d.interactions.user_names == ['bob', 'ann']
  assert d.interactions.item_index.tolist() == [1, 0]
  assert d.interactions.timestamp.tolist() == [2, 4]
  assert d.interactions.extra == {'x': ['b', 'd']}
  assert d.queries == [Query('a', (2,)), Query('c', (1,))]
  with pytest.raises(ValueError, match='on_unknown_item'):
    io.load_dataset(directory, on_unknown_item='drop')


@pytest.mark.skipif(not AMAZON.is_dir(), reason='shared Amazon data not present')
def test_load_amazon_arts_office_counts():
  start = time.perf_counter()
  d = io.load_dataset(AMAZON)
  seconds = time.perf_counter() - start
  # Figures from the data's PROVENANCE.md.
  assert len(d.catalog) == 38_396
  assert d.catalog.type_names == ('arts', 'office')
  assert np.bincount(d.catalog.type_index).tolist() == [18_639, 19_757]
  assert len(d.interactions.user_names) == 9_577
  assert len(d.interactions) == 208_126
  assert len(d.queries) == 1_997
  assert d.skipped == {}
  assert seconds < 15, f'loading took {seconds:.1f}s'
