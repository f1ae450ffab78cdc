"""Search QA environment: protocol, rewards, expert, managed server, failures."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import hypothesis
import pytest
from hypothesis import strategies as st

import environments
from environments.base import INFO_KEYS
from environments.search import answers, data, managed, questions
from environments.search.env import INVALID_ACTION_MESSAGE, SearchEnv, load_qa_file

REPO = Path(__file__).resolve().parents[1]
SEARCH_R1_RETRY = (
    "My previous action is invalid. If I want to search, I should put the query between "
    "<search> and </search>. If I want to give the final answer, I should put the answer "
    "between <answer> and </answer>. Let me try again.")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.getbasetemp() / "search_data"  # shared with test_search_server
  data.ensure_builtin_data(root, seed=0)
  return root


@pytest.fixture(scope="module")
def server_url(data_dir, tmp_path_factory):
  """A server of our own (explicit URL), independent of the managed one."""
  proc, url = _start_server(data.builtin_paths(data_dir).corpus_path,
                            tmp_path_factory.mktemp("srv"))
  yield url
  proc.terminate()
  proc.wait(10)


def _start_server(corpus, tmp):
  proc = subprocess.Popen(
      [sys.executable, str(REPO / "launch" / "serve_retriever.py"), "--corpus", str(corpus),
       "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  line = proc.stdout.readline()
  assert line.startswith("READY "), line
  return proc, line.split()[1]


def make(data_dir, server_url, **kw):
  return environments.make("search", data_dir=str(data_dir), server_url=server_url, **kw)


# -- answers --------------------------------------------------------------------------------
@pytest.mark.parametrize("pred,gold,em", [
    ("Paris", ["Paris"], True),
    ("  the  Euro! ", ["Euro"], True),
    ("An Apple.", ["apple"], True),
    ("Washington D.C", ["Washington D.C."], True),
    ("washington, dc", ["Washington D.C."], True),
    ("theater", ["ater"], False),          # articles only as whole words
    ("Bogota", ["Bogotá"], False),         # accents are not folded (gold carries aliases)
    ("US Dollar", ["Euro", "US Dollar"], True),
    ("Paris France", ["Paris"], False),
    ("", ["Paris"], False),
])
def test_exact_match_normalisation(pred, gold, em):
  assert answers.exact_match(pred, gold) is em


def test_f1_and_format_rewards():
  assert answers.f1_score("Paris France", ["Paris"]) == pytest.approx(2 / 3)
  assert answers.f1_score("Lyon", ["Paris"]) == 0.0
  r = lambda a, wf, hit: answers.episode_reward("em_format", a, ["Paris"], wf, hit)
  assert r("Paris", True, True) == 1.0
  assert r("Paris", False, True) == pytest.approx(0.8)
  assert r("Lyon", True, True) == pytest.approx(0.3)
  assert r("Lyon", True, False) == pytest.approx(0.2)
  assert r("Lyon", False, True) == pytest.approx(0.1)
  assert r(None, True, False) == pytest.approx(0.2) and r(None, False, True) == 0.0
  with pytest.raises(ValueError, match="reward_kind"):
    answers.episode_reward("bleu", "x", ["x"], True, True)


# Worked through Search-R1's qa_em_format.is_valid_sequence by hand (read upstream): the
# assistant text must be (think search information)* think answer, whitespace between.
T, I = "<think>t</think>", "\n\n<information>Doc 1(Title: x) y</information>\n\n"
@pytest.mark.parametrize("text,valid", [
    (f"{T}<answer> Paris </answer>", True),
    (f"\n{T}\n<answer>Paris</answer>\n", True),
    (f"{T}<search>q</search>{I}{T}<search>r</search>{I}{T}<answer>P</answer>", True),
    (f"{T}<answer></answer>", True),                            # empty blocks are fine
    ("<answer>Paris</answer>", False),                          # no <think> first
    (f"{T}<search>q</search>{I}<answer>P</answer>", False),     # no <think> before answer
    (f"{T} so: <answer>P</answer>", False),                     # text outside tags
    (f"{T}<answer>P</answer> done", False),
    (f"{T}<search>q</search>{I}", False),                       # never answered
    (f"{T}<answer>P</answer>{T}", False),                       # anything after the answer
    (f"<think><think>t</think></think><answer>P</answer>", False),
    (f"{T}<search>q</search>\nMy previous action is invalid.\n{T}<answer>P</answer>", False),
    (f"{T}<information>d</information>{T}<answer>P</answer>", False),  # not after a search
    ("", False),
])
def test_format_check_equals_search_r1(text, valid):
  assert answers.well_formed_sequence(text) is valid


def test_em_format_reward_equals_search_r1():
  gold = ["Paris"]
  r = lambda text, g=gold: answers.em_format_reward(text, g)
  hit = "\n\n<information>Doc 1(Title: Paris) capital</information>\n\n"
  miss = "\n\n<information>Doc 1(Title: Lyon) city</information>\n\n"
  assert r(f"{T}<search>q</search>{hit}{T}<answer> Paris </answer>") == 1.0
  # The case: right answer without <think> is 0.8 upstream (was 1.0 here).
  assert r("<answer> Paris </answer>") == pytest.approx(0.8)
  assert r(f"{T}<search>q</search>{hit}<answer>Paris</answer>") == pytest.approx(0.8)
  assert r(f"{T}<search>q</search>{hit}{T}<answer>Lyon</answer>") == pytest.approx(0.3)
  assert r(f"{T}<search>q</search>{miss}{T}<answer>Lyon</answer>") == pytest.approx(0.2)
  assert r(f"{T}<search>q</search>{hit}<answer>Lyon</answer>") == pytest.approx(0.1)
  # No answer: not well-formed, and upstream's answer is its prompt's last <answer>
  # block, the example "Beijing": 0.1 as a malformed wrong answer (0.8 if it is right).
  assert r(f"{T}<search>q</search>{hit}") == pytest.approx(0.1)
  assert r("no tags at all") == pytest.approx(0.1)
  assert r("no tags at all", ["beijing"]) == pytest.approx(0.8)
  # The last answer block is the answer.
  assert r(f"{T}<answer>Lyon</answer> <answer>Paris</answer>") == pytest.approx(0.8)
  # Upstream's retrieval check also reads its prompt's "<information> and </information>".
  assert r(f"{T}<search>q</search>{miss}{T}<answer>E</answer>", ["D"]) == pytest.approx(0.3)
  assert r(f"{T}<search>q</search>{miss}{T}<answer>E</answer>", ["F"]) == pytest.approx(0.2)


def test_cut_response_as_search_r1():
  assert answers.cut_response("<search>q</search>\n<answer>") == "<search>q</search>"
  assert answers.cut_response("<answer>a</answer><search>q</search>x") == \
      "<answer>a</answer><search>q</search>"
  assert answers.cut_response("<answer>a</answer>\n") == "<answer>a</answer>"
  assert answers.cut_response("no tags") == "no tags"


def test_em_format_episodes_score_the_whole_text(data_dir, server_url):
  env = make(data_dir, server_url, split="train", reward_kind="em_format")
  _, info = env.reset(0)
  gold = info["golden_answers"][0]
  env.step("<think>look</think>\n<search> x </search>")
  _, r, done, info = env.step(f"<think>found</think>\n<answer> {gold} </answer>")
  assert done and info["won"] and r == 1.0
  env.reset(0)
  env.step("<search> x </search>")   # valid action, but no <think>: 0.8 as upstream
  _, r, _, info = env.step(f"<think>found</think><answer> {gold} </answer>")
  assert info["won"] and r == pytest.approx(0.8)
  env.reset(0)
  env.step("I will search now")       # invalid output: the retry text breaks the format
  _, r, _, info = env.step(f"<think>found</think><answer> {gold} </answer>")
  assert info["won"] and r == pytest.approx(0.8)
  env.close()


def test_parse_action_takes_the_first_tag_pair():
  assert answers.parse_action("<think>hm</think><search> a b </search><answer>x</answer>") == (
      "search", "a b")
  assert answers.parse_action("<answer>\nParis\n</answer>") == ("answer", "Paris")
  assert answers.parse_action("<search>unclosed") == (None, "")
  assert answers.parse_action("<search>x</answer>") == (None, "")


_SEARCH_R1_TAG_RE = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(st.lists(st.sampled_from(
    ["<search>", "</search>", "<answer>", "</answer>", "<search", "x", " q ", "\n", "<"]),
    max_size=14).map("".join))
def test_parse_action_agrees_with_search_r1s_regex(text):
  m = _SEARCH_R1_TAG_RE.search(text)
  assert answers.parse_action(text) == ((m.group(1), m.group(2).strip()) if m else (None, ""))


def test_parse_action_is_linear_in_hostile_output():
  # 64K characters of unclosed tags: the regex rescans to the end from every opening.
  text = "<search>" * 8192
  start = time.perf_counter()
  assert answers.parse_action(text) == (None, "")
  assert answers.parse_action(text + "<answer>a</answer>") == ("answer", "a")
  assert time.perf_counter() - start < 0.5


# -- protocol -------------------------------------------------------------------------------
def test_episode_protocol_and_info(data_dir, server_url):
  env = make(data_dir, server_url, split="test_in_domain")
  tid = next(i for i, q in enumerate(env.questions) if q["template"] == "capital_of_country")
  q = env.questions[tid]
  obs, info = env.reset(tid)
  assert obs == q["question"]
  assert set(INFO_KEYS) <= set(info) and info["admissible_actions"] == []
  assert info["task_type"] == "capital_of_country" and info["golden_answers"] == q["golden_answers"]
  country = q["slots"]["country"]
  obs, r, done, info = env.step(f"<think>look it up</think>\n<search> capital of {country} </search>")
  assert (r, done, info["valid_action"], info["env_error"]) == (0.0, False, True, False)
  assert obs.startswith("<information>Doc 1(Title: \"") and obs.endswith("</information>")
  assert obs.count("\nDoc ") == 2 and "\nDoc 2(Title: " in obs and "\nDoc 3(Title: " in obs
  obs, r, done, info = env.step(f"<answer> {q['golden_answers'][0]} </answer>")
  assert (obs, r, done, info["won"], info["score"]) == ("", 1.0, True, True, 1.0)
  # Wrong answer: reward 0, not won.
  env.reset(tid)
  _, r, done, info = env.step("<answer> Atlantis </answer>")
  assert (r, done, info["won"]) == (0.0, True, False)
  env.close()
  env.close()  # safe twice


def test_invalid_output_gets_search_r1_retry_message(data_dir, server_url):
  assert INVALID_ACTION_MESSAGE == SEARCH_R1_RETRY
  env = make(data_dir, server_url, split="train")
  env.reset(0)
  obs, r, done, info = env.step("I think the answer is Paris.")
  assert obs == SEARCH_R1_RETRY and info["valid_action"] is False and not done and r == 0.0
  obs, _, done, info = env.step(12345)  # not even a string: still no exception
  assert obs == SEARCH_R1_RETRY and not done
  env.close()


def test_unsendable_queries_are_invalid_actions_not_void_episodes(data_dir, server_url):
  env = make(data_dir, server_url, split="train")
  env.reset(0)
  for query in ("capital \ud800 of", "q" * 8193):  # a lone surrogate; over the server's limit
    obs, r, done, info = env.step(f"<search> {query} </search>")
    assert (obs, r, done) == (SEARCH_R1_RETRY, 0.0, False)
    assert info["valid_action"] is False and info["env_error"] is False
  obs, _, done, info = env.step("<search> capital of France </search>")
  assert obs.startswith("<information>") and info["valid_action"] and not done
  env.close()


def test_empty_tags_are_valid_actions_as_in_search_r1(data_dir, server_url):
  # Search-R1's postprocess_predictions: any <search>/<answer> pair is a valid action and
  # its stripped content, "" included, is the query or the answer.
  assert answers.parse_action("<search></search>") == ("search", "")
  assert answers.parse_action("<think>x</think><search>\n  </search>") == ("search", "")
  env = make(data_dir, server_url, split="train")
  env.reset(0)
  for text in ("<search></search>", "<search>  \n </search>"):
    obs, r, done, info = env.step(text)
    assert obs.startswith("<information>") and obs.endswith("</information>"), obs
    assert (r, done, info["valid_action"], info["env_error"]) == (0.0, False, True, False)
    assert info["action_kind"] == "search"
  obs, r, done, info = env.step("<answer></answer>")
  assert done and info["valid_action"] and info["answer"] == "" and r == 0.0
  env.close()


def test_four_turn_limit(data_dir, server_url):
  env = make(data_dir, server_url, split="train")
  env.reset(1)
  dones = [env.step("<search> Paris </search>")[2] for _ in range(4)]
  assert dones == [False, False, False, True]
  assert env.step("<answer> x </answer>")[2] is True  # after the end: inert
  env.reset(1)
  results = [env.step("no tags") for _ in range(4)]
  assert [d for _, _, d, _ in results] == [False, False, False, True]
  assert results[-1][1] == 0.0 and results[-1][3]["won"] is False
  env.close()
  env2 = make(data_dir, server_url, split="train", max_turns=2, reward_kind="em_format")
  _, info = env2.reset(0)
  env2.step("<think>x</think><search> a </search>")
  _, r, done, _ = env2.step("<think>y</think><search> b </search>")
  # Unanswered: Search-R1's format check wants a final <answer>, so it is not
  # well-formed, and it takes its prompt's example answer "Beijing": 0.1 (this used to
  # give the 0.2 structure credit).
  assert done and r == pytest.approx(0.1)
  env2.close()


def test_bad_arguments_are_clear_errors(data_dir, server_url):
  with pytest.raises(ValueError, match="split"):
    make(data_dir, server_url, split="dev")
  with pytest.raises(ValueError, match="reward_kind"):
    make(data_dir, server_url, reward_kind="bleu")
  with pytest.raises(ValueError, match="topk"):
    make(data_dir, server_url, topk=0)
  env = make(data_dir, server_url)
  with pytest.raises(ValueError, match="task_id"):
    env.reset(env.num_tasks())
  env.close()


# -- data -----------------------------------------------------------------------------------
def test_splits_sizes_and_templates(data_dir):
  path = data.builtin_paths(data_dir).questions_path
  rows = [json.loads(l) for l in path.read_text().splitlines()]
  assert len(rows) >= 2000
  by_split = {s: [r for r in rows if r["split"] == s] for s in questions.SPLITS}
  assert all(len(v) >= 200 for v in by_split.values())
  train_t = {r["template"] for r in by_split["train"]}
  assert {r["template"] for r in by_split["test_in_domain"]} <= train_t
  assert not {r["template"] for r in by_split["test_out_of_domain"]} & train_t
  assert not {r["question"] for r in by_split["train"]} & {
      r["question"] for r in by_split["test_in_domain"]}
  assert max(r["hops"] for r in rows) == 3 and sum(r["hops"] > 1 for r in rows) > 1000


def test_questions_are_deterministic_from_the_seed(data_dir):
  from environments.search import world

  class AnyPassage(str):  # stands for a top 3 that holds every evidence passage
    def startswith(self, *args):
      return True

  search = lambda qs: [[AnyPassage()] for _ in qs]
  w = world.build_world()
  a, _ = questions.generate_questions(w, 5, search)
  b, _ = questions.generate_questions(world.build_world(), 5, search)
  c, _ = questions.generate_questions(w, 6, search)
  assert a == b and a != c


def test_qa_file_jsonl_and_parquet(tmp_path, data_dir, server_url):
  f = tmp_path / "nq.jsonl"
  f.write_text(
      json.dumps({"id": "a", "question": "who wrote hamlet", "golden_answers": ["Shakespeare"],
                  "data_source": "nq"}) + "\n" +
      json.dumps({"question": "capital of France?", "reward_model": {
          "ground_truth": {"target": ["Paris"]}, "style": "rule"}}) + "\n")
  rows = load_qa_file(f)
  assert rows[0]["question"] == "who wrote hamlet?" and rows[1]["golden_answers"] == ["Paris"]
  env = make(data_dir, server_url, qa_file=str(f))
  obs, info = env.reset(1)
  assert obs == "capital of France?" and info["task_type"] == "qa"
  assert env.step("<answer>paris</answer>")[1] == 1.0
  env.close()
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"question": "x"}) + "\n")
  with pytest.raises(ValueError, match="golden_answers"):
    load_qa_file(bad)
  pq = tmp_path / "nq.parquet"
  pq.write_bytes(b"PAR1")
  try:
    import pyarrow  # noqa: F401
  except ImportError:
    with pytest.raises(ImportError, match="pyarrow"):
      load_qa_file(pq)


# -- expert ---------------------------------------------------------------------------------
def run_expert(env, task_ids):
  won = fallback = 0
  for t in task_ids:
    env.reset(t)
    used, done = False, False
    while not done:
      action = env.expert_action()
      used |= env.expert_used_fallback
      _, _, done, info = env.step(action)
    assert not info["env_error"]
    won += info["won"] and not used
    fallback += used
  return won / len(task_ids), fallback


@pytest.mark.parametrize("split", questions.SPLITS)
def test_expert_reaches_target_through_managed_server(data_dir, split):
  env = environments.make("search", split=split, data_dir=str(data_dir))  # starts/reuses
  n = env.num_tasks()
  ids = list(range(0, n, max(1, n // 150)))  # ~150 questions spread over the split
  em_read, fallbacks = run_expert(env, ids)
  print(f"{split}: expert EM from reading {em_read:.3f} on {len(ids)} (fallbacks {fallbacks})")
  assert em_read >= 0.95
  # Multi-hop questions take one search per hop.
  hop_q = next(i for i, q in enumerate(env.questions) if q["hops"] >= 2)
  env.reset(hop_q)
  searches = 0
  while True:
    a = env.expert_action()
    searches += a.startswith("<search>")
    if env.step(a)[2]:
      break
  assert searches == env.questions[hop_q]["hops"]
  env.close()


def test_managed_server_is_shared_and_stopped_at_close(data_dir):
  a = environments.make("search", split="train", data_dir=str(data_dir))
  b = environments.make("search", split="test_in_domain", data_dir=str(data_dir))
  assert a.server_url == b.server_url
  state = json.loads((data.builtin_paths(data_dir).server_dir / "state.json").read_text())
  a.close()
  assert managed.healthy(b.server_url)  # b still holds it
  b.close()
  deadline = time.monotonic() + 10
  while time.monotonic() < deadline and managed._pid_alive(state["pid"]):  # pylint: disable=protected-access
    time.sleep(0.05)
  assert not managed._pid_alive(state["pid"])  # pylint: disable=protected-access
  assert not managed.healthy(b.server_url, timeout_s=0.5)


# -- failures -------------------------------------------------------------------------------
def test_killed_server_mid_episode_gives_env_error_in_process(data_dir, tmp_path):
  proc, url = _start_server(data.builtin_paths(data_dir).corpus_path, tmp_path)
  env = make(data_dir, url, split="train", timeout_s=0.5, max_retries=2, retry_backoff_s=0.05)
  env.reset(0)
  assert not env.step(env.expert_action())[3]["env_error"]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  t0 = time.monotonic()
  obs, r, done, info = env.step("<search> anything </search>")
  assert info["env_error"] and done and r == 0.0 and "Search failed" in obs
  assert time.monotonic() - t0 < 5
  env.close()


@pytest.mark.slow
def test_killed_server_mid_episode_gives_env_error_through_pool(data_dir, tmp_path):
  proc, url = _start_server(data.builtin_paths(data_dir).corpus_path, tmp_path)
  kwargs = {"split": "train", "data_dir": str(data_dir), "server_url": url,
            "timeout_s": 0.5, "max_retries": 1, "retry_backoff_s": 0.05}
  with environments.EnvPool("search", num_envs=4, num_workers=2, env_kwargs=kwargs,
                            step_timeout_s=20) as pool:
    pool.reset(range(4), [0, 1, 2, 3])
    first = pool.step(pool.expert_actions(range(4)))
    assert not any(i.get("env_error", False) for _, _, _, i in first.values())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    live = [e for e, (_, _, d, _) in first.items() if not d]
    second = pool.step({e: "<search> capital of Peru </search>" for e in live})
    assert live and all(second[e][3].get("env_error") and second[e][2] for e in live)


@pytest.mark.slow
def test_pool_workers_share_one_managed_server(tmp_path_factory, data_dir):
  kwargs = {"split": "test_out_of_domain", "data_dir": str(data_dir)}
  server_dir = data.builtin_paths(data_dir).server_dir
  with environments.EnvPool("search", num_envs=4, num_workers=2, env_kwargs=kwargs,
                            step_timeout_s=30) as pool:
    pool.reset(range(4), [0, 1, 2, 3])
    done = {}
    for _ in range(4):
      live = [e for e in range(4) if e not in done]
      if not live:
        break
      for e, (_, _, d, info) in pool.step(pool.expert_actions(live)).items():
        if d:
          done[e] = info
    assert len(done) == 4 and all(i["won"] and not i.get("env_error") for i in done.values())
    leases = managed.live_leases(server_dir / "leases")
    assert set(pool.worker_pids()) <= set(leases)
    state = json.loads((server_dir / "state.json").read_text())
  # Workers gone -> their leases die -> the server stops by itself.
  deadline = time.monotonic() + 15
  while time.monotonic() < deadline and managed._pid_alive(state["pid"]):  # pylint: disable=protected-access
    time.sleep(0.1)
  assert not managed._pid_alive(state["pid"])  # pylint: disable=protected-access
