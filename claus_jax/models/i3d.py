"""Inception-I3D (Carreira & Zisserman 2017) as pure Flax linen modules, channels-last.

Layer names follow the public ``pytorch_i3d`` project (``Conv3d_1a_7x7/conv3d``, ``Conv3d_1a_7x7/bn``,
``Mixed_3b/b1b/conv3d`` ...) so that :mod:`claus_jax.tools.import_i3d` maps its state dicts one to one.

Numerics that must match ``pytorch_i3d`` for imported weights to behave the same:
  * TensorFlow-style SAME padding computed from the static input size, front = total // 2 (pytorch_i3d
    pads asymmetrically; XLA's ``'SAME'`` is not guaranteed to split the same way), for convs and
    max-pools alike;
  * no conv bias, BatchNorm eps 1e-3 and PyTorch momentum 0.01 (Flax momentum 0.99), ReLU.

3-D window ops have two lowerings with the same parameters and results (``conv_impl``):
  * ``'native'``: ``lax.conv_general_dilated`` on NDHWC and ``nn.max_pool`` (fast on GPU and TPU);
  * ``'frames'``: a 3-D conv as ONE 2-D conv over the (B * T') output frames whose input channels are
    the kt temporal taps side by side, and a max-pool as a running ``maximum`` over shifted slices.
    Why: XLA's CPU backend has no fast 3-D convolution (its 3-D convs, and above all their gradients,
    ran 4-5x slower than the equivalent 2-D conv here) and its max-pool gradient (select-and-scatter)
    is slow, while the gradient of ``maximum`` is an elementwise select.
    A 2-D conv with few output channels runs its forward over 2x2 output blocks
    (:func:`conv2d_cpu`).
  * ``'auto'`` picks 'frames' on CPU and 'native' elsewhere (:func:`resolve_conv_impl`).
The max-pool forms agree exactly; their gradients differ only at ties inside a window (the native
one routes to one element, ``maximum`` splits); ties after a ReLU are zeros, whose gradient is 0.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

VALID_ENDPOINTS = (
    "Conv3d_1a_7x7",
    "MaxPool3d_2a_3x3",
    "Conv3d_2b_1x1",
    "Conv3d_2c_3x3",
    "MaxPool3d_3a_3x3",
    "Mixed_3b",
    "Mixed_3c",
    "MaxPool3d_4a_3x3",
    "Mixed_4b",
    "Mixed_4c",
    "Mixed_4d",
    "Mixed_4e",
    "Mixed_4f",
    "MaxPool3d_5a_2x2",
    "Mixed_5b",
    "Mixed_5c",
)

# Inception module channel lists (b0, b1a, b1b, b2a, b2b, b3b), REFERENCE.md "Model".
INCEPTION_CHANNELS = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
BRANCH_NAMES = ("b0", "b1a", "b1b", "b2a", "b2b", "b3b")

# (kernel, stride) of the strided layers; 'claus' gives Conv3d_2c and MaxPool3d_4a a temporal stride
# of 2 and no spatial pooling at 4a, so Mixed_4f keeps a 28x28 map at 224 and one frame of 8.
STRIDES = {
    "standard": {"Conv3d_2c_3x3": (1, 1, 1), "MaxPool3d_4a_3x3": (2, 2, 2)},
    "claus": {"Conv3d_2c_3x3": (2, 1, 1), "MaxPool3d_4a_3x3": (2, 1, 1)},
}

CONV_IMPLS = ("auto", "native", "frames")
_DN3 = ("NDHWC", "DHWIO", "NDHWC")
_DN2 = ("NHWC", "HWIO", "NHWC")

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99  # Flax convention: 1 - PyTorch momentum (0.01).


def fast_init(init_fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """Wraps a Flax initializer so its random bits come from XLA's RngBitGenerator ('rbg').

  Deterministic in the key Flax hands it. Why: with the default threefry PRNG every parameter's
  initializer compiles to its own unrolled hash, and a jitted init of this model took over a minute to
  compile on a 2-core CPU; with 'rbg' it takes seconds (and 'rbg' is native on TPU).
  """
  def init(key, shape, dtype=jnp.float32):
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
      key = jax.random.key_data(key)
    words = jnp.resize(jnp.ravel(key).astype(jnp.uint32), (4,))
    return init_fn(jax.random.wrap_key_data(words, impl="rbg"), shape, dtype)
  return init


DEFAULT_KERNEL_INIT = fast_init(nn.initializers.lecun_normal())


def scaled_channels(channels: int, width: float) -> int:
  """Channel count under a width multiplier: rounded, at least 1."""
  return max(1, int(round(channels * width)))


def tf_same_padding(sizes: Sequence[int], kernel: Sequence[int],
                    strides: Sequence[int]) -> list[tuple[int, int]]:
  """TensorFlow SAME padding per axis, split as pytorch_i3d does (front = total // 2).

  Args:
    sizes: static input sizes of the padded axes, e.g. (T, H, W).
    kernel: window size per axis.
    strides: stride per axis.

  Returns:
    [(front, back)] per axis; the output size is ceil(size / stride).
  """
  pads = []
  for size, k, s in zip(sizes, kernel, strides):
    total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
    pads.append((total // 2, total - total // 2))
  return pads


def resolve_conv_impl(impl: str) -> str:
  """'auto' -> 'frames' on the CPU backend, 'native' on GPU/TPU; other values are checked and kept."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"conv_impl {impl!r}: use one of {CONV_IMPLS} (config.model.conv_impl).")
  if impl == "auto":
    return "frames" if jax.default_backend() == "cpu" else "native"
  return impl


# The 'frames' lowering computes a 2-D conv with at most this many output channels as a conv with
# four times as many (see conv2d_cpu); 0 turns that off.
BLOCK_MAX_CHANNELS = 32


def _plain_conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                  padding: tuple[tuple[int, int], ...]) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DN2)


