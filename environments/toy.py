"""A tiny deterministic text environment ("count to N") for tests, demos and benchmarks.

Task `task_id` asks the agent to bring a counter from 0 to a target between 2 and 9 with the
actions `add 1` and `add 2`, then `submit`. Submitting at the target wins (reward 1.0);
submitting elsewhere, overshooting, or running out of steps ends the episode with 0.0.
The scripted expert adds 2 while it can, then 1, then submits.

Fault hooks (only with `allow_fault_injection=True`; otherwise these are invalid actions
like any other unknown text): `__hang__` sleeps for an hour, `__crash__` kills the process
at once (no clean-up, like a segfault), `__raise__` raises `RuntimeError` from `step`,
`__sleep__ <seconds>` sleeps and reports its wall-clock interval in
`info['sleep_interval']`. They let the pool's tests make a worker hang, die or fail.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from typing import Any

from environments.base import TextEnv

_ADMISSIBLE = ["add 1", "add 2", "submit"]
_SPLIT_SIZES = {"train": 1000, "test": 100}
_MAX_STEPS = 12


class ToyEnv(TextEnv):
  """Count-to-N environment. Same `split`, `seed` and `task_id` give the same task."""

  name = "toy"

  def __init__(self,
               split: str = "train",
               seed: int = 0,
               allow_fault_injection: bool = False,
               step_cost_s: float = 0.0,
               construct_error: str | None = None,
               construct_error_if_exists: str | None = None):
    """Builds the env.

    Args:
      split: "train" (1000 tasks) or "test" (100 tasks).
      seed: picks the targets; different seeds give different task sets.
      allow_fault_injection: enables the `__hang__`/`__crash__`/`__raise__`/`__sleep__`
        actions (tests only).
      step_cost_s: CPU time each step burns in a busy loop, to stand in for a family whose
        step does real work (benchmarks).
      construct_error: if set, the constructor raises `RuntimeError(construct_error)`
        (tests of the pool's start-up errors).
      construct_error_if_exists: a path; while that file exists the constructor raises
        (tests of a replacement worker that cannot start).
    """
    if construct_error is not None:
      raise RuntimeError(construct_error)
    if construct_error_if_exists and os.path.exists(construct_error_if_exists):
      raise RuntimeError(f"{construct_error_if_exists} exists")
    if split not in _SPLIT_SIZES:
      raise ValueError(f"Unknown toy split {split!r}; use one of {sorted(_SPLIT_SIZES)}.")
    if step_cost_s < 0:
      raise ValueError(f"step_cost_s must be >= 0, got {step_cost_s}.")
    self._split = split
    self._seed = int(seed)
    self._allow_faults = bool(allow_fault_injection)
    self._step_cost_s = float(step_cost_s)
    self._task_id: int | None = None
    self._target = 0
    self._count = 0
    self._steps = 0
    self._done = True

  def num_tasks(self) -> int:
    return _SPLIT_SIZES[self._split]

  def _target_of(self, task_id: int) -> int:
    # A stable hash (not Python's salted hash()) so every process agrees on the task.
    digest = hashlib.sha256(f"{self._split}/{self._seed}/{task_id}".encode()).digest()
    return 2 + digest[0] % 8

  def _obs(self) -> str:
    return f"Count to {self._target}. The counter is {self._count}."

  def _info(self, valid_action: bool, won: bool = False) -> dict[str, Any]:
    return {
        "admissible_actions": list(_ADMISSIBLE) if not self._done else [],
        "won": won,
        "score": 1.0 if won else 0.0,
        "task_id": self._task_id,
        "task_type": "count",
        "valid_action": valid_action,
    }

  def reset(self, task_id: int) -> tuple[str, dict[str, Any]]:
    if not 0 <= task_id < self.num_tasks():
      raise ValueError(f"task_id {task_id} out of range [0, {self.num_tasks()}) for the "
                       f"toy {self._split} split.")
    self._task_id = int(task_id)
    self._target = self._target_of(task_id)
    self._count = 0
    self._steps = 0
    self._done = False
    return self._obs(), self._info(valid_action=True)

  def _fault(self, action: str) -> dict[str, Any] | None:
    """Runs a fault hook; returns extra info for `__sleep__`, None if not a hook."""
    if action == "__hang__":
      time.sleep(3600)
    elif action == "__crash__":
      os.kill(os.getpid(), signal.SIGKILL)
    elif action == "__raise__":
      raise RuntimeError("toy env was asked to raise")
    elif action.startswith("__sleep__ "):
      start = time.time()
      time.sleep(float(action.split()[1]))
      return {"sleep_interval": (start, time.time())}
    return None

  def _burn_cpu(self) -> None:
    end = time.perf_counter() + self._step_cost_s
    while time.perf_counter() < end:
      pass

  def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
    if self._task_id is None:
      raise RuntimeError("ToyEnv.step called before reset().")
    if self._done:
      raise RuntimeError("ToyEnv.step called on a finished episode; call reset() first.")
    extra = self._fault(action) if self._allow_faults else None
    if self._step_cost_s:
      self._burn_cpu()
    self._steps += 1
    action = action.strip().lower()
    valid = action in _ADMISSIBLE
    won = False
    if action == "submit":
      won = self._count == self._target
      self._done = True
    elif valid:
      self._count += int(action.split()[1])
      self._done = self._count > self._target
    if self._steps >= _MAX_STEPS:
      self._done = True
    info = self._info(valid_action=valid, won=won)
    if extra:
      info.update(extra)
    return self._obs(), (1.0 if won else 0.0), self._done, info

  def atomic_strings(self) -> list[str]:
    """The three actions: with each one token, a response is one decision token."""
    return list(_ADMISSIBLE)

  def expert_action(self) -> str:
    if self._task_id is None or self._done:
      raise RuntimeError("ToyEnv.expert_action needs a live episode; call reset() first.")
    gap = self._target - self._count
    if gap >= 2:
      return "add 2"
    return "add 1" if gap == 1 else "submit"


