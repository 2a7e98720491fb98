"""The paper's comparison as one library call: NEO-multi, NEO-mono and the ablations against
the baselines, on one dataset, with a validation protocol that keeps the test split untouched
until the final evaluation.

`run_experiment(cfg, workdir)` (what `experiments/evaluate.py` calls):
  1. prepare (`neo_jax.run.stages.prepare`): data, split, SIDs, tokenizer, every task's examples;
  2. NEO-multi: both training stages on every task, in <workdir>/neo_multi;
  3. NEO-mono: one model per task of `experiment.mono_tasks` (capability stage on that task's
     examples + the grounding examples, the grounding stage shared with NEO-multi), in
     <workdir>/neo_mono_<task>;
  4. ablations (`experiment.ablations`), each a separate NEO run in <workdir>/ablation_<name>;
  5. baselines from the registry (`BASELINES`), fitted on the training split and tuned on the
     validation split by their own `fit(..., valid=True)` (neo_jax/baselines/base.py);
  6. the final evaluation on the test split only: full ranking over the catalog for
     recommendation (the target's type) and search, SID validity, steerability, user
     understanding and recsplanation faithfulness.

Validation protocol. Every read of evaluation data goes through a `SplitGuard` that logs which
stage read which split (<workdir>/split_access.json) and refuses any test read before
`open_test()`, which is called once, after every model is trained and every baseline tuned.
Baselines are fitted on a copy of the split whose test targets are removed. Training uses the
training split only (its examples are built from `Split.train`); checkpoint choice is the
training loop's (the last step, or the validation-based keep-best of the training config when
it has one).

Reruns resume: each NEO run's stages resume from the checkpoints in its subdirectory, and an
already trained stage is only restored.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import os
import shutil
import time
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np
from flax import nnx

from neo_jax.run import stages as pipeline
from neo_jax.catalog.splits import Split, Target
from neo_jax.catalog.types import Query
from neo_jax.decode.trie import SIDTrie
from neo_jax.baselines import base as baselines_lib
from neo_jax.eval import metrics as metrics_lib
from neo_jax.eval import understanding
from neo_jax.decode.ranker import NEORanker
from neo_jax.tasks import builders
from neo_jax.tasks import facts
from neo_jax.tasks import prompts
from neo_jax.tasks.types import GROUNDING_TASKS, Example

Log = Callable[[str], None]

# Which split each examples key belongs to.
SPLIT_OF = {'grounding': 'train', 'capability': 'train', 'rec_valid': 'valid',
            'search_valid': 'valid', 'rec_test': 'test', 'explain_test': 'test',
            'search_test': 'test', 'summary_test': 'test'}
KS = (1, 5, 10, 30)


class TestSplitAccessError(RuntimeError):
  """A stage asked for test data before the final evaluation."""


class SplitGuard:
  """The only way the experiment reads evaluation data; logs every read by stage and split.

  The log (a list of {'stage', 'split', 'what', 'order'}) is rewritten to `path` after every
  read, so that a test can check which split each stage read and that no test read happened
  before `open_test()`.
  """

  def __init__(self, examples: dict[str, list[Example]], split: Split, path: str | None):
    unknown = sorted(set(examples) - set(SPLIT_OF))
    if unknown:
      raise ValueError(f'examples keys of unknown split: {unknown}; known: {sorted(SPLIT_OF)}')
    self._examples = examples
    self._split = split
    self.path = path
    self.reads: list[dict[str, Any]] = []
    self.test_open = False

  def _read(self, part: str, what: str, stage: str) -> None:
    if part == 'test' and not self.test_open:
      raise TestSplitAccessError(f'stage {stage!r} read test data ({what}) before the final '
                                 'evaluation')
    self.reads.append({'stage': stage, 'split': part, 'what': what, 'order': len(self.reads)})
    if self.path:
      with open(self.path, 'w') as f:
        json.dump({'test_opened_at': self._opened_at(), 'reads': self.reads}, f, indent=1)

  def _opened_at(self) -> int | None:
    for r in self.reads:
      if r['what'] == 'open_test':
        return r['order']
    return None

  def examples(self, key: str, stage: str) -> list[Example]:
    if key not in self._examples:
      raise KeyError(f'no examples {key!r}; have {sorted(self._examples)}')
    self._read(SPLIT_OF[key], key, stage)
    return self._examples[key]

  def targets(self, part: str, stage: str) -> list[Target]:
    """The split's valid or test targets (user, history, target)."""
    if part not in ('valid', 'test'):
      raise ValueError(f"targets of 'valid' or 'test', got {part!r}")
    self._read(part, f'{part}_targets', stage)
    return getattr(self._split, part)

  def fit_view(self, stage: str) -> Split:
    """The split without its test targets: what baselines are fitted and tuned on."""
    self._read('train', 'split_without_test', stage)
    return dataclasses.replace(self._split, test=[])

  def open_test(self) -> None:
    self.test_open = True
    self._read('test', 'open_test', 'final')


