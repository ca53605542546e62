"""STeW weights (both forms, hand-computed) and each loss against a NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from claus_jax import configlib, losses


def loss_params(config):
  """The settings a loss call reads, from a config."""
  return losses.LossParams.from_section(config.loss)


E = np.exp


def _video():
  """T=5 frames, 1x2 pixels, frame 0 labelled. Pixel A: 1,1,0,0,0; pixel B: always 0."""
  pseudo = np.zeros((5, 1, 2), np.float32)
  pseudo[:2, 0, 0] = 1
  labelled = np.array([1, 0, 0, 0, 0], bool)
  return pseudo, labelled


def test_window_mean_and_distance_by_hand():
  pseudo, labelled = _video()
  mean = losses.window_mean(pseudo, 1, np)
  # W=1, clamped: frames {0,1}, {0,1,2}, {1,2,3}, {2,3,4}, {3,4}.
  np.testing.assert_allclose(mean[:, 0, 0], [1, 2 / 3, 1 / 3, 0, 0], rtol=1e-6)
  np.testing.assert_allclose(mean[:, 0, 1], 0)
  dist = losses.distance_to_labelled(np.array([0, 1, 0, 0, 0, 1, 0], bool), np)
  np.testing.assert_allclose(dist, [1, 0, 1, 2, 1, 0, 1])


def test_stew_paper_form_by_hand():
  pseudo, labelled = _video()
  w = losses.stew_weights(pseudo, labelled, window=1, form="paper", sigma=1.0, p_low=0.1,
                          p_high=0.9, xp=np)
  # Eq. 4: Dist(d) on every pixel. Pixel A: labelled 1; Dist(1)*2/3; Dist(2)*1/3; mean 0
  # consistent -> Dist(3); Dist(4). Pixel B (always background): Dist(d).
  np.testing.assert_allclose(w[:, 0, 0], [1, E(-0.5) * 2 / 3, E(-2.0) / 3, E(-4.5), E(-8.0)],
                             rtol=1e-6)
  np.testing.assert_allclose(w[:, 0, 1], [1, E(-0.5), E(-2.0), E(-4.5), E(-8.0)], rtol=1e-6)


def test_stew_implementation_form_by_hand():
  pseudo, labelled = _video()
  w = losses.stew_weights(pseudo, labelled, window=1, form="implementation", sigma=1.0, radius=2,
                          xp=np)
  # temporal = [1, e^-.5, e^-2, 0 (d=3 > radius), 0]; spatial A = [., 2/3, 1/3, 1 (mean 0), 1].
  np.testing.assert_allclose(w[:, 0, 0], [1, E(-0.5) * 2 / 3, E(-2.0) / 3, 0, 0], rtol=1e-6)
  np.testing.assert_allclose(w[:, 0, 1], [1, E(-0.5), E(-2.0), 0, 0], rtol=1e-6)


def test_stew_consistent_foreground_and_labelled_override():
  pseudo = np.array([0.5, 1, 1, 1, 0.5], np.float32)[:, None, None]
  labelled = np.array([0, 0, 0, 0, 1], bool)
  w = losses.stew_weights(pseudo, labelled, window=1, form="paper", sigma=1.0, xp=np)
  # means: .75, 5/6, 1, 5/6, .75 ; distance 4,3,2,1,0; the consistent frame keeps its Dist(2).
  np.testing.assert_allclose(w[:, 0, 0], [E(-8.0) * 0.75, E(-4.5) * 5 / 6, E(-2.0),
                                          E(-0.5) * 5 / 6, 1], rtol=1e-5)


def test_variants_by_hand():
  pseudo, labelled = _video()
  np.testing.assert_array_equal(losses.stew_weights(pseudo, labelled, variant="interpolation", xp=np),
                                np.ones((5, 1, 2)))
  frame = losses.stew_weights(pseudo, labelled, variant="frame", xp=np)
  np.testing.assert_array_equal(frame[:, 0, 0], [1, 0, 0, 0, 0])
  np.testing.assert_array_equal(frame[:, 0, 1], [1, 0, 0, 0, 0])
  with pytest.raises(ValueError, match="variant"):
    losses.stew_weights(pseudo, labelled, variant="dense", xp=np)


@pytest.mark.parametrize("form", ["paper", "implementation"])
def test_jnp_matches_numpy_and_jits(form):
  rng = np.random.default_rng(0)
  pseudo = (rng.random((11, 3, 4)) < 0.5).astype(np.float32)
  labelled = np.zeros(11, bool)
  labelled[[2, 7]] = True
  ref = losses.stew_weights(pseudo, labelled, window=2, form=form, xp=np)
  fn = jax.jit(lambda p, l: losses.stew_weights(p, l, window=2, form=form))
  got = fn(jnp.asarray(pseudo), jnp.asarray(labelled))
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-6, atol=1e-7)
  assert np.all((ref >= 0) & (ref <= 1))


def _np_bce(logits, y):
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def test_weighted_bce_and_dice_against_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 3, 4, 5)).astype(np.float32) * 3
  y = (rng.random((2, 3, 4, 5)) < 0.4).astype(np.float32)
  w = rng.random((2, 3, 4, 5)).astype(np.float32)
  np.testing.assert_allclose(float(losses.weighted_bce(logits, y, w)), np.mean(w * _np_bce(logits, y)),
                             rtol=1e-5)
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  dice = []
  for b in range(2):
    inter = np.sum(w[b] * p[b] * y[b])
    den = np.sum(w[b] * p[b]) + np.sum(w[b] * y[b])
    dice.append(1 - (2 * inter + 1) / (den + 1))
  np.testing.assert_allclose(float(losses.weighted_dice(logits, y, w)), np.mean(dice), rtol=1e-5)
  # Extreme logits stay finite.
  big = np.full((1, 1, 2, 2), 80.0, np.float32)
  assert np.isfinite(float(losses.weighted_bce(big, np.zeros_like(big), np.ones_like(big))))


def test_spread_loss_and_margin_against_numpy():
  rng = np.random.default_rng(2)
  a = rng.random((4, 5)).astype(np.float32)
  labels = np.array([0, 3, 4, 1])
  m = 0.45
  ref = 0.0
  for b in range(4):
    for i in range(5):
      if i != labels[b]:
        ref += max(0.0, m - (a[b, labels[b]] - a[b, i])) ** 2
  np.testing.assert_allclose(float(losses.spread_loss(a, labels, m)), ref / 4, rtol=1e-5)
  np.testing.assert_allclose(float(losses.margin_at(0, 0.2, 0.7 / 40, 0.9)), 0.2, rtol=1e-6)
  np.testing.assert_allclose(float(losses.margin_at(10, 0.2, 0.7 / 40, 0.9)), 0.375, rtol=1e-6)
  np.testing.assert_allclose(float(losses.margin_at(100, 0.2, 0.7 / 40, 0.9)), 0.9, rtol=1e-6)


def test_cluster_loss_against_numpy():
  rng = np.random.default_rng(3)
  lat = rng.normal(size=(4, 6)).astype(np.float32)
  cen = rng.normal(size=(3, 6)).astype(np.float32)
  clusters = np.array([2, -1, 0, 2])
  valid = [0, 2, 3]
  # Eq. 3 and the authors' ClusterLoss: a sum over the batch.
  ref = np.sum([0.5 * 0.1 * np.sum((lat[i] - cen[clusters[i]]) ** 2) for i in valid])
  np.testing.assert_allclose(float(losses.cluster_loss(lat, cen, clusters, 0.1)), ref, rtol=1e-5)
  assert float(losses.cluster_loss(lat, cen, np.full(4, -1), 0.1)) == 0.0


def _outputs_batch(rng, b=2, f=8, h=4, w=4, c=3):
  outputs = {"seg_logits": jnp.asarray(rng.normal(size=(b, f, h, w)), jnp.float32),
             "class_probs": jnp.asarray(rng.random((b, c)), jnp.float32),
             "latent": jnp.asarray(rng.normal(size=(b, c * 17)), jnp.float32)}
  batch = {"pseudo_mask": (rng.random((b, f, h, w)) < 0.5).astype(np.float32),
           "weight": rng.random((b, f, h, w)).astype(np.float32),
           "label": np.array([0, 2], np.int32), "cluster": np.array([1, -1], np.int32),
           "video_index": np.array([3, 0], np.int32)}
  return outputs, batch


def test_loss_fn_total_is_eq6_and_jits():
  rng = np.random.default_rng(4)
  config = configlib.base_config()
  with config.unlocked():
    config.loss.bce_weight, config.loss.dice_weight, config.loss.cls_weight = 2.0, 0.5, 3.0
    config.loss.cluster_weight = 0.01
  outputs, batch = _outputs_batch(rng)
  centres = jnp.asarray(rng.normal(size=(2, 51)), jnp.float32)
  params = loss_params(config)
  total, parts = jax.jit(lambda o, b, c, e: losses.loss_fn(o, b, c, None, e, params))(
      outputs, batch, centres, 5.0)
  margin = 0.2 + 5 * 0.7 / 40
  bce = losses.weighted_bce(outputs["seg_logits"], batch["pseudo_mask"], batch["weight"])
  dice = losses.weighted_dice(outputs["seg_logits"], batch["pseudo_mask"], batch["weight"])
  cls = losses.spread_loss(outputs["class_probs"], batch["label"], margin)
  clus = 0.5 * 0.01 * np.sum((np.asarray(outputs["latent"][0]) - np.asarray(centres[1])) ** 2)
  np.testing.assert_allclose(float(parts["margin"]), margin, rtol=1e-6)
  np.testing.assert_allclose(float(parts["cluster"]), clus, rtol=1e-5)
  np.testing.assert_allclose(float(total), 2 * bce + 0.5 * dice + 3 * cls + clus, rtol=1e-5)
  # The assignments path: video 3 -> cluster 1, video 0 -> none, same result.
  assignments = jnp.array([-1, 0, 0, 1])
  total2, _ = losses.loss_fn(outputs, batch, centres, assignments, 5.0, loss_params(config))
  np.testing.assert_allclose(float(total2), float(total), rtol=1e-6)
  # No centres: no cluster term; gradients are finite.
  grad = jax.grad(
      lambda o: losses.loss_fn(o, batch, None, None, 0.0, loss_params(config))[0])(outputs)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(grad))


def test_full_size_shapes_by_eval_shape():
  config = configlib.base_config()
  outputs = {"seg_logits": jax.ShapeDtypeStruct((8, 8, 224, 224), jnp.float32),
             "class_probs": jax.ShapeDtypeStruct((8, 24), jnp.float32),
             "latent": jax.ShapeDtypeStruct((8, 408), jnp.float32)}
  batch = {"pseudo_mask": jax.ShapeDtypeStruct((8, 8, 224, 224), jnp.float32),
           "weight": jax.ShapeDtypeStruct((8, 8, 224, 224), jnp.float32),
           "label": jax.ShapeDtypeStruct((8,), jnp.int32),
           "cluster": jax.ShapeDtypeStruct((8,), jnp.int32)}
  centres = jax.ShapeDtypeStruct((5, 408), jnp.float32)
  params = loss_params(config)
  total, parts = jax.eval_shape(lambda o, b, c: losses.loss_fn(o, b, c, None, 1.0, params),
                                outputs, batch, centres)
  assert total.shape == () and set(parts) >= {"bce", "dice", "classification", "cluster", "total"}


def authors_clip_stew(label, span, annot_frames, vskip=2):
  """NumPy transcription of the authors' STeW mask for one clip (aayushjr/HybridCLAUS,
  ucf101_dataloader.py ``__getitem__``): a temporal Gaussian (sigma 4/3, +-4) over clip *slots*
  around each labelled slot (max), times a spatial weight (the label's mean over
  ``[min(j-2, 0):max(j+3, 8)]``, pure background -> 1; labelled slots: the temporal mask), clipped
  at 1. ``label (8, H, W)`` the clip's pseudo-labels, ``span (8,)`` its video frames."""
  from scipy.stats import norm
  depth = 8
  gaus_vals = norm.pdf(np.arange(-4, 5), 0, 4 / 3.)
  gaus_vals = gaus_vals / np.max(gaus_vals)
  gaus_mid = 5
  final = np.zeros(depth)

  def valid(j):
    if vskip == 2:
      return span[j] in annot_frames or span[j] + 1 in annot_frames
    return span[j] in annot_frames

  for j in range(depth):
    if valid(j):
      gaus_range = [max(0, gaus_mid - j - 1), min(9, gaus_mid + depth - j - 1)]
      frame_range = [max(0, j - 4), min(8, j + 4 + 1)]
      vals = gaus_vals[gaus_range[0]:gaus_range[1]]
      cur = final[frame_range[0]:frame_range[1]]
      cur[vals > cur] = vals[vals > cur]
      final[frame_range[0]:frame_range[1]] = cur
  mask = np.broadcast_to(final[:, None, None], label.shape).copy()
  mask[mask > 1] = 1
  spatial = label.astype(np.float64).copy()
  for j in range(depth):
    if valid(j):
      spatial[j] = mask[j]
    else:
      values = np.mean(label[min(j - 2, 0):max(j + 3, depth)], axis=0)
      values[values == 0] = 1.0
      spatial[j] = values
  out = mask * spatial
  out[out > 1] = 1
  return out


