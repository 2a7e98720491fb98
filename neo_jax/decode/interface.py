"""What decoding takes: the model (one small protocol), the prompt's prefill, the constraints.

The model. Decoding never looks inside the model; in the manner of t5x's `tokens_to_logits` it
calls two methods (`DecodingModel`):

  decode_hidden(tokens_NxT int32, positions_NxT int32, cache, valid_NxT bool)
      -> (hidden_NxTxD, cache)
  logits_from_hidden(hidden (N, ..., D), rows=None) -> float32 logits
      rows None: every LM-head row, (N, ..., V); rows (R,) int32: those rows only, (N, ..., R);
      rows (N, R) int32: row set n for hidden n, (N, ..., R).

`decode_hidden` appends T tokens per row to the cache (left padding has valid False) and
returns the final hidden states at each of them; `logits_from_hidden` is the LM head. Split in
two so that a search computes only the head rows it can use (the SID code rows inside a span
instead of all V). `neo_jax.model.decoder.Decoder` has both methods; the Markov chains of
`neo_jax.decode.testing` too. The cache is any pytree (layout: neo_jax/decode/cache.py).

A model may also follow `BeamStepModel` (`neo_jax.decode.shared_prompt.SharedPromptDecoder`
does for the decoder): its beams then read their request's prompt cache in place and keep
only their decoded tokens per beam, instead of each beam getting a copy of the prompt's cache:

  init_beam_cache(batch B, beams K, length L) -> beam cache (decoded tokens only)
  beam_step(tokens_BxK int32, positions_BxK int32, prompt_cache, beam_cache)
      -> (hidden_BxKxD, beam_cache)

The prefill. The prompt of every request is run once (`prefill`); a search continues from its
`Prefill` (the next-token logits and the position of each prompt's last token) and its cache.

The constraints. `Constraints` holds everything that restricts what may be decoded: the trie of
valid SIDs (with its liveness), the SID token layout, the entity types each request may name and
the request filter (exclusions, allow-lists). All of it is data (one pytree), so new requests,
filters and catalog updates reuse the compiled searches.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from flax import struct

from neo_jax.decode.trie import RequestFilter, SIDTrie, SIDVocabArrays
from neo_jax.model.decoder import NEG_INF


@runtime_checkable
class DecodingModel(Protocol):
  """The model as decoding sees it (see the module docstring for shapes)."""

  def decode_hidden(self, tokens_NxT: jax.Array, positions_NxT: jax.Array, cache: Any,
                    valid_NxT: jax.Array) -> tuple[jax.Array, Any]:
    ...

  def logits_from_hidden(self, h: jax.Array, rows: jax.Array | None = None) -> jax.Array:
    ...


@runtime_checkable
class BeamStepModel(Protocol):
  """A model whose K beams per request share the request's prompt cache (module docstring)."""

  def init_beam_cache(self, batch: int, beams: int, length: int) -> Any:
    ...

  def beam_step(self, tokens_BxK: jax.Array, positions_BxK: jax.Array, prompt_cache: Any,
                beam_cache: Any) -> tuple[jax.Array, Any]:
    ...


def check_model(model, caller: str) -> None:
  """Raises unless `model` follows `DecodingModel` (a plain step function does not)."""
  if not isinstance(model, DecodingModel):
    raise TypeError(f'{caller} takes a model with decode_hidden and logits_from_hidden '
                    f'(neo_jax.decode.interface.DecodingModel), got {type(model).__name__}')


@struct.dataclass
class Prefill:
  """The model's state after each prompt, where a search starts.

  Attributes:
    logits_BxV: float32 next-token logits after each prompt's last token (they score the first
      decoded token).
    positions_B: int32 position of each prompt's last token; decoded token i is fed at
      positions_B + 1 + i.
  """

  logits_BxV: jax.Array
  positions_B: jax.Array

  def check(self, vocab: SIDVocabArrays | None = None) -> tuple[int, int]:
    """Checks the shapes (and that the logits cover the SID block); returns (B, V)."""
    if self.logits_BxV.ndim != 2:
      raise ValueError(f'prefill logits must be (B, V), got {self.logits_BxV.shape}')
    batch, v = self.logits_BxV.shape
    if self.positions_B.shape != (batch,):
      raise ValueError(f'prefill positions must be ({batch},), got {self.positions_B.shape}')
    if vocab is not None and v < vocab.end:
      raise ValueError(f'logits have {v} entries but the SID block ends at id {vocab.end}')
    return batch, v

  def repeat(self, k: int) -> Prefill:
    """Each request's row repeated k times, row-major (row b * k + j = request b)."""
    return jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), self)


