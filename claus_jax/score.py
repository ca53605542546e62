"""Scores a whole split with the uncertainty scorer (MC dropout or NoiseAug, ``uncertainty.source``),
for every R and background threshold of a sweep.

Run:
  python -m claus_jax.score --config=configs/synthetic.py \\
      --checkpoint=runs/synthetic/round_000/checkpoints --split=train --out=scores.npz

One run of R = ``config.uncertainty.passes`` passes per clip gives the scores after every R' <= R
passes (running means) and at every threshold of ``(threshold,) + sweep_thresholds`` (``threshold`` is
``bg_threshold``, or ``noise_threshold`` with ``source='noise'``), at no extra
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
  thresholds                 (n,) float32  background thresholds; [0] is the source's (``uncertainty.
                                           bg_threshold``, or ``noise_threshold`` for NoiseAug)
  frame_scores/<video_id>    (P, n, T) float32: score of frame t after passes[p] passes at
                                           thresholds[i] (``uncertainty.source`` and ``form`` decide
                                           the formula; -inf: a NoiseAug frame that does not count)
  entropy/<video_id>         (T,) float32  entropy-baseline frame score (mean pixel binary entropy of
                                           the R-pass mean prediction)
  mean_prob/<video_id>       (T,) float32  mean foreground probability per frame (R passes)
  latent/<video_id>          (D,) float32  latent averaged over the video's clips and passes
  class_probs/<video_id>     (C,) float32  class probabilities, averaged likewise
  form, source, split        () str
  round, checkpoint_step, seed  () int64
Read one video with ``data[f"frame_scores/{vid}"]``; :func:`load_scores` returns nested dicts.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from claus_jax import cli
from claus_jax import score_files

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

# The output's format lives in score_files, which the main job's score shards share.
PER_VIDEO_FIELDS = score_files.PER_VIDEO_FIELDS
load_scores = score_files.load_scores

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
  # Only shapes are needed: never read the I3D import.
  params = dataclasses.replace(train_lib.TrainParams.from_config(config), encoder_init="")
  abstract = jax.eval_shape(lambda k: train_lib.create_state(params, model, k, num_train_videos),
                            jax.random.PRNGKey(0))
  try:
    state = train_lib.restore_latest(directory, abstract, params)
  except Exception as e:  # pylint: disable=broad-except  (orbax raises many kinds on a mismatch)
    differences = shape_differences(directory, abstract)
    if differences:  # A good checkpoint of another config: keep it, name the config's fields.
      raise CheckpointError(
          f"checkpoint in {directory} was made by another config ({'; '.join(differences)}); it "
          "is kept. Pass --config with the overrides the run used (its config.json, next to the "
          "round folders).") from e
    if not isinstance(e, train_lib.DamagedCheckpointError):  # Every storage failure is one.
      raise
    # Same shapes (or unreadable metadata): the files themselves are bad. restore_latest's advice
    # is the main job's; this command does not train.
    raise train_lib.DamagedCheckpointError(
        e.folder, e.cause, "The score command does not train: point --checkpoint at another "
        "round, or delete that step folder and re-run the main job on its workdir, which trains "
        "the round again from its previous checkpoint.") from e
  if state is None:
    raise CheckpointError(
        f"{directory} holds no checkpoint (no numbered step folder); point --checkpoint at "
        "<workdir>/round_K/checkpoints of a round whose training has saved at least once.")
  return {"params": state.params, "batch_stats": state.batch_stats}, int(state.step)


def _leaf_shapes(tree) -> dict[str, tuple[int, ...]]:
  """``'params/encoder/...' -> shape`` for every array of ``tree`` (a state or orbax metadata)."""
  def name(entry):
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        return str(getattr(entry, attr))
    return str(entry)
  return {"/".join(name(e) for e in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree) if hasattr(leaf, "shape")}


def shape_differences(directory: str, abstract_state, limit: int = 4) -> list[str] | None:
  """How the latest checkpoint's arrays differ from ``abstract_state``'s: up to ``limit`` lines
  (``[]`` = same shapes); None when its metadata cannot be read (a damaged checkpoint)."""
  import orbax.checkpoint as ocp

  try:
    with ocp.CheckpointManager(directory, item_handlers=ocp.StandardCheckpointHandler()) as mngr:
      step = mngr.latest_step()
      saved = _leaf_shapes(mngr.item_metadata(step)) if step is not None else None
  except Exception:  # pylint: disable=broad-except  (unreadable metadata: damaged)
    return None
  if not saved:
    return None
  wanted = _leaf_shapes(abstract_state)
  lines = []
  for key in sorted(set(saved) | set(wanted)):
    if saved.get(key) != wanted.get(key):
      lines.append(f"{key}: checkpoint {saved.get(key, 'absent')}, this config "
                   f"{wanted.get(key, 'absent')}")
  return lines[:limit] + ([f"{len(lines) - limit} more"] if len(lines) > limit else [])


def stored_passes(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The R' values written: ``sweep_passes`` plus R when set, else every R' in 1..R."""
  passes = int(config.uncertainty.passes)
  chosen = tuple(config.uncertainty.sweep_passes)
  if not chosen:
    return tuple(range(1, passes + 1))
  return tuple(sorted(set(int(r) for r in chosen) | {passes}))


def score_split(scorer, records, video_ids: Sequence[str], key: jax.Array,
                passes: Sequence[int], progress: Callable[[int], None] | None = None,
                num_frames: Sequence[int] | None = None) -> dict:
  """Scores ``records`` (uid = position) and returns the npz arrays of the module docstring.

  With ``num_frames`` (the split index's frame counts) the records are read one at a time as the
  scoring plan reaches them; without it they are all read into memory first.
  """
  results = scorer.score_videos(records, range(len(video_ids)), key, progress=progress,
                                num_frames=num_frames)
  return score_files.split_arrays(results, video_ids, passes, scorer.thresholds)


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
  scorer = uncertainty.Scorer(model, variables, uncertainty.ScoreParams.from_config(config))
  passes = stored_passes(config)
  bar = tqdm.tqdm(total=len(video_ids), desc=f"score {split}", unit="video",
                  disable=quiet or bool(config.quiet))
  records = (source[i] for i in range(len(video_ids)))
  arrays = score_split(scorer, records, video_ids, key, passes, progress=bar.update,
                       num_frames=[int(t) for t in index.num_frames])
  bar.close()
  arrays.update(form=np.asarray(config.uncertainty.form),
                source=np.asarray(config.uncertainty.source), split=np.asarray(split),
                round=np.asarray(r, np.int64), checkpoint_step=np.asarray(step, np.int64),
                seed=np.asarray(config.seed, np.int64))
  score_files.save_scores(out, arrays)
  summary = {"out": out, "videos": len(video_ids), "frames": int(arrays["num_frames"].sum()),
             "passes": list(passes), "thresholds": [float(t) for t in scorer.thresholds],
             "checkpoint": directory, "checkpoint_step": step, "round": r}
  logging.info("scored %d %s videos (%d frames) with checkpoint step %d of %s: R in %s, "
               "thresholds %s -> %s", summary["videos"], split, summary["frames"], step, directory,
               summary["passes"], summary["thresholds"], out)
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
  run(_CONFIG.value, _CHECKPOINT.value, _SPLIT.value, _OUT.value, _ROUND.value, _QUIET.value)


if __name__ == "__main__":
  app.run(cli.guarded(main), flags_parser=cli.parse_flags)
