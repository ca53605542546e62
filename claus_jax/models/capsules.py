"""Matrix capsules with EM routing (Hinton et al. 2018), in the normalised-cost form of the CLAUS code.

Capsules carry a 4x4 pose matrix (stored flat, 16 values) and an activation in [0, 1]. Layouts:
  poses:       (B, H, W, N_caps, 16)
  activations: (B, H, W, N_caps)

EM routing (REFERENCE.md "Model"), for votes V[i, c, h] of input capsule i for output capsule c:
  M-step:  R <- R * a_in;  r_sum_c = sum_i R_ic;  mu_c = sum_i R_ic V_ic / r_sum_c;
           sigma_c^2 = sum_i R_ic (V_ic - mu_c)^2 / r_sum_c + eps;
           cost_c = sum_h (beta_u[c, h] + log sigma_ch) r_sum_c;
           a_c = sigmoid(lambda (beta_a[c] + s (mean_c(cost) - cost_c) / (std_c(cost) + eps)))
  E-step:  log p_ic = sum_h -(V_ich - mu_ch)^2 / (2 sigma_ch^2) - log sigma_ch - log(2 pi) / 2;
           R_ic = softmax_c(log p_ic + log(a_c + eps))   (log-sum-exp, never exp of raw log p)
The routing runs in float32 whatever the compute dtype: it takes logs of variances.

The sign s (``config.model.routing_sign``): 'em' (s = +1, the default) is EM routing as published
and as in the TensorFlow capsule code this model descends from (VideoCapsuleNet): agreeing votes, lower
cost, higher activation. 'port' (s = -1) is the authors' PyTorch port, where a capsule whose votes
disagree more gets the higher activation.

Two forms of the M-step (``config.model.routing``):
  * 'paper' (default): as above, R weighted by a_in; the costs standardised by their true standard
    deviation over the output capsules (or, with ``routing_cost_scale`` > 0, multiplied by that fixed
    scale). lambda defaults to 1.0: with a true standard deviation, the authors' lambda = 1e-6 would
    pin every activation at 0.5 and the class output could not be trained.
  * 'authors' (the authors' ConvCaps): after R <- R * a_in, R is renormalised over the output
    capsules, R_ic <- R_ic / (sum_c R_ic + eps), which cancels the input activations; the cost spread
    is sqrt((sum_c (cost_c - mean))^2 / C + eps), a square of a sum that is ~0, so this "std" is
    ~sqrt(eps) = 1e-4. With their lambda = 1e-6 (the 'authors' preset) the activation is then
    sigmoid(1e-6 beta_a +- ~0.01 (cost - mean)): beta_a has almost no effect. (A 'paper' routing with
    lambda 1e-6 and cost scale 1e4 matches it when every a_in = 1.)
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from claus_jax.models.i3d import DEFAULT_KERNEL_INIT, fast_init, resolve_conv_impl

Dtype = Any

POSE_SIZE = 4
POSE_DIM = POSE_SIZE * POSE_SIZE
EPSILON = 1e-8
_LOG_2PI = math.log(2.0 * math.pi)
_unit_normal = fast_init(nn.initializers.normal(1.0))  # As the authors' torch.randn.


def em_routing(votes: jax.Array, a_in: jax.Array, beta_u: jax.Array, beta_a: jax.Array,
               iters: int = 3, inverse_temperature: float = 1.0,
               eps: float = EPSILON, cost_scale: float = 0.0,
               low_cost_wins: bool = False,
               authors_form: bool = False) -> tuple[jax.Array, jax.Array]:
  """EM routing between I input and C output capsules, vectorised over N independent groups.

  Args:
    votes: (N, I, C, D) float32, input capsule i's vote for output capsule c (D = 16).
    a_in: (N, I) input activations in [0, 1].
    beta_u: (C, D) per-output-capsule cost offset.
    beta_a: (C,) per-output-capsule activation offset.
    iters: EM iterations (M-steps); the E-step runs between them.
    inverse_temperature: lambda of the activation sigmoid.
    eps: numerical guard in every division, log and square root.
    cost_scale: 0 = divide ``cost - mean`` by the standard deviation of the costs over the output
      capsules (REFERENCE.md); > 0 = multiply it by this fixed scale instead.
    low_cost_wins: the sign of the normalised cost. False = the authors' PyTorch port,
      ``sigmoid(lambda (beta_a - (mean - cost) / std))``: more disagreement, higher activation.
      True = EM routing as in Hinton et al. and the TensorFlow capsule code the model descends from,
      ``sigmoid(lambda (beta_a + (mean - cost) / std))``: agreeing votes, higher activation.
    authors_form: the authors' M-step (module docstring): R renormalised over the outputs after the
      a_in weighting, and their cost "std". Needs ``cost_scale == 0``.

  Returns:
    poses (N, C, D) = mu, activations (N, C) in [0, 1]; both float32.
  """
  votes = votes.astype(jnp.float32)
  a_in = a_in.astype(jnp.float32)
  n, i, c, _ = votes.shape
  del n, i

  if authors_form and cost_scale > 0:
    raise ValueError("em_routing: authors_form standardises the costs; use cost_scale=0 with it.")

  def m_step(r):
    r = r * a_in[:, :, None]
    if authors_form:
      r = r / (jnp.sum(r, axis=2, keepdims=True) + eps)
    r_sum = jnp.sum(r, axis=1)  # (N, C)
    coeff = r / (r_sum[:, None, :] + eps)
    mu = jnp.einsum("nic,nicd->ncd", coeff, votes)
    sigma_sq = jnp.einsum("nic,nicd->ncd", coeff, jnp.square(votes - mu[:, None])) + eps
    cost = jnp.sum((beta_u + 0.5 * jnp.log(sigma_sq)) * r_sum[..., None], axis=-1)  # (N, C)
    cost_mean = jnp.mean(cost, axis=-1, keepdims=True)
    if cost_scale > 0:
      normalised = (cost_mean - cost) * cost_scale
    elif authors_form:  # The square of the sum of deviations (~0), not their sum of squares.
      spread = jnp.sqrt(jnp.square(jnp.sum(cost - cost_mean, axis=-1, keepdims=True)) / c + eps)
      normalised = (cost_mean - cost) / (spread + eps)
    else:
      # eps inside the root: equal costs (e.g. an all-zero input) would give an infinite gradient.
      cost_std = jnp.sqrt(jnp.mean(jnp.square(cost - cost_mean), axis=-1, keepdims=True) + eps)
      normalised = (cost_mean - cost) / (cost_std + eps)
    a_out = jax.nn.sigmoid(inverse_temperature * (beta_a + normalised if low_cost_wins
                                                  else beta_a - normalised))
    return mu, sigma_sq, a_out

  def e_step(mu, sigma_sq, a_out):
    sq = jnp.square(votes - mu[:, None]) / (2.0 * sigma_sq[:, None])
    log_p = -jnp.sum(sq + 0.5 * jnp.log(sigma_sq[:, None]) + 0.5 * _LOG_2PI, axis=-1)  # (N, I, C)
    log_ap = log_p + jnp.log(a_out + eps)[:, None, :]
    return jnp.exp(log_ap - jax.nn.logsumexp(log_ap, axis=-1, keepdims=True))

  r = jnp.full(votes.shape[:3], 1.0 / c, jnp.float32)
  for it in range(iters):  # A handful of unrolled iterations; XLA fuses them.
    mu, sigma_sq, a_out = m_step(r)
    if it < iters - 1:
      r = e_step(mu, sigma_sq, a_out)
  return mu, a_out


def valid_conv2d(x: jax.Array, kernel: jax.Array, impl: str = "auto") -> jax.Array:
  """k x k VALID 2-D convolution (no bias), ``x (B, H, W, C_in)``, ``kernel (k, k, C_in, C_out)``.

  ``impl`` (i3d.CONV_IMPLS): 'native' is one ``lax.conv_general_dilated``; 'frames' (what 'auto'
  picks on CPU) sums k * k matmuls of the shifted input, accumulated in float32. Same result within
  float32 reordering. Why: XLA's CPU convolution runs the primary capsules' 9x9 conv from 832
  channels far below its matmul speed (``bench model --profile``: 25 against 110 GFLOP/s).
  """
  if resolve_conv_impl(impl) == "native":
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  kh, kw = kernel.shape[:2]
  ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  out = None
  for dy in range(kh):
    for dx in range(kw):
      term = jnp.einsum("bhwc,co->bhwo", x[:, dy:dy + ho, dx:dx + wo], kernel[dy, dx],
                        preferred_element_type=jnp.float32)
      out = term if out is None else out + term
  return out.astype(x.dtype)


class ValidConv2d(nn.Module):
  """``nn.Conv(features, (k, k), padding='VALID')`` with the same parameters (``kernel``, ``bias``)
  and initialisers, lowered by :func:`valid_conv2d`."""

  features: int
  kernel: int
  dtype: Dtype = jnp.float32
  kernel_init: Any = DEFAULT_KERNEL_INIT
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (self.kernel, self.kernel, x.shape[-1],
                                                     self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    y = valid_conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.impl)
    return y + bias.astype(self.dtype)


class PrimaryCapsules(nn.Module):
  """Pose conv + sigmoid activation conv (VALID, with bias) on a 2-D feature map.

  Attributes:
    num_caps: capsule types P.
    kernel: square VALID kernel (9 at 224x224 input).
    kernel_init: of both convs (lecun_normal; the authors' code: N(0, 0.1)).
    impl: lowering of both convs (:func:`valid_conv2d`); same parameters and results.
  """

  num_caps: int
  kernel: int
  dtype: Dtype = jnp.float32
  kernel_init: Any = DEFAULT_KERNEL_INIT
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x: (B, H, W, C_in) -> poses (B, H', W', P, 16), activations (B, H', W', P); H' = H - k + 1."""
    conv = lambda features, name: ValidConv2d(features, self.kernel, self.dtype, self.kernel_init,
                                              self.impl, name=name)
    poses = conv(self.num_caps * POSE_DIM, "pose")(x)
    acts = jax.nn.sigmoid(conv(self.num_caps, "activation")(x))
    return poses.reshape(*poses.shape[:-1], self.num_caps, POSE_DIM), acts


class ConvCapsules(nn.Module):
  """Convolutional capsules (k x k, stride 1, VALID) with EM routing.

  Each output position routes the k*k*I capsules under its window to C output capsules; transform
  matrices are shared over positions. Parameters: ``weights`` (k*k*I, C, 4, 4), ``beta_u`` (C, 16),
  ``beta_a`` (C,).

  Attributes:
    num_caps: output capsule types C (the classes for the class-capsule layer).
    kernel: square kernel (1 for the CLAUS class capsules).
    iters: EM iterations.
    coord_add: add each output cell's scaled (row, col) centre, in [0, 1], to vote entries 0 and 1
      (the pose's translation slots), so poses know where they are.
    inverse_temperature: lambda of the activation sigmoid.
  """

  num_caps: int
  kernel: int = 1
  iters: int = 3
  coord_add: bool = False
  inverse_temperature: float = 1.0
  cost_scale: float = 0.0  # em_routing: 0 = standardise the costs, > 0 = this fixed scale.
  low_cost_wins: bool = False  # em_routing: the sign of the normalised cost (False = authors' port).
  authors_form: bool = False  # em_routing: the authors' M-step.

  @nn.compact
  def __call__(self, poses: jax.Array, acts: jax.Array) -> tuple[jax.Array, jax.Array]:
    """poses: (B, H, W, I, 16), acts: (B, H, W, I) -> (B, H', W', C, 16), (B, H', W', C) float32."""
    b, h, w, i, d = poses.shape
    if d != POSE_DIM:
      raise ValueError(f"ConvCapsules: poses must have {POSE_DIM} values per capsule, got {d}.")
    k, c = self.kernel, self.num_caps
    oh, ow = h - k + 1, w - k + 1
    weights = self.param("weights", _unit_normal, (k * k * i, c, POSE_SIZE, POSE_SIZE),
                         jnp.float32)
    beta_u = self.param("beta_u", _unit_normal, (c, POSE_DIM), jnp.float32)
    beta_a = self.param("beta_a", _unit_normal, (c,), jnp.float32)
    poses = poses.astype(jnp.float32)
    acts = acts.astype(jnp.float32)
    if k > 1:  # Gather the k*k windows: a loop over kernel offsets, not over positions.
      poses = jnp.concatenate([poses[:, y:y + oh, x:x + ow] for y in range(k) for x in range(k)], 3)
      acts = jnp.concatenate([acts[:, y:y + oh, x:x + ow] for y in range(k) for x in range(k)], 3)
    mats = poses.reshape(b, oh, ow, k * k * i, POSE_SIZE, POSE_SIZE)
    votes = jnp.einsum("bhwipq,icqr->bhwicpr", mats, weights).reshape(b, oh, ow, k * k * i, c,
                                                                        POSE_DIM)
    if self.coord_add:
      rows = (jnp.arange(oh, dtype=jnp.float32) + 0.5) / oh
      cols = (jnp.arange(ow, dtype=jnp.float32) + 0.5) / ow
      offset = jnp.zeros((oh, ow, POSE_DIM), jnp.float32)
      offset = offset.at[:, :, 0].set(rows[:, None]).at[:, :, 1].set(cols[None, :])
      votes = votes + offset[None, :, :, None, None, :]
    out_poses, out_acts = em_routing(votes.reshape(b * oh * ow, k * k * i, c, POSE_DIM),
                                     acts.reshape(b * oh * ow, k * k * i), beta_u, beta_a,
                                     self.iters, self.inverse_temperature,
                                     cost_scale=self.cost_scale,
                                     low_cost_wins=self.low_cost_wins,
                                     authors_form=self.authors_form)
    return out_poses.reshape(b, oh, ow, c, POSE_DIM), out_acts.reshape(b, oh, ow, c)
