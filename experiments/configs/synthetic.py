"""The comparison on the synthetic multi-type catalog (movies, books, podcasts): cross-type
recommendation (`<system>/cross_type/...`: the target's type differs from the last history
item's) and type steering (`type_steerability`) can be measured here.

  python -m experiments.evaluate --config=experiments/configs/synthetic.py --workdir=W
"""

import ml_collections

from experiments.configs import movielens100k


def get_config() -> ml_collections.ConfigDict:
  c = movielens100k.get_config()
  c.data.dataset = 'synthetic'
  return c
