"""From task examples to fixed-shape training batches.

An example becomes `[bos] prompt completion [eos]`; the loss covers the completion and the eos
only. Examples are packed first-fit into rows of `seq_len` tokens with segment ids (1, 2, ...
per row, 0 = padding) and per-segment positions, so that attention never crosses examples.

Batch order is a pure function of (seed, step): `PackedData.batch(step)` returns the same
batch for the same step in every run, which makes resuming after preemption exact without
checkpointing any iterator state beyond the step.

Packing a large catalog's examples takes long (tokenisation dominates): `pack_examples` prints
progress lines (`neo_jax.catalog.progress`: done / total, rate, ETA, every ~10 s) for each of
its phases that runs longer than that (`tokenise` and `place` count examples, `write` rows),
to `log` or stderr; none in tests or under `--verbosity=-1`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from neo_jax.catalog import progress as progress_lib
from neo_jax.tasks.types import Example
from neo_jax.tokenizer.base import Tokenizer
from neo_jax.tokenizer.cut import PromptTooLongError, cut_prompt

_PACK_WINDOW = 64


class CompletionTooLongError(ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class Tokenized:
  tokens: np.ndarray  # (T,) int32
  loss_mask: np.ndarray  # (T,) bool: True on completion tokens and eos


def tokenize_example(ex: Example, tokenizer: Tokenizer, max_len: int) -> tuple[Tokenized, int]:
  """Returns the tokenised example and how many history items its prompt lost to fit
  `max_len`.

  Over-long prompts lose their oldest history items (`tokenizer.cut.cut_prompt`), never the
  instruction header nor the completion: a completion that cannot fit raises
  CompletionTooLongError, because training on a cut answer would teach the model to stop
  mid-SID; a prompt that cannot fit with its newest history item raises PromptTooLongError.
  """
  prompt = tokenizer.encode(ex.prompt)
  completion = tokenizer.encode(ex.completion) + [tokenizer.eos_id]
  room = max_len - 1 - len(completion)
  if room < 1:
    raise CompletionTooLongError(
        f'completion of a {ex.task!r} example has {len(completion)} tokens; it cannot fit '
        f'seq_len={max_len}: {ex.completion[:80]!r}')
  prompt, cut_items = cut_prompt(prompt, room, tokenizer)
  tokens = np.array([tokenizer.bos_id] + prompt + completion, np.int32)
  mask = np.zeros(tokens.shape, bool)
  mask[len(tokens) - len(completion):] = True
  return Tokenized(tokens, mask), cut_items


@dataclasses.dataclass
class PackedData:
  """Packed rows; every array is (R, seq_len)."""

  tokens: np.ndarray
  segment_ids: np.ndarray
  positions: np.ndarray
  loss_mask: np.ndarray
  batch_size: int
  seed: int
  stats: dict

  @property
  def seq_len(self) -> int:
    return int(self.tokens.shape[1])

  @property
  def num_rows(self) -> int:
    return int(self.tokens.shape[0])

  @property
  def steps_per_epoch(self) -> int:
    return max(1, self.num_rows // self.batch_size)

  def batch(self, step: int, rows: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """The batch for global step `step`: epoch e = step // steps_per_epoch reads a permutation
    of the rows seeded by (seed, e); a last partial batch of an epoch is skipped.
    rows=(start, stop): only those rows of the batch (one host's part of the global batch)."""
    epoch, i = divmod(int(step), self.steps_per_epoch)
    order = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
    if self.num_rows < self.batch_size:  # tiny data: repeat rows to fill one batch
      order = np.resize(order, self.batch_size)
    picked = order[i * self.batch_size:(i + 1) * self.batch_size]
    if rows is not None:
      start, stop = rows
      if not 0 <= start < stop <= self.batch_size:
        raise ValueError(f'rows {rows} outside the batch of {self.batch_size}')
      picked = picked[start:stop]
    return {
        'tokens': self.tokens[picked],
        'segment_ids': self.segment_ids[picked],
        'positions': self.positions[picked],
        'loss_mask': self.loss_mask[picked],
    }


def pack_examples(examples: Sequence[Example], tokenizer: Tokenizer, seq_len: int,
                  batch_size: int, seed: int = 0, *, log: progress_lib.Log | None = None,
                  progress: bool | None = None) -> PackedData:
  """Tokenises and packs `examples` first-fit (in a seeded order) into rows of `seq_len`.

  log: where progress lines go (None: stderr); progress: print them at all (None:
  `progress.enabled()`). Neither changes the packing."""
  if not examples:
    raise ValueError('no examples to pack')
  order = np.random.default_rng(seed).permutation(len(examples))
  items, truncated, cut_items, too_long, prompt_too_long = [], 0, 0, 0, 0
  for n in progress_lib.track(order, 'packing: tokenise', unit='examples', log=log,
                              on=progress):
    try:
      tok, cut = tokenize_example(examples[n], tokenizer, seq_len)
    except CompletionTooLongError:
      too_long += 1  # reported in stats: an answer cut short would teach wrong SIDs
      continue
    except PromptTooLongError:
      prompt_too_long += 1  # reported: its instruction would have to be cut
      continue
    items.append(tok)
    truncated += cut > 0
    cut_items += cut
  if not items:
    raise ValueError(f'none of the {len(examples)} examples fits seq_len={seq_len} '
                     f'({too_long} answers and {prompt_too_long} prompts too long)')
  # First-fit over a window of the most recently opened rows that still have room for the
  # shortest example: bounded cost per example, and rows close once they are nearly full.
  shortest = min(len(t.tokens) for t in items)
  rows: list[list[Tokenized]] = []
  free: list[int] = []
  open_rows: list[int] = []
  for tok in progress_lib.track(items, 'packing: place', unit='examples', log=log,
                                on=progress):
    n = len(tok.tokens)
    for r in open_rows:
      if free[r] >= n:
        break
    else:
      r = len(rows)
      rows.append([])
      free.append(seq_len)
      open_rows.append(r)
      if len(open_rows) > _PACK_WINDOW:
        open_rows.pop(0)
    rows[r].append(tok)
    free[r] -= n
    if free[r] < shortest:
      open_rows.remove(r)
  shape = (len(rows), seq_len)
  tokens = np.full(shape, tokenizer.pad_id, np.int32)
  segs = np.zeros(shape, np.int32)
  pos = np.zeros(shape, np.int32)
  mask = np.zeros(shape, bool)
  for r, row in enumerate(progress_lib.track(rows, 'packing: write', unit='rows', log=log,
                                             on=progress)):
    at = 0
    for s, tok in enumerate(row, start=1):
      n = len(tok.tokens)
      tokens[r, at:at + n] = tok.tokens
      segs[r, at:at + n] = s
      pos[r, at:at + n] = np.arange(n)
      mask[r, at:at + n] = tok.loss_mask
      at += n
  stats = {
      'examples': len(items),
      'rows': len(rows),
      'truncated_prompts': truncated,
      'cut_history_items': cut_items,
      'skipped_completion_too_long': too_long,
      'skipped_prompt_too_long': prompt_too_long,
      'fill': float((segs > 0).mean()),
      'loss_tokens': int(mask.sum()),
  }
  return PackedData(tokens, segs, pos, mask, batch_size, seed, stats)
