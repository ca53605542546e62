"""The pytorch_i3d importer: key mapping, errors, and output parity with an own PyTorch I3D."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from claus_jax import configlib
from claus_jax.models import build_model, i3d, load_encoder_init
from claus_jax.tools import import_i3d

WIDTH = 0.25  # A small I3D keeps the test fast; the mapping does not depend on the width.
ENDPOINTS = i3d.VALID_ENDPOINTS[:i3d.VALID_ENDPOINTS.index("Mixed_4f") + 1]


def _torch_i3d(torch, strides: str, width: float):
  """A PyTorch I3D to Mixed_4f with pytorch_i3d's layer names and its own TF-SAME padding."""
  nn, F = torch.nn, torch.nn.functional

  def same_pad(x, kernel, stride):
    pads = []
    for size, k, s in zip(x.shape[2:], kernel, stride):
      total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
      pads.append((total // 2, total - total // 2))
    (tf, tb), (hf, hb), (wf, wb) = pads
    return F.pad(x, (wf, wb, hf, hb, tf, tb))  # Zeros, as pytorch_i3d pads.

  class Unit(nn.Module):
    def __init__(self, cin, cout, kernel=(1, 1, 1), stride=(1, 1, 1)):
      super().__init__()
      self.kernel, self.stride = kernel, stride
      self.conv3d = nn.Conv3d(cin, cout, kernel, stride, bias=False)
      self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01)

    def forward(self, x):
      return F.relu(self.bn(self.conv3d(same_pad(x, self.kernel, self.stride))))

  class Pool(nn.Module):
    def __init__(self, kernel, stride):
      super().__init__()
      self.kernel, self.stride = kernel, stride

    def forward(self, x):
      return F.max_pool3d(same_pad(x, self.kernel, self.stride), self.kernel, self.stride)

  class Mixed(nn.Module):
    def __init__(self, cin, ch):
      super().__init__()
      self.b0 = Unit(cin, ch[0])
      self.b1a, self.b1b = Unit(cin, ch[1]), Unit(ch[1], ch[2], (3, 3, 3))
      self.b2a, self.b2b = Unit(cin, ch[3]), Unit(ch[3], ch[4], (3, 3, 3))
      self.b3a, self.b3b = Pool((3, 3, 3), (1, 1, 1)), Unit(cin, ch[5])
      self.cout = ch[0] + ch[2] + ch[4] + ch[5]

    def forward(self, x):
      return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)),
                        self.b3b(self.b3a(x))], 1)

  s = lambda c: max(1, int(round(c * width)))
  claus = strides == "claus"

  class I3D(nn.Module):
    def __init__(self):
      super().__init__()
      self.layers = []
      add = lambda name, module: (setattr(self, name, module), self.layers.append(name))
      add("Conv3d_1a_7x7", Unit(3, s(64), (7, 7, 7), (2, 2, 2)))
      add("MaxPool3d_2a_3x3", Pool((1, 3, 3), (1, 2, 2)))
      add("Conv3d_2b_1x1", Unit(s(64), s(64)))
      add("Conv3d_2c_3x3", Unit(s(64), s(192), (3, 3, 3), (2, 1, 1) if claus else (1, 1, 1)))
      add("MaxPool3d_3a_3x3", Pool((1, 3, 3), (1, 2, 2)))
      cin = s(192)
      for name in ENDPOINTS[5:]:
        if name == "MaxPool3d_4a_3x3":
          add(name, Pool((3, 3, 3), (2, 1, 1) if claus else (2, 2, 2)))
          continue
        module = Mixed(cin, [s(c) for c in i3d.INCEPTION_CHANNELS[name]])
        add(name, module)
        cin = module.cout

    def forward(self, x):
      out = {}
      for name in self.layers:
        x = getattr(self, name)(x)
        out[name] = x
      return out

  torch.manual_seed(0)
  model = I3D()
  with torch.no_grad():  # Non-trivial BatchNorm statistics and affine parameters.
    for module in model.modules():
      if isinstance(module, nn.BatchNorm3d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.2, 0.2)
        module.running_mean.uniform_(-0.2, 0.2)
        module.running_var.uniform_(0.5, 1.5)
  return model.eval()


