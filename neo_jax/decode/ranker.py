"""NEO at inference: prompts in; ranked catalog items (trie-constrained beam search) or
interleaved text and SIDs (constrained generation) out.

The prompt of every request is run once (left-padded to a fixed width so that one compiled
program serves every batch), its KV cache is shared by the beams, and the beams decode exactly
one SID each. Requests are padded to a fixed batch size for the same reason.

Scores: score='vocab' ranks by the exact model probability (full softmax at every level);
score='codes' computes only the LM-head rows of the current level's codes inside the SID span
(decode_hidden + logits_from_hidden(h, rows)) and normalises over them, which is cheaper per
step and can reorder items (see neo_jax/decode/beam_search.py).

Request constraints (exclusions such as a user's history, allow-lists) and catalog updates
(`remove_items` / `restore_items`, and `add_items` within the trie's capacity, applied to the
trie's arrays with unchanged shapes) never recompile; a removed item is never returned after
the update.

Models. `set_model` points the ranker at another model of the same structure (e.g. a later
checkpoint): the parameters are an argument of the compiled programs, so nothing recompiles.

Generation computes only the code rows of the LM head inside SID spans (`rows_head`, see
neo_jax/decode/generate.py); greedy and sampled outputs equal the full head's.

Unconstrained decoding (`constrained=False`, the paper's ablation and its steerability test
"with constraints off"): `rank` runs plain beam search over the full vocabulary for the SID's
L tokens after `[SID]`, `generate` decodes with no mask at all; the produced SIDs are parsed
back to catalog items (a span that is malformed, or names no live item, gives -1), and the
returned stats count them. Request constraints cannot steer unconstrained decoding, so
`excluded` / `allowed` are not applied there (the stats count how many named items they would
have rejected); target types are only asked for in the prompt.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from neo_jax.decode import cache as cache_lib
from neo_jax.decode.beam_search import SCORES, sid_beam_search, vocab_beam_search
from neo_jax.decode.generate import GenerateSettings, generate as constrained_generate
from neo_jax.decode.interface import Constraints, prefill
from neo_jax.decode.trie import SIDTrie, SIDVocabArrays, lookup_items, request_filter
from neo_jax.model.decoder import Decoder
from neo_jax.tokenizer.base import Tokenizer
from neo_jax.tokenizer.cut import cut_prompt


class NEORanker:

  def __init__(self, model: Decoder, tokenizer: Tokenizer, trie: SIDTrie, *,
               prompt_len: int, batch_size: int = 32, score: str = 'vocab',
               rows_head: bool = True):
    """prompt_len: token width prompts are cut (oldest history items first, see
    `prompt_tokens`) or left-padded to, including the bos and the trailing `[SID]`. score: 'vocab' or 'codes' (rows-only) for
    `rank`. rows_head: `generate` computes only code rows of the LM head inside spans."""
    if score not in SCORES:
      raise ValueError(f'unknown score {score!r}; known: {SCORES}')
    self.score = score
    self.rows_head = bool(rows_head)
    self.last_stats: dict | None = None
    self.tokenizer = tokenizer
    self.trie = trie
    self.vocab_arrays = SIDVocabArrays.from_vocab(tokenizer.sid)
    self.prompt_len = int(prompt_len)
    self.cut_stats = {'prompts_cut': 0, 'history_items_cut': 0}
    self.batch_size = int(batch_size)
    self.set_model(model)
    self.type_names = tokenizer.sid.type_names

  def set_model(self, model: Decoder) -> None:
    """Ranks and generates with `model` from now on. A model of the same structure (config,
    module tree) as the current one reuses every compiled program, only the parameters change;
    another structure compiles anew on first use."""
    self.graphdef, self.state = nnx.split(model)
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

  def _filters(self, n, excluded, allowed):
    """Per batch, the RequestFilter (or None when there are no request constraints)."""
    for name, lists in (('excluded', excluded), ('allowed', allowed)):
      if lists is not None and len(lists) != n:
        raise ValueError(f'{n} prompts but {len(lists)} {name} lists')
    if excluded is None and allowed is None:
      return [None] * -(-n // self.batch_size)
    longest = max([len(x) for x in (excluded or []) + (allowed or []) if x is not None] + [1])
    width = 1 << (longest - 1).bit_length()  # powers of two: few compiled shapes
    out = []
    for start in range(0, n, self.batch_size):
      stop = min(start + self.batch_size, n)
      pad = self.batch_size - (stop - start)
      ex = None if excluded is None else list(excluded[start:stop]) + [()] * pad
      al = None if allowed is None else list(allowed[start:stop]) + [None] * pad
      out.append(request_filter(self.trie, ex, al, batch=self.batch_size, width=width))
    return out

  def _batches(self, prompts, target_types, open_sid):
    """Fixed-shape batches: (real count, tokens, positions, valid, allowed types)."""
    if len(prompts) != len(target_types):
      raise ValueError(f'{len(prompts)} prompts but {len(target_types)} target types')
    for start in range(0, len(prompts), self.batch_size):
      chunk = [self.prompt_tokens(p, open_sid) for p in prompts[start:start + self.batch_size]]
      types = list(target_types[start:start + self.batch_size])
      real = len(chunk)
      chunk += [chunk[0]] * (self.batch_size - real)
      types += [types[0]] * (self.batch_size - real)
      tokens, positions, valid = cache_lib.left_pad(chunk, self.tokenizer.pad_id,
                                                    length=self.prompt_len)
      yield (real, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(valid),
             jnp.asarray(self._allowed(types)))

  def _constraints(self, allowed_BxT, request) -> Constraints:
    return Constraints(trie=self.trie, vocab=self.vocab_arrays, allowed_types_BxT=allowed_BxT,
                       request=request)

  @functools.partial(jax.jit, static_argnames=('self', 'graphdef', 'num_beams', 'constrained'))
  def _search(self, graphdef, state, constraints, tokens_BxT, positions_BxT, valid_BxT,
              num_beams, constrained=True):
    # The graphdef is static, the parameters (state) an argument: a model of the same structure
    # (`set_model`) reuses the compiled search.
    model = nnx.merge(graphdef, state)
    batch, width = tokens_BxT.shape
    num_levels = constraints.trie.num_levels
    cache = model.init_cache(batch, width + num_levels)
    pre, cache = prefill(model, cache, tokens_BxT, positions_BxT, valid_BxT)
    if not constrained:
      return vocab_beam_search(model, cache, pre, num_beams, num_levels)
    return sid_beam_search(model, cache, pre, constraints, num_beams, score=self.score)

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
    items, scores = [], []
    if not constrained:
      return self._rank_unconstrained(prompts, target_types, num_beams, excluded, allowed)
    filters = self._filters(len(prompts), excluded, allowed)
    for (real, tokens, positions, valid, allowed_types), request in zip(
        self._batches(prompts, target_types, True), filters):
      it, sc = self._search(self.graphdef, self.state, self._constraints(allowed_types, request),
                            tokens, positions, valid, num_beams)
      items.append(np.asarray(it)[:real])
      scores.append(np.asarray(sc)[:real])
    return np.concatenate(items), np.concatenate(scores)

  def _rank_unconstrained(self, prompts, target_types, num_beams, excluded, allowed):
    for name, lists in (('excluded', excluded), ('allowed', allowed)):
      if lists is not None and len(lists) != len(prompts):
        raise ValueError(f'{len(prompts)} prompts but {len(lists)} {name} lists')
    items, scores, types = [], [], []
    for real, tokens, positions, valid, allowed_types in self._batches(prompts, target_types,
                                                                       True):
      toks, sc = self._search(self.graphdef, self.state, self._constraints(allowed_types, None),
                              tokens, positions, valid, num_beams, constrained=False)
      toks = np.asarray(toks)[:real]
      rows, ts = self.parse_sids(toks.reshape(-1, self.trie.num_levels))
      items.append(rows.reshape(real, num_beams))
      types.append(np.where(rows >= 0, ts, -1).reshape(real, num_beams))
      scores.append(np.asarray(sc)[:real])
    items, scores, types = np.concatenate(items), np.concatenate(scores), np.concatenate(types)
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

  @functools.partial(jax.jit, static_argnames=('self', 'graphdef', 'settings'))
  def _generate(self, graphdef, state, constraints, tokens_BxT, positions_BxT, valid_BxT,
                settings: GenerateSettings):
    model = nnx.merge(graphdef, state)
    batch, width = tokens_BxT.shape
    cache = model.init_cache(batch, width + settings.max_new_tokens)
    pre, cache = prefill(model, cache, tokens_BxT, positions_BxT, valid_BxT)
    return constrained_generate(model, cache, pre, constraints, settings)

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
    out, span_rows, span_types = [], [], []
    filters = (self._filters(len(prompts), excluded, allowed) if constrained
               else [None] * -(-len(prompts) // self.batch_size))
    for (real, tokens, positions, valid, allowed_types), request in zip(
        self._batches(prompts, target_types, False), filters):
      res = self._generate(self.graphdef, self.state, self._constraints(allowed_types, request),
                           tokens, positions, valid, settings)
      toks, lengths = np.asarray(res.tokens), np.asarray(res.lengths)
      items, counts = np.asarray(res.items), np.asarray(res.num_items)
      for b in range(real):
        ids = [int(t) for t in toks[b, :lengths[b]] if t != self.tokenizer.eos_id]
        if constrained:
          out.append((self.tokenizer.decode(ids), items[b, :counts[b]].tolist()))
          continue
        rows, types = self._parse_spans(ids)
        span_rows.append(rows)
        span_types.append(types)
        out.append((self.tokenizer.decode(ids), rows.tolist()))
    if constrained:
      return out
    if excluded is not None and len(excluded) != len(prompts):
      raise ValueError(f'{len(prompts)} prompts but {len(excluded)} excluded lists')
    if allowed is not None and len(allowed) != len(prompts):
      raise ValueError(f'{len(prompts)} prompts but {len(allowed)} allowed lists')
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
