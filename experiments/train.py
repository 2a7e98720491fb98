r"""Training only: data, SIDs, tokenizer, examples, then NEO's two stages, resumable.

  python -m experiments.train --config=experiments/configs/quickstart.py --workdir=W

Trains every NEO model the config asks for (NEO-multi in W/neo_multi; NEO-mono and ablation
runs when `experiment.mono_tasks` / `experiment.ablations` name them) and evaluates nothing.
Rerunning the same command after an interruption (even SIGKILL) resumes each stage from its
last checkpoint (`--config.capability.checkpoint_every=N` sets the cadence) and reaches the
same final loss as an uninterrupted run. Ends by printing the `result.json` object.

The paper's ablations are configs too: experiments/configs/ablation_no_grounding.py,
ablation_stages_merged.py, ablation_random_init.py (SmolLM2 shape, random weights). Task
mixture weights (tasks.mixture), validation during training (<stage>.eval_every,
train.best_metric, train.restore_best, train.valid_requests) and LoRA for the capability stage
(capability.lora_rank, lora_alpha) are config keys: `--print_config` lists them all.
"""


from absl import flags

from experiments import common
from neo_jax.catalog import atomic
from neo_jax.run import experiment
from neo_jax.run import rundir
from neo_jax.run import training

RUN = common.RunFlags('quickstart.py')
flags.adopt_module_key_flags(common)


def main(argv):
  RUN.start(argv)
  cfg = RUN.resolved_config()
  workdir = RUN.workdir_value()
  result, _ = experiment.run_experiment(cfg, workdir, overwrite=RUN.overwrite.value,
                                        train_only=True)
  stage, _ = training.last_stage(cfg)
  result['final_loss'] = result.get(f'{experiment.MAIN_RUN}/train/{stage}_final_loss')
  rundir.write_result(workdir, result)
  print(atomic.dumps(result, sort_keys=True))


if __name__ == '__main__':
  common.run(main)
