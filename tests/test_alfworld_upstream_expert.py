"""alfworld's own handcoded TextWorld expert on generated v3 games.

The expert (`alfworld.agents.expert.HandCodedTWAgent`) is driven as alfworld drives it for
DAgger: textworld's PDDL env wrapped in `AlfredDemangler`, `AlfredInfos` and
`AlfredExpert("handcoded")` (alfworld/agents/environment/alfred_tw_env.py), playing
`extra.expert_plan[0]` every step. It reads the first observation's receptacle list, the
engine's facts, the admissible commands, the observations and `traj_data.json`'s
`pddl_params`, so a layout it cannot parse or navigate makes it crash or wander. E.g. with
FloorPlan308's desk lamp moved into the upper of its two drawers that share one spot (a
layout no real game has), it crashes (IndexError in `random.choice`: at the lower drawer
`use desklamp 1` is admissible but the lamp is not in sight) on valid_unseen task 33 below,
as on 20 and 44; as generated, it wins them.

Known upstream limitation, not a layout question: alfworld 0.4 renamed `put O in/on R` to
`move O to R`, but the expert's bookkeeping still looks for "put", so after its first
`move` it believes it still holds the object. In pick_two_obj_and_place it then walks back
to where it took the first object to put it down and, unless the second object is in
sight there, loops on an inadmissible command ("look") until its step limit. That is in
the expert's code whatever the layout, so real games with the two objects in different
places must meet it too (not measured: no real game files here). The pick-two game below
has its second pillow on the armchair the first was taken from.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import random

import pytest

from environments.alfworld import engine as engine_lib
from environments.alfworld import generate
from environments.alfworld import scenes

SEED = 0
MAX_STEPS = 50  # ALFWorld's episode limit.
OOD = "eval_out_of_distribution"

# (split, task id) -> (task type, object, parent, toggle, floor plan): one game of each task
# type, among them FloorPlan308's desk lamp (in the desk and on a shelf at once), FloorPlan
# 327's (on a dresser that shares its spot with a drawer: the one lamp the real games put at
# a shared location) and a kettle to put on one of FloorPlan2's stove burners, which stand
# in pairs (two burners reachable from one spot).
GAMES = {
    (OOD, 33): ("look_at_obj_in_light", "Mug", "", "DeskLamp", 308),
    (OOD, 3): ("pick_clean_then_place_in_recep", "SoapBar", "CounterTop", "", 424),
    (OOD, 4): ("pick_heat_then_place_in_recep", "Potato", "GarbageCan", "", 10),
    (OOD, 11): ("pick_two_obj_and_place", "Pillow", "Sofa", "", 219),
    (OOD, 13): ("pick_cool_then_place_in_recep", "Tomato", "Microwave", "", 10),
    ("train", 187): ("pick_and_place_simple", "Kettle", "StoveBurner", "", 2),
    ("train", 2263): ("look_at_obj_in_light", "Pen", "", "DeskLamp", 327),
}


@contextlib.contextmanager
def _seeded_random(seed):
  # The expert draws from the global `random` (which object to take, escape moves).
  state = random.getstate()
  random.seed(seed)
  try:
    yield
  finally:
    random.setstate(state)


def play_upstream_expert(game_path, max_steps=MAX_STEPS):
  """Plays alfworld's handcoded TW expert -> (won, commands). Its errors propagate."""
  modules = engine_lib.import_engine()
  from alfworld.agents.environment.alfred_tw_env import (  # pylint: disable=import-outside-toplevel
      AlfredExpert, AlfredExpertType)
  # alfred_tw_env.AlfredTWEnv.init_env's request and wrappers (AlfredExpert turns on facts).
  request = modules.textworld.EnvInfos(won=True, admissible_commands=True,
                                       extras=["gamefile", "expert_plan"])
  env = modules.pddl_env_cls(request)
  env = modules.demangler_cls(shuffle=False)(env)
  env = modules.infos_cls(env)
  env = AlfredExpert(env, expert_type=AlfredExpertType.HANDCODED)
  commands = []
  with engine_lib.memoized(), _seeded_random(SEED):
    env.load(game_path)
    state = env.reset()
    while not state["won"] and len(commands) < max_steps:
      command = state["extra.expert_plan"][0]
      commands.append(command)
      state, _, _ = env.step(command)
  env.close()
  return bool(state["won"]), commands


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("alfworld_upstream_expert"))


