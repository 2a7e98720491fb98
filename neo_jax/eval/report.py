"""The report of an experiment (`neo_jax.run.experiment.run_experiment`): `report.md` with the
results table as the paper presents it (NEO rows, baseline rows, relative differences to the
best baseline), the ablation rows relative to NEO-multi, the steerability / understanding
figures, the validation protocol, and PNG plots (training curves from the runs'
logs/*.jsonl, metric bars) drawn with matplotlib's Agg backend.

Reads only the flat result dict and the workdir's logs, so it can be (re)built from a saved
`result.json`: `write_report(workdir, json.load(open(workdir + '/result.json')))`.
"""

from __future__ import annotations

import glob
import json
import math
import os
from typing import Any

NEO_SYSTEMS = ('neo_multi', 'neo_mono')
# Result prefixes that are figures, not systems (some carry a '/status' too).
NOT_SYSTEMS = frozenset({'type_steerability', 'format_steerability', 'explain', 'valid',
                         'seconds', 'requests', 'split', 'sid'})
BASELINE_ORDER = ('popularity', 'bm25', 'bm25s', 'dense', 'sasrec', 'tiger')
REC_METRICS = ('hr@1', 'hr@5', 'hr@10', 'hr@30', 'ndcg@1', 'ndcg@5', 'ndcg@10', 'ndcg@30',
               'mrr')
TABLE_METRICS = ('hr@10', 'hr@30', 'ndcg@10', 'ndcg@30', 'mrr')

PROTOCOL = """\
Validation protocol. Users are split leave-one-out by time (or by the configured global
temporal split): training sees each user's sequence without the validation and test targets.
Every read of evaluation data went through a guard that logs which stage read which split
(`split_access.json`) and refuses test reads before the final evaluation. NEO models are
trained on training examples only (checkpoint: the training loop's choice, on training or
validation data only). Baselines are fitted on the split with its test targets removed and
{tuning}. The test split is read once,
in the final evaluation: full ranking over the whole catalog (no sampled negatives), each
request restricted to its target's entity type for every system alike.
"""


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


def _task_table(result, task: str, neo, base) -> list[str]:
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


def results_markdown(result: dict[str, Any]) -> str:
  """The results tables (recommendation, search, ablations, other figures) as Markdown."""
  neo, base, abl = systems(result)
  out = []
  for task, title in (('recommend', 'Next-item recommendation'), ('search', 'Search')):
    table = _task_table(result, task, neo, base)
    if table:
      n = result.get(f'requests/{task}')
      out += [f'### {title} (test, {n} requests, full ranking)', ''] + table + ['']
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
  return '\n'.join(out)


# The acceptance targets: (figure, reference, what) -- NEO-multi at least the reference.
TARGETS = (('neo_multi/ndcg@10', 'sasrec/ndcg@10'), ('neo_multi/hr@10', 'sasrec/hr@10'),
           ('neo_multi/search_hr@10', 'bm25/search_hr@10'),
           ('neo_multi/search_hr@10', 'dense/search_hr@10'),
           ('neo_multi/ndcg@10', 'neo_mono/ndcg@10'), ('neo_multi/hr@10', 'neo_mono/hr@10'),
           ('neo_multi/search_hr@10', 'neo_mono/search_hr@10'))


def targets_markdown(result: dict[str, Any]) -> str:
  """The acceptance targets: met or not, and by how much (relative difference)."""
  lines = ['| target | value | reference | relative | met |', '|---|---|---|---|---|']
  for a, b in TARGETS:
    va, vb = result.get(a), result.get(b)
    if not (_is_num(va) and _is_num(vb)):
      met = 'not measured'
    else:
      met = 'yes' if va >= vb else 'no'
    lines.append(f'| {a} >= {b} | {_fmt(va)} | {_fmt(vb)} | {rel(va, vb)} | {met} |')
  v = result.get('valid_sid_fraction')
  lines.append(f'| valid_sid_fraction = 1 | {_fmt(v)} | 1.0000 | | '
               f'{"not measured" if not _is_num(v) else "yes" if v == 1.0 else "no"} |')
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


def _curves(workdir: str) -> dict[str, list[tuple[int, float]]]:
  """run/stage -> [(step, loss)] from every <workdir>/**/logs/<stage>.jsonl."""
  out = {}
  for path in sorted(glob.glob(os.path.join(workdir, '**', 'logs', '*.jsonl'), recursive=True)):
    run = os.path.relpath(os.path.dirname(os.path.dirname(path)), workdir)
    stage = os.path.splitext(os.path.basename(path))[0]
    points = []
    with open(path) as f:
      for line in f:
        line = line.strip()
        if line:
          rec = json.loads(line)
          if 'step' in rec and 'loss' in rec:
            points.append((int(rec['step']), float(rec['loss'])))
    if points:
      out[f'{run}/{stage}'] = points
  return out


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
  fig.savefig(path, dpi=100)
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
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


def write_report(workdir: str, result: dict[str, Any]) -> str:
  """Writes <workdir>/report.md (+ training_curves.png, metrics.png); returns its path."""
  os.makedirs(workdir, exist_ok=True)
  lines = [f'# NEO experiment: {result.get("dataset", "?")}', '']
  lines += [results_markdown(result), '## Targets', '', targets_markdown(result), '',
            '## Protocol', '', PROTOCOL.format(tuning=(
                'their hyperparameters chosen by NDCG@10 on validation requests'
                if result.get('baselines_tuned', True) else
                'keep their default hyperparameters (experiment.tune_baselines=False)'))]
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
  path = os.path.join(workdir, 'report.md')
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return path
