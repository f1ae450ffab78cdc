"""ALFRED floor plans as the alfworld package ships them (`alfworld/gen/layouts`).

Each floor plan has three files: `FloorPlanN-objects.json` (object and receptacle types
present), `FloorPlanN-openable.json` (receptacle ids -> the pose [x, z, rotation, horizon]
from which the agent interacts with them) and `FloorPlanN-layout.npy` (reachable floor
points, [num_points, 2] in metres).

Splits follow ALFRED's official split file (`data/splits/oct21.json`), from which
ALFWorld's json_2.1.1 train / valid_seen / valid_unseen games come: train uses ALFRED's
108 training floor plans, the in-distribution evaluation (valid_seen) the 88 of them that
ALFRED's valid_seen tasks use, and the out-of-distribution evaluation (valid_unseen) the
four unseen rooms 10, 219, 308 and 424. (`alfworld.gen.constants`' TRAIN/TEST scene
numbers are the generator's own 7..30 / 1..6 convention, not this split.)
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import os
import random

import numpy as np

from environments.alfworld.engine import import_engine

# Grid step of ALFRED's navigation graph; location ids are poses in these units.
_GRID_STEP_M = 0.25
# A stove has four burners; other receptacle types the layout lists without a pose get one
# instance (the layouts' openable files omit them).
_INSTANCES_WITHOUT_POSE = {"StoveBurner": 4}


# ALFRED's floor plans: 1-30 kitchens, 201-230 living rooms, 301-330 bedrooms,
# 401-430 bathrooms.
_ALL_FLOOR_PLANS = frozenset(n for base in (0, 200, 300, 400)
                             for n in range(base + 1, base + 31))
# The floor-plan sets oct21.json implies (the scene number ends each task directory).
ALFRED_VALID_UNSEEN = frozenset({10, 219, 308, 424})
# In no train or valid task (the rooms of ALFRED's unseen test split).
ALFRED_TEST_UNSEEN = frozenset({9, 29, 215, 226, 315, 325, 404, 425})
ALFRED_TRAIN = _ALL_FLOOR_PLANS - ALFRED_VALID_UNSEEN - ALFRED_TEST_UNSEEN
# Training rooms that no valid_seen task uses.
_TRAIN_ONLY = frozenset({208, 209, 210, 211, 217, 220, 221, 228, 306, 307, 312, 317, 319,
                         321, 322, 411, 416, 420, 421, 430})
ALFRED_VALID_SEEN = ALFRED_TRAIN - _TRAIN_ONLY

_SPLIT_FLOOR_PLANS = {
    "train": ALFRED_TRAIN,
    "eval_in_distribution": ALFRED_VALID_SEEN,
    "eval_out_of_distribution": ALFRED_VALID_UNSEEN,
}


@dataclasses.dataclass(frozen=True)
class Receptacle:
  """A static receptacle: ALFRED id (`Cabinet|+00.68|+00.50|-02.20`), type, location id."""
  id: str
  type: str
  location: str


@dataclasses.dataclass(frozen=True)
class FloorPlan:
  """One ALFRED scene as needed for a text game."""
  number: int
  scene_type: str  # Kitchen, LivingRoom, Bedroom or Bathroom.
  receptacles: tuple[Receptacle, ...]
  object_types: tuple[str, ...]  # Everything `-objects.json` lists (sorted).
  free_locations: tuple[str, ...]  # Reachable poses no receptacle uses (agent start).
  # Objects that cannot be picked up and stand in a receptacle in the real games (desk lamps,
  # house plants, televisions, ...): (object id, type, receptacle id).
  fixed_objects: tuple[tuple[str, str, str], ...] = ()

  @property
  def receptacle_types(self) -> frozenset[str]:
    return frozenset(r.type for r in self.receptacles)


def location_id(x: float, z: float, rotation: int, horizon: int) -> str:
  """ALFRED's location id of a pose: `loc|<x>|<z>|<rotation/90>|<horizon>` (grid units)."""
  return "loc|%d|%d|%d|%d" % (round(x / _GRID_STEP_M), round(z / _GRID_STEP_M),
                               int(rotation) // 90 % 4, int(horizon))


def _receptacle_type(receptacle_id: str) -> str:
  # Basins carry their type as a last component: "Sink|-01.90|+00.97|-01.50|SinkBasin".
  parts = receptacle_id.split("|")
  return parts[4] if len(parts) > 4 else parts[0]


def scene_type_of(number: int) -> str:
  constants = import_engine().constants
  for name, numbers in constants.SCENE_TYPE.items():
    if number in numbers:
      return name
  raise ValueError(f"FloorPlan{number} is not an ALFRED floor plan number.")


def floor_plan_numbers(split: str) -> list[int]:
  """Floor plans a split draws from, as in ALFRED's official split (module docstring)."""
  if split not in _SPLIT_FLOOR_PLANS:
    raise ValueError(f"Unknown ALFWorld split {split!r}; use train, eval_in_distribution "
                     "or eval_out_of_distribution.")
  return sorted(_SPLIT_FLOOR_PLANS[split])


_ROOMS_PATH = os.path.join(os.path.dirname(__file__), "alfred_rooms.json.gz")


@functools.lru_cache(maxsize=None)
def real_data() -> dict:
  """What the real ALFWorld games (json_2.1.1: 3553 train, 140 valid_seen, 134 valid_unseen)
  say about each floor plan and split, in `alfred_rooms.json.gz`:

  - `rooms[<floor plan>]`: `receptacles` [[id, type, location]] (every receptacle of the
    room, from the games' receptacleAtLocation facts; the same in every game of a room) and
    `fixed` [[object id, type, receptacle id]] (the non-pickupable objects the games put in
    receptacles: desk lamps, house plants, televisions, ...). All 112 floor plans of train,
    valid_seen and valid_unseen.
  - `goals[<train|valid_seen|valid_unseen>]`: [task_type, object, parent, toggle, floor
    plan, number of games] over the split's games.
  """
  with gzip.open(_ROOMS_PATH, "rt") as f:
    return json.load(f)


@functools.lru_cache(maxsize=None)
def load_floor_plan(number: int) -> FloorPlan:
  """FloorPlan`number` -> FloorPlan (cached; deterministic).

  Receptacles (ids, types, locations, hence their numbering) and fixed objects come from the
  real games (`real_data`); rooms no ALFWorld game uses fall back to the layout files, with
  pose-less receptacles placed at reachable points.
  """
  modules = import_engine()
  constants = modules.constants
  prefix = os.path.join(modules.layouts_dir, f"FloorPlan{number}")
  try:
    with open(prefix + "-objects.json") as f:
      object_types = sorted(set(json.load(f)))
    with open(prefix + "-openable.json") as f:
      poses = json.load(f)
    points = np.load(prefix + "-layout.npy")
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f"The alfworld package has no layout for FloorPlan{number} ({e.filename}); "
        "reinstall alfworld==0.4.2.") from e

  static_types = set(constants.RECEPTACLES) - set(constants.MOVABLE_RECEPTACLES)
  receptacles = []
  used_locations = set()
  room = real_data()["rooms"].get(str(number))
  if room is not None:
    receptacles = [Receptacle(rid, rtype, loc) for rid, rtype, loc in room["receptacles"]]
    used_locations = {r.location for r in receptacles}
    point_list = sorted((float(x), float(z)) for x, z in points)
    free_locations = sorted({location_id(x, z, rot, 30) for x, z in point_list
                             for rot in (0, 90, 180, 270)} - used_locations)
    return FloorPlan(number=number, scene_type=scene_type_of(number),
                     receptacles=tuple(receptacles), object_types=tuple(object_types),
                     free_locations=tuple(free_locations),
                     fixed_objects=tuple(tuple(f) for f in room["fixed"]))
  for receptacle_id, (x, z, rotation, horizon) in sorted(poses.items()):
    rtype = _receptacle_type(receptacle_id)
    if rtype not in static_types:
      continue
    location = location_id(x, z, rotation, horizon)
    used_locations.add(location)
    receptacles.append(Receptacle(receptacle_id, rtype, location))

  # Receptacle types the scene has but whose pose the layout omits (stove burners, toasters,
  # garbage cans, ...): place them at reachable points, deterministically per floor plan.
  rng = random.Random(f"floorplan:{number}")
  point_list = sorted((float(x), float(z)) for x, z in points)
  present = {r.type for r in receptacles}
  for rtype in sorted(set(object_types) & static_types - present):
    for _ in range(_INSTANCES_WITHOUT_POSE.get(rtype, 1)):
      x, z = rng.choice(point_list)
      rotation, horizon = rng.choice((0, 90, 180, 270)), 30
      receptacle_id = "%s|%+06.2f|%+06.2f|%+06.2f" % (
          rtype, x + rng.uniform(-0.5, 0.5), rng.uniform(0.0, 1.5), z + rng.uniform(-0.5, 0.5))
      if rtype.endswith("Basin"):
        # Basins are named after their fixture, as in the layouts: "Sink|x|y|z|SinkBasin".
        receptacle_id = receptacle_id.replace(rtype, rtype[:-len("Basin")], 1) + "|" + rtype
      location = location_id(x, z, rotation, horizon)
      used_locations.add(location)
      receptacles.append(Receptacle(receptacle_id, rtype, location))

  free_locations = sorted({location_id(x, z, rot, 30) for x, z in point_list
                           for rot in (0, 90, 180, 270)} - used_locations)
  return FloorPlan(number=number, scene_type=scene_type_of(number),
                   receptacles=tuple(receptacles), object_types=tuple(object_types),
                   free_locations=tuple(free_locations))
