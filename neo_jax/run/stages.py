"""The whole NEO pipeline as one library call: data -> SIDs -> tokenizer -> model -> the two
training stages -> constrained generation -> evaluation beside baselines.

`run(config, workdir)` is what `experiments/quickstart.py` calls; each stage is a function of
its own so that later experiments can reuse or replace any of them. Every stage writes its
artifact under `workdir` (see WORKSPACE.md for the layout).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from neo_jax.catalog import io as catalog_io
from neo_jax.catalog import synthetic
from neo_jax.catalog import tfds_builders
from neo_jax.catalog.splits import Split, make_split
from neo_jax.catalog.types import Dataset
from neo_jax.decode.trie import SIDTrie
from neo_jax.baselines import base as baselines
from neo_jax.eval import metrics
from neo_jax.decode.ranker import NEORanker
from neo_jax.model import backbones
from neo_jax.model import lora
from neo_jax.model import sharding
from neo_jax.model import vocab as vocab_lib
from neo_jax.model.config import get_config
from neo_jax.model.decoder import Decoder
from neo_jax.sid import job as sid_job
from neo_jax.sid.types import SIDMap
from neo_jax.tasks import builders
from neo_jax.tasks import prompts
from neo_jax.tasks.suite import build_task_examples
from neo_jax.tasks.types import Example
from neo_jax.tokenizer.base import Tokenizer
from neo_jax.tokenizer.spm import SentencePieceTokenizer, train_sentencepiece
from neo_jax.train import loop
from neo_jax.train import mixture as mixture_lib
from neo_jax.train.data import pack_examples

Log = Callable[[str], None]


@dataclasses.dataclass
class Artifacts:
  dataset: Dataset
  split: Split
  sid_map: SIDMap
  tokenizer: Tokenizer
  model: Decoder | None = None
  trie: SIDTrie | None = None


# -- data --------------------------------------------------------------------------------------

def load_data(cfg: ml_collections.ConfigDict, workdir: str, log: Log) -> Dataset:
  """The dataset of `cfg.data.source`:
    'synthetic'      generated into <workdir>/data (generic format), then read back;
    'movielens100k'  built with TFDS (array_record) into <workdir>/tfds from the files of the
                     installed `recbole` package (or cfg.data.path: an official ml-100k.zip
                     or folder), then read back;
    'generic'        the generic-format directory cfg.data.path.
  """
  source = cfg.data.source
  policies = dict(on_unknown_item=cfg.data.on_unknown_item)
  if source == 'synthetic':
    out = os.path.join(workdir, 'data')
    if not os.path.exists(os.path.join(out, 'items.jsonl')):
      scfg = synthetic.SyntheticConfig(**cfg.data.synthetic.to_dict())
      synthetic.write_synthetic(scfg, out)
    ds = catalog_io.load_dataset(out, **policies)
  elif source == 'movielens100k':
    tfds_dir = os.path.join(workdir, 'tfds')
    built = os.path.join(tfds_dir, 'movielens100k')
    if not os.path.exists(built):
      kwargs = {'source': cfg.data.path} if cfg.data.path else {}
      tfds_builders.build('movielens100k', tfds_dir, **kwargs)
    ds = tfds_builders.load_built(built)
  elif source == 'generic':
    if not cfg.data.path:
      raise ValueError("data.source='generic' needs data.path (a directory in the generic format)")
    ds = catalog_io.load_dataset(cfg.data.path, **policies)
  else:
    raise ValueError(f"unknown data.source {source!r}; use 'synthetic', 'movielens100k' or "
                     "'generic'")
  log(f'data: {len(ds.catalog)} items of types {ds.catalog.type_names}, '
      f'{len(ds.interactions.user_names)} users, {len(ds.interactions)} interactions, '
      f'{len(ds.queries)} queries' + (f'; skipped {ds.skipped}' if ds.skipped else ''))
  return ds


# -- SIDs --------------------------------------------------------------------------------------

def build_sids(cfg: ml_collections.ConfigDict, ds: Dataset, split: Split, workdir: str,
               log: Log) -> tuple[SIDMap, dict[str, Any]]:
  """Item embeddings (cfg.sid.encoder: 'tfidf', 'minilm', 'cf', 'npy:<path>' or parts joined by
  '+', e.g. 'minilm+cf'; 'cf' fitted on the training split) and the SID map,
  written with its quality report and plot under <workdir>/sids. Collisions are ranked by
  training popularity (interactions in the training split only)."""
  t0 = time.perf_counter()
  train_seqs = list(split.train.values())
  # 'cf' parts of the encoder see the training split only.
  emb, encoder_name = sid_job.embed(ds.catalog, cfg.sid.encoder, tfidf_dim=cfg.sid.feature_dim,
                                    seed=cfg.seed, progress=False, sequences=train_seqs,
                                    cf_dim=cfg.sid.cf_dim, cf_window=cfg.sid.cf_window)
  train_rows = np.concatenate(train_seqs) if train_seqs else np.zeros(0, int)
  popularity = np.bincount(train_rows, minlength=len(ds.catalog)).astype(np.float64)
  sid_map, report = sid_job.build_and_save(
      ds.catalog, emb, os.path.join(workdir, 'sids'), cfg.sid.to_dict(), popularity=popularity,
      encoder_name=encoder_name, seed=cfg.seed)
  log(f'sids: {encoder_name} embeddings, {sid_map.num_levels} levels, sizes '
      f'{sid_map.level_sizes}, collision rate {report["collision_rate"]:.4f}, unreachable '
      f'{report["unreachable_items"]} ({time.perf_counter() - t0:.1f}s)')
  return sid_map, report


# -- tokenizer ---------------------------------------------------------------------------------

def build_tokenizer(cfg: ml_collections.ConfigDict, ds: Dataset, sid_map: SIDMap, workdir: str,
                    log: Log) -> Tokenizer:
  """The text vocabulary + the SID block: the backbone's own byte-level BPE when
  cfg.model.backbone is set, else a sentencepiece model trained on the catalog's text."""
  backbone = cfg.model.get('backbone', '')
  if backbone:
    tok = backbones.backbone_tokenizer(backbone).with_sids(sid_map.type_names,
                                                           sid_map.level_sizes)
  else:
    texts = [ds.catalog.text(i) for i in range(len(ds.catalog))]
    texts += [q.text for q in ds.queries]
    texts += [u.summary for u in ds.users.values() if u.summary]
    texts += prompts.template_texts(ds.catalog.type_names)  # the prompts' fixed words
    proto = train_sentencepiece(texts, vocab_size=cfg.tokenizer.vocab_size,
                                model_type=cfg.tokenizer.model_type, seed=cfg.seed)
    tok = SentencePieceTokenizer.from_sid_map(proto, sid_map)
  tok.save(os.path.join(workdir, 'tokenizer'))
  log(f'tokenizer: {tok.text_vocab_size} text tokens + {tok.sid.size} SID tokens'
      + (f' ({backbone})' if backbone else ''))
  return tok