@functools.partial(jax.jit, static_argnames=('model', 'vocab_size'))
def prefill(model: DecodingModel, cache, tokens_BxT: jax.Array, positions_BxT: jax.Array,
            valid_BxT: jax.Array, rows: jax.Array | None = None,
            vocab_size: int | None = None) -> tuple[Prefill, Any]:
  """Runs left-padded prompts (`cache.left_pad`) through the model once.

  Hidden states at every prompt token (they fill the cache), the LM head at the last column
  only, where every prompt ends: all V rows, or with `rows` (C,) only those (the other logits
  of the `vocab_size` are NEG_INF), which is all a search that reads only those columns needs.

  Args:
    model: a `DecodingModel`; static (hashed by identity).
    cache: an empty cache with room for T + the tokens decoded afterwards.
    tokens_BxT, positions_BxT, valid_BxT: the prompts, int32 / int32 / bool.
    rows: None (the full head) or the (C,) int head rows to compute.
    vocab_size: (static) V, the width of the logits; needed with rows.

  Returns:
    (Prefill, the cache after the prompts).
  """
  h_BxTxD, cache = model.decode_hidden(tokens_BxT, positions_BxT, cache, valid_BxT)
  if rows is None:
    logits_BxV = model.logits_from_hidden(h_BxTxD[:, -1]).astype(jnp.float32)
  else:
    logits_BxC = model.logits_from_hidden(h_BxTxD[:, -1], rows).astype(jnp.float32)
    if vocab_size is None:
      raise ValueError('prefill with rows needs the vocab_size of the logits it fills')
    logits_BxV = jnp.full((logits_BxC.shape[0], vocab_size), NEG_INF, jnp.float32)
    logits_BxV = logits_BxV.at[:, rows].set(logits_BxC)
  return Prefill(logits_BxV=logits_BxV, positions_B=positions_BxT[:, -1]), cache


@struct.dataclass
class Constraints:
  """What constrained decoding may produce, per request (a pytree: data, not settings).

  Attributes:
    trie: the valid SIDs and their current liveness (`SIDTrie`).
    vocab: the SID token layout (`SIDVocabArrays`); ids below `vocab.base` are text tokens.
    allowed_types_BxT: bool (B, T), the entity types each request may name; None: every type.
    request: per-request exclusions and allow-lists (`trie.request_filter`); None: none.
  """

  trie: SIDTrie
  vocab: SIDVocabArrays
  allowed_types_BxT: jax.Array | None = None
  request: RequestFilter | None = None

  def check(self, batch: int) -> None:
    """Raises unless the parts agree with each other and with a batch of B requests."""
    trie = self.trie
    if self.vocab.offsets_TxL.shape != (trie.num_types, trie.num_levels):
      raise ValueError(f'SID vocabulary arrays are {self.vocab.offsets_TxL.shape}, the trie has '
                       f'{trie.num_types} types x {trie.num_levels} levels')
    if (self.allowed_types_BxT is not None
        and self.allowed_types_BxT.shape != (batch, trie.num_types)):
      raise ValueError(f'allowed_types_BxT must be ({batch}, {trie.num_types}), got '
                       f'{self.allowed_types_BxT.shape}')
    if self.request is not None and self.request.batch != batch:
      raise ValueError(f'request filter is for {self.request.batch} requests, the batch has '
                       f'{batch}')

  def repeat(self, k: int) -> Constraints:
    """Each request's constraints repeated k times, row-major (row b * k + j = request b)."""
    allowed = self.allowed_types_BxT
    return self.replace(
        allowed_types_BxT=None if allowed is None else jnp.repeat(jnp.asarray(allowed), k, 0),
        request=jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), self.request))
