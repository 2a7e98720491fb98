"""Trie-constrained beam search over SIDs, in the manner of t5x decoding.

The caller runs the prompt (ending with `[SID]`) once per request (`interface.prefill`); the
search takes the model through `interface.DecodingModel`, the request constraints as one
`interface.Constraints` pytree, repeats the prompt's cache for the beams and decodes exactly
`num_levels` codes per beam. State has fixed shapes; requests and beams are flattened together
(row b * K + k); masked candidates get the finite NEG_INF.
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
           type's level-0 codes, level l >= 1 over the beam's type's level-l codes. Only those
           T * kmax_l LM-head rows are computed (`logits_from_hidden(h, rows)`, a few hundred
           instead of V), which is what makes a constrained step cheaper than an unconstrained
           one.
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

from neo_jax.decode.cache import (CacheBatchAxis, default_cache_batch_axis, gather_batch,
                                  repeat_batch)
from neo_jax.decode.interface import Constraints, DecodingModel, Prefill, check_model
from neo_jax.decode.trie import admissible_children, num_nodes

SCORES = ('vocab', 'codes')

# Finite, so that sums and differences of masked scores never produce NaN, and far below any
# sum of num_levels float32 log-probabilities of finite logits.
NEG_INF = -1.0e30


def _check_inputs(model, prefill: Prefill, constraints: Constraints, num_beams: int,
                  score: str) -> None:
  check_model(model, 'sid_beam_search')
  batch, _ = prefill.check(constraints.vocab)
  constraints.check(batch)
  if not 1 <= num_beams:
    raise ValueError(f'num_beams must be >= 1, got {num_beams}')
  if score not in SCORES:
    raise ValueError(f'unknown score {score!r}; known: {SCORES}')


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


def _first_level(prefill: Prefill, constraints: Constraints, k: int, score: str):
  """Level 0: every type's level-0 codes are candidates of the one prompt state per request.

  Returns the top k beams: (score, ok, type, trie node, token), each (B, k).
  """
  trie, vocab = constraints.trie, constraints.vocab
  batch, vocab_size = prefill.logits_BxV.shape
  k0 = trie.kmax[0]
  logits_BxV = prefill.logits_BxV.astype(jnp.float32)
  if score == 'vocab':
    logits_BxV = jax.nn.log_softmax(logits_BxV, axis=-1)
  tokens_TxK0 = vocab.offsets_TxL[:, 0, None] + jnp.arange(k0, dtype=jnp.int32)
  tokens_C = jnp.minimum(tokens_TxK0.reshape(-1), vocab_size - 1)
  logp_BxC = logits_BxV[:, tokens_C]
  if score == 'codes':  # one softmax over the real level-0 codes of all types
    real_C = (jnp.arange(k0)[None, :] < vocab.sizes_TxL[:, 0, None]).reshape(-1)
    masked = jnp.where(real_C, logp_BxC, -jnp.inf)
    logp_BxC = jnp.where(real_C, masked - jax.nn.logsumexp(masked, -1, keepdims=True), NEG_INF)
  types_BxT = jnp.broadcast_to(jnp.arange(trie.num_types, dtype=jnp.int32),
                               (batch, trie.num_types))
  ok_BxTxK0, child_BxTxK0 = admissible_children(trie, 0, types_BxT, constraints.request)
  if constraints.allowed_types_BxT is not None:
    ok_BxTxK0 = ok_BxTxK0 & constraints.allowed_types_BxT.astype(bool)[:, :, None]
  score_BxK, index_BxK, ok_BxK = _top_k_valid(logp_BxC, ok_BxTxK0.reshape(batch, -1), k)
  type_BxK = index_BxK // k0
  node_BxK = jnp.take_along_axis(child_BxTxK0.reshape(batch, -1), index_BxK, axis=1)
  return score_BxK, ok_BxK, type_BxK, node_BxK, tokens_C[index_BxK]


def _code_logits(model: DecodingModel, feed, offsets_TxL, type_BxK, level: int, kl: int,
                 vocab_size: int, score: str):
  """Feeds one token per beam; returns (logits of the level's kl codes of each beam's type
  (B, K, kl) float32, log-softmaxed over the vocabulary for 'vocab'; the cache)."""
  batch, k = type_BxK.shape
  codes_Kl = jnp.arange(kl, dtype=jnp.int32)
  hidden_Nx1xD, cache = model.decode_hidden(*feed)
  if score == 'codes':
    # Only the level's code rows of every type: T * kl LM-head rows instead of V.
    num_types = offsets_TxL.shape[0]
    rows_R = jnp.minimum((offsets_TxL[:, level, None] + codes_Kl).reshape(-1), vocab_size - 1)
    logits_NxR = model.logits_from_hidden(hidden_Nx1xD, rows_R)
    logits_BxKxTxKl = logits_NxR[:, -1].astype(jnp.float32).reshape(batch, k, num_types, kl)
    return jnp.take_along_axis(logits_BxKxTxKl, type_BxK[:, :, None, None], axis=2)[:, :, 0], cache
  logits_Nx1xV = model.logits_from_hidden(hidden_Nx1xD)
  logits_BxKxV = logits_Nx1xV[:, -1].astype(jnp.float32).reshape(batch, k, vocab_size)
  logits_BxKxV = jax.nn.log_softmax(logits_BxKxV, axis=-1)
  tokens_BxKxKl = jnp.minimum(offsets_TxL[type_BxK, level][..., None] + codes_Kl, vocab_size - 1)
  return jnp.take_along_axis(logits_BxKxV, tokens_BxKxKl, axis=2), cache


@functools.partial(jax.jit, static_argnames=('model', 'num_beams', 'score', 'cache_batch_axis'))
def sid_beam_search(model: DecodingModel, cache, prefill: Prefill, constraints: Constraints,
                    num_beams: int, score: str = 'vocab',
                    cache_batch_axis: CacheBatchAxis = default_cache_batch_axis,
                    ) -> tuple[jax.Array, jax.Array]:
  """The num_beams most probable admissible catalog items under the model, per request.

  Args:
    model: a `DecodingModel` (neo_jax/decode/interface.py); static, hashed by identity, so pass
      the same object to reuse the compiled search. To keep large parameters out of the
      compiled constants, call this from inside a jitted function that takes the parameters as
      arguments (and builds the model there, e.g. `nnx.merge`).
    cache: the cache after the prompts (batch B), each prompt ending with `[SID]`; it needs room
      for num_levels - 1 more tokens.
    prefill: the prompts' `Prefill`: logits (B, V) after each prompt (they score the first code)
      and positions (B,); code l is fed at position + 1 + l.
    constraints: the trie (with its current liveness), the SID token layout, the allowed types
      (B, T) and the request filter (exclusions, allow-lists) of the B requests.
    num_beams: K (static).
    score: 'vocab' or 'codes' (static), see the module docstring.
    cache_batch_axis: the cache layout rule (static; neo_jax/decode/cache.py).

  Returns:
    items_BxK int32 catalog rows, best first, -1 where fewer than K items are admissible;
    scores_BxK float32 sums of the codes' log-probabilities (nats), NEG_INF where the item is -1.
  """
  _check_inputs(model, prefill, constraints, num_beams, score)
  trie, offsets_TxL = constraints.trie, constraints.vocab.offsets_TxL
  batch, vocab_size = prefill.logits_BxV.shape
  k = num_beams
  score_BxK, ok_BxK, type_BxK, node_BxK, token_BxK = _first_level(prefill, constraints, k, score)

  cache = repeat_batch(cache, k, cache_batch_axis)
  position_BxK = jnp.broadcast_to(prefill.positions_B[:, None].astype(jnp.int32) + 1, (batch, k))
  row_offset_Bx1 = (jnp.arange(batch, dtype=jnp.int32) * k)[:, None]
  feed_valid_Nx1 = jnp.ones((batch * k, 1), bool)

  for level in range(1, trie.num_levels):
    kl = trie.kmax[level]
    feed = (token_BxK.reshape(-1, 1), position_BxK.reshape(-1, 1), cache, feed_valid_Nx1)
    logits_BxKxKl, cache = _code_logits(model, feed, offsets_TxL, type_BxK, level, kl,
                                        vocab_size, score)
    logp_BxKxKl = _code_logp(logits_BxKxKl, constraints.vocab.sizes_TxL[type_BxK, level], score)
    # Inadmissible beams carry a garbage node; any in-range node will do since ok masks it.
    safe_node_BxK = jnp.where(ok_BxK, node_BxK, 0)
    ok_BxKxKl, child_BxKxKl = admissible_children(trie, level, safe_node_BxK,
                                                  constraints.request)
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

  leaf_BxK = jnp.clip(jnp.where(ok_BxK, node_BxK, 0), 0, num_nodes(trie, trie.num_levels) - 1)
  items_BxK = jnp.where(ok_BxK, trie.leaf_item[leaf_BxK], -1)
  scores_BxK = jnp.where(ok_BxK, score_BxK, NEG_INF)
  return items_BxK, scores_BxK


@functools.partial(jax.jit, static_argnames=('model', 'num_beams', 'num_steps',
                                             'cache_batch_axis'))
def vocab_beam_search(model: DecodingModel, cache, prefill: Prefill, num_beams: int,
                      num_steps: int, cache_batch_axis: CacheBatchAxis = default_cache_batch_axis
                      ) -> tuple[jax.Array, jax.Array]:
  """Unconstrained beam search over the full vocabulary, the usual baseline: num_steps tokens
  per beam, each step a top-k over K * V continuations of full log-softmaxes.

  Same contract as `sid_beam_search`, without constraints (the cache needs room for
  num_steps - 1 more tokens; num_beams and num_steps static).

  Returns:
    tokens_BxKxS int32 best first, scores_BxK float32 sums of log-probabilities (nats).
  """
  check_model(model, 'vocab_beam_search')
  batch, vocab_size = prefill.check()
  k = num_beams
  logp_BxV = jax.nn.log_softmax(prefill.logits_BxV.astype(jnp.float32), axis=-1)
  score_BxK, token_BxK = jax.lax.top_k(logp_BxV, k)
  tokens_BxKxS = token_BxK[..., None].astype(jnp.int32)
  cache = repeat_batch(cache, k, cache_batch_axis)
  position_BxK = jnp.broadcast_to(prefill.positions_B[:, None].astype(jnp.int32) + 1, (batch, k))
  row_offset_Bx1 = (jnp.arange(batch, dtype=jnp.int32) * k)[:, None]
  valid_Nx1 = jnp.ones((batch * k, 1), bool)
  for _ in range(1, num_steps):
    hidden_Nx1xD, cache = model.decode_hidden(tokens_BxKxS[:, :, -1].reshape(-1, 1),
                                              position_BxK.reshape(-1, 1), cache, valid_Nx1)
    logits_Nx1xV = model.logits_from_hidden(hidden_Nx1xD)
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
