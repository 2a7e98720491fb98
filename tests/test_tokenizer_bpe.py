"""Byte-level BPE tokenizer + SID block: a tiny trained BPE checked against a plain-Python BPE
reference (GPT-2 pre-split, rank-ordered merges), exact round trips of interleaved text and
SIDs, save/load and the tokenizer.json other tools read, and the real SmolLM2 vocabulary."""

from __future__ import annotations

import json
import os
import re
import unicodedata

import hypothesis
from hypothesis import strategies as st
import pytest
import tokenizers
from tokenizers import models, pre_tokenizers, trainers

from neo_jax.model import backbones, checkpoints
from neo_jax.model.config import get_config
from neo_jax.tokenizer.bpe import BPETokenizer, byte_alphabet

LEVEL_SIZES = {'book': (4, 3), 'movie': (8, 2)}
TYPES = ('book', 'movie')
CORPUS = [
    'The Night Garden is a movie about jazz and noir.',
    "Blue Train, a book about trains  and   rivers.\nIt's the second line\twith a tab.",
    'Über café naïve résumé — 東京 😀 emoji',
    'numbers 12345 and 2024-01-02, prices $9.99',
] * 20
CONTROL = ['<|endoftext|>', '<|im_start|>']
settings = hypothesis.settings(derandomize=True, deadline=None, max_examples=150,
                               suppress_health_check=[hypothesis.HealthCheck.too_slow])


def _train_tiny(return_tokenizer=False):
  """(tokens, merges, token_types) of a small byte-level BPE trained on CORPUS."""
  tk = tokenizers.Tokenizer(models.BPE())
  tk.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=CONTROL, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tk.train_from_iterator(CORPUS, trainer)
  spec = json.loads(tk.to_str())['model']
  tokens = [t for t, _ in sorted(spec['vocab'].items(), key=lambda kv: kv[1])]
  merges = [tuple(m.split(' ')) if isinstance(m, str) else tuple(m) for m in spec['merges']]
  types = [3 if t in CONTROL else 1 for t in tokens]
  if return_tokenizer:
    return tk
  return tokens, merges, types


@pytest.fixture(scope='module')
def tiny_parts():
  return _train_tiny()


@pytest.fixture(scope='module')
def tok(tiny_parts):
  tokens, merges, types = tiny_parts
  return BPETokenizer(tokens, merges, bos_id=0, eos_id=0, token_types=types,
                      type_names=TYPES, level_sizes=LEVEL_SIZES)


# -- an independent reference ------------------------------------------------------------------


def _cls(ch):
  cat = unicodedata.category(ch)
  return 'L' if cat[0] == 'L' else 'N' if cat[0] == 'N' else 'S' if ch.isspace() else 'O'


def _gpt2_split(text):
  """GPT-2's pre-tokenizer regex, by hand: contractions | ' '?L+ | ' '?N+ | ' '?other+ |
  \\s+(?!\\S) | \\s+ (for the characters the tests draw)."""
  out, i, n = [], 0, len(text)
  while i < n:
    m = re.match(r"'(?:s|t|re|ve|m|ll|d)", text[i:])
    if m:
      out.append(m.group(0))
      i += len(m.group(0))
      continue
    j = i + 1 if text[i] == ' ' and i + 1 < n and _cls(text[i + 1]) != 'S' else i
    c = _cls(text[j])
    if c != 'S':
      k = j + 1
      while k < n and _cls(text[k]) == c:
        k += 1
      out.append(text[i:k])
      i = k
      continue
    k = i
    while k < n and _cls(text[k]) == 'S':
      k += 1
    if k < n and k - i > 1:
      k -= 1  # leave the last space for the next word
    out.append(text[i:k])
    i = k
  return out


def _reference_encode(text, tokens, merges):
  vocab = {t: i for i, t in enumerate(tokens)}
  rank = {pair: r for r, pair in enumerate(merges)}
  alphabet = byte_alphabet()
  ids = []
  for piece in re.split(r'(\d)', text):  # every digit on its own (smollm)
    for word in _gpt2_split(piece) if piece else []:
      syms = [alphabet[b] for b in word.encode('utf-8')]
      while len(syms) > 1:
        best = min(range(len(syms) - 1),
                   key=lambda i: rank.get((syms[i], syms[i + 1]), float('inf')))
        pair = (syms[best], syms[best + 1])
        if pair not in rank:
          break
        merged, i = [], 0
        while i < len(syms):
          if i + 1 < len(syms) and (syms[i], syms[i + 1]) == pair:
            merged.append(syms[i] + syms[i + 1])
            i += 2
          else:
            merged.append(syms[i])
            i += 1
        syms = merged
      ids.extend(vocab[s] for s in syms)
  return ids


