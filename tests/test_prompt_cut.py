"""Over-long prompts lose their oldest history items, never the instruction header: the same
cut in training (train.data) and at inference (NEORanker.prompt_tokens)."""

import types

import numpy as np
import pytest

from neo_jax.decode.ranker import NEORanker
from neo_jax.tasks.types import Example
from neo_jax.tokenizer import SentencePieceTokenizer, train_sentencepiece
from neo_jax.tokenizer.cut import PromptTooLongError, cut_prompt
from neo_jax.train import data as data_lib

LEVEL_SIZES = {'book': (4, 4), 'movie': (8, 8)}
HEADER = 'Task: recommend. Type: movie. Format: ids.'
CORPUS = [HEADER + ' History: none. Answer: ', 'History: a few words. Answer: ',
          'The user engaged with these. Next: a film about rivers and trains.'] * 30


@pytest.fixture(scope='module')
def tok():
  proto = train_sentencepiece(CORPUS, vocab_size=300, model_type='bpe', seed=0)
  return SentencePieceTokenizer(proto, ('book', 'movie'), LEVEL_SIZES)


def _spans(tok, n, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    t = ['book', 'movie'][int(rng.integers(2))]
    out.append(tok.sid.render(t, [int(rng.integers(k)) for k in LEVEL_SIZES[t]]))
  return out


TEMPLATES = ('{header} History: {history}. Answer: ', 'History: {history}. {header} Answer: ')


@pytest.mark.parametrize('template', TEMPLATES)
def test_cut_removes_the_fewest_oldest_items_and_keeps_the_header(tok, template):
  spans = _spans(tok, 12)
  prompt = template.format(header=HEADER, history=' '.join(spans))
  ids = tok.encode(prompt)
  for room in range(len(ids) + 2, 0, -3):
    # Reference: the prompt text rendered with the m oldest items left out, for the smallest m
    # whose tokens fit (at least the newest item stays).
    want = None
    for m in range(len(spans)):
      text = template.format(header=HEADER, history=' '.join(spans[m:]))
      if len(tok.encode(text)) <= room:
        want = (tok.encode(text), m)
        break
    if want is None:
      with pytest.raises(PromptTooLongError, match='only its newest history item'):
        cut_prompt(ids, room, tok)
      continue
    got, removed = cut_prompt(ids, room, tok)
    assert (got, removed) == want, room
    assert HEADER in tok.decode(got) and spans[-1] in tok.decode(got)


def test_prompt_without_history_is_never_cut(tok):
  ids = tok.encode(HEADER + ' Query: a film about rivers and trains. Answer: ')
  assert cut_prompt(ids, len(ids), tok) == (ids, 0)
  with pytest.raises(PromptTooLongError, match='no history to shorten'):
    cut_prompt(ids, len(ids) - 1, tok)
  # Spans with text between them are not a history: only the first run of spans is cut.
  a, b = _spans(tok, 2, seed=3)
  ids = tok.encode(f'{HEADER} Item: {a} and then {b}. Answer: ')
  with pytest.raises(PromptTooLongError):
    cut_prompt(ids, len(ids) - 1, tok)


def test_training_and_ranker_cut_alike_and_count(tok):
  spans = _spans(tok, 10, seed=1)
  prompt = TEMPLATES[0].format(header=HEADER, history=' '.join(spans))
  completion = spans[0]
  ex = Example(task='recommend', prompt=prompt, completion=completion, output_format='ids')
  n_prompt, n_completion = len(tok.encode(prompt)), len(tok.encode(completion)) + 1
  seq_len = n_prompt - 10 + 1 + n_completion  # 10 tokens too long: two 5-token items go
  t, cut = data_lib.tokenize_example(ex, tok, seq_len)
  assert cut >= 2
  trained_prompt = t.tokens[1:len(t.tokens) - n_completion].tolist()
  packed = data_lib.pack_examples([ex, ex], tok, seq_len, batch_size=2)
  assert packed.stats['cut_history_items'] == 2 * cut and packed.stats['truncated_prompts'] == 2
  # The ranker cuts to the same tokens for the same room (prompt_len = bos + room + `[SID]`).
  ranker = types.SimpleNamespace(tokenizer=tok, prompt_len=len(trained_prompt) + 2,
                                 cut_stats={'prompts_cut': 0, 'history_items_cut': 0})
  got = NEORanker.prompt_tokens(ranker, prompt)
  assert got == [tok.bos_id] + trained_prompt + [tok.sid.sid_open_id]
  assert ranker.cut_stats == {'prompts_cut': 1, 'history_items_cut': cut}
  assert HEADER in tok.decode(got)
