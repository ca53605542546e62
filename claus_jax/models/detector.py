"""The CLAUS detector: I3D encoder, 2-D capsules with EM routing, and a skip-connected decoder.

Data flow for one 8-frame 224x224 clip (REFERENCE.md "Model"; channels-last):

  video (8, 224, 224, 3) -> InceptionI3d ('claus' strides) -> Mixed_4f (1, 28, 28, 832)
                                                            cross56 = Conv3d_2c_3x3 (2, 56, 56, 192)
                                                            cross112 = Conv3d_1a_7x7 (4, 112, 112, 64)
  ---- encode() ends here; head() starts: everything below is stochastic under MC dropout ----
  channel dropout -> primary capsules 9x9 VALID (20, 20, 32 x 17) -> class capsules 1x1 EM (20, 20, C x 17)
  class_probs = mean over the grid of class activations; latent = max over the grid of (poses, acts)
  decoder: class poses -> 9x9 transposed conv (28, 28, 64) ++ conv3x3(Mixed_4f) -> (1, 28, 28, 128)
           -> up x2 (2, 56, 56, 64) ++ conv(cross56) -> up x2 (4, 112, 112, 64) ++ conv(cross112)
           -> up x2 (8, 224, 224, 128) -> channel dropout -> conv 3x3x3 -> logits (8, 224, 224)

The head has no BatchNorm, so ``head(features, train=True)`` needs only a 'dropout' rng and no mutable
collection: Monte-Carlo dropout runs the encoder once and vmaps the head over dropout keys.
Dropout is Dropout3d-like: one Bernoulli draw per (clip, channel), broadcast over T, H and W.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from claus_jax.models import capsules
from claus_jax.models.i3d import DEFAULT_KERNEL_INIT, InceptionI3d, scaled_channels

Dtype = Any

ENCODER_FEATURES = ("Mixed_4f", "cross56", "cross112")


def channel_dropout(rate: float, name: str) -> nn.Dropout:
  """Dropout3d on (B, T, H, W, C): whole feature maps dropped (mask broadcast over T, H, W)."""
  return nn.Dropout(rate, broadcast_dims=(1, 2, 3), name=name)


# Per axis, the taps of a 3-tap transposed-conv kernel that feed output phase r, in input order:
# out[2m] = x[m] w[1];  out[2m + 1] = x[m] w[2] + x[m + 1] w[0]  (PyTorch ConvTranspose with
# kernel 3, stride 2, padding 1, output_padding 1).
_PHASE_TAPS = ((1,), (2, 0))


class UpConv3d(nn.Module):
  """Transposed 3x3x3 conv with stride 2 (doubles T, H, W), computed phase by phase.

  Same function and parameters (kernel (3, 3, 3, C_in, C_out), bias) as PyTorch's
  ``ConvTranspose3d(k=3, stride=2, padding=1, output_padding=1)``. Each of the 8 output phases
  (parity of t, h, w) is an ordinary conv of the input with a 1- or 2-tap sub-kernel per axis (27
  taps in all, no multiplications by inserted zeros), and the phases are interleaved. Why: XLA's
  CPU backend runs the input-dilated convolution of a direct transposed conv ~30x slower.
  """

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (B, T, H, W, C_in) -> (B, 2T, 2H, 2W, features)."""
    b, t, h, w, cin = x.shape
    kernel = self.param("kernel", DEFAULT_KERNEL_INIT, (3, 3, 3, cin, self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    x = x.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    phases = []
    for taps_t in _PHASE_TAPS:
      for taps_h in _PHASE_TAPS:
        for taps_w in _PHASE_TAPS:
          sub = kernel[np.array(taps_t)][:, np.array(taps_h)][:, :, np.array(taps_w)]
          pads = [(0, len(taps_t) - 1), (0, len(taps_h) - 1), (0, len(taps_w) - 1)]
          phases.append(jax.lax.conv_general_dilated(
              x, sub, (1, 1, 1), pads, dimension_numbers=("NDHWC", "DHWIO", "NDHWC")))
    y = jnp.stack(phases, axis=-2).reshape(b, t, h, w, 2, 2, 2, self.features)
    y = y.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, 2 * t, 2 * h, 2 * w, self.features)
    return y + bias.astype(self.dtype)


class ConvToOne3d(nn.Module):
  """3x3x3 SAME conv to a single channel (kernel (3, 3, 3, C_in, 1), bias), as taps-then-shifts.

  Computes the 27 per-tap projections with one matmul, then adds the 27 shifted maps. Same result as
  ``nn.Conv(1, (3, 3, 3), padding='SAME')``; XLA's CPU conv with one output channel ran ~30x slower.
  """

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (B, T, H, W, C_in) -> (B, T, H, W, 1)."""
    b, t, h, w, cin = x.shape
    kernel = self.param("kernel", DEFAULT_KERNEL_INIT, (3, 3, 3, cin, 1), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (1,), jnp.float32)
    taps = jnp.einsum("bthwc,ijkc->bthwijk", x.astype(self.dtype),
                      kernel[..., 0].astype(self.dtype))
    taps = jnp.pad(taps, [(0, 0), (1, 1), (1, 1), (1, 1), (0, 0), (0, 0), (0, 0)])
    out = sum(taps[:, i:i + t, j:j + h, k:k + w, i, j, k]
              for i in range(3) for j in range(3) for k in range(3))
    return (out + bias[0].astype(self.dtype))[..., None]


class Decoder(nn.Module):
  """Transposed-conv decoder with two skip connections; convs + ReLU only (no BatchNorm)."""

  kernel: int  # The primary-capsule kernel: the first transposed conv undoes that VALID conv.
  width: float = 1.0
  dropout: float = 0.5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, class_poses: jax.Array, features: dict[str, jax.Array],
               train: bool) -> jax.Array:
    """Decodes segmentation logits.

    Args:
      class_poses: (B, g, g, C * 16) class-capsule poses on the capsule grid.
      features: encoder outputs, Mixed_4f (B, 1, f, f, 832w), cross56 (B, 2, 2f, 2f, 192w),
        cross112 (B, 4, 4f, 4f, 64w), with f = g + kernel - 1.
      train: channel dropout before the last conv is on (needs a 'dropout' rng).

    Returns:
      (B, 8, 8f, 8f) float32 logits.
    """
    ch = lambda c: scaled_channels(c, self.width)
    kw = dict(dtype=self.dtype, param_dtype=jnp.float32, kernel_init=DEFAULT_KERNEL_INIT)
    k = self.kernel
    # A stride-1 VALID transposed conv is a conv with k - 1 zeros padded on each side.
    x = nn.Conv(ch(64), (k, k), padding=[(k - 1, k - 1)] * 2, name="up28", **kw)(class_poses)
    x = nn.relu(x)[:, None]  # (B, 1, f, f, 64w)
    mixed = features["Mixed_4f"]
    skip = nn.relu(nn.Conv(ch(64), (1, 3, 3), padding="SAME", name="conv28", **kw)(mixed))
    x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
    for size, cross in (("56", "cross56"), ("112", "cross112")):
      x = nn.relu(UpConv3d(ch(64), self.dtype, name=f"up{size}")(x))
      skip = nn.relu(nn.Conv(ch(64), (3, 3, 3), padding="SAME", name=f"conv{size}",
                             **kw)(features[cross]))
      x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
    x = UpConv3d(ch(128), self.dtype, name="up224")(x)
    x = channel_dropout(self.dropout, "dropout")(x, deterministic=not train)
    logits = ConvToOne3d(self.dtype, name="smooth")(x)
    return logits[..., 0].astype(jnp.float32)


class CLAUSDetector(nn.Module):
  """The CLAUS actor detector (VideoCapsuleNet lineage, 2-D capsules on I3D features).

  Attributes:
    num_classes: class capsules C.
    primary_kernel: VALID kernel of the primary capsules (configlib.geometry: 9 at 224).
    width: channel multiplier of the encoder and the decoder (capsule counts are not scaled).
    strides: I3D strides; the detector's geometry needs 'claus' (one frame left at Mixed_4f).
    primary_caps: primary capsule types.
    routing_iters: EM iterations of the class capsules.
    coord_add: coordinate addition in the class capsules.
    routing_lambda: inverse temperature of the class-capsule activation sigmoid.
    dropout: rate of both channel-dropout sites.
    dtype: compute dtype (float32 or bfloat16); parameters and outputs are float32.
  """

  num_classes: int
  primary_kernel: int
  width: float = 1.0
  strides: str = "claus"
  primary_caps: int = 32
  routing_iters: int = 3
  coord_add: bool = False
  routing_lambda: float = 1.0
  dropout: float = 0.5
  dtype: Dtype = jnp.float32

  def setup(self):
    self.encoder = InceptionI3d("Mixed_4f", self.strides, self.width, self.dtype)
    self.feature_dropout = channel_dropout(self.dropout, "feature_dropout")
    self.primary = capsules.PrimaryCapsules(self.primary_caps, self.primary_kernel, self.dtype)
    self.class_caps = capsules.ConvCapsules(self.num_classes, 1, self.routing_iters, self.coord_add,
                                            self.routing_lambda)
    self.decoder = Decoder(self.primary_kernel, self.width, self.dropout, self.dtype)

  def encode(self, video: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """Deterministic encoder pass.

    Args:
      video: (B, 8, H, W, 3) float in [-1, 1], H and W multiples of 16.
      train: BatchNorm in training mode (batch statistics; ``batch_stats`` must be mutable).

    Returns:
      {'Mixed_4f': (B, 1, H/8, W/8, 832w), 'cross56': (B, 2, H/4, W/4, 192w),
       'cross112': (B, 4, H/2, W/2, 64w)} in the compute dtype.
    """
    if video.ndim != 5 or video.shape[-1] != 3:
      raise ValueError(f"CLAUSDetector: video must be (B, T, H, W, 3), got {video.shape}.")
    ends = self.encoder(video, train)
    feats = {"Mixed_4f": ends["Mixed_4f"], "cross56": ends["Conv3d_2c_3x3"],
             "cross112": ends["Conv3d_1a_7x7"]}
    if feats["Mixed_4f"].shape[1] != 1:
      raise ValueError(f"CLAUSDetector: Mixed_4f has {feats['Mixed_4f'].shape[1]} frames; the 2-D "
                       "capsules need exactly 1: use 8-frame clips and model.strides='claus'.")
    return feats

  def head(self, features: dict[str, jax.Array], train: bool = False) -> dict[str, jax.Array]:
    """Everything from the first dropout on; stochastic iff ``train`` (needs a 'dropout' rng).

    The head holds no BatchNorm, so ``train=True`` needs no mutable collection: it is the MC-dropout
    scoring mode as well as the training mode.

    Args:
      features: the dict returned by :meth:`encode`.
      train: both channel-dropout sites are on.

    Returns:
      seg_logits (B, 8, H, W), class_probs (B, C) in [0, 1], latent (B, C * 17); all float32.
    """
    mixed = self.feature_dropout(features["Mixed_4f"], deterministic=not train)
    feats = dict(features, Mixed_4f=mixed)
    poses, acts = self.primary(mixed[:, 0])
    class_poses, class_acts = self.class_caps(poses, acts)  # (B, g, g, C, 16), (B, g, g, C)
    b, g_h, g_w, c, d = class_poses.shape
    flat_poses = class_poses.reshape(b, g_h, g_w, c * d)
    caps = jnp.concatenate([flat_poses, class_acts], axis=-1)  # Poses then activations.
    latent = jnp.max(caps, axis=(1, 2))
    class_probs = jnp.mean(class_acts, axis=(1, 2))
    seg_logits = self.decoder(flat_poses.astype(self.dtype), feats, train)
    return {"seg_logits": seg_logits.astype(jnp.float32),
            "class_probs": class_probs.astype(jnp.float32),
            "latent": latent.astype(jnp.float32)}

  def __call__(self, video: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """encode then head; see both. video: (B, 8, H, W, 3) float in [-1, 1]."""
    return self.head(self.encode(video, train), train)
