"""Gas mixtures and electron transport tables for the toy TPC simulators.

What this module computes (numpy, float64, vectorised over the kinetic energy
``T_keV``), with standard formulas:

* the electron *collision* stopping power of each molecular component with the
  ICRU 37 / ESTAR (Rohrlich-Carlson) formula without shell or density-effect
  corrections, combined by Bragg additivity over mass fractions
  (``stopping_power_mev_cm2_g``, ``dedx_kev_per_mm``); radiative losses
  (< 0.1 % below 100 keV) are ignored;
* the CSDA range, integrating 1/S of the mixture (``csda_range_mm``);
* screened-Rutherford (Wentzel) elastic scattering per atom with Molière
  screening: screening parameter, total and transport cross sections, and the
  elastic and transport mean free paths of the mixture
  (``screening_parameter``, ``elastic_cross_sections_cm2``,
  ``elastic_mfp_mm``, ``transport_mfp_mm``);
* Møller scattering on the atomic electrons (treated as free): the
  differential and integrated δ-ray cross sections above a cut, the δ-ray rate
  per mm, the energy lost to δ-rays above the cut, and the restricted stopping
  power and its CSDA range (``moller_dcs_cm2_per_kev``,
  ``moller_cross_section_cm2``, ``delta_ray_rate_per_mm``,
  ``moller_loss_above_cut_kev_per_mm``, ``restricted_dedx_kev_per_mm``,
  ``restricted_csda_range_mm``; the restricted dE/dx equals the Berger–Seltzer
  restricted formula of ICRU 37, tested).

Number densities come from the ideal gas law at the mixture's pressure and
temperature; molecules are treated as independent atoms for elastic
scattering.  Units: energies in keV, lengths in mm (cross sections in cm²),
mass stopping power in MeV cm²/g.

Validity: the Bethe formula has no shell corrections, so it is ~10 % too high
at 1 keV for low-Z media and becomes meaningless near ~0.1 keV.  Energies below
``T_MIN_KEV`` are rejected.  CSDA ranges are integrated from ``T_MIN_KEV``
(0.15 keV), where the formula is still positive for every component; the part
below 1 keV is physically ill-defined and contributes a near-constant
~0.085 mm (He:CO₂ 70:30), which reproduces independently computed ESTAR-method
ranges (the tables in ``tests/test_electron_recoils.py``) to their quoted precision.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# Physical constants (CODATA 2018).
ELECTRON_MASS_KEV = 510.99895  # m_e c², keV
CLASSICAL_ELECTRON_RADIUS_CM = 2.8179403262e-13  # r_e, cm
BOHR_RADIUS_CM = 5.29177210903e-9  # a_0, cm
HBAR_C_KEV_CM = 1.973269804e-8  # ħc, keV cm
FINE_STRUCTURE = 7.2973525693e-3  # α
BOLTZMANN_J_PER_K = 1.380649e-23
AVOGADRO = 6.02214076e23
TORR_TO_PA = 101325.0 / 760.0
# 2π N_A r_e² m_e c² in MeV cm²/mol: the Bethe prefactor (ESTAR uses 0.153537).
BETHE_PREFACTOR_MEV_CM2_PER_G = 0.153537

# Validity window of the tables (keV).
T_MIN_KEV = 0.15
T_MAX_KEV = 1.0e4

_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(64)


@dataclasses.dataclass(frozen=True)
class Element:
  """A chemical element: symbol, atomic number Z and molar mass A (g/mol)."""

  symbol: str
  Z: int
  A: float


HELIUM = Element("He", 2, 4.002602)
CARBON = Element("C", 6, 12.011)
OXYGEN = Element("O", 8, 15.999)
FLUORINE = Element("F", 9, 18.998403163)


@dataclasses.dataclass(frozen=True)
class GasComponent:
  """One molecular species of a gas mixture.

  Attributes:
    name: e.g. ``"CO2"``.
    atoms: ``((element, atoms_per_molecule), ...)``.
    volume_fraction: molar (= volume, ideal gas) fraction in the mixture.
    I_ex_eV: mean excitation energy of the molecule, eV.
  """

  name: str
  atoms: tuple[tuple[Element, int], ...]
  volume_fraction: float
  I_ex_eV: float

  @property
  def Z(self) -> int:
    """Electrons per molecule."""
    return sum(el.Z * n for el, n in self.atoms)

  @property
  def A(self) -> float:
    """Molar mass, g/mol."""
    return sum(el.A * n for el, n in self.atoms)


@dataclasses.dataclass(frozen=True)
class GasMixture:
  """An ideal-gas mixture at fixed pressure and temperature.

  Attributes:
    name: label, e.g. ``"He:CO2 70:30"``.
    components: the molecular species; volume fractions must sum to 1.
    pressure_torr: gas pressure, torr.
    temperature_K: gas temperature, K.
    W_eV: mean energy per ion pair of the mixture, eV.
    fano: Fano factor of the ion-pair count.
  """

  name: str
  components: tuple[GasComponent, ...]
  pressure_torr: float = 760.0
  temperature_K: float = 293.15
  W_eV: float = 34.3
  fano: float = 0.2

  def __post_init__(self):
    if not self.components:
      raise ValueError(f"GasMixture {self.name!r}: `components` is empty.")
    total = sum(c.volume_fraction for c in self.components)
    if abs(total - 1.0) > 1e-6:
      raise ValueError(
          f"GasMixture {self.name!r}: volume fractions sum to {total}, not 1.")
    for c in self.components:
      if c.volume_fraction <= 0 or c.I_ex_eV <= 0 or not c.atoms:
        raise ValueError(
            f"GasMixture {self.name!r}, component {c.name!r}: needs atoms, "
            f"volume_fraction > 0 and I_ex_eV > 0 (got {c}).")
    for field in ("pressure_torr", "temperature_K", "W_eV"):
      if not getattr(self, field) > 0:
        raise ValueError(
            f"GasMixture {self.name!r}: `{field}` must be > 0, got "
            f"{getattr(self, field)}.")
    if self.fano < 0:
      raise ValueError(f"GasMixture {self.name!r}: `fano` must be >= 0.")

  @property
  def molar_mass(self) -> float:
    """Mean molar mass, g/mol."""
    return sum(c.volume_fraction * c.A for c in self.components)

  @property
  def mass_fractions(self) -> np.ndarray:
    """Mass fraction of each component, [num_components]."""
    m = np.array([c.volume_fraction * c.A for c in self.components])
    return m / m.sum()

  @property
  def molecule_density_per_cm3(self) -> float:
    """Molecules per cm³ (ideal gas)."""
    p_pa = self.pressure_torr * TORR_TO_PA
    return p_pa / (BOLTZMANN_J_PER_K * self.temperature_K) * 1e-6

  @property
  def density_g_cm3(self) -> float:
    """Mass density, g/cm³ (ideal gas)."""
    return self.molecule_density_per_cm3 * self.molar_mass / AVOGADRO

  def atom_species(self) -> tuple[tuple[Element, ...], np.ndarray]:
    """Distinct elements and their number densities.

    Returns:
      ``(elements, n)``: elements in first-seen order and their number
      densities in atoms/cm³, float64 [num_elements].
    """
    order: list[Element] = []
    dens: dict[str, float] = {}
    n_mol = self.molecule_density_per_cm3
    for c in self.components:
      for el, count in c.atoms:
        if el.symbol not in dens:
          order.append(el)
          dens[el.symbol] = 0.0
        dens[el.symbol] += n_mol * c.volume_fraction * count
    return tuple(order), np.array([dens[el.symbol] for el in order])


HE_CO2_70_30 = GasMixture(
    name="He:CO2 70:30",
    components=(
        GasComponent("He", ((HELIUM, 1),), 0.70, 41.8),
        GasComponent("CO2", ((CARBON, 1), (OXYGEN, 2)), 0.30, 85.0),
    ),
    pressure_torr=760.0,
    temperature_K=293.15,
    # Stopping-weighted 1/W of W(He) = 41.3 eV and W(CO2) = 33.0 eV.
    W_eV=34.3,
    fano=0.2,
)

HE_CF4_60_40 = GasMixture(
    name="He:CF4 60:40",
    components=(
        GasComponent("He", ((HELIUM, 1),), 0.60, 41.8),
        GasComponent("CF4", ((CARBON, 1), (FLUORINE, 4)), 0.40, 115.0),
    ),
    pressure_torr=760.0,
    temperature_K=293.15,
    # Stopping-weighted 1/W of W(He) = 41.3 eV and W(CF4) = 34.3 eV (W(CF4) is
    # uncertain, 34-54 eV in the literature; CYGNO's digitizer uses 46.2 eV).
    W_eV=34.8,
    fano=0.2,
)


def _as_energy(T_keV, where: str) -> np.ndarray:
  """float64 copy of ``T_keV``, checked against the validity window."""
  T = np.asarray(T_keV, dtype=np.float64)
  if not np.all(np.isfinite(T)):
    raise ValueError(f"{where}: T_keV must be finite.")
  if T.size and (T.min() < T_MIN_KEV or T.max() > T_MAX_KEV):
    raise ValueError(
        f"{where}: T_keV must lie in [{T_MIN_KEV}, {T_MAX_KEV}] keV (Bethe "
        f"formula without shell corrections; radiative losses ignored), got "
        f"[{T.min()}, {T.max()}].")
  return T


def _kinematics(T: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Returns (β², pc in keV, pv in keV) for electron kinetic energy T (keV)."""
  pc2 = T * (T + 2.0 * ELECTRON_MASS_KEV)
  etot = T + ELECTRON_MASS_KEV
  beta2 = pc2 / etot**2
  return beta2, np.sqrt(pc2), pc2 / etot


