"""The text-environment protocol every family (WebShop, ALFWorld, search) implements.

An environment is a host-side Python object; it never imports JAX. One instance plays one
episode at a time:

    obs, info = env.reset(task_id)
    obs, reward, done, info = env.step(action_text)

`info` always carries the keys in `INFO_KEYS`. `step` never raises on model output: an
action the family cannot parse leaves the state as it is and reports
`valid_action=False`.
"""

from __future__ import annotations

import abc
from typing import Any

# Keys every `info` dict has (families may add more).
INFO_KEYS = ("admissible_actions", "won", "score", "task_id", "task_type", "valid_action")


class TextEnv(abc.ABC):
  """Base class of the text environments.

  Subclasses set `name` and implement the abstract methods. Determinism: the same
  constructor arguments (including `seed`) and the same `task_id` give the same task.
  """

  name: str = ""

  @abc.abstractmethod
  def reset(self, task_id: int) -> tuple[str, dict[str, Any]]:
    """Starts the episode of task `task_id` (0 <= task_id < num_tasks()) -> (obs, info)."""

  @abc.abstractmethod
  def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
    """Plays one action -> (obs, reward, done, info). Never raises on any string."""

  @abc.abstractmethod
  def expert_action(self) -> str:
    """The next action of the scripted expert from the current state."""

  @abc.abstractmethod
  def num_tasks(self) -> int:
    """Number of tasks in this env's split."""

  def atomic_strings(self) -> list[str]:
    """Names this family's text uses as indivisible units (WebShop: product ids and option
    values), exactly as they appear in observations and actions.

    A tokenizer built for the family (the tiny preset's) may make each one token, so a
    small model copies a name by pointing at one token instead of spelling it out.
    Families without such names return [].
    """
    return []

  def close(self) -> None:
    """Releases resources (processes, files). Safe to call twice."""
