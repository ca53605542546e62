"""MC-dropout scorer: equals sequential passes, sweeps equal separate runs, sharding changes nothing."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from claus_jax import configlib
from claus_jax import models
from claus_jax import uncertainty
from claus_jax.data.record import VideoRecord
from tests import xla_flags


def tiny_config(passes=4, pass_chunk=2, form="paper", source="mc_dropout"):
  c = configlib.base_config()
  c.uncertainty.source = source
  c.data.frame_size = 32
  c.model.num_classes = c.data.synthetic.num_classes = 3
  c.model.width = 0.125
  c.model.primary_caps = 4
  c.uncertainty.passes = passes
  c.uncertainty.pass_chunk = pass_chunk
  c.uncertainty.form = form
  c.uncertainty.clip_chunk = 3
  return c


def tiny_params(*args, **kwargs) -> uncertainty.ScoreParams:
  return uncertainty.ScoreParams.from_config(tiny_config(*args, **kwargs))


@pytest.fixture(scope="module")
def setup():
  config = tiny_config()
  model = models.build_model(config)
  video = jax.random.randint(jax.random.PRNGKey(1), (3, 8, 32, 32, 3), 0, 256).astype(jnp.uint8)
  variables = jax.jit(lambda x: model.init(
      {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)}, x, train=False))(
          models.preprocess(video[:1]))
  return config, model, variables, np.asarray(video)


def _sequential_probs(model, variables, video, keys, passes):
  """The authors' way: R full forward passes per clip, one clip at a time (Python loops)."""
  out = np.zeros((video.shape[0], passes) + video.shape[1:4], np.float64)
  forward = jax.jit(lambda v, x, k: model.apply(v, models.preprocess(x), rngs={"dropout": k},
                                                method=uncertainty.mc_forward)["seg_logits"])
  for b in range(video.shape[0]):
    for r in range(passes):
      key = jax.random.fold_in(keys[b], r)
      out[b, r] = np.asarray(jax.nn.sigmoid(forward(variables, video[b:b + 1], key)[0]))
  return out


@pytest.mark.parametrize("form", ["paper", "implementation"])
def test_vmapped_scorer_equals_sequential_full_passes(setup, form):
  config, model, variables, video = setup
  config = tiny_config(form=form)
  thresholds = (0.3, 0.5)
  fn = jax.jit(uncertainty.make_score_fn(model, tiny_params(form=form), thresholds))
  keys = uncertainty.clip_keys(jax.random.PRNGKey(5), 7, np.arange(3))
  out = jax.device_get(fn(variables, video, keys))
  probs = _sequential_probs(model, variables, video, keys, config.uncertainty.passes)
  assert out["frame_scores"].shape == (3, 8, 4, 2)
  spread = probs.max() - probs.min()
  assert spread > 1e-3, "dropout must change the predictions"
  for b in range(3):
    for r in range(1, 5):  # every prefix R' <= R: the sweep over passes
      for i, thr in enumerate(thresholds):
        expected = uncertainty.pixel_scores_reference(probs[b, :r], thr, form)
        np.testing.assert_allclose(out["frame_scores"][b, :, r - 1, i], expected, rtol=2e-4,
                                   atol=2e-4)
    mean_p = probs[b].mean(0)
    np.testing.assert_allclose(out["mean_prob"][b], mean_p.mean(axis=(-2, -1)), rtol=1e-4, atol=1e-6)
    p = np.clip(mean_p, 1e-6, 1 - 1e-6)
    ent = -(p * np.log(p) + (1 - p) * np.log1p(-p))
    np.testing.assert_allclose(out["entropy"][b], ent.mean(axis=(-2, -1)), rtol=1e-4, atol=1e-6)


