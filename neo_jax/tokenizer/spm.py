"""A sentencepiece text vocabulary followed by the SID token block.

Ids: `[0, V_text)` are sentencepiece pieces (pad=0, unk=1, bos=2, eos=3, then 256 byte pieces
and the learned pieces), `[V_text, V_text + sid.size)` the SID block of `SIDVocab`.

`decode(encode(s)) == s` holds exactly for every string of Unicode scalar values with
well-formed SID markup. That needs a model trained by `train_sentencepiece` (identity
normalisation, no dummy prefix, whitespace kept, byte fallback) and one extra rule here:
sentencepiece writes spaces as U+2581 '▁' internally and would decode a literal '▁' as a space,
so a literal '▁' is always encoded as its three UTF-8 byte pieces.
"""

from __future__ import annotations

import io
import json
import os
from typing import Iterable, Sequence

import sentencepiece as spm

from neo_jax.sid.types import SIDMap
from neo_jax.tokenizer import files
from neo_jax.tokenizer.base import SIDTextTokenizer
from neo_jax.tokenizer.sid_vocab import SID_CLOSE, SID_OPEN, SIDVocab

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
_NUM_SPECIAL = 4
_NUM_BYTES = 256
_SPACE_MARK = '\u2581'
MODEL_FILE = 'spm.model'
LAYOUT_FILE = 'sid_vocab.json'
_LAYOUT_FORMAT = 'neo_jax.sentencepiece_sid.v1'
# Checked on load: a model trained with other settings fails here rather than corrupting text.
_ROUND_TRIP_PROBE = '  Lead, inner  two\n\n\ttab ▁ é trail  '


def train_sentencepiece(texts: Iterable[str], vocab_size: int, model_type: str = 'bpe',
                        seed: int = 0, character_coverage: float = 0.9995,
                        num_threads: int = 1, input_sentence_size: int = 0) -> bytes:
  """Trains a sentencepiece model in memory and returns its serialized proto.

  Args:
    texts: training sentences (each item one sentence; it may contain newlines).
    vocab_size: the largest text vocabulary wanted, specials and 256 byte pieces included;
      a small corpus may yield fewer pieces (the vocabulary limit is soft).
    model_type: 'bpe' or 'unigram'.
    seed: seeds sentencepiece's random generator (sentence sampling, unigram EM).
    character_coverage: fraction of characters that get their own piece; the rest are
      written as UTF-8 bytes.
    num_threads: trainer threads.
    input_sentence_size: if > 0, train on a random sample of this many sentences.

  Returns:
    The serialized model, for `SentencePieceTokenizer(model_proto, ...)`.
  """
  if model_type not in ('bpe', 'unigram'):
    raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
  if vocab_size <= _NUM_SPECIAL + _NUM_BYTES:
    raise ValueError(f'vocab_size {vocab_size} leaves no room for learned pieces: the 4 special '
                     f'ids and 256 byte pieces take {_NUM_SPECIAL + _NUM_BYTES}')
  texts = iter(texts)
  spm.set_random_generator_seed(int(seed))
  writer = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=texts,
        model_writer=writer,
        vocab_size=int(vocab_size),
        model_type=model_type,
        normalization_rule_name='identity',
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        byte_fallback=True,
        split_digits=True,
        character_coverage=float(character_coverage),
        hard_vocab_limit=False,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        num_threads=int(num_threads),
        input_sentence_size=int(input_sentence_size),
        shuffle_input_sentence=True,
        minloglevel=2,
    )
  except RuntimeError as e:
    raise ValueError(f'sentencepiece training failed: {e}') from e
  proto = writer.getvalue()
  if not proto:
    raise ValueError('sentencepiece training produced no model (empty corpus?)')
  return proto


