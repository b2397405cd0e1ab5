"""Optional physics of the electron-recoil simulator: δ-rays, straggling, spread.

``recoil_jax.physics.electron_recoils.simulate_electron_recoils`` calls this module when
any of its switches ``delta_rays``, ``straggling`` or ``electron_spread`` is on; with all three
off this module is not used and the simulator is bit for bit what it was before them.
Each switch is independent (the ablation ``scripts/tpc_physics_ablation.py`` adds them
one at a time); they share the δ-ray cut T_c (``delta_cut_kev``, default 1 keV).

1. Møller δ-rays (``delta_rays``).  Energy transfers W ≥ T_c to atomic electrons
   (treated as free and at rest; binding ≤ 0.53 keV < T_c) become explicit
   secondaries.  Production is a Poisson process along the path with rate
   Σ_δ(E) = n_e ∫_{T_c}^{E/2} dσ_M/dW dW per mm (closed form,
   ``gas.delta_ray_rate_per_mm``; n_e = all electrons of the gas), sampled in the
   transport step as a third free path beside the elastic one and the 20 %
   energy-loss cap; the continuous loss is then the *restricted* stopping power
   (``gas.restricted_dedx_kev_per_mm`` = collision dE/dx − n_e ∫_{T_c}^{E/2} W dσ_M,
   equal to the Berger–Seltzer restricted formula), so nothing is counted twice.
   At a δ event W = x E with x drawn from the Møller spectrum
   dσ_M/dx ∝ (τ/γ)² + 1/x² + 1/(1−x)² − (2γ−1)/γ² · 1/(x(1−x)) on [T_c/E, ½]
   (exact inverse CDF by Newton iterations on the closed-form CDF); the δ leaves at
   cos θ_δ = √(W(E+2m)/(E(W+2m))), the primary continues with E − W at
   cos θ_p = √((E−W)(E+2m)/(E(E−W+2m))) on the opposite azimuth (two-body
   kinematics: momentum is conserved exactly).  Every δ is queued on its track and
   transported afterwards by the same walker with the same physics (elastic
   scattering, restricted loss, its own δ-rays: full recursion, all generations),
   until the queue is empty.  Rates (He:CO₂ 70:30, 20 °C, T_c = 1 keV, [computed]):
   0.32 δ/cm at 40 keV (physics-facts §1c: ~0.35), 2.5 per 40 keV track and 3.2 per
   50 keV track from ∫ Σ_δ/(dE/dx) dE (§1c: 2–3); the δ energies are mostly 1–2 keV
   (median 1.9 keV for a 40 keV parent), i.e. side branches of R_CSDA(1–2 keV) =
   0.09–0.27 mm (§1c: 0.1–0.3 mm).  Measured by the tests: the production rate per
   mm along the primary's path (time-rescaling KS test) and the δ spectrum given
   the parent energy, against these formulas.

2. Energy-loss straggling (``straggling``).  The loss on a step of length s from
   transfers below T_c (the mean being the CSDA or restricted-CSDA loss ΔĒ) is split
   as in Bethe's theory into
   * close collisions, W ∈ [ε_c, min(T_c, E/2)] on quasi-free electrons with the
     Rutherford spectrum K/W² (K = 2π r_e² mc² n_e/β²): a Poisson number of mean
     s K (1/ε_c − 1/ε_hi), each W from 1/W² (inverse CDF); ε_c = 0.15 keV;
   * distant collisions (excitation and ionisation of bound electrons, the rest of
     ΔĒ): a Poisson number of quanta of the mixture's mean excitation energy
     I = 75 eV (the single-level limit of Urbán's model, Geant4 Physics Reference
     Manual, "Fluctuations in energy loss");
   * without ``delta_rays``, the mean loss to transfers above T_c, s n_e ∫ W dσ_M,
     stays continuous (no fluctuation).
   The mean is ΔĒ exactly; the variance is close_mean (ε_hi − ε_c)/ln(ε_hi/ε_c) +
   distant_mean · I (``energy_loss_moments``, tested).  At 40 keV a 0.27 mm step
   (one elastic mean free path) has ΔĒ ≈ 0.10 keV and σ ≈ 0.12 keV (similar at
   10 and 3 keV, whose steps are shorter): thin gas steps are Landau-like, with
   about a third of the steps losing nothing.  The energy after a step is
   E − ΔE, so ranges straggle too; the deposit of a step is its sampled loss, so
   the ionisation density along the track fluctuates, and the total is still E₀.
   The last step of a particle (its mean loss ends at the cutoff) is not
   fluctuated, so that every particle ends in a bounded number of steps.

3. Spread of the ionisation electrons about the path (``electron_spread``).
   Replaces the ad-hoc Gaussian ``thermal_jitter_mm`` by
   * a thermalisation core: isotropic Gaussian whose mean 3-D distance is the
     geminate electron–ion separation in liquid water, scaled by the
     electron-density ratio water/gas. The water value is an assumption at the
     upper end of what is measured: 2.1–2.4 nm after 12.4 eV photoionisation
     (Lian et al., arXiv physics/0407148), several nm for the more energetic
     secondaries of radiolysis; 10 nm is taken, which gives 16.7 µm mean distance
     (σ = 10.5 µm per axis) in He:CO₂ 70:30 at 760 torr and 20 °C, ∝ 1/density at
     other pressures or temperatures. Even this upper value is far below the
     200–466 µm diffusion smearing and the 500 µm voxels (the NML ablation sees no
     change), so the exact number does not matter here;
   * a tail from the close-collision secondaries (W ∈ [ε_c, min(T_c, E/2)]): the
     fraction f(E) of the local deposit that goes to them (≈ 19 % at 40 keV, 26 % at
     3 keV) is displaced isotropically by a distance uniform on [0, ½ R_CSDA(W)],
     W log-uniform (the energy-weighted 1/W² spectrum); R_CSDA(1 keV) = 0.09 mm, and
     the reach of a sub-keV electron (λ_tr ≈ R) is about half its path.
   Each ionisation electron is displaced independently (the mean profile, not the
   clumping of one secondary's electrons).

Left out, with the reason:

* Auger electrons and fluorescence after K-shell ionisation of C (0.28 keV) and O
  (0.53 keV).  A 40 keV track ionises ~2.8 C and ~2.4 O K shells ([computed]:
  ∫ n_K σ_K / (dE/dx) dE with the Bethe-asymptotic σ_K = π e⁴ n b ln(c U)/(E B),
  b = 0.9, c = 0.65 (Powell's non-relativistic form; σ_K(C) = 0.8·10⁻¹⁹ cm² at
  20 keV), a factor ~2 uncertain), ~2 keV of binding in all.  Auger emission
  dominates (fluorescence yields ω_K = 0.0026 for C and 0.0083 for O, Krause,
  J. Phys. Chem. Ref. Data 8, 307 (1979)), and an Auger electron of ≤ 0.5 keV stops
  within R_CSDA(0.5 keV) = 27 µm of the collision, where this model already puts
  that energy (it is part of the close-collision loss and of the spread above):
  nothing to add at the 500 µm voxel and ≥ 160 µm diffusion scale.  Fluorescence
  photons: 2.8·0.0026 + 2.4·0.0083 ≈ 0.03 per track, each ≤ 0.53 keV of 40 keV
  (< 0.04 % of the energy on average), ignored.
* Binding effects on δ-ray kinematics and on close collisions (K-shell electrons
  cannot take W < 0.28/0.53 keV), and molecular/solid-state corrections.

Randomness.  The baseline streams (steps, ion-pair count, placement, jitter normals)
are drawn exactly as in ``sim``; the new physics draws from separate keys
(``fold_in(track_key, _PHYSICS_KEY)``), 8 uniforms per step and 4 per electron
(16-bit, from 4 and 2 random 32-bit words).  So a track with a switch on shares the
baseline's random numbers, and the ablation rows are correlated (smaller differences
between rows than between independent samples).

Implementation notes (speed, CPU).  The samplers are those of the study-agnostic
``recoil_jax.physics.electron_transport``.  In the transport step the straggling
sampler and the δ-ray emission (Møller energy and the two rotations) each run inside
a ``lax.cond``: its result is materialised once per step, whereas inlined XLA
duplicated the ~400-op sampler into every fusion that consumes the new energy (4-5x
the work).  The δ queue is one packed [C, Q, 9] array (one scatter and one gather per
step instead of five and four).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from recoil_jax.physics import electron_transport as et
from recoil_jax.physics import gas as gas_lib
from recoil_jax.physics.gas import GasMixture
from recoil_jax.physics import electron_recoils as sim_lib

# The samplers, under the names this module has always exported.
sample_moller_fraction = et.sample_moller_fraction
moller_angles = et.moller_angles
sample_poisson = et.sample_poisson
sample_energy_loss = et.sample_energy_loss
energy_loss_moments = et.energy_loss_moments
_words_to_uniforms = et.words_to_uniforms

# Lower edge of the close (quasi-free, 1/W²) collisions, keV: ~6-10x the valence
# binding energies (He 24.6 eV, CO2 13.8 eV) and the table limit T_MIN_KEV.
CLOSE_MIN_KEV = 0.15
# Reach of a sub-keV secondary as a fraction of its CSDA range (the displacement of
# its ionisation is uniform on [0, fraction x R]).
SPREAD_REACH_FRACTION = 0.5
# Geminate electron-ion separation in liquid water, nm: an upper-end assumption
# (2.1-2.4 nm measured after 12.4 eV photoionisation, arXiv physics/0407148).
THERMALISATION_NM_WATER = 10.0
WATER_ELECTRON_DENSITY_PER_CM3 = 3.3428e23  # 10 electrons x 1.0 g/cm3 / 18.0153 g/mol
# Uniforms per transport step drawn for the new physics (columns):
# 0 δ free path, 1 Møller x, 2 δ azimuth, 3 close count, 4-6 close energies,
# 7 distant count.  16-bit each, two per 32-bit random word (as for the
# electrons below): enough resolution for all of them (e.g. a δ free path is
# cut at 11.8 mean free paths, probability 1.5e-5), at half the cost.
_NUM_STEP_UNIFORMS = 8
# Uniforms per ionisation electron for the spread (close? and distance, W, cos θ,
# φ), 16-bit each, two per 32-bit random word.
_NUM_ELECTRON_WORDS = 2
# Key of the new physics' random streams, folded into each track's key.
_PHYSICS_KEY = 0x5E1F
# Columns of the packed δ-ray queue: origin (3), direction (3), energy, parent
# energy (keV), generation (as float32: exact for small integers).
_QUEUE_COLUMNS = 9


def thermalisation_sigma_mm(gas: GasMixture) -> float:
  """σ per axis of the thermalisation core (mean 3-D distance = σ √(8/π)), mm."""
  mean_mm = THERMALISATION_NM_WATER * 1e-6 * (
      WATER_ELECTRON_DENSITY_PER_CM3 / gas_lib.electron_density_per_cm3(gas))
  return mean_mm / math.sqrt(8.0 / math.pi)


@dataclasses.dataclass(frozen=True)
class PhysicsTables:
  """Per-energy columns on the transport tables' log-E grid, and scalars.

  by_energy columns: δ rate per mm (0 without δ-rays), continuous loss per mm to
  transfers above T_c (0 with δ-rays: then it is explicit), fraction of the
  continuous loss in close collisions (for the spread).
  """

  by_energy: np.ndarray  # [P, 3] float32
  delta_cut_kev: float
  k0_kev_per_mm: float  # 2π r_e² mc² n_e
  close_min_kev: float
  quantum_kev: float  # mean excitation energy I, keV
  core_sigma_mm: float


@functools.lru_cache(maxsize=16)
def build_physics_tables(gas: GasMixture, delta_cut_kev: float,
                         delta_rays: bool) -> PhysicsTables:
  """Tables of the optional physics on ``sim``'s log-E grid (float64 -> float32)."""
  e = np.geomspace(gas_lib.T_MIN_KEV, gas_lib.T_MAX_KEV, sim_lib._TABLE_POINTS)
  cols = et.loss_table_columns(gas, e, delta_cut_kev, delta_rays=delta_rays,
                               close_min_kev=CLOSE_MIN_KEV)
  return PhysicsTables(
      by_energy=cols.astype(np.float32),
      delta_cut_kev=float(delta_cut_kev),
      k0_kev_per_mm=et.close_collision_constant_kev_per_mm(gas),
      close_min_kev=CLOSE_MIN_KEV,
      quantum_kev=gas_lib.mean_excitation_energy_ev(gas) * 1e-3,
      core_sigma_mm=thermalisation_sigma_mm(gas),
  )


