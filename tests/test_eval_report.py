"""report.md and its plots from a hand-made result and training logs; relative differences
checked against values worked out by hand."""

from __future__ import annotations

import json
import os

from neo_jax.eval import report

RESULT = {
    'dataset': 'movielens100k',
    'requests/recommend': 300, 'requests/search': 200,
    'neo_multi/hr@10': 0.12, 'neo_multi/ndcg@10': 0.05, 'neo_multi/hr@30': 0.2,
    'neo_multi/search_hr@10': 0.30, 'neo_multi/search_ndcg@10': 0.2,
    'neo_mono/hr@10': 0.09, 'neo_mono/ndcg@10': 0.04,
    'popularity/hr@10': 0.05, 'popularity/ndcg@10': 0.02, 'popularity/status': 'ok',
    'popularity/search_hr@10': 0.01, 'popularity/search_ndcg@10': 0.005,
    'sasrec/hr@10': 0.10, 'sasrec/ndcg@10': 0.055, 'sasrec/status': 'ok',
    'bm25/search_hr@10': 0.40, 'bm25/search_ndcg@10': 0.25, 'bm25/status': 'ok',
    'dense/status': 'missing: ModuleNotFoundError: no dense here',
    'dense/search_hr@10': None, 'dense/search_ndcg@10': None,
    'ablation_no_grounding/hr@10': 0.06, 'ablation_no_grounding/ndcg@10': 0.025,
    'ablation_no_grounding/status': 'ok',
    'type_steerability': None,
    'type_steerability/status': 'not measurable: the catalog has one entity type (movie)',
    'format_steerability': 0.5, 'valid_sid_fraction': 1.0, 'sid_checked': 9000,
    'seconds/total': 1234.5,
}


def _write_logs(workdir):
  for run, losses in (('neo_multi', (5.0, 4.0, 3.0)), ('neo_mono_recommend', (5.5, 4.5))):
    logs = os.path.join(workdir, run, 'logs')
    os.makedirs(logs)
    with open(os.path.join(logs, 'capability.jsonl'), 'w') as f:
      for i, loss in enumerate(losses):
        f.write(json.dumps({'step': 50 * (i + 1), 'loss': loss}) + '\n')


def test_relative_difference_and_best_baseline():
  assert report.rel(0.12, 0.10) == '+20.0%'
  assert report.rel(0.06, 0.12) == '-50.0%'
  assert report.rel(0.1, 0) == '' and report.rel(None, 0.1) == ''
  assert report.best_baseline(RESULT, ['popularity', 'sasrec', 'dense'], 'hr@10') == 'sasrec'
  assert report.best_baseline(RESULT, ['popularity', 'bm25', 'dense'], 'search_hr@10') == 'bm25'
  neo, base, abl = report.systems(RESULT)
  assert neo == ['neo_multi', 'neo_mono']
  assert base == ['popularity', 'bm25', 'dense', 'sasrec']
  assert abl == ['ablation_no_grounding']


def test_write_report(tmp_path):
  workdir = str(tmp_path)
  _write_logs(workdir)
  path = report.write_report(workdir, RESULT)
  text = open(path).read()
  lines = text.splitlines()
  row = next(l for l in lines if l.startswith('| neo_multi |') and '0.1200' in l)
  # HR@10 0.12 vs SASRec 0.10: +20.0%; NDCG@10 0.05 vs SASRec 0.055: -9.1%.
  assert '+20.0% (sasrec)' in row and '-9.1% (sasrec)' in row
  search_row = next(l for l in lines if l.startswith('| neo_multi |') and '0.3000' in l)
  # Search HR@10 0.30 vs BM25 0.40: -25.0%; NDCG@10 0.2 vs 0.25: -20.0%.
  assert '-25.0% (bm25)' in search_row and '-20.0% (bm25)' in search_row
  dense_row = next(l for l in lines if l.startswith('| dense |'))
  assert 'missing' in dense_row and '0.0000' not in dense_row
  assert '- dense: missing: ModuleNotFoundError' in text
  abl_row = next(l for l in lines if l.startswith('| no_grounding |'))
  # 0.06 vs 0.12 and 0.025 vs 0.05: both -50.0%.
  assert abl_row.count('-50.0%') == 2
  assert 'not measurable: the catalog has one entity type' in text
  # Targets: NDCG@10 0.05 < SASRec 0.055 (-9.1%, not met); HR@10 0.12 >= 0.10 (met); dense
  # missing: not measured; valid SIDs 1.0: met.
  assert '| neo_multi/ndcg@10 >= sasrec/ndcg@10 | 0.0500 | 0.0550 | -9.1% | no |' in text
  assert '| neo_multi/hr@10 >= sasrec/hr@10 | 0.1200 | 0.1000 | +20.0% | yes |' in text
  assert '| neo_multi/search_hr@10 >= dense/search_hr@10 | 0.3000 | missing |  | not measured |' in text
  assert '| valid_sid_fraction = 1 | 1.0000 | 1.0000 | | yes |' in text
  assert 'Validation protocol' in text and 'test split is read once' in text
  for png in ('training_curves.png', 'metrics.png'):
    with open(os.path.join(workdir, png), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    assert f'({png})' in text


def test_report_without_logs(tmp_path):
  text = open(report.write_report(str(tmp_path), RESULT)).read()
  assert 'No training logs found' in text
  assert not (tmp_path / 'training_curves.png').exists()
