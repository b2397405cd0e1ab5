"""Sparse 3D conv / pool (XLA reference) against dense `lax` oracles, gradients, jit and capacities."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from recoil_jax.ops import sparse as sp
from recoil_jax.ops.sparse import kernel_map as km
from recoil_jax.ops.sparse import reference

DN = ("NDHWC", "DHWIO", "NDHWC")


# ------------------------------------------------------------------------------------------------
# Dense oracles.

def dense_conv(x, w, strides, padding, dilation):
  return lax.conv_general_dilated(x, w, strides, [(p, p) for p in padding], rhs_dilation=dilation,
                                  dimension_numbers=DN, precision=lax.Precision.HIGHEST)


def dense_sites(occ, kernel_size, strides, padding, dilation):
  """Output sites of a regular sparse conv: dense conv of the occupancy mask [B, D0, D1, D2] > 0."""
  ones = jnp.ones(tuple(kernel_size) + (1, 1), jnp.float32)
  return dense_conv(occ[..., None].astype(jnp.float32), ones, strides, padding, dilation)[..., 0] > 0


def dense_max_pool(x, kernel_size, strides, padding, dilation):
  y = lax.reduce_window(x, -jnp.inf, lax.max, (1,) + tuple(kernel_size) + (1,), (1,) + tuple(strides) + (1,),
                        [(0, 0)] + [(p, p) for p in padding] + [(0, 0)],
                        window_dilation=(1,) + tuple(dilation) + (1,))
  return jnp.maximum(y, 0)


def active_of(st):
  """Dense [B, D0, D1, D2] bool of the active sites of a SparseTensor."""
  ones = st.with_features(jnp.ones((st.capacity, 1), jnp.float32))
  return sp.to_dense(ones)[..., 0] > 0


def random_dense(rng, batch, shape, channels, density):
  """Dense [B, D0, D1, D2, C]; event 0 is empty, event 1 (if any) has a single active site."""
  occ = rng.random((batch,) + tuple(shape)) < density
  occ[0] = False
  if batch > 1:
    occ[1] = False
    occ[1][tuple(rng.integers(0, s) for s in shape)] = True
  x = rng.normal(size=occ.shape + (channels,)) * occ[..., None]
  return x.astype(np.float32), occ


def random_conv_case(seed, subm=False, pool=False):
  """A random valid (shape, kernel, strides, padding, dilation) configuration."""
  rng = np.random.default_rng(seed)
  while True:
    shape = tuple(int(v) for v in rng.integers(3, 10, size=3))
    if subm:
      ks = tuple(int(v) for v in rng.choice([1, 3, 5], size=3))
      ss, ps = (1, 1, 1), (0, 0, 0)
    else:
      ks = tuple(int(v) for v in rng.integers(1, 5, size=3))
      ss = tuple(int(v) for v in rng.integers(1, 4, size=3))
      ps = tuple(int(v) for v in rng.integers(0, 3, size=3))
    ds = tuple(int(v) for v in rng.integers(1, 3, size=3))
    try:
      km.conv_output_shape(shape, ks, ss, ps, ds)
    except ValueError:
      continue
    if pool and any(p > (k - 1) * d for p, k, d in zip(ps, ks, ds)):
      continue
    batch = int(rng.integers(1, 4))
    return rng, batch, shape, ks, ss, ps, ds


# ------------------------------------------------------------------------------------------------
# Data structure.

def test_dense_round_trip_and_padded_voxels():
  rng = np.random.default_rng(0)
  x, occ = random_dense(rng, 3, (5, 6, 7), 2, 0.3)
  st = sp.from_dense(jnp.asarray(x), 300)
  assert int(st.num_active) == occ.sum()
  np.testing.assert_array_equal(np.asarray(sp.to_dense(st)), x)
  np.testing.assert_array_equal(np.asarray(active_of(st)), occ)
  # Padded voxel lists: an empty event, duplicates summed, rows past num_voxels ignored.
  coords = np.array([[[1, 2, 3], [1, 2, 3], [0, 0, 0], [9, 9, 9]],
                     [[4, 5, 6], [0, 0, 0], [0, 0, 0], [0, 0, 0]],
                     [[0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]]], np.int32)
  feats = np.arange(1, 13, dtype=np.float32).reshape(3, 4, 1)
  st = sp.from_padded_voxels(jnp.asarray(coords), jnp.asarray(feats), jnp.array([3, 2, 0]), (5, 6, 7))
  dense = np.asarray(sp.to_dense(st))
  assert int(st.num_active) == 4 and int(st.overflow) == 0
  assert dense[0, 1, 2, 3, 0] == 1 + 2 and dense[0, 0, 0, 0, 0] == 3
  assert dense[1, 4, 5, 6, 0] == 5 and dense[1, 0, 0, 0, 0] == 6
  assert dense.sum() == 1 + 2 + 3 + 5 + 6
  inactive = ~np.asarray(st.mask)
  assert np.all(np.asarray(st.coords)[inactive] == [-1, 0, 0, 0])
  assert np.all(np.asarray(st.features)[inactive] == 0)


def test_padded_voxels_outside_grid():
  coords = jnp.array([[[1, 2, 3], [5, 0, 0]]], jnp.int32)
  feats = jnp.ones((1, 2, 1))
  with pytest.raises(ValueError, match="outside the grid"):
    sp.from_padded_voxels(coords, feats, jnp.array([2]), (5, 6, 7))
  fn = jax.jit(lambda c, f, n: sp.from_padded_voxels(c, f, n, (5, 6, 7)))
  st = fn(coords, feats, jnp.array([2]))
  assert int(st.overflow) == 1 and int(st.num_active) == 1


@pytest.mark.parametrize("shape", [(5, 6, 7), (200, 200, 200)])
def test_padded_voxels_match_numpy(shape):
  """Random voxel lists with duplicates and padding, against a dict-based merge. (5, 6, 7) takes the
  packed per-event sort, (200, 200, 200) x 600 rows is too big to pack in 32 bits: argsort."""
  rng = np.random.default_rng(13)
  b, v = 3, 600
  coords = rng.integers(0, 4, size=(b, v, 3)) * (np.array(shape) // 4)  # few distinct: duplicates
  coords = (coords + rng.integers(0, 2, size=(b, v, 3))).astype(np.int32)
  feats = rng.normal(size=(b, v, 2)).astype(np.float32)
  num = np.array([v, 0, 137], np.int32)
  st = jax.jit(lambda c, f, n: sp.from_padded_voxels(c, f, n, shape))(coords, feats, num)
  want = {}
  for e in range(b):
    for r in range(num[e]):
      key = (e,) + tuple(int(t) for t in coords[e, r])
      want[key] = want.get(key, 0.0) + feats[e, r].astype(np.float64)
  keys = sorted(want)
  got_coords = np.asarray(st.coords)
  assert int(st.num_active) == len(keys) and int(st.overflow) == 0
  np.testing.assert_array_equal(got_coords[:len(keys)], np.array(keys))
  assert np.all(got_coords[len(keys):] == [-1, 0, 0, 0])
  np.testing.assert_allclose(np.asarray(st.features)[:len(keys)], np.array([want[k] for k in keys]),
                             rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(st.features)[len(keys):] == 0)


def test_key_range_and_argument_errors():
  st = sp.from_dense(jnp.zeros((2, 3, 3, 3, 1)), 4)
  big = st.replace(spatial_shape=(2048, 2048, 2048))
  with pytest.raises(ValueError, match="int32"):
    sp.sparse_conv(big, jnp.ones((2, 2, 2, 1, 1)))
  with pytest.raises(ValueError, match="odd"):
    sp.subm_conv(st, jnp.ones((2, 3, 3, 1, 1)))
  with pytest.raises(ValueError, match="C_in"):
    sp.sparse_conv(st, jnp.ones((2, 2, 2, 3, 1)))
  with pytest.raises(ValueError, match="empty output grid"):
    sp.sparse_conv(st, jnp.ones((4, 2, 2, 1, 1)))
  with pytest.raises(ValueError, match="backend"):
    sp.SparseConv3d(4, 3, backend="pallas").init(jax.random.key(0), st)
  with pytest.raises(ValueError, match="method"):
    sp.sparse_conv(st, jnp.ones((2, 2, 2, 1, 1)), method="hash")


# ------------------------------------------------------------------------------------------------
# Forward against the dense oracles.

@pytest.mark.parametrize("seed", range(6))
def test_sparse_conv_matches_dense(seed):
  rng, batch, shape, ks, ss, ps, ds = random_conv_case(seed)
  c_in, c_out = int(rng.integers(1, 4)), int(rng.integers(1, 4))
  x, occ = random_dense(rng, batch, shape, c_in, float(rng.uniform(0.05, 0.5)))
  w = rng.normal(size=ks + (c_in, c_out)).astype(np.float32)
  bias = rng.normal(size=(c_out,)).astype(np.float32)
  sites = np.asarray(dense_sites(jnp.asarray(occ), ks, ss, ps, ds))
  want = np.where(sites[..., None], np.asarray(dense_conv(jnp.asarray(x), jnp.asarray(w), ss, ps, ds)) + bias, 0)
  st = sp.from_dense(jnp.asarray(x), max(int(occ.sum()), 1) + 3)
  cap = int(sites.sum()) + 5
  computes = ["gather_first", "matmul_gather"] + (["matmul_scatter"] if ss == (1, 1, 1) else [])
  for method in [("sort", "grid", "bitmap")[seed % 3]]:  # all are compared map-for-map below
    for compute in computes:
      out = sp.sparse_conv(st, jnp.asarray(w), jnp.asarray(bias), strides=ss, padding=ps, dilation=ds,
                           out_capacity=cap, method=method, compute=compute)
      case = f"{method}/{compute} shape={shape} k={ks} s={ss} p={ps} d={ds}"
      assert out.spatial_shape == sites.shape[1:], case
      np.testing.assert_array_equal(np.asarray(active_of(out)), sites, err_msg=case)
      assert int(out.num_active) == sites.sum() and int(out.overflow) == 0, case
      np.testing.assert_allclose(np.asarray(sp.to_dense(out)), want, rtol=1e-5, atol=1e-5, err_msg=case)


@pytest.mark.parametrize("seed", range(4))
def test_subm_conv_matches_dense(seed):
  rng, batch, shape, ks, _, _, ds = random_conv_case(100 + seed, subm=True)
  c_in, c_out = int(rng.integers(1, 4)), int(rng.integers(1, 4))
  x, occ = random_dense(rng, batch, shape, c_in, float(rng.uniform(0.05, 0.5)))
  w = rng.normal(size=ks + (c_in, c_out)).astype(np.float32)
  bias = rng.normal(size=(c_out,)).astype(np.float32)
  pads = tuple(d * (k - 1) // 2 for k, d in zip(ks, ds))  # SAME for odd kernels
  want = np.where(occ[..., None],
                  np.asarray(dense_conv(jnp.asarray(x), jnp.asarray(w), (1, 1, 1), pads, ds)) + bias, 0)
  st = sp.from_dense(jnp.asarray(x), int(occ.sum()) + 2)
  for method in [("sort", "grid", "bitmap")[seed % 3]]:
    for compute in ("gather_first", "matmul_gather", "matmul_scatter"):
      out = sp.subm_conv(st, jnp.asarray(w), jnp.asarray(bias), dilation=ds, method=method,
                         compute=compute)
      case = f"{method}/{compute} shape={shape} k={ks} d={ds}"
      np.testing.assert_array_equal(np.asarray(out.coords), np.asarray(st.coords), err_msg=case)
      np.testing.assert_allclose(np.asarray(sp.to_dense(out)), want, rtol=1e-5, atol=1e-5, err_msg=case)


@pytest.mark.parametrize("seed", range(4))
def test_max_pool_matches_dense(seed):
  rng, batch, shape, ks, ss, ps, ds = random_conv_case(200 + seed, pool=True)
  x, occ = random_dense(rng, batch, shape, 2, float(rng.uniform(0.05, 0.5)))
  sites = np.asarray(dense_sites(jnp.asarray(occ), ks, ss, ps, ds))
  want = np.where(sites[..., None], np.asarray(dense_max_pool(jnp.asarray(x), ks, ss, ps, ds)), 0)
  st = sp.from_dense(jnp.asarray(x), int(occ.sum()) + 1)
  for method in [("sort", "grid", "bitmap")[seed % 3]]:
    out = sp.sparse_max_pool(st, ks, strides=ss, padding=ps, dilation=ds,
                             out_capacity=int(sites.sum()) + 2, method=method)
    case = f"{method} shape={shape} k={ks} s={ss} p={ps} d={ds}"
    np.testing.assert_array_equal(np.asarray(active_of(out)), sites, err_msg=case)
    np.testing.assert_allclose(np.asarray(sp.to_dense(out)), want, rtol=0, atol=0, err_msg=case)


@pytest.mark.parametrize("case", ["strided", "coarse", "unit", "subm", "overflow"])
def test_sort_grid_and_bitmap_maps_are_identical(case):
  """All kernel-map methods give the same maps. "coarse" (kernels a multiple of the strides) takes the
  bitmap's space-to-depth route; "unit" and "overflow" its consecutive-rank in_map."""
  rng = np.random.default_rng(11)
  # 40 voxels along the last axis: bitmap rows span two 32-bit words.
  x, occ = random_dense(rng, 3, (9, 7, 40), 1, 0.1)
  st = sp.from_dense(jnp.asarray(x), int(occ.sum()) + 4)
  maps = {}
  for method in ("sort", "grid", "bitmap"):
    if case == "subm":
      maps[method] = km.build_subm_map(st.coords, st.spatial_shape, 3, (3, 5, 3), (1, 2, 1), method=method)
    else:
      ks, s, d, cap = {"strided": ((4, 3, 2), (3, 2, 2), (1, 2, 1), 600),
                       "coarse": ((4, 2, 4), (2, 1, 2), (1, 1, 1), 1200),
                       "unit": ((4, 3, 2), (1, 1, 1), (1, 2, 1), 4000),
                       "overflow": ((4, 3, 2), (1, 1, 1), (1, 2, 1), 100)}[case]
      maps[method] = km.build_conv_map(st.coords, st.spatial_shape, 3, ks, s, (1, 0, 2), d, cap,
                                       method=method, build_in_map=True)
  for other in ("grid", "bitmap"):
    for a, b in zip(jax.tree_util.tree_leaves(maps["sort"]), jax.tree_util.tree_leaves(maps[other])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=other)
  kmap = maps["sort"]
  # in_map and out_map describe the same pairs.
  pairs_out = {(int(o), int(k), int(n)) for o, k in zip(*np.nonzero(np.asarray(kmap.out_map) >= 0))
               for n in [np.asarray(kmap.out_map)[o, k]]}
  pairs_in = {(int(np.asarray(kmap.in_map)[n, k]), int(k), int(n))
              for n, k in zip(*np.nonzero(np.asarray(kmap.in_map) >= 0))}
  assert pairs_out == pairs_in and len(pairs_out) > 0
  if case == "overflow":
    assert int(kmap.overflow) > 0 and int(kmap.num_sites) == 100 + int(kmap.overflow)


