r"""Builds the SID map of a dataset and reports its quality.

  python -m experiments.build_sids --workdir=W                      # MovieLens-100k
  python -m experiments.build_sids --dataset=synthetic --workdir=W --config.sid.encoder=tfidf
  python -m experiments.build_sids --data_dir=D --workdir=W --config.sid.encoder=npy:emb.npy
  python -m experiments.build_sids --dataset=synthetic --workdir=W --config.sid.method=random

Config: experiments/configs/build_sids.py (MiniLM, 3 levels x 64 codes); every key of the run
schema applies (`--print_config`). The dataset is built or generated into W first when it is
not there (as every command does). Writes W/sids/sid_map/ (map + manifest, and the frozen
quantiser that gives new items SIDs: neo_jax/sid/quantiser.py), W/sids/report.json,
W/sids/quality.png, W/sids/embeddings.npy (unless --nosave_embeddings or the embeddings came
from a .npy) and W/result.json (collision_rate, unreachable_items, utilisation_l{l},
coherence_p{p}, recon_mse_p{p}, seconds), and prints the result.json object as the last line.
"""

import io
import json
import os
import time

from absl import flags
import numpy as np

from experiments import common
from neo_jax.catalog import atomic
from neo_jax.catalog.splits import make_split
from neo_jax.run import experiment
from neo_jax.run import rundir
from neo_jax.run import stages

RUN = common.RunFlags('build_sids.py')
flags.adopt_module_key_flags(common)
_SAVE_EMB = flags.DEFINE_bool('save_embeddings', True, 'Also write W/sids/embeddings.npy (reuse '
                              'it with --config.sid.encoder=npy:W/sids/embeddings.npy).')
_KEEP = ('collision_rate', 'unreachable_items', 'utilisation_l', 'coherence_p', 'recon_mse_p',
         'mse_input', 'mse_l', 'colliding_groups', 'max_group', 'reproduced_items')


def main(argv):
  RUN.start(argv)
  cfg = RUN.resolved_config()
  workdir = RUN.workdir_value()
  t_start = time.perf_counter()
  ds = experiment.claim_workdir(cfg, workdir, print, RUN.overwrite.value)
  if ds is None:  # a built-in dataset: built into the workdir now that it is claimed
    ds = stages.load_data(cfg, workdir, print)
  # What 'cf' and train popularity see: the training split only.
  split, _ = make_split(ds.interactions, cfg.data.split)
  t0 = time.perf_counter()
  emb, encoder_name = stages.embed_items(cfg, ds, split, progress=True)
  embed_s = time.perf_counter() - t0
  if _SAVE_EMB.value and not cfg.sid.encoder.startswith('npy:'):
    buf = io.BytesIO()  # written whole (atomic: local or a URI)
    np.save(buf, emb)
    atomic.write_bytes(os.path.join(workdir, 'sids', 'embeddings.npy'), buf.getvalue())
  sid_map, rep = stages.build_sids(cfg, ds, split, workdir, print, emb=(emb, encoder_name))
  result = {
      'dataset': ds.name, 'encoder': encoder_name, 'method': sid_map.meta['method'],
      'num_items': len(ds.catalog), 'num_levels': sid_map.num_levels,
      'level_sizes': json.dumps(sid_map.level_sizes, sort_keys=True),
      'seconds': time.perf_counter() - t_start, 'seconds_embed': embed_s,
      'seconds_build': rep['seconds_build'], 'seconds_quality': rep['seconds_quality'],
  }
  result.update({k: v for k, v in rep.items() if k.split('/')[-1].startswith(_KEEP)})
  rundir.write_result(workdir, result)
  print(atomic.dumps(result, sort_keys=True))


if __name__ == '__main__':
  common.run(main)
