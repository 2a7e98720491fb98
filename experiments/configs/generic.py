"""The comparison on any dataset directory in the generic format (data/README.md):

  python -m experiments.evaluate --config=experiments/configs/generic.py --data_dir=D \
      --workdir=W

Every entity type in the data is a target type (each test user's next item is asked for with
its own type; figures per type as `<system>/type_<type>/...`), and search is evaluated on
D/queries.jsonl when the directory has one (otherwise on queries generated from item text with
held-out templates).

Cost on the 2-core CPU (2026-12-07, a synthetic catalog of 30,000 items of three types, 20,000
users; RESULTS.md): preparation ~16 min (MiniLM over the item texts ~10 of them), then
NEO-multi's capped 1000 + 900 steps at ~1.8 s each in its lane: ~80 min in all, not yet
within an hour.
"""

import ml_collections

from experiments.configs import movielens100k


def get_config() -> ml_collections.ConfigDict:
  c = movielens100k.get_config()
  c.data.dataset = 'generic'  # and --data_dir=D (data.data_dir)
  # The MovieLens recipe as it is (its budgets are passes capped in steps, its codebook grows
  # with each type's size), evaluated on at most 4000 test requests per task, a seeded sample
  # (all of them on MovieLens' 943 users): decoding 30 beams for every user of a catalog with
  # tens of thousands of them would take most of the hour on two cores.
  c.eval.max_requests = 4000
  return c
