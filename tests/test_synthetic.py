"""Tests of the synthetic catalog generator (neo_jax/catalog/synthetic.py).

The references are independent of the generator's code: brute-force recounts over the
generated files, a bag-of-words classifier trained on half the items, the exact law of the
Zipf sampler, and the latent variables from `synthetic_truth`.
"""

from __future__ import annotations

import collections
import dataclasses
import filecmp
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from neo_jax.catalog import io
from neo_jax.catalog import synthetic as syn
from neo_jax.catalog.splits import user_sequences

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# Two user blocks (512) and two query blocks (1024), so block boundaries are exercised.
SMALL = syn.SyntheticConfig(
    seed=3, item_counts={'movie': 300, 'book': 240, 'podcast': 160}, num_topics=12,
    num_users=600, num_queries=1100)


@pytest.fixture(scope='module')
def small():
  return syn.generate_synthetic(SMALL), syn.synthetic_truth(SMALL)


def _words(text: str) -> list[str]:
  return re.findall(r"[a-z0-9']+", text.lower())


def test_word_lists_are_disjoint():
  seen = {}
  for name, words in syn.TOPICS:
    assert len(words) == 15, name
    for w in words:
      assert w not in seen, f'{w!r} in both {seen[w]!r} and {name!r}'
      seen[w] = name
  generic = set(syn.ADJECTIVES) | set(syn.NOUNS) | {n.lower() for n in syn.NAMES}
  assert not generic & set(seen)


def test_generate_equals_load_of_write(tmp_path, small):
  dataset, _ = small
  summary = syn.write_synthetic(SMALL, tmp_path / 'ds', chunk_size=37)
  loaded = io.load_dataset(tmp_path / 'ds', name=SMALL.name)
  assert loaded.skipped == {}
  a, b = dataset.catalog, loaded.catalog
  assert (a.ids, a.type_names, a.titles, a.descriptions, a.tags, a.attributes) == (
      b.ids, b.type_names, b.titles, b.descriptions, b.tags, b.attributes)
  np.testing.assert_array_equal(a.type_index, b.type_index)
  assert a.popularity.dtype == b.popularity.dtype == np.float32
  np.testing.assert_array_equal(a.popularity, b.popularity)
  x, y = dataset.interactions, loaded.interactions
  assert x.user_names == y.user_names and x.extra == y.extra == {}
  for field in ('user_index', 'item_index', 'timestamp'):
    assert getattr(x, field).dtype == getattr(y, field).dtype
    np.testing.assert_array_equal(getattr(x, field), getattr(y, field))
  assert dataset.queries == loaded.queries
  assert dataset.users == loaded.users
  assert summary['num_items'] == 700 and summary['num_users'] == 600
  assert summary['num_interactions'] == len(x)
  assert summary['num_queries'] == len(dataset.queries) == 1100
  assert np.bincount(a.type_index).tolist() == [240, 300, 160]  # book, movie, podcast


def test_files_deterministic_and_independent_of_chunk_size(tmp_path):
  config = dataclasses.replace(SMALL, num_users=60, num_queries=50)
  syn.write_synthetic(config, tmp_path / 'a', chunk_size=13)
  syn.write_synthetic(config, tmp_path / 'b', chunk_size=100_000)
  syn.write_synthetic(dataclasses.replace(config, seed=4), tmp_path / 'c', chunk_size=13)
  names = sorted(os.listdir(tmp_path / 'a'))
  assert names == sorted([io.ITEMS_FILE, io.INTERACTIONS_FILE, io.QUERIES_FILE, io.USERS_FILE,
                          syn.CONFIG_FILE])
  for name in names:
    assert filecmp.cmp(tmp_path / 'a' / name, tmp_path / 'b' / name, shallow=False), name
    assert not filecmp.cmp(tmp_path / 'a' / name, tmp_path / 'c' / name, shallow=False), name
  with pytest.raises(FileExistsError):
    syn.write_synthetic(config, tmp_path / 'a')


