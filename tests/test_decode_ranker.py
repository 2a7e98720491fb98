"""NEORanker (prefill + trie-constrained beam search through the real decoder's KV cache)
against exhaustive scoring of every catalog item with the full, uncached forward pass."""

import collections
import functools

import jax
import numpy as np
import pytest
from flax import nnx

from neo_jax.decode import ranker as ranker_lib
from neo_jax.decode.trie import SIDTrie
from neo_jax.decode.ranker import NEORanker
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
  return sid_map, tok, _sharp_model(cfg, seed=3)


def _sharp_model(cfg, seed):
  model = Decoder(cfg, rngs=nnx.Rngs(seed))
  # Sharpen the random model so that scores differ clearly between items.
  state = nnx.state(model)
  state['embed_tokens'].set_value(state['embed_tokens'].get_value() * 4)
  nnx.update(model, state)
  return model


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
  ranker = NEORanker(model, tok, trie, prompt_len=96, batch_size=4, score='vocab')
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
  """score='codes' (the default) computes only the current level's LM-head rows inside the
  span; with an exclusion list, an allow-list and a catalog removal it still equals exhaustive
  full-forward scoring of the admissible items (same normalisation)."""
  sid_map, tok, model = _setup()
  trie = SIDTrie.build(sid_map, tok.sid)
  ranker = NEORanker(model, tok, trie, prompt_len=96, batch_size=4)
  assert ranker.score == 'codes'
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


def _log_softmax(x):
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _parse_python(tok, sid_map, toks):
  """Catalog row of L code tokens, by vocab.describe + SIDMap.item_of; -1 if none."""
  if not all(tok.sid.is_code(t) for t in toks):
    return -1
  described = [tok.sid.describe(int(t)) for t in toks]
  if [d[0] for d in described] != [described[0][0]] * len(toks):
    return -1
  if [d[1] for d in described] != list(range(len(toks))):
    return -1
  row = sid_map.item_of(described[0][0], tuple(d[2] for d in described))
  return -1 if row is None else row


def test_unconstrained_rank_equals_full_forward_beam_search_and_parses_items():
  """constrained=False: plain beam search over the whole vocabulary, checked against a numpy
  beam search over full uncached forward passes; beams parsed back to items independently."""
  sid_map, tok, model = _setup()
  trie = SIDTrie.build(sid_map, tok.sid)
  ranker = NEORanker(model, tok, trie, prompt_len=96, batch_size=4)
  prompts = ['Task: recommend. Type: movie. Format: ids. History: a b. Answer: ', 'quick fox']
  types = ['movie', None]
  k = 6
  items, scores, stats = ranker.rank(prompts, types, num_beams=k, constrained=False)
  assert items.shape == scores.shape == (2, k)
  valid = typed = 0
  for b, prompt in enumerate(prompts):
    prefix = [tok.bos_id] + tok.encode(prompt) + [tok.sid.sid_open_id]
    beams = [(0.0, [])]
    for _ in range(3):
      ids = np.array([prefix + t for _, t in beams], np.int32)
      logp = _log_softmax(np.asarray(model(ids), np.float64)[:, -1])
      cands = [(s + logp[i, v], t + [v]) for i, (s, t) in enumerate(beams)
               for v in range(logp.shape[1])]
      beams = sorted(cands, key=lambda c: -c[0])[:k]
    np.testing.assert_allclose(scores[b], [s for s, _ in beams], rtol=1e-4, atol=1e-3)
    expected = [_parse_python(tok, sid_map, t) for _, t in beams]
    assert items[b].tolist() == expected
    valid += sum(e >= 0 for e in expected)
    typed += k if types[b] else 0
  assert stats['sids'] == 2 * k and stats['valid'] == valid and stats['typed_sids'] == typed
  assert stats['valid_fraction'] == valid / (2 * k)
  assert ranker.last_stats == stats


def test_parse_sids_against_the_sid_map():
  sid_map, tok, model = _setup()
  ranker = NEORanker(model, tok, SIDTrie.build(sid_map, tok.sid), prompt_len=96)
  rng = np.random.default_rng(5)
  rows = []
  for n in range(len(sid_map)):
    t = TYPES[int(sid_map.type_index[n])]
    rows.append([tok.sid.token_id(t, l, int(c)) for l, c in enumerate(sid_map.codes[n])])
  rows += [list(rng.integers(0, tok.vocab_size, 3)) for _ in range(200)]  # mostly invalid
  rows += [[r[0], r[2], r[1]] for r in rows[:5]]  # levels out of order
  got, _ = ranker.parse_sids(np.array(rows))
  assert got.tolist() == [_parse_python(tok, sid_map, r) for r in rows]
  assert (got[:len(sid_map)] == np.arange(len(sid_map))).all()
  ranker.remove_items([0, 4])
  got, _ = ranker.parse_sids(np.array(rows[:len(sid_map)]))
  assert got[0] == -1 and got[4] == -1 and got[1] == 1


