"""Tests of the toy electron-recoil simulator and its gas tables.

Reference numbers are independently computed tables (ESTAR-method stopping
powers and CSDA ranges after ICRU Report 37, Bragg additivity, 760 torr, 20 °C;
elastic/transport mean free paths; and an independent single-scattering toy MC:
screened Rutherford plus CSDA loss, 300 tracks per energy), not published data.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recoil_jax.physics import electron_recoils as er
from recoil_jax.physics import gas as gas_lib
from recoil_jax.physics.gas import HE_CF4_60_40, HE_CO2_70_30
from recoil_jax.physics.electron_recoils import simulate_electron_recoils

# --------------------------------------------------------------------------
# gas.py
# --------------------------------------------------------------------------

# Computed (ESTAR method, 760 torr, 20 °C): T (keV) -> (S MeV cm²/g, dE/dx keV/cm, R_CSDA mm).
HE_CO2_TABLE = {
    2: (67.7, 45.1, 0.27),
    5: (34.6, 23.0, 1.26),
    10: (20.3, 13.5, 4.21),
    20: (11.9, 7.89, 14.3),
    40: (7.00, 4.66, 48.8),
    50: (5.95, 3.96, 72.2),
    60: (5.22, 3.47, 99.2),
}
HE_CF4_TABLE = {
    5: (30.4, 47.5, 0.62),
    10: (18.1, 28.2, 2.04),
    40: (6.33, 9.89, 23.1),
    50: (5.38, 8.42, 34.1),
}


def test_mixture_properties():
  g = HE_CO2_70_30
  assert g.molar_mass == pytest.approx(16.005, rel=1e-3)
  np.testing.assert_allclose(g.mass_fractions, [0.1751, 0.8249], atol=2e-4)
  assert g.density_g_cm3 == pytest.approx(6.653e-4, rel=1e-3)
  assert HE_CF4_60_40.density_g_cm3 == pytest.approx(1.563e-3, rel=1e-3)
  elements, n = g.atom_species()
  assert [el.symbol for el in elements] == ["He", "C", "O"]
  # 70:30 by volume: n_He : n_C : n_O = 0.7 : 0.3 : 0.6.
  np.testing.assert_allclose(n / n[1], [0.7 / 0.3, 1.0, 2.0], rtol=1e-12)


def test_estar_water_check():
  # ESTAR, water (Z/A = 10/18.0153, I = 75 eV): 22.56/13.17/6.603/4.115.
  s = gas_lib.collision_stopping_power(10 / 18.0153, 75.0, [10, 20, 50, 100])
  np.testing.assert_allclose(s, [22.56, 13.17, 6.603, 4.115], rtol=2e-3)


def test_pure_gas_stopping_powers():
  t = [1, 10, 20, 50, 100]
  s = gas_lib.component_stopping_powers_mev_cm2_g(HE_CO2_70_30, t)
  np.testing.assert_allclose(s[0], [130.8, 22.67, 13.07, 6.471, 4.003],
                             rtol=5e-3)
  np.testing.assert_allclose(s[1], [102.9, 19.81, 11.61, 5.834, 3.642],
                             rtol=5e-3)


@pytest.mark.parametrize("gas, table", [(HE_CO2_70_30, HE_CO2_TABLE),
                                        (HE_CF4_60_40, HE_CF4_TABLE)])
def test_stopping_power_and_range_tables(gas, table):
  t = np.array(sorted(table), dtype=float)
  ref = np.array([table[k] for k in sorted(table)])
  np.testing.assert_allclose(gas_lib.stopping_power_mev_cm2_g(gas, t),
                             ref[:, 0], rtol=0.02)
  np.testing.assert_allclose(gas_lib.dedx_kev_per_mm(gas, t) * 10.0,
                             ref[:, 1], rtol=0.02)
  np.testing.assert_allclose(gas_lib.csda_range_mm(gas, t), ref[:, 2],
                             rtol=0.02)


def test_csda_range_is_integral_of_inverse_stopping():
  g = HE_CO2_70_30
  t = np.geomspace(1.0, 60.0, 2001)
  r = gas_lib.csda_range_mm(g, t)
  # dR/dT = 1/(dE/dx).
  drdt = np.gradient(r, t)
  np.testing.assert_allclose(drdt[5:-5], 1.0 / gas_lib.dedx_kev_per_mm(
      g, t[5:-5]), rtol=1e-3)
  assert np.all(np.diff(r) > 0)


def test_elastic_and_transport_mfp():
  t = np.array([1, 5, 10, 20, 40, 50.0])
  lam = gas_lib.elastic_mfp_mm(HE_CO2_70_30, t)
  lam_tr = gas_lib.transport_mfp_mm(HE_CO2_70_30, t)
  np.testing.assert_allclose(lam, [0.019, 0.049, 0.083, 0.147, 0.265, 0.319],
                             rtol=0.1)
  np.testing.assert_allclose(lam_tr, [0.10, 1.19, 3.9, 13.3, 45, 67],
                             rtol=0.1)


def test_screening_and_cross_section_trends():
  t = np.array([1.0, 10.0, 40.0])
  eta = gas_lib.screening_parameter(np.array([[2], [6], [8]]), t)
  assert np.all(np.diff(eta, axis=0) > 0)  # grows with Z
  assert np.all(np.diff(eta, axis=1) < 0)  # falls with energy
  sigma, sigma_tr = gas_lib.elastic_cross_sections_cm2(6, t)
  assert np.all(sigma_tr < 2.0 * sigma) and np.all(sigma_tr > 0)


def test_gas_bad_input():
  with pytest.raises(ValueError, match="T_keV"):
    gas_lib.stopping_power_mev_cm2_g(HE_CO2_70_30, 0.05)
  with pytest.raises(ValueError, match="volume fractions"):
    gas_lib.GasMixture("bad", (gas_lib.GasComponent(
        "He", ((gas_lib.HELIUM, 1),), 0.5, 41.8),))


# --------------------------------------------------------------------------
# electron_recoil.py: building blocks
# --------------------------------------------------------------------------


@pytest.mark.parametrize("eta", [1e-4, 3e-3, 0.05])
def test_angular_sampling_matches_transport_cross_section(eta):
  # <1 - cosθ> = σ₁/σ = 2η(1+η)[ln((1+η)/η) - 1/(1+η)] for the Wentzel law.
  xi = jax.random.uniform(jax.random.key(0), (400_000,))
  mc = float(jnp.mean(er.sample_one_minus_cos(jnp.float32(eta), xi)))
  exact = 2 * eta * (1 + eta) * (np.log1p(1 / eta) - 1 / (1 + eta))
  # The mean is tail-dominated: allow a few standard errors.
  assert mc == pytest.approx(exact, rel=0.05)


def test_count_le_matches_searchsorted():
  k1, k2 = jax.random.split(jax.random.key(3))
  rows = jnp.cumsum(jax.random.uniform(k1, (7, 33)), axis=1)
  rows = rows.at[:, 10:14].set(rows[:, 10:11])  # ties (flat segments)
  q = jax.random.uniform(k2, (7, 50), maxval=float(rows.max()) * 1.1)
  q = q.at[:, 0].set(rows[:, 10])  # a query exactly at a tie
  ref = jax.vmap(lambda a, v: jnp.searchsorted(a, v, side="right"))(rows, q)
  np.testing.assert_array_equal(er._count_le(rows, q), ref)
  # The variant for sorted queries (used for the electron placement), with ties
  # between queries and row entries and repeated queries.
  qs = jnp.sort(q.at[:, 1].set(rows[:, 12]).at[:, 2].set(rows[:, 12]), axis=1)
  ref = jax.vmap(lambda a, v: jnp.searchsorted(a, v, side="right"))(rows, qs)
  np.testing.assert_array_equal(er._count_le_sorted(rows, qs), ref)


def test_interpolation_tables_match_gas_functions():
  tabs = er._build_tables(HE_CO2_70_30, 1.0)
  e = jnp.asarray(np.geomspace(1.0, 60.0, 301), jnp.float32)
  row = er._interp(jnp.asarray(tabs.by_energy), tabs.log_e0, tabs.dlog_e,
                   jnp.log(e))
  e64 = np.asarray(e, np.float64)
  r_ref = gas_lib.csda_range_mm(HE_CO2_70_30, e64)
  np.testing.assert_allclose(np.exp(row[:, 0]), r_ref, rtol=1e-4)
  np.testing.assert_allclose(np.exp(row[:, 1]),
                             gas_lib.elastic_mfp_mm(HE_CO2_70_30, e64),
                             rtol=1e-4)
  mu, _ = gas_lib.atom_macroscopic_cross_sections(HE_CO2_70_30, e64)
  p_he = mu[0] / mu.sum(axis=0)
  np.testing.assert_allclose(row[:, 2], p_he, atol=1e-5)
  # Inverse table: E(R(E)) = E.
  e_back = np.exp(er._interp(jnp.asarray(tabs.log_e_of_log_r), tabs.log_r0,
                             tabs.dlog_r, jnp.log(jnp.asarray(r_ref,
                                                              jnp.float32))))
  np.testing.assert_allclose(e_back, e64, rtol=1e-4)


def test_blocked_draws_prefix_does_not_depend_on_length():
  key = jax.random.key(5)
  short = er._blocked_draws(key, sampler=jax.random.normal, n=300, width=3)
  long = er._blocked_draws(key, sampler=jax.random.normal, n=700, width=3)
  assert short.shape == (300, 3) and long.shape == (700, 3)
  np.testing.assert_array_equal(short, long[:300])


# --------------------------------------------------------------------------
# electron_recoil.py: physics of simulated tracks (200 tracks per energy)
# --------------------------------------------------------------------------

N_TRACKS = 200
ENERGIES = (10, 40, 50)
# One call for all energies: one compiled chunk shape shared by tests.
ALL_ENERGIES = np.repeat(np.array(ENERGIES, np.float64), N_TRACKS)


def _split(r):
  """Splits the combined simulation into {energy: ElectronRecoils}."""
  out = {}
  for j, e in enumerate(ENERGIES):
    s = slice(j * N_TRACKS, (j + 1) * N_TRACKS)
    n = r.num_electrons[s]
    out[e] = er.ElectronRecoils(r.positions_mm[s, :n.max()], n,
                                r.energy_kev[s], r.path_length_mm[s])
  return out


@pytest.fixture(scope="module")
def combined():
  return simulate_electron_recoils(7, ALL_ENERGIES)


@pytest.fixture(scope="module")
def tracks(combined):
  return _split(combined)


def test_output_shapes_and_padding(tracks):
  r = tracks[40]
  assert len(r) == N_TRACKS
  assert r.positions_mm.dtype == np.float32
  assert r.num_electrons.dtype == np.int32
  assert r.positions_mm.shape == (N_TRACKS, r.num_electrons.max(), 3)
  assert np.all(np.isfinite(r.positions_mm))
  for i in range(0, N_TRACKS, 37):
    n = r.num_electrons[i]
    assert r.track(i).shape == (n, 3)
    assert np.all(r.positions_mm[i, n:] == 0)
  np.testing.assert_array_equal(r.energy_kev, 40.0)


@pytest.mark.parametrize("energy, csda_mm", [(10, 4.21), (40, 48.8),
                                             (50, 72.2)])
def test_mean_path_length_is_csda_range(tracks, energy, csda_mm):
  path = tracks[energy].path_length_mm
  assert path.mean() == pytest.approx(csda_mm, rel=0.15)
  # CSDA stepping: the path is R(E0) - R(cutoff) for every track.
  exact = float(gas_lib.csda_range_mm(HE_CO2_70_30, energy) -
                gas_lib.csda_range_mm(HE_CO2_70_30, 1.0))
  np.testing.assert_allclose(path, exact, rtol=5e-3)


def test_ion_pair_count_and_fano(tracks):
  for energy in (10, 40, 50):
    n = tracks[energy].num_electrons.astype(float)
    mean = energy / (HE_CO2_70_30.W_eV * 1e-3)
    assert n.mean() == pytest.approx(mean, rel=0.02)
    fano = n.var(ddof=1) / mean
    assert 0.13 < fano < 0.28, (energy, fano)
  assert tracks[40].num_electrons.mean() == pytest.approx(1170, rel=0.02)


def test_track_end_is_denser_than_start(tracks):
  ratios = []
  for i in range(N_TRACKS):
    xyz = tracks[40].track(i)
    near_start = np.sum(np.linalg.norm(xyz, axis=1) < 1.0)
    near_end = np.sum(np.linalg.norm(xyz - xyz[-1], axis=1) < 1.0)
    ratios.append(near_end / max(near_start, 1))
  # Start: dE/dx(40 keV) ≈ 0.47 keV/mm -> ~14 e⁻/mm; the end blob holds the
  # last few keV within a fraction of a mm.
  assert np.median(ratios) > 3.0


def test_track_size_matches_reference_toy_mc(tracks):
  # Independent single-scattering toy MC: <max distance from start> 3.0 / 34.6 / 51 mm.
  for energy, ref in ((10, 3.0), (40, 34.6), (50, 51.0)):
    r = tracks[energy]
    dmax = [np.linalg.norm(r.track(i), axis=1).max() for i in range(len(r))]
    assert np.mean(dmax) == pytest.approx(ref, rel=0.25), energy


def test_initial_direction_is_plus_z(tracks):
  r = tracks[40]
  cosines = []
  for i in range(N_TRACKS):
    xyz = r.track(i)
    first = xyz[np.linalg.norm(xyz, axis=1) < 1.0]
    m = first.mean(axis=0)
    cosines.append(m[2] / np.linalg.norm(m))
  assert np.mean(cosines) > 0.95
  # Electrons are ordered along the path: the first ones are near the origin.
  first_z = np.array([r.track(i)[:5, 2].mean() for i in range(N_TRACKS)])
  assert np.all(np.abs(first_z) < 1.0)


def test_elastic_scale_shortens_tracks_and_keeps_the_path(tracks):
  # Twice the elastic cross section halves the transport mean free path: the path length
  # (CSDA) is unchanged, the track folds more (a diffusion-like walk reaches ~1/√2 as far
  # when λ_tr ≪ range; less at the start where the walk is still ballistic).
  denser = _split(simulate_electron_recoils(7, ALL_ENERGIES, elastic_scale=2.0))
  for energy in (40, 50):
    a, b = tracks[energy], denser[energy]
    np.testing.assert_allclose(b.path_length_mm, a.path_length_mm, rtol=5e-3)
    reach = [np.mean([np.linalg.norm(r.track(i), axis=1).max() for i in range(len(r))])
             for r in (a, b)]
    assert 0.6 < reach[1] / reach[0] < 0.9, (energy, reach)
  with pytest.raises(ValueError, match="elastic_scale must be finite and > 0"):
    simulate_electron_recoils(0, 40.0, 2, elastic_scale=0.0)


# --------------------------------------------------------------------------
# determinism and errors
# --------------------------------------------------------------------------


def test_same_seed_same_output_different_seed_differs(combined):
  again = simulate_electron_recoils(7, ALL_ENERGIES)
  np.testing.assert_array_equal(again.positions_mm, combined.positions_mm)
  np.testing.assert_array_equal(again.num_electrons, combined.num_electrons)
  np.testing.assert_array_equal(again.path_length_mm, combined.path_length_mm)
  other = simulate_electron_recoils(8, ALL_ENERGIES)
  assert not np.array_equal(other.num_electrons, combined.num_electrons)
  assert not np.array_equal(other.positions_mm[:, :100],
                            combined.positions_mm[:, :100])


# sha256 of (positions_mm, num_electrons, path_length_mm) of `combined` (seed 7, 200
# tracks each at 10/40/50 keV), computed by the simulator as it was before its optional
# physics (electron_recoil_physics) existed (commit 5308d2c^), with jax 0.10.2 on x86_64 CPU.
# With the switches off (the default) the output must stay bit for bit the same. XLA compiles
# for the host CPU, so the last bits depend on its vector extensions: one digest per CPU type
# seen, each recomputed there with that old commit's code (the AVX2 one on 2026-12-07).
# On another jax/XLA version the check is skipped (rerun that commit to record a digest).
GOLDEN_DIGESTS = {
    "AVX-512 CPU": "4b52f71c99f096dc23a583a072967e9f10d6c8ccef08d2e4516d546e985a74d6",
    "AVX2 CPU without AVX-512": "349232a165822410379ac8532acf52de80132879e9cb14a0db589118b184258b",
}
GOLDEN_PLATFORM = ("0.10.2", "x86_64", "cpu")


def _cpu_flags() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next((l.split(":", 1)[1].strip() for l in f if l.startswith("flags")), "?")
  except OSError:
    return "?"


def test_switches_off_reproduce_the_tracks_before_them_bit_for_bit(combined):
  import hashlib  # pylint: disable=g-import-not-at-top
  import platform  # pylint: disable=g-import-not-at-top
  here = (jax.__version__, platform.machine(), jax.default_backend())
  if here != GOLDEN_PLATFORM:
    pytest.skip(f"golden digests recorded on {GOLDEN_PLATFORM}, this is {here}")
  assert combined.num_delta_rays is None and combined.deposited_kev is None
  digest = hashlib.sha256()
  for a in (combined.positions_mm, combined.num_electrons, combined.path_length_mm):
    digest.update(np.ascontiguousarray(a).tobytes())
  assert digest.hexdigest() in GOLDEN_DIGESTS.values(), (
      f"digest {digest.hexdigest()} is none of the old simulator's {GOLDEN_DIGESTS}; CPU "
      f"flags: {_cpu_flags()} (a CPU type not seen before needs its digest from commit "
      "5308d2c^; otherwise the switches-off path changed)")


def test_output_independent_of_chunk_size_and_other_tracks(combined, tracks):
  b = simulate_electron_recoils(7, ALL_ENERGIES, chunk_size=256)
  np.testing.assert_array_equal(combined.num_electrons, b.num_electrons)
  np.testing.assert_array_equal(combined.positions_mm, b.positions_mm)
  np.testing.assert_array_equal(combined.path_length_mm, b.path_length_mm)
  # Track i depends only on (seed, i, its energy): the first 200 tracks alone
  # (another chunk shape and electron capacity) are the same.
  alone = simulate_electron_recoils(7, 10.0, N_TRACKS, chunk_size=256)
  np.testing.assert_array_equal(alone.num_electrons, tracks[10].num_electrons)
  np.testing.assert_array_equal(alone.positions_mm, tracks[10].positions_mm)


_PHYSICS_FIELDS = ("num_delta_rays", "delta_kev", "delta_parent_kev", "delta_generation",
                   "deposited_kev")
_OUTPUT_FIELDS = ("positions_mm", "num_electrons", "energy_kev",
                  "path_length_mm") + _PHYSICS_FIELDS


# Switches off is slow-marked: the golden digest (600 tracks = 2 chunks of 512 on two
# workers by default) already pins that path to the sequential output of before.
@pytest.mark.parametrize("physics", [pytest.param(False, marks=pytest.mark.slow), True],
                         ids=["switches_off", "all_on"])
def test_output_independent_of_workers(physics, monkeypatch):
  # 260 tracks: workers=1 runs one chunk of 512 in this thread; workers=2 splits
  # them into 2 chunks of 256 and workers=3 into 3 of 128 (the smallest split;
  # in the slow case only: one more compiled shape), run on threads.  Every field
  # is the same bit for bit.
  import threading  # pylint: disable=g-import-not-at-top
  from recoil_jax.physics import electron_recoil_physics  # pylint: disable=g-import-not-at-top
  module, name = (electron_recoil_physics, "simulate_chunk") if physics else (er, "_simulate_chunk")
  jitted, calls = getattr(module, name), []

  def recorded(keys, *args, **kwargs):
    calls.append((threading.current_thread().name, keys.shape[0]))
    return jitted(keys, *args, **kwargs)

  monkeypatch.setattr(module, name, recorded)
  kw = dict(delta_rays=True, straggling=True, electron_spread=True) if physics else {}
  energies = np.linspace(5.0, 15.0, 260)
  split = {2: 256, 3: 128} if not physics else {2: 256}
  runs, chunks = {}, {}
  for w in (1, *split):
    calls.clear()
    runs[w] = simulate_electron_recoils(11, energies, workers=w, **kw)
    chunks[w] = sorted(calls)
  main = threading.current_thread().name
  assert chunks[1] == [(main, 512)]
  for w, size in split.items():
    assert [c[1] for c in chunks[w]] == [size] * w
    assert all(c[0].startswith("simulate_electron_recoils") for c in chunks[w])
  for w in split:
    for name in _OUTPUT_FIELDS:
      a, b = getattr(runs[1], name), getattr(runs[w], name)
      expect_none = not physics and name in _PHYSICS_FIELDS
      assert (a is None) == expect_none and (b is None) == expect_none, (w, name)
      if a is not None:
        assert a.dtype == b.dtype, (w, name)
        np.testing.assert_array_equal(a, b, err_msg=f"workers={w}: {name}")


def test_workers_validate_and_errors_come_in_chunk_order():
  with pytest.raises(ValueError, match="workers"):
    simulate_electron_recoils(0, 40.0, 4, workers=0)
  with pytest.raises(ValueError, match="workers"):
    simulate_electron_recoils(0, 40.0, 4, workers=1.5)
  # Both chunks (2 x 128 tracks, on threads) fail; the first one's error is raised,
  # as in the sequential loop.
  with pytest.raises(RuntimeError, match="chunk starting at track 0 "):
    simulate_electron_recoils(0, 40.0, 256, max_steps=10, workers=2)


def test_too_few_electron_slots_raises():
  # Mean E/W above capacity: rejected before simulating.
  with pytest.raises(ValueError, match="max_electrons"):
    simulate_electron_recoils(0, 40.0, 4, max_electrons=1000)
  # Mean E/W = 1791.5 just below max_electrons = 1792 (the electron capacity
  # compiled for the shared 50 keV fixture): about half of the tracks
  # fluctuate above it and are reported, not truncated.
  energies = np.full(ALL_ENERGIES.shape, 61.45)
  with pytest.raises(ValueError, match="raise max_electrons"):
    simulate_electron_recoils(0, energies, max_electrons=1792)


def test_too_few_steps_raises():
  with pytest.raises(RuntimeError, match="max_steps"):
    simulate_electron_recoils(0, 40.0, 4, max_steps=10)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="num_tracks"):
    simulate_electron_recoils(0, 40.0)
  with pytest.raises(ValueError, match="cutoff_kev"):
    simulate_electron_recoils(0, [40.0, 0.5], cutoff_kev=1.0)
  with pytest.raises(ValueError, match="num_tracks"):
    simulate_electron_recoils(0, [40.0, 45.0], num_tracks=3)
