"""experiments.evaluate end to end on a tiny synthetic config (its own config file, only sizes
overridden): result.json keys and ranges, the report, and the validation protocol read back
from split_access.json (which stage read which split; no test read before the final
evaluation)."""

import json
import math
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = {
    'data.synthetic.items_per_type': 40, 'data.synthetic.num_users': 100,
    'data.synthetic.num_queries': 100, 'sid.k': 4, 'sid.iters': 5,
    'model.d_model': 32, 'model.num_layers': 1, 'model.num_heads': 2, 'model.num_kv_heads': 1,
    'model.head_dim': 16, 'model.mlp_dim': 64, 'train.batch_size': 8,
    'grounding.steps': 2, 'capability.steps': 3, 'eval.max_requests': 8, 'eval.batch_size': 8,
    'experiment.baselines': 'popularity,bm25', 'experiment.mono_tasks': 'recommend',
'experiment.steer_requests': 2,
    'experiment.understanding_requests': 2, 'experiment.max_new_tokens': 8,
    'experiment.steer_beams': 4, 'experiment.seeds': 2,
}
SYSTEMS = ('neo_multi', 'neo_mono', 'popularity', 'bm25')
SEARCH_SYSTEMS = ('neo_multi', 'popularity', 'bm25')


def test_evaluate_end_to_end(tmp_path):
  workdir = tmp_path / 'w'
  cmd = [sys.executable, '-m', 'experiments.evaluate',
         '--config=experiments/configs/synthetic.py', f'--workdir={workdir}']
  cmd += [f'--config.{k}={v}' for k, v in TINY.items()]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  printed = json.loads(proc.stdout.strip().splitlines()[-1])
  with open(workdir / 'result.json') as f:
    result = json.load(f)
  assert printed == result

  def unit(key):
    v = result[key]
    assert isinstance(v, (int, float)) and 0.0 <= v <= 1.0, (key, v)

  for s in SYSTEMS:
    for m in ('hr@1', 'hr@5', 'hr@10', 'hr@30', 'ndcg@1', 'ndcg@5', 'ndcg@10', 'ndcg@30', 'mrr'):
      unit(f'{s}/{m}')
    # HR@k grows with k; NDCG@k <= HR@k (one relevant item).
    assert result[f'{s}/hr@1'] <= result[f'{s}/hr@10'] <= result[f'{s}/hr@30']
    assert result[f'{s}/ndcg@10'] <= result[f'{s}/hr@10'] + 1e-12
  for s in SEARCH_SYSTEMS:
    unit(f'{s}/search_hr@10')
    unit(f'{s}/search_ndcg@10')
  assert 'neo_mono/search_hr@10' not in result  # only the recommend mono model was asked for
  assert result['valid_sid_fraction'] == 1.0 and result['sid_checked'] > 0
  unit('type_steerability')  # three entity types: measurable
  unit('format_steerability')
  assert result['type_steerability/items'] > 0
  for k in ('summary_precision', 'summary_recall', 'explain/faithful', 'explain/no_item'):
    assert result[k] is None or 0.0 <= result[k] <= 1.0, k
  assert result['neo_multi/summary_precision'] == result['summary_precision']
  assert result['neo_multi/summary_recall'] == result['summary_recall']
  assert result['requests/recommend'] == 8 and result['requests/search'] == 8
  assert result['popularity/status'] == 'ok' and result['bm25/status'] == 'ok'
  assert result['neo_multi/cross_type/requests'] >= 0
  for name in ('neo_multi', 'neo_mono_recommend'):
    assert (workdir / name / 'checkpoints' / 'capability').exists()
  assert not (workdir / 'neo_mono_search').exists()

  # The protocol: every test read comes after open_test, in the final stages only; training
  # and baseline stages read train/valid data only.
  with open(workdir / 'split_access.json') as f:
    access = json.load(f)
  opened = access['test_opened_at']
  assert opened is not None
  for r in access['reads']:
    if r['split'] == 'test':
      assert r['order'] >= opened and r['stage'].startswith('final'), r
    if r['stage'].startswith(('train/', 'baselines/')):
      assert r['split'] in ('train', 'valid') and r['order'] < opened, r
  stages = {r['stage'] for r in access['reads']}
  assert {'train/neo_multi', 'train/neo_mono_recommend', 'baselines/fit'} <= stages

  # Two seeds: the second seed's runs exist and mean / std are reported.
  for name in ('neo_multi_seed1', 'neo_mono_recommend_seed1'):
    assert (workdir / name / 'checkpoints' / 'capability').exists()
  for s in ('neo_multi', 'neo_mono'):
    values = [result[f'{s}/seeds/hr@10/seed{i}'] for i in (0, 1)]
    assert result[f'{s}/seeds/hr@10/mean'] == sum(values) / 2
    assert result[f'{s}/seeds/hr@10/std'] >= 0
  # The synthetic catalog repeats items: the primary protocol excludes nothing and the
  # history-excluded figures stand beside it, for every system.
  assert result['protocol/exclude_history'] is False and result['view/repeated_events'] > 0
  for s in SYSTEMS:
    unit(f'{s}/history_excluded/hr@10')
  # Paired intervals of NEO-multi against every other system.
  for b in ('neo_mono', 'popularity', 'bm25'):
    for m in ('hr@10', 'ndcg@10'):
      lo, hi = (result[f'compare/neo_multi_vs_{b}/{m}/{x}'] for x in ('ci_low', 'ci_high'))
      assert lo <= result[f'compare/neo_multi_vs_{b}/{m}/diff'] <= hi
  assert 'compare/neo_multi_vs_bm25/search_hr@10/ci_low' in result

  report = (workdir / 'report.md').read_text()
  assert report.splitlines()[2] == '## Protocol' and '## Comparisons' in report
  assert '| neo_multi |' in report and '| bm25 |' in report
  assert (workdir / 'training_curves.png').exists() and (workdir / 'metrics.png').exists()
  assert not math.isnan(result['seconds/total'])
