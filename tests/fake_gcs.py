"""A fake remote file system for tests: `gs://` URIs served from a local folder through
`etils.epath.testing.mock_epath` (epath's own test hook, which swaps the backends epath uses
for gs://, s3://, ... and local paths).

Inside `fake_gcs(root)`, `epath.Path('gs://bucket/a/b')` reads and writes `root/bucket/a/b`;
local paths pass through unchanged. orbax's array files (written by tensorstore, not epath)
go to the same folder: the GCS kvstore spec orbax builds for a gs:// checkpoint is replaced by
a local file kvstore there (orbax still takes its gs:// code paths), and the bucket reads as
a flat-namespace one (orbax would ask google-cloud-storage). Renames of remote paths are refused (object stores have
no atomic rename, so code that relies on one would be wrong there), and every backend call on
a remote path is recorded in `calls` as (operation, uri).
"""

import contextlib
import os
from unittest import mock

from etils.epath import testing as epath_testing

PREFIX = 'gs://'


class FakeGCS:
  """Maps gs:// URIs onto `root` and records the calls that touch them."""

  def __init__(self, root):
    self.root = os.fspath(root)
    self.calls: list[tuple[str, str]] = []

  def local(self, uri: str) -> str:
    """The local file behind `uri` (a gs:// URI)."""
    return os.path.join(self.root, os.fspath(uri)[len(PREFIX):])

  def _map(self, op, path):
    path = os.fspath(path)
    if not path.startswith(PREFIX):
      return path
    self.calls.append((op, path))
    return self.local(path)

  def kvstore(self, uri: str) -> dict:
    """The tensorstore kvstore spec of `uri`: a file kvstore on its local file."""
    self.calls.append(('tensorstore', os.fspath(uri)))
    return {'driver': 'file', 'path': self.local(uri)}

  def _uri(self, local_path):
    rel = os.path.relpath(local_path, self.root)
    return PREFIX + rel

  def mocks(self):
    def simple(op):
      return lambda orig, path, *a, **k: orig(self._map(op, path), *a, **k)

    def no_rename(op):
      def fn(orig, path, dst, *a, **k):
        if os.fspath(path).startswith(PREFIX) or os.fspath(dst).startswith(PREFIX):
          raise AssertionError(f'{op} on an object store: {path} -> {dst}')
        return orig(path, dst, *a, **k)
      return fn

    def glob(orig, pattern):
      if not os.fspath(pattern).startswith(PREFIX):
        return orig(pattern)
      return [self._uri(p) for p in orig(self._map('glob', pattern))]

    def walk(orig, top, **k):
      if not os.fspath(top).startswith(PREFIX):
        yield from orig(top, **k)
        return
      for root, dirs, files in orig(self._map('walk', top), **k):
        yield self._uri(root), dirs, files

    def copy(orig, path, dst, overwrite):
      return orig(self._map('copy', path), self._map('copy', dst), overwrite=overwrite)

    names = ('open', 'exists', 'isdir', 'listdir', 'makedirs', 'mkdir', 'remove', 'rmtree',
             'stat')
    out = {name: simple(name) for name in names}
    out.update(rename=no_rename('rename'), replace=no_rename('replace'), glob=glob, walk=walk,
               copy=copy)
    return out


@contextlib.contextmanager
def fake_gcs(root):
  """Yields a FakeGCS serving gs:// from `root` while the block runs."""
  fake = FakeGCS(root)
  os.makedirs(fake.root, exist_ok=True)
  from orbax.checkpoint._src.path import gcs_utils  # local: only tests of checkpoints need it
  with epath_testing.mock_epath(**fake.mocks()), \
       mock.patch.object(gcs_utils, 'get_kvstore_for_gcs', fake.kvstore), \
       mock.patch.object(gcs_utils, 'is_hierarchical_namespace_enabled', lambda path: False):
    yield fake
