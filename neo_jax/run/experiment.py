"""A NEO experiment as one library call: NEO-multi (and, as the config asks, NEO-mono and the
ablations) against the baselines, with a validation protocol that keeps the test split
untouched until the final evaluation. The quickstart, `train` and `evaluate` commands all run
this with different configs.

`run_experiment(cfg, workdir)`:
  1. prepare (`stages.prepare`): data, split, the view of the data everything fitted sees
     (training events, training queries split by item, the summaries of users not held out),
     SIDs, tokenizer, training and validation examples;
  2. NEO-multi: both training stages on every task, in the run directory <workdir>/neo_multi;
  3. NEO-mono: one model per task of `experiment.mono_tasks` (capability stage on that task's
     examples + the grounding examples, the grounding stage shared with NEO-multi), in
     <workdir>/neo_mono_<task>; with `experiment.seeds` = N both are trained N times
     (<run>_seed<i>, another initialisation and data order on the same data);
  4. ablations (`experiment.ablations`), each a NEO run in <workdir>/ablation_<name>;
  5. baselines (`experiment.baselines`), fitted on the view and, with
     `experiment.tune_baselines`, tuned on the validation split;
  6. the final evaluation on the test split only (its examples are built when it opens):
     every system ranks the whole catalog for the same requests, asking for the entity type
     known at request time (the last history item's; the query's); primary figures with the
     user's history excluded, beside them nothing excluded; paired bootstrap intervals of
     NEO-multi against every other system (`compare/...`); SID validity, steerability, user
     understanding on held-out users and recsplanation faithfulness; the sample generations;
  7. with `experiment.cold_items` = F > 0, the cold-start evaluation (`run.cold_items`): a
     second NEO-multi trained without a fraction F of the items (<workdir>/cold), those items
     added through the frozen quantiser, against BM25, dense and NEO-multi of step 2 (result
     keys cold/...).

Every read of evaluation data goes through the `SplitGuard` of `neo_jax.eval.protocol`
(<workdir>/split_access.json); the test split is opened once, after every model is trained and
every baseline tuned. Reruns resume: each run directory's stages resume from its checkpoints.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import time
from typing import Any, Callable

import ml_collections
import numpy as np

from neo_jax.baselines import registry as baselines_lib
from neo_jax.catalog import atomic
from neo_jax.catalog import multihost
from neo_jax.catalog.types import Query
from neo_jax.decode.ranker import NEORanker, serving_dtype
from neo_jax.decode.trie import SIDTrie
from neo_jax.eval import metrics
from neo_jax.eval import stats
from neo_jax.eval.protocol import (TASKS, Requests, SplitGuard, make_requests, metric_prefix,
                                   per_request, rank_baseline, rank_neo, task_figures)
from neo_jax.eval.steering import SteerSettings, sample_generations, steer_and_understand
from neo_jax.eval.validation import Validator
from neo_jax.model import vocab as vocab_lib
from neo_jax.run import cold_items
from neo_jax.run import config as config_lib
from neo_jax.run import lanes as lanes_lib
from neo_jax.run import rundir
from neo_jax.run import stages
from neo_jax.run import training
from neo_jax.tasks import builders
from neo_jax.tasks.types import GROUNDING_TASKS, Example

Log = Callable[[str], None]
MAIN_RUN = 'neo_multi'


def _now() -> tuple[float, float]:
  """(wall seconds, this process's CPU seconds over all threads)."""
  return time.perf_counter(), time.process_time()


def _record(out: dict[str, Any], name: str, start: tuple[float, float]) -> None:
  """`seconds/<name>` (wall) and `cpu_seconds/<name>` since `start`. On a shared machine
  the CPU seconds are the figure to size a run by (wall time depends on the other load)."""
  wall, cpu = _now()
  out[f'seconds/{name}'] = wall - start[0]
  out[f'cpu_seconds/{name}'] = cpu - start[1]


# -- NEO runs ----------------------------------------------------------------------------------

# Capability tasks that are another task's own training data: history continuation is
# next-item recommendation with every position a target (tasks.builders.history_examples).
_MONO_EXTRA = {'recommend': ('history',)}


def _capability_subset(examples: list[Example], task: str) -> list[Example]:
  """One task's capability examples (with the task's own extra data, `_MONO_EXTRA`) plus the
  grounding examples the stage keeps."""
  keep = set(GROUNDING_TASKS) | {task} | set(_MONO_EXTRA.get(task, ()))
  out = [e for e in examples if e.task in keep]
  if not any(e.task == task for e in out):
    raise ValueError(f'no capability examples of task {task!r}')
  return out


def ablation_config(cfg: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The NEO config of an ablation ('unconstrained' changes decoding only)."""
  c = ml_collections.ConfigDict(cfg.to_dict())
  if name == 'no_grounding':
    c.grounding.steps, c.grounding.passes = 0, 0.0
  elif name == 'stages_merged':
    c.train.merge_stages = True  # training.stage_plan: one stage on both stages' examples
  elif name == 'random_init':
    c.model.random_init = True  # stages.build_model: the backbone's shape, random weights
  elif name == 'random_sids':
    c.sid.method = 'random'
  elif name != 'unconstrained':
    raise ValueError(f'unknown ablation {name!r}; known: {config_lib.ABLATIONS}')
  return c


def _grounding_dir(run_dir: str) -> str:
  """A run directory's grounding-stage checkpoints (its summary.json: the stage finished)."""
  return os.path.join(run_dir, 'checkpoints', 'grounding')


def share_grounding(src_run: str, dst_run: str, log: Log) -> bool:
  """Copies the finished grounding stage of run directory `src_run` into `dst_run` (NEO-mono
  shares NEO-multi's), unless `dst_run` has one: whole or not at all (a temporary folder,
  then a rename), written by process 0 only, every process meeting at a barrier after.
  Returns whether this process copied it."""
  src, dst = _grounding_dir(src_run), _grounding_dir(dst_run)
  copied = False
  if (multihost.is_writer() and not atomic.as_path(dst).exists()
      and atomic.as_path(os.path.join(src, 'summary.json')).exists()):
    if atomic.is_remote(dst) or atomic.is_remote(src):  # no rename: summary.json goes last
      with atomic.atomic_directory(dst, last=('summary.json',)) as tmp:
        atomic.copy_tree(src, tmp)
    else:
      tmp = dst + '.copying'
      shutil.rmtree(tmp, ignore_errors=True)
      shutil.copytree(src, tmp)
      os.replace(tmp, dst)
    log(f'grounding stage shared with {src_run}')
    copied = True
  multihost.barrier(f'share_grounding/{os.path.basename(dst_run)}')
  return copied


def train_neo(name: str, cfg: ml_collections.ConfigDict, art: stages.Artifacts,
              guard: SplitGuard, workdir: str, log: Log, *, task: str | None = None,
              grounding_from: str | None = None) -> tuple[Any, dict[str, Any]]:
  """A fresh model trained in the run directory `workdir/name` (resuming there). task:
  capability stage on that task only (NEO-mono). grounding_from: a run directory whose
  finished grounding stage (same config, same examples, so the same parameters) is copied
  instead of retrained."""
  run_dir = os.path.join(workdir, name)
  rundir.claim(run_dir, cfg)
  stage = f'train/{name}'
  exs = {'grounding': guard.examples('grounding', stage),
         'capability': guard.examples('capability', stage),
         # Validation during training (the loop's keep-best, when the config asks for it).
         'rec_valid': guard.examples('rec_valid', stage),
         'search_valid': guard.examples('search_valid', stage)}
  if task is not None:
    exs['capability'] = _capability_subset(exs['capability'], task)
  if grounding_from is not None and int(cfg.grounding.steps) > 0:
    share_grounding(grounding_from, run_dir, lambda s: log(f'[{name}] {s}'))
  model = stages.build_model(cfg, art.tokenizer)
  t0 = _now()
  summary = training.train(cfg, model, art.tokenizer, exs, run_dir,
                           lambda s: log(f'{name} {s}'), sid_map=art.sid_map)
  facts_ = {f'{name}/train/{k}': v for k, v in summary.items()
            if isinstance(v, (int, float, np.floating, np.integer))}
  _record(facts_, f'train_{name}', t0)
  facts_[f'{name}/capability_examples'] = len(exs['capability'])
  facts_[f'{name}/num_params'] = vocab_lib.count_params(model)
  return model, facts_


def train_mono(cfg, art, guard, workdir, log, task: str, offset: int = 0):
  """NEO-mono on `task` with seed offset `offset`, from the grounding stage of the NEO-multi
  of that seed when `experiment.share_grounding`: (run name, model, facts)."""
  name = seed_run(f'neo_mono_{task}', offset)
  multi = os.path.join(workdir, seed_run(MAIN_RUN, offset))
  model, facts_ = train_neo(name, cfg, art, guard, workdir, log, task=task,
                            grounding_from=multi if cfg.experiment.share_grounding else None)
  return name, model, facts_


class Rankers:
  """One NEORanker per set of artifacts (tokenizer + trie), pointed at each model in turn:
  its jitted programs take the parameters as an argument, so models of one shape share one
  compilation instead of one each."""

  def __init__(self, cfg: ml_collections.ConfigDict, log: Log = print):
    self.cfg, self.log = cfg, log
    self._by_art: dict[int, NEORanker] = {}

  def __call__(self, model, art: stages.Artifacts, label: str = '') -> NEORanker:
    """The ranker of `art` on `model`; its progress lines go to the run's log, named
    `label` (e.g. 'neo_multi test')."""
    ranker = self._by_art.get(id(art))
    if ranker is None:
      ranker = NEORanker(model, art.tokenizer, art.trie, prompt_len=self.cfg.train.seq_len - 8,
                         batch_size=self.cfg.eval.batch_size, log=self.log,
                         dtype=serving_dtype(self.cfg.eval.dtype))
      self._by_art[id(art)] = ranker
    ranker.set_model(model)
    ranker.progress_label = label
    return ranker


def _train_ablation(name: str, cfg, art, guard, workdir, log):
  """(model, artifacts, guard, facts) of one ablation run."""
  acfg = ablation_config(cfg, name)
  sub = f'ablation_{name}'
  if name != 'random_sids':
    model, f = train_neo(sub, acfg, art, guard, workdir, log)
    return model, art, guard, f
  # New SIDs change the tokenizer and every example: a whole preparation of its own, in
  # <workdir>/ablation_random_sids (its model in the run directory .../neo).
  t0 = _now()
  a_dir = os.path.join(workdir, sub)
  rundir.claim(a_dir, acfg)
  a_art, a_data, a_ex, _ = stages.prepare(acfg, a_dir, log, with_model=False)
  a_art.trie = SIDTrie.build(a_art.sid_map, a_art.tokenizer.sid)
  a_guard = make_guard(acfg, a_art, a_data, a_ex, a_dir)
  model, f = train_neo('neo', acfg, a_art, a_guard, a_dir, log)
  f = {(f'{sub}/' + k[len('neo/'):] if k.startswith('neo/') else k): v
       for k, v in f.items() if k not in ('seconds/train_neo', 'cpu_seconds/train_neo')}
  _record(f, f'train_{sub}', t0)  # preparation included
  return model, a_art, a_guard, f


def seed_config(cfg: ml_collections.ConfigDict, offset: int) -> ml_collections.ConfigDict:
  """`cfg` with train.seed_offset = `offset`: another initialisation and data order on the
  same prepared data (`experiment.seeds`)."""
  c = ml_collections.ConfigDict(cfg.to_dict())
  c.train.seed_offset = int(offset)
  return c


def seed_run(name: str, offset: int) -> str:
  """The run directory name of `name` trained with seed offset `offset` (0: `name`)."""
  return name if offset == 0 else f'{name}_seed{offset}'


def system_of(run: str) -> str:
  """The system a NEO run directory belongs to (neo_multi, neo_mono, ablation_<name>)."""
  base = run.split('_seed')[0]
  return 'neo_mono' if base.startswith('neo_mono_') else base


def train_systems(cfg, art, guard, workdir, log):
  """NEO-multi, NEO-mono (each with `experiment.seeds` seeds) and the trained ablations:
  (models by run name, ablation runs by name (model, artifacts, guard), facts)."""
  e = cfg.experiment
  facts: dict[str, Any] = {'experiment/seeds': int(e.seeds)}
  models: dict[str, Any] = {}
  for offset in range(int(e.seeds)):
    scfg = seed_config(cfg, offset) if offset else cfg
    multi = seed_run(MAIN_RUN, offset)
    models[multi], f = train_neo(multi, scfg, art, guard, workdir, log)
    facts.update(f)
    for task in e.mono_tasks:
      name, models[name], f = train_mono(scfg, art, guard, workdir, log, task, offset)
      facts.update(f)
  ablations: dict[str, tuple[Any, stages.Artifacts, SplitGuard]] = {}
  for name in e.ablations:
    if name != 'unconstrained':
      model, a_art, a_guard, f = _train_ablation(name, cfg, art, guard, workdir, log)
      ablations[name] = (model, a_art, a_guard)
      facts.update(f)
  return models, ablations, facts


def _lane_runs(cfg) -> list[tuple[str, int]]:
  """The trainings of the second lane: NEO-multi per seed, then the trained ablations
  ((run or ablation name, seed offset; -1 for an ablation))."""
  e = cfg.experiment
  return ([(seed_run(MAIN_RUN, o), o) for o in range(int(e.seeds))]
          + [(name, -1) for name in e.ablations if name != 'unconstrained'])


def _lane_facts_path(workdir: str) -> str:
  return os.path.join(workdir, 'lanes', 'lane1.json')


def _lane_baselines(cfg) -> list[str]:
  """The baselines the second lane fits after its NEO trainings (`experiment.lane_baselines`
  of those the config compares), so that both lanes end near the same time."""
  return [b for b in cfg.experiment.baselines if b in cfg.experiment.lane_baselines]


def _lane_baseline_dir(workdir: str, name: str) -> str:
  return os.path.join(workdir, 'lanes', f'baseline_{name}')


def _train_lane(cfg_dict: dict[str, Any], workdir: str, cores: list[int]) -> None:
  """A lane's process (`train_in_lanes`): pins itself to its cores, loads the prepared run
  (`stages.prepare` finds everything the main process prepared), trains `_lane_runs`, fits
  `_lane_baselines` (each saved to <workdir>/lanes/baseline_<name>), then writes their facts
  (training times, step counts, fit facts) to <workdir>/lanes/lane1.json. Its
  SplitGuard keeps no record: the main process records the same reads when it loads the
  trained runs."""
  lanes_lib.pin(cores)
  log = functools.partial(print, flush=True)
  cfg = ml_collections.ConfigDict(cfg_dict)
  log(f'lane 1: cores {cores}, trains ' + ', '.join([n for n, _ in _lane_runs(cfg)]
                                                     + _lane_baselines(cfg)))
  art, data, examples, _ = stages.prepare(cfg, workdir, log, with_model=False)
  guard = SplitGuard(examples, data.split, None)
  facts: dict[str, Any] = {}
  for name, offset in _lane_runs(cfg):
    if offset < 0:
      facts.update(_train_ablation(name, cfg, art, guard, workdir, log)[3])
    else:
      facts.update(train_neo(name, seed_config(cfg, offset) if offset else cfg, art, guard,
                             workdir, log)[1])
  fitted, fit_facts = fit_baselines(cfg, art, guard, workdir, log, _lane_baselines(cfg))
  for name, b in fitted.items():
    b.save(_lane_baseline_dir(workdir, name))
  facts.update(fit_facts)
  atomic.write_json(_lane_facts_path(workdir), rundir.json_safe(facts))


def train_in_lanes(cfg, art, guard, workdir, log):
  """`experiment.lanes` = L > 1 (CPU only): NEO-multi (every seed), the trained ablations
  and then the baselines of `experiment.lane_baselines` (saved there, loaded here) in a
  second process on its share of the cores (`_train_lane`), while this process, on the rest,
  fits the other baselines and then trains NEO-mono (each mono run waits for the grounding
  stage of its NEO-multi when it shares it). The same models as a serial run; the time saved
  is the CPU a single training process leaves idle. Returns (fitted baselines, facts: the
  baselines', NEO-mono's and the lane's training facts, `seconds/lanes`)."""
  e = cfg.experiment
  lanes_lib.check_backend()
  lanes = int(e.lanes)
  t0 = _now()
  atomic.as_path(os.path.join(workdir, 'lanes')).mkdir(parents=True, exist_ok=True)
  atomic.as_path(_lane_facts_path(workdir)).unlink(missing_ok=True)
  there = _lane_baselines(cfg)
  here = [b for b in e.baselines if b not in there]
  log(f'lanes: {", ".join([n for n, _ in _lane_runs(cfg)] + there)} in a second process; '
      f'{", ".join(here + ["NEO-mono"])} here')
  lane = lanes_lib.Lane('1', _train_lane,
                        (cfg.to_dict(), workdir, lanes_lib.cpu_share(1, lanes)))
  with lanes_lib.confined(lanes_lib.cpu_share(0, lanes)):
    try:
      fitted, facts = fit_baselines(cfg, art, guard, workdir, log, here)
      for offset in range(int(e.seeds)):
        scfg = seed_config(cfg, offset) if offset else cfg
        multi = os.path.join(workdir, seed_run(MAIN_RUN, offset))
        for task in e.mono_tasks:
          if e.share_grounding and int(cfg.grounding.steps) > 0:
            lane.wait_for(os.path.join(_grounding_dir(multi), 'summary.json'))
          facts.update(train_mono(scfg, art, guard, workdir, log, task, offset)[2])
      lane.join()
    finally:
      lane.stop()
  with atomic.open_text(_lane_facts_path(workdir)) as f:
    facts.update(json.load(f))
  if there:  # what the lane fitted them on
    view = guard.fit_view('baselines/fit')
    for name in there:
      fitted[name] = baselines_lib.load_fitted(name, _lane_baseline_dir(workdir, name),
                                               art.dataset, view, art.sid_map, log)
    fitted = {name: fitted[name] for name in e.baselines if name in fitted}
  _record(facts, 'lanes', t0)
  facts['experiment/lanes'] = lanes
  return fitted, facts


def excludes_history(cfg, art: stages.Artifacts) -> bool:
  """The primary protocol: exclude each user's history from every ranking
  (`eval.exclude_history`; 'auto': when no user repeats an item in the training events, so
  that the exclusion can hide no target). Decided on the view, never on test data."""
  how = cfg.eval.exclude_history
  if how == 'auto':
    return stages.repeated_events(art.dataset) == 0
  return how == 'true'


# -- baselines and validation ------------------------------------------------------------------

def fit_baselines(cfg, art, guard, workdir, log, names=None):
  """The baselines of the config (or `names` of them), fitted on the view (`art.dataset`:
  training events, training queries) and the split without its test targets, and (with
  experiment.tune_baselines) tuned on validation requests under the primary protocol (the
  history excluded unless the data repeats items): (fitted by name, facts)."""
  e = cfg.experiment
  names = list(e.baselines) if names is None else list(names)
  view = guard.fit_view('baselines/fit')
  validator = None
  if e.tune_baselines:
    valid_queries = [Query(builders.query_of(x), tuple(x.target_items))
                     for x in guard.examples('search_valid', 'baselines/tune')]
    validator = Validator(art.dataset.catalog, view.valid, valid_queries,
                          exclude_history=excludes_history(cfg, art))
  args = {name: dict(a) for name, a in cfg.baseline_args.to_dict().items()}
  if 'dense' in names:  # the catalog's MiniLM embeddings of the SID build, when it made them
    args.setdefault('dense', {}).setdefault('cache_dir', stages.embeddings_dir(workdir))
  return baselines_lib.fit_baselines(names, args, art.dataset, view, validator, log,
                                     cache_root=os.path.join(workdir, 'baselines'),
                                     sid_map=art.sid_map)


def neo_validation(cfg, models, rankers, art, guard, beams: int
                   ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Every first-seed NEO model on validation requests (primary protocol), as
  `valid/<system>/<metric>`: reported beside the test figures and the training times, never
  used to choose anything here. Also returns the per-request values, for `VALID_PER_REQUEST`:
  `<system>/<metric>` arrays and, per task, `requests/<task>` (the request keys that pair two
  runs' arrays, `request_keys`)."""
  out: dict[str, Any] = {}
  per: dict[str, np.ndarray] = {}
  n = int(cfg.experiment.neo_valid_requests)
  if n <= 0:
    return out, per
  reqs = {task: make_requests(guard, 'valid', task, n, cfg.seed, 'neo/valid') for task in TASKS}
  ks = tuple(cfg.eval.ks)
  for task, req in reqs.items():
    if req.examples:
      per[f'requests/{task}'] = request_keys(req)
  for name, model in models.items():
    if '_seed' in name:
      continue
    ranker = rankers(model, art, f'{name} validation')
    for task, req in reqs.items():
      if not req.examples or (name.startswith('neo_mono_') and name != f'neo_mono_{task}'):
        continue
      items, _, _ = rank_neo(ranker, req, beams, art.dataset.catalog, art.sid_map.reachable(),
                             exclude=excludes_history(cfg, art))
      figures = metrics.ranking_metrics(items, req.relevant, (10,))
      for m in ('hr@10', 'ndcg@10'):
        out[f'valid/{metric_prefix(system_of(name), task)}{m}'] = figures[m]
      for m, v in _per_request(task, items, req, ks).items():
        per[f'{system_of(name)}/{m}'] = v
  return out, per


VALID_PER_REQUEST = 'valid_per_request.npz'


def request_keys(req: Requests) -> np.ndarray:
  """One string per request that names it the same in every run of the same data and split:
  the user and target items (recommendation) or the query and its relevant items (search)."""
  if req.task == 'search':
    who = list(req.queries or [e.prompt for e in req.examples])
  else:
    who = [str(e.user_id) for e in req.examples]
  return np.array([f'{w}|{",".join(map(str, r))}' for w, r in zip(who, req.relevant)])


def write_valid_per_request(workdir: str, per: dict[str, np.ndarray]) -> str | None:
  """`<workdir>/valid_per_request.npz` (process 0; nothing when there is nothing): what
  `experiments.compare_runs` pairs across two runs."""
  if not per or not multihost.is_writer():
    return None
  buf = io.BytesIO()
  np.savez(buf, **per)
  return atomic.write_bytes(os.path.join(workdir, VALID_PER_REQUEST), buf.getvalue())


# -- the final evaluation ----------------------------------------------------------------------

def _per_request(task: str, ranked, req: Requests, ks) -> dict[str, np.ndarray]:
  """Per-request values under the result's metric names (search: `search_<metric>`)."""
  pre = '' if task == 'recommend' else 'search_'
  return {pre + m: v for m, v in per_request(ranked, req, ks).items()}


def _protocols(task: str, primary: bool) -> tuple[bool, ...]:
  """The history exclusion of the primary protocol and, for recommendation, the other one
  beside it (search excludes nothing: its flag only names the primary figures)."""
  return (primary, not primary) if task == 'recommend' else (primary,)


def evaluate_systems(cfg, models, fitted, rankers, art, test_reqs: dict[str, Requests],
                     primary: bool
                     ) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]], int, int]:
  """Test figures of every NEO model and baseline on the shared requests, under both
  protocols for recommendation: (figures, per-request values of the primary protocol by
  system (first seed), SIDs checked, valid). Runs of further seeds report their primary
  figures as `<system>/seeds/<metric>/seed<i>`."""
  ks = tuple(cfg.eval.ks)
  beams = max(int(cfg.eval.num_beams), max(ks))
  cat, reachable = art.dataset.catalog, art.sid_map.reachable()
  out: dict[str, Any] = {}
  per: dict[str, dict[str, np.ndarray]] = {}
  checked = valid = 0
  for name, model in models.items():
    ranker = rankers(model, art, f'{name} test')
    seed = name.partition('_seed')[2]
    system = system_of(name)
    for task, req in test_reqs.items():
      if not req.examples or (name.startswith('neo_mono_') and
                              not name.startswith(f'neo_mono_{task}')):
        continue
      t1 = _now()
      for exclude in _protocols(task, primary)[:1 if seed else 2]:
        items, c, v = rank_neo(ranker, req, beams, cat, reachable, exclude=exclude)
        checked, valid = checked + c, valid + v
        figures = task_figures(metric_prefix(system, task, exclude, primary), items, req, cat,
                               ks)
        if seed:
          n = len(f'{system}/')
          figures = {f'{system}/seeds/{k[n:]}/seed{seed}': v for k, v in figures.items()}
        out.update(figures)
        if exclude == primary and not seed:
          per.setdefault(system, {}).update(_per_request(task, items, req, ks))
      _record(out, f'eval_{name}_{task}', t1)
  for name, b in fitted.items():
    for task in b.tasks:
      req = test_reqs[task]
      if not req.examples:
        continue
      for exclude in _protocols(task, primary):
        ranked = rank_baseline(b, req, max(ks), exclude)
        out.update(task_figures(metric_prefix(name, task, exclude, primary), ranked, req, cat,
                                ks))
        if exclude == primary:
          per.setdefault(name, {}).update(_per_request(task, ranked, req, ks))
  return out, per, checked, valid


def seed_figures(result: dict[str, Any], seeds: int) -> dict[str, Any]:
  """`<system>/seeds/<metric>/mean` and `/std` over the seeds (the first seed's figure is
  `<system>/<metric>`), for every NEO system and headline metric."""
  out: dict[str, Any] = {}
  if seeds <= 1:
    return out
  for system in ('neo_multi', 'neo_mono'):
    for m in ('hr@10', 'ndcg@10', 'search_hr@10', 'search_ndcg@10'):
      first = result.get(f'{system}/{m}')
      rest = [result.get(f'{system}/seeds/{m}/seed{i}') for i in range(1, seeds)]
      if first is None or any(v is None for v in rest):
        continue
      mean, std = stats.mean_std([first] + rest)
      out[f'{system}/seeds/{m}/seed0'] = first
      out[f'{system}/seeds/{m}/mean'] = mean
      out[f'{system}/seeds/{m}/std'] = std
  return out


def comparisons(cfg, per: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
  """Paired bootstrap intervals of NEO-multi against every other system, on the headline
  metrics of each task (`eval.stats.compare`: `compare/neo_multi_vs_<b>/<metric>/...`)."""
  if MAIN_RUN not in per:
    return {}
  pairs = [(MAIN_RUN, other) for other in per if other != MAIN_RUN]
  names = ('hr@10', 'ndcg@10', 'search_hr@10', 'search_ndcg@10')
  return stats.compare(per, pairs, names, resamples=int(cfg.eval.bootstrap_resamples),
                       seed=int(cfg.seed))  # + bootstrap/{resamples,seed,level}


def evaluate_ablations(cfg, models, ablations, rankers, art, guard, test_reqs, result, per,
                       primary: bool) -> dict[str, Any]:
  """The ablations on the same test requests (primary protocol), reported relative to
  NEO-multi; the per-request values of those that share NEO-multi's requests go into `per`
  (for the paired intervals)."""
  ks = tuple(cfg.eval.ks)
  beams = max(int(cfg.eval.num_beams), max(ks))
  out: dict[str, Any] = {}
  for name in cfg.experiment.ablations:
    sys_name = f'ablation_{name}'
    if name == 'unconstrained':
      model, a_art, a_guard = models[MAIN_RUN], art, guard
    else:
      model, a_art, a_guard = ablations[name]
    a_ranker = rankers(model, a_art, f'ablation_{name} test')
    if a_guard is not guard:
      a_guard.open_test()
    for task in TASKS:
      req = (test_reqs[task] if a_guard is guard else
             make_requests(a_guard, 'test', task, int(cfg.eval.max_requests), cfg.seed,
                           'final/requests'))
      if not req.examples:
        continue
      items, c, v = rank_neo(a_ranker, req, beams, a_art.dataset.catalog,
                             a_art.sid_map.reachable(), constrained=name != 'unconstrained',
                             exclude=primary)
      out.update(task_figures(metric_prefix(sys_name, task), items, req,
                              a_art.dataset.catalog, ks))
      if a_guard is guard:
        per.setdefault(sys_name, {}).update(_per_request(task, items, req, ks))
      if name == 'unconstrained':
        out[f'{sys_name}/valid_sid_fraction'] = v / c if c else None
    out[f'{sys_name}/status'] = 'ok'
    for m in ('ndcg@10', 'hr@10', 'search_ndcg@10', 'search_hr@10'):
      ref, val = result.get(f'{MAIN_RUN}/{m}'), out.get(f'{sys_name}/{m}')
      if ref is not None and val is not None:
        out[f'{sys_name}/rel_{m}'] = (val - ref) / ref if ref else None
  return out


def _request_facts(test_reqs: dict[str, Requests]) -> dict[str, Any]:
  """How many requests of each task, and how many recommendation targets are in their own
  history (excluding the history makes those unreachable; 0 on data without repeats)."""
  out: dict[str, Any] = {f'requests/{t}': len(r.examples) for t, r in test_reqs.items()}
  rec = test_reqs.get('recommend')
  if rec is not None and rec.histories is not None:
    out['requests/recommend_target_in_history'] = sum(
        bool(np.isin(r, h).any()) for r, h in zip(rec.relevant, rec.histories))
  return out


def _steer(cfg, models, rankers, art, guard, workdir):
  """Steerability, understanding and the sample generations of NEO-multi: (figures,
  samples, SIDs checked, valid)."""
  e = cfg.experiment
  ranker = rankers(models[MAIN_RUN], art, f'{MAIN_RUN} steering')
  settings = SteerSettings(requests=e.steer_requests, beams=e.steer_beams,
                           understanding_requests=e.understanding_requests,
                           max_new_tokens=e.max_new_tokens,
                           history_len=cfg.tasks.history_len, seed=cfg.seed)
  out = steer_and_understand(ranker, guard, art.dataset.catalog, art.dataset.users,
                             art.sid_map, settings, os.path.join(workdir, 'samples.json'))
  # User understanding is NEO-multi's, on the held-out users: also under the system's name.
  for k in ('summary_precision', 'summary_recall', 'summary_f1', 'summaries'):
    if k in out:
      out[f'{MAIN_RUN}/{k}'] = out[k]
  samples = sample_generations(ranker, guard, art.sid_map, art.tokenizer.sid,
                               art.dataset.catalog, e.max_new_tokens)
  checked = sum(len(g['items']) for g in samples)
  valid = sum(row is not None for g in samples for row, _, _ in g['items'])
  return out, samples, checked, valid


def final_evaluation(cfg, models, ablations, fitted, rankers, art, guard, workdir, log
                     ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """Opens the test split and measures everything on it: (figures, sample generations)."""
  guard.open_test()
  t0 = _now()
  test_reqs = {task: make_requests(guard, 'test', task, int(cfg.eval.max_requests), cfg.seed,
                                   'final/requests') for task in TASKS}
  result: dict[str, Any] = _request_facts(test_reqs)
  primary = excludes_history(cfg, art)
  result['protocol/exclude_history'] = primary
  figures, per, checked, valid = evaluate_systems(cfg, models, fitted, rankers, art, test_reqs,
                                                  primary)
  result.update(figures)
  log('eval: ' + ', '.join(models) + (', ' + ', '.join(fitted) if fitted else '') + ' done')
  for name in cfg.experiment.baselines:
    if result.get(f'{name}/status', 'ok') != 'ok':
      for task in TASKS:
        result[f'{metric_prefix(name, task)}ndcg@10'] = None
        result[f'{metric_prefix(name, task)}hr@10'] = None
  result.update(evaluate_ablations(cfg, models, ablations, rankers, art, guard, test_reqs,
                                   result, per, primary))
  result.update(seed_figures(result, int(cfg.experiment.seeds)))
  result.update(comparisons(cfg, per))
  t1 = _now()
  figures, samples, c, v = _steer(cfg, models, rankers, art, guard, workdir)
  result.update(figures)
  checked, valid = checked + c, valid + v
  _record(result, 'steer_understand', t1)
  result['sid_checked'] = checked
  result['valid_sid_fraction'] = valid / checked if checked else None
  _record(result, 'final_eval', t0)
  return result, samples


# -- the experiment ----------------------------------------------------------------------------

def claim_workdir(cfg, workdir: str, log: Log, overwrite: bool = False):
  """Claims `workdir` for `cfg` (`rundir.claim`). The user's own data (data.dataset 'generic')
  is read, every line validated, before the workdir is claimed, so that bad data leaves no
  recorded config behind that a corrected --data_dir would then conflict with; it is returned
  (None for the built-in datasets, which are built into the workdir)."""
  ds = stages.load_data(cfg, workdir, log) if cfg.data.dataset == 'generic' else None
  rundir.claim(workdir, cfg, overwrite=overwrite)
  return ds


def prepare(cfg, workdir, log, overwrite=False):
  """Validates `cfg`, claims `workdir` for it (`rundir.claim`) and prepares the artifacts:
  (cfg, artifacts with the trie, guard, facts)."""
  cfg = config_lib.validate(cfg)
  t0 = _now()
  ds = claim_workdir(cfg, workdir, log, overwrite)
  art, data, examples, facts = stages.prepare(cfg, workdir, log, with_model=False, dataset=ds)
  art.trie = SIDTrie.build(art.sid_map, art.tokenizer.sid)
  facts.update(recipe_facts(cfg))
  cfg, budgets = training.resolve_budgets(cfg, examples, art.tokenizer, log)
  if budgets:
    log('budgets: ' + ', '.join(_budget_text(budgets, s) for s in training.STAGES
                                if f'budget/{s}/steps' in budgets))
  facts.update(budgets)
  _record(facts, 'prepare', t0)
  return cfg, art, make_guard(cfg, art, data, examples, workdir), facts


def _budget_text(budgets: dict[str, Any], stage: str) -> str:
  """'grounding 6 passes = 943 steps', or with a cap '... capped at 943 steps (4.21 passes)'."""
  b = lambda k: budgets[f'budget/{stage}/{k}']
  if b('capped'):
    return (f'{stage} {b("passes"):g} passes capped at {b("steps")} steps '
            f'({b("passes_trained"):g} passes)')
  return f'{stage} {b("passes"):g} passes = {b("steps")} steps'


def recipe_facts(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """`recipe/<setting>`: the NEO recipe's settings that the report states (what each stage
  trains, its budget, the prompt's history, the grounding text, the SIDs, the model)."""
  m = cfg.model
  out: dict[str, Any] = {
      'recipe/grounding_trains': 'sid_rows' if training.grounding_trains_rows(cfg) else 'all',
      'recipe/grounding_text': cfg.tasks.grounding_text,
      'recipe/history_len': int(cfg.tasks.history_len),
      'recipe/history_window': int(cfg.tasks.history_window),
      'recipe/seq_len': int(cfg.train.seq_len),
      'recipe/batch_size': int(cfg.train.batch_size),
      'recipe/sid_encoder': cfg.sid.encoder,
      'recipe/model': (m.backbone or f'{m.preset} d_model={m.d_model} layers={m.num_layers}'),
  }
  for stage in training.STAGES:
    passes = float(cfg[stage].passes)
    out[f'recipe/{stage}_budget'] = (f'{passes:g} passes' if passes > 0
                                     else f'{int(cfg[stage].steps)} steps')
    seconds = float(cfg[stage].get('time_budget_s', 0.0))
    if seconds > 0:
      out[f'recipe/{stage}_time_budget'] = f'{seconds:g} s'
  return out


def make_guard(cfg, art: stages.Artifacts, data: stages.DataSplit, examples, workdir: str
               ) -> SplitGuard:
  """The SplitGuard of a prepared run: the training and validation examples, the whole
  split, and the builder of the test examples that only `open_test()` calls."""
  return SplitGuard(examples, data.split, os.path.join(workdir, 'split_access.json'),
                    test_examples=functools.partial(stages.build_test_examples, cfg, data,
                                                    art.sid_map, art.tokenizer))


def _lanes(cfg: ml_collections.ConfigDict, workdir: str, log: Log) -> int:
  """The lanes to train in (`lanes_lib.resolve`); 1 on a remote workdir, with a line saying
  why: a lane waits for the other's files with a local-path check (`lanes.Lane.wait_for`)."""
  lanes = lanes_lib.resolve(int(cfg.experiment.lanes))
  if lanes > 1 and atomic.is_remote(workdir):
    log(f'lanes: 1 instead of {lanes}: lanes wait for each other\'s files on a local workdir '
        f'only, and {workdir} is remote')
    return 1
  return lanes


def run_experiment(cfg: ml_collections.ConfigDict, workdir: str, log: Log = print, *,
                   overwrite: bool = False, train_only: bool = False
                   ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """Everything of the module docstring under `workdir` (train_only: up to the end of
  training). Returns (the flat result: numbers, None for figures that could not be
  measured, strings for statuses; the sample generations).

  Raises:
    ConfigError, RunDirError: a bad config, or a workdir trained with another config.
  """
  t_all = _now()
  cfg, art, guard, result = prepare(cfg, workdir, log, overwrite)
  fitted = None
  cfg.experiment.lanes = _lanes(cfg, workdir, log)
  if cfg.experiment.lanes > 1 and not train_only:
    fitted, lane_facts = train_in_lanes(cfg, art, guard, workdir, log)
  models, ablations, facts = train_systems(cfg, art, guard, workdir, log)
  result.update(facts)
  result['dataset'] = cfg.data.dataset
  if train_only:
    _record(result, 'total', t_all)
    return rundir.json_safe(result), []
  if fitted is None:
    fitted, facts = fit_baselines(cfg, art, guard, workdir, log)
  else:  # the lanes' own training times, not those of train_systems' reloads
    facts = lane_facts
  result.update(facts)
  result['baselines_tuned'] = bool(cfg.experiment.tune_baselines)
  beams = max(int(cfg.eval.num_beams), max(cfg.eval.ks))
  rankers = Rankers(cfg, log)
  valid_figures, valid_per = neo_validation(cfg, models, rankers, art, guard, beams)
  result.update(valid_figures)
  write_valid_per_request(workdir, valid_per)
  if not cfg.experiment.open_test:
    log('experiment.open_test=false: validation only, the test split left unread')
    _record(result, 'total', t_all)
    return rundir.json_safe(result), []
  figures, samples = final_evaluation(cfg, models, ablations, fitted, rankers, art, guard,
                                      workdir, log)
  result.update(figures)
  if cfg.experiment.cold_items > 0:  # NEO-multi of W is the upper bound (run/cold_items.py)
    result.update(cold_items.run_cold(cfg, workdir, cfg.experiment.cold_items, log,
                                      train=run_experiment))
  _record(result, 'total', t_all)
  return rundir.json_safe(result), samples
