"""The one tokenizer protocol every text vocabulary (sentencepiece, byte-level BPE) implements."""

from __future__ import annotations

from typing import Protocol, Sequence

from neo_jax.tokenizer.markup import SIDSpan, split_markup
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


class SIDTextTokenizer:
  """What every text vocabulary + SID block shares: sizes and the parsing of SID markup.
  A subclass sets `self.sid` (its SIDVocab) and implements `encode_text`."""

  sid: SIDVocab

  @property
  def vocab_size(self) -> int:
    """Text vocabulary + SID block (delimiters included)."""
    return self.sid.end

  @property
  def text_vocab_size(self) -> int:
    return self.sid.base

  def encode_text(self, text: str) -> list[int]:
    raise NotImplementedError

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, SID markup parsed into SID ids (no bos/eos added).

    Raises:
      ValueError: malformed SID markup (see `neo_jax.tokenizer.markup.split_markup`).
    """
    ids: list[int] = []
    for piece in split_markup(text, self.sid):
      if isinstance(piece, SIDSpan):
        ids.append(self.sid.sid_open_id)
        ti = self.sid.type_names.index(piece.type_name)
        ids.extend(int(self.sid.offsets_TxL[ti, l]) + c for l, c in enumerate(piece.codes))
        ids.append(self.sid.sid_close_id)
      else:
        ids.extend(self.encode_text(piece))
    return ids
