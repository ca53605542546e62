"""Encoder pretraining on the synthetic corpus: the embedded benchmark's Charades.

The paper's detector starts every round from an I3D pretrained on Charades, which shares no video and
no class with J-HMDB-21 or UCF-101-24. This module gives the synthetic benchmark the same start: it
trains the detector's encoder (InceptionI3d up to Mixed_4f, at the config's width and frame size) on
:mod:`claus_jax.data.pretrain_corpus`, whose motion families and clips are disjoint from the
benchmark's, and writes an ``encoder_init`` directory in the format of ``tools/import_i3d``.

What pretraining sees: corpus clips only (fresh scenes, actors and motions per clip, seeded apart
from the benchmark). Never a benchmark video, class, or split.

Objective, on Mixed_4f ``(B, 1, f, f, C)``:
  * the clip's action family: a linear layer on the spatial mean and max (cross-entropy);
  * the actor's track and parts: a 1x1 conv to ``4 L (1 + P)`` logits per cell, i.e. for each of
    the clip's ``L`` frames and each half cell, the fraction of its pixels covered by the actor and
    by each of its ``P`` body parts (``figures.PARTS``; binary cross-entropy on soft targets, weight
    ``seg_weight``). Mixed_4f has a single time step, so this dense target makes it encode where the
    actor and its limbs are in every frame: its pose and motion, whatever the family;
  * the actor's joints: a 1x1 conv to ``4 L J`` logits per cell, i.e. for each clip frame and each
    of the ``J`` joints (``pretrain_corpus.HEATMAP_JOINTS``) a heatmap over the half cells, trained
    by cross-entropy against the joint's position spread bilinearly over the four nearest half-cell
    centres (joints outside the frame carry no loss; weight ``heatmap_weight``). This is the pose
    estimators' target (and COCO keypoints' role in a person pretraining): the features must say
    where each wrist, elbow and knee is in every frame, the pose that tells the actions apart;
  * the actor's pose: a linear layer on the pooled features to every clip frame's 2-D joint
    positions relative to the pelvis (``pretrain_corpus.POSE_JOINTS``, in figure heights; mean
    squared error, weight ``pose_weight``): where each limb is, whatever the family;
  * the scene: a linear layer on the pooled features to the scene style's colours and horizon
    (``pretrain_corpus.scene_target``; mean squared error, weight ``scene_weight``), so the
    features keep the context that a Charades-trained I3D keeps.
The pooled features are layer-normalised before the three linear heads, and the two regression heads
start at zero (objective 5): unnormalised post-ReLU features made their first predictions ~100x
the targets' variance, and 1500 steps of Adam did not bring them back to the mean's error.
The heads are thrown away; as in the paper, only the encoder arrives pretrained.

Weights are cached under a hash of every setting that determines them (``cache_key``), so the main
job pretrains once per machine and reuses the result; the same settings give bit-identical weights
on the same machine (the batches are a function of the step, the step is pure, XLA's CPU reductions
run in a fixed order).

  python -m claus_jax.pretrain --config=configs/synthetic.py
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import os
import shutil
import tempfile
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax.training import train_state

from claus_jax import cli
from claus_jax import configlib
from claus_jax import models
from claus_jax import pool as pool_lib
from claus_jax import train as train_lib
from claus_jax.data import figures
from claus_jax.data import pretrain_corpus
from claus_jax.models import i3d as i3d_lib

RESULT_FILE = "pretrain.json"  # Settings, loss history and held-out accuracy, beside variables/.
PACKAGED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "pretrained")
# Bump when the pretraining objective or model changes (it is part of the cache key).
OBJECTIVE_VERSION = 5  # 3: the pose head; 4: part covers and the scene head; 5: joint heatmaps,
# normalised pooled features and zero-initialised regression heads.


class PretrainNet(nn.Module):
  """The detector's encoder with throw-away heads (action family, actor and part covers, pose,
  scene)."""

  num_classes: int
  width: float
  conv_impl: str = "auto"
  clip_length: int = 8
  pose_joints: int = len(pretrain_corpus.POSE_JOINTS)
  heatmap_joints: int = len(pretrain_corpus.HEATMAP_JOINTS)
  parts: int = len(figures.PARTS)

  def setup(self):
    self.encoder = i3d_lib.InceptionI3d("Mixed_4f", "claus", self.width, jnp.float32,
                                        self.conv_impl)
    self.motion_head = nn.Dense(self.num_classes)
    self.mask_head = nn.Conv(4 * self.clip_length * (1 + self.parts), (1, 1))
    self.joint_head = nn.Conv(4 * self.clip_length * self.heatmap_joints, (1, 1))
    self.pooled_norm = nn.LayerNorm()
    self.pose_head = nn.Dense(self.clip_length * self.pose_joints * 2,
                              kernel_init=nn.initializers.zeros)
    self.scene_head = nn.Dense(pretrain_corpus.SCENE_TARGETS, kernel_init=nn.initializers.zeros)

  def encode(self, video: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """The encoder alone (train.recalibrate_batch_stats runs this)."""
    return self.encoder(video, train)

  def __call__(self, video: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """video (B, L, S, S, 3) in [-1, 1] -> {'logits': (B, F), 'mask_logits': (B, L, 1 + P, 2f,
    2f) (the actor, then each part), 'joint_logits': (B, L, J', 2f, 2f), 'pose': (B, L, J, 2),
    'scene': (B, 16)}, where f is Mixed_4f's grid (S/16) and 2f its half cells."""
    feat = self.encoder(video, train)["Mixed_4f"][:, 0].astype(jnp.float32)  # (B, f, f, C)
    pooled = jnp.concatenate([feat.mean(axis=(1, 2)), feat.max(axis=(1, 2))], axis=-1)
    pooled = self.pooled_norm(pooled)
    pose = self.pose_head(pooled).reshape(feat.shape[0], self.clip_length, self.pose_joints, 2)
    return {"logits": self.motion_head(pooled),
            "mask_logits": self._half_cells(self.mask_head(feat), 1 + self.parts),
            "joint_logits": self._half_cells(self.joint_head(feat), self.heatmap_joints),
            "pose": pose, "scene": self.scene_head(pooled)}

  def _half_cells(self, maps: jax.Array, k: int) -> jax.Array:
    """(B, f, f, L * k * 4) -> (B, L, k, 2f, 2f): per clip frame, k maps over the half cells."""
    b, f = maps.shape[0], maps.shape[1]
    maps = maps.reshape(b, f, f, self.clip_length, k, 2, 2)
    return maps.transpose(0, 3, 4, 1, 5, 2, 6).reshape(b, self.clip_length, k, 2 * f, 2 * f)


class PretrainState(train_state.TrainState):
  batch_stats: Any


@dataclasses.dataclass(frozen=True)
class PretrainSettings:
  """What pretraining reads of the config (``pretrain`` and the encoder's shape), read once."""

  corpus: pretrain_corpus.PretrainParams
  seed: int
  steps: int
  batch_size: int
  learning_rate: float
  seg_weight: float
  heatmap_weight: float
  pose_weight: float
  scene_weight: float
  val_clips: int
  cache_root: str  # config.pretrain.cache_dir ('' = $CLAUS_CACHE_DIR or ~/.cache/claus_jax).
  width: float  # model.width and model.conv_impl: the encoder the weights are for.
  conv_impl: str
  bn_recalibration_batches: int  # train.bn_recalibration_batches.
  data_frame_size: int  # data.frame_size, which names the cache folder.

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> PretrainSettings:
    p = config.pretrain
    return cls(
        corpus=pretrain_corpus.PretrainParams.from_section(
            p, frame_size=int(config.data.frame_size), clip_length=int(config.model.clip_length),
            frame_step=int(config.train.clip_skip)),
        seed=int(p.seed), steps=int(p.steps), batch_size=int(p.batch_size),
        learning_rate=float(p.learning_rate), seg_weight=float(p.seg_weight),
        heatmap_weight=float(p.heatmap_weight), pose_weight=float(p.pose_weight),
        scene_weight=float(p.scene_weight), val_clips=int(p.val_clips),
        cache_root=str(p.cache_dir), width=float(config.model.width),
        conv_impl=str(config.model.conv_impl),
        bn_recalibration_batches=int(config.train.bn_recalibration_batches),
        data_frame_size=int(config.data.frame_size))

  def cache_key(self) -> dict[str, Any]:
    """Every setting that determines the pretrained weights (and nothing else)."""
    return {
        "objective": OBJECTIVE_VERSION, "corpus": self.corpus.to_dict(),
        "steps": self.steps, "batch_size": self.batch_size, "learning_rate": self.learning_rate,
        "seg_weight": self.seg_weight, "heatmap_weight": self.heatmap_weight,
        "pose_weight": self.pose_weight, "scene_weight": self.scene_weight,
        "width": self.width, "conv_impl": self.conv_impl,
        "bn_recalibration_batches": self.bn_recalibration_batches,
    }


def cache_dir(settings: PretrainSettings) -> str:
  """The encoder_init directory of these pretraining settings (it may not exist yet)."""
  root = (settings.cache_root
          or os.path.join(os.environ.get("CLAUS_CACHE_DIR", "") or "~/.cache/claus_jax",
                          "pretrained"))
  key = pool_lib.fingerprint(settings.cache_key())
  return os.path.join(os.path.abspath(os.path.expanduser(root)),
                      f"synthetic_{settings.data_frame_size}px_w{settings.width:g}_{key}")


def is_complete(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, RESULT_FILE)) and os.path.isdir(
      os.path.join(directory, models.ENCODER_VARIABLES_SUBDIR))


