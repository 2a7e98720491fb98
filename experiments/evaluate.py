r"""The paper's comparison: NEO-multi, NEO-mono and the ablations against the baselines, with
the test split untouched until the final evaluation (neo_jax/run/experiment.py).

  python -m experiments.evaluate --workdir=W       # MovieLens-100k (configs/movielens100k.py)
  python -m experiments.evaluate --config=experiments/configs/synthetic.py --workdir=W
  python -m experiments.evaluate --config=experiments/configs/generic.py --data_dir=D \
      --workdir=W

Every model it trains is a run directory (W/neo_multi, W/neo_mono_<task>, W/ablation_<name>)
that `experiments.generate --workdir=` loads. Writes W/report.md (+ PNGs), W/result.json, and
prints the result object as the last line. `--config.experiment.open_test=false` stops before
the test split (what choosing a setting on validation runs): it prints the validation figures
and writes W/result.json only.
"""


from absl import flags

from experiments import common
from neo_jax.catalog import atomic
from neo_jax.eval import report
from neo_jax.run import experiment
from neo_jax.run import rundir

RUN = common.RunFlags('movielens100k.py')
flags.adopt_module_key_flags(common)


def main(argv):
  RUN.start(argv)
  cfg = RUN.resolved_config()
  workdir = RUN.workdir_value()
  result, _ = experiment.run_experiment(cfg, workdir, overwrite=RUN.overwrite.value)
  if cfg.experiment.open_test:
    md = report.write_report(workdir, result)
    print(report.results_markdown(result))
    print(f'report: {md}')
  else:  # Choosing a setting: validation figures only, the test split never opened.
    for k in sorted(result):
      if k.startswith(('valid/', 'budget/')) or k.endswith('/fit/valid_ndcg@10'):
        print(f'{k} {result[k]}')
  rundir.write_result(workdir, result)
  print(atomic.dumps(result, sort_keys=True))


if __name__ == '__main__':
  common.run(main)
