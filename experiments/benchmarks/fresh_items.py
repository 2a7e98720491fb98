r"""Fresh items on a trained MovieLens run: 20 films released after MovieLens-100k's catalog
are added without retraining, then searched by title and recommended as "new releases".

  python -m experiments.benchmarks.fresh_items --workdir=W

W: a trained quickstart (or evaluate) workdir, which this script CHANGES (it adds the 20 items
and withdraws one through neo_jax/run/catalog_update.py; work on a copy). A run built before
the frozen quantiser was saved is refrozen first (`catalog_update.refreeze`: the SIDs are
rebuilt from its config and must equal the saved ones).

Per new item: a search request (its title, type movie, k=10; NOT restricted), and a
recommendation request for one test user restricted to the items added since the update (the
allow-list of the paper's "new releases" constraint). Then one item is withdrawn and its title
search is asked again. Prints the figures (how many title searches put the new item in the top
10, that every restricted answer is a new item, that the withdrawn one is unreachable) as one
JSON object on the last line. Requests go through the library (serving.Service's prompts and
NEORanker with allow-lists), since `experiments.generate` does not read catalog updates yet.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from neo_jax.baselines.bm25 import BM25
from neo_jax.catalog.splits import make_split
from neo_jax.run import catalog_update as cu
from neo_jax.run import workdir as workdir_lib
from neo_jax.run.serving import Service

_WORKDIR = flags.DEFINE_string('workdir', None, 'a trained MovieLens workdir (changed!)')
_K = flags.DEFINE_integer('k', 10, 'items per answer')
_DEEP = flags.DEFINE_integer('deep', 100, 'beams of the title searches (ranks up to it)')

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


def service(w: str) -> tuple[Service, cu.CatalogState]:
  run = workdir_lib.load_run(w)
  state = cu.load_state(cu.load_base(w))
  art = cu.apply_to_artifacts(run.artifacts, state)
  cfg = run.config
  return Service(art, prompt_len=cfg.train.seq_len - 8, history_len=cfg.tasks.history_len,
                 batch_size=20), state


def title_search(svc: Service, titles: list[str], k: int) -> np.ndarray:
  reqs = [svc.parse({'task': 'search', 'query': t, 'type': 'movie', 'k': k}) for t in titles]
  items, _ = svc.ranker.rank([svc.prompt_of(r) for r in reqs], ['movie'] * len(reqs), k)
  return items


def main(argv):
  del argv
  w = _WORKDIR.value
  k = _K.value
  out = {}
  t0 = time.perf_counter()
  out.update({f'refreeze/{a}': b for a, b in cu.refreeze(w, print).items()})
  with tempfile.TemporaryDirectory() as tmp:
    since = int(time.time())
    out.update({f'add/{a}': b for a, b in cu.add_items(w, new_items_file(tmp)).items()})
  svc, state = service(w)
  ids = [f'new-{n + 1}' for n in range(len(NEW_FILMS))]
  rows = [state.catalog.index_of(i) for i in ids]
  titles = [t for t, _ in NEW_FILMS]
  # One beam search as wide as the deepest cutoff: its first k items are the top k.
  items = title_search(svc, titles, max(k, _DEEP.value))
  live = set(np.flatnonzero(state.live()).tolist())
  valid = all(int(i) in live for row in items for i in row if i >= 0)
  ranks = [next((j + 1 for j, i in enumerate(row) if int(i) == r), None)
           for row, r in zip(items, rows)]
  out['search/requests'] = len(titles)
  for cut in sorted({k, 30, _DEEP.value}):
    out[f'search/in_top{cut}'] = sum(r is not None and r <= cut for r in ranks)
  out['search/ranks'] = json.dumps(ranks)
  out['search/all_valid'] = bool(valid)
  out[f'search/new_items_in_top{k}'] = int(sum(int(i) in set(rows) for row in items
                                              for i in row[:k]))
  out['search/top1_titles'] = json.dumps([svc.catalog.titles[int(row[0])] for row in items[:5]])
  # References on the same questions: the model's title search for 20 items it was trained
  # on, and BM25 over the grown catalog (it indexes a new item's words directly).
  known = np.random.default_rng(0).choice(state.base_items, len(rows), replace=False)
  known_items = title_search(svc, [state.catalog.titles[int(r)] for r in known], k)
  out[f'search/trained_items_in_top{k}'] = int(sum(int(r) in row.tolist()
                                                  for r, row in zip(known, known_items)))
  bm25 = BM25()
  bm25.fit(svc.art.dataset, make_split(svc.art.dataset.interactions, 'leave_one_out')[0])
  ranked = bm25.rank_search(titles, ['movie'] * len(titles), k)
  out[f'search/bm25_in_top{k}'] = int(sum(r in row.tolist() for r, row in zip(rows, ranked)))
  # Recommendation restricted to the new releases (added since the update), one test user
  # per new item.
  allow = cu.allowed_rows(state, added_since=since)
  users = list(svc.histories)[:len(rows)]
  reqs = [svc.parse({'task': 'recommend', 'user': u, 'type': 'movie', 'k': k}) for u in users]
  rec, _ = svc.ranker.rank([svc.prompt_of(r) for r in reqs], ['movie'] * len(reqs), k,
                           excluded=[list(map(int, svc.histories[u])) for u in users],
                           allowed=[allow] * len(reqs))
  named = [int(i) for row in rec for i in row if i >= 0]
  out['recommend/requests'] = len(reqs)
  out['recommend/allowed'] = len(allow)
  out['recommend/all_new'] = bool(named) and set(named) <= set(rows)
  out['recommend/distinct_new_items'] = len(set(named))
  # Withdraw the first new item found by its title (or the first one) and ask again; also a
  # recommendation restricted to it alone, before and after (it is its only answer, then none).
  victim = next((r for r, rk in zip(rows, ranks) if rk is not None), rows[0])
  only = svc.ranker.rank([svc.prompt_of(reqs[0])], ['movie'], k, allowed=[[victim]])[0]
  out['remove/restricted_before'] = [int(i) for i in only[0] if i >= 0] == [victim]
  out.update({f'remove/{a}': b for a, b in cu.remove_items(
      w, [state.catalog.ids[victim]]).items()})
  svc2, state2 = service(w)
  again = title_search(svc2, [titles[rows.index(victim)]], max(k, _DEEP.value))
  out['remove/unreachable'] = victim not in {int(i) for i in again[0]}
  svc2_req = svc2.parse({'task': 'recommend', 'user': users[0], 'type': 'movie', 'k': k})
  only = svc2.ranker.rank([svc2.prompt_of(svc2_req)], ['movie'], k, allowed=[[victim]])[0]
  out['remove/restricted_after_empty'] = not any(int(i) >= 0 for i in only[0])
  out['seconds'] = time.perf_counter() - t0
  print(json.dumps(out, sort_keys=True))


if __name__ == '__main__':
  flags.mark_flag_as_required('workdir')
  app.run(main)
