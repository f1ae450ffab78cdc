"""A JSONL passage corpus (`{"id": ..., "contents": "\\"Title\\"\\ntext"}` per line).

Search-R1's wiki-18 corpus has 21M lines (~13 GB), so documents are not held in memory:
the corpus keeps one byte offset per line and reads a document on demand with `pread`
(thread-safe, no shared file position).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from environments.files import atomic_write_text, file_digest




def file_fingerprint(path: str | os.PathLike) -> str:
  """sha256 of the file's bytes, memoised in a sidecar keyed by (size, mtime_ns).

  Hashing wiki-18 takes about a minute; the sidecar makes later starts instant while an
  edited corpus (new size or mtime) is hashed again.
  """
  path = Path(path)
  st = path.stat()
  key = f"{st.st_size}:{st.st_mtime_ns}"
  sidecar = path.with_name(f".{path.name}.sha256")
  try:
    cached_key, digest = sidecar.read_text().split()
    if cached_key == key:
      return digest
  except (OSError, ValueError):
    pass
  digest = file_digest(path)
  try:
    atomic_write_text(sidecar, f"{key} {digest}\n")
  except OSError:
    pass  # read-only corpus directory: hash again next time
  return digest


def line_offsets(path: str | os.PathLike) -> np.ndarray:
  """Byte offset of every non-blank line -> int64 [num_docs]."""
  offsets = []
  pos = 0
  with open(path, "rb") as f:
    for line in f:
      if line.strip():
        offsets.append(pos)
      pos += len(line)
  return np.asarray(offsets, dtype=np.int64)


def split_contents(contents: str) -> tuple[str, str]:
  """'"Title"\\ntext' -> ('"Title"', 'text'), Search-R1's split (title keeps its quotes)."""
  title, _, text = contents.partition("\n")
  return title, text


class JsonlCorpus:
  """Random access to the documents of a JSONL corpus by row index."""

  def __init__(self, path: str | os.PathLike, offsets: np.ndarray | None = None):
    self.path = Path(path)
    if not self.path.is_file():
      raise FileNotFoundError(
          f"Corpus file {self.path} does not exist; pass a JSONL file with one "
          '{"id": ..., "contents": "\\"Title\\"\\ntext"} object per line.')
    self.offsets = line_offsets(self.path) if offsets is None else offsets
    self._fd = os.open(self.path, os.O_RDONLY)
    self._size = self.path.stat().st_size

  def __len__(self) -> int:
    return len(self.offsets)

  def _raw(self, index: int) -> bytes:
    start = int(self.offsets[index])
    end = int(self.offsets[index + 1]) if index + 1 < len(self.offsets) else self._size
    return os.pread(self._fd, end - start, start)

  def __getitem__(self, index: int) -> dict[str, Any]:
    row = json.loads(self._raw(index))
    return {"id": str(row.get("id", index)), "contents": row["contents"]}

  def iter_contents(self) -> Iterator[str]:
    """Streams `contents` of every row in order, validating the format on the way."""
    return (contents for _, contents in self.iter_documents())

  def iter_documents(self) -> Iterator[tuple[str, str]]:
    """Streams (id, contents) of every row in order (ids as `__getitem__` gives them)."""
    with open(self.path, "rb") as f:
      row_index = 0
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
          contents = row["contents"]
        except (ValueError, KeyError, TypeError) as e:
          raise ValueError(
              f"{self.path}:{lineno}: not a corpus row ({e}); each line must be a JSON "
              'object with a string "contents" field ("\\"Title\\"\\ntext").') from e
        if not isinstance(contents, str):
          raise ValueError(f"{self.path}:{lineno}: \"contents\" must be a string.")
        yield str(row.get("id", row_index)), contents
        row_index += 1

  def close(self) -> None:
    if self._fd >= 0:
      os.close(self._fd)
      self._fd = -1

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass


def write_corpus(path: str | os.PathLike, passages: list[tuple[str, str]]) -> None:
  """Writes (title, text) pairs as a Search-R1 JSONL corpus with ids '0', '1', ..."""
  lines = [json.dumps({"id": str(i), "contents": f'"{title}"\n{text}'}, ensure_ascii=False)
           for i, (title, text) in enumerate(passages)]
  atomic_write_text(path, "\n".join(lines) + "\n")
