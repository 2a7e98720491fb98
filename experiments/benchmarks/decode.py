"""Constrained decoding at catalog scale: trie size, build and update time, beam-search step
times (constrained vs unconstrained), latency, throughput and validity, through the real decoder,
for one or several model presets.

  python -m experiments.benchmarks.decode --num_items=10000000
  python -m experiments.benchmarks.decode --num_items=1000000 --presets=tiny,smollm2-135m

The catalog is `num_items` random SIDs of one type: `levels` random codes of K=`k` each plus a
disambiguation level (an item's rank among the items with the same codes), as the SID map
builds it (so 3 x 256 + 1 = 4 levels by default). The trie is built from all but
`add_items` of them with room for the whole catalog (`SIDTrie.build(..., capacity=num_items)`),
and the rest are then added in place (`add_items`, timed), so every figure below is measured
on the grown trie. Each model preset has random weights (fine for timing, not for quality) and
the vocabulary `text_vocab` text tokens + the SID block.

Per preset, measured in the same run, after one compile of each program (warm timings, medians):
  * per-step time of beam search (beam `beams`, batch `batch`, the prompt's KV cache already
    computed), the beams reading the prompt's cache in place: constrained with the rows-only LM
    head (score='codes', the served default), the same with a `history`-item exclusion list,
    the same with every beam copying the prompt's cache (the path before shared prompts),
    constrained with the full head (score='vocab'); unconstrained SID decoding with the same
    rows-only head (no trie, `code_beam_search`), and unconstrained full-vocabulary beam search
    (the full head). The constrained / unconstrained ratios compare the same head
    (`constrained_over_unconstrained_step_time`: rows-only head both;
    `constrained_full_head_over_unconstrained_step_time`: full head both), so they measure what
    the trie costs, not what restricting the head saves;
  * the served path (`NEORanker.rank_tokens`, its default score and length buckets, the
    request's exclusion list built per request): latency p50/p99 at batch 1 (prompt + search,
    answers on the host) and throughput at batch `throughput_batch` (requests per second), in
    float32 and with dtype='bfloat16' (each with the ranker's default `unroll_layers`: on a CPU
    bfloat16 runs its layers unrolled), and the batch-1 latency of float32 unrolled;
    `latency_ms_p50_served` is the one of the precision the run layer serves in by default
    (`eval.dtype` 'auto': bfloat16 on a CPU, `served_dtype`);
  * valid fraction: constrained items / generated SID spans checked against the catalog in
    numpy, and unconstrained beams' token sequences checked the same way;
  * interleaved generation (ids format, sampled codes) per token: constrained with the
    rows-only head inside spans, constrained with the full head, unconstrained (no masks), and
    the valid fraction of the spans each produced;
  * a catalog update (removal of the items just returned) and a check that none comes back.
The first preset's figures have plain keys (`constrained_over_unconstrained_step_time`, ...);
every other preset's the same keys prefixed with `<preset>.`. Per-preset settings
(`--preset_settings=smollm2-135m:batch=8`) override the flags for that preset; the defaults
in PRESET_DEFAULTS keep smollm2-135m finishing on a 2-core CPU.
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

from neo_jax.run import rundir
from neo_jax.decode.beam_search import code_beam_search, sid_beam_search, vocab_beam_search
from neo_jax.decode.cache import left_pad
from neo_jax.decode.generate import GenerateSettings, generate
from neo_jax.decode.interface import Constraints, prefill
from neo_jax.decode.ranker import NEORanker, serving_dtype
from neo_jax.decode.trie import (SIDTrie, SIDVocabArrays, build_trie_arrays, lookup_items,
                                 request_filter)
from neo_jax.model.config import get_config
from neo_jax.model.decoder import Decoder
from neo_jax.sid.types import SIDMap
from neo_jax.tokenizer.sid_vocab import SIDVocab

_NUM_ITEMS = flags.DEFINE_integer('num_items', 1_000_000, 'catalog size')
_LEVELS = flags.DEFINE_integer('levels', 3, 'random code levels (a disambiguation level is added)')
_K = flags.DEFINE_integer('k', 256, 'codes per random level')
_PRESETS = flags.DEFINE_list('presets', ['tiny'], 'model presets (random weights)')
_PRESET_SETTINGS = flags.DEFINE_list(
    'preset_settings', [], 'per-preset overrides PRESET:NAME=VALUE of text_vocab, beams, batch, '
    'prompt_len, latency_requests, history, runs, gen_batch, throughput_batch')
_ADD_ITEMS = flags.DEFINE_integer('add_items', 10_000, 'items added in place after the build')
_TEXT_VOCAB = flags.DEFINE_integer('text_vocab', 32_000, 'text tokens before the SID block')
_BEAMS = flags.DEFINE_integer('beams', 30, 'beam width')
_BATCH = flags.DEFINE_integer('batch', 64, 'requests per batch for step times and throughput')
_PROMPT_LEN = flags.DEFINE_integer('prompt_len', 32, 'prompt tokens (random text ids + [SID])')
_LATENCY_REQUESTS = flags.DEFINE_integer('latency_requests', 40, 'batch-1 requests timed')
_HISTORY = flags.DEFINE_integer('history', 50, 'excluded items per request (its "history")')
_RUNS = flags.DEFINE_integer('runs', 3, 'timed warm runs per measurement')
_GEN_BATCH = flags.DEFINE_integer('gen_batch', 8, 'requests per batch of interleaved generation')
_THROUGHPUT_BATCH = flags.DEFINE_integer('throughput_batch', 64,
                                         'requests per batch of the served throughput')

# Settings that keep a preset finishing on a loaded 2-core CPU (flags and --preset_settings
# override them): the real SmolLM2 vocabulary, and fewer requests per batch.
PRESET_DEFAULTS = {
    'smollm2-135m': dict(text_vocab=49152, batch=8, latency_requests=10, gen_batch=4),
}
_SETTINGS = ('text_vocab', 'beams', 'batch', 'prompt_len', 'latency_requests', 'history', 'runs',
             'gen_batch', 'throughput_batch')
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


def settings_for(preset: str) -> dict:
  """This preset's settings: --preset_settings, then flags given on the command line, then
  PRESET_DEFAULTS, then the flags' defaults."""
  out = {}
  for name in _SETTINGS:
    flag = flags.FLAGS[name]
    out[name] = flag.value if flag.present else PRESET_DEFAULTS.get(preset, {}).get(
        name, flag.value)
  for entry in _PRESET_SETTINGS.value:
    target, _, assignment = entry.partition(':')
    name, _, value = assignment.partition('=')
    if not (target and name in _SETTINGS and value):
      raise ValueError(f'--preset_settings entry {entry!r} is not PRESET:NAME=VALUE with NAME in '
                       f'{_SETTINGS}')
    if target == preset:
      out[name] = int(value)
  return out


