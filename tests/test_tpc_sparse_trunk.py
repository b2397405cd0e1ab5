"""The paper's sparse trunk (120^3 -> 58 -> 29 -> 26 -> 24 -> 12) against a dense implementation.

The TPC study's source paper is arXiv 2403.15949; its timing on 64 tracks is
``scripts/bench_sparse_trunk.py``, which imports the helpers of this module.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from recoil_jax.ops import sparse as sp

GRID = 120
DN = ("NDHWC", "DHWIO", "NDHWC")


def synthetic_tracks(rng: np.random.Generator, batch: int, n_voxels: int, grid: int = GRID,
                     n_steps: int = 1500):
  """Toy electron tracks: curling random walks (0.1-voxel steps) smeared by diffusion, voxelised.

  Keeps the first ``n_voxels`` distinct voxels along the walk (fewer if it leaves the grid); the
  feature is the number of deposits per voxel. Event 0 is empty. Returns coords [B, V, 3] int32,
  features [B, V, 1] float32 and num_voxels [B] int32.
  """
  coords = np.zeros((batch, n_voxels, 3), np.int32)
  feats = np.zeros((batch, n_voxels, 1), np.float32)
  num = np.zeros((batch,), np.int32)
  for b in range(1, batch):
    sigma = rng.uniform(0.32, 0.93)  # 160-466 um diffusion in 500 um voxels
    kicks = rng.normal(size=(n_steps, 3)) * np.linspace(0.03, 0.15, n_steps)[:, None]
    direction = rng.normal(size=3) + np.cumsum(kicks, axis=0) * 3
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    path = grid / 2.0 + np.cumsum(0.1 * direction, axis=0)
    pts = (path[:, None, :] + rng.normal(size=(n_steps, 4, 3)) * sigma).reshape(-1, 3)
    vox = np.floor(pts).astype(np.int64)
    vox = vox[np.all((vox >= 0) & (vox < grid), axis=1)]
    uniq, first, counts = np.unique(vox, axis=0, return_index=True, return_counts=True)
    keep = np.argsort(first)[:n_voxels]
    num[b] = len(keep)
    coords[b, :len(keep)] = uniq[keep]
    feats[b, :len(keep), 0] = counts[keep]
  return coords, feats, num


class SparseTrunk(nn.Module):
  """SparseConv3d(k6,s2) -> ReLU -> MaxPool(2) -> SparseConv3d(k4) -> ReLU -> SparseConv3d(k3)
  -> ReLU -> MaxPool(2) -> dense [B, 12, 12, 12, C3] (the paper's widths by default)."""
  channels: tuple[int, int, int] = (50, 30, 20)
  capacities: tuple[int | None, ...] = (None,) * 5
  kernel_init: sp.layers.Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, st):
    c1, c2, c3 = self.channels
    cap = self.capacities
    init = self.kernel_init
    st = sp.SparseConv3d(c1, 6, strides=2, out_capacity=cap[0], kernel_init=init)(st)
    st = sp.SparseMaxPool3d(2, out_capacity=cap[1])(st.map_features(nn.relu))
    st = sp.SparseConv3d(c2, 4, out_capacity=cap[2], kernel_init=init)(st).map_features(nn.relu)
    st = sp.SparseConv3d(c3, 3, out_capacity=cap[3], kernel_init=init)(st).map_features(nn.relu)
    st = sp.SparseMaxPool3d(2, out_capacity=cap[4])(st)
    return sp.ToDense()(st), st.overflow


def dense_conv_valid(x, w, stride):
  """Dense VALID strided conv by definition: sum over kernel offsets of strided slices @ w[k]."""
  k0, k1, k2 = w.shape[:3]
  o = [(x.shape[a + 1] - w.shape[a]) // stride + 1 for a in range(3)]
  out = 0.0
  for i in range(k0):
    for j in range(k1):
      for k in range(k2):
        sl = x[:, i:i + stride * (o[0] - 1) + 1:stride, j:j + stride * (o[1] - 1) + 1:stride,
               k:k + stride * (o[2] - 1) + 1:stride, :]
        out = out + jnp.einsum("bxyzc,cd->bxyzd", sl, w[i, j, k], precision=lax.Precision.HIGHEST)
  return out


def dense_trunk(params, x):
  """The same trunk on dense [B, 120, 120, 120, 1] input, tracking spconv's active-site sets."""
  occ = jnp.any(x != 0, axis=-1, keepdims=True).astype(jnp.float32)

  def conv(h, occ, p, stride):
    w = p["kernel"]
    if stride > 1:  # XLA's CPU 3D conv is very slow at 120^3 with one channel
      y = dense_conv_valid(h, w, stride)
    else:
      y = lax.conv_general_dilated(h, w, (1, 1, 1), "VALID", dimension_numbers=DN,
                                   precision=lax.Precision.HIGHEST)
    o = lax.reduce_window(occ, 0.0, lax.add, (1,) + w.shape[:3] + (1,), (1,) + (stride,) * 3 + (1,),
                          "VALID") > 0
    return jnp.where(o, nn.relu(y + p["bias"]), 0), o.astype(jnp.float32)

  def pool(h, occ):
    y = lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 2, 2, 1), (1, 2, 2, 2, 1), "VALID")
    o = lax.reduce_window(occ, 0.0, lax.max, (1, 2, 2, 2, 1), (1, 2, 2, 2, 1), "VALID")
    return jnp.where(o > 0, jnp.maximum(y, 0), 0), o

  h, occ = conv(x, occ, params["SparseConv3d_0"], 2)
  h, occ = pool(h, occ)
  h, occ = conv(h, occ, params["SparseConv3d_1"], 1)
  h, occ = conv(h, occ, params["SparseConv3d_2"], 1)
  h, occ = pool(h, occ)
  return h


