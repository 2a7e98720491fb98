"""The tiny config (experiments/configs/tiny.py) end to end with a gs:// workdir, served by
the fake of tests/fake_gcs.py (epath's mock backend and orbax's tensorstore kvstore over a
local folder, renames on gs:// refused): `python -m experiments.quickstart
--config=experiments/configs/tiny.py --workdir=gs://bucket/w` in a process that installs the
fake first (QUICKSTART), then, in this process under a fake on the same folder, the calls
that command makes again (`run_experiment`, `write_report`, `write_result`: a second run on
the same workdir
(everything reloaded, nothing trained again), `workdir.load_run` and batch answers with
both files in the bucket (what `experiments.generate --batch_in --batch_out` does), beside the same run on a
local workdir: the figures must be the same."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from neo_jax.eval import report
from neo_jax.run import catalog_update
from neo_jax.run import experiment
from neo_jax.run import rundir
from neo_jax.run import serving
from neo_jax.run import workdir as workdir_lib

from fake_gcs import fake_gcs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The command line, with the fake bucket at argv[1] installed first; the operations the run
# made on gs:// are written to argv[2] however it ends.
QUICKSTART = """
import json, runpy, sys
sys.path.insert(0, 'tests')
from fake_gcs import fake_gcs
root, calls = sys.argv[1:3]
sys.argv = ['quickstart', '--config=experiments/configs/tiny.py', '--workdir=gs://bucket/w']
with fake_gcs(root) as fake:
  try:
    runpy.run_module('experiments.quickstart', run_name='__main__')
  finally:
    with open(calls, 'w') as f:
      json.dump(sorted({op for op, _ in fake.calls}), f)
"""

# What the run leaves in its workdir, local or remote.
ARTIFACTS = ('config.json', 'data/items.jsonl', 'data/interactions.csv',
             'sids/sid_map/sid_map.npz', 'sids/sid_map/quantiser.npz', 'sids/quality.png',
             'sids/report.json', 'tokenizer/spm.model', 'tokenizer/sid_vocab.json',
             'neo_multi/config.json', 'neo_multi/checkpoints/grounding/summary.json',
             'neo_multi/checkpoints/capability/8', 'neo_multi/checkpoints/capability/summary.json',
             'neo_multi/logs/capability.jsonl', 'neo_multi/tensorboard/capability',
             'split_access.json', 'samples.json', 'report.md', 'training_curves.png',
             'result.json')


def _tiny_config():
  spec = importlib.util.spec_from_file_location(
      'tiny_config', os.path.join(REPO, 'experiments', 'configs', 'tiny.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _quickstart(workdir):
  """What experiments.quickstart's main does with --workdir=`workdir`."""
  result, _ = experiment.run_experiment(_tiny_config(), workdir, log=lambda line: None)
  report.write_report(workdir, result)
  rundir.write_result(workdir, result)
  return result


def _serve_from_the_bucket(run, uri, bucket):
  """What `experiments.generate --batch_in --batch_out` does, both files in the bucket."""
  svc = serving.Service(run.artifacts, prompt_len=int(run.config.train.seq_len) - 8,
                        history_len=int(run.config.tasks.history_len), batch_size=4,
                        max_new_tokens=8, catalog_base=catalog_update.base_of(run))
  user = run.artifacts.dataset.interactions.user_names[0]
  requests = [{'task': 'recommend', 'user': user, 'k': 3},
              {'task': 'search', 'query': 'a story', 'k': 2}]
  with open(os.path.join(bucket, 'in.jsonl'), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in requests)
  counts = serving.answer_file(svc, uri + '/in.jsonl', uri + '/out.jsonl', follow_catalog=True,
                               log=lambda line: None)
  assert counts['answered'] == 2 and counts['bad'] == counts['failed'] == 0
  with open(os.path.join(bucket, 'out.jsonl')) as f:
    assert len(f.read().splitlines()) == 2
  with pytest.raises(FileExistsError, match='out.jsonl exists'):
    serving.answer_file(svc, uri + '/in.jsonl', uri + '/out.jsonl', log=lambda line: None)


