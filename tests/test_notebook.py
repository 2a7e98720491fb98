"""experiments/colab_demo.ipynb: the committed file is what experiments/make_colab_demo.py
writes (outputs stripped), and it executes end to end with nbclient on the tiny size
(NEO_DEMO_SIZE=tiny) under a per-cell time limit, in a kernel of this very interpreter."""

from __future__ import annotations

import json
import os
import re
import sys
import time

import nbformat
from nbclient import NotebookClient

from experiments import make_colab_demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, 'experiments', 'colab_demo.ipynb')
CELL_TIMEOUT_S = 600


def _strip_ids(nb):
  return [{k: v for k, v in c.items() if k not in ('id',)} for c in nb['cells']]


def test_committed_notebook_is_the_generated_one_without_outputs():
  on_disk = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(on_disk)
  assert _strip_ids(on_disk) == _strip_ids(make_colab_demo.build_notebook()), (
      'experiments/colab_demo.ipynb is stale: run python -m experiments.make_colab_demo')
  for cell in on_disk.cells:
    if cell.cell_type == 'code':
      assert cell.outputs == [] and cell.execution_count is None


def test_notebook_runs_end_to_end_on_the_tiny_size(tmp_path, monkeypatch):
  # A kernelspec of this interpreter (the venv's python), found first through JUPYTER_PATH:
  # the packaged 'python3' spec runs whatever `python` is on PATH.
  spec_dir = tmp_path / 'jupyter' / 'kernels' / 'python3'
  spec_dir.mkdir(parents=True)
  (spec_dir / 'kernel.json').write_text(json.dumps({
      'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
      'display_name': 'neo_jax test', 'language': 'python'}))
  monkeypatch.setenv('JUPYTER_PATH', str(tmp_path / 'jupyter'))
  monkeypatch.setenv('NEO_DEMO_SIZE', 'tiny')
  monkeypatch.setenv('NEO_DEMO_WORKDIR', str(tmp_path / 'run'))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name='python3',
                          resources={'metadata': {'path': os.path.join(REPO, 'experiments')}})
  t0 = time.perf_counter()
  client.execute()  # raises CellExecutionError on any failing cell (the notebook asserts too)
  seconds = time.perf_counter() - t0
  if os.environ.get('NEO_NOTEBOOK_EXECUTED'):  # to look at the executed notebook
    nbformat.write(nb, os.environ['NEO_NOTEBOOK_EXECUTED'])
  text, images = [], 0
  for cell in nb.cells:
    for out in cell.get('outputs', []):
      assert out.output_type != 'error', out
      if out.output_type == 'stream':
        text.append(out.text)
      elif out.output_type in ('display_data', 'execute_result'):
        images += 'image/png' in out.data
        text.append(out.data.get('text/plain', ''))
  out = ''.join(text)
  assert images == 2, f'{images} plots'  # codebook utilisation, genres
  assert 'loaded the trained run' not in out  # a fresh workdir: trained here
  assert (tmp_path / 'run' / 'neo_multi' / 'checkpoints' / 'capability').is_dir()
  for head in ('== recommend', '== search', '== describe', '== explain'):
    assert head in out, head
  for fmt in ('ids', 'text', 'mixed'):
    assert re.search(rf'== recommend user=\S+ type=movie format={fmt}', out), fmt
  ranked = re.findall(r"^\s+\d+\. '", out, re.M)
  # recommend ids, mixed and search: up to 10 items each (beam search may return fewer
  # admissible items than beams once the history is excluded; the notebook asserts >= 1).
  assert 3 <= len(ranked) <= 30
  print(f'notebook executed in {seconds:.0f}s')