def test_unconstrained_generation_and_rows_head_generation():
  """generate(constrained=False) equals greedy decoding by full forward passes with no mask,
  its spans parsed independently; constrained generation with the rows-only head equals the
  full head's."""
  sid_map, tok, model = _setup()
  trie = SIDTrie.build(sid_map, tok.sid)
  ranker = NEORanker(model, tok, trie, prompt_len=96, batch_size=4)
  prompts = ['Task: recommend. Type: movie. Format: mixed. History: a b. Answer: ', 'fox']
  outs, stats = ranker.generate(prompts, 'mixed', max_new_tokens=10, constrained=False,
                                target_types=['movie', None])
  spans = valid = 0
  for (text, rows), prompt in zip(outs, prompts):
    ids = [tok.bos_id] + tok.encode(prompt)
    new = []
    for _ in range(10):
      nxt = int(np.argmax(np.asarray(model(np.array([ids], np.int32)))[0, -1]))
      ids.append(nxt)
      new.append(nxt)
      if nxt == tok.eos_id:
        break
    new = [t for t in new if t != tok.eos_id]
    assert text == tok.decode(new)
    expected, i = [], 0
    while i < len(new):
      if new[i] == tok.sid.sid_open_id:
        j = i + 1
        while j < len(new) and new[j] not in (tok.sid.sid_open_id, tok.sid.sid_close_id):
          j += 1
        span = new[i + 1:j]
        expected.append(_parse_python(tok, sid_map, span) if len(span) == 3 else -1)
        i = j if j < len(new) and new[j] == tok.sid.sid_open_id else j + 1
      else:
        i += 1
    assert rows == expected
    spans += len(expected)
    valid += sum(e >= 0 for e in expected)
  assert stats['sids'] == spans and stats['valid'] == valid
  full = NEORanker(model, tok, trie, prompt_len=96, batch_size=4, rows_head=False)
  kwargs = dict(target_types=['movie', 'book'], max_new_tokens=12)
  assert ranker.generate(prompts, 'ids', **kwargs) == full.generate(prompts, 'ids', **kwargs)


def test_added_items_are_ranked_like_a_full_build():
  """Rows missing from the SID map are added to a trie with capacity; ranking then equals
  exhaustive scoring of the whole catalog, and adding them again is refused."""
  sid_map, tok, model = _setup()
  late = [2, 11, 16]
  codes = np.array(sid_map.codes)
  codes[late] = -1
  partial = SIDMap(TYPES, LEVELS, codes, np.array(sid_map.type_index))
  ranker = NEORanker(model, tok, SIDTrie.build(partial, tok.sid, capacity=len(sid_map)),
                     prompt_len=96, batch_size=4, score='vocab')
  prompt = 'Task: recommend. Type: movie. Format: ids. History: a b. Answer: '
  before, _ = ranker.rank([prompt], ['movie'], num_beams=9)
  assert not set(before[0].tolist()) & set(late)
  ranker.add_items(late, [(TYPES[int(sid_map.type_index[r])], sid_map.codes[r]) for r in late])
  items, scores = ranker.rank([prompt], ['movie'], num_beams=9)
  ref = _exhaustive(model, tok, sid_map, prompt, 'movie')
  order = sorted(ref, key=ref.get, reverse=True)
  np.testing.assert_array_equal(items[0], order)
  np.testing.assert_allclose(scores[0], [ref[i] for i in order], rtol=1e-5, atol=1e-4)
  with pytest.raises(ValueError, match='in the trie already'):
    ranker.add_items(late[:1], [('book', (0, 0, 0))])


def test_parse_spans_of_unconstrained_output():
  sid_map, tok, model = _setup()
  ranker = NEORanker(model, tok, SIDTrie.build(sid_map, tok.sid), prompt_len=96)
  o, c = tok.sid.sid_open_id, tok.sid.sid_close_id
  codes = [[tok.sid.token_id(TYPES[int(sid_map.type_index[n])], l, int(x))
            for l, x in enumerate(sid_map.codes[n])] for n in (3, 12)]
  text = tok.encode('fox')
  ids = (text + [o] + codes[0] + [c] + text + [o] + codes[1][:2] + [o] + codes[1] + [c]
         + [c] + [o] + codes[0][::-1] + [c] + [o] + codes[1][:1])
  rows, types = ranker._parse_spans(ids)
  # Spans: item 3; cut by `[SID]`; item 12; the stray `[/SID]` is text; reversed codes; cut
  # by the end.
  assert rows.tolist() == [3, -1, 12, -1, -1]
  assert types.tolist() == [int(sid_map.type_index[3]), -1, int(sid_map.type_index[12]), -1, -1]


