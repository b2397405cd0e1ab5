"""Liquid-argon physics for the toy SBND simulator: stopping powers, CSDA ranges,
energy-loss fluctuations, multiple scattering and ModBox recombination.

Numbers are standard liquid-argon values (LAr ρ = 1.39 g/cm³, W = 23.6 eV,
X₀ = 14 cm; PDG), the ArgoNeuT ModBox parameters (α = 0.93, β = 0.212;
arXiv 1306.1712) and the PDG formulas:

* Heavy charged particles (μ, π, p): Bethe mean rate of energy loss with the
  Sternheimer density-effect correction of liquid argon (PDG atomic and nuclear
  properties: I = 188 eV, C̄ = 5.2146, x₀ = 0.2, x₁ = 3.0, a = 0.19559, k = 3).
  No shell or Barkas corrections, so ranges below ~1 MeV are approximate.
* Electrons: collision stopping power (Rohrlich–Carlson, as in ICRU Report 37 / ESTAR)
  with the same density effect; radiative losses are simulated explicitly as
  bremsstrahlung photons by the shower code, never as a continuous loss.
* CSDA range tables R(T) and their inverse T(R) on a log grid (float64).

Units: MeV, mm, g/cm³ unless a name says otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

# Liquid argon (standard values; PDG for I and the density-effect parameters).
LAR_DENSITY_G_CM3 = 1.39
LAR_Z_OVER_A = 18.0 / 39.948
LAR_MEAN_EXCITATION_MEV = 188.0e-6
LAR_W_ION_MEV = 23.6e-6
LAR_RADIATION_LENGTH_MM = 140.0
LAR_MOLIERE_RADIUS_MM = 90.0
# Sternheimer density-effect parameters of liquid argon (PDG).
_STERNHEIMER = dict(c_bar=5.2146, x0=0.2, x1=3.0, a=0.19559, k=3.0, delta0=0.0)

ELECTRON_MASS_MEV = 0.51099895
MUON_MASS_MEV = 105.6583755
PION_MASS_MEV = 139.57039
PION0_MASS_MEV = 134.9768
PROTON_MASS_MEV = 938.27208816
NEUTRON_MASS_MEV = 939.56542052
# Bethe constant K = 4π N_A r_e² m_e c², MeV cm²/mol.
BETHE_K = 0.307075

# Species codes of charged tracks.
ELECTRON, MUON, PION, PROTON = 0, 1, 2, 3
SPECIES_MASS_MEV = np.array(
    [ELECTRON_MASS_MEV, MUON_MASS_MEV, PION_MASS_MEV, PROTON_MASS_MEV])
SPECIES_NAMES = ("electron", "muon", "pion", "proton")

# Range-table grid: kinetic energies from _T_MIN to _T_MAX MeV.
_T_MIN_MEV = 0.01
_T_MAX_MEV = 1.0e5
_TABLE_POINTS = 4000


def _beta_gamma(kinetic_mev, mass_mev):
  t = np.asarray(kinetic_mev, dtype=np.float64)
  gamma = 1.0 + t / mass_mev
  beta2 = 1.0 - 1.0 / gamma**2
  return beta2, gamma


def density_effect(beta_gamma) -> np.ndarray:
  """Sternheimer δ(βγ) of liquid argon (dimensionless)."""
  p = _STERNHEIMER
  x = np.log10(np.maximum(np.asarray(beta_gamma, dtype=np.float64), 1e-12))
  two_ln10 = 2.0 * math.log(10.0)
  return np.where(
      x >= p["x1"], two_ln10 * x - p["c_bar"],
      np.where(x >= p["x0"],
               two_ln10 * x - p["c_bar"] + p["a"] * (p["x1"] - x)**p["k"],
               p["delta0"] * 10.0**(2.0 * (x - p["x0"]))))


def max_energy_transfer_mev(kinetic_mev, mass_mev) -> np.ndarray:
  """Largest kinetic energy a heavy particle gives a free electron, MeV."""
  beta2, gamma = _beta_gamma(kinetic_mev, mass_mev)
  bg2 = beta2 * gamma**2
  r = ELECTRON_MASS_MEV / mass_mev
  return 2.0 * ELECTRON_MASS_MEV * bg2 / (1.0 + 2.0 * gamma * r + r * r)


def heavy_dedx_mev_per_mm(kinetic_mev, mass_mev) -> np.ndarray:
  """Bethe mean energy loss of a singly charged heavy particle in LAr, MeV/mm.

  Args:
    kinetic_mev: [...] kinetic energy, MeV.
    mass_mev: particle mass, MeV.

  Returns:
    [...] −dE/dx in MeV/mm.  Below the kinetic energy at which a proton has
    1 MeV (same velocity, ``T_low = M/M_p`` MeV) the Bethe formula fails; there
    the loss is taken ∝ velocity (Lindhard), S(T) = S(T_low)·√(T/T_low).
  """
  t = np.asarray(kinetic_mev, dtype=np.float64)
  t_low = mass_mev / PROTON_MASS_MEV
  scale = np.sqrt(np.clip(t / t_low, 0.0, 1.0))
  t = np.maximum(t, t_low)
  beta2, gamma = _beta_gamma(t, mass_mev)
  bg = np.sqrt(beta2) * gamma
  t_max = max_energy_transfer_mev(t, mass_mev)
  arg = 2.0 * ELECTRON_MASS_MEV * bg**2 * t_max / LAR_MEAN_EXCITATION_MEV**2
  bracket = 0.5 * np.log(arg) - beta2 - 0.5 * density_effect(bg)
  per_cm = BETHE_K * LAR_Z_OVER_A / beta2 * bracket * LAR_DENSITY_G_CM3
  return np.maximum(per_cm, 1e-3) * scale / 10.0


def electron_dedx_mev_per_mm(kinetic_mev) -> np.ndarray:
  """Electron collision stopping power in LAr (Rohrlich–Carlson + δ), MeV/mm."""
  t = np.asarray(kinetic_mev, dtype=np.float64)
  tau = t / ELECTRON_MASS_MEV
  beta2, gamma = _beta_gamma(t, ELECTRON_MASS_MEV)
  i_rel = LAR_MEAN_EXCITATION_MEV / ELECTRON_MASS_MEV
  bracket = (np.log(tau**2 * (tau + 2.0) / (2.0 * i_rel**2)) + 1.0 - beta2 +
             (tau**2 / 8.0 - (2.0 * tau + 1.0) * math.log(2.0)) / (tau + 1.0)**2 -
             density_effect(np.sqrt(beta2) * gamma))
  per_cm = 0.153537 * LAR_Z_OVER_A / beta2 * bracket * LAR_DENSITY_G_CM3
  return np.maximum(per_cm, 1e-3) / 10.0


def dedx_mev_per_mm(species: int, kinetic_mev) -> np.ndarray:
  """Mean continuous energy loss (collisions only for electrons), MeV/mm."""
  if species == ELECTRON:
    return electron_dedx_mev_per_mm(kinetic_mev)
  return heavy_dedx_mev_per_mm(kinetic_mev, SPECIES_MASS_MEV[species])


def _species_present(species: np.ndarray) -> np.ndarray:
  """Sorted species codes occurring in ``species`` ([N] int ≥ 0); a bincount,
  ~10× cheaper than np.unique on the small arrays of the transport loop."""
  return np.flatnonzero(np.bincount(species.ravel())) if species.size else species.ravel()


@dataclasses.dataclass(frozen=True)
class RangeTables:
  """CSDA range tables of the four species on one log-T grid.

  Attributes:
    kinetic_mev: [P] grid of kinetic energies, MeV (shared by all species).
    range_mm: [4, P] CSDA range at each grid energy, mm (R(T_MIN) set to
      T_MIN / S(T_MIN), the range of a constant-loss particle).
  """

  kinetic_mev: np.ndarray
  range_mm: np.ndarray

  def range_of(self, species: np.ndarray, kinetic_mev: np.ndarray) -> np.ndarray:
    """CSDA range, mm, of tracks of the given species ([N] int) and T ([N])."""
    species = np.asarray(species)
    t = np.asarray(kinetic_mev, dtype=np.float64)
    out = np.zeros(t.shape)
    log_t = np.log(np.clip(t, _T_MIN_MEV, _T_MAX_MEV))
    log_grid = np.log(self.kinetic_mev)
    for s in _species_present(species):
      m = species == s
      out[m] = np.interp(log_t[m], log_grid, self.range_mm[s])
    return np.where(t > 0, out, 0.0)

  def kinetic_of(self, species: np.ndarray, range_mm: np.ndarray) -> np.ndarray:
    """Inverse of `range_of`: kinetic energy (MeV) left with residual range R."""
    species = np.asarray(species)
    r = np.asarray(range_mm, dtype=np.float64)
    out = np.zeros(r.shape)
    for s in _species_present(species):
      m = species == s
      out[m] = np.interp(r[m], self.range_mm[s], self.kinetic_mev)
      # Below the first grid point the loss rate is taken constant.
      low = m & (r < self.range_mm[s, 0])
      out[low] = self.kinetic_mev[0] * r[low] / self.range_mm[s, 0]
    return np.where(r > 0, out, 0.0)


@functools.lru_cache(maxsize=1)
def range_tables() -> RangeTables:
  """Builds the CSDA range tables (cached; ~10 ms)."""
  t = np.geomspace(_T_MIN_MEV, _T_MAX_MEV, _TABLE_POINTS)
  ranges = []
  for s in range(4):
    inv = 1.0 / dedx_mev_per_mm(s, t)
    # Trapezoid in T on the log grid.
    seg = 0.5 * (inv[1:] + inv[:-1]) * np.diff(t)
    r = np.concatenate([[t[0] * inv[0]], t[0] * inv[0] + np.cumsum(seg)])
    ranges.append(r)
  return RangeTables(kinetic_mev=t, range_mm=np.stack(ranges))


def landau_xi_mev(step_mm, beta2) -> np.ndarray:
  """Landau width parameter ξ = (K/2)(Z/A)ρ x/β² of a step, MeV."""
  return (0.5 * BETHE_K * LAR_Z_OVER_A * LAR_DENSITY_G_CM3 *
          np.asarray(step_mm) / 10.0 / beta2)


def delta_ray_mean_loss_mev_per_mm(beta2, t_lo_mev, t_hi_mev) -> np.ndarray:
  """Mean energy per mm given to δ-rays with T in [t_lo, t_hi] (1/T² spectrum)."""
  ratio = np.maximum(np.asarray(t_hi_mev) / t_lo_mev, 1.0)
  return 2.0 * landau_xi_mev(1.0, beta2) * np.log(ratio)


def delta_ray_rate_per_mm(beta2, t_lo_mev, t_hi_mev) -> np.ndarray:
  """Expected δ-rays per mm with T in [t_lo, t_hi] (1/T² spectrum)."""
  t_hi = np.maximum(np.asarray(t_hi_mev, dtype=np.float64), t_lo_mev)
  return 2.0 * landau_xi_mev(1.0, beta2) * (1.0 / t_lo_mev - 1.0 / t_hi)


def highland_sigma_rad(kinetic_mev, mass_mev, step_mm) -> np.ndarray:
  """Projected multiple-scattering angle σ = 13.6 MeV/(βcp)·√(x/X₀), rad.

  The logarithmic Highland term is dropped: the walk is taken in 1 mm steps
  whose variances add, which the logarithm would not respect.
  """
  t = np.asarray(kinetic_mev, dtype=np.float64)
  p = np.sqrt(t * (t + 2.0 * mass_mev))
  beta = p / (t + mass_mev)
  return 13.6 / np.maximum(beta * p, 1e-3) * np.sqrt(
      np.asarray(step_mm) / LAR_RADIATION_LENGTH_MM)


def modbox_recombination(dedx_mev_per_cm, field_kv_per_cm: float,
                         alpha: float = 0.93, beta: float = 0.212) -> np.ndarray:
  """ModBox charge survival fraction R = ln(α + ξ)/ξ, ξ = β(dE/dx)/(ρE).

  Args:
    dedx_mev_per_cm: [...] local dE/dx, MeV/cm.
    field_kv_per_cm: drift field, kV/cm.
    alpha, beta: ModBox parameters (β in (kV/cm)(g/cm²)/MeV).

  Returns:
    [...] fraction of ionisation electrons escaping recombination, in (0, 1).
  """
  xi = beta * np.maximum(np.asarray(dedx_mev_per_cm, dtype=np.float64),
                         1e-6) / (LAR_DENSITY_G_CM3 * field_kv_per_cm)
  return np.clip(np.log(alpha + xi) / xi, 0.0, 1.0)
