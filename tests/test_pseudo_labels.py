"""Pseudo-labels from sparse frame labels: hand-computed interpolation examples and no leakage."""

import numpy as np
import pytest

from claus_jax.data import pseudo_labels as pl
from claus_jax.data.record import VideoRecord

NAN = np.nan


def _record(masks, boxes=None, annotation="mask"):
  masks = np.asarray(masks, np.uint8)
  t, h, w = masks.shape
  if boxes is None:
    boxes = np.full((1, t, 4), NAN, np.float32)
  return VideoRecord(video_id="v", group_id="g", label=0,
                     frames=np.zeros((t, h, w, 3), np.uint8), masks=masks,
                     boxes=np.asarray(boxes, np.float32), has_gt=masks.reshape(t, -1).any(1),
                     span=(0, t), annotation=annotation).validate()


def _row_masks(rows):
  """(T, W) lists of 0/1 -> (T, 1, W) masks."""
  return np.asarray(rows, np.uint8)[:, None, :]


def test_signed_distance_1d_by_hand():
  sdf = pl.signed_distance(np.array([[1, 1, 1, 1, 0, 0, 0, 0]]))
  np.testing.assert_allclose(sdf[0], [4, 3, 2, 1, -1, -2, -3, -4])
  assert np.all(pl.signed_distance(np.ones((2, 3))) > 0)
  assert np.all(pl.signed_distance(np.zeros((2, 3))) < 0)


def test_box_interpolation_by_hand():
  # Actor 0 present at labelled frames 1 and 5; actor 1 present at 1, absent at 5.
  key = np.array([[[0, 0, 2, 2], [4, 0, 6, 4]],
                  [[1, 1, 1, 1], [NAN, NAN, NAN, NAN]]], np.float32)
  out = pl.interpolate_boxes(key, np.array([1, 5]), np.arange(7))
  expected0 = np.array([[0, 0, 2, 2], [0, 0, 2, 2], [1, 0, 3, 2.5], [2, 0, 4, 3], [3, 0, 5, 3.5],
                        [4, 0, 6, 4], [4, 0, 6, 4]], np.float32)
  np.testing.assert_allclose(out[0], expected0)
  # Empty vs non-empty: the nearer annotation's state, the midpoint (frame 3) to the earlier one.
  present1 = np.isfinite(out[1]).all(-1)
  np.testing.assert_array_equal(present1, [1, 1, 1, 1, 0, 0, 0])
  np.testing.assert_allclose(out[1, :4], np.ones((4, 4)))


