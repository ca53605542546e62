"""Training: precise BatchNorm, the loss going down on the smoke data, resume, and non-finite losses."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from claus_jax import models
from claus_jax import train as train_lib
from claus_jax.models import i3d

from tests.config_files import load_config
from tests.test_parallel import fixed_batch, tiny_config

train_params = train_lib.TrainParams.from_config  # The settings a call reads, from a config.


class _Interrupted(Exception):
  """A run killed inside a round: raised from fit's progress callback by :func:`_stop_at`."""


def _stop_at(stop_step: int):
  """A fit ``progress`` callback that interrupts the run when step ``stop_step`` is done."""
  def progress(step, metrics):
    del metrics
    if step == stop_step:
      raise _Interrupted()
  return progress


class _Sampler:
  """A sampler of ``steps`` steps whose batch at a step is ``batch_at(step)``."""

  def __init__(self, batch_at, steps: int):
    self.batch_at, self.steps = batch_at, steps

  def iterate(self, start):
    return (self.batch_at(s) for s in range(start, self.steps))


class _BNNet(nn.Module):
  """One BatchNorm over the RGB channels, with the detector's momentum, call signature and split:
  ``encode`` holds the BatchNorm, the rest (here a dropout) follows it."""

  def setup(self):
    self.bn = nn.BatchNorm(momentum=i3d.BN_MOMENTUM, epsilon=1e-3)
    self.drop = nn.Dropout(0.5)

  def encode(self, x, train=False):
    return self.bn(x, use_running_average=not train)

  def __call__(self, x, train=False):
    return {"y": self.drop(self.encode(x, train), deterministic=not train)}


def _bn_state(video):
  net = _BNNet()
  variables = net.init({"params": jax.random.PRNGKey(0)}, models.preprocess(video))
  return train_lib.TrainState.create(
      apply_fn=net.apply, params=variables["params"], tx=optax.sgd(0.1),
      batch_stats=variables["batch_stats"], key=jax.random.PRNGKey(1), centres=jnp.zeros((1, 1)),
      counts=jnp.ones((1,)), assignments=jnp.zeros((1,), jnp.int32),
      cluster_active=jnp.asarray(False))


def test_precise_bn_is_the_mean_of_per_batch_statistics():
  rng = np.random.default_rng(0)
  # Three batches with very different brightness: running averages would lag, precise BN does not.
  batches = [{"video": rng.integers(lo, lo + 60, (2, 3, 4, 5, 3), dtype=np.uint8)}
             for lo in (0, 90, 190)]
  state = _bn_state(batches[0]["video"])
  out = train_lib.recalibrate_batch_stats(state, batches)
  # Known answer by hand: per-batch mean and (biased) variance per channel over B, T, H, W of the
  # [-1, 1] input, averaged over the batches.
  xs = [b["video"].astype(np.float64) / 127.5 - 1.0 for b in batches]
  mean = np.mean([x.reshape(-1, 3).mean(0) for x in xs], axis=0)
  var = np.mean([x.reshape(-1, 3).var(0) for x in xs], axis=0)
  stats = out.batch_stats["bn"]
  np.testing.assert_allclose(stats["mean"], mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats["var"], var, rtol=1e-4, atol=1e-5)
  # Parameters and everything else are untouched; no batches = no change.
  assert jax.tree.all(jax.tree.map(np.array_equal, out.params, state.params))
  same = train_lib.recalibrate_batch_stats(state, [])
  assert jax.tree.all(jax.tree.map(np.array_equal, same.batch_stats, state.batch_stats))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  """The smoke dataset (generated into a temporary tfds folder) and a sampler over half its frames."""
  import os

  from claus_jax import data as data_lib
  from claus_jax.data import clips as clips_lib
  old = os.environ.get("CLAUS_TFDS_DIR")
  os.environ["CLAUS_TFDS_DIR"] = str(tmp_path_factory.mktemp("tfds"))
  try:
    cfg = load_config("synthetic", "smoke")
    ds = data_lib.get_dataset(cfg)
  finally:
    if old is None:
      os.environ.pop("CLAUS_TFDS_DIR")
    else:
      os.environ["CLAUS_TFDS_DIR"] = old
  n = len(ds.train_index)
  items = [(i, np.arange(0, int(ds.train_index.num_frames[i]), 2)) for i in range(n)]
  sampler = clips_lib.ClipSampler(ds.train, items, clips_lib.ClipParams.from_config(cfg), seed=0,
                                  round_index=0)
  return cfg, ds, sampler


