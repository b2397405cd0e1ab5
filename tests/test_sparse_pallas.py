"""Pallas sparse kernels (interpret mode on CPU) against the XLA reference and dense `lax` oracles.

What runs here: every kernel in the Pallas interpreter (sequential programs, exact atomics), the
rulebooks compared entry for entry with `kernel_map`, forward values against dense convolutions,
gradients against autodiff of the XLA reference and by finite differences, bf16, the TPC paper's
trunk (arXiv 2403.15949) with both backends, and the Triton lowering of every kernel for CUDA (which
needs no GPU). What cannot run here: PTX compilation, concurrent programs and GPU timing
(scripts/gpu_sparse_check.py).

Shapes are bucketed (fixed capacities) so that the interpreter compiles each kernel only a few times.
"""

from __future__ import annotations

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
from recoil_jax.ops.sparse.pallas import conv, dispatch, maxpool, rulebook
from recoil_jax.ops.sparse.pallas import hash as hashing

DN = ("NDHWC", "DHWIO", "NDHWC")
IN_CAP = 64  # input rows of every random case
OUT_CAP = 256  # output rows of every regular conv / pool case
EMPTY = hashing.EMPTY


# ------------------------------------------------------------------------------------------------
# Dense oracles and random inputs.

def dense_conv(x, w, strides, padding, dilation):
  return lax.conv_general_dilated(x, w, strides, [(p, p) for p in padding], rhs_dilation=dilation,
                                  dimension_numbers=DN, precision=lax.Precision.HIGHEST)


def dense_sites(occ, ks, ss, ps, ds):
  """Output sites of a regular sparse conv: dense conv of the occupancy mask > 0."""
  ones = jnp.ones(tuple(ks) + (1, 1), jnp.float32)
  return np.asarray(dense_conv(jnp.asarray(occ, jnp.float32)[..., None], ones, ss, ps, ds)[..., 0] > 0)


def dense_max_pool(x, ks, ss, ps, ds):
  y = lax.reduce_window(x, -jnp.inf, lax.max, (1,) + tuple(ks) + (1,), (1,) + tuple(ss) + (1,),
                        [(0, 0)] + [(p, p) for p in ps] + [(0, 0)], window_dilation=(1,) + tuple(ds) + (1,))
  return np.asarray(jnp.maximum(y, 0))


def active_of(st):
  ones = st.with_features(jnp.ones((st.capacity, 1), jnp.float32))
  return np.asarray(sp.to_dense(ones)[..., 0] > 0)


def random_case(seed, *, subm=False, pool=False, max_kernel=6):
  """Random (rng, occ, ks, ss, ps, ds): 2-3 events, event 0 empty, event 1 a single site,
  <= IN_CAP input and 8..OUT_CAP output sites."""
  rng = np.random.default_rng(seed)
  while True:
    shape = tuple(int(v) for v in rng.integers(4, 10, size=3))
    if subm:
      ks = tuple(int(v) for v in rng.choice([1, 3, 5], size=3))
      ss, ps = (1, 1, 1), (0, 0, 0)
    else:
      ks = tuple(int(v) for v in rng.integers(1, max_kernel + 1, size=3))
      ss = tuple(int(v) for v in rng.choice([1, 1, 2, 2, 3], size=3))
      ps = tuple(int(v) for v in rng.integers(0, 3, size=3))
    ds = tuple(int(v) for v in rng.choice([1, 1, 2], size=3))
    try:
      km.conv_output_shape(shape, ks, ss, ps, ds)
    except ValueError:
      continue
    if pool and any(p > (k - 1) * d for p, k, d in zip(ps, ks, ds)):
      continue  # a window entirely in the padding has no dense counterpart
    batch = int(rng.integers(2, 4))
    occ = rng.random((batch,) + shape) < rng.uniform(0.05, 0.3)
    occ[0] = False
    occ[1] = False
    occ[1][tuple(rng.integers(0, s) for s in shape)] = True
    if not 8 <= occ.sum() <= IN_CAP:
      continue
    if not subm and not 8 <= dense_sites(occ, ks, ss, ps, ds).sum() <= OUT_CAP:
      continue
    return rng, occ, ks, ss, ps, ds


def features_for(rng, occ, channels):
  return (rng.normal(size=occ.shape + (channels,)) * occ[..., None]).astype(np.float32)


