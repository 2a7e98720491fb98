r"""The main job: the whole NEO pipeline, small, end to end, and its results table.

  python -m experiments.quickstart --workdir=runs/quickstart
  python -m experiments.quickstart --workdir=W --config.capability.steps=200
  python -m experiments.quickstart --workdir=W --config=experiments/configs/tiny.py
  python -m experiments.quickstart --print_config

MovieLens-100k -> SIDs -> tokenizer -> decoder -> grounding and capability stages ->
constrained beam search, beside popularity and BM25, on the test split (the same experiment
as `experiments.evaluate`, with the small config experiments/configs/quickstart.py). Writes
everything under --workdir (the trained model in W/neo_multi, which `experiments.generate
--workdir=W` loads), W/report.md and W/result.json, and prints the result object last.
"""


from absl import flags

from experiments import common
from neo_jax.catalog import atomic
from neo_jax.eval import report
from neo_jax.run import experiment
from neo_jax.run import rundir

RUN = common.RunFlags('quickstart.py')
flags.adopt_module_key_flags(common)


def main(argv):
  RUN.start(argv)
  cfg = RUN.resolved_config()
  workdir = RUN.workdir_value()
  result, samples = experiment.run_experiment(cfg, workdir, overwrite=RUN.overwrite.value)
  report.write_report(workdir, result)
  print(report.results_markdown(result))
  print(report.generations_text(samples))
  rundir.write_result(workdir, result)
  print(atomic.dumps(result, sort_keys=True))


if __name__ == '__main__':
  common.run(main)
