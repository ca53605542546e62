"""Pure NumPy pieces of both evaluation protocols: boxes, IoUs, greedy matching, AP, tubes.

Conventions (ACT detector, Kalogeiton et al. 2017): boxes are ``(x1, y1, x2, y2)`` with inclusive
pixel corners, so a box covers ``(x2 - x1 + 1) * (y2 - y1 + 1)`` pixels (the "+1 convention"); a
one-pixel box has ``x1 == x2``. Frames are 0-based.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Sequence

import numpy as np


def mask_boxes(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Tight boxes of binary masks.

  Args:
    masks: ``(T, H, W)`` bool (or {0, 1}).

  Returns:
    ``boxes (T, 4) float32`` ``(x1, y1, x2, y2)`` inclusive corners (NaN where the mask is empty) and
    ``present (T,) bool``.
  """
  masks = np.asarray(masks, bool)
  t, h, w = masks.shape
  rows = masks.any(axis=2)  # (T, H)
  cols = masks.any(axis=1)  # (T, W)
  present = rows.any(axis=1)
  y1 = np.argmax(rows, axis=1)
  y2 = h - 1 - np.argmax(rows[:, ::-1], axis=1)
  x1 = np.argmax(cols, axis=1)
  x2 = w - 1 - np.argmax(cols[:, ::-1], axis=1)
  boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
  boxes[~present] = np.nan
  return boxes, present


def box_area(boxes: np.ndarray) -> np.ndarray:
  """``(..., 4)`` boxes -> ``(...)`` areas in pixels with the +1 convention."""
  boxes = np.asarray(boxes, np.float64)
  return (boxes[..., 2] - boxes[..., 0] + 1.0) * (boxes[..., 3] - boxes[..., 1] + 1.0)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Pairwise IoU with the +1 convention.

  Args:
    a: ``(N, 4)`` boxes.
    b: ``(M, 4)`` boxes.

  Returns:
    ``(N, M) float64``.
  """
  a = np.asarray(a, np.float64).reshape(-1, 4)
  b = np.asarray(b, np.float64).reshape(-1, 4)
  iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1.0
  ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1.0
  inter = np.clip(iw, 0.0, None) * np.clip(ih, 0.0, None)
  union = box_area(a)[:, None] + box_area(b)[None, :] - inter
  return inter / union


def average_precision(is_tp: np.ndarray, num_positives: int) -> float:
  """ACT-style AP: trapezoid area under the raw precision-recall curve.

  The curve starts at (recall 0, precision 1) and gains one point per ranked detection; no
  interpolation (no precision envelope).

  Args:
    is_tp: ``(D,) bool`` true positive flags in ranked (descending score) order.
    num_positives: ground-truth instances of the class (> 0).

  Returns:
    AP in [0, 1].
  """
  if num_positives <= 0:
    raise ValueError("AP is undefined without ground truth; exclude the class instead")
  is_tp = np.asarray(is_tp, bool)
  tp = np.cumsum(is_tp)
  fp = np.cumsum(~is_tp)
  precision = np.concatenate([[1.0], tp / np.maximum(tp + fp, 1)])
  recall = np.concatenate([[0.0], tp / float(num_positives)])
  return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2.0))


def greedy_match(order: np.ndarray, det_groups: Sequence[Hashable],
                 iou_with_group: Callable[[int, Hashable], np.ndarray],
                 gt_count: dict, threshold: float) -> np.ndarray:
  """Greedy matching of ranked detections to ground truth (ACT).

  Each detection, in ``order``, takes the still unmatched ground truth of its group with the highest
  IoU; it is a true positive if that IoU >= ``threshold`` (the ground truth is then used up),
  otherwise a false positive (nothing is used up). Ties between equal IoUs go to the lower index.

  Args:
    order: ``(D,)`` detection indices, best first.
    det_groups: group key of each detection (e.g. ``(video, frame)``); only ground truth of the same
      group can match.
    iou_with_group: ``(det_index, group) -> (G,)`` IoUs with the group's ground truth.
    gt_count: group -> number of ground-truth items (groups absent = none).
    threshold: IoU needed for a true positive.

  Returns:
    ``(D,) bool`` true-positive flags in ranked order.
  """
  used = {}
  is_tp = np.zeros(len(order), bool)
  for rank, d in enumerate(order):
    group = det_groups[d]
    if not gt_count.get(group, 0):
      continue
    ious = np.array(iou_with_group(d, group), np.float64)
    taken = used.setdefault(group, np.zeros(len(ious), bool))
    ious[taken] = -1.0
    j = int(np.argmax(ious))
    if ious[j] >= threshold:
      taken[j] = True
      is_tp[rank] = True
  return is_tp


@dataclasses.dataclass(frozen=True)
class Tube:
  """A box tube: boxes on frames ``start .. start + len(boxes) - 1``.

  Attributes:
    start: first frame (0-based).
    boxes: ``(n, 4) float32``; rows of NaN are frames inside the extent without a box (a gap);
      the first and last rows are always boxes.
  """

  start: int
  boxes: np.ndarray

  @property
  def end(self) -> int:
    """Last frame (inclusive)."""
    return self.start + len(self.boxes) - 1


def make_tube(boxes: np.ndarray) -> Tube | None:
  """The tube of per-frame boxes ``(T, 4)`` (NaN = no box), trimmed to its first..last box; None if
  there is no box at all."""
  present = ~np.isnan(boxes).any(axis=1)
  if not present.any():
    return None
  frames = np.flatnonzero(present)
  first, last = int(frames[0]), int(frames[-1])
  return Tube(first, np.asarray(boxes[first:last + 1], np.float32))


def tube_iou(a: Tube, b: Tube) -> float:
  """Spatio-temporal IoU of two tubes.

  ``temporal IoU (inclusive frame counts) x mean spatial IoU over the temporally overlapping
  frames``. Inside the overlap, a frame where only one tube has a box counts IoU 0 (a gap is a miss);
  a frame where neither has a box is left out of the mean.
  """
  lo, hi = max(a.start, b.start), min(a.end, b.end)
  if hi < lo:
    return 0.0
  union = max(a.end, b.end) - min(a.start, b.start) + 1
  temporal = (hi - lo + 1) / union
  ba = a.boxes[lo - a.start:hi - a.start + 1]
  bb = b.boxes[lo - b.start:hi - b.start + 1]
  pa = ~np.isnan(ba).any(axis=1)
  pb = ~np.isnan(bb).any(axis=1)
  counted = pa | pb
  if not counted.any():
    return 0.0
  both = pa & pb
  ious = np.zeros(len(ba))
  if both.any():
    ious[both] = np.diag(box_iou(ba[both], bb[both]))
  return float(temporal * ious[counted].mean())


def frame_iou_stats(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Pixel intersections and unions per frame.

  Args:
    pred: ``(F, H, W)`` bool predicted masks.
    gt: ``(F, H, W)`` bool ground-truth masks.

  Returns:
    ``(inter (F,) int64, union (F,) int64)``.
  """
  pred = np.asarray(pred, bool)
  gt = np.asarray(gt, bool)
  inter = np.logical_and(pred, gt).sum(axis=(1, 2), dtype=np.int64)
  union = np.logical_or(pred, gt).sum(axis=(1, 2), dtype=np.int64)
  return inter, union