# -- examples ----------------------------------------------------------------------------------

def build_examples(cfg: ml_collections.ConfigDict, ds: Dataset, split: Split, sid_map: SIDMap,
                   tok: Tokenizer) -> dict[str, list[Example]]:
  """Grounding examples, capability (training) examples and evaluation examples of every task
  (`neo_jax.tasks.build_task_examples`: the dataset's own search queries, or queries generated
  from item text with held-out templates when it has none)."""
  t = cfg.tasks
  te = build_task_examples(
      ds, split, sid_map, tok.sid, history_len=t.history_len,
      train_targets_per_user=t.train_targets_per_user, mixed_fraction=t.mixed_fraction,
      query_valid_fraction=t.query_valid_fraction, query_test_fraction=t.query_test_fraction,
      max_relevant=t.max_relevant, history_window=t.get('history_window', 0),
      history_context=t.get('history_context', 3), seed=cfg.seed)
  return {'grounding': te.grounding, 'capability': te.capability, **te.eval}


# -- model and training ------------------------------------------------------------------------

def build_model(cfg: ml_collections.ConfigDict, tok: Tokenizer) -> Decoder:
  """The decoder over the text vocabulary, extended with the SID rows. With cfg.model.backbone
  the text part is the pretrained checkpoint (packaged name, .gguf file or safetensors
  directory); otherwise a randomly initialised decoder of cfg.model.preset.
  cfg.model.random_init (the ablation 'random initialisation') keeps the backbone's tokenizer
  but builds a randomly initialised decoder of cfg.model.preset (the backbone's shape)
  instead of loading its weights."""
  backbone = cfg.model.get('backbone', '')
  if backbone and cfg.model.get('random_init', False):
    backbone = ''  # same tokenizer (build_tokenizer), same shape (the preset), random weights
  if cfg.model.sid_init != 'mean':
    raise ValueError(f'model.sid_init={cfg.model.sid_init!r}: the pipeline supports '
                     "'mean' (the centroid projection is in neo_jax/model/sid_init.py but "
                     'not wired into the pipeline yet)')
  if backbone:
    model, _ = backbones.load_backbone(backbone, dtype=cfg.model.dtype,
                                       param_dtype=cfg.model.param_dtype,
                                       remat=cfg.model.get('remat', 'none'))
    if model.cfg.vocab_size != tok.text_vocab_size:
      raise ValueError(f'backbone {backbone!r} has {model.cfg.vocab_size} embedding rows but '
                       f'its tokenizer {tok.text_vocab_size} text tokens')
  else:
    skip = ('preset', 'sid_init', 'backbone', 'random_init')
    overrides = {k: v for k, v in cfg.model.to_dict().items() if k not in skip}
    mcfg = get_config(cfg.model.preset, **overrides, vocab_size=tok.text_vocab_size)
    model = Decoder(mcfg, rngs=nnx.Rngs(cfg.seed))
  vocab_lib.extend_vocab(model, tok.vocab_size, init='mean', rng=jax.random.key(cfg.seed + 1))
  return model


