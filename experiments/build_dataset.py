"""Builds a dataset with TFDS (array_record), exports it to the generic format, splits it.

  python -m experiments.build_dataset --dataset=movielens100k --workdir=W
  python -m experiments.build_dataset --dataset=movielens100k --data_dir=ml-100k.zip --workdir=W
  python -m experiments.build_dataset --dataset=generic --data_dir=D --workdir=W
  python -m experiments.build_dataset --dataset=synthetic --workdir=W

Writes
  W/tfds/<dataset>/<table>/1.0.0/   the TFDS build (items, interactions, users, queries, meta)
  W/data/                           the same dataset in the generic format (--export)
  W/build_dataset.json              the builder and its arguments
  W/result.json                     counts, split sizes, and every policy's counts
and prints the result.json object as the last line. Every artifact is written atomically;
rerunning the same command after an interruption (even SIGKILL) reuses what was complete and
builds the rest (an existing build from other arguments needs --overwrite). Bad input stops the build with an error
naming the file, line and field (exit status 1). --dataset=synthetic first generates the
synthetic catalog (the run config's data.synthetic defaults) into W/synthetic_source in the
generic format, then builds that as generic data.
"""

from __future__ import annotations

import json
import os
import time

from absl import flags

from experiments import common
from neo_jax.catalog import atomic
from neo_jax.catalog import io as catalog_io
from neo_jax.catalog import splits
from neo_jax.catalog import synthetic
from neo_jax.catalog import tfds_builders
from neo_jax.run import config as config_lib
from neo_jax.run import rundir

flags.adopt_module_key_flags(common)

_DATASET = flags.DEFINE_enum('dataset', None, list(config_lib.DATASETS),
                             'Which dataset to build.', required=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory.', required=True)
_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, 'The input data: generic: the directory in the generic format to build; '
    'movielens100k: the official ml-100k.zip or an extracted folder (official or RecBole atomic '
    'files; default: the copy inside the installed recbole package).')
_SPLIT = flags.DEFINE_string(
    'split', 'leave_one_out', "Split whose sizes to report: 'leave_one_out' or "
    "'temporal[:V,T[,H]]' (see neo_jax/catalog/splits.make_split).")
_TYPES = flags.DEFINE_list('types', None, 'generic: the declared entity types; an item of '
                           'another type is an error. Default: any valid type name.')
_ON_UNKNOWN_ITEM = flags.DEFINE_enum('on_unknown_item', 'error', ['error', 'skip'],
                                     'generic: interactions/queries naming unknown items.')
_ON_OUT_OF_ORDER = flags.DEFINE_enum(
    'on_out_of_order', 'allow', ['allow', 'error'],
    'generic: events not sorted by time within a user: allow (count; splits sort) or error.')
_EXPORT = flags.DEFINE_bool('export', True, 'Also write W/data in the generic format.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace an existing W/data and W/tfds.')
# What the build was made from; a rerun with the same arguments resumes instead of refusing.
ARGS_FILE = 'build_dataset.json'


def _builder(workdir: str) -> tuple[str, dict]:
  """(TFDS builder name, its arguments) of the flags."""
  if _DATASET.value == 'generic':
    if not _DATA_DIR.value:
      raise config_lib.UserError('--dataset=generic needs --data_dir=<a generic-format '
                                 'directory>')
    return 'generic', dict(source=_DATA_DIR.value, on_unknown_item=_ON_UNKNOWN_ITEM.value,
                           allowed_types=_TYPES.value, on_out_of_order=_ON_OUT_OF_ORDER.value)
  if _TYPES.value:
    raise config_lib.UserError('--types applies to --dataset=generic only')
  if _DATASET.value == 'synthetic':
    if _DATA_DIR.value:
      raise config_lib.UserError('--data_dir does not apply to --dataset=synthetic (it is '
                                 'generated)')
    source = os.path.join(workdir, 'synthetic_source')
    if not atomic.as_path(os.path.join(source, 'items.jsonl')).exists():
      synthetic.write_synthetic(synthetic.SyntheticConfig(
          **config_lib.defaults().data.synthetic.to_dict()), source)
    return 'generic', dict(source=source)
  return _DATASET.value, dict(source=_DATA_DIR.value)


