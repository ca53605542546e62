"""Pool state: which videos carry a video label, which frames carry frame labels, and when.

A labelled map in the spirit of baal's ``ActiveLearningDataset``: for every labelled video the round
in which its video label was bought, and for every labelled frame the round in which it was bought.
The state also keeps the cumulative annotation cost (C_v per video label, C_f per frame label).

On disk it is one JSON file, written atomically (temporary file in the same folder, fsync, rename), so
a crash mid-write leaves the previous file intact. Loading validates every entry against the split
index and names the offending entry.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import BinaryIO

import numpy as np

from claus_jax import errors

FORMAT_VERSION = 1


def fingerprint(obj, length: int = 12) -> str:
  """A stable sha256 hex digest of ``obj``'s canonical JSON: sorted keys, compact separators, numpy
  values as Python values. The one hasher: tfds dataset names, pretrained-encoder caches and the
  cross-process agreement checks (parallel.assert_same_across_processes)."""
  text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_value)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def _json_value(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"not JSON-able: {value!r}")


class PoolError(errors.UserError, ValueError):
  """A pool-state file or update that does not fit the dataset; the message names the entry."""


class StateFileError(errors.UserError, ValueError):
  """A run's state file (JSON or npz) cannot be read; the message names it and what to do."""


# What to do about a damaged state file of a run, by file name: mostly, delete it and re-run, and
# the stage that wrote it runs again.
STATE_FILE_FIXES = {
    "config.json": "restore it, or delete it and re-run the command that started the run (its "
                   "config is written again).",
    "pool.json": "delete it and re-run the same command to rebuild it (round 0: the seeded initial "
                 "set; round K: round K-1's pool and selection).",
    "eval.json": "delete it and re-run the same command to evaluate that round again.",
    "run.json": "delete it and re-run the same command (it is written again; only the record of "
                "earlier machines is lost).",
    "train.json": "delete it and re-run the same command to write it again from the round's final "
                  "checkpoint (no retraining).",
    "train_history.json": "delete it and re-run the same command (the round's loss curve then "
                          "starts at its latest checkpoint; the model is not affected).",
    "selection.json": "delete it and re-run the same command to select that round again from its "
                      "scores.",
    "latents.npy": "delete it and the selection.json beside it, and re-run the same command to "
                   "compute both again.",
    "requests.json": "delete it, and the pool.json beside it if there is one, and re-run the same "
                     "command to write them again (answers.json is kept and checked again).",
}


def state_file_error(path: str, what: str, fix: str | None = None) -> StateFileError:
  """'<path> is damaged (<what>); <fix>', the fix by default from STATE_FILE_FIXES."""
  fix = fix or STATE_FILE_FIXES.get(os.path.basename(path), "restore it from a backup.")
  return StateFileError(f"{path} is damaged ({what}); {fix}")


def read_json(path: str, require: Sequence[str] = (), fix: str | None = None):
  """The JSON value in ``path`` (a state file of a run).

  Raises:
    StateFileError: the file is not valid JSON, or not an object with the ``require`` keys; the
      message names the file and what to do (``fix``, else STATE_FILE_FIXES by file name).
  """
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise state_file_error(path, f"not valid JSON: {e}", fix) from None
  missing = [k for k in require if not isinstance(data, dict) or k not in data]
  if missing:
    raise state_file_error(path, f"no {', '.join(map(repr, missing))} entry", fix)
  return data


def atomic_write(path: str, write: Callable[[BinaryIO], object]) -> None:
  """Writes ``path`` with ``write(f)`` so readers see either the old or the new file, never a torn one.

  The bytes go to a temporary file in the same folder (fsync, then rename). It is created with mode
  0666 less the umask, like every other file of a run (0644 under the usual umask 022).

  Raises:
    DiskFullError: the disk is full (the previous file, if any, is intact).
  """
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  tmp = os.path.join(folder, f"{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
  try:
    os.makedirs(folder, exist_ok=True)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:
    if os.path.exists(tmp):
      os.unlink(tmp)
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
      raise errors.DiskFullError(path) from None
    raise


def atomic_write_text(path: str, text: str) -> None:
  atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str, obj) -> None:
  atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def atomic_write_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  """``np.savez`` to exactly ``path`` (no '.npz' appended), atomically."""
  atomic_write(path, lambda f: np.savez(f, **arrays))


