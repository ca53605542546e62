"""Tests of the synthetic benchmark: determinism, exact masks, motion classes, groups, spans, storage."""

import dataclasses
import os

import numpy as np
import pytest

from claus_jax import configlib
from claus_jax.data import get_dataset
from claus_jax.data import synthetic as S

# Tiny but complete: one group per class, so every class can be looked up by label.
TINY = S.GeneratorParams(seed=3, frame_size=32, num_classes=8, train_groups=8, test_groups=3,
                         videos_per_group=2, min_frames=12, max_frames=16, distractors=2,
                         occlusion=0.5, jitter=1.0)


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
  assert seq[1 * TINY.videos_per_group + 1].frames.tobytes() == a.frames.tobytes()


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


def test_actor_outline_darkens_the_silhouette_edge_only():
  plain = dataclasses.replace(TINY, actor_outline=False, occlusion=0.0)
  outlined = dataclasses.replace(plain, actor_outline=True)
  for group in range(3):
    a = S.generate_video(plain, "train", group, 0)
    b = S.generate_video(outlined, "train", group, 0)
    np.testing.assert_array_equal(a.masks, b.masks)  # Same ground truth: the edge is the actor's.
    changed = np.any(a.frames != b.frames, axis=-1)
    # Inside the span nothing outside the mask changes (idle frames draw the actor without a mask).
    gt = b.has_gt
    assert changed[gt].any() and not np.any(changed[gt] & ~b.masks[gt].astype(bool))
    edge_in_gt = changed & b.masks.astype(bool)
    # The edge by hand: mask pixels with a 4-neighbour outside the mask (frame border = outside).
    p = np.pad(b.masks.astype(bool), [(0, 0), (1, 1), (1, 1)])
    interior = p[:, 1:-1, 1:-1] & p[:, :-2, 1:-1] & p[:, 2:, 1:-1] & p[:, 1:-1, :-2] & p[:, 1:-1, 2:]
    expected = b.masks.astype(bool) & ~interior
    # Inside the span, the changed pixels are the mask's edge (a pixel whose colour already was
    # near-black may not change).
    assert not np.any(edge_in_gt & ~expected)
    assert edge_in_gt.sum() >= 0.9 * expected.sum()
    assert b.frames[expected].max() <= 12 + 3 * 3 * 2  # Near-black, up to the sensor noise.


def test_occluder_removes_pixels_from_the_mask():
  clear = S.generate_video(dataclasses.replace(TINY, occlusion=0.0), "train", 2, 0)
  hidden = S.generate_video(dataclasses.replace(TINY, occlusion=1.0), "train", 2, 0)
  assert not np.any(hidden.masks & ~clear.masks)  # Occlusion only removes actor pixels.
  assert hidden.masks.sum() < clear.masks.sum()


def _centroids(rec):
  idx = np.flatnonzero(rec.has_gt)
  ys, xs = [], []
  for t in idx:
    y, x = np.nonzero(rec.masks[t])
    ys.append(y.mean())
    xs.append(x.mean())
  return np.array(xs), np.array(ys), rec.masks[idx].reshape(len(idx), -1).sum(axis=1)


def test_classes_are_defined_by_motion():
  params = dataclasses.replace(TINY, frame_size=64, occlusion=0.0, jitter=0.0, mode="trimmed",
                               min_frames=24, max_frames=24)
  video = {name: S.generate_video(params, "train", _group_of(params, k), 0)
           for k, name in enumerate(S.CLASS_NAMES[:8])}
  xs, ys, _ = _centroids(video["move_right"])
  assert xs[-1] - xs[0] > 5 and abs(ys[-1] - ys[0]) < xs[-1] - xs[0]
  xs, ys, _ = _centroids(video["move_left"])
  assert xs[0] - xs[-1] > 5
  xs, ys, _ = _centroids(video["move_up"])
  assert ys[0] - ys[-1] > 5
  xs, ys, _ = _centroids(video["move_down"])
  assert ys[-1] - ys[0] > 5
  _, _, area = _centroids(video["grow_shrink"])
  assert area.max() > 1.5 * area.min()
  xs, ys, _ = _centroids(video["rotate"])
  assert np.ptp(xs) < 3 and np.ptp(ys) < 3  # Rotates in place...
  m = video["rotate"].masks
  turned = max(int((m[0] != m[t]).sum()) for t in range(len(m)))
  assert turned > 0.3 * m[0].sum()  # ...but the silhouette turns.
  xs, ys, _ = _centroids(video["circle"])
  assert np.ptp(xs) > 6 and np.ptp(ys) > 6


