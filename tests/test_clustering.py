"""Online deep clustering: updates against a sequential NumPy loop, k-means init, degenerate cases."""

import logging

import flax
import jax
import jax.numpy as jnp
import numpy as np

from claus_jax import clustering
from claus_jax import configlib
from claus_jax.data import clips as clips_lib


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
  with caplog.at_level(logging.WARNING, logger="absl"):  # claus_jax logs through absl.
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


# ------------------------------------------- from a train state (moved here from experiment.py)


def test_clip_latents_batches_pad_the_last_and_keep_order():
  shapes = []

  def latents_of(video):
    shapes.append(video.shape)
    return video.reshape(len(video), -1)[:, :1].astype(np.float32)  # The clip's first pixel.

  clips = [(owner, np.full((2, 1, 1, 3), value, np.uint8))
           for owner, value in [(3, 10), (3, 11), (0, 12), (5, 13), (5, 14)]]
  latents, owners = clustering.clip_latents(latents_of, iter(clips), batch_size=2)
  assert shapes == [(2, 2, 1, 1, 3)] * 3  # 5 clips: 2 + 2 + 1 padded to 2, one shape for jit.
  np.testing.assert_array_equal(latents[:, 0], [10, 11, 12, 13, 14])
  np.testing.assert_array_equal(owners, [3, 3, 0, 5, 5])


class _MeanLatentModel:
  """A stand-in detector: a clip's latent is its preprocessed pixels' channel means, scaled."""

  def apply(self, variables, x, train):
    assert not train  # Cluster latents are taken in eval mode.
    return {"latent": x.mean(axis=(1, 2, 3)) * variables["params"]["scale"]}


@flax.struct.dataclass
class _ClusterState:
  params: dict
  batch_stats: dict
  centres: jax.Array
  counts: jax.Array
  assignments: jax.Array
  cluster_active: jax.Array


def _state(centres=np.zeros((2, 3), np.float32), active=False, videos=6):
  return _ClusterState(params={"scale": np.float32(2.0)}, batch_stats={},
                       centres=jnp.asarray(centres), counts=jnp.full((len(centres),), 100.0),
                       assignments=jnp.full((videos,), -1, jnp.int32),
                       cluster_active=jnp.asarray(active))


def _clip(video, frame):
  """(4, 2, 2, 3) uint8 clip with a colour that depends on (video, frame)."""
  colour = np.array([40 * video + 3 * frame, 200 - 30 * video, (17 * frame) % 256], np.uint8)
  return np.broadcast_to(colour, (4, 2, 2, 3)).copy()


def _latent(config, clip):
  from claus_jax import models
  x = np.asarray(models.preprocess(clip[None], models.input_range(config.model)))
  return x.mean(axis=(1, 2, 3))[0] * 2.0


class _Sampler:
  """ClipSampler's two members that initialisation reads: items and clip(pos, frame)."""

  def __init__(self, items):
    self.items = [(video, np.asarray(frames)) for video, frames in items]

  def clip(self, pos, frame):
    assert isinstance(frame, int)
    return {"video": _clip(self.items[pos][0], frame)}


def _cluster_config():
  c = configlib.base_config()
  c.cluster.k, c.cluster.n_init, c.cluster.count_init = 2, 3, 50.0
  c.eval.batch_size = 3
  return c


def test_initialise_runs_k_means_on_the_labelled_clips_latents():
  config = _cluster_config()
  sampler = _Sampler([(1, [0, 5]), (4, [2, 3, 7]), (5, [1])])
  state = clustering.initialise(_state(), _MeanLatentModel(), sampler,
                                clustering.ClusterParams.from_config(config))
  owners = [1, 1, 4, 4, 4, 5]
  latents = np.stack([_latent(config, _clip(v, f))
                      for v, frames in [(1, [0, 5]), (4, [2, 3, 7]), (5, [1])] for f in frames])
  want = clustering.init_centres(latents, np.asarray(owners), 2, 3, seed=config.seed,
                                 count_init=50.0)
  np.testing.assert_allclose(np.asarray(state.centres), want.centres, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(state.counts), [50.0, 50.0])
  expected = np.full(6, -1)
  expected[want.videos] = want.video_cluster
  np.testing.assert_array_equal(np.asarray(state.assignments), expected)  # -1: not labelled.
  assert bool(state.cluster_active)


class _Record:
  def __init__(self, video, num_frames):
    self.num_frames = num_frames
    self.frames = np.stack([_clip(video, f)[0] for f in range(num_frames)])


def test_video_clusters_by_mode():
  config = _cluster_config()
  config.cluster.latent_clips = 2
  config.model.clip_length, config.train.clip_skip = 4, 2
  source = [_Record(v, n) for v, n in enumerate([12, 9, 20])]
  mc_latents = np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 5.0], [0.2, 0.1, 0.0]], np.float32)
  centres = np.array([[0.0, 0.0, 0.0], [4.0, 4.0, 4.0]], np.float32)
  model = _MeanLatentModel()
  params = clustering.ClusterParams.from_config(config)
  # Clustering not active yet (before cluster_start): every video unknown.
  inactive = clustering.video_clusters(_state(centres), model, source, mc_latents, params)
  np.testing.assert_array_equal(inactive, [-1, -1, -1])
  active = _state(centres, active=True)
  np.testing.assert_array_equal(clustering.video_clusters(active, model, source, mc_latents,
                                                          params), [0, 1, 0])  # 'mc_mean'
  # 'eval': each video's evenly spaced clips in eval mode, its majority cluster.
  config.cluster.latents = "eval"
  params = clustering.ClusterParams.from_config(config)
  centres = np.array([[-2.0, 1.2, -1.6], [-0.5, 0.1, -1.6]], np.float32)
  active = _state(centres, active=True)
  latents, owners = [], []
  for i, record in enumerate(source):
    for centre in clustering.latent_clip_centres(record.num_frames, 2):
      frames = clips_lib.clip_frames(int(centre), record.num_frames, 4, 2)
      latents.append(_latent(config, record.frames[frames]))
      owners.append(i)
  vote = clustering.majority_clusters(np.stack(latents), np.asarray(owners), centres)
  got = clustering.video_clusters(active, model, source, mc_latents, params)
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, [vote[i] for i in range(3)])
  assert sorted(set(got.tolist())) == [0, 1]
  np.testing.assert_array_equal(got, clustering.eval_mode_clusters(active, model, source, params))
