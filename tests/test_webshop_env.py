"""WebShopEnv on the synthetic catalog: actions, transitions, limits, hostile input."""

import collections
import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

import environments
from environments.base import INFO_KEYS
from environments.webshop import catalog_generator, env as ws_env
from environments.webshop import state as st
from environments.webshop.actions import parse_action


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  # One folder for the whole session, so the catalog is generated once.
  return str(tmp_path_factory.getbasetemp() / "webshop_data")


@pytest.fixture(scope="module")
def env(data_dir):
  return environments.make("webshop", split="test", seed=0, data_dir=data_dir)


def _target_product(env):
  return env.catalog.by_asin[env.goal["asin"]]


def test_generated_catalog_meets_the_spec(env):
  products = env.catalog.products
  assert len(products) >= 1000
  assert len({p.category for p in products}) >= 10
  assert len(env.catalog.goals) >= 6000
  assert env.num_tasks() == 500
  assert sum(bool(p.options) for p in products) > 900
  assert sum(len(p.pricing) == 2 for p in products) > 100  # price ranges
  assert all(p.bullets and p.description and len(p.attributes) >= 4 for p in products)
  for goal in env.catalog.goals[:50]:
    assert goal["instruction_text"].endswith(".00 dollars")
    assert ", and price lower than " in goal["instruction_text"]


def test_train_split_is_the_rest(data_dir):
  train = environments.make("webshop", split="train", seed=0, data_dir=data_dir)
  assert train.num_tasks() == len(train.catalog.goals) - 500 >= 6000
  obs, info = train.reset(0)
  assert info["instruction"] == train.catalog.goals[500]["instruction_text"]


def test_info_keys_every_step(env):
  obs, info = env.reset(7)
  for action in ["search[anything]", "click[nothing]", env.expert_action()]:
    assert set(INFO_KEYS) <= set(info)
    assert {"available_actions", "instruction"} <= set(info)
    assert info["task_id"] == 7 and info["task_type"] == env.goal["category"]
    assert isinstance(info["task_type"], str) and info["task_type"]
    obs, reward, done, info = env.step(action)


def test_action_transitions_and_option_recording(env):
  obs, info = env.reset(0)
  goal = env.goal
  assert env.episode.page_kind == st.SEARCH
  # A click on the search page is invalid; so is clicking the search button.
  for bad in ["click[buy now]", "click[search]"]:
    obs2, _, _, info = env.step(bad)
    assert obs2 == obs and not info["valid_action"]

  query = env.expert_action()
  obs, reward, done, info = env.step(query)
  assert info["valid_action"] and env.episode.page_kind == st.RESULTS
  assert reward == 0.0 and not done
  # `< prev` is not on the first results page.
  obs2, _, _, info = env.step("click[< prev]")
  assert obs2 == obs and not info["valid_action"]

  target = goal["asin"]
  while env.episode.page_kind == st.RESULTS:
    env.step(env.expert_action())
  assert env.episode.page_kind == st.ITEM and env.episode.asin == target
  product = _target_product(env)
  name, values = next(iter(product.options.items()))
  _, _, _, info = env.step(f"click[{values[-1]}]")
  assert info["valid_action"] and env.episode.options == {name: values[-1]}
  env.step(f"click[{values[0]}]")  # re-choosing a group overwrites it
  assert env.episode.options == {name: values[0]}

  env.step("click[features]")
  assert env.episode.page_kind == st.ITEM_SUB and env.episode.sub_page == "Features"
  env.step("click[< prev]")  # sub-page -> product page, options kept
  assert env.episode.page_kind == st.ITEM and env.episode.options == {name: values[0]}
  page = env.episode.results_page
  env.step("click[< prev]")  # product page -> the same results page, options cleared
  assert env.episode.page_kind == st.RESULTS and env.episode.results_page == page
  assert env.episode.options == {} and env.episode.asin is None
  env.step("click[back to search]")
  assert env.episode.page_kind == st.SEARCH and env.episode.results == []


