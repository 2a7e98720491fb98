"""A byte-level BPE text vocabulary (GPT-2 style, e.g. SmolLM2's) followed by the SID block.

Ids: `[0, V_text)` are the BPE vocabulary exactly as the checkpoint numbers it (so a pretrained
embedding's rows line up), `[V_text, V_text + sid.size)` the SID block of `SIDVocab`.

Encoding runs the `tokenizers` library's BPE over the GPT-2 byte-to-unicode alphabet, after
the checkpoint's pre-tokenizer ('smollm': every digit alone, then the GPT-2 regex; 'gpt2': the
GPT-2 regex only). Control tokens (`<|endoftext|>`, `<|im_start|>`, ...) are never produced by
text: they are not registered as added tokens, so a literal "<|im_start|>" in text is
tokenised as ordinary characters; look them up with `token_to_id` to insert them on purpose.
Decoding maps every vocabulary string back through the byte alphabet, so
`decode(encode(s)) == s` exactly for every string of Unicode scalar values with well-formed SID
markup whose UTF-8 bytes all have a single-byte token (text with a byte the vocabulary lacks
is refused with an error naming the character, never dropped).
Control tokens decode to '' (like sentencepiece's pad/bos/eos).
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import tokenizers
from tokenizers import models, pre_tokenizers

from neo_jax.catalog import atomic
from neo_jax.tokenizer import files
from neo_jax.tokenizer.base import SIDTextTokenizer
from neo_jax.tokenizer.sid_vocab import SID_CLOSE, SID_OPEN, SIDVocab

TOKENIZER_FILE = 'tokenizer.json'
LAYOUT_FILE = 'sid_vocab.json'
_LAYOUT_FORMAT = 'neo_jax.bpe_sid.v1'
PRE_TOKENIZERS = ('smollm', 'gpt2')
# GGUF token types (llama.cpp): 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
# 6 byte.
TYPE_NORMAL, TYPE_CONTROL, TYPE_USER = 1, 3, 4


def byte_alphabet() -> dict[int, str]:
  """GPT-2's byte -> printable character map: printable Latin-1 bytes map to themselves, the
  other 68 bytes to U+0100 upwards in byte order."""
  keep = (list(range(ord('!'), ord('~') + 1)) + list(range(0xA1, 0xAD)) +
          list(range(0xAE, 0x100)))
  out = {b: chr(b) for b in keep}
  extra = 0
  for b in range(256):
    if b not in out:
      out[b] = chr(256 + extra)
      extra += 1
  return out


_BYTE_TO_CHAR = byte_alphabet()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}


def _pre_tokenizer(name: str):
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if name == 'smollm':
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
  if name == 'gpt2':
    return byte_level
  raise ValueError(f'pre-tokenizer {name!r} is not supported; known: {PRE_TOKENIZERS}')


class BPETokenizer(SIDTextTokenizer):
  """Implements `neo_jax.tokenizer.base.Tokenizer` with a byte-level BPE text vocabulary."""

  def __init__(self, tokens: Sequence[str], merges: Sequence[str | tuple[str, str]], *,
               bos_id: int, eos_id: int, pad_id: int | None = None,
               token_types: Sequence[int] | None = None, pre_tokenizer: str = 'smollm',
               type_names: Sequence[str] = (),
               level_sizes: dict[str, tuple[int, ...]] | None = None):
    """Args:
      tokens: the vocabulary strings in id order (byte-level alphabet; control tokens as is).
      merges: BPE merges in priority order, 'a b' strings or (a, b) pairs.
      bos_id, eos_id, pad_id: special ids (pad defaults to eos).
      token_types: GGUF token type per id (3 = control: decodes to ''); default all normal.
      pre_tokenizer: 'smollm' or 'gpt2' (see module docstring).
      type_names, level_sizes: the SID block (none: only the [SID]/[/SID] delimiters).
    """
    self._tokens = [str(t) for t in tokens]
    v = len(self._tokens)
    vocab = {}
    for i, t in enumerate(self._tokens):
      if t in vocab:
        raise ValueError(f'token string {t!r} appears twice (ids {vocab[t]} and {i})')
      vocab[t] = i
    self._types = [TYPE_NORMAL] * v if token_types is None else [int(t) for t in token_types]
    if len(self._types) != v:
      raise ValueError(f'{len(self._types)} token types for {v} tokens')
    pairs = []
    for m in merges:
      pair = tuple(m.split(' ')) if isinstance(m, str) else tuple(m)
      if len(pair) != 2 or pair[0] not in vocab or pair[1] not in vocab:
        raise ValueError(f'BPE merge {m!r} is not two vocabulary tokens')
      if pair[0] + pair[1] not in vocab:
        raise ValueError(f'BPE merge {m!r} yields {pair[0] + pair[1]!r}, not in the vocabulary')
      pairs.append(pair)
    self._merges = pairs
    # Bytes without a single-byte token cannot be encoded; text holding one is refused (the
    # BPE would drop it silently). SmolLM2 lacks 21: 0xC0, 0xC1, 0xF5-0xFF never occur in
    # UTF-8, but 0xF1, 0xF2 (code points U+40000-U+BFFFF) and six C0 controls do.
    self._missing_bytes = frozenset(b for b, c in _BYTE_TO_CHAR.items() if c not in vocab)
    for name, i in (('bos_id', bos_id), ('eos_id', eos_id), ('pad_id', pad_id)):
      if i is not None and not 0 <= int(i) < v:
        raise ValueError(f'{name}={i} outside the vocabulary [0, {v})')
    self.bos_id, self.eos_id = int(bos_id), int(eos_id)
    self.pad_id = self.eos_id if pad_id is None else int(pad_id)
    self.pre_tokenizer = pre_tokenizer
    model = models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False)
    self._tk = tokenizers.Tokenizer(model)
    self._tk.pre_tokenizer = _pre_tokenizer(pre_tokenizer)
    # The byte string of every id, for exact decoding (control tokens: empty).
    self._bytes = []
    for t, kind in zip(self._tokens, self._types):
      if kind == TYPE_CONTROL:
        self._bytes.append(b'')
      elif kind != TYPE_USER and all(c in _CHAR_TO_BYTE for c in t):
        self._bytes.append(bytes(_CHAR_TO_BYTE[c] for c in t))
      else:  # user-defined tokens are stored as literal text
        self._bytes.append(t.encode('utf-8'))
    level_sizes = level_sizes or {}
    self.sid = SIDVocab(type_names, level_sizes, base=v)

  # -- construction -----------------------------------------------------------------------------

  @classmethod
  def from_gguf(cls, reader_or_path, type_names: Sequence[str] = (),
                level_sizes: dict[str, tuple[int, ...]] | None = None) -> BPETokenizer:
    """The tokenizer of a GGUF file (`tokenizer.ggml.*` metadata) + an SID block."""
    if isinstance(reader_or_path, (str, os.PathLike)):
      import gguf  # pylint: disable=g-import-not-at-top
      reader = gguf.GGUFReader(os.fspath(reader_or_path))
    else:
      reader = reader_or_path

    def field(key, default=None, required=True):
      f = reader.fields.get(key)
      if f is None:
        if required:
          raise ValueError(f'GGUF metadata lacks {key}')
        return default
      return f.contents()

    kind = field('tokenizer.ggml.model')
    if kind != 'gpt2':
      raise ValueError(f'GGUF tokenizer model {kind!r} is not byte-level BPE (gpt2)')
    pre = field('tokenizer.ggml.pre', 'gpt2', required=False)
    if pre not in PRE_TOKENIZERS:
      raise ValueError(f'GGUF pre-tokenizer {pre!r} is not supported; known: {PRE_TOKENIZERS}')
    merges = field('tokenizer.ggml.merges', [], required=False)  # a merge-less BPE is valid
    return cls(field('tokenizer.ggml.tokens'), merges,
               bos_id=field('tokenizer.ggml.bos_token_id'),
               eos_id=field('tokenizer.ggml.eos_token_id'),
               pad_id=field('tokenizer.ggml.padding_token_id', None, required=False),
               token_types=field('tokenizer.ggml.token_type', None, required=False),
               pre_tokenizer=pre, type_names=type_names, level_sizes=level_sizes)

  @classmethod
  def from_tokenizer_json(cls, path: str, *, bos_id: int, eos_id: int,
                          pad_id: int | None = None, type_names: Sequence[str] = (),
                          level_sizes: dict[str, tuple[int, ...]] | None = None
                          ) -> BPETokenizer:
    """A Hugging Face `tokenizer.json` of a byte-level BPE whose pre-tokenizer is GPT-2's
    ByteLevel regex, optionally preceded by single-digit splitting (SmolLM2). Added special
    tokens inside the vocabulary become control tokens. Other layouts (Qwen's and Llama 3's
    Split regexes, added tokens beyond the BPE vocabulary) raise ValueError."""
    with atomic.open_text(path) as f:
      spec = json.load(f)
    model = spec.get('model') or {}
    if model.get('type') != 'BPE':
      raise ValueError(f'{path}: model type {model.get("type")!r} is not BPE')
    pre = spec.get('pre_tokenizer') or {}
    parts = pre.get('pretokenizers', []) if pre.get('type') == 'Sequence' else [pre]
    kinds = [(p.get('type'), p.get('individual_digits'), p.get('use_regex', True),
              p.get('add_prefix_space', False)) for p in parts]
    if kinds == [('ByteLevel', None, True, False)]:
      pre_name = 'gpt2'
    elif kinds == [('Digits', True, True, False), ('ByteLevel', None, True, False)]:
      pre_name = 'smollm'
    else:
      raise ValueError(f'{path}: pre-tokenizer {json.dumps(pre)[:200]} is not supported '
                       f'(supported: {PRE_TOKENIZERS})')
    if spec.get('normalizer'):
      raise ValueError(f'{path}: a normalizer ({spec["normalizer"].get("type")}) is not '
                       'supported: text would not round-trip')
    vocab = model['vocab']
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
      if not 0 <= i < len(vocab) or tokens[i] is not None:
        raise ValueError(f'{path}: vocabulary ids are not 0..{len(vocab) - 1} (id {i})')
      tokens[i] = t
    types = [TYPE_NORMAL] * len(tokens)
    for added in spec.get('added_tokens', []):
      i = added['id']
      if i >= len(tokens) or tokens[i] != added['content']:
        raise ValueError(f'{path}: added token {added["content"]!r} (id {i}) is not a '
                         'vocabulary entry; not supported')
      if added.get('special'):
        types[i] = TYPE_CONTROL
    merges = [tuple(m.split(' ')) if isinstance(m, str) else tuple(m) for m in model['merges']]
    return cls(tokens, merges, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, token_types=types,
               pre_tokenizer=pre_name, type_names=type_names, level_sizes=level_sizes)

  def with_sids(self, type_names: Sequence[str],
                level_sizes: dict[str, tuple[int, ...]]) -> BPETokenizer:
    """The same text vocabulary with another SID block (e.g. once the SID map is built)."""
    return BPETokenizer(self._tokens, self._merges, bos_id=self.bos_id, eos_id=self.eos_id,
                        pad_id=self.pad_id, token_types=self._types,
                        pre_tokenizer=self.pre_tokenizer, type_names=type_names,
                        level_sizes=level_sizes)

  # -- the protocol -----------------------------------------------------------------------------

  def encode_text(self, text: str) -> list[int]:
    """Token ids of `text` taken literally; every id is < `text_vocab_size`."""
    if not isinstance(text, str):
      raise TypeError(f'expected str, got {type(text).__name__}')
    try:
      raw = text.encode('utf-8')
    except UnicodeEncodeError as e:
      raise ValueError(f'text is not valid Unicode (lone surrogate at position {e.start})') \
          from e
    if not text:
      return []
    if self._missing_bytes:
      bad = self._missing_bytes.intersection(raw)
      if bad:
        at = next(i for i, ch in enumerate(text)
                  if bad.intersection(ch.encode('utf-8')))
        raise ValueError(f'character {text[at]!r} at position {at} has UTF-8 byte(s) '
                         f'{sorted(hex(b) for b in bad)} that this vocabulary has no token for')
    return list(self._tk.encode(text, add_special_tokens=False).ids)

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`; SID ids become markup, control tokens ''. Bytes that do not form valid
    UTF-8 (possible only for model output) become U+FFFD."""
    out: list[str] = []
    run = bytearray()
    for i in ids:
      i = int(i)
      if not 0 <= i < self.vocab_size:
        raise ValueError(f'token id {i} out of range [0, {self.vocab_size})')
      if i < self.sid.base:
        run += self._bytes[i]
        continue
      if run:
        out.append(run.decode('utf-8', errors='replace'))
        run = bytearray()
      out.append(self.id_to_piece(i))
    if run:
      out.append(run.decode('utf-8', errors='replace'))
    return ''.join(out)

  def id_to_piece(self, token_id: int) -> str:
    """The vocabulary string of a text id, or the markup of an SID id."""
    token_id = int(token_id)
    if not 0 <= token_id < self.vocab_size:
      raise ValueError(f'token id {token_id} out of range [0, {self.vocab_size})')
    if token_id < self.sid.base:
      return self._tokens[token_id]
    if token_id == self.sid.sid_open_id:
      return SID_OPEN
    if token_id == self.sid.sid_close_id:
      return SID_CLOSE
    return self.sid.token_str(*self.sid.describe(token_id))

  def token_to_id(self, token: str) -> int:
    """Id of a vocabulary string (e.g. '<|im_start|>'); KeyError if absent."""
    i = self._tk.token_to_id(token)
    if i is None:
      raise KeyError(f'{token!r} is not in the vocabulary')
    return int(i)

  # -- files ------------------------------------------------------------------------------------

  def save(self, directory: str) -> None:
    """Writes `tokenizer.json` (Hugging Face `tokenizers` format: the BPE, its pre-tokenizer,
    a byte-level decoder, control tokens and every SID token as added special tokens at their
    ids, so other tools see the full extended vocabulary), `tokenizer_config.json`, and
    `sid_vocab.json` (the SID block layout and special ids, read back by `load`)."""
    atomic.as_path(directory).mkdir(parents=True, exist_ok=True)
    tk = tokenizers.Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(self._tokens)},
                                         merges=self._merges, fuse_unk=False))
    tk.pre_tokenizer = _pre_tokenizer(self.pre_tokenizer)
    tk.decoder = tokenizers.decoders.ByteLevel()
    added = [self._tokens[i] for i, kind in enumerate(self._types) if kind == TYPE_CONTROL]
    added += [self.id_to_piece(i) for i in range(self.sid.base, self.sid.end)]
    tk.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                           for t in added])
    for i in range(self.sid.base, self.sid.end):
      if tk.token_to_id(self.id_to_piece(i)) != i:
        raise AssertionError(f'SID token {self.id_to_piece(i)!r} did not get id {i}')
    config = {'tokenizer_class': 'PreTrainedTokenizerFast',
              'bos_token': self._tokens[self.bos_id], 'eos_token': self._tokens[self.eos_id],
              'pad_token': self._tokens[self.pad_id], 'model_max_length': 1 << 30,
              'clean_up_tokenization_spaces': False}
    layout = {
        'format': _LAYOUT_FORMAT, 'base': self.sid.base,
        'type_names': list(self.sid.type_names),
        'level_sizes': {t: list(k) for t, k in self.sid.level_sizes.items()},
        'bos_id': self.bos_id, 'eos_id': self.eos_id, 'pad_id': self.pad_id,
        'pre_tokenizer': self.pre_tokenizer, 'token_types': self._types,
    }
    # Each file atomically, the layout (with the others' SHA-256) last: tokenizer.files.
    files.save(directory, {
        TOKENIZER_FILE: tk.to_str(pretty=True).encode('utf-8'),
        'tokenizer_config.json': (json.dumps(config, indent=1) + '\n').encode('utf-8'),
    }, LAYOUT_FILE, layout)

  @classmethod
  def load(cls, directory: str) -> BPETokenizer:
    """The tokenizer `save` wrote into `directory`.

    Raises:
      TokenizerFileError: a file is missing or damaged (named).
    """
    layout_path = os.path.join(directory, LAYOUT_FILE)
    layout = files.read_layout(directory, LAYOUT_FILE)
    if layout.get('format') != _LAYOUT_FORMAT:
      raise ValueError(f'{layout_path}: format {layout.get("format")!r}, expected '
                       f'{_LAYOUT_FORMAT!r}')
    raw = files.read(directory, TOKENIZER_FILE, layout)
    try:
      spec = json.loads(raw)['model']
    except (ValueError, KeyError) as e:
      raise files.TokenizerFileError(f'{directory}/{TOKENIZER_FILE}: not a tokenizers JSON '
                                     f'file ({e!r}); the file is damaged') from None
    base = int(layout['base'])
    vocab = spec['vocab']
    tokens = [None] * base
    for t, i in vocab.items():
      if not 0 <= i < base or tokens[i] is not None:
        raise ValueError(f'{directory}/{TOKENIZER_FILE}: bad id {i} for {t!r}')
      tokens[i] = t
    if any(t is None for t in tokens):
      raise ValueError(f'{directory}/{TOKENIZER_FILE}: vocabulary has gaps below {base}')
    merges = [tuple(m.split(' ')) if isinstance(m, str) else tuple(m) for m in spec['merges']]
    return cls(tokens, merges, bos_id=layout['bos_id'], eos_id=layout['eos_id'],
               pad_id=layout['pad_id'], token_types=layout['token_types'],
               pre_tokenizer=layout['pre_tokenizer'], type_names=layout['type_names'],
               level_sizes={t: tuple(k) for t, k in layout['level_sizes'].items()})
