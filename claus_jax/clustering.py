"""Online deep clustering of clip latents (paper Sec. 3.1; Yang et al. 2017, "k-means-friendly spaces").

* :func:`init_centres`: k-means (scikit-learn, ``n_init`` restarts) on the clip latents of the
  labelled videos; each video takes the majority cluster of its clips.
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

Degenerate cases never crash or produce NaN:
  * fewer distinct latents than K: k-means runs with K' = number of distinct latents; the remaining
    K - K' centres are copies of centre 0, which ``argmin`` never picks over it (ties go to the lowest
    index), so they stay empty and are never updated. The centre array keeps shape ``(K, D)`` so jitted
    shapes and per-cluster budgets stay valid; a message is logged.
  * an empty cluster (no video has it as majority, or no member in a batch): its centre and count are
    left unchanged (logged at initialisation).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)


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
    log.warning("deep clustering: only %d distinct latents (from %d videos) for K=%d centres; fitting "
                "%d centres and keeping %d empty ones.", distinct, len(np.unique(video_index)), k,
                active, k - active)
  km = KMeans(n_clusters=active, n_init=n_init, random_state=seed).fit(latents)
  centres = np.empty((k, latents.shape[1]), np.float32)
  centres[:active] = km.cluster_centers_
  centres[active:] = km.cluster_centers_[0]
  clip_cluster = km.labels_.astype(np.int32)
  videos, video_cluster = majority(clip_cluster, video_index, k)
  empty = sorted(set(range(k)) - set(video_cluster.tolist()))
  if empty:
    log.info("deep clustering: clusters %s have no video as majority member after initialisation; "
             "their centres stay where k-means put them until a member arrives.", empty)
  counts = np.full((k,), float(count_init), np.float32)
  return ClusterInit(centres, counts, videos, video_cluster, clip_cluster, active)


LATENT_MODES = ("mc_mean", "eval")  # config.cluster.latents.


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
