"""launch/compare_strategies.py: mean +- std per round over seeds, by hand."""

import json

import numpy as np

import pytest

from tests.config_files import load_launch
from tests.config_files import load_module

compare = load_launch("compare_strategies")

M = "capsule/v-mAP@0.5"


def test_aggregate_mean_and_std_per_round():
  results = {"claus": {0: [{"round": 0, "cost": 10, M: 0.2}, {"round": 1, "cost": 20, M: 0.4}],
                       1: [{"round": 0, "cost": 12, M: 0.4}, {"round": 1, "cost": 22, M: 0.8}]},
             "random": {0: [{"round": 0, "cost": 10, M: 0.1}], 1: [{"round": 0, "cost": 12, M: None}]}}
  agg = compare.aggregate(results, M)
  # claus round 0: mean(0.2, 0.4) = 0.3, population std = 0.1, mean cost 11.
  assert agg["claus"][0] == (0, 11.0, pytest.approx(0.3), pytest.approx(0.1), 2)
  assert agg["claus"][1] == (1, 21.0, pytest.approx(0.6), pytest.approx(0.2), 2)
  # A missing metric (None) is left out of the mean.
  assert agg["random"][0][2] == pytest.approx(0.1)
  table = compare.markdown(results, metrics=(M,))
  assert "| claus | 30.0 +- 10.0 (n=2, cost 11) | 60.0 +- 20.0 (n=2, cost 21) |" in table
  assert "| random | 10.0 +- 0.0 (n=2, cost 11) | - |" in table


def test_paired_difference_at_the_last_round_by_seed():
  rows = lambda *vals: [{"round": r, "cost": 10 * r, M: v} for r, v in enumerate(vals)]
  results = {"claus": {0: rows(0.1, 0.5), 1: rows(0.2, 0.3), 2: rows(0.0, 0.4)},
             "random": {0: rows(0.1, 0.2), 1: rows(0.2, 0.4), 2: rows(0.0)}}
  # Seed 2's random run stopped at round 0: only seeds 0 and 1 pair. Differences 0.2-0.5 = -0.3
  # and 0.4-0.3 = +0.1: mean -0.1, population std 0.2.
  mean, std, n, diffs = compare.paired(results, M)["random"]
  assert (mean, std, n) == (pytest.approx(-0.1), pytest.approx(0.2), 2)
  assert diffs == {0: pytest.approx(-0.3), 1: pytest.approx(0.1)}
  assert ("random - claus at the last round, paired by seed: -10.0 +- 20.0 (n=2; seeds 0 / 1: "
          "-30.0 / +10.0)") in compare.markdown(results, metrics=(M,))


def test_load_rows_reads_metrics_jsonl(tmp_path):
  (tmp_path / "metrics.jsonl").write_text(json.dumps({"round": 0, "cost": 1}) + "\n")
  assert compare.load_rows(str(tmp_path)) == [{"round": 0, "cost": 1}]
  assert compare.load_rows(str(tmp_path / "absent")) == []


def test_full_reference_percent_column_and_command():
  rows = lambda *vals: [{"round": r, "cost": 10 * r, M: v} for r, v in enumerate(vals)]
  results = {"claus": {0: rows(0.1, 0.3), 1: rows(0.2, 0.6)},
             "random": {0: rows(0.1, 0.2), 1: rows(0.2, 0.2)},
             "full": {0: [{"round": 0, "cost": 500, M: 0.6}], 1: [{"round": 0, "cost": 500, M: 0.8}]}}
  # claus: 0.3 / 0.6 = 50%, 0.6 / 0.8 = 75% -> 62.5 +- 12.5; random: 33.3% and 25% -> 29.2 +- 4.2.
  of_full = compare.percent_of_full(results, M)
  assert of_full["claus"] == (pytest.approx(62.5), pytest.approx(12.5), 2)
  assert of_full["random"] == (pytest.approx(29.1667, abs=1e-3), pytest.approx(4.1667, abs=1e-3), 2)
  # A run that has not reached the strategy's last round yet is left out, not compared early.
  results["random"][2] = rows(0.7)
  results["full"][2] = [{"round": 0, "cost": 500, M: 0.7}]
  assert compare.percent_of_full(results, M)["random"][2] == 2
  del results["random"][2], results["full"][2]
  table = compare.markdown(results, metrics=(M,))
  assert "| claus | 15.0 +- 5.0 (n=2, cost 0) | 45.0 +- 15.0 (n=2, cost 10) | 62 +- 12 (n=2) |" in table
  assert "| full | 70.0 +- 10.0 (n=2, cost 500) | - | 100 +- 0 (n=2) |" in table
  # The paired difference is still against the first strategy, never against full.
  assert "random - claus at the last round" in table and "full - claus" not in table
  cmd = compare.command("configs/synthetic.py", "full", 3, "/tmp/w", ["--config.train.steps=5"])
  assert "--config.budget.initial_frames_pct=100" in cmd and "--config.budget.schedule=()" in cmd
  assert "--config.seed=3" in cmd and cmd[-1] == "--config.train.steps=5"


