"""Tests of claus_jax.evaluation: hand-worked AP cases, both protocols, streaming, inference."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from claus_jax import configlib, evaluation, reporting, tiling
from claus_jax.data.record import VideoRecord
from claus_jax.evaluation import evaluator, metrics
from tests import xla_flags


def eval_config(**overrides):
  cfg = configlib.base_config().eval
  cfg.unlock()
  cfg.update(overrides)
  return cfg


def box_mask(t, h, w, box, frames):
  """(T, H, W) uint8 mask with the inclusive box (x1, y1, x2, y2) filled on ``frames``."""
  m = np.zeros((t, h, w), np.uint8)
  x1, y1, x2, y2 = box
  for f in frames:
    m[f, y1:y2 + 1, x1:x2 + 1] = 1
  return m


def make_record(video_id, label, masks, has_gt=None, boxes=None, annotation="mask"):
  t, h, w = masks.shape
  has_gt = masks.any(axis=(1, 2)) if has_gt is None else np.asarray(has_gt, bool)
  if boxes is None:
    b, _ = metrics.mask_boxes(masks)
    boxes = b[None]
  return VideoRecord(video_id=video_id, group_id="g", label=label,
                     frames=np.zeros((t, h, w, 3), np.uint8), masks=masks,
                     boxes=np.asarray(boxes, np.float32), has_gt=has_gt, span=(0, t),
                     annotation=annotation).validate()


# ------------------------------------------------------------------ boxes, IoU, AP
def test_box_iou_uses_the_plus_one_convention():
  assert metrics.box_area(np.array([3, 3, 3, 3])) == 1.0
  np.testing.assert_allclose(metrics.box_iou([[0, 0, 9, 9]], [[0, 0, 9, 4]]), [[0.5]])
  np.testing.assert_allclose(metrics.box_iou([[10, 10, 19, 19]], [[15, 15, 24, 24]]), [[25 / 175]])
  np.testing.assert_allclose(metrics.box_iou([[0, 0, 9, 9]], [[10, 0, 19, 9]]), [[0.0]])


def test_mask_boxes_touching_the_image_border():
  m = np.zeros((4, 5, 6), bool)
  m[0] = True  # Whole frame.
  m[1, 4, 5] = True  # Bottom-right corner pixel.
  m[2, 0, 0] = True  # Top-left corner pixel.
  m[2, 4, 2] = True
  boxes, present = metrics.mask_boxes(m)
  np.testing.assert_array_equal(present, [1, 1, 1, 0])
  np.testing.assert_array_equal(boxes[:3], [[0, 0, 5, 4], [5, 4, 5, 4], [0, 0, 2, 4]])
  assert np.isnan(boxes[3]).all()
  assert metrics.box_area(boxes[0]) == 30 and metrics.box_area(boxes[1]) == 1
  assert metrics.box_iou(boxes[:1], boxes[:1])[0, 0] == 1.0


def test_border_boxes_give_perfect_scores_through_the_evaluator():
  t, h, w = 3, 6, 7
  masks = np.zeros((t, h, w), np.uint8)
  masks[0] = 1
  masks[1, :, w - 2:] = 1
  masks[2, h - 1, :] = 1
  ev = evaluation.Evaluator(1, ["a"], eval_config())
  ev.add(make_record("v", 0, masks), masks.astype(np.float32), np.array([1.0]))
  res = ev.result()
  assert res["detection/f-mAP@0.5"] == 1.0 and res["detection/v-mAP@0.5"] == 1.0
  assert res["capsule/f-mAP@0.5"] == 1.0


def test_average_precision_trapezoid_from_recall_zero_precision_one():
  # One TP then one FP with 2 positives: (0,1) -> (.5,1) -> (.5,.5): area 0.5.
  assert metrics.average_precision(np.array([1, 0], bool), 2) == 0.5
  # FP first: (0,1) -> (0,0) -> (1,.5): area 1 * (0 + .5) / 2.
  assert metrics.average_precision(np.array([0, 1], bool), 1) == 0.25
  assert metrics.average_precision(np.zeros(0, bool), 3) == 0.0
  assert metrics.average_precision(np.ones(4, bool), 4) == 1.0


# Hand-worked frame-AP case (two classes; ties, a duplicate, a miss, a false positive on a frame
# without ground truth). Keys are (video, frame).
#   class 0 ground truth: g1 (0,0) [0,0,9,9]; g2 (0,1) [0,0,9,9]; g3 (1,0) [10,10,19,19].
#   class 0 detections in input order:
#     d1 (0,0) [0,0,9,9]     0.9  IoU 1 with g1            -> TP
#     d2 (0,0) [0,0,9,9]     0.8  duplicate of d1, g1 used -> FP
#     d3 (1,5) [0,0,9,9]     0.8  frame without ground truth -> FP (tie with d2: input order)
#     d4 (0,1) [0,0,9,4]     0.7  IoU 50/100 = 0.5 with g2 -> TP at 0.5 (>=)
#     d5 (1,0) [15,15,24,24] 0.7  IoU 25/175 = 0.143 with g3 -> FP at 0.5, TP at 0.1
#   At 0.5: TP FP FP TP FP; precision 1, 1/2, 1/3, 1/2, 2/5; recall 1/3, 1/3, 1/3, 2/3, 2/3.
#     AP = 1/3 * (1 + 1)/2 + 1/3 * (1/3 + 1/2)/2 = 1/3 + 5/36 = 17/36.
#     (With d5 ranked before d4 it would be 1/3 + 1/3 * (1/4 + 2/5)/2 = 53/120.)
#   At 0.1: TP FP FP TP TP; AP = 1/3 + 5/36 + 1/3 * (1/2 + 3/5)/2 = 59/90.
#   class 1 ground truth: h1 (2,0) [5,5,14,14]; detections: e1 (0,0) [0,0,9,9] 0.95 (no class-1
#     ground truth there) -> FP; e2 (2,0) [5,5,14,14] 0.6 -> TP.
#     FP TP: (0,1) -> (0,0) -> (1,1/2): AP = 1 * (0 + 1/2)/2 = 1/4.
CLASS0_GT = ([[0, 0], [0, 1], [1, 0]], [[0, 0, 9, 9], [0, 0, 9, 9], [10, 10, 19, 19]])
CLASS0_DET = ([[0, 0], [0, 0], [1, 5], [0, 1], [1, 0]], [0.9, 0.8, 0.8, 0.7, 0.7],
              [[0, 0, 9, 9], [0, 0, 9, 9], [0, 0, 9, 9], [0, 0, 9, 4], [15, 15, 24, 24]])


def test_hand_worked_frame_ap_two_classes():
  (gk, gb), (dk, ds, db) = CLASS0_GT, CLASS0_DET
  ap0 = metrics.frame_ap(dk, ds, db, gk, gb, [0.5, 0.1])
  np.testing.assert_allclose(ap0, [17 / 36, 59 / 90], rtol=1e-12)
  ap1 = metrics.frame_ap([[0, 0], [2, 0]], [0.95, 0.6], [[0, 0, 9, 9], [5, 5, 14, 14]],
                         [[2, 0]], [[5, 5, 14, 14]], [0.5])
  np.testing.assert_allclose(ap1, [0.25])
  # The f-mAP over the two classes.
  np.testing.assert_allclose((ap0[0] + ap1[0]) / 2, 13 / 36)
  # The tie order is part of the result: ranking d5 before d4 gives the other value.
  order = np.array([0, 1, 2, 4, 3])
  np.testing.assert_allclose(metrics.frame_ap(dk, ds, db, gk, gb, [0.5], order), [53 / 120])


def test_greedy_match_takes_the_highest_iou_unmatched_ground_truth():
  # Two ground truths in one frame; the first detection overlaps both but matches the better one,
  # so the second detection still finds the other.
  gk, gb = [[0, 0], [0, 0]], [[0, 0, 9, 9], [0, 0, 9, 5]]
  dk, ds, db = [[0, 0], [0, 0]], [0.9, 0.8], [[0, 0, 9, 6], [0, 0, 9, 9]]
  # IoU(d1, g1) = 70/100, IoU(d1, g2) = 60/70 -> d1 takes g2; d2 takes g1 with IoU 1.
  np.testing.assert_allclose(metrics.frame_ap(dk, ds, db, gk, gb, [0.8]), [1.0])


def test_tube_iou_with_partial_temporal_overlap():
  a = metrics.Tube(0, np.tile(np.float32([0, 0, 9, 9]), (10, 1)))  # Frames 0..9.
  b = metrics.Tube(5, np.tile(np.float32([0, 0, 9, 4]), (10, 1)))  # Frames 5..14, spatial IoU 0.5.
  # Temporal IoU 5/15, mean spatial IoU 0.5.
  assert metrics.tube_iou(a, b) == pytest.approx(1 / 6)
  assert metrics.tube_iou(b, a) == pytest.approx(1 / 6)
  gap = a.boxes.copy()
  gap[7] = np.nan  # A gap inside the overlap counts IoU 0 there: mean (0.5 * 4 + 0) / 5 = 0.4.
  assert metrics.tube_iou(metrics.Tube(0, gap), b) == pytest.approx(0.4 / 3)
  c = metrics.Tube(20, a.boxes[:3])
  assert metrics.tube_iou(a, c) == 0.0
  assert metrics.tube_iou(a, a) == 1.0


def test_make_tube_trims_to_the_first_and_last_box():
  boxes = np.full((6, 4), np.nan, np.float32)
  boxes[1] = boxes[4] = [0, 0, 1, 1]
  tube = metrics.make_tube(boxes)
  assert (tube.start, tube.end) == (1, 4) and np.isnan(tube.boxes[1:3]).all()
  assert metrics.make_tube(np.full((3, 4), np.nan)) is None


# ------------------------------------------------------------------ metric objects
def whole_and_merged(empty, calls, k):
  """A metric fed every call, and the merge of one fed ``calls[:k]`` with one fed the rest."""
  whole, first, second = empty(), empty(), empty()
  for i, args in enumerate(calls):
    whole.add(*args)
    (first if i < k else second).add(*args)
  return whole, first.merge(second)


def test_confusion_merge_of_two_halves_equals_adding_all():
  calls = [(0, 0), (0, 1), (1, 1), (2, 1), (0, 0)]  # (ground truth, predicted); no class 3 video.
  whole, merged = whole_and_merged(lambda: evaluator.Confusion.empty(4), calls, 2)
  np.testing.assert_array_equal(merged.counts, whole.counts)
  np.testing.assert_array_equal(whole.counts, [[2, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0] * 4])
  res = merged.compute()
  assert res["accuracy"] == 3 / 5
  np.testing.assert_array_equal(res["videos"], [3, 1, 1, 0])
  np.testing.assert_array_equal(res["class_accuracy"], [2 / 3, 1, 0, np.nan])


def test_capsule_hit_rates_merge_of_two_halves_equals_adding_all():
  # (label, intersections, unions) of the counted frames; frame IoUs: class 0 .5, 1 | 0, 1 (video
  # IoUs 6/8 and 2/6), class 1 .25 (video .25); the class 2 video has no counted frame.
  calls = [(0, np.array([2, 4]), np.array([4, 4])), (0, np.array([0, 2]), np.array([4, 2])),
           (1, np.array([2]), np.array([8])), (2, np.zeros(0, int), np.zeros(0, int))]
  empty = lambda: evaluator.CapsuleHitRates.empty(3, (0.25, 0.5))
  whole, merged = whole_and_merged(empty, calls, 1)
  for name in ("frame_hits", "frames", "video_hits", "videos"):
    np.testing.assert_array_equal(getattr(merged, name), getattr(whole, name))
  frame_rate, video_rate = merged.compute()
  np.testing.assert_array_equal(frame_rate, [[3 / 4, 3 / 4], [1, 0], [np.nan, np.nan]])
  np.testing.assert_array_equal(video_rate, [[1, 1 / 2], [1, 0], [np.nan, np.nan]])
  assert empty().add(*calls[0]) == 0.75 and empty().add(*calls[3]) is None


def test_frame_ap_merge_of_two_halves_equals_adding_all():
  # The hand-worked case above as three videos (id, label, detections, ground truth); class 2 has
  # no ground truth. Detections (frame, class, score, box): v0 holds d1, d2, d4 and e1, v1 holds
  # d3 and d5, v2 holds e2; the ties d2/d3 and d4/d5 go to the smaller video id, as in the case.
  b = [0, 0, 9, 9]
  calls = [("v0", 0, [0, 0, 1, 0], [0, 0, 0, 1], [0.9, 0.8, 0.7, 0.95],
            [b, b, [0, 0, 9, 4], b], [0, 1], [b, b]),
           ("v1", 0, [5, 0], [0, 0], [0.8, 0.7], [b, [15, 15, 24, 24]], [0], [[10, 10, 19, 19]]),
           ("v2", 1, [0], [1], [0.6], [[5, 5, 14, 14]], [0], [[5, 5, 14, 14]])]
  empty = lambda: evaluator.FrameAP.empty(3, (0.5, 0.1))
  whole, merged = whole_and_merged(empty, calls, 1)
  ap = whole.compute()
  np.testing.assert_allclose(ap[:2], [[17 / 36, 59 / 90], [1 / 4, 1 / 4]], rtol=1e-12)
  assert np.isnan(ap[2]).all()
  np.testing.assert_array_equal(merged.compute(), ap)
  # Merging the other way round orders the videos differently; ties still go by video id.
  first, second = empty(), empty()
  first.add(*calls[0])
  for call in calls[1:]:
    second.add(*call)
  np.testing.assert_array_equal(second.merge(first).compute(), ap)
  with pytest.raises(ValueError, match="thresholds"):
    empty().merge(evaluator.FrameAP.empty(3, (0.5,)))


def test_video_ap_merge_of_two_halves_equals_adding_all():
  # test_detection_protocol_by_hand's tubes: a and b (class 0) found with tube IoU 1 and 0.5, c
  # (class 1) found but classified as 0; d (class 2) has no tube at all.
  tube = lambda start, stop, box: metrics.Tube(start, np.tile(np.float32(box), (stop - start, 1)))
  small, big = [0, 0, 3, 3], [4, 4, 7, 7]
  calls = [("a", 0, [(0, 0.9, tube(0, 4, small))], [tube(0, 4, small)]),
           ("b", 0, [(0, 0.8, tube(2, 4, small))], [tube(0, 4, small)]),
           ("c", 1, [(0, 0.7, tube(0, 4, big))], [tube(0, 4, big)]),
           ("d", 2, [], [])]
  whole, merged = whole_and_merged(lambda: evaluator.VideoAP.empty(3, (0.5, 0.6)), calls, 2)
  ap = whole.compute()
  np.testing.assert_allclose(ap[:2], [[1.0, 0.5], [0.0, 0.0]], rtol=1e-12)
  assert np.isnan(ap[2]).all()
  np.testing.assert_array_equal(merged.compute(), ap)


# ------------------------------------------------------------------ capsule protocol
def test_capsule_protocol_on_hand_built_masks():
  t, h, w = 3, 4, 4
  # Video a (class 0): f0 gt 4 px, pred 2 of them: IoU 2/4; f1 exact: IoU 1; f2 no ground truth
  # but a predicted mask (not counted). Video IoU (2 + 4) / (4 + 4) = 0.75.
  gt_a = np.zeros((t, h, w), np.uint8)
  gt_a[0, 0, :] = 1
  gt_a[1, 1, :] = 1
  pred_a = np.zeros((t, h, w), np.float32)
  pred_a[0, 0, :2] = 0.9
  pred_a[1, 1, :] = 0.5  # Exactly the threshold counts as foreground.
  pred_a[2] = 1.0
  # Video b (class 0): f0 gt 4 px, empty prediction: IoU 0; f1 gt 2 px exact: IoU 1. Video 2/6.
  gt_b = np.zeros((t, h, w), np.uint8)
  gt_b[0, 2, :] = 1
  gt_b[1, 3, :2] = 1
  pred_b = np.zeros((t, h, w), np.float32)
  pred_b[0, 2, :] = 0.49
  pred_b[1, 3, :2] = 1.0
  # Video c (class 1): f0 gt 8 px, pred 2 px inside: IoU 0.25 (frame and video).
  gt_c = np.zeros((1, h, w), np.uint8)
  gt_c[0, :2, :] = 1
  pred_c = np.zeros((1, h, w), np.float32)
  pred_c[0, 0, :2] = 1.0
  cfg = eval_config(iou_thresholds=(0.2, 0.25, 0.3, 0.5))
  ev = evaluation.Evaluator(3, ["zero", "one", "two"], cfg)
  ev.add(make_record("a", 0, gt_a), pred_a, np.array([0.6, 0.3, 0.1]))
  ev.add(make_record("b", 0, gt_b), pred_b, np.array([0.1, 0.8, 0.1]))
  ev.add(make_record("c", 1, gt_c), pred_c, np.array([0.2, 0.7, 0.1]))
  res = ev.result()
  # Class 0 frame IoUs 0.5, 1, 0, 1; video IoUs 0.75, 1/3. Class 1: 0.25 and 0.25.
  assert res["capsule/f-mAP@0.5"] == pytest.approx((3 / 4 + 0) / 2)
  assert res["capsule/v-mAP@0.5"] == pytest.approx((1 / 2 + 0) / 2)
  assert res["capsule/f-mAP@0.25"] == pytest.approx((3 / 4 + 1) / 2)
  assert res["capsule/f-mAP@0.2"] == pytest.approx((3 / 4 + 1) / 2)
  assert res["capsule/v-mAP@0.3"] == pytest.approx((1 + 0) / 2)
  assert res["capsule/v-mAP@0.25"] == pytest.approx((1 + 1) / 2)
  curve = res["capsule/curve"]
  assert curve["f-mAP"][curve["thresholds"].index(0.95)] == pytest.approx((2 / 4 + 0) / 2)
  assert res["num_frames_counted"] == 5
  # Accuracy is separate: a and c are right, b is wrong.
  assert res["accuracy"] == pytest.approx(2 / 3)
  assert res["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
  assert res["excluded_classes"] == ["two"]
  assert res["per_class"][2]["accuracy"] is None
  md = reporting.to_markdown(res)
  assert "Excluded from the means (no test videos): two" in md and "| 0 zero | 1 | 1 | 0 |" in md


# ------------------------------------------------------------------ detection protocol, end to end
def three_videos(prob_a=1.0, prob_b=1.0, prob_c=1.0):
  """Videos a, b (class 0) and c (class 1), T=4 at 8x8 (see test_detection_protocol_by_hand)."""
  t, h, w = 4, 8, 8
  gt_a = box_mask(t, h, w, (0, 0, 3, 3), range(4))
  gt_b = box_mask(t, h, w, (0, 0, 3, 3), range(4))
  gt_c = box_mask(t, h, w, (4, 4, 7, 7), range(4))
  return [
      (make_record("a", 0, gt_a), gt_a * np.float32(prob_a), np.array([0.9, 0.1])),
      # b is predicted on frames 2..3 only: tube IoU = temporal 2/4 x spatial 1 = 0.5.
      (make_record("b", 0, gt_b), box_mask(t, h, w, (0, 0, 3, 3), [2, 3]) * np.float32(prob_b),
       np.array([0.8, 0.2])),
      # c is localised perfectly but classified as class 0.
      (make_record("c", 1, gt_c), gt_c * np.float32(prob_c), np.array([0.7, 0.3])),
  ]


def run(videos, **cfg):
  ev = evaluation.Evaluator(2, ["zero", "one"], eval_config(**cfg))
  for rec, m, c in videos:
    ev.add(rec, m, c)
  return ev.result()


def test_detection_protocol_by_hand():
  res = run(three_videos(), iou_thresholds=(0.5, 0.6))
  # Video-AP class 0: a (0.9) TP, b (0.8) TP at 0.5, c (0.7) FP -> AP 1; at 0.6 b is a FP:
  #   TP FP FP with 2 positives -> 1/2. Class 1 has one ground-truth tube and no detection -> 0.
  assert res["detection/v-mAP@0.5"] == pytest.approx(0.5)
  assert res["detection/v-mAP@0.6"] == pytest.approx(0.25)
  # Frame-AP class 0: 8 ground-truth boxes; a's 4 TPs, b's 2 TPs, then c's 4 FPs -> 6/8.
  assert res["detection/f-mAP@0.5"] == pytest.approx((0.75 + 0) / 2)
  assert res["per_class"][0]["detection/frame_AP@0.5"] == pytest.approx(0.75)
  assert res["per_class"][1]["detection/video_AP@0.5"] == 0.0
  assert res["accuracy"] == pytest.approx(2 / 3)


def test_detection_protocol_top_k_two():
  res = run(three_videos(), iou_thresholds=(0.5,), video_top_k=2)
  # Class 1 now gets c's tube (0.3, TP) ranked before a's (0.1) and b's (0.2) FPs -> AP 1.
  assert res["detection/v-mAP@0.5"] == pytest.approx(1.0)
  assert res["detection/f-mAP@0.5"] == pytest.approx((0.75 + 1.0) / 2)


def test_score_rule_class_prob_times_mask_mean():
  # Scores become a 0.9 * 0.6 = 0.54, b 0.8 * 1.0, c 0.7 * 1.0: ranked b (FP at 0.6), c (FP), a (TP).
  # Precision 0, 0, 1/3 at recall 0, 0, 1/2 -> AP = 1/2 * (0 + 1/3)/2 = 1/12.
  videos = three_videos(prob_a=0.6)
  res = run(videos, iou_thresholds=(0.6,), score_rule="class_prob_x_mask_mean")
  assert res["per_class"][0]["detection/video_AP@0.6"] == pytest.approx(1 / 12)
  res = run(videos, iou_thresholds=(0.6,))
  assert res["per_class"][0]["detection/video_AP@0.6"] == pytest.approx(1 / 2)


def test_box_ground_truth_with_two_actor_tubes():
  t, h, w = 4, 8, 8
  boxes = np.full((2, t, 4), np.nan, np.float32)
  boxes[0, :] = [0, 0, 3, 3]
  boxes[1, 1:3] = [4, 4, 7, 7]
  masks = box_mask(t, h, w, (0, 0, 3, 3), range(4)) | box_mask(t, h, w, (4, 4, 7, 7), [1, 2])
  rec = make_record("v", 0, masks, has_gt=np.ones(t, bool), boxes=boxes, annotation="box")
  pred = box_mask(t, h, w, (0, 0, 3, 3), range(4)).astype(np.float32)  # Finds actor 0 only.
  ev = evaluation.Evaluator(1, ["a"], eval_config())
  ev.add(rec, pred, np.array([1.0]))
  res = ev.result()
  assert res["detection/f-mAP@0.5"] == pytest.approx(4 / 6)  # 4 TPs of 6 ground-truth boxes.
  assert res["detection/v-mAP@0.5"] == pytest.approx(1 / 2)  # 1 of 2 tubes.


def random_videos(num, num_classes, seed, t_range=(3, 9), hw=(8, 10)):
  """Random moving-box videos with noisy predictions (for streaming / perfect / empty checks)."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(num):
    t = int(rng.integers(*t_range))
    h, w = hw
    masks = np.zeros((t, h, w), np.uint8)
    has_gt = rng.random(t) < 0.8
    for f in np.flatnonzero(has_gt):
      x, y = rng.integers(0, w - 3), rng.integers(0, h - 3)
      masks[f, y:y + 3, x:x + int(rng.integers(1, 4))] = 1
    label = int(rng.integers(num_classes))
    rec = make_record(f"vid{i:02d}", label, masks, has_gt=has_gt)
    probs = np.clip(masks + rng.normal(0, rng.uniform(0.05, 0.3), masks.shape), 0, 1)
    probs = probs.astype(np.float32)
    cls = rng.dirichlet(np.ones(num_classes))
    cls = np.round(cls, 1)  # Coarse scores so ties across videos happen.
    out.append((rec, probs, cls))
  return out


