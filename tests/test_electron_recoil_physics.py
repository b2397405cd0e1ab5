"""Tests of the TPC simulator's optional physics (``recoil_jax.physics.electron_recoil_physics``).

δ-rays, straggling and electron spread are checked against their own formulas (the
Møller cross section, the Berger–Seltzer restricted stopping power, the straggling model's
mean and variance, the spread model's moments), at fixed seeds, with tolerances set by
the sample sizes.  One simulation with all three switches on (512 tracks at 40 keV, one
compile) serves the track-level tests.  Reference numbers are [computed], not data.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from recoil_jax.physics import gas as gas_lib
from recoil_jax.physics.gas import HE_CO2_70_30
from recoil_jax.physics import electron_recoils as er
from recoil_jax.physics import electron_recoil_physics as phys

GAS = HE_CO2_70_30
CUT = 1.0  # δ-ray cut, keV
M = gas_lib.ELECTRON_MASS_KEV

# --------------------------------------------------------------------------
# gas.py: Møller cross sections and the restricted stopping power
# --------------------------------------------------------------------------


def _berger_seltzer_restricted(gas, t, cut):
  """Restricted collision dE/dx (Berger–Seltzer / ICRU 37 form, as Geant4's
  G4MollerBhabhaModel::ComputeDEDXPerVolume), Bragg-additive, keV/mm."""
  out = 0.0
  for comp, w in zip(gas.components, gas.mass_fractions):
    tau = t / M
    gam = tau + 1.0
    beta2 = 1.0 - 1.0 / gam**2
    i2 = (comp.I_ex_eV * 1e-3 / M)**2
    d = np.minimum(cut, t / 2.0) / M
    bracket = (np.log(2.0 * (tau + 2.0) / i2) - 1.0 - beta2 + np.log((tau - d) * d) +
               tau / (tau - d) + (0.5 * d * d + (2.0 * tau + 1.0) *
                                  np.log(1.0 - d / tau)) / gam**2)
    out = out + w * gas_lib.BETHE_PREFACTOR_MEV_CM2_PER_G * comp.Z / comp.A / beta2 * bracket
  return out * gas.density_g_cm3 * 100.0


def test_restricted_stopping_matches_berger_seltzer():
  t = np.array([1.5, 2.0, 2.5, 5.0, 10.0, 20.0, 40.0, 50.0, 100.0])
  np.testing.assert_allclose(gas_lib.restricted_dedx_kev_per_mm(GAS, t, CUT),
                             _berger_seltzer_restricted(GAS, t, CUT), rtol=1e-5)
  # At cut = T/2 nothing is restricted: the full (ESTAR) formula.
  np.testing.assert_allclose(_berger_seltzer_restricted(GAS, t, t / 2),
                             gas_lib.dedx_kev_per_mm(GAS, t), rtol=1e-10)
  r = gas_lib.restricted_csda_range_mm(GAS, t, CUT)
  assert np.all(r >= gas_lib.csda_range_mm(GAS, t) - 1e-12)
  np.testing.assert_allclose(r[:2], gas_lib.csda_range_mm(GAS, t[:2]), rtol=1e-12)


def test_moller_cross_section_is_integral_of_dcs():
  for t in (2.5, 10.0, 40.0):
    w = np.linspace(CUT, t / 2, 200001)
    dcs = gas_lib.moller_dcs_cm2_per_kev(t, w)
    integral = np.sum((dcs[1:] + dcs[:-1]) / 2 * np.diff(w))
    assert integral == pytest.approx(float(gas_lib.moller_cross_section_cm2(t, CUT)),
                                     rel=1e-6)
    loss = np.sum(((w * dcs)[1:] + (w * dcs)[:-1]) / 2 * np.diff(w))
    loss *= gas_lib.electron_density_per_cm3(GAS) * 0.1
    assert loss == pytest.approx(
        float(gas_lib.moller_loss_above_cut_kev_per_mm(GAS, t, CUT)), rel=1e-6)
  assert gas_lib.moller_cross_section_cm2(2.0, CUT) == 0.0


def test_delta_ray_numbers_match_physics_facts():
  # physics-facts §1c: ~0.35 δ-rays/cm above 1 keV at 40 keV; 2-3 per 40 keV track.
  rate_cm = float(gas_lib.delta_ray_rate_per_mm(GAS, 40.0, CUT)) * 10
  assert rate_cm == pytest.approx(0.35, rel=0.1)
  e = np.geomspace(2 * CUT * 1.0001, 40.0, 4001)
  per_track = np.trapezoid(gas_lib.delta_ray_rate_per_mm(GAS, e, CUT) /
                           gas_lib.dedx_kev_per_mm(GAS, e), e)
  assert 2.0 < per_track < 3.0
  assert gas_lib.mean_excitation_energy_ev(GAS) == pytest.approx(75.1, abs=0.1)


# --------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------


def _moller_u(x, e, cut):
  """Analytic CDF of x = W/E above the cut (gas.moller_cdf_shape), float64."""
  gam = 1.0 + e / M
  g = (2 * gam - 1) / gam**2
  x_cut = cut / e
  return (gas_lib.moller_cdf_shape(x, x_cut, g, 1 - g) /
          gas_lib.moller_cdf_shape(0.5, x_cut, g, 1 - g))


@pytest.mark.parametrize("energy", [2.2, 5.0, 40.0])
def test_moller_sampler_matches_cdf(energy):
  n = 100_000
  u = jax.random.uniform(jax.random.key(1), (n,))
  x = np.asarray(phys.sample_moller_fraction(jnp.full((n,), energy, jnp.float32),
                                             jnp.float32(CUT), u), np.float64)
  assert x.min() >= CUT / energy * (1 - 1e-6) and x.max() <= 0.5
  # KS at n = 1e5: the 0.1 % critical distance is 1.95/sqrt(n) = 0.006.
  res = stats.kstest(x, lambda v: _moller_u(np.clip(v, CUT / energy, 0.5), energy, CUT))
  assert res.pvalue > 1e-3, res
  # The inverse CDF itself is accurate (Newton converged): u -> x -> u.
  np.testing.assert_allclose(_moller_u(x, energy, CUT), np.asarray(u), atol=2e-5)


def test_moller_kinematics_conserve_momentum():
  e = jnp.array([2.5, 10.0, 40.0, 40.0, 50.0], jnp.float32)
  w = jnp.array([1.2, 1.0, 1.0, 20.0, 7.0], jnp.float32)
  cos_p, sin_p, cos_d, sin_d = (np.asarray(a, np.float64) for a in phys.moller_angles(e, w))
  e, w = np.asarray(e, np.float64), np.asarray(w, np.float64)
  p0 = np.sqrt(e * (e + 2 * M))
  p1 = np.sqrt((e - w) * (e - w + 2 * M))
  p2 = np.sqrt(w * (w + 2 * M))
  np.testing.assert_allclose(p1 * cos_p + p2 * cos_d, p0, rtol=1e-5)
  np.testing.assert_allclose(p1 * sin_p, p2 * sin_d, rtol=1e-5)
  np.testing.assert_allclose(cos_p**2 + sin_p**2, 1.0, rtol=1e-5)
  np.testing.assert_allclose(cos_d**2 + sin_d**2, 1.0, rtol=1e-5)
  # Non-relativistic limit: the two electrons leave at 90° to each other.
  assert np.all(np.abs(np.arccos(cos_p) + np.arccos(cos_d) - np.pi / 2) < 0.1)


@pytest.mark.parametrize("lam, terms, gauss_above", [
    (0.05, 20, 6.0), (0.7, 20, 6.0), (2.9, 20, 6.0), (5.9, 20, 6.0), (12.0, 20, 6.0),
    (0.3, 10, 3.0), (2.9, 10, 3.0)])
def test_poisson_sampler(lam, terms, gauss_above):
  # The two settings used: distant collisions (20 terms) and close ones (10 terms).
  n = 200_000
  u = jax.random.uniform(jax.random.key(2), (n,))
  k = np.asarray(phys.sample_poisson(jnp.full((n,), lam, jnp.float32), u, terms=terms,
                                     gauss_above=gauss_above))
  assert np.all(k == np.round(k)) and k.min() >= 0
  se = math.sqrt(lam / n)
  assert abs(k.mean() - lam) < 5 * se
  assert k.var() == pytest.approx(lam, rel=5 * math.sqrt(2.0 / n) + 0.01)
  if lam < gauss_above:
    # Exact inverse CDF: compare the whole distribution (chi-square on counts).
    kmax = int(k.max())
    expected = stats.poisson.pmf(np.arange(kmax + 1), lam) * n
    observed = np.bincount(k.astype(int), minlength=kmax + 1)
    keep = expected > 20
    chi2 = np.sum((observed[keep] - expected[keep])**2 / expected[keep])
    assert stats.chi2.sf(chi2, keep.sum() - 1) > 1e-3


@pytest.mark.parametrize("energy, step_mm, delta_rays", [
    (40.0, 0.27, True), (40.0, 0.27, False), (10.0, 0.08, True),
    (3.0, 0.03, True), (1.8, 0.02, True)])
def test_straggling_mean_and_width_match_model(energy, step_mm, delta_rays):
  tables = phys.build_physics_tables(GAS, CUT, delta_rays)
  if delta_rays:
    dedx = gas_lib.restricted_dedx_kev_per_mm(GAS, energy, CUT)
    above = 0.0
  else:
    dedx = gas_lib.dedx_kev_per_mm(GAS, energy)
    above = float(gas_lib.moller_loss_above_cut_kev_per_mm(GAS, energy, CUT))
  loss_mean = float(dedx) * step_mm
  n = 200_000
  u = jax.random.uniform(jax.random.key(3), (n, 5))
  full = lambda v: jnp.full((n,), v, jnp.float32)  # noqa: E731
  kw = dict(k0=tables.k0_kev_per_mm, eps_c=tables.close_min_kev, cut=CUT,
            quantum=tables.quantum_kev)
  loss = np.asarray(phys.sample_energy_loss(
      full(loss_mean), full(step_mm), full(energy), full(above), u, **kw), np.float64)
  mean, var = phys.energy_loss_moments(loss_mean, step_mm, energy, above, **kw)
  assert float(mean) == pytest.approx(loss_mean, rel=1e-5)
  # Standard errors from the sample's own moments (the close part is heavy-tailed).
  c = loss - loss.mean()
  se_mean = math.sqrt(loss.var() / n)
  se_var = math.sqrt(max(np.mean(c**4) - loss.var()**2, 0.0) / n)
  assert abs(loss.mean() - loss_mean) < 5 * se_mean
  assert abs(loss.var() - float(var)) < 5 * se_var + 1e-3 * float(var)
  # Thin gas steps are far from Gaussian: a finite fraction loses nothing, and the
  # width is comparable with the mean.
  assert np.sqrt(var) > 0.3 * loss_mean
  if energy == 40.0 and delta_rays:
    assert 0.1 < (loss == 0).mean() < 0.5


def test_spread_model_moments():
  tables = phys.build_physics_tables(GAS, CUT, True)
  t = er._build_tables(GAS, 1.0, CUT)
  n = 200_000
  k1, k2 = jax.random.split(jax.random.key(4))
  v = jax.random.uniform(k1, (n, 4))
  normals = jax.random.normal(k2, (n, 3))
  energy = 40.0
  disp = np.asarray(phys.spread_displacements(
      jnp.full((n,), energy, jnp.float32), v, normals,
      log_range=jnp.asarray(t.by_energy[:, 0]), frac_close=jnp.asarray(tables.by_energy[:, 2]),
      log_e0=t.log_e0, dlog_e=t.dlog_e, delta_cut=CUT, eps_c=tables.close_min_kev,
      core_sigma_mm=tables.core_sigma_mm), np.float64)
  # Core: 10 nm in water scaled by the electron density: 16.7 µm mean distance.
  assert tables.core_sigma_mm * math.sqrt(8 / math.pi) == pytest.approx(0.0167, rel=0.01)
  # Close fraction f(40 keV) = K ln(1 keV/0.15 keV) / restricted dE/dx.
  k = tables.k0_kev_per_mm / (energy * (energy + 2 * M) / (energy + M)**2)
  f = k * math.log(CUT / phys.CLOSE_MIN_KEV) / float(
      gas_lib.restricted_dedx_kev_per_mm(GAS, energy, CUT))
  assert 0.15 < f < 0.25
  # E|d|² = 3σ² + f E[r²], r = ξ R(W)/2, W log-uniform on [ε_c, T_c].
  w = np.geomspace(phys.CLOSE_MIN_KEV, CUT, 20001)
  r2 = np.mean((phys.SPREAD_REACH_FRACTION * gas_lib.csda_range_mm(GAS, w))**2) / 3
  expected = 3 * tables.core_sigma_mm**2 + f * r2
  d2 = np.sum(disp**2, axis=1)
  assert d2.mean() == pytest.approx(expected, rel=5 * d2.std() / d2.mean() / math.sqrt(n) + 0.01)
  assert np.all(np.isfinite(disp))


# --------------------------------------------------------------------------
# Track level: all three switches on (one compiled shape)
# --------------------------------------------------------------------------

N_TRACKS = 512
E0 = 40.0


@pytest.fixture(scope="module")
def tracks():
  return er.simulate_electron_recoils(5, E0, N_TRACKS, delta_rays=True, straggling=True,
                                      electron_spread=True, delta_cut_kev=CUT)


def _cumulative_delta_hazard():
  """C(E) = ∫_{2 T_c}^{E} Σ_δ / S_restricted dE' (the expected number of δ-rays from
  a primary slowing down from E to 2 T_c without emitting), on a fine grid."""
  e = np.geomspace(2 * CUT, E0 * 1.01, 20001)
  h = gas_lib.delta_ray_rate_per_mm(GAS, e, CUT) / gas_lib.restricted_dedx_kev_per_mm(
      GAS, e, CUT)
  c = np.concatenate([[0.0], np.cumsum((h[1:] + h[:-1]) / 2 * np.diff(e))])
  return lambda x: np.interp(x, e, c)


def test_energy_is_conserved(tracks):
  # Every keV of E0 is deposited (primary + all δ generations): float32 sums.
  np.testing.assert_allclose(tracks.deposited_kev, E0, rtol=2e-4)
  n = tracks.num_electrons.astype(float)
  mean = E0 / (GAS.W_eV * 1e-3)
  assert n.mean() == pytest.approx(mean, rel=0.01)
  assert 0.12 < n.var(ddof=1) / mean < 0.3
  assert np.all(np.isfinite(tracks.positions_mm))


def test_delta_ray_rate_per_mm_of_path(tracks):
  """Time-rescaling test of the δ production rate along the primary's path.

  After each emission the primary restarts at E' = E_parent − W, and the next parent
  energy E has P(no emission above E) = exp(−(C(E') − C(E))) (a Poisson process with
  rate Σ_δ per mm, dE/dl = restricted stopping).  For each emitted gen-1 δ,
  w = (1 − e^{−Λ})/(1 − e^{−Λ_max}) with Λ = C(E') − C(E), Λ_max = C(E') is U(0, 1).
  Straggling makes dE/dl fluctuate; the resulting bias in Λ is ~Var(Λ)/2 ~ 1e-3,
  far below the KS resolution at this sample size (D_crit ≈ 0.04 for ~1300 δ-rays).
  """
  c = _cumulative_delta_hazard()
  ws = []
  for i in range(N_TRACKS):
    k = tracks.num_delta_rays[i]
    gen = tracks.delta_generation[i, :k]
    parents = tracks.delta_parent_kev[i, :k][gen == 1]
    energies = tracks.delta_kev[i, :k][gen == 1]
    start = E0
    for parent, w in zip(parents, energies):
      lam, lam_max = c(start) - c(parent), c(start)
      ws.append((1 - math.exp(-lam)) / (1 - math.exp(-lam_max)))
      start = parent - w
  ws = np.array(ws)
  assert len(ws) > 800
  res = stats.kstest(ws, "uniform")
  assert res.pvalue > 1e-3, res
  # Numbers (physics-facts §1c: 2-3 per track above 1 keV at 40 keV).
  gen1 = np.sum(tracks.delta_generation == 1, axis=1)
  assert 2.0 < gen1.mean() < 3.2
  assert tracks.num_delta_rays.mean() >= gen1.mean()


def test_delta_ray_spectrum_matches_moller(tracks):
  k = tracks.num_delta_rays
  mask = np.arange(tracks.delta_kev.shape[1])[None, :] < k[:, None]
  w = tracks.delta_kev[mask].astype(np.float64)
  parent = tracks.delta_parent_kev[mask].astype(np.float64)
  assert np.all(w >= CUT * (1 - 1e-5)) and np.all(w <= parent / 2 * (1 + 1e-5))
  # Given the parent energy, u = CDF(W/E) is U(0, 1) for a Møller spectrum.
  u = np.array([_moller_u(np.clip(wi / p, CUT / p, 0.5), p, CUT) for wi, p in zip(w, parent)])
  res = stats.kstest(u, "uniform")
  assert res.pvalue > 1e-3, res
  # Most δ-rays are soft: median below 2.5 keV (ranges of 0.1-0.5 mm).
  assert np.median(w) < 2.5


def test_range_straggles_and_tracks_stay_credible(tracks):
  path = tracks.path_length_mm
  # The primary's path fluctuates (energy-loss straggling and δ emission); its
  # mean stays near the CSDA range (δ-ray energy leaves the primary, but the
  # restricted stopping power is lower).
  assert path.std() > 0.05 * path.mean()
  assert path.mean() == pytest.approx(48.8, rel=0.15)
  dmax = [np.linalg.norm(tracks.track(i), axis=1).max() for i in range(N_TRACKS)]
  assert np.mean(dmax) == pytest.approx(34.6, rel=0.25)
  # The first electrons are near the origin (with straggling the first ~0.2 keV of
  # deposit can come a few steps of 0.27 mm later).
  first_z = np.array([tracks.track(i)[:5, 2].mean() for i in range(N_TRACKS)])
  assert np.percentile(np.abs(first_z), 99) < 2.0 and np.median(np.abs(first_z)) < 0.6


def test_switches_validate():
  with pytest.raises(ValueError, match="delta_cut_kev"):
    er.simulate_electron_recoils(0, 40.0, 2, delta_rays=True, delta_cut_kev=0.5)
  with pytest.raises(ValueError, match="max_delta_rays"):
    er.simulate_electron_recoils(0, 40.0, 2, delta_rays=True, max_delta_rays=0)


# --------------------------------------------------------------------------
# Dataset config: the switches enter the hash only when on
# --------------------------------------------------------------------------


def test_dataset_hash_unchanged_with_switches_off():
  from recoil_jax.studies.tpc import dataset as tpc_dataset  # pylint: disable=g-import-not-at-top
  base = dict(num_train_val=50, num_test=20, max_voxels=400, seed=3)
  name = tpc_dataset.make_config(**base).name
  off = dict(delta_rays=False, straggling=False, electron_spread=False, delta_cut_kev=2.0)
  assert tpc_dataset.make_config(**base, sim_physics=off).name == name
  assert tpc_dataset.make_config(**base, sim_physics={}).name == name
  names = {name}
  for switch in tpc_dataset.SIM_PHYSICS_SWITCHES:
    cfg = tpc_dataset.make_config(**base, sim_physics={**off, switch: True})
    assert dict(cfg.sim_physics)[switch] is True
    names.add(cfg.name)
  names.add(tpc_dataset.make_config(
      **base, sim_physics={**off, "delta_rays": True, "delta_cut_kev": 1.0}).name)
  assert len(names) == 5
  # The elastic scale enters the hash only when it is not 1, with or without switches.
  assert tpc_dataset.make_config(**base, sim_physics={**off, "elastic_scale": 1.0}).name == name
  on = {**off, "delta_rays": True, "delta_cut_kev": 1.0}
  assert tpc_dataset.make_config(**base, sim_physics={**on, "elastic_scale": 1.0}).name in names
  scaled = tpc_dataset.make_config(**base, sim_physics={**off, "elastic_scale": 2.0})
  assert dict(scaled.sim_physics) == {"elastic_scale": 2.0} and scaled.name not in names
  assert tpc_dataset.make_config(**base, sim_physics={**on, "elastic_scale": 2.0}).name not in (
      names | {scaled.name})
  with pytest.raises(ValueError, match="elastic_scale must be finite and > 0"):
    tpc_dataset.make_config(**base, sim_physics={"elastic_scale": -1.0})
  with pytest.raises(ValueError, match="unknown"):
    tpc_dataset.make_config(**base, sim_physics={"delta_ray": True})
  with pytest.raises(ValueError, match="electron_recoil"):
    tpc_dataset.make_config(num_train_val=0, num_test=0, max_voxels=10, seed=0,
                            degrad_files={"train_val": __file__},
                            sim_physics={"straggling": True})


def test_step_budget_grows_with_the_elastic_scale():
  # More elastic collisions per track need more transport steps (50 keV at × 2 overflowed
  # 1024); at the model's cross section the budget (and so the output) is that of before.
  from recoil_jax.physics import electron_recoils  # pylint: disable=g-import-not-at-top
  assert electron_recoils.default_max_steps() == electron_recoils.default_max_steps(1.0) == 1024
  assert electron_recoils.default_max_steps(0.5) == 1024
  assert electron_recoils.default_max_steps(2.0) == 3072