def test_unique_and_lookup_methods_agree():
  rng = np.random.default_rng(12)
  space = 1000
  keys = np.where(rng.random(300) < 0.8, rng.integers(0, space, 300), km.INT32_MAX).astype(np.int32)
  distinct = np.unique(keys[keys != km.INT32_MAX])
  for cap in (400, 50):  # 50: the lowest keys are kept, the others get inverse -1
    results = {m: jax.jit(functools.partial(km.unique_keys, space=space, capacity=cap, method=m))(
        jnp.asarray(keys)) for m in ("sort", "grid", "bitmap")}
    uniq, count, inverse = (np.asarray(a) for a in results["sort"])
    assert int(count) == len(distinct)
    np.testing.assert_array_equal(uniq[:min(cap, len(distinct))], distinct[:cap])
    kept = (keys != km.INT32_MAX) & np.isin(keys, distinct[:cap])
    np.testing.assert_array_equal(uniq[inverse[kept]], keys[kept])
    assert np.all(inverse[~kept] == -1)
    for m in ("grid", "bitmap"):
      for a, b in zip(results["sort"], results[m]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=m)
  table = np.where(rng.random(120) < 0.9, rng.permutation(space)[:120], km.INT32_MAX).astype(np.int32)
  queries = np.concatenate([table[:60], rng.integers(0, space, 200).astype(np.int32), [km.INT32_MAX]])
  want = np.array([np.flatnonzero(table == q)[0] if q != km.INT32_MAX and q in table else -1
                   for q in queries])
  for m in ("sort", "grid", "bitmap"):
    got = np.asarray(jax.jit(functools.partial(km.lookup_keys, space=space, method=m))(
        jnp.asarray(table), jnp.asarray(queries)))
    np.testing.assert_array_equal(got, want, err_msg=m)


