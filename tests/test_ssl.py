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
