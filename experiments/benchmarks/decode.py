"""Constrained decoding at catalog scale: trie size and build time, beam-search step times
(constrained vs unconstrained), latency, throughput and validity, through the real decoder.

  python -m experiments.benchmarks.decode --num_items=10000000

The catalog is `num_items` random SIDs of one type: `levels` random codes of K=`k` each plus a
disambiguation level (an item's rank among the items with the same codes), as the SID map
builds it (so 3 x 256 + 1 = 4 levels by default). The model is a preset (`tiny` by default)
with random weights and the vocabulary `text_vocab` text tokens + the SID block; random weights
are fine for timing, not for quality.

Measured in the same run, after one compile of each program (warm timings, medians):
  * trie bytes per item and build seconds (numpy build + transfer);
  * per-step time of beam search (beam `beams`, batch `batch`, the prompt's KV cache already
    computed): constrained with the rows-only LM head (score='codes'), constrained with the full
    head (score='vocab'), and unconstrained full-vocabulary beam search; their ratios;
  * per-request latency p50/p99 at batch 1 (prompt + constrained search), and throughput at
    batch `batch` (requests per second), both with a 50-item exclusion list per request;
  * valid fraction: constrained items / generated SID spans checked against the catalog in
    numpy, and unconstrained beams' token sequences checked the same way;
  * a catalog update (removal of the items just returned) and a check that none comes back.
Prints progress lines; the last line is the JSON result (also --workdir/result.json if given).
"""

from __future__ import annotations

import functools
import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import report
from neo_jax.decode.beam_search import sid_beam_search, vocab_beam_search
from neo_jax.decode.cache import left_pad
from neo_jax.decode.generate import generate
from neo_jax.decode.trie import SIDTrie, SIDVocabArrays, build_trie_arrays, request_filter
from neo_jax.model.config import get_config
from neo_jax.model.decoder import Decoder
from neo_jax.sid.types import SIDMap
from neo_jax.tokenizer.sid_vocab import SIDVocab

_NUM_ITEMS = flags.DEFINE_integer('num_items', 1_000_000, 'catalog size')
_LEVELS = flags.DEFINE_integer('levels', 3, 'random code levels (a disambiguation level is added)')
_K = flags.DEFINE_integer('k', 256, 'codes per random level')
_PRESET = flags.DEFINE_string('preset', 'tiny', 'model preset (random weights)')
_TEXT_VOCAB = flags.DEFINE_integer('text_vocab', 32_000, 'text tokens before the SID block')
_BEAMS = flags.DEFINE_integer('beams', 30, 'beam width')
_BATCH = flags.DEFINE_integer('batch', 64, 'requests per batch for step times and throughput')
_PROMPT_LEN = flags.DEFINE_integer('prompt_len', 32, 'prompt tokens (random text ids + [SID])')
_LATENCY_REQUESTS = flags.DEFINE_integer('latency_requests', 40, 'batch-1 requests timed')
_HISTORY = flags.DEFINE_integer('history', 50, 'excluded items per request (its "history")')
_RUNS = flags.DEFINE_integer('runs', 3, 'timed warm runs per measurement')
_WORKDIR = flags.DEFINE_string('workdir', None, 'optional: write result.json here')


def random_sid_map(n: int, levels: int, k: int, seed: int = 0) -> SIDMap:
  """n random SIDs of one type: `levels` uniform codes in [0, k) plus a disambiguation code."""
  rng = np.random.default_rng(seed)
  codes = rng.integers(0, k, (n, levels), dtype=np.int32)
  key = np.zeros(n, np.int64)
  for l in range(levels):
    key = key * k + codes[:, l]
  order = np.argsort(key, kind='stable')
  sorted_key = key[order]
  del key
  group_start = np.r_[True, sorted_key[1:] != sorted_key[:-1]]
  start_of = np.maximum.accumulate(np.where(group_start, np.arange(n), 0))
  rank = np.empty(n, np.int32)
  rank[order] = np.arange(n) - start_of
  sizes = (k,) * levels + (int(rank.max()) + 1,)
  return SIDMap(('item',), {'item': sizes}, np.c_[codes, rank].astype(np.int32),
                np.zeros(n, np.int32))