def assert_maps_equal(want: km.KernelMap, got: km.KernelMap, msg: str):
  names = ("out_coords", "out_map", "in_map", "num_sites", "overflow")
  for name in names:
    a, b = getattr(want, name), getattr(got, name)
    assert (a is None) == (b is None), f"{msg}: {name}"
    if a is not None:
      np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=f"{msg}: {name}")


# ------------------------------------------------------------------------------------------------
# Hash table.

def test_hash_table_content_lookup_and_order_independence():
  rng = np.random.default_rng(0)
  keys = rng.integers(0, 400, size=300).astype(np.int32)  # many duplicates
  keys[::17] = EMPTY  # "no key" entries are skipped
  bits = hashing.table_bits(keys.shape[0])
  table = np.asarray(hashing.insert_keys(jnp.asarray(keys), bits=bits, interpret=True))
  distinct = np.unique(keys[keys != EMPTY])
  stored = table[table != EMPTY]
  np.testing.assert_array_equal(np.sort(stored), distinct)  # each distinct key exactly once
  # Ordered-table invariant: every slot between a key's home and its slot holds a smaller key.
  size, home = table.shape[0], np.asarray(hashing.home_slot(jnp.asarray(table), bits))
  for slot in np.flatnonzero(table != EMPTY):
    s = home[slot]
    while s != slot:
      assert table[s] < table[slot], (slot, s)
      s = (s + 1) % size
  # Any insertion order gives the same table: the interpreter's sequential order stands for every
  # interleaving of concurrent GPU inserts.
  for order in (keys[::-1], rng.permutation(keys)):
    np.testing.assert_array_equal(
        np.asarray(hashing.insert_keys(jnp.asarray(order), bits=bits, interpret=True)), table)
  # Values and lookups (present, absent, negative and EMPTY queries).
  ht = hashing.build_table(jnp.asarray(distinct), interpret=True)
  queries = np.concatenate([distinct, rng.integers(-50, 600, size=200).astype(np.int32), [EMPTY]])
  got = np.asarray(hashing.lookup(ht, jnp.asarray(queries.astype(np.int32)), interpret=True))
  row = {int(k): i for i, k in enumerate(distinct)}
  np.testing.assert_array_equal(got, [row.get(int(q), -1) if q != EMPTY else -1 for q in queries])


def test_hash_table_wraparound_and_full_load():
  bits = 4  # 16 slots
  size = 1 << bits
  cands = np.arange(0, 20000, dtype=np.int32)
  homes = np.asarray(hashing.home_slot(jnp.asarray(cands), bits))
  last = cands[homes == size - 1][:6]  # six keys whose home is the last slot: they wrap to 0..4
  others = cands[(homes >= 2) & (homes < 12)][:9]
  keys = np.concatenate([last, others])  # 15 keys in 16 slots: a single free slot
  table = np.asarray(hashing.insert_keys(jnp.asarray(keys), bits=bits, interpret=True))
  assert (table == EMPTY).sum() == 1 and table[size - 1] != EMPTY and table[0] != EMPTY
  np.testing.assert_array_equal(np.sort(table[table != EMPTY]), np.sort(keys))
  ht = hashing.HashTable(keys=jnp.asarray(table),
                         values=hashing.set_values(jnp.asarray(table), jnp.asarray(keys),
                                                   jnp.arange(15, dtype=jnp.int32), interpret=True))
  queries = np.concatenate([keys, cands[~np.isin(cands, keys)][:40]])
  got = np.asarray(hashing.lookup(ht, jnp.asarray(queries), interpret=True))
  np.testing.assert_array_equal(got, np.concatenate([np.arange(15), -np.ones(40, int)]))


# ------------------------------------------------------------------------------------------------
# Rulebooks: identical to kernel_map. The geometries are those of the forward cases below, so that
# the interpreter compiles the rulebook kernels once for both tests.

# (seed, C_in, C_out): the rank-1 path (C_in <= 4) and the dot path, channel padding; more cases slow.
# 100: strided, K = 36; 104: unit stride, dilated, K = 24; slow: K = 40, 80 (stride 3), 60.
CONV_CASES = [(100, 1, 3), (104, 18, 4)] + [
    pytest.param(*c, marks=pytest.mark.slow) for c in ((102, 5, 2), (105, 2, 17), (107, 3, 33))]


# ------------------------------------------------------------------------------------------------
# Forward: Pallas vs dense oracles and vs the XLA path.

