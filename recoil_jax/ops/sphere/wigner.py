"""Wigner matrices, spherical harmonics, exact rotations and direct synthesis (numpy float64).

The slow, obvious side of the spherical ops: everything here is evaluated point by point
in float64, for references and tests, never inside a model.

Conventions (s2fft's, arXiv 2311.14670; checked against s2fft in tests):

* d^ℓ_{m'm}(β) = ⟨ℓm'| exp(−iβJ_y) |ℓm⟩ (real), computed by diagonalising J_y, which is
  stable at any ℓ (no factorial sums).
* D^ℓ_{mn}(α, β, γ) = e^{−imα} d^ℓ_{mn}(β) e^{−inγ} for R = R_z(α) R_y(β) R_z(γ).
* Y_ℓm: orthonormal with the Condon–Shortley phase (scipy's ``sph_harm_y``).
* S² coefficients f_ℓm = ∫ f Y*_ℓm dΩ, stored [L, 2L−1] at [ℓ, L−1+m].
* SO(3): f(R) = Σ (2ℓ+1)/(8π²) f^ℓ_{mn} D^ℓ_{mn}(R)*, coefficients stored [2N−1, L, 2L−1]
  at [N−1+n, ℓ, L−1+m].
* Rotating a signal, (Λ_Q f)(x) = f(Q⁻¹x), maps f_ℓm → Σ_k D^ℓ_{mk}(Q) f_ℓk on S² and
  f^ℓ_{mn} → Σ_k D^ℓ_{mk}(Q) f^ℓ_{kn} on SO(3) (left translation acts on m only).
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.special

from recoil_jax.ops.sphere import grids


@functools.lru_cache(maxsize=None)
def _jy_eigen(ell: int) -> tuple[np.ndarray, np.ndarray]:
  """Eigen-decomposition (μ [2ℓ+1], V [2ℓ+1, 2ℓ+1]) of J_y in the basis m = −ℓ..ℓ."""
  m = np.arange(-ell, ell)
  jp = np.zeros((2 * ell + 1, 2 * ell + 1))
  jp[np.arange(1, 2 * ell + 1), np.arange(2 * ell)] = np.sqrt(ell * (ell + 1) - m * (m + 1))
  jy = (jp - jp.T) / 2j
  return np.linalg.eigh(jy)


def wigner_d(L: int, beta) -> np.ndarray:
  """Reduced Wigner matrices d^ℓ_{mn}(β), [..., L, 2L−1, 2L−1] at [ℓ, L−1+m, L−1+n].

  Entries with |m| > ℓ or |n| > ℓ are 0. ``beta`` (rad) may have any shape.
  """
  beta = np.asarray(beta, np.float64)
  out = np.zeros(beta.shape + (L, 2 * L - 1, 2 * L - 1))
  for ell in range(L):
    mu, v = _jy_eigen(ell)
    phase = np.exp(-1j * beta[..., None] * mu)  # [..., 2ℓ+1]
    d = np.einsum("ij,...j,kj->...ik", v, phase, v.conj())
    sl = slice(L - 1 - ell, L + ell)
    out[..., ell, sl, sl] = d.real
  return out


def wigner_D(L: int, alpha, beta, gamma) -> np.ndarray:
  """D^ℓ_{mn}(α, β, γ), complex [..., L, 2L−1, 2L−1] at [ℓ, L−1+m, L−1+n]."""
  alpha, beta, gamma = np.broadcast_arrays(*(np.asarray(x, np.float64)
                                             for x in (alpha, beta, gamma)))
  m = np.arange(-(L - 1), L)
  ea = np.exp(-1j * alpha[..., None] * m)[..., None, :, None]
  eg = np.exp(-1j * gamma[..., None] * m)[..., None, None, :]
  return ea * wigner_d(L, beta) * eg


def spherical_harmonics(L: int, theta, phi) -> np.ndarray:
  """Y_ℓm(θ, φ), complex [..., L, 2L−1] at [ℓ, L−1+m] (0 for |m| > ℓ)."""
  theta, phi = np.broadcast_arrays(np.asarray(theta, np.float64), np.asarray(phi, np.float64))
  out = np.zeros(theta.shape + (L, 2 * L - 1), np.complex128)
  for ell in range(L):
    for m in range(-ell, ell + 1):
      out[..., ell, L - 1 + m] = scipy.special.sph_harm_y(ell, m, theta, phi)
  return out


def s2_synthesis(flm: np.ndarray, theta, phi) -> np.ndarray:
  """f(θ, φ) = Σ f_ℓm Y_ℓm(θ, φ) at arbitrary points; flm [L, 2L−1] (or [..., L, 2L−1, C]
  with ``channels``-last handled by the caller). Returns complex [points...]."""
  L = flm.shape[0]
  return np.einsum("...lm,lm->...", spherical_harmonics(L, theta, phi), flm)


def so3_synthesis(flmn: np.ndarray, alpha, beta, gamma) -> np.ndarray:
  """f(R) = Σ (2ℓ+1)/(8π²) f^ℓ_{mn} D^ℓ_{mn}(R)* at arbitrary rotations; flmn [2N−1, L, 2L−1]."""
  n_dim, L, _ = flmn.shape
  N = (n_dim + 1) // 2
  D = wigner_D(L, alpha, beta, gamma)[..., :, :, L - N:L + N - 1]  # [..., ℓ, m, n]
  c = (2 * np.arange(L) + 1) / (8 * np.pi ** 2)
  return np.einsum("...lmn,nlm,l->...", D.conj(), flmn, c)


def rotate_flm(flm: np.ndarray, rotation) -> np.ndarray:
  """Coefficients of f(Q⁻¹x) from those of f: flm [L, 2L−1, ...] → same shape (complex).

  ``rotation``: ZYZ Euler angles (α, β, γ) of Q. Exact for band-limited signals.
  """
  flm = np.asarray(flm)
  L = flm.shape[0]
  D = wigner_D(L, *rotation)
  return np.einsum("lmk,lk...->lm...", D, flm)


def rotate_flmn(flmn: np.ndarray, rotation) -> np.ndarray:
  """Wigner coefficients of f(Q⁻¹R) from those of f(R): [2N−1, L, 2L−1, ...] → same shape."""
  flmn = np.asarray(flmn)
  L = flmn.shape[1]
  D = wigner_D(L, *rotation)
  return np.einsum("lmk,nlk...->nlm...", D, flmn)


def random_flm(rng: np.random.Generator, L: int, channels: tuple[int, ...] = (),
               real: bool = True) -> np.ndarray:
  """Random band-limited coefficients [L, 2L−1, *channels] (of a real signal if ``real``)."""
  shape = (L, 2 * L - 1) + tuple(channels)
  flm = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
  ell = np.arange(L)[:, None]
  m = np.arange(-(L - 1), L)[None, :]
  extra = (1,) * len(channels)
  flm = np.where((np.abs(m) <= ell).reshape((L, 2 * L - 1) + extra), flm, 0)
  if real:  # f_ℓ,−m = (−1)^m f*_ℓm
    sign = ((-1.0) ** np.abs(m)).reshape((1, 2 * L - 1) + extra)
    flm = 0.5 * (flm + sign * np.conj(flm[:, ::-1]))
  return flm


def random_flmn(rng: np.random.Generator, L: int, N: int, channels: tuple[int, ...] = (),
                real: bool = True) -> np.ndarray:
  """Random band-limited Wigner coefficients [2N−1, L, 2L−1, *channels].

  A real SO(3) signal has f^ℓ_{−m,−n} = (−1)^{m+n} (f^ℓ_{mn})*.
  """
  shape = (2 * N - 1, L, 2 * L - 1) + tuple(channels)
  f = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
  n = np.arange(-(N - 1), N)[:, None, None]
  ell = np.arange(L)[None, :, None]
  m = np.arange(-(L - 1), L)[None, None, :]
  valid = (np.abs(m) <= ell) & (np.abs(n) <= ell)
  extra = (1,) * len(channels)
  f = np.where(valid.reshape(valid.shape + extra), f, 0)
  if real:
    sign = ((-1.0) ** np.abs(m + n)).reshape((2 * N - 1, 1, 2 * L - 1) + extra)
    f = 0.5 * (f + sign * np.conj(f[::-1, :, ::-1]))
  return f