def joint_heatmap_targets(joints: jax.Array, frame_size: int, grid: int) -> tuple[jax.Array,
                                                                                  jax.Array]:
  """Soft heatmap targets of joint positions over a ``grid x grid`` tiling of the frame.

  Args:
    joints: ``(..., 2)`` image positions in pixels (x, y; pixel i's centre is at i).
    frame_size: S, the frame's side in pixels.
    grid: G, cells per side (cell g spans pixels [g S/G, (g + 1) S/G)).

  Returns:
    ``targets (..., G, G)`` (rows y, columns x) summing to 1: the joint's position spread
    bilinearly over the four nearest cell centres (clamped at the border), and ``inside (...)``,
    1.0 where the joint lies in the frame (a joint outside it has no cell to be found in).
  """
  cell = frame_size / grid
  u = jnp.clip((joints + 0.5) / cell - 0.5, 0.0, grid - 1.0)  # In cell-centre units.
  low = jnp.floor(u)
  frac = u - low
  cells = jnp.arange(grid, dtype=u.dtype)
  weights = ((cells == low[..., None]) * (1.0 - frac[..., None])
             + (cells == low[..., None] + 1.0) * frac[..., None])  # (..., 2, G): x then y.
  targets = weights[..., 1, :, None] * weights[..., 0, None, :]
  inside = jnp.all((joints >= -0.5) & (joints < frame_size - 0.5), axis=-1)
  return targets, inside.astype(u.dtype)


