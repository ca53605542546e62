"""The synthetic pretraining corpus: the Charades of the embedded benchmark.

The paper's detector starts from an I3D pretrained on Charades, a dataset disjoint from its test sets
in videos and classes. This corpus plays that role for the synthetic benchmark
(:mod:`claus_jax.data.synthetic`):

* **Disjoint classes.** Its motion families (``PRETRAIN_CLASS_NAMES``: a figure eight, shaking in
  place, a pendulum swing, wobbling, stop-and-go along a diagonal, swaying back and forth along a
  diagonal, standing still) are none of the benchmark's ``CLASS_NAMES`` (one-way translations along
  the axes, circling, zigzag, growing/shrinking, continuous rotation, jumping, spiralling).
* **Disjoint videos.** Every clip has its own NumPy Generator seeded from ``(PRETRAIN_STREAM, seed,
  index)``; the benchmark seeds from ``(seed, split, purpose, group, video)`` words of another
  length, so no stream is shared, and ``PretrainParams.seed`` defaults to another value than the
  benchmark's ``config.seed``.
* **Richer than the benchmark.** Each clip is a fresh scene, actor look and motion (thousands of
  actors), with progress speeds over a wide range (``min_speed``..``max_speed``), camera jitter and a
  random camera pan, occluders, and the same rendering (textures, distractors, the actor outline).

A clip is ``clip_length`` frames sampled every ``frame_step`` frames of the motion, as the detector's
clips are (skip 2). Labels are balanced: clip ``i`` has class ``i mod P``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from claus_jax.data import synthetic

PRETRAIN_CLASS_NAMES = ("figure_eight", "shake", "pendulum", "wobble", "stop_and_go", "sway",
                        "still")
PRETRAIN_STREAM = 0x50524554  # 'PRET': the first seed word of every pretraining clip.
# Bump when the rendering of pretraining clips changes (the cache key of pretrained weights holds it).
VERSION = "1.0.0"
_DIAGONALS = np.array([(1.0, 1.0), (1.0, -1.0), (-1.0, 1.0), (-1.0, -1.0)]) / np.sqrt(2.0)

assert not set(PRETRAIN_CLASS_NAMES) & set(synthetic.CLASS_NAMES)


@dataclasses.dataclass(frozen=True)
class PretrainParams:
  """Every setting that determines the corpus's clips."""

  seed: int = 1
  frame_size: int = 64
  clip_length: int = 8
  frame_step: int = 2
  min_speed: float = 0.6
  max_speed: float = 1.6
  max_pan: float = 0.5  # Camera pan, pixels per frame at 64 px (scaled with the frame size).
  distractors: int = 1
  occlusion: float = 0.0
  jitter: float = 1.0

  @classmethod
  def from_config(cls, config) -> "PretrainParams":
    p = config.pretrain
    return cls(seed=int(p.seed), frame_size=int(p.frame_size or config.data.frame_size),
               clip_length=int(config.model.clip_length), frame_step=int(config.train.clip_skip),
               min_speed=float(p.min_speed), max_speed=float(p.max_speed),
               max_pan=float(p.max_pan), distractors=int(p.distractors),
               occlusion=float(p.occlusion), jitter=float(p.jitter))

  @property
  def num_classes(self) -> int:
    return len(PRETRAIN_CLASS_NAMES)

  def to_dict(self) -> dict:
    return {**dataclasses.asdict(self), "version": VERSION}


