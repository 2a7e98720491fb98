"""Fresh items through the serving path (`run.serving.Service`, `experiments.generate
--workdir`): a Service built on a run answers from its current catalog (items added and
withdrawn by `experiments.add_items`), requests take `allow` / `added_since`, a running
Service follows a newer catalog version (`reload_catalog`; before each batch chunk) without
recompiling its beam search, and `explain` refuses a withdrawn item."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import jax
import pytest

from jit_compiles import compiled
from neo_jax.run import catalog_update as cu
from neo_jax.run import serving
from neo_jax.run import workdir as workdir_lib
# The fixtures `trained` (a tiny run trained once per module) and `run` (a copy per test).
from test_fresh_items_update import NEW_ITEMS, run, trained, write_items  # pylint: disable=unused-import

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEW_IDS = [o['id'] for o in NEW_ITEMS]


def service(w, batch_size=4):
  loaded = workdir_lib.load_run(w)
  cfg = loaded.config
  return serving.Service(loaded.artifacts, prompt_len=cfg.train.seq_len - 8,
                         history_len=cfg.tasks.history_len, batch_size=batch_size,
                         max_new_tokens=12, catalog_base=cu.base_of(loaded))


def test_service_serves_in_the_chosen_precision(trained):
  """A Service ranks in `dtype` ('auto', the default: bfloat16 on a CPU, or float32), and a
  bad precision is refused by name."""
  loaded = workdir_lib.load_run(trained)
  cfg = loaded.config
  answers = {}
  cpu = jax.default_backend() == 'cpu'
  for dtype, want in (('auto', 'bfloat16' if cpu else None), ('float32', 'float32')):
    svc = serving.Service(loaded.artifacts, prompt_len=cfg.train.seq_len - 8,
                          history_len=cfg.tasks.history_len, batch_size=4, max_new_tokens=12,
                          dtype=dtype)
    assert svc.ranker.dtype == want
    assert svc.ranker.unroll_layers == (want == 'bfloat16' and cpu)
    req = svc.parse({'task': 'recommend', 'user': next(iter(svc.histories)), 'type': 'movie',
                     'k': 3})
    answers[dtype] = svc.answer([req])[0]
  assert len(answers['auto']['items']) == len(answers['float32']['items']) == 3
  with pytest.raises(ValueError, match='serving precision'):
    serving.Service(loaded.artifacts, prompt_len=cfg.train.seq_len - 8,
                    history_len=cfg.tasks.history_len, dtype='half')


def ids_of(ans):
  return [it['id'] for it in ans['items']]


def test_service_answers_from_the_updated_catalog_with_allow_lists(run, tmp_path):
  cu.add_items(run, write_items(tmp_path / 'new.jsonl', NEW_ITEMS), added_at=1000)
  cu.remove_items(run, ['movie-new-2'], removed_at=2000)
  svc = service(run)
  assert svc.catalog_facts() == {'version': 'v000002', 'items': 123, 'added': 3, 'removed': 1,
                                 'live_items': int(svc.state.live().sum())}
  user = next(iter(svc.histories))
  reqs = [
      # its own title, restricted to the new items by id: a new item of its type.
      {'task': 'search', 'query': NEW_ITEMS[0]['title'], 'type': 'movie', 'k': 3,
       'allow': NEW_IDS},
      # the new releases as a date (ISO, UTC): the live new movie only (movie-new-2 withdrawn).
      {'task': 'recommend', 'user': user, 'type': 'movie', 'k': 3,
       'added_since': '1970-01-01T00:16:40'},
      {'task': 'recommend', 'user': user, 'type': 'book', 'k': 3, 'added_since': 1000},
      # nothing admissible: no item answered (and said so), not an error.
      {'task': 'recommend', 'user': user, 'type': 'movie', 'k': 3, 'added_since': 1001},
      {'task': 'search', 'query': 'mystery', 'k': 5, 'allow': 'movie-new-1, book-new-1'},
      # unrestricted: the new item is in the catalog the ranking runs over.
      {'task': 'search', 'query': NEW_ITEMS[0]['title'], 'type': 'movie', 'k': 100},
      {'task': 'prompt', 'prompt': 'Task: recommend. Type: book. Format: mixed. History: none. '
                                   'Answer: ', 'allow': ['book-new-1'], 'format': 'ids'},
  ]
  out = svc.answer([svc.parse(r) for r in reqs])
  assert ids_of(out[0]) == ['movie-new-1'] and out[0]['allow'] == NEW_IDS
  assert out[0]['allowed_items'] == 2  # the withdrawn one is not admitted
  assert ids_of(out[1]) == ['movie-new-1'] and out[1]['allowed_items'] == 2
  assert ids_of(out[2]) == ['book-new-1']
  assert out[3]['items'] == [] and out[3]['allowed_items'] == 0
  assert 'none (no admissible item)' in serving.format_answer(out[3])
  assert sorted(ids_of(out[4])) == ['book-new-1', 'movie-new-1']
  movies = {svc.catalog.ids[r] for r in svc.catalog.items_of_type('movie')
            if svc.state.live()[r]}
  assert set(ids_of(out[5])) == movies and 'movie-new-1' in movies
  assert 'movie-new-2' not in movies
  assert {it['id'] for it in out[6]['text_items']} <= {'book-new-1'}

  for bad, reason in [
      ({'task': 'search', 'query': 'x', 'allow': ['movie-new-1', 'nope']}, 'unknown item ids'),
      ({'task': 'search', 'query': 'x', 'allow': []}, "'allow' must be a non-empty list"),
      ({'task': 'search', 'query': 'x', 'allow': [1.5]}, 'item ids are strings'),
      ({'task': 'search', 'query': 'x', 'added_since': 'yesterday'}, 'neither unix seconds'),
      ({'task': 'search', 'query': 'x', 'added_since': True}, "'added_since' must be"),
      ({'task': 'describe', 'user': user, 'allow': NEW_IDS}, 'do not apply to task'),
      ({'task': 'explain', 'user': user, 'item': 'movie-new-2'}, 'was withdrawn'),
  ]:
    with pytest.raises(serving.RequestError, match=reason):
      svc.parse(bad)
  explain = svc.answer([svc.parse({'task': 'explain', 'user': user, 'item': 'movie-new-1'})])
  assert explain[0]['item']['id'] == 'movie-new-1'
  # The command form takes both fields too.
  req = svc.parse_command('search "gardening" allow=movie-new-1,book-new-1 added_since=1000')
  assert req.allowed == tuple(svc.catalog.index_of(i) for i in ('movie-new-1', 'book-new-1'))


def test_reload_follows_add_and_remove_without_recompiling(run, tmp_path):
  svc = service(run)
  old = [svc.catalog.ids[r] for r in svc.catalog.items_of_type('movie')[:3]]
  probe = {'task': 'search', 'query': 'gardening mystery', 'type': 'movie', 'k': 3}
  first = svc.answer([svc.parse({**probe, 'allow': old})])
  assert sorted(ids_of(first[0])) == sorted(old)
  with compiled() as unchanged:  # the same request again, the catalog unchanged
    svc.answer([svc.parse({**probe, 'allow': old[::-1]})])
  assert not svc.catalog_changed()

  cu.add_items(run, write_items(tmp_path / 'new.jsonl', NEW_ITEMS), added_at=1000)
  assert svc.catalog_changed()
  with pytest.raises(serving.RequestError, match='unknown item ids'):
    svc.parse({**probe, 'allow': NEW_IDS[:2]})  # not seen before the reload
  facts = svc.reload_catalog()
  assert facts == {'version': 'v000001', 'added': 3, 'removed': 0, 'grown': 0, 'items': 123,
                   'live_items': 123}
  with compiled() as after_add:
    out = svc.answer([svc.parse({**probe, 'allow': NEW_IDS[:2] + old[:1]}),
                      svc.parse({**probe, 'added_since': 1000})])
  assert sorted(ids_of(out[0])) == sorted(NEW_IDS[:2] + old[:1])
  assert sorted(ids_of(out[1])) == NEW_IDS[:2]

  cu.remove_items(run, ['movie-new-1', old[0]])
  assert svc.reload_catalog()['removed'] == 2
  with compiled() as after_remove:  # three live items admitted, as before: the same shapes
    out = svc.answer([svc.parse({**probe, 'allow': NEW_IDS[:2] + old})])
  assert sorted(ids_of(out[0])) == sorted(['movie-new-2'] + old[1:])
  out = svc.answer([svc.parse({**probe, 'allow': NEW_IDS[:2] + old[:1]})])
  assert ids_of(out[0]) == ['movie-new-2'] and out[0]['allowed_items'] == 1
  with pytest.raises(serving.RequestError, match='was withdrawn'):
    svc.parse({'task': 'explain', 'user': next(iter(svc.histories)), 'item': old[0]})
  # The catalog changed, the compiled programs did not: answering after a reload compiles no
  # function that answering the same request again without a change does not compile
  # (none, for a ranker that reuses its programs).
  assert set(after_add) <= set(unchanged) and set(after_remove) <= set(unchanged), (
      unchanged, after_add, after_remove)
  assert not svc.catalog_changed()


def test_answer_file_reloads_the_catalog_before_a_chunk(run, tmp_path):
  svc = service(run)
  reqs = [{'task': 'search', 'query': 'mystery', 'type': 'movie', 'k': 2}] * 2 + [
      {'task': 'search', 'query': 'mystery', 'type': 'movie', 'k': 2, 'allow': NEW_IDS[:2]}]
  src = tmp_path / 'in.jsonl'
  src.write_text(''.join(json.dumps(r) + '\n' for r in reqs))
  items = write_items(tmp_path / 'new.jsonl', NEW_ITEMS)
  lines = []

  def log(line):  # the items arrive while the first chunk is being written
    lines.append(line)
    if line.startswith('answered') and len(lines) == 1:
      cu.add_items(run, items)

  counts = serving.answer_file(svc, str(src), str(tmp_path / 'out.jsonl'), chunk=2,
                               follow_catalog=True, log=log)
  assert counts['catalog_reloads'] == 1 and counts['catalog_version'] == 'v000001'
  assert counts['answered'] == 3 and counts['bad'] == 0
  assert any(l.startswith('catalog reloaded: version v000001, 3 added') for l in lines)
  recs = [json.loads(l) for l in open(tmp_path / 'out.jsonl')]
  assert sorted(ids_of(recs[2])) == NEW_IDS[:2]


def _generate(w, args, **kw):
  cmd = [sys.executable, '-m', 'experiments.generate', f'--workdir={w}', '--batch_size=4',
         '--max_new_tokens=8'] + args
  return subprocess.Popen(cmd, cwd=ROOT, text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'),
                          **kw)


def _until(proc, pattern):
  """stdout lines of the interactive process up to one matching `pattern`."""
  seen = []
  while True:
    line = proc.stdout.readline()
    assert line, 'generate ended early: ' + ''.join(seen)[-2000:]
    seen.append(line)
    if re.search(pattern, line):
      return ''.join(seen)


def test_generate_batch_and_interactive_see_added_and_withdrawn_items(run, tmp_path):
  cu.add_items(run, write_items(tmp_path / 'new.jsonl', NEW_ITEMS), added_at=1000)
  cu.remove_items(run, ['movie-new-2'])
  svc = service(run)
  user = next(iter(svc.histories))
  reqs = []
  for o in NEW_ITEMS:  # per new item: its title, and a recommendation of the new releases
    reqs.append({'task': 'search', 'query': o['title'], 'type': o['type'], 'k': 10})
    reqs.append({'task': 'recommend', 'user': user, 'type': o['type'], 'k': 5,
                 'added_since': 1000})
  reqs.append({'task': 'explain', 'user': user, 'item': 'movie-new-2'})
  src = tmp_path / 'in.jsonl'
  src.write_text(''.join(json.dumps(r) + '\n' for r in reqs))
  out = tmp_path / 'out.jsonl'
  proc = _generate(run, [f'--batch_in={src}', f'--batch_out={out}'],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  stdout, stderr = proc.communicate(timeout=900)
  assert proc.returncode == 1, stderr[-2000:]  # the explain of a withdrawn item is a bad line
  res = json.loads(stdout.strip().splitlines()[-1])
  assert (res['catalog/version'], res['catalog/added'], res['catalog/removed']) == (
      'v000002', 3, 1)
  assert res['answered'] == 6 and res['bad'] == 1
  recs = [json.loads(l) for l in open(out)]
  live = {svc.catalog.ids[r] for r in range(len(svc.catalog)) if svc.state.live()[r]}
  for rec in recs[:6]:
    assert set(ids_of(rec)) <= live and 'movie-new-2' not in ids_of(rec)
    assert all(it['type'] == rec['type'] for it in rec['items'])
  for rec in recs[1:6:2]:  # restricted: the live new items of the asked type, all of them
    assert set(ids_of(rec)) == {i for i in ('movie-new-1', 'book-new-1')
                                if i.startswith(rec['type'])}
  assert 'was withdrawn' in recs[6]['error']

  # Interactive: a change made while it runs is seen after `reload`.
  proc = _generate(run, [], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                   stderr=subprocess.DEVNULL)
  try:
    proc.stdin.write('search mystery type=movie allow=movie-new-1,movie-0 k=2\n')
    proc.stdin.flush()
    text = _until(proc, r'^\(\d+\.\d+s\)$')
    assert 'Catalog version v000002: 3 items added, 1 withdrawn' in text
    assert "id movie-new-1)" in text
    cu.add_items(run, write_items(tmp_path / 'more.jsonl', [
        {'id': 'movie-new-3', 'type': 'movie', 'title': 'Gardening at Night'}]))
    proc.stdin.write('reload\n')
    proc.stdin.flush()
    assert '1 added, 0 withdrawn' in _until(proc, r'catalog version v000003')
    proc.stdin.write('search gardening type=movie allow=movie-new-3 k=2\n')
    proc.stdin.flush()
    assert 'id movie-new-3)' in _until(proc, r'^\(\d+\.\d+s\)$')
    proc.stdin.close()
    res = json.loads(proc.stdout.read().strip().splitlines()[-1])
    assert proc.wait(timeout=120) == 0
  finally:
    proc.kill()
  assert res['catalog_reloads'] == 1 and res['catalog/version'] == 'v000003'
  assert res['answered'] == 2 and res['errors'] == 0
