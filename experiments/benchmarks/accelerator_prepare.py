r"""Prepares, on the CPU, the one folder that experiments.benchmarks.accelerator needs on an
accelerator machine that can download nothing: the data, the item embeddings, the wheels of
the packages that machine lacks, and the command to run there.

  python -m experiments.benchmarks.accelerator_prepare --out=.accel               # full
  python -m experiments.benchmarks.accelerator_prepare --out=P --size=tiny --nowheels  # CI

Writes into --out (an ignored folder; `.accel` is in .gitignore):
  data/            the dataset in the generic format (full: MovieLens-100k, built from the
                   installed `recbole` package and exported; tiny: the tiny config's synthetic
                   catalog), so that the accelerator reads it without TFDS building anything
  embeddings.npy   the item embeddings of the config's `sid.encoder` (full: MiniLM+CF, the
                   CF part fitted on the training split of the same split the run makes),
                   row n = catalog row n; the run uses them as `sid.encoder='npy:<path>'`
  wheels/          cp312 manylinux x86_64 wheels of every runtime requirement (and its
                   dependencies) that the accelerator's image lacks (DEVICE_PACKAGES), at the
                   versions installed here; jax and jaxlib are never carried (the image has
                   its CUDA build)
  run.sh           installs the wheels into /tmp/site and runs the accelerator script
  manifest.json    what is there (`bytes`: the folder without this file; versions, the
                   config it was prepared for)

The folder must stay under MAX_BYTES (64 MiB: what travels with one accelerator command);
a larger one is an error. Ends by printing the manifest as its last line.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from absl import app
from absl import flags
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_BYTES = 64 * 2**20

# The Python packages of the accelerator machines' image ('cuda'), as
# /work/.library/device/KINDS.md lists them (read on such a machine on 2026-11-17).
DEVICE_PACKAGES = frozenset('''
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib
jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator
lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx
ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache
protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz
torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers
treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp
'''.split())
# Never carried: the image's CUDA jax must stay.
NEVER_CARRY = frozenset({'jax', 'jaxlib'})
# requirements.txt entries the accelerator run does not import (tests, the notebook).
NOT_RUNTIME = frozenset({'pytest', 'pytest-xdist', 'hypothesis', 'nbclient', 'nbformat',
                         'ipykernel'})
# The environment the wheels are for: the image's Python 3.12 on x86-64 Linux.
TARGET_ENV = {'python_version': '3.12', 'python_full_version': '3.12.3',
              'sys_platform': 'linux', 'platform_system': 'Linux',
              'platform_machine': 'x86_64', 'os_name': 'posix',
              'implementation_name': 'cpython', 'platform_python_implementation': 'CPython',
              'extra': ''}
PLATFORMS = ('manylinux_2_17_x86_64', 'manylinux2014_x86_64', 'manylinux_2_24_x86_64',
             'manylinux_2_27_x86_64', 'manylinux_2_28_x86_64', 'manylinux_2_31_x86_64',
             'manylinux_2_34_x86_64', 'manylinux_2_35_x86_64', 'manylinux1_x86_64')

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('out', os.path.join(REPO, '.accel'), 'the folder to prepare (replaced)')
  flags.DEFINE_enum('size', 'full', ['full', 'tiny'], 'the accelerator run size it is for')
  flags.DEFINE_bool('wheels', True, 'download the wheels the accelerator lacks (needs the '
                    'package registry)')


def canonical(name: str) -> str:
  """A distribution name as pip compares them (PEP 503)."""
  return re.sub(r'[-_.]+', '-', name).lower()


def runtime_requirements(path: str = os.path.join(REPO, 'requirements.txt')) -> list[str]:
  """The names pinned in requirements.txt, less NOT_RUNTIME."""
  names = []
  with open(path) as f:
    for line in f:
      line = line.split('#', 1)[0].strip()
      if line:
        name = canonical(re.split(r'[<>=!~;\[ ]', line, 1)[0])
        if name not in NOT_RUNTIME:
          names.append(name)
  return names


def _requires(name: str) -> list[str]:
  """The dependencies of an installed distribution that apply to TARGET_ENV (no extras)."""
  from packaging.requirements import Requirement  # pylint: disable=g-import-not-at-top
  out = []
  for text in metadata.distribution(name).requires or []:
    req = Requirement(text)
    if req.marker is None or req.marker.evaluate(dict(TARGET_ENV)):
      out.append(canonical(req.name))
  return out


def wheels_needed(roots: list[str], device: frozenset[str] = DEVICE_PACKAGES
                  ) -> dict[str, str]:
  """{name: installed version} of `roots` and their dependencies, transitively, that the
  device lacks (every dependency of a package the device has is the device's business)."""
  need: dict[str, str] = {}
  todo = [canonical(r) for r in roots]
  while todo:
    name = todo.pop()
    if name in need or name in device or name in NEVER_CARRY:
      continue
    try:
      need[name] = metadata.version(name)
    except metadata.PackageNotFoundError as e:
      raise RuntimeError(f'{name} is needed on the accelerator but not installed here, so '
                         'its version is unknown: install requirements.txt first') from e
    todo.extend(_requires(name))
  return dict(sorted(need.items()))


def _pip(args: list[str]) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'pip'] + args, capture_output=True, text=True,
                        timeout=900)


