"""What every entry point shares: one way to fail, and the flags of a run with the config they
resolve to.

Flags of every command that runs the pipeline (`RunFlags`; `--help` lists them):
  --workdir       the run's directory (everything is written under it)
  --config        a config file (experiments/configs/*.py); any key overridable as
                  --config.<section>.<key>=VALUE (`--print_config` lists every key)
  --dataset       shorthand for --config.data.dataset (movielens100k, synthetic, generic)
  --data_dir      shorthand for --config.data.data_dir (an input data directory; with it the
                  dataset defaults to generic)
  --print_config  print the resolved config with each key's meaning and exit
  --overwrite     start the workdir over when its recorded config trained another state
  --traceback     show the Python traceback of a user error (default: one line)
  --distributed   call jax.distributed.initialize() first (multi-host TPU/GPU)

A user error (a bad config key or value, bad data, an unknown dataset kind, a workdir trained
with another config, a missing input) is printed as one line `error: ...` and exits with
status 1; with --traceback the traceback is shown too.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from typing import Callable

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from neo_jax.catalog import atomic
from neo_jax.catalog.types import DatasetError
from neo_jax.run import config as config_lib

CONFIGS = os.path.join(os.path.dirname(__file__), 'configs')

TRACEBACK = flags.DEFINE_bool('traceback', False, 'Show the traceback of a user error.')


class RunFlags:
  """The flags of a command that runs the pipeline (see the module docstring)."""

  def __init__(self, default_config: str):
    # config_flags applies the --config.* overrides of sys.argv when the flag is defined:
    # check their keys first, so that an unknown key is one line naming the closest valid key.
    try:
      _check_overrides(sys.argv)
    except config_lib.ConfigError as e:
      _error(str(e))
    self.workdir = flags.DEFINE_string(
        'workdir', None, 'The run directory: every artifact is written under it; rerunning '
        'the same command resumes there.')
    self.config = config_flags.DEFINE_config_file(
        'config', os.path.join(CONFIGS, default_config),
        'Config file (experiments/configs/*.py); override any key with '
        '--config.<section>.<key>=VALUE.', lock_config=True)
    self.dataset = flags.DEFINE_enum('dataset', None, list(config_lib.DATASETS),
                                     'Shorthand for --config.data.dataset.')
    self.data_dir = flags.DEFINE_string(
        'data_dir', None, 'Shorthand for --config.data.data_dir (an input data directory; '
        'alone it selects --dataset=generic).')
    self.print_config = flags.DEFINE_bool(
        'print_config', False, "Print the resolved config with each key's meaning, then exit.")
    self.overwrite = flags.DEFINE_bool(
        'overwrite', False, 'Start over in a workdir whose recorded config trained another '
        'state (its contents are removed).')
    self.distributed = flags.DEFINE_bool(
        'distributed', False, 'Call jax.distributed.initialize() first (multi-host TPU/GPU).')

  def start(self, argv: list[str]) -> None:
    """Rejects stray arguments, quiets orbax's per-step INFO logs, joins a multi-host run."""
    start(argv)
    if self.distributed.value:
      import jax  # pylint: disable=g-import-not-at-top
      jax.distributed.initialize()

  def resolved_config(self) -> ml_collections.ConfigDict:
    """The config of the command line: the file, its overrides and the --dataset /
    --data_dir shorthands, validated against the schema (ConfigError names the bad key). With
    --print_config it is printed and the command exits."""
    try:
      cfg = self.config.value.to_dict()
    except Exception as e:  # pylint: disable=broad-except
      # config_flags reports a config file that fails to load only when its value is read.
      detail = [x.strip() for x in str(e).splitlines() if x.strip()][-1]
      path = flags.FLAGS['config'].config_filename
      raise config_lib.ConfigError(f'--config={path}: the config file does not load '
                                   f'({detail})') from e
    if self.data_dir.value is not None:
      cfg['data']['data_dir'] = self.data_dir.value
      if self.dataset.value is None:
        cfg['data']['dataset'] = 'generic'
    if self.dataset.value is not None:
      cfg['data']['dataset'] = self.dataset.value
    cfg = config_lib.validate(ml_collections.ConfigDict(cfg))
    if cfg.data.data_dir and not atomic.as_path(cfg.data.data_dir).exists():
      raise config_lib.ConfigError(f'--data_dir={cfg.data.data_dir}: no such file or '
                                   'directory')
    if self.print_config.value:
      print(config_lib.describe(cfg))
      sys.exit(0)
    return cfg

  def workdir_value(self) -> str:
    if not self.workdir.value:
      raise config_lib.UserError('--workdir is required (the directory the run writes under)')
    return self.workdir.value


# Exceptions that are the user's to fix; anything else is a bug and shows its traceback.
USER_ERRORS = (config_lib.UserError, DatasetError, FileExistsError)


def _error(message: str) -> None:
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(1)


def _check_overrides(argv: list[str]) -> None:
  """Every --config.<key>=... names a key of the schema (before absl parses, so that an unknown
  key is one line naming the closest valid key, not ml_collections' traceback)."""
  for arg in argv[1:]:
    m = re.match(r'--config\.([A-Za-z0-9_.]+)(=|$)', arg)
    if m:
      config_lib.lookup(m.group(1))


def _parse(argv: list[str]) -> list[str]:
  """absl's flag parsing with user errors as one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _error(str(e).replace('\n', ' '))
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # config_flags' errors: a config file that does not load, or an override of the wrong type.
    arg = next((a for a in argv[1:] if a.startswith('--config')), '--config')
    _error(f'{arg}: {str(e).strip(chr(39)).splitlines()[0]}')
  return []


def run(main: Callable[[list[str]], None]) -> None:
  """`app.run(main)` with the flag parsing above and user errors as one line, exit status 1."""
  try:
    app.run(main, flags_parser=_parse)
  except USER_ERRORS as e:
    if TRACEBACK.value:
      traceback.print_exc()
    _error(str(e))


def start(argv: list[str]) -> None:
  """Rejects stray arguments and quiets orbax's per-step INFO logs (unless the command line
  set `--verbosity` itself: it is then kept, and -1 also turns progress lines off)."""
  if len(argv) > 1:
    raise config_lib.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
