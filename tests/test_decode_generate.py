"""Interleaved generation: output formats, spans name real items, limits, greedy vs a reference."""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neo_jax.decode.cache import left_pad
from neo_jax.decode.generate import GenerateSettings, generate
from neo_jax.decode.interface import Constraints, prefill
from neo_jax.decode.testing import markov_cache, markov_lm, markov_logits
from neo_jax.decode.trie import SIDTrie, SIDVocabArrays, request_filter
from neo_jax.sid.types import SIDMap
from neo_jax.tokenizer.sid_vocab import SIDVocab

PAD, EOS = 0, 1
SEPARATORS = (2, 3)
TEXT_VOCAB = 8
MAX_NEW = 24


@pytest.fixture(scope='module')
def setup():
  rng = np.random.default_rng(1)
  sizes = {'a': (3, 4), 'b': (2, 3)}
  codes = np.array([[0, 0], [0, 3], [1, 2], [2, 1], [2, 3], [0, 1], [1, 0], [1, 2]], np.int32)
  types = np.array([0, 0, 0, 0, 0, 1, 1, 1], np.int32)
  sid_map = SIDMap(('a', 'b'), sizes, codes, types)
  vocab = SIDVocab(('a', 'b'), sizes, TEXT_VOCAB)
  v = vocab.end
  first = rng.normal(0, 1.5, (v, v)).astype(np.float32)
  second = rng.normal(0, 1.5, (v, v)).astype(np.float32)
  position = rng.normal(0, 1.5, (7, v)).astype(np.float32)
  first[:, vocab.sid_open_id] += 2.0  # make spans common, so the tests see many of them
  first[:, EOS] -= 1.0
  model = markov_lm(first, second, position)
  prompts = [[4, 5], [6], [7, 4, 5], [5, 5]]
  allowed = np.array([[True, True], [True, False], [False, True], [True, True]])
  return dict(sid_map=sid_map, vocab=vocab, first=first, second=second, position=position,
              model=model, prompts=prompts, allowed=allowed, trie=SIDTrie.build(sid_map, vocab),
              arrays=SIDVocabArrays.from_vocab(vocab))


def run(s, prompts=None, rows_head=False, allowed_types_BxT=None, request=None,
        temperature=0.0, rng=None, sample_codes=False, **settings):
  """Prefill + generate; rows_head: code rows only of the LM head inside spans; `settings`:
  the other GenerateSettings."""
  prompts = s['prompts'] if prompts is None else prompts
  tokens, positions, valid = left_pad(prompts, PAD)
  cache = markov_cache(len(prompts), tokens.shape[1] + MAX_NEW)
  pre, cache = prefill(s['model'], cache, jnp.asarray(tokens), jnp.asarray(positions),
                       jnp.asarray(valid))
  constraints = Constraints(s['trie'], s['arrays'], allowed_types_BxT, request)
  settings = GenerateSettings(max_new_tokens=MAX_NEW, eos_id=EOS, pad_id=PAD, rows_head=rows_head,
                              **settings)
  out = generate(s['model'], cache, pre, constraints, settings, temperature=temperature, rng=rng,
                 sample_codes=sample_codes)
  return jax.tree.map(np.asarray, out)


def parse(vocab, sid_map, tokens):
  """Splits one row's tokens into text and spans; returns (text ids, [catalog row of span])."""
  text, items, i = [], [], 0
  while i < len(tokens):
    if tokens[i] != vocab.sid_open_id:
      assert not vocab.is_code(tokens[i]) and tokens[i] != vocab.sid_close_id, tokens
      text.append(tokens[i])
      i += 1
      continue
    span = tokens[i + 1:i + 1 + vocab.num_levels]
    if not span:  # `[SID]` was the last token (max_new_tokens)
      break
    described = [vocab.describe(int(x)) for x in span]
    type_name = described[0][0]
    assert [d[0] for d in described] == [type_name] * len(span), tokens
    assert [d[1] for d in described] == list(range(len(span))), tokens
    i += 1 + len(span)
    if len(span) < vocab.num_levels:  # cut by max_new_tokens
      break
    item = sid_map.item_of(type_name, tuple(d[2] for d in described))
    assert item is not None, f'span {described} is not a catalog item'
    items.append(item)
    if i < len(tokens):
      assert tokens[i] == vocab.sid_close_id, tokens
      i += 1
  return text, items