def test_untrimmed_actor_is_static_outside_the_span():
  params = dataclasses.replace(TINY, occlusion=0.0, jitter=0.0)
  rec = S.generate_video(params, "train", _group_of(params, 0), 0)
  bare = S.generate_video(params, "train", _group_of(params, 0), 0, draw_actor=False)
  drawn = np.any(rec.frames != bare.frames, axis=-1)
  start, end = rec.span
  assert 1 <= start < end <= rec.num_frames - 1
  np.testing.assert_array_equal(drawn[0], drawn[start - 1])
  np.testing.assert_array_equal(drawn[end], drawn[-1])
  assert (drawn[start - 1] != drawn[end]).any()  # It moved during the action.


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
      assert len(members) == TINY.videos_per_group
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
  s.num_classes, s.train_groups, s.test_groups, s.videos_per_group = 3, 3, 2, 2
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
  params = S.GeneratorParams.from_config(_config(tmp_path))
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

  changed = get_dataset(_config(tmp_path, distractors=1))
  assert calls == ["train", "test"] * 2
  prepared = [d for d in os.listdir(tmp_path / S.TFDS_NAME) if d.startswith("untrimmed_32px_")]
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
    S.GeneratorParams.from_config(c)


def test_held_out_groups_take_whole_groups_from_the_end():
  import numpy as np
  from claus_jax.data.record import SplitIndex
  index = SplitIndex(video_ids=("a", "b", "c", "d", "e"), group_ids=("g2", "g0", "g1", "g2", "g0"),
                     labels=np.zeros(5, np.int32), num_frames=np.full(5, 10, np.int32))
  # Groups sorted: g0, g1, g2; holding out 1 takes g2 (videos 0 and 3), 2 takes g1 and g2.
  assert index.held_out_groups(1) == ([1, 2, 4], [0, 3])
  assert index.held_out_groups(2) == ([1, 4], [0, 2, 3])
  assert index.held_out_groups(0) == ([0, 1, 2, 3, 4], [])


def test_class_shape_gives_each_class_its_silhouette_and_changes_nothing_else():
  cued = dataclasses.replace(TINY, class_shape=1.0)
  for label in range(TINY.num_classes):
    group = _group_of(TINY, label)
    plain = S._make_group(TINY, "train", group, label)
    shaped = S._make_group(cued, "train", group, label)
    assert shaped.actor.shape == S.CLASS_SHAPES[label]
    # The cue has a random stream of its own: scene, path, size and colours are class_shape=0's.
    np.testing.assert_array_equal(shaped.canvas, plain.canvas)
    np.testing.assert_array_equal(shaped.start, plain.start)
    assert shaped.motion.values == plain.motion.values and shaped.angle0 == plain.angle0
    for field in dataclasses.fields(S._Look):
      if field.name != "shape":
        np.testing.assert_array_equal(getattr(shaped.actor, field.name),
                                      getattr(plain.actor, field.name), err_msg=field.name)
  # The rendered video changes only where either silhouette is.
  group = _group_of(TINY, 4)  # 'ring': never one of the random shapes.
  a = S.generate_video(dataclasses.replace(TINY, occlusion=0.0), "train", group, 0)
  b = S.generate_video(dataclasses.replace(TINY, occlusion=0.0, class_shape=1.0), "train", group, 0)
  assert a.span == b.span and a.frames.shape == b.frames.shape
  changed = np.any(a.frames != b.frames, axis=-1)[a.has_gt]
  either = (a.masks | b.masks).astype(bool)[a.has_gt]
  assert changed.any() and not (changed & ~either).any()


def test_cue_free_actors_keep_the_random_shapes_and_bad_values_name_the_field():
  assert S.GeneratorParams().class_shape == 0.0
  shapes = {S._make_group(TINY, "train", g, int(l)).actor.shape
            for g, l in enumerate(S.group_labels(TINY, "train"))}
  assert shapes <= set(S.SHAPES)
  c = configlib.base_config()
  c.data.synthetic.class_shape = 1.5
  with pytest.raises(ValueError, match="data.synthetic.class_shape"):
    S.GeneratorParams.from_config(c)
  with pytest.raises(configlib.ConfigError, match="data.synthetic.class_shape"):
    configlib.validate(c)