def _last_line(proc: subprocess.CompletedProcess) -> str:
  return (proc.stderr.strip().splitlines() or ['no output'])[-1]


def download_wheels(need: dict[str, str], dest: str) -> list[str]:
  """The cp312 manylinux x86_64 (or pure-Python) wheel of each package, `pip download`ed
  into `dest`; a package published only as source (promise) is built here into a wheel,
  which must then be pure Python (`-none-any`) to install there. Returns the file names.
  Raises with pip's message when the registry cannot be reached or lacks a package."""
  os.makedirs(dest, exist_ok=True)
  base = ['download', '--no-deps', '--only-binary=:all:', '--python-version', '3.12',
          '--implementation', 'cp', '--abi', 'cp312', '--abi', 'abi3', '--abi', 'none',
          '-d', dest]
  for p in PLATFORMS + ('any',):
    base += ['--platform', p]
  for name, version in need.items():
    spec = f'{name}=={version}'
    proc = _pip(base + [spec])
    if proc.returncode == 0:
      continue
    if 'No matching distribution' not in proc.stderr:
      raise RuntimeError(f'pip download {spec} failed (is the package registry reachable?): '
                         + _last_line(proc))
    with tempfile.TemporaryDirectory() as tmp:
      built = _pip(['wheel', '--no-deps', '-w', tmp, spec])
      files = [f for f in os.listdir(tmp) if f.endswith('.whl')]
      if built.returncode != 0 or len(files) != 1:
        raise RuntimeError(f'{spec}: no cp312 wheel and no wheel built from its source: '
                           + _last_line(built))
      if not files[0].endswith('-none-any.whl'):
        raise RuntimeError(f'{spec}: no cp312 wheel, and the one built here ({files[0]}) is '
                           'not pure Python, so it would not install on the accelerator')
      shutil.move(os.path.join(tmp, files[0]), os.path.join(dest, files[0]))
  files = sorted(f for f in os.listdir(dest) if f.endswith('.whl'))
  got = {canonical(f.split('-')[0]) for f in files}
  missing = sorted(set(need) - got)
  if missing:
    raise RuntimeError(f'no wheel came for {missing}')
  return files


