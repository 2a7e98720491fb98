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
and counted in `fit`'s facts. Validation: NDCG@10 on `split.valid` after each epoch (early
stopping with `patience`, best epoch kept), a small lr grid, all within `time_budget_s`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
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
from neo_jax.decode.trie import (SIDTrie, SIDVocabArrays, allowed_types_mask, request_filter)
from neo_jax.baselines import base as baselines
from neo_jax.baselines import sasrec
from neo_jax.model.config import ModelConfig
from neo_jax.model.decoder import Decoder
from neo_jax.sid.builder import build_sid_map
from neo_jax.sid.types import SIDMap
from neo_jax.tokenizer.sid_vocab import SIDVocab

PAD, BOS, EOS = 0, 1, 2
SID_BASE = 3  # [SID] = 3, [/SID] = 4, then the code tokens


@dataclasses.dataclass(frozen=True)
class TIGERConfig:
  """Hyperparameters. `lr_grid` is tried in order while `time_budget_s` (seconds of
  training, whole grid) lasts; `num_beams` is the beam width of every ranking (at least k)."""

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


class TIGER(baselines.Baseline):
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
      popularity = np.bincount(baselines.train_rows(split), minlength=len(catalog))
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

  def _train_one(self, lr: float, windows, split: Split | None, exclude_history: bool,
                 deadline: float | None) -> tuple[Any, dict[str, Any]]:
    cfg = self.cfg
    model = Decoder(self._model_config(), rngs=nnx.Rngs(params=cfg.seed))
    graphdef, state = nnx.split(model)
    tx = optax.adam(lr)
    opt_state = tx.init(state)
    tokens, mask = windows

    def loss_fn(state, tok, msk):
      logits = nnx.merge(graphdef, state)(tok[:, :-1])
      per = optax.softmax_cross_entropy_with_integer_labels(logits, tok[:, 1:])
      m = msk[:, 1:]
      return jnp.sum(per * m) / jnp.maximum(jnp.sum(m), 1)

    @jax.jit
    def step(state, opt_state, tok, msk):
      loss, grads = jax.value_and_grad(loss_fn)(state, tok, msk)
      updates, opt_state = tx.update(grads, opt_state, state)
      return optax.apply_updates(state, updates), opt_state, loss

    rng = np.random.default_rng(cfg.seed)
    n, bs = tokens.shape[0], cfg.batch_size
    epochs = cfg.max_epochs if split is not None else cfg.epochs_without_valid
    best, bad, history = (-1.0, state, 0), 0, []
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
      losses = []
      for idx, real in sasrec.epoch_batches(rng, n, bs):
        state, opt_state, loss = step(state, opt_state, tokens[idx], mask[idx] & real[:, None])
        losses.append(loss)
      mean_loss = float(np.mean(jax.device_get(losses)))
      if not np.isfinite(mean_loss):
        raise FloatingPointError(f'TIGER loss is {mean_loss} at epoch {epoch} (lr {lr})')
      record = {'epoch': epoch, 'loss': mean_loss, 'seconds': time.perf_counter() - t0}
      if split is not None:
        self.model = nnx.merge(graphdef, state)
        valid = baselines.recommend_metrics(
            self, split.valid, ks=(10,), exclude_history=exclude_history,
            max_requests=cfg.valid_max_requests, seed=cfg.seed)
        record.update({'valid_ndcg@10': valid['ndcg@10'], 'valid_hr@10': valid['hr@10']})
        if valid['ndcg@10'] > best[0]:
          best, bad = (valid['ndcg@10'], state, epoch), 0
        else:
          bad += 1
      else:
        best = (float('nan'), state, epoch)
      history.append(record)
      self.log(f'tiger lr={lr} ' + ' '.join(
          f'{k}={v:.4f}' if isinstance(v, float) else f'{k}={v}' for k, v in record.items()))
      if split is not None and bad >= cfg.patience:
        break
      if deadline is not None and time.perf_counter() > deadline:
        break
    return (graphdef, best[1]), {'valid_ndcg@10': best[0], 'best_epoch': best[2],
                                 'epochs': len(history), 'history': history,
                                 'train_seconds': time.perf_counter() - t0}

  def _fit(self, dataset, split, *, valid, valid_queries, exclude_history):
    del valid_queries
    facts = self._setup_sids(dataset, split)
    windows = self._windows(list(split.train.values()))
    facts.update(train_windows=int(windows[0].shape[0]),
                 train_code_tokens=int(windows[1].sum()))
    self._search_fn = None
    if not valid:
      (graphdef, state), f = self._train_one(self.cfg.lr_grid[0], windows, None,
                                             exclude_history, None)
      self.model = nnx.merge(graphdef, state)
      facts.update(lr=self.cfg.lr_grid[0], epochs=f['epochs'])
      return facts
    if not split.valid:
      raise ValueError('fit(valid=True) needs validation targets; the split has none')
    deadline = time.perf_counter() + self.cfg.time_budget_s
    best, tried = None, 0
    for lr in self.cfg.lr_grid:
      if tried and time.perf_counter() > deadline:
        break
      params, f = self._train_one(lr, windows, split, exclude_history, deadline)
      tried += 1
      facts[f'valid_ndcg@10/lr={lr}'] = f['valid_ndcg@10']
      facts[f'best_epoch/lr={lr}'] = f['best_epoch']
      if best is None or f['valid_ndcg@10'] > best[0]:
        best = (f['valid_ndcg@10'], params, lr, f)
    score, (graphdef, state), lr, f = best
    self.model = nnx.merge(graphdef, state)
    self.curves = f['history']
    facts.update({'valid_ndcg@10': score, 'lr': lr, 'best_epoch': f['best_epoch'],
                  'grid_points_tried': tried})
    return facts

  # -- ranking ---------------------------------------------------------------------------------

  @functools.partial(jax.jit, static_argnames=('self', 'graphdef', 'num_beams'))
  def _search(self, graphdef, state, trie, tokens, positions, valid, allowed, request,
              num_beams):
    model = nnx.merge(graphdef, state)
    cache = model.init_cache(tokens.shape[0], tokens.shape[1] + trie.num_levels)
    h, cache = model.decode_hidden(tokens, positions, cache, valid)

    def step_fn(tok, pos, cache, val):
      return model.decode(tok, pos, cache, val)

    return sid_beam_search(step_fn, cache, model.logits_from_hidden(h[:, -1]),
                           positions[:, -1], trie, self.vocab_arrays, num_beams, allowed,
                           request=request)

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
    for start in range(0, len(hist), bs):
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
