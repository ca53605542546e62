"""Stores VideoRecords as a tfds array_record dataset and reads them back by index.

Every dataset (synthetic, J-HMDB-21, UCF-101-24) goes through this module: a reader supplies a function
``generate_records(split) -> Iterable[VideoRecord]`` (or subclasses :class:`VideoRecordBuilder` and
implements ``_generate_records``); this module turns the records into tfds examples, writes them once
with ``file_format='array_record'`` and serves them through ``builder.as_data_source()``, which decodes
a video only when it is indexed.

No TensorFlow is needed: every array is a ``tfds.features.Tensor`` with ``encoding='zlib'`` (the image
and video features need TensorFlow). Several dimensions are unknown (T, H, W, A), so the encoded
tensors store their shape beside the bytes.

The split index (video ids, group ids, labels, frame counts) and the class names are written into the
dataset's ``metadata.json`` while the examples are generated, so a :class:`SplitIndex` is available
without decoding any frames. Examples are written in generation order (``disable_shuffling``), so row
``i`` of the index is example ``i`` of the data source.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from claus_jax.data.record import SplitIndex, VideoDataset, VideoRecord

SPLITS = ("train", "test")
_TEXT_FIELDS = ("video_id", "group_id", "annotation")


def resolve_tfds_dir(configured: str = "") -> str:
  """``configured`` (``config.data.tfds_dir``), else ``$CLAUS_TFDS_DIR``, else
  ``~/.cache/claus_jax/tfds``, as an absolute path."""
  path = configured or os.environ.get("CLAUS_TFDS_DIR", "") or "~/.cache/claus_jax/tfds"
  return os.path.abspath(os.path.expanduser(path))


def features() -> tfds.features.FeaturesDict:
  """The tfds features of one VideoRecord.

  ``frames (T, H, W, 3) uint8``, ``masks (T, H, W) uint8``, ``boxes (A, T, 4) float32`` and
  ``has_gt (T,) bool`` are zlib-compressed byte tensors that carry their own shape; ``span (2,) int32``
  and ``label () int32`` are plain tensors; ids and the annotation kind are text.
  """
  tensor = tfds.features.Tensor
  return tfds.features.FeaturesDict({
      "video_id": tfds.features.Text(),
      "group_id": tfds.features.Text(),
      "annotation": tfds.features.Text(),
      "label": tensor(shape=(), dtype=np.int32),
      "span": tensor(shape=(2,), dtype=np.int32),
      "frames": tensor(shape=(None, None, None, 3), dtype=np.uint8, encoding="zlib"),
      "masks": tensor(shape=(None, None, None), dtype=np.uint8, encoding="zlib"),
      "boxes": tensor(shape=(None, None, 4), dtype=np.float32, encoding="zlib"),
      "has_gt": tensor(shape=(None,), dtype=np.bool_, encoding="zlib"),
  })


def record_to_example(rec: VideoRecord) -> dict[str, Any]:
  """The tfds example dict of a (validated) record."""
  rec.validate()
  return {
      "video_id": rec.video_id,
      "group_id": rec.group_id,
      "annotation": rec.annotation,
      "label": np.int32(rec.label),
      "span": np.asarray(rec.span, np.int32),
      "frames": np.ascontiguousarray(rec.frames, np.uint8),
      "masks": np.ascontiguousarray(rec.masks, np.uint8),
      "boxes": np.ascontiguousarray(rec.boxes, np.float32),
      "has_gt": np.ascontiguousarray(rec.has_gt, np.bool_),
  }


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def example_to_record(ex: Mapping[str, Any]) -> VideoRecord:
  """The VideoRecord of a decoded example (numpy arrays; text may come back as bytes)."""
  span = np.asarray(ex["span"]).astype(int)
  return VideoRecord(
      video_id=_text(ex["video_id"]),
      group_id=_text(ex["group_id"]),
      label=int(ex["label"]),
      frames=np.asarray(ex["frames"], np.uint8),
      masks=np.asarray(ex["masks"], np.uint8),
      boxes=np.asarray(ex["boxes"], np.float32),
      has_gt=np.asarray(ex["has_gt"], np.bool_),
      span=(int(span[0]), int(span[1])),
      annotation=_text(ex["annotation"]),
  )


class RecordSequence(Sequence):
  """Random access to the VideoRecords of one split; a video is decoded when it is indexed."""

  def __init__(self, source: Sequence[Mapping[str, Any]]):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    n = len(self)
    i = int(i)
    if i < 0:
      i += n
    if not 0 <= i < n:
      raise IndexError(f"video index {i} is outside [0, {n})")
    return example_to_record(self._source[i])

  def __repr__(self) -> str:
    return f"RecordSequence({self._source!r}, videos={len(self)})"


def index_entry(rec: VideoRecord) -> dict[str, Any]:
  return {"video_id": rec.video_id, "group_id": rec.group_id, "label": int(rec.label),
          "num_frames": rec.num_frames}


def split_index_from_entries(entries: Sequence[Mapping[str, Any]]) -> SplitIndex:
  return SplitIndex(
      video_ids=tuple(e["video_id"] for e in entries),
      group_ids=tuple(e["group_id"] for e in entries),
      labels=np.asarray([e["label"] for e in entries], np.int32).reshape(-1),
      num_frames=np.asarray([e["num_frames"] for e in entries], np.int32).reshape(-1),
  )


class VideoRecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A tfds builder of VideoRecords; subclasses implement ``_generate_records(split)``.

  Class attributes a subclass (or :func:`make_builder_class`) sets: ``name`` (tfds dataset name),
  ``VERSION``, ``BUILDER_CONFIGS`` (one config per generator setting), ``CLASS_NAMES`` and
  ``SPLIT_NAMES``. The index of each split and the class names go to ``info.metadata``.
  """

  VERSION = tfds.core.Version("1.0.0")
  CLASS_NAMES: tuple[str, ...] = ()
  SPLIT_NAMES: tuple[str, ...] = SPLITS
  DESCRIPTION = "VideoRecords for claus_jax."

  def _generate_records(self, split: str) -> Iterable[VideoRecord]:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo is built directly: dataset_info_from_configs looks for README/citation files in a
    # package directory, which a builder class made at run time does not have.
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=features(),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,  # Keeps example i == index row i.
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    self.info.metadata["class_names"] = list(self.CLASS_NAMES)
    self.info.metadata.setdefault("splits", {})
    return {split: self._generate_examples(split) for split in self.SPLIT_NAMES}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    entries = []
    seen = set()
    for i, rec in enumerate(self._generate_records(split)):
      if rec.video_id in seen:
        raise ValueError(f"{self.name}: video id {rec.video_id!r} appears twice in split {split!r}")
      seen.add(rec.video_id)
      entries.append(index_entry(rec))
      yield i, record_to_example(rec)
    self.info.metadata["splits"][split] = entries


