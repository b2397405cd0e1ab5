"""Event generators of the toy SBND simulator: cosmic muons and BNB neutrinos.

Cosmic muons:

* Intensity ∝ cos²θ (zenith angle θ, uniform azimuth), sampled as rays from a
  disc of radius R (the half-diagonal of the active volume) perpendicular to
  each direction; a ray is kept if it crosses the active volume, which
  weights directions by the volume's projected area as a real flux does.
* The number crossing per event is Poisson with mean
  ``mean_cosmics · (2·T_window)/readout_us``: ``mean_cosmics`` muons per SBND
  readout (≈5 per 1.7 ms, KPS 2022), with arrival times uniform in
  (−T_window, +T_window) around the beam spill, every time whose charge can
  reach the image (T_window = the 1280 µs shown per drift half).
* Energy: E = 2 GeV·U^(−1/1.7) − 1 GeV (a sea-level-like E^−2.7 tail,
  E ≥ 1 GeV, ⟨E⟩ ≈ 3.9 GeV); charge ratio μ⁺/μ⁻ = 1.25.

Neutrinos (BNB-like; approximate topologies and channel fractions, not a generator tune):

* E_ν ~ Gamma(k = 4, θ = 0.2 GeV) (⟨E_ν⟩ = 0.8 GeV, mode 0.6 GeV), redrawn
  below the channel's threshold; vertex uniform in the active volume; time
  uniform in the 1.6 µs spill; beam along +z.
* CC (νμ → μ⁻, νe → e⁻) channels QE 45 % (one proton), MEC 15 % (two
  protons), RES 30 % (Δ(1232) Breit–Wigner → pπ⁺ / pπ⁰ / nπ⁺ with
  isospin weights) and DIS 10 % (x, y uniform-ish, W > 1.4 GeV; a nucleon plus
  1 + Poisson(1.2 ln W²) pions of random charge, isotropic in the hadronic rest
  frame, scaled to W).  Q² is drawn per channel (exponential, mean
  0.25–0.35 GeV²) and the lepton angle follows from (E_ν, E_ℓ, Q²).
  QE/MEC nucleons carry q plus a Fermi momentum (uniform in a 250 MeV/c
  sphere), with 30 MeV binding per nucleon.
* NC: elastic 35 % (p or invisible n), RES 45 % (Δ → pπ⁰, nπ⁰, pπ⁻, nπ⁺),
  DIS 20 %; the outgoing neutrino is invisible.
* π⁰ → γγ at the vertex (isotropic in its rest frame); the photons convert
  after Exp(18 cm) in the transport code.  Neutrons are dropped.

Left out: nuclear final-state interactions, coherent pion production, kaons,
ν̄ and the flux composition (every neutrino event is of the requested kind),
dirt/out-of-volume interactions, stopping or multiple-muon cosmic showers
(every cosmic is a single through-going muon; low-energy ones may stop).
"""

from __future__ import annotations

import math

import numpy as np

from recoil_jax.studies.sbnd import sim_physics as phys
from recoil_jax.studies.sbnd import sim_tracks as tr

GEV = 1000.0  # MeV per GeV

COSMIC_MU_PLUS_FRACTION = 1.25 / 2.25
_COSMIC_E_BREAK_GEV = 1.0
_COSMIC_PARETO_INDEX = 1.7

NU_ENERGY_SHAPE = 4.0
NU_ENERGY_SCALE_GEV = 0.2
BEAM_SPILL_US = 1.6
BINDING_GEV = 0.030
FERMI_MOMENTUM_GEV = 0.250
DELTA_MASS_GEV, DELTA_WIDTH_GEV = 1.232, 0.117

_M_P = phys.PROTON_MASS_MEV / GEV
_M_N = phys.NEUTRON_MASS_MEV / GEV
_M_PI = phys.PION_MASS_MEV / GEV
_M_PI0 = phys.PION0_MASS_MEV / GEV
_M_NUCLEON = 0.5 * (_M_P + _M_N)

# Hadron codes used inside this module.
_P, _N, _PIP, _PIM, _PI0 = range(5)
_HADRON_MASS = np.array([_M_P, _M_N, _M_PI, _M_PI, _M_PI0])