def _fixed_batches_loss(state, batches, config):
  """Mean total loss (and its localisation part) over fixed batches, in eval mode, no update."""
  from claus_jax import losses

  @jax.jit
  def one(params, batch_stats, batch):
    out = state.apply_fn({"params": params, "batch_stats": batch_stats},
                         models.preprocess(batch["video"]), train=False)
    _, parts = losses.loss_fn(out, batch, None, None, 0.0, losses.LossParams.from_section(config.loss))
    return parts["total"], parts["localisation"]

  vals = np.array([jax.device_get(one(state.params, state.batch_stats, b)) for b in batches])
  return vals.mean(axis=0)


@pytest.mark.slow  # ~80 s (2 CPU cores): CI runs it in its -m slow step.
def test_a_hundred_steps_of_the_tiny_model_reduce_the_loss_clearly(smoke):
  cfg, ds, sampler = smoke
  cfg = cfg.copy_and_resolve_references()
  cfg.train.steps = 100
  model = models.build_model(cfg)
  state = train_lib.create_state(train_params(cfg), model, jax.random.PRNGKey(0),
                                 len(ds.train_index))
  # The same 6 batches before and after (the per-step training loss moves with its batch).
  fixed = [sampler.batch_at(1000 + i) for i in range(6)]
  before_stats = train_lib.recalibrate_batch_stats(state, fixed)
  before = _fixed_batches_loss(before_stats, fixed, cfg)
  step = jax.jit(functools.partial(train_lib.train_step, params=train_params(cfg)))
  totals = []
  for s, batch in zip(range(cfg.train.steps), sampler.iterate(0)):
    state, metrics = step(state, batch, jnp.float32(s / sampler.steps_per_epoch))
    totals.append(float(metrics["total"]))
  assert np.all(np.isfinite(totals))
  state = train_lib.recalibrate_batch_stats(state, fixed)
  after = _fixed_batches_loss(state, fixed, cfg)
  # Measured after 100 steps, state seeds 0 and 2, with and without i3d.conv2d_cpu's blocked
  # forward (the same function up to float reordering): total x0.73-0.79, localisation x0.75-0.83.
  # After 60 steps the ratios spread over 0.81-0.92: one float-reordering change of the conv moved
  # seed 0 from 0.81 across the 0.9 line, so the test runs 100.
  assert after[0] < 0.9 * before[0], (before, after, np.round(totals, 3))
  assert after[1] < 0.9 * before[1], (before, after)


@pytest.mark.slow  # ~110 s (2 CPU cores): CI runs it in its -m slow step.
def test_fit_resumes_to_the_parameters_of_an_uninterrupted_run(smoke, tmp_path):
  cfg, ds, sampler = smoke
  cfg = cfg.copy_and_resolve_references()
  cfg.train.steps, cfg.train.checkpoint_every, cfg.train.log_every = 6, 3, 1
  cfg.train.bn_recalibration_batches = 2
  model = models.build_model(cfg)
  fresh = lambda: train_lib.create_state(train_params(cfg), model, jax.random.PRNGKey(0),
                                         len(ds.train_index))
  spe = sampler.steps_per_epoch
  whole = train_lib.fit(train_params(cfg), fresh(), sampler, str(tmp_path / "whole"), spe,
                        history_path=str(tmp_path / "whole.json"))
  # Interrupted inside step 5 (after the checkpoint of step 3), then run again in the same folder.
  with pytest.raises(_Interrupted):
    train_lib.fit(train_params(cfg), fresh(), sampler, str(tmp_path / "part"), spe,
                  progress=_stop_at(5), history_path=str(tmp_path / "part.json"))
  resumed = train_lib.fit(train_params(cfg), fresh(), sampler, str(tmp_path / "part"), spe,
                          history_path=str(tmp_path / "part.json"))
  assert int(resumed.state.step) == int(whole.state.step) == 6
  for name in ("params", "batch_stats", "opt_state", "centres", "counts"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0,
                                                         atol=1e-6),
                 getattr(resumed.state, name), getattr(whole.state, name))
  assert [h["step"] for h in resumed.history] == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([h["total"] for h in resumed.history],
                             [h["total"] for h in whole.history], rtol=1e-6)
  # Logged every 3 steps: the metrics stay on the device in between, and each history row is the
  # mean over its window of the per-step rows of the run logged at every step.
  cfg3 = cfg.copy_and_resolve_references()
  cfg3.train.log_every = 3
  rows = []
  windowed = train_lib.fit(train_params(cfg3), fresh(), sampler, str(tmp_path / "windowed"), spe,
                           progress=lambda step, row: rows.append((step, row)))
  assert [step for step, _ in rows] == [1, 2, 3, 4, 5, 6]
  assert [row is None for _, row in rows] == [True, True, False, True, True, False]
  assert windowed.history == [row for _, row in rows if row is not None]
  assert [h["step"] for h in windowed.history] == [3, 6]
  for h, window in zip(windowed.history, (whole.history[:3], whole.history[3:])):
    assert set(h) == set(window[0])
    for name in set(h) - {"step"}:
      np.testing.assert_allclose(h[name], np.mean([w[name] for w in window]), rtol=1e-6)
  # The jitted step's explicit out shardings: the state stays replicated on its mesh.
  assert all(isinstance(x.sharding, jax.sharding.NamedSharding) and x.sharding.is_fully_replicated
             for x in jax.tree.leaves(windowed.state.params))
  # A finished run restarted returns its final state without training again.
  again = train_lib.fit(train_params(cfg), fresh(), sampler, str(tmp_path / "whole"), spe)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               again.state.params, whole.state.params)