def test_fill_boxes_by_hand():
  boxes = np.array([[[1, 0, 2, 1], [0.4, 0.5, 1.5, 0.5], [NAN, NAN, NAN, NAN]]], np.float32)
  m = pl.fill_boxes(boxes, 3, 4)
  np.testing.assert_array_equal(m[0], [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
  # Rounded half up: x 0.4..1.5 -> columns 0..2, y 0.5..0.5 -> row 1.
  np.testing.assert_array_equal(m[1], [[0, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(m[2], np.zeros((3, 4)))


def test_box_record_pseudo_masks():
  t = 5
  boxes = np.full((1, t, 4), NAN, np.float32)
  boxes[0, 0] = [0, 0, 1, 1]
  boxes[0, 4] = [2, 0, 3, 1]
  masks = pl.fill_boxes(boxes, 2, 4).astype(np.uint8)
  rec = _record(masks, boxes, "box")
  pseudo, flags = pl.pseudo_labels(rec, np.array([0, 4]))
  expected = np.array([[1, 1, 0, 0],
                       [0, 1, 1, 0],  # x 0.5..1.5 rounds half up to columns 1..2
                       [0, 1, 1, 0],  # x 1..2
                       [0, 0, 1, 1],  # x 1.5..2.5 -> columns 2..3
                       [0, 0, 1, 1]], np.float32)
  np.testing.assert_array_equal(pseudo[:, 0], expected)
  np.testing.assert_array_equal(pseudo[:, 1], expected)
  np.testing.assert_array_equal(flags, [1, 0, 0, 0, 1])


def test_mask_sdf_interpolation_by_hand():
  a = [1, 1, 1, 1, 0, 0, 0, 0]  # sdf [4, 3, 2, 1, -1, -2, -3, -4]
  b = [0, 0, 1, 1, 1, 1, 0, 0]  # sdf [-2, -1, 1, 2, 2, 1, -1, -2]
  gt = _row_masks([a, [9] * 8, [9] * 8, [9] * 8, b])  # unlabelled frames hold garbage
  gt = np.minimum(gt, 1)
  rec = _record(gt)
  pseudo, flags = pl.pseudo_labels(rec, np.array([0, 4]), "sdf")
  expected = np.array([
      a,
      [1, 1, 1, 1, 0, 0, 0, 0],  # .75a+.25b = [2.5, 2, 1.75, 1.25, -.25, -1.25, -2.5, -3.5]
      [1, 1, 1, 1, 1, 0, 0, 0],  # .5a+.5b = [1, 1, 1.5, 1.5, .5, -.5, -2, -3]
      [0, 0, 1, 1, 1, 1, 0, 0],  # .25a+.75b = [-.5, 0, 1.25, 1.75, 1.25, .25, -1.5, -2.5]
      b], np.float32)
  np.testing.assert_array_equal(pseudo[:, 0], expected)
  np.testing.assert_array_equal(flags, [1, 0, 0, 0, 1])


def test_mask_sdf_disjoint_shapes_hold_nearest():
  a = [1, 0, 0, 0, 0, 0, 0, 0]
  b = [0, 0, 0, 0, 0, 0, 0, 1]
  rec = _record(_row_masks([a, a, a, a, b]))
  pseudo, _ = pl.pseudo_labels(rec, np.array([0, 4]), "sdf")
  # Blends at frames 1-3 are empty; each holds the nearer annotation (tie to the earlier).
  np.testing.assert_array_equal(pseudo[:, 0], np.array([a, a, a, b, b], np.float32))


def test_mask_nearest_empty_and_hold_outside():
  a = [0, 1, 1, 0]
  e = [0, 0, 0, 0]
  rec = _record(_row_masks([e, a, e, e, e, e, e]))
  for interp in ("sdf", "nearest"):
    pseudo, flags = pl.pseudo_labels(rec, np.array([1, 4]), interp)
    # frame 0 holds frame 1; frames 2 (nearer 1) keep a; 3 (nearer 4) and 4..6 empty.
    np.testing.assert_array_equal(pseudo[:, 0], np.array([a, a, a, e, e, e, e], np.float32))
    np.testing.assert_array_equal(flags, [0, 1, 0, 0, 1, 0, 0])
  # Midpoint tie goes to the earlier annotation.
  rec = _record(_row_masks([a, e, e]))
  pseudo, _ = pl.pseudo_labels(rec, np.array([0, 2]), "nearest")
  np.testing.assert_array_equal(pseudo[:, 0], np.array([a, a, e], np.float32))


def test_single_labelled_frame_is_held_everywhere():
  a = [0, 1, 1, 0]
  rec = _record(_row_masks([[1, 1, 1, 1], [0, 0, 0, 1], a, [1, 0, 0, 0], [1, 1, 0, 0]]))
  pseudo, flags = pl.pseudo_labels(rec, np.array([2]))
  np.testing.assert_array_equal(pseudo[:, 0], np.array([a] * 5, np.float32))
  np.testing.assert_array_equal(flags, [0, 0, 1, 0, 0])


@pytest.mark.parametrize("annotation", ["mask", "box"])
def test_no_leakage_from_unlabelled_frames(annotation):
  rng = np.random.default_rng(0)
  t, h, w = 9, 6, 7
  boxes = np.full((2, t, 4), NAN, np.float32)
  boxes[0, :] = [1, 1, 3, 4]
  boxes[1, 5:] = [2, 0, 5, 2]
  masks = pl.fill_boxes(boxes, h, w).astype(np.uint8)
  labelled = np.array([2, 6])
  clean = _record(masks, boxes, annotation)
  noisy_masks = masks.copy()
  noisy_boxes = boxes.copy()
  unl = np.setdiff1d(np.arange(t), labelled)
  noisy_masks[unl] = rng.integers(0, 2, (len(unl), h, w))
  noisy_boxes[:, unl] = rng.uniform(0, 6, (2, len(unl), 4))
  noisy = _record(noisy_masks, noisy_boxes, annotation)
  for interp in ("sdf", "nearest"):
    p1, f1 = pl.pseudo_labels(clean, labelled, interp)
    p2, f2 = pl.pseudo_labels(noisy, labelled, interp)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(f1, f2)
  # And the labelled frames reproduce their ground truth exactly.
  np.testing.assert_array_equal(p1[labelled], masks[labelled])


def test_bad_labelled_frames_raise():
  rec = _record(_row_masks([[1, 0]] * 3))
  with pytest.raises(ValueError, match="no labelled frame"):
    pl.pseudo_labels(rec, np.array([], np.int64))
  with pytest.raises(ValueError, match="outside"):
    pl.pseudo_labels(rec, np.array([0, 3]))
  with pytest.raises(ValueError, match="mask_interp"):
    pl.pseudo_labels(rec, np.array([0]), "cyclicgen")
