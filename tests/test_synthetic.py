"""Tests of the synthetic benchmark (v2): determinism, exact masks, actions, scenes, groups, spans,
storage."""

import dataclasses
import os

import numpy as np
import pytest

from claus_jax import configlib
from claus_jax.data import get_dataset
from claus_jax.data import figures as F
from claus_jax.data import synthetic as S

# Tiny but complete: one group per class, so every class can be looked up by label.
TINY = S.GeneratorParams(seed=3, frame_size=32, num_classes=8, train_groups=8, test_groups=3,
                         min_group_videos=2, max_group_videos=3, min_frames=12, max_frames=16,
                         mode="untrimmed", long_tail=1.0, clutter=2, occlusion=0.5, jitter=1.0)


def _group_of(params, label, split="train"):
  return int(np.flatnonzero(S.group_labels(params, split) == label)[0])


def _bbox(mask):
  ys, xs = np.nonzero(mask)
  return np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)


def test_same_seed_gives_identical_bytes_and_other_seed_differs():
  a = S.generate_video(TINY, "train", 1, 1)
  b = S.generate_video(TINY, "train", 1, 1)
  for field in ("frames", "masks", "boxes", "has_gt"):
    assert getattr(a, field).tobytes() == getattr(b, field).tobytes(), field
  assert (a.video_id, a.group_id, a.label, a.span) == (b.video_id, b.group_id, b.label, b.span)
  c = S.generate_video(dataclasses.replace(TINY, seed=4), "train", 1, 1)
  assert a.frames.shape != c.frames.shape or a.frames.tobytes() != c.frames.tobytes()
  # Random access gives the same video as sequential generation.
  seq = list(S.generate_split(TINY, "train"))
  first = S.recording(TINY, "train", 0).num_videos
  assert seq[first + 1].frames.tobytes() == a.frames.tobytes()


def test_mask_is_exactly_the_visible_actor():
  params = dataclasses.replace(TINY, occlusion=1.0, mode="untrimmed")
  for group in range(4):
    with_actor = S.generate_video(params, "train", group, 0)
    without = S.generate_video(params, "train", group, 0, draw_actor=False)
    changed = np.any(with_actor.frames != without.frames, axis=-1)  # (T, H, W)
    gt = with_actor.has_gt
    mask = with_actor.masks.astype(bool)
    # Every pixel the actor changes inside the span is in the mask, and the mask has nothing else
    # (up to pixels where the actor colour happens to equal the background after rounding).
    assert not np.any(changed[gt] & ~mask[gt])
    assert (mask[gt] & ~changed[gt]).sum() <= 0.01 * mask[gt].sum()
    assert mask[gt].reshape(gt.sum(), -1).any(axis=1).all(), "an annotated frame has no actor"
    for t in np.flatnonzero(gt):
      np.testing.assert_array_equal(with_actor.boxes[0, t], _bbox(mask[t]))
    # Outside the span the actor is drawn but carries no ground truth.
    assert changed[~gt].any() and not mask[~gt].any()
    assert np.isnan(with_actor.boxes[0, ~gt]).all()


def test_occluder_removes_pixels_from_the_mask():
  # The chance of an occluder is occlusion x the group's difficulty: find a group that has one.
  hidden_any = False
  for group in range(TINY.train_groups):
    clear = S.generate_video(dataclasses.replace(TINY, occlusion=0.0), "train", group, 0)
    hidden = S.generate_video(dataclasses.replace(TINY, occlusion=1.0), "train", group, 0)
    assert not np.any(hidden.masks & ~clear.masks)  # Occlusion only removes actor pixels.
    hidden_any |= bool(hidden.masks.sum() < clear.masks.sum())
  assert hidden_any


