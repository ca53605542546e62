"""Label Studio round trip: a round's requests become a project's tasks; its JSON export, the answers.

Export (:func:`export`) writes, into one folder:
  * ``label_config.xml``: the project's labeling interface: the requested frames of one video as an
    image sequence (``<Image valueList>``, one page per frame), boxes for the actor
    (``RectangleLabels`` "actor"), the action (``Choices`` "action", single) and the frames without
    an actor (``Choices`` "no_actor", one option per requested frame);
  * ``tasks.json``: one task per requested video, importable as it is. ``data`` holds the frames'
    URLs, ``video_id``, ``frame_indices`` (0-based) and ``frame_files`` (the original files); the
    current model's boxes and action, when the run wrote ``predictions.json``, are the task's
    ``predictions``, so annotators correct boxes rather than draw them.
  * ``README.txt``: how to start Label Studio on these files and import them.
Frame URLs are Label Studio's local-file URLs (``/data/local-files/?d=<path>``) relative to a
document root, the folder Label Studio is told to serve (``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``).

Import (:func:`to_answers`) reads Label Studio's JSON export (Export -> JSON, or
``GET /api/projects/<id>/export?exportType=JSON``). Each requested video needs one task with one
submitted (not cancelled) annotation: a box on every requested frame with an actor, or that frame
ticked under "no actor"; and the action where the request asks for a label. Boxes are Label Studio's
percentages of the original image; they become the prepared frame's inclusive corners
(:mod:`claus_jax.annotation.geometry`). Every problem is named by task, video, frame and field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from xml.sax.saxutils import quoteattr

import numpy as np

from claus_jax import pool as pool_lib
from claus_jax.annotation.geometry import AnnotationError
from claus_jax.annotation.geometry import SourceVideo

ACTOR, ACTION, NO_ACTOR, IMAGES = "actor", "action", "no_actor", "frames"
LOCAL_FILES_PREFIX = "/data/local-files/?d="


def label_config(class_names: Sequence[str]) -> str:
  """The project's labeling interface (XML)."""
  choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in class_names)
  return f"""<View>
  <Header value="$instructions"/>
  <Image name="{IMAGES}" valueList="${IMAGES}"/>
  <RectangleLabels name="{ACTOR}" toName="{IMAGES}">
    <Label value="actor" background="#00ff00"/>
  </RectangleLabels>
  <Header value="Action of the video"/>
  <Choices name="{ACTION}" toName="{IMAGES}" choice="single" showInline="true">
{choices}
  </Choices>
  <Header value="Frames without an actor"/>
  <Choices name="{NO_ACTOR}" toName="{IMAGES}" choice="multiple" value="$no_actor_options"/>
</View>
"""


def frame_option(frame: int) -> str:
  """How a frame is named to annotators, and its "no actor" option: the 0-based index of requests.json
  and the original file's number (frame 0 is file 00001)."""
  return f"frame {frame} (file {frame + 1:05d})"


def percent(box, height: int, width: int) -> dict:
  """An original frame's inclusive pixel box -> Label Studio's value (percent of the image)."""
  x1, y1, x2, y2 = (float(v) for v in box)
  return {"x": 100 * x1 / width, "y": 100 * y1 / height, "width": 100 * (x2 + 1 - x1) / width,
          "height": 100 * (y2 + 1 - y1) / height, "rotation": 0}


def from_percent(value: dict, height: int, width: int) -> np.ndarray:
  """Label Studio's box value -> the original frame's inclusive pixel box (inverse of
  :func:`percent`)."""
  x1 = value["x"] * width / 100
  y1 = value["y"] * height / 100
  return np.array([x1, y1, x1 + value["width"] * width / 100 - 1,
                   y1 + value["height"] * height / 100 - 1], np.float32)


def _url(path: str, document_root: str) -> str:
  rel = os.path.relpath(path, document_root)
  if rel.startswith(".."):
    raise AnnotationError(f"frame file {path} is outside the document root {document_root}; pass a "
                          "--document_root that holds every frame.")
  return LOCAL_FILES_PREFIX + rel.replace(os.sep, "/")


