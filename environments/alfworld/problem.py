"""PDDL problem text and grammar of one ALFWorld game, in upstream's `game.tw-pddl` form.

The problem follows ALFRED's `initial_state.pddl` (ids mangled the way ALFRED writes them:
`|` -> `_bar_`, `-` -> `_minus_`, ...), the goal is the `alfworld.gen.goal_library` goal of
the task type, and the grammar is alfworld's `alfred.twl2` with the task sentence filled in
(as `alfworld.agents.utils.misc.add_task_to_grammar` does).
"""

from __future__ import annotations

import dataclasses

from environments.alfworld.engine import import_engine

_MANGLE = (("-", "_minus_"), ("|", "_bar_"), ("+", "_plus_"), (".", "_dot_"), (",", "_comma_"))


def mangle(alfred_id: str) -> str:
  """ALFRED id -> PDDL identifier (`Apple|+01.00|...` -> `Apple_bar__plus_01_dot_00...`)."""
  for char, replacement in _MANGLE:
    alfred_id = alfred_id.replace(char, replacement)
  return alfred_id


@dataclasses.dataclass(frozen=True)
class Placement:
  """One object instance: ALFRED id, type, the receptacle holding it and its location."""
  object_id: str
  object_type: str
  receptacle_id: str
  location: str


@dataclasses.dataclass(frozen=True)
class SceneState:
  """Everything the initial state of a game contains."""
  receptacles: tuple[tuple[str, str, str], ...]  # (id, type, location)
  placements: tuple[Placement, ...]
  agent_location: str


def goal_pddl(task_type: str, object_target: str, parent_target: str,
              toggle_target: str) -> str:
  """The goal section of `task_type` from alfworld's goal library (closes `define`)."""
  goal_library = import_engine().goal_library
  text = goal_library.gdict[task_type]["pddl"].format(
      obj=object_target, recep=parent_target, toggle=toggle_target, mrecep="")
  # The library writes PDDL's type separator as '#' (ALFRED's generator swaps it back).
  return text.replace("#", "-")


def problem_pddl(scene: SceneState, goal: str, name: str) -> str:
  """Initial state + goal -> the `pddl_problem` text of a game file."""
  constants = import_engine().constants
  receptacle_types = sorted({rtype for _, rtype, _ in scene.receptacles})
  object_types = sorted({p.object_type for p in scene.placements})
  locations = sorted({loc for _, _, loc in scene.receptacles}
                     | {p.location for p in scene.placements} | {scene.agent_location})
  can_hold = constants.VAL_RECEPTACLE_OBJECTS
  actions = constants.VAL_ACTION_OBJECTS
  pickupable = set().union(*can_hold.values())

  objects = ["agent1 - agent"]
  objects += [f"{t}Type - otype" for t in object_types]
  objects += [f"{t}Type - rtype" for t in receptacle_types]
  # An object may stand in two receptacles at once (the real games have a few: a house plant
  # on a desk and in a cabinet): one declaration, one inReceptacle fact per receptacle.
  first = {}
  for p in scene.placements:
    first.setdefault(p.object_id, p)
  objects += [f"{mangle(oid)} - object" for oid in first]
  objects += [f"{mangle(rid)} - receptacle" for rid, _, _ in scene.receptacles]
  objects += [f"{mangle(loc)} - location" for loc in locations]

  init = [f"(atLocation agent1 {mangle(scene.agent_location)})"]
  for rid, rtype, loc in scene.receptacles:
    init.append(f"(receptacleType {mangle(rid)} {rtype}Type)")
    init.append(f"(receptacleAtLocation {mangle(rid)} {mangle(loc)})")
    if rtype in constants.OPENABLE_CLASS_SET:
      init.append(f"(openable {mangle(rid)})")
  for p in scene.placements:
    if first[p.object_id] is not p:
      init.append(f"(inReceptacle {mangle(p.object_id)} {mangle(p.receptacle_id)})")
  for p in first.values():
    oid = mangle(p.object_id)
    init.append(f"(objectType {oid} {p.object_type}Type)")
    init.append(f"(inReceptacle {oid} {mangle(p.receptacle_id)})")
    init.append(f"(objectAtLocation {oid} {mangle(p.location)})")
    if p.object_type in pickupable:
      init.append(f"(pickupable {oid})")
    if p.object_type in constants.MOVABLE_RECEPTACLES_SET:
      init.append(f"(isReceptacleObject {oid})")
    for predicate, group in (("cleanable", "Cleanable"), ("heatable", "Heatable"),
                             ("coolable", "Coolable"), ("toggleable", "Toggleable")):
      if p.object_type in actions[group]:
        init.append(f"({predicate} {oid})")
  for rtype in receptacle_types:
    for otype in object_types:
      if otype in can_hold.get(rtype, ()):
        init.append(f"(canContain {rtype}Type {otype}Type)")

  return "\n".join([
      f"(define (problem {name})",
      "    (:domain alfred)",
      "    (:objects",
      *("        " + line for line in objects),
      "    )",
      "    (:init",
      *("        " + line for line in init),
      "    )",
  ]) + goal


def grammar_with_task(task_sentence: str) -> str:
  """alfworld's `alfred.twl2` with the task sentence in place of UNKNOWN GOAL."""
  with open(import_engine().grammar_path) as f:
    return f.read().replace("UNKNOWN GOAL", task_sentence)


def pddl_domain() -> str:
  with open(import_engine().pddl_domain_path) as f:
    return f.read()
