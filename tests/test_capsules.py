"""EM routing and capsule layers against an independent NumPy implementation of the same equations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from claus_jax.models import capsules


def numpy_em_routing(votes, a_in, beta_u, beta_a, iters, lam, eps=1e-8, cost_scale=0.0,
                     low_cost_wins=False):
  """Loop-per-group float64 reference: REFERENCE.md's M-step (normalised cost) and E-step.

  ``cost_scale > 0``: the cost deviation is multiplied by it instead of divided by its std.
  ``low_cost_wins``: Hinton et al.'s sign, sigmoid(lam (beta_a + (mean - cost) / std)), as the
  TensorFlow capsule code writes it; otherwise the authors' port, beta_a - (mean - cost) / std.
  """
  n, num_in, num_out, dim = votes.shape
  poses = np.zeros((n, num_out, dim))
  acts = np.zeros((n, num_out))
  for g in range(n):
    v = votes[g].astype(np.float64)
    r = np.full((num_in, num_out), 1.0 / num_out)
    for it in range(iters):
      rw = r * a_in[g][:, None]
      r_sum = rw.sum(0)
      mu = np.zeros((num_out, dim))
      var = np.zeros((num_out, dim))
      for c in range(num_out):
        w = rw[:, c] / (r_sum[c] + eps)
        mu[c] = (w[:, None] * v[:, c]).sum(0)
        var[c] = (w[:, None] * (v[:, c] - mu[c]) ** 2).sum(0) + eps
      cost = np.array([((beta_u[c] + np.log(np.sqrt(var[c]))) * r_sum[c]).sum()
                       for c in range(num_out)])
      if cost_scale > 0:
        z = (cost.mean() - cost) * cost_scale
      else:
        z = (cost.mean() - cost) / (math.sqrt(np.mean((cost - cost.mean()) ** 2) + eps) + eps)
      a = 1.0 / (1.0 + np.exp(-lam * ((beta_a + z) if low_cost_wins else (beta_a - z))))
      if it < iters - 1:
        log_ap = np.zeros((num_in, num_out))
        for i in range(num_in):
          for c in range(num_out):
            log_p = np.sum(-(v[i, c] - mu[c]) ** 2 / (2 * var[c]) - np.log(np.sqrt(var[c]))
                           - 0.5 * math.log(2 * math.pi))
            log_ap[i, c] = log_p + math.log(a[c] + eps)
        log_ap -= log_ap.max(1, keepdims=True)
        r = np.exp(log_ap) / np.exp(log_ap).sum(1, keepdims=True)
    poses[g], acts[g] = mu, a
  return poses, acts


@pytest.mark.parametrize("iters,lam,scale,low", [(1, 1.0, 0.0, False), (3, 1.0, 0.0, False),
                                                 (3, 0.01, 0.0, False), (2, 5.0, 0.0, False),
                                                 (3, 1.0, 0.01, False), (2, 1.0, 0.5, False),
                                                 (3, 1.0, 0.0, True), (3, 1.0, 0.01, True)])
def test_em_routing_matches_numpy(iters, lam, scale, low):
  rng = np.random.default_rng(iters)
  n, num_in, num_out, dim = 5, 6, 4, 16
  # Small vote spread, so the E-step's responsibilities are neither uniform nor one-hot.
  votes = rng.normal(size=(n, num_in, num_out, dim)).astype(np.float32) * 0.3
  a_in = rng.uniform(0.05, 1.0, size=(n, num_in)).astype(np.float32)
  beta_u = rng.normal(size=(num_out, dim)).astype(np.float32)
  beta_a = rng.normal(size=(num_out,)).astype(np.float32)
  want_p, want_a = numpy_em_routing(votes, a_in, beta_u, beta_a, iters, lam, cost_scale=scale,
                                    low_cost_wins=low)
  routing = jax.jit(capsules.em_routing, static_argnums=(4, 5),
                    static_argnames=("cost_scale", "low_cost_wins"))
  got_p, got_a = routing(votes, a_in, beta_u, beta_a, iters, lam, cost_scale=scale,
                         low_cost_wins=low)
  assert got_p.shape == (n, num_out, dim) and got_a.shape == (n, num_out)
  np.testing.assert_allclose(np.asarray(got_p), want_p, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got_a), want_a, rtol=1e-4, atol=1e-5)
  # The E-step matters at 3 iterations: one iteration must give a different answer there.
  if iters == 3 and lam == 1.0 and scale == 0.0 and not low:
    p1, _ = capsules.em_routing(votes, a_in, beta_u, beta_a, 1, lam)
    assert np.abs(np.asarray(p1) - want_p).max() > 1e-3


def test_single_input_capsule_pose_is_its_vote():
  # With one input capsule mu must equal its vote exactly and sigma^2 = eps.
  votes = jnp.arange(2 * 1 * 3 * 16, dtype=jnp.float32).reshape(2, 1, 3, 16) / 10
  poses, acts = capsules.em_routing(votes, jnp.ones((2, 1)), jnp.zeros((3, 16)), jnp.zeros(3))
  np.testing.assert_allclose(np.asarray(poses), np.asarray(votes[:, 0]), rtol=1e-6)
  # Equal costs for all outputs: the normalised cost is 0 and every activation is sigmoid(0).
  np.testing.assert_allclose(np.asarray(acts), 0.5, atol=1e-6)


def _caps_loss(layer, variables, poses, acts):
  out_p, out_a = layer.apply(variables, poses, acts)
  return jnp.sum(out_p ** 2) * 1e-3 + jnp.sum(out_a)


@pytest.mark.parametrize("kind", ["random", "zeros"])
def test_conv_capsule_gradients_are_finite(kind):
  layer = capsules.ConvCapsules(num_caps=5, kernel=1, iters=3, coord_add=True)
  shape = (2, 3, 3, 4)
  if kind == "random":
    poses = jax.random.normal(jax.random.key(1), shape + (16,)) * 3
    acts = jax.random.uniform(jax.random.key(2), shape)
  else:
    poses, acts = jnp.zeros(shape + (16,)), jnp.zeros(shape)
  variables = layer.init(jax.random.key(0), poses, acts)
  grads = jax.grad(_caps_loss, argnums=(1, 2, 3))(layer, variables, poses, acts)
  for leaf in jax.tree_util.tree_leaves(grads):
    assert np.all(np.isfinite(np.asarray(leaf)))
  # Random inputs give gradients that are not all zero for every parameter.
  if kind == "random":
    for name, g in grads[0]["params"].items():
      assert np.abs(np.asarray(g)).max() > 0, name


def test_conv_capsules_match_votes_and_routing_per_position():
  """A 2x2 conv-capsule layer equals em_routing on hand-gathered windows (checks the gather)."""
  layer = capsules.ConvCapsules(num_caps=3, kernel=2, iters=2, coord_add=False)
  poses = jax.random.normal(jax.random.key(3), (1, 3, 4, 2, 16))
  acts = jax.random.uniform(jax.random.key(4), (1, 3, 4, 2))
  variables = layer.init(jax.random.key(0), poses, acts)
  out_p, out_a = layer.apply(variables, poses, acts)
  assert out_p.shape == (1, 2, 3, 3, 16) and out_a.shape == (1, 2, 3, 3)
  prm = variables["params"]
  w = np.asarray(prm["weights"])  # (k*k*I, C, 4, 4), window order (dy, dx, i).
  p_np, a_np = np.asarray(poses), np.asarray(acts)
  y, x = 1, 2
  caps = [(dy, dx, i) for dy in range(2) for dx in range(2) for i in range(2)]
  votes = np.stack([np.stack([p_np[0, y + dy, x + dx, i].reshape(4, 4) @ w[j, c] for c in range(3)])
                    for j, (dy, dx, i) in enumerate(caps)]).reshape(1, 8, 3, 16)
  a_win = np.array([[a_np[0, y + dy, x + dx, i] for dy, dx, i in caps]])
  want_p, want_a = numpy_em_routing(votes, a_win, np.asarray(prm["beta_u"]),
                                    np.asarray(prm["beta_a"]), 2, 1.0)
  np.testing.assert_allclose(np.asarray(out_p[0, y, x]), want_p[0], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(out_a[0, y, x]), want_a[0], rtol=1e-4, atol=1e-5)


def test_coord_add_shifts_the_translation_slots_only():
  # One input capsule: the output pose is the vote, so coordinate addition shows directly.
  poses = jax.random.normal(jax.random.key(5), (1, 2, 2, 1, 16))
  acts = jnp.ones((1, 2, 2, 1))
  plain = capsules.ConvCapsules(num_caps=2, coord_add=False)
  coord = capsules.ConvCapsules(num_caps=2, coord_add=True)
  variables = plain.init(jax.random.key(0), poses, acts)
  diff = np.asarray(coord.apply(variables, poses, acts)[0] - plain.apply(variables, poses, acts)[0])
  centres = np.array([0.25, 0.75])
  np.testing.assert_allclose(diff[0, :, :, :, 0], np.broadcast_to(centres[:, None, None], (2, 2, 2)),
                             atol=1e-5)
  np.testing.assert_allclose(diff[0, :, :, :, 1], np.broadcast_to(centres[None, :, None], (2, 2, 2)),
                             atol=1e-5)
  np.testing.assert_allclose(diff[..., 2:], 0.0, atol=1e-5)


def test_primary_capsules_shapes_and_range():
  layer = capsules.PrimaryCapsules(num_caps=3, kernel=3)
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 5))
  variables = layer.init(jax.random.key(1), x)
  poses, acts = layer.apply(variables, x)
  assert poses.shape == (2, 4, 4, 3, 16) and acts.shape == (2, 4, 4, 3)
  assert float(acts.min()) > 0.0 and float(acts.max()) < 1.0
  # Pose channel 16*j+h belongs to capsule j (the authors' layout).
  conv = variables["params"]["pose"]
  patch = np.asarray(x[0, 1:4, 2:5]).reshape(-1)
  kernel = np.asarray(conv["kernel"]).reshape(-1, 48)
  want = patch @ kernel + np.asarray(conv["bias"])
  np.testing.assert_allclose(np.asarray(poses[0, 1, 2]).reshape(-1), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", ["native", "frames"])
def test_primary_capsule_convs_match_nn_conv_in_both_lowerings(impl):
  """Same parameter tree, initial values and outputs as the nn.Conv the layer used to be built on."""
  import flax.linen as nn

  x = jax.random.normal(jax.random.key(0), (2, 7, 6, 5))
  ref = nn.Conv(4, (3, 3), padding="VALID", kernel_init=capsules.DEFAULT_KERNEL_INIT)
  ours = capsules.ValidConv2d(4, 3, impl=impl)
  ref_vars = ref.init(jax.random.key(1), x)
  ours_vars = ours.init(jax.random.key(1), x)
  jax.tree.map(np.testing.assert_array_equal, ref_vars, ours_vars)
  ref_vars = {"params": {"kernel": ref_vars["params"]["kernel"],
                         "bias": jnp.arange(4.0)}}  # A bias that shows.
  want = np.asarray(ref.apply(ref_vars, x))
  got = np.asarray(ours.apply(ref_vars, x))
  assert got.shape == (2, 5, 4, 4)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # bfloat16 accumulates in float32 in both lowerings.
  low = capsules.ValidConv2d(4, 3, dtype=jnp.bfloat16, impl=impl).apply(ref_vars, x)
  assert low.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(low, np.float32), want, rtol=0.05, atol=0.05)


def test_the_em_sign_gives_agreeing_votes_the_higher_activation():
  """Two output capsules, equal offsets: one gets tight votes (low cost), one scattered votes."""
  rng = np.random.default_rng(0)
  votes = np.zeros((1, 8, 2, 16), np.float32)
  votes[0, :, 0] = 1.0 + 0.01 * rng.normal(size=(8, 16))
  votes[0, :, 1] = rng.normal(size=(8, 16)) * 2.0
  args = (jnp.asarray(votes), jnp.ones((1, 8)), jnp.zeros((2, 16)), jnp.zeros((2,)), 1, 1.0)
  _, port = capsules.em_routing(*args)
  _, em = capsules.em_routing(*args, low_cost_wins=True)
  assert float(em[0, 0]) > 0.5 > float(em[0, 1])
  assert float(port[0, 0]) < 0.5 < float(port[0, 1])


def numpy_authors_routing(votes, a_in, beta_u, beta_a, iters, lam=1e-6, eps=1e-8):
  """float64 transcription of the authors' ConvCaps.caps_em_routing (aayushjr/HybridCLAUS,
  ucf101_capsules.py), batched as theirs: r (b, B, C); their m_step and e_step line by line."""
  v = votes.astype(np.float64)
  b, num_in, num_out, _ = v.shape
  a = a_in.astype(np.float64)[:, :, None]  # (b, B, 1)
  r = np.full((b, num_in, num_out), 1.0 / num_out)
  for it in range(iters):
    r = r * a
    r = r / (r.sum(axis=2, keepdims=True) + eps)
    r_sum = r.sum(axis=1, keepdims=True)  # (b, 1, C)
    coeff = (r / (r_sum + eps))[..., None]
    mu = np.sum(coeff * v, axis=1, keepdims=True)  # (b, 1, C, D)
    sigma_sq = np.sum(coeff * (v - mu) ** 2, axis=1, keepdims=True) + eps
    cost_h = ((beta_u + np.log(np.sqrt(sigma_sq[:, 0]))) * r_sum[:, 0, :, None]).sum(axis=2)
    cost_mean = cost_h.mean(axis=1, keepdims=True)
    cost_std = np.sqrt(np.sum(cost_h - cost_mean, axis=1, keepdims=True) ** 2 / num_out + eps)
    a_out = 0.5 * (1.0 + np.tanh(0.5 * lam * (beta_a - (cost_mean - cost_h) / (cost_std + eps))))
    if it < iters - 1:
      ln_p = (-(v - mu) ** 2 / (2 * sigma_sq) - np.log(np.sqrt(sigma_sq))
              - 0.5 * math.log(2 * math.pi))
      ln_ap = ln_p.sum(axis=3) + np.log(eps + a_out[:, None, :])
      ln_ap -= ln_ap.max(axis=2, keepdims=True)
      r = np.exp(ln_ap) / np.exp(ln_ap).sum(axis=2, keepdims=True)
  return mu[:, 0], a_out


@pytest.mark.parametrize("iters,lam", [(1, 1e-6), (3, 1e-6), (3, 1.0)])
def test_authors_routing_matches_a_transcription_of_their_code(iters, lam):
  """model.routing='authors' with routing_sign='port' is the authors' ConvCaps routing."""
  rng = np.random.default_rng(10 + iters)
  n, num_in, num_out, dim = 4, 6, 5, 16
  votes = rng.normal(size=(n, num_in, num_out, dim)).astype(np.float32) * 0.3
  a_in = rng.uniform(0.05, 1.0, size=(n, num_in)).astype(np.float32)
  beta_u = rng.normal(size=(num_out, dim)).astype(np.float32)
  beta_a = rng.normal(size=(num_out,)).astype(np.float32)
  want_p, want_a = numpy_authors_routing(votes, a_in, beta_u, beta_a, iters, lam)
  got_p, got_a = capsules.em_routing(votes, a_in, beta_u, beta_a, iters, lam,
                                     low_cost_wins=False, authors_form=True)
  # Their cost "std" is sqrt((sum of deviations)^2 / C + eps): the float32 rounding of that ~0 sum
  # (costs ~100) moves it by ~1% against float64, hence a looser bound than the 'paper' form's.
  np.testing.assert_allclose(np.asarray(got_p), want_p, rtol=1e-3, atol=5e-4)
  np.testing.assert_allclose(np.asarray(got_a), want_a, rtol=1e-3, atol=5e-4)
  # Their renormalisation cancels a_in: scaling every input activation changes nothing.
  p2, a2 = capsules.em_routing(votes, 0.5 * a_in, beta_u, beta_a, iters, lam, authors_form=True)
  np.testing.assert_allclose(np.asarray(p2), np.asarray(got_p), rtol=1e-3, atol=5e-4)
  np.testing.assert_allclose(np.asarray(a2), np.asarray(got_a), rtol=1e-3, atol=5e-4)
  if lam == 1e-6:  # Their activations sit near 0.5 and move with the cost, not with beta_a.
    assert np.abs(np.asarray(got_a) - 0.5).max() < 0.2
  with pytest.raises(ValueError, match="cost_scale"):
    capsules.em_routing(votes, a_in, beta_u, beta_a, iters, lam, cost_scale=0.01, authors_form=True)