def test_a_non_finite_loss_stops_with_the_step_and_the_part(tmp_path):
  cfg = tiny_config()
  cfg.train.steps, cfg.train.checkpoint_every = 3, 10
  model = models.build_model(cfg)
  state = train_lib.create_state(train_params(cfg), model, jax.random.PRNGKey(0), 8)
  good = fixed_batch(cfg)
  bad = dict(good, weight=np.full_like(good["weight"], np.nan))

  sampler = _Sampler(lambda step: bad if step == 1 else good, cfg.train.steps)
  with pytest.raises(train_lib.NonFiniteLossError, match=r"step 1: non-finite .*bce"):
    train_lib.fit(train_params(cfg), state, sampler, str(tmp_path / "ckpt"), 1.0)


@pytest.mark.parametrize("scale", [0.0, 0.1])
def test_encoder_lr_scale_scales_or_freezes_the_encoder_update(scale):
  """Adam's first update is linear in the learning rate: the encoder's moves ``scale`` times as far
  as with one shared rate, the rest exactly as far; at 0 the encoder and its BatchNorm stay put."""
  base, batch = tiny_config(), None
  # Adam's first step is lr * g / (|g| + eps): a gradient entry at float-noise level becomes +-lr
  # with a sign that depends on the compiled program. With the 'em' routing sign one entry of this
  # random tiny model sits there (measured: 1 of 32 in one leaf), which says nothing about the
  # scaling under test; the 'port' sign has none.
  base.model.routing_sign = "port"
  scaled = base.copy_and_resolve_references()
  with scaled.unlocked():
    scaled.train.encoder_lr_scale = scale
  model = models.build_model(base)
  batch = fixed_batch(base)
  moved = {}
  for name, cfg in (("base", base), ("scaled", scaled)):
    state = train_lib.create_state(train_params(cfg), model, jax.random.PRNGKey(0), 4)
    new, _ = jax.jit(functools.partial(train_lib.train_step, params=train_params(cfg)))(
        state, batch, jnp.zeros((), jnp.float32))
    moved[name] = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), new.params, state.params)
    moved[name + "_stats"] = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(),
                                          new.batch_stats, state.batch_stats)
  if scale == 0.0:
    # Frozen: the encoder gets no update, and its BatchNorm runs in eval mode (statistics unchanged).
    assert all(np.all(d == 0) for d in jax.tree.leaves(moved["scaled"]["encoder"]))
    assert all(d == 0 for d in jax.tree.leaves(moved["scaled_stats"]))
    assert any(d > 0 for d in jax.tree.leaves(moved["base_stats"]))
  else:
    for a, b in zip(jax.tree.leaves(moved["scaled"]["encoder"]),
                    jax.tree.leaves(moved["base"]["encoder"])):
      np.testing.assert_allclose(a, scale * b, rtol=1e-3, atol=1e-9)
  head_keys = [k for k in moved["base"] if k != "encoder"]
  assert head_keys
  for key in head_keys:
    changed = [np.abs(x).max() for x in jax.tree.leaves(moved["scaled"][key])]
    assert max(changed) > 0
    if scale != 0.0:  # Same encoder output at step 0, so the same head gradients and updates.
      for a, b in zip(jax.tree.leaves(moved["scaled"][key]), jax.tree.leaves(moved["base"][key])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-9)