def reference_greedy(s, prompt, allowed_types, output_format, max_items, excluded=(),
                     allow_list=None, removed=()):
  """Plain-Python greedy decoding with the masks spelled out from the SID map (no trie): the
  admissible items are those of allowed types, not removed, not excluded, in the allow-list
  when there is one, and not named before in the answer."""
  vocab, sid_map = s['vocab'], s['sid_map']
  path_of = {n: (int(sid_map.type_index[n]),) + tuple(int(c) for c in sid_map.codes[n])
             for n in range(len(sid_map)) if allowed_types[int(sid_map.type_index[n])]
             and n not in removed and n not in excluded
             and (allow_list is None or n in allow_list)}
  history, out, items, span = list(prompt), [], [], None
  for _ in range(MAX_NEW):
    paths = {p for n, p in path_of.items() if n not in items}
    logits = markov_logits(s['first'], s['second'], history, s['position'])
    if span is None:
      allowed = (set(SEPARATORS) | {EOS}) if output_format == 'ids' else set(range(TEXT_VOCAB))
      if output_format != 'text' and len(items) < max_items and paths:
        allowed.add(vocab.sid_open_id)
    elif len(span) == vocab.num_levels + 1:
      allowed = {vocab.sid_close_id}
    else:
      level = max(len(span) - 1, 0)
      allowed = {vocab.token_id(sid_map.type_names[p[0]], level, p[level + 1])
                 for p in paths if p[:len(span)] == span}
    tok = max(allowed, key=lambda a: (logits[a], -a))
    out.append(tok)
    history.append(tok)
    if span is None:
      if tok == EOS:
        break
      span = () if tok == vocab.sid_open_id else None
    elif tok == vocab.sid_close_id:
      span = None
    else:
      type_name, _, code = vocab.describe(tok)
      span = span + ((sid_map.type_names.index(type_name),) if not span else ()) + (code,)
      if len(span) == vocab.num_levels + 1:
        items.append(sid_map.item_of(type_name, span[1:]))
  return out, items


def check_row(s, out, b):
  """Common invariants of one row: padding after the end, items = parsed spans."""
  n = int(out.lengths[b])
  row = out.tokens[b, :n].tolist()
  assert (out.tokens[b, n:] == PAD).all()
  if n < MAX_NEW:
    assert row[-1] == EOS
  text, items = parse(s['vocab'], s['sid_map'], row)
  assert int(out.num_items[b]) == len(items)
  assert out.items[b, :len(items)].tolist() == items
  assert (out.items[b, len(items):] == -1).all()
  assert len(set(items)) == len(items), f'row {b} names an item twice: {items}'
  for item in items:
    assert s['allowed'][b, int(s['sid_map'].type_index[item])]
  return row, text, items


@pytest.mark.parametrize('temperature', [0.0, 1.0])
def test_text_format_never_emits_sid_tokens(setup, temperature):
  s = setup
  for seed in range(2 if temperature else 1):
    out = run(s, output_format='text', temperature=temperature, rng=jax.random.key(seed),
              allowed_types_BxT=jnp.asarray(s['allowed']))
    assert (out.tokens < s['vocab'].base).all()
    assert (out.num_items == 0).all() and (out.items == -1).all()
    for b in range(len(s['prompts'])):
      check_row(s, out, b)


def test_ids_format_emits_only_spans_and_separators(setup):
  s = setup
  total = 0
  for temperature, seed in ((0.0, 0), (1.0, 0), (1.0, 1)):
    out = run(s, output_format='ids', separator_ids=SEPARATORS, max_items=2,
              allowed_types_BxT=jnp.asarray(s['allowed']), temperature=temperature,
              rng=jax.random.key(seed), sample_codes=True)
    for b in range(len(s['prompts'])):
      _, text, items = check_row(s, out, b)
      assert set(text) <= set(SEPARATORS) | {EOS}
      assert len(items) <= 2
      total += len(items)
  assert total >= 6  # the chain favours `[SID]`, so the runs must name items


@pytest.mark.parametrize('output_format, max_items', [('mixed', 3), ('ids', 2)])
def test_greedy_matches_reference(setup, output_format, max_items):
  s = setup
  out = run(s, output_format=output_format, separator_ids=SEPARATORS, max_items=max_items,
            allowed_types_BxT=jnp.asarray(s['allowed']))
  for b, prompt in enumerate(s['prompts']):
    row, _, items = check_row(s, out, b)
    ref_row, ref_items = reference_greedy(s, prompt, s['allowed'][b], output_format, max_items)
    assert row == ref_row
    assert items == ref_items


