"""The long steps report progress through `neo_jax.catalog.progress`: lines with rate and ETA
to the step's log when progress is on, none when it is off (as in every other test)."""

import jax.numpy as jnp
import numpy as np

from neo_jax.baselines import registry
from neo_jax.baselines import training
from neo_jax.catalog import progress
from neo_jax.sid import kmeans as km
from neo_jax.sid import stream_kmeans as sk


def _toy_training(log, epochs=3):
  arrays = (np.arange(10, dtype=np.float32)[:, None], np.ones((10, 1), bool))
  loss_fn = lambda w, x, m: jnp.sum(jnp.square(w - x) * m) / jnp.maximum(jnp.sum(m), 1)
  return training.train_early_stopping(loss_fn, jnp.float32(0.0), arrays, lr=0.1,
                                       batch_size=4, seed=0, epochs=epochs, patience=1,
                                       label='toy', log=log)


def test_baseline_epochs_report_progress(progress_on):
  lines = []
  _toy_training(lines.append)
  # Each epoch: a line per batch (3 batches), the closing line, then the epoch's record.
  epoch1 = [l for l in lines if l.startswith('toy epoch 1:')]
  assert [l.split(',')[0] for l in epoch1[:3]] == ['toy epoch 1: 1/3 batches',
                                                   'toy epoch 1: 2/3 batches',
                                                   'toy epoch 1: 3/3 batches']
  assert len(epoch1) == 4 and epoch1[3].startswith('toy epoch 1: 3 batches in ')
  assert all(' batches/s' in l for l in epoch1) and 'eta ' in epoch1[0]
  records = [l for l in lines if l.startswith('toy epoch=')]
  assert len(records) == 3 and all(' eta=' in r for r in records)
  assert records[-1].endswith(' eta=0s')


def test_baseline_epochs_quiet_when_progress_is_off(monkeypatch):
  monkeypatch.setattr(progress, 'EVERY_S', 1e-9)
  assert not progress.enabled()  # tests/conftest.py
  lines = []
  _toy_training(lines.append)
  assert [l.split(' ')[1].split('=')[0] for l in lines] == ['epoch'] * 3  # records only


def test_registry_gives_its_log_to_the_baselines():
  log = lambda s: None
  assert registry.make_baseline('sasrec', {}, log=log).log is log
  assert registry.make_baseline('dense', {}, log=log).log is log
  assert not hasattr(registry.make_baseline('popularity', {}, log=log), 'log')


def test_kmeans_reports_passes_and_levels(progress_on, capsys):
  x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
  lines = []
  _, _, info = sk.residual_kmeans_streaming(x, (4, 2), seed=0, iters=3, batch_size=16,
                                            log=lines.append)
  level0 = [l for l in lines if l.startswith('k-means level 0 (K=4):')]
  assert level0 and 'passes/s' in level0[0] and 'eta ' in level0[0]
  assert level0[-1].endswith(f'mse {info["mse_l0"]:.5f}')  # the closing line
  lines.clear()
  km.residual_kmeans(x, (4, 2), seed=0, iters=3, log=lines.append)
  assert [l.split(',')[0] for l in lines[:2]] == ['k-means (N=64): 1/2 levels',
                                                  'k-means (N=64): 2/2 levels']
  assert 'eta ' in lines[0] and lines[0].endswith('after level 0 (K=4)')
  assert len(lines) == 3 and lines[2].startswith('k-means (N=64): 2 levels in ')
  # Off: nothing, not even on stderr.
  progress.set_enabled(False)
  sk.residual_kmeans_streaming(x, (4,), iters=2, batch_size=16)
  km.residual_kmeans(x, (4,), iters=2)
  assert 'k-means' not in capsys.readouterr().err