def test_set_model_equals_a_fresh_ranker_without_retracing(monkeypatch):
  """`set_model` with a model of the same structure: rank and generate give exactly what a new
  ranker on that model gives, and neither compiled program is traced again."""
  sid_map, tok, model = _setup()
  other = _sharp_model(model.cfg, seed=11)
  traces = collections.Counter()

  def counted(name, fn):
    def wrapper(*args, **kwargs):
      traces[name] += 1  # runs only while the ranker's jitted program is traced
      return fn(*args, **kwargs)
    return wrapper

  monkeypatch.setattr(ranker_lib, 'sid_beam_search',
                      counted('search', ranker_lib.sid_beam_search))
  monkeypatch.setattr(ranker_lib, 'constrained_generate',
                      counted('generate', ranker_lib.constrained_generate))
  trie = SIDTrie.build(sid_map, tok.sid)
  prompts = ['Task: recommend. Type: movie. Format: ids. History: a b. Answer: ', 'quick fox',
             'Task: recommend. Type: book. Format: mixed. Answer: ']
  types = ['movie', None, 'book']
  movies = np.flatnonzero(sid_map.type_index == 1).tolist()
  kwargs = dict(excluded=[movies[:2], [], []])

  def outputs(ranker):
    items, scores = ranker.rank(prompts, types, num_beams=5, **kwargs)
    return items, scores, ranker.generate(prompts, 'mixed', target_types=types,
                                          max_new_tokens=10, **kwargs)

  ranker = NEORanker(model, tok, trie, prompt_len=96, batch_size=4)
  before = outputs(ranker)
  # One trace per length bucket the prompts fall in.
  buckets = {ranker.bucket_of(len(ranker.prompt_tokens(p))) for p in prompts}
  assert traces['search'] == len(buckets) and traces['generate'] >= 1
  compiled = dict(traces)
  ranker.set_model(other)
  swapped = outputs(ranker)
  assert traces == compiled  # new parameters, same compiled programs
  ranker.set_model(model)
  again = outputs(ranker)
  assert traces == compiled
  fresh = outputs(NEORanker(other, tok, trie, prompt_len=96, batch_size=4))
  for got, want in ((swapped, fresh), (again, before)):
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])  # bit for bit
    assert got[2] == want[2]
  assert not np.array_equal(swapped[1], before[1])  # the parameters did change


def test_length_buckets_group_requests_and_keep_their_order(monkeypatch):
  """Prompts of several lengths in one call: grouped by bucket, each batch padded to its
  bucket's width and a power of two of rows; the answers, in request order, equal ranking each
  prompt alone at the full width; a new length within a bucket compiles nothing."""
  sid_map, tok, model = _setup()
  trie = SIDTrie.build(sid_map, tok.sid)
  traces = collections.Counter()
  search = ranker_lib.sid_beam_search

  def counted(*args, **kwargs):
    traces['search'] += 1
    return search(*args, **kwargs)

  monkeypatch.setattr(ranker_lib, 'sid_beam_search', counted)
  ranker = NEORanker(model, tok, trie, prompt_len=96, batch_size=4)
  assert ranker.length_buckets == (16, 32, 64, 96)
  prompts = ['fox', 'Task: recommend. Type: movie. Format: ids. History: a b c. Answer: ',
             'quick fox', 'the lazy dog jumps', 'Task: recommend. Type: book. Answer: ']
  types = ['movie', None, 'book', None, 'book']
  excluded = [[0], [1, 2], [], [3], [4, 5, 6]]
  lengths = [len(ranker.prompt_tokens(p)) for p in prompts]
  assert len({ranker.bucket_of(n) for n in lengths}) >= 2
  items, scores = ranker.rank(prompts, types, num_beams=5, excluded=excluded)
  wide = NEORanker(model, tok, trie, prompt_len=96, batch_size=1, length_buckets=(96,))
  for b, p in enumerate(prompts):
    want_items, want_scores = wide.rank([p], [types[b]], num_beams=5, excluded=[excluded[b]])
    np.testing.assert_array_equal(items[b], want_items[0])
    np.testing.assert_allclose(scores[b], want_scores[0], rtol=1e-5, atol=1e-5)
  seen = traces['search']
  short = [p for p, n in zip(prompts, lengths) if ranker.bucket_of(n) == 16]
  other = 'dog fox dog the'  # another length, the same bucket
  assert ranker.bucket_of(len(ranker.prompt_tokens(other))) == 16
  assert len(ranker.prompt_tokens(other)) not in lengths
  again = [other] + short[1:]
  ranker.rank(again, [None] * len(again), num_beams=5, excluded=[[1, 2, 3]] * len(again))
  assert traces['search'] == seen  # that bucket was compiled already
  with pytest.raises(ValueError, match='length_buckets'):
    NEORanker(model, tok, trie, prompt_len=96, length_buckets=(32, 16, 96))
  with pytest.raises(ValueError, match='length_buckets'):
    NEORanker(model, tok, trie, prompt_len=96, length_buckets=(16, 64))
  with pytest.raises(ValueError, match='longer than prompt_len'):
    ranker.rank_tokens([[1] * 97], [None], num_beams=2)


