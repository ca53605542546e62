"""Intra-sample selection: which frames of one video to annotate (paper Sec. 3.1, REFERENCE.md).

Host-side NumPy; a video has at most a few hundred frames, so everything here is O(T * k).

Methods of :func:`select_frames`:
  * ``'uncertainty'`` (CLAUS): greedy top-k over the frame scores minus a Gaussian proximity penalty
    ``g(d) = N(d; 0, sigma) / N(0; 0, sigma) = exp(-d^2 / (2 sigma^2))``.
    Interpretation of REFERENCE.md ("frame score minus a proximity penalty g(d) to the nearest
    annotated frame ...; after each pick the picked frame is removed and its +-4 neighbours have g
    subtracted"), made exact here:
      1. every frame starts at ``score[t] - g(d_t)`` where ``d_t`` is the distance to the nearest
         *already labelled* frame (no penalty when the video has no labelled frame; the penalty is
         applied at every distance, it is below 0.012 beyond 8 frames at sigma = 8/3);
      2. the frame with the highest adjusted score is picked (ties: lowest index) and removed;
      3. every still-available frame ``j`` with ``1 <= |j - p| <= nms_radius`` of the pick ``p`` gets
         ``g(|j - p|)`` subtracted from its adjusted score. Subtractions accumulate: a frame between
         two picks is pushed down by both (non-maximum suppression, as in the reference), which is
         why this is not the same as recomputing the penalty to the nearest annotated frame.
    The picked frames are reported with their *raw* scores; the penalty only decides the order
    (``config.selection.video_score='penalised'``: Eq. 1 over the adjusted scores at pick time, as
    the authors' code sums them). g is in score units (at most 1): frame scores must be
    per-foreground-pixel means of -log p (both forms of claus_jax.uncertainty, order 0.1-1), or
    the penalty would outweigh (Eq. 2 over all pixels) or vanish (a raw sum) next to them.
    The authors' code also penalises every frame of a video without labels by g(0) = 1 (distance
    0 when nothing is labelled): a constant, which changes no pick and, as every candidate video is
    unlabelled, no ranking of Eq. 1; here that video has no penalty.
  * ``'top'``: plain top-k of the scores (the MC-dropout "uncertainty" baseline: no penalty).
  * ``'entropy'``: greedy top-k of the (entropy) scores; after each pick the ``entropy_skip``
    nearest frames on each side become ineligible. If that leaves fewer than k eligible frames,
    the remaining picks fall back to the best skipped frames, so k is still met when possible.
  * ``'random'``: k distinct frames uniformly at random (needs ``rng``).
  * ``'equidistant'``: k frames evenly spaced over the available frames (the unlabelled ones,
    inside the span if one is given): ``available[floor((i + 0.5) * n / k)]`` for ``i < k``. For a
    video without labels this is the middle (rounded up) of each of k equal segments of the video.
    Deterministic.

Every method: never returns a labelled frame, never a duplicate, returns ``min(k, available)``
frames, sorted ascending. Non-finite scores (NaN, -inf for frames without foreground) rank last.

Ground truth: ``span`` restricts the choice to ``[start, end)``. The authors' code restricts frame
choice to the ground-truth action span, which LEAKS LABELS to the selector (an unlabelled video's
span is unknown to a real annotator's client). Callers pass a span only when
``config.selection.restrict_to_gt_span`` is True; it is off by default.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from claus_jax.selection.params import SelectionParams

METHODS = ("uncertainty", "top", "entropy", "random", "equidistant")
VIDEO_SCORES = ("raw", "penalised")  # config.selection.video_score (Eq. 1 over which scores).

# Equal to configlib.base_config().selection, used when no params are passed.
_DEFAULTS = SelectionParams()


def proximity_penalty(distance, sigma: float = _DEFAULTS.proximity_sigma) -> np.ndarray:
  """g(d) = N(d; 0, sigma) / N(0; 0, sigma) = exp(-d^2 / (2 sigma^2)); 1 at d = 0.

  Args:
    distance: frame distances, any shape (ints or floats, in frames).
    sigma: standard deviation in frames.
  Returns:
    float64 array of the same shape, in (0, 1].
  """
  d = np.asarray(distance, dtype=np.float64)
  return np.exp(-(d * d) / (2.0 * sigma * sigma))


def distance_to_nearest(num_frames: int, annotated: Sequence[int]) -> np.ndarray:
  """(T,) float64: distance in frames from each frame to the nearest annotated frame; inf if none."""
  annotated = np.asarray(annotated, dtype=np.int64)
  if annotated.size == 0:
    return np.full((num_frames,), np.inf)
  t = np.arange(num_frames)[:, None]
  return np.abs(t - annotated[None, :]).min(axis=1).astype(np.float64)


def _clean(scores) -> np.ndarray:
  """(T,) float64 scores with NaN mapped to -inf so it ranks last deterministically."""
  s = np.asarray(scores, dtype=np.float64).reshape(-1).copy()
  s[np.isnan(s)] = -np.inf
  return s


def available_frames(num_frames: int, labelled: Sequence[int],
                     span: tuple[int, int] | None = None) -> np.ndarray:
  """Sorted int64 frame indices that may be picked: unlabelled, inside ``span`` if given."""
  ok = np.ones((num_frames,), dtype=bool)
  lab = np.asarray(labelled, dtype=np.int64).reshape(-1)
  if lab.size and (lab.min() < 0 or lab.max() >= num_frames):
    raise ValueError(f"labelled frames {lab.tolist()} fall outside [0, {num_frames}).")
  ok[lab] = False
  if span is not None:
    start, end = int(span[0]), int(span[1])
    inside = np.zeros_like(ok)
    inside[max(0, start):max(0, min(end, num_frames))] = True
    ok &= inside
  return np.flatnonzero(ok)


def _argmax_first(values: np.ndarray, mask: np.ndarray) -> int:
  """Index of the largest value among ``mask``; ties (including all -inf) go to the lowest index."""
  idx = np.flatnonzero(mask)
  return int(idx[np.argmax(values[idx])])


def _greedy_penalised(scores: np.ndarray, labelled: np.ndarray, avail: np.ndarray, k: int,
                      sigma: float, nms_radius: int,
                      values: list[float] | None = None) -> list[int]:
  """Greedy picks; ``values`` (if given) receives each pick's adjusted score at pick time."""
  t_len = scores.shape[0]
  adjusted = scores - proximity_penalty(distance_to_nearest(t_len, labelled), sigma)
  mask = np.zeros((t_len,), dtype=bool)
  mask[avail] = True
  picks = []
  offsets = np.arange(1, nms_radius + 1)
  g = proximity_penalty(offsets, sigma)
  for _ in range(k):
    p = _argmax_first(adjusted, mask)
    picks.append(p)
    if values is not None:
      values.append(float(adjusted[p]))
    mask[p] = False
    for off, pen in zip(offsets, g):
      for j in (p - off, p + off):
        if 0 <= j < t_len:
          adjusted[j] -= pen
  return picks


