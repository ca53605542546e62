"""Annotation budgets per active-learning round (paper Sec. 3.3, Table 1).

The schedule is cumulative: round 0 labels ``initial_videos_pct`` of the pool's N videos and
annotates ``initial_frames_pct`` of its F frames (at random); round r >= 1 raises the totals to the
r-th ``(A%, V%)`` pair of ``config.budget.schedule``. Targets are rounded with Python's ``round``
(half to even, as :func:`initial_video_count` does; round 0 uses those two
functions, so at least one video is labelled) and capped at the pool. A round's budgets pay only
for what is still missing:

    B_v = max(0, videos_target_r - labelled videos) * C_v
    B_f = max(0, frames_target_r - labelled frames) * C_f

A selection fits when ``new videos * C_v <= B_v`` and ``new frames * C_f <= B_f``. Spending less
(e.g. inter-only, whose whole videos exhaust B_f early) simply leaves more for the next round, since
the next targets are cumulative.
"""

from __future__ import annotations

import dataclasses
import math


# Budgets are products of counts and float costs; this absorbs the rounding of B / C.
_EPS = 1e-9


@dataclasses.dataclass(frozen=True)
class BudgetParams:
  """Every setting of ``config.budget`` the budget arithmetic reads (see configlib.base_config).

  The defaults are base_config's round 0 and costs with no later round (the paper schedules are
  configlib's).

  Attributes:
    initial_videos_pct: V% of round 0 (``budget.initial_videos_pct``).
    initial_frames_pct: A% of round 0 (``budget.initial_frames_pct``).
    schedule: cumulative ``(A%, V%)`` of rounds 1..R (``budget.schedule``).
    max_rounds: > 0 keeps only that many selection rounds after round 0 (``budget.max_rounds``).
    cost_video: C_v, the cost of one video label (``budget.cost_video``).
    cost_frame: C_f, the cost of one frame annotation (``budget.cost_frame``).
  """

  initial_videos_pct: float = 5.0
  initial_frames_pct: float = 0.15
  schedule: tuple[tuple[float, float], ...] = ()
  max_rounds: int = 0
  cost_video: float = 1.0
  cost_frame: float = 1.0

  @classmethod
  def from_section(cls, b) -> BudgetParams:
    """The settings of ``b`` (``config.budget``), read once."""
    return cls(initial_videos_pct=float(b.initial_videos_pct),
               initial_frames_pct=float(b.initial_frames_pct),
               schedule=tuple((float(a), float(v)) for a, v in b.schedule),
               max_rounds=int(b.max_rounds or 0), cost_video=float(b.cost_video),
               cost_frame=float(b.cost_frame))


@dataclasses.dataclass(frozen=True)
class RoundBudget:
  """What one round may buy.

  Attributes:
    round: 0 for the initial random pool, r >= 1 for the r-th selection round.
    num_videos: cumulative target of videos with a video label after this round.
    num_frames: cumulative target of annotated frames after this round.
    budget_video: B_v, in cost units (new video labels times C_v).
    budget_frame: B_f, in cost units (new frame annotations times C_f).
  """

  round: int
  num_videos: int
  num_frames: int
  budget_video: float
  budget_frame: float

  @property
  def total(self) -> float:
    """B = B_v + B_f."""
    return self.budget_video + self.budget_frame


def cumulative_schedule(params: BudgetParams) -> list[tuple[float, float]]:
  """[(A%, V%)] for rounds 0..R: round 0 from the initial percents, then the schedule.

  ``max_rounds`` > 0 keeps only that many selection rounds after round 0.
  """
  rounds = list(params.schedule)
  if params.max_rounds > 0:
    rounds = rounds[:params.max_rounds]
  return [(params.initial_frames_pct, params.initial_videos_pct)] + rounds


def num_rounds(params: BudgetParams) -> int:
  """Selection rounds after round 0 (the length of the capped schedule)."""
  return len(cumulative_schedule(params)) - 1


def initial_video_count(params: BudgetParams, num_train_videos: int) -> int:
  """Round 0's labelled videos: ``budget.initial_videos_pct`` of the pool, at least one."""
  return max(1, int(round(params.initial_videos_pct / 100.0 * num_train_videos)))


def initial_frame_count(params: BudgetParams, num_train_frames: int) -> int:
  """Round 0's annotated frames: ``budget.initial_frames_pct`` of the pool's frames."""
  return int(round(params.initial_frames_pct / 100.0 * num_train_frames))


def round_targets(params: BudgetParams, round_index: int, total_videos: int,
                  total_frames: int) -> tuple[int, int]:
  """(videos_target, frames_target) after ``round_index``: cumulative counts, capped at the pool."""
  sched = cumulative_schedule(params)
  if not 0 <= round_index < len(sched):
    raise ValueError(f"round {round_index} is outside the schedule (rounds 0..{len(sched) - 1}; "
                     f"config.budget.schedule has {len(params.schedule)} entries, "
                     f"max_rounds={params.max_rounds}).")
  if round_index == 0:
    videos = initial_video_count(params, total_videos)
    frames = initial_frame_count(params, total_frames)
  else:
    a_pct, v_pct = sched[round_index]
    videos = int(round(v_pct / 100.0 * total_videos))
    frames = int(round(a_pct / 100.0 * total_frames))
  return min(videos, total_videos), min(frames, total_frames)


def round_budget(params: BudgetParams, round_index: int, total_videos: int, total_frames: int,
                 labelled_videos: int, labelled_frames: int) -> RoundBudget:
  """The budgets B_v, B_f of one round given what is labelled already.

  Args:
    params: the ``budget`` settings (:meth:`BudgetParams.from_section`).
    round_index: 0 (initial pool) or 1..num_rounds(params).
    total_videos: N, videos in the pool (train split).
    total_frames: F, frames over all pool videos.
    labelled_videos: videos carrying a video label before this round.
    labelled_frames: annotated frames before this round.
  """
  videos, frames = round_targets(params, round_index, total_videos, total_frames)
  return RoundBudget(
      round=round_index, num_videos=videos, num_frames=frames,
      budget_video=max(0, videos - labelled_videos) * params.cost_video,
      budget_frame=max(0, frames - labelled_frames) * params.cost_frame)


def affordable(budget_units: float, unit_cost: float) -> int:
  """How many items of ``unit_cost`` fit in ``budget_units`` (0 if the cost is not positive)."""
  if unit_cost <= 0:
    raise ValueError(f"a unit cost must be positive, got {unit_cost}; fix config.budget.cost_video "
                     "/ cost_frame.")
  return max(0, int(math.floor(budget_units / unit_cost + _EPS)))


def max_new_videos(budget: RoundBudget, params: BudgetParams) -> int:
  """floor(B_v / C_v): new video labels the round can pay for."""
  return affordable(budget.budget_video, params.cost_video)


def max_new_frames(budget: RoundBudget, params: BudgetParams) -> int:
  """floor(B_f / C_f): new frame annotations the round can pay for."""
  return affordable(budget.budget_frame, params.cost_frame)


def selection_cost(num_new_videos: int, num_new_frames: int, params: BudgetParams) -> float:
  """C_v * new video labels + C_f * new frame annotations."""
  return num_new_videos * params.cost_video + num_new_frames * params.cost_frame


def within_budget(num_new_videos: int, num_new_frames: int, budget: RoundBudget,
                  params: BudgetParams) -> bool:
  """True when both parts fit: new videos * C_v <= B_v and new frames * C_f <= B_f."""
  return (num_new_videos <= max_new_videos(budget, params)
          and num_new_frames <= max_new_frames(budget, params))
