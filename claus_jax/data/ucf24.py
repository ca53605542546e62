"""UCF-101-24 reader for the official layout (corrected ACT-format annotations), and its tfds builder.

Expected layout under ``config.data.root``::

  UCF101v2-GT.pkl                                    corrected annotations (ACT format, latin1 pickle)
  rgb-images/<class>/<video>/00001.jpg ...           frames, 1-based

``UCF101v2-GT.pkl`` holds ``labels`` (the 24 class names), ``train_videos`` / ``test_videos`` (one list
of video ids per split; split 0 is the standard one), ``nframes[v]``, ``resolution[v] = (h, w)`` and
``gttubes[v] = {label: [array (n, 5) of (frame 1-based, x1, y1, x2, y2)]}``; video ids look like
``'Basketball/v_Basketball_g01_c01'``.

Records: ``video_id`` = the pkl id, ``group_id = '<class>_g<NN>'`` (clips of one group are cut from
one recording), one box tube per ACT tube (several actors per video are common), ``has_gt`` True where
any tube has a box, masks = the filled union of the boxes, span = from the first to the last frame
any tube covers. Frames outside every tube have no actor (``has_gt`` False, mask 0, boxes NaN).
Frames and boxes are resized as in :mod:`claus_jax.data.official`.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from collections.abc import Callable, Iterator

import numpy as np

from claus_jax.data import official
from claus_jax.data import tfds_store
from claus_jax.data.official import BadVideoError, DatasetError
from claus_jax.data.record import VideoDataset, VideoRecord

NAME = "ucf101_24"
CLASSES = ("Basketball", "BasketballDunk", "Biking", "CliffDiving", "CricketBowling", "Diving",
           "Fencing", "FloorGymnastics", "GolfSwing", "HorseRiding", "IceDancing", "LongJump",
           "PoleVault", "RopeClimbing", "SalsaSpin", "SkateBoarding", "Skiing", "Skijet",
           "SoccerJuggling", "Surfing", "TennisSwing", "TrampolineJumping", "VolleyballSpiking",
           "WalkingWithDog")
ANNOTATION_FILE = "UCF101v2-GT.pkl"
FRAMES_DIR = "rgb-images"
ANNOTATION_KEYS = ("labels", "train_videos", "test_videos", "nframes", "resolution", "gttubes")
SPLIT_INDEX = 0  # The ACT pkl has one list per split; UCF-101-24 uses the first.
_GROUP = re.compile(r"^v_(?P<cls>.+)_g(?P<group>\d+)_c\d+$")

__all__ = ["CLASSES", "DatasetError", "BadVideoError", "VideoKey", "check_root", "load_annotations",
           "read_splits", "group_of", "read_video", "iter_videos", "make_builder", "load"]


@dataclasses.dataclass(frozen=True)
class VideoKey:
  """One entry of a split list."""

  video_id: str  # '<class>/v_<class>_gNN_cNN'
  source: str  # 'UCF101v2-GT.pkl train_videos[0]', for error messages.


def check_root(root: str) -> str:
  """Checks the root, the annotation file and the frame folder; returns the expanded root."""
  root = os.path.expanduser(root or "")
  hint = (f"Download UCF-101-24 (rgb-images and the corrected annotations {ANNOTATION_FILE}) and put "
          "both in one folder.")
  if not root:
    raise DatasetError("config.data.root is empty; pass --config.data.root=/path/to/ucf24 or set "
                       "CLAUS_DATA_DIR. " + hint)
  official.require_dir(root, "UCF-101-24 root (config.data.root)", hint)
  path = os.path.join(root, ANNOTATION_FILE)
  if not os.path.isfile(path):
    raise DatasetError(f"missing annotation file: expected {path!r} (the corrected ACT-format "
                       f"UCF-101-24 annotations). {hint}")
  official.require_dir(os.path.join(root, FRAMES_DIR), f"UCF-101-24 frames ({FRAMES_DIR}/<class>/"
                       "<video>/00001.jpg ...)", hint)
  return root


def load_annotations(root: str) -> dict:
  """The pkl as a dict, with its keys and class list checked; raises DatasetError."""
  path = os.path.join(root, ANNOTATION_FILE)
  try:
    with open(path, "rb") as f:
      gt = pickle.load(f, encoding="latin1")
  except (OSError, pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError) as e:
    raise DatasetError(f"cannot read {path!r} ({type(e).__name__}: {e}); download {ANNOTATION_FILE} "
                       "again.") from e
  if not isinstance(gt, dict) or any(k not in gt for k in ANNOTATION_KEYS):
    found = sorted(gt) if isinstance(gt, dict) else type(gt).__name__
    raise DatasetError(f"{path!r} is not an ACT-format annotation file: expected keys "
                       f"{list(ANNOTATION_KEYS)}, found {found}.")
  official.check_classes([str(c) for c in gt["labels"]], CLASSES, f"{path!r} 'labels'")
  return gt


def read_splits(gt: dict) -> dict[str, list[VideoKey]]:
  """``{'train': [...], 'test': [...]}`` from the pkl's split 0, in file order."""
  out = {}
  for which in ("train", "test"):
    lists = gt[f"{which}_videos"]
    if len(lists) <= SPLIT_INDEX:
      raise DatasetError(f"{ANNOTATION_FILE}: {which}_videos has no split {SPLIT_INDEX}.")
    source = f"{ANNOTATION_FILE} {which}_videos[{SPLIT_INDEX}]"
    out[which] = [VideoKey(str(v), source) for v in lists[SPLIT_INDEX]]
  return out


