"""Oracles answer a round's selection: the simulated one reveals ground truth, the files one asks people.

Both update the pool state. Human answers are also kept as an *annotation overlay*: for every video the
label and the per-frame masks the annotators gave, which replace the dataset's (unknown) ground truth at
exactly the annotated frames when the detector is trained.

``files`` protocol, for round K (folder ``round_K/`` of the workdir):
  * ``requests.json`` / ``requests.csv``: what to annotate (written by the run, which then exits).
  * ``predictions.json`` (rounds after the first): the model's answer to the same requests, from
    the round that selected them: per video the predicted class, per requested frame the box of the
    predicted mask (``eval.mask_threshold``). Annotation tools show these boxes to be corrected
    (:mod:`claus_jax.annotate`).
  * ``answers.json``, written by people (or by ``python -m claus_jax.annotate import`` from a Label
    Studio or CVAT export), format::

      {"videos": {
         "<video_id>": {
            "label": "<class name>",                          # required for requests with new_video
            "frames": {
               "<frame index>": {"box": [x1, y1, x2, y2]},    # inclusive pixel corners (clipped to
                                                              # the frame; none inside is an error)
               "<frame index>": {"mask": "masks/<file>.png"},  # PNG, nonzero = actor, frame-sized
               "<frame index>": {"empty": true}                # no actor on this frame
            }}}}

    Frame indices are 0-based, in the stored (resized) frames. Paths are relative to ``round_K/``.
  * Re-running the same command validates the answers against the requests (missing, extra,
    repeated, out-of-range or mistyped entries are errors naming them) and continues the run.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Sequence

import numpy as np

from claus_jax import errors
from claus_jax import pool as pool_lib
from claus_jax.data.record import VideoRecord

KINDS = ("simulated", "files")  # config.oracle.kind (see the module docstring).


class AnswersError(errors.UserError, ValueError):
  """answers.json does not answer the requests; the message lists every problem."""


class AwaitingAnswers(Exception):
  """The run stopped to wait for human annotations (not an error: the exit is clean)."""


def apply_selection(pool: pool_lib.PoolState, selection, round_index: int) -> None:
  """Records the selected video and frame labels in the pool (both oracles)."""
  for pick in selection.picks:
    if pick.new_video:
      pool.label_video(pick.video_id, round_index)
    pool.label_frames(pick.video_id, pick.frames, round_index)


# ---------------------------------------------------------------------------- files oracle


def write_requests(round_dir: str, selection, round_index: int, num_frames: dict[str, int],
                   class_names: Sequence[str]) -> str:
  """Writes requests.json and requests.csv; returns the instructions printed for people."""
  requests = {
      "round": round_index,
      "class_names": list(class_names),
      "videos": [{"video_id": p.video_id, "frames": [int(f) for f in p.frames],
                  "needs_label": bool(p.new_video), "num_frames": int(num_frames[p.video_id]),
                  "score": None if not np.isfinite(p.video_score) else float(p.video_score),
                  "cluster": int(p.cluster)} for p in selection.picks],
  }
  pool_lib.atomic_write_json(os.path.join(round_dir, "requests.json"), requests)
  buf = io.StringIO()
  writer = csv.writer(buf)
  writer.writerow(["video_id", "frame", "needs_label", "score", "cluster"])
  for v in requests["videos"]:
    for f in v["frames"]:
      writer.writerow([v["video_id"], f, int(v["needs_label"]), v["score"], v["cluster"]])
  pool_lib.atomic_write_text(os.path.join(round_dir, "requests.csv"), buf.getvalue())
  answers = os.path.join(round_dir, "answers.json")
  n_frames = sum(len(v["frames"]) for v in requests["videos"])
  return (f"Round {round_index}: {len(requests['videos'])} videos and {n_frames} frames to annotate, "
          f"listed in {os.path.join(round_dir, 'requests.json')} (and requests.csv).\n"
          f"Write the annotations to {answers} (format: claus_jax/oracle.py docstring or README) "
          "and re-run the same command to continue.")


def frame_predictions(mask_probs: np.ndarray, class_probs: np.ndarray, frames: Sequence[int],
                      class_names: Sequence[str], threshold: float) -> dict:
  """The model's answer to one request: the predicted class, and per requested frame the tight box
  of the mask ``mask_probs >= threshold`` (none where it is empty) and its mean probability."""
  out = {"label": class_names[int(np.argmax(class_probs))],
         "score": float(np.max(class_probs)), "frames": {}}
  for f in frames:
    fg = mask_probs[int(f)] >= threshold
    ys, xs = np.nonzero(fg)
    entry = {"foreground": float(mask_probs[int(f)][fg].mean()) if xs.size else 0.0}
    if xs.size:
      entry["box"] = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]
    out["frames"][str(int(f))] = entry
  return out


def write_predictions(round_dir: str, predictions: dict, from_round: int) -> None:
  pool_lib.atomic_write_json(os.path.join(round_dir, "predictions.json"),
                             {"round": from_round, "videos": predictions})


def load_requests(round_dir: str) -> dict:
  return pool_lib.read_json(os.path.join(round_dir, "requests.json"), require=("videos",))


def _read_mask(path: str, shape: tuple[int, int]) -> np.ndarray:
  from PIL import Image  # Imported here: only the files oracle reads images.

  with Image.open(path) as im:
    arr = np.asarray(im)
  if arr.ndim == 3:
    arr = arr.max(axis=-1)
  if arr.shape != shape:
    raise ValueError(f"has shape {arr.shape}, expected {shape} (the stored frame size)")
  return (arr > 0).astype(np.uint8)


def _box_to_mask(box, shape) -> np.ndarray:
  h, w = shape
  x1, y1, x2, y2 = (int(round(v)) for v in box)
  mask = np.zeros(shape, np.uint8)
  mask[max(0, y1):min(h, y2 + 1), max(0, x1):min(w, x2 + 1)] = 1
  return mask


class _Object(dict):
  """A JSON object of answers.json that remembers the keys it was given more than once."""

  def __init__(self, pairs):
    super().__init__(pairs)
    counts: dict = {}
    for key, _ in pairs:
      counts[key] = counts.get(key, 0) + 1
    self.repeated = sorted(k for k, n in counts.items() if n > 1)


def _keys_problems(where: str, obj: dict, allowed: Sequence[str] = ()) -> list[str]:
  """Keys given twice (JSON keeps only the last one), and keys outside ``allowed``."""
  out = [f"{where}[{k!r}]: given more than once (only one answer per key)"
         for k in getattr(obj, "repeated", ())]
  if allowed:
    out += [f"{where}[{k!r}]: unknown key; use {', '.join(map(repr, allowed))}"
            for k in obj if k not in allowed]
  return out


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _parse_box(box, shape) -> tuple[np.ndarray, np.ndarray] | str:
  """``(mask, clipped box)`` for a valid box, else what is wrong with it.

  Inclusive pixel corners a little outside the frame (an annotation tool's rounding, a box drawn to
  the edge) are clipped to it; a box with no pixel inside the frame is an error.
  """
  if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
    return f"{box!r} must be [x1, y1, x2, y2], four numbers"
  x1, y1, x2, y2 = box
  if x1 > x2 or y1 > y2:
    return f"{box!r} must be [x1, y1, x2, y2] with x1 <= x2, y1 <= y2"
  h, w = shape
  mask = _box_to_mask(box, shape)
  if not mask.any():
    return f"{box!r} lies entirely outside the {w}x{h} frame (pixels x in [0, {w - 1}], y in [0, {h - 1}])"
  clipped = np.array([np.clip(x1, 0, w - 1), np.clip(y1, 0, h - 1), np.clip(x2, 0, w - 1),
                      np.clip(y2, 0, h - 1)], np.float32)
  return mask, clipped


def load_answers(round_dir: str, frame_size: tuple[int, int], class_names: Sequence[str]) -> dict:
  """Validates answers.json against requests.json.

  Strict: a key given twice (also frame "3" and "03", or a video twice) is an error, not "the last
  one wins"; a label is a class name (a string); a box has four numbers (not booleans) and at least
  one pixel in the frame (corners outside it are clipped); ``empty`` is ``true``; unknown keys are
  errors.

  Returns:
    ``{video_id: {"label": int | None, "frames": {frame: (mask (H, W) uint8, box (4,) or None)}}}``.

  Raises:
    AnswersError listing every missing, extra, repeated, out-of-range or malformed entry.
  """
  requests = load_requests(round_dir)
  path = os.path.join(round_dir, "answers.json")
  try:
    with open(path, encoding="utf-8") as f:
      answers = json.load(f, object_pairs_hook=_Object)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise AnswersError(f"{path}: not valid JSON ({e}).") from None
  given = answers.get("videos") if isinstance(answers, dict) else None
  if not isinstance(given, dict):
    raise AnswersError(f"{path}: expected an object with a 'videos' mapping (see README).")
  problems = _keys_problems("answers", answers, ("videos",)) + _keys_problems("videos", given)
  wanted = {v["video_id"]: v for v in requests["videos"]}
  for vid in sorted(set(given) - set(wanted)):
    problems.append(f"videos[{vid!r}]: extra video, not requested in this round")
  out = {}
  for vid, req in wanted.items():
    ans = given.get(vid)
    if ans is None:
      problems.append(f"videos[{vid!r}]: missing (requested frames {req['frames']})")
      continue
    if not isinstance(ans, dict):
      problems.append(f"videos[{vid!r}]: {ans!r} must be an object with 'frames' (and 'label')")
      continue
    problems += _keys_problems(f"videos[{vid!r}]", ans, ("label", "frames"))
    label = None
    if req["needs_label"]:
      raw = ans.get("label")
      if raw is None:
        problems.append(f"videos[{vid!r}].label: missing (a class name is needed)")
      elif isinstance(raw, str) and raw in class_names:
        label = list(class_names).index(raw)
      else:
        problems.append(f"videos[{vid!r}].label: {raw!r} is not a class name; use one of "
                        f"{list(class_names)} (a string)")
    frames = ans.get("frames", {})
    if not isinstance(frames, dict):
      problems.append(f"videos[{vid!r}].frames: {frames!r} must be an object of frame answers")
      frames = {}
    problems += _keys_problems(f"videos[{vid!r}].frames", frames)
    got, key_of = {}, {}
    for key in frames:
      if not re.fullmatch(r"[0-9]+", key):
        problems.append(f"videos[{vid!r}].frames[{key!r}]: not a frame index (digits only)")
        continue
      f = int(key)
      if f in key_of:
        problems.append(f"videos[{vid!r}].frames[{key!r}]: frame {f} is also given as "
                        f"{key_of[f]!r} (only one answer per frame)")
        continue
      key_of[f] = key
      if not 0 <= f < req["num_frames"]:
        problems.append(f"videos[{vid!r}].frames[{key!r}]: out of range [0, {req['num_frames']})")
      elif f not in req["frames"]:
        problems.append(f"videos[{vid!r}].frames[{key!r}]: extra frame, not requested")
      else:
        got[f] = frames[key]
    for f in req["frames"]:
      if f not in key_of:
        problems.append(f"videos[{vid!r}].frames['{f}']: missing")
    parsed = {}
    for f, entry in sorted(got.items()):
      where = f"videos[{vid!r}].frames[{key_of[f]!r}]"
      if not isinstance(entry, dict) or len(entry) != 1 or len(set(entry) & {"box", "mask",
                                                                           "empty"}) != 1:
        problems.append(f"{where}: give exactly one of 'box', 'mask' or 'empty'")
        continue
      problems += _keys_problems(where, entry)
      if "box" in entry:
        box = _parse_box(entry["box"], frame_size)
        if isinstance(box, str):
          problems.append(f"{where}.box: {box}")
        else:
          parsed[f] = box
      elif "mask" in entry:
        if not isinstance(entry["mask"], str):
          problems.append(f"{where}.mask: {entry['mask']!r} must be a PNG path (a string)")
          continue
        mpath = os.path.join(round_dir, entry["mask"])
        try:
          parsed[f] = (_read_mask(mpath, frame_size), None)
        except (OSError, ValueError) as e:
          problems.append(f"{where}.mask: {mpath} {e}")
      elif entry["empty"] is not True:
        problems.append(f"{where}.empty: {entry['empty']!r}; write true for a frame without an "
                        "actor, or give its 'box' or 'mask'")
      else:
        parsed[f] = (np.zeros(frame_size, np.uint8), None)
    out[vid] = {"label": label, "frames": parsed}
  if problems:
    raise AnswersError(f"{path} does not match {os.path.join(round_dir, 'requests.json')}:\n  " +
                       "\n  ".join(problems) + "\nFix these entries and re-run the same command.")
  return out


class AnnotationOverlay:
  """Human annotations of a run, applied over dataset records (files oracle).

  Saved as ``annotations.npz`` + ``annotations.json`` in the workdir, rebuilt from the validated
  answers of every finished round, so it never holds anything that was not answered.
  """

  def __init__(self):
    self.labels: dict[str, int] = {}
    self.masks: dict[str, dict[int, np.ndarray]] = {}
    self.boxes: dict[str, dict[int, np.ndarray]] = {}

  def add(self, answers: dict) -> None:
    for vid, ans in answers.items():
      if ans["label"] is not None:
        self.labels[vid] = ans["label"]
      for f, (mask, box) in ans["frames"].items():
        self.masks.setdefault(vid, {})[f] = mask
        if box is not None:
          self.boxes.setdefault(vid, {})[f] = box

  def apply(self, record: VideoRecord) -> VideoRecord:
    """The record with the annotated label, masks and boxes at the annotated frames."""
    import dataclasses

    vid = record.video_id
    if vid not in self.labels and vid not in self.masks:
      return record
    masks = record.masks.copy()
    boxes = record.boxes.copy()
    has_gt = record.has_gt.copy()
    for f, m in self.masks.get(vid, {}).items():
      masks[f] = m
      has_gt[f] = bool(m.any())
      if boxes.shape[0]:
        ys, xs = np.nonzero(m)
        box = self.boxes.get(vid, {}).get(f)
        if box is None and len(xs):
          box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
        boxes[:, f] = np.nan
        if box is not None:
          boxes[0, f] = box
    return dataclasses.replace(record, label=self.labels.get(vid, record.label), masks=masks,
                               boxes=boxes, has_gt=has_gt)