def test_greedy_generation_takes_the_greedy_item():
  # The chain of test_decode_beam_search.greedy_trap: greedy names row 0, beam search row 2.
  sizes = {'a': (2, 2)}
  vocab = SIDVocab(('a',), sizes, 2)
  sid_map = SIDMap(('a',), sizes, np.array([[0, 0], [0, 1], [1, 0]], np.int32),
                   np.zeros(3, np.int32))
  table = np.full((vocab.end, vocab.end), -1e4, np.float32)
  c0 = [vocab.token_id('a', 0, c) for c in range(2)]
  c1 = [vocab.token_id('a', 1, c) for c in range(2)]
  table[1, vocab.sid_open_id] = 0.0
  table[vocab.sid_open_id, c0] = np.log([0.6, 0.4])
  table[c0[0], c1] = np.log([0.55, 0.45])
  table[c0[1], c1] = np.log([0.9, 0.1])
  table[vocab.sid_close_id, EOS] = 0.0
  s = dict(model=markov_lm(table), trie=SIDTrie.build(sid_map, vocab),
           arrays=SIDVocabArrays.from_vocab(vocab))
  out = run(s, prompts=[[1]], output_format='mixed')
  assert out.tokens[0, :5].tolist() == [vocab.sid_open_id, c0[0], c1[0], vocab.sid_close_id, EOS]
  assert out.items[0, 0] == 0 and out.num_items[0] == 1 and out.lengths[0] == 5


def test_bad_arguments_are_rejected(setup):
  s = setup
  with pytest.raises(ValueError, match='output_format'):
    run(s, output_format='json')
  with pytest.raises(ValueError, match='separator ids'):
    run(s, output_format='ids', separator_ids=(s['vocab'].sid_open_id,))


def test_filters_and_removals_match_reference(setup):
  """Exclusions, an allow-list and catalog removals, against the plain-Python reference; the
  trie update keeps shapes, so the same compiled generation serves both tries."""
  s = setup
  excluded = [[0, 3], [], [5], []]
  allow = [None, [0, 1, 2], None, [1, 6, 7]]
  removed = [4, 7]
  trie = s['trie'].set_live(removed, False)
  request = request_filter(trie, excluded=excluded, allowed=allow)
  kwargs = dict(output_format='mixed', max_items=4, allowed_types_BxT=jnp.asarray(s['allowed']))
  out = run(dict(s, trie=trie), request=request, **kwargs)
  named = 0
  for b, prompt in enumerate(s['prompts']):
    row, _, items = check_row(s, out, b)
    ref_row, ref_items = reference_greedy(s, prompt, s['allowed'][b], 'mixed', 4,
                                          excluded=excluded[b], allow_list=allow[b],
                                          removed=removed)
    assert row == ref_row and items == ref_items
    assert not set(items) & (set(removed) | set(excluded[b]))
    named += len(items)
  assert named >= 4
  # Restoring the removed items gives back the unfiltered answers.
  back = run(dict(s, trie=trie.set_live(removed, True)), **kwargs)
  ref = run(s, **kwargs)
  np.testing.assert_array_equal(back.tokens, ref.tokens)