def _conv_inputs(rng, occ, ks, c_in, c_out):
  x = features_for(rng, occ, c_in)
  w = rng.normal(size=tuple(ks) + (c_in, c_out)).astype(np.float32)
  bias = rng.normal(size=(c_out,)).astype(np.float32)
  return x, w, bias


@pytest.mark.parametrize("seed,c_in,c_out", CONV_CASES)
def test_sparse_conv_and_rulebook_match_dense_and_xla(seed, c_in, c_out):
  rng, occ, ks, ss, ps, ds = random_case(seed)
  x, w, bias = _conv_inputs(rng, occ, ks, c_in, c_out)
  sites = dense_sites(occ, ks, ss, ps, ds)
  want = np.where(sites[..., None], np.asarray(dense_conv(jnp.asarray(x), jnp.asarray(w), ss, ps, ds)) + bias, 0)
  st = sp.from_dense(jnp.asarray(x), IN_CAP)
  case = f"k={ks} s={ss} p={ps} d={ds} c={c_in}->{c_out}"
  # The rulebook, entry for entry (the same call as inside the op below: compiled once).
  geometry = (st.coords, st.spatial_shape, occ.shape[0], ks, ss, ps, ds, OUT_CAP)
  kmap = km.build_conv_map(*geometry, build_in_map=True)
  assert_maps_equal(kmap, rulebook.build_conv_map(*geometry, build_in_map=True, interpret=True), case)
  # As in kernel_map, the transposed map is built by default only for unit strides.
  default = rulebook.build_conv_map(*geometry, interpret=True)
  assert (default.in_map is None) == (ss != (1, 1, 1)), case
  out = dispatch.sparse_conv(st, jnp.asarray(w), jnp.asarray(bias), strides=ss, padding=ps,
                             dilation=ds, out_capacity=OUT_CAP, backend="pallas", interpret=True)
  ref = reference.conv_compute(st.features, kmap, jnp.asarray(w).reshape(-1, c_in, c_out)) + bias
  np.testing.assert_array_equal(active_of(out), sites, err_msg=case)
  # float32, <= 6^3 * 18 products of O(1) numbers: 1e-4 is ~10^3 ulps of the largest sums.
  np.testing.assert_allclose(np.asarray(sp.to_dense(out)), want, rtol=1e-4, atol=1e-4, err_msg=case)
  active = np.asarray(out.mask)
  np.testing.assert_allclose(np.asarray(out.features)[active], np.asarray(ref)[active], rtol=1e-4,
                             atol=1e-4, err_msg=case)


def test_conv_rulebook_overflow():
  """Too small a capacity keeps the lowest output keys and counts the rest, as kernel_map does.
  (Capacity IN_CAP on the geometry of a forward case: most kernels are already compiled.)"""
  rng, occ, ks, ss, ps, ds = random_case(104)
  st = sp.from_dense(jnp.asarray(features_for(rng, occ, 1)), IN_CAP)
  need = int(dense_sites(occ, ks, ss, ps, ds).sum())
  assert need > IN_CAP
  geometry = (st.coords, st.spatial_shape, occ.shape[0], ks, ss, ps, ds, IN_CAP)
  got = rulebook.build_conv_map(*geometry, build_in_map=True, interpret=True)
  assert_maps_equal(km.build_conv_map(*geometry, build_in_map=True), got, f"k={ks} s={ss} overflow")
  assert int(got.num_sites) == need and int(got.overflow) == need - IN_CAP


