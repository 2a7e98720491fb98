"""Printing and saving the figures of a run (shared by the entry points)."""

import json
import os
import re
from typing import Any

_METHODS = (('neo', 'NEO'), ('popularity', 'popularity'), ('bm25', 'BM25 text match'))


def results_table(result: dict[str, Any]) -> str:
  """A fixed-width table of every `<task>/<method>/<metric>` figure in `result`."""
  keys = [k for k in result if re.fullmatch(r'[a-z_]+/[a-z0-9_]+/(recall|ndcg)@\d+', k)]
  metric_names = sorted({k.split('/')[2] for k in keys},
                        key=lambda m: (m.split('@')[0] != 'recall', int(m.split('@')[1])))
  tasks = sorted({k.split('/')[0] for k in keys}, key=lambda t: (t != 'recommend', t))
  head = f'{"task":<10} {"method":<16} {"requests":>8} ' + ' '.join(
      f'{m:>10}' for m in metric_names)
  lines = [head, '-' * len(head)]
  for task in tasks:
    for key, label in _METHODS:
      if not any(k.startswith(f'{task}/{key}/') for k in keys):
        continue
      cells = ' '.join(f'{result.get(f"{task}/{key}/{m}", float("nan")):>10.4f}'
                       for m in metric_names)
      lines.append(f'{task:<10} {label:<16} {int(result.get(f"{task}/requests", 0)):>8} {cells}')
  lines.append('')
  lines.append(f'valid_sid_fraction {result.get("valid_sid_fraction", float("nan")):.4f} '
               f'(of {int(result.get("sid_checked", 0))} generated SIDs)')
  return '\n'.join(lines)


def generations_text(generations: list[dict[str, Any]]) -> str:
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


def write_result(workdir: str, result: dict[str, Any]) -> str:
  """Writes `workdir/result.json` atomically (temporary file, then rename)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, 'result.json')
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(result, f, indent=1, sort_keys=True)
  os.replace(tmp, path)
  return path