@pytest.mark.parametrize("shape,inside,outside", [
    ("ring", [(0.7, 0.0), (0.0, -0.8)], [(0.0, 0.0), (0.3, 0.2), (1.1, 0.0)]),
    ("crescent", [(-0.9, 0.0), (0.2, 0.9)], [(0.9, 0.0), (0.5, 0.0)]),
    ("arrow", [(0.5, 0.3), (-0.8, 0.3), (0.9, 0.0)], [(-0.8, 0.5), (0.9, 0.5)]),
    ("hourglass", [(0.8, 0.5), (0.0, 0.0), (-0.9, -0.7)], [(0.0, 0.5), (0.3, -0.6)]),
    ("frame", [(0.7, 0.0), (0.6, 0.6)], [(0.0, 0.0), (0.95, 0.0), (0.2, 0.3)]),
    ("chevron", [(-0.6, 0.0), (0.4, 0.8)], [(0.3, 0.0), (-0.6, 0.8)]),
    ("l_shape", [(0.8, -0.6), (-0.6, 0.8)], [(0.5, 0.5), (0.0, 0.0)]),
    ("t_shape", [(0.7, 0.9), (-0.8, 0.1)], [(-0.5, 0.6)]),
    ("half_disc", [(0.0, 0.5), (0.5, 0.0)], [(0.0, -0.5), (0.9, 0.6)]),
    ("dumbbell", [(0.6, 0.6), (0.0, 0.1), (-0.6, -0.6), (0.95, 0.0)], [(0.0, 0.5), (0.3, 0.5)]),
])
def test_class_silhouettes_by_hand(shape, inside, outside):
  assert shape in S.CLASS_SHAPES
  # Points in units of the half-axes (a = 2, b = 1): worked from each shape's definition.
  for points, expected in ((inside, True), (outside, False)):
    u = np.array([p[0] * 2.0 for p in points])
    v = np.array([p[1] * 1.0 for p in points])
    np.testing.assert_array_equal(S._shape_mask(shape, u, v, 2.0, 1.0), expected, err_msg=shape)


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


def _chroma(rgb):
  rgb = np.asarray(rgb, np.float64).reshape(-1, 3)
  return rgb / rgb.sum(axis=-1, keepdims=True)


def _hue_angle(rgb):
  """Hue in turns [0, 1) (matplotlib's HSV)."""
  from matplotlib import colors
  return colors.rgb_to_hsv(np.clip(np.asarray(rgb, np.float64) / 255.0, 0.0, 1.0))[..., 0]


def test_class_scene_tints_the_background_with_the_class_hue_and_keeps_the_rest():
  cued = dataclasses.replace(TINY, class_scene=1.0, distractors=0)
  plain = dataclasses.replace(TINY, distractors=0)
  for label in range(TINY.num_classes):
    group = _group_of(TINY, label)
    a, b = S._make_group(plain, "train", group, label), S._make_group(cued, "train", group, label)
    # Scene layout, actor, motion and path are the cue-free draws.
    np.testing.assert_array_equal(a.start, b.start)
    assert a.motion.values == b.motion.values and a.actor.shape == b.actor.shape
    np.testing.assert_array_equal(a.actor.color_a, b.actor.color_a)
    # The median background colour is nearest the class's own hue (its stripes keep a random
    # third colour at a weight <= 0.5, so take the median over the canvas).
    median = np.median(b.canvas.reshape(-1, 3), axis=0)
    gap = np.abs(_hue_angle(median) - _hue_angle(S._hues(TINY.num_classes)))
    nearest = int(np.argmin(np.minimum(gap, 1.0 - gap)))
    assert nearest == label, (label, nearest)


def test_class_color_paints_the_actor_in_the_class_hue():
  cued = dataclasses.replace(TINY, class_color=1.0)
  hues = _chroma(S._hues(TINY.num_classes))
  for label in range(TINY.num_classes):
    actor = S._make_group(cued, "train", _group_of(TINY, label), label).actor
    for color in (actor.color_a, actor.color_b):
      np.testing.assert_allclose(_chroma(color)[0], hues[label], atol=1e-5)
  # Hues are evenly spread: red first, and every pair of classes differs.
  np.testing.assert_allclose(S._hues(4)[0], [220.0, 33.0, 33.0], atol=0.5)
  assert len({tuple(np.round(h)) for h in S._hues(8)}) == 8
