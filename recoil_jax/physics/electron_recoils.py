"""Toy electron-recoil transport in a gas, with DEGRAD-shaped output.

Study-agnostic (the gas is an argument): the TPC study (seed 001, He:CO₂ 70:30) simulates
its tracks with it, and the CYGNO study (seed 003, He:CF₄ 60:40) its electron recoils.

What it models (standard formulas; the tables are built in ``recoil_jax.physics.gas``):

* A primary electron of kinetic energy E₀ starts at the origin along +z (as
  DEGRAD launches it) and is followed by a single-scattering random walk:
  free paths ~ Exp(λ_el(E)); between collisions the energy falls
  continuously along the CSDA range curve (ICRU 37 / ESTAR collision stopping
  power, Bragg additivity, ``gas.py``), so energy loss is exact for the
  continuous-slowing-down model; the target atom (He, C, O, ...) is drawn
  ∝ nᵢσᵢ(E); the polar angle follows the screened-Rutherford (Wentzel,
  Molière screening) cross section, cosθ = 1 − 2ηξ/(1 + η − ξ), the azimuth
  is uniform.  A step is also limited so that the energy loss per step is at
  most 20 % of E (a limited step ends without a collision and the free path
  is redrawn at the new energy: free paths are memoryless), and the last step
  ends exactly where E reaches ``cutoff_kev``; the remaining ``cutoff_kev`` is
  deposited at the end point.
* Ionisation: the number of ionisation electrons of a track is
  N = round(Normal(E₀/W, √(F·E₀/W))) (Fano factor F), and the N electrons are
  distributed over the path in proportion to the energy deposited on each
  segment (a multinomial draw by inverse-CDF sampling of N ordered uniforms
  over the cumulative deposit, the local end deposit included), uniformly
  within a segment, then displaced by isotropic Gaussian thermalisation
  jitter.  Electrons are ordered along the path (DEGRAD orders them in time).

Optional physics, each behind its own switch of ``simulate_electron_recoils``
and off by default (then this module runs exactly as before the switches
existed, bit for bit; ``electron_recoil_physics`` holds the models, their references and
numbers): ``delta_rays`` (Møller δ-rays above ``delta_cut_kev``, ~2.5 above
1 keV per 40 keV track, transported like the primary, all generations, with
the restricted stopping power for the continuous loss), ``straggling``
(energy-loss fluctuations below the cut: Poisson close collisions with the
1/W² spectrum and distant collisions in quanta of the mean excitation
energy), ``electron_spread`` (thermalisation core and close-collision
secondaries' spread of the ionisation electrons, replacing the Gaussian
``thermal_jitter_mm``).

What it leaves out (by default: δ-rays, straggling and the spread above; always:)
Auger electrons and fluorescence (quantified in ``electron_recoil_physics``: local at the
500 µm scale), Mott (spin/relativistic) and molecular corrections to the
elastic cross section, inelastic angular deflections, the shell corrections of
the stopping power below ~10 keV, diffusion in the drift field (apply it
downstream) and any detector response.  Without ``straggling`` and
``delta_rays`` the path length of a track is the deterministic CSDA range from
E₀ to the cutoff.  The output is a simulation, not data.

Implementation: JAX, float32, jit-compiled.  Tracks are processed in chunks,
each one jitted XLA call, ``workers`` chunks at a time on a thread pool (a
running XLA call releases the GIL; see ``simulate_electron_recoils``): XLA
spreads one chunk over both cores of an idle 2-core machine only partly
(CPU/wall 1.77), two chunks fill them (1.94; 18 % more tracks/s with δ-rays,
straggling and spread on).  Inside a chunk all tracks advance together
through masked steps: a ``lax.scan`` over blocks of ``_BLOCK_STEPS`` steps
inside a ``lax.while_loop`` that stops as soon as every track of the chunk has
reached the cutoff (or ``max_steps`` is reached).  Interpolation tables
(uniform grids in log E and log R, computed in numpy float64 and cast to
float32) are passed as arguments, so a new gas or cutoff does not recompile;
the compiled shapes are the chunk size, ``max_steps`` and the electron capacity
per track (E/W + 8σ of the highest energy, rounded up to 256, at most
``max_electrons``).

Randomness: every track draws from its own key ``fold_in(key(seed), i)``
(``i`` = track index in the call), in fixed blocks of steps and of electrons
folded in by block index.  The output is therefore independent of
``chunk_size``, ``workers``, ``max_steps`` and ``max_electrons`` (as long as
they raise no error), and track ``i`` is the same whatever ``num_tracks`` and
the other tracks' energies are.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from recoil_jax.physics import gas as gas_lib
from recoil_jax.physics.gas import GasMixture, HE_CO2_70_30

# Steps per `lax.scan` block; the while loop stops after the first block in
# which every track of the chunk has finished.
_BLOCK_STEPS = 64
# Points of the interpolation tables.
_TABLE_POINTS = 1024
# Ionisation electrons per block of random draws (see `_blocked_draws`); the
# electron capacity of a chunk is a multiple of it (or max_electrons).
_ELECTRON_BLOCK = 256
# Largest energy loss per step, as a fraction of E.
_MAX_STEP_LOSS_FRACTION = 0.2
# With several workers, a call is split into more chunks than ``chunk_size``
# alone gives only down to this many tracks per chunk: below it a chunk's time
# is mostly fixed per-step overhead, so halving it saves little wall time.
_MIN_SPLIT_CHUNK = 128


@dataclasses.dataclass(frozen=True)
class ElectronRecoils:
  """Simulated electron-recoil tracks, one point per ionisation electron.

  Attributes:
    positions_mm: [N, E_max, 3] float32, ionisation-electron positions in mm
      (primary starts at the origin along +z); rows ``>= num_electrons[i]``
      are 0.  ``E_max = max(num_electrons)`` (at least 1).
    num_electrons: [N] int32, ionisation electrons per track.
    energy_kev: [N] float32, initial kinetic energy of the primary, keV.
    path_length_mm: [N] float32, total path length of the primary, mm (its
      δ-rays' paths not included).
    num_delta_rays, delta_kev, delta_parent_kev, delta_generation: with
      ``delta_rays=True`` only: [N] int32 and [N, D] float32/float32/int32,
      D = max(num_delta_rays) (at least 1); None otherwise.
    deposited_kev: [N] float32, with any physics switch on; None otherwise.
  """

  positions_mm: np.ndarray
  num_electrons: np.ndarray
  energy_kev: np.ndarray
  path_length_mm: np.ndarray
  # Only with ``delta_rays=True`` (else None): δ-rays per track (all
  # generations), and per δ (padded with 0 to the largest count): its kinetic
  # energy, its parent's energy just before the emission (keV), and its
  # generation (1: emitted by the primary, 2: by a δ of generation 1, ...),
  # in order of emission.
  num_delta_rays: np.ndarray | None = None
  delta_kev: np.ndarray | None = None
  delta_parent_kev: np.ndarray | None = None
  delta_generation: np.ndarray | None = None
  # Only with a physics switch on (else None): energy deposited per track, keV
  # (float32 sum over the steps; equals energy_kev up to rounding).
  deposited_kev: np.ndarray | None = None

  def __post_init__(self):
    n = self.num_electrons.shape[0]
    if (self.positions_mm.ndim != 3 or self.positions_mm.shape[0] != n or
        self.positions_mm.shape[2] != 3):
      raise ValueError(
          f"ElectronRecoils.positions_mm: expected [{n}, E_max, 3], got "
          f"{self.positions_mm.shape}.")
    for name in ("energy_kev", "path_length_mm"):
      if getattr(self, name).shape != (n,):
        raise ValueError(f"ElectronRecoils.{name}: expected shape ({n},), got "
                         f"{getattr(self, name).shape}.")
    if n and self.num_electrons.max() > self.positions_mm.shape[1]:
      raise ValueError("ElectronRecoils.num_electrons exceeds E_max.")

  def __len__(self) -> int:
    return int(self.num_electrons.shape[0])

  def track(self, i: int) -> np.ndarray:
    """Ionisation electrons of track ``i``: [num_electrons[i], 3] float32 mm."""
    return self.positions_mm[i, :int(self.num_electrons[i])]


@dataclasses.dataclass(frozen=True)
class _Tables:
  """float32 interpolation tables (see `_build_tables`)."""

  log_e0: float  # first point of the log-E grid
  dlog_e: float  # spacing of the log-E grid
  by_energy: np.ndarray  # [P, 2 + K - 1]: log R, log λ_el, cumulative P_atom
  log_r0: float
  dlog_r: float
  log_e_of_log_r: np.ndarray  # [P]
  eta_coef: np.ndarray  # [K] ¼(ħc/a)², keV²
  eta_z2: np.ndarray  # [K] 3.76 (αZ)²
  range_cutoff_mm: float


@functools.lru_cache(maxsize=16)
def _build_tables(gas: GasMixture, cutoff_kev: float,
                  restricted_cut_kev: float | None = None) -> _Tables:
  """Tabulates R(E), λ_el(E), atom probabilities and the inverse E(R).

  Grids are uniform in log E over [T_MIN_KEV, T_MAX_KEV] (fixed, so tracks do
  not depend on the other tracks' energies) and in log R over
  [R(0.9 cutoff), R(T_MAX_KEV)], float64 then cast to float32.  With
  ``restricted_cut_kev`` (explicit δ-rays, ``electron_recoil_physics``) R is the range of
  the restricted stopping power (energy transfers below the cut only).
  """
  if restricted_cut_kev is None:
    csda_range_mm = functools.partial(gas_lib.csda_range_mm, gas)
  else:
    csda_range_mm = functools.partial(gas_lib.restricted_csda_range_mm, gas,
                                      cut_keV=float(restricted_cut_kev))
  lo = math.log(gas_lib.T_MIN_KEV)
  hi = math.log(gas_lib.T_MAX_KEV)
  e = np.geomspace(gas_lib.T_MIN_KEV, gas_lib.T_MAX_KEV, _TABLE_POINTS)
  log_e = np.log(e)
  # R(T_MIN) = 0: evaluate log R from the second point on and extrapolate.
  r = csda_range_mm(e)
  r[0] = r[1] * 1e-3
  mu, _ = gas_lib.atom_macroscopic_cross_sections(gas, e)  # [K, P]
  lam = 1.0 / mu.sum(axis=0)
  p_cum = np.cumsum(mu / mu.sum(axis=0), axis=0)[:-1]  # [K-1, P]
  by_energy = np.concatenate([np.log(r)[None], np.log(lam)[None], p_cum]).T

  e_lo = max(0.9 * cutoff_kev, gas_lib.T_MIN_KEV * 1.01)
  r_lo, r_hi = csda_range_mm(np.array([e_lo, gas_lib.T_MAX_KEV]))
  log_r = np.linspace(math.log(r_lo), math.log(r_hi), _TABLE_POINTS)
  # Invert R(E) (monotone) on a fine log-E grid.
  fine_e = np.geomspace(e_lo, gas_lib.T_MAX_KEV, 16 * _TABLE_POINTS)
  fine_log_e = np.log(fine_e)
  fine_log_r = np.log(csda_range_mm(fine_e))
  log_e_of_log_r = np.interp(log_r, fine_log_r, fine_log_e)

  elements, _ = gas.atom_species()
  z = np.array([el.Z for el in elements], dtype=np.float64)
  a = 0.885 * gas_lib.BOHR_RADIUS_CM * z**(-1.0 / 3.0)
  return _Tables(
      log_e0=float(log_e[0]),
      dlog_e=float((hi - lo) / (_TABLE_POINTS - 1)),
      by_energy=by_energy.astype(np.float32),
      log_r0=float(log_r[0]),
      dlog_r=float(log_r[1] - log_r[0]),
      log_e_of_log_r=log_e_of_log_r.astype(np.float32),
      eta_coef=(0.25 * (gas_lib.HBAR_C_KEV_CM / a)**2).astype(np.float32),
      eta_z2=(3.76 * (gas_lib.FINE_STRUCTURE * z)**2).astype(np.float32),
      range_cutoff_mm=float(csda_range_mm(np.float64(cutoff_kev))),
  )


def _interp(table: jax.Array, x0: jax.Array, dx: jax.Array,
            x: jax.Array) -> jax.Array:
  """Linear interpolation on a uniform grid, clamped at the ends.

  Args:
    table: [P] or [P, C] values at x0 + k dx.
    x0, dx: grid start and spacing (scalars).
    x: [...] query points.

  Returns:
    [...] or [..., C] interpolated values.
  """
  p = table.shape[0]
  t = jnp.clip((x - x0) / dx, 0.0, p - 1.0)
  i = jnp.minimum(jnp.floor(t).astype(jnp.int32), p - 2)
  f = t - i
  if table.ndim == 2:
    f = f[..., None]
  return table[i] * (1.0 - f) + table[i + 1] * f


def _rotate(d: jax.Array, cos_t: jax.Array, sin_t: jax.Array,
            phi: jax.Array) -> jax.Array:
  """Deflects unit vectors d [C, 3] by polar angle θ and azimuth φ."""
  u, v, w = d[:, 0], d[:, 1], d[:, 2]
  cp, sp = jnp.cos(phi), jnp.sin(phi)
  perp = jnp.sqrt(jnp.maximum(1.0 - w * w, 0.0))
  small = perp < 1e-5
  inv = 1.0 / jnp.where(small, 1.0, perp)
  nu = sin_t * (u * w * cp - v * sp) * inv + u * cos_t
  nv = sin_t * (v * w * cp + u * sp) * inv + v * cos_t
  nw = -sin_t * cp * perp + w * cos_t
  sign = jnp.where(w < 0, -1.0, 1.0)
  nu = jnp.where(small, sin_t * cp, nu)
  nv = jnp.where(small, sin_t * sp, nv)
  nw = jnp.where(small, sign * cos_t, nw)
  out = jnp.stack([nu, nv, nw], axis=-1)
  return out * jax.lax.rsqrt(jnp.sum(out * out, axis=-1, keepdims=True))


def sample_one_minus_cos(eta: jax.Array, xi: jax.Array) -> jax.Array:
  """Screened-Rutherford polar angle: 1 − cosθ = 2ηξ/(1 + η − ξ).

  Inverse CDF of dσ/dΩ ∝ 1/(1 − cosθ + 2η)²; returning 1 − cosθ instead of
  cosθ keeps float32 precision for the tiny angles of fast electrons.

  Args:
    eta: screening parameter(s) η > 0.
    xi: uniform variate(s) in [0, 1), broadcastable against ``eta``.

  Returns:
    1 − cosθ in [0, 2].
  """
  return jnp.clip(2.0 * eta * xi / (1.0 + eta - xi), 0.0, 2.0)


def _count_le(rows: jax.Array, queries: jax.Array) -> jax.Array:
  """Per row, the number of entries of ``rows`` that are <= each query.

  Equivalent to ``vmap(partial(jnp.searchsorted, side="right"))`` but a
  branch-free binary search on flat indices (about 1.5x faster on CPU).

  Args:
    rows: [C, S] float, each row sorted ascending.
    queries: [C, M] float.

  Returns:
    [C, M] int32 in [0, S].
  """
  c, s = rows.shape
  flat = rows.reshape(-1)
  base = (jnp.arange(c, dtype=jnp.int32) * s)[:, None]
  lo = jnp.zeros(queries.shape, jnp.int32)
  hi = jnp.full(queries.shape, s, jnp.int32)

  def body(_, bounds):
    lo, hi = bounds
    mid = (lo + hi) // 2
    go = (flat[base + jnp.minimum(mid, s - 1)] <= queries) & (mid < hi)
    return jnp.where(go, mid + 1, lo), jnp.where(go, hi, mid)

  lo, _ = jax.lax.fori_loop(0, max(1, math.ceil(math.log2(s + 1))), body,
                            (lo, hi))
  return lo


def _count_le_sorted(rows: jax.Array, queries: jax.Array) -> jax.Array:
  """``_count_le`` for queries sorted ascending along each row (same result).

  Searches the S row entries among the M queries instead of the reverse:
  entry j is <= query i iff i >= #(queries < entry j), so the count is a
  cumulative histogram of those S positions; O(S log M + M) instead of
  O(M log S) per row (~2x faster for M ~ 3 S).

  Args:
    rows: [C, S] float, each row sorted ascending.
    queries: [C, M] float, each row sorted ascending (NaN-free).

  Returns:
    [C, M] int32 in [0, S].
  """
  c, s = rows.shape
  m = queries.shape[1]
  flat = queries.reshape(-1)
  base = (jnp.arange(c, dtype=jnp.int32) * m)[:, None]
  lo = jnp.zeros(rows.shape, jnp.int32)
  hi = jnp.full(rows.shape, m, jnp.int32)

  def body(_, bounds):
    lo, hi = bounds
    mid = (lo + hi) // 2
    go = (flat[base + jnp.minimum(mid, m - 1)] < rows) & (mid < hi)
    return jnp.where(go, mid + 1, lo), jnp.where(go, hi, mid)

  first, _ = jax.lax.fori_loop(0, max(1, math.ceil(math.log2(m + 1))), body,
                               (lo, hi))  # [C, S]: #(queries < entry)
  hist = jnp.zeros((c, m + 1), jnp.int32).at[
      jnp.arange(c)[:, None], first].add(1)
  return jnp.cumsum(hist, axis=1, dtype=jnp.int32)[:, :m]


def elastic_deflection(d: jax.Array, e: jax.Array, row: jax.Array, u: jax.Array,
                       eta_coef: jax.Array, eta_z2: jax.Array) -> jax.Array:
  """Direction after a screened-Rutherford elastic collision.

  Args:
    d: [C, 3] unit directions before the collision.
    e: [C] kinetic energy at the collision, keV (sets the screening η).
    row: [C, 2 + K - 1] table row (``_Tables.by_energy``) whose cumulative atom
      probabilities (columns 2:) choose the target atom ∝ nᵢσᵢ.
    u: [C, 3] uniforms in [0, 1): atom, cosθ, azimuth.
    eta_coef, eta_z2: [K] screening coefficients (``_Tables``).

  Returns:
    [C, 3] unit directions after the collision (θ from ``sample_one_minus_cos``,
    azimuth uniform).
  """
  k = jnp.sum(u[:, 0:1] > row[:, 2:], axis=-1)  # [C] atom index
  pc2 = e * (e + 2.0 * gas_lib.ELECTRON_MASS_KEV)
  etot = e + gas_lib.ELECTRON_MASS_KEV
  beta2 = pc2 / (etot * etot)
  eta = eta_coef[k] / pc2 * (1.13 + eta_z2[k] / beta2)
  one_minus_cos = sample_one_minus_cos(eta, u[:, 1])
  cos_t = 1.0 - one_minus_cos
  sin_t = jnp.sqrt(one_minus_cos * (2.0 - one_minus_cos))
  return _rotate(d, cos_t, sin_t, 2.0 * math.pi * u[:, 2])


def _transport_step(carry, u, *, tabs, cutoff, max_steps):
  """One masked transport step for a chunk of tracks.

  Args:
    carry: (pos [C,3] mm, dir [C,3], E [C] keV, table row at E
      [C, 2 + K - 1] (log R, log λ_el, cumulative atom probabilities),
      alive [C] bool, path [C] mm, step index scalar int32).
    u: [C, 4] uniforms in [0, 1): free path, atom, cosθ, azimuth.

  Returns:
    new carry, (end position of the step [C, 3] mm, deposit [C] keV).
  """
  (by_energy, log_e0, dlog_e, log_e_of_log_r, log_r0, dlog_r, eta_coef,
   eta_z2, range_cut) = tabs
  pos, d, e, row, alive, path, step = carry
  active = alive & (step < max_steps)

  # λ_el is taken at the step start; the 20 % energy-loss cap bounds the error.
  r_e = jnp.exp(row[:, 0])
  lam = jnp.exp(row[:, 1])
  e_tgt = jnp.maximum((1.0 - _MAX_STEP_LOSS_FRACTION) * e, cutoff)
  tgt_is_cut = e_tgt <= cutoff
  r_tgt = jnp.where(
      tgt_is_cut, range_cut,
      jnp.exp(_interp(by_energy[:, 0], log_e0, dlog_e, jnp.log(e_tgt))))
  s_allow = jnp.maximum(r_e - r_tgt, 0.0)
  s_free = -lam * jnp.log1p(-u[:, 0])
  collide = s_free < s_allow
  s = jnp.where(collide, s_free, s_allow)
  r_new = jnp.maximum(r_e - s, 1e-30)
  e_coll = jnp.exp(
      _interp(log_e_of_log_r, log_r0, dlog_r, jnp.log(r_new)))
  e_new = jnp.where(collide, jnp.minimum(e_coll, e), e_tgt)
  end = (~collide & tgt_is_cut) | (e_new <= cutoff)
  e_new = jnp.where(end, cutoff, e_new)

  s = jnp.where(active, s, 0.0)
  dep = jnp.where(active, e - e_new, 0.0)
  pos = pos + s[:, None] * d

  # Elastic deflection at the collision point, on an atom drawn ∝ nᵢσᵢ(E),
  # everything evaluated at the energy of the collision.
  row_new = _interp(by_energy, log_e0, dlog_e, jnp.log(e_new))
  d_new = elastic_deflection(d, e_new, row_new, u[:, 1:4], eta_coef, eta_z2)
  scatter = active & collide & ~end
  d = jnp.where(scatter[:, None], d_new, d)

  e = jnp.where(active, e_new, e)
  row = jnp.where(active[:, None], row_new, row)
  path = path + s
  alive = alive & ~(active & end)
  return (pos, d, e, row, alive, path, step + 1), (pos, dep)


def _blocked_draws(key: jax.Array, *, sampler, n: int,
                   width: int | None = None) -> jax.Array:
  """The first ``n`` draws of a per-electron stream made of fixed blocks.

  Block ``b`` is ``sampler(fold_in(key, b), (_ELECTRON_BLOCK[, width]))``, so
  the first ``n`` values do not depend on how many blocks are drawn: the
  output is the same whatever the electron capacity of the chunk.

  Returns:
    [n] or [n, width] float32.
  """
  nb = -(-n // _ELECTRON_BLOCK)
  # Drawn flat and reshaped: jax's samplers fill a shape from the flat stream, so
  # this is bit for bit sampler(key, (_ELECTRON_BLOCK, width)), but XLA runs the
  # 1-D draw ~1.7x faster on CPU than the [256, 3] one.
  size = _ELECTRON_BLOCK * (1 if width is None else width)
  draws = jax.vmap(
      lambda b: sampler(jax.random.fold_in(key, b), (size,), jnp.float32))(
      jnp.arange(nb, dtype=jnp.uint32))
  tail = () if width is None else (width,)
  return draws.reshape((nb * _ELECTRON_BLOCK,) + tail)[:n]


@functools.partial(
    jax.jit, static_argnames=("max_steps", "capacity", "num_blocks"))
def _simulate_chunk(track_keys, e0, tabs, cutoff, w_kev, fano, jitter_mm, *,
                    max_steps: int, capacity: int, num_blocks: int):
  """Transport and ionisation of one chunk of tracks.

  Args:
    track_keys: [C] PRNG keys, one per track.
    e0: [C] float32 initial energies, keV.
    tabs: tuple of table arrays and scalars (see `_transport_step`).
    cutoff, w_kev, fano, jitter_mm: float32 scalars.

  Returns:
    dict with positions [C, M, 3] mm, num_raw [C] int32 (before any cap),
    path [C] mm, alive [C] bool (max_steps exhausted), deposited [C] keV.
  """
  c = e0.shape[0]
  num_slots = num_blocks * _BLOCK_STEPS
  k_steps, k_ion = jax.vmap(lambda k: tuple(jax.random.split(k)))(track_keys)

  def block_body(state):
    carry, ends_buf, dep_buf, b = state
    keys = jax.vmap(lambda k: jax.random.fold_in(k, b))(k_steps)
    u = jax.vmap(lambda k: jax.random.uniform(k, (_BLOCK_STEPS, 4), jnp.float32))(keys)
    step_fn = functools.partial(
        _transport_step, tabs=tabs, cutoff=cutoff, max_steps=max_steps)
    carry, (ends, deps) = jax.lax.scan(step_fn, carry, jnp.swapaxes(u, 0, 1))
    start = b * _BLOCK_STEPS
    zero = jnp.zeros((), start.dtype)
    ends_buf = jax.lax.dynamic_update_slice(ends_buf, ends,
                                            (start, zero, zero))
    dep_buf = jax.lax.dynamic_update_slice(dep_buf, deps, (start, zero))
    return carry, ends_buf, dep_buf, b + 1

  def block_cond(state):
    carry, _, _, b = state
    alive, step = carry[4], carry[6]
    return jnp.any(alive) & (b < num_blocks) & (step < max_steps)

  pos0 = jnp.zeros((c, 3), jnp.float32)
  dir0 = jnp.zeros((c, 3), jnp.float32).at[:, 2].set(1.0)
  row0 = _interp(tabs[0], tabs[1], tabs[2], jnp.log(e0))
  carry0 = (pos0, dir0, e0, row0, e0 > cutoff, jnp.zeros((c,), jnp.float32),
            jnp.int32(0))
  ends0 = jnp.zeros((num_slots, c, 3), jnp.float32)
  dep0 = jnp.zeros((num_slots, c), jnp.float32)
  carry, ends_buf, dep_buf, _ = jax.lax.while_loop(
      block_cond, block_body, (carry0, ends0, dep0, jnp.int32(0)))
  pos_end, _, e_end, _, alive, path, steps_run = carry
  # Steps that were never run (finished chunk) keep zeros: fill with the end.
  run = jnp.arange(num_slots) < steps_run
  ends_buf = jnp.where(run[:, None, None], ends_buf, pos_end[None])

  # Segments: P_k -> P_{k+1}, k = 0..S-1, then the local end deposit (S).
  pts = jnp.concatenate([pos0[None], ends_buf, pos_end[None]], axis=0)
  pts = jnp.swapaxes(pts, 0, 1)  # [C, S + 2, 3]
  deps = jnp.concatenate([dep_buf, e_end[None]], axis=0).T  # [C, S + 1]
  ion = place_ionisation(k_ion, e0, pts, deps, w_kev, fano, capacity)
  xyz = ion["xyz"] + jitter_mm * ion["normals"]
  xyz = jnp.where(ion["valid"][..., None], xyz, 0.0)
  return dict(positions=xyz, num_raw=ion["num_raw"], path=path, alive=alive,
              deposited=ion["total"])


def place_ionisation(k_ion: jax.Array, e0: jax.Array, pts: jax.Array,
                     deps: jax.Array, w_kev, fano, capacity: int) -> dict:
  """Ion-pair count and ionisation-electron points on the path (traced).

  N = round(Normal(E₀/W, √(F E₀/W))); the N electrons are placed by inverse-CDF
  sampling of N ordered uniforms (normalised cumulative sums of N + 1
  exponentials) over the cumulative deposit, uniformly within a segment.
  Shared by the baseline chunk and ``electron_recoil_physics`` (same random streams).

  Args:
    k_ion: [C] keys of the ionisation streams.
    e0: [C] initial energies, keV.
    pts: [C, S + 2, 3] path points, mm; segment k runs from pts[k] to pts[k+1].
    deps: [C, S + 1] deposit per segment, keV.
    w_kev, fano: W (keV) and the Fano factor.
    capacity: electron slots M per track.

  Returns:
    dict with xyz [C, M, 3] mm (points on the path, not displaced), normals
    [C, M, 3] (the jitter stream's standard normals), valid [C, M] bool, seg
    [C, M] int32 (segment of each electron), num_raw [C] int32 (before the
    capacity cap), total [C] keV (deposit).
  """
  cum = jnp.cumsum(deps, axis=1)
  total = cum[:, -1]
  k_num, k_pos, k_jit = jax.vmap(lambda k: tuple(jax.random.split(k, 3)))(k_ion)
  mean_n = e0 / w_kev
  n_raw = jnp.round(mean_n + jnp.sqrt(fano * mean_n) *
                    jax.vmap(lambda k: jax.random.normal(k, (), jnp.float32))(
                        k_num))
  n_raw = jnp.maximum(n_raw, 0.0).astype(jnp.int32)
  n = jnp.minimum(n_raw, capacity)
  # Ordered uniforms: cumulative sums of N + 1 exponentials, normalised (sorted
  # along each row, so `_count_le_sorted` applies).
  expo = jax.vmap(functools.partial(
      _blocked_draws, sampler=jax.random.exponential, n=capacity + 1))(k_pos)
  csum = jnp.cumsum(expo, axis=1)
  norm = jnp.take_along_axis(csum, n[:, None], axis=1)
  q = csum[:, :capacity] / norm * total[:, None]  # [C, M] keV
  seg = _count_le_sorted(cum, q)
  seg = jnp.minimum(seg, deps.shape[1] - 1)
  d_seg = jnp.take_along_axis(deps, seg, axis=1)
  c_seg = jnp.take_along_axis(cum, seg, axis=1)
  frac = jnp.where(d_seg > 0, (q - (c_seg - d_seg)) / jnp.where(
      d_seg > 0, d_seg, 1.0), 0.0)
  frac = jnp.clip(frac, 0.0, 1.0)
  p_a = jnp.take_along_axis(pts, seg[..., None], axis=1)
  p_b = jnp.take_along_axis(pts, seg[..., None] + 1, axis=1)
  xyz = p_a + frac[..., None] * (p_b - p_a)
  normals = jax.vmap(functools.partial(
      _blocked_draws, sampler=jax.random.normal, n=capacity, width=3))(k_jit)
  valid = jnp.arange(capacity)[None, :] < n[:, None]
  return dict(xyz=xyz, normals=normals, valid=valid, seg=seg, num_raw=n_raw,
              total=total)


def _energies(energies_kev, num_tracks: int | None) -> np.ndarray:
  """Validates and broadcasts the energy argument to [num_tracks] float64."""
  e = np.asarray(energies_kev, dtype=np.float64)
  if e.ndim == 0:
    if num_tracks is None:
      raise ValueError("simulate_electron_recoils: `num_tracks` is required "
                       "when `energies_kev` is a scalar.")
    if num_tracks < 0:
      raise ValueError(
          f"simulate_electron_recoils: num_tracks={num_tracks} < 0.")
    return np.full((int(num_tracks),), float(e))
  if e.ndim != 1:
    raise ValueError("simulate_electron_recoils: `energies_kev` must be a "
                     f"scalar or 1-D array, got shape {e.shape}.")
  if num_tracks is not None and num_tracks != e.shape[0]:
    raise ValueError(
        f"simulate_electron_recoils: num_tracks={num_tracks} does not match "
        f"len(energies_kev)={e.shape[0]}.")
  return e


def _available_cpus() -> int:
  """CPUs this process may run on (its affinity mask where the OS has one)."""
  if hasattr(os, "sched_getaffinity"):
    return max(1, len(os.sched_getaffinity(0)))
  return max(1, os.cpu_count() or 1)


def _pow2_at_least(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


def default_max_steps(elastic_scale: float = 1.0) -> int:
  """Step budget per track: 1024 (≈ 2× the 50 keV need), scaled up with the number of
  elastic collisions when ``elastic_scale`` > 1 (50 keV at × 2 needed more than 1024)."""
  return 1024 if elastic_scale <= 1.0 else int(math.ceil(1536 * elastic_scale))


def simulate_electron_recoils(seed: int,
                              energies_kev: np.ndarray | float,
                              num_tracks: int | None = None,
                              gas: GasMixture = HE_CO2_70_30,
                              *,
                              cutoff_kev: float = 1.0,
                              max_steps: int | None = None,
                              max_electrons: int = 2560,
                              chunk_size: int = 1024,
                              thermal_jitter_mm: float = 0.02,
                              delta_rays: bool = False,
                              straggling: bool = False,
                              electron_spread: bool = False,
                              delta_cut_kev: float = 1.0,
                              max_delta_rays: int = 32,
                              workers: int | None = None,
                              elastic_scale: float = 1.0,
                             ) -> ElectronRecoils:
  """Simulates electron recoils starting at the origin along +z.

  Args:
    seed: integer seed; the same seed gives identical output.
    energies_kev: initial kinetic energy, keV: a scalar (then ``num_tracks``
      is required) or a [num_tracks] array.
    num_tracks: number of tracks (must equal ``len(energies_kev)`` if both are
      given).
    gas: the gas mixture (density, W, Fano factor, elastic targets).
    cutoff_kev: tracking cutoff, keV; the rest is deposited at the end point.
    max_steps: most transport steps per track (measured: ~330-390 at 40 keV
      and ~420-480 at 50 keV with a 1 keV cutoff); a track that needs more
      raises ``RuntimeError`` (nothing is truncated).  None (default):
      ``default_max_steps(elastic_scale)``, 1024 at the model's elastic cross
      section and more when ``elastic_scale`` adds collisions.
    max_electrons: capacity of ionisation electrons per track; a track with
      more raises ``ValueError`` (nothing is truncated).
    chunk_size: tracks simulated together (working memory ~50 kB per track
      and per 1000 electrons of capacity plus ~32 B per track and step, i.e.
      ~120 MB for 1024 tracks at 50 keV); the output does not depend on it.
    thermal_jitter_mm: σ of the isotropic Gaussian thermalisation jitter, mm
      (not used with ``electron_spread``, which replaces it).
    delta_rays: explicit Møller δ-rays above ``delta_cut_kev``, transported
      like the primary (``electron_recoil_physics``, item 1).  Off by default.
    straggling: energy-loss fluctuations below ``delta_cut_kev``
      (``electron_recoil_physics``, item 2).  Off by default.
    electron_spread: thermalisation and secondary-electron spread of the
      ionisation electrons about the path (``electron_recoil_physics``, item 3).  Off by
      default.
    delta_cut_kev: δ-ray cut T_c, keV (>= cutoff_kev); used by the three
      switches above only.
    max_delta_rays: δ-rays per track that can be queued (all generations; a
      track with more raises ``RuntimeError``, nothing is dropped); used with
      ``delta_rays`` only.  ~2.5 per 40 keV track above 1 keV.
    workers: chunks simulated at the same time, each by one thread calling
      the jitted chunk and waiting for it (a running XLA call releases the
      GIL, so the chunks overlap and fill the cores that one chunk leaves
      partly idle).  None (default):
      ``min(2, CPUs available to the process)`` on the CPU backend, 1 on
      others (one accelerator gains nothing from it).  1: the sequential loop
      in the calling thread, as before this option.  When the tracks fit in
      fewer than ``workers`` chunks of ``chunk_size`` they are split into
      smaller power-of-two chunks, down to 128 tracks (so 1000 tracks run as
      2 × 512).  Pass 1 when the caller already runs simulations in parallel
      threads or processes.  The output is bit for bit the same for any value
      (tested); the working memory is ``workers`` times that of one chunk
      (measured peak RSS for 4096 tracks at 50 keV, workers=2 over 1: +150 MB
      switches off, +180 MB all on).  The worker threads see JAX's global
      configuration, not thread-local contexts of the caller (e.g.
      ``jax.default_device``); use ``workers=1`` under such contexts.
    elastic_scale: factor on the elastic cross section of every atom (the
      mean free path is divided by it; the angular distribution is kept), so
      the transport cross section scales with it.  1 (default) is the
      screened-Rutherford model above, bit for bit.  A sensitivity knob for
      the elastic model's uncertainty (molecular and partial-wave cross
      sections differ from it at these energies), not a physics option.

  With the three switches off (the default) the output is bit for bit that of
  the simulator before they existed.

  Returns:
    ``ElectronRecoils`` with ``num_tracks`` tracks.
  """
  e0 = _energies(energies_kev, num_tracks)
  where = "simulate_electron_recoils"
  if max_steps is None:
    max_steps = default_max_steps(elastic_scale)
  if not gas_lib.T_MIN_KEV <= cutoff_kev:
    raise ValueError(f"{where}: cutoff_kev={cutoff_kev} is below the table "
                     f"limit {gas_lib.T_MIN_KEV} keV.")
  if e0.size and (not np.all(np.isfinite(e0)) or e0.min() <= cutoff_kev or
                  e0.max() > gas_lib.T_MAX_KEV):
    raise ValueError(
        f"{where}: energies_kev must be finite, > cutoff_kev={cutoff_kev} and "
        f"<= {gas_lib.T_MAX_KEV} keV; got [{e0.min()}, {e0.max()}].")
  for name, val in (("max_steps", max_steps), ("max_electrons", max_electrons),
                    ("chunk_size", chunk_size)):
    if int(val) != val or val < 1:
      raise ValueError(
          f"{where}: `{name}` must be a positive integer, got {val}.")
  if thermal_jitter_mm < 0:
    raise ValueError(f"{where}: thermal_jitter_mm must be >= 0.")
  if not (math.isfinite(elastic_scale) and elastic_scale > 0):
    raise ValueError(f"{where}: elastic_scale must be finite and > 0, got "
                     f"{elastic_scale}.")
  if workers is not None and (int(workers) != workers or workers < 1):
    raise ValueError(
        f"{where}: `workers` must be None or a positive integer, got {workers}.")
  physics = bool(delta_rays or straggling or electron_spread)
  if physics:
    if not delta_cut_kev >= cutoff_kev:
      raise ValueError(f"{where}: delta_cut_kev={delta_cut_kev} must be >= "
                       f"cutoff_kev={cutoff_kev}.")
    if int(max_delta_rays) != max_delta_rays or max_delta_rays < 1:
      raise ValueError(f"{where}: `max_delta_rays` must be a positive integer, "
                       f"got {max_delta_rays}.")
  w_kev = gas.W_eV * 1e-3
  if e0.size and e0.max() / w_kev > max_electrons:
    raise ValueError(
        f"{where}: max_electrons={max_electrons} is below the mean ion-pair "
        f"count E/W = {e0.max() / w_kev:.0f} of the highest-energy track "
        f"({e0.max()} keV); use max_electrons >= "
        f"{int(1.3 * e0.max() / w_kev) + 1}.")

  n_tracks = e0.shape[0]
  if n_tracks == 0:
    extra = {}
    if delta_rays:
      extra = dict(num_delta_rays=np.zeros((0,), np.int32),
                   delta_kev=np.zeros((0, 1), np.float32),
                   delta_parent_kev=np.zeros((0, 1), np.float32),
                   delta_generation=np.zeros((0, 1), np.int32))
    if physics:
      extra["deposited_kev"] = np.zeros((0,), np.float32)
    return ElectronRecoils(
        np.zeros((0, 1, 3), np.float32), np.zeros((0,), np.int32),
        np.zeros((0,), np.float32), np.zeros((0,), np.float32), **extra)

  if physics:
    tabs_np = _build_tables(gas, cutoff_kev,
                            float(delta_cut_kev) if delta_rays else None)
  else:
    tabs_np = _build_tables(gas, cutoff_kev)
  f32 = np.float32
  by_energy = tabs_np.by_energy
  if elastic_scale != 1.0:  # Column 1 is log λ_el (a copy: the tables are cached).
    by_energy = by_energy.copy()
    by_energy[:, 1] -= f32(math.log(elastic_scale))
  tabs = (by_energy, f32(tabs_np.log_e0), f32(tabs_np.dlog_e),
          tabs_np.log_e_of_log_r, f32(tabs_np.log_r0), f32(tabs_np.dlog_r),
          tabs_np.eta_coef, tabs_np.eta_z2, f32(tabs_np.range_cutoff_mm))
  if workers is None:
    workers = min(2, _available_cpus()) if jax.default_backend() == "cpu" else 1
  workers = int(workers)
  # Chunks: a power of two up to chunk_size, so few shapes are compiled; with
  # several workers, small enough for `workers` chunks (not below
  # _MIN_SPLIT_CHUNK tracks).  One shape per call either way.
  chunk = min(int(chunk_size), _pow2_at_least(n_tracks),
              max(_MIN_SPLIT_CHUNK, _pow2_at_least(-(-n_tracks // workers))))
  num_blocks = -(-int(max_steps) // _BLOCK_STEPS)
  # Electron slots per track: E/W + 8σ (Fano), rounded up to a block; a rare
  # larger count reruns its chunk with max_electrons slots (same output).
  mean_max = float(e0.max()) / w_kev
  fit = mean_max + 8.0 * math.sqrt(gas.fano * mean_max) + 8.0
  capacity = min(int(max_electrons),
                 _ELECTRON_BLOCK * math.ceil(fit / _ELECTRON_BLOCK))
  base_key = jax.random.key(seed)
  ids = np.arange(n_tracks, dtype=np.int64)

  if physics:
    from recoil_jax.physics import electron_recoil_physics  # pylint: disable=g-import-not-at-top
    ptabs_np = electron_recoil_physics.build_physics_tables(gas, float(delta_cut_kev),
                                                            bool(delta_rays))
    ptabs = (ptabs_np.by_energy, f32(ptabs_np.delta_cut_kev),
             f32(ptabs_np.k0_kev_per_mm), f32(ptabs_np.close_min_kev),
             f32(ptabs_np.quantum_kev))

  def run_chunk(keys, e_chunk, slots):
    if physics:
      out = electron_recoil_physics.simulate_chunk(
          keys, jnp.asarray(e_chunk), tabs, ptabs, f32(cutoff_kev), f32(w_kev),
          f32(gas.fano), f32(thermal_jitter_mm), f32(ptabs_np.core_sigma_mm),
          max_steps=int(max_steps), capacity=slots, num_blocks=num_blocks,
          delta=bool(delta_rays), straggle=bool(straggling),
          spread=bool(electron_spread), num_queue=int(max_delta_rays))
    else:
      out = _simulate_chunk(
          keys, jnp.asarray(e_chunk), tabs, f32(cutoff_kev), f32(w_kev),
          f32(gas.fano), f32(thermal_jitter_mm), max_steps=int(max_steps),
          capacity=slots, num_blocks=num_blocks)
    return jax.device_get(out)  # Waits for the XLA call: the worker's core.

  def simulate(start):
    """Chunk from track `start`: (host outputs, its padded energies)."""
    stop = min(start + chunk, n_tracks)
    pad = chunk - (stop - start)
    idx = np.concatenate([ids[start:stop], np.zeros(pad, np.int64)])
    e_chunk = np.concatenate(
        [e0[start:stop], np.full(pad, 2.0 * cutoff_kev)]).astype(np.float32)
    keys = jax.vmap(lambda i: jax.random.fold_in(base_key, i))(
        jnp.asarray(idx, jnp.uint32))
    out = run_chunk(keys, e_chunk, capacity)
    if (capacity < max_electrons and
        out["num_raw"][:stop - start].max() > capacity):
      out = run_chunk(keys, e_chunk, int(max_electrons))
    return out, e_chunk

  def collect(out, e_chunk, start, n_real):
    """Checks one chunk's host outputs and appends its real tracks."""
    real = slice(0, n_real)
    stop = start + n_real
    if delta_rays and out["overflow"][real].any():
      bad = np.flatnonzero(out["overflow"][real])
      raise RuntimeError(
          f"{where}: {bad.size} tracks in the chunk starting at track {start} "
          f"produced more than max_delta_rays={max_delta_rays} δ-rays (e.g. "
          f"track {start + bad[0]}); raise max_delta_rays (nothing was kept).")
    stuck = np.flatnonzero(out["alive"][real])
    if stuck.size:
      raise RuntimeError(
          f"{where}: {stuck.size} of {stop - start} tracks in the chunk "
          f"starting at track {start} did not reach cutoff_kev={cutoff_kev} within "
          f"max_steps={max_steps} (e.g. track {start + stuck[0]}, "
          f"{e0[start + stuck[0]]} keV); raise max_steps.")
    n_raw = out["num_raw"][real]
    over = np.flatnonzero(n_raw > max_electrons)
    if over.size:
      raise ValueError(
          f"{where}: {over.size} tracks have more ionisation electrons than "
          f"max_electrons={max_electrons} (largest {n_raw.max()}, track "
          f"{start + over[0]}); raise max_electrons (nothing was truncated).")
    # Internal consistency: all of E0 is deposited (float32 accumulation).
    lost = np.abs(out["deposited"][real] - e_chunk[real])
    if lost.max() > 1e-3 * e_chunk[real].max():
      raise RuntimeError(
          f"{where}: energy not conserved in chunk starting at track {start} "
          f"(largest mismatch {lost.max():.3g} keV); this is a bug.")
    positions.append(out["positions"][real, :max(1, int(n_raw.max()))])
    nums.append(n_raw.astype(np.int32))
    paths.append(out["path"][real])
    deposited.append(out["deposited"][real])
    if delta_rays:
      deltas.append({k: out[k][real] for k in (
          "num_delta", "delta_kev", "delta_parent_kev", "delta_generation")})

  positions, nums, paths = [], [], []
  deltas, deposited = [], []
  starts = range(0, n_tracks, chunk)
  workers = min(workers, len(starts))
  if workers == 1:
    for start in starts:
      collect(*simulate(start), start, min(start + chunk, n_tracks) - start)
  else:
    # All chunks are queued and `workers` run at a time; each worker blocks on
    # its XLA call, so the calls overlap.  Results are checked and kept in
    # chunk order: the output and the first error raised are those of the
    # sequential loop.
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=workers,
        thread_name_prefix="simulate_electron_recoils") as pool:
      futures = [pool.submit(simulate, start) for start in starts]
      try:
        for start, future in zip(starts, futures):
          collect(*future.result(), start,
                  min(start + chunk, n_tracks) - start)
      finally:
        for future in futures:
          future.cancel()  # After an error: skip the chunks not started.

  num = np.concatenate(nums)
  pos = np.zeros((n_tracks, max(p.shape[1] for p in positions), 3), np.float32)
  row = 0
  for p in positions:
    pos[row:row + p.shape[0], :p.shape[1]] = p
    row += p.shape[0]
  extra = {}
  if physics:
    extra["deposited_kev"] = np.concatenate(deposited).astype(np.float32)
  if delta_rays:
    num_delta = np.concatenate([d["num_delta"] for d in deltas]).astype(np.int32)
    width = max(1, int(num_delta.max()))
    extra = dict(
        num_delta_rays=num_delta,
        delta_kev=np.concatenate(
            [d["delta_kev"][:, :width] for d in deltas]).astype(np.float32),
        delta_parent_kev=np.concatenate(
            [d["delta_parent_kev"][:, :width] for d in deltas]).astype(np.float32),
        delta_generation=np.concatenate(
            [d["delta_generation"][:, :width] for d in deltas]).astype(np.int32),
        **extra)
  return ElectronRecoils(
      positions_mm=pos,
      num_electrons=num,
      energy_kev=e0.astype(np.float32),
      path_length_mm=np.concatenate(paths).astype(np.float32),
      **extra)
