"""Mean-teacher pieces against hand values and NumPy transcriptions of the SSAL code's formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from claus_jax import ssl


def test_ema_decay_and_update_by_hand():
  # alpha = min(1 - 1/(step + 1), 0.99): 0.5 at the first update, 0.75 at the third, then capped.
  np.testing.assert_allclose([float(ssl.ema_decay(s)) for s in (1, 3, 99, 1000)],
                             [0.5, 0.75, 0.99, 0.99], rtol=1e-6)
  teacher = {"w": jnp.ones((2,)), "b": {"c": jnp.zeros(())}}
  student = {"w": jnp.full((2,), 3.0), "b": {"c": jnp.full((), 4.0)}}
  out = ssl.ema_update(teacher, student, 1)
  np.testing.assert_allclose(out["w"], [2.0, 2.0])
  np.testing.assert_allclose(out["b"]["c"], 2.0)
  out = ssl.ema_update(teacher, student, 3)
  np.testing.assert_allclose(out["w"], [1.5, 1.5])  # 0.75 * 1 + 0.25 * 3
  out = ssl.ema_update(teacher, student, 10 ** 6, ema_max=0.9)
  np.testing.assert_allclose(out["w"], [1.2, 1.2], rtol=1e-6)


def ssal_sigmoid_rampup(epoch, length):
  """Transcription of ramp_ups.sigmoid_rampup (AKASH2907/semi_sup_active_learning)."""
  if epoch < length:
    epoch = np.clip(epoch, 0.0, length)
    phase = 1.0 - epoch / length
    return float(np.exp(-5.0 * phase * phase))
  return 1.0


def test_sigmoid_rampup():
  assert float(ssl.sigmoid_rampup(0, 50)) == pytest.approx(np.exp(-5.0), rel=1e-6)
  assert float(ssl.sigmoid_rampup(25, 50)) == pytest.approx(np.exp(-1.25), rel=1e-6)
  for e in (0, 1, 7.5, 25, 49, 50, 51, 80):
    assert float(ssl.sigmoid_rampup(e, 50)) == pytest.approx(ssal_sigmoid_rampup(e, 50), rel=1e-6)


def _opencv_blurred_disk(height, width, radius):
  """The SSAL code's mask built another way: a filled disk of 255 subtracted from 255, then
  OpenCV's 19-tap Gaussian (getGaussianKernel at sigma 3.2) applied separably with
  BORDER_REFLECT_101 (NumPy's 'reflect' padding)."""
  cy, cx = height // 2, width // 2
  mask = np.full((height, width), 255.0)
  for y in range(height):
    for x in range(width):
      if (y - cy) ** 2 + (x - cx) ** 2 <= radius ** 2:
        mask[y, x] = 0.0
  sigma = 0.3 * ((19 - 1) * 0.5 - 1) + 0.8
  taps = np.exp(-((np.arange(19) - 9) ** 2) / (2 * sigma ** 2))
  taps /= taps.sum()
  padded = np.pad(mask, 9, mode="reflect")
  rows = np.array([[np.dot(taps, padded[y + 9, x:x + 19]) for x in range(width)]
                   for y in range(-9, height + 9)])
  return np.array([[np.dot(taps, rows[y:y + 19, x]) for x in range(width)] for y in range(height)])


def test_high_pass_mask_is_the_blurred_complement_of_a_disk():
  mask = ssl.high_pass_mask(24, 20, radius=4)
  np.testing.assert_allclose(mask, _opencv_blurred_disk(24, 20, 4), rtol=1e-5, atol=1e-3)
  assert mask.shape == (24, 20) and mask.min() >= 0 and mask.max() <= 255
  assert mask[12, 10] < 130 and mask[0, 0] > 250  # Low frequencies damped, high ones kept.


def ssal_high_pass(maps, mask):
  """Transcription of dft_HighPass's per-frame loop: fft2, fftshift, x mask, ifftshift, ifft2,
  abs, clip to [0, 1]."""
  out = np.zeros_like(maps, dtype=np.float64)
  for idx in np.ndindex(maps.shape[:-2]):
    dft_shift = np.fft.fftshift(np.fft.fft2(maps[idx], axes=(0, 1)))
    back = np.fft.ifft2(np.fft.ifftshift(dft_shift * mask), axes=(0, 1))
    out[idx] = np.abs(back).clip(0, 1)
  return out


def test_high_pass_weight_by_hand_and_against_the_transcription():
  mask = ssl.high_pass_mask(16, 16)
  # A constant map is all DC: W = c x mask at the spectrum's centre, everywhere (then clipped).
  w = np.asarray(ssl.high_pass_weight(jnp.full((2, 16, 16), 0.001), mask))
  np.testing.assert_allclose(w, 0.001 * mask[8, 8], rtol=1e-4)
  assert 0 < w.max() < 1
  np.testing.assert_allclose(ssl.high_pass_weight(jnp.zeros((16, 16)), mask), 0.0, atol=1e-6)
  np.testing.assert_allclose(ssl.high_pass_weight(jnp.full((16, 16), 0.5), mask), 1.0)
  # A small square of actor on background: the transcription frame by frame.
  rng = np.random.default_rng(0)
  maps = rng.random((2, 3, 16, 16)) * 0.01
  maps[:, :, 5:9, 6:10] = 0.9
  got = np.asarray(ssl.high_pass_weight(jnp.asarray(maps, jnp.float32), mask))
  np.testing.assert_allclose(got, ssal_high_pass(maps, mask), atol=2e-5)
  assert 0.05 < got.mean() < 0.95  # Neither saturated nor empty.


def torch_avg_pool3d(x):
  """avg_pool3d(kernel 3, stride 1, padding 1), count_include_pad: the sum of the 27 neighbours
  (zeros outside) over 27, written as loops."""
  b, t, h, w = x.shape
  padded = np.zeros((b, t + 2, h + 2, w + 2))
  padded[:, 1:-1, 1:-1, 1:-1] = x
  out = np.zeros_like(x, dtype=np.float64)
  for i in range(t):
    for j in range(h):
      for k in range(w):
        out[:, i, j, k] = padded[:, i:i + 3, j:j + 3, k:k + 3].sum(axis=(1, 2, 3)) / 27.0
  return out


def ssal_consistency(student, teacher, ramp, mask):
  """train_model_interface's consistency on logits (B, T, H, W): MSE of the logits, high-pass
  weights of both sigmoid maps, then the weighted MSEs of the 3x3x3-pooled logits."""
  sig = lambda z: 1 / (1 + np.exp(-z))
  mse = np.mean((student - teacher) ** 2)
  w_t, w_s = ssal_high_pass(sig(teacher), mask), ssal_high_pass(sig(student), mask)
  ps, pt = torch_avg_pool3d(student), torch_avg_pool3d(teacher)
  l_t, l_s = np.mean(w_t * (ps - pt) ** 2), np.mean(w_s * (ps - pt) ** 2)
  return ramp * (l_t + l_s) + (1 - ramp) * mse, mse, l_t, l_s


def test_consistency_loss_against_the_transcription_and_only_the_student_learns():
  rng = np.random.default_rng(1)
  mask = ssl.high_pass_mask(12, 12)
  teacher = rng.normal(-2.0, 1.5, (2, 4, 12, 12))
  teacher[:, :, 3:8, 4:9] += 5.0
  student = teacher + rng.normal(0, 0.7, teacher.shape)
  for ramp in (0.0, 0.3, 1.0):
    got = ssl.consistency_loss(jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32),
                               ramp, mask)
    total, mse, l_t, l_s = ssal_consistency(student, teacher, ramp, mask)
    np.testing.assert_allclose(float(got["total"]), total, rtol=1e-4)
    np.testing.assert_allclose([float(got["mse"]), float(got["weighted_teacher"]),
                                float(got["weighted_student"])], [mse, l_t, l_s], rtol=1e-4)
  np.testing.assert_allclose(torch_avg_pool3d(student),
                             ssl.avg_pool_3x3x3(jnp.asarray(student, jnp.float32)), rtol=1e-5,
                             atol=1e-5)
  grads = jax.grad(lambda s, t: ssl.consistency_loss(s, t, 0.5, mask)["total"], argnums=(0, 1))(
      jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32))
  assert float(jnp.abs(grads[0]).max()) > 0 and float(jnp.abs(grads[1]).max()) == 0.0