def test_sweep_equals_separate_runs_and_chunking_is_invisible(setup):
  config, model, variables, video = setup
  keys = uncertainty.clip_keys(jax.random.PRNGKey(5), 7, np.arange(3))
  full = jax.device_get(jax.jit(uncertainty.make_score_fn(model, tiny_params(4, 4), (0.4,)))(
      variables, video, keys))
  for r in (1, 2, 3):
    alone = jax.device_get(jax.jit(uncertainty.make_score_fn(
        model, tiny_params(r, 1), (0.4,)))(variables, video, keys))
    np.testing.assert_allclose(full["frame_scores"][:, :, r - 1], alone["frame_scores"][:, :, -1],
                               rtol=1e-5, atol=1e-5)
  chunked = jax.device_get(jax.jit(uncertainty.make_score_fn(model, tiny_params(4, 2), (0.4,)))(
      variables, video, keys))
  np.testing.assert_allclose(full["frame_scores"], chunked["frame_scores"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(full["latent"], chunked["latent"], rtol=1e-5, atol=1e-5)


def test_pass_chunk_size():
  assert uncertainty.pass_chunk_size(10, 4) == 2
  assert uncertainty.pass_chunk_size(10, 10) == 10
  assert uncertainty.pass_chunk_size(10, 32) == 10
  assert uncertainty.pass_chunk_size(7, 3) == 1


def _record(vid, t, seed):
  rng = np.random.default_rng(seed)
  frames = rng.integers(0, 256, (t, 32, 32, 3), dtype=np.uint8)
  return VideoRecord(vid, vid, 0, frames, np.zeros((t, 32, 32), np.uint8),
                     np.full((1, t, 4), np.nan, np.float32), np.zeros(t, bool), (0, t))


def test_scorer_scores_every_frame_independently_of_batching(setup):
  config, model, variables, _ = setup
  records = [_record("a", 21, 0), _record("b", 5, 1), _record("c", 40, 2)]
  key = jax.random.PRNGKey(3)
  s1 = uncertainty.Scorer(model, variables, tiny_params(), batch_size=1).score_videos(
      records, [0, 1, 2], key)
  scorer3 = uncertainty.Scorer(model, variables, tiny_params(), batch_size=3)
  s3 = scorer3.score_videos(records, [0, 1, 2], key)
  # Streamed from the frame counts: a video is read when the plan reaches it. Clips a0 a1 b0 | c0
  # c1 c2: a and b are done after the first batch, before c is read.
  read, read_when_done = [], []

  def stream():
    for r in records:
      read.append(r.video_id)
      yield r

  streamed = scorer3.score_videos(stream(), [0, 1, 2], key, num_frames=[21, 5, 40],
                                  progress=lambda n: read_when_done.append(len(read)))
  assert read_when_done == [2, 2, 3]
  for a, b in zip(s3, streamed):
    np.testing.assert_array_equal(a.frame_scores, b.frame_scores)
    np.testing.assert_array_equal(a.latent, b.latent)
  alone = uncertainty.Scorer(model, variables, tiny_params(), batch_size=2).score_videos(
      records[2:], [2], key)
  assert [s.video_id for s in s3] == ["a", "b", "c"]
  for a, b in zip(s1, s3):
    assert a.frame_scores.shape == (4, 1, len(a.entropy))
    np.testing.assert_allclose(a.frame_scores, b.frame_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.latent, b.latent, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(alone[0].frame_scores, s3[2].frame_scores, rtol=1e-5, atol=1e-5)
  # skip2 reference layout: one clip per 16 frames, each output repeated for the skipped frame.
  t = s3[0].frame_scores
  np.testing.assert_array_equal(t[..., 0::2][..., :10], t[..., 1::2][..., :10])


def test_score_plan_cuts_the_flat_clip_list_into_fixed_batches():
  from claus_jax import tiling
  # 2, 1 and 3 clips (one clip per 16 frames).
  layouts = [tiling.named_layout("skip2", t, interleave=False) for t in (21, 5, 40)]
  plan = uncertainty.score_plan(layouts, 4)
  np.testing.assert_array_equal(plan.video, [[0, 0, 1, 2], [2, 2, 2, 2]])
  np.testing.assert_array_equal(plan.clip, [[0, 1, 0, 0], [1, 2, 2, 2]])  # padding repeats c2
  np.testing.assert_array_equal(plan.valid, [[1, 1, 1, 1], [1, 1, 0, 0]])
  np.testing.assert_array_equal(plan.last_batch, [0, 0, 1])
  # Padded to the calls of a longer process: empty batches (video -1), nothing valid in them.
  padded = uncertainty.score_plan(layouts, 4, num_batches=4)
  assert padded.num_batches == 4 and not padded.valid[2:].any() and (padded.video[2:] == -1).all()
  np.testing.assert_array_equal(padded.video[:2], plan.video)
  empty = uncertainty.score_plan([], 4, num_batches=2)  # A process without videos still calls.
  assert empty.num_batches == 2 and empty.num_videos == 0
  with pytest.raises(ValueError, match="needs 2 batches"):
    uncertainty.score_plan(layouts, 4, num_batches=1)


_SHARDED = r"""
import os, sys
import jax, numpy as np
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
from test_uncertainty import tiny_config, tiny_params, _record
from claus_jax import models, uncertainty, parallel
assert jax.device_count() == 4, jax.devices()
config = tiny_config(source={source!r})
model = models.build_model(config)
x = np.zeros((1, 8, 32, 32, 3), np.uint8)
variables = model.init({{"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)}},
                       models.preprocess(x), train=False)
records = [_record("a", 21, 0), _record("b", 5, 1), _record("c", 40, 2)]
key = jax.random.PRNGKey(3)
params = tiny_params(source={source!r})
one = uncertainty.Scorer(model, variables, params, batch_size=4,
                         mesh=parallel.make_mesh(jax.devices()[:1])).score_videos(records, [0, 1, 2], key)
four = uncertainty.Scorer(model, variables, params, batch_size=4).score_videos(records, [0, 1, 2], key)
for a, b in zip(one, four):
  np.testing.assert_allclose(a.frame_scores, b.frame_scores, rtol=1e-4, atol={atol!r})
  np.testing.assert_allclose(a.latent, b.latent, rtol=1e-5, atol=1e-6)
print("SHARDED_OK")
"""


# NoiseAug's frame scores are variances near 1e-6 on the untrained tiny model: its floor is lower.
# ~100 s each in a 4-device child (2 CPU cores): CI runs them in its -m slow step.
@pytest.mark.parametrize("source,atol", [pytest.param("mc_dropout", 1e-5, marks=pytest.mark.slow),
                                         pytest.param("noise", 1e-9, marks=pytest.mark.slow)])
def test_sharded_scoring_on_four_fake_devices_equals_one_device(source, atol):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, XLA_FLAGS=xla_flags.with_devices(4),
             JAX_PLATFORMS="cpu")
  script = _SHARDED.format(root=root, tests=os.path.join(root, "tests"), source=source, atol=atol)
  proc = subprocess.run([sys.executable, "-c", script], env=env,
                        capture_output=True, text=True, timeout=600, cwd=root)
  assert "SHARDED_OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_paper_frame_score_is_a_per_foreground_pixel_mean():
  """Issue 18, item 1: Eq. 2's sum over a frame is divided by its foreground pixels, not by all
  pixels, so the score sits on the scale of the proximity penalty g(d) (as the authors' does)."""
  # One frame of 10x10 pixels, R = 2 passes; a 2x3 actor (6% of the frame).
  probs = np.full((2, 1, 10, 10), 0.01)
  probs[0, 0, :2, :3], probs[1, 0, :2, :3] = 0.6, 0.8
  u = np.mean([-np.log(0.6), -np.log(0.8)])  # mean_r(-log p_r) on every actor pixel
  mean_p = jnp.asarray(probs.mean(0), jnp.float32)
  mean_nll = jnp.asarray((-np.log(probs)).mean(0), jnp.float32)
  got = uncertainty.frame_scores_from_means(mean_p, mean_nll, jnp.asarray([0.4]), "paper")
  np.testing.assert_allclose(np.asarray(got)[0], [u], rtol=1e-5)  # ~0.37, not 6% of it
  np.testing.assert_allclose(uncertainty.pixel_scores_reference(probs, 0.4, "paper"), [u],
                             rtol=1e-6)
  # No foreground pixel: 0 (certain background), not a division by zero.
  none = uncertainty.frame_scores_from_means(mean_p * 0, mean_nll, jnp.asarray([0.4]), "paper")
  assert float(np.asarray(none)[0, 0]) == 0.0


def authors_uncertainty_logx(frame):
  """Transcription of get_uncertainty_logx (aayushjr/HybridCLAUS, ucf101_CLAUS.py): ``frame`` the
  R-pass mean prediction (H, W); -10 without a pixel above 0.4 (their own call also gives -10 when
  the frame's prediction sums to <= 0.1)."""
  frame = np.array(frame, np.float64)
  if np.sum(frame) <= 0.1:
    return -10.0
  th = frame > 0.4
  if th.sum() == 0:
    return -10.0
  frame[frame == 0] = 1e-8
  return (-np.log(frame))[th].sum() / th.sum()


def test_implementation_frame_score_matches_the_authors():
  rng = np.random.default_rng(3)
  mean_p = rng.random((5, 6, 6)) ** 3
  mean_p[1] = 0.0  # nothing above the threshold
  mean_p[2, 0, 0] = 0.95
  got = np.asarray(uncertainty.frame_scores_from_means(
      jnp.asarray(mean_p, jnp.float32), jnp.zeros((5, 6, 6)), jnp.asarray([0.4]),
      "implementation"))[0]
  want = [authors_uncertainty_logx(f) for f in mean_p]
  np.testing.assert_allclose(got, want, rtol=1e-5)


def ssal_active_score(var: np.ndarray, mean: np.ndarray, threshold: float = 0.2) -> float:
  """Transcription of get_active_score (AKASH2907/semi_sup_active_learning, active_learning.py):
  the variance over pixels whose mean mask is above the threshold, over their count."""
  var = np.array(var, np.float64)
  fg = mean > threshold
  var[var == 0] = 1e-8
  return var[fg].sum() / (fg.sum() + 1e-8)


def ssal_frame_scores(probs: np.ndarray, threshold: float, min_mass: float) -> np.ndarray:
  """The SSAL code's per-frame loop on the copies' probabilities ``(R, F, H, W)`` -> ``(F,)``: a frame
  whose mean mask sums to <= min_mass does not count (-inf here; the code skips it)."""
  mean, var = probs.mean(0), probs.var(0)
  return np.array([ssal_active_score(var[f], mean[f], threshold) if mean[f].sum() > min_mass
                   else -np.inf for f in range(probs.shape[1])])


def test_noise_frame_score_by_hand():
  # Two copies of two 1x3 frames. Frame 0: means .2 .5 .7, variances .01 0 .04; above 0.2 are the
  # last two pixels, the zero variance counts as 1e-8: (1e-8 + .04) / 2. Frame 1 sums to .09 of
  # mean mask: it does not count.
  copies = np.array([[[[0.1, 0.5, 0.9]], [[0.02, 0.02, 0.02]]],
                     [[[0.3, 0.5, 0.5]], [[0.04, 0.04, 0.04]]]])
  mean = jnp.asarray(copies.mean(0), jnp.float32)
  var = jnp.asarray(copies.var(0), jnp.float32)
  got = np.asarray(uncertainty.noise_frame_scores(mean, var, jnp.asarray([0.2, 0.6]), 0.1))
  np.testing.assert_allclose(got[0, 0], (1e-8 + 0.04) / (2 + 1e-8), rtol=1e-5)
  np.testing.assert_allclose(got[1, 0], 0.04 / (1 + 1e-8), rtol=1e-5)  # threshold .6: one pixel
  assert got[0, 1] == got[1, 1] == -np.inf
  np.testing.assert_allclose(ssal_frame_scores(copies, 0.2, 0.1), [(1e-8 + 0.04) / 2, -np.inf],
                             rtol=1e-6)


def test_noise_scorer_equals_the_ssal_loop_over_noisy_copies(setup):
  """NoiseAug: R copies with independent uniform noise through the eval-mode model, vmapped, give
  the SSAL code's frame scores (transcribed) after every prefix of copies; class probabilities and
  latents are the copies' means."""
  _, model, variables, video = setup
  config = tiny_config(passes=4, pass_chunk=2, source="noise")
  config.uncertainty.noise_min_mass = 512.0  # Half the 32x32 frame at p = .5: some frames count.
  params = uncertainty.ScoreParams.from_config(config)
  assert params.thresholds == (0.2,)
  thresholds = (0.2, 0.5)
  keys = uncertainty.clip_keys(jax.random.PRNGKey(5), 7, np.arange(3))
  out = jax.device_get(jax.jit(uncertainty.make_score_fn(model, params, thresholds))(
      variables, video, keys))
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  probs = np.zeros((3, 4) + video.shape[1:4])
  cls = np.zeros((3, 4, 3))
  for b in range(3):
    for r in range(4):
      noise = jax.random.uniform(jax.random.fold_in(keys[b], r), video.shape[1:], jnp.float32,
                                 -0.05, 0.05)
      o = forward(variables, models.preprocess(video[b:b + 1]) + 2.0 * noise)  # range (-1, 1)
      probs[b, r] = np.asarray(jax.nn.sigmoid(o["seg_logits"][0]))
      cls[b, r] = np.asarray(o["class_probs"][0])
  assert probs.std(axis=1).max() > 1e-4, "the noise must change the predictions"
  for b in range(3):
    for r in range(1, 5):
      for i, thr in enumerate(thresholds):
        want = ssal_frame_scores(probs[b, :r], thr, 512.0)
        got = out["frame_scores"][b, :, r - 1, i]
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
        np.testing.assert_allclose(got[np.isfinite(got)], want[np.isfinite(want)], rtol=2e-3,
                                   atol=1e-10)
  final = out["frame_scores"][:, :, -1, 0]
  assert np.isfinite(final).any() and not np.isfinite(final).all()
  np.testing.assert_allclose(out["class_probs"], cls.mean(1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["mean_prob"], probs.mean(1).mean(axis=(-2, -1)), rtol=1e-5)


def test_noise_scorer_without_noise_has_no_variance(setup):
  """Amplitude 0: every copy is the eval-mode forward, so every counted frame scores the 1e-8 floor."""
  _, model, variables, video = setup
  config = tiny_config(passes=2, pass_chunk=1, source="noise")
  config.uncertainty.noise_amplitude = 0.0
  keys = uncertainty.clip_keys(jax.random.PRNGKey(5), 7, np.arange(3))
  out = jax.device_get(jax.jit(uncertainty.make_score_fn(
      model, uncertainty.ScoreParams.from_config(config), (0.2,)))(variables, video, keys))
  np.testing.assert_allclose(out["frame_scores"], 1e-8, rtol=1e-3)
  plain = jax.jit(lambda v, x: model.apply(v, models.preprocess(x), train=False))(variables, video)
  np.testing.assert_allclose(out["class_probs"], np.asarray(plain["class_probs"]), rtol=1e-5)