def test_perfect_and_empty_predictions():
  videos = random_videos(6, 3, seed=1)
  ev = evaluation.Evaluator(3, ["a", "b", "c"], eval_config())
  empty = evaluation.Evaluator(3, ["a", "b", "c"], eval_config())
  for rec, _, _ in videos:
    onehot = np.eye(3)[rec.label]
    ev.add(rec, rec.masks.astype(np.float32), onehot)
    empty.add(rec, np.zeros(rec.masks.shape, np.float32), np.roll(onehot, 1))
  res, res0 = ev.result(), empty.result()
  metric_keys = [k for k in res if k.startswith(("capsule/f-", "capsule/v-", "detection/"))]
  assert len(metric_keys) == 2 * 4 + 4 + 1
  for k in metric_keys + ["accuracy"]:
    assert res[k] == 1.0, k
    assert res0[k] == 0.0, k


def test_streaming_equals_batch_evaluation():
  videos = random_videos(10, 3, seed=2)
  cfg = eval_config(video_top_k=2, score_rule="class_prob_x_mask_mean")
  one = evaluation.Evaluator(3, ["a", "b", "c"], cfg)
  for v in videos:
    one.add(*v)
  # Another split and order: two evaluators fed in reverse order, then merged.
  first = evaluation.Evaluator(3, ["a", "b", "c"], cfg)
  second = evaluation.Evaluator(3, ["a", "b", "c"], cfg)
  for v in videos[::-1][:4]:
    first.add(*v)
  for v in videos[::-1][4:]:
    second.add(*v)
  merged = first.merge(second)
  r1, r2 = one.result(), merged.result()
  assert r1 == r2
  # Capsule numbers and accuracy against an independent batch computation.
  thr = 0.5
  frame_hits, frames, video_hits, nvid = np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(3)
  correct = 0
  for rec, probs, cls in videos:
    gt = rec.masks.astype(bool)
    pred = probs >= 0.5
    keep = gt.any(axis=(1, 2))
    inter = (gt & pred)[keep].sum(axis=(1, 2))
    union = (gt | pred)[keep].sum(axis=(1, 2))
    frame_hits[rec.label] += np.sum(inter / union >= thr)
    frames[rec.label] += keep.sum()
    if keep.any():
      video_hits[rec.label] += inter.sum() / union.sum() >= thr
      nvid[rec.label] += 1
    correct += int(np.argmax(cls) == rec.label)
  present = nvid > 0
  frames[frames == 0] = nvid[nvid == 0] = 1  # Absent classes are dropped by `present` anyway.
  assert r1["capsule/f-mAP@0.5"] == pytest.approx(np.mean((frame_hits / frames)[present]))
  assert r1["capsule/v-mAP@0.5"] == pytest.approx(np.mean((video_hits / nvid)[present]))
  assert r1["accuracy"] == pytest.approx(correct / len(videos))
  assert 0 < r1["detection/f-mAP@0.5"] < 1  # Not a degenerate case.