@dataclasses.dataclass(frozen=True)
class _PretrainMotion:
  """A pretraining motion family, with the call signature of the benchmark's motions."""

  name: str
  values: dict

  def __call__(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``t (N,)`` progress in frames -> ``dx, dy, scale, dangle`` relative to ``t = 0``."""
    m = self.values
    zero, one = np.zeros_like(t), np.ones_like(t)
    wave = lambda period, phase: np.sin(2 * np.pi * t / period + phase) - np.sin(phase)
    if self.name == "figure_eight":
      phi = m["omega"] * t + m["phase"]
      dx = m["amp_x"] * (np.sin(phi) - np.sin(m["phase"]))
      dy = m["amp_y"] * (np.sin(2 * phi) - np.sin(2 * m["phase"]))
      return dx, dy, one, zero
    if self.name in ("shake", "sway"):
      along = m["amplitude"] * wave(m["period"], m["phase"])
      return m["axis"][0] * along, m["axis"][1] * along, one, zero
    if self.name == "pendulum":
      theta = m["swing"] * np.sin(2 * np.pi * t / m["period"] + m["phase"])
      theta0 = m["swing"] * np.sin(m["phase"])
      dx = m["length"] * (np.sin(theta) - np.sin(theta0))
      dy = m["length"] * (np.cos(theta) - np.cos(theta0))
      return dx, dy, one, -(theta - theta0)
    if self.name == "wobble":
      return zero, zero, one, m["swing"] * wave(m["period"], m["phase"])
    if self.name == "stop_and_go":
      # Speed v (1 - cos(2 pi t / p)): the actor halts once per period.
      p = m["period"]
      along = m["speed"] * (t - p / (2 * np.pi) * np.sin(2 * np.pi * t / p))
      return m["axis"][0] * along, m["axis"][1] * along, one, zero
    if self.name == "still":
      return zero, zero, one, zero
    raise ValueError(f"no pretraining motion {self.name!r}")


def _random_motion(rng: np.random.Generator, label: int, size: int,
                   t_max: float) -> _PretrainMotion:
  name = PRETRAIN_CLASS_NAMES[label]
  phase = rng.uniform(0, 2 * np.pi)
  axis = _DIAGONALS[int(rng.integers(4))]
  if name == "figure_eight":
    values = {"amp_x": rng.uniform(0.15, 0.25) * size, "amp_y": rng.uniform(0.08, 0.14) * size,
              "omega": float(rng.choice([-1.0, 1.0])) * rng.uniform(0.14, 0.25), "phase": phase}
  elif name == "shake":
    values = {"amplitude": rng.uniform(0.03, 0.06) * size, "period": rng.uniform(2.5, 4.5),
              "phase": phase, "axis": axis}
  elif name == "sway":
    values = {"amplitude": rng.uniform(0.12, 0.2) * size, "period": rng.uniform(10.0, 16.0),
              "phase": phase, "axis": axis}
  elif name == "pendulum":
    values = {"length": rng.uniform(0.25, 0.4) * size, "swing": rng.uniform(0.5, 0.8),
              "period": rng.uniform(10.0, 16.0), "phase": phase}
  elif name == "wobble":
    values = {"swing": rng.uniform(0.5, 0.9), "period": rng.uniform(8.0, 14.0), "phase": phase}
  elif name == "stop_and_go":
    values = {"speed": rng.uniform(0.5, 0.8) * size / t_max, "period": rng.uniform(6.0, 10.0),
              "axis": axis}
  else:
    values = {}
  return _PretrainMotion(name=name, values=values)


def kinematics(motion, progress: np.ndarray, size: int) -> np.ndarray:
  """The actor's motion through a clip, relative to its first frame: ``(L, 4) float32``.

  Per frame: the displacement of the actor's centre in the scene (camera pan and jitter excluded),
  in tenths of the frame side (x, y), the log of its scale, and its rotation in radians: generic
  kinematics of the corpus's own motions. ``launch/motion_probe.py`` asks whether an encoder can
  learn them at the CPU budget (at 2000 steps it could not; see claus_jax.pretrain).
  """
  dx, dy, scale, dangle = motion(np.asarray(progress, np.float64))
  unit = 0.1 * size
  out = np.stack([(dx - dx[0]) / unit, (dy - dy[0]) / unit, np.log(scale / scale[0]),
                  dangle - dangle[0]], axis=-1)
  return out.astype(np.float32)


def clip(params: PretrainParams, index: int) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
  """Clip ``index`` of the corpus, independent of every other clip.

  Returns:
    ``frames (L, S, S, 3) uint8``, ``masks (L, S, S) uint8`` (visible actor pixels), ``label``, and
    the actor's ``kinematics (L, 4) float32`` (see :func:`kinematics`).
  """
  rng = np.random.default_rng(np.random.SeedSequence(
      [PRETRAIN_STREAM, params.seed & 0xFFFFFFFF, (params.seed >> 32) & 0xFFFFFFFF, int(index)]))
  label = int(index) % params.num_classes
  s = params.frame_size
  zoom = s / 64.0
  n = params.clip_length
  speed = rng.uniform(params.min_speed, params.max_speed)
  pan = rng.uniform(-1.0, 1.0, size=2) * params.max_pan * zoom
  span_frames = (n - 1) * params.frame_step * params.max_speed
  pan_margin = int(np.ceil(0.5 * (n - 1) * params.max_pan * zoom * np.sqrt(2.0))) + 1
  canvas, margin = synthetic._scene(rng, s, params.jitter, params.distractors, pan_margin)
  actor = synthetic._random_look(rng, s, scale_range=(0.08, 0.17))
  t_max = span_frames + 6.0
  motion = _random_motion(rng, label, s, t_max)
  start = synthetic._place_path(rng, motion, actor, s, t_max)
  grp = synthetic._Group(label=label, canvas=canvas, margin=margin, actor=actor, motion=motion,
                         start=start, angle0=float(rng.uniform(0, 2 * np.pi)), t_max=t_max)
  progress = (rng.uniform(0.0, 6.0) + np.arange(n) * params.frame_step) * speed
  render = synthetic.GeneratorParams(seed=params.seed, frame_size=s, mode="trimmed",
                                     distractors=params.distractors, occlusion=params.occlusion,
                                     jitter=params.jitter)
  progress = np.minimum(progress, t_max)
  frames, visible = synthetic._render_frames(render, rng, grp, progress, (0, n), pan=pan)
  return frames, visible.astype(np.uint8), label, kinematics(motion, progress, s)


def batch(params: PretrainParams, indices) -> dict[str, np.ndarray]:
  """Clips ``indices`` stacked: ``video (B, L, S, S, 3) uint8``, ``mask (B, L, S, S) uint8``,
  ``label (B,) int32``, ``kinematics (B, L, 4) float32``."""
  clips = [clip(params, int(i)) for i in indices]
  return {"video": np.stack([c[0] for c in clips]), "mask": np.stack([c[1] for c in clips]),
          "kinematics": np.stack([c[3] for c in clips]),
          "label": np.array([c[2] for c in clips], np.int32)}
