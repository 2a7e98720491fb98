"""Adding and withdrawing items of a trained run without retraining (NEO's freshness).

A new item gets its SID from its text through the frozen quantiser saved with the run's SID
map (`sid.quantiser`), and the trained model generates it as it is. The run's own artifacts
are never rewritten: W/sids/sid_map (the map the model learnt, with its quantiser) and the
dataset stay as they are. The catalog's changes live in W/catalog_update/:

  CURRENT        the name of the current version, one line, replaced atomically
  v<NNNNNN>/     one complete version (written in full before CURRENT names it):
    items.jsonl  every added item so far (generic format), catalog rows N, N+1, ... in order
    state.json   added_at per added item, removed ids with removed_at, the base catalog's
                 size and the checksum of its SIDs
    sid_map/     the grown SID map: the base rows, then one row per added item
  result.json    the last command's figures (the run's own result.json is left alone)

An update reads the current version, checks the request, assigns SIDs, writes the next
version in a staging folder renamed into place, then points CURRENT at it. A command killed at
any moment leaves CURRENT naming the previous version (or nothing), so the run loads exactly
as before; a staging folder or version left behind is removed by the next update. Updates
hold W/catalog_update/LOCK.

Withdrawn items keep their rows and SIDs (an SID is never given to another item: the model
learnt it for this one); they are only never generated again. The pieces for a loaded run:
`load_state` (the catalog and SID map with the changes), `apply_to_artifacts` (the artifacts a
`serving.Service` answers from, the trie built with room to grow), `update_ranker` (a running
`NEORanker` follows a newer version in place, without recompiling while the trie's capacity
lasts) and `allowed_rows` (the rows of an allow-list of ids, or of the items added since a
time: the paper's "new releases" constraint).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import shutil
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from neo_jax.catalog import atomic
from neo_jax.catalog import io as catalog_io
from neo_jax.catalog.types import Catalog
from neo_jax.decode.ranker import NEORanker
from neo_jax.decode.trie import SIDTrie
from neo_jax.run import config as config_lib
from neo_jax.run import stages
from neo_jax.run import workdir as workdir_lib
from neo_jax.sid import builder
from neo_jax.sid import quantiser as qlib
from neo_jax.sid.types import SIDMap

DIRNAME = 'catalog_update'
CURRENT = 'CURRENT'
STATE_FILE = 'state.json'
ITEMS_FILE = 'items.jsonl'
FORMAT = 'neo_jax.catalog_update'

Log = Callable[[str], None]


class CatalogUpdateError(config_lib.UserError):
  """An update that cannot be made as asked (the message says why and what to do)."""


@dataclasses.dataclass
class CatalogState:
  """A run's catalog with its changes.

  Attributes:
    version: the version directory's name (None: no change was ever made).
    catalog: the base catalog's rows, then the added items'.
    sid_map: the SID of every row (the base map's rows first, unchanged).
    base_items: rows of the base catalog.
    added_at: (N,) int64 unix seconds each row was added, -1 for base rows.
    removed_at: (N,) int64 unix seconds each row was withdrawn, -1 while it is in.
  """
  version: str | None
  catalog: Catalog
  sid_map: SIDMap
  base_items: int
  added_at: np.ndarray
  removed_at: np.ndarray

  @property
  def removed(self) -> np.ndarray:
    return self.removed_at >= 0

  def live(self) -> np.ndarray:
    """(N,) bool rows that may be generated: with an SID and not withdrawn."""
    return self.sid_map.reachable() & ~self.removed


# -- paths, lock, versions ---------------------------------------------------------------------

def update_dir(workdir: str) -> str:
  return atomic.location(os.path.join(workdir, DIRNAME))


def current_version(workdir: str) -> str | None:
  path = os.path.join(update_dir(workdir), CURRENT)
  if not atomic.as_path(path).exists():
    return None
  with atomic.open_text(path) as f:
    name = f.read().strip()
  if not name or not atomic.as_path(os.path.join(update_dir(workdir), name)).is_dir():
    raise CatalogUpdateError(f'{path} names {name!r}, which is not a version directory: the '
                             'catalog update state is damaged (remove the catalog_update '
                             'folder to go back to the trained catalog)')
  return name


@contextlib.contextmanager
def _locked(workdir: str) -> Iterator[None]:
  """Holds the workdir's update lock (a file lock: local workdirs only) while the block
  runs."""
  root = update_dir(workdir)
  if atomic.is_remote(root):
    raise CatalogUpdateError(f'{root}: a catalog update needs a local workdir (it holds a file '
                             'lock, which object stores have not); a run on a remote workdir '
                             'is served as trained')
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, 'LOCK'), 'w') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise CatalogUpdateError(f'{root}: another catalog update is running') from None
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _commit(workdir: str, name: str) -> None:
  """Points CURRENT at version `name`: the single step that makes an update visible."""
  atomic.write_text(os.path.join(update_dir(workdir), CURRENT), name + '\n')


def _sweep(workdir: str, keep: str) -> None:
  """Removes every version directory but `keep` (left by earlier or killed updates)."""
  root = update_dir(workdir)
  for name in os.listdir(root):
    if name != keep and (name.startswith('v') and name[1:].isdigit()):
      shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    elif name.startswith('.v') and ('.tmp-' in name or '.old-' in name):
      # A staging folder of a killed update (atomic.sweep_stale keeps a live writer's).
      atomic.sweep_stale(os.path.join(root, name[1:].split('.')[0]))
  atomic.sweep_stale(os.path.join(root, CURRENT))


# -- the base run ------------------------------------------------------------------------------

@dataclasses.dataclass
class Base:
  """What a run was trained on: its preparation directory, config, catalog and SID map."""
  workdir: str
  catalog: Catalog
  sid_map: SIDMap


def load_base(path: str, log: Log | None = None) -> Base:
  """The trained catalog and SID map of `path` (a workdir or one of its run directories),
  without the model."""
  run_dir, workdir = workdir_lib.find_run_dir(path)
  cfg = workdir_lib.load_config(run_dir)
  ds = stages.load_data(cfg, workdir, log or (lambda _: None), build=False)
  sid_dir = os.path.join(workdir, 'sids', 'sid_map')
  try:
    sid_map = builder.load_sid_map(sid_dir)
  except (FileNotFoundError, ValueError) as e:
    raise CatalogUpdateError(str(e)) from None
  if len(sid_map) != len(ds.catalog):
    raise CatalogUpdateError(f'{sid_dir}: {len(sid_map)} SIDs for {len(ds.catalog)} items')
  return Base(workdir, ds.catalog, sid_map)


def base_of(run: workdir_lib.TrainedRun) -> Base:
  """The base of a run already loaded (`workdir.load_run`): its catalog and SID map as
  trained, nothing read again."""
  art = run.artifacts
  return Base(run.workdir, art.dataset.catalog, art.sid_map)


def load_quantiser(base: Base) -> qlib.FrozenQuantiser:
  sid_dir = os.path.join(base.workdir, 'sids', 'sid_map')
  try:
    return qlib.load_quantiser(sid_dir, base.sid_map)
  except (FileNotFoundError, ValueError) as e:
    raise CatalogUpdateError(str(e)) from None


def refreeze(path: str, log: Log | None = None) -> dict[str, Any]:
  """Saves the frozen quantiser of a run whose SID map was built before the quantiser was
  kept: the SIDs are rebuilt from the run's recorded config the way `stages.build_sids` built
  them (same view of the data, encoder, k-means settings and seed), and the quantiser is
  saved only if the rebuilt map equals the saved one exactly.

  Raises CatalogUpdateError when the rebuilt codes differ (the code that built the run
  changed since: retrain) or the map came from a method without codebooks."""
  log = log or (lambda _: None)
  base = load_base(path, log)
  sid_dir = os.path.join(base.workdir, 'sids', 'sid_map')
  if qlib.has_quantiser(sid_dir):
    return {'refrozen': 0, 'reason': 'the map has its quantiser already'}
  run_dir, _ = workdir_lib.find_run_dir(path)
  cfg = workdir_lib.load_config(run_dir)
  ds = stages.load_data(cfg, base.workdir, log, build=False)
  data = stages.split_data(cfg, ds, log)
  emb, name = stages.embed_items(cfg, data.view, data.fit_split)
  s = cfg.sid
  again, _ = builder.build_sid_map(
      data.view.catalog, emb, levels=s.levels, k=stages.sid_k(cfg, data.view.catalog),
      collision=s.collision, iters=s.iters, method=s.method, tol=s.tol,
      batch_size=int(s.batch_size) or None, minibatch=s.minibatch, encoder_name=name,
      seed=cfg.seed,
      popularity=stages._popularity(  # pylint: disable=protected-access
          data.view, s.popularity, list(data.fit_split.train.values())))
  same = np.asarray(again.codes) == np.asarray(base.sid_map.codes)
  if not same.all():
    raise CatalogUpdateError(
        f'{sid_dir}: rebuilding the SIDs from the recorded config gives other codes for '
        f'{int((~same.all(axis=1)).sum())} of {len(same)} items (the code that built this '
        'run has changed since): new items cannot be placed consistently; retrain the run')
  if again.codebooks is None:
    raise CatalogUpdateError(f'{sid_dir}: SIDs of method {s.method!r} come from no quantiser')
  frozen = qlib.freeze(data.view.catalog, emb, name, again)
  qlib.save_quantiser(frozen, sid_dir)
  return {'refrozen': 1, 'reproduced_items': frozen.reproduced_items, 'encoder': name}


# -- reading a state ---------------------------------------------------------------------------

def _concat_catalogs(base: Catalog, added: Catalog) -> Catalog:
  """Base rows then added rows, the added types mapped onto the base's type names."""
  types = np.array([base.type_names.index(t) for t in added.type_names], np.int32)
  return Catalog(
      ids=list(base.ids) + list(added.ids), type_names=base.type_names,
      type_index=np.concatenate([base.type_index, types[added.type_index]]).astype(np.int32),
      titles=list(base.titles) + list(added.titles),
      descriptions=list(base.descriptions) + list(added.descriptions),
      tags=list(base.tags) + list(added.tags),
      attributes=list(base.attributes) + list(added.attributes),
      popularity=np.concatenate([base.popularity, added.popularity]).astype(np.float32))


def initial_state(catalog: Catalog, sid_map: SIDMap) -> CatalogState:
  """The state of a catalog as trained: no version, nothing added or withdrawn."""
  n = len(catalog)
  return CatalogState(None, catalog, sid_map, n, np.full(n, -1, np.int64),
                      np.full(n, -1, np.int64))


def _empty_state(base: Base) -> CatalogState:
  return initial_state(base.catalog, base.sid_map)


def load_state(base: Base) -> CatalogState:
  """The current catalog state of the run (the base alone when nothing was changed)."""
  name = current_version(base.workdir)
  if name is None:
    return _empty_state(base)
  vdir = os.path.join(update_dir(base.workdir), name)
  with atomic.open_text(os.path.join(vdir, STATE_FILE)) as f:
    st = json.load(f)
  n = len(base.catalog)
  if st.get('format') != FORMAT or st.get('base_items') != n or st.get(
      'base_codes_sha256') != builder.array_sha256(np.asarray(base.sid_map.codes, np.int32)):
    raise CatalogUpdateError(f'{vdir}: made for another trained catalog (the run was '
                             'retrained?); remove the catalog_update folder')
  catalog = base.catalog
  if st['added']:
    added = catalog_io.read_items(os.path.join(vdir, ITEMS_FILE),
                                  frozenset(base.catalog.type_names))
    if added.ids != [a['id'] for a in st['added']]:
      raise CatalogUpdateError(f'{vdir}: {ITEMS_FILE} and {STATE_FILE} list other items')
    catalog = _concat_catalogs(base.catalog, added)
  sid_map = builder.load_sid_map(os.path.join(vdir, 'sid_map'))
  if len(sid_map) != len(catalog) or not np.array_equal(sid_map.codes[:n], base.sid_map.codes):
    raise CatalogUpdateError(f'{vdir}: its SID map ({len(sid_map)} items) is not the trained '
                             f'one grown by {len(catalog) - n} items')
  added_at = np.concatenate([np.full(n, -1, np.int64),
                             np.array([a['added_at'] for a in st['added']], np.int64)])
  removed_at = np.full(len(catalog), -1, np.int64)
  for r in st['removed']:
    removed_at[catalog.index_of(r['id'])] = int(r['removed_at'])
  return CatalogState(name, catalog, sid_map, n, added_at, removed_at)


def _write_state(workdir: str, state: CatalogState) -> str:
  """Writes `state` as the next version and makes it current; returns its name."""
  root = update_dir(workdir)
  prev = current_version(workdir)
  name = f'v{(int(prev[1:]) + 1) if prev else 1:06d}'
  n = state.base_items
  added_rows = range(n, len(state.catalog))
  st = {'format': FORMAT, 'base_items': n,
        'base_codes_sha256': builder.array_sha256(
            np.ascontiguousarray(np.asarray(state.sid_map.codes, np.int32)[:n])),
        'added': [{'id': state.catalog.ids[r], 'added_at': int(state.added_at[r])}
                  for r in added_rows],
        'removed': [{'id': state.catalog.ids[r], 'removed_at': int(state.removed_at[r])}
                    for r in np.flatnonzero(state.removed)]}
  target = os.path.join(root, name)
  if os.path.exists(target):  # left by a killed update that never committed it
    shutil.rmtree(target)
  with atomic.atomic_directory(target) as tmp:
    with open(os.path.join(tmp, ITEMS_FILE), 'w', encoding='utf-8') as f:
      for r in added_rows:
        f.write(json.dumps(catalog_io.item_json(state.catalog, r), ensure_ascii=False) + '\n')
      f.flush()
      os.fsync(f.fileno())
    atomic.write_json(os.path.join(tmp, STATE_FILE), st, indent=1)
    builder.save_sid_map(state.sid_map, os.path.join(tmp, 'sid_map'))
  _commit(workdir, name)
  _sweep(workdir, keep=name)
  return name


# -- the commands ------------------------------------------------------------------------------

def read_new_items(path: str, state: CatalogState) -> Catalog:
  """The items of a generic-format items.jsonl, checked against the run's catalog: known
  entity types only, ids not in the catalog yet (withdrawn ones included)."""
  if not os.path.isfile(path):
    raise CatalogUpdateError(f'{path}: no such file (the new items, one JSON object a line: '
                             'id, type, title; optional description, tags, attributes)')
  new = catalog_io.read_items(path, frozenset(state.catalog.type_names))
  taken = [i for i in new.ids if i in set(state.catalog.ids)]
  if taken:
    raise CatalogUpdateError(f'{path}: item ids {taken[:5]} are in the catalog already (a '
                             'withdrawn item keeps its id; give the new item another)')
  return new


def add_items(path: str, items_path: str, *, embeddings: np.ndarray | None = None,
              added_at: int | None = None, log: Log | None = None) -> dict[str, Any]:
  """Adds the items of `items_path` to the trained run of `path` (module docstring).

  Args:
    path: a workdir (or one of its run directories) trained by quickstart / train / evaluate.
    items_path: new items in the generic format (items.jsonl lines).
    embeddings: (M, D) the items' own vectors, for a run whose SIDs came from 'npy:' vectors.
    added_at: unix seconds recorded as their addition time (default: now).

  Returns:
    Flat facts: added, joined_groups, new_groups, catalog_items, live_items, version,
    seconds.
  """
  t0 = time.perf_counter()
  base = load_base(path, log)
  with _locked(base.workdir):
    state = load_state(base)
    new = read_new_items(items_path, state)
    q = load_quantiser(base)
    m = len(new)
    try:
      codes, facts = qlib.assign_sids(
          state.sid_map, q, ids=new.ids, texts=[new.text(i) for i in range(m)],
          types=[new.type_of(i) for i in range(m)], embeddings=embeddings)
    except qlib.SIDSpaceError as e:
      raise CatalogUpdateError(f'{items_path}: {e}') from None
    when = int(time.time()) if added_at is None else int(added_at)
    grown = CatalogState(
        None, _concat_catalogs(state.catalog, new),
        qlib.extend_sid_map(state.sid_map, codes, [new.type_of(i) for i in range(m)]),
        state.base_items, np.concatenate([state.added_at, np.full(m, when, np.int64)]),
        np.concatenate([state.removed_at, np.full(m, -1, np.int64)]))
    name = _write_state(base.workdir, grown)
  out = {'added': m, 'joined_groups': facts.get('joined_groups', 0),
         'new_groups': facts.get('new_groups', 0), 'catalog_items': len(grown.catalog),
         'live_items': int(grown.live().sum()), 'version': name,
         'seconds': time.perf_counter() - t0}
  write_result(base.workdir, out)
  return out


def read_ids(path: str) -> list[str]:
  """Item ids, one a line (blank lines and lines starting with '#' skipped)."""
  if not os.path.isfile(path):
    raise CatalogUpdateError(f'{path}: no such file (item ids to withdraw, one a line)')
  with open(path, encoding='utf-8') as f:
    ids = [line.strip() for line in f if line.strip() and not line.startswith('#')]
  if not ids:
    raise CatalogUpdateError(f'{path}: no item id')
  return ids


def remove_items(path: str, ids: Sequence[str], *, removed_at: int | None = None,
                 log: Log | None = None) -> dict[str, Any]:
  """Withdraws items (base or added) from the trained run of `path`: never generated again.

  Raises CatalogUpdateError for an unknown id. Ids already withdrawn are counted
  (`already_removed`), not an error."""
  t0 = time.perf_counter()
  base = load_base(path, log)
  with _locked(base.workdir):
    state = load_state(base)
    known = set(state.catalog.ids)
    unknown = [i for i in ids if i not in known]
    if unknown:
      raise CatalogUpdateError(f'unknown item ids {unknown[:5]} ({len(unknown)} of '
                               f'{len(ids)}): nothing was withdrawn')
    rows = sorted({state.catalog.index_of(i) for i in ids})
    already = [r for r in rows if state.removed[r]]
    removed_at_new = state.removed_at.copy()
    when = int(time.time()) if removed_at is None else int(removed_at)
    removed_at_new[[r for r in rows if not state.removed[r]]] = when
    new = dataclasses.replace(state, version=None, removed_at=removed_at_new)
    name = _write_state(base.workdir, new)
  out = {'removed': len(rows) - len(already), 'already_removed': len(already),
         'catalog_items': len(new.catalog), 'live_items': int(new.live().sum()),
         'version': name, 'seconds': time.perf_counter() - t0}
  write_result(base.workdir, out)
  return out


def write_result(path: str, result: dict[str, Any]) -> None:
  """W/catalog_update/result.json of the run of `path` (a workdir or a run directory)."""
  workdir = workdir_lib.find_run_dir(path)[1]
  atomic.write_json(os.path.join(update_dir(workdir), 'result.json'), result, sort_keys=True)


# -- a loaded run ------------------------------------------------------------------------------

def capacity_for(items: int) -> int:
  """Leaf slots of a serving trie holding `items`: room for a quarter more (at least 256)
  before `add_items` needs `SIDTrie.grow` (one recompilation)."""
  return int(items) + max(256, int(items) // 4)


def build_trie(state: CatalogState, sid_vocab, capacity: int | None = None) -> SIDTrie:
  """The trie of every row with an SID, withdrawn ones not live, with room to grow."""
  held = int(state.sid_map.reachable().sum())
  capacity = capacity_for(held) if capacity is None else int(capacity)
  return SIDTrie.build(state.sid_map, sid_vocab, live=state.live(), capacity=capacity,
                       row_capacity=len(state.catalog) + capacity - held)


def apply_to_artifacts(art: stages.Artifacts, state: CatalogState) -> stages.Artifacts:
  """The run's artifacts with the catalog state: the dataset's catalog and the SID map grown
  (interactions, queries and users unchanged: their rows are the base's), the trie rebuilt
  with withdrawn items not live and room to grow. The model and tokenizer are shared."""
  if len(art.dataset.catalog) != state.base_items:
    raise ValueError(f'the artifacts hold {len(art.dataset.catalog)} items, the state is of a '
                     f'catalog of {state.base_items}')
  ds = dataclasses.replace(art.dataset, catalog=state.catalog)
  return dataclasses.replace(art, dataset=ds, sid_map=state.sid_map,
                             trie=build_trie(state, art.tokenizer.sid))


def update_ranker(ranker: NEORanker, before: CatalogState, after: CatalogState
                  ) -> dict[str, int]:
  """Brings a running ranker from `before` to `after` (a later state of the same run) in
  place: added rows into the trie (no recompilation while its capacity lasts; else the trie
  grows to twice what it needs, one recompilation), withdrawn rows out.

  Returns {'added', 'removed', 'grown'} counts."""
  if after.base_items != before.base_items or len(after.catalog) < len(before.catalog):
    raise ValueError('update_ranker: `after` is not a later state of the same catalog')
  new_rows = np.arange(len(before.catalog), len(after.catalog))
  new_rows = new_rows[after.sid_map.reachable()[new_rows]]
  grown = 0
  if new_rows.size:
    trie = ranker.trie
    need = trie.num_leaves + new_rows.size
    if need > trie.num_items or len(after.catalog) > trie.num_rows:
      ranker.trie = trie.grow(2 * need, row_capacity=2 * need + len(after.catalog))
      grown = 1
    sids = [(after.catalog.type_of(int(r)), after.sid_map.codes[r].tolist()) for r in new_rows]
    ranker.add_items(new_rows.tolist(), sids, live=True)
  gone = np.flatnonzero(after.removed[:len(before.catalog)] & ~before.removed)
  gone_new = new_rows[after.removed[new_rows]]
  out_rows = np.concatenate([gone, gone_new]).astype(np.int64)
  out_rows = out_rows[after.sid_map.reachable()[out_rows]]
  if out_rows.size:
    ranker.remove_items(out_rows.tolist())
  return {'added': int(new_rows.size), 'removed': int(out_rows.size), 'grown': grown}


def parse_time(value: str | int) -> int:
  """Unix seconds from an int, a string of digits, or an ISO date / datetime (UTC if no zone)."""
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    return int(value)
  text = str(value).strip()
  if text.lstrip('-').isdigit():
    return int(text)
  try:
    dt = datetime.datetime.fromisoformat(text)
  except ValueError:
    raise CatalogUpdateError(f'{value!r} is neither unix seconds nor an ISO date '
                             '(2026-12-06 or 2026-12-06T10:00:00)') from None
  if dt.tzinfo is None:
    dt = dt.replace(tzinfo=datetime.timezone.utc)
  return int(dt.timestamp())


def allowed_rows(state: CatalogState, *, ids: Sequence[str] | None = None,
                 added_since: str | int | None = None) -> list[int]:
  """Catalog rows a request may be restricted to: the live items among `ids`, and/or the live
  items added at or after `added_since` (both given: those in both). Unknown ids raise
  CatalogUpdateError; an empty result is returned as it is (the caller says so)."""
  if ids is None and added_since is None:
    raise ValueError('allowed_rows needs ids or added_since')
  keep = state.live().copy()
  if ids is not None:
    unknown = [i for i in ids if i not in set(state.catalog.ids)]
    if unknown:
      raise CatalogUpdateError(f'allow: unknown item ids {unknown[:5]}')
    mask = np.zeros(len(state.catalog), bool)
    mask[[state.catalog.index_of(i) for i in ids]] = True
    keep &= mask
  if added_since is not None:
    keep &= state.added_at >= parse_time(added_since)
  return np.flatnonzero(keep).tolist()


__all__ = ['CatalogState', 'CatalogUpdateError', 'add_items', 'allowed_rows',
           'apply_to_artifacts', 'base_of', 'build_trie', 'capacity_for', 'initial_state',
           'load_base', 'load_state',
           'parse_time', 'read_ids', 'refreeze', 'remove_items', 'update_ranker',
           'write_result']