def test_errors_name_the_video():
  rec, probs, cls = random_videos(1, 2, seed=3)[0]
  ev = evaluation.Evaluator(2, ["a", "b"], eval_config())
  with pytest.raises(ValueError, match="vid00.*does not match"):
    ev.add(rec, probs[:-1], cls)
  with pytest.raises(ValueError, match="vid00.*class probabilities"):
    ev.add(rec, probs, np.ones(3))
  ev.add(rec, probs, cls)
  with pytest.raises(ValueError, match="vid00.*twice"):
    ev.add(rec, probs, cls)
  with pytest.raises(configlib.ConfigError, match="score_rule"):
    evaluation.Evaluator(2, ["a", "b"], eval_config(score_rule="mean"))


def test_result_is_json_able():
  import json
  res = run(three_videos())
  assert json.loads(json.dumps(res)) == res


# ------------------------------------------------------------------ inference
def index_video(t, h=4, w=5, label=0, c=3):
  """A video whose pixels hold their frame index (channel 0) and label (channel 1)."""
  frames = np.zeros((t, h, w, 3), np.uint8)
  frames[..., 0] = np.arange(t)[:, None, None]
  frames[..., 1] = label
  masks = np.zeros((t, h, w), np.uint8)
  masks[:, 1:3, 1:4] = 1
  frames[..., 2] = 200 * masks
  return VideoRecord(video_id=f"idx{t}", group_id="g", label=label, frames=frames, masks=masks,
                     boxes=metrics.mask_boxes(masks)[0][None], has_gt=np.ones(t, bool),
                     span=(0, t), annotation="mask")


