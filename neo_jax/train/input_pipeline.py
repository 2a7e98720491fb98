"""A grain input pipeline: prompt/completion examples -> packed, sharded, resumable batches.

The stages, each a grain transformation (lazy, so the examples are tokenised as they are read):

1. this host's shard of the examples: rows `shard_index::shard_count` of the example list
   (every process reads a disjoint part; together they cover every example exactly once);
2. a shuffle seeded by `seed` that is redrawn every epoch (grain's `MapDataset.shuffle` then
   `repeat`), so batches are a pure function of the seed, the shard and the step;
3. tokenisation with `train.data.tokenize_example`: `[bos] prompt completion [eos]`, loss on
   the completion and eos only; an over-long prompt loses its oldest tokens, and each row
   reports how many of its examples were cut (`cut_prompts`), so nothing is cut silently;
4. first-fit packing (`grain.experimental.FirstFitPackIterDataset`) into rows of `seq_len`
   tokens with segment ids (1, 2, ... per row, 0 = padding) and per-segment positions:
   a model that masks attention by segment id (`model.decoder.Decoder` does) never lets one
   packed example see another;
5. batches of `batch_size` rows.

The iterator is a `grain.DatasetIterator`: `get_state()` is a small JSON-able dict and
`set_state()` continues exactly where the saved iterator stood (`save_state`/`restore_state`
write it to a file; grain's `grain.checkpoint.CheckpointSave/CheckpointRestore` put it inside
an orbax checkpoint).

A batch is a dict of numpy arrays, as `PackedData.batch` returns:
  tokens (B, L) int32, segment_ids (B, L) int32, positions (B, L) int32, loss_mask (B, L) bool,
  cut_prompts (B,) int32.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import grain
import grain.experimental as grain_exp
import numpy as np

from neo_jax.tasks.types import Example
from neo_jax.tokenizer.base import Tokenizer
from neo_jax.train.data import tokenize_example

BATCH_KEYS = ('tokens', 'segment_ids', 'positions', 'loss_mask', 'cut_prompts')


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Shape and order of the batches.

  Attributes:
    seq_len: L, tokens per packed row.
    batch_size: B, rows per batch (per host: the global batch is B * shard_count).
    seed: seeds the example shuffle (redrawn each epoch) and the order of packed rows.
    num_epochs: passes over this host's examples; None repeats forever (training).
    shuffle: False keeps the example order (evaluation).
    num_packing_bins: rows filled at once by first-fit; more bins, less padding.
    drop_remainder: drop a last partial batch (training keeps shapes static).
    read_threads: grain read threads for tokenising ahead; 0 reads in the consuming thread
      (tokenising holds the GIL, and grain's thread prefetch polls its futures: on 2 CPU
      cores it ran 4x slower than reading inline, see experiments/benchmarks/input_pipeline).
    read_buffer: examples read ahead when read_threads > 0.
  """

  seq_len: int
  batch_size: int
  seed: int = 0
  num_epochs: int | None = None
  shuffle: bool = True
  num_packing_bins: int = 16
  drop_remainder: bool = True
  read_threads: int = 0
  read_buffer: int = 256

  def __post_init__(self):
    for name in ('seq_len', 'batch_size', 'num_packing_bins'):
      if int(getattr(self, name)) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
    if self.seq_len < 3:
      raise ValueError(f'seq_len must be >= 3 (bos, one prompt token, eos), got {self.seq_len}')
    if self.read_threads < 0 or self.read_buffer < 0:
      raise ValueError(f'read_threads and read_buffer must be >= 0, got {self.read_threads}, '
                       f'{self.read_buffer}')
    if self.num_epochs is not None and self.num_epochs < 1:
      raise ValueError(f'num_epochs must be >= 1 or None, got {self.num_epochs}')


