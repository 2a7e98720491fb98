"""The tiny config (experiments/configs/tiny.py) end to end with a gs:// workdir, served by
the fake of tests/fake_gcs.py (epath's mock backend and orbax's tensorstore kvstore over a
local folder, renames on gs:// refused): the calls `experiments.quickstart` makes
(`run_experiment`, `write_report`, `write_result`), then a second run on the same workdir
(everything reloaded, nothing trained again) and `workdir.load_run`, beside the same run on a
local workdir: the figures must be the same."""

import importlib.util
import json
import os

import pytest

from neo_jax.eval import report
from neo_jax.run import experiment
from neo_jax.run import rundir
from neo_jax.run import workdir as workdir_lib

from fake_gcs import fake_gcs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
  with fake_gcs(tmp_path / 'gcs') as fake:
    result = _quickstart(uri)
    bucket = fake.local(uri)
    for name in ARTIFACTS:
      assert os.path.exists(os.path.join(bucket, name)), name
    with open(os.path.join(bucket, 'result.json')) as f:
      assert json.load(f) == json.loads(json.dumps(rundir.json_safe(result)))
    assert result['valid_sid_fraction'] == 1.0 and result['requests/recommend'] == 20
    # Same figures as the local run: the file system changes nothing.
    assert _figures(result) == pytest.approx(_figures(local_result))
    ops = {op for op, _ in fake.calls}
    assert 'tensorstore' in ops  # orbax wrote the arrays through its gs:// code path
    assert not ops & {'rename', 'replace'}
    events = os.listdir(os.path.join(bucket, 'neo_multi', 'tensorboard', 'capability'))
    assert len(events) == 1 and events[0].startswith('events.out.tfevents')

    # A second run on the same workdir reloads every stage and trains nothing again.
    with open(os.path.join(bucket, 'neo_multi', 'logs', 'capability.jsonl')) as f:
      logged = f.read()
    again = _quickstart(uri)
    assert _figures(again) == _figures(result)
    with open(os.path.join(bucket, 'neo_multi', 'logs', 'capability.jsonl')) as f:
      assert f.read() == logged

    run = workdir_lib.load_run(uri)
    assert (run.workdir, run.run_dir) == (uri, uri + '/neo_multi')
    assert (run.stage, run.step) == ('capability', 8)
  assert os.listdir(cwd) == [], 'a remote path was written as a local one'
