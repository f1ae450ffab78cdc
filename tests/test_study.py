"""Tests for launch/study.py and its modules: statistics against hand-computed values,
study.md from synthetic metrics files, argument checks, the job runner, and one shrunk
study that really trains (2 algorithms x 2 seeds) and is rerun."""

import importlib.util
import json
import math
import os
import sys

import pytest

from empg_jax import study as study_lib
from empg_jax import study_runs

import presets

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "launch_study", os.path.join(_REPO_ROOT, "launch", "study.py"))
study_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study_cli)

WEBSHOP = os.path.join(_REPO_ROOT, "configs", "webshop.py")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- statistics ----------------------------------------------------------------------------


def test_t_interval_one_two_three_seeds():
  # One seed: the value, no interval.
  assert study_lib.t_interval([0.5]) == study_lib.Interval(0.5, None, 1)
  # Two: mean 0.3, s = sqrt(0.02), sem = s / sqrt(2) = 0.1, t_{0.975, 1} = 12.7062.
  iv = study_lib.t_interval([0.2, 0.4])
  assert iv.n == 2 and iv.mean == pytest.approx(0.3)
  assert iv.half_width == pytest.approx(12.706204736 * 0.1, rel=1e-8)
  # Three: mean 0.3, s^2 = (0.04 + 0.01 + 0.09) / 2 = 0.07, t_{0.975, 2} = 4.3027.
  iv = study_lib.t_interval([0.1, 0.2, 0.6])
  assert iv.n == 3 and iv.mean == pytest.approx(0.3)
  assert iv.half_width == pytest.approx(4.302652730 * math.sqrt(0.07 / 3), rel=1e-8)
  # Missing values (None, NaN) are left out; nothing at all gives no mean.
  assert study_lib.t_interval([0.2, None, float("nan"), 0.4]) == study_lib.t_interval([0.2, 0.4])
  assert study_lib.t_interval([None]) == study_lib.Interval(None, None, 0)
  # Identical values: a zero-width interval.
  assert study_lib.t_interval([0.25, 0.25]).half_width == 0.0


def test_interval_text():
  assert study_lib.Interval(0.25, 0.125, 3).text(".3f", 3) == "0.250 ± 0.125"
  assert study_lib.Interval(0.25, None, 1).text(".3f", 1) == "0.250"
  assert study_lib.Interval(0.25, 0.1, 2).text(".2f", 3) == "0.25 ± 0.10 (n=2)"
  assert study_lib.Interval(None, None, 0).text() == "–"


def test_normalized_auc():
  # (0+0.5)/2*2 + (0.5+0.5)/2*2 = 1.5 over the span 4.
  assert study_lib.normalized_auc([0, 2, 4], [0.0, 0.5, 0.5]) == pytest.approx(0.375)
  assert study_lib.normalized_auc([4, 0, 2], [0.5, 0.0, 0.5]) == pytest.approx(0.375)
  # A missing evaluation is skipped: (0, 0) -> (4, 1) is a triangle of area 2.
  assert study_lib.normalized_auc([0, 2, 4], [0.0, float("nan"), 1.0]) == pytest.approx(0.5)
  assert study_lib.normalized_auc([3], [0.4]) == 0.4
  assert study_lib.normalized_auc([], []) is None
  assert study_lib.normalized_auc([1, 2], [None, float("nan")]) is None


def test_count_spikes():
  # Medians of the earlier values: 1, 1, 1, 1, 1 -> 4 and 10 exceed 3x.
  assert study_lib.count_spikes([1, 1, 4, 1, 10, 2]) == 2
  assert study_lib.count_spikes([1, 3]) == 0          # exactly 3x is not a spike
  assert study_lib.count_spikes([0, 0, 5]) == 0       # KL off: a zero median counts none
  assert study_lib.count_spikes([1, float("nan"), 3.5]) == 1
  assert study_lib.count_spikes([2.0]) == 0