def train_mesh(cfg: ml_collections.ConfigDict) -> Mesh | None:
  """The (data, fsdp, tensor) mesh of `cfg.train.mesh` ('' = no mesh: one device), e.g.
  '8,1,1' or '2,2,2'; the product must equal the number of devices."""
  spec = str(cfg.train.get('mesh', '') or '').strip()
  if not spec:
    return None
  try:
    shape = tuple(int(x) for x in spec.split(','))
  except ValueError:
    shape = ()
  if len(shape) != 3 or min(shape) < 1:
    raise ValueError(f"train.mesh must be 'data,fsdp,tensor' (three positive ints), got {spec!r}")
  if np.prod(shape) != jax.device_count():
    raise ValueError(f'train.mesh {shape} needs {int(np.prod(shape))} devices, '
                     f'{jax.device_count()} are visible')
  return sharding.make_mesh(*shape)


def stage_plan(cfg: ml_collections.ConfigDict, examples: dict[str, list[Example]]
               ) -> list[tuple[str, list[Example], ml_collections.ConfigDict]]:
  """The training stages to run, in order: (name, training examples, stage config).

  Normally 'grounding' then 'capability' (a stage with 0 steps is left out: the ablation
  'no grounding'). `cfg.tasks.mixture` (task -> weight, see neo_jax/train/mixture.py)
  resamples the capability stage's examples to those task proportions; none = all examples.
  `cfg.train.merge_stages` (the ablation 'stages merged') runs one stage, 'capability', with
  full fine-tuning on the capability examples plus the grounding examples that are not
  already among them, for grounding.steps + capability.steps steps (the same number of
  updates as the two stages) with the capability stage's optimiser settings.
  """
  mixture = cfg.tasks.get('mixture', None)
  if isinstance(mixture, ml_collections.ConfigDict):
    mixture = mixture.to_dict()
  grounding = list(examples['grounding'])
  capability = list(examples['capability'])
  if cfg.train.get('merge_stages', False):
    seen = set(capability)
    capability += [e for e in grounding if e not in seen]
    scfg = ml_collections.ConfigDict(cfg.capability.to_dict())
    scfg.steps = int(cfg.grounding.steps) + int(cfg.capability.steps)
    plan = [('capability', mixture_lib.apply_mixture(capability, mixture, cfg.seed), scfg)]
  else:
    plan = [('grounding', grounding, cfg.grounding),
            ('capability', mixture_lib.apply_mixture(capability, mixture, cfg.seed),
             cfg.capability)]
  return [(name, exs, scfg) for name, exs, scfg in plan if int(scfg.steps) > 0]


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
                        requests: list[Example], k: int = 10
                        ) -> Callable[[Decoder], dict[str, float]]:
  """`eval_fn(model) -> {'recommend/recall@k': .., 'recommend/ndcg@k': ..}`: trie-constrained
  beam search (k beams) on `requests` (validation recommendations), for validation during
  training. The ranker (and its jit cache) is built on the first call and then only reads
  the model's current state, so later calls do not recompile."""
  trie = SIDTrie.build(sid_map, tok.sid)
  prompts_ = [e.prompt for e in requests]
  types = [e.target_type for e in requests]
  relevant = [list(e.target_items) for e in requests]
  holder: dict[str, NEORanker] = {}

  def eval_fn(model: Decoder) -> dict[str, float]:
    if 'ranker' not in holder:
      holder['ranker'] = NEORanker(model, tok, trie, prompt_len=cfg.train.seq_len - 8,
                                   batch_size=cfg.eval.batch_size)
    ranker = holder['ranker']
    ranker.graphdef, ranker.state = nnx.split(model)
    items, _ = ranker.rank(prompts_, types, num_beams=k)
    found = metrics.ranking_metrics(items, relevant, (k,))
    return {f'recommend/{m}': float(v) for m, v in found.items()}

  return eval_fn


