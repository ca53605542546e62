"""Articulated figures for the synthetic benchmark: a skeleton, action programs and a renderer.

The figure plays the role of J-HMDB's puppet: a head, a torso and four two-segment limbs. Its pose is
a set of joint angles per frame (:class:`Pose`); an *action* is a program that turns action progress
(frames) and a few per-video parameters (speed, amplitude, phase, which side leads) into poses. The
benchmark's classes (:data:`BENCHMARK_ACTIONS`) and the pretraining corpus's families
(:data:`PRETRAIN_ACTIONS`) are disjoint programs.

Geometry, in body units (standing height 1, feet at 0, y up; x forward, z to the figure's right):
limbs hang from shoulders and hips; a segment's direction is ``d(theta, phi) = (sin theta cos phi,
-cos theta cos phi, s sin phi)`` with ``theta`` the forward swing from straight down, ``phi`` the
sideways lift and ``s`` = +1 for the right limbs, -1 for the left ones. The lowest foot stands on the
ground unless the pose lifts the body (``lift``). The camera sees the figure from a yaw ``psi``
(0 = side view, pi/2 = front view): image x = ``facing * cos(psi) * x + sin(psi) * z``, so a mirrored
figure (``facing`` -1) is the mirror image of the same pose.

Every action here is its own mirror image (a wave with the left arm is a wave), so a horizontally
flipped clip keeps its label (:func:`mirror_safe`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from scipy import ndimage

# Body proportions (units of standing height).
THIGH, SHIN = 0.25, 0.24
UPPER_ARM, FOREARM = 0.17, 0.16
TORSO = 0.31  # Pelvis to neck.
HEAD_RADIUS = 0.085
SHOULDER_HALF, HIP_HALF = 0.10, 0.065  # Half the shoulder and hip widths (z).
LEG_LENGTH = THIGH + SHIN
RIM_SHADE = 0.45  # Brightness of the silhouette's edge pixels relative to the figure's colour.
_EDGE_4 = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)  # 4-neighbourhood, per frame.

DOFS = ("lean", "side", "lift", "r_sh_t", "r_sh_p", "r_el_t", "r_el_p", "l_sh_t", "l_sh_p",
        "l_el_t", "l_el_p", "r_hip_t", "r_hip_p", "r_knee", "l_hip_t", "l_hip_p", "l_knee", "walk")
# The idle stance: arms hang slightly out and bent, legs straight, a little apart.
IDLE = {"lean": 0.0, "side": 0.0, "lift": 0.0, "r_sh_t": 0.08, "r_sh_p": 0.12, "r_el_t": 0.15,
        "r_el_p": 0.0, "l_sh_t": 0.08, "l_sh_p": 0.12, "l_el_t": 0.15, "l_el_p": 0.0,
        "r_hip_t": 0.0, "r_hip_p": 0.05, "r_knee": 0.02, "l_hip_t": 0.0, "l_hip_p": 0.05,
        "l_knee": 0.02, "walk": 0.0}


@dataclasses.dataclass(frozen=True)
class Pose:
  """Joint angles (radians) per frame, each ``(N,)``; see the module docstring for conventions.

  ``lean``: torso bend forward; ``side``: torso bend to the right; ``lift``: the body's height above
  standing contact (body units); ``*_sh_t``/``*_sh_p``: upper-arm swing and lift; ``*_el_t`` /
  ``*_el_p``: the forearm's swing and lift relative to the upper arm; ``*_hip_t``/``*_hip_p``:
  thigh swing and lift; ``*_knee``: knee flex (the shin swings back by it); ``walk``: forward
  displacement of the body (body units).
  """

  angles: dict

  def __getitem__(self, name: str) -> np.ndarray:
    return self.angles[name]


def idle_pose(t: np.ndarray, breath: float = 0.02, phase: float = 0.0) -> Pose:
  """The idle stance, with a slow breathing sway of the arms and torso."""
  t = np.asarray(t, np.float64)
  wave = np.sin(2 * np.pi * t / 24.0 + phase)
  angles = {k: np.full_like(t, v) for k, v in IDLE.items()}
  angles["lean"] = angles["lean"] + breath * wave
  for side in ("r", "l"):
    angles[f"{side}_sh_t"] = angles[f"{side}_sh_t"] + breath * wave
  return Pose(angles)


def blend(a: Pose, b: Pose, w: np.ndarray) -> Pose:
  """``a`` where ``w`` = 0, ``b`` where ``w`` = 1, linear in every angle in between."""
  w = np.asarray(w, np.float64)
  return Pose({k: a[k] + w * (b[k] - a[k]) for k in DOFS})


# --------------------------------------------------------------------------------------------------
# Action programs: progress t (frames) and parameters -> Pose


@dataclasses.dataclass(frozen=True)
class ActionParams:
  """What varies between two performances of one action."""

  period: float  # Frames per cycle.
  amplitude: float  # Scales the action's own angle ranges (about 0.7-1.1).
  phase: float  # Radians into the cycle at t = 0.
  lead: str  # 'r' or 'l': the limb that leads (waves, kicks, punches first).


def _cycle(t, p: ActionParams):
  return 2 * np.pi * t / p.period + p.phase


def _rise(t, p: ActionParams):
  """0 -> 1 -> 0 once per period, smooth: (1 - cos) / 2."""
  return 0.5 * (1.0 - np.cos(_cycle(t, p)))


def _other(side: str) -> str:
  return "l" if side == "r" else "r"


def _wave(t, p):
  pose = idle_pose(t).angles
  s, a = p.lead, p.amplitude
  pose[f"{s}_sh_p"] = np.full_like(t, 2.1 + 0.25 * a)  # Upper arm raised sideways above shoulder.
  pose[f"{s}_sh_t"] = np.full_like(t, 0.25)
  pose[f"{s}_el_t"] = np.zeros_like(t)
  pose[f"{s}_el_p"] = 0.55 + 0.55 * a * np.sin(_cycle(t, p))  # Forearm sways side to side.
  return Pose(pose)


def _clap(t, p):
  pose = idle_pose(t).angles
  open_ = 0.5 * (1.0 + np.sin(_cycle(t, p)))
  for side in ("r", "l"):
    pose[f"{side}_sh_t"] = np.full_like(t, 1.15)
    pose[f"{side}_sh_p"] = 0.12 + 0.75 * p.amplitude * open_
    pose[f"{side}_el_t"] = np.full_like(t, 0.35)
    pose[f"{side}_el_p"] = -0.9 * pose[f"{side}_sh_p"]  # Hands meet in front of the chest.
  return Pose(pose)


def _squat(t, p):
  pose = idle_pose(t).angles
  a = 1.25 * p.amplitude * _rise(t, p)
  for side in ("r", "l"):
    pose[f"{side}_hip_t"] = a
    pose[f"{side}_knee"] = 2.0 * a
    pose[f"{side}_sh_t"] = 1.3 * a / 1.25
    pose[f"{side}_el_t"] = np.zeros_like(t)
  pose["lean"] = 0.45 * a
  return Pose(pose)


def _jump(t, p):
  pose = idle_pose(t).angles
  c = np.mod(_cycle(t, p) / (2 * np.pi), 1.0)
  crouch = np.where(c < 0.3, np.sin(np.pi * c / 0.3), 0.0)
  flight = np.where(c >= 0.3, np.sin(np.pi * np.clip((c - 0.3) / 0.55, 0.0, 1.0)), 0.0)
  for side in ("r", "l"):
    pose[f"{side}_hip_t"] = 0.7 * crouch + 0.25 * flight
    pose[f"{side}_knee"] = 1.4 * crouch + 0.5 * flight
    pose[f"{side}_sh_t"] = -0.4 * crouch + 2.6 * flight
    pose[f"{side}_el_t"] = 0.1 * np.ones_like(t)
  pose["lean"] = 0.35 * crouch
  pose["lift"] = 0.28 * p.amplitude * flight
  return Pose(pose)


def _kick(t, p):
  pose = idle_pose(t).angles
  s = p.lead
  k = np.clip(np.sin(_cycle(t, p)), 0.0, None)
  pose[f"{s}_hip_t"] = 1.45 * p.amplitude * k
  pose[f"{s}_knee"] = 2.2 * k * (1.0 - k)  # Chambered mid-swing, straight at full extension.
  pose["lean"] = -0.25 * k
  for side in ("r", "l"):
    pose[f"{side}_sh_p"] = 0.12 + 0.4 * k
  return Pose(pose)


def _punch(t, p):
  pose = idle_pose(t).angles
  for side, shift in ((p.lead, 0.0), (_other(p.lead), np.pi)):
    e = np.clip(np.sin(_cycle(t, p) + shift), 0.0, None) ** 0.7
    pose[f"{side}_sh_t"] = 0.55 + 1.0 * p.amplitude * e
    pose[f"{side}_sh_p"] = np.full_like(t, 0.18)
    pose[f"{side}_el_t"] = 1.9 * (1.0 - e)  # Fist at the chin when retracted.
  pose["lean"] = np.full_like(t, 0.12)
  return Pose(pose)


def _bow(t, p):
  pose = idle_pose(t).angles
  lean = 1.15 * p.amplitude * _rise(t, p)
  pose["lean"] = lean
  for side in ("r", "l"):
    pose[f"{side}_sh_t"] = 0.3 * lean  # Arms hang from the bent trunk, a little forward.
    pose[f"{side}_sh_p"] = np.full_like(t, 0.06)
  return Pose(pose)


def _walk(t, p):
  pose = idle_pose(t).angles
  phi = _cycle(t, p)
  a = 0.42 * p.amplitude
  for side, shift in (("r", 0.0), ("l", np.pi)):
    swing = np.sin(phi + shift)
    pose[f"{side}_hip_t"] = a * swing
    pose[f"{side}_knee"] = 0.9 * a * np.clip(np.cos(phi + shift), 0.0, None)  # Flex in the swing.
    pose[f"{side}_sh_t"] = -0.8 * a * swing
  # About one stride per half cycle: 2 * leg * sin(a) per period, forward.
  pose["walk"] = 2.0 * LEG_LENGTH * np.sin(a) * 2.0 * (t / p.period)
  return Pose(pose)


def _raise_arms(t, p):
  pose = idle_pose(t).angles
  u = _rise(t, p)
  for side in ("r", "l"):
    pose[f"{side}_sh_t"] = 2.8 * p.amplitude * u
    pose[f"{side}_sh_p"] = np.full_like(t, 0.2)
    pose[f"{side}_el_t"] = 0.15 * (1.0 - u)
  return Pose(pose)


def _jumping_jack(t, p):
  pose = idle_pose(t).angles
  u = _rise(t, p)
  for side in ("r", "l"):
    pose[f"{side}_sh_p"] = 0.15 + 2.55 * p.amplitude * u
    pose[f"{side}_el_t"] = np.zeros_like(t)
    pose[f"{side}_hip_p"] = 0.05 + 0.38 * p.amplitude * u
  pose["lift"] = 0.06 * np.abs(np.sin(2 * _cycle(t, p)))
  return Pose(pose)


# Pretraining families (the corpus's Charades-like actions): none is a benchmark program.


def _arm_circle(t, p):
  pose = idle_pose(t).angles
  s = p.lead
  pose[f"{s}_sh_t"] = _cycle(t, p) * np.sign(p.amplitude)
  pose[f"{s}_sh_p"] = np.full_like(t, 0.2)
  pose[f"{s}_el_t"] = np.zeros_like(t)
  return Pose(pose)


def _side_bend(t, p):
  pose = idle_pose(t).angles
  bend = 0.5 * p.amplitude * np.sin(_cycle(t, p))
  pose["side"] = bend
  pose["r_sh_p"] = 0.12 + np.clip(-bend, 0, None) * 3.5  # The arm on top reaches over.
  pose["l_sh_p"] = 0.12 + np.clip(bend, 0, None) * 3.5
  return Pose(pose)


def _march(t, p):
  pose = idle_pose(t).angles
  for side, shift in ((p.lead, 0.0), (_other(p.lead), np.pi)):
    up = np.clip(np.sin(_cycle(t, p) + shift), 0.0, None)
    pose[f"{side}_hip_t"] = 1.3 * p.amplitude * up
    pose[f"{side}_knee"] = 1.6 * p.amplitude * up
    pose[f"{_other(side)}_sh_t"] = 0.6 * up
  return Pose(pose)


def _reach_side(t, p):
  pose = idle_pose(t).angles
  sway = np.sin(_cycle(t, p))
  for side in ("r", "l"):
    pose[f"{side}_sh_p"] = 1.45 + 0.35 * p.amplitude * sway
    pose[f"{side}_el_p"] = 0.3 * p.amplitude * sway
    pose[f"{side}_el_t"] = np.zeros_like(t)
  pose["side"] = 0.15 * sway
  return Pose(pose)


def _stand(t, p):
  return idle_pose(t, breath=0.05 * p.amplitude, phase=p.phase)


def _turn(t, p):
  # The body stays idle; the camera yaw turns (Figure.turn scales it).
  return idle_pose(t, phase=p.phase)


def _lunge(t, p):
  pose = idle_pose(t).angles
  u = _rise(t, p)
  s = p.lead
  pose[f"{s}_hip_t"] = 1.0 * p.amplitude * u
  pose[f"{s}_knee"] = 1.1 * p.amplitude * u
  pose[f"{_other(s)}_hip_t"] = -0.55 * p.amplitude * u
  pose[f"{_other(s)}_knee"] = 0.35 * u
  return Pose(pose)


def _flap(t, p):
  pose = idle_pose(t).angles
  u = 0.5 * (1.0 + np.sin(_cycle(t, p)))
  for side in ("r", "l"):
    pose[f"{side}_sh_t"] = np.full_like(t, 0.3)
    pose[f"{side}_sh_p"] = 0.3 + 0.9 * p.amplitude * u
    pose[f"{side}_el_t"] = np.full_like(t, 1.9)
  return Pose(pose)


# Composed families (pretrain.families > 0): many programs drawn at random from joint primitives, in
# the role of a large pretraining label space (Kinetics' 400 classes beside Charades' 157). A family
# moves one to three body parts, each DOF a base angle plus an oscillation (a sine, a rectified
# sine or a smooth rise, at one or two cycles per period, with its own phase). The benchmark's
# whole-body signatures are left out: no body lift (jump), no forward travel (walk), no deep forward
# lean (bow), no knees bending together (squat); arm and single-leg motions may resemble a
# benchmark action, as Charades' actions resemble J-HMDB's, but no family is a benchmark program.
_COMPOSED_PARTS = {  # Part -> its DOFs (the lead side's, for limbs) and each one's (lo, hi) angle.
    "lead_arm": {"sh_t": (-0.6, 2.4), "sh_p": (0.0, 2.5), "el_t": (0.0, 2.2), "el_p": (-0.4, 0.9)},
    "other_arm": {"sh_t": (-0.6, 2.4), "sh_p": (0.0, 2.5), "el_t": (0.0, 2.2), "el_p": (-0.4, 0.9)},
    "lead_leg": {"hip_t": (-0.5, 1.2), "hip_p": (0.0, 0.7), "knee": (0.0, 1.6)},
    "torso": {"lean": (-0.25, 0.55), "side": (-0.45, 0.45)},
}
_COMPOSED_WAVES = ("sin", "half", "rise")


def composed_program(seed) -> Callable:
  """Family ``seed``'s program ``(t, ActionParams) -> Pose``: a random composition of joint
  primitives (see ``_COMPOSED_PARTS``), the same for every call with the same seed."""
  rng = np.random.default_rng(np.random.SeedSequence(seed))
  names = list(_COMPOSED_PARTS)
  parts = rng.choice(names, size=int(rng.integers(1, 4)), replace=False)
  terms = []  # (part, dof, base, amplitude, wave, harmonic, phase)
  for part in sorted(parts):
    dofs = list(_COMPOSED_PARTS[part])
    for dof in rng.choice(dofs, size=int(rng.integers(1, len(dofs) + 1)), replace=False):
      lo, hi = _COMPOSED_PARTS[part][dof]
      base = rng.uniform(lo, hi)
      amp = rng.uniform(0.25, 0.6) * (hi - lo) * rng.choice([-1.0, 1.0])
      terms.append((part, str(dof), base, amp, str(rng.choice(_COMPOSED_WAVES)),
                    int(rng.integers(1, 3)), rng.uniform(0, 2 * np.pi)))

  def program(t, p):
    pose = idle_pose(t).angles
    for part, dof, base, amp, wave, harmonic, phase in terms:
      x = harmonic * _cycle(t, p) + phase
      shape = {"sin": np.sin(x), "half": np.clip(np.sin(x), 0.0, None),
               "rise": 0.5 * (1.0 - np.cos(x))}[wave]
      lo, hi = _COMPOSED_PARTS[part][dof]
      value = np.clip(base + p.amplitude * amp * shape, lo, hi)
      if part == "torso":
        key = dof
      else:
        key = f"{p.lead if part.startswith('lead') else _other(p.lead)}_{dof}"
      pose[key] = value
    return Pose(pose)

  return program


BENCHMARK_ACTIONS: dict[str, Callable] = {
    "wave": _wave, "clap": _clap, "squat": _squat, "jump": _jump, "kick": _kick, "punch": _punch,
    "bow": _bow, "walk": _walk, "raise_arms": _raise_arms, "jumping_jack": _jumping_jack,
}
PRETRAIN_ACTIONS: dict[str, Callable] = {
    "arm_circle": _arm_circle, "side_bend": _side_bend, "march": _march,
    "reach_side": _reach_side, "stand": _stand, "turn": _turn, "lunge": _lunge, "flap": _flap,
}
assert not set(BENCHMARK_ACTIONS) & set(PRETRAIN_ACTIONS)
# Cycle lengths in frames at speed 1 (a performance draws its own within the range).
PERIODS = {"bow": (14.0, 22.0), "walk": (10.0, 16.0), "arm_circle": (10.0, 16.0),
           "turn": (16.0, 28.0)}
DEFAULT_PERIOD = (8.0, 14.0)


def mirror_safe(action: str) -> bool:
  """Whether a horizontally mirrored performance of ``action`` is still ``action`` (all are here:
  each program is symmetric up to which side leads, and the lead side is a per-video draw)."""
  if action not in BENCHMARK_ACTIONS and action not in PRETRAIN_ACTIONS:
    raise KeyError(action)
  return True


def random_action_params(rng: np.random.Generator, action: str, speed: float = 1.0,
                         lead: str | None = None) -> ActionParams:
  lo, hi = PERIODS.get(action, DEFAULT_PERIOD)
  return ActionParams(period=float(rng.uniform(lo, hi) / speed),
                      amplitude=float(rng.uniform(0.75, 1.1)),
                      phase=float(rng.uniform(0, 2 * np.pi)),
                      lead=lead if lead is not None else str(rng.choice(["r", "l"])))


def perform(action: str | Callable, t: np.ndarray, params: ActionParams) -> Pose:
  """The pose of ``action`` (a named program, or a program such as :func:`composed_program`'s)."""
  program = action if callable(action) else {**BENCHMARK_ACTIONS, **PRETRAIN_ACTIONS}[action]
  return program(np.asarray(t, np.float64), params)


# --------------------------------------------------------------------------------------------------
# Skeleton and rendering


@dataclasses.dataclass(frozen=True)
class Figure:
  """How one actor looks and where the camera sees it from (what a recording group shares)."""

  height: float  # Standing height in pixels.
  thickness: float  # Limb-radius factor (about 0.75-1.3).
  shirt: np.ndarray  # (3,) float32 RGB of torso and upper arms.
  pants: np.ndarray  # Legs.
  skin: np.ndarray  # Head and forearms.
  yaw: float  # Camera yaw in radians (0 side view, pi/2 front view).
  facing: float  # +1 faces image right, -1 faces left.


# Segments: (name, parent joint, child joint, radius in body units, colour part, side).
_SEGMENTS = (
    ("torso", "pelvis", "neck", 0.085, "shirt", 0),
    ("r_upper", "r_shoulder", "r_elbow", 0.038, "shirt", 1),
    ("r_fore", "r_elbow", "r_hand", 0.032, "skin", 1),
    ("l_upper", "l_shoulder", "l_elbow", 0.038, "shirt", -1),
    ("l_fore", "l_elbow", "l_hand", 0.032, "skin", -1),
    ("r_thigh", "r_hip", "r_knee", 0.05, "pants", 1),
    ("r_shin", "r_knee", "r_ankle", 0.042, "pants", 1),
    ("l_thigh", "l_hip", "l_knee", 0.05, "pants", -1),
    ("l_shin", "l_knee", "l_ankle", 0.042, "pants", -1),
)


PARTS = ("head", "torso", "upper_arm", "forearm", "thigh", "shin")
_PART_OF = {"torso": "torso", "r_upper": "upper_arm", "l_upper": "upper_arm", "r_fore": "forearm",
            "l_fore": "forearm", "r_thigh": "thigh", "l_thigh": "thigh", "r_shin": "shin",
            "l_shin": "shin"}


def _direction(theta, phi, s):
  """``(N, 3)`` unit limb directions (x forward, y up, z right)."""
  return np.stack([np.sin(theta) * np.cos(phi), -np.cos(theta) * np.cos(phi), s * np.sin(phi)], -1)


def joints_3d(pose: Pose) -> dict[str, np.ndarray]:
  """Joint positions ``(N, 3)`` in body units, the lowest foot on the ground (y = 0) unless lifted,
  the pelvis at x = walk, z = 0."""
  lean, side = pose["lean"], pose["side"]
  up = np.stack([np.sin(lean) * np.cos(side), np.cos(lean) * np.cos(side), np.sin(side)], -1)
  right = np.stack([np.zeros_like(lean), -np.sin(side), np.cos(side)], -1)  # Torso's lateral axis.
  z_axis = np.array([0.0, 0.0, 1.0])
  pelvis = np.zeros(up.shape)
  j = {"pelvis": pelvis, "neck": pelvis + TORSO * up}
  j["head"] = j["neck"] + (HEAD_RADIUS + 0.025) * up
  for name, s in (("r", 1.0), ("l", -1.0)):
    j[f"{name}_shoulder"] = j["neck"] - 0.03 * up + s * SHOULDER_HALF * right
    th = pose[f"{name}_sh_t"]  # Arm angles are in the world frame: a bowing figure's arms hang.
    ph = pose[f"{name}_sh_p"]
    j[f"{name}_elbow"] = j[f"{name}_shoulder"] + UPPER_ARM * _direction(th, ph, s)
    j[f"{name}_hand"] = j[f"{name}_elbow"] + FOREARM * _direction(
        th + pose[f"{name}_el_t"], ph + pose[f"{name}_el_p"], s)
    j[f"{name}_hip"] = pelvis + s * HIP_HALF * z_axis
    th, ph = pose[f"{name}_hip_t"], pose[f"{name}_hip_p"]
    j[f"{name}_knee"] = j[f"{name}_hip"] + THIGH * _direction(th, ph, s)
    j[f"{name}_ankle"] = j[f"{name}_knee"] + SHIN * _direction(th - pose[f"{name}_knee"], ph, s)
  ground = np.minimum(j["r_ankle"][:, 1], j["l_ankle"][:, 1]) - 0.02  # Sole below the ankle.
  shift = np.stack([pose["walk"], pose["lift"] - ground, np.zeros_like(lean)], -1)
  return {k: v + shift for k, v in j.items()}


def project(joints: dict[str, np.ndarray], fig: Figure, origin: np.ndarray,
            yaw: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Image coordinates ``(N, 2)`` (x right, y down, pixels) of each joint; ``origin (N, 2)`` is
  where the ground point under the standing pelvis lands. ``yaw (N,)`` overrides the figure's."""
  psi = fig.yaw if yaw is None else np.asarray(yaw)[:, None]
  out = {}
  for k, p in joints.items():
    x = fig.facing * np.cos(psi) * p[:, 0:1] + np.sin(psi) * p[:, 2:3]
    xy = np.concatenate([x, -p[:, 1:2]], axis=-1) * fig.height
    out[k] = origin + xy
  return out


def _segment_distance(px, py, a, b):
  """Distance ``(N, H, W)`` from pixel centres to segments ``a -> b`` (each ``(N, 2)``)."""
  e = (slice(None), None, None)
  ax, ay = a[:, 0][e], a[:, 1][e]
  dx, dy = (b[:, 0] - a[:, 0])[e], (b[:, 1] - a[:, 1])[e]
  length2 = np.maximum(dx * dx + dy * dy, 1e-9)
  u = np.clip(((px - ax) * dx + (py - ay) * dy) / length2, 0.0, 1.0)
  qx, qy = px - (ax + u * dx), py - (ay + u * dy)
  return np.sqrt(qx * qx + qy * qy)


def render(fig: Figure, points: dict[str, np.ndarray], size: int, yaw: np.ndarray | None = None,
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Draws the figure at projected ``points``: ``mask (N, S, S) bool``, ``color (N, S, S, 3)
  float32`` (valid where the mask is set) and ``parts (N, S, S) uint8``, the body part seen at each
  pixel (0 = none, else 1 + its index in ``PARTS``; the puppet part masks of J-HMDB). Far-side
  limbs are drawn first and darker."""
  n = next(iter(points.values())).shape[0]
  xs = np.arange(size, dtype=np.float32)[None, None, :]
  ys = np.arange(size, dtype=np.float32)[None, :, None]
  f32 = {k: v.astype(np.float32) for k, v in points.items()}
  mask = np.zeros((n, size, size), bool)
  parts = np.zeros((n, size, size), np.uint8)
  color = np.zeros((n, size, size, 3), np.float32)
  psi = fig.yaw if yaw is None else float(np.mean(yaw))
  front = abs(np.sin(psi))
  # The side nearer the camera: with the camera on the figure's right (psi > 0, facing +1), right.
  near = 1 if fig.facing * np.sign(np.sin(psi) or 1.0) > 0 else -1
  palette = {"shirt": fig.shirt, "pants": fig.pants, "skin": fig.skin}
  order = sorted(range(len(_SEGMENTS)), key=lambda i: (_SEGMENTS[i][5] * near, i))
  for i in order:
    name, a, b, radius, part, s = _SEGMENTS[i]
    r = radius * fig.thickness * fig.height
    if name == "torso":
      r *= 1.0 + 0.45 * front  # The chest is wider seen from the front.
    inside = _segment_distance(xs, ys, f32[a], f32[b]) <= max(r, 0.6)
    shade = 0.72 if s * near < 0 else 1.0
    mask |= inside
    parts[inside] = 1 + PARTS.index(_PART_OF[name])
    color = np.where(inside[..., None], palette[part] * np.float32(shade), color)
  head = _segment_distance(xs, ys, f32["head"], f32["head"]) <= max(
      HEAD_RADIUS * fig.height * (0.85 + 0.15 * fig.thickness), 1.0)
  mask |= head
  parts[head] = 1 + PARTS.index("head")
  color = np.where(head[..., None], fig.skin, color)
  # A darker rim along the silhouette (shadowed edges, like a person's contour against a scene):
  # what makes the figure a figure in any action and colour; the scene's props have none.
  inner = ndimage.binary_erosion(mask, structure=_EDGE_4[None])
  rim = mask & ~inner
  color = np.where(rim[..., None], color * np.float32(RIM_SHADE), color)
  return mask, color, parts