@pytest.mark.parametrize("seed", [200, pytest.param(201, marks=pytest.mark.slow)])
def test_subm_conv_and_rulebook_match(seed):
  rng, occ, ks, _, _, ds = random_case(seed, subm=True)
  x, w, bias = _conv_inputs(rng, occ, ks, 3, 4)
  pads = tuple(d * (k - 1) // 2 for k, d in zip(ks, ds))  # SAME for odd kernels
  want = np.where(occ[..., None], np.asarray(dense_conv(jnp.asarray(x), jnp.asarray(w), (1, 1, 1), pads, ds)) + bias, 0)
  st = sp.from_dense(jnp.asarray(x), IN_CAP)
  assert_maps_equal(km.build_subm_map(st.coords, st.spatial_shape, occ.shape[0], ks, ds),
                    rulebook.build_subm_map(st.coords, st.spatial_shape, occ.shape[0], ks, ds,
                                            interpret=True), f"subm k={ks} d={ds}")
  out = dispatch.subm_conv(st, jnp.asarray(w), jnp.asarray(bias), dilation=ds, backend="pallas",
                           interpret=True)
  np.testing.assert_array_equal(np.asarray(out.coords), np.asarray(st.coords))
  np.testing.assert_allclose(np.asarray(sp.to_dense(out)), want, rtol=1e-4, atol=1e-4,
                             err_msg=f"k={ks} d={ds}")


@pytest.mark.parametrize("seed", [300, pytest.param(302, marks=pytest.mark.slow)])
def test_max_pool_matches_dense(seed):
  rng, occ, ks, ss, ps, ds = random_case(seed, pool=True, max_kernel=3)
  x = features_for(rng, occ, 3)
  sites = dense_sites(occ, ks, ss, ps, ds)
  want = np.where(sites[..., None], dense_max_pool(jnp.asarray(x), ks, ss, ps, ds), 0)
  st = sp.from_dense(jnp.asarray(x), IN_CAP)
  out = dispatch.sparse_max_pool(st, ks, strides=ss, padding=ps, dilation=ds, out_capacity=OUT_CAP,
                                 backend="pallas", interpret=True)
  np.testing.assert_array_equal(active_of(out), sites)
  np.testing.assert_array_equal(np.asarray(sp.to_dense(out)), want)  # max is exact


# ------------------------------------------------------------------------------------------------
# Gradients.

class _Chain(nn.Module):
  """SubM conv -> ReLU -> strided conv -> ReLU -> max pool, through the layers' ``backend``."""
  geometry: tuple
  backend: str
  interpret: bool = False

  @nn.compact
  def __call__(self, st):
    ks, ss, ps, ds, pool = self.geometry
    kw = dict(backend=self.backend, interpret=self.interpret)
    st = sp.SubMConv3d(18, 3, **kw)(st).map_features(nn.relu)
    st = sp.SparseConv3d(4, ks, strides=ss, padding=ps, dilation=ds, out_capacity=OUT_CAP, **kw)(st)
    st = sp.SparseMaxPool3d(pool, out_capacity=OUT_CAP, **kw)(st.map_features(nn.relu))
    return st.features, st.overflow


def test_layers_pallas_equal_xla_with_gradients():
  """Flax layers with backend="pallas" (interpret) vs "xla": outputs, parameter and input gradients
  (the custom VJPs: dX through the transposed rulebook, dW, max-pool routing); garbage in inactive
  input rows changes nothing and gets zero gradient."""
  rng, occ, ks, ss, ps, ds = random_case(104)  # the geometry of a forward case: kernels are cached
  x = features_for(rng, occ, 18)
  st = sp.from_dense(jnp.asarray(x), IN_CAP)
  mask = np.asarray(st.mask)
  garbage = st.features + jnp.asarray(~mask[:, None] * rng.normal(size=st.features.shape), jnp.float32)
  pool = tuple(min(2, o) for o in km.conv_output_shape(occ.shape[1:], ks, ss, ps, ds))
  geometry = (ks, ss, ps, ds, pool)
  models = {"pallas": _Chain(geometry, "pallas", True), "xla": _Chain(geometry, "xla")}
  shapes = jax.eval_shape(models["xla"].init, jax.random.key(0), st)
  params = jax.tree_util.tree_map(  # NumPy draws: the initialisers would only cost compiles
      lambda t: jnp.asarray(rng.normal(size=t.shape) / np.sqrt(np.prod(t.shape[:-1])), t.dtype), shapes)
  g = jnp.asarray(rng.normal(size=(OUT_CAP, 4)), jnp.float32)

  def loss(p, feats, backend):
    out, overflow = models[backend].apply(p, st.replace(features=feats))
    return jnp.sum(out * g), overflow

  results = {b: jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, garbage, b)
             for b in ("pallas", "xla")}
  (val, overflow), grads = results["pallas"]
  (val_ref, _), grads_ref = results["xla"]
  assert int(overflow) == 0
  np.testing.assert_allclose(float(val), float(val_ref), rtol=1e-5)
  np.testing.assert_allclose(float(loss(params, st.features, "pallas")[0]), float(val), rtol=1e-6)
  flat, flat_ref = jax.tree_util.tree_leaves_with_path(grads), jax.tree_util.tree_leaves(grads_ref)
  for (path, a), b in zip(flat, flat_ref):
    assert np.any(np.asarray(b) != 0), path
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4, err_msg=str(path))
  dx = np.asarray(grads[1])
  assert np.all(dx[~mask] == 0) and np.any(dx[mask] != 0)


