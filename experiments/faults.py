r"""Fault injection: every stage survives SIGKILL, and damaged files are detected.

  python -m experiments.faults --workdir=W        # every stage (21 kills) and damage case
  python -m experiments.faults --workdir=W --kills=1 --stages=capability,generate \
      --cases=checkpoint_bytes,non_finite_gradient,full_disk     # a bounded run (CI)

Kills. For each stage it runs the stage's command once uninterrupted (the reference, on the
tiny config), then, `--kills` times, starts the same command in a fresh directory, kills its
process group with SIGKILL at a seeded random moment of the stage's window (measured on the
reference, and found again in the killed run by its output: after the same output line, at
most the same seconds later), reruns the same command and checks that the rerun finishes and
that its result equals the reference:
  dataset     build_dataset (generic data): the result's figures and the exported files
  sids        build_sids: the result's figures and the SID codes
  tokenizer, grounding, capability
              train (checkpoints every 1 / 2 steps), killed while preparing (data, SIDs,
              tokenizer) or in a training stage: the identical final losses and figures
  evaluate    evaluate on a copy of the trained reference: the identical figures
  generate    generate --batch_in --resume: every line answered exactly once, the answers
              equal to the reference's
Figures are compared exactly, leaving out timings, paths and resume counters.

Damage (`--cases`), each counted as detected when the documented error or fallback happens
and nothing is lost:
  checkpoint_bytes, checkpoint_truncated
              the newest checkpoint's data bytes overwritten / its metadata truncated:
              loading the model is a one-line error naming it; rerunning training sets it
              aside, resumes from the previous checkpoint and reaches the reference's loss
  sid_map_truncated, tokenizer_truncated
              a one-line error naming the file; rerunning training writes it again
  non_finite_gradient
              an infinite gradient injected after good steps: the stage stops naming the step
              and the last good checkpoint, and no later checkpoint exists
  full_disk   writes that raise ENOSPC (result.json, a batch of answers): an error naming the
              file, the previous result and the lines before intact, a --resume completes

Writes W/result.json: kills, survived, corruptions, detected, seconds, and one
`case/<name>` line per kill and per damage case ('ok: ...' or 'FAILED: ...'); prints a table
and the result object as the last line. Exits with status 1 when anything failed.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable
from unittest import mock

from absl import flags
import numpy as np

from experiments import common
from neo_jax.catalog import atomic

flags.adopt_module_key_flags(common)

STAGES = ('dataset', 'sids', 'tokenizer', 'grounding', 'capability', 'evaluate', 'generate')
CASES = ('checkpoint_bytes', 'checkpoint_truncated', 'sid_map_truncated', 'tokenizer_truncated',
         'non_finite_gradient', 'full_disk')

_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory.', required=True)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the kill moments.')
_KILLS = flags.DEFINE_integer('kills', 3, 'Kills per stage (7 stages: 21 kills by default).')
_STAGES = flags.DEFINE_list('stages', list(STAGES), f'Stages to kill: {", ".join(STAGES)}.')
_CASES = flags.DEFINE_list('cases', list(CASES), f'Damage cases: {", ".join(CASES)}.')
_TIMEOUT = flags.DEFINE_integer('timeout', 900, 'Seconds one command may take.')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--config=experiments/configs/tiny.py']
# Checkpoints often enough that a kill inside a stage resumes from one.
TRAIN = TINY + ['--config.grounding.checkpoint_every=1', '--config.capability.checkpoint_every=2']
REQUESTS = 24  # batch generation: lines of the request file
CHUNK = 4


class Failure(AssertionError):
  """A check of a kill or damage case that did not hold."""


# -- processes ------------------------------------------------------------------------------------

def _cmd(module: str, *args: str) -> list[str]:
  return [sys.executable, '-m', f'experiments.{module}', *args]


def _popen(cmd: list[str], log_path: str, stdout=None) -> subprocess.Popen:
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  log = open(log_path, 'ab')
  log.write(('$ ' + ' '.join(cmd) + '\n').encode())
  log.flush()
  # A session of its own: the kill reaches every process the command started.
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=stdout or log,
                          stderr=subprocess.STDOUT, start_new_session=True)


def run(cmd: list[str], log_path: str, timeout: float) -> tuple[int, list[tuple[float, str]]]:
  """Runs `cmd` to its end: (exit status, [(seconds since start, output line)])."""
  t0 = time.perf_counter()
  p = _popen(cmd, log_path, stdout=subprocess.PIPE)
  lines = []
  with open(log_path, 'a', encoding='utf-8', errors='replace') as log:
    for raw in p.stdout:
      line = raw.decode('utf-8', 'replace')
      lines.append((time.perf_counter() - t0, line.rstrip('\n')))
      log.write(line)
      if time.perf_counter() - t0 > timeout:
        os.killpg(p.pid, signal.SIGKILL)
  return p.wait(), lines


def run_and_kill(cmd: list[str], log_path: str, after_line: int, delay_s: float,
                 timeout: float) -> bool:
  """Starts `cmd` and kills its process group with SIGKILL `delay_s` seconds after it printed
  output line `after_line` (0-based; -1: after the start), or as soon as it prints the next
  line if that comes first; False when it had finished before.

  The moment follows the command's own output, not the clock: a run faster than the
  reference (a warm compilation cache, a faster machine) is killed at the same point of its
  work, between the same two output lines. A command that prints less and then hangs is
  killed after `timeout` seconds in all, and that is a Failure."""
  p = _popen(cmd, log_path, stdout=subprocess.PIPE)
  lines: queue.Queue[str | None] = queue.Queue()

  def read():
    with open(log_path, 'a', encoding='utf-8', errors='replace') as log:
      for raw in p.stdout:
        line = raw.decode('utf-8', 'replace')
        log.write(line)
        log.flush()
        lines.put(line)
    lines.put(None)

  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  seen, t0 = 0, time.perf_counter()
  while seen <= after_line:  # up to and with line `after_line`
    try:
      line = lines.get(timeout=max(timeout - (time.perf_counter() - t0), 0.0))
    except queue.Empty:
      os.killpg(p.pid, signal.SIGKILL)
      _reaped(p, reader)
      raise Failure(f'the command printed {seen} lines, not the {after_line + 1} the kill '
                    f'waits for, within {timeout:.0f}s: {" ".join(cmd)}') from None
    if line is None:
      return _reaped(p, reader)
    seen += 1
  try:
    if lines.get(timeout=delay_s) is None:
      return _reaped(p, reader)
  except queue.Empty:
    pass
  os.killpg(p.pid, signal.SIGKILL)
  _reaped(p, reader)
  with open(log_path, 'a') as log:
    log.write(f'\n### SIGKILL after output line {after_line + 1} (+{delay_s:.2f}s)\n')
  return True


def _reaped(p: subprocess.Popen, reader: threading.Thread) -> bool:
  """Waits for `p` and its output's reader; False (the command was not killed)."""
  p.wait()
  reader.join()
  return False