def reference_beam(s, prompt, allowed_types, output_format, max_items, num_beams):
  """Plain-Python beam search over whole answers with the reference masks: (tokens, items,
  score) of the best hypothesis."""
  vocab, sid_map = s['vocab'], s['sid_map']
  path_of = {n: (int(sid_map.type_index[n]),) + tuple(int(c) for c in sid_map.codes[n])
             for n in range(len(sid_map)) if allowed_types[int(sid_map.type_index[n])]}
  # A hypothesis: (score, out tokens, items, span, done).
  hyps = [(0.0, [], [], None, False)]
  for _ in range(MAX_NEW):
    if all(h[4] for h in hyps):
      break
    cands = []
    for score, out, items, span, done in hyps:
      if done:
        cands.append((score, out, items, span, True))  # padding only, at log 1
        continue
      logits = markov_logits(s['first'], s['second'], list(prompt) + out, s['position'])
      logp = logits - logits.max()
      logp = logp - np.log(np.exp(logp).sum())
      paths = {p for n, p in path_of.items() if n not in items}
      if span is None:
        allowed = (set(SEPARATORS) | {EOS}) if output_format == 'ids' else set(range(TEXT_VOCAB))
        if output_format != 'text' and len(items) < max_items and paths:
          allowed.add(vocab.sid_open_id)
      elif len(span) == vocab.num_levels + 1:
        allowed = {vocab.sid_close_id}
      else:
        level = max(len(span) - 1, 0)
        allowed = {vocab.token_id(sid_map.type_names[p[0]], level, p[level + 1])
                   for p in paths if p[:len(span)] == span}
      for tok in allowed:
        new_span, new_items, new_done = span, items, False
        if span is None:
          new_done = tok == EOS
          new_span = () if tok == vocab.sid_open_id else None
        elif tok == vocab.sid_close_id:
          new_span = None
        else:
          type_name, _, code = vocab.describe(tok)
          new_span = span + ((sid_map.type_names.index(type_name),) if not span else ()) + (code,)
          if len(new_span) == vocab.num_levels + 1:
            new_items = items + [sid_map.item_of(type_name, new_span[1:])]
        cands.append((score + logp[tok], out + [tok], new_items, new_span, new_done))
    hyps = sorted(cands, key=lambda c: -c[0])[:num_beams]
  best = hyps[0]
  return best[1], best[2], best[0]


@pytest.mark.parametrize('output_format', ['mixed', 'ids'])
def test_beam_generation_matches_reference(setup, output_format):
  s = setup
  out = run(s, output_format=output_format, separator_ids=SEPARATORS, max_items=3,
            allowed_types_BxT=jnp.asarray(s['allowed']), num_beams=4)
  for b, prompt in enumerate(s['prompts']):
    row, _, items = check_row(s, out, b)
    ref_row, ref_items, ref_score = reference_beam(s, prompt, s['allowed'][b], output_format, 3,
                                                   4)
    assert row == ref_row
    assert items == ref_items
    np.testing.assert_allclose(out.scores[b], ref_score, rtol=1e-5, atol=1e-3)
  if output_format == 'mixed':  # the split step: beams always use the full head
    split = run(s, rows_head=True, output_format=output_format, separator_ids=SEPARATORS,
                max_items=3, allowed_types_BxT=jnp.asarray(s['allowed']), num_beams=4)
    np.testing.assert_array_equal(split.tokens, out.tokens)
    np.testing.assert_allclose(split.scores, out.scores, rtol=1e-6)
    assert split.rows_only_steps is None
  # One hypothesis is greedy decoding, and K hypotheses never score worse than it.
  greedy = run(s, output_format=output_format, separator_ids=SEPARATORS, max_items=3,
               allowed_types_BxT=jnp.asarray(s['allowed']))
  for b, prompt in enumerate(s['prompts']):
    _, _, g_score = reference_beam(s, prompt, s['allowed'][b], output_format, 3, 1)
    assert out.scores[b] >= g_score - 1e-3
    assert greedy.tokens[b, :greedy.lengths[b]].tolist() == reference_beam(
        s, prompt, s['allowed'][b], output_format, 3, 1)[0]


@hypothesis.settings(max_examples=15, deadline=None, derandomize=True)
@hypothesis.given(data=st.data())
def test_sampled_generation_names_only_filtered_catalog_items(setup, data):
  """Sampled text and codes under random removals, exclusions and allow-lists: every span
  names a live, non-excluded, allowed item of an allowed type, at most once per answer."""
  s = setup
  n = len(s['sid_map'])
  rows = st.lists(st.integers(0, n - 1), max_size=4)
  removed = data.draw(rows)
  excluded = [data.draw(rows) for _ in s['prompts']]
  allow = [data.draw(st.one_of(st.none(), rows)) for _ in s['prompts']]
  trie = s['trie'].set_live(removed, False) if removed else s['trie']
  request = request_filter(trie, excluded=excluded, allowed=allow, width=4)
  out = run(dict(s, trie=trie), request=request, output_format='mixed', temperature=1.0,
            sample_codes=True, rng=jax.random.key(data.draw(st.integers(0, 2**30))),
            allowed_types_BxT=jnp.asarray(s['allowed']), max_items=4)  # shapes of the test above
  for b in range(len(s['prompts'])):
    _, _, items = check_row(s, out, b)  # parses spans against the SID map, checks types
    for item in items:
      assert item not in removed and item not in excluded[b]
      assert allow[b] is None or item in allow[b]


