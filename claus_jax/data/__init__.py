"""Datasets of claus_jax: one entry point, :func:`get_dataset`, for every dataset in the config."""

from __future__ import annotations

from claus_jax.data.record import SplitIndex, VideoDataset, VideoRecord

__all__ = ["get_dataset", "SplitIndex", "VideoDataset", "VideoRecord"]


def get_dataset(config) -> VideoDataset:
  """The dataset named by ``config.dataset``, prepared as tfds array_record on first use.

  ``.train`` / ``.test`` decode a video when it is indexed; ``.train_index`` / ``.test_index`` hold
  ids, groups, labels and frame counts without decoding frames.

  With ``config.data.validation_groups`` > 0 the test split is replaced by that many groups held
  out of the train split (:meth:`VideoDataset.validation_split`), for tuning.
  """
  dataset = _load(config.dataset, config.data, bool(config.get("quiet", False)))
  return dataset.validation_split(int(config.data.get("validation_groups", 0)))


def _load(name: str, data, quiet: bool) -> VideoDataset:
  """Dataset ``name`` read with its ``data`` section (``config.data``)."""
  # Readers are imported lazily: each pulls in its own dependencies (tfds, scipy.io, ...).
  if name == "synthetic":
    from claus_jax.data import synthetic
    return synthetic.load(data, quiet)
  if name == "jhmdb":
    from claus_jax.data import jhmdb
    return jhmdb.load(data, quiet)
  if name == "ucf101_24":
    from claus_jax.data import ucf24
    return ucf24.load(data, quiet)
  raise ValueError(f"config.dataset: {name!r} is unknown; use 'synthetic', 'jhmdb' or "
                   "'ucf101_24'.")
