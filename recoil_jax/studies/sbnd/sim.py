"""Toy SBND LArTPC simulator: three wire-plane images with cosmic/neutrino labels.

A seeded, vectorised (numpy) stand-in for the LArSoft + GENIE + CORSIKA samples
of the CosmicTagger paper (arXiv 2012.01301), with detector constants after
the SBND Wire-Cell configuration (``SBNSoftware/sbndcode``:
``sbndcode/WireCell/cfg/pgrapher/experiment/sbnd/params.jsonnet`` and
``simparams.jsonnet``).  Everything it produces is **simulated**.

Image layout (the CosmicTagger / larcv3 convention)
---------------------------------------------------
``images[n, plane, row, column]``; planes 0, 1 = induction U, V (wires at ±60°
from vertical, 1984 wires each), plane 2 = collection Y (vertical wires, 1664),
3 mm pitch, wires centred in 2048 columns and zero-padded (U, V: 32 empty
columns each side, Y: 192).  The native drift axis is 0.5 µs ticks downsampled
×4, i.e. 2 µs (3.1 mm of drift) per row, 1280 rows: the two 2 m drift volumes
are shown one above the other with the cathode in the middle.  Rows 0–639 show
the TPC at x < 0 and rows 640–1279 the TPC at x ≥ 0; in each half the readout
time (0–1280 µs after the beam spill) runs from the outer edge (the anode)
toward the central row, so in-time charge lands at row ≈ (x + 2 m)/3.125 mm and
electrons drift away from the central row (the cathode).  Charge arriving
outside 0–1280 µs is dropped.  A cosmic muon arriving t₀ after the spill is
shifted by t₀/2 µs rows toward the central row in both halves: a late one
loses its part within v·t₀ of the cathode (it arrives after the window) and
its two halves meet at the central row displaced; an early one (t₀ < 0) is
shifted away from the centre, leaving a gap of 2·|t₀|/2 µs rows at the
cathode, and loses its part near the anodes (it arrives before the window).

Rendering at (height, width): height must divide 1280 and width 2048; a pixel
is a block of (1280/height) × (2048/width) native pixels.  Image pixels are the
**mean** of the block's native pixels and labels the **maximum** of the native
labels (CosmicTagger's ×2 downsampling: average-pool images, max-pool labels,
so the neutrino label wins within a block too).  The native image is computed
sparsely and every random draw is made at native resolution, so a rendering
at (h, w) equals the block average of the native rendering of the same seed.

Units: image values are ADC counts (12-bit over 1.8 V, pedestal subtracted)
averaged over the 4 ticks of a native row.  The shaper is a Gaussian of
σ = 1.0 µs (a CR-RC⁴ semi-Gaussian of 2 µs peaking time has σ ≈ √4 · 0.5 µs)
with a peak gain of 14 mV/fC, i.e. 5.10 ADC per 1000 e⁻ at the peak and a
pulse area of 25.6 ADC·tick per 1000 e⁻ (``adc_tick_per_electron``; the
pulser's 41.6 ADC·tick per 1000 e⁻ of the SBND ``params.jsonnet`` would need a
1.6 µs σ and is not used).  A minimum-ionising track (≈19k e⁻ per 3 mm wire
after recombination) then peaks at ≈ 97 ADC per tick and at ≈ 60–75 ADC in a
native collection pixel (depending on where in the row it arrives).  Native
Gaussian noise of ≈1.6–1.8 ADC RMS (``noise_adc``) gives S/N ≈ 35–45.

Signal model (``SbndPhysics.signal``): "deconvolved" (default) is what the
CosmicTagger files hold: the field response divided out, so the induction
planes show the collection plane's unipolar pulse and the same charge, values
≥ ``threshold_adc`` (5 ADC) kept at the native grid (everything positive), and
the noise that survives deconvolution (``DECONVOLVED_NOISE_ADC``, 1.82 ADC on
every plane, tuned to the paper's ~11k active pixels per plane at 640×1024).
"raw" keeps bipolar induction (signed values, |value| ≥ 5 ADC kept) and the
filtered raw noise (``RAW_NOISE_ADC``).  Thresholding is applied before the
block average, so an active pixel at 640×1024 is a 2×2 block with at least one
native pixel over threshold.  At coarse renderings most active pixels are
noise of tiny value: at 64×128 a 20×16 block holds ~1 deconvolved noise
crossing on average, ≈5.5/320 ADC each (``data.min_pixel_value`` removes them).

What is modelled (event level in `lartpc_generators`, transport in
`lartpc_tracks`, constants in `lartpc_physics`)
-------------------------------------------------------------------------------
* Cosmic muons (≈5 per 1.7 ms readout, Poisson, cos²θ, through-going, random
  arrival times, δ-rays, Michel electrons of stopping muons); one neutrino
  interaction at the beam spill (vertex uniform in the 4 × 4 × 5 m³ active
  volume, BNB-like energy, ⟨E_ν⟩ = 0.8 GeV): νμ CC (μ + protons/pions), νe CC
  (EM shower as a branching e±/γ tree with X₀ = 14 cm), NC (hadrons, π⁰ → γγ
  with 18 cm mean conversion gaps); or cosmic-only events.
* 1 mm steps, CSDA ranges and Bethe/Bragg dE/dx, Landau (Moyal) fluctuations,
  multiple scattering.
* Charge: dQ = dE/23.6 eV · R_ModBox(dE/dx) · exp(−t_drift/τ), τ = 10 ms, with
  Poisson-like (Gaussian √Q) electron-count fluctuations.
* Drift at 1.563 mm/µs; transverse diffusion (D_T = 8.8 cm²/s) integrated
  exactly over the 3 mm wire cells (the deposit's cell and its two
  neighbours, which take the tails), longitudinal diffusion (D_L = 4 cm²/s)
  added in quadrature to the shaping time.
* Electronics: collection (and every plane when deconvolved) = unipolar
  Gaussian pulse (σ = 1.0 µs, see Units); raw induction = bipolar
  derivative-of-Gaussian pulse (positive lobe first, zero area, lobe peak
  ``induction_peak_ratio`` × the collection peak), both integrated exactly over
  4 native rows around the arrival (the outer two take the tails, so charge and
  the zero area are kept exactly).
* White Gaussian noise per native pixel, threshold value ≥ 5 ADC (raw: |value|).
* Labels from truth: a native pixel is neutrino (2) if at least
  ``truth_threshold_electrons`` (1000 e⁻, ≈5 % of a MIP's charge per wire) of
  neutrino-induced charge arrives in it
  (arrival time and transverse diffusion, before the electronics), else cosmic
  (1) with the same test on cosmic charge, else background (0).  Pixels lit by
  noise, by the induction lobes or by the shaping tails only are label 0, as
  in the real files.

Left out: real field responses (long-range induction on neighbouring wires),
the deconvolution itself (its output is modelled, not computed: no
ringing, no ROI finding, white instead of filtered noise), coherent and 1/f
noise, dead or noisy channels, the 3 mm plane spacing (all planes are time-aligned), wire-plane transparency, space charge,
light and optical triggers, pile-up of several neutrinos, the real flux
composition (see `lartpc_generators`), and the transport omissions listed in
`lartpc_tracks`.  Occupancies at 640×1024 (deconvolved, 32 simulated events,
``scripts/bench_lartpc_sim.py``): 11.1k / 11.2k / 9.0k active, 2.4k / 2.5k /
1.9k cosmic and 210 / 220 / 250 ν pixels on U / V / Y against the paper's ~11k,
~2.3k and ~250 per plane.

Implementation: per event, numpy only, one core.  Cosmic muons are first cut
to the parts whose charge can reach the readout window (`_readout_pieces`).
Each plane's native image is accumulated sparsely: the 12 taps per deposit are
summed (``np.add.at``) into a per-thread float64 2 × 646 × 2050 padded grid
that is allocated once and only read back and re-zeroed where touched (as are
the truth charges and the block sums of the rendering); noise is drawn for the
touched native pixels and, elsewhere, only where it crosses the threshold
(Binomial count, Gaussian-tail values; statistically the same as dense noise),
then the thresholded native pixels are averaged into the rendering, written
straight into the batch.  Noise cannot be drawn at the rendered resolution:
the threshold acts on native pixels before the block mean.  30–45 ms CPU per
event at 640×1024 on a shared 2-core machine (``scripts/bench_lartpc_sim.py
--stages``): about half in the native planes (~200k taps per plane), a
quarter in the transport.
`render_deposits_reference` is the slow loop-based reference of the same
model, tested to agree to float32 round-off.  Randomness: event i uses
generators seeded with (seed, i, stream) only, so it does not depend on
``num_events``, the resolution or the other events.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Sequence

import numpy as np
from scipy import special

from recoil_jax.studies.sbnd import sim_generators as gen
from recoil_jax.studies.sbnd import sim_physics as phys
from recoil_jax.studies.sbnd import sim_tracks as tr

INTERACTIONS = ("cosmic_only", "nue_cc", "numu_cc", "nc")

NATIVE_ROWS = 1280
NATIVE_COLUMNS = 2048
HALF_ROWS = NATIVE_ROWS // 2
TICK_US = 0.5
TICKS_PER_ROW = 4
ROW_US = TICK_US * TICKS_PER_ROW
WINDOW_US = HALF_ROWS * ROW_US  # readout time shown per drift half
WIRE_PITCH_MM = 3.0
DRIFT_LENGTH_MM = 2000.0
PLANE_NAMES = ("U", "V", "Y")
WIRES_PER_PLANE = (1984, 1984, 1664)
_SIN60 = math.sin(math.radians(60.0))
# Wire coordinate = PLANE_AXES[p] · (y, z), mm: U, V measure ∓sin60·y + cos60·z.
PLANE_AXES = np.array([[-_SIN60, 0.5], [_SIN60, 0.5], [0.0, 1.0]])

# Native taps per deposit: wire cells c−1, c, c+1 around the deposit's cell c
# and 4 time bins, k−2 … k+1 when the deposit is in the early half of its bin
# k and k−1 … k+2 otherwise (≥ 1.5 rows, ≥ 2.5σ of the pulse, on each side).
# The Gaussian tails beyond the outer taps are folded into them, so charge is
# conserved exactly (and the bipolar pulse keeps zero area).
_WIRE_TAPS = np.arange(-1, 2)
_ROW_TAPS = 4


SIGNALS = ("deconvolved", "raw")
# Native noise RMS per plane (U, V, Y), ADC. Raw: after noise filtering and the ×4 tick
# average. Deconvolved: what survives the deconvolution, larger on the induction planes
# (dividing out their bipolar response amplifies low-frequency noise); tuned so that the
# occupancy at 640×1024 is the paper's ~11k active pixels per plane (scripts/
# bench_lartpc_sim.py).
RAW_NOISE_ADC = (1.65, 1.65, 1.6)
DECONVOLVED_NOISE_ADC = (1.82, 1.82, 1.82)


@dataclasses.dataclass(frozen=True)
class SbndPhysics:
  """Detector and simulation parameters.

  Drift velocity, diffusion and electron lifetime follow the SBND Wire-Cell simulation
  configuration (``SBNSoftware/sbndcode:sbndcode/WireCell/cfg/pgrapher/experiment/sbnd/
  simparams.jsonnet``); ModBox α, β are the ArgoNeuT values (arXiv 1306.1712).

  Attributes:
    mean_cosmics: mean cosmic muons crossing the active volume per
      ``readout_us`` (≈5 per 1.7 ms SBND readout).
    readout_us: readout length ``mean_cosmics`` refers to, µs.
    drift_velocity_mm_per_us: electron drift velocity at 500 V/cm, 88.4 K.
    electron_lifetime_us: attenuation time constant, µs.
    diffusion_long_cm2_per_s, diffusion_trans_cm2_per_s: D_L, D_T.
    field_kv_per_cm: drift field (ModBox recombination).
    modbox_alpha, modbox_beta: ModBox parameters.
    shaping_sigma_us: σ of the Gaussian collection pulse, µs.
    induction_peak_ratio: induction lobe peak / collection peak ("raw" signal only).
    adc_tick_per_electron: collection pulse area per electron, ADC·tick.
    signal: "deconvolved" (the CosmicTagger files: the field response divided out, so
      every plane sees the collection pulse of the same charge; values ≥ threshold kept)
      or "raw" (bipolar induction; |values| ≥ threshold kept).
    noise_adc: (U, V, Y) Gaussian noise RMS per native pixel, ADC; None: the signal's
      default (``DECONVOLVED_NOISE_ADC`` or ``RAW_NOISE_ADC``).
    threshold_adc: native pixels below it (raw: |value| below it) are zeroed, ADC.
    truth_threshold_electrons: charge a native pixel needs for a label, e⁻.
    step_mm: transport step, mm.
    fluctuations: Landau energy-loss and electron-count fluctuations.
    multiple_scattering: multiple Coulomb scattering of tracks.
    delta_rays: δ-rays off μ, π, p above ``delta_ray_min_mev``.
    delta_ray_min_mev: smallest simulated δ-ray kinetic energy, MeV.
    showers: photon conversions and bremsstrahlung (False: photons are dropped
      and electrons only range out).
    diffusion: drift diffusion (False: none).
  """

  mean_cosmics: float = 5.0
  readout_us: float = 1700.0
  drift_velocity_mm_per_us: float = 1.563
  electron_lifetime_us: float = 10_000.0
  diffusion_long_cm2_per_s: float = 4.0
  diffusion_trans_cm2_per_s: float = 8.8
  field_kv_per_cm: float = 0.5
  modbox_alpha: float = 0.93
  modbox_beta: float = 0.212
  shaping_sigma_us: float = 1.0
  induction_peak_ratio: float = 0.4
  adc_tick_per_electron: float = 0.0256
  signal: str = "deconvolved"
  noise_adc: tuple[float, float, float] | None = None
  threshold_adc: float = 5.0
  truth_threshold_electrons: float = 1000.0
  step_mm: float = 1.0
  fluctuations: bool = True
  multiple_scattering: bool = True
  delta_rays: bool = True
  delta_ray_min_mev: float = 3.0
  showers: bool = True
  diffusion: bool = True

  def __post_init__(self):
    positive = ("readout_us", "drift_velocity_mm_per_us", "electron_lifetime_us",
                "field_kv_per_cm", "modbox_beta", "shaping_sigma_us",
                "adc_tick_per_electron", "step_mm", "delta_ray_min_mev")
    for name in positive:
      if not getattr(self, name) > 0:
        raise ValueError(f"SbndPhysics.{name} must be > 0, got "
                         f"{getattr(self, name)!r}.")
    non_negative = ("mean_cosmics", "diffusion_long_cm2_per_s",
                    "diffusion_trans_cm2_per_s", "induction_peak_ratio",
                    "threshold_adc", "truth_threshold_electrons", "modbox_alpha")
    for name in non_negative:
      if not getattr(self, name) >= 0:
        raise ValueError(f"SbndPhysics.{name} must be >= 0, got "
                         f"{getattr(self, name)!r}.")
    if self.signal not in SIGNALS:
      raise ValueError(f"SbndPhysics.signal must be one of {SIGNALS}, got {self.signal!r}.")
    if self.noise_adc is None:
      object.__setattr__(self, "noise_adc", DECONVOLVED_NOISE_ADC
                         if self.signal == "deconvolved" else RAW_NOISE_ADC)
    noise = tuple(self.noise_adc)
    if len(noise) != 3 or not all(v >= 0 for v in noise):
      raise ValueError("SbndPhysics.noise_adc must be three values >= 0 "
                       f"(U, V, Y), got {self.noise_adc!r}.")
    object.__setattr__(self, "noise_adc", tuple(float(v) for v in noise))

  def transport_options(self) -> tr.TransportOptions:
    return tr.TransportOptions(
        step_mm=self.step_mm, fluctuations=self.fluctuations,
        multiple_scattering=self.multiple_scattering,
        delta_rays=self.delta_rays, delta_ray_min_mev=self.delta_ray_min_mev,
        showers=self.showers)


# Neutrino PDG code and current type (0 CC, 1 NC; LArSoft's simb::curr_type_t) per
# interaction of INTERACTIONS; the toy's NC events are νμ NC (the BNB is ~94 % νμ).
INTERACTION_PDG = {"cosmic_only": 0, "nue_cc": 12, "numu_cc": 14, "nc": 14}
INTERACTION_CURRENT = {"cosmic_only": -1, "nue_cc": 0, "numu_cc": 0, "nc": 1}


@dataclasses.dataclass(frozen=True)
class SbndEvents:
  """Simulated (or read) SBND wire-plane events.

  The truth fields after ``neutrino_energy_gev`` are optional (None: unknown, filled with
  the "unknown" values below).

  Attributes:
    images: float32 [N, 3, H, W], pedestal-subtracted ADC-like values, zero
      below threshold (planes U, V, Y; rows = drift time; columns = wires).
    labels: uint8 [N, 3, H, W], 0 background, 1 cosmic, 2 neutrino.
    interaction: int32 [N], index into INTERACTIONS (−1 unknown).
    neutrino_energy_gev: float32 [N], 0.0 for cosmic_only (nan unknown).
    neutrino_pdg: int32 [N], PDG code of the neutrino (0: none or unknown).
    current_type: int32 [N], 0 CC, 1 NC, −1 no neutrino or unknown.
    interaction_mode: int32 [N], generator interaction code (CosmicTagger files: the
      ``interaction_type`` of the neutrino particle, LArSoft ``MCNeutrino::
      InteractionType()``, e.g. 1001 CCQE); −1 unknown (the simulator does not set it).
    vertex_cm: float32 [N, 3], neutrino vertex (x drift, y up, z beam), cm; nan none.
    vertex_pixel: float32 [N, 3, 2], per plane the vertex (row, column) in pixels of
      this rendering, continuous (pixel i covers [i, i + 1)); nan none.
    entry: int64 [N], row of the event in its file (simulation: index in the call).
    event_id: int64 [N, 3], (run, subrun, event); simulation (0, 0, entry).
  """

  images: np.ndarray
  labels: np.ndarray
  interaction: np.ndarray
  neutrino_energy_gev: np.ndarray
  neutrino_pdg: np.ndarray | None = None
  current_type: np.ndarray | None = None
  interaction_mode: np.ndarray | None = None
  vertex_cm: np.ndarray | None = None
  vertex_pixel: np.ndarray | None = None
  entry: np.ndarray | None = None
  event_id: np.ndarray | None = None

  def __post_init__(self):
    if self.images.ndim != 4 or self.images.shape[1] != 3:
      raise ValueError(f"SbndEvents.images: expected [N, 3, H, W], got "
                       f"{self.images.shape}.")
    n = self.images.shape[0]
    if self.labels.shape != self.images.shape:
      raise ValueError(f"SbndEvents.labels: expected {self.images.shape}, got "
                       f"{self.labels.shape}.")
    defaults = {
        "neutrino_pdg": (np.int32, (n,), 0), "current_type": (np.int32, (n,), -1),
        "interaction_mode": (np.int32, (n,), -1), "vertex_cm": (np.float32, (n, 3), np.nan),
        "vertex_pixel": (np.float32, (n, 3, 2), np.nan), "entry": (np.int64, (n,), None),
        "event_id": (np.int64, (n, 3), None)}
    for name, (dtype, shape, fill) in defaults.items():
      value = getattr(self, name)
      if value is None:
        if name == "entry":
          value = np.arange(n, dtype=np.int64)
        elif name == "event_id":
          value = np.zeros((n, 3), np.int64)
          value[:, 2] = np.arange(n)
        else:
          value = np.full(shape, fill, dtype)
      object.__setattr__(self, name, np.asarray(value, dtype))
    for name in ("interaction", "neutrino_energy_gev", *defaults):
      shape = defaults[name][1] if name in defaults else (n,)
      if np.shape(getattr(self, name)) != shape:
        raise ValueError(f"SbndEvents.{name}: expected {shape}, got "
                         f"{np.shape(getattr(self, name))}.")

  def __len__(self) -> int:
    return int(self.images.shape[0])

  def truth_fields(self) -> dict[str, np.ndarray]:
    """The per-event truth and bookkeeping arrays (every field except images, labels)."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if f.name not in ("images", "labels")}

  @staticmethod
  def concat(parts: Sequence["SbndEvents"]) -> "SbndEvents":
    """The events of ``parts`` one after the other (at least one part)."""
    names = [f.name for f in dataclasses.fields(SbndEvents)]
    return SbndEvents(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in names})