def test_space_to_depth_conv_equals_direct_map():
  """Strided convs with kernels divisible by the strides run as space-to-depth + stride-1 conv:
  same sites and rows as the direct map, same values up to float32 summation order. (This seed
  draws kernel (4, 3, 4), strides (2, 3, 2), padding 2, batch 3 on a (4, 8, 9) grid.)"""
  rng = np.random.default_rng(300)
  while True:
    shape = tuple(int(v) for v in rng.integers(4, 11, size=3))
    ss = tuple(int(v) for v in rng.integers(1, 4, size=3))
    ks = tuple(int(s * rng.integers(1, 3)) for s in ss)
    ps = tuple(int(v) for v in rng.integers(0, 3, size=3))
    if not sp.reference.can_space_to_depth(ks, ss, (1, 1, 1)):
      continue
    try:
      out_shape = km.conv_output_shape(shape, ks, ss, ps, (1, 1, 1))
    except ValueError:
      continue
    break
  batch, c_in, c_out = int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 4))
  x, occ = random_dense(rng, batch, shape, c_in, float(rng.uniform(0.05, 0.5)))
  st = sp.from_dense(jnp.asarray(x), int(occ.sum()) + 3)
  w = jnp.asarray(rng.normal(size=ks + (c_in, c_out)), jnp.float32)
  cap = batch * int(np.prod(out_shape))
  got = jax.jit(functools.partial(sp.sparse_conv, strides=ss, padding=ps, out_capacity=cap))(st, w)
  kmap = km.build_conv_map(st.coords, shape, batch, ks, ss, ps, (1, 1, 1), cap, method="sort")
  want = sp.gather_matmul(st.features, kmap.out_map, w.reshape(-1, c_in, c_out))
  case = f"shape={shape} k={ks} s={ss} p={ps}"
  np.testing.assert_array_equal(np.asarray(got.coords), np.asarray(kmap.out_coords), err_msg=case)
  # float32 sums of <= 48 terms of O(1) in another order: differences ~1e-6.
  np.testing.assert_allclose(np.asarray(got.features), np.asarray(want), rtol=1e-5, atol=1e-5,
                             err_msg=case)
  maps = {m: km.build_space_to_depth_map(st.coords, shape, batch, ks, ss, ps, cap, method=m,
                                         build_in_map=True) for m in ("sort", "bitmap")}
  for a, b in zip(jax.tree_util.tree_leaves(maps["sort"]), jax.tree_util.tree_leaves(maps["bitmap"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=case)
  coarse = jax.jit(functools.partial(sp.reference.space_to_depth, kernel_size=ks, strides=ss,
                                     padding=ps))(st)
  assert coarse.capacity == st.capacity and int(coarse.overflow) == 0
  # Every voxel lands in exactly one (cell, residue) slot: the coarse features hold the input numbers.
  values = np.asarray(coarse.features).ravel()
  np.testing.assert_array_equal(np.sort(values[values != 0]), np.sort(x[x != 0]))


def test_chunked_scan_equals_single_chunk():
  rng = np.random.default_rng(7)
  x, _ = random_dense(rng, 2, (8, 8, 8), 3, 0.3)
  st = sp.from_dense(jnp.asarray(x), 400)
  w = jnp.asarray(rng.normal(size=(3, 3, 3, 3, 4)), jnp.float32)
  kmap = km.build_conv_map(st.coords, st.spatial_shape, 2, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 600)
  flat = w.reshape(27, 3, 4)
  ref = sp.gather_matmul(st.features, kmap.out_map, flat, max_chunk_elements=1 << 30)
  for compute in ("gather_first", "matmul_gather", "matmul_scatter"):
    got = sp.conv_compute(st.features, kmap, flat, compute=compute, max_chunk_elements=600 * 3 * 5)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5, err_msg=compute)
  pooled = sp.gather_max(st.features, kmap.out_map, max_chunk_elements=600 * 3 * 4)
  np.testing.assert_array_equal(np.asarray(pooled),
                                np.asarray(sp.gather_max(st.features, kmap.out_map)))


def test_matmul_scatter_blocks_and_offset_chunks_agree():
  """Row blocks (inactive tail blocks skipped), the offset-chunk fallback and one single step give
  the same sums and gradients."""
  rng = np.random.default_rng(9)
  x, occ = random_dense(rng, 4, (7, 6, 8), 3, 0.3)
  st = sp.from_dense(jnp.asarray(x), int(occ.sum()) + 700)  # > 2/3 of the rows inactive (the tail)
  w = jnp.asarray(rng.normal(size=(27, 3, 4)), jnp.float32)
  kmap = km.build_conv_map(st.coords, st.spatial_shape, 4, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1),
                           1500)
  r = jnp.asarray(rng.normal(size=(1500, 4)), jnp.float32)

  def run(feats, kernel, chunk):
    return sp.matmul_scatter(feats, kmap.in_map, kernel, 1500, max_chunk_elements=chunk)

  # 1 << 30: one step; 27*4*100: blocks of 100 rows; 1000: 9 rows < MIN_BLOCK_ROWS, offset chunks.
  results = {}
  for chunk in (1 << 30, 27 * 4 * 100, 1000):
    out = run(st.features, w, chunk)
    grads = jax.grad(lambda f, k: jnp.sum(run(f, k, chunk) * r), argnums=(0, 1))(st.features, w)
    results[chunk] = [out, *grads]
  want = sp.gather_matmul(st.features, kmap.out_map, w)
  # float32 sums of <= 27 terms in different orders.
  np.testing.assert_allclose(np.asarray(results[1 << 30][0]), np.asarray(want), rtol=1e-5, atol=1e-5)
  for chunk in (27 * 4 * 100, 1000):
    for a, b in zip(results[1 << 30], results[chunk]):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-4, err_msg=str(chunk))