CC_CHANNELS = (("qe", 0.45), ("mec", 0.15), ("res", 0.30), ("dis", 0.10))
NC_CHANNELS = (("el", 0.35), ("res", 0.45), ("dis", 0.20))
# Δ decays (final hadrons, probability), averaged over p and n targets.
_CC_RES_FINAL = (((_P, _PIP), 0.45), ((_P, _PI0), 0.37), ((_N, _PIP), 0.18))
_NC_RES_FINAL = (((_P, _PI0), 1 / 3), ((_N, _PI0), 1 / 3), ((_P, _PIM), 1 / 6),
                 ((_N, _PIP), 1 / 6))


def cosmic_muons(rng: np.random.Generator, *, mean_cosmics: float,
                 window_us: float, readout_us: float) -> tr.Particles:
  """Through-going cosmic muons of one event.

  Args:
    rng: random generator.
    mean_cosmics: mean number of muons crossing the active volume per
      ``readout_us``.
    window_us: arrival times are uniform in (−window_us, +window_us).
    readout_us: readout length that ``mean_cosmics`` refers to, µs.

  Returns:
    Muons starting where they enter the active volume, with a
    ``max_length_mm`` of inf (they end where they leave it or range out).
  """
  n = rng.poisson(mean_cosmics * 2.0 * window_us / readout_us)
  box = tr.ACTIVE_VOLUME_MM
  centre = box.mean(axis=0)
  radius = 0.5 * float(np.linalg.norm(box[1] - box[0]))
  pos, dirs = [], []
  have = 0
  while have < n:
    m = 2 * (n - have) + 8
    cos_t = rng.uniform(size=m)**(1.0 / 3.0)  # pdf ∝ cos²θ on [0, 1]
    phi = rng.uniform(0.0, 2.0 * math.pi, m)
    sin_t = np.sqrt(1.0 - cos_t**2)
    d = np.stack([sin_t * np.cos(phi), -cos_t, sin_t * np.sin(phi)], axis=1)
    e1, e2 = tr.orthonormal_frame(d)
    rr = radius * np.sqrt(rng.uniform(size=m))
    aa = rng.uniform(0.0, 2.0 * math.pi, m)
    p = centre + (rr * np.cos(aa))[:, None] * e1 + (rr * np.sin(aa))[:, None] * e2
    hit, t_in, _ = tr.box_entry(p, d)
    entry = p + np.maximum(t_in, -1e9)[:, None] * d
    entry = np.clip(entry, box[0], box[1])  # round-off on the faces
    pos.append(entry[hit])
    dirs.append(d[hit])
    have += int(hit.sum())
  pos = np.concatenate(pos)[:n] if n else np.zeros((0, 3))
  dirs = np.concatenate(dirs)[:n] if n else np.zeros((0, 3))
  energy_gev = ((_COSMIC_E_BREAK_GEV + 1.0) *
                rng.uniform(size=n)**(-1.0 / _COSMIC_PARETO_INDEX) -
                _COSMIC_E_BREAK_GEV)
  charge = np.where(rng.uniform(size=n) < COSMIC_MU_PLUS_FRACTION, 1, -1)
  times = rng.uniform(-window_us, window_us, n)
  return tr.Particles.make(phys.MUON, pos, dirs,
                           energy_gev * GEV - phys.MUON_MASS_MEV, times,
                           tr.ORIGIN_COSMIC, charge=charge)


def neutrino_energy_gev(rng: np.random.Generator, minimum_gev: float) -> float:
  """BNB-like neutrino energy ~ Gamma(4, 0.2 GeV), redrawn below the minimum."""
  while True:
    e = rng.gamma(NU_ENERGY_SHAPE, NU_ENERGY_SCALE_GEV)
    if e > minimum_gev:
      return float(e)


def _choose(rng: np.random.Generator, options):
  probs = np.array([p for _, p in options], dtype=np.float64)
  return options[rng.choice(len(options), p=probs / probs.sum())][0]