def _last_line(log_path: str) -> str:
  with open(log_path, encoding='utf-8', errors='replace') as f:
    lines = [l.strip() for l in f if l.strip() and not l.startswith('###')]
  return lines[-1][:160] if lines else ''


# -- comparisons ----------------------------------------------------------------------------------

_VOLATILE = ('second', 'tokens_per_s', 'per_s', 'resumed', 'set_aside')


def comparable(result: dict[str, Any], *dirs: str) -> dict[str, Any]:
  """`result` without what differs between two equal runs: timings, resume counters and
  values naming the run's directories."""
  out = {}
  for k, v in result.items():
    if any(w in k for w in _VOLATILE) or k.startswith('run/'):
      continue
    if isinstance(v, str) and any(d and d in v for d in dirs):
      continue
    out[k] = v
  return out


def _result(workdir: str) -> dict[str, Any]:
  with open(os.path.join(workdir, 'result.json')) as f:
    return json.load(f)


def _diff(a: dict[str, Any], b: dict[str, Any]) -> str:
  keys = sorted(set(a) | set(b))
  bad = [f'{k}: {a.get(k)!r} != {b.get(k)!r}' for k in keys if a.get(k) != b.get(k)]
  return '; '.join(bad[:4]) + (f' (+{len(bad) - 4} more)' if len(bad) > 4 else '')


def _strict_jsonl(path: str) -> list[dict[str, Any]]:
  def refuse(name):
    raise Failure(f'{path}: {name} in the output (not strict JSON)')
  with open(path, encoding='utf-8') as f:
    return [json.loads(l, parse_constant=refuse) for l in f]