@pytest.mark.parametrize("capacity", [1500, 1499])  # blocks that divide it; a padded last block
def test_gather_first_row_blocks_agree_and_skip_the_inactive_tail(capacity):
  """gather_first over row blocks (inactive tail blocks skipped) equals the offset-chunk path
  and one single step, in values and in gradients of features and kernel."""
  rng = np.random.default_rng(10)
  x, occ = random_dense(rng, 4, (7, 6, 8), 3, 0.3)
  st = sp.from_dense(jnp.asarray(x), int(occ.sum()) + 50)
  w = jnp.asarray(rng.normal(size=(27, 3, 4)), jnp.float32)
  kmap = km.build_conv_map(st.coords, st.spatial_shape, 4, (3, 3, 3), (2, 2, 2), (1, 1, 1),
                           (1, 1, 1), capacity)  # > 2/3 of the output rows inactive (the tail)
  assert int(kmap.num_sites) < 500
  r = jnp.asarray(rng.normal(size=(capacity, 4)), jnp.float32)

  def run(feats, kernel, chunk):
    return sp.gather_matmul(feats, kmap.out_map, kernel, order="gather_first",
                            max_chunk_elements=chunk)

  # 1 << 30: one step; 27*3*40: row blocks of 40; 27*3*10: offset chunks (10 rows < MIN_BLOCK_ROWS).
  results = {}
  for chunk in (1 << 30, 27 * 3 * 40, 27 * 3 * 10):
    out = run(st.features, w, chunk)
    grads = jax.grad(lambda f, k, c=chunk: jnp.sum(run(f, k, c) * r), argnums=(0, 1))(st.features, w)
    results[chunk] = [out, *grads]
  assert not np.any(np.asarray(results[27 * 3 * 40][0])[int(kmap.num_sites):])
  for chunk in (27 * 3 * 40, 27 * 3 * 10):  # float32 sums of <= 27 terms in different orders
    for a, b in zip(results[1 << 30], results[chunk]):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-4, err_msg=str(chunk))


