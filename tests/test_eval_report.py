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
  # The report and its plots are written whole: whole PNGs, no temporary file left.
  pngs = sorted(f for f in os.listdir(workdir) if f.endswith('.png'))
  assert pngs and all(open(os.path.join(workdir, f), 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
                      for f in pngs)
  assert not [f for f in os.listdir(workdir) if '.tmp-' in f]
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
  # Targets: no comparison recorded, so no target is met on its point figures alone
  # (HR@10 0.12 >= 0.10 says nothing without an interval); dense missing: not measured; valid
  # SIDs 1.0: met.
  assert '| neo_multi/ndcg@10 >= sasrec/ndcg@10 | 0.0500 | 0.0550 | -9.1% |  | no interval |' in text
  assert '| neo_multi/hr@10 >= sasrec/hr@10 | 0.1200 | 0.1000 | +20.0% |  | no interval |' in text
  assert ('| neo_multi/search_hr@10 >= dense/search_hr@10 | 0.3000 | missing |  |  '
          '| not measured |') in text
  assert '| valid_sid_fraction = 1 | 1.0000 | 1.0000 | | | yes |' in text
  assert 'Met (interval above zero): 0 of 0 targets with an interval' in text
  assert lines[2] == '## Protocol' and 'test split is read once' in text
  assert 'Paired comparisons: not recorded.' in text
  for png in ('training_curves.png', 'metrics.png'):
    with open(os.path.join(workdir, png), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    assert f'({png})' in text


def test_report_without_logs(tmp_path):
  text = open(report.write_report(str(tmp_path), RESULT)).read()
  assert 'No training logs found' in text
  assert not (tmp_path / 'training_curves.png').exists()


FULL = dict(RESULT, **{
    'num_users': 943, 'num_items': 1682, 'baselines_tuned': True, 'experiment/seeds': 3,
    'view/train_events': 98114, 'view/train_queries': 1200, 'view/summary_users_heldout': 94,
    'split/test_target_ties': 37, 'split/skipped/short_users': 0,
    'bootstrap/resamples': 1000, 'bootstrap/seed': 0,
    'neo_multi/nothing_excluded/hr@10': 0.10, 'neo_multi/nothing_excluded/ndcg@10': 0.045,
    'sasrec/nothing_excluded/hr@10': 0.09, 'sasrec/nothing_excluded/ndcg@10': 0.05,
    'neo_multi/seeds/hr@10/mean': 0.115, 'neo_multi/seeds/hr@10/std': 0.005,
    'seconds/train_neo_multi': 600.0, 'seconds/train_neo_mono_recommend': 300.0,
    'seconds/train_neo_multi_seed1': 590.0,
    'valid/neo_multi/ndcg@10': 0.06, 'valid/neo_multi/search_ndcg@10': 0.21,
    'valid/neo_mono/ndcg@10': 0.05,
    'neo_multi/train/capability_steps': 2000,
    'sasrec/fit_seconds': 42.0, 'sasrec/valid_ndcg@10': 0.058, 'sasrec/stopped': 'patience 5',
    'bm25/fit/fit_seconds': 1.5, 'bm25/fit/valid_search_ndcg@10': 0.27,
    # HR@10: NEO-multi above SASRec, interval above zero -> met.
    'compare/neo_multi_vs_sasrec/hr@10/diff': 0.02,
    'compare/neo_multi_vs_sasrec/hr@10/ci_low': 0.004,
    'compare/neo_multi_vs_sasrec/hr@10/ci_high': 0.037,
    'compare/neo_multi_vs_sasrec/hr@10/verdict': 'better',
    # NDCG@10: below, interval crossing zero -> within noise, not met.
    'compare/neo_multi_vs_sasrec/ndcg@10/diff': -0.005,
    'compare/neo_multi_vs_sasrec/ndcg@10/ci_low': -0.012,
    'compare/neo_multi_vs_sasrec/ndcg@10/ci_high': 0.003,
    # Point figure above the reference but the interval crosses zero -> not met.
    'compare/neo_multi_vs_neo_mono/hr@10/diff': 0.03,
    'compare/neo_multi_vs_neo_mono/hr@10/ci_low': -0.001,
    'compare/neo_multi_vs_neo_mono/hr@10/ci_high': 0.06,
    # Recorded the other way round: bm25 - neo_multi, interval above zero -> NEO worse.
    'compare/bm25_vs_neo_multi/search_hr@10/diff': 0.1,
    'compare/bm25_vs_neo_multi/search_hr@10/ci_low': 0.05,
    'compare/bm25_vs_neo_multi/search_hr@10/ci_high': 0.15,
})


def test_report_protocol_comparisons_and_targets(tmp_path):
  text = open(report.write_report(str(tmp_path), FULL)).read()
  lines = text.splitlines()
  assert lines[0] == '# NEO experiment: movielens100k' and lines[2] == '## Protocol'
  protocol = text[:text.index('## Results')]
  for fact in ('98114 events', '1200 queries', 'held out: 94', '943 users, 1682 items',
               'nothing_excluded', "RecBole's sequential models", 'type of the last item',
               'never the target', 'validation split only', 'split_access.json',
               'trained with 3 seeds', '1000 resamples (seed 0)', 'over users (recommendation) '
               'and queries (search)', "37 users' test target shares its timestamp",
               'neither file nor catalog order', '`skipped/short_users` = 0'):
    assert fact in protocol, fact
  assert '| neo_multi | 600.0 | 0.0600 / 0.2100 | fixed steps: capability 2000 |' in protocol
  assert '| neo_mono_recommend | 300.0 | 0.0500 | not recorded |' in protocol
  # A stage its time budget cut names the steps it trained of those planned.
  timed = {**FULL, 'neo_multi/train/capability_planned_steps': 2500,
           'neo_multi/train/grounding_steps': 400,
           'neo_multi/train/grounding_planned_steps': 400}
  text = open(report.write_report(str(tmp_path), timed)).read()
  assert ('| neo_multi | 600.0 | 0.0600 / 0.2100 | time budget: grounding 400, capability 2000 '
          'of 2500 |') in text
  # Validation figures are of the first seed only: not the second seed's.
  assert '| neo_multi_seed1 | 590.0 | not recorded / not recorded | not recorded |' in protocol
  assert '| sasrec | 42.0 | 0.0580 | patience 5 |' in protocol
  assert '| bm25 | 1.5 | 0.2700 | not recorded |' in protocol
  # The nothing-excluded table beside the primary one, and the seeds.
  assert '### Next-item recommendation: nothing excluded' in text
  ne_row = next(l for l in lines if l.startswith('| neo_multi | 0.1000'))
  assert '+11.1% (sasrec)' in ne_row and '-10.0% (sasrec)' in ne_row
  assert '| neo_multi | hr@10 | 0.1150 | 0.0050 |' in text
  # Comparisons: every pair with its interval and verdict (a reversed key read as recorded).
  comp = text[text.index('## Comparisons'):text.index('## Targets')]
  assert '| neo_multi | sasrec | hr@10 | +0.0200 | [+0.0040, +0.0370] | better |' in comp
  assert '| neo_multi | sasrec | ndcg@10 | -0.0050 | [-0.0120, +0.0030] | within noise |' in comp
  assert '| neo_multi | neo_mono | hr@10 | +0.0300 | [-0.0010, +0.0600] | within noise |' in comp
  assert '| bm25 | neo_multi | search_hr@10 | +0.1000 | [+0.0500, +0.1500] | better |' in comp
  # Targets: met only with an interval above zero.
  tgt = text[text.index('## Targets'):]
  assert ('| neo_multi/hr@10 >= sasrec/hr@10 | 0.1200 | 0.1000 | +20.0% | '
          '+0.0200 [+0.0040, +0.0370] | yes |') in tgt
  assert '| neo_multi/ndcg@10 >= sasrec/ndcg@10 |' in tgt
  assert '[-0.0120, +0.0030] | no (within noise) |' in tgt
  # +33.3% on the point figures, but the interval crosses zero: not met.
  assert ('| neo_multi/hr@10 >= neo_mono/hr@10 | 0.1200 | 0.0900 | +33.3% | '
          '+0.0300 [-0.0010, +0.0600] | no (within noise) |') in tgt
  # bm25 - neo_multi = +0.1 [0.05, 0.15] read as neo_multi - bm25 = -0.1 [-0.15, -0.05].
  assert '-0.1000 [-0.1500, -0.0500] | no (worse) |' in tgt
  assert '| neo_multi/ndcg@10 >= neo_mono/ndcg@10 | 0.0500 | 0.0400 | +25.0% |  | no interval |' in tgt
  assert 'Met (interval above zero): 1 of 4 targets with an interval; 3 without one' in tgt
  assert report.target_met(FULL, 'neo_multi/hr@10', 'sasrec/hr@10') == 'yes'
  assert report.target_met(FULL, 'neo_multi/hr@10', 'neo_mono/hr@10') == 'no (within noise)'


def test_report_of_an_empty_result(tmp_path):
  # Nothing recorded: every protocol line says so, nothing crashes.
  text = open(report.write_report(str(tmp_path), {})).read()
  assert text.splitlines()[2] == '## Protocol'
  assert text.lower().count('not recorded') >= 8
  assert 'Paired comparisons: not recorded.' in text
  # Odd values (strings, None, NaN) where numbers are expected do not crash either.
  odd = {'view/train_events': None, 'experiment/seeds': 'x', 'bootstrap/resamples': float('nan'),
         'split/test_target_ties': None, 'seconds/train_neo_multi': None,
         'compare/a_vs_b/hr@10/diff': None, 'compare/a_vs_b/m/diff': 0.1,
         'compare/a_vs_b/m/ci_low': None, 'sasrec/status': 'ok', 'sasrec/stopped': None}
  text = open(report.write_report(str(tmp_path), odd)).read()
  assert '| a | b | m | 0.1000 | not recorded | no interval |' in text
  assert '| neo_multi | not recorded | not recorded / not recorded | not recorded |' in text


def test_budget_plot_places_every_system_with_time_and_validation_figure(tmp_path):
  result = {'seconds/train_neo_multi': 600.0, 'valid/neo_multi/ndcg@10': 0.06,
            'seconds/train_neo_multi_seed1': 590.0,
            'sasrec/status': 'ok', 'sasrec/fit/fit_seconds': 240.0,
            'sasrec/fit/valid_ndcg@10': 0.07, 'sasrec/hr@10': 0.1,
            'tiger/status': 'ok', 'tiger/fit/fit_seconds': 120.0, 'tiger/hr@10': 0.09}
  points = report.budget_points(result)
  assert points == [('neo_multi', 600.0, 0.06), ('sasrec', 240.0, 0.07)]  # tiger: no figure
  assert report.plot_budgets(result, str(tmp_path / 'b.png'))
  assert (tmp_path / 'b.png').stat().st_size > 0
  assert not report.plot_budgets({}, str(tmp_path / 'none.png'))


def test_report_states_the_recipe_with_resolved_budgets(tmp_path):
  result = dict(FULL)
  result.update({'recipe/grounding_trains': 'all', 'recipe/history_len': 20,
                 'recipe/grounding_budget': '6 passes', 'budget/grounding/steps': 440,
                 'recipe/capability_budget': '800 steps'})
  text = open(report.write_report(str(tmp_path), result)).read()
  recipe = next(l for l in text.splitlines() if l.startswith('- **Recipe.**'))
  assert 'grounding_budget 6 passes = 440 steps' in recipe
  assert 'capability_budget 800 steps;' in recipe and 'grounding_trains all' in recipe
  assert 'history_len 20' in recipe
  result.update({'recipe/capability_budget': '1.3 passes', 'budget/capability/steps': 830,
                 'budget/capability/capped': True, 'budget/capability/passes_trained': 1.27})
  text = open(report.write_report(str(tmp_path), result)).read()
  recipe = next(l for l in text.splitlines() if l.startswith('- **Recipe.**'))
  assert 'capability_budget 1.3 passes capped at 830 steps (1.27 passes)' in recipe
  result.update({'recipe/capability_time_budget': '1000 s', 'recipe/grounding_time_budget':
                 '1100 s', 'neo_multi/train/capability_steps': 512,
                 'neo_multi/train/capability_planned_steps': 830,
                 'neo_multi/train/grounding_steps': 440,
                 'neo_multi/train/grounding_planned_steps': 440})
  text = open(report.write_report(str(tmp_path), result)).read()
  recipe = next(l for l in text.splitlines() if l.startswith('- **Recipe.**'))
  assert 'capability_time_budget 1000 s (NEO-multi: 512 of 830 steps)' in recipe
  assert 'grounding_time_budget 1100 s (not reached by NEO-multi)' in recipe
  assert '- **Recipe.** Not recorded.' in open(report.write_report(str(tmp_path), {})).read()