def _prediction(req: dict, source: SourceVideo, predicted: dict | None, model_version: str):
  if not predicted:
    return []
  result = []
  for i, f in enumerate(req["frames"]):
    box = predicted.get("frames", {}).get(str(f), {}).get("box")
    if box is None:
      continue
    result.append({"id": f"p{i}", "from_name": ACTOR, "to_name": IMAGES,
                   "type": "rectanglelabels", "item_index": i,
                   "original_width": source.width, "original_height": source.height,
                   "value": {**percent(source.to_original(box), source.height, source.width),
                             "rectanglelabels": ["actor"]}})
  if predicted.get("label") is not None:
    result.append({"id": "pa", "from_name": ACTION, "to_name": IMAGES, "type": "choices",
                   "value": {"choices": [predicted["label"]]}})
  return [{"model_version": model_version, "score": predicted.get("score"), "result": result}]


def tasks(requests: dict, sources: dict[str, SourceVideo], document_root: str,
          predictions: dict | None = None) -> list[dict]:
  """Label Studio tasks of ``requests`` (requests.json), one per video."""
  out = []
  model_version = f"round_{int(requests['round']) - 1:03d}"
  for req in requests["videos"]:
    vid = req["video_id"]
    source = sources[vid]
    frames = [int(f) for f in req["frames"]]
    todo = (f"Video {vid}: draw the actor's box on each of the {len(frames)} frames "
            "(page through them), or tick the frame under 'no actor'")
    todo += "; choose the action." if req["needs_label"] else "."
    out.append({
        "data": {
            IMAGES: [_url(source.frame_files[f], document_root) for f in frames],
            "video_id": vid, "round": int(requests["round"]), "needs_label": bool(req["needs_label"]),
            "frame_indices": frames,
            "frame_files": [source.frame_files[f] for f in frames],
            "no_actor_options": [{"value": frame_option(f)} for f in frames],
            "instructions": todo},
        "predictions": _prediction(req, source, (predictions or {}).get(vid), model_version)})
  return out


def export(round_dir: str, out_dir: str, requests: dict, sources: dict[str, SourceVideo],
           class_names, document_root: str) -> dict:
  """Writes label_config.xml, tasks.json and README.txt for ``requests`` (round_dir's
  requests.json), with the model's predictions.json of that round if there is one."""
  pred_path = os.path.join(round_dir, "predictions.json")
  predictions = (pool_lib.read_json(pred_path, require=("videos",))["videos"]
                 if os.path.exists(pred_path) else None)
  os.makedirs(out_dir, exist_ok=True)
  made = tasks(requests, sources, os.path.abspath(document_root), predictions)
  pool_lib.atomic_write_text(os.path.join(out_dir, "label_config.xml"), label_config(class_names))
  pool_lib.atomic_write_json(os.path.join(out_dir, "tasks.json"), made)
  root = os.path.abspath(document_root)
  pool_lib.atomic_write_text(os.path.join(out_dir, "README.txt"), f"""\
Round {requests['round']}: {len(made)} videos to annotate in Label Studio.

1. Start Label Studio serving the frames:
     LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true \\
     LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={root} label-studio start
2. Create a project; Settings -> Labeling Interface -> Code: paste label_config.xml.
3. Import tasks.json (its boxes are the current model's, to correct).
4. Annotate every task and submit; then Export -> JSON, and run
     python -m claus_jax.annotate import --tool=label_studio --file=<export.json> ...
   with the same --config and --workdir as this export.
""")
  return {"tasks": len(made), "predictions": predictions is not None}


def _choice_values(item: dict) -> list:
  value = item.get("value", {})
  return value.get("choices", []) if isinstance(value, dict) else []


