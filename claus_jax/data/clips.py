"""Training clips under sparse labels: sampling, pseudo-labels, STeW weights, augmentation, prefetch.

A clip is ``clip_length`` (8) frames at stride ``config.train.clip_skip`` (2) centred on a labelled
frame ``c``: frames ``c + skip * (i - L // 2)`` for ``i = 0 .. L-1`` (the labelled frame sits at
position ``L // 2``). If that does not fit inside the video, stride 1 is used (REFERENCE.md: "skip 1
near the video start"; we apply the same rule at the end); indices still outside ``[0, T)`` are clamped,
i.e. the border frame is repeated.

Which clip a step draws (``config.train.sampling``): with 'frame' (default) the labelled frames of all
items form the epoch's clip list; with 'video' (the authors' code) every labelled video appears
``train.clips_per_video`` times (2 in their code) and each draw centres on one of its labelled frames
at random, drawn from ``(seed, round, step, j)``, so a long or well-labelled video is not
over-weighted. Global clip ``p = step * B + j`` belongs to epoch ``p // N`` and is element ``p % N`` of
that epoch's permutation, seeded by ``(seed, round, epoch)``. Crop and flip are drawn from ``(seed,
round, step, j)``. So :meth:`ClipSampler.batch_at` is a pure function of ``step`` (exact resume),
whatever thread computes it.

Pseudo-labels and STeW weights are computed on the frames a clip needs (the clip frames and their
+-W window), from per-video keyframe data cached once per sampler (= once per round); the result equals
slicing the dense whole-video computation (tested), without holding dense arrays of long videos.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Iterator, Sequence

import ml_collections
import numpy as np
from absl import logging

from claus_jax import losses
from claus_jax.data.pseudo_labels import KeyframeLabels
from claus_jax.data.record import VideoRecord

# Separate seed streams for the clip order, the augmentation, the centre of 'video' sampling and the
# unlabelled clips of mean-teacher rounds.
_PERM_STREAM, _AUG_STREAM, _CENTRE_STREAM, _UNLABELLED_STREAM = 0, 1, 2, 3
SAMPLINGS = ("frame", "video")  # config.train.sampling.


def clip_frames(center: int, num_frames: int, length: int = 8, skip: int = 2) -> np.ndarray:
  """Frame indices of the clip centred on ``center``.

  Returns:
    ``(length,) int64`` in ``[0, num_frames)``; see the module docstring for the rule.
  """
  offsets = np.arange(length) - length // 2
  frames = center + skip * offsets
  if skip > 1 and (frames[0] < 0 or frames[-1] >= num_frames):
    frames = center + offsets
  return np.clip(frames, 0, num_frames - 1)


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """``(n_out, n_in) float32`` bilinear resampling matrix (half-pixel centres, edge clamped)."""
  src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
  src = np.clip(src, 0.0, n_in - 1)
  lo = np.floor(src).astype(np.int64)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = (src - lo).astype(np.float32)
  m = np.zeros((n_out, n_in), np.float32)
  rows = np.arange(n_out)
  np.add.at(m, (rows, lo), 1.0 - frac)
  np.add.at(m, (rows, hi), frac)
  return m


def draw_augmentation(rng: np.random.Generator, height: int, width: int, crop_scale: float,
                      flip: bool) -> tuple[int, int, int, int, bool]:
  """A random crop ``(y0, x0, crop_h, crop_w)`` of side ``crop_scale`` and a flip decision."""
  ch = min(height, max(1, int(round(crop_scale * height))))
  cw = min(width, max(1, int(round(crop_scale * width))))
  y0 = int(rng.integers(0, height - ch + 1))
  x0 = int(rng.integers(0, width - cw + 1))
  do_flip = bool(flip) and bool(rng.random() < 0.5)
  return y0, x0, ch, cw, do_flip


def augment(video: np.ndarray, pseudo: np.ndarray, weight: np.ndarray,
            crop: tuple[int, int, int, int, bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Applies one crop (resized back to the input size, bilinear) and flip to all three arrays.

  Args:
    video: ``(F, H, W, 3) uint8``; pseudo, weight: ``(F, H, W) float32``.
    crop: ``(y0, x0, crop_h, crop_w, flip)`` from :func:`draw_augmentation`.

  Returns:
    the transformed ``(video uint8, pseudo float32, weight float32)``, same shapes; the mask and the
    weight are resampled like the pixels (so the mask becomes soft at its border).
  """
  y0, x0, ch, cw, do_flip = crop
  _, h, w = pseudo.shape
  if (ch, cw) != (h, w):
    ry = resize_matrix(ch, h)
    rx = resize_matrix(cw, w)
    if do_flip:
      rx = rx[::-1]
    rxt = np.ascontiguousarray(rx.T)
    sl = (slice(None), slice(y0, y0 + ch), slice(x0, x0 + cw))
    # Batched 2-D matmuls (ry @ X @ rx^T per frame and channel); np.einsum's path here is ~10x slower.
    planes = np.moveaxis(video[sl], -1, 1).astype(np.float32)  # (F, 3, ch, cw)
    v = np.moveaxis(ry @ planes @ rxt, 1, -1)
    video = np.clip(np.rint(v), 0, 255).astype(np.uint8)
    pseudo = (ry @ pseudo[sl].astype(np.float32) @ rxt).astype(np.float32)
    weight = (ry @ weight[sl].astype(np.float32) @ rxt).astype(np.float32)
  elif do_flip:
    video, pseudo, weight = video[:, :, ::-1], pseudo[:, :, ::-1], weight[:, :, ::-1]
  return (np.ascontiguousarray(video), np.ascontiguousarray(pseudo, np.float32),
          np.ascontiguousarray(weight, np.float32))