def make_builder_class(name: str, version: str, config_name: str,
                       generate_records: Callable[[str], Iterable[VideoRecord]],
                       class_names: Sequence[str], description: str = "",
                       splits: Sequence[str] = SPLITS) -> type[VideoRecordBuilder]:
  """A VideoRecordBuilder subclass named ``name`` with one builder config ``config_name``.

  Args:
    name: tfds dataset name (snake_case), e.g. ``'claus_synthetic'``; the data lives in
      ``<tfds_dir>/<name>/<config_name>/<version>``.
    version: ``'x.y.z'``; bump it when the records a reader produces change for the same settings.
    config_name: one name per generator setting (e.g. a :func:`fingerprint` of the knobs), so a
      changed knob gets a new directory and an unchanged one reuses the prepared files.
    generate_records: ``split -> Iterable[VideoRecord]``; called only when the data is not prepared.
    class_names: stored in the metadata and returned by :func:`load_or_prepare`.
    description: human-readable text (e.g. the JSON of the knobs) kept with the builder config.
    splits: split names to generate.
  """
  def body(ns):
    ns.update({
        "name": name,
        "VERSION": tfds.core.Version(version),
        "BUILDER_CONFIGS": [tfds.core.BuilderConfig(name=config_name, description=description)],
        "CLASS_NAMES": tuple(class_names),
        "SPLIT_NAMES": tuple(splits),
        "DESCRIPTION": description or VideoRecordBuilder.DESCRIPTION,
        "_generate_records": lambda self, split: generate_records(split),
        "__module__": __name__,
    })
  return types.new_class(name, (VideoRecordBuilder,), {"skip_registration": True}, body)


