"""J-HMDB-21 reader on a generated fixture in the official layout."""

import os
import shutil

import numpy as np
import pytest
import scipy.io

import fixtures_datasets as fx
from claus_jax.data import jhmdb
from claus_jax.data.official import BadVideoError, DatasetError, PrepareReport

SIZE = 32


@pytest.fixture
def root(tmp_path):
  r = str(tmp_path / "jhmdb")
  fx.write_jhmdb(r)
  return r


def read_split(root, split=1, **kw):
  keys = jhmdb.read_splits(jhmdb.check_root(root), split)
  report = PrepareReport()
  out = {w: list(jhmdb.iter_videos(root, keys[w], w, SIZE, report=report, **kw)) for w in keys}
  return out, report


def test_classes_match_reference():
  assert jhmdb.CLASSES == fx.JHMDB_CLASSES and len(jhmdb.CLASSES) == 21


@pytest.mark.parametrize("split", [1, 2, 3])
def test_counts_and_labels_per_split(root, split):
  videos = fx.jhmdb_videos()
  keys = jhmdb.read_splits(root, split)
  for which, code in (("train", 1), ("test", 2)):
    expected = [(v.video_id, v.label) for v in videos if v.splits[split - 1] == code]
    assert [(k.video_id, k.label) for k in keys[which]] == expected