def group_of(video_id: str) -> str:
  """'Basketball/v_Basketball_g01_c01' -> 'Basketball_g01'; an unusual name is its own group."""
  name = video_id.rsplit("/", 1)[-1]
  m = _GROUP.match(name)
  return f"{m.group('cls')}_g{m.group('group')}" if m else video_id


def _tubes(gt: dict, key: VideoKey, nframes: int) -> tuple[int, list[np.ndarray]]:
  """The video's label and its tubes as (n, 5) float arrays with 0-based integer frame indices."""
  vid = key.video_id
  tubes_by_label = gt["gttubes"].get(vid)
  if not tubes_by_label:
    raise BadVideoError(vid, f"listed in {key.source} but {ANNOTATION_FILE} has no gttubes for it.")
  labels = sorted(int(k) for k in tubes_by_label)
  if len(labels) != 1:
    raise BadVideoError(vid, f"gttubes has tubes of several labels {labels}; expected one.")
  label = labels[0]
  if not 0 <= label < len(CLASSES):
    raise BadVideoError(vid, f"gttubes label {label} is outside [0, {len(CLASSES)}).")
  folder_class = vid.split("/", 1)[0]
  if "/" in vid and folder_class != CLASSES[label]:
    raise BadVideoError(vid, f"gttubes label {label} ({CLASSES[label]}) differs from its class "
                        f"folder {folder_class!r}.")
  tubes = []
  for i, tube in enumerate(next(iter(tubes_by_label.values()))):
    tube = np.asarray(tube, np.float64)
    if tube.ndim != 2 or tube.shape[1] != 5:
      raise BadVideoError(vid, f"tube {i} has shape {tube.shape}; expected (n, 5) rows "
                          "(frame, x1, y1, x2, y2).")
    frames = tube[:, 0]
    if tube.shape[0] and (np.any(frames != np.round(frames)) or frames.min() < 1 or frames.max() > nframes):
      raise BadVideoError(vid, f"tube {i} has frame numbers {frames.min():g}..{frames.max():g} outside "
                          f"1..{nframes} (nframes); {ANNOTATION_FILE} and the frames disagree.")
    tube = tube.copy()
    tube[:, 0] -= 1
    tubes.append(tube)
  if not any(t.shape[0] for t in tubes):
    raise BadVideoError(vid, "gttubes holds no box at all.")
  return label, tubes


