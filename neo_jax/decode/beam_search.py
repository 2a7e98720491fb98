"""Trie-constrained beam search over SIDs, in the manner of t5x decoding.

The caller runs the prompt (ending with `[SID]`) once per request; the search repeats its cache
for the beams and decodes exactly `num_levels` codes per beam. State has fixed shapes; requests
and beams are flattened together (row b * K + k); masked candidates get the finite NEG_INF.
A beam's candidates at level l are the kmax[l] codes of its type's level-l block, scored from
the log-softmax over the whole vocabulary and restricted to the children of the beam's trie
node; at level 0 the candidates are every type's level-0 codes, restricted by the request's
allowed types. Distinct beams hold distinct prefixes, so the returned items are distinct.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from neo_jax.decode.cache import (CacheBatchAxis, StepFn, default_cache_batch_axis,
                                  gather_batch, repeat_batch)
from neo_jax.decode.trie import SIDTrie, SIDVocabArrays, child_index, codes_mask, root_codes_mask

# Finite, so that sums and differences of masked scores never produce NaN, and far below any
# sum of num_levels float32 log-probabilities of finite logits.
NEG_INF = -1.0e30


def _check_inputs(last_logits_BxV, last_positions_B, trie: SIDTrie, vocab: SIDVocabArrays,
                  num_beams: int, allowed_types_BxT):
  if last_logits_BxV.ndim != 2:
    raise ValueError(f'last_logits_BxV must be (B, V), got {last_logits_BxV.shape}')
  batch, v = last_logits_BxV.shape
  if last_positions_B.shape != (batch,):
    raise ValueError(f'last_positions_B must be ({batch},), got {last_positions_B.shape}')
  if v < vocab.end:
    raise ValueError(f'logits have {v} entries but the SID block ends at id {vocab.end}')
  if vocab.offsets_TxL.shape != (trie.num_types, trie.num_levels):
    raise ValueError(f'SID vocabulary arrays are {vocab.offsets_TxL.shape}, the trie has '
                     f'{trie.num_types} types x {trie.num_levels} levels')
  if not 1 <= num_beams:
    raise ValueError(f'num_beams must be >= 1, got {num_beams}')
  if allowed_types_BxT is not None and allowed_types_BxT.shape != (batch, trie.num_types):
    raise ValueError(f'allowed_types_BxT must be ({batch}, {trie.num_types}), got '
                     f'{allowed_types_BxT.shape}')


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


@functools.partial(jax.jit, static_argnames=('step_fn', 'num_beams', 'cache_batch_axis'))
def sid_beam_search(step_fn: StepFn, cache, last_logits_BxV: jax.Array,
                    last_positions_B: jax.Array, trie: SIDTrie, sid_vocab_arrays: SIDVocabArrays,
                    num_beams: int, allowed_types_BxT: jax.Array | None = None,
                    cache_batch_axis: CacheBatchAxis = default_cache_batch_axis,
                    ) -> tuple[jax.Array, jax.Array]:
  """The num_beams most probable catalog items under the model, per request.

  Args:
    step_fn: the model closure (see neo_jax/decode/cache.py); static, so pass the same function
      object to reuse the compiled search. To keep large parameters out of the compiled
      constants, call this from inside a jitted function that takes the parameters as arguments.
    cache: the cache after the prompts (batch B), each prompt ending with `[SID]`; it needs room
      for num_levels - 1 more tokens.
    last_logits_BxV: float logits after each prompt's last token (they score the first code).
    last_positions_B: int32 position of each prompt's last token; code l is fed at
      last_positions_B + 1 + l.
    trie: the valid SIDs.
    sid_vocab_arrays: the SID token layout.
    num_beams: K (static).
    allowed_types_BxT: bool, entity types each request may name; None allows every type.
    cache_batch_axis: the cache layout rule (static).

  Returns:
    items_BxK int32 catalog rows, best first, -1 where fewer than K items are admissible;
    scores_BxK float32 sums of the codes' log-probabilities, NEG_INF where the item is -1.
  """
  _check_inputs(last_logits_BxV, last_positions_B, trie, sid_vocab_arrays, num_beams,
                allowed_types_BxT)
  batch, vocab_size = last_logits_BxV.shape
  k = num_beams
  offsets_TxL = sid_vocab_arrays.offsets_TxL
  num_levels = trie.num_levels

  # Level 0: every type's level-0 codes are candidates of the one prompt state per request.
  k0 = trie.kmax[0]
  logp_BxV = jax.nn.log_softmax(last_logits_BxV.astype(jnp.float32), axis=-1)
  tokens_TxK0 = offsets_TxL[:, 0, None] + jnp.arange(k0, dtype=jnp.int32)
  tokens_C = jnp.minimum(tokens_TxK0.reshape(-1), vocab_size - 1)
  ok_BxC = root_codes_mask(trie, allowed_types_BxT, batch).reshape(batch, -1)
  score_BxK, index_BxK, ok_BxK = _top_k_valid(logp_BxV[:, tokens_C], ok_BxC, k)
  type_BxK = index_BxK // k0
  code_BxK = index_BxK % k0
  node_BxK = child_index(trie, 0, type_BxK, code_BxK)
  token_BxK = tokens_C[index_BxK]

  cache = repeat_batch(cache, k, cache_batch_axis)
  position_BxK = jnp.broadcast_to(last_positions_B[:, None].astype(jnp.int32) + 1, (batch, k))
  row_offset_Bx1 = (jnp.arange(batch, dtype=jnp.int32) * k)[:, None]
  feed_valid_Nx1 = jnp.ones((batch * k, 1), bool)

  for level in range(1, num_levels):
    kl = trie.kmax[level]
    logits_Nx1xV, cache = step_fn(token_BxK.reshape(-1, 1), position_BxK.reshape(-1, 1), cache,
                                  feed_valid_Nx1)
    logp_BxKxV = jax.nn.log_softmax(
        logits_Nx1xV[:, -1].astype(jnp.float32), axis=-1).reshape(batch, k, vocab_size)
    codes_Kl = jnp.arange(kl, dtype=jnp.int32)
    tokens_BxKxKl = offsets_TxL[type_BxK, level][..., None] + codes_Kl
    tokens_BxKxKl = jnp.minimum(tokens_BxKxKl, vocab_size - 1)
    logp_BxKxKl = jnp.take_along_axis(logp_BxKxV, tokens_BxKxKl, axis=2)
    # Inadmissible beams carry a garbage node; any in-range node will do since ok masks it.
    safe_node_BxK = jnp.where(ok_BxK, node_BxK, 0)
    ok_BxKxKl = codes_mask(trie, level, safe_node_BxK) & ok_BxK[..., None]
    total_BxKxKl = score_BxK[..., None] + logp_BxKxKl
    score_BxK, index_BxK, ok_BxK = _top_k_valid(
        total_BxKxKl.reshape(batch, -1), ok_BxKxKl.reshape(batch, -1), k)
    parent_BxK = index_BxK // kl
    code_BxK = index_BxK % kl
    type_BxK = jnp.take_along_axis(type_BxK, parent_BxK, axis=1)
    parent_node_BxK = jnp.take_along_axis(safe_node_BxK, parent_BxK, axis=1)
    node_BxK = child_index(trie, level, parent_node_BxK, code_BxK)
    token_BxK = offsets_TxL[type_BxK, level] + code_BxK
    cache = gather_batch(cache, (row_offset_Bx1 + parent_BxK).reshape(-1), cache_batch_axis)
    position_BxK = position_BxK + 1

  leaf_BxK = jnp.where(ok_BxK, node_BxK, 0)
  items_BxK = jnp.where(ok_BxK, trie.leaf_item[leaf_BxK], -1)
  scores_BxK = jnp.where(ok_BxK, score_BxK, NEG_INF)
  return items_BxK, scores_BxK
