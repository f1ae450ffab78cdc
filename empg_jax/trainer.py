"""The EMPG training loop: rollout -> advantages -> PPO-clip update -> metrics/eval/ckpt.

Host side: the loop, the env pool and the packing of variable-length samples into a few
static shapes. Device side (jitted, pure functions of the parameter state): the forward
that scores tokens, and the update step that accumulates gradients over micro-batches
inside one compiled loop and applies AdamW, skipping the update when the loss or the
gradient is not finite.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from empg_jax import advantages as adv_lib
from empg_jax import batching
from empg_jax import losses
from empg_jax import scoring
from empg_jax.agent import RolloutBatch
from empg_jax.config_checks import ConfigError, check_config, eval_splits
from empg_jax.errors import EnvPoolFailed, NoUpdateError
from environments.pool import EnvPoolError
from empg_jax.preemption import Preempted, StopSignals


# ------------------------------------------------------------------------------------
# Advantages: trajectory reward -> GRPO -> EMPG -> per-sample (step) advantage.
# ------------------------------------------------------------------------------------


def step_entropies(rollout: RolloutBatch) -> np.ndarray:
  """`[num_samples]` step entropy: mean token entropy of each step's response."""
  return np.array([float(np.mean(e)) if len(e) else 0.0 for e in rollout.entropies],
                  np.float32)


def compute_step_advantages(rollout: RolloutBatch, algo: ml_collections.ConfigDict, *,
                            max_steps: int, step_entropy: np.ndarray | None = None
                            ) -> tuple[np.ndarray, np.ndarray]:
  """-> (step advantage `[num_samples]`, trajectory advantage `[num_traj]`).

  GRPO normalises trajectory rewards within groups; with EMPG the trajectory advantage is
  modulated per step by the step entropy (design.md "EMPG, exactly"). The (traj, step)
  matrix is padded to `max_steps` columns so the jitted EMPG compiles once per run.
  """
  traj_adv = adv_lib.grpo_advantages(
      jnp.asarray(rollout.traj_reward), np.asarray(rollout.group_ids), eps=algo.adv_eps,
      normalize_std=algo.normalize_std)
  if not algo.use_empg:
    return np.asarray(traj_adv)[rollout.traj_index], np.asarray(traj_adv)
  if step_entropy is None:
    step_entropy = step_entropies(rollout)
  e = algo.empg
  entropy_matrix, step_mask = adv_lib.scatter_steps(
      jnp.asarray(step_entropy), jnp.asarray(rollout.traj_index),
      jnp.asarray(rollout.step_index), num_traj=rollout.num_traj, max_steps=max_steps)
  modulated = adv_lib.empg_modulate(
      traj_adv, entropy_matrix, step_mask, k=e.k, k_future=e.k_future, zeta=e.zeta,
      eps=e.eps, use_scaling=e.use_scaling, use_future_bonus=e.use_future_bonus,
      normalize_std=e.normalize_std)
  step_adv = adv_lib.gather_steps(modulated, jnp.asarray(rollout.traj_index),
                                  jnp.asarray(rollout.step_index))
  return np.asarray(step_adv), np.asarray(traj_adv)


@dataclasses.dataclass
class MiniBatch:
  """One PPO mini-batch: `rows` of the rollout packed at their own length bucket.

  Arrays are `[padded_rows, seq-1]` (rows padded to a multiple of the micro-batch).
  `advantages` is the per-token advantage the loss sees: each step's advantage broadcast
  over that step's response tokens, 0 elsewhere.
  """
  rows: np.ndarray
  packed: batching.PackedBatch
  old_logprobs: np.ndarray
  ref_logprobs: np.ndarray | None = None
  entropy: np.ndarray | None = None     # recomputed token entropy (Renyi-2 EMPG)
  advantages: np.ndarray | None = None


def pack_rows(rollout: RolloutBatch, rows: np.ndarray, *, pad_id: int, buckets,
              row_multiple: int) -> batching.PackedBatch:
  """Samples `rows` of the rollout, padded to a multiple of `row_multiple` rows."""
  return batching.pack([rollout.prompt_tokens[r] for r in rows],
                       [rollout.response_tokens[r] for r in rows], pad_id=pad_id,
                       buckets=buckets,
                       num_rows=batching.round_up(max(len(rows), 1), row_multiple))