def collision_stopping_power(z_over_a: float, I_ex_eV: float,
                             T_keV) -> np.ndarray:
  """ESTAR-style electron collision mass stopping power of one material.

  Args:
    z_over_a: electrons per unit molar mass, mol/g.
    I_ex_eV: mean excitation energy, eV.
    T_keV: kinetic energy, keV, any shape.

  Returns:
    S/ρ in MeV cm²/g, float64, same shape as ``T_keV``.
  """
  T = _as_energy(T_keV, "collision_stopping_power")
  tau = T / ELECTRON_MASS_KEV
  beta2 = 1.0 - 1.0 / (1.0 + tau)**2
  i_rel = I_ex_eV * 1e-3 / ELECTRON_MASS_KEV
  bracket = (np.log(tau**2 * (tau + 2.0) / (2.0 * i_rel**2)) + 1.0 - beta2 +
             (tau**2 / 8.0 - (2.0 * tau + 1.0) * math.log(2.0)) /
             (tau + 1.0)**2)
  return BETHE_PREFACTOR_MEV_CM2_PER_G * z_over_a / beta2 * bracket


def component_stopping_powers_mev_cm2_g(gas: GasMixture, T_keV) -> np.ndarray:
  """Mass stopping power of each pure component, [num_components, *T.shape]."""
  return np.stack([
      collision_stopping_power(c.Z / c.A, c.I_ex_eV, T_keV)
      for c in gas.components
  ])


