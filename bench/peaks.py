"""The machine's limits for roofline fractions and MFU: one home for bench/ scripts.

`resolve(args)` -> `Peaks(bandwidth_gbs, tflops, source)`:

* flags first: `--peak-bw-gbs` (memory bandwidth, GB/s) and `--peak-tflops` (dense
  matmul throughput of the compute dtype, TFLOP/s), added by `add_flags(parser)`;
* else the datasheet numbers of a known accelerator (`DEVICE_PEAKS`, matched on
  `jax.devices()[0].device_kind`);
* else (the CPU, or an unknown device) measured here: bandwidth from a large jitted
  in-place elementwise copy (bytes read + bytes written / time), throughput from a large jitted
  matmul (2 n^3 / time), median of a few runs.

Datasheet values are dense (no 2:4 sparsity), bf16, SXM parts:

  H100 SXM 80 GB   3350 GB/s   989 TFLOP/s
  H200 141 GB      4800 GB/s   989 TFLOP/s
  A100 SXM 80 GB   2039 GB/s   312 TFLOP/s
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp

# device_kind substring -> (HBM GB/s, dense bf16 TFLOP/s). First match wins.
DEVICE_PEAKS: tuple[tuple[str, float, float], ...] = (
    ('H200', 4800.0, 989.0),
    ('H100 PCIe', 2000.0, 756.0),
    ('H100', 3350.0, 989.0),
    ('A100', 2039.0, 312.0),
)


@dataclasses.dataclass(frozen=True)
class Peaks:
  bandwidth_gbs: float
  tflops: float
  source: str

  def __str__(self) -> str:
    return f'peaks: {self.bandwidth_gbs:.1f} GB/s, {self.tflops:.2f} TFLOP/s ({self.source})'


def add_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--peak-bw-gbs', type=float, default=None,
                      help='peak memory bandwidth, GB/s (default: the device\'s datasheet '
                           'value, H100 SXM 3350, H200 4800; measured on CPU).')
  parser.add_argument('--peak-tflops', type=float, default=None,
                      help='peak dense matmul TFLOP/s of the compute dtype (default: '
                           'datasheet bf16, H100/H200 989; measured on CPU).')


def median_seconds(fn, repeats: int, *, warm_up: bool = True) -> float:
  """Median wall time of `repeats` calls of `fn` (after one untimed call with `warm_up`)."""
  if warm_up:
    fn()  # compile / warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def measure_bandwidth_gbs(nbytes: int = 256 * 2**20, repeats: int = 5) -> float:
  """GB/s of a jitted elementwise pass over `nbytes` of float32 (read once, written once),
  in place: the input is donated, so the output reuses its buffer (a fresh 256 MB output
  per call costs the CPU page faults that read as a 7x lower bandwidth)."""
  scale = jax.jit(lambda x: x * -1.5, donate_argnums=0)
  x = scale(jnp.ones((nbytes // 4,), jnp.float32))
  x.block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    x = scale(x)
    x.block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * nbytes / statistics.median(times) / 1e9


def measure_matmul_tflops(dtype=jnp.float32, n: int | None = None, repeats: int = 5) -> float:
  """TFLOP/s of a jitted `[n, n] @ [n, n]` in `dtype` (float32 accumulation)."""
  n = n or (2048 if jax.default_backend() == 'cpu' else 8192)
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
  matmul = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
  seconds = median_seconds(lambda: matmul(a, b).block_until_ready(), repeats)
  return 2 * n**3 / seconds / 1e12


def datasheet(device_kind: str | None = None) -> tuple[float, float] | None:
  kind = device_kind if device_kind is not None else jax.devices()[0].device_kind
  for name, bw, tflops in DEVICE_PEAKS:
    if name.lower() in kind.lower():
      return bw, tflops
  return None


def resolve(args: argparse.Namespace | None = None, *, matmul_dtype=jnp.float32) -> Peaks:
  """Flags, else the datasheet, else measured (see the module docstring). `matmul_dtype`
  is the dtype the measured throughput uses (the CPU runs bf16 matmuls slower than
  fp32: measure in the dtype the benchmark computes in)."""
  bw = getattr(args, 'peak_bw_gbs', None)
  tf = getattr(args, 'peak_tflops', None)
  sources = []
  sheet = datasheet()
  if bw is None:
    if sheet is not None:
      bw = sheet[0]
      sources.append('bandwidth: datasheet')
    else:
      bw = measure_bandwidth_gbs()
      sources.append('bandwidth: measured (copy)')
  else:
    sources.append('bandwidth: flag')
  if tf is None:
    if sheet is not None:
      tf = sheet[1]
      sources.append('matmul: datasheet bf16')
    else:
      tf = measure_matmul_tflops(matmul_dtype)
      sources.append(f'matmul: measured ({jnp.dtype(matmul_dtype).name})')
  else:
    sources.append('matmul: flag')
  return Peaks(bw, tf, f'{jax.devices()[0].device_kind}; ' + ', '.join(sources))


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  add_flags(parser)
  print(resolve(parser.parse_args()))
  if jax.default_backend() == 'cpu':
    print(f'bf16 matmul: {measure_matmul_tflops(jnp.bfloat16):.3f} TFLOP/s')
