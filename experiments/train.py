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

Several hosts (or processes) train one model when each runs the same command with
`--distributed`, and on machines where jax.distributed does not detect the job (it does on TPU
VMs and SLURM) also the coordinator's address, the process count and the process's index:

  python -m experiments.train --distributed --coordinator_address=HOST0:PORT \
      --num_processes=N --process_id=I --config=... --workdir=W

(process I of N, HOST0 the host of process 0; on CPUs add JAX_PLATFORMS=cpu and, for several
devices per process, JAX_NUM_CPU_DEVICES=D). On one machine `experiments.multiprocess`
starts the processes itself.
"""

import sys

from absl import flags

from experiments import common
from experiments import multiprocess
from neo_jax.catalog import atomic
from neo_jax.run import config as config_lib
from neo_jax.run import experiment
from neo_jax.run import rundir
from neo_jax.run import training

RUN = common.RunFlags('quickstart.py')
flags.adopt_module_key_flags(common)
COORDINATOR_ADDRESS = flags.DEFINE_string(
    'coordinator_address', None, 'With --distributed: HOST:PORT of process 0 (the '
    "coordinator), the same in every process's command; with --num_processes and "
    '--process_id (none of the three: jax.distributed detects the job).')
NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'With --distributed: how many processes the job has (>= 1).')
PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, "With --distributed: this process's index, 0 to --num_processes - 1 "
    '(0 runs the coordinator and writes the shared files).')


def join_job() -> None:
  """Joins the multi-process job the --distributed flags ask for (nothing without
  --distributed); a bad flag is a UserError naming it."""
  try:
    args = multiprocess.distributed_args(RUN.distributed.value, COORDINATOR_ADDRESS.value,
                                         NUM_PROCESSES.value, PROCESS_ID.value)
  except ValueError as e:
    raise config_lib.UserError(str(e)) from e
  if args is None:
    return
  try:
    print(multiprocess.join(**args), file=sys.stderr, flush=True)
  except ValueError as e:  # already joined, or nothing detected for --distributed alone
    hint = '' if args else (' (give --coordinator_address, --num_processes and --process_id '
                            'where jax.distributed does not detect the job)')
    raise config_lib.UserError(f'--distributed: {e}{hint}') from e


def main(argv):
  # Not RUN.start: its --distributed joins with no address, count or index.
  common.start(argv)
  join_job()
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