def stopping_power_mev_cm2_g(gas: GasMixture, T_keV) -> np.ndarray:
  """Mixture collision mass stopping power (Bragg additivity), MeV cm²/g."""
  s = component_stopping_powers_mev_cm2_g(gas, T_keV)
  w = gas.mass_fractions.reshape((-1,) + (1,) * (s.ndim - 1))
  return np.sum(w * s, axis=0)


def dedx_kev_per_mm(gas: GasMixture, T_keV) -> np.ndarray:
  """Linear stopping power dE/dx of the mixture, keV/mm."""
  # MeV cm²/g · g/cm³ = MeV/cm = 100 keV/mm.
  return stopping_power_mev_cm2_g(gas, T_keV) * gas.density_g_cm3 * 100.0


def csda_range_mm(gas: GasMixture, T_keV) -> np.ndarray:
  """CSDA range ∫ dT / (dE/dx) from ``T_MIN_KEV`` to ``T_keV``, in mm.

  Computed by 64-point Gauss-Legendre quadrature in log T for every energy
  (accurate to ~1e-8 relative).
  """
  T = _as_energy(T_keV, "csda_range_mm")
  lo = math.log(T_MIN_KEV)
  hi = np.log(T)[..., None]
  half = 0.5 * (hi - lo)
  u = lo + half * (_GAUSS_NODES + 1.0)  # [..., 64]
  t = np.exp(u)
  integrand = t / dedx_kev_per_mm(gas, t)  # dT/(dE/dx) with dT = t du
  return np.sum(integrand * _GAUSS_WEIGHTS, axis=-1) * half[..., 0]


