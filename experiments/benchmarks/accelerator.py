r"""The accelerator run: one command, at most 8 minutes on one H100/H200, that measures what
only an accelerator can show, from a folder prepared on the CPU beforehand.

  python -m experiments.benchmarks.accelerator_prepare --out=.accel          # on the CPU
  python -m experiments.benchmarks.accelerator --prepared=.accel --out=DIR   # on the GPU
  python -m experiments.benchmarks.accelerator --size=tiny --out=DIR   # the CPU, CI

(`.accel/run.sh`, written by the prepare step, installs the carried wheels first: the exact
command for the accelerator machine. At the tiny size the folder, `.accel-tiny` by default,
is prepared on the spot when missing: synthetic data and TF-IDF embeddings, no wheels.) Parts, in order (`--only=` picks some):

  parity  the decoder (random weights, `parity_preset`) on the default device against the
          CPU: the same parameters, f32 on the CPU as the reference; bf16 compute on the
          device must be within BF16_TOLERANCE (relative RMS of the logits), f32 compute
          within F32_TOLERANCE; top-1 agreement reported.
  mfu     training MFU of the sharded train step (`neo_jax.train.loop.make_train_step`,
          parameters and optimizer state created sharded over a (devices, 1, 1) mesh, jitted
          with explicit in/out shardings, state donated), bf16 compute, f32 parameters, random
          tokens, per preset (full: smollm2-135m and qwen3-0.6b at sequence 1024). MFU is
          against the published dense bf16 peak (experiments/benchmarks/flops.py) and, beside
          it, against a bf16 matmul measured in the same run.
  decode  constrained beam search (`neo_jax.decode`) with `decode_preset` (random weights,
          bf16) over random catalogs of `decode_items` SIDs: trie build time, batch-1 latency
          p50/p99 (prompt + constrained search with a history exclusion), requests/s at each
          `decode_batches` size, step times at the first of them: constrained with the full
          head / unconstrained (the same head), and constrained with the rows-only head;
          returned items checked against the catalog.
  neo     NEO trained from scratch on the prepared MovieLens-100k (generic-format export,
          MiniLM+CF item embeddings computed on the CPU), through `run_experiment` (the
          project's protocol: validation, then one read of the test split), the number of
          steps sized to `neo_seconds` of training from a timed step of the same shape;
          SASRec fitted there with the same time budget; test NDCG@10 / HR@10 of both (and
          popularity), validation NDCG@10 / HR@10 of NEO (`neo_valid_requests` users: all of
          MovieLens-100k's at full size) and SASRec's validation NDCG@10 (what it was tuned
          by, every validation user).

At full size the run keeps to a deadline (`--deadline_s`, 470 s): a part not started by then
is skipped (an error in the result), and the NEO and SASRec budgets shrink to what is left.
Writes DIR/result.json (flat keys, numbers as numbers; rewritten after every part, so the
parts done survive a kill) and DIR/summary.md (the machine, then one table per part) and
prints the result object last. A part that fails is recorded (`<part>/error`) and the others
still run; a failed part or a failed check (parity, valid items) makes the exit status 1.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from typing import Any, Callable

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from experiments.benchmarks import flops

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PARTS = ('parity', 'mfu', 'decode', 'neo')
BF16_TOLERANCE = 0.05  # relative RMS error of the logits, bf16 compute vs the f32 reference
F32_TOLERANCE = 0.01  # f32 compute (the GPU may use TF32 matmuls) vs the CPU's f32


@dataclasses.dataclass(frozen=True)
class Size:
  """Every setting of one size of the run (see the module docstring for the parts)."""
  parity_preset: str
  parity_shape: tuple[int, int]  # (batch, length)
  mfu_presets: tuple[tuple[str, int], ...]  # (preset, batch)
  mfu_seq_len: int
  mfu_steps: int
  matmul_n: int
  decode_preset: str
  decode_items: tuple[int, ...]
  decode_text_vocab: int
  decode_beams: int
  decode_batches: tuple[int, ...]
  decode_latency_requests: int
  decode_runs: int
  neo_config: str  # a module of experiments/configs
  neo_model: dict[str, Any]
  neo_batch: int
  neo_seq_len: int
  neo_seconds: float
  neo_grounding_fraction: float
  neo_max_requests: int
  deadline_s: float  # the whole run (0: none)
  neo_overhead_s: float  # the neo part besides the two training budgets (prepare, eval)
  neo_valid_requests: int
  sasrec_args: dict[str, Any]  # over the config's baseline_args.sasrec


SIZES = {
    # One H100/H200: ~20 s parity, ~90 s MFU, ~120 s decoding, ~4 min NEO + SASRec + eval.
    'full': Size(
        parity_preset='smollm2-135m', parity_shape=(4, 256),
        mfu_presets=(('smollm2-135m', 32), ('qwen3-0.6b', 16)), mfu_seq_len=1024,
        mfu_steps=5, matmul_n=8192,
        decode_preset='smollm2-135m', decode_items=(1_000_000, 10_000_000),
        decode_text_vocab=49152, decode_beams=30, decode_batches=(64, 256),
        decode_latency_requests=30, decode_runs=3,
        neo_config='movielens100k',
        neo_model=dict(preset='tiny', d_model=512, num_layers=8, num_heads=8, num_kv_heads=4,
                       head_dim=64, mlp_dim=1536, dtype='bfloat16'),
        neo_batch=64, neo_seq_len=256, neo_seconds=100.0, neo_grounding_fraction=0.1,
        neo_max_requests=0, neo_valid_requests=943, sasrec_args={}, deadline_s=470.0,
        neo_overhead_s=90.0),
    # The 2-core CPU in well under 3 minutes: the same code paths at toy sizes.
    'tiny': Size(
        parity_preset='tiny', parity_shape=(2, 32),
        mfu_presets=(('tiny', 4),), mfu_seq_len=64, mfu_steps=2, matmul_n=256,
        decode_preset='tiny', decode_items=(2_000, 20_000), decode_text_vocab=512,
        decode_beams=4, decode_batches=(4, 8), decode_latency_requests=3, decode_runs=1,
        neo_config='tiny',
        neo_model=dict(preset='tiny', d_model=32, num_layers=1, num_heads=2, num_kv_heads=1,
                       head_dim=16, mlp_dim=64, dtype='float32'),
        neo_batch=8, neo_seq_len=128, neo_seconds=4.0, neo_grounding_fraction=0.25,
        neo_max_requests=20, neo_valid_requests=10,
        sasrec_args={'max_epochs': 2, 'grid': ((0.5, 1e-3),)}, deadline_s=0.0,
        neo_overhead_s=0.0),
}

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined only when run as a script (tests import this module)."""
  flags.DEFINE_string('out', None, 'where result.json and summary.md go', required=True)
  flags.DEFINE_enum('size', 'full', list(SIZES), "'full': one H100/H200 in 8 minutes; "
                    "'tiny': the 2-core CPU in under 3 minutes")
  flags.DEFINE_string('prepared', '', 'the folder experiments.benchmarks.accelerator_prepare '
                      'wrote (neo part); default: .accel (full), .accel-tiny (tiny, prepared '
                      'here when missing: it needs nothing from outside)')
  flags.DEFINE_list('only', [], f'run only these parts of {PARTS}')
  flags.DEFINE_float('neo_seconds', 0.0, 'NEO training seconds (0: the size default); '
                     "SASRec's time budget too")
  flags.DEFINE_float('deadline_s', -1.0, 'seconds the whole run may take (-1: the size '
                     'default, 0: none): a part not started by then is skipped, and the NEO '
                     'and SASRec budgets shrink to fit what is left')