def _search_results_text(env, task_id, query):
  env.reset(task_id)
  return env.step(f"search[{query}]")[0]


@pytest.mark.parametrize("path", [
    [],                                                   # from the results page
    ["click[{asin}]"],                                    # from the item page
    ["click[{asin}]", "click[{option}]"],                 # ... with an option chosen
    ["click[{asin}]", "click[features]"],                 # from a sub-page
    ["click[{asin}]", "click[description]"],
])
def test_search_works_from_every_page_as_upstream(env, path):
  # Upstream's text env runs `search[...]` on any page (browser.search -> the results
  # route): page 1 of the new results, no product open, options cleared.
  expected = _search_results_text(env, 3, "dog bed")
  env.reset(3)
  env.step(env.expert_action())
  asin = env.episode.results[0].lower()
  product = env.catalog.by_asin[env.episode.results[0]]
  option = next(iter(product.options.values()), ["features"])[0]
  for step in path:
    assert env.step(step.format(asin=asin, option=option))[3]["valid_action"]
  steps = env.episode.steps
  obs, reward, done, info = env.step("search[Dog Bed]")
  assert info["valid_action"] and (reward, done) == (0.0, False)
  assert obs == expected
  ep = env.episode
  assert (ep.page_kind, ep.results_page, ep.keywords) == (st.RESULTS, 1, "dog bed")
  assert ep.asin is None and ep.sub_page is None and ep.options == {}
  assert ep.steps == steps + 1


def test_empty_search_stays_invalid_on_every_page(env):
  # Upstream does nothing for `search[]` (empty argument), and the step still counts.
  env.reset(3)
  obs = env.step(env.expert_action())[0]
  obs2, _, _, info = env.step("search[ ]")
  assert obs2 == obs and not info["valid_action"] and env.episode.steps == 2


def test_paging_ten_a_page_up_to_fifty(env):
  env.reset(1)
  obs = env.step("search[set]")[0]
  results = env.episode.results
  assert len(results) == 50
  assert "[SEP] Back to Search [SEP] Page 1 (Total results: 50) [SEP] Next > [SEP] " in obs
  seen = []
  for page in range(1, 6):
    if page > 1:
      obs = env.step("click[next >]")[0]
      assert f"Page {page} (Total results: 50) [SEP] < Prev [SEP] Next >" in obs
    assert env.episode.results_page == page
    clickables = env.step("click[nothing]")[3]["available_actions"]["clickables"]
    asins = [c for c in clickables if c.startswith("b0")]
    assert len(asins) == 10
    seen += asins
  assert seen == [a.lower() for a in results]
  # `Next >` shows on the last page too and leads to an empty page.
  obs, _, _, info = env.step("click[next >]")
  assert env.episode.results_page == 6
  assert obs.endswith("Page 6 (Total results: 50) [SEP] < Prev [SEP] Next >")
  env.step("click[< prev]")
  assert env.episode.results_page == 5


def test_buying_ends_with_reward_and_score(env):
  env.reset(2)
  done = False
  while not done:
    _, reward, done, info = env.step(env.expert_action())
  assert reward == 1.0 and info["won"] and info["score"] == 1.0
  assert info["admissible_actions"] == []
  # Steps after the end change nothing and do not raise.
  obs, reward, done, info = env.step("click[buy now]")
  assert done and reward == 0.0 and not info["valid_action"]


def test_buying_the_wrong_options_scores_below_one(env):
  task_id = next(i for i, g in enumerate(env.catalog.goals[:500]) if g["goal_options"])
  env.reset(task_id)
  while env.episode.page_kind != st.ITEM:
    env.step(env.expert_action())
  _, reward, done, info = env.step("click[buy now]")  # no options chosen
  assert done and info["score"] == reward
  assert 0.0 < reward < 1.0 and not info["won"]


