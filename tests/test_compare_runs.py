"""experiments.compare_runs (neo_jax/run/paired.py): two runs' per-request validation
figures (valid_per_request.npz, written by experiments.evaluate) paired on the same requests,
the interval that of `neo_jax.eval.stats.paired_bootstrap`; requests that differ are an error,
never a silent misalignment."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from neo_jax.eval import stats
from neo_jax.eval.protocol import Requests
from neo_jax.run import config as config_lib
from neo_jax.run import paired
from neo_jax.run.experiment import VALID_PER_REQUEST, request_keys
from neo_jax.tasks.types import Example
from test_evaluate import TINY as EVALUATE_TINY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# test_evaluate's tiny synthetic run, validation only: NEO-multi and NEO-mono recommend scored
# on 12 validation requests, no baselines, the test split never opened; steps, not passes.
TINY = {k: v for k, v in EVALUATE_TINY.items() if not k.startswith('experiment.')}
TINY.update({'grounding.passes': 0, 'capability.passes': 0, 'experiment.baselines': '',
             'experiment.mono_tasks': 'recommend', 'experiment.steer_requests': 0,
             'experiment.understanding_requests': 0, 'experiment.open_test': 'false',
             'experiment.neo_valid_requests': 12})


def _per(rng, n_rec=30, n_search=10, shift=0.0, system='neo_multi'):
  keys = {'requests/recommend': np.array([f'u{i}|{i}' for i in range(n_rec)]),
          'requests/search': np.array([f'q{i}|{i}' for i in range(n_search)])}
  keys[f'{system}/hr@10'] = (rng.random(n_rec) < 0.3 + shift).astype(np.float64)
  keys[f'{system}/search_hr@10'] = (rng.random(n_search) < 0.5).astype(np.float64)
  return keys


def test_compare_is_the_paired_bootstrap_of_the_aligned_arrays():
  rng = np.random.default_rng(0)
  a, b = _per(rng, shift=0.2), _per(rng)
  got = paired.compare(a, b, 'neo_multi', 'neo_multi', resamples=500, seed=3)
  want = stats.paired_bootstrap(a['neo_multi/hr@10'], b['neo_multi/hr@10'], resamples=500,
                                seed=3)
  assert got['hr@10']['diff'] == want['diff']
  assert (got['hr@10']['ci_low'], got['hr@10']['ci_high']) == (want['ci_low'], want['ci_high'])
  assert got['hr@10']['a'] == pytest.approx(a['neo_multi/hr@10'].mean())
  assert got['hr@10']['n'] == 30 and got['search_hr@10']['n'] == 10


def test_different_requests_are_an_error_naming_the_first_difference():
  rng = np.random.default_rng(0)
  a, b = _per(rng), _per(rng)
  b['requests/recommend'] = b['requests/recommend'].copy()
  b['requests/recommend'][7] = 'u99|99'
  with pytest.raises(config_lib.UserError, match=r"recommend requests \(request 7: 'u7\|7'"):
    paired.compare(a, b, 'neo_multi', 'neo_multi')
  with pytest.raises(config_lib.UserError, match='30 against 20 requests'):
    paired.compare(a, _per(rng, n_rec=20), 'neo_multi', 'neo_multi')
  with pytest.raises(config_lib.UserError, match=r"run b has no figures of 'neo_mono'"):
    paired.compare(a, b, 'neo_multi', 'neo_mono')


def test_request_keys_name_the_user_or_query_and_the_relevant_items():
  ex = Example('recommend', 'p', 'c', 'ids', 'movie', (3,), 'user7')
  rec = Requests('recommend', [ex, ex], [[3], [4, 5]], [None, None])
  assert list(request_keys(rec)) == ['user7|3', 'user7|4,5']
  sx = Example('search', 'find x', 'c', 'ids', None, (2,))
  search = Requests('search', [sx], [[2]], [None], queries=['x y'])
  assert list(request_keys(search)) == ['x y|2']


def _evaluate(workdir, **extra):
  cmd = [sys.executable, '-m', 'experiments.evaluate',
         '--config=experiments/configs/synthetic.py', f'--workdir={workdir}']
  cmd += [f'--config.{k}={v}' for k, v in {**TINY, **extra}.items()]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(workdir / 'result.json') as f:
    return json.load(f)


def _compare(*args):
  return subprocess.run([sys.executable, '-m', 'experiments.compare_runs', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_two_validation_runs_compared_end_to_end(tmp_path):
  wa, wb = tmp_path / 'a', tmp_path / 'b'
  ra = _evaluate(wa, **{'capability.steps': 6})
  rb = _evaluate(wb, **{'capability.steps': 2, 'experiment.mono_tasks': ''})  # NEO-multi only
  assert not any(k.startswith('neo_multi/hr@') for k in ra)  # the test split stayed closed
  assert (ra['neo_multi/train/capability_steps'], rb['neo_multi/train/capability_steps']) == (
      6, 2)
  proc = _compare(f'--a={wa}', f'--b={wb}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  hr = out['figures']['hr@10']
  assert hr['n'] == 12
  assert hr['a'] == pytest.approx(ra['valid/neo_multi/hr@10'])
  assert hr['b'] == pytest.approx(rb['valid/neo_multi/hr@10'])
  assert hr['diff'] == pytest.approx(hr['a'] - hr['b'])
  assert hr['ci_low'] <= hr['diff'] <= hr['ci_high']
  assert 'search_ndcg@10' in out['figures']
  # NEO-multi against NEO-mono of the same run: recommendation only (mono has no search).
  proc = _compare(f'--a={wa}', f'--b={wa}', '--b_system=neo_mono')
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert set(out['figures']) and not any(m.startswith('search_') for m in out['figures'])
  assert out['figures']['ndcg@10']['b'] == pytest.approx(
      ra['valid/neo_mono/ndcg@10'])
  # A run without the file: one line naming it.
  (wb / VALID_PER_REQUEST).unlink()
  proc = _compare(f'--a={wa}', f'--b={wb}')
  assert proc.returncode == 1
  assert proc.stderr.strip().startswith('error: ') and VALID_PER_REQUEST in proc.stderr
