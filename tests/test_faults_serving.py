"""Batch serving faults (`run.serving.answer_file`, what `generate --batch_in` runs): answers
appended per chunk, a failing chunk reported for its lines while the batch goes on, a killed
run resumed with every line answered exactly once, strict JSON whatever the request holds, a
full disk reported with the lines before it kept."""

import errno
import json
import os
from unittest import mock

import pytest

from neo_jax.run import serving


class FakeRanker:
  def reset_cut_stats(self):
    return {'prompts_cut': 0, 'history_items_cut': 0}


class FakeService:
  """Requests {"q": <int>}: the answer echoes q squared; `fail_on` a q makes its chunk raise
  `error` (a model failure, not a request error)."""

  def __init__(self, fail_on=(), error=RuntimeError('device lost')):
    self.ranker = FakeRanker()
    self.fail_on, self.error, self.calls = set(fail_on), error, 0

  def parse(self, obj):
    if not isinstance(obj, dict) or not isinstance(obj.get('q'), int):
      raise serving.RequestError('needs an integer q')
    return obj['q']

  def answer_timed(self, reqs):
    self.calls += 1
    if self.fail_on & set(reqs):
      raise self.error
    return [{'task': 'square', 'value': q * q, 'id': float('nan') if q == 7 else q}
            for q in reqs], 0.01


def _strict(path):
  def refuse(name):
    raise ValueError(name)
  return [json.loads(l, parse_constant=refuse) for l in open(path, encoding='utf-8')]


def _requests(tmp_path, n=10):
  lines = [json.dumps({'q': q}) for q in range(1, n + 1)]
  lines[2] = '{"q": 3, "id": NaN}'  # NaN is not JSON: a bad line, never echoed
  lines[4] = 'not json'
  lines.insert(6, '   ')  # blank
  path = tmp_path / 'in.jsonl'
  path.write_text('\n'.join(lines) + '\n')
  return str(path)


def test_every_line_once_in_strict_json_and_a_failing_chunk_does_not_stop_the_batch(tmp_path):
  src, out = _requests(tmp_path), str(tmp_path / 'out.jsonl')
  svc = FakeService(fail_on={6})
  counts = serving.answer_file(svc, src, out, chunk=2, log=lambda s: None)
  records = {r['line']: r for r in _strict(out)}
  assert sorted(records) == [n for n in range(1, 12) if n != 7]  # line 7 is blank
  assert 'bad JSON' in records[3]['error'] and 'bad JSON' in records[5]['error']
  failed = [n for n, r in records.items() if r.get('internal')]
  # q=6 (line 6) shared its chunk with q=4 (line 4): both are reported, the rest answered.
  assert failed == [4, 6] and 'device lost' in records[6]['error']
  assert records[8]['value'] == 49 and records[8]['id'] is None  # NaN id written as null
  assert (counts['answered'], counts['bad'], counts['failed'], counts['blank_lines']) == (
      6, 2, 2, 1)
  with pytest.raises(FileExistsError, match='--resume'):
    serving.answer_file(FakeService(), src, out, log=lambda s: None)


def test_a_killed_batch_resumes_with_every_line_answered_exactly_once(tmp_path):
  src = _requests(tmp_path)
  straight = str(tmp_path / 'straight.jsonl')
  serving.answer_file(FakeService(), src, straight, chunk=2, log=lambda s: None)
  out = str(tmp_path / 'out.jsonl')
  # SIGKILL stand-in: the third chunk never returns; what the first two wrote stays.
  with pytest.raises(KeyboardInterrupt):
    serving.answer_file(FakeService(fail_on={8}, error=KeyboardInterrupt()), src, out,
                        chunk=2, log=lambda s: None)
  before = _strict(out)
  assert before and all('error' not in r or 'bad JSON' in r['error'] for r in before)
  with open(out, 'a') as f:  # and a line torn by the kill
    f.write('{"line": 11, "task": "squ')
  counts = serving.answer_file(FakeService(), src, out, chunk=2, resume=True,
                               log=lambda s: None)
  assert counts['resumed_lines'] == len(before)
  records = _strict(out)
  assert sorted(r['line'] for r in records) == sorted(r['line'] for r in _strict(straight))
  assert len(records) == len({r['line'] for r in records})
  assert sorted(map(json.dumps, records)) == sorted(map(json.dumps, _strict(straight)))


def test_a_full_disk_stops_with_a_clear_error_and_keeps_the_lines_before(tmp_path):
  src, out = _requests(tmp_path), str(tmp_path / 'out.jsonl')
  real_write, calls = os.write, []

  def write(fd, data):
    calls.append(fd)
    if len(calls) == 2:  # the second chunk's append: half of it, then the disk is full
      real_write(fd, bytes(data)[:len(data) // 2])
      raise OSError(errno.ENOSPC, 'No space left on device')
    return real_write(fd, data)

  with mock.patch('os.write', write), pytest.raises(OSError) as err:
    serving.answer_file(FakeService(), src, out, chunk=2, log=lambda s: None)
  assert err.value.errno == errno.ENOSPC and 'out.jsonl' in str(err.value)
  assert 'lines written before are kept' in str(err.value)
  kept = _strict(out)  # whole lines only: the half-written chunk was cut off again
  assert [r['line'] for r in kept] == [1, 2]
  serving.answer_file(FakeService(), src, out, chunk=2, resume=True, log=lambda s: None)
  assert sorted(r['line'] for r in _strict(out)) == [n for n in range(1, 12) if n != 7]