def test_parse_eval_key():
  p = study_lib.parse_eval_key
  assert p("eval/success_rate") == ("eval", "success_rate", None)
  assert p("eval/score") == ("eval", "score", None)
  assert p("eval/success_rate/pick_and_place") == ("eval", "success_rate", "pick_and_place")
  assert p("eval/in_domain/success_rate") == ("eval/in_domain", "success_rate", None)
  assert p("eval/in_domain/score") == ("eval/in_domain", "score", None)
  assert p("eval/in_domain/success_rate/nq") == ("eval/in_domain", "success_rate", "nq")
  assert p("train/success_rate") is None and p("eval/episode_length") is None


def _series(points):
  """{key: {iteration: value}} -> the (iterations, values) form of plot._series."""
  return {k: (sorted(v), [float("nan") if v[s] is None else v[s] for s in sorted(v)])
          for k, v in points.items()}


def test_summarize_run_with_missing_evals_and_splits():
  s = _series({
      "eval/a/success_rate": {0: 0.25, 2: 0.5, 4: 0.75},
      "eval/a/score": {0: 1.0, 2: 2.0, 4: 3.0},
      "eval/a/success_rate/x": {0: 0.0, 4: 1.0},
      "eval/b/success_rate": {2: 0.5, 4: None},   # no iteration-0 eval; the last missing
      "train/kl": {1: 0.1, 2: 0.1, 3: 0.5, 4: 0.2},
      "train/step_entropy": {1: 1.0, 2: 2.0, 3: 3.0, 4: 2.0},
  })
  out = study_lib.summarize_run(s)
  a, b = out["eval"]["eval/a"], out["eval"]["eval/b"]
  assert out["last_iteration"] == 4
  assert (a["s0_success"], a["s1_success"], a["gain"], a["s1_iteration"]) == (
      0.25, 0.75, 0.5, 4)
  assert a["auc_success"] == pytest.approx(0.5)  # (0.75 + 1.25) / 4
  assert (a["s0_score"], a["s1_score"], a["types"]) == (1.0, 3.0, {"x": 1.0})
  assert b["s0_success"] is None and b["gain"] is None
  assert (b["s1_success"], b["s1_iteration"], b["auc_success"]) == (0.5, 2, 0.5)
  assert out["kl_mean"] == pytest.approx(0.225) and out["kl_max"] == 0.5
  assert out["kl_spikes"] == 1 and out["step_entropy"] == 2.0

  # A run that never evaluated, and one that evaluated only at iteration 0.
  assert study_lib.summarize_run(_series({"train/kl": {1: 0.0}}))["eval"] == {}
  only0 = study_lib.summarize_run(_series({"eval/success_rate": {0: 0.5}}))["eval"]["eval"]
  assert only0["s0_success"] == 0.5 and only0["s1_success"] is None


def test_aggregate_and_mean_curve():
  runs = [_series({"eval/success_rate": {0: 0.0, 2: v}, "train/kl": {1: k, 2: k}})
          for v, k in ((0.2, 0.1), (0.4, 0.3))]
  agg = study_lib.aggregate([study_lib.summarize_run(r) for r in runs])
  gain = agg["eval"]["eval"]["gain"]
  assert gain.mean == pytest.approx(0.3) and gain.half_width == pytest.approx(1.27062047)
  assert agg["kl_max"] == 0.3 and agg["kl_spikes"] == 0 and agg["num_seeds"] == 2
  assert agg["step_entropy"] == study_lib.Interval(None, None, 0)
  iterations, mean, low, high = study_lib.mean_curve(runs, "eval/success_rate")
  assert iterations == [0, 2] and mean == pytest.approx([0.0, 0.3])
  assert low[0] == high[0] == 0.0 and high[1] - mean[1] == pytest.approx(1.27062047)
  # An iteration only one seed reached has no band.
  iterations, mean, low, high = study_lib.mean_curve(runs[:1], "train/kl")
  assert low == mean == high == [0.1, 0.1]


# -- study.md from synthetic metrics files ---------------------------------------------------