def test_a_comparison_of_the_full_reference_alone_has_no_paired_line():
  results = {"full": {0: [{"round": 0, "cost": 500, M: 0.6}], 1: [{"round": 0, "cost": 500, M: 0.8}]}}
  assert compare.paired(results, M) == {}
  table = compare.markdown(results, metrics=(M,))
  assert "| full | 70.0 +- 10.0 (n=2, cost 500) |\n" in table  # No other strategy: no % column.
  assert "paired by seed" not in table


def test_tabulate_pairs_finished_runs_of_two_settings_by_seed(tmp_path):
  def write(workdir, seed, vals):
    d = tmp_path / workdir / f"claus_seed{seed}"
    d.mkdir(parents=True)
    d.joinpath("metrics.jsonl").write_text(
        "".join(json.dumps({"round": r, "cost": 10 * (r + 1), M: v}) + "\n"
                for r, v in enumerate(vals)))

  write("cold", 0, [0.1, 0.2]), write("cold", 1, [0.3, 0.4])
  write("warm", 0, [0.1, 0.5]), write("warm", 1, [0.3, 0.3])
  out = tmp_path / "table.md"
  spec = f"default={tmp_path / 'cold'},warm={tmp_path / 'warm'}"
  assert compare.main(["--strategies=claus", "--seeds=0,1", f"--tabulate={spec}",
                       f"--out={out}"]) == 0
  table = out.read_text()
  # Last round: default 0.2 and 0.4 (30.0 +- 10.0), warm 0.5 and 0.3 (40.0 +- 10.0); paired by
  # seed +0.3 and -0.1: +10.0 +- 20.0.
  assert "| default | 20.0 +- 10.0 (n=2, cost 10) | 30.0 +- 10.0 (n=2, cost 20) |" in table
  assert "| warm | 20.0 +- 10.0 (n=2, cost 10) | 40.0 +- 10.0 (n=2, cost 20) |" in table
  assert ("warm - default at the last round, paired by seed: +10.0 +- 20.0 (n=2; seeds 0 / 1: "
          "+30.0 / -10.0)") in table
  with pytest.raises(SystemExit, match="seeds \\[2\\]"):
    compare.main(["--strategies=claus", "--seeds=0,1,2", f"--tabulate={spec}"])
  with pytest.raises(SystemExit, match="one strategy"):
    compare.main(["--strategies=claus,random", f"--tabulate={spec}"])


def test_foreground_mass_reads_each_scored_round_beside_its_metric(tmp_path, capsys):
  import numpy as np

  fm = load_module("foreground_mass", "launch", "studies", "foreground_mass.py")
  f = "capsule/f-mAP@0.5"
  run = tmp_path / "run"
  # Rounds 0 and 1 scored (two shards in round 0), round 2 (the last) not scored.
  for r, shards in ((0, [{"a/mean_prob": [0.1, 0.3]}, {"b/mean_prob": [0.2]}]),
                    (1, [{"a/mean_prob": [0.4, 0.4], "a/entropy": [9.0, 9.0]}])):
    d = run / f"round_{r:03d}" / "scores"
    d.mkdir(parents=True)
    for i, shard in enumerate(shards):
      np.savez(d / f"shard_{i:04d}.npz", **{k: np.asarray(v, np.float32) for k, v in shard.items()})
  (run / "metrics.jsonl").write_text("".join(json.dumps({"round": r, f: v}) + "\n"
                                             for r, v in enumerate((0.1, 0.5, 0.7))))
  got = fm.rows(str(run), f)
  # Round 0: the mean over all three frames (0.1, 0.3, 0.2) = 0.2; round 1: 0.4 (entropy ignored).
  assert [(r["round"], round(r["foreground"], 6), r[f]) for r in got] == [(0, 0.2, 0.1),
                                                                           (1, 0.4, 0.5)]
  assert [r["round"] for r in fm.rows(str(run), f, from_round=1)] == [1]
  assert fm.main([str(run)]) == 0
  assert "| 0.4000 | 50.0 |" in capsys.readouterr().out
  with pytest.raises(SystemExit, match="metrics.jsonl is missing"):
    fm.rows(str(tmp_path / "absent"), f)


def _finished_round_0(folder, strategy, seed):
  """A workdir of the layout the main job writes, with round 0 finished."""
  r0 = folder / "round_000"
  (r0 / "scores").mkdir(parents=True)
  (r0 / "scores" / "shard_0000.npz").write_bytes(b"scores")
  for name in ("pool.json", "train.json", "eval.json", "selection.json", "latents.npy"):
    (r0 / name).write_text(name)
  (folder / "config.json").write_text(json.dumps(
      {"seed": seed, "selection": {"strategy": strategy, "k": 5}, "train": {"steps": 300}}))


