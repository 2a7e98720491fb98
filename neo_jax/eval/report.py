"""The report of an experiment (`neo_jax.run.experiment.run_experiment`): `report.md`, opening
with the protocol as the result records it (what each system was fitted on, what a ranking
excludes, the entity type asked, tuning, seeds, intervals, ties, training budgets), then the
results tables as the paper presents them (NEO rows, baseline rows, relative differences to the
best baseline; the history excluded, and beside it nothing excluded), the ablation rows
relative to NEO-multi, the steerability / understanding figures, the paired comparisons with
their bootstrap intervals, the acceptance targets (met only when the interval says so), and
PNG plots (training curves from the runs' logs/*.jsonl, metric bars) drawn with matplotlib's
Agg backend.

Reads only the flat result dict and the workdir's logs, so it can be (re)built from a saved
`result.json`: `write_report(workdir, json.load(open(workdir + '/result.json')))`. A key the
result lacks is rendered as 'not recorded', never an error.
"""

from __future__ import annotations

import glob
import io
import json
import math
import os
import re
from typing import Any

from neo_jax.catalog import atomic

NEO_SYSTEMS = ('neo_multi', 'neo_mono')
# Result prefixes that are figures, not systems (some carry a '/status' too).
NOT_SYSTEMS = frozenset({'type_steerability', 'format_steerability', 'explain', 'valid',
                         'seconds', 'cpu_seconds', 'requests', 'split', 'sid', 'view',
                         'compare', 'bootstrap', 'experiment', 'cold'})
BASELINE_ORDER = ('popularity', 'bm25', 'bm25s', 'dense', 'sasrec', 'tiger')
REC_METRICS = ('hr@1', 'hr@5', 'hr@10', 'hr@30', 'ndcg@1', 'ndcg@5', 'ndcg@10', 'ndcg@30',
               'mrr')
TABLE_METRICS = ('hr@10', 'hr@30', 'ndcg@10', 'ndcg@30', 'mrr')

def _is_num(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v: Any) -> str:
  return f'{v:.4f}' if _is_num(v) else ('missing' if v is None else str(v))


