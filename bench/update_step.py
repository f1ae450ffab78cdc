"""Update-step MFU at Qwen2.5-1.5B shape: the Trainer's own train_step on random weights.

Builds the `update.Updater` of configs/alfworld.py (GRPO + EMPG, PPO clip, AdamW, remat)
around a random model of the given shape (fp32 params, bf16 compute), its optimizer state
as the Trainer makes it (`trainer.init_opt_state`), and one mini-batch of `--micro-batches`
x `--micro` rows of `--seq` tokens (response = the last `--response` tokens), then times
`UpdateFunctions.train_step` (gradient accumulation over the micro-batches + one AdamW
update), median of `--repeats` after a compiling call.

MFU = 3 x forward FLOPs (6 x matmul params x tokens + causal attention) / time / peak;
the recomputation of remat is not counted (it is hardware work, not model FLOPs), so
with remat the hardware does about 4/3 of the counted work. Peaks: bench/peaks.py.

  python bench/update_step.py                       # accelerator, full shape
  python bench/update_step.py --attention-impl cudnn
  python bench/update_step.py --cpu-smoke           # CPU: shrunk, code path only
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

from bench import peaks as peaks_lib  # pylint: disable=wrong-import-position
from bench.iteration import add_model_shape_flags, forward_flops, model_config  # pylint: disable=wrong-import-position

CPU_SMOKE = dict(layers=2, hidden=128, intermediate=384, heads=4, kv_heads=2, vocab=4096,
                 micro=2, micro_batches=2, seq=128, response=32, repeats=2)


def run(args: argparse.Namespace) -> dict[str, float]:
  from configs import alfworld
  from empg_jax import sharding
  from empg_jax import update as update_lib
  from empg_jax.models import init_random
  from empg_jax.trainer import init_opt_state
  peaks = peaks_lib.resolve(args, matmul_dtype=jnp.bfloat16 if jax.default_backend() != 'cpu'
                            else jnp.float32)
  config = model_config(args)
  mesh = sharding.make_mesh(1, -1, 1)
  c = alfworld.get_config()
  c.train.micro_batch_size = args.micro
  c.train.ppo_mini_batch_size = args.micro * args.micro_batches
  c.model.attention_impl = args.attention_impl
  model = init_random(config, mesh=mesh, dtype=jnp.bfloat16, param_dtype=jnp.float32,
                      remat=True, attention_impl=args.attention_impl)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  updater = update_lib.Updater(
      graphdef, rest, c, pad_id=0, replicated=replicated,
      minibatch_sharding=jax.sharding.NamedSharding(
          mesh, jax.sharding.PartitionSpec(None, sharding.batch_axes())))
  opt_state = init_opt_state(updater.tx, params, mesh)

  rng = np.random.default_rng(0)
  rows = (args.micro_batches, args.micro)
  loss_mask = np.zeros(rows + (args.seq - 1,), np.float32)
  loss_mask[..., args.seq - 1 - args.response:] = 1.0
  arrays = {
      'input_ids': rng.integers(0, config.vocab_size, rows + (args.seq,), dtype=np.int32),
      'attention_mask': np.ones(rows + (args.seq,), np.int32),
      'loss_mask': loss_mask,
      'rows': np.arange(np.prod(rows), dtype=np.int32).reshape(rows),
      'old_logprobs': np.full(rows + (args.seq - 1,), -np.log(config.vocab_size), np.float32),
      'ref_logprobs': np.full(rows + (args.seq - 1,), -np.log(config.vocab_size), np.float32),
  }
  arrays = jax.device_put(arrays, updater.minibatch_sharding)
  step_adv = jax.device_put(
      rng.standard_normal(updater.sample_capacity).astype(np.float32), replicated)
  num_micro = jnp.int32(args.micro_batches)
  normalizer = jnp.float32(loss_mask.sum())

  def step(params, opt_state):
    params, opt_state, metrics = updater.fns.train_step(params, opt_state, arrays, step_adv,
                                                        num_micro, normalizer)
    jax.block_until_ready((params, opt_state, metrics))
    return params, opt_state, metrics

  start = time.perf_counter()
  params, opt_state, metrics = step(params, opt_state)
  first_s = time.perf_counter() - start
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    params, opt_state, metrics = step(params, opt_state)
    times.append(time.perf_counter() - start)
  seconds = statistics.median(times)
  tokens = int(np.prod(rows)) * args.seq
  flops = 3 * forward_flops(config, int(np.prod(rows)), args.seq)
  mfu = flops / seconds / (peaks.tflops * 1e12)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  print(f'device {jax.devices()[0].device_kind} x{jax.device_count()}; {peaks}')
  print(f'update step: {config.num_layers} layers, hidden {config.hidden_size}, vocab '
        f'{config.vocab_size} ({n_params / 1e9:.3f} B params), attention '
        f'{args.attention_impl}, {args.micro_batches} micro-batches x {args.micro} rows x '
        f'{args.seq} tokens; first call (compile) {first_s:.1f} s; loss '
        f'{float(metrics["loss"]):.4f}, skipped {float(metrics["skipped"]):.0f}')
  print(f'update step {seconds:.3f} s (median of {args.repeats}), {tokens / seconds:.0f} '
        f'tokens/s, {flops / seconds / 1e12:.2f} model TFLOP/s -> MFU {mfu:.1%}')
  return {'seconds': seconds, 'mfu': mfu, 'tokens_per_s': tokens / seconds,
          'loss': float(metrics['loss'])}


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--cpu-smoke', action='store_true',
                      help=f'shrunk shape for a CPU code-path check: {CPU_SMOKE}')
  add_model_shape_flags(parser)
  parser.add_argument('--micro', type=int, default=4, help='rows per forward/backward')
  parser.add_argument('--micro-batches', type=int, default=4, help='accumulated per update')
  parser.add_argument('--seq', type=int, default=4096)
  parser.add_argument('--response', type=int, default=512)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--attention-impl', default='xla', choices=('xla', 'cudnn'))
  peaks_lib.add_flags(parser)
  # --cpu-smoke changes the defaults only: flags given explicitly still win.
  if parser.parse_known_args(argv)[0].cpu_smoke:
    parser.set_defaults(**CPU_SMOKE)
  return parser.parse_args(argv)


if __name__ == '__main__':
  run(parse_args())