def _fake_run(workdir, success, kl, total_iterations=2, checkpoint=True, key="iteration"):
  """A finished run dir: metrics.jsonl (eval at 0 and 2, per-type success) + checkpoint.
  `key="step"`: the rows of a run written before the loop counter was named `iteration`."""
  os.makedirs(workdir, exist_ok=True)
  rows = [{key: 0, "eval/success_rate": success[0], "eval/score": 2 * success[0],
           "eval/success_rate/food": success[0]},
          {key: 1, "train/kl": kl[0], "train/step_entropy": 1.5},
          {key: 2, "train/kl": kl[1], "train/step_entropy": 2.5,
           "eval/success_rate": success[1], "eval/score": 2 * success[1],
           "eval/success_rate/food": success[1], "eval/success_rate/toys": None}]
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for row in rows[:total_iterations + 1]:
      f.write(json.dumps(row) + "\n")
  if checkpoint:
    os.makedirs(os.path.join(workdir, "checkpoints", str(total_iterations)))


def test_report_only_tables_from_synthetic_runs(tmp_path, capsys):
  study = tmp_path / "study"
  _fake_run(study / "grpo" / "seed0", (0.0, 0.5), (0.1, 0.5))
  _fake_run(study / "grpo" / "seed1", (0.25, 0.25), (0.1, 0.1), key="step")  # older run
  _fake_run(study / "dapo" / "seed0", (0.5, 1.0), (0.0, 0.0))
  # Unfinished: a checkpoint still being written does not count.
  _fake_run(study / "dapo" / "seed1", (0.5, 1.0), (0.0, 0.0), checkpoint=False)
  os.makedirs(study / "dapo" / "seed1" / "checkpoints" / "2.orbax-checkpoint-tmp")
  rc = study_cli.main([f"--config={WEBSHOP}:tiny", "--algorithms=grpo,dapo", "--seeds=0,1",
                       f"--workdir={study}", "--report_only", "--config.total_iterations=2"])
  assert rc == 0
  assert capsys.readouterr().out.split() == [str(study / f"study.{e}")
                                             for e in ("md", "png", "json")]
  md = (study / "study.md").read_text()
  hw = 12.706204736 * 0.125  # two seeds 0 and 0.25 (or 0.5 and 0.25): sem = 0.125
  # AUC: (0 + 0.5) / 2 and (0.25 + 0.25) / 2, both 0.25.
  assert (f"| grpo | 2 | 0.125 ± {hw:.3f} | 0.375 ± {hw:.3f} | 0.250 ± {2 * hw:.3f} | "
          f"0.250 ± 0.000 | 0.250 ± {2 * hw:.3f} | 0.750 ± {2 * hw:.3f} |") in md
  assert "| dapo | 1 | 0.500 | 1.000 | 0.500 | 0.750 | 1.000 | 2.000 |" in md
  assert "| run | food |" in md               # toys was never finite
  assert f"| grpo | 0.375 ± {hw:.3f} |" in md and "| dapo | 1.000 |" in md
  # KL: per-seed means 0.3 and 0.1; max 0.5; seed 0's 0.5 > 3 x 0.1 is one spike.
  assert f"| grpo | 2 | 0.2 ± {12.706204736 * 0.1:.3g} | 0.5 | 1 | 2 ± 0 |" in md
  assert "| dapo | 1 | 0 | 0 | 0 | 2 |" in md
  per_seed = md[md.index("## Per seed"):]
  assert "| grpo | 0 | 2 | 0.000 | 0.500 | 0.000 | 1.000 |" in per_seed
  assert "| grpo | 1 | 2 | 0.250 | 0.250 | 0.500 | 0.500 |" in per_seed
  assert "| dapo | 0 | 2 | 0.500 | 1.000 | 1.000 | 2.000 |" in per_seed
  assert "| dapo | 1 |" not in per_seed
  assert "Not finished (left out above): dapo seed 1." in md

  data = json.loads((study / "study.json").read_text())
  grpo = data["groups"][0]
  assert grpo["label"] == "grpo" and [s["seed"] for s in grpo["seeds"]] == [0, 1]
  assert grpo["stats"]["eval"]["eval"]["gain"]["mean"] == pytest.approx(0.25)
  assert grpo["stats"]["eval"]["eval"]["gain"]["ci"] == pytest.approx(2 * hw)
  assert grpo["seeds"][0]["summary"]["eval"]["eval"]["s1_success"] == 0.5
  assert data["missing"] == ["dapo seed 1"]
  with open(study / "study.png", "rb") as f:
    assert f.read(8) == _PNG_MAGIC