def spans_of(tokens_BxM: np.ndarray, lengths_B: np.ndarray, open_id: int, num_levels: int):
  """The L tokens after each `[SID]` of each row (spans cut by the end are left out)."""
  spans = []
  for row, length in zip(tokens_BxM, lengths_B):
    row = row[:length].tolist()
    for i, tok in enumerate(row):
      if tok == open_id and i + num_levels < len(row):
        spans.append(row[i + 1:i + 1 + num_levels])
  return spans


class TokenIds:
  """The tokenizer of a ranker whose requests arrive as token ids (the random prompts here):
  the SID block and the special ids; text is never encoded (`NEORanker.rank_tokens`)."""

  pad_id, bos_id, eos_id = 0, 1, 2

  def __init__(self, vocab: SIDVocab):
    self.sid = vocab

  def encode(self, text: str):
    raise NotImplementedError('benchmark requests are token ids (NEORanker.rank_tokens)')

  encode_text = decode = encode


def _step_times(preset, settings, graphdef, state, vocab, trie, prompts_of, history_filter):
  """Per-step times of every search mode at batch `batch` (the prompt cache computed once),
  and each mode's outputs."""
  beams, batch, runs = settings['beams'], settings['batch'], settings['runs']
  num_levels = vocab.num_levels
  vocab_arrays = SIDVocabArrays.from_vocab(vocab)
  sizes = tuple(vocab.level_sizes[vocab.type_names[0]])

  @jax.jit
  def prompt_fn(state, tokens, positions, valid):
    model = nnx.merge(graphdef, state)
    cache = model.init_cache(tokens.shape[0], tokens.shape[1] + num_levels)
    return prefill(model, cache, tokens, positions, valid)

  @functools.partial(jax.jit, static_argnames='mode')
  def search_fn(state, cache, pre, trie, request, mode):
    model = nnx.merge(graphdef, state)
    if mode == 'unconstrained':  # full-vocabulary beam search, the usual baseline
      return vocab_beam_search(model, cache, pre, beams, num_levels)
    if mode == 'unconstrained_rows':  # SID codes without a trie, the rows-only head
      return code_beam_search(model, cache, pre, vocab_arrays.offsets_TxL[0], sizes, beams,
                              score='codes')
    constraints = Constraints(trie=trie, vocab=vocab_arrays, request=request)
    # 'rows': level-normalised scores from the code rows of the LM head only (the served
    # default); 'full': the full-softmax scores, every row at every level; 'rows_copied': as
    # 'rows' with each beam copying the prompt's cache (the path before shared prompts).
    return sid_beam_search(model, cache, pre, constraints, beams,
                           score='vocab' if mode == 'full' else 'codes',
                           shared_prompt=mode != 'rows_copied')

  tokens, positions, valid = prompts_of(batch)
  pre, cache = jax.block_until_ready(prompt_fn(state, tokens, positions, valid))
  hist, request = history_filter(batch, trie)
  step_ms, outputs = {}, {}
  for mode in ('rows', 'rows_copied', 'full', 'unconstrained_rows', 'unconstrained'):
    for filt in ((None, request) if mode == 'rows' else (None,)):
      name = mode + ('_filtered' if filt is not None else '')
      fn = functools.partial(search_fn, state, cache, pre, trie, filt, mode)
      first, warm = timed(fn, runs)
      step_ms[name] = 1e3 * float(np.median(warm)) / num_levels
      outputs[name] = jax.tree.map(np.asarray, fn())
      print(f'[{preset}] beam search {name}: B={batch} K={beams} {step_ms[name]:.2f} ms/step '
            f'(first call {first:.1f}s)', flush=True)
  same = step_ms['rows'] / step_ms['unconstrained_rows']
  full = step_ms['full'] / step_ms['unconstrained']
  print(f'[{preset}] constrained / unconstrained step time, same head: rows-only head {same:.3f}'
        f' (with exclusions {step_ms["rows_filtered"] / step_ms["unconstrained_rows"]:.3f}), '
        f'full head {full:.3f}; shared prompt cache / copied per beam '
        f'{step_ms["rows"] / step_ms["rows_copied"]:.3f}', flush=True)
  return step_ms, outputs, hist, (search_fn, cache, pre, request)


