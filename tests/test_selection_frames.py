"""Intra-sample frame selection: hand-worked examples and properties over random inputs."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from claus_jax import configlib
from claus_jax.selection import frames as F


def _params(**selection):
  c = configlib.base_config()
  for k, v in selection.items():
    setattr(c.selection, k, v)
  return F.SelectionParams.from_config(c)


def test_proximity_penalty_values():
  # g(d) = exp(-d^2 / (2 sigma^2)) with sigma = 8/3, i.e. exp(-9 d^2 / 128).
  g = F.proximity_penalty(np.arange(5))
  np.testing.assert_allclose(g, [1.0, np.exp(-9 / 128), np.exp(-36 / 128), np.exp(-81 / 128),
                                 np.exp(-144 / 128)], rtol=1e-12)
  # Same as the ratio of Gaussian densities N(d; 0, s) / N(0; 0, s).
  s = 8.0 / 3.0
  pdf = lambda d: np.exp(-d * d / (2 * s * s)) / (s * np.sqrt(2 * np.pi))
  np.testing.assert_allclose(F.proximity_penalty(3.0), pdf(3.0) / pdf(0.0), rtol=1e-12)


def test_uncertainty_hand_worked():
  # T = 10, frame 0 labelled, k = 3, sigma = 8/3, nms_radius = 4.
  # g(1..9) = .932102 .754840 .531096 .324652 .172422 .079560 .031895 .011109 .003362
  scores = [0.0, 2.0, 0.5, 0.6, 1.8, 1.7, 0.2, 0.3, 1.0, 0.9]
  # Start: score - g(distance to frame 0):
  #   t1 2.0-.932102=1.067898  t2 .5-.754840=-.254840  t3 .6-.531096=.068904
  #   t4 1.8-.324652=1.475348  t5 1.7-.172422=1.527578 t6 .2-.079560=.120440
  #   t7 .3-.031895=.268105    t8 1.0-.011109=.988891  t9 .9-.003362=.896638
  # Pick 1: t5 (1.527578). Subtract g(|j-5|) for j in 1..9:
  #   t1 1.067898-.324652=.743246  t4 1.475348-.932102=.543246
  #   t8 .988891-.531096=.457795   t9 .896638-.324652=.571986  (t2, t3, t6, t7 go negative)
  # Pick 2: t1 (.743246). Subtract around 1: t4 .543246-.531096=.012150.
  # Pick 3: t9 (.571986) beats t8 (.457795) and t4 (.012150).
  picks = F.select_frames(scores, [0], 3, "uncertainty", params=_params())
  assert picks.tolist() == [1, 5, 9]
  # Without the penalty the three best raw scores are frames 1, 4, 5.
  assert F.select_frames(scores, [0], 3, "top").tolist() == [1, 4, 5]
  # Eq. 1 video score: mean raw score of the picks = (2.0 + 1.7 + 0.9) / 3.
  assert F.video_score(scores, picks) == pytest.approx((2.0 + 1.7 + 0.9) / 3)


def test_uncertainty_nms_radius_cutoff():
  # No labels. Frame 0 = 1.0 is picked first. Frame 4 (0.9) is at distance 4: 0.9 - .324652 = .575348;
  # frame 5 (0.6) is at distance 5, outside the radius: stays 0.6 -> picked second.
  scores = np.zeros(12)
  scores[[0, 4, 5]] = [1.0, 0.9, 0.6]
  assert F.select_frames(scores, [], 2, "uncertainty", params=_params()).tolist() == [0, 5]
  # With radius 5, frame 5 drops to 0.6 - .172422 = .427578 < .575348 -> frame 4 instead.
  picks = F.select_frames(scores, [], 2, "uncertainty", params=_params(nms_radius=5))
  assert picks.tolist() == [0, 4]


def test_uncertainty_penalties_accumulate():
  # No labels; scores 1.0 @0, 0.9 @2, 0.95 @4, 0.1 @8, 0.05 @9, else 0.
  # Pick 1: frame 0. Around it: t2 .9-.754840=.145160, t4 .95-.324652=.625348.
  # Pick 2: frame 4 (.625348). Around it: t2 .145160-.754840=-.609680 (second subtraction),
  #   t8 .1-.324652=-.224652; t9 is 5 away and keeps .05.
  # Pick 3: frame 9 (.05). A "nearest annotated frame only" penalty would leave t2 at
  #   .9-.754840=.145160 > .05 and pick frame 2 instead: the reference's NMS accumulates.
  scores = np.zeros(10)
  scores[[0, 2, 4, 8, 9]] = [1.0, 0.9, 0.95, 0.1, 0.05]
  assert F.select_frames(scores, [], 3, "uncertainty").tolist() == [0, 4, 9]


def test_entropy_skip_hand_worked():
  scores = [0.1, 0.9, 0.8, 0.7, 0.2, 0.3, 0.6, 0.85, 0.1, 0.1, 0.1, 0.5]
  # skip 5: pick 1 (0.9) -> 0..6 ineligible; pick 7 (0.85) -> 2..11 ineligible; nothing is eligible,
  # so the fallback takes the best remaining frame, 2 (0.8).
  assert F.select_frames(scores, [], 3, "entropy", params=_params()).tolist() == [1, 2, 7]
  # skip 2: pick 1 -> 0..3 out; pick 7 (0.85) -> 5..9 out; eligible 4 (0.2), 10 (0.1), 11 (0.5) -> 11.
  picks = F.select_frames(scores, [], 3, "entropy", params=_params(entropy_skip=2))
  assert picks.tolist() == [1, 7, 11]
  # A labelled frame is never picked even if it has the top score.
  assert 1 not in F.select_frames(scores, [1], 3, "entropy").tolist()


def test_equidistant():
  # available[floor((i + 0.5) * n / k)]. 12 frames, none labelled, k = 3: floor(0.5 * 4) = 2,
  # floor(1.5 * 4) = 6, floor(2.5 * 4) = 10 (one frame per 4-frame segment, at its middle).
  assert F.select_frames(np.zeros(12), [], 3, "equidistant").tolist() == [2, 6, 10]
  # Frame 0 labelled: 9 available frames 1..9 of a 10-frame video; indices floor(1.5), floor(4.5),
  # floor(7.5) = 1, 4, 7 into [1..9] -> frames 2, 5, 8.
  assert F.select_frames(np.zeros(10), [0], 3, "equidistant").tolist() == [2, 5, 8]
  # k = 1 takes the middle of the available frames: floor(0.5 * 9) = 4.
  assert F.select_frames(np.zeros(9), [], 1, "equidistant").tolist() == [4]


def test_random_is_seeded_and_uniform():
  a = F.select_frames(np.zeros(20), [3, 4], 5, "random", rng=np.random.default_rng(7))
  b = F.select_frames(np.zeros(20), [3, 4], 5, "random", rng=np.random.default_rng(7))
  assert a.tolist() == b.tolist()
  counts = np.zeros(20)
  rng = np.random.default_rng(0)
  for _ in range(2000):
    counts[F.select_frames(np.zeros(20), [3, 4], 2, "random", rng=rng)] += 1
  assert counts[[3, 4]].sum() == 0
  # 4000 picks over 18 frames: 222 expected per frame; a binomial sd is about 14.
  assert np.all(np.abs(counts[np.r_[0:3, 5:20]] - 4000 / 18) < 70)
  with pytest.raises(ValueError, match="rng"):
    F.select_frames(np.zeros(5), [], 1, "random")


def test_span_restriction_and_caps():
  scores = np.arange(10, dtype=float)
  # Only frames 2..5 may be picked; 3 is labelled -> 2, 4, 5 available.
  assert F.select_frames(scores, [3], 10, "uncertainty", span=(2, 6)).tolist() == [2, 4, 5]
  assert F.select_frames(scores, list(range(10)), 3, "top").size == 0
  assert F.select_frames(scores, [], 0, "top").size == 0
  assert F.video_score(scores, []) == float("-inf")
  with pytest.raises(ValueError, match="unknown"):
    F.select_frames(scores, [], 1, "nope")


def test_non_finite_scores_rank_last():
  scores = np.array([-np.inf, np.nan, 0.1, -np.inf, 0.2])
  assert F.select_frames(scores, [], 2, "top").tolist() == [2, 4]
  # All four non-labelled frames asked for: the non-finite ones fill the rest.
  assert F.select_frames(scores, [4], 4, "uncertainty").tolist() == [0, 1, 2, 3]


def _reference_penalised(scores, labelled, k, sigma, radius):
  """Independent form: recompute every candidate's penalty from scratch at each step."""
  s = np.where(np.isnan(scores), -np.inf, np.asarray(scores, float))
  t_len = len(s)
  g = lambda d: np.exp(-d * d / (2 * sigma * sigma))
  picks = []
  avail = [t for t in range(t_len) if t not in set(labelled)]
  for _ in range(min(k, len(avail))):
    best, best_val = None, None
    for j in avail:
      if j in picks:
        continue
      v = s[j]
      if labelled:
        v -= g(min(abs(j - a) for a in labelled))
      v -= sum(g(abs(j - p)) for p in picks if 1 <= abs(j - p) <= radius)
      if best is None or v > best_val:
        best, best_val = j, v
    picks.append(best)
  return sorted(picks)