@jax.jit
def frame_index_predict_fn(video):
  """seg logit = frame index / 10 - 2 per pixel; class scores = (mean clip frame index, 1, 0)."""
  idx = video[..., 0].astype(jnp.float32)
  mean_idx = idx.mean(axis=(1, 2, 3))
  return idx / 10.0 - 2.0, jnp.stack([mean_idx, jnp.ones_like(mean_idx), 0 * mean_idx], axis=1)


@pytest.mark.parametrize("t", [1, 7, 16, 21, 33])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_predict_video_maps_clip_outputs_to_their_frames(t, batch_size):
  rec = index_video(t)
  mask_probs, class_probs = evaluation.predict_video(frame_index_predict_fn, rec, batch_size)
  assert mask_probs.shape == (t, 4, 5) and mask_probs.dtype == np.float32
  expected = 1 / (1 + np.exp(-(np.arange(t) / 10 - 2)))
  np.testing.assert_allclose(mask_probs, np.broadcast_to(expected[:, None, None], (t, 4, 5)),
                             rtol=1e-6)
  # Independent layout: per 16-frame block two clips s + o + 2i (i < 8), clamped to t - 1.
  clip_means = [np.mean([min(s + o + 2 * i, t - 1) for i in range(8)])
                for s in range(0, t, 16) for o in (0, 1)]
  np.testing.assert_allclose(class_probs, [np.mean(clip_means), 1, 0], rtol=1e-6)


