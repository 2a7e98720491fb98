"""NEO as a ranker: prompts in, the top-K catalog items out, by trie-constrained beam search.

The prompt of every request is run once (left-padded to a fixed width so that one compiled
program serves every batch), its KV cache is shared by the beams, and the beams decode exactly
one SID each. Requests are padded to a fixed batch size for the same reason.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from neo_jax.decode import cache as cache_lib
from neo_jax.decode.beam_search import sid_beam_search
from neo_jax.decode.trie import SIDTrie, SIDVocabArrays
from neo_jax.model.decoder import Decoder
from neo_jax.tokenizer.base import Tokenizer


class NEORanker:

  def __init__(self, model: Decoder, tokenizer: Tokenizer, trie: SIDTrie, *,
               prompt_len: int, batch_size: int = 32):
    """prompt_len: token width prompts are cut (oldest tokens first) or left-padded to,
    including the bos and the trailing `[SID]`."""
    self.tokenizer = tokenizer
    self.trie = trie
    self.vocab_arrays = SIDVocabArrays.from_vocab(tokenizer.sid)
    self.prompt_len = int(prompt_len)
    self.batch_size = int(batch_size)
    self.graphdef, self.state = nnx.split(model)
    self.cfg = model.cfg
    self.type_names = tokenizer.sid.type_names

  def prompt_tokens(self, prompt: str) -> list[int]:
    """bos + prompt + `[SID]`, the prompt cut from the left to fit `prompt_len`."""
    ids = self.tokenizer.encode(prompt)
    room = self.prompt_len - 2
    return ([self.tokenizer.bos_id] + ids[max(0, len(ids) - room):]
            + [self.tokenizer.sid.sid_open_id])

  @functools.partial(jax.jit, static_argnames=('self', 'num_beams'))
  def _search(self, state, trie, vocab_arrays, tokens_BxT, positions_BxT, valid_BxT,
              allowed_BxT, num_beams):
    model = nnx.merge(self.graphdef, state)
    batch, width = tokens_BxT.shape
    cache = model.init_cache(batch, width + trie.num_levels)

    def step_fn(tokens, positions, cache, valid):
      return model.decode(tokens, positions, cache, valid)

    last_logits, last_pos, cache = cache_lib.prefill(step_fn, cache, tokens_BxT, positions_BxT,
                                                     valid_BxT)
    return sid_beam_search(step_fn, cache, last_logits, last_pos, trie, vocab_arrays,
                           num_beams, allowed_BxT)

  def rank(self, prompts: Sequence[str], target_types: Sequence[str | None], num_beams: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """(items (B, num_beams) int32 rows best first, -1 if fewer exist; scores (B, num_beams))."""
    if len(prompts) != len(target_types):
      raise ValueError(f'{len(prompts)} prompts but {len(target_types)} target types')
    items, scores = [], []
    for start in range(0, len(prompts), self.batch_size):
      chunk = [self.prompt_tokens(p) for p in prompts[start:start + self.batch_size]]
      types = list(target_types[start:start + self.batch_size])
      real = len(chunk)
      chunk += [chunk[0]] * (self.batch_size - real)
      types += [types[0]] * (self.batch_size - real)
      tokens, positions, valid = cache_lib.left_pad(chunk, self.tokenizer.pad_id,
                                                    length=self.prompt_len)
      allowed = np.zeros((self.batch_size, len(self.type_names)), bool)
      for b, t in enumerate(types):
        if t is None:
          allowed[b] = True
        else:
          allowed[b, self.type_names.index(t)] = True
      it, sc = self._search(self.state, self.trie, self.vocab_arrays, jnp.asarray(tokens),
                            jnp.asarray(positions), jnp.asarray(valid), jnp.asarray(allowed),
                            num_beams)
      items.append(np.asarray(it)[:real])
      scores.append(np.asarray(sc)[:real])
    return np.concatenate(items), np.concatenate(scores)