# ---------------------------------------------------------------------------
# Electron spread (the samplers of δ-rays and straggling are in
# recoil_jax.physics.electron_transport)
# ---------------------------------------------------------------------------


def _bits_sampler(key, shape, dtype):
  del dtype
  return jax.random.bits(key, shape, jnp.uint32)


def spread_displacements(e_seg, v, normals, *, log_range, frac_close, log_e0, dlog_e,
                         delta_cut, eps_c, core_sigma_mm):
  """Displacements of ionisation electrons from their points on the path, mm.

  Core: ``core_sigma_mm`` × ``normals`` (isotropic Gaussian).  Tail: with
  probability f(E) (``frac_close``, the close-collision share of the local loss at
  the segment's energy E) a secondary of energy W, log-uniform on
  [ε_c, min(T_c, E/2)], displaces the electron isotropically by
  ξ · ``SPREAD_REACH_FRACTION`` · R_CSDA(W), ξ ~ U(0, 1).  The decision and ξ
  share one uniform v₀: given v₀ < f, ξ = v₀/f is U(0, 1) and independent of the
  decision (16-bit v₀ leaves ξ ≥ 0.19 × 65536 ≈ 12 000 levels).

  Args:
    e_seg: [...] energy of the particle on the electron's segment, keV.
    v: [..., 4] uniforms (close? and ξ, W, cos θ, φ).
    normals: [..., 3] standard normals.
    log_range, frac_close: [P] tables (log R_CSDA in mm, f) on the log-E grid
      (log_e0, dlog_e).
    delta_cut, eps_c: T_c and ε_c, keV.
    core_sigma_mm: σ per axis of the core, mm.

  Returns:
    [..., 3] displacements, mm.
  """
  def tail_distance(e_seg, v):
    e_seg = jnp.maximum(e_seg, gas_lib.T_MIN_KEV)
    f_close = sim_lib._interp(frac_close, log_e0, dlog_e, jnp.log(e_seg))
    eps_hi = jnp.minimum(delta_cut, 0.5 * e_seg)
    close = (v[..., 0] < f_close) & (eps_hi > eps_c)
    xi = v[..., 0] / jnp.where(close, f_close, 1.0)
    # log W directly (W = ε_c (ε_hi/ε_c)^v₁): the range table is in log E.
    log_w = jnp.log(eps_c) + v[..., 1] * jnp.log(jnp.maximum(eps_hi / eps_c, 1.0))
    reach = SPREAD_REACH_FRACTION * jnp.exp(
        sim_lib._interp(log_range, log_e0, dlog_e, log_w))
    return jnp.where(close, xi * reach, 0.0)

  # A cond (its predicate is always true) so that XLA computes the distance once
  # per electron, not once per coordinate (~25 % less time).
  r = jax.lax.cond(jnp.any(e_seg > -1.0), tail_distance,
                   lambda e_seg, v: jnp.zeros_like(e_seg), e_seg, v)
  cos_t = 2.0 * v[..., 2] - 1.0
  sin_t = jnp.sqrt(jnp.maximum(1.0 - cos_t * cos_t, 0.0))
  phi = 2.0 * math.pi * v[..., 3]
  disp = jnp.stack([sin_t * jnp.cos(phi), sin_t * jnp.sin(phi), cos_t], -1)
  return core_sigma_mm * normals + r[..., None] * disp


