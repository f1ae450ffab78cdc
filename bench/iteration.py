"""One full training iteration at Qwen2.5-1.5B shape, random weights, built-in ALFWorld.

The project's own `Trainer` runs `--iterations` iterations (default 2: the first
compiles) of configs/alfworld.py (GRPO + EMPG, KL to the reference, paper settings) with
16 groups x 8 episodes, and the last iteration's row is reported from the Trainer's own
metrics (`time/rollout_s`, `time/update_s`, `perf/tokens_per_s`, `perf/compile_s`). The
bench only adds timers around calls the Trainer already makes, to split them further:

* generation: `Sampler.generate` calls (the rollout's sampling);
* env: the rest of `time/rollout_s` (env steps not hidden behind generation by
  `agent.overlap_env_steps`, prompt building, tokenisation);
* scoring: `UpdateFunctions.score` (old and reference log-probs), blocked on;
* update: `UpdateFunctions.train_step` (forward + backward + AdamW), blocked on;
* other: the rest of `time/update_s` (mini-batch plan, advantages, host transfers).

Model: the Trainer's `models.load_pretrained` is replaced by `models.init_random` of the
Qwen2.5-1.5B shape (28 layers, hidden 1536, 12/2 heads, vocab 151936, tied head; fp32
params, bf16 compute, remat), so no 6 GB file is written; the tokenizer is a small BPE
trained here on ALFWorld prompt text (ids past its vocabulary decode to nothing). A
random policy never writes `</action>`: every response runs to `--response-tokens` and
every episode to `--max-steps` turns, the slowest case for both. The checkpoint the
Trainer writes after its last iteration is skipped (not part of an iteration).

Figures:

* decode roofline fraction: the ideal time of the rollout's generate calls (each
  prefill at the matmul peak; each decode step reading the parameters as the sampler
  holds them, fp32 here, and the KV cache filled so far at the bandwidth peak) over
  their measured time. The sampler keeps no bf16 copy; the fraction against a bf16
  weight read is printed beside it;
* update MFU: model FLOPs of the train_step calls (6 x matmul params x tokens + causal
  attention 12 x layers x heads x head_dim x seq^2 / 2 per row, on the padded rows the
  step computes; remat's recomputation not counted) over time x peak; scoring MFU alike
  with 2x.

Peaks come from bench/peaks.py (flags, else the device's datasheet, else measured).

  python bench/iteration.py                                   # accelerator, full shape
  python bench/iteration.py --cpu-smoke                       # CPU: shrunk, code path only
  python bench/iteration.py --layers 2 --hidden 256 --groups 2 --group-size 4 --max-steps 2

Scripts that start env pools need the `__main__` guard (spawned workers re-import).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

from bench import peaks as peaks_lib  # pylint: disable=wrong-import-position

# Shrunk shape of --cpu-smoke (the code path, in about a minute on 2 CPU cores).
CPU_SMOKE = dict(layers=2, hidden=128, intermediate=384, heads=4, kv_heads=2, vocab=4096,
                 groups=2, group_size=2, max_steps=2, response_tokens=8, prompt_tokens=2048,
                 iterations=1, micro=8, minibatch=16)


def add_model_shape_flags(parser: argparse.ArgumentParser) -> None:
  """The model-shape flags `model_config` reads (defaults: Qwen2.5-1.5B)."""
  parser.add_argument('--layers', type=int, default=28)
  parser.add_argument('--hidden', type=int, default=1536)
  parser.add_argument('--intermediate', type=int, default=8960)
  parser.add_argument('--heads', type=int, default=12)
  parser.add_argument('--kv-heads', type=int, default=2)
  parser.add_argument('--vocab', type=int, default=151936)


def model_config(args: argparse.Namespace):
  from empg_jax.models import ModelConfig
  return ModelConfig(
      architecture='Qwen2ForCausalLM', vocab_size=args.vocab, hidden_size=args.hidden,
      intermediate_size=args.intermediate, num_layers=args.layers, num_heads=args.heads,
      num_kv_heads=args.kv_heads, head_dim=args.hidden // args.heads, rms_norm_eps=1e-6,
      rope_theta=1e6, max_position_embeddings=32768, tie_word_embeddings=True)


def build_tokenizer(out_dir: str):
  from empg_jax import prompts as prompts_lib
  from empg_jax.tiny_tokenizer import build_tokenizer as build
  template = prompts_lib.get_template('alfworld')
  text = template.render(
      task='put a clean mug in coffeemachine.',
      observation='You are in the middle of a room. Looking quickly around you, you see a '
                  'cabinet 1, a countertop 1, a drawer 2, a fridge 1 and a sinkbasin 1.',
      admissible_actions=['go to cabinet 1', 'open fridge 1', 'take mug 1 from countertop 1',
                          'clean mug 1 with sinkbasin 1', 'look', 'inventory'],
      history=[], step_count=0, require_think=True)
  tokenizer = build([text] * 20, out_dir, vocab_size=1024)
  # A 1-layer stand-in model.safetensors + config.json for the config checks; the Trainer's
  # load is replaced by the random model of the benchmark's shape (`run`).
  from empg_jax.bootstrap import write_random_model
  write_random_model(out_dir, tokenizer, hidden_size=32, intermediate_size=64, num_layers=1,
                     num_heads=2, num_kv_heads=1, max_positions=32768)
  return tokenizer


def train_config(args: argparse.Namespace, model_dir: str):
  from configs import alfworld
  c = alfworld.get_config()
  c.model.path = model_dir
  c.model.attention_impl = args.attention_impl
  c.rl.num_groups, c.rl.group_size = args.groups, args.group_size
  c.env.max_steps = args.max_steps
  c.env.num_workers = args.env_workers
  c.env.kwargs.source = 'generated'
  c.sampler.max_prompt_tokens = args.prompt_tokens
  c.sampler.max_response_tokens = args.response_tokens
  c.train.micro_batch_size = args.micro
  c.train.ppo_mini_batch_size = args.minibatch
  c.eval_every = 0
  c.total_iterations = args.iterations
  c.checkpoint_every = 10**9
  c.bootstrap.enabled = False
  c.log.tensorboard = False
  return c


class Timers:
  """Seconds and call records of the wrapped calls, per iteration."""

  def __init__(self):
    self.reset()

  def reset(self):
    self.seconds = {'generation': 0.0, 'scoring': 0.0, 'update': 0.0}
    self.generate_calls: list[tuple[int, int, int, float]] = []  # (batch, prompt, steps, s)
    self.score_tokens = 0     # padded tokens scored
    self.score_rows_seq: list[tuple[int, int]] = []
    self.update_rows_seq: list[tuple[int, int]] = []


def instrument(trainer, timers: Timers) -> None:
  """Timers around the Sampler's generate and the Updater's score / train_step."""
  sampler = trainer.sampler
  generate = sampler.generate

  @functools.wraps(generate)
  def timed_generate(prompts, params, **kwargs):
    start = time.perf_counter()
    result = generate(prompts, params, **kwargs)
    seconds = time.perf_counter() - start
    steps = max((len(t) for t in result.tokens), default=0)
    batch_b, prompt_b, _, _ = sampler._shapes(  # pylint: disable=protected-access
        len(prompts), max(len(p) for p in prompts), params.max_new_tokens)
    timers.generate_calls.append((batch_b, prompt_b, steps, seconds))
    timers.seconds['generation'] += seconds
    return result
  sampler.generate = timed_generate

  fns = trainer.updater.fns

  def timed(name, fn, record, arrays_at, num_micro_at):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
      start = time.perf_counter()
      out = jax.block_until_ready(fn(*args, **kwargs))
      timers.seconds[name] += time.perf_counter() - start
      micro, seq = args[arrays_at]['input_ids'].shape[1:]
      getattr(timers, record).append((int(args[num_micro_at]) * micro, seq))
      return out
    return wrapper
  # score(params, arrays, num_micro, ...); train_step(params, opt_state, arrays, step_adv,
  # num_micro, normalizer).
  # Records by name: `Timers.reset` replaces the lists after each iteration.
  fns.score = timed('scoring', fns.score, 'score_rows_seq', 1, 2)
  fns.train_step = timed('update', fns.train_step, 'update_rows_seq', 2, 4)


def matmul_params(config) -> int:
  """Parameters that take part in matmuls per token (the embedding lookup does not; the
  tied head does)."""
  h, q = config.hidden_size, config.num_heads * config.head_dim
  kv = config.num_kv_heads * config.head_dim
  per_layer = h * q + 2 * h * kv + q * h + 3 * h * config.intermediate_size
  return config.num_layers * per_layer + config.vocab_size * h


def forward_flops(config, rows: int, seq: int, head_positions: int | None = None) -> float:
  """Forward FLOPs of `rows` x `seq` tokens (causal attention counted at half); the
  vocabulary head on `head_positions` per row (default all `seq`; a prefill: 1)."""
  head = config.vocab_size * config.hidden_size
  head_positions = seq if head_positions is None else head_positions
  attention = 2 * 2 * config.num_layers * config.num_heads * config.head_dim * seq * seq / 2
  return rows * (2 * (matmul_params(config) - head) * seq + 2 * head * head_positions
                 + attention)


def decode_ideal_seconds(config, calls, peaks, weight_bytes: int) -> float:
  """Ideal time of the generate calls: prefill at the matmul peak, decode steps at the
  bandwidth peak (weights + the KV cache so far)."""
  kv_per_token = 2 * config.num_layers * config.num_kv_heads * config.head_dim * 2  # bf16
  total = 0.0
  for batch, prompt, steps, _ in calls:
    total += forward_flops(config, batch, prompt, head_positions=1) / (peaks.tflops * 1e12)
    for t in range(1, steps):
      total += (weight_bytes + batch * (prompt + t) * kv_per_token) / (peaks.bandwidth_gbs * 1e9)
  return total


def run(args: argparse.Namespace) -> dict[str, float]:
  from empg_jax import models
  from empg_jax.trainer import Trainer
  peaks = peaks_lib.resolve(args, matmul_dtype=jnp.bfloat16 if jax.default_backend() != 'cpu'
                            else jnp.float32)
  config = model_config(args)
  with tempfile.TemporaryDirectory() as root:
    model_dir = os.path.join(root, 'model')
    build_tokenizer(model_dir)
    c = train_config(args, model_dir)

    def random_model(path, *, mesh=None, dtype=jnp.float32, param_dtype=jnp.float32,
                     remat=False, attention_impl='xla'):
      del path
      return models.init_random(config, mesh=mesh, dtype=dtype, param_dtype=param_dtype,
                                remat=remat, attention_impl=attention_impl)

    load = models.load_pretrained
    models.load_pretrained = random_model
    try:
      trainer = Trainer(c, os.path.join(root, 'work'))
    finally:
      models.load_pretrained = load
    trainer.save = lambda *a, **k: None   # a 1.5B checkpoint is not part of an iteration
    # Every iteration plays the first iteration's tasks, so the built-in games are
    # generated (on first use) during the first, compiling iteration, not the timed one.
    train_tasks = trainer.train_tasks
    trainer.train_tasks = lambda iteration, count, salt=0: train_tasks(1, count, salt)
    timers = Timers()
    instrument(trainer, timers)
    rows = []
    write = trainer.metrics.write

    def keep_row(iteration, row):
      rows.append((dict(row), dict(timers.seconds), list(timers.generate_calls),
                   list(timers.score_rows_seq), list(timers.update_rows_seq)))
      timers.reset()
      return write(iteration, row)
    trainer.metrics.write = keep_row
    try:
      trainer.train()
    finally:
      trainer.close()

  row, seconds, calls, scored, updated = rows[-1]
  n_params = sum(x.size for x in jax.tree.leaves(trainer.params))
  weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(trainer.params))
  rollout_s, update_s = row['time/rollout_s'], row['time/update_s']
  ideal = decode_ideal_seconds(config, calls, peaks, weight_bytes)
  ideal_bf16 = decode_ideal_seconds(config, calls, peaks, n_params * 2)
  gen = max(seconds['generation'], 1e-9)
  update_flops = sum(3 * forward_flops(config, r, s) for r, s in updated)
  score_flops = sum(forward_flops(config, r, s) for r, s in scored)
  out = {
      'iteration_s': rollout_s + update_s,
      'generation_s': seconds['generation'],
      'env_s': rollout_s - seconds['generation'],
      'scoring_s': seconds['scoring'],
      'update_s': seconds['update'],
      'other_update_s': update_s - seconds['scoring'] - seconds['update'],
      'tokens_per_s': row['perf/tokens_per_s'],
      'generated_tokens': row['perf/tokens_per_s'] * rollout_s,
      'generate_calls': len(calls),
      'decode_roofline_fraction': ideal / gen,
      'decode_roofline_fraction_bf16_weights': ideal_bf16 / gen,
      'update_mfu': update_flops / max(seconds['update'], 1e-9) / (peaks.tflops * 1e12),
      'scoring_mfu': score_flops / max(seconds['scoring'], 1e-9) / (peaks.tflops * 1e12),
      'update_tokens': sum(r * s for r, s in updated),
      'compile_s_first_iteration': rows[0][0].get('perf/compile_s', float('nan')),
      'compilations_last_iteration': row.get('perf/compilations', float('nan')),
      'params': n_params,
  }
  print(f'device {jax.devices()[0].device_kind} x{jax.device_count()}; {peaks}')
  print(f'model: {config.num_layers} layers, hidden {config.hidden_size}, heads '
        f'{config.num_heads}/{config.num_kv_heads}, vocab {config.vocab_size}: '
        f'{n_params / 1e9:.3f} B params ({weight_bytes / 1e9:.2f} GB as the sampler reads '
        f'them); ALFWorld {args.groups} groups x {args.group_size}, {args.max_steps} turns, '
        f'{args.response_tokens} response tokens, prompts <= {args.prompt_tokens}; '
        f'iteration {len(rows)} of {len(rows)} (the first compiles: '
        f'{out["compile_s_first_iteration"]:.1f} s of compilation)')
  print(f'iteration {out["iteration_s"]:.2f} s = rollout {rollout_s:.2f} s (generation '
        f'{out["generation_s"]:.2f} s in {len(calls)} calls, env + host {out["env_s"]:.2f} s)'
        f' + update {update_s:.2f} s (scoring {out["scoring_s"]:.2f} s, train steps '
        f'{out["update_s"]:.2f} s, other {out["other_update_s"]:.2f} s)')
  print(f'generation: {out["generated_tokens"]:.0f} tokens, {out["tokens_per_s"]:.1f} tokens/s '
        f'over the rollout (the Trainer\'s perf/tokens_per_s), '
        f'{out["generated_tokens"] / gen:.1f} tokens/s over the generate calls; decode roofline '
        f'fraction '
        f'{out["decode_roofline_fraction"]:.1%} (fp32 weights as read; '
        f'{out["decode_roofline_fraction_bf16_weights"]:.1%} against a bf16 weight read)')
  print(f'update MFU {out["update_mfu"]:.1%} over {out["update_tokens"]} padded tokens '
        f'in {len(updated)} optimizer steps; scoring MFU {out["scoring_mfu"]:.1%}')
  print(f'compilations in the last iteration: {out["compilations_last_iteration"]:.0f}')
  if args.json:
    print('json ' + json.dumps(out))
  return out


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--cpu-smoke', action='store_true',
                      help=f'shrunk shape for a CPU code-path check: {CPU_SMOKE}')
  add_model_shape_flags(parser)
  parser.add_argument('--groups', type=int, default=16)
  parser.add_argument('--group-size', type=int, default=8)
  parser.add_argument('--max-steps', type=int, default=50,
                      help='ALFWorld turns (a random policy plays all of them)')
  parser.add_argument('--response-tokens', type=int, default=512)
  parser.add_argument('--prompt-tokens', type=int, default=2048)
  parser.add_argument('--micro', type=int, default=8, help='train.micro_batch_size')
  parser.add_argument('--minibatch', type=int, default=256, help='train.ppo_mini_batch_size')
  parser.add_argument('--iterations', type=int, default=2, help='the last one is reported')
  parser.add_argument('--env-workers', type=int, default=min(8, os.cpu_count() or 1))
  parser.add_argument('--attention-impl', default='xla', choices=('xla', 'cudnn'))
  parser.add_argument('--json', action='store_true', help='also print the figures as JSON')
  peaks_lib.add_flags(parser)
  # --cpu-smoke changes the defaults only: flags given explicitly still win.
  if parser.parse_known_args(argv)[0].cpu_smoke:
    parser.set_defaults(**CPU_SMOKE)
  return parser.parse_args(argv)


if __name__ == '__main__':
  run(parse_args())