class CatalogKeys:
  """Independent validity check: an SID (tuple of codes) is valid iff it is a catalog row's."""

  def __init__(self, sid_map: SIDMap):
    self.sizes = np.array(sid_map.level_sizes[sid_map.type_names[0]], np.int64)
    self.keys = np.sort(self.key(np.asarray(sid_map.codes, np.int64)))

  def key(self, codes_NxL: np.ndarray) -> np.ndarray:
    key = np.zeros(codes_NxL.shape[0], np.int64)
    for l, size in enumerate(self.sizes):
      key = key * size + codes_NxL[:, l]
    return key

  def contains(self, codes_NxL: np.ndarray) -> np.ndarray:
    ok = np.all((codes_NxL >= 0) & (codes_NxL < self.sizes), axis=1)
    key = self.key(np.where(ok[:, None], codes_NxL, 0))
    pos = np.minimum(np.searchsorted(self.keys, key), self.keys.size - 1)
    return ok & (self.keys[pos] == key)


def token_codes(vocab: SIDVocab, tokens_NxL: np.ndarray) -> np.ndarray:
  """Token ids read as level-l codes of type 0 (-1 where a token is not that level's code)."""
  offsets = np.asarray(vocab.offsets_TxL)[0]
  sizes = np.array(vocab.level_sizes[vocab.type_names[0]])
  codes = tokens_NxL - offsets[None, :]
  return np.where((codes >= 0) & (codes < sizes[None, :]), codes, -1)