def systems(result: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
  """(NEO systems, baselines, ablations) present in `result` (by key or status)."""
  names = {k.split('/')[0] for k in result if '/' in k} - NOT_SYSTEMS
  neo = [s for s in NEO_SYSTEMS if s in names]
  base = [s for s in BASELINE_ORDER if s in names]
  base += sorted(s for s in names if f'{s}/status' in result and s not in base
                 and not s.startswith('ablation_') and s not in NEO_SYSTEMS)
  abl = sorted(s for s in names if s.startswith('ablation_'))
  return neo, base, abl


def best_baseline(result: dict[str, Any], baselines: list[str], metric: str) -> str | None:
  vals = [(result[f'{b}/{metric}'], b) for b in baselines if _is_num(result.get(f'{b}/{metric}'))]
  return max(vals)[1] if vals else None


def rel(a: Any, b: Any) -> str:
  """Relative difference (a - b) / b as a signed percentage, '' when undefined."""
  if not (_is_num(a) and _is_num(b)) or b == 0:
    return ''
  return f'{100.0 * (a - b) / b:+.1f}%'


NOT_RECORDED = 'not recorded'


def _count(result: dict[str, Any], key: str) -> str:
  """An integer figure of the result, or 'not recorded'."""
  v = result.get(key)
  if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
    return NOT_RECORDED
  return str(int(v)) if float(v).is_integer() else f'{v:g}'


def _seen_lines(result: dict[str, Any]) -> list[str]:
  splits = [f'`{k[len("split/"):]}` = {result[k]}' for k in sorted(result)
            if k.startswith('split/') and k != 'split/test_target_ties'
            and isinstance(result[k], (int, float, str)) and not isinstance(result[k], bool)]
  return [
      '- **What each system saw.** NEO and every baseline are fitted on the training view '
      f'only: training events only ({_count(result, "view/train_events")} events), training '
      f'search queries only ({_count(result, "view/train_queries")} queries), and only the '
      'user summaries of users not held out (users whose summaries are held out: '
      f'{_count(result, "view/summary_users_heldout")}). No validation or test target, '
      f'held-out query or held-out summary is fitted on. Dataset: '
      f'{_count(result, "num_users")} users, {_count(result, "num_items")} items. Split: '
      + (', '.join(splits) if splits else NOT_RECORDED) + '.']


def _exclusion_lines(result: dict[str, Any]) -> list[str]:
  excluded = result.get('protocol/exclude_history')
  repeats = _count(result, 'view/repeated_events')
  in_history = _count(result, 'requests/recommend_target_in_history')
  if excluded is False:
    primary = ('the primary figures (`<system>/<metric>`) exclude nothing: the training events '
               f'repeat items ({repeats} repeated events), so excluding a user\'s history '
               'could hide the target; beside them, the figures with the history excluded '
               '(`<system>/history_excluded/<metric>`). ')
  else:
    beside = any('/nothing_excluded/' in k for k in result)
    primary = ('the primary figures (`<system>/<metric>`) exclude the items of the user\'s own '
               'history from the ranking, for every system alike'
               + (f' (the training events repeat no item: {repeats} repeated events)'
                  if repeats != NOT_RECORDED else '') + '; '
               + ('beside them, the figures with nothing excluded '
                  '(`<system>/nothing_excluded/<metric>`), comparable with RecBole\'s '
                  'sequential models, which do not exclude the history. '
                  if beside else 'the figures with nothing excluded: not recorded. '))
  if in_history != NOT_RECORDED:
    primary += f'Test targets that are in their own history: {in_history}. '
  return [
      '- **What a ranking excludes.** Recommendation: ' + primary
      + 'Search: nothing is excluded. Every system ranks the whole catalog (no sampled '
      'negatives).',
      '- **The entity type asked.** A recommendation asks for the type of the last item of '
      'the history; a search for the type its query names (any type when it names none); '
      'never the target\'s type, for every system alike.']


def _tuning_lines(result: dict[str, Any]) -> list[str]:
  tuned = result.get('baselines_tuned')
  if tuned is True:
    how = ('Baselines\' hyperparameters (and early stopping) are chosen by NDCG@10 on the '
           'validation split only.')
  elif tuned is False:
    how = ('Baselines keep their default hyperparameters (experiment.tune_baselines=False): '
           'nothing is tuned.')
  else:
    how = f'Baseline tuning: {NOT_RECORDED}.'
  return [
      f'- **Tuning.** {how} NEO is trained on training examples; the checkpoint it keeps is '
      'chosen on training or validation data only; its validation figures (budgets below) are '
      'reported, not used to choose. The test split is read once, in the final evaluation: '
      'every read of evaluation data is logged by stage and split in `split_access.json`, and '
      'a test read before the final evaluation is refused.']


def _seed_interval_tie_lines(result: dict[str, Any]) -> list[str]:
  seeds = result.get('experiment/seeds')
  if _is_num(seeds) and seeds > 1:
    seed = (f'NEO systems are trained with {int(seeds)} seeds (initialisation and data '
            f'order); the tables give the first seed, "Across seeds" the mean and standard '
            f'deviation over all of them. Baselines are fitted once.')
  elif _is_num(seeds):
    seed = 'One seed per system: the spread over seeds is not measured.'
  else:
    seed = 'Not recorded.'
  resamples = result.get('bootstrap/resamples')
  if _is_num(resamples):
    level = result.get('bootstrap/level')
    level = f'{100 * level:g}%' if _is_num(level) else '95%'
    interval = (f'Paired bootstrap {level} percentile intervals of the difference between '
                f'two systems, {int(resamples)} resamples (seed {_count(result, "bootstrap/seed")})'
                f', over users (recommendation) and queries (search): both systems are '
                f'resampled with the same requests (see Comparisons).')
  else:
    interval = 'Not recorded.'
  ties = result.get('split/test_target_ties')
  tie = (f'{int(ties)} users\' test target shares its timestamp with the event before it; '
         'ties are broken by a fixed pseudo-random key of (user, item) '
         '(`catalog.splits.tie_key`), neither file nor catalog order.'
         if _is_num(ties) else 'Not recorded.')
  return [f'- **Seeds.** {seed}', f'- **Intervals.** {interval}', f'- **Ties.** {tie}']


def _steps_cut(result: dict[str, Any], run: str, stage: str) -> int | None:
  """The steps `run` planned for `stage` when its time budget cut them (it trained fewer:
  neo_jax/train/loop.py), else None."""
  trained = result.get(f'{run}/train/{stage}_steps')
  planned = result.get(f'{run}/train/{stage}_planned_steps')
  return int(planned) if _is_num(trained) and _is_num(planned) and trained < planned else None


def _neo_budget_row(result: dict[str, Any], run: str) -> str:
  system = run.split('_seed')[0]
  tasks = ('recommend', 'search')
  if system.startswith('neo_mono_'):
    tasks = (system[len('neo_mono_'):],)
    system = 'neo_mono'
  # Validation figures are of the first seed's model only (`valid/<system>/...`).
  valid = [_recorded(None if '_seed' in run else result.get(
      f'valid/{system}/{"" if t == "recommend" else "search_"}ndcg@10'))
           for t in tasks if t in ('recommend', 'search')]
  valid = ' / '.join(valid) or NOT_RECORDED
  steps, timed = [], False
  for stage in ('grounding', 'capability'):
    if f'{run}/train/{stage}_steps' not in result:
      continue
    planned = _steps_cut(result, run, stage)
    timed = timed or planned is not None
    steps.append(f'{stage} {_count(result, f"{run}/train/{stage}_steps")}'
                 + (f' of {planned}' if planned is not None else ''))
  stopped = result.get(f'{run}/stopped')
  if stopped is None:
    stopped = (('time budget: ' if timed else 'fixed steps: ') + ', '.join(steps)
               if steps else NOT_RECORDED)
    best = result.get(f'{run}/train/capability_best_step')
    if _is_num(best) and best >= 0 and result.get(f'{run}/train/capability_restored_best'):
      stopped += f'; kept best step {int(best)}'
  secs = result.get(f'seconds/train_{run}')
  secs = f'{secs:.1f}' if _is_num(secs) else NOT_RECORDED
  return f'| {run} | {secs} | {valid} | {stopped} |'


def _recorded(v: Any) -> str:
  return f'{v:.4f}' if _is_num(v) else NOT_RECORDED


def _first(result: dict[str, Any], keys) -> Any:
  return next((result[k] for k in keys if result.get(k) is not None), None)


def _baseline_budget_row(result: dict[str, Any], b: str) -> str:
  secs = _first(result, (f'{b}/fit_seconds', f'{b}/fit/fit_seconds', f'seconds/baseline_{b}'))
  secs = f'{secs:.1f}' if _is_num(secs) else NOT_RECORDED
  valid = [_first(result, (f'{b}/{pre}ndcg@10', f'{b}/fit/{pre}ndcg@10'))
           for pre in ('valid_', 'valid_search_')]
  valid = ' / '.join(_recorded(v) for v in valid if v is not None) or NOT_RECORDED
  stopped = _first(result, (f'{b}/stopped', f'{b}/fit/stopped'))
  if stopped is None:
    epoch = _first(result, (f'{b}/best_epoch', f'{b}/fit/best_epoch'))
    stopped = NOT_RECORDED if epoch is None else (
        f'best epoch {int(epoch) if _is_num(epoch) else epoch}'
        + (' (early stopping on validation)' if result.get('baselines_tuned') is True else ''))
  return f'| {b} | {secs} | {valid} | {stopped} |'


def budget_markdown(result: dict[str, Any]) -> list[str]:
  """Each system's training seconds, validation NDCG@10 and how its training stopped."""
  runs = [k[len('seconds/train_'):] for k in result if k.startswith('seconds/train_')]
  _, base, _ = systems(result)
  base = [b for b in base if str(result.get(f'{b}/status', 'ok')) == 'ok']
  if not runs and not base:
    return ['- **Budgets.** Not recorded.']
  lines = ['- **Budgets.** Training seconds (wall), the validation figure and how training '
           'stopped, per system:', '',
           '| system | training seconds | validation NDCG@10 (recommend / search) '
           '| how training stopped |', '|---|---|---|---|']
  lines += [_neo_budget_row(result, r) for r in runs]
  lines += [_baseline_budget_row(result, b) for b in base]
  return lines


def recipe_lines(result: dict[str, Any]) -> list[str]:
  """The NEO recipe the run trained with (`recipe/*`), stage budgets resolved to steps."""
  got = {k[len('recipe/'):]: v for k, v in result.items() if k.startswith('recipe/')}
  if not got:
    return ['- **Recipe.** Not recorded.']
  for stage in ('grounding', 'capability'):
    steps = result.get(f'budget/{stage}/steps')
    if _is_num(steps) and f'{stage}_budget' in got:
      trained = result.get(f'budget/{stage}/passes_trained')
      got[f'{stage}_budget'] = (
          f'{got[f"{stage}_budget"]} capped at {int(steps)} steps ({trained:g} passes)'
          if result.get(f'budget/{stage}/capped') and _is_num(trained)
          else f'{got[f"{stage}_budget"]} = {int(steps)} steps')
    if f'{stage}_time_budget' in got:  # what the time budget left of NEO-multi's steps
      if all(_is_num(result.get(f'neo_multi/train/{stage}_{k}'))
             for k in ('steps', 'planned_steps')):
        planned = _steps_cut(result, 'neo_multi', stage)
        got[f'{stage}_time_budget'] += (
            ' (not reached by NEO-multi)' if planned is None else
            f' (NEO-multi: {int(result[f"neo_multi/train/{stage}_steps"])} of {planned} steps)')
  return ['- **Recipe.** ' + '; '.join(f'{k} {v}' for k, v in sorted(got.items())) + '. '
          'Each setting was chosen on the validation split (`experiment.open_test=false` runs; '
          'their figures are in RESULTS.md).']


def protocol_markdown(result: dict[str, Any]) -> str:
  """The '## Protocol' section: what the result records of how every figure was obtained;
  'not recorded' for what it lacks."""
  lines = ['## Protocol', '']
  lines += _seen_lines(result) + _exclusion_lines(result) + _tuning_lines(result)
  lines += _seed_interval_tie_lines(result) + recipe_lines(result) + budget_markdown(result)
  return '\n'.join(lines) + '\n'


def _task_table(result, task: str, neo, base, pre: str | None = None) -> list[str]:
  """The table of one task; `pre` (default: '' for recommendation, 'search_' for search)
  prefixes the metric names (e.g. 'nothing_excluded/')."""
  if pre is None:
    pre = '' if task == 'recommend' else 'search_'
  rows = [s for s in neo + base if any(f'{s}/{pre}{m}' in result for m in TABLE_METRICS)]
  if not rows:
    return []
  # The cutoffs the run measured (eval.ks): a column no system has is left out.
  columns = [m for m in TABLE_METRICS if any(f'{s}/{pre}{m}' in result for s in rows)]
  bests = {m: best_baseline(result, base, pre + m) for m in TABLE_METRICS}
  head = '| system | ' + ' | '.join(columns) + ' | vs best baseline (HR@10 / NDCG@10) |'
  lines = [head, '|' + '---|' * (len(columns) + 2)]
  for s in rows:
    cells = [_fmt(result.get(f'{s}/{pre}{m}')) for m in columns]
    if s in neo:
      vs = ' / '.join(
          rel(result.get(f'{s}/{pre}{m}'), result.get(f'{bests[m]}/{pre}{m}')) +
          (f' ({bests[m]})' if bests[m] else '') for m in ('hr@10', 'ndcg@10'))
    else:
      vs = ''
    lines.append(f'| {s} | ' + ' | '.join(cells) + f' | {vs} |')
  return lines


def _seeds_table(result: dict[str, Any]) -> list[str]:
  """'Across seeds': mean and standard deviation of every `<system>/seeds/<metric>/mean`."""
  rows = []
  for k in sorted(result):
    m = re.fullmatch(r'(.+?)/seeds/(.+)/mean', k)
    if m:
      std = result.get(f'{m.group(1)}/seeds/{m.group(2)}/std')
      rows.append(f'| {m.group(1)} | {m.group(2)} | {_fmt(result[k])} | '
                  f'{_fmt(std) if std is not None else "undefined (one seed)"} |')
  if not rows:
    return []
  return [f'### Across seeds ({_count(result, "experiment/seeds")} seeds, test)', '',
          '| system | metric | mean | std (ddof=1) |', '|---|---|---|---|'] + rows + ['']


def results_markdown(result: dict[str, Any]) -> str:
  """The results tables (recommendation, search, ablations, other figures) as Markdown."""
  neo, base, abl = systems(result)
  out = []
  for task, pre, title in (
      ('recommend', '', 'Next-item recommendation: primary protocol (history excluded'
       + ('' if result.get('protocol/exclude_history', True) else ': no, see Protocol') + ')'),
      ('recommend', 'nothing_excluded/', 'Next-item recommendation: nothing excluded '
       "(comparable with RecBole's sequential models)"),
      ('recommend', 'history_excluded/', 'Next-item recommendation: history excluded'),
      ('search', 'search_', 'Search')):
    table = _task_table(result, task, neo, base, pre)
    if table:
      n = result.get(f'requests/{task}')
      n = NOT_RECORDED if n is None else n
      out += [f'### {title} (test, {n} requests, full ranking)', ''] + table + ['']
  out += _seeds_table(result)
  missing = [f'- {s}: {result[f"{s}/status"]}' for s in base + abl
             if str(result.get(f'{s}/status', 'ok')) != 'ok']
  if missing:
    out += ['Not measured:', ''] + missing + ['']
  if abl:
    out += ['### Ablations (relative to NEO-multi)', '',
            '| run | hr@10 | ndcg@10 | search_hr@10 | search_ndcg@10 | rel hr@10 | rel ndcg@10 '
            '| rel search_hr@10 |', '|' + '---|' * 8]
    for a in abl:
      if str(result.get(f'{a}/status', 'ok')) != 'ok':
        continue
      cells = [_fmt(result.get(f'{a}/{m}')) for m in ('hr@10', 'ndcg@10', 'search_hr@10',
                                                      'search_ndcg@10')]
      rels = [rel(result.get(f'{a}/{m}'), result.get(f'neo_multi/{m}'))
              for m in ('hr@10', 'ndcg@10', 'search_hr@10')]
      out.append(f'| {a[len("ablation_"):]} | ' + ' | '.join(cells + rels) + ' |')
    out.append('')
  other = [k for k in sorted(result) if k.split('/')[0] in (
      'valid_sid_fraction', 'sid_checked', 'type_steerability', 'format_steerability',
      'summary_precision', 'summary_recall', 'summary_f1', 'summary_empty', 'summaries',
      'explain')]
  if other:
    out += ['### Validity, steerability, understanding, faithfulness (NEO-multi, test)', '',
            '| figure | value |', '|---|---|']
    out += [f'| {k} | {_fmt(result[k])} |' for k in other]
    out.append('')
  out += cold_markdown(result)
  return '\n'.join(out)


COLD_SYSTEMS = (('neo', 'NEO (trained without them, items added)'),
                ('neo_all_items', 'NEO trained with them (upper bound)'),
                ('bm25', 'BM25 (indexes them directly)'),
                ('dense', 'dense MiniLM (indexes them directly)'))
COLD_TASKS = ('search', 'title_search', 'recommend')


def cold_markdown(result: dict[str, Any]) -> list[str]:
  """The cold-start table (`experiment.cold_items`, keys cold/...), [] when not run."""
  if not any(k.startswith('cold/') for k in result):
    return []
  n = {t: _count(result, f'cold/{t}/requests') for t in COLD_TASKS}
  skipped = {t: _count(result, f'cold/{t}/skipped_prompt_too_long') for t in COLD_TASKS}
  head = ' | '.join(f'{t} {m}' for t in COLD_TASKS for m in ('hr@10', 'ndcg@10'))
  out = [f'### Cold-start items ({_count(result, "cold/items")} items, fraction '
         f'{_fmt(result.get("cold/fraction"))}, held out of training and added through the '
         'frozen quantiser; test)', '',
         f'SIDs of the added items: {_count(result, "cold/sids/new_groups")} in a new cell, '
         f'{_count(result, "cold/sids/joined_groups")} joined a group, '
         f'{_count(result, "cold/sids/neighbour_cells")} in a neighbour cell. Requests: '
         + ', '.join(f'{t} {n[t]} ({skipped[t]} skipped: prompt too long)' for t in COLD_TASKS)
         + '. search: held-out queries whose relevant items are cold; title_search: each cold '
         "item's title; recommend: test users whose target is cold, history excluded.", '',
         f'| system | {head} |', '|---|' + '---|' * 2 * len(COLD_TASKS)]
  for name, what in COLD_SYSTEMS:
    cells = [_fmt(result.get(f'cold/{name}/{t}/{m}')) for t in COLD_TASKS
             for m in ('hr@10', 'ndcg@10')]
    out.append(f'| {name}: {what} | ' + ' | '.join(cells) + ' |')
  gaps = []
  for t in COLD_TASKS:
    gap = rel(result.get(f'cold/neo/{t}/hr@10'), result.get(f'cold/neo_all_items/{t}/hr@10'))
    gaps.append(f'{t} {gap or "undefined"}')
  out += ['', 'NEO against its upper bound (relative HR@10): ' + ', '.join(gaps)
          + f' ({result.get("cold/upper_bound", NOT_RECORDED)}).', '']
  return out


# The acceptance targets: (figure, reference, what) -- NEO-multi at least the reference.
TARGETS = (('neo_multi/ndcg@10', 'sasrec/ndcg@10'), ('neo_multi/hr@10', 'sasrec/hr@10'),
           ('neo_multi/search_hr@10', 'bm25/search_hr@10'),
           ('neo_multi/search_hr@10', 'dense/search_hr@10'),
           ('neo_multi/ndcg@10', 'neo_mono/ndcg@10'), ('neo_multi/hr@10', 'neo_mono/hr@10'),
           ('neo_multi/search_hr@10', 'neo_mono/search_hr@10'))


def _interval(result: dict[str, Any], a: str, b: str, metric: str
              ) -> tuple[float, float, float] | None:
  """(diff, ci_low, ci_high) of a - b on `metric` from `compare/...` keys (either order),
  None when the result holds no interval for the pair."""
  for x, y, sign in ((a, b, 1.0), (b, a, -1.0)):
    p = f'compare/{x}_vs_{y}/{metric}'
    d, lo, hi = (result.get(f'{p}/{k}') for k in ('diff', 'ci_low', 'ci_high'))
    if _is_num(d) and _is_num(lo) and _is_num(hi):
      return (d, lo, hi) if sign > 0 else (-d, -hi, -lo)
  return None


def verdict_of(lo: float, hi: float) -> str:
  """'better' (interval above zero), 'worse' (below zero) or 'within noise'."""
  return 'better' if lo > 0 else 'worse' if hi < 0 else 'within noise'


def comparisons_markdown(result: dict[str, Any]) -> str:
  """Every `compare/<a>_vs_<b>/<metric>` of the result: the difference a - b, its paired
  bootstrap interval and the verdict; '' when there is none."""
  lines = []
  for k in sorted(result):
    m = re.fullmatch(r'compare/(.+?)_vs_(.+?)/(.+)/diff', k)
    if not m:
      continue
    a, b, metric = m.groups()
    iv = _interval(result, a, b, metric)
    if iv is None:
      lines.append(f'| {a} | {b} | {metric} | {_fmt(result[k])} | {NOT_RECORDED} | '
                   'no interval |')
      continue
    d, lo, hi = iv
    lines.append(f'| {a} | {b} | {metric} | {d:+.4f} | [{lo:+.4f}, {hi:+.4f}] | '
                 f'{verdict_of(lo, hi)} |')
  if not lines:
    return ''
  level = result.get('bootstrap/level')
  level = f'{100 * level:g}%' if _is_num(level) else '95%'
  return '\n'.join(
      [f'Difference a - b on the same test requests, with its paired bootstrap {level} '
       f'interval ({_count(result, "bootstrap/resamples")} resamples): "better" / "worse" '
       'when the interval excludes zero, else "within noise".', '',
       f'| a | b | metric | a - b | {level} interval | verdict |', '|---|---|---|---|---|---|']
      + lines)


# The acceptance targets: (figure, reference) -- NEO-multi at least the reference.
TARGETS = (('neo_multi/ndcg@10', 'sasrec/ndcg@10'), ('neo_multi/hr@10', 'sasrec/hr@10'),
           ('neo_multi/search_hr@10', 'bm25/search_hr@10'),
           ('neo_multi/search_hr@10', 'dense/search_hr@10'),
           ('neo_multi/ndcg@10', 'neo_mono/ndcg@10'), ('neo_multi/hr@10', 'neo_mono/hr@10'),
           ('neo_multi/search_hr@10', 'neo_mono/search_hr@10'))


def target_met(result: dict[str, Any], a: str, b: str) -> str:
  """Whether figure `a` beats figure `b` (both `<system>/<metric>`): 'yes' only when the
  paired interval of a - b lies above zero; 'no (within noise)', 'no (worse)', 'no interval'
  (both measured, no comparison recorded: not counted as met) or 'not measured'."""
  if not (_is_num(result.get(a)) and _is_num(result.get(b))):
    return 'not measured'
  (sa, metric), (sb, metric_b) = a.split('/', 1), b.split('/', 1)
  iv = _interval(result, sa, sb, metric) if metric == metric_b else None
  if iv is None:
    return 'no interval'
  v = verdict_of(iv[1], iv[2])
  return 'yes' if v == 'better' else f'no ({v})'


def targets_markdown(result: dict[str, Any]) -> str:
  """The acceptance targets: met only when the paired interval of the difference excludes
  zero in the claimed direction; the point figures and relative difference beside it."""
  lines = ['| target | value | reference | relative | a - b [interval] | met |',
           '|---|---|---|---|---|---|']
  met = with_interval = 0
  for a, b in TARGETS:
    va, vb = result.get(a), result.get(b)
    verdict = target_met(result, a, b)
    iv = _interval(result, a.split('/', 1)[0], b.split('/', 1)[0], a.split('/', 1)[1])
    cell = f'{iv[0]:+.4f} [{iv[1]:+.4f}, {iv[2]:+.4f}]' if iv and verdict != 'not measured' \
        else ''
    met += verdict == 'yes'
    with_interval += verdict not in ('no interval', 'not measured')
    lines.append(f'| {a} >= {b} | {_fmt(va)} | {_fmt(vb)} | {rel(va, vb)} | {cell} | '
                 f'{verdict} |')
  v = result.get('valid_sid_fraction')
  lines.append(f'| valid_sid_fraction = 1 | {_fmt(v)} | 1.0000 | | | '
               f'{"not measured" if not _is_num(v) else "yes" if v == 1.0 else "no"} |')
  lines += ['', f'Met (interval above zero): {met} of {with_interval} targets with an '
            f'interval; {len(TARGETS) - with_interval} without one (not measured, or no '
            'interval recorded) are not counted as met.']
  return '\n'.join(lines)


def generations_text(generations: list[dict[str, Any]]) -> str:
  """The sample generations of a run (`neo_jax.eval.steering.sample_generations`): prompt,
  output and every item named, by title and type."""
  lines = []
  for g in generations:
    lines.append(f'--- {g["task"]}, format {g["format"]} ---')
    lines.append(f'prompt: {g["prompt"]}')
    lines.append(f'output: {g["output"]}')
    for row, title, type_name in g['items']:
      if row is None:
        lines.append('  item: <not in the catalog>')
      else:
        lines.append(f'  item {row}: {title!r} ({type_name})')
  return '\n'.join(lines)


def _log_files(workdir: str) -> list[str]:
  """Every <workdir>/**/logs/*.jsonl, sorted (a local workdir or a URI)."""
  if not atomic.is_remote(workdir):
    return sorted(glob.glob(os.path.join(workdir, '**', 'logs', '*.jsonl'), recursive=True))
  return sorted(os.fspath(d / n) for d, _, names in atomic.as_path(workdir).walk()
                if d.name == 'logs' for n in names if n.endswith('.jsonl'))


def _curves(workdir: str) -> dict[str, list[tuple[int, float]]]:
  """run/stage -> [(step, loss)] from every <workdir>/**/logs/<stage>.jsonl."""
  out = {}
  for path in _log_files(workdir):
    run = os.path.relpath(os.path.dirname(os.path.dirname(path)), workdir)
    stage = os.path.splitext(os.path.basename(path))[0]
    points = []
    with atomic.open_text(path) as f:
      for line in f:
        line = line.strip()
        if line:
          rec = json.loads(line)
          if 'step' in rec and 'loss' in rec:
            points.append((int(rec['step']), float(rec['loss'])))
    if points:
      out[f'{run}/{stage}'] = points
  return out


def _save_figure(fig, path: str) -> None:
  """`fig` as a PNG at `path`, written whole (a reader never sees half an image)."""
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=100)
  atomic.write_bytes(path, buf.getvalue())