def clip_targets(keys: KeyframeLabels, frames: np.ndarray, variant: str, window: int,
                 **stew_kwargs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Pseudo-mask, loss weight and real-label flags at a clip's frames, computed locally.

  Equal to slicing ``pseudo_labels`` + ``losses.stew_weights(xp=np)`` of the whole video at ``frames``
  (paper form); the implementation form's spatial mean runs over the clip's own frames
  (``losses.clip_mean``), as in the authors' dataloader.

  Args:
    keys: the video's keyframe labels.
    frames: ``(F,)`` frame indices.

  Returns:
    ``pseudo (F, H, W) float32``, ``weight (F, H, W) float32``, ``labelled (F,) bool``.
  """
  t = keys.num_frames
  labelled = keys.labelled_flags(frames)
  if variant != "stew":
    pseudo = keys.masks_at(frames)
    weight = losses.variant_weights(pseudo, labelled, variant=variant, xp=np)
    return pseudo, weight, labelled
  if stew_kwargs.get("form") == "implementation":  # The authors' window: the whole clip.
    pseudo = keys.masks_at(frames)
    distance = np.min(np.abs(frames[:, None] - keys.labelled[None, :]), axis=1).astype(np.float32)
    weight = losses.variant_weights(pseudo, labelled, losses.clip_mean(pseudo, np), distance,
                                    variant="stew", xp=np, **stew_kwargs)
    return pseudo, np.asarray(weight, np.float32), labelled
  lo = np.maximum(frames - window, 0)
  hi = np.minimum(frames + window, t - 1)
  needed = np.unique(np.concatenate([np.arange(a, b + 1) for a, b in zip(lo, hi)]))
  dense = keys.masks_at(needed)
  csum = np.concatenate([np.zeros((1,) + dense.shape[1:], np.float32), np.cumsum(dense, axis=0)])
  # Every window [a, b] was added to `needed` whole, so it is contiguous there too.
  pa, pb = np.searchsorted(needed, lo), np.searchsorted(needed, hi)
  mean = (csum[pb + 1] - csum[pa]) / (hi - lo + 1).astype(np.float32)[:, None, None]
  pseudo = dense[np.searchsorted(needed, frames)]
  distance = np.min(np.abs(frames[:, None] - keys.labelled[None, :]), axis=1).astype(np.float32)
  weight = losses.variant_weights(pseudo, labelled, mean, distance, variant="stew", xp=np,
                                  **stew_kwargs)
  return pseudo, np.asarray(weight, np.float32), labelled


def unlabelled_items(num_frames: Sequence[int],
                     items: Sequence[tuple[int, np.ndarray]]) -> list[tuple[int, np.ndarray]]:
  """A mean-teacher round's unlabelled frames: ``(index, frames)`` for every video of a split of
  ``num_frames`` lengths, its frames less those that ``items`` (``(index, labelled frames)``)
  label."""
  labelled = {int(i): np.asarray(f, np.int64) for i, f in items}
  return [(i, np.setdiff1d(np.arange(int(n)), labelled.get(i, np.zeros(0, np.int64))))
          for i, n in enumerate(num_frames)]


@dataclasses.dataclass(frozen=True)
class ClipParams:
  """What the clip sampler reads of the config, once: the ``train`` section's clip and batch
  settings, the model's clip length and the loss (its variant, STeW window and mask interpolation
  make the pseudo-labels and weights)."""

  batch_size: int
  clip_length: int
  clip_skip: int
  crop_scale: float
  flip: bool
  sampling: str
  clips_per_video: int
  data_workers: int
  prefetch: int
  loss: losses.LossParams

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> ClipParams:
    """The settings of ``config.train``, ``config.loss`` and ``config.model.clip_length``."""
    t = config.train
    return cls(batch_size=int(t.batch_size), clip_length=int(config.model.clip_length),
               clip_skip=int(t.clip_skip), crop_scale=float(t.crop_scale), flip=bool(t.flip),
               sampling=str(t.sampling),
               clips_per_video=int(t.clips_per_video),
               data_workers=int(t.data_workers), prefetch=int(t.prefetch),
               loss=losses.LossParams.from_section(config.loss))


class ClipSampler:
  """Deterministic random-access training batches for one active-learning round.

  Args:
    source: random-access sequence of :class:`VideoRecord` (the train split).
    items: ``(index into source, sorted labelled frame indices)`` per labelled video, in a stable order
      (e.g. ``pool.labelled_video_ids()``); videos without labelled frames are skipped (logged).
    params: the sampler's settings (:class:`ClipParams`).
    seed: root seed (config.seed).
    round_index: active-learning round, folded into every draw.
    batch_size: clips per batch; default ``params.batch_size`` (``config.train.batch_size``).
    unlabelled: mean-teacher rounds: ``(index into source, frames a clip may centre on)`` per video
      that has unlabelled frames (an unlabelled video: all its frames; a labelled one: those not
      labelled); each batch then also holds ``unlabelled_batch_size`` clips of them (see
      :meth:`unlabelled_clip`). None: a supervised round.
    unlabelled_batch_size: unlabelled clips per batch (``config.loss.ssl.unlabelled_batch_size``).
  """

  def __init__(self, source: Sequence[VideoRecord], items: Sequence[tuple[int, np.ndarray]],
               params: ClipParams, seed: int, round_index: int, batch_size: int | None = None,
               unlabelled: Sequence[tuple[int, np.ndarray]] | None = None,
               unlabelled_batch_size: int = 0):
    self.source = source
    self.params = params
    self.seed = int(seed)
    self.round_index = int(round_index)
    self.batch_size = int(batch_size or params.batch_size)
    self.length = params.clip_length
    self.skip = params.clip_skip
    self.crop_scale = params.crop_scale
    self.flip = params.flip
    loss = params.loss
    self.variant = loss.variant
    self.window = loss.stew_window
    self.mask_interp = loss.mask_interp
    self.stew_kwargs = loss.stew_kwargs()
    if self.variant not in losses.VARIANTS:
      raise ValueError(f"config.loss.variant {self.variant!r}: use one of {losses.VARIANTS}.")
    self.items: list[tuple[int, np.ndarray]] = []
    skipped = []
    for index, frames in items:
      frames = np.unique(np.asarray(frames, np.int64))
      if frames.size:
        self.items.append((int(index), frames))
      else:
        skipped.append(int(index))
    if skipped:
      logging.warning("clip sampler: %d labelled videos have no labelled frame and give no clips: "
                      "%s", len(skipped), skipped[:10])
    if not self.items:
      raise ValueError("clip sampler: no labelled frame in any item; the round has nothing to train on.")
    self.sampling = params.sampling
    if self.sampling == "frame":
      # The epoch's clip list: (item position, centre frame) for every labelled frame.
      self._clips = np.array([(pos, int(c)) for pos, (_, frames) in enumerate(self.items)
                              for c in frames], np.int64)
    elif self.sampling == "video":
      # (item position, -1): the centre is one of the video's labelled frames, drawn per step.
      per_video = params.clips_per_video
      self._clips = np.array([(pos, -1) for pos in range(len(self.items))
                              for _ in range(per_video)], np.int64)
    else:
      raise ValueError(f"config.train.sampling {self.sampling!r}: use one of {SAMPLINGS}.")
    self.unlabelled = None
    self.unlabelled_batch_size = 0
    if unlabelled is not None:
      self.unlabelled = [(int(i), np.unique(np.asarray(f, np.int64))) for i, f in unlabelled]
      self.unlabelled = [(i, f) for i, f in self.unlabelled if f.size]
      if not self.unlabelled:
        raise ValueError("clip sampler: config.loss.ssl.enabled but every frame of the train split "
                         "is labelled; there is nothing unlabelled to learn from (turn ssl off).")
      self.unlabelled_batch_size = int(unlabelled_batch_size)
      if self.unlabelled_batch_size < 1:
        raise ValueError("config.loss.ssl.unlabelled_batch_size: must be >= 1 with ssl enabled.")
    self._keys: dict[int, KeyframeLabels] = {}
    self._labels: dict[int, int] = {}
    self._lock = threading.Lock()
    self._perm_cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()

  @property
  def num_clips(self) -> int:
    """Clips per epoch: labelled frames ('frame' sampling) or clips_per_video x labelled videos."""
    return len(self._clips)

  @property
  def steps_per_epoch(self) -> float:
    return self.num_clips / self.batch_size

  def epoch_at(self, step: int) -> float:
    """Epochs done before ``step`` (the margin schedule's clock): ``step * B / num_clips``."""
    return step * self.batch_size / self.num_clips

  def _permutation(self, epoch: int) -> np.ndarray:
    with self._lock:
      perm = self._perm_cache.get(epoch)
      if perm is None:
        rng = np.random.default_rng([self.seed, self.round_index, _PERM_STREAM, epoch])
        perm = rng.permutation(self.num_clips)
        self._perm_cache[epoch] = perm
        while len(self._perm_cache) > 4:
          self._perm_cache.popitem(last=False)
      return perm

  def _keyframes(self, pos: int) -> tuple[KeyframeLabels, VideoRecord]:
    index, labelled = self.items[pos]
    record = self.source[index]
    with self._lock:
      keys = self._keys.get(pos)
    if keys is None:
      keys = KeyframeLabels(record, labelled, self.mask_interp)
      with self._lock:
        self._keys[pos] = keys
        self._labels[pos] = int(record.label)
    return keys, record

  def clip(self, pos: int, center: int, rng: np.random.Generator | None = None) -> dict:
    """One clip of item ``pos`` centred on ``center``; augmented when ``rng`` is given."""
    keys, record = self._keyframes(pos)
    frames = clip_frames(center, record.num_frames, self.length, self.skip)
    pseudo, weight, labelled = clip_targets(keys, frames, self.variant, self.window,
                                            **self.stew_kwargs)
    video = np.asarray(record.frames[frames])
    if rng is not None:
      h, w = record.frame_size
      crop = draw_augmentation(rng, h, w, self.crop_scale, self.flip)
      video, pseudo, weight = augment(video, pseudo, weight, crop)
    return {"video": video, "pseudo_mask": pseudo, "weight": weight, "labelled": labelled,
            "label": np.int32(record.label), "video_index": np.int32(self.items[pos][0]),
            "frames": frames}

  def unlabelled_clip(self, step: int, j: int) -> np.ndarray:
    """Unlabelled clip ``j`` of ``step``'s batch, its weak view: a video drawn uniformly from
    ``unlabelled``, a centre drawn uniformly from its allowed frames, then the crop and flip of a
    labelled clip; all from ``(seed, round, step, j)``. Returns ``(L, H, W, 3) uint8``."""
    rng = np.random.default_rng([self.seed, self.round_index, _UNLABELLED_STREAM, step, j])
    index, allowed = self.unlabelled[int(rng.integers(len(self.unlabelled)))]
    center = int(allowed[int(rng.integers(allowed.size))])
    record = self.source[index]
    frames = clip_frames(center, record.num_frames, self.length, self.skip)
    video = np.asarray(record.frames[frames])
    h, w = record.frame_size
    crop = draw_augmentation(rng, h, w, self.crop_scale, self.flip)
    no_target = np.zeros(video.shape[:3], np.float32)  # An unlabelled clip has no mask to move.
    return augment(video, no_target, no_target, crop)[0]

  def batch_at(self, step: int) -> dict[str, np.ndarray]:
    """The batch of ``step``, a pure function of ``(seed, round, step)``.

    Returns:
      ``video (B, L, H, W, 3) uint8``, ``pseudo_mask (B, L, H, W) float32``, ``weight (B, L, H, W)
      float32``, ``labelled (B, L) bool``, ``label (B,) int32``, ``video_index (B,) int32``; with
      ``unlabelled``, also ``unlabelled_video (U, L, H, W, 3) uint8``.
    """
    n = self.num_clips
    clips = []
    for j in range(self.batch_size):
      p = step * self.batch_size + j
      pos, center = self._clips[self._permutation(p // n)[p % n]]
      if center < 0:
        labelled = self.items[int(pos)][1]
        pick = np.random.default_rng([self.seed, self.round_index, _CENTRE_STREAM, step, j])
        center = labelled[int(pick.integers(labelled.size))]
      rng = np.random.default_rng([self.seed, self.round_index, _AUG_STREAM, step, j])
      clips.append(self.clip(int(pos), int(center), rng))
    batch = {
        "video": np.stack([c["video"] for c in clips]),
        "pseudo_mask": np.stack([c["pseudo_mask"] for c in clips]),
        "weight": np.stack([c["weight"] for c in clips]),
        "labelled": np.stack([c["labelled"] for c in clips]),
        "label": np.array([c["label"] for c in clips], np.int32),
        "video_index": np.array([c["video_index"] for c in clips], np.int32),
    }
    if self.unlabelled is not None:
      batch["unlabelled_video"] = np.stack(
          [self.unlabelled_clip(step, j) for j in range(self.unlabelled_batch_size)])
    return batch

  def iterate(self, start_step: int = 0, num_steps: int | None = None) -> Iterator[dict]:
    """Batches ``start_step, start_step + 1, ...`` produced ahead by background threads.

    ``config.train.data_workers`` threads (0 = in the caller's thread) keep up to
    ``config.train.prefetch`` batches in flight; batches come out in step order.
    """
    workers = self.params.data_workers
    depth = max(1, self.params.prefetch)
    stop = None if num_steps is None else start_step + num_steps
    if workers <= 0:
      step = start_step
      while stop is None or step < stop:
        yield self.batch_at(step)
        step += 1
      return
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                                 thread_name_prefix="claus-clips")
    pending: collections.deque = collections.deque()
    next_step = start_step
    try:
      while True:
        while len(pending) < depth and (stop is None or next_step < stop):
          pending.append(pool.submit(self.batch_at, next_step))
          next_step += 1
        if not pending:
          return
        yield pending.popleft().result()
    finally:
      for fut in pending:
        fut.cancel()
      pool.shutdown(wait=True, cancel_futures=True)


def measure_throughput(sampler: ClipSampler, num_batches: int = 20, start_step: int = 0) -> dict:
  """Clips per second the prefetching pipeline delivers to a consumer that never waits.

  The first batch (worker start-up and keyframe caching) is timed separately.

  Returns:
    ``{"clips_per_s", "batches", "batch_size", "seconds", "first_batch_s"}``.
  """
  it = sampler.iterate(start_step, num_batches + 1)
  t0 = time.perf_counter()
  next(it)
  t1 = time.perf_counter()
  count = 0
  for _ in it:
    count += 1
  t2 = time.perf_counter()
  seconds = max(t2 - t1, 1e-9)
  return {"clips_per_s": count * sampler.batch_size / seconds, "batches": count,
          "batch_size": sampler.batch_size, "seconds": seconds, "first_batch_s": t1 - t0}
