"""Packing of prompt/completion examples into fixed-length rows."""

import types

import numpy as np
import pytest

from neo_jax.tasks.types import Example
from neo_jax.train import data as data_lib


class CharTokenizer:
  """Independent stand-in: one id per character (ord + 3); 0 pad, 1 bos, 2 eos; no SIDs
  (SID span cuts: tests/test_prompt_cut.py)."""
  pad_id, bos_id, eos_id = 0, 1, 2
  sid = types.SimpleNamespace(sid_open_id=-1, sid_close_id=-2)

  def encode(self, text):
    return [ord(c) + 3 for c in text]

  def decode(self, ids):
    return ''.join(chr(i - 3) for i in ids)


def _examples(n, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    p = ''.join(rng.choice(list('abcdefgh'), size=rng.integers(3, 30)))
    c = ''.join(rng.choice(list('XYZ'), size=rng.integers(1, 8)))
    out.append(Example(task='recommend', prompt=p, completion=c, output_format='ids'))
  return out


def test_packing_keeps_every_example_whole_and_masks_completions():
  examples = _examples(200)
  tok = CharTokenizer()
  packed = data_lib.pack_examples(examples, tok, seq_len=64, batch_size=8, seed=1)
  assert packed.stats['examples'] == 200
  recovered = []
  for r in range(packed.num_rows):
    for s in range(1, packed.segment_ids[r].max() + 1):
      sel = packed.segment_ids[r] == s
      idx = np.flatnonzero(sel)
      assert np.all(np.diff(idx) == 1), 'a segment must be contiguous'
      np.testing.assert_array_equal(packed.positions[r, sel], np.arange(sel.sum()))
      toks, mask = packed.tokens[r, sel], packed.loss_mask[r, sel]
      assert toks[0] == tok.bos_id and toks[-1] == tok.eos_id
      text = ''.join(chr(t - 3) for t in toks[1:-1])
      completion = ''.join(chr(t - 3) for t in toks[mask][:-1])
      recovered.append((text[:len(text) - len(completion)], completion))
    assert not packed.loss_mask[r, packed.segment_ids[r] == 0].any()
  assert sorted(recovered) == sorted((e.prompt, e.completion) for e in examples)
  assert packed.stats['fill'] > 0.8


def test_long_prompt_without_history_and_long_completion_are_skipped_and_counted():
  tok = CharTokenizer()
  ex = Example(task='search', prompt='0123456789', completion='AB', output_format='ids')
  # No history to shorten: cutting text would cut the instruction, so it is refused.
  with pytest.raises(data_lib.PromptTooLongError, match='no history to shorten'):
    data_lib.tokenize_example(ex, tok, max_len=8)
  fits = Example(task='search', prompt='01234', completion='AB', output_format='ids')
  t, cut = data_lib.tokenize_example(fits, tok, max_len=9)
  assert cut == 0 and ''.join(chr(x - 3) for x in t.tokens[1:-3]) == '01234'
  bad = Example(task='search', prompt='p', completion='A' * 10, output_format='ids')
  with pytest.raises(data_lib.CompletionTooLongError, match='cannot fit'):
    data_lib.tokenize_example(bad, tok, max_len=8)
  # Packing skips both kinds and counts them.
  packed = data_lib.pack_examples([ex, bad, fits], tok, seq_len=9, batch_size=1)
  assert packed.stats['examples'] == 1
  assert packed.stats['skipped_completion_too_long'] == 1
  assert packed.stats['skipped_prompt_too_long'] == 1


def test_batches_are_a_pure_function_of_step():
  packed = data_lib.pack_examples(_examples(100), CharTokenizer(), 32, batch_size=4, seed=3)
  again = data_lib.pack_examples(_examples(100), CharTokenizer(), 32, batch_size=4, seed=3)
  for step in (0, 5, packed.steps_per_epoch + 2):
    a, b = packed.batch(step), again.batch(step)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  # One epoch visits distinct rows.
  seen = np.concatenate([packed.batch(s)['tokens'] for s in range(packed.steps_per_epoch)])
  assert len({r.tobytes() for r in seen}) == len(seen)
