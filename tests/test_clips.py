"""Clip sampler: centring, shapes, determinism, augmentation consistency and no label leakage."""

import dataclasses

import numpy as np
import pytest

from claus_jax import configlib, losses
from claus_jax.data import clips
from claus_jax.data import pseudo_labels as pl
from claus_jax.data.record import VideoRecord


def _record(vid, t, size=16, label=0, annotation="mask", seed=0):
  rng = np.random.default_rng(seed)
  frames = rng.integers(0, 256, (t, size, size, 3), dtype=np.uint8)
  boxes = np.full((1, t, 4), np.nan, np.float32)
  for f in range(2, t - 1):  # Actor absent in the first two and the last frame.
    x = 1 + (f % 7)
    boxes[0, f] = [x, 3, x + 5, 9]
  masks = pl.fill_boxes(boxes, size, size).astype(np.uint8)
  has_gt = masks.reshape(t, -1).any(1)
  return VideoRecord(video_id=vid, group_id="g", label=label, frames=frames, masks=masks,
                     boxes=boxes, has_gt=has_gt, span=(2, t - 1), annotation=annotation).validate()


def _config(**train):
  c = configlib.base_config()
  c.train.batch_size = 3
  c.train.data_workers = 2
  c.train.prefetch = 3
  for k, v in train.items():
    setattr(c.train, k, v)
  return c


def _params(**train) -> clips.ClipParams:
  return clips.ClipParams.from_config(_config(**train))


def _source(annotation="mask"):
  return [_record("a", 20, label=1, annotation=annotation, seed=1),
          _record("b", 9, label=2, annotation=annotation, seed=2),
          _record("c", 30, label=3, annotation=annotation, seed=3)]


ITEMS = [(0, np.array([3, 10, 17])), (1, np.array([0, 8])), (2, np.array([15]))]


def test_clip_frames_rule():
  np.testing.assert_array_equal(clips.clip_frames(10, 30), [2, 4, 6, 8, 10, 12, 14, 16])
  # Too close to the start for skip 2 -> skip 1, then clamped.
  np.testing.assert_array_equal(clips.clip_frames(3, 30), [0, 0, 1, 2, 3, 4, 5, 6])
  np.testing.assert_array_equal(clips.clip_frames(28, 30), [24, 25, 26, 27, 28, 29, 29, 29])
  np.testing.assert_array_equal(clips.clip_frames(8, 30), [0, 2, 4, 6, 8, 10, 12, 14])
  np.testing.assert_array_equal(clips.clip_frames(2, 3), [0, 0, 0, 1, 2, 2, 2, 2])


def test_batch_shapes_centring_and_contents():
  params = _params(crop_scale=1.0, flip=False)
  src = _source()
  sampler = clips.ClipSampler(src, ITEMS, params, seed=0, round_index=0)
  assert sampler.num_clips == 6
  batch = sampler.batch_at(0)
  assert batch["video"].shape == (3, 8, 16, 16, 3) and batch["video"].dtype == np.uint8
  assert batch["pseudo_mask"].shape == (3, 8, 16, 16) and batch["pseudo_mask"].dtype == np.float32
  assert batch["weight"].shape == (3, 8, 16, 16) and batch["weight"].dtype == np.float32
  assert batch["labelled"].shape == (3, 8) and batch["labelled"].dtype == bool
  assert batch["label"].dtype == np.int32 and batch["video_index"].dtype == np.int32
  # Without augmentation the clip is the record's frames at the clip indices, and the centre
  # (position 4) is a labelled frame.
  for b in range(3):
    vi = int(batch["video_index"][b])
    rec = src[vi]
    assert batch["label"][b] == rec.label
    assert batch["labelled"][b, 4]
    labelled = dict(ITEMS)[vi]
    matches = [c for c in labelled
               if np.array_equal(rec.frames[clips.clip_frames(c, rec.num_frames)], batch["video"][b])]
    assert matches
    frames = clips.clip_frames(matches[0], rec.num_frames)
    np.testing.assert_array_equal(batch["labelled"][b], np.isin(frames, labelled))


