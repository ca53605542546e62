"""Shared pieces of the official-layout readers (J-HMDB-21, UCF-101-24).

Resizing convention (used by both readers, so boxes, masks and frames stay aligned):
  * frames: the full frame is resized to ``size x size`` with PIL bilinear (antialiased when
    shrinking); the aspect ratio is not kept and nothing is cropped;
  * masks: the same resize with PIL nearest neighbour, so they stay in {0, 1};
  * boxes: inclusive pixel corners are scaled per axis as pixel *areas*: pixel ``i`` covers
    ``[i, i + 1)``, so ``x1' = x1 * sx`` and ``x2' = (x2 + 1) * sx - 1`` with ``sx = size / W``.
    A 16-pixel square at columns 16..31 of a 64-wide frame lands at 8..15 of a 32-wide one, the
    same pixels nearest-neighbour resizing of its mask gives.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from absl import logging
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds
import tqdm

from claus_jax import errors
from claus_jax import pool as pool_lib
from claus_jax.data import tfds_store
from claus_jax.data.record import VideoDataset, VideoRecord

K = TypeVar("K")


class DatasetError(errors.UserError, ValueError):
  """A dataset file is missing, unreadable or inconsistent; the message names the file and the fix."""


class BadVideoError(DatasetError):
  """A problem confined to one video: ``on_bad_video='skip'`` may skip it instead of stopping."""

  def __init__(self, video_id: str, reason: str):
    super().__init__(f"video {video_id!r}: {reason}")
    self.video_id = video_id
    self.reason = reason


@dataclasses.dataclass
class PrepareReport:
  """What preparation did besides writing records: skipped videos and warnings, per split."""

  skipped: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # (split, id, why)
  warnings: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # (split, id, what)
  source: str = ""  # source_fingerprint of the root when it was prepared ('' = not recorded)

  def to_dict(self) -> dict:
    return {"skipped": [list(s) for s in self.skipped], "warnings": [list(w) for w in self.warnings],
            "source": self.source}

  @classmethod
  def from_dict(cls, d: dict) -> "PrepareReport":
    return cls(skipped=[tuple(s) for s in d.get("skipped", [])],
               warnings=[tuple(w) for w in d.get("warnings", [])], source=d.get("source", ""))


def source_fingerprint(root: str) -> str:
  """A digest of every file's path, size and modification time under ``root``.

  A prepared copy that skipped videos is stale once a file changes (a bad video fixed, say);
  :func:`prepare` compares this digest to the one recorded at preparation.
  """
  files = []
  for folder, dirs, names in os.walk(root):
    dirs.sort()
    for name in sorted(names):
      path = os.path.join(folder, name)
      st = os.stat(path)
      files.append([os.path.relpath(path, root), st.st_size, st.st_mtime_ns])
  return pool_lib.fingerprint({"files": files}, length=16)


ON_BAD_VIDEO = ("error", "skip")


def check_policy(on_bad_video: str) -> str:
  if on_bad_video not in ON_BAD_VIDEO:
    raise DatasetError(f"config.data.on_bad_video={on_bad_video!r}: use 'error' (stop at the first bad "
                       "video) or 'skip' (skip it and list it in the prepare report).")
  return on_bad_video


def read_all(keys: Iterable[K], read_one: Callable[[K], VideoRecord], on_bad_video: str,
             split: str, report: PrepareReport | None = None) -> Iterator[VideoRecord]:
  """Reads every video; a BadVideoError stops everything ('error') or is logged and skipped ('skip')."""
  check_policy(on_bad_video)
  for key in keys:
    try:
      record = read_one(key)
    except BadVideoError as e:
      if on_bad_video == "error":
        raise BadVideoError(e.video_id, e.reason + " (set --config.data.on_bad_video=skip to skip "
                            "such videos and list them in the prepare report)") from e
      logging.warning("skipping %s video %s: %s", split, e.video_id, e.reason)
      if report is not None:
        report.skipped.append((split, e.video_id, e.reason))
      continue
    yield record


def warner(report: PrepareReport | None, split: str, video_id: str) -> Callable[[str], None]:
  """A ``warn(message)`` that records a warning about one video in ``report`` (if any)."""

  def warn(message: str) -> None:
    if report is not None:
      report.warnings.append((split, video_id, message))

  return warn


def require_dir(path: str, what: str, hint: str = "") -> str:
  """Returns ``path`` if it is a directory, else raises DatasetError naming what belongs there."""
  if not os.path.isdir(path):
    raise DatasetError(f"missing {what}: expected a directory at {path!r}." + (f" {hint}" if hint else ""))
  return path


def list_frames(folder: str, ext: str) -> list[str]:
  """Paths of ``folder/00001.<ext>, 00002.<ext>, ...``; raises on a gap in the numbering.

  Files not named ``%05d.<ext>`` are ignored (the official folders hold nothing else).
  """
  pattern = re.compile(r"^(\d{5})\." + re.escape(ext) + r"$")
  numbers = sorted(int(m.group(1)) for m in map(pattern.match, os.listdir(folder)) if m)
  if not numbers:
    return []
  expected = list(range(1, len(numbers) + 1))
  if numbers != expected:
    missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
    raise DatasetError(f"frames in {folder!r} are not numbered 00001..{len(numbers):05d}.{ext}: "
                       f"missing {', '.join(f'{m:05d}.{ext}' for m in missing[:5])}"
                       f"{' ...' if len(missing) > 5 else ''}; re-extract this video's frames.")
  return [os.path.join(folder, f"{n:05d}.{ext}") for n in numbers]


def resize_frame(image: np.ndarray, size: int) -> np.ndarray:
  """(H, W, 3) uint8 -> (size, size, 3) uint8, bilinear."""
  if image.shape[:2] == (size, size):
    return image
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def read_image(path: str) -> np.ndarray:
  """An RGB image file as (H, W, 3) uint8; raises DatasetError if it cannot be decoded."""
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"))
  except Exception as e:  # PIL raises several types on damaged files; all mean the same here.
    raise DatasetError(f"cannot read image {path!r} ({type(e).__name__}: {e}); the file is damaged, "
                       "re-extract it from the official archive.") from e


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
  """(T, H, W) {0,1} -> (T, size, size) uint8 by nearest neighbour."""
  masks = (np.asarray(masks) > 0).astype(np.uint8)
  if masks.shape[1:] == (size, size):
    return masks
  out = np.empty((masks.shape[0], size, size), np.uint8)
  for t, m in enumerate(masks):
    out[t] = np.asarray(Image.fromarray(m).resize((size, size), Image.NEAREST))
  return out


def mask_boxes(masks: np.ndarray) -> np.ndarray:
  """Tight inclusive box of each frame's mask: (T, H, W) -> (1, T, 4) float32, NaN for empty frames."""
  t = masks.shape[0]
  boxes = np.full((1, t, 4), np.nan, np.float32)
  for i in range(t):
    ys = np.flatnonzero(masks[i].any(axis=1))
    xs = np.flatnonzero(masks[i].any(axis=0))
    if ys.size:
      boxes[0, i] = (xs[0], ys[0], xs[-1], ys[-1])
  return boxes


