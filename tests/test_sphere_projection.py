"""Planar images on the sphere (spherical MNIST's projection) and their rotations."""

import jax.numpy as jnp
import numpy as np

from recoil_jax.ops.sphere import grids
from recoil_jax.ops.sphere import projection
from recoil_jax.ops.sphere import transforms
from recoil_jax.ops.sphere import wigner


def _blob(n=16):
  y, x = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
  return np.exp(-((x - 0.2) ** 2 + (y + 0.1) ** 2) / (2 * 0.3 ** 2))[None]


def test_image_lands_on_the_southern_hemisphere_and_keeps_its_values():
  g = grids.s2fft_grid(16, "dh")
  img = np.ones((1, 8, 8))
  f = projection.project_images(img, g)[0]
  z = g.directions()[..., 2]
  assert np.all(f[z > 0.2] == 0)  # Far from the image: nothing.
  assert np.allclose(f[z < -0.9], 1.0)  # Around the south pole: the image's interior.
  # The plane point under the south pole is the image centre.
  u, v = projection.plane_coordinates(np.array([0.0, 0.0, -1.0]))
  np.testing.assert_allclose([u, v], [0.5, 0.5])


def test_rotation_about_z_by_a_grid_step_is_an_exact_column_shift():
  L, k = 16, 3
  g = grids.s2fft_grid(L, "dh")
  f0 = projection.project_images(_blob(), g)[0]
  fz = projection.project_images(_blob(), g, np.array([[2 * np.pi * k / (2 * L - 1), 0, 0]]))[0]
  np.testing.assert_allclose(fz, np.roll(f0, k, axis=1), atol=1e-6)


def test_projected_rotated_image_matches_the_exact_rotation_in_harmonic_space():
  """f(Q⁻¹x) sampled directly vs Wigner-D rotation of f's coefficients (smooth image, L = 32:
  the projection is not exactly band-limited, so they agree to its aliasing, < 2 %)."""
  L = 32
  g = grids.s2fft_grid(L, "dh")
  f0 = projection.project_images(_blob(), g)
  flm = np.asarray(transforms.s2_forward(jnp.asarray(f0[..., None]), L, "dh"))[0, ..., 0]
  for rot in grids.random_rotations(np.random.default_rng(0), 2):
    direct = projection.project_images(_blob(), g, rot[None])[0]
    exact = wigner.rotate_flm(flm.astype(np.complex128), rot)
    harmonic = np.asarray(transforms.s2_inverse(
        jnp.asarray(exact[None, ..., None].astype(np.complex64)), L, "dh"))[0, ..., 0]
    err = np.linalg.norm(harmonic - direct) / np.linalg.norm(direct)
    assert err < 0.02, err
    # Control: the inverse rotation (the other convention) does not match.
    wrong = projection.project_images(
        _blob(), g, grids.matrix_to_euler(grids.euler_to_matrix(*rot).T)[None])[0]
    assert np.linalg.norm(harmonic - wrong) / np.linalg.norm(wrong) > 0.3


def test_band_limited_projection_rotates_exactly():
  """After the low-pass, the projected rotated digit is the harmonic rotation of the
  projected digit up to the fine grid's aliasing (an 8 × 8 image, L = 12, 3× oversampled)."""
  L = 12
  g = grids.s2fft_grid(L, "dh")
  img = np.random.default_rng(1).random((1, 8, 8))
  f0 = projection.project_images_band_limited(img, g, oversample=3)
  flm = np.asarray(transforms.s2_forward(jnp.asarray(f0[..., None]), L, "dh"))[0, ..., 0]
  rot = grids.random_rotations(np.random.default_rng(2), 1)
  direct = projection.project_images_band_limited(img, g, rot, oversample=3)[0]
  exact = wigner.rotate_flm(flm.astype(np.complex128), rot[0])
  harmonic = np.asarray(transforms.s2_inverse(
      jnp.asarray(exact[None, ..., None].astype(np.complex64)), L, "dh"))[0, ..., 0]
  err = np.linalg.norm(harmonic - direct) / np.linalg.norm(direct)
  raw = projection.project_images(img, g, rot)[0]  # Not band-limited: much worse.
  raw_err = np.linalg.norm(harmonic - raw) / np.linalg.norm(raw)
  assert err < 0.01 and raw_err > 3 * err, (err, raw_err)