@pytest.fixture
def x64():
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", previous)


def test_check_grads_tiny(x64):
  """Finite differences in float64 (the ops are piecewise linear: 1e-6 tolerances are loose)."""
  rng = np.random.default_rng(7)
  occ = np.zeros((2, 4, 4, 3), bool)
  occ[0, 1:3, 1, 0:2] = True
  occ[1, 2, 3, 2] = True
  st = sp.from_dense(jnp.asarray(features_for(rng, occ, 2), jnp.float64), 8)
  kmap = km.build_conv_map(st.coords, st.spatial_shape, 2, (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1),
                           32, build_in_map=True)
  w = jnp.asarray(rng.normal(size=(8, 2, 3)))
  conv_fn = lambda f, k: conv.conv_features(f, k, kmap.out_map, kmap.in_map, True)  # noqa: E731
  pool_fn = lambda f: maxpool.max_pool_features(f, kmap.out_map, kmap.in_map, True)  # noqa: E731
  check_grads(conv_fn, (st.features, w), order=1, modes=("rev",), atol=1e-6, rtol=1e-6, eps=1e-6)
  check_grads(pool_fn, (st.features,), order=1, modes=("rev",), atol=1e-6, rtol=1e-6, eps=1e-6)


# ------------------------------------------------------------------------------------------------
# bfloat16.

def test_bf16_inputs_accumulate_in_fp32():
  rng, occ, ks, ss, ps, ds = random_case(104)  # a forward case's geometry: its map is compiled
  x, w, _ = _conv_inputs(rng, occ, ks, 20, 16)
  st = sp.from_dense(jnp.asarray(x), IN_CAP)
  kmap = km.build_conv_map(st.coords, st.spatial_shape, occ.shape[0], ks, ss, ps, ds, OUT_CAP,
                           build_in_map=True)
  flat = jnp.asarray(w).reshape(-1, 20, 16)
  out = conv.conv_features(st.features.astype(jnp.bfloat16), flat.astype(jnp.bfloat16), kmap.out_map,
                           kmap.in_map, True)
  assert out.dtype == jnp.bfloat16
  want = reference.gather_matmul(st.features, kmap.out_map, flat)
  scale = reference.gather_matmul(jnp.abs(st.features), kmap.out_map, jnp.abs(flat))  # sum |x||w|
  # bf16 has an 8-bit significand (unit roundoff u = 2^-8): each product carries two input roundings,
  # <= (2u + u^2)|x||w|; the fp32 sum adds ~1e-7 relative; the bf16 output rounding adds u|out|.
  # (A bf16 accumulator would add up to u per partial sum, K*C_in of them.)
  err = np.abs(np.asarray(out, np.float32) - np.asarray(want))
  bound = 1.01 * 2.0 ** -7 * np.asarray(scale) + 2.0 ** -8 * np.abs(np.asarray(want)) + 1e-6
  assert np.all(err <= bound), float(np.max(err / bound))
  assert np.any(err > 0)  # really computed in bf16
  # Gradients keep the input dtypes.
  dx, dw = jax.grad(lambda f, k: jnp.sum(conv.conv_features(f, k, kmap.out_map, kmap.in_map, True)
                                         .astype(jnp.float32)), (0, 1))(
      st.features.astype(jnp.bfloat16), flat.astype(jnp.bfloat16))
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
  # With dY = 1 (exact in bf16), dW_k = sum of gathered x and dX = sum of W rows: one input
  # rounding per term (u * sum of |terms|) plus the output rounding (u |result|).
  ref_grad = lambda f, k: jax.grad(  # noqa: E731
      lambda f, k: jnp.sum(reference.gather_matmul(f, kmap.out_map, k)), (0, 1))(f, k)
  dx_ref, dw_ref = ref_grad(st.features, flat)
  dx_scale, dw_scale = ref_grad(jnp.abs(st.features), jnp.abs(flat))
  for got, ref, scale in ((dx, dx_ref, dx_scale), (dw, dw_ref, dw_scale)):
    err = np.abs(np.asarray(got, np.float32) - np.asarray(ref))
    bound = 1.01 * 2.0 ** -8 * (np.asarray(scale) + np.abs(np.asarray(ref))) + 1e-6
    assert np.all(err <= bound), float(np.max(err / bound))