@pytest.mark.slow  # ~55 s (2 CPU cores): CI runs it in its -m slow step.
def test_cosine_schedule_scales_each_step_by_its_factor():
  """train.lr_schedule='cosine': the factor by hand, and a step at factor f moves every parameter f
  times as far as the constant rate's step from the same state (same gradients and Adam moments)."""
  c = tiny_config()
  c.model.routing_sign = "port"  # No gradient entry at float-noise level (see the test above).
  assert train_lib.lr_factor(train_params(c), 7, 100) == 1.0  # Constant.
  cos = c.copy_and_resolve_references()
  with cos.unlocked():
    cos.train.lr_schedule = "cosine"
  # (1 + cos(pi s / S)) / 2: 1 at the start, 1/2 half-way, (1 + cos(3 pi / 4)) / 2 at 3/4.
  for step, want in ((0, 1.0), (50, 0.5), (75, (1 - 0.5 ** 0.5) / 2), (100, 0.0)):
    np.testing.assert_allclose(train_lib.lr_factor(train_params(cos), step, 100), want, atol=1e-6)
  # No round length: the constant rate.
  assert train_lib.lr_factor(train_params(cos), 50, None) == 1.0
  model = models.build_model(c)
  batch = fixed_batch(c)
  state = train_lib.create_state(train_params(c), model, jax.random.PRNGKey(0), 4)
  state = state.replace(step=75)  # The same dropout key for both.
  moved, lrs = {}, {}
  for name, cfg in (("constant", c), ("cosine", cos)):
    step = functools.partial(train_lib.train_step, params=train_params(cfg), total_steps=100)
    new, metrics = jax.jit(step)(state, batch, jnp.zeros((), jnp.float32))
    assert int(new.step) == 76
    moved[name] = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), new.params, state.params)
    lrs[name] = float(metrics["lr"])
  factor = (1 - 0.5 ** 0.5) / 2
  np.testing.assert_allclose([lrs["constant"], lrs["cosine"]],
                             [c.train.learning_rate, factor * c.train.learning_rate], rtol=1e-6)
  leaves = list(zip(jax.tree.leaves(moved["cosine"]), jax.tree.leaves(moved["constant"])))
  assert any(np.abs(b).max() > 0 for _, b in leaves)
  for a, b in leaves:
    # The moves are differences of float32 parameters near 1: ~6e-8 of rounding each (seen: 4.2e-8
    # on a move of 3.9e-5 at XLA optimisation level 0).
    np.testing.assert_allclose(a, factor * b, rtol=1e-3, atol=1e-7)


def test_round_steps_and_cluster_start():
  """train.epochs (item 13) and cluster.start_step (item 11)."""
  from claus_jax import configlib
  c = configlib.base_config()
  c.train.steps = 300
  assert train_lib.round_steps(train_params(c), 12.5) == 300
  # -1: half-way through the round.
  assert train_lib.cluster_start_step(train_params(c), 300) == 150
  c.train.epochs = 40.0
  # The authors: 40 epochs of 2 clips per labelled video at batch 6; 24 videos -> 8 steps/epoch.
  assert train_lib.round_steps(train_params(c), 2 * 24 / 6) == 320
  assert train_lib.round_steps(train_params(c), 0.01) == 1
  c.cluster.start_step = 0
  assert train_lib.cluster_start_step(train_params(c), 320) == 0


def _ssl_config(**ssl):
  """The tiny config with mean-teacher rounds; Adam made nearly linear (eps = lr = 100: a first
  update of ``g / (1 + |g| / 100)``), so that gradient entries at float-noise level stay at that
  level instead of becoming +-lr with a sign set by the compiled program."""
  cfg = tiny_config()
  cfg.train.eps = cfg.train.learning_rate = 100.0
  cfg.loss.ssl.enabled = True
  cfg.loss.ssl.unlabelled_batch_size = 2
  for k, v in ssl.items():
    setattr(cfg.loss.ssl, k, v)
  return cfg


