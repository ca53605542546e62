"""The one in-memory video record shared by every dataset (synthetic, J-HMDB-21, UCF-101-24).

Conventions (used everywhere in claus_jax):
  * frames are indexed from 0; spans are half-open ``[start, end)``;
  * boxes are ``(x1, y1, x2, y2)`` in pixel coordinates of the stored frames, inclusive corners
    (the ACT convention, so a one-pixel box has x1 == x2), NaN where an actor has no box;
  * ``masks`` is the union of all actors' pixels; for box-annotated datasets it is the filled boxes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class VideoRecord:
  """One video with its dense ground truth.

  Attributes:
    video_id: unique id within the dataset, e.g. ``'brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0'``.
    group_id: id of the recording the video was cut from (UCF-101 ``g01``; synthetic group); videos
      of one group are never split between train and test.
    label: class index in ``[0, num_classes)``.
    frames: ``(T, H, W, 3) uint8`` RGB.
    masks: ``(T, H, W) uint8`` in {0, 1}: actor pixels (all zero where ``has_gt`` is False).
    boxes: ``(A, T, 4) float32`` per actor tube, ``(x1, y1, x2, y2)``, NaN where absent.
    has_gt: ``(T,) bool``: the frame carries a ground-truth actor annotation.
    span: ``(start, end)`` half-open frame range of the action.
    annotation: ``'mask'`` (pixel masks are the ground truth) or ``'box'`` (boxes are).
  """

  video_id: str
  group_id: str
  label: int
  frames: np.ndarray
  masks: np.ndarray
  boxes: np.ndarray
  has_gt: np.ndarray
  span: tuple[int, int]
  annotation: str = "mask"

  @property
  def num_frames(self) -> int:
    return int(self.frames.shape[0])

  @property
  def frame_size(self) -> tuple[int, int]:
    return int(self.frames.shape[1]), int(self.frames.shape[2])

  def validate(self) -> "VideoRecord":
    """Checks shapes and dtypes; raises ValueError naming the video and the field."""
    t = self.num_frames
    h, w = self.frame_size
    problems = []
    if self.frames.dtype != np.uint8 or self.frames.ndim != 4 or self.frames.shape[-1] != 3:
      problems.append(f"frames must be (T, H, W, 3) uint8, got {self.frames.shape} {self.frames.dtype}")
    if self.masks.shape != (t, h, w):
      problems.append(f"masks must be {(t, h, w)}, got {self.masks.shape}")
    if self.boxes.ndim != 3 or self.boxes.shape[1:] != (t, 4):
      problems.append(f"boxes must be (A, {t}, 4), got {self.boxes.shape}")
    if self.has_gt.shape != (t,):
      problems.append(f"has_gt must be ({t},), got {self.has_gt.shape}")
    start, end = self.span
    if not 0 <= start <= end <= t:
      problems.append(f"span {self.span} is not inside [0, {t}]")
    if self.annotation not in ("mask", "box"):
      problems.append(f"annotation must be 'mask' or 'box', got {self.annotation!r}")
    if problems:
      raise ValueError(f"video {self.video_id!r}: " + "; ".join(problems))
    return self


@dataclasses.dataclass(frozen=True)
class SplitIndex:
  """Metadata of one split, available without decoding any frames.

  Row ``i`` of every array describes video ``i`` of the split's data source.
  """

  video_ids: tuple[str, ...]
  group_ids: tuple[str, ...]
  labels: np.ndarray  # (N,) int32
  num_frames: np.ndarray  # (N,) int32

  def __len__(self) -> int:
    return len(self.video_ids)

  def held_out_groups(self, count: int) -> tuple[list[int], list[int]]:
    """Positions ``(kept, held)``: ``held`` are the videos of the last ``count`` groups (sorted by
    id), e.g. a validation set carved from the train split; a group is never split."""
    groups = sorted(set(self.group_ids))
    held = set(groups[len(groups) - count:]) if count > 0 else set()
    kept = [i for i, g in enumerate(self.group_ids) if g not in held]
    return kept, [i for i, g in enumerate(self.group_ids) if g in held]

  def subset(self, positions: Sequence[int]) -> "SplitIndex":
    """The rows at ``positions``, in that order."""
    rows = np.asarray(positions, np.int64)
    return SplitIndex(video_ids=tuple(self.video_ids[i] for i in rows),
                      group_ids=tuple(self.group_ids[i] for i in rows),
                      labels=np.asarray(self.labels)[rows], num_frames=np.asarray(self.num_frames)[rows])

  def position(self, video_id: str) -> int:
    try:
      return self.video_ids.index(video_id)
    except ValueError:
      raise KeyError(f"unknown video id {video_id!r}") from None


class Rows(Sequence):
  """The videos of ``source`` at ``positions`` (decoded when indexed, like the source)."""

  def __init__(self, source: Sequence[VideoRecord], positions: Sequence[int]):
    self._source, self._positions = source, list(positions)

  def __len__(self) -> int:
    return len(self._positions)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    return self._source[self._positions[i]]


@dataclasses.dataclass
class VideoDataset:
  """A dataset with random access to its train and test videos.

  ``train[i]`` / ``test[i]`` return a ``VideoRecord``; ``train_index`` / ``test_index`` describe the
  splits without decoding frames (used for budgets and the pool state).
  """

  name: str
  class_names: tuple[str, ...]
  train: Sequence[VideoRecord]
  test: Sequence[VideoRecord]
  train_index: SplitIndex
  test_index: SplitIndex

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def validation_split(self, groups: int) -> "VideoDataset":
    """The train split's last ``groups`` groups become the test split; the rest stay to train on.

    For tuning (``config.data.validation_groups``): the real test split is then never read.
    """
    if groups <= 0:
      return self
    available = len(set(self.train_index.group_ids))
    if groups >= available:
      raise ValueError(f"config.data.validation_groups={groups}: the train split has {available} "
                       "groups; hold out fewer, so that some remain to train on.")
    kept, held = self.train_index.held_out_groups(groups)
    return VideoDataset(name=f"{self.name}:validation{groups}", class_names=self.class_names,
                        train=Rows(self.train, kept), test=Rows(self.train, held),
                        train_index=self.train_index.subset(kept),
                        test_index=self.train_index.subset(held))

  def summary(self) -> dict:
    """Counts a person checks first: videos, frames, classes and groups per split."""
    out = {"dataset": self.name, "classes": self.num_classes}
    for split, index in (("train", self.train_index), ("test", self.test_index)):
      out[split] = {
          "videos": len(index),
          "frames": int(np.sum(index.num_frames)),
          "groups": len(set(index.group_ids)),
          "videos_per_class": np.bincount(index.labels, minlength=self.num_classes).tolist(),
      }
    return out
