"""catalog.atomic: a reader never sees half an artifact; what a killed writer leaves is
swept; strict JSON; JSON lines stay whole. And the TFDS build that uses it: an interrupted
build leaves no folder that a later run would take for a build."""

import json
import os
import subprocess
import sys
from unittest import mock

import pytest

from experiments.configs import tiny
from neo_jax.catalog import atomic
from neo_jax.catalog import synthetic
from neo_jax.catalog import tfds_builders


def test_write_json_is_strict_and_replaces_whole(tmp_path):
  path = tmp_path / 'r.json'
  atomic.write_json(path, {'a': float('nan'), 'b': [1.5, float('inf')], 'c': 'x'})
  assert json.loads(path.read_text()) == {'a': None, 'b': [1.5, None], 'c': 'x'}
  with mock.patch('os.replace', side_effect=OSError(28, 'No space left on device')):
    with pytest.raises(OSError, match='no space left on the device while writing .*r.json'):
      atomic.write_json(path, {'a': 2})
  assert json.loads(path.read_text())['c'] == 'x' and os.listdir(tmp_path) == ['r.json']


def test_temporaries_of_dead_writers_are_swept_and_live_ones_kept(tmp_path):
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True).stdout.strip()
  (tmp_path / f'.out.json.tmp-{dead}-abc').write_text('half')
  (tmp_path / f'.out.json.tmp-{os.getpid()}-def').write_text('a live writer')
  (tmp_path / f'.other.tmp-{dead}-x').mkdir()
  atomic.write_json(tmp_path / 'out.json', [1])
  assert sorted(os.listdir(tmp_path)) == sorted(
      ['out.json', f'.out.json.tmp-{os.getpid()}-def', f'.other.tmp-{dead}-x'])


def test_atomic_directory_keeps_the_old_one_on_error(tmp_path):
  target = tmp_path / 'd'
  with atomic.atomic_directory(target) as tmp:
    open(os.path.join(tmp, 'a.txt'), 'w').write('one')
  with pytest.raises(RuntimeError):
    with atomic.atomic_directory(target, overwrite=True) as tmp:
      open(os.path.join(tmp, 'a.txt'), 'w').write('two')
      raise RuntimeError('killed')
  assert (target / 'a.txt').read_text() == 'one' and os.listdir(tmp_path) == ['d']


def test_jsonl_appender_repairs_a_torn_line(tmp_path):
  path = tmp_path / 'log.jsonl'
  with atomic.JsonlAppender(path) as w:
    w.append([{'step': 1}, {'step': 2, 'x': float('nan')}])
  with open(path, 'a') as f:
    f.write('{"step": 3, "lo')
  with atomic.JsonlAppender(path) as w:
    assert w.repaired == len('{"step": 3, "lo')
    w.append([{'step': 3}])
  assert atomic.read_jsonl(path) == [{'step': 1}, {'step': 2, 'x': None}, {'step': 3}]
  path.write_text('{"step": 1}\n{"step": \n')  # a complete-looking line that is not JSON
  assert atomic.repair_jsonl(path) > 0 and atomic.read_jsonl(path) == [{'step': 1}]


def _source(tmp_path):
  cfg = synthetic.SyntheticConfig(**tiny.get_config().data.synthetic.to_dict())
  synthetic.write_synthetic(cfg, tmp_path / 'src')
  return str(tmp_path / 'src')


def test_interrupted_tfds_build_leaves_no_build(tmp_path):
  src, data_dir = _source(tmp_path), tmp_path / 'tfds'
  real = tfds_builders._records

  def records(ds, table, report):
    if table == 'users':
      raise KeyboardInterrupt('killed while writing users')
    return real(ds, table, report)

  with mock.patch.object(tfds_builders, '_records', records):
    with pytest.raises(KeyboardInterrupt):
      tfds_builders.build('generic', str(data_dir), source=src)
  # Nothing a later run would take for a build; and no staging folder is left behind.
  assert os.listdir(data_dir) == []
  ds, _, built = tfds_builders.build('generic', str(data_dir), source=src)
  assert len(tfds_builders.load_built(built).catalog) == len(ds.catalog)
  assert os.listdir(data_dir) == ['generic']
