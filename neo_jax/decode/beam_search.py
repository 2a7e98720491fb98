"""Trie-constrained beam search over SIDs, in the manner of t5x decoding.

The caller runs the prompt (ending with `[SID]`) once per request (`interface.prefill`); the
search takes the model through `interface.DecodingModel`, the request constraints as one
`interface.Constraints` pytree, and decodes exactly `num_levels` codes per beam. The beams of a
request read its prompt's cache in place and keep only their decoded tokens per beam
(`shared_prompt=True`, for models that follow `interface.BeamStepModel` and for the decoder,
through `shared_prompt.SharedPromptDecoder`); other models, or shared_prompt=False, give each
beam a copy of the prompt's cache (`cache.repeat_batch`) and re-gather it by parent per level.
Both compute the same scores (up to float rounding). State has fixed shapes; requests and beams are flattened together
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
from neo_jax.decode.shared_prompt import beam_model, gather_beams
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


def first_level_tokens(vocab: SIDVocabArrays, kmax0: int, vocab_size: int) -> jax.Array:
  """The token ids of every type's level-0 code slots (T * kmax0,), clipped to the
  vocabulary: the only logits the first level reads under score='codes'."""
  tokens_TxK0 = vocab.offsets_TxL[:, 0, None] + jnp.arange(kmax0, dtype=jnp.int32)
  return jnp.minimum(tokens_TxK0.reshape(-1), vocab_size - 1)


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
  tokens_C = first_level_tokens(vocab, k0, vocab_size)
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


class _Beams:
  """The beams' cache during a search: the prompt's cache shared in place plus a per-beam
  cache of the decoded tokens (a `BeamStepModel`), or one copy of everything per beam."""

  def __init__(self, model, cache, batch: int, k: int, steps: int, shared: bool,
               cache_batch_axis: CacheBatchAxis):
    self.model, self.batch, self.k = model, batch, k
    self.stepper = beam_model(model) if shared else None
    self.cache_batch_axis = cache_batch_axis
    if self.stepper is None:
      self.state = repeat_batch(cache, k, cache_batch_axis)
    else:
      self.state = (cache, self.stepper.init_beam_cache(batch, k, max(steps, 1)))

  def step(self, token_BxK, position_BxK):
    """Feeds one token per beam; the final hidden states (B * K, 1, D)."""
    n = self.batch * self.k
    if self.stepper is None:
      hidden_Nx1xD, self.state = self.model.decode_hidden(
          token_BxK.reshape(n, 1), position_BxK.reshape(n, 1), self.state,
          jnp.ones((n, 1), bool))
      return hidden_Nx1xD
    prompt, beams = self.state
    hidden_BxKxD, beams = self.stepper.beam_step(token_BxK, position_BxK, prompt, beams)
    self.state = (prompt, beams)
    return hidden_BxKxD.reshape(n, 1, hidden_BxKxD.shape[-1])

  def reorder(self, parent_BxK):
    """New beam k of request b continues old beam parent_BxK[b, k] of the same request."""
    if self.stepper is None:
      rows_N = (jnp.arange(self.batch, dtype=jnp.int32)[:, None] * self.k + parent_BxK)
      self.state = gather_batch(self.state, rows_N.reshape(-1), self.cache_batch_axis)
    else:
      prompt, beams = self.state
      self.state = (prompt, gather_beams(beams, parent_BxK))


def _code_logits(model: DecodingModel, hidden_Nx1xD, offsets_TxL, type_BxK, level: int,
                 kl: int, vocab_size: int, score: str):
  """Logits of the level's kl codes of each beam's type (B, K, kl) float32, log-softmaxed over
  the vocabulary for 'vocab', from the beams' hidden states after their last token."""
  batch, k = type_BxK.shape
  codes_Kl = jnp.arange(kl, dtype=jnp.int32)
  if score == 'codes':
    # Only the level's code rows of every type: T * kl LM-head rows instead of V.
    num_types = offsets_TxL.shape[0]
    rows_R = jnp.minimum((offsets_TxL[:, level, None] + codes_Kl).reshape(-1), vocab_size - 1)
    logits_NxR = model.logits_from_hidden(hidden_Nx1xD, rows_R)
    logits_BxKxTxKl = logits_NxR[:, -1].astype(jnp.float32).reshape(batch, k, num_types, kl)
    return jnp.take_along_axis(logits_BxKxTxKl, type_BxK[:, :, None, None], axis=2)[:, :, 0]
  logits_Nx1xV = model.logits_from_hidden(hidden_Nx1xD)
  logits_BxKxV = logits_Nx1xV[:, -1].astype(jnp.float32).reshape(batch, k, vocab_size)
  logits_BxKxV = jax.nn.log_softmax(logits_BxKxV, axis=-1)
  tokens_BxKxKl = jnp.minimum(offsets_TxL[type_BxK, level][..., None] + codes_Kl, vocab_size - 1)
  return jnp.take_along_axis(logits_BxKxV, tokens_BxKxKl, axis=2)


