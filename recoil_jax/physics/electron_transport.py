"""Study-agnostic samplers for electron transport with δ-rays and straggling.

Functions of the electron kinetic energy (keV), step length (mm) and gas
properties only; they name no detector.  The macroscopic quantities (Møller
δ-ray rate, energy lost above a cut, restricted stopping power and range, mean
excitation energy) are the numpy float64 functions of ``recoil_jax.physics.gas``;
this module adds

* the Møller δ-ray energy sampler (exact inverse CDF of the closed-form
  spectrum, Newton iterations) and the two-body emission angles
  (``sample_moller_fraction``, ``moller_angles``);
* energy-loss straggling below the δ-ray cut: Poisson close collisions with the
  free-electron 1/W² spectrum plus Poisson distant collisions in quanta of the
  mean excitation energy I (the single-level limit of Urbán's model, Geant4
  Physics Reference Manual, "Fluctuations in energy loss"), with the exact
  mean (``sample_energy_loss``, ``energy_loss_moments``);
* the per-energy table columns a transport code needs for them
  (``loss_table_columns``) and 16-bit uniforms from random words
  (``words_to_uniforms``).

Samplers are jax, float32 and elementwise ([...] in, [...] out), so they can be
called on any batch of particles (tracks, δ-rays of all generations at once).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from recoil_jax.physics import gas as gas_lib
from recoil_jax.physics.gas import GasMixture

# Close collisions sampled one by one in ``sample_energy_loss``; more than this
# many on one step (λ_close ≲ 1 on a step: P(n > 3) < 2 %) contribute their mean.
EXPLICIT_CLOSE = 3
# Newton iterations of the Møller inverse CDF (converged to float32 precision
# after 3 for 2 < E/T_c < 100: |CDF(x) - u| < 1e-5).
MOLLER_NEWTON_STEPS = 4


def close_collision_constant_kev_per_mm(gas: GasMixture) -> float:
  """K₀ = 2π r_e² mc² n_e, keV/mm: the close-collision spectrum is K₀/(β² W²)."""
  return (2.0 * math.pi * gas_lib.CLASSICAL_ELECTRON_RADIUS_CM**2 *
          gas_lib.ELECTRON_MASS_KEV * gas_lib.electron_density_per_cm3(gas) * 0.1)


def loss_table_columns(gas: GasMixture, e_kev: np.ndarray, cut_kev: float, *,
                       delta_rays: bool, close_min_kev: float) -> np.ndarray:
  """Per-energy columns for δ-rays and straggling, numpy float64.

  Args:
    gas: the mixture.
    e_kev: [P] kinetic energies, keV.
    cut_kev: δ-ray cut T_c, keV.
    delta_rays: whether δ-rays above T_c are explicit (then the continuous loss
      is the restricted stopping power).
    close_min_kev: lower edge ε_c of the close (quasi-free) collisions, keV.

  Returns:
    [P, 3]: δ-ray rate per mm (0 without δ-rays); continuous loss per mm to
    transfers above T_c (0 with δ-rays: then they are explicit); fraction of
    the continuous loss below T_c that goes to close collisions,
    K₀/β² ln(min(T_c, E/2)/ε_c) / (dE/dx), clipped to [0, 1].
  """
  e = np.asarray(e_kev, np.float64)
  above = gas_lib.moller_loss_above_cut_kev_per_mm(gas, e, cut_kev)
  if delta_rays:
    rate = gas_lib.delta_ray_rate_per_mm(gas, e, cut_kev)
    continuous = gas_lib.restricted_dedx_kev_per_mm(gas, e, cut_kev)
    above_col = np.zeros_like(e)
  else:
    rate = np.zeros_like(e)
    continuous = gas_lib.dedx_kev_per_mm(gas, e)
    above_col = above
  m = gas_lib.ELECTRON_MASS_KEV
  beta2 = e * (e + 2 * m) / (e + m)**2
  eps_hi = np.minimum(cut_kev, 0.5 * e)
  close = (close_collision_constant_kev_per_mm(gas) / beta2 *
           np.log(np.maximum(eps_hi / close_min_kev, 1.0)))
  frac = np.clip(close / continuous, 0.0, 1.0)
  return np.stack([rate, above_col, frac], axis=1)


def words_to_uniforms(words: jax.Array) -> jax.Array:
  """[..., W] uint32 -> [..., 2W] float32 uniforms in (0, 1), 16 bits each.

  Half the random words of 32-bit uniforms; enough resolution (1/65536) for the
  samplers here (e.g. an exponential free path is cut at 11.8 mean free paths,
  probability 1.5e-5).
  """
  halves = jnp.stack([words >> 16, words & 0xFFFF], axis=-1)
  halves = halves.reshape(words.shape[:-1] + (2 * words.shape[-1],))
  return (halves.astype(jnp.float32) + 0.5) * (1.0 / 65536.0)


# ---------------------------------------------------------------------------
# Møller δ-rays
# ---------------------------------------------------------------------------


def moller_terms(e: jax.Array):
  """(g, a) of the Møller spectrum at kinetic energy e (keV): g = (2γ−1)/γ², a = 1 − g."""
  gam = 1.0 + e / gas_lib.ELECTRON_MASS_KEV
  g = (2.0 * gam - 1.0) / (gam * gam)
  return g, 1.0 - g


def moller_cdf(x, x_cut, g, a):
  """∫_{x_cut}^{x} [a + 1/y² + 1/(1−y)² − g/(y(1−y))] dy (jax; ``gas.moller_cdf_shape``)."""
  return (a * (x - x_cut) + (1.0 / x_cut - 1.0 / x) +
          (1.0 / (1.0 - x) - 1.0 / (1.0 - x_cut)) -
          g * jnp.log(x * (1.0 - x_cut) / (x_cut * (1.0 - x))))


def sample_moller_fraction(e: jax.Array, cut: jax.Array, u: jax.Array) -> jax.Array:
  """x = W/E of a Møller δ-ray with W in [cut, E/2], by inverse CDF.

  dσ/dx ∝ a + 1/x² + 1/(1−x)² − g/(x(1−x)) (``gas.moller_dcs_cm2_per_kev``).
  Newton iterations on the closed-form CDF from the inverse of its dominant 1/x²
  term, clipped to [cut/E, ½].  Where E ≤ 2 cut the result is ½ (no δ-ray can be
  produced there).

  Args:
    e: [...] primary kinetic energy, keV.
    cut: δ-ray cut T_c, keV (broadcastable).
    u: [...] uniforms in [0, 1).

  Returns:
    [...] x in [cut/E, ½].
  """
  ok = e > 2.0 * cut
  x_cut = jnp.where(ok, cut / jnp.where(ok, e, 1.0), 0.25)
  g, a = moller_terms(e)
  target = u * moller_cdf(jnp.float32(0.5), x_cut, g, a)
  x = 1.0 / (1.0 / x_cut - u * (1.0 / x_cut - 2.0))
  for _ in range(MOLLER_NEWTON_STEPS):
    dens = a + 1.0 / (x * x) + 1.0 / ((1.0 - x) * (1.0 - x)) - g / (x * (1.0 - x))
    x = jnp.clip(x - (moller_cdf(x, x_cut, g, a) - target) / dens, x_cut, 0.5)
  return jnp.where(ok, x, 0.5)


def moller_angles(e: jax.Array, w: jax.Array):
  """(cos θ_p, sin θ_p, cos θ_δ, sin θ_δ) after a Møller collision, two-body.

  cos²θ_δ = W(E+2m)/(E(W+2m)), sin²θ_δ = 2m(E−W)/(E(W+2m));
  cos²θ_p = (E−W)(E+2m)/(E(E−W+2m)), sin²θ_p = 2mW/(E(E−W+2m)) (E the primary's
  kinetic energy before, W the δ's, keV; the sines in closed form keep float32
  precision at small angles).  Momentum is conserved exactly.
  """
  m2 = 2.0 * gas_lib.ELECTRON_MASS_KEV
  ep = e - w
  cos_d = jnp.sqrt(w * (e + m2) / (e * (w + m2)))
  sin_d = jnp.sqrt(m2 * ep / (e * (w + m2)))
  cos_p = jnp.sqrt(ep * (e + m2) / (e * (ep + m2)))
  sin_p = jnp.sqrt(m2 * w / (e * (ep + m2)))
  return cos_p, sin_p, cos_d, sin_d


# ---------------------------------------------------------------------------
# Energy-loss straggling below the δ-ray cut
# ---------------------------------------------------------------------------


def sample_poisson(lam: jax.Array, u: jax.Array, *, terms: int = 20,
                   gauss_above: float = 6.0) -> jax.Array:
  """Poisson(λ) from one uniform: inverse CDF up to ``terms`` (λ < gauss_above),
  else round(λ + √λ Φ⁻¹(u)) ≥ 0.  The truncation loses < 1e-5 of the
  probability for λ < 6 with 20 terms (< 2e-5 for λ < 3 with 10 terms).

  Returns float32 counts, shape of ``lam``.
  """
  lam_s = jnp.minimum(lam, gauss_above)
  p = jnp.exp(-lam_s)
  cdf = p
  n = jnp.zeros_like(lam)
  for k in range(terms):
    n = n + (u > cdf)
    p = p * lam_s / (k + 1.0)
    cdf = cdf + p
  z = jax.scipy.special.ndtri(jnp.clip(u, 1e-7, 1.0 - 1e-7))
  gauss = jnp.maximum(jnp.round(lam + jnp.sqrt(jnp.maximum(lam, 0.0)) * z), 0.0)
  return jnp.where(lam < gauss_above, n, gauss)


def energy_loss_parts(loss_mean, s, e, above_rate, *, k0, eps_c, cut):
  """Mean parts of a step's loss below the cut.

  Returns (deterministic loss, close-collision mean, λ_close, ⟨W⟩_close, ε_hi,
  distant mean), keV except the count λ_close; see ``sample_energy_loss``.
  """
  m = gas_lib.ELECTRON_MASS_KEV
  beta2 = e * (e + 2.0 * m) / ((e + m) * (e + m))
  k = k0 / beta2
  eps_hi = jnp.minimum(cut, 0.5 * e)
  has = eps_hi > eps_c
  log_ratio = jnp.where(has, jnp.log(jnp.where(has, eps_hi / eps_c, 1.0)), 0.0)
  det = jnp.minimum(s * above_rate, loss_mean)
  rest = loss_mean - det
  close_mean = jnp.minimum(s * k * log_ratio, rest)
  w_mean = jnp.where(has, eps_c * eps_hi * log_ratio /
                     jnp.where(has, eps_hi - eps_c, 1.0), 1.0)
  lam_c = jnp.where(has, close_mean / w_mean, 0.0)
  return det, close_mean, lam_c, w_mean, eps_hi, rest - close_mean


def sample_energy_loss(loss_mean, s, e, above_rate, u, *, k0, eps_c, cut, quantum):
  """Fluctuated energy loss of a step (close + distant collisions), keV.

  The mean loss ΔĒ of a step (the CSDA or restricted-CSDA loss) is split as in
  Bethe's theory into close collisions, W ∈ [ε_c, ε_hi = min(T_c, E/2)] with
  the 1/W² spectrum (Poisson count of mean s K₀/β² ln(ε_hi/ε_c) / ⟨W⟩, each W by
  inverse CDF; beyond ``EXPLICIT_CLOSE`` at their mean), and distant collisions
  (a Poisson number of quanta of the mean excitation energy, the rest of ΔĒ).
  A deterministic part s·``above_rate`` (the mean loss above the cut when
  δ-rays are not explicit) is not fluctuated.

  Args:
    loss_mean: [C] mean loss of the step, keV.
    s: [C] step length, mm.
    e: [C] energy at the step start, keV (rates are taken there).
    above_rate: [C] continuous loss per mm to transfers above the cut, keV/mm
      (0 when δ-rays are explicit).
    u: [C, 5] uniforms: close count, 3 close energies, distant count.
    k0: K₀ = 2π r_e² mc² n_e, keV/mm (``close_collision_constant_kev_per_mm``);
    eps_c: close-collision threshold, keV; cut: δ-ray cut, keV; quantum:
      distant-collision energy (mean excitation energy), keV.

  Returns:
    [C] loss ≥ 0 with mean ``loss_mean`` (``energy_loss_moments``).
  """
  det, close_mean, lam_c, w_mean, eps_hi, dist_mean = energy_loss_parts(
      loss_mean, s, e, above_rate, k0=k0, eps_c=eps_c, cut=cut)
  # λ_close is ~0.1 on a typical step (≤ 1 on the longest): 10 terms.
  n_c = sample_poisson(lam_c, u[..., 0], terms=10, gauss_above=3.0)
  close = jnp.maximum(n_c - EXPLICIT_CLOSE, 0.0) * w_mean
  for i in range(EXPLICIT_CLOSE):
    w = eps_c * eps_hi / (eps_hi - u[..., 1 + i] * (eps_hi - eps_c))
    close = close + jnp.where(n_c > i, w, 0.0)
  n_d = sample_poisson(dist_mean / quantum, u[..., 4])
  return det + close + n_d * quantum


def energy_loss_moments(loss_mean, s, e, above_rate, *, k0, eps_c, cut, quantum):
  """(mean, variance) of ``sample_energy_loss`` for the same arguments, numpy.

  Variance = λ_close ε_c ε_hi (1/W² spectrum) + distant mean × quantum.
  """
  det, close_mean, lam_c, _, eps_hi, dist_mean = (
      np.asarray(a, np.float64) for a in energy_loss_parts(
          jnp.asarray(loss_mean, jnp.float32), jnp.asarray(s, jnp.float32),
          jnp.asarray(e, jnp.float32), jnp.asarray(above_rate, jnp.float32),
          k0=k0, eps_c=eps_c, cut=cut))
  var = lam_c * eps_c * eps_hi + dist_mean * quantum
  return det + close_mean + dist_mean, var
