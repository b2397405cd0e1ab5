"""Toy LIME camera images: electron and nuclear recoils in He:CF₄ 60:40 seen by an sCMOS.

What it models, per image (a crop of the 2304 × 2304 LIME frame at 0.152 mm/pixel, the
GEM plane seen through the demagnifying lens; default 256 × 256 for CPU work):

* **Tracks**: a multiplicity (``tracks_per_image``, fixed or Poisson ≥ 1) of recoils, each
  an electron recoil (ER) or a nuclear recoil (NR), with an isotropic 3-D direction, a
  start point uniform in the crop (``margin_mm`` from the edges) and a drift distance
  z ~ U(``z_range_mm``).
* **ERs**: 1–40 keV (uniform) plus a ``fe55_fraction`` of ⁵⁵Fe-like 5.9 keV ones,
  transported by the shared single-scattering electron random walk
  (``recoil_jax.physics.electron_recoils``: ESTAR-style stopping, screened-Rutherford
  scattering;
  here in He:CF₄ 60:40 at 1 atm, 20 °C, cutoff 0.5 keV), which also draws the ionisation
  electrons (N ≈ E/W with Fano 0.2) along the path; by default with its Møller δ-rays
  above 1 keV (each transported like the primary), energy-loss straggling below that and
  the ionisation electrons' thermalisation spread (``er_delta_rays``, ``er_straggling``,
  ``er_electron_spread``; ``recoil_jax.physics.electron_recoil_physics``).
* **NRs**: He, C or F recoils (``nr_species_probs``) whose *ionisation* energy
  E_ion = QF(E)·E is uniform like the ERs' (so energy alone does not separate the
  classes; the recoil energy E follows from the Lindhard factor, ``physics.ions``). The
  path length is the LSS + ZBL path (``physics.ions``) with ``nr_straggling`` Gaussian
  straggling, made of ``nr_segments`` straight pieces with kinks that grow towards the
  end (the nuclear-stopping share grows as the ion slows); N ~ Normal(E_ion/W, √(F E_ion/W))
  electrons are placed along it in proportion to the ion's electronic energy loss
  (denser at the start: S_e ∝ √E).
* **Drift and amplification**, per primary electron: absorption exp(−z/λ)
  (``absorption_length_mm``, 1400 mm), transverse diffusion σ_T(z) = √(σ₀² + D_T² z)
  (σ₀ = 0.35 mm, D_T = 0.115 mm/√cm at 1 kV/cm), a GEM1 gain drawn from an exponential (the
  first stage dominates the fluctuations; the later stages are taken at their means: their
  per-primary spread, ~1/√(G₁ε₁) ≈ 9 %, adds < 1 % to the exponential's 100 %), then
  photons per avalanche electron × the lens acceptance: unsaturated, the mean photons at
  the sensor per primary electron is G₁ε₁·G₂ε₂·G₃ · 0.07 · Ω (G = 342 per GEM, ε = 0.36
  extraction into GEM2 and GEM3, Ω = 1.17 × 10⁻⁴) ≈ 42 photons, spread on the GEM plane by
  a Gaussian of ``avalanche_sigma_mm`` (0.15 mm, assumed: GEM holes, transfer-gap diffusion
  and optics together, sampled by ``avalanche_spots`` points); the photons of a pixel are
  Poisson, × 2 counts. With W = 46.2 eV (the CYGNO digitiser's) that is the nominal
  ``counts_per_kev`` ≈ 1 840 counts/keV.
* **GEM3 saturation** (``saturation``, on by default): the CYGNO digitiser's model,
  A·n·G₃/(1 + β·G₃·n) for the n electrons entering GEM3 in each pixel × 0.1 mm (along the
  drift) voxel, with its parameters fitted to LIME's overground ⁵⁵Fe images at several
  drift distances (β = 10⁻⁵, A = 1.52, λ = 1400 mm;
  ``pietro14/digitization:ConfigFile_Fe55_best_parameters.txt``, LNF runs 5867-5911). As
  there, it acts on the expected charge density (each primary's G₁ε₁G₂ε₂ electrons spread
  by the diffusion, σ_L(z) = √(0.26² + 0.0989² z[cm]) mm along the drift); we take each
  pixel column's charge Gaussian along the drift (:func:`saturation_factor`), within ~5 %
  of the voxel-by-voxel computation. Dense charge saturates: short drifts (little
  diffusion), NRs and the slow end of ERs. Noiseless ⁵⁵Fe light (simulated,
  ``scripts/cygno_light_yield.py``): ≈ 820 / 1 310 / 1 450 counts per keV at z = 50 / 250
  / 450 mm (≈ 4 800 / 7 700 / 8 500 counts per 5.9 keV spot, rising with drift distance as
  diffusion dilutes the charge), σ/E ≈ 8.5 % at fixed z; ≈ 1 200 counts/keV and σ/E ≈ 20 %
  over the default uniform z range. The classical reconstruction (``reco.py``) recovers
  ≈ 90 % of that light.
* **Camera**: a fixed pedestal map (≈ 99 counts, per-pixel spread) and a per-pixel noise
  map (σ ≈ 2 counts, log-normal spread and a small fraction of noisy pixels), both drawn
  from ``detector_seed`` (the same for every image, as a pedestal run measures them);
  each frame adds Gaussian noise of the pixel's σ and is rounded to integer counts.

Truth: the noiseless digitisation of every track (expected counts per pixel: after
diffusion and gain, before photon statistics and camera noise; kept sparse), per pixel the
class (0 noise, 1 ER, 2 NR) and track of the brightest track when it gives at least
``truth_threshold_counts``, and per track its class, species, energies, position, box and
mask (:meth:`CygnoImages.track_mask`).

What it leaves out: the shared ER transport's own limitations (its elastic-scattering
model; no Auger electrons or fluorescence: ``physics/electron_recoils.py``); the NR recoil
cascade (secondary recoils are folded into the Lindhard factor, not tracked) and NR
channelling; the time
structure (the camera integrates; longitudinal diffusion enters only the saturation); the
space-charge dynamics behind the saturation beyond its fitted formula (arXiv 2505.06362
models it); any avalanche-size dependence of the light spread, gain non-uniformity over the
GEM area, vignetting, a measured optical PSF,
the non-Gaussian per-pixel noise tails of the real camera beyond the noisy-pixel fraction,
radioactive and cosmic backgrounds. Everything it makes is a simulation, not data.

Vectorised numpy (the ER transport is the shared JAX kernel, called in fixed-size chunks so
it compiles once), seeded: the same ``seed`` and config give identical images.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np
from scipy import ndimage

from recoil_jax.physics import gas as gas_lib
from recoil_jax.physics import ions
from recoil_jax.physics import electron_recoils as electron_sim

PIXEL_MM = 0.152  # LIME: 350 mm of GEM plane on 2304 pixels.
CLASS_NAMES = ("noise", "ER", "NR")  # Pixel classes; track classes are 1 (ER) and 2 (NR).
ER, NR = 1, 2
SPECIES = ("e", "He", "C", "F")  # Track species index: 0 electron, 1-3 recoiling nuclei.
NR_IONS = (ions.HELIUM_ION, ions.CARBON_ION, ions.FLUORINE_ION)
FE55_KEV = 5.9


@dataclasses.dataclass(frozen=True)
class SimConfig:
  """Every knob of the toy (units in the names). Defaults: LIME at 1 kV/cm, a 256² crop."""

  height: int = 256
  width: int = 256
  pixel_mm: float = PIXEL_MM
  tracks_per_image: float = 2.0
  multiplicity: str = "poisson"  # "poisson" (≥ 1) or "fixed".
  nr_fraction: float = 0.5
  er_energy_kev: tuple[float, float] = (1.0, 40.0)
  fe55_fraction: float = 0.1  # Of the ERs, at 5.9 keV.
  nr_ionisation_kev: tuple[float, float] = (1.0, 40.0)
  nr_species_probs: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)  # He, C, F.
  nr_straggling: float = 0.15
  nr_segments: int = 8
  nr_kink_rad: float = 0.35  # σ of the last segment's deflection; earlier ones ∝ index.
  z_range_mm: tuple[float, float] = (20.0, 480.0)
  margin_mm: float = 3.0
  w_ev: float = 46.2
  fano: float = 0.2
  er_cutoff_kev: float = 0.5
  # The shared ER transport's optional physics (physics/electron_recoil_physics.py): Møller δ-rays
  # above er_delta_cut_kev (2.6 per 40 keV track in He:CO₂), energy-loss straggling below it,
  # the ionisation electrons' thermalisation spread. On: without them the toy ERs are
  # cleaner than real ones and the cut-based ER/NR discrimination too good (issue 11).
  er_delta_rays: bool = True
  er_straggling: bool = True
  er_electron_spread: bool = True
  er_delta_cut_kev: float = 1.0
  # Primary-electron absorption length: 1400 mm in the CYGNO digitiser's parameter set tuned
  # on LIME's overground ⁵⁵Fe runs (fitted together with the saturation below).
  absorption_length_mm: float = 1400.0  # 0 = no absorption.
  diffusion_sigma0_mm: float = 0.35
  diffusion_mm_per_sqrt_cm: float = 0.115
  # Longitudinal diffusion σ_L(z) = √(σ0L² + D_L² z) (arXiv 2007.00608 via the digitiser:
  # σ0L² = 0.0676 mm², D_L² = 0.00978 mm²/cm); only the GEM3 saturation uses it.
  diffusion_long_sigma0_mm: float = 0.26
  diffusion_long_mm_per_sqrt_cm: float = 0.0989
  avalanche_sigma_mm: float = 0.15  # Spread of one electron's light on the GEM plane.
  avalanche_spots: int = 8  # Points sampling that spread (1 = all light at one point).
  gem_gain: float = 342.0
  gem_extraction: float = 0.36
  photons_per_avalanche_electron: float = 0.07
  # GEM3 saturation per voxel (pixel × ``saturation_voxel_z_mm`` along the drift): n
  # electrons entering GEM3 give A·n·G₃/(1 + β·G₃·n) (the CYGNO digitiser's model and its
  # parameters fitted on LIME's ⁵⁵Fe data at several drift distances, LNF runs 5867-5911:
  # β = 1e-5, A = 1.52, 0.1 mm; ``pietro14/digitization:ConfigFile_Fe55_best_parameters.txt``).
  saturation: bool = True
  saturation_beta: float = 1e-5
  saturation_scale: float = 1.52  # A (MC/data light scale fitted with β); 1 without saturation.
  saturation_voxel_z_mm: float = 0.1
  acceptance: float = 1.17e-4
  counts_per_photon: float = 2.0
  pedestal_counts: float = 99.0
  pedestal_spread_counts: float = 1.0
  noise_sigma_counts: float = 2.0
  noise_log_spread: float = 0.15
  noisy_pixel_fraction: float = 1e-3
  noisy_pixel_factor: float = 4.0
  truth_threshold_counts: float = 2.0
  detector_seed: int = 12345
  # ER tracks per call of the JAX transport + 1 at the top energy (one compiled shape).
  er_chunk: int = 64

  def __post_init__(self):
    if self.multiplicity not in ("poisson", "fixed"):
      raise ValueError(f"SimConfig.multiplicity={self.multiplicity!r}: 'poisson' or 'fixed'")
    if not 0.0 <= self.nr_fraction <= 1.0 or not 0.0 <= self.fe55_fraction <= 1.0:
      raise ValueError("SimConfig: nr_fraction and fe55_fraction must be in [0, 1]")
    if self.height < 8 or self.width < 8 or self.tracks_per_image < 0:
      raise ValueError(f"SimConfig: bad image size {self.height}x{self.width} or "
                       f"tracks_per_image {self.tracks_per_image}")
    lo, hi = self.er_energy_kev
    if not self.er_cutoff_kev < lo <= hi <= 200.0:
      raise ValueError(f"SimConfig.er_energy_kev={self.er_energy_kev} must be above "
                       f"er_cutoff_kev={self.er_cutoff_kev} and <= 200 keV")
    if self.er_delta_cut_kev < self.er_cutoff_kev:
      raise ValueError(f"SimConfig.er_delta_cut_kev={self.er_delta_cut_kev} must be >= "
                       f"er_cutoff_kev={self.er_cutoff_kev}")
    if self.absorption_length_mm < 0 or self.saturation_beta < 0 or self.saturation_scale <= 0:
      raise ValueError(
          f"SimConfig: absorption_length_mm={self.absorption_length_mm} (>= 0, 0 = none), "
          f"saturation_beta={self.saturation_beta} (>= 0) and saturation_scale="
          f"{self.saturation_scale} (> 0) are out of range")
    if abs(sum(self.nr_species_probs) - 1.0) > 1e-6:
      raise ValueError(f"SimConfig.nr_species_probs={self.nr_species_probs} must sum to 1")

  @property
  def gas(self) -> gas_lib.GasMixture:
    """He:CF₄ 60:40 with this config's W and Fano factor."""
    return _gas(self.w_ev, self.fano)

  @property
  def photons_per_electron(self) -> float:
    """Mean photons at the sensor per primary electron reaching the GEMs."""
    g = self.gem_gain
    return (g * self.gem_extraction)**2 * g * self.photons_per_avalanche_electron * \
        self.acceptance

  @property
  def counts_per_kev(self) -> float:
    """Nominal camera counts per keV of ionisation energy: the unsaturated GEM chain, no
    absorption, without the saturation model's scale A (the light of a track is this ×
    A·R, R ≤ 1 the saturation factor of :func:`saturation_factor`)."""
    return 1e3 / self.w_ev * self.photons_per_electron * self.counts_per_photon

  @property
  def gem3_input_per_electron(self) -> float:
    """Mean electrons entering GEM3 per primary electron, G₁ε₁·G₂ε₂ (≈ 1.5 × 10⁴)."""
    return (self.gem_gain * self.gem_extraction)**2

  def diffusion_long_sigma_mm(self, z_mm) -> np.ndarray:
    """Longitudinal diffusion σ_L(z) = √(σ0L² + D_L² z[cm]), mm."""
    z_cm = np.maximum(np.asarray(z_mm, np.float64), 0.0) / 10.0
    return np.sqrt(self.diffusion_long_sigma0_mm**2 +
                   self.diffusion_long_mm_per_sqrt_cm**2 * z_cm)

  def diffusion_sigma_mm(self, z_mm) -> np.ndarray:
    """Transverse diffusion σ_T(z) = √(σ₀² + D_T² z[cm]), mm."""
    z_cm = np.maximum(np.asarray(z_mm, np.float64), 0.0) / 10.0
    return np.sqrt(self.diffusion_sigma0_mm**2 + self.diffusion_mm_per_sqrt_cm**2 * z_cm)


