r"""The main job: the whole NEO pipeline, small, end to end, and a results table.

  python -m experiments.quickstart --workdir=runs/quickstart
  python -m experiments.quickstart --workdir=W --config.capability.steps=200

Writes its artifacts under --workdir and ends by printing the `result.json` object.
"""

import json

from absl import app

from experiments import common
from experiments import report
from neo_jax.run import stages as pipeline


def main(argv):
  common.start(argv)
  out = pipeline.run(common.CONFIG.value, common.WORKDIR.value)
  print(report.results_table(out['result']))
  print(report.generations_text(out['generations']))
  report.write_result(common.WORKDIR.value, out['result'])
  print(json.dumps(out['result']))


if __name__ == '__main__':
  app.run(main)
