"""bench/: the memory plan's computed bytes against the real model and programs, the peaks
table, and the shrunk iteration benchmark end to end. Timings are never asserted."""
import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import memory_plan, peaks  # noqa: E402
from empg_jax import sharding  # noqa: E402
from empg_jax.models.pretrained import abstract_model  # noqa: E402


@pytest.mark.parametrize("name, official", [("1.5B", 1_543_714_304), ("7B", 7_615_616_512)])
def test_param_count_is_the_models_and_the_published_one(name, official):
  config = memory_plan.qwen25_config(name)
  params = nnx.state(abstract_model(config), nnx.Param)
  counted = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  assert memory_plan.param_count(config) == counted == official


@pytest.mark.parametrize("devices", [1, 8])
def test_computed_bytes_are_counts_times_dtype_sizes(devices):
  config = memory_plan.qwen25_config("1.5B")
  shape = memory_plan.Shape(rollout_batch=128, prompt=4096, response=512, micro=8)
  comp = memory_plan.computed(config, shape, devices)
  n = memory_plan.param_count(config)
  assert comp["params fp32 (masters; the sampler reads them)"] == n * 4 / devices
  assert comp["AdamW mu + nu fp32"] == 2 * n * 4 / devices
  model = abstract_model(config, dtype=jnp.bfloat16)
  cache = jax.eval_shape(lambda: model.init_cache(128 // devices, 4608))
  assert comp["KV cache bf16 (sampler)"] == sum(x.size * x.dtype.itemsize
                                                 for x in jax.tree.leaves(cache))


@pytest.mark.slow
def test_measured_arguments_are_the_computed_state():
  """memory_analysis of the real update step and sampler program (tiny shape, 1 device):
  their arguments are the fp32 params (+ AdamW state) the plan computes (about a minute
  of compilation on 2 shared cores)."""
  config = dataclasses.replace(
      memory_plan.qwen25_config("1.5B", layers=1), vocab_size=512, hidden_size=64,
      intermediate_size=128, num_heads=4, num_kv_heads=2, head_dim=16)
  shape = memory_plan.Shape(rollout_batch=8, prompt=32, response=16, micro=2, minibatch=4)
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  comp = memory_plan.computed(config, shape, 1)
  params = comp["params fp32 (masters; the sampler reads them)"]
  adam = comp["AdamW mu + nu fp32"]
  sampler = memory_plan.measure_sampler(config, shape, mesh)
  update = memory_plan.measure_update(config, shape, mesh)
  # Beyond the state: prompt/mask arrays, the mini-batch, step advantages, counters.
  assert params <= sampler["argument"] <= params + 4096
  assert params + adam <= update["argument"] <= params + adam + 64 * 1024
  # params and opt state are donated: the outputs alias them.
  assert update["alias"] >= params + adam


def test_datasheet_peaks():
  assert peaks.datasheet("NVIDIA H200") == (4800.0, 989.0)
  assert peaks.datasheet("NVIDIA H100 80GB HBM3") == (3350.0, 989.0)
  assert peaks.datasheet("cpu") is None


@pytest.mark.slow
def test_iteration_bench_runs_shrunk():
  """bench/iteration.py --cpu-smoke: two Trainer iterations on built-in ALFWorld (a few
  minutes on 2 shared cores, mostly compilation)."""
  from bench import iteration
  # Two iterations: the reported (second) one must still see its calls after the reset.
  args = iteration.parse_args(["--cpu-smoke", "--iterations", "2", "--env-workers", "1",
                               "--peak-bw-gbs", "10", "--peak-tflops", "0.1"])
  out = iteration.run(args)
  assert out["generate_calls"] > 0 and out["generated_tokens"] > 0
  assert out["update_tokens"] > 0
  for key in ("generation_s", "scoring_s", "update_s", "decode_roofline_fraction",
              "update_mfu"):
    assert np.isfinite(out[key]) and out[key] > 0, key


def test_real_model_sampling_bench_matches_transformers_greedy(tmp_path):
  """bench/sampling.py --model: on a small HF Llama directory our greedy rows are
  transformers' and every printed figure is finite (times are not asserted)."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from bench import sampling as sampling_bench
  from helpers_hf import make_tiny_hf_model
  model_dir, _ = make_tiny_hf_model(tmp_path, "llama3")
  args = sampling_bench.parse_args(
      ["--model", str(model_dir), "--batches", "8", "--prompt-len", "24", "--new-tokens", "6",
       "--repeats", "1", "--peak-bw-gbs", "10", "--peak-tflops", "0.1"])
  rows = sampling_bench.bench_real_model(args)
  assert [(r["batch"], r["mode"]) for r in rows] == [(8, "greedy"), (8, "top-p 0.9")]
  assert rows[0]["greedy_identical"] == 8
  for r in rows:
    for key in ("ours_s", "hf_s", "speedup", "decode_fraction", "prefill_mfu"):
      assert np.isfinite(r[key]) and r[key] > 0, key