def _served_latency(preset, settings, model, vocab, trie, prompts_ids, n, dtype, unroll=None,
                    throughput=True):
  """Batch-1 latency (p50, p99 ms) and batch-`throughput_batch` requests/s (None unless
  `throughput`) of the served path (`NEORanker.rank_tokens`: bucketing, the request filter, the
  jitted prefill + search, the answers on the host), with a `history`-item exclusion list per
  request; unroll: the ranker's `unroll_layers` (None: its default for the dtype)."""
  beams, history = settings['beams'], settings['history']
  rng = np.random.default_rng(4)
  ranker = NEORanker(model, TokenIds(vocab), trie, prompt_len=settings['prompt_len'],
                     batch_size=1, dtype=dtype, unroll_layers=unroll)
  lat = []
  for i in range(settings['latency_requests'] + 1):
    prompt, hist = prompts_ids(1), rng.integers(0, n, (1, history)).tolist()
    t0 = time.perf_counter()
    ranker.rank_tokens(prompt, [None], beams, excluded=hist)
    if i:  # the first includes compiling
      lat.append(time.perf_counter() - t0)
  p50, p99 = (1e3 * float(np.percentile(lat, q)) for q in (50, 99))
  layers = 'layers unrolled' if ranker.unroll_layers else 'layers scanned'
  if not throughput:
    print(f'[{preset}] served path ({dtype or "float32"}, {layers}, score {ranker.score}): '
          f'latency at batch 1 (K={beams}) p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(lat)} '
          f'requests', flush=True)
    return p50, p99, len(lat), None, ranker.score
  b = settings['throughput_batch']
  ranker = NEORanker(model, TokenIds(vocab), trie, prompt_len=settings['prompt_len'],
                     batch_size=b, dtype=dtype, unroll_layers=unroll)
  prompts, hists = prompts_ids(b), rng.integers(0, n, (b, history)).tolist()
  _, warm = timed(lambda: ranker.rank_tokens(prompts, [None] * b, beams, excluded=hists),
                  settings['runs'])
  throughput = b / float(np.median(warm))
  print(f'[{preset}] served path ({dtype or "float32"}, {layers}, score {ranker.score}): '
        f'latency at batch 1 (K={beams}) p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(lat)} requests; '
        f'throughput at batch {b}: {throughput:.2f} requests/s', flush=True)
  return p50, p99, len(lat), throughput, ranker.score


