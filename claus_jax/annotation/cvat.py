"""CVAT import: a "CVAT for video 1.1" XML export of one task per requested video -> the round's
answers.

What is read (the format's documentation, "CVAT for video 1.1"):
  * ``meta/task/name``: the video's id in the dataset (name each CVAT task after its video, or pass
    the id explicitly); ``meta/task/original_size``: the original frame size, checked against the
    video's frames; ``start_frame`` and ``frame_filter`` (``step=K``): CVAT's frame ``i`` is the
    video's frame ``start_frame + i * K``.
  * ``track`` elements (label = the action's class name; every track of a video must agree) with
    ``box`` (``xtl ytl xbr ybr``) and ``polygon`` (``points="x,y;x,y;..."``) shapes per frame,
    ``outside="1"`` where the actor has left. A requested frame between two box shapes (keyframes)
    that the export does not list gets the linear interpolation CVAT shows; a frame after an ``outside`` shape has no actor. Plain shapes outside tracks (annotation
    mode) are read too.
  * Coordinates are continuous pixels of the original frame (pixel ``i`` spans ``[i, i + 1)``): a
    box covers the pixels whose centres it holds, ``x1 = ceil(xtl - 0.5)`` ... ``x2 = floor(xbr -
    0.5)``; a polygon is filled at the original size. Then both map to the prepared frame
    (:mod:`claus_jax.annotation.geometry`).
A requested frame with no shape of any track is a frame without an actor. Mask shapes (CVAT 2's
brush) are refused with the advice to export polygons.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence

import numpy as np

from claus_jax.annotation.geometry import AnnotationError
from claus_jax.annotation.geometry import SourceVideo
from claus_jax.annotation.geometry import polygon_mask

SHAPES = ("box", "polygon")


def _int(el, name, default=None):
  raw = el.get(name) if el is not None else None
  if raw is None:
    if default is None:
      raise ValueError(f"<{el.tag if el is not None else '?'}> has no {name!r} attribute")
    return default
  return int(raw)


def _text(root, path, default=None):
  el = root.find(path)
  return default if el is None or el.text is None else el.text.strip()


def _box_pixels(el) -> np.ndarray:
  """A CVAT box's continuous corners -> inclusive pixel corners (centres inside)."""
  xtl, ytl, xbr, ybr = (float(el.get(k)) for k in ("xtl", "ytl", "xbr", "ybr"))
  return np.array([math.ceil(xtl - 0.5), math.ceil(ytl - 0.5), math.floor(xbr - 0.5),
                   math.floor(ybr - 0.5)], np.float32)


def _polygon_points(el) -> list[tuple[float, float]]:
  return [tuple(float(v) for v in pair.split(",")) for pair in el.get("points", "").split(";")
          if pair]


class _Track:
  """One CVAT track's shapes, by the video's frame index."""

  def __init__(self, label: str, shapes: dict[int, tuple[str, object, bool]]):
    self.label = label
    self.shapes = shapes  # frame -> (kind, geometry, outside)

  def at(self, frame: int):
    """The track's shape at ``frame``: ``(kind, geometry)``, or None (no actor there)."""
    if frame in self.shapes:
      kind, geom, outside = self.shapes[frame]
      return None if outside else (kind, geom)
    before = [f for f in self.shapes if f < frame]
    after = [f for f in self.shapes if f > frame]
    if not before:
      return None  # The track starts later.
    prev = self.shapes[max(before)]
    if prev[2]:
      return None  # The actor left (outside) and has not come back.
    if not after:
      return prev[0], prev[1]  # CVAT keeps the last shape to the end.
    nxt = self.shapes[min(after)]
    if prev[0] == nxt[0] == "box" and not nxt[2]:
      a, b = max(before), min(after)
      w = (frame - a) / (b - a)
      return "box", (1 - w) * prev[1] + w * nxt[1]
    return (prev[0], prev[1])


