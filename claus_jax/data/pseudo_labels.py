"""Dense pseudo-labels from sparse frame annotations.

Only the ground truth at the *labelled* frames is ever read (``record.masks[l]`` /
``record.boxes[:, l]`` for ``l`` in the labelled set); frames in between are filled by a deterministic
interpolation, so nothing leaks from the unlabelled frames.

Rules (the same for boxes and masks, stated per frame ``t`` of a video with ``T`` frames and sorted
labelled frames ``l_0 < ... < l_{n-1}``):
  * ``t <= l_0`` or ``t >= l_{n-1}``: hold the nearest annotation (inside ``[0, T)``; the action span
    is ground truth and is not used).
  * ``l_k < t < l_{k+1}``: with ``alpha = (t - l_k) / (l_{k+1} - l_k)``,
      - boxes: per actor, linear interpolation of ``(x1, y1, x2, y2)`` when the actor is present at
        both ends;
      - masks, ``'sdf'``: the signed distance maps ``d`` (positive inside, see :func:`signed_distance`)
        of both ends are blended, ``(1 - alpha) d_k + alpha d_{k+1}``, and the pseudo-mask is
        ``blend > 0`` (a shape morph; exact at the annotated frames; see the empty-blend rule below);
      - masks, ``'nearest'``: hold the nearer annotation.
  * Empty against non-empty (an actor, or the whole mask, absent at one end, e.g. outside the action
    in untrimmed video): no shape is invented and none is shrunk to nothing. The frame takes the
    nearer annotation's state, so presence switches at the midpoint; an exact tie goes to the earlier
    frame. The same tie rule is used by ``'nearest'``.

Boxes become masks by filling: pixel ``(y, x)`` is inside when ``round(x1) <= x <= round(x2)`` and
``round(y1) <= y <= round(y2)`` (inclusive corners, clipped to the frame), which reproduces the dataset's
filled boxes at the annotated frames for integer boxes. ``round`` is half up (``floor(x + 0.5)``).

An SDF blend of two far-apart, non-overlapping shapes can be empty midway; such a frame holds the
nearer annotation instead (an actor does not vanish between two frames that both show it).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from claus_jax.data.record import VideoRecord

MASK_INTERPOLATIONS = ("sdf", "nearest")


def signed_distance(mask: np.ndarray) -> np.ndarray:
  """Signed Euclidean distance map of a binary mask.

  Args:
    mask: ``(H, W)`` array, nonzero = foreground.

  Returns:
    ``(H, W) float32``: distance to the nearest background pixel inside the mask (>= 1), minus the
    distance to the nearest foreground pixel outside (<= -1). A full mask gives ``H + W`` everywhere
    and an empty one ``-(H + W)`` (scipy has no "nearest other pixel" there).
  """
  fg = mask.astype(bool)
  h, w = fg.shape
  if fg.all():
    return np.full((h, w), float(h + w), np.float32)
  if not fg.any():
    return np.full((h, w), -float(h + w), np.float32)
  inside = ndimage.distance_transform_edt(fg)
  outside = ndimage.distance_transform_edt(~fg)
  return (inside - outside).astype(np.float32)


def _brackets(labelled: np.ndarray, frames: np.ndarray):
  """For each frame, the labelled neighbours (positions into ``labelled``) and the blend factor.

  Returns ``(lo, hi, alpha, nearer)``: positions of the bracketing labelled frames (equal outside the
  labelled range, where the nearest one is held), ``alpha`` in [0, 1] (0 at ``lo``) and the position
  of the nearer bracket (ties to the earlier).
  """
  n = len(labelled)
  hi = np.searchsorted(labelled, frames, side="left")  # First labelled >= t.
  hi = np.clip(hi, 0, n - 1)
  lo = np.where(labelled[hi] > frames, np.maximum(hi - 1, 0), hi)
  # Outside the labelled range both brackets are the nearest labelled frame.
  before = frames <= labelled[0]
  after = frames >= labelled[-1]
  lo = np.where(before, 0, np.where(after, n - 1, lo))
  hi = np.where(before, 0, np.where(after, n - 1, hi))
  gap = (labelled[hi] - labelled[lo]).astype(np.float64)
  alpha = np.where(gap > 0, (frames - labelled[lo]) / np.maximum(gap, 1), 0.0)
  nearer = np.where(alpha <= 0.5, lo, hi)
  return lo, hi, alpha, nearer


def _check_labelled(labelled: np.ndarray, num_frames: int, video_id: str) -> np.ndarray:
  labelled = np.asarray(labelled, dtype=np.int64)
  if labelled.size == 0:
    raise ValueError(f"video {video_id!r}: no labelled frame, so there is nothing to interpolate; "
                     "sample clips only from videos with at least one annotated frame.")
  if np.any(np.diff(labelled) <= 0):
    raise ValueError(f"video {video_id!r}: labelled frames must be sorted and unique, got {labelled}.")
  if labelled[0] < 0 or labelled[-1] >= num_frames:
    raise ValueError(f"video {video_id!r}: labelled frames {labelled} fall outside [0, {num_frames}).")
  return labelled


def interpolate_boxes(key_boxes: np.ndarray, labelled: np.ndarray, frames: np.ndarray) -> np.ndarray:
  """Boxes at arbitrary frames from boxes at the labelled frames.

  Args:
    key_boxes: ``(A, L, 4) float32`` boxes at the labelled frames (NaN = actor absent there).
    labelled: ``(L,)`` sorted frame indices of ``key_boxes``.
    frames: ``(F,)`` frame indices to fill.

  Returns:
    ``(A, F, 4) float32``, NaN where the actor is absent (see the module rules).
  """
  frames = np.asarray(frames, dtype=np.int64)
  lo, hi, alpha, nearer = _brackets(np.asarray(labelled), frames)
  box_lo = key_boxes[:, lo]  # (A, F, 4)
  box_hi = key_boxes[:, hi]
  a = alpha[None, :, None]
  linear = (1.0 - a) * box_lo + a * box_hi
  present_lo = np.all(np.isfinite(box_lo), axis=-1, keepdims=True)
  present_hi = np.all(np.isfinite(box_hi), axis=-1, keepdims=True)
  both = present_lo & present_hi
  out = np.where(both, linear, key_boxes[:, nearer])
  return out.astype(np.float32)


def fill_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
  """Union of filled boxes per frame.

  Args:
    boxes: ``(A, F, 4)`` ``(x1, y1, x2, y2)`` inclusive corners, NaN = absent.

  Returns:
    ``(F, H, W) float32`` in {0, 1}.
  """
  a, f, _ = boxes.shape
  present = np.all(np.isfinite(boxes), axis=-1)  # (A, F)
  safe = np.where(present[..., None], boxes, 0.0)
  x1, y1, x2, y2 = (np.floor(safe[..., i] + 0.5) for i in range(4))  # Round half up.
  xs = np.arange(width)
  ys = np.arange(height)
  in_x = (xs >= x1[..., None]) & (xs <= x2[..., None])  # (A, F, W)
  in_y = (ys >= y1[..., None]) & (ys <= y2[..., None])  # (A, F, H)
  inside = in_y[..., :, None] & in_x[..., None, :] & present[..., None, None]
  return np.any(inside, axis=0).astype(np.float32) if a else np.zeros((f, height, width), np.float32)


class KeyframeLabels:
  """The annotations of one video at its labelled frames, ready to interpolate at any frame.

  This is the only object that touches the record's ground truth, and only at ``labelled``.

  Args:
    record: the video.
    labelled: ``(L,)`` sorted unique labelled frame indices (at least one).
    mask_interp: ``'sdf'`` or ``'nearest'`` (mask datasets; box datasets interpolate boxes).
  """

  def __init__(self, record: VideoRecord, labelled: np.ndarray, mask_interp: str = "sdf"):
    if mask_interp not in MASK_INTERPOLATIONS:
      raise ValueError(f"mask_interp {mask_interp!r}: use one of {MASK_INTERPOLATIONS} "
                       "(config.loss.mask_interp).")
    self.num_frames = record.num_frames
    self.height, self.width = record.frame_size
    self.labelled = _check_labelled(labelled, self.num_frames, record.video_id)
    self.annotation = record.annotation
    self.mask_interp = mask_interp
    if self.annotation == "box":
      self.key_boxes = np.asarray(record.boxes[:, self.labelled], dtype=np.float32)
    else:
      self.key_masks = np.asarray(record.masks[self.labelled]).astype(bool)  # (L, H, W)
      self.key_nonempty = self.key_masks.reshape(len(self.labelled), -1).any(axis=1)
      if mask_interp == "sdf":
        self.key_sdf = np.stack([signed_distance(m) for m in self.key_masks])

  def labelled_flags(self, frames: np.ndarray) -> np.ndarray:
    """``(F,) bool``: the frame carries a real (oracle) label."""
    return np.isin(np.asarray(frames), self.labelled)

  def masks_at(self, frames: np.ndarray) -> np.ndarray:
    """Pseudo-masks at ``frames`` ``(F,)`` -> ``(F, H, W) float32`` in {0, 1}."""
    frames = np.asarray(frames, dtype=np.int64)
    if self.annotation == "box":
      boxes = interpolate_boxes(self.key_boxes, self.labelled, frames)
      return fill_boxes(boxes, self.height, self.width)
    lo, hi, alpha, nearer = _brackets(self.labelled, frames)
    held = self.key_masks[nearer]
    if self.mask_interp == "nearest":
      return held.astype(np.float32)
    both = self.key_nonempty[lo] & self.key_nonempty[hi]
    a = alpha[:, None, None].astype(np.float32)
    blend = (1.0 - a) * self.key_sdf[lo] + a * self.key_sdf[hi] > 0
    # Two non-overlapping shapes far apart can blend to nothing midway; hold the nearer one then.
    morphed = both & blend.reshape(len(frames), -1).any(axis=1)
    return np.where(morphed[:, None, None], blend, held).astype(np.float32)


def pseudo_labels(record: VideoRecord, labelled: np.ndarray,
                  mask_interp: str = "sdf") -> tuple[np.ndarray, np.ndarray]:
  """Dense pseudo-labels of a whole video.

  Args:
    record: the video (ground truth read only at ``labelled``).
    labelled: ``(L,)`` sorted labelled frame indices, L >= 1.
    mask_interp: ``'sdf'`` or ``'nearest'`` (config.loss.mask_interp).

  Returns:
    ``pseudo_mask``: ``(T, H, W) float32`` in {0, 1}; ``is_labelled``: ``(T,) bool``.
  """
  keys = KeyframeLabels(record, labelled, mask_interp)
  frames = np.arange(record.num_frames)
  return keys.masks_at(frames), keys.labelled_flags(frames)