def _generation(preset, settings, graphdef, state, vocab, trie, keys, prompts_of):
  """Interleaved generation, ids format, sampled codes: rows-only head inside spans, full
  head, and no constraints at all. The prompt ends with text, so the model opens the spans."""
  num_levels, runs = vocab.num_levels, settings['runs']
  vocab_arrays = SIDVocabArrays.from_vocab(vocab)
  gen_b = settings['gen_batch']
  g_tokens, g_positions, g_valid = prompts_of(gen_b)
  g_tokens = g_tokens.at[:, -1].set(1)
  max_new = 4 * (num_levels + 2)

  @functools.partial(jax.jit, static_argnames='mode')
  def gen_fn(state, tokens, positions, valid, trie, mode):
    model = nnx.merge(graphdef, state)
    cache = model.init_cache(tokens.shape[0], tokens.shape[1] + max_new)
    pre, cache = prefill(model, cache, tokens, positions, valid)
    settings = GenerateSettings(max_new_tokens=max_new, eos_id=2, pad_id=0, output_format='ids',
                                separator_ids=(3,), rows_head=mode == 'rows',
                                constrained=mode != 'unconstrained')
    return generate(model, cache, pre, Constraints(trie=trie, vocab=vocab_arrays), settings,
                    temperature=1.0, sample_codes=True, rng=jax.random.key(0))

  gen = {}
  for mode in ('rows', 'full', 'unconstrained'):
    fn = functools.partial(gen_fn, state, g_tokens, g_positions, g_valid, trie, mode)
    _, warm = timed(lambda: fn().tokens, runs)
    out = jax.tree.map(np.asarray, fn())
    steps = int(out.steps)
    spans = spans_of(out.tokens, out.lengths, vocab.sid_open_id, num_levels)
    ok = keys.contains(token_codes(vocab, np.array(spans, np.int64).reshape(-1, num_levels)))
    gen[mode] = dict(ms=1e3 * float(np.median(warm)) / max(steps, 1), steps=steps,
                     spans=len(spans), valid=float(np.mean(ok)) if spans else None,
                     rows_only=None if out.rows_only_steps is None else int(out.rows_only_steps))
    print(f'[{preset}] generate {mode} (ids, sampled codes) B={gen_b}: '
          f'{gen[mode]["ms"]:.2f} ms/token over {steps} steps'
          + ('' if gen[mode]['rows_only'] is None else
             f' ({gen[mode]["rows_only"]} of them rows-only)')
          + f'; {len(spans)} complete spans, valid fraction {gen[mode]["valid"]}', flush=True)
  return {
      'valid_fraction_generated': gen['rows']['valid'], 'generated_spans': gen['rows']['spans'],
      'valid_fraction_generated_unconstrained': gen['unconstrained']['valid'],
      'generated_spans_unconstrained': gen['unconstrained']['spans'],
      'generate_batch': gen_b,
      **{f'generate_ms_per_token_{k}': v['ms'] for k, v in gen.items()},
      'generate_rows_only_steps': gen['rows']['rows_only'], 'generate_steps': gen['rows']['steps'],
      'generate_constrained_over_unconstrained_token_time':
          gen['rows']['ms'] / gen['unconstrained']['ms'],
  }


