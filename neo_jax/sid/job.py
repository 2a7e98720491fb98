"""One SID build as a job: embed the catalog, quantise, save the map, report its quality.

`experiments/build_sids.py` is the command-line front; the pipeline may call the same pieces.

In a multi-process JAX job every process builds the same map in memory (the same items,
embeddings and seed; a sharded k-means shards over the process's own devices) and process 0
alone writes it (`catalog/multihost.py`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Mapping

import jax
import numpy as np

from neo_jax.catalog import atomic
from neo_jax.catalog import multihost
from neo_jax.catalog import progress as progress_lib
from neo_jax.catalog.types import Catalog
from neo_jax.sid import builder
from neo_jax.sid import collaborative
from neo_jax.sid import features
from neo_jax.sid import quality
from neo_jax.sid import quantiser
from neo_jax.sid.types import SIDMap

ENCODERS = ('minilm', 'tfidf', 'cf', 'npy:<path>')


def _embed_one(catalog: Catalog, encoder: str, *, tfidf_dim: int, seed: int, batch_size: int,
               progress: bool, sequences, cf_dim: int, cf_window: int,
               cache_dir: str | None = None) -> tuple[np.ndarray, str]:
  if encoder.startswith('npy:'):
    path = encoder[len('npy:'):]
    if not path:
      raise ValueError("encoder 'npy:<path>' needs a path after 'npy:'")
    return features.load_embeddings(path, catalog), f'npy({atomic.location(path)})'
  if encoder == 'cf':
    if sequences is None:
      raise ValueError("encoder 'cf' needs the training sequences (sequences=...): it is "
                       'fitted on interactions, not on item text')
    emb, facts = collaborative.cooccurrence_embeddings(
        list(sequences), len(catalog), dim=cf_dim, window=cf_window)
    logging.info('cf embeddings: %s', facts)
    return emb, f'cf(ppmi-svd,dim={facts["dim"]},window={cf_window})'
  if encoder == 'tfidf':
    enc = features.HashedTfidfEncoder.fit(features.catalog_texts(catalog), dim=tfidf_dim,
                                          seed=seed)
  elif encoder == 'minilm':
    from neo_jax.sid import minilm  # local: loads 90 MB of weights only when asked
    # One progress line over the whole catalog (the encoder's own would restart at every
    # chunk of 4096 texts).
    enc = minilm.MiniLMEncoder(batch_size=batch_size, progress=False)
    key = features.text_embeddings_key(enc.name, features.catalog_texts(catalog))
    cached = features.read_text_embeddings(cache_dir, key) if cache_dir else None
    if cached is not None:
      logging.info('minilm: %d cached embeddings from %s', len(catalog), cache_dir)
      return np.asarray(cached, np.float32), enc.name
    meter = progress_lib.Progress('minilm', len(catalog), unit='texts',
                                  on=None if progress else False)
    emb = features.embed_catalog(catalog, enc, batch_size=4096,
                                 progress=lambda done, _: meter.update(done - meter.done))
    meter.close()
    if cache_dir and multihost.is_writer():
      features.write_text_embeddings(cache_dir, emb, key)
    return emb, enc.name
  else:
    raise ValueError(f'unknown encoder {encoder!r}; known: {ENCODERS} or parts of them joined '
                     "by '+'")
  return features.embed_catalog(catalog, enc, batch_size=4096), enc.name


def _unit_rows(x: np.ndarray) -> np.ndarray:
  norm = np.linalg.norm(x, axis=1, keepdims=True)
  return np.where(norm > 0, x / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


def embed(catalog: Catalog, encoder: str, *, tfidf_dim: int = 128, seed: int = 0,
          batch_size: int = 64, progress: bool = True, sequences=None, cf_dim: int = 64,
          cf_window: int = 3, cache_dir: str | None = None) -> tuple[np.ndarray, str]:
  """(N, D) float32 item embeddings and the encoder's name.

  Args:
    catalog: the items; their text is `Catalog.text`.
    encoder: 'minilm' (all-MiniLM-L6-v2, 384 dims), 'tfidf' (hashed TF-IDF fitted on the
      catalog, `tfidf_dim` dims), 'cf' (collaborative: PPMI-SVD of co-occurrence in
      `sequences`, `cf_dim` dims; `neo_jax/sid/collaborative.py`) or 'npy:<path>' (the user's
      own (N, D) array, row n = item n); or several joined by '+' (e.g. 'minilm+cf'): each
      part's rows scaled to unit norm, then concatenated, so every part weighs the same. 'cf'
      alone is unit-normalised too.
    tfidf_dim, seed: hashed TF-IDF settings.
    batch_size: MiniLM texts per forward pass.
    progress: MiniLM progress line on stderr.
    sequences: per-user (T,) catalog rows, oldest first (the training split only: whatever
      is passed here shapes the SIDs); needed by 'cf'.
    cf_dim, cf_window: the collaborative embedding's size and co-occurrence window.
    cache_dir: where the MiniLM part is cached (`features.read_text_embeddings`: read when it
      holds these texts' embeddings, else written); the dense baseline reads the same cache.
  """
  parts = encoder.split('+') if not encoder.startswith('npy:') else [encoder]
  if any(not p for p in parts):
    raise ValueError(f'empty part in encoder {encoder!r}')
  if len(set(parts)) != len(parts):
    raise ValueError(f'encoder {encoder!r} names a part twice')
  kwargs = dict(tfidf_dim=tfidf_dim, seed=seed, batch_size=batch_size, progress=progress,
                sequences=sequences, cf_dim=cf_dim, cf_window=cf_window, cache_dir=cache_dir)
  if len(parts) == 1:
    emb, name = _embed_one(catalog, parts[0], **kwargs)
    return (_unit_rows(emb), name) if parts[0] == 'cf' else (emb, name)
  embs, names = [], []
  for p in parts:
    emb, name = _embed_one(catalog, p, **kwargs)
    embs.append(_unit_rows(np.asarray(emb, np.float32)))
    names.append(name)
  return np.concatenate(embs, axis=1), '+'.join(names)


def build_and_save(catalog: Catalog, emb_NxD: np.ndarray, out_dir: str, *,
                   levels: int | Mapping[str, int], k: builder.KSpec, collision: str,
                   iters: int, popularity: np.ndarray | None, encoder_name: str,
                   method: str = 'rkmeans', tol: float = 0.0, batch_size: int = 0,
                   minibatch: bool = False, shard: bool = True, seed: int = 0,
                   plot: bool = True) -> tuple[SIDMap, dict[str, Any]]:
  """Builds the SID map and writes under `out_dir`: `sid_map/` (map + manifest, and for
  'rkmeans' the frozen quantiser that places new items, `sid.quantiser`), `report.json`
  (build + quality figures), `quality.png` (if `plot`).

  Args:
    levels, k, collision, iters, method, tol, minibatch, popularity, encoder_name, seed: as in
      `builder.build_sid_map` (k and a per-type levels as plain dicts, not ConfigDicts).
    batch_size: items per k-means batch; 0 runs one in-memory Lloyd per level.
    shard: shard the items over every local device when there are several (in a
      multi-process job: this process's devices, each process building the same map).

  Returns:
    (sid_map, report): the builder's figures and `quality.quality_report`'s, merged, plus
    seconds_build and seconds_quality.
  """
  t0 = time.perf_counter()
  mesh = None
  if shard and jax.local_device_count() > 1:
    from neo_jax.sid import stream_kmeans  # local: only for multi-device builds
    # This process's devices: the k-means reads its centroids back to the host, which a
    # mesh spanning other processes' devices would not allow; every process builds the same
    # map on its own devices.
    mesh = stream_kmeans.data_mesh(jax.local_devices())
  sid_map, report = builder.build_sid_map(
      catalog, emb_NxD, levels=levels, k=k, collision=collision, popularity=popularity,
      seed=seed, iters=iters, encoder_name=encoder_name, method=method, tol=tol,
      batch_size=int(batch_size) or None, minibatch=bool(minibatch), mesh=mesh)
  build_s = time.perf_counter() - t0
  q = quality.quality_report(sid_map, emb_NxD)
  for key, value in q.items():
    # The builder's utilisation_l{l} of the k-means levels are the same numbers; the quality
    # report adds the levels the builder appended (disambiguation, fillers).
    report.setdefault(key, value)
  frozen = None
  if sid_map.codebooks is not None:
    frozen = quantiser.freeze(catalog, emb_NxD, encoder_name, sid_map)
    report['quantiser/reproduced_items'] = frozen.reproduced_items
  writer = multihost.is_writer()
  if writer:
    _save_map(sid_map, frozen, os.path.join(out_dir, 'sid_map'))
  if plot and writer:
    title = (f'{sid_map.meta.get("method")} SIDs, {encoder_name}, collision rate '
             f'{report["collision_rate"]:.4f}')
    quality.plot_report(q, sid_map, os.path.join(out_dir, 'quality.png'), title)
  report['seconds_build'] = build_s
  report['seconds_quality'] = time.perf_counter() - t0 - build_s
  if writer:
    # Unique temporary name, renamed into place (json.dump's text, as before).
    atomic.write_text(os.path.join(out_dir, 'report.json'),
                      json.dumps(report, indent=1, sort_keys=True))
    logging.info('SID map written to %s', out_dir)
  print(f'sids: {sid_map.num_levels} levels, sizes {sid_map.level_sizes}, collision rate '
        f'{report["collision_rate"]:.4f}, unreachable {report["unreachable_items"]}',
        file=sys.stderr)
  return sid_map, report


def _save_map(sid_map: SIDMap, frozen: quantiser.FrozenQuantiser | None,
              directory: str) -> None:
  """Writes the SID map folder (map, manifest and the quantiser when there is one) as a
  whole: built in a temporary folder beside it, then renamed over the old one, so that a
  reader never sees the new map beside an old quantiser or half a folder."""
  with atomic.atomic_directory(directory, overwrite=True) as tmp:
    builder.save_sid_map(sid_map, tmp)
    if frozen is not None:
      quantiser.save_quantiser(frozen, tmp)


__all__ = ['ENCODERS', 'build_and_save', 'embed']
