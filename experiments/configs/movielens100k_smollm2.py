"""The MovieLens-100k comparison on the pretrained SmolLM2-135M backbone, for a GPU or TPU.

experiments/configs/quickstart_smollm2.py's backbone, tokenizer and fine-tuning rates
(1e-3 grounding / 1e-4 capability, the paper's) with the experiment fields of
movielens100k.py, and step counts and batch sizes for an accelerator (on a 2-core CPU a
forward+backward step of 1 x 128 tokens takes ~9 s: do not run this there).

  python -m experiments.evaluate --config=experiments/configs/movielens100k_smollm2.py \
      --workdir=W --config.model.dtype=bfloat16
"""

import ml_collections

from experiments.configs import movielens100k
from experiments.configs import quickstart_smollm2


def get_config() -> ml_collections.ConfigDict:
  c = movielens100k.add_experiment(quickstart_smollm2.get_config())
  c.model.remat = 'none'
  c.train.batch_size = 32
  c.grounding.steps, c.grounding.warmup_steps = 1000, 300
  c.capability.steps, c.capability.warmup_steps = 4000, 400
  c.grounding.log_every = c.capability.log_every = 50
  c.eval.max_requests, c.eval.batch_size = 943, 32
  c.experiment.steer_requests, c.experiment.understanding_requests = 100, 200
  c.experiment.neo_valid_requests = 300
  c.experiment.ablations = ('no_grounding', 'stages_merged', 'random_init', 'random_sids',
                           'unconstrained')
  return c
