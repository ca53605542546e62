"""Writers of tiny J-HMDB-21 and UCF-101-24 datasets in the exact official layouts.

Every video shows a red rectangle (the actor) on a grey background; its position per frame is known,
so tests can check where masks and boxes land after resizing. Frames are 48 x 64 (H x W). Rectangle
corners are multiples of 3 (rows) and 2 (columns), so a resize to 32 x 32 maps them to whole pixels:
rows r -> r * 2 / 3, columns c -> c / 2.
"""

from __future__ import annotations

import dataclasses
import os
import pickle

import numpy as np
import scipy.io
from PIL import Image

HEIGHT, WIDTH = 48, 64
BACKGROUND = 128
ACTOR = (255, 0, 0)


@dataclasses.dataclass
class FixtureVideo:
  class_name: str
  name: str
  label: int
  rects: list  # Per frame: one (x1, y1, x2, y2) inclusive rectangle per actor, None where absent.
  splits: tuple = (1, 1, 1)  # J-HMDB: 1 = train, 2 = test, for split files 1..3.
  train: bool = True  # UCF: in train_videos[0] (else test_videos[0]).

  @property
  def video_id(self) -> str:
    return f"{self.class_name}/{self.name}"

  @property
  def num_frames(self) -> int:
    return len(self.rects)


def draw(rects: list, height: int = HEIGHT, width: int = WIDTH) -> tuple[np.ndarray, np.ndarray]:
  """One frame (H, W, 3) uint8 and its actor mask (H, W) uint8 for inclusive rectangles."""
  frame = np.full((height, width, 3), BACKGROUND, np.uint8)
  mask = np.zeros((height, width), np.uint8)
  for x1, y1, x2, y2 in (r for r in rects if r is not None):
    frame[y1:y2 + 1, x1:x2 + 1] = ACTOR
    mask[y1:y2 + 1, x1:x2 + 1] = 1
  return frame, mask


def moving_rect(t: int, offset: int = 0) -> tuple[int, int, int, int]:
  """A 16 x 24 (W x H) rectangle that moves right by 2 px per frame, rows on multiples of 3."""
  x1 = 2 * ((t + offset) % 24)
  y1 = 3 * ((t + offset) % 5)
  return (x1, y1, x1 + 15, y1 + 23)


# ---------------------------------------------------------------------------------------------------
# J-HMDB-21

JHMDB_CLASSES = ("brush_hair", "catch", "clap", "climb_stairs", "golf", "jump", "kick_ball", "pick",
                 "pour", "pullup", "push", "run", "shoot_ball", "shoot_bow", "shoot_gun", "sit",
                 "stand", "swing_baseball", "throw", "walk", "wave")


def jhmdb_videos() -> list[FixtureVideo]:
  """Seven videos in three classes; split 1: 4 train / 3 test, other splits differ."""
  spec = [("brush_hair", ((1, 2, 1), (1, 1, 2), (2, 1, 1))),
          ("catch", ((1, 1, 2), (2, 1, 1))),
          ("wave", ((1, 2, 1), (2, 1, 1)))]
  videos = []
  for class_name, split_sets in spec:
    for i, splits in enumerate(split_sets):
      n = 10 + 2 * i + len(videos) % 3
      rects = [[moving_rect(t, offset=len(videos))] for t in range(n)]
      videos.append(FixtureVideo(class_name, f"{class_name}_clip_{i}_u_nm_np1_fr_med_{i}",
                                 JHMDB_CLASSES.index(class_name), rects, splits))
  return videos


def write_jhmdb_video(root: str, video: FixtureVideo, write_split_lines: bool = False) -> None:
  """PNG frames and the puppet mask of one video (and optionally its split lines)."""
  folder = os.path.join(root, "Rename_Images", video.class_name, video.name)
  os.makedirs(folder, exist_ok=True)
  masks = []
  for t, rects in enumerate(video.rects):
    frame, mask = draw(rects)
    Image.fromarray(frame).save(os.path.join(folder, f"{t + 1:05d}.png"))
    masks.append(mask)
  mask_dir = os.path.join(root, "puppet_mask", video.class_name, video.name)
  os.makedirs(mask_dir, exist_ok=True)
  scipy.io.savemat(os.path.join(mask_dir, "puppet_mask.mat"),
                   {"part_mask": np.stack(masks, axis=-1)})  # (H, W, T), as in the official files.
  if write_split_lines:
    for k in (1, 2, 3):
      with open(os.path.join(root, "splits", f"{video.class_name}_test_split{k}.txt"), "a") as f:
        f.write(f"{video.name}.avi {video.splits[k - 1]} \n")


