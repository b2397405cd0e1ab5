"""Kernel maps (rulebooks) built from GPU hash-table lookups, identical to `kernel_map`'s.

Produces the same `kernel_map.KernelMap` (same rows, same order, same -1 entries, same overflow
counts) as `kernel_map.build_conv_map` / `build_subm_map`, so either backend's arithmetic can consume
either map. Semantics (spconv), per axis with kernel K, stride s, padding p, dilation d:

* regular conv / pool: output o exists iff o*s - p + k*d is an active input for some k in [0, K);
* submanifold conv: outputs = inputs, neighbour of i through k is i + (k - (K-1)/2)*d.

Construction of a regular map (all steps jittable, static capacities):

1. input table: hash of the active input keys -> input row (`hash.build_table`);
2. candidate outputs: every input emits the outputs it reaches, only through the offsets compatible
   with the stride (<= ceil(K/s) per axis; XLA elementwise integer arithmetic);
3. de-duplication: the candidates are inserted into a second table (`hash.insert_keys`); sorting
   that table's keys (EMPTY = INT32_MAX sorts last) lists the distinct output sites in key order,
   and the first ``out_capacity`` of them become the output rows (the lowest keys, as in
   `kernel_map`); a third table maps the kept output keys to their rows (only for ``in_map``);
4. ``out_map[o, k]``: the output-stationary lookup kernel below computes the input site of every
   (output row, offset) pair and looks it up in the input table -- a gather, no scatter;
5. ``in_map[n, k]`` (the transposed rulebook used by the backward pass): the same kernel computes,
   for every (input row, offset), the output site it feeds ((i + p - k*d)/s when integral and on
   the grid) and looks it up in the output table. Each entry is computed by its own lane from
   coordinates, so the inversion of ``out_map`` needs neither atomics nor a scatter.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from recoil_jax.ops.sparse import kernel_map as km
from recoil_jax.ops.sparse.pallas import common
from recoil_jax.ops.sparse.pallas import hash as hashing
from recoil_jax.ops.sparse.pallas.common import FULL, INT32_MAX
from recoil_jax.ops.sparse.tensor import delinearize, linearize

Triple = tuple[int, int, int]
QUERY_BLOCK = 32  # query sites per program of the neighbour-lookup kernel
OFFSET_BLOCK = 32  # kernel offsets per program at most (see common.offset_bucket)


def _check_key_space(batch_size: int, shape: Sequence[int], where: str) -> int:
  size = int(batch_size) * int(np.prod(shape))
  if size > INT32_MAX - 1:
    raise ValueError(f"{where}: batch_size x grid = {batch_size} x {tuple(shape)} = {size} voxels does "
                     f"not fit the int32 keys (max {INT32_MAX - 1}); use a smaller batch or grid")
  return size


# ---------------------------------------------------------------------------------------------------
# Neighbour lookup kernel: out[q, k] = table[site(q, k)] for query sites q and kernel offsets k.

# Rows of the runtime parameter array of the neighbour kernel (one column per axis). The rule is a
# runtime input rather than a static one so that one compiled kernel serves every conv geometry
# with the same array shapes (this matters for interpret-mode compile times; on a GPU the few
# integer divisions by runtime values are noise next to the probes).
_KS, _MUL, _ADD, _KMUL, _DIV, _TARGET = range(6)


def _neighbour_kernel(params_ref, q_ref, table_keys_ref, table_values_ref, out_ref, *, bq: int,
                      bk: int, bits: int):
  """Per axis a the neighbour coordinate is (q_a*mul_a + add_a + k_a*kmul_a) / div_a, which must be
  an integer in [0, target_a); the neighbour key is linearised on the ``target`` grid."""
  p = lambda row, a: params_ref[row, a]  # noqa: E731 (scalar load)
  rows = pl.ds(pl.program_id(0) * bq, bq)
  k = pl.program_id(1) * bk + lax.broadcasted_iota(jnp.int32, (bk,), 0)
  k12 = p(_KS, 1) * p(_KS, 2)
  k_axis = (lax.div(k, k12), lax.rem(lax.div(k, p(_KS, 2)), p(_KS, 1)), lax.rem(k, p(_KS, 2)))
  batch = q_ref[0, rows]
  ok = (batch >= 0)[:, None] & (k < p(_KS, 0) * k12)[None, :]
  key = jnp.broadcast_to(batch[:, None], (bq, bk))
  for a in range(3):
    num = q_ref[a + 1, rows][:, None] * p(_MUL, a) + p(_ADD, a) + k_axis[a][None, :] * p(_KMUL, a)
    ok = ok & (num >= 0)
    num = jnp.maximum(num, 0)  # non-negative: truncating div/rem == floor div/mod
    ok = ok & (lax.rem(num, p(_DIV, a)) == 0)
    num = lax.div(num, p(_DIV, a))
    ok = ok & (num < p(_TARGET, a))
    key = key * p(_TARGET, a) + num
  slots = hashing.find_slots(table_keys_ref, jnp.where(ok, key, INT32_MAX), bits)
  out_ref[...] = jnp.where(slots >= 0, table_values_ref[jnp.maximum(slots, 0)], -1)


def neighbour_lookup(coords: jax.Array, table: hashing.HashTable, ks: Triple, mul: Triple,
                     add: Triple, kmul: Triple, div: Triple, target: Triple, *,
                     interpret: bool = False) -> jax.Array:
  """[Nq, K] table value of the neighbour of each query site through each offset, -1 if none.

  Args:
    coords: [Nq, 4] int32 query sites (batch -1 = inactive row -> all -1).
    table: hash table of the neighbour grid's keys.
    ks: kernel size (K = prod(ks) offsets in `kernel_map` order).
    mul, add, kmul, div: per-axis neighbour rule (q*mul + add + k*kmul) / div (div >= 1).
    target: the neighbour grid (keys are linearised on it).
    interpret: run the Pallas interpreter.
  """
  if any(d < 1 for d in div):
    raise ValueError(f"neighbour_lookup: div must be >= 1, got {div}")
  k_total = int(np.prod(ks))
  params = jnp.asarray(np.array([ks, mul, add, kmul, div, target], np.int32))
  return _neighbour_lookup(coords.astype(jnp.int32), params, table, k_total, bool(interpret))


@functools.partial(jax.jit, static_argnums=(3, 4))
def _neighbour_lookup(coords, params, table, k_total, interpret):
  nq = coords.shape[0]
  kp = common.offset_bucket(k_total, OFFSET_BLOCK)
  bk = min(kp, OFFSET_BLOCK)
  nq_pad = hashing.round_up_block(nq, QUERY_BLOCK)
  q = common.pad_axis(coords, nq_pad, value=-1).T  # [4, Nq_pad]
  kernel = functools.partial(_neighbour_kernel, bq=QUERY_BLOCK, bk=bk, bits=table.bits)
  out = common.call(
      kernel, out_shape=jax.ShapeDtypeStruct((nq_pad, kp), jnp.int32),
      grid=(nq_pad // QUERY_BLOCK, kp // bk), in_specs=[FULL, FULL, FULL, FULL],
      out_specs=pl.BlockSpec((QUERY_BLOCK, bk), lambda i, j: (i, j)),
      interpret=interpret, name="sparse_rulebook_lookup")(params, q, table.keys, table.values)
  return out[:nq, :k_total]


# ---------------------------------------------------------------------------------------------------
# Candidate outputs of a regular conv.

def _axis_table(k: int, s: int, d: int) -> tuple[np.ndarray, np.ndarray]:
  """Shifts reachable per input residue along one axis.

  For residue r = (i + p) mod s, the outputs reached are o = (i + p)//s - j for the shifts j of the
  offsets kk in [0, K) with kk*d = j*s + r. Returns ([s, M] int32 shifts, [s, M] bool validity).
  """
  rows = [[(kk * d - r) // s for kk in range(k) if (kk * d - r) % s == 0] for r in range(s)]
  m = max(1, max(len(r) for r in rows))
  table = np.zeros((s, m), np.int32)
  valid = np.zeros((s, m), bool)
  for r, js in enumerate(rows):
    table[r, :len(js)] = js
    valid[r, :len(js)] = True
  return table, valid


def candidate_keys(coords: jax.Array, batch_size: int, ks: Triple, ss: Triple, ps: Triple,
                   ds: Triple, out_shape: Triple) -> jax.Array:
  """[N_in * M0*M1*M2] int32 output keys reached by the inputs (duplicates; INT32_MAX = none)."""
  del batch_size
  c = coords.astype(jnp.int32)
  active = c[:, 0] >= 0
  o_ax, ok_ax = [], []
  for a in range(3):
    table, valid = _axis_table(ks[a], ss[a], ds[a])
    v = c[:, a + 1] + ps[a]
    r = v % ss[a]
    o = (v // ss[a])[:, None] - jnp.asarray(table)[r]
    o_ax.append(o)
    ok_ax.append(jnp.asarray(valid)[r] & (o >= 0) & (o < out_shape[a]))
  ok = (active[:, None, None, None] & ok_ax[0][:, :, None, None] & ok_ax[1][:, None, :, None]
        & ok_ax[2][:, None, None, :])
  key = ((c[:, 0, None, None, None] * out_shape[0] + o_ax[0][:, :, None, None]) * out_shape[1]
         + o_ax[1][:, None, :, None]) * out_shape[2] + o_ax[2][:, None, None, :]
  return jnp.where(ok, key, INT32_MAX).astype(jnp.int32).reshape(-1)


# ---------------------------------------------------------------------------------------------------
# Public builders.

def build_conv_map(coords: jax.Array, spatial_shape: Sequence[int], batch_size: int,
                   kernel_size: Sequence[int], strides: Sequence[int], padding: Sequence[int],
                   dilation: Sequence[int], out_capacity: int, build_in_map: bool | None = None, *,
                   interpret: bool = False) -> km.KernelMap:
  """Hash-based `kernel_map.build_conv_map` (regular sparse conv / pool); same arguments and result.

  Args:
    coords: [N_in, 4] int32 unique active input sites (batch -1 = inactive row).
    spatial_shape: input grid (D0, D1, D2).
    batch_size: B.
    kernel_size, strides, padding, dilation: 3-tuples.
    out_capacity: static number of output rows.
    build_in_map: also build the transposed map (default, as `kernel_map`: only for unit strides;
      the Pallas backward pass always asks for it).
    interpret: run the Pallas interpreter (CPU tests).
  """
  shape = tuple(int(v) for v in spatial_shape)
  ks, ss, ps, ds = (tuple(int(v) for v in t) for t in (kernel_size, strides, padding, dilation))
  km.conv_output_shape(shape, ks, ss, ps, ds)
  if out_capacity < 1:
    raise ValueError(f"build_conv_map: out_capacity must be >= 1, got {out_capacity}")
  if build_in_map is None:
    build_in_map = all(s == 1 for s in ss)
  return _build_conv_map(coords, shape, int(batch_size), ks, ss, ps, ds, int(out_capacity),
                         bool(build_in_map), bool(interpret))


# The builders are sequences of separately jitted stages rather than one jitted program: under an
# enclosing jit (the model) they fuse anyway, and eagerly (tests in interpret mode) every kernel then
# compiles once per array shape and is reused across conv geometries.

@functools.partial(jax.jit, static_argnums=(1, 2))
def _input_keys(coords, shape, batch_size):
  return linearize(coords.astype(jnp.int32), shape, batch_size)


@functools.partial(jax.jit, static_argnums=tuple(range(1, 7)))
def _candidates(coords, batch_size, ks, ss, ps, ds, out_shape):
  cand = candidate_keys(coords, batch_size, ks, ss, ps, ds, out_shape)
  return common.pad_axis(cand, common.next_pow2(cand.shape[0]), value=INT32_MAX)  # size buckets


def _output_rows(table_keys, out_capacity, out_shape):
  """Sorted distinct output keys (the lowest ``out_capacity``), their coordinates and the count."""
  return _output_rows_jit(table_keys, jnp.asarray(out_shape, jnp.int32), out_capacity)


@functools.partial(jax.jit, static_argnums=(2,))
def _output_rows_jit(table_keys, out_shape, out_capacity):  # out_shape at run time: fewer compiles
  num_sites = jnp.sum(table_keys != INT32_MAX, dtype=jnp.int32)
  ordered = jnp.sort(table_keys)  # EMPTY = INT32_MAX sorts last
  if ordered.shape[0] >= out_capacity:
    out_keys = ordered[:out_capacity]
  else:
    out_keys = common.pad_axis(ordered, out_capacity, value=INT32_MAX)
  overflow = jnp.maximum(num_sites - out_capacity, 0).astype(jnp.int32)
  return out_keys, delinearize(out_keys, tuple(out_shape)), num_sites, overflow


def _build_conv_map(coords, shape, batch_size, ks, ss, ps, ds, out_capacity, build_in_map,
                    interpret):
  out_shape = km.conv_output_shape(shape, ks, ss, ps, ds)
  _check_key_space(batch_size, shape, "build_conv_map (input grid)")
  _check_key_space(batch_size, out_shape, "build_conv_map (output grid)")
  coords = coords.astype(jnp.int32)
  in_table = hashing.build_table(_input_keys(coords, shape, batch_size), interpret=interpret)

  cand = _candidates(coords, batch_size, ks, ss, ps, ds, out_shape)
  cand_table = hashing.insert_keys(cand, bits=hashing.table_bits(cand.shape[0]),
                                       interpret=interpret)
  out_keys, out_coords, num_sites, overflow = _output_rows(cand_table, out_capacity, out_shape)
  out_table = None
  if build_in_map:  # a table of the kept output rows only: sized by the capacity, not the candidates
    out_table = hashing.build_table(out_keys, interpret=interpret)

  neg = lambda t: tuple(-v for v in t)  # noqa: E731
  out_map = neighbour_lookup(out_coords, in_table, ks, mul=ss, add=neg(ps), kmul=ds, div=(1, 1, 1),
                             target=shape, interpret=interpret)
  in_map = None
  if build_in_map:
    in_map = neighbour_lookup(coords, out_table, ks, mul=(1, 1, 1), add=ps, kmul=neg(ds), div=ss,
                              target=out_shape, interpret=interpret)
  return km.KernelMap(out_coords=out_coords, out_map=out_map, in_map=in_map, num_sites=num_sites,
                      overflow=overflow)


def build_subm_map(coords: jax.Array, spatial_shape: Sequence[int], batch_size: int,
                   kernel_size: Sequence[int], dilation: Sequence[int], *,
                   interpret: bool = False) -> km.KernelMap:
  """Hash-based `kernel_map.build_subm_map` (submanifold conv, odd kernels); same result.

  ``in_map`` is ``out_map`` with the offset axis reversed (the map is symmetric).
  """
  shape = tuple(int(v) for v in spatial_shape)
  ks, ds = km.subm_args(kernel_size, dilation)
  _check_key_space(batch_size, shape, "build_subm_map")
  coords = coords.astype(jnp.int32)
  table = hashing.build_table(_input_keys(coords, shape, int(batch_size)), interpret=interpret)
  add = tuple(-((k - 1) // 2) * d for k, d in zip(ks, ds))
  out_map = neighbour_lookup(coords, table, ks, mul=(1, 1, 1), add=add, kmul=ds, div=(1, 1, 1),
                             target=shape, interpret=interpret)
  return km.KernelMap(out_coords=coords, out_map=out_map, in_map=_reverse_offsets(out_map),
                      num_sites=_count_active(coords), overflow=jnp.zeros((), jnp.int32))


@jax.jit
def _reverse_offsets(m):
  return m[:, ::-1]


@jax.jit
def _count_active(coords):
  return jnp.sum(coords[:, 0] >= 0, dtype=jnp.int32)

