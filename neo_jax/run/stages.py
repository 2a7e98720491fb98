"""The stages that prepare a run: data -> split -> SIDs -> tokenizer -> examples -> model.

Each stage is a function of the validated config (`neo_jax.run.config`) that calls the library
with explicit arguments and writes its artifact under the workdir (see WORKSPACE.md):

  load_data        <workdir>/data (synthetic) or <workdir>/tfds (movielens100k); generic
                   data is read where it is
  build_sids       <workdir>/sids/ (the SID map, its manifest, the quality report and plot)
  build_tokenizer  <workdir>/tokenizer/
  build_examples   every task's examples (in memory)
  build_model      the decoder over the text vocabulary, extended with the SID rows

`prepare` runs them in order and returns the `Artifacts` with the examples and the facts of the
build (sizes, timings).
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

from neo_jax.catalog import io as catalog_io
from neo_jax.catalog import synthetic
from neo_jax.catalog import tfds_builders
from neo_jax.catalog.splits import Split, make_split
from neo_jax.catalog.types import Dataset
from neo_jax.decode.trie import SIDTrie
from neo_jax.model import backbones
from neo_jax.model import vocab as vocab_lib
from neo_jax.model.config import get_config
from neo_jax.model.decoder import Decoder
from neo_jax.sid import job as sid_job
from neo_jax.sid.types import SIDMap
from neo_jax.tasks import prompts
from neo_jax.tasks.suite import build_task_examples
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
  if dataset == 'synthetic':
    if build and not os.path.exists(os.path.join(where, 'items.jsonl')):
      synthetic.write_synthetic(synthetic.SyntheticConfig(**cfg.data.synthetic.to_dict()),
                                where)
    ds = catalog_io.load_dataset(where, on_unknown_item=cfg.data.on_unknown_item)
  elif dataset == 'movielens100k':
    if build and not os.path.exists(where):
      kwargs = {'source': cfg.data.data_dir} if cfg.data.data_dir else {}
      tfds_builders.build('movielens100k', os.path.dirname(where), **kwargs)
    ds = tfds_builders.load_built(where)
  else:
    ds = catalog_io.load_dataset(where, on_unknown_item=cfg.data.on_unknown_item)
  log(f'data: {len(ds.catalog)} items of types {ds.catalog.type_names}, '
      f'{len(ds.interactions.user_names)} users, {len(ds.interactions)} interactions, '
      f'{len(ds.queries)} queries' + (f'; skipped {ds.skipped}' if ds.skipped else ''))
  return ds


# -- SIDs --------------------------------------------------------------------------------------

def _popularity(ds: Dataset, how: str, train_seqs: list[np.ndarray]) -> np.ndarray | None:
  """Popularity that ranks colliding items (sid.popularity)."""
  if how == 'none':
    return None
  if how == 'all':
    return ds.item_counts().astype(np.float64)
  rows = np.concatenate(train_seqs) if train_seqs else np.zeros(0, int)
  return np.bincount(rows, minlength=len(ds.catalog)).astype(np.float64)


def embed_items(cfg: ml_collections.ConfigDict, ds: Dataset, split: Split, *,
                progress: bool = False) -> tuple[np.ndarray, str]:
  """(N, D) item embeddings of `cfg.sid.encoder` and the encoder's name ('cf' parts are
  fitted on the training split only)."""
  s = cfg.sid
  return sid_job.embed(ds.catalog, s.encoder, tfidf_dim=s.feature_dim, seed=cfg.seed,
                       batch_size=s.encoder_batch_size, progress=progress,
                       sequences=list(split.train.values()), cf_dim=s.cf_dim,
                       cf_window=s.cf_window)


def build_sids(cfg: ml_collections.ConfigDict, ds: Dataset, split: Split, workdir: str,
               log: Log, emb: tuple[np.ndarray, str] | None = None
               ) -> tuple[SIDMap, dict[str, Any]]:
  """The SID map of `cfg.sid` (from `emb`, or `embed_items`), written with its quality report
  and plot under <workdir>/sids. Collisions are ranked by `cfg.sid.popularity`."""
  t0 = time.perf_counter()
  emb_NxD, encoder_name = emb if emb is not None else embed_items(cfg, ds, split)
  s = cfg.sid
  sid_map, report = sid_job.build_and_save(
      ds.catalog, emb_NxD, os.path.join(workdir, 'sids'), levels=s.levels, k=s.k,
      collision=s.collision, iters=s.iters, method=s.method, tol=s.tol,
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
    texts = [ds.catalog.text(i) for i in range(len(ds.catalog))]
    texts += [q.text for q in ds.queries]
    texts += [u.summary for u in ds.users.values() if u.summary]
    texts += prompts.template_texts(ds.catalog.type_names)  # the prompts' fixed words
    proto = train_sentencepiece(texts, vocab_size=cfg.tokenizer.vocab_size,
                                model_type=cfg.tokenizer.model_type, seed=cfg.seed)
    tok = SentencePieceTokenizer.from_sid_map(proto, sid_map)
  tok.save(os.path.join(workdir, 'tokenizer'))
  log(f'tokenizer: {tok.text_vocab_size} text tokens + {tok.sid.size} SID tokens'
      + (f' ({backbone})' if backbone else ''))
  return tok


# -- examples ----------------------------------------------------------------------------------

def build_examples(cfg: ml_collections.ConfigDict, ds: Dataset, split: Split, sid_map: SIDMap,
                   tok: Tokenizer) -> dict[str, list[Example]]:
  """Grounding examples, capability (training) examples and evaluation examples of every task
  (`neo_jax.tasks.build_task_examples`: the dataset's own search queries, or queries generated
  from item text with held-out templates when it has none)."""
  t = cfg.tasks
  te = build_task_examples(
      ds, split, sid_map, tok.sid, history_len=t.history_len,
      train_targets_per_user=t.train_targets_per_user, mixed_fraction=t.mixed_fraction,
      query_valid_fraction=t.query_valid_fraction, query_test_fraction=t.query_test_fraction,
      max_relevant=t.max_relevant, history_window=t.history_window,
      history_context=t.history_context, seed=cfg.seed)
  return {'grounding': te.grounding, 'capability': te.capability, **te.eval}


# -- model -------------------------------------------------------------------------------------

def build_model(cfg: ml_collections.ConfigDict, tok: Tokenizer) -> Decoder:
  """The decoder over the text vocabulary, extended with the SID rows (initialised to the
  mean of the text rows). With cfg.model.backbone the text part is the pretrained checkpoint;
  otherwise (or with cfg.model.random_init, the ablation: the backbone's tokenizer and shape,
  random weights) a randomly initialised decoder of cfg.model.preset with the shape keys that
  are not 0."""
  m = cfg.model
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
    model = Decoder(mcfg, rngs=nnx.Rngs(cfg.seed))
  vocab_lib.extend_vocab(model, tok.vocab_size, init='mean', rng=jax.random.key(cfg.seed + 1))
  return model


# -- all of it ---------------------------------------------------------------------------------

def prepare(cfg: ml_collections.ConfigDict, workdir: str, log: Log = print, *,
            with_model: bool = True, dataset: Dataset | None = None
            ) -> tuple[Artifacts, dict[str, list[Example]], dict[str, Any]]:
  """Data (`dataset` when the caller loaded it already), split, SIDs, tokenizer, examples (and
  the untrained model) under `workdir`. Returns the artifacts, the examples and the flat facts
  of the build (sizes, timings)."""
  facts: dict[str, Any] = {}
  t0 = time.perf_counter()
  ds = dataset if dataset is not None else load_data(cfg, workdir, log)
  split, split_facts = make_split(ds.interactions, cfg.data.split)
  facts.update({f'split/{k}': v for k, v in split_facts.items()})
  facts.update({f'split/skipped/{k}': v for k, v in split.skipped.items()})
  facts['seconds_data'] = time.perf_counter() - t0

  t0 = time.perf_counter()
  sid_map, sid_report = build_sids(cfg, ds, split, workdir, log)
  facts['seconds_sids'] = time.perf_counter() - t0

  t0 = time.perf_counter()
  tok = build_tokenizer(cfg, ds, sid_map, workdir, log)
  examples = build_examples(cfg, ds, split, sid_map, tok)
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
  return Artifacts(ds, split, sid_map, tok, model), examples, facts
