"""Active-learning selection: intra-sample frames, inter-sample strategies and round budgets."""

from claus_jax.selection.budget import BudgetParams
from claus_jax.selection.budget import RoundBudget
from claus_jax.selection.budget import cumulative_schedule
from claus_jax.selection.budget import initial_frame_count
from claus_jax.selection.budget import initial_video_count
from claus_jax.selection.budget import num_rounds
from claus_jax.selection.budget import round_budget
from claus_jax.selection.budget import round_targets
from claus_jax.selection.budget import selection_cost
from claus_jax.selection.budget import within_budget
from claus_jax.selection.frames import proximity_penalty
from claus_jax.selection.frames import select_frames
from claus_jax.selection.frames import video_score
from claus_jax.selection.params import SelectionParams
from claus_jax.selection.strategies import SCORE_FREE
from claus_jax.selection.strategies import STRATEGIES
from claus_jax.selection.strategies import Pick
from claus_jax.selection.strategies import Selection
from claus_jax.selection.strategies import VideoCandidate
from claus_jax.selection.strategies import cluster_budgets
from claus_jax.selection.strategies import select
from claus_jax.selection.strategies import video_candidates
