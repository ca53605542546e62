"""Training under sparse labels: TrainState, the jitted train step, and ``fit`` with orbax resume.

Everything here reads its settings from :class:`TrainParams`, built once from the config by
:meth:`TrainParams.from_config`. One round of training runs :func:`round_steps` steps
(``train.steps``, or ``train.epochs`` epochs of the round's labelled clips) on clips centred on
labelled frames. The step is pure: the dropout key is ``fold_in(key, step)``, the batch for step
``s`` is a function of ``(seed, round, s)``, so a run resumed from a checkpoint continues with
exactly the numbers of an uninterrupted run. Deep-clustering centres live in the state and move
every step (rate 1/count). With ``loss.ssl.enabled`` a round is a mean-teacher round: the state is a
:class:`MeanTeacherState` (the teacher's parameters beside the student's, checkpointed together),
each batch also holds unlabelled clips, and the step adds :func:`claus_jax.ssl.ssl_loss`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax.training import train_state

from claus_jax import clustering
from claus_jax import errors
from claus_jax import losses
from claus_jax import models
from claus_jax import parallel
from claus_jax import pool as pool_lib
from claus_jax import ssl as ssl_lib
from claus_jax.models import i3d as i3d_lib


SCRATCH = "scratch"  # config.model.encoder_init: a random encoder, chosen on purpose.


class TrainState(train_state.TrainState):
  """Parameters, optimiser state, BatchNorm statistics and the deep-clustering state."""

  batch_stats: Any
  key: jax.Array  # raw uint32 PRNG key; dropout uses fold_in(key, step)
  centres: jax.Array  # (K, D) cluster centres
  counts: jax.Array  # (K,) per-centre counts; update rate is 1 / count
  assignments: jax.Array  # (N,) cluster of each train-split video (by split index); -1 none
  cluster_active: jax.Array  # () bool: centres initialised, cluster loss on


class MeanTeacherState(TrainState):
  """A mean-teacher round's state (``loss.ssl.enabled``): the supervised state and the teacher's
  parameters, an EMA of the student's (:func:`claus_jax.ssl.ema_update`), checkpointed with it."""

  teacher: Any


class NonFiniteLossError(errors.UserError, FloatingPointError):
  """The loss became NaN or inf; the message names the step and the loss part."""


class CheckpointError(errors.UserError, FileNotFoundError):
  """No usable checkpoint; the message names the folder and what to do."""


class DamagedCheckpointError(CheckpointError):
  """A checkpoint whose files cannot be restored: its ``folder``, the storage layer's ``cause``, and
  what the command that met it should advise."""

  def __init__(self, folder: str, cause: str, advice: str):
    super().__init__(f"checkpoint {folder} cannot be restored ({cause}); it is damaged or "
                     f"incomplete. {advice}")
    self.folder, self.cause = folder, cause


@dataclasses.dataclass(frozen=True)
class TrainParams:
  """What training reads of the config, once: the ``train`` section with the model's clip shape,
  input range, class count and encoder source, the deep-clustering state's settings, the loss
  (:class:`claus_jax.losses.LossParams`) and its mean-teacher part (:class:`claus_jax.ssl.SSLParams`,
  ``loss.ssl``). Hashable, so a jitted step can close over it."""

  steps: int
  epochs: float
  learning_rate: float
  b1: float
  b2: float
  eps: float
  encoder_lr_scale: float
  lr_schedule: str
  checkpoint_every: int
  log_every: int
  bn_recalibration_batches: int
  clip_length: int
  frame_size: int
  num_classes: int
  input_range: tuple[float, float]
  encoder_init: str
  cluster_k: int
  cluster_count_init: float
  cluster_start_step: int
  loss: losses.LossParams
  ssl: ssl_lib.SSLParams = ssl_lib.SSLParams()

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> TrainParams:
    """The settings of ``config.train`` and what training reads of ``model``, ``data.frame_size``,
    ``cluster`` and ``loss``."""
    t = config.train
    return cls(
        steps=int(t.steps), epochs=float(t.epochs), learning_rate=float(t.learning_rate),
        b1=float(t.b1), b2=float(t.b2), eps=float(t.eps),
        encoder_lr_scale=float(t.encoder_lr_scale), lr_schedule=str(t.lr_schedule),
        checkpoint_every=int(t.checkpoint_every), log_every=int(t.log_every),
        bn_recalibration_batches=int(t.bn_recalibration_batches),
        clip_length=int(config.model.clip_length), frame_size=int(config.data.frame_size),
        num_classes=int(config.model.num_classes),
        input_range=models.input_range(config.model),
        encoder_init=str(config.model.encoder_init), cluster_k=int(config.cluster.k),
        cluster_count_init=float(config.cluster.count_init),
        cluster_start_step=int(config.cluster.start_step),
        loss=losses.LossParams.from_section(config.loss),
        ssl=ssl_lib.SSLParams.from_section(config.loss.ssl))

  @property
  def encoder_frozen(self) -> bool:
    """``train.encoder_lr_scale == 0``: the encoder is a fixed feature extractor (BatchNorm in eval
    mode, no backward pass through it)."""
    return self.encoder_lr_scale == 0.0

  @property
  def latent_dim(self) -> int:
    return models.latent_dim(self.num_classes)


