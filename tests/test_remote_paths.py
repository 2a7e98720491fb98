"""Workdir files on any file system etils.epath supports: the atomic writers
(catalog/atomic.py), run directories (run/rundir.py) and the generic dataset reader and writer
(catalog/io.py), each once on a local path and once on gs:// served by a fake (tests/
fake_gcs.py: epath's mock backend over a local folder, renames refused)."""

import json
import os

import pytest

from neo_jax.catalog import atomic
from neo_jax.run import config as config_lib
from neo_jax.run import rundir

from fake_gcs import fake_gcs
from test_run_config import _with


class Where:
  """A base directory (local or gs://) and how a test reads what landed there."""

  def __init__(self, base, local_root, fake=None):
    self.base, self.local_root, self.fake = base, local_root, fake

  def join(self, *parts):
    return '/'.join([self.base, *parts])

  def local(self, *parts):
    """The local file that holds `join(*parts)`."""
    return os.path.join(self.local_root, *parts)


@pytest.fixture(params=['local', 'gcs'])
def where(request, tmp_path, monkeypatch):
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  monkeypatch.chdir(cwd)  # a gs:// path opened as a local one would land here
  if request.param == 'local':
    yield Where(str(tmp_path / 'w'), str(tmp_path / 'w'))
  else:
    with fake_gcs(tmp_path / 'gcs') as fake:
      yield Where('gs://bucket/w', str(tmp_path / 'gcs' / 'bucket' / 'w'), fake)
  assert os.listdir(cwd) == [], 'a remote path was written as a local one'


def test_files_are_written_whole_and_read_back(where):
  path = where.join('a', 'x.json')
  got = atomic.write_json(path, {'v': float('nan'), 'n': 1}, sort_keys=True)
  assert got == (path if where.fake else os.path.abspath(path))
  assert json.load(open(where.local('a', 'x.json'))) == {'n': 1, 'v': None}
  atomic.write_text(path, 'second\n')
  assert open(where.local('a', 'x.json')).read() == 'second\n'
  assert os.listdir(where.local('a')) == ['x.json']  # no temporary left
  assert atomic.sweep_stale(path) == []
  if where.fake:
    assert ('open', path) in where.fake.calls


def test_jsonl_appends_whole_lines_and_repairs_a_torn_one(where):
  path = where.join('log.jsonl')
  with atomic.JsonlAppender(path) as log:
    log.append([{'step': 1}, {'step': 2}])
    log.append([{'step': 3, 'x': float('inf')}])
  assert atomic.read_jsonl(path) == [{'step': 1}, {'step': 2}, {'step': 3, 'x': None}]
  with open(where.local('log.jsonl'), 'ab') as f:
    f.write(b'{"step": 4, "tor')  # a writer killed mid-line
  with atomic.JsonlAppender(path) as log:
    assert log.repaired == len(b'{"step": 4, "tor')
    log.append([{'step': 4}])
  assert [r['step'] for r in atomic.read_jsonl(path)] == [1, 2, 3, 4]
  with atomic.JsonlAppender(path, truncate=True) as log:
    log.append([{'step': 9}])
  assert atomic.read_jsonl(path) == [{'step': 9}]
  with open(where.local('log.jsonl'), 'ab') as f:
    f.write(b'not json\n')
  with pytest.raises(ValueError, match=r'log.jsonl:2: not valid JSON'):
    atomic.read_jsonl(path)


def test_atomic_directory_replaces_a_tree_or_leaves_the_old_one(where):
  target = where.join('tree')
  with atomic.atomic_directory(target, last=('done.txt',)) as tmp:
    os.makedirs(os.path.join(tmp, 'sub'))
    for name in ('sub/b.txt', 'a.txt', 'done.txt'):
      with open(os.path.join(tmp, name), 'w') as f:
        f.write(name)
  assert sorted(os.listdir(where.local('tree'))) == ['a.txt', 'done.txt', 'sub']
  assert open(where.local('tree', 'sub', 'b.txt')).read() == 'sub/b.txt'
  if where.fake:  # the file named last is uploaded last
    writes = [p for op, p in where.fake.calls if op == 'open' and '/tree/' in p]
    assert writes[-1] == target + '/done.txt' and len(writes) == 3
  with pytest.raises(FileExistsError, match='not empty'):
    with atomic.atomic_directory(target):
      pass
  with pytest.raises(RuntimeError):
    with atomic.atomic_directory(target, overwrite=True) as tmp:
      open(os.path.join(tmp, 'new.txt'), 'w').close()
      raise RuntimeError('builder failed')
  assert sorted(os.listdir(where.local('tree'))) == ['a.txt', 'done.txt', 'sub']
  with atomic.atomic_directory(target, overwrite=True) as tmp:
    open(os.path.join(tmp, 'new.txt'), 'w').close()
  assert os.listdir(where.local('tree')) == ['new.txt']
  with atomic.staging_directory(target) as staging:
    os.makedirs(os.path.join(staging, 'built'))
    open(os.path.join(staging, 'built', 'c.txt'), 'w').close()
    atomic.replace_directory(os.path.join(staging, 'built'), target)
  assert os.listdir(where.local('tree')) == ['c.txt']


