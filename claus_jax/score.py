"""Scores a whole split with the MC-dropout scorer, for every R and background threshold of a sweep.

Run:
  python -m claus_jax.score --config=configs/synthetic.py \\
      --checkpoint=runs/synthetic/round_000/checkpoints --split=train --out=scores.npz

One run of R = ``config.uncertainty.passes`` passes per clip gives the scores after every R' <= R
passes (running means) and at every threshold of ``(bg_threshold,) + sweep_thresholds``, at no extra
forward passes (see :mod:`claus_jax.uncertainty`). ``--checkpoint`` is an orbax checkpoint folder of
a run (``<workdir>/round_K/checkpoints``; the round folder or a folder holding ``checkpoints/`` is
accepted too); its latest step is restored. The dropout keys are the run's: ``fold_in(fold_in(
PRNGKey(seed), 2), K)`` with the video's split index, so on the train split the scores equal those
the run wrote to ``round_K/scores`` (K is read from the path, or given by ``--round``).

Output layout (``np.load(out)``; N videos, P stored pass counts, n thresholds, T frames of a video):
  video_ids                  (N,) str      videos in split order
  num_frames                 (N,) int64    T of each video
  passes                     (P,) int32    the R' values stored, ascending; all of 1..R unless
                                           ``config.uncertainty.sweep_passes`` is set, in which case
                                           those and R itself
  thresholds                 (n,) float32  background thresholds; [0] is ``uncertainty.bg_threshold``
  frame_scores/<video_id>    (P, n, T) float32: score of frame t after passes[p] passes at
                                           thresholds[i] (``uncertainty.form`` decides the formula)
  entropy/<video_id>         (T,) float32  entropy-baseline frame score (mean pixel binary entropy of
                                           the R-pass mean prediction)
  mean_prob/<video_id>       (T,) float32  mean foreground probability per frame (R passes)
  latent/<video_id>          (D,) float32  latent averaged over the video's clips and passes
  class_probs/<video_id>     (C,) float32  class probabilities, averaged likewise
  form, split                () str
  round, checkpoint_step, seed  () int64
Read one video with ``data[f"frame_scores/{vid}"]``; :func:`load_scores` returns nested dicts.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file the run used, e.g. configs/synthetic.py (plus the same overrides).",
    lock_config=True)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Orbax checkpoint folder of a run: <workdir>/round_K/checkpoints.")
_SPLIT = flags.DEFINE_enum("split", "train", ["train", "test"], "Split to score.")
_OUT = flags.DEFINE_string("out", None, "Output .npz file.")
_ROUND = flags.DEFINE_integer(
    "round", -1, "Round whose dropout keys to use; -1 = read round_K from --checkpoint (else 0).")
_QUIET = flags.DEFINE_bool("quiet", False, "Turn off the progress bar.")

PER_VIDEO_FIELDS = ("frame_scores", "entropy", "mean_prob", "latent", "class_probs")


from claus_jax.train import CheckpointError  # pylint: disable=g-bad-import-order  (re-exported)


def resolve_checkpoint_dir(path: str) -> str:
  """The orbax folder for ``path``: itself, or its ``checkpoints/`` subfolder (a round folder)."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise CheckpointError(
        f"checkpoint folder {path} does not exist; pass --checkpoint=<workdir>/round_K/checkpoints "
        "of a run that has trained round K (python -m claus_jax.main writes it).")
  sub = os.path.join(path, "checkpoints")
  if os.path.isdir(sub):
    return sub
  return path


def round_from_path(path: str) -> int:
  """K of the innermost ``round_K`` component of ``path``; 0 when there is none."""
  found = re.findall(r"round_(\d+)", os.path.abspath(path))
  return int(found[-1]) if found else 0


def load_variables(config: ml_collections.ConfigDict, model, checkpoint_dir: str,
                   num_train_videos: int) -> tuple[dict, int]:
  """Restores the latest checkpoint of ``checkpoint_dir``.

  Args:
    num_train_videos: train-split size (the saved state holds one cluster assignment per video).

  Returns:
    ``({'params', 'batch_stats'}, step)``.

  Raises:
    CheckpointError: missing folder, no checkpoint in it, or one that does not fit ``config``.
  """
  from claus_jax import train as train_lib

  directory = resolve_checkpoint_dir(checkpoint_dir)
  abstract_config = config.copy_and_resolve_references()
  abstract_config.model.encoder_init = ""  # Only shapes are needed: never read the I3D import.
  abstract = jax.eval_shape(
      lambda k: train_lib.create_state(abstract_config, model, k, num_train_videos),
      jax.random.PRNGKey(0))
  try:
    state = train_lib.restore_latest(directory, abstract, config)
  except Exception as e:  # pylint: disable=broad-except  (orbax raises many kinds on a mismatch)
    raise CheckpointError(
        f"checkpoint in {directory} does not fit this config ({type(e).__name__}: "
        f"{str(e)[:500]}). Pass the config the run used, with its overrides (see the run's "
        "config.json next to the round folders).") from e
  if state is None:
    raise CheckpointError(
        f"{directory} holds no checkpoint (no numbered step folder); point --checkpoint at "
        "<workdir>/round_K/checkpoints of a round whose training has saved at least once.")
  return {"params": state.params, "batch_stats": state.batch_stats}, int(state.step)


