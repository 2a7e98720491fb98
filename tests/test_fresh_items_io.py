"""One serialisation of catalog items: `catalog.io.item_json` writes what `read_items` reads
back equal (the dataset writer and `run/catalog_update` both use them), popularity as the
shortest decimal of its float32; `read_items` names file, line and field of a bad item."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neo_jax.catalog import io as catalog_io
from neo_jax.catalog.types import Catalog, Dataset, Interactions


def catalog():
  return Catalog(
      ids=['m1', 'b1', 'm2'], type_names=('book', 'movie'),
      type_index=np.array([1, 0, 1], np.int32), titles=['Alpha', 'Beta', 'Gamma'],
      descriptions=['A film.', '', 'Ünïcode'], tags=[('x', 'y'), (), ('z',)],
      attributes=[{'year': 1999}, {}, {'lang': 'de'}],
      popularity=np.array([0.1, np.nan, 3.0], np.float32))


def test_item_json_round_trips_through_read_items(tmp_path):
  cat = catalog()
  objs = [catalog_io.item_json(cat, n) for n in range(len(cat))]
  assert objs[0] == {'id': 'm1', 'type': 'movie', 'title': 'Alpha', 'description': 'A film.',
                     'tags': ['x', 'y'], 'attributes': {'year': 1999}, 'popularity': 0.1}
  assert objs[1] == {'id': 'b1', 'type': 'book', 'title': 'Beta'}  # absent fields left out
  path = tmp_path / 'items.jsonl'
  path.write_text(''.join(json.dumps(o, ensure_ascii=False) + '\n' for o in objs),
                  encoding='utf-8')
  back = catalog_io.read_items(str(path))
  assert back.ids == cat.ids and back.titles == cat.titles and back.tags == cat.tags
  assert [back.type_of(n) for n in range(3)] == [cat.type_of(n) for n in range(3)]
  assert back.descriptions == cat.descriptions and back.attributes == cat.attributes
  np.testing.assert_array_equal(back.popularity, cat.popularity)  # NaN equal to NaN
  # The dataset writer writes the same lines.
  inter = Interactions(user_names=['u'], user_index=np.array([0], np.int32),
                       item_index=np.array([0], np.int32), timestamp=np.array([1], np.int64))
  catalog_io.write_dataset(Dataset('t', cat, inter), tmp_path / 'ds')
  assert (tmp_path / 'ds' / catalog_io.ITEMS_FILE).read_text(encoding='utf-8') == (
      path.read_text(encoding='utf-8'))


def test_read_items_names_the_bad_line(tmp_path):
  path = tmp_path / 'new.jsonl'
  path.write_text('{"id": "a", "type": "movie", "title": "A"}\n'
                  '{"id": "b", "type": "recipe", "title": "B"}\n')
  with pytest.raises(ValueError, match=r"new.jsonl, line 2, field .type.: unknown entity type "
                                       r"'recipe'"):
    catalog_io.read_items(str(path), frozenset({'movie', 'book'}))
  assert catalog_io.read_items(str(path)).ids == ['a', 'b']
