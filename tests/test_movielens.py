"""Tests of the MovieLens-100k reader (neo_jax/catalog/movielens.py).

The RecBole copy is checked against known answers and against the raw files parsed here
independently; the official format against small hand-written files (the official zip is not
available offline), as a folder and as a zip.
"""

from __future__ import annotations

import collections
import importlib.util
import os
import zipfile

import numpy as np
import pytest

from neo_jax.catalog import movielens
from neo_jax.catalog.types import DatasetError

HAVE_RECBOLE = importlib.util.find_spec('recbole') is not None
needs_recbole = pytest.mark.skipif(not HAVE_RECBOLE, reason='recbole (assets) not installed')


@pytest.fixture(scope='module')
def recbole_ml():
  return movielens.read_movielens100k()


@needs_recbole
def test_recbole_counts_and_known_answers(recbole_ml):
  ds, stats = recbole_ml
  assert len(ds.catalog) == 1682
  assert len(ds.interactions) == 100_000
  assert len(ds.interactions.user_names) == 943
  assert len(ds.users) == 943
  c = ds.catalog
  assert c.type_names == ('movie',)
  n = c.index_of('1')
  assert c.titles[n] == 'Toy Story'
  assert c.attributes[n]['year'] == 1995
  assert c.tags[n] == ('Animation', "Children's", 'Comedy')
  assert c.titles[c.index_of('12')] == 'Usual Suspects, The'
  # Year 'V' in RecBole, "(1995)" at the end of the title.
  n = c.index_of('1412')
  assert c.titles[n] == 'Land Before Time III: The Time of the Great Giving'
  assert c.attributes[n]['year'] == 1995
  assert 'year' not in c.attributes[c.index_of('267')]
  assert stats.items_without_year == 1 and stats.items_year_from_title == 1
  assert ds.users['1'].attributes == {'age': 24, 'gender': 'M', 'occupation': 'technician',
                                      'zip_code': '85711'}
  inter = ds.interactions
  assert inter.user_names[int(inter.user_index[0])] == '196'
  assert c.ids[int(inter.item_index[0])] == '242'
  assert int(inter.timestamp[0]) == 881250949
  assert inter.extra['rating'][0] == '3'
  assert sorted(set(inter.extra['rating'])) == ['1', '2', '3', '4', '5']
  assert np.isnan(c.popularity).all()


def _raw(name):
  path = os.path.join(movielens.recbole_dir(), name)
  with open(path, encoding='utf-8') as f:
    return [line.rstrip('\n').split('\t') for line in f][1:]


@needs_recbole
def test_recbole_kg_attributes_match_raw_files(recbole_ml):
  ds, stats = recbole_ml
  entity_item = {e: i for i, e in _raw('ml-100k.link')}
  expected = collections.defaultdict(lambda: collections.defaultdict(set))
  for h, r, t in _raw('ml-100k.kg'):
    if h in entity_item:
      expected[entity_item[h]][r].add(t)
  c = ds.catalog
  assert stats.items_with_kg == len(expected)
  raw = _raw('ml-100k.kg')
  assert stats.kg_triples_stored == sum(h in entity_item for h, _, _ in raw)
  assert stats.kg_triples_not_about_a_movie == sum(h not in entity_item for h, _, _ in raw)
  for item_id in ('1', '12', '1412', '500'):
    attrs = c.attributes[c.index_of(item_id)]
    kg = {k[len('kg:'):]: set(v.split('|')) for k, v in attrs.items() if k.startswith('kg:')}
    assert kg == {r: s for r, s in expected[item_id].items()}
    assert entity_item[attrs['freebase_id']] == item_id
  # Every attribute is a scalar (the generic format's contract).
  for attrs in c.attributes:
    assert all(isinstance(v, (str, int)) for v in attrs.values())


# ---------------------------------------------------------------------------------------------
# The official format, hand-written.


def _genres(*names):
  return '|'.join('1' if g in names else '0' for g in movielens.OFFICIAL_GENRES)


U_ITEM = '\n'.join([
    f'1|Toy Story (1995)|01-Jan-1995||http://x|{_genres("Animation", "Comedy")}',
    f'2|Usual Suspects, The (1995)|14-Aug-1995||http://x|{_genres("Crime", "Thriller")}',
    f'3|Land Before Time III: The Time of the Great Giving (1995) (V)|01-Jan-1995||http://x|'
    f'{_genres("Animation")}',
    f'4|unknown||||{_genres("unknown")}',
    f'5|Á köldum klaka (Cold Fever) (1994)|08-Mar-1996||http://x|{_genres("Comedy", "Drama")}',
]) + '\n'
U_USER = '1|24|M|technician|85711\n2|53|F|other|94043\n'
U_DATA = '1\t1\t5\t874965758\n2\t3\t3\t888551553\n1\t5\t4\t874965700\n'


