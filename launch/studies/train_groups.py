"""What the no-network studies of the synthetic benchmark share (no flags, so both can import it):
the train split's groups with the last ones held out for validation, and a colour-grid feature."""

from __future__ import annotations

import numpy as np
from absl import app


def generator_and_groups(config, held: int):
  """``(GeneratorParams, number of train groups)`` of a validated ``config``; the last ``held``
  groups are the validation groups (the test split is never read)."""
  from claus_jax import configlib
  from claus_jax.data import synthetic

  configlib.validate(config)
  params = synthetic.GeneratorParams.from_data(config.data)
  groups = params.num_groups("train")
  if not 0 < held < groups:
    raise app.UsageError(f"--val_groups={held}: the train split has {groups} groups.")
  return params, groups


def colour_grid(frame, cells: int) -> np.ndarray:
  """``(cells * cells * 3,)`` mean colour of each cell of an ``(S, S, 3)`` frame, in [0, 1]."""
  s = frame.shape[0] // cells
  return frame[:s * cells, :s * cells].reshape(cells, s, cells, s, 3).mean(axis=(1, 3)).reshape(
      -1).astype(np.float64) / 255.0