# ---------------------------------------------------------------------------
# Transport with the optional physics
# ---------------------------------------------------------------------------


def _physics_step(carry, inputs, *, tabs, ptabs, cutoff, max_steps, delta, straggle,
                  num_queue):
  """One masked step of the walkers (primary, then its queued δ-rays).

  A walker is in one of three phases: 0 transport; 1 its particle has ended and a
  queued δ is waiting: this step puts the particle's residual ``cutoff`` energy at
  its end point (a zero-length segment) and loads the δ; 2 this step moves to the δ's
  origin (a segment with no deposit).  Outputs per step: end point, deposit, and the
  energy at the step start (for the spread).

  Carry: (pos [C,3] mm, dir [C,3], E [C] keV, table row [C, 2 + K - 1], alive [C],
  primary path [C] mm, step, phase [C], generation [C], queue [C, Q, 9] (origin,
  direction, energy, parent energy, generation), pushed [C], popped [C],
  overflow [C]).  Inputs: u [C, 4] (as ``sim``), x [C, 8] uniforms.
  """
  u, x = inputs
  (by_energy, log_e0, dlog_e, log_e_of_log_r, log_r0, dlog_r, eta_coef,
   eta_z2, range_cut) = tabs
  phys, delta_cut, k0, eps_c, quantum = ptabs
  (pos, d, e, row, alive, path, step, phase, gen, queue, n_push, n_pop,
   overflow) = carry
  active = alive & (step < max_steps)
  moving = active & (phase == 0)
  popping = active & (phase == 1)
  jumping = active & (phase == 2)
  e_start = e

  r_e = jnp.exp(row[:, 0])
  lam = jnp.exp(row[:, 1])
  e_tgt = jnp.maximum((1.0 - sim_lib._MAX_STEP_LOSS_FRACTION) * e, cutoff)
  tgt_is_cut = e_tgt <= cutoff
  r_tgt = jnp.where(
      tgt_is_cut, range_cut,
      jnp.exp(sim_lib._interp(by_energy[:, 0], log_e0, dlog_e, jnp.log(e_tgt))))
  s_allow = jnp.maximum(r_e - r_tgt, 0.0)
  s_el = -lam * jnp.log1p(-u[:, 0])
  p_row = sim_lib._interp(phys, log_e0, dlog_e, jnp.log(e))
  if delta:
    mu = p_row[:, 0]
    s_d = jnp.where(mu > 0, -jnp.log1p(-x[:, 0]) / jnp.where(mu > 0, mu, 1.0),
                    jnp.inf)
  else:
    s_d = jnp.full_like(s_el, jnp.inf)
  s_ev = jnp.minimum(s_el, s_d)
  collide = s_ev < s_allow
  is_delta = collide & (s_d < s_el)
  s = jnp.where(collide, s_ev, s_allow)
  r_new = jnp.maximum(r_e - s, 1e-30)
  e_coll = jnp.exp(sim_lib._interp(log_e_of_log_r, log_r0, dlog_r, jnp.log(r_new)))
  e_mean = jnp.where(collide, jnp.minimum(e_coll, e), e_tgt)
  last = ~collide & tgt_is_cut
  if straggle:
    # In a cond so that XLA materialises the loss once (see the module docstring);
    # with no walker moving the loss is unused.
    loss = jax.lax.cond(
        jnp.any(moving),
        lambda a: et.sample_energy_loss(*a, k0=k0, eps_c=eps_c, cut=delta_cut,
                                        quantum=quantum),
        lambda a: jnp.zeros_like(a[0]),
        (e - e_mean, s, e, p_row[:, 1], x[:, 3:8]))
    e_new = jnp.where(last, e_mean, e - loss)
  else:
    e_new = e_mean
  end = last | (e_new <= cutoff)
  e_new = jnp.where(end, cutoff, e_new)

  s = jnp.where(moving, s, 0.0)
  dep = jnp.where(moving, e - e_new, 0.0)
  pos_out = pos + s[:, None] * d

  e_fin = e_new
  rows = jnp.arange(e.shape[0])
  if delta:
    emit = moving & is_delta & ~end & (e_new > 2.0 * delta_cut)

    def emission(a):
      e_new, d, x1, x2 = a
      w = et.sample_moller_fraction(e_new, delta_cut, x1) * e_new
      w = jnp.where(emit, w, 0.0)
      cos_p, sin_p, cos_d, sin_d = et.moller_angles(jnp.where(emit, e_new, 2.0),
                                                    jnp.where(emit, w, 1.0))
      phi = 2.0 * math.pi * x2
      return (w, sim_lib._rotate(d, cos_p, sin_p, phi),
              sim_lib._rotate(d, cos_d, sin_d, phi + math.pi))

    # Emission is rare (~6 of 1024 walkers per step): a cond materialises it once.
    w, d_prim, d_delta = jax.lax.cond(
        jnp.any(emit), emission,
        lambda a: (jnp.zeros_like(a[0]), a[1], a[1]), (e_new, d, x[:, 1], x[:, 2]))
    e_fin = jnp.where(emit, e_new - w, e_new)
    slot = jnp.where(emit, n_push, num_queue)  # out of range: dropped
    entry = jnp.concatenate(
        [pos_out, d_delta, w[:, None], e_new[:, None],
         (gen + 1).astype(jnp.float32)[:, None]], axis=1)
    queue = queue.at[rows, slot].set(entry, mode="drop")
    overflow = overflow | (emit & (n_push >= num_queue))
    n_push = n_push + emit.astype(jnp.int32)
    # The next queued particle, loaded by walkers in phase 1.
    nxt = queue[rows, jnp.minimum(n_pop, num_queue - 1)]
    e_fin = jnp.where(popping, nxt[:, 6], e_fin)

  row_new = sim_lib._interp(by_energy, log_e0, dlog_e, jnp.log(e_fin))
  d_new = sim_lib.elastic_deflection(d, e_new, row_new, u[:, 1:4], eta_coef, eta_z2)
  scatter = moving & collide & ~is_delta & ~end
  d = jnp.where(scatter[:, None], d_new, d)

  path = path + jnp.where(gen == 0, s, 0.0)
  ended = moving & end
  out_dep = dep
  if delta:
    d = jnp.where(emit[:, None], d_prim, d)
    has_next = n_pop < n_push
    out_dep = jnp.where(popping, e, out_dep)  # residual at the end point
    pos = jnp.where(popping[:, None], nxt[:, 0:3], pos_out)
    d = jnp.where(popping[:, None], nxt[:, 3:6], d)
    gen = jnp.where(popping, nxt[:, 8].astype(jnp.int32), gen)
    n_pop = n_pop + popping.astype(jnp.int32)
    e = jnp.where(moving | popping, e_fin, e)
    row = jnp.where((moving | popping)[:, None], row_new, row)
    phase = jnp.where(ended & has_next, 1,
                      jnp.where(popping, 2, jnp.where(jumping, 0, phase)))
    alive = alive & ~(ended & ~has_next)
    # Phase-2 walkers output their (new) position: the jump segment, no deposit.
  else:
    pos = pos_out
    e = jnp.where(moving, e_fin, e)
    row = jnp.where(moving[:, None], row_new, row)
    alive = alive & ~ended
  new_carry = (pos, d, e, row, alive, path, step + 1, phase, gen, queue, n_push,
               n_pop, overflow)
  return new_carry, (pos_out, out_dep, e_start)


