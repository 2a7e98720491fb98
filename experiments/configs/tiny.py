"""The whole pipeline end to end in under a minute on a 2-core CPU: a smoke run for users and
tests, not a result.

A synthetic catalog of 3 entity types x 40 items and 80 users, hashed TF-IDF SIDs, a
decoder of about 0.1M parameters, a few steps of each stage, 20 test requests per task,
popularity and BM25 beside it, and a handful of steerability and understanding requests.

  python -m experiments.quickstart --config=experiments/configs/tiny.py --workdir=W
"""

import ml_collections

from neo_jax.run import config


def get_config() -> ml_collections.ConfigDict:
  c = config.defaults()
  c.data.dataset = 'synthetic'
  c.data.synthetic.update(dict(items_per_type=40, num_users=80, num_queries=60))
  c.sid.update(dict(levels=2, k=8, iters=10))
  c.tokenizer.vocab_size = 400
  c.model.update(dict(preset='tiny', d_model=32, num_layers=1, num_heads=2, num_kv_heads=1,
                      head_dim=16, mlp_dim=64))
  c.tasks.update(dict(train_targets_per_user=4, history_window=0))
  # seq_len 72: the longest generated test query (56 tokens with bos and [SID]) fits the
  # ranker's prompt width (seq_len - 8), which never cuts an instruction header.
  c.train.update(dict(seq_len=72, batch_size=8))
  c.grounding.update(dict(steps=4, warmup_steps=1, log_every=2))
  c.capability.update(dict(steps=8, warmup_steps=2, log_every=4))
  c.eval.update(dict(num_beams=10, max_requests=20, batch_size=20))
  c.experiment.update(dict(baselines=('popularity', 'bm25'), steer_requests=2, steer_beams=4,
                           understanding_requests=4, max_new_tokens=16))
  return c
