"""The loop a pool worker process runs: build its envs, then serve requests in order.

Messages are plain Python tuples over two one-way pipes:

  parent -> worker: (req_id, op, [(env_id, arg), ...])   op in {"reset", "step", "expert"}
                    ("close",)
  worker -> parent: ("ready", None, {"pid": int, "num_tasks": int})
                    ("init_error", None, error_text)
                    ("result", req_id, [(env_id, ok, value_or_error_text), ...])

An exception in one env's call is caught and reported for that env only; the worker goes
on. The worker exits on "close", on EOF of the request pipe, or when its parent process
goes away (checked by a watchdog thread, so even an env stuck in a step cannot outlive it).
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any, Callable

_PARENT_POLL_S = 0.5


def error_text(exc: BaseException) -> str:
  """The last line of the traceback, e.g. "RuntimeError: toy env was asked to raise"."""
  return traceback.format_exception_only(type(exc), exc)[-1].strip()


def _exit_when_orphaned(parent_pid: int) -> None:
  while True:
    time.sleep(_PARENT_POLL_S)
    if os.getppid() != parent_pid:
      # Our parent died and we were re-parented: nobody will read our results.
      os._exit(0)


def _serve_one(env: Any, op: str, arg: Any) -> Any:
  if op == "step":
    obs, reward, done, info = env.step(arg)
    return obs, float(reward), bool(done), info
  if op == "reset":
    return env.reset(arg)
  if op == "expert":
    return env.expert_action()
  raise ValueError(f"unknown request op {op!r}")


def worker_main(factory: Callable[..., Any], env_kwargs: dict[str, Any],
                env_ids: list[int], req_conn: Connection, resp_conn: Connection,
                parent_pid: int) -> None:
  """Entry point of a worker process (started with the `spawn` context)."""
  # Ctrl-C reaches the whole process group; the trainer decides when the workers stop
  # (it finishes its iteration, saves, then closes the pool).
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
  try:
    envs = {env_id: factory(**env_kwargs) for env_id in env_ids}
    num_tasks = int(next(iter(envs.values())).num_tasks())
  except Exception as exc:  # pylint: disable=broad-except
    resp_conn.send(("init_error", None, error_text(exc)))
    return
  resp_conn.send(("ready", None, {"pid": os.getpid(), "num_tasks": num_tasks}))
  try:
    while True:
      try:
        message = req_conn.recv()
      except (EOFError, OSError):
        break
      if message[0] == "close":
        break
      req_id, op, items = message
      results = []
      for env_id, arg in items:
        try:
          results.append((env_id, True, _serve_one(envs[env_id], op, arg)))
        except Exception as exc:  # pylint: disable=broad-except
          results.append((env_id, False, error_text(exc)))
      try:
        resp_conn.send(("result", req_id, results))
      except (pickle.PicklingError, TypeError, AttributeError) as exc:
        # Connection.send pickles before writing, so the pipe is still clean.
        text = f"{op} result could not be sent to the pool: {error_text(exc)}"
        resp_conn.send(("result", req_id, [(env_id, False, text) for env_id, _ in items]))
  finally:
    for env in envs.values():
      try:
        env.close()
      except Exception:  # pylint: disable=broad-except
        pass
