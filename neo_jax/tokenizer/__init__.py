"""Text vocabularies with the SID token block appended (see base.Tokenizer)."""

from neo_jax.tokenizer.base import Tokenizer
from neo_jax.tokenizer.bpe import BPETokenizer
from neo_jax.tokenizer.markup import SIDSpan, split_markup
from neo_jax.tokenizer.sid_vocab import SID_CLOSE, SID_OPEN, SIDVocab
from neo_jax.tokenizer.spm import SentencePieceTokenizer, train_sentencepiece
