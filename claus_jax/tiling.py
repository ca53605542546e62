"""Clip layouts that cut a whole video into fixed-size clips and map clip outputs back to frames.

Used by full-video inference (evaluation) and by MC-dropout scoring (uncertainty). Every function
here is host-side NumPy and returns static-shape index arrays, so the device only ever sees batches
of one shape: ``frames[layout.frame_indices[batch_idx]]`` is ``(B, L, H, W, 3)`` for every batch.

Layouts (``L`` = clip length, ``k`` = skip):
  * A video is cut into blocks of ``L * k`` frames starting at ``s = 0, L*k, 2*L*k, ...``.
  * interleaved (the reference evaluation layout): each block gives ``k`` clips; clip ``o`` covers
    frames ``s + o, s + o + k, ..., s + o + (L - 1) * k``. At ``L=8, k=2`` that is two interleaved
    clips per 16 frames, ``s, s+2, ..., s+14`` and ``s+1, s+3, ..., s+15``; at ``k=1`` it is dense
    consecutive 8-frame clips. Every frame is predicted by exactly one clip slot.
  * not interleaved (the authors' cheap scoring layout): only clip ``o = 0`` of each block; the output
    of a clip slot is repeated for the ``k - 1`` skipped frames that follow it.
  * The tail is padded by clamping frame indices to the last frame ``T - 1``. A padded slot is never
    the source of a frame: each frame takes its one real (unclamped) slot.
"""

from __future__ import annotations

import dataclasses

import numpy as np

TILINGS = ("skip2", "dense")  # Names used by config.eval.tiling and config.uncertainty.tiling.


@dataclasses.dataclass(frozen=True)
class ClipLayout:
  """How one video of ``num_frames`` frames is cut into clips.

  Attributes:
    num_frames: T, frames in the video.
    clip_length: L, frames per clip.
    skip: k, temporal stride between the frames of a clip.
    interleave: True if all ``k`` phases of a block get a clip (every frame predicted directly).
    frame_indices: ``(N, L) int32`` frame index of every clip slot, clamped to ``[0, T - 1]``.
    valid: ``(N, L) bool`` the slot's unclamped index is a real frame (False = tail padding).
    source_clip: ``(T,) int32`` clip whose output frame ``t`` takes.
    source_pos: ``(T,) int32`` position inside that clip.
  """

  num_frames: int
  clip_length: int
  skip: int
  interleave: bool
  frame_indices: np.ndarray
  valid: np.ndarray
  source_clip: np.ndarray
  source_pos: np.ndarray

  @property
  def num_clips(self) -> int:
    return int(self.frame_indices.shape[0])

  @property
  def owner(self) -> np.ndarray:
    """``(N, L) bool``: the slot is the source of the frame it holds (one owner per frame).

    Useful to scatter clip outputs into a ``(T, ...)`` buffer: ``out[frame_indices[owner]] =
    clip_outputs[owner]`` (interleaved layouts only; otherwise use :func:`clips_to_frames`).
    """
    f = self.frame_indices
    n, l = f.shape
    return ((self.source_clip[f] == np.arange(n)[:, None]) &
            (self.source_pos[f] == np.arange(l)[None, :]))