def _check_resolution(height: int, width: int) -> tuple[int, int]:
  """Block size (rows, columns) of a rendering; ValueError naming the argument."""
  for name, value, native in (("height", height, NATIVE_ROWS),
                              ("width", width, NATIVE_COLUMNS)):
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or
        value < 1 or native % value):
      raise ValueError(f"{name}={value!r} must be a positive integer dividing "
                       f"the native {native} (a pixel is an integer block of "
                       "native pixels).")
  if height % 2:
    raise ValueError(f"height={height} must be even: the two drift halves "
                     "must not share a pixel row.")
  return NATIVE_ROWS // height, NATIVE_COLUMNS // width


def _plane_columns(position_mm: np.ndarray, plane: int) -> np.ndarray:
  """Continuous native column coordinate of points [n, 3] on a plane.

  Native column j covers [j, j + 1); wire centres are at j + 0.5.
  """
  coord = position_mm[:, 1:] @ PLANE_AXES[plane]
  box = tr.ACTIVE_VOLUME_MM
  corners = np.array([[box[i][1], box[j][2]] for i in (0, 1) for j in (0, 1)])
  proj = corners @ PLANE_AXES[plane]
  centre = 0.5 * (proj.min() + proj.max())
  n = WIRES_PER_PLANE[plane]
  first_edge = centre - 0.5 * n * WIRE_PITCH_MM
  return (coord - first_edge) / WIRE_PITCH_MM + (NATIVE_COLUMNS - n) // 2