def make_optimizer(params: TrainParams) -> optax.GradientTransformation:
  """Adam; the encoder's learning rate is ``train.encoder_lr_scale`` times the rest's (0 = frozen)."""
  adam = lambda lr: optax.adam(lr, b1=params.b1, b2=params.b2, eps=params.eps)
  scale = params.encoder_lr_scale
  if scale == 1.0:
    return adam(params.learning_rate)
  encoder = adam(params.learning_rate * scale) if scale > 0 else optax.set_to_zero()
  label = lambda tree: {k: "encoder" if k == "encoder" else "rest" for k in tree}
  return optax.multi_transform({"encoder": encoder, "rest": adam(params.learning_rate)}, label)


def create_state(params: TrainParams, model, key: jax.Array,
                 num_videos: int, frame_size: int | None = None,
                 variables: dict | None = None, encoder_init: str = "") -> TrainState:
  """A fresh state with an empty cluster state.

  Args:
    num_videos: videos in the train split (cluster assignments are indexed by split index).
    frame_size: side of the blank clip that initialises the model; None = ``params.frame_size``.
    variables: start from these ``{'params', 'batch_stats'}`` (warm start); None = initialise
      (and load the encoder from ``encoder_init``, else from ``model.encoder_init``, if set).
    encoder_init: an encoder_init directory (e.g. claus_jax.pretrain's cache).
  """
  init_key, state_key = jax.random.split(key)
  if variables is None:
    variables = models.init_variables(model, init_key, clip_length=params.clip_length,
                                      frame_size=frame_size or params.frame_size)
    source = encoder_init or params.encoder_init
    if source and source != SCRATCH:
      variables = models.load_encoder_init(variables, source)
  k, d = params.cluster_k, params.latent_dim
  fields = dict(
      apply_fn=model.apply, params=variables["params"], tx=make_optimizer(params),
      batch_stats=variables.get("batch_stats", {}), key=state_key,
      centres=jnp.zeros((k, d), jnp.float32),
      counts=jnp.full((k,), params.cluster_count_init, jnp.float32),
      assignments=jnp.full((max(1, num_videos),), -1, jnp.int32),
      cluster_active=jnp.asarray(False))
  if params.ssl.enabled:  # The teacher starts as a copy of the student (SSAL: deepcopy).
    return MeanTeacherState.create(**fields, teacher=jax.tree.map(jnp.array, variables["params"]))
  return TrainState.create(**fields)


LR_SCHEDULES = ("constant", "cosine")  # config.train.lr_schedule.


def lr_factor(params: TrainParams, step, total_steps: int | None):
  """The round's learning rate at ``step``, as a fraction of ``train.learning_rate``.

  'constant': 1. 'cosine': ``(1 + cos(pi * step / total_steps)) / 2``, from 1 at the first step to
  nearly 0 at the last, so a round ends on small steps. ``step`` may be a traced array.
  """
  if params.lr_schedule == "constant" or not total_steps:
    return 1.0
  return 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.asarray(step, jnp.float32) / total_steps))


