"""STeW weights and the training losses (paper Sec. 3.1-3.2, Eq. 3-6).

Everything here is pure. The STeW functions are written once against an array module ``xp`` (NumPy
or ``jax.numpy``): the input pipeline uses the NumPy form, the jnp form is jit-able with static shapes.

All STeW distances, windows and sigmas are in video frames (``config.loss.stew_*``).

STeW, paper form (Eq. 4), per pixel of frame ``f``::

    mean_f = mean of the pseudo-label over frames max(0, f-W) .. min(T-1, f+W)
    phi_f  = Dist(f_a - f) * (1 if mean_f <= p_low or mean_f >= p_high (consistent) else mean_f),
             Dist(d) = exp(-d^2 / (2 sigma^2)), f_a the nearest labelled frame
    phi_f  = 1 on labelled frames.

Eq. 4 and the authors' code multiply every pixel by the distance term, consistent or not; without it a
frame's weight averaged 0.96-1.0 and the loss was nearly the plain interpolation loss.

The paper writes the normaliser as 1/(W+1) while summing 2W+1 frames; that can exceed 1 although the
paper states phi in [0, 1]. We use the mean over the frames actually in the window (clamped at the
video borders), which keeps phi in [0, 1] and makes the p_low / p_high thresholds fractions of frames.

STeW, implementation form (the authors' dataloader)::

    temporal_f = exp(-d^2 / (2 sigma^2)) if d <= radius else 0,  d = distance to the nearest labelled
                 frame (= max over labelled frames of the Gaussian, which decreases with distance)
    spatial_f  = 1 where mean == 0 (pure background), else mean, with mean = the pseudo-label's mean
                 over the whole training clip (:func:`clip_mean`; the sampler passes it)
    phi_f      = min(1, temporal_f * spatial_f);  phi_f = 1 on labelled frames.

The authors index their Gaussian (sigma 4/3, +-4) by clip slot, and clips are sampled at skip 2: in
video frames that is sigma 8/3 and radius 8 (the 'authors' preset). Their spatial window is the whole
8-slot clip for slots j >= 2; for j < 2 their slice ``label[min(j-2, 0):max(j+3, 8)]`` starts at a
negative index (the last 1-2 slots only), a bug not reproduced here. They also count a slot as
labelled when the skipped frame after it is; here only the labelled frame itself gets weight 1 (the
frame next to it gets Dist(1)). And their Gaussian spreads from the labelled slots of the clip only,
where d here is the distance to any labelled frame of the video (one just outside the clip counts).

Localisation weighting (``config.loss.weight_mode``): 'loss' multiplies the per-pixel BCE and the
Dice terms by the weight (Eq. 5); 'logit' is the authors' code, which multiplies the logits by the
weight and then takes the plain BCE (mean over every pixel) and a Dice over the whole batch.

Spread-loss margin: ``min(margin_max, margin_start + margin_step * epoch)``, 0.2 growing to 0.9 over
40 epochs as in the spread loss of [11]. The authors' training script defines that step but never
increments it, so their margin stays at 0.2 (the 'authors' preset: ``margin_step=0``); their loss also
subtracts the constant margin^2, which changes no gradient.

Loss variants (Fig. 6): ``'frame'`` weight 1 on labelled frames and 0 elsewhere, ``'interpolation'``
weight 1 everywhere, ``'stew'`` the STeW weight above.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

VARIANTS = ("stew", "interpolation", "frame")
FORMS = ("paper", "implementation")
WEIGHT_MODES = ("loss", "logit")  # config.loss.weight_mode.
DICE_SMOOTH = 1.0  # Dice numerator/denominator smoothing: an empty target and prediction give 0 loss.


@dataclasses.dataclass(frozen=True)
class LossParams:
  """The loss section (``config.loss``), read once: the localisation targets and their weights, the
  spread-loss margin schedule and the cluster weight. The defaults are configlib.base_config()'s
  ``loss`` section; hashable, so a jitted step can close over it."""

  variant: str = "stew"
  stew_form: str = "paper"
  stew_window: int = 2
  stew_sigma: float = 8.0 / 3.0
  stew_radius: int = 8
  weight_mode: str = "loss"
  p_low: float = 0.1
  p_high: float = 0.9
  mask_interp: str = "sdf"
  bce_weight: float = 1.0
  dice_weight: float = 1.0
  cls_weight: float = 1.0
  cluster_weight: float = 1e-6
  margin_start: float = 0.2
  margin_step: float = 0.7 / 40
  margin_max: float = 0.9

  @classmethod
  def from_section(cls, loss) -> LossParams:
    """The settings of ``loss`` (``config.loss``)."""
    return cls(variant=str(loss.variant), stew_form=str(loss.stew_form),
               stew_window=int(loss.stew_window), stew_sigma=float(loss.stew_sigma),
               stew_radius=int(loss.stew_radius), weight_mode=str(loss.weight_mode),
               p_low=float(loss.p_low), p_high=float(loss.p_high),
               mask_interp=str(loss.mask_interp), bce_weight=float(loss.bce_weight),
               dice_weight=float(loss.dice_weight), cls_weight=float(loss.cls_weight),
               cluster_weight=float(loss.cluster_weight),
               margin_start=float(loss.margin_start), margin_step=float(loss.margin_step),
               margin_max=float(loss.margin_max))

  def stew_kwargs(self) -> dict:
    """The :func:`combine_stew` keyword arguments."""
    return dict(form=self.stew_form, sigma=self.stew_sigma, p_low=self.p_low, p_high=self.p_high,
                radius=self.stew_radius)


# ----------------------------------------------------------------------------------------------- STeW


def window_mean(pseudo, window: int, xp=jnp):
  """Temporal mean of the pseudo-label over ``f-W .. f+W``, clamped to the video.

  Args:
    pseudo: ``(T, H, W)`` pseudo-mask in [0, 1].
    window: half window W (frames).

  Returns:
    ``(T, H, W) float32``: the mean over the in-video frames of each window.
  """
  t = pseudo.shape[0]
  pseudo = pseudo.astype(xp.float32)
  zero = xp.zeros((1,) + tuple(pseudo.shape[1:]), xp.float32)
  csum = xp.concatenate([zero, xp.cumsum(pseudo, axis=0)], axis=0)  # (T+1, H, W)
  idx = np.arange(t)
  lo = np.maximum(idx - window, 0)
  hi = np.minimum(idx + window, t - 1) + 1
  count = (hi - lo).astype(np.float32)
  return (csum[hi] - csum[lo]) / xp.asarray(count)[:, None, None]


def clip_mean(pseudo, xp=jnp):
  """The implementation form's window: ``(F, H, W)`` -> the mean over the clip's F frames, per
  pixel, repeated for every frame ``(F, H, W) float32``."""
  pseudo = pseudo.astype(xp.float32)
  return xp.broadcast_to(xp.mean(pseudo, axis=0, keepdims=True), pseudo.shape).astype(xp.float32)


def distance_to_labelled(is_labelled, xp=jnp):
  """``(T,) bool`` -> ``(T,) float32`` frames to the nearest labelled frame (``T`` when none)."""
  t = is_labelled.shape[0]
  idx = np.arange(t)
  gaps = np.abs(idx[:, None] - idx[None, :]).astype(np.float32)  # (T, T)
  gaps = xp.where(xp.asarray(is_labelled)[None, :], xp.asarray(gaps), float(t))
  return xp.min(gaps, axis=1)


def combine_stew(mean, distance, is_labelled, *, form: str = "paper", sigma: float = 4.0 / 3.0,
                 p_low: float = 0.1, p_high: float = 0.9, radius: int = 4, xp=jnp):
  """STeW weight from the window mean and the distance to the nearest labelled frame.

  Args:
    mean: ``(F, H, W)`` window mean of the pseudo-label (:func:`window_mean`; for the implementation
      form the sampler passes :func:`clip_mean`).
    distance: ``(F,)`` frames to the nearest labelled frame.
    is_labelled: ``(F,) bool``.
    form: ``'paper'`` (Eq. 4) or ``'implementation'``; see the module docstring.

  Returns:
    ``(F, H, W) float32`` in [0, 1].
  """
  distance = xp.asarray(distance, xp.float32)
  gauss = xp.exp(-(distance ** 2) / (2.0 * sigma ** 2))[:, None, None]
  if form == "paper":
    consistent = (mean <= p_low) | (mean >= p_high)
    weight = gauss * xp.where(consistent, 1.0, mean)
  elif form == "implementation":
    temporal = xp.where(distance[:, None, None] <= radius, gauss, 0.0)
    spatial = xp.where(mean == 0, 1.0, mean)
    weight = xp.minimum(temporal * spatial, 1.0)
  else:
    raise ValueError(f"STeW form {form!r}: use one of {FORMS} (config.loss.stew_form).")
  weight = xp.where(xp.asarray(is_labelled)[:, None, None], 1.0, weight)
  return weight.astype(xp.float32)


def variant_weights(pseudo, is_labelled, mean=None, distance=None, *, variant: str = "stew",
                    xp=jnp, **stew_kwargs):
  """Per-pixel loss weight of one loss variant.

  Args:
    pseudo: ``(F, H, W)`` pseudo-mask (used for its shape).
    is_labelled: ``(F,) bool``.
    mean, distance: inputs of :func:`combine_stew` (needed for ``'stew'`` only).
    variant: ``'stew'``, ``'interpolation'`` or ``'frame'``.

  Returns:
    ``(F, H, W) float32``.
  """
  shape = tuple(pseudo.shape)
  if variant == "interpolation":
    return xp.ones(shape, xp.float32)
  if variant == "frame":
    flags = xp.asarray(is_labelled).astype(xp.float32)[:, None, None]
    return xp.broadcast_to(flags, shape).astype(xp.float32)
  if variant == "stew":
    return combine_stew(mean, distance, is_labelled, xp=xp, **stew_kwargs)
  raise ValueError(f"loss variant {variant!r}: use one of {VARIANTS} (config.loss.variant).")


def stew_weights(pseudo, is_labelled, *, variant: str = "stew", window: int = 2, xp=jnp,
                 **kwargs):
  """Loss weights of a whole video (the reference, dense computation).

  The implementation form's spatial term is a clip's mean (:func:`clip_mean`), which a whole video
  does not have: here it uses the window mean like the paper form; the sampler
  (``data.clips.clip_targets``) passes the clip mean.

  Args:
    pseudo: ``(T, H, W)`` pseudo-mask in [0, 1].
    is_labelled: ``(T,) bool``.
    variant: ``'stew'``, ``'interpolation'`` or ``'frame'``.
    window: half window W of Eq. 4.
    xp: ``jax.numpy`` (jit-able; shapes static) or ``numpy``.
    **kwargs: ``form``, ``sigma``, ``p_low``, ``p_high``, ``radius`` of :func:`combine_stew`.

  Returns:
    ``(T, H, W) float32``.
  """
  mean = distance = None
  if variant == "stew":
    mean = window_mean(pseudo, window, xp)
    distance = distance_to_labelled(is_labelled, xp)
  return variant_weights(pseudo, is_labelled, mean, distance, variant=variant, xp=xp, **kwargs)


# --------------------------------------------------------------------------------------------- losses


def weighted_bce(logits: jax.Array, target: jax.Array, weight: jax.Array) -> jax.Array:
  """Eq. 5: ``mean over (B, F, H, W)`` of ``weight * BCE(logits, target)``.

  The mean runs over all pixels (the paper's 1/F times a per-frame pixel mean), so weight-0 pixels
  lower the loss rather than being dropped from the normaliser.

  Args:
    logits: ``(B, F, H, W)``; target, weight: same shape, in [0, 1].
  """
  bce = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), target)
  return jnp.mean(weight * bce)


def logit_weighted_losses(logits: jax.Array, target: jax.Array,
                          weight: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``loss.weight_mode='logit'`` (the authors' code): ``(BCE, Dice)`` of ``weight * logits``.

  BCE is the mean over every pixel of the batch; Dice is ``1 - (2 sum(p y) + s) / (sum(p) + sum(y)
  + s)`` over the whole batch flattened (not per clip), with ``p = sigmoid(weight * logits)``. A
  weight-0 pixel is then predicted at 0.5, not left out.

  Args:
    logits: ``(B, F, H, W)``; target, weight: same shape, in [0, 1].
  """
  weighted = logits.astype(jnp.float32) * weight
  bce = weighted_bce(weighted, target, jnp.ones_like(weighted))
  prob = jax.nn.sigmoid(weighted)
  inter = jnp.sum(prob * target)
  dice = 1.0 - (2.0 * inter + DICE_SMOOTH) / (jnp.sum(prob) + jnp.sum(target) + DICE_SMOOTH)
  return bce, dice


def weighted_dice(logits: jax.Array, target: jax.Array, weight: jax.Array) -> jax.Array:
  """Weighted soft Dice loss, per clip then averaged over the batch.

  ``1 - (2 sum(w p y) + s) / (sum(w p) + sum(w y) + s)`` over a clip's ``(F, H, W)`` pixels with
  ``p = sigmoid(logits)`` and smoothing ``s = DICE_SMOOTH``; a clip whose target is empty pushes the
  prediction towards empty (the loss is then ``1 - s / (sum(w p) + s)``).

  Args:
    logits: ``(B, F, H, W)``; target, weight: same shape, in [0, 1].

  Returns:
    scalar.
  """
  prob = jax.nn.sigmoid(logits.astype(jnp.float32))
  axes = tuple(range(1, logits.ndim))
  inter = jnp.sum(weight * prob * target, axis=axes)
  denom = jnp.sum(weight * prob, axis=axes) + jnp.sum(weight * target, axis=axes)
  return jnp.mean(1.0 - (2.0 * inter + DICE_SMOOTH) / (denom + DICE_SMOOTH))


def margin_at(epoch, margin_start: float, margin_step: float, margin_max: float):
  """Spread-loss margin ``min(margin_max, margin_start + margin_step * epoch)`` (epoch may be float)."""
  return jnp.minimum(margin_max, margin_start + margin_step * jnp.asarray(epoch, jnp.float32))


def spread_loss(activations: jax.Array, labels: jax.Array, margin) -> jax.Array:
  """Capsule spread loss, mean over the batch.

  ``sum_{i != t} max(0, m - (a_t - a_i))^2`` per clip.

  Args:
    activations: ``(B, C)`` class-capsule activations in [0, 1].
    labels: ``(B,)`` int class indices.
    margin: scalar m.
  """
  activations = activations.astype(jnp.float32)
  num_classes = activations.shape[-1]
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  a_t = jnp.sum(activations * onehot, axis=-1, keepdims=True)
  per_class = jnp.square(jnp.maximum(0.0, margin - (a_t - activations))) * (1.0 - onehot)
  return jnp.mean(jnp.sum(per_class, axis=-1))


def cluster_loss(latents: jax.Array, centres: jax.Array, clusters: jax.Array,
                 lam: float) -> jax.Array:
  """Eq. 3: ``lambda/2 ||latent - centre||^2``, summed over the clips that have a cluster.

  A sum over the batch, as Eq. 3 and the authors' code have it (not a mean: the gradient per clip
  does not shrink with the batch size).

  Args:
    latents: ``(B, D)``.
    centres: ``(K, D)``; treated as constants (no gradient).
    clusters: ``(B,)`` int cluster of each clip's video, -1 = none (the clip adds nothing).
    lam: lambda.

  Returns:
    scalar; 0 when no clip has a cluster.
  """
  centres = jax.lax.stop_gradient(centres.astype(jnp.float32))
  valid = clusters >= 0
  target = centres[jnp.clip(clusters, 0, centres.shape[0] - 1)]
  sq = jnp.sum(jnp.square(latents.astype(jnp.float32) - target), axis=-1)
  return 0.5 * lam * jnp.sum(jnp.where(valid, sq, 0.0))


def loss_fn(outputs: dict[str, jax.Array], batch: dict[str, Any], centres: jax.Array | None,
            assignments: jax.Array | None, epoch,
            params: LossParams) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Eq. 6, the total training loss, with its parts for logging.

  ``total = bce_weight * BCE + dice_weight * Dice + cls_weight * spread + cluster`` where the cluster
  term already carries its lambda (``params.cluster_weight``).

  Args:
    outputs: the detector's dict: ``seg_logits (B, F, H, W)``, ``class_probs (B, C)``,
      ``latent (B, D)``.
    batch: ``pseudo_mask (B, F, H, W)``, ``weight (B, F, H, W)``, ``label (B,)``, and either
      ``cluster (B,)`` (-1 = none) or ``video_index (B,)`` used with ``assignments``.
    centres: ``(K, D)`` cluster centres, or None (no cluster loss).
    assignments: optional ``(N,)`` int cluster per ``video_index`` (-1 = none); when None the
      batch's ``cluster`` field is used.
    epoch: (float) epoch for the margin schedule; may be traced.
    params: the loss settings (:class:`LossParams`; Python constants in a traced step).

  Returns:
    ``(total, parts)`` with parts ``bce, dice, localisation, classification, cluster, margin, total``.
  """
  if params.weight_mode == "logit":
    bce, dice = logit_weighted_losses(outputs["seg_logits"], batch["pseudo_mask"], batch["weight"])
  elif params.weight_mode == "loss":
    bce = weighted_bce(outputs["seg_logits"], batch["pseudo_mask"], batch["weight"])
    dice = weighted_dice(outputs["seg_logits"], batch["pseudo_mask"], batch["weight"])
  else:
    raise ValueError(f"loss.weight_mode={params.weight_mode!r}: use one of {WEIGHT_MODES}.")
  margin = margin_at(epoch, params.margin_start, params.margin_step, params.margin_max)
  cls = spread_loss(outputs["class_probs"], batch["label"], margin)
  if centres is None:
    clus = jnp.zeros((), jnp.float32)
  else:
    if assignments is not None:
      clusters = jnp.asarray(assignments)[batch["video_index"]]
    else:
      clusters = batch["cluster"]
    clus = cluster_loss(outputs["latent"], centres, clusters, params.cluster_weight)
  localisation = params.bce_weight * bce + params.dice_weight * dice
  total = localisation + params.cls_weight * cls + clus
  parts = {"bce": bce, "dice": dice, "localisation": localisation, "classification": cls,
           "cluster": clus, "margin": margin, "total": total}
  return total, parts