@dataclasses.dataclass(frozen=True)
class _Drifted:
  """Per-deposit quantities shared by the three planes (n kept deposits)."""

  position_mm: np.ndarray  # [n, 3]
  charge_e: np.ndarray  # [n] electrons arriving at the planes
  row_coord: np.ndarray  # [n] arrival time in native rows of its half (0–640)
  bottom: np.ndarray  # [n] int 0/1, x ≥ 0 (rows 640–1279)
  drift_mm: np.ndarray  # [n] drift distance
  sigma_rows: np.ndarray  # [n] σ of the pulse in rows (shaping ⊕ D_L)
  sigma_wires: np.ndarray  # [n] σ of transverse diffusion in wire pitches
  origin: np.ndarray  # [n]
  # Per pulse shape, shared by the planes that use it (computed once per event):
  # (flat padded-grid offset of each time tap's row + 1 for the column pad
  # [n, 4] int64, charge × pulse integral [n, 4] ADC), see `_row_taps`.
  induction_taps: tuple | None  # bipolar induction pulse ("raw" signal only)
  collection_taps: tuple  # unipolar collection pulse
  centre_row: np.ndarray  # [n] int64 grid offset of the arrival bin's row (+ 1)


def _diffusion_sigmas(drift_mm: np.ndarray, physics: SbndPhysics):
  """(σ of the pulse in native rows, σ_T in wire pitches) after a drift."""
  t_drift = drift_mm / physics.drift_velocity_mm_per_us
  if physics.diffusion:
    # D [cm²/s] · 1e2 mm²/cm² · 1e−6 s/µs = D · 1e−4 mm²/µs.
    var_l = 2e-4 * physics.diffusion_long_cm2_per_s * t_drift
    var_t = 2e-4 * physics.diffusion_trans_cm2_per_s * t_drift
  else:
    var_l = var_t = np.zeros_like(t_drift)
  sigma_l_us = np.sqrt(var_l) / physics.drift_velocity_mm_per_us
  sigma_rows = np.sqrt(physics.shaping_sigma_us**2 + sigma_l_us**2) / ROW_US
  return sigma_rows, np.sqrt(var_t) / WIRE_PITCH_MM