def run_preset(preset: str, settings: dict, sid_map: SIDMap, trie: SIDTrie,
               keys: CatalogKeys) -> dict:
  """Every per-model figure of the module docstring for one preset."""
  n = len(sid_map)
  beams, batch = settings['beams'], settings['batch']
  prompt_len, history = settings['prompt_len'], settings['history']
  text_vocab = settings['text_vocab']
  sizes = sid_map.level_sizes['item']
  vocab = SIDVocab(('item',), sid_map.level_sizes, text_vocab)
  num_levels = vocab.num_levels
  cfg = get_config(preset, vocab_size=vocab.end)
  model = Decoder(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  print(f'[{preset}] d_model {cfg.d_model}, {cfg.num_layers} layers, vocabulary '
        f'{cfg.vocab_size} ({text_vocab} text + {vocab.size} SID); settings {settings}',
        flush=True)
  rng = np.random.default_rng(1)

  def prompts_ids(b):
    return [[int(t) for t in rng.integers(3, text_vocab, prompt_len - 1)] + [vocab.sid_open_id]
            for _ in range(b)]

  def prompts_of(b):
    return tuple(jnp.asarray(x) for x in left_pad(prompts_ids(b), 0))

  def history_filter(b, trie_now):
    hist = rng.integers(0, n, (b, history))
    return hist, request_filter(trie_now, excluded=hist.tolist(), width=history)

  step_ms, outputs, hist, (search_fn, cache, pre, request) = _step_times(
      preset, settings, graphdef, state, vocab, trie, prompts_of, history_filter)

  # Validity, checked in numpy against the catalog.
  items, _ = outputs['rows_filtered']
  got = items[items >= 0]
  item_ok = keys.contains(np.asarray(sid_map.codes)[got])
  not_excluded = np.concatenate([~np.isin(r[r >= 0], h) for r, h in zip(items, hist)])
  distinct = all(len(set(r[r >= 0].tolist())) == int((r >= 0).sum()) for r in items)
  valid_constrained = float(np.mean(item_ok & not_excluded))
  unc_tokens, _ = outputs['unconstrained']
  valid_unconstrained = float(np.mean(keys.contains(
      token_codes(vocab, unc_tokens.reshape(-1, num_levels)))))
  print(f'[{preset}] valid fraction: constrained {valid_constrained:.4f} of {got.size} items '
        f'(distinct per request: {distinct}, {int((items < 0).sum())} empty slots); '
        f'unconstrained {valid_unconstrained:.6f} of {unc_tokens.shape[0] * beams} beams',
        flush=True)

  gen = _generation(preset, settings, graphdef, state, vocab, trie, keys, prompts_of)
  p50, p99, num_lat, throughput, served_score = _served_latency(preset, settings, model, vocab, trie,
                                                  prompts_ids, n, None)
  p50_bf16, p99_bf16, _, throughput_bf16, _ = _served_latency(preset, settings, model, vocab, trie,
                                                           prompts_ids, n, 'bfloat16')
  served_bf16 = serving_dtype('auto') == 'bfloat16'
  # float32 with the layers unrolled as bfloat16 is served on a CPU (ranker.default_unroll_layers).
  p50_unrolled, _, _, _, _ = _served_latency(preset, settings, model, vocab, trie, prompts_ids, n,
                                             None, unroll=True, throughput=False)

  # Catalog update: remove every item just returned; none may come back.
  removed = np.unique(got)
  jax.block_until_ready(trie.set_live(removed, True))  # compiles the update (a no-op here)
  t0 = time.perf_counter()
  trie2 = jax.block_until_ready(trie.set_live(removed, False))
  update_s = time.perf_counter() - t0
  request2 = request_filter(trie2, excluded=hist.tolist(), width=history)
  items2, _ = jax.tree.map(np.asarray, search_fn(state, cache, pre, trie2, request2, 'rows'))
  returned_removed = int(np.isin(items2[items2 >= 0], removed).sum())
  print(f'[{preset}] catalog update: removed {removed.size} items in {1e3 * update_s:.1f} ms; '
        f'removed items returned afterwards: {returned_removed} (of '
        f'{int((items2 >= 0).sum())})', flush=True)
  return {
      'level_sizes': list(sizes), 'vocab_size': int(cfg.vocab_size), 'preset': preset,
      'beams': beams, 'batch': batch, 'prompt_len': prompt_len, 'runs': settings['runs'],
      'constrained_over_unconstrained_step_time': step_ms['rows'] / step_ms['unconstrained_rows'],
      'constrained_filtered_over_unconstrained_step_time':
          step_ms['rows_filtered'] / step_ms['unconstrained_rows'],
      'constrained_full_head_over_unconstrained_step_time':
          step_ms['full'] / step_ms['unconstrained'],
      'constrained_rows_head_over_unconstrained_full_head_step_time':
          step_ms['rows'] / step_ms['unconstrained'],
      'shared_prompt_over_copied_prompt_step_time': step_ms['rows'] / step_ms['rows_copied'],
      **{f'step_ms_{k}': v for k, v in step_ms.items()},
      'valid_fraction': valid_constrained, 'valid_fraction_unconstrained': valid_unconstrained,
      'items_distinct_per_request': distinct,
      **gen,
      'served_score': served_score, 'latency_ms_p50': p50, 'latency_ms_p99': p99,
      'latency_requests': num_lat, 'throughput_batch': settings['throughput_batch'],
      'throughput_requests_per_s': throughput,
      'latency_ms_p50_bf16': p50_bf16, 'latency_ms_p99_bf16': p99_bf16,
      'throughput_requests_per_s_bf16': throughput_bf16,
      'latency_ms_p50_float32_unrolled': p50_unrolled,
      # What the run layer serves in by default (eval.dtype 'auto'): bfloat16 on a CPU.
      'served_dtype': 'bfloat16' if served_bf16 else 'float32',
      'latency_ms_p50_served': p50_bf16 if served_bf16 else p50,
      'throughput_requests_per_s_served': throughput_bf16 if served_bf16 else throughput,
      'catalog_update_ms': 1e3 * update_s, 'catalog_update_items': int(removed.size),
      'removed_items_returned': returned_removed,
  }


def main(argv):
  del argv
  n = _NUM_ITEMS.value
  presets = list(_PRESETS.value)
  settings = {p: settings_for(p) for p in presets}  # bad settings fail before the long build
  t0 = time.perf_counter()
  sid_map = random_sid_map(n, _LEVELS.value, _K.value)
  sizes = sid_map.level_sizes['item']
  vocab = SIDVocab(('item',), sid_map.level_sizes, _TEXT_VOCAB.value)
  print(f'{n} random items, level sizes {sizes} (made in {time.perf_counter() - t0:.1f}s)',
        flush=True)
  # The build leaves out `add_items` random rows, added in place afterwards.
  m = min(_ADD_ITEMS.value, n - 1)
  late = np.sort(np.random.default_rng(2).choice(n, m, replace=False))
  codes = np.array(sid_map.codes)
  codes[late] = -1
  partial = SIDMap(sid_map.type_names, sid_map.level_sizes, codes, sid_map.type_index)

  t0 = time.perf_counter()
  arrays = build_trie_arrays(partial, vocab)
  numpy_build_s = time.perf_counter() - t0
  del arrays
  t0 = time.perf_counter()
  trie = jax.block_until_ready(SIDTrie.build(partial, vocab, capacity=n))
  build_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  trie = jax.block_until_ready(trie.add_items(late, np.asarray(sid_map.codes)[late]))
  add_s = time.perf_counter() - t0
  del partial, codes
  print(f'trie: {trie.nbytes / 2**20:.1f} MiB = {trie.nbytes / n:.2f} bytes/item; build of '
        f'{n - m} items {numpy_build_s:.2f}s (numpy structure) / {build_s:.2f}s (with capacity '
        f'{n}, liveness arrays and transfer); {m} items added in place in {add_s:.2f}s; node '
        f'rows per level {[int(b.shape[0]) for b in trie.bitmaps]}', flush=True)
  keys = CatalogKeys(sid_map)
  # The grown trie must hold exactly the catalog (checked through the decoding masks' lookups).
  sample = np.random.default_rng(3).choice(n, min(n, 100_000), replace=False)
  sample = np.unique(np.r_[sample, late])
  found = lookup_items(trie, np.zeros(sample.size, np.int64), np.asarray(sid_map.codes)[sample])
  if not (found == sample).all() or trie.num_leaves != n:
    raise RuntimeError('the grown trie does not hold the catalog')

  result = {
      'num_items': n, 'presets': presets,
      'device': f'{jax.devices()[0].platform}:{jax.devices()[0].device_kind}',
      'trie_bytes': trie.nbytes, 'trie_bytes_per_item': trie.nbytes / n,
      'trie_build_seconds': build_s, 'trie_numpy_build_seconds': numpy_build_s,
      'trie_build_seconds_per_1m_items': build_s * 1e6 / (n - m),
      'trie_items_added': m, 'trie_add_seconds': add_s,
  }
  for i, preset in enumerate(presets):
    figures = run_preset(preset, settings[preset], sid_map, trie, keys)
    result.update(figures if i == 0 else {f'{preset}.{k}': v for k, v in figures.items()})
  if _WORKDIR.value:
    rundir.write_result(_WORKDIR.value, result)
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
