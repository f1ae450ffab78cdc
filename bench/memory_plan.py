"""Memory plan: Qwen2.5-1.5B / 7B on one 141 GB H200 and on 8 x 80 GB (fsdp), measured.

What this codebase holds on device during training (README "Benchmarks"):

* fp32 master parameters (`config.model.param_dtype`), sharded over 'fsdp' on the
  embed axis;
* no separate bf16 sampler copy: the Trainer hands the Sampler its own fp32 parameters
  (`Trainer.sync_sampler` merges `self.params`), and the model casts them to the bf16
  compute dtype inside each program. A cast hoisted out of the decode loop is XLA's
  temporary, so it shows in the sampler program's measured temp bytes, not as a
  component;
* AdamW state: mu and nu, fp32, shaped (and sharded) like the parameters;
* the gradient accumulator of the update step (fp32, like the parameters) and one
  micro-batch's gradients;
* the KV cache, compute dtype (bf16), `[layers, batch, kv_heads, prompt + response,
  head_dim]` for keys and for values, created inside the sampler program;
* activations: the update step keeps one bf16 hidden state per layer (remat per layer)
  plus one layer's recomputation, with float32 attention scores `[micro, heads, seq,
  seq]` and float32 logits `[micro, seq, vocab]` (the XLA attention and the full
  vocabulary head materialise both); the sampler's prefill materialises float32 scores
  `[batch, heads, prompt, cache]` per layer.

Measured: the real programs of this codebase, lowered on abstract arguments
(`jax.ShapeDtypeStruct` with shardings; nothing is allocated) and compiled for the host
CPU: `update.UpdateFunctions.train_step` of an `update.Updater` built from
configs/alfworld.py, and `sampling.Sampler`'s prefill + decode program.
`compiled.memory_analysis()` gives the argument, output, alias (donated) and temporary
bytes per device; peak = arguments + outputs - aliased + temporaries. XLA:CPU's buffer
assignment is not XLA:GPU's (other fusions, no cuDNN attention), so the measured
temporaries are a check of the computed plan, not the GPU's exact number.

  python bench/memory_plan.py                        # both models, 1 and 8 devices
  python bench/memory_plan.py --models 1.5B --devices 1 --layers 2   # quick check

The 8-device case runs on 8 host-platform CPU devices (set before JAX starts).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

if __name__ == '__main__' and 'jax' not in sys.modules:
  flags = os.environ.get('XLA_FLAGS', '')
  if 'xla_force_host_platform_device_count' not in flags:
    os.environ['XLA_FLAGS'] = (flags + ' --xla_force_host_platform_device_count=8').strip()
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position
from flax import nnx  # pylint: disable=wrong-import-position

from empg_jax import sharding  # pylint: disable=wrong-import-position
from empg_jax import update as update_lib  # pylint: disable=wrong-import-position
from empg_jax.models import ModelConfig  # pylint: disable=wrong-import-position
from empg_jax.models.pretrained import abstract_model  # pylint: disable=wrong-import-position
from empg_jax.sampling import Sampler  # pylint: disable=wrong-import-position

GB = 1e9
# Usable bytes per device: the HBM as sold, less ~4% (CUDA context, cuBLAS/cuDNN
# workspaces, XLA's own reserve; JAX preallocates 75% by default: set
# XLA_PYTHON_CLIENT_MEM_FRACTION=.95 for these plans).
TARGETS = {'1xH200': (1, 141e9 * 0.96), '8x80GB': (8, 80e9 * 0.96)}
# The computed totals come out 2-14% below XLA's measured peaks (fusion temporaries the
# component list does not name): the computed fit grid adds this margin.
GRID_MARGIN = 1.15


def qwen25_config(name: str, layers: int | None = None) -> ModelConfig:
  """Qwen2.5-1.5B(-Instruct) or Qwen2.5-7B(-Instruct) shapes (their config.json)."""
  if name == '1.5B':
    shape = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28,
                 num_heads=12, num_kv_heads=2, tie_word_embeddings=True)
  elif name == '7B':
    shape = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
                 num_heads=28, num_kv_heads=4, tie_word_embeddings=False)
  else:
    raise ValueError(f'unknown model {name!r}: 1.5B or 7B')
  if layers:
    shape['num_layers'] = layers
  return ModelConfig(architecture='Qwen2ForCausalLM', head_dim=128, rms_norm_eps=1e-6,
                     rope_theta=1e6, max_position_embeddings=32768, **shape)


def param_count(config: ModelConfig) -> int:
  """Parameters of a Qwen2 decoder, from its shape alone (q/k/v biases, tied head or not)."""
  h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
  q = config.num_heads * config.head_dim
  kv = config.num_kv_heads * config.head_dim
  per_layer = (h * q + q) + 2 * (h * kv + kv) + q * h + 3 * h * i + 2 * h
  head = 0 if config.tie_word_embeddings else v * h
  return config.num_layers * per_layer + v * h + head + h


@dataclasses.dataclass
class Shape:
  rollout_batch: int = 128      # sampler rows (16 groups x 8)
  prompt: int = 4096
  response: int = 512
  micro: int = 8                # update rows per forward/backward, over all devices
  minibatch: int = 256          # rows per optimizer update (configs/alfworld.py)

  @property
  def seq(self) -> int:
    return self.prompt + self.response


def computed(config: ModelConfig, shape: Shape, devices: int) -> dict[str, float]:
  """Bytes per device of each component, from the shapes (see the module docstring)."""
  p = param_count(config)
  f32, bf16 = 4, 2
  b_dev = -(-shape.rollout_batch // devices)   # sampler rows per device
  m_dev = -(-shape.micro // devices)           # update rows per device
  s, h, L = shape.seq, config.hidden_size, config.num_layers
  kv_row = 2 * L * config.num_kv_heads * config.head_dim * bf16   # K and V, per token
  return {
      'params fp32 (masters; the sampler reads them)': p * f32 / devices,
      'bf16 sampler copy (none kept)': 0.0,
      'AdamW mu + nu fp32': 2 * p * f32 / devices,
      'reference params fp32 (algo.kl_coef != 0)': p * f32 / devices,
      'grad accumulator + micro grads fp32': 2 * p * f32 / devices,
      'KV cache bf16 (sampler)': b_dev * s * kv_row,
      'sampler prefill scores + probs fp32 (1 layer)': (
          2 * b_dev * config.num_heads * shape.prompt * s * f32),
      'update: remat carries bf16 (L x micro x seq x hidden)': L * m_dev * s * h * bf16,
      'update: 1 layer recompute (fp32 scores x2, mlp)': (
          2 * m_dev * config.num_heads * s * s * f32
          + 3 * m_dev * s * config.intermediate_size * bf16),
      'update: logits fp32 x5 (logits, log-softmax, probs, entropy, grad)': (
          5 * m_dev * s * config.vocab_size * f32),
  }


def _peak(ma) -> dict[str, float]:
  out = {k: float(getattr(ma, f'{k}_size_in_bytes')) for k in
         ('argument', 'output', 'alias', 'temp')}
  out['peak'] = out['argument'] + out['output'] - out['alias'] + out['temp']
  return out


def _abstract_params(config: ModelConfig, mesh):
  model = abstract_model(config, dtype=jnp.bfloat16, param_dtype=jnp.float32, remat=True,
                         mesh=mesh)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return model, graphdef, sharding.abstract_state_with_sharding(params, mesh), rest


def _train_config(shape: Shape):
  from configs import alfworld
  c = alfworld.get_config()
  c.sampler.max_prompt_tokens = shape.prompt
  c.sampler.max_response_tokens = shape.response
  c.train.micro_batch_size = shape.micro
  c.train.ppo_mini_batch_size = shape.minibatch
  return c


def measure_update(config: ModelConfig, shape: Shape, mesh) -> dict[str, float]:
  """memory_analysis of the Updater's train_step (one optimizer update, remat)."""
  _, graphdef, params, rest = _abstract_params(config, mesh)
  c = _train_config(shape)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  mb_sharding = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(None, sharding.batch_axes()))
  updater = update_lib.Updater(graphdef, rest, c, pad_id=0, minibatch_sharding=mb_sharding,
                               replicated=replicated)
  # As trainer.init_opt_state: mu and nu sharded like the params, counters replicated.
  opt_state = optax.tree_map_params(
      updater.tx, lambda x, p: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=p.sharding),
      jax.eval_shape(updater.tx.init, params), params,
      transform_non_params=lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                          sharding=replicated))
  max_micro = shape.minibatch // shape.micro
  rows = (max_micro, shape.micro)

  def arr(trailing, dtype):
    return jax.ShapeDtypeStruct(rows + trailing, dtype, sharding=mb_sharding)
  minibatch = dict(input_ids=arr((shape.seq,), jnp.int32),
                   attention_mask=arr((shape.seq,), jnp.int32),
                   loss_mask=arr((shape.seq - 1,), jnp.float32), rows=arr((), jnp.int32),
                   old_logprobs=arr((shape.seq - 1,), jnp.float32),
                   ref_logprobs=arr((shape.seq - 1,), jnp.float32))
  scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype, sharding=replicated)  # noqa: E731
  step_adv = jax.ShapeDtypeStruct((updater.sample_capacity,), jnp.float32, sharding=replicated)
  compiled = updater.fns.train_step.lower(params, opt_state, minibatch, step_adv,
                                          scalar(jnp.int32), scalar(jnp.float32)).compile()
  return _peak(compiled.memory_analysis())