def _now() -> tuple[float, float]:
  """(wall seconds, this process's CPU seconds over all threads)."""
  return time.perf_counter(), time.process_time()


def _record(out: dict[str, Any], name: str, start: tuple[float, float]) -> None:
  """`seconds/<name>` (wall) and `cpu_seconds/<name>` since `start`. On a shared machine
  the CPU seconds are the figure to size a run by (wall time depends on the other load)."""
  wall, cpu = _now()
  out[f'seconds/{name}'] = wall - start[0]
  out[f'cpu_seconds/{name}'] = cpu - start[1]


# -- metrics ---------------------------------------------------------------------------------

def ranking_figures(ranked_BxK: np.ndarray, relevant: Sequence[Sequence[int]],
                    ks: Sequence[int] = KS) -> dict[str, float]:
  """hr@k, recall@k, ndcg@k and MRR over full rankings (`neo_jax.eval.metrics`; nothing
  excluded, the project's protocol)."""
  return metrics_lib.ranking_metrics(np.asarray(ranked_BxK), relevant, tuple(ks))


# -- baselines ---------------------------------------------------------------------------------
# Baselines implement `neo_jax.baselines.base.Baseline`: fit(dataset, split, valid=True,
# valid_queries=...) fits on split.train and tunes on the validation split only; then
# rank_recommend(histories, types, k) / rank_search(queries, types, k) -> (N, k) rows.


def _lazy(module: str, attr: str, config_attr: str | None = None
          ) -> Callable[[dict[str, Any]], baselines_lib.Baseline]:
  """A registry entry: imports `module` when the experiment asks for the baseline (so one
  whose module is not in this checkout is reported missing, not fatal) and builds
  `attr(**args)`, or `attr(config_attr(**args))` for baselines configured by a dataclass."""

  def make(args: dict[str, Any]) -> baselines_lib.Baseline:
    mod = importlib.import_module(module)
    cls = getattr(mod, attr)
    if config_attr is not None:
      return cls(getattr(mod, config_attr)(**args))
    return cls(**args)

  return make


# name -> make(args) (args: the config's `baseline_args.<name>`).
BASELINES: dict[str, Callable[[dict[str, Any]], baselines_lib.Baseline]] = {
    'popularity': _lazy('neo_jax.baselines.base', 'Popularity'),
    'bm25': _lazy('neo_jax.baselines.base', 'BM25'),
    'bm25s': _lazy('neo_jax.baselines.base', 'BM25S'),
    'dense': _lazy('neo_jax.baselines.dense', 'Dense'),
    'sasrec': _lazy('neo_jax.baselines.sasrec', 'SASRec', 'SASRecConfig'),
    'tiger': _lazy('neo_jax.baselines.tiger', 'TIGER', 'TIGERConfig'),
}


def register_baseline(name: str, make: Callable[[dict[str, Any]], baselines_lib.Baseline]
                      ) -> None:
  """Adds (or replaces) a baseline by name: `make(args)` returns an unfitted Baseline."""
  if not name or '/' in name:
    raise ValueError(f'baseline name must be non-empty without "/", got {name!r}')
  BASELINES[name] = make


