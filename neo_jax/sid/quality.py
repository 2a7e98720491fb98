"""Quality report of an SID map against the embeddings it was built from, with plots.

Per entity type, and for every prefix length p = 0..L (p = 0: all items of the type):

* utilisation_l{l}: perplexity of the level-l code distribution / level size (1 = uniform).
* coherence_p{p}: mean cosine similarity over all pairs of distinct items sharing their first
  p codes (pair-weighted; p = 0 is the type's random-pair baseline). With unit vectors u, a
  group G contributes |sum_G u|^2 - |G| to the pair sum and |G|(|G| - 1) pairs.
* recon_mse_p{p}: mean squared distance of an item to the mean embedding of its prefix group,
  i.e. the reconstruction error of the best codebook for that partition (for residual
  k-means this lower-bounds the level's own residual error, reported by the builder).

Group sums are streamed over row blocks with a sparse indicator matmul, so the report needs
no copy of the embeddings.
"""

from __future__ import annotations

import io
import os

import numpy as np
import scipy.sparse

from neo_jax.catalog import atomic
from neo_jax.sid.types import SIDMap

_BLOCK = 65536


def _group_stats(x_NxD: np.ndarray, rows: np.ndarray, group: np.ndarray, num_groups: int):
  """Per group: count, sum of unit vectors, sum of raw vectors; over all rows: sum |x|^2."""
  d = x_NxD.shape[1]
  sum_u = np.zeros((num_groups, d), np.float64)
  sum_x = np.zeros((num_groups, d), np.float64)
  sq = 0.0
  for lo in range(0, rows.size, _BLOCK):
    r = rows[lo:lo + _BLOCK]
    g = group[lo:lo + _BLOCK]
    x = np.asarray(x_NxD[r], np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    u = x / np.maximum(norm, 1e-12)
    ind = scipy.sparse.csr_matrix((np.ones(r.size), (g, np.arange(r.size))),
                                  shape=(num_groups, r.size))
    sum_u += ind @ u
    sum_x += ind @ x
    sq += float(np.sum(x * x))
  counts = np.bincount(group, minlength=num_groups).astype(np.float64)
  return counts, sum_u, sum_x, sq


def quality_report(sid_map: SIDMap, embeddings_NxD) -> dict[str, float]:
  """Flat dict '{type}/utilisation_l{l}', '{type}/coherence_p{p}', '{type}/recon_mse_p{p}',
  plus item-weighted means over types without the type prefix ('coherence_p{p}' is weighted
  by pairs, and absent when no two items share p codes). Unreachable items (codes -1) are
  left out."""
  emb = embeddings_NxD
  n, num_levels = sid_map.codes.shape
  if emb.ndim != 2 or emb.shape[0] != n:
    raise ValueError(f'embeddings must have shape ({n}, D), got {emb.shape}')
  out: dict[str, float] = {}
  pair_num = np.zeros(num_levels + 1)
  pair_den = np.zeros(num_levels + 1)
  recon_tot = np.zeros(num_levels + 1)
  util_tot = np.zeros(num_levels)
  total = 0
  for ti, t in enumerate(sid_map.type_names):
    rows = np.flatnonzero((sid_map.type_index == ti) & (sid_map.codes[:, 0] >= 0))
    if rows.size == 0:
      continue
    codes = sid_map.codes[rows]
    total += rows.size
    for l in range(num_levels):
      k = int(sid_map.level_sizes[t][l])
      p = np.bincount(codes[:, l], minlength=k).astype(np.float64) / rows.size
      p = p[p > 0]
      out[f'{t}/utilisation_l{l}'] = float(np.exp(-np.sum(p * np.log(p)))) / k
      util_tot[l] += out[f'{t}/utilisation_l{l}'] * rows.size
    for plen in range(num_levels + 1):
      if plen == 0:
        group, num_groups = np.zeros(rows.size, np.int64), 1
      else:
        _, group = np.unique(codes[:, :plen], axis=0, return_inverse=True)
        group = group.reshape(-1)
        num_groups = int(group.max()) + 1
      counts, sum_u, sum_x, sq = _group_stats(emb, rows, group, num_groups)
      pairs = float(np.sum(counts * (counts - 1)))
      pair_sum = float(np.sum(sum_u * sum_u) - np.sum(counts))
      if pairs:  # no key (rather than NaN) when no two items share the prefix
        out[f'{t}/coherence_p{plen}'] = pair_sum / pairs
      out[f'{t}/pairs_p{plen}'] = pairs / 2
      recon = (sq - float(np.sum(np.sum(sum_x * sum_x, axis=1) / np.maximum(counts, 1))))
      out[f'{t}/recon_mse_p{plen}'] = max(recon, 0.0) / rows.size
      pair_num[plen] += pair_sum
      pair_den[plen] += pairs
      recon_tot[plen] += max(recon, 0.0)
  for l in range(num_levels):
    out[f'utilisation_l{l}'] = util_tot[l] / max(total, 1)
  for plen in range(num_levels + 1):
    if pair_den[plen]:
      out[f'coherence_p{plen}'] = float(pair_num[plen] / pair_den[plen])
    out[f'recon_mse_p{plen}'] = float(recon_tot[plen] / max(total, 1))
  return out


def plot_report(report: dict[str, float], sid_map: SIDMap, path: str | os.PathLike,
                title: str = '') -> str:
  """Writes a PNG (utilisation per level, coherence and reconstruction error per prefix
  length, one line per type) atomically, to a local path or a URI (`catalog.atomic`), and
  returns its path (`atomic.location`)."""
  import matplotlib  # local: plotting is optional for library users
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  num_levels = sid_map.num_levels
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  for t in sid_map.type_names:
    if f'{t}/recon_mse_p0' not in report:
      continue
    axes[0].plot(range(num_levels), [report[f'{t}/utilisation_l{l}'] for l in
                                     range(num_levels)], marker='o', label=t)
    axes[1].plot(range(num_levels + 1), [report.get(f'{t}/coherence_p{p}', np.nan) for p in
                                         range(num_levels + 1)], marker='o', label=t)
    axes[2].plot(range(num_levels + 1), [report[f'{t}/recon_mse_p{p}'] for p in
                                         range(num_levels + 1)], marker='o', label=t)
  axes[0].set(xlabel='level', ylabel='perplexity / K', title='codebook utilisation',
              ylim=(0, 1.05))
  axes[1].set(xlabel='shared prefix length', ylabel='mean pairwise cosine',
              title='prefix coherence')
  axes[2].set(xlabel='prefix length', ylabel='mean squared error',
              title='reconstruction error (prefix-group mean)')
  axes[0].set_xticks(range(num_levels))
  axes[1].set_xticks(range(num_levels + 1))
  axes[2].set_xticks(range(num_levels + 1))
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=90)
  plt.close(fig)
  return atomic.write_bytes(path, buf.getvalue())


__all__ = ['plot_report', 'quality_report']
