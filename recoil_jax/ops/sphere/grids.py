"""Sampling grids on the sphere S² and on the rotation group SO(3), and pixel look-up.

Conventions (those of s2fft, arXiv 2311.14670):

* A point of S² is (θ, φ): colatitude θ ∈ [0, π], longitude φ; its unit vector is
  (sin θ cos φ, sin θ sin φ, cos θ).
* A rotation is given by ZYZ Euler angles (α, β, γ): R = R_z(α) R_y(β) R_z(γ).
* S² signals are sampled as ``[n_θ, n_φ]`` (rows θ, columns φ); SO(3) signals as
  ``[n_γ, n_β, n_α]`` (s2fft's order), with n_γ = 2N − 1 for directional band-limit N.
* ``weights`` are quadrature weights per θ row that already include the φ spacing, so
  ``Σ_t Σ_p w_t f(θ_t, φ_p)`` is ∫ f dΩ (exact for band-limit L on "dh" and "gl", and for
  band-limit b on the KamNet grid); Σ over the grid of the weights is 4π.

Grids:

* :func:`s2fft_grid`: s2fft's samplings at band-limit L — "dh" (Driscoll–Healy:
  θ_t = π(2t+1)/(4L), t < 2L; φ_p = 2πp/(2L−1)) and "gl" (Gauss–Legendre, L rows). These
  are the grids the spherical layers (``recoil_jax.ops.sphere.layers``) work on.
* :func:`kamnet_grid`: KamNet's 2b × 2b Driscoll–Healy equiangular binning
  (arXiv 2203.01870; b = 19: 38 × 38), θ bins of width π/2b, φ bins of width 2π/2b
  starting at φ = −π. Used for the planar-CNN hit maps.
* :func:`so3_grid`: s2fft's SO(3) sampling (α as the S² φ samples, β as the θ samples,
  γ_k = 2πk/(2N−1)) with Haar quadrature weights (Σ = 8π²).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

#: Samplings the spherical layers accept: those with an exact quadrature (dh, gl).
LAYER_SAMPLINGS = ("dh", "gl")


@dataclasses.dataclass(frozen=True, eq=False)
class S2Grid:
  """An equiangular-in-φ grid on S².

  Attributes:
    name: "dh", "gl" (s2fft samplings) or "kamnet".
    L: band-limit the grid's quadrature is exact for (products of two band-limit-L
      functions on "dh"/"gl"; band-limit b on "kamnet").
    thetas: [n_θ] colatitudes (rad), increasing.
    phis: [n_φ] longitudes (rad), equispaced.
    weights: [n_θ] quadrature weight per θ row (sr), φ spacing included.
  """
  name: str
  L: int
  thetas: np.ndarray
  phis: np.ndarray
  weights: np.ndarray

  @property
  def shape(self) -> tuple[int, int]:
    return (len(self.thetas), len(self.phis))

  def directions(self) -> np.ndarray:
    """Unit vectors of the samples, [n_θ, n_φ, 3]."""
    t, p = np.meshgrid(self.thetas, self.phis, indexing="ij")
    return spherical_to_cartesian(t, p)

  def pixel_of(self, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) int32 [...] of the sample nearest in θ and in φ to ``directions`` [..., 3].

    On the equiangular grids this is the pixel (bin) containing the direction.
    """
    theta, phi = cartesian_to_spherical(directions)
    mids = 0.5 * (self.thetas[1:] + self.thetas[:-1])
    row = np.searchsorted(mids, theta).astype(np.int32)
    dphi = 2 * np.pi / len(self.phis)
    col = np.round((phi - self.phis[0]) / dphi).astype(np.int64) % len(self.phis)
    return row, col.astype(np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class SO3Grid:
  """s2fft's SO(3) sampling at band-limits (L, N) on an S² sampling.

  Attributes:
    sampling: "dh" or "gl".
    L, N: harmonic and directional band-limits.
    alphas: [n_α] (rad); betas: [n_β] (rad); gammas: [n_γ = 2N−1] (rad).
    weights: [n_β] Haar quadrature weight per β (α and γ spacings included; Σ over the
      grid = 8π²).
  """
  sampling: str
  L: int
  N: int
  alphas: np.ndarray
  betas: np.ndarray
  gammas: np.ndarray
  weights: np.ndarray

  @property
  def shape(self) -> tuple[int, int, int]:
    return (len(self.gammas), len(self.betas), len(self.alphas))

  def euler_angles(self) -> np.ndarray:
    """[n_γ, n_β, n_α, 3] (α, β, γ) of every sample, in the grid's storage order."""
    g, b, a = np.meshgrid(self.gammas, self.betas, self.alphas, indexing="ij")
    return np.stack([a, b, g], axis=-1)


def spherical_to_cartesian(theta, phi) -> np.ndarray:
  """Unit vectors [..., 3] from colatitude and longitude (rad)."""
  theta, phi = np.asarray(theta, np.float64), np.asarray(phi, np.float64)
  st = np.sin(theta)
  return np.stack([st * np.cos(phi), st * np.sin(phi), np.cos(theta)], axis=-1)


def cartesian_to_spherical(v) -> tuple[np.ndarray, np.ndarray]:
  """(θ ∈ [0, π], φ ∈ (−π, π]) of vectors [..., 3] (need not be unit)."""
  v = np.asarray(v, np.float64)
  theta = np.arctan2(np.hypot(v[..., 0], v[..., 1]), v[..., 2])
  return theta, np.arctan2(v[..., 1], v[..., 0])


def _check_sampling(sampling: str) -> str:
  s = sampling.lower()
  if s not in LAYER_SAMPLINGS:
    raise ValueError(f"sampling {sampling!r}: the spherical layers need an exact quadrature; "
                     f"use one of {LAYER_SAMPLINGS}")
  return s


@functools.lru_cache(maxsize=None)
def s2fft_grid(L: int, sampling: str = "dh") -> S2Grid:
  """s2fft's ``sampling`` ("dh" [2L, 2L−1] or "gl" [L, 2L−1]) at band-limit ``L``."""
  from s2fft.sampling import s2_samples  # pylint: disable=g-import-not-at-top
  from s2fft.utils import quadrature  # pylint: disable=g-import-not-at-top
  s = _check_sampling(sampling)
  if L < 2:
    raise ValueError(f"band-limit L must be >= 2, got {L}")
  return S2Grid(s, int(L), np.asarray(s2_samples.thetas(L, s), np.float64),
                np.asarray(s2_samples.phis_equiang(L, s), np.float64),
                np.asarray(quadrature.quad_weights(L, s), np.float64))


def dh_theta_weights(b: int) -> np.ndarray:
  """Driscoll–Healy θ weights [2b] at θ_j = π(2j+1)/(4b) (Σ_j w_j = 2; exact to degree 2b−1)."""
  j = np.arange(2 * b)
  theta = np.pi * (2 * j + 1) / (4 * b)
  k = np.arange(b)[:, None]
  s = np.sum(np.sin((2 * k + 1) * theta[None]) / (2 * k + 1), axis=0)
  return 2.0 / b * np.sin(theta) * s


@functools.lru_cache(maxsize=None)
def kamnet_grid(b: int = 19) -> S2Grid:
  """KamNet's 2b × 2b equiangular grid (arXiv 2203.01870; b = 19 → 38 × 38).

  Row j covers θ ∈ [jπ/2b, (j+1)π/2b) (KamNet: ``row = ⌊2bθ/π⌋``), column k covers
  φ ∈ [−π + 2πk/2b, −π + 2π(k+1)/2b); samples sit at the bin centres.
  """
  if b < 1:
    raise ValueError(f"b must be >= 1, got {b}")
  j = np.arange(2 * b)
  thetas = np.pi * (2 * j + 1) / (4 * b)
  phis = -np.pi + 2 * np.pi * (j + 0.5) / (2 * b)
  return S2Grid("kamnet", int(b), thetas, phis, dh_theta_weights(b) * 2 * np.pi / (2 * b))


@functools.lru_cache(maxsize=None)
def so3_grid(L: int, N: int, sampling: str = "dh") -> SO3Grid:
  """s2fft's SO(3) sampling [2N−1, n_β, n_α] at (L, N) with Haar quadrature weights."""
  if not 1 <= N <= L:
    raise ValueError(f"directional band-limit N must be in [1, L={L}], got {N}")
  s2 = s2fft_grid(L, sampling)
  gammas = 2 * np.pi * np.arange(2 * N - 1) / (2 * N - 1)
  return SO3Grid(s2.name, int(L), int(N), s2.phis, s2.thetas, gammas,
                 s2.weights * 2 * np.pi / (2 * N - 1))


def euler_to_matrix(alpha, beta, gamma) -> np.ndarray:
  """R = R_z(α) R_y(β) R_z(γ) as [..., 3, 3] (active rotation matrices)."""
  a, b, g = (np.asarray(x, np.float64) for x in (alpha, beta, gamma))
  a, b, g = np.broadcast_arrays(a, b, g)

  def rz(t):
    c, s, z, o = np.cos(t), np.sin(t), np.zeros_like(t), np.ones_like(t)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1),
                     np.stack([z, z, o], -1)], -2)

  def ry(t):
    c, s, z, o = np.cos(t), np.sin(t), np.zeros_like(t), np.ones_like(t)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1),
                     np.stack([-s, z, c], -1)], -2)

  return rz(a) @ ry(b) @ rz(g)