def joint_heatmap_loss(logits: jax.Array, joints: jax.Array, frame_size: int,
                       ) -> tuple[jax.Array, jax.Array]:
  """``(loss, cell accuracy)`` of joint heatmaps ``logits (B, L, J, G, G)`` (a softmax over the
  G*G cells per joint and frame) for ``joints (B, L, J, 2)``: the mean cross-entropy against
  :func:`joint_heatmap_targets`, and the fraction whose peak is the cell holding the joint, both
  over the joints inside the frame."""
  grid = logits.shape[-1]
  targets, inside = joint_heatmap_targets(joints, frame_size, grid)
  flat = logits.reshape(*logits.shape[:-2], grid * grid)
  ce = optax.softmax_cross_entropy(flat, targets.reshape(flat.shape))
  held = jnp.clip(jnp.floor((joints + 0.5) * grid / frame_size), 0, grid - 1).astype(jnp.int32)
  hit = jnp.argmax(flat, axis=-1) == held[..., 1] * grid + held[..., 0]
  count = jnp.maximum(jnp.sum(inside), 1.0)
  return jnp.sum(ce * inside) / count, jnp.sum(hit * inside) / count


def _losses(model, variables, batch, weights, train):
  video = models.preprocess(batch["video"])
  if train:
    out, updates = model.apply(variables, video, train=True, mutable=["batch_stats"])
  else:
    out, updates = model.apply(variables, video, train=False), {}
  onehot = jax.nn.one_hot(batch["label"], out["logits"].shape[-1])
  cls = optax.softmax_cross_entropy(out["logits"], onehot).mean()
  # Target: in every frame, the fraction of each half encoder cell covered by the actor and by each
  # of its parts. Mixed_4f keeps one time step, so predicting this makes it encode the actor's track
  # and limbs through the clip.
  parts = out["mask_logits"].shape[2] - 1
  maps = jnp.concatenate([batch["mask"][:, :, None] > 0,
                          batch["parts"][:, :, None] == jnp.arange(1, parts + 1)[:, None, None]],
                         axis=2).astype(jnp.float32)  # (B, L, 1 + P, S, S)
  b, length, k, s, _ = maps.shape
  g = out["mask_logits"].shape[-1]
  cover = maps.reshape(b, length, k, g, s // g, g, s // g).mean(axis=(4, 6))
  seg = optax.sigmoid_binary_cross_entropy(out["mask_logits"], cover).mean()
  heat, joint_acc = joint_heatmap_loss(out["joint_logits"], batch["joints"], s)
  pose = jnp.mean(jnp.square(out["pose"] - batch["pose"]))
  scene = jnp.mean(jnp.square(out["scene"] - batch["scene"]))
  total = (cls + weights["seg"] * seg + weights["heatmap"] * heat + weights["pose"] * pose
           + weights["scene"] * scene)
  acc = jnp.mean((out["logits"].argmax(-1) == batch["label"]).astype(jnp.float32))
  return total, ({"total": total, "classification": cls, "mask": seg, "heatmap": heat,
                  "joint_cell_accuracy": joint_acc, "pose": pose, "scene": scene, "accuracy": acc},
                 updates.get("batch_stats"))


def make_optimizer(p: PretrainSettings) -> optax.GradientTransformation:
  warmup = max(1, int(0.05 * p.steps))
  schedule = optax.warmup_cosine_decay_schedule(0.0, p.learning_rate, warmup, max(p.steps, warmup + 1))
  return optax.adam(schedule)


def _batches(params, batch_size: int, first: int, count: int, start_index: int = 0):
  """Batches ``first .. first + count - 1`` (clip indices ``start_index + step * B + j``), rendered
  one ahead in a background thread."""
  render = lambda step: pretrain_corpus.batch(
      params, range(start_index + step * batch_size, start_index + (step + 1) * batch_size))
  with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="claus-pretrain") as pool:
    pending = [pool.submit(render, step) for step in range(first, min(first + 2, first + count))]
    for step in range(first, first + count):
      batch = pending.pop(0).result()
      if step + 2 < first + count:
        pending.append(pool.submit(render, step + 2))
      yield batch


