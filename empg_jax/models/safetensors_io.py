"""Reading and writing Hugging Face safetensors checkpoints, tensor by tensor.

Reading is lazy: files are opened with `safetensors.safe_open` and only the slice
a device needs is read. Writing goes shard file by shard file, so a host holds at
most one shard's tensors at a time. Pickle checkpoints (`pytorch_model.bin`) are
refused: unpickling runs arbitrary code.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from empg_jax.errors import UserError

SINGLE_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'
_PICKLE_PATTERNS = ('pytorch_model*.bin', '*.pt', '*.pth', '*.ckpt', 'tf_model.h5',
                    'flax_model.msgpack')

_SIZE_UNITS = {'B': 1, 'KB': 10**3, 'MB': 10**6, 'GB': 10**9, 'TB': 10**12,
               'KIB': 2**10, 'MIB': 2**20, 'GIB': 2**30, 'TIB': 2**40}


class CheckpointError(UserError, ValueError):
  """A model directory that cannot be loaded; the message names file and tensor."""


def parse_size(size: int | str) -> int:
  """'5GB' / '200MiB' / 1234 -> bytes."""
  if isinstance(size, int):
    return size
  match = re.fullmatch(r'\s*([0-9.]+)\s*([A-Za-z]*)\s*', size)
  if not match or match.group(2).upper() not in _SIZE_UNITS | {'': 1}:
    raise ValueError(f'Cannot parse size {size!r}; use bytes or e.g. "5GB", "200MiB".')
  unit = match.group(2).upper() or 'B'
  return int(float(match.group(1)) * _SIZE_UNITS[unit])


def weight_map(model_dir: str) -> dict[str, str]:
  """Tensor name -> safetensors file path for an HF model directory.

  Raises:
    CheckpointError: no safetensors weights (pickle-only dirs get an explanation of
      why and how to convert), or an index that names a missing file.
  """
  index_path = os.path.join(model_dir, INDEX_FILE)
  if os.path.isfile(index_path):
    with open(index_path, encoding='utf-8') as f:
      index = json.load(f)
    if 'weight_map' not in index:
      raise CheckpointError(f'{index_path} has no "weight_map"; it is not a safetensors index.')
    mapping = {name: os.path.join(model_dir, fname) for name, fname in index['weight_map'].items()}
    for fname in sorted(set(mapping.values())):
      if not os.path.isfile(fname):
        raise CheckpointError(
            f'{index_path} lists {os.path.basename(fname)}, which is missing from '
            f'{model_dir}. Copy the complete checkpoint (all shard files).')
    return mapping

  files = sorted(glob.glob(os.path.join(model_dir, '*.safetensors')))
  if files:
    mapping = {}
    for fname in files:
      with _open(fname) as f:
        for name in f.keys():
          mapping[name] = fname
    return mapping

  pickles = sorted({os.path.basename(p) for pattern in _PICKLE_PATTERNS
                    for p in glob.glob(os.path.join(model_dir, pattern))})
  if pickles:
    raise CheckpointError(
        f'{model_dir} holds only pickle weights ({", ".join(pickles)}); they are refused '
        'because unpickling can execute arbitrary code. Convert once, in a trusted '
        'environment: `m = transformers.AutoModelForCausalLM.from_pretrained(dir); '
        'm.save_pretrained(out_dir, safe_serialization=True)`, then load out_dir.')
  present = sorted(os.listdir(model_dir)) if os.path.isdir(model_dir) else []
  raise CheckpointError(
      f'No weights in {model_dir}: expected {SINGLE_FILE}, or sharded '
      f'model-0000x-of-0000y.safetensors with {INDEX_FILE}. Found: {present or "nothing"}.')


def _open(fname: str):
  """`safe_open(fname)`; a damaged or cut-off file is a CheckpointError that names it."""
  try:
    return safe_open(fname, framework='numpy')
  except Exception as e:  # safetensors raises its own SafetensorError (or OSError)
    raise CheckpointError(
        f'{fname} is not a readable safetensors file ({e}); it may be truncated or '
        'damaged. Copy it again from the source checkpoint.') from e


class TensorReader:
  """Lazy reader over the safetensors files of one model directory.

  Use as a context manager; file handles stay open until exit.
  """

  def __init__(self, model_dir: str):
    self.model_dir = model_dir
    self.files = weight_map(model_dir)
    self._handles: dict[str, object] = {}

  def __enter__(self) -> 'TensorReader':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    for handle in self._handles.values():
      handle.__exit__(None, None, None)
    self._handles.clear()

  def _handle(self, name: str):
    fname = self.files[name]
    if fname not in self._handles:
      handle = _open(fname)
      self._handles[fname] = handle.__enter__()
    return self._handles[fname]

  def __contains__(self, name: str) -> bool:
    return name in self.files

  def names(self) -> list[str]:
    return list(self.files)

  def file_of(self, name: str) -> str:
    return self.files[name]

  def shape(self, name: str) -> tuple[int, ...]:
    """Shape from the file header, without reading data."""
    return tuple(self._handle(name).get_slice(name).get_shape())

  def read(self, name: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
    """The tensor, or only `index` of it (a tuple of slices, one per dimension)."""
    tensor_slice = self._handle(name).get_slice(name)
    if index is None:
      index = tuple(slice(None) for _ in tensor_slice.get_shape())
    return np.asarray(tensor_slice[tuple(index)])


@dataclasses.dataclass
class _Shard:
  names: list[str]
  nbytes: int = 0


def plan_shards(sizes: Sequence[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
  """Greedy split of (name, nbytes) into consecutive groups of at most max_shard_bytes.

  A single tensor larger than the limit gets a shard of its own.
  """
  shards: list[_Shard] = []
  for name, nbytes in sizes:
    if not shards or (shards[-1].names and shards[-1].nbytes + nbytes > max_shard_bytes):
      shards.append(_Shard([]))
    shards[-1].names.append(name)
    shards[-1].nbytes += nbytes
  return [s.names for s in shards]


def write_checkpoint(
    model_dir: str,
    sizes: Sequence[tuple[str, int]],
    fetch: Callable[[Iterable[str]], dict[str, np.ndarray]],
    max_shard_bytes: int,
    write: bool = True,
) -> list[str]:
  """Writes tensors as `model.safetensors` or sharded files plus an index.

  Args:
    model_dir: output directory (must exist).
    sizes: (tensor name, nbytes) in file order.
    fetch: returns host arrays for a list of names; called once per shard file, so
      only one shard's tensors are on the host at a time. Called on every process
      even when `write` is False (it may run collectives).
    max_shard_bytes: size limit of one file.
    write: False on non-zero processes of a multi-host run.

  Returns:
    The written file names.
  """
  groups = plan_shards(sizes, max_shard_bytes)
  total = sum(n for _, n in sizes)
  if len(groups) == 1:
    fnames = [SINGLE_FILE]
  else:
    fnames = [f'model-{i + 1:05d}-of-{len(groups):05d}.safetensors' for i in range(len(groups))]
  index = {}
  for fname, names in zip(fnames, groups):
    arrays = fetch(names)
    if write:
      save_file({n: np.ascontiguousarray(arrays[n]) for n in names},
                os.path.join(model_dir, fname), metadata={'format': 'pt'})
    index.update({n: fname for n in names})
    del arrays
  if write:
    # Files of an earlier save into the same directory would shadow or mix with ours.
    for old in glob.glob(os.path.join(model_dir, 'model*.safetensors')):
      if os.path.basename(old) not in fnames:
        os.remove(old)
    index_path = os.path.join(model_dir, INDEX_FILE)
    if len(groups) > 1:
      with open(index_path, 'w', encoding='utf-8') as f:
        json.dump({'metadata': {'total_size': total}, 'weight_map': index}, f, indent=2,
                  sort_keys=True)
    elif os.path.exists(index_path):
      os.remove(index_path)
  return fnames