def matrix_to_euler(R) -> np.ndarray:
  """ZYZ Euler angles [..., 3] (α, β, γ) of rotation matrices [..., 3, 3].

  Uses α ± γ from the sums/differences of the upper 2 × 2 block, so that α + γ stays
  accurate near β = 0 (and α − γ near β = π), where α and γ alone are ill-defined.
  """
  R = np.asarray(R, np.float64)
  beta = np.arctan2(np.hypot(R[..., 0, 2], R[..., 1, 2]), R[..., 2, 2])
  apg = np.arctan2(R[..., 1, 0] - R[..., 0, 1], R[..., 0, 0] + R[..., 1, 1])
  amg = np.arctan2(-(R[..., 1, 0] + R[..., 0, 1]), R[..., 1, 1] - R[..., 0, 0])
  # Halving α ± γ leaves (α, γ) or (α + π, γ + π); keep the one that rebuilds R.
  alpha, gamma = (apg + amg) / 2, (apg - amg) / 2
  err = np.abs(euler_to_matrix(alpha, beta, gamma) - R).sum(axis=(-2, -1))
  err_shift = np.abs(euler_to_matrix(alpha + np.pi, beta, gamma + np.pi) - R).sum(axis=(-2, -1))
  shift = np.where(err_shift < err, np.pi, 0.0)
  return np.stack([alpha + shift, beta, gamma + shift], axis=-1)


def random_rotations(rng: np.random.Generator, num: int) -> np.ndarray:
  """``num`` Haar-random rotations as ZYZ Euler angles [num, 3]."""
  q = rng.standard_normal((num, 4))
  q /= np.linalg.norm(q, axis=1, keepdims=True)
  w, x, y, z = q.T
  R = np.stack([
      np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
      np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
      np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], -2)
  return matrix_to_euler(R)