def _greedy_skip(scores: np.ndarray, avail: np.ndarray, k: int, skip: int) -> list[int]:
  t_len = scores.shape[0]
  available = np.zeros((t_len,), dtype=bool)
  available[avail] = True
  eligible = available.copy()
  picks = []
  for _ in range(k):
    pool = eligible if eligible.any() else available  # Fallback: skipped frames, best first.
    p = _argmax_first(scores, pool)
    picks.append(p)
    available[p] = False
    eligible[p] = False
    eligible[max(0, p - skip):min(t_len, p + skip + 1)] = False
  return picks


def select_frames(scores, labelled: Sequence[int], k: int, method: str = "uncertainty",
                  rng: np.random.Generator | None = None, params: SelectionParams | None = None,
                  span: tuple[int, int] | None = None) -> np.ndarray:
  """Picks up to k new frames of one video to annotate.

  Args:
    scores: (T,) float frame scores, higher = more informative (MC-dropout uncertainty for
      'uncertainty'/'top', pixel entropy for 'entropy'; ignored by 'random'/'equidistant' except
      for its length).
    labelled: indices of the video's already annotated frames (any order).
    k: frames wanted; capped at the number of available frames.
    method: one of METHODS (see the module docstring).
    rng: NumPy generator, required for 'random'.
    params: the selection settings (uses ``proximity_sigma``, ``nms_radius``, ``entropy_skip``);
      None = the paper defaults (8/3, 4, 5).
    span: optional half-open ``(start, end)`` to choose from. Pass the ground-truth span only
      when ``config.selection.restrict_to_gt_span`` is True: it leaks labels.
  Returns:
    (min(k, available),) int64 sorted frame indices.
  """
  if method not in METHODS:
    raise ValueError(f"frame selection method {method!r} is unknown; use one of {METHODS}.")
  s = _clean(scores)
  t_len = s.shape[0]
  lab = np.unique(np.asarray(labelled, dtype=np.int64).reshape(-1))
  avail = available_frames(t_len, lab, span)
  k = int(min(max(int(k), 0), avail.size))
  if k == 0:
    return np.zeros((0,), dtype=np.int64)
  params = _DEFAULTS if params is None else params
  if method == "uncertainty":
    picks = _greedy_penalised(s, lab, avail, k, params.proximity_sigma, params.nms_radius)
  elif method == "top":
    picks = _greedy_skip(s, avail, k, skip=0)
  elif method == "entropy":
    picks = _greedy_skip(s, avail, k, skip=params.entropy_skip)
  elif method == "random":
    if rng is None:
      raise ValueError("select_frames(method='random') needs an rng (np.random.Generator).")
    picks = rng.choice(avail, size=k, replace=False)
  else:  # equidistant
    n = avail.size
    picks = avail[np.floor((np.arange(k) + 0.5) * n / k).astype(np.int64)]
  return np.sort(np.asarray(picks, dtype=np.int64))