def test_report_for_several_eval_splits(tmp_path):
  runs = [_series({"eval/in_domain/success_rate": {0: 0.0, 1: v},
                   "eval/out_of_domain/success_rate": {0: 0.0, 1: v / 2}}) for v in (0.2, 0.4)]
  seeds = [{"seed": i, "summary": study_lib.summarize_run(r)} for i, r in enumerate(runs)]
  md = study_lib.render_markdown({"title": "T", "groups": [
      {"label": "grpo", "seeds": seeds,
       "stats": study_lib.aggregate([s["summary"] for s in seeds])}]})
  assert "## Success and score, held-out `in_domain`" in md
  assert "## Success and score, held-out `out_of_domain`" in md
  assert ("| run | seed | last iteration | in_domain S0 success | in_domain S1 success | "
          "in_domain S0 score | in_domain S1 score | out_of_domain S0 success |") in md
  assert "| grpo | 1 | 1 | 0.000 | 0.400 | – | – | 0.000 | 0.200 | – | – |" in md


# -- arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize("args,message", [
    (["--algorithms=grpo,ppo"], "unknown algorithm 'ppo'"),
    (["--algorithms=grpo,grpo"], "grpo given twice"),
    (["--seeds=0,a"], "'a' is not a non-negative integer"),
    (["--seeds=0,,1"], "without empty items"),
    (["--sweep=algo.empg.zeta"], "expected KEY=V1,V2"),
    (["--sweep=algo.empg.zetta=0,1"], "did you mean algo.empg.zeta"),
    (["--sweep=algo.empg=0,1"], "algo.empg is not a config value"),
    (["--sweep=seed=1,2"], "set by --seeds"),
    (["--sweep=algo.empg.zeta=0,a/b"], "names the run directory"),
    (["--sweep=algo.empg.use_scaling=true,maybe"], "Non-boolean argument"),
    (["--sweep=algo.empg.zeta=0,1", "--config.algo.empg.zeta=0.5"], "drop --config.algo.empg"),
    (["--config.total_iterations=two"], "invalid literal for int()"),
    (["--config.total_steps=2"],
     "--config.total_steps: config.total_steps was renamed to config.total_iterations"),
    (["--sweep=optim.warmup_steps=0,5"], "renamed to config.optim.warmup_updates"),
    (["--config.rl.group_sise=2"], "did you mean rl.group_size"),
    (["--config.seed=3"], "use --seeds"),
    (["--config.rl.group_size=1"], "group_size=1"),
    (["total_iterations=2"], "unexpected argument 'total_iterations=2'"),
    (["--parallel=0"], "--parallel=0"),
])
def test_bad_arguments_fail_before_any_run(args, message, tmp_path, capsys):
  workdir = tmp_path / "study"
  rc = study_cli.main([f"--config={WEBSHOP}:tiny", f"--workdir={workdir}", *args])
  err = capsys.readouterr().err
  assert rc == 2 and message in err, err
  assert err.startswith("study.py: error: ") and len(err.strip().splitlines()) == 1
  assert not workdir.exists()


