r"""Every benchmark of experiments/benchmarks/, one after the other, and one summary table.

  python -m experiments.benchmarks.all --workdir=runs/bench --size=small   # a 2-core CPU
  python -m experiments.benchmarks.all --workdir=runs/bench --size=full    # a GPU or TPU
  python -m experiments.benchmarks.all --workdir=W --only=decode,train

Each benchmark runs as its own process (`python -m experiments.benchmarks.<name>` with the
flags of SIZES[size][name]; its output goes to W/<name>.log) under a time limit, and its last
stdout line (the benchmark's result.json object) is collected. Writes W/summary.md (the machine
described, then one Markdown table: benchmark, status, key figures, seconds), W/results.json
(every benchmark's full result) and W/result.json (flat: machine, per benchmark ok, seconds
and key figures), and prints the table and then the result line. A benchmark that fails or
times out is reported in the table with its error, the others still run, and the script exits
with status 1. A benchmark file that SIZES does not know is reported as failed too, so that a
new benchmark cannot be left out silently.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import re
import subprocess
import sys
import time
from typing import Any

from absl import app
from absl import flags

from neo_jax.catalog import progress
from neo_jax.run import rundir

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags; defined only when run as a script, so that importing this
  module (tests) never collides with other entry points' flags of the same names."""
  flags.DEFINE_string('workdir', None, 'where logs, summary.md and result.json go',
                      required=True)
  flags.DEFINE_enum('size', 'small', ['small', 'full'],
                    "'small': this 2-core CPU in 15 minutes or less; 'full': a GPU or TPU")
  flags.DEFINE_list('only', [], 'run only these benchmarks (default: all)')
  flags.DEFINE_integer('timeout_s', 0, 'time limit per benchmark in seconds (0: the size '
                       'default, 600 small / 7200 full)')


BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(BENCH_DIR))

# The flags of each benchmark per size. 'small' is sized so that all of them together take at
# most 15 minutes on a 2-core CPU; 'full' is each benchmark's headline setting.
SIZES: dict[str, dict[str, list[str]]] = {
    'small': {
        'train': ['--presets=tiny', '--steps=3'],
        'decode': ['--num_items=100000', '--presets=tiny', '--add_items=1000', '--batch=8',
                   '--latency_requests=10', '--runs=2', '--gen_batch=4'],
        'sids': ['--num_items=50000', '--dim=384', '--k=256', '--levels=3', '--iters=3',
                 '--batch_size=16384', '--init_sample=8192', '--centers=1000'],
        'backbone_step': ['--backbone=smollm2-135m', '--batch=1', '--seq_len=128', '--steps=2'],
        'baselines': ['--methods=popularity,bm25,sasrec', '--sasrec_max_epochs=2',
                      '--sasrec_grid=0.5:1e-3', '--sasrec_budget_s=60'],
        'loss_head': ['--rounds=3'],
    },
    'full': {
        'train': ['--presets=tiny,smollm2-135m'],
        'decode': ['--num_items=10000000', '--presets=tiny,smollm2-135m'],
        'sids': ['--num_items=1000000'],
        'backbone_step': ['--backbone=smollm2-135m', '--batch=8', '--seq_len=1024',
                          '--dtype=bfloat16', '--steps=10'],
        'baselines': [],
        'loss_head': [],
    },
}
# The figures the table shows per benchmark (regular expressions over result keys, in order);
# a benchmark without a match shows its first numeric figures.
KEY_FIGURES = {
    'train': [r'(.*/)?tokens_per_second$', r'(.*/)?mfu$', r'(.*/)?step_seconds$',
              r'peak_flops_per_second$'],
    'decode': [r'(.*\.)?trie_bytes_per_item$', r'(.*\.)?trie_build_seconds_per_1m_items$',
               r'(.*\.)?step_ms_(rows|unconstrained)$',
               r'(.*\.)?constrained_over_unconstrained_step_time$', r'(.*\.)?latency_ms_p50$',
               r'(.*\.)?throughput_requests_per_s$', r'(.*\.)?valid_fraction(_unconstrained)?$'],
    'sids': [r'num_items$', r'seconds$', r'items_per_s$', r'peak_rss_mib$', r'mse_l\d+$'],
    'backbone_step': [r'seconds_per_step_(mean|min)$', r'seconds_compile_and_first_step$',
                      r'seconds_load$'],
    'loss_head': [r'.*/per_batch/ratio$', r'.*/per_row/ratio$'],
    'baselines': [r'[a-z0-9_]+/test/(hr|ndcg)@10$', r'[a-z0-9_]+/test/search_(hr|ndcg)@10$',
                  r'[a-z0-9_]+/fit_seconds$'],
}
MAX_FIGURES = 6


