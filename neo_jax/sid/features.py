"""Item text -> fixed-size content embedding, the input of the SID quantiser.

`TextEncoder` is the one protocol every encoder implements (`minilm.MiniLMEncoder` is the
learned one, all-MiniLM-L6-v2). `HashedTfidfEncoder` is a training-free one: TF-IDF over
hashed word unigrams and bigrams, IDF fitted on the catalog, projected to D dims by a fixed
sparse random projection and L2-normalised, so that cosine similarity ~ shared (rare) words.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import time
import zlib
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from neo_jax.catalog import atomic
from neo_jax.catalog.types import Catalog

_WORD_RE = re.compile(r'\w+')


class TextEncoder(Protocol):
  """Maps texts to float32 vectors of a fixed dimension."""

  @property
  def name(self) -> str:
    """Identifies the encoder and its settings (recorded in SID map manifests)."""
    ...

  @property
  def dim(self) -> int:
    ...

  def encode(self, texts: list[str]) -> np.ndarray:
    """(len(texts), dim) float32."""
    ...


def ngrams(text: str) -> list[str]:
  """Lower-cased word unigrams followed by word bigrams (joined by one space)."""
  words = _WORD_RE.findall(text.lower())
  return words + [f'{a} {b}' for a, b in zip(words, words[1:])]


def _buckets(text: str, num_buckets: int) -> np.ndarray:
  """(T,) int64 hash bucket of every n-gram (crc32: stable across processes, unlike hash())."""
  return np.fromiter((zlib.crc32(t.encode('utf-8')) % num_buckets for t in ngrams(text)),
                     np.int64)


class HashedTfidfEncoder:
  """Hashed TF-IDF of word unigrams + bigrams, sparse-random-projected to `dim`, unit norm.

  Build one with `HashedTfidfEncoder.fit(texts, ...)`. A term goes to bucket
  crc32(utf-8 term) mod `num_buckets`. Its weight in a text is (1 + log count) * idf, with
  idf = log((1 + n_docs) / (1 + df)) + 1 and df counted per bucket over the fitted texts.
  Bucket b is projected onto `nnz` output dims drawn with replacement from a generator seeded
  by `seed`, each with sign +-1/sqrt(nnz).
  """

  def __init__(self, idf_B: np.ndarray, num_docs: int, dim: int, nnz: int, seed: int):
    if dim < 1 or nnz < 1:
      raise ValueError(f'dim and nnz must be >= 1, got {dim}, {nnz}')
    idf_B = np.asarray(idf_B, np.float64)
    if idf_B.ndim != 1 or idf_B.size < 1 or not np.all(np.isfinite(idf_B)):
      raise ValueError(f'idf_B must be a non-empty finite vector, got shape {idf_B.shape}')
    self.idf_B = idf_B
    self.df_B: np.ndarray | None = None  # set by fit / from_df (an IDF given directly has none)
    self.num_buckets = int(idf_B.size)
    self.num_docs, self._dim, self.nnz, self.seed = int(num_docs), int(dim), int(nnz), int(seed)
    rng = np.random.default_rng(self.seed)
    self._proj_dims_BxS = rng.integers(0, self._dim, (self.num_buckets, self.nnz), np.int64)
    signs = rng.integers(0, 2, (self.num_buckets, self.nnz)) * 2 - 1
    self._proj_vals_BxS = signs.astype(np.float64) / math.sqrt(self.nnz)

  @classmethod
  def fit(cls, texts: Sequence[str], dim: int = 128, num_buckets: int = 1 << 18, nnz: int = 4,
          seed: int = 0) -> HashedTfidfEncoder:
    """An encoder whose IDF is fitted on `texts` (the catalog's item texts)."""
    if not texts:
      raise ValueError('cannot fit the IDF on zero texts')
    if num_buckets < 1:
      raise ValueError(f'num_buckets must be >= 1, got {num_buckets}')
    df_B = np.zeros(num_buckets, np.int64)
    for text in texts:
      df_B[np.unique(_buckets(text, num_buckets))] += 1
    return cls.from_df(df_B, len(texts), dim, nnz, seed)

  @classmethod
  def from_df(cls, df_B: np.ndarray, num_docs: int, dim: int, nnz: int, seed: int
              ) -> HashedTfidfEncoder:
    """The encoder whose IDF comes from `df_B` (texts per bucket) over `num_docs` texts: the
    same encoder `fit` made, bit for bit, from the document frequencies it counted (what a
    frozen quantiser saves, `sid.quantiser`)."""
    df_B = np.asarray(df_B)
    if df_B.ndim != 1 or not np.issubdtype(df_B.dtype, np.integer) or np.any(df_B < 0):
      raise ValueError(f'df_B must be a 1-D array of counts >= 0, got {df_B.dtype} '
                       f'{df_B.shape}')
    if np.any(df_B > num_docs):
      raise ValueError(f'a bucket occurs in more than the {num_docs} texts')
    df_B = df_B.astype(np.int64)
    idf_B = np.log((1.0 + num_docs) / (1.0 + df_B)) + 1.0
    enc = cls(idf_B, num_docs, dim, nnz, seed)
    enc.df_B = df_B
    return enc

  @property
  def name(self) -> str:
    return (f'hashed_tfidf(dim={self._dim},buckets={self.num_buckets},nnz={self.nnz},'
            f'seed={self.seed},docs={self.num_docs})')

  @property
  def dim(self) -> int:
    return self._dim

  def encode(self, texts: list[str]) -> np.ndarray:
    """(len(texts), dim) float32 unit vectors. Raises if a text has no word characters."""
    n = len(texts)
    if n == 0:
      return np.zeros((0, self._dim), np.float32)
    rows, buckets, weights = [], [], []
    for i, text in enumerate(texts):
      b = _buckets(text, self.num_buckets)
      if b.size == 0:
        raise ValueError(f'text {i} has no word characters to featurise: {text!r}')
      uniq, counts = np.unique(b, return_counts=True)
      rows.append(np.full(uniq.shape, i, np.int64))
      buckets.append(uniq)
      weights.append((1.0 + np.log(counts)) * self.idf_B[uniq])
    rows_T, buckets_T, weights_T = map(np.concatenate, (rows, buckets, weights))
    # Scatter every (text, bucket) weight onto the bucket's nnz output dims in one bincount.
    flat_TxS = rows_T[:, None] * self._dim + self._proj_dims_BxS[buckets_T]
    vals_TxS = weights_T[:, None] * self._proj_vals_BxS[buckets_T]
    out_NxD = np.bincount(flat_TxS.ravel(), weights=vals_TxS.ravel(), minlength=n * self._dim)
    out_NxD = out_NxD.reshape(n, self._dim)
    norms = np.linalg.norm(out_NxD, axis=1)
    if np.any(norms == 0):  # needs exact cancellation of projected terms; never hide it
      bad = int(np.flatnonzero(norms == 0)[0])
      raise ValueError(f'text {bad} projects to the zero vector: {texts[bad]!r}')
    return (out_NxD / norms[:, None]).astype(np.float32)


def catalog_texts(catalog: Catalog) -> list[str]:
  """`Catalog.text(i)` for every row, in row order."""
  return [catalog.text(i) for i in range(len(catalog))]


def embed_catalog(catalog: Catalog, encoder: TextEncoder, batch_size: int = 1024,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
  """Embeds every catalog item's text (`Catalog.text`).

  Args:
    catalog: the items (row order is kept).
    encoder: e.g. `HashedTfidfEncoder.fit(catalog_texts(catalog))`.
    batch_size: texts per `encode` call.
    progress: optional callback(done, total) after each batch.

  Returns:
    (N, encoder.dim) float32, row n = embedding of item n.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  texts = catalog_texts(catalog)
  n, d = len(texts), encoder.dim
  out_NxD = np.empty((n, d), np.float32)
  t0 = time.perf_counter()
  for start in range(0, n, batch_size):
    batch = texts[start:start + batch_size]
    emb = np.asarray(encoder.encode(batch))
    if emb.shape != (len(batch), d):
      raise ValueError(f'encoder {encoder.name} returned shape {emb.shape} for a batch of '
                       f'{len(batch)} texts, expected ({len(batch)}, {d})')
    if not np.all(np.isfinite(emb)):
      raise ValueError(f'encoder {encoder.name} returned non-finite values for items '
                       f'{start}..{start + len(batch) - 1}')
    out_NxD[start:start + len(batch)] = emb
    if progress is not None:
      progress(start + len(batch), n)
  seconds = time.perf_counter() - t0
  logging.info('embedded %d items with %s in %.1fs (%.0f items/s)', n, encoder.name, seconds,
               n / max(seconds, 1e-9))
  return out_NxD


# -- a cache of catalog text embeddings ----------------------------------------------------------
# One folder holds one encoder's embeddings of one catalog's texts: `text_embeddings.npy` (the
# encoder's output, row n = item n) and `text_embeddings.json` (its key: the encoder's name, the
# number of texts and a hash of them). The SID build and the dense baseline share it, so a run
# encodes its catalog with MiniLM once.
TEXT_EMBEDDINGS = 'text_embeddings'


def text_embeddings_key(encoder_name: str, texts: Sequence[str]) -> dict[str, Any]:
  """The key of `texts` encoded by `encoder_name`: another encoder or any changed text (or
  order) gives another key."""
  h = hashlib.sha256()
  for t in texts:
    h.update(t.encode('utf-8'))
    h.update(b'\0')
  return {'encoder': encoder_name, 'num_items': len(texts), 'texts_sha256': h.hexdigest()}


def _cache_paths(directory: str) -> tuple[str, str]:
  return (os.path.join(directory, TEXT_EMBEDDINGS + '.npy'),
          os.path.join(directory, TEXT_EMBEDDINGS + '.json'))


def read_text_embeddings(directory: str, key: dict[str, Any]) -> np.ndarray | None:
  """The cached (N, D) embeddings when `directory` holds `key`'s, else None (also when a
  writer of another run removed the key while this one was reading). Local or remote
  (`catalog.atomic`)."""
  npy, meta = _cache_paths(directory)
  try:
    with atomic.open_text(meta) as f:
      if json.load(f) != key:
        return None
    emb = np.load(atomic.for_reading(npy))
  except FileNotFoundError:
    return None
  return emb if emb.ndim == 2 and emb.shape[0] == key['num_items'] else None


def write_text_embeddings(directory: str, emb: np.ndarray, key: dict[str, Any]) -> None:
  """Writes the embeddings, then their key, each atomically (unique temporaries). The old key
  goes first, so a reader never pairs it with the new embeddings."""
  npy, meta = _cache_paths(directory)
  atomic.as_path(meta).unlink(missing_ok=True)
  buf = io.BytesIO()
  np.save(buf, np.asarray(emb))
  atomic.write_bytes(npy, buf.getvalue())
  atomic.write_json(meta, key)


def load_embeddings(path_npy: str | os.PathLike, catalog: Catalog,
                    dim: int | None = None) -> np.ndarray:
  """Loads user-provided item embeddings from a .npy file, row n = catalog item n.

  Args:
    path_npy: a .npy file holding an (N, D) floating-point array (a local path or a URI,
      `catalog.atomic`).
    catalog: the N items the rows belong to.
    dim: if given, the required D.

  Returns:
    (N, D) float32.
  """
  path = os.fspath(path_npy)
  if not atomic.as_path(path).exists():
    raise FileNotFoundError(f'{path}: embeddings file does not exist')
  try:
    arr = np.load(atomic.for_reading(path), allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise ValueError(f'{path}: not a readable .npy array ({e})') from e
  if not isinstance(arr, np.ndarray):
    raise ValueError(f'{path}: expected a single .npy array, got {type(arr).__name__}')
  if arr.ndim != 2:
    raise ValueError(f'{path}: embeddings must be 2-D (N, D), got shape {arr.shape}')
  if arr.shape[0] != len(catalog):
    raise ValueError(f'{path}: {arr.shape[0]} rows but the catalog has {len(catalog)} items')
  if arr.shape[1] < 1:
    raise ValueError(f'{path}: embeddings have D=0')
  if dim is not None and arr.shape[1] != dim:
    raise ValueError(f'{path}: embeddings have D={arr.shape[1]}, expected {dim}')
  if not np.issubdtype(arr.dtype, np.floating):
    raise ValueError(f'{path}: embeddings must be floating point, got dtype {arr.dtype}')
  finite = np.isfinite(arr)
  if not np.all(finite):
    bad_rows = np.flatnonzero(~finite.all(axis=1))
    raise ValueError(f'{path}: {bad_rows.size} rows have non-finite values, first at row '
                     f'{int(bad_rows[0])} (item {catalog.ids[int(bad_rows[0])]!r})')
  return np.ascontiguousarray(arr, dtype=np.float32)