def test_bad_config_argument(tmp_path, capsys):
  for config, message in ((f"{WEBSHOP}:tiny,dapo", f"use --config={WEBSHOP}:tiny"),
                          (f"{WEBSHOP}:huge", "Unknown config preset 'huge'"),
                          ("configs/nope.py:tiny", "is not a config file")):
    rc = study_cli.main([f"--config={config}", f"--workdir={tmp_path}/s"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err


def _plan(tmp_path, *extra):
  args, rest = study_cli.parse_args([f"--config={WEBSHOP}:tiny", f"--workdir={tmp_path}",
                                     "--seeds=0,1", *extra])
  return study_cli.make_plan(args, rest)


def test_boolean_sweep_shares_one_warm_start_per_seed(tmp_path):
  plan = _plan(tmp_path, "--algorithms=grpo_empg,dapo_empg",
               "--sweep=algo.empg.use_scaling=true,false", "--config.total_iterations=3")
  assert len(plan.runs) == 8
  run = plan.runs[1]
  assert (run.algorithm, run.sweep_value, run.seed) == ("grpo_empg", "false", 0)
  assert run.workdir == str(tmp_path / "grpo_empg" / "algo.empg.use_scaling=false" / "seed0")
  assert run.config.algo.empg.use_scaling is False and run.config.total_iterations == 3
  assert plan.runs[0].config.algo.empg.use_scaling is True
  assert plan.group_label(run) == "grpo_empg algo.empg.use_scaling=false"
  assert [b.workdir for b in plan.bootstraps] == [str(tmp_path / "bootstrap" / f"seed{s}")
                                                  for s in (0, 1)]
  for r in plan.runs:
    assert r.bootstrap is plan.bootstraps[r.seed]
    assert r.config.model.path == os.path.join(tmp_path, "bootstrap", f"seed{r.seed}",
                                               "bootstrap", "sft_model")
  cmd = plan.runs[3].command()
  assert cmd[1].endswith(os.path.join("launch", "train.py"))
  assert cmd[2] == f"--config={WEBSHOP}:tiny,dapo_empg"
  assert cmd[4:] == ["--config.total_iterations=3", "--config.algo.empg.use_scaling=false",
                     "--config.seed=0", f"--config.model.path={plan.bootstraps[0].model_path}"]
  # The warm start is built without the model path (it makes it).
  assert plan.bootstraps[0].command()[-1] == "--config.seed=0"


def test_sweep_over_a_bootstrap_setting_builds_one_warm_start_per_value(tmp_path):
  plan = _plan(tmp_path, "--algorithms=grpo,dapo", "--sweep=agent.history_length=0,1")
  assert sorted(os.path.relpath(b.workdir, tmp_path) for b in plan.bootstraps) == [
      f"bootstrap/agent.history_length={v}/seed{s}" for v in (0, 1) for s in (0, 1)]
  # A real model: no warm start at all.
  model = tmp_path / "model"
  model.mkdir()
  plan = _plan(tmp_path / "s2", "--algorithms=grpo", f"--config.model.path={model}")
  assert plan.bootstraps == [] and plan.runs[0].bootstrap is None


def test_a_run_dir_trained_with_another_config_is_refused(tmp_path, capsys):
  plan = _plan(tmp_path, "--algorithms=grpo", "--config.total_iterations=3")
  run = plan.runs[0]
  config = json.loads(run.config.to_json_best_effort())
  config["total_iterations"] = 2         # resuming a shorter run is fine
  os.makedirs(run.workdir)
  with open(os.path.join(run.workdir, "config.json"), "w") as f:
    json.dump(config, f)
  _plan(tmp_path, "--algorithms=grpo", "--config.total_iterations=3")
  config["rl"]["group_size"] = 8
  with open(os.path.join(run.workdir, "config.json"), "w") as f:
    json.dump(config, f)
  rc = study_cli.main([f"--config={WEBSHOP}:tiny", f"--workdir={tmp_path}", "--seeds=0,1",
                       "--algorithms=grpo", "--config.total_iterations=3"])
  err = capsys.readouterr().err
  assert rc == 2 and "was trained with rl.group_size=8, this study has 4" in err, err


def test_run_jobs_order_failures_and_dependencies(tmp_path):
  def job(name, code, after=()):
    return study_runs.Job(name, [sys.executable, "-c", code],
                          str(tmp_path / name / "log.txt"), list(after))
  ok = job("ok", "print('hello')")
  bad = job("bad", "import sys; print('boom'); sys.exit(3)")
  after_bad = job("after_bad", "print('never')", [bad])
  after_ok = job("after_ok", "print('then')", [ok])
  said = []
  failed = study_runs.run_jobs([ok, bad, after_bad, after_ok], 2, say=said.append,
                               poll_s=0.05)
  assert [j.name for j in failed] == ["bad", "after_bad"]
  assert (ok.status, after_ok.status, after_bad.status) == ("done", "done", "failed")
  assert "hello" in (tmp_path / "ok" / "log.txt").read_text()
  assert not (tmp_path / "after_bad").exists()
  text = "\n".join(said)
  assert "FAILED bad (exit 3)" in text and "boom" in text and "skip after_bad" in text


def test_is_finished(tmp_path):
  assert not study_runs.is_finished(str(tmp_path), 2)
  _fake_run(tmp_path / "r", (0.0, 0.0), (0.0, 0.0), total_iterations=2)
  assert study_runs.is_finished(str(tmp_path / "r"), 2)
  assert not study_runs.is_finished(str(tmp_path / "r"), 3)   # to be continued
  _fake_run(tmp_path / "old", (0.0, 0.0), (0.0, 0.0), total_iterations=2, key="step")
  assert study_runs.is_finished(str(tmp_path / "old"), 2)
  _fake_run(tmp_path / "s", (0.0, 0.0), (0.0, 0.0), total_iterations=1)
  os.makedirs(tmp_path / "s" / "checkpoints" / "2")   # checkpoint without its row
  assert not study_runs.is_finished(str(tmp_path / "s"), 2)


# -- a real study, shrunk ------------------------------------------------------------------

# The tiny WebShop preset made as small as a run can be (tests/presets.py).
SHRINK = presets.webshop_tiny_flags()


@pytest.mark.slow
def test_shrunk_study_trains_reports_and_reruns_without_training(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("EMPG_DATA_DIR", str(tmp_path / "data"))
  study = tmp_path / "study"
  argv = [f"--config={WEBSHOP}:tiny", "--algorithms=grpo,dapo_empg", "--seeds=0,1",
          f"--workdir={study}", "--parallel=2", *SHRINK]
  assert study_cli.main(argv) == 0, capsys.readouterr()
  out = capsys.readouterr().out
  assert "6 jobs to run" in out   # 2 warm starts + 4 runs

  runs = [study / a / f"seed{s}" for a in ("grpo", "dapo_empg") for s in (0, 1)]
  for run in runs:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1] and "eval/success_rate" in rows[1]
    # Trained from the study's warm start of its seed; no warm start of its own.
    seed = run.name
    with open(run / "config.json") as f:
      assert json.load(f)["model"]["path"] == str(study / "bootstrap" / seed / "bootstrap"
                                                  / "sft_model")
    assert not (run / "bootstrap").exists()
  # One warm start per seed, each built once.
  assert sorted(os.listdir(study / "bootstrap")) == ["seed0", "seed1"]
  for seed in ("seed0", "seed1"):
    log = (study / "bootstrap" / seed / "bootstrap.log").read_text()
    assert log.count("\n=== ") == 1 and log.count("SFT on ") == 1, log

  md = (study / "study.md").read_text()
  for label in ("grpo", "dapo_empg"):
    assert f"\n| {label} | 2 | " in md   # success and training tables, 2 seeds each
    for seed in (0, 1):
      assert f"\n| {label} | {seed} | 1 | " in md   # per-seed rows
  assert "Not finished" not in md
  data = json.loads((study / "study.json").read_text())
  assert [g["label"] for g in data["groups"]] == ["grpo", "dapo_empg"]
  assert all(len(g["seeds"]) == 2 for g in data["groups"])
  with open(study / "study.png", "rb") as f:
    assert f.read(8) == _PNG_MAGIC

  # Rerun: everything is finished, so nothing is started and the report is the same.
  stamps = {p: os.stat(p).st_mtime_ns for run in runs for p in
            (run / "metrics.jsonl", run / "train.log")}
  assert study_cli.main(argv) == 0
  out = capsys.readouterr().out
  assert "4 finished already, 0 jobs to run" in out and "[study] start" not in out
  assert {p: os.stat(p).st_mtime_ns for p in stamps} == stamps
  assert (study / "study.md").read_text() == md