def _blocked_conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                    padding: tuple[tuple[int, int], ...]) -> jax.Array:
  """The 2-D conv computed for 2x2 blocks of output positions at once: same result.

  Output (2P + a, 2Q + c) reads input rows sh * (2P + a) + i: so a conv with the kernel placed at
  offset (sh * a, sw * c) in a kernel sh (sw) taps taller (wider), at stride 2 sh (2 sw), gives the
  four positions of a block as four groups of output channels, interleaved back afterwards.
  """
  kh, kw, cin, cout = kernel.shape
  (sh, sw), (ph, pw) = strides, padding
  n, h, w, _ = x.shape
  ho, wo = (h + sum(ph) - kh) // sh + 1, (w + sum(pw) - kw) // sw + 1
  hb, wb = -(-ho // 2), -(-wo // 2)
  big_h, big_w = kh + sh, kw + sw
  # Pad front as asked; pad or crop the back to exactly the rows and columns the blocks read.
  need_h, need_w = 2 * sh * (hb - 1) + big_h, 2 * sw * (wb - 1) + big_w
  x = jnp.pad(x, [(0, 0), (ph[0], max(0, need_h - h - ph[0])), (pw[0], max(0, need_w - w - pw[0])),
                  (0, 0)])[:, :need_h, :need_w]
  blocks = [jnp.pad(kernel, [(sh * a, sh * (1 - a)), (sw * c, sw * (1 - c)), (0, 0), (0, 0)])
            for a in range(2) for c in range(2)]
  big = jnp.stack(blocks, axis=3).reshape(big_h, big_w, cin, 4 * cout)
  y = _plain_conv2d(x, big, (2 * sh, 2 * sw), ((0, 0), (0, 0)))
  y = y.reshape(n, hb, wb, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * hb, 2 * wb, cout)
  return y[:, :ho, :wo]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d_blocked_forward(x, kernel, strides, padding):
  return _blocked_conv2d(x, kernel, strides, padding)


def _blocked_fwd(x, kernel, strides, padding):
  return _blocked_conv2d(x, kernel, strides, padding), (x, kernel)


def _blocked_bwd(strides, padding, residuals, cotangent):
  # The plain conv's gradients: on CPU they are as fast as the blocked conv's or faster (measured).
  _, pullback = jax.vjp(lambda a, b: _plain_conv2d(a, b, strides, padding), *residuals)
  return pullback(cotangent)


_conv2d_blocked_forward.defvjp(_blocked_fwd, _blocked_bwd)


def conv2d_cpu(x: jax.Array, kernel: jax.Array, strides: Sequence[int] = (1, 1),
               padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0))) -> jax.Array:
  """NHWC x HWIO 2-D conv for the 'frames' lowering, the same function as the plain conv.

  XLA's CPU conv runs far below its peak with few output channels. A conv with at most
  BLOCK_MAX_CHANNELS output channels and a kernel wider than 1x1 is therefore computed forward by
  :func:`_blocked_conv2d` (4x the output channels, (kh + sh)(kw + sw) / (kh kw) x the FLOPs), and
  backward by the plain conv's gradients, which are no slower. Measured on the idle 2-core CPU at the
  synthetic default (64 px, width 0.25, 4 clips; plain against blocked): the stem's Conv3d_1a unit
  (16 output channels) 82 -> 47 ms, the I3D to Mixed_4f 94 -> 57 ms, the frozen-encoder train
  step 376 / 352 -> 330 / 299 ms (two runs each, one process per variant). With 48 or 64 output
  channels the gain was within the noise. At full size only Mixed_3b's b2b (32 channels) takes it:
  the full-size forward was 1.76 / 1.63 s before and 1.75 / 1.68 s after, the same.
  """
  strides = tuple(int(s) for s in strides)
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  kh, kw, _, cout = kernel.shape
  if cout <= BLOCK_MAX_CHANNELS and kh * kw > 1:
    return _conv2d_blocked_forward(x, kernel, strides, padding)
  return _plain_conv2d(x, kernel, strides, padding)


