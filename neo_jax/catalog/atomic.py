"""Writing artifacts so that a reader never sees half of one, whatever stops the writer.

Every artifact is written under a temporary name beside its final one (same directory, so
the same file system) and renamed into place when complete: a file with `write_bytes` /
`write_text` / `write_json`, a directory with `atomic_directory` (built in a temporary
directory, then renamed). A kill, a full disk or an exception leaves either the old artifact
or the new one, never a mix; the temporary is removed on an exception, and one left by a
killed process (its name carries the writer's process id) is removed by the next writer of
the same artifact (`sweep_stale`). A full disk (ENOSPC) is re-raised naming the artifact.

Append-only logs (JSON lines) cannot be renamed into place on every line: `JsonlAppender`
appends whole lines, flushed and synced per call, and on opening drops a last line that a
killed writer left unfinished, so that the file always reads as complete JSON lines.

Strict JSON has neither NaN nor infinities: `json_safe` turns them (and numpy scalars) into
what strict readers accept, and every writer here refuses to write them otherwise.

Remote file systems. Every function here also takes a URI of a file system `etils.epath`
supports (`gs://bucket/run/x.json`, `s3://`, `az://`, `hf://`; `is_remote`), where nothing can
be renamed atomically, synced or appended to, and what stands in for it:
  - a file (`write_bytes` / `write_text` / `write_json`) is written as one object write, which
    the object store makes visible whole or not at all;
  - a directory (`atomic_directory`, `staging_directory` + `replace_directory`) is built in a
    local temporary directory and uploaded file by file, the old tree removed first; the
    files named in `last` go last, so a reader that checks them sees a complete tree (a kill
    during the upload leaves a tree without them);
  - `JsonlAppender` rewrites the whole object on each `append` (whole lines, never a torn
    one; the cost grows with the file, fine for logs of metrics);
  - there are no temporaries to sweep (`sweep_stale` returns []).
A URI of a scheme epath does not know is a ValueError. Functions return local paths absolute
and URIs as strings (`location`).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import IO, Any

from etils import epath

# Temporary names: `.<final name>.tmp-<pid>-<random>` (files and directories alike).
_TMP = '.{base}.tmp-{pid}-'
_OLD = '.{base}.old-{pid}-'


_URI = re.compile(r'^([A-Za-z][A-Za-z0-9+.-]*)://')


def is_remote(path: str | os.PathLike) -> bool:
  """Whether `path` is a URI (`gs://bucket/x`) rather than a local path; a URI of a scheme
  `etils.epath` does not support is a ValueError."""
  text = os.fspath(path)
  match = _URI.match(text)
  if match is None:
    return False
  try:
    known = os.fspath(epath.Path(text)).startswith(match.group(0))  # else: read as local
  except KeyError:  # a scheme epath parses but has no path class for
    known = False
  if not known:
    raise ValueError(f'{text}: epath supports no {match.group(1)}:// file system (it knows '
                     'gs://, s3://, az://, hf:// and local paths)')
  return True


def location(path: str | os.PathLike) -> str:
  """`path` as the functions here name it: a local path absolute, a URI as it is."""
  return os.fspath(epath.Path(path)) if is_remote(path) else os.path.abspath(os.fspath(path))


def as_path(path: str | os.PathLike) -> epath.Path:
  """`path` (local or URI) as an `epath.Path`, local paths absolute."""
  return epath.Path(location(path))


def open_text(path: str | os.PathLike, newline: str | None = None) -> IO[str]:
  """`path` opened for reading UTF-8 text (newline as for `open`; '' for csv), local or
  remote."""
  if not is_remote(path):
    return open(path, encoding='utf-8', newline=newline)
  return io.TextIOWrapper(epath.Path(path).open('rb'), encoding='utf-8', newline=newline)


def for_reading(path: str | os.PathLike) -> str | io.BytesIO:
  """What a reader that takes a path or a binary file (`np.load`, PIL) reads `path` from: a
  local path itself, a remote file's bytes in memory."""
  if not is_remote(path):
    return os.fspath(path)
  return io.BytesIO(as_path(path).read_bytes())