def ranking(scores: np.ndarray, *tiebreaks: np.ndarray) -> np.ndarray:
  """Detection indices by descending score; ties by the tiebreak keys ascending, then by index."""
  scores = np.asarray(scores, np.float64)
  keys = [np.arange(len(scores))] + [np.asarray(k) for k in reversed(tiebreaks)] + [-scores]
  return np.lexsort(keys)


def frame_ap(det_keys: np.ndarray, det_scores: np.ndarray, det_boxes: np.ndarray,
             gt_keys: np.ndarray, gt_boxes: np.ndarray, thresholds: Sequence[float],
             order: np.ndarray | None = None) -> np.ndarray:
  """Frame-AP of one class.

  Args:
    det_keys: ``(D, 2) int`` (video, frame) of each detection.
    det_scores: ``(D,)`` scores.
    det_boxes: ``(D, 4)`` boxes.
    gt_keys: ``(G, 2) int`` (video, frame) of each ground-truth box (G > 0).
    gt_boxes: ``(G, 4)`` boxes.
    thresholds: IoU thresholds.
    order: ranked detection indices; None = descending score, ties in input order.

  Returns:
    ``(len(thresholds),)`` AP.
  """
  det_keys = np.asarray(det_keys, np.int64).reshape(-1, 2)
  det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
  gts: dict[tuple[int, int], list] = {}
  for key, box in zip(np.asarray(gt_keys, np.int64).reshape(-1, 2), np.asarray(gt_boxes)):
    gts.setdefault((int(key[0]), int(key[1])), []).append(box)
  gts = {k: np.stack(b) for k, b in gts.items()}
  counts = {k: len(b) for k, b in gts.items()}
  npos = sum(counts.values())
  order = ranking(det_scores) if order is None else np.asarray(order)
  groups = [(int(v), int(f)) for v, f in det_keys]
  iou = lambda d, g: box_iou(det_boxes[d], gts[g])[0]
  return np.array([average_precision(greedy_match(order, groups, iou, counts, thr), npos)
                   for thr in thresholds])


def video_ap(det_videos: Sequence[int], det_scores: np.ndarray, det_tubes: Sequence[Tube],
             gt_videos: Sequence[int], gt_tubes: Sequence[Tube], thresholds: Sequence[float],
             order: np.ndarray | None = None) -> np.ndarray:
  """Video-AP of one class: tubes matched greedily per video by tube IoU (:func:`tube_iou`).

  Args:
    det_videos: video of each detected tube.
    det_scores: ``(D,)`` tube scores.
    det_tubes: D tubes.
    gt_videos: video of each ground-truth tube (at least one).
    gt_tubes: ground-truth tubes.
    thresholds: tube IoU thresholds.
    order: ranked detection indices; None = descending score, ties in input order.

  Returns:
    ``(len(thresholds),)`` AP.
  """
  by_video: dict[int, list[Tube]] = {}
  for v, tube in zip(gt_videos, gt_tubes):
    by_video.setdefault(int(v), []).append(tube)
  counts = {v: len(t) for v, t in by_video.items()}
  npos = sum(counts.values())
  order = ranking(det_scores) if order is None else np.asarray(order)
  groups = [int(v) for v in det_videos]
  iou = lambda d, v: np.array([tube_iou(det_tubes[d], g) for g in by_video[v]])
  return np.array([average_precision(greedy_match(order, groups, iou, counts, thr), npos)
                   for thr in thresholds])
