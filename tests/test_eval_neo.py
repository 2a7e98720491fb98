"""NEORanker (prefill + trie-constrained beam search through the real decoder's KV cache)
against exhaustive scoring of every catalog item with the full, uncached forward pass."""

import functools

import jax
import numpy as np
from flax import nnx

from neo_jax.decode.trie import SIDTrie
from neo_jax.eval.neo import NEORanker
from neo_jax.model.config import get_config
from neo_jax.model.decoder import Decoder
from neo_jax.sid.types import SIDMap
from neo_jax.tokenizer import SentencePieceTokenizer, train_sentencepiece

TYPES = ('book', 'movie')
LEVELS = {'book': (4, 3, 2), 'movie': (5, 2, 2)}


@functools.lru_cache(maxsize=1)  # shared by the tests (nothing mutates it)
def _setup():
  rng = np.random.default_rng(0)
  codes, types = [], []
  for ti, t in enumerate(TYPES):
    all_codes = np.array(np.meshgrid(*[np.arange(k) for k in LEVELS[t]])).reshape(3, -1).T
    pick = rng.choice(len(all_codes), size=9, replace=False)
    codes.append(all_codes[pick])
    types += [ti] * 9
  sid_map = SIDMap(TYPES, LEVELS, np.concatenate(codes).astype(np.int32),
                   np.array(types, np.int32))
  corpus = ['Task: recommend. Type: movie. Format: ids. History: a b c. Answer: '] * 20
  corpus += ['The quick brown fox jumps over the lazy dog.'] * 20
  tok = SentencePieceTokenizer.from_sid_map(train_sentencepiece(corpus, vocab_size=300), sid_map)
  cfg = get_config('tiny', vocab_size=tok.vocab_size, d_model=32, num_heads=2, num_kv_heads=1,
                   head_dim=16, mlp_dim=64)
  model = Decoder(cfg, rngs=nnx.Rngs(3))
  # Sharpen the random model so that scores differ clearly between items.
  state = nnx.state(model)
  state['embed_tokens'].set_value(state['embed_tokens'].get_value() * 4)
  nnx.update(model, state)
  return sid_map, tok, model


def _exhaustive(model, tok, sid_map, prompt, type_name, score='vocab'):
  """Sum of the codes' log-probabilities of every item of `type_name`, full forward pass;
  score='codes' normalises each level over its code tokens (level 0: all types' codes)."""
  ti = TYPES.index(type_name)
  items = np.flatnonzero(sid_map.type_index == ti)
  codes = np.array([[tok.sid.token_id(type_name, l, int(c))
                     for l, c in enumerate(sid_map.codes[i])] for i in items])
  prefix = [tok.bos_id] + tok.encode(prompt) + [tok.sid.sid_open_id]
  ids = np.concatenate([np.tile(prefix, (len(items), 1)), codes], axis=1).astype(np.int32)
  logits = np.asarray(model(ids), np.float64)
  if score == 'vocab':
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
  else:
    logp = np.full(logits.shape, -np.inf)
    n_prefix = len(prefix)
    for l in range(codes.shape[1]):
      names = TYPES if l == 0 else (type_name,)
      rows = [tok.sid.token_id(t, l, c) for t in names for c in range(LEVELS[t][l])]
      x = logits[:, n_prefix - 1 + l, rows]
      x = x - x.max(axis=-1, keepdims=True)
      logp[:, n_prefix - 1 + l, rows] = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
  n = len(prefix)
  scores = sum(logp[np.arange(len(items)), n - 1 + l, codes[:, l]] for l in range(codes.shape[1]))
  return dict(zip(items.tolist(), scores.tolist()))


def test_ranker_equals_exhaustive_full_forward():
  sid_map, tok, model = _setup()
  trie = SIDTrie.build(sid_map, tok.sid)
  ranker = NEORanker(model, tok, trie, prompt_len=96, batch_size=4)
  prompts = ['Task: recommend. Type: movie. Format: ids. History: a b. Answer: ',
             'Task: recommend. Type: book. Format: ids. History: the lazy dog. Answer: ',
             'quick fox',
             ]
  types = ['movie', 'book', 'movie']
  assert all(len(tok.encode(p)) + 2 <= 96 for p in prompts)  # no prompt is cut
  items, scores = ranker.rank(prompts, types, num_beams=9)
  refs = [_exhaustive(model, tok, sid_map, p, t) for p, t in zip(prompts, types)]
  for ref, got_items, got_scores in zip(refs, items, scores):
    order = sorted(ref, key=ref.get, reverse=True)
    np.testing.assert_array_equal(got_items, order)
    np.testing.assert_allclose(got_scores, [ref[i] for i in order], rtol=1e-5, atol=1e-4)
  # Fewer beams than items: an approximation, but every answer is a distinct item of the
  # requested type, scored exactly.
  items3, scores3 = ranker.rank(prompts, types, num_beams=3)
  for ref, got_items, got_scores in zip(refs, items3, scores3):
    assert len(set(got_items.tolist())) == 3 and set(got_items.tolist()) <= set(ref)
    np.testing.assert_allclose(got_scores, [ref[i] for i in got_items], rtol=1e-5, atol=1e-4)


def test_rows_only_ranker_with_constraints_equals_exhaustive():
  """score='codes' computes only the current level's LM-head rows inside the span; with an
  exclusion list, an allow-list and a catalog removal it still equals exhaustive full-forward
  scoring of the admissible items (same normalisation)."""
  sid_map, tok, model = _setup()
  trie = SIDTrie.build(sid_map, tok.sid)
  ranker = NEORanker(model, tok, trie, prompt_len=96, batch_size=4, score='codes')
  prompts = ['Task: recommend. Type: movie. Format: ids. History: a b. Answer: ',
             'Task: recommend. Type: book. Format: ids. History: the lazy dog. Answer: ']
  types = ['movie', 'book']
  movies = np.flatnonzero(sid_map.type_index == 1).tolist()
  books = np.flatnonzero(sid_map.type_index == 0).tolist()
  excluded = [movies[:2], []]
  allowed = [None, books[:5]]
  ranker.remove_items([movies[3], books[1]])
  items, scores = ranker.rank(prompts, types, num_beams=9, excluded=excluded, allowed=allowed)
  keeps = [set(movies) - set(movies[:2]) - {movies[3]}, set(books[:5]) - {books[1]}]
  for p, t, keep, got_items, got_scores in zip(prompts, types, keeps, items, scores):
    ref = {i: v for i, v in _exhaustive(model, tok, sid_map, p, t, 'codes').items() if i in keep}
    order = sorted(ref, key=ref.get, reverse=True)
    np.testing.assert_array_equal(got_items[:len(order)], order)
    np.testing.assert_array_equal(got_items[len(order):], -1)
    np.testing.assert_allclose(got_scores[:len(order)], [ref[i] for i in order], rtol=1e-5,
                               atol=1e-4)
  # Generation under the same constraints names only admissible items, each at most once.
  # (The beam variant; greedy generation goes through the same masks.)
  outs = ranker.generate(prompts, 'ids', target_types=types, max_new_tokens=12,
                         excluded=excluded, allowed=allowed, num_beams=3)
  for (_, named), keep in zip(outs, keeps):
    assert set(named) <= keep and len(set(named)) == len(named)
