"""`python -m experiments.generate --workdir=W` on a tiny trained run: the JSONL batch mode
answers every good line and names every bad one (without stopping), and the interactive mode
is driven through stdin. Both subprocesses share a persistent compilation cache and one batch
size, so the second reuses the first one's compiled programs."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from neo_jax.run import config as config_lib
from neo_jax.run import workdir as workdir_lib
from neo_jax.catalog.splits import user_sequences
from test_generate_workdir import tiny_config, train_tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """One tiny trained workdir (capability stage only) shared by every test and every xdist
  worker of the session: the first to take the lock trains, the others reuse it."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # this session's directory, above every worker's own
  w, cache = root / 'generate_cli_run', root / 'generate_cli_jax_cache'
  cfg = tiny_config()
  cfg.grounding.steps = 0
  cfg = config_lib.validate(cfg)
  with open(root / 'generate_cli.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      if not (w / 'trained').exists():
        shutil.rmtree(w, ignore_errors=True)
        train_tiny(cfg, str(w))
        (w / 'trained').write_text('ok')
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return str(w), cfg, workdir_lib.load_workdir(str(w)), str(cache)


def _generate(run, args, stdin=None):
  w, _, _, cache = run
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  cmd = [sys.executable, '-m', 'experiments.generate', f'--workdir={w}', '--batch_size=4',
         '--max_new_tokens=24'] + args
  return subprocess.run(cmd, cwd=REPO, input=stdin, capture_output=True, text=True,
                        timeout=600, env=env)


def test_batch_answers_good_lines_and_names_bad_ones(run, tmp_path):
  w, cfg, art, _ = run
  cat = art.dataset.catalog
  seqs = user_sequences(art.dataset.interactions)
  users = sorted(seqs)[:3]
  movie = cat.ids[int(cat.items_of_type('movie')[5])]
  good = {
      1: {'task': 'recommend', 'user': users[0], 'type': 'movie', 'format': 'ids', 'k': 5},
      2: {'task': 'recommend', 'user': users[1], 'type': 'book', 'format': 'mixed', 'k': 5,
          'exclude_history': False, 'id': 'r2'},
      4: {'task': 'search', 'query': 'a quiet story', 'type': 'podcast', 'k': 5},
      5: {'task': 'search', 'query': 'strange voyage', 'k': 5},
      7: {'task': 'describe', 'user': users[2]},
      8: {'task': 'explain', 'user': users[0], 'item': movie},
      9: {'prompt': 'Task: recommend. Type: book. Format: mixed. History: none. Answer: '},
  }
  bad = {
      3: ('not json {', 'bad JSON'),
      10: (json.dumps({'task': 'recommend', 'user': 'nobody'}), "unknown user 'nobody'"),
      11: (json.dumps({'task': 'explain', 'user': users[0], 'item': 'no-such'}),
           "unknown item 'no-such'"),
      12: (json.dumps({'task': 'search', 'query': 'x', 'type': 'opera'}),
           "unknown type 'opera'"),
      13: (json.dumps({'task': 'recommend', 'user': users[0], 'format': 'xml'}),
           "unknown format 'xml'"),
      14: (json.dumps({'task': 'dance'}), "unknown task 'dance'"),
      15: (json.dumps({'task': 'explain', 'user': users[0]}), "needs field(s) ['item']"),
      16: (json.dumps({'user': users[0]}), "missing field 'task'"),
      17: (json.dumps({'task': 'describe', 'user': users[0], 'k': 3}), 'do not apply'),
      18: (json.dumps({'task': 'recommend', 'user': users[0], 'k': 0}), "'k' must be"),
      19: (json.dumps([1, 2]), 'must be a JSON object'),
      20: (json.dumps({'task': 'search', 'query': 'x', 'colour': 'red'}), 'unknown field'),
  }
  lines = []
  for n in range(1, 21):
    if n in good:
      lines.append(json.dumps(good[n]))
    elif n in bad:
      lines.append(bad[n][0])
    else:
      lines.append('   ')  # blank: counted, not an error
  src, dst = tmp_path / 'requests.jsonl', tmp_path / 'answers.jsonl'
  src.write_text('\n'.join(lines) + '\n')
  proc = _generate(run, [f'--batch_in={src}', f'--batch_out={dst}'])
  assert proc.returncode == 1, proc.stderr[-3000:]  # some lines were bad
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert (summary['answered'], summary['bad'], summary['blank_lines']) == (7, 12, 1)
  assert not os.path.exists(os.path.join(run[0], 'result.json'))  # nothing written into the run
  answers = {a['line']: a for a in map(json.loads, dst.read_text().splitlines())}
  assert sorted(answers) == sorted(list(good) + list(bad))
  for n, (_, reason) in bad.items():
    assert reason in answers[n]['error'], (n, answers[n])
    assert f'requests.jsonl:{n}: ' in proc.stderr

  def check_items(items, type_name, k, exclude=()):
    assert 1 <= len(items) <= k
    scores = [it['score'] for it in items]
    assert scores == sorted(scores, reverse=True)
    assert [it['rank'] for it in items] == list(range(1, len(items) + 1))
    for it in items:
      row = cat.index_of(it['id'])
      assert it['title'] == cat.titles[row] and it['type'] == cat.type_of(row)
      assert type_name is None or it['type'] == type_name
      assert it['id'] not in exclude
    assert len({it['id'] for it in items}) == len(items)

  a = answers[1]
  history_ids = {cat.ids[r] for r in seqs[users[0]]}
  check_items(a['items'], 'movie', 5, exclude=history_ids)  # the history is excluded
  want_hist = [cat.ids[r] for r in seqs[users[0]][-cfg.tasks.history_len:]]
  assert [h['id'] for h in a['history']] == want_hist
  assert 'Format: ids.' in a['prompt'] and 'text' not in a
  a = answers[2]
  assert a['id'] == 'r2'
  check_items(a['items'], 'book', 5)
  assert 'Format: mixed.' in a['prompt'] and isinstance(a['text'], str)
  for it in a['text_items']:  # what the text names: catalog books (the trie says so)
    assert it['type'] == 'book' and cat.titles[cat.index_of(it['id'])] == it['title']
  check_items(answers[4]['items'], 'podcast', 5)
  a = answers[5]  # no type: every type's prompt, merged by score
  check_items(a['items'], None, 5)
  assert len(a['prompts']) == len(cat.type_names)
  a = answers[7]
  assert 'Task: summarize user. Type: user. Format: text.' in a['prompt']
  assert a['text_items'] == []  # text format: no SID is ever written
  a = answers[8]
  assert a['item']['id'] == movie
  # The allow-list of one: any SID the model writes is that movie.
  assert all(it['id'] == movie for it in a['text_items'])
  assert answers[9]['format'] == 'mixed' and 'text' in answers[9]


def test_interactive_session_through_stdin(run):
  w, _, art, _ = run
  users = sorted(user_sequences(art.dataset.interactions))
  stdin = '\n'.join([
      'help',
      f'recommend user={users[0]} type=movie k=5',
      'search "strange voyage" type=book k=5',
      'recommend user=nobody',
      'recommend me a movie',
      f'describe user={users[1]}',
      'quit',
      'search never reached',
  ]) + '\n'
  proc = _generate(run, [], stdin=stdin)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert 'help, quit' in out and 'explain user=' in out
  assert f'== recommend user={users[0]} type=movie format=ids k=5' in out
  assert "== search 'strange voyage' type=book format=ids k=5" in out
  assert "error: unknown user 'nobody'" in out
  assert "error: recommend takes key=value fields" in out
  assert f'== describe user={users[1]} format=text' in out
  assert 'never reached' not in out
  # Ranked lines show catalog titles and types of the requested type.
  ranked = [l for l in out.splitlines() if re.match(r'\s*\d+\. ', l)]
  assert len(ranked) == 10
  titles = set(art.dataset.catalog.titles)
  for l in ranked:
    title = l.split('. ', 1)[1].rsplit(' (', 1)[0]
    assert eval(title) in titles  # pylint: disable=eval-used  (a repr'd title)
  summary = json.loads(out.strip().splitlines()[-1])
  assert (summary['answered'], summary['errors']) == (3, 2)
  assert np.isfinite(summary['seconds_answer'])
