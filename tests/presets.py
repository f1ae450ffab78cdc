"""Shrunk presets that several end-to-end tests run, as `--config.*` flags of the
launchers (launch/train.py, launch/eval.py, launch/study.py)."""

from __future__ import annotations

from typing import Any, Mapping

# The tiny WebShop preset made as small as a run can be: one iteration of 1 group x 2
# episodes of 3 turns, 2 eval goals, a 1-layer 32-wide model warm-started on 8 episodes
# (responses up to 96 tokens: the expert's search queries must fit, see bootstrap),
# prompts of at most 256 tokens (one sampler program; micro-batches of 8 for 8 devices).
WEBSHOP_TINY = {
    "total_iterations": 1, "checkpoint_every": 1, "eval_every": 1,
    "env.max_steps": 3, "env.num_workers": 1,
    "rl.num_groups": 1, "rl.group_size": 2,
    "sampler.max_prompt_tokens": 256, "sampler.max_response_tokens": 96,
    "train.length_buckets": "(384,)", "train.ppo_mini_batch_size": 8,
    "train.micro_batch_size": 8, "eval.num_tasks": 2,
    "bootstrap.sft_episodes": 8, "bootstrap.sft_epochs": 1,
    "bootstrap.sft_batch_size": 4, "bootstrap.vocab_size": 512,
    "bootstrap.hidden_size": 32, "bootstrap.intermediate_size": 64,
    "bootstrap.num_layers": 1, "bootstrap.num_heads": 2, "bootstrap.num_kv_heads": 1,
}


def as_flags(values: Mapping[str, Any]) -> list[str]:
  """{'rl.num_groups': 2, 'bootstrap.enabled': False} -> ['--config.rl.num_groups=2',
  '--config.bootstrap.enabled=false'] (booleans as the config flags parse them)."""
  return [f"--config.{k}={str(v).lower() if isinstance(v, bool) else v}"
          for k, v in values.items()]


def webshop_tiny_flags(changes: Mapping[str, Any] | None = None) -> list[str]:
  """`WEBSHOP_TINY` with `changes` applied, as flags (each key once)."""
  return as_flags({**WEBSHOP_TINY, **(changes or {})})
