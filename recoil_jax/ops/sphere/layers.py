"""Spherical CNN layers (Cohen et al., arXiv 1801.10130) on s2fft's precomputed transforms.

Layouts (channels last; B batch):

  S² signal      [B, n_θ, n_φ, C]        on ``grids.s2fft_grid(L, sampling)``
  SO(3) signal   [B, 2N−1, n_β, n_α, C]  on ``grids.so3_grid(L, N, sampling)``, (γ, β, α)

The band-limits of an input are read from its shape (:func:`s2_band_limit`,
:func:`so3_band_limits`); a layer's output band-limit ``L_out`` may be lower than its
input's (coefficients with ℓ ≥ L_out are dropped), never higher.

Definitions (real signals f, complex spectral filters; the output is the real part, i.e.
the correlation with the real filter Re ψ, which is what keeps it real and equivariant):

* S² → SO(3): out_d(R) = Re Σ_c ∫_{S²} f_c(x) ψ_cd(R⁻¹x)* dx, with the filter
  ψ_cd(y) = Σ_{ℓ<L_out, |n|<N} ψ̂_{ℓn,cd} Y_ℓn(y). In harmonic space
  out^ℓ_{mn} = 8π²/(2ℓ+1) Σ_c f_ℓm,c ψ̂*_{ℓn,cd}, then s2fft's inverse Wigner transform.
* SO(3) → SO(3): out_d(R) = Re Σ_c ∫_{SO(3)} f_c(R') ψ_cd(R⁻¹R')* dR', with
  ψ_cd(g) = Σ (2ℓ+1)/(8π²) ψ̂^ℓ_{nk,cd} D^ℓ_{nk}(g)*, |n| < N_out, |k| < N_in. In harmonic
  space out^ℓ_{mn} = Σ_{k,c} f^ℓ_{mk,c} ψ̂^ℓ*_{nk,cd}: per ℓ a matrix product (Cohen's
  F^ℓ Ψ^ℓ†).

Both commute with rotations, (Λ_Q f) ⋆ ψ = Λ_Q (f ⋆ ψ), exactly for band-limited inputs;
``tests/test_sphere_layers.py`` checks that to < 1e-4 in float32, checks each layer
against :mod:`recoil_jax.ops.sphere.reference` (direct quadrature on the grid) and runs a
planar convolution through the same check as a negative control. The filters ψ̂ are
``params`` (complex64); the transform kernels are module constants (cached numpy arrays,
``recoil_jax.ops.sphere.transforms``), never trained, never in ``batch_stats``.

Pointwise nonlinearities act on the grid samples (exactly equivariant only in the limit
of fine grids: the product with a non-polynomial function is not band-limited);
:func:`so3_pointwise` applies them on a finer grid and band-limits the result, which
cuts the equivariance error of a ReLU by ~8× at 2× oversampling
(``tests/test_sphere_pointwise.py``).
:class:`SphericalBatchNorm` uses Haar-weighted moments, so its statistics do not depend
on where the grid samples fall; :func:`so3_haar_mean` / :func:`s2_haar_mean` are the
invariant read-outs (∫ f dR / 8π², ∫ f dΩ / 4π by the grids' quadrature).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from recoil_jax.ops.sphere import grids
from recoil_jax.ops.sphere import transforms


def s2_band_limit(shape: tuple[int, ...], sampling: str) -> int:
  """L of an S² signal [..., n_θ, n_φ, C] on s2fft's ``sampling`` ("dh": 2L rows, "gl": L)."""
  n_theta, n_phi = shape[-3], shape[-2]
  L = n_theta // 2 if sampling == "dh" else n_theta
  if grids.s2fft_grid(L, sampling).shape != (n_theta, n_phi):
    raise ValueError(f"S² signal of shape {shape} is not on a {sampling!r} grid "
                     f"(expected [.., {grids.s2fft_grid(L, sampling).shape}, C])")
  return L


def so3_band_limits(shape: tuple[int, ...], sampling: str) -> tuple[int, int]:
  """(L, N) of an SO(3) signal [..., 2N−1, n_β, n_α, C] on s2fft's ``sampling``."""
  n_gamma = shape[-4]
  if n_gamma % 2 != 1:
    raise ValueError(f"SO(3) signal of shape {shape}: n_γ = {n_gamma} must be odd (2N−1)")
  return s2_band_limit(shape[-3:], sampling), (n_gamma + 1) // 2


