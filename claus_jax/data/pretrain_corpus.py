"""The synthetic pretraining corpus (version 2): the Charades of the embedded benchmark.

The paper's detector starts from an I3D pretrained on Charades, a dataset disjoint from its test sets
in videos and classes. This corpus plays that role for the synthetic benchmark
(:mod:`claus_jax.data.synthetic`):

* **The same kind of figures and scenes.** Clips show the benchmark's articulated figures
  (:mod:`claus_jax.data.figures`) in scenes painted by the benchmark's scene painter, with the same
  range of sizes (20-90% of the frame height), builds, colours, viewpoints, clutter, occluders and
  camera jitter.
* **Disjoint actions.** Its families (``PRETRAIN_CLASS_NAMES``: arm circles, side bends, marching in
  place, reaching sideways, standing, turning round, lunges, flapping the elbows) are programs of
  their own (``figures.PRETRAIN_ACTIONS``); none is a benchmark class. With ``families`` = N > 0
  the corpus has N families instead, each a program composed at random of joint primitives
  (``figures.composed_program``; a large label space, the role of Kinetics' 400 classes), which
  leave out the benchmark's whole-body signatures (lift, travel, deep lean, both knees bending).
* **Disjoint videos and scenes.** Every clip has its own NumPy Generator seeded from
  ``(PRETRAIN_STREAM, seed, index)`` and paints a scene style of its own draws; the benchmark seeds
  from ``(seed, split, purpose, group, video)`` words of another length, so no stream (and no class
  scene) is shared, and ``PretrainParams.seed`` defaults to another value than ``config.seed``.

A clip is ``clip_length`` frames sampled every ``frame_step`` frames of the action, as the detector's
clips are (skip 2). Labels are balanced: clip ``i`` has class ``i mod P``. Beside the family label and
the visible mask, a clip carries what a person-and-scene pretraining (Charades, COCO, Places) would
teach: the figure's 2-D pose per frame (``POSE_JOINTS`` relative to the pelvis, in units of the
figure's height), its visible body parts per pixel (``figures.PARTS``, J-HMDB's puppet parts), and
its scene's style (``scene_target``: the wall, floor and stripe colours and the horizon).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from claus_jax.data import figures
from claus_jax.data import synthetic

PRETRAIN_CLASS_NAMES = tuple(figures.PRETRAIN_ACTIONS)
PRETRAIN_STREAM = 0x50524554  # 'PRET': the first seed word of every pretraining clip.
COMPOSED_STREAM = 0x434F4D50  # 'COMP': the first seed word of every composed family's program.
# Bump when the rendering of pretraining clips changes (the cache key of pretrained weights holds it).
VERSION = "2.0.0"  # 2.0: articulated figures in painted scenes (1.x: rigid shapes' motion families).
FIGURE_HEIGHT = (0.2, 0.9)  # Both benchmark modes' sizes.
POSE_JOINTS = ("neck", "head", "r_shoulder", "r_elbow", "r_hand", "l_shoulder", "l_elbow",
               "l_hand", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle")
HEATMAP_JOINTS = ("pelvis",) + POSE_JOINTS  # The joints whose image positions a clip carries.

assert not set(PRETRAIN_CLASS_NAMES) & set(synthetic.CLASS_NAMES)


@dataclasses.dataclass(frozen=True)
class PretrainParams:
  """Every setting that determines the corpus's clips."""

  seed: int = 1
  frame_size: int = 64
  clip_length: int = 8
  frame_step: int = 2
  min_speed: float = 0.7
  max_speed: float = 1.4
  clutter: int = 3
  occlusion: float = 0.3
  jitter: float = 1.0
  # 0: the eight hand-written families (PRETRAIN_CLASS_NAMES); N > 0: N composed families
  # (figures.composed_program, seeded from COMPOSED_STREAM and the family's index).
  families: int = 0

  @classmethod
  def from_section(cls, p, *, frame_size: int, clip_length: int,
                   frame_step: int) -> "PretrainParams":
    """The corpus settings of ``p`` (``config.pretrain``); its ``frame_size`` 0 means
    ``frame_size`` (the benchmark's), and clips are ``clip_length`` frames ``frame_step`` apart."""
    return cls(seed=int(p.seed), frame_size=int(p.frame_size or frame_size),
               clip_length=int(clip_length), frame_step=int(frame_step),
               min_speed=float(p.min_speed), max_speed=float(p.max_speed),
               clutter=int(p.clutter), occlusion=float(p.occlusion), jitter=float(p.jitter),
               families=int(p.families))

  @property
  def num_classes(self) -> int:
    return self.families or len(PRETRAIN_CLASS_NAMES)

  @property
  def class_names(self) -> tuple[str, ...]:
    if self.families:
      return tuple(f"composed_{i}" for i in range(self.families))
    return PRETRAIN_CLASS_NAMES

  def program(self, label: int):
    """Family ``label``'s program: a name of ``figures.PRETRAIN_ACTIONS`` or a composed program."""
    if self.families:
      return figures.composed_program([COMPOSED_STREAM, self.seed & 0xFFFFFFFF, int(label)])
    return PRETRAIN_CLASS_NAMES[label]

  def to_dict(self) -> dict:
    d = {**dataclasses.asdict(self), "version": VERSION}
    if not self.families:
      del d["families"]  # The hand-written corpus keeps the key its shipped weights were cached by.
    return d


