"""Interleaved generation: free text, and trie-constrained spans `[SID]c_0..c_{L-1}[/SID]`.

One jitted `lax.while_loop` over fixed-size buffers, batched over requests. Each row runs a small
state machine: `level` = -1 outside a span, 0..L-1 while the next token is the level-l code of
a span, L when the span is complete and `[/SID]` is forced. The next token is chosen from the
logits under a per-row mask:

  outside a span   'text': text tokens only; 'mixed': text tokens and `[SID]`;
                   'ids': `[SID]`, the caller's separator tokens and eos.
                   `[SID]` is masked once a row has named `max_items` items, and when no
                   admissible item is left for the row.
  in a span        the codes the trie admits after the span's prefix (level 0: every allowed
                   type's first codes; the first code fixes the span's type) that still lead
                   to an admissible item: live, allowed by the request filter (exclusions,
                   allow-list) and not yet named by this row, so an answer never names the
                   same item twice and a span never reaches a dead end.
  span complete    `[/SID]` only.

Tokens are greedy by default; with temperature > 0 text tokens are sampled (codes too when
`sample_codes`). A row stops after eos outside a span or after max_new_tokens.

Unconstrained (`constrained=False`, the paper's ablation): no trie, no format masks, no item
limit: every token of the vocabulary [0, end of the SID block) may follow any other. Spans are
not tracked (items stay -1, num_items 0); the caller parses the tokens back to items.

Rows-only LM head (`rows_head`). A step after which no unfinished row is outside a span
computes only the LM-head rows its rows can emit (`logits_from_hidden(h, rows)`, see
neo_jax/decode/interface.py): per row, every type's codes of the row's next level
(T x max_l kmax_l rows) and `[/SID]`, instead of all V rows (the same rows as sid_beam_search's
score='codes'). The other entries are NEG_INF, which the span masks drop anyway, so greedy and
sampled outputs equal those of the full head (up to the float rounding of a gathered matmul).
Steps with a row outside a span compute the full head (`lax.cond`, one branch runs). The beam
variant always computes the full head: its scores are full-softmax log-probabilities, which
need every row.

Beam variant (`num_beams` K > 1): each request keeps K hypotheses of the whole answer (text and
spans), scored by the sum of the model's log-probabilities (full-vocabulary softmax) of the
tokens emitted, each step taking the top K of the K x V masked continuations; a finished
hypothesis continues only with padding at log-probability 0. Hypotheses share the prompt's KV
cache (repeated once) and are reordered with their caches each step. No length normalisation:
the best hypothesis is the most probable complete output, which favours short answers when
the model gives eos much mass. Returns the best hypothesis per request.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from neo_jax.decode.beam_search import NEG_INF
from neo_jax.decode.cache import (CacheBatchAxis, default_cache_batch_axis, gather_batch,
                                  repeat_batch)
from neo_jax.decode.interface import Constraints, DecodingModel, Prefill, check_model
from neo_jax.decode.trie import admissible_children, child_index

OUTPUT_FORMATS = ('ids', 'text', 'mixed')
_OUTSIDE = -1


@dataclasses.dataclass(frozen=True)
class GenerateSettings:
  """The static settings of `generate` (hashable; one compiled program per distinct value).

  Attributes:
    max_new_tokens: buffer length M, in tokens.
    eos_id: end-of-sequence text token.
    pad_id: id written after a row's end.
    output_format: 'ids', 'text' or 'mixed', see the module docstring.
    separator_ids: text tokens allowed between spans in the 'ids' format.
    max_items: most spans per row; None: no limit beyond the buffer.
    num_beams: K; K > 1 runs the beam variant (needs temperature 0).
    rows_head: compute only the code rows of the LM head at steps inside spans (see the module
      docstring); with K > 1 the head is always full.
    constrained: False decodes without any mask (see the module docstring).
  """

  max_new_tokens: int
  eos_id: int
  pad_id: int
  output_format: str = 'mixed'
  separator_ids: tuple[int, ...] = ()
  max_items: int | None = None
  num_beams: int = 1
  rows_head: bool = False
  constrained: bool = True

  def __post_init__(self):
    # Plain ints and a tuple, so that equal settings hash equally (one compiled program).
    object.__setattr__(self, 'separator_ids', tuple(int(x) for x in self.separator_ids))
    object.__setattr__(self, 'rows_head', bool(self.rows_head))
    object.__setattr__(self, 'constrained', bool(self.constrained))
    if self.output_format not in OUTPUT_FORMATS:
      raise ValueError(f'unknown output_format {self.output_format!r}; known: {OUTPUT_FORMATS}')
    if self.max_new_tokens < 1:
      raise ValueError(f'max_new_tokens must be >= 1, got {self.max_new_tokens}')
    if self.max_items is not None and self.max_items < 0:
      raise ValueError(f'max_items must be >= 0 or None, got {self.max_items}')
    if self.num_beams < 1:
      raise ValueError(f'num_beams must be >= 1, got {self.num_beams}')

  def check_ids(self, base: int) -> None:
    """Raises unless eos, pad and the separators are text token ids (< base)."""
    for name, token in (('eos_id', self.eos_id), ('pad_id', self.pad_id)):
      if not 0 <= token < base:
        raise ValueError(f'{name} {token} is not a text token id (< {base})')
    bad = [s for s in self.separator_ids if not 0 <= s < base]
    if bad:
      raise ValueError(f'separator ids {bad} are not text token ids (< {base})')

  def item_slots(self, num_levels: int) -> int:
    """The most items a row can complete (the width of GenerateOutput.items)."""
    # A span takes at least L + 1 tokens before its item is complete, so no row can complete
    # more than this many; with max_items the buffer is also the limit that masks `[SID]`.
    slots = self.max_new_tokens // (num_levels + 1) + 1
    return slots if self.max_items is None else min(slots, self.max_items)


@struct.dataclass
class GenerateOutput:
  """Attributes:
    tokens: (B, max_new_tokens) int32 generated ids; pad_id after a row's end.
    lengths: (B,) int32 number of generated tokens per row, eos included.
    items: (B, I) int32 catalog rows of the completed spans, in order; -1 after the last.
    num_items: (B,) int32 number of completed spans.
    scores: with beams, (B,) float32 log-probability (nats) of the returned hypothesis; else
      None.
    rows_only_steps: with rows_head and one beam, () int32 number of steps whose LM head
      computed only SID code rows (of `steps`); else None.
    steps: () int32 decoding steps run (the while loop's trip count); None with beams.
  """

  tokens: jax.Array
  lengths: jax.Array
  items: jax.Array
  num_items: jax.Array
  scores: jax.Array | None = None
  rows_only_steps: jax.Array | None = None
  steps: jax.Array | None = None


def generate(model: DecodingModel, cache, prefill: Prefill, constraints: Constraints,
             settings: GenerateSettings, *, temperature: float = 0.0,
             rng: jax.Array | None = None, sample_codes: bool = False,
             cache_batch_axis: CacheBatchAxis = default_cache_batch_axis) -> GenerateOutput:
  """Generates up to settings.max_new_tokens tokens after each prompt.

  Args:
    model: a `DecodingModel` (neo_jax/decode/interface.py); static, hashed by identity.
    cache: the cache after the prompts (batch B); it needs room for max_new_tokens more tokens
      (with K beams it is repeated K times).
    prefill: the prompts' `Prefill` (logits (B, V) and positions (B,) of their last tokens).
    constraints: the trie, the SID token layout (ids below its base are text tokens), the
      allowed types (B, T) and the request filter; with settings.constrained False only the
      layout is used.
    settings: the static `GenerateSettings`.
    temperature: 0 for greedy; > 0 samples from softmax(logits / temperature).
    rng: PRNG key for sampling; defaults to key 0.
    sample_codes: sample the codes too (else they are greedy even when text is sampled).
    cache_batch_axis: the cache layout rule (static; neo_jax/decode/cache.py), used by the beam
      variant.

  Returns:
    GenerateOutput.
  """
  check_model(model, 'generate')
  batch, _ = prefill.check(constraints.vocab)
  settings.check_ids(constraints.vocab.base)
  if settings.num_beams > 1 and temperature > 0:
    raise ValueError('the beam variant is deterministic: use temperature 0 with num_beams > 1')
  constraints.check(batch)
  k = settings.num_beams
  if k > 1:  # hypotheses are rows b * K + k, all starting from request b's prompt
    cache = repeat_batch(cache, k, cache_batch_axis)
    prefill, constraints = prefill.repeat(k), constraints.repeat(k)
  out = _generate(model, cache, prefill, constraints, jnp.asarray(temperature, jnp.float32),
                  jax.random.key(0) if rng is None else rng, jnp.asarray(sample_codes, bool),
                  settings=settings, cache_batch_axis=cache_batch_axis)
  if k == 1:
    return out.replace(scores=None,
                       rows_only_steps=out.rows_only_steps if settings.rows_head else None)
  # top_k keeps hypotheses sorted, so hypothesis 0 of each request is its best.
  out = out.replace(rows_only_steps=None, steps=None)
  return jax.tree.map(lambda x: x[::k], out)


@functools.partial(jax.jit, static_argnames=('model', 'settings', 'cache_batch_axis'))
def _generate(model, cache, prefill: Prefill, constraints: Constraints, temperature, rng,
              sample_codes, *, settings: GenerateSettings, cache_batch_axis):
  loop = _Loop(model, constraints, settings, cache_batch_axis, prefill.logits_BxV.shape)
  state = jax.lax.while_loop(loop.cond, functools.partial(loop.body, temperature, sample_codes),
                             loop.initial_state(prefill, cache, rng))
  return GenerateOutput(tokens=state['tokens'], lengths=state['lengths'], items=state['items'],
                        num_items=state['num_items'], scores=state['score'],
                        rows_only_steps=state['rows_only_steps'], steps=state['t'])


class _Loop:
  """The while loop of `_generate`: its state, and one step (`body`), built inside the trace.

  The state is a dict of (B, ...) per-row arrays (B counts hypotheses with beams) and a few
  scalars; see `initial_state`.
  """

  def __init__(self, model, constraints: Constraints, settings: GenerateSettings,
               cache_batch_axis, logits_shape: tuple[int, int]):
    self.model, self.constraints, self.settings = model, constraints, settings
    self.cache_batch_axis = cache_batch_axis
    trie, vocab = constraints.trie, constraints.vocab
    self.batch, self.vocab_size = logits_shape
    self.num_levels, self.num_types = trie.num_levels, trie.num_types
    self.item_slots = settings.item_slots(trie.num_levels)
    self.rows_B = jnp.arange(self.batch, dtype=jnp.int32)
    self.ids_V = jnp.arange(self.vocab_size, dtype=jnp.int32)
    # Outside-span tokens other than `[SID]` (which depends on the row).
    if settings.output_format == 'ids':
      separators_S = jnp.asarray(settings.separator_ids, jnp.int32)
      self.outside_V = jnp.zeros(self.vocab_size, bool).at[separators_S].set(True).at[
          settings.eos_id].set(True)
    else:
      self.outside_V = self.ids_V < vocab.base
    self.types_BxT = jnp.broadcast_to(jnp.arange(self.num_types, dtype=jnp.int32),
                                      (self.batch, self.num_types))
    self.root_tokens_TxK0 = vocab.offsets_TxL[:, 0, None] + jnp.arange(trie.kmax[0],
                                                                       dtype=jnp.int32)
    self.level_sizes = [trie.bitmaps[l].shape[0] for l in range(self.num_levels)]
    self.codes_K = jnp.arange(max(trie.kmax), dtype=jnp.int32)

  def initial_state(self, prefill: Prefill, cache, rng) -> dict[str, Any]:
    batch, s = self.batch, self.settings
    zeros_B = jnp.zeros(batch, jnp.int32)
    return {
        't': jnp.zeros((), jnp.int32),
        'rows_only_steps': jnp.zeros((), jnp.int32),
        'logits': prefill.logits_BxV.astype(jnp.float32),
        'cache': cache,
        'level': jnp.full(batch, _OUTSIDE, jnp.int32),
        'type': zeros_B,
        'node': zeros_B,
        'num_items': zeros_B,
        'items': jnp.full((batch, self.item_slots), -1, jnp.int32),
        'leaves': jnp.full((batch, self.item_slots), -1, jnp.int32),
        'done': jnp.zeros(batch, bool),
        'tokens': jnp.full((batch, s.max_new_tokens), s.pad_id, jnp.int32),
        'lengths': zeros_B,
        'position': prefill.positions_B.astype(jnp.int32) + 1,
        'rng': rng,
        # Beams: only hypothesis 0 of each request is live at first, so the first step expands
        # one prompt state into K distinct continuations.
        'score': jnp.where(self.rows_B % s.num_beams == 0, 0.0, NEG_INF).astype(jnp.float32),
    }

  def cond(self, state):
    return (state['t'] < self.settings.max_new_tokens) & ~jnp.all(state['done'])

  def next_logits(self, tok_B, positions_B, cache, live_B, level_B, done_B):
    """(B, V) float32 logits after feeding tok_B, the cache, and whether only code rows of
    the head were computed; level_B / done_B: the rows' state for the next token."""
    model, batch, vocab_size = self.model, self.batch, self.vocab_size
    vocab = self.constraints.vocab
    hidden_Nx1xD, cache = model.decode_hidden(tok_B[:, None], positions_B[:, None], cache,
                                              live_B[:, None])
    if not self.settings.rows_head:
      logits_Nx1xV = model.logits_from_hidden(hidden_Nx1xD)
      return logits_Nx1xV[:, -1].astype(jnp.float32), cache, jnp.zeros((), bool)
    hidden_BxD = hidden_Nx1xD[:, -1]

    def full_head(h):
      return model.logits_from_hidden(h, None).astype(jnp.float32)

    def rows_head(h):
      # Every type's codes of the row's next level, and `[/SID]` (forced after the last code).
      level_l_B = jnp.clip(level_B, 0, self.num_levels - 1)
      codes_BxTxK = vocab.offsets_TxL[:, level_l_B].T[:, :, None] + self.codes_K
      rows_BxR = jnp.concatenate([codes_BxTxK.reshape(batch, -1),
                                  jnp.full((batch, 1), vocab.close_id, jnp.int32)], axis=1)
      rows_BxR = jnp.minimum(rows_BxR, vocab_size - 1)
      logits_BxR = model.logits_from_hidden(h, rows_BxR).astype(jnp.float32)
      return jnp.full((batch, vocab_size), NEG_INF, jnp.float32).at[
          self.rows_B[:, None], rows_BxR].set(logits_BxR)

    if self.settings.num_beams > 1:
      return full_head(hidden_BxD), cache, jnp.zeros((), bool)
    rows_only = ~jnp.any(~done_B & (level_B == _OUTSIDE))
    return jax.lax.cond(rows_only, rows_head, full_head, hidden_BxD), cache, rows_only

  def mask(self, level_B, type_B, node_B, num_items_B, named_BxI):
    """The (B, V) admissible next tokens; named_BxI: leaves each row has named (-1 pads)."""
    c, batch, vocab_size = self.constraints, self.batch, self.vocab_size
    trie, offsets_TxL, rows_B = c.trie, c.vocab.offsets_TxL, self.rows_B
    outside_B = level_B == _OUTSIDE
    # Level 0 depends on the items named so far, so it is recomputed every step (T * K0 codes).
    root_ok_BxTxK0, _ = admissible_children(trie, 0, self.types_BxT, c.request, named_BxI)
    if c.allowed_types_BxT is not None:
      root_ok_BxTxK0 = root_ok_BxTxK0 & c.allowed_types_BxT.astype(bool)[:, :, None]
    root_idx_BxC = jnp.where(root_ok_BxTxK0 & (level_B == 0)[:, None, None],
                             self.root_tokens_TxK0, vocab_size).reshape(batch, -1)
    span_BxV = jnp.zeros((batch, vocab_size), bool).at[rows_B[:, None], root_idx_BxC].set(
        True, mode='drop')
    for l in range(1, self.num_levels):
      kl = trie.kmax[l]
      node = jnp.clip(node_B, 0, self.level_sizes[l] - 1)
      ok_BxKl, _ = admissible_children(trie, l, node, c.request, named_BxI)
      ok_BxKl = ok_BxKl & (level_B == l)[:, None]
      tokens_BxKl = offsets_TxL[type_B, l][:, None] + jnp.arange(kl, dtype=jnp.int32)
      span_BxV = span_BxV.at[rows_B[:, None], jnp.where(ok_BxKl, tokens_BxKl, vocab_size)].set(
          True, mode='drop')
    mask_BxV = jnp.where(outside_B[:, None], self.outside_V[None], span_BxV)
    can_open_B = jnp.any(root_ok_BxTxK0, axis=(1, 2)) & (self.settings.output_format != 'text')
    open_B = outside_B & can_open_B & (num_items_B < self.item_slots)
    mask_BxV = mask_BxV.at[:, c.vocab.open_id].set(open_B)
    return mask_BxV.at[:, c.vocab.close_id].set(level_B == self.num_levels)

  def advance(self, tok_B, level_B, type_B, node_B):
    """Next (level, type, node) and the completed item and leaf (or -1) after emitting tok_B."""
    trie, vocab = self.constraints.trie, self.constraints.vocab
    num_levels, offsets_TxL = self.num_levels, vocab.offsets_TxL
    in_code_B = (level_B >= 0) & (level_B < num_levels)
    lvl_B = jnp.clip(level_B, 0, num_levels - 1)
    # Level-0 blocks are laid out in type order, so a first code's type is the number of
    # level-0 blocks starting at or before it, minus one.
    type_of_tok_B = jnp.sum(tok_B[:, None] >= offsets_TxL[None, :, 0], axis=1) - 1
    new_type_B = jnp.where(level_B == 0, jnp.clip(type_of_tok_B, 0, self.num_types - 1), type_B)
    code_B = tok_B - offsets_TxL[new_type_B, lvl_B]
    parent_B = jnp.where(level_B == 0, new_type_B, node_B)
    new_node_B = node_B
    for l in range(num_levels):
      child_B = child_index(trie, l, jnp.clip(parent_B, 0, self.level_sizes[l] - 1),
                            jnp.clip(code_B, 0, trie.kmax[l] - 1))
      new_node_B = jnp.where(level_B == l, child_B, new_node_B)
    completes_B = level_B == num_levels - 1
    leaf_B = jnp.clip(new_node_B, 0, trie.num_items - 1)
    item_B = jnp.where(completes_B, trie.leaf_item[leaf_B], -1)
    leaf_B = jnp.where(completes_B, leaf_B, -1)
    next_level_B = jnp.where(
        in_code_B, level_B + 1,
        jnp.where((level_B == _OUTSIDE) & (tok_B == vocab.open_id), 0, _OUTSIDE))
    return next_level_B, new_type_B, new_node_B, item_B, leaf_B

  def beam_step(self, state, mask_BxV):
    """Top-K continuations per request; returns (tok, state reordered to their parents)."""
    k, batch, vocab_size = self.settings.num_beams, self.batch, self.vocab_size
    logp_BxV = jax.nn.log_softmax(state['logits'], axis=-1)
    logp_BxV = jnp.where(mask_BxV, logp_BxV, NEG_INF)
    logp_BxV = jnp.where(state['done'][:, None],
                         jnp.where(self.ids_V == self.settings.pad_id, 0.0, NEG_INF), logp_BxV)
    total_RxC = (state['score'][:, None] + logp_BxV).reshape(batch // k, k * vocab_size)
    score_RxK, index_RxK = jax.lax.top_k(total_RxC, k)
    parent_N = ((index_RxK // vocab_size)
                + (jnp.arange(batch // k, dtype=jnp.int32) * k)[:, None]).reshape(-1)
    tok_N = (index_RxK % vocab_size).reshape(-1).astype(jnp.int32)
    rows = {name: value for name, value in state.items()
            if name not in ('t', 'rng', 'cache', 'rows_only_steps')}
    state = dict(state, **jax.tree.map(lambda x: x[parent_N], rows))
    state['cache'] = gather_batch(state['cache'], parent_N, self.cache_batch_axis)
    state['score'] = score_RxK.reshape(-1)
    return tok_N, state

  def pick(self, state, mask_BxV, key, temperature, sample_codes):
    """One beam: the greedy or sampled token of each row under the mask (pad after the end)."""
    level_B = state['level']
    logits_BxV = jnp.where(mask_BxV, state['logits'], NEG_INF)
    greedy_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    scale = jnp.where(temperature > 0, temperature, 1.0)
    sampled_B = jax.random.categorical(key, logits_BxV / scale, axis=-1).astype(jnp.int32)
    in_code_B = (level_B >= 0) & (level_B < self.num_levels)
    sample_B = (temperature > 0) & (sample_codes | ~in_code_B)
    return jnp.where(state['done'], self.settings.pad_id,
                     jnp.where(sample_B, sampled_B, greedy_B))

  def body(self, temperature, sample_codes, state):
    settings = self.settings
    if settings.constrained:
      mask_BxV = self.mask(state['level'], state['type'], state['node'], state['num_items'],
                           state['leaves'])
    else:  # any token (rows past the SID block are padding of the model's vocabulary)
      mask_BxV = jnp.broadcast_to(self.ids_V < self.constraints.vocab.end,
                                  (self.batch, self.vocab_size))
    rng, key = jax.random.split(state['rng'])
    if settings.num_beams > 1:
      tok_B, state = self.beam_step(state, mask_BxV)
    else:
      tok_B = self.pick(state, mask_BxV, key, temperature, sample_codes)
    t, done_B = state['t'], state['done']
    level_B, type_B, node_B = state['level'], state['type'], state['node']

    next_level_B, next_type_B, next_node_B, item_B, leaf_B = self.advance(tok_B, level_B, type_B,
                                                                          node_B)
    if not settings.constrained:  # spans are not tracked: the tokens need not follow the grammar
      next_level_B = level_B
      item_B = leaf_B = jnp.full_like(item_B, -1)
    live_B = ~done_B
    completes_B = live_B & (item_B >= 0)
    slot_B = jnp.where(completes_B, state['num_items'], self.item_slots)
    items_BxI = state['items'].at[self.rows_B, slot_B].set(item_B, mode='drop')
    leaves_BxI = state['leaves'].at[self.rows_B, slot_B].set(leaf_B, mode='drop')
    new_done_B = done_B | ((level_B == _OUTSIDE) & (tok_B == settings.eos_id))
    new_level_B = jnp.where(live_B, next_level_B, level_B)
    logits_BxV, cache, rows_only = self.next_logits(tok_B, state['position'] + t, state['cache'],
                                                    live_B, new_level_B, new_done_B)
    return {
        't': t + 1,
        'logits': logits_BxV,
        'cache': cache,
        'rows_only_steps': state['rows_only_steps'] + rows_only.astype(jnp.int32),
        'level': new_level_B,
        'type': jnp.where(live_B, next_type_B, type_B),
        'node': jnp.where(live_B, next_node_B, node_B),
        'num_items': state['num_items'] + completes_B.astype(jnp.int32),
        'items': items_BxI,
        'leaves': leaves_BxI,
        'done': new_done_B,
        'tokens': state['tokens'].at[:, t].set(tok_B),
        'lengths': state['lengths'] + live_B.astype(jnp.int32),
        'position': state['position'],
        'rng': rng,
        'score': state['score'],
    }
