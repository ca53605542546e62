"""The requested videos' original frames, and the mapping between original and prepared coordinates.

Conventions (the package docstring says why): prepared frame ``t`` is original frame ``t``; boxes are
inclusive pixel corners ``(x1, y1, x2, y2)``; a prepared frame is ``size x size``.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from PIL import Image

from claus_jax import errors
from claus_jax.data import official


class AnnotationError(errors.UserError, ValueError):
  """An annotation file does not answer the round; the message names every problem and the fix."""


@dataclasses.dataclass(frozen=True)
class SourceVideo:
  """One requested video as the annotators see it.

  Attributes:
    video_id: the dataset's id.
    height, width: the original frame size (pixels).
    size: the prepared frames' side (``config.data.frame_size``).
    frame_files: ``frame_files[t]`` is original frame ``t``'s image file (absolute path).
  """

  video_id: str
  height: int
  width: int
  size: int
  frame_files: tuple[str, ...]

  def to_original(self, box) -> np.ndarray:
    return to_original_box(box, self.size, self.height, self.width)

  def to_stored(self, box) -> np.ndarray:
    return official.scale_boxes(np.asarray(box, np.float32), self.height, self.width, self.size)

  def stored_mask(self, original_mask: np.ndarray) -> np.ndarray:
    """An (height, width) mask drawn on the original frame -> the prepared (size, size) mask."""
    return official.resize_masks(np.asarray(original_mask)[None], self.size)[0]


def to_original_box(box, size: int, height: int, width: int) -> np.ndarray:
  """The inverse of ``official.scale_boxes``: a prepared frame's inclusive box -> the original's.

  Pixel ``i`` covers ``[i, i + 1)``: ``x1 = x1' / sx`` and ``x2 = (x2' + 1) / sx - 1`` with
  ``sx = size / width``, clipped to the original frame.
  """
  sx, sy = size / width, size / height
  b = np.asarray(box, np.float64)
  out = np.array([b[0] / sx, b[1] / sy, (b[2] + 1) / sx - 1, (b[3] + 1) / sy - 1])
  return np.clip(out, 0, [width - 1, height - 1, width - 1, height - 1]).astype(np.float32)


def polygon_mask(points, height: int, width: int) -> np.ndarray:
  """(height, width) uint8 mask of a polygon of ``[(x, y), ...]`` continuous pixel coordinates
  (pixel ``i`` spans ``[i, i + 1)``): the pixels whose centres lie inside, as for boxes."""
  from matplotlib.path import Path

  if len(points) < 3:
    return np.zeros((height, width), np.uint8)
  ys, xs = np.mgrid[0:height, 0:width]
  centres = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1)
  inside = Path(np.asarray(points, np.float64)).contains_points(centres)
  return inside.reshape(height, width).astype(np.uint8)


def _frame_folder(config, video_id: str) -> tuple[str, str]:
  """The official layout's frame folder of ``video_id`` and its image extension."""
  from claus_jax.data import jhmdb
  from claus_jax.data import ucf24

  root = config.data.root
  if config.dataset == "jhmdb":
    return os.path.join(root, jhmdb.FRAMES_DIR, video_id), "png"
  return os.path.join(root, ucf24.FRAMES_DIR, video_id), "jpg"


def source_videos(config, records: dict, frames_dir: str,
                  write_frames: bool = True) -> dict[str, SourceVideo]:
  """The original frames of each requested video.

  Args:
    config: the run's config (``dataset``, ``data.root``, ``data.frame_size``).
    records: ``{video_id: VideoRecord}`` of the requested videos (their prepared frames).
    frames_dir: where the synthetic benchmark's frames are written as PNG files: its prepared
      frames *are* its original frames (``frames_dir/<video_id>/00001.png``, ...).
    write_frames: write those PNG files (export); an import needs only the geometry.

  Raises:
    AnnotationError naming a frame folder that is missing or does not match the prepared video.
  """
  size = int(config.data.frame_size)
  out, problems = {}, []
  for vid, record in records.items():
    if config.dataset == "synthetic":
      folder = os.path.join(frames_dir, vid)
      files = []
      for t, frame in enumerate(record.frames):
        path = os.path.join(folder, f"{t + 1:05d}.png")
        if write_frames and not os.path.exists(path):
          os.makedirs(folder, exist_ok=True)
          Image.fromarray(frame).save(path)
        files.append(os.path.abspath(path))
      out[vid] = SourceVideo(vid, size, size, size, tuple(files))
      continue
    folder, ext = _frame_folder(config, vid)
    if not os.path.isdir(folder):
      problems.append(f"video {vid!r}: its frame folder {folder} does not exist; set "
                      "--config.data.root to the dataset root the run was prepared from")
      continue
    files = official.list_frames(folder, ext)
    if len(files) < record.num_frames:
      problems.append(f"video {vid!r}: {folder} holds {len(files)} frames, the prepared video "
                      f"{record.num_frames}; is --config.data.root the root it was prepared from?")
      continue
    with Image.open(files[0]) as im:
      width, height = im.size
    out[vid] = SourceVideo(vid, height, width, size,
                           tuple(os.path.abspath(f) for f in files[:record.num_frames]))
  if problems:
    raise AnnotationError("cannot find the original frames:\n  " + "\n  ".join(problems))
  return out
