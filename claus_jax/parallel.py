"""One 1-D ``data`` mesh for training, scoring and evaluation, on one device or a TPU/GPU pod.

Everything is ``jax.jit`` + ``NamedSharding``: batches are split along their leading axis over the
``data`` axis, parameters and optimiser state are replicated. With one device this is a no-op.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"

_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES",
                "MEGASCALE_COORDINATOR_ADDRESS")


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


def process_slice(n: int) -> slice:
  """The rows [start, stop) of ``n`` that this process loads (contiguous, balanced)."""
  per = -(-n // jax.process_count())
  start = min(n, jax.process_index() * per)
  return slice(start, min(n, start + per))