def test_run_directory_claim_config_and_result(where):
  w = where.join('run')
  rundir.claim(w, config_lib.validate(_with(model__d_model=32)))
  assert rundir.has_config(w)
  assert rundir.read_config(w)['model']['d_model'] == 32
  assert json.load(open(where.local('run', 'config.json')))['model']['d_model'] == 32
  rundir.claim(w, config_lib.validate(_with(model__d_model=32, eval__max_requests=3)))
  with pytest.raises(rundir.RunDirError, match=r'model.d_model: 32 -> 64'):
    rundir.claim(w, config_lib.validate(_with(model__d_model=64)))
  os.makedirs(where.local('run', 'checkpoints'))
  rundir.claim(w, config_lib.validate(_with(model__d_model=64)), overwrite=True)
  assert os.listdir(where.local('run')) == ['config.json']
  assert rundir.read_config(w)['model']['d_model'] == 64
  path = rundir.write_result(w, {'hr': float('nan'), 'n': 2})
  assert path == (w if where.fake else os.path.abspath(w)) + '/result.json'
  assert json.load(open(where.local('run', 'result.json'))) == {'hr': None, 'n': 2}
  with open(where.local('run', 'config.json'), 'w') as f:
    f.write('{broken')
  with pytest.raises(rundir.RunDirError, match='not valid JSON'):
    rundir.read_config(w)
  os.makedirs(where.local('mine'))
  open(where.local('mine', 'notes.txt'), 'w').close()
  with pytest.raises(rundir.RunDirError, match='not a neo_jax workdir'):
    rundir.claim(where.join('mine'), config_lib.defaults(), overwrite=True)
  assert os.listdir(where.local('mine')) == ['notes.txt']


def test_unknown_scheme_is_named(tmp_path):
  assert not atomic.is_remote(str(tmp_path)) and not atomic.is_remote('rel/x')
  assert atomic.is_remote('gs://b/x')
  with pytest.raises(ValueError, match='memory://'):
    atomic.write_text('memory://b/x.txt', 'x')
  with pytest.raises(ValueError, match='memory://'):
    rundir.read_config('memory://b/run')


def test_dataset_directory_round_trip(where):
  from neo_jax.catalog import io
  from neo_jax.catalog.types import DatasetError
  from test_catalog_io import _awkward_dataset, assert_datasets_equal
  data = where.join('data')
  dataset = _awkward_dataset()
  io.write_dataset(dataset, data)
  if where.fake:  # what makes a directory a dataset is uploaded last
    writes = [p.rsplit('/', 1)[1] for op, p in where.fake.calls
              if op == 'open' and '/data/' in p]
    assert writes[-2:] == ['items.jsonl', 'interactions.csv']
  back = io.load_dataset(data, name=dataset.name)
  assert_datasets_equal(dataset, back)
  assert io.load_dataset(data).name == 'data'
  with pytest.raises(FileExistsError):
    io.write_dataset(dataset, data)
  os.remove(where.local('data', 'interactions.csv'))
  with pytest.raises(DatasetError, match=r'data/interactions.csv.*required file is missing'):
    io.load_dataset(data)