def to_answers(export_json: list, requests: dict, sources: dict[str, SourceVideo],
               class_names: Sequence[str]) -> dict:
  """Label Studio's JSON export -> ``{video_id: {"label", "frames": {frame: [shapes]}}}`` for
  :func:`claus_jax.annotation.answers.write_answers` (prepared coordinates).

  Raises:
    AnnotationError naming every problem (task id, video, frame, field).
  """
  if not isinstance(export_json, list):
    raise AnnotationError("the Label Studio export must be a JSON list of tasks (Export -> JSON).")
  wanted = {v["video_id"]: v for v in requests["videos"]}
  problems, out, seen = [], {}, {}
  for task in export_json:
    where = f"task {task.get('id', '?')}"
    data = task.get("data", {}) if isinstance(task, dict) else {}
    vid = data.get("video_id")
    if vid not in wanted:
      problems.append(f"{where}: video_id {vid!r} is not requested in round {requests['round']}")
      continue
    where += f" (video {vid})"
    if vid in seen:
      problems.append(f"{where}: video also in task {seen[vid]}; keep one task per video")
      continue
    seen[vid] = task.get("id", "?")
    req, source = wanted[vid], sources[vid]
    frames = [int(f) for f in req["frames"]]
    if data.get("frame_indices") != frames:
      problems.append(f"{where}: data.frame_indices {data.get('frame_indices')} differ from the "
                      f"request's frames {frames}; export the tasks of this round again")
      continue
    done = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
    if len(done) != 1:
      problems.append(f"{where}: {len(done)} submitted annotations; keep exactly one (delete or "
                      "cancel the others in Label Studio)")
      continue
    shapes = {f: [] for f in frames}
    empty, label = set(), None
    options = {frame_option(f): f for f in frames}
    for k, item in enumerate(done[0].get("result", [])):
      at = f"{where}: result[{k}]"
      kind, name = item.get("type"), item.get("from_name")
      if name == ACTOR and kind == "rectanglelabels":
        i = item.get("item_index", 0)
        if not isinstance(i, int) or not 0 <= i < len(frames):
          problems.append(f"{at}: item_index {i!r} is not one of the task's {len(frames)} frames")
          continue
        f = frames[i]
        size = (item.get("original_height"), item.get("original_width"))
        if size != (source.height, source.width):
          problems.append(f"{at} ({frame_option(f)}): drawn on a {size[1]}x{size[0]} image, "
                          f"the original frames are {source.width}x{source.height}")
          continue
        value = item.get("value", {})
        if any(not isinstance(value.get(key), (int, float)) for key in ("x", "y", "width",
                                                                         "height")):
          problems.append(f"{at} ({frame_option(f)}): value {value!r} needs numbers x, y, "
                          "width, height")
          continue
        if value.get("rotation", 0):
          problems.append(f"{at} ({frame_option(f)}): rotated box ({value['rotation']} "
                          "degrees); draw it upright")
          continue
        if value["width"] <= 0 or value["height"] <= 0:
          problems.append(f"{at} ({frame_option(f)}): box of no area")
          continue
        box = from_percent(value, source.height, source.width)
        shapes[f].append(("box", source.to_stored(box)))
      elif name == ACTION and kind == "choices":
        picked = _choice_values(item)
        if len(picked) != 1 or picked[0] not in class_names:
          problems.append(f"{at}: action {picked!r}; choose one of {list(class_names)}")
        else:
          label = picked[0]
      elif name == NO_ACTOR and kind == "choices":
        for option in _choice_values(item):
          if option not in options:
            problems.append(f"{at}: 'no actor' option {option!r} is not one of {sorted(options)}")
          else:
            empty.add(options[option])
      else:
        problems.append(f"{at}: unexpected {kind!r} result from {name!r}; use label_config.xml "
                        "of the export")
    for f in frames:
      if shapes[f] and f in empty:
        problems.append(f"{where}: {frame_option(f)} has a box and is ticked 'no actor'")
      elif not shapes[f] and f not in empty:
        problems.append(f"{where}: {frame_option(f)} has no box and is not ticked 'no actor'")
    if req["needs_label"] and label is None:
      problems.append(f"{where}: no action chosen (this video needs its label)")
    out[vid] = {"label": label if req["needs_label"] else None, "frames": shapes}
  for vid in sorted(set(wanted) - set(seen)):
    problems.append(f"video {vid}: no task in the export (requested frames "
                    f"{[frame_option(f) for f in wanted[vid]['frames']]})")
  if problems:
    raise AnnotationError("the Label Studio export does not answer round "
                          f"{requests['round']}:\n  " + "\n  ".join(problems))
  return out


def read_export(path: str) -> list:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise AnnotationError(f"{path}: cannot read the Label Studio export ({e}); export the project "
                          "as JSON again.") from None
