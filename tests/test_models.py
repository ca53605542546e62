"""The I3D encoder and the CLAUS detector: full-size shapes by eval_shape, a tiny model for real runs."""

import flax.linen as flax_linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from claus_jax import configlib
from claus_jax import models
from claus_jax.models import build_model, count_params, i3d, preprocess


def _config(frame_size, width=1.0, num_classes=24, primary_caps=32, **model):
  c = configlib.base_config()
  c.data.frame_size = frame_size
  c.model.num_classes = num_classes
  c.model.width = width
  c.model.primary_caps = primary_caps
  for key, value in model.items():
    c.model[key] = value
  return c


def _abstract_init(model, frame_size):
  video = jax.ShapeDtypeStruct((1, 8, frame_size, frame_size, 3), jnp.float32)
  init = lambda key, x: model.init({"params": key, "dropout": key}, x, train=False)
  return jax.eval_shape(init, jax.random.key(0), video), video


def test_full_size_shapes_and_parameter_count():
  model = build_model(_config(224))
  variables, video = _abstract_init(model, 224)
  params = variables["params"]
  parts = {name: count_params(tree) for name, tree in params.items()}
  # REFERENCE.md: I3D to Mixed_4f 7.53 M, primary capsules 36.66 M, class capsules 12.7 k,
  # decoder about 3.8 M, 48.0 M in all.
  assert parts["encoder"] == pytest.approx(7.53e6, rel=5e-3)
  assert parts["primary"] == pytest.approx(36.66e6, rel=1e-3)
  assert parts["class_caps"] == 32 * 24 * 16 + 24 * 16 + 24
  assert parts["decoder"] == pytest.approx(3.8e6, rel=1e-2)
  assert count_params(params) == pytest.approx(48.0e6, rel=1e-2)
  assert set(variables) == {"params", "batch_stats"}

  ends = jax.eval_shape(lambda v, x: model.apply(v, x, method=lambda m, x: m.encoder(x, False)),
                        variables, video)
  want = {"Conv3d_1a_7x7": (4, 112, 112, 64), "MaxPool3d_2a_3x3": (4, 56, 56, 64),
          "Conv3d_2b_1x1": (4, 56, 56, 64), "Conv3d_2c_3x3": (2, 56, 56, 192),
          "MaxPool3d_3a_3x3": (2, 28, 28, 192), "Mixed_3b": (2, 28, 28, 256),
          "Mixed_3c": (2, 28, 28, 480), "MaxPool3d_4a_3x3": (1, 28, 28, 480),
          "Mixed_4b": (1, 28, 28, 512), "Mixed_4c": (1, 28, 28, 512), "Mixed_4d": (1, 28, 28, 512),
          "Mixed_4e": (1, 28, 28, 528), "Mixed_4f": (1, 28, 28, 832)}
  assert {k: v.shape[1:] for k, v in ends.items()} == want

  feats = jax.eval_shape(lambda v, x: model.apply(v, x, method="encode"), variables, video)
  assert {k: v.shape for k, v in feats.items()} == {
      "Mixed_4f": (1, 1, 28, 28, 832), "skip_up112": (1, 4, 112, 112, 64),
      "skip_up224": (1, 8, 224, 224, 128)}
  caps = jax.eval_shape(
      lambda v, f: model.apply(v, f, method=lambda m, f: m.primary(f["Mixed_4f"][:, 0])),
      variables, feats)
  assert caps[0].shape == (1, 20, 20, 32, 16) and caps[1].shape == (1, 20, 20, 32)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, video)
  assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
      "seg_logits": ((1, 8, 224, 224), jnp.float32), "class_probs": ((1, 24), jnp.float32),
      "latent": ((1, 24 * 17), jnp.float32)}
  kernel = params["primary"]["pose"]["kernel"]
  assert kernel.shape == (9, 9, 832, 512)


@pytest.mark.parametrize("frame_size,kernel,grid", [(224, 9, 20), (112, 4, 11), (64, 3, 6),
                                                    (32, 1, 4)])