def drift(deposits: tr.Deposits, physics: SbndPhysics,
          rng: np.random.Generator) -> _Drifted:
  """Energy deposits → drifted charge (recombination, lifetime, diffusion).

  Deposits outside the active volume, or whose pulse cannot reach the readout
  window (arrival row outside [−1, 641)), are dropped.
  """
  box = tr.ACTIVE_VOLUME_MM
  pos = deposits.position_mm
  inside = np.all((pos >= box[0]) & (pos <= box[1]), axis=1)
  drift_mm = np.maximum(DRIFT_LENGTH_MM - np.abs(pos[:, 0]), 0.0)
  row = (deposits.time_us + drift_mm / physics.drift_velocity_mm_per_us) / ROW_US
  keep = inside & (row >= -1.0) & (row < HALF_ROWS + 1.0) & (deposits.energy_mev > 0)
  pos, de, ds, drift_mm, row, origin = (
      a[keep] for a in (pos, deposits.energy_mev, deposits.step_mm, drift_mm,
                        row, deposits.origin))
  dedx_cm = 10.0 * de / np.maximum(ds, 1e-6)
  recomb = phys.modbox_recombination(dedx_cm, physics.field_kv_per_cm,
                                     physics.modbox_alpha, physics.modbox_beta)
  q = (de / phys.LAR_W_ION_MEV * recomb *
       np.exp(-drift_mm / physics.drift_velocity_mm_per_us /
              physics.electron_lifetime_us))
  if physics.fluctuations:
    q = np.maximum(q + np.sqrt(q) * rng.standard_normal(q.size), 0.0)
  sigma_rows, sigma_wires = _diffusion_sigmas(drift_mm, physics)
  return _Drifted(position_mm=pos, charge_e=q, row_coord=row,
                  bottom=(pos[:, 0] >= 0.0).astype(np.int64), drift_mm=drift_mm,
                  sigma_rows=sigma_rows, sigma_wires=sigma_wires, origin=origin,
                  induction_taps=(None if physics.signal == "deconvolved" else
                                  _row_taps(pos, row, sigma_rows, q, False, physics)),
                  collection_taps=_row_taps(pos, row, sigma_rows, q, True, physics),
                  centre_row=(_grid_half(pos) + np.floor(row).astype(np.int64)) *
                  _GRID_COLS + 1)


def _grid_half(pos: np.ndarray) -> np.ndarray:
  """[n] int64 first padded-grid time bin of the deposit's drift half, minus the pad."""
  return (pos[:, 0] >= 0.0).astype(np.int64) * _GRID_BINS + _PAD_BINS


