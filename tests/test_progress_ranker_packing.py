"""Progress lines of NEO's ranking / generation over many requests and of packing: lines with
requests (examples) done / total, rate and ETA when progress is on, none when it is off, and
the same results either way."""

import numpy as np

from neo_jax.catalog import progress
from neo_jax.decode.ranker import NEORanker
from neo_jax.decode.trie import SIDTrie
from neo_jax.train import data as data_lib

from test_decode_ranker import _setup
from test_train_data import CharTokenizer, _examples

PROMPTS = [f'Task: recommend. Type: movie. Format: ids. History: {w}. Answer: '
           for w in ('a', 'a b', 'b c a', 'c', 'b', 'a c')]


def _ranker(log, **kwargs):
  sid_map, tok, model = _setup()
  return NEORanker(model, tok, SIDTrie.build(sid_map, tok.sid), prompt_len=64, batch_size=2,
                   log=log, **kwargs)


def _request_counts(lines, label):
  """[(done, total)] of the progress lines of `label` (closing line excluded)."""
  out = []
  for line in lines:
    head = line.split(',')[0]
    assert head.startswith(f'{label}: '), line
    if '/' in head:
      done, total = head[len(label) + 2:].split(' ')[0].split('/')
      out.append((int(done), int(total)))
  return out


def test_rank_prints_requests_done_rate_and_eta(every_call):
  lines = []
  ranker = _ranker(lines.append, progress=True, progress_label='validation')
  items, scores = ranker.rank(PROMPTS, ['movie'] * len(PROMPTS), num_beams=3)
  # 6 requests in batches of 2 (two length buckets: 2 + 2 + 2 is not guaranteed, so only the
  # running count is checked): every count is a batch's worth more, ending at 6 of 6.
  counts = _request_counts(lines, 'validation rank')
  assert counts[-1] == (6, 6) and all(t == 6 for _, t in counts)
  assert [d for d, _ in counts] == sorted(d for d, _ in counts)
  assert all('requests/s' in line for line in lines)
  assert all('eta ' in line for line in lines[:-1])
  assert lines[-1].startswith('validation rank: 6 requests in ')
  progress.set_enabled(False)
  quiet = []
  ranker.log = quiet.append
  ranker.progress = None  # back to the process-wide switch, now off
  items2, scores2 = ranker.rank(PROMPTS, ['movie'] * len(PROMPTS), num_beams=3)
  assert quiet == []
  np.testing.assert_array_equal(items, items2)
  np.testing.assert_array_equal(scores, scores2)


def test_rank_results_do_not_depend_on_progress(every_call):
  on, off = [], []
  a = _ranker(on.append, progress=True).rank(PROMPTS, [None] * 6, num_beams=2)
  b = _ranker(off.append, progress=False).rank(PROMPTS, [None] * 6, num_beams=2)
  assert on and not off
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])


def test_generate_and_unconstrained_rank_lines(every_call):
  lines = []
  ranker = _ranker(lines.append, progress=True)
  out = ranker.generate(PROMPTS, 'ids', max_new_tokens=6)
  assert len(out) == 6
  assert _request_counts(lines, 'generate')[-1] == (6, 6)
  lines.clear()
  ranker.rank(PROMPTS, ['book'] * 6, num_beams=2, constrained=False)
  assert _request_counts(lines, 'rank unconstrained')[-1] == (6, 6)


def test_one_batch_call_prints_nothing(every_call):
  lines = []
  ranker = _ranker(lines.append, progress=True)
  ranker.rank(PROMPTS[:2], ['movie'] * 2, num_beams=2)  # a single request batch: serving
  assert lines == []


def test_default_is_quiet_in_tests(every_call):
  lines = []
  _ranker(lines.append).rank(PROMPTS, ['movie'] * 6, num_beams=2)
  assert progress.enabled() is False and lines == []


def test_packing_lines_when_on_and_none_when_off(every_call):
  examples = _examples(40)
  tok = CharTokenizer()
  lines = []
  on = data_lib.pack_examples(examples, tok, seq_len=64, batch_size=4, log=lines.append,
                              progress=True)
  phases = {line.split(':')[0] + ':' + line.split(':')[1] for line in lines}
  assert phases == {'packing: tokenise', 'packing: place', 'packing: write'}
  assert 'packing: tokenise: 40/40 examples' in [line.split(',')[0] for line in lines]
  assert f'packing: write: {on.num_rows}/{on.num_rows} rows' in [
      line.split(',')[0] for line in lines]
  assert all('/s' in line for line in lines)
  quiet = []
  off = data_lib.pack_examples(examples, tok, seq_len=64, batch_size=4, log=quiet.append,
                               progress=False)
  assert quiet == []
  default = []
  data_lib.pack_examples(examples, tok, seq_len=64, batch_size=4, log=default.append)
  assert default == []  # tests run with NEO_PROGRESS=0
  for key in ('tokens', 'segment_ids', 'positions', 'loss_mask'):
    np.testing.assert_array_equal(getattr(on, key), getattr(off, key))
  assert on.stats == off.stats
