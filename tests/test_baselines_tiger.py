"""TIGER-style generative retrieval: token windows, and learning a deterministic pattern."""

import numpy as np
import pytest

from neo_jax.catalog.splits import leave_one_out
from neo_jax.catalog.types import Catalog
from neo_jax.baselines import tiger
from neo_jax.eval.validation import Validator
from neo_jax.sid.types import SIDMap
from test_baselines_sasrec import N_ITEMS, cycle_dataset


def _cycle_dataset(n_users=60, length=12, seed=0):
  """Users walk item i -> i+1 mod N from a random start; types alternate a, b."""
  return cycle_dataset(n_users, length, seed,
                       title=lambda n: f'item number {n} {"odd" if n % 2 else "even"}')


def _sid_map():
  """Two levels per type: item n is the j = n // 2 -th of its type, codes (j // 4, j % 4)."""
  j = np.arange(N_ITEMS) // 2
  return SIDMap(type_names=('a', 'b'), level_sizes={'a': (3, 4), 'b': (3, 4)},
                codes=np.stack([j // 4, j % 4], 1).astype(np.int32),
                type_index=(np.arange(N_ITEMS) % 2).astype(np.int32))


def test_windows_hold_sid_tokens_and_mask_target_codes():
  ds = _cycle_dataset()
  cfg = tiger.TIGERConfig(max_items=3, stride=2, d_model=16, num_heads=2, mlp_dim=32)
  model = tiger.TIGER(cfg, sid_map=_sid_map())
  model.catalog = ds.catalog
  model._setup_sids(ds, leave_one_out(ds.interactions))
  toks, mask = model._windows([np.array([5, 6, 7, 8, 9])])
  vocab = model.vocab
  tok_of = lambda n: [vocab.sid_open_id] + [vocab.token_id(ds.catalog.type_of(n), l, c)
                                            for l, c in enumerate(_sid_map().codes[n])]
  # Windows end at items 9 (items 6..9, targets 8, 9) and 7 (items 5..7, targets 6, 7); the
  # first item of a sequence is never a target.
  assert toks.shape == (2, 1 + 4 * 3)
  assert toks[0].tolist() == [tiger.BOS] + tok_of(6) + tok_of(7) + tok_of(8) + tok_of(9)
  assert toks[1].tolist() == [tiger.BOS] + tok_of(5) + tok_of(6) + tok_of(7) + [tiger.PAD] * 3
  expect = np.zeros((2, 13), bool)
  expect[0, [8, 9, 11, 12]] = True  # the codes (not the `[SID]`) of the targets
  expect[1, [5, 6, 8, 9]] = True
  np.testing.assert_array_equal(mask, expect)
  tokens, positions, valid = model._prompts([np.array([5, 6])])
  assert tokens[0, valid[0]].tolist() == [tiger.BOS] + tok_of(5) + tok_of(6) + [
      vocab.sid_open_id]
  assert positions[0, -1] == 7


def test_tiger_learns_next_item_cycle():
  ds = _cycle_dataset()
  split = leave_one_out(ds.interactions)
  cfg = tiger.TIGERConfig(max_items=4, stride=4, d_model=32, num_heads=2, mlp_dim=64,
                          lr_grid=(1e-2,), batch_size=16, max_epochs=60, patience=8,
                          num_beams=4, eval_batch_size=32)
  model = tiger.TIGER(cfg, sid_map=_sid_map())
  facts = model.fit(ds, split, validator=Validator(ds.catalog, split.valid,
                                                  exclude_history=False, any_type=True))
  # (cycles repeat items, and the next item is always of the other type)
  assert facts['unreachable_items'] == 0 and facts['valid_ndcg@10'] > 0.9
  types = [ds.catalog.type_of(t.target) for t in split.test]
  ranked = model.rank_recommend(split.test, types, 4)
  expect = np.array([(int(t.history[-1]) + 1) % N_ITEMS for t in split.test])
  assert np.mean(ranked[:, 0] == expect) >= 0.95
  assert all(ds.catalog.type_of(int(r)) == t for row, t in zip(ranked, types) for r in row)
  # Excluding the right answer: beams return the others, and never the excluded item.
  excl = model.rank_recommend(split.test[:8], types[:8], 4, exclude=[[e] for e in expect[:8]])
  assert not np.any(excl == expect[:8, None]) and np.all(excl >= 0)


def test_tiger_builds_its_own_sids_and_rejects_bad_input():
  ds = _cycle_dataset(n_users=10)
  split = leave_one_out(ds.interactions)
  cfg = tiger.TIGERConfig(max_items=4, stride=4, d_model=16, num_heads=2, mlp_dim=32,
                          epochs_without_valid=1, num_beams=4, eval_batch_size=8, sid_k=4,
                          sid_levels=2)
  model = tiger.TIGER(cfg)
  facts = model.fit(ds, split)
  assert facts['unreachable_items'] == 0 and model.sid_map.num_levels == 3
  ranked = model.rank_recommend(split.test[:3], ['a', 'b', None], 4)
  assert (ranked >= 0).all() and len(set(ranked[0])) == 4
  assert all(ds.catalog.type_of(int(r)) == 'a' for r in ranked[0])
  with pytest.raises(ValueError, match='stride'):
    tiger.TIGERConfig(max_items=2, stride=3)
  with pytest.raises(ValueError, match='SID map covers'):
    bad = tiger.TIGER(cfg, sid_map=_sid_map())
    bad.fit(_cycle_dataset_with(5), split)


def _cycle_dataset_with(n):
  ds = _cycle_dataset(n_users=3)
  cat = ds.catalog
  ds.catalog = Catalog(ids=cat.ids[:n], type_names=cat.type_names, type_index=cat.type_index[:n],
                       titles=cat.titles[:n], descriptions=cat.descriptions[:n],
                       tags=cat.tags[:n], attributes=cat.attributes[:n],
                       popularity=cat.popularity[:n])
  return ds


def test_saved_tiger_ranks_as_the_fitted_one(tmp_path):
  """`save` / `load` hand a fitted TIGER to another process (the lanes of an experiment): the
  loaded one ranks exactly as the fitted one and keeps its fit facts; another SID map is
  refused."""
  ds = _cycle_dataset(n_users=12)
  split = leave_one_out(ds.interactions)
  cfg = tiger.TIGERConfig(max_items=4, stride=4, d_model=16, num_heads=2, mlp_dim=32,
                          epochs_without_valid=2, num_beams=4, eval_batch_size=8)
  fitted = tiger.TIGER(cfg, sid_map=_sid_map())
  fitted.fit(ds, split)
  fitted.save(str(tmp_path))
  loaded = tiger.TIGER.load(str(tmp_path), ds, split, _sid_map())
  types = [ds.catalog.type_of(t.target) for t in split.test]
  excl = [[int(t.history[-1])] for t in split.test]
  np.testing.assert_array_equal(loaded.rank_recommend(split.test, types, 4, exclude=excl),
                                fitted.rank_recommend(split.test, types, 4, exclude=excl))
  assert loaded.fit_facts['epochs'] == fitted.fit_facts['epochs'] == 2
  other = _sid_map()
  other.codes[[0, 2]] = other.codes[[2, 0]]
  with pytest.raises(ValueError, match='SID map'):
    tiger.TIGER.load(str(tmp_path), ds, split, other)
  with pytest.raises(RuntimeError, match='fit first'):
    tiger.TIGER(cfg, sid_map=_sid_map()).save(str(tmp_path / 'x'))
