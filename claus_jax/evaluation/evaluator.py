"""Streaming evaluation of both metric protocols, accuracy, per-class table and confusion matrix.

``Evaluator.add`` reduces one video's dense prediction to small numbers at once (hit counts, boxes
and tube boxes), so memory grows only with the number of detections, never with frames x pixels.

Protocols (../shared/REFERENCE.md "Evaluation"):
  * ``capsule/...``: the VideoCapsuleNet-family hit rates. Only frames with a non-empty ground-truth
    mask count; predicted mask = prob >= mask_threshold; frame IoU per frame and video IoU = sum of
    intersections / sum of unions; per class (ground-truth label) the fraction of frames / videos with
    IoU >= threshold; f-mAP / v-mAP = class means. The predicted class plays no part.
  * ``detection/...``: ACT-style frame-AP and video-AP. Detections come from the predicted mask: box
    = tight box of the thresholded mask on every frame where it is non-empty, repeated for each of the
    video's top-k classes (``video_top_k``), score by ``score_rule``. One tube per video and top-k
    class. Ground truth: ``record.boxes`` (several actor tubes) for 'box' videos, the tight box of
    the mask on ``has_gt`` frames for 'mask' videos; all ground truth of a video has its label.

Ranking ties: detections are ranked by descending score, then by video id (string order), frame and
class ascending. The order is therefore independent of the order videos were added, so streaming,
merging and batch evaluation agree exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from claus_jax.configlib import ConfigError
from claus_jax.data.record import VideoRecord
from claus_jax.evaluation import metrics

SCORE_RULES = ("class_prob", "class_prob_x_mask_mean")
# Capsule-protocol thresholds: 0.05, 0.10, ..., 0.95 (rounded so 0.3 is the literal 0.3).
CAPSULE_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))


def _fmt_thr(thr: float) -> str:
  return f"{thr:g}"


def _mean_or_none(values) -> float | None:
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


class Evaluator:
  """Accumulates per-video statistics of both protocols; see the module docstring.

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
      raise ConfigError(f"config.eval.mask_threshold: {eval_config.mask_threshold} must be in (0, 1).")
    self.num_classes = int(num_classes)
    self.class_names = tuple(class_names)
    self.mask_threshold = float(eval_config.mask_threshold)
    self.score_rule = str(eval_config.score_rule)
    self.top_k = int(eval_config.video_top_k)
    self.video_thresholds = tuple(float(t) for t in eval_config.iou_thresholds)
    self.frame_thresholds = tuple(float(t) for t in getattr(eval_config, "frame_iou_thresholds",
                                                            (0.5,)))
    self.capsule_thresholds = tuple(sorted(set(CAPSULE_GRID) | set(self.video_thresholds)
                                           | set(self.frame_thresholds)))
    c, k = self.num_classes, len(self.capsule_thresholds)
    self._video_ids: list[str] = []
    self._id_set: set[str] = set()
    self._labels: list[int] = []
    self._rows: list[dict] = []  # Small per-video numbers for the report.
    self.confusion = np.zeros((c, c), np.int64)
    self._cap_frame_hits = np.zeros((c, k), np.int64)
    self._cap_frames = np.zeros((c,), np.int64)
    self._cap_video_hits = np.zeros((c, k), np.int64)
    self._cap_videos = np.zeros((c,), np.int64)
    # Detection protocol, one list entry per video (concatenated at result time).
    self._det_video, self._det_frame, self._det_class = [], [], []
    self._det_score, self._det_box = [], []
    self._gt_video, self._gt_frame, self._gt_box = [], [], []
    self._tubes: list[tuple[int, int, float, metrics.Tube]] = []  # (video, class, score, tube)
    self._gt_tubes: list[tuple[int, metrics.Tube]] = []  # (video, tube); class = video label.

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
    if vid in self._id_set:
      raise ValueError(f"video {vid!r} was added twice")
    v = len(self._video_ids)
    self._video_ids.append(vid)
    self._id_set.add(vid)
    label = int(record.label)
    self._labels.append(label)

    # Classification.
    ranked = np.argsort(-class_probs, kind="stable")
    pred_label = int(ranked[0])
    self.confusion[label, pred_label] += 1

    pred = mask_probs >= self.mask_threshold
    gt_masks = record.masks.astype(bool) & np.asarray(record.has_gt, bool)[:, None, None]

    # Capsule protocol: frames with a non-empty ground-truth mask.
    counted = gt_masks.any(axis=(1, 2))
    inter, union = metrics.frame_iou_stats(pred[counted], gt_masks[counted])
    thr = np.asarray(self.capsule_thresholds)
    video_iou = None
    if counted.any():
      frame_iou = inter / union  # union > 0 since the ground truth is non-empty.
      self._cap_frame_hits[label] += (frame_iou[:, None] >= thr[None, :]).sum(axis=0)
      self._cap_frames[label] += int(counted.sum())
      video_iou = float(inter.sum() / union.sum())
      self._cap_video_hits[label] += video_iou >= thr
      self._cap_videos[label] += 1

    # Detection protocol: predictions.
    pred_boxes, present = metrics.mask_boxes(pred)
    frames = np.flatnonzero(present)
    if self.score_rule == "class_prob_x_mask_mean":
      sums = np.where(pred, mask_probs, 0).sum(axis=(1, 2), dtype=np.float64)
      counts = pred.sum(axis=(1, 2))
      mask_mean = sums[frames] / counts[frames]
    else:
      mask_mean = np.ones(len(frames))
    tube = metrics.make_tube(pred_boxes)
    for cls in ranked[:self.top_k]:
      cls = int(cls)
      p = float(class_probs[cls])
      self._det_video.append(np.full(len(frames), v, np.int32))
      self._det_frame.append(frames.astype(np.int32))
      self._det_class.append(np.full(len(frames), cls, np.int32))
      self._det_score.append(p * mask_mean)
      self._det_box.append(pred_boxes[frames])
      if tube is not None:
        self._tubes.append((v, cls, p * float(np.mean(mask_mean)), tube))

    # Detection protocol: ground truth.
    if record.annotation == "box":
      has_gt = np.asarray(record.has_gt, bool)
      actor_boxes = np.where(has_gt[None, :, None], record.boxes, np.nan).astype(np.float32)
    else:
      gt_boxes, _ = metrics.mask_boxes(gt_masks)
      actor_boxes = gt_boxes[None]
    for boxes in actor_boxes:
      gt_frames = np.flatnonzero(~np.isnan(boxes).any(axis=1))
      self._gt_video.append(np.full(len(gt_frames), v, np.int32))
      self._gt_frame.append(gt_frames.astype(np.int32))
      self._gt_box.append(boxes[gt_frames])
      gt_tube = metrics.make_tube(boxes)
      if gt_tube is not None:
        self._gt_tubes.append((v, gt_tube))

    row = {"video_id": vid, "label": label, "pred": pred_label,
           "capsule_video_iou": video_iou, "gt_frames": int(counted.sum()),
           "pred_frames": int(len(frames))}
    self._rows.append(row)
    return row

  def merge(self, other: "Evaluator") -> "Evaluator":
    """Adds everything ``other`` accumulated (e.g. from another host); returns self."""
    if (other.num_classes, other.capsule_thresholds) != (self.num_classes, self.capsule_thresholds):
      raise ValueError("cannot merge evaluators with different classes or thresholds")
    dup = self._id_set & other._id_set
    if dup:
      raise ValueError(f"videos {sorted(dup)[:3]} are in both evaluators")
    off = len(self._video_ids)
    self._video_ids += other._video_ids
    self._id_set.update(other._id_set)
    self._labels += other._labels
    self._rows += other._rows
    self.confusion += other.confusion
    self._cap_frame_hits += other._cap_frame_hits
    self._cap_frames += other._cap_frames
    self._cap_video_hits += other._cap_video_hits
    self._cap_videos += other._cap_videos
    self._det_video += [a + off for a in other._det_video]
    self._det_frame += other._det_frame
    self._det_class += other._det_class
    self._det_score += other._det_score
    self._det_box += other._det_box
    self._gt_video += [a + off for a in other._gt_video]
    self._gt_frame += other._gt_frame
    self._gt_box += other._gt_box
    self._tubes += [(v + off, c, s, tb) for v, c, s, tb in other._tubes]
    self._gt_tubes += [(v + off, tb) for v, tb in other._gt_tubes]
    return self

  # ---------------------------------------------------------------- results
  def _video_rank(self) -> np.ndarray:
    """Rank of each video id in string order (order-independent tie-break)."""
    order = sorted(range(len(self._video_ids)), key=self._video_ids.__getitem__)
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank

  def _frame_ap(self) -> np.ndarray:
    """``(C, len(frame_thresholds))`` frame-AP, NaN for classes without ground truth."""
    labels = np.asarray(self._labels, np.int64)
    cat = lambda xs, dt, shape=(0,): np.concatenate(xs).astype(dt) if xs else np.zeros(shape, dt)
    det_v, det_f = cat(self._det_video, np.int64), cat(self._det_frame, np.int64)
    det_c, det_s = cat(self._det_class, np.int64), cat(self._det_score, np.float64)
    det_b = cat(self._det_box, np.float64, (0, 4))
    gt_v, gt_f = cat(self._gt_video, np.int64), cat(self._gt_frame, np.int64)
    gt_b = cat(self._gt_box, np.float64, (0, 4))
    gt_c = labels[gt_v]
    rank = self._video_rank()
    out = np.full((self.num_classes, len(self.frame_thresholds)), np.nan)
    for cls in range(self.num_classes):
      g = gt_c == cls
      if not g.any():
        continue
      d = det_c == cls
      order = metrics.ranking(det_s[d], rank[det_v[d]], det_f[d])
      out[cls] = metrics.frame_ap(np.stack([det_v[d], det_f[d]], 1), det_s[d], det_b[d],
                                  np.stack([gt_v[g], gt_f[g]], 1), gt_b[g], self.frame_thresholds,
                                  order)
    return out

  def _video_ap(self) -> np.ndarray:
    """``(C, len(video_thresholds))`` video-AP, NaN for classes without ground-truth tubes."""
    labels = np.asarray(self._labels, np.int64)
    rank = self._video_rank()
    out = np.full((self.num_classes, len(self.video_thresholds)), np.nan)
    for cls in range(self.num_classes):
      gts = [(v, tube) for v, tube in self._gt_tubes if labels[v] == cls]
      if not gts:
        continue
      dets = [(v, s, tube) for v, c, s, tube in self._tubes if c == cls]
      det_v = np.array([v for v, _, _ in dets], np.int64)
      det_s = np.array([s for _, s, _ in dets], np.float64)
      order = metrics.ranking(det_s, rank[det_v])
      out[cls] = metrics.video_ap(det_v, det_s, [t for _, _, t in dets], [v for v, _ in gts],
                                  [t for _, t in gts], self.video_thresholds, order)
    return out

  def result(self) -> dict:
    """The report as a JSON-able dict.

    Keys: ``accuracy``, ``capsule/f-mAP@<thr>`` and ``capsule/v-mAP@<thr>`` (thresholds of
    ``iou_thresholds`` and ``frame_iou_thresholds``), ``detection/f-mAP@<thr>`` (frame thresholds),
    ``detection/v-mAP@<thr>`` (iou_thresholds), ``capsule/curve`` (all capsule thresholds),
    ``per_class`` (list of dicts), ``confusion_matrix`` (C x C, rows = ground truth),
    ``excluded_classes`` (no test videos), ``num_videos``, ``num_frames_counted``. A mean over no
    class is None.
    """
    c = self.num_classes
    videos_per_class = self.confusion.sum(axis=1)
    present = videos_per_class > 0
    n = int(videos_per_class.sum())
    res: dict = {"num_videos": n, "num_frames_counted": int(self._cap_frames.sum())}
    res["accuracy"] = float(np.trace(self.confusion) / n) if n else None
    with np.errstate(invalid="ignore", divide="ignore"):
      cap_f = self._cap_frame_hits / self._cap_frames[:, None]  # NaN where no frames.
      cap_v = self._cap_video_hits / self._cap_videos[:, None]
    frame_ap = self._frame_ap()
    video_ap = self._video_ap()

    def class_mean(values: np.ndarray) -> float | None:
      values = values[present & ~np.isnan(values)]
      return float(values.mean()) if len(values) else None

    reported = sorted(set(self.video_thresholds) | set(self.frame_thresholds))
    for thr in reported:
      k = self.capsule_thresholds.index(thr)
      res[f"capsule/f-mAP@{_fmt_thr(thr)}"] = class_mean(cap_f[:, k])
      res[f"capsule/v-mAP@{_fmt_thr(thr)}"] = class_mean(cap_v[:, k])
    for j, thr in enumerate(self.frame_thresholds):
      res[f"detection/f-mAP@{_fmt_thr(thr)}"] = class_mean(frame_ap[:, j])
    for j, thr in enumerate(self.video_thresholds):
      res[f"detection/v-mAP@{_fmt_thr(thr)}"] = class_mean(video_ap[:, j])
    res["capsule/curve"] = {
        "thresholds": list(self.capsule_thresholds),
        "f-mAP": [class_mean(cap_f[:, k]) for k in range(len(self.capsule_thresholds))],
        "v-mAP": [class_mean(cap_v[:, k]) for k in range(len(self.capsule_thresholds))],
    }
    nan_to_none = lambda x: None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)
    per_class = []
    for cls in range(c):
      row = {"class": self.class_names[cls], "videos": int(videos_per_class[cls]),
             "accuracy": (float(self.confusion[cls, cls] / videos_per_class[cls])
                          if present[cls] else None),
             "gt_frames": int(self._cap_frames[cls])}
      for thr in reported:
        k = self.capsule_thresholds.index(thr)
        row[f"capsule/frame_hit@{_fmt_thr(thr)}"] = nan_to_none(cap_f[cls, k])
        row[f"capsule/video_hit@{_fmt_thr(thr)}"] = nan_to_none(cap_v[cls, k])
      for j, thr in enumerate(self.frame_thresholds):
        row[f"detection/frame_AP@{_fmt_thr(thr)}"] = nan_to_none(frame_ap[cls, j])
      for j, thr in enumerate(self.video_thresholds):
        row[f"detection/video_AP@{_fmt_thr(thr)}"] = nan_to_none(video_ap[cls, j])
      per_class.append(row)
    res["per_class"] = per_class
    res["confusion_matrix"] = self.confusion.tolist()
    res["class_names"] = list(self.class_names)
    res["excluded_classes"] = [self.class_names[i] for i in range(c) if not present[i]]
    return res

  def markdown(self, result: dict | None = None) -> str:
    """The report as Markdown: summary, per-class table, confusion matrix."""
    return to_markdown(self.result() if result is None else result)