def _row_taps(pos, row, sigma_rows, charge, collection, physics):
  """(grid row offsets [n, 4] int64, charge × pulse integral [n, 4] ADC) of the
  4 time taps (`row_weights`); the column (+ 1 for the pad) is added per plane."""
  bins, w = row_weights(row, sigma_rows, collection, physics)
  return ((_grid_half(pos)[:, None] + bins) * _GRID_COLS + 1,
          charge[:, None] * w)


def wire_weights(col: np.ndarray, sigma: np.ndarray):
  """Transverse-diffusion sharing among the wire cells c−1, c, c+1.

  Cell c = floor(col) covers [c, c + 1); the Gaussian N(col, σ) is integrated
  over it, and its tails left of c and right of c + 1 go to cells c − 1 and
  c + 1.

  Args:
    col: [n] continuous native column coordinate.
    sigma: [n] σ_T in wire pitches (0: no diffusion).

  Returns:
    (columns [n, 3] int64, weights [n, 3] summing to 1).
  """
  base = np.floor(col)
  s = np.maximum(sigma, 1e-9)
  lo = special.ndtr((base - col) / s)
  hi = special.ndtr((base + 1.0 - col) / s)
  w = np.stack([lo, hi - lo, 1.0 - hi], axis=1)
  return base.astype(np.int64)[:, None] + _WIRE_TAPS, w


def row_weights(row: np.ndarray, sigma: np.ndarray, collection: bool,
                physics: SbndPhysics):
  """Pulse integrals over 4 native time bins around each deposit.

  Collection: (G/4)·∫_bin N(t; t₀, σ); induction: (A·G·√e / (4√(2π)))·
  [exp(−u²/2σ²)] between the bin edges (the integral of the bipolar pulse
  −(u/σ)·exp(½ − u²/2σ²) times the collection peak G/(√(2π)σ)); u = t − t₀,
  times in rows, G = adc_tick_per_electron, A = induction_peak_ratio, /4 the
  mean over the row's 4 ticks.  The outer bins take the pulse's tails.

  Args:
    row: [n] arrival time in native rows (bin k covers [k, k + 1)).
    sigma: [n] pulse σ in rows.
    collection: collection (unipolar) or induction (bipolar) pulse.
    physics: detector parameters.

  Returns:
    (time bins [n, 4] int64: k−2 … k+1 if row − k < ½ else k−1 … k+2, ADC per
    electron of each bin [n, 4]).
  """
  base = np.floor(row)
  first = np.where(row - base < 0.5, base - 2.0, base - 1.0)
  inner = first[:, None] + np.arange(1, _ROW_TAPS)  # the 3 inner edges
  u = (inner - row[:, None]) / sigma[:, None]
  g = physics.adc_tick_per_electron / TICKS_PER_ROW
  if collection:
    c = special.ndtr(u)
    w = g * np.concatenate([c[:, :1], np.diff(c, axis=1), 1.0 - c[:, -1:]], axis=1)
  else:
    amp = (physics.induction_peak_ratio * g * math.sqrt(math.e) /
           math.sqrt(2 * math.pi))
    e = np.exp(-0.5 * u * u)
    w = amp * np.concatenate([e[:, :1], np.diff(e, axis=1), -e[:, -1:]], axis=1)
  return first.astype(np.int64)[:, None] + np.arange(_ROW_TAPS), w


# Padded accumulation grid per plane: time bins −3…642 per half, columns
# −1…2048, so every tap of a kept deposit lands inside without bounds checks.
_PAD_BINS = 3
_GRID_BINS = HALF_ROWS + 2 * _PAD_BINS
_GRID_COLS = NATIVE_COLUMNS + 2


def _grid_to_native(grid_index: np.ndarray, plane: int):
  """Flat padded-grid indices → (flat native indices, valid mask)."""
  # `//` by a scalar is ~10× faster than np.divmod (libdivide); the remainders
  # follow by subtraction.
  half_bin = grid_index // _GRID_COLS
  col = grid_index - half_bin * _GRID_COLS - 1
  half = half_bin >= _GRID_BINS
  b = half_bin - half * _GRID_BINS - _PAD_BINS
  n = WIRES_PER_PLANE[plane]
  pad = (NATIVE_COLUMNS - n) // 2
  valid = (b >= 0) & (b < HALF_ROWS) & (col >= pad) & (col < pad + n)
  row = np.where(half, NATIVE_ROWS - 1 - b, b)
  return row * NATIVE_COLUMNS + col, valid


_THREAD = threading.local()


def _scratch(name: str, size: int, dtype) -> np.ndarray:
  """A per-thread all-zero (all-False) array, reused across calls so that the
  2.6M-entry grid and the rendering are not allocated and zeroed per plane:
  callers must reset what they set."""
  buf = getattr(_THREAD, name, None)
  if buf is None or buf.size != size:
    buf = np.zeros(size, dtype)
    setattr(_THREAD, name, buf)
  return buf


def _reset_scratch() -> None:
  """Zeroes this thread's scratch arrays (after an error left some set)."""
  for buf in vars(_THREAD).values():
    buf.fill(0)


def _grid_mask() -> np.ndarray:
  """Per-thread all-False bool [2·646·2050] over the padded grid (see `_scratch`)."""
  return _scratch("mask", 2 * _GRID_BINS * _GRID_COLS, bool)


def _grid_sum() -> np.ndarray:
  """Per-thread all-zero float64 [2·646·2050] over the padded grid (see `_scratch`)."""
  return _scratch("grid_sum", 2 * _GRID_BINS * _GRID_COLS, np.float64)


def _native_to_grid(native_index: np.ndarray) -> np.ndarray:
  """Flat native indices → flat padded-grid indices (inverse of _grid_to_native)."""
  row = native_index // NATIVE_COLUMNS
  col = native_index - row * NATIVE_COLUMNS
  half = row >= HALF_ROWS
  b = np.where(half, NATIVE_ROWS - 1 - row, row)
  return (half * _GRID_BINS + b + _PAD_BINS) * _GRID_COLS + col + 1


def _noise_tail(rng: np.random.Generator, sigma: float, threshold: float,
                plane: int, one_sided: bool = False):
  """Native pixels of a plane where pure noise crosses the threshold.

  Each of the plane's wire pixels exceeds |v| ≥ threshold with probability
  p = 2Φ(−thr/σ) (``one_sided``: v ≥ threshold, p = Φ(−thr/σ)): the count is
  Binomial, positions uniform (duplicates merged), magnitudes from the Gaussian
  tail by inverse CDF, signs ± (one-sided: +).  The caller drops
  positions inside the signal support (those pixels get their own noise).

  Returns:
    (flat native indices, values).
  """
  n = WIRES_PER_PLANE[plane]
  pad = (NATIVE_COLUMNS - n) // 2
  q = special.ndtr(-threshold / sigma)
  count = rng.binomial(n * NATIVE_ROWS, q if one_sided else 2.0 * q)
  rows = rng.integers(0, NATIVE_ROWS, count)
  cols = pad + rng.integers(0, n, count)
  u = rng.uniform(size=count)
  sign = 1.0 if one_sided else np.where(rng.uniform(size=count) < 0.5, -1.0, 1.0)
  values = sign * sigma * -special.ndtri(np.maximum(u * q, 1e-300))
  index, first = np.unique(rows * NATIVE_COLUMNS + cols, return_index=True)
  return index, values[first]


