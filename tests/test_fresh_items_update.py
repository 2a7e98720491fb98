"""Adding and withdrawing items of a trained run (experiments.add_items, run/catalog_update):
the new items are found and recommended at once by the trained model, a withdrawn item is
unreachable at once, a running ranker follows without recompiling, and a killed command leaves
the run loadable and unchanged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from experiments.configs import tiny
from jit_compiles import compiled
from neo_jax.run import catalog_update as cu
from neo_jax.run import experiment
from neo_jax.run import workdir as workdir_lib
from neo_jax.run.serving import Service
from neo_jax.tasks import prompts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NEW_ITEMS = [
    {'id': 'movie-new-1', 'type': 'movie', 'title': 'The Gardening Detective Returns',
     'description': 'A mystery about gardening and airport.', 'tags': ['mystery']},
    {'id': 'movie-new-2', 'type': 'movie', 'title': 'Sitcom City, Part 3',
     'description': 'A wandering film about punchline and comedian.', 'tags': ['comedy']},
    {'id': 'book-new-1', 'type': 'book', 'title': 'Classical Music for Beginners',
     'tags': ['music']},
]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A tiny run trained once (train only), copied by each test that changes it."""
  w = str(tmp_path_factory.mktemp('fresh') / 'run')
  experiment.run_experiment(tiny.get_config(), w, log=lambda _: None, train_only=True)
  return w


@pytest.fixture()
def run(trained, tmp_path):
  w = str(tmp_path / 'run')
  shutil.copytree(trained, w)
  return w


def write_items(path, items):
  with open(path, 'w') as f:
    for obj in items:
      f.write(json.dumps(obj) + '\n')
  return str(path)


def snapshot(w):
  """Every file under the run (path -> bytes), the update folder's lock file aside."""
  out = {}
  for root, _, files in os.walk(w):
    for name in files:
      p = os.path.join(root, name)
      if name != 'LOCK':
        with open(p, 'rb') as f:
          out[os.path.relpath(p, w)] = f.read()
  return out


def service_of(w):
  loaded = workdir_lib.load_run(w)
  state = cu.load_state(cu.load_base(w))
  art = cu.apply_to_artifacts(loaded.artifacts, state)
  cfg = loaded.config
  svc = Service(art, prompt_len=cfg.train.seq_len - 8, history_len=cfg.tasks.history_len,
                batch_size=4)
  return svc, state


def search_prompt(svc, title, type_name):
  return prompts.render_prompt('search', type_name, 'ids', 0, prompts.plain_text(title))


def test_added_items_are_searchable_and_recommendable_at_once(run, tmp_path):
  before = cu.load_state(cu.load_base(run))
  out = cu.add_items(run, write_items(tmp_path / 'new.jsonl', NEW_ITEMS), added_at=1000)
  assert out['added'] == 3 and out['catalog_items'] == len(before.catalog) + 3
  svc, state = service_of(run)
  new_rows = [state.catalog.index_of(o['id']) for o in NEW_ITEMS]
  assert new_rows == list(range(len(before.catalog), len(before.catalog) + 3))
  # Every new item has an SID of its type within the level sizes, distinct from all others.
  codes = state.sid_map.codes
  assert len({(int(state.sid_map.type_index[r]),) + tuple(codes[r]) for r in
              range(len(codes))}) == len(codes)
  # Restricted to the new items (by date and by ids), rankings hold new items only.
  allow = cu.allowed_rows(state, added_since=1000)
  assert allow == new_rows == cu.allowed_rows(state, ids=[o['id'] for o in NEW_ITEMS])
  assert cu.allowed_rows(state, added_since=1001) == []
  titles = [o['title'] for o in NEW_ITEMS]
  types = [o['type'] for o in NEW_ITEMS]
  ps = [search_prompt(svc, t, ty) for t, ty in zip(titles, types)]
  items, _ = svc.ranker.rank(ps, types, 5, allowed=[allow] * 3)
  for b, row in enumerate(items):
    got = [int(i) for i in row if i >= 0]
    assert got and set(got) <= set(allow)
    assert all(state.catalog.type_of(i) == types[b] for i in got)
  user = next(iter(svc.histories))
  rec = svc.prompt_of(svc.parse({'task': 'recommend', 'user': user, 'type': 'movie'}))
  items, _ = svc.ranker.rank([rec], ['movie'], 4, allowed=[allow])
  assert sorted(int(i) for i in items[0] if i >= 0) == new_rows[:2]
  # Unrestricted: every answer is a live catalog item (a valid SID), new ones included.
  items, _ = svc.ranker.rank(ps, [None] * 3, len(state.catalog) + 5)
  for row in items:
    got = {int(i) for i in row if i >= 0}
    assert got == set(np.flatnonzero(state.live()).tolist())


