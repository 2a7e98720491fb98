"""Training lanes (neo_jax/run/lanes.py, `experiment.lanes`): the cores each lane gets, a
lane's failure named, and an experiment trained in two lanes giving the serial run's models."""

import json
import os
import subprocess
import sys
import time

import pytest

from experiments.configs import tiny
from neo_jax.run import config as config_lib
from neo_jax.run import experiment
from neo_jax.run import lanes


def test_cpu_share_splits_the_cores_into_contiguous_shares():
  assert lanes.cpu_share(0, 2, {0, 1}) == [0]
  assert lanes.cpu_share(1, 2, {0, 1}) == [1]
  cores = {3, 4, 5, 6, 7}
  shares = [lanes.cpu_share(i, 2, cores) for i in range(2)]
  assert shares == [[3, 4, 5], [6, 7]]
  assert lanes.cpu_share(2, 3, set(range(8))) == [6, 7]
  with pytest.raises(config_lib.ConfigError, match='experiment.lanes=3 needs at least 3'):
    lanes.cpu_share(0, 3, {0, 1})
  with pytest.raises(ValueError, match='out of range'):
    lanes.cpu_share(2, 2, {0, 1})


def test_lanes_other_than_auto_one_or_two_are_refused():
  cfg = tiny.get_config()
  cfg.experiment.lanes = 3
  with pytest.raises(config_lib.ConfigError, match='experiment.lanes'):
    config_lib.validate(cfg)


def test_auto_lanes_is_two_on_a_cpu_with_two_cores():
  assert lanes.resolve(1) == 1 and lanes.resolve(2) == 2
  assert lanes.resolve(0) == (2 if len(os.sched_getaffinity(0)) >= 2 else 1)


def test_pin_refuses_a_process_where_jax_has_started():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  jnp.zeros(1).block_until_ready()
  with pytest.raises(lanes.LaneError, match='fresh process'):
    lanes.pin([0])


def test_confined_restores_the_affinity():
  before = os.sched_getaffinity(0)
  with lanes.confined([min(before)]):
    assert os.sched_getaffinity(0) == {min(before)}
  assert os.sched_getaffinity(0) == before


def test_a_failed_lane_is_named_with_its_exit_status(tmp_path):
  lane = lanes.Lane('boom', os._exit, (3,))
  with pytest.raises(lanes.LaneError, match='lane boom .* exit status 3'):
    lane.join()
  lane = lanes.Lane('quiet', time.sleep, (0.1,))
  with pytest.raises(lanes.LaneError, match='lane quiet finished without writing'):
    lane.wait_for(str(tmp_path / 'never'), poll_s=0.05)
  lane = lanes.Lane('boom2', os._exit, (4,))
  with pytest.raises(lanes.LaneError, match='exit status 4'):
    lane.wait_for(str(tmp_path / 'never'), poll_s=0.05)


_ORPHAN_PARENT = """
import sys, time
from neo_jax.run import lanes
lane = lanes.Lane('orphan', time.sleep, (120,))
print(lane._process.pid, flush=True)
time.sleep(120)
"""


def _ended(pid: int) -> bool:
  """Whether process `pid` is gone or a zombie waiting to be reaped (it runs no more)."""
  try:
    with open(f'/proc/{pid}/status') as f:
      return any(line.split()[:2] == ['State:', 'Z'] for line in f)
  except FileNotFoundError:
    return True