def _build_args(name: str, kwargs: dict) -> dict:
  """What determines the build (recorded in W/build_dataset.json): the builder and its source
  and policies."""
  args = {'builder': name, **kwargs}
  if args.get('source'):
    args['source'] = atomic.location(args['source'])
  return json.loads(atomic.dumps(args, sort_keys=True))


def _recorded(path: str) -> dict | None:
  try:
    with atomic.open_text(path) as f:
      return json.load(f)
  except (FileNotFoundError, ValueError):
    return None


def main(argv):
  common.start(argv)
  tfds_builders.tfds.disable_progress_bar()
  workdir = _WORKDIR.value
  tfds_dir = os.path.join(workdir, 'tfds')
  start = time.perf_counter()
  name, kwargs = _builder(workdir)
  built = os.path.join(tfds_dir, name)
  args_path = os.path.join(workdir, ARGS_FILE)
  args = _build_args(name, kwargs)
  # A rerun of the same command (after a kill) reuses what the interrupted run completed: the
  # TFDS build and the export are each written atomically, so what exists is whole.
  resuming = not _OVERWRITE.value and _recorded(args_path) == args
  if not _OVERWRITE.value and atomic.as_path(built).exists() and not resuming:
    raise FileExistsError(f'{built} exists; pass --overwrite or choose another --workdir')
  atomic.write_json(args_path, args, indent=1, sort_keys=True)
  if resuming and atomic.as_path(built).exists():
    source_ds, source_report = None, tfds_builders.built_report(built)
  else:
    source_ds, source_report, built = tfds_builders.build(name, tfds_dir,
                                                          overwrite=_OVERWRITE.value, **kwargs)
  build_s = time.perf_counter() - start

  # Everything below reads the TFDS build back, so the figures describe what was written.
  start = time.perf_counter()
  ds = tfds_builders.load_built(built)
  load_s = time.perf_counter() - start
  if source_ds is not None and (len(ds.interactions) != len(source_ds.interactions)
                                or len(ds.catalog) != len(source_ds.catalog)):
    raise RuntimeError('the TFDS build does not hold what the source held')
  if _EXPORT.value:
    # Resuming: an export that exists was written from this build (atomically), and writing
    # it again gives the same files.
    catalog_io.write_dataset(ds, os.path.join(workdir, 'data'),
                             overwrite=_OVERWRITE.value or resuming)

  split, split_params = splits.make_split(ds.interactions, _SPLIT.value)
  result = {
      'dataset': _DATASET.value,
      'name': ds.name,
      'num_items': len(ds.catalog),
      'num_users': len(ds.interactions.user_names),
      'num_interactions': len(ds.interactions),
      'num_queries': len(ds.queries),
      'num_user_profiles': len(ds.users),
      'entity_types': ','.join(ds.catalog.type_names),
      'split': _SPLIT.value,
      'split/train_users': len(split.train),
      'split/train_interactions': int(sum(s.size for s in split.train.values())),
      'split/valid': len(split.valid),
      'split/test': len(split.test),
      'build_seconds': round(build_s, 3),
      'load_seconds': round(load_s, 3),
      'tfds_dir': built,
      'generic_dir': os.path.join(workdir, 'data') if _EXPORT.value else '',
  }
  result.update({f'split/{k}': v for k, v in split_params.items()})
  result.update({f'split/skipped/{k}': v for k, v in split.skipped.items()})
  result.update({f'skipped/{k}': v for k, v in ds.skipped.items()})
  result.update({f'policy/{k}': v for k, v in catalog_io.interaction_report(ds).items()})
  for section, values in source_report.items():
    result.update({f'{section}/{k}': v for k, v in values.items()})
  result['resumed'] = resuming
  rundir.write_result(workdir, result)
  print(atomic.dumps(result, sort_keys=True))


if __name__ == '__main__':
  common.run(main)