@functools.lru_cache(maxsize=8)
def _gas(w_ev: float, fano: float) -> gas_lib.GasMixture:
  return dataclasses.replace(gas_lib.HE_CF4_60_40, W_eV=float(w_ev), fano=float(fano))


@functools.lru_cache(maxsize=8)
def _range_tables(e_max_kev: float) -> tuple[ions.RangeTable, ...]:
  target = ions.Target.from_gas(gas_lib.HE_CF4_60_40)
  return tuple(ions.range_table(ion, target, e_max_kev) for ion in NR_IONS)


@dataclasses.dataclass(frozen=True)
class CygnoImages:
  """A batch of simulated frames with their truth (see the module docstring).

  Attributes:
    images: float32 [N, H, W], camera counts (pedestal included).
    pedestal: float32 [H, W], the pedestal map (counts).
    noise_sigma: float32 [H, W], the per-pixel noise σ (counts).
    pixel_label: uint8 [N, H, W], 0 noise, 1 ER, 2 NR (brightest track ≥ threshold).
    instance: int16 [N, H, W], 0 none, k + 1 for the image's k-th track.
    tracks: per-track arrays [T]: ``image`` (image index), ``index`` (k in its image),
      ``cls`` (1 ER, 2 NR), ``species`` (index into SPECIES), ``energy_kev`` (kinetic),
      ``ionisation_kev`` (visible), ``fe55`` (bool), ``x_mm``/``y_mm`` (start in the
      crop, x = column), ``z_mm`` (drift), ``direction`` [T, 3], ``num_electrons``,
      ``signal_counts`` (noiseless counts inside the crop), ``box`` [T, 4] int32 (row0,
      col0, row1, col1; exclusive ends; zeros if the mask is empty), ``mask_pixels``.
    truth_track, truth_pixel, truth_counts: the sparse noiseless digitisation: global
      track index [P], flat pixel index row·W + col [P], expected counts [P] (float32).
    config: the :class:`SimConfig`.
  """

  images: np.ndarray
  pedestal: np.ndarray
  noise_sigma: np.ndarray
  pixel_label: np.ndarray
  instance: np.ndarray
  tracks: dict[str, np.ndarray]
  truth_track: np.ndarray
  truth_pixel: np.ndarray
  truth_counts: np.ndarray
  config: SimConfig

  def __len__(self) -> int:
    return int(self.images.shape[0])

  @property
  def num_tracks(self) -> int:
    return int(self.tracks["cls"].shape[0])

  def track_noiseless(self, t: int) -> np.ndarray:
    """float32 [H, W]: the noiseless counts of global track ``t`` alone."""
    h, w = self.images.shape[1:]
    out = np.zeros(h * w, np.float32)
    sel = self.truth_track == t
    out[self.truth_pixel[sel]] = self.truth_counts[sel]
    return out.reshape(h, w)

  def track_mask(self, t: int) -> np.ndarray:
    """bool [H, W]: pixels where track ``t`` alone gives ≥ ``truth_threshold_counts``."""
    return self.track_noiseless(t) >= self.config.truth_threshold_counts