# -- helpers -----------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
  """The device and host, as the summary's header shows them."""
  d = jax.devices()[0]
  out = {'device': d.device_kind, 'platform': d.platform, 'devices': jax.device_count(),
         'jax': jax.__version__, 'python': platform.python_version(),
         'cpu_cores': os.cpu_count()}
  try:
    stats = d.memory_stats() or {}
    if 'bytes_limit' in stats:
      out['device_memory_gib'] = round(stats['bytes_limit'] / 2**30, 1)
  except Exception:  # pylint: disable=broad-except  (not every backend has memory stats)
    pass
  return out


def rel_rms(got: np.ndarray, ref: np.ndarray) -> float:
  """RMS of (got - ref) over RMS of ref."""
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  return float(np.sqrt(np.mean((got - ref) ** 2)) / max(np.sqrt(np.mean(ref ** 2)), 1e-30))


def _median_seconds(fn: Callable[[], Any], runs: int) -> tuple[float, float]:
  """(first call seconds, median of `runs` warm calls); results blocked on."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  warm = []
  for _ in range(max(1, runs)):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    warm.append(time.perf_counter() - t0)
  return first, float(np.median(warm))


# -- parity ------------------------------------------------------------------------------------

def parity(size: Size) -> dict[str, Any]:
  """Logits of the same random-weight decoder: device bf16 and f32 against CPU f32."""
  from neo_jax.model.config import get_config  # pylint: disable=g-import-not-at-top
  from neo_jax.model.decoder import Decoder  # pylint: disable=g-import-not-at-top
  cpu, dev = jax.devices('cpu')[0], jax.devices()[0]
  cfg32 = get_config(size.parity_preset, dtype='float32', param_dtype='float32')
  with jax.default_device(cpu):
    model = Decoder(cfg32, rngs=nnx.Rngs(0))
  graph32, state = nnx.split(model)
  graph16, _ = nnx.split(nnx.eval_shape(
      lambda: Decoder(cfg32.replace(dtype='bfloat16'), rngs=nnx.Rngs(0))))
  b, l = size.parity_shape
  tokens = np.random.default_rng(0).integers(0, cfg32.vocab_size, (b, l)).astype(np.int32)
  fns = {name: jax.jit(lambda s, t, g=g: nnx.merge(g, s)(t))
         for name, g in (('f32', graph32), ('bf16', graph16))}
  ref = np.asarray(fns['f32'](jax.device_put(state, cpu), jax.device_put(tokens, cpu)))
  dev_state, dev_tokens = jax.device_put(state, dev), jax.device_put(tokens, dev)
  out: dict[str, Any] = {'preset': size.parity_preset, 'batch': b, 'length': l,
                         'device': f'{dev.platform}:{dev.device_kind}',
                         'bf16_tolerance': BF16_TOLERANCE, 'f32_tolerance': F32_TOLERANCE}
  ok = True
  for name, tol in (('bf16', BF16_TOLERANCE), ('f32', F32_TOLERANCE)):
    got = np.asarray(fns[name](dev_state, dev_tokens)).astype(np.float32)
    err = rel_rms(got, ref)
    out[f'{name}_rel_rms'] = err
    out[f'{name}_max_abs'] = float(np.max(np.abs(got - ref)))
    out[f'{name}_top1_agreement'] = float(np.mean(got.argmax(-1) == ref.argmax(-1)))
    out[f'{name}_ok'] = bool(np.isfinite(err) and err <= tol)
    ok &= out[f'{name}_ok']
  out['ok'] = ok
  return out


# -- training MFU ------------------------------------------------------------------------------

def time_train_step(preset: str, batch: int, seq_len: int, steps: int,
                    overrides: dict[str, Any] | None = None) -> dict[str, Any]:
  """Seconds per step of the sharded train step of `preset` (bf16 compute unless `overrides`
  say otherwise, f32 parameters) over a (devices, 1, 1) mesh, random tokens."""
  from neo_jax.model import sharding  # pylint: disable=g-import-not-at-top
  from neo_jax.model.config import get_config  # pylint: disable=g-import-not-at-top
  from neo_jax.model.decoder import Decoder  # pylint: disable=g-import-not-at-top
  from neo_jax.train import loop  # pylint: disable=g-import-not-at-top
  from neo_jax.train import optimizer as optimizer_lib  # pylint: disable=g-import-not-at-top
  kw = {'dtype': 'bfloat16', 'param_dtype': 'float32', **(overrides or {})}
  cfg = get_config(preset, **kw)
  n = jax.device_count()
  if batch % n:
    raise ValueError(f'batch {batch} is not a multiple of the {n} devices')
  mesh = sharding.make_mesh(n, 1, 1)
  model = sharding.create_sharded(lambda: Decoder(cfg, rngs=nnx.Rngs(0)), mesh)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optimizer_lib.make_optimizer(
      optimizer_lib.schedule(steps=1000, learning_rate=1e-4, warmup_steps=10), b1=0.9,
      b2=0.95, weight_decay=0.01, clip_norm=1.0)
  p_sh = sharding.param_shardings(params, mesh)
  with jax.set_mesh(mesh):
    opt_state = jax.jit(tx.init)(params)
  o_sh = jax.tree.map(lambda x: x.sharding, opt_state)
  b_sh = NamedSharding(mesh, PartitionSpec(sharding.LOGICAL_RULES['batch']))
  replicated = NamedSharding(mesh, PartitionSpec())
  step = jax.jit(loop.make_train_step(graphdef, rest, tx), donate_argnums=(0, 1),
                 in_shardings=(p_sh, o_sh, b_sh), out_shardings=(p_sh, o_sh, replicated))
  rng = np.random.default_rng(0)
  data = jax.device_put({
      'tokens': rng.integers(0, cfg.vocab_size, (batch, seq_len)).astype(np.int32),
      'positions': np.tile(np.arange(seq_len, dtype=np.int32), (batch, 1)),
      'segment_ids': np.ones((batch, seq_len), np.int32),
      'loss_mask': np.ones((batch, seq_len), bool)}, b_sh)
  state = {'p': params, 'o': opt_state}

  def one():
    state['p'], state['o'], m = step(state['p'], state['o'], data)
    return m

  with jax.set_mesh(mesh), sharding.axis_rules(sharding.LOGICAL_RULES):
    first, step_s = _median_seconds(one, steps)
    loss = float(one()['loss'])
  if not np.isfinite(loss):
    raise FloatingPointError(f'{preset}: non-finite loss {loss} in the timed steps')
  tokens_per_s = batch * seq_len / step_s
  return {'params': int(sum(x.size for x in jax.tree.leaves(params))), 'batch': batch,
          'seq_len': seq_len, 'dtype': cfg.dtype, 'devices': n,
          'first_step_seconds': first, 'step_seconds': step_s,
          'tokens_per_second': tokens_per_s,
          'model_flops_per_token': flops.flops_per_token(cfg, seq_len), 'loss': loss}


def mfu(size: Size) -> dict[str, Any]:
  """Training MFU of every `mfu_presets` preset (see the module docstring)."""
  dev = jax.devices()[0]
  measured = flops.measured_matmul_peak(size.matmul_n, 'bfloat16', dev)
  peak = flops.published_peak(dev.device_kind, 'bfloat16')
  out: dict[str, Any] = {'published_peak_flops': peak, 'measured_bf16_matmul_flops': measured,
                         'matmul_n': size.matmul_n}
  for preset, batch in size.mfu_presets:
    r = time_train_step(preset, batch, size.mfu_seq_len, size.mfu_steps)
    achieved = r['tokens_per_second'] * r['model_flops_per_token'] / r['devices']
    r['model_flops_per_second_per_device'] = achieved
    r['mfu'] = achieved / peak if peak else None
    r['fraction_of_measured_matmul'] = achieved / measured
    out.update({f'{preset}/{k}': v for k, v in r.items()})
    print(f'[mfu] {preset}: {r["step_seconds"]:.3f} s/step, {r["tokens_per_second"]:,.0f} '
          f'tokens/s, MFU {r["mfu"] if r["mfu"] is None else format(r["mfu"], ".1%")} '
          f'({r["fraction_of_measured_matmul"]:.1%} of the measured matmul)', flush=True)
  return out


# -- constrained decoding ----------------------------------------------------------------------

def _decode_catalog(size: Size, n: int) -> dict[str, Any]:
  """Every decoding figure for one random catalog of n items."""
  from experiments.benchmarks import decode as bench  # pylint: disable=g-import-not-at-top
  from neo_jax.decode.beam_search import (  # pylint: disable=g-import-not-at-top
      sid_beam_search, vocab_beam_search)
  from neo_jax.decode.cache import left_pad  # pylint: disable=g-import-not-at-top
  from neo_jax.decode.interface import Constraints, prefill  # pylint: disable=g-import-not-at-top
  from neo_jax.decode.trie import (  # pylint: disable=g-import-not-at-top
      SIDTrie, SIDVocabArrays, request_filter)
  from neo_jax.model.config import get_config  # pylint: disable=g-import-not-at-top
  from neo_jax.model.decoder import Decoder  # pylint: disable=g-import-not-at-top
  from neo_jax.tokenizer.sid_vocab import SIDVocab  # pylint: disable=g-import-not-at-top
  beams, history, prompt_len = size.decode_beams, 50, 32
  t0 = time.perf_counter()
  sid_map = bench.random_sid_map(n, 3, 256)
  vocab = SIDVocab(('item',), sid_map.level_sizes, size.decode_text_vocab)
  trie = jax.block_until_ready(SIDTrie.build(sid_map, vocab))
  build_s = time.perf_counter() - t0
  keys = bench.CatalogKeys(sid_map)
  vocab_arrays = SIDVocabArrays.from_vocab(vocab)
  levels = vocab.num_levels
  cfg = get_config(size.decode_preset, vocab_size=vocab.end, dtype='bfloat16',
                   param_dtype='bfloat16')
  graphdef, state = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(1)

  def prompts(b):
    ps = [list(rng.integers(3, size.decode_text_vocab, prompt_len - 1)) + [vocab.sid_open_id]
          for _ in range(b)]
    return tuple(jnp.asarray(x) for x in left_pad(ps, 0))

  def excluded(b):
    hist = rng.integers(0, n, (b, history))
    return hist, request_filter(trie, excluded=hist.tolist(), width=history)

  @jax.jit
  def prompt_fn(state, tokens, positions, valid):
    model = nnx.merge(graphdef, state)
    cache = model.init_cache(tokens.shape[0], tokens.shape[1] + levels)
    return prefill(model, cache, tokens, positions, valid)

  @functools.partial(jax.jit, static_argnames='mode')
  def search_fn(state, cache, pre, trie, request, mode):
    model = nnx.merge(graphdef, state)
    if mode == 'unconstrained':
      return vocab_beam_search(model, cache, pre, beams, levels)
    return sid_beam_search(model, cache, pre, Constraints(trie=trie, vocab=vocab_arrays,
                                                          request=request), beams,
                           score='codes' if mode == 'rows' else 'vocab')

  out: dict[str, Any] = {'num_items': n, 'trie_build_seconds': build_s,
                         'trie_bytes_per_item': trie.nbytes / n, 'beams': beams,
                         'vocab_size': int(cfg.vocab_size)}
  # Batch-1 latency: prompt + constrained search with a history exclusion, per request.
  lat = []
  for i in range(size.decode_latency_requests + 1):
    tokens, positions, valid = prompts(1)
    _, req = excluded(1)
    t0 = time.perf_counter()
    pre, cache = prompt_fn(state, tokens, positions, valid)
    jax.block_until_ready(search_fn(state, cache, pre, trie, req, 'rows'))
    if i:  # the first one compiles
      lat.append(time.perf_counter() - t0)
  out['latency_ms_p50'] = 1e3 * float(np.percentile(lat, 50))
  out['latency_ms_p99'] = 1e3 * float(np.percentile(lat, 99))
  valid_items = checked = 0
  for b in size.decode_batches:
    tokens, positions, valid = prompts(b)
    hist, req = excluded(b)

    def serve(tokens=tokens, positions=positions, valid=valid, req=req):
      pre, cache = prompt_fn(state, tokens, positions, valid)
      return search_fn(state, cache, pre, trie, req, 'rows')

    _, sec = _median_seconds(serve, size.decode_runs)
    out[f'requests_per_s_batch{b}'] = b / sec
    items = np.asarray(serve()[0])
    got = items >= 0
    ok = keys.contains(np.asarray(sid_map.codes)[items[got]])
    ok &= ~np.concatenate([np.isin(r[r >= 0], h) for r, h in zip(items, hist)])
    valid_items, checked = valid_items + int(ok.sum()), checked + int(got.sum())
  # Step times at the first batch size, the prompt's cache computed once beforehand.
  b = size.decode_batches[0]
  pre, cache = jax.block_until_ready(prompt_fn(state, *prompts(b)))
  step_ms = {}
  for mode in ('full', 'unconstrained', 'rows'):
    _, sec = _median_seconds(
        functools.partial(search_fn, state, cache, pre, trie, None, mode), size.decode_runs)
    step_ms[mode] = 1e3 * sec / levels
    out[f'step_ms_{mode}_batch{b}'] = step_ms[mode]
  out['constrained_over_unconstrained_same_head'] = step_ms['full'] / step_ms['unconstrained']
  out['rows_head_over_unconstrained'] = step_ms['rows'] / step_ms['unconstrained']
  out['items_checked'] = checked
  out['valid_fraction'] = valid_items / checked if checked else None
  print(f'[decode] {n:,} items: trie {build_s:.1f}s, p50 {out["latency_ms_p50"]:.1f} ms, '
        + ', '.join(f'{x} req/s at batch {y}' for y, x in
                    ((bb, round(out[f'requests_per_s_batch{bb}'], 1))
                     for bb in size.decode_batches))
        + f', constrained/unconstrained (same head) '
        f'{out["constrained_over_unconstrained_same_head"]:.3f}', flush=True)
  return out


def decode(size: Size) -> dict[str, Any]:
  """Constrained decoding figures per catalog size."""
  out: dict[str, Any] = {'preset': size.decode_preset}
  ok = True
  for n in size.decode_items:
    r = _decode_catalog(size, n)
    ok &= r['valid_fraction'] == 1.0
    out.update({f'{n}/{k}': v for k, v in r.items()})
  out['ok'] = ok
  return out


# -- NEO on MovieLens-100k ---------------------------------------------------------------------

def read_manifest(prepared: str) -> dict[str, Any]:
  """The prepared folder's manifest.json (written by accelerator_prepare), checked."""
  path = os.path.join(prepared, 'manifest.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing: run `python -m experiments.benchmarks.'
                            f'accelerator_prepare --out={prepared}` on the CPU first')
  with open(path) as f:
    manifest = json.load(f)
  for key in ('data_dir', 'embeddings', 'config', 'size'):
    if key not in manifest:
      raise ValueError(f'{path}: no {key!r}; prepare the folder again')
  for key in ('data_dir', 'embeddings'):
    if not os.path.exists(os.path.join(prepared, manifest[key])):
      raise FileNotFoundError(f'{path}: {manifest[key]} is not in {prepared}')
  return manifest


