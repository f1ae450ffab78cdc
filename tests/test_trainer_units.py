"""Trainer pieces without a model: advantages path, packing, config checks."""

import numpy as np
import pytest

from configs import base as config_base
from empg_jax import batching, trainer
from empg_jax.agent import RolloutBatch
from empg_jax.config_checks import ConfigError, check_config


def _rollout(seed=0, num_groups=3, group_size=4, max_steps=5):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, max_steps + 1, size=num_groups * group_size)
  traj_index = np.repeat(np.arange(len(lengths)), lengths).astype(np.int32)
  step_index = np.concatenate([np.arange(n) for n in lengths]).astype(np.int32)
  n = len(traj_index)
  resp_len = rng.integers(1, 6, size=n)
  won = rng.random(len(lengths)) < 0.5
  won[:group_size] = True  # one all-equal group
  return RolloutBatch(
      prompt_tokens=[list(rng.integers(3, 50, size=rng.integers(2, 9))) for _ in range(n)],
      response_tokens=[list(rng.integers(3, 50, size=k)) for k in resp_len],
      prompt_texts=[""] * n, response_texts=[""] * n,
      logprobs=[-rng.random(k).astype(np.float32) for k in resp_len],
      entropies=[(rng.random(k) * 3).astype(np.float32) for k in resp_len],
      traj_index=traj_index, step_index=step_index,
      step_reward=np.zeros(n, np.float32), valid_action=np.ones(n, bool),
      env_accepted=np.ones(n, bool),
      traj_reward=(10.0 * won).astype(np.float32),
      group_ids=np.repeat(np.arange(num_groups), group_size).astype(np.int32),
      won=won, score=won.astype(np.float32), length=lengths.astype(np.int32),
      env_error=np.zeros(len(lengths), bool), truncated=np.zeros(len(lengths), bool),
      task_type=["t"] * len(lengths), task_ids=np.arange(len(lengths)),
      episodes=[[{}] for _ in lengths])


def _reference_empg(rollout, k=1.0, kf=1.0, zeta=0.1, eps=1e-8):
  """Plain loops over the design's formulas."""
  groups = {}
  for i, g in enumerate(rollout.group_ids):
    groups.setdefault(g, []).append(i)
  A = np.zeros(rollout.num_traj)
  for members in groups.values():
    r = rollout.traj_reward[members].astype(np.float64)
    if np.all(r == r[0]):
      continue
    A[members] = (r - r.mean()) / (r.std(ddof=1) + 1e-6)
  H = {}
  for s in range(rollout.num_samples):
    H[(rollout.traj_index[s], rollout.step_index[s])] = float(np.mean(rollout.entropies[s]))
  lo, hi = min(H.values()), max(H.values())
  hn = {key: (h - lo) / (hi - lo + eps) for key, h in H.items()}
  mean_exp = np.mean([np.exp(-k * v) for v in hn.values()])
  mod = {}
  for (i, t), v in hn.items():
    g = np.exp(-k * v) / (mean_exp + eps)
    bonus = zeta * np.exp(-kf * hn[(i, t + 1)]) if (i, t + 1) in hn else 0.0
    mod[(i, t)] = A[i] * g + bonus
  mean = np.mean(list(mod.values()))
  return np.array([mod[(rollout.traj_index[s], rollout.step_index[s])] - mean
                   for s in range(rollout.num_samples)])


def test_step_advantages_follow_the_empg_formulas():
  rollout = _rollout()
  algo = config_base.base_config().algo
  step_adv, _ = trainer.compute_step_advantages(rollout, algo, max_steps=15)
  np.testing.assert_allclose(step_adv, _reference_empg(rollout), rtol=1e-4, atol=1e-5)


def test_grpo_without_empg_broadcasts_trajectory_advantage():
  rollout = _rollout(seed=1)
  algo = config_base.base_config().algo
  algo.use_empg = False
  step_adv, traj_adv = trainer.compute_step_advantages(rollout, algo, max_steps=15)
  np.testing.assert_allclose(step_adv, traj_adv[rollout.traj_index])
  assert np.all(traj_adv[:4] == 0.0)  # the all-won group


