"""A TIGER-style generative retriever (Rajput et al., 2023): SIDs only, no language model.

Items are written as their semantic IDs (the same residual-k-means SID map NEO uses, or one
built here from the item text); a small decoder-only transformer (`model.decoder.Decoder`,
randomly initialised) over a vocabulary of just `<pad> <bos> <eos> [SID] [/SID]` and the SID
code tokens reads a user's history as a sequence of SIDs and writes the next item's SID, and
trie-constrained beam search (`decode.beam_search.sid_beam_search`) turns it into a ranked
list of catalog items. (TIGER itself is an encoder-decoder; a decoder-only model over the
same token sequence is the variant that shares NEO's decoding code.)

Sequences: `<bos> [SID] c0 .. c{L-1} [SID] c0 .. [SID]` - each item is `[SID]` and its L
codes; the prompt for a prediction is the last `max_items` history items and an open `[SID]`.
Training windows follow SASRec's (`sasrec.make_windows`): windows of max_items + 1 items (the
prompt's max_items history items and a target) with the loss on the codes of the last `stride`
items, so every training target is predicted once per epoch from at least max_items - stride
+ 1 previous items (all of them near a sequence's start).
Items without a reachable SID (a collision policy dropped them) are left out of the sequences
and counted in `fit`'s facts. Validation, with a validator: its figure (NDCG@10) on the
validation targets after each epoch (early stopping with `patience`, best epoch kept:
`training.train_early_stopping`), a small lr grid (`training.grid_search`), all within
`time_budget_s`.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from neo_jax.catalog.splits import Split
from neo_jax.catalog.types import Dataset
from neo_jax.decode import cache as cache_lib
from neo_jax.decode.beam_search import sid_beam_search
from neo_jax.decode.interface import Constraints, prefill
from neo_jax.decode.trie import (SIDTrie, SIDVocabArrays, allowed_types_mask, request_filter)
from neo_jax.baselines import base
from neo_jax.baselines import training
from neo_jax.catalog import atomic
from neo_jax.catalog import progress
from neo_jax.model.config import ModelConfig
from neo_jax.model.decoder import Decoder
from neo_jax.sid.builder import array_sha256, build_sid_map
from neo_jax.sid.types import SIDMap
from neo_jax.tokenizer.sid_vocab import SIDVocab

PAD, BOS, EOS = 0, 1, 2
SID_BASE = 3  # [SID] = 3, [/SID] = 4, then the code tokens


@dataclasses.dataclass(frozen=True)
class TIGERConfig:
  """Hyperparameters. `lr_grid` is tried in order while `time_budget_s` (seconds of
  training, whole grid) lasts, the first point exempt from it with `whole_first_point` (as in
  SASRecConfig); `num_beams` is the beam width of every ranking (at least k)."""

  max_items: int = 20
  stride: int = 10
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 256
  lr_grid: tuple[float, ...] = (3e-3, 1e-3)
  batch_size: int = 64
  max_epochs: int = 30
  patience: int = 3
  epochs_without_valid: int = 10
  num_beams: int = 30
  eval_batch_size: int = 64
  valid_max_requests: int | None = 500
  time_budget_s: float = 1800.0
  whole_first_point: bool = False
  # SIDs built here when none are given: hashed TF-IDF of the item text, residual k-means.
  sid_levels: int = 3
  sid_k: int = 16
  seed: int = 0

  def __post_init__(self):
    if not 1 <= self.stride <= self.max_items:
      raise ValueError(f'stride must be in [1, max_items={self.max_items}], got {self.stride}')
    if self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2:
      raise ValueError(f'd_model {self.d_model} / num_heads {self.num_heads} must be an even '
                       'integer (RoPE)')
    if not self.lr_grid:
      raise ValueError('lr_grid is empty')


class TIGER(base.Baseline):
  """The TIGER-style baseline (see the module docstring); recommendation only."""

  name = 'tiger'
  tasks = ('recommend',)

  def __init__(self, cfg: TIGERConfig | None = None, sid_map: SIDMap | None = None,
               log: Callable[[str], None] | None = None):
    super().__init__()
    self.cfg = cfg or TIGERConfig()
    self.sid_map = sid_map
    self.log = log or (lambda s: None)
    self.model: Decoder | None = None

  # -- SIDs and sequences ----------------------------------------------------------------------

  def _setup_sids(self, dataset: Dataset, split: Split) -> dict[str, Any]:
    catalog = dataset.catalog
    facts: dict[str, Any] = {}
    if self.sid_map is None:
      from neo_jax.sid import job as sid_job  # pylint: disable=g-import-not-at-top
      emb, enc_name = sid_job.embed(catalog, 'tfidf', seed=self.cfg.seed, progress=False)
      popularity = np.bincount(base.train_rows(split), minlength=len(catalog))
      self.sid_map, report = build_sid_map(
          catalog, emb, levels=self.cfg.sid_levels, k=self.cfg.sid_k, collision='disambiguate',
          popularity=popularity.astype(np.float64), seed=self.cfg.seed,
          encoder_name=enc_name)
      facts['sid_collision_rate'] = report['collision_rate']
    if len(self.sid_map) != len(catalog) or self.sid_map.type_names != catalog.type_names:
      raise ValueError(f'the SID map covers {len(self.sid_map)} items of types '
                       f'{self.sid_map.type_names}; the catalog has {len(catalog)} of '
                       f'{catalog.type_names}')
    self.vocab = SIDVocab(self.sid_map.type_names, self.sid_map.level_sizes, base=SID_BASE)
    self.vocab_arrays = SIDVocabArrays.from_vocab(self.vocab)
    self.trie = SIDTrie.build(self.sid_map, self.vocab)
    codes = np.asarray(self.sid_map.codes, np.int64)
    self.reachable = codes[:, 0] >= 0
    offsets = np.asarray(self.vocab.offsets_TxL, np.int64)[np.asarray(self.sid_map.type_index)]
    # (N, 1 + L): `[SID]` and the item's code tokens (rows of unreachable items are unused).
    self.item_tokens = np.concatenate(
        [np.full((len(catalog), 1), self.vocab.sid_open_id, np.int64),
         np.where(self.reachable[:, None], offsets + codes, PAD)], 1).astype(np.int32)
    facts['unreachable_items'] = int((~self.reachable).sum())
    return facts

  def _known(self, seq: np.ndarray) -> np.ndarray:
    seq = np.asarray(seq, np.int64)
    return seq[self.reachable[seq]]

  @property
  def _item_len(self) -> int:
    return 1 + self.sid_map.num_levels

  def _windows(self, sequences) -> tuple[np.ndarray, np.ndarray]:
    """Training token windows: (W, 1 + (max_items + 1) * item_len) int32 tokens (right-padded),
    the (W, same) bool loss mask on the target code tokens (next-token targets)."""
    cfg, il = self.cfg, self._item_len
    width = 1 + (cfg.max_items + 1) * il
    toks, masks = [], []
    for seq in sequences:
      seq = self._known(seq)
      # Window ending at item `end` (its last target): items [end - max_items, end].
      for end in range(seq.size - 1, 0, -cfg.stride):
        lo = max(0, end - cfg.max_items)
        items = seq[lo:end + 1]
        t = np.full(width, PAD, np.int32)
        t[0] = BOS
        t[1:1 + items.size * il] = self.item_tokens[items].reshape(-1)
        m = np.zeros(width, bool)
        first_target = max(end - cfg.stride + 1, 1)  # item 0 of a sequence is never a target
        for j in range(first_target, end + 1):
          start = 1 + (j - lo) * il + 1  # the codes of item j, after its `[SID]`
          m[start:start + il - 1] = True
        toks.append(t)
        masks.append(m)
    if not toks:
      raise ValueError('no training sequence has two or more items with SIDs: nothing to learn')
    return np.stack(toks), np.stack(masks)

  def _prompts(self, histories) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left-padded prompts `<bos> items [SID]`: tokens, positions, valid (B, width)."""
    cfg = self.cfg
    width = 2 + cfg.max_items * self._item_len
    prompts = []
    for h in histories:
      items = self._known(h)[-cfg.max_items:]
      prompts.append([BOS] + self.item_tokens[items].reshape(-1).tolist() +
                     [self.vocab.sid_open_id])
    return cache_lib.left_pad(prompts, PAD, width)

  # -- training --------------------------------------------------------------------------------

  def _model_config(self) -> ModelConfig:
    cfg = self.cfg
    return ModelConfig(vocab_size=int(self.vocab.end), d_model=cfg.d_model,
                       num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                       num_kv_heads=cfg.num_heads, head_dim=cfg.d_model // cfg.num_heads,
                       mlp_dim=cfg.mlp_dim, tie_embeddings=True,
                       max_seq_len=1 + (cfg.max_items + 1) * self._item_len)

  def _train_one(self, lr: float, windows, validator: base.Validation | None,
                 deadline: float | None) -> tuple[Any, training.TrainResult]:
    """Trains at one learning rate: (graphdef, the result with the kept state)."""
    cfg = self.cfg
    graphdef, state = nnx.split(Decoder(self._model_config(), rngs=nnx.Rngs(params=cfg.seed)))

    def loss_fn(state, tok, msk):
      logits = nnx.merge(graphdef, state)(tok[:, :-1])
      per = optax.softmax_cross_entropy_with_integer_labels(logits, tok[:, 1:])
      m = msk[:, 1:]
      return jnp.sum(per * m) / jnp.maximum(jnp.sum(m), 1)

    def install(state):
      self.model = nnx.merge(graphdef, state)

    evaluate, metric = training.recommend_validation(validator, cfg.valid_max_requests,
                                                     cfg.seed, install, self.rank_recommend)
    result = training.train_early_stopping(
        loss_fn, state, windows, lr=lr, batch_size=cfg.batch_size, seed=cfg.seed,
        epochs=cfg.max_epochs if evaluate is not None else cfg.epochs_without_valid,
        patience=cfg.patience, evaluate=evaluate, metric=metric, deadline=deadline,
        label=f'tiger lr={lr}', log=self.log)
    return graphdef, result

  def _fit(self, dataset, split, validator):
    facts = self._setup_sids(dataset, split)
    windows = self._windows(list(split.train.values()))
    facts.update(train_windows=int(windows[0].shape[0]),
                 train_code_tokens=int(windows[1].sum()))
    if validator is None:
      graphdef, r = self._train_one(self.cfg.lr_grid[0], windows, None, None)
      self.model = nnx.merge(graphdef, r.state)
      facts.update(lr=self.cfg.lr_grid[0], epochs=r.epochs)
      return facts
    if not validator.targets:
      raise ValueError('fit with a validator needs validation targets; it has none')
    key = f'valid_{validator.metric}'
    tried, (lr, graphdef, r) = training.grid_search(
        self.cfg.lr_grid, lambda lr, deadline: self._train_one(lr, windows, validator, deadline),
        self.cfg.time_budget_s, whole_first=self.cfg.whole_first_point, label='tiger',
        log=self.log)
    for point_lr, _, pr in tried:
      facts[f'{key}/lr={point_lr}'] = pr.score
      facts[f'best_epoch/lr={point_lr}'] = pr.best_epoch
    self.model = nnx.merge(graphdef, r.state)
    self.curves = r.history
    facts.update({key: r.score, 'lr': lr, 'best_epoch': r.best_epoch,
                  'grid_points_tried': len(tried)})
    facts.update(training.stop_facts(r, len(tried), len(self.cfg.lr_grid)))
    return facts

  # -- a fitted model handed to another process ------------------------------------------------

  def save(self, directory: str) -> None:
    """Writes the fitted model to `directory`: `tiger.npz` (its parameters, in the order of
    `nnx.split`) and `tiger.json` (the config, the fit facts, the parameter paths and the
    SID map's shape, which `load` checks)."""
    if self.model is None:
      raise RuntimeError('tiger: call fit first')
    leaves = jax.tree_util.tree_flatten_with_path(nnx.split(self.model)[1])[0]
    buf = io.BytesIO()
    np.savez(buf, *[np.asarray(leaf) for _, leaf in leaves])
    atomic.write_bytes(os.path.join(directory, 'tiger.npz'), buf.getvalue())
    atomic.write_json(os.path.join(directory, 'tiger.json'), atomic.json_safe({
        'config': dataclasses.asdict(self.cfg), 'fit_facts': self.fit_facts,
        'params': [jax.tree_util.keystr(path) for path, _ in leaves],
        'sid_map': _sid_shape(self.sid_map)}))

  @classmethod
  def load(cls, directory: str, dataset: Dataset, split: Split, sid_map: SIDMap,
           log: Callable[[str], None] | None = None) -> 'TIGER':
    """The model `save` wrote to `directory`, ready to rank for `dataset` / `split` (the
    ones it was fitted on) with `sid_map` (the one it was fitted with); `fit_facts` as the
    fit returned them.

    Raises:
      ValueError: `sid_map` or the parameters are not those of the saved model.
    """
    with atomic.open_text(os.path.join(directory, 'tiger.json')) as f:
      meta = json.load(f)
    cfg = meta['config']
    b = cls(TIGERConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}),
            sid_map, log)
    if meta['sid_map'] != _sid_shape(sid_map):
      raise ValueError(f'{directory}: the saved TIGER was fitted with a SID map of shape '
                       f"{meta['sid_map']}, not {_sid_shape(sid_map)}")
    b.catalog, b.split, b.fit_facts = dataset.catalog, split, meta['fit_facts']
    b._setup_sids(dataset, split)  # pylint: disable=protected-access
    graphdef, state = nnx.split(Decoder(b._model_config(), rngs=nnx.Rngs(params=0)))  # pylint: disable=protected-access
    paths, treedef = jax.tree_util.tree_flatten_with_path(state)
    if [jax.tree_util.keystr(p) for p, _ in paths] != meta['params']:
      raise ValueError(f'{directory}: the saved parameters are not those of this TIGER config')
    with np.load(atomic.for_reading(os.path.join(directory, 'tiger.npz'))) as z:
      saved = [z[f'arr_{i}'] for i in range(len(paths))]
    for (path, leaf), value in zip(paths, saved):
      if leaf.shape != value.shape:
        raise ValueError(f'{directory}: parameter {jax.tree_util.keystr(path)} has shape '
                         f'{value.shape}, this config {leaf.shape}')
    b.model = nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, saved))
    return b

  # -- ranking ---------------------------------------------------------------------------------

  @functools.partial(jax.jit, static_argnames=('self', 'graphdef', 'num_beams'))
  def _search(self, graphdef, state, trie, tokens, positions, valid, allowed, request,
              num_beams):
    model = nnx.merge(graphdef, state)
    cache = model.init_cache(tokens.shape[0], tokens.shape[1] + trie.num_levels)
    pre, cache = prefill(model, cache, tokens, positions, valid)
    constraints = Constraints(trie=trie, vocab=self.vocab_arrays, allowed_types_BxT=allowed,
                              request=request)
    return sid_beam_search(model, cache, pre, constraints, num_beams)

  def rank_recommend(self, requests, target_types, k, *, exclude=None):
    """(N, k) int32 items by beam search (width max(k, cfg.num_beams)), -1 padded."""
    if self.model is None:
      raise RuntimeError('tiger: call fit first')
    if len(requests) != len(target_types):
      raise ValueError(f'{len(requests)} requests but {len(target_types)} target types')
    if exclude is not None and len(exclude) != len(requests):
      raise ValueError(f'{len(requests)} requests but {len(exclude)} exclusion sets')
    hist = self.histories(requests)
    beams = max(int(k), self.cfg.num_beams)
    graphdef, state = nnx.split(self.model)
    allowed = allowed_types_mask(self.vocab.type_names, list(target_types))
    bs = self.cfg.eval_batch_size
    # One exclusion width for every batch (a power of two): one compiled search.
    width = 1 << max(0, max([len(e) for e in exclude] + [1]) - 1).bit_length() if exclude \
        else None
    out = np.full((len(hist), k), -1, np.int32)
    starts = range(0, len(hist), bs)
    for start in progress.track(starts, 'tiger ranking', unit='batches', log=self.log):
      chunk = hist[start:start + bs]
      real = len(chunk)
      chunk = chunk + [np.zeros(0, np.int64)] * (bs - real)
      tokens, positions, valid = self._prompts(chunk)
      allow = np.concatenate([allowed[start:start + real], np.ones((bs - real, allowed.shape[1]),
                                                                   bool)])
      request = None
      if exclude is not None:
        excl = [list(e) for e in exclude[start:start + real]] + [[]] * (bs - real)
        request = request_filter(self.trie, excluded=excl, width=width)
      items, _ = self._search(graphdef, state, self.trie, jnp.asarray(tokens),
                              jnp.asarray(positions), jnp.asarray(valid), jnp.asarray(allow),
                              request, beams)
      out[start:start + real] = np.asarray(items)[:real, :k]
    return out


def _sid_shape(sid_map: SIDMap) -> dict[str, Any]:
  """What `TIGER.load` checks of a SID map: its items, types, level sizes and codes."""
  return {'items': len(sid_map), 'types': list(sid_map.type_names),
          'levels': {t: [int(n) for n in k] for t, k in sid_map.level_sizes.items()},
          'codes_sha256': array_sha256(np.asarray(sid_map.codes, np.int64))}
