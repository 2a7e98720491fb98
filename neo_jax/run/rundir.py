"""Run directories: the config a directory's state was trained with, and results written so a
reader never sees half a file.

A workdir (what `--workdir` names) records its config in `config.json` before anything else is
written. Rerunning it with a config that changes the trained state (any key of the schema not
marked `state=False`) is refused with a key-by-key difference, unless the caller asks to
overwrite; keys that do not change the trained state (evaluation sizes, logging) may change
freely. Each NEO model an experiment trains lives in a run directory `<workdir>/<name>/` with
its own `config.json` (an ablation's differs from the experiment's), checked the same way.

A directory may be local or on any file system `etils.epath` supports (`gs://bucket/run`):
every access goes through `epath` and `catalog.atomic` (whose docstring says what stands in
for an atomic rename there); paths come back as strings, local ones absolute.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import ml_collections
from etils import epath

from neo_jax.catalog import atomic
from neo_jax.catalog import multihost
from neo_jax.run import config as config_lib

CONFIG_FILE = 'config.json'


class RunDirError(config_lib.UserError):
  """A workdir that cannot be used as asked (changed config, not a run directory, ...)."""


Dir = str | os.PathLike


def _path(directory: Dir) -> epath.Path:
  return atomic.as_path(directory)


def has_config(directory: Dir) -> bool:
  return (_path(directory) / CONFIG_FILE).exists()


def read_config(directory: Dir) -> dict[str, Any] | None:
  """The recorded config of `directory` (None when it has none)."""
  path = _path(directory) / CONFIG_FILE
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise RunDirError(f'{path}: not valid JSON ({e}); rerun with --overwrite or choose a new '
                      '--workdir') from None


def check(directory: Dir, cfg: ml_collections.ConfigDict) -> None:
  """Raises RunDirError when `directory` cannot hold a run of `cfg`: its recorded config
  trained another state (listing every differing key), or it was written by a version of
  neo_jax whose config this one does not know, or it is a non-empty directory that is not a
  run directory."""
  recorded = read_config(directory)
  where = _path(directory)
  if recorded is None:
    if where.is_dir() and any(where.iterdir()):
      raise RunDirError(f'{directory} exists, is not empty and holds no {CONFIG_FILE}: it is '
                        'not a neo_jax workdir; choose a new --workdir')
    return
  try:
    config_lib.validate(ml_collections.ConfigDict(recorded))
  except config_lib.ConfigError as e:
    raise RunDirError(f'{where / CONFIG_FILE} was written by another version '
                      f'of neo_jax ({e}); rerun with --overwrite or choose a new --workdir'
                      ) from None
  diff = config_lib.trained_state_diff(recorded, cfg.to_dict())
  if diff:
    raise RunDirError(f'{directory} was trained with another config; rerun with --overwrite to '
                      'start over, or choose a new --workdir. Differences (recorded -> now): '
                      + '; '.join(diff))


def claim(directory: Dir, cfg: ml_collections.ConfigDict, *, overwrite: bool = False) -> None:
  """Makes `directory` the run directory of `cfg`: checks it (`check`), or with `overwrite`
  removes a previous run there (only a directory that holds a recorded config), then records
  the config.

  In a multi-process job process 0 alone does this; the others wait for it at a barrier and
  then check the recorded config (which passes: it is theirs)."""
  barrier = f'claim:{atomic.location(directory)}'
  if not multihost.is_writer():
    multihost.barrier(barrier)
    check(directory, cfg)
    return
  if overwrite and has_config(directory):
    _path(directory).rmtree()
  else:
    check(directory, cfg)
  _path(directory).mkdir(parents=True, exist_ok=True)
  write_json(_path(directory) / CONFIG_FILE, cfg.to_dict())
  multihost.barrier(barrier)




# Strict JSON (NaN and infinities as null), written atomically: catalog/atomic.py.
json_safe = atomic.json_safe


def write_json(path: Dir, obj: Any) -> str:
  """Writes `obj` as strict JSON to `path` atomically (a synced temporary file, then a
  rename; a full disk names the file and leaves the old one)."""
  return atomic.write_json(path, obj, indent=1, sort_keys=True)


def write_result(workdir: Dir, result: Mapping[str, Any]) -> str:
  """`workdir/result.json`, atomically, strict JSON (by process 0 alone in a multi-process
  job, whose processes hold the same result); returns its path (local ones absolute)."""
  path = _path(workdir) / 'result.json'
  if multihost.is_writer():
    _path(workdir).mkdir(parents=True, exist_ok=True)
    write_json(path, result)
  return os.fspath(path)
