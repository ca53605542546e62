"""Mean-teacher pieces of semi-supervised rounds (SSAL, Singh et al., AAAI 2024; issue 28).

What the SSAL code's training (``semi_loc_feat_const_pa_stn_aug.py`` and ``utils/``) computes, as
pure JAX functions with static shapes, so that they jit and shard like the rest of the step:

  * :func:`ema_decay` and :func:`ema_update`: the teacher follows the student's parameters with
    ``alpha = min(1 - 1 / (step + 1), ema_max)`` (``ema_max`` 0.99); the step counts from 1 at the
    first update, so the first alpha is 0.5. Only parameters move (the code's ``parameters()``; the
    batch statistics are not averaged).
  * :func:`sigmoid_rampup`: ``r(e) = exp(-5 (1 - e / L)^2)`` for ``e < L``, else 1 (L = the epochs).
  * :func:`high_pass_mask` and :func:`high_pass_weight`: ``W = clip(|ifft2(ifftshift(fftshift(
    fft2(p)) x M))|, 0, 1)`` per frame of a sigmoid map ``p``, where M is 255 outside a disk of
    ``radius`` (4) around the spectrum's centre and 0 inside, blurred by a 19 x 19 Gaussian (sigma
    3.2, OpenCV's for that size, borders mirrored without repeating the edge); M is not normalised,
    so W saturates at 1 wherever the map has edges or fine detail. No gradient flows through W.
  * :func:`consistency_loss`: ``r (L_Wt + L_Ws) + (1 - r) MSE(s, t)`` on the student's and the
    teacher's mask logits, where ``L_W = mean(W (pool(s) - pool(t))^2)`` with W from the teacher's
    (``L_Wt``) or the student's (``L_Ws``) sigmoid map and ``pool`` a 3x3x3 mean over (T, H, W) with
    zero padding counted (PyTorch's ``avg_pool3d`` default). The teacher gets no gradient.

The training loop that uses them (weak and strong views, unlabelled clips, ``loss.ssl``) is not
built yet.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

HIGH_PASS_RADIUS = 4  # The SSAL code's call: dft_HighPass(..., radius=4).
_BLUR_SIZE = 19  # cv2.GaussianBlur(mask, (19, 19), 0).
_BLUR_SIGMA = 0.3 * ((_BLUR_SIZE - 1) * 0.5 - 1) + 0.8  # OpenCV's sigma for sigma=0: 3.2.


def ema_decay(step: jax.Array | int, ema_max: float = 0.99) -> jax.Array:
  """``min(1 - 1 / (step + 1), ema_max)``: the teacher's share at update ``step`` (1, 2, ...)."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(1.0 - 1.0 / (step + 1.0), ema_max)


def ema_update(teacher, student, step: jax.Array | int, ema_max: float = 0.99):
  """``alpha teacher + (1 - alpha) student`` leaf by leaf, alpha = :func:`ema_decay`."""
  alpha = ema_decay(step, ema_max)
  return jax.tree.map(lambda t, s: (alpha * t + (1.0 - alpha) * s).astype(t.dtype), teacher,
                      jax.lax.stop_gradient(student))


def sigmoid_rampup(epoch: jax.Array | float, length: float) -> jax.Array:
  """``exp(-5 (1 - e / L)^2)`` for ``e < L``, 1 from ``L`` on (Laine & Aila's ramp, as SSAL)."""
  e = jnp.clip(jnp.asarray(epoch, jnp.float32), 0.0, float(length))
  phase = 1.0 - e / float(length)
  return jnp.where(e < length, jnp.exp(-5.0 * phase * phase), 1.0)


def high_pass_mask(height: int, width: int, radius: int = HIGH_PASS_RADIUS) -> np.ndarray:
  """``(H, W) float32`` spectrum mask: 0 inside the centred disk, 255 outside, Gaussian-blurred."""
  cy, cx = height // 2, width // 2
  y, x = np.ogrid[:height, :width]
  mask = np.where((y - cy) ** 2 + (x - cx) ** 2 <= radius * radius, 0.0, 255.0)
  truncate = (_BLUR_SIZE // 2) / _BLUR_SIGMA  # A 19-tap kernel, as OpenCV's.
  return ndimage.gaussian_filter(mask, _BLUR_SIGMA, mode="mirror",
                                 truncate=truncate).astype(np.float32)


def high_pass_weight(probs: jax.Array, mask: np.ndarray | jax.Array) -> jax.Array:
  """``(..., H, W)`` weights in [0, 1] of sigmoid maps ``probs`` (module docstring); no gradient."""
  probs = jax.lax.stop_gradient(probs.astype(jnp.float32))
  spectrum = jnp.fft.fftshift(jnp.fft.fft2(probs), axes=(-2, -1))
  back = jnp.fft.ifft2(jnp.fft.ifftshift(spectrum * mask, axes=(-2, -1)))
  return jnp.clip(jnp.abs(back), 0.0, 1.0)


def avg_pool_3x3x3(x: jax.Array) -> jax.Array:
  """``(B, T, H, W)`` mean over each 3x3x3 neighbourhood, zero padding counted in the 27."""
  summed = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 3), (1, 1, 1, 1),
                                 ((0, 0), (1, 1), (1, 1), (1, 1)))
  return summed / 27.0


def consistency_loss(student_logits: jax.Array, teacher_logits: jax.Array, ramp: jax.Array | float,
                     mask: np.ndarray | jax.Array) -> dict[str, jax.Array]:
  """SSAL's localisation consistency of ``(B, T, H, W)`` mask logits (module docstring).

  Returns:
    ``{'total', 'mse', 'weighted_teacher', 'weighted_student'}``, scalars; ``total`` =
    ``ramp (weighted_teacher + weighted_student) + (1 - ramp) mse``.
  """
  teacher_logits = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
  student_logits = student_logits.astype(jnp.float32)
  mse = jnp.mean(jnp.square(student_logits - teacher_logits))
  w_teacher = high_pass_weight(jax.nn.sigmoid(teacher_logits), mask)
  w_student = high_pass_weight(jax.nn.sigmoid(student_logits), mask)
  sq = jnp.square(avg_pool_3x3x3(student_logits) - avg_pool_3x3x3(teacher_logits))
  weighted_teacher = jnp.mean(w_teacher * sq)
  weighted_student = jnp.mean(w_student * sq)
  total = ramp * (weighted_teacher + weighted_student) + (1.0 - ramp) * mse
  return {"total": total, "mse": mse, "weighted_teacher": weighted_teacher,
          "weighted_student": weighted_student}
