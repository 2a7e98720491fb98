"""experiments.build_sids end to end on a tiny synthetic catalog, checked from its artifacts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from neo_jax.sid import builder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(workdir, *args):
  cmd = [sys.executable, '-m', 'experiments.build_sids', f'--workdir={workdir}',
         '--config.data.synthetic.items_per_type=40', '--config.data.synthetic.num_users=30',
         '--config.data.synthetic.num_queries=5', '--config.sid.k=6', '--config.sid.levels=2',
         *args]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert out.returncode == 0, out.stderr[-3000:]
  last = json.loads(out.stdout.strip().splitlines()[-1])
  with open(os.path.join(workdir, 'result.json')) as f:
    assert json.load(f) == last
  return last


def test_build_sids_synthetic_and_npy(tmp_path):
  w = tmp_path / 'w'
  res = run(w, '--dataset=synthetic', '--config.sid.encoder=tfidf')
  sid_map = builder.load_sid_map(w / 'sids' / 'sid_map')
  assert res['unreachable_items'] == 0 and sid_map.reachable().all()
  assert res['num_items'] == len(sid_map) == 40 * len(sid_map.type_names)
  # Collision rate, brute force over the saved map's k-means codes (levels 0..1).
  colliding = 0
  for n in range(len(sid_map)):
    same = ((sid_map.type_index == sid_map.type_index[n])
            & np.all(sid_map.codes[:, :2] == sid_map.codes[n, :2], axis=1))
    colliding += int(same.sum() > 1)
  assert res['collision_rate'] == colliding / len(sid_map)
  for key in ('utilisation_l0', 'utilisation_l1', 'utilisation_l2', 'coherence_p1',
              'recon_mse_p2', 'seconds'):
    assert key in res, key
  assert res['coherence_p2'] > res['coherence_p0']
  png = (w / 'sids' / 'quality.png').read_bytes()
  assert png[:4] == b'\x89PNG'
  # The user's own embeddings, and the atomic ablation.
  emb = np.random.default_rng(0).normal(size=(len(sid_map), 8)).astype(np.float32)
  np.save(tmp_path / 'emb.npy', emb)
  res2 = run(tmp_path / 'w2', '--dataset=synthetic', f'--config.sid.encoder=npy:{tmp_path}/emb.npy',
             '--config.sid.method=atomic')
  assert res2['num_levels'] == 1 and res2['collision_rate'] == 0
  assert res2['encoder'].startswith('npy(')
