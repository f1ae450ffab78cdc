"""`attention_impl='cudnn'` against `'xla'`: same weights, same batch, outputs and speed.

Two random models of one shape and seed (so the same weights), bf16 parameters and
compute, one with the XLA attention and one with cuDNN's fused attention; a left-padded
batch (`--batch` rows of `--seq` tokens, row i padded by i * seq / (2 * batch)). Checks
that the cuDNN path runs and matches: the logits of the real positions, the loss and the
gradient of a mean token log-prob (the training forward + backward). Prints max |diff|
relative to the XLA values' scale and the median forward + backward time of each.

On a CPU (no cuDNN), `--cpu-smoke` runs the same comparison with 'xla' on both sides,
which checks the script only.

  python bench/attention_check.py                   # GPU
  python bench/attention_check.py --cpu-smoke
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from flax import nnx  # pylint: disable=wrong-import-position

from bench.iteration import add_model_shape_flags, model_config  # pylint: disable=wrong-import-position

CPU_SMOKE = dict(layers=2, hidden=128, intermediate=384, heads=4, kv_heads=2, vocab=4096,
                 batch=2, seq=64, repeats=2)
# bf16 end to end: the two kernels accumulate in different orders.
TOLERANCE = 5e-2


def run(args: argparse.Namespace) -> bool:
  from empg_jax import distributions
  from empg_jax.models import init_random
  config = model_config(args)
  other = 'cudnn' if jax.default_backend() == 'gpu' else 'xla'
  if other == 'xla':
    print(f'backend {jax.default_backend()}: no cuDNN here; comparing xla with xla (script '
          'check only)')
  rng = np.random.default_rng(0)
  ids = rng.integers(0, config.vocab_size, (args.batch, args.seq), dtype=np.int32)
  mask = np.ones_like(ids)
  for i in range(args.batch):
    mask[i, :i * args.seq // (2 * args.batch)] = 0
  ids, mask = jnp.asarray(ids), jnp.asarray(mask)

  def build(impl):
    model = init_random(config, seed=0, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16,
                        remat=True, attention_impl=impl)
    return nnx.split(model, nnx.Param, ...)

  results = []
  for impl in ('xla', other):
    graphdef, params, rest = build(impl)

    @jax.jit
    def loss_and_grad(params, rest=rest, graphdef=graphdef):
      def loss(params):
        logits = nnx.merge(graphdef, params, rest)(ids, mask)
        logp = distributions.token_logprobs(logits[:, :-1], ids[:, 1:])
        weights = mask[:, 1:] * mask[:, :-1]
        return -jnp.sum(logp * weights) / jnp.sum(weights), logits
      return jax.value_and_grad(loss, has_aux=True)(params)

    start = time.perf_counter()
    (loss, logits), grads = jax.block_until_ready(loss_and_grad(params))
    first = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      jax.block_until_ready(loss_and_grad(params))
      times.append(time.perf_counter() - start)
    results.append(dict(loss=float(loss), logits=np.asarray(logits, np.float32),
                         grads=[np.asarray(g, np.float32) for g in jax.tree.leaves(grads)],
                         seconds=statistics.median(times), first=first))
  a, b = results
  real = np.asarray(mask, bool)
  logit_err = (np.abs(a['logits'] - b['logits'])[real].max()
               / max(np.abs(a['logits'][real]).max(), 1e-9))
  grad_err = max(np.abs(x - y).max() / max(np.abs(x).max(), 1e-12)
                 for x, y in zip(a['grads'], b['grads']))
  loss_err = abs(a['loss'] - b['loss']) / max(abs(a['loss']), 1e-9)
  ok = max(logit_err, grad_err, loss_err) <= TOLERANCE
  print(f'attention {other} vs xla: {config.num_layers} layers, hidden {config.hidden_size}, '
        f'batch {args.batch} x {args.seq} (left-padded), bf16')
  print(f'  loss xla {a["loss"]:.5f} {other} {b["loss"]:.5f} (rel diff {loss_err:.2e}); '
        f'logits max rel diff {logit_err:.2e}; gradients max rel diff {grad_err:.2e} -> '
        f'{"MATCH" if ok else "MISMATCH"} (tolerance {TOLERANCE:g})')
  print(f'  forward + backward: xla {a["seconds"] * 1e3:.1f} ms, {other} '
        f'{b["seconds"] * 1e3:.1f} ms (speed-up {a["seconds"] / b["seconds"]:.2f}x; first '
        f'calls {a["first"]:.1f} / {b["first"]:.1f} s)')
  return ok


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--cpu-smoke', action='store_true')
  add_model_shape_flags(parser)
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--seq', type=int, default=2048)
  parser.add_argument('--repeats', type=int, default=5)
  # --cpu-smoke changes the defaults only: flags given explicitly still win.
  if parser.parse_known_args(argv)[0].cpu_smoke:
    parser.set_defaults(**CPU_SMOKE)
  return parser.parse_args(argv)


if __name__ == '__main__':
  sys.exit(0 if run(parse_args()) else 1)