def train(cfg: ml_collections.ConfigDict, model: Decoder, tok: Tokenizer,
          examples: dict[str, list[Example]], workdir: str, log: Log,
          sid_map: SIDMap | None = None) -> dict[str, Any]:
  """The stages of `stage_plan` in order (grounding: only the SID rows of the embedding and
  head train; capability: full fine-tuning, or with cfg.capability.lora_rank > 0 LoRA
  adapters of that rank (scale lora_alpha / rank; lora_alpha 0 or unset means 2 * rank) on every
  attention and MLP projection plus the SID rows, merged into the weights after the stage).

  Validation during training (a stage's `eval_every` > 0): the validation loss on the
  packed rec_valid + search_valid examples (`validation_examples`: never trained on) and,
  with cfg.train.valid_requests > 0 (needs `sid_map`), Recall@10/NDCG@10 of constrained beam
  search on that many validation recommendations. cfg.train.best_metric ('valid/loss' by
  default, or e.g. 'valid/recommend/recall@10'), best_mode ('' = min for losses, max
  otherwise), keep_checkpoints (last N kept besides the best) and restore_best (end each
  evaluated stage with its best checkpoint) configure the checkpoint manager.
  """
  mesh = train_mesh(cfg)
  tcfg = cfg.train
  out = {}
  plan = stage_plan(cfg, examples)
  for stage in ('grounding', 'capability'):
    if stage not in [p[0] for p in plan]:
      log(f'[{stage}] skipped' + (' (stages merged)' if tcfg.get('merge_stages', False)
                                  and stage == 'grounding' else ' (0 steps)'))
  valid_data = None
  eval_requests: list[Example] = []
  if any(int(scfg.get('eval_every', 0)) > 0 for _, _, scfg in plan):
    valid, dropped = validation_examples(examples, [e for _, exs, _ in plan for e in exs])
    out['valid_examples'] = len(valid)
    out['valid_dropped_as_training_duplicates'] = dropped
    if not valid:
      raise ValueError('eval_every > 0 but there are no validation examples (rec_valid, '
                       'search_valid)')
    valid_data = pack_examples(valid, tok, tcfg.seq_len, tcfg.batch_size, seed=cfg.seed)
    log(f'validation: {len(valid)} examples in {valid_data.num_rows} rows'
        + (f' ({dropped} dropped: equal to a training example)' if dropped else ''))
    n_req = int(tcfg.get('valid_requests', 0))
    if n_req > 0:
      if sid_map is None:
        raise ValueError('train.valid_requests > 0 needs the SID map (pipeline.train(..., '
                         'sid_map=...))')
      eval_requests = _subsample([e for e in valid if e.task == 'recommend'], n_req, cfg.seed)
  for stage, stage_examples, scfg in plan:
    counts = mixture_lib.task_counts(stage_examples)
    log(f'[{stage}] examples by task: ' + ', '.join(f'{t} {n}' for t, n in counts.items()))
    out.update({f'{stage}_examples/{t}': n for t, n in counts.items()})
    data = pack_examples(stage_examples, tok, tcfg.seq_len, tcfg.batch_size, seed=cfg.seed)
    log(f'[{stage}] {data.stats["examples"]} examples packed into {data.stats["rows"]} rows '
        f'of {tcfg.seq_len} (fill {data.stats["fill"]:.2f}, '
        f'{data.stats["truncated_prompts"]} prompts cut, '
        f'{data.stats["skipped_completion_too_long"]} examples skipped: answer longer than a row)')
    mask = vocab_lib.sid_row_mask(model, tok.text_vocab_size) if stage == 'grounding' else None
    trainable = nnx.Param
    rank = int(scfg.get('lora_rank', 0)) if stage == 'capability' else 0
    if rank > 0:
      # LoRA: adapters on every attention/MLP projection plus the SID rows train; merged into
      # the base weights after the stage.
      alpha = float(scfg.get('lora_alpha', 0) or 2 * rank)  # 0 / unset: 2 x rank
      lora.apply_lora(model, rank, alpha, seed=cfg.seed + 2)
      trainable = lora.trainable_filter()
      mask = lora.update_mask(model, tok.text_vocab_size)
      adapters = nnx.to_flat_state(nnx.state(model, lora.LoRAParam))
      log(f'[{stage}] LoRA rank {rank}, alpha {alpha}: '
          f'{sum(v.get_value().size for _, v in adapters):,} adapter parameters')
    evaluated = int(scfg.get('eval_every', 0)) > 0
    eval_fn = (make_recall_eval_fn(cfg, tok, sid_map, eval_requests)
               if evaluated and eval_requests else None)
    summary = loop.train_stage(
        model, data, scfg, name=stage, workdir=workdir, update_mask=mask, mesh=mesh, log=log,
        valid_data=valid_data if evaluated else None, eval_fn=eval_fn,
        best_metric=tcfg.get('best_metric', 'valid/loss'),
        best_mode=tcfg.get('best_mode', '') or None,
        restore_best=bool(tcfg.get('restore_best', False)),
        keep_last=int(tcfg.get('keep_checkpoints', 2)), trainable=trainable)
    if rank > 0:
      lora.merge_lora(model)
    out.update({f'{stage}_{k}': v for k, v in summary.items()})
  return out