# Modules of experiments/benchmarks/ that are not benchmarks this suite runs: this file, the
# shared FLOP helpers, and the accelerator run with its CPU-side preparation (a suite of its
# own, one command on an accelerator machine: accelerator.py's docstring), and fresh_items,
# which measures added items on a trained MovieLens workdir that it changes (its docstring).
NOT_BENCHMARKS = ('__init__', 'all', 'flops', 'accelerator', 'accelerator_prepare',
                  'fresh_items')


def discover() -> list[str]:
  """Benchmark modules in experiments/benchmarks/ (every .py but NOT_BENCHMARKS)."""
  names = [os.path.splitext(os.path.basename(p))[0]
           for p in glob.glob(os.path.join(BENCH_DIR, '*.py'))]
  return sorted(n for n in names if n not in NOT_BENCHMARKS)


def _has_workdir_flag(name: str) -> bool:
  """Whether the benchmark defines a --workdir flag (then its result.json goes there)."""
  source = _read(os.path.join(BENCH_DIR, f'{name}.py'))
  return re.search(r"DEFINE_string\(\s*'workdir'", source) is not None


def _read(path: str) -> str:
  try:
    with open(path) as f:
      return f.read()
  except OSError:
    return ''


def machine() -> dict[str, Any]:
  """The machine, as the table's header describes it."""
  cpu = platform.processor() or platform.machine()
  for line in _read('/proc/cpuinfo').splitlines():
    if line.startswith('model name'):
      cpu = line.split(':', 1)[1].strip()
      break
  ram_gb = float('nan')
  m = re.search(r'MemTotal:\s+(\d+) kB', _read('/proc/meminfo'))
  if m:
    ram_gb = int(m.group(1)) / 2**20
  elif hasattr(os, 'sysconf'):
    ram_gb = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  import jax  # pylint: disable=g-import-not-at-top  (after flags: the backend is chosen here)
  devices = jax.devices()
  out = {
      'cpu': cpu, 'cpu_cores': int(cores or 0), 'ram_gb': round(ram_gb, 1),
      'os': f'{platform.system()} {platform.release()}', 'python': platform.python_version(),
      'jax': jax.__version__, 'jax_backend': jax.default_backend(),
      'jax_devices': f'{len(devices)} x {devices[0].device_kind}',
      'load_avg_1m_start': round(os.getloadavg()[0], 2) if hasattr(os, 'getloadavg') else None,
  }
  gpu = ''
  try:
    gpu = subprocess.run(['nvidia-smi', '--query-gpu=name,memory.total', '--format=csv,noheader'],
                         capture_output=True, text=True, timeout=30).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    pass
  if gpu:
    out['gpu'] = gpu.replace('\n', '; ')
  return out


def key_figures(name: str, result: dict[str, Any]) -> dict[str, Any]:
  numeric = {k: v for k, v in result.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)}
  picked: dict[str, Any] = {}
  for pattern in KEY_FIGURES.get(name, []):
    for k, v in numeric.items():
      if re.fullmatch(pattern, k) and k not in picked:
        picked[k] = v
  if not picked:
    picked = dict(list(numeric.items())[:MAX_FIGURES])
  return dict(list(picked.items())[:MAX_FIGURES * 3])


def _fmt(v: Any) -> str:
  if isinstance(v, float):
    if v != v:  # nan
      return 'nan'
    return f'{v:.4g}'
  return str(v)


def run_one(name: str, args: list[str], workdir: str, timeout_s: int) -> dict[str, Any]:
  """Runs one benchmark; returns {ok, seconds, result, error, command, log}."""
  cmd = [sys.executable, '-m', f'experiments.benchmarks.{name}'] + list(args)
  bench_dir = os.path.join(workdir, name)
  if _has_workdir_flag(name):
    cmd.append(f'--workdir={bench_dir}')
  result_path = os.path.join(bench_dir, 'result.json')
  if os.path.exists(result_path):
    os.remove(result_path)  # only this run's result counts
  log_path = os.path.join(workdir, f'{name}.log')
  t0 = time.perf_counter()
  out: dict[str, Any] = {'command': 'python ' + ' '.join(cmd[1:]), 'log': log_path,
                         'result': {}}
  try:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
  except subprocess.TimeoutExpired as e:
    stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or '')
    stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or '')
    rc = None
  out['seconds'] = time.perf_counter() - t0
  with open(log_path, 'w') as f:
    f.write(f'$ {" ".join(cmd)}\n--- stdout\n{stdout}\n--- stderr\n{stderr}')
  if rc is None:
    out.update(ok=False, error=f'timed out after {timeout_s}s')
    return out
  lines = stdout.strip().splitlines()
  result = None
  if lines:
    try:
      result = json.loads(lines[-1])
    except json.JSONDecodeError:
      pass
  if not isinstance(result, dict) and os.path.exists(result_path):
    with open(result_path) as f:
      result = json.load(f)
  if rc != 0:
    tail = [l for l in stderr.strip().splitlines() if l.strip()][-1:] or ['(no stderr)']
    out.update(ok=False, error=f'exit status {rc}: {tail[0][:300]}')
  elif not isinstance(result, dict):
    out.update(ok=False, error='no result: its last stdout line is not a JSON object and it '
               'wrote no result.json')
  else:
    out.update(ok=True, result=result)
  return out