def test_implementation_stew_matches_the_authors_dataloader():
  """stew_form='implementation' with the preset's units (sigma 8/3, radius 8 video frames) and the
  clip-wide spatial mean is the authors' mask, on the slots their negative-index slice leaves alone
  (j >= 2); labelled frames on clip slots, none right after one, none just outside the clip."""
  from claus_jax.data import clips
  from claus_jax.data import pseudo_labels as pl
  from claus_jax.data.record import VideoRecord

  rng = np.random.default_rng(5)
  t, size = 40, 8
  boxes = np.full((1, t, 4), np.nan, np.float32)
  for f in range(t):
    x = rng.integers(0, 3)
    boxes[0, f] = [x, 1, x + 4, 6]
  masks = pl.fill_boxes(boxes, size, size).astype(np.uint8)
  record = VideoRecord(video_id="v", group_id="g", label=0,
                       frames=np.zeros((t, size, size, 3), np.uint8), masks=masks, boxes=boxes,
                       has_gt=masks.reshape(t, -1).any(1), span=(0, t), annotation="mask").validate()
  config = configlib.base_config()
  with config.unlocked():
    configlib.authors_preset(config)
  kw = loss_params(config).stew_kwargs()
  assert (kw["form"], kw["sigma"], kw["radius"]) == ("implementation", 8 / 3, 8)
  # Their clips are centred on a labelled frame and see only the labelled frames inside the clip.
  for labelled, centre in (([20], 20), ([14, 26], 20), ([16, 20, 34], 20), ([4, 22], 22)):
    keys = pl.KeyframeLabels(record, np.array(labelled), "nearest")
    frames = clips.clip_frames(centre, t)
    pseudo, weight, _ = clips.clip_targets(keys, frames, "stew", 2, **kw)
    want = authors_clip_stew(pseudo, frames, labelled)
    np.testing.assert_allclose(weight[2:], want[2:], rtol=1e-5, atol=1e-6)


