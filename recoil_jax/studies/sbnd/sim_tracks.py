"""Particle transport for the toy SBND simulator: tracks → 1 mm energy deposits.

``transport`` follows a stack of particles generation by generation (numpy,
vectorised over the particles of a generation):

* Charged tracks (e, μ, π, p) are stepped in ``step_mm`` steps along their CSDA
  range (`lartpc_physics.range_tables`), so the mean deposit of a step is
  T(R − s_lo) − T(R − s_hi) and a stopping particle has its Bragg peak.  A
  track ends where it ranges out, leaves the active volume (straight-line exit
  distance from its start) or reaches its ``max_length_mm`` (an interaction).
* Fluctuations: each step's deposit is the mean (restricted, see δ-rays) plus
  ξ·(M − ⟨M⟩) with M Moyal-distributed (the Moyal approximation of the Landau
  distribution, ξ the Landau width of the step), clipped at 0.
* Multiple scattering: a Gaussian random walk of the direction in the tangent
  plane of the initial direction, mapped back to the sphere by the exponential
  map; per-step width 13.6 MeV/(βcp)·√(step/X₀).
* δ-rays off μ, π, p: Poisson(rate·step) knock-on electrons per step with
  T ∈ [delta_ray_min_mev, T_max] from the 1/T² spectrum, at the kinematic angle
  cosθ = T(E + m_e)/(p_δ p); the continuous deposit is the Bethe mean minus the
  δ-ray mean, so the mean total deposit stays the Bethe mean.
* Electromagnetic showers as branching trees: an electron above
  ``BREM_MIN_MEV`` emits a hard bremsstrahlung photon after Exp(X₀/λ) with
  λ = (4/3)ln(1/y_min) per X₀ and energy fraction y log-uniform in [y_min, 1]
  (the 1/y spectrum; ⟨y⟩ per X₀ ≈ 1, so E falls as e^{−x/X₀}); photons convert
  after Exp(9/7 X₀) (the 18 cm conversion gap) into an e⁺e⁻ pair sharing the
  energy uniformly (E > 10 MeV) or Compton-scatter one electron (flat spectrum
  up to the Compton edge, exact kinematics); photons under ``PHOTON_CUTOFF_MEV``
  are dropped (their few-MeV "blips" are not simulated).
* Stopping muons decay (μ⁺ always, μ⁻ with 25 %, the rest is captured) into a
  Michel electron (spectrum 2x²(3 − 2x), 52.8 MeV end point, isotropic, after
  Exp(2.197 µs)); pions interact inelastically after Exp(λ_int = 86 cm) into a
  proton (20–60 % of T) and a scattered pion (the rest less 30 MeV of binding).

Left out: proton and muon nuclear interactions, π⁻ capture stars, π⁺ → μ⁺
decay chains, neutrons, Møller δ-rays of electrons, the soft (y < y_min)
bremsstrahlung energy (≈ 7 % per X₀, not deposited), positron annihilation
photons, nuclear de-excitation photons.

Coordinates: mm, active volume x ∈ [−2000, 2000] (drift, cathode at x = 0),
y ∈ [−2000, 2000] (vertical, up), z ∈ [0, 5000] (beam).  Times in µs.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from recoil_jax.studies.sbnd import sim_physics as phys

# Active volume (bounds of the SBND Wire-Cell ``params.jsonnet``, ``SBNSoftware/sbndcode``),
# mm: [[x_lo, y_lo, z_lo], [x_hi, y_hi, z_hi]].
ACTIVE_VOLUME_MM = np.array([[-2000.0, -2000.0, 0.0], [2000.0, 2000.0, 5000.0]])

PHOTON = 4  # species code of photons in the stack (charged species: phys.*)
ORIGIN_COSMIC, ORIGIN_NEUTRINO = 1, 2

BREM_MIN_MEV = 10.0  # electrons below this do not radiate (range ≲ 5 cm)
BREM_Y_MIN = 0.05  # smallest simulated bremsstrahlung energy fraction
PHOTON_CUTOFF_MEV = 1.0
PAIR_MIN_MEV = 10.0  # above: pair production, below: Compton scattering
PHOTON_CONVERSION_MM = 9.0 / 7.0 * phys.LAR_RADIATION_LENGTH_MM
PION_INTERACTION_MM = 860.0
MUON_LIFETIME_US = 2.1969811
MICHEL_MAX_MEV = 52.83
MU_MINUS_DECAY_FRACTION = 0.25
_MOYAL_MEAN = 0.5772156649 + math.log(2.0)
_MAX_GENERATIONS = 256


@dataclasses.dataclass(frozen=True)
class Particles:
  """A stack of particles (struct of arrays, n particles).

  Attributes:
    species: [n] int, phys.ELECTRON/MUON/PION/PROTON or PHOTON.
    position_mm: [n, 3] float64 start point, mm.
    direction: [n, 3] float64 unit vector.
    kinetic_mev: [n] float64 kinetic energy (photons: energy), MeV.
    time_us: [n] float64 creation time relative to the beam spill, µs.
    origin: [n] int, ORIGIN_COSMIC or ORIGIN_NEUTRINO.
    charge: [n] int, electric charge sign (used for the μ± decay choice).
    max_length_mm: [n] float64 path length after which the track ends in an
      interaction (inf: none).
  """

  species: np.ndarray
  position_mm: np.ndarray
  direction: np.ndarray
  kinetic_mev: np.ndarray
  time_us: np.ndarray
  origin: np.ndarray
  charge: np.ndarray
  max_length_mm: np.ndarray

  def __len__(self) -> int:
    return int(self.species.shape[0])

  @staticmethod
  def make(species, position_mm, direction, kinetic_mev, time_us, origin,
           charge=None, max_length_mm=None) -> Particles:
    """Builds a stack, broadcasting scalars and normalising directions."""
    kinetic = np.atleast_1d(np.asarray(kinetic_mev, dtype=np.float64))
    n = kinetic.shape[0]

    def column(v, dtype, width=None):
      shape = (n,) if width is None else (n, width)
      out = np.empty(shape, dtype)
      out[...] = v
      return out

    direction = column(direction, np.float64, 3)
    direction /= np.maximum(
        np.sqrt((direction * direction).sum(axis=1, keepdims=True)), 1e-300)
    return Particles(
        species=column(species, np.int64),
        position_mm=column(position_mm, np.float64, 3),
        direction=direction,
        kinetic_mev=kinetic,
        time_us=column(time_us, np.float64),
        origin=column(origin, np.int64),
        charge=column(0 if charge is None else charge, np.int64),
        max_length_mm=column(np.inf if max_length_mm is None else max_length_mm,
                             np.float64))

  def select(self, mask) -> Particles:
    return Particles(*(getattr(self, f.name)[mask]
                       for f in dataclasses.fields(self)))

  @staticmethod
  def concat(stacks) -> Particles:
    stacks = [s for s in stacks if s is not None]
    if not stacks:
      return empty_particles()
    return Particles(*(np.concatenate([getattr(s, f.name) for s in stacks])
                       for f in dataclasses.fields(Particles)))


def empty_particles() -> Particles:
  return Particles.make(0, np.zeros(3), np.array([0.0, 0.0, 1.0]),
                        np.zeros(0), 0.0, ORIGIN_COSMIC)


@dataclasses.dataclass(frozen=True)
class Deposits:
  """Energy deposits, one per step (struct of arrays, n steps).

  Attributes:
    position_mm: [n, 3] float64 step mid-point, mm.
    energy_mev: [n] float64 deposited energy, MeV.
    step_mm: [n] float64 step length, mm (dE/dx = energy / step).
    time_us: [n] float64 deposit time relative to the beam spill, µs.
    origin: [n] int, ORIGIN_COSMIC or ORIGIN_NEUTRINO.
  """

  position_mm: np.ndarray
  energy_mev: np.ndarray
  step_mm: np.ndarray
  time_us: np.ndarray
  origin: np.ndarray

  def __len__(self) -> int:
    return int(self.energy_mev.shape[0])

  @staticmethod
  def concat(parts) -> Deposits:
    parts = list(parts)
    if not parts:
      return Deposits(np.zeros((0, 3)), np.zeros(0), np.zeros(0), np.zeros(0),
                      np.zeros(0, np.int64))
    return Deposits(*(np.concatenate([getattr(p, f.name) for p in parts])
                      for f in dataclasses.fields(Deposits)))


@dataclasses.dataclass(frozen=True)
class TransportOptions:
  """Switches and cuts of the transport (see the module docstring)."""

  step_mm: float = 1.0
  fluctuations: bool = True
  multiple_scattering: bool = True
  delta_rays: bool = True
  delta_ray_min_mev: float = 3.0
  showers: bool = True


def box_exit_distance(position_mm: np.ndarray, direction: np.ndarray,
                      box: np.ndarray = ACTIVE_VOLUME_MM) -> np.ndarray:
  """Distance (mm) along ``direction`` from inside points to the box surface.

  Args:
    position_mm: [n, 3] points (outside points give 0).
    direction: [n, 3] unit vectors.
    box: [2, 3] low and high corners.

  Returns:
    [n] float64 distance ≥ 0.
  """
  with np.errstate(divide="ignore", invalid="ignore"):
    far = np.where(direction > 0, box[1], box[0])
    t = np.where(direction != 0, (far - position_mm) / direction, np.inf)
  inside = np.all((position_mm >= box[0]) & (position_mm <= box[1]), axis=1)
  return np.where(inside, np.maximum(t.min(axis=1), 0.0), 0.0)


def box_entry(position_mm: np.ndarray, direction: np.ndarray,
              box: np.ndarray = ACTIVE_VOLUME_MM):
  """Ray–box intersection (slab method) of lines through points.

  Returns:
    (hit [n] bool, t_in [n], t_out [n]): parameters along ``direction`` (mm)
    where the line enters and leaves the box.
  """
  with np.errstate(divide="ignore", invalid="ignore"):
    t1 = (box[0] - position_mm) / direction
    t2 = (box[1] - position_mm) / direction
  lo = np.where(direction != 0, np.minimum(t1, t2), -np.inf)
  hi = np.where(direction != 0, np.maximum(t1, t2), np.inf)
  # A coordinate with zero direction must already be inside its slab.
  flat_ok = np.where(direction == 0, (position_mm >= box[0]) &
                     (position_mm <= box[1]), True).all(axis=1)
  t_in, t_out = lo.max(axis=1), hi.min(axis=1)
  return flat_ok & (t_in < t_out), t_in, t_out


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Row-wise cross product of [n, 3] arrays (np.cross is slow on small ones)."""
  return np.stack([a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1],
                   a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2],
                   a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]], axis=1)