def _figures(result):
  return {k: v for k, v in result.items() if '@' in k or k.startswith('requests/')}


@pytest.fixture(scope='module')
def local_result(tmp_path_factory):
  return _quickstart(str(tmp_path_factory.mktemp('local') / 'w'))


def test_tiny_run_on_a_gs_workdir(tmp_path, monkeypatch, local_result):
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  monkeypatch.chdir(cwd)  # a gs:// path written as a local one would land here
  uri = 'gs://bucket/w'
  proc = subprocess.run(
      [sys.executable, '-c', QUICKSTART, str(tmp_path / 'gcs'), str(tmp_path / 'calls.json')],
      cwd=REPO, capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'uploaded to gs://bucket/w/neo_multi/tensorboard/capability' in proc.stdout
  result = json.loads(proc.stdout.strip().splitlines()[-1])  # the command's last line
  with open(tmp_path / 'calls.json') as f:
    ops = set(json.load(f))
  assert 'tensorstore' in ops  # orbax wrote the arrays through its gs:// code path
  assert not ops & {'rename', 'replace'}
  assert not [p for p in os.listdir(REPO) if p.startswith('gs:')]
  with fake_gcs(tmp_path / 'gcs') as fake:
    bucket = fake.local(uri)
    for name in ARTIFACTS:
      assert os.path.exists(os.path.join(bucket, name)), name
    with open(os.path.join(bucket, 'result.json')) as f:
      assert json.load(f) == result
    assert result['valid_sid_fraction'] == 1.0 and result['requests/recommend'] == 20
    # Same figures as the local run: the file system changes nothing.
    assert _figures(result) == pytest.approx(_figures(local_result))
    events = os.listdir(os.path.join(bucket, 'neo_multi', 'tensorboard', 'capability'))
    assert len(events) == 1 and events[0].startswith('events.out.tfevents')

    # A second run on the same workdir reloads every stage and trains nothing again.
    with open(os.path.join(bucket, 'neo_multi', 'logs', 'capability.jsonl')) as f:
      logged = f.read()
    again = _quickstart(uri)
    assert _figures(again) == pytest.approx(_figures(result))
    with open(os.path.join(bucket, 'neo_multi', 'logs', 'capability.jsonl')) as f:
      assert f.read() == logged

    run = workdir_lib.load_run(uri)
    assert (run.workdir, run.run_dir) == (uri, uri + '/neo_multi')
    assert (run.stage, run.step) == ('capability', 8)
    _serve_from_the_bucket(run, uri, bucket)
  assert os.listdir(cwd) == [], 'a remote path was written as a local one'


@pytest.mark.skipif(importlib.util.find_spec('recbole') is None,
                    reason='recbole (assets) not installed')
def test_build_dataset_into_a_bucket(tmp_path):
  """`experiments.build_dataset --dataset=movielens100k --export --workdir=gs://...` under the
  fake (tests/gcs_run.py): the TFDS build and its generic export land in the bucket and read
  back whole; the same command again resumes from what is there."""
  cmd = [sys.executable, '-m', 'gcs_run', 'experiments.build_dataset',
         '--dataset=movielens100k', '--export', '--workdir=gs://bucket/ml']
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.path.join(REPO, 'tests'),
             GCS_ROOT=str(tmp_path / 'gcs'))
  for resumed in (False, True):
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result['num_users'], result['num_items'], result['num_interactions']) == (
        943, 1682, 100_000)
    assert result['resumed'] is resumed
    assert result['tfds_dir'] == 'gs://bucket/ml/tfds/movielens100k'
  bucket = tmp_path / 'gcs' / 'bucket' / 'ml'
  assert json.loads((bucket / 'result.json').read_text()) == result
  assert {'items', 'interactions', 'users', 'meta'} <= set(
      os.listdir(bucket / 'tfds' / 'movielens100k'))
  with fake_gcs(tmp_path / 'gcs'):
    from neo_jax.catalog import io as catalog_io  # pylint: disable=g-import-not-at-top
    assert len(catalog_io.load_dataset('gs://bucket/ml/data').interactions) == 100_000
  assert not [p for p in os.listdir(REPO) if p.startswith('gs:')]