def _boost(p4: np.ndarray, beta: np.ndarray) -> np.ndarray:
  """Lorentz boost of 4-vectors p4 [n, 4] (E, p) by velocity beta [3]."""
  b2 = float(beta @ beta)
  if b2 <= 0.0:
    return p4
  gamma = 1.0 / math.sqrt(1.0 - b2)
  bp = p4[:, 1:] @ beta
  e = gamma * (p4[:, 0] + bp)
  p = p4[:, 1:] + ((gamma - 1.0) * bp / b2 + gamma * p4[:, 0])[:, None] * beta
  return np.concatenate([e[:, None], p], axis=1)


def _decay_at_rest(rng: np.random.Generator, w: float,
                   masses: np.ndarray) -> np.ndarray:
  """Momenta [n, 4] of n hadrons of total mass w in the rest frame.

  Two bodies: exact isotropic two-body decay.  More: isotropic directions,
  exponential magnitudes, the mean momentum removed (Σp = 0), then a common
  scale found by bisection so that ΣE = w (a simple phase-space stand-in).
  """
  n = masses.size
  if n == 2:
    m1, m2 = masses
    p = math.sqrt(max((w * w - (m1 + m2)**2) * (w * w - (m1 - m2)**2), 0.0)) / (2 * w)
    d = tr.isotropic(rng, 1)[0]
    mom = np.stack([p * d, -p * d])
  else:
    mom = tr.isotropic(rng, n) * rng.exponential(1.0, n)[:, None]
    mom -= mom.mean(axis=0)
    lo, hi = 0.0, 1.0
    energy = lambda s: float(np.sqrt((s * s) * (mom**2).sum(1) + masses**2).sum())
    while energy(hi) < w:
      hi *= 2.0
    for _ in range(60):
      mid = 0.5 * (lo + hi)
      lo, hi = (mid, hi) if energy(mid) < w else (lo, mid)
    mom = mom * lo
  e = np.sqrt((mom**2).sum(1) + masses**2)
  return np.concatenate([e[:, None], mom], axis=1)


def _fermi(rng: np.random.Generator) -> np.ndarray:
  return tr.isotropic(rng, 1)[0] * FERMI_MOMENTUM_GEV * rng.uniform()**(1 / 3)


def _lepton(rng: np.random.Generator, e_nu: float, m_l: float, channel: str):
  """Draws (ν = E_ν − E_ℓ, Q², W or None) and the lepton direction.

  Returns:
    (nu_gev, q2_gev2, w_gev or None, lepton_energy_gev, lepton_direction [3])
    or None when no kinematically allowed point was found in 200 tries.
  """
  for _ in range(200):
    w = None
    if channel in ("qe", "el"):
      q2 = rng.exponential(0.25)
      nu = q2 / (2 * _M_NUCLEON) + BINDING_GEV
    elif channel == "mec":
      q2 = rng.exponential(0.30)
      nu = q2 / (2 * _M_NUCLEON) + 2 * BINDING_GEV + rng.uniform(0.0, 0.1)
    elif channel == "res":
      q2 = rng.exponential(0.35)
      w = DELTA_MASS_GEV + 0.5 * DELTA_WIDTH_GEV * math.tan(
          math.pi * (rng.uniform() - 0.5))
      if not 1.08 < w < 1.6:
        continue
      nu = (w * w - _M_NUCLEON**2 + q2) / (2 * _M_NUCLEON)
    else:  # dis
      x, y = rng.uniform(0.05, 0.6), rng.uniform(0.2, 0.9)
      nu = y * e_nu
      q2 = 2 * _M_NUCLEON * e_nu * x * y
      w2 = _M_NUCLEON**2 + 2 * _M_NUCLEON * nu - q2
      if w2 < 1.4**2:
        continue
      w = math.sqrt(w2)
    e_l = e_nu - nu
    if e_l <= m_l:
      continue
    p_l = math.sqrt(e_l * e_l - m_l * m_l)
    cos_t = (2 * e_nu * e_l - m_l * m_l - q2) / (2 * e_nu * p_l)
    if abs(cos_t) > 1.0:
      continue
    phi = rng.uniform(0.0, 2.0 * math.pi)
    s = math.sqrt(1.0 - cos_t * cos_t)
    return nu, q2, w, e_l, np.array([s * math.cos(phi), s * math.sin(phi), cos_t]) * p_l
  return None