# -- evaluation --------------------------------------------------------------------------------

def _subsample(examples: list[Example], n: int, seed: int) -> list[Example]:
  if len(examples) <= n:
    return examples
  idx = np.sort(np.random.default_rng(seed).choice(len(examples), n, replace=False))
  return [examples[i] for i in idx]


def evaluate(cfg: ml_collections.ConfigDict, art: Artifacts, examples: dict[str, list[Example]],
             log: Log) -> tuple[dict[str, float], dict[str, Any]]:
  ecfg = cfg.eval
  ks = tuple(ecfg.ks)
  k_max = max(ks)
  ds, split = art.dataset, art.split
  ranker = NEORanker(art.model, art.tokenizer, art.trie, prompt_len=cfg.train.seq_len - 8,
                     batch_size=ecfg.batch_size)
  train_rows = np.concatenate(list(split.train.values()))
  pop = baselines.Popularity(ds.catalog, train_rows)
  bm25 = baselines.BM25(ds.catalog)
  results: dict[str, float] = {}
  checked = valid = 0
  reachable = art.sid_map.reachable()
  for task, key in (('recommend', 'rec_test'), ('search', 'search_test')):
    exs = _subsample(examples[key], ecfg.max_requests, cfg.seed)
    if not exs:
      log(f'eval {task}: no test requests')
      continue
    relevant = [list(e.target_items) for e in exs]
    types = [e.target_type for e in exs]
    t0 = time.perf_counter()
    neo_items, _ = ranker.rank([e.prompt for e in exs], types,
                               num_beams=max(ecfg.num_beams, k_max))
    neo_seconds = time.perf_counter() - t0
    # Every beam answer must be a catalog item of the requested type: count, never assume.
    for row, t in zip(neo_items, types):
      for item in row[row >= 0]:
        checked += 1
        valid += bool(reachable[item] and ds.catalog.type_of(int(item)) == t)
    if task == 'recommend':
      by_user = {tg.user_id: tg.history for tg in split.test}
      histories = [by_user[e.user_id] for e in exs]
      text_items = bm25.rank_for_histories(histories, types, k_max)
    else:
      text_items = bm25.rank([builders.query_of(e) for e in exs], types, k_max)
    pop_items = pop.rank(types, k_max)
    for name, ranked in (('neo', neo_items), ('popularity', pop_items), ('bm25', text_items)):
      for metric, value in metrics.ranking_metrics(ranked, relevant, ks).items():
        results[f'{task}/{name}/{metric}'] = value
    results[f'{task}/requests'] = len(exs)
    results[f'{task}/neo_seconds_per_request'] = neo_seconds / len(exs)
    log(f'eval {task}: {len(exs)} requests, NEO {neo_seconds:.1f}s')
  generations = sample_generations(ranker, art, examples)
  for g in generations:
    for row, _, _ in g['items']:
      checked += 1
      valid += row is not None
  results['sid_checked'] = checked
  results['valid_sid_fraction'] = valid / checked if checked else float('nan')
  return results, {'generations': generations}