def prepare_data(size: str, out: str, log=print) -> dict[str, Any]:
  """data/ and embeddings.npy for `size` (see the module docstring): manifest entries."""
  from neo_jax.catalog import io as catalog_io  # pylint: disable=g-import-not-at-top
  from neo_jax.run import config as config_lib  # pylint: disable=g-import-not-at-top
  from neo_jax.run import stages  # pylint: disable=g-import-not-at-top
  from experiments.benchmarks import accelerator  # pylint: disable=g-import-not-at-top
  config_name = accelerator.SIZES[size].neo_config
  cfg = config_lib.validate(
      importlib.import_module(f'experiments.configs.{config_name}').get_config())
  with tempfile.TemporaryDirectory() as tmp:
    ds = stages.load_data(cfg, tmp, log)
    catalog_io.write_dataset(ds, os.path.join(out, 'data'))
  # Read back exactly as the accelerator will read it, then the run's split and view.
  generic = catalog_io.load_dataset(os.path.join(out, 'data'),
                                    on_unknown_item=cfg.data.on_unknown_item)
  data = stages.split_data(cfg, generic, log)
  t0 = time.perf_counter()
  emb, encoder = stages.embed_items(cfg, data.view, data.fit_split)
  emb = np.asarray(emb, np.float32)
  np.save(os.path.join(out, 'embeddings.npy'), emb)
  log(f'embeddings: {encoder}, {emb.shape} in {time.perf_counter() - t0:.1f}s')
  # The decoder's vocabulary is the text vocabulary plus the SID block (at most levels x k
  # codes + a disambiguation level + markers per type): the probe step is sized by it.
  # (K per type: sid.k, or grown with the type's size by sid.codes_per_item.)
  types = len(generic.catalog.type_names)
  k = stages.sid_k(cfg, data.view.catalog)
  ks = list(k.values()) if isinstance(k, dict) else [int(k)] * types
  sid_tokens = sum(int(cfg.sid.levels) * kt + 64 for kt in ks) + 2 + types
  return {'config': config_name, 'dataset': cfg.data.dataset, 'data_dir': 'data',
          'embeddings': 'embeddings.npy', 'encoder': encoder,
          'embedding_shape': list(emb.shape), 'num_items': len(generic.catalog),
          'vocab_size_estimate': int(cfg.tokenizer.vocab_size) + sid_tokens}


RUN_SH = '''#!/usr/bin/env bash
# The accelerator run from this folder, on a machine that downloads nothing: install the
# carried wheels into /tmp/site, then run (from the repository root):
#   bash {folder}/run.sh "$OUT"
set -euo pipefail
OUT=${{1:?give the output folder}}
HERE=$(cd "$(dirname "$0")" && pwd)
if ls "$HERE"/wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
    --target /tmp/site "$HERE"/wheels/*.whl
  export PYTHONPATH=/tmp/site${{PYTHONPATH:+:$PYTHONPATH}}
fi
export PYTHONUNBUFFERED=1
python3 -m experiments.benchmarks.accelerator --size={size} --prepared="$HERE" --out="$OUT" \\
  2>&1 | tee "$OUT/log.txt"
'''


def folder_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def prepare(out: str, size: str, wheels: bool, log=print) -> dict[str, Any]:
  """Writes the folder (replacing it); returns the manifest."""
  if os.path.exists(out):
    shutil.rmtree(out)
  os.makedirs(out)
  manifest: dict[str, Any] = {'size': size, 'created': time.strftime('%Y-%m-%d %H:%M UTC',
                                                                      time.gmtime())}
  manifest.update(prepare_data(size, out, log))
  if wheels:
    need = wheels_needed(runtime_requirements())
    log(f'wheels for the accelerator: {need}')
    manifest['wheels'] = download_wheels(need, os.path.join(out, 'wheels'))
  else:
    manifest['wheels'] = []
  with open(os.path.join(out, 'run.sh'), 'w') as f:
    f.write(RUN_SH.format(folder=os.path.basename(out), size=size))
  manifest['bytes'] = folder_bytes(out)  # everything but manifest.json itself
  with open(os.path.join(out, 'manifest.json'), 'w') as f:
    json.dump(manifest, f, indent=1)
  total = folder_bytes(out)
  if total > MAX_BYTES:
    raise RuntimeError(f'{out} holds {total / 2**20:.1f} MiB, over the '
                       f'{MAX_BYTES / 2**20:.0f} MiB that travels with one command')
  log(f'{out}: {total / 2**20:.1f} MiB')
  return manifest


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  manifest = prepare(os.path.abspath(FLAGS.out), FLAGS.size, FLAGS.wheels)
  print(json.dumps(manifest, sort_keys=True))


if __name__ == '__main__':
  define_flags()
  app.run(main)
