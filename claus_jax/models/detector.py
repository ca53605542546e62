"""The CLAUS detector: I3D encoder, 2-D capsules with EM routing, and a skip-connected decoder.

Data flow for one 8-frame 224x224 clip (REFERENCE.md "Model"; channels-last):

  video (8, 224, 224, 3) -> InceptionI3d ('claus' strides) -> Mixed_4f (1, 28, 28, 832)
                                                            cross56 = Conv3d_2c_3x3 (2, 56, 56, 192)
                                                            cross112 = Conv3d_1a_7x7 (4, 112, 112, 64)
  decoder skips: skip56 = conv3x3x3(cross56) (2, 56, 56, 64), skip112 = conv3x3x3(cross112) (4, 112, 112, 64)
  ---- encode() ends here; head() starts: everything below is stochastic under MC dropout ----
  channel dropout -> primary capsules 9x9 VALID (20, 20, 32 x 17) -> class capsules 1x1 EM (20, 20, C x 17)
  class_probs = mean over the grid of class activations; latent = max over the grid of (poses, acts)
  decoder: class poses -> 9x9 transposed conv (28, 28, 64) ++ conv3x3(Mixed_4f) -> (1, 28, 28, 128)
           -> up x2 (2, 56, 56, 64) ++ skip56 -> up x2 (4, 112, 112, 64) ++ skip112
           -> up x2 (8, 224, 224, 128) -> channel dropout -> conv 3x3x3 -> logits (8, 224, 224)

The skip maps belong to the decoder but see no dropout, and the transposed convs after them are
linear, so encode() also computes the skip maps' shares of those two transposed convs
(Decoder.skips): MC dropout computes them once per clip rather than once per pass. The head has no
BatchNorm, so ``head(features, train=True)`` needs only a 'dropout' rng and no mutable collection:
Monte-Carlo dropout runs the encoder once and vmaps the head over dropout keys.
Dropout is Dropout3d-like: one Bernoulli draw per (clip, channel), broadcast over T, H and W.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from claus_jax.models import capsules
from claus_jax.models.i3d import (DEFAULT_KERNEL_INIT, Conv3d, InceptionI3d, fast_init,
                                   resolve_conv_impl, scaled_channels)

Dtype = Any
ROUTING_SIGNS = ("port", "em")  # CLAUSDetector.routing_sign (config.model.routing_sign).
CAPSULE_DIM = 17  # A class capsule in the latent: its 4x4 pose and its activation.


def latent_dim(num_classes: int) -> int:
  """Length of the detector's latent (``head()['latent']``): every class capsule's pose and activation."""
  return num_classes * CAPSULE_DIM
ROUTINGS = ("paper", "authors")  # CLAUSDetector.routing (config.model.routing).
INITS = ("lecun", "authors")  # CLAUSDetector.init_scheme (config.model.init).
# The authors' initialisation (model.init='authors'): primary-capsule convs N(0, 0.1), the decoder's
# transposed convs (up28 .. up224 and the last 'smooth' one) N(0, 0.02). Their other convs keep
# PyTorch's default, for which lecun_normal stands in.
AUTHORS_PRIMARY_INIT = fast_init(nn.initializers.normal(0.1))
AUTHORS_DECODER_INIT = fast_init(nn.initializers.normal(0.02))


def channel_dropout(rate: float, name: str | None = None) -> nn.Dropout:
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

  ``impl='frames'`` (see i3d.conv3d) runs the two temporal phases as two 2-D convs over the B * T
  frames: the input is the phase's temporal taps side by side on channels, and the kernel is 2x2 with
  the four spatial phases side by side on output channels (the one-tap spatial phase gets zeros in
  its unused taps). Same function; XLA's CPU 3-D convs and their gradients are slow.
  """

  features: int
  in_features: int  # C_in: fixed up front, since a call may hold only some of the input channels.
  dtype: Dtype = jnp.float32
  impl: str = "auto"
  kernel_init: Any = DEFAULT_KERNEL_INIT

  def setup(self):
    self.kernel = self.param("kernel", self.kernel_init,
                             (3, 3, 3, self.in_features, self.features), jnp.float32)
    self.bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)

  def __call__(self, x: jax.Array, channels: slice = slice(None),
               add_bias: bool = True) -> jax.Array:
    """x: (B, T, H, W, C) -> (B, 2T, 2H, 2W, features).

    ``channels`` names the input channels x holds (default: all C_in). The transposed conv is linear,
    so for an input that is a concatenation, the parts' outputs (one call each, the bias once) sum to
    the output of the whole: the decoder computes its deterministic skip part once per clip.
    """
    kernel = self.kernel[:, :, :, channels]
    if x.shape[-1] != kernel.shape[3]:
      raise ValueError(f"UpConv3d: input has {x.shape[-1]} channels, the kernel slice "
                       f"{channels} holds {kernel.shape[3]}.")
    x = x.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    bias = self.bias.astype(self.dtype) if add_bias else jnp.zeros((), self.dtype)
    if resolve_conv_impl(self.impl) == "frames":
      return self._frames(x, kernel) + bias
    b, t, h, w, _ = x.shape
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
    return y + bias

  def _frames(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The 'frames' lowering: x (B, T, H, W, C_in), kernel (3, 3, 3, C_in, F) -> (B, 2T, 2H, 2W, F)."""
    b, t, h, w, cin = x.shape
    f = self.features
    zero = jnp.zeros((cin, f), kernel.dtype)

    def spatial_kernel(k2):  # (3, 3, C_in, F) -> (2, 2, C_in, 4F): [dh, dw, :, (rh, rw, F)].
      rows = []
      for dh in range(2):
        cols = []
        for dw in range(2):
          cols.append(jnp.stack([k2[_PHASE_TAPS[rh][dh], _PHASE_TAPS[rw][dw]]
                                 if dh < len(_PHASE_TAPS[rh]) and dw < len(_PHASE_TAPS[rw]) else zero
                                 for rh in range(2) for rw in range(2)], axis=1))
        rows.append(jnp.stack(cols))
      return jnp.stack(rows).reshape(2, 2, cin, 4 * f)

    # Input frame t + dt, dt = 0 or 1 (zero past the end), for the temporal taps of each phase.
    shifted = (x, jnp.pad(x[:, 1:], [(0, 0), (0, 1), (0, 0), (0, 0), (0, 0)]))
    phases = []
    for taps_t in _PHASE_TAPS:
      inp = jnp.concatenate(shifted[:len(taps_t)], axis=-1).reshape(b * t, h, w, -1)
      k = jnp.concatenate([spatial_kernel(kernel[i]) for i in taps_t], axis=2)
      y = jax.lax.conv_general_dilated(inp, k, (1, 1), [(0, 1), (0, 1)],
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      phases.append(y.reshape(b, t, h, w, 2, 2, f))
    y = jnp.stack(phases, axis=2)  # (B, T, rt, H, W, rh, rw, F)
    return y.transpose(0, 1, 2, 3, 5, 4, 6, 7).reshape(b, 2 * t, 2 * h, 2 * w, f)


class ConvToOne3d(nn.Module):
  """3x3x3 SAME conv to a single channel (kernel (3, 3, 3, C_in, 1), bias).

  Same result as ``nn.Conv(1, (3, 3, 3), padding='SAME')``. ``impl='frames'`` (CPU) runs one 2-D
  3x3 conv over the B * T frames whose 3 output channels are the 3 temporal taps, then sums the
  three maps shifted in time (slices). Why: XLA's CPU 3-D conv with one output channel ran ~30x
  slower. Measured against the previous lowering (27 per-tap projections by one matmul, spatial
  shifts by a one-hot 2-D conv; 2 x 8 x 64 x 64 x 32 inputs, 2-core CPU): forward 8.0 against
  34.9 ms, forward + backward 47.8 against 77.2 ms. Summing 27 shifted slices was faster forward
  but 2.5x slower backward.
  """

  dtype: Dtype = jnp.float32
  impl: str = "auto"
  bias_init: float = 0.0  # Initial bias, e.g. logit of a foreground prior.
  kernel_init: Any = DEFAULT_KERNEL_INIT

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (B, T, H, W, C_in) -> (B, T, H, W, 1)."""
    b, t, h, w, cin = x.shape
    kernel = self.param("kernel", self.kernel_init, (3, 3, 3, cin, 1), jnp.float32)
    bias = self.param("bias", nn.initializers.constant(self.bias_init), (1,), jnp.float32)
    x = x.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    if resolve_conv_impl(self.impl) == "native":
      out = jax.lax.conv_general_dilated(x, kernel, (1, 1, 1), [(1, 1)] * 3,
                                         dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
      return out + bias.astype(self.dtype)
    # per_tap[..., i] = 2-D conv of each frame with the temporal tap i: (B * T, H, W, 3).
    per_tap = jax.lax.conv_general_dilated(x.reshape(b * t, h, w, cin),
                                           jnp.transpose(kernel[..., 0], (1, 2, 3, 0)), (1, 1),
                                           [(1, 1), (1, 1)],
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
    # out[t] = per_tap[t - 1, 0] + per_tap[t, 1] + per_tap[t + 1, 2], zero outside the clip.
    per_tap = jnp.pad(per_tap.reshape(b, t, h, w, 3), [(0, 0), (1, 1), (0, 0), (0, 0), (0, 0)])
    out = per_tap[:, 0:t, ..., 0] + per_tap[:, 1:t + 1, ..., 1] + per_tap[:, 2:t + 2, ..., 2]
    return (out + bias[0].astype(self.dtype))[..., None]


class Decoder(nn.Module):
  """Transposed-conv decoder with two skip connections; convs + ReLU only (no BatchNorm).

  Two entry points, so that Monte-Carlo dropout computes the deterministic part once per clip.
  The skip maps (conv + ReLU of cross56 and cross112) see no dropout, and each one is concatenated
  to the upsampled path and fed to a transposed conv, which is linear in its input channels. So
  :meth:`skips` computes the skip maps and their share of up112 and up224, and ``__call__`` adds those
  shares to the stochastic path's: the same function as concatenating, with fewer ops per pass.
  """

  kernel: int  # The primary-capsule kernel: the first transposed conv undoes that VALID conv.
  width: float = 1.0
  rate: float = 0.5  # Channel-dropout rate before the last conv.
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"  # Lowering of the 3-D convs (i3d.conv3d); same parameters and results.
  seg_prior: float = 0.5  # Initial foreground probability of every pixel (0.5 = bias 0).
  up_init: Any = DEFAULT_KERNEL_INIT  # Kernels of the transposed convs (authors: N(0, 0.02)).

  def setup(self):
    ch = lambda c: scaled_channels(c, self.width)
    k = self.kernel
    impl = resolve_conv_impl(self.conv_impl)
    # A stride-1 VALID transposed conv is a conv with k - 1 zeros padded on each side.
    self.up28 = nn.Conv(ch(64), (k, k), padding=[(k - 1, k - 1)] * 2, dtype=self.dtype,
                        param_dtype=jnp.float32, kernel_init=self.up_init)
    # Stride-1 SAME with odd kernels pads (k - 1) / 2 on both sides, as nn.Conv's 'SAME' does.
    conv = lambda k: Conv3d(ch(64), k, padding=[((n - 1) // 2, (n - 1) // 2) for n in k],
                            dtype=self.dtype, impl=impl)
    self.conv28, self.conv56, self.conv112 = conv((1, 3, 3)), conv((3, 3, 3)), conv((3, 3, 3))
    # Every transposed conv reads 64w channels of the path and 64w of a skip map, in that order.
    self.up56 = UpConv3d(ch(64), 2 * ch(64), self.dtype, impl, self.up_init)
    self.up112 = UpConv3d(ch(64), 2 * ch(64), self.dtype, impl, self.up_init)
    self.up224 = UpConv3d(ch(128), 2 * ch(64), self.dtype, impl, self.up_init)
    self.path_in, self.skip_in = slice(0, ch(64)), slice(ch(64), None)  # Their input channels.
    self.dropout = channel_dropout(self.rate, None)
    # A foreground prior on the last bias (as focal-loss detectors do): small actors cover a few
    # percent of the pixels, and starting every pixel at 0.5 spends the first steps unlearning it.
    prior_logit = float(np.log(self.seg_prior) - np.log1p(-self.seg_prior))
    self.smooth = ConvToOne3d(self.dtype, impl, prior_logit, self.up_init)

  def skips(self, cross56: jax.Array, cross112: jax.Array) -> dict[str, jax.Array]:
    """The deterministic part: cross56 (B, 2, 2f, 2f, 192w), cross112 (B, 4, 4f, 4f, 64w) ->
    {'skip_up112': (B, 4, 4f, 4f, 64w), 'skip_up224': (B, 8, 8f, 8f, 128w)}, the skip maps' shares
    (without bias) of the up112 and up224 outputs."""
    skip56, skip112 = nn.relu(self.conv56(cross56)), nn.relu(self.conv112(cross112))
    return {"skip_up112": self.up112(skip56, self.skip_in, add_bias=False),
            "skip_up224": self.up224(skip112, self.skip_in, add_bias=False)}

  def __call__(self, class_poses: jax.Array, mixed: jax.Array, skips: dict[str, jax.Array],
               train: bool) -> jax.Array:
    """Decodes segmentation logits.

    Args:
      class_poses: (B, g, g, C * 16) class-capsule poses on the capsule grid.
      mixed: Mixed_4f (B, 1, f, f, 832w) as the head sees it (after its channel dropout), with
        f = g + kernel - 1.
      skips: the dict returned by :meth:`skips`.
      train: channel dropout before the last conv is on (needs a 'dropout' rng).

    Returns:
      (B, 8, 8f, 8f) float32 logits.
    """
    x = nn.relu(self.up28(class_poses))[:, None]  # (B, 1, f, f, 64w)
    x = jnp.concatenate([x, nn.relu(self.conv28(mixed)).astype(x.dtype)], axis=-1)
    x = nn.relu(self.up56(x))  # (B, 2, 2f, 2f, 64w); up56 reads no skip map.
    x = nn.relu(self.up112(x, self.path_in) + skips["skip_up112"])  # (B, 4, 4f, 4f, 64w)
    x = self.dropout(self.up224(x, self.path_in) + skips["skip_up224"], deterministic=not train)
    return self.smooth(x)[..., 0].astype(jnp.float32)


class CLAUSDetector(nn.Module):
  """The CLAUS actor detector (VideoCapsuleNet lineage, 2-D capsules on I3D features).

  Attributes:
    num_classes: class capsules C.
    primary_kernel: VALID kernel of the primary capsules (models.geometry: 9 at 224).
    width: channel multiplier of the encoder and the decoder (capsule counts are not scaled).
    strides: I3D strides; the detector's geometry needs 'claus' (one frame left at Mixed_4f).
    primary_caps: primary capsule types.
    routing_iters: EM iterations of the class capsules.
    coord_add: coordinate addition in the class capsules.
    routing_lambda: inverse temperature of the class-capsule activation sigmoid.
    dropout: rate of both channel-dropout sites.
    dtype: compute dtype (float32 or bfloat16); parameters and outputs are float32.
    conv_impl: lowering of the 3-D convs and max-pools (i3d.CONV_IMPLS); same parameters and results.
    seg_prior: initial foreground probability of the segmentation output (its last bias).
    routing_cost_scale: class-capsule cost normalisation (capsules.em_routing's cost_scale).
    routing_sign: 'port' (the authors' PyTorch: higher cost, higher activation) or 'em' (EM
      routing as published: agreeing votes, lower cost, higher activation).
    routing: 'paper' or 'authors' (their M-step; capsules.em_routing's authors_form).
    init_scheme: 'lecun' or 'authors' (primary capsules N(0, 0.1), decoder transposed convs
      N(0, 0.02)); config.model.init (``init`` itself is Module.init).
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
  conv_impl: str = "auto"
  seg_prior: float = 0.5
  routing_cost_scale: float = 0.0
  routing_sign: str = "em"
  routing: str = "paper"
  init_scheme: str = "lecun"

  def setup(self):
    for name, value, allowed in (("routing_sign", self.routing_sign, ROUTING_SIGNS),
                                 ("routing", self.routing, ROUTINGS),
                                 ("init", self.init_scheme, INITS)):
      if value not in allowed:
        raise ValueError(f"CLAUSDetector.{name}={value!r}: use one of {allowed} "
                         f"(config.model.{name}).")
    authors_init = self.init_scheme == "authors"
    self.encoder = InceptionI3d("Mixed_4f", self.strides, self.width, self.dtype, self.conv_impl)
    self.feature_dropout = channel_dropout(self.dropout, "feature_dropout")
    self.primary = capsules.PrimaryCapsules(
        self.primary_caps, self.primary_kernel, self.dtype,
        AUTHORS_PRIMARY_INIT if authors_init else DEFAULT_KERNEL_INIT, self.conv_impl)
    self.class_caps = capsules.ConvCapsules(self.num_classes, 1, self.routing_iters, self.coord_add,
                                            self.routing_lambda, self.routing_cost_scale,
                                            self.routing_sign == "em", self.routing == "authors")
    self.decoder = Decoder(self.primary_kernel, self.width, self.dropout, self.dtype,
                           self.conv_impl, self.seg_prior,
                           AUTHORS_DECODER_INIT if authors_init else DEFAULT_KERNEL_INIT)

  def encode(self, video: jax.Array, train: bool = False,
             frozen_encoder: bool = False) -> dict[str, jax.Array]:
    """Deterministic encoder pass.

    Args:
      video: (B, 8, H, W, 3) float in [-1, 1], H and W multiples of 16.
      train: BatchNorm in training mode (batch statistics; ``batch_stats`` must be mutable).
      frozen_encoder: the I3D part is a fixed feature extractor: BatchNorm in eval mode whatever
        ``train`` says, and no gradient flows into it (the decoder's skip convs still train).

    Returns:
      {'Mixed_4f': (B, 1, H/8, W/8, 832w), 'skip_up112': (B, 4, H/2, W/2, 64w),
       'skip_up224': (B, 8, H, W, 128w)} in the compute dtype: Mixed_4f and the decoder's
      deterministic part (Decoder.skips of Conv3d_2c_3x3 and Conv3d_1a_7x7).
    """
    if video.ndim != 5 or video.shape[-1] != 3:
      raise ValueError(f"CLAUSDetector: video must be (B, T, H, W, 3), got {video.shape}.")
    ends = self.encoder(video, train and not frozen_encoder)
    if frozen_encoder:
      ends = jax.lax.stop_gradient(ends)
    if ends["Mixed_4f"].shape[1] != 1:
      raise ValueError(f"CLAUSDetector: Mixed_4f has {ends['Mixed_4f'].shape[1]} frames; the 2-D "
                       "capsules need exactly 1: use 8-frame clips and model.strides='claus'.")
    return {"Mixed_4f": ends["Mixed_4f"],
            **self.decoder.skips(ends["Conv3d_2c_3x3"], ends["Conv3d_1a_7x7"])}

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
    poses, acts = self.primary(mixed[:, 0])
    class_poses, class_acts = self.class_caps(poses, acts)  # (B, g, g, C, 16), (B, g, g, C)
    b, g_h, g_w, c, d = class_poses.shape
    flat_poses = class_poses.reshape(b, g_h, g_w, c * d)
    caps = jnp.concatenate([flat_poses, class_acts], axis=-1)  # Poses then activations.
    latent = jnp.max(caps, axis=(1, 2))
    class_probs = jnp.mean(class_acts, axis=(1, 2))
    seg_logits = self.decoder(flat_poses.astype(self.dtype), mixed, features, train)
    return {"seg_logits": seg_logits.astype(jnp.float32),
            "class_probs": class_probs.astype(jnp.float32),
            "latent": latent.astype(jnp.float32)}

  def __call__(self, video: jax.Array, train: bool = False,
               frozen_encoder: bool = False) -> dict[str, jax.Array]:
    """encode then head; see both. video: (B, 8, H, W, 3) float in [-1, 1]."""
    return self.head(self.encode(video, train, frozen_encoder), train)
