"""Reloading a trained run from its workdir: config, dataset, split, SID map, tokenizer, the
trained model (the last trained stage's final checkpoint) and the trie.

A workdir written by `experiments.quickstart` or `experiments.train` holds (WORKSPACE.md):

  config.json                     the run's config (every field, as trained)
  data/ | tfds/<name>/            the dataset (synthetic: generic format; movielens: TFDS);
                                  data.source='generic' reads config's data.path instead
  sids/sid_map/                   the SID map and its manifest
  tokenizer/                      spm.model or tokenizer.json (BPE), + sid_vocab.json
  checkpoints/<stage>/<step>/     orbax checkpoints {'params', 'opt_state'} of each stage

`load_run` rebuilds every piece the way the pipeline built it (same functions, same config)
and restores only the model parameters from the checkpoint (the optimizer state is not read).
Every missing or inconsistent piece raises `WorkdirError` naming the path and what to run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from neo_jax.run import stages as pipeline
from neo_jax.catalog.splits import make_split
from neo_jax.decode.trie import SIDTrie
from neo_jax.sid.builder import load_sid_map
from neo_jax.tasks.types import Example
from neo_jax.tokenizer.base import Tokenizer
from neo_jax.tokenizer.bpe import BPETokenizer
from neo_jax.tokenizer.spm import SentencePieceTokenizer

# Training stages in the order the pipeline runs them (pipeline.train).
STAGES = ('grounding', 'capability')

Log = Callable[[str], None]


class WorkdirError(FileNotFoundError):
  """A workdir lacks a piece (or holds inconsistent pieces) needed to reload the run."""


@dataclasses.dataclass
class TrainedRun:
  """A reloaded run.

  Attributes:
    workdir: the absolute workdir.
    config: the run's config (from config.json).
    artifacts: dataset, split, SID map, tokenizer, trained model and trie.
    stage, step: the checkpoint the model was restored from.
    examples: every task's examples (as `pipeline.build_examples` makes them), when asked.
  """
  workdir: str
  config: ml_collections.ConfigDict
  artifacts: pipeline.Artifacts
  stage: str
  step: int
  examples: dict[str, list[Example]] | None = None


def _quiet(_: str) -> None:
  pass


@contextlib.contextmanager
def _absl_errors_only():
  """Orbax warns (through absl logging) about every read-only manager option; not useful to
  someone loading a model."""
  logger = logging.getLogger('absl')
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config from `workdir/config.json`."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isdir(workdir):
    raise WorkdirError(f'{workdir}: no such directory')
  if not os.path.exists(path):
    raise WorkdirError(f'{path}: missing; {workdir} is not the workdir of a run of '
                       'experiments.quickstart or experiments.train')
  try:
    with open(path) as f:
      raw = json.load(f)
  except json.JSONDecodeError as e:
    raise WorkdirError(f'{path}: not valid JSON ({e})') from e
  if not isinstance(raw, dict) or not all(k in raw for k in ('data', 'sid', 'model', 'train')):
    raise WorkdirError(f'{path}: not a pipeline config (needs data, sid, model and train)')
  return ml_collections.ConfigDict(raw)


def load_tokenizer(directory: str) -> Tokenizer:
  """The tokenizer saved in `directory`: sentencepiece (`spm.model`) or byte-level BPE
  (`tokenizer.json`), each with its `sid_vocab.json`."""
  if os.path.exists(os.path.join(directory, 'spm.model')):
    return SentencePieceTokenizer.load(directory)
  if os.path.exists(os.path.join(directory, 'tokenizer.json')):
    return BPETokenizer.load(directory)
  raise WorkdirError(f'{directory}: holds neither spm.model nor tokenizer.json (the pipeline '
                     'writes one of them after the SID map)')


def _check_dataset_source(cfg: ml_collections.ConfigDict, workdir: str) -> None:
  """The dataset must already be in the workdir (or at data.path): loading never builds."""
  source = cfg.data.source
  if source == 'synthetic':
    need = os.path.join(workdir, 'data', 'items.jsonl')
  elif source == 'movielens100k':
    need = os.path.join(workdir, 'tfds', 'movielens100k')
  elif source == 'generic':
    need = cfg.data.path
  else:
    raise WorkdirError(f'{workdir}/config.json: unknown data.source {source!r}')
  if not need or not os.path.exists(need):
    raise WorkdirError(f'{need or "data.path"}: missing; the {source} dataset of this run is '
                       'gone (rerun experiments.train with the same --workdir to rebuild it)')


def final_checkpoint(workdir: str, cfg: ml_collections.ConfigDict) -> tuple[str, int]:
  """(stage, step) of the model to load: the final step of the last stage with steps > 0.

  Raises:
    WorkdirError: that stage has no checkpoint, or training stopped before its last step.
  """
  stages = [s for s in STAGES if s in cfg and int(cfg[s].steps) > 0]
  if not stages:
    raise WorkdirError(f'{workdir}/config.json: no training stage has steps > 0')
  stage = stages[-1]
  steps = int(cfg[stage].steps)
  ckpt_dir = os.path.join(workdir, 'checkpoints', stage)
  have = sorted(int(d) for d in (os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else [])
                if d.isdigit() and os.path.exists(os.path.join(ckpt_dir, d, 'default')))
  if not have:
    raise WorkdirError(f'{ckpt_dir}: no checkpoint; stage {stage!r} never saved one (rerun '
                       f'experiments.train with the same --workdir and config to train it)')
  if have[-1] != steps:
    raise WorkdirError(f'{ckpt_dir}: training of stage {stage!r} stopped at step {have[-1]} of '
                       f'{steps} (rerun experiments.train with the same --workdir and config '
                       'to resume and finish it)')
  return stage, steps


def _path_name(path) -> str:
  parts = []
  for key in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return '/'.join(parts)


def restore_params(model: nnx.Module, ckpt_dir: str, step: int) -> None:
  """Loads the parameters saved at `ckpt_dir/<step>` (as `train.loop` saves them) into `model`
  in place. The checkpoint's parameter tree must be exactly the model's (names and shapes):
  a parameter the checkpoint has and the model lacks would otherwise be dropped unseen."""
  _, params, _ = nnx.split(model, nnx.Param, ...)
  with _absl_errors_only():
    manager = ocp.CheckpointManager(os.path.abspath(ckpt_dir),
                                    options=ocp.CheckpointManagerOptions(read_only=True),
                                    item_handlers=ocp.PyTreeCheckpointHandler())
    try:
      meta = manager.item_metadata(step)
      if meta is None or 'params' not in meta:
        raise WorkdirError(f'{ckpt_dir}/{step}: holds no parameters (not a checkpoint of '
                           'neo_jax.train.loop?)')
      saved = {_path_name(p): tuple(m.shape) for p, m in
               jax.tree_util.tree_flatten_with_path(meta['params'])[0]}
      want = {_path_name(p): tuple(np.shape(a)) for p, a in
              jax.tree_util.tree_flatten_with_path(params)[0]}
      missing, extra = sorted(set(want) - set(saved)), sorted(set(saved) - set(want))
      wrong = sorted(k for k in set(want) & set(saved) if want[k] != saved[k])
      if missing or extra or wrong:
        raise WorkdirError(
            f'{ckpt_dir}/{step}: its parameters do not match the model built from config.json '
            f'(missing {missing[:5]}, unexpected {extra[:5]}, shape differs (saved, model) '
            f'{[(k, saved[k], want[k]) for k in wrong[:5]]})')
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, params)
      # Parameters only: the optimizer state (twice their size) is not needed to generate.
      restored = manager.restore(step, args=ocp.args.PyTreeRestore(
          item={'params': abstract},
          restore_args={'params': ocp.checkpoint_utils.construct_restore_args(abstract)},
          partial_restore=True))
    finally:
      manager.close()
  nnx.update(model, restored['params'])


def load_run(workdir: str, *, examples: bool = False, log: Log | None = None) -> TrainedRun:
  """Reloads the trained run in `workdir` (see the module docstring for the layout).

  Args:
    workdir: a workdir of `experiments.quickstart` or `experiments.train`.
    examples: also rebuild every task's examples (seconds on MovieLens-100k).
    log: progress lines (None: silent).

  Raises:
    WorkdirError: a piece is missing or the pieces disagree (each message names the path).
  """
  log = log or _quiet
  workdir = os.path.abspath(workdir)
  cfg = load_config(workdir)
  _check_dataset_source(cfg, workdir)
  stage, step = final_checkpoint(workdir, cfg)
  sid_dir = os.path.join(workdir, 'sids', 'sid_map')
  tok_dir = os.path.join(workdir, 'tokenizer')
  for path in (sid_dir, tok_dir):
    if not os.path.isdir(path):
      raise WorkdirError(f'{path}: missing (the pipeline writes it before training)')

  ds = pipeline.load_data(cfg, workdir, log)
  split, _ = make_split(ds.interactions, cfg.data.split)
  sid_map = load_sid_map(sid_dir)
  if (len(sid_map) != len(ds.catalog) or tuple(sid_map.type_names) != ds.catalog.type_names
      or not np.array_equal(sid_map.type_index, ds.catalog.type_index)):
    raise WorkdirError(f'{sid_dir}: the SID map ({len(sid_map)} items of types '
                       f'{sid_map.type_names}) does not describe the dataset ({len(ds.catalog)} '
                       f'items of types {ds.catalog.type_names})')
  tok = load_tokenizer(tok_dir)
  if (tuple(tok.sid.type_names) != tuple(sid_map.type_names) or any(
      tuple(tok.sid.level_sizes[t]) != tuple(int(k) for k in sid_map.level_sizes[t])
      for t in sid_map.type_names)):
    raise WorkdirError(f'{tok_dir}: its SID block ({dict(tok.sid.level_sizes)}) does not match '
                       f'the SID map ({dict(sid_map.level_sizes)})')
  log(f'tokenizer: {tok.text_vocab_size} text tokens + {tok.sid.size} SID tokens')

  model = pipeline.build_model(cfg, tok)
  restore_params(model, os.path.join(workdir, 'checkpoints', stage), step)
  log(f'model: restored {stage} step {step} from {workdir}/checkpoints/{stage}')
  trie = SIDTrie.build(sid_map, tok.sid)
  art = pipeline.Artifacts(ds, split, sid_map, tok, model, trie)
  exs = pipeline.build_examples(cfg, ds, split, sid_map, tok) if examples else None
  return TrainedRun(workdir, cfg, art, stage, step, exs)


def load_workdir(workdir: str, *, log: Log | None = None) -> pipeline.Artifacts:
  """The artifacts of the trained run in `workdir` (`load_run(...).artifacts`)."""
  return load_run(workdir, log=log).artifacts


def describe(run: TrainedRun) -> dict[str, Any]:
  """Flat facts of a reloaded run (for result.json and banners)."""
  art = run.artifacts
  return {'workdir': run.workdir, 'stage': run.stage, 'step': run.step,
          'num_items': len(art.dataset.catalog), 'types': ','.join(art.dataset.catalog.type_names),
          'num_users': len(art.dataset.interactions.user_names),
          'vocab_size': int(art.model.cfg.vocab_size)}
