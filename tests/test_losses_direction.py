"""Tests of recoil_jax.losses.direction: cosine loss, vMF (NLL, normaliser, cone, sampler), Kent."""

import math

import jax
import jax.numpy as jnp
from jax import test_util as jtu
import numpy as np
import pytest
import scipy.special
import scipy.stats

from recoil_jax.losses import direction as direction_losses

EPS32 = float(np.finfo(np.float32).eps)
KAPPAS = np.geomspace(1e-6, 1e5, 45)


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _mean_cos_reference(k):
  """coth κ − 1/κ in float64: series to κ⁹ below 0.03 (truncation < 1e-17 relative),
  else directly (cancellation error ≤ eps/κ² < 1e-12 relative)."""
  k = np.asarray(k, np.float64)
  series = k / 3 - k**3 / 45 + 2 * k**5 / 945 - k**7 / 4725 + 2 * k**9 / 93555
  kk = np.maximum(k, 0.03)
  return np.where(k < 0.03, series, 1 / np.tanh(kk) - 1 / kk)


def _unit(v):
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _near_mu_targets(rng, mu, kappa):
  """Unit vectors at the typical vMF distance from mu (angle² ~ 2/κ), capped at π."""
  perp = _unit(np.cross(mu, rng.normal(size=mu.shape)))
  ang = np.minimum(np.sqrt(2.0 / kappa) * rng.uniform(0.2, 2.0, size=kappa.shape), 3.0)
  return _unit(np.cos(ang)[:, None] * mu + np.sin(ang)[:, None] * perp)


# --------------------------------------------------------------------- cosine similarity


def test_cosine_similarity_loss_matches_definition():
  rng = np.random.default_rng(0)
  pred = rng.normal(size=(64, 3))
  label = rng.normal(size=(64, 3))
  got = np.asarray(direction_losses.cosine_similarity_loss(pred, label))
  want = -np.sum(pred * label, -1) / (np.linalg.norm(pred, axis=-1)
                                      * np.linalg.norm(label, axis=-1))
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
  assert got.shape == (64,)
  # Perfect and opposite predictions.
  np.testing.assert_allclose(direction_losses.cosine_similarity_loss(label, 3.0 * label), -1.0,
                             rtol=1e-6)
  np.testing.assert_allclose(direction_losses.cosine_similarity_loss(-label, label), 1.0, rtol=1e-6)


def test_cosine_similarity_loss_zero_vector_is_finite():
  pred = jnp.zeros((2, 3))
  label = jnp.ones((2, 3))
  assert np.all(np.asarray(direction_losses.cosine_similarity_loss(pred, label)) == 0.0)
  g = jax.grad(lambda p: direction_losses.cosine_similarity_loss(p, label).sum())(pred)
  assert np.all(np.isfinite(np.asarray(g)))


def test_cosine_similarity_loss_rejects_bad_shapes():
  with pytest.raises(ValueError, match="pred"):
    direction_losses.cosine_similarity_loss(jnp.ones((4, 2)), jnp.ones((4, 2)))


# --------------------------------------------------------------------------- vMF NLL


def test_vmf_nll_matches_scipy_float64(x64):
  rng = np.random.default_rng(1)
  mu = _unit(rng.normal(size=(KAPPAS.size, 3)))
  for y in (_near_mu_targets(rng, mu, KAPPAS), _unit(rng.normal(size=mu.shape))):
    got = np.asarray(direction_losses.vmf_nll(mu, KAPPAS, y))
    assert got.dtype == np.float64
    want = np.array([-scipy.stats.vonmises_fisher(m, k).logpdf(v)
                     for m, k, v in zip(mu, KAPPAS, y)])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=0)


def test_vmf_nll_limits(x64):
  mu = jnp.array([[0.0, 0.0, 1.0]])
  # κ → 0: uniform density on S², NLL = log 4π = 2.531.
  np.testing.assert_allclose(direction_losses.vmf_nll(mu, jnp.array([0.0]), mu),
                             math.log(4 * math.pi), rtol=1e-15)
  np.testing.assert_allclose(direction_losses.vmf_nll(mu, jnp.array([1e-6]), mu),
                             math.log(4 * math.pi) - 1e-6 + 1e-12 / 6, rtol=1e-14)
  # Large κ at the mode: log(2π/κ).
  np.testing.assert_allclose(direction_losses.vmf_nll(mu, jnp.array([1e5]), mu),
                             math.log(2 * math.pi / 1e5), rtol=1e-14)