def _ssl_batch(cfg, seed=0):
  return dict(fixed_batch(cfg, seed=seed), unlabelled_video=fixed_batch(cfg, 2, seed + 100)["video"])


@pytest.mark.slow  # Two tiny-model train steps compiled (~3 min cold on 2 CPU cores).
def test_mean_teacher_step_at_weight_zero_is_the_supervised_step_and_the_teacher_is_the_ema():
  zero = _ssl_config(mse_weight=0.0, high_pass_weight=0.0, temporal_weight=0.0)
  supervised = zero.copy_and_resolve_references()
  supervised.loss.ssl.enabled = False
  model = models.build_model(zero)
  runs = {}
  for name, cfg in (("supervised", supervised), ("zero", zero)):
    state = train_lib.create_state(train_params(cfg), model, jax.random.PRNGKey(0), 8)
    step = jax.jit(functools.partial(train_lib.train_step, params=train_params(cfg),
                                     total_steps=4))
    states, rows = [state], []
    for s in range(3):
      state, metrics = step(state, _ssl_batch(cfg, s), jnp.zeros((), jnp.float32))
      states.append(state)
      rows.append(jax.device_get(metrics))
    runs[name] = states, rows
  (sup_states, sup_rows), (ssl_states, ssl_rows) = runs["supervised"], runs["zero"]
  assert isinstance(ssl_states[-1], train_lib.MeanTeacherState)
  for a, b in zip(sup_rows, ssl_rows):
    for key in a:
      np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-7, err_msg=key)
    assert b["ssl_total"] == 0.0 and b["ssl_mse"] > 0.0  # Computed, weighted 0.
  for name in ("params", "batch_stats", "centres", "counts"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4,
                                                         atol=1e-6),
                 getattr(sup_states[-1], name), getattr(ssl_states[-1], name))
  # The teacher by hand: it starts as the student and at update k (1, 2, ...) takes in the student's
  # weights of before step k with alpha = 1 - 1 / (k + 1): t_k = alpha t_{k-1} + (1 - alpha) p_{k-1}.
  teacher = jax.tree.map(np.asarray, ssl_states[0].params)
  for k in range(1, 4):
    alpha = 1.0 - 1.0 / (k + 1)
    teacher = jax.tree.map(lambda t, p: alpha * t + (1 - alpha) * np.asarray(p), teacher,
                           ssl_states[k - 1].params)
    # Float32 rounding of O(1) weights: 1e-6 absolute.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(b), a, rtol=1e-5, atol=1e-6),
                 teacher, ssl_states[k].teacher)
  assert max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(
      jax.tree.leaves(ssl_states[-1].teacher), jax.tree.leaves(ssl_states[-1].params))) > 1e-3


@pytest.mark.slow  # One tiny mean-teacher step compiled (~2 min cold on 2 CPU cores).
def test_mean_teacher_fit_learns_from_consistency_and_resumes_exactly(tmp_path):
  cfg = _ssl_config(temporal_weight=1.0)
  cfg.train.steps, cfg.train.checkpoint_every, cfg.train.log_every = 4, 2, 1
  model = models.build_model(cfg)
  fresh = lambda: train_lib.create_state(train_params(cfg), model, jax.random.PRNGKey(0), 8)

  sampler = _Sampler(lambda step: _ssl_batch(cfg, step), cfg.train.steps)
  whole = train_lib.fit(train_params(cfg), fresh(), sampler, str(tmp_path / "whole"), 1.0)
  with pytest.raises(_Interrupted):
    train_lib.fit(train_params(cfg), fresh(), sampler, str(tmp_path / "part"), 1.0,
                  progress=_stop_at(3))
  resumed = train_lib.fit(train_params(cfg), fresh(), sampler, str(tmp_path / "part"), 1.0)
  for name in ("params", "teacher", "opt_state", "batch_stats", "centres"):
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 getattr(resumed.state, name), getattr(whole.state, name))
  # The consistency terms are on, ramped from exp(-5) towards 1 over half the round, and each
  # history row carries them.
  assert [round(h["ssl_ramp"], 6) for h in whole.history] == [
      round(float(np.exp(-5.0)), 6), round(float(np.exp(-5.0 * 0.25)), 6), 1.0, 1.0]
  assert all(h["ssl_total"] > 0 and h["ssl_temporal"] > 0 for h in whole.history)
