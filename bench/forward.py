"""Forward-pass throughput: our jitted NNX decoder vs transformers + PyTorch.

Both run the same randomly initialised HF model (built with transformers, saved as
safetensors, loaded by us), fp32, same batch, on the CPU, with the same thread
count; torch under `torch.no_grad()`. Both are warmed up first, then timed over
`--iters` forward passes each. Prints tokens/s of both and the ratio ours / torch.

  python bench/forward.py                      # 4 layers, hidden 256, batch 8, seq 256
  python bench/forward.py --family llama3 --seq 512
  python bench/forward.py --smollm2 --seq 512  # a real model (or --model DIR), with MFU

With `--smollm2` / `--model DIR` both sides load that HF directory instead, and the
script also prints each side's MFU against the measured fp32 matmul peak (bench/peaks.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

# The repo root, so `empg_jax` and the test helpers import without installation.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [_ROOT, os.path.join(_ROOT, 'tests')]
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('HF_HUB_OFFLINE', '1')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--family', default='qwen2', choices=('qwen2', 'qwen3', 'llama3'))
  parser.add_argument('--layers', type=int, default=4)
  parser.add_argument('--hidden', type=int, default=256)
  parser.add_argument('--heads', type=int, default=8)
  parser.add_argument('--kv-heads', type=int, default=2)
  parser.add_argument('--vocab', type=int, default=4096)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--seq', type=int, default=256)
  parser.add_argument('--iters', type=int, default=10)
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  parser.add_argument('--model', default=None, help='an HF model directory instead of a random one.')
  parser.add_argument('--smollm2', action='store_true',
                      help='SmolLM2-135M-Instruct (fetched and converted once) as --model.')
  from bench import peaks as peaks_lib  # pylint: disable=g-import-not-at-top
  peaks_lib.add_flags(parser)
  args = parser.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from empg_jax.models import load_pretrained  # pylint: disable=g-import-not-at-top
  from helpers_hf import make_tiny_hf_model  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(args.threads)
  if args.smollm2:
    from empg_jax import model_cache  # pylint: disable=g-import-not-at-top
    args.model = str(model_cache.prepare_smollm2('float32'))
  if args.model:
    import transformers  # pylint: disable=g-import-not-at-top
    model = load_pretrained(args.model)
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch.float32).eval()
  else:
    with tempfile.TemporaryDirectory() as tmp:
      model_dir, torch_model = make_tiny_hf_model(
          tmp, args.family, num_hidden_layers=args.layers, hidden_size=args.hidden,
          intermediate_size=args.hidden * 11 // 4, num_attention_heads=args.heads,
          num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
          **({'head_dim': args.hidden // args.heads} if args.family == 'qwen3' else {}))
      model = load_pretrained(model_dir)
  config = model.config

  graphdef, state = nnx.split(model)

  @jax.jit
  def forward(state, ids):
    return nnx.merge(graphdef, state)(ids)

  ids = np.random.RandomState(0).randint(0, config.vocab_size,
                                        (args.batch, args.seq)).astype(np.int32)
  ids_jax = jnp.asarray(ids)
  ids_torch = torch.tensor(ids, dtype=torch.long)
  tokens = args.batch * args.seq

  def time_ours() -> float:
    start = time.perf_counter()
    for _ in range(args.iters):
      out = forward(state, ids_jax)
    out.block_until_ready()
    return time.perf_counter() - start

  def time_torch() -> float:
    with torch.no_grad():
      start = time.perf_counter()
      for _ in range(args.iters):
        torch_model(ids_torch)
      return time.perf_counter() - start

  # Warm-up: compile ours, let torch pick its kernels; check the outputs agree.
  ours = np.asarray(forward(state, ids_jax))
  with torch.no_grad():
    theirs = torch_model(ids_torch).logits.numpy()
  max_diff = float(np.abs(ours - theirs).max())
  time_ours()
  time_torch()

  # Interleave the timed rounds so background load hits both alike; keep the best.
  rounds = [(time_ours(), time_torch()) for _ in range(3)]
  t_ours = min(r[0] for r in rounds)
  t_torch = min(r[1] for r in rounds)
  ours_tps, torch_tps = tokens * args.iters / t_ours, tokens * args.iters / t_torch
  print(f'config: {args.model or args.family}, {config.num_layers} layers, hidden '
        f'{config.hidden_size}, heads {config.num_heads}/{config.num_kv_heads}, vocab '
        f'{config.vocab_size}, batch {args.batch}, seq {args.seq}, fp32, {args.threads} threads, '
        f'{jax.devices()[0].platform}')
  print(f'max |logit diff| ours vs torch: {max_diff:.2e}')
  print(f'empg_jax (jit):         {ours_tps:12.0f} tokens/s')
  print(f'transformers + torch:   {torch_tps:12.0f} tokens/s')
  print(f'ratio ours / torch:     {ours_tps / torch_tps:12.2f}x')
  if args.model:
    from bench.iteration import forward_flops  # pylint: disable=g-import-not-at-top
    peaks = peaks_lib.resolve(args, matmul_dtype=jnp.float32)
    flops = forward_flops(config, args.batch, args.seq) * args.iters
    print(f'MFU of the measured matmul peak: ours {flops / t_ours / (peaks.tflops * 1e12):.1%}, '
          f'torch {flops / t_torch / (peaks.tflops * 1e12):.1%}; {peaks}')


if __name__ == '__main__':
  main()
