"""Grids, Wigner conventions and the float32 s2fft-kernel transforms (recoil_jax.ops.sphere).

Float32 tolerances: the kernels are float64 tables rounded to float32 (relative 6e-8 per
entry); a transform sums O(L²) such products, so errors of a few 1e-7 relative to the
signal's scale are expected; we allow 1e-5.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from recoil_jax.ops.sphere import grids
from recoil_jax.ops.sphere import transforms
from recoil_jax.ops.sphere import wigner

SAMPLINGS = ("dh", "gl")


def _synth(flm, grid):
  t, p = np.meshgrid(grid.thetas, grid.phis, indexing="ij")
  return np.stack([wigner.s2_synthesis(flm[..., c], t, p) for c in range(flm.shape[-1])], -1)


def _rel(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_quadrature_weights_integrate_exactly(sampling):
  L = 8
  g = grids.s2fft_grid(L, sampling)
  assert g.weights.sum() * len(g.phis) == pytest.approx(4 * np.pi, rel=1e-12)
  # |Y_ℓm|² has degree 2ℓ ≤ 2L−2: integrates to 1.
  flm = np.zeros((L, 2 * L - 1, 1), complex)
  flm[L - 1, L - 1 + 3, 0] = 1
  f = _synth(flm, g)[..., 0]
  assert np.sum(g.weights[:, None] * np.abs(f) ** 2) == pytest.approx(1.0, rel=1e-12)
  so3 = grids.so3_grid(L, 3, sampling)
  assert so3.weights.sum() * len(so3.alphas) * len(so3.gammas) == pytest.approx(
      8 * np.pi ** 2, rel=1e-12)


def test_kamnet_grid_is_38_by_38_and_bins_like_kamnet():
  g = grids.kamnet_grid(19)
  assert g.shape == (38, 38)
  assert g.weights.sum() * 38 == pytest.approx(4 * np.pi, rel=1e-12)
  rng = np.random.default_rng(0)
  v = rng.standard_normal((1000, 3))
  theta, phi = grids.cartesian_to_spherical(v)
  row, col = g.pixel_of(v)
  np.testing.assert_array_equal(row, np.minimum((38 * theta / np.pi).astype(int), 37))
  np.testing.assert_array_equal(col, np.minimum(((phi + np.pi) / (2 * np.pi) * 38).astype(int), 37))


def test_euler_round_trip_and_wigner_homomorphism():
  rng = np.random.default_rng(1)
  e = grids.random_rotations(rng, 200)
  e = np.concatenate([e, [[0.3, 0.0, 0.2], [1.0, np.pi, -0.4], [2.9, 1e-9, -2.9]]])
  R = grids.euler_to_matrix(e[:, 0], e[:, 1], e[:, 2])
  e2 = grids.matrix_to_euler(R)
  # At β = 1e-9 only α + γ is defined; α − γ is lost to O(β) = 1e-9 in the matrix.
  np.testing.assert_allclose(grids.euler_to_matrix(e2[:, 0], e2[:, 1], e2[:, 2]), R, atol=2e-9)
  np.testing.assert_allclose(grids.euler_to_matrix(e2[:-1, 0], e2[:-1, 1], e2[:-1, 2]), R[:-1],
                             atol=1e-12)
  L = 5
  a, b = e[0], e[1]
  ab = grids.matrix_to_euler(grids.euler_to_matrix(*a) @ grids.euler_to_matrix(*b))
  np.testing.assert_allclose(np.einsum("lij,ljk->lik", wigner.wigner_D(L, *a),
                                       wigner.wigner_D(L, *b)), wigner.wigner_D(L, *ab),
                             atol=1e-12)


def test_wigner_d_matches_s2fft_recursion():
  from s2fft.recursions import risbo  # pylint: disable=g-import-not-at-top
  L, beta = 7, 0.83
  dl = np.zeros((2 * L - 1, 2 * L - 1))
  ours = wigner.wigner_d(L, beta)
  for ell in range(L):
    dl = risbo.compute_full(dl, beta, L, ell)
    np.testing.assert_allclose(ours[ell], dl, atol=1e-12)


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_rotations_are_geometric(sampling):
  """rotate_flm / rotate_flmn give the coefficients of f(Q⁻¹x) / f(Q⁻¹R), by direct sums."""
  rng = np.random.default_rng(2)
  L, N = 6, 3
  Q = tuple(grids.random_rotations(rng, 1)[0])
  Rq = grids.euler_to_matrix(*Q)
  g = grids.s2fft_grid(L, sampling)
  flm = wigner.random_flm(rng, L)
  t, p = np.meshgrid(g.thetas, g.phis, indexing="ij")
  tq, pq = grids.cartesian_to_spherical(np.einsum("ji,...j->...i", Rq, g.directions()))
  np.testing.assert_allclose(wigner.s2_synthesis(wigner.rotate_flm(flm, Q), t, p),
                             wigner.s2_synthesis(flm, tq, pq), atol=1e-12)
  flmn = wigner.random_flmn(rng, L, N)
  e = grids.so3_grid(L, N, sampling).euler_angles()
  R = grids.euler_to_matrix(e[..., 0], e[..., 1], e[..., 2])
  eq = grids.matrix_to_euler(np.einsum("ji,...jk->...ik", Rq, R))
  np.testing.assert_allclose(
      wigner.so3_synthesis(wigner.rotate_flmn(flmn, Q), e[..., 0], e[..., 1], e[..., 2]),
      wigner.so3_synthesis(flmn, eq[..., 0], eq[..., 1], eq[..., 2]), atol=1e-12)


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_s2_transforms_match_direct_synthesis_float32(sampling):
  rng = np.random.default_rng(3)
  L = 10
  flm = wigner.random_flm(rng, L, (2, 3), real=False)  # [L, 2L−1, 2, 3]: batch 2 → move
  flm = np.moveaxis(flm, 2, 0)  # [2, L, 2L−1, 3]
  g = grids.s2fft_grid(L, sampling)
  f = np.stack([_synth(flm[b], g) for b in range(2)])
  fast = transforms.s2_inverse(jnp.asarray(flm, jnp.complex64), L, sampling, real=False)
  assert _rel(fast, f) < 1e-5
  back = transforms.s2_forward(jnp.asarray(f, jnp.complex64), L, sampling)
  assert _rel(back, flm) < 1e-5


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_so3_transforms_match_direct_synthesis_float32(sampling):
  rng = np.random.default_rng(4)
  L, N = 8, 3
  flmn = wigner.random_flmn(rng, L, N, (2,))
  e = grids.so3_grid(L, N, sampling).euler_angles()
  f = np.stack([wigner.so3_synthesis(flmn[..., c], e[..., 0], e[..., 1], e[..., 2])
                for c in range(2)], -1)
  assert np.max(np.abs(f.imag)) < 1e-12  # random_flmn(real=True) is a real signal.
  fast = transforms.so3_inverse(jnp.asarray(flmn, jnp.complex64), L, N, sampling)
  assert _rel(fast, f.real) < 1e-5
  back = transforms.so3_forward(jnp.asarray(f.real, jnp.float32), L, N, sampling)
  assert _rel(back, flmn) < 1e-5


def test_shape_errors_name_the_expected_grid():
  with pytest.raises(ValueError, match="expected"):
    transforms.s2_forward(jnp.zeros((3, 16, 16, 1)), 8, "dh")
  with pytest.raises(ValueError, match="exact quadrature"):
    grids.s2fft_grid(8, "mw")
