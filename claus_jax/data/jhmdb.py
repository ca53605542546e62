"""J-HMDB-21 reader for the official layout, and its tfds builder.

Expected layout under ``config.data.root`` (the official archives, unpacked side by side)::

  Rename_Images/<class>/<video>/00001.png ...       frames, 1-based (JHMDB_Rename_Images)
  ReCompress_Videos/<class>/<video>.avi             used only where a video's frame folder is absent
  puppet_mask/<class>/<video>/puppet_mask.mat       key 'part_mask', (H, W, T), 1 = actor
  splits/<class>_test_split<k>.txt                  lines '<video>.avi 1' (train) or '<video>.avi 2' (test)

Records: ``video_id = '<class>/<video>'`` (also the group: J-HMDB clips are not grouped), label =
index in :data:`CLASSES`, masks from ``part_mask`` resized by nearest neighbour, one box tube = the
tight box of each frame's mask (NaN and ``has_gt`` False where a mask is empty), span = the whole
clip (J-HMDB clips are trimmed). Frames are resized as in :mod:`claus_jax.data.official`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterator

import numpy as np
import scipy.io

from claus_jax.data import official
from claus_jax.data import tfds_store
from claus_jax.data.official import BadVideoError, DatasetError
from claus_jax.data.record import VideoDataset, VideoRecord

NAME = "jhmdb"
CLASSES = ("brush_hair", "catch", "clap", "climb_stairs", "golf", "jump", "kick_ball", "pick", "pour",
           "pullup", "push", "run", "shoot_ball", "shoot_bow", "shoot_gun", "sit", "stand",
           "swing_baseball", "throw", "walk", "wave")
FRAMES_DIR = "Rename_Images"
VIDEOS_DIR = "ReCompress_Videos"
MASKS_DIR = "puppet_mask"
SPLITS_DIR = "splits"
MASK_FILE = "puppet_mask.mat"
MASK_KEY = "part_mask"
_TRAIN, _TEST = "1", "2"

__all__ = ["CLASSES", "DatasetError", "BadVideoError", "VideoKey", "check_root", "read_splits",
           "read_video", "iter_videos", "make_builder", "load"]


@dataclasses.dataclass(frozen=True)
class VideoKey:
  """One line of a split file: which video, its class, and where it was listed."""

  class_name: str
  video: str
  label: int
  source: str  # 'splits/<class>_test_split<k>.txt line <n>', for error messages.

  @property
  def video_id(self) -> str:
    return f"{self.class_name}/{self.video}"


def check_root(root: str) -> str:
  """Checks the root and its sub-folders; returns the expanded root or raises DatasetError."""
  root = os.path.expanduser(root or "")
  hint = ("Download J-HMDB-21 (JHMDB_Rename_Images, puppet_mask, splits; optionally "
          "JHMDB_video) from http://jhmdb.is.tue.mpg.de and unpack them into one folder.")
  if not root:
    raise DatasetError("config.data.root is empty; pass --config.data.root=/path/to/jhmdb or set "
                       "CLAUS_DATA_DIR. " + hint)
  official.require_dir(root, "J-HMDB-21 root (config.data.root)", hint)
  if not (os.path.isdir(os.path.join(root, FRAMES_DIR)) or os.path.isdir(os.path.join(root, VIDEOS_DIR))):
    raise DatasetError(f"missing frames: expected {FRAMES_DIR}/<class>/<video>/00001.png ... (or "
                       f"{VIDEOS_DIR}/<class>/<video>.avi) under {root!r}. {hint}")
  official.require_dir(os.path.join(root, MASKS_DIR), "J-HMDB masks folder "
                       f"({MASKS_DIR}/<class>/<video>/{MASK_FILE})", hint)
  official.require_dir(os.path.join(root, SPLITS_DIR), "J-HMDB split folder "
                       f"({SPLITS_DIR}/<class>_test_split<k>.txt)", hint)
  return root


def split_file(root: str, class_name: str, split: int) -> str:
  return os.path.join(root, SPLITS_DIR, f"{class_name}_test_split{split}.txt")


def read_splits(root: str, split: int) -> dict[str, list[VideoKey]]:
  """Parses every class's split file: ``{'train': [...], 'test': [...]}`` in class, then file order.

  Raises DatasetError for a missing split file or a malformed line (naming file and line).
  """
  if split not in (1, 2, 3):
    raise DatasetError(f"config.data.split={split!r}: J-HMDB has splits 1, 2 and 3.")
  out: dict[str, list[VideoKey]] = {"train": [], "test": []}
  for label, class_name in enumerate(CLASSES):
    path = split_file(root, class_name, split)
    if not os.path.isfile(path):
      raise DatasetError(f"missing split file {path!r} (class {class_name!r}, split {split}); the "
                         f"official splits archive has {SPLITS_DIR}/<class>_test_split{{1,2,3}}.txt "
                         "for all 21 classes.")
    with open(path, encoding="utf-8") as f:
      for n, line in enumerate(f, start=1):
        fields = line.split()
        if not fields:
          continue
        source = f"{SPLITS_DIR}/{os.path.basename(path)} line {n}"
        if len(fields) != 2 or fields[1] not in (_TRAIN, _TEST):
          raise DatasetError(f"{path!r} line {n}: {line.strip()!r} is not '<video>.avi 1' (train) or "
                             "'<video>.avi 2' (test); restore the file from the official archive.")
        video = re.sub(r"\.avi$", "", fields[0])
        which = "train" if fields[1] == _TRAIN else "test"
        out[which].append(VideoKey(class_name, video, label, source))
  return out


def _read_avi(path: str) -> list[np.ndarray]:
  try:
    import av  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DatasetError(f"{path!r}: the frame folder is absent, and decoding the AVI needs PyAV; "
                       "pip install 'claus_jax[video]' (or unpack JHMDB_Rename_Images).") from e
  try:
    with av.open(path) as container:
      return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
  except Exception as e:  # PyAV raises several FFmpeg error types; all mean the same here.
    raise DatasetError(f"cannot decode video {path!r} ({type(e).__name__}: {e}); re-extract it from "
                       "the official archive.") from e


def frame_source(root: str, key: VideoKey) -> tuple[str, list[str]]:
  """Where a video's frames are: ``(folder, png_paths)`` or ``(avi_path, [])``; raises if neither exists.

  Prefers ``Rename_Images/<class>/<video>/*.png``; falls back to ``ReCompress_Videos/<class>/<video>.avi``.
  """
  folder = os.path.join(root, FRAMES_DIR, key.class_name, key.video)
  paths = official.list_frames(folder, "png") if os.path.isdir(folder) else []
  if paths:
    return folder, paths
  avi = os.path.join(root, VIDEOS_DIR, key.class_name, f"{key.video}.avi")
  if os.path.isfile(avi):
    return avi, []
  raise BadVideoError(key.video_id, f"listed in {key.source} but neither {folder!r} (PNG frames) nor "
                      f"{avi!r} exists; check the split number and that the frames archive is "
                      "fully unpacked.")


def read_frames(source: str, paths: list[str]) -> list[np.ndarray]:
  """Full-size frames ((H, W, 3) uint8 each) from :func:`frame_source`'s answer."""
  if paths:
    return [official.read_image(p) for p in paths]
  frames = _read_avi(source)
  if not frames:
    raise DatasetError(f"video {source!r} has no frames; re-extract it from the official archive.")
  return frames


def read_masks(root: str, key: VideoKey) -> tuple[np.ndarray, str]:
  """``part_mask`` as (T, H, W) uint8 in {0, 1}, and its path."""
  path = os.path.join(root, MASKS_DIR, key.class_name, key.video, MASK_FILE)
  if not os.path.isfile(path):
    raise BadVideoError(key.video_id, f"no mask file: expected {path!r} (from the puppet_mask archive).")
  try:
    mat = scipy.io.loadmat(path)
  except Exception as e:  # scipy raises many types (IndexError, MatReadError, ...) on damaged files.
    raise BadVideoError(key.video_id, f"cannot read mask file {path!r} ({type(e).__name__}: {e}); "
                        "re-extract it from the puppet_mask archive.") from e
  if MASK_KEY not in mat:
    keys = sorted(k for k in mat if not k.startswith("__"))
    raise BadVideoError(key.video_id, f"{path!r} has no {MASK_KEY!r} array (found {keys}).")
  masks = np.asarray(mat[MASK_KEY])
  if masks.ndim == 2:  # A one-frame clip: MATLAB drops the trailing singleton axis.
    masks = masks[:, :, None]
  if masks.ndim != 3:
    raise BadVideoError(key.video_id, f"{path!r}: {MASK_KEY} has shape {masks.shape}, expected (H, W, T).")
  return (np.moveaxis(masks, -1, 0) > 0).astype(np.uint8), path


def read_video(root: str, key: VideoKey, frame_size: int, truncate_to_shorter: bool = False,
               warn: Callable[[str], None] | None = None) -> VideoRecord:
  """One video as a VideoRecord at ``frame_size x frame_size``; raises BadVideoError on any problem.

  ``warn`` receives a message when the frame and mask lengths were cut to the shorter one.
  """
  try:
    frame_path, frame_paths = frame_source(root, key)
    masks, mask_path = read_masks(root, key)
    frames = read_frames(frame_path, frame_paths)
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
      raise BadVideoError(key.video_id, f"frames in {frame_path!r} have different sizes {sorted(shapes)}.")
    height, width = frames[0].shape[:2]
    if masks.shape[1:] != (height, width):
      raise BadVideoError(key.video_id, f"mask {mask_path!r} is {masks.shape[1]}x{masks.shape[2]} "
                          f"(HxW) but the frames in {frame_path!r} are {height}x{width}.")
    t = official.match_lengths(key.video_id, len(frames), masks.shape[0], "mask frames", mask_path,
                               truncate_to_shorter, warn)
  except BadVideoError:
    raise
  except DatasetError as e:
    raise BadVideoError(key.video_id, str(e)) from e
  masks = masks[:t]
  boxes = official.scale_boxes(official.mask_boxes(masks), height, width, frame_size)
  video = np.stack([official.resize_frame(f, frame_size) for f in frames[:t]])
  return VideoRecord(
      video_id=key.video_id, group_id=key.video_id, label=key.label, frames=video,
      masks=official.resize_masks(masks, frame_size), boxes=boxes,
      has_gt=masks.reshape(t, -1).any(axis=1), span=(0, t), annotation="mask").validate()


def iter_videos(root: str, keys: list[VideoKey], split_name: str, frame_size: int,
                on_bad_video: str = "error", truncate_to_shorter: bool = False,
                report: official.PrepareReport | None = None) -> Iterator[VideoRecord]:
  """Reads ``keys`` in order, applying the ``on_bad_video`` policy (skips land in ``report``)."""

  def read_one(key: VideoKey) -> VideoRecord:
    return read_video(root, key, frame_size, truncate_to_shorter,
                      official.warner(report, split_name, key.video_id))

  return official.read_all(keys, read_one, on_bad_video, split_name, report)


# ---------------------------------------------------------------------------------------------------
# tfds builder

BUILDER_NAME = "claus_jhmdb"
BUILDER_VERSION = "1.0.0"  # Bump when the records produced for the same settings change.


def make_builder(data, quiet: bool = False) -> tfds_store.VideoRecordBuilder:
  """The tfds builder of J-HMDB-21 for ``data`` (``config.data``; root = tfds manual_dir,
  array_record).

  The builder config name holds the split, the frame size and a fingerprint of every setting that
  changes the records (root, split, frame_size, on_bad_video, truncate_to_shorter), so changing one
  prepares a new copy and an unchanged config reuses the prepared files (without reading the root).
  """
  official.check_policy(data.on_bad_video)
  settings = {"root": official.resolve_root(data.root), "split": int(data.split),
              "frame_size": int(data.frame_size), "on_bad_video": data.on_bad_video,
              "truncate_to_shorter": bool(data.truncate_to_shorter)}
  keys = {}

  def records_for_split(split_name: str, report: official.PrepareReport) -> Iterator[VideoRecord]:
    if not keys:  # Check the layout only when something must be generated.
      keys.update(read_splits(check_root(settings["root"]), settings["split"]))
    todo = official.progress(keys[split_name], f"J-HMDB {split_name}", quiet)
    return iter_videos(settings["root"], todo, split_name, settings["frame_size"], data.on_bad_video,
                       settings["truncate_to_shorter"], report)

  return official.make_builder(
      data.tfds_dir, BUILDER_NAME, BUILDER_VERSION,
      f"split{settings['split']}_size{settings['frame_size']}", settings, CLASSES,
      f"J-HMDB-21 split {settings['split']}", records_for_split)


def load(data, quiet: bool = False) -> VideoDataset:
  """J-HMDB-21 as a VideoDataset (prepared into tfds on first use; random access by index)."""
  return official.load(make_builder(data, quiet), official.resolve_root(data.root), NAME, quiet)
