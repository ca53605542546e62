"""CLAUS on UCF-101-24 with the paper's settings (Table 1 UCF schedule, R=10, K=5, 224x224).

Run (GPU):
  python -m claus_jax.data.prepare --config=configs/ucf101_24.py --config.data.root=/data/ucf24
  python -m claus_jax.main --config=configs/ucf101_24.py --config.data.root=/data/ucf24
Variants: '' (paper), 'tiny' (small frames and model, for fixtures and CPU checks).
"""

import os

from claus_jax import configlib


def get_config(arg=None):
  c = configlib.base_config()
  c.dataset = "ucf101_24"
  c.data.root = os.environ.get("CLAUS_DATA_DIR", "")
  c.data.frame_size = 224
  c.model.num_classes = 24
  c.model.width = 1.0
  c.train.steps = 20000
  c.train.batch_size = 8
  c.uncertainty.passes = 10
  c.cluster.k = 5
  c.budget.initial_frames_pct, c.budget.initial_videos_pct = configlib.UCF101_24_SCHEDULE[0]
  c.budget.schedule = configlib.UCF101_24_SCHEDULE[1:]
  if arg == "tiny":
    c.data.frame_size = 32
    c.model.width = 0.125
    c.model.primary_caps = 8
    c.train.steps = 10
    c.train.batch_size = 2
    c.uncertainty.passes = 2
    c.cluster.k = 1
    c.budget.initial_videos_pct, c.budget.initial_frames_pct = 50.0, 10.0
    c.budget.schedule = ((20.0, 75.0),)
  elif arg:
    raise ValueError(f"configs/ucf101_24.py: unknown variant {arg!r}; use '' or 'tiny'.")
  return c
