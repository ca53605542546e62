"""Inter-sample selection strategies: which videos (and which of their frames) to annotate next.

One registry, :data:`STRATEGIES`, keyed by ``config.selection.strategy`` (the names of
``configlib.STRATEGIES``). Every strategy has the signature

    select(candidates: list[VideoCandidate], budget: RoundBudget, params: SelectionParams,
           rng) -> Selection

and is host-side NumPy. Determinism: candidates are sorted by ``video_id`` before anything else, all
random draws come from ``rng`` in that order, and score ties are broken by ``video_id``; the same
inputs (in any order) and the same rng seed give the same selection.

The hybrid split of a round (paper Sec. 3.1 and 4.1; used by every strategy but the two ablations):
  * ``n_new = min(floor(B_v / C_v), floor(B_f / C_f), eligible unlabelled videos)`` new videos get a
    video label. A new video must get at least one frame, so when the frame budget is smaller than
    the video budget the number of new videos is reduced to the frames affordable (the video budget
    left over carries to the next round through the cumulative targets).
  * Eligible: an unlabelled video with at least one frame that may be picked (e.g. not an empty
    ground-truth span when ``restrict_to_gt_span`` is on).
  * The ``floor(B_f / C_f)`` frames are spread over the new videos: ``A_t = frames // n_new`` each and
    the remainder one by one to the highest-ranked videos; a video with fewer free frames than its
    share gets all of them and the rest goes round-robin (in rank order) to the others.
  * Frames already labelled are never picked again; no duplicates.

Strategies:
  * ``claus``: video score = paper Eq. 1 (mean raw score of the A_t frames that the penalised greedy
    intra selection picks; ``selection.video_score='penalised'``: the mean of their adjusted scores
    at pick time, as the authors' code has it). Cluster c with n_c eligible videos gets
    ``floor(n_c * n_new / N_U)`` videos; the rounding remainder goes to the clusters with the most
    unused eligible videos (ties: smaller cluster id), at most one extra per cluster so every quota
    stays within 1 of its exact share (see :func:`cluster_budgets`); each cluster takes its
    best-scored videos. Cluster id -1 ("unknown") is treated as one more cluster.
    ``selection.cluster_quota='cap'`` is the authors' rule instead (:func:`capped_cluster_pick`):
    videos in score order, a cluster taking one while its count of labelled videos (those labelled
    before the round included) is at most ``int(cluster_cap * its size)``, size counting every pool
    video of the cluster; it may select fewer than n_new videos.

A_t (frames per new video) is ``frames // n_new``. The authors' code takes round(5% of the video's
ground-truth tube length), at least 1: that leaks the tube length of an unlabelled video to the
selector, so it is not offered (a deliberate choice).
  * ``claus_no_cluster``: same scores, global top ``n_new``.
  * ``uncertainty``: video score = mean of the finite MC-dropout frame scores over the whole video;
    top ``n_new``; frames by plain top-k uncertainty (no proximity penalty).
  * ``entropy``: video score = mean of the finite entropy frame scores; top ``n_new``; frames by top
    entropy skipping ``entropy_skip`` frames on each side of each pick.
  * ``random``: random videos, random frames. ``equidistant``: random videos, evenly spaced frames.
  * ``inter_only`` (ablation, "sample selection"): whole videos. Unlabelled videos in random order are
    taken (first fit: a video that does not fit the remaining frame budget is skipped, a later
    shorter one may still fit) while ``videos <= floor(B_v / C_v)`` and all their free frames fit in
    ``floor(B_f / C_f)``; every frame of a taken video is annotated, ignoring ``restrict_to_gt_span``.
  * ``ssal`` (Singh et al., AAAI 2024): whole videos as ``inter_only`` takes them, but in the order
    of the NoiseAug video score (the mean of the video's counted frame scores, 0 when none counts;
    needs ``uncertainty.source='noise'``), highest first.
  * ``intra_only`` (ablation, "frames in every video"): the video-label budget is spent on new videos
    that each get one (random) frame, chosen at random, exactly as a hybrid round would label them;
    the rest of the frame budget is spread one frame at a time over *all* videos with a video label
    (old and new), always to the video with the fewest annotated frames (ties: random order), with
    random frames within a video. Cost is honest: new video labels are paid from B_v, every frame
    from B_f; no video label is given for free.
For random-order strategies the reported ``video_score`` is Eq. 1 over the picked frames
(informative only; it played no part in the choice).
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from claus_jax.selection import budget as budget_lib
from claus_jax.selection import frames as frames_lib
from claus_jax.selection.budget import RoundBudget
from claus_jax.selection.params import SelectionParams


@dataclasses.dataclass
class VideoCandidate:
  """One pool video as the selector sees it.

  Attributes:
    video_id: unique id (sortable; ties and rng order follow it).
    num_frames: T.
    frame_scores: (T,) float MC-dropout frame uncertainty, higher = more uncertain (-inf / very low
      for frames without foreground).
    entropy_scores: (T,) float pixel-entropy frame scores for the entropy baseline, or None when the
      strategy does not need them.
    labelled_frames: sorted int indices of the frames already annotated.
    video_labelled: the video already carries a video (class) label.
    cluster: deep-clustering id, -1 if unknown.
    gt_span: half-open ground-truth action span; fill it ONLY when
      ``config.selection.restrict_to_gt_span`` is True (it leaks labels to the selector).
  """

  video_id: str
  num_frames: int
  frame_scores: np.ndarray
  entropy_scores: np.ndarray | None
  labelled_frames: np.ndarray
  video_labelled: bool
  cluster: int = -1
  gt_span: tuple[int, int] | None = None

  def __post_init__(self):
    self.frame_scores = np.asarray(self.frame_scores, dtype=np.float64).reshape(-1)
    if self.entropy_scores is not None:
      self.entropy_scores = np.asarray(self.entropy_scores, dtype=np.float64).reshape(-1)
    self.labelled_frames = np.unique(np.asarray(self.labelled_frames, dtype=np.int64).reshape(-1))
    for name, arr in (("frame_scores", self.frame_scores), ("entropy_scores", self.entropy_scores)):
      if arr is not None and arr.shape[0] != self.num_frames:
        raise ValueError(f"video {self.video_id!r}: {name} has {arr.shape[0]} entries for "
                         f"{self.num_frames} frames.")
    if self.labelled_frames.size and (self.labelled_frames[0] < 0
                                      or self.labelled_frames[-1] >= self.num_frames):
      raise ValueError(f"video {self.video_id!r}: labelled frames {self.labelled_frames.tolist()} "
                       f"fall outside [0, {self.num_frames}).")


def video_candidates(video_ids: Sequence[str], num_frames: Mapping[str, int],
                     scores: Mapping[str, Mapping[str, np.ndarray]], pool, clusters: Sequence[int],
                     gt_spans: Sequence[tuple[int, int]] | None = None) -> list[VideoCandidate]:
  """One :class:`VideoCandidate` per pool video, from a round's scores and pool.

  Args:
    video_ids: the pool's videos, in split order.
    num_frames: T of every video.
    scores: per video, ``frame_scores`` ``(T,)`` (the configured R and threshold) and ``entropy``
      ``(T,)`` (score_files.for_selection).
    pool: the labelled map (``labelled_frames(video_id)``, ``is_labelled(video_id)``; a
      ``pool.PoolState``).
    clusters: each video's deep-clustering id (-1 unknown), in ``video_ids`` order.
    gt_spans: each video's ground-truth span, only under ``selection.restrict_to_gt_span`` (it leaks
      labels to the selector); None otherwise.
  """
  return [VideoCandidate(video_id=vid, num_frames=num_frames[vid],
                         frame_scores=scores[vid]["frame_scores"],
                         entropy_scores=scores[vid]["entropy"],
                         labelled_frames=pool.labelled_frames(vid),
                         video_labelled=pool.is_labelled(vid), cluster=int(clusters[i]),
                         gt_span=None if gt_spans is None else gt_spans[i])
          for i, vid in enumerate(video_ids)]


@dataclasses.dataclass(frozen=True)
class Pick:
  """Annotations requested for one video.

  Attributes:
    video_id: the video.
    frames: sorted new frame indices to annotate.
    video_score: the score the strategy ranked by (see module docstring); -inf if unscorable.
    cluster: the video's cluster id.
    new_video: the video label is requested too (costs C_v).
  """

  video_id: str
  frames: list[int]
  video_score: float
  cluster: int
  new_video: bool


@dataclasses.dataclass(frozen=True)
class Selection:
  """A round's requests and their cost (``cost = C_v * num_new_videos + C_f * num_new_frames``)."""

  picks: list[Pick]
  cost: float
  num_new_videos: int
  num_new_frames: int
  strategy: str = ""
  round: int = -1

  def to_json(self) -> dict:
    """A JSON-able dict; non-finite video scores are written as null (read back as -inf)."""
    def score(x):
      return float(x) if math.isfinite(x) else None
    return {
        "strategy": self.strategy, "round": self.round, "cost": self.cost,
        "num_new_videos": self.num_new_videos, "num_new_frames": self.num_new_frames,
        "picks": [{"video_id": p.video_id, "frames": [int(f) for f in p.frames],
                   "video_score": score(p.video_score), "cluster": int(p.cluster),
                   "new_video": bool(p.new_video)} for p in self.picks],
    }

  @classmethod
  def from_json(cls, data: dict | str) -> "Selection":
    """Inverse of :meth:`to_json` (accepts the dict or its JSON text)."""
    if isinstance(data, str):
      data = json.loads(data)
    picks = [Pick(video_id=p["video_id"], frames=[int(f) for f in p["frames"]],
                  video_score=float("-inf") if p["video_score"] is None else float(p["video_score"]),
                  cluster=int(p["cluster"]), new_video=bool(p["new_video"])) for p in data["picks"]]
    return cls(picks=picks, cost=float(data["cost"]), num_new_videos=int(data["num_new_videos"]),
               num_new_frames=int(data["num_new_frames"]), strategy=str(data.get("strategy", "")),
               round=int(data.get("round", -1)))


