"""Streaming evaluation of both metric protocols, accuracy, per-class table and confusion matrix.

One small metric object per protocol quantity, each with ``add`` (one video), ``merge`` (another
object's videos, e.g. another process's share of the test split) and ``compute``, in the style of
``clu.metrics``:

  * :class:`Confusion`: video classification counts, accuracy.
  * :class:`CapsuleHitRates`: frame and video mask-IoU hit rates of the capsule protocol.
  * :class:`FrameAP`: ACT frame-AP.
  * :class:`VideoAP`: ACT video-AP.

``merge`` is exact: counts are summed and per-video rows concatenated, so merged partial metrics
compute the same numbers, bit for bit, as one object fed every video. :class:`Evaluator` turns one
video's dense prediction into the inputs of the four at once (hit counts, boxes and tube boxes), so
memory grows only with the number of detections, never with frames x pixels.

Protocols (../shared/REFERENCE.md "Evaluation"):
  * ``capsule/...``: the VideoCapsuleNet-family hit rates. Only frames with a non-empty ground-truth
    mask count; predicted mask = prob >= mask_threshold; frame IoU per frame and video IoU = sum of
    intersections / sum of unions; per class (ground-truth label) the fraction of frames / videos
    with IoU >= threshold; f-mAP / v-mAP = class means. The predicted class plays no part.
  * ``detection/...``: ACT-style frame-AP and video-AP. Detections come from the predicted mask: box
    = tight box of the thresholded mask on every frame where it is non-empty, repeated for each of
    the video's top-k classes (``video_top_k``), score by ``score_rule``. One tube per video and
    top-k class. Ground truth: ``record.boxes`` (several actor tubes) for 'box' videos, the tight
    box of the mask on ``has_gt`` frames for 'mask' videos; all ground truth of a video has its
    label.

Ranking ties: detections are ranked by descending score, then by video id (string order), frame and
class ascending. The order is therefore independent of the order videos were added, so streaming,
merging and batch evaluation agree exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from claus_jax.errors import ConfigError
from claus_jax.data.record import VideoRecord
from claus_jax.evaluation import metrics

SCORE_RULES = ("class_prob", "class_prob_x_mask_mean")
# Capsule-protocol thresholds: 0.05, 0.10, ..., 0.95 (rounded so 0.3 is the literal 0.3).
CAPSULE_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))


def _fmt_thr(thr: float) -> str:
  return f"{thr:g}"


def _video_rank(video_ids: Sequence[str]) -> np.ndarray:
  """Rank of each video id in string order (the order-independent tie-break)."""
  order = sorted(range(len(video_ids)), key=video_ids.__getitem__)
  rank = np.empty(len(order), np.int64)
  rank[order] = np.arange(len(order))
  return rank


def _concat(parts: Sequence[np.ndarray], dtype, empty_shape=(0,)) -> np.ndarray:
  return np.concatenate(parts).astype(dtype) if parts else np.zeros(empty_shape, dtype)


def _check_same(a, b, fields: Sequence[str]) -> None:
  for name in fields:
    if getattr(a, name) != getattr(b, name):
      raise ValueError(f"cannot merge {type(a).__name__}s with different {name}: "
                       f"{getattr(a, name)} and {getattr(b, name)}")


# ------------------------------------------------------------------------------------ metrics
@dataclasses.dataclass
class Confusion:
  """Video classification counts.

  Attributes:
    counts: ``(C, C) int64``; ``counts[ground truth, predicted]``.
  """

  counts: np.ndarray

  @classmethod
  def empty(cls, num_classes: int) -> "Confusion":
    return cls(np.zeros((num_classes, num_classes), np.int64))

  def add(self, label: int, predicted: int) -> None:
    """Counts one video of class ``label`` predicted as ``predicted``."""
    self.counts[label, predicted] += 1

  def merge(self, other: "Confusion") -> "Confusion":
    if self.counts.shape != other.counts.shape:
      raise ValueError(f"cannot merge Confusions of shapes {self.counts.shape} and "
                       f"{other.counts.shape}")
    return Confusion(self.counts + other.counts)

  def compute(self) -> dict:
    """``videos (C,) int64`` per class, ``accuracy`` (None without videos) and ``class_accuracy
    (C,) float64`` (NaN for classes without videos)."""
    videos = self.counts.sum(axis=1)
    n = int(videos.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
      class_accuracy = np.diag(self.counts) / videos
    return {"videos": videos, "accuracy": float(np.trace(self.counts) / n) if n else None,
            "class_accuracy": class_accuracy}


@dataclasses.dataclass
class CapsuleHitRates:
  """Capsule-protocol hit counts per class (ground-truth label) and IoU threshold.

  Attributes:
    thresholds: the K IoU thresholds.
    frame_hits: ``(C, K) int64`` counted frames with IoU >= threshold.
    frames: ``(C,) int64`` counted frames (non-empty ground-truth mask).
    video_hits: ``(C, K) int64`` videos with video IoU >= threshold.
    videos: ``(C,) int64`` videos with at least one counted frame.
  """

  thresholds: tuple[float, ...]
  frame_hits: np.ndarray
  frames: np.ndarray
  video_hits: np.ndarray
  videos: np.ndarray

  @classmethod
  def empty(cls, num_classes: int, thresholds: Sequence[float]) -> "CapsuleHitRates":
    k = len(thresholds)
    return cls(tuple(thresholds), np.zeros((num_classes, k), np.int64),
               np.zeros((num_classes,), np.int64), np.zeros((num_classes, k), np.int64),
               np.zeros((num_classes,), np.int64))

  def add(self, label: int, inter: np.ndarray, union: np.ndarray) -> float | None:
    """Adds one video's counted frames.

    Args:
      label: the video's class.
      inter: ``(F,) int`` pixel intersections of the F counted frames.
      union: ``(F,) int`` pixel unions (> 0: the ground truth of a counted frame is non-empty).

    Returns:
      The video IoU (sum of intersections / sum of unions), None without counted frames.
    """
    if not len(inter):
      return None
    thr = np.asarray(self.thresholds)
    frame_iou = inter / union
    self.frame_hits[label] += (frame_iou[:, None] >= thr[None, :]).sum(axis=0)
    self.frames[label] += len(inter)
    video_iou = float(inter.sum() / union.sum())
    self.video_hits[label] += video_iou >= thr
    self.videos[label] += 1
    return video_iou

  def merge(self, other: "CapsuleHitRates") -> "CapsuleHitRates":
    _check_same(self, other, ("thresholds",))
    return CapsuleHitRates(self.thresholds, self.frame_hits + other.frame_hits,
                           self.frames + other.frames, self.video_hits + other.video_hits,
                           self.videos + other.videos)

  def compute(self) -> tuple[np.ndarray, np.ndarray]:
    """``(frame hit rate, video hit rate)``, each ``(C, K) float64``, NaN where nothing counted."""
    with np.errstate(invalid="ignore", divide="ignore"):
      return self.frame_hits / self.frames[:, None], self.video_hits / self.videos[:, None]


@dataclasses.dataclass
class FrameAP:
  """ACT frame-AP over per-frame detection and ground-truth boxes.

  One entry per video in each list; a video is its position, so ``merge`` only concatenates. Video
  ids must be unique over everything merged. A video's ground truth has the video's label.

  Attributes:
    num_classes: C.
    thresholds: box IoU thresholds.
    video_ids: the videos' ids.
    labels: the videos' classes.
    detections: per video ``(frame (D,) int32, class (D,) int32, score (D,) float64, box (D, 4))``.
    ground_truth: per video ``(frame (G,) int32, box (G, 4))``; several actors may share a frame.
  """

  num_classes: int
  thresholds: tuple[float, ...]
  video_ids: list[str] = dataclasses.field(default_factory=list)
  labels: list[int] = dataclasses.field(default_factory=list)
  detections: list[tuple] = dataclasses.field(default_factory=list)
  ground_truth: list[tuple] = dataclasses.field(default_factory=list)

  @classmethod
  def empty(cls, num_classes: int, thresholds: Sequence[float]) -> "FrameAP":
    return cls(int(num_classes), tuple(thresholds))

  def add(self, video_id: str, label: int, det_frame: np.ndarray, det_class: np.ndarray,
          det_score: np.ndarray, det_box: np.ndarray, gt_frame: np.ndarray,
          gt_box: np.ndarray) -> None:
    """Adds one video: D detections (frame, class, score, box) and G ground-truth boxes."""
    self.video_ids.append(video_id)
    self.labels.append(int(label))
    self.detections.append((np.asarray(det_frame, np.int32), np.asarray(det_class, np.int32),
                            np.asarray(det_score, np.float64), np.asarray(det_box).reshape(-1, 4)))
    self.ground_truth.append((np.asarray(gt_frame, np.int32), np.asarray(gt_box).reshape(-1, 4)))

  def merge(self, other: "FrameAP") -> "FrameAP":
    _check_same(self, other, ("num_classes", "thresholds"))
    return dataclasses.replace(self, video_ids=self.video_ids + other.video_ids,
                               labels=self.labels + other.labels,
                               detections=self.detections + other.detections,
                               ground_truth=self.ground_truth + other.ground_truth)

  def compute(self) -> np.ndarray:
    """``(C, len(thresholds))`` frame-AP, NaN for classes without ground truth."""
    det = list(zip(*self.detections)) or [()] * 4  # Frames, classes, scores, boxes.
    gt = list(zip(*self.ground_truth)) or [()] * 2  # Frames, boxes.
    det_v = _concat([np.full(len(f), v) for v, f in enumerate(det[0])], np.int64)
    det_f, det_c = _concat(det[0], np.int64), _concat(det[1], np.int64)
    det_s, det_b = _concat(det[2], np.float64), _concat(det[3], np.float64, (0, 4))
    gt_v = _concat([np.full(len(f), v) for v, f in enumerate(gt[0])], np.int64)
    gt_f, gt_b = _concat(gt[0], np.int64), _concat(gt[1], np.float64, (0, 4))
    gt_c = np.asarray(self.labels, np.int64)[gt_v]
    rank = _video_rank(self.video_ids)
    out = np.full((self.num_classes, len(self.thresholds)), np.nan)
    for cls in range(self.num_classes):
      g = gt_c == cls
      if not g.any():
        continue
      d = det_c == cls
      order = metrics.ranking(det_s[d], rank[det_v[d]], det_f[d])
      out[cls] = metrics.frame_ap(np.stack([det_v[d], det_f[d]], 1), det_s[d], det_b[d],
                                  np.stack([gt_v[g], gt_f[g]], 1), gt_b[g], self.thresholds,
                                  order)
    return out


@dataclasses.dataclass
class VideoAP:
  """ACT video-AP over detected and ground-truth tubes.

  One entry per video in each list; a video is its position, so ``merge`` only concatenates. Video
  ids must be unique over everything merged. A video's ground-truth tubes have the video's label.

  Attributes:
    num_classes: C.
    thresholds: tube IoU thresholds.
    video_ids: the videos' ids.
    labels: the videos' classes.
    detections: per video, its ``(class, score, tube)`` detections.
    ground_truth: per video, its ground-truth tubes.
  """

  num_classes: int
  thresholds: tuple[float, ...]
  video_ids: list[str] = dataclasses.field(default_factory=list)
  labels: list[int] = dataclasses.field(default_factory=list)
  detections: list[list[tuple[int, float, metrics.Tube]]] = dataclasses.field(default_factory=list)
  ground_truth: list[list[metrics.Tube]] = dataclasses.field(default_factory=list)

  @classmethod
  def empty(cls, num_classes: int, thresholds: Sequence[float]) -> "VideoAP":
    return cls(int(num_classes), tuple(thresholds))

  def add(self, video_id: str, label: int, detections: Sequence[tuple[int, float, metrics.Tube]],
          gt_tubes: Sequence[metrics.Tube]) -> None:
    """Adds one video: its ``(class, score, tube)`` detections and its ground-truth tubes."""
    self.video_ids.append(video_id)
    self.labels.append(int(label))
    self.detections.append([(int(c), float(s), tube) for c, s, tube in detections])
    self.ground_truth.append(list(gt_tubes))

  def merge(self, other: "VideoAP") -> "VideoAP":
    _check_same(self, other, ("num_classes", "thresholds"))
    return dataclasses.replace(self, video_ids=self.video_ids + other.video_ids,
                               labels=self.labels + other.labels,
                               detections=self.detections + other.detections,
                               ground_truth=self.ground_truth + other.ground_truth)

  def compute(self) -> np.ndarray:
    """``(C, len(thresholds))`` video-AP, NaN for classes without ground-truth tubes."""
    rank = _video_rank(self.video_ids)
    out = np.full((self.num_classes, len(self.thresholds)), np.nan)
    for cls in range(self.num_classes):
      gts = [(v, tube) for v, tubes in enumerate(self.ground_truth) if self.labels[v] == cls
             for tube in tubes]
      if not gts:
        continue
      dets = [(v, s, tube) for v, video in enumerate(self.detections) for c, s, tube in video
              if c == cls]
      det_v = np.array([v for v, _, _ in dets], np.int64)
      det_s = np.array([s for _, s, _ in dets], np.float64)
      order = metrics.ranking(det_s, rank[det_v])
      out[cls] = metrics.video_ap(det_v, det_s, [t for _, _, t in dets], [v for v, _ in gts],
                                  [t for _, t in gts], self.thresholds, order)
    return out


# ---------------------------------------------------------------------------------- evaluator
class Evaluator:
  """Feeds each video's prediction to the four metrics of both protocols; see the module docstring.

  Args:
    num_classes: C.
    class_names: C names (for the report).
    eval_config: ``config.eval`` (mask_threshold, score_rule, video_top_k, iou_thresholds,
      frame_iou_thresholds).
  """

  def __init__(self, num_classes: int, class_names: Sequence[str], eval_config):
    if len(class_names) != num_classes:
      raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    if eval_config.score_rule not in SCORE_RULES:
      raise ConfigError(f"config.eval.score_rule: {eval_config.score_rule!r}; use one of "
                        f"{SCORE_RULES}.")
    if not 1 <= eval_config.video_top_k <= num_classes:
      raise ConfigError(f"config.eval.video_top_k: {eval_config.video_top_k} must be in "
                        f"[1, {num_classes}].")
    for name in ("iou_thresholds", "frame_iou_thresholds"):
      for thr in getattr(eval_config, name, ()):
        if not 0.0 < thr <= 1.0:
          raise ConfigError(f"config.eval.{name}: {thr} must be in (0, 1].")
    if not 0.0 < eval_config.mask_threshold < 1.0:
      raise ConfigError(f"config.eval.mask_threshold: {eval_config.mask_threshold} must be in "
                        "(0, 1).")
    self.num_classes = int(num_classes)
    self.class_names = tuple(class_names)
    self.mask_threshold = float(eval_config.mask_threshold)
    self.score_rule = str(eval_config.score_rule)
    self.top_k = int(eval_config.video_top_k)
    video_thresholds = tuple(float(t) for t in eval_config.iou_thresholds)
    frame_thresholds = tuple(float(t) for t in getattr(eval_config, "frame_iou_thresholds", (0.5,)))
    capsule_thresholds = tuple(sorted(set(CAPSULE_GRID) | set(video_thresholds)
                                      | set(frame_thresholds)))
    self._video_ids: set[str] = set()
    self.confusion = Confusion.empty(self.num_classes)
    self.capsule = CapsuleHitRates.empty(self.num_classes, capsule_thresholds)
    self.frame_ap = FrameAP.empty(self.num_classes, frame_thresholds)
    self.video_ap = VideoAP.empty(self.num_classes, video_thresholds)

  def __len__(self) -> int:
    return len(self._video_ids)

  # ---------------------------------------------------------------- accumulation
  def add(self, record: VideoRecord, mask_probs: np.ndarray, class_probs: np.ndarray) -> dict:
    """Adds one video's prediction.

    Args:
      record: the video with its ground truth.
      mask_probs: ``(T, H, W) float`` foreground probability per pixel.
      class_probs: ``(C,) float`` video class probabilities (or scores).

    Returns:
      The video's small summary row (video_id, label, pred, capsule video IoU, frames counted).

    Raises:
      ValueError naming the video for a shape mismatch, non-finite values or a repeated video id.
    """
    vid = record.video_id
    t, h, w = record.masks.shape
    mask_probs = np.asarray(mask_probs)
    class_probs = np.asarray(class_probs, np.float64)
    if mask_probs.shape != (t, h, w):
      raise ValueError(f"video {vid!r}: predicted mask shape {mask_probs.shape} does not match the "
                       f"video's (T, H, W) = {(t, h, w)}")
    if class_probs.shape != (self.num_classes,):
      raise ValueError(f"video {vid!r}: class probabilities have shape {class_probs.shape}, "
                       f"expected ({self.num_classes},)")
    if not np.isfinite(class_probs).all() or not np.isfinite(mask_probs).all():
      raise ValueError(f"video {vid!r}: the prediction holds NaN or inf")
    if not 0 <= record.label < self.num_classes:
      raise ValueError(f"video {vid!r}: label {record.label} outside [0, {self.num_classes})")
    if vid in self._video_ids:
      raise ValueError(f"video {vid!r} was added twice")
    self._video_ids.add(vid)
    label = int(record.label)

    ranked = np.argsort(-class_probs, kind="stable")
    pred_label = int(ranked[0])
    self.confusion.add(label, pred_label)

    pred = mask_probs >= self.mask_threshold
    gt_masks = record.masks.astype(bool) & np.asarray(record.has_gt, bool)[:, None, None]

    # Capsule protocol: frames with a non-empty ground-truth mask.
    counted = gt_masks.any(axis=(1, 2))
    video_iou = self.capsule.add(label, *metrics.frame_iou_stats(pred[counted], gt_masks[counted]))

    # Detection protocol: one box per frame with a predicted mask, for each of the top-k classes.
    pred_boxes, present = metrics.mask_boxes(pred)
    frames = np.flatnonzero(present)
    if self.score_rule == "class_prob_x_mask_mean":
      sums = np.where(pred, mask_probs, 0).sum(axis=(1, 2), dtype=np.float64)
      counts = pred.sum(axis=(1, 2))
      mask_mean = sums[frames] / counts[frames]
    else:
      mask_mean = np.ones(len(frames))
    top = [int(c) for c in ranked[:self.top_k]]
    tube = metrics.make_tube(pred_boxes)
    tube_dets = [] if tube is None else [
        (c, float(class_probs[c]) * float(np.mean(mask_mean)), tube) for c in top]

    # Detection protocol: ground truth, one row of boxes per actor.
    if record.annotation == "box":
      has_gt = np.asarray(record.has_gt, bool)
      actor_boxes = np.where(has_gt[None, :, None], record.boxes, np.nan).astype(np.float32)
    else:
      actor_boxes = metrics.mask_boxes(gt_masks)[0][None]
    gt_frames = [np.flatnonzero(~np.isnan(boxes).any(axis=1)) for boxes in actor_boxes]
    gt_tubes = [tb for tb in map(metrics.make_tube, actor_boxes) if tb is not None]

    self.frame_ap.add(
        vid, label, np.tile(frames, len(top)), np.repeat(top, len(frames)),
        np.concatenate([float(class_probs[c]) * mask_mean for c in top]),
        np.tile(pred_boxes[frames], (len(top), 1)), _concat(gt_frames, np.int64),
        _concat([boxes[f] for boxes, f in zip(actor_boxes, gt_frames)], np.float32, (0, 4)))
    self.video_ap.add(vid, label, tube_dets, gt_tubes)
    return {"video_id": vid, "label": label, "pred": pred_label, "capsule_video_iou": video_iou,
            "gt_frames": int(counted.sum()), "pred_frames": int(len(frames))}

  def merge(self, other: "Evaluator") -> "Evaluator":
    """A new evaluator holding this one's videos, then ``other``'s (e.g. another process's)."""
    if (other.num_classes, other.class_names) != (self.num_classes, self.class_names):
      raise ValueError("cannot merge evaluators with different classes")
    dup = self._video_ids & other._video_ids
    if dup:
      raise ValueError(f"videos {sorted(dup)[:3]} are in both evaluators")
    merged = copy.copy(self)
    merged._video_ids = self._video_ids | other._video_ids
    merged.confusion = self.confusion.merge(other.confusion)
    merged.capsule = self.capsule.merge(other.capsule)
    merged.frame_ap = self.frame_ap.merge(other.frame_ap)
    merged.video_ap = self.video_ap.merge(other.video_ap)
    return merged

  # ---------------------------------------------------------------- results
  def result(self) -> dict:
    """The report as a JSON-able dict.

    Keys: ``accuracy``, ``capsule/f-mAP@<thr>`` and ``capsule/v-mAP@<thr>`` (thresholds of
    ``iou_thresholds`` and ``frame_iou_thresholds``), ``detection/f-mAP@<thr>`` (frame thresholds),
    ``detection/v-mAP@<thr>`` (iou_thresholds), ``capsule/curve`` (all capsule thresholds),
    ``per_class`` (list of dicts), ``confusion_matrix`` (C x C, rows = ground truth),
    ``excluded_classes`` (no test videos), ``num_videos``, ``num_frames_counted``. A mean over no
    class is None.
    """
    confusion = self.confusion.compute()
    videos_per_class = confusion["videos"]
    present = videos_per_class > 0
    cap_f, cap_v = self.capsule.compute()
    frame_ap, video_ap = self.frame_ap.compute(), self.video_ap.compute()
    capsule_thresholds = self.capsule.thresholds
    frame_thresholds, video_thresholds = self.frame_ap.thresholds, self.video_ap.thresholds
    res: dict = {"num_videos": int(videos_per_class.sum()),
                 "num_frames_counted": int(self.capsule.frames.sum()),
                 "accuracy": confusion["accuracy"]}

    def class_mean(values: np.ndarray) -> float | None:
      values = values[present & ~np.isnan(values)]
      return float(values.mean()) if len(values) else None

    def or_none(x: float) -> float | None:
      return None if math.isnan(x) else float(x)

    reported = sorted(set(video_thresholds) | set(frame_thresholds))
    for thr in reported:
      k = capsule_thresholds.index(thr)
      res[f"capsule/f-mAP@{_fmt_thr(thr)}"] = class_mean(cap_f[:, k])
      res[f"capsule/v-mAP@{_fmt_thr(thr)}"] = class_mean(cap_v[:, k])
    for j, thr in enumerate(frame_thresholds):
      res[f"detection/f-mAP@{_fmt_thr(thr)}"] = class_mean(frame_ap[:, j])
    for j, thr in enumerate(video_thresholds):
      res[f"detection/v-mAP@{_fmt_thr(thr)}"] = class_mean(video_ap[:, j])
    res["capsule/curve"] = {
        "thresholds": list(capsule_thresholds),
        "f-mAP": [class_mean(cap_f[:, k]) for k in range(len(capsule_thresholds))],
        "v-mAP": [class_mean(cap_v[:, k]) for k in range(len(capsule_thresholds))],
    }
    per_class = []
    for cls in range(self.num_classes):
      row = {"class": self.class_names[cls], "videos": int(videos_per_class[cls]),
             "accuracy": or_none(confusion["class_accuracy"][cls]),
             "gt_frames": int(self.capsule.frames[cls])}
      for thr in reported:
        k = capsule_thresholds.index(thr)
        row[f"capsule/frame_hit@{_fmt_thr(thr)}"] = or_none(cap_f[cls, k])
        row[f"capsule/video_hit@{_fmt_thr(thr)}"] = or_none(cap_v[cls, k])
      for j, thr in enumerate(frame_thresholds):
        row[f"detection/frame_AP@{_fmt_thr(thr)}"] = or_none(frame_ap[cls, j])
      for j, thr in enumerate(video_thresholds):
        row[f"detection/video_AP@{_fmt_thr(thr)}"] = or_none(video_ap[cls, j])
      per_class.append(row)
    res["per_class"] = per_class
    res["confusion_matrix"] = self.confusion.counts.tolist()
    res["class_names"] = list(self.class_names)
    res["excluded_classes"] = [self.class_names[i] for i in range(self.num_classes)
                               if not present[i]]
    return res