def test_smaller_inputs_decode_to_the_input_size(frame_size, kernel, grid):
  geo = models.geometry(frame_size)
  assert (geo["primary_kernel"], geo["grid"]) == (kernel, grid)
  model = build_model(_config(frame_size, width=0.25, num_classes=8, primary_caps=4))
  variables, video = _abstract_init(model, frame_size)
  assert variables["params"]["primary"]["pose"]["kernel"].shape[:2] == (kernel, kernel)
  out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, video)
  assert out["seg_logits"].shape == (1, 8, frame_size, frame_size)
  assert out["class_probs"].shape == (1, 8) and out["latent"].shape == (1, 8 * 17)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  model = build_model(_config(64, width=0.25, num_classes=8, dtype="bfloat16"))
  variables, video = _abstract_init(model, 64)
  assert {x.dtype for x in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
  feats = jax.eval_shape(lambda v, x: model.apply(v, x, method="encode"), variables, video)
  assert feats["Mixed_4f"].dtype == jnp.bfloat16
  out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, video)
  assert {v.dtype for v in out.values()} == {jnp.dtype(jnp.float32)}


def test_standard_strides_and_config_errors():
  enc = i3d.InceptionI3d("Mixed_4f", strides="standard")
  x = jax.ShapeDtypeStruct((1, 8, 224, 224, 3), jnp.float32)
  ends = jax.eval_shape(lambda x: enc.init_with_output(jax.random.key(0), x)[0], x)
  assert ends["Conv3d_2c_3x3"].shape == (1, 4, 56, 56, 192)
  assert ends["MaxPool3d_4a_3x3"].shape == (1, 2, 14, 14, 480)
  assert ends["Mixed_4f"].shape == (1, 2, 14, 14, 832)
  full = i3d.InceptionI3d("Mixed_5c", strides="standard")
  assert jax.eval_shape(lambda x: full.init_with_output(jax.random.key(0), x)[0],
                        x)["Mixed_5c"].shape == (1, 1, 7, 7, 1024)
  with pytest.raises(configlib.ConfigError, match="strides"):
    build_model(_config(224, strides="standard"))
  with pytest.raises(ValueError, match="final_endpoint"):
    jax.eval_shape(lambda x: i3d.InceptionI3d("Logits").init(jax.random.key(0), x), x)


def test_width_multiplier_rounds_and_keeps_one_channel():
  assert i3d.scaled_channels(64, 0.125) == 8
  assert i3d.scaled_channels(16, 0.01) == 1
  assert i3d.scaled_channels(24, 0.25) == 6


@pytest.mark.parametrize("size,k,s,want", [(8, 7, 2, (2, 3)), (7, 3, 2, (1, 1)), (224, 3, 2, (0, 1)),
                                           (4, 3, 1, (1, 1)), (2, 3, 2, (0, 1)), (5, 1, 1, (0, 0)),
                                           (3, 2, 2, (0, 1))])
def test_tf_same_padding(size, k, s, want):
  # By hand: total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0); front = total // 2.
  assert i3d.tf_same_padding([size], [k], [s]) == [want]


@pytest.mark.parametrize("impl", ["native", "frames"])
def test_max_pool_same_matches_numpy(impl):
  x = jax.random.normal(jax.random.key(0), (1, 3, 5, 4, 2))
  got = np.asarray(i3d.max_pool_same(x, (3, 3, 3), (2, 2, 1), impl))
  xn = np.asarray(x)
  pads = i3d.tf_same_padding(x.shape[1:4], (3, 3, 3), (2, 2, 1))
  padded = np.pad(xn, [(0, 0), *pads, (0, 0)], constant_values=-np.inf)
  out_shape = [int(np.ceil(n / s)) for n, s in zip(x.shape[1:4], (2, 2, 1))]
  assert got.shape == (1, *out_shape, 2)
  for t in range(out_shape[0]):
    for h in range(out_shape[1]):
      for w in range(out_shape[2]):
        win = padded[0, 2 * t:2 * t + 3, 2 * h:2 * h + 3, w:w + 3]
        np.testing.assert_allclose(got[0, t, h, w], win.max(axis=(0, 1, 2)))


