"""The stages that prepare a run: data -> split -> SIDs -> tokenizer -> examples -> model.

Each stage is a function of the validated config (`neo_jax.run.config`) that calls the library
with explicit arguments and writes its artifact under the workdir (see WORKSPACE.md):

  load_data        <workdir>/data (synthetic) or <workdir>/tfds (movielens100k); generic
                   data is read where it is
  split_data       the split, the search queries split by item, the held-out summary users,
                   and the view of the data that everything fitted sees (`DataSplit`)
  build_sids       <workdir>/sids/ (the SID map, its manifest, the quality report and plot),
                   from the view
  build_tokenizer  <workdir>/tokenizer/, from the view
  build_examples   training and validation examples (in memory), from the view
  build_model      the decoder over the text vocabulary, extended with the SID rows

In a multi-process job every process runs every stage in memory (the same config and seed),
process 0 alone writes the artifacts, and the others read the dataset it built after a
barrier (`catalog/multihost.py`).

`build_test_examples` is for the SplitGuard alone (the final evaluation). `prepare` runs the
stages in order and returns the `Artifacts` with the examples and the facts of the build
(sizes, timings).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from flax import nnx

from neo_jax.catalog import atomic
from neo_jax.catalog import io as catalog_io
from neo_jax.catalog import multihost
from neo_jax.catalog import synthetic
from neo_jax.catalog import tfds_builders
from neo_jax.catalog import splits as splits_lib
from neo_jax.catalog.splits import Split, make_split
from neo_jax.catalog.types import Dataset
from neo_jax.decode.trie import SIDTrie
from neo_jax.model import backbones
from neo_jax.model import vocab as vocab_lib
from neo_jax.model.config import get_config
from neo_jax.model.decoder import Decoder
from neo_jax.sid import builder as sid_builder
from neo_jax.sid import job as sid_job
from neo_jax.sid.types import SIDMap
from neo_jax.tasks import builders
from neo_jax.tasks import suite
from neo_jax.tasks.types import Example
from neo_jax.tokenizer.base import Tokenizer
from neo_jax.tokenizer.spm import SentencePieceTokenizer, train_sentencepiece

Log = Callable[[str], None]

# The decoder shape keys of the config (0: the preset's value).
_SHAPE_KEYS = ('d_model', 'num_layers', 'num_heads', 'num_kv_heads', 'head_dim', 'mlp_dim')


@dataclasses.dataclass
class Artifacts:
  """What a prepared run holds; `model` and `trie` are set once there is a model to decode."""
  dataset: Dataset
  split: Split
  sid_map: SIDMap
  tokenizer: Tokenizer
  model: Decoder | None = None
  trie: SIDTrie | None = None


# -- data --------------------------------------------------------------------------------------

def dataset_location(cfg: ml_collections.ConfigDict, workdir: str) -> str:
  """Where the dataset of `cfg` lives once built: the generic-format directory (synthetic,
  generic) or the TFDS build folder (movielens100k)."""
  if cfg.data.dataset == 'synthetic':
    return os.path.join(workdir, 'data')
  if cfg.data.dataset == 'movielens100k':
    return os.path.join(workdir, 'tfds', 'movielens100k')
  return cfg.data.data_dir


def load_data(cfg: ml_collections.ConfigDict, workdir: str, log: Log, *, build: bool = True
              ) -> Dataset:
  """The dataset of `cfg.data.dataset` (built into the workdir first when `build` and it is
  not there yet):
    'synthetic'      generated into <workdir>/data (generic format), then read back;
    'movielens100k'  built with TFDS (array_record) into <workdir>/tfds from the files of the
                     installed `recbole` package (or data.data_dir: an official ml-100k.zip
                     or folder), then read back;
    'generic'        the generic-format directory data.data_dir.
  """
  dataset = cfg.data.dataset
  where = dataset_location(cfg, workdir)
  # A multi-process job: process 0 builds, the others read it after the barrier.
  writer = multihost.is_writer()
  if dataset == 'synthetic':
    if build and writer and not atomic.as_path(os.path.join(where, 'items.jsonl')).exists():
      synthetic.write_synthetic(synthetic.SyntheticConfig(**cfg.data.synthetic.to_dict()),
                                where)
    if build:
      multihost.barrier(f'data:{atomic.location(where)}')
    ds = catalog_io.load_dataset(where, on_unknown_item=cfg.data.on_unknown_item)
  elif dataset == 'movielens100k':
    if build and writer and not atomic.as_path(where).exists():
      kwargs = {'source': cfg.data.data_dir} if cfg.data.data_dir else {}
      tfds_builders.build('movielens100k', os.path.dirname(where), **kwargs)
    if build:
      multihost.barrier(f'data:{atomic.location(where)}')
    ds = tfds_builders.load_built(where)
  else:
    ds = catalog_io.load_dataset(where, on_unknown_item=cfg.data.on_unknown_item)
  log(f'data: {len(ds.catalog)} items of types {ds.catalog.type_names}, '
      f'{len(ds.interactions.user_names)} users, {len(ds.interactions)} interactions, '
      f'{len(ds.queries)} queries' + (f'; skipped {ds.skipped}' if ds.skipped else ''))
  return ds


# -- the split: what fitting may see -----------------------------------------------------------

@dataclasses.dataclass
class DataSplit:
  """The data of one experiment, cut once. `view` and `fit_split` are all that anything fitted
  (SIDs and their collaborative encoder, the tokenizer, NEO's examples, the baselines) is
  given: the training events only, the training search queries only, the summaries of the
  users not held out, and the split without its test targets. The full dataset and split,
  the held-out queries and users are for `eval.protocol.SplitGuard` alone, which builds the
  test examples (`build_test_examples`) only when the final evaluation opens the test split.
  """
  dataset: Dataset
  split: Split
  queries: suite.QuerySplit
  summary_heldout: frozenset[str]
  view: Dataset
  fit_split: Split
  facts: dict[str, Any]


def repeated_events(ds: Dataset) -> int:
  """Events whose (user, item) pair occurred before in the data (0: no repeats, so that
  excluding a user's history from a ranking cannot hide a target)."""
  inter = ds.interactions
  pairs = inter.user_index.astype(np.int64) * max(len(ds.catalog), 1) + inter.item_index
  return int(pairs.size - np.unique(pairs).size)


def split_data(cfg: ml_collections.ConfigDict, ds: Dataset, log: Log) -> DataSplit:
  """The split of `cfg.data.split` (ties broken by catalog row), the search queries split by
  item (`tasks.suite.split_search_queries`: no item relevant to a held-out query is relevant
  to a training query), the users whose summaries are held out (a `tasks.summary_heldout_
  fraction` of the users with a test target), and the view fitting sees."""
  t = cfg.tasks
  split, params = make_split(ds.interactions, cfg.data.split)
  queries = suite.split_search_queries(
      ds, valid_fraction=t.query_valid_fraction, test_fraction=t.query_test_fraction,
      max_relevant=t.max_relevant, extra_query_draws=t.extra_query_draws, seed=cfg.seed)
  held = suite.heldout_summary_users([tg.user_id for tg in split.test],
                                     t.summary_heldout_fraction, cfg.seed)
  view = splits_lib.fit_view(ds, split, queries=queries.train, hide_summaries=held)
  facts: dict[str, Any] = {'split/method': cfg.data.split}
  facts.update({f'split/{k}': v for k, v in params.items()})
  facts.update({f'split/skipped/{k}': v for k, v in split.skipped.items()})
  facts.update({'view/train_events': len(view.interactions),
                'view/repeated_events': repeated_events(view),
                'view/heldout_events': len(ds.interactions) - len(view.interactions),
                'view/train_queries': len(queries.train),
                'view/valid_queries': len(queries.valid), 'view/test_queries': len(queries.test),
                'view/summary_users_heldout': len(held), 'view/query_source': queries.source})
  facts.update({f'view/queries_skipped/{k}': v for k, v in queries.skipped.items()})
  log(f'split: {len(split.valid)} valid / {len(split.test)} test targets, '
      f'{facts["view/train_events"]} training events of {len(ds.interactions)}; queries '
      f'{len(queries.train)} train / {len(queries.valid)} valid / {len(queries.test)} test '
      f'(split by item); {len(held)} users\' summaries held out')
  return DataSplit(ds, split, queries, held, view, dataclasses.replace(split, test=[]), facts)


# -- SIDs --------------------------------------------------------------------------------------

def _popularity(ds: Dataset, how: str, train_seqs: list[np.ndarray]) -> np.ndarray | None:
  """Popularity that ranks colliding items (sid.popularity)."""
  if how == 'none':
    return None
  if how == 'all':
    return ds.item_counts().astype(np.float64)
  rows = np.concatenate(train_seqs) if train_seqs else np.zeros(0, int)
  return np.bincount(rows, minlength=len(ds.catalog)).astype(np.float64)


def embeddings_dir(workdir: str) -> str:
  """<workdir>/embeddings: the run's MiniLM embeddings of the catalog text, written by the
  SID build and read by the dense baseline (`sid.features.read_text_embeddings`)."""
  return os.path.join(workdir, 'embeddings')


def embed_items(cfg: ml_collections.ConfigDict, ds: Dataset, split: Split, *,
                progress: bool = True, cache_dir: str | None = None
                ) -> tuple[np.ndarray, str]:
  """(N, D) item embeddings of `cfg.sid.encoder` and the encoder's name ('cf' parts are
  fitted on the training split only). progress: MiniLM's progress lines (a step under 10 s
  prints none; `neo_jax.catalog.progress` turns them off everywhere). cache_dir: where the
  MiniLM part is read from or written to (`sid.job.embed`)."""
  s = cfg.sid
  return sid_job.embed(ds.catalog, s.encoder, tfidf_dim=s.feature_dim, seed=cfg.seed,
                       batch_size=s.encoder_batch_size, progress=progress,
                       sequences=list(split.train.values()), cf_dim=s.cf_dim,
                       cf_window=s.cf_window, cache_dir=cache_dir)


def sid_k(cfg: ml_collections.ConfigDict, catalog) -> int | dict[str, int]:
  """The k-means K of `cfg.sid` for `catalog`: `sid.k`, or with `sid.codes_per_item` > 0
  a K per entity type grown with its size (`sid.builder.grown_k`)."""
  s = cfg.sid
  if float(s.codes_per_item) <= 0:
    return s.k
  return sid_builder.grown_k(catalog, int(s.k), s.levels, float(s.codes_per_item))


def build_sids(cfg: ml_collections.ConfigDict, ds: Dataset, split: Split, workdir: str,
               log: Log, emb: tuple[np.ndarray, str] | None = None
               ) -> tuple[SIDMap, dict[str, Any]]:
  """The SID map of `cfg.sid` (from `emb`, or `embed_items`), written with its quality report
  and plot under <workdir>/sids (the MiniLM embeddings under `embeddings_dir`). Collisions
  are ranked by `cfg.sid.popularity`."""
  t0 = time.perf_counter()
  emb_NxD, encoder_name = emb if emb is not None else embed_items(
      cfg, ds, split, cache_dir=embeddings_dir(workdir))
  s = cfg.sid
  sid_map, report = sid_job.build_and_save(
      ds.catalog, emb_NxD, os.path.join(workdir, 'sids'), levels=s.levels,
      k=sid_k(cfg, ds.catalog), collision=s.collision, iters=s.iters, method=s.method, tol=s.tol,
      batch_size=s.batch_size, minibatch=s.minibatch, shard=s.shard,
      popularity=_popularity(ds, s.popularity, list(split.train.values())),
      encoder_name=encoder_name, seed=cfg.seed)
  log(f'sids: {encoder_name} embeddings, {sid_map.num_levels} levels, sizes '
      f'{sid_map.level_sizes}, collision rate {report["collision_rate"]:.4f}, unreachable '
      f'{report["unreachable_items"]} ({time.perf_counter() - t0:.1f}s)')
  return sid_map, report


# -- tokenizer ---------------------------------------------------------------------------------

def build_tokenizer(cfg: ml_collections.ConfigDict, ds: Dataset, sid_map: SIDMap, workdir: str,
                    log: Log) -> Tokenizer:
  """The text vocabulary + the SID block: the backbone's own byte-level BPE when
  cfg.model.backbone is set, else a sentencepiece model trained on the catalog's text."""
  backbone = cfg.model.backbone
  if backbone:
    tok = backbones.backbone_tokenizer(backbone).with_sids(sid_map.type_names,
                                                           sid_map.level_sizes)
  else:
    # `ds` is the view (DataSplit.view): training queries and summaries only.
    texts = list(builders.tokenizer_corpus(ds.catalog, ds.queries, ds.users.values()))
    proto = train_sentencepiece(texts, vocab_size=cfg.tokenizer.vocab_size,
                                model_type=cfg.tokenizer.model_type, seed=cfg.seed)
    tok = SentencePieceTokenizer.from_sid_map(proto, sid_map)
  if multihost.is_writer():  # every process holds the same tokenizer; process 0 saves it
    tok.save(os.path.join(workdir, 'tokenizer'))
  log(f'tokenizer: {tok.text_vocab_size} text tokens + {tok.sid.size} SID tokens'
      + (f' ({backbone})' if backbone else ''))
  return tok


# -- examples ----------------------------------------------------------------------------------

def build_examples(cfg: ml_collections.ConfigDict, data: DataSplit, sid_map: SIDMap,
                   tok: Tokenizer) -> dict[str, list[Example]]:
  """Grounding examples (catalog metadata, every item), capability (training) examples and
  the validation examples of every task, from the view alone (`tasks.suite.
  build_task_examples`; it refuses a split with test targets)."""
  t = cfg.tasks
  te = suite.build_task_examples(
      data.view, data.fit_split, sid_map, tok.sid, queries=data.queries,
      summary_heldout=data.summary_heldout, history_len=t.history_len,
      train_targets_per_user=t.train_targets_per_user, mixed_fraction=t.mixed_fraction,
      max_relevant=t.max_relevant, history_window=t.history_window,
      history_context=t.history_context, grounding_text=t.grounding_text,
      title_repeats=t.title_repeats, seed=cfg.seed)
  return {'grounding': te.grounding, 'capability': te.capability, **te.eval}


def build_test_examples(cfg: ml_collections.ConfigDict, data: DataSplit, sid_map: SIDMap,
                        tok: Tokenizer) -> dict[str, list[Example]]:
  """The test examples (rec_test, explain_test, search_test, summary_test on the held-out
  users): called by the SplitGuard when the final evaluation opens the test split, and by
  `workdir.load_run(examples=True)`."""
  heldout = suite.HeldOut(test_queries=list(data.queries.test),
                          summary_users=data.summary_heldout)
  return suite.build_test_examples(heldout, data.split.test, data.dataset.catalog,
                                   data.dataset.users, sid_map, tok.sid,
                                   history_len=cfg.tasks.history_len, seed=cfg.seed)


# -- model -------------------------------------------------------------------------------------

def build_model(cfg: ml_collections.ConfigDict, tok: Tokenizer) -> Decoder:
  """The decoder over the text vocabulary, extended with the SID rows (initialised as
  `sid_init` says). With cfg.model.backbone the text part is the pretrained checkpoint;
  otherwise (or with cfg.model.random_init, the ablation: the backbone's tokenizer and shape,
  random weights) a randomly initialised decoder of cfg.model.preset with the shape keys that
  are not 0."""
  m = cfg.model
  seed = int(cfg.seed) + int(cfg.train.seed_offset)  # run.training.train_seed
  backbone = '' if m.random_init else m.backbone
  if backbone:
    model, _ = backbones.load_backbone(backbone, dtype=m.dtype, param_dtype=m.param_dtype,
                                       remat=m.remat)
    if model.cfg.vocab_size != tok.text_vocab_size:
      raise ValueError(f'backbone {backbone!r} has {model.cfg.vocab_size} embedding rows but '
                       f'its tokenizer {tok.text_vocab_size} text tokens')
  else:
    shape = {k: m[k] for k in _SHAPE_KEYS if m[k]}
    mcfg = get_config(m.preset, **shape, dtype=m.dtype, param_dtype=m.param_dtype,
                      remat=m.remat, vocab_size=tok.text_vocab_size)
    model = Decoder(mcfg, rngs=nnx.Rngs(seed))
  noise = 1.0 if sid_init(cfg) == 'random' else 0.01
  vocab_lib.extend_vocab(model, tok.vocab_size, init='mean', noise_scale=noise,
                         rng=jax.random.key(seed + 1))
  return model


def sid_init(cfg: ml_collections.ConfigDict) -> str:
  """`model.sid_init` resolved: 'auto' is 'random' when the decoder starts from random
  weights (no backbone, or `model.random_init`), else 'mean'. 'random' draws every SID row
  from the text rows' per-dimension mean and spread (`vocab.extend_vocab`, noise_scale 1), so
  the SID rows start as distinct as any other rows of a random decoder; 'mean' starts them
  at the text rows' mean with 1% of their spread, so a pretrained backbone is not disturbed."""
  how = cfg.model.sid_init
  if how == 'auto':
    return 'random' if (not cfg.model.backbone or cfg.model.random_init) else 'mean'
  return how


# -- all of it ---------------------------------------------------------------------------------

def prepare(cfg: ml_collections.ConfigDict, workdir: str, log: Log = print, *,
            with_model: bool = True, dataset: Dataset | None = None
            ) -> tuple[Artifacts, DataSplit, dict[str, list[Example]], dict[str, Any]]:
  """Data (`dataset` when the caller loaded it already), split, SIDs, tokenizer, training and
  validation examples (and the untrained model) under `workdir`. Returns the artifacts (their
  dataset and split are the view: `DataSplit`), the data split (for the SplitGuard, which
  alone builds the test examples), the examples and the flat facts of the build."""
  t0 = time.perf_counter()
  ds = dataset if dataset is not None else load_data(cfg, workdir, log)
  data = split_data(cfg, ds, log)
  facts: dict[str, Any] = dict(data.facts)
  facts['seconds_data'] = time.perf_counter() - t0

  t0 = time.perf_counter()
  sid_map, sid_report = build_sids(cfg, data.view, data.fit_split, workdir, log)
  facts['seconds_sids'] = time.perf_counter() - t0

  t0 = time.perf_counter()
  tok = build_tokenizer(cfg, data.view, sid_map, workdir, log)
  examples = build_examples(cfg, data, sid_map, tok)
  facts['seconds_tokenizer_examples'] = time.perf_counter() - t0
  log('examples: ' + ', '.join(f'{k} {len(v)}' for k, v in examples.items()))
  facts.update({
      'sid/collision_rate': sid_report['collision_rate'],
      'sid/unreachable_items': sid_report['unreachable_items'],
      'num_items': len(ds.catalog), 'num_users': len(ds.interactions.user_names)})
  model = None
  if with_model:
    model = build_model(cfg, tok)
    facts['num_params'] = vocab_lib.count_params(model)
    log(f'model: {facts["num_params"]:,} parameters, vocab {model.cfg.vocab_size}')
  return Artifacts(data.view, data.fit_split, sid_map, tok, model), data, examples, facts