def test_predict_video_not_interleaved_and_dense():
  rec = index_video(19)
  probs, _ = evaluation.predict_video(frame_index_predict_fn, rec, 2, interleave=False)
  held = np.arange(19) - np.arange(19) % 2  # Each clip output is repeated for the skipped frame.
  np.testing.assert_allclose(probs[:, 0, 0], 1 / (1 + np.exp(-(held / 10 - 2))), rtol=1e-6)
  probs, cls = evaluation.predict_video(frame_index_predict_fn, rec, 2, skip=1)
  np.testing.assert_allclose(probs[:, 0, 0], 1 / (1 + np.exp(-(np.arange(19) / 10 - 2))), rtol=1e-6)
  np.testing.assert_allclose(cls[0], np.mean([3.5, 11.5, np.mean([16, 17, 18] + [18] * 5)]))


def test_predict_fn_with_a_wrong_shape_is_an_error_naming_the_video():
  bad = lambda v: (v[..., 0][:, :4].astype(np.float32), np.ones((v.shape[0], 3)))
  with pytest.raises(ValueError, match="idx9"):
    evaluation.predict_video(bad, index_video(9), 2)


@jax.jit
def oracle_predict_fn(video):
  """Reads the mask (channel 2) and the label (channel 1) back out of the frames."""
  seg = jnp.where(video[..., 2] > 100, 10.0, -10.0)
  return seg, jax.nn.one_hot(video[:, 0, 0, 0, 1], 3)