def test_preprocess_range():
  video = np.array([0, 127, 255], np.uint8).reshape(1, 1, 3)
  np.testing.assert_allclose(np.asarray(preprocess(video)).ravel(), [-1.0, 127 / 127.5 - 1, 1.0],
                             atol=1e-6)


# ---- a tiny detector that really runs (the synthetic smoke geometry) ----

@pytest.fixture(scope="module")
def tiny():
  """The model, its variables, a video and jitted entry points shared by the tests (compile once)."""
  config = _config(32, width=0.125, num_classes=8, primary_caps=8)
  model = build_model(config)
  video = jax.random.uniform(jax.random.key(7), (2, 8, 32, 32, 3), minval=-1.0, maxval=1.0)
  init = jax.jit(lambda k: model.init({"params": k, "dropout": k}, video, train=False))
  fns = {
      "apply": jax.jit(lambda v, x, k, train: model.apply(v, x, train=train, rngs={"dropout": k},
                                                          mutable=["batch_stats"]),
                       static_argnums=3),
      "encode": jax.jit(lambda v, x, train: model.apply(v, x, train=train, method="encode",
                                                        mutable=["batch_stats"])[0],
                        static_argnums=2),
      "head": jax.jit(lambda v, f, k, train: model.apply(v, f, train=train, rngs={"dropout": k},
                                                         method="head"), static_argnums=3),
  }
  return model, init(jax.random.key(0)), video, fns


def test_tiny_forward_outputs(tiny):
  _, variables, video, fns = tiny
  out, _ = fns["apply"](variables, video, jax.random.key(0), False)
  assert out["seg_logits"].shape == (2, 8, 32, 32)
  assert out["class_probs"].shape == (2, 8) and out["latent"].shape == (2, 8 * 17)
  probs = np.asarray(out["class_probs"])
  assert np.all((probs >= 0) & (probs <= 1))
  for v in out.values():
    assert v.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(v)))
  # train=False is deterministic and ignores the dropout rng.
  again, _ = fns["apply"](variables, video, jax.random.key(3), False)
  for k in out:
    np.testing.assert_array_equal(np.asarray(out[k]), np.asarray(again[k]))
  # latent = grid max of (class poses, class activations): its activation part bounds class_probs.
  assert np.all(np.asarray(out["latent"])[:, 8 * 16:] >= probs - 1e-6)
  # head(train=False) on inference features is the same deterministic forward.
  clean_head = fns["head"](variables, fns["encode"](variables, video, False), jax.random.key(4),
                           False)
  for k in out:
    np.testing.assert_allclose(np.asarray(clean_head[k]), np.asarray(out[k]), rtol=1e-5, atol=1e-5)


def test_dropout_keys_and_encode_head_split(tiny):
  model, variables, video, fns = tiny
  (a, upd_a), (b, _), (c, _) = (fns["apply"](variables, video, jax.random.key(k), True)
                                for k in (1, 1, 2))
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
  assert np.abs(np.asarray(a["seg_logits"]) - np.asarray(c["seg_logits"])).max() > 1e-6
  assert np.abs(np.asarray(a["latent"]) - np.asarray(c["latent"])).max() > 1e-6
  # BatchNorm statistics moved in training mode.
  old = jax.tree_util.tree_leaves(variables["batch_stats"])
  new = jax.tree_util.tree_leaves(upd_a["batch_stats"])
  assert any(np.abs(np.asarray(o) - np.asarray(n)).max() > 0 for o, n in zip(old, new))

  # encode (training BN) + head with the same dropout key == __call__.
  split = fns["head"](variables, fns["encode"](variables, video, True), jax.random.key(1), True)
  for k in a:
    np.testing.assert_allclose(np.asarray(split[k]), np.asarray(a[k]), rtol=1e-5, atol=1e-5)

  # MC-dropout mode: inference encoder once, head vmapped over keys with no mutable collection.
  feats = fns["encode"](variables, video, False)
  keys = jax.random.split(jax.random.key(5), 3)
  passes = jax.jit(jax.vmap(lambda k: model.apply(variables, feats, train=True,
                                                  rngs={"dropout": k}, method="head")))(keys)
  assert passes["seg_logits"].shape == (3, 2, 8, 32, 32)
  assert np.abs(np.asarray(passes["seg_logits"][0] - passes["seg_logits"][1])).max() > 1e-6
  one = fns["head"](variables, feats, keys[2], True)
  np.testing.assert_allclose(np.asarray(passes["seg_logits"][2]), np.asarray(one["seg_logits"]),
                             rtol=1e-5, atol=1e-5)