def test_item_layout_matches_truth(small):
  dataset, truth = small
  catalog = dataset.catalog
  for type_name in catalog.type_names:
    rows = catalog.items_of_type(type_name)
    # Slots are a bijection: within each topic, popularity ranks are exactly 0..size-1.
    for k in range(SMALL.num_topics):
      ranks = np.sort(truth.item_rank[rows][truth.item_topic[rows] == k])
      assert ranks.size >= 1
      np.testing.assert_array_equal(ranks, np.arange(ranks.size))
  np.testing.assert_allclose(catalog.popularity,
                             (truth.item_rank + 1.0)**-SMALL.popularity_alpha, rtol=1e-6)
  assert (truth.item_secondary_topic != truth.item_topic).all()
  # Parts of a series share its name; a later part names its number.
  for n in range(len(catalog)):
    nxt = truth.series_next[n]
    if nxt >= 0:
      assert truth.item_series[nxt] == truth.item_series[n]
      assert truth.item_episode[nxt] == truth.item_episode[n] + 1
      base = catalog.titles[n].split(',')[0]
      assert catalog.titles[nxt].startswith(base + ', ')
      assert catalog.titles[nxt].endswith(f' {truth.item_episode[nxt]}')


def test_item_text_reveals_topic(small):
  """A nearest-centroid TF-IDF classifier, trained on half the items, finds the latent
  topic of the other half from title + description (tags, which name it, left out)."""
  dataset, truth = small
  catalog = dataset.catalog
  docs = [_words(catalog.titles[n] + ' ' + catalog.descriptions[n])
          for n in range(len(catalog))]
  vocab = {w: i for i, w in enumerate(sorted({w for d in docs for w in d}))}
  bow_NxV = np.zeros((len(docs), len(vocab)))
  for n, doc in enumerate(docs):
    for w in doc:
      bow_NxV[n, vocab[w]] += 1
  # TF-IDF, so that template words shared by every item of a type do not dominate.
  bow_NxV *= np.log(len(docs) / (bow_NxV > 0).sum(0))[None, :]
  bow_NxV /= np.linalg.norm(bow_NxV, axis=1, keepdims=True)
  train, test = np.arange(0, len(docs), 2), np.arange(1, len(docs), 2)
  centroids_TxV = np.stack([bow_NxV[train][truth.item_topic[train] == k].mean(0)
                            for k in range(SMALL.num_topics)])
  predicted = (bow_NxV[test] @ centroids_TxV.T).argmax(1)
  accuracy = (predicted == truth.item_topic[test]).mean()
  assert accuracy > 0.8, accuracy  # chance is 1/12


