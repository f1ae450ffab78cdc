"""The training loop: set-up, iterate (rollout -> update), evaluate, checkpoint.

`Trainer` owns the state and the loop; the rollout is `rollout.py`'s, the update (mini-batch
plan, scoring, advantages, optimizer updates) is `update.py`'s, the advantage maths
`advantage_pipeline.py` / `advantages.py`'s.

Several hosts (README "Scaling out"): each plays its contiguous share of the GRPO groups
(and of the eval tasks) on its own env pool, sampling from a host-local view of the
parameters; the shares are gathered (`distributed.agree`), so every host holds the global
rollout and computes the same statistics, DAPO rounds and update plan as one process
would; the update runs on global arrays; process 0 writes the metrics; every host saves
to and restores from the shared checkpoint directory. The stop decision at an iteration
boundary is taken on what all hosts know.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from empg_jax import advantages as adv_lib
from empg_jax import distributed
from empg_jax import update as update_lib
from empg_jax.rollout import RolloutBatch
from empg_jax.compilations import record_compilations
from empg_jax.config_checks import ConfigError, check_config, eval_splits
from empg_jax.errors import EnvPoolFailed, NoUpdateError
from empg_jax.models.decoder import DTYPES
from environments.pool import EnvPoolError
from empg_jax.preemption import Preempted, StopSignals


# ------------------------------------------------------------------------------------
# The loop.
# ------------------------------------------------------------------------------------

# The seed of every evaluation's sampling (with the task index as episode id).
EVAL_SEED = 10_000_019


def on_mesh(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Leaves not already spread over `mesh` (e.g. optax's update counters, which jit puts
  on one device) are replicated over it, so jitted functions see one consistent device
  set."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  mesh_devices = set(mesh.devices.flat)

  def place(x):
    if isinstance(x, jax.Array) and set(x.sharding.device_set) != mesh_devices:
      return distributed.put_global(x, replicated)
    return x
  return jax.tree.map(place, tree)


def init_opt_state(tx: Any, params: Any, mesh: jax.sharding.Mesh) -> Any:
  """The optimizer state of `params`, its param-shaped leaves (AdamW's mu and nu) sharded
  like the parameters, the rest (update counters) replicated over `mesh`.

  Run eagerly: `jax.jit(tx.init)` would create mu and nu on one device (zeros depend on no
  input's sharding), and `on_mesh` would then replicate them, a full fp32 copy of both on
  every device. The counters are placed on the mesh even when it has one device: the
  update step returns them there, and a counter on a plain single-device sharding would
  make the second update step compile again."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def place(x):
    if isinstance(x, jax.Array) and not isinstance(x.sharding, jax.sharding.NamedSharding):
      return distributed.put_global(x, replicated)
    return x
  return on_mesh(jax.tree.map(place, tx.init(params)), mesh)


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
  from empg_jax.models.tokenizer import encode_chat
  empty = template.render(task="", observation="", admissible_actions=[], history=[],
                          step_count=0, require_think=c.agent.require_think)
  need = len(encode_chat(tokenizer, empty))
  if c.sampler.max_prompt_tokens <= need:
    raise ConfigError(
        f"config.sampler.max_prompt_tokens={c.sampler.max_prompt_tokens}: an empty prompt "
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
    from empg_jax.rollout import AgentConfig, AgentRollout

    self.config, self.workdir = config, workdir
    c = config
    distributed.initialize(c)     # a no-op when the runner has done it
    check_config(c, num_devices=jax.device_count())
    distributed.makedirs(workdir)
    distributed.check_shared_workdir(workdir)
    distributed.check_same_on_all_hosts(
        "config", distributed.config_fingerprint(c),
        "Compare the config.json each would write (same flags, same code version).")
    # This host's GRPO groups [first, end): a group never spans hosts.
    self.group_share = distributed.group_share(c.rl.num_groups)
    self.mesh = sharding.make_mesh(*distributed.host_mesh_axes(c.mesh.data, c.mesh.fsdp,
                                                               c.mesh.tensor))
    # This host's devices (the whole mesh for one process): it samples on them alone.
    self.local_mesh = distributed.local_mesh(self.mesh)
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    self.tokenizer = models.load_tokenizer(c.model.path)
    distributed.check_same_on_all_hosts(
        "tokenizer", distributed.tokenizer_fingerprint(self.tokenizer),
        f"Every host must read the same files at config.model.path={c.model.path!r}.")
    self.template = prompts_lib.get_template(c.agent.template or c.env.name)
    check_prompt_budget(self.tokenizer, self.template, c)
    model = models.load_pretrained(c.model.path, mesh=self.mesh,
                                   dtype=DTYPES[c.model.dtype],
                                   param_dtype=DTYPES[c.model.param_dtype],
                                   remat=c.model.remat,
                                   attention_impl=c.model.attention_impl)
    self.graphdef, self.params, self.rest = nnx.split(model, nnx.Param, ...)
    self.pad_id = models.pad_token_id(self.tokenizer)
    # Mini-batch arrays [micro_batches, micro, ...]: the micro axis splits over devices.
    self.updater = update_lib.Updater(
        self.graphdef, self.rest, c, pad_id=self.pad_id,
        minibatch_sharding=jax.sharding.NamedSharding(
            self.mesh, jax.sharding.PartitionSpec(None, sharding.batch_axes())),
        replicated=jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec()))
    self.lr_schedule = self.updater.lr_schedule
    self.opt_state = init_opt_state(self.updater.tx, self.params, self.mesh)
    self.ref_params = (jax.tree.map(jnp.copy, self.params) if c.algo.kl_coef != 0 else None)
    self.sampler = sampling.Sampler(
        self._host_model(model), tokenizer=self.tokenizer, mesh=self.local_mesh,
        pad_token_id=self.pad_id,
        max_cache_len=c.sampler.max_prompt_tokens + c.sampler.max_response_tokens)
    self.stop_token_ids = tuple(models.turn_end_token_ids(self.tokenizer))

    pool_kwargs = dict(num_workers=c.env.num_workers, step_timeout_s=c.env.step_timeout_s)
    env_kwargs = dict(c.env.kwargs.to_dict())
    # This host's episodes: its groups' (all of them for one process).
    batch_envs = (self.group_share[1] - self.group_share[0]) * c.rl.group_size
    eval_envs = min(batch_envs, -(-c.eval.num_tasks // jax.process_count()))
    self.train_pool = None if eval_only else environments.EnvPool(
        c.env.name, num_envs=batch_envs,
        env_kwargs=dict(env_kwargs, split=c.env.train_split, seed=c.seed), **pool_kwargs)
    # One pool per held-out split: {metric prefix: pool}.
    self.eval_pools = {}
    if c.eval_every > 0:
      for prefix, split in eval_splits(c).items():
        self.eval_pools[prefix] = environments.EnvPool(
            c.env.name, num_envs=eval_envs,
            env_kwargs=dict(env_kwargs, split=split, seed=c.seed), **pool_kwargs)

    agent_config = AgentConfig.from_config(c)
    # Never installed when the caller passes none: a flag nothing sets.
    self.stop = stop if stop is not None else StopSignals(c.stop_timeout_s)
    agent = lambda pool: AgentRollout(pool, self.tokenizer, self._generate, agent_config,
                                      interrupt=self.stop.raise_if_requested)
    self.train_agent = agent(self.train_pool) if self.train_pool is not None else None
    self.eval_agents = {prefix: agent(pool) for prefix, pool in self.eval_pools.items()}
    # An exception on this host ends it at once (distributed.fail_fast): the env workers
    # go first.
    self._forget_pools = distributed.on_abort(self._close_pools)
    self.checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=c.keep_checkpoints)
    self.start_iteration = 0
    # The row of `start_iteration` still to be completed by an evaluation and written:
    # the iteration-0 evaluation of a fresh run, or an evaluation a stop signal
    # interrupted.
    self.pending_row: dict[str, float] | None = {} if self.eval_pools else None
    restored = self.checkpointer.restore_latest(self._state())
    latest = None if restored is None else restored[0]
    if restored is not None:
      self._restore(*restored)
    is_main = jax.process_index() == 0
    self.metrics = metrics.MetricsWriter(
        workdir, tensorboard=c.log.tensorboard, wandb_project=c.log.wandb_project or None,
        wandb_config=c, is_main_process=is_main, progress_total=c.total_iterations,
        resume_iteration=None if eval_only else self._first_unwritten_iteration(latest))
    self.stopped_at: int | None = None
    self.generated_tokens = 0

  # -- state --------------------------------------------------------------------------

  def _state(self) -> dict[str, Any]:
    state = {"params": self.params, "opt_state": self.opt_state}
    if self.ref_params is not None:
      state["ref_params"] = self.ref_params
    return state

  def _restore(self, iteration: int, state: dict[str, Any], meta: dict[str, Any]) -> None:
    """The state after `iteration` (the checkpoint's number)."""
    self.params, self.opt_state = state["params"], state["opt_state"]
    if self.ref_params is not None:
      self.ref_params = state["ref_params"]
    self.start_iteration = iteration
    written_by = meta.get("process_count", 1)
    if written_by != jax.process_count():
      logging.info("The checkpoint of iteration %d was written by %d process(es), this run "
                   "has %d: its arrays are whole, so they load into this mesh.", iteration,
                   written_by, jax.process_count())
    pending = meta.get("pending_row")
    self.pending_row = None if pending is None else {
        k: float("nan") if v is None else float(v) for k, v in pending.items()}
    logging.info("Resumed from the checkpoint of iteration %d in %s.", iteration,
                 self.workdir)

  def _first_unwritten_iteration(self, latest: int | None) -> int:
    """Rows from this iteration on belong to no checkpoint: a new run rewrites them, so
    every start cuts the record back to them (everything, without a checkpoint)."""
    if latest is None:
      return 0
    return self.start_iteration + (0 if self.pending_row is not None else 1)

  def save(self, iteration: int, pending_row: dict[str, float] | None = None) -> None:
    """Checkpoints the state after `iteration` (Orbax's step number); `pending_row` is
    that iteration's metrics when its evaluation (and so its row) is still to be done by
    the resumed run."""
    meta: dict[str, Any] = {"seed": self.config.seed, "process_count": jax.process_count(),
                            "mesh": dict(self.mesh.shape)}
    if pending_row is not None:
      meta["pending_row"] = {k: (float(v) if np.isfinite(v) else None)
                             for k, v in pending_row.items()}
    self.checkpointer.save(iteration, self._state(), meta)

  # -- generation ---------------------------------------------------------------------

  def _generate(self, prompts: list[list[int]], temperature: float, seed: int,
                row_ids: list[tuple[int, int]] | None = None):
    """The rollout's generate function; `row_ids` (global episode, turn) key each
    prompt's randomness (rollout.py)."""
    from empg_jax import sampling
    r = self.config.sampler
    params = sampling.SamplingParams(
        max_new_tokens=r.max_response_tokens, temperature=temperature, top_p=r.top_p,
        top_k=r.top_k, stop_token_ids=self.stop_token_ids,
        stop_strings=self.template.stop_strings)
    result = self.sampler.generate(prompts, params, rng=jax.random.key(seed),
                                   row_ids=row_ids)
    self.generated_tokens += sum(len(t) for t in result.tokens)
    return result

  # -- rollout ------------------------------------------------------------------------

  def train_tasks(self, iteration: int, count: int, salt: int = 0) -> np.ndarray:
    """Tasks of `iteration`: a pure function of (seed, iteration), so resumes replay it."""
    rng = np.random.default_rng([self.config.seed, iteration, salt])
    num = self.train_pool.num_tasks()
    return rng.choice(num, size=count, replace=count > num)

  def collect(self, iteration: int) -> tuple[RolloutBatch, dict[str, float]]:
    """One iteration's rollout, with DAPO's dynamic sampling when configured."""
    c = self.config
    stats: dict[str, float] = {}
    batches, kept_groups = [], 0
    rounds = 1 + (c.algo.max_resample_batches if c.algo.dynamic_sampling else 0)
    first, end = self.group_share
    for r in range(rounds):
      tasks = self.train_tasks(iteration, c.rl.num_groups, salt=r)
      # Each host plays its groups; all then hold the round's global batch (in group
      # order), so every decision below is the same on every host.
      batch = RolloutBatch.concatenate(distributed.agree(
          lambda: self.train_agent.run(
              tasks[first:end], c.rl.group_size, temperature=c.sampler.temperature,
              seed=(c.seed * 1_000_003 + iteration) * 16 + r,
              group_offset=r * c.rl.num_groups + first),
          (Preempted, EnvPoolError)))
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

  def update(self, rollout: RolloutBatch, iteration: int) -> dict[str, float]:
    """Updates the parameters from the rollout; its metrics come back in one fetch."""
    result = self.updater.run(self.params, self.opt_state, self.ref_params, rollout,
                              iteration)
    self.params, self.opt_state = result.params, result.opt_state
    return update_lib.summarize(result, iteration)

  def sync_sampler(self) -> None:
    """Gives the sampler the current parameters (before every rollout and evaluation).

    On several hosts, a host-local view of them: each host holds whole replicas (hosts
    span the mesh's data axis), so this copies nothing. The view shares the buffers the
    next update donates; the next sync replaces it before it is used again.
    """
    model = nnx.merge(self.graphdef, self.params, self.rest)
    if jax.process_count() == 1:
      self.sampler.update_weights(model)
    else:
      self.sampler.update_weights(distributed.to_local(nnx.split(model)[1], self.local_mesh))

  def _host_model(self, model: nnx.Module) -> nnx.Module:
    """`model` itself for one process; on several, a host-local view on `local_mesh`."""
    if jax.process_count() == 1:
      return model
    graphdef, state = nnx.split(model)
    local = nnx.merge(graphdef, distributed.to_local(state, self.local_mesh))
    local.mesh = self.local_mesh
    return local

  # -- eval ---------------------------------------------------------------------------

  def evaluate(self, iteration: int) -> dict[str, float]:
    """The first `eval.num_tasks` tasks of each held-out split, one episode each (split
    over the hosts in contiguous shares and gathered in task order)."""
    c = self.config
    row = {}
    for prefix, pool in self.eval_pools.items():
      n = min(c.eval.num_tasks, pool.num_tasks())
      first, end = distributed.even_share(n)

      def play(prefix=prefix, pool=pool, first=first, end=end) -> RolloutBatch | None:
        batches = []
        for start in range(first, end, pool.num_envs):
          tasks = np.arange(start, min(start + pool.num_envs, end))
          # Episode ids are the task indices (group_size 1): with one seed, a task's
          # episode samples alike whichever host or chunk plays it.
          batches.append(self.eval_agents[prefix].run(
              tasks, 1, temperature=c.eval.temperature, seed=EVAL_SEED,
              group_offset=int(start)))
        return RolloutBatch.concatenate(batches) if batches else None
      b = RolloutBatch.concatenate(
          [part for part in distributed.agree(play, (Preempted, EnvPoolError))
           if part is not None])
      self.metrics.write_samples(iteration, [
          {"task_id": int(b.task_ids[i]), "won": bool(b.won[i]), "score": float(b.score[i]),
           "turns": b.episodes[i][1:]} for i in range(min(c.eval.num_sample_episodes,
                                                          b.num_traj))],
                                 name=prefix.replace("/", "_"))
      row.update(self._rollout_metrics(prefix, b))
    return row

  # -- loop ---------------------------------------------------------------------------

  def train(self) -> dict[str, float]:
    """Runs iterations start_iteration+1 .. total_iterations; returns the last metrics row.

    After a stop signal the loop ends at an iteration boundary with a checkpoint there
    (`self.stopped_at` is its iteration): a rollout in progress is abandoned (the state is
    still the previous iteration's), an update runs to its end, an evaluation in
    progress is left to the resumed run (its row waits in the checkpoint).
    """
    c = self.config
    last: dict[str, float] = {}
    applied, no_signal = 0.0, 0
    if self.pending_row is not None:
      row = dict(self.pending_row)
      try:
        self._evaluate_into(self.start_iteration, row)
      except Preempted:
        return self._stop(self.start_iteration, pending_row=row)
      self.metrics.write(self.start_iteration, row)
      logging.info("Iteration %d eval: %s", self.start_iteration, row)
      last = row
    for iteration in range(self.start_iteration + 1, c.total_iterations + 1):
      if self._stop_requested():
        return self._stop(iteration - 1) or last
      self.sync_sampler()
      t0 = time.perf_counter()
      tokens_before = self.generated_tokens
      with record_compilations() as compiled:
        try:
          rollout, row = self.collect(iteration)
        except Preempted:
          return self._stop(iteration - 1) or last
        except EnvPoolError as e:
          raise self._pool_failed(iteration - 1, f"the rollout of iteration {iteration}",
                                  e) from e
        t1 = time.perf_counter()
        # Over the hosts: the slowest host's time, every host's tokens.
        hosts = distributed.allgather_objects((t1 - t0, self.generated_tokens - tokens_before))
        row["time/rollout_s"] = max(seconds for seconds, _ in hosts)
        row["perf/tokens_per_s"] = (sum(tokens for _, tokens in hosts)
                                    / max(row["time/rollout_s"], 1e-9))
        if rollout.num_samples > 0:
          row.update(self.update(rollout, iteration))
        else:
          logging.warning("Iteration %d: no trainable samples (all groups filtered); no "
                          "update.", iteration)
          row["train/applied_updates"] = 0.0
      # New XLA programs this iteration: after the first few, a non-zero count means a
      # shape that changes per iteration (a missing bucket).
      row["perf/compilations"] = float(compiled.count())
      row["perf/compile_s"] = compiled.seconds()
      applied += row["train/applied_updates"]
      # DAPO dropping every group (equal rewards within each) is an iteration without a
      # learning signal, like GRPO's all-zero advantages, not a failure.
      no_signal += (rollout.num_samples == 0
                    and row.get("train/dynamic_sampling/dropped_groups", 0.0) > 0)
      row["time/update_s"] = time.perf_counter() - t1
      row["train/lr"] = update_lib.learning_rate(self.lr_schedule, self.opt_state)
      for k, v in self._pool_stats().items():
        row[f"env/pool_{k}"] = float(v)
      last_one = iteration == c.total_iterations
      if c.eval_every > 0 and (iteration % c.eval_every == 0 or last_one):
        try:
          self._evaluate_into(iteration, row)
        except Preempted:
          return self._stop(iteration, pending_row=row)
        except EnvPoolError as e:
          raise self._pool_failed(iteration, f"the evaluation of iteration {iteration}", e,
                                  pending_row=row) from e
      self.metrics.write(iteration, row)
      last = row
      stop = self._stop_requested()
      if iteration % c.checkpoint_every == 0 or last_one or stop:
        self.save(iteration)
      if stop:
        return self._stop(iteration) or last
    if applied == 0 and no_signal == 0 and self.start_iteration < c.total_iterations:
      raise NoUpdateError(
          "No parameter update was applied in iterations "
          f"{self.start_iteration + 1}-{c.total_iterations}: "
          "every update was skipped (non-finite loss, gradient or update: check the model "
          "weights and config.optim) or had no trainable samples (every episode cut by "
          "config.sampler.max_prompt_tokens or hit an env error); see "
          "train/applied_updates and train/truncated_episodes in metrics.jsonl.")
    return last

  def _stop_requested(self) -> bool:
    """Whether a stop was asked for on any host (the same answer on every host)."""
    return distributed.any_host(self.stop.requested)

  def _pool_stats(self) -> dict[str, float]:
    """The train pool's counters, summed over the hosts."""
    total: dict[str, float] = {}
    for stats in distributed.allgather_objects(dict(self.train_pool.stats)):
      for k, v in stats.items():
        total[k] = total.get(k, 0.0) + float(v)
    return total

  def _evaluate_into(self, iteration: int, row: dict[str, float]) -> None:
    if self._stop_requested():
      raise Preempted(self.stop.name)
    self.sync_sampler()
    row.update(self.evaluate(iteration))

  def _save_boundary(self, iteration: int, pending_row: dict[str, float] | None) -> None:
    """Checkpoints the boundary after `iteration` unless that checkpoint exists."""
    if pending_row is not None or self.checkpointer.latest_step() != iteration:
      self.save(iteration, pending_row)

  def _stop(self, iteration: int, pending_row: dict[str, float] | None = None
            ) -> dict[str, float]:
    """Checkpoints the boundary after `iteration` and records where the run stopped;
    returns the pending row (empty if none)."""
    self._save_boundary(iteration, pending_row)
    self.stopped_at = iteration
    logging.warning("%s: stopped after iteration %d with a checkpoint there; run the same "
                    "command to resume.", self.stop.name, iteration)
    return dict(pending_row or {})

  def _pool_failed(self, iteration: int, during: str, error: Exception,
                   pending_row: dict[str, float] | None = None) -> EnvPoolFailed:
    """Checkpoints the boundary after `iteration` (as a stop signal would) -> the error
    to raise."""
    self._save_boundary(iteration, pending_row)
    return EnvPoolFailed(
        f"The env pool failed during {during}: {error} A checkpoint of iteration "
        f"{iteration} was saved; fix the environment and rerun the same command to resume.")

  def _close_pools(self) -> None:
    if self.train_pool is not None:
      self.train_pool.close()
    for pool in self.eval_pools.values():
      pool.close()

  def close(self) -> None:
    self._forget_pools()
    self.metrics.close()
    self.checkpointer.close()
    self._close_pools()