def _native_plane(drifted: _Drifted, plane: int, physics: SbndPhysics,
                  rng: np.random.Generator):
  """Sparse native image and labels of one plane.

  Returns:
    (image index, image values, cosmic label index, neutrino label index):
    flat native indices (row·2048 + col) of the nonzero pixels after noise and
    threshold, and of the pixels labelled cosmic and neutrino.
  """
  cols, wire_w = wire_weights(_plane_columns(drifted.position_mm, plane),
                              drifted.sigma_wires)
  deconvolved = physics.signal == "deconvolved"
  tap_rows, tap_charge = (drifted.collection_taps if plane == 2 or deconvolved else
                          drifted.induction_taps)
  # Grid indices of the deposit's (arrival bin, wire cell) and of its taps.
  centre = drifted.centre_row + cols[:, 1]
  index = (tap_rows[:, :, None] + cols[:, None, :]).ravel()
  value = (tap_charge[:, :, None] * wire_w[:, None, :]).ravel()
  # Sum the taps per grid pixel in a reused zeroed buffer (np.add.at sums in
  # input order, as np.bincount does, so the result is the same to the bit),
  # read the touched pixels back in sorted order and zero them again.
  grid_sum = _grid_sum()
  np.add.at(grid_sum, index, value)
  mask = _grid_mask()
  mask[index] = True
  grid_index = np.flatnonzero(mask)
  signal = grid_sum[grid_index]
  grid_sum[grid_index] = 0.0
  support, valid = _grid_to_native(grid_index, plane)
  support, signal = support[valid], signal[valid]

  sigma = physics.noise_adc[plane]
  if sigma > 0:
    signal = signal + sigma * rng.standard_normal(signal.size)
    tail_index, tail_value = _noise_tail(rng, sigma, physics.threshold_adc, plane,
                                         one_sided=deconvolved)
    fresh = ~mask[_native_to_grid(tail_index)]
    tail_index, tail_value = tail_index[fresh], tail_value[fresh]
  else:
    tail_index, tail_value = np.zeros(0, np.int64), np.zeros(0)
  mask[grid_index] = False
  keep = (signal if deconvolved else np.abs(signal)) >= physics.threshold_adc
  image_index = np.concatenate([support[keep], tail_index])
  image_value = np.concatenate([signal[keep], tail_value])

  # Truth: the arrival bin (no shaping) × transverse diffusion, summed per
  # pixel and origin (charges are ≥ 0, so a pixel with one entry over the
  # threshold is labelled whatever else arrives there).
  thr = max(physics.truth_threshold_electrons, 1e-9)
  t_index = (centre[:, None] + _WIRE_TAPS).ravel()
  t_charge = (drifted.charge_e[:, None] * wire_w).ravel()
  t_origin = np.repeat(drifted.origin, _WIRE_TAPS.size)
  labelled = []
  for origin in (tr.ORIGIN_COSMIC, tr.ORIGIN_NEUTRINO):
    mine = t_origin == origin
    idx = t_index[mine]
    np.add.at(grid_sum, idx, t_charge[mine])
    hit = np.sort(idx[grid_sum[idx] >= thr])
    grid_sum[idx] = 0.0
    # ~3 entries per pixel (1 mm steps, 3 mm cells): drop repeats before the
    # index conversions (a sort + compare; np.unique is slower here).
    hit = hit[np.concatenate([[True], hit[1:] != hit[:-1]])] if hit.size else hit
    hit, ok = _grid_to_native(hit, plane)
    labelled.append(hit[ok])
  return image_index, image_value, labelled[0], labelled[1]


def render_deposits(deposits: tr.Deposits, rng: np.random.Generator, *,
                    height: int = 640, width: int = 1024,
                    physics: SbndPhysics = SbndPhysics(), out=None):
  """Images and labels of one event's energy deposits.

  Args:
    deposits: the event's energy deposits (cosmic and neutrino).
    rng: random generator (electron-count fluctuations and noise).
    height, width: rendering; must divide 1280 and 2048 (height even).
    physics: detector parameters.
    out: optional (images float32 [3, H, W], labels uint8 [3, H, W]) to fill
      instead of new arrays (e.g. one event of a batch); must be all zero.

  Returns:
    (images float32 [3, H, W], labels uint8 [3, H, W]) (``out`` if given).
  """
  block_r, block_c = _check_resolution(height, width)
  if out is None:
    out = (np.zeros((3, height, width), np.float32),
           np.zeros((3, height, width), np.uint8))
  images, labels = out
  if (images.shape != (3, height, width) or labels.shape != images.shape or
      images.dtype != np.float32 or labels.dtype != np.uint8 or
      not (images.flags.c_contiguous and labels.flags.c_contiguous)):
    raise ValueError(f"render_deposits: out must be C-contiguous float32 and uint8 "
                     f"arrays of shape {(3, height, width)}.")
  drifted = drift(deposits, physics, rng)
  block = block_r * block_c
  # Block sums in float64 (a reused zeroed buffer, reset after each plane), then
  # the mean cast to float32, as a dense bincount / block would give.
  pooled = None if block == 1 else _scratch("pooled", height * width, np.float64)
  try:
    for plane in range(3):
      img_i, img_v, cosmic, neutrino = _native_plane(drifted, plane, physics, rng)
      image = images[plane].reshape(-1)  # views: out is C-contiguous
      label = labels[plane].reshape(-1)
      pix = _to_rendered(img_i, block_r, block_c, width)
      if pooled is None:
        image[pix] = img_v  # native pixels are unique
      else:
        np.add.at(pooled, pix, img_v)
        image[pix] = pooled[pix] / block
        pooled[pix] = 0.0
      # Max-pool: cosmic written first, then neutrino (2) overwrites.
      label[_to_rendered(cosmic, block_r, block_c, width)] = 1
      label[_to_rendered(neutrino, block_r, block_c, width)] = 2
  except BaseException:
    _reset_scratch()  # an interrupted plane must not leak into the next event
    raise
  return images, labels


