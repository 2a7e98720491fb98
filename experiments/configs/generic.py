"""The comparison on any dataset directory in the generic format (data/README.md):

  python -m experiments.evaluate --config=experiments/configs/generic.py --data_dir=D \
      --workdir=W

Every entity type in the data is a target type (each test user's next item is asked for with
its own type; figures per type as `<system>/type_<type>/...`), and search is evaluated on
D/queries.jsonl when the directory has one (otherwise on queries generated from item text with
held-out templates).

Cost on the 2-core CPU (2026-12-07, a synthetic catalog of 30,000 items of three types, 20,000
users; RESULTS.md): 49 min 57 s in all: preparation ~9 min (MiniLM over the item texts most of
it), the two lanes 34 min (the stages' time budgets below cut NEO's 1000 + 900 capped steps
to 727 + 724), the final evaluation 4.3 min. Beside the MovieLens recipe this config sets only
those budgets and `eval.max_requests`: nothing here was chosen on this data. That run's
recipe had four decoder blocks and 1.3 capability passes; the MovieLens recipe has since
become two blocks and 1.65 passes (chosen on MovieLens validation, movielens100k.py), which
this config inherits and which has not been run on the 30,000-item catalog.
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
  # A time budget per training stage (neo_jax/train/loop.py): at the end of its warmup a stage
  # keeps the steps its measured step time fits, the cosine ending there. On the 30,000-item
  # catalog it cut NEO-multi's 1000 + 900 capped steps to 727 + 724 and the run took 50 min.
  # Not in the MovieLens config: there it bound too (701 of 943 grounding steps: the warmup's
  # 1.56 s a step, beside SASRec's start, against ~1.1 s later), which would change the recipe
  # chosen on validation; the warmup's measurement errs on the slow side.
  c.grounding.time_budget_s, c.capability.time_budget_s = 1100.0, 1000.0
  # SASRec is time-budgeted like NEO here: one of its epochs over 30,000 items takes ~6 min,
  # and its first grid point's 20 epochs would take two hours.
  c.baseline_args.sasrec['whole_first_point'] = False
  return c
