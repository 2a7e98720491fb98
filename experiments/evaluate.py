r"""The paper's comparison: NEO-multi, NEO-mono and the ablations against the baselines, with
the test split untouched until the final evaluation (neo_jax/run/experiment.py).

  python -m experiments.evaluate --config=experiments/configs/movielens100k.py --workdir=W
  python -m experiments.evaluate --config=experiments/configs/synthetic.py --workdir=W
  python -m experiments.evaluate --config=experiments/configs/generic.py \
      --config.data_dir=D --workdir=W

Writes W/report.md (+ PNGs), W/result.json, and prints the result object as the last line.
"""

import json

from absl import app

from experiments import common
from experiments import report as report_io
from neo_jax.run import experiment
from neo_jax.eval import report


def main(argv):
  common.start(argv)
  workdir = common.WORKDIR.value
  result = experiment.run_experiment(common.CONFIG.value, workdir)
  md = report.write_report(workdir, result)
  print(report.results_markdown(result))
  print(f'report: {md}')
  report_io.write_result(workdir, result)
  print(json.dumps(result, sort_keys=True))


if __name__ == '__main__':
  app.run(main)
