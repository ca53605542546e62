"""The score .npz files: the main job's shards and the score command's output, from one module."""

import numpy as np
import pytest

from claus_jax import pool as pool_lib
from claus_jax import score_files
from claus_jax import uncertainty


def _results(ids=("b/1", "a"), passes=3, thresholds=2):
  rng = np.random.default_rng(0)
  return [uncertainty.VideoScores(
      video_id=vid, frame_scores=rng.random((passes, thresholds, t), np.float32),
      entropy=rng.random(t, np.float32), mean_prob=rng.random(t, np.float32),
      latent=rng.random(5, np.float32), class_probs=rng.random(4, np.float32))
      for vid, t in zip(ids, (6, 4))]


def test_a_shard_reads_back_exactly_and_in_its_key_layout(tmp_path):
  results = _results()
  videos = score_files.video_fields(results)
  path = str(tmp_path / "shard_0000.npz")
  score_files.save_shard(path, videos)
  with np.load(path) as data:  # The file the main job has always written: '<video_id>/<field>'.
    assert data.files == [f"{r.video_id}/{f}" for r in results
                          for f in score_files.PER_VIDEO_FIELDS]
  loaded = score_files.load_shard(path)
  assert list(loaded) == ["b/1", "a"]  # A video id may hold '/'.
  for res in results:
    for field in score_files.PER_VIDEO_FIELDS:
      got, want = loaded[res.video_id][field], getattr(res, field)
      assert got.dtype == want.dtype
      np.testing.assert_array_equal(got, want)
      np.testing.assert_array_equal(videos[res.video_id][field], want)
  # Selection's view: all passes (R), the configured threshold (index 0); the rest stays.
  view = score_files.for_selection(loaded)
  np.testing.assert_array_equal(view["a"]["frame_scores"], results[1].frame_scores[-1, 0])
  np.testing.assert_array_equal(view["a"]["all_frame_scores"], results[1].frame_scores)


def test_a_damaged_shard_is_named_with_what_to_do(tmp_path):
  path = tmp_path / "shard_0003.npz"
  score_files.save_shard(str(path), score_files.video_fields(_results()))
  path.write_bytes(path.read_bytes()[:100])
  with pytest.raises(pool_lib.StateFileError) as e:
    score_files.load_shard(str(path))
  assert str(e.value).startswith(f"{path} is damaged (")
  assert "delete it and re-run the same command to score its videos again" in str(e.value)


def test_the_score_command_file_keeps_its_layout(tmp_path):
  results = _results(ids=("v0", "v1"), passes=4)
  arrays = score_files.split_arrays(results, ["v0", "v1"], passes=(2, 4), thresholds=(0.4, 0.2))
  arrays["split"] = np.asarray("train")
  path = str(tmp_path / "scores.npz")
  score_files.save_scores(path, arrays)
  with np.load(path) as data:  # '<field>/<video_id>' and the split's metadata.
    assert sorted(data.files) == sorted(
        [f"{f}/{v}" for v in ("v0", "v1") for f in score_files.PER_VIDEO_FIELDS]
        + ["video_ids", "num_frames", "passes", "thresholds", "split"])
  got = score_files.load_scores(path)
  assert list(got["video_ids"]) == ["v0", "v1"] and str(got["split"]) == "train"
  np.testing.assert_array_equal(got["num_frames"], [6, 4])
  np.testing.assert_array_equal(got["passes"], [2, 4])
  np.testing.assert_allclose(got["thresholds"], [0.4, 0.2])
  np.testing.assert_array_equal(got["videos"]["v1"]["frame_scores"],
                                results[1].frame_scores[[1, 3]])
  np.testing.assert_array_equal(got["videos"]["v0"]["latent"], results[0].latent)
  with pytest.raises(RuntimeError, match="scorer returned 'v1' where 'v0' was expected"):
    score_files.split_arrays(results[::-1], ["v0", "v1"], (4,), (0.4,))