def detector_maps(cfg: SimConfig) -> tuple[np.ndarray, np.ndarray]:
  """(pedestal, noise σ) maps, float32 [H, W] counts, from ``cfg.detector_seed``."""
  rng = np.random.default_rng([cfg.detector_seed, 7])
  shape = (cfg.height, cfg.width)
  pedestal = cfg.pedestal_counts + cfg.pedestal_spread_counts * rng.standard_normal(shape)
  sigma = cfg.noise_sigma_counts * np.exp(cfg.noise_log_spread * rng.standard_normal(shape))
  noisy = rng.random(shape) < cfg.noisy_pixel_fraction
  sigma = np.where(noisy, sigma * cfg.noisy_pixel_factor, sigma)
  return pedestal.astype(np.float32), sigma.astype(np.float32)


# Gauss–Hermite nodes for ∫ φ(t) f(t) dt ≈ Σ w f(t) / √(2π) (weight e^{−t²/2}).
_GH_T, _GH_W = np.polynomial.hermite_e.hermegauss(64)


def saturation_factor(u) -> np.ndarray:
  """Mean GEM3 gain fraction R(u) = ∫ φ(t) dt / (1 + u·e^{−t²/2}) of a pixel column whose
  charge has a Gaussian profile along the drift with β·G₃·n = ``u`` in its peak voxel
  (``n·G₃/(1 + β·G₃·n)`` per voxel, summed over the column's voxels, over n·G₃)."""
  u = np.asarray(u, np.float64)
  den = 1.0 + u[..., None] * np.exp(-0.5 * _GH_T**2)
  return (_GH_W / den).sum(-1) / math.sqrt(2.0 * math.pi)