def _ssl_params(**fields):
  return ssl.SSLParams(enabled=True, **fields)


def test_strong_view_off_is_identity_and_each_part_by_hand():
  rng = np.random.default_rng(0)
  video = jnp.asarray(rng.uniform(0.0, 1.0, (3, 2, 6, 7, 3)), jnp.float32)
  key = jax.random.PRNGKey(4)
  off = _ssl_params(jitter=0.0, grayscale_prob=0.0, blur_prob=0.0)
  np.testing.assert_array_equal(ssl.strong_view(video, key, off), video)
  # Grey always: every pixel becomes its ITU-R 601 luma in all three channels.
  grey = ssl.strong_view(video, key, _ssl_params(jitter=0.0, grayscale_prob=1.0, blur_prob=0.0))
  luma = np.asarray(video) @ np.array([0.299, 0.587, 0.114])
  np.testing.assert_allclose(grey, np.repeat(luma[..., None], 3, -1), rtol=1e-6, atol=1e-6)
  # Blur always: a single bright pixel inside the frame spreads as the outer product of the 5 taps
  # exp(-d^2 / 2) / sum, the same in every frame and channel; a constant clip stays constant.
  delta = np.zeros((1, 2, 9, 9, 3), np.float32)
  delta[:, :, 4, 4] = 1.0
  blur = _ssl_params(jitter=0.0, grayscale_prob=0.0, blur_prob=1.0)
  taps = np.exp(-0.5 * np.arange(-2, 3) ** 2)
  taps /= taps.sum()
  expected = np.zeros((9, 9))
  expected[2:7, 2:7] = np.outer(taps, taps)
  out = np.asarray(ssl.strong_view(jnp.asarray(delta), key, blur))
  for t in range(2):
    for ch in range(3):
      np.testing.assert_allclose(out[0, t, :, :, ch], expected, atol=1e-7)
  flat = jnp.full((1, 2, 5, 5, 3), 0.3, jnp.float32)
  np.testing.assert_allclose(ssl.strong_view(flat, key, blur), flat, rtol=1e-6)


