"""Online deep clustering of clip latents (paper Sec. 3.1; Yang et al. 2017, "k-means-friendly spaces").

* :func:`init_centres`: k-means (scikit-learn, ``n_init`` restarts) on the clip latents of the
  labelled videos; each video takes the majority cluster of its clips. :func:`initialise` does it
  for a train state, from the eval-mode latents of every labelled clip of the round.
* :func:`assign`: nearest centre, pure JAX.
* :func:`update_centres`: pure JAX. Each member ``x`` of centre ``k`` does ``count_k += 1`` then
  ``c_k -= (c_k - x) / count_k``; applied to a batch in any order this equals the running mean
  ``(count_k c_k + sum x) / (count_k + n_k)``, which is what is computed (order-free, vectorised).

Selection latents (``config.cluster.latents``): 'mc_mean' (default) assigns each pool video by the
mean of its latents over the R MC-dropout passes and all its clips, a by-product of uncertainty
scoring. 'eval' is the authors' cluster_extract: eval mode (no dropout), a few clips per video
(``cluster.latent_clips``; they centre 4 clips on ground-truth frames, which an unlabelled video does
not have: here the clips are evenly spaced), each clip assigned to its nearest centre and the video
to the majority (:func:`majority_clusters`). A deliberate default: the MC mean needs no extra pass.
:func:`video_clusters` gives every pool video its cluster under either mode.

Degenerate cases never crash or produce NaN:
  * fewer distinct latents than K: k-means runs with K' = number of distinct latents; the remaining
    K - K' centres are copies of centre 0, which ``argmin`` never picks over it (ties go to the lowest
    index), so they stay empty and are never updated. The centre array keeps shape ``(K, D)`` so jitted
    shapes and per-cluster budgets stay valid; a message is logged.
  * an empty cluster (no video has it as majority, or no member in a batch): its centre and count are
    left unchanged (logged at initialisation).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from claus_jax import models
from claus_jax import parallel
from claus_jax import tiling
from claus_jax.data import clips as clips_lib


class ClusterInit(NamedTuple):
  """Result of :func:`init_centres`.

  Attributes:
    centres: ``(K, D) float32``.
    counts: ``(K,) float32`` all ``count_init``.
    videos: ``(V,) int`` the distinct video indices, sorted.
    video_cluster: ``(V,) int32`` majority cluster of each of ``videos``.
    clip_cluster: ``(N,) int32`` k-means label of each input latent.
    num_active: K' centres fitted by k-means (K' < K in the degenerate case).
  """

  centres: np.ndarray
  counts: np.ndarray
  videos: np.ndarray
  video_cluster: np.ndarray
  clip_cluster: np.ndarray
  num_active: int


def majority(clip_cluster: np.ndarray, video_index: np.ndarray, k: int):
  """Per-video majority cluster (ties to the lowest cluster id).

  Args:
    clip_cluster: ``(N,) int`` cluster per clip.
    video_index: ``(N,) int`` video of each clip.

  Returns:
    ``(videos (V,), video_cluster (V,) int32)`` with ``videos`` sorted.
  """
  videos, inverse = np.unique(np.asarray(video_index), return_inverse=True)
  votes = np.zeros((len(videos), k), np.int64)
  np.add.at(votes, (inverse, np.asarray(clip_cluster)), 1)
  return videos, np.argmax(votes, axis=1).astype(np.int32)


def init_centres(latents: np.ndarray, video_index: np.ndarray, k: int, n_init: int = 20,
                 seed: int = 0, count_init: float = 100.0) -> ClusterInit:
  """Initial centres by k-means on the labelled videos' clip latents.

  Args:
    latents: ``(N, D)`` clip latents (one or more clips per labelled video).
    video_index: ``(N,) int`` video of each latent.
    k: requested number of centres K (config.cluster.k).
    n_init: k-means restarts (config.cluster.n_init).
    seed: k-means random state.
    count_init: initial per-centre count (config.cluster.count_init).

  Returns:
    :class:`ClusterInit`.
  """
  from sklearn.cluster import KMeans  # Imported here: only needed once per round.

  latents = np.asarray(latents, np.float64)
  if latents.ndim != 2 or latents.shape[0] == 0:
    raise ValueError(f"init_centres needs (N, D) latents with N >= 1, got shape {latents.shape}; "
                     "are there labelled videos with labelled frames?")
  if not np.all(np.isfinite(latents)):
    raise ValueError("init_centres: the latents contain NaN or inf; the model diverged before "
                     "clustering.")
  distinct = len(np.unique(latents, axis=0))
  active = min(k, distinct)
  if active < k:
    logging.warning("deep clustering: only %d distinct latents (from %d videos) for K=%d centres; "
                    "fitting %d centres and keeping %d empty ones.", distinct,
                    len(np.unique(video_index)), k, active, k - active)
  km = KMeans(n_clusters=active, n_init=n_init, random_state=seed).fit(latents)
  centres = np.empty((k, latents.shape[1]), np.float32)
  centres[:active] = km.cluster_centers_
  centres[active:] = km.cluster_centers_[0]
  clip_cluster = km.labels_.astype(np.int32)
  videos, video_cluster = majority(clip_cluster, video_index, k)
  empty = sorted(set(range(k)) - set(video_cluster.tolist()))
  if empty:
    logging.info("deep clustering: clusters %s have no video as majority member after "
                 "initialisation; their centres stay where k-means put them until a member "
                 "arrives.", empty)
  counts = np.full((k,), float(count_init), np.float32)
  return ClusterInit(centres, counts, videos, video_cluster, clip_cluster, active)


LATENT_MODES = ("mc_mean", "eval")  # config.cluster.latents.


@dataclasses.dataclass(frozen=True)
class ClusterParams:
  """What clustering reads of the config, once: the ``cluster`` section, the root seed, the eval
  batch size for latents, and the model's clip shape and input range."""

  k: int
  n_init: int
  count_init: float
  latents: str
  latent_clips: int
  seed: int
  batch_size: int
  clip_length: int
  clip_skip: int
  input_range: tuple[float, float]

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> ClusterParams:
    """The settings of ``config.cluster`` and what clustering reads of ``seed``, ``eval``,
    ``model`` and ``train.clip_skip``."""
    c = config.cluster
    return cls(k=int(c.k), n_init=int(c.n_init), count_init=float(c.count_init),
               latents=str(c.latents), latent_clips=int(c.latent_clips), seed=int(config.seed),
               batch_size=max(1, int(config.eval.batch_size)),
               clip_length=int(config.model.clip_length), clip_skip=int(config.train.clip_skip),
               input_range=models.input_range(config.model))