@functools.partial(
    jax.jit, static_argnames=("max_steps", "capacity", "num_blocks", "delta",
                              "straggle", "spread", "num_queue"))
def simulate_chunk(track_keys, e0, tabs, ptabs, cutoff, w_kev, fano, jitter_mm,
                   core_sigma_mm, *, max_steps: int, capacity: int, num_blocks: int,
                   delta: bool, straggle: bool, spread: bool, num_queue: int):
  """``sim._simulate_chunk`` with the optional physics (same random streams).

  Returns the same dict plus ``num_delta`` [C], ``delta_kev``,
  ``delta_parent_kev``, ``delta_generation`` [C, num_queue] and ``overflow`` [C].
  """
  c = e0.shape[0]
  num_slots = num_blocks * sim_lib._BLOCK_STEPS
  k_steps, k_ion = jax.vmap(lambda k: tuple(jax.random.split(k)))(track_keys)
  k_phys = jax.vmap(lambda k: jax.random.fold_in(k, _PHYSICS_KEY))(track_keys)
  k_phys_steps, k_phys_ion = jax.vmap(lambda k: tuple(jax.random.split(k)))(k_phys)
  step_fn = functools.partial(
      _physics_step, tabs=tabs, ptabs=ptabs, cutoff=cutoff, max_steps=max_steps,
      delta=delta, straggle=straggle, num_queue=num_queue)

  def block_body(state):
    carry, ends_buf, dep_buf, e_buf, b = state
    keys = jax.vmap(lambda k: jax.random.fold_in(k, b))(k_steps)
    u = jax.vmap(lambda k: jax.random.uniform(
        k, (sim_lib._BLOCK_STEPS, 4), jnp.float32))(keys)
    pkeys = jax.vmap(lambda k: jax.random.fold_in(k, b))(k_phys_steps)
    x = et.words_to_uniforms(jax.vmap(lambda k: jax.random.bits(
        k, (sim_lib._BLOCK_STEPS, _NUM_STEP_UNIFORMS // 2), jnp.uint32))(pkeys))
    carry, (ends, deps, es) = jax.lax.scan(
        step_fn, carry, (jnp.swapaxes(u, 0, 1), jnp.swapaxes(x, 0, 1)))
    start = b * sim_lib._BLOCK_STEPS
    zero = jnp.zeros((), start.dtype)
    ends_buf = jax.lax.dynamic_update_slice(ends_buf, ends, (start, zero, zero))
    dep_buf = jax.lax.dynamic_update_slice(dep_buf, deps, (start, zero))
    e_buf = jax.lax.dynamic_update_slice(e_buf, es, (start, zero))
    return carry, ends_buf, dep_buf, e_buf, b + 1

  def block_cond(state):
    carry, _, _, _, b = state
    alive, step = carry[4], carry[6]
    return jnp.any(alive) & (b < num_blocks) & (step < max_steps)

  pos0 = jnp.zeros((c, 3), jnp.float32)
  dir0 = jnp.zeros((c, 3), jnp.float32).at[:, 2].set(1.0)
  row0 = sim_lib._interp(tabs[0], tabs[1], tabs[2], jnp.log(e0))
  zi = jnp.zeros((c,), jnp.int32)
  carry0 = (pos0, dir0, e0, row0, e0 > cutoff, jnp.zeros((c,), jnp.float32),
            jnp.int32(0), zi, zi,
            jnp.zeros((c, num_queue, _QUEUE_COLUMNS), jnp.float32), zi, zi,
            jnp.zeros((c,), bool))
  ends0 = jnp.zeros((num_slots, c, 3), jnp.float32)
  dep0 = jnp.zeros((num_slots, c), jnp.float32)
  e_buf0 = jnp.zeros((num_slots, c), jnp.float32)
  carry, ends_buf, dep_buf, e_buf, _ = jax.lax.while_loop(
      block_cond, block_body, (carry0, ends0, dep0, e_buf0, jnp.int32(0)))
  (pos_end, _, e_end, _, alive, path, steps_run, _, _, queue, n_push, _,
   overflow) = carry
  run = jnp.arange(num_slots) < steps_run
  ends_buf = jnp.where(run[:, None, None], ends_buf, pos_end[None])

  pts = jnp.concatenate([pos0[None], ends_buf, pos_end[None]], axis=0)
  pts = jnp.swapaxes(pts, 0, 1)  # [C, S + 2, 3]
  deps = jnp.concatenate([dep_buf, e_end[None]], axis=0).T  # [C, S + 1]
  ion = sim_lib.place_ionisation(k_ion, e0, pts, deps, w_kev, fano, capacity)
  xyz = ion["xyz"]
  if spread:
    phys, delta_cut, _, eps_c, _ = ptabs
    words = jax.vmap(functools.partial(
        sim_lib._blocked_draws, sampler=_bits_sampler, n=capacity,
        width=_NUM_ELECTRON_WORDS))(k_phys_ion)
    v = et.words_to_uniforms(words)
    e_seg_all = jnp.concatenate([e_buf, e_end[None]], axis=0).T  # [C, S + 1]
    e_seg = jnp.take_along_axis(e_seg_all, ion["seg"], axis=1)
    xyz = xyz + spread_displacements(
        e_seg, v, ion["normals"], log_range=tabs[0][:, 0], frac_close=phys[:, 2],
        log_e0=tabs[1], dlog_e=tabs[2], delta_cut=delta_cut, eps_c=eps_c,
        core_sigma_mm=core_sigma_mm)
  else:
    xyz = xyz + jitter_mm * ion["normals"]
  xyz = jnp.where(ion["valid"][..., None], xyz, 0.0)
  return dict(positions=xyz, num_raw=ion["num_raw"], path=path, alive=alive,
              deposited=ion["total"], num_delta=n_push, delta_kev=queue[..., 6],
              delta_parent_kev=queue[..., 7],
              delta_generation=queue[..., 8].astype(jnp.int32), overflow=overflow)
