"""CLAUS on J-HMDB-21 with the paper's settings (Table 1 J-HMDB schedule, R=10, K=5, 224x224).

Run (GPU):
  python -m claus_jax.prepare --config=configs/jhmdb.py --config.data.root=/data/jhmdb
  python -m claus_jax.main --config=configs/jhmdb.py --config.data.root=/data/jhmdb \
      --config.model.encoder_init=~/claus/i3d_charades
Variants: '' (paper), 'tiny' (small frames and model, for fixtures and CPU checks), 'authors' (the
authors' released code where it differs from the paper: configlib.authors_preset; ground-truth leaks
stay off, 'authors,gt_span' turns on frame choice inside the ground-truth span).
The paper configs need imported Charades I3D weights (--config.model.encoder_init=DIR, see
claus_jax/tools/import_i3d.py) or an explicit --config.model.encoder_init=scratch.
Fields: see claus_jax/configlib.py (base_config and paper_config).
"""

from claus_jax import configlib


def get_config(arg=None):
  c = configlib.paper_config("jhmdb", 21, configlib.JHMDB_SCHEDULE, steps=6000, arg=arg)
  c.data.split = 1  # J-HMDB split 1 of 3, as in the paper.
  return c
