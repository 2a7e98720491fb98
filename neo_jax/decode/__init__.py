"""Constrained decoding: the bitmap trie of valid SIDs, jit beam search, interleaved generation."""

from neo_jax.decode.beam_search import NEG_INF, sid_beam_search
from neo_jax.decode.cache import (default_cache_batch_axis, gather_batch, left_pad, prefill,
                                  repeat_batch)
from neo_jax.decode.generate import OUTPUT_FORMATS, GenerateOutput, generate
from neo_jax.decode.trie import (SIDTrie, SIDVocabArrays, allowed_types_mask, child_index,
                                 codes_mask, root_codes_mask)
