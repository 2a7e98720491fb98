"""SID map builder: collision policies (brute-force checks), report, save/load, validation."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from neo_jax.catalog.types import Catalog
from neo_jax.sid import builder
from neo_jax.sid import features
from neo_jax.sid.types import SIDMap
from neo_jax.tokenizer.sid_vocab import SIDVocab

D = 16
LEVELS = 2
K = 4


def make_catalog(types, titles=None, popularity=None):
  n = len(types)
  names = tuple(sorted(set(types)))
  titles = titles or [f'item {j}' for j in range(n)]
  pop = np.full(n, np.nan, np.float32) if popularity is None else np.asarray(popularity, np.float32)
  return Catalog(ids=[f'i{j}' for j in range(n)], type_names=names,
                 type_index=np.array([names.index(t) for t in types], np.int32),
                 titles=list(titles), descriptions=[''] * n, tags=[()] * n,
                 attributes=[{} for _ in range(n)], popularity=pop)


def fixture_data():
  """78 items of three types; many items share an embedding, so k-means codes must collide."""
  rng = np.random.default_rng(0)
  types = ['movie'] * 48 + ['book'] * 28 + ['game'] * 2
  rng.shuffle(types)
  types = list(types)
  emb = np.zeros((len(types), D), np.float32)
  for t, distinct in (('movie', 14), ('book', 9), ('game', 2)):
    rows = [i for i, x in enumerate(types) if x == t]
    protos = rng.normal(size=(distinct, D))
    emb[rows] = protos[rng.integers(0, distinct, len(rows))]
  popularity = rng.integers(0, 5, len(types)).astype(np.float64)  # many ties
  return make_catalog(types), emb, popularity


CAT, EMB, POP = fixture_data()


def kmeans_groups(cat, codes, levels):
  """Brute force: (type, first `levels` codes) -> catalog rows, in row order."""
  groups = {}
  for n in range(len(cat)):
    groups.setdefault((cat.type_of(n),) + tuple(codes[n, :levels].tolist()), []).append(n)
  return groups


def test_disambiguate_makes_every_item_unique_and_reachable():
  sid_map, report = builder.build_sid_map(CAT, EMB, levels=LEVELS, k=K, popularity=POP, seed=0)
  n = len(CAT)
  assert sid_map.codes.shape == (n, LEVELS + 1) and sid_map.codes.dtype == np.int32
  assert sid_map.reachable().all()
  # Brute force: all pairs of same-type items differ somewhere.
  for a in range(n):
    for b in range(a + 1, n):
      if CAT.type_index[a] == CAT.type_index[b]:
        assert not np.array_equal(sid_map.codes[a], sid_map.codes[b]), (a, b)
  for i in range(n):
    assert sid_map.item_of(CAT.type_of(i), tuple(sid_map.codes[i])) == i
  groups = kmeans_groups(CAT, sid_map.codes, LEVELS)
  assert max(len(g) for g in groups.values()) > 1  # the fixture does collide
  for t in CAT.type_names:
    sizes = sid_map.level_sizes[t]
    assert len(sizes) == LEVELS + 1
    type_groups = [g for key, g in groups.items() if key[0] == t]
    assert sizes[-1] == max(len(g) for g in type_groups)
    assert sizes[:LEVELS] == ((2, 2) if t == 'game' else (K, K))
    colliding = sum(len(g) for g in type_groups if len(g) > 1)
    assert report[f'{t}/collision_rate'] == pytest.approx(colliding / len(CAT.items_of_type(t)))
  # Within a group the extra code ranks by popularity (descending), ties by catalog row.
  for g in groups.values():
    expected = sorted(g, key=lambda r: (-POP[r], r))
    assert [int(sid_map.codes[r, LEVELS]) for r in expected] == list(range(len(g)))
  total_colliding = sum(len(g) for g in groups.values() if len(g) > 1)
  assert report['collision_rate'] == pytest.approx(total_colliding / n)
  assert report['unreachable_items'] == 0
  # Identical embeddings always share their k-means codes.
  for a in range(n):
    for b in range(a + 1, n):
      if CAT.type_index[a] == CAT.type_index[b] and np.array_equal(EMB[a], EMB[b]):
        assert np.array_equal(sid_map.codes[a, :LEVELS], sid_map.codes[b, :LEVELS])
  # The SID vocabulary accepts the level sizes and every code.
  vocab = SIDVocab(sid_map.type_names, sid_map.level_sizes, base=1000)
  for i in range(n):
    for level, c in enumerate(sid_map.codes[i]):
      vocab.token_id(CAT.type_of(i), level, int(c))


def test_popular_keeps_the_most_popular_item_of_each_group():
  dis, _ = builder.build_sid_map(CAT, EMB, levels=LEVELS, k=K, popularity=POP, seed=0)
  pop_map, report = builder.build_sid_map(CAT, EMB, levels=LEVELS, k=K, popularity=POP, seed=0,
                                          collision='popular')
  assert pop_map.num_levels == LEVELS
  # Same seed, same quantiser: the k-means codes are those of the disambiguated map.
  groups = kmeans_groups(CAT, dis.codes, LEVELS)
  unreachable = 0
  for g in groups.values():
    best = max(g, key=lambda r: (POP[r], -r))
    for r in g:
      if r == best:
        np.testing.assert_array_equal(pop_map.codes[r], dis.codes[r, :LEVELS])
      else:
        assert np.all(pop_map.codes[r] == -1)
        unreachable += 1
  assert unreachable > 0
  assert report['unreachable_items'] == unreachable == int(np.sum(~pop_map.reachable()))
  assert sum(report[f'{t}/unreachable_items'] for t in CAT.type_names) == unreachable
  for t in CAT.type_names:
    assert pop_map.level_sizes[t] == dis.level_sizes[t][:LEVELS]


def test_popular_needs_a_popularity():
  with pytest.raises(ValueError, match='needs a popularity'):
    builder.build_sid_map(CAT, EMB, levels=LEVELS, k=K, collision='popular')
  # The catalog's own popularity is used when complete.
  cat = make_catalog([CAT.type_of(i) for i in range(len(CAT))], popularity=POP)
  a, _ = builder.build_sid_map(cat, EMB, levels=LEVELS, k=K, collision='popular')
  b, _ = builder.build_sid_map(CAT, EMB, levels=LEVELS, k=K, collision='popular', popularity=POP)
  np.testing.assert_array_equal(a.codes, b.codes)
  assert a.meta['popularity_source'] == 'catalog'


def test_report_figures():
  sid_map, report = builder.build_sid_map(CAT, EMB, levels=LEVELS, k=K, popularity=POP, seed=3)
  assert all(isinstance(v, (int, float)) for v in report.values())
  for t in CAT.type_names:
    rows = CAT.items_of_type(t)
    assert report[f'{t}/num_items'] == len(rows)
    mses = [report[f'{t}/mse_input']] + [report[f'{t}/mse_l{l}'] for l in range(LEVELS)]
    assert all(b <= a + 1e-9 for a, b in zip(mses, mses[1:])), mses
    for l in range(LEVELS):
      k = sid_map.level_sizes[t][l]
      p = np.bincount(sid_map.codes[rows, l], minlength=k) / len(rows)
      p = p[p > 0]
      assert report[f'{t}/utilisation_l{l}'] == pytest.approx(np.exp(-np.sum(p * np.log(p))) / k)
  assert report['game/k_clamped'] == LEVELS and report['movie/k_clamped'] == 0
  assert report['game/mse_l0'] == pytest.approx(0.0, abs=1e-9)  # one centroid per item
  assert report['num_levels'] == LEVELS + 1 and report['num_items'] == len(CAT)


def test_k_specs():
  sid_map, _ = builder.build_sid_map(CAT, EMB, levels=LEVELS, k={'movie': 4, 'book': (4, 2),
                                                                 'game': 1}, popularity=POP)
  assert sid_map.level_sizes['movie'][:2] == (4, 4)
  assert sid_map.level_sizes['book'][:2] == (4, 2)
  assert sid_map.level_sizes['game'] == (1, 1, 2)  # one code per level; rank separates both
  per_level, _ = builder.build_sid_map(CAT, EMB, levels=LEVELS, k=(4, 2), popularity=POP)
  assert per_level.level_sizes['movie'][:2] == (4, 2)
  assert per_level.level_sizes['game'][:2] == (2, 2)
  for bad, msg in (((4, 4, 4), 'per-level'), ({'movie': 4}, 'no entry'), (0, '>= 1'),
                   ({'movie': 4, 'book': 4, 'game': 4, 'toy': 4}, 'unknown entity types')):
    with pytest.raises(ValueError, match=msg):
      builder.build_sid_map(CAT, EMB, levels=LEVELS, k=bad)
  with pytest.raises(ValueError, match='shape'):
    builder.build_sid_map(CAT, EMB[:-1], levels=LEVELS, k=K)
  with pytest.raises(ValueError, match='unknown collision'):
    builder.build_sid_map(CAT, EMB, levels=LEVELS, k=K, collision='first')


def test_grown_k_follows_each_type_size():
  # CAT: 48 movies, 28 books, 2 games. Brute force: the smallest K >= k with K**L >= c*n.
  def smallest(k, levels, want):
    return next(x for x in range(k, 10_000) if x ** levels >= want)

  for k, levels, c in ((2, 2, 1.0), (2, 3, 4.0), (3, 2, 0.5), (8, 2, 1.0), (2, 1, 1.5)):
    got = builder.grown_k(CAT, k, levels, c)
    assert got == {t: smallest(k, levels, c * len(CAT.items_of_type(t))) for t in CAT.type_names}
  assert builder.grown_k(CAT, 2, 2, 1.0) == {'book': 6, 'game': 2, 'movie': 7}  # 36>=28, 49>=48
  assert builder.grown_k(CAT, 5, 2, 0.0) == {'book': 5, 'game': 5, 'movie': 5}
  assert builder.grown_k(CAT, 2, {'movie': 1, 'book': 2, 'game': 3}, 1.0) == {
      'book': 6, 'game': 2, 'movie': 48}
  # The grown K builds: every level of a type has the grown number of codes.
  sid_map, _ = builder.build_sid_map(CAT, EMB, levels=2, k=builder.grown_k(CAT, 2, 2, 1.0),
                                     popularity=POP)
  assert sid_map.level_sizes['book'][:2] == (6, 6)
  for bad_k, bad_c, msg in ((0, 1.0, 'positive int'), ((2, 2), 1.0, 'positive int'),
                            (4, -1.0, '>= 0')):
    with pytest.raises(ValueError, match=msg):
      builder.grown_k(CAT, bad_k, 2, bad_c)


def test_deterministic_by_seed():
  a, _ = builder.build_sid_map(CAT, EMB, levels=LEVELS, k=K, popularity=POP, seed=1)
  b, _ = builder.build_sid_map(CAT, EMB, levels=LEVELS, k=K, popularity=POP, seed=1)
  np.testing.assert_array_equal(a.codes, b.codes)
  assert a.level_sizes == b.level_sizes


def test_end_to_end_from_text():
  # 28 + 2 items: the same shapes as the fixture's book and game types (no new compiles).
  titles = [f'{w} {x}' for w in ('space', 'love', 'war', 'cooking') for x in
            ('story', 'saga', 'tale', 'night', 'day', 'song', 'quest')] + ['chess', 'poker']
  types = ['movie'] * 28 + ['game'] * 2
  cat = make_catalog(types, titles)
  enc = features.HashedTfidfEncoder.fit(features.catalog_texts(cat), dim=D)
  emb = features.embed_catalog(cat, enc)
  sid_map, _ = builder.build_sid_map(cat, emb, levels=LEVELS, k=K, encoder_name=enc.name)
  assert sid_map.meta['encoder'] == enc.name and sid_map.reachable().all()
  vocab = SIDVocab(sid_map.type_names, sid_map.level_sizes, base=0)
  rendered = {vocab.render(cat.type_of(i), sid_map.codes[i]) for i in range(len(cat))}
  assert len(rendered) == len(cat)


def test_save_load_round_trip(tmp_path):
  sid_map, _ = builder.build_sid_map(CAT, EMB, levels=LEVELS, k=K, popularity=POP,
                                     collision='popular', encoder_name='test-encoder')
  builder.save_sid_map(sid_map, tmp_path / 'm')
  assert sorted(os.listdir(tmp_path / 'm')) == ['sid_map.json', 'sid_map.npz']  # no temp files
  loaded = builder.load_sid_map(tmp_path / 'm')
  np.testing.assert_array_equal(loaded.codes, sid_map.codes)
  np.testing.assert_array_equal(loaded.type_index, sid_map.type_index)
  assert loaded.type_names == sid_map.type_names
  assert loaded.level_sizes == sid_map.level_sizes
  assert loaded.meta == json.loads(json.dumps(sid_map.meta))
  manifest = json.loads((tmp_path / 'm' / 'sid_map.json').read_text())
  assert manifest['encoder'] == 'test-encoder' and manifest['seed'] == 0
  assert manifest['num_items'] == len(CAT) and manifest['num_levels'] == LEVELS
  assert manifest['reachable_items'] == int(sid_map.reachable().sum())
  # Overwriting an existing map works (os.replace onto the old files).
  builder.save_sid_map(sid_map, tmp_path / 'm')
  assert sorted(os.listdir(tmp_path / 'm')) == ['sid_map.json', 'sid_map.npz']


def _resave_npz(path, **changes):
  with np.load(path) as z:
    arrays = {k: z[k] for k in z.files}
  arrays.update(changes)
  np.savez(path, **arrays)


def test_load_detects_corruption(tmp_path):
  sid_map, _ = builder.build_sid_map(CAT, EMB, levels=LEVELS, k=K, popularity=POP)
  d = tmp_path / 'm'
  npz, man = d / 'sid_map.npz', d / 'sid_map.json'

  def fresh():
    builder.save_sid_map(sid_map, d)

  fresh()
  codes = sid_map.codes.copy()
  codes[5, 0] = (codes[5, 0] + 1) % 2
  _resave_npz(npz, codes=codes)
  with pytest.raises(ValueError, match='codes checksum mismatch'):
    builder.load_sid_map(d)

  fresh()
  npz.write_bytes(npz.read_bytes()[:100])
  with pytest.raises(ValueError, match='unreadable'):
    builder.load_sid_map(d)

  fresh()
  m = json.loads(man.read_text())
  m['level_sizes']['movie'][0] += 1
  man.write_text(json.dumps(m))
  with pytest.raises(ValueError, match='disagree with the manifest'):
    builder.load_sid_map(d)

  fresh()
  man.write_text('{"format": "neo_jax.sid_map", ')
  with pytest.raises(ValueError, match='not valid JSON'):
    builder.load_sid_map(d)

  fresh()
  _resave_npz(npz, codes=sid_map.codes[:, :1].copy())
  with pytest.raises(ValueError, match='codes are int32'):
    builder.load_sid_map(d)

  # A code outside its level with a matching checksum: caught by contract validation. The
  # checksum is sha256 over the dtype string, the shape and the raw bytes (see the manifest).
  fresh()
  codes = sid_map.codes.copy()
  codes[7, 0] = sid_map.level_sizes[CAT.type_of(7)][0]
  _resave_npz(npz, codes=codes)
  m = json.loads(man.read_text())
  h = hashlib.sha256(f'{codes.dtype.str}{codes.shape}'.encode())
  h.update(codes.tobytes())
  m['codes_sha256'] = h.hexdigest()
  man.write_text(json.dumps(m))
  with pytest.raises(ValueError, match='outside'):
    builder.load_sid_map(d)

  fresh()
  os.remove(man)
  with pytest.raises(FileNotFoundError, match='sid_map.json'):
    builder.load_sid_map(d)


def test_validate_rejects_contract_violations():
  ti = np.array([0, 0, 1], np.int32)
  ok = dict(type_names=('a', 'b'), level_sizes={'a': (2, 2), 'b': (1, 1)}, type_index=ti)
  builder.validate_sid_map(SIDMap(codes=np.array([[0, 1], [1, 1], [0, 0]], np.int32), **ok))
  builder.validate_sid_map(SIDMap(codes=np.array([[-1, -1], [1, 1], [0, 0]], np.int32), **ok))
  cases = (
      (np.array([[0, 1], [0, 1], [0, 0]], np.int32), 'share an SID'),
      (np.array([[0, 2], [1, 1], [0, 0]], np.int32), 'outside'),
      (np.array([[-1, 1], [1, 1], [0, 0]], np.int32), 'every level'),
      (np.array([[0, 1], [1, 1], [0, 0]], np.int64), 'int32'),
  )
  for codes, msg in cases:
    with pytest.raises(ValueError, match=msg):
      builder.validate_sid_map(SIDMap(codes=codes, **ok))
  with pytest.raises(ValueError, match='level sizes of'):
    builder.validate_sid_map(SIDMap(
        codes=np.array([[0, 1], [1, 1], [0, 0]], np.int32), type_names=('a', 'b'),
        level_sizes={'a': (2, 2), 'b': (1,)}, type_index=ti))
  with pytest.raises(ValueError, match='share an SID'):
    builder.save_sid_map(SIDMap(codes=cases[0][0], **ok), '/nonexistent/never/written')


def test_config_codes_per_item_grows_k_per_type():
  from neo_jax.run import config as config_lib
  from neo_jax.run import stages
  cfg = config_lib.validate(config_lib.defaults())
  cfg.sid.k, cfg.sid.levels = 2, 2
  assert stages.sid_k(cfg, CAT) == 2  # codes_per_item 0 (the default): sid.k as given
  cfg.sid.codes_per_item = 1.0
  assert stages.sid_k(cfg, CAT) == builder.grown_k(CAT, 2, 2, 1.0)
  bad = config_lib.defaults()
  bad.sid.codes_per_item = -1.0
  with pytest.raises(ValueError, match='codes_per_item'):
    config_lib.validate(bad)
