"""SASRec: windows vs brute force, causality, and learning a deterministic pattern."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from neo_jax.catalog.splits import leave_one_out
from neo_jax.catalog.types import Catalog, Dataset, Interactions
from neo_jax.baselines import sasrec
from neo_jax.eval.validation import Validator

N_ITEMS = 24


def cycle_dataset(n_users=60, length=14, seed=0, title=lambda n: f'item {n}'):
  """Users walk item i -> i+1 mod N from a random start (two entity types, alternating);
  item n is titled `title(n)`. Shared with tests/test_baselines_tiger.py."""
  rng = np.random.default_rng(seed)
  cat = Catalog(ids=[f'i{n}' for n in range(N_ITEMS)], type_names=('a', 'b'),
                type_index=(np.arange(N_ITEMS) % 2).astype(np.int32),
                titles=[title(n) for n in range(N_ITEMS)], descriptions=[''] * N_ITEMS,
                tags=[()] * N_ITEMS, attributes=[{}] * N_ITEMS,
                popularity=np.full(N_ITEMS, np.nan, np.float32))
  users, items, ts = [], [], []
  for u in range(n_users):
    start = rng.integers(N_ITEMS)
    users += [u] * length
    items += [(start + t) % N_ITEMS for t in range(length)]
    ts += list(range(length))
  inter = Interactions([f'u{u}' for u in range(n_users)], np.array(users, np.int32),
                       np.array(items, np.int32), np.array(ts, np.int64))
  return Dataset('cycle', cat, inter)


def test_windows_cover_every_target_once_with_its_context():
  rng = np.random.default_rng(3)
  seqs = [rng.integers(0, 50, size=n) for n in (1, 2, 5, 13, 30)]
  max_len, stride = 6, 4
  inputs, targets, mask = sasrec.make_windows(seqs, max_len, stride)
  got = []
  for inp, tgt, msk in zip(inputs, targets, mask):
    for p in np.flatnonzero(msk):
      pos = max_len - stride + p  # input position whose next item is this target
      context = inp[:pos + 1]
      got.append((tuple(context[context > 0] - 1), int(tgt[p]) - 1))
  expect = []
  for s in seqs:
    for j in range(1, len(s)):
      # At least max_len - stride + 1 previous items, at most max_len, all of them near start.
      expect.append((tuple(s[:j]), int(s[j])))
  assert len(got) == len(expect)
  for ctx, tgt in got:
    matches = [c for c, t in expect if t == tgt and c[-len(ctx):] == ctx]
    assert matches, (ctx, tgt)
    full = max(matches, key=len)
    assert len(ctx) == min(len(full), max_len) or len(ctx) >= max_len - stride + 1
  with pytest.raises(ValueError, match='two or more'):
    sasrec.make_windows([np.array([3])], 4, 2)


def test_sasrec_is_causal():
  cfg = sasrec.SASRecConfig(max_len=8, stride=4, hidden=16, num_heads=2, inner=32,
                            dropout=0.3)
  net = sasrec.SASRecNet(30, cfg, nnx.Rngs(params=0))
  graphdef, state = nnx.split(net)
  # One compiled program per mode (eager dispatch of every op is slow on a loaded CPU).
  infer = jax.jit(lambda ids: nnx.merge(graphdef, state)(ids))
  train = jax.jit(lambda ids, key: nnx.merge(graphdef, state)(ids, deterministic=False,
                                                                key=key))
  ids = np.array([[0, 0, 3, 7, 1, 9, 4, 2]], np.int32)
  changed = ids.copy()
  changed[0, 5] = 22
  h, h2 = np.asarray(infer(ids)), np.asarray(infer(changed))
  np.testing.assert_allclose(h[:, :5], h2[:, :5], atol=1e-6)
  assert np.abs(h[:, 5:] - h2[:, 5:]).max() > 1e-3
  # In training mode too (same dropout key): the future cannot leak through dropout either.
  key = jax.random.key(1)
  t1, t2 = np.asarray(train(ids, key)), np.asarray(train(changed, key))
  np.testing.assert_allclose(t1[:, :5], t2[:, :5], atol=1e-6)
  assert np.abs(t1 - h).max() > 1e-3  # dropout is active in training mode
  with pytest.raises(ValueError, match='dropout key'):
    net(ids, deterministic=False)


@pytest.mark.parametrize('loss', ['ce', 'bce'])
def test_sasrec_learns_next_item_cycle(loss):
  ds = cycle_dataset()
  split = leave_one_out(ds.interactions)
  cfg = sasrec.SASRecConfig(max_len=8, stride=8, hidden=32, num_heads=2, inner=64,
                            num_blocks=2, loss=loss, batch_size=32, max_epochs=30, patience=3,
                            grid=((0.1, 1e-2),), eval_batch_size=64)
  model = sasrec.SASRec(cfg)
  facts = model.fit(ds, split, validator=Validator(ds.catalog, split.valid,
                                                  exclude_history=False, any_type=True))
  # (cycles repeat items, and the next item is always of the other type)
  assert facts['grid_points_tried'] == 1 and facts['valid_ndcg@10'] > 0.9
  # Test targets (never seen in training) follow the rule too: the next item after the last.
  types = [ds.catalog.type_of(t.target) for t in split.test]
  ranked = model.rank_recommend(split.test, types, 1)
  expect = [(int(t.history[-1]) + 1) % N_ITEMS for t in split.test]
  hr1 = np.mean(ranked[:, 0] == np.array(expect))
  assert hr1 >= 0.95, hr1
  assert all(ds.catalog.type_of(int(r)) == t for r, t in zip(ranked[:, 0], types))


def test_sasrec_config_rejects_bad_values():
  with pytest.raises(ValueError, match='loss'):
    sasrec.SASRecConfig(loss='mse')
  with pytest.raises(ValueError, match='divisible'):
    sasrec.SASRecConfig(hidden=10, num_heads=3)
  with pytest.raises(ValueError, match='stride'):
    dataclasses.replace(sasrec.SASRecConfig(), stride=0)
  ds = cycle_dataset(n_users=4)
  with pytest.raises(ValueError, match='needs validation targets'):
    sasrec.SASRec().fit(ds, leave_one_out(ds.interactions),
                        validator=Validator(ds.catalog, []))
  with pytest.raises(NotImplementedError, match='does not search'):
    m = sasrec.SASRec()
    m.catalog = cycle_dataset().catalog
    m.rank_search(['x'], [None], 1)
