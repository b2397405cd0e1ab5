"""Planar images projected onto the sphere, as spherical MNIST is made (numpy, float64).

The construction of Cohen et al. (arXiv 1801.10130; ``jonkhler/s2cnn``,
``examples/mnist/gendata.py``): the unit sphere is placed on the image plane z = 0 with
its centre at (0, 0, 1); every grid point p of the sphere is projected from the point
(0, 0, 2 + ε) above its north pole onto the plane, q = p_xy · s / (s − (p_z + 1)) with
s = 2 + ε, and the image, spanning q ∈ [−1.5, 1.5]², is sampled there bilinearly (zero
outside). The image thus lands on the southern hemisphere, centred on the south pole.

A rotated image is made by sampling at rotated points: for a rotation Q the signal is
f_Q(x) = f(Q⁻¹x), the convention of ``wigner.rotate_flm`` (so that the harmonic-space
rotation of a band-limited projection and the projection at rotated points agree,
``tests/test_sphere_projection.py``). The projection is not band-limited (the digit's
edges, the hemisphere's rim); :func:`project_images_band_limited` samples it finely and
keeps ℓ < L, so that rotations act exactly on the result.
"""

from __future__ import annotations

import numpy as np

from recoil_jax.ops.sphere import grids
from recoil_jax.ops.sphere import transforms

PROJECTION_ORIGIN_Z = 2.0 + 1e-3
HALF_WIDTH = 1.5  # The image spans [−1.5, 1.5]² on the plane (s2cnn's value for s = 2).


def plane_coordinates(points: np.ndarray, origin_z: float = PROJECTION_ORIGIN_Z
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Image coordinates (u, v) in [0, 1] (inside the image) of unit vectors ``points`` [..., 3].

  u runs along the image rows (plane x), v along the columns (plane y); values outside
  [0, 1] fall outside the image (the northern part of the sphere).
  """
  p = np.asarray(points, np.float64)
  t = origin_z / (origin_z - (p[..., 2] + 1.0))
  qx, qy = t * p[..., 0], t * p[..., 1]
  return (qx + HALF_WIDTH) / (2 * HALF_WIDTH), (qy + HALF_WIDTH) / (2 * HALF_WIDTH)


def bilinear(images: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Bilinear samples of ``images`` [M, H, W] at (u, v) [M or 1, ...] in [0, 1] (pixel
  centres at (i + ½)/H), zero outside the image. Returns [M, ...]."""
  images = np.asarray(images, np.float64)
  m, h, w = images.shape
  padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))  # A ring of zeros: smooth edges.
  x = np.clip(u * h - 0.5 + 1, 0, h + 1)  # Coordinates in the padded image.
  y = np.clip(v * w - 0.5 + 1, 0, w + 1)
  x0 = np.clip(np.floor(x).astype(np.int64), 0, h)
  y0 = np.clip(np.floor(y).astype(np.int64), 0, w)
  fx, fy = x - x0, y - y0
  idx = np.arange(m).reshape((m,) + (1,) * (u.ndim - 1))
  g = lambda a, b: padded[idx, a, b]  # noqa: E731
  return ((1 - fx) * (1 - fy) * g(x0, y0) + fx * (1 - fy) * g(x0 + 1, y0)
          + (1 - fx) * fy * g(x0, y0 + 1) + fx * fy * g(x0 + 1, y0 + 1))


def project_images(images: np.ndarray, grid: grids.S2Grid,
                   rotations: np.ndarray | None = None) -> np.ndarray:
  """Planar images [M, H, W] → spherical images [M, n_θ, n_φ] on ``grid`` (float32).

  Args:
    images: [M, H, W] pixel values.
    grid: the S² grid (e.g. ``grids.s2fft_grid(L, "dh")``).
    rotations: None, or ZYZ Euler angles [M, 3] (α, β, γ) of a rotation Q per image: the
      result is then f_Q(x) = f(Q⁻¹x).
  """
  images = np.asarray(images, np.float64)
  x = grid.directions()  # [n_θ, n_φ, 3]
  if rotations is None:
    pts = x[None]
  else:
    rotations = np.asarray(rotations, np.float64).reshape(-1, 3)
    if len(rotations) != len(images):
      raise ValueError(f"project_images: {len(rotations)} rotations for {len(images)} images")
    Q = grids.euler_to_matrix(rotations[:, 0], rotations[:, 1], rotations[:, 2])
    pts = np.einsum("mji,tpj->mtpi", Q, x)  # Q⁻¹x = Qᵀx
  u, v = plane_coordinates(pts)
  return bilinear(images, u, v).astype(np.float32)


def project_images_band_limited(images: np.ndarray, grid: grids.S2Grid,
                                rotations: np.ndarray | None = None, oversample: int = 2,
                                batch: int = 256) -> np.ndarray:
  """:func:`project_images` low-passed to the grid's band-limit L: [M, n_θ, n_φ] float32.

  The projection is sampled on the same kind of grid at ``oversample`` × L, transformed
  (``transforms.s2_forward``), cut to ℓ < L and synthesised on ``grid``. ``oversample``
  = 1 returns :func:`project_images` unchanged.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  if oversample <= 1:
    return project_images(images, grid, rotations)
  L, L_hi = grid.L, grid.L * int(oversample)
  fine = grids.s2fft_grid(L_hi, grid.name)
  out = []
  for i in range(0, len(images), batch):
    f = project_images(images[i:i + batch], fine,
                       None if rotations is None else np.asarray(rotations)[i:i + batch])
    flm = transforms.s2_forward(jnp.asarray(f[..., None]), L_hi, grid.name)
    flm = flm[..., :L, L_hi - L:L_hi + L - 1, :]
    out.append(np.asarray(transforms.s2_inverse(flm, L, grid.name))[..., 0])
  return np.concatenate(out).astype(np.float32)