def render_deposits_reference(deposits: tr.Deposits, *, height: int, width: int,
                              physics: SbndPhysics = SbndPhysics()):
  """Slow, obvious reference of `render_deposits` without noise.

  Loops over deposits, evaluates the pulse and diffusion integrals with
  scalar ``math.erf`` / ``math.exp`` over each deposit's 3 wire cells × 4 time
  bins (tails folded into the outer ones, as in the fast path), fills dense
  native images and truth charges, thresholds, then block-averages images and
  max-pools labels with numpy reshapes.  Requires ``fluctuations=False`` and
  zero noise (the fast path's random draws are not reproduced).

  Returns:
    (images float32 [3, H, W], labels uint8 [3, H, W]).
  """
  if physics.fluctuations or any(physics.noise_adc):
    raise ValueError("render_deposits_reference needs fluctuations=False and "
                     "noise_adc=(0, 0, 0).")
  block_r, block_c = _check_resolution(height, width)
  d = drift(deposits, physics, np.random.default_rng(0))
  phi = lambda x: 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))
  g = physics.adc_tick_per_electron / TICKS_PER_ROW
  amp = physics.induction_peak_ratio * g * math.sqrt(math.e / (2 * math.pi))
  inf = math.inf
  native = np.zeros((3, NATIVE_ROWS, NATIVE_COLUMNS))
  truth = np.zeros((2, 3, NATIVE_ROWS, NATIVE_COLUMNS))
  for plane in range(3):
    n = WIRES_PER_PLANE[plane]
    pad = (NATIVE_COLUMNS - n) // 2
    columns = _plane_columns(d.position_mm, plane)
    for i in range(d.charge_e.size):
      q, col, row = d.charge_e[i], columns[i], d.row_coord[i]
      sw, sr = max(d.sigma_wires[i], 1e-9), d.sigma_rows[i]
      c0, k0 = math.floor(col), math.floor(row)
      first = k0 - 2 if row - k0 < 0.5 else k0 - 1
      for c in (c0 - 1, c0, c0 + 1):
        lo = -inf if c < c0 else (c - col) / sw
        hi = inf if c > c0 else (c + 1 - col) / sw
        w_wire = phi(hi) - phi(lo)
        for k in range(first, first + 4):
          a = -inf if k == first else (k - row) / sr
          b = inf if k == first + 3 else (k + 1 - row) / sr
          if plane == 2 or physics.signal == "deconvolved":
            w_row = g * (phi(b) - phi(a))
          else:
            w_row = amp * (math.exp(-0.5 * b * b) - math.exp(-0.5 * a * a))
          if 0 <= k < HALF_ROWS and pad <= c < pad + n:
            r = NATIVE_ROWS - 1 - k if d.bottom[i] else k
            native[plane, r, c] += q * w_row * w_wire
            if k == k0:  # truth: the arrival bin, no shaping
              truth[d.origin[i] - 1, plane, r, c] += q * w_wire
  below = (native if physics.signal == "deconvolved" else np.abs(native)) < physics.threshold_adc
  native[below] = 0.0
  thr = max(physics.truth_threshold_electrons, 1e-9)
  native_labels = np.where(truth[1] >= thr, 2, np.where(truth[0] >= thr, 1, 0))
  shape = (3, height, block_r, width, block_c)
  images = native.reshape(shape).mean(axis=(2, 4))
  labels = native_labels.reshape(shape).max(axis=(2, 4))
  return images.astype(np.float32), labels.astype(np.uint8)


