"""TensorBoard event files of a run, rebuilt from the rounds' files (``tensorboard --logdir WORKDIR/tensorboard``).

Layout under ``WORKDIR/tensorboard/``:
  * ``round_K/``: round K's training metrics (``train/total``, ``train/localization``, ...) at every
    logged step, from ``round_K/train.json`` once the round is trained, from the live
    ``train_history.json`` while it trains;
  * ``rounds/``: one point per evaluated round (step = round index): every scalar test metric as
    ``test/<metric>`` (``test/capsule/f-mAP_iou0.5``, ``test/accuracy``, ...; :func:`tag`) and the pool's size and
    cost as ``pool/<field>``.

Like the other reports, every run folder is written from the workdir's files alone and replaces the
previous one whole (written beside it, then swapped in), so a resumed or recomputed round never shows
twice and a crash leaves either the old folder or the new one. The writer is tensorboardX (no
TensorFlow needed); TensorBoard itself is only needed to look (``pip install tensorboard``).
"""

from __future__ import annotations

import os
import re
import shutil

from claus_jax import pool as pool_lib

DIR = "tensorboard"
_STAGING = ".tensorboard-staging"  # Beside DIR, so TensorBoard never scans a half-written run.
POOL_FIELDS = ("videos_pct", "frames_pct", "labelled_videos", "labelled_frames", "cost")


def tag(name: str) -> str:
  """TensorBoard's tag for a metric name: it allows ``[A-Za-z0-9_./-]``, so the IoU threshold's
  ``@`` becomes ``_iou`` (``capsule/f-mAP@0.5`` -> ``capsule/f-mAP_iou0.5``), anything else ``_``."""
  return re.sub(r"[^A-Za-z0-9_./-]", "_", name.replace("@", "_iou"))


def _is_scalar(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # NaN is left out.


def write_run(workdir: str, run: str, points: list[tuple[str, float, int]]) -> str:
  """Replaces ``WORKDIR/tensorboard/<run>`` by an event file of ``(tag, value, step)`` points."""
  from tensorboardX import SummaryWriter  # Imported here: only reports write events.

  final = os.path.join(workdir, DIR, run)
  staging = os.path.join(workdir, _STAGING, run)
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(os.path.dirname(final), exist_ok=True)
  writer = SummaryWriter(logdir=staging, flush_secs=3600)
  try:
    for name, value, step in points:
      writer.add_scalar(tag(name), float(value), int(step))
  finally:
    writer.close()
  old = os.path.join(workdir, _STAGING, run + ".old")
  shutil.rmtree(old, ignore_errors=True)
  if os.path.isdir(final):
    os.rename(final, old)
  os.rename(staging, final)
  shutil.rmtree(old, ignore_errors=True)
  return final


def training_points(history: list[dict]) -> list[tuple[str, float, int]]:
  """``train/<metric>`` at each logged step of a round's training history."""
  return [(f"train/{k}", v, row["step"]) for row in history for k, v in sorted(row.items())
          if k != "step" and _is_scalar(v)]


def round_points(rows: list[dict]) -> list[tuple[str, float, int]]:
  """``test/<metric>`` and ``pool/<field>`` per evaluated round (:func:`reporting.collect` rows)."""
  points = []
  for row in rows:
    r = row["round"]
    points += [(f"pool/{k}", row[k], r) for k in POOL_FIELDS if _is_scalar(row.get(k))]
    points += [(f"test/{k}", v, r) for k, v in sorted(row.items())
               if k not in POOL_FIELDS and k not in ("round", "final_loss") and _is_scalar(v)]
  return points


def round_history(workdir: str, round_index: int) -> list[dict] | None:
  """Round ``round_index``'s logged training rows: train.json's when trained, else the live file's."""
  rd = os.path.join(workdir, f"round_{round_index:03d}")
  done = os.path.join(rd, "train.json")
  if os.path.exists(done):
    return pool_lib.read_json(done, require=("history",))["history"]
  live = os.path.join(rd, "train_history.json")
  if os.path.exists(live):
    return pool_lib.read_json(live)
  return None


def write_training(workdir: str, round_index: int) -> str | None:
  """Rebuilds ``tensorboard/round_K`` (called at each log step while the round trains)."""
  history = round_history(workdir, round_index)
  if history is None:
    return None
  return write_run(workdir, f"round_{round_index:03d}", training_points(history))


def write_all(workdir: str, rows: list[dict]) -> None:
  """Rebuilds every run folder: each round's training and the per-round test metrics."""
  rounds = sorted(int(n.split("_")[1]) for n in os.listdir(workdir)
                  if n.startswith("round_") and n.split("_")[1].isdigit())
  kept = {f"round_{r:03d}" for r in rounds if write_training(workdir, r) is not None}
  board = os.path.join(workdir, DIR)
  for name in os.listdir(board) if os.path.isdir(board) else ():
    if name.startswith("round_") and name not in kept:  # A round set aside by --recompute_from.
      shutil.rmtree(os.path.join(board, name), ignore_errors=True)
  if rows:
    write_run(workdir, "rounds", round_points(rows))
