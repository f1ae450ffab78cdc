"""End to end: the tiny WebShop preset (bootstrap, SFT, 2 RL iterations, eval, resume).

Also checks that EMPG's advantages are what reaches the loss.
"""

import json
import os

import jax
import numpy as np
import pytest

from empg_jax import advantage_pipeline
from empg_jax import runner
from empg_jax import losses
from empg_jax import trainer as trainer_lib
from empg_jax.metrics import read_metrics

REQUIRED_KEYS = [
    "iteration", "train/success_rate", "train/score", "train/episode_length",
    "train/invalid_action_rate", "train/entropy", "train/step_entropy", "train/kl",
    "train/policy_loss", "train/clip_fraction", "train/grad_norm", "train/lr",
    "train/response_length", "time/rollout_s", "time/update_s", "perf/tokens_per_s",
    "train/env_errors", "eval/success_rate", "eval/score", "eval/env_errors",
]


def shrink(c, total_iterations):
  """The tiny preset made smaller still, so the suite stays fast on 2 cores."""
  c.total_iterations = total_iterations
  c.checkpoint_every = 1
  c.eval_every = 2
  c.env.max_steps = 6
  c.env.num_workers = 1
  c.rl.num_groups, c.rl.group_size = 2, 2
  c.sampler.max_prompt_tokens = 1024
  c.sampler.max_response_tokens = 96   # the expert's searches fit (a 512-token vocabulary)
  # Micro-batches split over the 8 simulated devices (mesh fsdp=8): sharded training.
  c.train.ppo_mini_batch_size = 16
  c.train.micro_batch_size = 8
  c.eval.num_tasks = 4
  c.algo.kl_coef = 0.01   # exercise the reference-policy path too
  b = c.bootstrap
  b.sft_episodes, b.sft_epochs, b.sft_batch_size = 24, 1, 8
  b.vocab_size, b.hidden_size, b.intermediate_size = 512, 64, 128
  b.num_layers, b.num_heads, b.num_kv_heads = 1, 2, 1
  return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("data")
  os.environ["EMPG_DATA_DIR"] = str(d)
  return d


@pytest.mark.slow
def test_tiny_webshop_trains_evaluates_and_resumes(tmp_path, data_dir, monkeypatch):
  from configs import webshop
  workdir = str(tmp_path / "run")

  # Spy on what the loss receives (through jax.debug.callback: it runs inside jit). The
  # callback runs on one device: its operands, split over the mesh, are first replicated
  # on purpose (else XLA warns of an involuntary full rematerialization to device 0).
  seen, meshes = [], []
  real_loss = losses.policy_loss

  def spy(logprobs, old_logprobs, advantages, mask, **kw):
    replicated = jax.sharding.NamedSharding(meshes[-1], jax.sharding.PartitionSpec())
    jax.debug.callback(lambda a, m: seen.append((np.asarray(a), np.asarray(m))),
                       *(jax.lax.with_sharding_constraint(x, replicated)
                         for x in (advantages, mask)))
    return real_loss(logprobs, old_logprobs, advantages, mask, **kw)
  monkeypatch.setattr(losses, "policy_loss", spy)
  rollouts = []
  real_update = trainer_lib.Trainer.update

  def update(self, rollout, iteration):
    meshes.append(self.mesh)
    start = len(seen)
    out = real_update(self, rollout, iteration)
    rollouts.append((rollout, seen[start:]))   # the micro-batches this update's loss saw
    return out
  monkeypatch.setattr(trainer_lib.Trainer, "update", update)

  summary = runner.train(shrink(webshop.get_config("tiny"), total_iterations=2), workdir)
  assert "sft/final_loss" in summary
  rows = read_metrics(workdir)
  assert [r["iteration"] for r in rows] == [0, 1, 2]
  for key in REQUIRED_KEYS:
    assert key in rows[2], key
  assert "eval/success_rate" in rows[0]
  assert os.path.exists(os.path.join(workdir, "config.json"))
  assert os.listdir(os.path.join(workdir, "samples"))
  assert os.path.isdir(os.path.join(workdir, "tensorboard"))

  # EMPG's advantages reach the loss: the rows the loss saw in the last update are the
  # advantage pipeline's output for that rollout broadcast over each step's response tokens.
  (rollout, last_seen), cfg = rollouts[-1], webshop.get_config("tiny")
  spec = advantage_pipeline.AdvantageSpec.from_config(cfg.algo, max_steps=6)
  step_adv, _ = advantage_pipeline.rollout_step_advantages(rollout, spec)
  expected = sorted(np.round(step_adv, 5).tolist())
  got = []
  for adv, m in last_seen:
    for row_adv, row_mask in zip(adv, m):
      if row_mask.any():
        vals = row_adv[row_mask.astype(bool)]
        assert np.allclose(vals, vals[0])        # one value per step, on every token
        assert np.all(row_adv[~row_mask.astype(bool)] == 0)
        got.append(round(float(vals[0]), 5))
  assert len(got) == rollout.num_samples
  np.testing.assert_allclose(sorted(got), expected, atol=2e-5)
  assert abs(np.mean(step_adv)) < 1e-5          # EMPG's final zero-mean

  # A second run with the same workdir resumes after the saved iteration 2.
  config = shrink(webshop.get_config("tiny"), total_iterations=3)
  summary = runner.train(config, workdir)
  rows = read_metrics(workdir)
  assert [r["iteration"] for r in rows] == [0, 1, 2, 3]
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["total_iterations"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("family,expected_keys", [
    ("alfworld", ["train/success_rate/", "eval/success_rate/"]),
    ("search", ["eval/in_domain/success_rate", "eval/out_of_domain/success_rate",
                "train/success_rate/"]),
])
def test_tiny_presets_of_the_other_families_run(family, expected_keys, tmp_path, data_dir):
  import importlib
  config = shrink(importlib.import_module(f"configs.{family}").get_config("tiny"),
                  total_iterations=2)
  config.bootstrap.sft_episodes = 8
  config.eval.num_tasks = 2
  workdir = str(tmp_path / family)
  runner.train(config, workdir)
  rows = read_metrics(workdir)
  assert [r["iteration"] for r in rows] == [0, 1, 2]
  keys = set(rows[2])
  for key in REQUIRED_KEYS:
    if key.startswith("eval/") and family == "search":
      continue  # search reports eval per split
    assert key in keys, key
  for prefix in expected_keys:
    assert any(k.startswith(prefix) for k in keys), (prefix, sorted(keys))


@pytest.mark.slow
def test_eval_script_scores_the_latest_checkpoint_without_touching_metrics(tmp_path, data_dir):
  from configs import webshop
  workdir = str(tmp_path / "run")
  config = shrink(webshop.get_config("tiny"), total_iterations=1)
  config.eval_every = 0
  runner.train(config, workdir)
  before = open(os.path.join(workdir, "metrics.jsonl")).read()
  config = shrink(webshop.get_config("tiny"), total_iterations=1)
  config.model.path = os.path.join(workdir, "bootstrap", "sft_model")
  metrics = runner.evaluate(config, workdir)
  assert 0.0 <= metrics["eval/success_rate"] <= 1.0 and "eval/score" in metrics
  assert open(os.path.join(workdir, "metrics.jsonl")).read() == before
  assert any(f.startswith("eval_iteration1") for f in os.listdir(os.path.join(workdir, "samples")))