def _cell(x) -> str:
  if x is None:
    return "-"
  if isinstance(x, float):
    return f"{100 * x:.1f}"
  return str(x)


def to_markdown(res: dict) -> str:
  """Markdown of an :meth:`Evaluator.result` dict (percentages with one decimal)."""
  lines = [f"**Videos:** {res['num_videos']}  **Frames with ground truth:** "
           f"{res['num_frames_counted']}  **Accuracy:** {_cell(res['accuracy'])}%", ""]
  metric_keys = [k for k in res if k.startswith(("capsule/f-mAP@", "capsule/v-mAP@", "detection/"))]
  thresholds = sorted({float(k.split("@")[1]) for k in metric_keys})
  lines.append("| metric (%) | " + " | ".join(f"@{_fmt_thr(t)}" for t in thresholds) + " |")
  lines.append("|---|" + "---|" * len(thresholds))
  for name in ("capsule/f-mAP", "capsule/v-mAP", "detection/f-mAP", "detection/v-mAP"):
    lines.append(f"| {name} | " + " | ".join(
        _cell(res.get(f"{name}@{_fmt_thr(t)}")) for t in thresholds) + " |")
  lines.append("")
  lines.append("capsule = hit rate of frame/video mask IoU (VideoCapsuleNet/CLAUS tables); "
               "detection = ACT frame-AP / video-AP of mask-derived boxes.")
  if res["excluded_classes"]:
    lines.append("")
    lines.append("Excluded from the means (no test videos): " + ", ".join(res["excluded_classes"]))
  lines.append("")
  per_class = res["per_class"]
  cols = [k for k in per_class[0] if k != "class"] if per_class else []
  lines.append("| class | " + " | ".join(cols) + " |")
  lines.append("|---|" + "---|" * len(cols))
  for row in per_class:
    lines.append(f"| {row['class']} | " + " | ".join(
        str(row[k]) if k in ("videos", "gt_frames") else _cell(row[k]) for k in cols) + " |")
  lines.append("")
  names = res["class_names"]
  lines.append("Confusion matrix (rows: ground truth, columns: predicted)")
  lines.append("")
  lines.append("| gt \\ pred | " + " | ".join(str(i) for i in range(len(names))) + " |")
  lines.append("|---|" + "---|" * len(names))
  for i, row in enumerate(res["confusion_matrix"]):
    lines.append(f"| {i} {names[i]} | " + " | ".join(str(x) for x in row) + " |")
  return "\n".join(lines) + "\n"
