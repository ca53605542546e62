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

Around them, what a mean-teacher round adds to the supervised step (``loss.ssl``, read once into
:class:`SSLParams`; :func:`claus_jax.train.train_step` applies them):

  * :func:`strong_view`: the student's view of an unlabelled clip, the SSAL loader's "temporally
    consistent strong spatial augmentations" (colour jitter of brightness, contrast and saturation,
    grayscale, Gaussian blur), one draw per clip applied to all its frames, computed on the device
    from a PRNG key. It moves no pixel, so the student's and the teacher's maps stay aligned.
  * :func:`temporal_difference_loss`: the Stable Mean Teacher's "DoP" term, the MSE between the
    student's and the teacher's frame-to-frame differences of the sigmoid maps.
  * :func:`ssl_loss`: ``mse_weight (1 - r) MSE + high_pass_weight r (L_Wt + L_Ws) +
    temporal_weight DoP``; SSAL's ``0.1 [r (L_Wt + L_Ws) + (1 - r) MSE]`` is weights 0.1, 0.1, 0.
"""

from __future__ import annotations

import dataclasses

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


def temporal_difference_loss(student_logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
  """``mean((diff_t sigmoid(s) - diff_t sigmoid(t))^2)`` of ``(B, T, H, W)`` logits; the teacher
  gets no gradient (the Stable Mean Teacher's difference-of-pixels term)."""
  s = jnp.diff(jax.nn.sigmoid(student_logits.astype(jnp.float32)), axis=1)
  t = jnp.diff(jax.nn.sigmoid(jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))), axis=1)
  return jnp.mean(jnp.square(s - t))


@dataclasses.dataclass(frozen=True)
class SSLParams:
  """The mean-teacher settings (``config.loss.ssl``), read once; hashable for a jitted step.

  ``enabled`` off, a round is the supervised one, and nothing below is read.
  """

  enabled: bool = False
  unlabelled_batch_size: int = 4
  ema_max: float = 0.99
  mse_weight: float = 0.1
  high_pass_weight: float = 0.1
  temporal_weight: float = 0.0
  ramp_fraction: float = 0.5
  jitter: float = 0.4
  grayscale_prob: float = 0.2
  blur_prob: float = 0.5

  @classmethod
  def from_section(cls, section) -> SSLParams:
    """The settings of ``section`` (``config.loss.ssl``)."""
    return cls(enabled=bool(section.enabled),
               unlabelled_batch_size=int(section.unlabelled_batch_size),
               ema_max=float(section.ema_max), mse_weight=float(section.mse_weight),
               high_pass_weight=float(section.high_pass_weight),
               temporal_weight=float(section.temporal_weight),
               ramp_fraction=float(section.ramp_fraction), jitter=float(section.jitter),
               grayscale_prob=float(section.grayscale_prob), blur_prob=float(section.blur_prob))

  def ramp(self, step: jax.Array | int, total_steps: int) -> jax.Array:
    """r at ``step`` of a round of ``total_steps``: :func:`sigmoid_rampup` over the first
    ``ramp_fraction`` of the round (1 throughout with a fraction of 0)."""
    length = self.ramp_fraction * total_steps
    if length <= 0:
      return jnp.asarray(1.0, jnp.float32)
    return sigmoid_rampup(step, length)


_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 grey, as torchvision's rgb_to_grayscale.


def _blur_taps(sigma: float = 1.0, radius: int = 2) -> np.ndarray:
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  return (taps / taps.sum()).astype(np.float32)


def strong_view(video: jax.Array, key: jax.Array, params: SSLParams) -> jax.Array:
  """The strong view of ``(B, T, H, W, 3)`` clips in [0, 1]: per clip, brightness, contrast and
  saturation factors drawn from ``U(1 - jitter, 1 + jitter)`` in that order, grey with
  ``grayscale_prob``, a 5-tap Gaussian blur (sigma 1 px, edges repeated) with ``blur_prob``; the
  result is clipped to [0, 1]. Pure in ``key``; with ``jitter`` and both probabilities 0 the clips
  come back unchanged."""
  b = video.shape[0]
  k_bright, k_contrast, k_sat, k_grey, k_blur = jax.random.split(key, 5)
  shape = (b, 1, 1, 1, 1)
  factor = lambda k: jax.random.uniform(k, shape, jnp.float32, 1.0 - params.jitter,
                                        1.0 + params.jitter)
  luma = jnp.asarray(_LUMA, jnp.float32)
  grey = lambda x: jnp.sum(x * luma, axis=-1, keepdims=True)
  x = video.astype(jnp.float32)
  if params.jitter > 0:
    x = jnp.clip(x * factor(k_bright), 0.0, 1.0)
    mean = jnp.mean(grey(x), axis=(1, 2, 3, 4), keepdims=True)
    x = jnp.clip((x - mean) * factor(k_contrast) + mean, 0.0, 1.0)
    g = grey(x)
    x = jnp.clip((x - g) * factor(k_sat) + g, 0.0, 1.0)
  if params.grayscale_prob > 0:
    to_grey = jax.random.uniform(k_grey, shape) < params.grayscale_prob
    x = jnp.where(to_grey, jnp.broadcast_to(grey(x), x.shape), x)
  if params.blur_prob > 0:
    taps = _blur_taps()
    r = len(taps) // 2
    blurred = x
    for axis in (2, 3):  # Separable over H then W, the border pixel repeated.
      pad = [(0, 0)] * 5
      pad[axis] = (r, r)
      padded = jnp.pad(blurred, pad, mode="edge")
      n = blurred.shape[axis]
      blurred = sum(float(t) * jax.lax.slice_in_dim(padded, i, i + n, axis=axis)
                    for i, t in enumerate(taps))
    do_blur = jax.random.uniform(k_blur, shape) < params.blur_prob
    x = jnp.where(do_blur, blurred, x)
  return jnp.clip(x, 0.0, 1.0).astype(video.dtype)


def ssl_loss(student_logits: jax.Array, teacher_logits: jax.Array, ramp: jax.Array | float,
             params: SSLParams, mask: np.ndarray | jax.Array) -> dict[str, jax.Array]:
  """The consistency loss of ``(B, T, H, W)`` mask logits with ``params``' weights (module
  docstring); the terms are those of :func:`consistency_loss` and :func:`temporal_difference_loss`.

  Returns:
    ``{'ssl_total', 'ssl_mse', 'ssl_high_pass', 'ssl_temporal', 'ssl_ramp'}``, scalars;
    ``ssl_high_pass`` is ``L_Wt + L_Ws``.
  """
  parts = consistency_loss(student_logits, teacher_logits, ramp, mask)
  high_pass = parts["weighted_teacher"] + parts["weighted_student"]
  temporal = temporal_difference_loss(student_logits, teacher_logits)
  ramp = jnp.asarray(ramp, jnp.float32)
  total = (params.mse_weight * (1.0 - ramp) * parts["mse"]
           + params.high_pass_weight * ramp * high_pass + params.temporal_weight * temporal)
  return {"ssl_total": total, "ssl_mse": parts["mse"], "ssl_high_pass": high_pass,
          "ssl_temporal": temporal, "ssl_ramp": ramp}