# ------------------------------------------------------------------------------------------------
# The TPC paper's trunk (arXiv 2403.15949) with both backends.

TRUNK_CAPS = (256, 64, 416, 896, 176)  # per event; measured need on the tracks below (238, 50, 390, 854, 164)


def _tiny_tracks_and_trunk():
  """Two tiny random-walk tracks near the centre of the 120^3 grid, the paper trunk and its params
  (drawn with NumPy: the initialisers would cost compiles, not test anything)."""
  from recoil_jax.studies.tpc import model as tpc_model
  rng = np.random.default_rng(9)
  v = 24
  coords = np.zeros((2, v, 3), np.int32)
  charges = np.zeros((2, v), np.float32)
  for b in range(2):
    steps = np.cumsum(rng.integers(-1, 2, size=(v, 3)) + np.array([1, 0, 0]) * (b + 1), axis=0)
    coords[b] = np.clip(60 + steps, 0, 119)
    charges[b] = rng.uniform(1, 30, size=v)
  args = (jnp.asarray(coords), jnp.asarray(charges), jnp.array([v, v - 7], jnp.int32))
  trunk = tpc_model.SparseTrunk(tpc_model.TRUNKS["paper"], capacity_per_event=TRUNK_CAPS)
  shapes = jax.eval_shape(trunk.init, jax.random.key(0), *args)
  params = jax.tree_util.tree_map(
      lambda t: jnp.asarray(rng.normal(size=t.shape) / np.sqrt(np.prod(t.shape[:-1])), t.dtype), shapes)
  return rng, args, trunk, params


@pytest.mark.slow
def test_paper_trunk_pallas_equals_xla():
  """The paper trunk (k6/s2 conv, pool, k4 conv, k3 conv, pool on 120^3) on two tiny tracks: the
  Flax module's outputs and parameter gradients with each backend, selected by `use_backend`."""
  rng, args, trunk, params = _tiny_tracks_and_trunk()
  g = jnp.asarray(rng.normal(size=(2, 12 ** 3 * 20)), jnp.float32)

  def loss(p):
    dense, overflow = trunk.apply(p, *args)
    return jnp.sum(dense * g), (dense, overflow)

  with dispatch.use_backend("pallas", interpret=True):
    (val, (dense, overflow)), grads = jax.value_and_grad(loss, has_aux=True)(params)
  with dispatch.use_backend("xla"):
    (val_ref, (dense_ref, _)), grads_ref = jax.value_and_grad(loss, has_aux=True)(params)
  assert int(overflow) == 0 and np.count_nonzero(np.asarray(dense_ref)) > 20
  np.testing.assert_allclose(np.asarray(dense), np.asarray(dense_ref), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(float(val), float(val_ref), rtol=1e-4)
  for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads_ref)):
    scale = float(np.max(np.abs(np.asarray(b)))) + 1e-6
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-4 * scale)
    assert np.any(np.asarray(b) != 0)


@pytest.mark.slow
def test_paper_trunk_layer_by_layer():
  """The same trunk op by op: rulebooks entry for entry, sites and features after every layer."""
  from recoil_jax.studies.tpc import model as tpc_model
  _, args, _, params = _tiny_tracks_and_trunk()
  st = sp.from_padded_voxels(args[0], args[1][..., None], args[2], tpc_model.GRID_SHAPE)
  h = {"xla": st, "pallas": st}
  for i, ((kind, _, k, s), cap) in enumerate(zip(tpc_model.TRUNKS["paper"], TRUNK_CAPS)):
    cur = h["xla"]
    geometry = (cur.coords, cur.spatial_shape, 2, (k,) * 3, (s,) * 3, (0,) * 3, (1,) * 3, 2 * cap)
    assert_maps_equal(km.build_conv_map(*geometry, build_in_map=True),
                      rulebook.build_conv_map(*geometry, build_in_map=True, interpret=True),
                      f"layer {i} ({kind} k{k} s{s})")
    for backend in h:
      kw = dict(strides=s, out_capacity=2 * cap, backend=backend, interpret=backend == "pallas")
      if kind == "conv":
        layer = params["params"][f"conv{i}"]
        h[backend] = dispatch.sparse_conv(h[backend], layer["kernel"], layer["bias"], **kw).map_features(
            jax.nn.relu)
      else:
        h[backend] = dispatch.sparse_max_pool(h[backend], k, **kw)
    np.testing.assert_array_equal(np.asarray(h["pallas"].coords), np.asarray(h["xla"].coords))
    np.testing.assert_allclose(np.asarray(h["pallas"].features), np.asarray(h["xla"].features),
                               rtol=1e-4, atol=1e-5, err_msg=f"layer {i}")
    assert int(h["xla"].overflow) == 0


