"""Ion stopping, ranges and quenching (recoil_jax.physics.ions) against reference numbers."""

from __future__ import annotations

import numpy as np
import pytest

from recoil_jax.physics import gas
from recoil_jax.physics import ions

SILICON = ions.Target.from_mass_fractions("Si", [(gas.Element("Si", 14, 28.0855), 1.0)], 2.329)


@pytest.mark.parametrize("symbol,z,a,ref_nm", [
    # Projected ranges of 100 keV implants in silicon from the standard implantation
    # range tables (SRIM / Gibbons LSS tables): B 0.307 µm, P 0.124 µm, As 0.058 µm.
    ("B", 5, 10.81, 307.0), ("P", 15, 30.974, 124.0), ("As", 33, 74.922, 58.0)])
def test_projected_range_of_implants_in_silicon_within_lss_accuracy(symbol, z, a, ref_nm):
  got = float(ions.projected_range_mm(ions.Ion(symbol, z, a), SILICON, 100.0)) * 1e6
  # LSS electronic + ZBL nuclear stopping: ±25 % is the known accuracy; As is the worst.
  assert abs(got / ref_nm - 1) < 0.3, (symbol, got)


def test_lss_electronic_stopping_value_and_sqrt_e_scaling():
  # C in He at 10 keV, by hand: 1.212·6^{7/6}·2/((6^{2/3}+2^{2/3})^{1.5}·√12.011)·√1e4 eV Å².
  by_hand = 1.212 * 6**(7 / 6) * 2 / ((6**(2 / 3) + 2**(2 / 3))**1.5 * 12.011**0.5) * 100
  got = ions.electronic_stopping_ev_cm2(6, 12.011, 2, 10.0) * 1e16
  np.testing.assert_allclose(got, by_hand, rtol=1e-12)
  ratio = ions.electronic_stopping_ev_cm2(6, 12.011, 2, 40.0) / \
      ions.electronic_stopping_ev_cm2(6, 12.011, 2, 10.0)
  np.testing.assert_allclose(ratio, 2.0, rtol=1e-12)


def test_zbl_reduced_nuclear_stopping_known_values():
  # s_n(ε) of the ZBL universal potential: by hand at ε = 1, ln(2.1383)/(2·1.20914); a single
  # maximum ≈ 0.35 below ε = 1; the high-energy form ln ε / 2ε above 30; 0 at 0.
  np.testing.assert_allclose(ions.zbl_reduced_nuclear_stopping(1.0),
                             np.log(2.1383) / (2 * 1.20914), rtol=1e-9)
  eps = np.geomspace(1e-3, 1e3, 2000)
  s = ions.zbl_reduced_nuclear_stopping(eps)
  assert 0.33 < s.max() < 0.37 and 0.1 < eps[np.argmax(s)] < 1.0
  np.testing.assert_allclose(ions.zbl_reduced_nuclear_stopping(100.0), np.log(100) / 200)
  assert ions.zbl_reduced_nuclear_stopping(0.0) < 1e-100


def test_path_lengths_in_he_cf4_and_ordering():
  target = ions.Target.from_gas(gas.HE_CF4_60_40)
  np.testing.assert_allclose(target.density_g_cm3, gas.HE_CF4_60_40.density_g_cm3, rtol=1e-12)
  e = np.array([2.0, 10.0, 36.0])
  he, c, f = (ions.path_length_mm(i, target, e) for i in
              (ions.HELIUM_ION, ions.CARBON_ION, ions.FLUORINE_ION))
  # LSS + ZBL in He:CF4 60:40 at 1 atm, 20 °C (this formula; about ±25 % vs SRIM):
  # sub-mm ranges, He > C > F, all far shorter than a 10 keV electron (2 mm).
  np.testing.assert_allclose(he, [0.0645, 0.231, 0.569], rtol=0.01)
  np.testing.assert_allclose(c, [0.0192, 0.0715, 0.225], rtol=0.01)
  assert np.all(he > c) and np.all(c > f) and np.all(np.diff(f) > 0)
  assert ions.path_length_mm(ions.CARBON_ION, target, 0.0) == 0.0


def test_path_length_is_the_integral_of_inverse_stopping():
  target = ions.Target.from_gas(gas.HE_CF4_60_40)
  e = np.linspace(0, 20.0, 200001)[1:]
  se, sn = ions.stopping_kev_per_mm(ions.FLUORINE_ION, target, e)
  direct = np.trapezoid(1 / (se + sn), e) + 2 * e[0] / (se[0] + sn[0])  # ∝ 1/√E start.
  np.testing.assert_allclose(ions.path_length_mm(ions.FLUORINE_ION, target, 20.0), direct,
                             rtol=2e-3)


def test_lindhard_quenching_and_inverse():
  # He recoil at 2 keV by hand: k = 0.133·2^{2/3}/2, ε = 11.5·2·2^{-7/3}.
  k, eps = 0.133 * 2**(2 / 3) / 2, 23.0 * 2**(-7 / 3)
  g = 3 * eps**0.15 + 0.7 * eps**0.6 + eps
  np.testing.assert_allclose(ions.lindhard_quenching(2.0, 2, 4.002602), k * g / (1 + k * g),
                             rtol=1e-3)
  e = np.array([1.0, 7.0, 60.0])
  qf = ions.lindhard_quenching(e, 9, 18.998)
  assert np.all(np.diff(qf) > 0) and np.all((qf > 0.2) & (qf < 0.6))
  np.testing.assert_allclose(ions.recoil_energy_for_ionisation(e * qf, 9, 18.998), e,
                             rtol=1e-4)


def test_electronic_loss_and_range_table():
  target = ions.Target.from_gas(gas.HE_CF4_60_40)
  table = ions.range_table(ions.CARBON_ION, target, 50.0)
  assert table.path_mm[0] == 0 and np.all(np.diff(table.path_mm) > 0)
  loss = ions.electronic_loss_kev(ions.CARBON_ION, target, 30.0)
  assert 0.3 * 30 < loss < 30  # Part goes to nuclear stopping.
  np.testing.assert_allclose(table.residual_path_mm(30.0),
                             ions.path_length_mm(ions.CARBON_ION, target, 30.0), rtol=1e-3)


def test_target_errors():
  with pytest.raises(ValueError, match="one density per element"):
    ions.Target("x", (gas.HELIUM,), ())
  with pytest.raises(ValueError, match="E_keV"):
    ions.path_length_mm(ions.CARBON_ION, SILICON, -1.0)
