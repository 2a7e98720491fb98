"""A NEO experiment as one library call: NEO-multi (and, as the config asks, NEO-mono and the
ablations) against the baselines, with a validation protocol that keeps the test split
untouched until the final evaluation. The quickstart, `train` and `evaluate` commands all run
this with different configs.

`run_experiment(cfg, workdir)`:
  1. prepare (`stages.prepare`): data, split, SIDs, tokenizer, every task's examples;
  2. NEO-multi: both training stages on every task, in the run directory <workdir>/neo_multi;
  3. NEO-mono: one model per task of `experiment.mono_tasks` (capability stage on that task's
     examples + the grounding examples, the grounding stage shared with NEO-multi), in
     <workdir>/neo_mono_<task>;
  4. ablations (`experiment.ablations`), each a NEO run in <workdir>/ablation_<name>;
  5. baselines (`experiment.baselines`), fitted on the training split and, with
     `experiment.tune_baselines`, tuned on the validation split;
  6. the final evaluation on the test split only: full ranking over the catalog for
     recommendation (the target's type) and search, SID validity, steerability, user
     understanding and recsplanation faithfulness, and the sample generations.

Every read of evaluation data goes through the `SplitGuard` of `neo_jax.eval.protocol`
(<workdir>/split_access.json); the test split is opened once, after every model is trained and
every baseline tuned. Reruns resume: each run directory's stages resume from its checkpoints.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any, Callable

import ml_collections
import numpy as np

from neo_jax.baselines import registry as baselines_lib
from neo_jax.catalog.types import Query
from neo_jax.decode.ranker import NEORanker
from neo_jax.decode.trie import SIDTrie
from neo_jax.eval import metrics
from neo_jax.eval.protocol import (TASKS, Requests, SplitGuard, make_requests, metric_prefix,
                                   rank_baseline, rank_neo, task_figures)
from neo_jax.eval.steering import SteerSettings, sample_generations, steer_and_understand
from neo_jax.eval.validation import Validator
from neo_jax.model import vocab as vocab_lib
from neo_jax.run import config as config_lib
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
    c.grounding.steps = 0
  elif name == 'stages_merged':
    c.train.merge_stages = True  # training.stage_plan: one stage on both stages' examples
  elif name == 'random_init':
    c.model.random_init = True  # stages.build_model: the backbone's shape, random weights
  elif name == 'random_sids':
    c.sid.method = 'random'
  elif name != 'unconstrained':
    raise ValueError(f'unknown ablation {name!r}; known: {config_lib.ABLATIONS}')
  return c


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
    src = os.path.join(grounding_from, 'checkpoints', 'grounding')
    dst = os.path.join(run_dir, 'checkpoints', 'grounding')
    if not os.path.exists(dst) and os.path.exists(os.path.join(src, 'summary.json')):
      shutil.copytree(src, dst)
      log(f'[{name}] grounding stage shared with {grounding_from}')
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


class Rankers:
  """One NEORanker per set of artifacts (tokenizer + trie), pointed at each model in turn:
  its jitted programs take the parameters as an argument, so models of one shape share one
  compilation instead of one each."""

  def __init__(self, cfg: ml_collections.ConfigDict):
    self.cfg = cfg
    self._by_art: dict[int, NEORanker] = {}

  def __call__(self, model, art: stages.Artifacts) -> NEORanker:
    ranker = self._by_art.get(id(art))
    if ranker is None:
      ranker = NEORanker(model, art.tokenizer, art.trie, prompt_len=self.cfg.train.seq_len - 8,
                         batch_size=self.cfg.eval.batch_size)
      self._by_art[id(art)] = ranker
    ranker.set_model(model)
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
  a_art, a_ex, _ = stages.prepare(acfg, a_dir, log, with_model=False)
  a_art.trie = SIDTrie.build(a_art.sid_map, a_art.tokenizer.sid)
  a_guard = SplitGuard(a_ex, a_art.split, os.path.join(a_dir, 'split_access.json'))
  model, f = train_neo('neo', acfg, a_art, a_guard, a_dir, log)
  f = {(f'{sub}/' + k[len('neo/'):] if k.startswith('neo/') else k): v
       for k, v in f.items() if k not in ('seconds/train_neo', 'cpu_seconds/train_neo')}
  _record(f, f'train_{sub}', t0)  # preparation included
  return model, a_art, a_guard, f


def train_systems(cfg, art, guard, workdir, log):
  """NEO-multi, NEO-mono and the trained ablations: (models by name, ablation runs by name
  (model, artifacts, guard), facts)."""
  e = cfg.experiment
  facts: dict[str, Any] = {}
  models: dict[str, Any] = {}
  models[MAIN_RUN], f = train_neo(MAIN_RUN, cfg, art, guard, workdir, log)
  facts.update(f)
  for task in e.mono_tasks:
    name = f'neo_mono_{task}'
    models[name], f = train_neo(
        name, cfg, art, guard, workdir, log, task=task,
        grounding_from=os.path.join(workdir, MAIN_RUN) if e.share_grounding else None)
    facts.update(f)
  ablations: dict[str, tuple[Any, stages.Artifacts, SplitGuard]] = {}
  for name in e.ablations:
    if name != 'unconstrained':
      model, a_art, a_guard, f = _train_ablation(name, cfg, art, guard, workdir, log)
      ablations[name] = (model, a_art, a_guard)
      facts.update(f)
  return models, ablations, facts


# -- baselines and validation ------------------------------------------------------------------

def fit_baselines(cfg, art, guard, workdir, log):
  """The baselines of the config, fitted on the training split and (with
  experiment.tune_baselines) tuned on validation requests: (fitted by name, facts)."""
  e = cfg.experiment
  view = guard.fit_view('baselines/fit')
  validator = None
  if e.tune_baselines:
    valid_queries = [Query(builders.query_of(x), tuple(x.target_items))
                     for x in guard.examples('search_valid', 'baselines/tune')]
    validator = Validator(art.dataset.catalog, view.valid, valid_queries)
  args = {name: dict(a) for name, a in cfg.baseline_args.to_dict().items()}
  return baselines_lib.fit_baselines(e.baselines, args, art.dataset, view, validator, log,
                                     cache_root=os.path.join(workdir, 'baselines'),
                                     sid_map=art.sid_map)


def neo_validation(cfg, ranker: NEORanker, art, guard, beams: int) -> dict[str, Any]:
  """NEO-multi on validation requests (reported beside the test figures, never used to
  choose anything)."""
  out: dict[str, Any] = {}
  n = int(cfg.experiment.neo_valid_requests)
  if n <= 0:
    return out
  for task in TASKS:
    req = make_requests(guard, 'valid', task, n, cfg.seed, f'{MAIN_RUN}/valid')
    if req.examples:
      items, _, _ = rank_neo(ranker, req, beams, art.dataset.catalog, art.sid_map.reachable())
      out[f'valid/{metric_prefix(MAIN_RUN, task)}ndcg@10'] = metrics.ranking_metrics(
          items, req.relevant, (10,))['ndcg@10']
  return out


# -- the final evaluation ----------------------------------------------------------------------

def evaluate_systems(cfg, models, fitted, rankers, art, test_reqs: dict[str, Requests]
                     ) -> tuple[dict[str, Any], int, int]:
  """Test figures of every NEO model and baseline on the shared requests: (figures, SIDs
  checked, valid)."""
  ks = tuple(cfg.eval.ks)
  beams = max(int(cfg.eval.num_beams), max(ks))
  cat, reachable = art.dataset.catalog, art.sid_map.reachable()
  out: dict[str, Any] = {}
  checked = valid = 0
  for name, model in models.items():
    ranker = rankers(model, art)
    system = 'neo_mono' if name.startswith('neo_mono_') else name
    for task, req in test_reqs.items():
      if not req.examples or (name.startswith('neo_mono_') and name != f'neo_mono_{task}'):
        continue
      t1 = _now()
      items, c, v = rank_neo(ranker, req, beams, cat, reachable)
      checked, valid = checked + c, valid + v
      out.update(task_figures(metric_prefix(system, task), items, req, cat, ks))
      _record(out, f'eval_{name}_{task}', t1)
  for name, b in fitted.items():
    for task in b.tasks:
      req = test_reqs[task]
      if req.examples:
        out.update(task_figures(metric_prefix(name, task), rank_baseline(b, req, max(ks)),
                                req, cat, ks))
  return out, checked, valid


def evaluate_ablations(cfg, models, ablations, rankers, art, guard, test_reqs, result
                       ) -> dict[str, Any]:
  """The ablations on the same test requests, reported relative to NEO-multi."""
  ks = tuple(cfg.eval.ks)
  beams = max(int(cfg.eval.num_beams), max(ks))
  out: dict[str, Any] = {}
  for name in cfg.experiment.ablations:
    sys_name = f'ablation_{name}'
    if name == 'unconstrained':
      model, a_art, a_guard = models[MAIN_RUN], art, guard
    else:
      model, a_art, a_guard = ablations[name]
    a_ranker = rankers(model, a_art)
    if a_guard is not guard:
      a_guard.open_test()
    for task in TASKS:
      req = (test_reqs[task] if a_guard is guard else
             make_requests(a_guard, 'test', task, int(cfg.eval.max_requests), cfg.seed,
                           'final/requests'))
      if not req.examples:
        continue
      items, c, v = rank_neo(a_ranker, req, beams, a_art.dataset.catalog,
                             a_art.sid_map.reachable(), constrained=name != 'unconstrained')
      out.update(task_figures(metric_prefix(sys_name, task), items, req,
                              a_art.dataset.catalog, ks))
      if name == 'unconstrained':
        out[f'{sys_name}/valid_sid_fraction'] = v / c if c else None
    out[f'{sys_name}/status'] = 'ok'
    for m in ('ndcg@10', 'hr@10', 'search_ndcg@10', 'search_hr@10'):
      ref, val = result.get(f'{MAIN_RUN}/{m}'), out.get(f'{sys_name}/{m}')
      if ref is not None and val is not None:
        out[f'{sys_name}/rel_{m}'] = (val - ref) / ref if ref else None
  return out


def final_evaluation(cfg, models, ablations, fitted, rankers, art, guard, workdir, log
                     ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """Opens the test split and measures everything on it: (figures, sample generations)."""
  guard.open_test()
  t0 = _now()
  result: dict[str, Any] = {}
  test_reqs = {task: make_requests(guard, 'test', task, int(cfg.eval.max_requests), cfg.seed,
                                   'final/requests') for task in TASKS}
  for task, req in test_reqs.items():
    result[f'requests/{task}'] = len(req.examples)
  figures, checked, valid = evaluate_systems(cfg, models, fitted, rankers, art, test_reqs)
  result.update(figures)
  log('eval: ' + ', '.join(models) + (', ' + ', '.join(fitted) if fitted else '') + ' done')
  for name in cfg.experiment.baselines:
    if result.get(f'{name}/status', 'ok') != 'ok':
      for task in TASKS:
        result[f'{metric_prefix(name, task)}ndcg@10'] = None
        result[f'{metric_prefix(name, task)}hr@10'] = None
  result.update(evaluate_ablations(cfg, models, ablations, rankers, art, guard, test_reqs,
                                   result))
  t1 = _now()
  e = cfg.experiment
  ranker = rankers(models[MAIN_RUN], art)
  settings = SteerSettings(requests=e.steer_requests, beams=e.steer_beams,
                           understanding_requests=e.understanding_requests,
                           max_new_tokens=e.max_new_tokens,
                           history_len=cfg.tasks.history_len, seed=cfg.seed)
  result.update(steer_and_understand(ranker, guard, art.dataset.catalog, art.dataset.users,
                                     art.sid_map, settings,
                                     os.path.join(workdir, 'samples.json')))
  samples = sample_generations(ranker, guard, art.sid_map, art.tokenizer.sid,
                               art.dataset.catalog, e.max_new_tokens)
  for g in samples:
    for row, _, _ in g['items']:
      checked += 1
      valid += row is not None
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
  art, examples, facts = stages.prepare(cfg, workdir, log, with_model=False, dataset=ds)
  art.trie = SIDTrie.build(art.sid_map, art.tokenizer.sid)
  _record(facts, 'prepare', t0)
  guard = SplitGuard(examples, art.split, os.path.join(workdir, 'split_access.json'))
  return cfg, art, guard, facts


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
  models, ablations, facts = train_systems(cfg, art, guard, workdir, log)
  result.update(facts)
  result['dataset'] = cfg.data.dataset
  if train_only:
    _record(result, 'total', t_all)
    return rundir.json_safe(result), []
  fitted, facts = fit_baselines(cfg, art, guard, workdir, log)
  result.update(facts)
  result['baselines_tuned'] = bool(cfg.experiment.tune_baselines)
  beams = max(int(cfg.eval.num_beams), max(cfg.eval.ks))
  rankers = Rankers(cfg)
  result.update(neo_validation(cfg, rankers(models[MAIN_RUN], art), art, guard, beams))
  figures, samples = final_evaluation(cfg, models, ablations, fitted, rankers, art, guard,
                                      workdir, log)
  result.update(figures)
  _record(result, 'total', t_all)
  return rundir.json_safe(result), samples