def orthonormal_frame(d: np.ndarray):
  """Two unit vectors (e1, e2), [n, 3] each, orthogonal to unit vectors d."""
  helper = np.where(np.abs(d[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
  e1 = _cross(d, helper)
  e1 /= np.sqrt((e1 * e1).sum(axis=1, keepdims=True))
  return e1, _cross(d, e1)


def deflect(d: np.ndarray, cos_theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
  """Unit vectors at polar angle θ (azimuth φ) about unit vectors d [n, 3]."""
  e1, e2 = orthonormal_frame(d)
  sin_theta = np.sqrt(np.clip(1.0 - cos_theta**2, 0.0, 1.0))
  return (cos_theta[:, None] * d + sin_theta[:, None] *
          (np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2))


def isotropic(rng: np.random.Generator, n: int) -> np.ndarray:
  """[n, 3] unit vectors uniform on the sphere."""
  c = rng.uniform(-1.0, 1.0, n)
  phi = rng.uniform(0.0, 2.0 * math.pi, n)
  s = np.sqrt(1.0 - c * c)
  return np.stack([s * np.cos(phi), s * np.sin(phi), c], axis=1)


@dataclasses.dataclass(frozen=True)
class _StepResult:
  deposits: Deposits
  end_position: np.ndarray  # [n, 3]
  end_direction: np.ndarray  # [n, 3]
  end_kinetic: np.ndarray  # [n]
  reason: np.ndarray  # [n] 0 ranged out, 1 reached max_length, 2 left volume
  deltas: Particles


RANGED_OUT, INTERACTED, EXITED = 0, 1, 2


def step_tracks(tracks: Particles, rng: np.random.Generator,
                options: TransportOptions) -> _StepResult:
  """Steps charged tracks to their ends (see the module docstring).

  Args:
    tracks: n charged particles (no photons), starting inside the volume.
    rng: random generator.
    options: transport switches.

  Returns:
    The deposits, end states and δ-ray electrons.
  """
  tables = phys.range_tables()
  n = len(tracks)
  sp = tracks.species
  r0 = tables.range_of(sp, tracks.kinetic_mev)
  exit_mm = box_exit_distance(tracks.position_mm, tracks.direction)
  length = np.minimum(np.minimum(r0, tracks.max_length_mm), exit_mm)
  reason = np.where(r0 <= np.minimum(tracks.max_length_mm, exit_mm), RANGED_OUT,
                    np.where(tracks.max_length_mm < exit_mm, INTERACTED, EXITED))
  step = options.step_mm
  nsteps = np.where(length > 0, np.ceil(length / step).astype(np.int64), 0)
  total = int(nsteps.sum())
  tid = np.repeat(np.arange(n), nsteps)
  offsets = np.cumsum(nsteps) - nsteps
  k = np.arange(total) - np.repeat(offsets, nsteps)
  s_lo = k * step
  s_hi = np.minimum((k + 1) * step, length[tid])  # = the next step's s_lo
  ds = s_hi - s_lo
  sp_p = sp[tid]
  r0_p = r0[tid]
  t_lo = tables.kinetic_of(sp_p, r0_p - s_lo)
  # A step ends where the next one of its track starts (s_hi = s_lo of the
  # next step), so only each track's last step needs its own table look-up.
  t_hi = np.empty_like(t_lo)
  t_hi[:-1] = t_lo[1:]
  has = nsteps > 0
  last = (offsets + nsteps - 1)[has]
  t_hi[last] = tables.kinetic_of(sp_p[last], r0_p[last] - s_hi[last])
  # The first step starts at the exact initial energy (table round-off).
  first = k == 0
  t_lo[first] = tracks.kinetic_mev[tid[first]]
  de_mean = np.maximum(t_lo - t_hi, 0.0)
  mass = phys.SPECIES_MASS_MEV[sp_p]
  t_mid = 0.5 * (t_lo + t_hi)
  gamma = 1.0 + t_mid / mass
  beta2 = np.maximum(1.0 - 1.0 / gamma**2, 1e-8)

  # δ-rays off heavy particles.
  de_cont = de_mean
  deltas = empty_particles()
  if options.delta_rays:
    t_c = options.delta_ray_min_mev
    heavy = sp_p != phys.ELECTRON
    t_up = np.where(heavy, phys.max_energy_transfer_mev(t_mid, mass), 0.0)
    active = t_up > t_c
    mean_loss = np.where(
        active, phys.delta_ray_mean_loss_mev_per_mm(beta2, t_c, t_up) * ds, 0.0)
    de_cont = np.maximum(de_mean - mean_loss, 0.0)
    rate = np.where(active, phys.delta_ray_rate_per_mm(beta2, t_c, t_up) * ds, 0.0)
    counts = rng.poisson(rate)
    if counts.any():
      src = np.repeat(np.arange(total), counts)
      inv_lo, inv_hi = 1.0 / t_c, 1.0 / t_up[src]
      t_d = 1.0 / (inv_lo - rng.uniform(size=src.size) * (inv_lo - inv_hi))
      p_d = np.sqrt(t_d * (t_d + 2.0 * phys.ELECTRON_MASS_MEV))
      e_proj = t_mid[src] + mass[src]
      p_proj = np.sqrt(t_mid[src] * (t_mid[src] + 2.0 * mass[src]))
      cos_d = np.clip(t_d * (e_proj + phys.ELECTRON_MASS_MEV) / (p_d * p_proj),
                      -1.0, 1.0)
      delta_src = (src, cos_d, rng.uniform(0.0, 2.0 * math.pi, src.size), t_d)
    else:
      delta_src = None
  else:
    delta_src = None

  de = de_cont
  if options.fluctuations and total:
    z = rng.standard_normal(total)
    moyal = np.minimum(-np.log(np.maximum(z * z, 1e-300)), 50.0)
    xi = phys.landau_xi_mev(ds, beta2)
    de = np.maximum(de_cont + xi * (moyal - _MOYAL_MEAN), 0.0)

  # Directions: tangent-plane random walk (exclusive cumulative sum of kicks).
  d0 = tracks.direction[tid]
  if options.multiple_scattering and total:
    sigma = phys.highland_sigma_rad(t_mid, mass, ds)
    kicks = rng.standard_normal((total, 2)) * sigma[:, None]
    ang = _segment_exclusive_cumsum(kicks, offsets, nsteps)
    e1, e2 = orthonormal_frame(tracks.direction)
    theta = np.linalg.norm(ang, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
      unit = np.where(theta[:, None] > 0, ang / theta[:, None], 0.0)
    perp = unit[:, :1] * e1[tid] + unit[:, 1:] * e2[tid]
    dirs = np.cos(theta)[:, None] * d0 + np.sin(theta)[:, None] * perp
  else:
    dirs = d0
  disp = dirs * ds[:, None]
  starts = tracks.position_mm[tid] + _segment_exclusive_cumsum(disp, offsets, nsteps)
  mids = starts + 0.5 * disp

  deposits = Deposits(position_mm=mids, energy_mev=de, step_mm=ds,
                      time_us=tracks.time_us[tid], origin=tracks.origin[tid])
  end_position = tracks.position_mm.copy()
  end_direction = tracks.direction.copy()
  end_kinetic = tracks.kinetic_mev.copy()
  end_position[has] = starts[last] + disp[last]
  end_direction[has] = dirs[last]
  end_kinetic[has] = t_hi[last]
  if delta_src is not None:
    src, cos_d, phi_d, t_d = delta_src
    deltas = Particles.make(
        phys.ELECTRON, mids[src], deflect(dirs[src], cos_d, phi_d), t_d,
        tracks.time_us[tid[src]], tracks.origin[tid[src]], charge=-1)
  return _StepResult(deposits, end_position, end_direction, end_kinetic, reason,
                     deltas)


def _segment_exclusive_cumsum(v: np.ndarray, offsets: np.ndarray,
                              counts: np.ndarray) -> np.ndarray:
  """Cumulative sum of rows of v [N, ...] excluding the row, per segment."""
  if v.shape[0] == 0:
    return v
  c = np.cumsum(v, axis=0) - v
  has = counts > 0
  base = np.repeat(c[offsets[has]], counts[has], axis=0)
  return c - base


def _michel_energy(rng: np.random.Generator, n: int) -> np.ndarray:
  """Michel spectrum 2x²(3 − 2x), x = E/52.83 MeV (inverse CDF, tabulated)."""
  x = np.linspace(0.0, 1.0, 1025)
  cdf = 2.0 * x**3 - x**4
  return MICHEL_MAX_MEV * np.interp(rng.uniform(size=n), cdf, x)


def _photon_interactions(photons: Particles, rng: np.random.Generator):
  """Moves photons to their conversion points and returns the products."""
  photons = photons.select(photons.kinetic_mev >= PHOTON_CUTOFF_MEV)
  n = len(photons)
  if n == 0:
    return empty_particles(), empty_particles()
  dist = rng.exponential(PHOTON_CONVERSION_MM, n)
  pos = photons.position_mm + photons.direction * dist[:, None]
  inside = np.all((pos >= ACTIVE_VOLUME_MM[0]) & (pos <= ACTIVE_VOLUME_MM[1]),
                  axis=1)
  photons = photons.select(inside)
  pos = pos[inside]
  e = photons.kinetic_mev
  d = photons.direction
  m_e = phys.ELECTRON_MASS_MEV
  pair = e > PAIR_MIN_MEV
  out = []
  if pair.any():
    ep, dp, pp = e[pair], d[pair], pos[pair]
    u = rng.uniform(size=ep.size)
    avail = ep - 2.0 * m_e
    # Opening angles ~ m_e/E, random azimuths.
    theta = m_e / ep
    for frac, charge in ((u, -1), (1.0 - u, 1)):
      t = frac * avail
      phi = rng.uniform(0.0, 2.0 * math.pi, ep.size)
      dd = deflect(dp, np.cos(theta * rng.exponential(1.0, ep.size)), phi)
      out.append(Particles.make(phys.ELECTRON, pp, dd, t,
                                photons.time_us[pair], photons.origin[pair],
                                charge=charge))
  scattered = empty_particles()
  comp = ~pair
  if comp.any():
    ec, dc, pc = e[comp], d[comp], pos[comp]
    k = ec / m_e
    edge = ec * 2.0 * k / (1.0 + 2.0 * k)
    t = rng.uniform(size=ec.size) * edge
    cos_e = np.clip((1.0 + k) / k * np.sqrt(t / (t + 2.0 * m_e)), -1.0, 1.0)
    phi = rng.uniform(0.0, 2.0 * math.pi, ec.size)
    de = deflect(dc, cos_e, phi)
    out.append(Particles.make(phys.ELECTRON, pc, de, t, photons.time_us[comp],
                              photons.origin[comp], charge=-1))
    p_e = np.sqrt(t * (t + 2.0 * m_e))
    p_g = ec[:, None] * dc - p_e[:, None] * de
    scattered = Particles.make(PHOTON, pc, p_g, ec - t, photons.time_us[comp],
                               photons.origin[comp])
  return Particles.concat(out), scattered


def transport(primaries: Particles, rng: np.random.Generator,
              options: TransportOptions = TransportOptions()) -> Deposits:
  """Follows primaries and all their secondaries to energy deposits.

  Args:
    primaries: particles starting inside the active volume (charged tracks and
      photons; neutral hadrons must be removed by the caller).
    rng: random generator.
    options: transport switches.

  Returns:
    All deposits, in generation order.
  """
  parts = []
  stack = primaries
  log_inv_ymin = math.log(1.0 / BREM_Y_MIN)
  brem_per_mm = 4.0 / 3.0 * log_inv_ymin / phys.LAR_RADIATION_LENGTH_MM
  for _ in range(_MAX_GENERATIONS):
    if len(stack) == 0:
      break
    is_photon = stack.species == PHOTON
    new = []
    if is_photon.any():
      if options.showers:
        charged, scattered = _photon_interactions(stack.select(is_photon), rng)
        new += [scattered]
      else:
        charged = empty_particles()
      tracks = Particles.concat([stack.select(~is_photon), charged])
    else:
      tracks = stack
    tracks = tracks.select(tracks.kinetic_mev > 0)
    if len(tracks) == 0:
      stack = Particles.concat(new)
      continue
    # Interaction lengths drawn now (memoryless, so redrawing per piece is exact).
    max_len = tracks.max_length_mm.copy()
    radiates = (tracks.species == phys.ELECTRON) & (
        tracks.kinetic_mev > BREM_MIN_MEV) & options.showers
    if radiates.any():
      max_len[radiates] = np.minimum(
          max_len[radiates], rng.exponential(1.0 / brem_per_mm, radiates.sum()))
    pions = tracks.species == phys.PION
    if pions.any():
      max_len[pions] = np.minimum(
          max_len[pions], rng.exponential(PION_INTERACTION_MM, pions.sum()))
    tracks = dataclasses.replace(tracks, max_length_mm=max_len)
    res = step_tracks(tracks, rng, options)
    parts.append(res.deposits)
    new.append(res.deltas)
    ended = res.reason == INTERACTED

    # Bremsstrahlung: photon with y·T, the electron continues with (1 − y)·T.
    brem = ended & (tracks.species == phys.ELECTRON)
    if brem.any():
      t_end = res.end_kinetic[brem]
      y = np.exp(-log_inv_ymin * (1.0 - rng.uniform(size=t_end.size)))
      common = (res.end_position[brem], res.end_direction[brem])
      times, origins = tracks.time_us[brem], tracks.origin[brem]
      new.append(Particles.make(PHOTON, *common, y * t_end, times, origins))
      new.append(Particles.make(phys.ELECTRON, *common, (1.0 - y) * t_end, times,
                                origins, charge=tracks.charge[brem]))

    # Pion inelastic interaction: a proton and a scattered pion.
    hit = ended & (tracks.species == phys.PION)
    if hit.any():
      t_end = res.end_kinetic[hit]
      m = int(hit.sum())
      t_p = rng.uniform(0.2, 0.6, m) * t_end
      t_pi = t_end - t_p - 30.0
      pos, times, origins = res.end_position[hit], tracks.time_us[hit], tracks.origin[hit]
      new.append(Particles.make(phys.PROTON, pos, isotropic(rng, m), t_p, times,
                                origins, charge=1))
      dpi = deflect(res.end_direction[hit], rng.uniform(0.0, 1.0, m),
                    rng.uniform(0.0, 2.0 * math.pi, m))
      keep = t_pi > 1.0
      new.append(Particles.make(phys.PION, pos[keep], dpi[keep], t_pi[keep],
                                times[keep], origins[keep],
                                charge=tracks.charge[hit][keep]))

    # Stopped muons: Michel electron (μ⁺ always, μ⁻ 25 %).
    stopped_mu = (res.reason == RANGED_OUT) & (tracks.species == phys.MUON)
    if stopped_mu.any():
      p_decay = np.where(tracks.charge[stopped_mu] > 0, 1.0,
                         MU_MINUS_DECAY_FRACTION)
      decays = rng.uniform(size=p_decay.size) < p_decay
      m = int(decays.sum())
      if m:
        idx = np.flatnonzero(stopped_mu)[decays]
        new.append(Particles.make(
            phys.ELECTRON, res.end_position[idx], isotropic(rng, m),
            _michel_energy(rng, m),
            tracks.time_us[idx] + rng.exponential(MUON_LIFETIME_US, m),
            tracks.origin[idx], charge=tracks.charge[idx]))
    stack = Particles.concat(new)
  return Deposits.concat(parts)
