"""The cold-start experiment: NEO trained without a fraction of the items, which are then
added through the frozen quantiser and measured beside BM25, dense retrieval and the NEO
trained with every item (the upper bound). `neo_jax/eval/cold.py` holds the measurement.

`run_cold(cfg, workdir, fraction, log, train=experiment.run_experiment)` (what
`run_experiment` calls at its end when `experiment.cold_items` > 0; the training function is
an argument, so that this module does not import the experiment that imports it):
  1. the dataset of `cfg` is cut by `eval.cold.hold_out(fraction, cfg.seed)`; the warm part
     is written in the generic format to <workdir>/cold_data;
  2. NEO-multi is trained on it with `cfg` otherwise unchanged (no NEO-mono, ablations,
     extra seeds, cold-start evaluation) in <workdir>/cold/ (`train(..., train_only=True)`;
     a rerun resumes it like any run);
  3. the cold items get SIDs from their text through the warm map's frozen quantiser
     (`eval.cold.extend_sid_map`, the path of `experiments.add_items`), the trie is rebuilt;
  4. BM25 and dense (MiniLM) are fitted on the whole catalog with the warm events: they index
     a new item directly (default hyperparameters, untuned);
  5. the requests of `eval.cold.cold_requests` are ranked by NEO (`neo`), the baselines, and,
     when <workdir> holds a NEO trained on every item (`upper_bound_dir`), by that model
     (`neo_all_items`, the requests mapped to its catalog rows).
Returns the flat `cold/...` figures and facts for result.json.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import ml_collections

from neo_jax.baselines.bm25 import BM25
from neo_jax.baselines.dense import Dense
from neo_jax.catalog import atomic
from neo_jax.catalog import io as catalog_io
from neo_jax.catalog.splits import make_split
from neo_jax.decode.ranker import NEORanker, serving_dtype
from neo_jax.decode.trie import SIDTrie
from neo_jax.eval import cold
from neo_jax.run import stages
from neo_jax.run import workdir as workdir_lib
from neo_jax.sid import quantiser as qlib

Log = Callable[[str], None]
# experiment.run_experiment: train(cfg, workdir, log, train_only=True) trains NEO-multi.
Train = Callable[..., Any]
K = 10


def warm_config(cfg: ml_collections.ConfigDict, data_dir: str) -> ml_collections.ConfigDict:
  """`cfg` training NEO-multi alone on the warm data in the generic format."""
  c = ml_collections.ConfigDict(cfg.to_dict())
  c.data.dataset, c.data.data_dir = 'generic', data_dir
  c.experiment.mono_tasks, c.experiment.ablations, c.experiment.seeds = (), (), 1
  c.experiment.cold_items = 0.0
  return c


def _ranker(run: workdir_lib.TrainedRun, sid_map, batch_size: int, log: Log | None = None,
            label: str = 'cold') -> NEORanker:
  """A ranker of `run`'s model over `sid_map`, its progress lines to `log` named `label`."""
  art, cfg = run.artifacts, run.config
  trie = SIDTrie.build(sid_map, art.tokenizer.sid)
  return NEORanker(art.model, art.tokenizer, trie, prompt_len=cfg.train.seq_len - 8,
                   batch_size=batch_size, log=log, progress_label=label,
                   dtype=serving_dtype(cfg.eval.dtype))


def run_cold(cfg: ml_collections.ConfigDict, workdir: str, fraction: float, log: Log = print,
             *, train: Train, upper_bound_dir: str | None = None, dense_encoder=None
             ) -> dict[str, Any]:
  """The cold-start figures (module docstring). `train`: `experiment.run_experiment`;
  `upper_bound_dir`: a workdir or run directory of NEO trained on the whole dataset of `cfg`
  (default: `workdir` itself when it holds one); `dense_encoder`: a
  `sid.features.TextEncoder` for the dense baseline (default MiniLM)."""
  if not 0.0 < fraction < 1.0:
    raise ValueError(f'cold-start fraction {fraction} must be in (0, 1)')
  t0 = time.perf_counter()
  root = atomic.location(os.path.join(workdir, 'cold'))
  ds = stages.load_data(cfg, workdir, log)
  split = cold.hold_out(ds, fraction, int(cfg.seed))
  out: dict[str, Any] = dict(split.facts)
  data_dir = atomic.location(os.path.join(workdir, 'cold_data'))  # beside the run: its
  # workdir must be empty or a run directory when it is claimed
  if not atomic.as_path(os.path.join(data_dir, catalog_io.ITEMS_FILE)).exists():
    catalog_io.write_dataset(split.warm, data_dir)
  train(warm_config(cfg, data_dir), root, log, train_only=True)
  run = workdir_lib.load_run(root)
  art = run.artifacts
  quant = qlib.load_quantiser(os.path.join(root, 'sids', 'sid_map'), art.sid_map)
  ext, facts = cold.extend_sid_map(art.sid_map, quant, split)
  out.update({f'cold/sids/{k}': v for k, v in facts.items()})
  batch = int(cfg.eval.batch_size)
  neo = _ranker(run, ext, batch, log)
  reqs = cold.cold_requests(split, cfg.data.split)
  view = dataclasses.replace(split.warm, catalog=split.full.catalog)
  warm_split, _ = make_split(split.warm.interactions, cfg.data.split)
  baselines = {'bm25': BM25(),
               'dense': Dense(encoder=dense_encoder, cache_dir=os.path.join(root, 'baselines'))}
  for b in baselines.values():
    b.fit(view, warm_split)
  upper = _upper_bound(upper_bound_dir or workdir, batch, log)
  hist = int(cfg.tasks.history_len)
  for task, req in list(reqs.items()):
    # Every system answers the same requests: those whose prompt fits both NEO models.
    keep = cold.fits(neo, req, ext, art.tokenizer.sid, hist)
    if upper is not None:
      keep &= cold.fits(upper[0], cold.in_original_rows(req, split.order), upper[1], upper[2],
                        hist)
    out[f'cold/{task}/skipped_prompt_too_long'] = int((~keep).sum())
    reqs[task] = cold.subset(req, keep)
  for task, req in reqs.items():
    out.update(cold.figures('neo', req, cold.rank_neo(neo, req, ext, art.tokenizer.sid, hist, K)))
    for name, b in baselines.items():
      out.update(cold.figures(name, req, cold.rank_baseline(b, req, K)))
    if upper is not None:
      mapped = cold.in_original_rows(req, split.order)
      ranked = cold.rank_neo(upper[0], mapped, upper[1], upper[2], hist, K)
      out.update(cold.figures('neo_all_items', mapped, ranked))
  out['cold/upper_bound'] = 'measured' if upper is not None else 'no NEO trained on every item'
  out['cold/seconds'] = time.perf_counter() - t0
  log('cold: ' + ', '.join(f'{k.split("cold/")[1]} {v:.3f}' for k, v in out.items()
                           if k.endswith('hr@10') and v is not None))
  return out


def _upper_bound(path: str, batch: int, log: Log | None = None):
  """(ranker, SID map, SID vocabulary) of the NEO trained on every item at `path`, or None
  when `path` holds no trained NEO."""
  try:
    run = workdir_lib.load_run(path)
  except workdir_lib.WorkdirError:
    return None
  art = run.artifacts
  return (_ranker(run, art.sid_map, batch, log, 'cold upper bound'), art.sid_map,
          art.tokenizer.sid)


__all__ = ['run_cold', 'warm_config']