def _files_equal(a: str, b: str) -> str:
  """'' when directories `a` and `b` hold the same files with the same bytes, else what
  differs."""
  names = lambda d: sorted(os.path.relpath(p, d) for p in glob.glob(f'{d}/**', recursive=True)
                           if os.path.isfile(p))
  na, nb = names(a), names(b)
  if na != nb:
    return f'files differ: {sorted(set(na) ^ set(nb))[:4]}'
  for n in na:
    with open(os.path.join(a, n), 'rb') as fa, open(os.path.join(b, n), 'rb') as fb:
      if fa.read() != fb.read():
        return f'{n} differs'
  return ''


# -- the stages -----------------------------------------------------------------------------------

class Harness:
  """The reference runs (made once, on first use) and the kill and damage cases."""

  def __init__(self, workdir: str, timeout: float, log: Callable[[str], None] = print):
    self.w = os.path.abspath(workdir)
    self.timeout = timeout
    self.log = log
    self.refs: dict[str, tuple[str, float, list[tuple[float, str]]]] = {}
    os.makedirs(os.path.join(self.w, 'logs'), exist_ok=True)

  def _dir(self, *parts: str) -> str:
    d = os.path.join(self.w, *parts)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(os.path.dirname(d), exist_ok=True)
    return d

  def source(self) -> str:
    """Generic data for the dataset stage: the tiny config's synthetic catalog."""
    path = os.path.join(self.w, 'source')
    if not os.path.exists(os.path.join(path, 'items.jsonl')):
      from experiments.configs import tiny  # pylint: disable=g-import-not-at-top
      from neo_jax.catalog import synthetic  # pylint: disable=g-import-not-at-top
      synthetic.write_synthetic(synthetic.SyntheticConfig(
          **tiny.get_config().data.synthetic.to_dict()), path, overwrite=True)
    return path

  def command(self, stage: str, d: str) -> list[str]:
    """The command of `stage` run in directory `d`."""
    if stage == 'dataset':
      return _cmd('build_dataset', '--dataset=generic', f'--data_dir={self.source()}',
                  f'--workdir={d}')
    if stage == 'sids':
      return _cmd('build_sids', *TINY, f'--workdir={d}')
    if stage in ('tokenizer', 'grounding', 'capability', 'train'):
      return _cmd('train', *TRAIN, f'--workdir={d}')
    if stage == 'evaluate':
      return _cmd('evaluate', *TRAIN, f'--workdir={d}')
    if stage == 'generate':
      return _cmd('generate', f'--workdir={self.trained()}', f'--batch_in={self.requests()}',
                  f'--batch_out={d}/answers.jsonl', '--resume', f'--chunk={CHUNK}',
                  '--batch_size=4', '--max_new_tokens=8')
    raise ValueError(f'unknown stage {stage!r}; known: {STAGES}')

  def prepare(self, stage: str, d: str) -> None:
    """What `stage`'s command needs in `d` before it starts."""
    os.makedirs(os.path.dirname(d), exist_ok=True)
    if stage == 'evaluate':
      shutil.copytree(self.trained(), d)

  def reference(self, stage: str) -> tuple[str, float, list[tuple[float, str]]]:
    """(directory, seconds, timed output lines) of the uninterrupted run of `stage`."""
    key = 'train' if stage in ('tokenizer', 'grounding', 'capability') else stage
    if key not in self.refs:
      d = self._dir('ref', key)
      self.prepare(key, d)
      os.makedirs(d, exist_ok=True)
      t0 = time.perf_counter()
      rc, lines = run(self.command(key, d), os.path.join(self.w, 'logs', f'ref_{key}.log'),
                      self.timeout)
      if not self.finished(key, rc, lines):
        raise Failure(f'the reference run of {key} failed (exit {rc}): '
                      + ' | '.join(l for _, l in lines[-3:]))
      self.refs[key] = (d, time.perf_counter() - t0, lines)
      self.log(f'reference {key}: {self.refs[key][1]:.1f}s')
    return self.refs[key]

  def finished(self, stage: str, rc: int, lines: list[tuple[float, str]]) -> bool:
    """Whether a run of `stage` ended as it should: status 0; for generate, every line
    answered, now or before a kill, and status 1 when this run read the one bad line the
    requests hold on purpose (a NaN id)."""
    if stage != 'generate':
      return rc == 0
    try:
      out = json.loads(lines[-1][1])
    except (IndexError, ValueError):
      return False
    bad = out.get('bad', -1)
    return (bad in (0, 1) and rc == bad and out.get('failed') == 0
            and out.get('answered', 0) + out.get('resumed_lines', 0) + bad == REQUESTS)

  def trained(self) -> str:
    return self.reference('train')[0]

  def requests(self) -> str:
    """REQUESTS JSONL lines for the generate stage (every task, one line with a NaN id)."""
    path = os.path.join(self.w, 'requests.jsonl')
    if not os.path.exists(path):
      from neo_jax.catalog import io as catalog_io  # pylint: disable=g-import-not-at-top
      ds = catalog_io.load_dataset(os.path.join(self.trained(), 'data'))
      users = ds.interactions.user_names
      lines = []
      for n in range(REQUESTS):
        u = users[n % len(users)]
        lines.append(json.dumps([
            {'task': 'recommend', 'user': u, 'k': 5, 'id': n},
            {'task': 'search', 'query': ds.catalog.titles[n], 'k': 3, 'id': n},
            {'task': 'describe', 'user': u, 'id': n}][n % 3]))
      lines[5] = '{"task": "describe", "user": "%s", "id": NaN}' % users[0]
      atomic.write_text(path, '\n'.join(lines) + '\n')
    return path

  def window(self, stage: str) -> tuple[float, float]:
    """The seconds of the reference run during which `stage` runs: for the training parts,
    from the output line that starts it to the one that starts the next."""
    _, seconds, lines = self.reference(stage)
    if stage not in ('tokenizer', 'grounding', 'capability'):
      return 0.1 * seconds, 0.95 * seconds

    def first(marker):
      return next((t for t, l in lines if marker in l), None)

    g, c = first('[grounding]'), first('[capability]')
    if g is None or c is None:
      raise Failure('the reference training printed no [grounding] / [capability] lines')
    return {'tokenizer': (0.3 * g, 0.97 * g), 'grounding': (g, c),
            'capability': (c, 0.97 * seconds)}[stage]

  def check(self, stage: str, d: str) -> str:
    """What the rerun in `d` did differently from the reference ('' when nothing)."""
    ref = self.reference(stage)[0]
    if stage == 'generate':
      want = sorted(map(json.dumps, _strict_jsonl(os.path.join(ref, 'answers.jsonl'))))
      got_records = _strict_jsonl(os.path.join(d, 'answers.jsonl'))
      lines = [r['line'] for r in got_records]
      if len(lines) != len(set(lines)):
        return f'lines answered twice: {sorted(n for n in set(lines) if lines.count(n) > 1)}'
      got = sorted(map(json.dumps, got_records))
      return '' if got == want else f'{len(set(want) ^ set(got))} answers differ'
    diff = _diff(comparable(_result(ref), ref, self.w), comparable(_result(d), d, self.w))
    if diff:
      return diff
    if stage == 'dataset':
      return _files_equal(os.path.join(ref, 'data'), os.path.join(d, 'data'))
    if stage == 'sids':
      sha = lambda w: json.load(open(os.path.join(w, 'sids', 'sid_map', 'sid_map.json')))[
          'codes_sha256']
      return '' if sha(ref) == sha(d) else 'SID codes differ'
    return ''

  def kill_case(self, stage: str, n: int, rng: np.random.Generator) -> tuple[bool, str]:
    """(killed, '' or what failed): one kill of `stage` and the rerun."""
    lo, hi = self.window(stage)
    d = self._dir('kills', f'{stage}_{n}')
    self.prepare(stage, d)
    log_path = os.path.join(self.w, 'logs', f'kill_{stage}_{n}.log')
    ref_lines = self.reference(stage)[2]
    for _ in range(3):  # a run that prints less than the reference may end first: kill earlier
      at = float(rng.uniform(lo, hi))
      # The reference's last output line before `at`, and the seconds after it.
      i = sum(t <= at for t, _ in ref_lines) - 1
      delay = at - (ref_lines[i][0] if i >= 0 else 0.0)
      if run_and_kill(self.command(stage, d), log_path, i, delay, self.timeout):
        where = f'after output line {i + 1} (+{delay:.1f}s at most; the reference\'s {at:.1f}s)'
        break
      lo, hi = lo / 2, hi / 2
    else:
      return False, 'the command finished before every kill moment'
    at_line = _last_line(log_path)
    rc, lines = run(self.command(stage, d), log_path, self.timeout)
    if not self.finished(stage, rc, lines):
      return True, (f'FAILED: killed {where} ({at_line!r}); the rerun failed (exit {rc}): '
                    + ' | '.join(l for _, l in lines[-2:]))
    failed = self.check(stage, d)
    return True, (f'FAILED: killed {where} ({at_line!r}); {failed}' if failed else
                  f'ok: killed {where} ({at_line!r}), the rerun equals the reference')