def pretrain(p: PretrainSettings, out_dir: str, progress: bool = True) -> dict:
  """Trains the encoder on the corpus and writes ``out_dir`` (variables/ + pretrain.json) atomically.

  Returns:
    The result dict written to pretrain.json: settings, seconds, loss history, held-out accuracy.
  """
  params = p.corpus
  model = PretrainNet(params.num_classes, p.width, p.conv_impl, params.clip_length)
  size = params.frame_size
  dummy = jnp.zeros((1, params.clip_length, size, size, 3), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.PRNGKey(p.seed), dummy)
  state = PretrainState.create(apply_fn=model.apply, params=variables["params"],
                               batch_stats=variables["batch_stats"], tx=make_optimizer(p))
  weights = {"seg": p.seg_weight, "heatmap": p.heatmap_weight, "pose": p.pose_weight,
             "scene": p.scene_weight}

  @functools.partial(jax.jit, donate_argnums=(0,))
  def step_fn(state, batch):
    def loss(params):
      return _losses(model, {"params": params, "batch_stats": state.batch_stats}, batch, weights,
                     train=True)
    (_, (metrics, stats)), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads, batch_stats=stats), metrics

  start = time.time()
  history, window = [], []
  steps = p.steps
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=steps, desc="pretraining the encoder", unit="step", leave=False)
  log_every = max(1, steps // 10)
  for step, batch in enumerate(_batches(params, p.batch_size, 0, steps)):
    state, metrics = step_fn(state, batch)
    window.append(metrics)
    if (step + 1) % log_every == 0 or step + 1 == steps:
      mean = {k: float(np.mean([float(m[k]) for m in window])) for k in window[0]}
      if not np.isfinite(mean["total"]):
        raise FloatingPointError(f"pretraining step {step + 1}: non-finite loss {mean}; lower "
                                 "config.pretrain.learning_rate.")
      history.append({"step": step + 1, **mean})
      window = []
      if bar is not None:
        bar.set_postfix(loss=f"{mean['total']:.3f}")
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  # Precise BN with the final weights, on clips no step trained on.
  state = train_lib.recalibrate_batch_stats(
      state, _batches(params, p.batch_size, 0, p.bn_recalibration_batches, start_index=2 ** 40))
  variables = {"params": state.params, "batch_stats": state.batch_stats}

  # Held-out corpus clips (indices past every training clip), eval mode.
  val = p.val_clips
  correct, seen = 0, 0
  eval_fn = jax.jit(lambda v, b: _losses(model, v, b, weights, train=False)[1][0])
  val_metrics, val_poses, val_scenes = [], [], []
  for b in _batches(params, p.batch_size, 0, max(1, val // p.batch_size),
                    start_index=steps * p.batch_size):
    m = eval_fn(variables, b)
    val_metrics.append({k: float(v) for k, v in m.items()})
    val_poses.append(b["pose"])
    val_scenes.append(b["scene"])
    correct += float(m["accuracy"]) * len(b["label"])
    seen += len(b["label"])
  poses = np.concatenate(val_poses)
  pose_baseline = float(np.mean(np.square(poses - poses.mean(axis=0, keepdims=True))))
  scenes = np.concatenate(val_scenes)
  scene_baseline = float(np.mean(np.square(scenes - scenes.mean(axis=0, keepdims=True))))
  elapsed = time.time() - start
  result = {
      "settings": p.cache_key(), "seconds": round(elapsed, 1),
      "clips_seen": steps * p.batch_size,
      "classes": list(params.class_names),
      "heldout_clips": seen, "heldout_accuracy": correct / max(seen, 1),
      "heldout_mask_loss": float(np.mean([m["mask"] for m in val_metrics])),
      "heldout_heatmap_loss": float(np.mean([m["heatmap"] for m in val_metrics])),
      # Joints inside the frame whose heatmap peaks in the half cell that holds them.
      "heldout_joint_cell_accuracy": float(np.mean([m["joint_cell_accuracy"]
                                                    for m in val_metrics])),
      "heldout_pose_mse": float(np.mean([m["pose"] for m in val_metrics])),
      # The pose error of always predicting the held-out clips' mean pose (what 'learnt' beats).
      "heldout_pose_mse_of_mean": pose_baseline,
      "heldout_scene_mse": float(np.mean([m["scene"] for m in val_metrics])),
      "heldout_scene_mse_of_mean": scene_baseline,
      "history": history,
  }
  _write_atomically(out_dir, variables["params"]["encoder"], variables["batch_stats"]["encoder"],
                    result)
  return result


def _write_atomically(out_dir: str, enc_params, enc_stats, result: dict) -> None:
  """variables/ and pretrain.json into a sibling temp dir, then one rename: never a partial dir."""
  out_dir = os.path.abspath(out_dir)
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
  try:
    models.save_encoder_variables({"params": enc_params, "batch_stats": enc_stats}, tmp)
    pool_lib.atomic_write_json(os.path.join(tmp, RESULT_FILE), result)
    if os.path.isdir(out_dir):  # A concurrent run finished first: same settings, same weights.
      shutil.rmtree(tmp)
      return
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def find_pretrained(settings: PretrainSettings) -> str | None:
  """A complete encoder_init directory for these settings: the one shipped in the package
  (``claus_jax/assets/pretrained``, made by this module with the default settings), else the cache's;
  None when neither exists."""
  directory = cache_dir(settings)
  packaged = os.path.join(PACKAGED_DIR, os.path.basename(directory))
  for candidate in (packaged, directory):
    if is_complete(candidate):
      return candidate
  return None


def _readable_or_set_aside(directory: str, log) -> bool:
  """Whether ``directory``'s weights read in full. A damaged cache folder is renamed aside
  (``<name>.damaged-<time>``, kept for inspection, never deleted), so it is pretrained again."""
  try:
    models.read_encoder_variables(directory)
    return True
  except models.EncoderInitError as e:
    if os.path.dirname(os.path.abspath(directory)) == os.path.abspath(PACKAGED_DIR):
      log(f"pretrained encoder: the packaged weights are damaged, using the cache instead: {e}")
      return False
    aside = f"{directory}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
    os.replace(directory, aside)
    log(f"pretrained encoder: {e} Moved it to {aside}; pretraining again with the same settings.")
    return False


def ensure_pretrained(settings: PretrainSettings, log=logging.info,
                      progress: bool = True) -> str:
  """The encoder_init directory for these settings: reused when shipped or cached, else pretrained
  into the cache."""
  found = find_pretrained(settings)
  if found and not _readable_or_set_aside(found, log):
    cache = cache_dir(settings)  # The packaged copy was damaged: the cache's, else pretrain.
    found = (cache if found != cache and is_complete(cache) and _readable_or_set_aside(cache, log)
             else None)
  if found:
    log(f"pretrained encoder: reusing {found}")
    return found
  directory = cache_dir(settings)
  log(f"pretrained encoder: none cached for these settings; pretraining "
      f"{settings.steps} steps on the synthetic corpus -> {directory}")
  result = pretrain(settings, directory, progress=progress)
  log(f"pretrained encoder: {result['seconds']:.0f} s, held-out corpus accuracy "
      f"{100 * result['heldout_accuracy']:.1f}% over {result['heldout_clips']} clips "
      f"({len(result['classes'])} motion families, chance {100 / len(result['classes']):.1f}%)")
  return directory


def main(argv):
  del argv
  from absl import flags
  config = flags.FLAGS.config
  configlib.validate(config)
  settings = PretrainSettings.from_config(config)
  found = find_pretrained(settings)
  if found and not flags.FLAGS.force and _readable_or_set_aside(found, logging.info):
    logging.info("already pretrained: %s (--force to pretrain again into %s)", found,
                 cache_dir(settings))
    return
  directory = cache_dir(settings)
  if flags.FLAGS.force and os.path.isdir(directory):
    shutil.rmtree(directory)
  logging.info("pretraining %d steps on the synthetic corpus -> %s", settings.steps, directory)
  result = pretrain(settings, directory)
  print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=1))


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", "configs/synthetic.py", "Config file.")
  flags.DEFINE_boolean("force", False, "Pretrain again even if the cache has these settings.")
  app.run(cli.guarded(main), flags_parser=cli.parse_flags)