def test_untrimmed_actor_is_static_outside_the_span():
  # The actor idles outside the span: its silhouette only breathes (a slow sway of a few pixels),
  # while during the action it changes.
  params = dataclasses.replace(TINY, frame_size=64, occlusion=0.0, jitter=0.0, min_frames=24,
                               max_frames=28)
  rec = S.generate_video(params, "train", _group_of(params, S.CLASS_NAMES.index("squat")), 0)
  bare = S.generate_video(params, "train", _group_of(params, S.CLASS_NAMES.index("squat")), 0,
                          draw_actor=False)
  drawn = np.any(rec.frames != bare.frames, axis=-1)
  start, end = rec.span
  assert 1 <= start < end <= rec.num_frames - 1
  idle = [t for t in range(rec.num_frames) if t < start - 1 or t > end]
  change = lambda t, u: int((drawn[t] != drawn[u]).sum())
  idle_change = max(change(t, u) for t in idle for u in idle)
  active_change = max(change(start - 1, t) for t in range(start, end))
  assert active_change > 3 * max(idle_change, 1), (idle_change, active_change)


@pytest.mark.parametrize("mode", ["untrimmed", "trimmed"])
def test_spans_and_ground_truth(mode):
  params = dataclasses.replace(TINY, mode=mode)
  for rec in S.generate_split(params, "test"):
    rec.validate()
    t = rec.num_frames
    assert TINY.min_frames <= t <= TINY.max_frames
    start, end = rec.span
    if mode == "trimmed":
      assert (start, end) == (0, t) and rec.has_gt.all()
    else:
      assert 1 <= start < end <= t - 1  # Strictly inside the video.
      assert end - start >= min(8, t - 2)
    expected = np.zeros(t, bool)
    expected[start:end] = True
    np.testing.assert_array_equal(rec.has_gt, expected)
    assert not rec.masks[~rec.has_gt].any()
    assert np.isnan(rec.boxes[:, ~rec.has_gt]).all()
    assert np.isfinite(rec.boxes[:, rec.has_gt]).all()
    assert rec.boxes.shape == (1, t, 4) and rec.frames.dtype == np.uint8


def test_split_by_group_has_no_leakage():
  train = list(S.generate_split(TINY, "train"))
  test = list(S.generate_split(TINY, "test"))
  train_groups = {r.group_id for r in train}
  test_groups = {r.group_id for r in test}
  assert len(train_groups) == TINY.train_groups and len(test_groups) == TINY.test_groups
  assert not train_groups & test_groups
  ids = [r.video_id for r in train + test]
  assert len(set(ids)) == len(ids)
  for recs in (train, test):
    for g in {r.group_id for r in recs}:
      members = [r for r in recs if r.group_id == g]
      assert TINY.min_group_videos <= len(members) <= TINY.max_group_videos
      assert len({r.label for r in members}) == 1


def test_group_members_share_the_scene():
  a = S.generate_video(TINY, "train", 0, 0)
  b = S.generate_video(TINY, "train", 0, 1)
  c = S.generate_video(TINY, "train", 1, 0)
  def diff(x, y):
    return np.abs(x.frames[0].astype(int) - y.frames[0].astype(int)).mean()
  assert diff(a, b) < 0.5 * diff(a, c)


def test_class_histogram_follows_long_tail():
  counts = S.class_counts(200, 8, 8.0)
  assert counts.sum() == 200
  assert np.all(np.diff(counts) <= 0)
  assert 6.5 <= counts[0] / counts[-1] <= 9.5
  w = 8.0 ** (-np.arange(8) / 7)
  np.testing.assert_allclose(counts, 200 * w / w.sum(), atol=1.0)
  np.testing.assert_array_equal(S.class_counts(24, 8, 1.0), np.full(8, 3))
  # Few groups: every class still appears.
  small = S.class_counts(9, 8, 20.0)
  assert small.sum() == 9 and small.min() == 1
  params = dataclasses.replace(TINY, train_groups=200, long_tail=8.0)
  np.testing.assert_array_equal(np.bincount(S.group_labels(params, "train"), minlength=8), counts)


