"""The pretraining corpus and command: disjoint from the benchmark, deterministic, cached."""

import json
import os

import jax
import numpy as np
import pytest

from claus_jax import models
from claus_jax import pretrain
from claus_jax import train as train_lib
from claus_jax.data import pretrain_corpus as corpus
from claus_jax.data import synthetic
from tests.config_files import load_config


def _tiny_config(tmp_path, **pretrain_fields):
  config = load_config("synthetic", "smoke")
  with config.unlocked():
    config.pretrain.cache_dir = str(tmp_path / "cache")
    config.pretrain.steps = 3
    config.pretrain.batch_size = 2
    config.pretrain.val_clips = 2
    config.train.bn_recalibration_batches = 1
    for key, value in pretrain_fields.items():
      setattr(config.pretrain, key, value)
  return config


def test_corpus_classes_are_disjoint_from_the_benchmark():
  assert set(corpus.PRETRAIN_CLASS_NAMES).isdisjoint(synthetic.CLASS_NAMES)
  assert len(set(corpus.PRETRAIN_CLASS_NAMES)) == len(corpus.PRETRAIN_CLASS_NAMES)


def test_corpus_clips_are_deterministic_balanced_and_independent():
  params = corpus.PretrainParams(frame_size=32)
  a = corpus.batch(params, range(14))
  b = corpus.batch(params, range(14))
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  np.testing.assert_array_equal(a["label"], np.arange(14) % params.num_classes)
  # A clip depends on its index only, not on which batch it comes in.
  one = corpus.clip(params, 9)
  for key in a:
    np.testing.assert_array_equal(one[key], a[key][9], err_msg=key)
  assert one["label"] == 9 % params.num_classes
  # The part map covers exactly the visible figure, and the pose is relative to the pelvis.
  np.testing.assert_array_equal(one["parts"] > 0, one["mask"] > 0)
  assert one["pose"].shape == (8, len(corpus.POSE_JOINTS), 2) and one["scene"].shape == (16,)
  # The joints' image positions are the pose's: minus the pelvis, over one height per clip.
  rel = one["joints"][:, 1:] - one["joints"][:, :1]
  height = rel[..., 1].ravel() @ one["pose"][..., 1].ravel() / np.sum(one["pose"][..., 1] ** 2)
  np.testing.assert_allclose(rel, one["pose"] * height, atol=1e-3)
  assert 0.2 * 32 <= height <= 0.9 * 32
  assert a["video"].shape == (14, 8, 32, 32, 3) and a["video"].dtype == np.uint8
  assert a["mask"].any(axis=(1, 2, 3)).all(), "every clip shows its actor"
  # Another corpus seed gives other clips.
  other = corpus.batch(corpus.PretrainParams(frame_size=32, seed=2), range(2))
  assert not np.array_equal(other["video"], a["video"][:2])


def test_joint_heatmap_targets_by_hand():
  import jax.numpy as jnp
  # 64 px over 8 cells: cell 0 holds pixels 0-7 and its centre is at pixel 3.5.
  joints = jnp.array([[3.5, 3.5], [5.5, 3.5], [11.5, 13.5], [-3.0, 10.0], [63.0, 63.0]])
  targets, inside = pretrain.joint_heatmap_targets(joints, 64, 8)
  want = np.zeros((5, 8, 8))
  want[0, 0, 0] = 1.0
  want[1, 0, 0], want[1, 0, 1] = 0.75, 0.25  # A quarter of the way from centre 0 to centre 1.
  # x = 11.5 is column 1's centre; y = 13.5 is a quarter of the way from row 1's centre (11.5) to
  # row 2's (19.5).
  want[2, 1, 1], want[2, 2, 1] = 0.75, 0.25
  # x = -3 clamps to the border column; y = 10 is 13/16 of the way from row 0's centre (3.5) to
  # row 1's.
  want[3, 0, 0], want[3, 1, 0] = 0.1875, 0.8125
  want[4, 7, 7] = 1.0
  np.testing.assert_allclose(np.asarray(targets), want, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(inside), [1, 1, 1, 0, 1])
  # Logits peaked at each joint's cell: accuracy 1 and the loss near the targets' own entropy; the
  # joint outside the frame counts for neither.
  logits = jnp.log(jnp.asarray(want) * 0.999 + 0.001 / 64)[None, None]
  loss, acc = pretrain.joint_heatmap_loss(logits, joints[None, None], 64)
  entropy = -np.sum(want * np.log(np.where(want > 0, want, 1)), axis=(1, 2))
  assert float(acc) == 1.0
  assert abs(float(loss) - np.mean(entropy[[0, 1, 2, 4]])) < 0.02
  # Uniform logits: ln 64 whatever the targets.
  loss, _ = pretrain.joint_heatmap_loss(jnp.zeros((1, 1, 5, 8, 8)), joints[None, None], 64)
  np.testing.assert_allclose(float(loss), np.log(64), rtol=1e-6)