def fit_baselines(names_: Sequence[str], args: Any, dataset, view: Split,
                  valid_queries: Sequence[Query], log: Log, workdir: str | None = None,
                  sid_map: Any = None
                  ) -> tuple[dict[str, baselines_lib.Baseline], dict[str, Any]]:
  """Builds, fits (train) and tunes (validation) each named baseline. A baseline whose module
  or class is not in this checkout gets `<name>/status` 'missing: ...' and no figures;
  every other gets status 'ok', its fit facts and time. `view` must hold no test targets.
  A baseline taking a `cache_dir` (dense: item embeddings) caches under
  <workdir>/baselines/<name> unless its args name one. TIGER gets NEO's `sid_map` (the same
  SIDs, so the comparison isolates the language model) when one is given."""
  if view.test:
    raise ValueError('baselines must be fitted on a split without test targets')
  fitted: dict[str, baselines_lib.Baseline] = {}
  out: dict[str, Any] = {}
  for name in names_:
    t0 = _now()
    kwargs = args[name].to_dict() if name in args and hasattr(args[name], 'to_dict') else (
        dict(args[name]) if name in args else {})
    if workdir is not None and name in ('dense',) and 'cache_dir' not in kwargs:
      kwargs['cache_dir'] = os.path.join(workdir, 'baselines', name)
    try:
      b = BASELINES[name](kwargs)
    except (ImportError, AttributeError) as err:
      out[f'{name}/status'] = f'missing: {type(err).__name__}: {err}'
      log(f'baseline {name}: missing ({err})')
      continue
    if name == 'tiger' and sid_map is not None and getattr(b, 'sid_map', 0) is None:
      b.sid_map = sid_map
    fit_facts = b.fit(dataset, view, valid=True, valid_queries=list(valid_queries) or None)
    fitted[name] = b
    for k, v in fit_facts.items():
      if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
        out[f'{name}/fit/{k}'] = v
    _record(out, f'baseline_{name}', t0)
    out[f'{name}/status'] = 'ok'
    log(f'baseline {name}: fitted, tuned on validation ({_now()[0] - t0[0]:.1f}s)')
  return fitted, out


# -- requests ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Requests:
  """One task's evaluation requests, shared by every system."""

  task: str  # 'recommend' or 'search'
  examples: list[Example]
  relevant: list[list[int]]
  types: list[str | None]
  histories: list[np.ndarray] | None = None  # recommend: each user's whole history
  queries: list[str] | None = None  # search: the query text


def _subsample(examples: list[Example], n: int, seed: int) -> list[Example]:
  if n <= 0 or len(examples) <= n:
    return list(examples)
  idx = np.sort(np.random.default_rng(seed).choice(len(examples), n, replace=False))
  return [examples[i] for i in idx]


def make_requests(guard: SplitGuard, part: str, task: str, n: int, seed: int, stage: str
                  ) -> Requests:
  key = {'recommend': 'rec', 'search': 'search'}[task] + f'_{part}'
  exs = _subsample(guard.examples(key, stage), n, seed)
  req = Requests(task, exs, [list(e.target_items) for e in exs], [e.target_type for e in exs])
  if task == 'recommend':
    by_user = {t.user_id: t.history for t in guard.targets(part, stage)}
    req.histories = [by_user[e.user_id] for e in exs]
  else:
    req.queries = [builders.query_of(e) for e in exs]
  return req


def rank_baseline(b: baselines_lib.Baseline, req: Requests, k: int) -> np.ndarray:
  if req.task == 'recommend':
    ranked = b.rank_recommend(req.histories, req.types, k)
  else:
    ranked = b.rank_search(req.queries, req.types, k)
  ranked = np.asarray(ranked)
  if ranked.shape[0] != len(req.examples):
    raise ValueError(f'{type(b).__name__} returned {ranked.shape[0]} rankings for '
                     f'{len(req.examples)} requests')
  return ranked