class PoolState:
  """The labelled map of one active-learning run over the train split.

  Args:
    num_frames: video id -> number of frames, for every video of the pool (the train split).
    cost_video: C_v, cost of one video label.
    cost_frame: C_f, cost of one frame label.
  """

  def __init__(self, num_frames: Mapping[str, int], cost_video: float = 1.0,
               cost_frame: float = 1.0):
    self._num_frames = {str(k): int(v) for k, v in num_frames.items()}
    self._order = {vid: i for i, vid in enumerate(self._num_frames)}
    self.cost_video = float(cost_video)
    self.cost_frame = float(cost_frame)
    self._videos: dict[str, int] = {}  # video id -> round of its video label
    self._frames: dict[str, dict[int, int]] = {}  # video id -> {frame -> round}

  # Queries ------------------------------------------------------------------------------------
  @property
  def video_ids(self) -> tuple[str, ...]:
    return tuple(self._num_frames)

  def num_frames(self, video_id: str) -> int:
    self._check_video(video_id)
    return self._num_frames[video_id]

  @property
  def total_frames(self) -> int:
    return sum(self._num_frames.values())

  def is_labelled(self, video_id: str) -> bool:
    return video_id in self._videos

  def labelled_video_ids(self) -> list[str]:
    """Labelled videos in pool order (stable across runs)."""
    return sorted(self._videos, key=self._order.__getitem__)

  def unlabelled_video_ids(self) -> list[str]:
    return [v for v in self._num_frames if v not in self._videos]

  def labelled_frames(self, video_id: str) -> np.ndarray:
    """Sorted int32 frame indices of ``video_id`` that carry a frame label."""
    self._check_video(video_id)
    return np.array(sorted(self._frames.get(video_id, {})), dtype=np.int32)

  def video_round(self, video_id: str) -> int | None:
    return self._videos.get(video_id)

  def frame_rounds(self, video_id: str) -> dict[int, int]:
    return dict(self._frames.get(video_id, {}))

  @property
  def num_labelled_videos(self) -> int:
    return len(self._videos)

  @property
  def num_labelled_frames(self) -> int:
    return sum(len(f) for f in self._frames.values())

  @property
  def cost(self) -> float:
    """Cumulative annotation cost: C_v per video label plus C_f per frame label."""
    return self.cost_video * self.num_labelled_videos + self.cost_frame * self.num_labelled_frames

  def percentages(self) -> dict:
    """V% (labelled videos) and A% (labelled frames of all pool frames), as in Table 1."""
    return {"videos_pct": 100.0 * self.num_labelled_videos / max(1, len(self._num_frames)),
            "frames_pct": 100.0 * self.num_labelled_frames / max(1, self.total_frames)}

  # Updates ------------------------------------------------------------------------------------
  def label_video(self, video_id: str, round_index: int) -> None:
    self._check_video(video_id)
    self._videos.setdefault(video_id, int(round_index))

  def label_frames(self, video_id: str, frames: Iterable[int], round_index: int) -> int:
    """Adds frame labels; returns how many were new. Out-of-range frames are a PoolError."""
    self._check_video(video_id)
    t = self._num_frames[video_id]
    known = self._frames.setdefault(video_id, {})
    new = 0
    for f in frames:
      f = int(f)
      if not 0 <= f < t:
        raise PoolError(f"video {video_id!r}: frame {f} is outside [0, {t}); check the selection "
                        "or answers file that produced it.")
      if f not in known:
        known[f] = int(round_index)
        new += 1
    return new

  def _check_video(self, video_id: str) -> None:
    if video_id not in self._num_frames:
      raise PoolError(f"unknown video id {video_id!r}: it is not in the pool's split.")

  # Persistence --------------------------------------------------------------------------------
  def to_json(self) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "cost_video": self.cost_video,
        "cost_frame": self.cost_frame,
        "num_frames": self._num_frames,
        "videos": {v: self._videos[v] for v in self.labelled_video_ids()},
        "frames": {v: {str(f): r for f, r in sorted(self._frames[v].items())}
                   for v in self.labelled_video_ids() + sorted(set(self._frames) - set(self._videos),
                                                              key=self._order.__getitem__)
                   if self._frames.get(v)},
        "summary": {"labelled_videos": self.num_labelled_videos,
                    "labelled_frames": self.num_labelled_frames, "cost": self.cost,
                    **self.percentages()},
    }

  @classmethod
  def from_json(cls, data: dict, source: str = "<pool state>",
                num_frames: Mapping[str, int] | None = None) -> "PoolState":
    """Rebuilds a pool; validates every entry. ``num_frames``, when given, must match the file's."""
    try:
      version = data["format_version"]
      file_frames = data["num_frames"]
      videos, frames = data["videos"], data["frames"]
    except (KeyError, TypeError) as e:
      raise PoolError(f"{source}: not a claus_jax pool state (missing {e}); "
                      f"{STATE_FILE_FIXES['pool.json']}") from None
    if version != FORMAT_VERSION:
      raise PoolError(f"{source}: format_version {version}, expected {FORMAT_VERSION}.")
    if num_frames is not None:
      expected = {str(k): int(v) for k, v in num_frames.items()}
      if file_frames != expected:
        missing = sorted(set(expected) - set(file_frames))[:5]
        extra = sorted(set(file_frames) - set(expected))[:5]
        changed = sorted(v for v in set(expected) & set(file_frames)
                         if expected[v] != file_frames[v])[:5]
        raise PoolError(f"{source}: the pool does not match the dataset (missing videos {missing}, "
                        f"unknown videos {extra}, different frame counts {changed}); the dataset "
                        "changed since the run started: use a new workdir.")
    pool = cls(file_frames, data.get("cost_video", 1.0), data.get("cost_frame", 1.0))
    for vid, rnd in videos.items():
      if vid not in pool._num_frames:
        raise PoolError(f"{source}: videos[{vid!r}] is an unknown video id.")
      pool.label_video(vid, rnd)
    for vid, per_frame in frames.items():
      if vid not in pool._num_frames:
        raise PoolError(f"{source}: frames[{vid!r}] is an unknown video id.")
      for f, rnd in per_frame.items():
        try:
          pool.label_frames(vid, [int(f)], rnd)
        except (PoolError, ValueError):
          raise PoolError(f"{source}: frames[{vid!r}][{f!r}] is outside [0, "
                          f"{pool._num_frames[vid]}).") from None
    return pool

  def save(self, path: str) -> None:
    atomic_write_json(path, self.to_json())

  @classmethod
  def load(cls, path: str, num_frames: Mapping[str, int] | None = None) -> "PoolState":
    return cls.from_json(read_json(path), source=path, num_frames=num_frames)


