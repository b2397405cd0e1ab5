"""Device mesh, multi-host initialisation and global arrays for data parallelism.

One mesh axis, ``'data'``, over all devices of all processes (Auto axis type). Parameters
are replicated; batches are sharded on ``'data'``. The same code runs on one CPU, on 8
fake CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``) and on several
processes (``jax.distributed``; CPU processes talk through gloo).

``jax.pmap`` layout (the ``"pmap"`` training strategy): a pytree whose leaves have a
leading device axis, ``[devices, ...]``, one slice per device of the mesh, in mesh
order; ``pmap_replicate`` / ``pmap_unreplicate`` convert a replicated state to it and
back, ``pmap_split_batch`` reshapes this process's batch to ``[local_devices,
per_device, ...]``. ``pmap`` runs over the devices of the mesh with axis name ``'data'``
(:data:`DATA_AXIS`), so collectives span all processes, as under ``shard_map``.
"""

from __future__ import annotations

from typing import Any, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed(parallel: ml_collections.ConfigDict) -> bool:
  """Starts ``jax.distributed`` if the ``parallel`` config asks for it.

  Args:
    parallel: ``config.parallel``; a non-empty ``coordinator_address`` uses it with
      ``num_processes`` and ``process_id``; else ``distributed=True`` auto-detects
      (SLURM, TPU pods, ...); else nothing is done.

  Returns:
    True if this call initialised ``jax.distributed``.
  """
  explicit = bool(parallel.coordinator_address)
  if not explicit and not parallel.distributed:
    return False
  if jax.distributed.is_initialized():
    logging.info("jax.distributed is already initialised; not initialising again.")
    return False
  # CPU collectives across processes need gloo; the option only affects the CPU backend.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    if not 0 <= parallel.process_id < parallel.num_processes:
      raise ValueError(
          f"parallel.process_id={parallel.process_id} not in "
          f"[0, parallel.num_processes={parallel.num_processes})")
    jax.distributed.initialize(coordinator_address=parallel.coordinator_address,
                               num_processes=parallel.num_processes,
                               process_id=parallel.process_id,
                               shutdown_timeout_seconds=int(parallel.shutdown_timeout_s))
  else:
    jax.distributed.initialize(shutdown_timeout_seconds=int(parallel.shutdown_timeout_s))
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


def make_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A 1-D ``('data',)`` mesh over ``devices`` (default: all devices of all processes)."""
  devices = list(jax.devices() if devices is None else devices)
  return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,),
                           axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Sharding that puts a full copy on every device of ``mesh``."""
  return NamedSharding(mesh, P())


def data_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Sharding that splits the leading (batch) axis over ``'data'``."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Copies a pytree of host (or single-device) arrays to every device of ``mesh``.

  Every process must pass the same values (multi-host: each builds its own shards).
  """
  sharding = replicated(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)


def local_devices(mesh: jax.sharding.Mesh) -> list[jax.Device]:
  """The devices of ``mesh`` that belong to this process."""
  return [d for d in mesh.devices.flat if d.process_index == jax.process_index()]


def shard_batch(local_batch: Any, mesh: jax.sharding.Mesh) -> Any:
  """Global arrays from this process's local batch, split over ``'data'``.

  Args:
    local_batch: pytree of numpy arrays ``[local_batch, ...]``; the local batch must be
      divisible by this process's number of devices in ``mesh``.
    mesh: the ``('data',)`` mesh.

  Returns:
    Pytree of ``jax.Array`` ``[local_batch * process_count, ...]`` sharded on ``'data'``.
  """
  sharding = data_sharded(mesh)
  num_local = len(local_devices(mesh))

  def put(x):
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] % num_local:
      raise ValueError(
          f"local batch of shape {x.shape} cannot be split over {num_local} local devices")
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(put, local_batch)


def fetch(tree: Any) -> Any:
  """Pytree of (possibly multi-host) replicated or sharded arrays -> numpy, same on all hosts.

  Replicated arrays are read from a local copy; data-sharded arrays are gathered from
  all processes (``process_allgather``), giving the full global array.
  """
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if x.sharding.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree.map(get, tree)


# ----------------------------------------------------------------------------- pmap layout


def pmap_devices(mesh: jax.sharding.Mesh) -> tuple[jax.Device, ...]:
  """The devices ``jax.pmap(..., devices=...)`` runs over: those of ``mesh``, in mesh order."""
  return tuple(mesh.devices.flat)


def pmap_split_batch(local_batch: Any, mesh: jax.sharding.Mesh) -> Any:
  """This process's batch ``[local_batch, ...]`` -> ``[local_devices, per_device, ...]``.

  Args:
    local_batch: pytree of numpy arrays with a common leading (batch) axis divisible by
      this process's number of devices in ``mesh``.
    mesh: the ``('data',)`` mesh.

  Returns:
    The same pytree, numpy arrays reshaped (no copy); row ``i`` of the local batch goes
    to local device ``i // per_device``, as ``shard_batch`` places it.
  """
  num_local = len(local_devices(mesh))

  def split(x):
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] % num_local:
      raise ValueError(
          f"local batch of shape {x.shape} cannot be split over {num_local} local devices")
    return x.reshape((num_local, x.shape[0] // num_local) + x.shape[1:])

  return jax.tree.map(split, local_batch)


def pmap_replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Replicated global arrays (``P()`` on ``mesh``) -> the pmap layout ``[devices, ...]``.

  Every device copies its own replica (no communication). The result is a global array
  sharded on ``'data'`` (one slice per device), which ``jax.pmap`` over
  ``pmap_devices(mesh)`` takes as is, on one process or several.
  """
  n = mesh.size

  def stack(t):
    return jax.tree.map(lambda x: jnp.broadcast_to(x[None], (n,) + x.shape), t)

  return jax.jit(stack, out_shardings=data_sharded(mesh))(tree)


def pmap_unreplicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """The pmap layout ``[devices, ...]`` -> replicated global arrays (``P()`` on ``mesh``).

  Takes the replica of the first device; the training step keeps all replicas equal
  (gradients and mutable collections are reduced over ``'data'``). On several processes
  ``jax.pmap`` returns process-local arrays; they are assembled into global ones first.
  """
  leaves = jax.tree.leaves(tree)
  if jax.process_count() > 1 and leaves and leaves[0].is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    tree = multihost_utils.host_local_array_to_global_array(tree, mesh, P(DATA_AXIS))
  return jax.jit(lambda t: jax.tree.map(lambda x: x[0], t), out_shardings=replicated(mesh))(tree)
