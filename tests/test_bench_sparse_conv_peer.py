"""scripts/bench_sparse_conv.py: the weight-layout conversions of its spconv cross-check, and
its CPU spconv route (patched backward, one thread) against a dense conv3d on a tiny grid.

The layout tests are numpy only; the spconv test is skipped where torch or spconv (the
``peers`` extra) is not installed. No timing loops, no jax model.
"""

import numpy as np
import pytest

from conftest import load_module


@pytest.fixture(scope="module")
def bench():
  return load_module("scripts/bench_sparse_conv.py")


def test_kernel_layout_round_trip(bench):
  k = np.random.default_rng(0).standard_normal((6, 5, 4, 3, 2)).astype(np.float32)
  w = bench.kernel_to_spconv(k)
  assert w.shape == (2, 6, 5, 4, 3)  # spconv 2.x KRSC [Cout, K0, K1, K2, Cin]
  assert w[1, 5, 2, 0, 2] == k[5, 2, 0, 2, 1]
  np.testing.assert_array_equal(bench.kernel_from_spconv(w), k)


def test_dense_kernel_permutation_matches_flatten_orders(bench):
  """recoil_jax flattens the trunk channels-last, spconv's ToDense + Flatten channels-first:
  the converted first dense layer gives the same pre-activations."""
  rng = np.random.default_rng(1)
  grid = (3, 4, 2, 5)  # D0, D1, D2, C
  x = rng.standard_normal((2,) + grid)  # [B, D0, D1, D2, C]
  k = rng.standard_normal((int(np.prod(grid)), 7))
  w = bench.dense_kernel_to_torch(k, grid)  # torch Linear weight [out, C·D0·D1·D2]
  x_ncdhw = x.transpose(0, 4, 1, 2, 3).reshape(2, -1)
  np.testing.assert_allclose(x_ncdhw @ w.T, x.reshape(2, -1) @ k, rtol=1e-12)
  np.testing.assert_array_equal(bench.dense_kernel_from_torch(w, grid), k)


def test_max_rel_diff(bench):
  assert bench.max_rel_diff([1.0, -2.0], [1.0, -2.0]) == 0.0
  assert bench.max_rel_diff([1.0, -4.0], [1.5, -4.0]) == pytest.approx(0.5 / 4.0)
  assert bench.max_rel_diff(np.zeros(3), np.zeros(3)) == 0.0
  with pytest.raises(ValueError):
    bench.max_rel_diff(np.zeros(3), np.zeros(4))


def test_sparse_rows(bench):
  coords = np.array([[[1, 2, 3], [4, 5, 6], [0, 0, 0]], [[7, 8, 9], [0, 0, 0], [0, 0, 0]]])
  charges = np.array([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]], np.float32)
  idx, feats = bench.sparse_rows(coords, charges, np.array([2, 1]))
  np.testing.assert_array_equal(idx, [[0, 1, 2, 3], [0, 4, 5, 6], [1, 7, 8, 9]])
  np.testing.assert_array_equal(feats[:, 0], [1.0, 2.0, 3.0])
  assert idx.dtype == np.int32 and feats.dtype == np.float32


def test_spconv_cpu_route_matches_dense_conv3d(bench):
  pytest.importorskip("torch")
  pytest.importorskip("spconv")
  torch, spconv = bench.spconv_setup()  # patched CPU backward, one torch thread
  torch.manual_seed(0)
  layer = spconv.SparseConv3d(2, 3, 3, 2)
  rng = np.random.default_rng(2)
  sites = [rng.choice(12 ** 3, 20, replace=False) for _ in range(2)]
  indices = np.concatenate([np.stack([np.full(20, b), *np.unravel_index(s, (12,) * 3)], 1)
                            for b, s in enumerate(sites)]).astype(np.int32)
  feats = rng.standard_normal((40, 2)).astype(np.float32)
  res = bench.spconv_layer_vs_dense(torch, spconv, layer, indices, feats, 2, (12, 12, 12))
  assert res["sites_equal"], res
  for key in ("forward", "grad_weight", "grad_bias", "grad_input"):
    assert res[key] < 1e-5, res


def test_spconv_net_has_no_1x1x1_convs(bench):
  pytest.importorskip("torch")
  pytest.importorskip("spconv")
  torch, spconv = bench.spconv_setup()
  bench.spconv_net(spconv, torch)  # raises on a 1x1x1 conv


@pytest.mark.parametrize("ties", [False, True])
def test_spconv_maxpool_backward_vs_dense(bench, ties):
  """Exact without ties; on tied maxima spconv's CPU backward feeds every tied input (the
  behaviour the benchmark's cross-check works around with tie-free charges)."""
  pytest.importorskip("torch")
  pytest.importorskip("spconv")
  torch, spconv = bench.spconv_setup()
  rng = np.random.default_rng(3)
  sites = rng.choice(8 ** 3, 300, replace=False)
  indices = np.stack([np.zeros(300, int), *np.unravel_index(sites, (8,) * 3)], 1).astype(np.int32)
  feats = (rng.integers(1, 3, (300, 2)) if ties else rng.random((300, 2)) + 0.1).astype(np.float32)
  res = bench.spconv_maxpool_vs_dense(torch, spconv, spconv.SparseMaxPool3d(2, 2), indices,
                                      feats, 1, (8, 8, 8))
  assert res["forward"] == 0.0
  if ties:
    assert res["tied_nonzero_outputs"] > 0 and res["grad_input_nonzero"] > 0.1, res
  else:
    assert res["tied_nonzero_outputs"] == 0 and res["grad_input_nonzero"] == 0.0, res
