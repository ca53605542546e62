"""The synthetic action-detection benchmark: motion-defined classes with exact pixel masks.

Each video shows one textured actor on a textured background with static distractor shapes, camera
jitter and, sometimes, an occluding bar that slides across the actor. The class is the actor's
*motion* (translation in four directions, circling, zigzag, growing/shrinking, rotation, jumping,
spiralling); shape, texture and colour are drawn independently of the class and from the same colour
distribution as the background and the distractors, so no single frame tells the class.

With ``actor_outline`` (the default) the actor's silhouette edge is drawn in near-black, the same in
every class: the actor is recognisable in one frame, as a person is in real videos (where the paper's
encoder comes pretrained), and only its motion tells the class. Without it the actor differs from the
distractors only by moving, which a detector trained from scratch on a CPU budget did not learn
(test mask IoU <= 0.15 after 500 fully labelled steps at the synthetic default).

Class cues (each a probability per group, 0 by default, drawn from a random stream of their own so
that the scene's layout, the actor's size, the motion and the path stay the cue-free draws): with
``class_shape`` the actor takes its class's silhouette (``CLASS_SHAPES``, none of them a random
actor's, distractor's or pretraining actor's shape); with ``class_color`` its class's hue; with
``class_scene`` the background comes in shades of the class's hue, as a UCF-101 class shows in its
scene. They make the class visible in single frames, for studying the classification path apart from
motion learning (the README has what each did to the detector).

Videos come in groups, like UCF-101's g01-g25 cut from one recording: members of a group share the
background, the distractors, the actor and its trajectory up to small perturbations (speed, a small
shift, where the cut starts and where the action sits in it). Train and test use disjoint groups.

Modes:
  * ``'untrimmed'`` (UCF-like): the action fills a span strictly inside the video; outside it the actor
    stands still in its start or end pose, and no ground truth exists there (``has_gt`` False, masks
    zero, boxes NaN).
  * ``'trimmed'`` (J-HMDB-like): the action fills the video; every frame has ground truth.

The ground truth is exact: the mask of a frame is the set of visible actor pixels (the occluder removes
pixels), the box is the inclusive bounding box of the mask, one tube per video (A = 1).

Everything is a deterministic function of the config (``config.seed``, ``config.data.frame_size``,
``config.data.synthetic``): each group and each video has its own NumPy Generator seeded from
``(seed, split, purpose, group, video)``. The data is stored once as a tfds array_record dataset whose
config name is a hash of those settings (see :func:`load`).

Preview:
  python -m claus_jax.data.synthetic --config=configs/synthetic.py --preview=sheet.png
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Sequence

import numpy as np
from scipy import ndimage

from claus_jax import pool as pool_lib
from claus_jax.data import tfds_store
from claus_jax.data.record import VideoDataset, VideoRecord

CLASS_NAMES = ("move_right", "move_left", "move_up", "move_down", "circle", "zigzag", "grow_shrink",
               "rotate", "jump", "spiral")
MAX_CLASSES = len(CLASS_NAMES)
SHAPES = ("ellipse", "rectangle", "triangle", "diamond", "star", "cross")
# The silhouette each class's actor takes when ``class_shape`` says so (class k -> CLASS_SHAPES[k]).
# None of them is a random actor's, a distractor's or a pretraining actor's shape (SHAPES), so a
# silhouette names its class here and nowhere else.
CLASS_SHAPES = ("ring", "crescent", "arrow", "hourglass", "frame", "chevron", "l_shape", "t_shape",
                "half_disc", "dumbbell")
assert not set(CLASS_SHAPES) & set(SHAPES)


def _hues(count: int) -> np.ndarray:
  """``(count, 3) float32`` RGB of ``count`` hues evenly around the colour wheel (saturation 0.85)."""
  h = np.arange(count) / count
  k = (np.array([5.0, 3.0, 1.0])[None] + 6.0 * h[:, None]) % 6.0
  rgb = 1.0 - 0.85 * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
  return (220.0 * rgb).astype(np.float32)


MODES = ("untrimmed", "trimmed")
# Bump when the rendering code changes what a given config produces (tfds keeps old versions apart).
VERSION = "1.2.0"  # 1.1: class cues (a cue-free config renders the same videos as 1.0); 1.2: mid tint.
TFDS_NAME = "claus_synthetic"

_SPLIT_IDS = {"train": 0, "test": 1}
# Purposes keep the random streams of one (split, group, video) apart.
_LABELS, _GROUP, _VIDEO, _CUE = 0, 1, 2, 3
# Direction unit vectors of the translation classes in image coordinates (y grows downwards).
_DIRECTIONS = np.array([(1.0, 0.0), (-1.0, 0.0), (0.0, -1.0), (0.0, 1.0)])


@dataclasses.dataclass(frozen=True)
class GeneratorParams:
  """Every setting that determines the generated data (and nothing else)."""

  seed: int = 0
  frame_size: int = 64
  num_classes: int = 8
  train_groups: int = 24
  test_groups: int = 8
  videos_per_group: int = 4
  min_frames: int = 24
  max_frames: int = 48
  mode: str = "untrimmed"
  long_tail: float = 1.0
  distractors: int = 3
  occlusion: float = 0.3
  jitter: float = 1.0
  actor_outline: bool = True
  class_shape: float = 0.0
  class_color: float = 0.0
  class_scene: float = 0.0

  @classmethod
  def from_config(cls, config) -> "GeneratorParams":
    syn = config.data.synthetic
    return cls(seed=int(config.seed), frame_size=int(config.data.frame_size),
               num_classes=int(syn.num_classes), train_groups=int(syn.train_groups),
               test_groups=int(syn.test_groups), videos_per_group=int(syn.videos_per_group),
               min_frames=int(syn.min_frames), max_frames=int(syn.max_frames), mode=str(syn.mode),
               long_tail=float(syn.long_tail), distractors=int(syn.distractors),
               occlusion=float(syn.occlusion), jitter=float(syn.jitter),
               actor_outline=bool(syn.actor_outline),
               class_shape=float(syn.class_shape),
               class_color=float(syn.class_color),
               class_scene=float(syn.class_scene)).check()

  def check(self) -> "GeneratorParams":
    """Raises ValueError naming the config field of a value the generator cannot use."""
    def fail(field, msg):
      raise ValueError(f"config.data.synthetic.{field}: {msg}")
    if not 1 <= self.num_classes <= MAX_CLASSES:
      fail("num_classes", f"{self.num_classes} must be in [1, {MAX_CLASSES}].")
    if self.mode not in MODES:
      fail("mode", f"{self.mode!r}: use one of {MODES}.")
    if self.min_frames < 4 or self.min_frames > self.max_frames:
      fail("min_frames", f"need 4 <= min_frames <= max_frames, got {self.min_frames}, "
           f"{self.max_frames}.")
    if self.frame_size < 16:
      raise ValueError(f"config.data.frame_size: {self.frame_size} is too small (>= 16).")
    if self.long_tail < 1.0:
      fail("long_tail", f"{self.long_tail} must be >= 1 (most / least frequent class).")
    if self.train_groups < 1 or self.test_groups < 1 or self.videos_per_group < 1:
      fail("train_groups", "train_groups, test_groups and videos_per_group must be >= 1.")
    for field in ("occlusion", "class_shape", "class_color", "class_scene"):
      if not 0.0 <= getattr(self, field) <= 1.0:
        fail(field, f"{getattr(self, field)} must be a probability in [0, 1].")
    if self.distractors < 0 or self.jitter < 0:
      fail("distractors", "distractors and jitter must be >= 0.")
    return self

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @property
  def class_names(self) -> tuple[str, ...]:
    return CLASS_NAMES[:self.num_classes]

  def num_groups(self, split: str) -> int:
    return self.train_groups if split == "train" else self.test_groups

  def group_number(self, split: str, group: int) -> int:
    """Groups are numbered across splits (test after train), so ids are unique in the dataset."""
    return group if split == "train" else self.train_groups + group


def _rng(params: GeneratorParams, split: str, purpose: int, group: int = 0,
         video: int = 0) -> np.random.Generator:
  words = [params.seed & 0xFFFFFFFF, (params.seed >> 32) & 0xFFFFFFFF, _SPLIT_IDS[split], purpose,
           group, video]
  return np.random.default_rng(np.random.SeedSequence(words))


# --------------------------------------------------------------------------------------------------
# Class allocation (long tail)


def class_counts(num_groups: int, num_classes: int, long_tail: float) -> np.ndarray:
  """Groups per class, decaying geometrically from class 0 to C-1 with ``max/min = long_tail``.

  Largest-remainder rounding of ``num_groups * w / sum(w)`` with ``w_k = long_tail ** (-k / (C-1))``;
  every class gets at least one group when ``num_groups >= num_classes``.

  Returns:
    ``(C,) int64`` counts summing to ``num_groups``.
  """
  c = num_classes
  w = long_tail ** (-np.arange(c) / max(c - 1, 1))
  ideal = num_groups * w / w.sum()
  counts = np.floor(ideal).astype(np.int64)
  if num_groups >= c:
    counts = np.maximum(counts, 1)
  while counts.sum() > num_groups:  # Minimums overshot: take from the most over-served class.
    excess = np.where(counts > 1, counts - ideal, -np.inf)
    counts[int(np.argmax(excess))] -= 1
  while counts.sum() < num_groups:
    counts[int(np.argmax(ideal - counts))] += 1  # argmax takes the lowest class on ties.
  return counts


def group_labels(params: GeneratorParams, split: str) -> np.ndarray:
  """``(num_groups,) int64`` class of each group of ``split`` (deterministic, shuffled order)."""
  counts = class_counts(params.num_groups(split), params.num_classes, params.long_tail)
  labels = np.repeat(np.arange(params.num_classes), counts)
  return _rng(params, split, _LABELS).permutation(labels)


# --------------------------------------------------------------------------------------------------
# Rendering primitives (vectorised over frames and pixels)


@dataclasses.dataclass(frozen=True)
class _Look:
  """Shape, size and surface of a drawn object (actor, distractor)."""

  shape: str
  half_major: float  # Pixels, along the object's own u axis.
  half_minor: float  # Pixels, along v.
  color_a: np.ndarray  # (3,) float32 in [0, 255].
  color_b: np.ndarray
  tex_freq: np.ndarray  # (2, 2): two plane waves (ku, kv) in radians per pixel.
  tex_phase: np.ndarray  # (2,)
  shading: float  # Brightness slope along u (makes orientation visible on symmetric textures).


def _random_color(rng: np.random.Generator) -> np.ndarray:
  # One colour distribution for actors, distractors, occluders and backgrounds: no colour cue.
  return rng.uniform(25.0, 230.0, size=3).astype(np.float32)


def _random_look(rng: np.random.Generator, size: int, scale_range=(0.10, 0.15)) -> _Look:
  half_major = rng.uniform(*scale_range) * size
  aspect = rng.uniform(0.45, 0.8)  # Never round, so rotation is visible.
  freq = rng.uniform(0.25, 0.9, size=(2, 2)) * (64.0 / size) ** 0.5
  freq *= rng.choice([-1.0, 1.0], size=(2, 2))
  return _Look(shape=str(rng.choice(SHAPES)), half_major=float(half_major),
               half_minor=float(half_major * aspect), color_a=_random_color(rng),
               color_b=_random_color(rng), tex_freq=freq, tex_phase=rng.uniform(0, 2 * np.pi, 2),
               shading=float(rng.uniform(-0.25, 0.25)))


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, a: float, b: float) -> np.ndarray:
  """Inside test in object coordinates (u along the major half-axis ``a``, v along ``b``)."""
  un, vn = u / a, v / b
  if shape == "ellipse":
    return un * un + vn * vn <= 1.0
  if shape == "rectangle":
    return (np.abs(un) <= 0.85) & (np.abs(vn) <= 0.85)
  if shape == "triangle":  # Apex at u = +a, base at u = -a.
    return (un >= -1.0) & (np.abs(vn) <= (1.0 - un) / 2.0 + 1e-6) & (un <= 1.0)
  if shape == "diamond":
    return np.abs(un) + np.abs(vn) <= 1.0
  if shape == "star":
    radius = np.sqrt(un * un + vn * vn)
    return radius <= 0.62 + 0.38 * np.cos(5.0 * np.arctan2(vn, un))
  if shape == "cross":
    return (((np.abs(un) <= 1.0) & (np.abs(vn) <= 0.4))
            | ((np.abs(un) <= 0.4) & (np.abs(vn) <= 1.0)))
  if shape == "frame":  # A square outline.
    edge = np.maximum(np.abs(un), np.abs(vn))
    return (edge <= 0.9) & (edge >= 0.5)
  if shape == "chevron":  # A V opening towards +u.
    return (np.abs(un - (1.2 * np.abs(vn) - 0.6)) <= 0.35) & (np.abs(vn) <= 1.0)
  if shape == "l_shape":
    return ((np.abs(un) <= 1.0) & (vn >= -1.0) & (vn <= -0.3)) | (
        (un >= -1.0) & (un <= -0.3) & (np.abs(vn) <= 1.0))
  if shape == "t_shape":  # The bar at +u, the stem along -u.
    return ((un >= 0.45) & (un <= 1.0) & (np.abs(vn) <= 1.0)) | (
        (un >= -1.0) & (un <= 0.45) & (np.abs(vn) <= 0.3))
  if shape == "half_disc":  # The ellipse's +v half.
    return (un * un + vn * vn <= 1.0) & (vn >= -0.1)
  if shape == "dumbbell":  # Two knobs at u = +-0.6 joined by a thin bar.
    knob = lambda c: (un - c) ** 2 + (0.6 * vn) ** 2 <= 0.4 ** 2
    return knob(0.6) | knob(-0.6) | ((np.abs(un) <= 0.6) & (np.abs(vn) <= 0.2))
  if shape == "ring":
    radius2 = un * un + vn * vn
    return (radius2 <= 1.0) & (radius2 >= 0.45 ** 2)
  if shape == "crescent":  # The ellipse less a disc bitten out of its +u side.
    return (un * un + vn * vn <= 1.0) & ((un - 0.55) ** 2 + vn * vn > 0.7 ** 2)
  if shape == "arrow":  # Shaft along -u, head pointing to +u.
    shaft = (un >= -1.0) & (un <= 0.1) & (np.abs(vn) <= 0.35)
    head = (un >= 0.1) & (un <= 1.0) & (np.abs(vn) <= (1.0 - un) / 0.9)
    return shaft | head
  if shape == "hourglass":  # Two triangles meeting at the centre, apexes on the u = 0 line.
    return (np.abs(un) <= 1.0) & (np.abs(vn) <= np.abs(un) + 0.12)
  raise ValueError(f"unknown shape {shape!r}")


def _draw(look: _Look, xs: np.ndarray, ys: np.ndarray, cx: np.ndarray, cy: np.ndarray,
          scale: np.ndarray, angle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Renders an object at per-frame poses.

  Args:
    look: the object.
    xs, ys: ``(H, W)`` pixel-centre coordinates (or ``(1, W)`` / ``(H, 1)``, broadcast).
    cx, cy, scale, angle: ``(N,)`` centre (pixels), size factor and rotation (radians) per frame.

  Returns:
    ``mask (N, H, W) bool`` and ``color (N, H, W, 3) float32``.
  """
  e = (slice(None), None, None)
  f32 = lambda a: np.asarray(a, np.float32)[e]  # float32 halves the work on large frames.
  dx, dy = np.float32(xs)[None] - f32(cx), np.float32(ys)[None] - f32(cy)
  cos, sin, inv = f32(np.cos(angle)), f32(np.sin(angle)), f32(1.0 / np.asarray(scale))
  u = (cos * dx + sin * dy) * inv
  v = (cos * dy - sin * dx) * inv
  mask = _shape_mask(look.shape, u, v, look.half_major, look.half_minor)
  f, p = look.tex_freq, look.tex_phase
  tex = 0.5 + 0.25 * (np.sin(f[0, 0] * u + f[0, 1] * v + p[0]) + np.sin(f[1, 0] * u + f[1, 1] * v + p[1]))
  shade = 1.0 + look.shading * u / look.half_major
  color = (look.color_a + (look.color_b - look.color_a) * tex[..., None]) * shade[..., None]
  return mask, color.astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
  """``(size, size)`` smooth noise in [0, 1]: a random ``cells x cells`` grid, cubic-upsampled."""
  grid = rng.random((cells, cells))
  up = ndimage.zoom(grid, size / cells, order=3, mode="reflect")[:size, :size]
  lo, hi = up.min(), up.max()
  return ((up - lo) / max(hi - lo, 1e-6)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Motions: relative displacement, scale and rotation as functions of action progress (frames)


@dataclasses.dataclass(frozen=True)
class _Motion:
  label: int
  values: dict  # Class-specific parameters in pixels, frames and radians.

  def __call__(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``t (N,)`` progress in frames (0 = start pose) -> ``dx, dy, scale, dangle``, each ``(N,)``.

    ``dx, dy`` are relative to the start position, so ``t = 0`` is always the idle start pose.
    """
    m, k = self.values, self.label
    zero = np.zeros_like(t)
    one = np.ones_like(t)
    if k < 4:  # Translation with a slight sideways drift and a gentle bob.
      d = _DIRECTIONS[k]
      perp = np.array([-d[1], d[0]])
      along = m["speed"] * t
      side = m["drift"] * along + m["bob"] * np.sin(2 * np.pi * t / m["bob_period"])
      return d[0] * along + perp[0] * side, d[1] * along + perp[1] * side, one, zero
    name = CLASS_NAMES[k]
    if name in ("circle", "spiral"):
      radius = m["radius"] + (m["growth"] * t if name == "spiral" else 0.0)
      phi = m["phase"] + m["omega"] * t
      x = radius * np.cos(phi) - m["radius"] * np.cos(m["phase"])
      y = radius * np.sin(phi) - m["radius"] * np.sin(m["phase"])
      return x, y, one, zero
    if name == "zigzag":
      d = _DIRECTIONS[m["axis"]]
      perp = np.array([-d[1], d[0]])
      along = m["speed"] * t
      phase = t / m["period"]
      tri = 2.0 * np.abs(2.0 * (phase + 0.25 - np.floor(phase + 0.75))) - 1.0  # Triangle, tri(0) = 0.
      side = m["amplitude"] * tri
      return d[0] * along + perp[0] * side, d[1] * along + perp[1] * side, one, zero
    if name == "grow_shrink":
      scale = 1.0 + m["amplitude"] * np.sin(2 * np.pi * t / m["period"])
      return zero, zero, scale, zero
    if name == "rotate":
      return zero, zero, one, m["omega"] * t
    if name == "jump":
      hop = np.abs(np.sin(np.pi * t / m["period"]))
      return m["drift"] * t, -m["height"] * hop, one, zero
    raise ValueError(f"no motion for class {k}")


def _random_motion(rng: np.random.Generator, label: int, size: int, t_max: float,
                   reach: float) -> _Motion:
  """Class parameters scaled so the path over ``t_max`` frames fits in about ``reach`` pixels."""
  name = CLASS_NAMES[label]
  sign = float(rng.choice([-1.0, 1.0]))
  if label < 4:
    values = {"speed": rng.uniform(0.55, 1.0) * reach / t_max, "drift": rng.uniform(-0.12, 0.12),
              "bob": rng.uniform(0.0, 0.02) * size, "bob_period": rng.uniform(12, 20)}
  elif name == "circle":
    values = {"radius": rng.uniform(0.14, 0.24) * size, "omega": sign * rng.uniform(0.16, 0.3),
              "phase": rng.uniform(0, 2 * np.pi), "growth": 0.0}
  elif name == "spiral":
    r0 = rng.uniform(0.04, 0.08) * size
    values = {"radius": r0, "omega": sign * rng.uniform(0.18, 0.3), "phase": rng.uniform(0, 2 * np.pi),
              "growth": (rng.uniform(0.18, 0.26) * size - r0) / (0.7 * t_max)}
  elif name == "zigzag":
    values = {"axis": int(rng.integers(4)), "speed": rng.uniform(0.45, 0.8) * reach / t_max,
              "amplitude": rng.uniform(0.07, 0.12) * size, "period": rng.uniform(8, 12)}
  elif name == "grow_shrink":
    values = {"amplitude": sign * rng.uniform(0.3, 0.45), "period": rng.uniform(10, 16)}
  elif name == "rotate":
    values = {"omega": sign * rng.uniform(0.15, 0.3)}
  elif name == "jump":
    values = {"drift": rng.uniform(-0.25, 0.25) * reach / t_max, "height": rng.uniform(0.15, 0.25) * size,
              "period": rng.uniform(8, 14)}
  else:
    raise ValueError(f"no motion for class {label}")
  return _Motion(label=label, values=values)


# --------------------------------------------------------------------------------------------------
# Groups (recordings) and videos


@dataclasses.dataclass(frozen=True)
class _Group:
  """What the videos of one group share."""

  label: int
  canvas: np.ndarray  # (S + 2M, S + 2M, 3) float32 background with distractors; scene origin at M.
  margin: int  # M: the largest camera shift in pixels.
  actor: _Look
  motion: _Motion
  start: np.ndarray  # (2,) start position (x, y) in scene pixels.
  angle0: float  # Start rotation of the actor.
  t_max: float  # Longest progress (frames) any member reaches; the path is fitted over it.


def _scene(rng: np.random.Generator, size: int, jitter: float, distractors: int,
           extra_margin: int = 0, tint: np.ndarray | None = None) -> tuple[np.ndarray, int]:
  """A static background with distractors: ``(canvas (S + 2M, S + 2M, 3) float32, M)``.

  ``M`` is the largest camera shift in pixels (jitter, plus ``extra_margin`` for camera pans).
  ``tint`` (2, 3), if given, replaces the background's two base colours (its stripes and the
  distractors keep their random ones); every other draw is the same as without it.
  """
  zoom = size / 64.0
  margin = int(math.ceil(3.0 * jitter * zoom)) + 1 + int(extra_margin)
  side = size + 2 * margin

  # Background: smooth noise between two colours, with stripes of a third one.
  noise = _smooth_noise(rng, side, int(rng.integers(4, 9)))
  yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
  theta = rng.uniform(0, np.pi)
  period = rng.uniform(0.12, 0.4) * size
  stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
  stripes = (stripes ** rng.uniform(1.0, 3.0)).astype(np.float32)
  c1, c2, c3 = _random_color(rng), _random_color(rng), _random_color(rng)
  if tint is not None:
    c1, c2 = tint[0], tint[1]
  beta = rng.uniform(0.15, 0.5)
  canvas = c1 + (c2 - c1) * noise[..., None]
  canvas = canvas * (1 - beta * stripes[..., None]) + c3 * (beta * stripes[..., None])

  # Static distractors, drawn like actors; they may overlap the actor's path (actor stays in front).
  for _ in range(distractors):
    look = _random_look(rng, size)
    pos = rng.uniform(0.1 * size, 0.9 * size, size=2) + margin
    mask, color = _draw(look, xx, yy, pos[:1], pos[1:], np.ones(1), rng.uniform(0, 2 * np.pi, 1))
    canvas = np.where(mask[0, ..., None], color[0], canvas)
  return canvas.astype(np.float32), margin


def _place_path(rng: np.random.Generator, motion, actor: _Look, size: int,
                t_max: float) -> np.ndarray:
  """A start position ``(2,)`` that keeps the actor centre >= 0.6 extents inside the frame."""
  t = np.linspace(0.0, t_max, 256)
  dx, dy, scale, _ = motion(t)
  extent = actor.half_major
  start = np.zeros(2)
  for axis, d in enumerate((dx, dy)):
    lo_pad = 0.6 * extent * scale.max()
    lo, hi = lo_pad - d.min(), size - 1 - lo_pad - d.max()
    start[axis] = rng.uniform(lo, hi) if hi > lo else 0.5 * (lo + hi)
  return start


def _cue_draws(params: GeneratorParams, split: str, group: int) -> np.ndarray | None:
  """The group's class-cue draws, from a stream of their own: with or without cues, the scene's
  layout, the actor's size, the motion and the path are the same draws. None without cues."""
  if not (params.class_shape or params.class_color or params.class_scene):
    return None
  return _rng(params, split, _CUE, group).random(6)


def _class_tint(params: GeneratorParams, draws, label: int) -> np.ndarray | None:
  """``class_scene``: the background's two base colours in shades of the class's hue, so the class
  shows in the scene, as UCF-101's classes show in theirs (the pool of diving, the pitch of soccer
  juggling). None when the group has no scene cue."""
  if draws is None or not draws[3] < params.class_scene:
    return None
  hue = _hues(params.num_classes)[label]
  # Saturated mid shades: the hue at 0.85-1.05 and at 0.6-0.8 of its brightness. Darker shades
  # (down to 0.35) taught the class and took the actor's near-black outline's contrast; pastel ones
  # kept the outline and lost the class (see the README).
  return np.stack([hue * (0.85 + 0.2 * draws[4]), hue * (0.6 + 0.2 * draws[5])])


def _class_look(params: GeneratorParams, draws, label: int, actor: _Look) -> _Look:
  """``class_shape``: the class's silhouette; ``class_color``: the class's hue at a brightness of
  the group's own (the texture's second colour a darker shade of it)."""
  if draws is None:
    return actor
  if draws[0] < params.class_shape:
    actor = dataclasses.replace(actor, shape=CLASS_SHAPES[label])
  if draws[1] < params.class_color:
    base = _hues(params.num_classes)[label] * (0.8 + 0.3 * draws[2])
    actor = dataclasses.replace(actor, color_a=base.astype(np.float32),
                                color_b=(0.6 * base).astype(np.float32))
  return actor


def _make_group(params: GeneratorParams, split: str, group: int, label: int) -> _Group:
  rng = _rng(params, split, _GROUP, group)
  s = params.frame_size
  draws = _cue_draws(params, split, group)
  canvas, margin = _scene(rng, s, params.jitter, params.distractors,
                          tint=_class_tint(params, draws, label))
  actor = _class_look(params, draws, label, _random_look(rng, s))
  t_max = params.max_frames * 1.12 + 4.0
  reach = s - 2 * 0.6 * actor.half_major
  motion = _random_motion(rng, label, s, t_max, reach)
  start = _place_path(rng, motion, actor, s, t_max)
  return _Group(label=label, canvas=canvas, margin=margin, actor=actor, motion=motion, start=start,
                angle0=float(rng.uniform(0, 2 * np.pi)), t_max=t_max)


def _video_id(params: GeneratorParams, split: str, group: int, video: int, label: int) -> str:
  return f"c{label}_g{params.group_number(split, group):03d}_v{video}"


def _group_id(params: GeneratorParams, split: str, group: int) -> str:
  return f"{split}_g{params.group_number(split, group):03d}"


def _render_video(params: GeneratorParams, split: str, group: int, video: int, grp: _Group,
                  draw_actor: bool = True) -> VideoRecord:
  """Renders one member of ``grp``; ``draw_actor=False`` leaves the actor out (tests use it)."""
  rng = _rng(params, split, _VIDEO, group, video)
  n = int(rng.integers(params.min_frames, params.max_frames + 1))

  # Where the action sits in this cut, and how progress advances per frame.
  speed = rng.uniform(0.9, 1.1)
  if params.mode == "untrimmed":
    length = int(round(rng.uniform(0.45, 0.75) * n))
    length = min(max(length, min(8, n - 2)), n - 2)
    first = int(rng.integers(1, n - length))  # 1 <= first, first + length <= n - 1.
    span = (first, first + length)
    progress = np.clip(np.arange(n) - first, 0, length - 1) * speed
  else:
    span = (0, n)
    progress = (np.arange(n) + rng.uniform(0.0, 3.0)) * speed
  progress = np.minimum(progress, grp.t_max).astype(np.float64)
  frames, visible = _render_frames(params, rng, grp, progress, span, draw_actor)
  has_gt = np.zeros(n, bool)
  has_gt[span[0]:span[1]] = True
  masks = (visible & has_gt[:, None, None]).astype(np.uint8)
  boxes = masks_to_boxes(masks)[None]
  return VideoRecord(video_id=_video_id(params, split, group, video, grp.label),
                     group_id=_group_id(params, split, group), label=int(grp.label), frames=frames,
                     masks=masks, boxes=boxes, has_gt=has_gt, span=span, annotation="mask")


def _render_frames(params: GeneratorParams, rng: np.random.Generator, grp: _Group,
                   progress: np.ndarray, span: tuple[int, int], draw_actor: bool = True,
                   pan: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Renders ``grp``'s actor at ``progress`` (N,) frames of its motion.

  ``span`` is where an occluder may cross; ``pan`` (2,) pixels per frame moves the camera (the
  canvas margin must hold it). Returns ``frames (N, S, S, 3) uint8``, ``visible (N, S, S) bool``.
  """
  s = params.frame_size
  zoom = s / 64.0
  n = len(progress)
  dx, dy, scale, dangle = grp.motion(progress)
  shift = rng.uniform(-0.03, 0.03, size=2) * s
  cx = grp.start[0] + shift[0] + dx
  cy = grp.start[1] + shift[1] + dy
  angle = grp.angle0 + dangle

  # Camera jitter: an integer shift of the whole scene per frame (plus a pan, if any).
  amp = params.jitter * zoom
  jit = rng.normal(0.0, amp, size=(n, 2))
  if pan is not None:
    jit = jit + np.arange(n)[:, None] * np.asarray(pan)[None, :] - 0.5 * (n - 1) * np.asarray(pan)
  jit = np.clip(np.rint(jit), -grp.margin, grp.margin).astype(int)
  m = grp.margin
  rows = (np.arange(s)[None, :] + m + jit[:, 1:2])  # (n, S)
  cols = (np.arange(s)[None, :] + m + jit[:, 0:1])
  frames = grp.canvas[rows[:, :, None], cols[:, None, :]]  # (n, S, S, 3)

  xs = np.arange(s, dtype=np.float32)[None, :]
  ys = np.arange(s, dtype=np.float32)[:, None]
  actor_mask, actor_color = _draw(grp.actor, xs, ys, cx - jit[:, 0], cy - jit[:, 1], scale, angle)
  visible = actor_mask

  # Occluder: a bar sliding across the actor's position at a moment inside the action.
  occluded = rng.random() < params.occlusion
  bar_look = _random_look(rng, s)
  if occluded:
    vertical = bool(rng.random() < 0.5)
    width = rng.uniform(0.35, 0.6) * 2 * grp.actor.half_minor * max(0.55, float(scale.min()))
    t_cross = rng.uniform(span[0], span[1] - 1)
    bar_speed = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 1.0) * zoom
    centre_at_cross = np.interp(t_cross, np.arange(n), cx if vertical else cy)
    bar_pos = centre_at_cross + bar_speed * (np.arange(n) - t_cross)
    along = np.broadcast_to(xs if vertical else ys, (s, s))  # Coordinate across the bar.
    jit_axis = jit[:, 0] if vertical else jit[:, 1]
    bar_mask = np.abs(along[None] - (bar_pos - jit_axis)[:, None, None]) <= width / 2
    visible = actor_mask & ~bar_mask

  if draw_actor:
    frames = np.where(actor_mask[..., None], actor_color, frames)
    if params.actor_outline:
      # The actor's silhouette edge in near-black: what makes it an actor, in every class and
      # colour (as a person is recognisable in any action); distractors have none.
      inner = ndimage.binary_erosion(actor_mask, structure=_EDGE_4[None])
      frames = np.where((actor_mask & ~inner)[..., None], np.float32(12.0), frames)
  if occluded:
    stripe = 0.5 + 0.5 * np.sin((ys if vertical else xs) * bar_look.tex_freq[0, 0])
    bar_color = bar_look.color_a + (bar_look.color_b - bar_look.color_a) * stripe[..., None]
    frames = np.where(bar_mask[..., None], bar_color[None], frames)

  # Sensor noise and a global brightness flicker, so no two frames are identical.
  frames = frames * rng.normal(1.0, 0.02, size=(n, 1, 1, 1)).astype(np.float32)
  frames = frames + 3.0 * rng.standard_normal(size=frames.shape, dtype=np.float32)
  frames = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
  return frames, visible


_EDGE_4 = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)  # 4-neighbourhood, per frame.


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
  """``(T, H, W)`` masks -> ``(T, 4) float32`` inclusive ``(x1, y1, x2, y2)``; NaN for empty frames."""
  t = masks.shape[0]
  boxes = np.full((t, 4), np.nan, np.float32)
  cols = masks.any(axis=1)  # (T, W)
  rows = masks.any(axis=2)  # (T, H)
  present = cols.any(axis=1)
  if present.any():
    w, h = cols.shape[1], rows.shape[1]
    boxes[present, 0] = np.argmax(cols[present], axis=1)
    boxes[present, 2] = w - 1 - np.argmax(cols[present, ::-1], axis=1)
    boxes[present, 1] = np.argmax(rows[present], axis=1)
    boxes[present, 3] = h - 1 - np.argmax(rows[present, ::-1], axis=1)
  return boxes


def generate_video(params: GeneratorParams, split: str, group: int, video: int,
                   draw_actor: bool = True) -> VideoRecord:
  """Video ``video`` of group ``group`` of ``split``, independent of every other video."""
  label = int(group_labels(params, split)[group])
  return _render_video(params, split, group, video, _make_group(params, split, group, label),
                       draw_actor=draw_actor)


def generate_split(params: GeneratorParams, split: str) -> Iterator[VideoRecord]:
  """All videos of ``split`` in index order: group-major, then member."""
  labels = group_labels(params, split)
  for g, label in enumerate(labels):
    grp = _make_group(params, split, g, int(label))
    for v in range(params.videos_per_group):
      yield _render_video(params, split, g, v, grp)


# --------------------------------------------------------------------------------------------------
# tfds storage


def builder_for(params: GeneratorParams, data_dir: str):
  """The tfds builder of ``params``; its config name changes with any generator setting."""
  config_name = f"{params.mode}_{params.frame_size}px_{pool_lib.fingerprint(params.to_dict())}"
  return tfds_store.make_builder(
      name=TFDS_NAME, version=VERSION, config_name=config_name,
      generate_records=lambda split: generate_split(params, split),
      class_names=params.class_names, data_dir=data_dir,
      description="claus_jax synthetic benchmark: " + json.dumps(params.to_dict(), sort_keys=True))


def load(config) -> VideoDataset:
  """The synthetic dataset of ``config``, generated and written on first use, then reused."""
  params = GeneratorParams.from_config(config)
  builder = builder_for(params, tfds_store.resolve_tfds_dir(config))
  return tfds_store.load_or_prepare(builder, "synthetic", quiet=bool(config.get("quiet", False)))


# --------------------------------------------------------------------------------------------------
# Preview


def contact_sheet(records: Sequence[VideoRecord], class_names: Sequence[str], path: str,
                  num_frames: int = 8) -> None:
  """Writes a PNG: one row per video, ``num_frames`` evenly spaced frames, mask contours overlaid."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = len(records)
  fig, axes = plt.subplots(rows, num_frames, figsize=(1.6 * num_frames, 1.75 * rows), squeeze=False)
  for r, rec in enumerate(records):
    picks = np.linspace(0, rec.num_frames - 1, num_frames).round().astype(int)
    for c, t in enumerate(picks):
      ax = axes[r, c]
      ax.imshow(rec.frames[t], interpolation="nearest")
      if rec.masks[t].any():
        ax.contour(rec.masks[t], levels=[0.5], colors="lime", linewidths=0.9)
        x1, y1, x2, y2 = rec.boxes[0, t]
        ax.add_patch(matplotlib.patches.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1 + 1, y2 - y1 + 1,
                                                  fill=False, edgecolor="yellow", linewidth=0.6))
      state = "gt" if rec.has_gt[t] else "idle"
      ax.set_title(f"t={t} {state}", fontsize=6, pad=2)
      ax.set_xticks([])
      ax.set_yticks([])
    axes[r, 0].set_ylabel(f"{class_names[rec.label]}\n{rec.video_id}\nspan {rec.span}", fontsize=6)
  fig.tight_layout(pad=0.3)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def preview_records(dataset: VideoDataset, count: int, split: str = "train") -> list[VideoRecord]:
  """Up to ``count`` videos of distinct classes first (one per group), then more of the rest."""
  index = dataset.train_index if split == "train" else dataset.test_index
  source = dataset.train if split == "train" else dataset.test
  chosen, seen_classes, seen_groups = [], set(), set()
  for i, (label, group) in enumerate(zip(index.labels, index.group_ids)):
    if label not in seen_classes and group not in seen_groups:
      chosen.append(i)
      seen_classes.add(int(label))
      seen_groups.add(group)
  chosen += [i for i in range(len(index)) if i not in chosen]
  return [source[i] for i in chosen[:count]]


def main(argv):
  del argv
  import time

  from absl import flags
  from absl import logging
  cfg = flags.FLAGS.config
  start = time.perf_counter()
  dataset = load(cfg)
  elapsed = time.perf_counter() - start
  summary = dataset.summary()
  print(f"dataset {summary['dataset']}: {summary['classes']} classes {list(dataset.class_names)}")
  for split in ("train", "test"):
    print(f"  {split}: " + json.dumps(summary[split]))
  logging.info("dataset ready in %.1f s (tfds dir %s)", elapsed, tfds_store.resolve_tfds_dir(cfg))
  if flags.FLAGS.preview:
    records = preview_records(dataset, flags.FLAGS.preview_videos, flags.FLAGS.preview_split)
    contact_sheet(records, dataset.class_names, flags.FLAGS.preview, flags.FLAGS.preview_frames)
    logging.info("wrote %s", flags.FLAGS.preview)


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/synthetic.py[:smoke].",
                                  lock_config=True)
  flags.DEFINE_string("preview", "", "Write a contact sheet PNG here ('' = only the summary).")
  flags.DEFINE_integer("preview_videos", 8, "Videos (rows) on the contact sheet.")
  flags.DEFINE_integer("preview_frames", 8, "Frames (columns) per video on the contact sheet.")
  flags.DEFINE_enum("preview_split", "train", ["train", "test"], "Split shown on the sheet.")
  flags.mark_flags_as_required(["config"])
  app.run(main)