@st.composite
def _video(draw):
  t_len = draw(st.integers(1, 30))
  scores = draw(st.lists(st.one_of(st.floats(-2, 3), st.just(-np.inf)), min_size=t_len,
                         max_size=t_len))
  labelled = draw(st.lists(st.integers(0, t_len - 1), max_size=t_len, unique=True))
  k = draw(st.integers(0, t_len + 3))
  return np.array(scores), sorted(labelled), k


@settings(max_examples=150, deadline=None)
@given(_video(), st.sampled_from(F.METHODS), st.integers(0, 2**31 - 1),
       st.one_of(st.none(), st.tuples(st.integers(-2, 20), st.integers(0, 35))))
def test_properties(video, method, seed, span):
  scores, labelled, k = video
  picks = F.select_frames(scores, labelled, k, method, rng=np.random.default_rng(seed), span=span)
  avail = F.available_frames(len(scores), labelled, span)
  assert picks.size == min(k, avail.size)
  assert len(set(picks.tolist())) == picks.size
  assert np.all(np.diff(picks) > 0)
  assert set(picks.tolist()) <= set(avail.tolist())
  assert not set(picks.tolist()) & set(labelled)
  again = F.select_frames(scores, labelled, k, method, rng=np.random.default_rng(seed), span=span)
  assert picks.tolist() == again.tolist()


@settings(max_examples=150, deadline=None)
@given(_video(), st.floats(0.5, 6.0), st.integers(0, 6))
def test_penalised_greedy_matches_reference(video, sigma, radius):
  scores, labelled, k = video
  got = F.select_frames(scores, labelled, k, "uncertainty",
                        params=_params(proximity_sigma=sigma, nms_radius=radius))
  assert got.tolist() == _reference_penalised(scores, labelled, k, sigma, radius)