def dense_input(coords, feats, num):
  x = np.zeros((coords.shape[0], GRID, GRID, GRID, 1), np.float32)
  for b in range(coords.shape[0]):
    c = coords[b, :num[b]]
    x[b, c[:, 0], c[:, 1], c[:, 2], 0] = feats[b, :num[b], 0]
  return x


def test_trunk_param_count_matches_the_paper():
  st = sp.from_dense(jnp.zeros((1, GRID, GRID, GRID, 1)).at[0, 60, 60, 60, 0].set(1.0), 4)
  shapes = jax.eval_shape(SparseTrunk().init, jax.random.key(0), st)
  n = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(shapes))
  # The layers of arXiv 2403.15949 (the TPC source paper): k6 1->50, k4 50->30, k3 30->20 + biases.
  assert n == (6**3 * 50 + 50) + (4**3 * 50 * 30 + 30) + (3**3 * 30 * 20 + 20) == 123_100


@pytest.mark.slow  # ~9 s; the full-width trunk against dense stays in the default suite.
def test_trunk_matches_dense_small_batch():
  rng = np.random.default_rng(0)
  coords, feats, num = synthetic_tracks(rng, 3, 250)
  assert num[0] == 0 and np.all(num[1:] > 100)
  st = sp.from_padded_voxels(coords, feats, num, (GRID,) * 3)
  # Positive kernels keep many sites alive through the ReLUs, so the comparison is not vacuous.
  model = SparseTrunk(channels=(4, 3, 2), kernel_init=nn.initializers.uniform(0.3))
  (out, overflow), params = jax.jit(model.init_with_output)(jax.random.key(1), st)
  assert out.shape == (3, 12, 12, 12, 2) and int(overflow) == 0
  want = jax.jit(dense_trunk)(params["params"], jnp.asarray(dense_input(coords, feats, num)))
  np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=1e-4, atol=1e-4)
  assert np.count_nonzero(np.asarray(want)[1:]) > 10 and not np.any(np.asarray(out)[0])


# The trunk's layers in order (Flax's automatic names), for the captured intermediates.
LAYER_NAMES = ("SparseConv3d_0", "SparseMaxPool3d_0", "SparseConv3d_1", "SparseConv3d_2",
               "SparseMaxPool3d_1")


def init_with_site_counts(model, key, st):
  """((dense output, overflow), variables, active sites after each layer [5]) in one jit."""
  init = functools.partial(model.init_with_output, capture_intermediates=True)
  (out, overflow), variables = jax.jit(init)(key, st)
  inter = variables["intermediates"]
  counts = [int(inter[name]["__call__"][0].num_active) for name in LAYER_NAMES]
  return (out, overflow), variables, counts


# Sites of the two tracks below at full width (measured: 650, 136, 811, 1721, 276), ~1.2x margin.
SMALL_CAPACITIES = (800, 170, 1000, 2100, 340)


def test_trunk_full_width_with_capacities_matches_dense():
  """The paper's widths (50, 30, 20) with explicit static capacities on 2 tracks: no overflow,
  every layer within its capacity, the output equals the dense implementation's.

  (The timing of the same trunk on 64 tracks is ``scripts/bench_sparse_trunk.py``.)
  """
  rng = np.random.default_rng(42)
  coords, feats, num = synthetic_tracks(rng, 3, 250)
  coords, feats, num = coords[1:], feats[1:], num[1:]  # no empty event here
  st = sp.from_padded_voxels(coords, feats, num, (GRID,) * 3)
  model = SparseTrunk(capacities=SMALL_CAPACITIES)
  (out, overflow), variables, counts = init_with_site_counts(model, jax.random.key(0), st)
  assert int(overflow) == 0
  assert all(0 < c <= cap for c, cap in zip(counts, SMALL_CAPACITIES)), counts
  want = jax.jit(dense_trunk)(variables["params"], jnp.asarray(dense_input(coords, feats, num)))
  np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=1e-4, atol=1e-4)
  assert np.count_nonzero(np.asarray(want)) > 10