def steps_inside_spans(vocab, out) -> int:
  """Recounts from the tokens the steps after which every unfinished row is inside a span
  (the steps whose next logits need only code rows and `[/SID]`)."""
  batch = out.tokens.shape[0]
  level, done, count = [-1] * batch, [False] * batch, 0
  for t in range(int(out.steps)):
    for b in range(batch):
      tok = int(out.tokens[b, t])
      if done[b]:
        continue
      if level[b] == -1:
        done[b] = tok == EOS
        level[b] = 0 if tok == vocab.sid_open_id else -1
      else:
        level[b] = -1 if tok == vocab.sid_close_id else level[b] + 1
    count += all(d or lv >= 0 for d, lv in zip(done, level))
  return count


@pytest.mark.parametrize('output_format', ['mixed', 'ids'])
def test_rows_only_head_matches_reference_and_full_head(setup, output_format):
  """Greedy with code rows only inside spans: the plain-Python reference's answers, the full
  head's outputs, and exactly as many rows-only steps as the tokens show inside spans."""
  s = setup
  excluded = [[0], [], [5], []]
  trie = s['trie'].set_live([4], False)
  request = request_filter(trie, excluded=excluded)
  kwargs = dict(output_format=output_format, separator_ids=SEPARATORS, max_items=3,
                allowed_types_BxT=jnp.asarray(s['allowed']), request=request)
  rows = run(dict(s, trie=trie), rows_head=True, **kwargs)
  full = run(dict(s, trie=trie), **kwargs)
  for name in ('tokens', 'lengths', 'items', 'num_items', 'steps'):
    np.testing.assert_array_equal(getattr(rows, name), getattr(full, name))
  for b, prompt in enumerate(s['prompts']):
    row, _, items = check_row(s, rows, b)
    ref_row, ref_items = reference_greedy(s, prompt, s['allowed'][b], output_format, 3,
                                          excluded=excluded[b], removed=[4])
    assert row == ref_row and items == ref_items
  expected = steps_inside_spans(s['vocab'], rows)
  assert int(rows.rows_only_steps) == expected > 0
  assert full.rows_only_steps is None


def test_rows_only_head_samples_like_the_full_head(setup):
  s = setup
  for seed in range(2):
    kwargs = dict(output_format='mixed', temperature=1.0, sample_codes=bool(seed),
                  rng=jax.random.key(seed), max_items=4)
    rows = run(s, rows_head=True, **kwargs)
    full = run(s, **kwargs)
    np.testing.assert_array_equal(rows.tokens, full.tokens)
    np.testing.assert_array_equal(rows.items, full.items)
    assert int(rows.rows_only_steps) == steps_inside_spans(s['vocab'], rows)


def test_model_argument_is_checked(setup):
  """A bare step function (the old calling convention) is not a DecodingModel."""
  s = setup
  tokens, positions, valid = left_pad(s['prompts'], PAD)
  cache = markov_cache(len(s['prompts']), tokens.shape[1] + MAX_NEW)
  pre, cache = prefill(s['model'], cache, jnp.asarray(tokens), jnp.asarray(positions),
                       jnp.asarray(valid))
  with pytest.raises(TypeError, match='decode_hidden and logits_from_hidden'):
    generate(s['model'].decode_hidden, cache, pre, Constraints(s['trie'], s['arrays']),
             GenerateSettings(max_new_tokens=4, eos_id=EOS, pad_id=PAD))


def test_unconstrained_generation_is_plain_greedy(setup):
  """constrained=False: greedy over every token of the vocabulary (no trie, format or item
  masks), against the numpy chain; spans are not tracked."""
  s = setup
  out = run(s, output_format='ids', max_items=1, constrained=False)
  codes_seen = 0
  for b, prompt in enumerate(s['prompts']):
    history, ref = list(prompt), []
    for _ in range(MAX_NEW):
      tok = int(np.argmax(markov_logits(s['first'], s['second'], history, s['position'])))
      ref.append(tok)
      history.append(tok)
      if tok == EOS:
        break
    assert out.tokens[b, :out.lengths[b]].tolist() == ref
    codes_seen += sum(s['vocab'].is_code(t) for t in ref)
  assert codes_seen > 0  # the format and item limit would have forbidden them
  assert (out.items == -1).all() and (out.num_items == 0).all()
