"""Throughput of the grain input pipeline against the eager packer, on synthetic task examples.

  python -m experiments.benchmarks.input_pipeline --items_per_type=300 --num_users=500

Builds a synthetic catalog, random SIDs (unique codes per type: this measures the data path,
not SID quality), a sentencepiece vocabulary, and every task's training examples
(recommendation ids+mixed, search on generated queries, query grounding, user profiles,
grounding); then times one epoch through `train.input_pipeline` and through
`train.data.pack_examples`. Prints the figures, then the result line.
"""

from __future__ import annotations

import itertools
import json
import time

from absl import app
from absl import flags
import numpy as np

from neo_jax.catalog import synthetic
from neo_jax.catalog.splits import leave_one_out
from neo_jax.sid.types import SIDMap
from neo_jax.tasks import builders, prompts
from neo_jax.tasks.queries import generate_queries
from neo_jax.tokenizer.spm import SentencePieceTokenizer, train_sentencepiece
from neo_jax.train import input_pipeline as ip
from neo_jax.train.data import pack_examples

_ITEMS = flags.DEFINE_integer('items_per_type', 300, 'synthetic items per entity type')
_USERS = flags.DEFINE_integer('num_users', 500, 'synthetic users')
_SEQ = flags.DEFINE_integer('seq_len', 256, 'tokens per packed row')
_BATCH = flags.DEFINE_integer('batch', 16, 'rows per batch')
_BINS = flags.DEFINE_integer('bins', 16, 'first-fit packing bins')
_LEVELS = (8, 8, 8)


def _random_sids(catalog, seed):
  rng = np.random.default_rng(seed)
  codes = np.zeros((len(catalog), len(_LEVELS)), np.int32)
  combos = np.array(list(itertools.product(*[range(k) for k in _LEVELS])), np.int32)
  for t in catalog.type_names:
    rows = catalog.items_of_type(t)
    codes[rows] = combos[rng.permutation(len(combos))[:rows.size]]
  return SIDMap(catalog.type_names, {t: _LEVELS for t in catalog.type_names}, codes,
                catalog.type_index.copy())


def main(argv):
  del argv
  t0 = time.perf_counter()
  ds = synthetic.generate_synthetic(synthetic.SyntheticConfig(
      items_per_type=_ITEMS.value, num_users=_USERS.value, seed=0))
  split = leave_one_out(ds.interactions)
  sid_map = _random_sids(ds.catalog, 0)
  texts = [ds.catalog.text(i) for i in range(len(ds.catalog))]
  texts += prompts.template_texts(ds.catalog.type_names)
  tok = SentencePieceTokenizer.from_sid_map(train_sentencepiece(texts, 2000), sid_map)
  seconds_setup = time.perf_counter() - t0

  t0 = time.perf_counter()
  queries = generate_queries(ds.catalog, seed=0)
  vocab = tok.sid
  examples = (
      builders.recommend_examples(split, ds.catalog, sid_map, vocab,
                                  output_format=('ids', 'mixed'), max_targets_per_user=5)
      + builders.search_examples(queries.train, ds.catalog, sid_map, vocab)
      + builders.query_grounding_examples(queries.train, ds.catalog, sid_map, vocab)
      + builders.user_profile_examples(split, ds.catalog, sid_map, vocab, users=ds.users,
                                       use_given_summary=False)
      + builders.sid_to_text_examples(ds.catalog, sid_map, vocab)
      + builders.text_to_sid_examples(ds.catalog, sid_map, vocab))
  seconds_examples = time.perf_counter() - t0

  cfg = ip.PipelineConfig(seq_len=_SEQ.value, batch_size=_BATCH.value, seed=0, num_epochs=1,
                          drop_remainder=False, num_packing_bins=_BINS.value)
  t0 = time.perf_counter()
  it = iter(ip.make_dataset(examples, tok, cfg, shard_index=0, shard_count=1))
  first = next(it)
  seconds_first = time.perf_counter() - t0
  batches, tokens, cut = [first], 0, 0
  batches.extend(it)
  seconds_grain = time.perf_counter() - t0
  segs = np.concatenate([b['segment_ids'] for b in batches])
  tokens = int((segs > 0).sum())
  cut = int(sum(int(b['cut_prompts'].sum()) for b in batches))
  packed_examples = int(sum(int(r.max()) for r in segs))

  t0 = time.perf_counter()
  eager = pack_examples(examples, tok, _SEQ.value, _BATCH.value, seed=0)
  seconds_eager = time.perf_counter() - t0

  result = {
      'items': len(ds.catalog), 'users': len(split.train), 'examples': len(examples),
      'generated_queries_train': len(queries.train),
      'generated_queries_eval': len(queries.valid) + len(queries.test),
      'seq_len': _SEQ.value, 'batch': _BATCH.value, 'bins': _BINS.value,
      'grain_rows': int(segs.shape[0]), 'grain_fill': tokens / segs.size,
      'grain_examples_packed': packed_examples, 'grain_cut_prompts': cut,
      'grain_seconds_first_batch': seconds_first, 'grain_seconds_epoch': seconds_grain,
      'grain_examples_per_second': len(examples) / seconds_grain,
      'grain_tokens_per_second': tokens / seconds_grain,
      'eager_rows': eager.num_rows, 'eager_fill': eager.stats['fill'],
      'eager_seconds': seconds_eager, 'seconds_setup': seconds_setup,
      'seconds_examples': seconds_examples,
  }
  print(f'{len(examples)} examples ({len(ds.catalog)} items, {len(split.train)} users), '
        f'examples built in {seconds_examples:.1f}s')
  print(f'grain: {result["grain_rows"]} rows of {_SEQ.value}, fill {result["grain_fill"]:.3f}, '
        f'{result["grain_examples_per_second"]:.0f} examples/s, '
        f'{result["grain_tokens_per_second"]:.0f} tokens/s, first batch {seconds_first:.2f}s')
  print(f'eager pack_examples: {eager.num_rows} rows, fill {eager.stats["fill"]:.3f}, '
        f'{seconds_eager:.1f}s')
  print(json.dumps(result, sort_keys=True))


if __name__ == '__main__':
  app.run(main)