def scale_boxes(boxes: np.ndarray, height: int, width: int, size: int) -> np.ndarray:
  """Inclusive boxes (..., 4) in an (height, width) frame -> the (size, size) frame, clipped to it.

  NaN boxes stay NaN. See the module docstring for the pixel-area mapping.
  """
  sx, sy = size / width, size / height
  scale = np.array([sx, sy, sx, sy], np.float32)
  shift = np.array([0.0, 0.0, sx - 1.0, sy - 1.0], np.float32)
  out = np.asarray(boxes, np.float32) * scale + shift
  return np.clip(out, 0.0, size - 1.0).astype(np.float32)


def fill_boxes(boxes: np.ndarray, size: int) -> np.ndarray:
  """Union of filled boxes: (A, T, 4) inclusive boxes in a (size, size) frame -> (T, size, size) uint8.

  A pixel is inside a box when its centre ``i + 0.5`` lies in ``[x1, x2 + 1)``; for integer corners
  that is exactly the pixels ``x1..x2``.
  """
  _, t, _ = boxes.shape
  masks = np.zeros((t, size, size), np.uint8)
  centres = np.arange(size, dtype=np.float32) + 0.5
  for tube in boxes:
    for i in np.flatnonzero(~np.isnan(tube).any(axis=1)):
      x1, y1, x2, y2 = tube[i]
      cols = (centres >= x1) & (centres < x2 + 1.0)
      rows = (centres >= y1) & (centres < y2 + 1.0)
      masks[i] |= (rows[:, None] & cols[None, :]).astype(np.uint8)
  return masks


def span_of(has_gt: np.ndarray) -> tuple[int, int]:
  """Half-open [first, last + 1) of the True frames; (0, 0) if none."""
  idx = np.flatnonzero(has_gt)
  return (int(idx[0]), int(idx[-1]) + 1) if idx.size else (0, 0)


def match_lengths(video_id: str, num_frames: int, num_labels: int, what: str, source: str,
                  truncate_to_shorter: bool, warn: Callable[[str], None] | None = None) -> int:
  """The usable length when the frame count and the annotation length differ.

  Raises BadVideoError (saying by how much) unless ``truncate_to_shorter``, which warns and returns
  the shorter length.
  """
  if num_frames == num_labels:
    return num_frames
  diff = num_frames - num_labels
  message = (f"{num_frames} frames but {num_labels} {what} in {source!r} "
             f"({abs(diff)} {'more frames' if diff > 0 else 'fewer frames'} than {what})")
  if not truncate_to_shorter:
    raise BadVideoError(video_id, message + "; set --config.data.truncate_to_shorter=True to cut "
                        "both to the shorter length.")
  shorter = min(num_frames, num_labels)
  message += f"; truncated to {shorter}"
  logging.warning("video %s: %s", video_id, message)
  if warn is not None:
    warn(message)
  return shorter


