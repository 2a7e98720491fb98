"""Reloading a trained run: config, dataset, split, SID map, tokenizer, the trained model
and the trie.

A workdir written by `experiments.quickstart`, `experiments.train` or `experiments.evaluate`
holds (WORKSPACE.md):

  config.json                     the experiment's config
  data/ | tfds/<name>/            the dataset (synthetic: generic format; movielens: TFDS);
                                  data.dataset='generic' reads config's data.data_dir instead
  sids/sid_map/                   the SID map and its manifest
  tokenizer/                      spm.model or tokenizer.json (BPE), + sid_vocab.json
  neo_multi/, neo_mono_<task>/,   run directories, one per trained model: config.json (the
  ablation_<name>/                config the model was trained with), checkpoints/<stage>/
                                  <step>/ (orbax {'params', 'opt_state'}), logs/, tensorboard/

`load_run(path)` takes a workdir (its main model, neo_multi) or a run directory (any model;
its preparation is its parent directory), rebuilds every piece the way the run built it
(same functions, same config) and restores only the model parameters (the optimizer state is
not read). Every missing or inconsistent piece raises `WorkdirError` naming the path and what
to run.
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

from neo_jax.catalog import atomic
from neo_jax.catalog.splits import make_split
from neo_jax.decode.trie import SIDTrie
from neo_jax.model import lora
from neo_jax.run import config as config_lib
from neo_jax.run import rundir
from neo_jax.run import stages
from neo_jax.run import training
from neo_jax.sid.builder import load_sid_map
from neo_jax.tasks.types import Example
from neo_jax.train import loop
from neo_jax.tokenizer.base import Tokenizer
from neo_jax.tokenizer.bpe import BPETokenizer
from neo_jax.tokenizer.files import TokenizerFileError
from neo_jax.tokenizer.spm import SentencePieceTokenizer

# Run directories tried, in order, when a workdir (not a run directory) is given: the
# experiment's main model, then the random-SID ablation's (its own preparation).
MAIN_RUNS = ('neo_multi', 'neo')

Log = Callable[[str], None]


class WorkdirError(config_lib.UserError, FileNotFoundError):
  """A workdir lacks a piece (or holds inconsistent pieces) needed to reload the run."""


@dataclasses.dataclass
class TrainedRun:
  """A reloaded run.

  Attributes:
    workdir: the absolute directory of the preparation (data, SIDs, tokenizer).
    run_dir: the absolute run directory of the model.
    config: the model's config (from <run_dir>/config.json).
    artifacts: dataset, split, SID map, tokenizer, trained model and trie.
    stage, step: the checkpoint the model was restored from.
    examples: every task's examples (as `stages.build_examples` makes them), when asked.
  """
  workdir: str
  run_dir: str
  config: ml_collections.ConfigDict
  artifacts: stages.Artifacts
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


def _exists(path: str) -> bool:
  return atomic.as_path(path).exists()


def _isdir(path: str) -> bool:
  return atomic.as_path(path).is_dir()


def find_run_dir(path: str) -> tuple[str, str]:
  """(run directory, preparation directory) of `path`: a run directory (it holds
  checkpoints/; its preparation is its parent) or a workdir holding one of MAIN_RUNS."""
  path = atomic.location(path)
  if not _isdir(path):
    raise WorkdirError(f'{path}: no such directory')
  if _isdir(os.path.join(path, 'checkpoints')):
    return path, os.path.dirname(path)
  for name in MAIN_RUNS:
    if _isdir(os.path.join(path, name, 'checkpoints')):
      return os.path.join(path, name), path
  raise WorkdirError(f'{path}: holds no trained model (no {path}/neo_multi/checkpoints); run '
                     'experiments.quickstart, train or evaluate with this --workdir first, or '
                     'give a run directory such as W/neo_mono_recommend')


def load_config(directory: str) -> ml_collections.ConfigDict:
  """The validated config recorded in `directory/config.json`."""
  path = os.path.join(directory, rundir.CONFIG_FILE)
  try:
    raw = rundir.read_config(directory)
  except rundir.RunDirError as e:
    raise WorkdirError(str(e)) from None
  if raw is None:
    raise WorkdirError(f'{path}: missing; {directory} is not a run directory of neo_jax')
  try:
    return config_lib.validate(ml_collections.ConfigDict(raw))
  except config_lib.ConfigError as e:
    raise WorkdirError(f'{path}: not a config of this version of neo_jax ({e})') from None


def load_tokenizer(directory: str) -> Tokenizer:
  """The tokenizer saved in `directory`: sentencepiece (`spm.model`) or byte-level BPE
  (`tokenizer.json`), each with its `sid_vocab.json`."""
  try:
    if _exists(os.path.join(directory, 'spm.model')):
      return SentencePieceTokenizer.load(directory)
    if _exists(os.path.join(directory, 'tokenizer.json')):
      return BPETokenizer.load(directory)
  except TokenizerFileError as e:
    raise WorkdirError(f'{e} (rerun the command that trained this run with the same --workdir: '
                       'its preparation writes the tokenizer again)') from None
  raise WorkdirError(f'{directory}: holds neither spm.model nor tokenizer.json (a run writes '
                     'one of them after the SID map)')


def _check_dataset(cfg: ml_collections.ConfigDict, workdir: str) -> None:
  """The dataset must already be in the workdir (or at data.data_dir): loading never builds."""
  need = stages.dataset_location(cfg, workdir)
  if not need or not _exists(need):
    raise WorkdirError(f'{need or "data.data_dir"}: missing; the {cfg.data.dataset} dataset of '
                       'this run is gone (rerun the command that trained it to rebuild it)')


def _checkpoint_steps(ckpt_dir: str) -> list[int]:
  names = [d.name for d in atomic.as_path(ckpt_dir).iterdir()] if _isdir(ckpt_dir) else []
  return sorted(int(d) for d in names
                if d.isdigit() and _exists(os.path.join(ckpt_dir, d, 'default')))


def final_checkpoint(run_dir: str, cfg: ml_collections.ConfigDict) -> tuple[str, int]:
  """(stage, step) of the trained model: the last stage's final step, or the best checkpoint
  when the stage restored it (`train.restore_best`).

  Raises:
    WorkdirError: that stage has no checkpoint, or training stopped before its last step.
  """
  try:
    stage, steps = training.last_stage(cfg)
  except ValueError as e:
    raise WorkdirError(f'{run_dir}/config.json: {e}') from None
  ckpt_dir = os.path.join(run_dir, 'checkpoints', stage)
  # Fewer than the config's when the stage's time budget decided so (`loop.StageSettings`).
  decided = loop.budget_decision(ckpt_dir)
  steps = int(decided['steps']) if decided is not None else steps
  have = _checkpoint_steps(ckpt_dir)
  if not have:
    raise WorkdirError(f'{ckpt_dir}: no checkpoint; stage {stage!r} never saved one (rerun '
                       'the command that trained it with the same --workdir to train it)')
  if have[-1] != steps:
    raise WorkdirError(f'{ckpt_dir}: training of stage {stage!r} stopped at step {have[-1]} of '
                       f'{steps} (rerun the command that trained it with the same --workdir '
                       'to resume and finish it)')
  return stage, _model_step(ckpt_dir, steps)


def _model_step(ckpt_dir: str, steps: int) -> int:
  """The checkpoint the trained model ended its stage with: the last step, or the best one
  when the stage restored it (`model_step` of the stage's summary.json)."""
  path = os.path.join(ckpt_dir, 'summary.json')
  if not _exists(path):
    raise WorkdirError(f'{path}: missing; the stage did not finish writing its summary (rerun '
                       'the command that trained it with the same --workdir)')
  with atomic.open_text(path) as f:
    step = int(json.load(f).get('model_step', steps))
  if not _exists(os.path.join(ckpt_dir, str(step), 'default')):
    raise WorkdirError(f'{ckpt_dir}/{step}: the checkpoint the model ended its stage with is '
                       'missing')
  return step


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


def restore_params(model: nnx.Module, ckpt_dir: str, step: int, trained: Any = nnx.Param
                   ) -> None:
  """Loads the parameters saved at `ckpt_dir/<step>` (as `train.loop` saves them: the ones the
  stage trained, `trained` an nnx filter) into `model` in place. The checkpoint's parameter
  tree must be exactly the model's `trained` part (names and shapes): a parameter the
  checkpoint has and the model lacks would otherwise be dropped unseen."""
  _, params, _ = nnx.split(model, trained, ...)
  with _absl_errors_only():
    manager = ocp.CheckpointManager(atomic.location(ckpt_dir),
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
      loop.verify_checksums(loop.saved_checksums(manager, step), restored, f'{ckpt_dir}/{step}')
    except (WorkdirError, MemoryError):
      raise
    except Exception as e:  # pylint: disable=broad-except
      # orbax and tensorstore raise many kinds of errors for damaged files.
      reason = ' '.join(f'{type(e).__name__}: {e}'.split())[:300]
      raise WorkdirError(
          f'{ckpt_dir}/{step}: the checkpoint is damaged ({reason}); rerun the command that '
          'trained it with the same --workdir: training sets a damaged checkpoint aside and '
          'trains again from the previous one') from None
    finally:
      manager.close()
  nnx.update(model, restored['params'])


def _restore_model(cfg: ml_collections.ConfigDict, tok: Tokenizer, run_dir: str, stage: str,
                   step: int) -> nnx.Module:
  """The trained model: the config's model with the parameters of `stage` at `step`. A LoRA
  stage saved only what it trained (adapters, embedding and head): its frozen weights are the
  previous stage's result (or the initial model), restored first; the adapters are merged
  into the weights afterwards, as training did after the stage."""
  model = stages.build_model(cfg, tok)
  scfg = training.stage_config(cfg, stage)
  if training.lora_settings(stage, scfg)[0] > 0:
    before = [s for s in training.stage_names(cfg) if s != stage]
    if before:
      prev_dir = os.path.join(run_dir, 'checkpoints', before[-1])
      restore_params(model, prev_dir, _model_step(prev_dir, int(cfg[before[-1]].steps)))
    training.apply_stage_lora(model, stage, scfg, training.train_seed(cfg))
    restore_params(model, os.path.join(run_dir, 'checkpoints', stage), step,
                   lora.trainable_filter())
    lora.merge_lora(model)
  else:
    restore_params(model, os.path.join(run_dir, 'checkpoints', stage), step)
  return model


def load_run(path: str, *, examples: bool = False, log: Log | None = None) -> TrainedRun:
  """Reloads the trained model of `path` (a workdir or a run directory; module docstring).

  Args:
    path: a workdir of `experiments.quickstart`, `train` or `evaluate`, or one of its run
      directories (e.g. W/neo_mono_recommend).
    examples: also rebuild every task's examples (seconds on MovieLens-100k).
    log: progress lines (None: silent).

  Raises:
    WorkdirError: a piece is missing or the pieces disagree (each message names the path).
  """
  log = log or _quiet
  run_dir, workdir = find_run_dir(path)
  cfg = load_config(run_dir)
  _check_dataset(cfg, workdir)
  stage, step = final_checkpoint(run_dir, cfg)
  sid_dir = os.path.join(workdir, 'sids', 'sid_map')
  tok_dir = os.path.join(workdir, 'tokenizer')
  for p in (sid_dir, tok_dir):
    if not _isdir(p):
      raise WorkdirError(f'{p}: missing (a run writes it before training)')

  ds = stages.load_data(cfg, workdir, log, build=False)
  split, _ = make_split(ds.interactions, cfg.data.split)
  try:
    sid_map = load_sid_map(sid_dir)
  except (ValueError, OSError) as e:  # a damaged map: named by load_sid_map
    raise WorkdirError(f'{e} (rerun the command that trained this run with the same --workdir: '
                       'its preparation writes the SID map again)') from None
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

  model = _restore_model(cfg, tok, run_dir, stage, step)
  log(f'model: restored {stage} step {step} from {run_dir}/checkpoints/{stage}')
  trie = SIDTrie.build(sid_map, tok.sid)
  art = stages.Artifacts(ds, split, sid_map, tok, model, trie)
  exs = None
  if examples:  # a trained run's own examples, test included (no experiment is running)
    data = stages.split_data(cfg, ds, log)
    exs = {**stages.build_examples(cfg, data, sid_map, tok),
           **stages.build_test_examples(cfg, data, sid_map, tok)}
  return TrainedRun(workdir, run_dir, cfg, art, stage, step, exs)


def load_workdir(path: str, *, log: Log | None = None) -> stages.Artifacts:
  """The artifacts of the trained model of `path` (`load_run(...).artifacts`)."""
  return load_run(path, log=log).artifacts


def describe(run: TrainedRun) -> dict[str, Any]:
  """Flat facts of a reloaded run (for result.json and banners)."""
  art = run.artifacts
  return {'workdir': run.workdir, 'run_dir': run.run_dir, 'stage': run.stage, 'step': run.step,
          'num_items': len(art.dataset.catalog), 'types': ','.join(art.dataset.catalog.type_names),
          'num_users': len(art.dataset.interactions.user_names),
          'vocab_size': int(art.model.cfg.vocab_size)}