def test_evaluate_end_to_end_with_a_perfect_fake_model():
  records = [index_video(t, label=t % 3) for t in (5, 16, 23, 40)]
  res, md = evaluation.evaluate(oracle_predict_fn, records, 3, ["a", "b", "c"],
                                eval_config(batch_size=3), progress=False)
  assert res["num_videos"] == 4 and res["accuracy"] == 1.0
  for key in ("capsule/f-mAP@0.5", "capsule/v-mAP@0.5", "detection/f-mAP@0.5",
              "detection/v-mAP@0.1", "detection/v-mAP@0.5"):
    assert res[key] == 1.0
  assert "| detection/v-mAP | 100.0 | 100.0 | 100.0 | 100.0 |" in md
  assert "| detection/f-mAP | - | - | - | 100.0 |" in md


def coded_records(num, num_classes, seed):
  """Videos whose frames carry a noisy copy of the mask (channel 2), a class hint (channel 1) and a
  confidence (channel 0): :func:`coded_predict_fn` reads a prediction back out of them."""
  rng = np.random.default_rng(seed)
  records = []
  for i, (rec, probs, _) in enumerate(random_videos(num, num_classes, seed, t_range=(5, 20))):
    hint = rec.label if rng.random() < 0.7 else (rec.label + 1) % num_classes
    frames = np.zeros(rec.masks.shape + (3,), np.uint8)
    frames[..., 0] = 25 * int(rng.integers(2, 10))
    frames[..., 1] = hint
    frames[..., 2] = np.round(255 * probs)
    records.append(VideoRecord(video_id=f"coded{i:02d}", group_id="g", label=rec.label,
                               frames=frames, masks=rec.masks, boxes=rec.boxes, has_gt=rec.has_gt,
                               span=rec.span, annotation="mask"))
  return records