def make_builder(name: str, version: str, config_name: str,
                 generate_records: Callable[[str], Iterable[VideoRecord]],
                 class_names: Sequence[str], data_dir: str, description: str = "",
                 splits: Sequence[str] = SPLITS) -> VideoRecordBuilder:
  """An instance of :func:`make_builder_class` that reads and writes under ``data_dir``."""
  cls = make_builder_class(name, version, config_name, generate_records, class_names, description,
                           splits)
  return cls(data_dir=data_dir, config=config_name)


def prepare(builder: VideoRecordBuilder) -> bool:
  """Writes the dataset unless it is already prepared; returns True if it generated anything.

  One process prepares a given dataset at a time: the others wait on a lock
  (``<tfds dir>/downloads/<name>-<config>.prepare.lock``), then find it prepared. The lock holder
  also removes the ``incomplete.*`` folders that a killed generation left beside the version folder
  (no live process can be writing them while it holds the lock).
  """
  if builder.is_prepared():
    return False
  downloads = os.path.join(str(builder.data_dir_root), "downloads")
  os.makedirs(downloads, exist_ok=True)
  config = builder.builder_config.name if builder.builder_config else "default"
  with open(os.path.join(downloads, f"{builder.name}-{config}.prepare.lock"), "a") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX)  # Released when the file closes, or when its process dies.
      locked = True
    except OSError:  # A file system without locks: concurrent writers race, as tfds allows.
      locked = False
    if builder.is_prepared():  # Another process prepared it while this one waited.
      return False
    if locked:
      parent = os.path.dirname(str(builder.data_dir))
      for name in os.listdir(parent) if os.path.isdir(parent) else ():
        if name.startswith("incomplete.") and os.path.isdir(os.path.join(parent, name)):
          shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    try:
      builder.download_and_prepare(
          download_dir=downloads, file_format="array_record")
    except FileExistsError:
      # Another process without the lock (another host's file system) prepared the same config at
      # the same time and renamed its folder into place first; tfds writes the whole version folder
      # atomically, so that copy is complete and identical (the data is a function of the config).
      if not builder.is_prepared():
        raise
      return False
  return True


def load_or_prepare(builder: VideoRecordBuilder, dataset_name: str,
                    quiet: bool = False) -> VideoDataset:
  """Prepares ``builder`` if needed and returns its splits as a VideoDataset.

  ``dataset_name`` is the name shown in summaries (e.g. ``'synthetic'``).
  """
  if quiet:
    tfds.disable_progress_bar()
  prepare(builder)
  sources = builder.as_data_source()
  metadata = builder.info.metadata or {}
  indexes = {}
  for split in builder.SPLIT_NAMES:
    entries = (metadata.get("splits") or {}).get(split)
    if entries is None:
      # Data prepared without an index (should not happen with this module): decode once.
      entries = [index_entry(rec) for rec in RecordSequence(sources[split])]
    index = split_index_from_entries(entries)
    if len(index) != len(sources[split]):
      raise RuntimeError(
          f"{builder.data_dir}: the stored index lists {len(index)} {split} videos but the data holds "
          f"{len(sources[split])}; delete that directory so the dataset is prepared again.")
    indexes[split] = index
  class_names = tuple(metadata.get("class_names") or builder.CLASS_NAMES)
  return VideoDataset(
      name=dataset_name,
      class_names=class_names,
      train=RecordSequence(sources["train"]),
      test=RecordSequence(sources["test"]),
      train_index=indexes["train"],
      test_index=indexes["test"],
  )
