"""The active-learning run: ``run(config, workdir)``.

Stages write their results atomically into ``workdir`` and are skipped when the result exists, so
re-running the same command after any interruption continues where it stopped.
"""

from __future__ import annotations

import json
import os

import ml_collections

from claus_jax import configlib
from claus_jax import pool as pool_lib

# Fields that do not change results: a resumed run may differ in them.
_RESULT_NEUTRAL = ("quiet",)


class WorkdirMismatchError(ValueError):
  """The workdir was made by a different config."""


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def check_or_write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes config.json on the first run; later runs must use the same config (but neutral fields)."""
  path = os.path.join(workdir, "config.json")
  current = json.loads(json.dumps(configlib.to_dict(config)))  # tuples -> lists, as on disk
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    a, b = _flatten(saved), _flatten(current)
    diff = sorted(k for k in set(a) | set(b)
                  if k not in _RESULT_NEUTRAL and a.get(k, "<absent>") != b.get(k, "<absent>"))
    if diff:
      lines = "\n".join(f"  {k}: workdir has {a.get(k, '<absent>')!r}, this run has "
                        f"{b.get(k, '<absent>')!r}" for k in diff)
      raise WorkdirMismatchError(
          f"{workdir} was made by a different config:\n{lines}\nUse another --workdir, or rerun "
          "with the workdir's config to resume it.")
    return
  pool_lib.atomic_write_json(path, current)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) the active-learning experiment described by ``config`` in ``workdir``."""
  from claus_jax import data as data_lib

  configlib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  check_or_write_config(config, workdir)

  dataset = data_lib.get_dataset(config)
  index = dataset.train_index
  configlib.validate_against_data(config, len(index), int(index.num_frames.sum()),
                                  dataset.num_classes)
  summary = dataset.summary()
  pool_lib.atomic_write_json(os.path.join(workdir, "dataset.json"), summary)
  _print_dataset_summary(summary)

  pool_path = os.path.join(workdir, "round_000", "pool.json")
  num_frames = dict(zip(index.video_ids, index.num_frames.tolist()))
  if os.path.exists(pool_path):
    pool = pool_lib.PoolState.load(pool_path, num_frames=num_frames)
  else:
    pool = pool_lib.initial_pool(
        index.video_ids, index.num_frames,
        configlib.initial_video_count(config, len(index)),
        configlib.initial_frame_count(config, int(index.num_frames.sum())),
        seed=config.seed, cost_video=config.budget.cost_video, cost_frame=config.budget.cost_frame)
    pool.save(pool_path)
  pct = pool.percentages()
  print(f"round 0 pool: {pool.num_labelled_videos} videos ({pct['videos_pct']:.1f}%), "
        f"{pool.num_labelled_frames} frames ({pct['frames_pct']:.2f}%), cost {pool.cost:g} "
        f"-> {pool_path}")
  return {"dataset": summary, "pool": pool.to_json()["summary"]}


def _print_dataset_summary(summary: dict) -> None:
  print(f"dataset {summary['dataset']}: {summary['classes']} classes")
  for split in ("train", "test"):
    s = summary[split]
    print(f"  {split}: {s['videos']} videos, {s['frames']} frames, {s['groups']} groups, "
          f"videos per class {s['videos_per_class']}")