@pytest.mark.parametrize("size", [112, 224])
def test_large_frame_sizes(size):
  params = dataclasses.replace(TINY, frame_size=size, min_frames=8, max_frames=8, occlusion=1.0)
  rec = S.generate_video(params, "train", 0, 0).validate()
  assert rec.frames.shape == (8, size, size, 3)
  assert rec.masks[rec.has_gt].any()


def _config(tmp_path, **syn):
  c = configlib.base_config()
  c.data.tfds_dir = str(tmp_path)
  c.data.frame_size = 32
  c.quiet = True
  s = c.data.synthetic
  s.num_classes, s.train_groups, s.test_groups = 3, 3, 2
  s.min_group_videos = s.max_group_videos = 2
  s.min_frames, s.max_frames = 8, 10
  for k, v in syn.items():
    setattr(s, k, v)
  return c


def test_get_dataset_prepares_once_and_rebuilds_on_change(tmp_path, monkeypatch):
  calls = []
  original = S.generate_split
  def counting(params, split):
    calls.append(split)
    return original(params, split)
  monkeypatch.setattr(S, "generate_split", counting)

  ds = get_dataset(_config(tmp_path))
  assert calls == ["train", "test"]
  assert (len(ds.train), len(ds.test)) == (6, 4)
  assert ds.class_names == S.CLASS_NAMES[:3]
  params = S.GeneratorParams.from_data(_config(tmp_path).data)
  expected = list(original(params, "train"))
  assert list(ds.train_index.video_ids) == [r.video_id for r in expected]
  np.testing.assert_array_equal(ds.train_index.num_frames, [r.num_frames for r in expected])
  rec = ds.train[3]
  assert rec.frames.tobytes() == expected[3].frames.tobytes()
  np.testing.assert_array_equal(rec.boxes, expected[3].boxes)
  summary = ds.summary()
  assert summary["train"]["videos"] == 6 and summary["test"]["groups"] == 2

  again = get_dataset(_config(tmp_path))
  assert calls == ["train", "test"]  # Reused, not regenerated.
  assert again.train[0].frames.tobytes() == ds.train[0].frames.tobytes()

  changed = get_dataset(_config(tmp_path, clutter=1))
  assert calls == ["train", "test"] * 2
  prepared = [d for d in os.listdir(tmp_path / S.TFDS_NAME) if d.startswith("trimmed_32px_")]
  assert len(prepared) == 2  # One directory per generator setting.
  assert len(changed.train) == 6


def test_contact_sheet_writes_png(tmp_path):
  recs = [S.generate_video(TINY, "train", g, 0) for g in range(2)]
  path = tmp_path / "sheet.png"
  S.contact_sheet(recs, S.CLASS_NAMES, str(path), num_frames=3)
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_knob_names_the_field():
  c = configlib.base_config()
  c.data.synthetic.mode = "sideways"
  with pytest.raises(ValueError, match="data.synthetic.mode"):
    S.GeneratorParams.from_data(c.data)


def test_held_out_groups_take_whole_groups_from_the_end():
  import numpy as np
  from claus_jax.data.record import SplitIndex
  index = SplitIndex(video_ids=("a", "b", "c", "d", "e"), group_ids=("g2", "g0", "g1", "g2", "g0"),
                     labels=np.zeros(5, np.int32), num_frames=np.full(5, 10, np.int32))
  # Groups sorted: g0, g1, g2; holding out 1 takes g2 (videos 0 and 3), 2 takes g1 and g2.
  assert index.held_out_groups(1) == ([1, 2, 4], [0, 3])
  assert index.held_out_groups(2) == ([1, 4], [0, 2, 3])
  assert index.held_out_groups(0) == ([0, 1, 2, 3, 4], [])