def test_row_blocks_divide_the_rows_when_they_can():
  assert reference._row_blocks(122880, 1213) == (1024, 0)
  assert reference._row_blocks(1499, 40) == (40, 21)  # prime: balanced blocks, the last one padded
  assert reference._row_blocks(100, 400) == (100, 0)


def test_disjoint_max_pool_gradient_equals_the_scatter_path():
  """gather_max(disjoint=True) (gathered gradient) equals the autodiff scatter path exactly:
  values, reverse- and forward-mode derivatives, on integer features full of ties, also under
  shard_map; sparse_max_pool takes it for windows no wider than the stride."""
  rng = np.random.default_rng(11)
  occ = rng.random((3, 8, 8, 8)) < 0.3
  x = (rng.integers(-3, 4, size=occ.shape + (4,)) * occ[..., None]).astype(np.float32)
  st = sp.from_dense(jnp.asarray(x), int(occ.sum()) + 20)
  kmap = km.build_conv_map(st.coords, st.spatial_shape, 3, (2, 2, 2), (2, 2, 2), (0, 0, 0),
                           (1, 1, 1), 300, build_in_map=False)
  r = jnp.asarray(rng.normal(size=(300, 4)), jnp.float32)
  t = jnp.asarray(rng.normal(size=st.features.shape), jnp.float32)

  def derivatives(disjoint):
    pool = lambda f: sp.gather_max(f, kmap.out_map, disjoint=disjoint)  # noqa: E731
    grad = jax.grad(lambda f: jnp.sum(pool(f) * r))(st.features)
    return pool(st.features), grad, jax.jvp(pool, (st.features,), (t,))[1]

  for a, b in zip(derivatives(False), derivatives(True)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  P = jax.sharding.PartitionSpec
  sharded_grad = jax.jit(jax.shard_map(
      jax.grad(lambda f, m: jnp.sum(sp.gather_max(f, m, disjoint=True) * r)), mesh=mesh,
      in_specs=(P("data"), P("data")), out_specs=P("data")))
  np.testing.assert_array_equal(np.asarray(sharded_grad(st.features, kmap.out_map)),
                                np.asarray(derivatives(False)[1]))
  pooled = sp.sparse_max_pool(st, 2, strides=2, out_capacity=300)
  np.testing.assert_array_equal(np.asarray(pooled.features), np.asarray(derivatives(True)[0]))


def test_pool_winner_is_the_first_maximum_above_zero(monkeypatch):
  """`_running_max` (all offsets gathered, max + argmax) against a loop over the offsets in numpy:
  the winner is the first input strictly above the running max from 0 (ties: the first; values
  <= 0, NaNs and missing entries never win), in one block and in padded row blocks;
  `_max_over_offsets` gives the same maxima."""
  rng = np.random.default_rng(21)
  n_in, n_out, k, c = 60, 37, 5, 3
  x = rng.integers(-2, 3, size=(n_in, c)).astype(np.float32)
  x[rng.random((n_in, c)) < 0.1] = np.nan
  out_map = rng.integers(-1, n_in, size=(n_out, k)).astype(np.int32)
  best = np.zeros((n_out, c), np.float32)
  win = np.full((n_out, c), n_in, np.int32)
  for o in range(n_out):
    for j in range(k):
      n = out_map[o, j]
      v = x[n] if n >= 0 else np.zeros(c, np.float32)
      better = v > best[o]  # NaN compares False
      best[o] = np.where(better, v, best[o])
      win[o] = np.where(better, n, win[o])
  for block_elements in (1 << 24, 7 * (k + 1) * c):  # one block; blocks of 7 rows (37 -> padded)
    monkeypatch.setattr(reference, "POOL_BLOCK_ELEMENTS", block_elements)
    got_best, got_win = reference._running_max(jnp.asarray(x), jnp.asarray(out_map))
    np.testing.assert_array_equal(np.asarray(got_best), best)
    np.testing.assert_array_equal(np.asarray(got_win), win)
  np.testing.assert_array_equal(
      np.asarray(reference._max_over_offsets(jnp.asarray(x), jnp.asarray(out_map))), best)


def test_matmul_scatter_custom_vjp_equals_autodiff():
  """The blocked custom VJP equals autodiff of the same sums (the offset-chunk path, plain
  autodiff), with garbage in the inactive tail rows receiving no gradient, under shard_map too."""
  rng = np.random.default_rng(12)
  x, occ = random_dense(rng, 3, (7, 6, 8), 3, 0.3)
  capacity = next(n for n in range(int(occ.sum()) + 300, 10**5) if all(n % d for d in range(2, n)))
  st = sp.from_dense(jnp.asarray(x), capacity)  # prime: the last row block is padded
  garbage = st.features + jnp.asarray(~np.asarray(st.mask)[:, None] * 5.0, jnp.float32)
  w = jnp.asarray(rng.normal(size=(27, 3, 4)), jnp.float32)
  kmap = km.build_conv_map(st.coords, st.spatial_shape, 3, (3, 3, 3), (1, 1, 1), (1, 1, 1),
                           (1, 1, 1), 900)
  r = jnp.asarray(rng.normal(size=(900, 4)), jnp.float32)

  def loss(feats, kernel, in_map, chunk):
    return jnp.sum(sp.matmul_scatter(feats, in_map, kernel, 900, max_chunk_elements=chunk) * r)

  grad = jax.grad(loss, argnums=(0, 1))
  blocked = grad(garbage, w, kmap.in_map, 27 * 4 * 40)  # custom VJP, blocks of 40 rows
  chunked = grad(garbage, w, kmap.in_map, 1000)  # offset chunks (9 rows < MIN_BLOCK_ROWS)
  for a, b in zip(blocked, chunked):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-4)
  assert not np.any(np.asarray(blocked[0])[~np.asarray(st.mask)])
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  P = jax.sharding.PartitionSpec
  sharded = jax.jit(jax.shard_map(lambda f, k, m: grad(f, k, m, 27 * 4 * 40), mesh=mesh,
                                  in_specs=(P("data"), P(), P("data")),
                                  out_specs=(P("data"), P())))
  for a, b in zip(sharded(garbage, w, kmap.in_map), blocked):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_chunked_ops_run_inside_shard_map():
  """The trainer runs models under ``jax.shard_map``, where features are device-varying:
  chunked scans must accept them (regression: a fresh zeros carry is not varying)."""
  rng = np.random.default_rng(8)
  x, _ = random_dense(rng, 2, (8, 8, 8), 3, 0.3)
  st = sp.from_dense(jnp.asarray(x), 400)
  w = jnp.asarray(rng.normal(size=(27, 3, 4)), jnp.float32)
  kmap = km.build_conv_map(st.coords, st.spatial_shape, 2, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 600)
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  P = jax.sharding.PartitionSpec

  def run(features, out_map, in_map, kernel):
    conv = sp.gather_matmul(features, out_map, kernel, max_chunk_elements=600 * 3 * 5)
    pooled = sp.gather_max(features, out_map, max_chunk_elements=600 * 3 * 4)
    scattered = sp.matmul_scatter(features, in_map, kernel, 600, max_chunk_elements=27 * 4 * 100)
    return conv, pooled, scattered

  sharded = jax.jit(jax.shard_map(run, mesh=mesh, in_specs=(P("data"), P("data"), P("data"), P()),
                                  out_specs=(P("data"), P("data"), P("data"))))
  conv, pooled, scattered = sharded(st.features, kmap.out_map, kmap.in_map, w)
  ref_conv, ref_pooled, ref_scattered = run(st.features, kmap.out_map, kmap.in_map, w)
  np.testing.assert_allclose(np.asarray(conv), np.asarray(ref_conv), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(pooled), np.asarray(ref_pooled))
  np.testing.assert_allclose(np.asarray(scattered), np.asarray(ref_scattered), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Gradients (float64).

@pytest.fixture
def x64():
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", previous)


# Every op here is linear (conv) or piecewise linear (max) in each argument, so central differences in
# float64 are exact up to rounding, ~1e-16 * |f| / eps ~ 1e-10 with eps = 1e-6: 1e-6 tolerances leave
# room while catching any wrong gradient (errors of O(1)).
GRAD_TOL = dict(atol=1e-6, rtol=1e-6, eps=1e-6)


def _grad_setup(seed):
  rng = np.random.default_rng(seed)
  x, occ = random_dense(rng, 2, (6, 5, 7), 2, 0.35)
  st = sp.from_dense(jnp.asarray(x, jnp.float64), int(occ.sum()) + 3)
  assert st.features.dtype == jnp.float64
  return rng, st


@pytest.mark.parametrize("compute", ["gather_first", "matmul_gather"])
def test_sparse_conv_grads(x64, compute):
  rng, st = _grad_setup(1)
  w = jnp.asarray(rng.normal(size=(3, 2, 3, 2, 3)))
  b = jnp.asarray(rng.normal(size=(3,)))

  def f(feats, kernel, bias):
    out = sp.sparse_conv(st.replace(features=feats), kernel, bias, strides=(2, 1, 2), padding=1,
                         out_capacity=200, compute=compute, max_chunk_elements=400)
    return out.features

  check_grads(f, (st.features, w, b), order=1, modes=("rev", "fwd"), **GRAD_TOL)


def test_space_to_depth_conv_grads(x64):
  rng, st = _grad_setup(5)
  w = jnp.asarray(rng.normal(size=(4, 2, 2, 2, 3)))  # k (4, 2, 2) / s (2, 1, 2): space-to-depth

  def f(feats, kernel):
    return sp.sparse_conv(st.replace(features=feats), kernel, None, strides=(2, 1, 2), padding=1,
                          out_capacity=200, max_chunk_elements=400).features

  check_grads(f, (st.features, w), order=1, modes=("rev", "fwd"), **GRAD_TOL)


@pytest.mark.parametrize("compute", ["matmul_scatter", "gather_first"])
def test_subm_conv_grads(x64, compute):
  rng, st = _grad_setup(2)
  w = jnp.asarray(rng.normal(size=(3, 3, 3, 2, 2)))

  def f(feats, kernel):
    return sp.subm_conv(st.replace(features=feats), kernel, None, compute=compute).features

  # matmul_scatter's gradient is a custom VJP (reverse mode only; checked against finite
  # differences here and against autodiff's in test_matmul_scatter_custom_vjp_equals_autodiff).
  modes = ("rev",) if compute == "matmul_scatter" else ("rev", "fwd")
  check_grads(f, (st.features, w), order=1, modes=modes, **GRAD_TOL)


def test_max_pool_grads(x64):
  _, st = _grad_setup(3)

  def f(feats):
    return sp.sparse_max_pool(st.replace(features=feats), 2, strides=2, padding=1,
                              out_capacity=120).features

  check_grads(f, (st.features,), order=1, modes=("rev", "fwd"), **GRAD_TOL)


def test_inactive_rows_do_not_contribute():
  """Garbage in inactive rows changes nothing and receives exactly zero gradient."""
  rng = np.random.default_rng(4)
  x, occ = random_dense(rng, 2, (6, 6, 6), 2, 0.3)
  st = sp.from_dense(jnp.asarray(x), int(occ.sum()) + 10)
  mask = np.asarray(st.mask)
  assert (~mask).sum() == 10
  garbage = st.features + jnp.asarray(~mask[:, None] * rng.normal(size=st.features.shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 3, 2, 3)), jnp.float32)

  def loss(feats, kernel):
    s = st.replace(features=feats)
    a = sp.sparse_conv(s, kernel, None, strides=2, padding=1, out_capacity=150).features
    b = sp.subm_conv(s, kernel, None).features
    c = sp.sparse_max_pool(s, 2, out_capacity=150).features
    return jnp.sum(a ** 2) + jnp.sum(jnp.sin(b)) + jnp.sum(c ** 3)

  np.testing.assert_allclose(float(loss(garbage, w)), float(loss(st.features, w)), rtol=1e-6)
  g = jax.grad(loss)(garbage, w)
  assert np.all(np.asarray(g)[~mask] == 0)
  assert np.any(np.asarray(g)[mask] != 0)


