"""The real ALFWorld text engine: textworld's PDDL environment with alfworld's wrappers.

Game files (`game.tw-pddl`) are played by `textworld.envs.PddlEnv` (fast-downward does the
PDDL semantics) wrapped by alfworld's `AlfredDemangler` (entity ids -> "cabinet 1") and
`AlfredInfos`, the same stack upstream's `alfred_tw_env.py` registers with textworld.gym.
There is no second simulator in this package.

Imports of textworld / alfworld are deferred to `import_engine()` so that importing
`environments.alfworld` never fails; the error there says what to install.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import os
import types
from typing import Any, Iterator

_INSTALL_HINT = (
    "The ALFWorld environment plays games with the real TextWorld engine and needs the "
    "packages `alfworld==0.4.2` and `textworld==1.7.0` (with fast-downward-textworld). "
    "Install them with `pip install alfworld==0.4.2 textworld==1.7.0`; textworld ships "
    "wheels for Linux x86_64 only, so on other platforms run inside a Linux x86_64 "
    "container or VM.")


@dataclasses.dataclass(frozen=True)
class EngineModules:
  """The upstream modules the engine is built from."""
  textworld: types.ModuleType
  fast_downward: types.ModuleType
  pddl_env_cls: type
  demangler_cls: type
  infos_cls: type
  constants: types.ModuleType
  goal_library: types.ModuleType
  pddl_domain_path: str
  grammar_path: str
  layouts_dir: str


_MODULES: EngineModules | None = None


def import_engine() -> EngineModules:
  """Imports textworld + alfworld once -> their modules; raises ImportError with a fix."""
  global _MODULES
  if _MODULES is not None:
    return _MODULES
  # alfworld.info creates ~/.cache/alfworld and overwrites $ALFWORLD_DATA on import; keep
  # the user's environment as it was.
  saved_data_var = os.environ.get("ALFWORLD_DATA")
  try:
    import fast_downward  # pylint: disable=import-outside-toplevel
    import textworld  # pylint: disable=import-outside-toplevel
    from textworld.envs import PddlEnv  # pylint: disable=import-outside-toplevel
    import alfworld  # pylint: disable=import-outside-toplevel
    from alfworld import info as alfworld_info  # pylint: disable=import-outside-toplevel
    from alfworld.agents.environment import alfred_tw_env  # pylint: disable=import-outside-toplevel
    from alfworld.gen import constants  # pylint: disable=import-outside-toplevel
    from alfworld.gen import goal_library  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"{_INSTALL_HINT} (import failed: {e})") from e
  finally:
    if saved_data_var is None:
      os.environ.pop("ALFWORLD_DATA", None)
    else:
      os.environ["ALFWORLD_DATA"] = saved_data_var
  _MODULES = EngineModules(
      textworld=textworld,
      fast_downward=fast_downward,
      pddl_env_cls=PddlEnv,
      demangler_cls=alfred_tw_env.AlfredDemangler,
      infos_cls=alfred_tw_env.AlfredInfos,
      constants=constants,
      goal_library=goal_library,
      pddl_domain_path=alfworld_info.ALFRED_PDDL_PATH,
      grammar_path=alfworld_info.ALFRED_TWL2_PATH,
      layouts_dir=os.path.join(os.path.dirname(alfworld.__file__), "gen", "layouts"),
  )
  return _MODULES


class _Memo:
  """Bounded memo of a pure function of hashable arguments."""

  def __init__(self, fn, copy_result: bool, max_entries: int):
    self._fn, self._copy, self._max = fn, copy_result, max_entries
    self._entries: collections.OrderedDict[tuple, Any] = collections.OrderedDict()

  def __call__(self, *args, **kwargs):
    key = (args, tuple(sorted(kwargs.items())))
    if key in self._entries:
      self._entries.move_to_end(key)
      result = self._entries[key]
    else:
      result = self._fn(*args, **kwargs)
      self._entries[key] = result
      if len(self._entries) > self._max:
        self._entries.popitem(last=False)
    return copy.deepcopy(result) if self._copy else result


class _EngineMemos:
  """Memoizes the pure text-processing functions the engine calls again and again.

  Profiling textworld's PDDL engine shows that starting an episode is ~90% fast-downward's
  PDDL -> SAS translation (run twice by `load` and twice by every `reset`, on the same
  text), and a step ~60% TatSu re-parsing the same command templates and grammar queries
  for every admissible action. Each of these is a pure function of its text arguments,
  so while the engine runs we route them through memos:

  - `fast_downward.pddl2sas(domain, problem, ...)`: results are only read by textworld;
  - `textworld.logic._parse_and_convert(expr, rule_name=...)`: returns immutable rules;
  - `textworld.envs.pddl.textgen._parse_and_convert(text, ...)`: returns symbols the
    caller mutates, so every call gets a deep copy.

  The engine's behaviour is unchanged; the functions are swapped back on exit. (Threads
  running engines at once can at worst leave a memo installed, which is still correct.)
  """

  def __init__(self, modules: EngineModules):
    from textworld import logic as tw_logic  # pylint: disable=import-outside-toplevel
    from textworld.envs.pddl import textgen  # pylint: disable=import-outside-toplevel
    self._targets = [
        (modules.fast_downward, "pddl2sas",
         _Memo(modules.fast_downward.pddl2sas, copy_result=False, max_entries=8)),
        (tw_logic, "_parse_and_convert",
         _Memo(tw_logic._parse_and_convert, copy_result=False, max_entries=4096)),  # pylint: disable=protected-access
        (textgen, "_parse_and_convert",
         _Memo(textgen._parse_and_convert, copy_result=True, max_entries=4096)),  # pylint: disable=protected-access
    ]

  @contextlib.contextmanager
  def active(self) -> Iterator[None]:
    originals = [getattr(module, attr) for module, attr, _ in self._targets]
    for module, attr, memo in self._targets:
      setattr(module, attr, memo)
    try:
      yield
    finally:
      for (module, attr, _), original in zip(self._targets, originals):
        setattr(module, attr, original)


_MEMOS: _EngineMemos | None = None


def _engine_memos(modules: EngineModules) -> _EngineMemos:
  global _MEMOS
  if _MEMOS is None:
    _MEMOS = _EngineMemos(modules)
  return _MEMOS


def memoized() -> contextlib.AbstractContextManager[None]:
  """The engine's memos, for code that drives textworld's PddlEnv itself (e.g. tests
  running alfworld's own environment wrappers and handcoded expert)."""
  return _engine_memos(import_engine()).active()


class AlfredEngine:
  """One textworld PDDL game at a time, with entity names as ALFWorld shows them.

  The state it returns is textworld's `GameState` dict: `feedback`, `admissible_commands`
  (sorted, including "help"), `won`, `_facts` (engine propositions over entity ids) and
  `_entity_infos` (id -> name info).
  """

  def __init__(self):
    self._modules = import_engine()
    tw = self._modules.textworld
    request = tw.EnvInfos(won=True, admissible_commands=True, extras=["gamefile"])
    env = self._modules.pddl_env_cls(request)
    env = self._modules.demangler_cls(env, shuffle=False)
    self._env = self._modules.infos_cls(env)
    self._memos = _engine_memos(self._modules)
    self._loaded_path: str | None = None

  def load(self, game_path: str) -> None:
    if game_path == self._loaded_path:
      return
    with self._memos.active():
      self._env.load(game_path)
    self._loaded_path = game_path

  def reset(self) -> Any:
    with self._memos.active():
      return self._env.reset()

  def step(self, command: str) -> Any:
    with self._memos.active():
      state, _, _ = self._env.step(command)
    return state

  def close(self) -> None:
    self._env = None
    self._loaded_path = None