def test_histories_follow_preferences_and_drift(small):
  dataset, truth = small
  seqs = user_sequences(dataset.interactions)
  assert len(seqs) == SMALL.num_users
  pref_values, early_shares, drift_early, drift_late = [], [], 0, 0
  for u, seq in enumerate(seqs[f'u{u}'] for u in range(SMALL.num_users)):
    assert SMALL.min_events <= seq.size <= SMALL.max_events
    prefs = truth.user_preferences[u]
    liked = prefs > 0
    assert SMALL.topics_per_user[0] <= liked.sum() <= SMALL.topics_per_user[1]
    topics = truth.item_topic[seq]
    # Every event comes from a liked topic or the drift topic.
    assert set(topics.tolist()) <= set(np.flatnonzero(liked).tolist()) | {
        int(truth.user_drift_topic[u])}
    third = max(1, seq.size // 3)
    share = np.bincount(topics[:third], minlength=SMALL.num_topics) / third
    pref_values.extend(prefs[liked].tolist())
    early_shares.extend(share[liked].tolist())
    drift_early += int((topics[:third] == truth.user_drift_topic[u]).sum())
    drift_late += int((topics[-third:] == truth.user_drift_topic[u]).sum())
  # Early in a history, a liked topic's share of events grows with its preference weight
  # (no relation would give 0; about 0.6 here).
  correlation = np.corrcoef(pref_values, early_shares)[0, 1]
  assert correlation > 0.4, correlation
  assert drift_late > 3 * drift_early, (drift_early, drift_late)


def test_cross_type_and_timestamps(small):
  dataset, truth = small
  inter, catalog = dataset.interactions, dataset.catalog
  ts = inter.timestamp
  assert ts.min() >= SMALL.start_time
  users = inter.user_index
  same_user = users[1:] == users[:-1]
  assert (np.diff(ts)[same_user] > 0).all()  # file order is chronological per user
  types = [catalog.type_of(int(i)) for i in inter.item_index]
  main = [truth.user_main_type[int(u)] for u in users]
  share_main = np.mean([t == m for t, m in zip(types, main)])
  assert 0.65 < share_main < 0.95, share_main  # cross_type_prob 0.2, series pull to main
  types_per_user = collections.defaultdict(set)
  for u, t in zip(users.tolist(), types):
    types_per_user[u].add(t)
  assert np.mean([len(s) >= 2 for s in types_per_user.values()]) > 0.5


def test_next_item_beats_popularity(small):
  """Continuing the series of the last item predicts the held-out next item far better than
  the most popular training item of its type does."""
  dataset, truth = small
  catalog = dataset.catalog
  seqs = user_sequences(dataset.interactions)
  train_counts = np.zeros(len(catalog), np.int64)
  for seq in seqs.values():
    np.add.at(train_counts, seq[:-1], 1)
  best_of_type = {t: catalog.items_of_type(t)[train_counts[catalog.items_of_type(t)].argmax()]
                  for t in catalog.type_names}
  series_hits = popular_hits = 0
  for seq in seqs.values():
    last, target = int(seq[-2]), int(seq[-1])
    nxt = truth.series_next[last]
    series_hits += int(nxt >= 0 and nxt == target)
    popular_hits += int(best_of_type[catalog.type_of(last)] == target)
  n = len(seqs)
  assert series_hits / n > 0.15, series_hits
  assert series_hits > 3 * popular_hits, (series_hits, popular_hits)


def test_popular_items_are_consumed_more(small):
  dataset, truth = small
  counts = dataset.item_counts()
  top = counts[truth.item_rank == 0].mean()
  tail = counts[truth.item_rank >= 10].mean()
  assert top > 3 * tail, (top, tail)


def test_zipf_sampler_matches_its_law():
  n, alpha, draws = 20, 1.3, 200_000
  rng = np.random.default_rng(0)
  ranks = syn._zipf_rank(rng.random(draws), np.full(draws, n), alpha)
  assert ranks.min() >= 0 and ranks.max() <= n - 1
  # Exact law of the inverted continuous density x**-alpha on [1, n + 1).
  edges = np.arange(1, n + 2, dtype=np.float64)
  cdf = (edges**(1 - alpha) - 1) / ((n + 1.0)**(1 - alpha) - 1)
  expected = np.diff(cdf) * draws
  observed = np.bincount(ranks, minlength=n)
  chi2 = ((observed - expected)**2 / expected).sum()
  assert chi2 < 60, chi2  # 19 degrees of freedom: p < 1e-5 beyond this
  ranks1 = syn._zipf_rank(rng.random(draws), np.full(draws, n), 1.0)
  expected1 = np.diff(np.log(edges) / np.log(n + 1.0)) * draws
  observed1 = np.bincount(ranks1, minlength=n)
  assert ((observed1 - expected1)**2 / expected1).sum() < 60


def test_queries_share_words_with_relevant_items(small):
  dataset, truth = small
  catalog = dataset.catalog
  title_words = [set(_words(t)) for t in catalog.titles]
  vocab = {w: i for i, w in enumerate(sorted(set().union(*title_words)))}
  items_NxV = np.zeros((len(catalog), len(vocab)))
  for n, ws in enumerate(title_words):
    items_NxV[n, [vocab[w] for w in ws]] = 1
  found = 0
  for q in dataset.queries:
    qwords = set(_words(q.text))
    rows = list(q.item_index)
    assert rows
    for r in rows:
      shared = qwords & title_words[r] - syn.QUERY_STOPWORDS
      assert len(shared) >= 2, (q.text, catalog.titles[r])
    if len(rows) == 1 and truth.item_episode[rows[0]] >= 2:
      # A query for one later part names that part.
      assert str(truth.item_episode[rows[0]]) in qwords, q.text
    else:
      # A series query returns the whole series, in part order.
      assert len({truth.item_series[r] for r in rows}) == 1
      assert [truth.item_episode[r] for r in rows] == list(range(1, len(rows) + 1))
    # Word overlap with titles alone ranks a relevant item near the top.
    qvec = np.zeros(len(vocab))
    qvec[[vocab[w] for w in qwords if w in vocab]] = 1
    scores = items_NxV @ qvec
    top10 = np.argsort(-scores, kind='stable')[:10]
    found += int(bool(set(top10.tolist()) & set(rows)))
  assert found / len(dataset.queries) > 0.8, found


def test_user_summaries_match_history(small):
  """Recount main type and top topic of each history by brute force."""
  dataset, truth = small
  catalog = dataset.catalog
  seqs = user_sequences(dataset.interactions)
  config_types = list(SMALL.item_counts)
  for user_id, seq in seqs.items():
    user = dataset.users[user_id]
    type_counts = collections.Counter(catalog.type_of(int(i)) for i in seq)
    best = max(type_counts.values())
    main = min((t for t, c in type_counts.items() if c == best), key=config_types.index)
    assert user.attributes['main_type'] == main
    topic_counts = collections.Counter(
        int(truth.item_topic[i]) for i in seq if catalog.type_of(int(i)) == main)
    best = max(topic_counts.values())
    top = truth.topic_names[min(k for k, c in topic_counts.items() if c == best)]
    assert user.attributes['top_topics'][0] == top
    style = syn.type_style(main)
    assert user.summary.startswith(f'Mostly {style.verb} {style.plural} about {top}')
    for other in type_counts:
      if other != main and len(type_counts) == 2:
        assert f'also {syn.type_style(other).verb} {syn.type_style(other).plural}' in (
            user.summary)


@pytest.mark.parametrize('change,field', [
    ({'item_counts': {'movie': 5}}, 'item_counts'),
    ({'item_counts': {'sci fi': 100}}, 'item_counts'),
    ({'num_topics': 99}, 'num_topics'),
    ({'topics_per_user': (3, 12)}, 'topics_per_user'),
    ({'drift': 1.5}, 'drift'),
    ({'min_events': 10, 'max_events': 5}, 'min_events'),
    ({'series_length': 0}, 'series_length'),
    ({'seed': -1}, 'seed'),
])
def test_bad_config_names_field(change, field):
  with pytest.raises(ValueError, match=f'SyntheticConfig.{field}'):
    syn.generate_synthetic(dataclasses.replace(SMALL, **change))


def test_items_per_type_overrides_counts():
  config = syn.SyntheticConfig(items_per_type=40, num_topics=6, num_users=5, num_queries=3)
  assert config.item_counts == {'movie': 40, 'book': 40, 'podcast': 40}
  assert dataclasses.replace(config, seed=1).item_counts == config.item_counts
  assert len(syn.generate_synthetic(config).catalog) == 120


def test_make_synthetic_entry_point(tmp_path):
  out = tmp_path / 'made'
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.make_synthetic', f'--workdir={out}', '--num_items=100',
       '--num_users=30', '--num_queries=7', '--num_topics=5', '--types=movie,book,game',
       '--seed=2'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True)
  lines = result.stdout.strip().splitlines()
  assert any('items/s' in line for line in lines[:-1])
  summary = json.loads(lines[-1])
  loaded = io.load_dataset(out / 'data')
  assert summary == json.loads((out / 'result.json').read_text())
  assert summary['num_items'] == len(loaded.catalog) == 100
  assert loaded.catalog.type_names == ('book', 'game', 'movie')
  assert np.bincount(loaded.catalog.type_index).tolist() == [33, 33, 34]  # movie gets the +1
  assert summary['num_users'] == len(loaded.interactions.user_names) == 30
  assert summary['num_interactions'] == len(loaded.interactions)
  assert summary['num_queries'] == len(loaded.queries) == 7
  assert summary['seconds'] > 0