def read_video(root: str, gt: dict, key: VideoKey, frame_size: int, truncate_to_shorter: bool = False,
               warn: Callable[[str], None] | None = None) -> VideoRecord:
  """One video as a VideoRecord at ``frame_size x frame_size``; raises BadVideoError on any problem."""
  vid = key.video_id
  try:
    folder = os.path.join(root, FRAMES_DIR, vid)
    if not os.path.isdir(folder):
      raise BadVideoError(vid, f"listed in {key.source} but its frame folder {folder!r} does not exist; "
                          f"check that {FRAMES_DIR} is fully unpacked.")
    if vid not in gt["nframes"] or vid not in gt["resolution"]:
      raise BadVideoError(vid, f"listed in {key.source} but {ANNOTATION_FILE} has no nframes/resolution "
                          "entry for it.")
    nframes = int(gt["nframes"][vid])
    height, width = (int(x) for x in gt["resolution"][vid])
    label, tubes = _tubes(gt, key, nframes)
    paths = official.list_frames(folder, "jpg")
    if not paths:
      raise BadVideoError(vid, f"frame folder {folder!r} holds no 00001.jpg ... files.")
    t = official.match_lengths(vid, len(paths), nframes, "annotated frames (nframes)",
                               os.path.join(root, ANNOTATION_FILE), truncate_to_shorter, warn)
    frames = []
    for p in paths[:t]:
      image = official.read_image(p)
      if image.shape[:2] != (height, width):
        raise BadVideoError(vid, f"frame {p!r} is {image.shape[0]}x{image.shape[1]} (HxW) but "
                            f"{ANNOTATION_FILE} gives resolution {height}x{width}; the boxes would "
                            "not line up.")
      frames.append(official.resize_frame(image, frame_size))
  except BadVideoError:
    raise
  except DatasetError as e:
    raise BadVideoError(vid, str(e)) from e
  boxes = np.full((len(tubes), t, 4), np.nan, np.float32)
  for a, tube in enumerate(tubes):
    tube = tube[tube[:, 0] < t]
    boxes[a, tube[:, 0].astype(np.int64)] = official.scale_boxes(tube[:, 1:], height, width, frame_size)
  has_gt = ~np.isnan(boxes).any(axis=2).all(axis=0)
  return VideoRecord(
      video_id=vid, group_id=group_of(vid), label=label, frames=np.stack(frames),
      masks=official.fill_boxes(boxes, frame_size), boxes=boxes, has_gt=has_gt,
      span=official.span_of(has_gt), annotation="box").validate()


def iter_videos(root: str, gt: dict, keys: list[VideoKey], split_name: str, frame_size: int,
                on_bad_video: str = "error", truncate_to_shorter: bool = False,
                report: official.PrepareReport | None = None) -> Iterator[VideoRecord]:
  """Reads ``keys`` in order, applying the ``on_bad_video`` policy (skips land in ``report``)."""

  def read_one(key: VideoKey) -> VideoRecord:
    return read_video(root, gt, key, frame_size, truncate_to_shorter,
                      official.warner(report, split_name, key.video_id))

  return official.read_all(keys, read_one, on_bad_video, split_name, report)


# ---------------------------------------------------------------------------------------------------
# tfds builder

BUILDER_NAME = "claus_ucf101_24"
BUILDER_VERSION = "1.0.0"  # Bump when the records produced for the same settings change.


def make_builder(data, quiet: bool = False) -> tfds_store.VideoRecordBuilder:
  """The tfds builder of UCF-101-24 for ``data`` (``config.data``; root = tfds manual_dir,
  array_record).

  The builder config name holds the frame size and a fingerprint of every setting that changes the
  records (root, frame_size, on_bad_video, truncate_to_shorter).
  """
  official.check_policy(data.on_bad_video)
  settings = {"root": official.resolve_root(data.root), "split": SPLIT_INDEX,
              "frame_size": int(data.frame_size), "on_bad_video": data.on_bad_video,
              "truncate_to_shorter": bool(data.truncate_to_shorter)}
  state = {}

  def records_for_split(split_name: str, report: official.PrepareReport) -> Iterator[VideoRecord]:
    if not state:  # Read the annotations only when something must be generated.
      state["gt"] = load_annotations(check_root(settings["root"]))
      state["keys"] = read_splits(state["gt"])
    todo = official.progress(state["keys"][split_name], f"UCF-101-24 {split_name}", quiet)
    return iter_videos(settings["root"], state["gt"], todo, split_name, settings["frame_size"],
                       data.on_bad_video, settings["truncate_to_shorter"], report)

  return official.make_builder(
      data.tfds_dir, BUILDER_NAME, BUILDER_VERSION, f"size{settings['frame_size']}", settings,
      CLASSES, "UCF-101-24", records_for_split)


def load(data, quiet: bool = False) -> VideoDataset:
  """UCF-101-24 as a VideoDataset (prepared into tfds on first use; random access by index)."""
  return official.load(make_builder(data, quiet), official.resolve_root(data.root), NAME, quiet)