@pytest.mark.parametrize("split,task_id", sorted(GAMES))
def test_upstream_handcoded_expert_wins_generated_games(data_dir, split, task_id):
  assert generate.real_goals(SEED, split)[task_id] == GAMES[split, task_id]
  path = generate.ensure_game(data_dir, SEED, split, task_id)
  won, commands = play_upstream_expert(path)
  assert won, commands


def test_the_games_hold_the_layouts_they_are_chosen_for():
  # FloorPlan2's six burners: two pairs sharing a spot, two alone; 327's lamp host shares
  # its spot.
  burners = collections.Counter(r.location for r in scenes.load_floor_plan(2).receptacles
                                if r.type == "StoveBurner")
  assert sorted(burners.values()) == [1, 1, 2, 2]
  plan = scenes.load_floor_plan(327)
  (lamp_host,) = [rid for _, otype, rid in plan.fixed_objects if otype == "DeskLamp"]
  spots = collections.Counter(r.location for r in plan.receptacles)
  assert spots[{r.id: r.location for r in plan.receptacles}[lamp_host]] == 2
  assert {t[0] for t in GAMES.values()} == set(generate.TASK_COUNTS["train"])


def test_pick_two_is_lost_to_upstreams_put_bookkeeping_not_to_the_layout(data_dir,
                                                                          monkeypatch):
  # valid_unseen task 10: the second keychain is on another shelf than the first. The expert
  # as released loops after its first `move` (module docstring); with its bookkeeping told
  # that `move` is the old `put` it finds the second keychain and wins in 34 steps.
  split, task_id = OOD, 10
  assert generate.real_goals(SEED, split)[task_id] == (
      "pick_two_obj_and_place", "KeyChain", "Safe", "", 219)
  path = generate.ensure_game(data_dir, SEED, split, task_id)
  won, commands = play_upstream_expert(path)
  assert not won
  after_first = commands[commands.index("move keychain 1 to safe 1") + 1:]
  assert not any(c.startswith("take keychain") for c in after_first)
  assert after_first.count("look") >= 10, after_first
  from alfworld.agents.expert import handcoded_expert  # pylint: disable=import-outside-toplevel
  track = handcoded_expert.BasePolicy.update_state_tracking

  def track_move_as_put(self, game_state, last_action):
    if last_action.startswith("move "):
      last_action = "put " + last_action[len("move "):]
    return track(self, game_state, last_action)

  monkeypatch.setattr(handcoded_expert.BasePolicy, "update_state_tracking", track_move_as_put)
  won, commands = play_upstream_expert(path)
  assert won, commands
  assert commands[-1] == "move keychain 2 to safe 1"


def test_the_check_catches_a_lamp_at_a_shared_spot(tmp_path, monkeypatch):
  # The layout the issue saw (generator v2 put lamps in random receptacles): FloorPlan308's
  # desk lamp moved into the upper of two drawers that share one spot. No real game has it,
  # and the upstream expert crashes on the game it wins as generated.
  real_plan = scenes.load_floor_plan
  upper_drawer = "Drawer|-02.07|+00.49|+00.73"

  def lamp_in_a_drawer(number):
    plan = real_plan(number)
    if number != 308:
      return plan
    spots = collections.Counter(r.location for r in plan.receptacles)
    assert spots[{r.id: r.location for r in plan.receptacles}[upper_drawer]] == 2
    fixed = dict.fromkeys((o, t, upper_drawer if t == "DeskLamp" else r)
                          for o, t, r in plan.fixed_objects)
    return dataclasses.replace(plan, fixed_objects=tuple(fixed))

  monkeypatch.setattr(generate.scenes, "load_floor_plan", lamp_in_a_drawer)
  path = generate.ensure_game(str(tmp_path), SEED, OOD, 33)
  with pytest.raises(IndexError):
    play_upstream_expert(path)