def conv3d(x: jax.Array, kernel: jax.Array, strides: Sequence[int] = (1, 1, 1),
           padding: Sequence[tuple[int, int]] = ((0, 0),) * 3, impl: str = "auto") -> jax.Array:
  """3-D convolution (cross-correlation, no bias) in either lowering; see the module docstring.

  Args:
    x: (B, T, H, W, C_in).
    kernel: (kt, kh, kw, C_in, C_out).
    strides: (st, sh, sw).
    padding: explicit zero padding [(front, back)] for T, H and W.
    impl: 'auto', 'native' or 'frames'.

  Returns:
    (B, T', H', W', C_out) with T' = (T + pads - kt) // st + 1 (likewise H', W').
  """
  padding = [tuple(p) for p in padding]
  if resolve_conv_impl(impl) == "native":
    return jax.lax.conv_general_dilated(x, kernel, tuple(strides), padding, dimension_numbers=_DN3)
  b, cin = x.shape[0], x.shape[-1]
  kt, kh, kw, _, cout = kernel.shape
  st = strides[0]
  if padding[0] != (0, 0):
    x = jnp.pad(x, [(0, 0), padding[0], (0, 0), (0, 0), (0, 0)])
  t_out = (x.shape[1] - kt) // st + 1
  # Temporal tap i of output frame j reads padded frame i + st * j: kt strided slices, on channels.
  taps = [jax.lax.slice_in_dim(x, i, i + st * (t_out - 1) + 1, st, axis=1) for i in range(kt)]
  x = taps[0] if kt == 1 else jnp.concatenate(taps, axis=-1)
  x = x.reshape(b * t_out, *x.shape[2:4], kt * cin)
  kernel = kernel.transpose(1, 2, 0, 3, 4).reshape(kh, kw, kt * cin, cout)  # (kh, kw, tap-major C)
  if (kh, kw) == (1, 1) and tuple(strides[1:]) == (1, 1) and padding[1:] == [(0, 0), (0, 0)]:
    y = jnp.einsum("nhwc,co->nhwo", x, kernel[0, 0])  # A pointwise conv is a matmul.
  else:
    y = conv2d_cpu(x, kernel, strides[1:], padding[1:])
  return y.reshape(b, t_out, *y.shape[1:3], cout)


def _window_max(x: jax.Array, axis: int, k: int, s: int, pad: tuple[int, int]) -> jax.Array:
  """Max over windows of k cells at stride s along one axis, padded with -inf."""
  if k == 1 and s == 1:
    return x
  if pad != (0, 0):
    widths = [(0, 0)] * x.ndim
    widths[axis] = pad
    x = jnp.pad(x, widths, constant_values=-jnp.inf)
  n_out = (x.shape[axis] - k) // s + 1
  out = None
  for i in range(k):
    part = jax.lax.slice_in_dim(x, i, i + s * (n_out - 1) + 1, s, axis=axis)
    out = part if out is None else jnp.maximum(out, part)
  return out


def max_pool_same(x: jax.Array, kernel: Sequence[int], strides: Sequence[int],
                  impl: str = "native") -> jax.Array:
  """3-D max-pool with TF SAME padding on (B, T, H, W, C).

  Padded cells are -inf (TensorFlow semantics). pytorch_i3d pads with zeros instead; every I3D
  max-pool follows a ReLU, so its inputs are >= 0 and the two agree. ``impl`` as in :func:`conv3d`
  ('frames': separable running maxima over shifted slices, one axis at a time).
  """
  pads = tf_same_padding(x.shape[1:4], kernel, strides)
  if resolve_conv_impl(impl) == "native":
    return nn.max_pool(x, tuple(kernel), tuple(strides), padding=pads)
  for axis in range(3):
    x = _window_max(x, axis + 1, kernel[axis], strides[axis], pads[axis])
  return x