def _official(tmp_path, files=None):
  files = files or {'u.item': U_ITEM, 'u.user': U_USER, 'u.data': U_DATA}
  folder = tmp_path / 'ml-100k'
  folder.mkdir()
  for name, text in files.items():
    (folder / name).write_bytes(text.encode('latin-1'))
  return folder


def test_official_folder_known_answer(tmp_path):
  ds, stats = movielens.read_movielens100k(_official(tmp_path))
  c = ds.catalog
  assert c.ids == ['1', '2', '3', '4', '5']
  assert c.titles == ['Toy Story', 'Usual Suspects, The',
                      'Land Before Time III: The Time of the Great Giving', 'unknown',
                      'Á köldum klaka (Cold Fever)']
  assert [a.get('year') for a in c.attributes] == [1995, 1995, 1995, None, 1996]
  assert c.tags == [('Animation', 'Comedy'), ('Crime', 'Thriller'), ('Animation',),
                    ('unknown',), ('Comedy', 'Drama')]
  assert stats.items_without_year == 1
  assert ds.users['2'].attributes == {'age': 53, 'gender': 'F', 'occupation': 'other',
                                      'zip_code': '94043'}
  inter = ds.interactions
  assert inter.user_names == ['1', '2']
  assert [c.ids[i] for i in inter.item_index] == ['1', '3', '5']
  assert inter.timestamp.tolist() == [874965758, 888551553, 874965700]
  assert inter.extra == {'rating': ['5', '3', '4']}


def test_official_zip_equals_folder(tmp_path):
  folder = _official(tmp_path)
  archive = tmp_path / 'ml-100k.zip'
  with zipfile.ZipFile(archive, 'w') as z:
    for name in ('u.item', 'u.user', 'u.data'):
      z.write(folder / name, f'ml-100k/{name}')
  a, _ = movielens.read_movielens100k(folder)
  b, _ = movielens.read_movielens100k(archive)
  assert a.catalog.ids == b.catalog.ids and a.catalog.titles == b.catalog.titles
  assert a.catalog.attributes == b.catalog.attributes and a.users == b.users
  np.testing.assert_array_equal(a.interactions.item_index, b.interactions.item_index)


@pytest.mark.parametrize('files,needle', [
    ({'u.data': U_DATA + '2\t9\t3\t1\n'}, r"u\.data, line 4, field 'item_id': unknown item id '9'"),
    ({'u.data': U_DATA + '2\t1\t3\tsoon\n'}, r"u\.data, line 4, field 'timestamp'"),
    ({'u.data': '1\t1\t5\n'}, r'u\.data, line 1: expected 4'),
    ({'u.user': '1|old|M|x|1\n'}, r"u\.user, line 1, field 'age'"),
    ({'u.item': '1|T (1995)|||x|2' + '|0' * 18 + '\n'}, r"u\.item, line 1, field 'unknown'"),
    ({'u.item': '1| |||x|' + _genres() + '\n'}, r"u\.item, line 1, field 'movie title'"),
])
def test_official_bad_input(tmp_path, files, needle):
  base = {'u.item': U_ITEM, 'u.user': U_USER, 'u.data': U_DATA}
  base.update(files)
  with pytest.raises(DatasetError, match=needle):
    movielens.read_movielens100k(_official(tmp_path, base))


def test_missing_or_wrong_source(tmp_path):
  with pytest.raises(DatasetError, match='holds neither'):
    movielens.read_movielens100k(tmp_path)
  with pytest.raises(DatasetError, match='no such file'):
    movielens.read_movielens100k(tmp_path / 'nope')
  (tmp_path / 'f.txt').write_text('x')
  with pytest.raises(DatasetError, match='not a zip'):
    movielens.read_movielens100k(tmp_path / 'f.txt')
  folder = _official(tmp_path, {'u.data': U_DATA})
  with pytest.raises(DatasetError, match=r'u\.item: required file is missing'):
    movielens.read_movielens100k(folder)


def test_recbole_bad_header(tmp_path):
  (tmp_path / 'ml-100k.inter').write_text('user_id:token\titem:token\n1\t2\n')
  (tmp_path / 'ml-100k.item').write_text('item_id:token\tmovie_title:token_seq\n')
  (tmp_path / 'ml-100k.user').write_text('user_id:token\n')
  with pytest.raises(DatasetError, match=r'ml-100k\.item, line 1: header columns'):
    movielens.read_movielens100k(tmp_path)