# -- strategies ----------------------------------------------------------------------------------

_MARKUP = re.compile(r'\[SID\]|\[/SID\]|<[A-Za-z0-9_-]+:\d+:\d+>')
_chars = st.sampled_from(list("abcXYZ019 .,'-!\n\t[]<>:/|éü東😀")
                         + ["'s", "'ll", '  ', '\n\n'])
_text = st.lists(_chars, max_size=20).map(''.join)
_plain = _text.filter(lambda s: not _MARKUP.search(s))
_any_text = st.text(max_size=12)


@st.composite
def _interleaved(draw):
  parts, sids = [], []
  for _ in range(draw(st.integers(0, 5))):
    if draw(st.booleans()):
      parts.append(draw(st.one_of(_plain, _any_text.filter(lambda s: not _MARKUP.search(s)))))
    else:
      t = draw(st.sampled_from(TYPES))
      codes = tuple(draw(st.integers(0, k - 1)) for k in LEVEL_SIZES[t])
      sids.append((t, codes))
      parts.append('[SID]' + ''.join(f'<{t}:{l}:{c}>' for l, c in enumerate(codes)) + '[/SID]')
  s = ''.join(parts)
  hypothesis.assume(len(_MARKUP.findall(s)) == sum(len(c) + 2 for _, c in sids))
  return s, sids


def _expected_sid_ids(base, sids):
  offsets, nxt = {}, base + 2
  for t in TYPES:
    for l, k in enumerate(LEVEL_SIZES[t]):
      offsets[t, l] = nxt
      nxt += k
  out = []
  for t, codes in sids:
    out += [base] + [offsets[t, l] + c for l, c in enumerate(codes)] + [base + 1]
  return out


# -- tests ---------------------------------------------------------------------------------------


@settings
@hypothesis.given(s=_text)
def test_encode_text_matches_reference_bpe(tok, tiny_parts, s):
  tokens, merges, _ = tiny_parts
  ids = tok.encode_text(s)
  assert ids == _reference_encode(s, tokens, merges)
  assert all(0 <= i < tok.text_vocab_size for i in ids)
  assert tok.decode(ids) == s


@settings
@hypothesis.given(data=_interleaved())
def test_round_trip_interleaved(tok, data):
  s, sids = data
  ids = tok.encode(s)
  assert tok.decode(ids) == s
  assert [i for i in ids if i >= tok.text_vocab_size] == _expected_sid_ids(
      tok.text_vocab_size, sids)


@pytest.mark.parametrize('s', ['', ' ', '  a  b  ', '\n\n\t', 'x\x00y', '<|im_start|>hi',
                               'e\u0301 ﬁ Ω 🙂\U0010FFFF\ufeff', 'A' * 300, '[SID',
                               '<movie:0:'])
def test_edge_cases_never_yield_control_or_sid_ids(tok, s):
  ids = tok.encode_text(s)
  assert tok.decode(ids) == s
  assert all(i >= len(CONTROL) and i < tok.text_vocab_size for i in ids)


def test_layout_decode_and_errors(tok):
  base = tok.text_vocab_size
  assert tok.vocab_size == base + 2 + sum(sum(k) for k in LEVEL_SIZES.values())
  assert tok.id_to_piece(base) == '[SID]' and tok.id_to_piece(tok.vocab_size - 1) == '<movie:1:1>'
  assert tok.decode([0, 1]) == ''  # control tokens
  assert tok.token_to_id('<|im_start|>') == 1
  with pytest.raises(ValueError, match='out of range'):
    tok.decode([tok.vocab_size])
  with pytest.raises(ValueError, match='unclosed SID span'):
    tok.encode('a [SID]<book:0:1>')
  with pytest.raises(ValueError, match='code 9 out of range'):
    tok.encode('[SID]<book:0:9><book:1:0>[/SID]')
  with pytest.raises(ValueError, match='lone surrogate'):
    tok.encode_text('a\ud800')


def test_vocabulary_without_a_byte_refuses_that_byte(tiny_parts):
  tokens, merges, types = tiny_parts
  gone = byte_alphabet()[0x04]
  keep = [i for i, t in enumerate(tokens) if t != gone]
  tokens2 = [tokens[i] for i in keep]
  merges2 = [m for m in merges if gone not in m and m[0] + m[1] in tokens2]
  tok = BPETokenizer(tokens2, merges2, bos_id=0, eos_id=0, token_types=[types[i] for i in keep])
  assert tok.decode(tok.encode('ok')) == 'ok'
  with pytest.raises(ValueError, match=r"character '\\x04' at position 1"):
    tok.encode_text('a\x04b')


