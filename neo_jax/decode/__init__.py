"""Constrained decoding: the bitmap trie of valid SIDs, jit beam search, interleaved generation,
and the NEO ranker (`ranker.NEORanker`) built on them.

The searches take the model through one protocol (`DecodingModel`), the prompts' `Prefill`, and
the request constraints as one pytree (`Constraints`); see neo_jax/decode/interface.py.
"""

from neo_jax.decode.beam_search import NEG_INF, SCORES, sid_beam_search, vocab_beam_search
from neo_jax.decode.cache import (default_cache_batch_axis, gather_batch, left_pad,
                                  repeat_batch)
from neo_jax.decode.generate import OUTPUT_FORMATS, GenerateOutput, GenerateSettings, generate
from neo_jax.decode.interface import Constraints, DecodingModel, Prefill, prefill
from neo_jax.decode.trie import (RequestFilter, SIDTrie, SIDVocabArrays, admissible_children,
                                 allowed_types_mask, child_index, codes_mask, leaf_range,
                                 make_request_filter, request_filter, root_codes_mask)
