"""Uncertainty of every pool video: MC dropout (CLAUS) or NoiseAug (SSAL), one vmapped scorer.

For every clip the deterministic encoder runs once; the stochastic head (everything from the first
dropout on) runs R times as a ``jax.vmap`` over dropout keys, in chunks of ``pass_chunk`` passes so
memory is bounded by the chunk. Each (clip, pass) has its own key, ``fold_in(fold_in(key, clip_uid),
pass)``, so a clip's scores do not depend on the batch it lands in, the batch size or the number of
devices.

Per pixel, with p_r the foreground probability of pass r (paper Eq. 2):
  * ``form='paper'``: U = mean_r(-log p_r), set to 0 where mean_r(p_r) < threshold (definite
    background); frame score U_f = the frame's sum of U divided by its number of foreground pixels
    (mean_r(p_r) >= threshold), 0 for a frame without any (Eq. 2: background is certain).
    Why the foreground count: intra-sample selection subtracts a proximity penalty g(d) in [0, 1]
    (g(1..4) = 0.93, 0.76, 0.53, 0.33) from the frame scores, and the authors' frame score, to which
    g was fitted, is a per-foreground-pixel mean (~0.36 for a typical actor). Dividing Eq. 2's sum
    by all P pixels instead gave ~0.02 for an actor covering 6% of the frame, so the penalty, not
    the uncertainty, decided which frames were picked.
  * ``form='implementation'`` (authors' code): p = mean_r(p_r); frame score = mean of -log p over the
    pixels with p > threshold; a frame without such pixels scores ``NO_FOREGROUND``.
  * entropy (baseline): mean over pixels of the binary entropy of mean_r(p_r), at R passes.

Sweeps come for free: the running means after 1..R passes give frame scores for every R' <= R, and
each threshold of a list is applied to the same means, in one run of R passes.

``source='noise'`` (NoiseAug, Singh et al., AAAI 2024; the SSAL code's ``active_learning.py``): the
whole model in eval mode (no dropout) sees R copies of each clip, copy r with its own additive noise
U(-a, a) on the [0, 1] image (``noise_amplitude`` a = 0.05; no clipping), keyed
``fold_in(clip key, r)`` like the dropout passes; the copies are another vmapped axis. Per pixel the
mean m and the variance v (over the copies, ddof 0) of the sigmoid mask; a frame counts when its
m sums above ``noise_min_mass`` (0.1); its score is the sum of v over the pixels with m >
``noise_threshold`` (0.2), divided by their count (+1e-8), with v = 0 counted as 1e-8; a frame that
does not count scores -inf (no foreground: ranks last, and the SSAL video score, the mean over the
counted frames, skips it). Every strategy that reads frame scores reads these; the encoder is not
shared between copies, so a copy costs a full forward. The scores are variances (at most 0.25),
below CLAUS's proximity penalty g(d) in size, so CLAUS's intra selection with them acts as a hard
suppression: the best frame, then the best frame outside the +-nms_radius window of each pick.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from claus_jax import models
from claus_jax import parallel
from claus_jax import tiling

FORMS = ("paper", "implementation")  # config.uncertainty.form: the frame-score rules above.
SOURCES = ("mc_dropout", "noise")  # config.uncertainty.source: what makes the R predictions differ.
NO_FOREGROUND = -10.0  # Implementation form: score of a frame with no foreground pixel.
_EPS = 1e-6
NOISE_VAR_FLOOR = 1e-8  # NoiseAug: a pixel of zero variance counts as this (as the SSAL code does).


def pass_chunk_size(passes: int, requested: int) -> int:
  """The largest divisor of ``passes`` not above ``requested`` (chunks must tile the passes)."""
  requested = max(1, min(requested, passes))
  return max(d for d in range(1, requested + 1) if passes % d == 0)


def frame_scores_from_means(mean_p: jax.Array, mean_nll: jax.Array, thresholds: jax.Array,
                            form: str) -> jax.Array:
  """Frame scores from per-pixel running means.

  Args:
    mean_p: ``(..., F, H, W)`` mean foreground probability over the passes so far.
    mean_nll: same shape, mean of -log p over the passes so far.
    thresholds: ``(n,)`` background thresholds.
    form: 'paper' or 'implementation'.

  Returns:
    ``(..., n, F)`` frame scores, one row per threshold.
  """
  thr = thresholds.reshape((-1, 1, 1, 1))
  p = mean_p[..., None, :, :, :]  # (..., 1, F, H, W)
  fg = p >= thr if form == "paper" else p > thr
  count = jnp.sum(fg, axis=(-2, -1))
  if form == "paper":
    total = jnp.sum(jnp.where(fg, mean_nll[..., None, :, :, :], 0.0), axis=(-2, -1))
    return total / jnp.maximum(count, 1)  # 0 without foreground.
  nll = -jnp.log(jnp.clip(p, _EPS, 1.0))
  total = jnp.sum(jnp.where(fg, nll, 0.0), axis=(-2, -1))
  return jnp.where(count > 0, total / jnp.maximum(count, 1), NO_FOREGROUND)


def noise_frame_scores(mean_p: jax.Array, var_p: jax.Array, thresholds: jax.Array,
                       min_mass: float) -> jax.Array:
  """NoiseAug frame scores from per-pixel moments over the noisy copies (module docstring).

  Args:
    mean_p: ``(..., F, H, W)`` mean foreground probability over the copies so far.
    var_p: same shape, its variance over those copies (ddof 0).
    thresholds: ``(n,)`` pixel thresholds (a pixel adds its variance when ``mean_p`` is above).
    min_mass: a frame counts when ``mean_p`` sums above this over its pixels.

  Returns:
    ``(..., n, F)`` frame scores, -inf for a frame that does not count.
  """
  thr = thresholds.reshape((-1, 1, 1, 1))
  fg = mean_p[..., None, :, :, :] > thr
  var = jnp.where(var_p == 0, NOISE_VAR_FLOOR, var_p)[..., None, :, :, :]
  count = jnp.sum(fg, axis=(-2, -1)).astype(jnp.float32)
  score = jnp.sum(jnp.where(fg, var, 0.0), axis=(-2, -1)) / (count + 1e-8)
  counted = jnp.sum(mean_p, axis=(-2, -1)) > min_mass  # (..., F)
  return jnp.where(counted[..., None, :], score, -jnp.inf)


def binary_entropy(p: jax.Array) -> jax.Array:
  p = jnp.clip(p, _EPS, 1.0 - _EPS)
  return -(p * jnp.log(p) + (1.0 - p) * jnp.log1p(-p))


@dataclasses.dataclass(frozen=True)
class ScoreParams:
  """What scoring reads of the config, once: the ``uncertainty`` section with the model's clip
  length, class count and input range and the data's frame size."""

  passes: int
  pass_chunk: int
  form: str
  bg_threshold: float
  sweep_thresholds: tuple[float, ...]
  clip_chunk: int
  tiling: str
  clip_length: int
  num_classes: int
  input_range: tuple[float, float]
  frame_size: int
  source: str = "mc_dropout"
  noise_amplitude: float = 0.05
  noise_threshold: float = 0.2
  noise_min_mass: float = 0.1

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> ScoreParams:
    """The settings of ``config.uncertainty`` and what scoring reads of ``model`` and ``data``."""
    u = config.uncertainty
    return cls(
        passes=int(u.passes), pass_chunk=int(u.pass_chunk), form=str(u.form),
        bg_threshold=float(u.bg_threshold),
        sweep_thresholds=tuple(float(t) for t in u.sweep_thresholds),
        clip_chunk=int(u.clip_chunk), tiling=str(u.tiling),
        clip_length=int(config.model.clip_length), num_classes=int(config.model.num_classes),
        input_range=models.input_range(config.model), frame_size=int(config.data.frame_size),
        source=str(u.source), noise_amplitude=float(u.noise_amplitude),
        noise_threshold=float(u.noise_threshold), noise_min_mass=float(u.noise_min_mass))

  @property
  def threshold(self) -> float:
    """The source's pixel threshold: ``bg_threshold`` (MC dropout) or ``noise_threshold``."""
    return self.noise_threshold if self.source == "noise" else self.bg_threshold

  @property
  def thresholds(self) -> tuple[float, ...]:
    """The source's threshold first, then the sweep's other thresholds: the scorer's default
    list."""
    return (self.threshold,) + tuple(t for t in self.sweep_thresholds if t != self.threshold)


