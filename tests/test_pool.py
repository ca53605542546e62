"""Pool state: round trip, atomic writes, validation errors, seeded round-0 initialisation."""

import errno
import json
import os
import stat
from unittest import mock

import numpy as np
import pytest

from claus_jax import errors
from claus_jax import pool as pool_lib

NUM_FRAMES = {"a": 10, "b": 20, "c": 5, "d": 12}


def _pool():
  p = pool_lib.PoolState(NUM_FRAMES, cost_video=3.0, cost_frame=0.5)
  p.label_video("b", 0)
  p.label_frames("b", [4, 1, 19], 0)
  p.label_video("a", 1)
  p.label_frames("a", [0], 1)
  return p


def test_round_trip_and_cost(tmp_path):
  p = _pool()
  path = tmp_path / "pool.json"
  p.save(str(path))
  q = pool_lib.PoolState.load(str(path), num_frames=NUM_FRAMES)
  assert q.labelled_video_ids() == ["a", "b"]  # pool order, not insertion order
  np.testing.assert_array_equal(q.labelled_frames("b"), [1, 4, 19])
  assert q.frame_rounds("a") == {0: 1}
  assert q.video_round("b") == 0 and q.video_round("c") is None
  # 2 videos x 3.0 + 4 frames x 0.5
  assert q.cost == pytest.approx(8.0)
  assert q.percentages() == pytest.approx({"videos_pct": 50.0, "frames_pct": 400 / 47})
  assert q.to_json() == p.to_json()


def test_relabelling_is_not_counted_twice():
  p = _pool()
  assert p.label_frames("b", [4, 5], 2) == 1
  assert p.frame_rounds("b")[4] == 0  # the first round is kept
  p.label_video("b", 3)
  assert p.video_round("b") == 0


def test_atomic_write_keeps_old_file_on_crash(tmp_path):
  path = tmp_path / "pool.json"
  _pool().save(str(path))
  before = path.read_text()
  p = _pool()
  p.label_video("c", 2)
  with mock.patch("os.replace", side_effect=OSError("disk died")):
    with pytest.raises(OSError):
      p.save(str(path))
  assert path.read_text() == before
  assert pool_lib.PoolState.load(str(path)).labelled_video_ids() == ["a", "b"]
  assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def _write(tmp_path, data):
  path = tmp_path / "pool.json"
  path.write_text(json.dumps(data))
  return str(path)


def test_validation_errors_name_the_entry(tmp_path):
  good = _pool().to_json()
  bad = json.loads(json.dumps(good))
  bad["frames"]["b"]["25"] = 0
  with pytest.raises(pool_lib.PoolError, match=r"frames\['b'\]\['25'\].*outside \[0, 20\)"):
    pool_lib.PoolState.load(_write(tmp_path, bad))
  bad = json.loads(json.dumps(good))
  bad["videos"]["zzz"] = 0
  with pytest.raises(pool_lib.PoolError, match=r"videos\['zzz'\] is an unknown video id"):
    pool_lib.PoolState.load(_write(tmp_path, bad))
  bad = json.loads(json.dumps(good))
  bad["frames"]["yyy"] = {"0": 0}
  with pytest.raises(pool_lib.PoolError, match=r"frames\['yyy'\] is an unknown video id"):
    pool_lib.PoolState.load(_write(tmp_path, bad))
  with pytest.raises(pool_lib.PoolError, match="different frame counts \\['a'\\]"):
    pool_lib.PoolState.load(_write(tmp_path, good), num_frames={**NUM_FRAMES, "a": 11})
  path = tmp_path / "broken.json"
  path.write_text('{"format_version": 1, "num_fr')
  with pytest.raises(pool_lib.StateFileError, match=r"broken.json is damaged \(not valid JSON"):
    pool_lib.PoolState.load(str(path))
  with pytest.raises(pool_lib.PoolError, match="missing 'videos'"):
    pool_lib.PoolState.load(_write(tmp_path, {"format_version": 1, "num_frames": {}}))


def test_update_errors():
  p = _pool()
  with pytest.raises(pool_lib.PoolError, match="unknown video id 'nope'"):
    p.label_video("nope", 1)
  with pytest.raises(pool_lib.PoolError, match=r"video 'c': frame 5 is outside \[0, 5\)"):
    p.label_frames("c", [5], 1)


def test_initial_pool_is_seeded_and_sized():
  ids = [f"v{i}" for i in range(40)]
  lengths = [10 + i % 7 for i in range(40)]
  p = pool_lib.initial_pool(ids, lengths, num_videos=6, num_frame_labels=15, seed=3)
  q = pool_lib.initial_pool(ids, lengths, num_videos=6, num_frame_labels=15, seed=3)
  r = pool_lib.initial_pool(ids, lengths, num_videos=6, num_frame_labels=15, seed=4)
  assert p.to_json() == q.to_json()
  assert p.to_json() != r.to_json()
  assert p.num_labelled_videos == 6 and p.num_labelled_frames == 15
  for vid in p.labelled_video_ids():
    assert len(p.labelled_frames(vid)) >= 1  # every labelled video has a frame
  # Frames only in labelled videos.
  assert all(len(p.labelled_frames(v)) == 0 for v in p.unlabelled_video_ids())
  with pytest.raises(pool_lib.PoolError, match="asks for 41 videos but the pool has 40"):
    pool_lib.initial_pool(ids, lengths, num_videos=41, num_frame_labels=50, seed=0)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_state_files_respect_the_umask_like_every_other_file(tmp_path, umask, mode):
  old = os.umask(umask)
  try:
    pool_lib.atomic_write_json(str(tmp_path / "pool.json"), {"a": 1})
    pool_lib.atomic_write_npz(str(tmp_path / "shard.npz"), {"x": np.zeros(3)})
    with open(tmp_path / "plain.txt", "w") as f:  # What open() gives, as for PNGs and orbax files.
      f.write("x")
  finally:
    os.umask(old)
  for name in ("pool.json", "shard.npz", "plain.txt"):
    assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == mode, name
  assert sorted(os.listdir(tmp_path)) == ["plain.txt", "pool.json", "shard.npz"]  # No .tmp left.


def test_a_full_disk_names_the_file_and_keeps_the_previous_one(tmp_path):
  path = str(tmp_path / "eval.json")
  pool_lib.atomic_write_json(path, {"round": 0})

  def full(f):
    f.write(b"{")
    raise OSError(errno.ENOSPC, "No space left on device")

  with pytest.raises(errors.DiskFullError) as e:
    pool_lib.atomic_write(path, full)
  assert str(e.value) == (f"{path}: no space left on device (ENOSPC); free space on that disk and "
                          "re-run the same command (finished stages and checkpoints are kept).")
  assert e.value.errno == errno.ENOSPC and e.value.filename == path
  assert pool_lib.read_json(path) == {"round": 0} and os.listdir(tmp_path) == ["eval.json"]


def test_read_json_names_a_damaged_file_and_the_fix(tmp_path):
  path = tmp_path / "round_003" / "eval.json"
  path.parent.mkdir()
  path.write_text('{"accuracy": 0.5, "per_cl')
  with pytest.raises(pool_lib.StateFileError) as e:
    pool_lib.read_json(str(path))
  assert str(e.value).startswith(f"{path} is damaged (not valid JSON: ")
  assert str(e.value).endswith("; delete it and re-run the same command to evaluate that round "
                               "again.")
  path.write_text('{"accuracy": 0.5}')
  with pytest.raises(pool_lib.StateFileError, match=r"eval.json is damaged \(no 'per_class' entry\)"):
    pool_lib.read_json(str(path), require=("per_class",))