def _complex_init(scale: float):
  def init(key, shape, dtype=jnp.complex64):
    re, im = jax.random.normal(key, (2,) + tuple(shape))
    return (scale * (re + 1j * im) / np.sqrt(2.0)).astype(dtype)
  return init


def _ell_mask(L: int, n_half: tuple[int, ...]) -> np.ndarray:
  """1 where every |n| ≤ ℓ, for [L, 2N₁−1, (2N₂−1)] filter axes (D^ℓ_{nk} needs |n|, |k| ≤ ℓ)."""
  ell = np.arange(L).reshape((L,) + (1,) * len(n_half))
  mask = np.ones((L,) + tuple(2 * n - 1 for n in n_half), bool)
  for i, n in enumerate(n_half):
    idx = np.abs(np.arange(-(n - 1), n)).reshape(
        (1,) + tuple(-1 if j == i else 1 for j in range(len(n_half))))
    mask &= idx <= ell
  return mask.astype(np.float32)


class S2ToSO3Conv(nn.Module):
  """S² [B, n_θ, n_φ, C_in] (band-limit L_in) → SO(3) [B, 2N−1, n_β, n_α, features] at (L_out, N).

  Attributes:
    features: output channels.
    L_out: output band-limit (≤ the input's); N: directional band-limit (keep ≤ 4–6).
    sampling: "dh" or "gl" (input and output).
    use_bias: add a real bias per output channel (a constant function: equivariant).
  """
  features: int
  L_out: int
  N: int
  sampling: str = "dh"
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    L_in = s2_band_limit(x.shape, self.sampling)
    L, N, c_in = self.L_out, self.N, x.shape[-1]
    if not 1 <= N <= L <= L_in:
      raise ValueError(f"S2ToSO3Conv: need 1 <= N={N} <= L_out={L} <= L_in={L_in}")
    w = self.param("kernel", _complex_init((c_in * L * (2 * N - 1)) ** -0.5),
                   (L, 2 * N - 1, c_in, self.features))
    w = w * _ell_mask(L, (N,))[..., None, None]
    flm = transforms.s2_forward(x, L_in, self.sampling)[..., :L, L_in - L:L_in + L - 1, :]
    scale = (8 * np.pi ** 2 / (2 * np.arange(L) + 1)).astype(np.float32)
    flmn = jnp.einsum("...lmc,lncd,l->...nlmd", flm, jnp.conj(w), scale)
    y = transforms.so3_inverse(flmn, L, N, self.sampling)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    return y


class SO3ToSO3Conv(nn.Module):
  """SO(3) [B, 2N_in−1, n_β, n_α, C_in] → SO(3) [B, 2N_out−1, n_β', n_α', features].

  Attributes:
    features: output channels.
    L_out: output band-limit (≤ the input's); N_out: output directional band-limit
      (default: the input's).
    sampling: "dh" or "gl".
    use_bias: add a real bias per output channel.
  """
  features: int
  L_out: int
  N_out: int | None = None
  sampling: str = "dh"
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    L_in, N_in = so3_band_limits(x.shape, self.sampling)
    L, c_in = self.L_out, x.shape[-1]
    N = self.N_out or N_in
    if not (1 <= N <= L <= L_in):
      raise ValueError(f"SO3ToSO3Conv: need 1 <= N_out={N} <= L_out={L} <= L_in={L_in}")
    w = self.param("kernel", _complex_init((c_in * L * (2 * N_in - 1)) ** -0.5),
                   (L, 2 * N - 1, 2 * N_in - 1, c_in, self.features))
    w = w * _ell_mask(L, (N, N_in))[..., None, None]
    flmk = transforms.so3_forward(x, L_in, N_in, self.sampling)
    flmk = flmk[..., :L, L_in - L:L_in + L - 1, :]
    flmn = jnp.einsum("...klmc,lnkcd->...nlmd", flmk, jnp.conj(w))
    y = transforms.so3_inverse(flmn, L, N, self.sampling)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    return y