@pytest.mark.parametrize("max_steps", [15, 3])
def test_step_limit(data_dir, max_steps):
  env = environments.make("webshop", split="test", seed=0, data_dir=data_dir,
                          max_steps=max_steps)
  env.reset(0)
  for i in range(1, max_steps + 1):
    _, reward, done, info = env.step("click[nothing here]")
    assert reward == 0.0 and done == (i == max_steps)
  assert not info["won"] and info["score"] == 0.0
  assert ws_env.DEFAULT_MAX_STEPS == 15


def test_parse_action_semantics():
  assert parse_action("search[Red Shoes]") == ("search", "red shoes")
  assert parse_action("Click[Buy Now]") == ("click", "buy now")
  assert parse_action("click[a[b]c]") == ("click[a", "b]c")  # upstream's greedy split
  assert parse_action("click[x] then more") == ("click", "x")
  assert parse_action("click[]")[1] is None
  assert parse_action("[x]")[1] is None
  assert parse_action("click[x\n]")[1] is None


HOSTILE = ["", " ", "click", "click[", "click]", "click[]", "[]", "search[]",
           "search[   ]", "CLICK[BACK TO SEARCH]x", "click[[[[[", "]]]][[[[",
           "click[back to search", "search[日本語の検索 🛒]", "click[\u0000]",
           "x" * 1_000_000, "[" * 200_000 + "]", "click[" + "[" * 100_000 + "]]",
           "search[" + "a " * 50_000 + "]", "\n\n\nclick[buy now]"]


@pytest.mark.parametrize("action", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_actions_never_raise(env, action):
  obs, info = env.reset(4)
  obs2, reward, done, info = env.step(action)
  assert reward == 0.0
  if not info["valid_action"]:
    assert obs2 == obs


def test_non_string_actions_are_invalid(env):
  obs, _ = env.reset(4)
  for action in [None, 5, b"click[search]", ["search[x]"]]:
    obs2, reward, done, info = env.step(action)
    assert obs2 == obs and not info["valid_action"] and reward == 0.0


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=hst.lists(hst.one_of(
    hst.text(max_size=60),
    hst.builds(lambda n, a: f"{n}[{a}]", hst.sampled_from(["click", "search", "Click"]),
               hst.text(max_size=30)),
    hst.sampled_from(["click[next >]", "click[< prev]", "click[buy now]",
                      "click[description]", "click[back to search]", "search[jar]"])),
    min_size=1, max_size=20))
def test_random_action_sequences_keep_the_invariants(env, actions):
  obs, info = env.reset(5)
  for i, action in enumerate(actions, start=1):
    before = obs
    obs, reward, done, info = env.step(action)
    assert isinstance(obs, str) and isinstance(reward, float)
    assert 0.0 <= reward <= 1.0
    if not info["valid_action"]:
      assert obs == before and reward == 0.0
    if env.episode.steps >= 15:
      assert done
    if done:
      break
    assert info["admissible_actions"][0].startswith(("search[", "click["))


def test_same_seed_and_task_give_the_same_task(tmp_path, data_dir):
  ws_env._SHARED.clear()
  fresh = environments.make("webshop", split="test", seed=0, data_dir=str(tmp_path))
  cached = environments.make("webshop", split="test", seed=0, data_dir=data_dir)
  for task_id in (0, 17, 499):
    assert fresh.reset(task_id) == cached.reset(task_id)
    for _ in range(3):
      action = fresh.expert_action()
      assert action == cached.expert_action()
      assert fresh.step(action) == cached.step(action)
  other = environments.make("webshop", split="test", seed=1, data_dir=str(tmp_path))
  assert other.reset(0)[0] != fresh.reset(0)[0]


def test_generator_is_deterministic_and_files_are_cached(tmp_path):
  a = catalog_generator.generate(seed=3, num_products=60, num_goals=200)
  b = catalog_generator.generate(seed=3, num_products=60, num_goals=200)
  assert json.dumps(a) == json.dumps(b)
  paths = catalog_generator.ensure_synthetic_files(str(tmp_path), seed=0)
  mtimes = [os.stat(p).st_mtime_ns for p in paths]
  assert catalog_generator.ensure_synthetic_files(str(tmp_path), seed=0) == paths
  assert [os.stat(p).st_mtime_ns for p in paths] == mtimes  # not rewritten
  os.remove(paths[2])
  catalog_generator.ensure_synthetic_files(str(tmp_path), seed=0)
  assert os.path.isfile(paths[2])
  leftovers = [f for f in os.listdir(os.path.dirname(paths[0])) if f.startswith(".tmp")]
  assert leftovers == []


