"""Toy nano-imaging emulsion events at 8 polarisations (NEWSdm; arXiv 2106.11995, 1812.09528).

What is simulated: one 40×40 crop (27.5 nm pixels, 1.1 µm across) of a cluster of
developed silver grains in a NIT emulsion, seen through an optical microscope at 8
polarisation angles ψ_k = 22.5°·k (k = 0..7, i.e. 0…157.5°), as raw 8-bit camera counts.

Scene (``sample_scenes``; all lengths in nm, angles in radians unless named ``_deg``):

* **Carbon ions** (``c30``, ``c60``, ``c100``: 30 / 60 / 100 keV) from a beam at
  ``beam_angle_deg`` in the emulsion plane: 3D direction = beam deviated by a Rayleigh(σ =
  ``beam_spread_deg``) angle about a uniform azimuth (low-energy ions straggle a lot);
  3D start-to-end length lognormal about :data:`CARBON_RANGE_NM` (relative rms
  ``range_relative_rms``); developed grains ``1 + Poisson(L · crystal_linear_density ·
  development_efficiency)`` uniform along the track with ``transverse_jitter_nm``; the
  image sees the projection on the (x, y) plane. The mean length is the projected range of
  carbon in :data:`NIT_EMULSION` from ``recoil_jax.physics.ions`` (Lindhard–Scharff
  electronic plus ZBL universal nuclear stopping, Bragg additivity, LSS projected-range
  correction; :func:`carbon_range_nm`): 101.5 / 180.0 / 269.1 nm at 30 / 60 / 100 keV,
  against the 270 nm measured at 100 keV (arXiv 1812.09528). Expect ±25 % (SRIM samples
  in ``golovart/Napoli_emulsion:NEWSdm/WIMP_simulation/Sandbox.ipynb`` spread 170–280 nm
  at 60 keV).
* **Fog**: one grain (thermally developed crystal), random position offset, orientation.
* **γ-induced electrons** (``gamma``): low-dE/dx tracks, ``1 + Poisson(gamma_extra_grains)``
  grains along a 3D random walk with exponential gaps (mean ``gamma_gap_nm``) and a
  Gaussian deflection (``gamma_scatter_deg``) per gap; isotropic.
* **Silver nanoparticles** (``nanoparticle``; the source study's "unphysical" surface
  sample): brighter, near-spherical particles (weak polarisation response), a fraction
  ``nanoparticle_dimer_prob`` as touching dimers that respond along their axis.
* Every event may carry unrelated fog grains anywhere in the crop (Poisson, density
  ``fog_density_per_um3`` × crop area × ``depth_of_field_um``): what the isolation cut removes.

Polarisation response (the localised-surface-plasmon toy of arXiv 1812.09528): grain g
has an orientation φ_g and an anisotropy a_g; its brightness at ψ is
``A_g · (1 + a_g cos 2(ψ − φ_g))`` (period 180°, so the 8 angles close the cycle). Track
grains are aligned with the track direction (φ = θ + N(0, ``alignment_sigma_deg``)) with
probability ``alignment_prob`` and randomly oriented otherwise, so a multi-grain track's
brightness-weighted barycentre moves *along the track* as ψ turns and its total brightness
follows the track direction. A single grain's barycentre does not move.

Optics and camera (``render``): each grain is a Gaussian of σ² = ``psf_sigma_nm``² +
``grain_sigma_nm``² (PSF FWHM ≈ 200 nm for σ 85 nm; 60 nm grains), integrated exactly over
each pixel; each polarisation image is displaced by an independent ``pol_jitter_nm``
(stage vibration, refocusing); the crop is centred on the cluster's brightness-weighted
barycentre to within ±½ pixel. Camera: pedestal (``pedestal_counts`` ± ``pedestal_rms``
per event), Poisson shot noise on photo-electrons (``gain_counts_per_e``), Gaussian read
noise, rounding and clipping to 8 bits. Shot noise is drawn as its Gaussian limit (every
pixel holds ≥ 50 photo-electrons of pedestal).

Conventions: image arrays are ``[N, y, x, pol]`` (rows = y, columns = x, channels-last
like the authors' tensors); pixel (row j, column i) is centred at ``x = (i − 19.5)·27.5``,
``y = (j − 19.5)·27.5`` nm; angles are counter-clockwise from +x towards +y. Rotating a
scene by α maps φ → φ + α, hence brightness(ψ) → brightness(ψ − α): for α = m·22.5°, the
rotated event's polarisation image k is the rotated image (k − m) mod 8 (``rotate_scenes``
is what tests compare the cycled augmentation with).

Tuning: grain brightness, gain, read noise and ``pol_jitter_nm`` were chosen so that the
classical barycentre-shift baseline (``barycentre.py``) passes about the fractions the
authors measured at 38.5 nm (``golovart/Napoli_emulsion``: C30 22.8 %, C60 32.4 %, C100
38.1 %, fog 31.2 %); simulated, 3 000 events per kind after the cleaning cuts: 22 / 24 /
32 / 30 %. The shift of a single grain is then pure noise and jitter, as in the data.

Left out: 3D crystal packing and depth of focus (grains are drawn in projection, every
grain in focus), development efficiency vs dE/dx, δ-rays, the α contamination of the
real γ sample, colour information, plasmon resonance spectra (one scalar anisotropy per
grain), crystal-size distributions, aberrations and non-Gaussian PSF tails, camera
non-linearity and per-pixel gain. Grain, fog and γ densities are not sourced: they are
parameters (``SimParams``). The numbers this produces are *simulated*.

Easier or harder than the real emulsion (what to keep in mind when a rejection power of
the toy is set beside the talk's 10³ / the goal's 10⁴; fractions from ``sample_scenes``
at the defaults, 2·10⁵ events per kind):

* Easier — fog is *exactly* one grain of the same population as track grains. The only
  fog that looks like a track is a chance coincidence with an unrelated fog grain within
  ≈ 300 nm (6.9·10⁻³ of fog events, one neighbour; two neighbours ≈ 10⁻⁵), so a network
  that keeps the ≥ 3-grain, ≥ 150 nm carbon tracks (50 % / 87 % of C100) sees almost no
  fog there. Real fog also holds multi-crystal clusters, crystal-size and shape tails,
  dust and out-of-focus grains, none simulated; 10⁴ against toy fog is an upper bound.
* Easier — every grain is in focus, the PSF is a known Gaussian, the noise is Gaussian
  and stationary, the polarisation response is one cos 2(ψ − φ) per grain: no
  aberrations, focus drift, per-pixel gain or colour effects that real images carry
  and a classifier can latch onto or be confused by; no α tail in the γ sample (the talk
  names it as what limits C100 vs γ).
* Harder — γ electrons are 1 + Poisson(0.8) grains with 300 nm exponential gaps and
  45° scattering per gap: 45 % single-grain, 19 % with ≥ 3 grains, a third longer than
  150 nm in projection. These parameters are not sourced; if real γ tracks in NIT are
  sparser (lower dE/dx, wider gaps) they separate *better* than here, and toy γ is the
  harder background.
* Harder — carbon tracks keep only the information of the grains: 19.5 % of C100 (33 %
  of C60, 53 % of C30) develop a single grain and are identical to fog by construction,
  and half the track grains' plasmon response is randomly oriented
  (``alignment_prob`` 0.5). Real tracks may carry more (grain size and colour along dE/dx,
  depth); these cap the signal efficiency at which any rejection is reachable, not the
  rejection at 30 %.

Streaming: :func:`simulate` makes one vectorised chunk (seeded); :func:`iter_chunks`
yields chunks with seeds from ``np.random.SeedSequence(seed, spawn_key=(chunk,))``, so
10⁵+ events never sit in memory and any chunk can be regenerated alone.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from scipy import special

from recoil_jax.physics import ions
from recoil_jax.physics.gas import Element

KINDS = ("c30", "c60", "c100", "fog", "gamma", "nanoparticle")
KIND_CODE = {k: i for i, k in enumerate(KINDS)}
SIGNAL_KINDS = KINDS[:3]
BACKGROUND_KINDS = KINDS[3:]
ENERGY_KEV = {"c30": 30.0, "c60": 60.0, "c100": 100.0}
#: NIT (Nano Imaging Tracker) emulsion, by mass: H 1.6, C 10.1, N 2.7, O 7.4, S 0.3, Br 32.0,
#: Ag 44.0, I 1.9 wt %, 3.4 g/cm³: the composition table of the NEWS Letter of Intent
#: (arXiv 1604.04199), as quoted in the NEWSdm literature.
NIT_EMULSION = ions.Target.from_mass_fractions(
    "NIT emulsion",
    ((Element("H", 1, 1.008), 1.6), (Element("C", 6, 12.011), 10.1),
     (Element("N", 7, 14.007), 2.7), (Element("O", 8, 15.999), 7.4),
     (Element("S", 16, 32.06), 0.3), (Element("Br", 35, 79.904), 32.0),
     (Element("Ag", 47, 107.8682), 44.0), (Element("I", 53, 126.90447), 1.9)),
    density_g_cm3=3.4)


@functools.lru_cache(maxsize=None)
def carbon_range_nm(energy_kev: float) -> float:
  """Mean projected range (nm) of a carbon ion of ``energy_kev`` keV in :data:`NIT_EMULSION`.

  ``recoil_jax.physics.ions`` (LSS + ZBL, ±25 % against SRIM); the simulator uses it as
  the mean 3D start-to-end length of the ion's grain segment.
  """
  return float(ions.projected_range_mm(ions.CARBON_ION, NIT_EMULSION, float(energy_kev))) * 1e6


#: Mean 3D start-to-end length (nm) of a carbon ion by energy (keV): :func:`carbon_range_nm`.
CARBON_RANGE_NM = {e: carbon_range_nm(e) for e in ENERGY_KEV.values()}
NUM_POLARISATIONS = 8
POLARISATION_STEP_DEG = 22.5
POLARISATION_ANGLES_DEG = POLARISATION_STEP_DEG * np.arange(NUM_POLARISATIONS)
PIXEL_NM = 27.5
CROP = 40
MAX_EVENT_GRAINS = 8  # Grains of the event itself (more are dropped: < 1e-3 of tracks).
MAX_NEIGHBOURS = 2  # Unrelated fog grains in the crop.
MAX_GRAINS = MAX_EVENT_GRAINS + MAX_NEIGHBOURS


@dataclasses.dataclass(frozen=True)
class SimParams:
  """Every knob of the toy (units in the names; see the module docstring)."""
  psf_sigma_nm: float = 85.0  # FWHM ≈ 200 nm.
  grain_sigma_nm: float = 15.0  # 60 nm developed grain as a Gaussian.
  pol_jitter_nm: float = 8.0  # Per-polarisation-image displacement, per axis (see tuning).
  pedestal_counts: float = 30.0
  pedestal_rms_counts: float = 3.0  # Event-to-event illumination change.
  gain_counts_per_e: float = 0.15
  read_noise_counts: float = 1.5
  grain_photons: float = 10000.0  # Photo-electrons per grain (≈ 24 counts at the peak).
  grain_brightness_rms: float = 0.3  # Lognormal σ of a grain's brightness.
  anisotropy_min: float = 0.1
  anisotropy_max: float = 0.5
  alignment_prob: float = 0.5  # Track grains whose response follows the track direction.
  alignment_sigma_deg: float = 15.0
  crystal_linear_density_per_um: float = 6.4  # 70 nm crystals, volume fraction 0.3.
  development_efficiency: float = 1.0
  range_relative_rms: float = 0.25
  beam_spread_deg: float = 35.0
  transverse_jitter_nm: float = 10.0
  gamma_extra_grains: float = 0.8
  gamma_gap_nm: float = 300.0
  gamma_scatter_deg: float = 45.0
  nanoparticle_brightness_min: float = 1.2  # × grain_photons.
  nanoparticle_brightness_max: float = 3.0
  nanoparticle_sigma_nm: float = 25.0
  nanoparticle_anisotropy_max: float = 0.1
  nanoparticle_dimer_prob: float = 0.2
  nanoparticle_dimer_anisotropy: float = 0.5
  fog_density_per_um3: float = 0.05
  depth_of_field_um: float = 0.5

  def replace(self, **kwargs: Any) -> "SimParams":
    return dataclasses.replace(self, **kwargs)


def make_params(params: SimParams | Mapping[str, Any] | None = None) -> SimParams:
  """``SimParams`` from None (defaults), a mapping of overrides or a ``SimParams``."""
  if params is None:
    return SimParams()
  if isinstance(params, SimParams):
    return params
  unknown = set(params) - {f.name for f in dataclasses.fields(SimParams)}
  if unknown:
    raise ValueError(f"newsdm sim: unknown parameter(s) {sorted(unknown)}")
  return SimParams(**{k: float(v) for k, v in params.items()})


@dataclasses.dataclass
class Scenes:
  """Grain-level truth of N events (G = :data:`MAX_GRAINS` slots, ``valid`` marks used ones).

  Attributes:
    position_nm: float64 [N, G, 2] (x, y) relative to the crop centre.
    valid: bool [N, G]; in_event: bool [N, G] (False for unrelated fog grains).
    photons: float64 [N, G] photo-electrons (polarisation-averaged).
    anisotropy: float64 [N, G] a in [0, 1); orientation: float64 [N, G] φ (rad).
    sigma_nm: float64 [N, G] image σ (PSF ⊕ grain).
    kind: int32 [N] (:data:`KINDS` index); energy_kev: float32 [N] (0 for backgrounds).
    direction_rad: float64 [N] in-plane direction of the track (nan for one-grain kinds).
    length_nm: float64 [N] projected start-to-end length of the ion's segment; first to
      last grain for other kinds (0 for one grain).
    num_grains: int32 [N] grains of the event itself.
  """
  position_nm: np.ndarray
  valid: np.ndarray
  in_event: np.ndarray
  photons: np.ndarray
  anisotropy: np.ndarray
  orientation: np.ndarray
  sigma_nm: np.ndarray
  kind: np.ndarray
  energy_kev: np.ndarray
  direction_rad: np.ndarray
  length_nm: np.ndarray
  num_grains: np.ndarray


def kind_codes(kinds: str | Sequence[str], num: int) -> np.ndarray:
  """int32 [num]: one kind name for all, or a sequence of names cycled (exact balance)."""
  names = [kinds] if isinstance(kinds, str) else list(kinds)
  bad = [k for k in names if k not in KIND_CODE]
  if bad or not names:
    raise ValueError(f"newsdm sim: unknown kind(s) {bad or names}; known: {KINDS}")
  codes = np.array([KIND_CODE[k] for k in names], np.int32)
  return codes[np.arange(num) % len(codes)]


def _isotropic(rng: np.random.Generator, n: int) -> np.ndarray:
  v = rng.standard_normal((n, 3))
  return v / np.linalg.norm(v, axis=1, keepdims=True)


def _beam_directions(rng, n: int, beam_angle_deg: float, spread_deg: float) -> np.ndarray:
  """[n, 3] unit vectors: beam in the (x, y) plane deviated by a Rayleigh angle."""
  beta = math.radians(beam_angle_deg)
  b = np.array([math.cos(beta), math.sin(beta), 0.0])
  u = np.array([-math.sin(beta), math.cos(beta), 0.0])
  w = np.array([0.0, 0.0, 1.0])
  delta = np.minimum(rng.rayleigh(math.radians(spread_deg), n), math.pi)
  chi = rng.uniform(0, 2 * math.pi, n)
  return (np.cos(delta)[:, None] * b + np.sin(delta)[:, None]
          * (np.cos(chi)[:, None] * u + np.sin(chi)[:, None] * w))


def _perpendicular(d: np.ndarray, rng) -> np.ndarray:
  """Random unit vectors [n, 3] perpendicular to the unit vectors ``d`` [n, 3]."""
  r = rng.standard_normal(d.shape)
  r -= np.sum(r * d, axis=1, keepdims=True) * d
  return r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)


def sample_scenes(rng: np.random.Generator, kinds: np.ndarray, beam_angle_deg: float = 0.0,
                  params: SimParams | None = None) -> Scenes:
  """Grain-level scenes of events of the given kinds (int [N]); see the module docstring."""
  p = make_params(params)
  kinds = np.asarray(kinds, np.int32)
  n, g = len(kinds), MAX_GRAINS
  pos3 = np.zeros((n, MAX_EVENT_GRAINS, 3))
  valid = np.zeros((n, g), bool)
  photons = p.grain_photons * np.exp(p.grain_brightness_rms * rng.standard_normal((n, g))
                                     - 0.5 * p.grain_brightness_rms ** 2)
  anisotropy = rng.uniform(p.anisotropy_min, p.anisotropy_max, (n, g))
  orientation = rng.uniform(0, math.pi, (n, g))
  sigma = np.full((n, g), math.hypot(p.psf_sigma_nm, p.grain_sigma_nm))
  direction = np.full(n, np.nan)
  energy = np.zeros(n, np.float32)
  num_grains = np.ones(n, np.int32)
  slot = np.arange(MAX_EVENT_GRAINS)

  # Carbon ions: grains uniform along a straight 3D segment, seen in projection.
  ion = kinds <= KIND_CODE["c100"]
  if ion.any():
    idx = np.flatnonzero(ion)
    e = np.array([ENERGY_KEV[KINDS[k]] for k in kinds[idx]])
    energy[idx] = e
    mean = np.array([CARBON_RANGE_NM[x] for x in e])
    s = p.range_relative_rms
    length = mean * np.exp(s * rng.standard_normal(len(idx)) - 0.5 * s * s)
    d = _beam_directions(rng, len(idx), beam_angle_deg, p.beam_spread_deg)
    lam = length * 1e-3 * p.crystal_linear_density_per_um * p.development_efficiency
    ng = np.minimum(1 + rng.poisson(lam), MAX_EVENT_GRAINS)
    t = np.sort(np.where(slot < ng[:, None], rng.uniform(0, 1, (len(idx), MAX_EVENT_GRAINS)),
                         np.inf), axis=1)
    t = np.where(np.isfinite(t), t, 0.0)
    pts = t[:, :, None] * length[:, None, None] * d[:, None, :]
    perp = p.transverse_jitter_nm * rng.standard_normal(pts.shape)
    pos3[idx] = pts + perp
    valid[idx, :MAX_EVENT_GRAINS] = slot < ng[:, None]
    theta = np.arctan2(d[:, 1], d[:, 0])
    direction[idx] = theta
    ion_length = length * np.hypot(d[:, 0], d[:, 1])
    aligned = rng.uniform(size=(len(idx), MAX_EVENT_GRAINS)) < p.alignment_prob
    phi_aligned = theta[:, None] + math.radians(p.alignment_sigma_deg) * rng.standard_normal(
        (len(idx), MAX_EVENT_GRAINS))
    orientation[idx, :MAX_EVENT_GRAINS] = np.where(aligned, phi_aligned,
                                                   orientation[idx, :MAX_EVENT_GRAINS])
    num_grains[idx] = ng

  # Fog: one grain.
  fog = kinds == KIND_CODE["fog"]
  valid[fog, 0] = True

  # γ-induced electrons: a sparse random walk with exponential gaps.
  gam = kinds == KIND_CODE["gamma"]
  if gam.any():
    idx = np.flatnonzero(gam)
    m = len(idx)
    ng = np.minimum(1 + rng.poisson(p.gamma_extra_grains, m), MAX_EVENT_GRAINS)
    d = _isotropic(rng, m)
    pts = np.zeros((m, MAX_EVENT_GRAINS, 3))
    here = np.zeros((m, 3))
    for j in range(1, MAX_EVENT_GRAINS):
      defl = np.tan(np.clip(math.radians(p.gamma_scatter_deg) * rng.standard_normal(m),
                            -1.4, 1.4))
      d = d + defl[:, None] * _perpendicular(d, rng)
      d /= np.linalg.norm(d, axis=1, keepdims=True)
      here = here + rng.exponential(p.gamma_gap_nm, m)[:, None] * d
      pts[:, j] = here
    pos3[idx] = pts
    valid[idx, :MAX_EVENT_GRAINS] = slot < ng[:, None]
    ends = pts[np.arange(m), ng - 1, :2]
    direction[idx] = np.where(ng > 1, np.arctan2(ends[:, 1], ends[:, 0]), np.nan)
    num_grains[idx] = ng

  # Silver nanoparticles: bright, near-spherical; some touching dimers.
  nano = kinds == KIND_CODE["nanoparticle"]
  if nano.any():
    idx = np.flatnonzero(nano)
    m = len(idx)
    boost = rng.uniform(p.nanoparticle_brightness_min, p.nanoparticle_brightness_max, m)
    photons[idx, :2] *= boost[:, None]
    sigma[idx, :2] = math.hypot(p.psf_sigma_nm, p.nanoparticle_sigma_nm)
    anisotropy[idx, :2] = rng.uniform(0, p.nanoparticle_anisotropy_max, (m, 2))
    dimer = rng.uniform(size=m) < p.nanoparticle_dimer_prob
    axis = rng.uniform(0, math.pi, m)
    sep = 2.5 * p.nanoparticle_sigma_nm * rng.uniform(0.9, 1.1, m)  # Touching spheres.
    pos3[idx, 1, 0] = sep * np.cos(axis)
    pos3[idx, 1, 1] = sep * np.sin(axis)
    valid[idx, 0] = True
    valid[idx, 1] = dimer
    orientation[idx, :2] = np.where(dimer[:, None], axis[:, None], orientation[idx, :2])
    anisotropy[idx, :2] = np.where(dimer[:, None], p.nanoparticle_dimer_anisotropy,
                                   anisotropy[idx, :2])
    direction[idx] = np.where(dimer, axis, np.nan)
    num_grains[idx] = 1 + dimer

  # Centre on the event's brightness-weighted barycentre (polarisation average = photons:
  # the 8 angles cancel cos 2(ψ − φ) exactly), to within ±½ pixel.
  pos = np.zeros((n, g, 2))
  pos[:, :MAX_EVENT_GRAINS] = pos3[:, :, :2]
  w = np.where(valid[:, :MAX_EVENT_GRAINS], photons[:, :MAX_EVENT_GRAINS], 0.0)
  centre = np.sum(w[:, :, None] * pos[:, :MAX_EVENT_GRAINS], 1) / np.sum(w, 1)[:, None]
  centre += rng.uniform(-0.5, 0.5, (n, 2)) * PIXEL_NM
  pos[:, :MAX_EVENT_GRAINS] -= centre[:, None, :]
  # Unrelated fog grains anywhere in the crop.
  half = CROP * PIXEL_NM / 2
  mean_neighbours = p.fog_density_per_um3 * (2 * half * 1e-3) ** 2 * p.depth_of_field_um
  nn_ = np.minimum(rng.poisson(mean_neighbours, n), MAX_NEIGHBOURS)
  nslot = np.arange(MAX_NEIGHBOURS)
  valid[:, MAX_EVENT_GRAINS:] = nslot < nn_[:, None]
  pos[:, MAX_EVENT_GRAINS:] = rng.uniform(-half, half, (n, MAX_NEIGHBOURS, 2))
  in_event = np.zeros((n, g), bool)
  in_event[:, :MAX_EVENT_GRAINS] = valid[:, :MAX_EVENT_GRAINS]
  # Projected start-to-end length: the ion's segment; first to last grain otherwise.
  ev = pos[:, :MAX_EVENT_GRAINS]
  ends = ev[np.arange(n), num_grains - 1] - ev[:, 0]
  length_proj = np.linalg.norm(ends, axis=1)
  if ion.any():
    length_proj[ion] = ion_length
  return Scenes(position_nm=pos, valid=valid, in_event=in_event, photons=photons,
                anisotropy=anisotropy, orientation=np.mod(orientation, math.pi),
                sigma_nm=sigma, kind=kinds, energy_kev=energy, direction_rad=direction,
                length_nm=length_proj, num_grains=num_grains)


def rotate_scenes(scenes: Scenes, angle_deg: float, *, mirror: bool = False) -> Scenes:
  """The same events rotated by ``angle_deg`` about the crop centre (after mirroring x → −x
  when ``mirror``): positions, grain orientations and track directions move together."""
  a = math.radians(angle_deg)
  pos = scenes.position_nm.copy()
  phi = scenes.orientation.copy()
  direction = scenes.direction_rad.copy()
  if mirror:
    pos[..., 0] *= -1
    phi = math.pi - phi
    direction = math.pi - direction
  c, s = math.cos(a), math.sin(a)
  rotated = np.stack([c * pos[..., 0] - s * pos[..., 1], s * pos[..., 0] + c * pos[..., 1]],
                     axis=-1)
  return dataclasses.replace(scenes, position_nm=rotated,
                             orientation=np.mod(phi + a, math.pi),
                             direction_rad=np.angle(np.exp(1j * (direction + a))))


def grain_brightness(scenes: Scenes) -> np.ndarray:
  """Photo-electrons per grain and polarisation, float64 [N, G, 8] (0 for unused slots)."""
  psi = np.radians(POLARISATION_ANGLES_DEG)
  b = scenes.photons[..., None] * (
      1 + scenes.anisotropy[..., None] * np.cos(2 * (psi - scenes.orientation[..., None])))
  return np.where(scenes.valid[..., None], b, 0.0)


def _pixel_integrals(centre_nm: np.ndarray, sigma_nm: np.ndarray) -> np.ndarray:
  """[..., CROP]: fraction of a 1D Gaussian (centre, σ; any shape [...]) in each pixel."""
  edges = (np.arange(CROP + 1) - CROP / 2) * PIXEL_NM
  cdf = special.ndtr((edges - centre_nm[..., None]) / sigma_nm[..., None])
  return np.diff(cdf, axis=-1)


def expected_images(scenes: Scenes, params: SimParams | None = None, *,
                    jitter_nm: np.ndarray | None = None) -> np.ndarray:
  """Mean camera counts above the pedestal, float32 [N, 40, 40, 8] (no noise).

  Args:
    scenes: the events.
    params: gain (counts per photo-electron).
    jitter_nm: optional float [N, 8, 2] displacement of each polarisation image.
  """
  p = make_params(params)
  b = grain_brightness(scenes)  # [N, G, K]
  x = scenes.position_nm[:, :, None, 0]  # [N, G, 1]
  y = scenes.position_nm[:, :, None, 1]
  if jitter_nm is not None:
    x = x + jitter_nm[:, None, :, 0]
    y = y + jitter_nm[:, None, :, 1]
  else:
    x = np.broadcast_to(x, b.shape)
    y = np.broadcast_to(y, b.shape)
  sig = np.broadcast_to(scenes.sigma_nm[:, :, None], b.shape)
  px = _pixel_integrals(x, sig)  # [N, G, K, X]
  py = _pixel_integrals(y, sig)
  return (p.gain_counts_per_e * np.einsum("ngk,ngky,ngkx->nyxk", b, py, px,
                                          optimize=True)).astype(np.float32)


def render(scenes: Scenes, rng: np.random.Generator, params: SimParams | None = None
           ) -> np.ndarray:
  """Raw 8-bit camera crops uint8 [N, 40, 40, 8]: pedestal, jitter, shot and read noise."""
  p = make_params(params)
  n = len(scenes.kind)
  jitter = p.pol_jitter_nm * rng.standard_normal((n, NUM_POLARISATIONS, 2))
  mean_counts = expected_images(scenes, p, jitter_nm=jitter) + (
      p.pedestal_counts + p.pedestal_rms_counts * rng.standard_normal(n)).astype(
          np.float32)[:, None, None, None]
  # Shot noise: gain·Poisson(e) ≈ gain·e + gain·√e·N(0, 1) (every pixel holds the
  # pedestal's ≥ 50 photo-electrons), summed with the read noise in quadrature: one
  # Gaussian draw per pixel (a Poisson draw costs 3× more).
  variance = p.gain_counts_per_e * np.maximum(mean_counts, 0) + p.read_noise_counts ** 2
  counts = mean_counts + np.sqrt(variance) * rng.standard_normal(mean_counts.shape,
                                                                 dtype=np.float32)
  return np.clip(np.rint(counts), 0, 255, out=counts).astype(np.uint8)


def simulate(seed: int | Sequence[int] | np.random.SeedSequence, num: int,
             kinds: str | Sequence[str], *, beam_angle_deg: float = 0.0,
             params: SimParams | Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
  """One seeded, vectorised chunk of ``num`` events.

  Args:
    seed: anything ``np.random.default_rng`` takes.
    num: events.
    kinds: a kind name (:data:`KINDS`) or a sequence of names cycled over the events.
    beam_angle_deg: in-plane beam direction of the carbon-ion events (degrees from +x).
    params: :class:`SimParams` or a mapping of overrides.

  Returns:
    ``raw`` uint8 [num, 40, 40, 8] (camera counts with pedestal), ``kind`` int32 [num],
    ``energy_kev`` float32, ``direction_deg`` float32 (in-plane track direction; nan for
    one-grain events), ``length_nm`` float32 (projected), ``num_grains`` int32,
    ``beam_angle_deg`` float32 (nan for backgrounds).
  """
  p = make_params(params)
  rng = np.random.default_rng(seed)
  codes = kind_codes(kinds, num)
  scenes = sample_scenes(rng, codes, beam_angle_deg, p)
  raw = render(scenes, rng, p)
  ion = codes <= KIND_CODE["c100"]
  return {"raw": raw, "kind": codes, "energy_kev": scenes.energy_kev,
          "direction_deg": np.degrees(scenes.direction_rad).astype(np.float32),
          "length_nm": scenes.length_nm.astype(np.float32),
          "num_grains": scenes.num_grains.astype(np.int32),
          "beam_angle_deg": np.where(ion, beam_angle_deg, np.nan).astype(np.float32)}


def chunk_seed(seed: int, *key: int) -> np.random.SeedSequence:
  """The seed of one chunk: ``SeedSequence(seed, spawn_key=key)`` (key e.g. (stream, chunk))."""
  return np.random.SeedSequence(int(seed), spawn_key=tuple(int(k) for k in key))


def iter_chunks(seed: int, num: int, kinds: str | Sequence[str], *, chunk_size: int = 256,
                stream: int = 0, beam_angle_deg: float = 0.0,
                params: SimParams | Mapping[str, Any] | None = None
                ) -> Iterator[dict[str, np.ndarray]]:
  """Yields :func:`simulate` chunks of ``chunk_size`` events (the last one shorter).

  Chunk c is ``simulate(chunk_seed(seed, stream, c), ...)``: the stream never holds more
  than one chunk, and any chunk can be regenerated alone. With a sequence of kinds, the
  cycle restarts in every chunk (use a ``chunk_size`` that the number of kinds divides for
  an exact balance).
  """
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  for c in range(math.ceil(num / chunk_size)):
    yield simulate(chunk_seed(seed, stream, c), min(chunk_size, num - c * chunk_size), kinds,
                   beam_angle_deg=beam_angle_deg, params=params)