def task_figures(prefix: str, ranked: np.ndarray, req: Requests, catalog, ks=KS
                 ) -> dict[str, float]:
  """`<prefix><metric>` over all requests, and per target type / cross-type subsets for
  recommendation when the catalog has several types."""
  out = {f'{prefix}{m}': v for m, v in ranking_figures(ranked, req.relevant, ks).items()}
  if req.task == 'recommend' and len(catalog.type_names) > 1:
    types = np.array([str(t) for t in req.types])
    last = np.array([catalog.type_of(int(h[-1])) if len(h) else '' for h in req.histories])
    subsets = {f'type_{t}': types == t for t in catalog.type_names}
    subsets['cross_type'] = types != last
    for name, sel in subsets.items():
      if sel.any():
        sub = ranking_figures(ranked[sel], [r for r, s in zip(req.relevant, sel) if s], (10,))
        out[f'{prefix}{name}/hr@10'] = sub['hr@10']
        out[f'{prefix}{name}/ndcg@10'] = sub['ndcg@10']
        out[f'{prefix}{name}/requests'] = int(sel.sum())
  return out


def _metric_prefix(system: str, task: str) -> str:
  return f'{system}/' if task == 'recommend' else f'{system}/search_'


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


def train_neo(name: str, cfg: ml_collections.ConfigDict, art: pipeline.Artifacts,
              guard: SplitGuard, workdir: str, log: Log, *, task: str | None = None,
              grounding_from: str | None = None) -> tuple[Any, dict[str, Any]]:
  """A fresh model trained in `workdir/name` (resuming there). task: capability stage on that
  task only (NEO-mono). grounding_from: a run directory whose finished grounding stage (same
  config, same examples, so the same parameters) is copied instead of retrained."""
  run_dir = os.path.join(workdir, name)
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
  model = pipeline.build_model(cfg, art.tokenizer)
  t0 = _now()
  kwargs = {'sid_map': art.sid_map} if _supports(pipeline.train, 'sid_map') else {}
  summary = pipeline.train(cfg, model, art.tokenizer, exs, run_dir,
                           lambda s: log(f'{name} {s}'), **kwargs)
  facts_ = {f'{name}/train/{k}': v for k, v in summary.items()
            if isinstance(v, (int, float, np.floating, np.integer))}
  _record(facts_, f'train_{name}', t0)
  facts_[f'{name}/capability_examples'] = len(exs['capability'])
  return model, facts_


def _supports(fn, arg: str) -> bool:
  return arg in inspect.signature(fn).parameters


def rank_neo(ranker: NEORanker, req: Requests, num_beams: int, catalog, reachable,
             constrained: bool = True) -> tuple[np.ndarray, int, int]:
  """(items (B, num_beams), SIDs checked, valid): every returned item must be a reachable
  catalog item of the requested type, counted. Constrained, -1 means fewer admissible items
  than beams (not counted); unconstrained (`NEORanker.rank(constrained=False)`), -1 is a
  beam whose tokens name no live item: counted, as invalid."""
  if constrained:
    items, _ = ranker.rank([e.prompt for e in req.examples], req.types, num_beams=num_beams)
  else:
    items, _, _ = ranker.rank([e.prompt for e in req.examples], req.types,
                              num_beams=num_beams, constrained=False)
  checked = valid = 0
  for row, t in zip(items, req.types):
    for item in (row[row >= 0] if constrained else row):
      checked += 1
      valid += bool(item >= 0 and reachable[item] and
                    (t is None or catalog.type_of(int(item)) == t))
  return items, checked, valid


class Rankers:
  """One NEORanker per set of artifacts (tokenizer + trie), pointed at each model in turn.

  NEORanker's jitted programs are cached per ranker object, with the parameters as an
  argument: models of one shape then share one compilation instead of one each (the
  training-time evaluator in neo_jax/run/stages.py does the same)."""

  def __init__(self, cfg: ml_collections.ConfigDict):
    self.cfg = cfg
    self._by_art: dict[int, NEORanker] = {}

  def __call__(self, model, art: pipeline.Artifacts) -> NEORanker:
    ranker = self._by_art.get(id(art))
    if ranker is None:
      ranker = NEORanker(model, art.tokenizer, art.trie, prompt_len=self.cfg.train.seq_len - 8,
                         batch_size=self.cfg.eval.batch_size)
      self._by_art[id(art)] = ranker
    ranker.graphdef, ranker.state = nnx.split(model)
    return ranker


