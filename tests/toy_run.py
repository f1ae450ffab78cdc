"""A toy-family run small enough for the preemption and resume tests: a random 1-layer
model with a tokenizer trained on toy text, and its config (in code and as flags)."""

from __future__ import annotations

import os

from configs import base as config_base
from empg_jax import prompts as prompts_lib

import presets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Settings on top of the ':tiny' preset, as `--config.*` flags take them.
OVERRIDES = {
    "bootstrap.enabled": False, "env.name": "toy", "agent.template": "toy",
    "env.max_steps": 4, "env.num_workers": 1, "rl.num_groups": 2, "rl.group_size": 2,
    "sampler.max_prompt_tokens": 256, "sampler.max_response_tokens": 4,
    "train.micro_batch_size": 8, "train.ppo_mini_batch_size": 8,
    "eval.num_tasks": 4, "eval_every": 2, "checkpoint_every": 2, "total_iterations": 4,
}


def make_model(out_dir: str) -> str:
  from empg_jax.bootstrap import write_random_model
  from empg_jax.tiny_tokenizer import build_tokenizer
  texts = ["Count to 7. The counter is 3. add 1 add 2 submit"] * 40
  texts.append(prompts_lib.TEMPLATES["toy"].render(
      task="t", observation="o", admissible_actions=["add 1"], history=[], step_count=0,
      require_think=False))
  tok = build_tokenizer(texts, out_dir, vocab_size=300)
  write_random_model(out_dir, tok, hidden_size=32, intermediate_size=64, num_layers=1,
                     num_heads=2, num_kv_heads=1, max_positions=512)
  return out_dir


def config(model_dir: str, **changes):
  c = config_base.base_config()
  config_base.apply_algorithm(c, "grpo_empg")
  config_base.apply_tiny(c)
  for key, value in {**OVERRIDES, "model.path": model_dir, **changes}.items():
    *sections, name = key.split(".")
    node = c
    for s in sections:
      node = node[s]
    node[name] = value
  return c


def flags(model_dir: str, **changes) -> list[str]:
  """The same config as `launch/train.py` flags on configs/toy.py:tiny."""
  values = {**OVERRIDES, "model.path": model_dir, **changes}
  return ["--config=configs/toy.py:tiny"] + presets.as_flags(values)
