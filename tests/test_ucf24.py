"""UCF-101-24 reader and tfds builder on a generated fixture in the official layout."""

import os
import pickle
import shutil

import numpy as np
import pytest

import fixtures_datasets as fx
from claus_jax import configlib
from claus_jax.data import official, ucf24
from claus_jax.data.official import BadVideoError, DatasetError, PrepareReport

SIZE = 32


@pytest.fixture
def root(tmp_path):
  r = str(tmp_path / "ucf24")
  fx.write_ucf(r)
  return r


def read_split(root, **kw):
  gt = ucf24.load_annotations(ucf24.check_root(root))
  keys = ucf24.read_splits(gt)
  report = PrepareReport()
  out = {w: list(ucf24.iter_videos(root, gt, keys[w], w, SIZE, report=report, **kw)) for w in keys}
  return out, report


def edit_annotations(root, edit):
  path = os.path.join(root, "UCF101v2-GT.pkl")
  with open(path, "rb") as f:
    gt = pickle.load(f, encoding="latin1")
  edit(gt)
  fx.write_ucf_annotations(root, gt)


def test_classes_match_reference():
  assert ucf24.CLASSES == fx.UCF_CLASSES and len(ucf24.CLASSES) == 24


def test_counts_labels_groups(root):
  records, report = read_split(root)
  assert not report.skipped
  videos = fx.ucf_videos()
  for which, train in (("train", True), ("test", False)):
    want = [(v.video_id, v.label) for v in videos if v.train == train]
    assert [(r.video_id, r.label) for r in records[which]] == want
  groups = {r.video_id: r.group_id for r in records["train"] + records["test"]}
  assert groups["Basketball/v_Basketball_g01_c01"] == groups["Basketball/v_Basketball_g01_c02"] == "Basketball_g01"
  assert groups["Biking/v_Biking_g03_c01"] == "Biking_g03"


def test_group_of_unusual_name():
  assert ucf24.group_of("Fencing/v_Fencing_g25_c04") == "Fencing_g25"
  assert ucf24.group_of("odd/name") == "odd/name"


