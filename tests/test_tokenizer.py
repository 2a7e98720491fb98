"""Sentencepiece tokenizer + SID block: exact round trips, SID ids, malformed markup, save/load."""

from __future__ import annotations

import io
import re

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest
import sentencepiece as spm

from neo_jax.tokenizer import SentencePieceTokenizer, split_markup, train_sentencepiece
from neo_jax.tokenizer.markup import SIDSpan

LEVEL_SIZES = {'book': (4, 4, 3), 'movie': (8, 8, 2), 'song-x_1': (2, 3, 5)}
TYPES = ('book', 'movie', 'song-x_1')
CORPUS = [
    'The Night Garden is a movie about jazz and noir.',
    'Blue Train, a book about trains  and   rivers.\nSecond line\twith a tab.',
    'Über café naïve résumé — 東京 日本語 한국어 😀 emoji',
    'Task: recommend. Type: movie. Format: ids. History: ',
    'numbers 12345 and 2024-01-02, prices $9.99',
] * 40

settings = hypothesis.settings(derandomize=True, deadline=None, max_examples=150,
                               suppress_health_check=[hypothesis.HealthCheck.too_slow])


def _expected_code_id(base, type_name, level, code):
  """Independent layout: base, base+1 delimiters, then types in order, levels in order."""
  nxt = base + 2
  for t in TYPES:
    for l, k in enumerate(LEVEL_SIZES[t]):
      if (t, l) == (type_name, level):
        return nxt + code
      nxt += k
  raise AssertionError('unreachable')


@pytest.fixture(scope='module', params=['bpe', 'unigram'])
def tok(request):
  proto = train_sentencepiece(CORPUS, vocab_size=400, model_type=request.param, seed=0)
  return SentencePieceTokenizer(proto, TYPES, LEVEL_SIZES)


# Text that is guaranteed to hold no SID markup but stresses every character the parser and
# sentencepiece treat specially.
_tricky = st.sampled_from(list(' \n\t\r▁[]<>:/') + ['[SID', 'SID]', '<movie:0:', '  ', '\n\n'])
_text = st.lists(st.one_of(st.text(max_size=6), _tricky), max_size=8).map(''.join)
_MARKUP = re.compile(r'\[SID\]|\[/SID\]|<[A-Za-z0-9_-]+:\d+:\d+>')
_plain = _text.filter(lambda s: not _MARKUP.search(s))


@st.composite
def _sid(draw):
  t = draw(st.sampled_from(TYPES))
  codes = tuple(draw(st.integers(0, k - 1)) for k in LEVEL_SIZES[t])
  return t, codes


def _render(t, codes):
  return '[SID]' + ''.join(f'<{t}:{l}:{c}>' for l, c in enumerate(codes)) + '[/SID]'


@st.composite
def _interleaved(draw):
  """(string, list of its SIDs in order), text and SIDs alternating in random runs."""
  parts, sids = [], []
  for _ in range(draw(st.integers(0, 5))):
    if draw(st.booleans()):
      parts.append(draw(_plain))
    else:
      t, codes = draw(_sid())
      sids.append((t, codes))
      parts.append(_render(t, codes))
  s = ''.join(parts)
  # Adjacent plain parts could join into markup ("[SI" + "D]"); such draws are discarded.
  hypothesis.assume(len(_MARKUP.findall(s)) == sum(len(c) + 2 for _, c in sids))
  return s, sids


@settings
@hypothesis.given(data=_interleaved())
def test_round_trip_interleaved(tok, data):
  s, sids = data
  ids = tok.encode(s)
  assert tok.decode(ids) == s
  base = tok.text_vocab_size
  # The SID ids, in order, are exactly the delimiters and codes of the SIDs written.
  want = []
  for t, codes in sids:
    want += [base] + [_expected_code_id(base, t, l, c) for l, c in enumerate(codes)] + [base + 1]
  assert [i for i in ids if i >= base] == want
  assert all(0 <= i < tok.vocab_size for i in ids)


@settings
@hypothesis.given(s=_text)
def test_encode_text_never_yields_sid_ids(tok, s):
  ids = tok.encode_text(s)
  assert all(0 <= i < tok.text_vocab_size for i in ids)
  assert tok.decode(ids) == s


@pytest.mark.parametrize('s', [
    '', ' ', '  ', '\n', ' lead', 'trail ', '  a  b  ', 'a\n\n b\t\tc\r\n', '▁', '▁▁ ▁',
    ' ▁x▁ ', 'x\x00y', 'e\u0301 ﬁ Ω 🙂\U0010FFFF\ufeff\u2028', 'A' * 300,
])
def test_round_trip_edge_cases(tok, s):
  assert tok.decode(tok.encode(s)) == s
  assert tok.decode(tok.encode_text(s)) == s