def test_one_epoch_covers_every_labelled_frame_once():
  params = _params(crop_scale=1.0, flip=False, batch_size=2)
  sampler = clips.ClipSampler(_source(), ITEMS, params, seed=5, round_index=1)
  seen = []
  for step in range(3):  # 6 clips / batch 2
    for j in range(2):
      p = step * 2 + j
      seen.append(tuple(sampler._clips[sampler._permutation(p // 6)[p % 6]]))
  assert sorted(seen) == sorted((pos, int(c)) for pos, (_, fr) in enumerate(ITEMS) for c in fr)
  assert sampler.epoch_at(3) == 1.0


def test_deterministic_from_seed_round_step():
  params = _params()
  a = clips.ClipSampler(_source(), ITEMS, params, seed=0, round_index=2)
  b = clips.ClipSampler(_source(), ITEMS, params, seed=0, round_index=2)
  for step in (0, 7, 3):
    x, y = a.batch_at(step), b.batch_at(step)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  other = clips.ClipSampler(_source(), ITEMS, params, seed=0, round_index=3).batch_at(0)
  assert not np.array_equal(other["video"], a.batch_at(0)["video"])
  # The prefetching iterator yields exactly batch_at(start), batch_at(start + 1), ...
  got = list(a.iterate(start_step=4, num_steps=5))
  assert len(got) == 5
  for i, batch in enumerate(got):
    ref = b.batch_at(4 + i)
    for k in ref:
      np.testing.assert_array_equal(batch[k], ref[k])
  sync = _params(data_workers=0)
  c = clips.ClipSampler(_source(), ITEMS, sync, seed=0, round_index=2)
  np.testing.assert_array_equal(next(c.iterate(4))["weight"], got[0]["weight"])


@pytest.mark.parametrize("annotation", ["mask", "box"])
@pytest.mark.parametrize("form,variant", [("paper", "stew"), ("implementation", "stew"),
                                          ("paper", "frame"), ("paper", "interpolation")])
def test_clip_targets_equal_dense_slice(annotation, form, variant):
  config = _config()
  config.loss.stew_form = form
  config.loss.variant = variant
  kw = losses.LossParams.from_section(config.loss).stew_kwargs()
  for rec, (_, labelled) in zip(_source(annotation), ITEMS):
    keys = pl.KeyframeLabels(rec, labelled, "sdf")
    pseudo, flags = pl.pseudo_labels(rec, labelled, "sdf")
    dense = losses.stew_weights(pseudo, flags, variant=variant, window=2, xp=np, **kw)
    distance = losses.distance_to_labelled(flags, np)
    for c in range(rec.num_frames):
      frames = clips.clip_frames(c, rec.num_frames)
      p, w, l = clips.clip_targets(keys, frames, variant, 2, **kw)
      np.testing.assert_array_equal(p, pseudo[frames])
      if form == "implementation":  # The spatial mean runs over the clip's own frames.
        want = losses.combine_stew(losses.clip_mean(pseudo[frames], np), distance[frames],
                                   flags[frames], xp=np, **kw)
      else:
        want = dense[frames]
      np.testing.assert_allclose(w, want, rtol=1e-6, atol=1e-7)
      np.testing.assert_array_equal(l, flags[frames])


@pytest.mark.parametrize("annotation", ["mask", "box"])
def test_no_ground_truth_leakage(annotation):
  params = _params()
  clean = _source(annotation)
  rng = np.random.default_rng(9)
  noisy = []
  for rec, (_, labelled) in zip(clean, ITEMS):
    unl = np.setdiff1d(np.arange(rec.num_frames), labelled)
    masks, boxes, has_gt = rec.masks.copy(), rec.boxes.copy(), rec.has_gt.copy()
    masks[unl] = rng.integers(0, 2, masks[unl].shape)
    boxes[:, unl] = rng.uniform(0, 15, boxes[:, unl].shape)
    has_gt[unl] = ~has_gt[unl]
    noisy.append(dataclasses.replace(rec, masks=masks, boxes=boxes, has_gt=has_gt, span=(0, 1)))
  a = clips.ClipSampler(clean, ITEMS, params, seed=1, round_index=0)
  b = clips.ClipSampler(noisy, ITEMS, params, seed=1, round_index=0)
  for step in range(4):
    x, y = a.batch_at(step), b.batch_at(step)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_augmentation_identical_on_video_mask_weight():
  rng = np.random.default_rng(0)
  mask = (rng.random((8, 12, 16)) < 0.3).astype(np.float32)
  video = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=-1)
  weight = mask.copy()
  for seed in range(6):
    crop = clips.draw_augmentation(np.random.default_rng(seed), 12, 16, 0.75, True)
    v, p, w = clips.augment(video, mask, weight, crop)
    assert v.shape == video.shape and p.shape == mask.shape
    np.testing.assert_allclose(v[..., 0] / 255.0, p, atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(p, w)
  # Flip only (no crop): exact mirror of all three.
  v, p, w = clips.augment(video, mask, weight, (0, 0, 12, 16, True))
  np.testing.assert_array_equal(v, video[:, :, ::-1])
  np.testing.assert_array_equal(p, mask[:, :, ::-1])
  # Crop then resize matches a NumPy reference bilinear resize of the crop.
  y0, x0, ch, cw = 2, 3, 9, 12
  _, p, _ = clips.augment(video, mask, weight, (y0, x0, ch, cw, False))
  ref = _bilinear(mask[:, y0:y0 + ch, x0:x0 + cw], 12, 16)
  np.testing.assert_allclose(p, ref, atol=1e-5)


def _bilinear(x, out_h, out_w):
  """Independent per-pixel bilinear resize (half-pixel centres, edge clamp) of (F, h, w)."""
  f, h, w = x.shape
  out = np.zeros((f, out_h, out_w))
  for i in range(out_h):
    sy = min(max((i + 0.5) * h / out_h - 0.5, 0), h - 1)
    y0 = int(np.floor(sy)); y1 = min(y0 + 1, h - 1); fy = sy - y0
    for j in range(out_w):
      sx = min(max((j + 0.5) * w / out_w - 0.5, 0), w - 1)
      x0 = int(np.floor(sx)); x1 = min(x0 + 1, w - 1); fx = sx - x0
      out[:, i, j] = ((1 - fy) * ((1 - fx) * x[:, y0, x0] + fx * x[:, y0, x1])
                      + fy * ((1 - fx) * x[:, y1, x0] + fx * x[:, y1, x1]))
  return out


def test_sampler_skips_items_without_frames_and_measures():
  params = _params()
  sampler = clips.ClipSampler(_source(), ITEMS + [(1, np.array([], np.int64))], params, 0, 0)
  assert sampler.num_clips == 6
  stats = clips.measure_throughput(sampler, num_batches=3)
  assert stats["batches"] == 3 and stats["clips_per_s"] > 0
  with pytest.raises(ValueError, match="no labelled frame"):
    clips.ClipSampler(_source(), [(0, np.array([], np.int64))], params, 0, 0)


def test_video_sampling_draws_clips_per_video_from_its_labelled_frames():
  """train.sampling='video' (item 12): as the authors' loader, every labelled video gives
  clips_per_video clips per epoch, each centred on one of its labelled frames at random."""
  params = _params(crop_scale=1.0, flip=False, sampling="video", clips_per_video=2, batch_size=2)
  sampler = clips.ClipSampler(_source(), ITEMS, params, seed=0, round_index=0)
  assert sampler.num_clips == 2 * len(ITEMS)  # Not the 6 labelled frames.
  seen = []
  for step in range(3):  # One epoch: 6 clips.
    for j in range(2):
      p = step * 2 + j
      pos, _ = sampler._clips[sampler._permutation(p // 6)[p % 6]]
      seen.append(int(pos))
    batch = sampler.batch_at(step)
    for j in range(2):
      # The centre (slot L // 2) is one of the video's labelled frames.
      assert batch["labelled"][j][4]
  assert sorted(seen) == [0, 0, 1, 1, 2, 2]
  again = clips.ClipSampler(_source(), ITEMS, params, seed=0, round_index=0)
  for step in range(3):
    np.testing.assert_array_equal(again.batch_at(step)["video"], sampler.batch_at(step)["video"])


def test_unlabelled_clips_centre_only_on_unlabelled_frames_and_are_pure_in_step():
  # Frames that carry their own index: a clip shows which frames it took.
  source = []
  for vid, t in (("a", 20), ("b", 12), ("c", 30)):
    r = _record(vid, t)
    frames = np.broadcast_to(np.arange(t, dtype=np.uint8)[:, None, None, None], r.frames.shape)
    source.append(dataclasses.replace(r, frames=np.ascontiguousarray(frames)))
  # Video a: labelled at 3, 10, 17, so 17 frames remain; b: wholly labelled, so it gives none;
  # c: unlabelled, every frame.
  allowed = {0: np.setdiff1d(np.arange(20), [3, 10, 17]), 1: np.array([], np.int64),
             2: np.arange(30)}
  params = _params(crop_scale=1.0, flip=False)
  sampler = clips.ClipSampler(source, ITEMS, params, seed=0, round_index=1,
                              unlabelled=list(allowed.items()), unlabelled_batch_size=5)
  assert [i for i, _ in sampler.unlabelled] == [0, 2]
  seen = set()
  for step in range(40):
    batch = sampler.batch_at(step)
    assert batch["unlabelled_video"].shape == (5, 8, 16, 16, 3)
    assert batch["unlabelled_video"].dtype == np.uint8
    for clip in batch["unlabelled_video"]:
      frames = clip[:, 0, 0, 0].astype(np.int64)
      centre = int(frames[4])  # Position L // 2 holds the centre.
      # Some video whose clip rule gives these frames around that centre may centre there.
      assert any(np.array_equal(frames, clips.clip_frames(centre, length)) and centre in allowed[i]
                 for i, length in ((0, 20), (2, 30))), frames
      seen.add(centre)
  assert len(seen) > 15  # Centres spread over the allowed frames.
  again = clips.ClipSampler(source, ITEMS, params, seed=0, round_index=1,
                            unlabelled=list(allowed.items()), unlabelled_batch_size=5)
  np.testing.assert_array_equal(again.batch_at(7)["unlabelled_video"],
                                sampler.batch_at(7)["unlabelled_video"])
  # The labelled part is the supervised sampler's, untouched by the unlabelled draws.
  plain = clips.ClipSampler(source, ITEMS, params, seed=0, round_index=1)
  for key, value in plain.batch_at(7).items():
    np.testing.assert_array_equal(value, sampler.batch_at(7)[key])
  with pytest.raises(ValueError, match="every frame of the train split is labelled"):
    clips.ClipSampler(source, ITEMS, params, seed=0, round_index=1,
                      unlabelled=[(1, np.array([], np.int64))], unlabelled_batch_size=2)