def test_untrimmed_spans_boxes_masks(root):
  records, _ = read_split(root)
  by_id = {v.video_id: v for v in fx.ucf_videos()}
  for rec in records["train"] + records["test"]:
    video = by_id[rec.video_id]
    present = np.array([any(r is not None for r in rects) for rects in video.rects])
    np.testing.assert_array_equal(rec.has_gt, present)
    idx = np.flatnonzero(present)
    assert rec.span == (idx[0], idx[-1] + 1) and rec.annotation == "box"
    assert rec.frames.shape == (video.num_frames, SIZE, SIZE, 3)
    for t, rects in enumerate(video.rects):
      want = np.zeros((SIZE, SIZE), np.uint8)
      for x1, y1, x2, y2 in (r for r in rects if r is not None):
        want[y1 * 2 // 3:(y2 + 1) * 2 // 3, x1 // 2:(x2 + 1) // 2] = 1
      np.testing.assert_array_equal(rec.masks[t], want)
      if not any(r is not None for r in rects):
        assert np.isnan(rec.boxes[:, t]).all()


def test_multi_tube_video(root):
  records, _ = read_split(root)
  rec = next(r for r in records["train"] if r.video_id == "Biking/v_Biking_g01_c01")
  assert rec.boxes.shape == (2, 16, 4)
  # Tube 0 covers frames 1..7, tube 1 frames 5..13 (0-based); the span is their union.
  np.testing.assert_array_equal(~np.isnan(rec.boxes[0, :, 0]), np.isin(np.arange(16), range(1, 8)))
  np.testing.assert_array_equal(~np.isnan(rec.boxes[1, :, 0]), np.isin(np.arange(16), range(5, 14)))
  assert rec.span == (1, 14) and not rec.has_gt[0] and not rec.has_gt[14:].any()
  # The second actor at columns 40..55, rows 24..35 of 64x48 -> columns 20..27, rows 16..23 of 32x32.
  np.testing.assert_allclose(rec.boxes[1, 6], [20.0, 16.0, 27.0, 23.0], atol=1e-5)
  assert rec.masks[10, 16:24, 20:28].all() and rec.masks[10].sum() == 8 * 8
  # JPEG: the resized frame is close to red inside the box and grey outside.
  assert rec.frames[10, 19, 23, 0] > 200 and rec.frames[10, 19, 23, 1] < 60
  assert abs(int(rec.frames[10, 4, 4, 1]) - fx.BACKGROUND) < 10


def test_missing_root_annotations_and_frames(tmp_path, root):
  with pytest.raises(DatasetError, match="UCF-101-24 root"):
    ucf24.check_root(str(tmp_path / "nowhere"))
  shutil.rmtree(os.path.join(root, "rgb-images"))
  with pytest.raises(DatasetError, match=r"rgb-images.*expected a directory"):
    ucf24.check_root(root)
  os.remove(os.path.join(root, "UCF101v2-GT.pkl"))
  with pytest.raises(DatasetError, match=r"missing annotation file: expected .*UCF101v2-GT.pkl"):
    ucf24.check_root(root)


def test_wrong_or_damaged_annotation_file(root):
  edit_annotations(root, lambda gt: gt.update(labels=list(fx.JHMDB_CLASSES)))
  with pytest.raises(DatasetError, match="class list .* differs"):
    ucf24.load_annotations(root)
  edit_annotations(root, lambda gt: gt.pop("gttubes"))
  with pytest.raises(DatasetError, match="expected keys"):
    ucf24.load_annotations(root)
  with open(os.path.join(root, "UCF101v2-GT.pkl"), "wb") as f:
    f.write(b"\x80\x02garbage")
  with pytest.raises(DatasetError, match="cannot read .*UCF101v2-GT.pkl"):
    ucf24.load_annotations(root)


def test_split_naming_missing_video(root):
  edit_annotations(root, lambda gt: gt["test_videos"][0].append("Skiing/v_Skiing_g09_c01"))
  with pytest.raises(BadVideoError, match=r"Skiing/v_Skiing_g09_c01.*test_videos\[0\].*does not exist"):
    read_split(root)
  records, report = read_split(root, on_bad_video="skip")
  assert len(records["test"]) == 2
  assert [(s, v) for s, v, _ in report.skipped] == [("test", "Skiing/v_Skiing_g09_c01")]


def test_frame_count_mismatch_and_truncation(root):
  os.remove(os.path.join(root, "rgb-images", "Basketball", "v_Basketball_g01_c02", "00014.jpg"))
  with pytest.raises(BadVideoError, match=r"13 frames but 14 annotated frames.*1 fewer frames"):
    read_split(root)
  records, report = read_split(root, truncate_to_shorter=True)
  rec = next(r for r in records["train"] if r.video_id == "Basketball/v_Basketball_g01_c02")
  assert rec.num_frames == 13 and rec.boxes.shape == (1, 13, 4) and rec.span == (0, 13)
  assert "truncated to 13" in report.warnings[0][2]


def test_unreadable_jpeg_and_bad_tube(root):
  with open(os.path.join(root, "rgb-images", "Biking", "v_Biking_g03_c01", "00002.jpg"), "wb") as f:
    f.write(b"nope")
  def bad_tube(gt):
    tube = gt["gttubes"]["Basketball/v_Basketball_g02_c01"][0][0]
    tube[-1, 0] = 99  # Frame 99 of a 12-frame video.
  edit_annotations(root, bad_tube)
  with pytest.raises(BadVideoError, match=r"v_Basketball_g02_c01.*outside 1..12"):
    read_split(root)
  records, report = read_split(root, on_bad_video="skip")
  assert records["test"] == []
  reasons = {v: r for _, v, r in report.skipped}
  assert "00002.jpg" in reasons["Biking/v_Biking_g03_c01"]


def test_resolution_mismatch(root):
  edit_annotations(root, lambda gt: gt["resolution"].update({"Biking/v_Biking_g03_c01": (240, 320)}))
  with pytest.raises(BadVideoError, match="resolution 240x320"):
    read_split(root)


def tiny_config(root, tmp_path):
  c = configlib.base_config()
  c.dataset = "ucf101_24"
  c.data.root, c.data.tfds_dir, c.data.frame_size = root, str(tmp_path / "tfds"), SIZE
  c.quiet = True
  return c


def test_tfds_round_trip_and_skip_report(root, tmp_path):
  direct, _ = read_split(root)
  config = tiny_config(root, tmp_path)
  ds = ucf24.load(config.data, config.quiet)
  assert ds.class_names == ucf24.CLASSES and ds.name == "ucf101_24"
  assert ds.train_index.video_ids == tuple(r.video_id for r in direct["train"])
  np.testing.assert_array_equal(ds.test_index.num_frames, [r.num_frames for r in direct["test"]])
  for want, got in zip(direct["train"] + direct["test"], list(ds.train) + list(ds.test)):
    assert (got.video_id, got.group_id, got.label, got.span) == (want.video_id, want.group_id,
                                                                 want.label, want.span)
    for field in ("frames", "masks", "boxes", "has_gt"):
      np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
  # A second load reuses the prepared files: it works without the official root.
  shutil.rmtree(root)
  assert len(ucf24.load(config.data, config.quiet).train) == 3
  # Another setting is a new builder config; a bad video is skipped and reported.
  fx.write_ucf(root)
  os.remove(os.path.join(root, "rgb-images", "Biking", "v_Biking_g03_c01", "00005.jpg"))
  config.data.on_bad_video = "skip"
  ds = ucf24.load(config.data, config.quiet)
  assert len(ds.test) == 1
  report = official.stored_report(ucf24.make_builder(config.data, config.quiet))
  assert [(s, v) for s, v, _ in report.skipped] == [("test", "Biking/v_Biking_g03_c01")]
  assert "missing 00005.jpg" in report.skipped[0][2]


def test_prepare_run_and_report(root, tmp_path):
  from claus_jax import prepare
  config = tiny_config(root, tmp_path)
  config.model.num_classes = 24
  first = prepare.run(config)
  assert first["generated"] and first["summary"]["train"]["videos"] == 3
  assert first["summary"]["test"]["frames"] == 12 + 13
  second = prepare.run(config)
  assert not second["generated"] and second["tfds_dir"] == first["tfds_dir"]
  text = prepare.format_report(second)
  assert "already prepared" in text and "train: 3 videos, 42 frames, 2 groups" in text


@pytest.mark.slow
def test_main_job_smoke_on_fixture(root, tmp_path):
  """The whole path: official files -> tfds -> rounds -> summary, with the tiny variant."""
  import json
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  workdir = str(tmp_path / "run")
  env = dict(os.environ, CLAUS_DATA_DIR=root, CLAUS_TFDS_DIR=str(tmp_path / "tfds"))
  done = subprocess.run([sys.executable, "-m", "claus_jax.main", "--config=configs/ucf101_24.py:tiny",
                         f"--workdir={workdir}", "--quiet"], env=env, cwd=repo, capture_output=True,
                        text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(os.path.join(workdir, "dataset.json")) as f:
    summary = json.load(f)
  assert summary["dataset"] == "ucf101_24" and summary["classes"] == 24
  assert summary["train"]["videos"] == 3 and summary["test"]["videos"] == 2
  assert os.path.getsize(os.path.join(workdir, "summary.md")) > 0


def test_filled_boxes_equal_nearest_resize_of_full_size_masks():
  # Independent route: fill the box at full size, resize that mask by nearest neighbour (PIL).
  from PIL import Image
  rng = np.random.default_rng(0)
  for _ in range(20):
    h, w, size = 240, 320, 48
    x1, x2 = sorted(rng.integers(0, w, 2))
    y1, y2 = sorted(rng.integers(0, h, 2))
    full = np.zeros((h, w), np.uint8)
    full[y1:y2 + 1, x1:x2 + 1] = 1
    want = np.asarray(Image.fromarray(full).resize((size, size), Image.NEAREST))
    boxes = official.scale_boxes(np.array([[[x1, y1, x2, y2]]], np.float32), h, w, size)
    np.testing.assert_array_equal(official.fill_boxes(boxes, size)[0], want)
