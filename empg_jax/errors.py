"""Errors a user can fix: the launchers print their message as one line, no traceback."""

from __future__ import annotations


class UserError(Exception):
  """A problem with the command, its settings or its files; the message names the fix."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work; the message names the key and the fix."""


class NoUpdateError(UserError):
  """A run that applied no parameter update at all: its result would be the start model."""


class EnvPoolFailed(UserError):
  """The env pool gave up (a worker that cannot be restarted); the run saved a checkpoint
  at the last iteration boundary first, so rerunning the command resumes there."""
