"""Tests of claus_jax.tiling: clip layouts, the frame mapping and fixed-size batching."""

import numpy as np
import pytest

from claus_jax import tiling


def test_skip2_layout_of_one_full_block_is_two_interleaved_clips():
  layout = tiling.clip_layout(16, 8, 2)
  np.testing.assert_array_equal(layout.frame_indices,
                                [list(range(0, 16, 2)), list(range(1, 16, 2))])
  assert layout.valid.all()


def test_skip2_tail_is_clamped_to_the_last_frame():
  layout = tiling.clip_layout(20, 8, 2)
  assert layout.num_clips == 4
  np.testing.assert_array_equal(layout.frame_indices[2], [16, 18, 19, 19, 19, 19, 19, 19])
  np.testing.assert_array_equal(layout.frame_indices[3], [17, 19, 19, 19, 19, 19, 19, 19])
  np.testing.assert_array_equal(layout.valid[2], [1, 1, 0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(layout.valid[3], [1, 1, 0, 0, 0, 0, 0, 0])
  # Frame 19 is held by clip 2 (clamped) before its real slot in clip 3; the real one wins.
  assert (layout.source_clip[19], layout.source_pos[19]) == (3, 1)


def test_dense_layout_is_consecutive_clips():
  layout = tiling.named_layout("dense", 19)
  np.testing.assert_array_equal(layout.frame_indices[:2], [list(range(8)), list(range(8, 16))])
  np.testing.assert_array_equal(layout.frame_indices[2], [16, 17, 18, 18, 18, 18, 18, 18])


@pytest.mark.parametrize("skip", [1, 2, 3])
def test_every_frame_is_covered_exactly_once_per_interleave(skip):
  for t in list(range(1, 50)) + [63, 64, 65, 100, 129]:
    layout = tiling.clip_layout(t, 8, skip)
    block = 8 * skip
    assert layout.num_clips == skip * -(-t // block)
    assert layout.frame_indices.shape == (layout.num_clips, 8)
    assert layout.frame_indices.dtype == np.int32
    # Each real (unclamped) slot holds a distinct frame and together they hold every frame once.
    real = layout.frame_indices[layout.valid]
    np.testing.assert_array_equal(np.sort(real), np.arange(t))
    # The frame mapping points at the slot that really holds the frame, and it is the owner.
    np.testing.assert_array_equal(layout.frame_indices[layout.source_clip, layout.source_pos],
                                  np.arange(t))
    assert layout.valid[layout.source_clip, layout.source_pos].all()
    assert layout.owner.sum() == t and (layout.owner <= layout.valid).all()
    # A clip is an arithmetic progression at the skip until it is clamped.
    steps = np.diff(layout.frame_indices.astype(int), axis=1)
    assert np.all((steps == skip) | ((steps <= skip) & ~layout.valid[:, 1:]))
    assert layout.frame_indices.max() == t - 1 and layout.frame_indices.min() == 0


def test_not_interleaved_repeats_the_clip_output_for_skipped_frames():
  for t in (1, 5, 16, 17, 40):
    layout = tiling.clip_layout(t, 8, 2, interleave=False)
    assert layout.num_clips == -(-t // 16)
    held = layout.frame_indices[layout.source_clip, layout.source_pos]
    np.testing.assert_array_equal(held, np.arange(t) - np.arange(t) % 2)


def test_clips_to_frames_inverts_gather_clips():
  rng = np.random.default_rng(0)
  for t in (3, 15, 16, 33):
    video = rng.integers(0, 255, (t, 2, 3), dtype=np.uint8)
    layout = tiling.clip_layout(t, 8, 2)
    clips = tiling.gather_clips(video, layout)
    assert clips.shape == (layout.num_clips, 8, 2, 3)
    np.testing.assert_array_equal(tiling.clips_to_frames(clips, layout), video)


def test_clips_to_frames_works_on_jax_arrays():
  import jax.numpy as jnp
  layout = tiling.clip_layout(11, 8, 2)
  outputs = jnp.asarray(layout.frame_indices, jnp.float32)
  np.testing.assert_array_equal(np.asarray(tiling.clips_to_frames(outputs, layout)), np.arange(11))


def test_shape_errors():
  layout = tiling.clip_layout(10, 8, 2)
  with pytest.raises(ValueError, match="layout was built for 10"):
    tiling.gather_clips(np.zeros((9, 2)), layout)
  with pytest.raises(ValueError, match="expected"):
    tiling.clips_to_frames(np.zeros((3, 8)), layout)
  with pytest.raises(ValueError):
    tiling.clip_layout(0)
  with pytest.raises(ValueError, match="unknown tiling"):
    tiling.named_layout("skip3", 10)


def test_batch_indices_pad_the_last_batch_with_a_mask():
  for n in range(1, 12):
    for b in (1, 3, 4):
      idx, valid = tiling.batch_indices(n, b)
      assert idx.shape == valid.shape == (-(-n // b), b)
      np.testing.assert_array_equal(np.sort(idx[valid]), np.arange(n))
      assert (idx[~valid] == n - 1).all()
  idx, valid = tiling.batch_indices(0, 4)
  assert idx.shape == (0, 4)


def test_pad_batch_repeats_the_last_row():
  x = np.arange(6).reshape(3, 2)
  np.testing.assert_array_equal(tiling.pad_batch(x, 5), [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]])
  assert tiling.pad_batch(x, 3) is x
  with pytest.raises(ValueError):
    tiling.pad_batch(x, 2)
