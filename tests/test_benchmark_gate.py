"""launch/benchmark_gate.py: the gate's checks from finished runs, by hand."""

import pytest

from tests.config_files import load_launch

gate = load_launch("benchmark_gate")


def _row(acc, fmap, vmap, det):
  return {"accuracy": acc, "capsule/f-mAP@0.5": fmap, "capsule/v-mAP@0.5": vmap,
          "capsule/v-mAP@0.2": vmap, "detection/f-mAP@0.5": det, "detection/v-mAP@0.5": det}


def test_the_gate_passes_only_when_every_check_holds():
  rows = {"full": {0: _row(0.9, 0.7, 0.6, 0.5), 1: _row(0.8, 0.7, 0.6, 0.5)},
          "round0": {0: _row(0.3, 0.4, 0.3, 0.1), 1: _row(0.3, 0.5, 0.3, 0.1)}}
  out = gate.evaluate(rows)
  checks = {c["check"]: c for c in out["checks"]}
  assert checks["full accuracy >= 0.85"]["value"] == pytest.approx(0.85)  # Mean of 0.9 and 0.8.
  assert checks["full accuracy >= 0.85"]["pass"]
  # Headroom: round 0 at 0.45 / 0.7 = 64% of full's f-mAP, 0.3 / 0.6 = 50% of its v-mAP.
  assert checks["round0 capsule/f-mAP@0.5 <= 75% of full"]["value"] == pytest.approx(0.45 / 0.7)
  assert checks["round0 capsule/v-mAP@0.5 <= 75% of full"]["value"] == pytest.approx(0.5)
  assert out["passed"]
  assert out["full"]["accuracy"]["per_seed"] == [0.9, 0.8]
  rows["round0"][1] = _row(0.3, 0.7, 0.3, 0.1)  # Round 0 now at 0.55 / 0.7 = 79% > 75%.
  out = gate.evaluate(rows)
  assert not out["passed"]
  assert [c["pass"] for c in out["checks"]] == [True, True, True, True, False, True]
  text = gate.markdown(out, [0, 1], "# gate")
  assert "| round0 capsule/f-mAP@0.5 <= 75% of full | 78.6% | FAIL |" in text
  assert "**Gate: not passed.**" in text


def test_the_gate_runs_full_supervision_and_round_0_on_validation_groups():
  runs = gate.run_commands("configs/synthetic.py", 3, "/w", 10, ["--config.train.steps=5"])
  strategy, workdir, extra = runs["full"]
  assert (strategy, workdir) == ("full", "/w/full_seed3")
  assert extra == ["--config.data.validation_groups=10", "--config.train.steps=5"]
  strategy, workdir, extra = runs["round0"]
  assert (strategy, workdir) == ("random", "/w/round0_seed3")
  assert "--config.budget.schedule=()" in extra and "--config.data.validation_groups=10" in extra
