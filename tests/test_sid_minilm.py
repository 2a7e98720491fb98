"""all-MiniLM-L6-v2 in Flax against a plain float64 numpy forward pass of the same weights."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf

from neo_jax.sid import minilm

SENTENCES = [
    'A man is eating food.',
    'A man is eating a piece of bread.',
    'The new movie is awesome, a space thriller with aliens!',
    'Stock markets fell sharply on Monday after the announcement.',
    'hello world',
]


@pytest.fixture(scope='module')
def encoder():
  return minilm.MiniLMEncoder(batch_size=4)


def ref_embed(w, ids):
  """float64 numpy BERT + masked mean + L2 norm for one unpadded sequence of token ids."""
  w = {k: v.astype(np.float64) for k, v in w.items() if v.dtype.kind == 'f'}

  def ln(x, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-12) * w[p + '.weight'] + w[p + '.bias']

  def dense(x, p):
    return x @ w[p + '.weight'].T + w[p + '.bias']

  ids = np.asarray(ids)
  t = len(ids)
  x = (w['embeddings.word_embeddings.weight'][ids] + w['embeddings.position_embeddings.weight'][:t]
       + w['embeddings.token_type_embeddings.weight'][0])
  x = ln(x, 'embeddings.LayerNorm')
  for i in range(6):
    p = f'encoder.layer.{i}.'
    heads = []
    q, k, v = (dense(x, p + f'attention.self.{n}') for n in ('query', 'key', 'value'))
    for h in range(12):
      s = slice(32 * h, 32 * h + 32)
      a = q[:, s] @ k[:, s].T / np.sqrt(32)
      a = np.exp(a - a.max(-1, keepdims=True))
      a /= a.sum(-1, keepdims=True)
      heads.append(a @ v[:, s])
    x = ln(x + dense(np.concatenate(heads, -1), p + 'attention.output.dense'),
           p + 'attention.output.LayerNorm')
    hdn = dense(x, p + 'intermediate.dense')
    hdn = 0.5 * hdn * (1 + erf(hdn / np.sqrt(2)))
    x = ln(x + dense(hdn, p + 'output.dense'), p + 'output.LayerNorm')
  m = x.mean(0)
  return m / np.linalg.norm(m)


def test_tokenizer_known_ids(encoder):
  # bert-base-uncased vocabulary: [CLS]=101, hello=7592, world=2088, [SEP]=102.
  assert encoder.tokenize(['Hello world']) == [[101, 7592, 2088, 102]]
  long_ids = encoder.tokenize(['word ' * 400])[0]
  assert len(long_ids) == 256 and long_ids[0] == 101 and long_ids[-1] == 102


def test_matches_numpy_reference(encoder):
  got = encoder.encode(SENTENCES)
  assert got.shape == (len(SENTENCES), 384) and got.dtype == np.float32
  w = minilm.load_weights()
  ids = encoder.tokenize(SENTENCES)
  for i, seq in enumerate(ids):
    np.testing.assert_allclose(got[i], ref_embed(w, seq), atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_batching_and_padding_do_not_change_embeddings(encoder):
  # 5 texts with batch size 4: two batches, padded rows and padded positions.
  together = encoder.encode(SENTENCES)
  alone = np.concatenate([encoder.encode([s]) for s in SENTENCES])
  np.testing.assert_allclose(together, alone, atol=1e-5)


def test_similar_sentences_are_closer(encoder):
  e = encoder.encode(SENTENCES[:4])
  cos = e @ e.T
  assert cos[0, 1] > cos[0, 2] + 0.2 and cos[0, 1] > cos[0, 3] + 0.2
  assert encoder.dim == 384 and 'MiniLM' in encoder.name


def test_bad_input(encoder):
  with pytest.raises(ValueError, match='text 1 is int'):
    encoder.encode(['ok', 3])
  with pytest.raises(ValueError, match='batch_size'):
    minilm.MiniLMEncoder(batch_size=0)
  assert encoder.encode([]).shape == (0, 384)