def token_advantages(step_adv: np.ndarray, packed: batching.PackedBatch) -> np.ndarray:
  """`[n]` step advantages of the first n rows -> `[rows, seq-1]` on response tokens."""
  per_row = np.zeros(packed.num_rows, np.float32)
  per_row[:len(step_adv)] = step_adv
  return np.asarray(adv_lib.broadcast_to_tokens(jnp.asarray(per_row),
                                                jnp.asarray(packed.loss_mask)))


# ------------------------------------------------------------------------------------
# Device functions.
# ------------------------------------------------------------------------------------


def make_optimizer(optim: ml_collections.ConfigDict
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with linear warmup to a constant rate (verl's default) and global-norm clipping."""
  warmup = int(optim.warmup_steps)
  if warmup > 0:
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, optim.lr, warmup), optax.constant_schedule(optim.lr)],
        [warmup])
  else:
    schedule = optax.constant_schedule(optim.lr)
  tx = optax.chain(
      optax.clip_by_global_norm(optim.grad_clip),
      optax.adamw(schedule, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay))
  return tx, schedule


class PolicyFunctions:
  """Jitted pure functions of the parameter state for one model graph."""

  def __init__(self, graphdef: Any, rest: Any, tx: optax.GradientTransformation,
               algo: ml_collections.ConfigDict, temperature: float):
    self.graphdef, self.rest, self.tx, self.algo = graphdef, rest, tx, algo
    self.temperature = float(temperature)
    self.score = jax.jit(self._score, static_argnames=("entropy_kind",))
    self.train_step = jax.jit(self._train_step, donate_argnums=(0, 1))

  def _model(self, params):
    return nnx.merge(self.graphdef, params, self.rest)

  def _score(self, params, input_ids, attention_mask, entropy_kind=None):
    return scoring.sequence_logprobs(self._model(params), input_ids, attention_mask,
                                     temperature=self.temperature, entropy_kind=entropy_kind)

  def _micro_loss(self, params, mb, normalizer):
    algo = self.algo
    # Entropy is computed even without a bonus: it is the logged `train/entropy`.
    logprobs, entropy = scoring.sequence_logprobs(
        self._model(params), mb["input_ids"], mb["attention_mask"],
        temperature=self.temperature, entropy_kind="shannon")
    loss, metrics = losses.policy_loss(
        logprobs, mb["old_logprobs"], mb["advantages"], mb["loss_mask"],
        clip_low=algo.clip_low, clip_high=algo.clip_high,
        clip_c=algo.clip_c if algo.clip_c > 0 else None, agg=algo.loss_agg,
        ref_logprobs=mb["ref_logprobs"] if algo.kl_coef != 0 else None,
        kl_coef=algo.kl_coef, kl_kind=algo.kl_kind, entropy=entropy,
        entropy_coef=algo.entropy_coef, normalizer=normalizer)
    return loss, metrics

  def _train_step(self, params, opt_state, minibatch, num_micro, normalizer):
    """One optimizer update from `minibatch` arrays `[max_micro, micro, ...]`.

    Gradients are summed over the first `num_micro` micro-batches (a traced count, so a
    short last mini-batch reuses the program); each micro loss is normalised by the
    mini-batch's global token (or sequence) count, so the sum is the mini-batch loss.
    """
    grad_fn = jax.value_and_grad(self._micro_loss, has_aux=True)
    metric_names = ("pg_loss", "kl", "entropy", "pg_clipfrac", "pg_clipfrac_lower",
                    "ppo_kl")

    def body(i, carry):
      grads, loss, sums = carry
      mb = jax.tree.map(lambda x: x[i], minibatch)
      (micro_loss, metrics), micro_grads = grad_fn(params, mb, normalizer)
      tokens = jnp.sum(mb["loss_mask"])
      grads = jax.tree.map(jnp.add, grads, micro_grads)
      # Additive terms add up over micro-batches; local fractions are token-weighted.
      sums = {k: sums[k] + (metrics[k] if k in ("pg_loss", "kl", "entropy")
                            else metrics[k] * tokens) for k in metric_names}
      return grads, loss + micro_loss, sums

    zeros = jax.tree.map(jnp.zeros_like, params)
    init = (zeros, jnp.float32(0.0), {k: jnp.float32(0.0) for k in metric_names})
    grads, loss, sums = jax.lax.fori_loop(0, num_micro, body, init)
    total_tokens = jnp.maximum(jnp.sum(jnp.where(
        jnp.arange(minibatch["loss_mask"].shape[0]) < num_micro,
        jnp.sum(minibatch["loss_mask"], axis=(1, 2)), 0.0)), 1.0)
    metrics = {k: (v if k in ("pg_loss", "kl", "entropy") else v / total_tokens)
               for k, v in sums.items()}
    grad_norm = optax.global_norm(grads)
    updates, new_opt_state = self.tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    # A finite gradient can still give a non-finite update (a NaN learning rate, an
    # optimizer state gone bad); either way the parameters keep their last good values.
    finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
              & jnp.isfinite(optax.global_norm(updates)))
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    metrics.update(loss=loss, grad_norm=grad_norm, skipped=1.0 - finite.astype(jnp.float32))
    return keep(new_params, params), keep(new_opt_state, opt_state), metrics