def _saturation_gain(cfg: SimConfig, owner: np.ndarray, x0: np.ndarray, y0: np.ndarray,
                     z0: np.ndarray, q: np.ndarray, spot_owner: np.ndarray,
                     spot_row: np.ndarray, spot_col: np.ndarray, num_tracks: int
                     ) -> np.ndarray:
  """A·R per light spot: the GEM3 saturation of its track's charge at its pixel.

  As in the CYGNO digitiser (which diffuses every electron leaving GEM2 independently),
  the saturation acts on the *expected* GEM3 input of the track: the charge ``q`` [e⁻]
  of each primary at its undiffused position (``x0``, ``y0`` [mm], drift ``z0`` [mm]),
  spread by the transverse diffusion at the track's mean drift. Per pixel column the
  charge is taken Gaussian along the drift, with the charge-weighted variance of the
  primaries' z plus σ_L², and sliced into ``saturation_voxel_z_mm`` voxels
  (:func:`saturation_factor`). ``owner`` and ``spot_owner`` must be sorted (track order).
  """
  px = cfg.pixel_mm
  g3_beta = cfg.saturation_beta * cfg.gem_gain
  out = np.full(len(spot_owner), cfg.saturation_scale, np.float64)
  p_lo = np.searchsorted(owner, np.arange(num_tracks + 1))
  s_lo = np.searchsorted(spot_owner, np.arange(num_tracks + 1))
  for t in range(num_tracks):
    a, b, c, d = p_lo[t], p_lo[t + 1], s_lo[t], s_lo[t + 1]
    if b == a or d == c:
      continue
    qt = q[a:b]
    zbar = float(np.average(z0[a:b], weights=qt))
    dz = z0[a:b] - zbar
    sig = float(cfg.diffusion_sigma_mm(zbar)) / px  # Pixels.
    margin = int(math.ceil(5.0 * sig + 3.0 * cfg.avalanche_sigma_mm / px)) + 1
    col = np.floor(x0[a:b] / px).astype(np.int64)
    row = np.floor(y0[a:b] / px).astype(np.int64)
    c0, r0 = col.min() - margin, row.min() - margin
    shape = (row.max() + margin + 1 - r0, col.max() + margin + 1 - c0)
    flat = (row - r0) * shape[1] + (col - c0)
    grids = [ndimage.gaussian_filter(
        np.bincount(flat, weights=qt * dz**k, minlength=shape[0] * shape[1]).reshape(shape),
        sig, mode="constant", truncate=4.0) for k in (0, 1, 2)]
    n_col = grids[0]
    safe = np.maximum(n_col, 1e-12)
    var_z = np.maximum(grids[2] / safe - (grids[1] / safe)**2, 0.0) + \
        float(cfg.diffusion_long_sigma_mm(zbar))**2
    peak = n_col * cfg.saturation_voxel_z_mm / np.sqrt(2.0 * math.pi * var_z)
    sr, sc = spot_row[c:d] - r0, spot_col[c:d] - c0
    ok = (sr >= 0) & (sr < shape[0]) & (sc >= 0) & (sc < shape[1])
    out[c:d][ok] *= saturation_factor(g3_beta * peak[sr[ok], sc[ok]])
  return out


