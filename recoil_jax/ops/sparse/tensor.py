"""Static-shape sparse voxel tensor (COO rows with a capacity) and dense conversions.

Layout (used by the whole `recoil_jax.ops.sparse` package):

* ``coords``   [N, 4] int32: (batch, i0, i1, i2) voxel indices; inactive rows have batch = -1 and zeros.
* ``features`` [N, C]: one row per site; inactive rows are 0.
* ``overflow`` [] int32: number of active sites dropped so far (lack of output capacity in a layer, or
  voxels outside the grid at construction), accumulated over layers. 0 in normal operation.

N (the capacity) is static so that everything jits; the number of active rows is dynamic. Dense tensors
are channels-last ``[B, D0, D1, D2, C]`` (Flax convention). Voxel indices are unitless grid indices
(for the TPC study one voxel is 500 µm).
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

INT32_MAX = int(np.iinfo(np.int32).max)


class CapacityOverflowError(RuntimeError):
  """Raised when active sites do not fit into a static capacity (nothing is silently dropped)."""


@flax.struct.dataclass
class SparseTensor:
  """A batch of sparse 3D voxel sets with static capacity.

  Attributes:
    coords: [N, 4] int32 (batch, i0, i1, i2); inactive rows: batch = -1, indices 0.
    features: [N, C] features; inactive rows are 0.
    spatial_shape: (D0, D1, D2) grid size in voxels (static).
    batch_size: B, number of events (static).
    overflow: [] int32, active sites dropped for lack of capacity (accumulated over layers).
  """
  coords: jax.Array
  features: jax.Array
  spatial_shape: tuple[int, int, int] = flax.struct.field(pytree_node=False)
  batch_size: int = flax.struct.field(pytree_node=False)
  overflow: jax.Array

  @property
  def mask(self) -> jax.Array:
    """[N] bool, True on active rows."""
    return self.coords[:, 0] >= 0

  @property
  def capacity(self) -> int:
    """Static number of rows N."""
    return self.coords.shape[0]

  @property
  def num_active(self) -> jax.Array:
    """[] int32, number of active rows."""
    return jnp.sum(self.mask, dtype=jnp.int32)

  @property
  def num_channels(self) -> int:
    return self.features.shape[-1]

  def with_features(self, features: jax.Array) -> SparseTensor:
    """Same sites, new [N, C'] features; inactive rows are set to 0."""
    if features.ndim != 2 or features.shape[0] != self.capacity:
      raise ValueError(
          f"SparseTensor.with_features: expected features of shape [{self.capacity}, C], "
          f"got {features.shape}")
    return self.replace(features=jnp.where(self.mask[:, None], features, 0).astype(features.dtype))

  def map_features(self, fn) -> SparseTensor:
    """Applies ``fn`` ([N, C] -> [N, C']) to the features, keeping inactive rows at 0 (e.g. ReLU)."""
    return self.with_features(fn(self.features))


def is_concrete(x) -> bool:
  """True when ``x`` holds a value (eager execution), False while tracing (jit, vmap, scan)."""
  return not isinstance(x, jax.core.Tracer)


def check_overflow(st: SparseTensor, where: str) -> None:
  """Raises `CapacityOverflowError` if ``st.overflow`` is concrete and > 0.

  Under jit the overflow count cannot be inspected here (the call is a no-op); return ``st.overflow`` from
  the jitted function and call this on the result (or check it in the training loop).
  """
  if is_concrete(st.overflow):
    n = int(st.overflow)
    if n > 0:
      raise CapacityOverflowError(
          f"{where}: {n} active site(s) were dropped for lack of capacity somewhere upstream "
          f"(SparseTensor.overflow = {n}); raise the out_capacity of the sparse layers "
          "(or the capacity given to from_dense/from_padded_voxels).")


def _check_spatial_shape(spatial_shape: Sequence[int], where: str) -> tuple[int, int, int]:
  shape = tuple(int(s) for s in spatial_shape)
  if len(shape) != 3 or any(s <= 0 for s in shape):
    raise ValueError(f"{where}: spatial_shape must be 3 positive ints, got {spatial_shape!r}")
  return shape


def _key_space(batch_size: int, spatial_shape: Sequence[int], where: str) -> int:
  size = int(batch_size) * int(np.prod(spatial_shape))
  if size > INT32_MAX - 1:
    raise ValueError(
        f"{where}: batch_size x spatial_shape = {batch_size} x {tuple(spatial_shape)} = {size} voxels "
        f"does not fit the int32 linear keys (max {INT32_MAX - 1}); use a smaller batch or grid")
  return size


def linearize(coords: jax.Array, spatial_shape: Sequence[int], batch_size: int) -> jax.Array:
  """[N, 4] (batch, i0, i1, i2) -> [N] int32 keys ((b*D0 + i0)*D1 + i1)*D2 + i2; inactive -> INT32_MAX.

  Coordinates are assumed inside the grid (checked where tensors are built).
  """
  d0, d1, d2 = spatial_shape
  _key_space(batch_size, spatial_shape, "linearize")
  c = coords.astype(jnp.int32)
  key = ((c[:, 0] * d0 + c[:, 1]) * d1 + c[:, 2]) * d2 + c[:, 3]
  return jnp.where(c[:, 0] >= 0, key, INT32_MAX).astype(jnp.int32)


def delinearize(keys: jax.Array, spatial_shape: Sequence[int]) -> jax.Array:
  """[N] int32 keys -> [N, 4] int32 coords; INT32_MAX (sentinel) -> (-1, 0, 0, 0)."""
  d0, d1, d2 = spatial_shape
  valid = keys != INT32_MAX
  k = jnp.where(valid, keys, 0).astype(jnp.int32)
  i2 = k % d2
  k = k // d2
  i1 = k % d1
  k = k // d1
  i0 = k % d0
  b = k // d0
  coords = jnp.stack([b, i0, i1, i2], axis=-1)
  return jnp.where(valid[:, None], coords, jnp.array([-1, 0, 0, 0], jnp.int32)).astype(jnp.int32)


def from_padded_voxels(coords: jax.Array, features: jax.Array, num_voxels: jax.Array,
                       spatial_shape: Sequence[int]) -> SparseTensor:
  """Builds a SparseTensor from per-event padded voxel lists.

  Rows v >= num_voxels[b] are inactive. Duplicate voxels within an event are merged by summing their
  features (voxel value = deposited charge). Rows are returned sorted by linear key (batch-major),
  inactive rows last; capacity N = B * V. Voxels outside the grid are an error in eager execution; under
  jit they are dropped and counted in ``overflow``.

  Args:
    coords: [B, V, 3] int voxel indices (i0, i1, i2).
    features: [B, V, C] voxel features.
    num_voxels: [B] int, number of valid voxels per event.
    spatial_shape: (D0, D1, D2) grid size.
  """
  shape = _check_spatial_shape(spatial_shape, "from_padded_voxels")
  if coords.ndim != 3 or coords.shape[-1] != 3:
    raise ValueError(f"from_padded_voxels: coords must be [B, V, 3], got {coords.shape}")
  if features.ndim != 3 or features.shape[:2] != coords.shape[:2]:
    raise ValueError(f"from_padded_voxels: features must be [B, V, C] with B, V = {coords.shape[:2]}, "
                     f"got {features.shape}")
  b, v = coords.shape[:2]
  if num_voxels.shape != (b,):
    raise ValueError(f"from_padded_voxels: num_voxels must be [{b}], got {num_voxels.shape}")
  _key_space(b, shape, "from_padded_voxels")
  if is_concrete(num_voxels):
    nv = np.asarray(num_voxels)
    if np.any(nv < 0) or np.any(nv > v):
      raise ValueError(f"from_padded_voxels: num_voxels must lie in [0, {v}], got {nv}")
    if is_concrete(coords):
      c = np.asarray(coords)
      outside = (np.arange(v)[None, :] < nv[:, None]) & ~np.all((c >= 0) & (c < np.array(shape)), -1)
      if outside.any():
        bad = np.argwhere(outside)[0]
        raise ValueError(
            f"from_padded_voxels: {int(outside.sum())} voxel(s) outside the grid {shape}; first at "
            f"event {bad[0]}, row {bad[1]}: coords {c[bad[0], bad[1]].tolist()}")
  return _from_padded_voxels(jnp.asarray(coords), jnp.asarray(features), jnp.asarray(num_voxels), shape)


@functools.partial(jax.jit, static_argnums=(3,))
def _from_padded_voxels(coords, features, num_voxels, shape):
  b, v = coords.shape[:2]
  n = b * v
  coords = coords.astype(jnp.int32)
  nv = jnp.clip(num_voxels.astype(jnp.int32), 0, v)
  row_valid = jnp.arange(v, dtype=jnp.int32)[None, :] < nv[:, None]  # [B, V]
  in_grid = jnp.all((coords >= 0) & (coords < jnp.array(shape, jnp.int32)), axis=-1)
  n_outside = jnp.sum(row_valid & ~in_grid, dtype=jnp.int32)
  active = (row_valid & in_grid).reshape(n)
  batch = jnp.broadcast_to(jnp.arange(b, dtype=jnp.int32)[:, None], (b, v)).reshape(n)
  flat = jnp.concatenate([batch[:, None], coords.reshape(n, 3)], axis=1)
  flat = jnp.where(active[:, None], flat, jnp.array([-1, 0, 0, 0], jnp.int32))
  space = int(np.prod(shape))
  if (space + 1) * v <= (1 << 32):
    # Per-event sort of one packed uint32 (voxel key * V + row): XLA's CPU sort of one operand is
    # ~5x faster than an argsort (a two-operand sort), and rows of V sort faster than B*V at once.
    local = ((coords[..., 0] * shape[1] + coords[..., 1]) * shape[2] + coords[..., 2])
    local = jnp.where((row_valid & in_grid), local, space).astype(jnp.uint32)  # invalid: last
    packed = jnp.sort(local * jnp.uint32(v) + jnp.arange(v, dtype=jnp.uint32), axis=1)
    src = lax.rem(packed, jnp.uint32(v)).astype(jnp.int32)
    lkey = lax.div(packed, jnp.uint32(v)).astype(jnp.int32)
    order = (jnp.arange(b, dtype=jnp.int32)[:, None] * v + src).reshape(n)
    svalid = (lkey < space).reshape(n)
    # Keys ascend within an event and across events; invalid rows sit at each event's end.
    skeys = jnp.where(svalid, (jnp.arange(b, dtype=jnp.int32)[:, None] * space + lkey).reshape(n),
                      INT32_MAX)
  else:
    keys = linearize(flat, shape, b)
    order = jnp.argsort(keys)
    skeys = keys[order]
    svalid = active[order]
  sfeat = jnp.where(svalid[:, None], features.reshape(n, -1)[order], 0)
  first = jnp.concatenate([jnp.ones((1,), bool), skeys[1:] != skeys[:-1]]) & (skeys != INT32_MAX)
  seg = jnp.cumsum(first, dtype=jnp.int32) - 1
  seg = jnp.where(skeys != INT32_MAX, seg, n)  # padding rows -> dropped
  merged = jax.ops.segment_sum(sfeat, seg, num_segments=n)
  ukeys = jnp.full((n,), INT32_MAX, jnp.int32).at[jnp.where(first, seg, n)].set(skeys, mode="drop")
  out_coords = delinearize(ukeys, shape)
  merged = jnp.where((ukeys != INT32_MAX)[:, None], merged, 0).astype(features.dtype)
  return SparseTensor(coords=out_coords, features=merged, spatial_shape=shape, batch_size=b,
                      overflow=n_outside)


def from_dense(x: jax.Array, capacity: int) -> SparseTensor:
  """Dense [B, D0, D1, D2, C] -> SparseTensor; a site is active if any channel is nonzero.

  Rows are in row-major (= key) order. More active sites than ``capacity`` raise
  `CapacityOverflowError` in eager execution; under jit the extra sites (largest keys) are dropped and
  counted in ``overflow``.
  """
  if x.ndim != 5:
    raise ValueError(f"from_dense: expected [B, D0, D1, D2, C], got shape {x.shape}")
  b = x.shape[0]
  shape = tuple(int(s) for s in x.shape[1:4])
  _key_space(b, shape, "from_dense")
  active = jnp.any(x != 0, axis=-1)
  count = jnp.sum(active, dtype=jnp.int32)
  if is_concrete(count) and int(count) > capacity:
    raise CapacityOverflowError(
        f"from_dense: {int(count)} active sites but capacity={capacity} "
        f"({int(count) - capacity} would be dropped)")
  if capacity < 1:
    raise ValueError(f"from_dense: capacity must be >= 1, got {capacity}")
  return _from_dense(x, int(capacity))


@functools.partial(jax.jit, static_argnums=(1,))
def _from_dense(x, capacity):
  b = x.shape[0]
  shape = tuple(int(s) for s in x.shape[1:4])
  active = jnp.any(x != 0, axis=-1)
  count = jnp.sum(active, dtype=jnp.int32)
  idx = jnp.nonzero(active.reshape(-1), size=capacity, fill_value=-1)[0].astype(jnp.int32)
  valid = idx >= 0
  keys = jnp.where(valid, idx, INT32_MAX)
  coords = delinearize(keys, shape)
  feats = x.reshape(-1, x.shape[-1])[jnp.where(valid, idx, 0)]
  feats = jnp.where(valid[:, None], feats, 0)
  overflow = jnp.maximum(count - capacity, 0).astype(jnp.int32)
  return SparseTensor(coords=coords, features=feats, spatial_shape=shape, batch_size=b,
                      overflow=overflow)


@jax.jit
def to_dense(st: SparseTensor) -> jax.Array:
  """SparseTensor -> dense [B, D0, D1, D2, C] (channels-last); inactive rows contribute nothing."""
  b = st.batch_size
  d0, d1, d2 = st.spatial_shape
  c = st.coords
  batch = jnp.where(st.mask, c[:, 0], b)  # out of bounds -> dropped
  out = jnp.zeros((b, d0, d1, d2, st.num_channels), st.features.dtype)
  return out.at[batch, c[:, 1], c[:, 2], c[:, 3]].add(st.features, mode="drop")