def test_validation_groups_replace_the_test_split_by_held_out_train_groups(tmp_path):
  full = get_dataset(_config(tmp_path))
  config = _config(tmp_path)
  config.data.validation_groups = 1
  held = get_dataset(config)
  kept_pos, held_pos = full.train_index.held_out_groups(1)
  assert held.test_index.video_ids == tuple(full.train_index.video_ids[i] for i in held_pos)
  assert held.train_index.video_ids == tuple(full.train_index.video_ids[i] for i in kept_pos)
  assert not set(held.test_index.video_ids) & set(full.test_index.video_ids)
  assert not set(held.test_index.group_ids) & set(held.train_index.group_ids)
  np.testing.assert_array_equal(held.test_index.labels, full.train_index.labels[held_pos])
  assert held.test[0].frames.tobytes() == full.train[held_pos[0]].frames.tobytes()
  assert [r.video_id for r in held.train] == list(held.train_index.video_ids)
  config.data.validation_groups = len(set(full.train_index.group_ids))
  with pytest.raises(ValueError, match="config.data.validation_groups"):
    get_dataset(config)




# --------------------------------------------------------------------------------------------------
# v2: the articulated figure, its actions and the class scenes


def test_idle_skeleton_by_hand():
  """Standing straight (all angles 0), the figure's joints are where its proportions put them."""
  zero = F.Pose({k: np.zeros(1) for k in F.DOFS})
  j = F.joints_3d(zero)
  # Feet: the sole 0.02 below the ankle stands on y = 0; the pelvis is a leg length above.
  np.testing.assert_allclose(j["r_ankle"][0], [0.0, 0.02, F.HIP_HALF], atol=1e-12)
  np.testing.assert_allclose(j["pelvis"][0], [0.0, 0.02 + F.LEG_LENGTH, 0.0], atol=1e-12)
  np.testing.assert_allclose(j["neck"][0, 1], 0.02 + F.LEG_LENGTH + F.TORSO)
  top = j["head"][0, 1] + F.HEAD_RADIUS
  assert 0.95 <= top <= 1.05  # Standing height ~ 1 body unit.
  # Arms hang from the shoulders, hands at shoulder height - upper arm - forearm.
  np.testing.assert_allclose(j["l_hand"][0], j["l_shoulder"][0] - [0, F.UPPER_ARM + F.FOREARM, 0])


def test_squat_lowers_the_pelvis_by_the_knee_geometry():
  """Thigh forward by a, shin back by a (knee 2a): the pelvis sits (THIGH + SHIN) cos a + sole."""
  a = 0.8
  pose = {k: np.zeros(1) for k in F.DOFS}
  for side in ("r", "l"):
    pose[f"{side}_hip_t"] = np.array([a])
    pose[f"{side}_knee"] = np.array([2 * a])
  j = F.joints_3d(F.Pose(pose))
  np.testing.assert_allclose(j["pelvis"][0, 1], F.LEG_LENGTH * np.cos(a) + 0.02, rtol=1e-12)
  np.testing.assert_allclose(j["r_knee"][0, 0], F.THIGH * np.sin(a), rtol=1e-12)  # Knee forward.
  np.testing.assert_allclose(j["r_ankle"][0, 0], F.THIGH * np.sin(a) - F.SHIN * np.sin(a),
                             atol=1e-12)


def test_a_mirrored_figure_is_the_mirror_image():
  rng = np.random.default_rng(0)
  fig = S.random_figure(rng, 64, (0.5, 0.8))
  pose = F.perform("kick", np.arange(6.0), F.random_action_params(rng, "kick"))
  joints = F.joints_3d(pose)
  origin = np.full((6, 2), 32.0)
  right = F.project(joints, fig, origin)
  left = F.project(joints, dataclasses.replace(fig, facing=-fig.facing), origin)
  for k in right:
    np.testing.assert_allclose(left[k][:, 0] - 32.0, -(right[k][:, 0] - 32.0) + 2 * np.sin(
        fig.yaw) * joints[k][:, 2] * fig.height, atol=1e-9)  # Lateral offsets keep their side.
    np.testing.assert_allclose(left[k][:, 1], right[k][:, 1])
  assert all(F.mirror_safe(a) for a in F.BENCHMARK_ACTIONS)