def move_tree(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Moves the file or directory `src` to `dst` (which must not exist): a rename on a local
  file system; where either is remote (no rename there), a copy file by file, then `src`
  removed, so a kill midway leaves `src` whole and part of `dst`."""
  if not is_remote(src) and not is_remote(dst):
    os.rename(src, dst)
    return
  source, target = as_path(src), as_path(dst)
  if target.exists():
    raise FileExistsError(f'{location(dst)} exists; not moving {location(src)} over it')
  if not source.is_dir():
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())
    source.unlink()
    return
  for root, _, names in source.walk():
    out = target / os.path.relpath(os.fspath(root), os.fspath(source))
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
      (out / name).write_bytes((root / name).read_bytes())
  source.rmtree()


def copy_tree(src: str | os.PathLike, dst: str) -> None:
  """Copies the tree `src` (local or remote) into the local directory `dst`, file by file
  (for `atomic_directory`'s builder to upload)."""
  source = as_path(src)
  for root, _, names in source.walk():
    out = os.path.join(dst, os.path.relpath(os.fspath(root), os.fspath(source)))
    os.makedirs(out, exist_ok=True)
    for name in names:
      with open(os.path.join(out, name), 'wb') as f:
        f.write((root / name).read_bytes())


def _upload_tree(src: str, dst: str, last: Sequence[str] = ()) -> None:
  """Copies the local tree `src` to the remote directory `dst` (removed first when it
  exists), one object per file, the files named in `last` (relative paths) last in order."""
  target = epath.Path(dst)
  if target.exists():
    target.rmtree()
  target.mkdir(parents=True, exist_ok=True)
  files = sorted(os.path.relpath(os.path.join(root, name), src)
                 for root, _, names in os.walk(src) for name in names)
  missing = [name for name in last if name not in files]
  if missing:
    raise FileNotFoundError(f'{src} holds no {missing} to upload last to {dst}')
  for rel in [f for f in files if f not in last] + list(last):
    out = target / rel
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(os.path.join(src, rel), 'rb') as f:
      out.write_bytes(f.read())


def json_safe(value: Any) -> Any:
  """`value` with NaN and infinities as None (strict JSON has neither), numpy scalars and
  arrays as Python numbers and lists, tuples as lists."""
  if isinstance(value, Mapping):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if hasattr(value, 'tolist') and not isinstance(value, (str, bytes)):
    value = value.tolist()
    if isinstance(value, list):
      return json_safe(value)
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def dumps(obj: Any, **kwargs) -> str:
  """Strict JSON text of `json_safe(obj)` (never NaN or Infinity)."""
  return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def sweep_stale(path: str | os.PathLike) -> list[str]:
  """Removes the temporaries of `path` (files or directories) that a process no longer
  alive left behind; returns what it removed. Those of live processes (a concurrent writer)
  are kept. A remote path has none (nothing is written under a temporary name there)."""
  if is_remote(path):
    return []
  path = os.path.abspath(os.fspath(path))
  parent, base = os.path.split(path)
  if not os.path.isdir(parent):
    return []
  removed = []
  for name in os.listdir(parent):
    for pattern in (_TMP, _OLD):
      prefix = pattern.split('{pid}')[0].format(base=base)
      if not name.startswith(prefix):
        continue
      pid = name[len(prefix):].split('-', 1)[0]
      if pid.isdigit() and not _pid_alive(int(pid)):
        full = os.path.join(parent, name)
        if os.path.isdir(full) and not os.path.islink(full):
          shutil.rmtree(full, ignore_errors=True)
        else:
          with contextlib.suppress(FileNotFoundError):
            os.remove(full)
        removed.append(full)
  return removed


def _fsync_dir(directory: str) -> None:
  with contextlib.suppress(OSError):  # some file systems cannot sync a directory
    fd = os.open(directory, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)


def _full_disk(e: OSError, path: str, what: str) -> OSError:
  """The error to raise for `e` while writing `path`: ENOSPC and EDQUOT name the artifact and
  say that the old one is unchanged."""
  if e.errno in (errno.ENOSPC, errno.EDQUOT):
    return OSError(e.errno, f'no space left on the device while writing {path}; {what}', path)
  return e


def write_bytes(path: str | os.PathLike, data: bytes) -> str:
  """Writes `data` to `path` atomically (a synced temporary file renamed over `path`; on a
  remote file system one object write); returns `location(path)`."""
  if is_remote(path):
    target = as_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(bytes(data))
    return os.fspath(target)
  path = os.path.abspath(os.fspath(path))
  parent, base = os.path.split(path)
  os.makedirs(parent, exist_ok=True)
  sweep_stale(path)
  fd, tmp = tempfile.mkstemp(prefix=_TMP.format(base=base, pid=os.getpid()), dir=parent)
  try:
    try:
      view = memoryview(data)
      while view:
        n = os.write(fd, view)
        view = view[n:]
      os.fsync(fd)
    finally:
      os.close(fd)
    os.replace(tmp, path)
  except OSError as e:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise _full_disk(e, path, 'the previous file (if any) is unchanged') from e
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise
  _fsync_dir(parent)
  return path


def write_text(path: str | os.PathLike, text: str) -> str:
  """Writes `text` (UTF-8) to `path` atomically."""
  return write_bytes(path, text.encode('utf-8'))


def write_json(path: str | os.PathLike, obj: Any, **kwargs) -> str:
  """Writes `obj` as strict JSON (`json_safe`: NaN and infinities become null) to `path`
  atomically; `kwargs` go to `json.dumps` (indent, sort_keys, ...)."""
  return write_text(path, dumps(obj, **kwargs) + '\n')


def replace_directory(src: str, dst: str, last: Sequence[str] = ()) -> None:
  """Moves directory `src` to `dst` (same file system), replacing what `dst` held: the old
  `dst` is first renamed aside, then removed, so `dst` is at every moment the old directory,
  absent for the instant between two renames, or the new one. A remote `dst`: the local `src`
  is uploaded (module docstring; `last` uploaded last) and removed."""
  if is_remote(dst):
    _upload_tree(src, location(dst), last)
    shutil.rmtree(src, ignore_errors=True)
    return
  parent, base = os.path.split(os.path.abspath(dst))
  old = None
  if os.path.lexists(dst):
    old = tempfile.mkdtemp(prefix=_OLD.format(base=base, pid=os.getpid()), dir=parent)
    os.rename(dst, os.path.join(old, base))
  os.rename(src, dst)
  _fsync_dir(parent)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staging_directory(path: str | os.PathLike) -> Iterator[str]:
  """Yields an empty temporary directory beside `path` (named for it, so that `sweep_stale`
  finds it after a kill) and removes it when the block ends, whichever way. For builders that
  write a tree of their own layout into a folder, to be moved to `path` with
  `replace_directory` once complete. For a remote `path` it is a local temporary directory."""
  if is_remote(path):
    tmp = tempfile.mkdtemp(prefix='neo_jax-staging-')
    try:
      yield tmp
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
    return
  path = os.path.abspath(os.fspath(path))
  parent, base = os.path.split(path)
  os.makedirs(parent, exist_ok=True)
  sweep_stale(path)
  tmp = tempfile.mkdtemp(prefix=_TMP.format(base=base, pid=os.getpid()), dir=parent)
  try:
    yield tmp
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike, overwrite: bool = False,
                     last: Sequence[str] = ()) -> Iterator[str]:
  """Yields a fresh temporary directory that replaces `directory` when the block succeeds.

  The temporary directory is a sibling of `directory` (same file system, so the final rename
  is atomic). On an exception it is removed and `directory` is left untouched; after a kill it
  is left behind and removed by the next `atomic_directory` (or `sweep_stale`) of the same
  `directory`. A remote `directory`: built in a local temporary directory, then uploaded
  (module docstring), the files `last` (paths relative to the tree) last.

  Raises:
    FileExistsError: `directory` exists, is not empty and `overwrite` is False.
  """
  if is_remote(directory):
    yield from _remote_directory(location(directory), overwrite, last)
    return
  directory = os.path.abspath(os.fspath(directory))
  parent, base = os.path.split(directory)

  def occupied():
    return os.path.exists(directory) and (not os.path.isdir(directory) or
                                          bool(os.listdir(directory)))

  if occupied() and not overwrite:
    raise FileExistsError(f'{directory} exists and is not empty; pass overwrite=True')
  os.makedirs(parent, exist_ok=True)
  sweep_stale(directory)
  tmp = tempfile.mkdtemp(prefix=_TMP.format(base=base, pid=os.getpid()), dir=parent)
  try:
    yield tmp
  except OSError as e:
    shutil.rmtree(tmp, ignore_errors=True)
    raise _full_disk(e, directory, 'the previous directory (if any) is unchanged') from e
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if os.path.isdir(directory) and not occupied():
    os.rmdir(directory)
  replace_directory(tmp, directory)


def _remote_directory(directory: str, overwrite: bool, last: Sequence[str]) -> Iterator[str]:
  target = epath.Path(directory)
  if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
    raise FileExistsError(f'{directory} exists and is not empty; pass overwrite=True')
  tmp = tempfile.mkdtemp(prefix='neo_jax-upload-')
  try:
    yield tmp
    _upload_tree(tmp, directory, last)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _repaired(data: bytes) -> int:
  """How many bytes of JSON-lines `data` are complete lines (a torn last line cut)."""
  keep = len(data)
  if data and not data.endswith(b'\n'):
    keep = data.rfind(b'\n') + 1
  else:  # a complete-looking last line that is not JSON (a torn write) goes too
    start = data.rfind(b'\n', 0, max(len(data) - 1, 0)) + 1
    last = data[start:].strip()
    if last:
      try:
        json.loads(last)
      except ValueError:
        keep = start
  return keep


def repair_jsonl(path: str | os.PathLike) -> int:
  """Cuts `path` back to its last complete line when a killed writer left the last line
  unfinished (no newline, or not valid JSON); returns the bytes removed (0: nothing)."""
  if is_remote(path):
    target = as_path(path)
    if not target.exists():
      return 0
    data = target.read_bytes()
    keep = _repaired(data)
    if keep != len(data):
      write_bytes(target, data[:keep])
    return len(data) - keep
  path = os.fspath(path)
  if not os.path.exists(path):
    return 0
  with open(path, 'rb') as f:
    data = f.read()
  keep = _repaired(data)
  if keep == len(data):
    return 0
  with open(path, 'r+b') as f:
    f.truncate(keep)
    f.flush()
    os.fsync(f.fileno())
  return len(data) - keep


class JsonlAppender:
  """Appends strict JSON objects to a JSON-lines file, whole lines at a time.

  On opening, an unfinished last line (a writer killed mid-line) is cut off (`repair_jsonl`,
  the bytes removed in `repaired`). `append` writes its objects as one `write`, then flushes
  and syncs, so that what it returned for is on disk. A full disk raises an OSError naming the
  file; the lines already appended stay. A remote file is rewritten whole on each `append`
  (module docstring).
  """

  def __init__(self, path: str | os.PathLike, *, truncate: bool = False):
    self._fd = None
    self._remote: bytes | None = None
    if is_remote(path):
      self.path = location(path)
      self.repaired = 0 if truncate else repair_jsonl(self.path)
      target = epath.Path(self.path)
      self._remote = b'' if truncate or not target.exists() else target.read_bytes()
      write_bytes(self.path, self._remote)  # the file exists from now on, as locally
      return
    self.path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    self.repaired = 0 if truncate else repair_jsonl(self.path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if truncate else 0)
    self._fd = os.open(self.path, flags, 0o644)

  def append(self, objs: Iterable[Any]) -> None:
    data = ''.join(dumps(o, ensure_ascii=False) + '\n' for o in objs).encode('utf-8')
    if not data:
      return
    if self._remote is not None:
      write_bytes(self.path, self._remote + data)
      self._remote += data
      return
    at = os.lseek(self._fd, 0, os.SEEK_END)
    try:
      view = memoryview(data)
      while view:
        view = view[os.write(self._fd, view):]
      os.fsync(self._fd)
    except OSError as e:
      # Cut a partly written chunk off again, so that the file stays whole lines.
      with contextlib.suppress(OSError):
        os.ftruncate(self._fd, at)
      raise _full_disk(e, self.path, 'the lines written before are kept') from e

  def close(self) -> None:
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> JsonlAppender:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_jsonl(path: str | os.PathLike) -> list[Any]:
  """The objects of a JSON-lines file (blank lines skipped); a bad line is a ValueError
  naming the file and line."""
  out = []
  with open_text(path) as f:
    for n, line in enumerate(f, start=1):
      if line.strip():
        try:
          out.append(json.loads(line))
        except ValueError as e:
          raise ValueError(f'{path}:{n}: not valid JSON ({e})') from None
  return out
