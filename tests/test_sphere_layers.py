"""Spherical layers: fast (s2fft kernels, float32) vs direct quadrature, and equivariance.

Equivariance is checked exactly on band-limited inputs: the input's coefficients are
rotated in harmonic space (``wigner.rotate_flm``, float64, itself checked against
geometric rotation in test_sphere_transforms.py), both inputs are sampled on the grid in
float32, and the layer's outputs are compared in harmonic space with the rotated
coefficients of the unrotated output. The outputs of the correlation layers are
band-limited at (L_out, N), so the comparison is exact up to float32 rounding: errors of
~1e-7–1e-6 of the signal's scale (sums of O(L²·C) float32 products), so the bound 1e-4
leaves two orders of margin while any convention error gives O(1). A planar 3 × 3
convolution on the same equiangular map goes through the same check and must fail it.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recoil_jax.ops.sphere import grids
from recoil_jax.ops.sphere import layers
from recoil_jax.ops.sphere import reference
from recoil_jax.ops.sphere import transforms
from recoil_jax.ops.sphere import wigner

EQUIVARIANCE_TOL = 1e-4


def _rel(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def _s2_signal(flm, L, sampling):
  """Real float32 samples [1, n_θ, n_φ, C] of coefficients [L, 2L−1, C] (float64 synthesis)."""
  g = grids.s2fft_grid(L, sampling)
  t, p = np.meshgrid(g.thetas, g.phis, indexing="ij")
  f = np.stack([wigner.s2_synthesis(flm[..., c], t, p).real for c in range(flm.shape[-1])], -1)
  return jnp.asarray(f[None], jnp.float32)


def _so3_signal(flmn, L, N, sampling):
  e = grids.so3_grid(L, N, sampling).euler_angles()
  f = np.stack([wigner.so3_synthesis(flmn[..., c], e[..., 0], e[..., 1], e[..., 2]).real
                for c in range(flmn.shape[-1])], -1)
  return jnp.asarray(f[None], jnp.float32)


def _masked(module_kernel, L, n_half):
  return np.asarray(module_kernel) * layers._ell_mask(L, n_half)[..., None, None]  # pylint: disable=protected-access


@pytest.mark.parametrize("sampling", ["dh", "gl"])
def test_s2_to_so3_matches_direct_quadrature(sampling):
  rng = np.random.default_rng(0)
  L_in, L_out, N = 6, 5, 2
  x = _s2_signal(wigner.random_flm(rng, L_in, (2,)), L_in, sampling)
  m = layers.S2ToSO3Conv(3, L_out=L_out, N=N, sampling=sampling)
  v = m.init(jax.random.PRNGKey(0), x)
  v = {"params": {**v["params"], "bias": jnp.asarray([0.5, -1.0, 2.0])}}
  fast = m.apply(v, x)
  assert fast.shape == (1, 2 * N - 1) + grids.so3_grid(L_out, N, sampling).shape[1:] + (3,)
  ref = reference.s2_to_so3(np.asarray(x), _masked(v["params"]["kernel"], L_out, (N,)),
                            np.asarray(v["params"]["bias"]), L_out=L_out, N=N,
                            sampling=sampling)
  assert _rel(fast, ref) < 1e-5


@pytest.mark.parametrize("sampling", ["dh", "gl"])
def test_so3_to_so3_matches_direct_quadrature(sampling):
  rng = np.random.default_rng(1)
  L_in, N_in, L_out, N_out = 5, 2, 4, 2
  x = _so3_signal(wigner.random_flmn(rng, L_in, N_in, (2,)), L_in, N_in, sampling)
  m = layers.SO3ToSO3Conv(2, L_out=L_out, N_out=N_out, sampling=sampling)
  v = m.init(jax.random.PRNGKey(1), x)
  fast = m.apply(v, x)
  ref = reference.so3_to_so3(np.asarray(x), _masked(v["params"]["kernel"], L_out,
                                                     (N_out, N_in)),
                             np.asarray(v["params"]["bias"]), L_out=L_out, N_out=N_out,
                             sampling=sampling)
  assert _rel(fast, ref) < 1e-5


def test_haar_mean_matches_reference_and_ell0_coefficient():
  rng = np.random.default_rng(2)
  L, N = 6, 3
  flmn = wigner.random_flmn(rng, L, N, (2,))
  x = _so3_signal(flmn, L, N, "dh")
  fast = np.asarray(layers.so3_haar_mean(x))
  np.testing.assert_allclose(fast, reference.so3_haar_mean(np.asarray(x)), rtol=1e-5, atol=1e-6)
  # ∫ f dR / 8π² = f^0_00 / 8π² (D^0 ≡ 1).
  np.testing.assert_allclose(fast[0], flmn[N - 1, 0, L - 1].real / (8 * np.pi ** 2),
                             rtol=1e-5, atol=1e-6)


def _equivariance_error_s2(module, L, sampling, rng, seed=0, check_fn=None):
  """Relative error of module(rotated input) vs rotated module(input), in harmonic space."""
  flm = wigner.random_flm(rng, L, (2,))
  Q = tuple(grids.random_rotations(rng, 1)[0])
  x, xq = _s2_signal(flm, L, sampling), _s2_signal(wigner.rotate_flm(flm, Q), L, sampling)
  v = module.init(jax.random.PRNGKey(seed), x)
  y, yq = module.apply(v, x), module.apply(v, xq)
  return check_fn(np.asarray(y, np.float64), np.asarray(yq, np.float64), Q)


def _so3_check(L, N, sampling):
  def check(y, yq, Q):
    c = np.asarray(transforms.so3_forward(jnp.asarray(y[0], jnp.float32), L, N, sampling))
    cq = np.asarray(transforms.so3_forward(jnp.asarray(yq[0], jnp.float32), L, N, sampling))
    return _rel(cq, wigner.rotate_flmn(c, Q))
  return check


def _s2_check(L, sampling):
  def check(y, yq, Q):
    c = np.asarray(transforms.s2_forward(jnp.asarray(y[0], jnp.float32), L, sampling))
    cq = np.asarray(transforms.s2_forward(jnp.asarray(yq[0], jnp.float32), L, sampling))
    return _rel(cq, wigner.rotate_flm(c, Q))
  return check


@pytest.mark.parametrize("sampling", ["dh", "gl"])
def test_s2_to_so3_is_equivariant(sampling):
  rng = np.random.default_rng(3)
  L, L_out, N = 10, 8, 3
  for seed in range(3):
    m = layers.S2ToSO3Conv(4, L_out=L_out, N=N, sampling=sampling)
    err = _equivariance_error_s2(m, L, sampling, rng, seed, _so3_check(L_out, N, sampling))
    assert err < EQUIVARIANCE_TOL, err


@pytest.mark.parametrize("sampling", ["dh", "gl"])
def test_so3_to_so3_is_equivariant(sampling):
  rng = np.random.default_rng(4)
  L, N, L_out, N_out = 8, 3, 6, 2
  for seed in range(3):
    flmn = wigner.random_flmn(rng, L, N, (2,))
    Q = tuple(grids.random_rotations(rng, 1)[0])
    x = _so3_signal(flmn, L, N, sampling)
    xq = _so3_signal(wigner.rotate_flmn(flmn, Q), L, N, sampling)
    m = layers.SO3ToSO3Conv(3, L_out=L_out, N_out=N_out, sampling=sampling)
    v = m.init(jax.random.PRNGKey(seed), x)
    err = _so3_check(L_out, N_out, sampling)(np.asarray(m.apply(v, x)),
                                             np.asarray(m.apply(v, xq)), Q)
    assert err < EQUIVARIANCE_TOL, err


class _PlanarConv(nn.Module):
  """Negative control: a 3 × 3 convolution on the equiangular (θ, φ) map, S² → S²."""

  @nn.compact
  def __call__(self, x):
    return nn.Conv(4, (3, 3), padding="SAME")(x)


def test_planar_conv_fails_the_same_equivariance_check():
  rng = np.random.default_rng(5)
  L = 10
  errs = [_equivariance_error_s2(_PlanarConv(), L, "dh", rng, seed, _s2_check(L, "dh"))
          for seed in range(3)]
  assert min(errs) > 100 * EQUIVARIANCE_TOL, errs


def test_haar_mean_of_spherical_stack_is_invariant_without_nonlinearity():
  """S² → SO(3) → SO(3) → Haar mean: an invariant to float32 rounding."""
  rng = np.random.default_rng(6)
  L = 8

  class Stack(nn.Module):
    @nn.compact
    def __call__(self, x):
      y = layers.S2ToSO3Conv(4, L_out=6, N=2)(x)
      y = layers.SO3ToSO3Conv(3, L_out=4)(y)
      return layers.so3_haar_mean(y)

  def check(y, yq, Q):
    del Q
    return _rel(yq, y)

  err = _equivariance_error_s2(Stack(), L, "dh", rng, 0, check)
  assert err < EQUIVARIANCE_TOL, err


def test_spherical_batchnorm_uses_haar_moments_and_updates_state():
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.standard_normal((4, 3, 12, 11, 2)) * 3 + 1, jnp.float32)
  bn = layers.SphericalBatchNorm()
  v = bn.init(jax.random.PRNGKey(0), x, train=True)
  y, state = bn.apply(v, x, train=True, mutable=["batch_stats"])
  mean = np.asarray(layers.so3_haar_mean(y)).mean(0)
  var = np.asarray(layers.so3_haar_mean(jnp.square(y - mean))).mean(0)
  np.testing.assert_allclose(mean, 0, atol=1e-5)
  np.testing.assert_allclose(var, 1, atol=1e-3)
  assert not np.allclose(state["batch_stats"]["mean"], 0)
  assert set(v) == {"params", "batch_stats"}


def test_layer_gradients_flow_to_complex_filters():
  rng = np.random.default_rng(8)
  x = _s2_signal(wigner.random_flm(rng, 6, (1,)), 6, "dh")
  m = layers.S2ToSO3Conv(2, L_out=5, N=2)
  v = m.init(jax.random.PRNGKey(0), x)
  assert v["params"]["kernel"].dtype == jnp.complex64
  assert set(v) == {"params"}  # Transform kernels are constants, not variables.

  def loss(k):
    return jnp.sum(jnp.square(m.apply({"params": {**v["params"], "kernel": k}}, x)))

  g = jax.grad(loss)(v["params"]["kernel"])
  # Directional derivative along a random complex direction vs finite differences.
  d = jnp.asarray(rng.standard_normal(g.shape) + 1j * rng.standard_normal(g.shape),
                  jnp.complex64) * 1e-2
  k0 = v["params"]["kernel"]
  fd = (loss(k0 + d) - loss(k0 - d)) / 2
  # For real L(z), jax.grad returns g = ∂L/∂x − i ∂L/∂y, so dL = Re(g · dz).
  lin = jnp.sum(jnp.real(g * d))
  assert float(jnp.abs(fd - lin)) < 1e-2 * float(jnp.abs(lin)) + 1e-6
