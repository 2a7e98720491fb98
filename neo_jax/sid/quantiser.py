"""The frozen quantiser: the encoder state and the codebooks that made an SID map, saved with
it, so that a new item gets an SID from its text without rebuilding the map or retraining.

What is frozen (`freeze`), per part of the encoder (`sid.encoder`, parts joined by '+'):

  tfidf   the hashed TF-IDF's document frequency per bucket (sparse), the number of texts, its
          dim, buckets, nnz and seed: the build's IDF bit for bit (`HashedTfidfEncoder.from_df`);
          `freeze` re-encodes the catalog and checks it gets the build's vectors back.
  minilm  its name: the weights are those of the installed package (all-MiniLM-L6-v2).
  cf      the items' collaborative vectors (the 'cf' columns of the build's embeddings). A new
          item has no interactions: its collaborative vector is the similarity-weighted mean
          of those of its NEIGHBOURS nearest items of the same type by text (cosine over the
          text parts of the embedding; over a hashed TF-IDF of the build's catalog, frozen too,
          when 'cf' is the only part), among the items that have one (a non-zero row), weights
          the positive similarities, scaled to unit norm as every item's part is. With no
          neighbour of positive similarity it is zero, as for a build item that co-occurs with
          nothing.
  npy     the user's own vectors: a new item needs its own (`embeddings=` of `assign_sids`).

and, per entity type, the residual k-means codebooks of each of its k-means levels.

`assign_sids` embeds new items the same way, assigns each level to its nearest centroid
(`kmeans.assign_residual`, the build's own arithmetic: the build's items get their own codes
back, which `freeze` checks and records as `reproduced_items`), and picks the disambiguation
code: the smallest code of the last level that no item with the same k-means codes holds.
Items withdrawn from a catalog keep their codes (the model learnt a code for the item that
first held it, so it is never given to another). The disambiguation level is as large as the
build's largest group, so a new item can find its cell full: it then goes to the nearest
neighbour cell (the next-nearest centroid of its type's last k-means level, same codes above)
that has a free code, and the facts count it (`neighbour_cells`). With collision='popular'
(no disambiguation level) a cell holds one item, and the same rule applies. Only when every
cell under the item's prefix is full does `SIDSpaceError` name the item and what to rebuild.

On disk: `quantiser.npz` and `quantiser.json` in the SID map's directory (next to
`sid_map.npz`), each written atomically; the manifest records the checksum of the codes of
the map it froze, which `load_quantiser` checks against the map's first rows (a map grown by
`extend_sid_map` keeps them), and the checksum of its arrays.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import zipfile
from typing import Any, Sequence

import numpy as np

from neo_jax.catalog import atomic
from neo_jax.catalog.types import Catalog
from neo_jax.sid import builder
from neo_jax.sid import kmeans
from neo_jax.sid.features import HashedTfidfEncoder, catalog_texts
from neo_jax.sid.types import SIDMap

FORMAT = 'neo_jax.sid_quantiser'
FORMAT_VERSION = 1
NPZ_NAME = 'quantiser.npz'
MANIFEST_NAME = 'quantiser.json'
NEIGHBOURS = 10
MINILM_DIM = 384  # all-MiniLM-L6-v2's hidden size (minilm.BertConfig.hidden)
# The TF-IDF that finds text neighbours when 'cf' is the only part (the encoder defaults).
NEIGHBOUR_TFIDF = {'dim': 128, 'buckets': 1 << 18, 'nnz': 4, 'seed': 0}

_PART_RES = {
    'tfidf': re.compile(r'hashed_tfidf\(dim=(\d+),buckets=(\d+),nnz=(\d+),seed=(-?\d+),'
                        r'docs=(\d+)\)'),
    'minilm': re.compile(r'all-MiniLM-L6-v2\(.*\)'),
    'cf': re.compile(r'cf\(ppmi-svd,dim=(\d+),window=(\d+)\)'),
}


class SIDSpaceError(ValueError):
  """A new item cannot get an SID without rebuilding the map (the message says what)."""


@dataclasses.dataclass(frozen=True)
class EncoderPart:
  """One part of the build's encoder: its kind ('tfidf', 'minilm', 'cf', 'npy'), its name
  as the build recorded it, its columns [start, stop) in the embedding, and its settings."""
  kind: str
  name: str
  start: int
  stop: int
  params: dict[str, int] = dataclasses.field(default_factory=dict)


def parse_encoder(encoder_name: str, dim: int) -> tuple[EncoderPart, ...]:
  """The parts of an encoder name written by `sid.job.embed` for `dim`-column embeddings.

  Raises ValueError for a name `job.embed` does not write or widths that do not add up."""
  if encoder_name.startswith('npy(') and encoder_name.endswith(')'):
    return (EncoderPart('npy', encoder_name, 0, dim),)
  kinds, names, params = [], encoder_name.split('+'), []
  for name in names:
    for kind, pattern in _PART_RES.items():
      m = pattern.fullmatch(name)
      if m:
        kinds.append(kind)
        if kind == 'tfidf':
          keys = ('dim', 'buckets', 'nnz', 'seed', 'docs')
          params.append({k: int(v) for k, v in zip(keys, m.groups())})
        elif kind == 'cf':
          params.append({'dim': int(m.group(1)), 'window': int(m.group(2))})
        else:
          params.append({'dim': MINILM_DIM})
        break
    else:
      raise ValueError(f'encoder part {name!r} of {encoder_name!r} is not one sid.job.embed '
                       'writes; a new item cannot be embedded the way the build was')
  if len(set(kinds)) != len(kinds):
    raise ValueError(f'encoder {encoder_name!r} names a part twice')
  # The collaborative part's width is what the others leave (its name records the SVD rank,
  # which a small catalog clamps, while its columns keep the requested size).
  known = sum(p['dim'] for k, p in zip(kinds, params) if k != 'cf')
  widths = [p['dim'] if k != 'cf' else dim - known for k, p in zip(kinds, params)]
  if 'cf' not in kinds and known != dim or any(w < 1 for w in widths):
    raise ValueError(f'encoder {encoder_name!r}: parts of widths {widths} do not make the '
                     f'{dim} columns of the embeddings')
  parts, start = [], 0
  for kind, name, width, p in zip(kinds, names, widths, params):
    parts.append(EncoderPart(kind, name, start, start + width, p))
    start += width
  return tuple(parts)


def _unit_rows(x: np.ndarray) -> np.ndarray:
  """Rows scaled to unit norm, zero rows left zero (as `sid.job.embed` scales its parts)."""
  norm = np.linalg.norm(x, axis=1, keepdims=True)
  return np.where(norm > 0, x / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


def _sparse_df(enc: HashedTfidfEncoder) -> tuple[np.ndarray, np.ndarray]:
  buckets = np.flatnonzero(enc.df_B).astype(np.int64)
  return buckets, enc.df_B[buckets].astype(np.int64)


def _dense_df(buckets: np.ndarray, counts: np.ndarray, num_buckets: int) -> np.ndarray:
  df = np.zeros(num_buckets, np.int64)
  df[np.asarray(buckets, np.int64)] = counts
  return df


@dataclasses.dataclass
class FrozenQuantiser:
  """What places a new item (module docstring).

  Attributes:
    encoder_name: the build's encoder.
    parts: its parts, in column order.
    type_names: the map's entity types.
    kmeans_levels: k-means levels of every type (shallower types have size-1 fillers).
    codebooks: per type, one (K_l, D) float32 array per k-means level of the type.
    item_emb_NxD: (N, D) float32, the build's embeddings (collaborative vectors, neighbours).
    type_index: (N,) int32 type of each build item.
    arrays: the frozen encoder state: 'tfidf_buckets'/'tfidf_counts' (the text TF-IDF's
      document frequencies), 'nb_buckets'/'nb_counts'/'nb_emb' (the neighbour TF-IDF of a
      'cf'-only encoder and the build items' vectors in it).
    map_codes_sha256: checksum of the codes of the map it froze (its first N rows).
    reproduced_items: build items whose k-means codes the frozen quantiser gives back.
  """
  encoder_name: str
  parts: tuple[EncoderPart, ...]
  type_names: tuple[str, ...]
  kmeans_levels: int
  codebooks: dict[str, tuple[np.ndarray, ...]]
  item_emb_NxD: np.ndarray
  type_index: np.ndarray
  arrays: dict[str, np.ndarray]
  map_codes_sha256: str
  reproduced_items: int
  _encoders: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

  @property
  def num_items(self) -> int:
    return int(self.item_emb_NxD.shape[0])

  @property
  def unit_parts(self) -> bool:
    """Whether each part was scaled to unit rows (several parts, or 'cf' alone)."""
    return len(self.parts) > 1 or self.parts[0].kind == 'cf'

  def part(self, kind: str) -> EncoderPart | None:
    return next((p for p in self.parts if p.kind == kind), None)

  # -- encoders ----------------------------------------------------------------------------

  def _tfidf(self, key: str) -> HashedTfidfEncoder:
    if key not in self._encoders:
      if key == 'tfidf':
        p = self.part('tfidf').params
      else:
        p = dict(NEIGHBOUR_TFIDF, docs=self.num_items)
      df = _dense_df(self.arrays[f'{key}_buckets'], self.arrays[f'{key}_counts'], p['buckets'])
      self._encoders[key] = HashedTfidfEncoder.from_df(df, p['docs'], p['dim'], p['nnz'],
                                                       p['seed'])
    return self._encoders[key]

  def _minilm(self):
    if 'minilm' not in self._encoders:
      from neo_jax.sid import minilm  # local: loads 90 MB of weights only when asked
      enc = minilm.MiniLMEncoder()
      if enc.name != self.part('minilm').name:
        raise ValueError(f'the installed MiniLM is {enc.name}, the map was built with '
                         f'{self.part("minilm").name}')
      self._encoders['minilm'] = enc
    return self._encoders['minilm']

  def _text_parts(self, texts: list[str]) -> dict[str, np.ndarray]:
    out = {}
    for p in self.parts:
      if p.kind == 'tfidf':
        out['tfidf'] = self._tfidf('tfidf').encode(texts)
      elif p.kind == 'minilm':
        out['minilm'] = self._minilm().encode(texts)
    if self.unit_parts:
      out = {k: _unit_rows(v) for k, v in out.items()}
    return out

  # -- the collaborative part of an item without interactions ------------------------------

  def _neighbour_space(self, text_parts: dict[str, np.ndarray], texts: list[str]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(build items (N, E), new items (M, E)) in the space neighbours are found in."""
    text = [p for p in self.parts if p.kind in ('tfidf', 'minilm')]
    if text:
      build = np.concatenate([self.item_emb_NxD[:, p.start:p.stop] for p in text], axis=1)
      new = np.concatenate([text_parts[p.kind] for p in text], axis=1)
      return build, new
    return self.arrays['nb_emb'], self._tfidf('nb').encode(texts)

  def impute_cf(self, texts: list[str], types: np.ndarray,
                text_parts: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """(M, cf width) collaborative vectors of items with no interactions (module docstring)."""
    cf = self.part('cf')
    if text_parts is None:
      text_parts = self._text_parts(texts)
    build, new = self._neighbour_space(text_parts, texts)
    cf_NxC = self.item_emb_NxD[:, cf.start:cf.stop]
    has_cf = np.any(cf_NxC != 0, axis=1)
    out = np.zeros((len(texts), cf.stop - cf.start), np.float32)
    for i, t in enumerate(types):
      cands = np.flatnonzero((self.type_index == t) & has_cf)
      if cands.size == 0:
        continue
      sims = build[cands] @ new[i]
      top = np.argsort(-sims, kind='stable')[:NEIGHBOURS]
      w = np.maximum(sims[top], 0.0).astype(np.float64)
      if w.sum() > 0:
        out[i] = (w @ cf_NxC[cands[top]].astype(np.float64)) / w.sum()
    return _unit_rows(out)

  # -- embedding and quantising ------------------------------------------------------------

  def embed(self, texts: Sequence[str], types: np.ndarray) -> np.ndarray:
    """(M, D) float32 embeddings of new items (no interactions) from their texts, the way
    the build embedded its items. Raises ValueError for an 'npy' encoder (the user's own
    vectors: pass them to `assign_sids(embeddings=)`)."""
    texts = list(texts)
    if self.part('npy') is not None:
      raise ValueError(f'the map was built from the user\'s own embeddings ({self.encoder_name}):'
                       " new items need theirs (assign_sids(embeddings=), or add_items "
                       '--embeddings=new.npy, one row per new item)')
    text_parts = self._text_parts(texts)
    cols = []
    for p in self.parts:
      if p.kind == 'cf':
        cols.append(self.impute_cf(texts, np.asarray(types), text_parts))
      else:
        cols.append(text_parts[p.kind])
    return np.concatenate(cols, axis=1).astype(np.float32)

  def kmeans_codes(self, emb_MxD: np.ndarray, types: np.ndarray) -> np.ndarray:
    """(M, kmeans_levels) int32 k-means codes of embeddings of items of types `types`."""
    emb = np.asarray(emb_MxD, np.float32)
    types = np.asarray(types, np.int64)
    if emb.ndim != 2 or emb.shape != (types.size, self.item_emb_NxD.shape[1]):
      raise ValueError(f'embeddings must be ({types.size}, {self.item_emb_NxD.shape[1]}), got '
                       f'{emb.shape}')
    out = np.zeros((types.size, self.kmeans_levels), np.int32)
    for ti, t in enumerate(self.type_names):
      rows = np.flatnonzero(types == ti)
      if rows.size:
        cbs = list(self.codebooks[t])
        out[rows, :len(cbs)] = kmeans.assign_residual(emb[rows], cbs)
    return out

  def candidate_codes(self, emb_MxD: np.ndarray, types: np.ndarray) -> list[np.ndarray]:
    """Per item, (C, kmeans_levels) int32 k-means codes in order of preference: its own
    (`kmeans_codes`) first, then the same codes with the type's last k-means level set to
    each other centroid of that level, nearest to the item's residual first (its neighbour
    cells, where it goes when its own cell has no free SID left)."""
    own = self.kmeans_codes(emb_MxD, types)
    emb = np.asarray(emb_MxD, np.float32)
    out = []
    for i, t in enumerate(np.asarray(types, np.int64)):
      cbs = self.codebooks[self.type_names[int(t)]]
      last = len(cbs) - 1
      residual = emb[i] - sum((cbs[l][own[i, l]] for l in range(last)), np.zeros_like(emb[i]))
      d2 = np.sum(np.square(cbs[last] - residual[None, :]), axis=1)
      order = [int(own[i, last])] + [int(c) for c in np.argsort(d2, kind='stable')
                                     if c != own[i, last]]
      cand = np.repeat(own[i][None, :], len(order), axis=0)
      cand[:, last] = order
      out.append(cand)
    return out


# -- freezing ----------------------------------------------------------------------------------

def _freeze_tfidf(part: EncoderPart, catalog: Catalog, emb_NxD: np.ndarray, unit: bool
                  ) -> dict[str, np.ndarray]:
  """The text TF-IDF's document frequencies, refitted on the catalog and checked to give the
  build's vectors back."""
  p = part.params
  texts = catalog_texts(catalog)
  if p['docs'] != len(texts):
    raise ValueError(f'{part.name} was fitted on {p["docs"]} texts, the catalog has '
                     f'{len(texts)}: not the catalog the map was built from')
  enc = HashedTfidfEncoder.fit(texts, dim=p['dim'], num_buckets=p['buckets'], nnz=p['nnz'],
                               seed=p['seed'])
  again = enc.encode(texts)
  if unit:
    again = _unit_rows(again)
  if not np.array_equal(again, emb_NxD[:, part.start:part.stop]):
    raise ValueError(f'{part.name} refitted on the catalog does not give the embeddings back: '
                     'they were not embedded from this catalog')
  buckets, counts = _sparse_df(enc)
  return {'tfidf_buckets': buckets, 'tfidf_counts': counts}


def _freeze_neighbours(catalog: Catalog) -> dict[str, np.ndarray]:
  """A hashed TF-IDF of the catalog to find text neighbours in ('cf' is the only part)."""
  texts = catalog_texts(catalog)
  p = NEIGHBOUR_TFIDF
  enc = HashedTfidfEncoder.fit(texts, dim=p['dim'], num_buckets=p['buckets'], nnz=p['nnz'],
                               seed=p['seed'])
  buckets, counts = _sparse_df(enc)
  return {'nb_buckets': buckets, 'nb_counts': counts, 'nb_emb': enc.encode(texts)}


def freeze(catalog: Catalog, emb_NxD: np.ndarray, encoder_name: str, sid_map: SIDMap
           ) -> FrozenQuantiser:
  """The frozen quantiser of a map just built (`builder.build_sid_map`, method 'rkmeans')
  from `emb_NxD`, the embeddings `sid.job.embed` made of `catalog` under `encoder_name`.

  Checks that it reproduces the build: the TF-IDF part's vectors exactly, and the k-means
  codes of every reachable item (counted as `reproduced_items`; a streamed build may lose a
  few near-ties, logged).

  Raises ValueError when the map has no codebooks (the 'random' / 'atomic' ablations: their
  codes come from no quantiser), or the encoder, catalog and embeddings disagree."""
  if sid_map.codebooks is None:
    raise ValueError(f'the SID map (method {sid_map.meta.get("method")!r}) carries no '
                     "codebooks: only a freshly built 'rkmeans' map can be frozen")
  emb = np.asarray(emb_NxD, np.float32)
  n = len(catalog)
  if emb.shape[0] != n or len(sid_map) != n:
    raise ValueError(f'{emb.shape[0]} embeddings and {len(sid_map)} SIDs for {n} items')
  parts = parse_encoder(encoder_name, int(emb.shape[1]))
  unit = len(parts) > 1 or parts[0].kind == 'cf'
  arrays: dict[str, np.ndarray] = {}
  for part in parts:
    if part.kind == 'tfidf':
      arrays.update(_freeze_tfidf(part, catalog, emb, unit))
  if any(p.kind == 'cf' for p in parts) and not any(p.kind in ('tfidf', 'minilm')
                                                    for p in parts):
    arrays.update(_freeze_neighbours(catalog))
  kmeans_levels = int(sid_map.meta['kmeans_levels'])
  q = FrozenQuantiser(
      encoder_name=encoder_name, parts=parts, type_names=tuple(sid_map.type_names),
      kmeans_levels=kmeans_levels,
      codebooks={t: tuple(np.asarray(c, np.float32) for c in cbs)
                 for t, cbs in sid_map.codebooks.items()},
      item_emb_NxD=emb, type_index=np.asarray(sid_map.type_index, np.int32),
      arrays=arrays, map_codes_sha256=builder.array_sha256(np.asarray(sid_map.codes, np.int32)),
      reproduced_items=0)
  reach = sid_map.reachable()
  again = q.kmeans_codes(emb[reach], q.type_index[reach])
  same = np.all(again == sid_map.codes[reach, :kmeans_levels], axis=1)
  q.reproduced_items = int(same.sum())
  if not same.all():
    logging.warning('frozen quantiser: %d of %d items get other k-means codes back (near '
                    'ties of a streamed build)', int((~same).sum()), int(reach.sum()))
  return q


# -- assigning SIDs ----------------------------------------------------------------------------

def _row_keys(a: np.ndarray) -> np.ndarray:
  """One hashable void scalar per row of an int array (for np.isin over rows)."""
  a = np.ascontiguousarray(np.asarray(a, np.int64))
  return a.view(np.dtype((np.void, a.dtype.itemsize * a.shape[1]))).ravel()


def _type_indices(sid_map: SIDMap, types: Sequence[str]) -> np.ndarray:
  out = np.empty(len(types), np.int64)
  for i, t in enumerate(types):
    if t not in sid_map.type_names:
      raise SIDSpaceError(f'new item {i}: entity type {t!r} is not one of the map\'s '
                          f'{tuple(sid_map.type_names)}; a new type needs its own SID '
                          'vocabulary: rebuild the SIDs and retrain')
    out[i] = sid_map.type_names.index(t)
  return out


def _held_last_codes(sid_map: SIDMap, candidates: list[np.ndarray], kl: int
                     ) -> dict[bytes, set[int]]:
  """For every (type, k-means codes) among the candidates, the codes of level `kl` (the
  disambiguation level; all of them with collision='popular', where it does not exist: the
  whole SID is the key then) held by an item of the map."""
  codes = np.asarray(sid_map.codes)
  held = codes[:, 0] >= 0
  keys_all = _row_keys(np.c_[sid_map.type_index[held], codes[held, :kl]])
  wanted = np.concatenate([_row_keys(np.c_[np.full(len(c), t), c])
                           for t, c in candidates]) if candidates else keys_all[:0]
  last = codes[held, kl] if kl < codes.shape[1] else np.zeros(int(held.sum()), np.int64)
  used: dict[bytes, set[int]] = {}
  for r in np.flatnonzero(np.isin(keys_all, wanted)):
    used.setdefault(keys_all[r].tobytes(), set()).add(int(last[r]))
  return used


def _place(sid_map: SIDMap, candidates: list[np.ndarray], types: np.ndarray,
           ids: Sequence[str], kl: int) -> tuple[np.ndarray, int]:
  """The SID of each new item: in its first candidate cell with a free code (module
  docstring), the smallest free disambiguation code there. Returns ((M, L) codes, how many
  items went to a neighbour cell)."""
  used = _held_last_codes(sid_map, [(int(t), c) for t, c in zip(types, candidates)], kl)
  disambiguate = sid_map.num_levels == kl + 1
  out = np.empty((types.size, sid_map.num_levels), np.int32)
  moved = 0
  for i, cands in enumerate(candidates):
    t = sid_map.type_names[int(types[i])]
    size = int(sid_map.level_sizes[t][kl]) if disambiguate else 1
    for j, cand in enumerate(cands):
      key = _row_keys(np.r_[types[i], cand][None, :])[0].tobytes()
      taken = used.setdefault(key, set())
      code = next((c for c in range(size) if c not in taken), None)
      if code is not None:
        taken.add(code)
        out[i, :kl] = cand
        if disambiguate:
          out[i, kl] = code
        moved += j > 0
        break
    else:
      raise SIDSpaceError(
          f'new item {ids[i]!r} ({t}): every SID under its k-means prefix '
          f'{cands[0][:-1].tolist() if kl > 1 else []} is taken (its own cell '
          f'{cands[0].tolist()} and the {len(cands) - 1} neighbour cells of its last k-means '
          f'level' + (f', each with a disambiguation level of {size} codes' if disambiguate
                      else ", and the map (collision='popular') has no disambiguation level")
          + '): rebuild the SID map with more codes or levels (sid.k, sid.levels'
          + ('' if disambiguate else ', sid.collision=disambiguate')
          + '; experiments.build_sids) and retrain')
  return out, moved


def assign_sids(sid_map: SIDMap, quantiser: FrozenQuantiser, *, ids: Sequence[str],
                texts: Sequence[str], types: Sequence[str], embeddings: np.ndarray | None = None
                ) -> tuple[np.ndarray, dict[str, int]]:
  """SIDs for new items, from their text and the frozen quantiser (module docstring).

  Args:
    sid_map: the map the items join (the build's, or one grown by `extend_sid_map`): its
      held SIDs are what a new one must differ from.
    quantiser: the map's `FrozenQuantiser` (`load_quantiser`).
    ids, texts, types: per new item its id (for messages), its text (`Catalog.text`) and its
      entity type name.
    embeddings: (M, D) the items' own vectors, for a map built from 'npy:' embeddings only.

  Returns:
    ((M, L) int32 codes, facts: items, joined_groups (new items whose k-means codes an item
    has already), new_groups).

  Raises:
    SIDSpaceError: an unknown type, an exhausted disambiguation level, a taken SID under
      collision='popular' (each naming the item and what to rebuild).
  """
  m = len(texts)
  if len(ids) != m or len(types) != m:
    raise ValueError(f'{len(ids)} ids, {m} texts and {len(types)} types for the new items')
  if tuple(quantiser.type_names) != tuple(sid_map.type_names):
    raise ValueError(f'quantiser types {quantiser.type_names} != map types '
                     f'{sid_map.type_names}')
  t_idx = _type_indices(sid_map, types)
  if m == 0:
    return np.zeros((0, sid_map.num_levels), np.int32), {'items': 0}
  if embeddings is None:
    emb = quantiser.embed(texts, t_idx)
  else:
    emb = np.asarray(embeddings, np.float32)
    if emb.shape != (m, quantiser.item_emb_NxD.shape[1]) or not np.all(np.isfinite(emb)):
      raise ValueError(f'embeddings must be finite ({m}, {quantiser.item_emb_NxD.shape[1]}), '
                       f'got {emb.shape}')
  kl = quantiser.kmeans_levels
  codes, moved = _place(sid_map, quantiser.candidate_codes(emb, t_idx), t_idx, ids, kl)
  own = codes[:, kl] == 0 if sid_map.num_levels == kl + 1 else np.ones(m, bool)
  return codes, {'items': m, 'joined_groups': int(np.sum(~own)), 'new_groups': int(own.sum()),
                 'neighbour_cells': moved}


def extend_sid_map(sid_map: SIDMap, codes_MxL: np.ndarray, types: Sequence[str]) -> SIDMap:
  """The map with M rows appended (new catalog rows N..N+M-1), same level sizes; validated
  (so an SID taken twice is an error)."""
  codes_MxL = np.asarray(codes_MxL, np.int32).reshape(-1, sid_map.num_levels)
  t_idx = _type_indices(sid_map, types).astype(np.int32)
  meta = dict(sid_map.meta)
  meta['added_items'] = int(meta.get('added_items', 0)) + int(codes_MxL.shape[0])
  out = SIDMap(type_names=tuple(sid_map.type_names), level_sizes=dict(sid_map.level_sizes),
               codes=np.concatenate([np.asarray(sid_map.codes, np.int32), codes_MxL]),
               type_index=np.concatenate([np.asarray(sid_map.type_index, np.int32), t_idx]),
               meta=meta)
  builder.validate_sid_map(out)
  return out


# -- disk --------------------------------------------------------------------------------------

def _arrays_of(q: FrozenQuantiser) -> dict[str, np.ndarray]:
  arrays = {'item_emb': q.item_emb_NxD, 'type_index': q.type_index, **q.arrays}
  for t, cbs in q.codebooks.items():
    for level, cb in enumerate(cbs):
      arrays[f'codebook/{q.type_names.index(t)}/{level}'] = cb
  return arrays


def _digest(arrays: dict[str, np.ndarray]) -> str:
  h = hashlib.sha256()
  for key in sorted(arrays):
    h.update(key.encode())
    h.update(builder.array_sha256(np.asarray(arrays[key])).encode())
  return h.hexdigest()


def save_quantiser(q: FrozenQuantiser, directory: str | os.PathLike) -> None:
  """Writes `quantiser.npz` and `quantiser.json` under `directory` (the SID map's)."""
  directory = os.fspath(directory)
  atomic.as_path(directory).mkdir(parents=True, exist_ok=True)
  arrays = _arrays_of(q)
  manifest = {
      'format': FORMAT, 'version': FORMAT_VERSION, 'encoder': q.encoder_name,
      'parts': [dataclasses.asdict(p) for p in q.parts], 'type_names': list(q.type_names),
      'kmeans_levels': q.kmeans_levels,
      'codebook_levels': {t: len(q.codebooks[t]) for t in q.type_names},
      'num_items': q.num_items, 'reproduced_items': q.reproduced_items,
      'neighbours': NEIGHBOURS, 'map_codes_sha256': q.map_codes_sha256,
      'arrays_sha256': _digest(arrays),
  }
  builder.atomic_write(os.path.join(directory, NPZ_NAME), lambda f: np.savez(f, **arrays), 'wb')
  builder.atomic_write(os.path.join(directory, MANIFEST_NAME),
                       lambda f: f.write(json.dumps(manifest, indent=1, sort_keys=True) + '\n'),
                       'w')


def has_quantiser(directory: str | os.PathLike) -> bool:
  return atomic.as_path(os.path.join(os.fspath(directory), MANIFEST_NAME)).exists()


def load_quantiser(directory: str | os.PathLike, sid_map: SIDMap | None = None
                   ) -> FrozenQuantiser:
  """Reads a quantiser written by `save_quantiser`, checking its arrays and, given the map,
  that it froze this map (or the map this one grew from)."""
  directory = os.fspath(directory)
  mpath, apath = os.path.join(directory, MANIFEST_NAME), os.path.join(directory, NPZ_NAME)
  for p in (mpath, apath):
    if not atomic.as_path(p).exists():
      raise FileNotFoundError(f'{p}: missing; this SID map was saved without its frozen '
                              'quantiser (built before it was kept): rebuild the SIDs, or '
                              'refreeze it (neo_jax.run.catalog_update.refreeze)')
  try:
    with atomic.open_text(mpath) as f:
      man = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{mpath}: not valid JSON ({e})') from e
  if man.get('format') != FORMAT or man.get('version') != FORMAT_VERSION:
    raise ValueError(f'{mpath}: not a version-{FORMAT_VERSION} {FORMAT} manifest')
  try:
    with np.load(atomic.for_reading(apath), allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f'{apath}: unreadable ({e})') from e
  if _digest(arrays) != man['arrays_sha256']:
    raise ValueError(f'{apath}: checksum mismatch (corrupted, or not the file the manifest '
                     'describes)')
  names = tuple(man['type_names'])
  codebooks = {t: tuple(arrays.pop(f'codebook/{ti}/{l}')
                        for l in range(man['codebook_levels'][t]))
               for ti, t in enumerate(names)}
  q = FrozenQuantiser(
      encoder_name=man['encoder'], parts=tuple(EncoderPart(**p) for p in man['parts']),
      type_names=names, kmeans_levels=int(man['kmeans_levels']), codebooks=codebooks,
      item_emb_NxD=arrays.pop('item_emb'), type_index=arrays.pop('type_index'), arrays=arrays,
      map_codes_sha256=man['map_codes_sha256'], reproduced_items=int(man['reproduced_items']))
  if sid_map is not None:
    check_matches(q, sid_map, where=directory)
  return q


def check_matches(q: FrozenQuantiser, sid_map: SIDMap, where: str = 'quantiser') -> None:
  """Raises ValueError unless `q` froze `sid_map` or the map it grew from (its first rows)."""
  n = q.num_items
  base = np.asarray(sid_map.codes, np.int32)[:n]
  if (len(sid_map) < n or tuple(sid_map.type_names) != q.type_names
      or builder.array_sha256(np.ascontiguousarray(base)) != q.map_codes_sha256):
    raise ValueError(f'{where}: the frozen quantiser was not made for this SID map (its first '
                     f'{n} rows differ from the map it froze)')


__all__ = ['EncoderPart', 'FrozenQuantiser', 'SIDSpaceError', 'assign_sids', 'check_matches',
           'extend_sid_map', 'freeze', 'has_quantiser', 'load_quantiser', 'parse_encoder',
           'save_quantiser']
