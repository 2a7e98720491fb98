"""The SID map: every catalog item <-> a tuple of codes, one quantiser per entity type.

An item of type t has `num_levels` codes; code l lies in [0, level_sizes[t][l]). Every type has
the same number of levels, so that decoding has static shapes; types differ in K per level.
With the default collision policy the last level disambiguates items whose k-means codes
collide (its size is the largest collision group of that type), so every item is reachable.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class SIDMap:
  """Attributes:
    type_names: entity types, the same order as `Catalog.type_names`.
    level_sizes: per type name, the K of each level (len == num_levels).
    codes: (N, num_levels) int32, row n = codes of catalog item n. Items that a collision
      policy made unreachable have all codes -1.
    type_index: (N,) int32, the same as `Catalog.type_index`.
    meta: free-form build facts (levels, K, seed, encoder, collision policy, ...).
    codebooks: per type the residual k-means codebooks that made its codes, one (K_l, D)
      float32 array per k-means level of the type, when the map was just built by
      'rkmeans' (None otherwise: `save_sid_map` does not store them; the frozen quantiser,
      `sid.quantiser`, does).
  """

  type_names: tuple[str, ...]
  level_sizes: dict[str, tuple[int, ...]]
  codes: np.ndarray
  type_index: np.ndarray
  meta: dict = dataclasses.field(default_factory=dict)
  codebooks: dict[str, tuple[np.ndarray, ...]] | None = dataclasses.field(default=None,
                                                                          repr=False)
  _lookup: dict | None = dataclasses.field(default=None, repr=False)

  @property
  def num_levels(self) -> int:
    return int(self.codes.shape[1])

  def __len__(self) -> int:
    return int(self.codes.shape[0])

  def item_of(self, type_name: str, codes: tuple[int, ...]) -> int | None:
    """Catalog row of the item with these codes, or None if no item has them."""
    if self._lookup is None:
      self._lookup = {}
      for n in np.flatnonzero(self.codes[:, 0] >= 0):
        key = (int(self.type_index[n]),) + tuple(int(c) for c in self.codes[n])
        self._lookup[key] = int(n)
    key = (self.type_names.index(type_name),) + tuple(int(c) for c in codes)
    return self._lookup.get(key)

  def reachable(self) -> np.ndarray:
    """(N,) bool: items that have an SID."""
    return self.codes[:, 0] >= 0
