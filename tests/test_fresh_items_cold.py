"""Cold-start evaluation on a tiny synthetic run: a fraction of items held out of everything
the model is trained on, added after training through the frozen quantiser, and measured for
NEO, BM25 and a dense retriever (neo_jax/eval/cold.py), run by the experiment runner when
`experiment.cold_items` > 0 (result.json cold/..., the report's cold-start table)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from experiments.configs import tiny
from neo_jax.baselines.bm25 import BM25
from neo_jax.catalog import io as catalog_io
from neo_jax.catalog.splits import make_split
from neo_jax.catalog.synthetic import SyntheticConfig, generate_synthetic
from neo_jax.decode.ranker import NEORanker
from neo_jax.decode.trie import SIDTrie
from neo_jax.eval import cold
from neo_jax.eval import report
from neo_jax.run import cold_items
from neo_jax.run import config as config_lib
from neo_jax.run import experiment
from neo_jax.run import workdir as workdir_lib
from neo_jax.sid import quantiser as qlib

FRACTION = 0.1


@pytest.fixture(scope='module')
def dataset():
  cfg = tiny.get_config().data.synthetic
  return generate_synthetic(SyntheticConfig(**cfg.to_dict()))


def test_hold_out_keeps_cold_items_out_of_the_warm_data(dataset):
  split = cold.hold_out(dataset, FRACTION, seed=0)
  cat, full = dataset.catalog, split.full
  cold_ids = {full.catalog.ids[r] for r in split.cold_rows}
  for t in cat.type_names:  # round(0.1 * 40) per type
    assert sum(full.catalog.type_of(r) == t for r in split.cold_rows) == 4
  assert split.warm.catalog.ids == full.catalog.ids[:split.num_warm]
  assert not cold_ids & set(split.warm.catalog.ids)
  # No event and no query of the warm data names a cold item; nothing else is lost.
  warm_items = {split.warm.catalog.ids[i] for i in split.warm.interactions.item_index}
  assert not warm_items & cold_ids
  n_cold_events = sum(cat.ids[i] in cold_ids for i in dataset.interactions.item_index)
  assert len(split.warm.interactions) == len(dataset.interactions) - n_cold_events
  assert all(max(q.item_index) < split.num_warm for q in split.warm.queries)
  # The full data is the original one, renumbered.
  for e in range(0, len(dataset.interactions), 97):
    old = dataset.interactions
    row = full.interactions.item_index[e]
    assert full.catalog.ids[row] == cat.ids[old.item_index[e]]
    assert full.catalog.titles[row] == cat.titles[split.order[row]]


@pytest.fixture(scope='module')
def cold_run(tmp_path_factory):
  """The tiny experiment with experiment.cold_items: NEO-multi trained on every item (the
  upper bound) and evaluated, then the cold-start evaluation beside it (dense: MiniLM)."""
  w = str(tmp_path_factory.mktemp('cold') / 'w')
  cfg = tiny.get_config()
  cfg.experiment.cold_items = FRACTION
  result, _ = experiment.run_experiment(cfg, w, log=lambda _: None)
  return cfg, w, result


def test_config_key_checks_the_fraction():
  cfg = tiny.get_config()
  assert cfg.experiment.cold_items == 0.0  # off by default
  for bad in (1.0, -0.1):
    cfg.experiment.cold_items = bad
    with pytest.raises(config_lib.ConfigError, match=r'cold_items.*must be in \[0, 1\)'):
      config_lib.validate(cfg)
  warm = cold_items.warm_config(config_lib.validate(tiny.get_config()), '/data')
  assert warm.experiment.cold_items == 0.0 and warm.data.dataset == 'generic'


def test_run_cold_measures_every_system(cold_run):
  cfg, w, res = cold_run
  assert 'neo_multi/hr@10' in res  # the experiment ran in full, the cold part beside it
  assert res['cold/items'] == 12 and res['cold/upper_bound'] == 'measured'
  assert res['cold/sids/items'] == 12
  for name in ('neo', 'bm25', 'dense', 'neo_all_items'):
    for task in cold.TASKS:
      for metric in ('hr@10', 'ndcg@10'):
        key = f'cold/{name}/{task}/{metric}'
        value = res[key]
        assert value is None if not res[f'cold/{task}/requests'] else 0 <= value <= 1, key
  # Every cold title is asked, but for the prompts too long for the tiny prompt width.
  assert (res['cold/title_search/requests']
          + res['cold/title_search/skipped_prompt_too_long']) == 12
  assert res['cold/title_search/requests'] >= 6 and res['cold/recommend/requests'] > 0
  # BM25 indexes the cold items directly: their titles find them.
  assert res['cold/bm25/title_search/hr@10'] > 0.5
  # The report's table holds the figures of the result, system by system.
  text = open(report.write_report(w, res)).read()
  table = text[text.index('### Cold-start items'):]
  for name in ('neo', 'neo_all_items', 'bm25', 'dense'):
    row = next(l for l in table.splitlines() if l.startswith(f'| {name}: '))
    cells = row.strip('|').split('|')[1:]
    want = [report._fmt(res[f'cold/{name}/{t}/{m}'])  # pylint: disable=protected-access
            for t in cold.TASKS for m in ('hr@10', 'ndcg@10')]
    assert [c.strip() for c in cells] == want, name
  assert f"title_search {res['cold/title_search/requests']} (" in table


def test_cold_items_get_sids_and_the_figures_are_what_the_rankings_say(cold_run):
  cfg, w, res = cold_run
  ds = catalog_io.load_dataset(os.path.join(w, 'data'))
  split = cold.hold_out(ds, FRACTION, seed=cfg.seed)
  run = workdir_lib.load_run(os.path.join(w, 'cold'))
  art = run.artifacts
  q = qlib.load_quantiser(os.path.join(run.workdir, 'sids', 'sid_map'), art.sid_map)
  ext, facts = cold.extend_sid_map(art.sid_map, q, split)
  n = len(split.full.catalog)
  assert len(ext) == n and facts['items'] == n - split.num_warm
  np.testing.assert_array_equal(ext.codes[:split.num_warm], art.sid_map.codes)
  assert ext.reachable().all()
  ranker = NEORanker(art.model, art.tokenizer, SIDTrie.build(ext, art.tokenizer.sid),
                     prompt_len=run.config.train.seq_len - 8, batch_size=cfg.eval.batch_size)
  view = dataclasses.replace(split.warm, catalog=split.full.catalog)
  warm_split, _ = make_split(split.warm.interactions, cfg.data.split)
  bm25 = BM25()
  bm25.fit(view, warm_split)
  upper = cold_items._upper_bound(w, cfg.eval.batch_size)  # pylint: disable=protected-access
  hist = cfg.tasks.history_len
  for task, req in cold.cold_requests(split, cfg.data.split).items():
    keep = cold.fits(ranker, req, ext, art.tokenizer.sid, hist) & cold.fits(
        upper[0], cold.in_original_rows(req, split.order), upper[1], upper[2], hist)
    assert int((~keep).sum()) == res[f'cold/{task}/skipped_prompt_too_long']
    req = cold.subset(req, keep)
    ranked = {'neo': cold.rank_neo(ranker, req, ext, art.tokenizer.sid,
                                   cfg.tasks.history_len, 10),
              'bm25': cold.rank_baseline(bm25, req, 10)}
    for name, r in ranked.items():
      figs = cold.figures(name, req, r)
      assert figs == {k: res[k] for k in figs}, (name, task)
      if not len(req):
        continue
      if name == 'neo':  # live items of the asked type only (valid SIDs of the grown trie)
        for row, t in zip(r, req.types):
          got = row[row >= 0]
          assert got.size and all(split.full.catalog.type_of(int(i)) == t for i in got)
      hits = []  # HR@10, brute force (history excluded for recommendation)
      for row, rel, seen in zip(r, req.relevant, req.history):
        kept = [int(i) for i in row if i >= 0 and (int(i) not in set(seen.tolist())
                                                   or int(i) in rel)]
        hits.append(bool(set(kept[:10]) & set(rel)))
      assert figs[f'cold/{name}/{task}/hr@10'] == pytest.approx(np.mean(hits))
