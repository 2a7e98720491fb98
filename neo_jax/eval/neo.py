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
(`remove_items` / `restore_items`, applied to the trie's arrays with unchanged shapes) never
recompile; a removed item is never returned after the update.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from neo_jax.decode import cache as cache_lib
from neo_jax.decode.generate import generate as constrained_generate
from neo_jax.decode.beam_search import SCORES, sid_beam_search
from neo_jax.decode.trie import SIDTrie, SIDVocabArrays, request_filter
from neo_jax.model.decoder import Decoder
from neo_jax.tokenizer.base import Tokenizer


class NEORanker:

  def __init__(self, model: Decoder, tokenizer: Tokenizer, trie: SIDTrie, *,
               prompt_len: int, batch_size: int = 32, score: str = 'vocab'):
    """prompt_len: token width prompts are cut (oldest tokens first) or left-padded to,
    including the bos and the trailing `[SID]`. score: 'vocab' or 'codes' (rows-only)."""
    if score not in SCORES:
      raise ValueError(f'unknown score {score!r}; known: {SCORES}')
    self.score = score
    self.tokenizer = tokenizer
    self.trie = trie
    self.vocab_arrays = SIDVocabArrays.from_vocab(tokenizer.sid)
    self.prompt_len = int(prompt_len)
    self.batch_size = int(batch_size)
    self.graphdef, self.state = nnx.split(model)
    self.cfg = model.cfg
    self.type_names = tokenizer.sid.type_names

  def prompt_tokens(self, prompt: str, open_sid: bool = True) -> list[int]:
    """bos + prompt (+ `[SID]`), the prompt cut from the left to fit `prompt_len`, the way
    training cuts over-long prompts."""
    ids = self.tokenizer.encode(prompt)
    tail = [self.tokenizer.sid.sid_open_id] if open_sid else []
    room = self.prompt_len - 1 - len(tail)
    return [self.tokenizer.bos_id] + ids[max(0, len(ids) - room):] + tail

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

  @functools.partial(jax.jit, static_argnames=('self', 'num_beams'))
  def _search(self, state, trie, vocab_arrays, tokens_BxT, positions_BxT, valid_BxT,
              allowed_BxT, request, num_beams):
    model = nnx.merge(self.graphdef, state)
    batch, width = tokens_BxT.shape
    cache = model.init_cache(batch, width + trie.num_levels)

    def step_fn(tokens, positions, cache, valid):
      return model.decode(tokens, positions, cache, valid)

    def row_step_fn(tokens, positions, cache, valid, rows):
      h, cache = model.decode_hidden(tokens, positions, cache, valid)
      return model.logits_from_hidden(h, rows), cache

    # The prompt: hidden states everywhere, the full LM head at its last token only.
    h, cache = model.decode_hidden(tokens_BxT, positions_BxT, cache, valid_BxT)
    last_logits = model.logits_from_hidden(h[:, -1])
    last_pos = positions_BxT[:, -1]
    return sid_beam_search(step_fn, cache, last_logits, last_pos, trie, vocab_arrays,
                           num_beams, allowed_BxT, request=request, score=self.score,
                           row_step_fn=row_step_fn if self.score == 'codes' else None)

  def rank(self, prompts: Sequence[str], target_types: Sequence[str | None], num_beams: int,
           *, excluded: Sequence[Sequence[int]] | None = None,
           allowed: Sequence[Sequence[int] | None] | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """(items (B, num_beams) int32 rows best first, -1 if fewer exist; scores (B, num_beams)).

    `target_types[b]` restricts request b to one entity type (None: any type); `excluded[b]`
    lists catalog rows request b must not get (e.g. its history); `allowed[b]`, when not None,
    the only rows it may get."""
    items, scores = [], []
    filters = self._filters(len(prompts), excluded, allowed)
    for (real, tokens, positions, valid, allowed_types), request in zip(
        self._batches(prompts, target_types, True), filters):
      it, sc = self._search(self.state, self.trie, self.vocab_arrays, tokens, positions, valid,
                            allowed_types, request, num_beams)
      items.append(np.asarray(it)[:real])
      scores.append(np.asarray(sc)[:real])
    return np.concatenate(items), np.concatenate(scores)

  @functools.partial(jax.jit, static_argnames=('self', 'output_format', 'max_new_tokens',
                                               'max_items', 'separators', 'num_beams'))
  def _generate(self, state, trie, vocab_arrays, tokens_BxT, positions_BxT, valid_BxT,
                allowed_BxT, request, output_format, max_new_tokens, max_items, separators,
                num_beams=1):
    model = nnx.merge(self.graphdef, state)
    batch, width = tokens_BxT.shape
    cache = model.init_cache(batch, width + max_new_tokens)

    def step_fn(tokens, positions, cache, valid):
      return model.decode(tokens, positions, cache, valid)

    last_logits, last_pos, cache = cache_lib.prefill(step_fn, cache, tokens_BxT, positions_BxT,
                                                     valid_BxT)
    return constrained_generate(
        step_fn, cache, last_logits, last_pos, trie, vocab_arrays,
        max_new_tokens=max_new_tokens, eos_id=self.tokenizer.eos_id,
        pad_id=self.tokenizer.pad_id, output_format=output_format, separator_ids=separators,
        max_items=max_items, allowed_types_BxT=allowed_BxT, request=request, num_beams=num_beams)

  def generate(self, prompts: Sequence[str], output_format: str, *,
               target_types: Sequence[str | None] | None = None, max_new_tokens: int = 48,
               max_items: int | None = None,
               excluded: Sequence[Sequence[int]] | None = None,
               allowed: Sequence[Sequence[int] | None] | None = None, num_beams: int = 1
               ) -> list[tuple[str, list[int]]]:
    """Greedy constrained generation; per prompt (the decoded text with SID markup, the
    catalog rows of the items it names, distinct). In the 'ids' format spaces, commas and
    newlines may separate the spans. excluded / allowed: as in `rank`. num_beams > 1: the
    beam variant (the most probable whole answer among num_beams hypotheses)."""
    if target_types is None:
      target_types = [None] * len(prompts)
    separators = tuple(sorted({i for s in (' ', ', ', ',', '\n')
                               for i in self.tokenizer.encode_text(s)}))
    out = []
    filters = self._filters(len(prompts), excluded, allowed)
    for (real, tokens, positions, valid, allowed_types), request in zip(
        self._batches(prompts, target_types, False), filters):
      res = self._generate(self.state, self.trie, self.vocab_arrays, tokens, positions, valid,
                           allowed_types, request, output_format, max_new_tokens, max_items,
                           separators, num_beams)
      toks, lengths = np.asarray(res.tokens), np.asarray(res.lengths)
      items, counts = np.asarray(res.items), np.asarray(res.num_items)
      for b in range(real):
        ids = [int(t) for t in toks[b, :lengths[b]] if t != self.tokenizer.eos_id]
        out.append((self.tokenizer.decode(ids), items[b, :counts[b]].tolist()))
    return out
