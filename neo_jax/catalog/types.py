"""In-memory form of a NEO dataset: a multi-type item catalog, interactions, queries, users.

Everything downstream (SIDs, tasks, evaluation) addresses items by their dense row index in
the catalog (`int32`), never by their string id; string ids exist only at the file boundary.
Arrays are columnar so that a catalog of millions of items stays cheap to hold and slice.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


class DatasetError(ValueError):
  """Bad input data. The message names the file, the line (1-based) and the field."""

  def __init__(self, path: str, line: int | None, field: str | None, message: str):
    where = str(path)
    if line is not None:
      where += f', line {line}'
    if field is not None:
      where += f', field {field!r}'
    super().__init__(f'{where}: {message}')
    self.path, self.line, self.field = path, line, field


@dataclasses.dataclass
class Catalog:
  """N items of several entity types.

  Attributes:
    ids: (N,) unique string ids, in row order.
    type_names: the sorted distinct entity type names.
    type_index: (N,) int32, index into `type_names` of each item's type.
    titles: (N,) non-empty strings.
    descriptions: (N,) strings, '' when absent.
    tags: (N,) tuples of strings.
    attributes: (N,) dicts of scalars.
    popularity: (N,) float32; the file's `popularity`, or NaN where absent (callers that need
      a popularity derive it from interactions, see `Dataset.item_counts`).
  """

  ids: list[str]
  type_names: tuple[str, ...]
  type_index: np.ndarray
  titles: list[str]
  descriptions: list[str]
  tags: list[tuple[str, ...]]
  attributes: list[dict[str, Any]]
  popularity: np.ndarray
  _id_to_index: dict[str, int] | None = dataclasses.field(default=None, repr=False)

  def __len__(self) -> int:
    return len(self.ids)

  def index_of(self, item_id: str) -> int:
    if self._id_to_index is None:
      self._id_to_index = {i: n for n, i in enumerate(self.ids)}
    try:
      return self._id_to_index[item_id]
    except KeyError:
      raise KeyError(f'unknown item id {item_id!r}') from None

  def type_of(self, index: int) -> str:
    return self.type_names[int(self.type_index[index])]

  def items_of_type(self, type_name: str) -> np.ndarray:
    """Row indices (int64, ascending) of all items of `type_name`."""
    if type_name not in self.type_names:
      raise KeyError(f'unknown entity type {type_name!r}; known: {self.type_names}')
    return np.flatnonzero(self.type_index == self.type_names.index(type_name))

  def text(self, index: int) -> str:
    """The text an item is embedded and described by: title, description, tags."""
    parts = [self.titles[index]]
    if self.descriptions[index]:
      parts.append(self.descriptions[index])
    if self.tags[index]:
      parts.append(', '.join(self.tags[index]))
    return '. '.join(parts)


@dataclasses.dataclass
class Interactions:
  """E events, in file order (not necessarily sorted).

  Attributes:
    user_names: (U,) distinct user ids in first-seen order.
    user_index: (E,) int32 into `user_names`.
    item_index: (E,) int32 row in the catalog.
    timestamp: (E,) int64 seconds.
    extra: extra CSV columns, each a list of E strings, kept as event attributes.
  """

  user_names: list[str]
  user_index: np.ndarray
  item_index: np.ndarray
  timestamp: np.ndarray
  extra: dict[str, list[str]] = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return int(self.item_index.shape[0])


@dataclasses.dataclass(frozen=True)
class Query:
  text: str
  item_index: tuple[int, ...]  # relevant catalog rows
  user_id: str | None = None
  timestamp: int | None = None


@dataclasses.dataclass(frozen=True)
class User:
  id: str
  attributes: dict[str, Any] = dataclasses.field(default_factory=dict)
  summary: str | None = None


@dataclasses.dataclass
class Dataset:
  name: str
  catalog: Catalog
  interactions: Interactions
  queries: list[Query] = dataclasses.field(default_factory=list)
  users: dict[str, User] = dataclasses.field(default_factory=dict)
  # Rows that a documented policy skipped while loading, by reason: nothing is dropped silently.
  skipped: dict[str, int] = dataclasses.field(default_factory=dict)

  def item_counts(self) -> np.ndarray:
    """(N,) int64 number of interactions per item."""
    return np.bincount(self.interactions.item_index, minlength=len(self.catalog))
