"""Files that every process of a multi-process job would write are written by process 0 only
(`catalog.multihost.is_writer`): the split guard's `split_access.json` and the dense
baseline's embedding cache under <workdir>/baselines. Each is checked twice: in one process
(the writer) the files are written as before, and with `is_writer` patched to False (any
other process) nothing is written while the same is computed in memory."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from neo_jax.baselines import dense
from neo_jax.baselines import registry
from neo_jax.catalog import multihost
from neo_jax.catalog.splits import Split, Target
from neo_jax.eval import protocol
from neo_jax.tasks.types import Example
from test_baselines_dense import TITLES, CountingEncoder, _dataset


def _not_writer(monkeypatch):
  monkeypatch.setattr(multihost, 'is_writer', lambda: False)


def _guard(path):
  ex = lambda task, name: Example(task, f'{name} prompt', 'x', 'ids', 'movie', (1,))
  split = Split(train={'u': np.array([0, 1], np.int32)},
                valid=[Target('u', np.array([0, 1]), 2)],
                test=[Target('u', np.array([0, 1, 2]), 3)])
  return protocol.SplitGuard(
      {'capability': [ex('recommend', 'c')], 'rec_valid': [ex('recommend', 'v')]}, split,
      str(path), test_examples=lambda: {'rec_test': [ex('recommend', 't')]})


def _read_all(guard):
  """The same reads as an experiment: training, validation, then the test split."""
  guard.examples('capability', 'train/capability')
  guard.targets('valid', 'tune')
  with pytest.raises(protocol.TestSplitAccessError):
    guard.examples('rec_test', 'tune')
  guard.open_test()
  guard.examples('rec_test', 'final/requests')


def test_the_split_log_is_written_by_the_only_process(tmp_path):
  assert multihost.is_writer()  # no jax.distributed here: the only process writes
  guard = _guard(tmp_path / 'split_access.json')
  _read_all(guard)
  with open(tmp_path / 'split_access.json') as f:
    log = json.load(f)
  assert log['reads'] == guard.reads and len(guard.reads) == 4
  assert log['test_opened_at'] == 2
  assert [r['split'] for r in log['reads']] == ['train', 'valid', 'test', 'test']


def test_another_process_logs_the_same_reads_but_writes_no_split_log(tmp_path, monkeypatch):
  writer = _guard(tmp_path / 'w' / 'split_access.json')
  _read_all(writer)
  _not_writer(monkeypatch)
  other = _guard(tmp_path / 'o' / 'split_access.json')
  _read_all(other)  # it still refuses the early test read
  assert other.reads == writer.reads
  assert not (tmp_path / 'o').exists()


def _fit_dense(cache_root, encoder):
  """The dense baseline fitted the way the experiment fits it (cache under cache_root)."""
  ds, split = _dataset()
  fitted, facts = registry.fit_baselines(['dense'], {'dense': {'encoder': encoder}}, ds,
                                         dataclasses.replace(split, test=[]), None,
                                         lambda line: None, cache_root=str(cache_root))
  return fitted['dense'], facts


def _encoder():
  ds, _ = _dataset()
  return CountingEncoder([ds.catalog.text(i) for i in range(len(TITLES))])


def test_the_only_process_writes_the_dense_cache_after_the_check(tmp_path, monkeypatch):
  seen = []
  cache = tmp_path / 'baselines' / 'dense'
  real_barrier = multihost.barrier
  monkeypatch.setattr(multihost, 'barrier', lambda name: (
      seen.append((name, sorted(os.listdir(cache)) if cache.exists() else [])),
      real_barrier(name)))
  first, facts = _fit_dense(tmp_path / 'baselines', _encoder())
  assert facts['dense/fit/cached'] == 0.0
  # Every process checks the cache, meets the others, and only then may process 0 write.
  assert seen == [(f'dense cache:{cache}', [])]
  assert sorted(os.listdir(cache)) == ['text_embeddings.json', 'text_embeddings.npy']
  # The cache holds the encoder's output; the model its unit vectors.
  np.testing.assert_array_equal(first._unit(np.load(cache / 'text_embeddings.npy'), 'item'),
                                first.item_emb)
  with open(cache / 'text_embeddings.json') as f:
    assert json.load(f)['num_items'] == len(TITLES)
  # The next fit reads it: nothing encoded, the same vectors.
  enc = _encoder()
  again, facts = _fit_dense(tmp_path / 'baselines', enc)
  assert facts['dense/fit/cached'] == 1.0 and enc.encoded == 0
  np.testing.assert_array_equal(again.item_emb, first.item_emb)
  assert len(seen) == 2


def test_another_process_encodes_the_same_but_writes_no_dense_cache(tmp_path, monkeypatch):
  writer, _ = _fit_dense(tmp_path / 'w', _encoder())
  _not_writer(monkeypatch)
  enc = _encoder()
  other, facts = _fit_dense(tmp_path / 'o', enc)
  assert facts['dense/fit/cached'] == 0.0 and enc.encoded == len(TITLES)
  np.testing.assert_array_equal(other.item_emb, writer.item_emb)
  assert not (tmp_path / 'o').exists()
  # It still reads a cache that process 0 wrote.
  enc = _encoder()
  again, facts = _fit_dense(tmp_path / 'w', enc)
  assert facts['dense/fit/cached'] == 1.0 and enc.encoded == 0
  np.testing.assert_array_equal(again.item_emb, writer.item_emb)


def test_a_new_dense_cache_drops_the_old_key_before_its_vectors(tmp_path, monkeypatch):
  """A reader never pairs the old key with the new vectors: the old key is gone before the
  new vectors are written."""
  model = dense.Dense(encoder=_encoder(), cache_dir=str(tmp_path))
  ds, _ = _dataset()
  model.item_embeddings(ds.catalog)
  meta = tmp_path / 'text_embeddings.json'
  with open(meta) as f:
    old_key = json.load(f)
  real_write = dense.atomic.write_bytes
  at_write = []
  monkeypatch.setattr(dense.atomic, 'write_bytes', lambda path, data: (
      at_write.append((os.path.basename(path), meta.exists())), real_write(path, data))[1])
  changed, _ = _dataset(TITLES[:-1] + ['Something else entirely'])
  _, cached = model.item_embeddings(changed.catalog)
  assert not cached
  assert at_write[0] == ('text_embeddings.npy', False)
  with open(meta) as f:
    new_key = json.load(f)
  assert new_key['texts_sha256'] != old_key['texts_sha256']