def test_minibatch_puts_step_advantages_on_response_tokens():
  rollout = _rollout(seed=2)
  algo = config_base.base_config().algo
  step_adv, _ = trainer.compute_step_advantages(rollout, algo, max_steps=15)
  rows = np.array([5, 0, 3, 7, 11, 2, 9])
  packed = trainer.pack_rows(rollout, rows, pad_id=0, buckets=(16, 32), row_multiple=4)
  assert packed.num_rows == 8
  advantages = trainer.token_advantages(step_adv[rows], packed)
  old = packed.response_values([rollout.logprobs[r] for r in rows])
  for i, s in enumerate(rows):
    n_p, n_r = len(rollout.prompt_tokens[s]), len(rollout.response_tokens[s])
    np.testing.assert_allclose(advantages[i, n_p - 1:n_p + n_r - 1], step_adv[s], rtol=1e-6)
    assert np.count_nonzero(packed.loss_mask[i]) == n_r
    assert np.all(advantages[i, :n_p - 1] == 0) and np.all(advantages[i, n_p + n_r - 1:] == 0)
    np.testing.assert_allclose(old[i, n_p - 1:n_p + n_r - 1], rollout.logprobs[s])
  assert np.all(advantages[len(rows):] == 0)
  mb = trainer.MiniBatch(rows=rows, packed=packed, old_logprobs=old, advantages=advantages)
  arrays, num_micro = trainer.minibatch_arrays(mb, micro=4, max_micro=4)
  assert num_micro == 2 and arrays["input_ids"].shape == (4, 4, packed.input_ids.shape[1])
  assert np.all(arrays["loss_mask"][2:] == 0)


def test_length_grouped_batches_cover_every_row_once():
  lengths = np.random.default_rng(0).integers(1, 1000, size=203)
  batches = batching.length_grouped_batches(lengths, 16, np.random.default_rng(1))
  rows = np.concatenate(batches)
  assert sorted(rows.tolist()) == list(range(203))
  assert all(len(b) <= 16 for b in batches)
  # Grouping by length: each batch's spread is far below the overall spread.
  assert np.median([np.ptp(lengths[b]) for b in batches]) < np.ptp(lengths) / 4


def test_pack_layout_and_bucket_errors():
  p = batching.pack([[5, 6, 7]], [[8, 9]], pad_id=0, buckets=(4, 8))
  np.testing.assert_array_equal(p.input_ids[0], [5, 6, 7, 8, 9, 0, 0, 0])
  np.testing.assert_array_equal(p.attention_mask[0], [1, 1, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(p.loss_mask[0], [0, 0, 1, 1, 0, 0, 0])
  with pytest.raises(ValueError, match="largest length bucket"):
    batching.pack([[1] * 10], [[2]], pad_id=0, buckets=(4, 8))


def test_minibatch_normalizer_counts_tokens_or_sequences():
  mask = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0]], np.float32)
  assert trainer.loss_normalizer(mask, "token-mean") == 3.0
  assert trainer.loss_normalizer(mask, "seq-mean-token-mean") == 2.0


@pytest.mark.parametrize("key,value,message", [
    ("rl.group_size", 1, "group_size=1"),
    ("train.micro_batch_size", 5, "not a multiple"),
    ("algo.loss_agg", "sum", "loss_agg"),
    ("env.name", "nope", "not registered"),
    ("bootstrap.enabled", False, "model.path is empty"),
])
def test_invalid_configs_fail_early_with_the_fix(key, value, message):
  from configs import webshop
  c = webshop.get_config("tiny")
  section, name = key.split(".")
  c[section][name] = value
  with pytest.raises(ConfigError, match=message):
    check_config(c)


def test_presets():
  from configs import webshop
  c = webshop.get_config("dapo_empg")
  assert c.algo.use_empg and c.algo.clip_high == 0.28 and c.algo.dynamic_sampling
  assert (c.rl.num_groups, c.rl.group_size, c.optim.lr) == (16, 8, 1e-6)
  c = webshop.get_config("grpo")
  assert not c.algo.use_empg and c.algo.clip_high == 0.2
  with pytest.raises(ValueError, match="Unknown config preset"):
    webshop.get_config("huge")
  check_config(webshop.get_config("tiny"))


def test_launch_train_applies_overrides_and_fails_before_any_work(tmp_path):
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, os.path.join(root, "launch", "train.py"),
       "--config=configs/webshop.py:tiny", f"--workdir={workdir}",
       "--config.rl.group_size=1"],
      cwd=root, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "group_size=1" in proc.stderr and "--config.rl.group_size=8" in proc.stderr
  assert not (workdir / "bootstrap").exists()   # nothing expensive started


def test_success_rates_leave_out_env_error_episodes_and_count_them():
  import math
  from types import SimpleNamespace
  b = SimpleNamespace(num_traj=4, won=np.array([True, False, False, True]),
                      score=np.array([1.0, 0.5, 0.0, 1.0]),
                      env_error=np.array([False, False, True, True]),
                      task_type=["a", "a", "b", "b"])
  m = trainer.Trainer._rollout_metrics(None, "eval/in_domain", b)
  assert m["eval/in_domain/success_rate"] == 0.5          # 1 of the 2 error-free
  assert m["eval/in_domain/score"] == 0.75
  assert m["eval/in_domain/env_errors"] == 2.0
  assert m["eval/in_domain/success_rate/a"] == 0.5
  assert math.isnan(m["eval/in_domain/success_rate/b"])   # only errors: no rate
  b.env_error[:] = True
  assert math.isnan(trainer.Trainer._rollout_metrics(None, "eval", b)["eval/success_rate"])