def stored_passes(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The R' values written: ``sweep_passes`` plus R when set, else every R' in 1..R."""
  passes = int(config.uncertainty.passes)
  chosen = tuple(config.uncertainty.sweep_passes)
  if not chosen:
    return tuple(range(1, passes + 1))
  return tuple(sorted(set(int(r) for r in chosen) | {passes}))


def score_split(scorer, records, video_ids: Sequence[str], key: jax.Array,
                passes: Sequence[int], progress: Callable[[int], None] | None = None) -> dict:
  """Scores ``records`` (uid = position) and returns the npz arrays of the module docstring."""
  take = np.asarray(passes, np.int64) - 1
  arrays: dict[str, np.ndarray] = {}
  results = scorer.score_videos(records, range(len(video_ids)), key, progress=progress)
  for expected, res in zip(video_ids, results):
    if res.video_id != expected:
      raise RuntimeError(f"scorer returned {res.video_id!r} where {expected!r} was expected.")
    arrays[f"frame_scores/{res.video_id}"] = res.frame_scores[take]
    for field in PER_VIDEO_FIELDS[1:]:
      arrays[f"{field}/{res.video_id}"] = getattr(res, field)
  arrays["video_ids"] = np.asarray(list(video_ids), dtype=str)
  arrays["num_frames"] = np.asarray([len(r.entropy) for r in results], np.int64)
  arrays["passes"] = np.asarray(passes, np.int32)
  arrays["thresholds"] = np.asarray(scorer.thresholds, np.float32)
  return arrays


def write_npz(path: str, arrays: dict) -> None:
  """Writes ``arrays`` to ``path`` atomically (exactly that name; no '.npz' is appended)."""
  from claus_jax import pool as pool_lib

  pool_lib.atomic_write_npz(path, arrays)


def load_scores(path: str) -> dict:
  """Reads a scores file: ``{'video_ids', 'passes', 'thresholds', ..., 'videos': {vid: {field}}}``."""
  out: dict = {"videos": {}}
  with np.load(path) as data:
    for name in data.files:
      field, sep, vid = name.partition("/")
      if sep and field in PER_VIDEO_FIELDS:
        out["videos"].setdefault(vid, {})[field] = data[name]
      else:
        out[name] = data[name]
  return out


def run(config: ml_collections.ConfigDict, checkpoint: str, split: str, out: str,
        round_index: int = -1, quiet: bool = False) -> dict:
  """Scores ``split`` with the checkpoint's model and writes ``out``; returns a short summary."""
  from tqdm import auto as tqdm

  from claus_jax import configlib
  from claus_jax import data as data_lib
  from claus_jax import experiment
  from claus_jax import models
  from claus_jax import uncertainty

  experiment.quiet_library_logs()
  experiment.enable_compilation_cache()
  configlib.validate(config)
  directory = resolve_checkpoint_dir(checkpoint)  # Fail before building the dataset.
  dataset = data_lib.get_dataset(config)
  model = models.build_model(config)
  variables, step = load_variables(config, model, directory, len(dataset.train_index))
  source, index = ((dataset.train, dataset.train_index) if split == "train"
                   else (dataset.test, dataset.test_index))
  video_ids = list(index.video_ids)
  r = round_from_path(directory) if round_index < 0 else round_index
  key = uncertainty.score_key(config.seed, r)
  scorer = uncertainty.Scorer(model, variables, config)
  passes = stored_passes(config)
  bar = tqdm.tqdm(total=len(video_ids), desc=f"score {split}", unit="video",
                  disable=quiet or bool(config.quiet), file=sys.stdout)
  records = (source[i] for i in range(len(video_ids)))
  arrays = score_split(scorer, records, video_ids, key, passes, progress=bar.update)
  bar.close()
  arrays.update(form=np.asarray(config.uncertainty.form), split=np.asarray(split),
                round=np.asarray(r, np.int64), checkpoint_step=np.asarray(step, np.int64),
                seed=np.asarray(config.seed, np.int64))
  write_npz(out, arrays)
  summary = {"out": out, "videos": len(video_ids), "frames": int(arrays["num_frames"].sum()),
             "passes": list(passes), "thresholds": [float(t) for t in scorer.thresholds],
             "checkpoint": directory, "checkpoint_step": step, "round": r}
  print(f"scored {summary['videos']} {split} videos ({summary['frames']} frames) with checkpoint "
        f"step {step} of {directory}: R in {summary['passes']}, thresholds "
        f"{summary['thresholds']} -> {out}")
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  for name, flag in (("config", _CONFIG.value), ("checkpoint", _CHECKPOINT.value),
                     ("out", _OUT.value)):
    if flag is None:
      raise app.UsageError(f"--{name} is required; e.g. python -m claus_jax.score "
                           "--config=configs/synthetic.py --checkpoint=runs/synthetic/round_000/"
                           "checkpoints --split=train --out=scores.npz")
  try:
    run(_CONFIG.value, _CHECKPOINT.value, _SPLIT.value, _OUT.value, _ROUND.value, _QUIET.value)
  except CheckpointError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
