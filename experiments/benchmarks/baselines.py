"""Every baseline of `neo_jax.baselines` on MovieLens-100k: recommendation and generated search.

  python -m experiments.benchmarks.baselines --workdir=W [--methods=popularity,bm25,sasrec]

Data: MovieLens-100k built with TFDS from the installed `recbole` package into W/tfds (reused
when present), split leave-one-out by time (validation = each user's second-to-last item,
test = the last). Search: queries generated from item text by `tasks.queries.
generate_queries` with the quickstart's fractions (valid 0.1, test 0.2, at most
`max_relevant` relevant items), held-out templates only in valid/test.

Protocol: full ranking of the 1,682 movies, nothing excluded unless --exclude_history (then
each user's history is excluded, RecBole's protocol for non-sequential models). Each
baseline fits on the training split and tunes/early-stops on validation only (a
`neo_jax.eval.validation.Validator` over the validation targets and queries, under the same
protocol); the test split is read once, at the end. Prints each baseline's validation and
test HR@10 / NDCG@10 and its fit time (seconds on this machine); the last line is the flat
JSON result (also W/result.json).
"""

from __future__ import annotations

import json
import os
import time

from absl import app
from absl import flags

from neo_jax.run import rundir
from neo_jax.catalog import tfds_builders
from neo_jax.catalog.splits import leave_one_out
from neo_jax.baselines import bm25
from neo_jax.baselines import popularity
from neo_jax.eval import validation
from neo_jax.tasks.queries import generate_queries

WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for the TFDS build and result.json.',
                              required=True)
METHODS = flags.DEFINE_list('methods', ['popularity', 'bm25', 'sasrec'],
                            'Baselines to run, in order.')
EXCLUDE_HISTORY = flags.DEFINE_bool('exclude_history', False,
                                    'Exclude each user\'s history from its ranking.')
MAX_RELEVANT = flags.DEFINE_integer('max_relevant', 8, 'Generated queries with more relevant '
                                    'items are dropped (counted), as in the quickstart.')
SASREC_STRIDE = flags.DEFINE_integer('sasrec_stride', 10, 'SASRec window stride (targets with '
                                     'loss per window).')
SASREC_EPOCHS = flags.DEFINE_integer('sasrec_max_epochs', 50, 'SASRec epochs per grid point.')
SASREC_GRID = flags.DEFINE_list('sasrec_grid', ['0.5:1e-3', '0.2:1e-3', '0.5:3e-3'],
                                'SASRec tuning grid, dropout:lr pairs.')
SASREC_LOSS = flags.DEFINE_enum('sasrec_loss', 'ce', ['ce', 'bce'], 'SASRec loss.')
SASREC_BUDGET = flags.DEFINE_float('sasrec_budget_s', 2400.0, 'SASRec tuning time budget.')
TIGER_MAX_ITEMS = flags.DEFINE_integer('tiger_max_items', 10, 'TIGER history items per prompt.')
TIGER_LRS = flags.DEFINE_list('tiger_lrs', ['3e-3'], 'TIGER learning rates tried.')
TIGER_BUDGET = flags.DEFINE_float('tiger_budget_s', 1500.0, 'TIGER tuning time budget.')