def sample_generations(ranker: NEORanker, art: Artifacts, examples: dict[str, list[Example]]
                       ) -> list[dict[str, Any]]:
  """Steering by prompt alone, for the first test user: a recommendation in each output
  format (`ids`, `text`, `mixed`) and a summary of the user, with every item named decoded
  back to its title and type."""
  ex = examples['rec_test'][0]
  requests = [(ex.task, fmt, prompts.reformat_prompt(ex.prompt, ex.task, ex.target_type, fmt),
               ex.target_type) for fmt in ('ids', 'text', 'mixed')]
  summary = [e for e in examples.get('summary_test', []) if e.user_id == ex.user_id]
  if summary:
    requests.append(('user_summary', 'text', summary[0].prompt, None))
  out = []
  for task, fmt, prompt, target_type in requests:
    text, _ = ranker.generate([prompt], fmt, target_types=[target_type], max_new_tokens=48,
                              max_items=3)[0]
    items = builders.describe_items(text, art.sid_map, art.tokenizer.sid, art.dataset.catalog)
    out.append({'task': task, 'format': fmt, 'prompt': prompt, 'output': text, 'items': items})
  return out


# -- the whole run -----------------------------------------------------------------------------

def prepare(cfg: ml_collections.ConfigDict, workdir: str, log: Log = print
            ) -> tuple[Artifacts, dict[str, list[Example]], dict[str, Any]]:
  """Data, split, SIDs, tokenizer, examples and the untrained model, under `workdir`.
  Returns the artifacts, the examples and the flat facts of the build (sizes, timings)."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(cfg.to_json_best_effort(indent=1))
  facts: dict[str, Any] = {}
  t0 = time.perf_counter()
  ds = load_data(cfg, workdir, log)
  split, split_facts = make_split(ds.interactions, cfg.data.split)
  facts.update({f'split/{k}': v for k, v in split_facts.items()})
  facts.update({f'split/skipped/{k}': v for k, v in split.skipped.items()})
  facts['seconds_data'] = time.perf_counter() - t0

  t0 = time.perf_counter()
  sid_map, sid_report = build_sids(cfg, ds, split, workdir, log)
  facts['seconds_sids'] = time.perf_counter() - t0

  t0 = time.perf_counter()
  tok = build_tokenizer(cfg, ds, sid_map, workdir, log)
  examples = build_examples(cfg, ds, split, sid_map, tok)
  facts['seconds_tokenizer_examples'] = time.perf_counter() - t0
  log('examples: ' + ', '.join(f'{k} {len(v)}' for k, v in examples.items()))

  model = build_model(cfg, tok)
  log(f'model: {vocab_lib.count_params(model):,} parameters, vocab {model.cfg.vocab_size}')
  facts.update({
      'sid/collision_rate': sid_report['collision_rate'],
      'sid/unreachable_items': sid_report['unreachable_items'],
      'num_items': len(ds.catalog), 'num_users': len(ds.interactions.user_names),
      'num_params': vocab_lib.count_params(model)})
  return Artifacts(ds, split, sid_map, tok, model), examples, facts


def _flat(d: dict[str, Any]) -> dict[str, Any]:
  return {k: (float(v) if isinstance(v, (np.floating, np.integer)) else v) for k, v in d.items()}


def run_training(cfg: ml_collections.ConfigDict, workdir: str, log: Log = print
                 ) -> tuple[Artifacts, dict[str, list[Example]], dict[str, Any]]:
  """`prepare` then both training stages (resuming from checkpoints in `workdir`)."""
  t_all = time.perf_counter()
  art, examples, facts = prepare(cfg, workdir, log)
  t0 = time.perf_counter()
  summary = train(cfg, art.model, art.tokenizer, examples, workdir, log,
                  sid_map=art.sid_map)
  facts['seconds_train'] = time.perf_counter() - t0
  facts.update({f'train/{k}': v for k, v in summary.items()})
  facts['seconds_total'] = time.perf_counter() - t_all
  return art, examples, _flat(facts)


def run(cfg: ml_collections.ConfigDict, workdir: str, log: Log = print) -> dict[str, Any]:
  """Builds everything under `workdir`, trains, evaluates; returns the flat result dict and
  the sample generations."""
  t_all = time.perf_counter()
  art, examples, facts = run_training(cfg, workdir, log)
  art.trie = SIDTrie.build(art.sid_map, art.tokenizer.sid)
  t0 = time.perf_counter()
  results, extras = evaluate(cfg, art, examples, log)
  facts['seconds_eval'] = time.perf_counter() - t0
  facts['seconds_total'] = time.perf_counter() - t_all
  return {'result': _flat({**results, **facts}), 'generations': extras['generations']}