def screening_parameter(Z, T_keV) -> np.ndarray:
  """Molière screening parameter η of the Wentzel cross section.

  η = ¼ (ħ/(p a))² (1.13 + 3.76 (αZ/β)²), a = 0.885 a₀ Z^(-1/3).

  Args:
    Z: atomic number(s), broadcastable against ``T_keV``.
    T_keV: electron kinetic energy, keV.

  Returns:
    η, dimensionless, float64, broadcast shape.
  """
  T = _as_energy(T_keV, "screening_parameter")
  Z = np.asarray(Z, dtype=np.float64)
  beta2, pc, _ = _kinematics(T)
  a = 0.885 * BOHR_RADIUS_CM * Z**(-1.0 / 3.0)
  return 0.25 * (HBAR_C_KEV_CM / (pc * a))**2 * (
      1.13 + 3.76 * (FINE_STRUCTURE * Z)**2 / beta2)


def elastic_cross_sections_cm2(Z, T_keV) -> tuple[np.ndarray, np.ndarray]:
  """Screened-Rutherford total and transport cross sections per atom.

  σ = π Z(Z+1) r_e² (mc²/pv)² / (η(1+η));
  σ₁ = 2π Z(Z+1) r_e² (mc²/pv)² [ln((1+η)/η) − 1/(1+η)].
  Z(Z+1) approximately includes scattering on the atomic electrons.

  Returns:
    ``(sigma, sigma_tr)`` in cm², broadcast shape of ``Z`` and ``T_keV``.
  """
  T = _as_energy(T_keV, "elastic_cross_sections_cm2")
  Zf = np.asarray(Z, dtype=np.float64)
  eta = screening_parameter(Zf, T)
  _, _, pv = _kinematics(T)
  pref = math.pi * Zf * (Zf + 1.0) * CLASSICAL_ELECTRON_RADIUS_CM**2 * (
      ELECTRON_MASS_KEV / pv)**2
  sigma = pref / (eta * (1.0 + eta))
  sigma_tr = 2.0 * pref * (np.log1p(1.0 / eta) - 1.0 / (1.0 + eta))
  return sigma, sigma_tr


def atom_macroscopic_cross_sections(gas: GasMixture,
                                    T_keV) -> tuple[np.ndarray, np.ndarray]:
  """n_i σ_i and n_i σ₁,i per element, [num_elements, *T.shape], in 1/mm."""
  T = _as_energy(T_keV, "atom_macroscopic_cross_sections")
  elements, n = gas.atom_species()
  z = np.array([el.Z for el in elements], dtype=np.float64)
  z = z.reshape((-1,) + (1,) * T.ndim)
  n = n.reshape((-1,) + (1,) * T.ndim)
  sigma, sigma_tr = elastic_cross_sections_cm2(z, T[None])
  return n * sigma * 0.1, n * sigma_tr * 0.1  # 1/cm -> 1/mm


def elastic_mfp_mm(gas: GasMixture, T_keV) -> np.ndarray:
  """Elastic mean free path 1/Σ nᵢσᵢ of the mixture, mm."""
  mu, _ = atom_macroscopic_cross_sections(gas, T_keV)
  return 1.0 / mu.sum(axis=0)


def transport_mfp_mm(gas: GasMixture, T_keV) -> np.ndarray:
  """Transport mean free path 1/Σ nᵢσ₁,ᵢ of the mixture, mm."""
  _, mu_tr = atom_macroscopic_cross_sections(gas, T_keV)
  return 1.0 / mu_tr.sum(axis=0)