# ------------------------------------------------------------------------------------------------
# Layers, jit, capacities.

class _Chain(nn.Module):
  cap: int = 400

  @nn.compact
  def __call__(self, st):
    st = sp.SubMConv3d(4, 3)(st).map_features(nn.relu)
    st = sp.SparseConv3d(5, (3, 2, 3), strides=2, padding=1, out_capacity=self.cap)(st)
    st = st.map_features(nn.relu)
    st = sp.SparseMaxPool3d(2, out_capacity=self.cap)(st)
    return sp.ToDense()(st), st.overflow


def test_layers_chain_jits():
  rng = np.random.default_rng(5)
  x, _ = random_dense(rng, 3, (9, 8, 10), 2, 0.2)
  st = sp.from_dense(jnp.asarray(x), 200)
  model = _Chain()
  params = model.init(jax.random.key(0), st)
  shapes = jax.tree_util.tree_map(jnp.shape, params["params"])
  assert shapes["SubMConv3d_0"] == {"kernel": (3, 3, 3, 2, 4), "bias": (4,)}
  assert shapes["SparseConv3d_0"] == {"kernel": (3, 2, 3, 4, 5), "bias": (5,)}
  dense, overflow = jax.jit(model.apply)(params, st)
  assert dense.shape == (3, 2, 2, 2, 5) and int(overflow) == 0
  # Same chain through the functional forms, op by op.
  p = params["params"]
  h = sp.subm_conv(st, p["SubMConv3d_0"]["kernel"], p["SubMConv3d_0"]["bias"]).map_features(nn.relu)
  h = sp.sparse_conv(h, p["SparseConv3d_0"]["kernel"], p["SparseConv3d_0"]["bias"], strides=2, padding=1,
                     out_capacity=400).map_features(nn.relu)
  want = sp.to_dense(sp.sparse_max_pool(h, 2, out_capacity=400))
  np.testing.assert_allclose(np.asarray(dense), np.asarray(want), rtol=1e-5, atol=1e-6)
  assert np.any(np.asarray(dense) > 0)
  grads = jax.jit(jax.grad(lambda q: jnp.sum(model.apply(q, st)[0] ** 2)))(params)
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
  assert np.any(np.asarray(grads["params"]["SubMConv3d_0"]["kernel"]) != 0)