# ----------------------------------------------------------------------------- helpers


def cluster_budgets(cluster_sizes: dict[int, int], total: int) -> dict[int, int]:
  """Videos per cluster: floor(n_c * total / N_U), remainder to the most unused clusters.

  Args:
    cluster_sizes: {cluster id: n_c eligible unlabelled videos}, every n_c >= 1.
    total: videos to select in all, at most N_U = sum of n_c.
  Returns:
    {cluster id: quota}, summing to ``total``, each quota <= n_c and within 1 of the exact share
    n_c * total / N_U. The R = total - sum(floors) remainder units go to the R clusters with the
    most unused videos (n_c - floor), ties to the smaller id, at most one unit per cluster and only
    to clusters whose exact share was rounded down. Handing units out one at a time to whoever has
    the most unused videos would break proportionality: sizes {0: 6, 1..4: 1}, total 4 gives
    floors {0: 2, others 0}, and cluster 0 (4 unused) would take both remainder units (4 vs 2.4).
    Such clusters always suffice: the dropped fractions sum to R and each is below 1.
  """
  n_u = sum(cluster_sizes.values())
  if not 0 <= total <= n_u:
    raise ValueError(f"cannot select {total} videos from {n_u} candidates.")
  if n_u == 0:
    return {c: 0 for c in cluster_sizes}
  quota = {c: (n * total) // n_u for c, n in cluster_sizes.items()}
  remainder = total - sum(quota.values())
  rounded_down = [c for c, n in cluster_sizes.items() if (n * total) % n_u]
  rounded_down.sort(key=lambda c: (-(cluster_sizes[c] - quota[c]), c))
  for c in rounded_down[:remainder]:
    quota[c] += 1
  return quota


def allocate_frames(capacities: Sequence[int], total: int) -> list[int]:
  """Spreads ``total`` frames over videos in priority order.

  Each video gets ``min(capacity, total // n)``; what is left goes one frame at a time, round-robin
  in priority order, to videos with free capacity. Returns per-video counts (sum <= total).
  """
  n = len(capacities)
  if n == 0:
    return []
  base = total // n
  alloc = [min(int(c), base) for c in capacities]
  left = total - sum(alloc)
  while left > 0:
    progressed = False
    for i in range(n):
      if left == 0:
        break
      if alloc[i] < capacities[i]:
        alloc[i] += 1
        left -= 1
        progressed = True
    if not progressed:
      break
  return alloc


def _span(c: VideoCandidate, params: SelectionParams) -> tuple[int, int] | None:
  if not params.restrict_to_gt_span:
    return None
  if c.gt_span is None:
    raise ValueError(f"config.selection.restrict_to_gt_span is True but video {c.video_id!r} has no "
                     "gt_span; pass the ground-truth span in VideoCandidate.gt_span or turn the "
                     "option off (it leaks labels and is off by default).")
  return c.gt_span


def _capacity(c: VideoCandidate, span) -> int:
  return int(frames_lib.available_frames(c.num_frames, c.labelled_frames, span).size)


def _finite_mean(x: np.ndarray) -> float:
  x = np.asarray(x, dtype=np.float64)
  x = x[np.isfinite(x)]
  return float(x.mean()) if x.size else float("-inf")


def _sorted(candidates: Sequence[VideoCandidate]) -> list[VideoCandidate]:
  ids = [c.video_id for c in candidates]
  if len(set(ids)) != len(ids):
    raise ValueError("candidate video ids must be unique.")
  return sorted(candidates, key=lambda c: c.video_id)


def _eligible_new(cands: list[VideoCandidate], params: SelectionParams) -> list[VideoCandidate]:
  return [c for c in cands if not c.video_labelled and _capacity(c, _span(c, params)) > 0]


def _counts(num_eligible: int, budget: RoundBudget, params: SelectionParams) -> tuple[int, int]:
  """(new videos, frames affordable) for the hybrid split."""
  nv = budget_lib.max_new_videos(budget, params.budget)
  nf = budget_lib.max_new_frames(budget, params.budget)
  return min(nv, nf, num_eligible), nf


def _by_score(items: list[tuple[VideoCandidate, float]]) -> list[tuple[VideoCandidate, float]]:
  return sorted(items, key=lambda cs: (-cs[1] if not math.isnan(cs[1]) else math.inf, cs[0].video_id))


def _finish(picks: list[Pick], budget: RoundBudget, params: SelectionParams,
            name: str) -> Selection:
  picks = [p for p in picks if p.frames or p.new_video]
  picks.sort(key=lambda p: p.video_id)
  n_v = sum(1 for p in picks if p.new_video)
  n_f = sum(len(p.frames) for p in picks)
  if not budget_lib.within_budget(n_v, n_f, budget, params.budget):
    raise RuntimeError(f"strategy {name!r} exceeded the round budget ({n_v} videos, {n_f} frames vs "
                       f"B_v={budget.budget_video}, B_f={budget.budget_frame}); this is a bug.")
  return Selection(picks=picks, cost=budget_lib.selection_cost(n_v, n_f, params.budget),
                   num_new_videos=n_v, num_new_frames=n_f, strategy=name, round=budget.round)


def _hybrid_frames(ranked: list[tuple[VideoCandidate, float]], frames_total: int, method: str,
                   params: SelectionParams, rng, score_of: Callable[[VideoCandidate], np.ndarray],
                   report_eq1: bool) -> list[Pick]:
  """Allocates frames over ``ranked`` new videos (priority order) and picks them by ``method``."""
  spans = [_span(c, params) for c, _ in ranked]
  caps = [_capacity(c, s) for (c, _), s in zip(ranked, spans)]
  alloc = allocate_frames(caps, frames_total)
  picks = []
  for (c, score), span, k in zip(ranked, spans, alloc):
    chosen = frames_lib.select_frames(score_of(c), c.labelled_frames, k, method, rng=rng,
                                      params=params, span=span)
    vs = frames_lib.video_score(c.frame_scores, chosen) if report_eq1 else score
    picks.append(Pick(video_id=c.video_id, frames=[int(f) for f in chosen], video_score=vs,
                      cluster=int(c.cluster), new_video=True))
  return picks


def _need_entropy(c: VideoCandidate) -> np.ndarray:
  if c.entropy_scores is None:
    raise ValueError(f"strategy 'entropy' needs entropy_scores for video {c.video_id!r}; score the "
                     "pool with the entropy output of claus_jax.uncertainty.")
  return c.entropy_scores


# ----------------------------------------------------------------------------- strategies


def _claus_scores(eligible: list[VideoCandidate], a_t: int,
                  params: SelectionParams) -> list[tuple[VideoCandidate, float]]:
  out = []
  penalised = params.video_score == "penalised"
  for c in eligible:
    if penalised:
      _, score = frames_lib.penalised_video_score(c.frame_scores, c.labelled_frames, a_t, params,
                                                  _span(c, params))
      out.append((c, score))
      continue
    chosen = frames_lib.select_frames(c.frame_scores, c.labelled_frames, a_t, "uncertainty",
                                      params=params, span=_span(c, params))
    out.append((c, frames_lib.video_score(c.frame_scores, chosen)))
  return out


CLUSTER_QUOTAS = ("proportional", "cap")  # config.selection.cluster_quota.


def capped_cluster_pick(scored: list[tuple[VideoCandidate, float]], all_candidates, n_new: int,
                        cap: float) -> list[tuple[VideoCandidate, float]]:
  """The authors' cluster quota: best-scored first, a video is taken while its cluster's count is
  at most ``int(cap * size)``; the count starts at the cluster's labelled videos and grows with each
  pick; size counts every pool video of the cluster. Stops at ``n_new`` picks (or fewer)."""
  size: dict[int, int] = {}
  count: dict[int, int] = {}
  for c in all_candidates:
    size[int(c.cluster)] = size.get(int(c.cluster), 0) + 1
    count.setdefault(int(c.cluster), 0)
    if c.video_labelled:
      count[int(c.cluster)] += 1
  chosen = []
  for cs in _by_score(scored):
    if len(chosen) >= n_new:
      break
    k = int(cs[0].cluster)
    if count[k] <= int(cap * size[k]):
      chosen.append(cs)
      count[k] += 1
  return chosen


def _claus(candidates, budget, params, rng, *, use_clusters: bool, name: str) -> Selection:
  del rng  # Fully determined by the scores.
  eligible = _eligible_new(_sorted(candidates), params)
  n_new, nf = _counts(len(eligible), budget, params)
  if n_new == 0:
    return _finish([], budget, params, name)
  a_t = nf // n_new
  scored = _claus_scores(eligible, a_t, params)
  quota_rule = params.cluster_quota
  if use_clusters and quota_rule == "cap":
    chosen = capped_cluster_pick(scored, _sorted(candidates), n_new, params.cluster_cap)
    if not chosen:
      return _finish([], budget, params, name)
  elif use_clusters:
    groups: dict[int, list[tuple[VideoCandidate, float]]] = {}
    for cs in scored:
      groups.setdefault(int(cs[0].cluster), []).append(cs)
    quota = cluster_budgets({c: len(v) for c, v in groups.items()}, n_new)
    chosen = [cs for c in sorted(groups) for cs in _by_score(groups[c])[:quota[c]]]
  else:
    chosen = _by_score(scored)[:n_new]
  ranked = _by_score(chosen)
  picks = _hybrid_frames(ranked, nf, "uncertainty", params, None, lambda c: c.frame_scores,
                         report_eq1=False)
  return _finish(picks, budget, params, name)


def select_claus(candidates, budget, params, rng) -> Selection:
  """CLAUS: Eq. 1 video scores, cluster-proportional budgets, penalised greedy frames."""
  return _claus(candidates, budget, params, rng, use_clusters=True, name="claus")


def select_claus_no_cluster(candidates, budget, params, rng) -> Selection:
  """CLAUS without clustering: global top-k of the Eq. 1 video scores."""
  return _claus(candidates, budget, params, rng, use_clusters=False, name="claus_no_cluster")


def _mean_score_topk(candidates, budget, params, score_of, method: str, name: str) -> Selection:
  eligible = _eligible_new(_sorted(candidates), params)
  n_new, nf = _counts(len(eligible), budget, params)
  ranked = _by_score([(c, _finite_mean(score_of(c))) for c in eligible])[:n_new]
  picks = _hybrid_frames(ranked, nf, method, params, None, score_of, report_eq1=False)
  return _finish(picks, budget, params, name)


def select_uncertainty(candidates, budget, params, rng) -> Selection:
  """MC-dropout baseline: mean frame uncertainty per video, top-k videos, top-k frames."""
  del rng
  return _mean_score_topk(candidates, budget, params, lambda c: c.frame_scores, "top",
                          "uncertainty")


def select_entropy(candidates, budget, params, rng) -> Selection:
  """Entropy baseline: mean frame entropy per video, top-k videos, frames skipping neighbours."""
  del rng
  return _mean_score_topk(candidates, budget, params, _need_entropy, "entropy", "entropy")


def _random_videos(candidates, budget, params, rng, method: str, name: str) -> Selection:
  eligible = _eligible_new(_sorted(candidates), params)
  n_new, nf = _counts(len(eligible), budget, params)
  order = rng.permutation(len(eligible))[:n_new]
  ranked = [(eligible[i], float("nan")) for i in order]
  picks = _hybrid_frames(ranked, nf, method, params, rng, lambda c: c.frame_scores, report_eq1=True)
  return _finish(picks, budget, params, name)


def select_random(candidates, budget, params, rng) -> Selection:
  """Random videos, random frames."""
  return _random_videos(candidates, budget, params, rng, "random", "random")


def select_equidistant(candidates, budget, params, rng) -> Selection:
  """Random videos, evenly spaced frames."""
  return _random_videos(candidates, budget, params, rng, "equidistant", "equidistant")


def _whole_videos(ranked: Sequence[tuple[VideoCandidate, float | None]], budget: RoundBudget,
                  params: SelectionParams, name: str) -> Selection:
  """Whole videos (every free frame) in ``ranked`` order, first fit, while both budgets last: a
  video that does not fit the frames left is skipped and a later, shorter one may still fit. A
  video's reported score is its rank score, or Eq. 1 over its frames where that is None."""
  nv = budget_lib.max_new_videos(budget, params.budget)
  frames_left = budget_lib.max_new_frames(budget, params.budget)
  picks = []
  for c, score in ranked:
    if len(picks) >= nv:
      break
    free = frames_lib.available_frames(c.num_frames, c.labelled_frames)
    if free.size == 0 or free.size > frames_left:
      continue
    frames_left -= free.size
    picks.append(Pick(video_id=c.video_id, frames=[int(f) for f in free],
                      video_score=(frames_lib.video_score(c.frame_scores, free) if score is None
                                   else score),
                      cluster=int(c.cluster), new_video=True))
  return _finish(picks, budget, params, name)


def select_inter_only(candidates, budget, params, rng) -> Selection:
  """Ablation: whole videos (every free frame) in random order while both budgets last."""
  cands = [c for c in _sorted(candidates) if not c.video_labelled]
  return _whole_videos([(cands[int(i)], None) for i in rng.permutation(len(cands))], budget,
                       params, "inter_only")


def ssal_video_score(frame_scores: np.ndarray) -> float:
  """SSAL's video score: the mean of the finite (counted) NoiseAug frame scores; 0 without any, as
  the SSAL code scores a video none of whose frames counts."""
  x = np.asarray(frame_scores, dtype=np.float64)
  x = x[np.isfinite(x)]
  return float(x.mean()) if x.size else 0.0


def select_ssal(candidates, budget, params, rng) -> Selection:
  """SSAL (NoiseAug): unlabelled videos by :func:`ssal_video_score`, highest first (ties: video
  id), labelled whole, first fit while both budgets last."""
  del rng
  cands = [c for c in _sorted(candidates) if not c.video_labelled]
  return _whole_videos(_by_score([(c, ssal_video_score(c.frame_scores)) for c in cands]), budget,
                       params, "ssal")


def select_intra_only(candidates, budget, params, rng) -> Selection:
  """Ablation: new video labels as usual, then the frame budget spread over every labelled video."""
  cands = _sorted(candidates)
  nv = budget_lib.max_new_videos(budget, params.budget)
  nf = budget_lib.max_new_frames(budget, params.budget)
  order = rng.permutation(len(cands))  # Random rank of every video: new-video order and ties.
  rank = {cands[int(i)].video_id: r for r, i in enumerate(order)}
  eligible = [c for c in (cands[int(i)] for i in order)
              if not c.video_labelled and _capacity(c, _span(c, params)) > 0]
  new = eligible[:min(nv, nf, len(eligible))]
  new_ids = {c.video_id for c in new}
  counts = {c.video_id: 1 for c in new}
  left = nf - len(new)
  # Min-heap over (annotated frames so far, random rank): the least-annotated video gets the next frame.
  heap = []
  caps = {}
  for c in cands:
    if not (c.video_labelled or c.video_id in new_ids):
      continue
    caps[c.video_id] = _capacity(c, _span(c, params))
    given = counts.get(c.video_id, 0)
    if given < caps[c.video_id]:
      heapq.heappush(heap, (c.labelled_frames.size + given, rank[c.video_id], c.video_id))
  while left > 0 and heap:
    annotated, r, vid = heapq.heappop(heap)
    counts[vid] = counts.get(vid, 0) + 1
    left -= 1
    if counts[vid] < caps[vid]:
      heapq.heappush(heap, (annotated + 1, r, vid))
  picks = []
  for c in cands:
    k = counts.get(c.video_id, 0)
    if k == 0:
      continue
    chosen = frames_lib.select_frames(c.frame_scores, c.labelled_frames, k, "random", rng=rng,
                                      params=params, span=_span(c, params))
    picks.append(Pick(video_id=c.video_id, frames=[int(f) for f in chosen],
                      video_score=frames_lib.video_score(c.frame_scores, chosen),
                      cluster=int(c.cluster), new_video=c.video_id in new_ids))
  return _finish(picks, budget, params, "intra_only")


SelectFn = Callable[[list[VideoCandidate], RoundBudget, SelectionParams, np.random.Generator],
                    Selection]

# Strategies that read no frame score, entropy or cluster: a round of theirs does not score the pool
# (their picks report no video score, and the round writes no latents).
SCORE_FREE = ("random", "equidistant", "inter_only", "intra_only")

STRATEGIES: dict[str, SelectFn] = {
    "claus": select_claus,
    "claus_no_cluster": select_claus_no_cluster,
    "uncertainty": select_uncertainty,
    "entropy": select_entropy,
    "random": select_random,
    "equidistant": select_equidistant,
    "inter_only": select_inter_only,
    "intra_only": select_intra_only,
    "ssal": select_ssal,
}


def select(candidates: Sequence[VideoCandidate], budget: RoundBudget, params: SelectionParams,
           rng: np.random.Generator, strategy: str | None = None) -> Selection:
  """Runs ``strategy`` (default ``params.strategy``, ``config.selection.strategy``) on the pool."""
  name = strategy or params.strategy
  if name not in STRATEGIES:
    raise ValueError(f"config.selection.strategy={name!r} is unknown; use one of {tuple(STRATEGIES)}.")
  return STRATEGIES[name](list(candidates), budget, params, rng)