def test_save_load_and_tokenizer_json_for_other_tools(tok, tmp_path):
  tok.save(str(tmp_path))
  again = BPETokenizer.load(str(tmp_path))
  s = "It's [SID]<movie:0:7><movie:1:1>[/SID] and 2024 cafés."
  assert again.encode(s) == tok.encode(s)
  assert again.vocab_size == tok.vocab_size
  # The Hugging Face tokenizers library reads tokenizer.json: same text ids, and the SID
  # markup tokens as added tokens at our ids.
  hf = tokenizers.Tokenizer.from_file(os.path.join(tmp_path, 'tokenizer.json'))
  plain = "It's 2024, naïve cafés."
  assert hf.encode(plain, add_special_tokens=False).ids == tok.encode_text(plain)
  assert hf.encode(s, add_special_tokens=False).ids == tok.encode(s)
  assert hf.get_vocab_size(with_added_tokens=True) == tok.vocab_size
  with open(os.path.join(tmp_path, 'tokenizer_config.json')) as f:
    assert json.load(f)['eos_token'] == '<|endoftext|>'


# -- the real SmolLM2 vocabulary ------------------------------------------------------------------


@pytest.fixture(scope='module')
def smol():
  import gguf  # pylint: disable=g-import-not-at-top
  reader = gguf.GGUFReader(backbones.packaged_gguf_path('smollm2-135m'))
  return BPETokenizer.from_gguf(reader, TYPES, LEVEL_SIZES), reader


def test_smollm2_vocabulary_known_encodings(smol):
  tok, reader = smol
  vocab = reader.fields['tokenizer.ggml.tokens'].contents()
  assert tok.text_vocab_size == len(vocab) == 49152
  assert (tok.bos_id, tok.eos_id) == (1, 2)
  assert vocab[tok.bos_id] == '<|im_start|>' and vocab[tok.eos_id] == '<|im_end|>'
  cases = {
      'The capital of France is': ['The', 'Ġcapital', 'Ġof', 'ĠFrance', 'Ġis'],
      ' Paris': ['ĠParis'],
      'in 2024': ['in', 'Ġ', '2', '0', '2', '4'],
  }
  for text, pieces in cases.items():
    assert tok.encode_text(text) == [vocab.index(p) for p in pieces], text
  merges = [tuple(m.split(' ')) for m in reader.fields['tokenizer.ggml.merges'].contents()]
  for text in ("Hello world, it's 12 o'clock!\n  Café naïve 東京", 'SmolLM2 runs NEO.'):
    assert tok.encode_text(text) == _reference_encode(text, vocab, merges)
  s = 'Watch [SID]<movie:0:3><movie:1:1>[/SID] tonight.'
  assert tok.decode(tok.encode(s)) == s
  with pytest.raises(ValueError, match='no token for'):
    tok.encode_text('\x04')


def test_from_hf_tokenizer_json_encodes_like_tokenizers(tmp_path):
  tk = _train_tiny(return_tokenizer=True)
  tk.decoder = tokenizers.decoders.ByteLevel()
  path = str(tmp_path / 'tokenizer.json')
  tk.save(path)
  tok = BPETokenizer.from_tokenizer_json(path, bos_id=0, eos_id=1, type_names=TYPES,
                                         level_sizes=LEVEL_SIZES)
  assert tok.text_vocab_size == tk.get_vocab_size() and tok.decode([0, 1]) == ''
  for text in CORPUS[:4] + ["it's 12 o'clock  \n\tnow"]:
    assert tok.encode_text(text) == tk.encode(text, add_special_tokens=False).ids
    assert tok.decode(tok.encode_text(text)) == text
  spec = json.loads(tk.to_str())
  spec['pre_tokenizer'] = {'type': 'Metaspace', 'replacement': '_'}
  with open(path, 'w') as f:
    json.dump(spec, f)
  with pytest.raises(ValueError, match='pre-tokenizer .* is not supported'):
    BPETokenizer.from_tokenizer_json(path, bos_id=0, eos_id=1)


def test_smollm2_gguf_metadata_gives_the_preset(smol):
  _, reader = smol
  cfg = checkpoints.gguf_config(reader)
  want = get_config('smollm2-135m')
  assert cfg.replace(norm_eps=want.norm_eps) == want
  assert abs(cfg.norm_eps - want.norm_eps) < 1e-10
