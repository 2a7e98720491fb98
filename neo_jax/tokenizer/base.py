"""The one tokenizer protocol every text vocabulary (sentencepiece, byte-level BPE) implements."""

from __future__ import annotations

from typing import Protocol, Sequence

from neo_jax.tokenizer.sid_vocab import SIDVocab


class Tokenizer(Protocol):
  """Text vocabulary + SID block.

  `encode` parses SID markup (`[SID]<t:l:c>...[/SID]`, see sid_vocab.py) into SID token ids and
  tokenises everything else as plain text; plain text can never produce an SID token id.
  `decode(encode(s)) == s` for every string s whose SID markup is well formed.
  """

  sid: SIDVocab
  pad_id: int
  bos_id: int
  eos_id: int

  @property
  def vocab_size(self) -> int:  # text vocabulary + SID block
    ...

  @property
  def text_vocab_size(self) -> int:
    ...

  def encode(self, text: str) -> list[int]:
    ...

  def encode_text(self, text: str) -> list[int]:
    """Tokenises `text` literally, markup included, as plain text."""
    ...

  def decode(self, ids: Sequence[int]) -> str:
    ...

  def save(self, directory: str) -> None:
    ...
