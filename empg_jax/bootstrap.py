"""Offline start for the tiny preset: tokenizer, random Qwen2 model and SFT warm start.

Everything is built from the environment itself, no download:
  1. a byte-level BPE tokenizer trained on expert episodes' prompt and response text;
  2. a small random Qwen2-architecture model saved as an HF directory;
  3. supervised fine-tuning on expert trajectories whose prompts are exactly the RL
     prompts (same template, history and token budget).
Outputs live in `<workdir>/bootstrap/` and are reused when present, so a resumed run
does not redo them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from empg_jax import models, sft, tiny_tokenizer
from empg_jax.errors import ConfigError
from empg_jax.rollout import AgentConfig, AgentRollout, RolloutBatch


def expert_rollouts(c: ml_collections.ConfigDict, tokenizer: Any, num_episodes: int, *,
                    task_offset: int = 0) -> RolloutBatch:
  """Expert episodes on training tasks, rendered exactly as the RL agent's prompts."""
  import environments
  env_kwargs = dict(c.env.kwargs.to_dict(), split=c.env.train_split, seed=c.seed)
  num_envs = min(num_episodes, 32)
  with environments.EnvPool(c.env.name, num_envs=num_envs, num_workers=c.env.num_workers,
                            env_kwargs=env_kwargs, step_timeout_s=c.env.step_timeout_s) as pool:
    agent = AgentRollout(pool, tokenizer, None,
                         dataclasses.replace(AgentConfig.from_config(c), overlap_env_steps=False))
    rng = np.random.default_rng([c.seed, 99])
    tasks = rng.choice(pool.num_tasks(), size=num_episodes + task_offset,
                       replace=False)[task_offset:]
    batches = [agent.run(tasks[s:s + num_envs], 1, temperature=0.0, seed=0, group_offset=s)
               for s in range(0, num_episodes, num_envs)]
  return RolloutBatch.concatenate(batches)


def check_response_budget(response_lengths: np.ndarray, max_response_tokens: int) -> None:
  """Refuses expert responses the sampler could not finish.

  The sampler stops a response at `sampler.max_response_tokens`; an action cut there is
  invalid, so a policy that imitated the expert perfectly would still fail every step
  whose action is longer (WebShop's long search queries), and SFT would teach actions
  that RL can never sample.

  Args:
    response_lengths: [num_samples] tokens per expert response, turn end included.
  """
  too_long = response_lengths > max_response_tokens
  if too_long.any():
    longest = int(response_lengths.max())
    suggested = -(-longest // 16) * 16
    raise ConfigError(
        f"{too_long.mean():.0%} of the expert's responses are longer than "
        f"sampler.max_response_tokens={max_response_tokens} (longest {longest} tokens), so "
        "the policy could never finish those actions; set "
        f"--config.sampler.max_response_tokens={suggested} or more.")


def family_atomic_strings(c: ml_collections.ConfigDict) -> list[str]:
  """The env family's indivisible names (`TextEnv.atomic_strings`), read in process."""
  import environments
  env = environments.make(c.env.name, **dict(c.env.kwargs.to_dict(), split=c.env.train_split,
                                              seed=c.seed))
  try:
    return env.atomic_strings()
  finally:
    env.close()


def write_random_model(out_dir: str, tokenizer: Any, *, hidden_size: int,
                       intermediate_size: int, num_layers: int, num_heads: int,
                       num_kv_heads: int, max_positions: int, seed: int = 0) -> Any:
  """A random Qwen2-architecture model for `tokenizer`, saved with it as an HF directory
  (transformers loads it too) -> the model."""
  eos = models.response_end_token_id(tokenizer)
  pad = models.pad_token_id(tokenizer)
  config = models.ModelConfig.from_hf_config({
      "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
      "vocab_size": len(tokenizer), "hidden_size": hidden_size,
      "intermediate_size": intermediate_size, "num_hidden_layers": num_layers,
      "num_attention_heads": num_heads, "num_key_value_heads": num_kv_heads,
      "max_position_embeddings": max_positions, "rms_norm_eps": 1e-6,
      "rope_theta": 10000.0, "tie_word_embeddings": True, "hidden_act": "silu",
      "torch_dtype": "float32", "bos_token_id": pad, "eos_token_id": eos,
      "pad_token_id": pad, "use_sliding_window": False})
  model = models.init_random(config, seed=seed, dtype=jnp.float32, param_dtype=jnp.float32)
  tokenizer.save_pretrained(out_dir)
  models.save_pretrained(model, out_dir)
  return model


def bootstrap_model(c: ml_collections.ConfigDict, workdir: str) -> tuple[str, dict[str, float]]:
  """Builds (or reuses) `<workdir>/bootstrap/sft_model` -> (its path, SFT metrics)."""
  root = os.path.join(workdir, "bootstrap")
  tok_dir, base_dir, sft_dir = (os.path.join(root, d) for d in ("tokenizer", "base_model",
                                                                 "sft_model"))
  if os.path.exists(os.path.join(sft_dir, "config.json")):
    logging.info("Reusing the bootstrapped model in %s.", sft_dir)
    return sft_dir, {}
  os.makedirs(root, exist_ok=True)
  b = c.bootstrap
  # 1. Tokenizer from expert text (prompts are text-only here: no tokenizer yet).
  text_batch = expert_rollouts(c, None, min(b.sft_episodes, 64), task_offset=0)
  tokenizer = tiny_tokenizer.build_tokenizer(
      list(text_batch.prompt_texts) + list(text_batch.response_texts), tok_dir,
      vocab_size=b.vocab_size, atomic_strings=family_atomic_strings(c) if b.atomic_tokens
      else ())
  # 2. Random model, saved as an HF directory with the tokenizer.
  model = write_random_model(
      base_dir, tokenizer, hidden_size=b.hidden_size, intermediate_size=b.intermediate_size,
      num_layers=b.num_layers, num_heads=b.num_heads, num_kv_heads=b.num_kv_heads,
      max_positions=max(2048, c.sampler.max_prompt_tokens + c.sampler.max_response_tokens),
      seed=c.seed)
  # 3. SFT on expert trajectories with the RL prompts.
  data = expert_rollouts(c, tokenizer, b.sft_episodes, task_offset=64)
  check_response_budget(np.array([len(r) for r in data.response_tokens]),
                        c.sampler.max_response_tokens)
  sft.write_jsonl_examples(os.path.join(root, "sft_data.jsonl"), data.prompt_texts,
                           data.response_texts)
  logging.info("SFT on %d expert steps from %d episodes.", data.num_samples, data.num_traj)
  metrics = sft.sft_train(
      model, data.prompt_tokens, data.response_tokens, pad_id=models.pad_token_id(tokenizer),
      lr=b.sft_lr, epochs=b.sft_epochs, batch_size=b.sft_batch_size,
      prompt_loss_weight=b.sft_prompt_loss_weight,
      buckets=tuple(c.train.length_buckets), seed=c.seed)
  tokenizer.save_pretrained(sft_dir)
  models.save_pretrained(model, sft_dir)
  return sft_dir, metrics