@functools.partial(jax.jit, static_argnames=('model', 'num_beams', 'score', 'cache_batch_axis',
                                             'shared_prompt'))
def sid_beam_search(model: DecodingModel, cache, prefill: Prefill, constraints: Constraints,
                    num_beams: int, score: str = 'vocab',
                    cache_batch_axis: CacheBatchAxis = default_cache_batch_axis,
                    shared_prompt: bool = True) -> tuple[jax.Array, jax.Array]:
  """The num_beams most probable admissible catalog items under the model, per request.

  Args:
    model: a `DecodingModel` (neo_jax/decode/interface.py); static, hashed by identity, so pass
      the same object to reuse the compiled search. To keep large parameters out of the
      compiled constants, call this from inside a jitted function that takes the parameters as
      arguments (and builds the model there, e.g. `nnx.merge`).
    cache: the cache after the prompts (batch B), each prompt ending with `[SID]`; it needs room
      for num_levels - 1 more tokens unless the beams share it (see shared_prompt).
    prefill: the prompts' `Prefill`: logits (B, V) after each prompt (they score the first code)
      and positions (B,); code l is fed at position + 1 + l.
    constraints: the trie (with its current liveness), the SID token layout, the allowed types
      (B, T) and the request filter (exclusions, allow-lists) of the B requests.
    num_beams: K (static).
    score: 'vocab' or 'codes' (static), see the module docstring.
    cache_batch_axis: the cache layout rule (static; neo_jax/decode/cache.py); used when the
      beams copy the cache.
    shared_prompt: (static) the beams read the prompt's cache in place when the model allows
      it (module docstring); False: each beam gets a copy (the reference path).

  Returns:
    items_BxK int32 catalog rows, best first, -1 where fewer than K items are admissible;
    scores_BxK float32 sums of the codes' log-probabilities (nats), NEG_INF where the item is -1.
  """
  _check_inputs(model, prefill, constraints, num_beams, score)
  trie, offsets_TxL = constraints.trie, constraints.vocab.offsets_TxL
  batch, vocab_size = prefill.logits_BxV.shape
  k = num_beams
  score_BxK, ok_BxK, type_BxK, node_BxK, token_BxK = _first_level(prefill, constraints, k, score)

  beams = _Beams(model, cache, batch, k, trie.num_levels - 1, shared_prompt, cache_batch_axis)
  position_BxK = jnp.broadcast_to(prefill.positions_B[:, None].astype(jnp.int32) + 1, (batch, k))

  for level in range(1, trie.num_levels):
    kl = trie.kmax[level]
    hidden_Nx1xD = beams.step(token_BxK, position_BxK)
    logits_BxKxKl = _code_logits(model, hidden_Nx1xD, offsets_TxL, type_BxK, level, kl,
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
    if level < trie.num_levels - 1:  # the last level's choice feeds nothing
      beams.reorder(parent_BxK)
    position_BxK = position_BxK + 1

  leaf_BxK = jnp.clip(jnp.where(ok_BxK, node_BxK, 0), 0, num_nodes(trie, trie.num_levels) - 1)
  items_BxK = jnp.where(ok_BxK, trie.leaf_item[leaf_BxK], -1)
  scores_BxK = jnp.where(ok_BxK, score_BxK, NEG_INF)
  return items_BxK, scores_BxK


@functools.partial(jax.jit, static_argnames=('model', 'num_beams', 'num_steps',
                                             'cache_batch_axis', 'shared_prompt'))
def vocab_beam_search(model: DecodingModel, cache, prefill: Prefill, num_beams: int,
                      num_steps: int, cache_batch_axis: CacheBatchAxis = default_cache_batch_axis,
                      shared_prompt: bool = True) -> tuple[jax.Array, jax.Array]:
  """Unconstrained beam search over the full vocabulary, the usual baseline: num_steps tokens
  per beam, each step a top-k over K * V continuations of full log-softmaxes.

  Same contract as `sid_beam_search`, without constraints (the cache needs room for
  num_steps - 1 more tokens when the beams copy it; num_beams, num_steps and shared_prompt
  static), the beams' cache handled the same way.

  Returns:
    tokens_BxKxS int32 best first, scores_BxK float32 sums of log-probabilities (nats).
  """
  check_model(model, 'vocab_beam_search')
  batch, vocab_size = prefill.check()
  k = num_beams
  logp_BxV = jax.nn.log_softmax(prefill.logits_BxV.astype(jnp.float32), axis=-1)
  score_BxK, token_BxK = jax.lax.top_k(logp_BxV, k)
  tokens_BxKxS = token_BxK[..., None].astype(jnp.int32)
  beams = _Beams(model, cache, batch, k, num_steps - 1, shared_prompt, cache_batch_axis)
  position_BxK = jnp.broadcast_to(prefill.positions_B[:, None].astype(jnp.int32) + 1, (batch, k))
  for step in range(1, num_steps):
    hidden_Nx1xD = beams.step(tokens_BxKxS[:, :, -1], position_BxK)
    logits_Nx1xV = model.logits_from_hidden(hidden_Nx1xD)
    logp_BxKxV = jax.nn.log_softmax(logits_Nx1xV[:, -1].astype(jnp.float32), axis=-1)
    total_BxC = (score_BxK[..., None] + logp_BxKxV.reshape(batch, k, vocab_size)).reshape(
        batch, -1)
    score_BxK, index_BxK = jax.lax.top_k(total_BxC, k)
    parent_BxK = index_BxK // vocab_size
    tokens_BxKxS = jnp.concatenate(
        [jnp.take_along_axis(tokens_BxKxS, parent_BxK[..., None], axis=1),
         (index_BxK % vocab_size)[..., None].astype(jnp.int32)], axis=2)
    if step < num_steps - 1:
      beams.reorder(parent_BxK)
    position_BxK = position_BxK + 1
  return tokens_BxKxS, score_BxK


@functools.partial(jax.jit, static_argnames=('model', 'sizes_L', 'num_beams', 'score',
                                             'shared_prompt'))
def code_beam_search(model: DecodingModel, cache, prefill: Prefill, offsets_L: jax.Array,
                     sizes_L: tuple[int, ...], num_beams: int, score: str = 'codes',
                     shared_prompt: bool = True) -> tuple[jax.Array, jax.Array]:
  """Unconstrained SID decoding of one type: at level l every one of the type's sizes_L[l]
  code tokens (from offsets_L[l]) is a candidate of every beam, no trie. With score='codes' it
  computes the same LM-head rows per step as `sid_beam_search` does, with 'vocab' the full head,
  so it is the reference that isolates what the trie's constraints cost per step.

  Args:
    offsets_L: int32 (L,) first token id of each level's codes; sizes_L: (static) codes per
      level. The other arguments as `sid_beam_search`.

  Returns:
    tokens_BxKxL int32 best first, scores_BxK float32 (nats, normalised as `score`).
  """
  check_model(model, 'code_beam_search')
  if score not in SCORES:
    raise ValueError(f'unknown score {score!r}; known: {SCORES}')
  batch, vocab_size = prefill.check()
  sizes_L = tuple(int(x) for x in sizes_L)
  k, num_levels = num_beams, len(sizes_L)
  offsets_Lx1 = jnp.asarray(offsets_L, jnp.int32)[:, None]

  def logp_of(logits_NxC, level):
    if score == 'codes':  # logits of the level's rows only: normalise over them
      return jax.nn.log_softmax(logits_NxC, axis=-1)
    return logits_NxC  # already log-softmaxed over the vocabulary

  def level_logits(hidden_NxD, level):
    rows_C = offsets_Lx1[level, 0] + jnp.arange(sizes_L[level], dtype=jnp.int32)
    if score == 'codes':
      return model.logits_from_hidden(hidden_NxD, rows_C).astype(jnp.float32)
    full = jax.nn.log_softmax(model.logits_from_hidden(hidden_NxD).astype(jnp.float32), -1)
    return full[..., rows_C]

  first = prefill.logits_BxV.astype(jnp.float32)
  if score == 'vocab':
    first = jax.nn.log_softmax(first, axis=-1)
  rows0 = offsets_Lx1[0, 0] + jnp.arange(sizes_L[0], dtype=jnp.int32)
  score_BxK, code_BxK = _top_k_valid(logp_of(first[:, rows0], 0),
                                     jnp.ones((batch, sizes_L[0]), bool), k)[:2]
  codes_BxKxS = code_BxK[..., None]
  beams = _Beams(model, cache, batch, k, num_levels - 1, shared_prompt, default_cache_batch_axis)
  position_BxK = jnp.broadcast_to(prefill.positions_B[:, None].astype(jnp.int32) + 1, (batch, k))
  for level in range(1, num_levels):
    token_BxK = offsets_Lx1[level - 1, 0] + codes_BxKxS[:, :, -1]
    hidden_Nx1xD = beams.step(token_BxK, position_BxK)
    logp_BxKxC = logp_of(level_logits(hidden_Nx1xD[:, -1], level), level).reshape(batch, k, -1)
    c = sizes_L[level]
    total_BxC = (score_BxK[..., None] + logp_BxKxC).reshape(batch, -1)
    score_BxK, index_BxK = jax.lax.top_k(total_BxC, k)
    parent_BxK = index_BxK // c
    codes_BxKxS = jnp.concatenate(
        [jnp.take_along_axis(codes_BxKxS, parent_BxK[..., None], axis=1),
         (index_BxK % c)[..., None]], axis=2)
    if level < num_levels - 1:
      beams.reorder(parent_BxK)
    position_BxK = position_BxK + 1
  return (offsets_Lx1[:, 0] + codes_BxKxS).astype(jnp.int32), score_BxK
