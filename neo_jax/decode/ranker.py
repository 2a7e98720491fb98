"""NEO at inference: prompts in; ranked catalog items (trie-constrained beam search) or
interleaved text and SIDs (constrained generation) out.

The prompt of every request is run once, its KV cache is read in place by the request's beams
(each beam keeps only the keys and values of the codes it decoded: neo_jax/decode/
shared_prompt.py), and the beams decode exactly one SID each.

Batches and compilation. Prompts are left-padded to the smallest of a few length buckets that
holds them (`length_buckets`, default powers of two from 16 up to `prompt_len`, and
`prompt_len`), the requests of one call grouped by bucket, and each batch padded to `batch_size` rows: a new
prompt length or number of requests reuses one of a few compiled programs (one per bucket)
instead of compiling anew, and a short prompt does not pay for the longest one's width. Results come back in the order of the requests.

Scores: score='codes' (the default) computes only the LM-head rows of the current level's codes
inside the SID span (decode_hidden + logits_from_hidden(h, rows)) and normalises over them;
score='vocab' ranks by the exact model probability (full softmax, all V head rows, at every
level), which costs the full head per step and can order items differently (see
neo_jax/decode/beam_search.py). On MovieLens-100k validation (the lead's run of 2026-12-06,
config movielens100k) both gave recommendation HR@10 0.1888 and 'codes' search 0.030 against
0.025 for 'vocab', so the cheaper 'codes' is the default.

Precision: `dtype='bfloat16'` serves with bfloat16 weights and compute (every dot sums in
float32; logits and scores stay float32); rankings agree with float32 within the tolerance
tests/test_decode_ranker.py states. None keeps the model's own dtypes. On a CPU, bfloat16 is
served with the layers unrolled over per-layer weights (`unroll_layers`,
`default_unroll_layers`), which is where it is fast.

Under score='codes' the prefill computes only the LM-head rows of the level-0 codes (the first
level reads nothing else), not the full head.

Request constraints (exclusions such as a user's history, allow-lists) and catalog updates
(`remove_items` / `restore_items`, and `add_items` within the trie's capacity, applied to the
trie's arrays with unchanged shapes) never recompile; a removed item is never returned after
the update.

Models. `set_model` points the ranker at another model of the same structure (e.g. a later
checkpoint): the parameters are an argument of the compiled programs, so nothing recompiles.

Generation computes only the code rows of the LM head inside SID spans (`rows_head`, see
neo_jax/decode/generate.py); greedy and sampled outputs equal the full head's.

Progress: a call of more requests than one batch prints a line every ~10 s (requests done /
total, requests/s, ETA; `neo_jax.catalog.progress`) to the ranker's `log` (stderr when None),
labelled `rank`, `rank unconstrained` or `generate` with the ranker's `progress_label` before
it; a call that ends within 10 s prints nothing, and tests and `--verbosity=-1` print none.
Counting never changes what is ranked.

Unconstrained decoding (`constrained=False`, the paper's ablation and its steerability test
"with constraints off"): `rank` runs plain beam search over the full vocabulary for the SID's
L tokens after `[SID]`, `generate` decodes with no mask at all; the produced SIDs are parsed
back to catalog items (a span that is malformed, or names no live item, gives -1), and the
returned stats count them. Request constraints cannot steer unconstrained decoding, so
`excluded` / `allowed` are not applied there (the stats count how many named items they would
have rejected); target types are only asked for in the prompt.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from neo_jax.catalog import progress as progress_lib
from neo_jax.decode import cache as cache_lib
from neo_jax.decode.beam_search import (SCORES, first_level_tokens, sid_beam_search,
                                        vocab_beam_search)
from neo_jax.decode.generate import GenerateSettings, generate as constrained_generate
from neo_jax.decode.interface import Constraints, prefill
from neo_jax.decode.trie import SIDTrie, SIDVocabArrays, lookup_items, request_filter
from neo_jax.model.decoder import Decoder, UnrolledLayers
from neo_jax.tokenizer.base import Tokenizer
from neo_jax.tokenizer.cut import cut_prompt


SERVING_DTYPES = ('float32', 'bfloat16')


def default_buckets(prompt_len: int) -> tuple[int, ...]:
  """Powers of two from 16 below `prompt_len`, then `prompt_len` itself."""
  out, width = [], 16
  while width < prompt_len:
    out.append(width)
    width *= 2
  return tuple(out) + (int(prompt_len),)


def serving_model(model: Decoder, dtype: str | None = None, unroll_layers: bool = False):
  """(graphdef, state) of `model` as served: with dtype 'float32' / 'bfloat16' its floating
  parameters are cast and its compute dtype set to it (None keeps its dtypes); with
  unroll_layers its block weights are copied into `UnrolledLayers` (one array per layer, the
  blocks run unrolled). The model itself is not changed."""
  if dtype is not None and dtype not in SERVING_DTYPES:
    raise ValueError(f'unknown serving dtype {dtype!r}; known: {SERVING_DTYPES} or None')
  if dtype is None and not unroll_layers:
    return nnx.split(model)
  graphdef, state = nnx.split(model)
  served = nnx.merge(graphdef, state)  # a new module object (the arrays shared)
  if dtype is not None:
    served.cfg = dataclasses.replace(model.cfg, dtype=dtype, param_dtype=dtype)
  if unroll_layers and not isinstance(served.layers, UnrolledLayers):
    served.layers = UnrolledLayers(served.layers.stacked())
  graphdef, state = nnx.split(served)
  if dtype is not None:
    state = jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
  return graphdef, state


SERVING_DTYPE_CHOICES = ('auto', 'model') + SERVING_DTYPES


def serving_dtype(choice: str) -> str | None:
  """The `NEORanker` dtype of a serving-precision choice: 'model' keeps the model's own (None),
  'float32' / 'bfloat16' cast to it, and 'auto' is bfloat16 on a CPU backend and the model's
  own elsewhere.

  'auto' follows the rule the scores follow: of two equally good settings on validation, the
  faster. On MovieLens-100k (the 254fbbe NEO-multi weights, 2026-12-06) bfloat16 against
  float32 was within noise on validation (HR@10 -0.001 [-0.003, 0.000], NDCG@10 +0.0002
  [-0.0008, +0.0013], search equal), and on the 2-core CPU it serves a SmolLM2-135M-shaped
  request ~1.7x faster at batch 1 (260 against 434 ms) and ~2.1x faster at batch 64: the f32
  path there is bound by reading the weights from memory, 4 passes of 0.43 GB per request."""
  if choice not in SERVING_DTYPE_CHOICES:
    raise ValueError(f'unknown serving precision {choice!r}; known: {SERVING_DTYPE_CHOICES}')
  if choice == 'auto':
    return 'bfloat16' if jax.default_backend() == 'cpu' else None
  return None if choice == 'model' else choice


def default_unroll_layers(dtype: str | None) -> bool:
  """Whether serving in `dtype` unrolls the layers by default: bfloat16 on a CPU backend.

  There XLA:CPU loses its fast bfloat16 dot (bfloat16 operands, float32 sums) on weights sliced
  out of the layer stack inside `lax.scan`; per-layer arrays keep it. On the project's 2-core
  CPU (SmolLM2-135M shape, batch 1, 30 beams, 2026-12-06) a request took ~410 ms scanned
  against ~240 ms unrolled in bfloat16, while float32 was no faster unrolled (~410 against
  ~420 ms), and an unrolled program compiles ~5x longer. Elsewhere the stacked weights under
  `lax.scan` are served as trained."""
  return dtype == 'bfloat16' and jax.default_backend() == 'cpu'


@functools.partial(jax.jit, static_argnames=('graphdef', 'num_beams', 'score', 'constrained'))
def search_batch(graphdef, state, constraints: Constraints, tokens_BxT, positions_BxT,
                 valid_BxT, *, num_beams: int, score: str = 'codes', constrained: bool = True):
  """The served ranking program: prefill of one batch of left-padded prompts, then the
  constrained beam search (beams reading the prompt cache in place), or with constrained=False
  plain beam search over the vocabulary for the SID's tokens. The graphdef is static, the
  parameters (state) an argument: models of one structure share the compiled program."""
  model = nnx.merge(graphdef, state)
  batch, width = tokens_BxT.shape
  num_levels = constraints.trie.num_levels
  # The beams keep their decoded tokens apart (shared_prompt.py): the prompt cache needs no room.
  cache = model.init_cache(batch, width)
  if not constrained:
    pre, cache = prefill(model, cache, tokens_BxT, positions_BxT, valid_BxT)
    return vocab_beam_search(model, cache, pre, num_beams, num_levels)
  rows, vocab_size = None, model.head_weight().shape[0]
  if score == 'codes':  # the first level reads only the level-0 code logits
    rows = first_level_tokens(constraints.vocab, constraints.trie.kmax[0], vocab_size)
  pre, cache = prefill(model, cache, tokens_BxT, positions_BxT, valid_BxT, rows=rows,
                       vocab_size=vocab_size)
  return sid_beam_search(model, cache, pre, constraints, num_beams, score=score)


@functools.partial(jax.jit, static_argnames=('graphdef', 'settings'))
def generate_batch(graphdef, state, constraints: Constraints, tokens_BxT, positions_BxT,
                   valid_BxT, settings: GenerateSettings):
  """The served generation program for one batch of left-padded prompts."""
  model = nnx.merge(graphdef, state)
  batch, width = tokens_BxT.shape
  cache = model.init_cache(batch, width + settings.max_new_tokens)
  pre, cache = prefill(model, cache, tokens_BxT, positions_BxT, valid_BxT)
  return constrained_generate(model, cache, pre, constraints, settings)


class NEORanker:

  def __init__(self, model: Decoder, tokenizer: Tokenizer, trie: SIDTrie, *,
               prompt_len: int, batch_size: int = 32, score: str = 'codes',
               rows_head: bool = True, dtype: str | None = None,
               unroll_layers: bool | None = None,
               length_buckets: Sequence[int] | None = None,
               log: progress_lib.Log | None = None, progress: bool | None = None,
               progress_label: str = ''):
    """prompt_len: token width prompts are cut (oldest history items first, see
    `prompt_tokens`) to, including the bos and the trailing `[SID]`. batch_size: the most
    requests per compiled batch. score: 'codes' (rows-only head) or 'vocab' (full softmax) for
    `rank` (module docstring). rows_head: `generate` computes only code rows of the LM head
    inside spans. dtype: None (the model's), 'float32' or 'bfloat16' weights and compute.
    unroll_layers: serve the blocks unrolled over per-layer weight arrays (None:
    `default_unroll_layers(dtype)`: bfloat16 on a CPU backend).
    length_buckets: the widths prompts are padded to (the last must be prompt_len); default
    `default_buckets(prompt_len)`. log: where progress lines go (None: stderr); progress:
    print them at all (None: `progress.enabled()`); progress_label: a name put before the
    lines' `rank` / `generate` (e.g. 'validation'). The three are attributes a caller may set."""
    if score not in SCORES:
      raise ValueError(f'unknown score {score!r}; known: {SCORES}')
    if dtype is not None and dtype not in SERVING_DTYPES:
      raise ValueError(f'unknown serving dtype {dtype!r}; known: {SERVING_DTYPES} or None')
    self.score = score
    self.dtype = dtype
    self.unroll_layers = (default_unroll_layers(dtype) if unroll_layers is None
                          else bool(unroll_layers))
    self.rows_head = bool(rows_head)
    self.last_stats: dict | None = None
    self.tokenizer = tokenizer
    self.trie = trie
    self.vocab_arrays = SIDVocabArrays.from_vocab(tokenizer.sid)
    self.prompt_len = int(prompt_len)
    if int(batch_size) < 1:
      raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    self.batch_size = int(batch_size)
    self.length_buckets = self._check_buckets(
        default_buckets(self.prompt_len) if length_buckets is None else length_buckets)
    self.cut_stats = {'prompts_cut': 0, 'history_items_cut': 0}
    self.log, self.progress, self.progress_label = log, progress, progress_label
    self.set_model(model)
    self.type_names = tokenizer.sid.type_names

  def _check_buckets(self, buckets: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(b) for b in buckets)
    if not out or list(out) != sorted(set(out)) or out[0] < 1 or out[-1] != self.prompt_len:
      raise ValueError(f'length_buckets must be increasing positive widths ending with '
                       f'prompt_len {self.prompt_len}, got {tuple(buckets)}')
    return out

  def set_model(self, model: Decoder) -> None:
    """Ranks and generates with `model` from now on (in the ranker's dtype). A model of the
    same structure (config, module tree) as the current one reuses every compiled program,
    only the parameters change; another structure compiles anew on first use."""
    self.graphdef, self.state = serving_model(model, self.dtype, self.unroll_layers)
    self.cfg = model.cfg

  def prompt_tokens(self, prompt: str, open_sid: bool = True) -> list[int]:
    """bos + prompt (+ `[SID]`), fitted to `prompt_len` the way training fits over-long
    prompts: the oldest history items go, never the instruction header
    (`tokenizer.cut.cut_prompt`). Counts what it cut in `cut_stats` ('prompts_cut',
    'history_items_cut', over the ranker's life; `reset_cut_stats` zeroes them).

    Raises:
      PromptTooLongError: the prompt does not fit even with only its newest history item.
    """
    ids = self.tokenizer.encode(prompt)
    tail = [self.tokenizer.sid.sid_open_id] if open_sid else []
    ids, cut = cut_prompt(ids, self.prompt_len - 1 - len(tail), self.tokenizer)
    if cut:
      self.cut_stats['prompts_cut'] += 1
      self.cut_stats['history_items_cut'] += cut
    return [self.tokenizer.bos_id] + ids + tail

  def reset_cut_stats(self) -> dict[str, int]:
    """The cut counts so far (see `prompt_tokens`), then zeroes them."""
    out = dict(self.cut_stats)
    self.cut_stats = {'prompts_cut': 0, 'history_items_cut': 0}
    return out

  def _allowed(self, types: Sequence[str | None]) -> np.ndarray:
    allowed = np.zeros((len(types), len(self.type_names)), bool)
    for b, t in enumerate(types):
      if t is None:
        allowed[b] = True
      else:
        allowed[b, self.type_names.index(t)] = True
    return allowed

  def remove_items(self, items: Sequence[int]) -> None:
    """Catalog update: these rows are never returned or generated from now on."""
    self.trie = self.trie.set_live(items, False)

  def restore_items(self, items: Sequence[int]) -> None:
    """Catalog update: these rows (built into the trie) may be returned again."""
    self.trie = self.trie.set_live(items, True)

  def add_items(self, items: Sequence[int], sids: Sequence[tuple[str, Sequence[int]]],
                live: bool = True) -> None:
    """Catalog update: new rows `items` with SIDs `sids` ((type name, codes) each) that no
    row holds yet, within the trie's capacity (`SIDTrie.build(..., capacity=)`); no
    recompilation. Metadata of the new rows (titles, ...) is the caller's to keep."""
    if len(items) != len(sids):
      raise ValueError(f'{len(items)} items but {len(sids)} SIDs')
    unknown = sorted({t for t, _ in sids} - set(self.type_names))
    if unknown:
      raise ValueError(f'unknown entity types {unknown}; known: {self.type_names}')
    types = np.array([self.type_names.index(t) for t, _ in sids], np.int64)
    codes = np.array([list(c) for _, c in sids], np.int64).reshape(len(sids),
                                                                   self.trie.num_levels)
    self.trie = self.trie.add_items(np.asarray(items, np.int64), codes, types, live=live)

  def parse_sids(self, tokens_NxL: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of N SIDs (the L codes each, without delimiters) -> (catalog rows (N,)
    int32, -1 where the tokens are not the codes of one type in level order or name no live
    item; types (N,) int32, -1 where the first token is no level-0 code)."""
    tokens = np.asarray(tokens_NxL, np.int64).reshape(-1, self.trie.num_levels)
    offsets = np.asarray(self.tokenizer.sid.offsets_TxL, np.int64)
    sizes = np.array([self.tokenizer.sid.level_sizes[t] for t in self.type_names], np.int64)
    # Level-0 blocks are laid out in type order: the type is the last block starting at or
    # before the first token.
    t = np.clip(np.searchsorted(offsets[:, 0], tokens[:, 0], side='right') - 1, 0, None)
    codes = tokens - offsets[t]
    ok = np.all((codes >= 0) & (codes < sizes[t]), axis=1)
    rows = lookup_items(self.trie, np.where(ok, t, 0), np.where(ok[:, None], codes, 0))
    first_ok = (codes[:, 0] >= 0) & (codes[:, 0] < sizes[t, 0])
    return np.where(ok, rows, -1), np.where(first_ok, t, -1).astype(np.int32)

  def bucket_of(self, length: int) -> int:
    """The width a prompt of `length` tokens is padded to (the smallest bucket holding it)."""
    for width in self.length_buckets:
      if length <= width:
        return width
    raise ValueError(f'a prompt of {length} tokens is longer than prompt_len {self.prompt_len}')

  def _check_lists(self, n, excluded, allowed):
    for name, lists in (('excluded', excluded), ('allowed', allowed)):
      if lists is not None and len(lists) != n:
        raise ValueError(f'{n} prompts but {len(lists)} {name} lists')

  def _filter_width(self, excluded, allowed) -> int:
    """Width of the request filters of one call: a power of two (few compiled shapes)."""
    longest = max([len(x) for x in (excluded or []) + (allowed or []) if x is not None] + [1])
    return 1 << (longest - 1).bit_length()

  def _filter(self, index, rows, excluded, allowed, width):
    """The RequestFilter of the requests `index` in a batch of `rows` (None without
    request constraints)."""
    if excluded is None and allowed is None:
      return None
    pad = rows - len(index)
    ex = None if excluded is None else [excluded[i] for i in index] + [()] * pad
    al = None if allowed is None else [allowed[i] for i in index] + [None] * pad
    return request_filter(self.trie, ex, al, batch=rows, width=width)

  def token_batches(self, token_lists: Sequence[Sequence[int]],
                    target_types: Sequence[str | None]):
    """Prompts already tokenised (bos ... `[SID]`, each within prompt_len) -> the batches the
    compiled programs take: (indices of its requests, tokens, positions, valid, allowed
    types), grouped by length bucket (in order of each bucket's first request), each padded
    to its bucket's width and to batch_size rows (padding rows repeat the batch's first
    request), so that the number of requests never changes a compiled shape."""
    if len(token_lists) != len(target_types):
      raise ValueError(f'{len(token_lists)} prompts but {len(target_types)} target types')
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(token_lists):
      groups.setdefault(self.bucket_of(len(ids)), []).append(i)
    for width, members in groups.items():
      for start in range(0, len(members), self.batch_size):
        index = members[start:start + self.batch_size]
        rows = self.batch_size
        chunk = [token_lists[i] for i in index] + [token_lists[index[0]]] * (rows - len(index))
        types = [target_types[i] for i in index]
        types += [types[0]] * (rows - len(index))
        tokens, positions, valid = cache_lib.left_pad(chunk, self.tokenizer.pad_id, length=width)
        yield (index, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(valid),
               jnp.asarray(self._allowed(types)))

  def _batches(self, prompts, target_types, open_sid):
    if len(prompts) != len(target_types):
      raise ValueError(f'{len(prompts)} prompts but {len(target_types)} target types')
    return self.token_batches([self.prompt_tokens(p, open_sid) for p in prompts], target_types)

  def _counted(self, batches, n: int, what: str):
    """Yields `batches` (of `token_batches`, for `n` requests) and counts the requests of
    each once the caller's loop body is done with it (its results fetched): a progress line
    every ~10 s when the call has more requests than one batch."""
    label = f'{self.progress_label} {what}'.strip()
    on = False if n <= self.batch_size else self.progress
    with progress_lib.Progress(label, n, unit='requests', log=self.log, on=on) as p:
      for batch in batches:
        yield batch
        p.update(len(batch[0]))

  def _constraints(self, allowed_BxT, request) -> Constraints:
    return Constraints(trie=self.trie, vocab=self.vocab_arrays, allowed_types_BxT=allowed_BxT,
                       request=request)

  def rank(self, prompts: Sequence[str], target_types: Sequence[str | None], num_beams: int,
           *, excluded: Sequence[Sequence[int]] | None = None,
           allowed: Sequence[Sequence[int] | None] | None = None, constrained: bool = True):
    """(items (B, num_beams) int32 rows best first, -1 if fewer exist; scores (B, num_beams)).

    `target_types[b]` restricts request b to one entity type (None: any type); `excluded[b]`
    lists catalog rows request b must not get (e.g. its history); `allowed[b]`, when not None,
    the only rows it may get.

    constrained=False: plain beam search over the full vocabulary (no trie, no request
    constraints; the target type is only in the prompt); returns (items, scores, stats), items
    -1 where a beam's tokens name no live catalog item, scores the full-softmax
    log-probabilities of the beams' tokens, stats as `_unconstrained_rank_stats` (also kept in
    `self.last_stats`)."""
    if not constrained:
      return self._rank_unconstrained(prompts, target_types, num_beams, excluded, allowed)
    self._check_lists(len(prompts), excluded, allowed)
    return self.rank_tokens([self.prompt_tokens(p, True) for p in prompts], target_types,
                            num_beams, excluded=excluded, allowed=allowed)

  def rank_tokens(self, token_lists: Sequence[Sequence[int]],
                  target_types: Sequence[str | None], num_beams: int, *,
                  excluded: Sequence[Sequence[int]] | None = None,
                  allowed: Sequence[Sequence[int] | None] | None = None):
    """`rank` (constrained) of prompts already tokenised: each bos ... `[SID]`, at most
    prompt_len tokens (`prompt_tokens` makes them from text)."""
    n = len(token_lists)
    self._check_lists(n, excluded, allowed)
    items = np.full((n, num_beams), -1, np.int32)
    scores = np.zeros((n, num_beams), np.float32)
    width = self._filter_width(excluded, allowed)
    for index, tokens, positions, valid, allowed_types in self._counted(
        self.token_batches(token_lists, target_types), n, 'rank'):
      request = self._filter(index, tokens.shape[0], excluded, allowed, width)
      it, sc = search_batch(self.graphdef, self.state, self._constraints(allowed_types, request),
                            tokens, positions, valid, num_beams=num_beams, score=self.score)
      items[index] = np.asarray(it)[:len(index)]
      scores[index] = np.asarray(sc)[:len(index)]
    return items, scores

  def _rank_unconstrained(self, prompts, target_types, num_beams, excluded, allowed):
    self._check_lists(len(prompts), excluded, allowed)
    n = len(prompts)
    items = np.full((n, num_beams), -1, np.int32)
    types = np.full((n, num_beams), -1, np.int32)
    scores = np.zeros((n, num_beams), np.float32)
    for index, tokens, positions, valid, allowed_types in self._counted(
        self._batches(prompts, target_types, True), n, 'rank unconstrained'):
      toks, sc = search_batch(self.graphdef, self.state, self._constraints(allowed_types, None),
                              tokens, positions, valid, num_beams=num_beams, constrained=False)
      toks = np.asarray(toks)[:len(index)]
      rows, ts = self.parse_sids(toks.reshape(-1, self.trie.num_levels))
      items[index] = rows.reshape(len(index), num_beams)
      types[index] = np.where(rows >= 0, ts, -1).reshape(len(index), num_beams)
      scores[index] = np.asarray(sc)[:len(index)]
    self.last_stats = self._unconstrained_stats(items, types, target_types, excluded, allowed)
    return items, scores, self.last_stats

  def _unconstrained_stats(self, items_per_request, types_per_request, target_types, excluded,
                           allowed) -> dict:
    """Counts over the SIDs unconstrained decoding produced: `sids` (all), `valid` (naming a
    live catalog item), `valid_fraction`; `typed_sids` (SIDs of requests that asked for a
    type) and `of_target_type` (valid ones of that type), `target_type_fraction`;
    `excluded_named` / `not_allowed_named`: valid items a request's exclusions / allow-list
    would have rejected (constrained decoding never names them)."""
    total = valid = typed = on_type = ex = na = 0
    for b, (rows, ts) in enumerate(zip(items_per_request, types_per_request)):
      rows, ts = np.asarray(rows), np.asarray(ts)
      total += rows.size
      good = rows[rows >= 0].tolist()
      valid += len(good)
      if target_types[b] is not None:
        typed += rows.size
        on_type += int(np.sum(ts[rows >= 0] == self.type_names.index(target_types[b])))
      if excluded is not None:
        ex += sum(r in set(excluded[b]) for r in good)
      if allowed is not None and allowed[b] is not None:
        na += sum(r not in set(allowed[b]) for r in good)
    return {'sids': total, 'valid': valid, 'valid_fraction': valid / total if total else 0.0,
            'typed_sids': typed, 'of_target_type': on_type,
            'target_type_fraction': on_type / typed if typed else 0.0,
            'excluded_named': ex, 'not_allowed_named': na}

  def generate(self, prompts: Sequence[str], output_format: str, *,
               target_types: Sequence[str | None] | None = None, max_new_tokens: int = 48,
               max_items: int | None = None,
               excluded: Sequence[Sequence[int]] | None = None,
               allowed: Sequence[Sequence[int] | None] | None = None, num_beams: int = 1,
               constrained: bool = True):
    """Greedy constrained generation; per prompt (the decoded text with SID markup, the
    catalog rows of the items it names, distinct). In the 'ids' format spaces, commas and
    newlines may separate the spans. excluded / allowed: as in `rank`. num_beams > 1: the
    beam variant (the most probable whole answer among num_beams hypotheses).

    constrained=False: no mask at all (no trie, no format or type masks, no item limit, no
    request constraints); returns (outputs, stats): per prompt (text, rows of its `[SID]` spans
    in order, -1 for a span that is malformed or names no live item, repeats kept), and
    stats as in `_unconstrained_stats` over the spans (also in `self.last_stats`)."""
    if target_types is None:
      target_types = [None] * len(prompts)
    separators = tuple(sorted({i for s in (' ', ', ', ',', '\n')
                               for i in self.tokenizer.encode_text(s)}))
    settings = GenerateSettings(
        max_new_tokens=max_new_tokens, eos_id=self.tokenizer.eos_id, pad_id=self.tokenizer.pad_id,
        output_format=output_format, separator_ids=separators, max_items=max_items,
        num_beams=num_beams, rows_head=self.rows_head, constrained=constrained)
    n = len(prompts)
    self._check_lists(n, excluded, allowed)
    out, span_rows, span_types = [None] * n, [None] * n, [None] * n
    width = self._filter_width(excluded, allowed)
    for index, tokens, positions, valid, allowed_types in self._counted(
        self._batches(prompts, target_types, False), n, 'generate'):
      request = (self._filter(index, tokens.shape[0], excluded, allowed, width) if constrained
                 else None)
      res = generate_batch(self.graphdef, self.state, self._constraints(allowed_types, request),
                           tokens, positions, valid, settings)
      toks, lengths = np.asarray(res.tokens), np.asarray(res.lengths)
      items, counts = np.asarray(res.items), np.asarray(res.num_items)
      for b, i in enumerate(index):
        ids = [int(t) for t in toks[b, :lengths[b]] if t != self.tokenizer.eos_id]
        if constrained:
          out[i] = (self.tokenizer.decode(ids), items[b, :counts[b]].tolist())
          continue
        span_rows[i], span_types[i] = self._parse_spans(ids)
        out[i] = (self.tokenizer.decode(ids), span_rows[i].tolist())
    if constrained:
      return out
    self.last_stats = self._unconstrained_stats(span_rows, span_types, target_types, excluded,
                                                allowed)
    return out, self.last_stats

  def _parse_spans(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The `[SID]` spans of a token list (each up to the next delimiter or the end): (rows,
    types), -1 for a span that is not L codes of one type in level order naming a live item."""
    sid = self.tokenizer.sid
    spans, current = [], None
    for t in ids:
      if t == sid.sid_open_id:
        if current is not None:  # a span cut short by a new `[SID]`
          spans.append(current)
        current = []
      elif t == sid.sid_close_id:
        if current is not None:
          spans.append(current)
        current = None
      elif current is not None:
        current.append(t)
    if current is not None:  # cut by the end of the answer
      spans.append(current)
    num_levels = self.trie.num_levels
    well_formed = np.array([len(s) == num_levels for s in spans], bool)
    tokens = np.array([s if len(s) == num_levels else [0] * num_levels for s in spans],
                      np.int64).reshape(-1, num_levels)
    rows, types = self.parse_sids(tokens)
    return (np.where(well_formed, rows, -1).astype(np.int32),
            np.where(well_formed & (rows >= 0), types, -1).astype(np.int32))