def _box_stats(rec):
  b = rec.boxes[0][rec.has_gt]
  return b[:, 3] - b[:, 1] + 1, b[:, 2] - b[:, 0] + 1, b[:, 1], b[:, 3]


def test_actions_are_poses_you_can_see():
  """Each action moves the silhouette in its own way (trimmed, no occluder, no jitter)."""
  params = dataclasses.replace(TINY, frame_size=64, occlusion=0.0, jitter=0.0, mode="trimmed",
                               min_frames=28, max_frames=28, num_classes=10, train_groups=10)
  video = {}
  for k, name in enumerate(S.CLASS_NAMES):
    video[name] = S.generate_video(params, "train", _group_of(params, k), 0)
  h, w, top, bottom = _box_stats(video["squat"])
  assert h.min() < 0.8 * h.max()  # Squatting shortens the figure...
  assert np.ptp(bottom) <= 2  # ...with the feet on the ground.
  h, w, top, bottom = _box_stats(video["jump"])
  assert bottom.min() < bottom.max() - 3  # The feet leave the ground.
  h, w, top, bottom = _box_stats(video["raise_arms"])
  assert h.max() > 1.12 * h.min()  # The hands go above the head.
  assert np.ptp(bottom) <= 2
  h, w, _, _ = _box_stats(video["jumping_jack"])
  assert w.max() > 1.6 * w.min()  # Arms and legs spread.
  h, w, _, bottom = _box_stats(video["bow"])
  assert h.min() < 0.85 * h.max() and np.ptp(bottom) <= 2
  # A walker is followed by the camera: the background scrolls.
  walk = video["walk"]
  bare = S.generate_video(params, "train", _group_of(params, S.CLASS_NAMES.index("walk")), 0,
                          draw_actor=False)
  still = S.generate_video(params, "train", _group_of(params, S.CLASS_NAMES.index("clap")), 0,
                           draw_actor=False)
  moved = lambda r: np.abs(r.frames[-1].astype(int) - r.frames[0].astype(int)).mean()
  assert moved(bare) > 2 * moved(still)  # (Sensor noise and flicker change every frame.)
  assert walk.masks.any(axis=(1, 2)).all()


def test_class_scenes_go_with_the_class_except_borrowed_ones():
  params = dataclasses.replace(TINY, train_groups=120, scene_borrow=0.15)
  recs = [S.recording(params, "train", g) for g in range(params.train_groups)]
  borrowed = np.mean([r.scene_class != r.label for r in recs])
  assert 0.06 <= borrowed <= 0.26, borrowed  # 0.15 +- 3 binomial sd over 120 groups.
  own = dataclasses.replace(TINY, scene_borrow=0.0)
  assert all(S.recording(own, "train", g).scene_class == S.recording(own, "train", g).label
             for g in range(own.train_groups))
  # A class's scenes are the same in train and test groups (as a UCF class's pool or pitch).
  styles = S.class_styles(params)
  assert len(styles) == params.num_classes and all(len(s) == params.scenes_per_class for s in styles)
  again = S.class_styles(dataclasses.replace(params, train_groups=5))
  np.testing.assert_array_equal(styles[3][1].wall, again[3][1].wall)
  # Two classes' scenes differ in colour more than two recordings of one scene do.
  rng = np.random.default_rng(1)
  paint = lambda style: S.paint_scene(rng, style, 32, 32, 32)[0].reshape(-1, 3).mean(axis=0)
  same = np.abs(paint(styles[0][0]) - paint(styles[0][0])).mean()
  other = np.mean([np.abs(paint(styles[0][0]) - paint(styles[k][0])).mean() for k in range(1, 8)])
  assert same < 0.5 * other