SCENE_TARGETS = 16  # Length of scene_target().


def scene_target(style: synthetic.SceneStyle) -> np.ndarray:
  """``(16,) float32``: the style's two wall colours, two floor colours and stripe colour in [0, 1],
  and its horizon (fraction of the frame height)."""
  colors = np.concatenate([style.wall.ravel(), style.floor.ravel(), style.stripe]) / 255.0
  return np.concatenate([colors, [style.horizon]]).astype(np.float32)


def clip(params: PretrainParams, index: int) -> dict[str, np.ndarray]:
  """Clip ``index`` of the corpus, independent of every other clip.

  Returns:
    ``video (L, S, S, 3) uint8``, ``mask (L, S, S) uint8`` (visible figure pixels), ``label``,
    ``pose (L, J, 2) float32`` (each of ``POSE_JOINTS`` minus the pelvis, in image x / y divided by
    the figure's standing height), ``joints (L, 1 + J, 2) float32`` (each of ``HEATMAP_JOINTS`` in
    image pixels, x then y; it may lie outside the frame), ``parts (L, S, S) uint8`` (the visible
    part per pixel, 0 = none) and ``scene (16,) float32`` (:func:`scene_target`).
  """
  rng = np.random.default_rng(np.random.SeedSequence(
      [PRETRAIN_STREAM, params.seed & 0xFFFFFFFF, (params.seed >> 32) & 0xFFFFFFFF, int(index)]))
  label = int(index) % params.num_classes
  action = params.program(label)
  s = params.frame_size
  n = params.clip_length
  margin = synthetic.jitter_margin(params.jitter, s)
  difficulty = float(rng.random())
  style = synthetic.random_style(rng)
  clutter = synthetic.clutter_count(rng, params.clutter, difficulty)
  canvas, horizon = synthetic.paint_scene(rng, style, s, s + 2 * margin, s + 2 * margin, clutter)
  fig = synthetic.random_figure(rng, s, FIGURE_HEIGHT, canvas.reshape(-1, 3).mean(axis=0),
                                synthetic.CONTRAST_LOSS * difficulty, yaw_range=(0.2, 1.45))
  ground = synthetic.feet_row(rng, fig, horizon, s)
  speed = rng.uniform(params.min_speed, params.max_speed)
  act = figures.random_action_params(rng, action, speed)
  progress = rng.uniform(0.0, 8.0) + np.arange(n) * params.frame_step
  turn = float(rng.choice([-1.0, 1.0]) * rng.uniform(1.0, 2.0)) if action == "turn" else 0.0
  frames, visible, points, parts = synthetic.render_performance(
      rng, canvas, margin, fig, action, act, n, (0, n), s, ground=ground,
      x0=float(rng.uniform(0.3, 0.7) * s), jitter=params.jitter,
      occlusion=params.occlusion * difficulty, noise=synthetic.sensor_noise(difficulty), yaw_turn=turn,
      progress=progress)
  joints = np.stack([points[j] for j in HEATMAP_JOINTS], axis=1)
  pose = (joints[:, 1:] - joints[:, :1]) / fig.height
  return {"video": frames, "mask": visible.astype(np.uint8), "label": np.int32(label),
          "pose": pose.astype(np.float32), "joints": joints.astype(np.float32), "parts": parts,
          "scene": scene_target(style)}


def batch(params: PretrainParams, indices) -> dict[str, np.ndarray]:
  """Clips ``indices`` stacked: each of :func:`clip`'s arrays with a leading batch axis."""
  clips = [clip(params, int(i)) for i in indices]
  return {k: np.stack([c[k] for c in clips]) for k in clips[0]}