def test_index_is_saved_and_reloaded(tmp_path):
  ws_env._SHARED.clear()
  first = environments.make("webshop", split="test", seed=0, data_dir=str(tmp_path))
  folder = catalog_generator.synthetic_dir(str(tmp_path), 0)
  index_dirs = [d for d in os.listdir(folder) if d.startswith("bm25-")]
  assert len(index_dirs) == 1
  ws_env._SHARED.clear()
  second = environments.make("webshop", split="test", seed=0, data_dir=str(tmp_path))
  goal = first.catalog.goals[0]
  assert (first.search_engine.search(goal["instruction_text"])
          == second.search_engine.search(goal["instruction_text"]))


def test_bad_constructor_and_reset_arguments(data_dir):
  with pytest.raises(ValueError, match="split"):
    environments.make("webshop", split="valid", data_dir=data_dir)
  with pytest.raises(ValueError, match="max_steps"):
    environments.make("webshop", split="test", data_dir=data_dir, max_steps=0)
  env = environments.make("webshop", split="test", data_dir=data_dir)
  with pytest.raises(RuntimeError, match="reset"):
    env.step("search[x]")
  with pytest.raises(ValueError, match="task_id"):
    env.reset(500)
  with pytest.raises(ValueError, match="task_id"):
    env.reset(-1)


def test_task_types_cover_the_categories(env):
  types = collections.Counter()
  for task_id in range(0, 500, 5):
    types[env.reset(task_id)[1]["task_type"]] += 1
  assert len(types) >= 10


def test_env_never_imports_jax(data_dir):
  # Pool workers must not import JAX (each would start a backend).
  code = ("import sys, environments; "
          f"e = environments.make('webshop', split='test', data_dir={data_dir!r}); "
          "e.reset(0); e.step(e.expert_action()); "
          "print(sorted(m for m in sys.modules if m == 'jax' or m.startswith('jax.')))")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                       text=True, check=True, timeout=120)
  assert out.stdout.strip() == "[]"


def test_damaged_index_is_rebuilt(tmp_path):
  ws_env._SHARED.clear()
  environments.make("webshop", split="test", seed=0, data_dir=str(tmp_path))
  folder = catalog_generator.synthetic_dir(str(tmp_path), 0)
  index_dir = next(os.path.join(folder, d) for d in os.listdir(folder)
                   if d.startswith("bm25-"))
  with open(os.path.join(index_dir, "asins.json"), "w") as f:
    f.write("[broken")
  ws_env._SHARED.clear()
  env = environments.make("webshop", split="test", seed=0, data_dir=str(tmp_path))
  goal = env.catalog.goals[0]
  assert goal["asin"] in env.search_engine.search(goal["name"])
  with open(os.path.join(index_dir, "asins.json")) as f:
    assert len(json.load(f)) == len(env.catalog.products)
  assert not [d for d in os.listdir(folder) if d.startswith(".tmp")]


def test_processes_racing_on_a_fresh_cache(tmp_path):
  code = ("import environments; "
          f"e = environments.make('webshop', split='test', data_dir={str(tmp_path)!r}); "
          "o, i = e.reset(3); print(e.expert_action())")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  procs = [subprocess.Popen([sys.executable, "-c", code], cwd=root, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for _ in range(3)]
  outputs = [p.communicate(timeout=120) for p in procs]
  assert [p.returncode for p in procs] == [0, 0, 0], outputs
  assert len({out for out, _ in outputs}) == 1
  folder = catalog_generator.synthetic_dir(str(tmp_path), 0)
  assert not [d for d in os.listdir(folder) if d.startswith(".tmp")]