def host_shard() -> tuple[int, int]:
  """(shard_index, shard_count) of this process: `jax.process_index()`, `jax.process_count()`."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index(), jax.process_count()


class _Tokenize(grain.transforms.Map):
  """Example -> {'tokens': (T,) int32, 'loss_mask': (T,) bool, 'cut_prompts': int32}."""

  def __init__(self, tokenizer: Tokenizer, seq_len: int):
    self._tokenizer = tokenizer
    self._seq_len = seq_len

  def map(self, element: Example) -> dict[str, Any]:
    tok, cut = tokenize_example(element, self._tokenizer, self._seq_len)
    return {'tokens': tok.tokens, 'loss_mask': tok.loss_mask, 'cut_prompts': np.int32(cut)}


def _rename_packed(row: dict[str, Any]) -> dict[str, Any]:
  # grain names the packing outputs after the feature they describe; loss_mask is packed as a
  # meta feature (no segment ids of its own) and cut_prompts comes back as one entry per
  # example packed into the row.
  return {
      'tokens': row['tokens'],
      'segment_ids': row['tokens_segment_ids'],
      'positions': row['tokens_positions'],
      'loss_mask': row['loss_mask'].astype(bool),
      'cut_prompts': np.int32(sum(int(c) for c in row['cut_prompts'])),
  }


def make_dataset(examples: Sequence[Example], tokenizer: Tokenizer, cfg: PipelineConfig, *,
                 shard_index: int | None = None,
                 shard_count: int | None = None) -> grain.IterDataset:
  """The batches of this host's shard of `examples`, as a grain `IterDataset`.

  Args:
    examples: all examples (every host passes the same list, in the same order).
    tokenizer: text vocabulary + SID block (`Tokenizer` protocol).
    cfg: sequence length, batch size, seed, epochs, packing.
    shard_index, shard_count: this host's part; both None: `host_shard()` (jax processes).

  Returns:
    An `IterDataset` of batch dicts (see the module docstring). `iter()` of it is a
    checkpointable `grain.DatasetIterator`.

  Raises:
    ValueError: no examples, a bad shard, a shard without examples, or (when read) a
      completion that cannot fit `seq_len`.
  """
  if not examples:
    raise ValueError('no examples to pack')
  if (shard_index is None) != (shard_count is None):
    raise ValueError('give both shard_index and shard_count, or neither')
  if shard_index is None:
    shard_index, shard_count = host_shard()
  if shard_count < 1 or not 0 <= shard_index < shard_count:
    raise ValueError(f'shard_index must be in [0, shard_count), got {shard_index} of '
                     f'{shard_count}')
  if len(examples) < shard_count:
    raise ValueError(f'{len(examples)} examples cannot feed {shard_count} shards')
  ds = grain.MapDataset.source(list(examples))[shard_index::shard_count]
  if cfg.shuffle:
    # Seeded by (seed, shard) so hosts draw different orders of their disjoint parts.
    ds = ds.shuffle(seed=_mix(cfg.seed, shard_index))
  ds = ds.repeat(cfg.num_epochs)
  ds = ds.map(_Tokenize(tokenizer, cfg.seq_len))
  buffer = cfg.read_buffer if cfg.read_threads else 0
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads,
                                            prefetch_buffer_size=buffer))
  it = grain_exp.FirstFitPackIterDataset(
      it, length_struct={'tokens': cfg.seq_len, 'loss_mask': cfg.seq_len},
      num_packing_bins=cfg.num_packing_bins, seed=_mix(cfg.seed, shard_index),
      shuffle_bins=cfg.shuffle, meta_features=('loss_mask', 'cut_prompts'),
      padding_struct={'tokens': tokenizer.pad_id, 'loss_mask': False})
  it = it.map(_rename_packed)
  return it.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder)


def _mix(seed: int, shard_index: int) -> int:
  return int(np.random.SeedSequence([int(seed), int(shard_index)]).generate_state(1)[0])


def save_state(iterator: grain.DatasetIterator, path: str) -> None:
  """Writes `iterator.get_state()` as JSON to `path` (atomically: temporary file, rename)."""
  state = iterator.get_state()
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(state, f)
  os.replace(tmp, path)


def restore_state(iterator: grain.DatasetIterator, path: str) -> grain.DatasetIterator:
  """Sets `iterator` (fresh, from the same dataset) to the state saved at `path`."""
  with open(path) as f:
    state = json.load(f)
  iterator.set_state(state)
  return iterator


class GrainBatches:
  """The `batch(step)` interface of `train.data.PackedData` over a grain pipeline.

  Reading steps in order costs one batch each. A jump is still exact, because the batches are
  a pure function of (examples, config, shard): a step ahead is reached by reading and
  discarding the batches before it, a step behind by restarting the iterator. So a training
  loop can resume at any step without saved iterator state, at the cost of re-packing the
  skipped batches; saving `get_state()` with the checkpoint and `set_state()` on resume
  avoids that cost.

  Attributes:
    iterator: the grain iterator (its `get_state()` belongs in the checkpoint).
    next_step: the step whose batch the iterator yields next.
    skipped_batches: batches read and discarded to reach a requested step.
  """

  def __init__(self, dataset: grain.IterDataset, cfg: PipelineConfig):
    self.dataset = dataset
    self.iterator = iter(dataset)
    self.batch_size = cfg.batch_size
    self.seq_len = cfg.seq_len
    self.next_step = 0
    self.skipped_batches = 0

  def _next(self, step: int) -> dict[str, np.ndarray]:
    try:
      out = next(self.iterator)
    except StopIteration:
      raise ValueError(f'the input pipeline ran out of data at step {step} '
                       '(num_epochs is finite)') from None
    self.next_step += 1
    return out

  def batch(self, step: int) -> dict[str, np.ndarray]:
    step = int(step)
    if step < 0:
      raise ValueError(f'step must be >= 0, got {step}')
    if step < self.next_step:
      self.iterator = iter(self.dataset)
      self.next_step = 0
    while self.next_step < step:
      self._next(self.next_step)
      self.skipped_batches += 1
    return self._next(step)

  def get_state(self) -> dict[str, Any]:
    return {'next_step': self.next_step, 'iterator': self.iterator.get_state()}

  def set_state(self, state: dict[str, Any]) -> None:
    self.iterator.set_state(state['iterator'])
    self.next_step = int(state['next_step'])