def latent_clip_centres(num_frames: int, count: int) -> np.ndarray:
  """``(min(count, T),) int64`` evenly spaced clip centres: the middle of each of ``count`` equal
  segments of the video (cluster.latents='eval')."""
  count = max(1, min(int(count), int(num_frames)))
  return np.floor((np.arange(count) + 0.5) * num_frames / count).astype(np.int64)


def majority_clusters(latents: np.ndarray, video_index: np.ndarray, centres) -> dict[int, int]:
  """Each clip to its nearest centre, each video to its clips' majority (ties: lowest id).

  Args:
    latents: ``(N, D)`` clip latents; video_index: ``(N,)`` their videos; centres: ``(K, D)``.

  Returns:
    {video index: cluster}.
  """
  clip_cluster = np.asarray(assign(jnp.asarray(latents), jnp.asarray(centres)))
  videos, cluster = majority(clip_cluster, video_index, int(np.asarray(centres).shape[0]))
  return {int(v): int(c) for v, c in zip(videos, cluster)}


# ------------------------------------------------------------------ latents of a train state


def latent_fn(model, input_range: tuple[float, float],
              state) -> Callable[[np.ndarray], np.ndarray]:
  """Eval-mode (no dropout) latents with ``state``'s weights: ``(B, L, H, W, 3) uint8 -> (B, D)``.

  Replicated global arrays (multi-process) are read from this process's copy: every process then
  computes the same latents, with no communication.
  """
  variables = parallel.host_local_copy({"params": state.params, "batch_stats": state.batch_stats})
  forward = jax.jit(lambda v, x: model.apply(v, models.preprocess(x, input_range),
                                             train=False)["latent"])
  return lambda video: np.asarray(forward(variables, video))


def _batches(items: Iterable, size: int) -> Iterator[list]:
  items = iter(items)
  while batch := list(itertools.islice(items, size)):
    yield batch


def clip_latents(latents_of: Callable[[np.ndarray], np.ndarray],
                 clips: Iterable[tuple[int, np.ndarray]], batch_size: int):
  """Latents of ``clips``, ``batch_size`` clips per call (the last batch padded: one shape).

  Args:
    latents_of: ``(batch_size, L, H, W, 3) -> (batch_size, D)``, e.g. :func:`latent_fn`.
    clips: ``(video index, clip (L, H, W, 3) uint8)`` pairs, read lazily.
    batch_size: clips per call.

  Returns:
    ``(latents (N, D), video_index (N,))`` in the order of ``clips``.
  """
  latents, owners = [], []
  for batch in _batches(clips, batch_size):
    video = np.stack([clip for _, clip in batch])
    latents.append(latents_of(tiling.pad_batch(video, batch_size))[:len(batch)])
    owners.extend(owner for owner, _ in batch)
  return np.concatenate(latents), np.asarray(owners)