def make_score_fn(model, params: ScoreParams, thresholds: Sequence[float]) -> Callable:
  """Builds ``score(variables, video, clip_keys) -> dict`` for a batch of clips (not jitted).

  Args (of the returned function):
    video: ``(B, L, H, W, 3) uint8`` clips.
    clip_keys: ``(B, 2) uint32`` one raw PRNG key per clip.

  Returns (of the returned function), all float32:
    frame_scores: ``(B, L, R, n_thr)`` score after r+1 passes, per threshold, per clip slot (the
      clip axis leads in every output, so batches split and merge along axis 0);
    entropy: ``(B, L)`` mean pixel entropy of the R-pass mean prediction;
    mean_prob: ``(B, L)`` mean foreground probability per frame (for reports);
    latent: ``(B, D)`` and class_probs ``(B, C)`` averaged over the R passes.
  """
  passes = params.passes
  chunk = pass_chunk_size(passes, params.pass_chunk)
  form = params.form
  if form not in FORMS:
    raise ValueError(f"config.uncertainty.form={form!r}: use one of {FORMS}.")
  if params.source not in SOURCES:
    raise ValueError(f"config.uncertainty.source={params.source!r}: use one of {SOURCES}.")
  thr = jnp.asarray(thresholds, jnp.float32)
  if params.source == "noise":
    return _make_noise_score_fn(model, params, thr, chunk)

  def head_one(variables, feats_one, key):
    out = model.apply(variables, feats_one, train=True, rngs={"dropout": key}, method="head")
    return (jax.nn.sigmoid(out["seg_logits"][0].astype(jnp.float32)),
            out["latent"][0].astype(jnp.float32), out["class_probs"][0].astype(jnp.float32))

  def score(variables, video, clip_keys):
    video = models.preprocess(video, params.input_range)
    feats = model.apply(variables, video, train=False, method="encode")
    feats_b1 = jax.tree.map(lambda x: x[:, None], feats)  # (B, 1, ...): head sees batch 1 per lane
    per_clip = jax.vmap(head_one, in_axes=(None, 0, 0))
    batch = video.shape[0]

    def body(carry, pass_ids):
      sum_p, sum_nll, sum_lat, sum_cls = carry
      keys = jax.vmap(lambda r: jax.vmap(lambda k: jax.random.fold_in(k, r))(clip_keys))(pass_ids)
      p, lat, cls = jax.vmap(per_clip, in_axes=(None, None, 0))(variables, feats_b1, keys)
      nll = -jnp.log(jnp.clip(p, _EPS, 1.0))
      cum_p = sum_p[None] + jnp.cumsum(p, axis=0)  # (c, B, L, H, W)
      cum_nll = sum_nll[None] + jnp.cumsum(nll, axis=0)
      count = (pass_ids + 1).astype(jnp.float32).reshape((-1, 1, 1, 1, 1))
      scores = frame_scores_from_means(cum_p / count, cum_nll / count, thr, form)  # (c, B, n, L)
      carry = (cum_p[-1], cum_nll[-1], sum_lat + lat.sum(0), sum_cls + cls.sum(0))
      return carry, jnp.swapaxes(scores, 1, 2)  # (c, n, B, L)

    frame_shape = video.shape[:2] + video.shape[2:4]
    d = models.latent_dim(params.num_classes)
    init = (jnp.zeros(frame_shape), jnp.zeros(frame_shape), jnp.zeros((batch, d)),
            jnp.zeros((batch, params.num_classes)))
    pass_ids = jnp.arange(passes, dtype=jnp.uint32).reshape(passes // chunk, chunk)
    (sum_p, _, sum_lat, sum_cls), scores = jax.lax.scan(body, init, pass_ids)
    return _score_outputs(scores, sum_p / passes, sum_lat / passes, sum_cls / passes)

  return score


def _score_outputs(scores: jax.Array, mean_p: jax.Array, latent: jax.Array,
                   class_probs: jax.Array) -> dict[str, jax.Array]:
  """The scorer's outputs (:func:`make_score_fn`) from the scan's per-chunk frame scores ``(R / c,
  c, n, B, L)`` and the R-pass means."""
  passes = scores.shape[0] * scores.shape[1]
  return {
      "frame_scores": jnp.transpose(scores.reshape((passes,) + scores.shape[2:]), (2, 3, 0, 1)),
      "entropy": jnp.mean(binary_entropy(mean_p), axis=(-2, -1)),
      "mean_prob": jnp.mean(mean_p, axis=(-2, -1)),
      "latent": latent,
      "class_probs": class_probs,
  }


def _make_noise_score_fn(model, params: ScoreParams, thr: jax.Array, chunk: int) -> Callable:
  """:func:`make_score_fn` for ``source='noise'``: R noisy copies through the eval-mode model."""
  passes = params.passes
  low, high = params.input_range
  amplitude = params.noise_amplitude

  def copies(variables, video, clip_keys, copy_ids):
    """``(c, B, L, H, W)`` probabilities, ``(c, B, D)`` latents, ``(c, B, C)`` class probabilities
    of copies ``copy_ids``; copy r of clip b adds noise drawn with ``fold_in(clip_keys[b], r)``."""

    def one(r):
      noise = jax.vmap(lambda k: jax.random.uniform(
          jax.random.fold_in(k, r), video.shape[1:], jnp.float32, -amplitude, amplitude))(clip_keys)
      out = model.apply(variables, video + (high - low) * noise, train=False)
      return (jax.nn.sigmoid(out["seg_logits"].astype(jnp.float32)),
              out["latent"].astype(jnp.float32), out["class_probs"].astype(jnp.float32))

    return jax.vmap(one)(copy_ids)

  def score(variables, video, clip_keys):
    video = models.preprocess(video, params.input_range)

    def body(carry, copy_ids):
      # The moments are of p minus the first copy's p (``shift``): noise moves p little, so the
      # differences and their squares keep float32's precision where E[p^2] - E[p]^2 would not.
      shift, sum_d, sum_d2, sum_lat, sum_cls = carry
      p, lat, cls = copies(variables, video, clip_keys, copy_ids)
      shift = jnp.where(copy_ids[0] == 0, p[0], shift)
      diff = p - shift[None]
      cum_d = sum_d[None] + jnp.cumsum(diff, axis=0)  # (c, B, L, H, W)
      cum_d2 = sum_d2[None] + jnp.cumsum(diff * diff, axis=0)
      count = (copy_ids + 1).astype(jnp.float32).reshape((-1, 1, 1, 1, 1))
      mean_d = cum_d / count
      var = jnp.maximum(cum_d2 / count - mean_d * mean_d, 0.0)
      scores = noise_frame_scores(shift[None] + mean_d, var, thr,
                                  params.noise_min_mass)  # (c, B, n, L)
      carry = (shift, cum_d[-1], cum_d2[-1], sum_lat + lat.sum(0), sum_cls + cls.sum(0))
      return carry, jnp.swapaxes(scores, 1, 2)  # (c, n, B, L)

    batch = video.shape[0]
    frame_shape = video.shape[:4]
    d = models.latent_dim(params.num_classes)
    init = (jnp.zeros(frame_shape), jnp.zeros(frame_shape), jnp.zeros(frame_shape),
            jnp.zeros((batch, d)), jnp.zeros((batch, params.num_classes)))
    copy_ids = jnp.arange(passes, dtype=jnp.uint32).reshape(passes // chunk, chunk)
    (shift, sum_d, _, sum_lat, sum_cls), scores = jax.lax.scan(body, init, copy_ids)
    return _score_outputs(scores, shift + sum_d / passes, sum_lat / passes, sum_cls / passes)

  return score


def mc_forward(module, video: jax.Array) -> dict:
  """One full MC-dropout forward pass: deterministic encoder, stochastic head.

  Use as ``model.apply(variables, video, rngs={'dropout': k}, method=mc_forward)``: the authors'
  way of scoring (R of these per clip), which the shared-encoder scorer must reproduce.
  """
  return module.head(module.encode(video, train=False), train=True)


def pixel_scores_reference(probs: np.ndarray, threshold: float, form: str) -> np.ndarray:
  """NumPy reference of the frame score from R passes' probabilities ``(R, F, H, W)`` -> ``(F,)``."""
  probs = np.asarray(probs, np.float64)
  mean_p = probs.mean(0)
  if form == "paper":
    u = (-np.log(np.clip(probs, _EPS, 1.0))).mean(0)
    fg = mean_p >= threshold
    return np.where(fg, u, 0.0).sum(axis=(-2, -1)) / np.maximum(fg.sum(axis=(-2, -1)), 1)
  fg = mean_p > threshold
  nll = -np.log(np.clip(mean_p, _EPS, 1.0))
  out = np.full(probs.shape[1], NO_FOREGROUND)
  for f in range(probs.shape[1]):
    if fg[f].any():
      out[f] = nll[f][fg[f]].mean()
  return out


SCORE_STREAM = 2  # The root-key stream of scoring (rounds' init and train streams are 0 and 1).


def score_key(seed: int, round_index: int) -> jax.Array:
  """The key round ``round_index`` of a run with ``seed`` scores with: the main job and the score CLI
  use this one function, so the CLI reproduces a run's scores."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), SCORE_STREAM), round_index)


def clip_keys(key: jax.Array, video_uid: int, clip_ids: np.ndarray) -> np.ndarray:
  """``(B, 2) uint32`` keys ``fold_in(fold_in(key, video_uid), clip)`` (host side, deterministic)."""
  vkey = jax.random.fold_in(key, video_uid)
  return np.asarray(jax.vmap(lambda c: jax.random.fold_in(vkey, c))(jnp.asarray(clip_ids)))


@dataclasses.dataclass
class VideoScores:
  """Scores of one video. ``frame_scores[r, i, t]``: after r+1 passes, threshold i, frame t."""

  video_id: str
  frame_scores: np.ndarray  # (R, n_thr, T)
  entropy: np.ndarray  # (T,)
  mean_prob: np.ndarray  # (T,)
  latent: np.ndarray  # (D,) mean over the video's clips and passes
  class_probs: np.ndarray  # (C,)

  def scores(self, passes: int | None = None, threshold_index: int = 0) -> np.ndarray:
    """``(T,)`` frame scores at ``passes`` (default: all) and one threshold."""
    r = self.frame_scores.shape[0] if passes is None else passes
    return self.frame_scores[r - 1, threshold_index]


@dataclasses.dataclass(frozen=True)
class ScorePlan:
  """Every (video, clip) item of a list of videos, in order, cut into batches of one size.

  Made from the frame counts alone, before any video is read, so every process can make every
  process's plan.

  Attributes:
    layouts: the clip layout of each of the V videos.
    video: ``(M, B) int32`` the video of each batch slot; -1 throughout a padding batch.
    clip: ``(M, B) int32`` the clip of that video.
    valid: ``(M, B) bool`` the slot holds a real item; the padding slots of the last real batch
      repeat its last item (``tiling.batch_indices``), a padding batch holds none.
    last_batch: ``(V,) int64`` the batch holding each video's last clip.
  """

  layouts: tuple[tiling.ClipLayout, ...]
  video: np.ndarray
  clip: np.ndarray
  valid: np.ndarray
  last_batch: np.ndarray

  @property
  def num_videos(self) -> int:
    return len(self.layouts)

  @property
  def num_batches(self) -> int:
    return int(self.video.shape[0])


def score_plan(layouts: Sequence[tiling.ClipLayout], batch_size: int,
               num_batches: int | None = None) -> ScorePlan:
  """The plan that scores the clips of ``layouts`` in batches of ``batch_size``.

  Args:
    layouts: one clip layout per video, in scoring order.
    batch_size: B, items per batch.
    num_batches: pad the plan with padding batches to this many (the most any process needs, so
      that every process makes the same number of device calls); None = as many as it needs.
  """
  layouts = tuple(layouts)
  counts = np.asarray([layout.num_clips for layout in layouts], np.int64)
  video_of = np.repeat(np.arange(len(layouts), dtype=np.int32), counts)
  clip_of = (np.concatenate([np.arange(n, dtype=np.int32) for n in counts]) if len(layouts)
             else np.zeros(0, np.int32))
  idx, valid = tiling.batch_indices(len(video_of), batch_size)
  video, clip = video_of[idx], clip_of[idx]
  extra = (idx.shape[0] if num_batches is None else num_batches) - idx.shape[0]
  if extra < 0:
    raise ValueError(f"the plan needs {idx.shape[0]} batches of {batch_size}, more than "
                     f"num_batches={num_batches}.")
  video = np.concatenate([video, np.full((extra, batch_size), -1, np.int32)])
  clip = np.concatenate([clip, np.full((extra, batch_size), -1, np.int32)])
  valid = np.concatenate([valid, np.zeros((extra, batch_size), bool)])
  return ScorePlan(layouts=layouts, video=video, clip=clip, valid=valid,
                   last_batch=(np.cumsum(counts) - 1) // batch_size)


def _take_rows(tree, rows: np.ndarray):
  """``tree``'s leaves at the rows where ``rows`` (a bool mask of the leading axis) is True."""
  return jax.tree.map(lambda x: x[rows], tree)


class Scorer:
  """Scores whole videos with the shared-encoder MC-dropout scorer, sharded over a mesh.

  The (video, clip) items of all videos are planned up front from their frame counts
  (:class:`ScorePlan`) and cut into fixed-size batches (``clip_chunk`` clips, padded to a multiple
  of the mesh size), so every device call has one static shape and peak memory does not
  depend on the pool size.
  """

  def __init__(self, model, variables, params: ScoreParams,
               thresholds: Sequence[float] | None = None, mesh=None,
               batch_size: int | None = None):
    self.params = params
    self.thresholds = tuple(thresholds if thresholds is not None else params.thresholds)
    self.mesh = mesh or parallel.make_mesh()
    size = batch_size or params.clip_chunk
    self.batch_size = parallel.padded_size(size, self.mesh)
    self.variables = parallel.replicate(variables, self.mesh)
    fn = make_score_fn(model, params, self.thresholds)
    sharded = parallel.batch_sharding(self.mesh)
    self._fn = jax.jit(fn, in_shardings=(parallel.replicated(self.mesh), sharded, sharded),
                       out_shardings=sharded)  # Every output leads with the clip axis.
    self.layout_name = params.tiling
    self.clip_length = params.clip_length

  def layout(self, num_frames: int) -> tiling.ClipLayout:
    # 'skip2' is the reference layout: one clip per 2L frames, outputs repeated for skipped frames.
    return tiling.named_layout(self.layout_name, num_frames, self.clip_length,
                               interleave=self.layout_name != "skip2")

  def plan(self, num_frames: Sequence[int], batch_size: int | None = None,
           num_batches: int | None = None) -> ScorePlan:
    """The :class:`ScorePlan` of videos of ``num_frames`` frames, in this scorer's clip layout."""
    return score_plan([self.layout(int(t)) for t in num_frames], batch_size or self.batch_size,
                      num_batches)

  def score_videos(self, records, uids: Sequence[int], key: jax.Array,
                   progress: Callable[[int], None] | None = None,
                   num_frames: Sequence[int] | None = None) -> list[VideoScores]:
    """Scores ``records`` (VideoRecords); ``uids`` are stable ids for their keys.

    With ``num_frames`` (the records' frame counts, known without decoding) the records are read
    one at a time, as the batches reach them, so memory does not grow with their number. Without it
    the frame counts are read from the records, which are all held in memory first.

    Every process scores the records it is given; in a multi-process run use :meth:`score_pool`.
    """
    if num_frames is None:
      records = list(records)
      num_frames = [r.num_frames for r in records]
    plan = self.plan(num_frames)
    return self._run(plan, records, list(uids), key, self.batch_size, progress)

  def score_pool(self, source, video_ids: Sequence[str], num_frames: Sequence[int], key: jax.Array,
                 uids: Sequence[int] | None = None,
                 progress: Callable[[int], None] | None = None) -> list[VideoScores]:
    """Scores a whole pool over all processes; every process returns every video, in pool order.

    Process p reads only ``source[i]`` for ``i`` in ``parallel.process_slice(n, p)`` and feeds its
    clips as its rows of each global batch (``batch_size / process_count`` per call), on the global
    mesh. Every process builds every process's plan from ``num_frames`` (no communication) and pads
    its own with empty batches to the longest one, so all make the same number of device calls.
    The per-video results are then all-gathered. With one process this is :meth:`score_videos`.

    Args:
      source: random access ``source[i] -> VideoRecord``, i in [0, n).
      video_ids: ``(n,)`` the ids of ``source[i]`` (known without decoding).
      num_frames: ``(n,)`` their frame counts.
      uids: stable per-video ids for the dropout keys; default ``range(n)``.
    """
    n = len(video_ids)
    uids = list(range(n) if uids is None else uids)
    pc = jax.process_count()
    if self.batch_size % pc:
      raise ValueError(f"scoring batch {self.batch_size} does not split over {pc} processes.")
    local_batch = self.batch_size // pc
    layouts = [self.layout(int(t)) for t in num_frames]
    calls = max(score_plan(layouts[parallel.process_slice(n, p)], local_batch).num_batches
                for p in range(pc))
    mine = parallel.process_slice(n)
    plan = score_plan(layouts[mine], local_batch, num_batches=calls)
    local = self._run(plan, (source[i] for i in range(mine.start, mine.stop)), uids[mine], key,
                      local_batch, progress)
    for res, i in zip(local, range(mine.start, mine.stop)):
      if res.video_id != video_ids[i]:
        raise ValueError(f"source[{i}] is {res.video_id!r}, video_ids[{i}] is {video_ids[i]!r}.")
    if pc == 1:
      return local
    return self._allgather_videos(local, video_ids, num_frames)

  def _allgather_videos(self, local: list[VideoScores], video_ids, num_frames) -> list[VideoScores]:
    """Every process's VideoScores, padded to the longest video, gathered in process order."""
    t_max = max(int(t) for t in num_frames)
    n_thr, passes = len(self.thresholds), self.params.passes
    c = self.params.num_classes
    d = models.latent_dim(c)
    m = len(local)
    packed = {"frame_scores": np.zeros((m, passes, n_thr, t_max), np.float32),
              "entropy": np.zeros((m, t_max), np.float32),
              "mean_prob": np.zeros((m, t_max), np.float32),
              "latent": np.zeros((m, d), np.float32), "class_probs": np.zeros((m, c), np.float32)}
    for j, res in enumerate(local):
      t = res.entropy.shape[0]
      packed["frame_scores"][j, ..., :t] = res.frame_scores
      packed["entropy"][j, :t] = res.entropy
      packed["mean_prob"][j, :t] = res.mean_prob
      packed["latent"][j] = res.latent
      packed["class_probs"][j] = res.class_probs
    every = parallel.allgather_rows(packed)
    out = []
    for i, vid in enumerate(video_ids):
      t = int(num_frames[i])
      out.append(VideoScores(video_id=vid, frame_scores=every["frame_scores"][i, ..., :t],
                             entropy=every["entropy"][i, :t], mean_prob=every["mean_prob"][i, :t],
                             latent=every["latent"][i], class_probs=every["class_probs"][i]))
    return out

  def _call(self, video: np.ndarray, keys: np.ndarray) -> dict:
    """One device call on this process's rows of a global batch; returns its rows of the outputs."""
    out = self._fn(self.variables, parallel.shard_batch(video, self.mesh),
                   parallel.shard_batch(keys, self.mesh))
    return jax.tree.map(parallel.local_part, out)

  def _run(self, plan: ScorePlan, records, uids: Sequence[int], key: jax.Array, batch_size: int,
           progress: Callable[[int], None] | None) -> list[VideoScores]:
    """Runs ``plan``, one device call per batch, and splits the outputs back per video.

    ``records`` are the plan's videos in order; each is read when the first batch holding one of
    its clips comes up and dropped once the batch holding its last clip has run.
    """
    records = iter(records)
    if len(uids) != plan.num_videos:
      raise ValueError(f"{len(uids)} uids for a plan of {plan.num_videos} videos.")
    reading: dict[int, tuple] = {}  # video -> (record, (N, 2) clip keys), read and not finished
    outputs: dict[int, list[dict]] = {}  # video -> its rows of each batch's outputs so far
    results: list[VideoScores] = []
    size = self.params.frame_size
    frame_shape = (size, size, 3)  # Of the padding batches: that of the videos read, if any.
    for m in range(plan.num_batches):
      videos, clips, valid = plan.video[m], plan.clip[m], plan.valid[m]
      for v in range(len(results) + len(reading), int(videos.max()) + 1):
        record, layout = next(records), plan.layouts[v]
        if record.num_frames != layout.num_frames:
          raise ValueError(f"video {record.video_id!r} has {record.num_frames} frames; the plan "
                           f"was made for {layout.num_frames}.")
        reading[v] = (record, clip_keys(key, int(uids[v]), np.arange(layout.num_clips)))
        frame_shape = record.frames.shape[1:]
      if videos[0] < 0:  # A padding batch: this process has no clip left.
        video = np.zeros((batch_size, self.clip_length) + tuple(frame_shape), np.uint8)
        keys = np.zeros((batch_size, 2), np.uint32)
      else:  # Padding slots repeat the batch's last real clip (tiling.batch_indices).
        groups = [(v, clips[videos == v]) for v in np.unique(videos)]
        video = np.concatenate([tiling.gather_clips(reading[v][0].frames, plan.layouts[v], ids)
                                for v, ids in groups])
        keys = np.concatenate([reading[v][1][ids] for v, ids in groups])
      out = self._call(video, keys)
      for v in np.unique(videos[valid]):
        outputs.setdefault(int(v), []).append(_take_rows(out, valid & (videos == v)))
      for v in np.flatnonzero(plan.last_batch == m):
        record, _ = reading.pop(int(v))
        merged = jax.tree.map(lambda *xs: np.concatenate(xs), *outputs.pop(int(v)))
        results.append(self._to_video(record, plan.layouts[v], merged))
        if progress is not None:
          progress(1)
    return results

  def _to_video(self, record, layout, out) -> VideoScores:
    # frame_scores: (N, L, R, n) -> (T, R, n) -> (R, n, T)
    frame_scores = np.moveaxis(tiling.clips_to_frames(out["frame_scores"], layout), 0, -1)
    return VideoScores(
        video_id=record.video_id,
        frame_scores=frame_scores.astype(np.float32),
        entropy=tiling.clips_to_frames(out["entropy"], layout).astype(np.float32),
        mean_prob=tiling.clips_to_frames(out["mean_prob"], layout).astype(np.float32),
        latent=out["latent"].mean(0).astype(np.float32),
        class_probs=out["class_probs"].mean(0).astype(np.float32))

