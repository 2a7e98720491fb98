"""The SID universe the trie-update tests share (tests/test_decode_trie_update.py,
tests/test_fresh_items_trie.py): two entity types of three SID levels, every possible SID of
them, and a random Markov language model over the SID vocabulary."""

from __future__ import annotations

import numpy as np

from neo_jax.decode.testing import markov_lm
from neo_jax.decode.trie import SIDVocabArrays
from neo_jax.tokenizer.sid_vocab import SIDVocab

SIZES = {'a': (3, 4, 2), 'b': (5, 2, 3)}
NAMES = ('a', 'b')
VOCAB = SIDVocab(NAMES, SIZES, 4)
ARRAYS = SIDVocabArrays.from_vocab(VOCAB)
# Every possible SID: (type index, codes), type by type, codes in row-major order.
UNIVERSE = [(t, tuple(int(c) for c in np.unravel_index(f, SIZES[n])))
            for t, n in enumerate(NAMES) for f in range(int(np.prod(SIZES[n])))]


def shuffle(seed: int) -> np.ndarray:
  """A fixed permutation of range(len(UNIVERSE)) (which row owns which SID)."""
  return np.random.default_rng(seed).permutation(len(UNIVERSE))


def markov_model(seed: int):
  """A Markov LM over the SID vocabulary with random logits (scale 2) drawn from `seed`."""
  rng = np.random.default_rng(seed)
  v = VOCAB.end + 1
  return markov_lm(rng.normal(0, 2, (v, v)).astype(np.float32),
                   rng.normal(0, 2, (v, v)).astype(np.float32))
