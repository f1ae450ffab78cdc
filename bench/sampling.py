"""Rollout throughput: our jitted Sampler against `transformers` `generate`.

Default (CPU peer comparison): one random Qwen2-architecture model (4 layers,
hidden 256, vocab 2048) saved as an HF directory, loaded by both sides with the
same weights; a batch of 32 prompts of random lengths 16..48 (left-padded for
HF); 64 new tokens forced on both sides (no stop ids; `min_new_tokens` for HF);
temperature-1 sampling with no top-k/top-p. Our sampler also returns per-token
log-probs and entropies, HF returns tokens only. Both are warmed up (our first
call compiles) and timed over `--repeats` calls; the median is reported.

    python bench/sampling.py
    python bench/sampling.py --gpu-shape                         # on an H100 / H200
    python bench/sampling.py --gpu-shape --layers 2 --batch 8 --prompt-len 32 \
        --new-tokens 8                                           # code-path check on CPU
    python bench/sampling.py --truncation    # top-k/top-p: candidates vs whole-row sort
    python bench/sampling.py --smollm2       # a real model (or --model DIR) vs transformers

`--smollm2` / `--model DIR` (an HF directory, e.g. what `launch/convert_gguf.py
--smollm2` writes): the real model, loaded by both sides from the same files, at batches
8 and 32 (`--batches`), prompts of random token ids of about 200 tokens (`--prompt-len`),
greedy and top-p 0.9 sampling, `--new-tokens` forced (no stop ids). Per setting it prints
ours and transformers' `generate` times and their ratio (median of `--repeats`
interleaved rounds), how many greedy rows are identical, and the limit fractions: decode
(ms per step from a 1-token and an N-token call) against the bandwidth bound (weights +
mean KV cache read once per step, at the measured copy bandwidth) and the prefill's MFU
against the measured matmul throughput (bench/peaks.py).

`--gpu-shape` builds a Qwen2.5-1.5B-shaped random model (28 layers, hidden
1536, 12 heads, 2 KV heads, intermediate 8960, vocab 151936, tied embeddings)
in bf16 and reports tokens/s and the fraction of the memory-bandwidth roofline:
per decode step the weights and the KV cache of the tokens so far must be read
once, so the ideal step time is (param bytes + mean KV bytes) / peak bandwidth.
The decode step time is (time(N new tokens) - time(1 new token)) / (N - 1),
which takes the prefill out (both calls run the same compiled program, the
number of new tokens being a runtime value). The prefill (+ 1 token) call is
reported as MFU: forward FLOPs of the prompt batch over time x peak matmul
throughput. Peaks (bench/peaks.py): --peak-bw-gbs / --peak-tflops, else the
device's datasheet values (H100 SXM 3350 GB/s, H200 4800 GB/s, 989 bf16
TFLOP/s), else measured (CPU: a large copy and a large jitted matmul).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from flax import nnx  # pylint: disable=wrong-import-position

from bench import peaks as peaks_lib  # pylint: disable=wrong-import-position
from bench.iteration import forward_flops  # pylint: disable=wrong-import-position
from empg_jax import sampling  # pylint: disable=wrong-import-position
from empg_jax.models import ModelConfig, init_random, load_pretrained  # pylint: disable=wrong-import-position


def _prompts(batch: int, min_len: int, max_len: int, vocab: int, seed: int = 0) -> list[list[int]]:
  rng = np.random.default_rng(seed)
  return [rng.integers(1, vocab, size=rng.integers(min_len, max_len + 1)).tolist()
          for _ in range(batch)]


def _median_time(fn, repeats: int) -> float:
  # Callers warm up themselves (the first call's compile time is reported).
  return peaks_lib.median_seconds(fn, repeats, warm_up=False)


def _generate_and_block(sampler, prompts, params, seed):
  # generate() already returns host numpy arrays, so the device work is done.
  return sampler.generate(prompts, params, rng=jax.random.key(seed))


def _hf_generate(hf_model, prompts, new_tokens: int, *, greedy: bool, top_p: float):
  """transformers' generate on the left-padded prompts -> [B, new_tokens] token ids."""
  import torch  # pylint: disable=g-import-not-at-top
  width = max(len(p) for p in prompts)
  input_ids = torch.zeros((len(prompts), width), dtype=torch.long)
  attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
  for i, p in enumerate(prompts):
    input_ids[i, width - len(p):] = torch.tensor(p)
    attention_mask[i, width - len(p):] = 1
  sampling_kwargs = ({'do_sample': False} if greedy else
                     {'do_sample': True, 'temperature': 1.0, 'top_k': 0, 'top_p': top_p})
  with torch.no_grad():
    out = hf_model.generate(
        input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=new_tokens,
        min_new_tokens=new_tokens, pad_token_id=0, eos_token_id=None, **sampling_kwargs)
  return out[:, width:].numpy()


