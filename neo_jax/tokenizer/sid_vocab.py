"""The block of SID tokens appended after a text vocabulary.

Layout of the ids (V_text = size of the text vocabulary):

  [0, V_text)            text tokens
  V_text                 `[SID]`
  V_text + 1             `[/SID]`
  then, for each type in `type_names` order, for each level l, K_{t,l} code tokens.

In text, an SID is written `[SID]<movie:0:12><movie:1:3><movie:2:200><movie:3:0>[/SID]`
(type name, level, code). Entity type names must match `[A-Za-z0-9_-]+`.
"""

from __future__ import annotations

import re

import numpy as np

SID_OPEN = '[SID]'
SID_CLOSE = '[/SID]'
_TYPE_RE = re.compile(r'^[A-Za-z0-9_-]+$')
CODE_RE = re.compile(r'<([A-Za-z0-9_-]+):(\d+):(\d+)>')


class SIDVocab:
  """Maps (type, level, code) <-> token id for the SID block starting at `base`."""

  def __init__(self, type_names, level_sizes: dict[str, tuple[int, ...]], base: int):
    self.type_names = tuple(type_names)
    for t in self.type_names:
      if not _TYPE_RE.match(t):
        raise ValueError(f'entity type name {t!r} must match {_TYPE_RE.pattern}')
      if t not in level_sizes:
        raise ValueError(f'no level sizes for entity type {t!r}')
    levels = {len(level_sizes[t]) for t in self.type_names}
    if len(levels) > 1:
      raise ValueError(f'every type needs the same number of levels, got {level_sizes}')
    # No types (a text-only tokenizer): the block is just the two delimiters.
    self.num_levels = levels.pop() if levels else 0
    self.level_sizes = {t: tuple(int(k) for k in level_sizes[t]) for t in self.type_names}
    self.base = int(base)
    self.sid_open_id = self.base
    self.sid_close_id = self.base + 1
    # offsets_TxL[t, l] = id of code 0 of level l of type t.
    self.offsets_TxL = np.zeros((len(self.type_names), self.num_levels), np.int64)
    nxt = self.base + 2
    for ti, t in enumerate(self.type_names):
      for l, k in enumerate(self.level_sizes[t]):
        self.offsets_TxL[ti, l] = nxt
        nxt += k
    self.end = nxt  # one past the last SID token id
    # For decoding ids back: sorted starts of every (type, level) block.
    self._starts = self.offsets_TxL.reshape(-1)
    self._sizes_TxL = np.array([self.level_sizes[t] for t in self.type_names], np.int64)

  @property
  def size(self) -> int:
    """Number of ids in the block, delimiters included."""
    return self.end - self.base

  def token_id(self, type_name: str, level: int, code: int) -> int:
    ti = self.type_names.index(type_name)
    k = self.level_sizes[type_name][level]
    if not 0 <= code < k:
      raise ValueError(f'code {code} out of range [0, {k}) for {type_name} level {level}')
    return int(self.offsets_TxL[ti, level] + code)

  def is_code(self, token_id: int) -> bool:
    return self.base + 2 <= token_id < self.end

  def describe(self, token_id: int) -> tuple[str, int, int]:
    """(type, level, code) of a code token id."""
    if not self.is_code(token_id):
      raise ValueError(f'{token_id} is not an SID code token')
    flat = int(np.searchsorted(self._starts, token_id, side='right') - 1)
    ti, l = divmod(flat, self.num_levels)
    return self.type_names[ti], l, int(token_id - self._starts[flat])

  def token_str(self, type_name: str, level: int, code: int) -> str:
    return f'<{type_name}:{level}:{code}>'

  def render(self, type_name: str, codes) -> str:
    """Markup of one SID: `[SID]<t:0:c0>...[/SID]`."""
    inner = ''.join(self.token_str(type_name, l, int(c)) for l, c in enumerate(codes))
    return SID_OPEN + inner + SID_CLOSE