# ------------------------------------------------------------------------------------------------
# Dispatch and GPU lowering.

def test_backend_resolution_and_errors():
  assert dispatch.resolve_backend("auto") == (("pallas", False) if dispatch.on_gpu() else ("xla", False))
  assert dispatch.resolve_backend("xla") == ("xla", False)
  assert dispatch.resolve_backend("pallas", interpret=True) == ("pallas", True)
  with dispatch.use_backend("pallas", interpret=True):
    assert dispatch.resolve_backend("auto") == ("pallas", True)
    with dispatch.use_backend("xla"):
      assert dispatch.resolve_backend("auto")[0] == "xla"
    assert dispatch.resolve_backend("xla") == ("xla", False)  # explicit choices win
  with pytest.raises(ValueError, match="backend 'cuda' is not available"):
    dispatch.resolve_backend("cuda", where="layer X")
  st = sp.from_dense(jnp.zeros((1, 3, 3, 3, 1)).at[0, 1, 1, 1, 0].set(1.0), 4)
  if not dispatch.on_gpu():
    with pytest.raises(ValueError, match=r"SparseConv3d.*backend='pallas'.*needs a GPU"):
      sp.SparseConv3d(2, 3, backend="pallas").init(jax.random.key(0), st)
  with pytest.raises(ValueError, match="hash.insert_keys: expected a 1-D int32"):
    hashing.insert_keys(jnp.zeros((4,), jnp.float32), bits=4)


def test_kernels_lower_to_triton_for_cuda():
  """Every kernel (rulebooks, conv fwd/dX/dW, pool fwd/bwd) lowers through the Pallas Triton
  backend for CUDA -- power-of-two blocks, supported primitives -- without a GPU, inside
  ``shard_map`` as the trainer runs models (typed outputs; replicated weights get psum'd grads)."""
  rng = np.random.default_rng(1)
  occ = rng.random((2, 6, 5, 7)) < 0.1
  st = sp.from_dense(jnp.asarray(features_for(rng, occ, 3)), IN_CAP)
  grid = km.conv_output_shape((6, 5, 7), (3, 2, 3), (2, 1, 2), (1, 0, 1), (1, 1, 1))

  def loss(feats, kernel, coords):
    m = rulebook.build_conv_map(coords, (6, 5, 7), 2, (3, 2, 3), (2, 1, 2), (1, 0, 1), (1, 1, 1),
                                OUT_CAP, build_in_map=True)
    h = conv.conv_features(feats, kernel, m.out_map, m.in_map, False)
    s = rulebook.build_subm_map(m.out_coords, grid, 2, (3, 3, 3), (1, 1, 1))
    h = conv.conv_features(h, jnp.ones((27, 5, 4), h.dtype), s.out_map, s.in_map, False)
    p = rulebook.build_conv_map(m.out_coords, grid, 2, (2, 2, 2), (2, 2, 2), (0, 0, 0), (1, 1, 1),
                                64, build_in_map=True)
    return jnp.sum(maxpool.max_pool_features(h, p.out_map, p.in_map, False).astype(jnp.float32) ** 2)

  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  spec = jax.sharding.PartitionSpec
  step = jax.shard_map(lambda f, k, c: jax.grad(loss, (0, 1))(f, k, c), mesh=mesh,
                       in_specs=(spec("data"), spec(), spec("data")), out_specs=(spec("data"), spec()))
  names = ("sparse_hash_insert", "sparse_hash_set_values", "sparse_rulebook_lookup",
           "sparse_conv_gather_matmul", "sparse_conv_weight_grad", "sparse_max_pool",
           "sparse_max_pool_grad")
  for dtype in (jnp.float32, jnp.bfloat16):
    kernel = jnp.asarray(rng.normal(size=(18, 3, 5)), dtype)
    text = jax.jit(step).trace(st.features.astype(dtype), kernel, st.coords).lower(
        lowering_platforms=("cuda",)).as_text()
    for name in names:
      assert f'name = "{name}"' in text, (dtype, name)