def test_sid_map_and_quantiser_round_trip(where):
  from neo_jax.catalog.synthetic import SyntheticConfig, generate_synthetic
  from neo_jax.sid import builder, job
  from neo_jax.sid import quantiser as qlib
  ds = generate_synthetic(SyntheticConfig(items_per_type=20, num_users=20, num_queries=2))
  emb, name = job.embed(ds.catalog, 'tfidf', tfidf_dim=16, progress=False)
  sids = where.join('sids')
  sid_map, report = job.build_and_save(ds.catalog, emb, sids, levels=2, k=4, collision='disambiguate',
                                       iters=5, popularity=None, encoder_name=name)
  assert sorted(os.listdir(where.local('sids'))) == ['quality.png', 'report.json', 'sid_map']
  assert open(where.local('sids', 'quality.png'), 'rb').read(4) == b'\x89PNG'
  assert json.load(open(where.local('sids', 'report.json')))['collision_rate'] == pytest.approx(
      report['collision_rate'])
  back = builder.load_sid_map(sids + '/sid_map')
  assert (back.codes == sid_map.codes).all() and back.level_sizes == sid_map.level_sizes
  assert qlib.has_quantiser(sids + '/sid_map')
  q = qlib.load_quantiser(sids + '/sid_map', back)
  assert (q.kmeans_codes(emb, back.type_index) == sid_map.codes[:, :q.kmeans_levels]).all()
  with open(where.local('sids', 'sid_map', builder.NPZ_NAME), 'r+b') as f:
    f.truncate(100)  # a damaged array file is named
  with pytest.raises(ValueError, match=r'sid_map.npz: unreadable'):
    builder.load_sid_map(sids + '/sid_map')
  os.remove(where.local('sids', 'sid_map', builder.MANIFEST_NAME))
  with pytest.raises(FileNotFoundError, match=r'sid_map/sid_map.json: missing'):
    builder.load_sid_map(sids + '/sid_map')


def test_tokenizer_files_round_trip(where):
  from neo_jax.tokenizer import SentencePieceTokenizer, train_sentencepiece
  from neo_jax.tokenizer.files import TokenizerFileError
  corpus = [f'a book {n} about trains and rivers, a movie about jazz {n * 7} and noir'
            for n in range(60)]
  tok = SentencePieceTokenizer(train_sentencepiece(corpus, vocab_size=300, seed=0), ('book',),
                               {'book': (4, 4)})
  path = where.join('tokenizer')
  tok.save(path)
  back = SentencePieceTokenizer.load(path)
  assert back.model_proto == tok.model_proto
  assert back.encode('a movie about trains') == tok.encode('a movie about trains')
  with open(where.local('tokenizer', 'spm.model'), 'ab') as f:
    f.write(b'x')  # overwritten after the save: the digest names it
  with pytest.raises(TokenizerFileError, match=r'tokenizer/spm.model: its content'):
    SentencePieceTokenizer.load(path)


def test_move_and_copy_trees(where, tmp_path):
  src = where.join('ckpt', '4')
  atomic.write_text(src + '/default/a.txt', 'a')
  atomic.write_text(src + '/b.txt', 'b')
  atomic.as_path(where.join('aside')).mkdir()  # as loop._set_aside does
  atomic.move_tree(src, where.join('aside', '4'))
  assert not os.path.exists(where.local('ckpt', '4'))
  assert open(where.local('aside', '4', 'default', 'a.txt')).read() == 'a'
  atomic.write_text(src + '/c.txt', 'c')
  with pytest.raises(FileExistsError if where.fake else OSError):
    atomic.move_tree(src, where.join('aside'))  # a non-empty directory is never replaced
  assert open(where.local('aside', '4', 'b.txt')).read() == 'b'
  local = tmp_path / 'copy'
  atomic.copy_tree(where.join('aside'), str(local))
  assert open(local / '4' / 'default' / 'a.txt').read() == 'a'
  data = atomic.for_reading(where.join('aside', '4', 'b.txt'))
  assert (data.read() if where.fake else open(data, 'rb').read()) == b'b'
  if where.fake:
    assert not [c for c in where.fake.calls if c[0] in ('rename', 'replace')]