def coded_predict_fn(video, num_classes=3):
  """NumPy predict_fn for :func:`coded_records`: ``(B, L, H, W, 3) uint8 -> (seg (B, L, H, W),
  class_probs (B, C))``; coarse class scores, so ties across videos happen."""
  seg = (video[..., 2].astype(np.float32) - 127.5) / 32.0
  confidence = video[:, 0, 0, 0, 0].astype(np.float32) / 255.0
  onehot = np.eye(num_classes, dtype=np.float32)[video[:, 0, 0, 0, 1]]
  return seg, onehot * confidence[:, None] + (1.0 - confidence[:, None]) / num_classes


class TinyDetector:
  """A stand-in with the detector's apply signature (a 1x1 'conv' over RGB and pooled classes)."""

  def apply(self, variables, video, train=False):
    assert not train
    seg = jnp.einsum("btHWc,c->btHW", video, variables["params"]["w"])
    cls = jax.nn.softmax(jnp.einsum("btHWc,cn->bn", video, variables["params"]["v"]))
    return {"seg_logits": seg, "class_probs": cls, "latent": cls}


def tiny_variables():
  return {"params": {"w": jnp.array([1.0, -2.0, 0.5]), "v": jnp.arange(9.0).reshape(3, 3) / 10}}


def test_make_predict_fn_matches_a_direct_apply():
  video = np.random.default_rng(0).integers(0, 255, (3, 8, 4, 4, 3), dtype=np.uint8)
  predict_fn = evaluation.make_predict_fn(TinyDetector(), tiny_variables())
  seg, cls = predict_fn(video)
  x = video.astype(np.float32) / 127.5 - 1
  out = TinyDetector().apply(tiny_variables(), x)
  np.testing.assert_allclose(np.asarray(seg), out["seg_logits"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(cls), out["class_probs"], rtol=1e-5, atol=1e-6)


def test_make_predict_fn_shards_over_several_devices():
  # Fresh process: the fake device count must be set before jax starts.
  code = textwrap.dedent("""
      import numpy as np, jax
      from tests.test_evaluation import TinyDetector, tiny_variables
      from claus_jax import evaluation
      assert jax.local_device_count() == 4
      video = np.random.default_rng(0).integers(0, 255, (3, 8, 4, 4, 3), dtype=np.uint8)
      seg, cls = evaluation.make_predict_fn(TinyDetector(), tiny_variables())(video)
      assert seg.shape == (3, 8, 4, 4) and cls.shape == (3, 3), (seg.shape, cls.shape)
      one = evaluation.make_predict_fn(TinyDetector(), tiny_variables(), jax.local_devices()[:1])
      seg1, cls1 = one(video)
      np.testing.assert_allclose(np.asarray(seg), np.asarray(seg1), rtol=1e-6)
      np.testing.assert_allclose(np.asarray(cls), np.asarray(cls1), rtol=1e-6)
      print("ok")
  """)
  env = dict(os.environ, XLA_FLAGS=xla_flags.with_devices(4),
             JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