def score_rows(fns: PolicyFunctions, params, packed: batching.PackedBatch, micro: int, *,
               entropy_kind: str | None = None, sharding=None
               ) -> tuple[np.ndarray, np.ndarray | None]:
  """Scores all rows in micro-batches -> (logprobs, entropy) `[rows, seq-1]` numpy."""
  logps, ents = [], []
  for start in range(0, packed.num_rows, micro):
    ids = packed.input_ids[start:start + micro]
    mask = packed.attention_mask[start:start + micro]
    if sharding is not None:
      ids, mask = jax.device_put(ids, sharding), jax.device_put(mask, sharding)
    lp, ent = fns.score(params, ids, mask, entropy_kind=entropy_kind)
    logps.append(np.asarray(lp))
    if ent is not None:
      ents.append(np.asarray(ent))
  return np.concatenate(logps), (np.concatenate(ents) if ents else None)


def minibatch_arrays(mb: MiniBatch, micro: int, max_micro: int
                     ) -> tuple[dict[str, np.ndarray], int]:
  """A mini-batch as `[max_micro, micro, ...]` arrays (zero micro-batches appended so the
  program is shared by short mini-batches) + the number of real micro-batches."""
  num_micro = mb.packed.num_rows // micro

  def split(a):
    out = np.zeros((max_micro * micro,) + a.shape[1:], a.dtype)
    out[:a.shape[0]] = a
    return out.reshape((max_micro, micro) + a.shape[1:])

  p = mb.packed
  ref = mb.ref_logprobs if mb.ref_logprobs is not None else np.zeros_like(mb.old_logprobs)
  arrays = dict(input_ids=split(p.input_ids), attention_mask=split(p.attention_mask),
                loss_mask=split(p.loss_mask), advantages=split(mb.advantages),
                old_logprobs=split(mb.old_logprobs), ref_logprobs=split(ref))
  return arrays, num_micro


def loss_normalizer(loss_mask: np.ndarray, agg: str) -> float:
  """Global denominator of the aggregation over one mini-batch's rows."""
  if agg == "token-mean":
    return max(float(loss_mask.sum()), 1.0)
  return max(float((loss_mask.sum(axis=-1) > 0).sum()), 1.0)


# ------------------------------------------------------------------------------------
# The loop.
# ------------------------------------------------------------------------------------


