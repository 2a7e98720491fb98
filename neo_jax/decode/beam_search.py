"""Trie-constrained beam search over SIDs, in the manner of t5x decoding.

The caller runs the prompt (ending with `[SID]`) once per request; the search repeats its cache
for the beams and decodes exactly `num_levels` codes per beam. State has fixed shapes; requests
and beams are flattened together (row b * K + k); masked candidates get the finite NEG_INF.
A beam's candidates at level l are the kmax[l] codes of its type's level-l block, scored from
the log-softmax over the whole vocabulary and restricted to the children of the beam's trie
node; at level 0 the candidates are every type's level-0 codes, restricted by the request's
allowed types. Distinct beams hold distinct prefixes, so the returned items are distinct.

A candidate code is kept only if its trie child still leads to an admissible item (live after
catalog updates, not excluded by the request, in its allow-list: see `trie.admissible_children`),
so beams never end in a dead prefix: with num_beams >= the number of admissible items the
search returns all of them, best first, i.e. it equals exhaustive search.

Scores (`score`):
  'vocab'  log-probabilities under the model's full softmax, the exact model probability of
           the item given the prompt. Every step computes all V LM-head rows.
  'codes'  at each level the log-softmax over that level's code tokens only: level 0 over every
           type's level-0 codes, level l >= 1 over the beam's type's level-l codes. With a
           `row_step_fn` only those T * kmax_l LM-head rows are computed (a few hundred instead
           of V), which is what makes a constrained step cheaper than an unconstrained one.
           The score of an item differs from 'vocab' by the sum over levels of
           log P(next token is a level-l code | prefix), which depends on the prefix, so it can
           reorder items across beams; for a model trained on the SID grammar that mass is
           close to 1 inside a span and the difference is small. It does not depend on the trie
           or on the request's constraints, unlike renormalising over the admissible codes,
           which would favour sparse branches (a node with one live child scores log 1 = 0 there)
           and change with every exclusion.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from neo_jax.decode.cache import (CacheBatchAxis, RowStepFn, StepFn, default_cache_batch_axis,
                                  gather_batch, repeat_batch)
from neo_jax.decode.trie import (RequestFilter, SIDTrie, SIDVocabArrays, admissible_children,
                                 num_nodes)

SCORES = ('vocab', 'codes')

# Finite, so that sums and differences of masked scores never produce NaN, and far below any
# sum of num_levels float32 log-probabilities of finite logits.
NEG_INF = -1.0e30


def check_prefill(last_logits_BxV, last_positions_B, vocab: SIDVocabArrays) -> tuple[int, int]:
  """Checks what a prefill hands to a search; returns (B, V)."""
  if last_logits_BxV.ndim != 2:
    raise ValueError(f'last_logits_BxV must be (B, V), got {last_logits_BxV.shape}')
  batch, v = last_logits_BxV.shape
  if last_positions_B.shape != (batch,):
    raise ValueError(f'last_positions_B must be ({batch},), got {last_positions_B.shape}')
  if v < vocab.end:
    raise ValueError(f'logits have {v} entries but the SID block ends at id {vocab.end}')
  return batch, v


def _check_inputs(last_logits_BxV, last_positions_B, trie: SIDTrie, vocab: SIDVocabArrays,
                  num_beams: int, allowed_types_BxT, request, score, step_fn, row_step_fn):
  batch, _ = check_prefill(last_logits_BxV, last_positions_B, vocab)
  if vocab.offsets_TxL.shape != (trie.num_types, trie.num_levels):
    raise ValueError(f'SID vocabulary arrays are {vocab.offsets_TxL.shape}, the trie has '
                     f'{trie.num_types} types x {trie.num_levels} levels')
  if not 1 <= num_beams:
    raise ValueError(f'num_beams must be >= 1, got {num_beams}')
  if allowed_types_BxT is not None and allowed_types_BxT.shape != (batch, trie.num_types):
    raise ValueError(f'allowed_types_BxT must be ({batch}, {trie.num_types}), got '
                     f'{allowed_types_BxT.shape}')
  if request is not None and request.batch != batch:
    raise ValueError(f'request filter is for {request.batch} requests, the batch has {batch}')
  if score not in SCORES:
    raise ValueError(f'unknown score {score!r}; known: {SCORES}')
  if row_step_fn is not None and score != 'codes':
    raise ValueError("row_step_fn computes only code rows, which needs score='codes'")
  if step_fn is None and row_step_fn is None:
    raise ValueError('sid_beam_search needs a step_fn or a row_step_fn')


def _top_k_valid(score_BxC, ok_BxC, k):
  """Top k candidates by score among the admissible ones; (score, index, ok), each (B, k)."""
  c = score_BxC.shape[1]
  if c < k:  # fewer candidates than beams: pad with inadmissible ones
    pad = ((0, 0), (0, k - c))
    score_BxC = jnp.pad(score_BxC, pad, constant_values=NEG_INF)
    ok_BxC = jnp.pad(ok_BxC, pad, constant_values=False)
  masked = jnp.where(ok_BxC, score_BxC, NEG_INF)
  score_BxK, index_BxK = jax.lax.top_k(masked, k)
  ok_BxK = jnp.take_along_axis(ok_BxC, index_BxK, axis=1)
  return score_BxK, jnp.minimum(index_BxK, c - 1), ok_BxK


def _code_logp(logits_BxKxC, sizes_BxK, score):
  """Log-probabilities of a level's C = kmax codes; with score='codes' normalised over the real
  codes (index < size) only. logits_BxKxC are log-softmaxed already for 'vocab'."""
  if score == 'vocab':
    return logits_BxKxC
  real = jnp.arange(logits_BxKxC.shape[-1]) < sizes_BxK[..., None]
  norm = jax.nn.logsumexp(jnp.where(real, logits_BxKxC, -jnp.inf), axis=-1, keepdims=True)
  return jnp.where(real, logits_BxKxC - norm, NEG_INF)


@functools.partial(jax.jit, static_argnames=('step_fn', 'num_beams', 'cache_batch_axis', 'score',
                                             'row_step_fn'))
def sid_beam_search(step_fn: StepFn | None, cache, last_logits_BxV: jax.Array,
                    last_positions_B: jax.Array, trie: SIDTrie, sid_vocab_arrays: SIDVocabArrays,
                    num_beams: int, allowed_types_BxT: jax.Array | None = None,
                    cache_batch_axis: CacheBatchAxis = default_cache_batch_axis,
                    request: RequestFilter | None = None, score: str = 'vocab',
                    row_step_fn: RowStepFn | None = None,
                    ) -> tuple[jax.Array, jax.Array]:
  """The num_beams most probable admissible catalog items under the model, per request.

  Args:
    step_fn: the model closure (see neo_jax/decode/cache.py); static, so pass the same function
      object to reuse the compiled search. To keep large parameters out of the compiled
      constants, call this from inside a jitted function that takes the parameters as arguments.
      May be None when `row_step_fn` is given.
    cache: the cache after the prompts (batch B), each prompt ending with `[SID]`; it needs room
      for num_levels - 1 more tokens.
    last_logits_BxV: float logits after each prompt's last token (they score the first code).
    last_positions_B: int32 position of each prompt's last token; code l is fed at
      last_positions_B + 1 + l.
    trie: the valid SIDs (with their current liveness).
    sid_vocab_arrays: the SID token layout.
    num_beams: K (static).
    allowed_types_BxT: bool, entity types each request may name; None allows every type.
    cache_batch_axis: the cache layout rule (static).
    request: per-request exclusions and allow-lists (`trie.request_filter`); None: none.
    score: 'vocab' or 'codes' (static), see the module docstring.
    row_step_fn: static, `row_step_fn(tokens, positions, cache, valid, rows_R)` -> (logits
      (N, T, R) of the LM-head rows `rows_R` only, cache); used with score='codes'.

  Returns:
    items_BxK int32 catalog rows, best first, -1 where fewer than K items are admissible;
    scores_BxK float32 sums of the codes' log-probabilities, NEG_INF where the item is -1.
  """
  _check_inputs(last_logits_BxV, last_positions_B, trie, sid_vocab_arrays, num_beams,
                allowed_types_BxT, request, score, step_fn, row_step_fn)
  batch, vocab_size = last_logits_BxV.shape
  k = num_beams
  offsets_TxL = sid_vocab_arrays.offsets_TxL
  sizes_TxL = sid_vocab_arrays.sizes_TxL
  num_levels, num_types = trie.num_levels, trie.num_types

  # Level 0: every type's level-0 codes are candidates of the one prompt state per request.
  k0 = trie.kmax[0]
  logits_BxV = last_logits_BxV.astype(jnp.float32)
  if score == 'vocab':
    logits_BxV = jax.nn.log_softmax(logits_BxV, axis=-1)
  tokens_TxK0 = offsets_TxL[:, 0, None] + jnp.arange(k0, dtype=jnp.int32)
  tokens_C = jnp.minimum(tokens_TxK0.reshape(-1), vocab_size - 1)
  logp_BxC = logits_BxV[:, tokens_C]
  if score == 'codes':  # one softmax over the real level-0 codes of all types
    real_C = (jnp.arange(k0)[None, :] < sizes_TxL[:, 0, None]).reshape(-1)
    masked = jnp.where(real_C, logp_BxC, -jnp.inf)
    logp_BxC = jnp.where(real_C, masked - jax.nn.logsumexp(masked, -1, keepdims=True), NEG_INF)
  types_BxT = jnp.broadcast_to(jnp.arange(num_types, dtype=jnp.int32), (batch, num_types))
  ok_BxTxK0, child_BxTxK0 = admissible_children(trie, 0, types_BxT, request)
  if allowed_types_BxT is not None:
    ok_BxTxK0 = ok_BxTxK0 & allowed_types_BxT.astype(bool)[:, :, None]
  score_BxK, index_BxK, ok_BxK = _top_k_valid(logp_BxC, ok_BxTxK0.reshape(batch, -1), k)
  type_BxK = index_BxK // k0
  node_BxK = jnp.take_along_axis(child_BxTxK0.reshape(batch, -1), index_BxK, axis=1)
  token_BxK = tokens_C[index_BxK]

  cache = repeat_batch(cache, k, cache_batch_axis)
  position_BxK = jnp.broadcast_to(last_positions_B[:, None].astype(jnp.int32) + 1, (batch, k))
  row_offset_Bx1 = (jnp.arange(batch, dtype=jnp.int32) * k)[:, None]
  feed_valid_Nx1 = jnp.ones((batch * k, 1), bool)

  for level in range(1, num_levels):
    kl = trie.kmax[level]
    codes_Kl = jnp.arange(kl, dtype=jnp.int32)
    feed = (token_BxK.reshape(-1, 1), position_BxK.reshape(-1, 1), cache, feed_valid_Nx1)
    if row_step_fn is not None:
      # Only the level's code rows of every type: T * kl LM-head rows instead of V.
      rows_R = jnp.minimum((offsets_TxL[:, level, None] + codes_Kl).reshape(-1), vocab_size - 1)
      logits_NxR, cache = row_step_fn(*feed, rows_R)
      logits_BxKxTxKl = logits_NxR[:, -1].astype(jnp.float32).reshape(batch, k, num_types, kl)
      logits_BxKxKl = jnp.take_along_axis(
          logits_BxKxTxKl, type_BxK[:, :, None, None], axis=2)[:, :, 0]
    else:
      logits_Nx1xV, cache = step_fn(*feed)
      logits_BxKxV = logits_Nx1xV[:, -1].astype(jnp.float32).reshape(batch, k, vocab_size)
      if score == 'vocab':
        logits_BxKxV = jax.nn.log_softmax(logits_BxKxV, axis=-1)
      tokens_BxKxKl = jnp.minimum(offsets_TxL[type_BxK, level][..., None] + codes_Kl,
                                  vocab_size - 1)
      logits_BxKxKl = jnp.take_along_axis(logits_BxKxV, tokens_BxKxKl, axis=2)
    logp_BxKxKl = _code_logp(logits_BxKxKl, sizes_TxL[type_BxK, level], score)
    # Inadmissible beams carry a garbage node; any in-range node will do since ok masks it.
    safe_node_BxK = jnp.where(ok_BxK, node_BxK, 0)
    ok_BxKxKl, child_BxKxKl = admissible_children(trie, level, safe_node_BxK, request)
    ok_BxKxKl = ok_BxKxKl & ok_BxK[..., None]
    total_BxKxKl = score_BxK[..., None] + logp_BxKxKl
    score_BxK, index_BxK, ok_BxK = _top_k_valid(
        total_BxKxKl.reshape(batch, -1), ok_BxKxKl.reshape(batch, -1), k)
    parent_BxK = index_BxK // kl
    code_BxK = index_BxK % kl
    type_BxK = jnp.take_along_axis(type_BxK, parent_BxK, axis=1)
    node_BxK = jnp.take_along_axis(child_BxKxKl.reshape(batch, -1), index_BxK, axis=1)
    token_BxK = offsets_TxL[type_BxK, level] + code_BxK
    cache = gather_batch(cache, (row_offset_Bx1 + parent_BxK).reshape(-1), cache_batch_axis)
    position_BxK = position_BxK + 1

  leaf_BxK = jnp.clip(jnp.where(ok_BxK, node_BxK, 0), 0, num_nodes(trie, num_levels) - 1)
  items_BxK = jnp.where(ok_BxK, trie.leaf_item[leaf_BxK], -1)
  scores_BxK = jnp.where(ok_BxK, score_BxK, NEG_INF)
  return items_BxK, scores_BxK


@functools.partial(jax.jit, static_argnames=('step_fn', 'num_beams', 'num_steps',
                                             'cache_batch_axis'))
def vocab_beam_search(step_fn: StepFn, cache, last_logits_BxV: jax.Array,
                      last_positions_B: jax.Array, num_beams: int, num_steps: int,
                      cache_batch_axis: CacheBatchAxis = default_cache_batch_axis
                      ) -> tuple[jax.Array, jax.Array]:
  """Unconstrained beam search over the full vocabulary, the usual baseline: num_steps tokens
  per beam, each step a top-k over K * V continuations of full log-softmaxes.

  Same contract as `sid_beam_search` (cache room for num_steps - 1 more tokens).

  Returns:
    tokens_BxKxS int32 best first, scores_BxK float32 sums of log-probabilities.
  """
  batch, vocab_size = last_logits_BxV.shape
  k = num_beams
  logp_BxV = jax.nn.log_softmax(last_logits_BxV.astype(jnp.float32), axis=-1)
  score_BxK, token_BxK = jax.lax.top_k(logp_BxV, k)
  tokens_BxKxS = token_BxK[..., None].astype(jnp.int32)
  cache = repeat_batch(cache, k, cache_batch_axis)
  position_BxK = jnp.broadcast_to(last_positions_B[:, None].astype(jnp.int32) + 1, (batch, k))
  row_offset_Bx1 = (jnp.arange(batch, dtype=jnp.int32) * k)[:, None]
  valid_Nx1 = jnp.ones((batch * k, 1), bool)
  for _ in range(1, num_steps):
    logits_Nx1xV, cache = step_fn(tokens_BxKxS[:, :, -1].reshape(-1, 1),
                                  position_BxK.reshape(-1, 1), cache, valid_Nx1)
    logp_BxKxV = jax.nn.log_softmax(logits_Nx1xV[:, -1].astype(jnp.float32), axis=-1)
    total_BxC = (score_BxK[..., None] + logp_BxKxV.reshape(batch, k, vocab_size)).reshape(
        batch, -1)
    score_BxK, index_BxK = jax.lax.top_k(total_BxC, k)
    parent_BxK = index_BxK // vocab_size
    tokens_BxKxS = jnp.concatenate(
        [jnp.take_along_axis(tokens_BxKxS, parent_BxK[..., None], axis=1),
         (index_BxK % vocab_size)[..., None].astype(jnp.int32)], axis=2)
    cache = gather_batch(cache, (row_offset_Bx1 + parent_BxK).reshape(-1), cache_batch_axis)
    position_BxK = position_BxK + 1
  return tokens_BxKxS, score_BxK
