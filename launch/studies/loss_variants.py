"""Loss curves of the localisation-loss variants (the paper's Fig. 6 ablation) on one sparse pool.

For each ``loss.variant`` (stew, interpolation, frame) it trains a detector from the same
initialisation on the same seeded random pool (``--videos_pct`` of the train videos, ``--frames_pct``
of the frames, drawn as round 0 draws its set), logs the loss every ``--every`` steps, and evaluates
on the test split. It prints a Markdown table of the curves and of the test metrics, and writes them
as JSON with ``--out``.

  python launch/studies/loss_variants.py --config=configs/synthetic.py --steps=200
  python launch/studies/loss_variants.py --config=configs/synthetic.py:smoke --steps=20 --every=5
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/synthetic.py", "Config file.")
_STEPS = flags.DEFINE_integer("steps", 200, "Training steps per variant.")
_EVERY = flags.DEFINE_integer("every", 25, "Log the loss every this many steps.")
_VIDEOS = flags.DEFINE_float("videos_pct", 50.0, "Labelled videos, % of the train split.")
_FRAMES = flags.DEFINE_float("frames_pct", 5.0, "Annotated frames, % of the train split.")
_VARIANTS = flags.DEFINE_list("variants", ["stew", "interpolation", "frame"], "loss.variant values.")
_OUT = flags.DEFINE_string("out", "", "Write the curves and metrics to this JSON file.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Checkpoint folder (default: a temporary one).")


def run_variant(config, dataset, pool, variant: str, workdir: str) -> dict:
  import jax

  from claus_jax import evaluation
  from claus_jax import models
  from claus_jax import train as train_lib
  from claus_jax.data import clips as clips_lib

  cfg = config.copy_and_resolve_references()
  cfg.loss.variant = variant
  index = dataset.train_index
  position = {v: i for i, v in enumerate(index.video_ids)}
  items = [(position[v], pool.labelled_frames(v)) for v in pool.labelled_video_ids()]
  sampler = clips_lib.ClipSampler(dataset.train, items, clips_lib.ClipParams.from_config(cfg),
                                  seed=cfg.seed, round_index=0)
  model = models.build_model(cfg)
  params = train_lib.TrainParams.from_config(cfg)
  state = train_lib.create_state(params, model, jax.random.PRNGKey(cfg.seed), len(index))
  t0 = time.time()
  result = train_lib.fit(params, state, sampler, os.path.join(workdir, variant),
                         sampler.steps_per_epoch)
  train_s = time.time() - t0
  variables = {"params": result.state.params, "batch_stats": result.state.batch_stats}
  metrics, _ = evaluation.evaluate(evaluation.make_predict_fn(model, variables), dataset.test,
                                   dataset.num_classes, dataset.class_names, cfg.eval,
                                   progress=False)
  return {"variant": variant, "train_s": train_s, "clips": sampler.num_clips,
          "history": result.history, "test": metrics}


def markdown(runs: list[dict]) -> str:
  keys = ("total", "localisation", "classification")
  steps = [h["step"] for h in runs[0]["history"]]
  lines = ["| step | " + " | ".join(f"{r['variant']} {k}" for r in runs for k in keys) + " |",
           "|---:|" + "---:|" * (len(runs) * len(keys))]
  for i, step in enumerate(steps):
    lines.append(f"| {step} | " + " | ".join(f"{r['history'][i][k]:.4f}" for r in runs
                                              for k in keys) + " |")
  lines += ["", "| variant | train s | capsule f-mAP@0.5 | capsule v-mAP@0.5 | accuracy |",
            "|---|---:|---:|---:|---:|"]
  for r in runs:
    t = r["test"]
    lines.append(f"| {r['variant']} | {r['train_s']:.0f} | {100 * t['capsule/f-mAP@0.5']:.1f} | "
                 f"{100 * t['capsule/v-mAP@0.5']:.1f} | {100 * t['accuracy']:.1f} |")
  return "\n".join(lines)


def main(argv):
  del argv
  import tempfile

  from claus_jax import configlib
  from claus_jax import data as data_lib
  from claus_jax import experiment
  from claus_jax import pool as pool_lib
  from claus_jax import selection as selection_lib

  experiment.quiet_library_logs()
  experiment.enable_compilation_cache()
  config = _CONFIG.value
  with config.unlocked():
    config.train.steps = _STEPS.value
    config.train.log_every = _EVERY.value
    config.train.checkpoint_every = max(_STEPS.value, 1)
    config.budget.initial_videos_pct = _VIDEOS.value
    config.budget.initial_frames_pct = _FRAMES.value
    config.budget.schedule = ()  # One pool, no selection rounds.
    config.quiet = True
  configlib.validate(config)
  dataset = data_lib.get_dataset(config)
  index = dataset.train_index
  budget = selection_lib.BudgetParams.from_section(config.budget)
  pool = pool_lib.initial_pool(
      index.video_ids, index.num_frames, selection_lib.initial_video_count(budget, len(index)),
      selection_lib.initial_frame_count(budget, int(index.num_frames.sum())), seed=config.seed)
  print(f"pool: {pool.num_labelled_videos} videos, {pool.num_labelled_frames} frames; "
        f"{_STEPS.value} steps per variant", flush=True)
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="claus_loss_variants_")
  runs = []
  for variant in _VARIANTS.value:
    runs.append(run_variant(config, dataset, pool, variant, workdir))
    print(f"{variant}: done in {runs[-1]['train_s']:.0f} s", flush=True)
  table = markdown(runs)
  print(table)
  if _OUT.value:
    pool_lib.atomic_write_json(_OUT.value, runs)


if __name__ == "__main__":
  app.run(main)