def summary_markdown(size: str, mach: dict[str, Any], runs: dict[str, dict[str, Any]],
                     seconds_total: float) -> str:
  lines = [f'# Benchmarks, size `{size}`', '',
           f'Run {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())} with '
           f'`python -m experiments.benchmarks.all --size={size}`, {seconds_total:.0f} s in all.',
           '', '| machine | |', '|---|---|']
  lines += [f'| {k} | {v} |' for k, v in mach.items()]
  lines += ['', '| benchmark | status | key figures | seconds |', '|---|---|---|---|']
  for name, r in runs.items():
    if r['ok']:
      figs = '; '.join(f'{k} {_fmt(v)}' for k, v in key_figures(name, r['result']).items())
      status = 'ok'
    else:
      figs, status = r['error'].replace('|', '\\|'), 'FAILED'
    lines.append(f'| {name} | {status} | {figs} | {r["seconds"]:.0f} |')
  lines += ['', 'Commands (each log: `<workdir>/<benchmark>.log`):', '']
  lines += [f'- `{r["command"]}`' for r in runs.values()]
  return '\n'.join(lines) + '\n'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  workdir = os.path.abspath(FLAGS.workdir)
  os.makedirs(workdir, exist_ok=True)
  size = FLAGS.size
  names = discover()
  if FLAGS.only:
    unknown = sorted(set(FLAGS.only) - set(names))
    if unknown:
      raise app.UsageError(f'--only: unknown benchmark(s) {unknown}; known: {names}')
    names = [n for n in names if n in FLAGS.only]
  timeout_s = FLAGS.timeout_s or (600 if size == 'small' else 7200)
  mach = machine()
  print('machine: ' + ', '.join(f'{k} {v}' for k, v in mach.items()), flush=True)
  runs: dict[str, dict[str, Any]] = {}
  t_all = time.perf_counter()
  # A line after every benchmark (each takes more than a second): done, rate, ETA.
  meter = progress.Progress('benchmarks', len(names), every_s=1.0,
                            log=lambda s: print(s, flush=True))
  for name in names:
    if name not in SIZES[size]:
      runs[name] = {'ok': False, 'seconds': 0.0, 'result': {}, 'command': '(not run)',
                    'error': f'no --size={size} settings for it in experiments/benchmarks/all.py '
                             'SIZES'}
      print(f'[{name}] FAILED: {runs[name]["error"]}', flush=True)
      meter.update()
      continue
    print(f'[{name}] running: {" ".join(SIZES[size][name])}', flush=True)
    runs[name] = run_one(name, SIZES[size][name], workdir, timeout_s)
    r = runs[name]
    print(f'[{name}] ' + ('ok' if r['ok'] else f'FAILED: {r["error"]}')
          + f' ({r["seconds"]:.0f}s)', flush=True)
    meter.update()
  meter.close()
  seconds_total = time.perf_counter() - t_all
  if hasattr(os, 'getloadavg'):
    mach['load_avg_1m_end'] = round(os.getloadavg()[0], 2)
  text = summary_markdown(size, mach, runs, seconds_total)
  with open(os.path.join(workdir, 'summary.md'), 'w') as f:
    f.write(text)
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump({n: r for n, r in runs.items()}, f, indent=1, sort_keys=True)
  flat: dict[str, Any] = {f'machine/{k}': v for k, v in mach.items()}
  flat.update({'size': size, 'seconds_total': seconds_total,
               'failed': sum(not r['ok'] for r in runs.values()), 'benchmarks': len(runs)})
  for name, r in runs.items():
    flat[f'{name}/ok'] = r['ok']
    flat[f'{name}/seconds'] = r['seconds']
    for k, v in (key_figures(name, r['result']).items() if r['ok'] else ()):
      flat[f'{name}/{k}'] = v
  rundir.write_result(workdir, flat)
  print(text)
  print(json.dumps(flat, sort_keys=True))
  if flat['failed']:
    sys.exit(1)


if __name__ == '__main__':
  define_flags()
  app.run(main)
