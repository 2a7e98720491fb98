r"""Fresh items on a trained MovieLens run, through the commands a user runs: 20 films
released after MovieLens-100k's catalog are added with `experiments.add_items`' library call,
then searched by title and recommended as "new releases" by `experiments.generate --workdir=W
--batch_in=...` (a subprocess, the command itself).

  python -m experiments.benchmarks.fresh_items --workdir=W

W: a trained quickstart (or evaluate) workdir, which this script CHANGES (it adds the 20 items
and withdraws one through neo_jax/run/catalog_update.py; work on a copy). A run built before
the frozen quantiser was saved is refrozen first (`catalog_update.refreeze`: the SIDs are
rebuilt from its config and must equal the saved ones).

First batch, per new item: a search request (its title, type movie, k=--deep; NOT
restricted: its rank among all live movies), and a recommendation request for one user
restricted to the items added since the update (`added_since`, the paper's "new releases"
constraint); as references, the title searches of 20 items the model was trained on, and one
recommendation allowed only the first new item (its only possible answer). Then that item is
withdrawn (`remove_items`), and a second batch asks its title search, the recommendation
allowed only it (now: no item) and an explanation of it (refused). BM25 over the grown catalog
answers the same title searches (library). Prints the figures as one JSON object on the last
line: how many title searches put the new item in the top 10 / 30 / --deep, that every answer
is a live catalog item, that every restricted answer is a new item, that the withdrawn item
is unreachable.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from neo_jax.baselines.bm25 import BM25
from neo_jax.catalog.splits import make_split, user_sequences
from neo_jax.run import catalog_update as cu
from neo_jax.run import workdir as workdir_lib

_WORKDIR = flags.DEFINE_string('workdir', None, 'a trained MovieLens workdir (changed!)')
_K = flags.DEFINE_integer('k', 10, 'items per answer')
_DEEP = flags.DEFINE_integer('deep', 100, 'k of the title searches (ranks up to it; <= 100)')
_BATCH = flags.DEFINE_integer('batch_size', 20, 'generate --batch_size')

# Films of 1998-1999, after the catalog of MovieLens-100k (ratings of 1997-98), with their
# MovieLens genres.
NEW_FILMS = [
    ('The Matrix (1999)', ['Action', 'Sci-Fi', 'Thriller']),
    ('Toy Story 2 (1999)', ['Animation', "Children's", 'Comedy']),
    ('The Sixth Sense (1999)', ['Thriller']),
    ('American Beauty (1999)', ['Comedy', 'Drama']),
    ('Saving Private Ryan (1998)', ['Action', 'Drama', 'War']),
    ('Shakespeare in Love (1998)', ['Comedy', 'Romance']),
    ('The Truman Show (1998)', ['Drama']),
    ('Fight Club (1999)', ['Drama']),
    ('The Blair Witch Project (1999)', ['Horror']),
    ('Star Wars: Episode I - The Phantom Menace (1999)', ['Action', 'Adventure', 'Fantasy',
                                                         'Sci-Fi']),
    ('Being John Malkovich (1999)', ['Comedy']),
    ('The Green Mile (1999)', ['Drama', 'Thriller']),
    ('Notting Hill (1999)', ['Comedy', 'Romance']),
    ('Run Lola Run (1998)', ['Action', 'Crime', 'Romance']),
    ('The Big Lebowski (1998)', ['Comedy', 'Crime', 'Mystery', 'Thriller']),
    ('Office Space (1999)', ['Comedy']),
    ('Galaxy Quest (1999)', ['Adventure', 'Comedy', 'Sci-Fi']),
    ('A Bug\'s Life (1998)', ['Animation', "Children's", 'Comedy']),
    ('Rushmore (1998)', ['Comedy']),
    ('The Iron Giant (1999)', ['Animation', "Children's"]),
]


def new_items_file(directory: str) -> str:
  path = os.path.join(directory, 'new.jsonl')
  with open(path, 'w') as f:
    for n, (title, genres) in enumerate(NEW_FILMS):
      f.write(json.dumps({'id': f'new-{n + 1}', 'type': 'movie', 'title': title,
                          'tags': genres, 'attributes': {'year': int(title[-5:-1])}}) + '\n')
  return path


def run_generate(w: str, requests: list[dict], tmp: str, name: str) -> tuple[dict, list]:
  """`experiments.generate --workdir=w --batch_in=...` on `requests`: (its result object, the
  answer records in request order)."""
  src, dst = os.path.join(tmp, f'{name}.jsonl'), os.path.join(tmp, f'{name}_answers.jsonl')
  with open(src, 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in requests)
  cmd = [sys.executable, '-m', 'experiments.generate', f'--workdir={w}', f'--batch_in={src}',
         f'--batch_out={dst}', f'--batch_size={_BATCH.value}']
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode not in (0, 1) or not proc.stdout.strip():
    raise RuntimeError(f'{" ".join(cmd)} failed ({proc.returncode}): {proc.stderr[-3000:]}')
  with open(dst) as f:
    records = sorted((json.loads(line) for line in f), key=lambda r: r['line'])
  return json.loads(proc.stdout.strip().splitlines()[-1]), records


def ids_of(record: dict) -> list[str]:
  return [it['id'] for it in record.get('items', [])]


def main(argv):
  del argv
  w, k, deep = _WORKDIR.value, _K.value, max(_K.value, _DEEP.value)
  out = {}
  t0 = time.perf_counter()
  out.update({f'refreeze/{a}': b for a, b in cu.refreeze(w, print).items()})
  tmp = tempfile.mkdtemp(prefix='fresh_items_')
  since = int(time.time())
  out.update({f'add/{a}': b for a, b in cu.add_items(w, new_items_file(tmp)).items()})
  state = cu.load_state(cu.load_base(w))
  ids = [f'new-{n + 1}' for n in range(len(NEW_FILMS))]
  titles = [t for t, _ in NEW_FILMS]
  known = np.random.default_rng(0).choice(state.base_items, len(ids), replace=False)
  run = workdir_lib.load_run(w)
  users = list(user_sequences(run.artifacts.dataset.interactions))[:len(ids)]
  victim = ids[0]
  reqs = ([{'task': 'search', 'query': t, 'type': 'movie', 'k': deep} for t in titles]
          + [{'task': 'recommend', 'user': u, 'type': 'movie', 'k': k, 'added_since': since}
             for u in users]
          + [{'task': 'search', 'query': state.catalog.titles[int(r)], 'type': 'movie', 'k': k}
             for r in known]
          + [{'task': 'recommend', 'user': users[0], 'type': 'movie', 'k': k,
              'allow': [victim]}])
  res, recs = run_generate(w, reqs, tmp, 'first')
  out.update({f'generate/{a}': res[a] for a in (
      'catalog/version', 'catalog/items', 'catalog/live_items', 'answered', 'bad', 'failed',
      'seconds_load', 'seconds_answer')})
  n = len(ids)
  search, rec, trained, only = recs[:n], recs[n:2 * n], recs[2 * n:3 * n], recs[3 * n]
  live = {state.catalog.ids[r] for r in np.flatnonzero(state.live())}
  out['all_answers_live_items'] = all(set(ids_of(r)) <= live for r in recs)
  ranks = [ids_of(r).index(i) + 1 if i in ids_of(r) else None for r, i in zip(search, ids)]
  out['search/requests'] = n
  for cut in sorted({k, 30, deep}):
    out[f'search/in_top{cut}'] = sum(r is not None and r <= cut for r in ranks)
  out['search/ranks'] = json.dumps(ranks)
  out[f'search/new_items_in_top{k}'] = sum(len(set(ids_of(r)[:k]) & set(ids)) for r in search)
  out['search/top1_titles'] = json.dumps([r['items'][0]['title'] for r in search[:5]])
  out[f'search/trained_items_in_top{k}'] = sum(
      state.catalog.ids[int(row)] in ids_of(r) for row, r in zip(known, trained))
  bm25 = BM25()
  grown = dataclasses.replace(run.artifacts.dataset, catalog=state.catalog)
  bm25.fit(grown, make_split(grown.interactions, 'leave_one_out')[0])
  ranked = bm25.rank_search(titles, ['movie'] * n, k)
  rows = [state.catalog.index_of(i) for i in ids]
  out[f'search/bm25_in_top{k}'] = int(sum(r in row.tolist() for r, row in zip(rows, ranked)))
  named = [i for r in rec for i in ids_of(r)]
  out['recommend/requests'] = n
  out['recommend/allowed'] = rec[0].get('allowed_items')
  out['recommend/all_new'] = bool(named) and set(named) <= set(ids)
  out['recommend/distinct_new_items'] = len(set(named))
  out['remove/restricted_before'] = ids_of(only) == [victim]
  out.update({f'remove/{a}': b for a, b in cu.remove_items(w, [victim]).items()})
  res2, recs2 = run_generate(w, [
      {'task': 'search', 'query': titles[0], 'type': 'movie', 'k': deep},
      {'task': 'recommend', 'user': users[0], 'type': 'movie', 'k': k, 'allow': [victim]},
      {'task': 'explain', 'user': users[0], 'item': victim}], tmp, 'second')
  out['remove/generate_catalog_live_items'] = res2['catalog/live_items']
  out['remove/unreachable'] = victim not in ids_of(recs2[0]) and len(ids_of(recs2[0])) > 0
  out['remove/restricted_after_empty'] = recs2[1]['items'] == []
  out['remove/explain_refused'] = 'withdrawn' in recs2[2].get('error', '')
  out['seconds'] = time.perf_counter() - t0
  print(json.dumps(out, sort_keys=True))


if __name__ == '__main__':
  flags.mark_flag_as_required('workdir')
  app.run(main)
