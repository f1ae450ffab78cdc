"""ALFWorld generator v3 against the real ALFWorld games (json_2.1.1).

The expectations are facts read off the real game files (`game.tw-pddl` problems and
`traj_data.json` of alfworld's released train / valid_seen / valid_unseen data): receptacle
inventories, fixed objects and the splits' goal lists.
"""

from __future__ import annotations

import collections
import json

from environments.alfworld import generate
from environments.alfworld import scenes
from environments.alfworld.engine import import_engine

SEED = 0


def _types(plan):
  return collections.Counter(r.type for r in plan.receptacles)


def test_receptacle_inventories_are_the_real_games():
  # FloorPlan14 (e.g. train/pick_clean_then_place_in_recep-Apple-None-Microwave-14): 8
  # cabinets; the layout files list only the 4 openable ones with a pose.
  plan = scenes.load_floor_plan(14)
  assert _types(plan) == {"Cabinet": 8, "CoffeeMachine": 1, "CounterTop": 2, "Fridge": 1,
                          "GarbageCan": 1, "Microwave": 1, "SinkBasin": 1, "StoveBurner": 4,
                          "Toaster": 1}
  by_id = {r.id: r for r in plan.receptacles}
  assert by_id["Cabinet|+01.66|+02.30|+01.31"].location == "loc|6|9|2|-30"
  assert by_id["Sink|+01.10|+00.91|-01.60|SinkBasin"].type == "SinkBasin"
  assert by_id["Sink|+01.10|+00.91|-01.60|SinkBasin"].location == "loc|4|-3|2|45"
  assert by_id["GarbageCan|+01.77|+00.00|+01.69"].location == "loc|6|9|2|60"
  # FloorPlan26: 10 cabinets, 3 drawers, 2 dining tables.
  assert _types(scenes.load_floor_plan(26)) == {
      "Cabinet": 10, "CoffeeMachine": 1, "CounterTop": 2, "DiningTable": 2, "Drawer": 3,
      "Fridge": 1, "GarbageCan": 1, "Microwave": 1, "SinkBasin": 1, "StoveBurner": 4,
      "Toaster": 1}
  # Every room of the three splits has its real inventory: 2,165 receptacles in 112 rooms.
  rooms = scenes.real_data()["rooms"]
  used = set().union(*(scenes.floor_plan_numbers(s) for s in generate.SPLIT_DIRS))
  assert {int(n) for n in rooms} == used and len(used) == 112
  assert sum(len(scenes.load_floor_plan(n).receptacles) for n in used) == 2165


def test_appliances_that_share_a_spot_share_it():
  # FloorPlan1's four burners stand in two pairs, each pair reachable from one pose.
  locations = collections.defaultdict(set)
  for r in scenes.load_floor_plan(1).receptacles:
    if r.type == "StoveBurner":
      locations[r.location].add(r.id)
  assert sorted(map(sorted, locations.values())) == [
      ["StoveBurner|-00.04|+00.92|-02.37", "StoveBurner|-00.04|+00.92|-02.58"],
      ["StoveBurner|-00.47|+00.92|-02.37", "StoveBurner|-00.47|+00.92|-02.58"]]


def test_fixed_objects_stand_where_the_real_games_have_them():
  # FloorPlan301: the desk lamp on the dresser; FloorPlan201: curtains on a side table, a
  # house plant on the dining table, the television on the TV stand.
  assert scenes.load_floor_plan(301).fixed_objects == (
      ("DeskLamp|-01.31|+01.23|-00.99", "DeskLamp", "Dresser|-01.33|+00.00|-00.75"),)
  assert scenes.load_floor_plan(201).fixed_objects == (
      ("Curtains|-00.08|+02.42|+00.97", "Curtains", "SideTable|-00.24|+00.00|+03.37"),
      ("HousePlant|-03.02|+00.59|-00.02", "HousePlant", "DiningTable|-03.20|+00.59|+00.21"),
      ("Television|-02.36|+01.21|+06.28", "Television", "TVStand|-02.39|+00.00|+06.30"))
  # Generated games carry them, unpickupable, at their receptacle's location.
  task_id = next(t for t in range(generate.num_games("train"))
                 if generate.real_goals(SEED, "train")[t][4] == 201)
  spec = generate.sample_task(SEED, "train", task_id)
  locations = {rid: loc for rid, _, loc in spec.scene.receptacles}
  fixed = {p.object_id: p for p in spec.scene.placements
           if p.object_type in ("Curtains", "HousePlant", "Television")}
  assert {(p.object_id, p.receptacle_id) for p in fixed.values()} == {
      (o, r) for o, _, r in scenes.load_floor_plan(201).fixed_objects}
  assert all(p.location == locations[p.receptacle_id] for p in fixed.values())
  _, game = generate.game_data(spec)
  assert "(pickupable HousePlant_bar_" not in game["pddl_problem"]
  assert "(inReceptacle Television_bar__minus_02_dot_36_bar__plus_01_dot_21_bar__plus_06_dot_28 " \
         "TVStand_bar__minus_02_dot_39_bar__plus_00_dot_00_bar__plus_06_dot_30)" in game["pddl_problem"]