def _trained_model(tok, sid_map, prompts, targets, steps=150):
  """The tiny decoder trained (Adam, full forward) to answer prompt i with item targets[i]."""
  import jax.numpy as jnp
  import optax
  cfg = get_config('tiny', vocab_size=tok.vocab_size, d_model=32, num_heads=2, num_kv_heads=1,
                   head_dim=16, mlp_dim=64)
  model = Decoder(cfg, rngs=nnx.Rngs(21))
  seqs = []
  for p, item in zip(prompts, targets):
    t = TYPES[int(sid_map.type_index[item])]
    codes = [tok.sid.token_id(t, l, int(c)) for l, c in enumerate(sid_map.codes[item])]
    seqs.append([tok.bos_id] + tok.encode(p) + [tok.sid.sid_open_id] + codes)
  width = max(len(x) for x in seqs)
  ids = np.zeros((len(seqs), width), np.int32)
  weight = np.zeros((len(seqs), width), np.float32)
  for i, x in enumerate(seqs):
    ids[i, :len(x)] = x
    weight[i, len(x) - 4:len(x) - 1] = 1.0  # the positions that predict the codes
  graphdef, params = nnx.split(model)
  opt = optax.adam(1e-2)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state):
    def loss(params):
      logits = nnx.merge(graphdef, params)(jnp.asarray(ids))[:, :-1]
      nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.asarray(ids)[:, 1:, None],
                                 axis=-1)[..., 0]
      return jnp.sum(nll * weight[:, :-1]) / weight.sum()
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  for _ in range(steps):
    params, opt_state, value = step(params, opt_state)
  assert float(value) < 0.5, f'the tiny model did not learn its answers (loss {float(value)})'
  return nnx.merge(graphdef, params)


def test_bfloat16_serving_agrees_with_float32_on_a_trained_model():
  """dtype='bfloat16' (weights and compute; scores float32) on a tiny trained model. Stated
  tolerance: the top item of every request is the same as float32's, the top-5 lists share at
  least 4 of 5 items on average, and the scores of the items both return differ by at most
  0.1 nats."""
  sid_map, tok, _ = _setup()
  trie = SIDTrie.build(sid_map, tok.sid)
  rng = np.random.default_rng(9)
  words = ['fox', 'dog', 'lazy', 'quick', 'brown', 'jumps', 'over', 'the']
  prompts = [' '.join(rng.choice(words, 4)) + f' {i}' for i in range(12)]
  targets = rng.choice(len(sid_map), 12, replace=False).tolist()
  model = _trained_model(tok, sid_map, prompts, targets)
  types = [None] * len(prompts)
  f32 = NEORanker(model, tok, trie, prompt_len=48, batch_size=8, dtype='float32')
  bf16 = NEORanker(model, tok, trie, prompt_len=48, batch_size=8, dtype='bfloat16')
  assert bf16.state['embed_tokens'].get_value().dtype == jnp_bfloat16()
  # On a CPU bfloat16 is served unrolled (its fast path there): that path is what is checked.
  assert bf16.unroll_layers == (jax.default_backend() == 'cpu') and not f32.unroll_layers
  assert model.embed_tokens.get_value().dtype == np.float32  # the model itself is unchanged
  items32, scores32 = f32.rank(prompts, types, num_beams=5)
  items16, scores16 = bf16.rank(prompts, types, num_beams=5)
  assert items32[:, 0].tolist() == targets  # trained: the answers are the targets
  np.testing.assert_array_equal(items16[:, 0], items32[:, 0])
  overlap = np.mean([len(set(a) & set(b)) for a, b in zip(items32.tolist(), items16.tolist())])
  assert overlap >= 4.0, overlap
  for a, sa, b, sb in zip(items32, scores32, items16, scores16):
    common = set(a.tolist()) & set(b.tolist())
    diffs = [abs(sa[a.tolist().index(i)] - sb[b.tolist().index(i)]) for i in common]
    assert max(diffs) <= 0.1, diffs
  with pytest.raises(ValueError, match='serving dtype'):
    NEORanker(model, tok, trie, prompt_len=48, dtype='float16')


def jnp_bfloat16():
  import jax.numpy as jnp
  return jnp.bfloat16
