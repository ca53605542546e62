"""Online deep clustering: updates against a sequential NumPy loop, k-means init, degenerate cases."""

import logging

import jax
import numpy as np

from claus_jax import clustering


def _sequential_update(centres, counts, latents, assignments, mask):
  """Yang et al. 2017, one member at a time: count += 1; c -= (c - x) / count."""
  centres = centres.astype(np.float64).copy()
  counts = counts.astype(np.float64).copy()
  for x, k, m in zip(latents, assignments, mask):
    if not m or k < 0 or k >= len(centres):
      continue
    counts[k] += 1
    centres[k] -= (centres[k] - x) / counts[k]
  return centres, counts


def test_update_matches_sequential_numpy():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(4, 5)).astype(np.float32)
  counts = np.array([100.0, 3.0, 1.0, 7.0], np.float32)
  latents = rng.normal(size=(9, 5)).astype(np.float32) * 4
  assignments = np.array([0, 1, 1, 2, -1, 1, 0, 2, 1])
  mask = np.array([1, 1, 1, 1, 1, 0, 1, 1, 1], bool)
  ref_c, ref_n = _sequential_update(centres, counts, latents, assignments, mask)
  got_c, got_n = jax.jit(clustering.update_centres)(centres, counts, latents, assignments, mask)
  np.testing.assert_allclose(np.asarray(got_c), ref_c, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(got_n), ref_n)
  # Centre 3 had no member: unchanged.
  np.testing.assert_array_equal(np.asarray(got_c)[3], centres[3])


def test_update_with_no_members_and_zero_counts_is_finite():
  centres = np.ones((2, 3), np.float32)
  got_c, got_n = clustering.update_centres(centres, np.zeros(2, np.float32),
                                           np.zeros((2, 3), np.float32), np.array([-1, -1]))
  np.testing.assert_array_equal(np.asarray(got_c), centres)
  np.testing.assert_array_equal(np.asarray(got_n), [0, 0])


def test_assign_matches_numpy():
  rng = np.random.default_rng(1)
  lat = rng.normal(size=(20, 6)).astype(np.float32)
  cen = rng.normal(size=(4, 6)).astype(np.float32)
  ref = np.argmin(((lat[:, None] - cen[None]) ** 2).sum(-1), axis=1)
  np.testing.assert_array_equal(np.asarray(clustering.assign(lat, cen)), ref)


def test_init_centres_majority_per_video():
  rng = np.random.default_rng(2)
  blobs = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
  # 6 videos, 3 clips each; video v sits in blob v % 3 but its last clip strays to the next blob.
  lat, vid = [], []
  for v in range(6):
    for c in range(3):
      blob = (v % 3 + (1 if c == 2 else 0)) % 3
      lat.append(blobs[blob] + rng.normal(scale=0.1, size=2))
      vid.append(10 + v)
  init = clustering.init_centres(np.array(lat), np.array(vid), k=3, n_init=5, seed=0)
  assert init.centres.shape == (3, 2) and init.num_active == 3
  np.testing.assert_array_equal(init.videos, np.arange(10, 16))
  # Videos of the same blob share a cluster; different blobs differ.
  vc = init.video_cluster
  assert vc[0] == vc[3] and vc[1] == vc[4] and vc[2] == vc[5]
  assert len({vc[0], vc[1], vc[2]}) == 3
  # Each video's cluster is the k-means cluster of its first clip (its majority).
  np.testing.assert_array_equal(vc, init.clip_cluster[::3])
  np.testing.assert_array_equal(init.counts, np.full(3, 100.0))


def test_majority_ties_go_to_lowest_cluster():
  videos, vc = clustering.majority(np.array([2, 1, 0, 0, 3]), np.array([5, 5, 7, 7, 7]), k=4)
  np.testing.assert_array_equal(videos, [5, 7])
  np.testing.assert_array_equal(vc, [1, 0])


def test_fewer_videos_than_k_is_handled(caplog):
  lat = np.array([[1.0, 2.0], [1.0, 2.0], [3.0, 0.0]])
  with caplog.at_level(logging.WARNING, logger="claus_jax.clustering"):
    init = clustering.init_centres(lat, np.array([0, 0, 1]), k=5, n_init=3, seed=0)
  assert "distinct latents" in caplog.text
  assert init.num_active == 2 and init.centres.shape == (5, 2)
  assert np.all(np.isfinite(init.centres))
  # Spare centres never win an assignment and stay put under updates.
  probe = np.random.default_rng(3).normal(size=(50, 2)).astype(np.float32) * 5
  assert np.all(np.asarray(clustering.assign(probe, init.centres)) < 2)
  c, n = clustering.update_centres(init.centres, init.counts, probe,
                                   clustering.assign(probe, init.centres))
  assert np.all(np.isfinite(np.asarray(c)))
  np.testing.assert_array_equal(np.asarray(c)[2:], init.centres[2:])


def test_single_video_single_latent():
  init = clustering.init_centres(np.array([[0.5, -1.0]]), np.array([4]), k=3, n_init=2, seed=1)
  np.testing.assert_allclose(init.centres, [[0.5, -1.0]] * 3)
  np.testing.assert_array_equal(init.video_cluster, [0])


def test_eval_mode_majority_matches_the_authors_vote():
  """cluster.latents='eval' (item 17): nearest centre per clip, then the authors' per-video vote
  ``np.bincount(predictions).argmax()`` (cluster_extract / ucf101_cluster.py)."""
  rng = np.random.default_rng(4)
  centres = rng.normal(size=(4, 6)).astype(np.float32)
  owners = np.repeat(np.arange(7), 4)
  lat = (centres[rng.integers(0, 4, owners.size)] + 0.3 * rng.normal(size=(owners.size, 6))
         ).astype(np.float32)
  got = clustering.majority_clusters(lat, owners, centres)
  pred = np.argmin(((lat[:, None] - centres[None]) ** 2).sum(-1), axis=1)
  want = {v: int(np.bincount(pred[owners == v]).argmax()) for v in range(7)}
  assert got == want
  np.testing.assert_array_equal(clustering.latent_clip_centres(40, 4), [5, 15, 25, 35])
  np.testing.assert_array_equal(clustering.latent_clip_centres(3, 4), [0, 1, 2])
