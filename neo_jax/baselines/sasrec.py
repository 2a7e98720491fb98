"""SASRec (Kang & McAuley, 2018) in JAX/Flax NNX: the sequential-recommendation baseline.

The standard recipe: learned item and position embeddings, a stack of causal self-attention
blocks (multi-head attention and a GELU feed-forward layer, each with dropout, a residual
connection and layer norm after it, as RecBole writes it), and the item embedding table
reused as the output layer, so an item's score after a history is <h_last, e_item>.
Defaults are RecBole 1.2.1's SASRec settings (hidden 64, 2 blocks, 2 heads, inner 256, dropout
0.5, lr 1e-3, Adam, max_len 50; use 200 for ML-1M) with two losses:
  'ce'   full softmax over every catalog item at every training position (RecBole's default);
  'bce'  binary cross-entropy of the positive against one sampled negative per position (Kang
         & McAuley); negatives are uniform over the catalog minus the positive (the original
         also avoids the user's other items).

Training examples. Each user's training sequence is cut into windows of `max_len` inputs,
left-padded, so the newest item sits at the last position (as in the original): a window
ending at target j holds items j-max_len .. j-1 as inputs and j-max_len+1 .. j as targets, and
only its last `stride` targets carry loss. Windows step by `stride`, so every training target
is predicted exactly once per epoch, each from at least max_len - stride + 1 previous items
(or all of them near the start). stride=1 is RecBole's "every prefix" augmentation; stride =
max_len is the cheapest (most targets then see a shorter context).

Validation protocol: the model trains on `split.train` only; with a validator
(`fit(..., validator=...)`) it is evaluated on the validation targets (full ranking, the
validator's figure, NDCG@10) after every epoch, keeps the best epoch's parameters and stops
after `patience` epochs without improvement (`training.train_early_stopping`); a small grid
(dropout x lr) is tried the same way and the best validation figure wins
(`training.grid_search`). The test split is never read.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from neo_jax.baselines import base
from neo_jax.baselines import training
from neo_jax.catalog import progress

NEG_INF = -1e9  # finite: a query row with every key masked gets a uniform softmax, not NaN
LOSSES = ('ce', 'bce')


@dataclasses.dataclass(frozen=True)
class SASRecConfig:
  """Hyperparameters. Units: `lr` per Adam step, `batch_size` in windows, `time_budget_s`
  seconds of training for the whole tuning grid (a grid point starts only while time is
  left; each runs to early stopping or `max_epochs`, or stops at the budget's end unless
  `whole_first_point` exempts the first point from it: then a slower machine tries fewer
  grid points but trains the first as long as a fast one)."""

  max_len: int = 50
  hidden: int = 64
  num_blocks: int = 2
  num_heads: int = 2
  inner: int = 256
  dropout: float = 0.5
  loss: str = 'ce'
  lr: float = 1e-3
  batch_size: int = 128
  stride: int = 10
  max_epochs: int = 50
  patience: int = 3
  # Epochs trained when fit gets no validator, i.e. without early stopping.
  epochs_without_valid: int = 10
  grid: tuple[tuple[float, float], ...] = ((0.5, 1e-3), (0.2, 1e-3), (0.5, 3e-3),
                                           (0.2, 3e-3))
  time_budget_s: float = 1800.0
  whole_first_point: bool = False
  valid_max_requests: int | None = None
  eval_batch_size: int = 256
  seed: int = 0

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise ValueError(f'unknown SASRec loss {self.loss!r}; known: {LOSSES}')
    if self.hidden % self.num_heads:
      raise ValueError(f'hidden {self.hidden} is not divisible by num_heads {self.num_heads}')
    if not 1 <= self.stride <= self.max_len:
      raise ValueError(f'stride must be in [1, max_len={self.max_len}], got {self.stride}')
    for name in ('max_len', 'hidden', 'num_blocks', 'inner', 'batch_size', 'max_epochs',
                 'patience'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
    if not 0 <= self.dropout < 1:
      raise ValueError(f'dropout must be in [0, 1), got {self.dropout}')


def _init(rngs: nnx.Rngs, shape) -> nnx.Param:
  return nnx.Param(0.02 * jax.random.normal(rngs.params(), shape, jnp.float32))


class Block(nnx.Module):
  """Causal multi-head self-attention, then a feed-forward layer; post-LN residuals."""

  def __init__(self, cfg: SASRecConfig, rngs: nnx.Rngs):
    d, h = cfg.hidden, cfg.num_heads
    self.num_heads = h
    self.wq = _init(rngs, (d, h, d // h))
    self.wk = _init(rngs, (d, h, d // h))
    self.wv = _init(rngs, (d, h, d // h))
    self.bq = nnx.Param(jnp.zeros((h, d // h)))
    self.bk = nnx.Param(jnp.zeros((h, d // h)))
    self.bv = nnx.Param(jnp.zeros((h, d // h)))
    self.wo = _init(rngs, (h, d // h, d))
    self.bo = nnx.Param(jnp.zeros((d,)))
    self.w1 = _init(rngs, (d, cfg.inner))
    self.b1 = nnx.Param(jnp.zeros((cfg.inner,)))
    self.w2 = _init(rngs, (cfg.inner, d))
    self.b2 = nnx.Param(jnp.zeros((d,)))
    self.ln1 = nnx.LayerNorm(d, epsilon=1e-12, rngs=rngs)
    self.ln2 = nnx.LayerNorm(d, epsilon=1e-12, rngs=rngs)
    self.drop = nnx.Dropout(cfg.dropout)

  def __call__(self, x_BxLxD, mask_BxLxL, *, deterministic: bool, keys):
    q = jnp.einsum('BLD,DNH->BLNH', x_BxLxD, self.wq[...]) + self.bq[...]
    k = jnp.einsum('BLD,DNH->BLNH', x_BxLxD, self.wk[...]) + self.bk[...]
    v = jnp.einsum('BLD,DNH->BLNH', x_BxLxD, self.wv[...]) + self.bv[...]
    logits = jnp.einsum('BQNH,BKNH->BNQK', q, k) / math.sqrt(q.shape[-1])
    logits = jnp.where(mask_BxLxL[:, None], logits, NEG_INF)
    probs = self.drop(jax.nn.softmax(logits, -1), deterministic=deterministic, rngs=keys[0])
    att = jnp.einsum('BNQK,BKNH->BQNH', probs, v)
    att = jnp.einsum('BLNH,NHD->BLD', att, self.wo[...]) + self.bo[...]
    x = self.ln1(x_BxLxD + self.drop(att, deterministic=deterministic, rngs=keys[1]))
    ff = jax.nn.gelu(x @ self.w1[...] + self.b1[...], approximate=False)
    ff = ff @ self.w2[...] + self.b2[...]
    return self.ln2(x + self.drop(ff, deterministic=deterministic, rngs=keys[2]))


class SASRecNet(nnx.Module):
  """Item ids are catalog rows + 1; id 0 is padding."""

  def __init__(self, num_items: int, cfg: SASRecConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.item_emb = _init(rngs, (num_items + 1, cfg.hidden))
    self.pos_emb = _init(rngs, (cfg.max_len, cfg.hidden))
    self.ln = nnx.LayerNorm(cfg.hidden, epsilon=1e-12, rngs=rngs)
    self.drop = nnx.Dropout(cfg.dropout)
    self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_blocks)])

  def __call__(self, ids_BxL: jax.Array, *, deterministic: bool = True,
               key: jax.Array | None = None) -> jax.Array:
    """(B, L) int32 item ids (0 = padding) -> (B, L, hidden): position t sees ids[:, :t+1]."""
    if not deterministic and key is None:
      raise ValueError('training mode (deterministic=False) needs a dropout key')
    keys = (jax.random.split(key, 1 + 3 * len(self.blocks)) if key is not None
            else [None] * (1 + 3 * len(self.blocks)))
    length = ids_BxL.shape[1]
    x = self.item_emb[...][ids_BxL] + self.pos_emb[...][:length][None]
    x = self.drop(self.ln(x), deterministic=deterministic, rngs=keys[0])
    valid = ids_BxL > 0
    causal = jnp.tril(jnp.ones((length, length), bool))
    # A padding query attends to itself only: with every key masked its softmax would be
    # uniform over all positions, future ones included.
    mask = causal[None] & (valid[:, None, :] | jnp.eye(length, dtype=bool)[None])
    for i, block in enumerate(self.blocks):
      x = block(x, mask, deterministic=deterministic, keys=keys[1 + 3 * i:4 + 3 * i])
    return x

  def item_table(self) -> jax.Array:
    """(num_items, hidden): the output embedding of every catalog row."""
    return self.item_emb[...][1:]


def make_windows(sequences: Sequence[np.ndarray], max_len: int, stride: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Training windows (see the module docstring) of catalog-row sequences.

  Returns inputs (W, max_len) int32 ids, targets (W, stride) int32 ids (ids = rows + 1, 0 =
  padding) and mask (W, stride) bool: target p of a window is the id after input position
  max_len - stride + p, and carries loss where mask is True.
  """
  inputs, targets, masks = [], [], []
  for seq in sequences:
    ids = np.asarray(seq, np.int64) + 1
    for end in range(ids.size - 1, 0, -stride):  # `end`: index of the window's last target
      lo = max(0, end - max_len)
      inp = np.zeros(max_len, np.int32)
      inp[max_len - (end - lo):] = ids[lo:end]
      tgt = np.zeros(max_len, np.int32)
      tgt[max_len - (end - lo):] = ids[lo + 1:end + 1]
      inputs.append(inp)
      targets.append(tgt[-stride:])
      masks.append(tgt[-stride:] > 0)
  if not inputs:
    raise ValueError('no training sequence has two or more items: nothing to learn')
  return np.stack(inputs), np.stack(targets), np.stack(masks)