def test_dropout_drops_whole_feature_maps():
  from claus_jax.models.detector import channel_dropout
  x = jnp.ones((2, 3, 4, 5, 64))
  y = np.asarray(channel_dropout(0.5, "d").apply({}, x, deterministic=False,
                                                 rngs={"dropout": jax.random.key(0)}))
  per_map = y.reshape(2, -1, 64)
  # Each (clip, channel) map is all zeros or all 2 (= 1 / (1 - rate)).
  assert np.all(per_map.min(1) == per_map.max(1))
  assert set(np.unique(per_map)) == {0.0, 2.0}


def test_tiny_backward_is_finite(tiny):
  model, variables, video, _ = tiny
  labels = jax.nn.one_hot(jnp.array([1, 3]), 8)

  def loss(params, x):
    out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                         rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"])
    return (jnp.mean(jax.nn.sigmoid(out["seg_logits"])) + jnp.mean((out["class_probs"] - labels) ** 2)
            + 1e-3 * jnp.mean(out["latent"] ** 2))

  grad = jax.jit(jax.grad(loss))
  for x in (video, jnp.zeros_like(video)):
    grads = grad(variables["params"], x)
    for name, part in grads.items():
      leaves = [np.asarray(g) for g in jax.tree_util.tree_leaves(part)]
      assert all(np.all(np.isfinite(g)) for g in leaves), name
      # An all-zero clip is constant after every BatchNorm, so only finiteness is asked of it.
      if x is video:
        assert any(np.abs(g).max() > 0 for g in leaves), name


@pytest.mark.parametrize("impl", ["native", "frames"])
def test_upconv_matches_a_direct_transposed_convolution(impl):
  """UpConv3d == PyTorch ConvTranspose3d(k=3, s=2, p=1, output_padding=1), by scatter-add in NumPy."""
  from claus_jax.models.detector import UpConv3d
  layer = UpConv3d(3, 2, impl=impl)
  x = jax.random.normal(jax.random.key(0), (1, 2, 3, 2, 2))
  variables = layer.init(jax.random.key(1), x)
  variables = jax.tree_util.tree_map(lambda a: a + 0.1, variables)  # Non-zero bias.
  got = np.asarray(layer.apply(variables, x))
  kernel = np.asarray(variables["params"]["kernel"])
  xn = np.asarray(x)[0]
  want = np.zeros((4 + 2, 6 + 2, 4 + 2, 3))  # One cell of slack each side for the taps.
  for t, hh, ww in np.ndindex(2, 3, 2):
    for j, k, l in np.ndindex(3, 3, 3):
      # Transposed conv: input i feeds output o = 2 i + j - padding (padding 1); +1 for the slack.
      want[2 * t + j, 2 * hh + k, 2 * ww + l] += xn[t, hh, ww] @ kernel[j, k, l]
  want = want[1:5, 1:7, 1:5] + np.asarray(variables["params"]["bias"])
  assert got.shape == (1, 4, 6, 4, 3)
  np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5)
  # The decoder's split: the input's channel parts, one call each and the bias once, sum to the whole.
  parts = (layer.apply(variables, x[..., :1], slice(0, 1))
           + layer.apply(variables, x[..., 1:], slice(1, None), add_bias=False))
  np.testing.assert_allclose(np.asarray(parts), got, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="UpConv3d: input has 2 channels"):
    layer.apply(variables, x, slice(1, None))