def test_vmf_nll_float32_accuracy():
  """float32 arithmetic vs float64 arithmetic on the same (float32-rounded) inputs.

  Each of the three terms (κ‖y − μ‖²/2, log 4π, log(−expm1(−2κ)/(2κ))) is computed with
  a few float32 roundings, so the error is bounded by a small multiple of eps32 times
  the sum of their magnitudes; 16·eps32 leaves a 2–4× margin over what is observed.
  """
  rng = np.random.default_rng(2)
  mu = _unit(rng.normal(size=(KAPPAS.size, 3))).astype(np.float32)
  y = _near_mu_targets(rng, mu.astype(np.float64), KAPPAS).astype(np.float32)
  k32 = KAPPAS.astype(np.float32)
  got = np.asarray(direction_losses.vmf_nll(mu, k32, y))
  assert got.dtype == np.float32 and np.all(np.isfinite(got))
  mu64, y64, k64 = (a.astype(np.float64) for a in (mu, y, k32))
  h = 0.5 * np.sum((y64 - mu64) ** 2, -1)
  rest = np.log(4 * np.pi) + np.log(-np.expm1(-2 * k64) / (2 * k64))
  want = k64 * h + rest
  tol = 16 * EPS32 * (np.abs(k64 * h) + np.abs(rest) + np.log(4 * np.pi))
  assert np.all(np.abs(got - want) <= tol), np.max(np.abs(got - want) / tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vmf_nll_gradients_finite_across_range(dtype):
  with jax.enable_x64(dtype == np.float64):
    rng = np.random.default_rng(3)
    mu = _unit(rng.normal(size=(KAPPAS.size, 3))).astype(dtype)
    y = np.concatenate([_near_mu_targets(rng, mu[:, :].astype(np.float64), KAPPAS)],
                       0).astype(dtype)
    k = KAPPAS.astype(dtype)
    f = lambda m, kk, yy: direction_losses.vmf_nll(m, kk, yy).sum()
    grads = jax.grad(f, argnums=(0, 1, 2))(mu, k, y)
    for g in grads:
      assert g.dtype == dtype
      assert np.all(np.isfinite(np.asarray(g)))
    # Also exactly at the mode (y = μ) and at the antipode.
    for yy in (mu, -mu):
      for g in jax.grad(f, argnums=(0, 1, 2))(mu, k, yy):
        assert np.all(np.isfinite(np.asarray(g)))
    # dNLL/dκ = ‖y − μ‖²/2 + coth κ − 1/κ − 1 (checked to 1e-4 relative in float32).
    h = 0.5 * np.sum((y.astype(np.float64) - mu) ** 2, -1)
    k64 = k.astype(np.float64)
    coth_term = _mean_cos_reference(k64)
    want = h + coth_term - 1.0
    # The derivative is a sum of O(1) terms that cancel at small κ: compare with an
    # absolute tolerance scaled by the size of the terms (≈ eps of the dtype × 16).
    tol = 16 * float(np.finfo(dtype).eps) * (1.0 + h + np.abs(coth_term))
    assert np.all(np.abs(np.asarray(grads[1], np.float64) - want) <= tol)


def test_vmf_nll_check_grads_float64(x64):
  rng = np.random.default_rng(4)
  kappa = jnp.array([1e-3, 0.05, 0.7, 8.0, 300.0])
  mu = jnp.asarray(_unit(rng.normal(size=(5, 3))))
  y = jnp.asarray(_unit(rng.normal(size=(5, 3))))
  jtu.check_grads(jax.jit(direction_losses.vmf_nll), (mu, kappa, y), order=2, modes=("fwd", "rev"),
                  eps=1e-6)


def test_vmf_nll_rejects_bad_shapes():
  with pytest.raises(ValueError, match="kappa"):
    direction_losses.vmf_nll(jnp.ones((4, 3)), jnp.ones((4, 1)), jnp.ones((4, 3)))


# --------------------------------------------------- vMF normaliser, mean, cone, sampling


def test_vmf_log_normaliser_and_mean_cosine(x64):
  k = np.geomspace(1e-6, 700, 40)
  want = np.log(4 * np.pi) + np.log(np.sinh(k) / k)
  np.testing.assert_allclose(direction_losses.vmf_log_normaliser(k), want, rtol=1e-13)
  want_a = _mean_cos_reference(k)
  np.testing.assert_allclose(direction_losses.vmf_mean_cosine(k), want_a, rtol=1e-12)
  g = jax.vmap(jax.grad(direction_losses.vmf_log_normaliser))(jnp.asarray(k))
  np.testing.assert_allclose(g, want_a, rtol=1e-12)
  # Large κ in float32 stays finite.
  big = direction_losses.vmf_log_normaliser(jnp.array([1e5], jnp.float32))
  assert np.isfinite(np.asarray(big)).all()


def test_vmf_cone_angle_matches_cdf(x64):
  k = np.geomspace(1e-6, 1e5, 30)
  for p in (0.1, 0.5, 0.68, 0.9, 0.95):
    theta = np.asarray(direction_losses.vmf_cone_angle(k, p))
    u = 1 - np.cos(theta)
    # CDF of u = 1 − μ·y, evaluated independently in float64.
    cdf = -np.expm1(-k * u) / -np.expm1(-2 * k)
    np.testing.assert_allclose(cdf, p, rtol=1e-9)
  # κ → 0: uniform sphere, P(angle ≤ θ) = (1 − cos θ)/2.
  np.testing.assert_allclose(direction_losses.vmf_cone_angle(0.0, 0.5), np.pi / 2, rtol=1e-12)
  # Large κ: angle ≈ √(−2 log(1 − p)/κ) (Rayleigh limit).
  np.testing.assert_allclose(direction_losses.vmf_cone_angle(1e5, 0.9),
                             np.sqrt(-2 * np.log(0.1) / 1e5), rtol=1e-4)


@pytest.mark.parametrize("kappa", [1e-3, 0.5, 3.0, 19.0, 300.0, 1e4])
def test_vmf_sample_mean_cosine_and_coverage(kappa):
  n = 20000
  rng = np.random.default_rng(5)
  mu = _unit(rng.normal(size=(n, 3))).astype(np.float32)
  y = np.asarray(direction_losses.vmf_sample(jax.random.PRNGKey(0), mu, np.full(n, kappa)),
                 np.float64)
  np.testing.assert_allclose(np.linalg.norm(y, axis=-1), 1.0, atol=1e-5)
  cos = np.sum(y * mu, -1)
  want = float(direction_losses.vmf_mean_cosine(jnp.float32(kappa)))
  assert abs(cos.mean() - want) < 5 * cos.std() / math.sqrt(n) + 1e-6
  # Azimuth uniform: the mean vector is parallel to μ (rotate each sample to μ = z).
  e1, e2 = (np.asarray(v, np.float64) for v in direction_losses.perpendicular_basis(jnp.asarray(mu)))
  for e in (e1, e2):
    comp = np.sum(y * e, -1)
    assert abs(comp.mean()) < 5 * max(comp.std(), 1e-9) / math.sqrt(n)
  # Coverage of the cone at several nominal probabilities (binomial 5σ).
  for p in (0.5, 0.68, 0.9, 0.95):
    theta = float(direction_losses.vmf_cone_angle(jnp.float32(kappa), p))
    ang = np.arctan2(np.linalg.norm(np.cross(mu, y), axis=-1), cos)
    frac = np.mean(ang <= theta)
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-4, (p, frac)


def test_vmf_sample_negative_control():
  """Samples at κ are not consistent with the cone of 4κ (the coverage test can fail)."""
  n = 20000
  mu = np.tile(np.array([[0.0, 0.0, 1.0]], np.float32), (n, 1))
  y = np.asarray(direction_losses.vmf_sample(jax.random.PRNGKey(1), mu, np.full(n, 10.0)))
  theta = float(direction_losses.vmf_cone_angle(40.0, 0.68))
  frac = np.mean(np.arccos(np.clip(y[:, 2], -1, 1)) <= theta)
  assert abs(frac - 0.68) > 10 * math.sqrt(0.68 * 0.32 / n)


# --------------------------------------------------------------- Bessel functions, Kent


def test_log_ive_half_integer_matches_scipy(x64):
  orders = np.arange(41) + 0.5  # ν = ½ … 40½
  xs = np.geomspace(1e-3, 1e4, 120)
  got = np.asarray(direction_losses.log_ive_half_integer(jnp.asarray(xs), 41))
  assert got.shape == (120, 41)
  with np.errstate(divide="ignore"):
    want = np.log(scipy.special.ive(orders[None, :], xs[:, None]))
  ok = np.isfinite(want)  # scipy underflows to 0 for ν ≫ x (we do not: log space).
  assert ok.mean() > 0.9
  np.testing.assert_allclose(got[ok], want[ok], rtol=0, atol=1e-11)
  # The same in float32: log error ≤ 1e-4 (relative 1e-4 in ive); the recurrences
  # accumulate ~n·eps32 and the forward branch amplifies by ≤ e^{n²/x} ≤ e⁸·eps32.
  with jax.enable_x64(False):
    got32 = np.asarray(direction_losses.log_ive_half_integer(jnp.asarray(xs, jnp.float32), 41))
  assert np.all(np.isfinite(got32))
  np.testing.assert_allclose(got32[ok], want[ok], rtol=1e-5, atol=1e-4)


def test_log_ive_high_orders_for_kent(x64):
  n = 2 * direction_losses.KENT_NUM_TERMS - 1
  xs = np.geomspace(1e-2, 1e4, 40)
  got = np.asarray(direction_losses.log_ive_half_integer(jnp.asarray(xs), n))
  with np.errstate(divide="ignore"):
    want = np.log(scipy.special.ive(np.arange(n)[None, :] + 0.5, xs[:, None]))
  ok = np.isfinite(want)
  np.testing.assert_allclose(got[ok], want[ok], rtol=0, atol=1e-10)


def _kent_log_c_quadrature(kappa, beta):
  """log c(κ, β) by 2-D quadrature over (u = 1 − γ₁·x, φ) on the sphere.

  dΩ = du dφ; the exponent is κ(1 − u) + β u(2 − u) cos 2φ. φ: trapezoid (spectral for
  a periodic integrand); u: composite Gauss–Legendre on [0, min(2, 60/(κ − 2β))].
  """
  m_phi = 256
  phi = np.arange(m_phi) * 2 * np.pi / m_phi
  u_max = min(2.0, 60.0 / (kappa - 2 * beta))
  nodes, weights = np.polynomial.legendre.leggauss(40)
  edges = np.linspace(0.0, u_max, 41)
  u = ((nodes[None, :] + 1) / 2 * np.diff(edges)[:, None] + edges[:-1, None]).ravel()
  w = (weights[None, :] / 2 * np.diff(edges)[:, None]).ravel()
  expo = (-kappa * u[:, None] + beta * (u * (2 - u))[:, None] * np.cos(2 * phi)[None, :])
  integral = np.sum(w[:, None] * np.exp(expo)) * (2 * np.pi / m_phi)
  return kappa + np.log(integral)


@pytest.mark.parametrize("kappa,beta", [(0.5, 0.1), (2.0, 0.7), (10.0, 3.9), (50.0, 20.0),
                                        (200.0, 50.0), (1500.0, 600.0), (1e4, 3e3)])
def test_kent_log_normaliser_matches_quadrature(x64, kappa, beta):
  got = float(direction_losses.kent_log_normaliser(kappa, beta))
  want = _kent_log_c_quadrature(kappa, beta)
  np.testing.assert_allclose(got, want, rtol=1e-11)


def test_kent_reduces_to_vmf_at_beta_zero(x64):
  k = np.geomspace(1e-3, 1e4, 50)
  np.testing.assert_allclose(direction_losses.kent_log_normaliser(k, np.zeros_like(k)),
                             direction_losses.vmf_log_normaliser(k), rtol=1e-12)
  rng = np.random.default_rng(6)
  frame = direction_losses.frame_from_6d(jnp.asarray(rng.normal(size=(50, 6))))
  y = jnp.asarray(_unit(rng.normal(size=(50, 3))))
  np.testing.assert_allclose(
      jax.jit(direction_losses.kent_nll)(*frame, k, np.zeros_like(k), y),
      direction_losses.vmf_nll(frame.gamma1, k, y), rtol=1e-12)


def test_kent_nll_is_normalised(x64):
  """exp(−NLL) integrates to 1 over the sphere (Fibonacci lattice, many points)."""
  n = 50000
  i = np.arange(n) + 0.5
  z = 1 - 2 * i / n
  phi = np.pi * (1 + 5 ** 0.5) * i
  pts = np.stack([np.sqrt(1 - z * z) * np.cos(phi), np.sqrt(1 - z * z) * np.sin(phi), z], -1)
  rng = np.random.default_rng(7)
  frame = direction_losses.frame_from_6d(jnp.asarray(rng.normal(size=(1, 6))))
  frames = [jnp.tile(g, (n, 1)) for g in frame]
  nll = jax.jit(direction_losses.kent_nll)(*frames, jnp.full((n,), 3.0), jnp.full((n,), 1.2),
                                 jnp.asarray(pts))
  np.testing.assert_allclose(np.mean(np.exp(-np.asarray(nll))) * 4 * np.pi, 1.0, rtol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kent_nll_gradients_finite(dtype):
  with jax.enable_x64(dtype == np.float64):
    rng = np.random.default_rng(8)
    n = 24
    raw_frame = jnp.asarray(rng.normal(size=(n, 6)), dtype)
    kappa_target = np.geomspace(1e-3, 1e4, n)
    raw_kappa = jnp.asarray(kappa_target + np.log(-np.expm1(-kappa_target)), dtype)  # softplus⁻¹
    raw_ell = jnp.asarray(rng.normal(scale=3.0, size=n), dtype)
    y = jnp.asarray(_unit(rng.normal(size=(n, 3))), dtype)

    def f(raw_frame, raw_kappa, raw_ell):
      kappa, beta = direction_losses.kent_parameters(raw_kappa, raw_ell)
      return direction_losses.kent_nll(*direction_losses.frame_from_6d(raw_frame), kappa, beta, y).sum()

    value, grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(
        raw_frame, raw_kappa, raw_ell)
    assert np.isfinite(float(value))
    for g in grads:
      assert g.dtype == dtype
      assert np.all(np.isfinite(np.asarray(g)))
    # β = 0 exactly: gradient w.r.t. β is finite (the normaliser is even in β).
    g_beta = jax.jit(jax.grad(lambda b: direction_losses.kent_log_normaliser(
        jnp.asarray(kappa_target, dtype), b).sum()))(jnp.zeros(n, dtype))
    assert np.all(np.isfinite(np.asarray(g_beta)))


def _kent_check_grads(order):
  rng = np.random.default_rng(9)
  frame = direction_losses.frame_from_6d(jnp.asarray(rng.normal(size=(3, 6))))
  y = jnp.asarray(_unit(rng.normal(size=(3, 3))))
  kappa = jnp.array([0.3, 12.0, 900.0])
  beta = jnp.array([0.1, 4.0, 300.0])
  jtu.check_grads(jax.jit(lambda k, b: direction_losses.kent_nll(*frame, k, b, y)), (kappa, beta),
                  order=order, modes=("rev",) if order == 1 else ("fwd", "rev"), eps=1e-5)


def test_kent_check_grads_float64(x64):
  _kent_check_grads(order=1)


@pytest.mark.slow
def test_kent_check_grads_second_order_float64(x64):
  _kent_check_grads(order=2)


def test_frame_and_parameters():
  rng = np.random.default_rng(10)
  frame = direction_losses.frame_from_6d(jnp.asarray(rng.normal(size=(100, 6)), jnp.float32))
  m = np.stack([np.asarray(g) for g in frame], -1)  # [100, 3, 3], columns γ1 γ2 γ3
  np.testing.assert_allclose(np.einsum("bij,bik->bjk", m, m),
                             np.broadcast_to(np.eye(3), (100, 3, 3)), atol=2e-6)
  np.testing.assert_allclose(np.linalg.det(m), 1.0, atol=2e-6)  # right-handed
  kappa, beta = direction_losses.kent_parameters(jnp.array([-30.0, 0.0, 30.0]),
                                       jnp.array([50.0, 0.0, -50.0]))
  ratio = np.asarray(2 * beta / kappa)
  assert np.all(ratio <= direction_losses.KENT_MAX_ELLIPTICITY) and np.all(ratio >= 0)
  with pytest.raises(ValueError, match="max_ellipticity"):
    direction_losses.kent_parameters(jnp.zeros(1), jnp.zeros(1), max_ellipticity=1.0)
  with pytest.raises(ValueError, match="raw"):
    direction_losses.frame_from_6d(jnp.zeros((2, 5)))
  arr = direction_losses.orthonormal_frame(jnp.asarray(rng.normal(size=(4, 6))))
  assert arr.shape == (4, 3, 3)
  np.testing.assert_allclose(np.asarray(arr[:, 0]),
                             np.asarray(direction_losses.frame_from_6d(arr.reshape(4, 9)[:, :6]).gamma1),
                             atol=1e-6)