def check_classes(found: Sequence[str], expected: Sequence[str], source: str) -> None:
  if tuple(found) != tuple(expected):
    raise DatasetError(f"{source}: class list {list(found)} differs from the expected {list(expected)}; "
                       "is this the right dataset file?")


def resolve_root(configured: str) -> str:
  """``configured`` (``config.data.root``), else ``$CLAUS_DATA_DIR``, as an absolute path ('' if
  neither is set)."""
  root = configured or os.environ.get("CLAUS_DATA_DIR", "")
  return os.path.abspath(os.path.expanduser(root)) if root else ""


def progress(items: Sequence[K], description: str, quiet: bool = False) -> Iterable[K]:
  """``items`` with a tqdm bar (one tick per video) unless ``quiet``."""
  return tqdm.tqdm(items, desc=description, unit="video", disable=quiet, leave=True)


def non_empty(records: Iterable[VideoRecord], what: str, root: str) -> Iterator[VideoRecord]:
  """Passes records through; raises DatasetError if there were none (all skipped or an empty list)."""
  count = 0
  for record in records:
    count += 1
    yield record
  if not count:
    raise DatasetError(f"{what}: no usable video under {root!r} (all skipped, or the split lists none); "
                       "see the warnings above.")


def stored_report(builder) -> PrepareReport:
  """The PrepareReport kept in a prepared tfds builder's metadata (empty if none)."""
  metadata = builder.info.metadata or {}
  return PrepareReport.from_dict(metadata.get("prepare_report") or {})


def make_builder(tfds_dir: str, builder_name: str, version: str, config_prefix: str, settings: dict,
                 class_names: Sequence[str], what: str,
                 records_for_split: Callable[[str, PrepareReport], Iterable[VideoRecord]]
                 ) -> tfds_store.VideoRecordBuilder:
  """A tfds builder whose config name is ``<config_prefix>_<fingerprint of settings>``, under
  ``tfds_dir`` (``config.data.tfds_dir``, resolved by :func:`tfds_store.resolve_tfds_dir`).

  ``records_for_split(split, report)`` reads the official files (called only when the data is not
  prepared yet); the skip/warning report is stored in the dataset's metadata under 'prepare_report'.
  """
  report = PrepareReport()
  root = settings["root"]

  def generate(split_name: str) -> Iterator[VideoRecord]:
    if not report.source:  # Before reading: a file changed meanwhile counts as changed.
      report.source = source_fingerprint(root)
    yield from non_empty(records_for_split(split_name, report), f"{what} {split_name}", root)
    builder.info.metadata["prepare_report"] = report.to_dict()

  config_name = f"{config_prefix}_{pool_lib.fingerprint(settings, length=8)}"

  def make():
    return tfds_store.make_builder(
        builder_name, version, config_name, generate, class_names,
        data_dir=tfds_store.resolve_tfds_dir(tfds_dir),
        description=json.dumps(settings, sort_keys=True))

  builder = make()
  if builder.is_prepared():
    # A copy that skipped videos (on_bad_video='skip') is stale once a file under the root changes:
    # a bad video fixed and prepared again must be included, not silently left out.
    old = stored_report(builder)
    if old.skipped and old.source != source_fingerprint(root):
      logging.warning("%s skipped %d video(s) when it was prepared, and the files under %s changed "
                      "since: preparing it again.", builder.data_dir, len(old.skipped), root)
      shutil.rmtree(builder.data_dir)
      builder = make()  # generate() above writes its report into this one.
  return builder


def prepare(builder: tfds_store.VideoRecordBuilder, manual_dir: str, quiet: bool = False) -> bool:
  """Writes the dataset as array_record unless prepared; the official root is tfds' manual_dir.

  Returns True if it generated anything.
  """
  if builder.is_prepared():
    return False
  if quiet:
    tfds.disable_progress_bar()
  builder.download_and_prepare(
      download_dir=os.path.join(str(builder.data_dir_root), "downloads"),
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
      file_format="array_record")
  return True


def load(builder: tfds_store.VideoRecordBuilder, manual_dir: str, name: str,
         quiet: bool = False) -> VideoDataset:
  """Prepares ``builder`` if needed and returns its random-access VideoDataset."""
  prepare(builder, manual_dir, quiet)
  return tfds_store.load_or_prepare(builder, name, quiet=quiet)