# -- steerability and understanding ------------------------------------------------------------

def steer_and_understand(cfg, ranker: NEORanker, art: pipeline.Artifacts, guard: SplitGuard,
                         log: Log, samples_path: str | None = None) -> dict[str, Any]:
  """Type and format steerability, user understanding and faithfulness of NEO-multi on test
  requests (`experiment.steer_requests` / `understanding_requests` of them). The first
  generations of each kind (prompt, output) go to `samples_path` (JSON) for reading."""
  samples: list[dict[str, str]] = []

  def keep(kind, prompts_, texts, n=5):
    samples.extend({'kind': kind, 'prompt': p, 'output': t}
                   for p, t in list(zip(prompts_, texts))[:n])

  e = cfg.experiment
  cat = art.dataset.catalog
  stage = 'final/steer'
  out: dict[str, Any] = {}
  rec = _subsample(guard.examples('rec_test', stage), e.steer_requests, cfg.seed)
  by_user = {t.user_id: t.history for t in guard.targets('test', stage)}
  unconstrained = _supports(NEORanker.rank, 'constrained')
  # Type steering: only the prompt's Type: changes. With constraints off (plain beam search
  # over the full vocabulary) an invalid SID counts as off-type; also reported with the trie
  # on but every type allowed (validity kept, the type left to the prompt).
  if len(cat.type_names) > 1 and rec:
    prompts_, wanted = [], []
    for ex in rec:
      for t in cat.type_names:
        prompts_.append(understanding.retype_prompt(ex.prompt, 'recommend', ex.target_type, t))
        wanted.append(t)
    items, _ = ranker.rank(prompts_, [None] * len(prompts_), num_beams=e.steer_beams)
    named = [[cat.type_of(int(i)) for i in row if i >= 0] for row in items]
    steer = understanding.type_steerability(wanted, named)
    out['type_steerability/trie_any_type'] = steer['type_steerability']
    if unconstrained:
      items, _, _ = ranker.rank(prompts_, wanted, num_beams=e.steer_beams, constrained=False)
      named = [[cat.type_of(int(i)) if i >= 0 else None for i in row] for row in items]
      steer = understanding.type_steerability(wanted, named)
      out['type_steerability/status'] = ('measured: Type: changed in the prompt, constraints '
                                         'off (invalid SIDs count as off-type)')
    else:
      out['type_steerability/status'] = ('measured with the trie on, any type allowed: this '
                                         'checkout cannot decode unconstrained')
    out['type_steerability'] = steer['type_steerability']
    out['type_steerability/answers_all_on_type'] = steer['answers_all_on_type']
    out['type_steerability/items'] = steer['items']
  else:
    out['type_steerability'] = None
    out['type_steerability/status'] = (f'not measurable: the catalog has one entity type '
                                       f'({", ".join(cat.type_names)})')
  # Format steering: only the prompt's Format: changes; constraints off (no format, type or
  # trie mask), else the 'mixed' mask, which admits text and SIDs alike.
  fmt_prompts, fmt_wanted, fmt_types = [], [], []
  for ex in rec:
    for fmt in prompts.OUTPUT_FORMATS:
      fmt_prompts.append(prompts.reformat_prompt(ex.prompt, 'recommend', ex.target_type, fmt))
      fmt_wanted.append(fmt)
      fmt_types.append(ex.target_type)
  if fmt_prompts:
    if unconstrained:
      gens, _ = ranker.generate(fmt_prompts, 'mixed', target_types=fmt_types,
                                max_new_tokens=e.max_new_tokens, constrained=False)
    else:
      gens = ranker.generate(fmt_prompts, 'mixed', target_types=fmt_types,
                             max_new_tokens=e.max_new_tokens, max_items=3)
    fs = understanding.format_steerability(fmt_wanted, [g[0] for g in gens])
    keep('format', fmt_prompts, [g[0] for g in gens], 6)
    out.update({k: v for k, v in fs.items() if k.startswith('format_steerability')})
    out['format_steerability/answers'] = fs['answers']
    out['format_steerability/constraints_off'] = int(unconstrained)
  # User understanding (decoding admits every format, like every generation here: one
  # compiled program; the summary's SID spans, if any, name no attribute).
  summ = _subsample(guard.examples('summary_test', stage), e.understanding_requests, cfg.seed)
  if summ:
    gens = ranker.generate([x.prompt for x in summ], 'mixed', max_new_tokens=e.max_new_tokens,
                           max_items=3)
    vocab = facts.vocabulary_from(cat, art.dataset.users)
    profiles = [facts.user_profile(cat, by_user.get(x.user_id, np.zeros(0, np.int64)),
                                   art.dataset.users.get(x.user_id)) for x in summ]
    out.update(understanding.summary_understanding([g[0] for g in gens], profiles, vocab))
    keep('user_summary', [x.prompt for x in summ], [g[0] for g in gens])
  # Recsplanation faithfulness: the rationale must be true of the first item the answer names.
  expl = _subsample(guard.examples('explain_test', stage), e.understanding_requests, cfg.seed)
  if expl:
    gens = ranker.generate([x.prompt for x in expl], 'mixed',
                           target_types=[x.target_type for x in expl],
                           max_new_tokens=e.max_new_tokens, max_items=3)
    reachable = art.sid_map.reachable()
    hists = [[int(h) for h in by_user[x.user_id] if reachable[h]][-cfg.tasks.history_len:]
             for x in expl]
    items = [g[1][0] if g[1] else None for g in gens]
    fa = understanding.rationale_faithfulness([g[0] for g in gens], cat, items, hists)
    out.update({f'explain/{k}': v for k, v in fa.items()})
    keep('explain', [x.prompt for x in expl], [g[0] for g in gens])
  if samples_path:
    with open(samples_path, 'w') as f:
      json.dump(samples, f, indent=1)
  return out