@pytest.mark.parametrize("impl", ["native", "frames"])
def test_conv_to_one_matches_flax_conv(impl):
  from claus_jax.models.detector import ConvToOne3d
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 5, 6))
  layer = ConvToOne3d(impl=impl)
  variables = jax.tree_util.tree_map(lambda a: a + 0.2, layer.init(jax.random.key(1), x))
  want = flax_linen.Conv(1, (3, 3, 3), padding="SAME").apply(variables, x)
  np.testing.assert_allclose(np.asarray(layer.apply(variables, x)), np.asarray(want), rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("impl", ["native", "frames"])
@pytest.mark.parametrize("shape,kernel", [((1, 8, 12, 10, 3), (7, 7, 7)), ((2, 5, 7, 6, 2), (3, 4, 1))])
def test_space_to_depth_conv_matches_strided_conv(shape, kernel, impl):
  x = jax.random.normal(jax.random.key(0), shape)
  layer = i3d.SpaceToDepthConv(4, kernel, impl=impl)
  variables = layer.init(jax.random.key(1), x)
  pads = i3d.tf_same_padding(shape[1:4], kernel, (2, 2, 2))
  want = jax.lax.conv_general_dilated(x, variables["params"]["kernel"], (2, 2, 2), pads,
                                      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
  got = layer.apply(variables, x)
  assert got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


# ---- the 'frames' lowering (2-D convs over frames; fast on XLA's CPU) against the native 3-D ops ----

def _numpy_conv3d(x, kernel, strides, pads):
  """Direct NumPy cross-correlation: (B, T, H, W, C) x (kt, kh, kw, C, O) with zero padding."""
  x = np.pad(np.asarray(x, np.float64), [(0, 0), *pads, (0, 0)])
  kernel = np.asarray(kernel, np.float64)
  out_sizes = [(n - k) // s + 1 for n, k, s in zip(x.shape[1:4], kernel.shape[:3], strides)]
  out = np.zeros((x.shape[0], *out_sizes, kernel.shape[-1]))
  for t, h, w in np.ndindex(*out_sizes):
    win = x[:, t * strides[0]:t * strides[0] + kernel.shape[0],
            h * strides[1]:h * strides[1] + kernel.shape[1],
            w * strides[2]:w * strides[2] + kernel.shape[2]]
    out[:, t, h, w] = np.einsum("bijkc,ijkco->bo", win, kernel)
  return out


@pytest.mark.parametrize("impl", ["native", "frames"])
@pytest.mark.parametrize("kernel,strides,pads", [
    ((3, 3, 3), (1, 1, 1), ((1, 1), (1, 1), (1, 1))),
    ((3, 3, 3), (2, 1, 1), ((0, 1), (1, 1), (1, 1))),
    ((1, 1, 1), (1, 1, 1), ((0, 0), (0, 0), (0, 0))),
    ((1, 3, 3), (1, 1, 1), ((0, 0), (1, 1), (1, 1))),
    ((2, 3, 1), (1, 2, 1), ((1, 0), (0, 1), (0, 0)))])
def test_conv3d_lowerings_match_numpy(impl, kernel, strides, pads):
  x = jax.random.normal(jax.random.key(0), (2, 5, 6, 4, 3))
  k = jax.random.normal(jax.random.key(1), (*kernel, 3, 4))
  got = np.asarray(i3d.conv3d(x, k, strides, pads, impl))
  np.testing.assert_allclose(got, _numpy_conv3d(x, k, strides, pads), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel,strides,pads,size", [
    ((4, 4), (1, 1), ((0, 0), (0, 0)), (9, 7)),
    ((7, 7), (2, 2), ((2, 3), (3, 3)), (13, 11)),
    ((3, 1), (1, 2), ((1, 1), (0, 0)), (6, 5)),
    ((1, 3), (2, 1), ((0, 1), (1, 0)), (7, 8))])
def test_small_channel_conv2d_is_the_plain_conv(kernel, strides, pads, size):
  """conv2d_cpu computes a conv with few output channels over 2x2 output blocks (forward) and
  takes the plain conv's gradients: the same values and gradients as lax.conv, odd sizes, strides
  and asymmetric padding included."""
  x = jax.random.normal(jax.random.key(0), (2, *size, 3))
  k = jax.random.normal(jax.random.key(1), (*kernel, 3, 4))
  plain = lambda x, k: jax.lax.conv_general_dilated(x, k, strides, pads,
                                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
  blocked = lambda x, k: i3d.conv2d_cpu(x, k, strides, pads)
  assert 4 <= i3d.BLOCK_MAX_CHANNELS and "custom_vjp_call" in str(jax.make_jaxpr(blocked)(x, k))
  np.testing.assert_allclose(np.asarray(blocked(x, k)), np.asarray(plain(x, k)), rtol=1e-5,
                             atol=1e-5)
  target = jax.random.normal(jax.random.key(2), plain(x, k).shape)
  loss = lambda fn: lambda x, k: jnp.sum(jnp.sin(fn(x, k)) * target)
  # The conv's outputs reach |y| ~ 10 and sin' = cos amplifies their float32 rounding into the
  # gradient's sums of up to 196 products: the two orders of summation differ by up to 7e-5 on an
  # AVX2 CPU (1e-5 on AVX-512 ones).
  for want, got in zip(jax.grad(loss(plain), (0, 1))(x, k), jax.grad(loss(blocked), (0, 1))(x, k)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)


def test_frames_lowering_gradients_match_native():
  """Same gradients (input and kernel) of the conv, the upconv, the 1-channel conv and the pool."""
  from claus_jax.models.detector import ConvToOne3d, UpConv3d
  x = jax.random.normal(jax.random.key(0), (2, 4, 6, 6, 3))
  k = jax.random.normal(jax.random.key(1), (3, 3, 3, 3, 5))
  target = jax.random.normal(jax.random.key(2), (2, 4, 6, 6, 5))

  def conv_loss(x, k, impl):
    return jnp.sum(jnp.sin(i3d.conv3d(x, k, (1, 1, 1), [(1, 1)] * 3, impl)) * target)

  def pool_loss(x, impl):  # Random normal input: no ties inside a window.
    return jnp.sum(jnp.sin(i3d.max_pool_same(x, (3, 3, 3), (2, 1, 1), impl)) * target[:, :2, :, :, :3])

  pairs = [(jax.grad(conv_loss, (0, 1))(x, k, "native"), jax.grad(conv_loss, (0, 1))(x, k, "frames")),
           (jax.grad(pool_loss)(x, "native"), jax.grad(pool_loss)(x, "frames"))]
  for layer_cls, args in ((UpConv3d, (5, 3)), (ConvToOne3d, ())):
    variables = layer_cls(*args, impl="native").init(jax.random.key(3), x)
    def layer_loss(v, x, impl, layer_cls=layer_cls, args=args):
      return jnp.sum(jnp.sin(layer_cls(*args, impl=impl).apply(v, x)))
    pairs.append((jax.grad(layer_loss, (0, 1))(variables, x, "native"),
                  jax.grad(layer_loss, (0, 1))(variables, x, "frames")))
  for want, got in pairs:  # Values are O(1); float32 sums of up to 81 products.
    for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=5e-5)


def test_detector_lowerings_share_parameters_and_outputs():
  video = jax.random.uniform(jax.random.key(7), (2, 8, 32, 32, 3), minval=-1.0, maxval=1.0)
  results = {}
  for impl in ("native", "frames"):  # One jit each for init and apply (compiles dominate).
    model = build_model(_config(32, width=0.125, num_classes=8, primary_caps=8, conv_impl=impl))

    def init_apply(key, model=model):
      variables = model.init({"params": key, "dropout": key}, video)
      return variables, model.apply(variables, video, train=True,
                                    rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"])
    results[impl] = jax.jit(init_apply)(jax.random.key(0))
  (va, (oa, sa)), (vb, (ob, sb)) = results["native"], results["frames"]
  assert jax.tree_util.tree_structure(va) == jax.tree_util.tree_structure(vb)
  # Same names, shapes and initial values; the two programs round the initialisers' float32 maths
  # alike at XLA's default backend optimisation but up to 1e-6 apart at level 0 (the suite's).
  for a, b in zip(jax.tree_util.tree_leaves(va), jax.tree_util.tree_leaves(vb)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  # Float rounding differs between the lowerings and EM routing amplifies it a little (up to
  # 7.5e-4 on a latent of 0.5, measured on an AVX2 CPU).
  for key in oa:
    np.testing.assert_allclose(np.asarray(ob[key]), np.asarray(oa[key]), rtol=2e-3, atol=1e-3)
  for a, b in zip(jax.tree_util.tree_leaves(sa), jax.tree_util.tree_leaves(sb)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)


def test_conv_impl_auto_and_config_error():
  want = "frames" if jax.default_backend() == "cpu" else "native"
  assert i3d.resolve_conv_impl("auto") == want
  with pytest.raises(configlib.ConfigError, match="conv_impl"):
    build_model(_config(32, conv_impl="cudnn"))


def test_seg_prior_sets_the_last_bias_and_is_checked():
  from claus_jax.models.detector import ConvToOne3d
  x = jnp.zeros((1, 2, 3, 3, 4))
  prior = 0.02
  layer = ConvToOne3d(bias_init=float(np.log(prior / (1 - prior))))
  variables = layer.init(jax.random.key(0), x)
  # A zero input leaves only the bias: sigmoid(output) is the prior everywhere.
  np.testing.assert_allclose(np.asarray(jax.nn.sigmoid(layer.apply(variables, x))), prior, rtol=1e-5)
  model = build_model(_config(32, width=0.125, num_classes=8, primary_caps=8, seg_prior=prior))
  assert model.seg_prior == prior
  with pytest.raises(configlib.ConfigError, match="seg_prior"):
    build_model(_config(32, seg_prior=1.0))


def test_authors_init_and_input_range():
  """model.init='authors' (item 6): as the authors' CapsNet, primary capsules N(0, 0.1) and the
  decoder's transposed convs N(0, 0.02); model.input_range=(0, 1) (item 7) is their x / 255."""
  video = np.array([0, 51, 255], np.uint8).reshape(1, 1, 3)
  np.testing.assert_allclose(np.asarray(preprocess(video, (0.0, 1.0))).ravel(),
                             np.array([0, 51, 255]) / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(preprocess(video, (-1.0, 1.0))),
                                np.asarray(preprocess(video)))
  x = jnp.zeros((1, 8, 32, 32, 3), jnp.float32)
  stds = {}
  for scheme in ("lecun", "authors"):
    model = build_model(_config(32, width=0.25, num_classes=8, primary_caps=8, init=scheme))
    params = jax.jit(lambda k: model.init({"params": k, "dropout": k}, x, train=False))(
        jax.random.key(0))["params"]
    stds[scheme] = {
        "pose": float(np.std(params["primary"]["pose"]["kernel"])),
        "activation": float(np.std(params["primary"]["activation"]["kernel"])),
        "up28": float(np.std(params["decoder"]["up28"]["kernel"])),
        "up224": float(np.std(params["decoder"]["up224"]["kernel"])),
        "smooth": float(np.std(params["decoder"]["smooth"]["kernel"])),
    }
  want = {"pose": 0.1, "activation": 0.1, "up28": 0.02, "up224": 0.02, "smooth": 0.02}
  for name, std in want.items():
    assert abs(stds["authors"][name] - std) < 0.15 * std, (name, stds["authors"][name])
  # lecun_normal's scale is 1/sqrt(fan_in), here fan_in = 208 channels x 1 x 1 (at 224 px and
  # width 1: 832 x 9 x 9, i.e. 0.0039, about 26x below the authors' 0.1).
  assert abs(stds["lecun"]["pose"] - 1 / np.sqrt(208)) < 0.15 / np.sqrt(208)
  with pytest.raises(ValueError, match="config.model.init"):
    build_model(_config(32, width=0.25, num_classes=8, primary_caps=8, init="xavier")).init(
        {"params": jax.random.key(0)}, x)