def test_corpus_never_renders_a_benchmark_scene():
  """The corpus's scenes come from its own seed stream: no background matches a benchmark class's
  typical scenes, nor any benchmark group's background."""
  params = corpus.PretrainParams(seed=0, frame_size=32, clutter=0, occlusion=0.0, jitter=0.0)
  bench = synthetic.GeneratorParams(seed=0, frame_size=32, train_groups=8, test_groups=8,
                                    clutter=0, occlusion=0.0, jitter=0.0)
  bench_frames = [synthetic.generate_video(bench, split, g, 0, draw_actor=False).frames[0]
                  for split in ("train", "test") for g in range(8)]
  for i in range(16):
    frames = corpus.clip(params, i)["video"]
    for bf in bench_frames:
      # Pixel noise differs anyway; a shared scene would leave a mean difference of a few levels.
      assert np.abs(frames[0].astype(float) - bf.astype(float)).mean() > 10.0


@pytest.mark.parametrize("name", corpus.PRETRAIN_CLASS_NAMES)
def test_each_family_is_a_program_of_its_own_that_moves(name):
  """Each family moves the figure (standing only breathes; turning moves the camera instead), and
  none equals a benchmark action's program."""
  from claus_jax.data import figures
  rng = np.random.default_rng(0)
  act = figures.random_action_params(rng, name)
  t = np.arange(0.0, 24.0)
  pose = figures.perform(name, t, act)
  spread = max(np.ptp(pose[k]) for k in figures.DOFS)
  if name in ("turn", "stand"):
    assert spread < 0.2  # The body idles; for 'turn' the camera yaw turns (pretrain_corpus.clip).
  else:
    assert spread > 0.3
  for bench_name in figures.BENCHMARK_ACTIONS:
    other = figures.perform(bench_name, t, act)
    assert max(np.abs(pose[k] - other[k]).max() for k in figures.DOFS) > 0.1, bench_name


def test_composed_families_are_seeded_programs_that_leave_out_the_benchmark_signatures():
  """pretrain.families = N: N programs composed of joint primitives, each fixed by its index and the
  corpus seed, labelled by index, and none lifting the body, travelling, leaning deep or bending
  both knees (jump, walk, bow, squat)."""
  from claus_jax.data import figures
  params = corpus.PretrainParams(frame_size=32, families=24)
  assert params.num_classes == 24 and params.class_names[5] == "composed_5"
  a = corpus.batch(params, range(26))
  np.testing.assert_array_equal(a["label"], np.arange(26) % 24)
  np.testing.assert_array_equal(corpus.clip(params, 25)["video"], a["video"][25])
  t = np.arange(0.0, 32.0)
  rng = np.random.default_rng(0)
  act = figures.random_action_params(rng, "composed")
  poses = [figures.perform(params.program(f), t, act) for f in range(24)]
  again = figures.perform(params.program(3), t, act)
  for k in figures.DOFS:
    np.testing.assert_array_equal(again[k], poses[3][k])
  other_seed = corpus.PretrainParams(frame_size=32, families=24, seed=7).program(3)
  assert any(np.abs(figures.perform(other_seed, t, act)[k] - poses[3][k]).max() > 0.05
             for k in figures.DOFS)
  idle = figures.idle_pose(t)
  follow = "l" if act.lead == "r" else "r"
  moving = set()
  for pose in poses:
    assert max(np.ptp(pose[k]) for k in figures.DOFS) > 0.1, "every family moves"
    np.testing.assert_array_equal(pose["lift"], 0.0)
    np.testing.assert_array_equal(pose["walk"], 0.0)
    assert pose["lean"].max() <= 0.55 + 0.05
    np.testing.assert_array_equal(pose[f"{follow}_knee"], idle[f"{follow}_knee"])
    moving.add(frozenset(k for k in figures.DOFS if np.ptp(pose[k] - idle[k]) > 1e-9))
  assert len(moving) > 12, "the families move different joints"
  # The hand-written corpus keeps the settings key its shipped weights are cached under.
  assert "families" not in corpus.PretrainParams().to_dict()
  assert params.to_dict()["families"] == 24


def test_turn_changes_the_viewpoint_through_the_clip():
  params = corpus.PretrainParams(frame_size=64, clutter=0, occlusion=0.0, jitter=0.0)
  label = corpus.PRETRAIN_CLASS_NAMES.index("turn")
  one = corpus.clip(params, label)
  masks = one["mask"]
  assert one["label"] == label
  widths = masks.any(axis=1).sum(axis=1)  # Silhouette width per frame.
  assert widths.max() > 1.15 * widths.min()