def test_strong_view_jitter_is_one_draw_per_clip_keyed_and_in_range():
  rng = np.random.default_rng(1)
  video = jnp.asarray(rng.uniform(0.2, 0.8, (4, 3, 5, 5, 3)), jnp.float32)
  params = _ssl_params(jitter=0.4, grayscale_prob=0.0, blur_prob=0.0)
  a = ssl.strong_view(video, jax.random.PRNGKey(0), params)
  np.testing.assert_array_equal(a, ssl.strong_view(video, jax.random.PRNGKey(0), params))
  assert not np.allclose(a, ssl.strong_view(video, jax.random.PRNGKey(1), params))
  assert float(jnp.min(a)) >= 0.0 and float(jnp.max(a)) <= 1.0
  # One draw per clip: the same clip in four rows comes out four ways, and the frames of a clip of
  # identical frames stay identical.
  same = jnp.broadcast_to(video[:1, :1], (4, 3, 5, 5, 3))
  out = np.asarray(ssl.strong_view(same, jax.random.PRNGKey(2), params))
  np.testing.assert_allclose(out[:, 0], out[:, 1], atol=1e-7)
  np.testing.assert_allclose(out[:, 0], out[:, 2], atol=1e-7)
  assert len({round(float(out[b].mean()), 5) for b in range(4)}) == 4


def test_temporal_difference_loss_and_the_weighted_sum_by_hand():
  s = jnp.zeros((1, 3, 1, 1))  # sigmoid 0.5 in every frame: no change along time.
  t = jnp.asarray([0.0, np.log(3.0), 0.0]).reshape(1, 3, 1, 1)  # sigmoid 0.5, 0.75, 0.5.
  # Teacher differences (0.25, -0.25), the student's (0, 0): mean of squares 0.0625.
  assert float(ssl.temporal_difference_loss(s, t)) == pytest.approx(0.0625, rel=1e-6)
  rng = np.random.default_rng(2)
  student = jnp.asarray(rng.normal(size=(2, 4, 8, 8)), jnp.float32)
  teacher = jnp.asarray(rng.normal(size=(2, 4, 8, 8)), jnp.float32)
  mask = ssl.high_pass_mask(8, 8)
  params = _ssl_params(mse_weight=0.3, high_pass_weight=0.2, temporal_weight=2.0)
  out = ssl.ssl_loss(student, teacher, 0.25, params, mask)
  parts = ssl.consistency_loss(student, teacher, 0.25, mask)
  high_pass = float(parts["weighted_teacher"] + parts["weighted_student"])
  expected = (0.3 * 0.75 * float(parts["mse"]) + 0.2 * 0.25 * high_pass
              + 2.0 * float(ssl.temporal_difference_loss(student, teacher)))
  assert float(out["ssl_total"]) == pytest.approx(expected, rel=1e-6)
  assert float(out["ssl_high_pass"]) == pytest.approx(high_pass, rel=1e-6)
  # SSAL's own total: weights 0.1, 0.1, 0 give 0.1 x consistency_loss's total.
  ssal = ssl.ssl_loss(student, teacher, 0.25, _ssl_params(), mask)
  assert float(ssal["ssl_total"]) == pytest.approx(0.1 * float(parts["total"]), rel=1e-6)


def test_ramp_spans_its_fraction_of_the_round():
  params = _ssl_params(ramp_fraction=0.5)
  assert float(params.ramp(0, 100)) == pytest.approx(np.exp(-5.0), rel=1e-6)
  assert float(params.ramp(25, 100)) == pytest.approx(np.exp(-1.25), rel=1e-6)
  assert float(params.ramp(50, 100)) == 1.0 and float(params.ramp(99, 100)) == 1.0
  assert float(_ssl_params(ramp_fraction=0.0).ramp(0, 100)) == 1.0
