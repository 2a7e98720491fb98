"""Quickstart: the whole NEO pipeline, small, on a 2-core CPU in under 15 minutes.

MovieLens-100k (TFDS build from the installed recbole package; `--config.data.source=synthetic`
for the multi-type synthetic catalog) -> text features -> residual k-means SIDs per type ->
sentencepiece + SID tokens -> tiny Llama-style decoder -> grounding stage -> capability stage
-> constrained beam search -> Recall/NDCG beside popularity and BM25.

The decoder here starts from random weights (the pretrained SmolLM2 backbone is a later
config), so learning rates are those of training from scratch, not the paper's fine-tuning
rates (1e-3 grounding / 1e-4 capability).
Override anything on the command line, e.g. `--config.capability.steps=100`.
"""

import ml_collections


def _stage(steps, lr, warmup):
  return ml_collections.ConfigDict(dict(
      steps=steps, learning_rate=lr, warmup_steps=warmup, final_lr_fraction=0.1,
      b1=0.9, b2=0.95, weight_decay=0.01, clip_norm=1.0, log_every=50, checkpoint_every=0,
      # Validation every eval_every steps (0 = off) on eval_batches batches (0 = all).
      eval_every=0, eval_batches=0))


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  # 'synthetic' generates the catalog into <workdir>/data; 'movielens100k' builds it with TFDS
  # from the installed recbole package (or data.path: an ml-100k.zip or folder); 'generic'
  # reads the generic-format directory data.path.
  c.data.source = 'movielens100k'
  c.data.path = ''
  # 'leave_one_out' (SASRec/TIGER/RecBole) or 'temporal[:V,T[,H]]' (the paper's global split).
  c.data.split = 'leave_one_out'
  # Interactions/queries naming unknown items: 'error', or 'skip' (counted and reported).
  c.data.on_unknown_item = 'error'
  c.data.synthetic = ml_collections.ConfigDict(dict(
      items_per_type=300, num_users=1200, num_queries=1500, seed=0))

  # encoder: 'tfidf' (hashed TF-IDF, feature_dim), 'minilm' (all-MiniLM-L6-v2, 384-d) or
  # 'npy:<path>'. method: 'rkmeans', or the ablations 'random' / 'atomic'. levels/k: k-means
  # levels and codes per level (+1 disambiguation level for collisions).
  c.sid = ml_collections.ConfigDict(dict(
      encoder='tfidf', feature_dim=128, method='rkmeans', levels=3, k=16,
      collision='disambiguate', iters=30, tol=0.0, batch_size=0, minibatch=False,
      # 'cf' parts (neo_jax/sid/collaborative.py): PPMI-SVD size and co-occurrence window.
      cf_dim=64, cf_window=3))

  c.tokenizer = ml_collections.ConfigDict(dict(vocab_size=1500, model_type='bpe'))

  c.model = ml_collections.ConfigDict(dict(
      preset='tiny', d_model=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
      mlp_dim=384, dtype='float32', param_dtype='float32', sid_init='mean',
      # The ablation 'random initialisation': a random decoder of the backbone's shape.
      random_init=False))

  c.tasks = ml_collections.ConfigDict(dict(
      history_len=8, train_targets_per_user=12, query_valid_fraction=0.1,
      query_test_fraction=0.2, mixed_fraction=0.25,
      # Generated search queries relevant to more items than this are dropped (counted): their
      # answers would not fit a training sequence.
      max_relevant=8,
      # History continuation (tasks.builders.history_examples): windows of this many training
      # items as completions, every position a target (0 = off), with history_context items
      # of the prompt before each window.
      history_window=12, history_context=3))

  # mesh: '' trains on one device; 'data,fsdp,tensor' (e.g. '8,1,1') shards over all devices.
  # merge_stages: one stage on both stages' examples (the ablation 'stages merged').
  # best_metric/best_mode ('' = by the metric's name)/restore_best: keep-best by validation;
  # valid_requests: recommend requests scored by Recall@10 during validation (0 = loss only).
  c.train = ml_collections.ConfigDict(dict(
      seq_len=128, batch_size=32, mesh='', merge_stages=False, best_metric='valid/loss',
      best_mode='', restore_best=False, keep_checkpoints=2, valid_requests=0))
  c.grounding = _stage(steps=100, lr=3e-3, warmup=20)
  c.capability = _stage(steps=900, lr=2e-3, warmup=60)
  # LoRA rank of the capability stage (0 = full fine-tuning); alpha 0 = 2 x rank.
  c.capability.lora_rank = 0
  c.capability.lora_alpha = 0.0

  c.eval = ml_collections.ConfigDict(dict(
      num_beams=20, ks=(1, 5, 10), max_requests=300, batch_size=50))
  return c