def plot_training_curves(workdir: str, path: str) -> bool:
  """Loss against step of every run and stage; False (no file) when there are no logs."""
  curves = _curves(workdir)
  if not curves:
    return False
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  order = {'grounding': 0, 'capability': 1}
  stages = sorted({k.rsplit('/', 1)[1] for k in curves}, key=lambda s: (order.get(s, 2), s))
  fig, axes = plt.subplots(1, len(stages), figsize=(6 * len(stages), 4), squeeze=False)
  for ax, stage in zip(axes[0], stages):
    for key, pts in curves.items():
      if key.rsplit('/', 1)[1] == stage:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=key.rsplit('/', 1)[0])
    ax.set_title(f'{stage} stage')
    ax.set_xlabel('step')
    ax.set_ylabel('training loss (completion tokens)')
    ax.legend(fontsize=7)
  fig.tight_layout()
  _save_figure(fig, path)
  plt.close(fig)
  return True


def plot_metric_bars(result: dict[str, Any], path: str) -> bool:
  """HR@10 and NDCG@10 of every system with a figure, per task; False when none."""
  neo, base, abl = systems(result)
  panels = []
  for task, pre in (('recommend', ''), ('search', 'search_')):
    for m in ('hr@10', 'ndcg@10'):
      bars = [(s, result[f'{s}/{pre}{m}']) for s in neo + base + abl
              if _is_num(result.get(f'{s}/{pre}{m}'))]
      if bars:
        panels.append((f'{task} {m}', bars))
  if not panels:
    return False
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
  for ax, (title, bars) in zip(axes[0], panels):
    colors = ['tab:blue' if s in neo else 'tab:gray' if s in base else 'tab:orange'
              for s, _ in bars]
    ax.bar(range(len(bars)), [v for _, v in bars], color=colors)
    ax.set_xticks(range(len(bars)))
    ax.set_xticklabels([s for s, _ in bars], rotation=45, ha='right', fontsize=8)
    ax.set_title(title + ' (test)')
  fig.tight_layout()
  _save_figure(fig, path)
  plt.close(fig)
  return True


