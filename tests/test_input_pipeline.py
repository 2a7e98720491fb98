"""The grain input pipeline: whole examples packed with segment ids, attention never crossing
examples (checked through the real decoder), exact resume, host shards, seeded order."""

from __future__ import annotations

import grain
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from neo_jax.model.config import get_config
from neo_jax.model.decoder import Decoder
from neo_jax.tasks.types import Example
from neo_jax.train import input_pipeline as ip


class CharTokenizer:
  """Independent stand-in: one id per character (ord - 94 for 'a'..'z' -> 3..28, other
  characters ord % 200 + 30); 0 pad, 1 bos, 2 eos. Ids stay below the tiny model's 512."""
  pad_id, bos_id, eos_id = 0, 1, 2

  def encode(self, text):
    return [ord(c) % 200 + 30 for c in text]


def _decode(ids):
  return ''.join(chr(i - 30) for i in ids)


def _examples(n, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    p = f'{i}:' + ''.join(rng.choice(list('abcdefgh'), size=rng.integers(3, 20)))
    c = ''.join(rng.choice(list('XYZ'), size=rng.integers(1, 6)))
    out.append(Example(task='recommend', prompt=p, completion=c, output_format='ids'))
  return out


def _segments(batch):
  """(prompt, completion, tokens, row, positions) of every packed example of a batch."""
  out = []
  for r in range(batch['tokens'].shape[0]):
    segs = batch['segment_ids'][r]
    for s in range(1, segs.max() + 1):
      idx = np.flatnonzero(segs == s)
      assert idx.size and np.all(np.diff(idx) == 1), 'a segment must be contiguous'
      toks, mask = batch['tokens'][r, idx], batch['loss_mask'][r, idx]
      np.testing.assert_array_equal(batch['positions'][r, idx], np.arange(idx.size))
      assert toks[0] == 1 and toks[-1] == 2
      # The loss covers exactly the completion and eos: a suffix of the segment.
      k = int(mask.sum())
      assert k >= 2 and mask[-k:].all() and not mask[:-k].any()
      out.append((_decode(toks[1:-k]), _decode(toks[-k:-1]), idx, r))
    pad = segs == 0
    assert not batch['loss_mask'][r, pad].any()
    assert np.all(batch['tokens'][r, pad] == 0)
  return out


def _read_all(ds):
  return [b for b in ds]


def test_one_epoch_packs_every_example_once():
  exs = _examples(60)
  cfg = ip.PipelineConfig(seq_len=48, batch_size=4, seed=1, num_epochs=1,
                          drop_remainder=False, num_packing_bins=4)
  batches = _read_all(ip.make_dataset(exs, CharTokenizer(), cfg, shard_index=0, shard_count=1))
  got = [(p, c) for b in batches for p, c, _, _ in _segments(b)]
  assert sorted(got) == sorted((e.prompt, e.completion) for e in exs)
  for b in batches[:-1]:
    assert b['tokens'].shape == (4, 48) and b['tokens'].dtype == np.int32
    assert b['loss_mask'].dtype == bool and b['cut_prompts'].shape == (4,)
  assert sum(int(b['cut_prompts'].sum()) for b in batches) == 0
  fill = np.mean(np.concatenate([b['segment_ids'] for b in batches]) > 0)
  assert fill > 0.6, fill


def test_long_prompts_are_cut_and_counted():
  exs = [Example('search', 'p' * 30, 'AB', 'ids'), Example('search', 'short', 'C', 'ids')]
  cfg = ip.PipelineConfig(seq_len=16, batch_size=2, num_epochs=1, drop_remainder=False,
                          shuffle=False)
  (b,) = _read_all(ip.make_dataset(exs, CharTokenizer(), cfg, shard_index=0, shard_count=1))
  assert int(b['cut_prompts'].sum()) == 1
  segs = _segments(b)
  assert sorted((p, c) for p, c, _, _ in segs) == [('p' * 12, 'AB'), ('short', 'C')]


def test_two_shards_partition_the_data():
  exs = _examples(41)
  cfg = ip.PipelineConfig(seq_len=40, batch_size=2, seed=5, num_epochs=1,
                          drop_remainder=False)
  parts = []
  for shard in (0, 1):
    ds = ip.make_dataset(exs, CharTokenizer(), cfg, shard_index=shard, shard_count=2)
    parts.append(sorted(p for b in _read_all(ds) for p, _, _, _ in _segments(b)))
  assert not set(parts[0]) & set(parts[1])
  assert sorted(parts[0] + parts[1]) == sorted(e.prompt for e in exs)
  # Shard k holds the examples k, k + 2, ... of the list (the prompt starts with the index).
  assert sorted(int(p.split(':')[0]) for p in parts[1]) == list(range(1, 41, 2))
  with pytest.raises(ValueError, match='shard_index'):
    ip.make_dataset(exs, CharTokenizer(), cfg, shard_index=2, shard_count=2)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_same_seed_same_batches_and_epochs_reshuffle():
  exs = _examples(30)
  cfg = ip.PipelineConfig(seq_len=40, batch_size=3, seed=7)  # repeats forever
  mk = lambda c: ip.make_dataset(exs, CharTokenizer(), c, shard_index=0, shard_count=1)
  a, b = _take(iter(mk(cfg)), 12), _take(iter(mk(cfg)), 12)
  _assert_same(a, b)
  other = _take(iter(mk(ip.PipelineConfig(seq_len=40, batch_size=3, seed=8))), 12)
  assert any(not np.array_equal(x['tokens'], y['tokens']) for x, y in zip(a, other))
  # Repeating forever: every example comes back epoch after epoch (packing may pull a few
  # examples of the next epoch into the current one, so counts differ by at most a little).
  prompts = [p for x in a for p, _, _, _ in _segments(x)]
  counts = [prompts.count(e.prompt) for e in exs]
  assert len(prompts) >= 2 * len(exs) and min(counts) >= 1 and max(counts) - min(counts) <= 2
  # Each epoch is a fresh permutation: the first epoch's order is not repeated.
  assert prompts[:len(exs)] != prompts[len(exs):2 * len(exs)]


def test_restored_iterator_continues_exactly(tmp_path):
  exs = _examples(30)
  cfg = ip.PipelineConfig(seq_len=40, batch_size=2, seed=3, num_packing_bins=3)
  ds = ip.make_dataset(exs, CharTokenizer(), cfg, shard_index=1, shard_count=2)
  reader = ip.GrainBatches(ds, cfg)
  for step in range(5):
    reader.batch(step)
  path = str(tmp_path / 'iter.json')
  ip.save_state(reader.iterator, path)
  state = reader.get_state()
  want = [reader.batch(s) for s in range(5, 14)]
  # A fresh iterator from a rebuilt dataset, restored from the file.
  ds2 = ip.make_dataset(exs, CharTokenizer(), cfg, shard_index=1, shard_count=2)
  it = ip.restore_state(iter(ds2), path)
  _assert_same(_take(it, 9), want)
  # The same through the step-indexed reader.
  again = ip.GrainBatches(ds2, cfg)
  again.set_state(state)
  _assert_same([again.batch(s) for s in range(5, 14)], want)
  # Without saved state: jumping to a step reads the same batch as reading up to it.
  fresh = ip.GrainBatches(ip.make_dataset(exs, CharTokenizer(), cfg, shard_index=1,
                                          shard_count=2), cfg)
  _assert_same([fresh.batch(7)], want[2:3])
  assert fresh.skipped_batches == 7
  _assert_same([fresh.batch(5), fresh.batch(6)], want[:2])  # back: restarts the iterator
  # Inside an orbax checkpoint, through grain's checkpoint handler.
  ckpt = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
  ds3 = ip.make_dataset(exs, CharTokenizer(), cfg, shard_index=1, shard_count=2)
  it3 = iter(ds3)
  _take(it3, 5)
  ckpt.save(str(tmp_path / 'orbax'), args=grain.checkpoint.CheckpointSave(it3))
  it4 = iter(ip.make_dataset(exs, CharTokenizer(), cfg, shard_index=1, shard_count=2))
  ckpt.restore(str(tmp_path / 'orbax'), args=grain.checkpoint.CheckpointRestore(it4))
  _assert_same(_take(it4, 9), want)


def _tiny_model():
  """The tiny decoder with random weights of a visible scale (a 0.02 init makes logits nearly
  constant, which could hide a leak between segments); eval_shape, so no init is compiled."""
  model = nnx.eval_shape(lambda: Decoder(get_config('tiny'), rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(0)
  for path, var in nnx.to_flat_state(nnx.state(model)):
    shape = var.get_value().shape
    if 'norm' in str(path[-1]):
      value = 1.0 + 0.1 * rng.standard_normal(shape)
    else:
      value = rng.standard_normal(shape) * (0.5 / np.sqrt(shape[-2] if len(shape) > 1 else 1))
    var.set_value(jnp.asarray(value, jnp.float32))
  return model


def test_attention_never_crosses_packed_examples():
  model = _tiny_model()
  forward = nnx.jit(lambda m, t, p, s: m(t, p, s))
  exs = _examples(12, seed=4)
  cfg = ip.PipelineConfig(seq_len=64, batch_size=2, seed=0, num_epochs=1,
                          drop_remainder=True, num_packing_bins=2)
  batches = _read_all(ip.make_dataset(exs, CharTokenizer(), cfg, shard_index=0, shard_count=1))
  packed, alone = [], []
  for b in batches:
    logits = np.asarray(forward(model, *(jnp.asarray(b[k]) for k in
                                         ('tokens', 'positions', 'segment_ids'))))
    for _, _, idx, r in _segments(b):
      packed.append((logits[r, idx], b['segment_ids'][r].max() > 1))
      # The example alone, from position 0, padded to the same length (one jit shape).
      row = np.zeros(cfg.seq_len, np.int32)
      row[:idx.size] = b['tokens'][r, idx]
      alone.append((row, idx.size))
  assert any(several for _, several in packed), 'no row held two examples'
  # The reference runs every example alone, two per call: the same (2, L) shape as the
  # packed batches, so the model compiles once.
  rows = [row for row, _ in alone] + [np.zeros(cfg.seq_len, np.int32)] * (len(alone) % 2)
  positions = np.broadcast_to(np.arange(cfg.seq_len, dtype=np.int32), (2, cfg.seq_len))
  ref = np.concatenate([np.asarray(forward(model, jnp.asarray(np.stack(rows[i:i + 2])),
                                           jnp.asarray(positions),
                                           jnp.ones((2, cfg.seq_len), jnp.int32)))
                        for i in range(0, len(rows), 2)])
  for n, ((got, _), (_, size)) in enumerate(zip(packed, alone)):
    np.testing.assert_allclose(got, ref[n, :size], rtol=2e-4, atol=2e-4)


def test_bad_inputs():
  cfg = ip.PipelineConfig(seq_len=16, batch_size=2)
  with pytest.raises(ValueError, match='no examples'):
    ip.make_dataset([], CharTokenizer(), cfg, shard_index=0, shard_count=1)
  # Without shard arguments the shard is this jax process's (one process here).
  assert ip.host_shard() == (0, 1)
  _assert_same(_take(iter(ip.make_dataset(_examples(9), CharTokenizer(), cfg)), 2),
               _take(iter(ip.make_dataset(_examples(9), CharTokenizer(), cfg, shard_index=0,
                                          shard_count=1)), 2))
  with pytest.raises(ValueError, match='both shard_index'):
    ip.make_dataset(_examples(3), CharTokenizer(), cfg, shard_index=0)
  with pytest.raises(ValueError, match='batch_size'):
    ip.PipelineConfig(seq_len=16, batch_size=0)
  ds = ip.make_dataset([Example('search', 'p', 'A' * 20, 'ids')], CharTokenizer(), cfg,
                       shard_index=0, shard_count=1)
  with pytest.raises(ValueError, match='cannot fit'):
    next(iter(ds))
