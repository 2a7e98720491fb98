"""A tokenizer's files on disk: written atomically, checked when read.

A tokenizer is a few files in a directory (a text model and the SID block layout) that may be
shared with other files (a Hugging Face export). Each file is written atomically (a temporary
renamed into place) and the layout file, written last, records the SHA-256 of every other
file; reading checks them. A save killed half-way, or a file truncated or overwritten later,
is therefore an error naming the file when it is read, never a tokenizer that silently
encodes differently from the one the model was trained with.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

from neo_jax.catalog import atomic

# The layout key holding {file name: sha256 hex} of the tokenizer's other files.
DIGESTS = 'file_sha256'


class TokenizerFileError(ValueError):
  """A tokenizer file that is missing, unreadable or not the one its layout was saved with."""


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def save(directory: str, files: Mapping[str, bytes], layout_name: str,
         layout: Mapping[str, Any], **dump_kwargs) -> None:
  """Writes `files` ({name: content}) into `directory`, each atomically, then the layout
  (`layout` plus the files' digests) as `layout_name`, last. `directory`: a local path or a
  URI (`catalog.atomic`)."""
  atomic.as_path(directory).mkdir(parents=True, exist_ok=True)
  for name, data in files.items():
    atomic.write_bytes(os.path.join(directory, name), data)
  atomic.write_json(os.path.join(directory, layout_name),
                    {**layout, DIGESTS: {n: _sha256(d) for n, d in files.items()}},
                    **dump_kwargs)


def read_layout(directory: str, layout_name: str) -> dict[str, Any]:
  """The layout JSON object of a saved tokenizer.

  Raises:
    TokenizerFileError: missing or not a JSON object (e.g. truncated).
  """
  path = os.path.join(directory, layout_name)
  try:
    layout = json.loads(atomic.as_path(path).read_bytes())
  except FileNotFoundError:
    raise TokenizerFileError(f'{path}: missing (the tokenizer was not saved completely)'
                             ) from None
  except ValueError as e:
    raise TokenizerFileError(f'{path}: not valid JSON ({e}); the file is damaged (truncated?)'
                             ) from None
  if not isinstance(layout, dict):
    raise TokenizerFileError(f'{path}: not a JSON object')
  return layout


def read(directory: str, name: str, layout: Mapping[str, Any]) -> bytes:
  """The content of file `name` of a saved tokenizer, checked against the digest its layout
  recorded (layouts saved before digests were recorded are not checked).

  Raises:
    TokenizerFileError: the file is missing or its content is not what was saved.
  """
  path = os.path.join(directory, name)
  try:
    data = atomic.as_path(path).read_bytes()
  except FileNotFoundError:
    raise TokenizerFileError(f'{path}: missing (the tokenizer was not saved completely)'
                             ) from None
  want = (layout.get(DIGESTS) or {}).get(name)
  if want is not None and _sha256(data) != want:
    raise TokenizerFileError(
        f'{path}: its content ({len(data)} bytes) is not the file the tokenizer was saved with '
        '(SHA-256 differs from the layout\'s); the file is damaged (truncated or overwritten)')
  return data