def budget_points(result: dict[str, Any]) -> list[tuple[str, float, float]]:
  """(system, training seconds, validation NDCG@10 of recommendation) of every system that
  records both (NEO: first seed; baselines: their tuning figure)."""
  out = []
  for k in sorted(result):
    if not k.startswith('seconds/train_') or '_seed' in k:
      continue
    run = k[len('seconds/train_'):]
    system = 'neo_mono' if run == 'neo_mono_recommend' else run
    v = result.get(f'valid/{system}/ndcg@10')
    if _is_num(v) and _is_num(result[k]):
      out.append((run, float(result[k]), float(v)))
  for b in systems(result)[1]:
    secs = _first(result, (f'{b}/fit_seconds', f'{b}/fit/fit_seconds', f'seconds/baseline_{b}'))
    v = _first(result, (f'{b}/valid_ndcg@10', f'{b}/fit/valid_ndcg@10'))
    if _is_num(secs) and _is_num(v):
      out.append((b, float(secs), float(v)))
  return out


def plot_budgets(result: dict[str, Any], path: str) -> bool:
  """Each system's validation NDCG@10 against its training seconds (log scale): what each
  system's budget bought, on the split every one of them was tuned or checked on."""
  points = budget_points(result)
  if not points:
    return False
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, secs, v in points:
    ax.scatter([max(secs, 1e-2)], [v], color='tab:blue' if name.startswith('neo') else 'tab:gray')
    ax.annotate(name, (max(secs, 1e-2), v), fontsize=8, xytext=(3, 3),
                textcoords='offset points')
  ax.set_xscale('log')
  ax.set_xlabel('training seconds (wall, log scale)')
  ax.set_ylabel('validation NDCG@10 (recommend)')
  ax.set_title('Budget and validation figure per system')
  fig.tight_layout()
  _save_figure(fig, path)
  plt.close(fig)
  return True