def test_records_frames_masks_boxes(root):
  records, report = read_split(root)
  assert not report.skipped and not report.warnings
  by_id = {v.video_id: v for v in fx.jhmdb_videos()}
  assert len(records["train"]) == 4 and len(records["test"]) == 3
  for rec in records["train"] + records["test"]:
    video = by_id[rec.video_id]
    t = video.num_frames
    assert rec.label == video.label and rec.group_id == rec.video_id
    assert rec.frames.shape == (t, SIZE, SIZE, 3) and rec.frames.dtype == np.uint8
    assert rec.masks.shape == (t, SIZE, SIZE) and rec.boxes.shape == (1, t, 4)
    assert rec.span == (0, t) and rec.annotation == "mask" and rec.has_gt.all()
    for i, rects in enumerate(video.rects):
      # Rows map by 2/3 and columns by 1/2 exactly (fixture corners are multiples of 3 and 2).
      x1, y1, x2, y2 = rects[0]
      want = np.zeros((SIZE, SIZE), np.uint8)
      want[y1 * 2 // 3:(y2 + 1) * 2 // 3, x1 // 2:(x2 + 1) // 2] = 1
      np.testing.assert_array_equal(rec.masks[i], want)
      np.testing.assert_allclose(rec.boxes[0, i], fx.expected_resized_rect(rects[0], SIZE), atol=1e-5)
      # The resized frame is red inside the mask (away from its edge) and grey far from it.
      ys, xs = np.nonzero(want)
      inner = rec.frames[i, ys.min() + 1:ys.max(), xs.min() + 1:xs.max()].reshape(-1, 3)
      assert (inner[:, 0] > 240).all() and (inner[:, 1] < 15).all()


def test_known_square_lands_where_expected(tmp_path):
  # Rows 12..35 and columns 16..31 of a 48x64 frame -> rows 8..23 and columns 8..15 at 32x32.
  root = str(tmp_path / "j")
  video = fx.FixtureVideo("clap", "sq", 2, [[(16, 12, 31, 35)]] * 3, (1, 1, 1))
  fx.write_jhmdb(root, [video])
  (rec,) = read_split(root)[0]["train"]
  np.testing.assert_array_equal(rec.boxes[0, 0], [8.0, 8.0, 15.0, 23.0])
  want = np.zeros((SIZE, SIZE), np.uint8)
  want[8:24, 8:16] = 1
  np.testing.assert_array_equal(rec.masks[1], want)
  np.testing.assert_array_equal(rec.frames[2, 12, 12], fx.ACTOR)
  np.testing.assert_array_equal(rec.frames[2, 28, 28], [fx.BACKGROUND] * 3)


def test_missing_root_and_subfolders(tmp_path, root):
  with pytest.raises(DatasetError, match="J-HMDB-21 root"):
    jhmdb.check_root(str(tmp_path / "nowhere"))
  with pytest.raises(DatasetError, match="config.data.root is empty"):
    jhmdb.check_root("")
  shutil.rmtree(os.path.join(root, "puppet_mask"))
  with pytest.raises(DatasetError, match=r"puppet_mask.*expected a directory at .*puppet_mask"):
    jhmdb.check_root(root)


def test_missing_frames_and_split_folders(root):
  shutil.rmtree(os.path.join(root, "splits"))
  with pytest.raises(DatasetError, match="splits"):
    jhmdb.check_root(root)
  os.makedirs(os.path.join(root, "splits"))
  with pytest.raises(DatasetError, match=r"missing split file .*brush_hair_test_split1.txt"):
    jhmdb.read_splits(root, 1)
  shutil.rmtree(os.path.join(root, "Rename_Images"))
  with pytest.raises(DatasetError, match="Rename_Images.*ReCompress_Videos"):
    jhmdb.check_root(root)


def test_malformed_split_line(root):
  with open(os.path.join(root, "splits", "catch_test_split2.txt"), "a") as f:
    f.write("some_video.avi 3\n")
  with pytest.raises(DatasetError, match=r"catch_test_split2.txt' line 3"):
    jhmdb.read_splits(root, 2)
  jhmdb.read_splits(root, 1)  # Other splits are unaffected.


def test_split_line_naming_missing_video(root):
  with open(os.path.join(root, "splits", "wave_test_split1.txt"), "a") as f:
    f.write("ghost_video.avi 2\n")
  with pytest.raises(BadVideoError, match=r"wave/ghost_video.*wave_test_split1.txt line 3.*neither"):
    read_split(root)
  records, report = read_split(root, on_bad_video="skip")
  assert len(records["test"]) == 3
  assert [(s, v) for s, v, _ in report.skipped] == [("test", "wave/ghost_video")]


def test_video_without_mask_file(root):
  video = fx.jhmdb_videos()[1]
  mat = os.path.join(root, "puppet_mask", video.class_name, video.name, "puppet_mask.mat")
  os.remove(mat)
  with pytest.raises(BadVideoError, match=r"no mask file: expected .*puppet_mask.mat.*on_bad_video=skip"):
    read_split(root)


def test_frame_mask_length_mismatch_and_truncation(root):
  video = fx.jhmdb_videos()[0]
  mat = os.path.join(root, "puppet_mask", video.class_name, video.name, "puppet_mask.mat")
  masks = scipy.io.loadmat(mat)["part_mask"]
  scipy.io.savemat(mat, {"part_mask": masks[:, :, :-2]})
  with pytest.raises(BadVideoError, match=r"(?s)10 frames but 8 mask frames.*2 more frames.*truncate_to_shorter"):
    read_split(root)
  records, report = read_split(root, truncate_to_shorter=True)
  rec = next(r for r in records["train"] if r.video_id == video.video_id)
  assert rec.num_frames == 8 and rec.masks.shape[0] == 8 and rec.span == (0, 8)
  assert len(report.warnings) == 1 and "truncated to 8" in report.warnings[0][2]


def test_unreadable_png_and_mat(root):
  videos = fx.jhmdb_videos()
  png = os.path.join(root, "Rename_Images", videos[0].class_name, videos[0].name, "00003.png")
  with open(png, "wb") as f:
    f.write(b"not a png")
  mat = os.path.join(root, "puppet_mask", videos[2].class_name, videos[2].name, "puppet_mask.mat")
  with open(mat, "wb") as f:
    f.write(b"garbage" * 10)
  with pytest.raises(BadVideoError, match=r"cannot read image .*00003.png"):
    read_split(root)
  records, report = read_split(root, on_bad_video="skip")
  reasons = {v: r for _, v, r in report.skipped}
  assert set(reasons) == {videos[0].video_id, videos[2].video_id}
  assert "00003.png" in reasons[videos[0].video_id] and "puppet_mask.mat" in reasons[videos[2].video_id]
  assert len(records["train"]) + len(records["test"]) == len(videos) - 2


def test_missing_frame_in_numbering(root):
  video = fx.jhmdb_videos()[0]
  os.remove(os.path.join(root, "Rename_Images", video.class_name, video.name, "00004.png"))
  with pytest.raises(BadVideoError, match="missing 00004.png"):
    read_split(root)


def test_avi_fallback(root):
  pytest.importorskip("av", reason="PyAV (extra 'video') is needed to decode ReCompress_Videos AVIs")
  video = fx.jhmdb_videos()[0]
  before = {r.video_id: r for r in read_split(root)[0]["train"]}[video.video_id]
  shutil.rmtree(os.path.join(root, "Rename_Images", video.class_name, video.name))
  frames = np.stack([fx.draw(r)[0] for r in video.rects])
  fx.write_avi(os.path.join(root, "ReCompress_Videos", video.class_name, f"{video.name}.avi"), frames)
  after = {r.video_id: r for r in read_split(root)[0]["train"]}[video.video_id]
  np.testing.assert_array_equal(after.frames, before.frames)  # FFV1 is lossless.
  np.testing.assert_array_equal(after.masks, before.masks)


def test_bad_policy_value(root):
  with pytest.raises(DatasetError, match="on_bad_video"):
    read_split(root, on_bad_video="ignore")


def tiny_config(root, tmp_path, split=1):
  from claus_jax import configlib
  c = configlib.base_config()
  c.dataset = "jhmdb"
  c.data.root, c.data.tfds_dir, c.data.frame_size, c.data.split = root, str(tmp_path / "tfds"), SIZE, split
  c.quiet = True
  return c


def test_tfds_round_trip(root, tmp_path):
  from claus_jax.data import official
  direct, _ = read_split(root, split=2)
  config = tiny_config(root, tmp_path, split=2)
  ds = jhmdb.load(config.data, config.quiet)
  assert ds.name == "jhmdb" and ds.class_names == jhmdb.CLASSES
  assert ds.summary()["train"]["videos"] == len(direct["train"]) == 5
  assert ds.test_index.video_ids == tuple(r.video_id for r in direct["test"])
  np.testing.assert_array_equal(ds.train_index.labels, [r.label for r in direct["train"]])
  for want, got in zip(direct["train"] + direct["test"], list(ds.train) + list(ds.test)):
    assert (got.video_id, got.group_id, got.label, got.span, got.annotation) == (
        want.video_id, want.group_id, want.label, want.span, want.annotation)
    for field in ("frames", "masks", "boxes", "has_gt"):
      np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
  assert official.stored_report(jhmdb.make_builder(config.data, config.quiet)).skipped == []
  # The builder config name carries split and frame size, so changing either prepares anew.
  names = {jhmdb.make_builder(tiny_config(root, tmp_path, split=s).data).builder_config.name for s in (1, 2)}
  assert len(names) == 2 and all(n.startswith(("split1_size32_", "split2_size32_")) for n in names)


def test_tfds_skip_and_truncate_report(root, tmp_path):
  from claus_jax.data import official
  videos = fx.jhmdb_videos()
  os.remove(os.path.join(root, "puppet_mask", videos[3].class_name, videos[3].name, "puppet_mask.mat"))
  mat = os.path.join(root, "puppet_mask", videos[0].class_name, videos[0].name, "puppet_mask.mat")
  scipy.io.savemat(mat, {"part_mask": scipy.io.loadmat(mat)["part_mask"][:, :, :-1]})
  config = tiny_config(root, tmp_path)
  with pytest.raises(BadVideoError):
    jhmdb.load(config.data, config.quiet)
  config.data.on_bad_video, config.data.truncate_to_shorter = "skip", True
  ds = jhmdb.load(config.data, config.quiet)
  assert len(ds.train) + len(ds.test) == len(videos) - 1
  report = official.stored_report(jhmdb.make_builder(config.data, config.quiet))
  assert [v for _, v, _ in report.skipped] == [videos[3].video_id]
  assert [v for _, v, _ in report.warnings] == [videos[0].video_id]
  assert ds.train_index.num_frames[0] == videos[0].num_frames - 1


def test_prepare_cli_reports_counts_and_skips(root, tmp_path):
  import subprocess
  import sys
  videos = fx.jhmdb_videos()
  os.remove(os.path.join(root, "Rename_Images", videos[4].class_name, videos[4].name, "00002.png"))
  env = dict(os.environ, CLAUS_DATA_DIR=root, CLAUS_TFDS_DIR=str(tmp_path / "tfds"))
  cmd = [sys.executable, "-m", "claus_jax.prepare", "--config=configs/jhmdb.py:tiny"]
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  failed = subprocess.run(cmd, env=env, cwd=repo, capture_output=True, text=True, timeout=120)
  assert failed.returncode != 0 and "missing 00002.png" in failed.stderr
  assert "on_bad_video=skip" in failed.stderr and "Traceback" not in failed.stderr
  done = subprocess.run(cmd + ["--config.data.on_bad_video=skip"], env=env, cwd=repo,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  train = sum(v.splits[0] == 1 for v in videos if v is not videos[4])
  assert f"train: {train} videos" in done.stdout and "skipped videos: 1" in done.stdout
  assert "fix them and run this command again: a change under the root prepares" in done.stdout
  assert f"[{'train' if videos[4].splits[0] == 1 else 'test'}] {videos[4].video_id}:" in done.stdout
  assert '"generated": true' in done.stdout


@pytest.mark.slow
def test_main_job_smoke_on_fixture(root, tmp_path):
  """The whole path: official files -> tfds -> rounds -> summary, with the tiny variant."""
  import json
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  workdir = str(tmp_path / "run")
  env = dict(os.environ, CLAUS_DATA_DIR=root, CLAUS_TFDS_DIR=str(tmp_path / "tfds"))
  done = subprocess.run([sys.executable, "-m", "claus_jax.main", "--config=configs/jhmdb.py:tiny",
                         f"--workdir={workdir}", "--quiet"], env=env, cwd=repo, capture_output=True,
                        text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(os.path.join(workdir, "dataset.json")) as f:
    summary = json.load(f)
  videos = fx.jhmdb_videos()
  assert summary["dataset"] == "jhmdb" and summary["classes"] == 21
  assert summary["train"]["videos"] == sum(v.splits[0] == 1 for v in videos)
  assert os.path.getsize(os.path.join(workdir, "summary.md")) > 0


def test_a_skipped_video_fixed_at_the_source_is_prepared_again(root, tmp_path):
  from claus_jax.data import official
  videos = fx.jhmdb_videos()
  mat = os.path.join(root, "puppet_mask", videos[3].class_name, videos[3].name, "puppet_mask.mat")
  saved = str(tmp_path / "saved.mat")
  shutil.move(mat, saved)  # A bad video: its mask file is missing.
  config = tiny_config(root, tmp_path)
  config.data.on_bad_video = "skip"
  ds = jhmdb.load(config.data, config.quiet)
  assert len(ds.train) + len(ds.test) == len(videos) - 1
  assert official.stored_report(jhmdb.make_builder(config.data, config.quiet)).source == official.source_fingerprint(root)
  # Unchanged sources: the prepared copy is reused without generating.
  assert not official.prepare(jhmdb.make_builder(config.data, config.quiet), root, quiet=True)
  shutil.move(saved, mat)  # The video is fixed: preparing again includes it.
  ds = jhmdb.load(config.data, config.quiet)
  assert len(ds.train) + len(ds.test) == len(videos)
  assert official.stored_report(jhmdb.make_builder(config.data, config.quiet)).skipped == []
  assert videos[3].video_id in ds.train_index.video_ids + ds.test_index.video_ids