def write_jhmdb(root: str, videos: list[FixtureVideo] | None = None) -> list[FixtureVideo]:
  """A J-HMDB-21 root: Rename_Images, puppet_mask, splits (all 21 classes x 3 splits; classes without
  fixture videos get empty split files). Returns the videos written."""
  videos = jhmdb_videos() if videos is None else videos
  os.makedirs(os.path.join(root, "splits"), exist_ok=True)
  for class_name in JHMDB_CLASSES:
    for k in (1, 2, 3):
      open(os.path.join(root, "splits", f"{class_name}_test_split{k}.txt"), "w").close()
  for video in videos:
    write_jhmdb_video(root, video, write_split_lines=True)
  return videos


def write_avi(path: str, frames: np.ndarray) -> None:
  """(T, H, W, 3) uint8 -> a lossless (FFV1) AVI, so decoded frames equal the PNGs."""
  import av  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with av.open(path, "w") as container:
    stream = container.add_stream("ffv1", rate=25)
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = "bgr0"
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


# ---------------------------------------------------------------------------------------------------
# UCF-101-24

UCF_CLASSES = ("Basketball", "BasketballDunk", "Biking", "CliffDiving", "CricketBowling", "Diving",
               "Fencing", "FloorGymnastics", "GolfSwing", "HorseRiding", "IceDancing", "LongJump",
               "PoleVault", "RopeClimbing", "SalsaSpin", "SkateBoarding", "Skiing", "Skijet",
               "SoccerJuggling", "Surfing", "TennisSwing", "TrampolineJumping", "VolleyballSpiking",
               "WalkingWithDog")


def ucf_videos() -> list[FixtureVideo]:
  """Five untrimmed videos in two classes; group g01 is train, the rest test.

  ``v_Biking_g01_c01`` has two actors whose tubes cover different frame ranges.
  """
  def video(class_name, group, clip, n, first, last, train, second=None):
    rects = []
    for t in range(n):
      r = [moving_rect(t) if first <= t < last else None]
      if second is not None:
        r.append((40, 24, 55, 35) if second[0] <= t < second[1] else None)
      rects.append(r)
    name = f"v_{class_name}_g{group:02d}_c{clip:02d}"
    return FixtureVideo(class_name, name, UCF_CLASSES.index(class_name), rects, train=train)

  return [video("Basketball", 1, 1, 12, 2, 9, True),
          video("Basketball", 1, 2, 14, 0, 14, True),
          video("Basketball", 2, 1, 12, 3, 12, False),
          video("Biking", 1, 1, 16, 1, 8, True, second=(5, 14)),
          video("Biking", 3, 1, 13, 4, 10, False)]


def ucf_tubes(video: FixtureVideo) -> list[np.ndarray]:
  """ACT tubes: one (n, 5) float32 array (1-based frame, x1, y1, x2, y2) per actor."""
  num_actors = max(len(r) for r in video.rects)
  tubes = []
  for a in range(num_actors):
    rows = [(t + 1, *rects[a]) for t, rects in enumerate(video.rects) if rects[a] is not None]
    tubes.append(np.asarray(rows, np.float32))
  return tubes


def ucf_annotations(videos: list[FixtureVideo]) -> dict:
  return {
      "labels": list(UCF_CLASSES),
      "train_videos": [[v.video_id for v in videos if v.train]],
      "test_videos": [[v.video_id for v in videos if not v.train]],
      "nframes": {v.video_id: v.num_frames for v in videos},
      "resolution": {v.video_id: (HEIGHT, WIDTH) for v in videos},
      "gttubes": {v.video_id: {v.label: ucf_tubes(v)} for v in videos},
  }


def write_ucf_annotations(root: str, annotations: dict) -> None:
  with open(os.path.join(root, "UCF101v2-GT.pkl"), "wb") as f:
    pickle.dump(annotations, f, protocol=2)  # Protocol 2 as in the Python-2-era file (latin1-safe).


def write_ucf(root: str, videos: list[FixtureVideo] | None = None) -> list[FixtureVideo]:
  """A UCF-101-24 root: rgb-images/<class>/<video>/%05d.jpg and UCF101v2-GT.pkl."""
  videos = ucf_videos() if videos is None else videos
  for video in videos:
    folder = os.path.join(root, "rgb-images", video.class_name, video.name)
    os.makedirs(folder, exist_ok=True)
    for t, rects in enumerate(video.rects):
      frame, _ = draw(rects)
      Image.fromarray(frame).save(os.path.join(folder, f"{t + 1:05d}.jpg"), quality=95)
  write_ucf_annotations(root, ucf_annotations(videos))
  return videos


def expected_resized_rect(rect: tuple[int, int, int, int], size: int) -> tuple[float, ...]:
  """Where an inclusive rectangle of the 48 x 64 frame lands at size x size (pixel areas)."""
  x1, y1, x2, y2 = rect
  sx, sy = size / WIDTH, size / HEIGHT
  return (x1 * sx, y1 * sy, (x2 + 1) * sx - 1, (y2 + 1) * sy - 1)