def train_step(state: TrainState, batch: dict, epoch: jax.Array, params: TrainParams,
               total_steps: int | None = None) -> tuple[TrainState, dict]:
  """One optimiser step. ``batch`` comes from :class:`claus_jax.data.clips.ClipSampler`.

  ``total_steps`` (the round's length) sets the learning-rate schedule (:func:`lr_factor`); None
  keeps ``train.learning_rate`` whatever the schedule.
  """
  dropout_key = jax.random.fold_in(state.key, state.step)
  video = models.preprocess(batch["video"], params.input_range)
  cluster = jnp.where(state.cluster_active, state.assignments[batch["video_index"]], -1)
  batch = {**batch, "cluster": cluster}

  teacher = ssl_term = None
  if params.ssl.enabled:
    # SSAL's order: the teacher takes in the student's current weights, then sees the weak views.
    teacher = ssl_lib.ema_update(state.teacher, state.params, state.step + 1, params.ssl.ema_max)
    ssl_term = _mean_teacher_term(state, teacher, batch, video, dropout_key, params, total_steps)

  def loss_fn(weights):
    out, updates = state.apply_fn({"params": weights, "batch_stats": state.batch_stats}, video,
                                  train=True, frozen_encoder=params.encoder_frozen,
                                  rngs={"dropout": dropout_key}, mutable=["batch_stats"])
    total, parts = losses.loss_fn(out, batch, state.centres, None, epoch, params.loss)
    if ssl_term is not None:
      extra = ssl_term(weights, out["seg_logits"])
      total, parts = total + extra["ssl_total"], {**parts, **extra}
    return total, (parts, updates["batch_stats"], out["latent"])

  (total, (parts, new_stats, latent)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  factor = lr_factor(params, state.step, total_steps)
  if isinstance(factor, float):  # Constant: the plain Adam step.
    state = state.apply_gradients(grads=grads, batch_stats=new_stats)
  else:  # Adam's update scaled by the schedule: the same optimiser state as a constant rate.
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    updates = jax.tree_util.tree_map(lambda u: u * factor.astype(u.dtype), updates)
    state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                          opt_state=opt_state, batch_stats=new_stats)
  centres, counts = clustering.update_centres(
      state.centres, state.counts, jax.lax.stop_gradient(latent), cluster,
      cluster >= 0)
  state = state.replace(centres=centres, counts=counts)
  if teacher is not None:
    state = state.replace(teacher=teacher)
  metrics = {**parts, "grad_norm": optax.tree.norm(grads),
             "lr": jnp.asarray(factor * params.learning_rate, jnp.float32)}
  return state, metrics


def _mean_teacher_term(state: MeanTeacherState, teacher, batch: dict, video: jax.Array,
                       dropout_key: jax.Array, params: TrainParams,
                       total_steps: int | None) -> Callable[[Any, jax.Array], dict]:
  """``(weights, labelled_logits) -> claus_jax.ssl.ssl_loss`` of one mean-teacher step.

  The teacher (``teacher`` parameters, train mode as in SSAL: dropout on, BatchNorm on the batch's
  statistics, which it does not keep) sees the labelled clips and the weak views
  ``batch['unlabelled_video']`` in one pass. The student's logits of the labelled clips are its
  supervised pass's (``labelled_logits``), so the supervised loss and statistics are a supervised
  step's; it sees the strong views of the unlabelled clips in a pass of their own. The consistency
  terms run over both sets of rows. The teacher's outputs carry no gradient.
  """
  ssl = params.ssl
  lo, hi = params.input_range
  weak = batch["unlabelled_video"].astype(jnp.float32) / 255.0
  strong = ssl_lib.strong_view(weak, jax.random.fold_in(dropout_key, 2), ssl)
  to_model = lambda x: x * (hi - lo) + lo  # [0, 1] -> the model's input range.
  frozen = params.encoder_frozen

  def forward(weights, clips, key):
    out, _ = state.apply_fn({"params": weights, "batch_stats": state.batch_stats}, clips,
                            train=True, frozen_encoder=frozen, rngs={"dropout": key},
                            mutable=["batch_stats"])
    return out["seg_logits"]

  # One teacher pass over both sets of rows, as SSAL's (its BatchNorm sees them together).
  teacher_logits = jax.lax.stop_gradient(forward(
      teacher, jnp.concatenate([video, to_model(weak)]), jax.random.fold_in(dropout_key, 1)))
  height, width = video.shape[2:4]
  mask = ssl_lib.high_pass_mask(height, width)
  ramp = ssl.ramp(state.step, params.steps if total_steps is None else total_steps)

  def term(weights, labelled_logits):
    student_logits = jnp.concatenate([labelled_logits, forward(weights, to_model(strong),
                                                               jax.random.fold_in(dropout_key, 3))])
    return ssl_lib.ssl_loss(student_logits, teacher_logits, ramp, ssl, mask)

  return term


