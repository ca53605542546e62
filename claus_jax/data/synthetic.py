"""The synthetic action-detection benchmark (version 2): articulated actors in context.

Each video shows one articulated figure (:mod:`claus_jax.data.figures`: head, torso, jointed arms and
legs, the role of J-HMDB's puppet) performing an action in a scene. It is built to behave like
J-HMDB-21 and UCF-101-24 in the ways that decide what a detector can learn:

* **A class is an action**: a program over joint angles and body motion (``CLASS_NAMES``: wave,
  clap, squat, jump, kick, punch, bow, walk, raise_arms, jumping_jack). Each video varies speed,
  amplitude, phase and the leading side; each recording group varies the actor's size, limb
  thickness, clothes and skin colours, and the viewpoint (camera yaw, facing left or right). Every
  action is its own mirror image, so a flipped clip keeps its label (``figures.mirror_safe``).
* **Scene context goes with the class**, as in UCF-101: each class owns ``scenes_per_class`` typical
  scenes (a wall and a floor palette, their textures, the horizon and a few props). A group films its
  class in one of them, except a ``scene_borrow`` minority that is filmed in another class's scene.
  So a single frame is a strong but imperfect cue, and the pose sequence resolves the rest.
* **Sizes as in the real sets**: in trimmed mode (J-HMDB-like, the default) the standing figure is
  40-90% of the frame height and the action fills the clip; in untrimmed mode (UCF-like) it is 20-80%,
  the action fills a span strictly inside the video, the actor idles outside it, and no ground truth
  exists there (``has_gt`` False, masks zero, boxes NaN).
* **Recordings in groups** of ``min_group_videos``-``max_group_videos`` clips that share the
  background, the viewpoint and the actor's appearance (UCF-101's g01-g25); train and test groups are
  disjoint, and class sizes are unbalanced (``long_tail``: most / least frequent class, about 1.7 in
  UCF-101-24's test list).
* **Difficulty varies from group to group**: a group's difficulty ``d`` in [0, 1] sets the chance of
  an occluder crossing the actor (``occlusion * d``), the number of clutter props (up to ``clutter``),
  how close the actor's colours come to the scene's (contrast), sensor noise, and how far the speed
  strays from the typical one. So some videos really are more informative than others.

Walking figures are followed by a panning camera (the background scrolls), as in UCF-101's videos.

The ground truth is exact: the mask of a frame is the set of visible figure pixels (occluders remove
pixels), the box is the inclusive bounding box of the mask, one tube per video (A = 1).

Everything is a deterministic function of ``config.data.frame_size`` and ``config.data.synthetic``
(whose ``seed`` is the benchmark's own, fixed with its version: ``config.seed`` seeds the runs on it,
never the data): the class scenes, each group and each video have their own NumPy
Generator seeded from ``(seed, split, purpose, group, video)``. The data is stored once as a tfds
array_record dataset whose config name is a hash of those settings (see :func:`load`).

Preview:
  python -m claus_jax.data.synthetic --config=configs/synthetic.py --preview=sheet.png
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from scipy import ndimage

from claus_jax import pool as pool_lib
from claus_jax.data import figures
from claus_jax.data import tfds_store
from claus_jax.data.record import VideoDataset, VideoRecord

CLASS_NAMES = tuple(figures.BENCHMARK_ACTIONS)
MAX_CLASSES = len(CLASS_NAMES)
MODES = ("untrimmed", "trimmed")
# Standing figure height as a fraction of the frame height, per mode (J-HMDB-like, UCF-like).
FIGURE_HEIGHT = {"trimmed": (0.4, 0.9), "untrimmed": (0.2, 0.8)}
# Bump when the rendering code changes what a given config produces (tfds keeps old versions apart).
VERSION = "2.0.0"  # 2.0: articulated figures in class scenes (1.x: motion-defined rigid shapes).
TFDS_NAME = "claus_synthetic"

_SPLIT_IDS = {"train": 0, "test": 1, "scenes": 2}
# Purposes keep the random streams of one (split, group, video) apart.
_LABELS, _GROUP, _VIDEO, _SCENE = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class GeneratorParams:
  """Every setting that determines the generated data (and nothing else)."""

  seed: int = 0
  frame_size: int = 64
  num_classes: int = 8
  train_groups: int = 40
  test_groups: int = 20
  min_group_videos: int = 4
  max_group_videos: int = 7
  min_frames: int = 16
  max_frames: int = 32
  mode: str = "trimmed"
  long_tail: float = 1.7
  scenes_per_class: int = 2
  scene_borrow: float = 0.15
  occlusion: float = 0.6
  clutter: int = 3
  jitter: float = 1.0

  @classmethod
  def from_data(cls, data) -> "GeneratorParams":
    """The settings of ``data`` (``config.data``: its ``synthetic`` section and ``frame_size``)."""
    syn = data.synthetic
    return cls(seed=int(syn.seed), frame_size=int(data.frame_size),
               num_classes=int(syn.num_classes), train_groups=int(syn.train_groups),
               test_groups=int(syn.test_groups), min_group_videos=int(syn.min_group_videos),
               max_group_videos=int(syn.max_group_videos), min_frames=int(syn.min_frames),
               max_frames=int(syn.max_frames), mode=str(syn.mode), long_tail=float(syn.long_tail),
               scenes_per_class=int(syn.scenes_per_class), scene_borrow=float(syn.scene_borrow),
               occlusion=float(syn.occlusion), clutter=int(syn.clutter),
               jitter=float(syn.jitter)).check()

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
    if self.train_groups < 1 or self.test_groups < 1:
      fail("train_groups", "train_groups and test_groups must be >= 1.")
    if not 1 <= self.min_group_videos <= self.max_group_videos:
      fail("min_group_videos", f"need 1 <= min_group_videos <= max_group_videos, got "
           f"{self.min_group_videos}, {self.max_group_videos}.")
    if self.scenes_per_class < 1:
      fail("scenes_per_class", f"{self.scenes_per_class} must be >= 1.")
    for field in ("occlusion", "scene_borrow"):
      if not 0.0 <= getattr(self, field) <= 1.0:
        fail(field, f"{getattr(self, field)} must be a probability in [0, 1].")
    if self.scene_borrow > 0 and self.num_classes < 2:
      fail("scene_borrow", "borrowing another class's scene needs num_classes >= 2; set it to 0.")
    if self.clutter < 0 or self.jitter < 0:
      fail("clutter", "clutter and jitter must be >= 0.")
    return self

  def to_dict(self) -> dict:
    return {**dataclasses.asdict(self), "version": VERSION}

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
# Scenes


@dataclasses.dataclass(frozen=True)
class SceneStyle:
  """A typical scene: what every recording filmed in it shares (palette, textures, layout)."""

  wall: np.ndarray  # (2, 3) float32: the wall's two colours, mixed by smooth noise.
  wall_cells: int  # Noise grid of the wall (coarse to fine).
  stripe: np.ndarray  # (3,) float32 colour of the wall's stripes.
  stripe_angle: float
  stripe_period: float  # Fraction of the frame side.
  stripe_strength: float
  floor: np.ndarray  # (2, 3) float32: the floor's two colours (alternating bands).
  floor_bands: float  # Bands across the floor's depth.
  horizon: float  # Height of the wall/floor edge as a fraction of the frame (from the top).
  props: tuple  # ((kind, x, y, w, h, (r, g, b)), ...): static objects on the wall, in frame units.


def _color(rng: np.random.Generator, lo=20.0, hi=235.0) -> np.ndarray:
  return rng.uniform(lo, hi, size=3).astype(np.float32)


def random_style(rng: np.random.Generator) -> SceneStyle:
  """A scene style of its own random draws (the benchmark's class scenes and the pretraining
  corpus's scenes both come from here, from disjoint seed streams)."""
  props = []
  for _ in range(int(rng.integers(1, 4))):
    kind = str(rng.choice(["rect", "ellipse", "pole"]))
    w, h = rng.uniform(0.08, 0.3), rng.uniform(0.08, 0.35)
    if kind == "pole":
      w, h = rng.uniform(0.03, 0.07), rng.uniform(0.4, 0.9)
    props.append((kind, float(rng.uniform(0.05, 0.95)), float(rng.uniform(0.1, 0.6)), float(w),
                  float(h), tuple(float(c) for c in _color(rng))))
  return SceneStyle(wall=np.stack([_color(rng), _color(rng)]), wall_cells=int(rng.integers(3, 10)),
                    stripe=_color(rng), stripe_angle=float(rng.uniform(0, np.pi)),
                    stripe_period=float(rng.uniform(0.08, 0.4)),
                    stripe_strength=float(rng.uniform(0.0, 0.5)),
                    floor=np.stack([_color(rng), _color(rng)]),
                    floor_bands=float(rng.uniform(2.0, 8.0)),
                    horizon=float(rng.uniform(0.35, 0.7)), props=tuple(props))


def class_styles(params: GeneratorParams) -> list[list[SceneStyle]]:
  """``[class][j]``: each class's ``scenes_per_class`` typical scenes (shared by both splits, as a
  UCF-101 class's pool or pitch appears in its train and test groups)."""
  return [[random_style(_rng(params, "scenes", _SCENE, k, j))
           for j in range(params.scenes_per_class)] for k in range(params.num_classes)]


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
  """``(height, width)`` smooth noise in [0, 1]: a random grid, cubic-upsampled."""
  ch, cw = max(2, cells), max(2, int(round(cells * width / height)))
  grid = rng.random((ch, cw))
  up = ndimage.zoom(grid, (height / ch, width / cw), order=3, mode="reflect")[:height, :width]
  if up.shape != (height, width):
    up = np.pad(up, ((0, height - up.shape[0]), (0, width - up.shape[1])), mode="edge")
  lo, hi = up.min(), up.max()
  return ((up - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def paint_scene(rng: np.random.Generator, style: SceneStyle, size: int, height: int, width: int,
                clutter: int = 0) -> tuple[np.ndarray, float]:
  """A ``(height, width, 3) float32`` canvas in ``style``, and the row of its horizon in frame
  coordinates (the canvas is centred on the frame), with this recording's own texture draws,
  a small colour and layout perturbation, and ``clutter`` random props (drawn independently of the
  style). ``size`` is the frame side the style's units refer to; the canvas may be larger (camera
  margins and pans)."""
  tint = rng.uniform(0.9, 1.1, size=3).astype(np.float32)
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  noise = _smooth_noise(rng, height, width, style.wall_cells)
  wall = style.wall[0] + (style.wall[1] - style.wall[0]) * noise[..., None]
  theta = style.stripe_angle + rng.uniform(-0.1, 0.1)
  period = style.stripe_period * size
  stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period
                               + rng.uniform(0, 2 * np.pi))
  beta = style.stripe_strength * stripes[..., None]
  canvas = wall * (1 - beta) + style.stripe * beta
  margin_y = (height - size) / 2.0
  horizon = margin_y + (style.horizon + rng.uniform(-0.04, 0.04)) * size
  depth = np.clip((yy - horizon) / max(height - horizon, 1.0), 0.0, 1.0)
  band = 0.5 + 0.5 * np.sin(np.pi * style.floor_bands * np.sqrt(depth) + rng.uniform(0, 2 * np.pi))
  floor = style.floor[0] + (style.floor[1] - style.floor[0]) * band[..., None]
  canvas = np.where((yy >= horizon)[..., None], floor * (0.8 + 0.3 * depth[..., None]), canvas)
  margin_x = (width - size) / 2.0
  props = list(style.props)
  for _ in range(clutter):
    props.append((str(rng.choice(["rect", "ellipse", "pole"])), float(rng.uniform(-0.2, 1.2)),
                  float(rng.uniform(0.05, 0.9)), float(rng.uniform(0.04, 0.18)),
                  float(rng.uniform(0.06, 0.3)), tuple(float(c) for c in _color(rng))))
  for kind, px, py, pw, ph, col in props:
    cx = margin_x + (px + rng.uniform(-0.04, 0.04)) * size
    cy = margin_y + (py + rng.uniform(-0.03, 0.03)) * size
    hw, hh = 0.5 * pw * size, 0.5 * ph * size
    if kind == "ellipse":
      inside = ((xx - cx) / hw) ** 2 + ((yy - cy) / hh) ** 2 <= 1.0
    else:
      inside = (np.abs(xx - cx) <= hw) & (np.abs(yy - cy) <= hh)
    canvas = np.where(inside[..., None], np.asarray(col, np.float32), canvas)
  return (canvas * tint).astype(np.float32), float(horizon - margin_y)


# --------------------------------------------------------------------------------------------------
# Groups (recordings) and videos


@dataclasses.dataclass(frozen=True)
class Recording:
  """What the videos of one group share: the scene, the actor, the viewpoint, the difficulty."""

  label: int
  action: str
  scene_class: int  # The class whose typical scene this is (== label unless borrowed).
  scene_index: int  # Which of that class's scenes_per_class typical scenes.
  canvas: np.ndarray  # (S + 2M, S + 2M + pan room, 3) float32 background.
  margin: int  # M: the largest camera jitter in pixels.
  figure: figures.Figure
  ground: float  # Image row of the feet when standing.
  x0: float  # Image column of the pelvis at the start.
  speed: float  # The group's speed factor (1 = typical).
  difficulty: float
  occlusion: float  # Probability that one of its videos has an occluder.
  noise: float  # Sensor noise standard deviation (grey levels).
  num_videos: int


def random_figure(rng: np.random.Generator, size: int, height_range: tuple[float, float],
                  scene_color: np.ndarray | None = None, contrast_loss: float = 0.0,
                  yaw_range=(0.35, 1.35)) -> figures.Figure:
  """An actor: size, build, clothes and skin, and the viewpoint. ``contrast_loss`` in [0, 1] pulls
  its colours towards ``scene_color`` (harder to tell from the background)."""
  def col(lo, hi):
    c = rng.uniform(lo, hi, size=3).astype(np.float32)
    if scene_color is not None:
      c = (1 - contrast_loss) * c + contrast_loss * scene_color
    return c.astype(np.float32)
  skin_tone = rng.uniform(0.35, 1.0)
  skin = np.array([230, 180, 150], np.float32) * skin_tone + rng.uniform(-12, 12, 3)
  if scene_color is not None:
    skin = (1 - contrast_loss) * skin + contrast_loss * scene_color
  return figures.Figure(height=float(rng.uniform(*height_range) * size),
                        thickness=float(rng.uniform(0.8, 1.3)), shirt=col(20, 235),
                        pants=col(20, 200), skin=np.clip(skin, 0, 255).astype(np.float32),
                        yaw=float(rng.uniform(*yaw_range)),
                        facing=float(rng.choice([-1.0, 1.0])))


# How a recording's difficulty d in [0, 1] sets its look (shared with the pretraining corpus).
CONTRAST_LOSS = 0.55  # The actor's colours move this share of d towards the scene's mean colour.


def sensor_noise(difficulty: float) -> float:
  """Sensor noise standard deviation (grey levels) at ``difficulty``."""
  return 2.0 + 6.0 * difficulty


def clutter_count(rng: np.random.Generator, clutter: int, difficulty: float) -> int:
  """How many clutter props a scene of ``difficulty`` gets (at most ``clutter``)."""
  return int(round(clutter * difficulty * rng.uniform(0.5, 1.0)))


def jitter_margin(jitter: float, size: int) -> int:
  """The largest camera jitter shift in pixels at ``size``: the canvas's margin on every side."""
  return int(math.ceil(3.0 * jitter * size / 64.0)) + 1


def feet_row(rng: np.random.Generator, fig: figures.Figure, horizon: float, size: int) -> float:
  """Where the figure stands: on the floor (below the horizon), its head inside the frame."""
  lo = max(horizon + 0.04 * size, fig.height + 0.03 * size)
  return float(rng.uniform(min(lo, 0.98 * size), 0.98 * size))


def _make_recording(params: GeneratorParams, split: str, group: int, label: int,
                    styles: list[list[SceneStyle]]) -> Recording:
  rng = _rng(params, split, _GROUP, group)
  s = params.frame_size
  scene_class = label
  if params.scene_borrow > 0 and rng.random() < params.scene_borrow:
    scene_class = int((label + rng.integers(1, params.num_classes)) % params.num_classes)
  scene_index = int(rng.integers(params.scenes_per_class))
  style = styles[scene_class][scene_index]
  difficulty = float(rng.random())
  margin = jitter_margin(params.jitter, s)
  action = CLASS_NAMES[label]
  # Walking actors are followed by the camera: room for the pan (at most ~2.5 frame widths).
  pan_room = int(math.ceil(2.5 * s)) if action == "walk" else 0
  clutter = clutter_count(rng, params.clutter, difficulty)
  canvas, horizon = paint_scene(rng, style, s, s + 2 * margin, s + 2 * margin + pan_room, clutter)
  scene_color = canvas.reshape(-1, 3).mean(axis=0)
  fig = random_figure(rng, s, FIGURE_HEIGHT[params.mode], scene_color, CONTRAST_LOSS * difficulty)
  ground = feet_row(rng, fig, horizon, s)
  x0 = float(rng.uniform(0.3, 0.7) * s)
  speed = float(np.exp(rng.uniform(-1.0, 1.0) * (0.12 + 0.25 * difficulty)))
  num_videos = int(rng.integers(params.min_group_videos, params.max_group_videos + 1))
  return Recording(label=label, action=action, scene_class=scene_class, scene_index=scene_index,
                   canvas=canvas, margin=margin, figure=fig, ground=ground, x0=x0, speed=speed,
                   difficulty=difficulty, occlusion=params.occlusion * difficulty,
                   noise=sensor_noise(difficulty), num_videos=num_videos)


def _video_id(params: GeneratorParams, split: str, group: int, video: int, label: int) -> str:
  return f"c{label}_g{params.group_number(split, group):03d}_v{video}"


def _group_id(params: GeneratorParams, split: str, group: int) -> str:
  return f"{split}_g{params.group_number(split, group):03d}"


def _render_video(params: GeneratorParams, split: str, group: int, video: int, rec: Recording,
                  draw_actor: bool = True) -> VideoRecord:
  """Renders one member of ``rec``; ``draw_actor=False`` leaves the actor out (tests use it)."""
  return render_video_and_joints(params, split, group, video, rec, draw_actor)[0]


def render_video_and_joints(params: GeneratorParams, split: str, group: int, video: int,
                            rec: Recording, draw_actor: bool = True,
                            ) -> tuple[VideoRecord, dict[str, np.ndarray]]:
  """:func:`_render_video`'s record and the figure's joints in image pixels, ``{joint: (T, 2)}``
  (what a perfect 2-D pose tracker would read; studies use them)."""
  rng = _rng(params, split, _VIDEO, group, video)
  n = int(rng.integers(params.min_frames, params.max_frames + 1))
  speed = rec.speed * rng.uniform(0.9, 1.1)
  act = figures.random_action_params(rng, rec.action, speed)
  if params.mode == "untrimmed":
    length = int(round(rng.uniform(0.45, 0.75) * n))
    length = min(max(length, min(8, n - 2)), n - 2)
    first = int(rng.integers(1, n - length))  # 1 <= first, first + length <= n - 1.
    span = (first, first + length)
  else:
    span = (0, n)
  frames, visible, points, _ = render_performance(
      rng, rec.canvas, rec.margin, rec.figure, rec.action, act, n, span, params.frame_size,
      ground=rec.ground, x0=rec.x0, jitter=params.jitter, occlusion=rec.occlusion,
      noise=rec.noise, draw_actor=draw_actor)
  has_gt = np.zeros(n, bool)
  has_gt[span[0]:span[1]] = True
  masks = (visible & has_gt[:, None, None]).astype(np.uint8)
  boxes = masks_to_boxes(masks)[None]
  record = VideoRecord(video_id=_video_id(params, split, group, video, rec.label),
                       group_id=_group_id(params, split, group), label=int(rec.label),
                       frames=frames, masks=masks, boxes=boxes, has_gt=has_gt, span=span,
                       annotation="mask")
  return record, points


def render_performance(rng: np.random.Generator, canvas: np.ndarray, margin: int,
                       fig: figures.Figure, action: str | Callable, act: figures.ActionParams,
                       n: int, span: tuple[int, int], size: int, *, ground: float, x0: float,
                       jitter: float = 1.0, occlusion: float = 0.0, noise: float = 3.0,
                       draw_actor: bool = True, yaw_turn: float = 0.0,
                       progress: np.ndarray | None = None,
                       ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]:
  """Renders ``n`` frames of ``fig`` performing ``action`` in front of ``canvas``.

  The action runs over ``span`` (idle stance outside it, blended over 2 frames at its edges);
  ``progress (n,)`` overrides the action's time (frames) per frame. ``yaw_turn`` turns the camera
  about the actor by that many radians over the clip (the corpus's 'turn'). A walking figure is
  followed by the camera panning over the canvas's extra width. Returns ``frames (n, S, S, 3)
  uint8``, ``visible (n, S, S) bool`` (figure pixels not hidden by an occluder), the joints'
  image coordinates, ``{joint: (n, 2)}`` (x, y in pixels of the frame), and the visible body part
  of every pixel, ``(n, S, S) uint8`` (``figures.render``; 0 off the visible figure).
  """
  zoom = size / 64.0
  t = np.arange(n, dtype=np.float64)
  if progress is None:
    progress = np.clip(t - span[0], 0.0, max(span[1] - span[0] - 1, 0))
  active = figures.perform(action, progress, act)
  if span == (0, n):
    pose = active
  else:
    ramp = np.clip(np.minimum(t - span[0] + 1.0, span[1] - t) / 2.0, 0.0, 1.0)
    pose = figures.blend(figures.idle_pose(t), active, ramp)
  joints = figures.joints_3d(pose)
  shift = rng.uniform(-0.04, 0.04, size=2) * size
  yaw = fig.yaw + yaw_turn * (t / max(n - 1, 1) - 0.5)
  origin = np.stack([np.full(n, x0 + shift[0]), np.full(n, ground + shift[1] * 0.3)], -1)
  points = figures.project(joints, fig, origin, yaw if yaw_turn else None)
  # The camera follows a walker: pan by a share of its drift, centred on the start.
  pan_room = canvas.shape[1] - canvas.shape[0]
  walk_px = fig.facing * np.cos(fig.yaw) * joints["pelvis"][:, 0] * fig.height
  follow = rng.uniform(0.7, 0.95) if pan_room > 0 else 0.0
  pan = np.clip(follow * walk_px, -pan_room / 2.0, pan_room / 2.0)
  points = {k: v - np.stack([pan, np.zeros(n)], -1) for k, v in points.items()}

  amp = jitter * zoom
  jit = np.clip(np.rint(rng.normal(0.0, amp, size=(n, 2))), -margin, margin).astype(int)
  rows = np.arange(size)[None, :] + margin + jit[:, 1:2]
  cols = np.arange(size)[None, :] + margin + pan_room // 2 + np.rint(pan).astype(int)[:, None] \
      + jit[:, 0:1]
  frames = canvas[rows[:, :, None], cols[:, None, :]]
  points = {k: v - jit.astype(np.float64) for k, v in points.items()}
  mask, color, parts = figures.render(fig, points, size, yaw if yaw_turn else None)
  visible = mask
  if draw_actor:
    frames = np.where(mask[..., None], color, frames)

  if rng.random() < occlusion:
    # A bar (a passer-by, a pole in front) crossing the actor at a moment inside the action.
    vertical = bool(rng.random() < 0.6)
    body = 0.5 * (points["pelvis"] + points["neck"])
    width = rng.uniform(0.12, 0.3) * fig.height
    t_cross = rng.uniform(span[0], max(span[1] - 1, span[0]))
    bar_speed = rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 1.5) * zoom
    axis = 0 if vertical else 1
    centre = np.interp(t_cross, t, body[:, axis]) + bar_speed * (t - t_cross)
    coord = np.arange(size, dtype=np.float64)
    across = coord[None, None, :] if vertical else coord[None, :, None]
    bar = np.abs(across - centre[:, None, None]) <= width / 2
    bar = np.broadcast_to(bar, (n, size, size))
    visible = mask & ~bar
    stripe = 0.85 + 0.15 * np.sin(coord * rng.uniform(0.3, 1.0))  # Texture along the bar.
    pattern = stripe[None, :, None] if vertical else stripe[None, None, :]
    bar_image = (_color(rng) * pattern[..., None]).astype(np.float32)  # (1, S, S, 3) broadcast.
    frames = np.where(bar[..., None], bar_image, frames)

  frames = frames * rng.normal(1.0, 0.02, size=(n, 1, 1, 1)).astype(np.float32)
  frames = frames + np.float32(noise) * rng.standard_normal(size=frames.shape, dtype=np.float32)
  frames = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
  return frames, visible, points, np.where(visible, parts, 0).astype(np.uint8)


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
  rec = _make_recording(params, split, group, label, class_styles(params))
  return _render_video(params, split, group, video, rec, draw_actor=draw_actor)


def recording(params: GeneratorParams, split: str, group: int) -> Recording:
  """What group ``group`` of ``split`` shares (its scene class, figure, difficulty, size)."""
  label = int(group_labels(params, split)[group])
  return _make_recording(params, split, group, label, class_styles(params))


def generate_split(params: GeneratorParams, split: str) -> Iterator[VideoRecord]:
  """All videos of ``split`` in index order: group-major, then member."""
  labels = group_labels(params, split)
  styles = class_styles(params)
  for g, label in enumerate(labels):
    rec = _make_recording(params, split, g, int(label), styles)
    for v in range(rec.num_videos):
      yield _render_video(params, split, g, v, rec)


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


def load(data, quiet: bool = False) -> VideoDataset:
  """The synthetic dataset of ``data`` (``config.data``), generated and written on first use, then
  reused."""
  builder = builder_for(GeneratorParams.from_data(data), tfds_store.resolve_tfds_dir(data.tfds_dir))
  return tfds_store.load_or_prepare(builder, "synthetic", quiet=quiet)


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
  dataset = load(cfg.data, bool(cfg.quiet))
  elapsed = time.perf_counter() - start
  summary = dataset.summary()
  print(f"dataset {summary['dataset']}: {summary['classes']} classes {list(dataset.class_names)}")
  for split in ("train", "test"):
    print(f"  {split}: " + json.dumps(summary[split]))
  logging.info("dataset ready in %.1f s (tfds dir %s)", elapsed,
               tfds_store.resolve_tfds_dir(cfg.data.tfds_dir))
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