def test_round_0_is_shared_from_a_finished_run_of_the_same_seed(tmp_path):
  _finished_round_0(tmp_path / "claus_seed0", "claus", 0)
  _finished_round_0(tmp_path / "full_seed1", "random", 1)  # full: another budget, never a donor
  (tmp_path / "claus_seed1" / "round_000").mkdir(parents=True)  # round 0 not finished
  (tmp_path / "claus_seed1" / "config.json").write_text("{}")
  root = str(tmp_path)
  assert compare.round0_donor(root, "random", 0) == str(tmp_path / "claus_seed0")
  assert compare.round0_donor(root, "claus", 0) is None  # its own strategy
  assert compare.round0_donor(root, "random", 1) is None
  assert compare.round0_donor(root, "full", 0) is None
  assert compare.round0_donor(str(tmp_path / "absent"), "random", 0) is None
  # ssal scores with NoiseAug: it neither takes nor gives an MC-dropout round 0.
  assert compare.round0_donor(root, "ssal", 0) is None
  _finished_round_0(tmp_path / "ssal_seed2", "ssal", 2)
  assert compare.round0_donor(root, "random", 2) is None
  cmd = compare.command("configs/synthetic.py", "ssal", 2, "/tmp/w", [])
  assert "--config.selection.strategy=ssal" in cmd and "--config.uncertainty.source=noise" in cmd

  target = tmp_path / "random_seed0"
  assert compare.share_round0(str(tmp_path / "claus_seed0"), str(target), "random")
  copied = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
  assert copied == ["config.json", "round_000/eval.json", "round_000/pool.json",
                    "round_000/scores/shard_0000.npz", "round_000/train.json", "stdout.log"]
  assert json.loads((target / "config.json").read_text()) == {
      "seed": 0, "selection": {"strategy": "random", "k": 5}, "train": {"steps": 300}}
  assert not (tmp_path / "random_seed0.partial").exists()
  # A workdir that exists (a started or finished run) is never overwritten.
  (target / "round_000" / "eval.json").write_text("mine")
  assert not compare.share_round0(str(tmp_path / "claus_seed0"), str(target), "random")
  assert (target / "round_000" / "eval.json").read_text() == "mine"


def test_share_round0_is_on_by_default_and_can_be_turned_off(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(compare, "run_one", lambda *args: calls.append(args) or 0)
  monkeypatch.setattr(compare, "plot", lambda *args: None)
  root = str(tmp_path)
  compare.main(["--config=c.py", "--strategies=random", "--seeds=0", f"--workdir={root}"])
  compare.main(["--config=c.py", "--strategies=random", "--seeds=0", f"--workdir={root}",
                "--no-share_round0"])
  assert [c[-1] for c in calls] == [root, None]


def test_donors_of_round_0_start_first_when_it_is_shared():
  jobs = [(s, k) for k in (0, 1) for s in ("full", "claus", "random")]
  assert compare.start_order(jobs, share=False) == jobs
  assert compare.start_order(jobs, share=True) == [
      ("claus", 0), ("claus", 1), ("full", 0), ("random", 0), ("full", 1), ("random", 1)]


def test_area_under_the_curve_and_the_95_interval_by_hand():
  rows = [{"round": 0, "cost": 10, M: 0.1}, {"round": 1, "cost": 20, M: 0.3},
          {"round": 2, "cost": 40, M: 0.3}]
  # Trapezoids: 10 * 0.2 + 20 * 0.3 = 8, over the 30 of cost it spans.
  assert compare.area_under_curve(rows, M) == pytest.approx(8.0 / 30.0)
  assert np.isnan(compare.area_under_curve(rows[:1], M))
  # Differences 1, 2, 3: mean 2, sample std 1, t(0.975, 2) = 4.302653 -> half-width 4.302653 / sqrt 3.
  mean, half, n = compare.interval95([1.0, 2.0, 3.0])
  assert (mean, n) == (2.0, 3) and half == pytest.approx(4.302653 / np.sqrt(3.0), rel=1e-6)
  assert compare.verdict(2.0, half) == "inside the noise" and compare.verdict(2.0, 1.0) == "ahead"
  assert compare.verdict(-2.0, 1.0) == "behind"
  other = [{"round": 0, "cost": 10, M: 0.1}, {"round": 1, "cost": 20, M: 0.1},
           {"round": 2, "cost": 40, M: 0.2}]
  results = {"claus": {0: rows, 1: rows}, "random": {0: other, 1: rows}}
  summary = compare.paired_summary(results, M)["random"]
  # Seed 0: AUC (10 * 0.1 + 20 * 0.15) / 30 - 8 / 30 = -4 / 30; last round 0.2 - 0.3.
  assert summary["auc"][3][0] == pytest.approx(-4.0 / 30.0) and summary["auc"][3][1] == 0.0
  assert summary["last"][3] == pytest.approx({0: -0.1, 1: 0.0})
  assert "area under the learning curve" in compare.markdown(results, metrics=(M,))
