"""Round budgets from the cumulative (A%, V%) schedule (paper Sec. 3.3, Table 1)."""

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from claus_jax import configlib
from claus_jax.selection import budget as B


def _params(**budget):
  c = configlib.base_config()
  for k, v in budget.items():
    setattr(c.budget, k, v)
  return B.BudgetParams.from_section(c.budget)


def test_params_read_the_budget_section():
  c = configlib.base_config()
  c.budget.max_rounds = 3
  c.budget.cost_video = 2
  schedule = tuple((float(a), float(v)) for a, v in configlib.JHMDB_SCHEDULE[1:])
  want = B.BudgetParams(initial_videos_pct=5.0, initial_frames_pct=0.15, schedule=schedule,
                        max_rounds=3, cost_video=2.0, cost_frame=1.0)
  assert B.BudgetParams.from_section(c.budget) == want
  c.budget.max_rounds = None  # Read as 0: the whole schedule.
  assert B.num_rounds(B.BudgetParams.from_section(c.budget)) == len(configlib.JHMDB_SCHEDULE) - 1


def test_jhmdb_schedule_arithmetic():
  p = _params()  # J-HMDB defaults: round 0 (0.15%, 5%), then (0.30, 10), (0.45, 15), ...
  n, f = 660, 22000
  # Round 0: round(5/100*660) = 33 videos, round(0.15/100*22000) = 33 frames.
  assert B.round_targets(p, 0, n, f) == (33, 33)
  # Round 1: round(10/100*660) = 66, round(0.30/100*22000) = 66.
  assert B.round_targets(p, 1, n, f) == (66, 66)
  # Round 8 (the last of the 8 later rounds, (5.40, 80)): round(.8*660) = 528,
  # round(.054*22000) = 1188.
  assert B.round_targets(p, 8, n, f) == (528, 1188)
  assert B.num_rounds(p) == 8
  rb = B.round_budget(p, 1, n, f, labelled_videos=33, labelled_frames=33)
  assert rb == B.RoundBudget(round=1, num_videos=66, num_frames=66, budget_video=33.0,
                             budget_frame=33.0)
  assert rb.total == 66.0


def test_costs_scale_budgets():
  p = _params(cost_video=2.0, cost_frame=0.5)
  # Round 2 of J-HMDB: round(.15*660) = 99 videos, round(.0045*22000) = 99 frames.
  rb = B.round_budget(p, 2, 660, 22000, labelled_videos=60, labelled_frames=70)
  assert rb.budget_video == (99 - 60) * 2.0
  assert rb.budget_frame == (99 - 70) * 0.5
  assert B.max_new_videos(rb, p) == 39
  assert B.max_new_frames(rb, p) == 29
  assert B.selection_cost(3, 10, p) == 3 * 2.0 + 10 * 0.5
  assert B.within_budget(39, 29, rb, p)
  assert not B.within_budget(40, 29, rb, p)
  assert not B.within_budget(39, 30, rb, p)


def test_float_costs_do_not_lose_a_unit():
  # 0.1 * 3 = 0.30000000000000004 and 0.7 / 0.1 = 6.999999999999999: both must count fully.
  p = _params(cost_video=0.1, cost_frame=0.1)
  rb = B.RoundBudget(round=1, num_videos=7, num_frames=3, budget_video=0.7, budget_frame=3 * 0.1)
  assert B.max_new_videos(rb, p) == 7
  assert B.max_new_frames(rb, p) == 3


def test_already_over_target_gives_zero():
  rb = B.round_budget(_params(), 1, 660, 22000, labelled_videos=80, labelled_frames=500)
  assert rb.budget_video == 0 and rb.budget_frame == 0


def test_rounding_and_caps():
  p = _params(initial_videos_pct=5.0, initial_frames_pct=1.0,
              schedule=((2.0, 15.0), (2.0, 25.0), (200.0 / 3, 100.0)))
  # N = 10: round 0 is 0.5 videos -> at least 1 (selection.initial_video_count).
  assert B.round_targets(p, 0, 10, 100) == (1, 1)
  # 1.5 -> 2 and 2.5 -> 2: Python's round (half to even), the same rule as configlib.
  assert B.round_targets(p, 1, 10, 100)[0] == 2
  assert B.round_targets(p, 2, 10, 100)[0] == 2
  # 66.67% of 100 frames = 67; 100% of videos = 10.
  assert B.round_targets(p, 3, 10, 100) == (10, 67)


def test_max_rounds_caps_the_schedule():
  p = _params(max_rounds=2)
  assert B.num_rounds(p) == 2
  assert B.cumulative_schedule(p) == [(0.15, 5.0), (0.30, 10.0), (0.45, 15.0)]
  with pytest.raises(ValueError, match="outside the schedule"):
    B.round_targets(p, 3, 660, 22000)
  with pytest.raises(ValueError, match="cost"):
    B.affordable(1.0, 0.0)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 200), st.sampled_from([0.5, 1.0, 3.0]),
       st.sampled_from([0.25, 1.0, 2.0]))
def test_budgets_add_up_over_the_schedule(n, mean_len, cv, cf):
  """Buying exactly the affordable amount each round reaches every cumulative target."""
  p = _params(cost_video=cv, cost_frame=cf, schedule=configlib.UCF101_24_SCHEDULE[1:],
              initial_videos_pct=5.0, initial_frames_pct=0.25)
  f = n * mean_len
  lv = lf = 0
  for r in range(B.num_rounds(p) + 1):
    rb = B.round_budget(p, r, n, f, lv, lf)
    dv, df = B.max_new_videos(rb, p), B.max_new_frames(rb, p)
    assert B.selection_cost(dv, df, p) <= rb.total + 1e-9
    # Targets can dip below the labelled count only through round 0's "at least one video".
    assert lv + dv == max(rb.num_videos, lv) and lf + df == max(rb.num_frames, lf)
    lv, lf = lv + dv, lf + df
    assert lv <= n and lf <= f


@pytest.mark.parametrize("section,field,value", [
    ("budget", "cost_video", 0.0), ("budget", "cost_frame", -1.0), ("budget", "max_rounds", -1),
    ("selection", "proximity_sigma", 0.0), ("selection", "nms_radius", -1),
    ("selection", "entropy_skip", -2)])
def test_config_validation_names_the_field(section, field, value):
  c = configlib.base_config()
  setattr(getattr(c, section), field, value)
  with pytest.raises(configlib.ConfigError, match=f"{section}.{field}"):
    configlib.validate(c)