def test_capacity_overflow_is_an_error():
  rng = np.random.default_rng(6)
  x, occ = random_dense(rng, 4, (8, 8, 8), 1, 0.3)
  st = sp.from_dense(jnp.asarray(x), int(occ.sum()))
  need = int(dense_sites(jnp.asarray(occ), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1)).sum())
  layer = sp.SparseConv3d(2, 3, strides=2, padding=1, out_capacity=need - 7)
  with pytest.raises(sp.CapacityOverflowError,
                     match=rf"SparseConv3d.*: {need} output sites exist but out_capacity={need - 7}"):
    layer.init(jax.random.key(0), st)
  params = sp.SparseConv3d(2, 3, strides=2, padding=1, out_capacity=need).init(jax.random.key(0), st)
  out = jax.jit(layer.apply)(params, st)
  assert int(out.overflow) == 7 and int(out.num_active) == need - 7
  sp.check_overflow(st, "input")  # no overflow: no error
  with pytest.raises(sp.CapacityOverflowError, match="after conv.*7"):
    sp.check_overflow(out, "after conv")
  with pytest.raises(sp.CapacityOverflowError, match="from_dense"):
    sp.from_dense(jnp.asarray(x), int(occ.sum()) - 1)
  # Overflow accumulates over layers under jit.
  pooled = jax.jit(functools.partial(sp.sparse_max_pool, kernel_size=2, out_capacity=3))(out)
  assert int(pooled.overflow) > 7


def test_default_capacity_never_overflows():
  rng = np.random.default_rng(8)
  x, occ = random_dense(rng, 2, (7, 7, 7), 1, 0.6)
  st = sp.from_dense(jnp.asarray(x), int(occ.sum()))
  out = sp.sparse_conv(st, jnp.ones((3, 3, 3, 1, 1)), strides=1, padding=1)
  assert out.capacity == min(st.capacity * 27, 2 * 7 ** 3) and int(out.overflow) == 0
  pooled = sp.sparse_max_pool(st, 2)
  assert pooled.capacity == st.capacity and int(pooled.overflow) == 0