def timed(fn, runs: int) -> tuple[float, list[float]]:
  """(first call seconds, warm seconds per run); results blocked on."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  warm = []
  for _ in range(runs):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    warm.append(time.perf_counter() - t0)
  return first, warm


def main(argv):
  del argv
  n, beams, batch = _NUM_ITEMS.value, _BEAMS.value, _BATCH.value
  t0 = time.perf_counter()
  sid_map = random_sid_map(n, _LEVELS.value, _K.value)
  sizes = sid_map.level_sizes['item']
  vocab = SIDVocab(('item',), sid_map.level_sizes, _TEXT_VOCAB.value)
  num_levels = vocab.num_levels
  print(f'{n} random items, level sizes {sizes}, vocabulary {vocab.end} '
        f'(made in {time.perf_counter() - t0:.1f}s)', flush=True)

  t0 = time.perf_counter()
  arrays = build_trie_arrays(sid_map, vocab)
  numpy_build_s = time.perf_counter() - t0
  del arrays
  t0 = time.perf_counter()
  trie = jax.block_until_ready(SIDTrie.build(sid_map, vocab))
  build_s = time.perf_counter() - t0
  print(f'trie: {trie.nbytes / 2**20:.1f} MiB = {trie.nbytes / n:.2f} bytes/item; build '
        f'{numpy_build_s:.2f}s (numpy structure) / {build_s:.2f}s (with liveness arrays and '
        f'transfer); nodes per level {[int(b.shape[0]) for b in trie.bitmaps]}', flush=True)
  vocab_arrays = SIDVocabArrays.from_vocab(vocab)
  keys = CatalogKeys(sid_map)

  cfg = get_config(_PRESET.value, vocab_size=vocab.end)
  model = Decoder(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  print(f'model {_PRESET.value}: d_model {cfg.d_model}, {cfg.num_layers} layers, vocabulary '
        f'{cfg.vocab_size}', flush=True)
  rng = np.random.default_rng(1)

  def prompts_of(b):
    ps = [list(rng.integers(3, _TEXT_VOCAB.value, _PROMPT_LEN.value - 1)) + [vocab.sid_open_id]
          for _ in range(b)]
    return tuple(jnp.asarray(x) for x in left_pad(ps, 0))

  def history_filter(b, trie_now):
    hist = rng.integers(0, n, (b, _HISTORY.value))
    return hist, request_filter(trie_now, excluded=hist.tolist(), width=_HISTORY.value)

  @jax.jit
  def prompt_fn(state, tokens, positions, valid):
    model = nnx.merge(graphdef, state)
    cache = model.init_cache(tokens.shape[0], tokens.shape[1] + num_levels)
    h, cache = model.decode_hidden(tokens, positions, cache, valid)
    return model.logits_from_hidden(h[:, -1]), positions[:, -1], cache

  @functools.partial(jax.jit, static_argnames='mode')
  def search_fn(state, cache, last_logits, last_pos, trie, request, mode):
    model = nnx.merge(graphdef, state)

    def step_fn(tokens, positions, cache, valid):
      return model.decode(tokens, positions, cache, valid)

    def row_step_fn(tokens, positions, cache, valid, rows):
      h, cache = model.decode_hidden(tokens, positions, cache, valid)
      return model.logits_from_hidden(h, rows), cache

    if mode == 'unconstrained':
      return vocab_beam_search(step_fn, cache, last_logits, last_pos, beams, num_levels)
    if mode == 'rows':
      return sid_beam_search(None, cache, last_logits, last_pos, trie, vocab_arrays, beams,
                             request=request, score='codes', row_step_fn=row_step_fn)
    return sid_beam_search(step_fn, cache, last_logits, last_pos, trie, vocab_arrays, beams,
                           request=request, score='vocab')

  # Step times at batch B, the prompt's cache computed once beforehand.
  tokens, positions, valid = prompts_of(batch)
  last_logits, last_pos, cache = jax.block_until_ready(prompt_fn(state, tokens, positions, valid))
  hist, request = history_filter(batch, trie)
  step_ms, first_s, outputs = {}, {}, {}
  for mode in ('rows', 'full', 'unconstrained'):
    for filt in ((None, request) if mode != 'unconstrained' else (None,)):
      name = mode + ('_filtered' if filt is not None else '')
      fn = functools.partial(search_fn, state, cache, last_logits, last_pos, trie, filt, mode)
      first, warm = timed(fn, _RUNS.value)
      step_ms[name] = 1e3 * float(np.median(warm)) / num_levels
      first_s[name] = first
      outputs[name] = jax.tree.map(np.asarray, fn())
      print(f'beam search {name}: B={batch} K={beams} {step_ms[name]:.2f} ms/step '
            f'(first call {first:.1f}s)', flush=True)
  ratio = step_ms['rows'] / step_ms['unconstrained']
  print(f'constrained (rows-only head) / unconstrained step time: {ratio:.3f}; with exclusions '
        f'{step_ms["rows_filtered"] / step_ms["unconstrained"]:.3f}; constrained full head / '
        f'unconstrained {step_ms["full"] / step_ms["unconstrained"]:.3f}', flush=True)

  # Validity, checked in numpy against the catalog.
  items, _ = outputs['rows_filtered']
  got = items[items >= 0]
  codes = np.asarray(sid_map.codes)[got]
  item_ok = keys.contains(codes)
  not_excluded = np.concatenate([~np.isin(r[r >= 0], h) for r, h in zip(items, hist)])
  distinct = all(len(set(r[r >= 0].tolist())) == int((r >= 0).sum()) for r in items)
  valid_constrained = float(np.mean(item_ok & not_excluded))
  unc_tokens, _ = outputs['unconstrained']
  valid_unconstrained = float(np.mean(keys.contains(
      token_codes(vocab, unc_tokens.reshape(-1, num_levels)))))
  print(f'valid fraction: constrained {valid_constrained:.4f} of {got.size} items (distinct per '
        f'request: {distinct}, {int((items < 0).sum())} empty slots); unconstrained '
        f'{valid_unconstrained:.6f} of {unc_tokens.shape[0] * beams} beams', flush=True)

  # Interleaved generation, ids format: parse the spans of the tokens and check them.
  gen_b = 8
  g_tokens, g_positions, g_valid = prompts_of(gen_b)
  g_tokens = g_tokens.at[:, -1].set(1)  # end the prompt with text, the model opens spans
  max_new = 4 * (num_levels + 2)

  @jax.jit
  def gen_fn(state, tokens, positions, valid, trie):
    model = nnx.merge(graphdef, state)
    cache = model.init_cache(tokens.shape[0], tokens.shape[1] + max_new)

    def step_fn(tokens, positions, cache, valid):
      return model.decode(tokens, positions, cache, valid)

    h, cache = model.decode_hidden(tokens, positions, cache, valid)
    return generate(step_fn, cache, model.logits_from_hidden(h[:, -1]), positions[:, -1], trie,
                    vocab_arrays, max_new_tokens=max_new, eos_id=2, pad_id=0,
                    output_format='ids', separator_ids=(3,), temperature=1.0,
                    sample_codes=True, rng=jax.random.key(0))

  _, gen_warm = timed(lambda: gen_fn(state, g_tokens, g_positions, g_valid, trie).tokens, 1)
  gen_out = jax.tree.map(np.asarray, gen_fn(state, g_tokens, g_positions, g_valid, trie))
  spans = []
  for row, length in zip(gen_out.tokens, gen_out.lengths):
    row = row[:length].tolist()
    for i, tok in enumerate(row):
      if tok == vocab.sid_open_id and i + num_levels < len(row):
        spans.append(row[i + 1:i + 1 + num_levels])
  span_ok = keys.contains(token_codes(vocab, np.array(spans).reshape(-1, num_levels)))
  valid_generated = float(np.mean(span_ok)) if spans else float('nan')
  print(f'generate (ids, sampled codes) B={gen_b}, {max_new} tokens: '
        f'{1e3 * float(np.median(gen_warm)) / max_new:.2f} ms/token; {len(spans)} complete '
        f'spans, valid fraction {valid_generated:.4f}', flush=True)

  # Latency at batch 1 (prompt + constrained rows-only search with a history filter) and
  # throughput at batch B.
  lat = []
  for i in range(_LATENCY_REQUESTS.value + 1):
    tok1, pos1, val1 = prompts_of(1)
    _, req1 = history_filter(1, trie)
    t0 = time.perf_counter()
    ll, lp, c1 = prompt_fn(state, tok1, pos1, val1)
    jax.block_until_ready(search_fn(state, c1, ll, lp, trie, req1, 'rows'))
    if i:  # the first includes compiling
      lat.append(time.perf_counter() - t0)
  p50, p99 = (1e3 * float(np.percentile(lat, q)) for q in (50, 99))

  def batch_request():
    ll, lp, c = prompt_fn(state, tokens, positions, valid)
    return search_fn(state, c, ll, lp, trie, request, 'rows')

  _, thr_warm = timed(batch_request, _RUNS.value)
  throughput = batch / float(np.median(thr_warm))
  print(f'latency at batch 1 (K={beams}): p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(lat)} '
        f'requests; throughput at batch {batch}: {throughput:.1f} requests/s', flush=True)

  # Catalog update: remove every item just returned; none may come back.
  removed = np.unique(got)
  jax.block_until_ready(trie.set_live(removed, True))  # compiles the update (a no-op here)
  t0 = time.perf_counter()
  trie2 = jax.block_until_ready(trie.set_live(removed, False))
  update_s = time.perf_counter() - t0
  request2 = request_filter(trie2, excluded=hist.tolist(), width=_HISTORY.value)
  items2, _ = jax.tree.map(np.asarray, search_fn(state, cache, last_logits, last_pos, trie2,
                                                 request2, 'rows'))
  returned_removed = int(np.isin(items2[items2 >= 0], removed).sum())
  print(f'catalog update: removed {removed.size} items in {1e3 * update_s:.1f} ms; removed '
        f'items returned afterwards: {returned_removed} (of {int((items2 >= 0).sum())})',
        flush=True)

  result = {
      'num_items': n, 'level_sizes': list(sizes), 'vocab_size': int(cfg.vocab_size),
      'preset': _PRESET.value, 'beams': beams, 'batch': batch, 'prompt_len': _PROMPT_LEN.value,
      'device': f'{jax.devices()[0].platform}:{jax.devices()[0].device_kind}',
      'trie_bytes': trie.nbytes, 'trie_bytes_per_item': trie.nbytes / n,
      'trie_build_seconds': build_s, 'trie_numpy_build_seconds': numpy_build_s,
      'trie_build_seconds_per_1m_items': build_s * 1e6 / n,
      'constrained_over_unconstrained_step_time': ratio,
      'constrained_filtered_over_unconstrained_step_time':
          step_ms['rows_filtered'] / step_ms['unconstrained'],
      'constrained_full_head_over_unconstrained_step_time':
          step_ms['full'] / step_ms['unconstrained'],
      **{f'step_ms_{k}': v for k, v in step_ms.items()},
      'valid_fraction': valid_constrained, 'valid_fraction_generated': valid_generated,
      'generated_spans': len(spans), 'valid_fraction_unconstrained': valid_unconstrained,
      'items_distinct_per_request': distinct,
      'latency_ms_p50': p50, 'latency_ms_p99': p99, 'latency_requests': len(lat),
      'throughput_requests_per_s': throughput,
      'catalog_update_ms': 1e3 * update_s, 'catalog_update_items': int(removed.size),
      'removed_items_returned': returned_removed,
  }
  if _WORKDIR.value:
    report.write_result(_WORKDIR.value, result)
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