def measure_sampler(config: ModelConfig, shape: Shape, mesh) -> dict[str, float]:
  """memory_analysis of the Sampler's prefill + decode program (top-p sampling), on the
  fp32 parameters the Trainer gives it."""
  model, _, _, _ = _abstract_params(config, mesh)
  sampler = Sampler(model, mesh=mesh, max_cache_len=shape.seq)
  state = sharding.abstract_state_with_sharding(sampler._state, mesh)  # pylint: disable=protected-access
  batch_sh = sharding.batch_sharding(mesh, 2)
  rows_sh = sharding.batch_sharding(mesh, 1)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  b = shape.rollout_batch
  prompt = jax.ShapeDtypeStruct((b, shape.prompt), jnp.int32, sharding=batch_sh)
  rows = lambda dtype: jax.ShapeDtypeStruct((b,), dtype, sharding=rows_sh)  # noqa: E731
  scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype, sharding=replicated)  # noqa: E731
  rng = jax.eval_shape(lambda: jax.random.key(0))
  compiled = sampler._program.lower(  # pylint: disable=protected-access
      state, prompt, prompt, rows(jnp.int32), rows(jnp.bool_), rng, scalar(jnp.int32),
      scalar(jnp.float32), scalar(jnp.int32), scalar(jnp.float32),
      jax.ShapeDtypeStruct((config.vocab_size,), jnp.bool_, sharding=replicated), None,
      new_slots=shape.response, cache_len=shape.seq, greedy=False, truncate=True).compile()
  return _peak(compiled.memory_analysis())