def left_pad(histories: Sequence[np.ndarray], max_len: int) -> np.ndarray:
  """(B, max_len) int32 ids (rows + 1) of each history's last max_len items, left-padded."""
  out = np.zeros((len(histories), max_len), np.int32)
  for b, h in enumerate(histories):
    h = np.asarray(h, np.int64)[-max_len:]
    if h.size:
      out[b, max_len - h.size:] = h + 1
  return out


class SASRec(base.Baseline):
  """The SASRec baseline (see the module docstring); recommendation only."""

  name = 'sasrec'
  tasks = ('recommend',)

  def __init__(self, cfg: SASRecConfig | None = None, log: Callable[[str], None] | None = None):
    super().__init__()
    self.cfg = cfg or SASRecConfig()
    self.log = log or (lambda s: None)
    self.net: SASRecNet | None = None

  # -- training --------------------------------------------------------------------------------

  def _loss_fn(self, cfg: SASRecConfig, graphdef, num_items: int):
    """loss_fn(state, inputs, targets, mask, key) -> mean loss over the masked targets of
    (B, max_len) input ids and (B, stride) target ids (`make_windows`)."""
    stride = cfg.stride

    def loss_fn(state, inp, tgt, msk, key):
      model = nnx.merge(graphdef, state)
      dkey, nkey = jax.random.split(key)
      h = model(inp, deterministic=False, key=dkey)[:, -stride:]  # (B, S, D)
      table = model.item_emb[...]
      if cfg.loss == 'ce':
        logits = jnp.einsum('BSD,ND->BSN', h, table[1:])
        gold = jnp.take_along_axis(logits, jnp.maximum(tgt - 1, 0)[..., None], -1)[..., 0]
        per = jax.nn.logsumexp(logits, -1) - gold
      else:
        # One negative per position, uniform over the other items: draw from N - 1 rows and
        # skip the positive.
        neg = jax.random.randint(nkey, tgt.shape, 1, num_items)
        neg = jnp.where(neg >= tgt, neg + 1, neg)
        pos_s = jnp.einsum('BSD,BSD->BS', h, table[tgt])
        neg_s = jnp.einsum('BSD,BSD->BS', h, table[neg])
        per = -jax.nn.log_sigmoid(pos_s) - jax.nn.log_sigmoid(-neg_s)
      return jnp.sum(per * msk) / jnp.maximum(jnp.sum(msk), 1)

    return loss_fn

  def _train_one(self, cfg: SASRecConfig, num_items: int, windows,
                 validator: base.Validation | None, deadline: float | None
                 ) -> tuple[Any, training.TrainResult]:
    """Trains one configuration: (graphdef, the result with the kept state)."""
    graphdef, state = nnx.split(SASRecNet(num_items, cfg, nnx.Rngs(params=cfg.seed)))
    def install(state):
      self.net = nnx.merge(graphdef, state)

    evaluate, metric = training.recommend_validation(validator, cfg.valid_max_requests,
                                                     cfg.seed, install, self.rank_recommend)
    result = training.train_early_stopping(
        self._loss_fn(cfg, graphdef, num_items), state, windows, lr=cfg.lr,
        batch_size=cfg.batch_size, seed=cfg.seed,
        epochs=cfg.max_epochs if evaluate is not None else cfg.epochs_without_valid,
        patience=cfg.patience, evaluate=evaluate, metric=metric, deadline=deadline,
        dropout_keys=True, label=f'sasrec dropout={cfg.dropout} lr={cfg.lr}', log=self.log)
    return graphdef, result

  def _fit(self, dataset, split, validator):
    cfg = self.cfg
    num_items = len(dataset.catalog)
    windows = make_windows([s for s in split.train.values()], cfg.max_len, cfg.stride)
    facts: dict[str, Any] = {'train_windows': int(windows[0].shape[0]),
                             'train_targets': int(windows[2].sum())}
    if validator is None:
      graphdef, r = self._train_one(cfg, num_items, windows, None, None)
      self.net = nnx.merge(graphdef, r.state)
      facts.update(dropout=cfg.dropout, lr=cfg.lr, epochs=r.epochs, train_seconds=r.seconds)
      return facts
    if not validator.targets:
      raise ValueError('fit with a validator needs validation targets; it has none')
    key = f'valid_{validator.metric}'
    points = [dataclasses.replace(cfg, dropout=dropout, lr=lr) for dropout, lr in cfg.grid]
    tried, (point, graphdef, r) = training.grid_search(
        points, lambda p, deadline: self._train_one(p, num_items, windows, validator, deadline),
        cfg.time_budget_s, whole_first=cfg.whole_first_point, label='sasrec', log=self.log)
    for p, _, pr in tried:
      facts[f'{key}/dropout={p.dropout},lr={p.lr}'] = pr.score
      facts[f'best_epoch/dropout={p.dropout},lr={p.lr}'] = pr.best_epoch
      facts[f'train_seconds/dropout={p.dropout},lr={p.lr}'] = pr.seconds
    self.net = nnx.merge(graphdef, r.state)
    self.curves = r.history
    facts.update({key: r.score, 'dropout': point.dropout, 'lr': point.lr,
                  'best_epoch': r.best_epoch, 'grid_points_tried': len(tried)})
    facts.update(training.stop_facts(r, len(tried), len(points)))
    return facts

  # -- inference -------------------------------------------------------------------------------

  def recommend_scores(self, histories):
    if self.net is None:
      raise RuntimeError('sasrec: call fit first')
    graphdef = nnx.graphdef(self.net)
    if getattr(self, '_score_graphdef', None) != graphdef:

      @jax.jit
      def score(state, ids):
        net = nnx.merge(graphdef, state)
        return net(ids)[:, -1] @ net.item_table().T

      self._score_fn, self._score_graphdef = score, graphdef
    state = nnx.state(self.net)
    ids = left_pad(histories, self.cfg.max_len)
    bs = self.cfg.eval_batch_size
    out = []
    starts = range(0, ids.shape[0], bs)
    for start in progress.track(starts, 'sasrec scoring', unit='batches', log=self.log):
      chunk = ids[start:start + bs]
      real = chunk.shape[0]
      chunk = np.concatenate([chunk, np.zeros((bs - real, chunk.shape[1]), np.int32)])
      out.append(np.asarray(self._score_fn(state, chunk))[:real])
    return np.concatenate(out) if out else np.zeros((0, len(self._fitted())), np.float32)