def initialise(state, model, sampler, params: ClusterParams):
  """``state`` with its clusters initialised: k-means on the labelled clips' latents.

  Every labelled frame of ``sampler`` (a ``ClipSampler``) gives one clip, its latent taken in eval
  mode (deterministic: no dropout); each labelled video goes to its clips' majority cluster.

  Returns:
    ``state`` with ``centres``, ``counts``, ``assignments`` (-1 for unlabelled videos) and
    ``cluster_active`` replaced.
  """
  clips = ((sampler.items[pos][0], sampler.clip(pos, int(c))["video"])
           for pos, (_, frames) in enumerate(sampler.items) for c in frames)
  latents, owners = clip_latents(latent_fn(model, params.input_range, state), clips,
                                 params.batch_size)
  init = init_centres(latents, owners, params.k, params.n_init, seed=params.seed,
                      count_init=params.count_init)
  assignments = np.full(state.assignments.shape, -1, np.int32)
  assignments[init.videos] = init.video_cluster
  return state.replace(centres=jnp.asarray(init.centres), counts=jnp.asarray(init.counts),
                       assignments=jnp.asarray(assignments), cluster_active=jnp.asarray(True))


def _evenly_spaced_clips(source: Sequence,
                         params: ClusterParams) -> Iterator[tuple[int, np.ndarray]]:
  """``cluster.latent_clips`` clips of every video of ``source``, evenly spaced."""
  for i in range(len(source)):
    record = source[i]
    for centre in latent_clip_centres(record.num_frames, params.latent_clips):
      frames = clips_lib.clip_frames(int(centre), record.num_frames, params.clip_length,
                                     params.clip_skip)
      yield i, np.asarray(record.frames[frames])


def eval_mode_clusters(state, model, source: Sequence, params: ClusterParams) -> np.ndarray:
  """cluster.latents='eval': each video's majority cluster over its evenly spaced clips.

  Args:
    source: the pool's videos (records with ``frames`` and ``num_frames``), random access.

  Returns:
    ``(len(source),) int32``.
  """
  latents, owners = clip_latents(latent_fn(model, params.input_range, state),
                                 _evenly_spaced_clips(source, params), params.batch_size)
  vote = majority_clusters(latents, owners, np.asarray(state.centres))
  return np.array([vote[i] for i in range(len(source))], np.int32)


def video_clusters(state, model, source: Sequence, mc_latents: np.ndarray,
                   params: ClusterParams) -> np.ndarray:
  """The cluster of every pool video for selection (``config.cluster.latents``).

  Args:
    state: the round's train state (``centres``, ``cluster_active``).
    source: the pool's videos, read only under cluster.latents='eval'.
    mc_latents: ``(N, D)`` each video's MC-dropout mean latent (cluster.latents='mc_mean').

  Returns:
    ``(N,) int32``; all -1 while clustering is not active.
  """
  if not bool(state.cluster_active):
    return np.full(len(mc_latents), -1, np.int32)
  if params.latents == "eval":
    return eval_mode_clusters(state, model, source, params)
  return np.asarray(assign(jnp.asarray(mc_latents), state.centres))


def assign(latents: jax.Array, centres: jax.Array) -> jax.Array:
  """Nearest centre of each latent.

  Args:
    latents: ``(N, D)``; centres: ``(K, D)``.

  Returns:
    ``(N,) int32`` (ties to the lowest index).
  """
  latents = latents.astype(jnp.float32)
  centres = centres.astype(jnp.float32)
  # ||x||^2 is the same for every centre, so it is left out of the argmin.
  scores = jnp.sum(jnp.square(centres), axis=-1)[None, :] - 2.0 * latents @ centres.T
  return jnp.argmin(scores, axis=-1).astype(jnp.int32)


def update_centres(centres: jax.Array, counts: jax.Array, latents: jax.Array,
                   assignments: jax.Array, mask: jax.Array | None = None):
  """One online update of the centres from a batch (rate 1/count; see the module docstring).

  Args:
    centres: ``(K, D)``.
    counts: ``(K,)`` current counts (start at ``count_init``).
    latents: ``(B, D)`` batch latents (treated as constants).
    assignments: ``(B,)`` int cluster of each latent; values outside ``[0, K)`` are ignored.
    mask: optional ``(B,) bool``: members that count (e.g. not padding).

  Returns:
    ``(centres (K, D) float32, counts (K,) float32)``; centres without members are unchanged.
  """
  k = centres.shape[0]
  latents = jax.lax.stop_gradient(latents.astype(jnp.float32))
  valid = (assignments >= 0) & (assignments < k)
  if mask is not None:
    valid = valid & mask
  members = jax.nn.one_hot(assignments, k, dtype=jnp.float32) * valid[:, None].astype(jnp.float32)
  n = jnp.sum(members, axis=0)  # (K,)
  sums = members.T @ latents  # (K, D)
  counts = counts.astype(jnp.float32)
  new_counts = counts + n
  new_centres = (counts[:, None] * centres.astype(jnp.float32) + sums) / new_counts[:, None]
  new_centres = jnp.where((n > 0)[:, None], new_centres, centres.astype(jnp.float32))
  return new_centres, new_counts