def neo_config(size: Size, prepared: str, manifest: dict[str, Any], steps: int,
               seconds: float):
  """The experiment config of the neo part: the size's config module on the prepared data
  and embeddings, the size's model, `steps` optimizer updates, SASRec and popularity beside
  NEO-multi, SASRec's budget `seconds`."""
  import importlib  # pylint: disable=g-import-not-at-top
  from neo_jax.run import config as config_lib  # pylint: disable=g-import-not-at-top
  if manifest['config'] != size.neo_config:
    raise ValueError(f'{prepared} was prepared for config {manifest["config"]!r} (size '
                     f'{manifest["size"]!r}); --size needs {size.neo_config!r}')
  c = importlib.import_module(f'experiments.configs.{size.neo_config}').get_config()
  c.data.dataset = 'generic'
  c.data.data_dir = os.path.abspath(os.path.join(prepared, manifest['data_dir']))
  c.sid.encoder = 'npy:' + os.path.abspath(os.path.join(prepared, manifest['embeddings']))
  c.model.update(size.neo_model)
  c.train.update(dict(batch_size=size.neo_batch, seq_len=size.neo_seq_len))
  grounding = max(1, int(round(steps * size.neo_grounding_fraction)))
  c.grounding.update(dict(steps=grounding, warmup_steps=max(1, grounding // 10),
                          log_every=max(1, grounding // 5)))
  capability = max(1, steps - grounding)
  c.capability.update(dict(steps=capability, warmup_steps=max(1, capability // 20),
                           log_every=max(1, capability // 10)))
  e = c.experiment
  e.baselines = ('popularity', 'sasrec')
  e.tune_baselines = True
  e.mono_tasks, e.ablations, e.seeds = (), (), 1
  e.neo_valid_requests = size.neo_valid_requests
  e.steer_requests, e.understanding_requests = 0, 0
  c.eval.max_requests = size.neo_max_requests
  sasrec = dict(c.baseline_args.sasrec) if 'sasrec' in c.baseline_args else {}
  sasrec.update(size.sasrec_args, time_budget_s=float(seconds))
  c.baseline_args.sasrec = sasrec
  return config_lib.validate(c)


NEO_KEYS = ('ndcg@10', 'hr@10')


def neo(size: Size, prepared: str, seconds: float) -> dict[str, Any]:
  """NEO-multi from scratch on the prepared data for about `seconds` of training, SASRec
  with the same budget; their validation and test figures."""
  from neo_jax.run import experiment  # pylint: disable=g-import-not-at-top
  if size is SIZES['tiny'] and not os.path.exists(os.path.join(prepared, 'manifest.json')):
    from experiments.benchmarks import accelerator_prepare  # pylint: disable=g-import-not-at-top
    accelerator_prepare.prepare(prepared, 'tiny', wheels=False)
  manifest = read_manifest(prepared)
  m = dict(size.neo_model)
  preset = m.pop('preset')
  # A timed step of the same shape sizes the run (vocabulary: text + SID block of the data).
  probe = time_train_step(preset, size.neo_batch, size.neo_seq_len, 3,
                          dict(m, vocab_size=int(manifest['vocab_size_estimate'])))
  steps = max(4, int(seconds / probe['step_seconds']))
  cfg = neo_config(size, prepared, manifest, steps, seconds)
  print(f'[neo] {probe["step_seconds"] * 1e3:.1f} ms per step of {size.neo_batch} x '
        f'{size.neo_seq_len}: {steps} steps for {seconds:.0f} s', flush=True)
  with tempfile.TemporaryDirectory() as workdir:
    result, _ = experiment.run_experiment(cfg, workdir, log=lambda s: print(f'[neo] {s}',
                                                                            flush=True))
  out: dict[str, Any] = {'dataset': manifest['dataset'], 'steps': steps,
                         'probe_step_seconds': probe['step_seconds'],
                         'params': result.get('neo_multi/num_params'),
                         'train_seconds': result.get('seconds/train_neo_multi'),
                         'budget_seconds': seconds,
                         'test_requests': result.get('requests/recommend')}
  for system in ('neo_multi', 'sasrec', 'popularity'):
    for k in NEO_KEYS:
      out[f'{system}/test/{k}'] = result.get(f'{system}/{k}')
  for k in NEO_KEYS:
    out[f'neo_multi/valid/{k}'] = result.get(f'valid/neo_multi/{k}')
  # SASRec's validation figure is the one it was tuned by (its best grid point, every
  # validation user); the run records NDCG@10 only.
  out['sasrec/valid/ndcg@10'] = result.get('sasrec/fit/valid_ndcg@10')
  for k, v in result.items():
    if k.startswith('sasrec/fit/') and isinstance(v, (int, float)):
      out[k] = v
  out['valid_sid_fraction'] = result.get('valid_sid_fraction')
  return out


# -- the run -----------------------------------------------------------------------------------

def _fmt(v: Any) -> str:
  if isinstance(v, float):
    return 'nan' if v != v else f'{v:.4g}'
  return str(v)


def summary_markdown(size: str, mach: dict[str, Any], result: dict[str, Any],
                     seconds: dict[str, float]) -> str:
  """summary.md: the machine, then per part its status and figures."""
  lines = [f'# Accelerator run, size `{size}`', '',
           f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, `python -m '
           f'experiments.benchmarks.accelerator --size={size}`', '', '| machine | |', '|---|---|']
  lines += [f'| {k} | {v} |' for k, v in mach.items()]
  for part, sec in seconds.items():
    status = 'FAILED: ' + str(result[f'{part}/error']) if f'{part}/error' in result else 'ok'
    lines += ['', f'## {part} ({sec:.0f} s, {status.replace("|", "/")})', '',
              '| figure | value |', '|---|---|']
    prefix = f'{part}/'
    lines += [f'| {k[len(prefix):]} | {_fmt(v)} |' for k, v in result.items()
              if k.startswith(prefix) and k != f'{part}/error']
  return '\n'.join(lines) + '\n'


def _write(out_dir: str, size: str, mach, result, seconds) -> None:
  from neo_jax.run import rundir  # pylint: disable=g-import-not-at-top
  rundir.write_result(out_dir, result)
  with open(os.path.join(out_dir, 'summary.md'), 'w') as f:
    f.write(summary_markdown(size, mach, result, seconds))


def neo_budget(size: Size, requested: float, deadline_s: float, elapsed: float) -> float:
  """NEO's (and SASRec's) training seconds: `requested` (0: the size's), shrunk so that both
  budgets and the part's overhead end by the deadline (0: none), never below 10% of it."""
  seconds = requested or size.neo_seconds
  if deadline_s > 0:
    left = deadline_s - elapsed - size.neo_overhead_s
    seconds = min(seconds, max(0.1 * seconds, left / 2))
  return seconds


def run(size_name: str, out_dir: str, prepared: str, parts: tuple[str, ...],
        neo_seconds: float = 0.0, deadline_s: float = -1.0) -> tuple[dict[str, Any], bool]:
  """Runs `parts`, writing after each; returns (the flat result, whether all passed)."""
  size = SIZES[size_name]
  deadline_s = size.deadline_s if deadline_s < 0 else deadline_s
  os.makedirs(out_dir, exist_ok=True)
  mach = machine()
  result: dict[str, Any] = {'size': size_name, **{f'machine/{k}': v for k, v in mach.items()}}
  seconds: dict[str, float] = {}
  ok = True
  t_all = time.perf_counter()
  for part in parts:
    t0 = time.perf_counter()
    if deadline_s > 0 and t0 - t_all > deadline_s:
      result[f'{part}/error'] = (f'skipped: {t0 - t_all:.0f} s is past the '
                                 f'{deadline_s:.0f} s deadline')
      seconds[part] = 0.0
      ok = False
      continue
    print(f'[{part}] start', flush=True)
    try:
      if part == 'neo':
        figures = neo(size, prepared, neo_budget(size, neo_seconds, deadline_s, t0 - t_all))
      else:
        figures = {'parity': parity, 'mfu': mfu, 'decode': decode}[part](size)
      ok &= figures.get('ok', True)
    except Exception as e:  # pylint: disable=broad-except  (one part's failure is reported)
      traceback.print_exc()
      figures = {'error': f'{type(e).__name__}: {e}'.splitlines()[0][:400]}
      ok = False
    seconds[part] = time.perf_counter() - t0
    figures['seconds'] = seconds[part]
    result.update({f'{part}/{k}': v for k, v in figures.items()})
    result['seconds_total'] = time.perf_counter() - t_all
    _write(out_dir, size_name, mach, result, seconds)
    print(f'[{part}] done in {seconds[part]:.0f}s', flush=True)
  result['ok'] = ok
  _write(out_dir, size_name, mach, result, seconds)
  return result, ok


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  unknown = sorted(set(FLAGS.only) - set(PARTS))
  if unknown:
    raise app.UsageError(f'--only: unknown part(s) {unknown}; known: {PARTS}')
  parts = tuple(p for p in PARTS if not FLAGS.only or p in FLAGS.only)
  prepared = FLAGS.prepared or os.path.join(
      REPO, '.accel' if FLAGS.size == 'full' else f'.accel-{FLAGS.size}')
  result, ok = run(FLAGS.size, os.path.abspath(FLAGS.out), os.path.abspath(prepared),
                   parts, FLAGS.neo_seconds, FLAGS.deadline_s)
  from neo_jax.run import rundir  # pylint: disable=g-import-not-at-top
  print(json.dumps(rundir.json_safe(result), sort_keys=True))
  sys.exit(0 if ok else 1)


if __name__ == '__main__':
  define_flags()
  app.run(main)
