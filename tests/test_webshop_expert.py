"""WebShop search and the scripted expert on the synthetic test goals."""

import random

import pytest

import environments
from environments.webshop import state as st
from environments.webshop.expert import expert_query, instruction_query


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  data_dir = str(tmp_path_factory.getbasetemp() / "webshop_data")
  return environments.make("webshop", split="test", seed=0, data_dir=data_dir)


def test_search_finds_the_target_for_goal_queries(env):
  search = env.search_engine.search
  goals = env.catalog.goals[:500]
  by_instruction = sum(g["asin"] in search(instruction_query(g["instruction_text"]))
                       for g in goals)
  assert by_instruction / len(goals) >= 0.99
  assert all(g["asin"] in search(expert_query(g, search)) for g in goals)
  assert all(len(search(instruction_query(g["instruction_text"]))) <= 50 for g in goals)


def test_instruction_query_drops_the_price_clause():
  text = "i need a long clear glass jar with lid, and price lower than 30.00 dollars"
  assert instruction_query(text) == "i need a long clear glass jar with lid"
  assert instruction_query("find [x] now") == "find  x  now"


def _play_expert(env, task_id):
  obs, info = env.reset(task_id)
  done, steps = False, 0
  while not done:
    obs, reward, done, info = env.step(env.expert_action())
    assert info["valid_action"]
    steps += 1
  return info["won"], steps


def test_expert_solves_the_test_goals(env):
  results = [_play_expert(env, i) for i in range(env.num_tasks())]
  success = sum(won for won, _ in results) / len(results)
  print(f"\nWebShop expert success on {len(results)} test goals: {success:.3f}; "
        f"mean steps {sum(s for _, s in results) / len(results):.2f}")
  assert success >= 0.99


def test_expert_recovers_from_any_state(env):
  rng = random.Random(0)
  wins = 0
  for task_id in range(0, 500, 25):
    env.reset(task_id)
    # Wander: a random search, a random product, maybe a sub-page or a next page.
    env.step(f"search[{rng.choice(['dog bed', 'glass jar', 'red', 'set'])}]")
    clickables = env.step("click[-]")[3]["available_actions"]["clickables"]
    wrong = [c for c in clickables if c.startswith("b0") and c != env.goal["asin"].lower()]
    env.step(f"click[{rng.choice(wrong)}]")
    assert env.episode.page_kind == st.ITEM
    env.step(rng.choice(["click[features]", "click[reviews]", "click[< prev]",
                         "click[next >]"]))
    done = False
    while not done:  # 4 wandering steps leave the expert 11 of the 15
      _, reward, done, info = env.step(env.expert_action())
    wins += info["won"]
  assert wins == 20


def test_expert_goes_back_from_a_wrong_item(env):
  env.reset(0)
  env.step(env.expert_action())
  wrong = next(a for a in env.episode.results[:10] if a != env.goal["asin"])
  env.step(f"click[{wrong.lower()}]")
  env.step("click[description]")
  assert env.expert_action() == "click[< prev]"
  env.step("click[< prev]")
  assert env.expert_action() == "click[< prev]"  # back to the results
  env.step("click[< prev]")
  assert env.episode.page_kind == st.RESULTS
  # Another search whose results lack the target -> back to search.
  env.step("click[back to search]")
  env.step("search[zzzz unknown words]")
  assert env.episode.results == []
  assert env.expert_action() == "click[back to search]"


_NAVIGATION = ("back to search", "< prev", "next >", "description", "features", "reviews",
               "buy now")


def _play_copying_student(env, task_id):
  """A policy that only copies from its prompt, without the target: it searches the
  instruction, opens the first result, clicks each option the instruction names, buys."""
  env.reset(task_id)
  _, _, _, info = env.step(f"search[{instruction_query(env.goal['instruction_text'])}]")
  products = [a for a in info["admissible_actions"]
              if a.startswith("click[") and a[6:-1] not in _NAVIGATION]
  _, _, _, info = env.step(products[0])
  instruction = env.goal["instruction_text"].lower()
  for action in info["admissible_actions"]:
    if action[6:-1] not in _NAVIGATION and action[6:-1] in instruction:
      _, _, _, info = env.step(action)
  _, _, _, info = env.step("click[buy now]")
  return info["won"]


def test_a_policy_that_copies_from_its_prompt_wins_most_goals(env):
  # What a warm start that has learned to copy can reach without RL: measured 0.605 on
  # the first 200 test goals (0.615 before search ranked as upstream's Lucene). The tiny preset's model has not learned to copy (README).
  wins = sum(_play_copying_student(env, t) for t in range(200))
  assert 0.45 <= wins / 200 <= 0.8
