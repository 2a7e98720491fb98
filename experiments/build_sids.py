r"""Builds the SID map of a dataset and reports its quality.

  python -m experiments.build_dataset --dataset=movielens100k --workdir=W   # first
  python -m experiments.build_sids --dataset=movielens100k --workdir=W
  python -m experiments.build_sids --dataset=synthetic --workdir=W --encoder=tfidf
  python -m experiments.build_sids --data_dir=D --workdir=W --encoder=npy:emb.npy
  python -m experiments.build_sids --dataset=synthetic --workdir=W --config.sid.method=random

Writes W/sids/sid_map/ (map + manifest), W/sids/report.json, W/sids/quality.png,
W/sids/embeddings.npy (unless --nosave_embeddings or the embeddings came from a .npy) and
W/result.json (collision_rate, unreachable_items, utilisation_l{l}, coherence_p{p},
recon_mse_p{p}, seconds), and prints the result.json object as the last line.
"""

import json
import os
import time

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

from experiments import report as report_lib
from neo_jax.catalog import io as catalog_io
from neo_jax.catalog import splits
from neo_jax.catalog import synthetic
from neo_jax.sid import job

_DATASET = flags.DEFINE_enum('dataset', None, ['movielens100k', 'synthetic', 'generic'],
                             'movielens100k: W/tfds/movielens100k as built by '
                             'experiments.build_dataset; synthetic: generated in memory; '
                             'generic: --data_dir. Default generic when --data_dir is given.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'A dataset directory in the generic format.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory.', required=True)
_ENCODER = flags.DEFINE_string('encoder', 'minilm', "'minilm', 'tfidf', 'cf' (collaborative, "
                               "fitted on the leave-one-out training split), 'npy:<path>' (an "
                               "(N, D) .npy aligned with the catalog rows), or parts joined by "
                               "'+', e.g. 'minilm+cf'.")
_SAVE_EMB = flags.DEFINE_bool('save_embeddings', True, 'Also write W/sids/embeddings.npy (reuse '
                               'it with --encoder=npy:W/sids/embeddings.npy, e.g. for ablations).')
_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(__file__), 'configs', 'build_sids.py'),
    'SID config file.', lock_config=True)


def _load(cfg, workdir):
  dataset = _DATASET.value or ('generic' if _DATA_DIR.value else None)
  if dataset is None:
    raise app.UsageError('give --dataset=movielens100k|synthetic or --data_dir=D')
  if _DATA_DIR.value and dataset != 'generic':
    raise app.UsageError('--data_dir goes with --dataset=generic (or no --dataset)')
  if dataset == 'generic':
    if not _DATA_DIR.value:
      raise app.UsageError('--dataset=generic needs --data_dir')
    return catalog_io.load_dataset(_DATA_DIR.value)
  if dataset == 'synthetic':
    return synthetic.generate_synthetic(synthetic.SyntheticConfig(**cfg.synthetic.to_dict()))
  from neo_jax.catalog import tfds_builders  # pylint: disable=g-import-not-at-top
  built = os.path.join(workdir, 'tfds', dataset)
  if not os.path.isdir(built):
    raise app.UsageError(f'{built} does not exist: run `python -m experiments.build_dataset '
                         f'--dataset={dataset} --workdir={workdir}` first')
  return tfds_builders.load_built(built)


def _popularity(ds, how, train_seqs):
  """`train_seqs`: the leave-one-out training sequences (catalog rows)."""
  if how == 'none':
    return None
  if how == 'all':
    return ds.item_counts().astype(np.float64)
  if how == 'train':
    rows = np.concatenate(train_seqs) if train_seqs else np.zeros(0, np.int64)
    return np.bincount(rows, minlength=len(ds.catalog)).astype(np.float64)
  raise ValueError(f"sid.popularity must be 'train', 'all' or 'none', got {how!r}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cfg, workdir = _CONFIG.value, _WORKDIR.value
  t_start = time.perf_counter()
  ds = _load(cfg, workdir)
  # What 'cf' and train popularity see: the leave-one-out training sequences (catalog rows).
  train_seqs = list(splits.make_split(ds.interactions, 'leave_one_out')[0].train.values())
  t0 = time.perf_counter()
  emb, encoder_name = job.embed(ds.catalog, _ENCODER.value, tfidf_dim=cfg.encoder.tfidf_dim,
                                seed=cfg.seed, batch_size=cfg.encoder.batch_size,
                                sequences=train_seqs, cf_dim=cfg.encoder.cf_dim,
                                cf_window=cfg.encoder.cf_window)
  embed_s = time.perf_counter() - t0
  if _SAVE_EMB.value and not _ENCODER.value.startswith('npy:'):
    os.makedirs(os.path.join(workdir, 'sids'), exist_ok=True)
    tmp = os.path.join(workdir, 'sids', 'embeddings.tmp.npy')
    np.save(tmp, emb)
    os.replace(tmp, os.path.join(workdir, 'sids', 'embeddings.npy'))
  sid_cfg = cfg.sid.to_dict()
  sid_map, rep = job.build_and_save(
      ds.catalog, emb, os.path.join(workdir, 'sids'), sid_cfg,
      popularity=_popularity(ds, sid_cfg['popularity'], train_seqs), encoder_name=encoder_name,
      seed=cfg.seed)
  result = {
      'dataset': ds.name, 'encoder': encoder_name, 'method': sid_map.meta['method'],
      'num_items': len(ds.catalog), 'num_levels': sid_map.num_levels,
      'level_sizes': json.dumps(sid_map.level_sizes, sort_keys=True),
      'seconds': time.perf_counter() - t_start, 'seconds_embed': embed_s,
      'seconds_build': rep['seconds_build'], 'seconds_quality': rep['seconds_quality'],
  }
  keep = ('collision_rate', 'unreachable_items', 'utilisation_l', 'coherence_p', 'recon_mse_p', 'mse_input', 'mse_l', 'colliding_groups',
          'max_group')
  result.update({k: v for k, v in rep.items() if k.split('/')[-1].startswith(keep)})
  report_lib.write_result(workdir, result)
  print(json.dumps(result, sort_keys=True))


if __name__ == '__main__':
  app.run(main)