def test_withdrawn_item_is_unreachable_and_a_running_ranker_follows_without_recompiling(
    run, tmp_path):
  svc, before = service_of(run)
  ranker = svc.ranker
  probe = [search_prompt(svc, 'gardening mystery', 'movie')]
  movies = np.flatnonzero(before.catalog.type_index
                          == before.catalog.type_names.index('movie')).tolist()
  items, _ = ranker.rank(probe, ['movie'], 8, allowed=[movies[:6]])
  with compiled() as unchanged:  # the same request again, nothing changed
    ranker.rank(probe, ['movie'], 8, allowed=[movies[:6][::-1]])
  cu.add_items(run, write_items(tmp_path / 'new.jsonl', NEW_ITEMS))
  mid = cu.load_state(cu.load_base(run))
  victim = int(items[0][0])  # the best movie: withdraw it
  new_movie = mid.catalog.index_of('movie-new-1')
  cu.remove_items(run, [before.catalog.ids[victim], 'movie-new-2'])
  after = cu.load_state(cu.load_base(run))
  facts = cu.update_ranker(ranker, before, after)
  assert facts == {'added': 3, 'removed': 2, 'grown': 0}
  allow = [movies[:6] + [new_movie, after.catalog.index_of('movie-new-2')]]
  with compiled() as changed:
    items2, _ = ranker.rank(probe, ['movie'], 8, allowed=allow)
  got = [int(i) for i in items2[0] if i >= 0]
  assert victim not in got and after.catalog.index_of('movie-new-2') not in got
  assert new_movie in got and sorted(got) == sorted(set(allow[0]) - {
      victim, after.catalog.index_of('movie-new-2')})
  assert set(changed) <= set(unchanged), (unchanged, changed)  # none the change alone causes
  # A fresh load of the run sees the same catalog.
  svc2, _ = service_of(run)
  items3, _ = svc2.ranker.rank(probe, ['movie'], 8, allowed=allow)
  assert sorted(int(i) for i in items3[0] if i >= 0) == sorted(got)


def test_bad_updates_are_refused_and_change_nothing(run, tmp_path):
  snap = snapshot(run)
  bad_type = write_items(tmp_path / 'a.jsonl', [{'id': 'x', 'type': 'recipe', 'title': 'Soup'}])
  with pytest.raises(ValueError, match=r'a.jsonl, line 1, field .type.: unknown entity type'):
    cu.add_items(run, bad_type)
  dup = write_items(tmp_path / 'b.jsonl', [{'id': 'movie-0', 'type': 'movie', 'title': 'X'}])
  with pytest.raises(cu.CatalogUpdateError, match=r"ids \['movie-0'\] are in the catalog"):
    cu.add_items(run, dup)
  with pytest.raises(cu.CatalogUpdateError, match="unknown item ids \\['nope'\\]"):
    cu.remove_items(run, ['movie-1', 'nope'])
  snap.pop(os.path.join('catalog_update', 'LOCK'), None)
  assert snapshot(run) == snap


KILLER = textwrap.dedent('''
    import os, signal, sys
    from neo_jax.run import catalog_update as cu
    from neo_jax.sid import builder
    where = sys.argv[3]
    def die(*a, **k):
      os.kill(os.getpid(), signal.SIGKILL)
    if where == 'commit':
      cu._commit = die
    else:  # in the middle of writing the new version's files
      builder.save_sid_map = die
    cu.add_items(sys.argv[1], sys.argv[2])
''')


@pytest.mark.parametrize('where', ['writing', 'commit'])
def test_a_killed_add_leaves_the_run_loadable_and_unchanged(run, tmp_path, where):
  items = write_items(tmp_path / 'new.jsonl', NEW_ITEMS[:1])
  cu.add_items(run, write_items(tmp_path / 'first.jsonl', NEW_ITEMS[2:]))  # a version exists
  before = cu.load_state(cu.load_base(run))
  snap = snapshot(run)
  proc = subprocess.run([sys.executable, '-c', KILLER, run, items, where], cwd=ROOT,
                        capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == -9, proc.stderr[-2000:]
  # Whatever the killed command left, the run reads exactly as before.
  after = cu.load_state(cu.load_base(run))
  assert after.version == before.version and after.catalog.ids == before.catalog.ids
  np.testing.assert_array_equal(after.sid_map.codes, before.sid_map.codes)
  for path, data in snap.items():
    with open(os.path.join(run, path), 'rb') as f:
      assert f.read() == data, path
  svc, _ = service_of(run)
  assert len(svc.catalog) == len(before.catalog)
  # The next update goes through and sweeps what the killed one left.
  out = cu.add_items(run, items)
  assert out['added'] == 1
  left = sorted(os.listdir(os.path.join(run, 'catalog_update')))
  assert left == ['CURRENT', 'LOCK', 'result.json', out['version']]


def test_add_items_command(run, tmp_path):
  items = write_items(tmp_path / 'new.jsonl', NEW_ITEMS)
  ids = tmp_path / 'ids.txt'
  ids.write_text('movie-new-2\n')
  cmd = [sys.executable, '-m', 'experiments.add_items', f'--workdir={run}', f'--items={items}',
         f'--remove={ids}']
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert out.returncode == 0, out.stderr[-2000:]
  res = json.loads(out.stdout.strip().splitlines()[-1])
  assert res['added'] == 3 and res['removed'] == 1
  with open(os.path.join(run, 'catalog_update', 'result.json')) as f:
    assert json.load(f) == res
  out = subprocess.run(cmd[:4] + [f"--items={tmp_path / 'missing.jsonl'}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert out.returncode == 1 and 'missing.jsonl: no such file' in out.stderr
