"""Training one NEO model: the stage plan of the config, then each stage through
`neo_jax.train.loop.train_stage` in a run directory.

A run directory (`<workdir>/<name>`) holds `config.json` (the config its state was trained
with), `checkpoints/<stage>/`, `logs/<stage>.jsonl` and `tensorboard/`; rerunning resumes each
stage from its last checkpoint.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from neo_jax.decode.ranker import NEORanker, serving_dtype
from neo_jax.decode.trie import SIDTrie
from neo_jax.eval import metrics
from neo_jax.eval.protocol import subsample
from neo_jax.model import lora
from neo_jax.model import sharding
from neo_jax.model import vocab as vocab_lib
from neo_jax.model.decoder import Decoder
from neo_jax.run.config import parse_mixture
from neo_jax.sid.types import SIDMap
from neo_jax.tasks.types import Example
from neo_jax.tokenizer.base import Tokenizer
from neo_jax.train import loop
from neo_jax.train import mixture as mixture_lib
from neo_jax.train.data import pack_examples

Log = Callable[[str], None]
STAGES = ('grounding', 'capability')
# The last packings (examples, tokenizer, shape, seed) -> PackedData: the budget in passes and
# the stage's training pack the same examples; this keeps it to one tokenisation.
_PACKED: dict[tuple[Any, ...], tuple[Tokenizer, Any]] = {}
_PACKED_KEEP = 2


def train_seed(cfg: ml_collections.ConfigDict) -> int:
  """The seed of model initialisation, LoRA and data order: cfg.seed + cfg.train.seed_offset
  (`experiment.seeds` retrains with offsets 0..N-1 on the same prepared data)."""
  return int(cfg.seed) + int(cfg.train.seed_offset)


def train_mesh(cfg: ml_collections.ConfigDict) -> Mesh | None:
  """The (data, fsdp, tensor) mesh of `cfg.train.mesh` ('' = no mesh: one device); the
  product must equal the number of devices."""
  if not cfg.train.mesh:
    return None
  shape = tuple(int(x) for x in cfg.train.mesh.split(','))
  if np.prod(shape) != jax.device_count():
    raise ValueError(f'train.mesh {shape} needs {int(np.prod(shape))} devices, '
                     f'{jax.device_count()} are visible')
  return sharding.make_mesh(*shape)


def stage_plan(cfg: ml_collections.ConfigDict, examples: dict[str, list[Example]]
               ) -> list[tuple[str, list[Example], ml_collections.ConfigDict]]:
  """The training stages to run, in order: (name, training examples, stage config).

  Normally 'grounding' then 'capability' (a stage with 0 steps is left out: the ablation
  'no grounding'). `cfg.tasks.mixture` resamples the capability stage's examples to those
  task proportions (neo_jax/train/mixture.py). `cfg.train.merge_stages` (the ablation 'stages
  merged') runs one stage, 'capability', with full fine-tuning on the capability examples plus
  the grounding examples that are not already among them, for grounding.steps +
  capability.steps steps (the same number of updates as the two stages) with the capability
  stage's optimiser settings.
  """
  grounding = list(examples['grounding'])
  capability = list(examples['capability'])
  if cfg.train.merge_stages:
    seen = set(capability)
    plan = [('capability', _mixed(cfg, capability + [e for e in grounding if e not in seen]))]
  else:
    plan = [('grounding', grounding), ('capability', _mixed(cfg, capability))]
  names = stage_names(cfg)
  return [(name, exs, stage_config(cfg, name)) for name, exs in plan if name in names]


def _mixed(cfg: ml_collections.ConfigDict, examples: list[Example]) -> list[Example]:
  """The capability examples resampled to `cfg.tasks.mixture` (unchanged when empty)."""
  return mixture_lib.apply_mixture(examples, parse_mixture(cfg.tasks.mixture), train_seed(cfg))


def pack_stage(examples: list[Example], tok: Tokenizer, tcfg: ml_collections.ConfigDict,
               seed: int, log: Log | None = None):
  """`pack_examples` of a stage, remembered for the last two distinct packings (the budget
  of `resolve_budgets` and the training of the same stage pack the same examples); its
  progress lines go to `log` (None: stderr)."""
  key = (tuple(examples), id(tok), int(tcfg.seq_len), int(tcfg.batch_size), seed)
  held = _PACKED.get(key)
  if held is None or held[0] is not tok:  # the tokenizer is held, so its id is not reused
    while len(_PACKED) >= _PACKED_KEEP:
      _PACKED.pop(next(iter(_PACKED)))
    held = _PACKED[key] = (tok, pack_examples(examples, tok, tcfg.seq_len, tcfg.batch_size,
                                              seed=seed, log=log))
  return held[1]


def stage_names(cfg: ml_collections.ConfigDict) -> list[str]:
  """The stages that train, in order (a stage of 0 steps, and no passes, is left out)."""
  names = ('capability',) if cfg.train.merge_stages else STAGES
  return [n for n in names if int(stage_config(cfg, n).steps) > 0
          or float(stage_config(cfg, n).get('passes', 0.0)) > 0]


def resolve_budgets(cfg: ml_collections.ConfigDict, examples: dict[str, list[Example]],
                    tok: Tokenizer, log: Log | None = None
                    ) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """`cfg` with every stage budgeted in passes (`<stage>.passes` > 0) turned into steps:
  ceil(passes x packed rows / batch_size) over the stage's examples (the capability stage's
  after the mixture; `max_steps` caps it), and passes set to 0, so that every later reader
  (run directories, reloading, the ablations) sees plain steps. Resolved once, from the
  examples of the whole suite: NEO-mono, trained on a subset, gets the same number of updates
  as NEO-multi (the same compute). Returns (config, facts `budget/<stage>/{passes,rows,steps,
  capped,passes_trained}`: `capped` when max_steps cut the steps, `passes_trained` the passes
  the steps make).
  """
  if not any(float(cfg[s].passes) > 0 for s in STAGES):
    return cfg, {}
  c = ml_collections.ConfigDict(cfg.to_dict())
  # Each stage's own examples, as the two-stage plan trains them (merge_stages then sums the
  # two budgets: stage_config).
  plan = {'grounding': list(examples['grounding']),
          'capability': _mixed(cfg, list(examples['capability']))}
  facts: dict[str, Any] = {}
  for stage in STAGES:
    passes = float(cfg[stage].passes)
    if passes <= 0:
      continue
    if not plan[stage]:
      raise ValueError(f'{stage}.passes={passes} but the stage has no examples')
    rows = pack_stage(plan[stage], tok, cfg.train, train_seed(cfg), log).num_rows
    batch = int(cfg.train.batch_size)
    steps = max(1, int(np.ceil(passes * rows / batch)))
    capped = 0 < int(cfg[stage].max_steps) < steps
    if capped:
      steps = int(cfg[stage].max_steps)
    c[stage].steps, c[stage].passes = steps, 0.0
    # The passes the steps make: fewer than asked when max_steps caps them (said, not hidden).
    facts.update({f'budget/{stage}/passes': passes, f'budget/{stage}/rows': rows,
                  f'budget/{stage}/steps': steps, f'budget/{stage}/capped': capped,
                  f'budget/{stage}/passes_trained': round(steps * batch / rows, 3)})
  return c, facts


def stage_config(cfg: ml_collections.ConfigDict, stage: str) -> ml_collections.ConfigDict:
  """The config section a stage trains with: `cfg.<stage>`, or with merged stages the
  capability section for the steps of both."""
  if cfg.train.merge_stages and stage == 'capability':
    scfg = ml_collections.ConfigDict(cfg.capability.to_dict())
    scfg.steps = int(cfg.grounding.steps) + int(cfg.capability.steps)
    # Both stages' time (config.validate: both budgets or neither).
    scfg.time_budget_s = (float(cfg.grounding.get('time_budget_s', 0.0))
                          + float(cfg.capability.get('time_budget_s', 0.0)))
    return scfg
  return cfg[stage]


def last_stage(cfg: ml_collections.ConfigDict) -> tuple[str, int]:
  """(name, steps) of the stage whose final checkpoint is the trained model."""
  stages = stage_names(cfg)
  if not stages:
    raise ValueError('no training stage: grounding.steps and capability.steps are both 0')
  return stages[-1], int(stage_config(cfg, stages[-1]).steps)


def validation_examples(examples: dict[str, list[Example]],
                        training: list[Example]) -> tuple[list[Example], int]:
  """The held-out validation examples (rec_valid + search_valid) that validation during
  training scores, minus any that equals a training example (same prompt and completion):
  validation never scores what trained. Returns (examples, number dropped as duplicates)."""
  seen = {(e.prompt, e.completion) for e in training}
  valid = list(examples.get('rec_valid', [])) + list(examples.get('search_valid', []))
  kept = [e for e in valid if (e.prompt, e.completion) not in seen]
  return kept, len(valid) - len(kept)


def make_recall_eval_fn(cfg: ml_collections.ConfigDict, tok: Tokenizer, sid_map: SIDMap,
                        requests: list[Example], k: int = 10, log: Log | None = None
                        ) -> Callable[[Decoder], dict[str, float]]:
  """`eval_fn(model) -> {'recommend/recall@k': .., 'recommend/ndcg@k': ..}`: trie-constrained
  beam search (k beams) on `requests` (validation recommendations), for validation during
  training. The ranker (and its jit cache) is built on the first call and then only swaps in
  the model's current parameters, so later calls do not recompile. Its progress lines
  (`NEORanker`) go to `log` (None: stderr), labelled 'validation'."""
  trie = SIDTrie.build(sid_map, tok.sid)
  prompts_ = [e.prompt for e in requests]
  types = [e.target_type for e in requests]
  relevant = [list(e.target_items) for e in requests]
  holder: dict[str, NEORanker] = {}

  def eval_fn(model: Decoder) -> dict[str, float]:
    if 'ranker' not in holder:
      holder['ranker'] = NEORanker(model, tok, trie, prompt_len=cfg.train.seq_len - 8,
                                   batch_size=cfg.eval.batch_size, log=log,
                                   progress_label='validation',
                                   dtype=serving_dtype(cfg.eval.dtype))
    ranker = holder['ranker']
    ranker.set_model(model)
    items, _ = ranker.rank(prompts_, types, num_beams=k)
    found = metrics.ranking_metrics(items, relevant, (k,))
    return {f'recommend/{m}': float(v) for m, v in found.items()}

  return eval_fn


def _validation(cfg, examples, plan, tok, log, out):
  """Packed validation data and the beam-search requests of validation during training (when
  a stage of the plan validates)."""
  tcfg = cfg.train
  if not any(int(scfg.eval_every) > 0 for _, _, scfg in plan):
    return None, []
  valid, dropped = validation_examples(examples, [e for _, exs, _ in plan for e in exs])
  out['valid_examples'] = len(valid)
  out['valid_dropped_as_training_duplicates'] = dropped
  if not valid:
    raise ValueError('eval_every > 0 but there are no validation examples (rec_valid, '
                     'search_valid)')
  valid_data = pack_examples(valid, tok, tcfg.seq_len, tcfg.batch_size, seed=train_seed(cfg),
                             log=log)
  log(f'validation: {len(valid)} examples in {valid_data.num_rows} rows'
      + (f' ({dropped} dropped: equal to a training example)' if dropped else ''))
  requests = []
  if tcfg.valid_requests > 0:
    requests = subsample([e for e in valid if e.task == 'recommend'], tcfg.valid_requests,
                         cfg.seed)
  return valid_data, requests


def lora_settings(stage: str, scfg: ml_collections.ConfigDict) -> tuple[int, float]:
  """(rank, alpha) of a stage's LoRA adapters; rank 0: full fine-tuning (the grounding stage
  never has adapters; lora_alpha 0 means 2 x rank)."""
  rank = int(scfg.lora_rank) if stage == 'capability' and 'lora_rank' in scfg else 0
  return rank, float(scfg.lora_alpha or 2 * rank) if rank > 0 else 0.0


def apply_stage_lora(model: Decoder, stage: str, scfg: ml_collections.ConfigDict, seed: int
                     ) -> int:
  """Adds the stage's LoRA adapters to `model` (what its checkpoints hold); returns the rank
  (0: none added)."""
  rank, alpha = lora_settings(stage, scfg)
  if rank > 0:
    lora.apply_lora(model, rank, alpha, seed=seed + 2)
  return rank


def grounding_trains_rows(cfg: ml_collections.ConfigDict) -> bool:
  """Whether the grounding stage trains the SID rows only (`grounding.trainable`; 'auto':
  only with a pretrained backbone, whose features the new rows are fitted to)."""
  how = cfg.grounding.get('trainable', 'sid_rows')
  if how == 'auto':
    return bool(cfg.model.backbone) and not bool(cfg.model.random_init)
  return how == 'sid_rows'


def _trainable(cfg, stage, scfg, model, tok, seed, log):
  """(update mask, trainable filter, LoRA rank) of a stage: grounding trains the SID rows only
  (`grounding_trains_rows`) or everything; capability everything, or with lora_rank > 0 LoRA
  adapters on every attention and MLP projection plus the SID rows (merged into the weights
  after the stage)."""
  mask = None
  if stage == 'grounding' and grounding_trains_rows(cfg):
    mask = vocab_lib.sid_row_mask(model, tok.text_vocab_size)
  rank = apply_stage_lora(model, stage, scfg, seed)
  if rank <= 0:
    return mask, nnx.Param, 0
  alpha = lora_settings(stage, scfg)[1]
  adapters = nnx.to_flat_state(nnx.state(model, lora.LoRAParam))
  log(f'[{stage}] LoRA rank {rank}, alpha {alpha}: '
      f'{sum(v.get_value().size for _, v in adapters):,} adapter parameters')
  return lora.update_mask(model, tok.text_vocab_size), lora.trainable_filter(), rank


def train(cfg: ml_collections.ConfigDict, model: Decoder, tok: Tokenizer,
          examples: dict[str, list[Example]], run_dir: str, log: Log,
          sid_map: SIDMap | None = None) -> dict[str, Any]:
  """The stages of `stage_plan` in order, in `run_dir` (resuming from its checkpoints).

  Validation during training (a stage's `eval_every` > 0): the validation loss on the packed
  rec_valid + search_valid examples (`validation_examples`: never trained on) and, with
  cfg.train.valid_requests > 0 (needs `sid_map`), Recall@10/NDCG@10 of constrained beam search
  on that many validation recommendations; cfg.train.best_metric / best_mode /
  keep_checkpoints / restore_best configure the checkpoint manager.
  """
  tcfg = cfg.train
  out: dict[str, Any] = {}
  plan = stage_plan(cfg, examples)
  for stage in STAGES:
    if stage not in [p[0] for p in plan]:
      log(f'[{stage}] skipped' + (' (stages merged)' if tcfg.merge_stages and
                                  stage == 'grounding' else ' (0 steps)'))
  valid_data, eval_requests = _validation(cfg, examples, plan, tok, log, out)
  if eval_requests and sid_map is None:
    raise ValueError('train.valid_requests > 0 needs the SID map (sid_map=...)')
  mesh = train_mesh(cfg)
  policy = loop.CheckpointPolicy(best_metric=tcfg.best_metric, best_mode=tcfg.best_mode or None,
                                 restore_best=tcfg.restore_best,
                                 keep_last=tcfg.keep_checkpoints)
  for stage, stage_examples, scfg in plan:
    counts = mixture_lib.task_counts(stage_examples)
    log(f'[{stage}] trains ' + ('the SID rows only' if stage == 'grounding' and
                                grounding_trains_rows(cfg) else 'every parameter')
        + f', {int(scfg.steps)} steps')
    log(f'[{stage}] examples by task: ' + ', '.join(f'{t} {n}' for t, n in counts.items()))
    out.update({f'{stage}_examples/{t}': n for t, n in counts.items()})
    data = pack_stage(stage_examples, tok, tcfg, train_seed(cfg), log)
    log(f'[{stage}] {data.stats["examples"]} examples packed into {data.stats["rows"]} rows '
        f'of {tcfg.seq_len} (fill {data.stats["fill"]:.2f}, '
        f'{data.stats["truncated_prompts"]} prompts cut, '
        f'{data.stats["skipped_completion_too_long"]} examples skipped: answer longer than a row)')
    # Over-long prompts lose their oldest history items (never the header): counted.
    out.update({f'{stage}_{k}': int(data.stats.get(k, 0)) for k in (
        'truncated_prompts', 'cut_history_items', 'skipped_prompt_too_long',
        'skipped_completion_too_long')})
    mask, trainable, rank = _trainable(cfg, stage, scfg, model, tok, train_seed(cfg),
                                       log)
    evaluated = int(scfg.eval_every) > 0
    eval_fn = (make_recall_eval_fn(cfg, tok, sid_map, eval_requests, log=log)
               if evaluated and eval_requests else None)
    summary = loop.train_stage(
        model, data, loop.StageSettings.from_dict(scfg), name=stage, workdir=run_dir,
        update_mask=mask, mesh=mesh, log=log, valid_data=valid_data if evaluated else None,
        eval_fn=eval_fn, trainable=trainable, checkpoints=policy)
    if rank > 0:
      lora.merge_lora(model)
    out.update({f'{stage}_{k}': v for k, v in summary.items()})
  return out
