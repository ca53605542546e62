"""Tests of the generic tfds array_record store of VideoRecords."""

import numpy as np
import pytest

from claus_jax import pool
from claus_jax.data import tfds_store
from claus_jax.data.record import VideoRecord


def _record(i: int, t: int, actors: int, size=(6, 5)) -> VideoRecord:
  rng = np.random.default_rng(i)
  h, w = size
  boxes = rng.uniform(0, 4, size=(actors, t, 4)).astype(np.float32)
  if actors:
    boxes[0, 0] = np.nan
  has_gt = rng.random(t) < 0.5
  return VideoRecord(
      video_id=f"cls/v{i}_ü", group_id=f"g{i // 2}", label=i % 3,
      frames=rng.integers(0, 256, size=(t, h, w, 3), dtype=np.uint8),
      masks=(rng.random((t, h, w)) < 0.3).astype(np.uint8), boxes=boxes, has_gt=has_gt,
      span=(1, t - 1), annotation="box" if i % 2 else "mask")


def _assert_same(a: VideoRecord, b: VideoRecord):
  assert (a.video_id, a.group_id, a.label, a.span, a.annotation) == (
      b.video_id, b.group_id, b.label, b.span, b.annotation)
  for field in ("frames", "masks", "has_gt"):
    x, y = getattr(a, field), getattr(b, field)
    assert x.dtype == y.dtype and x.shape == y.shape, field
    np.testing.assert_array_equal(x, y)
  assert a.boxes.shape == b.boxes.shape and a.boxes.dtype == b.boxes.dtype
  np.testing.assert_array_equal(a.boxes, b.boxes)  # NaNs compare equal here.


def test_example_round_trip_in_memory():
  for rec in (_record(0, 5, 2), _record(1, 3, 0)):
    _assert_same(tfds_store.example_to_record(tfds_store.record_to_example(rec)), rec)


def test_builder_round_trips_every_field(tmp_path):
  data = {"train": [_record(i, 3 + i, 1 + i % 3) for i in range(5)],
          "test": [_record(10 + i, 4, 1, size=(7, 7)) for i in range(2)]}
  calls = []
  def generate(split):
    calls.append(split)
    return iter(data[split])

  def build():
    return tfds_store.make_builder(name="claus_unit", version="1.0.0", config_name="cfg_a",
                                   generate_records=generate, class_names=("a", "b", "c"),
                                   data_dir=str(tmp_path), description="unit test")

  ds = tfds_store.load_or_prepare(build(), "unit", quiet=True)
  assert sorted(calls) == ["test", "train"]
  assert ds.class_names == ("a", "b", "c") and ds.name == "unit"
  for split, source, index in (("train", ds.train, ds.train_index), ("test", ds.test, ds.test_index)):
    assert len(source) == len(data[split]) == len(index)
    for i, rec in enumerate(data[split]):
      _assert_same(source[i], rec)
      assert index.video_ids[i] == rec.video_id and index.group_ids[i] == rec.group_id
      assert index.labels[i] == rec.label and index.num_frames[i] == rec.num_frames
  _assert_same(ds.train[-1], data["train"][-1])
  assert [r.video_id for r in ds.train[1:3]] == [r.video_id for r in data["train"][1:3]]
  with pytest.raises(IndexError):
    ds.train[len(data["train"])]

  # A second builder for the same name/config reuses the files and reads the index from metadata.
  reused = tfds_store.load_or_prepare(build(), "unit", quiet=True)
  assert sorted(calls) == ["test", "train"]
  assert reused.test_index.video_ids == ds.test_index.video_ids
  _assert_same(reused.test[1], data["test"][1])


def test_duplicate_video_ids_are_rejected(tmp_path):
  rec = _record(0, 4, 1)
  builder = tfds_store.make_builder(name="claus_dup", version="1.0.0", config_name="x",
                                    generate_records=lambda split: [rec, rec],
                                    class_names=("a",), data_dir=str(tmp_path))
  with pytest.raises(Exception, match="appears twice"):
    tfds_store.prepare(builder)


def test_fingerprint_is_stable_and_order_free():
  a = pool.fingerprint({"x": 1, "y": [1, 2], "z": np.float32(0.5)})
  assert a == pool.fingerprint({"z": 0.5, "y": [1, 2], "x": 1})
  assert a != pool.fingerprint({"x": 2, "y": [1, 2], "z": 0.5})
  assert len(a) == 12 and int(a, 16) >= 0


def test_tfds_dir_resolution(monkeypatch, tmp_path):
  from claus_jax import configlib
  c = configlib.base_config()
  monkeypatch.setenv("CLAUS_TFDS_DIR", str(tmp_path / "env"))
  assert tfds_store.resolve_tfds_dir(c.data.tfds_dir) == str(tmp_path / "env")
  c.data.tfds_dir = str(tmp_path / "cfg")
  assert tfds_store.resolve_tfds_dir(c.data.tfds_dir) == str(tmp_path / "cfg")
  monkeypatch.delenv("CLAUS_TFDS_DIR")
  c.data.tfds_dir = ""
  assert tfds_store.resolve_tfds_dir(c.data.tfds_dir).endswith("claus_jax/tfds")
