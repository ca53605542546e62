"""The .npz files of MC-dropout scores: the main job's score shards and the ``score`` command's.

Both hold the per-video fields of :class:`claus_jax.uncertainty.VideoScores`
(:data:`PER_VIDEO_FIELDS`), one array per video and field, written atomically (temporary file,
fsync, rename: :func:`claus_jax.pool.atomic_write_npz`). They differ in key order and content:

* ``round_K/scores/shard_NNNN.npz`` (the main job, :func:`save_shard` / :func:`load_shard`): keys
  ``'<video_id>/<field>'``; ``frame_scores`` is ``(R, n, T)`` with every pass count 1..R.
* ``--out`` of ``python -m claus_jax.score`` (:func:`split_arrays`, :func:`save_scores`,
  :func:`load_scores`): keys ``'<field>/<video_id>'``; ``frame_scores`` holds only the stored pass
  counts, and the file carries the split's metadata (layout in :mod:`claus_jax.score`).

No module here defines flags, so the main job and the command both import it.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from claus_jax import pool as pool_lib

PER_VIDEO_FIELDS = ("frame_scores", "entropy", "mean_prob", "latent", "class_probs")

Videos = dict[str, dict[str, np.ndarray]]  # {video_id: {field: array}}


def video_fields(results: Iterable) -> Videos:
  """``{video_id: {field: array}}`` of scored videos (``VideoScores``), in their order."""
  return {res.video_id: {field: np.asarray(getattr(res, field)) for field in PER_VIDEO_FIELDS}
          for res in results}


def save_shard(path: str, videos: Videos) -> None:
  """Writes one score shard (``'<video_id>/<field>'`` keys) to ``path`` atomically."""
  pool_lib.atomic_write_npz(path, {f"{vid}/{field}": fields[field]
                                   for vid, fields in videos.items() for field in PER_VIDEO_FIELDS})


def load_shard(path: str) -> Videos:
  """The shard that :func:`save_shard` wrote, as ``{video_id: {field: array}}``.

  Raises:
    pool.StateFileError: the file is damaged (torn, not an npz); the message says to delete it.
  """
  out: Videos = {}
  try:
    with np.load(path) as data:
      for name in data.files:
        vid, field = name.rsplit("/", 1)  # A video id may hold '/'; a field never does.
        out.setdefault(vid, {})[field] = data[name]
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise pool_lib.state_file_error(path, f"{type(e).__name__}: {e}", "delete it and re-run the "
                                    "same command to score its videos again.") from None
  return out


def for_selection(videos: Videos) -> Videos:
  """Adds the selection's view to every video, in place, and returns ``videos``.

  Selection uses the configured R (all passes) and the configured threshold (index 0):
  ``frame_scores`` becomes ``(T,)``, and the full ``(R, n, T)`` array stays as ``all_frame_scores``.
  """
  for fields in videos.values():
    fields["all_frame_scores"] = fields["frame_scores"]
    fields["frame_scores"] = fields["frame_scores"][-1, 0]
  return videos


def split_arrays(results: Sequence, video_ids: Sequence[str], passes: Sequence[int],
                 thresholds: Sequence[float]) -> dict[str, np.ndarray]:
  """The ``score`` command's arrays for ``results`` (``VideoScores`` in ``video_ids`` order).

  ``frame_scores`` keeps the pass counts ``passes`` (1-based) of the ``(R, n, T)`` scores.

  Raises:
    RuntimeError: a result is not the video expected at its position.
  """
  take = np.asarray(passes, np.int64) - 1
  arrays: dict[str, np.ndarray] = {}
  for expected, res in zip(video_ids, results):
    if res.video_id != expected:
      raise RuntimeError(f"scorer returned {res.video_id!r} where {expected!r} was expected.")
    arrays[f"frame_scores/{res.video_id}"] = res.frame_scores[take]
    for field in PER_VIDEO_FIELDS[1:]:
      arrays[f"{field}/{res.video_id}"] = getattr(res, field)
  arrays["video_ids"] = np.asarray(list(video_ids), dtype=str)
  arrays["num_frames"] = np.asarray([len(r.entropy) for r in results], np.int64)
  arrays["passes"] = np.asarray(passes, np.int32)
  arrays["thresholds"] = np.asarray(thresholds, np.float32)
  return arrays


def save_scores(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  """Writes the ``score`` command's ``arrays`` to ``path`` atomically (no '.npz' is appended)."""
  pool_lib.atomic_write_npz(path, arrays)


def load_scores(path: str) -> dict:
  """Reads a ``score`` output.

  Returns:
    ``{'video_ids', 'passes', 'thresholds', ..., 'videos': {video_id: {field: array}}}``.
  """
  out: dict = {"videos": {}}
  with np.load(path) as data:
    for name in data.files:
      field, sep, vid = name.partition("/")
      if sep and field in PER_VIDEO_FIELDS:
        out["videos"].setdefault(vid, {})[field] = data[name]
      else:
        out[name] = data[name]
  return out