def make_train_step(params: TrainParams, mesh, total_steps: int | None = None) -> Callable:
  """:func:`train_step`, jitted for ``mesh`` with explicit shardings.

  ``step(state, batch, epoch) -> (state, metrics)``: the state, the epoch and the metrics are
  replicated over the mesh, the batch is split along its ``data`` axis, and the input state is
  donated (its buffers become the new state's). ``total_steps``: the round's length, for the
  learning-rate schedule (None: the constant ``train.learning_rate``).
  """
  replicated = parallel.replicated(mesh)
  return jax.jit(functools.partial(train_step, params=params, total_steps=total_steps),
                 in_shardings=(replicated, parallel.batch_sharding(mesh), replicated),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))


@dataclasses.dataclass
class FitResult:
  state: TrainState
  history: list[dict]  # one dict of float metrics per logged step


def _checkpoint_manager(directory: str, params: TrainParams) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(save_interval_steps=params.checkpoint_every,
                                         max_to_keep=2, create=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def drop_closed_event_loop_reports() -> None:
  """Silences the echo of a failed orbax save or restore.

  The reads and writes still in flight when a save or restore fails finish on tensorstore's threads
  after orbax has closed its asyncio loop; each prints a 'RuntimeError: Event loop is closed'
  traceback as an unraisable exception (hundreds of them, interleaved with the real error). They
  say nothing more.
  """
  previous = sys.unraisablehook
  if getattr(previous, "drops_closed_event_loop", False):
    return

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)

  hook.drops_closed_event_loop = True
  sys.unraisablehook = hook


