"""Batched, channel-last spherical-harmonic and Wigner transforms on s2fft's precomputed kernels.

s2fft's on-the-fly transforms are unusable in float32 (round-trip errors ~0.1); its
precomputed Wigner-d kernels built in float64 and cast to float32 round-trip to ~1e-6.
So the kernels here are built once per (L, N, sampling) with s2fft's numpy constructors
(``s2fft.precompute_transforms.construct``, float64), cached on the host, cast to
float32 and closed over as constants (never traced, never parameters); the transforms are
s2fft's precompute algorithms ("dh" / "gl" branches of
``s2fft.precompute_transforms.{spherical,wigner}``) rewritten for a batch and channel
axes, with real and imaginary parts contracted separately against the real kernel.

Layouts (B: any leading batch axes; C: channels, last):

  S² signal           [B, n_θ, n_φ, C]          real or complex
  S² coefficients     [B, L, 2L−1, C]           complex, [ℓ, L−1+m]
  SO(3) signal        [B, 2N−1, n_β, n_α, C]    real or complex, (γ, β, α)
  SO(3) coefficients  [B, 2N−1, L, 2L−1, C]     complex, [N−1+n, ℓ, L−1+m]

with n_θ = n_β = 2L ("dh") or L ("gl") and n_φ = n_α = 2L−1. Coefficient conventions:
``recoil_jax.ops.sphere.wigner`` (those of s2fft, arXiv 2311.14670).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from recoil_jax.ops.sphere import grids


@functools.lru_cache(maxsize=None)
def s2_kernel(L: int, sampling: str, forward: bool) -> np.ndarray:
  """s2fft's spin-0 kernel [n_θ, L, 2L−1] built in float64, returned as float32."""
  from s2fft.precompute_transforms import construct  # pylint: disable=g-import-not-at-top
  grids.s2fft_grid(L, sampling)  # Checks L and sampling.
  k = construct.spin_spherical_kernel(L, 0, reality=False, sampling=sampling.lower(),
                                      forward=forward)
  return np.asarray(k, np.float64).astype(np.float32)


@functools.lru_cache(maxsize=None)
def so3_kernel(L: int, N: int, sampling: str, forward: bool) -> np.ndarray:
  """s2fft's Wigner kernel [2N−1, n_β, L, 2L−1] built in float64, returned as float32."""
  from s2fft.precompute_transforms import construct  # pylint: disable=g-import-not-at-top
  grids.so3_grid(L, N, sampling)  # Checks L, N and sampling.
  k = construct.wigner_kernel(L, N, reality=False, sampling=sampling.lower(), forward=forward)
  return np.asarray(k, np.float64).astype(np.float32)


def _contract(spec: str, kernel: np.ndarray, x: jnp.ndarray) -> jnp.ndarray:
  """einsum of a real kernel with a complex (or real) array, real/imag parts separately."""
  k = jnp.asarray(kernel)
  if not jnp.iscomplexobj(x):
    return jnp.einsum(spec, k, x).astype(jnp.complex64)
  return jax_complex(jnp.einsum(spec, k, x.real), jnp.einsum(spec, k, x.imag))


def jax_complex(re: jnp.ndarray, im: jnp.ndarray) -> jnp.ndarray:
  return re + 1j * im


def _check(x, axis_sizes: dict[int, int], what: str) -> None:
  for ax, n in axis_sizes.items():
    if x.shape[ax] != n:
      raise ValueError(f"{what}: axis {ax} has size {x.shape[ax]}, expected {n} "
                       f"(full shape {x.shape})")


def s2_forward(f: jnp.ndarray, L: int, sampling: str = "dh") -> jnp.ndarray:
  """Spherical-harmonic coefficients [B, L, 2L−1, C] of a signal [B, n_θ, n_φ, C]."""
  grid = grids.s2fft_grid(L, sampling)
  _check(f, {-3: grid.shape[0], -2: grid.shape[1]}, f"s2_forward(L={L}, {sampling})")
  ftm = jnp.fft.fftshift(jnp.fft.fft(f, axis=-2), axes=-2)
  return _contract("tlm,...tmc->...lmc", s2_kernel(L, grid.name, True), ftm)


def s2_inverse(flm: jnp.ndarray, L: int, sampling: str = "dh", real: bool = True
               ) -> jnp.ndarray:
  """Signal [B, n_θ, n_φ, C] (real part if ``real``) of coefficients [B, L, 2L−1, C]."""
  grid = grids.s2fft_grid(L, sampling)
  _check(flm, {-3: L, -2: 2 * L - 1}, f"s2_inverse(L={L})")
  ftm = _contract("tlm,...lmc->...tmc", s2_kernel(L, grid.name, False), flm)
  f = jnp.fft.ifft(jnp.fft.ifftshift(ftm, axes=-2), axis=-2, norm="forward")
  return f.real if real else f


def so3_forward(f: jnp.ndarray, L: int, N: int, sampling: str = "dh") -> jnp.ndarray:
  """Wigner coefficients [B, 2N−1, L, 2L−1, C] of an SO(3) signal [B, 2N−1, n_β, n_α, C]."""
  grid = grids.so3_grid(L, N, sampling)
  _check(f, {-4: grid.shape[0], -3: grid.shape[1], -2: grid.shape[2]},
         f"so3_forward(L={L}, N={N}, {sampling})")
  fban = jnp.fft.fftshift(jnp.fft.fft(f, axis=-4), axes=-4)
  fban = jnp.fft.fftshift(jnp.fft.fft(fban, axis=-2), axes=-2)
  return _contract("ntlm,...ntmc->...nlmc", so3_kernel(L, N, grid.sampling, True), fban)


def so3_inverse(flmn: jnp.ndarray, L: int, N: int, sampling: str = "dh", real: bool = True
                ) -> jnp.ndarray:
  """SO(3) signal [B, 2N−1, n_β, n_α, C] (real part if ``real``) of [B, 2N−1, L, 2L−1, C]."""
  grid = grids.so3_grid(L, N, sampling)
  _check(flmn, {-4: 2 * N - 1, -3: L, -2: 2 * L - 1}, f"so3_inverse(L={L}, N={N})")
  fnab = _contract("ntlm,...nlmc->...ntmc", so3_kernel(L, N, grid.sampling, False), flmn)
  f = jnp.fft.ifftn(jnp.fft.ifftshift(fnab, axes=(-4, -2)), axes=(-4, -2), norm="forward")
  return f.real if real else f
