"""The comparison on any dataset directory in the generic format (data/README.md):

  python -m experiments.evaluate --config=experiments/configs/generic.py --data_dir=D \
      --workdir=W

Every entity type in the data is a target type (each test user's next item is asked for with
its own type; figures per type as `<system>/type_<type>/...`), and search is evaluated on
D/queries.jsonl when the directory has one (otherwise on queries generated from item text with
held-out templates).
"""

import ml_collections

from experiments.configs import movielens100k


def get_config() -> ml_collections.ConfigDict:
  c = movielens100k.get_config()
  c.data.dataset = 'generic'  # and --data_dir=D (data.data_dir)
  return c