def _to_rendered(native_index: np.ndarray, block_r: int, block_c: int,
                 width: int) -> np.ndarray:
  rows = native_index // NATIVE_COLUMNS  # not np.divmod: see _grid_to_native
  cols = native_index - rows * NATIVE_COLUMNS
  return (rows // block_r) * width + cols // block_c


def _event_rng(seed: int, event: int, stream: int) -> np.random.Generator:
  """Independent stream per (seed, event, purpose): event i does not depend
  on num_events, resolution or the other events."""
  return np.random.default_rng([seed, event, stream])


def _readout_pieces(tracks: tr.Particles, physics: SbndPhysics) -> tr.Particles:
  """Cuts straight-line tracks to the parts whose charge reaches the window.

  Cosmic muons arrive up to ±1.28 ms from the spill, so on average half of
  their length drifts in outside the readout window.  Along the straight line
  from the start, the arrival time t₀ + (2 m − |x|)/v is linear in the path
  length within each drift half, so the visible parts are at most one interval
  per half (with a margin of 8 rows for scattering and the pulse width).  Each
  becomes a track starting there with its CSDA energy; a cut end is a
  ``max_length_mm`` (no secondaries), an uncut one keeps range-out / exit.
  """
  if len(tracks) == 0:
    return tracks
  tables = phys.range_tables()
  r0 = tables.range_of(tracks.species, tracks.kinetic_mev)
  exit_mm = tr.box_exit_distance(tracks.position_mm, tracks.direction)
  length = np.minimum(np.minimum(r0, exit_mm), tracks.max_length_mm)
  x0, dx = tracks.position_mm[:, 0], tracks.direction[:, 0]
  margin = 8 * ROW_US
  v = physics.drift_velocity_mm_per_us
  # Visible |x| range: 2 m − v·(t_hi − t₀) ≤ |x| ≤ 2 m − v·(t_lo − t₀).
  ax_lo = DRIFT_LENGTH_MM - v * (WINDOW_US + margin - tracks.time_us)
  ax_hi = DRIFT_LENGTH_MM - v * (-margin - tracks.time_us)
  pieces = []
  for sign in (-1.0, 1.0):  # x < 0 half, x ≥ 0 half; |x| = sign·x
    with np.errstate(divide="ignore", invalid="ignore"):
      # sign·(x0 + dx·s) ∈ [max(ax_lo, 0), ax_hi]
      a = (np.maximum(ax_lo, 0.0) / sign - x0) / dx
      b = (ax_hi / sign - x0) / dx
    lo = np.where(dx != 0, np.minimum(a, b), -np.inf)
    hi = np.where(dx != 0, np.maximum(a, b), np.inf)
    flat_ok = (sign * x0 >= np.maximum(ax_lo, 0.0)) & (sign * x0 <= ax_hi)
    lo = np.where((dx == 0) & ~flat_ok, np.inf, lo)
    s_a = np.maximum(lo, 0.0)
    s_b = np.minimum(hi, length)
    ok = (s_b > s_a) & (ax_hi >= np.maximum(ax_lo, 0.0))
    if not ok.any():
      continue
    sel = tracks.select(ok)
    s_a, s_b, full = s_a[ok], s_b[ok], s_b[ok] >= length[ok]
    t_a = tables.kinetic_of(sel.species, r0[ok] - s_a)
    t_a = np.where(s_a > 0, t_a, sel.kinetic_mev)
    pieces.append(dataclasses.replace(
        sel, position_mm=sel.position_mm + s_a[:, None] * sel.direction,
        kinetic_mev=t_a,
        max_length_mm=np.where(full, sel.max_length_mm, s_b - s_a)))
  return tr.Particles.concat(pieces) if pieces else tr.empty_particles()


def simulate_event_deposits(seed: int, event: int, interaction: str,
                            physics: SbndPhysics = SbndPhysics(), *,
                            return_vertex: bool = False):
  """Energy deposits of one event.

  Args:
    seed, event: the event's random streams (as in `simulate_sbnd_events`).
    interaction: one of INTERACTIONS.
    physics: simulation parameters.
    return_vertex: also return the neutrino vertex.

  Returns:
    (deposits, neutrino_energy_gev): deposits of cosmics and the neutrino
    (origin 1 / 2); energy 0.0 for cosmic_only. With ``return_vertex`` a third
    element: the vertex float64 [3] in mm (nan for cosmic_only).
  """
  if interaction not in INTERACTIONS:
    raise ValueError(f"interaction={interaction!r}: expected one of "
                     f"{INTERACTIONS}.")
  options = physics.transport_options()
  cosmics = gen.cosmic_muons(_event_rng(seed, event, 1),
                             mean_cosmics=physics.mean_cosmics,
                             window_us=WINDOW_US, readout_us=physics.readout_us)
  parts = [tr.transport(_readout_pieces(cosmics, physics),
                        _event_rng(seed, event, 2), options)]
  e_nu = 0.0
  vertex = np.full(3, np.nan)
  if interaction != "cosmic_only":
    primaries, e_nu = gen.neutrino_interaction(_event_rng(seed, event, 3),
                                               interaction)
    if len(primaries):
      vertex = primaries.position_mm[0].astype(np.float64)  # All leave the vertex.
    parts.append(tr.transport(primaries, _event_rng(seed, event, 4), options))
  if return_vertex:
    return tr.Deposits.concat(parts), e_nu, vertex
  return tr.Deposits.concat(parts), e_nu


def vertex_pixels(vertex_mm: np.ndarray, *, height: int, width: int,
                  physics: SbndPhysics = SbndPhysics()) -> np.ndarray:
  """Where a point at the beam-spill time appears on each plane of a rendering.

  Args:
    vertex_mm: float [3] (x drift, y, z), mm; nan gives nan.
    height, width: rendering (as `render_deposits`).
    physics: drift velocity.

  Returns:
    float32 [3, 2]: per plane (row, column) in pixels of the rendering, continuous
    (pixel i covers [i, i + 1)): charge drifting from ``x`` arrives ``(2 m − |x|)/v``
    after the spill, shown from the anode (x < 0: row 0, x ≥ 0: row 1279) inward.
  """
  block_r, block_c = _check_resolution(height, width)
  vertex_mm = np.asarray(vertex_mm, np.float64)
  if not np.isfinite(vertex_mm).all():
    return np.full((3, 2), np.nan, np.float32)
  x = vertex_mm[0]
  k = max(DRIFT_LENGTH_MM - abs(x), 0.0) / physics.drift_velocity_mm_per_us / ROW_US
  row = NATIVE_ROWS - k if x >= 0 else k
  out = np.zeros((3, 2))
  for plane in range(3):
    out[plane] = (row / block_r, _plane_columns(vertex_mm[None], plane)[0] / block_c)
  return out.astype(np.float32)


def simulate_sbnd_events(seed: int, num_events: int, *, height: int = 640,
                         width: int = 1024,
                         interaction_fractions: Sequence[float] = (0.25, 0.25,
                                                                   0.25, 0.25),
                         **physics_kwargs) -> SbndEvents:
  """Simulates SBND wire-plane events (see the module docstring).

  Args:
    seed: integer seed; event i uses streams derived from (seed, i) only.
    num_events: number of events (≥ 0).
    height, width: rendering; must divide the native 1280 × 2048 grid.
    interaction_fractions: probabilities of INTERACTIONS (cosmic_only, nue_cc,
      numu_cc, nc), each ≥ 0, summing to 1.
    **physics_kwargs: overrides of `SbndPhysics` fields.

  Returns:
    SbndEvents with images float32 [N, 3, H, W] (ADC), labels uint8,
    interaction int32 and neutrino_energy_gev float32 (0 for cosmic_only).

  Raises:
    ValueError: naming the bad argument.
  """
  for name, value in (("seed", seed), ("num_events", num_events)):
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or
        value < 0):
      raise ValueError(f"{name}={value!r} must be an integer >= 0.")
  _check_resolution(height, width)
  fractions = np.asarray(interaction_fractions, dtype=np.float64)
  if fractions.shape != (len(INTERACTIONS),) or not np.all(np.isfinite(fractions)):
    raise ValueError(f"interaction_fractions={interaction_fractions!r}: expected "
                     f"{len(INTERACTIONS)} numbers for {INTERACTIONS}.")
  if np.any(fractions < 0) or abs(fractions.sum() - 1.0) > 1e-6:
    raise ValueError(f"interaction_fractions={interaction_fractions!r}: must be "
                     ">= 0 and sum to 1.")
  fields = {f.name for f in dataclasses.fields(SbndPhysics)}
  unknown = sorted(set(physics_kwargs) - fields)
  if unknown:
    raise ValueError(f"unknown physics keyword(s) {unknown}; known: "
                     f"{sorted(fields)}.")
  physics = SbndPhysics(**physics_kwargs)
  cumulative = np.cumsum(fractions)
  images = np.zeros((num_events, 3, height, width), np.float32)
  labels = np.zeros((num_events, 3, height, width), np.uint8)
  interaction = np.zeros(num_events, np.int32)
  energy = np.zeros(num_events, np.float32)
  vertex_cm = np.full((num_events, 3), np.nan, np.float32)
  vertex_px = np.full((num_events, 3, 2), np.nan, np.float32)
  for i in range(num_events):
    u = _event_rng(seed, i, 0).uniform() * cumulative[-1]
    kind = int(min(np.searchsorted(cumulative, u, side="right"),
                   len(INTERACTIONS) - 1))
    deposits, e_nu, vertex = simulate_event_deposits(seed, i, INTERACTIONS[kind], physics,
                                                     return_vertex=True)
    render_deposits(deposits, _event_rng(seed, i, 5), height=height, width=width,
                    physics=physics, out=(images[i], labels[i]))
    interaction[i] = kind
    energy[i] = e_nu
    vertex_cm[i] = vertex / 10.0
    vertex_px[i] = vertex_pixels(vertex, height=height, width=width, physics=physics)
  names = [INTERACTIONS[k] for k in interaction]
  return SbndEvents(images=images, labels=labels, interaction=interaction,
                    neutrino_energy_gev=energy,
                    neutrino_pdg=np.array([INTERACTION_PDG[t] for t in names], np.int32),
                    current_type=np.array([INTERACTION_CURRENT[t] for t in names], np.int32),
                    vertex_cm=vertex_cm, vertex_pixel=vertex_px)
