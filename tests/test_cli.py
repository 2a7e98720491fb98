"""The entry points explain themselves: --help lists their flags, --print_config the resolved
config, and every user error is one line `error: ...` with exit status 1 that writes nothing it
should not."""

import os
import subprocess
import sys

import pytest

from experiments.configs import tiny
from neo_jax.run import config as config_lib
from neo_jax.run import rundir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module, *args, timeout=300):
  return subprocess.run([sys.executable, '-m', f'experiments.{module}', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))


def _one_line_error(proc) -> str:
  assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
  lines = [x for x in proc.stderr.splitlines() if x.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr[-2000:]
  assert 'Traceback' not in proc.stdout + proc.stderr
  return lines[0]


@pytest.mark.parametrize('module', ['quickstart', 'train', 'evaluate', 'build_sids'])
def test_help_lists_the_flags(module):
  proc = _run(module, '--help')  # absl exits with status 1 after printing the help
  assert 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  for flag in ('workdir', 'config', 'data_dir', 'dataset', 'print_config', 'overwrite',
               'traceback'):
    assert f'--{flag}:' in proc.stdout or f'--[no]{flag}:' in proc.stdout, (module, flag)


def test_generate_help_lists_its_flags():
  proc = _run('generate', '--help')
  assert 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  for flag in ('workdir', 'batch_in', 'batch_out', 'backbone', 'traceback'):
    assert f'--{flag}:' in proc.stdout or f'--[no]{flag}:' in proc.stdout, flag


def test_unknown_key_is_one_line_and_writes_nothing(tmp_path):
  w = tmp_path / 'w'
  line = _one_line_error(_run('quickstart', f'--workdir={w}', '--config.capability.stepz=3'))
  assert 'capability.stepz' in line and "did you mean 'capability.steps'" in line
  assert not w.exists()


@pytest.mark.parametrize('arg,expected', [
    ('--config.data.dataset=movielens1m', "did you mean 'movielens100k'"),
    ('--config.capability.steps=abc', '--config.capability.steps=abc'),
    ('--config=experiments/configs/nowhere.py', 'does not load'),
    ('--dataset=movielens1m', 'movielens1m'),
])
def test_bad_values_are_one_line(tmp_path, arg, expected):
  w = tmp_path / 'w'
  line = _one_line_error(_run('quickstart', f'--workdir={w}', arg))
  assert expected in line
  assert not w.exists()


def test_print_config_lists_every_key_with_its_meaning(tmp_path):
  proc = _run('evaluate', '--print_config', f'--workdir={tmp_path / "w"}',
              '--config.capability.steps=7')
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.strip().splitlines()
  values = {x.split(' = ')[0]: x for x in lines}
  # evaluate's default config is the MovieLens comparison.
  assert values['data.dataset'].startswith('data.dataset = "movielens100k"  # ')
  assert '"sasrec"' in values['experiment.baselines']
  assert values['capability.steps'].startswith('capability.steps = 7  # optimizer steps')
  assert all('  # ' in x for x in lines)
  assert not (tmp_path / 'w').exists()


def test_bad_data_is_one_line_naming_file_and_line(tmp_path):
  d = tmp_path / 'data'
  d.mkdir()
  (d / 'items.jsonl').write_text('{"id": "a", "type": "movie", "title": "A"}\n'
                                 '{"id": "b", "type": "movie"}\n')
  (d / 'interactions.csv').write_text('user_id,item_id,timestamp\nu,a,1\n')
  line = _one_line_error(_run('quickstart', f'--workdir={tmp_path / "w"}', f'--data_dir={d}'))
  assert 'items.jsonl' in line and '2' in line and 'title' in line
  assert not (tmp_path / 'w').exists()  # bad data claims no workdir
  proc = _run('quickstart', f'--workdir={tmp_path / "w2"}', f'--data_dir={d}', '--traceback')
  assert proc.returncode == 1 and 'Traceback' in proc.stderr
  assert _one_line_error(_run('quickstart', f'--workdir={tmp_path / "w3"}',
                              f'--data_dir={tmp_path / "nowhere"}')).endswith(
                                  'no such file or directory')


def test_changed_config_is_refused_with_the_difference(tmp_path):
  w = tmp_path / 'w'
  cfg = config_lib.validate(tiny.get_config())
  rundir.claim(str(w), cfg)
  before = (w / 'config.json').read_text()
  line = _one_line_error(_run('quickstart', '--config=experiments/configs/tiny.py',
                              f'--workdir={w}', '--config.model.d_model=64'))
  assert 'model.d_model: 32 -> 64' in line and '--overwrite' in line
  assert (w / 'config.json').read_text() == before


def test_generate_without_a_run_is_one_line(tmp_path):
  line = _one_line_error(_run('generate', f'--workdir={tmp_path}'))
  assert 'holds no trained model' in line
  line = _one_line_error(_run('generate', f'--workdir={tmp_path / "nowhere"}'))
  assert 'no such directory' in line


def test_build_dataset_existing_output_is_one_line(tmp_path):
  w = tmp_path / 'w'
  (w / 'tfds' / 'movielens100k').mkdir(parents=True)
  line = _one_line_error(_run('build_dataset', '--dataset=movielens100k', f'--workdir={w}'))
  assert 'exists' in line and '--overwrite' in line
  assert not (w / 'result.json').exists()


def test_start_keeps_a_verbosity_set_on_the_command_line(monkeypatch):
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  from experiments import common  # pylint: disable=g-import-not-at-top
  before = logging.get_verbosity()
  try:
    logging.set_verbosity(logging.INFO)
    monkeypatch.setattr(flags.FLAGS['verbosity'], 'present', 1)
    common.start(['prog'])
    assert logging.get_verbosity() == logging.INFO  # --verbosity given: kept
    monkeypatch.setattr(flags.FLAGS['verbosity'], 'present', 0)
    common.start(['prog'])
    assert logging.get_verbosity() == logging.WARNING  # not given: orbax's INFO quieted
  finally:
    logging.set_verbosity(before)