def test_logit_weight_mode_matches_the_authors_loss():
  """loss.weight_mode='logit': output * mask_cls, then BCEWithLogits (mean) + their DiceLoss
  (whole batch flattened), transcribed from aayushjr/HybridCLAUS ucf101_cluster.py."""
  rng = np.random.default_rng(6)
  logits = rng.normal(size=(2, 3, 4, 5)).astype(np.float32) * 3
  y = (rng.random((2, 3, 4, 5)) < 0.4).astype(np.float32)
  w = rng.random((2, 3, 4, 5)).astype(np.float32)
  out = logits.astype(np.float64) * w
  p = 1 / (1 + np.exp(-out))
  want_bce = np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p)))
  inter = (p.reshape(-1) * y.reshape(-1)).sum()
  want_dice = 1 - (2.0 * inter + 1) / (p.sum() + y.sum() + 1)
  bce, dice = losses.logit_weighted_losses(jnp.asarray(logits), jnp.asarray(y), jnp.asarray(w))
  np.testing.assert_allclose(float(bce), want_bce, rtol=1e-5)
  np.testing.assert_allclose(float(dice), want_dice, rtol=1e-5)
  config = configlib.base_config()
  config.loss.weight_mode = "logit"
  outputs, batch = _outputs_batch(rng)
  total, parts = losses.loss_fn(outputs, batch, None, None, 0.0, loss_params(config))
  b2, d2 = losses.logit_weighted_losses(outputs["seg_logits"], batch["pseudo_mask"], batch["weight"])
  np.testing.assert_allclose([float(parts["bce"]), float(parts["dice"])], [float(b2), float(d2)],
                             rtol=1e-6)