def penalised_video_score(scores, labelled: Sequence[int], k: int,
                          params: SelectionParams | None = None,
                          span: tuple[int, int] | None = None) -> tuple[np.ndarray, float]:
  """Intra selection (``'uncertainty'``) and the authors' Eq. 1: the mean of the picks' *adjusted*
  scores at the moment each is picked (frame score minus the proximity penalty and the suppression
  of earlier picks), as their selection loop sums them (``selection.video_score='penalised'``).
  ``params`` as in :func:`select_frames` (None = the paper defaults).

  Returns:
    ``(picks (min(k, available),) int64 sorted, score)``; score is -inf without a pick.
  """
  s = _clean(scores)
  lab = np.unique(np.asarray(labelled, dtype=np.int64).reshape(-1))
  avail = available_frames(s.shape[0], lab, span)
  k = int(min(max(int(k), 0), avail.size))
  if k == 0:
    return np.zeros((0,), dtype=np.int64), float("-inf")
  params = _DEFAULTS if params is None else params
  values: list[float] = []
  picks = _greedy_penalised(s, lab, avail, k, params.proximity_sigma, params.nms_radius,
                            values)
  return np.sort(np.asarray(picks, dtype=np.int64)), float(np.mean(values))


def video_score(frame_scores, selected: Sequence[int]) -> float:
  """Paper Eq. 1: mean of the selected frames' scores (the top A_t frames of intra selection).

  Args:
    frame_scores: (T,) float raw frame scores (not penalised).
    selected: the A_t frames chosen by intra selection.
  Returns:
    The mean as a Python float; -inf when nothing was selected (the video cannot be ranked).
    NaN scores count as -inf.
  """
  sel = np.asarray(selected, dtype=np.int64).reshape(-1)
  if sel.size == 0:
    return float("-inf")
  return float(np.mean(_clean(frame_scores)[sel]))