class Conv3d(nn.Module):
  """3-D conv with explicit padding, optional bias, lowered by :func:`conv3d`.

  Same parameters (``kernel`` (kt, kh, kw, C_in, C_out), ``bias`` (C_out,)) and initialisers as
  ``nn.Conv`` with the same arguments, so checkpoints and imported weights map one to one.
  """

  features: int
  kernel: Sequence[int]
  strides: Sequence[int] = (1, 1, 1)
  padding: Sequence[tuple[int, int]] | str = "SAME"  # explicit pairs, or 'SAME' = TF SAME.
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (B, T, H, W, C_in) -> (B, T', H', W', features)."""
    kernel = self.param("kernel", DEFAULT_KERNEL_INIT, (*self.kernel, x.shape[-1], self.features),
                        jnp.float32)
    pads = self.padding
    if isinstance(pads, str):
      if pads != "SAME":
        raise ValueError(f"Conv3d: padding {pads!r}: use 'SAME' or explicit pairs.")
      pads = tf_same_padding(x.shape[1:4], self.kernel, self.strides)
    y = conv3d(x.astype(self.dtype), kernel.astype(self.dtype), self.strides, pads, self.impl)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(
          self.dtype)
    return y


class SpaceToDepthConv(nn.Module):
  """Stride-2 (all axes) conv without bias, TF SAME padding, run as a stride-1 conv on 2x2x2 blocks.

  Same parameter (``kernel`` (kt, kh, kw, C_in, C_out)) and result as the strided conv. Why: with
  3 input channels the stem's strided conv runs far below peak on CPU (and TPUs pad channels to 128);
  folding 2x2x2 blocks into channels gives 24 input channels, a 4x4x4 kernel and no stride.
  """

  features: int
  kernel: Sequence[int]
  dtype: Dtype = jnp.float32
  impl: str = "auto"  # Lowering of the stride-1 conv (see conv3d).

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (B, T, H, W, C_in) -> (B, ceil(T/2), ceil(H/2), ceil(W/2), features)."""
    b, cin = x.shape[0], x.shape[-1]
    kernel = self.param("kernel", DEFAULT_KERNEL_INIT, (*self.kernel, cin, self.features),
                        jnp.float32)
    pads = tf_same_padding(x.shape[1:4], self.kernel, (2, 2, 2))
    blocks = [(k + 1) // 2 for k in self.kernel]
    outs = [-(-n // 2) for n in x.shape[1:4]]
    # Pad front as TF SAME does; pad or crop the back to exactly 2 * (out + blocks - 1) cells.
    lengths = [2 * (o + nb - 1) for o, nb in zip(outs, blocks)]
    x = jnp.pad(x, [(0, 0), *[(f, max(0, n - f - size)) for (f, _), n, size in
                              zip(pads, lengths, x.shape[1:4])], (0, 0)])
    x = x[:, :lengths[0], :lengths[1], :lengths[2]]
    x = x.reshape(b, lengths[0] // 2, 2, lengths[1] // 2, 2, lengths[2] // 2, 2, cin)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, *(n // 2 for n in lengths), 8 * cin)
    k = jnp.pad(kernel, [(0, 2 * nb - kk) for nb, kk in zip(blocks, self.kernel)] + [(0, 0)] * 2)
    k = k.reshape(blocks[0], 2, blocks[1], 2, blocks[2], 2, cin, self.features)
    k = k.transpose(0, 2, 4, 1, 3, 5, 6, 7).reshape(*blocks, 8 * cin, self.features)
    return conv3d(x.astype(self.dtype), k.astype(self.dtype), (1, 1, 1), ((0, 0),) * 3, self.impl)


class Unit3D(nn.Module):
  """Conv3d (no bias, TF SAME padding) + BatchNorm + ReLU, the pytorch_i3d ``Unit3D``."""

  features: int
  kernel: Sequence[int] = (1, 1, 1)
  strides: Sequence[int] = (1, 1, 1)
  dtype: Dtype = jnp.float32
  impl: str = "auto"  # Lowering of the conv (see conv3d).

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """x: (B, T, H, W, C_in) -> (B, ceil(T/st), ceil(H/sh), ceil(W/sw), features)."""
    if tuple(self.strides) == (2, 2, 2):
      x = SpaceToDepthConv(self.features, tuple(self.kernel), self.dtype, self.impl,
                           name="conv3d")(x)
    else:
      x = Conv3d(self.features, tuple(self.kernel), tuple(self.strides), "SAME", use_bias=False,
                 dtype=self.dtype, impl=self.impl, name="conv3d")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                     dtype=self.dtype, param_dtype=jnp.float32, name="bn")(x)
    return nn.relu(x)


class InceptionModule(nn.Module):
  """Four parallel branches concatenated on channels: 1x1 | 1x1-3x3 | 1x1-3x3 | pool3-1x1."""

  channels: Sequence[int]  # (b0, b1a, b1b, b2a, b2b, b3b), already width-scaled.
  dtype: Dtype = jnp.float32
  impl: str = "auto"  # Lowering of convs and max-pools (see conv3d).

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """x: (B, T, H, W, C_in) -> (B, T, H, W, b0 + b1b + b2b + b3b)."""
    c = dict(zip(BRANCH_NAMES, self.channels))
    unit = lambda name, k: Unit3D(c[name], k, dtype=self.dtype, impl=self.impl, name=name)
    b0 = unit("b0", (1, 1, 1))(x, train)
    b1 = unit("b1b", (3, 3, 3))(unit("b1a", (1, 1, 1))(x, train), train)
    b2 = unit("b2b", (3, 3, 3))(unit("b2a", (1, 1, 1))(x, train), train)
    b3 = unit("b3b", (1, 1, 1))(max_pool_same(x, (3, 3, 3), (1, 1, 1), self.impl), train)
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class InceptionI3d(nn.Module):
  """Inception-I3D up to ``final_endpoint``; returns every endpoint's output.

  Attributes:
    final_endpoint: last layer built, one of VALID_ENDPOINTS (the CLAUS detector uses 'Mixed_4f').
    strides: 'claus' or 'standard' (see STRIDES).
    width: channel multiplier (1.0 = I3D); channels are rounded and at least 1.
    dtype: compute dtype; parameters are always float32.
    conv_impl: lowering of 3-D convs and max-pools, one of CONV_IMPLS (same parameters and results).
  """

  final_endpoint: str = "Mixed_4f"
  strides: str = "claus"
  width: float = 1.0
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, video: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """Runs the encoder.

    Args:
      video: (B, T, H, W, 3) float, scaled to [-1, 1].
      train: BatchNorm uses batch statistics and updates ``batch_stats`` (must be mutable).

    Returns:
      {endpoint: (B, T', H', W', C') in ``dtype``} for every endpoint up to ``final_endpoint``;
      at (8, 224, 224) with 'claus' strides Conv3d_1a_7x7 is (4, 112, 112, 64), Conv3d_2c_3x3
      (2, 56, 56, 192) and Mixed_4f (1, 28, 28, 832).
    """
    if self.final_endpoint not in VALID_ENDPOINTS:
      raise ValueError(f"InceptionI3d: final_endpoint {self.final_endpoint!r} is not one of "
                       f"{VALID_ENDPOINTS}.")
    if self.strides not in STRIDES:
      raise ValueError(f"InceptionI3d: strides {self.strides!r}: use one of {tuple(STRIDES)}.")
    strided = STRIDES[self.strides]
    impl = resolve_conv_impl(self.conv_impl)
    ch = lambda c: scaled_channels(c, self.width)
    unit = lambda c, k, s, name: Unit3D(ch(c), k, s, dtype=self.dtype, impl=impl, name=name)
    x = video.astype(self.dtype)
    out = {}
    for name in VALID_ENDPOINTS:
      if name == "Conv3d_1a_7x7":
        x = unit(64, (7, 7, 7), (2, 2, 2), name)(x, train)
      elif name == "Conv3d_2b_1x1":
        x = unit(64, (1, 1, 1), (1, 1, 1), name)(x, train)
      elif name == "Conv3d_2c_3x3":
        x = unit(192, (3, 3, 3), strided[name], name)(x, train)
      elif name in ("MaxPool3d_2a_3x3", "MaxPool3d_3a_3x3"):
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2), impl)
      elif name == "MaxPool3d_4a_3x3":
        x = max_pool_same(x, (3, 3, 3), strided[name], impl)
      elif name == "MaxPool3d_5a_2x2":
        x = max_pool_same(x, (2, 2, 2), (2, 2, 2), impl)
      else:
        x = InceptionModule(tuple(ch(c) for c in INCEPTION_CHANNELS[name]), dtype=self.dtype,
                            impl=impl, name=name)(x, train)
      out[name] = x
      if name == self.final_endpoint:
        break
    return out