def bench_vs_transformers(args: argparse.Namespace) -> None:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count() or 1)
  hf_config = transformers.Qwen2Config(
      vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 3,
      num_hidden_layers=args.layers or 4, num_attention_heads=args.heads,
      num_key_value_heads=args.kv_heads, max_position_embeddings=2048,
      tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=0)
  torch.manual_seed(0)
  hf_model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32).eval()
  prompts = _prompts(args.batch, 16, 48, args.vocab)
  new_tokens = args.new_tokens

  with tempfile.TemporaryDirectory() as model_dir:
    hf_model.save_pretrained(model_dir)
    model = load_pretrained(model_dir)
  sampler = sampling.Sampler(model)
  params = sampling.SamplingParams(new_tokens, temperature=1.0)

  def run_hf():
    out = _hf_generate(hf_model, prompts, new_tokens, greedy=False, top_p=1.0)
    assert out.shape[1] == new_tokens
    return out

  start = time.perf_counter()
  first = _generate_and_block(sampler, prompts, params, 0)
  compile_s = time.perf_counter() - start
  assert all(len(t) == new_tokens for t in first.tokens)
  run_hf()  # warm-up
  ours_s = _median_time(lambda: _generate_and_block(sampler, prompts, params, 1), args.repeats)
  hf_s = _median_time(run_hf, args.repeats)
  total = len(prompts) * new_tokens
  print(f'model: Qwen2 {hf_config.num_hidden_layers} layers, hidden {args.hidden}, vocab '
        f'{args.vocab}; batch {len(prompts)}, prompts 16..48 tokens, {new_tokens} new tokens, '
        f'T=1 sampling; {jax.devices()[0].platform}, {os.cpu_count()} CPU threads')
  print(f'ours (first call incl. compile): {compile_s:.2f} s')
  print(f'ours (tokens + log-probs + entropies): {ours_s:.3f} s  {total / ours_s:9.1f} tokens/s')
  print(f'transformers generate (tokens):      {hf_s:.3f} s  {total / hf_s:9.1f} tokens/s')
  print(f'speed-up ours / transformers: {hf_s / ours_s:.2f}x')