def on_mesh(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Leaves not already spread over `mesh` (e.g. optax's step counters, which jit puts on
  one device) are replicated over it, so jitted steps see one consistent device set."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  mesh_devices = set(mesh.devices.flat)

  def place(x):
    if isinstance(x, jax.Array) and set(x.sharding.device_set) != mesh_devices:
      return jax.device_put(x, replicated)
    return x
  return jax.tree.map(place, tree)


def _dtype(name: str):
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


def _per_type_success(prefix: str, task_types: list[str], won: np.ndarray,
                      counted: np.ndarray) -> dict[str, float]:
  """Success per task type over the `counted` (env-error-free) episodes; NaN for a type
  whose episodes all hit env errors."""
  out = {}
  for t in sorted(set(task_types)):
    if t:
      sel = np.array([x == t for x in task_types]) & counted
      out[f"{prefix}/success_rate/{t}"] = float(won[sel].mean()) if sel.any() else math.nan
  return out


def check_prompt_budget(tokenizer: Any, template: Any, c: ml_collections.ConfigDict) -> None:
  """Refuses a prompt budget below an empty prompt's token count (then every episode would
  end before its first action); runs before the model is loaded or any env starts."""
  from empg_jax.agent import encode_chat
  empty = template.render(task="", observation="", admissible_actions=[], history=[],
                          step_count=0, require_think=c.agent.require_think)
  need = len(encode_chat(tokenizer, empty))
  if c.rollout.max_prompt_tokens <= need:
    raise ConfigError(
        f"config.rollout.max_prompt_tokens={c.rollout.max_prompt_tokens}: an empty prompt "
        f"of this template is already {need} tokens with this tokenizer, so every episode "
        f"would be cut before its first action; raise it well above {need}.")


class Trainer:
  """Owns the model state, sampler, env pools, optimizer, checkpoints and metrics.

    trainer = Trainer(config, workdir)
    trainer.train()      # resumes from <workdir>/checkpoints when present
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, *,
               eval_only: bool = False, stop: StopSignals | None = None):
    """Builds everything; `eval_only` skips the training env pool and leaves the metrics
    file untouched (launch/eval.py). `stop` (installed by the caller) turns SIGTERM and
    SIGINT into a checkpoint at the next iteration boundary."""
    # Imports here keep `empg_jax.trainer`'s pure functions importable without a model.
    import environments
    from empg_jax import checkpointing, metrics, models, sampling, sharding
    from empg_jax import prompts as prompts_lib
    from empg_jax.agent import AgentConfig, AgentRollout

    self.config, self.workdir = config, workdir
    c = config
    if c.mesh.distributed:
      sharding.maybe_initialize_distributed()
    check_config(c, num_devices=jax.device_count())
    os.makedirs(workdir, exist_ok=True)
    if jax.process_count() > 1:
      # Each host would need its own env pool for its slice of the batch and a global
      # assembly of the update arrays; neither is built yet, so refuse instead of running
      # every episode on every host.
      raise NotImplementedError(
          f"The training loop runs on one process; got jax.process_count()="
          f"{jax.process_count()}. Use one host (any number of local devices) for now.")
    self.mesh = sharding.make_mesh(data=c.mesh.data, fsdp=c.mesh.fsdp, tensor=c.mesh.tensor)
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    self.tokenizer = models.load_tokenizer(c.model.path)
    self.template = prompts_lib.get_template(c.agent.template or c.env.name)
    check_prompt_budget(self.tokenizer, self.template, c)
    model = models.load_pretrained(c.model.path, mesh=self.mesh, dtype=_dtype(c.model.dtype),
                                   param_dtype=_dtype(c.model.param_dtype),
                                   remat=c.model.remat,
                                   attention_impl=c.model.attention_impl)
    self.graphdef, self.params, self.rest = nnx.split(model, nnx.Param, ...)
    self.pad_id = models.pad_token_id(self.tokenizer)
    self.tx, self.lr_schedule = make_optimizer(c.optim)
    self.opt_state = on_mesh(jax.jit(self.tx.init)(self.params), self.mesh)
    self.ref_params = (jax.tree.map(jnp.copy, self.params) if c.algo.kl_coef != 0 else None)
    # Mini-batch arrays [micro_batches, micro, ...]: the micro axis splits over devices.
    self.minibatch_sharding = jax.sharding.NamedSharding(
        self.mesh, jax.sharding.PartitionSpec(None, ("data", "fsdp")))
    self.fns = PolicyFunctions(self.graphdef, self.rest, self.tx, c.algo,
                               temperature=c.rollout.temperature)
    self.sampler = sampling.Sampler(
        model, tokenizer=self.tokenizer, mesh=self.mesh, pad_token_id=self.pad_id,
        max_cache_len=c.rollout.max_prompt_tokens + c.rollout.max_response_tokens)
    self.stop_token_ids = tuple(models.turn_end_token_ids(self.tokenizer))

    pool_kwargs = dict(num_workers=c.env.num_workers, step_timeout_s=c.env.step_timeout_s)
    env_kwargs = dict(c.env.kwargs.to_dict())
    batch_envs = c.rl.num_groups * c.rl.group_size
    self.train_pool = None if eval_only else environments.EnvPool(
        c.env.name, num_envs=batch_envs,
        env_kwargs=dict(env_kwargs, split=c.env.train_split, seed=c.seed), **pool_kwargs)
    # One pool per held-out split: {metric prefix: pool}.
    self.eval_pools = {}
    if c.eval_every > 0:
      for prefix, split in eval_splits(c).items():
        self.eval_pools[prefix] = environments.EnvPool(
            c.env.name, num_envs=min(batch_envs, c.eval.num_tasks),
            env_kwargs=dict(env_kwargs, split=split, seed=c.seed), **pool_kwargs)

    agent_config = AgentConfig.from_config(c)
    # Never installed when the caller passes none: a flag nothing sets.
    self.stop = stop if stop is not None else StopSignals(c.stop_timeout_s)
    agent = lambda pool: AgentRollout(pool, self.tokenizer, self._generate, agent_config,
                                      interrupt=self.stop.raise_if_requested)
    self.train_agent = agent(self.train_pool) if self.train_pool is not None else None
    self.eval_agents = {prefix: agent(pool) for prefix, pool in self.eval_pools.items()}
    self.checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=c.keep_checkpoints)
    self.start_step = 0
    # The row of `start_step` still to be completed by an evaluation and written: the
    # step-0 evaluation of a fresh run, or an evaluation a stop signal interrupted.
    self.pending_row: dict[str, float] | None = {} if self.eval_pools else None
    restored = self.checkpointer.restore_latest(self._state())
    latest = None if restored is None else restored[0]
    if restored is not None:
      self._restore(*restored)
    is_main = jax.process_index() == 0
    self.metrics = metrics.MetricsWriter(
        workdir, tensorboard=c.log.tensorboard, wandb_project=c.log.wandb_project or None,
        wandb_config=c, is_main_process=is_main, progress_total=c.total_steps,
        resume_step=None if eval_only else self._first_unwritten_step(latest))
    self.stopped_at: int | None = None
    self.generated_tokens = 0

  # -- state --------------------------------------------------------------------------

  def _state(self) -> dict[str, Any]:
    state = {"params": self.params, "opt_state": self.opt_state}
    if self.ref_params is not None:
      state["ref_params"] = self.ref_params
    return state

  def _restore(self, step: int, state: dict[str, Any], meta: dict[str, Any]) -> None:
    self.params, self.opt_state = state["params"], state["opt_state"]
    if self.ref_params is not None:
      self.ref_params = state["ref_params"]
    self.start_step = int(meta["step"])
    pending = meta.get("pending_row")
    self.pending_row = None if pending is None else {
        k: float("nan") if v is None else float(v) for k, v in pending.items()}
    logging.info("Resumed from checkpoint step %d in %s.", step, self.workdir)

  def _first_unwritten_step(self, latest: int | None) -> int:
    """Rows from this step on belong to no checkpoint: a new run rewrites them, so every
    start cuts the record back to them (everything, without a checkpoint)."""
    if latest is None:
      return 0
    return self.start_step + (0 if self.pending_row is not None else 1)

  def save(self, step: int, pending_row: dict[str, float] | None = None) -> None:
    """Checkpoints the state after iteration `step`; `pending_row` is that step's metrics
    when its evaluation (and so its row) is still to be done by the resumed run."""
    meta: dict[str, Any] = {"step": step, "seed": self.config.seed}
    if pending_row is not None:
      meta["pending_row"] = {k: (float(v) if np.isfinite(v) else None)
                             for k, v in pending_row.items()}
    self.checkpointer.save(step, self._state(), meta)

  # -- generation ---------------------------------------------------------------------

  def _generate(self, prompts: list[list[int]], temperature: float, seed: int):
    from empg_jax import sampling
    r = self.config.rollout
    params = sampling.SamplingParams(
        max_new_tokens=r.max_response_tokens, temperature=temperature, top_p=r.top_p,
        top_k=r.top_k, stop_token_ids=self.stop_token_ids,
        stop_strings=self.template.stop_strings)
    result = self.sampler.generate(prompts, params, rng=jax.random.key(seed))
    self.generated_tokens += sum(len(t) for t in result.tokens)
    return result

  # -- rollout ------------------------------------------------------------------------

  def train_tasks(self, step: int, count: int, salt: int = 0) -> np.ndarray:
    """Tasks of iteration `step`: a pure function of (seed, step), so resumes replay it."""
    rng = np.random.default_rng([self.config.seed, step, salt])
    num = self.train_pool.num_tasks()
    return rng.choice(num, size=count, replace=count > num)

  def collect(self, step: int) -> tuple[RolloutBatch, dict[str, float]]:
    """One iteration's rollout, with DAPO's dynamic sampling when configured."""
    c = self.config
    stats: dict[str, float] = {}
    batches, kept_groups = [], 0
    rounds = 1 + (c.algo.max_resample_batches if c.algo.dynamic_sampling else 0)
    for r in range(rounds):
      tasks = self.train_tasks(step, c.rl.num_groups, salt=r)
      batch = self.train_agent.run(tasks, c.rl.group_size, temperature=c.rollout.temperature,
                                   seed=(c.seed * 1_000_003 + step) * 16 + r,
                                   group_offset=r * c.rl.num_groups)
      if r == 0:
        stats.update(self._rollout_metrics("train", batch))
      # Episodes that hit an env error are counted, never trained on.
      batch = batch.select_trajectories(~batch.env_error)
      if c.algo.dynamic_sampling:
        keep, ds = adv_lib.dynamic_sampling_filter(batch.traj_reward, batch.group_ids)
        batch = batch.select_trajectories(np.asarray(keep, bool))
        stats["train/dynamic_sampling/dropped_groups"] = (
            stats.get("train/dynamic_sampling/dropped_groups", 0.0)
            + float(ds["num_groups_dropped"]))
      batches.append(batch)
      kept_groups += len(set(batch.group_ids.tolist()))
      if not c.algo.dynamic_sampling or kept_groups >= c.rl.num_groups:
        break
    stats["train/dynamic_sampling/rounds"] = float(len(batches))
    return RolloutBatch.concatenate(batches), stats

  def _rollout_metrics(self, prefix: str, b: RolloutBatch) -> dict[str, float]:
    # An episode an env error ended says nothing about the policy: rates are over the
    # others (NaN when there are none), with the error count beside them.
    counted = ~np.asarray(b.env_error, bool)
    m = {f"{prefix}/success_rate": float(b.won[counted].mean()) if counted.any() else math.nan,
         f"{prefix}/score": float(b.score[counted].mean()) if counted.any() else math.nan,
         f"{prefix}/env_errors": float((~counted).sum())}
    if prefix == "train":
      n = max(b.num_samples, 1)
      m.update({
          "train/episode_length": float(b.length.mean()),
          "train/invalid_action_rate": float(1.0 - b.valid_action.mean()) if b.num_samples
                                       else 0.0,
          # Well-formed actions the env still rejected (e.g. clicking what is not there).
          "train/env_rejected_action_rate": float(1.0 - b.env_accepted.mean())
                                            if b.num_samples else 0.0,
          "train/response_length": float(sum(len(t) for t in b.response_tokens) / n),
          "train/truncated_episodes": float(b.truncated.sum()),
      })
    m.update(_per_type_success(prefix, b.task_type, b.won, counted))
    return m

  # -- update -------------------------------------------------------------------------

  def update(self, rollout: RolloutBatch) -> dict[str, float]:
    """PPO epochs over length-grouped mini-batches of the rollout's step samples."""
    c = self.config
    micro, mb_size = c.train.micro_batch_size, c.train.ppo_mini_batch_size
    entropy_kind = c.algo.empg.entropy_kind
    renyi = entropy_kind != "shannon"
    rng = np.random.default_rng([c.seed, 7, int(self._step)])
    lengths = np.array([len(p) + len(r) for p, r in
                        zip(rollout.prompt_tokens, rollout.response_tokens)])
    # Similar lengths share a mini-batch, so each packs at its own small bucket.
    minibatches = []
    for rows in batching.length_grouped_batches(lengths, mb_size, rng):
      packed = pack_rows(rollout, rows, pad_id=self.pad_id,
                         buckets=tuple(c.train.length_buckets), row_multiple=micro)
      mb = MiniBatch(rows=rows, packed=packed, old_logprobs=packed.response_values(
          [rollout.logprobs[r] for r in rows]))
      if c.algo.old_logprobs == "recompute" or renyi:
        scored, mb.entropy = score_rows(self.fns, self.params, packed, micro,
                                        entropy_kind=entropy_kind if renyi else None,
                                        sharding=self.batch_sharding)
        if c.algo.old_logprobs == "recompute":
          mb.old_logprobs = scored
      if self.ref_params is not None:
        mb.ref_logprobs, _ = score_rows(self.fns, self.ref_params, packed, micro,
                                        sharding=self.batch_sharding)
      minibatches.append(mb)
    # The step entropy EMPG uses: the sampler's Shannon entropies, or recomputed Renyi-2.
    step_entropy = step_entropies(rollout)
    if renyi:
      for mb in minibatches:
        n = len(mb.rows)
        step_entropy[mb.rows] = np.asarray(adv_lib.step_mean(
            jnp.asarray(mb.entropy[:n]), jnp.asarray(mb.packed.loss_mask[:n])))
    step_adv, _ = compute_step_advantages(rollout, c.algo, max_steps=c.env.max_steps,
                                          step_entropy=step_entropy)
    for mb in minibatches:
      mb.advantages = token_advantages(step_adv[mb.rows], mb.packed)
    self.last_minibatches = minibatches

    sums: dict[str, float] = {}
    num_updates = 0
    for _ in range(c.train.ppo_epochs):
      for index in rng.permutation(len(minibatches)):
        arrays, num_micro = minibatch_arrays(minibatches[index], micro, mb_size // micro)
        normalizer = loss_normalizer(minibatches[index].packed.loss_mask, c.algo.loss_agg)
        self.params, self.opt_state, metrics = self.fns.train_step(
            self.params, self.opt_state, jax.device_put(arrays, self.minibatch_sharding),
            jnp.int32(num_micro),
            jnp.float32(normalizer))
        metrics = jax.device_get(metrics)
        if metrics["skipped"] > 0:
          logging.warning("Step %d: non-finite loss, gradient or update (loss=%s, "
                          "grad_norm=%s); update skipped.", self._step, metrics["loss"],
                          metrics["grad_norm"])
        for k, v in metrics.items():
          sums[k] = sums.get(k, 0.0) + float(v)
        num_updates += 1
    out = {f"train/{k}": v / max(num_updates, 1) for k, v in sums.items()
           if k not in ("skipped",)}
    out["train/skipped_updates"] = sums.get("skipped", 0.0)
    out["train/applied_updates"] = num_updates - sums.get("skipped", 0.0)
    out["train/policy_loss"] = out.pop("train/pg_loss", 0.0)
    out["train/clip_fraction"] = out.pop("train/pg_clipfrac", 0.0)
    out["train/step_entropy"] = float(np.mean(step_entropy)) if len(step_entropy) else 0.0
    out["train/advantage_abs_mean"] = float(np.mean(np.abs(step_adv))) if len(step_adv) else 0.0
    out["train/num_samples"] = float(rollout.num_samples)
    return out

  # -- eval ---------------------------------------------------------------------------

  def evaluate(self, step: int) -> dict[str, float]:
    """The first `eval.num_tasks` tasks of each held-out split, one episode each."""
    c = self.config
    row = {}
    for prefix, pool in self.eval_pools.items():
      n = min(c.eval.num_tasks, pool.num_tasks())
      batches = []
      for start in range(0, n, pool.num_envs):
        tasks = np.arange(start, min(start + pool.num_envs, n))
        batches.append(self.eval_agents[prefix].run(
            tasks, 1, temperature=c.eval.temperature, seed=10_000_019 + start,
            group_offset=start))
      b = RolloutBatch.concatenate(batches)
      self.metrics.write_samples(step, [
          {"task_id": int(b.task_ids[i]), "won": bool(b.won[i]), "score": float(b.score[i]),
           "turns": b.episodes[i][1:]} for i in range(min(c.eval.num_sample_episodes,
                                                          b.num_traj))],
                                 name=prefix.replace("/", "_"))
      row.update(self._rollout_metrics(prefix, b))
    return row

  # -- loop ---------------------------------------------------------------------------

  def train(self) -> dict[str, float]:
    """Runs iterations start_step+1 .. total_steps; returns the last metrics row.

    After a stop signal the loop ends at an iteration boundary with a checkpoint there
    (`self.stopped_at` is its step): a rollout in progress is abandoned (the state is
    still the previous iteration's), an update runs to its end, an evaluation in
    progress is left to the resumed run (its row waits in the checkpoint).
    """
    c = self.config
    last: dict[str, float] = {}
    applied, no_signal = 0.0, 0
    if self.pending_row is not None:
      self._step = self.start_step
      row = dict(self.pending_row)
      try:
        self._evaluate_into(self.start_step, row)
      except Preempted:
        return self._stop(self.start_step, pending_row=row)
      self.metrics.write(self.start_step, row)
      logging.info("step %d eval: %s", self.start_step, row)
      last = row
    for step in range(self.start_step + 1, c.total_steps + 1):
      if self.stop.requested:
        return self._stop(step - 1) or last
      self._step = step
      self.sampler.update_weights(nnx.merge(self.graphdef, self.params, self.rest))
      t0 = time.perf_counter()
      tokens_before = self.generated_tokens
      try:
        rollout, row = self.collect(step)
      except Preempted:
        return self._stop(step - 1) or last
      except EnvPoolError as e:
        raise self._pool_failed(step - 1, "the rollout of step %d" % step, e) from e
      t1 = time.perf_counter()
      row["time/rollout_s"] = t1 - t0
      row["perf/tokens_per_s"] = (self.generated_tokens - tokens_before) / max(t1 - t0, 1e-9)
      if rollout.num_samples > 0:
        row.update(self.update(rollout))
      else:
        logging.warning("Step %d: no trainable samples (all groups filtered); no update.",
                        step)
        row["train/applied_updates"] = 0.0
      applied += row["train/applied_updates"]
      # DAPO dropping every group (equal rewards within each) is an iteration without a
      # learning signal, like GRPO's all-zero advantages, not a failure.
      no_signal += (rollout.num_samples == 0
                    and row.get("train/dynamic_sampling/dropped_groups", 0.0) > 0)
      row["time/update_s"] = time.perf_counter() - t1
      row["train/lr"] = float(self.lr_schedule(step - 1))
      for k, v in self.train_pool.stats.items():
        row[f"env/pool_{k}"] = float(v)
      if c.eval_every > 0 and (step % c.eval_every == 0 or step == c.total_steps):
        try:
          self._evaluate_into(step, row)
        except Preempted:
          return self._stop(step, pending_row=row)
        except EnvPoolError as e:
          raise self._pool_failed(step, "the evaluation of step %d" % step, e,
                                  pending_row=row) from e
      self.metrics.write(step, row)
      last = row
      if step % c.checkpoint_every == 0 or step == c.total_steps or self.stop.requested:
        self.save(step)
      if self.stop.requested:
        return self._stop(step) or last
    if applied == 0 and no_signal == 0 and self.start_step < c.total_steps:
      raise NoUpdateError(
          f"No parameter update was applied in steps {self.start_step + 1}-{c.total_steps}: "
          "every update was skipped (non-finite loss, gradient or update: check the model "
          "weights and config.optim) or had no trainable samples (every episode cut by "
          "config.rollout.max_prompt_tokens or hit an env error); see "
          "train/applied_updates and train/truncated_episodes in metrics.jsonl.")
    return last

  def _evaluate_into(self, step: int, row: dict[str, float]) -> None:
    self.stop.raise_if_requested()
    self.sampler.update_weights(nnx.merge(self.graphdef, self.params, self.rest))
    row.update(self.evaluate(step))

  def _stop(self, step: int, pending_row: dict[str, float] | None = None) -> dict[str, float]:
    """Checkpoints the boundary after `step` (unless that checkpoint exists) and records
    where the run stopped; returns the pending row (empty if none)."""
    if pending_row is not None or self.checkpointer.latest_step() != step:
      self.save(step, pending_row)
    self.stopped_at = step
    logging.warning("%s: stopped after step %d with a checkpoint there; run the same "
                    "command to resume.", self.stop.name, step)
    return dict(pending_row or {})

  def _pool_failed(self, step: int, during: str, error: Exception,
                   pending_row: dict[str, float] | None = None) -> EnvPoolFailed:
    """Checkpoints the boundary after `step` (as a stop signal would) -> the error to raise."""
    if pending_row is not None or self.checkpointer.latest_step() != step:
      self.save(step, pending_row)
    return EnvPoolFailed(
        f"The env pool failed during {during}: {error} A checkpoint of step {step} was "
        "saved; fix the environment and rerun the same command to resume.")

  def close(self) -> None:
    self.metrics.close()
    self.checkpointer.close()
    if self.train_pool is not None:
      self.train_pool.close()
    for pool in self.eval_pools.values():
      pool.close()