def test_typed_markup_is_plain_text_via_encode_text(tok):
  s = 'user typed [SID]<movie:0:1><movie:1:2><movie:2:0>[/SID] and [/SID] <book:9:9>'
  ids = tok.encode_text(s)
  assert max(ids) < tok.text_vocab_size
  assert tok.decode(ids) == s
  # Through encode the same markup is parsed: exactly one span's worth of SID ids.
  sid_ids = [i for i in tok.encode(s.replace(' and [/SID] <book:9:9>', '')) if i >= tok.text_vocab_size]
  base = tok.text_vocab_size
  assert sid_ids == [base, _expected_code_id(base, 'movie', 0, 1),
                     _expected_code_id(base, 'movie', 1, 2),
                     _expected_code_id(base, 'movie', 2, 0), base + 1]


def test_vocab_layout(tok):
  assert tok.pad_id == 0 and tok.bos_id == 2 and tok.eos_id == 3
  assert tok.vocab_size == tok.text_vocab_size + 2 + sum(sum(k) for k in LEVEL_SIZES.values())
  assert tok.id_to_piece(tok.text_vocab_size) == '[SID]'
  assert tok.id_to_piece(tok.text_vocab_size + 1) == '[/SID]'
  assert tok.id_to_piece(tok.vocab_size - 1) == '<song-x_1:2:4>'
  assert tok.decode([tok.pad_id, tok.bos_id, tok.eos_id]) == ''


M = '<movie:0:1><movie:1:2><movie:2:0>'


@pytest.mark.parametrize('s, message', [
    ('ab <movie:0:1> c', "SID code '<movie:0:1>' at position 3 is outside"),
    ('x [SID]' + M, "unclosed SID span: '[SID]' at position 2"),
    ('xy[/SID]', "'[/SID]' at position 2 without an open"),
    ('[SID]<film:0:1><film:1:1><film:2:1>[/SID]', "unknown entity type 'film'"),
    ('[SID]<movie:0:8><movie:1:0><movie:2:0>[/SID]', 'code 8 out of range [0, 8) for movie level 0'),
    ('[SID]<movie:0:1><movie:1:2><movie:2:2>[/SID]', "'<movie:2:2>' at position 27: code 2 out of range"),
    ('[SID]<movie:0:1><movie:1:2>[/SID]', 'SID span at position 0 has 2 codes, expected 3'),
    ('[SID][/SID]', 'has 0 codes, expected 3'),
    ('[SID] ' + M + '[/SID]', "unexpected text ' ' at position 5 inside the SID span"),
    ('[SID]' + M + M + '[/SID]', 'one code too many'),
    ('[SID]<movie:1:1><movie:0:2><movie:2:0>[/SID]', 'has level 1, expected level 0'),
    ('[SID]<movie:0:1><book:1:2><movie:2:0>[/SID]', "has type 'book' but the span started"),
    ('[SID][SID]' + M + '[/SID]', "nested '[SID]' at position 5"),
])
def test_malformed_markup_raises(tok, s, message):
  with pytest.raises(ValueError) as e:
    tok.encode(s)
  assert message in str(e.value)


def test_split_markup_pieces(tok):
  s = 'a [SID]' + M + '[/SID]b'
  pieces = split_markup(s, tok.sid)
  assert pieces == ['a ', SIDSpan('movie', (1, 2, 0), 2, 2 + 5 + len(M) + 6), 'b']


def test_save_load(tok, tmp_path):
  tok.save(str(tmp_path))
  back = SentencePieceTokenizer.load(str(tmp_path))
  assert back.model_proto == tok.model_proto
  assert back.vocab_size == tok.vocab_size and back.text_vocab_size == tok.text_vocab_size
  assert back.sid.type_names == tok.sid.type_names
  assert back.sid.level_sizes == tok.sid.level_sizes
  np.testing.assert_array_equal(back.sid.offsets_TxL, tok.sid.offsets_TxL)
  for s in CORPUS[:5] + ['q [SID]' + M + '[/SID] ▁ end ']:
    assert back.encode(s) == tok.encode(s)


def test_training_is_deterministic_and_respects_vocab_size():
  a = train_sentencepiece(CORPUS, vocab_size=350, model_type='unigram', seed=3)
  b = train_sentencepiece(CORPUS, vocab_size=350, model_type='unigram', seed=3)
  assert a == b
  sp = spm.SentencePieceProcessor(model_proto=a)
  assert 260 < sp.get_piece_size() <= 350
  with pytest.raises(ValueError, match='vocab_size 200'):
    train_sentencepiece(CORPUS, vocab_size=200)
  with pytest.raises(ValueError, match='model_type'):
    train_sentencepiece(CORPUS, vocab_size=400, model_type='word')


def test_rejects_model_that_does_not_round_trip():
  # Sentencepiece defaults (NFKC, dummy prefix, whitespace collapsing) lose information.
  writer = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(CORPUS), model_writer=writer, vocab_size=400, byte_fallback=True,
      pad_id=0, unk_id=1, bos_id=2, eos_id=3, hard_vocab_limit=False, minloglevel=2)
  with pytest.raises(ValueError, match='does not round-trip'):
    SentencePieceTokenizer(writer.getvalue(), TYPES, LEVEL_SIZES)