def bench_real_model(args: argparse.Namespace) -> list[dict[str, float]]:
  """Our Sampler vs transformers generate on a real HF model, with limit fractions.

  Returns one dict per (batch, mode) with the printed figures."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count() or 1)
  model_dir = args.model
  if args.smollm2:
    from empg_jax import model_cache  # pylint: disable=g-import-not-at-top
    model_dir = str(model_cache.prepare_smollm2('float32'))
  peaks = peaks_lib.resolve(args, matmul_dtype=jnp.float32)
  model = load_pretrained(model_dir)
  config = model.config
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(
      model_dir, dtype=torch.float32).eval()
  leaves = jax.tree.leaves(nnx.state(model))
  param_bytes = sum(x.nbytes for x in leaves)
  param_dtype = leaves[0].dtype.name
  kv_itemsize = jnp.dtype(model.init_cache(1, 1).k.dtype).itemsize
  kv_bytes_per_token = 2 * config.num_layers * config.num_kv_heads * config.head_dim * kv_itemsize
  sampler = sampling.Sampler(model)
  new_tokens, lo = args.new_tokens, args.prompt_len - args.prompt_len // 8
  print(f'model: {model_dir} ({config.architecture}, {config.num_layers} layers, hidden '
        f'{config.hidden_size}, {param_bytes / 1e6:.0f} MB of {param_dtype} params); '
        f'prompts {lo}..{args.prompt_len} tokens, {new_tokens} new tokens; '
        f'{jax.devices()[0].platform}, {os.cpu_count()} CPU threads; {peaks}')
  results = []
  for batch in args.batches:
    prompts = _prompts(batch, lo, args.prompt_len, config.vocab_size, seed=batch)
    for mode, top_p in (('greedy', 1.0), ('top-p 0.9', 0.9)):
      greedy = mode == 'greedy'
      temperature = 0.0 if greedy else 1.0
      full = sampling.SamplingParams(new_tokens, temperature=temperature, top_p=top_p)
      one = sampling.SamplingParams(1, temperature=temperature, top_p=top_p)
      ours = _generate_and_block(sampler, prompts, full, 0)   # compiles
      _generate_and_block(sampler, prompts, one, 0)
      theirs = _hf_generate(hf_model, prompts, new_tokens, greedy=greedy, top_p=top_p)
      same = sum(list(t) == list(h) for t, h in zip(ours.tokens, theirs)) if greedy else None
      rounds = []
      for r in range(args.repeats):   # interleaved, so background load hits both alike
        rounds.append((
            _median_time(lambda: _generate_and_block(sampler, prompts, full, r + 1), 1),
            _median_time(lambda: _generate_and_block(sampler, prompts, one, r + 1), 1),
            _median_time(lambda: _hf_generate(hf_model, prompts, new_tokens, greedy=greedy,
                                              top_p=top_p), 1)))
      ours_s, prefill_s, hf_s = (statistics.median(x) for x in zip(*rounds))
      step_s = max(ours_s - prefill_s, 1e-9) / (new_tokens - 1)
      mean_context = (lo + args.prompt_len) / 2 + new_tokens / 2
      ideal_step_s = ((param_bytes + batch * mean_context * kv_bytes_per_token)
                      / (peaks.bandwidth_gbs * 1e9))
      prefill_mfu = (forward_flops(config, batch, (lo + args.prompt_len) // 2, head_positions=1)
                     / prefill_s / (peaks.tflops * 1e12))
      print(f'batch {batch:3d} {mode:9s}: ours {ours_s:6.2f} s, transformers {hf_s:6.2f} s, '
            f'ours/transformers speed {hf_s / ours_s:4.2f}x'
            + (f', greedy rows identical {same}/{batch}' if greedy else '')
            + f'; decode {step_s * 1e3:6.1f} ms/step = {ideal_step_s / step_s:5.1%} of the '
            f'bandwidth bound ({ideal_step_s * 1e3:.1f} ms); prefill {prefill_s:5.2f} s = '
            f'{prefill_mfu:5.1%} MFU', flush=True)
      results.append({'batch': batch, 'mode': mode, 'ours_s': ours_s, 'hf_s': hf_s,
                      'speedup': hf_s / ours_s, 'greedy_identical': same,
                      'decode_fraction': ideal_step_s / step_s, 'prefill_mfu': prefill_mfu})
  return results


def qwen25_1p5b_config(layers: int | None) -> ModelConfig:
  return ModelConfig(
      architecture='Qwen2ForCausalLM', vocab_size=151936, hidden_size=1536,
      intermediate_size=8960, num_layers=layers or 28, num_heads=12, num_kv_heads=2,
      head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=32768,
      tie_word_embeddings=True)


def bench_gpu_shape(args: argparse.Namespace) -> None:
  peaks = peaks_lib.resolve(args, matmul_dtype=jnp.bfloat16)
  config = qwen25_1p5b_config(args.layers)
  model = init_random(config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model)))
  prompt_len, new_tokens = args.prompt_len, args.new_tokens
  if new_tokens < 2:
    raise ValueError('--gpu-shape needs --new-tokens >= 2 to separate decode from prefill.')
  prompts = _prompts(args.batch, prompt_len, prompt_len, config.vocab_size)
  sampler = sampling.Sampler(model)
  params = sampling.SamplingParams(new_tokens, temperature=1.0)
  one = sampling.SamplingParams(1, temperature=1.0)

  start = time.perf_counter()
  _generate_and_block(sampler, prompts, params, 0)
  compile_s = time.perf_counter() - start
  full_s = _median_time(lambda: _generate_and_block(sampler, prompts, params, 1), args.repeats)
  prefill_s = _median_time(lambda: _generate_and_block(sampler, prompts, one, 2), args.repeats)
  step_s = max(full_s - prefill_s, 1e-9) / (new_tokens - 1)
  kv_bytes_per_token = (2 * config.num_layers * config.num_kv_heads * config.head_dim
                        * jnp.dtype(jnp.bfloat16).itemsize)
  mean_context = prompt_len + new_tokens / 2
  kv_bytes = args.batch * mean_context * kv_bytes_per_token
  ideal_step_s = (param_bytes + kv_bytes) / (peaks.bandwidth_gbs * 1e9)
  prefill_mfu = (forward_flops(config, args.batch, prompt_len, head_positions=1) / prefill_s
                 / (peaks.tflops * 1e12))
  print(f'model: Qwen2.5-1.5B shape, {config.num_layers} layers, {param_bytes / 1e9:.2f} GB of '
        f'bf16 params; batch {args.batch}, prompt {prompt_len}, {new_tokens} new tokens; '
        f'device {jax.devices()[0].device_kind}')
  print(f'first call incl. compile: {compile_s:.1f} s; prefill + 1 token: {prefill_s:.3f} s; '
        f'full call: {full_s:.3f} s')
  print(f'decode: {step_s * 1e3:.2f} ms/step, {args.batch / step_s:.1f} tokens/s; overall '
        f'{args.batch * new_tokens / full_s:.1f} tokens/s')
  print(f'bytes read per step: params {param_bytes / 1e9:.3f} GB + KV {kv_bytes / 1e9:.3f} GB '
        f'-> ideal {ideal_step_s * 1e3:.2f} ms at {peaks.bandwidth_gbs:g} GB/s; roofline '
        f'fraction {ideal_step_s / step_s:.2%}')
  print(f'prefill (+ 1 token) MFU {prefill_mfu:.2%} of {peaks.tflops:g} TFLOP/s; {peaks}')


def bench_truncation(args: argparse.Namespace) -> None:
  """Per decode step: top-k / top-p truncation + sampling, candidates vs whole-row sort."""

  def sort_based(logits, top_k, top_p):
    threshold = sampling.sorted_truncation_threshold(logits, top_k, top_p)
    return jnp.where(logits >= threshold, logits, -jnp.inf)

  def program(truncate):
    return jax.jit(lambda logits, key, top_k, top_p: jax.random.categorical(
        key, truncate(logits, top_k, top_p)))

  methods = {'sort': program(sort_based), 'candidates': program(sampling.truncate_logits)}
  print(f'top-k / top-p truncation + categorical per decode step (median of {args.repeats * 10}); '
        f'{sampling.TRUNCATION_CANDIDATES} candidates; {jax.devices()[0].platform}, '
        f'{os.cpu_count()} CPU threads. peaked: logits ~ N(0, 6^2) (top-p 0.9 nucleus of '
        'about 15-70 tokens: decided among the candidates); flat: N(0, 1) (a nucleus of '
        'thousands: the whole-row sort fallback).')
  for vocab in (49152, 151936):
    for batch in (8, 32):
      for regime, scale in (('peaked', 6.0), ('flat', 1.0)):
        logits = jax.random.normal(jax.random.key(vocab + batch), (batch, vocab)) * scale
        for top_k, top_p in ((0, 0.9), (50, 1.0)):
          args_ = (logits, jax.random.key(0), jnp.int32(top_k), jnp.float32(top_p))
          times = {}
          for name, fn in methods.items():
            fn(*args_).block_until_ready()
            times[name] = _median_time(lambda: fn(*args_).block_until_ready(), args.repeats * 10)
          print(f'vocab {vocab:6d} batch {batch:2d} {regime:6s} top_k={top_k:2d} top_p={top_p}: '
                f'sort {times["sort"] * 1e3:7.2f} ms  candidates {times["candidates"] * 1e3:7.2f} ms'
                f'  speed-up {times["sort"] / times["candidates"]:5.1f}x', flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--gpu-shape', action='store_true',
                      help='Qwen2.5-1.5B-shaped bf16 model, tokens/s and roofline fraction.')
  parser.add_argument('--truncation', action='store_true',
                      help='top-k / top-p per decode step: candidates vs whole-row sort.')
  parser.add_argument('--layers', type=int, default=None,
                      help='override the number of layers (default 4, or 28 with --gpu-shape).')
  parser.add_argument('--batch', type=int, default=None, help='default 32, or 128 with --gpu-shape.')
  parser.add_argument('--new-tokens', type=int, default=64)
  parser.add_argument('--prompt-len', type=int, default=None,
                      help='--gpu-shape prompt length (default 512); real-model mode: the longest '
                      'prompt (default 224, prompts from 7/8 of it).')
  parser.add_argument('--hidden', type=int, default=256)
  parser.add_argument('--heads', type=int, default=4)
  parser.add_argument('--kv-heads', type=int, default=2)
  parser.add_argument('--vocab', type=int, default=2048)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--model', default=None,
                      help='an HF model directory: real-model mode (see the module docstring).')
  parser.add_argument('--smollm2', action='store_true',
                      help='real-model mode on SmolLM2-135M-Instruct (fetched and converted once).')
  parser.add_argument('--batches', type=lambda v: [int(b) for b in v.split(',')], default=[8, 32],
                      help='real-model mode: comma-separated batch sizes.')
  peaks_lib.add_flags(parser)
  args = parser.parse_args(argv)
  if args.batch is None:
    args.batch = 128 if args.gpu_shape else 32
  if args.prompt_len is None:
    args.prompt_len = 512 if args.gpu_shape else 224
  return args


def main() -> None:
  args = parse_args()
  if args.truncation:
    bench_truncation(args)
  elif args.model or args.smollm2:
    bench_real_model(args)
  elif args.gpu_shape:
    bench_gpu_shape(args)
  else:
    bench_vs_transformers(args)


if __name__ == '__main__':
  main()