def so3_pointwise(x: jax.Array, fn, sampling: str = "dh", oversample: int = 2) -> jax.Array:
  """``fn`` applied pointwise to an SO(3) signal on a finer grid, band-limited back.

  x [B, 2N−1, n_β, n_α, C] at (L, N) → the same shape. With ``oversample`` = k > 1 the
  signal is synthesised at (kL, kN − k + 1) (its coefficients zero-padded), ``fn`` is
  applied there, and the result is transformed back and cut to (L, N). Applied on the
  signal's own grid (k = 1, plain ``fn(x)``), a nonlinearity's harmonics above L alias
  into the next layer's coefficients and break equivariance badly on coarse grids (the
  invariant of a ReLU network on digits moved by ~40 % of its spread under rotation at
  L ≤ 10, N = 3); the finer grid leaves only harmonics above kL to alias, and the
  output is exactly band-limited. Cost: two transforms at (kL, kN).
  """
  if oversample <= 1:
    return fn(x)
  L, N = so3_band_limits(x.shape, sampling)
  L2, N2 = oversample * L, oversample * (N - 1) + 1
  f = transforms.so3_forward(x, L, N, sampling)  # [B, 2N−1, L, 2L−1, C]
  pad = [(0, 0)] * (f.ndim - 4) + [(N2 - N, N2 - N), (0, L2 - L), (L2 - L, L2 - L), (0, 0)]
  y = fn(transforms.so3_inverse(jnp.pad(f, pad), L2, N2, sampling))
  g = transforms.so3_forward(y, L2, N2, sampling)
  g = g[..., N2 - N:N2 + N - 1, :L, L2 - L:L2 + L - 1, :]
  return transforms.so3_inverse(g, L, N, sampling)


def so3_haar_weights(shape: tuple[int, ...], sampling: str) -> np.ndarray:
  """Haar quadrature weights [2N−1, n_β, n_α] of an SO(3) grid, normalised to sum 1."""
  L, N = so3_band_limits(shape, sampling)
  g = grids.so3_grid(L, N, sampling)
  w = np.broadcast_to(g.weights[None, :, None], g.shape) / (8 * np.pi ** 2)
  return w.astype(np.float32)


def s2_area_weights(shape: tuple[int, ...], sampling: str) -> np.ndarray:
  """Quadrature weights [n_θ, n_φ] of an S² grid, normalised to sum 1."""
  g = grids.s2fft_grid(s2_band_limit(shape, sampling), sampling)
  return (np.broadcast_to(g.weights[:, None], g.shape) / (4 * np.pi)).astype(np.float32)


def so3_haar_mean(x: jax.Array, sampling: str = "dh") -> jax.Array:
  """∫ x dR / 8π² per channel: [B, 2N−1, n_β, n_α, C] → [B, C] (rotation invariant)."""
  return jnp.einsum("...gbac,gba->...c", x, so3_haar_weights(x.shape, sampling))


def s2_haar_mean(x: jax.Array, sampling: str = "dh") -> jax.Array:
  """∫ x dΩ / 4π per channel: [B, n_θ, n_φ, C] → [B, C] (rotation invariant)."""
  return jnp.einsum("...tpc,tp->...c", x, s2_area_weights(x.shape, sampling))


class SphericalBatchNorm(nn.Module):
  """Batch normalisation of SO(3) (``kind="so3"``) or S² (``"s2"``) grid signals.

  Per channel, mean and variance are Haar-weighted averages over the batch and the
  grid (rotation invariant, unlike a plain mean over samples); running averages in
  ``batch_stats``; a learnt scale and shift per channel.
  """
  kind: str = "so3"
  sampling: str = "dh"
  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    c = x.shape[-1]
    mean_fn = so3_haar_mean if self.kind == "so3" else s2_haar_mean
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    if train:
      mean = jnp.mean(mean_fn(x, self.sampling), axis=0)
      var = jnp.mean(mean_fn(jnp.square(x - mean), self.sampling), axis=0)
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    else:
      mean, var = ra_mean.value, ra_var.value
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


def param_count(params: Any) -> int:
  """Real parameters in a tree (a complex entry counts twice)."""
  return int(sum(np.size(p) * (2 if np.iscomplexobj(p) else 1)
                 for p in jax.tree_util.tree_leaves(params)))