@pytest.mark.parametrize("mode", ["trimmed", "untrimmed"])
def test_figure_sizes_follow_the_mode(mode):
  params = dataclasses.replace(TINY, mode=mode, train_groups=60)
  heights = np.array([S.recording(params, "train", g).figure.height
                      for g in range(params.train_groups)]) / params.frame_size
  lo, hi = S.FIGURE_HEIGHT[mode]
  assert heights.min() >= lo and heights.max() <= hi
  assert heights.max() - heights.min() > 0.6 * (hi - lo)  # The range is used.


def test_difficulty_varies_from_group_to_group_and_sets_occlusion_and_noise():
  recs = [S.recording(TINY, "train", g) for g in range(TINY.train_groups)]
  d = np.array([r.difficulty for r in recs])
  assert d.min() < 0.3 and d.max() > 0.6
  for r in recs:
    assert r.occlusion == pytest.approx(TINY.occlusion * r.difficulty)
    assert r.noise == pytest.approx(2.0 + 6.0 * r.difficulty)  # S.sensor_noise, by hand.


def test_bad_group_sizes_name_the_field():
  with pytest.raises(ValueError, match="data.synthetic.min_group_videos"):
    dataclasses.replace(TINY, min_group_videos=5, max_group_videos=4).check()
  c = configlib.base_config()
  c.data.synthetic.min_group_videos = 8
  with pytest.raises(configlib.ConfigError, match="data.synthetic.min_group_videos"):
    configlib.validate(c)


def test_part_map_names_the_limb_under_each_joint():
  """Standing, seen from the front: the head's centre is 'head', the mid-torso 'torso', a
  mid-thigh 'thigh'; the part map is exactly the mask."""
  zero = F.Pose({k: np.zeros(1) for k in F.DOFS})
  fig = F.Figure(height=40.0, thickness=1.0, shirt=np.full(3, 200, np.float32),
                 pants=np.full(3, 90, np.float32), skin=np.full(3, 150, np.float32),
                 yaw=np.pi / 2, facing=1.0)
  points = F.project(F.joints_3d(zero), fig, np.array([[32.0, 60.0]]))
  mask, color, parts = F.render(fig, points, 64)
  np.testing.assert_array_equal(parts > 0, mask)
  at = lambda p: parts[0, int(round(p[1])), int(round(p[0]))]
  assert at(points["head"][0]) == 1 + F.PARTS.index("head")
  assert at(0.5 * (points["pelvis"][0] + points["neck"][0])) == 1 + F.PARTS.index("torso")
  assert at(0.5 * (points["r_hip"][0] + points["r_knee"][0])) == 1 + F.PARTS.index("thigh")
  # The rim is darker than the inside of the same part.
  row = int(round(points["neck"][0][1] + 5))
  xs = np.flatnonzero(mask[0, row])
  assert color[0, row, xs[0]].mean() < 0.6 * color[0, row, xs[len(xs) // 2]].mean()


def test_video_joints_are_the_rendered_figures():
  """render_video_and_joints (what launch/studies/pose_ceiling.py reads) gives the benchmark's own
  video and the joints of the figure drawn in it: with no occluder, the torso's middle is on the
  mask in every frame, and the head is above the pelvis by about the torso's length."""
  params = dataclasses.replace(TINY, occlusion=0.0, mode="trimmed")
  rec = S.recording(params, "train", 2)
  video, points = S.render_video_and_joints(params, "train", 2, 1, rec)
  same = S.generate_video(params, "train", 2, 1)
  np.testing.assert_array_equal(video.frames, same.frames)
  np.testing.assert_array_equal(video.masks, same.masks)
  mid = np.rint(0.5 * (points["pelvis"] + points["neck"])).astype(int)
  inside = (mid >= 0).all(axis=1) & (mid < params.frame_size).all(axis=1)
  assert inside.any()
  t = np.flatnonzero(inside)
  assert video.masks[t, mid[t, 1], mid[t, 0]].all()
  rise = points["pelvis"][:, 1] - points["head"][:, 1]  # Image y grows downwards.
  assert (rise > 0.25 * rec.figure.height).all() and (rise < 0.6 * rec.figure.height).all()
