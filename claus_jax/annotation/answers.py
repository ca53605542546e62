"""What every importer ends with: per-frame shapes in prepared coordinates -> ``answers.json``.

A frame with one box is answered by that box; a frame with several shapes, or a polygon, by a mask
PNG of their union under ``round_K/masks/``; a frame the annotators marked without an actor by
``{"empty": true}``. The file then goes through the same validation as a hand-written
``answers.json`` (:func:`claus_jax.oracle.load_answers`), and is removed again if it fails, so a run
never continues on answers that were not checked.
"""

from __future__ import annotations

import os
import re

import numpy as np
from PIL import Image

from claus_jax import oracle as oracle_lib
from claus_jax import pool as pool_lib
from claus_jax.annotation.geometry import AnnotationError


def mask_name(video_id: str, frame: int) -> str:
  safe = re.sub(r"[^A-Za-z0-9_.-]", "_", video_id)
  return f"masks/{safe}_{frame:05d}.png"


def frame_answer(round_dir: str, video_id: str, frame: int, shapes: list, size: int) -> dict:
  """One frame's entry of answers.json from its shapes, each ``("box", stored box)`` or
  ``("mask", stored (size, size) mask)``; no shape is an empty frame."""
  if not shapes:
    return {"empty": True}
  if len(shapes) == 1 and shapes[0][0] == "box":
    return {"box": [float(v) for v in shapes[0][1]]}  # float32 values, exact in JSON.
  from claus_jax.data import official

  union = np.zeros((size, size), np.uint8)
  for kind, value in shapes:
    union |= (official.fill_boxes(np.asarray(value, np.float32)[None, None], size)[0]
              if kind == "box" else (np.asarray(value) > 0).astype(np.uint8))
  name = mask_name(video_id, frame)
  path = os.path.join(round_dir, name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pool_lib.atomic_write(path, lambda f: Image.fromarray(union * 255).save(f, format="PNG"))
  return {"mask": name}


def write_answers(round_dir: str, videos: dict, size: int, class_names) -> dict:
  """Writes ``round_dir/answers.json`` from ``{video_id: {"label": name | None, "frames": {frame:
  [shapes]}}}`` and validates it against the round's requests.

  Returns:
    What :func:`claus_jax.oracle.load_answers` returns.

  Raises:
    AnnotationError when the answers do not match the requests (the file is removed again).
  """
  out = {}
  for vid, ans in sorted(videos.items()):
    entry = {"frames": {str(f): frame_answer(round_dir, vid, f, shapes, size)
                        for f, shapes in sorted(ans["frames"].items())}}
    if ans.get("label") is not None:
      entry["label"] = ans["label"]
    out[vid] = entry
  path = os.path.join(round_dir, "answers.json")
  if os.path.exists(path):
    raise AnnotationError(f"{path} exists already; move it away to import these answers instead "
                          "(nothing was changed).")
  pool_lib.atomic_write_json(path, {"videos": out})
  try:
    return oracle_lib.load_answers(round_dir, (size, size), class_names)
  except oracle_lib.AnswersError as e:
    os.remove(path)
    raise AnnotationError(f"{e}\n(the imported answers.json was removed again)") from None
