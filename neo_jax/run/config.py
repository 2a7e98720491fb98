"""The config schema: every key of a run, its default and its meaning, validated once.

This module is the only description of the config. `defaults()` builds an `ml_collections`
ConfigDict from it (what every file in experiments/configs starts from), `validate(cfg)`
checks a config against it (an unknown key or a bad value is a `ConfigError` naming the key,
and for an unknown key the closest valid one), and `describe(cfg)` prints it with each key's
meaning (`--print_config`). Only `neo_jax/run/` reads a config; the layers below take explicit
arguments.

Keys marked `state=False` do not change what training produces (logging cadence, evaluation
sizes, which baselines to compare): a run directory may be rerun with other values of them.
Every other key changes the trained state, and `trained_state_diff` lists those that differ
between a run directory's recorded config and a new one.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from typing import Any, Callable, Mapping

import ml_collections

from neo_jax.baselines.registry import LANE_BASELINES as LANE_BASELINE_NAMES
from neo_jax.catalog.splits import SPLIT_METHODS
from neo_jax.decode.ranker import SERVING_DTYPE_CHOICES
from neo_jax.model.config import PRESETS, REMAT_POLICIES
from neo_jax.tasks.types import TASKS

DATASETS = ('movielens100k', 'synthetic', 'generic')
BASELINE_NAMES = ('popularity', 'bm25', 'bm25s', 'dense', 'sasrec', 'tiger')
MONO_TASKS = ('recommend', 'search')
SID_INITS = ('auto', 'mean', 'random')
ABLATIONS = ('no_grounding', 'stages_merged', 'random_init', 'random_sids', 'unconstrained')
_ENCODER_PARTS = ('tfidf', 'minilm', 'cf')
_DTYPES = ('float32', 'bfloat16', 'float16')


class UserError(Exception):
  """An error in what the user gave (config, flags, data, paths); its message says what to do.

  Entry points print it as one line `error: <message>` and exit with status 1."""


class ConfigError(UserError, ValueError):
  """A config key or value that the schema rejects."""


@dataclasses.dataclass(frozen=True)
class Field:
  """One config key.

  default: its value when no config file or flag sets it (its type is the key's type; an int
    is accepted where the default is a float, a comma-separated string where it is a tuple).
  help: one line of meaning.
  choices: the allowed values, if they are a fixed set.
  check: value -> an error message, or None when the value is fine.
  state: whether the value changes the trained state (see the module docstring).
  before: for a key added after runs were recorded: the value those runs trained with (a
    recorded config without the key is compared as if it held this value).
  """
  default: Any
  help: str
  choices: tuple[Any, ...] | None = None
  check: Callable[[Any], str | None] | None = None
  state: bool = True
  before: Any = None


@dataclasses.dataclass(frozen=True)
class Section:
  """A group of keys. `open_keys`: any key is allowed, each holding a mapping of constructor
  arguments (baseline_args: one per baseline); `key_choices` bounds those keys."""
  help: str
  fields: Mapping[str, Field | Section]
  open_keys: bool = False
  key_choices: tuple[str, ...] = ()
  state: bool = True


# -- checks ------------------------------------------------------------------------------------

def _at_least(lo: float) -> Callable[[Any], str | None]:
  return lambda v: None if v >= lo else f'must be >= {lo}'


def _fraction(v: float) -> str | None:
  return None if 0.0 <= v <= 1.0 else 'must be in [0, 1]'


def _cold_fraction(v: float) -> str | None:
  return None if 0.0 <= v < 1.0 else 'must be in [0, 1) (0: no cold-start evaluation)'


def _split_spec(v: str) -> str | None:
  method, _, args = v.partition(':')
  if method not in SPLIT_METHODS:
    return f'unknown split method {method!r}; known: {", ".join(SPLIT_METHODS)}'
  if method == 'leave_one_out' and args:
    return "'leave_one_out' takes no arguments"
  if args and not re.fullmatch(r'[0-9.]+,[0-9.]+(,[0-9.]+)?', args):
    return "use 'temporal', 'temporal:V,T' or 'temporal:V,T,H' (fractions)"
  return None


def _encoder(v: str) -> str | None:
  if v.startswith('npy:'):
    return None if len(v) > 4 else "'npy:<path>' needs a path"
  parts = v.split('+')
  bad = [p for p in parts if p not in _ENCODER_PARTS]
  if bad:
    close = difflib.get_close_matches(bad[0], _ENCODER_PARTS, n=1)
    return (f'unknown encoder part {bad[0]!r}' + (f' (did you mean {close[0]!r}?)' if close else '')
            + f'; known: {", ".join(_ENCODER_PARTS)}, npy:<path>, or parts joined by "+"')
  if len(set(parts)) != len(parts):
    return 'names a part twice'
  return None


def _mesh(v: str) -> str | None:
  if not v:
    return None
  if not re.fullmatch(r'\d+,\d+,\d+', v) or 0 in [int(x) for x in v.split(',')]:
    return "must be '' (one device) or 'data,fsdp,tensor', three positive ints, e.g. '8,1,1'"
  return None


def _mixture(v: str) -> str | None:
  try:
    parse_mixture(v)
  except ValueError as e:
    return str(e)
  return None


def _names_of(known: tuple[str, ...]) -> Callable[[Any], str | None]:
  def check(v):
    for n in names(v):
      if n not in known:
        close = difflib.get_close_matches(n, known, n=1)
        return (f'unknown name {n!r}' + (f' (did you mean {close[0]!r}?)' if close else '')
                + f'; known: {", ".join(known)}')
    return None
  return check


def _ks(v) -> str | None:
  if not v or any((not isinstance(k, int)) or k < 1 for k in v):
    return 'must be a non-empty list of positive ints'
  return None


def names(value: str | tuple | list) -> tuple[str, ...]:
  """A list key's names: a sequence, or one comma-separated string (what a command-line
  override `--config.experiment.baselines=a,b` gives)."""
  items = value.split(',') if isinstance(value, str) else [
      x for v in value for x in str(v).split(',')]
  return tuple(x.strip() for x in items if x.strip())


def parse_mixture(value: str) -> dict[str, float] | None:
  """`tasks.mixture`: '' (every example once) or 'task:weight,...' -> {task: weight}."""
  if not value.strip():
    return None
  out: dict[str, float] = {}
  for part in value.split(','):
    task, sep, weight = part.strip().partition(':')
    if not sep:
      raise ValueError(f"mixture part {part!r}: use 'task:weight'")
    if task not in TASKS:
      raise ValueError(f'mixture: unknown task {task!r}; known: {", ".join(TASKS)}')
    try:
      out[task] = float(weight)
    except ValueError:
      raise ValueError(f'mixture part {part!r}: weight {weight!r} is not a number') from None
    if out[task] < 0:
      raise ValueError(f'mixture part {part!r}: weights must be >= 0')
  return out


# -- the schema --------------------------------------------------------------------------------

def _stage(steps: int, lr: float, warmup: int, *, lora: bool) -> Section:
  fields: dict[str, Field] = {
      'steps': Field(steps, 'optimizer steps of the stage (0 leaves the stage out; unused '
                     'when passes > 0)', check=_at_least(0)),
      'passes': Field(0.0, 'budget in passes over the stage\'s packed examples: > 0 sets the '
                      'steps from the data (ceil(passes x rows / batch_size), capped by '
                      'max_steps), so the budget follows the catalog and the users',
                      check=_at_least(0.0)),
      'max_steps': Field(0, 'with passes > 0: at most this many steps (0: no cap)',
                         check=_at_least(0)),
      'time_budget_s': Field(0.0, 'seconds the stage may take (0: no limit): at the end of '
                             'the warmup the steps are cut to what the measured step time '
                             'fits, the cosine ending there (machine-dependent; the trained '
                             'steps are reported)', check=_at_least(0.0), before=0.0),
      'learning_rate': Field(lr, 'peak learning rate (linear warmup, then cosine decay)',
                             check=_at_least(0.0)),
      'warmup_steps': Field(warmup, 'linear warmup steps', check=_at_least(0)),
      'final_lr_fraction': Field(0.1, 'the cosine decays to this fraction of the peak',
                                 check=_fraction),
      'b1': Field(0.9, 'AdamW beta1', check=_fraction),
      'b2': Field(0.95, 'AdamW beta2', check=_fraction),
      'weight_decay': Field(0.01, 'AdamW decoupled weight decay', check=_at_least(0.0)),
      'clip_norm': Field(1.0, 'global gradient-norm clip', check=_at_least(0.0)),
      'grad_accum_steps': Field(1, 'micro-batches accumulated per optimizer step',
                                check=_at_least(1)),
      'log_every': Field(50, 'steps between log lines and metric records', check=_at_least(1),
                         state=False),
      'checkpoint_every': Field(0, 'steps between checkpoints (0: only at the end)',
                                check=_at_least(0), state=False),
      'eval_every': Field(0, 'steps between validations (0: no validation during training)',
                          check=_at_least(0)),
      'eval_batches': Field(0, 'validation batches per validation (0: all)', check=_at_least(0)),
  }
  if not lora:
    fields['trainable'] = Field(
        'auto', "what the stage trains: sid_rows (the SID token rows of the embedding and "
        "head, the paper's grounding of a pretrained backbone), all (every parameter), auto "
        '(sid_rows with a pretrained backbone, all when the decoder starts from random '
        'weights: rows trained against random features learn little)',
        choices=('auto', 'sid_rows', 'all'))
  if lora:
    fields['lora_rank'] = Field(0, 'LoRA rank of the stage (0: full fine-tuning)',
                                check=_at_least(0))
    fields['lora_alpha'] = Field(0.0, 'LoRA scale numerator (0: 2 x rank)', check=_at_least(0.0))
  return Section('a training stage', fields)


SCHEMA = Section('a NEO run', {
    'seed': Field(0, 'seed of every random choice (data, SIDs, examples, initialisation)'),
    'data': Section('the dataset and its split', {
        'dataset': Field('movielens100k', 'which dataset: movielens100k (TFDS build of the '
                         'copy inside the installed recbole package), synthetic (generated '
                         'into <workdir>/data) or generic (a directory in the generic format)',
                         choices=DATASETS),
        'data_dir': Field('', 'input data directory: generic: the dataset (required); '
                          'movielens100k: an official ml-100k.zip or folder (default: the '
                          'packaged copy); synthetic: unused'),
        'split': Field('leave_one_out', "'leave_one_out' (last event test, the one before "
                       "validation) or 'temporal[:V,T[,H]]' (the paper's global split)",
                       check=_split_spec),
        'on_unknown_item': Field('error', 'interactions/queries naming unknown items: error, '
                                 'or skip (counted and reported)', choices=('error', 'skip')),
        'synthetic': Section('the synthetic catalog (data.dataset=synthetic)', {
            'items_per_type': Field(300, 'items of each entity type', check=_at_least(1)),
            'num_users': Field(1200, 'users', check=_at_least(1)),
            'num_queries': Field(1500, 'search queries', check=_at_least(0)),
            'seed': Field(0, 'generator seed'),
        }),
    }),
    'sid': Section('item embeddings and semantic IDs', {
        'encoder': Field('tfidf', "item embeddings: tfidf, minilm (all-MiniLM-L6-v2), cf "
                         "(PPMI-SVD of training co-occurrence), npy:<path>, or parts joined "
                         "by '+' (e.g. minilm+cf)", check=_encoder),
        'feature_dim': Field(128, 'hashed TF-IDF dimensions', check=_at_least(1)),
        'encoder_batch_size': Field(64, 'MiniLM texts per forward pass', check=_at_least(1),
                                    state=False),
        'cf_dim': Field(64, "collaborative ('cf') embedding size", check=_at_least(1)),
        'cf_window': Field(3, "collaborative ('cf') co-occurrence window", check=_at_least(1)),
        'method': Field('rkmeans', 'rkmeans (residual k-means), or the ablations random / '
                        'atomic', choices=('rkmeans', 'random', 'atomic')),
        'levels': Field(3, 'k-means levels (+1 level that disambiguates collisions)',
                        check=_at_least(1)),
        'k': Field(16, 'codes per level (clamped per type to its number of items)',
                   check=_at_least(2)),
        'codes_per_item': Field(0.0, 'grow k per entity type to the smallest K >= k with '
                                'K ** levels >= this x the items of the type, so that the '
                                'codebook grows with the catalog (0: k for every type)',
                                check=_at_least(0.0), before=0.0),
        'collision': Field('disambiguate', 'items sharing codes: disambiguate (an extra '
                           'level) or popular (the most popular keeps it, the paper)',
                           choices=('disambiguate', 'popular')),
        'popularity': Field('train', 'popularity that ranks colliding items: train (training '
                            'split counts), all, none', choices=('train', 'all', 'none')),
        'iters': Field(30, 'maximum Lloyd passes per level', check=_at_least(1)),
        'tol': Field(0.0, 'stop a level when a pass gains less than this (relative)',
                     check=_at_least(0.0)),
        'batch_size': Field(0, 'items per streamed k-means batch (0: all in memory)',
                            check=_at_least(0)),
        'minibatch': Field(False, 'mini-batch k-means updates (with batch_size)'),
        'shard': Field(True, 'shard k-means over every local device when there are several',
                       state=False),
    }),
    'tokenizer': Section('the text vocabulary (the SID block is appended to it)', {
        'vocab_size': Field(1500, 'sentencepiece text vocabulary size (unused with a '
                            'pretrained backbone: its own tokenizer is used)',
                            check=_at_least(0)),
        'model_type': Field('bpe', 'sentencepiece model type', choices=('bpe', 'unigram')),
    }),
    'model': Section('the decoder', {
        'preset': Field('tiny', 'the shape preset', choices=tuple(PRESETS)),
        'backbone': Field('', "a pretrained backbone: a packaged name ('smollm2-135m'), a "
                          ".gguf file or a safetensors directory ('': random initialisation)"),
        'random_init': Field(False, "the ablation 'random initialisation': the backbone's "
                             'tokenizer and shape, random weights'),
        'sid_init': Field('mean', "the SID token rows added to the vocabulary: 'mean' (the mean "
                          "of the text rows + 1% noise: the paper's choice for a pretrained "
                          "backbone, new tokens that do not disturb it), 'random' (drawn with "
                          "the text rows' per-dimension mean and spread, like every other "
                          "row of a randomly initialised decoder), 'auto' ('random' for a "
                          "random decoder, else 'mean')", choices=SID_INITS,
                          before='mean'),
        'd_model': Field(0, "residual width (0: the preset's)", check=_at_least(0)),
        'num_layers': Field(0, "decoder blocks (0: the preset's)", check=_at_least(0)),
        'num_heads': Field(0, "query heads (0: the preset's)", check=_at_least(0)),
        'num_kv_heads': Field(0, "key/value heads (0: the preset's)", check=_at_least(0)),
        'head_dim': Field(0, "width of a head (0: the preset's)", check=_at_least(0)),
        'mlp_dim': Field(0, "SwiGLU hidden width (0: the preset's)", check=_at_least(0)),
        'dtype': Field('float32', 'compute dtype', choices=_DTYPES),
        'param_dtype': Field('float32', 'parameter storage dtype', choices=_DTYPES),
        'remat': Field('none', 'rematerialisation in the backward pass (memory, never values)',
                       choices=REMAT_POLICIES, state=False),
    }),
    'tasks': Section('training and evaluation examples', {
        'history_len': Field(8, 'history items a prompt shows', check=_at_least(1)),
        'train_targets_per_user': Field(12, 'recommendation targets per user in training',
                                        check=_at_least(1)),
        'mixed_fraction': Field(0.25, "recommendations also written in the 'mixed' format "
                                '(item + rationale)', check=_fraction),
        'query_valid_fraction': Field(0.1, 'generated queries held out for validation',
                                      check=_fraction),
        'query_test_fraction': Field(0.2, 'generated queries held out for test',
                                     check=_fraction),
        'summary_heldout_fraction': Field(0.2, 'users whose summary is never a training '
                                          'target; user understanding is scored on them',
                                          check=_fraction),
        'max_relevant': Field(8, 'generated queries relevant to more items are dropped '
                              '(counted)', check=_at_least(1)),
        'extra_query_draws': Field(0, 'generated queries: this many more draws per item of the '
                                   'training templates, kept for training only when none of '
                                   'their relevant items is a valid or test query\'s (the '
                                   'held-out queries are unchanged)', check=_at_least(0),
                                   before=0),
        'history_window': Field(12, 'history-continuation windows of this many items (0: off)',
                                check=_at_least(0)),
        'history_context': Field(3, 'prompt items before each history-continuation window',
                                 check=_at_least(0)),
        'grounding_text': Field('title', "catalog grounding text: title (SID <-> title, with "
                                "the description's first words when there is one), full "
                                '(also the tags, and a title-only text -> SID example beside '
                                'the full one: what search queries name) or full_lower (full, '
                                'and the title lower-cased -> SID: queries are typed in lower '
                                'case, the text vocabulary is cased)',
                                choices=('title', 'full', 'full_lower')),
        'title_repeats': Field(1, 'the grounding stage holds each bare title -> SID example '
                               '(and its lower case, with full_lower) this many times, each '
                               'copy phrased anew: drills for the title memory search needs',
                               check=_at_least(1), before=1),
        'mixture': Field('', "capability-stage task proportions, 'task:weight,...' ('': every "
                         'example once)', check=_mixture),
    }),
    'train': Section('training (both stages)', {
        'seq_len': Field(128, 'tokens per packed row (prompts are cut from the left to fit)',
                         check=_at_least(16)),
        'batch_size': Field(32, 'rows per optimizer step', check=_at_least(1)),
        'mesh': Field('', "'' (one device) or 'data,fsdp,tensor' device counts, e.g. '8,1,1'",
                      check=_mesh, state=False),
        'merge_stages': Field(False, "the ablation 'stages merged': one full fine-tuning stage "
                              'on both stages\' examples'),
        'best_metric': Field('valid/loss', 'metric that picks the kept-best checkpoint'),
        'best_mode': Field('', "'min' or 'max' ('': min for losses, max otherwise)",
                           choices=('', 'min', 'max')),
        'restore_best': Field(False, 'end each validated stage with its best checkpoint'),
        'keep_checkpoints': Field(2, 'last checkpoints kept besides the best',
                                  check=_at_least(1), state=False),
        'seed_offset': Field(0, 'added to the seed of model initialisation and data order '
                             '(experiment.seeds trains offsets 0..N-1)', check=_at_least(0)),
        'valid_requests': Field(0, 'validation recommendations scored by beam search during '
                                'validation (0: loss only)', check=_at_least(0)),
    }),
    'grounding': _stage(100, 3e-3, 20, lora=False),
    'capability': _stage(900, 2e-3, 60, lora=True),
    'eval': Section('evaluation of every system', {
        'num_beams': Field(20, 'beams of the constrained beam search (at least max(ks))',
                           check=_at_least(1), state=False),
        'ks': Field((1, 5, 10), 'cutoffs of HR@k, recall@k, NDCG@k', check=_ks, state=False),
        'max_requests': Field(300, 'test requests per task (0: all)', check=_at_least(0),
                              state=False),
        'batch_size': Field(50, 'requests per compiled decoding batch', check=_at_least(1),
                            state=False),
        'dtype': Field('auto', "precision NEO ranks and generates in, in evaluation, validation "
                       "and serving ('auto': bfloat16 on a CPU, where it is as good on "
                       "validation and faster, else the model's own; 'model': the model's "
                       "own; see neo_jax/decode/ranker.serving_dtype)",
                       choices=SERVING_DTYPE_CHOICES, state=False),
        'exclude_history': Field('auto', "primary protocol: exclude the user's history from "
                                 "every ranking ('auto': when no user repeats an item in the "
                                 'training events); the other protocol is reported beside it',
                                 choices=('auto', 'true', 'false'), state=False),
        'bootstrap_resamples': Field(1000, 'paired bootstrap resamples of every comparison',
                                     check=_at_least(1000), state=False),
    }, state=False),
    'experiment': Section('the comparison (which systems, how many requests)', {
        'mono_tasks': Field((), 'NEO-mono: one model per task (recommend, search)',
                            check=_names_of(MONO_TASKS), state=False),
        'seeds': Field(1, 'NEO systems trained with this many seeds (mean and std reported; '
                       'comparisons use the first)', check=_at_least(1), state=False),
        'share_grounding': Field(True, "NEO-mono copies NEO-multi's grounding stage"),
        'baselines': Field(('popularity', 'bm25'), 'baselines to compare ('
                           + ', '.join(BASELINE_NAMES) + ')',
                           check=_names_of(BASELINE_NAMES), state=False),
        'tune_baselines': Field(True, 'baselines tune their hyperparameters on validation',
                                state=False),
        'ablations': Field((), 'NEO ablations (' + ', '.join(ABLATIONS) + ')',
                           check=_names_of(ABLATIONS), state=False),
        'open_test': Field(True, 'open the test split at the end and measure every system on '
                           'it; false: stop after training, tuning and validation (what '
                           'choosing a setting runs), the test split never read'),
        'neo_valid_requests': Field(0, 'validation requests every NEO model is scored on '
                                    '(reported; per request in valid_per_request.npz, which '
                                    'experiments.compare_runs pairs across runs)',
                                    check=_at_least(0), state=False),
        'steer_requests': Field(20, 'requests of the type/format steerability measures (0: '
                                'not measured)',
                                check=_at_least(0), state=False),
        'steer_beams': Field(10, 'beams of the type steerability measure', check=_at_least(1),
                             state=False),
        'understanding_requests': Field(40, 'user-summary and explanation requests (0: not '
                                        'measured)',
                                        check=_at_least(0), state=False),
        'max_new_tokens': Field(48, 'generated tokens per answer at most', check=_at_least(1),
                                state=False),
        'lanes': Field(1, 'processes that train side by side on a CPU machine, each on its '
                       'share of the cores: 2 trains NEO-multi (and the ablations, then '
                       'experiment.lane_baselines) in a second process while the first fits '
                       'the other baselines and trains NEO-mono (same '
                       'models; 1: one after the other; 0: 2 on a CPU machine with 2 or more '
                       'cores, else 1)', choices=(0, 1, 2), state=False),
        'lane_baselines': Field(('tiger',), 'with 2 lanes: the baselines the second process '
                                'fits after NEO-multi (the others are fitted in the first), '
                                'chosen so that the lanes end together (' +
                                ', '.join(LANE_BASELINE_NAMES) + ')',
                                check=_names_of(LANE_BASELINE_NAMES), state=False),
        'cold_items': Field(0.0, 'cold-start evaluation: this fraction of each type\'s items is '
                            'held out of a second NEO-multi\'s training, added through the '
                            'frozen quantiser and measured (result.json cold/...; trains in '
                            'W/cold); 0: not run', check=_cold_fraction, state=False),
    }, state=False),
    'baseline_args': Section('constructor arguments per baseline, e.g. '
                             '--config.baseline_args.sasrec.max_epochs=5', {},
                             open_keys=True, key_choices=BASELINE_NAMES, state=False),
})


# -- building and checking ---------------------------------------------------------------------

def _build(section: Section) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  for key, f in section.fields.items():
    c[key] = _build(f) if isinstance(f, Section) else f.default
  return c


def defaults() -> ml_collections.ConfigDict:
  """Every key at its default (the quickstart's pipeline, a small comparison)."""
  return _build(SCHEMA)


def _closest(key: str, known) -> str:
  close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
  return f"; did you mean '{close[0]}'?" if close else f'; known: {", ".join(known)}'


def lookup(path: str) -> Field | Section:
  """The schema entry of a dotted key, e.g. 'capability.steps'.

  Raises:
    ConfigError: no such key (naming the closest valid one).
  """
  node: Field | Section = SCHEMA
  done = []
  for part in path.split('.'):
    if isinstance(node, Field):
      raise ConfigError(f"config key '{path}': '{'.'.join(done)}' is a value, not a section")
    if node.open_keys:
      if node.key_choices and part not in node.key_choices:
        raise ConfigError(f"unknown config key '{'.'.join(done + [part])}'"
                          + _closest(part, node.key_choices))
      return Section('constructor arguments', {}, open_keys=True)
    if part not in node.fields:
      prefix = '.'.join(done)
      known = [f'{prefix}.{k}' if prefix else k for k in node.fields]
      raise ConfigError(f"unknown config key '{path}'"
                        + _closest('.'.join(done + [part]), known))
    node = node.fields[part]
    done.append(part)
  return node


def _check_value(path: str, f: Field, value: Any) -> Any:
  """The value, normalised (tuples from comma strings, floats from ints); ConfigError if bad."""
  want = type(f.default)
  if want is tuple:
    if not isinstance(value, (str, list, tuple)):
      raise ConfigError(f'config key {path}: expected a list, got {value!r}')
    if not f.default or isinstance(f.default[0], str):
      value = names(value)  # a comma string, or items holding commas, split into names
    else:
      try:
        value = tuple(int(x) for x in names(value))
      except ValueError:
        raise ConfigError(f'config key {path}: expected a list of ints, got {value!r}'
                          ) from None
  elif want is float and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  elif want is bool and not isinstance(value, bool):
    raise ConfigError(f'config key {path}: expected true or false, got {value!r}')
  elif not isinstance(value, want) or (want is int and isinstance(value, bool)):
    raise ConfigError(f'config key {path}: expected {want.__name__}, got {value!r} '
                      f'({type(value).__name__})')
  if f.choices is not None and value not in f.choices:
    close = difflib.get_close_matches(str(value), [str(c) for c in f.choices], n=1)
    raise ConfigError(f'config key {path}: {value!r} is not one of '
                      f'{", ".join(map(str, f.choices))}'
                      + (f"; did you mean '{close[0]}'?" if close else ''))
  if f.check is not None:
    problem = f.check(value)
    if problem:
      raise ConfigError(f'config key {path}={value!r}: {problem}')
  return value


def validate(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A checked, normalised, unlocked copy of `cfg`: every key known to the schema (missing
  keys take their defaults), every value of the key's type and allowed, list keys as tuples.

  Raises:
    ConfigError: naming the first bad key (and the closest valid key for an unknown one).
  """
  out = _validate_section(SCHEMA, cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg), '')
  c = ml_collections.ConfigDict(out)
  if max(c.eval.ks) > c.eval.num_beams:
    raise ConfigError(f'config key eval.num_beams={c.eval.num_beams}: must be at least '
                      f'max(eval.ks)={max(c.eval.ks)}')
  if c.data.dataset == 'generic' and not c.data.data_dir:
    raise ConfigError("data.dataset='generic' needs the dataset directory: --data_dir=D (a "
                      'directory in the generic format, see data/README.md)')
  if c.model.random_init and not c.model.backbone:
    raise ConfigError('config key model.random_init=True needs model.backbone (a decoder '
                      'without one starts from random weights already)')
  for stage in ('grounding', 'capability'):
    if c[stage].time_budget_s > 0 and c[stage].warmup_steps < 3:
      raise ConfigError(f'config key {stage}.time_budget_s={c[stage].time_budget_s} needs '
                        f'{stage}.warmup_steps >= 3 (the step time is measured over the '
                        f'warmup), got {c[stage].warmup_steps}')
  budgets = [c[s].time_budget_s > 0 for s in ('grounding', 'capability')]
  if any(budgets) and not all(budgets) and (
      c.train.merge_stages or 'stages_merged' in c.experiment.ablations):
    raise ConfigError('merged stages train under the sum of grounding.time_budget_s and '
                      'capability.time_budget_s: set both or neither (got '
                      f'{c.grounding.time_budget_s} and {c.capability.time_budget_s})')
  for a in c.experiment.ablations:
    if a == 'random_init' and not c.model.backbone:
      raise ConfigError("experiment.ablations: 'random_init' needs a pretrained backbone "
                        '(model.backbone); this config starts from random weights already')
  return c


def _validate_section(section: Section, given: Mapping[str, Any], prefix: str
                      ) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for key, value in given.items():
    path = f'{prefix}{key}'
    if section.open_keys:
      if section.key_choices and key not in section.key_choices:
        raise ConfigError(f"unknown config key '{path}'" + _closest(key, section.key_choices))
      if not isinstance(value, Mapping):
        raise ConfigError(f'config key {path}: expected a mapping of constructor arguments, '
                          f'got {value!r}')
      out[key] = dict(value)
      continue
    if key not in section.fields:
      known = [f'{prefix}{k}' for k in section.fields]
      raise ConfigError(f"unknown config key '{path}'" + _closest(path, known))
    f = section.fields[key]
    if isinstance(f, Section):
      if not isinstance(value, Mapping):
        raise ConfigError(f'config key {path}: is a section, got {value!r}')
      out[key] = _validate_section(f, value, f'{path}.')
    else:
      out[key] = _check_value(path, f, value)
  for key, f in section.fields.items():
    if key not in out:
      out[key] = _build(f).to_dict() if isinstance(f, Section) else f.default
  return out


# -- describing and comparing ------------------------------------------------------------------

def _flat(d: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  out: dict[str, Any] = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = list(v) if isinstance(v, tuple) else v
  return out


def describe(cfg: ml_collections.ConfigDict) -> str:
  """Every key of `cfg` with its value and one line of meaning (for --print_config)."""
  lines = []
  for path, value in _flat(cfg.to_dict()).items():
    try:
      entry = lookup(path)
      meaning = entry.help
    except ConfigError:
      meaning = 'constructor argument'
    lines.append(f'{path} = {json.dumps(value)}  # {meaning}')
  return '\n'.join(lines)


def _field(path: str) -> Field | None:
  """The Field of a dotted key (None for an open key or one the schema lacks)."""
  node: Field | Section = SCHEMA
  for part in path.split('.'):
    if isinstance(node, Field) or node.open_keys or part not in node.fields:
      return None
    node = node.fields[part]
  return node if isinstance(node, Field) else None


def _is_state(path: str) -> bool:
  node: Field | Section = SCHEMA
  for part in path.split('.'):
    if isinstance(node, Field) or not node.state:
      return isinstance(node, Field) and node.state
    if node.open_keys or part not in node.fields:
      return False
    node = node.fields[part]
  return node.state


def trained_state_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
  """'key: old -> new' for every key that changes the trained state and differs (a key
  that `old`, recorded before the key existed, lacks counts as its Field's `before`)."""
  a, b = _flat(old), _flat(new)
  out = []
  for path in sorted(set(a) | set(b)):
    if not _is_state(path):
      continue
    field = _field(path)
    was = a[path] if path in a else (field.before if field is not None else None)
    if was != b.get(path):
      out.append(f'{path}: {json.dumps(was)} -> {json.dumps(b.get(path))}')
  return out