def _isotropic(rng: np.random.Generator, n: int) -> np.ndarray:
  d = rng.standard_normal((n, 3))
  return d / np.linalg.norm(d, axis=1, keepdims=True)


def _rotations_from_z(d: np.ndarray, roll: np.ndarray) -> np.ndarray:
  """[T, 3, 3] rotations taking +z to the unit vectors ``d`` [T, 3], with a roll angle."""
  # An orthonormal frame (u, v, d) per track; +z -> d, +x -> u, +y -> v, rolled about d.
  helper = np.where(np.abs(d[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
  u = np.cross(helper, d)
  u /= np.linalg.norm(u, axis=1, keepdims=True)
  v = np.cross(d, u)
  c, s = np.cos(roll)[:, None], np.sin(roll)[:, None]
  u, v = c * u + s * v, -s * u + c * v
  return np.stack([u, v, d], axis=-1)  # Columns: images of x, y, z.


def _electron_recoils(energies: np.ndarray, cfg: SimConfig, seed: int) -> list[np.ndarray]:
  """Ionisation electrons of ERs (start at the origin along +z), a list of [n_i, 3] mm."""
  out: list[np.ndarray] = []
  chunk = int(cfg.er_chunk)
  for c, start in enumerate(range(0, len(energies), chunk - 1)):
    e = energies[start:start + chunk - 1]
    # Pad to a fixed size, the first pad at the top energy: one compiled shape and capacity.
    pad = np.full(chunk - len(e), 2.0 * cfg.er_cutoff_kev + 0.5)
    pad[0] = max(cfg.er_energy_kev[1], FE55_KEV)
    r = electron_sim.simulate_electron_recoils(
        int(seed) * 7919 + c, np.concatenate([e, pad]), gas=cfg.gas,
        cutoff_kev=cfg.er_cutoff_kev, max_steps=2048, chunk_size=chunk,
        delta_rays=cfg.er_delta_rays, straggling=cfg.er_straggling,
        electron_spread=cfg.er_electron_spread, delta_cut_kev=cfg.er_delta_cut_kev)
    out.extend(r.track(i).astype(np.float64) for i in range(len(e)))
  return out


def _nuclear_recoils(rng: np.random.Generator, species: np.ndarray, energy: np.ndarray,
                     ionisation: np.ndarray, cfg: SimConfig) -> list[np.ndarray]:
  """Ionisation electrons of NRs (start at the origin along +z), a list of [n_i, 3] mm."""
  n = len(energy)
  if n == 0:
    return []
  tables = _range_tables(float(max(200.0, energy.max() * 1.01)))
  k = int(cfg.nr_segments)
  path = np.array([tables[s - 1].residual_path_mm(e) for s, e in zip(species, energy)])
  path *= np.maximum(1.0 + cfg.nr_straggling * rng.standard_normal(n), 0.2)
  # Kinked path: segment j deflected from segment j−1 by |N(0, σ_j)|, σ_j ∝ j.
  dirs = np.zeros((n, k, 3))
  dirs[:, 0] = [0.0, 0.0, 1.0]
  for j in range(1, k):
    theta = np.abs(rng.normal(0.0, cfg.nr_kink_rad * j / (k - 1), n))
    rot = _rotations_from_z(dirs[:, j - 1], rng.uniform(0, 2 * np.pi, n))
    local = np.stack([np.sin(theta), np.zeros(n), np.cos(theta)], axis=-1)
    dirs[:, j] = np.einsum("tij,tj->ti", rot, local)
  seg = path / k
  vertices = np.concatenate([np.zeros((n, 1, 3)), np.cumsum(dirs * seg[:, None, None], 1)], 1)
  mean_n = ionisation * 1e3 / cfg.w_ev
  num = np.maximum(np.round(mean_n + np.sqrt(cfg.fano * mean_n) * rng.standard_normal(n)), 0)
  out = []
  for i in range(n):
    t = tables[species[i] - 1]
    e0 = energy[i]
    # Residual energy at each electron, ∝ the electronic loss; its arc length from start.
    loss = rng.random(int(num[i])) * np.interp(e0, t.energy_kev, t.electronic_kev)
    e_at = t.energy_at_electronic_loss(loss)
    s = (t.residual_path_mm(e0) - t.residual_path_mm(e_at)) / max(
        t.residual_path_mm(e0), 1e-12) * path[i]
    j = np.minimum((s / max(seg[i], 1e-12)).astype(int), k - 1)
    out.append(vertices[i, j] + (s - j * seg[i])[:, None] * dirs[i, j])
  return out


def _draw_tracks(rng: np.random.Generator, num_images: int, cfg: SimConfig
                 ) -> dict[str, np.ndarray]:
  """Per-track truth before transport: class, species, energies, geometry."""
  if cfg.multiplicity == "fixed":
    mult = np.full(num_images, int(round(cfg.tracks_per_image)))
  else:
    mult = np.maximum(rng.poisson(cfg.tracks_per_image, num_images), 1)
  t = int(mult.sum())
  image = np.repeat(np.arange(num_images), mult)
  index = np.arange(t) - np.repeat(np.cumsum(mult) - mult, mult)
  is_nr = rng.random(t) < cfg.nr_fraction
  cls = np.where(is_nr, NR, ER)
  species = np.where(is_nr, 1 + rng.choice(3, t, p=np.asarray(cfg.nr_species_probs)), 0)
  fe55 = ~is_nr & (rng.random(t) < cfg.fe55_fraction)
  e_er = np.where(fe55, FE55_KEV, rng.uniform(*cfg.er_energy_kev, t))
  e_ion_nr = rng.uniform(*cfg.nr_ionisation_kev, t)
  e_nr = np.zeros(t)
  for s, ion in enumerate(NR_IONS, start=1):
    sel = species == s
    if sel.any():
      e_nr[sel] = ions.recoil_energy_for_ionisation(e_ion_nr[sel], ion.Z, ion.A)
  lo = cfg.margin_mm
  return dict(
      image=image.astype(np.int32), index=index.astype(np.int32), cls=cls.astype(np.int32),
      species=species.astype(np.int32), fe55=fe55,
      energy_kev=np.where(is_nr, e_nr, e_er),
      ionisation_kev=np.where(is_nr, e_ion_nr, e_er),
      x_mm=rng.uniform(lo, cfg.width * cfg.pixel_mm - lo, t),
      y_mm=rng.uniform(lo, cfg.height * cfg.pixel_mm - lo, t),
      z_mm=rng.uniform(*cfg.z_range_mm, t),
      direction=_isotropic(rng, t), roll=rng.uniform(0, 2 * np.pi, t))


def simulate_images(seed: int, num_images: int, cfg: SimConfig = SimConfig()) -> CygnoImages:
  """``num_images`` frames with their truth (module docstring); seeded by ``seed``."""
  if num_images < 1:
    raise ValueError(f"simulate_images: num_images={num_images} must be >= 1")
  rng = np.random.default_rng([int(seed), 1])
  tr = _draw_tracks(rng, num_images, cfg)
  t = len(tr["cls"])
  h, w = cfg.height, cfg.width

  # Ionisation electrons of every track, local frame (origin, +z), then rotated and placed.
  er = np.flatnonzero(tr["cls"] == ER)
  nr = np.flatnonzero(tr["cls"] == NR)
  local: list[Any] = [None] * t
  for i, pts in zip(er, _electron_recoils(tr["energy_kev"][er], cfg, seed)):
    local[i] = pts
  for i, pts in zip(nr, _nuclear_recoils(rng, tr["species"][nr], tr["energy_kev"][nr],
                                         tr["ionisation_kev"][nr], cfg)):
    local[i] = pts
  num_e = np.array([len(p) for p in local], np.int64)
  owner = np.repeat(np.arange(t), num_e)
  pts = np.concatenate([p for p in local] + [np.zeros((0, 3))], axis=0)
  rot = _rotations_from_z(tr["direction"], tr["roll"])
  pts = np.einsum("nij,nj->ni", rot[owner], pts)
  x = pts[:, 0] + tr["x_mm"][owner]
  y = pts[:, 1] + tr["y_mm"][owner]
  z = np.maximum(pts[:, 2] + tr["z_mm"][owner], 0.0)

  # Drift: absorption, diffusion; amplification: exponential GEM1 gain.
  if cfg.absorption_length_mm > 0:
    keep = rng.random(len(z)) < np.exp(-z / cfg.absorption_length_mm)
    owner, x, y, z = owner[keep], x[keep], y[keep], z[keep]
  prim_owner, x0, y0 = owner, x, y  # Undiffused, for the GEM3 saturation.
  sig = cfg.diffusion_sigma_mm(z)
  x = x + sig * rng.standard_normal(len(x))
  y = y + sig * rng.standard_normal(len(y))
  gain1 = rng.exponential(1.0, len(x))  # GEM1 gain / its mean.
  photons = cfg.photons_per_electron * gain1
  if cfg.avalanche_spots > 1:
    # Each avalanche's light spreads over ~a pixel (GEM holes, transfer gaps, optics).
    m = int(cfg.avalanche_spots)
    owner, photons = np.repeat(owner, m), np.repeat(photons / m, m)
    x = np.repeat(x, m) + cfg.avalanche_sigma_mm * rng.standard_normal(len(owner))
    y = np.repeat(y, m) + cfg.avalanche_sigma_mm * rng.standard_normal(len(owner))
  col = np.floor(x / cfg.pixel_mm).astype(np.int64)
  row = np.floor(y / cfg.pixel_mm).astype(np.int64)
  if cfg.saturation:
    # Deterministic given the draws above: the random stream is the same either way.
    photons = photons * _saturation_gain(
        cfg, prim_owner, x0, y0, z, cfg.gem3_input_per_electron * gain1, owner, row, col, t)
  inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
  owner, photons, pix = owner[inside], photons[inside], (row * w + col)[inside]

  # Sparse noiseless digitisation per (track, pixel).
  key = owner * (h * w) + pix
  uniq, inv = np.unique(key, return_inverse=True)
  expected = np.bincount(inv, weights=photons, minlength=len(uniq))  # photons
  truth_track = (uniq // (h * w)).astype(np.int64)
  truth_pixel = (uniq % (h * w)).astype(np.int64)
  truth_counts = (expected * cfg.counts_per_photon).astype(np.float32)
  img_of = tr["image"][truth_track].astype(np.int64)
  flat = img_of * (h * w) + truth_pixel
  mean_photons = np.bincount(flat, weights=expected, minlength=num_images * h * w)
  signal = rng.poisson(mean_photons).astype(np.float64) * cfg.counts_per_photon

  pedestal, sigma = detector_maps(cfg)
  frames = signal.reshape(num_images, h, w) + pedestal[None] + \
      sigma[None] * rng.standard_normal((num_images, h, w))
  images = np.round(frames).astype(np.float32)

  # Truth per pixel: the brightest track, if bright enough.
  order = np.lexsort((truth_counts, flat))  # By pixel, then counts ascending.
  last = np.ones(len(order), bool)
  last[:-1] = flat[order][1:] != flat[order][:-1]
  best = order[last]
  bright = truth_counts[best] >= cfg.truth_threshold_counts
  best = best[bright]
  pixel_label = np.zeros(num_images * h * w, np.uint8)
  instance = np.zeros(num_images * h * w, np.int16)
  pixel_label[flat[best]] = tr["cls"][truth_track[best]]
  instance[flat[best]] = tr["index"][truth_track[best]] + 1

  # Per-track boxes and masks (every pixel where the track alone is above threshold).
  on = truth_counts >= cfg.truth_threshold_counts
  box = np.zeros((t, 4), np.int32)
  mask_pixels = np.bincount(truth_track[on], minlength=t)
  if on.any():
    r, c, tt = truth_pixel[on] // w, truth_pixel[on] % w, truth_track[on]
    for k, (fn, init) in enumerate([(np.minimum, h), (np.minimum, w), (np.maximum, -1),
                                    (np.maximum, -1)]):
      vals = np.full(t, init, np.int64)
      fn.at(vals, tt, (r, c, r, c)[k])
      box[:, k] = vals + (k >= 2)
    box[mask_pixels == 0] = 0
  tracks = {k: v for k, v in tr.items() if k != "roll"}
  tracks.update(num_electrons=num_e.astype(np.int32),
                signal_counts=np.bincount(truth_track, weights=truth_counts,
                                          minlength=t).astype(np.float32),
                box=box, mask_pixels=mask_pixels.astype(np.int32))
  return CygnoImages(
      images=images, pedestal=pedestal, noise_sigma=sigma,
      pixel_label=pixel_label.reshape(num_images, h, w),
      instance=instance.reshape(num_images, h, w), tracks=tracks,
      truth_track=truth_track.astype(np.int32), truth_pixel=truth_pixel.astype(np.int32),
      truth_counts=truth_counts, config=cfg)
