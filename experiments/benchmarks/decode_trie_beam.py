"""Times the SID trie build, its size, and constrained beam search / generation steps.

  python -m experiments.benchmarks.decode_trie_beam --items=1000000 --beams=30

The catalog is `items` random SIDs of one type: `levels` random codes of K=`k` each plus a
disambiguation level (an item's rank among the items with the same codes), as the SID map
builds it. The model is a fixed-table Markov chain (neo_jax/decode/testing.py), so the step
times measure decoding itself: log-softmax over the vocabulary, trie lookups, top-k and cache
gathers, not a transformer. Prints progress lines and, last, a JSON object of the figures.
"""

from __future__ import annotations

import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from neo_jax.decode.beam_search import sid_beam_search
from neo_jax.decode.cache import left_pad, prefill
from neo_jax.decode.generate import generate
from neo_jax.decode.testing import markov_cache, markov_lm
from neo_jax.decode.trie import SIDTrie, SIDVocabArrays, build_trie_arrays
from neo_jax.sid.types import SIDMap
from neo_jax.tokenizer.sid_vocab import SIDVocab

_ITEMS = flags.DEFINE_integer('items', 1_000_000, 'catalog size')
_LEVELS = flags.DEFINE_integer('levels', 3, 'k-means levels (a disambiguation level is added)')
_K = flags.DEFINE_integer('k', 256, 'codes per k-means level')
_TEXT_VOCAB = flags.DEFINE_integer('text_vocab', 32_000, 'text tokens before the SID block')
_TABLE_ROWS = flags.DEFINE_integer('table_rows', 64, 'rows of the Markov logit table')
_BATCH = flags.DEFINE_integer('batch', 8, 'requests per search')
_BEAMS = flags.DEFINE_integer('beams', 30, 'beams per request')
_NEW_TOKENS = flags.DEFINE_integer('new_tokens', 64, 'tokens per generate() call')
_RUNS = flags.DEFINE_integer('runs', 5, 'timed warm runs of each decoder')


def random_sid_map(n: int, levels: int, k: int, seed: int = 0) -> SIDMap:
  rng = np.random.default_rng(seed)
  codes = rng.integers(0, k, (n, levels), dtype=np.int64)
  key = np.zeros(n, np.int64)
  for l in range(levels):
    key = key * k + codes[:, l]
  order = np.argsort(key, kind='stable')
  sorted_key = key[order]
  group_start = np.r_[True, sorted_key[1:] != sorted_key[:-1]]
  start_of = np.maximum.accumulate(np.where(group_start, np.arange(n), 0))
  rank = np.empty(n, np.int64)
  rank[order] = np.arange(n) - start_of
  sizes = (k,) * levels + (int(rank.max()) + 1,)
  return SIDMap(('item',), {'item': sizes}, np.c_[codes, rank].astype(np.int32),
                np.zeros(n, np.int32))


def timed(fn, runs):
  """(first call seconds, median warm seconds); results blocked on."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  warm = []
  for _ in range(runs):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    warm.append(time.perf_counter() - t0)
  return first, float(np.median(warm))


def main(argv):
  del argv
  n = _ITEMS.value
  sid_map = random_sid_map(n, _LEVELS.value, _K.value)
  sizes = sid_map.level_sizes['item']
  vocab = SIDVocab(('item',), sid_map.level_sizes, _TEXT_VOCAB.value)
  print(f'{n} items, level sizes {sizes}, vocabulary {vocab.end}')

  t0 = time.perf_counter()
  arrays = build_trie_arrays(sid_map, vocab)
  build_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  trie = jax.block_until_ready(SIDTrie.build(sid_map, vocab))
  build_to_device_s = time.perf_counter() - t0
  per_level = [int(b.nbytes + c.nbytes) for b, c in zip(arrays.bitmaps, arrays.child_base)]
  print(f'trie build {build_s:.2f}s (numpy), {build_to_device_s:.2f}s with transfer; '
        f'{trie.nbytes / n:.2f} bytes/item; nodes per level '
        f'{[b.shape[0] for b in arrays.bitmaps]}; bytes per level {per_level}')

  rng = np.random.default_rng(1)
  v = vocab.end
  table = rng.normal(0, 2, (_TABLE_ROWS.value, v)).astype(np.float32)
  step_fn = markov_lm(table)
  batch, beams = _BATCH.value, _BEAMS.value
  prompts = [list(rng.integers(2, _TEXT_VOCAB.value, 5 + b)) + [vocab.sid_open_id]
             for b in range(batch)]
  tokens, positions, valid = left_pad(prompts, 0)
  cache = markov_cache(batch, tokens.shape[1] + max(_NEW_TOKENS.value, vocab.num_levels))
  last_logits, last_pos, cache = prefill(step_fn, cache, jnp.asarray(tokens),
                                         jnp.asarray(positions), jnp.asarray(valid))
  vocab_arrays = SIDVocabArrays.from_vocab(vocab)

  beam_first, beam_warm = timed(
      lambda: sid_beam_search(step_fn, cache, last_logits, last_pos, trie, vocab_arrays, beams),
      _RUNS.value)
  items, _ = sid_beam_search(step_fn, cache, last_logits, last_pos, trie, vocab_arrays, beams)
  distinct = all(len(set(r)) == beams for r in np.asarray(items).tolist())
  steps = vocab.num_levels
  print(f'beam search B={batch} K={beams}: first call {beam_first:.2f}s, warm '
        f'{1e3 * beam_warm:.1f} ms = {1e3 * beam_warm / steps:.2f} ms per level '
        f'({steps} levels); items distinct: {distinct}')

  gen_first, gen_warm = timed(
      lambda: generate(step_fn, cache, last_logits, last_pos, trie, vocab_arrays,
                       max_new_tokens=_NEW_TOKENS.value, eos_id=1, pad_id=0,
                       output_format='mixed').tokens, _RUNS.value)
  print(f'generate B={batch} {_NEW_TOKENS.value} tokens: first call {gen_first:.2f}s, warm '
        f'{1e3 * gen_warm:.1f} ms = {1e3 * gen_warm / _NEW_TOKENS.value:.2f} ms per token')

  result = {
      'items': n, 'level_sizes': list(sizes), 'vocab_size': v,
      'trie_build_s': build_s, 'trie_build_s_per_1m_items': build_s * 1e6 / n,
      'trie_build_with_transfer_s': build_to_device_s,
      'trie_bytes': trie.nbytes, 'trie_bytes_per_item': trie.nbytes / n,
      'beam_batch': batch, 'beams': beams, 'beam_first_call_s': beam_first,
      'beam_search_ms': 1e3 * beam_warm, 'beam_step_ms': 1e3 * beam_warm / steps,
      'beam_items_distinct': distinct,
      'generate_tokens': _NEW_TOKENS.value, 'generate_ms_per_token': 1e3 * gen_warm /
      _NEW_TOKENS.value,
      'device': jax.devices()[0].platform,
  }
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