# -- the experiment ----------------------------------------------------------------------------

ABLATIONS = ('no_grounding', 'stages_merged', 'random_init', 'random_sids', 'unconstrained')


def ablation_config(cfg: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The NEO config of an ablation ('unconstrained' changes decoding only)."""
  c = ml_collections.ConfigDict(cfg.to_dict())
  if name == 'no_grounding':
    c.grounding.steps = 0
  elif name == 'stages_merged':
    # pipeline.stage_plan: one full fine-tuning stage on capability + grounding examples for
    # the steps of both stages.
    c.train.merge_stages = True
  elif name == 'random_init':
    # pipeline.build_model: the backbone's shape and tokenizer, random weights.
    if not cfg.model.get('backbone', ''):
      raise ValueError("ablation 'random_init' needs a pretrained backbone (model.backbone); "
                       'the decoder of this config starts from random weights already')
    c.model.random_init = True
  elif name == 'random_sids':
    c.sid.method = 'random'
  elif name != 'unconstrained':
    raise ValueError(f'unknown ablation {name!r}; known: {ABLATIONS}')
  return c


def _apply_data_dir(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  data_dir = cfg.get('data_dir', '')
  if not data_dir:
    if cfg.data.source == 'generic' and not cfg.data.path:
      raise ValueError('the generic config needs the dataset directory: --config.data_dir=D '
                       '(a directory in the generic format, see data/README.md)')
    return cfg
  if not os.path.isdir(data_dir):
    raise ValueError(f'data_dir {data_dir!r} is not a directory')
  c = ml_collections.ConfigDict(cfg.to_dict())
  c.data.source, c.data.path = 'generic', data_dir
  return c


def names(value: str | Sequence[str]) -> tuple[str, ...]:
  """A config list: a sequence of names, or one string of comma-separated names (what a
  command-line override `--config.experiment.ablations=a,b` gives)."""
  items = value.split(',') if isinstance(value, str) else [
      x for v in value for x in str(v).split(',')]
  return tuple(x.strip() for x in items if x.strip())


def _check_config(cfg: ml_collections.ConfigDict) -> None:
  e = cfg.experiment
  for key in ('mono_tasks', 'ablations', 'baselines'):
    e[key] = names(e[key])
  for t in e.mono_tasks:
    if t not in ('recommend', 'search'):
      raise ValueError(f"experiment.mono_tasks: unknown task {t!r}; use 'recommend', 'search'")
  for a in e.ablations:
    if a not in ABLATIONS:
      raise ValueError(f'experiment.ablations: unknown ablation {a!r}; known: {ABLATIONS}')
    ablation_config(cfg, a)  # refuses an ablation the config cannot run, before any training
  for b in e.baselines:
    if b not in BASELINES:
      raise ValueError(f'experiment.baselines: unknown baseline {b!r}; known: '
                       f'{sorted(BASELINES)}')


def run_experiment(cfg: ml_collections.ConfigDict, workdir: str, log: Log = print
                   ) -> dict[str, Any]:
  """Everything of the module docstring under `workdir`; returns the flat result (numbers,
  None for figures that could not be measured, strings for statuses)."""
  cfg = ml_collections.ConfigDict(_apply_data_dir(cfg).to_dict())  # unlocked, our own copy
  _check_config(cfg)
  e = cfg.experiment
  ks = tuple(int(k) for k in cfg.eval.ks)
  k_max = max(ks)
  beams = max(int(cfg.eval.num_beams), k_max)
  t_all = _now()
  result: dict[str, Any] = {}
  t0 = _now()
  art, examples, prep_facts = pipeline.prepare(cfg, workdir, log)
  art.model = None  # every system builds its own
  art.trie = SIDTrie.build(art.sid_map, art.tokenizer.sid)
  result.update(prep_facts)
  _record(result, 'prepare', t0)
  guard = SplitGuard(examples, art.split, os.path.join(workdir, 'split_access.json'))
  rankers = Rankers(cfg)
  cat = art.dataset.catalog
  reachable = art.sid_map.reachable()

  # -- training: NEO-multi, NEO-mono, ablations (training data only) --
  models: dict[str, Any] = {}
  models['neo_multi'], f = train_neo('neo_multi', cfg, art, guard, workdir, log)
  result.update(f)
  multi_dir = os.path.join(workdir, 'neo_multi')
  for task in e.mono_tasks:
    name = f'neo_mono_{task}'
    models[name], f = train_neo(name, cfg, art, guard, workdir, log, task=task,
                                grounding_from=multi_dir if e.share_grounding else None)
    result.update(f)
  ablation_arts: dict[str, tuple[Any, pipeline.Artifacts, SplitGuard]] = {}
  for name in e.ablations:
    if name == 'unconstrained':
      continue
    acfg = ablation_config(cfg, name)
    sub = f'ablation_{name}'
    if name == 'random_sids':
      # New SIDs change the tokenizer and every example: a whole preparation of its own.
      t0 = _now()
      a_art, a_ex, _ = pipeline.prepare(acfg, os.path.join(workdir, sub), log)
      a_art.model = None
      a_art.trie = SIDTrie.build(a_art.sid_map, a_art.tokenizer.sid)
      a_guard = SplitGuard(a_ex, a_art.split, os.path.join(workdir, sub, 'split_access.json'))
      model, f = train_neo('neo', acfg, a_art, a_guard, os.path.join(workdir, sub), log)
      f = {(f'{sub}/' + k[len('neo/'):] if k.startswith('neo/') else k): v
           for k, v in f.items() if k not in ('seconds/train_neo', 'cpu_seconds/train_neo')}
      _record(f, f'train_{sub}', t0)  # preparation included
      ablation_arts[name] = (model, a_art, a_guard)
    else:
      model, f = train_neo(sub, acfg, art, guard, workdir, log)
      ablation_arts[name] = (model, art, guard)
    result.update(f)

  # -- baselines: fitted on train, tuned on valid --
  view = guard.fit_view('baselines/fit')
  valid_queries = [Query(builders.query_of(x), tuple(x.target_items))
                   for x in guard.examples('search_valid', 'baselines/tune')]
  fitted, facts_ = fit_baselines(e.baselines, cfg.get('baseline_args', {}), art.dataset, view,
                                 valid_queries, log, workdir, art.sid_map)
  result.update(facts_)

  # NEO on validation (never used to choose anything here; reported beside the test figures).
  if int(e.neo_valid_requests) > 0:
    ranker = rankers(models['neo_multi'], art)
    for task in ('recommend', 'search'):
      req = make_requests(guard, 'valid', task, int(e.neo_valid_requests), cfg.seed,
                          'neo_multi/valid')
      if req.examples:
        items, _, _ = rank_neo(ranker, req, beams, cat, reachable)
        result[f'valid/{_metric_prefix("neo_multi", task)}ndcg@10'] = ranking_figures(
            items, req.relevant, (10,))['ndcg@10']

  # -- final evaluation on the test split --
  guard.open_test()
  t0 = _now()
  test_reqs = {task: make_requests(guard, 'test', task, int(cfg.eval.max_requests), cfg.seed,
                                   'final/requests') for task in ('recommend', 'search')}
  for task, req in test_reqs.items():
    result[f'requests/{task}'] = len(req.examples)
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
      result.update(task_figures(_metric_prefix(system, task), items, req, cat, ks))
      _record(result, f'eval_{name}_{task}', t1)
    log(f'eval {name}: done')
  for name, b in fitted.items():
    for task in b.tasks:
      req = test_reqs[task]
      if req.examples:
        result.update(task_figures(_metric_prefix(name, task), rank_baseline(b, req, k_max),
                                   req, cat, ks))
  for name in e.baselines:
    if result.get(f'{name}/status', 'ok') != 'ok':
      for task in ('recommend', 'search'):
        result[f'{_metric_prefix(name, task)}ndcg@10'] = None
        result[f'{_metric_prefix(name, task)}hr@10'] = None

  # Ablations: the same test requests, reported relative to NEO-multi.
  for name in e.ablations:
    sys_name = f'ablation_{name}'
    if name == 'unconstrained':
      if not _supports(NEORanker.rank, 'constrained'):
        result[f'{sys_name}/status'] = ('missing: NEORanker.rank has no constrained= '
                                        'argument in this checkout')
        continue
      model, a_art, a_guard = models['neo_multi'], art, guard
    else:
      model, a_art, a_guard = ablation_arts[name]
    a_ranker = rankers(model, a_art)
    if a_guard is not guard:
      a_guard.open_test()
    for task in ('recommend', 'search'):
      req = (test_reqs[task] if a_guard is guard else
             make_requests(a_guard, 'test', task, int(cfg.eval.max_requests), cfg.seed,
                           'final/requests'))
      if not req.examples:
        continue
      items, c, v = rank_neo(a_ranker, req, beams, a_art.dataset.catalog,
                             a_art.sid_map.reachable(), constrained=name != 'unconstrained')
      figs = task_figures(_metric_prefix(sys_name, task), items, req, a_art.dataset.catalog, ks)
      result.update(figs)
      if name == 'unconstrained':
        result[f'{sys_name}/valid_sid_fraction'] = v / c if c else None
    result[f'{sys_name}/status'] = 'ok'
    for m in ('ndcg@10', 'hr@10', 'search_ndcg@10', 'search_hr@10'):
      ref, val = result.get(f'neo_multi/{m}'), result.get(f'{sys_name}/{m}')
      if ref is not None and val is not None:
        result[f'{sys_name}/rel_{m}'] = (val - ref) / ref if ref else None

  # Steerability, understanding, faithfulness (NEO-multi) + validity of every generated SID.
  t1 = _now()
  result.update(steer_and_understand(cfg, rankers(models['neo_multi'], art), art,
                                     guard, log, os.path.join(workdir, 'samples.json')))
  _record(result, 'steer_understand', t1)
  result['sid_checked'] = checked
  result['valid_sid_fraction'] = valid / checked if checked else None
  _record(result, 'final_eval', t0)
  _record(result, 'total', t_all)
  result['dataset'] = cfg.data.source
  return _flat(result)


def _flat(d: dict[str, Any]) -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, (np.floating, np.integer)):
      v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
      v = None  # JSON has no NaN: an unmeasurable figure is null, never 0
    out[k] = v
  return out