def parse(xml_text: str, where: str) -> dict:
  """The parts of a CVAT for video export that matter: ``{"name", "size": (H, W), "tracks"}``."""
  try:
    root = ET.fromstring(xml_text)
  except ET.ParseError as e:
    raise AnnotationError(f"{where}: not valid XML ({e}); export the task again as "
                          "'CVAT for video 1.1'.") from None
  if root.tag != "annotations":
    raise AnnotationError(f"{where}: the root element is <{root.tag}>, not <annotations>; export "
                          "as 'CVAT for video 1.1'.")
  if root.find("image") is not None:
    raise AnnotationError(f"{where}: holds <image> elements ('CVAT for images'); export the task as "
                          "'CVAT for video 1.1'.")
  task = root.find("meta/task")
  if task is None:
    task = root.find("meta/job")
  if task is None:
    raise AnnotationError(f"{where}: no <meta><task> (name, original_size); export a whole task as "
                          "'CVAT for video 1.1'.")
  problems = []
  try:
    height = int(_text(task, "original_size/height"))
    width = int(_text(task, "original_size/width"))
  except (TypeError, ValueError):
    problems.append("meta/task/original_size: needs integer <width> and <height>")
    height = width = 0
  start = int(_text(task, "start_frame", "0") or 0)
  step_text = _text(task, "frame_filter", "") or ""
  match = re.fullmatch(r"(?:step\s*=\s*(\d+))?", step_text)
  if match is None:
    problems.append(f"meta/task/frame_filter: {step_text!r}; only 'step=K' is understood")
    step = 1
  else:
    step = int(match.group(1) or 1)
  tracks = []
  elements = [(f"track {t.get('id', i)}", t.get("label"), list(t)) for i, t in
              enumerate(root.findall("track"))]
  loose = [el for el in root if el.tag in SHAPES + ("mask", "polyline", "points", "ellipse")]
  for i, el in enumerate(loose):
    elements.append((f"<{el.tag}> {i} outside tracks", el.get("label"), [el]))
  for name, label, shapes in elements:
    by_frame = {}
    for el in shapes:
      if el.tag not in SHAPES:
        advice = "export polygons instead" if el.tag == "mask" else "use boxes or polygons"
        problems.append(f"{name}: <{el.tag}> shapes are not read; {advice}")
        continue
      try:
        frame = start + _int(el, "frame") * step
        outside = bool(_int(el, "outside", 0))
        geom = _box_pixels(el) if el.tag == "box" else _polygon_points(el)
      except (TypeError, ValueError) as e:
        problems.append(f"{name}: <{el.tag} frame={el.get('frame')!r}>: {e}")
        continue
      if frame in by_frame:
        problems.append(f"{name}: two shapes on frame {frame}; one track holds one shape a frame")
        continue
      by_frame[frame] = (el.tag, geom, outside)
    tracks.append(_Track(label, by_frame))
  if problems:
    raise AnnotationError(f"{where}:\n  " + "\n  ".join(problems))
  return {"name": _text(task, "name", ""), "size": (height, width), "tracks": tracks}


def to_answers(files: Sequence[tuple[str, str]], requests: dict, sources: dict[str, SourceVideo],
               class_names: Sequence[str], video_ids: Sequence[str] = ()) -> dict:
  """CVAT exports ``[(path, xml text)]`` -> answers in prepared coordinates (for
  :func:`claus_jax.annotation.answers.write_answers`).

  Args:
    video_ids: the video of each file, in order; empty = each task's name.

  Raises:
    AnnotationError naming every problem (file, video, track, frame).
  """
  wanted = {v["video_id"]: v for v in requests["videos"]}
  if video_ids and len(video_ids) != len(files):
    raise AnnotationError(f"{len(video_ids)} video ids for {len(files)} CVAT files; give one per "
                          "file, in the same order.")
  problems, out, seen = [], {}, {}
  for k, (path, text) in enumerate(files):
    try:
      parsed = parse(text, path)
    except AnnotationError as e:
      problems.append(str(e))
      continue
    vid = video_ids[k] if video_ids else parsed["name"]
    if vid not in wanted:
      problems.append(f"{path}: task {parsed['name']!r} is not a video requested in round "
                      f"{requests['round']} ({sorted(wanted)}); name the task after its video or "
                      "pass its id with --video_id")
      continue
    if vid in seen:
      problems.append(f"{path}: video {vid} is also answered by {seen[vid]}")
      continue
    seen[vid] = path
    source, req = sources[vid], wanted[vid]
    where = f"{path} (video {vid})"
    if parsed["size"] != (source.height, source.width):
      h, w = parsed["size"]
      problems.append(f"{where}: original_size {w}x{h}, but the video's frames are "
                      f"{source.width}x{source.height}")
      continue
    labels = sorted({t.label for t in parsed["tracks"] if t.label is not None})
    label = None
    if req["needs_label"]:
      if len(labels) != 1:
        problems.append(f"{where}: track labels {labels}; this video needs its action, so its tracks "
                        "must carry one class name")
      elif labels[0] not in class_names:
        problems.append(f"{where}: label {labels[0]!r} is not a class name ({list(class_names)})")
      else:
        label = labels[0]
    frames = {}
    for f in req["frames"]:
      shapes = []
      for t in parsed["tracks"]:
        shape = t.at(int(f))
        if shape is None:
          continue
        kind, geom = shape
        if kind == "box":
          shapes.append(("box", source.to_stored(geom)))
        else:
          shapes.append(("mask", source.stored_mask(
              polygon_mask(geom, source.height, source.width))))
      frames[int(f)] = shapes
    out[vid] = {"label": label, "frames": frames}
  for vid in sorted(set(wanted) - set(seen)):
    problems.append(f"video {vid}: no CVAT file answers it")
  if problems:
    raise AnnotationError(f"the CVAT exports do not answer round {requests['round']}:\n  " +
                          "\n  ".join(problems))
  return out