def make_baseline(name: str, log):
  if name == 'popularity':
    return popularity.Popularity()
  if name == 'bm25':
    return bm25.BM25()
  if name == 'bm25s':
    return bm25.BM25S()
  if name == 'dense':
    from neo_jax.baselines import dense  # pylint: disable=g-import-not-at-top
    return dense.Dense(cache_dir=os.path.join(WORKDIR.value, 'dense'), log=log)
  if name == 'tiger':
    from neo_jax.baselines import tiger  # pylint: disable=g-import-not-at-top
    cfg = tiger.TIGERConfig(max_items=TIGER_MAX_ITEMS.value, stride=TIGER_MAX_ITEMS.value,
                            lr_grid=tuple(float(x) for x in TIGER_LRS.value),
                            time_budget_s=TIGER_BUDGET.value)
    return tiger.TIGER(cfg, log=log)
  if name == 'sasrec':
    from neo_jax.baselines import sasrec  # pylint: disable=g-import-not-at-top
    grid = tuple((float(p.split(':')[0]), float(p.split(':')[1])) for p in SASREC_GRID.value)
    cfg = sasrec.SASRecConfig(stride=SASREC_STRIDE.value, max_epochs=SASREC_EPOCHS.value,
                              grid=grid, loss=SASREC_LOSS.value,
                              time_budget_s=SASREC_BUDGET.value)
    return sasrec.SASRec(cfg, log=log)
  raise app.UsageError(f'unknown method {name!r}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  workdir = WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  log = lambda s: print(s, flush=True)
  built = os.path.join(workdir, 'tfds', 'movielens100k')
  if not os.path.exists(built):
    tfds_builders.build('movielens100k', os.path.join(workdir, 'tfds'))
  ds = tfds_builders.load_built(built)
  split = leave_one_out(ds.interactions)
  queries = generate_queries(ds.catalog, valid_fraction=0.1, test_fraction=0.2,
                             max_relevant=MAX_RELEVANT.value, seed=0)
  log(f'data: {len(ds.catalog)} items, {len(split.valid)} valid / {len(split.test)} test '
      f'users; queries valid {len(queries.valid)}, test {len(queries.test)}')
  result: dict[str, float] = {'exclude_history': float(EXCLUDE_HISTORY.value),
                              'search_valid_queries': len(queries.valid),
                              'search_test_queries': len(queries.test)}
  validator = validation.Validator(ds.catalog, split.valid, queries.valid,
                                   exclude_history=EXCLUDE_HISTORY.value)
  rows = []
  for name in METHODS.value:
    model = make_baseline(name, log)
    t0 = time.perf_counter()
    facts = model.fit(ds, split, validator=validator)
    fit_s = time.perf_counter() - t0
    log(f'{name}: fitted in {fit_s:.1f}s: ' + json.dumps(
        {k: v for k, v in facts.items() if not isinstance(v, (list, dict))}))
    result[f'{name}/fit_seconds'] = fit_s
    row = {'method': name}
    if 'recommend' in model.tasks:
      for part, targets in (('valid', split.valid), ('test', split.test)):
        m = validation.recommend_metrics(ds.catalog, targets, model.rank_recommend,
                                         exclude_history=EXCLUDE_HISTORY.value)
        for key in ('hr@10', 'ndcg@10', 'hr@30', 'ndcg@30', 'mrr'):
          result[f'{name}/{part}/{key}'] = m[key]
        row.update({f'{part} hr@10': m['hr@10'], f'{part} ndcg@10': m['ndcg@10']})
    if 'search' in model.tasks:
      for part, qs in (('valid', queries.valid), ('test', queries.test)):
        m = validation.search_metrics(ds.catalog, qs, model.rank_search)
        for key in ('hr@10', 'ndcg@10', 'recall@10', 'mrr'):
          result[f'{name}/{part}/search_{key}'] = m[key]
        row.update({f'{part} search hr@10': m['hr@10'], f'{part} search ndcg@10': m['ndcg@10']})
    row['fit s'] = fit_s
    rows.append(row)
  cols = ['valid hr@10', 'valid ndcg@10', 'test hr@10', 'test ndcg@10', 'valid search hr@10',
          'test search hr@10', 'test search ndcg@10', 'fit s']
  print(f'{"method":12s}' + ''.join(f'{c:>20s}' for c in cols))
  for row in rows:
    print(f'{row["method"]:12s}' + ''.join(
        f'{row[c]:20.4f}' if c in row else f'{"-":>20s}' for c in cols))
  rundir.write_result(workdir, result)


if __name__ == '__main__':
  app.run(main)
