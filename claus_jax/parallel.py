"""One 1-D ``data`` mesh for training, scoring and evaluation, on one device or a TPU/GPU pod.

Everything is ``jax.jit`` + ``NamedSharding``: batches are split along their leading axis over the
``data`` axis, parameters and optimiser state are replicated. With one device this is a no-op.

Multi-process (multi-host) runs follow JAX's multi-controller model: every process runs this same
program, loads only its own rows (:func:`process_slice`, :func:`local_rows`), and the global arrays
are assembled from the processes' local rows (:func:`shard_batch`). Host-side results that decide
what happens next (scores, metrics, the selection) are gathered to every process
(:func:`allgather_rows`, :func:`gather_to_host`) and checked to be identical everywhere
(:func:`assert_same_across_processes`), so every process takes the same decisions.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from claus_jax import pool as pool_lib

DATA_AXIS = "data"

# CLAUS_DISTRIBUTED=1 (set by launch/tpu_vm.sh) asks for JAX's own detection where no variable shows
# it, e.g. TPU pod workers, which JAX finds through the TPU metadata server.
_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES",
                "MEGASCALE_COORDINATOR_ADDRESS", "CLAUS_DISTRIBUTED")


def maybe_initialize_distributed(coordinator: str = "", num_processes: int = 0,
                                 process_id: int = -1) -> bool:
  """Calls ``jax.distributed.initialize`` when a multi-host environment is detected.

  Explicit arguments win; otherwise JAX's own cluster detection (TPU pods, SLURM, ...) is used when
  one of the usual variables is set. Returns whether the runtime is (now) distributed.
  """
  if jax.distributed.is_initialized() if hasattr(jax.distributed, "is_initialized") else False:
    return True
  if coordinator:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    return True
  if any(os.environ.get(v) for v in _CLUSTER_ENV) and os.environ.get("SLURM_NTASKS", "2") != "1":
    jax.distributed.initialize()
    return True
  return False


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named ``data`` over all devices of all processes."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), (DATA_AXIS,))


def describe(mesh: Mesh) -> dict:
  """Where a run computes: JAX's version, the backend, the device kind and counts, the processes
  and ``mesh``'s axes (JSON-able; the same on every process)."""
  return {"jax": jax.__version__, "backend": jax.default_backend(),
          "device_kind": jax.devices()[0].device_kind, "devices": jax.device_count(),
          "local_devices": jax.local_device_count(), "processes": jax.process_count(),
          "mesh": {str(name): int(size) for name, size in mesh.shape.items()}}


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def padded_size(n: int, mesh: Mesh) -> int:
  """The smallest multiple of the mesh size that holds ``n`` rows."""
  k = mesh.devices.size
  return -(-n // k) * k


def shard_batch(batch, mesh: Mesh):
  """Puts a host batch (a pytree of arrays with a leading batch axis) onto the mesh.

  In a multi-process run each process passes its own rows (process-local data) and the global array
  is assembled from them.
  """
  sharding = batch_sharding(mesh)
  if jax.process_count() > 1:
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                        batch)
  return jax.device_put(batch, sharding)


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, replicated(mesh))