def test_a_lane_ends_when_the_process_that_started_it_is_killed():
  """SIGKILL leaves no chance to stop a daemon child: the lane notices its parent is gone and
  ends itself instead of training on as an orphan."""
  parent = subprocess.Popen([sys.executable, '-c', _ORPHAN_PARENT], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  child = int(parent.stdout.readline())
  assert not _ended(child)
  time.sleep(2 * lanes.PARENT_POLL_S)
  assert not _ended(child)  # the watcher leaves a lane with a live parent alone
  parent.kill()
  parent.wait()
  deadline = time.monotonic() + 20
  while not _ended(child) and time.monotonic() < deadline:
    time.sleep(0.1)
  ended = _ended(child)
  if not ended:
    os.kill(child, 9)
  assert ended, 'the lane outlived its parent'
  assert 'is gone; stopping' in parent.stderr.read()


def _config(n_lanes):
  cfg = tiny.get_config()
  cfg.experiment.mono_tasks = ('recommend',)
  cfg.experiment.baselines = ('popularity', 'bm25', 'tiger')
  cfg.baseline_args.tiger = {'d_model': 16, 'num_heads': 2, 'mlp_dim': 32, 'max_epochs': 2,
                             'patience': 1, 'num_beams': 30, 'valid_max_requests': 20}
  cfg.experiment.lanes = n_lanes
  cfg.experiment.steer_requests = 0
  cfg.experiment.understanding_requests = 0
  return cfg


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason='needs 2 cores')
def test_two_lanes_train_the_serial_runs_models(tmp_path):
  results = {}
  for n in (1, 2):
    w = str(tmp_path / f'lanes{n}')
    results[n], _ = experiment.run_experiment(_config(n), w, log=lambda _: None)
  serial, parallel = results[1], results[2]
  assert parallel['experiment/lanes'] == 2 and 'seconds/lanes' in parallel
  assert 'experiment/lanes' not in serial
  with open(os.path.join(str(tmp_path / 'lanes2'), 'lanes', 'lane1.json')) as f:
    lane_facts = json.load(f)
  # The lane trained NEO-multi (its own training time, not the main process's reload), and
  # then fitted TIGER, which this process loaded and evaluated.
  assert lane_facts['seconds/train_neo_multi'] == parallel['seconds/train_neo_multi']
  assert lane_facts['tiger/status'] == 'ok' and 'seconds/baseline_tiger' in lane_facts
  assert parallel['seconds/baseline_tiger'] == lane_facts['seconds/baseline_tiger']
  for key in ('tiger/fit/best_epoch', 'tiger/fit/lr'):
    assert parallel[key] == serial[key], key
  for run in ('neo_multi', 'neo_mono_recommend'):
    for key in (f'{run}/train/grounding_final_loss', f'{run}/train/capability_final_loss'):
      assert parallel[key] == pytest.approx(serial[key], rel=1e-4), key
  for key in ('neo_multi/ndcg@10', 'neo_multi/hr@10', 'neo_multi/search_hr@10',
              'popularity/ndcg@10', 'bm25/search_hr@10', 'tiger/ndcg@10', 'tiger/hr@10'):
    assert parallel[key] == pytest.approx(serial[key], abs=1e-6), key


def _grounded_run(root):
  src = root / 'multi' / 'checkpoints' / 'grounding'
  (src / '440').mkdir(parents=True)
  (src / '440' / 'params').write_text('weights')
  (src / 'summary.json').write_text('{}')
  return str(root / 'multi')


def test_share_grounding_copies_a_finished_stage_once(tmp_path):
  src = _grounded_run(tmp_path)
  dst = str(tmp_path / 'mono')
  assert experiment.share_grounding(src, dst, lambda _: None)
  copied = tmp_path / 'mono' / 'checkpoints' / 'grounding'
  assert (copied / '440' / 'params').read_text() == 'weights'
  assert not (tmp_path / 'mono' / 'checkpoints' / 'grounding.copying').exists()
  assert not experiment.share_grounding(src, dst, lambda _: None)  # already there


def test_share_grounding_waits_for_a_finished_stage_and_a_writer(tmp_path, monkeypatch):
  src = _grounded_run(tmp_path)
  os.remove(os.path.join(src, 'checkpoints', 'grounding', 'summary.json'))
  assert not experiment.share_grounding(src, str(tmp_path / 'mono'), lambda _: None)
  assert not (tmp_path / 'mono').exists()
  src = _grounded_run(tmp_path / 'again')
  monkeypatch.setattr(experiment.multihost, 'is_writer', lambda: False)
  assert not experiment.share_grounding(src, str(tmp_path / 'mono2'), lambda _: None)
  assert not (tmp_path / 'mono2').exists()
