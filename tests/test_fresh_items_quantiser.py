"""The frozen quantiser saved with every SID map: it gives the build's items their own codes
back, places new items by their text (collisions take the next free disambiguation code), and
refuses what would need a rebuild."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from neo_jax.catalog.splits import make_split
from neo_jax.catalog.synthetic import SyntheticConfig, generate_synthetic
from neo_jax.sid import builder
from neo_jax.sid import job
from neo_jax.sid import quantiser as qlib
from neo_jax.sid.types import SIDMap


@pytest.fixture(scope='module')
def dataset():
  return generate_synthetic(SyntheticConfig(items_per_type=40, num_users=60, num_queries=5))


def build(tmp_path, ds, encoder, collision='disambiguate', levels=2, k=6):
  split, _ = make_split(ds.interactions, 'leave_one_out')
  emb, name = job.embed(ds.catalog, encoder, tfidf_dim=32, progress=False,
                        sequences=list(split.train.values()), cf_dim=8)
  sid_map, _ = job.build_and_save(ds.catalog, emb, str(tmp_path), levels=levels, k=k,
                                  collision=collision, iters=10, popularity=None,
                                  encoder_name=name, plot=False)
  loaded = builder.load_sid_map(tmp_path / 'sid_map')
  return loaded, qlib.load_quantiser(tmp_path / 'sid_map', loaded), emb


def texts_of(catalog):
  return [catalog.text(n) for n in range(len(catalog))]


@pytest.mark.parametrize('encoder', ['tfidf', 'tfidf+cf', 'cf'])
def test_saved_quantiser_reproduces_the_builds_sids(tmp_path, dataset, encoder):
  sid_map, q, emb = build(tmp_path, dataset, encoder)
  n, kl = len(sid_map), q.kmeans_levels
  assert q.reproduced_items == n
  # The codebooks read back from disk give every item its own k-means codes back ...
  again = q.kmeans_codes(emb, sid_map.type_index)
  np.testing.assert_array_equal(again, sid_map.codes[:, :kl])
  # ... and the text part of the embedding is re-made from the text alone, bit for bit.
  types = np.asarray(sid_map.type_index)
  fresh = q.embed(texts_of(dataset.catalog), types) if encoder != 'cf' else None
  for part in q.parts:
    if part.kind == 'tfidf':
      np.testing.assert_array_equal(fresh[:, part.start:part.stop], emb[:, part.start:part.stop])
  if encoder == 'tfidf':
    # The whole SID: k-means codes from the re-embedded text, the map's disambiguation code.
    np.testing.assert_array_equal(q.kmeans_codes(fresh, types), sid_map.codes[:, :kl])


def _group_size(sid_map, kl, r):
  same = ((sid_map.type_index == sid_map.type_index[r])
          & np.all(sid_map.codes[:, :kl] == sid_map.codes[r, :kl], axis=1))
  return int(same.sum())


def test_new_items_take_the_next_free_disambiguation_code(tmp_path, dataset):
  sid_map, q, _ = build(tmp_path, dataset, 'tfidf', k=4)
  cat = dataset.catalog
  kl = q.kmeans_levels
  room = [r for r in range(len(cat))
          if _group_size(sid_map, kl, r) + 2 <= sid_map.level_sizes[cat.type_of(r)][kl]]
  a, b = room[0], next(r for r in room if cat.type_of(r) != cat.type_of(room[0]))
  # Copies of existing items' texts get the same k-means codes, so they join the group.
  src = [a, a, b]
  ids = [f'new-{i}' for i in range(len(src))]
  types = [cat.type_of(r) for r in src]
  codes, facts = qlib.assign_sids(sid_map, q, ids=ids, texts=[cat.text(r) for r in src],
                                  types=types)
  for i, r in enumerate(src):
    np.testing.assert_array_equal(codes[i, :kl], sid_map.codes[r, :kl])
  # Brute force: a group's codes are 0..g-1, so the copies take g, g+1, ...
  assert codes[0, kl] == _group_size(sid_map, kl, a)
  assert codes[1, kl] == _group_size(sid_map, kl, a) + 1
  assert codes[2, kl] == _group_size(sid_map, kl, b)
  assert facts == {'items': 3, 'joined_groups': 3, 'new_groups': 0, 'neighbour_cells': 0}
  grown = qlib.extend_sid_map(sid_map, codes, types)
  assert len(grown) == len(sid_map) + 3
  qlib.check_matches(q, grown)  # the grown map keeps the frozen rows
  # Against the grown map, the next copy of `a` goes one further.
  def once_more():
    return qlib.assign_sids(grown, q, ids=['new-3'], texts=[cat.text(a)], types=[types[0]])[0]

  if _group_size(sid_map, kl, a) + 3 <= sid_map.level_sizes[types[0]][kl]:
    assert once_more()[0, kl] == codes[1, kl] + 1
  else:
    with pytest.raises(qlib.SIDSpaceError):
      once_more()


def test_a_full_cell_sends_the_new_item_to_the_nearest_free_neighbour_cell(tmp_path, dataset):
  sid_map, q, _ = build(tmp_path, dataset, 'tfidf', k=3)
  kl = q.kmeans_levels
  # The largest group fills its cell (the disambiguation level is as large as it): a copy
  # of one of its items goes to another centroid of the last k-means level, same prefix.
  t = sid_map.type_names[0]
  rows = np.flatnonzero(sid_map.type_index == 0)
  _, inverse, counts = np.unique(sid_map.codes[rows, :kl], axis=0, return_inverse=True,
                                 return_counts=True)
  biggest = int(rows[np.flatnonzero(inverse.reshape(-1) == np.argmax(counts))[0]])
  assert counts.max() == sid_map.level_sizes[t][kl]
  codes, facts = qlib.assign_sids(sid_map, q, ids=['x'],
                                  texts=[dataset.catalog.text(biggest)], types=[t])
  assert facts['neighbour_cells'] == 1
  np.testing.assert_array_equal(codes[0, :kl - 1], sid_map.codes[biggest, :kl - 1])
  assert codes[0, kl - 1] != sid_map.codes[biggest, kl - 1]
  held = {tuple(c) for c in sid_map.codes[rows].tolist()}
  assert tuple(codes[0].tolist()) not in held


def hand_made(held_cells, collision_levels=2):
  """One type, one k-means level of 3 centroids on a line (0, 1, 3), a disambiguation level
  of one code: the map holds one item in each cell of `held_cells`."""
  cb = np.array([[0.0], [1.0], [3.0]], np.float32)
  codes = np.array([[c, 0] for c in held_cells], np.int32)[:, :collision_levels]
  sizes = (3, 1)[:collision_levels]
  sid_map = SIDMap(('a',), {'a': sizes}, codes, np.zeros(len(held_cells), np.int32),
                           meta={'kmeans_levels': 1})
  q = qlib.FrozenQuantiser(
      encoder_name='npy(x)', parts=(qlib.EncoderPart('npy', 'npy(x)', 0, 1),),
      type_names=('a',), kmeans_levels=1, codebooks={'a': (cb,)},
      item_emb_NxD=cb[list(held_cells)], type_index=np.zeros(len(held_cells), np.int32),
      arrays={}, map_codes_sha256='', reproduced_items=len(held_cells))
  return sid_map, q


@pytest.mark.parametrize('levels', [2, 1])  # with a disambiguation level; 'popular' (none)
def test_neighbour_cells_by_distance_then_a_clear_error(levels):
  sid_map, q = hand_made([0], levels)
  # 0.4 is nearest to centroid 0 (held), then 1, then 3: the first goes to cell 1, the
  # second to cell 2; a third finds every cell full.
  emb = np.array([[0.4], [0.4]], np.float32)
  codes, facts = qlib.assign_sids(sid_map, q, ids=['x', 'y'], texts=['', ''],
                                  types=['a', 'a'], embeddings=emb)
  assert codes[:, 0].tolist() == [1, 2] and facts['neighbour_cells'] == 2
  if levels == 2:
    assert codes[:, 1].tolist() == [0, 0]
  with pytest.raises(qlib.SIDSpaceError, match=r"new item 'z'.*rebuild the SID map"):
    qlib.assign_sids(sid_map, q, ids=['x', 'y', 'z'], texts=[''] * 3, types=['a'] * 3,
                     embeddings=np.array([[0.4]] * 3, np.float32))
  # A new item whose own cell is free takes it.
  codes, facts = qlib.assign_sids(sid_map, q, ids=['w'], texts=[''], types=['a'],
                                  embeddings=np.array([[2.9]], np.float32))
  assert codes[0, 0] == 2 and facts['neighbour_cells'] == 0


def test_popular_policy_places_a_copy_elsewhere_and_refuses_unknown_types(tmp_path, dataset):
  sid_map, q, _ = build(tmp_path, dataset, 'tfidf', collision='popular')
  codes, facts = qlib.assign_sids(sid_map, q, ids=['x'], texts=[dataset.catalog.text(3)],
                                  types=[dataset.catalog.type_of(3)])
  held = {tuple(c) for c, t in zip(sid_map.codes.tolist(), sid_map.type_index)
          if t == sid_map.type_index[3]}
  assert tuple(codes[0].tolist()) not in held and facts['neighbour_cells'] == 1
  with pytest.raises(qlib.SIDSpaceError, match='entity type .recipe. is not one'):
    qlib.assign_sids(sid_map, q, ids=['x'], texts=['a soup'], types=['recipe'])


def test_collaborative_vector_of_a_new_item_from_its_text_neighbours(tmp_path, dataset):
  sid_map, q, emb = build(tmp_path, dataset, 'tfidf+cf')
  text, cf = q.part('tfidf'), q.part('cf')
  new_text = 'a brand new release about ' + dataset.catalog.titles[5]
  t = int(sid_map.type_index[5])
  got = q.impute_cf([new_text], np.array([t]))[0]
  # Reference, written out: cosine over the text columns among same-type items with a
  # non-zero collaborative vector, the 10 most similar, weights max(sim, 0), unit norm.
  v = q.embed([new_text], np.array([t]))[0, text.start:text.stop]
  cands = [n for n in range(len(sid_map)) if sid_map.type_index[n] == t
           and np.any(emb[n, cf.start:cf.stop] != 0)]
  sims = sorted(((float(emb[n, text.start:text.stop] @ v), n) for n in cands),
                key=lambda s: -s[0])[:qlib.NEIGHBOURS]
  acc = sum(max(s, 0.0) * emb[n, cf.start:cf.stop].astype(np.float64) for s, n in sims)
  want = acc / np.linalg.norm(acc)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert abs(np.linalg.norm(got) - 1) < 1e-5


def test_quantiser_is_tied_to_its_map(tmp_path, dataset):
  sid_map, q, _ = build(tmp_path / 'a', dataset, 'tfidf')
  other = dataclasses.replace(sid_map, codes=sid_map.codes[::-1].copy())
  with pytest.raises(ValueError, match='not made for this SID map'):
    qlib.load_quantiser(tmp_path / 'a' / 'sid_map', other)
  with pytest.raises(ValueError, match='not one sid.job.embed writes'):
    qlib.parse_encoder('word2vec(dim=8)', 8)
  assert [p.kind for p in qlib.parse_encoder(
      'all-MiniLM-L6-v2(max_len=256,mean_pool,l2)+cf(ppmi-svd,dim=5,window=3)', 392)] == [
          'minilm', 'cf']