def write_report(workdir: str, result: dict[str, Any]) -> str:
  """Writes <workdir>/report.md (+ training_curves.png, metrics.png, budgets.png); returns
  its path. `workdir`: a local path or a URI (`catalog.atomic`)."""
  atomic.as_path(workdir).mkdir(parents=True, exist_ok=True)
  lines = [f'# NEO experiment: {result.get("dataset", "?")}', '']
  lines += [protocol_markdown(result), '## Results', '', results_markdown(result)]
  comparisons = comparisons_markdown(result)
  lines += ['## Comparisons', '', comparisons or f'Paired comparisons: {NOT_RECORDED}.', '']
  lines += ['## Targets', '', targets_markdown(result), '']
  timings = [k for k in sorted(result) if k.startswith('seconds/')]
  if timings:
    lines += ['## Time', '', '| part | wall seconds | CPU seconds (all threads) |',
              '|---|---|---|']
    cpu = lambda k: f'{result["cpu_" + k]:.1f}' if _is_num(result.get('cpu_' + k)) else ''
    lines += [f'| {k[len("seconds/"):]} | {result[k]:.1f} | {cpu(k)} |' for k in timings
              if _is_num(result[k])]
    lines += ['', 'Resumed runs restore trained stages: their training time is in '
              '`<run>/train/<stage>_seconds` of result.json (the run that trained them).']
    lines.append('')
  lines += ['## Plots', '']
  if plot_training_curves(workdir, os.path.join(workdir, 'training_curves.png')):
    lines.append('![training curves](training_curves.png)')
  else:
    lines.append('No training logs found under the workdir.')
  if plot_metric_bars(result, os.path.join(workdir, 'metrics.png')):
    lines.append('![metrics](metrics.png)')
  if plot_budgets(result, os.path.join(workdir, 'budgets.png')):
    lines.append('![validation figure against training time](budgets.png)')
  return atomic.write_text(os.path.join(workdir, 'report.md'), '\n'.join(lines) + '\n')