@pytest.mark.parametrize("strides", ["claus", "standard"])
def test_import_parity_every_endpoint(strides, tmp_path):
  torch = pytest.importorskip("torch", reason="torch is an optional extra (pip install torch)")
  model = _torch_i3d(torch, strides, WIDTH)
  video = np.random.default_rng(0).uniform(-1, 1, (1, 8, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    want = model(torch.from_numpy(video).permute(0, 4, 1, 2, 3))
  path = os.path.join(tmp_path, "i3d.pt")
  torch.save(model.state_dict(), path)

  meta = import_i3d.main([path, "--out", str(tmp_path / "enc"), "--width", str(WIDTH)])
  assert meta["converted"] == len(model.state_dict()) - meta["ignored_counters"]
  state = import_i3d.load_torch_state_dict(path)
  variables, _ = import_i3d.convert_state_dict(state, "Mixed_4f", WIDTH)
  flax_model = i3d.InceptionI3d("Mixed_4f", strides, WIDTH)
  got = jax.jit(lambda v, x: flax_model.apply(v, x, False))(variables, video)
  assert set(got) == set(ENDPOINTS)
  for name in ENDPOINTS:
    ref = want[name].permute(0, 2, 3, 4, 1).numpy()
    assert got[name].shape == ref.shape, name
    diff = float(np.abs(np.asarray(got[name]) - ref).max())
    assert diff <= 1e-4, f"{name}: max abs diff {diff}"
    assert float(np.abs(ref).max()) > 1e-2, name  # Activations are not all zero.

  if strides == "claus":  # The saved directory loads into a detector of the same width.
    config = configlib.base_config()
    config.data.frame_size, config.model.width, config.model.primary_caps = 32, WIDTH, 2
    detector = build_model(config)
    det_vars = jax.eval_shape(
        lambda k: detector.init({"params": k, "dropout": k}, jnp.zeros((1, 8, 32, 32, 3))),
        jax.random.key(0))
    det_vars = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), det_vars)
    loaded = load_encoder_init(det_vars, str(tmp_path / "enc"))
    kernel = loaded["params"]["encoder"]["Mixed_4f"]["b1b"]["conv3d"]["kernel"]
    np.testing.assert_array_equal(np.asarray(kernel),
                                  variables["params"]["Mixed_4f"]["b1b"]["conv3d"]["kernel"])
    var = loaded["batch_stats"]["encoder"]["Conv3d_1a_7x7"]["bn"]["var"]
    np.testing.assert_array_equal(np.asarray(var), state["Conv3d_1a_7x7.bn.running_var"])
    assert not np.any(np.asarray(loaded["params"]["primary"]["pose"]["kernel"]))  # Untouched.
    with open(tmp_path / "enc" / "import_i3d.json") as f:
      assert json.load(f)["width"] == WIDTH
    # A detector of another width cannot take these weights; the error lists the shapes.
    config.model.width = 0.125
    wide = build_model(config)
    other = jax.eval_shape(
        lambda k: wide.init({"params": k, "dropout": k}, jnp.zeros((1, 8, 32, 32, 3))),
        jax.random.key(0))
    with pytest.raises(ValueError, match="shape of params/Conv3d_1a_7x7/conv3d/kernel"):
      load_encoder_init(other, str(tmp_path / "enc"))


def _fake_state_dict(width=WIDTH, final_endpoint="Mixed_4f"):
  """A numpy state dict in pytorch_i3d layout, from the expected Flax shapes (no torch needed)."""
  state = {}
  for path, shape in import_i3d.expected_variables(final_endpoint, width).items():
    collection, *layer, module, leaf = path.split("/")
    prefix = ".".join(layer + [module])
    if leaf == "kernel":
      t, h, w, cin, cout = shape
      state[f"{prefix}.weight"] = np.ones((cout, cin, t, h, w), np.float32)
    else:
      name = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}[leaf]
      state[f"{prefix}.{name}"] = np.ones(shape, np.float32)
      if leaf == "scale":
        state[f"{prefix}.num_batches_tracked"] = np.array(3)
  return state


def test_mapping_transposes_and_skips_later_layers():
  state = _fake_state_dict()
  state["Conv3d_1a_7x7.conv3d.weight"] = np.arange(
      state["Conv3d_1a_7x7.conv3d.weight"].size, dtype=np.float32).reshape(16, 3, 7, 7, 7)
  state["Mixed_5b.b0.conv3d.weight"] = np.ones((4, 4, 1, 1, 1), np.float32)
  state["logits.conv3d.bias"] = np.ones((157,), np.float32)
  state = {"module." + k: v for k, v in state.items()}
  variables, report = import_i3d.convert_state_dict(state, "Mixed_4f", WIDTH)
  kernel = variables["params"]["Conv3d_1a_7x7"]["conv3d"]["kernel"]
  assert kernel.shape == (7, 7, 7, 3, 16)
  torch_w = state["module.Conv3d_1a_7x7.conv3d.weight"]
  assert kernel[1, 2, 3, 2, 5] == torch_w[5, 2, 1, 2, 3]  # (t, h, w, in, out) <- (out, in, t, h, w)
  assert sorted(report["skipped"]) == ["module.Mixed_5b.b0.conv3d.weight",
                                       "module.logits.conv3d.bias"]
  assert all(k.endswith("num_batches_tracked") for k in report["ignored"])
  assert "var" in variables["batch_stats"]["Mixed_3b"]["b0"]["bn"]


def test_unknown_missing_and_misshaped_keys_are_listed():
  state = _fake_state_dict()
  state["Mixed_3b.b9.conv3d.weight"] = np.ones((1, 1, 1, 1, 1), np.float32)
  state["Conv3d_2b_1x1.bn.extra"] = np.ones((1,), np.float32)
  del state["Mixed_4c.b2b.bn.running_var"]
  state["Mixed_3c.b0.conv3d.weight"] = np.ones((2, 2, 1, 1, 1), np.float32)
  with pytest.raises(import_i3d.StateDictMismatch) as err:
    import_i3d.convert_state_dict(state, "Mixed_4f", WIDTH)
  message = str(err.value)
  assert "2 unknown, 1 missing, 1 wrongly shaped" in message
  assert "unknown key: Mixed_3b.b9.conv3d.weight" in message
  assert "unknown key: Conv3d_2b_1x1.bn.extra" in message
  assert "missing: batch_stats/Mixed_4c/b2b/bn/var" in message
  assert "wrong shape: Mixed_3c.b0.conv3d.weight" in message


def test_missing_encoder_init_dir_says_how_to_make_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="import_i3d"):
    load_encoder_init({"params": {"encoder": {}}, "batch_stats": {"encoder": {}}},
                      str(tmp_path / "nope"))
