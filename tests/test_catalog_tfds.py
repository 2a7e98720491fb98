"""Tests of the TFDS builders (neo_jax/catalog/tfds_builders.py), the bad-input policies of
the generic loader (neo_jax/catalog/io.py) through the generic builder, and the
experiments.build_dataset entry point."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from neo_jax.catalog import io as catalog_io
from neo_jax.catalog import splits
from neo_jax.catalog import tfds_builders
from neo_jax.catalog.types import Dataset, DatasetError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
HAVE_RECBOLE = importlib.util.find_spec('recbole') is not None


def _jsonl(*objs) -> str:
  return ''.join(json.dumps(o) + '\n' for o in objs)


ITEMS = [
    {'id': 'b1', 'type': 'book', 'title': 'Dune', 'tags': ['scifi', 'desert'],
     'popularity': 3},
    {'id': 'm1', 'type': 'movie', 'title': 'Alien', 'description': 'In space.',
     'attributes': {'year': 1979, 'color': True, 'rating': 8.5, 'studio': None}},
    {'id': 'b2', 'type': 'book', 'title': 'Emma', 'description': None},
]
# Bob's events are out of time order in the file (100 then 70 then -20); carol has one event.
INTERACTIONS = ('timestamp,item_id,user_id,rating\n'
                '100,m1,bob,5\n'
                '50,b1,alice,4\n'
                '70,b2,bob,"3,5"\n'
                '-20,b1,bob,\n'
                '60,b2,alice,2\n'
                '10,m1,carol,1\n')
QUERIES = _jsonl({'query': 'desert planet', 'item_ids': ['b1'], 'user_id': 'alice',
                  'timestamp': 5},
                 {'query': 'space horror', 'item_ids': ['m1', 'b2']})
USERS = _jsonl({'id': 'alice', 'attributes': {'age': 30, 'likes': ['x']}, 'summary': 'Reads.'},
               {'id': 'bob'}, {'id': 'dave', 'summary': 'No events.'})


def _dir(tmp_path: pathlib.Path, name='src', **overrides) -> pathlib.Path:
  files = {'items.jsonl': _jsonl(*ITEMS), 'interactions.csv': INTERACTIONS,
           'queries.jsonl': QUERIES, 'users.jsonl': USERS}
  files.update(overrides)
  d = tmp_path / name
  d.mkdir()
  for fname, text in files.items():
    if text is not None:
      (d / fname).write_text(text, encoding='utf-8')
  return d


def assert_same(a: Dataset, b: Dataset):
  ca, cb = a.catalog, b.catalog
  assert ca.ids == cb.ids and ca.type_names == cb.type_names
  np.testing.assert_array_equal(ca.type_index, cb.type_index)
  assert ca.titles == cb.titles and ca.descriptions == cb.descriptions
  assert ca.tags == cb.tags and ca.attributes == cb.attributes
  np.testing.assert_array_equal(ca.popularity, cb.popularity)
  ia, ib = a.interactions, b.interactions
  assert ia.user_names == ib.user_names
  for f in ('user_index', 'item_index', 'timestamp'):
    np.testing.assert_array_equal(getattr(ia, f), getattr(ib, f))
    assert getattr(ia, f).dtype == getattr(ib, f).dtype
  assert ia.extra == ib.extra
  assert a.queries == b.queries and a.users == b.users and a.skipped == b.skipped


def test_generic_build_round_trip_and_export(tmp_path):
  src = _dir(tmp_path)
  expected = catalog_io.load_dataset(src)
  ds, report, built = tfds_builders.build('generic', str(tmp_path / 'tfds'), source=str(src))
  assert report == {}
  assert_same(ds, expected)
  back = tfds_builders.load_built(built)
  assert back.name == 'src'
  assert_same(back, expected)
  # Export to the generic format reads back equal too.
  tfds_builders.export_generic(built, tmp_path / 'exported')
  assert_same(catalog_io.load_dataset(tmp_path / 'exported'), expected)
  # Tables are array_record files, one folder per table.
  for table in tfds_builders.TABLES:
    files = os.listdir(os.path.join(built, table, tfds_builders.VERSION))
    assert any('.array_record-' in f for f in files), (table, files)


def test_generic_build_without_optional_tables_and_many_blocks(tmp_path, monkeypatch):
  # Interactions span several records (blocks): 7 events in blocks of 3.
  monkeypatch.setattr(tfds_builders, 'EVENTS_PER_RECORD', 3)
  rows = ''.join(f'{t},{"b1" if t % 2 else "m1"},u{t % 3},r{t}\n' for t in range(7))
  src = _dir(tmp_path, **{'interactions.csv': 'timestamp,item_id,user_id,note\n' + rows,
                          'queries.jsonl': None, 'users.jsonl': None})
  _, _, built = tfds_builders.build('generic', str(tmp_path / 'tfds'), source=str(src))
  assert not os.path.exists(os.path.join(built, 'users'))
  assert not os.path.exists(os.path.join(built, 'queries'))
  back = tfds_builders.load_built(built)
  assert_same(back, catalog_io.load_dataset(src))
  assert back.users == {} and back.queries == []


def test_builds_are_deterministic(tmp_path):
  src = _dir(tmp_path)
  _, _, a = tfds_builders.build('generic', str(tmp_path / 'a'), source=str(src))
  _, _, b = tfds_builders.build('generic', str(tmp_path / 'b'), source=str(src))
  assert_same(tfds_builders.load_built(a), tfds_builders.load_built(b))
  catalog_io.write_dataset(tfds_builders.load_built(a), tmp_path / 'ea')
  catalog_io.write_dataset(tfds_builders.load_built(b), tmp_path / 'eb')
  for f in os.listdir(tmp_path / 'ea'):
    assert (tmp_path / 'ea' / f).read_bytes() == (tmp_path / 'eb' / f).read_bytes()


def test_build_refuses_to_mix_with_an_existing_build(tmp_path):
  src = _dir(tmp_path)
  _, _, built = tfds_builders.build('generic', str(tmp_path / 'tfds'), source=str(src))
  other = _dir(tmp_path, name='other', **{'items.jsonl': _jsonl(*ITEMS[:2]),
                                          'interactions.csv': 'user_id,item_id,timestamp\n'
                                                              'z,b1,1\n',
                                          'queries.jsonl': None, 'users.jsonl': None})
  with pytest.raises(FileExistsError, match='overwrite=True'):
    tfds_builders.build('generic', str(tmp_path / 'tfds'), source=str(other))
  tfds_builders.build('generic', str(tmp_path / 'tfds'), source=str(other), overwrite=True)
  back = tfds_builders.load_built(built)
  assert_same(back, catalog_io.load_dataset(other))
  assert not os.path.exists(os.path.join(built, 'users'))


def test_load_built_rejects_a_non_build(tmp_path):
  with pytest.raises(DatasetError, match="missing built table 'items'"):
    tfds_builders.load_built(tmp_path)
  with pytest.raises(ValueError, match='unknown dataset'):
    tfds_builders.build('nope', str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Bad input (issue 3, item 5), each through the generic builder.

BAD_CASES = {
    'malformed_json': (
        {'items.jsonl': _jsonl(*ITEMS[:2]) + '{"id": "b2", "type": "book",\n'}, {},
        r"items\.jsonl, line 3: invalid JSON"),
    'duplicate_item_id': (
        {'items.jsonl': _jsonl(*ITEMS, {'id': 'm1', 'type': 'movie', 'title': 'Again'})}, {},
        r"items\.jsonl, line 4, field 'id': duplicate item id 'm1' \(first on line 2\)"),
    'unknown_item': (
        {'interactions.csv': INTERACTIONS + '7,zz9,alice,1\n'}, {},
        r"interactions\.csv, line 8, field 'item_id': unknown item id 'zz9'"),
    'empty_title': (
        {'items.jsonl': _jsonl(*ITEMS, {'id': 'x', 'type': 'book', 'title': '  '})}, {},
        r"items\.jsonl, line 4, field 'title': must be a non-empty string"),
    'unknown_entity_type': (
        {'items.jsonl': _jsonl(*ITEMS, {'id': 'x', 'type': 'moive', 'title': 'T'})},
        {'allowed_types': ['book', 'movie']},
        r"items\.jsonl, line 4, field 'type': unknown entity type 'moive'; the declared "
        r"types are \['book', 'movie'\]"),
    'bad_type_name': (
        {'items.jsonl': _jsonl(*ITEMS, {'id': 'x', 'type': 'tv show', 'title': 'T'})}, {},
        r"items\.jsonl, line 4, field 'type': entity type 'tv show' must match"),
    'out_of_order': (
        {}, {'on_out_of_order': 'error'},
        r"interactions\.csv, line 4, field 'timestamp': user 'bob': timestamp 70 is earlier "
        r"than the previous event of this user \(100\)"),
}


@pytest.mark.parametrize('case', sorted(BAD_CASES))
def test_bad_input_rejected_by_generic_builder(tmp_path, case):
  files, kwargs, pattern = BAD_CASES[case]
  src = _dir(tmp_path, **files)
  with pytest.raises(DatasetError, match=pattern):
    tfds_builders.build('generic', str(tmp_path / 'tfds'), source=str(src), **kwargs)
  # Nothing half-built is left behind for the bad dataset.
  assert not os.path.exists(tmp_path / 'tfds' / 'generic' / 'items')


def test_policies_count_what_they_handle(tmp_path):
  src = _dir(tmp_path, **{'interactions.csv': INTERACTIONS + '7,zz9,alice,1\n'})
  ds, _, built = tfds_builders.build('generic', str(tmp_path / 'tfds'), source=str(src),
                                     on_unknown_item='skip', allowed_types=['book', 'movie'])
  back = tfds_builders.load_built(built)
  assert back.skipped == {'interactions_with_unknown_item': 1}
  report = catalog_io.interaction_report(back)
  # Independent counts: bob's rows in file order have times 100, 70, -20 (two go back in
  # time); carol has a single event; dave has a profile but no event; no repeated triple.
  assert report == {'interactions_out_of_order': 2, 'users_with_fewer_than_2_interactions': 1,
                    'users_without_interactions': 1, 'duplicate_interactions': 0}
  # Out-of-order events are sorted by the split; carol is kept for training, not evaluated.
  split = splits.leave_one_out(back.interactions)
  assert split.train['bob'].tolist() == [back.catalog.index_of('b1')]
  assert split.test[0].target == back.catalog.index_of('m1')
  assert split.train['carol'].tolist() == [back.catalog.index_of('m1')]
  assert all(t.user_id != 'carol' for t in split.test)
  assert split.skipped == {'users_with_too_few_events_for_eval': 2}


def test_out_of_order_error_without_line_when_rows_were_skipped(tmp_path):
  src = _dir(tmp_path, **{'interactions.csv': 'user_id,item_id,timestamp\n'
                                               'a,zz,5\na,b1,9\na,m1,3\n'})
  with pytest.raises(DatasetError, match=r"interactions\.csv, field 'timestamp': user 'a'"):
    catalog_io.load_dataset(src, on_unknown_item='skip', on_out_of_order='error')
  with pytest.raises(DatasetError, match=r"interactions\.csv, line 4, field 'timestamp'"):
    catalog_io.load_dataset(_dir(tmp_path, name='b', **{
        'interactions.csv': 'user_id,item_id,timestamp\nb,b1,5\na,b1,9\na,m1,3\n'}),
                            on_out_of_order='error')


def test_load_dataset_rejects_bad_policy_arguments(tmp_path):
  src = _dir(tmp_path)
  with pytest.raises(ValueError, match='on_out_of_order'):
    catalog_io.load_dataset(src, on_out_of_order='sort')
  with pytest.raises(ValueError, match='allowed_types'):
    catalog_io.load_dataset(src, allowed_types='book')
  with pytest.raises(ValueError, match='allowed_types'):
    catalog_io.load_dataset(src, allowed_types=['book', 'bad type'])


# ---------------------------------------------------------------------------------------------
# The entry point.


def _run(*args):
  return subprocess.run([sys.executable, '-m', 'experiments.build_dataset', *args],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not HAVE_RECBOLE, reason='recbole (assets) not installed')
def test_build_dataset_movielens_acceptance(tmp_path):
  proc = _run('--dataset=movielens100k', f'--workdir={tmp_path}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result == json.loads((tmp_path / 'result.json').read_text())
  assert (result['num_users'], result['num_items'], result['num_interactions']) == (
      943, 1682, 100_000)
  # Leave-one-out: every ML-100k user has >= 20 ratings, so one valid and test target each.
  assert result['split/valid'] == result['split/test'] == 943
  assert result['split/train_interactions'] == 100_000 - 2 * 943
  exported = catalog_io.load_dataset(tmp_path / 'data')
  assert len(exported.catalog) == 1682 and len(exported.interactions) == 100_000


def test_build_dataset_generic_good_and_bad(tmp_path):
  src = _dir(tmp_path)
  proc = _run('--dataset=generic', f'--data_dir={src}', f'--workdir={tmp_path / "w"}',
              '--split=temporal:0.3,0.3', '--types=book,movie')
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert (result['num_users'], result['num_items'], result['num_interactions']) == (3, 3, 6)
  assert result['policy/interactions_out_of_order'] == 2
  assert result['policy/users_with_fewer_than_2_interactions'] == 1
  assert result['split'] == 'temporal:0.3,0.3' and 'split/t_test' in result
  bad = _dir(tmp_path, name='bad', **{'interactions.csv': INTERACTIONS + '7,zz9,alice,1\n'})
  proc = _run('--dataset=generic', f'--data_dir={bad}', f'--workdir={tmp_path / "w2"}')
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line
  assert proc.stderr.startswith('error: ')
  assert "interactions.csv, line 8, field 'item_id': unknown item id 'zz9'" in proc.stderr
  assert not (tmp_path / 'w2' / 'result.json').exists()


def test_export_dataset_entry_point(tmp_path):
  src = _dir(tmp_path)
  _, _, built = tfds_builders.build('generic', str(tmp_path / 'tfds'), source=str(src))
  proc = subprocess.run([sys.executable, '-m', 'experiments.export_dataset', f'--built={built}',
                         f'--workdir={tmp_path / "out"}'], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert (summary['num_items'], summary['num_interactions'], summary['num_queries']) == (3, 6, 2)
  assert summary == json.loads((tmp_path / 'out' / 'result.json').read_text())
  assert_same(catalog_io.load_dataset(tmp_path / 'out' / 'data'), catalog_io.load_dataset(src))
  proc = subprocess.run([sys.executable, '-m', 'experiments.export_dataset',
                         f'--built={tmp_path}', f'--workdir={tmp_path / "out2"}'],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and "missing built table 'items'" in proc.stderr
  assert proc.stderr.startswith('error: ') and len(proc.stderr.strip().splitlines()) == 1
