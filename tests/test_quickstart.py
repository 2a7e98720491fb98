"""The main job end to end, at a tiny size, through its absl entry point: every stage runs
on the quickstart's own config (only sizes overridden), the table and the generations are
printed, and the last line is the result.json object."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = {
    'data.synthetic.items_per_type': 40, 'data.synthetic.num_users': 120,
    'data.synthetic.num_queries': 120, 'sid.k': 4, 'sid.iters': 5,
    'model.d_model': 32, 'model.num_layers': 1,
    'model.num_heads': 2, 'model.num_kv_heads': 1, 'model.head_dim': 16, 'model.mlp_dim': 64,
    'train.batch_size': 8, 'grounding.steps': 3, 'capability.steps': 4,
    'eval.max_requests': 12, 'eval.batch_size': 8, 'eval.num_beams': 10,
}


def test_quickstart_runs_end_to_end(tmp_path):
  workdir = tmp_path / 'w'
  cmd = [sys.executable, '-m', 'experiments.quickstart', f'--workdir={workdir}']
  cmd += [f'--config.{k}={v}' for k, v in TINY.items()]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  printed = json.loads(lines[-1])
  with open(workdir / 'result.json') as f:
    saved = json.load(f)
  assert printed == saved
  assert saved['valid_sid_fraction'] == 1.0
  assert saved['sid_checked'] > 0
  for prefix in ('', 'search_'):
    for system in ('neo_multi', 'popularity', 'bm25'):
      for metric in ('hr', 'recall', 'ndcg'):
        for k in (1, 5, 10):
          value = saved[f'{system}/{prefix}{metric}@{k}']
          assert 0.0 <= value <= 1.0
  assert saved['requests/recommend'] == 12
  assert saved['sid/unreachable_items'] == 0
  assert saved['popularity/status'] == saved['bm25/status'] == 'ok'
  # The quickstart config skips the steerability and understanding measures (0 requests).
  assert 'format_steerability' not in saved and 'summaries' not in saved
  assert not saved['baselines_tuned']
  out = proc.stdout
  assert '| neo_multi |' in out and '| bm25 |' in out and '| popularity |' in out
  for fmt in ('ids', 'text', 'mixed'):
    assert f'--- recommend, format {fmt} ---' in out
  assert '--- user_summary, format text ---' in out
  # Every stage left its artifact; the model is a run directory generate can load.
  for path in ('tfds/movielens100k', 'sids/report.json', 'sids/quality.png', 'tokenizer/spm.model',
               'neo_multi/logs/capability.jsonl', 'neo_multi/checkpoints/capability',
               'neo_multi/config.json', 'config.json', 'report.md', 'split_access.json'):
    assert (workdir / path).exists(), path


def test_tiny_config_runs_the_whole_pipeline(tmp_path):
  """experiments/configs/tiny.py (the smoke run): every stage on the synthetic catalog, with
  the steerability and understanding measures of the comparison."""
  workdir = tmp_path / 'w'
  cmd = [sys.executable, '-m', 'experiments.quickstart', '--config=experiments/configs/tiny.py',
         f'--workdir={workdir}']
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  saved = json.loads(proc.stdout.strip().splitlines()[-1])
  assert saved['dataset'] == 'synthetic' and saved['requests/recommend'] == 20
  assert saved['valid_sid_fraction'] == 1.0
  assert 0.0 <= saved['format_steerability'] <= 1.0
  assert 0.0 <= saved['type_steerability'] <= 1.0
  assert (workdir / 'neo_multi' / 'checkpoints' / 'capability' / '8').exists()