def process_slice(n: int, process_index: int | None = None) -> slice:
  """The rows [start, stop) of ``n`` that a process (default: this one) loads (contiguous, balanced)."""
  per = -(-n // jax.process_count())
  index = jax.process_index() if process_index is None else process_index
  start = min(n, index * per)
  return slice(start, min(n, start + per))


# ------------------------------------------------------------------------------- multi-process


def initialize_from_config(config) -> bool:
  """:func:`maybe_initialize_distributed` with ``config.distributed`` (when the config has one)."""
  d = config.get("distributed") if hasattr(config, "get") else None
  if d is None:
    return maybe_initialize_distributed()
  return maybe_initialize_distributed(d.coordinator_address, d.num_processes, d.process_id)


def is_primary() -> bool:
  """Whether this process writes the run's shared files (reports, JSON); process 0 does."""
  return jax.process_index() == 0


def local_rows(global_rows: int, mesh: Mesh | None = None) -> slice:
  """The rows of a global batch of ``global_rows`` that this process feeds to :func:`shard_batch`.

  A process owns the rows of its addressable devices on the ``data`` axis; with the usual device
  order (processes in turn) this is one contiguous block of ``global_rows / process_count``.
  """
  mesh = make_mesh() if mesh is None else mesh
  n_dev = mesh.devices.size
  if global_rows % n_dev:
    raise ValueError(f"a global batch of {global_rows} rows does not split over the {n_dev} "
                     "devices of the mesh; use a multiple of the device count (config.train."
                     "batch_size, config.loss.ssl.unlabelled_batch_size or "
                     "config.uncertainty.clip_chunk).")
  per = global_rows // n_dev
  mine = [i for i, d in enumerate(mesh.devices.reshape(-1)) if d.process_index == jax.process_index()]
  if not mine:
    return slice(0, 0)
  if mine != list(range(mine[0], mine[0] + len(mine))):
    raise ValueError(f"process {jax.process_index()} owns mesh positions {mine}, not one block; "
                     "build the mesh with make_mesh() (devices ordered by process).")
  return slice(mine[0] * per, (mine[-1] + 1) * per)


def take_local_rows(batch, mesh: Mesh | None = None):
  """This process's rows of a global host batch (a pytree with a leading batch axis; leaves may have
  different row counts, as a mean-teacher batch's labelled and unlabelled clips)."""
  if jax.process_count() == 1:
    return batch
  return jax.tree.map(lambda x: np.asarray(x)[local_rows(np.shape(x)[0], mesh)], batch)


class ProcessLocalSampler:
  """Wraps a sampler (``batch_at(step)``, ``iterate(start)``) to yield only this process's rows.

  The wrapped sampler draws the global batch of a step deterministically from ``(seed, round,
  step)``, so every process draws the same global batch and keeps its own block: the global array
  that :func:`shard_batch` assembles is exactly the single-process batch. (Each process still
  decodes the whole batch; a sampler that draws only ``local_rows`` avoids that.) Every other
  attribute is the wrapped sampler's.
  """

  def __init__(self, sampler, mesh: Mesh | None = None):
    self._sampler = sampler
    self._mesh = mesh

  def __getattr__(self, name):
    return getattr(self._sampler, name)

  def batch_at(self, step: int) -> dict:
    return take_local_rows(self._sampler.batch_at(step), self._mesh)

  def iterate(self, start_step: int = 0, *args, **kwargs) -> Iterator[dict]:
    for batch in self._sampler.iterate(start_step, *args, **kwargs):
      yield take_local_rows(batch, self._mesh)


def host_local_copy(tree):
  """A pytree of numpy arrays holding the full value of every (possibly global) array.

  Fully replicated global arrays are read from a local copy (no communication); arrays sharded over
  other processes' devices are all-gathered (a collective: every process must call this).
  """
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
  return jax.tree.map(one, tree)


def gather_to_host(tree):
  """The full value of every global array of ``tree`` on every process, as numpy (collective).

  Alias of :func:`host_local_copy` under the name the drivers use for metrics and outputs.
  """
  return host_local_copy(tree)


def local_part(array: jax.Array) -> np.ndarray:
  """This process's rows of a global array sharded over ``data`` (no communication).

  The inverse of :func:`shard_batch`: ``local_part(shard_batch(x, mesh)) == x`` on every process.
  """
  if array.is_fully_addressable:
    return np.asarray(array)
  shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
  seen, parts = set(), []
  for s in shards:  # A replicated axis could show a row block twice; keep each block once.
    start = s.index[0].start or 0
    if start not in seen:
      seen.add(start)
      parts.append(np.asarray(s.data))
  return np.concatenate(parts)


def allgather_rows(tree):
  """Concatenates every process's host rows, in process order; every process gets the result.

  Args:
    tree: a pytree of numpy arrays with a leading row axis; the row count may differ between
      processes, the trailing shapes and dtypes may not.

  Returns:
    The same pytree with the rows of process 0, then process 1, ... (collective: every process
    must call it with the same tree structure). One process: ``tree`` unchanged.
  """
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  leaves, treedef = jax.tree.flatten(jax.tree.map(np.asarray, tree))
  n = leaves[0].shape[0] if leaves else 0
  counts = np.asarray(multihost_utils.process_allgather(np.asarray([n], np.int64))).reshape(-1)
  most = int(counts.max())
  padded = [np.concatenate([x, np.zeros((most - x.shape[0],) + x.shape[1:], x.dtype)])
            for x in leaves]
  gathered = multihost_utils.process_allgather(padded, tiled=False)  # each (P, most, ...)
  out = [np.concatenate([np.asarray(g)[p, :int(c)] for p, c in enumerate(counts)]) for g in gathered]
  return jax.tree.unflatten(treedef, out)


def digest(obj) -> str:
  """The full sha256 of ``obj``'s canonical JSON (pool.fingerprint)."""
  return pool_lib.fingerprint(obj, length=64)


def assert_same_across_processes(obj, what: str = "value") -> str:
  """Asserts that every process computed the same ``obj`` (by the hash of its JSON); returns it.

  Call it on every decision that must agree (the selection, the pool): a process that disagrees
  would silently train on other labels. Collective: every process must call it.
  """
  h = digest(obj)
  if jax.process_count() == 1:
    return h
  mine = np.frombuffer(bytes.fromhex(h), np.uint8)
  everyone = np.asarray(multihost_utils.process_allgather(mine, tiled=False))  # (P, 32)
  bad = [p for p in range(everyone.shape[0]) if not np.array_equal(everyone[p], everyone[0])]
  if bad:
    hashes = {p: everyone[p].tobytes().hex()[:12] for p in range(everyone.shape[0])}
    raise AssertionError(f"{what} differs between processes: hashes {hashes} (processes {bad} "
                         "disagree with process 0); every process must see the same data, config "
                         "and scores.")
  return h


def exists_on_primary(path: str) -> bool:
  """``os.path.exists(path)`` as process 0 sees it, on every process (collective).

  Resumable stages skip work whose result file exists. Each process testing the file itself could
  disagree (process 0 may already have written it), and a process that skipped a stage would miss
  the stage's collectives; so process 0 decides for all.
  """
  here = os.path.exists(path)
  if jax.process_count() == 1:
    return here
  return bool(multihost_utils.broadcast_one_to_all(np.int32(here)))


def sync(name: str) -> None:
  """A barrier over all processes (no-op with one), e.g. before reading files others wrote."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