# -- damage ---------------------------------------------------------------------------------------

def _flip(path: str) -> None:
  raw = bytearray(open(path, 'rb').read())
  for i in range(len(raw) // 3, len(raw) // 3 + 16):
    raw[i] ^= 0xFF
  open(path, 'wb').write(bytes(raw))


def _truncate(path: str) -> None:
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def _last_checkpoint(w: str) -> str:
  ckpt = os.path.join(w, 'neo_multi', 'checkpoints', 'capability')
  return os.path.join(ckpt, str(max(int(s) for s in os.listdir(ckpt) if s.isdigit())))


def damage_case(h: Harness, case: str) -> str:
  """'ok: ...' when the damage of `case` was detected and handled as documented, else
  'FAILED: ...'."""
  if case == 'non_finite_gradient':
    return non_finite_gradient(os.path.join(h._dir('damage', case)))
  if case == 'full_disk':
    return full_disk(h, h._dir('damage', case))
  d = h._dir('damage', case)
  shutil.copytree(h.trained(), d)
  ckpt = _last_checkpoint(d)
  target, expect = {
      # Every data file: parameters and optimizer state may live in different ones, and a
      # reload reads the parameters only.
      'checkpoint_bytes': (lambda: sorted(glob.glob(f'{ckpt}/default/**/d/*', recursive=True)),
                           'checkpoint is damaged'),
      'checkpoint_truncated': (lambda: f'{ckpt}/default/_METADATA', 'checkpoint is damaged'),
      'sid_map_truncated': (lambda: f'{d}/sids/sid_map/sid_map.npz', 'sid_map.npz'),
      'tokenizer_truncated': (lambda: f'{d}/tokenizer/spm.model', 'spm.model'),
  }[case]
  paths = target()
  paths = paths if isinstance(paths, list) else [paths]
  for path in paths:
    (_flip if case == 'checkpoint_bytes' else _truncate)(path)
  log_path = os.path.join(h.w, 'logs', f'damage_{case}.log')
  probe = _cmd('generate', f'--workdir={d}', '--max_new_tokens=4')
  p = subprocess.run(probe, cwd=REPO, input='describe user=u0\nquit\n', capture_output=True,
                     text=True, timeout=h.timeout)
  with open(log_path, 'a') as f:
    f.write(p.stdout + p.stderr)
  errors = [l for l in p.stderr.splitlines() if l.startswith('error: ')]
  if p.returncode != 1 or len(errors) != 1 or expect not in errors[0]:
    return f'FAILED: loading a run with a damaged {os.path.relpath(paths[0], d)} gave exit ' \
           f'{p.returncode}, not one error line naming {expect!r}: {p.stderr[-300:]!r}'
  rc, lines = run(h.command('train', d), log_path, h.timeout)
  text = '\n'.join(l for _, l in lines)
  if rc != 0:
    return f'FAILED: rerunning training after the damage failed (exit {rc})'
  if case.startswith('checkpoint') and 'cannot be restored' not in text:
    return 'FAILED: training did not report the damaged checkpoint'
  ref = _result(h.trained())['final_loss']
  if _result(d)['final_loss'] != ref:
    return f'FAILED: final loss {_result(d)["final_loss"]} != the reference {ref}'
  p = subprocess.run(probe, cwd=REPO, input='describe user=u0\nquit\n', capture_output=True,
                     text=True, timeout=h.timeout)
  if p.returncode != 0:
    return f'FAILED: the run does not load after the rerun: {p.stderr[-300:]!r}'
  return (f'ok: {errors[0][7:120]}...; the training rerun '
          + ('set the checkpoint aside, resumed from the previous one' if case.startswith(
              'checkpoint') else 'wrote it again') + ' and reached the reference loss')


def non_finite_gradient(d: str) -> str:
  """A tiny model trains 3 good steps (a checkpoint each), then its logits' gradient is made
  infinite (the loss stays finite): the stage must stop at step 4 naming checkpoint 3, and
  checkpoint 3 must hold the good parameters."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from neo_jax.model.config import get_config  # pylint: disable=g-import-not-at-top
  from neo_jax.model.decoder import Decoder  # pylint: disable=g-import-not-at-top
  from neo_jax.train import loop  # pylint: disable=g-import-not-at-top
  from neo_jax.train.data import PackedData  # pylint: disable=g-import-not-at-top

  @jax.custom_vjp
  def scaled(x, s):
    return x

  scaled.defvjp(lambda x, s: (x, s), lambda s, g: (g * s, jnp.zeros_like(s)))

  class Scaled(nnx.Module):
    def __init__(self, seed, scale):
      self.inner = Decoder(get_config('tiny', vocab_size=64, d_model=32, num_layers=1,
                                      num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64),
                           rngs=nnx.Rngs(seed))
      self.scale = nnx.Variable(jnp.float32(scale))

    def __call__(self, tokens, positions, segment_ids):
      return scaled(self.inner(tokens, positions, segment_ids), self.scale.get_value())

  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 64, (16, 16)).astype(np.int32)
  data = PackedData(tokens, np.ones_like(tokens), np.tile(np.arange(16, dtype=np.int32), (16, 1)),
                    np.ones(tokens.shape, bool), 4, 0, {})
  settings = lambda steps: loop.StageSettings(
      steps=steps, learning_rate=1e-2, warmup_steps=1, b1=0.9, b2=0.95, weight_decay=0.0,
      clip_norm=1.0, log_every=100, checkpoint_every=1)
  good = Scaled(0, 1.0)
  loop.train_stage(good, data, settings(3), name='s', workdir=d, log=lambda s: None)
  try:
    loop.train_stage(Scaled(1, float('inf')), data, settings(6), name='s', workdir=d,
                     log=lambda s: None)
  except loop.NonFiniteLossError as e:
    msg = str(e)
  else:
    return 'FAILED: an infinite gradient did not stop the stage'
  steps = sorted(int(s) for s in os.listdir(os.path.join(d, 'checkpoints', 's')) if s.isdigit())
  if not ('at step 4' in msg and 'last good checkpoint: step 3' in msg and steps[-1] == 3):
    return f'FAILED: {msg!r}; checkpoints {steps}'
  again = Scaled(2, 1.0)
  loop.train_stage(again, data, settings(3), name='s', workdir=d, log=lambda s: None)
  same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(nnx.state(good, nnx.Param)),
                                                  jax.tree.leaves(nnx.state(again, nnx.Param))))
  if not same:
    return 'FAILED: the last good checkpoint does not hold the good parameters'
  return f'ok: {msg[:110]}...; no later checkpoint, the last good one restores'


@contextlib.contextmanager
def _full_disk_after(n_writes: int):
  """`os.write` fails with ENOSPC after `n_writes` calls (the one that fails writes half)."""
  real, calls = os.write, []

  def write(fd, data):
    calls.append(fd)
    if len(calls) > n_writes:
      real(fd, bytes(data)[:len(data) // 2])
      raise OSError(errno.ENOSPC, 'No space left on device')
    return real(fd, data)

  with mock.patch('os.write', write):
    yield


def full_disk(h: Harness, d: str) -> str:
  """ENOSPC while rewriting a result.json and while appending a batch of answers."""
  from neo_jax.run import rundir  # pylint: disable=g-import-not-at-top
  from neo_jax.run import serving  # pylint: disable=g-import-not-at-top
  from neo_jax.run import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  os.makedirs(d, exist_ok=True)
  rundir.write_result(d, {'figure': 1.0})
  before = open(os.path.join(d, 'result.json')).read()
  try:
    with _full_disk_after(0):
      rundir.write_result(d, {'figure': 2.0, 'more': list(range(100))})
    return 'FAILED: a full disk did not raise while writing result.json'
  except OSError as e:
    if e.errno != errno.ENOSPC or 'result.json' not in str(e):
      return f'FAILED: the error does not name result.json: {e}'
  if open(os.path.join(d, 'result.json')).read() != before or len(os.listdir(d)) != 1:
    return f'FAILED: result.json changed or a temporary was left: {os.listdir(d)}'
  trained = workdir_lib.load_run(h.trained())
  svc = serving.Service(trained.artifacts, prompt_len=int(trained.config.train.seq_len) - 8,
                        history_len=int(trained.config.tasks.history_len), batch_size=4,
                        max_new_tokens=8)
  out = os.path.join(d, 'answers.jsonl')
  try:
    with _full_disk_after(1):
      serving.answer_file(svc, h.requests(), out, chunk=CHUNK, log=lambda s: None)
    return 'FAILED: a full disk did not raise while appending answers'
  except OSError as e:
    if e.errno != errno.ENOSPC or 'answers.jsonl' not in str(e):
      return f'FAILED: the error does not name the answer file: {e}'
  kept = _strict_jsonl(out)
  serving.answer_file(svc, h.requests(), out, chunk=CHUNK, resume=True, log=lambda s: None)
  lines = [r['line'] for r in _strict_jsonl(out)]
  if len(lines) != REQUESTS or len(set(lines)) != REQUESTS:
    return f'FAILED: after --resume {len(lines)} records for {REQUESTS} lines'
  return (f'ok: result.json kept, the error names it; {len(kept)} whole answer lines kept, '
          '--resume answered the rest once each')


# -- main -----------------------------------------------------------------------------------------

def faults(workdir: str, *, seed: int, kills: int, stages: list[str], cases: list[str],
           timeout: float, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs the kill and damage cases; returns the result object (module docstring)."""
  for s in stages:
    if s not in STAGES:
      raise ValueError(f'unknown stage {s!r}; known: {STAGES}')
  for c in cases:
    if c not in CASES:
      raise ValueError(f'unknown case {c!r}; known: {CASES}')
  t0 = time.perf_counter()
  h = Harness(workdir, timeout, log)
  rng = np.random.default_rng(seed)
  result: dict[str, Any] = {'kills': 0, 'survived': 0, 'corruptions': 0, 'detected': 0}
  for stage in stages:
    for n in range(kills):
      try:
        killed, line = h.kill_case(stage, n, rng)
      except Exception as e:  # pylint: disable=broad-except
        killed, line = False, f'FAILED: {type(e).__name__}: {e}'
        result['kills'] += 1  # counted as a kill that was not survived
      result['kills'] += killed
      result['survived'] += killed and line.startswith('ok')
      result[f'case/kill/{stage}/{n}'] = line if line.startswith(('ok', 'FAILED')) else (
          'FAILED: ' + line)
      log(f'kill {stage} {n}: {result[f"case/kill/{stage}/{n}"]}')
  for case in cases:
    try:
      line = damage_case(h, case)
    except Exception as e:  # pylint: disable=broad-except
      line = f'FAILED: {type(e).__name__}: {e}'
    result['corruptions'] += 1
    result['detected'] += line.startswith('ok')
    result[f'case/damage/{case}'] = line
    log(f'damage {case}: {line}')
  result['seconds'] = time.perf_counter() - t0
  result['seed'] = seed
  return result


def table(result: dict[str, Any]) -> str:
  rows = ['| case | outcome |', '|---|---|']
  rows += [f'| {k[5:]} | {str(v).replace("|", "/")} |' for k, v in sorted(result.items())
           if k.startswith('case/')]
  rows.append(f'\nkills {result["kills"]}, survived {result["survived"]}; corruptions '
              f'{result["corruptions"]}, detected {result["detected"]}; '
              f'{result["seconds"]:.0f} s')
  return '\n'.join(rows)


def main(argv):
  common.start(argv)
  result = faults(_WORKDIR.value, seed=_SEED.value, kills=_KILLS.value, stages=_STAGES.value,
                  cases=_CASES.value, timeout=_TIMEOUT.value,
                  log=lambda s: print(s, file=sys.stderr, flush=True))
  atomic.write_json(os.path.join(_WORKDIR.value, 'result.json'), result, indent=1,
                    sort_keys=True)
  print(table(result))
  print(atomic.dumps(result, sort_keys=True))
  if result['survived'] != result['kills'] or result['detected'] != result['corruptions']:
    sys.exit(1)


if __name__ == '__main__':
  common.run(main)