def test_tensorboard_events_reach_the_workdir(where, monkeypatch):
  from neo_jax.train import loop
  lines = []
  board = loop._TensorBoard(where.join('tensorboard', 'stage'), lines.append)
  monkeypatch.setattr(loop._TensorBoard, 'UPLOAD_EVERY_S', 0.0)
  board.add_scalar('stage/loss', 1.5, 1)
  events = os.listdir(where.local('tensorboard', 'stage'))
  assert len(events) == 1 and events[0].startswith('events.out.tfevents')
  board.add_scalar('stage/loss', 1.25, 2)
  board.close()
  assert os.listdir(where.local('tensorboard', 'stage')) == events
  from tensorboardX.proto import event_pb2
  raw = open(where.local('tensorboard', 'stage', events[0]), 'rb').read()
  assert raw.count(b'stage/loss') == 2  # both scalars, whole
  if where.fake:
    assert len(lines) == 1 and 'uploaded to gs://bucket/w/tensorboard/stage' in lines[0]
    assert not os.path.exists(board.local)  # the local copy is gone
  else:
    assert lines == [] and board.local == board.directory
  del event_pb2


def test_local_only_parts_refuse_a_uri_by_name(tmp_path, monkeypatch):
  """What stays local (Hugging Face weights, catalog updates, lanes) says so for a URI
  instead of writing a local folder named gs:."""
  from neo_jax.model import checkpoints
  from neo_jax.run import catalog_update, experiment
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match=r'gs://b/hf: Hugging Face and GGUF weights'):
    checkpoints.load_safetensors_dir('gs://b/hf')
  with pytest.raises(catalog_update.CatalogUpdateError, match='needs a local workdir'):
    with catalog_update._locked('gs://b/w'):
      pass
  cfg = config_lib.defaults()
  cfg.experiment.lanes = 2
  lines = []
  assert experiment._lanes(cfg, 'gs://b/w', lines.append) == 1
  assert lines == ['lanes: 1 instead of 2: lanes wait for each other\'s files on a local '
                   'workdir only, and gs://b/w is remote']
  assert experiment._lanes(cfg, str(tmp_path / 'w'), lines.append) == 2 and len(lines) == 1
  assert os.listdir(tmp_path) == []


def test_dense_baseline_cache(where):
  """The dense baseline's embedding cache: written once, read back (not encoded again), and
  a changed catalog writes a new one."""
  from neo_jax.baselines import dense
  from test_multihost_writers import TITLES, _dataset, _encoder
  enc = _encoder()
  ds, _ = _dataset()
  model = dense.Dense(encoder=enc, cache_dir=where.join('baselines', 'dense'))
  first, cached = model.item_embeddings(ds.catalog)
  assert not cached
  assert sorted(os.listdir(where.local('baselines', 'dense'))) == ['text_embeddings.json',
                                                                    'text_embeddings.npy']
  encoded = enc.encoded
  again, cached = model.item_embeddings(ds.catalog)
  assert cached and enc.encoded == encoded
  assert (again == first).all()
  changed, _ = _dataset(TITLES[:-1] + ['Something else entirely'])
  assert not model.item_embeddings(changed.catalog)[1]
  assert model.item_embeddings(changed.catalog)[1]


def test_tfds_build_round_trip(where, tmp_path):
  """A TFDS build (array_record) into a bucket: built locally and uploaded, the tables'
  dataset_info.json last; read back through a local copy, equal to its source."""
  from neo_jax.catalog import io as catalog_io
  from neo_jax.catalog import tfds_builders
  from neo_jax.catalog.types import DatasetError
  from test_catalog_tfds import _dir, assert_same
  src = _dir(tmp_path)
  ds, report, built = tfds_builders.build('generic', where.join('tfds'), source=str(src))
  uploads = list(where.fake.calls) if where.fake else []
  assert built == (where.join('tfds', 'generic') if where.fake
                   else os.path.abspath(where.join('tfds', 'generic')))
  assert report == {} and tfds_builders.built_report(built) == {}
  assert_same(ds, catalog_io.load_dataset(src))
  assert_same(tfds_builders.load_built(built), ds)
  if where.fake:
    writes = [p.rsplit('/generic/', 1)[1] for op, p in uploads
              if op == 'open' and '/tfds/generic/' in p]
    infos = [w for w in writes if w.endswith('/dataset_info.json')]
    assert len(infos) == len(tfds_builders.TABLES) and writes[-len(infos):] == infos
  with pytest.raises(FileExistsError, match='exists'):
    tfds_builders.build('generic', where.join('tfds'), source=str(src))
  with pytest.raises(DatasetError, match=r'nothing/items: missing built table'):
    tfds_builders.load_built(where.join('nothing'))