def neutrino_interaction(rng: np.random.Generator, kind: str):
  """Primaries of one neutrino interaction at a uniform vertex.

  Args:
    rng: random generator.
    kind: "nue_cc", "numu_cc" or "nc".

  Returns:
    (particles, e_nu_gev): charged tracks and photons leaving the vertex
    (origin ORIGIN_NEUTRINO, kinetic energies in MeV), and the neutrino energy.
  """
  lepton_mass = {"nue_cc": phys.ELECTRON_MASS_MEV,
                 "numu_cc": phys.MUON_MASS_MEV, "nc": 0.0}
  if kind not in lepton_mass:
    raise ValueError(f"neutrino_interaction: kind={kind!r}, expected one of "
                     f"{tuple(lepton_mass)}.")
  cc = kind != "nc"
  m_l = lepton_mass[kind] / GEV
  box = tr.ACTIVE_VOLUME_MM
  vertex = rng.uniform(box[0], box[1])
  time = rng.uniform(0.0, BEAM_SPILL_US)
  while True:
    e_nu = neutrino_energy_gev(rng, 0.25 if kind == "numu_cc" else 0.15)
    channel = _choose(rng, CC_CHANNELS if cc else NC_CHANNELS)
    kin = _lepton(rng, e_nu, m_l, channel)
    if kin is not None:
      break
  nu, q2, w, e_l, p_lep = kin
  del q2
  q = np.array([0.0, 0.0, e_nu]) - p_lep  # momentum transfer, GeV

  hadrons = []  # (code, p4 [4]) in GeV
  if channel in ("qe", "el"):
    code = (_P if rng.uniform() < 0.55 else _N) if channel == "el" else _P
    p = q + _fermi(rng)
    t = nu - BINDING_GEV
    if t > 0:
      m = _HADRON_MASS[code]
      pm = math.sqrt(t * (t + 2 * m))
      hadrons.append((code, np.concatenate([[t + m], pm * p / np.linalg.norm(p)])))
  elif channel == "mec":
    t_tot = nu - 2 * BINDING_GEV
    u = rng.uniform(0.2, 0.8)
    for frac in (u, 1.0 - u):
      t = frac * t_tot
      if t <= 0:
        continue
      p = 0.5 * q + _fermi(rng)
      pm = math.sqrt(t * (t + 2 * _M_P))
      hadrons.append((_P, np.concatenate([[t + _M_P], pm * p / np.linalg.norm(p)])))
  else:
    if channel == "res":
      codes = np.array(_choose(rng, _CC_RES_FINAL if cc else _NC_RES_FINAL))
    else:
      n_pi = 1 + rng.poisson(1.2 * math.log(w * w))
      codes = np.concatenate([[_P if rng.uniform() < 0.5 else _N],
                              rng.choice([_PIP, _PIM, _PI0], n_pi)])
      while _HADRON_MASS[codes].sum() >= w and codes.size > 2:
        codes = codes[:-1]
    p4 = _decay_at_rest(rng, w, _HADRON_MASS[codes])
    beta = q / (nu + _M_NUCLEON)
    p4 = _boost(p4, beta)
    hadrons += list(zip(codes, p4))

  particles = []
  if cc:
    t_l = (e_l - m_l) * GEV
    species = phys.ELECTRON if kind == "nue_cc" else phys.MUON
    particles.append(tr.Particles.make(species, vertex, p_lep, t_l, time,
                                       tr.ORIGIN_NEUTRINO, charge=-1))
  charged = {_P: (phys.PROTON, 1), _PIP: (phys.PION, 1), _PIM: (phys.PION, -1)}
  for code, p4 in hadrons:
    code = int(code)
    if code in charged:
      species, charge = charged[code]
      t = (p4[0] - _HADRON_MASS[code]) * GEV
      particles.append(tr.Particles.make(species, vertex, p4[1:], t, time,
                                         tr.ORIGIN_NEUTRINO, charge=charge))
    elif code == _PI0:
      gammas = _boost(_decay_at_rest(rng, _M_PI0, np.zeros(2)), p4[1:] / p4[0])
      particles.append(tr.Particles.make(tr.PHOTON, vertex, gammas[:, 1:],
                                         gammas[:, 0] * GEV, time,
                                         tr.ORIGIN_NEUTRINO))
  return tr.Particles.concat(particles), e_nu
