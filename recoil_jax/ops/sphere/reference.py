"""Slow, obvious references of the spherical layers: direct quadrature on the grid (float64).

Each function evaluates the layer's defining integral (``recoil_jax.ops.sphere.layers``)
point by point: the filter is synthesised at the rotated points R⁻¹x (or rotations
R⁻¹R') from its coefficients with scipy's spherical harmonics / explicit Wigner matrices,
multiplied with the input samples and summed with the grid's quadrature weights. No FFT,
no s2fft kernel. Cost O(n_out · n_in · L · N): for tests at L ≲ 8 only.
"""

from __future__ import annotations

import numpy as np

from recoil_jax.ops.sphere import grids
from recoil_jax.ops.sphere import layers
from recoil_jax.ops.sphere import wigner


def s2_to_so3(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, *, L_out: int,
              N: int, sampling: str = "dh") -> np.ndarray:
  """out_d(R) = Re Σ_c Σ_x w(x) x_c(x) ψ_cd(R⁻¹x)* + b_d on the SO(3) grid (L_out, N).

  Args:
    x: [B, n_θ, n_φ, C_in] on the ``sampling`` grid of its band-limit.
    kernel: [L_out, 2N−1, C_in, C_out] filter coefficients ψ̂_{ℓn} (complex).
    bias: [C_out] or None.

  Returns:
    [B, 2N−1, n_β, n_α, C_out] float64.
  """
  x = np.asarray(x, np.float64)
  kernel = np.asarray(kernel, np.complex128)
  L_in = layers.s2_band_limit(x.shape, sampling)
  s2 = grids.s2fft_grid(L_in, sampling)
  so3 = grids.so3_grid(L_out, N, sampling)
  pts = s2.directions().reshape(-1, 3)  # [P, 3]
  w = np.broadcast_to(s2.weights[:, None], s2.shape).reshape(-1)
  euler = so3.euler_angles().reshape(-1, 3)
  R = grids.euler_to_matrix(euler[:, 0], euler[:, 1], euler[:, 2])  # [Q, 3, 3]
  local = np.einsum("qji,pj->qpi", R, pts)  # R⁻¹x (R orthogonal: R⁻¹ = Rᵀ)
  theta, phi = grids.cartesian_to_spherical(local)
  Y = wigner.spherical_harmonics(L_out, theta, phi)[..., L_out - N:L_out + N - 1]  # [Q,P,ℓ,n]
  psi = np.einsum("qpln,lncd->qpcd", Y, kernel)  # ψ_cd(R⁻¹x)
  xs = x.reshape(x.shape[0], -1, x.shape[-1])  # [B, P, C]
  out = np.einsum("bpc,p,qpcd->bqd", xs, w, np.conj(psi)).real
  if bias is not None:
    out = out + np.asarray(bias, np.float64)
  return out.reshape((x.shape[0],) + so3.shape + (kernel.shape[-1],))


def so3_to_so3(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, *, L_out: int,
               N_out: int, sampling: str = "dh", chunk: int = 64) -> np.ndarray:
  """out_d(R) = Re Σ_c Σ_R' w(R') x_c(R') ψ_cd(R⁻¹R')* + b_d on the SO(3) grid (L_out, N_out).

  ψ_cd(g) = Σ (2ℓ+1)/(8π²) ψ̂^ℓ_{nk,cd} D^ℓ_{nk}(g)*, with R⁻¹R' formed as a matrix product
  and turned back into Euler angles (``grids.matrix_to_euler``).

  Args:
    x: [B, 2N_in−1, n_β, n_α, C_in].
    kernel: [L_out, 2N_out−1, 2N_in−1, C_in, C_out] (complex).
    bias: [C_out] or None.
    chunk: output rotations per block (memory).

  Returns:
    [B, 2N_out−1, n_β', n_α', C_out] float64.
  """
  x = np.asarray(x, np.float64)
  kernel = np.asarray(kernel, np.complex128)
  L_in, N_in = layers.so3_band_limits(x.shape, sampling)
  src = grids.so3_grid(L_in, N_in, sampling)
  dst = grids.so3_grid(L_out, N_out, sampling)
  e_src = src.euler_angles().reshape(-1, 3)
  w = np.broadcast_to(src.weights[None, :, None], src.shape).reshape(-1)
  R_src = grids.euler_to_matrix(e_src[:, 0], e_src[:, 1], e_src[:, 2])  # [P, 3, 3]
  e_dst = dst.euler_angles().reshape(-1, 3)
  R_dst = grids.euler_to_matrix(e_dst[:, 0], e_dst[:, 1], e_dst[:, 2])  # [Q, 3, 3]
  xs = x.reshape(x.shape[0], -1, x.shape[-1])
  c = (2 * np.arange(L_out) + 1) / (8 * np.pi ** 2)
  outs = []
  for lo in range(0, len(R_dst), chunk):
    rel = np.einsum("qji,pjk->qpik", R_dst[lo:lo + chunk], R_src)  # R⁻¹R'
    e = grids.matrix_to_euler(rel)
    D = wigner.wigner_D(L_out, e[..., 0], e[..., 1], e[..., 2])
    D = D[..., L_out - N_out:L_out + N_out - 1, L_out - N_in:L_out + N_in - 1]  # [q,p,ℓ,n,k]
    psi = np.einsum("qplnk,lnkcd,l->qpcd", np.conj(D), kernel, c)
    outs.append(np.einsum("bpc,p,qpcd->bqd", xs, w, np.conj(psi)).real)
  out = np.concatenate(outs, axis=1)
  if bias is not None:
    out = out + np.asarray(bias, np.float64)
  return out.reshape((x.shape[0],) + dst.shape + (kernel.shape[-1],))


def so3_haar_mean(x: np.ndarray, sampling: str = "dh") -> np.ndarray:
  """∫ x dR / 8π² from the ℓ = 0 Wigner coefficient, by direct sums over the grid.

  f^0_{00} = ∫ f(R) D^0_{00}(R) dR and D^0 ≡ 1, so this is the Haar average computed
  from s2fft's quadrature weights independently of the layers' einsum. [B, ..., C] → [B, C].
  """
  x = np.asarray(x, np.float64)
  L, N = layers.so3_band_limits(x.shape, sampling)
  g = grids.so3_grid(L, N, sampling)
  total = np.zeros((x.shape[0], x.shape[-1]))
  for ig in range(g.shape[0]):
    for ib in range(g.shape[1]):
      total += g.weights[ib] * x[:, ig, ib].sum(axis=1)
  return total / (8 * np.pi ** 2)