def test_desk_lamps_are_the_rooms_fixed_lamps():
  # In the real games desk lamps are scene objects on side tables (266 train games), desks
  # (195), dressers (139), shelves (60) and coffee tables (11); every look_at game lights a
  # desk lamp, and the generated look_at games use the room's own lamp.
  hosts = collections.Counter()
  constants = import_engine().constants
  for number in scenes.floor_plan_numbers("train"):
    for _, otype, rid in scenes.load_floor_plan(number).fixed_objects:
      if otype == "DeskLamp":
        hosts[rid.split("|")[0]] += 1
  assert set(hosts) == {"SideTable", "Desk", "Dresser", "Shelf", "CoffeeTable"}
  goals = generate.real_goals(SEED, "train")
  looks = [t for t, g in enumerate(goals) if g[0] == "look_at_obj_in_light"]
  assert len(looks) == 308 and {goals[t][3] for t in looks} == {"DeskLamp"}
  for t in looks[:40]:
    spec = generate.sample_task(SEED, "train", t)
    lamps = {(p.object_id, p.receptacle_id) for p in spec.scene.placements
             if p.object_type in constants.VAL_ACTION_OBJECTS["Toggleable"]}
    assert lamps == {(o, r) for o, otype, r in
                     scenes.load_floor_plan(spec.floor_plan).fixed_objects
                     if otype in constants.VAL_ACTION_OBJECTS["Toggleable"]}


def test_goals_are_the_real_splits_goals():
  real = scenes.real_data()["goals"]
  for split, real_split in generate.SPLIT_DIRS.items():
    want = collections.Counter({tuple(row[:5]): row[5] for row in real[real_split]})
    got = collections.Counter(generate.real_goals(SEED, split))
    assert got == want
    assert sum(got.values()) == generate.num_games(split)
    assert collections.Counter(generate.task_types(SEED, split)) == generate.TASK_COUNTS[split]
    assert {g[4] for g in got} <= set(scenes.floor_plan_numbers(split))
    specs = [generate.sample_task(SEED, split, t) for t in range(0, generate.num_games(split), 37)]
    assert all((s.task_type, s.object_target, s.parent_target, s.toggle_target, s.floor_plan)
               == generate.real_goals(SEED, split)[s.task_id] for s in specs)
  train = collections.Counter()
  for row in real["train"]:
    train[row[2]] += row[5]
  # Real train: 237 of 3553 goals ask for the garbage can (6.7%), 134 for the coffee machine.
  assert train["GarbageCan"] == 237 and train["CoffeeMachine"] == 134
  assert sum(row[5] for row in real["train"] if row[1] == "Mug") == 220
  assert ["pick_clean_then_place_in_recep", "Apple", "Microwave", "", 14, 3] in real["train"]
  # The order depends on the seed, the multiset does not.
  assert generate.real_goals(SEED, "train") != generate.real_goals(SEED + 1, "train")


def test_an_object_in_two_receptacles_is_declared_once():
  # FloorPlan308 (valid_unseen): the real games put its desk lamp in the desk and on a
  # shelf at once; the problem declares the lamp once with both inReceptacle facts.
  assert scenes.load_floor_plan(308).fixed_objects == (
      ("DeskLamp|-02.30|+00.87|+00.75", "DeskLamp", "Desk|-01.58|+00.02|+00.67"),
      ("DeskLamp|-02.30|+00.87|+00.75", "DeskLamp", "Shelf|-01.96|+00.87|+00.41"))
  split = "eval_out_of_distribution"
  task_id = next(t for t, g in enumerate(generate.real_goals(SEED, split)) if g[4] == 308)
  _, game = generate.game_data(generate.sample_task(SEED, split, task_id))
  problem = game["pddl_problem"]
  lamp = "DeskLamp_bar__minus_02_dot_30_bar__plus_00_dot_87_bar__plus_00_dot_75"
  assert problem.count(f"{lamp} - object") == 1
  assert problem.count(f"(objectType {lamp} DeskLampType)") == 1
  assert f"(inReceptacle {lamp} Desk_bar__minus_01_dot_58_bar__plus_00_dot_02_bar__plus_00_dot_67)" in problem
  assert f"(inReceptacle {lamp} Shelf_bar__minus_01_dot_96_bar__plus_00_dot_87_bar__plus_00_dot_41)" in problem


def test_expert_wins_a_look_at_game_in_floor_plan_308(tmp_path):
  # The real engine loads the game and the expert wins it (the engine rejected the doubly
  # declared lamp before).
  split = "eval_out_of_distribution"
  goals = generate.real_goals(SEED, split)
  task_id = next(t for t, g in enumerate(goals)
                 if g[4] == 308 and g[0] == "look_at_obj_in_light")
  path = generate.ensure_game(str(tmp_path), SEED, split, task_id)
  with open(path) as f:
    game = json.load(f)
  assert game["solvable"] and game["walkthrough"][-1].startswith("use desklamp")