def initial_pool(video_ids: Sequence[str], num_frames: Sequence[int], num_videos: int,
                 num_frame_labels: int, seed: int, cost_video: float = 1.0,
                 cost_frame: float = 1.0) -> PoolState:
  """Round 0: ``num_videos`` random videos, and ``num_frame_labels`` random frames among them.

  Every chosen video gets at least one frame (a video label without any frame gives the detector no
  localisation signal); the remaining frames are drawn uniformly from the chosen videos' frames.
  """
  pool = PoolState(dict(zip(video_ids, (int(t) for t in num_frames))), cost_video, cost_frame)
  n = len(video_ids)
  if not 1 <= num_videos <= n:
    raise PoolError(f"round 0 asks for {num_videos} videos but the pool has {n}.")
  rng = np.random.default_rng([seed, 0])
  chosen = np.sort(rng.choice(n, size=num_videos, replace=False))
  lengths = np.asarray(num_frames)[chosen]
  total = int(lengths.sum())
  num_frame_labels = int(min(max(num_frame_labels, num_videos), total))
  # One guaranteed frame per video, then the rest uniformly over the remaining frames.
  first = np.array([rng.integers(t) for t in lengths])
  offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
  taken = np.zeros(total, bool)
  taken[offsets + first] = True
  rest = rng.choice(np.flatnonzero(~taken), size=num_frame_labels - num_videos, replace=False)
  taken[rest] = True
  for i, vi in enumerate(chosen):
    vid = video_ids[vi]
    pool.label_video(vid, 0)
    pool.label_frames(vid, np.flatnonzero(taken[offsets[i]:offsets[i] + lengths[i]]), 0)
  return pool
