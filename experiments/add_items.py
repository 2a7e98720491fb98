r"""Adds new items to a trained run, or withdraws items from it, without retraining.

  python -m experiments.add_items --workdir=W --items=new.jsonl
      new items in the generic format (one JSON object a line: id, type, title; optional
      description, tags, attributes, popularity), of the run's entity types, ids not yet in
      its catalog: each gets an SID from its text through the run's frozen quantiser
      (neo_jax/sid/quantiser.py)
  python -m experiments.add_items --workdir=W --remove=ids.txt
      item ids, one a line, withdrawn: never generated again

Both may be given in one call (the items are added first). The run's trained artifacts are
not touched; the changes are written to W/catalog_update/ atomically (neo_jax/run/
catalog_update.py): a command killed at any moment leaves the run as it was. Ends by writing
W/catalog_update/result.json (the run's own result.json is left alone) and printing the same
object as its last line.
"""

from __future__ import annotations

import json

from absl import flags
import numpy as np

from experiments import common
from neo_jax.run import catalog_update
from neo_jax.run import rundir
from neo_jax.run.config import UserError

flags.adopt_module_key_flags(common)

_WORKDIR = flags.DEFINE_string('workdir', None, 'a trained run: a workdir or one of its run '
                               'directories')
_ITEMS = flags.DEFINE_string('items', None, 'new items, generic items.jsonl format')
_REMOVE = flags.DEFINE_string('remove', None, 'ids of items to withdraw, one a line')
_EMBEDDINGS = flags.DEFINE_string('embeddings', None, ".npy (M, D) vectors of the new items, "
                                  "row i = line i (only for runs whose SIDs came from 'npy:')")
_ADDED_AT = flags.DEFINE_string('added_at', None, 'addition time recorded for the new items '
                                '(unix seconds or an ISO date; default: now)')


def main(argv):
  common.start(argv)
  if not _WORKDIR.value:
    raise UserError('--workdir is required (a trained run)')
  if not _ITEMS.value and not _REMOVE.value:
    raise UserError('give --items=new.jsonl and/or --remove=ids.txt')
  result = {}
  if _ITEMS.value:
    emb = None
    if _EMBEDDINGS.value:
      try:
        emb = np.load(_EMBEDDINGS.value, allow_pickle=False)
      except (OSError, ValueError) as e:
        raise UserError(f'--embeddings={_EMBEDDINGS.value}: not a readable .npy ({e})') from None
    when = catalog_update.parse_time(_ADDED_AT.value) if _ADDED_AT.value else None
    result.update(catalog_update.add_items(_WORKDIR.value, _ITEMS.value, embeddings=emb,
                                           added_at=when, log=print))
  if _REMOVE.value:
    ids = catalog_update.read_ids(_REMOVE.value)
    facts = catalog_update.remove_items(_WORKDIR.value, ids, log=print)
    seconds = result.get('seconds', 0.0) + facts['seconds']
    result.update(facts)
    result['seconds'] = seconds
  catalog_update.write_result(_WORKDIR.value, result)
  print(json.dumps(rundir.json_safe(result), sort_keys=True))


if __name__ == '__main__':
  common.run(main)