def plan_totals(comp: dict[str, float]) -> tuple[float, float]:
  """(training-resident + sampler program, training-resident + update program) bytes.

  Masters and AdamW state stay resident all run; the sampler program adds the KV cache
  and its prefill scores; the update program adds gradients and activations. The two
  programs never run at once."""
  resident = (comp['params fp32 (masters; the sampler reads them)'] + comp['AdamW mu + nu fp32']
              + comp['reference params fp32 (algo.kl_coef != 0)'])
  sampler = (resident + comp['KV cache bf16 (sampler)']
             + comp['sampler prefill scores + probs fp32 (1 layer)'])
  update = resident + sum(v for k, v in comp.items() if k.startswith(('grad', 'update')))
  return sampler, update


def sweep(args: argparse.Namespace, targets: list[str], shape: Shape) -> None:
  """Measured: the largest sampler call (rows) and update micro-batch (rows per device)
  that fit each target at this length, with the resident state added."""
  print(f'\nmeasured sweep at {shape.prompt} + {shape.response} tokens (peak GB per device, '
        'resident state included):')
  for name in args.models:
    config = qwen25_config(name, args.layers)
    for target in targets:
      devices, capacity = TARGETS[target]
      if devices > jax.device_count():
        continue
      mesh = sharding.make_mesh(1, devices, 1, devices=jax.devices()[:devices])
      comp = computed(config, shape, devices)
      adam = comp['AdamW mu + nu fp32']
      ref = comp['reference params fp32 (algo.kl_coef != 0)']
      cells = []
      for batch in (128, 64, 32, 16, 8):
        if batch < devices:
          continue
        s = dataclasses.replace(shape, rollout_batch=batch)
        total = measure_sampler(config, s, mesh)['peak'] + adam + ref
        want = plan_totals(computed(config, s, devices))[0]
        cells.append(f'sampler batch {batch}: measured {total / GB:.1f} computed {want / GB:.1f}'
                     f'{"" if total <= capacity else " (no)"}')
        print(f'  {name} {target} {cells[-1]}', flush=True)
        if total <= capacity:
          break
      for micro_dev in (8, 4, 2, 1):
        s = dataclasses.replace(shape, micro=micro_dev * devices,
                                minibatch=max(shape.minibatch, micro_dev * devices))
        total = measure_update(config, s, mesh)['peak'] + ref
        want = plan_totals(computed(config, s, devices))[1]
        cells.append(f'update micro {micro_dev}/device: measured {total / GB:.1f} computed '
                     f'{want / GB:.1f}'
                     f'{"" if total <= capacity else " (no)"}')
        print(f'  {name} {target} {cells[-1]}', flush=True)
        if total <= capacity:
          break


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', nargs='+', default=['1.5B', '7B'])
  parser.add_argument('--targets', nargs='+', default=list(TARGETS), choices=list(TARGETS))
  parser.add_argument('--devices', type=int, nargs='+', default=None,
                      help='shorthand: 1 -> 1xH200, 8 -> 8x80GB.')
  parser.add_argument('--layers', type=int, default=None, help='override depth (quick checks)')
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--prompt', type=int, default=4096)
  parser.add_argument('--response', type=int, default=512)
  parser.add_argument('--micro', type=int, default=8)
  parser.add_argument('--no-measure', action='store_true', help='computed plan only')
  parser.add_argument('--sweep', action='store_true',
                      help='measure the largest sampler batch and update micro-batch that fit')
  parser.add_argument('--grid', action='store_true',
                      help='also print the computed fit grid over batch and length')
  args = parser.parse_args()
  targets = args.targets
  if args.devices:
    targets = [t for t in TARGETS if TARGETS[t][0] in args.devices]
  shape = Shape(args.batch, args.prompt, args.response, args.micro)
  print(f'backend={jax.default_backend()} devices={jax.device_count()} jax={jax.__version__}; '
        f'rollout batch {shape.rollout_batch} x ({shape.prompt} prompt + {shape.response} '
        f'response), update micro-batch {shape.micro} x {shape.seq}, bf16 compute, fp32 params')
  fits = []
  for name in args.models:
    config = qwen25_config(name, args.layers)
    n = param_count(config)
    for target in targets:
      devices, capacity = TARGETS[target]
      if devices > jax.device_count():
        print(f'{target}: needs {devices} devices, have {jax.device_count()} (set XLA_FLAGS='
              '--xla_force_host_platform_device_count=8 before JAX starts); skipped')
        continue
      mesh = sharding.make_mesh(1, devices, 1, devices=jax.devices()[:devices])
      comp = computed(config, shape, devices)
      print(f'\n== Qwen2.5-{name} ({config.num_layers} layers, {n / 1e9:.3f} B params) on '
            f'{target}: GB per device (capacity {capacity / GB:.0f} usable) ==')
      for k, v in comp.items():
        print(f'  {k:58s} {v / GB:9.2f}')
      want_sampler, want_update = plan_totals(comp)
      measured = {}
      if not args.no_measure:
        for prog, fn in (('sampler', measure_sampler), ('update', measure_update)):
          start = time.perf_counter()
          measured[prog] = fn(config, shape, mesh)
          m = measured[prog]
          print(f'  measured {prog:7s} program: args {m["argument"] / GB:7.2f} out '
                f'{m["output"] / GB:7.2f} aliased {m["alias"] / GB:7.2f} temp '
                f'{m["temp"] / GB:7.2f} -> peak {m["peak"] / GB:7.2f} GB '
                f'(compile {time.perf_counter() - start:.0f} s)', flush=True)
      # The sampler program's arguments are the params only: AdamW state and the reference
      # params are resident too; the update program's arguments hold AdamW, not the
      # reference params.
      adam = comp['AdamW mu + nu fp32']
      ref = comp['reference params fp32 (algo.kl_coef != 0)']
      rows = [('sampler', want_sampler, measured.get('sampler', {}).get('peak'), adam + ref),
              ('update', want_update, measured.get('update', {}).get('peak'), ref)]
      for prog, want, got, extra in rows:
        total_measured = None if got is None else got + extra
        verdict = max(want, total_measured or 0.0) <= capacity
        fits.append((name, target, prog, want, total_measured, capacity, verdict))
        print(f'  total with the program running: {prog:7s} computed {want / GB:8.2f}  '
              f'measured {"-" if got is None else f"{total_measured / GB:8.2f}"}  -> '
              f'{"fits" if verdict else "DOES NOT FIT"}')
  print('\nsummary (GB per device; measured = memory_analysis peak + what stays resident '
        'outside the program: AdamW state and reference params for the sampler, reference '
        'params for the update):')
  print(f'{"model":6s} {"target":8s} {"program":8s} {"computed":>9s} {"measured":>9s} '
        f'{"capacity":>9s}  fit')
  for name, target, prog, want, got, cap, ok in fits:
    print(f'{name:6s} {target:8s} {prog:8s} {want / GB:9.2f} '
          f'{"-" if got is None else f"{got / GB:9.2f}":>9s} {cap / GB:9.0f}  '
          f'{"yes" if ok else "NO"}')
  if args.sweep:
    sweep(args, targets, shape)
  if args.grid:
    print('\ncomputed fit grid, per prompt length (+ response): the largest sampler call '
          '(rows, of 128/64/32/16/8) and the largest update micro-batch (rows per device, of '
          f'8/4/2/1) that fit with the resident state, computed + {GRID_MARGIN - 1:.0%} '
          'margin; "-" = none:')
    for name in args.models:
      config = qwen25_config(name, args.layers)
      for target in targets:
        devices, capacity = TARGETS[target]
        cells = []
        for prompt in (4096, 2048, 1024):
          batch = next((b for b in (128, 64, 32, 16, 8) if plan_totals(computed(
              config, dataclasses.replace(shape, rollout_batch=b, prompt=prompt),
              devices))[0] * GRID_MARGIN <= capacity), None)
          micro = next((m for m in (8, 4, 2, 1) if plan_totals(computed(
              config, dataclasses.replace(shape, prompt=prompt, micro=m * devices),
              devices))[1] * GRID_MARGIN <= capacity), None)
          cells.append(f'{prompt}+{shape.response}: sampler {batch or "-"}, update '
                       f'{micro or "-"}/device')
        print(f'  {name:5s} {target:7s} ' + ' | '.join(cells))

if __name__ == '__main__':
  main()