# ---------------------------------------------------------------------------
# Møller scattering on atomic electrons: δ-rays and the restricted stopping
# power (used by the TPC simulator's optional δ-ray and straggling physics).
# ---------------------------------------------------------------------------


def electron_density_per_cm3(gas: GasMixture) -> float:
  """Electrons per cm³ of the mixture (all shells), ideal gas."""
  return gas.molecule_density_per_cm3 * sum(
      c.volume_fraction * c.Z for c in gas.components)


def mean_excitation_energy_ev(gas: GasMixture) -> float:
  """Mixture mean excitation energy: ln I = Σ nᵢ ln Iᵢ / Σ nᵢ (nᵢ electrons).

  The Bragg-additivity value (He:CO₂ 70:30: 75.1 eV, physics-facts §1a).
  """
  w = np.array([c.volume_fraction * c.Z for c in gas.components])
  log_i = np.array([math.log(c.I_ex_eV) for c in gas.components])
  return float(math.exp(np.sum(w * log_i) / np.sum(w)))


def _moller_terms(T: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(β², g = (2γ−1)/γ², a = 1 − g = (τ/γ)²) of a primary of kinetic energy T."""
  gam = 1.0 + T / ELECTRON_MASS_KEV
  beta2 = 1.0 - 1.0 / gam**2
  g = (2.0 * gam - 1.0) / gam**2
  return beta2, g, 1.0 - g


def moller_dcs_cm2_per_kev(T_keV, W_keV) -> np.ndarray:
  """Møller dσ/dW per free electron at rest, cm²/keV.

  dσ/dW = 2π r_e² mc² / (β² T²) · [a + 1/x² + 1/(1−x)² − g/(x(1−x))], x = W/T,
  g = (2γ−1)/γ², a = (τ/γ)² (e.g. Geant4 Physics Reference Manual, Møller
  scattering; the faster outgoing electron is the primary, so W ≤ T/2).
  Returns 0 outside 0 < W ≤ T/2.
  """
  T = _as_energy(T_keV, "moller_dcs_cm2_per_kev")
  W = np.asarray(W_keV, dtype=np.float64)
  beta2, g, a = _moller_terms(T)
  inside = (W > 0) & (W <= 0.5 * T)
  x = np.where(inside, W / T, 0.25)
  shape = a + 1.0 / x**2 + 1.0 / (1.0 - x)**2 - g / (x * (1.0 - x))
  pref = 2.0 * math.pi * CLASSICAL_ELECTRON_RADIUS_CM**2 * ELECTRON_MASS_KEV
  return np.where(inside, pref / (beta2 * T**2) * shape, 0.0)


def moller_cdf_shape(x, x_cut, g, a) -> np.ndarray:
  """∫_{x_cut}^{x} [a + 1/y² + 1/(1−y)² − g/(y(1−y))] dy, numpy float64.

  The unnormalised cumulative distribution of x = W/T above the cut
  (``moller_cross_section_cm2`` is its value at x = 1/2 times
  2π r_e² mc²/(β² T)); ``g`` and ``a`` as in ``moller_dcs_cm2_per_kev``.
  """
  x = np.asarray(x, dtype=np.float64)
  return (a * (x - x_cut) + (1.0 / x_cut - 1.0 / x) +
          (1.0 / (1.0 - x) - 1.0 / (1.0 - x_cut)) -
          g * np.log(x * (1.0 - x_cut) / (x_cut * (1.0 - x))))


def moller_cross_section_cm2(T_keV, cut_keV: float) -> np.ndarray:
  """Møller cross section per free electron for W in [cut, T/2], cm².

  Closed form of ∫ dσ/dW (as Geant4's G4MollerBhabhaModel); 0 where T ≤ 2 cut.
  """
  T = _as_energy(T_keV, "moller_cross_section_cm2")
  if not cut_keV > 0:
    raise ValueError(f"moller_cross_section_cm2: cut_keV must be > 0, got {cut_keV}.")
  beta2, g, a = _moller_terms(T)
  above = T > 2.0 * cut_keV
  x_cut = np.where(above, cut_keV / np.where(above, T, 1.0), 0.25)
  shape = moller_cdf_shape(np.full_like(x_cut, 0.5), x_cut, g, a)
  pref = 2.0 * math.pi * CLASSICAL_ELECTRON_RADIUS_CM**2 * ELECTRON_MASS_KEV
  return np.where(above, pref / (beta2 * np.where(above, T, 1.0)) * shape, 0.0)


def delta_ray_rate_per_mm(gas: GasMixture, T_keV, cut_keV: float) -> np.ndarray:
  """Møller δ-rays with W in [cut, T/2] per mm of path: n_e σ (physics-facts §1c)."""
  return electron_density_per_cm3(gas) * moller_cross_section_cm2(
      T_keV, cut_keV) * 0.1


def moller_loss_above_cut_kev_per_mm(gas: GasMixture, T_keV,
                                     cut_keV: float) -> np.ndarray:
  """Energy lost per mm to δ-rays with W in [cut, T/2]: n_e ∫ W dσ/dW dW, keV/mm.

  Closed form: n_e 2π r_e² mc²/β² · [F(1/2) − F(x_cut)] with
  F(x) = a x²/2 + ln x + 1/(1−x) + (1+g) ln(1−x); 0 where T ≤ 2 cut.  The
  collision stopping power minus this is the restricted stopping power (it
  equals the Berger–Seltzer restricted formula, tested).
  """
  T = _as_energy(T_keV, "moller_loss_above_cut_kev_per_mm")
  if not cut_keV > 0:
    raise ValueError(
        f"moller_loss_above_cut_kev_per_mm: cut_keV must be > 0, got {cut_keV}.")
  beta2, g, a = _moller_terms(T)
  above = T > 2.0 * cut_keV
  x_cut = np.where(above, cut_keV / np.where(above, T, 1.0), 0.25)

  def f(x):
    return a * x**2 / 2.0 + np.log(x) + 1.0 / (1.0 - x) + (1.0 + g) * np.log1p(-x)

  pref = (2.0 * math.pi * CLASSICAL_ELECTRON_RADIUS_CM**2 * ELECTRON_MASS_KEV *
          electron_density_per_cm3(gas) * 0.1)  # keV/mm
  return np.where(above, pref / beta2 * (f(0.5) - f(x_cut)), 0.0)


def restricted_dedx_kev_per_mm(gas: GasMixture, T_keV,
                               cut_keV: float) -> np.ndarray:
  """Collision dE/dx from energy transfers below ``cut_keV`` only, keV/mm."""
  return dedx_kev_per_mm(gas, T_keV) - moller_loss_above_cut_kev_per_mm(
      gas, T_keV, cut_keV)


def restricted_csda_range_mm(gas: GasMixture, T_keV, cut_keV: float) -> np.ndarray:
  """∫ dT / restricted dE/dx from ``T_MIN_KEV`` to ``T_keV``, mm.

  As ``csda_range_mm`` (64-point Gauss–Legendre in log T), split at 2·cut
  where the integrand has a kink; equals ``csda_range_mm`` for T ≤ 2·cut.
  """
  T = _as_energy(T_keV, "restricted_csda_range_mm")
  knee = max(2.0 * cut_keV, T_MIN_KEV)

  def integral(lo, hi):  # lo, hi: arrays of log T
    half = 0.5 * (hi - lo)
    u = lo[..., None] + half[..., None] * (_GAUSS_NODES + 1.0)
    t = np.exp(u)
    integrand = t / restricted_dedx_kev_per_mm(gas, t, cut_keV)
    return np.sum(integrand * _GAUSS_WEIGHTS, axis=-1) * half

  log_t = np.log(T)
  lo = np.full_like(log_t, math.log(T_MIN_KEV))
  below = integral(lo, np.minimum(log_t, math.log(knee)))
  above = integral(np.full_like(log_t, math.log(knee)), np.maximum(log_t, math.log(knee)))
  return below + above
