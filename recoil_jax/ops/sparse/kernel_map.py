"""Kernel maps (rulebooks) for sparse 3D convolution and pooling, jittable with static capacities.

Semantics follow spconv (traveller59/spconv). Per axis, with kernel K, stride s, padding p, dilation d:

* regular conv / pool: output site o exists iff i = o*s - p + k*d is an active input for some kernel
  offset k in [0, K) and 0 <= o < out, out = floor((in + 2p - d(K-1) - 1)/s) + 1;
* submanifold conv: output sites = input sites, input for offset k at i + (k - (K-1)/2)*d (odd K).

Keys are linearised int32 (batch, i0, i1, i2) (see `tensor.linearize`); INT32_MAX is the sentinel.

Output sites are generated input-side: for each active input only the offsets compatible with the
stride are emitted (<= ceil(K/s) per axis, not K). Inputs that must reach exactly the same outputs
(same coarse cell floor((i + p)/s) and residue class) are first merged, so e.g. a k6/s2 conv emits
3^3 candidates per occupied 2^3 cell instead of 6^3 per input. Candidates are made unique with a static
size either by sorting (``method="sort"``) or by an occupancy grid + prefix sum over the output key
space (``method="grid"``; cheap when B*prod(out) is not much larger than the candidate count);
``"auto"`` picks by a cost model. Both keep the lowest keys when the capacity is too small, so they give
identical results; the extra sites are counted, never silently lost.

Rulebooks (K = K0*K1*K2 flat offsets, k = (k0*K1 + k1)*K2 + k2, same order as a [K0, K1, K2, ...]
kernel):

* ``out_map`` [N_out, K] int32: input row feeding output row o through offset k, or -1
  (output-stationary: a convolution is gather + matmul, no scatter/atomics);
* ``in_map`` [N_in, K] int32: output row fed by input row n through offset k, or -1 (input-stationary;
  built for stride-1 convolutions where it comes for free, used by the matmul-then-scatter compute).

No Python loop runs over sites; the only Python loops are over residues/offsets at trace time.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from recoil_jax.ops.sparse.tensor import INT32_MAX, _key_space, delinearize, linearize

Triple = tuple[int, int, int]
METHODS = ("auto", "sort", "grid")


@flax.struct.dataclass
class KernelMap:
  """Result of a kernel-map build.

  Attributes:
    out_coords: [N_out, 4] int32 output site coordinates (sorted by key, inactive rows last).
    out_map: [N_out, K] int32 input row per (output row, offset), -1 if none.
    in_map: [N_in, K] int32 output row per (input row, offset), -1 if none; None when not built.
    num_sites: [] int32 number of output sites that exist (may exceed N_out).
    overflow: [] int32 max(num_sites - N_out, 0), sites dropped for lack of capacity.
  """
  out_coords: jax.Array
  out_map: jax.Array
  in_map: jax.Array | None
  num_sites: jax.Array
  overflow: jax.Array


def triple(x: int | Sequence[int], name: str) -> Triple:
  """Normalises an int or a 3-sequence of ints to a tuple of 3 ints."""
  if isinstance(x, (int, np.integer)):
    return (int(x),) * 3
  t = tuple(int(v) for v in x)
  if len(t) != 3:
    raise ValueError(f"{name} must be an int or 3 ints, got {x!r}")
  return t  # type: ignore[return-value]


def conv_output_shape(spatial_shape: Sequence[int], kernel_size: Sequence[int],
                      strides: Sequence[int], padding: Sequence[int],
                      dilation: Sequence[int]) -> Triple:
  """Output grid of a regular conv/pool: floor((in + 2p - d(k-1) - 1)/s) + 1 per axis (checked >= 1)."""
  out = []
  for a in range(3):
    i, k, s, p, d = spatial_shape[a], kernel_size[a], strides[a], padding[a], dilation[a]
    if k < 1 or s < 1 or d < 1 or p < 0:
      raise ValueError(f"axis {a}: need kernel_size >= 1, strides >= 1, dilation >= 1, padding >= 0; "
                       f"got k={k}, s={s}, d={d}, p={p}")
    o = (i + 2 * p - d * (k - 1) - 1) // s + 1
    if o < 1:
      raise ValueError(f"axis {a}: input size {i} with kernel {k}, stride {s}, padding {p}, dilation {d} "
                       "gives an empty output grid")
    out.append(o)
  return tuple(out)  # type: ignore[return-value]


def _axis_tables(k: int, s: int, d: int):
  """Static per-axis tables for input residue r = (i + p) mod s.

  For residue r the reachable outputs are o = c - j (c = (i + p) // s) for j in J(r), with kernel offset
  k = (j*s + r)/d. Returns (cls_of_r [s], j_table [n_cls, M], k_table [s, M], n_cls, M); padding entries
  are -1; an empty J(r) gets class -1.
  """
  js = []
  for r in range(s):
    js.append(tuple(sorted((kk * d - r) // s for kk in range(k) if (kk * d - r) % s == 0)))
  classes = sorted({j for j in js if j})
  m = max((len(j) for j in js), default=0)
  m = max(m, 1)
  cls_of_r = np.array([classes.index(j) if j else -1 for j in js], np.int32)
  j_table = np.full((max(len(classes), 1), m), -1, np.int32)
  for c, j in enumerate(classes):
    j_table[c, :len(j)] = j
  k_table = np.full((s, m), -1, np.int32)
  for r, j in enumerate(js):
    for t, jj in enumerate(j):
      k_table[r, t] = (jj * s + r) // d
  return cls_of_r, j_table, k_table, max(len(classes), 1), m


# ---------------------------------------------------------------------------------------------------
# Unique / lookup primitives (sort- or grid-based).

def _sort_cost(n_keys: int, n_queries: int, n_table: int) -> float:
  """Rough CPU cost (ns) of sort + binary search."""
  return 3.5 * n_keys * math.log2(max(n_keys, 2)) + 4.0 * n_queries * math.log2(max(n_table, 2))


def _grid_cost(space: int, n_keys: int) -> float:
  """Rough CPU cost (ns) of an occupancy grid over the key space."""
  return 15.0 * space + 10.0 * n_keys


def _pick(method: str, sort_cost: float, grid_cost: float, space: int) -> str:
  if method not in METHODS:
    raise ValueError(f"kernel-map method must be one of {METHODS}, got {method!r}")
  if method != "auto":
    return method
  return "grid" if (grid_cost < sort_cost and space <= (1 << 27)) else "sort"


def unique_keys(keys: jax.Array, space: int, capacity: int, method: str = "auto"):
  """Sorted unique keys with a static size, and the inverse index of every key.

  Args:
    keys: [M] int32 keys in [0, space), INT32_MAX for invalid entries.
    space: number of possible keys (static).
    capacity: static output size.
    method: "sort", "grid" or "auto".

  Returns:
    uniq: [capacity] int32 sorted unique keys (lowest ones if they do not fit), INT32_MAX padding.
    count: [] int32 number of distinct valid keys (may exceed capacity).
    inverse: [M] int32 row of each key in ``uniq``, -1 if invalid or dropped.
  """
  m = keys.shape[0]
  method = _pick(method, _sort_cost(m, m, capacity), _grid_cost(space, m), space)
  valid = keys != INT32_MAX
  if method == "grid":
    occ = jnp.zeros((space,), jnp.int32).at[keys].set(1, mode="drop")
    pos = jnp.cumsum(occ, dtype=jnp.int32) - 1
    count = pos[-1] + 1
    target = jnp.where(occ > 0, pos, capacity)
    uniq = jnp.full((capacity,), INT32_MAX, jnp.int32).at[target].set(
        jnp.arange(space, dtype=jnp.int32), mode="drop")
    inv = pos.at[keys].get(mode="fill", fill_value=-1)
    inverse = jnp.where(valid & (inv < capacity), inv, -1)
    return uniq, count.astype(jnp.int32), inverse.astype(jnp.int32)
  skeys = jnp.sort(keys)
  first = jnp.concatenate([skeys[:1] != INT32_MAX, (skeys[1:] != skeys[:-1]) & (skeys[1:] != INT32_MAX)])
  rank = jnp.cumsum(first, dtype=jnp.int32) - 1
  count = jnp.sum(first, dtype=jnp.int32)
  uniq = jnp.full((capacity,), INT32_MAX, jnp.int32).at[jnp.where(first, rank, capacity)].set(
      skeys, mode="drop")
  inverse = _search(uniq, keys)
  return uniq, count, inverse


def _search(sorted_keys: jax.Array, queries: jax.Array) -> jax.Array:
  """Row of each query in ``sorted_keys`` (ascending, INT32_MAX padded), -1 if absent/invalid."""
  n = sorted_keys.shape[0]
  pos = jnp.searchsorted(sorted_keys, queries, method="scan_unrolled").astype(jnp.int32)
  pos_c = jnp.minimum(pos, n - 1)
  found = (sorted_keys[pos_c] == queries) & (queries != INT32_MAX)
  return jnp.where(found, pos_c, -1).astype(jnp.int32)


def lookup_keys(table: jax.Array, queries: jax.Array, space: int, method: str = "auto") -> jax.Array:
  """Row of each query key in an unsorted table of unique keys.

  Args:
    table: [N] int32 unique keys (INT32_MAX = empty row).
    queries: [Q] int32 keys (INT32_MAX = no query).
    space: number of possible keys (static).
    method: "sort" (argsort + binary search), "grid" (dense index grid) or "auto".

  Returns:
    [Q] int32 row in ``table`` or -1.
  """
  n, q = table.shape[0], queries.shape[0]
  method = _pick(method, _sort_cost(n, q, n), _grid_cost(space, q) - 5.0 * q, space)
  if method == "grid":
    grid = jnp.full((space,), -1, jnp.int32).at[table].set(jnp.arange(n, dtype=jnp.int32), mode="drop")
    return grid.at[queries].get(mode="fill", fill_value=-1).astype(jnp.int32)
  order = jnp.argsort(table).astype(jnp.int32)
  pos = _search(table[order], queries)
  return jnp.where(pos >= 0, order[jnp.maximum(pos, 0)], -1).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------------
# Regular (strided) convolution / pooling.

def default_out_capacity(in_capacity: int, batch_size: int, out_shape: Sequence[int],
                         kernel_size: Sequence[int], strides: Sequence[int],
                         dilation: Sequence[int]) -> int:
  """Capacity that can never overflow: N_in * (max outputs one input reaches), capped at B*prod(out).

  One input reaches at most |J| <= ceil(K/s) outputs per axis (e.g. 1 for a k2/s2 pool, 27 for k6/s2,
  64 for k4/s1). Safe but generous; pass measured capacities for speed (see the layer docstrings).
  """
  reach = 1
  for a in range(3):
    reach *= _axis_tables(kernel_size[a], strides[a], dilation[a])[4]
  return int(max(1, min(in_capacity * reach, batch_size * int(np.prod(out_shape)))))


def build_conv_map(coords: jax.Array, spatial_shape: Sequence[int], batch_size: int,
                   kernel_size: Sequence[int], strides: Sequence[int], padding: Sequence[int],
                   dilation: Sequence[int], out_capacity: int, method: str = "auto",
                   build_in_map: bool | None = None) -> KernelMap:
  """Kernel map of a regular sparse conv / pool (spconv ``SparseConv3d`` site rule).

  Args:
    coords: [N_in, 4] int32 input coordinates (unique active sites; batch -1 = inactive).
    spatial_shape: input grid (D0, D1, D2).
    batch_size: B.
    kernel_size, strides, padding, dilation: 3-tuples.
    out_capacity: static number of output rows N_out.
    method: "sort", "grid" or "auto" (unique/lookup implementation).
    build_in_map: also return the input-stationary map (default: only when all strides are 1).

  Returns:
    `KernelMap` over the output grid `conv_output_shape(...)`.
  """
  shape = tuple(int(v) for v in spatial_shape)
  ks, ss, ps, ds = (tuple(int(v) for v in t) for t in (kernel_size, strides, padding, dilation))
  conv_output_shape(shape, ks, ss, ps, ds)
  if out_capacity < 1:
    raise ValueError(f"build_conv_map: out_capacity must be >= 1, got {out_capacity}")
  if method not in METHODS:
    raise ValueError(f"kernel-map method must be one of {METHODS}, got {method!r}")
  if build_in_map is None:
    build_in_map = all(s == 1 for s in ss)
  return _build_conv_map(coords, shape, int(batch_size), ks, ss, ps, ds, int(out_capacity), method,
                         bool(build_in_map))


@functools.partial(jax.jit, static_argnums=tuple(range(1, 10)))
def _build_conv_map(coords, shape, batch_size, ks, ss, ps, ds, out_capacity, method, build_in_map):
  out_shape = conv_output_shape(shape, ks, ss, ps, ds)
  out_space = _key_space(batch_size, out_shape, "build_conv_map (output grid)")
  _key_space(batch_size, shape, "build_conv_map (input grid)")
  n_in = coords.shape[0]
  k_total = int(np.prod(ks))
  all_unit = all(s == 1 for s in ss)
  tables = [_axis_tables(ks[a], ss[a], ds[a]) for a in range(3)]
  ms = tuple(t[4] for t in tables)

  c = coords.astype(jnp.int32)
  active = c[:, 0] >= 0
  b = jnp.where(active, c[:, 0], 0)
  cc, cls = [], []
  for a in range(3):
    v = c[:, a + 1] + ps[a]
    cc.append(v // ss[a])
    cls.append(jnp.asarray(tables[a][0])[v % ss[a]])
  cc = jnp.stack(cc, axis=1)  # [N_in, 3] coarse cell
  cls = jnp.stack(cls, axis=1)  # [N_in, 3] residue class (-1: reaches nothing)
  reach = active & jnp.all(cls >= 0, axis=1)

  # Merge inputs that reach the same outputs (same batch, coarse cell and residue classes).
  n_cls = tuple(t[3] for t in tables)
  c_ext = tuple((shape[a] - 1 + ps[a]) // ss[a] + 1 for a in range(3))
  g_shape = tuple(c_ext[a] * n_cls[a] for a in range(3))
  g_space = batch_size * int(np.prod(g_shape))
  merge = (not all_unit) and g_space <= INT32_MAX - 1
  if merge:
    gcoord = jnp.stack([b] + [cc[:, a] * n_cls[a] + jnp.maximum(cls[:, a], 0) for a in range(3)], 1)
    gkeys = jnp.where(reach, linearize(gcoord, g_shape, batch_size), INT32_MAX)
    ukeys, _, group = unique_keys(gkeys, g_space, n_in, method)  # capacity n_in: never overflows
    gc = delinearize(ukeys, g_shape)
    g_valid = gc[:, 0] >= 0
    g_b = gc[:, 0]
    g_c = jnp.stack([gc[:, a + 1] // n_cls[a] for a in range(3)], 1)
    g_cls = jnp.stack([gc[:, a + 1] % n_cls[a] for a in range(3)], 1)
  else:
    group = jnp.where(reach, jnp.arange(n_in, dtype=jnp.int32), -1)
    g_valid, g_b, g_c, g_cls = reach, b, cc, jnp.maximum(cls, 0)

  # Candidate outputs per group: o = c - J[cls, t] per axis.
  o_ax, ok_ax = [], []
  for a in range(3):
    jt = jnp.asarray(tables[a][1])[g_cls[:, a]]  # [G, M_a]
    o = g_c[:, a:a + 1] - jt
    o_ax.append(o)
    ok_ax.append((jt >= 0) & (o >= 0) & (o < out_shape[a]))
  ok = (g_valid[:, None, None, None] & ok_ax[0][:, :, None, None] & ok_ax[1][:, None, :, None]
        & ok_ax[2][:, None, None, :])
  cand = ((g_b[:, None, None, None] * out_shape[0] + o_ax[0][:, :, None, None]) * out_shape[1]
          + o_ax[1][:, None, :, None]) * out_shape[2] + o_ax[2][:, None, None, :]
  cand = jnp.where(ok, cand, INT32_MAX).astype(jnp.int32).reshape(-1)
  out_keys, num_sites, cand_out = unique_keys(cand, out_space, out_capacity, method)
  cand_out = cand_out.reshape((-1,) + ms)  # [G, M0, M1, M2]

  # Per input: output row and flat kernel offset of each slot.
  in_out = jnp.where((group >= 0)[:, None, None, None], cand_out[jnp.maximum(group, 0)], -1)
  kk = []
  for a in range(3):
    r = (c[:, a + 1] + ps[a]) % ss[a]
    kk.append(jnp.asarray(tables[a][2])[r])  # [N_in, M_a]
  kflat = (kk[0][:, :, None, None] * ks[1] + kk[1][:, None, :, None]) * ks[2] + kk[2][:, None, None, :]
  k_ok = ((kk[0] >= 0)[:, :, None, None] & (kk[1] >= 0)[:, None, :, None]
          & (kk[2] >= 0)[:, None, None, :])
  slot_ok = (in_out >= 0) & k_ok
  rows = jnp.broadcast_to(jnp.arange(n_in, dtype=jnp.int32)[:, None, None, None], in_out.shape)
  out_map = jnp.full((out_capacity, k_total), -1, jnp.int32).at[
      jnp.where(slot_ok, in_out, out_capacity).reshape(-1), jnp.maximum(kflat, 0).reshape(-1)].set(
          rows.reshape(-1), mode="drop")
  in_map = None
  if build_in_map:
    if all_unit and not merge:
      in_map = jnp.where(slot_ok, in_out, -1).reshape(n_in, k_total)  # slot t == offset t
    else:
      in_map = jnp.full((n_in, k_total), -1, jnp.int32).at[
          jnp.where(slot_ok, rows, n_in).reshape(-1), jnp.maximum(kflat, 0).reshape(-1)].set(
              in_out.reshape(-1), mode="drop")
  out_coords = delinearize(out_keys, out_shape)
  overflow = jnp.maximum(num_sites - out_capacity, 0).astype(jnp.int32)
  return KernelMap(out_coords=out_coords, out_map=out_map, in_map=in_map, num_sites=num_sites,
                   overflow=overflow)


# ---------------------------------------------------------------------------------------------------
# Submanifold convolution.

def build_subm_map(coords: jax.Array, spatial_shape: Sequence[int], batch_size: int,
                   kernel_size: Sequence[int], dilation: Sequence[int],
                   method: str = "auto") -> KernelMap:
  """Kernel map of a submanifold conv (spconv ``SubMConv3d``): output sites = input sites.

  ``out_map[n, k]`` is the row of the input at coords[n] + (k - (K-1)/2)*d, or -1. The map is symmetric
  (offset k <-> K-1-k), so ``in_map`` is ``out_map`` with the offset axis reversed.

  Args:
    coords: [N, 4] int32 unique active sites (batch -1 = inactive).
    spatial_shape: (D0, D1, D2).
    batch_size: B.
    kernel_size: 3 odd ints.
    dilation: 3 ints >= 1.
    method: "sort", "grid" or "auto".
  """
  shape = tuple(int(v) for v in spatial_shape)
  ks, ds = tuple(int(v) for v in kernel_size), tuple(int(v) for v in dilation)
  if any(k % 2 == 0 or k < 1 for k in ks):
    raise ValueError(f"build_subm_map: submanifold kernel_size must be odd, got {ks}")
  if any(d < 1 for d in ds):
    raise ValueError(f"build_subm_map: dilation must be >= 1, got {ds}")
  if method not in METHODS:
    raise ValueError(f"kernel-map method must be one of {METHODS}, got {method!r}")
  return _build_subm_map(coords, shape, int(batch_size), ks, ds, method)


@functools.partial(jax.jit, static_argnums=tuple(range(1, 6)))
def _build_subm_map(coords, shape, batch_size, ks, ds, method):
  space = _key_space(batch_size, shape, "build_subm_map")
  n = coords.shape[0]
  c = coords.astype(jnp.int32)
  active = c[:, 0] >= 0
  offs = np.stack(np.meshgrid(*[(np.arange(k) - (k - 1) // 2) * d for k, d in zip(ks, ds)],
                              indexing="ij"), -1).reshape(-1, 3).astype(np.int32)  # [K, 3]
  nb = c[:, None, 1:] + jnp.asarray(offs)[None]  # [N, K, 3]
  inside = active[:, None] & jnp.all((nb >= 0) & (nb < jnp.array(shape, jnp.int32)), axis=-1)
  qk = ((c[:, None, 0] * shape[0] + nb[..., 0]) * shape[1] + nb[..., 1]) * shape[2] + nb[..., 2]
  qk = jnp.where(inside, qk, INT32_MAX).astype(jnp.int32)
  table = linearize(c, shape, batch_size)
  out_map = lookup_keys(table, qk.reshape(-1), space, method).reshape(n, -1)
  zero = jnp.zeros((), jnp.int32)
  return KernelMap(out_coords=c, out_map=out_map, in_map=out_map[:, ::-1], num_sites=jnp.sum(
      active, dtype=jnp.int32), overflow=zero)
