"""experiments/benchmarks/accelerator.py and accelerator_prepare.py: the accelerator run at
its tiny size on the CPU from a folder prepared at the tiny size (every part, both files
written), the parity check able to fail, the wheel selection, and a clear error without a
prepared folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.benchmarks import accelerator
from experiments.benchmarks import accelerator_prepare as prepare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS',)}
  return subprocess.run([sys.executable, '-m'] + args, cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)


def test_tiny_run_from_a_prepared_folder(tmp_path):
  folder, out = tmp_path / 'prepared', tmp_path / 'out'
  prep = _run(['experiments.benchmarks.accelerator_prepare', '--size=tiny', '--nowheels',
               f'--out={folder}'])
  assert prep.returncode == 0, prep.stderr[-3000:]
  manifest = json.loads(prep.stdout.strip().splitlines()[-1])
  assert manifest['bytes'] < prepare.MAX_BYTES
  total = prepare.folder_bytes(str(folder))
  assert manifest['bytes'] + (folder / 'manifest.json').stat().st_size == total
  assert total < prepare.MAX_BYTES
  emb = np.load(folder / 'embeddings.npy')
  assert emb.shape == (manifest['num_items'], manifest['embedding_shape'][1])
  assert (folder / 'data' / 'items.jsonl').exists() and (folder / 'run.sh').exists()

  proc = _run(['experiments.benchmarks.accelerator', '--size=tiny', f'--prepared={folder}',
               f'--out={out}'])
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  with open(out / 'result.json') as f:
    assert json.load(f) == result
  assert result['ok'] is True and not any(k.endswith('/error') for k in result)
  # parity: bf16 on the device (here the CPU) near the f32 reference, f32 equal to it.
  assert 0 < result['parity/bf16_rel_rms'] <= accelerator.BF16_TOLERANCE
  assert result['parity/f32_rel_rms'] <= accelerator.F32_TOLERANCE
  # mfu: the sharded step ran; no published peak for a CPU, the measured matmul instead.
  assert result['mfu/tiny/mfu'] is None and result['mfu/tiny/tokens_per_second'] > 0
  assert 0 < result['mfu/tiny/fraction_of_measured_matmul'] < 1.5
  assert np.isfinite(result['mfu/tiny/loss'])
  # decode: both catalog sizes, every returned item real and not excluded.
  size = accelerator.SIZES['tiny']
  for n in size.decode_items:
    assert result[f'decode/{n}/valid_fraction'] == 1.0
    assert result[f'decode/{n}/items_checked'] > 0
    assert result[f'decode/{n}/latency_ms_p99'] >= result[f'decode/{n}/latency_ms_p50'] > 0
    for b in size.decode_batches:
      assert result[f'decode/{n}/requests_per_s_batch{b}'] > 0
    assert result[f'decode/{n}/constrained_over_unconstrained_same_head'] > 0
  # neo: trained, evaluated, SASRec beside it, on validation and test.
  assert result['neo/steps'] >= 4 and result['neo/train_seconds'] > 0
  figures = [f'neo/{s}/test/{m}' for s in ('neo_multi', 'sasrec', 'popularity')
             for m in ('ndcg@10', 'hr@10')]
  figures += ['neo/neo_multi/valid/ndcg@10', 'neo/neo_multi/valid/hr@10',
              'neo/sasrec/valid/ndcg@10']
  for key in figures:
    assert result[key] is not None and 0 <= result[key] <= 1, (key, result[key])
  assert result['neo/sasrec/fit/grid_points_tried'] >= 1
  summary = (out / 'summary.md').read_text()
  for part in accelerator.PARTS:
    assert f'## {part} (' in summary and 'FAILED' not in summary


def test_parity_fails_outside_its_tolerance(monkeypatch):
  monkeypatch.setattr(accelerator, 'BF16_TOLERANCE', 1e-9)
  out = accelerator.parity(accelerator.SIZES['tiny'])
  assert out['bf16_ok'] is False and out['ok'] is False
  assert out['f32_ok'] is True


def test_rel_rms_against_numpy():
  ref = np.array([[1.0, -2.0], [3.0, 0.5]])
  assert accelerator.rel_rms(ref * 1.1, ref) == pytest.approx(0.1)
  assert accelerator.rel_rms(ref, ref) == 0.0


def test_wheels_carry_what_the_accelerator_lacks():
  need = prepare.wheels_needed(prepare.runtime_requirements())
  # Missing there (KINDS.md's list), with their own missing dependencies.
  for name in ('ml-collections', 'tensorflow-datasets', 'array-record', 'tensorboardx',
               'promise', 'dm-tree', 'tensorflow-metadata'):
    assert name in need, (name, sorted(need))
  # Never the image's own packages, never jax.
  for name in ('jax', 'jaxlib', 'flax', 'numpy', 'absl-py', 'protobuf', 'etils'):
    assert name not in need
  assert all(v for v in need.values())
  # A device with nothing installed needs the whole closure, jax still excluded.
  everything = prepare.wheels_needed(['flax'], device=frozenset())
  assert 'flax' in everything and 'numpy' in everything and 'jax' not in everything


def test_tiny_run_prepares_its_folder_when_missing(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(prepare, 'prepare', lambda out, size, wheels: calls.append(
      (out, size, wheels)))
  folder = str(tmp_path / 'missing')
  # The stub writes nothing, so reading the manifest then fails, after the call.
  with pytest.raises(FileNotFoundError):
    accelerator.neo(accelerator.SIZES['tiny'], folder, 1.0)
  assert calls == [(folder, 'tiny', False)]
  with pytest.raises(FileNotFoundError, match='accelerator_prepare'):
    accelerator.neo(accelerator.SIZES['full'], folder, 1.0)


def test_missing_prepared_folder_names_the_prepare_command(tmp_path):
  with pytest.raises(FileNotFoundError, match='accelerator_prepare'):
    accelerator.read_manifest(str(tmp_path))


def test_neo_budget_keeps_to_the_deadline():
  full = accelerator.SIZES['full']
  assert accelerator.neo_budget(full, 0.0, 0.0, 1000.0) == full.neo_seconds
  assert accelerator.neo_budget(full, 50.0, 470.0, 0.0) == 50.0
  # 400 s gone of 470: (70 - overhead) / 2 would be negative, so the floor, 10%.
  assert accelerator.neo_budget(full, 100.0, 470.0, 400.0) == pytest.approx(10.0)
  # 200 s gone: both budgets and the overhead end by the deadline.
  got = accelerator.neo_budget(full, 200.0, 470.0, 200.0)
  assert 200.0 + full.neo_overhead_s + 2 * got == pytest.approx(470.0)


def test_a_part_past_the_deadline_is_skipped_and_fails(tmp_path):
  result, ok = accelerator.run('tiny', str(tmp_path), str(tmp_path), ('parity',),
                               deadline_s=1e-9)
  assert not ok and result['parity/error'].startswith('skipped:')
  assert 'parity (0 s, FAILED: skipped' in (tmp_path / 'summary.md').read_text()
