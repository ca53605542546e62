"""Deterministic full-video inference: every frame gets a mask probability, the video class scores.

The video is cut with :mod:`claus_jax.tiling` (8-frame clips at skip 2, two interleaved clips per
16 frames, tail padded by clamping), clips are run in fixed-size batches (the last one padded, so one
compiled shape serves every batch of a dataset) and slot outputs are scattered back to their frames.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from claus_jax import tiling
from claus_jax.data.record import VideoRecord

# predict_fn(video_batch (B, L, H, W, 3) uint8) -> (seg_logits (B, L, H, W), class_probs (B, C)).
PredictFn = Callable[[np.ndarray], tuple]


def _sigmoid(x: np.ndarray) -> np.ndarray:
  # tanh form: no overflow warnings for large negative logits.
  return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)


def predict_video(predict_fn: PredictFn, record: VideoRecord, batch_size: int, skip: int = 2, *,
                  clip_length: int = 8, interleave: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Runs ``predict_fn`` over a whole video.

  Args:
    predict_fn: ``(B, L, H, W, 3) uint8 -> (seg_logits (B, L, H, W), class_probs (B, C))``; always
      called with ``B = batch_size`` (the last batch is padded by repeating its last clip).
      Preprocessing (uint8 -> [-1, 1]) belongs inside it, so only uint8 travels to the device.
    record: the video (``frames (T, H, W, 3) uint8``).
    batch_size: clips per call.
    skip: frame stride inside a clip (2 = reference layout, 1 = dense).
    clip_length: frames per clip.
    interleave: cover every frame (True) or repeat outputs for skipped frames (False).

  Returns:
    ``mask_probs (T, H, W) float32`` sigmoid of the logits of the slot that holds each frame, and
    ``class_probs (C,) float32``, the mean over the video's clips (padding clips excluded).
  """
  frames = record.frames
  t, h, w = frames.shape[:3]
  layout = tiling.clip_layout(t, clip_length, skip, interleave)
  idx, valid = tiling.batch_indices(layout.num_clips, batch_size)
  logits = np.zeros((t, h, w), np.float32)
  class_sum, class_count = None, 0

  def consume(out, ids, ok):
    nonlocal class_sum, class_count
    seg, cls = np.asarray(out[0], np.float32), np.asarray(out[1], np.float64)
    if seg.shape != (batch_size, clip_length, h, w) or cls.ndim != 2 or cls.shape[0] != batch_size:
      raise ValueError(f"video {record.video_id!r}: predict_fn returned seg_logits {seg.shape} and "
                       f"class_probs {cls.shape} for a batch of {batch_size} clips of "
                       f"{(clip_length, h, w)}; expected ({batch_size}, {clip_length}, {h}, {w}) "
                       f"and ({batch_size}, C)")
    row_of_clip = np.full(layout.num_clips, -1, np.int64)
    row_of_clip[ids[ok]] = np.flatnonzero(ok)
    rows = row_of_clip[layout.source_clip]
    sel = rows >= 0
    logits[sel] = seg[rows[sel], layout.source_pos[sel]]
    part = cls[ok].sum(axis=0)
    class_sum = part if class_sum is None else class_sum + part
    class_count += int(ok.sum())

  pending = None
  for ids, ok in zip(idx, valid):
    out = predict_fn(tiling.gather_clips(frames, layout, ids))  # Dispatch before fetching the last.
    if pending is not None:
      consume(*pending)
    pending = (out, ids, ok)
  consume(*pending)
  return _sigmoid(logits), (class_sum / class_count).astype(np.float32)


def _preprocess(video, input_range=(-1.0, 1.0)):
  """uint8 -> float32 in ``input_range`` (the model package's preprocess once it exists)."""
  try:
    from claus_jax.models import preprocess  # pylint: disable=g-import-not-at-top
  except ImportError:
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    low, high = input_range
    return video.astype(jnp.float32) * ((high - low) / 255.0) + low
  return preprocess(video, input_range)


def make_predict_fn(model, variables, devices=None, input_range=(-1.0, 1.0)) -> PredictFn:
  """A jitted, deterministic predict_fn for :func:`predict_video` from a Flax detector.

  ``model.apply(variables, video, train=False)`` must return a dict with ``seg_logits (B, 8, H, W)``
  and ``class_probs (B, C)``. With several local devices the batch is sharded over a 1-D 'data'
  mesh (variables replicated) and padded to a multiple of the device count; the outputs are cut
  back to the caller's batch. In a multi-process run the mesh holds this process's devices only (no
  collective), so processes may evaluate different videos; global variables are copied locally.

  Args:
    model: the Flax module.
    variables: its variables (params and batch statistics).
    devices: devices to use; None = ``jax.local_devices()``.
    input_range: pixel range fed to the model (``config.model.input_range``).

  Returns:
    ``predict_fn(video (B, L, H, W, 3) uint8) -> (seg_logits (B, L, H, W) float32,
    class_probs (B, C) float32)`` as device arrays. One compilation per input shape.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from claus_jax import parallel  # pylint: disable=g-import-not-at-top

  devices = list(jax.local_devices() if devices is None else devices)
  num_devices = len(devices)
  if any(isinstance(x, jax.Array) and not x.is_fully_addressable
         for x in jax.tree.leaves(variables)):
    # A multi-process run's global (replicated) state: each process evaluates on its own devices.
    variables = parallel.host_local_copy(variables)

  def forward(variables, video):
    out = model.apply(variables, _preprocess(video, input_range), train=False)
    return out["seg_logits"].astype(jnp.float32), out["class_probs"].astype(jnp.float32)

  if num_devices > 1:
    mesh = parallel.make_mesh(devices)
    data, replicated = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    variables = jax.device_put(variables, replicated)
    jitted = jax.jit(forward, in_shardings=(replicated, data), out_shardings=(data, data))
  else:
    variables = jax.device_put(variables, devices[0])
    jitted = jax.jit(forward)

  def predict_fn(video_batch):
    video_batch = np.asarray(video_batch)
    b = video_batch.shape[0]
    padded = -(-b // num_devices) * num_devices
    seg, cls = jitted(variables, tiling.pad_batch(video_batch, padded))
    if padded != b:
      seg, cls = seg[:b], cls[:b]
    return seg, cls

  return predict_fn
