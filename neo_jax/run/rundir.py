"""Run directories: the config a directory's state was trained with, and results written so a
reader never sees half a file.

A workdir (what `--workdir` names) records its config in `config.json` before anything else is
written. Rerunning it with a config that changes the trained state (any key of the schema not
marked `state=False`) is refused with a key-by-key difference, unless the caller asks to
overwrite; keys that do not change the trained state (evaluation sizes, logging) may change
freely. Each NEO model an experiment trains lives in a run directory `<workdir>/<name>/` with
its own `config.json` (an ablation's differs from the experiment's), checked the same way.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Mapping

import ml_collections

from neo_jax.catalog import atomic
from neo_jax.catalog import multihost
from neo_jax.run import config as config_lib

CONFIG_FILE = 'config.json'


class RunDirError(config_lib.UserError):
  """A workdir that cannot be used as asked (changed config, not a run directory, ...)."""


def has_config(directory: str) -> bool:
  return os.path.exists(os.path.join(directory, CONFIG_FILE))


def read_config(directory: str) -> dict[str, Any] | None:
  """The recorded config of `directory` (None when it has none)."""
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise RunDirError(f'{path}: not valid JSON ({e}); rerun with --overwrite or choose a new '
                      '--workdir') from None


def check(directory: str, cfg: ml_collections.ConfigDict) -> None:
  """Raises RunDirError when `directory` cannot hold a run of `cfg`: its recorded config
  trained another state (listing every differing key), or it was written by a version of
  neo_jax whose config this one does not know, or it is a non-empty directory that is not a
  run directory."""
  recorded = read_config(directory)
  if recorded is None:
    if os.path.isdir(directory) and os.listdir(directory):
      raise RunDirError(f'{directory} exists, is not empty and holds no {CONFIG_FILE}: it is '
                        'not a neo_jax workdir; choose a new --workdir')
    return
  try:
    config_lib.validate(ml_collections.ConfigDict(recorded))
  except config_lib.ConfigError as e:
    raise RunDirError(f'{os.path.join(directory, CONFIG_FILE)} was written by another version '
                      f'of neo_jax ({e}); rerun with --overwrite or choose a new --workdir'
                      ) from None
  diff = config_lib.trained_state_diff(recorded, cfg.to_dict())
  if diff:
    raise RunDirError(f'{directory} was trained with another config; rerun with --overwrite to '
                      'start over, or choose a new --workdir. Differences (recorded -> now): '
                      + '; '.join(diff))


def claim(directory: str, cfg: ml_collections.ConfigDict, *, overwrite: bool = False) -> None:
  """Makes `directory` the run directory of `cfg`: checks it (`check`), or with `overwrite`
  removes a previous run there (only a directory that holds a recorded config), then records
  the config.

  In a multi-process job process 0 alone does this; the others wait for it at a barrier and
  then check the recorded config (which passes: it is theirs)."""
  if not multihost.is_writer():
    multihost.barrier(f'claim:{os.path.abspath(directory)}')
    check(directory, cfg)
    return
  if overwrite and has_config(directory):
    shutil.rmtree(directory)
  else:
    check(directory, cfg)
  os.makedirs(directory, exist_ok=True)
  write_json(os.path.join(directory, CONFIG_FILE), cfg.to_dict())
  multihost.barrier(f'claim:{os.path.abspath(directory)}')




# Strict JSON (NaN and infinities as null), written atomically: catalog/atomic.py.
json_safe = atomic.json_safe


def write_json(path: str, obj: Any) -> str:
  """Writes `obj` as strict JSON to `path` atomically (a synced temporary file, then a
  rename; a full disk names the file and leaves the old one)."""
  return atomic.write_json(path, obj, indent=1, sort_keys=True)


def write_result(workdir: str, result: Mapping[str, Any]) -> str:
  """`workdir/result.json`, atomically, strict JSON (by process 0 alone in a multi-process
  job, whose processes hold the same result); returns its path."""
  path = os.path.join(workdir, 'result.json')
  if multihost.is_writer():
    os.makedirs(workdir, exist_ok=True)
    write_json(path, result)
  return path
