"""Tests of ``recoil_jax.physics.electron_transport`` against its formulas.

The samplers are checked directly (no simulator): the Møller inverse CDF against
the closed-form CDF of ``gas``, the two-body angles against momentum conservation,
the straggling sampler's mean and variance against ``energy_loss_moments``, and the
table columns against the ``gas`` functions.  Numbers are [computed].
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from recoil_jax.physics import electron_transport as et
from recoil_jax.physics import gas as gas_lib
from recoil_jax.physics.gas import HE_CO2_70_30

GAS = HE_CO2_70_30
CUT = 1.0  # keV
EPS_C = 0.15  # keV
M = gas_lib.ELECTRON_MASS_KEV


def test_close_collision_constant():
  k0 = et.close_collision_constant_kev_per_mm(GAS)
  expected = (2 * math.pi * gas_lib.CLASSICAL_ELECTRON_RADIUS_CM**2 * M *
              gas_lib.electron_density_per_cm3(GAS) / 10.0)
  assert k0 == pytest.approx(expected, rel=1e-12)
  # K0/(β² W²) integrated over W ≥ 1 keV is the Møller rate's low-x limit (1/x²
  # term only): within 25 % of the full rate at 40 keV.
  e = 40.0
  beta2 = e * (e + 2 * M) / (e + M)**2
  rate_1_over_w2 = k0 / beta2 * (1 / CUT - 2 / e)
  assert rate_1_over_w2 == pytest.approx(
      float(gas_lib.delta_ray_rate_per_mm(GAS, e, CUT)), rel=0.25)


@pytest.mark.parametrize("delta_rays", [True, False])
def test_loss_table_columns_match_gas(delta_rays):
  e = np.array([0.5, 1.5, 2.5, 10.0, 40.0, 100.0])
  cols = et.loss_table_columns(GAS, e, CUT, delta_rays=delta_rays,
                               close_min_kev=EPS_C)
  above = gas_lib.moller_loss_above_cut_kev_per_mm(GAS, e, CUT)
  if delta_rays:
    np.testing.assert_allclose(cols[:, 0], gas_lib.delta_ray_rate_per_mm(GAS, e, CUT))
    np.testing.assert_array_equal(cols[:, 1], 0.0)
    continuous = gas_lib.restricted_dedx_kev_per_mm(GAS, e, CUT)
  else:
    np.testing.assert_array_equal(cols[:, 0], 0.0)
    np.testing.assert_allclose(cols[:, 1], above)
    continuous = gas_lib.dedx_kev_per_mm(GAS, e)
  beta2 = e * (e + 2 * M) / (e + M)**2
  eps_hi = np.minimum(CUT, e / 2)
  close = (et.close_collision_constant_kev_per_mm(GAS) / beta2 *
           np.log(np.maximum(eps_hi / EPS_C, 1.0)))
  np.testing.assert_allclose(cols[:, 2], np.clip(close / continuous, 0, 1), rtol=1e-12)
  assert cols[0, 0] == 0.0 and cols[0, 2] > 0  # below 2 T_c: no δ-rays
  assert np.all((cols[:, 2] >= 0) & (cols[:, 2] <= 1))


def test_moller_cdf_matches_gas():
  for e in (2.5, 10.0, 50.0):
    g, a = (float(t) for t in et.moller_terms(jnp.float32(e)))
    x = np.linspace(CUT / e, 0.5, 7)[1:]
    got = np.asarray(et.moller_cdf(jnp.asarray(x, jnp.float32), jnp.float32(CUT / e), g, a))
    np.testing.assert_allclose(got, gas_lib.moller_cdf_shape(x, CUT / e, g, a), rtol=2e-4)


@pytest.mark.parametrize("energy", [2.5, 50.0])
def test_moller_fraction_inverse_cdf(energy):
  n = 50_000
  u = jax.random.uniform(jax.random.key(11), (n,))
  x = np.asarray(et.sample_moller_fraction(jnp.full((n,), energy, jnp.float32),
                                           jnp.float32(CUT), u), np.float64)
  gam = 1 + energy / M
  g = (2 * gam - 1) / gam**2
  cdf = lambda v: (gas_lib.moller_cdf_shape(v, CUT / energy, g, 1 - g) /  # noqa: E731
                   gas_lib.moller_cdf_shape(0.5, CUT / energy, g, 1 - g))
  np.testing.assert_allclose(cdf(np.clip(x, CUT / energy, 0.5)), np.asarray(u), atol=2e-5)
  assert stats.kstest(x, lambda v: cdf(np.clip(v, CUT / energy, 0.5))).pvalue > 1e-3
  # Below 2 T_c no δ-ray: x = 1/2 by convention.
  assert float(et.sample_moller_fraction(jnp.float32(1.9), jnp.float32(CUT),
                                         jnp.float32(0.3))) == 0.5


def test_moller_angles_conserve_momentum():
  e = jnp.array([2.5, 40.0, 50.0], jnp.float32)
  w = jnp.array([1.2, 1.0, 20.0], jnp.float32)
  cos_p, sin_p, cos_d, sin_d = (np.asarray(a, np.float64) for a in et.moller_angles(e, w))
  e, w = np.asarray(e, np.float64), np.asarray(w, np.float64)
  p0, p1, p2 = (np.sqrt(t * (t + 2 * M)) for t in (e, e - w, w))
  np.testing.assert_allclose(p1 * cos_p + p2 * cos_d, p0, rtol=1e-5)
  np.testing.assert_allclose(p1 * sin_p, p2 * sin_d, rtol=1e-5)


@pytest.mark.parametrize("energy, step_mm", [(40.0, 0.27), (3.0, 0.03)])
def test_energy_loss_mean_and_variance(energy, step_mm):
  k0 = et.close_collision_constant_kev_per_mm(GAS)
  quantum = gas_lib.mean_excitation_energy_ev(GAS) * 1e-3
  loss_mean = float(gas_lib.restricted_dedx_kev_per_mm(GAS, energy, CUT)) * step_mm
  kw = dict(k0=k0, eps_c=EPS_C, cut=CUT, quantum=quantum)
  mean, var = et.energy_loss_moments(loss_mean, step_mm, energy, 0.0, **kw)
  assert float(mean) == pytest.approx(loss_mean, rel=1e-5)
  # Variance: λ_close ε_c ε_hi + distant mean × I, with λ_close = s K ln(ε_hi/ε_c)/⟨W⟩.
  beta2 = energy * (energy + 2 * M) / (energy + M)**2
  eps_hi = min(CUT, energy / 2)
  close_mean = step_mm * k0 / beta2 * math.log(eps_hi / EPS_C)
  w_mean = EPS_C * eps_hi * math.log(eps_hi / EPS_C) / (eps_hi - EPS_C)
  expected = close_mean / w_mean * EPS_C * eps_hi + (loss_mean - close_mean) * quantum
  assert float(var) == pytest.approx(expected, rel=1e-4)
  n = 100_000
  u = jax.random.uniform(jax.random.key(12), (n, 5))
  full = lambda v: jnp.full((n,), v, jnp.float32)  # noqa: E731
  loss = np.asarray(et.sample_energy_loss(full(loss_mean), full(step_mm), full(energy),
                                          full(0.0), u, **kw), np.float64)
  assert loss.min() >= 0
  assert abs(loss.mean() - loss_mean) < 5 * math.sqrt(loss.var() / n)
  c = loss - loss.mean()
  se_var = math.sqrt(max(np.mean(c**4) - loss.var()**2, 0.0) / n)
  assert abs(loss.var() - float(var)) < 5 * se_var + 1e-3 * float(var)


def test_words_to_uniforms():
  words = jnp.array([[0x00000000, 0xFFFFFFFF], [0x8000FFFF, 0x12345678]], jnp.uint32)
  u = np.asarray(et.words_to_uniforms(words))
  assert u.shape == (2, 4)
  np.testing.assert_allclose(u[0], [0.5 / 65536, 0.5 / 65536, 65535.5 / 65536,
                                    65535.5 / 65536])
  np.testing.assert_allclose(u[1, :2], [(0x8000 + 0.5) / 65536, 65535.5 / 65536])
  assert np.all((u > 0) & (u < 1))