@contextlib.contextmanager
def _full_disk_named(folder: str):
  """A full disk while checkpointing into ``folder`` is a DiskFullError naming it (orbax and
  tensorstore wrap ENOSPC in their own errors)."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except  (only a full disk is reworded)
    if errors.is_disk_full(e):
      raise errors.DiskFullError(os.path.abspath(folder)) from None
    raise


def restore_latest(directory: str, abstract_state: TrainState,
                   params: TrainParams) -> TrainState | None:
  """The latest checkpoint in ``directory``, restored into the structure of ``abstract_state``."""
  # Every process opens the manager (orbax synchronises processes inside), so the folder is created
  # rather than tested: a process that skipped the manager would leave the others waiting.
  os.makedirs(directory, exist_ok=True)
  with _checkpoint_manager(directory, params) as mngr:
    step = mngr.latest_step()
    if step is None:
      return None
    try:
      return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except Exception as e:  # pylint: disable=broad-except  (orbax and tensorstore raise many kinds)
      drop_closed_event_loop_reports()
      raise DamagedCheckpointError(
          os.path.join(os.path.abspath(directory), str(step)), errors.root_cause(e),
          "Delete that folder and re-run the same command: training resumes from the round's "
          "previous checkpoint, or starts the round again.") from e


def recalibrate_batch_stats(state: TrainState, batches, momentum: float | None = None,
                            mesh=None, input_range=(-1.0, 1.0)) -> TrainState:
  """Precise BatchNorm: replaces the running statistics by their average over ``batches``.

  The running averages mix statistics of parameters from the last ~1 / (1 - momentum) steps; a
  network trained from scratch at a high learning rate moves too fast for them, and eval-mode
  outputs drift far from train-mode ones (measured: mask IoU 0.06 in eval mode against 0.83 in
  train mode on the same clips). As PySlowFast's precise BN does, this recomputes each layer's
  batch mean and variance with the final parameters, in training mode, and averages them.

  A batch's statistics are read exactly from one Flax update of zeroed running statistics:
  ``new = momentum * 0 + (1 - momentum) * batch_stat``.

  Args:
    state: the trained state.
    batches: iterable of sampler batches (``video`` (B, T, H, W, 3) uint8 ...); empty = no change.
    momentum: Flax BatchNorm momentum of the model (i3d.BN_MOMENTUM by default).
    mesh: shard each batch over this ``data`` mesh (the statistics are then global).
    input_range: pixel range fed to the model (``config.model.input_range``).
  """
  momentum = i3d_lib.BN_MOMENTUM if momentum is None else momentum
  if not jax.tree.leaves(state.batch_stats):
    return state

  @jax.jit
  def stats_of(params, batch_stats, video):
    zero = jax.tree.map(jnp.zeros_like, batch_stats)
    # Only the encoder holds BatchNorm: the head would cost a pass and change no statistic.
    _, updates = state.apply_fn({"params": params, "batch_stats": zero}, models.preprocess(video, input_range),
                                train=True, method="encode", mutable=["batch_stats"])
    return jax.tree.map(lambda x: x / (1.0 - momentum), updates["batch_stats"])

  total, count = None, 0
  for batch in batches:
    video = batch["video"]
    if mesh is not None:
      video = parallel.shard_batch({"video": video}, mesh)["video"]
    stats = stats_of(state.params, state.batch_stats, video)
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
    count += 1
  if count == 0:
    return state
  return state.replace(batch_stats=jax.tree.map(lambda x: x / count, total))


def _fetch_checked(pending: list[tuple[int, dict]]) -> list[dict]:
  """Host floats of the device metrics of ``pending`` ``(step, metrics)`` pairs, in one transfer.

  Raises:
    NonFiniteLossError: naming the first step with a NaN or inf part, and the parts.
  """
  fetched = jax.device_get([metrics for _, metrics in pending])
  rows = []
  for (step, _), metrics in zip(pending, fetched):
    row = {k: float(v) for k, v in metrics.items()}
    bad = [k for k, v in row.items() if not math.isfinite(v)]
    if bad:
      raise NonFiniteLossError(
          f"training step {step}: non-finite {', '.join(bad)} "
          f"({', '.join(f'{k}={row[k]}' for k in bad)}); lower train.learning_rate, check the "
          "input data, or try model.dtype='float32'.")
    rows.append(row)
  return rows


def _window_mean(rows: list[dict]) -> dict:
  """The mean of each metric over the rows of a log window."""
  return {k: float(np.mean([row[k] for row in rows])) for k in rows[0]}


def fit(params: TrainParams, state: TrainState, sampler, checkpoint_dir: str,
        steps_per_epoch: float, cluster_init: Callable[[TrainState], TrainState] | None = None,
        progress: Callable | None = None, mesh=None,
        history_path: str | None = None) -> FitResult:
  """Trains ``state`` for :func:`round_steps` steps, resuming from ``checkpoint_dir``.

  Args:
    sampler: has ``batch_at(step) -> dict`` and ``iterate(start_step)`` yielding batches in order.
    steps_per_epoch: clips per epoch / batch size; drives the margin schedule (and the round's
      length when ``train.epochs`` > 0).
    cluster_init: called once, at step ``cluster_start``, to initialise the centres from the model
      (k-means on the labelled videos' latents); its result is checkpointed with the state.
    progress: ``progress(step, metrics)`` after every step, for bars and logs; ``metrics`` is the
      history row of a log step, None at other steps.
    mesh: a ``data`` mesh to shard batches over (``config.train.data_parallel``); None = one device.
    history_path: JSON file of the logged metrics, rewritten atomically at each log step and
      trimmed to the restored step on resume, so the loss curve survives interruptions.

  The metrics stay on the device between log steps (fetching them would make the host wait for
  every step). At each log step, and before each checkpoint, they are fetched in one transfer and
  checked (a NaN or inf raises :class:`NonFiniteLossError` naming the step and the loss part, so no
  checkpoint holds an unchecked step); a log step's history row holds each metric's mean over the
  steps since the previous row (after a resume: since the restored step).
  """
  total_steps = round_steps(params, steps_per_epoch)
  cluster_start = cluster_start_step(params, total_steps)
  if mesh is not None:
    state = parallel.replicate(state, mesh)
  step_fn = make_train_step(params, mesh or parallel.make_mesh(jax.local_devices()[:1]),
                            total_steps)

  restored = restore_latest(checkpoint_dir, jax.eval_shape(lambda s: s, state), params)
  if restored is not None:
    state = restored if mesh is None else parallel.replicate(restored, mesh)
  start = int(state.step)
  history = []
  if history_path and os.path.exists(history_path):
    history = [h for h in pool_lib.read_json(history_path) if h["step"] <= start]
  with _full_disk_named(checkpoint_dir), _checkpoint_manager(checkpoint_dir, params) as mngr:
    if start >= total_steps:
      return FitResult(state, history)
    pending: list[tuple[int, dict]] = []  # (step, device metrics) not fetched yet
    window: list[dict] = []  # host metrics of the steps since the last history row
    for step, batch in zip(range(start, total_steps), sampler.iterate(start)):
      if step == cluster_start and cluster_init is not None and not bool(state.cluster_active):
        state = cluster_init(state)
        if mesh is not None:
          state = parallel.replicate(state, mesh)
      if mesh is not None:
        batch = parallel.shard_batch(batch, mesh)
      epoch = jnp.asarray(step / max(steps_per_epoch, 1e-9), jnp.float32)
      state, metrics = step_fn(state, batch, epoch)
      pending.append((step, metrics))
      done = step + 1
      log = done % params.log_every == 0 or done == total_steps
      if log or done % params.checkpoint_every == 0:
        window += _fetch_checked(pending)
        pending = []
      row = None
      if log:
        row = {"step": done, **_window_mean(window)}
        window = []
        history.append(row)
        if history_path:
          pool_lib.atomic_write_json(history_path, history)
      if progress is not None:
        progress(done, row)
      if done == total_steps and not params.encoder_frozen:  # A frozen encoder keeps its BN.
        n = params.bn_recalibration_batches
        state = recalibrate_batch_stats(state, (sampler.batch_at(i) for i in range(n)), mesh=mesh,
                                        input_range=params.input_range)
      mngr.save(done, args=ocp.args.StandardSave(state), force=(done == total_steps))
    mngr.wait_until_finished()
  return FitResult(state, history)


def round_steps(params: TrainParams, steps_per_epoch: float) -> int:
  """Optimiser steps of a round: ``train.steps``, or with ``train.epochs`` > 0 (the authors' 40
  epochs) ``ceil(epochs * steps_per_epoch)``, at least 1, so a round grows with its labelled set."""
  if params.epochs > 0:
    return max(1, math.ceil(params.epochs * steps_per_epoch - 1e-9))
  return params.steps


def cluster_start_step(params: TrainParams, total_steps: int | None = None) -> int:
  """When k-means runs and the cluster loss starts: ``cluster.start_step``, or with -1 half-way
  through the round (the detector has learnt something by then). The authors' code runs k-means
  before the first step and trains the cluster loss throughout (``start_step=0``)."""
  total = params.steps if total_steps is None else int(total_steps)
  start = params.cluster_start_step
  if start >= total > 0:  # train.epochs > 0: the round's steps are known only now.
    raise errors.ConfigError(
        f"config.cluster.start_step: {start} is not below this round's {total} steps "
        "(train.epochs), so k-means would never run and the clustering (loss and CLAUS's cluster "
        "quotas) would be silently off; use a smaller step, -1 (half-way) or 0.")
  return total // 2 if start < 0 else start
