"""'centroid' initialisation of the SID token rows (a design the NEO paper did not study).

Idea: a code token should start where the text of its items already lives in the model's
input-embedding space. The SID quantiser works in a text encoder's space (E dims), the model
in its own (D dims), so:

1. Targets: for every item n with an SID, y_n = mean input-embedding row of the tokens of its
   title (D,), read from the pretrained embedding.
2. Map: an affine least-squares fit y ~ x W + b from the item's text features x_n (E,) (the
   ones the SIDs were built from), ridge-regularised (lambda = ridge x mean squared feature
   norm) so that E > N or collinear features stay well posed.
3. Code centroids in feature space, recomputed from the SID map as residual k-means defines
   them: level 0, code c = mean x of the type's items with code c; level l > 0, code c = mean
   over the items with code c at level l of the residual x - sum of their level < l centroids
   (at Lloyd convergence this equals the quantiser's own centroids; for the disambiguation
   level it is simply the mean leftover residual).
4. Row of a code = centroid W + b at every level (for a residual level: the residual's
   projection offset by b, so that the row sits in the populated part of the space rather
   than at the origin). A code no item uses gets b (level > 0) or the type's mean
   feature projected (level 0). `[SID]` / `[/SID]` get the mean of the text rows.

Feed the rows to `vocab.extend_vocab(model, tok.vocab_size, init='centroid', row_init=rows)`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from neo_jax.sid.types import SIDMap
from neo_jax.tokenizer.sid_vocab import SIDVocab


def fit_affine_map(x_NxE, y_NxD, ridge: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
  """Ridge least squares y ~ x W + b. Returns (W (E, D), b (D,)) in float64."""
  x = np.asarray(x_NxE, np.float64)
  y = np.asarray(y_NxD, np.float64)
  if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 2:
    raise ValueError(f'fit_affine_map needs x (N, E) and y (N, D) with the same N >= 2, got '
                     f'{x.shape} and {y.shape}')
  if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
    raise ValueError('fit_affine_map: non-finite features or targets')
  if ridge < 0:
    raise ValueError(f'ridge must be >= 0, got {ridge}')
  mx, my = x.mean(0), y.mean(0)
  xc, yc = x - mx, y - my
  lam = ridge * float(np.mean(np.sum(xc * xc, axis=1)))
  gram = xc.T @ xc + lam * np.eye(x.shape[1])
  w = np.linalg.lstsq(gram, xc.T @ yc, rcond=None)[0]
  return w, my - mx @ w


def residual_centroids(x_NxE, sid_map: SIDMap) -> dict[tuple[str, int], np.ndarray]:
  """(type, level) -> (K, E) code centroids in feature space (see the module docstring);
  rows of codes no item uses are NaN."""
  x = np.asarray(x_NxE, np.float64)
  if x.ndim != 2 or x.shape[0] != len(sid_map):
    raise ValueError(f'features must be (N={len(sid_map)}, E), got {x.shape}')
  out = {}
  for ti, t in enumerate(sid_map.type_names):
    rows = np.flatnonzero((sid_map.type_index == ti) & sid_map.reachable())
    resid = x[rows].copy()
    for level, k in enumerate(sid_map.level_sizes[t]):
      codes = sid_map.codes[rows, level]
      count = np.bincount(codes, minlength=k).astype(np.float64)
      sums = np.zeros((k, x.shape[1]))
      np.add.at(sums, codes, resid)
      with np.errstate(invalid='ignore', divide='ignore'):
        cents = sums / count[:, None]
      out[t, level] = cents
      resid = resid - np.nan_to_num(cents)[codes]
  return out


def title_targets(embed_VxD, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
  """(N, D) mean embedding row of each title's token ids."""
  table = np.asarray(embed_VxD, np.float64)
  out = np.zeros((len(token_ids), table.shape[1]))
  for n, ids in enumerate(token_ids):
    if len(ids) == 0:
      raise ValueError(f'title {n} has no tokens')
    out[n] = table[np.asarray(ids)].mean(0)
  return out


def centroid_rows(embed_VxD, sid_vocab: SIDVocab, sid_map: SIDMap, x_NxE,
                  title_token_ids: Sequence[Sequence[int]], ridge: float = 1e-3
                  ) -> np.ndarray:
  """(sid_vocab.size, D) float32 initial rows of the SID block, in its id order.

  Args:
    embed_VxD: the pretrained text embedding (V_text, D) (rows of the text vocabulary).
    sid_vocab: the SID block layout (its types/levels must match `sid_map`).
    sid_map: every item's codes.
    x_NxE: the text features the SIDs were built from, one row per catalog item.
    title_token_ids: per catalog item, the token ids of its title (text vocabulary).
    ridge: relative ridge strength of the affine fit.
  """
  if tuple(sid_vocab.type_names) != tuple(sid_map.type_names) or any(
      tuple(sid_vocab.level_sizes[t]) != tuple(sid_map.level_sizes[t])
      for t in sid_map.type_names):
    raise ValueError('the SID vocabulary and the SID map describe different blocks')
  if len(title_token_ids) != len(sid_map):
    raise ValueError(f'{len(title_token_ids)} titles for {len(sid_map)} items')
  table = np.asarray(embed_VxD, np.float64)
  if table.shape[0] != sid_vocab.base:
    raise ValueError(f'embedding has {table.shape[0]} rows, the text vocabulary '
                     f'{sid_vocab.base}')
  x = np.asarray(x_NxE, np.float64)
  ok = sid_map.reachable()
  y = title_targets(table, [title_token_ids[n] for n in np.flatnonzero(ok)])
  w, b = fit_affine_map(x[ok], y, ridge)
  cents = residual_centroids(x, sid_map)
  rows = np.zeros((sid_vocab.size, table.shape[1]))
  rows[:2] = table.mean(0)  # [SID], [/SID]
  for ti, t in enumerate(sid_map.type_names):
    type_mean = x[(sid_map.type_index == ti) & ok].mean(0)
    for level in range(sid_map.num_levels):
      c = cents[t, level]
      empty = np.isnan(c).any(axis=1)
      c = np.where(empty[:, None], type_mean if level == 0 else 0.0, c)
      start = int(sid_vocab.offsets_TxL[ti, level]) - sid_vocab.base
      rows[start:start + c.shape[0]] = c @ w + b
  return rows.astype(np.float32)