@pytest.mark.slow
def test_pretrain_is_bit_identical_cached_and_loads_into_the_detector(tmp_path, monkeypatch):
  # Pretraining must never read the benchmark: make any benchmark rendering fail.
  def forbidden(*args, **kwargs):
    raise AssertionError("pretraining rendered a benchmark video")
  monkeypatch.setattr(synthetic, "generate_video", forbidden)
  monkeypatch.setattr(synthetic, "generate_split", forbidden)
  config = _tiny_config(tmp_path)
  settings = pretrain.PretrainSettings.from_config(config)
  first = pretrain.pretrain(settings, str(tmp_path / "a"), progress=False)
  # ensure_pretrained trains once into the cache (a second, independent run), then reuses it.
  said = []
  directory = pretrain.ensure_pretrained(settings, log=said.append, progress=False)
  assert pretrain.is_complete(directory) and "pretraining" in said[-2]
  restore = lambda d: models.load_encoder_init(variables, d)
  model = models.build_model(config)
  state = train_lib.create_state(train_lib.TrainParams.from_config(config), model,
                                 jax.random.PRNGKey(0), 4)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  a, b = restore(str(tmp_path / "a")), restore(directory)
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b))
  # The encoder changed from its random init; the capsules and decoder did not come from it.
  assert not np.array_equal(a["params"]["encoder"]["Conv3d_1a_7x7"]["conv3d"]["kernel"],
                            variables["params"]["encoder"]["Conv3d_1a_7x7"]["conv3d"]["kernel"])
  np.testing.assert_array_equal(a["params"]["class_caps"]["weights"],
                                variables["params"]["class_caps"]["weights"])
  assert first["clips_seen"] == 6 and first["classes"] == list(corpus.PRETRAIN_CLASS_NAMES)
  with open(tmp_path / "a" / pretrain.RESULT_FILE) as f:
    assert json.load(f)["settings"] == settings.cache_key()

  stamp = os.path.getmtime(os.path.join(directory, pretrain.RESULT_FILE))
  assert pretrain.ensure_pretrained(settings, log=said.append, progress=False) == directory
  assert "reusing" in said[-1]
  assert os.path.getmtime(os.path.join(directory, pretrain.RESULT_FILE)) == stamp
  with config.unlocked():
    config.pretrain.seed = 7
  assert pretrain.cache_dir(pretrain.PretrainSettings.from_config(config)) != directory


def test_a_process_that_cannot_see_the_pretrained_encoder_stops_with_the_fix(tmp_path, monkeypatch):
  """Never a silent random encoder: a cache that only process 0 can see is an error naming it."""
  from claus_jax import configlib
  from claus_jax import experiment

  config = _tiny_config(tmp_path)
  with config.unlocked():
    config.pretrain.enabled = True
    config.data.tfds_dir = str(tmp_path / "tfds")
  monkeypatch.setattr(pretrain, "ensure_pretrained", lambda *a, **k: "")
  monkeypatch.setattr(pretrain, "find_pretrained", lambda settings: None)
  with pytest.raises(configlib.ConfigError, match="config.pretrain.cache_dir: process 0 finds no "
                     "pretrained encoder.*a folder every host shares"):
    experiment.run(config, str(tmp_path / "work"))


def test_the_shipped_encoder_is_the_default_configs_and_loads_into_its_detector():
  """configs/synthetic.py finds its pretrained encoder in the package, so no run pretrains; a change
  to any pretraining setting of the default must ship new weights (python -m claus_jax.pretrain
  --config=configs/synthetic.py, then copy its folder into claus_jax/assets/pretrained)."""
  config = load_config("synthetic", "")
  settings = pretrain.PretrainSettings.from_config(config)
  found = pretrain.find_pretrained(settings)
  assert found is not None and os.path.dirname(found) == pretrain.PACKAGED_DIR, (
      f"no shipped weights for the default's settings ({os.path.basename(pretrain.cache_dir(settings))}"
      f" in {pretrain.PACKAGED_DIR})")
  with open(os.path.join(found, pretrain.RESULT_FILE)) as f:
    result = json.load(f)
  assert result["settings"] == settings.cache_key()
  # Every encoder weight arrives, of the detector's shapes (capsules and decoder start fresh).
  model = models.build_model(config)
  abstract = jax.eval_shape(
      lambda k: models.init_variables(model, k, clip_length=config.model.clip_length,
                                      frame_size=config.data.frame_size), jax.random.PRNGKey(0))
  fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  loaded = models.load_encoder_init(fresh, found)
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  assert shapes(loaded) == shapes(fresh)
  kernel = loaded["params"]["encoder"]["Conv3d_1a_7x7"]["conv3d"]["kernel"]
  assert np.abs(np.asarray(kernel)).sum() > 0
  np.testing.assert_array_equal(loaded["params"]["class_caps"]["weights"],
                                fresh["params"]["class_caps"]["weights"])
