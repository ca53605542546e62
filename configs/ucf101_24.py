"""CLAUS on UCF-101-24 with the paper's settings (Table 1 UCF schedule, R=10, K=5, 224x224).

Run (GPU):
  python -m claus_jax.data.prepare --config=configs/ucf101_24.py --config.data.root=/data/ucf24
  python -m claus_jax.main --config=configs/ucf101_24.py --config.data.root=/data/ucf24
Variants: '' (paper), 'tiny' (small frames and model, for fixtures and CPU checks).
Fields: see claus_jax/configlib.py (base_config and paper_config).
"""

from claus_jax import configlib


def get_config(arg=None):
  return configlib.paper_config("ucf101_24", 24, configlib.UCF101_24_SCHEDULE, steps=20000,
                                arg=arg)