def clip_layout(num_frames: int, clip_length: int = 8, skip: int = 2,
                interleave: bool = True) -> ClipLayout:
  """Builds the clip layout of a ``num_frames``-frame video (see the module docstring).

  Args:
    num_frames: T >= 1.
    clip_length: L >= 1 frames per clip.
    skip: k >= 1 stride between the frames of a clip.
    interleave: cover all k phases of each block (True) or only phase 0, repeating outputs (False).

  Returns:
    A ClipLayout with ``N = ceil(T / (L * k)) * (k if interleave else 1)`` clips.
  """
  if num_frames < 1:
    raise ValueError(f"a clip layout needs at least one frame, got num_frames={num_frames}")
  if clip_length < 1 or skip < 1:
    raise ValueError(f"clip_length={clip_length} and skip={skip} must be >= 1")
  block = clip_length * skip
  num_blocks = -(-num_frames // block)
  phases = skip if interleave else 1
  starts = (np.arange(num_blocks)[:, None] * block + np.arange(phases)[None, :]).reshape(-1)
  raw = starts[:, None] + skip * np.arange(clip_length)[None, :]  # (N, L) before clamping.
  frame_indices = np.minimum(raw, num_frames - 1).astype(np.int32)
  valid = raw < num_frames

  t = np.arange(num_frames)
  b, r = t // block, t % block
  if interleave:
    source_clip = b * skip + r % skip
    source_pos = r // skip
  else:
    # The slot at or before t inside its block: the frame itself or the one it repeats.
    source_clip = b
    source_pos = r // skip
  return ClipLayout(num_frames=int(num_frames), clip_length=int(clip_length), skip=int(skip),
                    interleave=bool(interleave), frame_indices=frame_indices, valid=valid,
                    source_clip=source_clip.astype(np.int32), source_pos=source_pos.astype(np.int32))


def named_layout(tiling: str, num_frames: int, clip_length: int = 8,
                 interleave: bool = True) -> ClipLayout:
  """The layout named by a config string: 'skip2' (k=2) or 'dense' (k=1)."""
  if tiling == "skip2":
    return clip_layout(num_frames, clip_length, 2, interleave)
  if tiling == "dense":
    return clip_layout(num_frames, clip_length, 1, interleave)
  raise ValueError(f"unknown tiling {tiling!r}; use one of {TILINGS}")


def gather_clips(frames: np.ndarray, layout: ClipLayout, clip_ids: np.ndarray | None = None
                 ) -> np.ndarray:
  """Clips of a video.

  Args:
    frames: ``(T, ...)`` any per-frame array (e.g. ``(T, H, W, 3) uint8``).
    layout: the video's layout (``layout.num_frames == T``).
    clip_ids: ``(B,)`` clips to gather; None = all.

  Returns:
    ``(B, L, ...)`` with the same dtype as ``frames``.
  """
  if frames.shape[0] != layout.num_frames:
    raise ValueError(f"frames have {frames.shape[0]} frames but the layout was built for "
                     f"{layout.num_frames}")
  idx = layout.frame_indices if clip_ids is None else layout.frame_indices[clip_ids]
  return frames[idx]


def clips_to_frames(clip_outputs, layout: ClipLayout):
  """Maps per-clip-slot outputs back to per-frame outputs.

  Args:
    clip_outputs: ``(N, L, ...)`` NumPy or JAX array, one output per clip slot.
    layout: the layout the clips were cut with.

  Returns:
    ``(T, ...)``: frame ``t`` gets ``clip_outputs[source_clip[t], source_pos[t]]``.
  """
  if tuple(clip_outputs.shape[:2]) != (layout.num_clips, layout.clip_length):
    raise ValueError(f"clip outputs have leading shape {tuple(clip_outputs.shape[:2])}, expected "
                     f"{(layout.num_clips, layout.clip_length)}")
  return clip_outputs[layout.source_clip, layout.source_pos]


def batch_indices(num_items: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Splits ``range(num_items)`` into fixed-size batches, padding the last one.

  Padding repeats the last real item so padded batches hold real data (no NaNs from garbage).

  Returns:
    ``(idx (M, B) int32, valid (M, B) bool)`` with ``M = ceil(num_items / B)``; ``valid`` marks the
    real entries (each real item appears exactly once among them).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be >= 1")
  if num_items < 1:
    return np.zeros((0, batch_size), np.int32), np.zeros((0, batch_size), bool)
  num_batches = -(-num_items // batch_size)
  flat = np.arange(num_batches * batch_size)
  valid = flat < num_items
  idx = np.minimum(flat, num_items - 1).astype(np.int32)
  return idx.reshape(num_batches, batch_size), valid.reshape(num_batches, batch_size)


def pad_batch(batch: np.ndarray, size: int) -> np.ndarray:
  """Pads axis 0 of ``batch`` to ``size`` by repeating its last row (``size >= len(batch) >= 1``)."""
  n = batch.shape[0]
  if n == size:
    return batch
  if n < 1 or n > size:
    raise ValueError(f"cannot pad a batch of {n} to {size}")
  return np.concatenate([batch, np.repeat(batch[-1:], size - n, axis=0)], axis=0)
