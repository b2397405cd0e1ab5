"""Toy KamLAND-Zen simulator: 0νββ of ¹³⁶Xe vs ¹⁰C in the Xe-loaded scintillator (vectorised).

What is simulated (numbers: KamLAND-Zen / KamNet, arXiv 2203.01870, 1205.6130, and the
values quoted inline):

* Detector: 1879 inner-detector PMTs on the 8.5 m photocathode sphere — 1325 × 17-inch
  (indices 0–1324, as KamNet's index < 1325 convention) and 554 × 20-inch. **The layout is
  not the real PMT table**: it is a Fibonacci lattice (quasi-uniform), with the 20-inch
  tubes spread evenly over it. Photocathode diameters 43 / 51 cm give 34 % coverage.
  Scintillator out to the 6.5 m outer balloon; vertices uniform in r < 1.67 m (KamNet's
  fiducial cut inside the 1.92 m Xe-LS balloon).
* Light: scintillation yield set so that a 1 MeV deposit at the centre gives
  1/0.066² ≈ 230 detected p.e. (σ/E ≈ 6.6 %/√E from photostatistics), emission time
  rise 1 ns and decays 6.9 ns (86 %), 8.8 ns (12 %), 36 ns (2 %); Cherenkov light
  (``cherenkov_pe_per_mev`` detected p.e. per MeV above the 0.195 MeV threshold, prompt)
  on a cone cos θ_c = 1/(nβ), n = 1.452, smeared by ``cherenkov_smear_rad`` for multiple
  scattering; attenuation exp(−d/λ), λ = 10 m; per-PMT solid angle A cos η / d²;
  Poisson p.e. counts per PMT and source; propagation at c/n = 20.6 cm/ns; Gaussian
  transit-time spread σ = 1.2 ns (17-inch) / 2.8 ns (20-inch); charge = p.e. count with
  a Gaussian gain spread of 0.35 √n p.e. A hit is (PMT id, time of its first p.e., charge).
* 0νββ: two electrons sharing Q = 2.458 MeV with the spectrum ∝ E₁p₁E₂p₂ and the angular
  correlation 1 − β₁β₂ cos θ₁₂ (mass mechanism, Fermi function left out); point-like
  (ranges ≤ 1.5 cm). ``cherenkov_only=True`` keeps only their Cherenkov light (the
  direction study's mode); ``direction`` is then the unit sum of the two momenta.
* ¹⁰C: a β⁺ (allowed shape ∝ pE(E₀−E)², end-point 1.908 MeV) deposited at the vertex,
  then annihilation into two back-to-back 511 keV γ — after an ortho-positronium delay
  (formation 50 %, lifetime 3 ns) — and a prompt 718 keV γ (isotropic). Every γ is
  tracked through Compton scatterings (Klein–Nishina angles; free paths from the
  Klein–Nishina cross section with 2.68e23 electrons/cm³, 13.0 cm at 511 keV and
  15.1 cm at 718 keV) until it leaves the 6.5 m scintillator or falls below 30 keV
  (then absorbed).
* Reconstruction stand-ins: the event vertex is the light-weighted centroid of the
  deposits smeared by 13.7 cm/√E per axis; hit times are stored raw (ns after the decay)
  and TOF-subtracted to that vertex by ``hitmaps``.
* Matching: both classes are selected in bins of the number of hit PMTs (Nhit, KamNet's
  matching variable) so that their Nhit histograms agree (``match_nhit``).

Left out: the real PMT table and its per-tube gains/efficiencies, Birks quenching (the
visible energy of Compton electrons is not reduced), the Fermi function, electron tracks
(ββ electrons, positrons and Compton electrons deposit at a point), Cherenkov light of
Compton electrons, re-emission and scattering of light, the balloon film, reflections,
dark noise and after-pulses, the 1.5 % ¹⁰C branch to 1740 keV, 2νββ, other backgrounds.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import numpy as np

PMT_RADIUS_M = 8.5
NUM_PMT_17, NUM_PMT_20 = 1325, 554
NUM_PMTS = NUM_PMT_17 + NUM_PMT_20
PHOTOCATHODE_DIAMETER_M = (0.43, 0.51)  # 17-inch, 20-inch (effective, 34 % coverage).
TTS_SIGMA_NS = (1.2, 2.8)  # 17-inch, 20-inch.
FIDUCIAL_RADIUS_M = 1.67
SCINTILLATOR_RADIUS_M = 6.5
Q_BB_MEV = 2.458
C10_ENDPOINT_MEV = 1.908
GAMMA_ENERGIES_MEV = (0.511, 0.511, 0.718)
ELECTRON_MASS_MEV = 0.511
REFRACTIVE_INDEX = 1.452
LIGHT_SPEED_CM_NS = 29.9792458
PHOTON_SPEED_CM_NS = LIGHT_SPEED_CM_NS / REFRACTIVE_INDEX  # 20.6 cm/ns.
ELECTRON_DENSITY_CM3 = 0.78 * 6.02214e23 * 0.570  # ρ N_A Z/A of the LS.
SCINT_DECAYS_NS = ((6.9, 0.86), (8.8, 0.12), (36.0, 0.02))
SCINT_RISE_NS = 1.0
ATTENUATION_M = 10.0
RESOLUTION_AT_1MEV = 0.066
VERTEX_RESOLUTION_M = 0.137  # Per axis at 1 MeV, / √E.
CHERENKOV_THRESHOLD_MEV = 0.195
OPS_FRACTION, OPS_LIFETIME_NS = 0.5, 3.0
GAMMA_CUTOFF_MEV = 0.03
MAX_COMPTON_STEPS = 16
LABELS = {"0vbb": 1, "c10": 0}


@dataclasses.dataclass
class Events:
  """Simulated (or read) events as a CSR hit list.

  Attributes:
    label: int32 [N], 1 = 0νββ (signal), 0 = ¹⁰C.
    vertex: float32 [N, 3] reconstructed vertex (m), used for the TOF subtraction.
    true_vertex: float32 [N, 3] decay position (m).
    visible_energy: float32 [N] deposited energy (MeV) seen as scintillation.
    direction: float32 [N, 3] unit sum of the ββ electron momenta (zeros for ¹⁰C).
    offsets: int64 [N + 1]: hits of event i are ``offsets[i]:offsets[i+1]``.
    pmt: int32 [H] PMT index; time: float32 [H] ns after the decay; charge: float32 [H] p.e.
  """
  label: np.ndarray
  vertex: np.ndarray
  true_vertex: np.ndarray
  visible_energy: np.ndarray
  direction: np.ndarray
  offsets: np.ndarray
  pmt: np.ndarray
  time: np.ndarray
  charge: np.ndarray

  def __len__(self) -> int:
    return len(self.label)

  @property
  def nhit(self) -> np.ndarray:
    return np.diff(self.offsets)

  def select(self, index: Sequence[int]) -> "Events":
    """The events ``index`` (in that order)."""
    index = np.asarray(index, np.int64)
    lo, hi = self.offsets[index], self.offsets[index + 1]
    hit_index = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]) if len(index) else \
        np.zeros(0, np.int64)
    return Events(self.label[index], self.vertex[index], self.true_vertex[index],
                  self.visible_energy[index], self.direction[index],
                  np.concatenate([[0], np.cumsum(hi - lo)]).astype(np.int64),
                  self.pmt[hit_index], self.time[hit_index], self.charge[hit_index])

  def event(self, i: int) -> dict[str, np.ndarray]:
    s = slice(self.offsets[i], self.offsets[i + 1])
    return {"pmt": self.pmt[s], "time": self.time[s], "charge": self.charge[s]}


def concatenate(parts: Sequence[Events]) -> Events:
  """One :class:`Events` from several (offsets re-based)."""
  offsets = [np.zeros(1, np.int64)]
  base = 0
  for p in parts:
    offsets.append(p.offsets[1:] + base)
    base += p.offsets[-1]
  cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
  return Events(cat("label"), cat("vertex"), cat("true_vertex"), cat("visible_energy"),
                cat("direction"), np.concatenate(offsets), cat("pmt"), cat("time"),
                cat("charge"))


@functools.lru_cache(maxsize=None)
def pmt_table() -> tuple[np.ndarray, np.ndarray]:
  """Toy PMT table: positions float64 [1879, 3] (m) and type int32 [1879] (0: 17", 1: 20").

  A Fibonacci lattice on the 8.5 m sphere; the 554 20-inch tubes take every ~3.4th lattice
  point so that both kinds cover the sphere evenly; 17-inch first (KamNet's index < 1325).
  Not the real KamLAND table (use ``hits.read_pmt_table`` for that).
  """
  k = np.arange(NUM_PMTS) + 0.5
  z = 1 - 2 * k / NUM_PMTS
  phi = np.pi * (1 + 5 ** 0.5) * k
  r = np.sqrt(1 - z * z)
  pts = np.stack([r * np.cos(phi), r * np.sin(phi), z], -1) * PMT_RADIUS_M
  is20 = np.floor((np.arange(NUM_PMTS) + 1) * NUM_PMT_20 / NUM_PMTS) > np.floor(
      np.arange(NUM_PMTS) * NUM_PMT_20 / NUM_PMTS)
  order = np.concatenate([np.flatnonzero(~is20), np.flatnonzero(is20)])
  return pts[order], is20[order].astype(np.int32)


def _unit(rng, shape):
  v = rng.standard_normal(tuple(shape) + (3,))
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _uniform_ball(rng, n, radius):
  return _unit(rng, (n,)) * (radius * rng.random(n) ** (1 / 3))[:, None]


def _kn_sigma_cm2(e_mev):
  """Klein–Nishina total cross section per electron (cm²)."""
  k = np.asarray(e_mev) / ELECTRON_MASS_MEV
  re2 = 7.9407877e-26  # r_e² in cm².
  a = (1 + k) / k ** 2 * (2 * (1 + k) / (1 + 2 * k) - np.log(1 + 2 * k) / k)
  return 2 * np.pi * re2 * (a + np.log(1 + 2 * k) / (2 * k) - (1 + 3 * k) / (1 + 2 * k) ** 2)


def gamma_mean_free_path_cm(e_mev):
  """Compton mean free path in the LS (cm): 13.0 at 0.511 MeV, 15.1 at 0.718 MeV."""
  return 1.0 / (ELECTRON_DENSITY_CM3 * _kn_sigma_cm2(e_mev))


def _sample_kn_cos(rng, e_mev):
  """Compton scattering cosines from Klein–Nishina by rejection (vectorised)."""
  k = e_mev / ELECTRON_MASS_MEV
  out = np.full(e_mev.shape, np.nan)
  todo = np.ones(e_mev.shape, bool)
  while todo.any():
    c = rng.uniform(-1, 1, e_mev.shape)
    p = 1 / (1 + k * (1 - c))
    accept = todo & (rng.random(e_mev.shape) * 2 < p * p * (p + 1 / p - (1 - c * c)))
    out[accept] = c[accept]
    todo &= ~accept
  return out


def _rotate_to(u, cos_t, phi):
  """Directions at angle arccos(cos_t), azimuth phi around unit vectors u [..., 3]."""
  a = np.where(np.abs(u[..., :1]) < 0.9, np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))
  e1 = np.cross(u, a)
  e1 /= np.linalg.norm(e1, axis=-1, keepdims=True)
  e2 = np.cross(u, e1)
  s = np.sqrt(np.clip(1 - cos_t ** 2, 0, None))[..., None]
  return cos_t[..., None] * u + s * (np.cos(phi)[..., None] * e1 + np.sin(phi)[..., None] * e2)


def _beta(t_mev):
  g = 1 + t_mev / ELECTRON_MASS_MEV
  return np.sqrt(1 - 1 / g ** 2)


def _sample_spectrum(rng, n, pdf, lo, hi):
  x = np.linspace(lo, hi, 2001)
  cdf = np.cumsum(pdf(x))
  cdf /= cdf[-1]
  return np.interp(rng.random(n), cdf, x)


def _sources_0vbb(rng, n, cherenkov_only):
  """Scintillation sites and Cherenkov emitters of n 0νββ decays (see :func:`simulate`)."""
  m = ELECTRON_MASS_MEV

  def pdf(t):
    e1, e2 = t + m, Q_BB_MEV - t + m
    return e1 * np.sqrt(np.clip(e1 ** 2 - m * m, 0, None)) * e2 * np.sqrt(
        np.clip(e2 ** 2 - m * m, 0, None))

  t1 = _sample_spectrum(rng, n, pdf, 0, Q_BB_MEV)
  t2 = Q_BB_MEV - t1
  b1, b2 = _beta(t1), _beta(t2)
  u1 = _unit(rng, (n,))
  u2 = np.zeros_like(u1)
  todo = np.ones(n, bool)
  while todo.any():  # Angular correlation 1 − β₁β₂ cos θ₁₂ by rejection.
    cand = _unit(rng, (n,))
    c = np.sum(cand * u1, -1)
    ok = todo & (rng.random(n) * (1 + b1 * b2) < 1 - b1 * b2 * c)
    u2[ok] = cand[ok]
    todo &= ~ok
  vertex = _uniform_ball(rng, n, FIDUCIAL_RADIUS_M)
  p1 = np.sqrt(t1 * (t1 + 2 * m))[:, None] * u1
  p2 = np.sqrt(t2 * (t2 + 2 * m))[:, None] * u2
  direction = p1 + p2
  direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
  e_scint = np.zeros((n, 1)) if cherenkov_only else np.full((n, 1), Q_BB_MEV)
  sites = (vertex[:, None], e_scint, np.zeros((n, 1)))
  cher = (np.repeat(vertex[:, None], 2, 1), np.stack([u1, u2], 1), np.stack([t1, t2], 1),
          np.zeros((n, 2)))
  return vertex, direction, sites, cher


def _sources_c10(rng, n):
  """Sites (positron at the vertex + every Compton deposit) of n ¹⁰C decays."""
  m = ELECTRON_MASS_MEV
  e0 = C10_ENDPOINT_MEV

  def pdf(t):
    e = t + m
    return np.sqrt(np.clip(e * e - m * m, 0, None)) * e * (e0 - t) ** 2

  t_pos = _sample_spectrum(rng, n, pdf, 0, e0)
  vertex = _uniform_ball(rng, n, FIDUCIAL_RADIUS_M)
  ops = rng.random(n) < OPS_FRACTION
  t_ann = np.where(ops, rng.exponential(OPS_LIFETIME_NS, n), 0.0)
  g_dir = _unit(rng, (n, 2))
  dirs = np.stack([g_dir[:, 0], -g_dir[:, 0], g_dir[:, 1]], 1)  # [n, 3 γ, 3]
  energy = np.broadcast_to(np.asarray(GAMMA_ENERGIES_MEV), (n, 3)).copy()
  pos = np.repeat(vertex[:, None], 3, 1)
  time = np.stack([t_ann, t_ann, np.zeros(n)], 1)
  alive = np.ones((n, 3), bool)
  s_pos, s_e, s_t = [vertex[:, None]], [t_pos[:, None]], [np.zeros((n, 1))]
  for _ in range(MAX_COMPTON_STEPS):
    step = rng.exponential(gamma_mean_free_path_cm(np.maximum(energy, 1e-3))) / 100.0
    pos = pos + dirs * step[..., None]
    time = time + step * 100 / LIGHT_SPEED_CM_NS
    alive &= np.linalg.norm(pos, axis=-1) < SCINTILLATOR_RADIUS_M
    c = _sample_kn_cos(rng, np.maximum(energy, 1e-3))
    e_new = energy / (1 + energy / m * (1 - c))
    absorb = e_new < GAMMA_CUTOFF_MEV
    dep = np.where(alive, np.where(absorb, energy, energy - e_new), 0.0)
    s_pos.append(pos.copy()), s_e.append(dep), s_t.append(time.copy())
    dirs = _rotate_to(dirs, c, rng.uniform(0, 2 * np.pi, c.shape))
    energy = np.where(absorb, 0.0, e_new)
    alive &= ~absorb
  sites = (np.concatenate(s_pos, 1), np.concatenate(s_e, 1), np.concatenate(s_t, 1))
  cher = (vertex[:, None], _unit(rng, (n, 1)), t_pos[:, None], np.zeros((n, 1)))
  return vertex, np.zeros((n, 3)), sites, cher


def simulate(seed, num_events: int, kind: str, *, cherenkov_only: bool = False,
             cherenkov_pe_per_mev: float = 10.0, cherenkov_smear_rad: float = 0.35,
             energy_window_mev: tuple[float, float] | None = None, chunk: int = 64) -> Events:
  """Simulates ``num_events`` events of ``kind`` ("0vbb" or "c10"), unmatched.

  Args:
    seed: anything ``np.random.default_rng`` accepts (the same seed, the same events).
    cherenkov_only: 0νββ without scintillation light (the direction study).
    cherenkov_pe_per_mev: detected Cherenkov p.e. per MeV of kinetic energy above the
      0.195 MeV threshold for a decay at the centre (an assumption: ~4 % of the
      scintillation p.e.; a 0νββ decay gives ≈ 20 Cherenkov p.e.).
    energy_window_mev: if given, decays whose deposited energy is outside it are dropped
      before the (costly) light simulation, so fewer than ``num_events`` may come back.
  """
  if kind not in LABELS:
    raise ValueError(f"kind must be one of {sorted(LABELS)}, got {kind!r}")
  rng = np.random.default_rng(seed)
  pmts, kinds = pmt_table()
  area = np.pi * (np.asarray(PHOTOCATHODE_DIAMETER_M)[kinds] / 2) ** 2
  tts = np.asarray(TTS_SIGMA_NS)[kinds]
  coverage = area.sum() / (4 * np.pi * PMT_RADIUS_M ** 2)
  # Yields are *detected* p.e. per MeV at the centre: divide out coverage and attenuation,
  # which ``_detect`` multiplies back in per PMT (Cherenkov as well as scintillation).
  collection = coverage * np.exp(-PMT_RADIUS_M / ATTENUATION_M)
  pe_per_mev = 1 / RESOLUTION_AT_1MEV ** 2 / collection
  ch_per_mev = cherenkov_pe_per_mev / collection
  parts = []
  for lo in range(0, num_events, chunk):
    n = min(chunk, num_events - lo)
    if kind == "0vbb":
      vertex, direction, sites, cher = _sources_0vbb(rng, n, cherenkov_only)
    else:
      vertex, direction, sites, cher = _sources_c10(rng, n)
    if energy_window_mev is not None:
      e = sites[1].sum(1)
      keep = (e >= energy_window_mev[0]) & (e <= energy_window_mev[1])
      if not keep.any():
        continue
      vertex, direction = vertex[keep], direction[keep]
      sites = tuple(a[keep] for a in sites)
      cher = tuple(a[keep] for a in cher)
    parts.append(_detect(rng, kind, vertex, direction, sites, cher, pmts, area, tts,
                         pe_per_mev, ch_per_mev, cherenkov_smear_rad))
  return concatenate(parts)


def _detect(rng, kind, vertex, direction, sites, cher, pmts, area, tts, pe_per_mev,
            ch_per_mev, ch_smear):
  n = len(vertex)
  s_pos, s_e, s_t = _compact_sites(*sites)
  c_pos, c_dir, c_t, c_t0 = cher

  def geometry(pos):  # pos [n, S, 3] → distance (m), unit direction, solid angle × attenuation
    d = (pmts[None, None] - pos[:, :, None]).astype(np.float32)  # [n, S, P, 3]
    dist = np.linalg.norm(d, axis=-1)
    dhat = d / dist[..., None]
    cos_eta = np.clip(np.sum(dhat * pmts / PMT_RADIUS_M, -1), 0, None)  # incidence
    return dist, dhat, area * cos_eta / dist ** 2 * np.exp(-dist / ATTENUATION_M)

  dist_s, _, acc_s = geometry(s_pos)
  mu_s = pe_per_mev * s_e[..., None] * acc_s / (4 * np.pi)  # [n, S, P]
  dist_c, dhat_c, acc_c = geometry(c_pos)
  above = np.clip(c_t - CHERENKOV_THRESHOLD_MEV, 0, None)
  theta_c = np.arccos(np.clip(1 / (REFRACTIVE_INDEX * np.maximum(_beta(c_t), 1e-3)), -1, 1))
  psi = np.arccos(np.clip(np.sum(dhat_c * c_dir[:, :, None], -1), -1, 1))
  mu_c = ch_per_mev * above[..., None] * acc_c * _ring(psi, theta_c, ch_smear)
  mu = np.concatenate([mu_s, mu_c], 1)
  dist = np.concatenate([dist_s, dist_c], 1)
  t_src = np.concatenate([s_t, c_t0], 1)
  scint = np.concatenate([np.ones(s_t.shape, bool), np.zeros(c_t0.shape, bool)], 1)
  counts = rng.poisson(mu)  # [n, S+K, P] p.e. per source and PMT
  ev, src, pm = np.nonzero(counts)
  reps = counts[ev, src, pm]
  ev, src, pm = (np.repeat(a, reps) for a in (ev, src, pm))
  num = len(ev)
  delay = np.zeros(num)
  is_s = scint[ev, src]
  k = rng.choice(len(SCINT_DECAYS_NS), size=num, p=[w for _, w in SCINT_DECAYS_NS])
  tau = np.asarray([t for t, _ in SCINT_DECAYS_NS])[k]
  delay[is_s] = rng.exponential(tau[is_s]) + rng.exponential(SCINT_RISE_NS, is_s.sum())
  t = (t_src[ev, src] + delay + dist[ev, src, pm] * 100 / PHOTON_SPEED_CM_NS
       + tts[pm] * rng.standard_normal(num))
  key = ev * NUM_PMTS + pm
  first = np.full(n * NUM_PMTS, np.inf)
  np.minimum.at(first, key, t)
  npe = np.bincount(key, minlength=n * NUM_PMTS)
  hit = np.flatnonzero(npe)
  q = npe[hit] + 0.35 * np.sqrt(npe[hit]) * rng.standard_normal(len(hit))
  e_vis = s_e.sum(1)
  w = s_e + 1e-12
  centroid = np.sum(s_pos * w[..., None], 1) / np.sum(w, 1)[:, None]
  e_for_res = np.maximum(e_vis, 0.5)
  reco = centroid + rng.standard_normal((n, 3)) * (VERTEX_RESOLUTION_M / np.sqrt(e_for_res))[:, None]
  offsets = np.concatenate([[0], np.cumsum(np.bincount(hit // NUM_PMTS, minlength=n))])
  return Events(np.full(n, LABELS[kind], np.int32), reco.astype(np.float32),
                vertex.astype(np.float32), e_vis.astype(np.float32),
                direction.astype(np.float32), offsets.astype(np.int64),
                (hit % NUM_PMTS).astype(np.int32), first[hit].astype(np.float32),
                np.maximum(q, 0.1).astype(np.float32))


def _compact_sites(pos, energy, time):
  """Drops empty sites (dead γ steps): sites sorted by energy, cut to the busiest event's count."""
  order = np.argsort(-energy, axis=1, kind="stable")
  keep = max(1, int((energy > 0).sum(1).max()))
  order = order[:, :keep]
  take = lambda a: np.take_along_axis(a, order if a.ndim == 2 else order[..., None], 1)  # noqa: E731
  return take(pos), take(energy), take(time)


def _ring(psi, theta_c, sigma):
  """Gaussian ring density per sr, psi [n, K, P], theta_c [n, K]."""
  grid = np.linspace(0, np.pi, 361)
  ring = np.exp(-0.5 * ((grid - theta_c[..., None]) / sigma) ** 2)
  norm = 2 * np.pi * np.trapezoid(ring * np.sin(grid), grid, axis=-1)
  return np.exp(-0.5 * ((psi - theta_c[..., None]) / sigma) ** 2) / norm[..., None]


def match_nhit(signal: Events, background: Events, num_per_class: int, *,
               num_bins: int | None = None, seed=0) -> tuple[Events, Events]:
  """``num_per_class`` events of each class with matching Nhit histograms.

  Bins are Nhit quantiles of ``signal`` (default: one per ~25 events, at most 20); each bin takes the same number of events from
  both classes (as many as the scarcer class allows, up to ``num_per_class / num_bins``).
  Raises if fewer than ``num_per_class`` can be matched (simulate more background).
  """
  rng = np.random.default_rng(seed)
  if num_bins is None:  # ~25 events per class and bin, at most 20 bins.
    num_bins = int(np.clip(num_per_class // 25, 1, 20))
  edges = np.quantile(signal.nhit, np.linspace(0, 1, num_bins + 1))
  edges[0], edges[-1] = -np.inf, np.inf
  bs = np.clip(np.searchsorted(edges, signal.nhit, side="right") - 1, 0, num_bins - 1)
  bb = np.clip(np.searchsorted(edges, background.nhit, side="right") - 1, 0, num_bins - 1)
  quota = np.full(num_bins, num_per_class // num_bins)
  quota[: num_per_class - quota.sum()] += 1
  pick_s, pick_b = [], []
  for b in range(num_bins):
    s_idx, b_idx = np.flatnonzero(bs == b), np.flatnonzero(bb == b)
    take = min(quota[b], len(s_idx), len(b_idx))
    if take < quota[b]:
      raise ValueError(f"match_nhit: Nhit bin {b} ({edges[b]:.0f}–{edges[b + 1]:.0f}) has "
                       f"{len(s_idx)} signal / {len(b_idx)} background events for a quota "
                       f"of {quota[b]}; simulate more events")
    pick_s.append(rng.choice(s_idx, take, replace=False))
    pick_b.append(rng.choice(b_idx, take, replace=False))
  return (signal.select(np.sort(np.concatenate(pick_s))),
          background.select(np.sort(np.concatenate(pick_b))))


def simulate_matched(seed, num_per_class: int, *, oversample_signal: float = 1.3,
                     oversample_background: float = 8.0, **kwargs) -> Events:
  """Nhit-matched 0νββ and ¹⁰C events (``num_per_class`` each), shuffled together.

  ¹⁰C events outside a ±5σ visible-energy window around Q are cut before the light
  simulation (they could never match), so oversampling costs little.
  """
  ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
  s_seed, b_seed, m_seed = ss.spawn(3)
  n_s = int(np.ceil(oversample_signal * num_per_class)) + 20
  sig = simulate(s_seed, n_s, "0vbb", **kwargs)
  window = 5 * RESOLUTION_AT_1MEV * np.sqrt(Q_BB_MEV)
  bkg = simulate(b_seed, int(np.ceil(oversample_background * num_per_class)) + 20, "c10",
                 energy_window_mev=(Q_BB_MEV - window, Q_BB_MEV + window), **kwargs)
  sig, bkg = match_nhit(sig, bkg, num_per_class, seed=m_seed)
  both = concatenate([sig, bkg])
  order = np.random.default_rng(m_seed).permutation(len(both))
  return both.select(order)
