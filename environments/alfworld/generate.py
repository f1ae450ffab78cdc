"""Offline ALFWorld games: ALFRED tasks on the alfworld package's floor plans.

Every game is a pure function of (seed, split, task_id): the goal (task type, object,
goal receptacle or lamp, floor plan) is one of the real split's goals, each used as often
as the real split has it, in a seeded order (train: ALFWorld's 3553 train games,
eval_in_distribution: its 140 valid_seen, eval_out_of_distribution: its 134 valid_unseen,
see scenes.real_data); the room's receptacles and fixed objects (desk lamps, house plants,
televisions, ...) are the real games'; pickupable objects are placed from alfworld's
receptacle/object compatibility table (`VAL_RECEPTACLE_OBJECTS`), the goal PDDL comes from
`alfworld.gen.goal_library` and the task sentence from its templates. The files are written in the official layout,

    <root>/json_2.1.1/<train|valid_seen|valid_unseen>/<task dir>/<trial>/
        traj_data.json   (task_type, pddl_params, scene, turk_annotations)
        game.tw-pddl     (pddl_domain, grammar, pddl_problem, solvable, walkthrough)

so the real-data loader reads them too. A game is kept only if the expert wins it in the
real engine within the step limit; its commands are stored as the walkthrough.

CLI (pre-generation; the env otherwise generates lazily per task id):

    python -m environments.alfworld.generate --split train --num 3553 [--seed 0] [--data_dir D]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import random
import sys
import time

from environments import files
from environments.alfworld import expert as expert_lib
from environments.alfworld import problem as problem_lib
from environments.alfworld import scenes
from environments.alfworld.engine import AlfredEngine, import_engine

SPLIT_DIRS = {
    "train": "train",
    "eval_in_distribution": "valid_seen",
    "eval_out_of_distribution": "valid_unseen",
}

# ALFWorld's games per split and task type (alfworld 0.4 data, solvable games only).
TASK_COUNTS = {
    "train": {"pick_and_place_simple": 790, "look_at_obj_in_light": 308,
              "pick_clean_then_place_in_recep": 650, "pick_heat_then_place_in_recep": 459,
              "pick_cool_then_place_in_recep": 533, "pick_two_obj_and_place": 813},
    "eval_in_distribution": {"pick_and_place_simple": 35, "look_at_obj_in_light": 13,
                             "pick_clean_then_place_in_recep": 27,
                             "pick_heat_then_place_in_recep": 16,
                             "pick_cool_then_place_in_recep": 25,
                             "pick_two_obj_and_place": 24},
    "eval_out_of_distribution": {"pick_and_place_simple": 24, "look_at_obj_in_light": 18,
                                 "pick_clean_then_place_in_recep": 31,
                                 "pick_heat_then_place_in_recep": 23,
                                 "pick_cool_then_place_in_recep": 21,
                                 "pick_two_obj_and_place": 17},
}

# Where a lamp goes when the real games keep it outside receptacles (floor lamps; the text
# engine needs it in one): desk lamps' hosts in the real games first.
_LAMP_HOSTS = ("SideTable", "Desk", "Dresser", "Shelf", "CoffeeTable", "DiningTable",
               "TVStand", "CounterTop")
_MAX_ATTEMPTS = 200
# A game is kept when the expert wins it within this many steps (ALFWorld's episode
# limit). A fixed budget, not the agent's turn limit: which game a task id names must not
# depend on --config.env.max_steps, and a short limit would reject every game.
SOLVE_MAX_STEPS = 50
GENERATOR_VERSION = 3


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """A sampled game before it is written (cheap to compute; names its directory)."""
  seed: int
  split: str
  task_id: int
  attempt: int
  task_type: str
  floor_plan: int
  object_target: str
  parent_target: str
  toggle_target: str
  task_sentence: str
  scene: problem_lib.SceneState

  @property
  def task_dir(self) -> str:
    middle = self.toggle_target if self.task_type == "look_at_obj_in_light" else (
        self.parent_target)
    return f"{self.task_type}-{self.object_target}-None-{middle}-{self.floor_plan}"

  @property
  def trial_dir(self) -> str:
    return f"trial_G{self.seed}_{self.task_id:05d}"

  def params(self) -> expert_lib.TaskParams:
    return expert_lib.TaskParams(self.task_type, self.object_target, self.parent_target,
                                 self.toggle_target)


def num_games(split: str) -> int:
  _check_split(split)
  return sum(TASK_COUNTS[split].values())


def _check_split(split: str) -> None:
  if split not in SPLIT_DIRS:
    raise ValueError(f"Unknown ALFWorld split {split!r}; use one of {sorted(SPLIT_DIRS)}.")


def task_types(seed: int, split: str) -> list[str]:
  """Task type of every task id of a generated split ([num_games(split)])."""
  return [goal[0] for goal in real_goals(seed, split)]


def split_root(data_dir: str, seed: int) -> str:
  """Directory holding the generated `json_2.1.1` tree of `seed`."""
  return os.path.join(data_dir, f"generated_v{GENERATOR_VERSION}", f"seed_{seed}")


def _pickupable_hosts(plan: scenes.FloorPlan,
                      extra: tuple[str, ...] = ()) -> dict[str, list[scenes.Receptacle]]:
  """Object type -> receptacles of the scene that can hold it (pickupable types only)."""
  can_hold = import_engine().constants.VAL_RECEPTACLE_OBJECTS
  hosts = {}
  for otype in sorted(set(plan.object_types) | set(extra)):
    options = [r for r in plan.receptacles if otype in can_hold.get(r.type, ())]
    if options:
      hosts[otype] = options
  return hosts


def _object_id(rng: random.Random, otype: str, taken: set[str]) -> str:
  while True:
    object_id = "%s|%+06.2f|%+06.2f|%+06.2f" % (
        otype, rng.uniform(-3.0, 3.0), rng.uniform(0.0, 2.0), rng.uniform(-3.0, 3.0))
    if object_id not in taken:
      taken.add(object_id)
      return object_id


@functools.lru_cache(maxsize=None)
def real_goals(seed: int, split: str) -> tuple[tuple[str, str, str, str, int], ...]:
  """(task_type, object, parent, toggle, floor plan) of every task id of a split.

  The real ALFWorld split's goals, each as often as the real split has it (train 3553,
  valid_seen 140, valid_unseen 134 games), in a seeded order.
  """
  _check_split(split)
  rows = scenes.real_data()["goals"][SPLIT_DIRS[split]]
  goals = [tuple(row[:5]) for row in rows for _ in range(row[5])]
  random.Random(f"alfworld-goals:{seed}:{split}").shuffle(goals)
  return tuple(goals)


def _lamp_host(rng: random.Random, plan: scenes.FloorPlan) -> scenes.Receptacle | None:
  """A receptacle for a lamp the real games keep outside receptacles (floor lamps): one of
  the types desk lamps stand on, at a location no other receptacle shares (alfworld's
  handcoded expert fails on a lamp at a shared location)."""
  per_location = {}
  for r in plan.receptacles:
    per_location[r.location] = per_location.get(r.location, 0) + 1
  for types in (_LAMP_HOSTS[:3], _LAMP_HOSTS):
    options = [r for r in plan.receptacles
               if r.type in types and per_location[r.location] == 1]
    if options:
      return rng.choice(options)
  return None


def _sample_attempt(seed: int, split: str, task_id: int, task_type: str,
                    attempt: int) -> TaskSpec | None:
  constants = import_engine().constants
  goal_library = import_engine().goal_library
  rng = random.Random(f"alfworld-game:{seed}:{split}:{task_id}:{attempt}")
  real_type, object_target, parent_target, toggle_target, number = real_goals(
      seed, split)[task_id]
  assert real_type == task_type, (real_type, task_type)
  plan = scenes.load_floor_plan(number)
  hosts = _pickupable_hosts(plan, extra=(object_target,))
  target_hosts = [r for r in hosts.get(object_target, ()) if r.type != parent_target]
  if not target_hosts:
    return None
  by_id = {r.id: r for r in plan.receptacles}

  placements, taken = [], set()
  # The room's fixed objects where the real games have them.
  for object_id, otype, receptacle_id in plan.fixed_objects:
    receptacle = by_id[receptacle_id]
    taken.add(object_id)
    placements.append(problem_lib.Placement(object_id, otype, receptacle.id,
                                            receptacle.location))
  if toggle_target and not any(f[1] == toggle_target for f in plan.fixed_objects):
    receptacle = _lamp_host(rng, plan)
    if receptacle is None:
      return None
    placements.append(problem_lib.Placement(
        _object_id(rng, toggle_target, taken), toggle_target, receptacle.id,
        receptacle.location))
  for otype, options in sorted(hosts.items()):
    if otype == object_target:
      count = rng.randint(2, 3) if task_type == "pick_two_obj_and_place" else rng.randint(1, 3)
      options = target_hosts
    else:
      count = rng.randint(1, constants.MAX_NUM_OF_OBJ_INSTANCES)
    for _ in range(count):
      receptacle = rng.choice(options)
      placements.append(problem_lib.Placement(
          _object_id(rng, otype, taken), otype, receptacle.id, receptacle.location))

  template = rng.choice(goal_library.gdict[task_type]["templates"])
  sentence = template.format(obj=object_target.lower(), recep=parent_target.lower(),
                             toggle=toggle_target.lower(), mrecep="")
  scene = problem_lib.SceneState(
      receptacles=tuple((r.id, r.type, r.location) for r in plan.receptacles),
      placements=tuple(placements),
      agent_location=rng.choice(plan.free_locations))
  return TaskSpec(seed=seed, split=split, task_id=task_id, attempt=attempt,
                  task_type=task_type, floor_plan=plan.number, object_target=object_target,
                  parent_target=parent_target, toggle_target=toggle_target,
                  task_sentence=sentence, scene=scene)


def sample_task(seed: int, split: str, task_id: int, first_attempt: int = 0) -> TaskSpec:
  """The game of `task_id` (deterministic), starting the search at `first_attempt`."""
  total = num_games(split)
  if not 0 <= task_id < total:
    raise ValueError(f"task_id {task_id} out of range: split {split!r} has {total} games.")
  task_type = task_types(seed, split)[task_id]
  for attempt in range(first_attempt, first_attempt + _MAX_ATTEMPTS):
    spec = _sample_attempt(seed, split, task_id, task_type, attempt)
    if spec is not None:
      return spec
  raise RuntimeError(f"No floor plan of split {split!r} can host a {task_type} game "
                     f"(task {task_id}, seed {seed}).")


def game_data(spec: TaskSpec) -> tuple[dict, dict]:
  """-> (traj_data, game file data without walkthrough) of `spec`."""
  goal = problem_lib.goal_pddl(spec.task_type, spec.object_target, spec.parent_target,
                               spec.toggle_target)
  problem = problem_lib.problem_pddl(spec.scene, goal,
                                     name=f"plan_{spec.split}_{spec.task_id}")
  traj_data = {
      "task_type": spec.task_type,
      "task_id": spec.trial_dir,
      "pddl_params": {"object_target": spec.object_target,
                      "parent_target": spec.parent_target,
                      "toggle_target": spec.toggle_target,
                      "mrecep_target": "", "object_sliced": False},
      "scene": {"floor_plan": f"FloorPlan{spec.floor_plan}", "scene_num": spec.floor_plan},
      "turk_annotations": {"anns": [{"task_desc": spec.task_sentence}]},
      "generator": {"version": GENERATOR_VERSION, "seed": spec.seed, "split": spec.split,
                    "task_index": spec.task_id, "attempt": spec.attempt},
  }
  game = {"pddl_domain": problem_lib.pddl_domain(),
          "grammar": problem_lib.grammar_with_task(spec.task_sentence),
          "pddl_problem": problem, "solvable": None, "walkthrough": None}
  return traj_data, game


def _write_json(path: str, data: dict) -> None:
  # Pool workers may generate the same game at once.
  files.atomic_write_json(path, data)


def solve(engine: AlfredEngine, game_path: str, params: expert_lib.TaskParams,
          max_steps: int) -> list[str] | None:
  """Plays the expert in the engine -> its commands if it wins within `max_steps`."""
  engine.load(game_path)
  state = engine.reset()
  commands = []
  for _ in range(max_steps):
    if state["won"]:
      break
    command = expert_lib.next_command(*expert_lib.facts_and_names(state), params)
    if command is None or command not in state["admissible_commands"]:
      return None
    commands.append(command)
    state = engine.step(command)
  return commands if state["won"] else None


def game_dir(data_dir: str, seed: int, split: str, task_id: int) -> str:
  """Where the game of `task_id` lives (exists once generated)."""
  spec = sample_task(seed, split, task_id)
  return _spec_dir(data_dir, spec)


def _spec_dir(data_dir: str, spec: TaskSpec) -> str:
  return os.path.join(split_root(data_dir, spec.seed), "json_2.1.1", SPLIT_DIRS[spec.split],
                      spec.task_dir, spec.trial_dir)


def ensure_game(data_dir: str, seed: int, split: str, task_id: int,
                engine: AlfredEngine | None = None) -> str:
  """Path of the game file of `task_id`, generating (and solving) it if missing.

  The index file `<root>/index/<split>/<task_id>.json` remembers which attempt gave a
  solvable game, so later look-ups skip straight to it.
  """
  root = split_root(data_dir, seed)
  index_path = os.path.join(root, "index", split, f"{task_id:05d}.json")
  if os.path.exists(index_path):
    with open(index_path) as f:
      entry = json.load(f)
    game_path = os.path.join(root, entry["game"])
    if os.path.exists(game_path):
      return game_path
  engine = engine or AlfredEngine()
  attempt = 0
  for _ in range(_MAX_ATTEMPTS):
    spec = sample_task(seed, split, task_id, first_attempt=attempt)
    directory = _spec_dir(data_dir, spec)
    os.makedirs(directory, exist_ok=True)
    traj_data, game = game_data(spec)
    game_path = os.path.join(directory, "game.tw-pddl")
    draft_path = f"{game_path}.draft{os.getpid()}"
    with open(draft_path, "w") as f:
      json.dump(game, f)
    try:
      walkthrough = solve(engine, draft_path, spec.params(), SOLVE_MAX_STEPS)
    finally:
      os.remove(draft_path)
    if walkthrough is not None:
      game["solvable"], game["walkthrough"] = True, walkthrough
      _write_json(os.path.join(directory, "traj_data.json"), traj_data)
      _write_json(game_path, game)
      os.makedirs(os.path.dirname(index_path), exist_ok=True)
      _write_json(index_path, {"game": os.path.relpath(game_path, root),
                               "task_type": spec.task_type})
      return game_path
    attempt = spec.attempt + 1
  raise RuntimeError(f"Could not generate a solvable {split} game for task {task_id}.")


def default_data_dir() -> str:
  base = os.environ.get("EMPG_DATA_DIR")
  if base:
    return os.path.join(base, "alfworld")
  return os.path.join(os.path.expanduser("~"), ".cache", "empg_jax", "alfworld")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--split", required=True, choices=sorted(SPLIT_DIRS))
  parser.add_argument("--num", type=int, default=None,
                      help="games to generate (default: the whole split)")
  parser.add_argument("--start", type=int, default=0, help="first task id")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--data_dir", default=None,
                      help="cache directory (default: $EMPG_DATA_DIR/alfworld or "
                           "~/.cache/empg_jax/alfworld)")
  args = parser.parse_args(argv)
  data_dir = args.data_dir or default_data_dir()
  total = num_games(args.split)
  stop = total if args.num is None else min(total, args.start + args.num)
  if args.start < 0 or args.start >= total:
    parser.error(f"--start must be in [0, {total}) for split {args.split}.")
  engine = AlfredEngine()
  t0 = time.time()
  for task_id in range(args.start, stop):
    ensure_game(data_dir, args.seed, args.split, task_id, engine=engine)
    done = task_id - args.start + 1
    if done % 50 == 0 or task_id == stop - 1:
      rate = (time.time() - t0) / done
      print(f"{args.split}: {done}/{stop - args.start} games, {rate:.2f} s/game", flush=True)
  print(f"Games are under {split_root(data_dir, args.seed)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