class SentencePieceTokenizer(SIDTextTokenizer):
  """Implements `neo_jax.tokenizer.base.Tokenizer` with a sentencepiece text vocabulary."""

  def __init__(self, model_proto: bytes, type_names: Sequence[str],
               level_sizes: dict[str, tuple[int, ...]]):
    """Args:
      model_proto: serialized sentencepiece model from `train_sentencepiece`.
      type_names: entity types of the SID block, in SID map order.
      level_sizes: per type, K of each level.
    """
    self._proto = bytes(model_proto)
    self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    for name, want, got in (('pad', PAD_ID, self._sp.pad_id()), ('unk', UNK_ID, self._sp.unk_id()),
                            ('bos', BOS_ID, self._sp.bos_id()), ('eos', EOS_ID, self._sp.eos_id())):
      if got != want:
        raise ValueError(f'sentencepiece model has {name} id {got}, expected {want}; train it '
                         'with train_sentencepiece')
    self._mark_bytes = []
    for b in _SPACE_MARK.encode('utf-8'):
      i = self._sp.piece_to_id(f'<0x{b:02X}>')
      if not self._sp.is_byte(i):
        raise ValueError('sentencepiece model has no byte pieces; train it with byte_fallback')
      self._mark_bytes.append(i)
    self.pad_id, self.unk_id, self.bos_id, self.eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID
    self.sid = SIDVocab(type_names, level_sizes, base=self._sp.get_piece_size())
    got = self._sp.decode(self.encode_text(_ROUND_TRIP_PROBE))
    if got != _ROUND_TRIP_PROBE:
      raise ValueError(f'sentencepiece model does not round-trip text exactly '
                       f'({_ROUND_TRIP_PROBE!r} -> {got!r}); train it with train_sentencepiece')

  @classmethod
  def from_sid_map(cls, model_proto: bytes, sid_map: SIDMap) -> SentencePieceTokenizer:
    return cls(model_proto, sid_map.type_names, sid_map.level_sizes)

  @property
  def model_proto(self) -> bytes:
    return self._proto

  def encode_text(self, text: str) -> list[int]:
    """Token ids of `text` taken literally; every id is < `text_vocab_size`."""
    if not isinstance(text, str):
      raise TypeError(f'expected str, got {type(text).__name__}')
    ids: list[int] = []
    for n, chunk in enumerate(text.split(_SPACE_MARK)):
      if n:
        ids.extend(self._mark_bytes)
      if chunk:
        ids.extend(self._sp.encode(chunk))
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`; SID ids become markup, pad/bos/eos become ''."""
    out: list[str] = []
    run: list[int] = []
    for i in ids:
      i = int(i)
      if not 0 <= i < self.vocab_size:
        raise ValueError(f'token id {i} out of range [0, {self.vocab_size})')
      if i < self.sid.base:
        run.append(i)
        continue
      if run:
        out.append(self._sp.decode(run))
        run = []
      out.append(self.id_to_piece(i))
    if run:
      out.append(self._sp.decode(run))
    return ''.join(out)

  def id_to_piece(self, token_id: int) -> str:
    """The sentencepiece piece of a text id, or the markup of an SID id."""
    token_id = int(token_id)
    if not 0 <= token_id < self.vocab_size:
      raise ValueError(f'token id {token_id} out of range [0, {self.vocab_size})')
    if token_id < self.sid.base:
      return self._sp.id_to_piece(token_id)
    if token_id == self.sid.sid_open_id:
      return SID_OPEN
    if token_id == self.sid.sid_close_id:
      return SID_CLOSE
    return self.sid.token_str(*self.sid.describe(token_id))

  def save(self, directory: str) -> None:
    """Writes `spm.model` and `sid_vocab.json` (the SID block layout and the model's SHA-256)
    into `directory`, each atomically, the layout last (`tokenizer.files`)."""
    layout = {
        'format': _LAYOUT_FORMAT,
        'base': self.sid.base,
        'type_names': list(self.sid.type_names),
        'level_sizes': {t: list(k) for t, k in self.sid.level_sizes.items()},
    }
    files.save(directory, {MODEL_FILE: self._proto}, LAYOUT_FILE, layout, indent=1)

  @classmethod
  def load(cls, directory: str) -> SentencePieceTokenizer:
    """The tokenizer `save` wrote into `directory`.

    Raises:
      TokenizerFileError: a file is missing or damaged (named).
    """
    layout_path = os.path.join(directory, LAYOUT_FILE)
    layout = files.read_layout(directory, LAYOUT_FILE)
    proto = files.read(directory, MODEL_FILE, layout)
    if layout.get('format') != _LAYOUT_FORMAT:
      raise ValueError(f'{layout_path}: format {layout.get("format")!r}, expected '
                       f'{_LAYOUT_FORMAT!r}')
    tok = cls(proto, layout['type_names'],
              {t: tuple(k) for t, k in layout['level_sizes'].items()})
    if tok.sid.base != layout['base']:
      raise ValueError(f'{layout_path}: SID block base {layout["base"]} does not match the '
                       f'text vocabulary size {tok.sid.base} of {MODEL_FILE}')
    return tok
