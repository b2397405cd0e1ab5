"""Non-ML direction of electron recoils from charge moments (Di Marco et al. 2022, in 3-D).

The method of Di Marco et al. (AJ 163:170, arXiv 2202.01093), generalised to 3-D as in
``mghrear/3D_Heteroscedastic_Convnet:mymodels.py`` (``NML``; arXiv 2403.15949), on voxelised
tracks stored as padded arrays. Per event, with charge weights q:

1. barycentre x_b = Σ q x / Σ q; X = x − x_b;
2. C = Σ q X Xᵀ / Σ q; v_PA = leading eigenvector, M2 = largest eigenvalue (cm²);
3. M3 = Σ q (X·v_PA)³ / Σ q (cm³);
4. impact region: sign(X·v_PA) = sign(M3) and n_σL·M2 < |X·v_PA| < n_σH·M2 (the published
   convention compares a length in cm with multiples of an eigenvalue in cm²; the
   ``threshold="sqrt_m2"`` option uses √M2 instead and is a separately labelled
   variant); fewer than 2 points → failed;
5. x_IP = charge-weighted mean of the region; weights q·exp(−|x − x_IP|/w₀) on the region;
   v_IP = principal axis of the re-weighted second moments about x_IP;
6. head/tail: v_PA ← −sign(M3)·v_PA; v_IP ← sign(v_IP·v_PA)·v_IP ("skewness"), or
   sign(v_IP·y_true)·v_IP ("truth": the true direction is used for the sign only).

Positions are ``voxel index × voxel_size_cm`` (0.05 cm for the source study's 0.5 mm voxels);
the constant offset of the grid does not matter (the method is translation invariant).
All events are processed at once (``jax.jit`` + ``vmap``); there is no per-event loop.
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

HEAD_TAIL_MODES = ("skewness", "truth")
THRESHOLD_MODES = ("m2", "sqrt_m2")

DEFAULT_N_SIGMA_L = 1.5
DEFAULT_N_SIGMA_H = 3.0
DEFAULT_W0_CM = 0.05
DEFAULT_VOXEL_SIZE_CM = 0.05

# Failure codes (``MomentsResult.reason``).
OK = 0
FAILED_NO_CHARGE = 1  # no voxel with positive charge
FAILED_IMPACT_REGION = 2  # fewer than 2 voxels in the impact region (incl. M3 = 0)
FAILED_DEGENERATE = 3  # re-weighted charge underflows, or v_IP ⊥ reference direction
FAILURE_NAMES = {OK: "ok", FAILED_NO_CHARGE: "no_charge",
                 FAILED_IMPACT_REGION: "impact_region", FAILED_DEGENERATE: "degenerate"}


class MomentsResult(NamedTuple):
  """Output of ``moments_directions``.

  Attributes:
    directions: ``[N, 3]`` unit vectors (zeros where ``failed``).
    failed: ``[N]`` bool; failed events are not scored.
    reason: ``[N]`` int, one of the ``FAILED_*`` codes (``OK`` = 0).
    num_impact: ``[N]`` int, voxels in the impact region.
    m2: ``[N]`` largest eigenvalue of the charge covariance, cm².
    m3: ``[N]`` third moment along the principal axis, cm³.
  """
  directions: np.ndarray
  failed: np.ndarray
  reason: np.ndarray
  num_impact: np.ndarray
  m2: np.ndarray
  m3: np.ndarray


def _principal_axis(cov: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Leading eigenvector and eigenvalue of a symmetric 3×3 matrix."""
  evals, evecs = jnp.linalg.eigh(cov)
  return evecs[:, -1], evals[-1]


def _one_event(pos, q, true_dir, n_sigma_l, n_sigma_h, w0, use_truth, use_sqrt):
  """Moments method for one event; pos [V, 3] cm, q [V] (0 on padding)."""
  qsum = jnp.sum(q)
  has_charge = qsum > 0
  qn = q / jnp.where(has_charge, qsum, 1.0)
  xb = jnp.sum(qn[:, None] * pos, axis=0)
  x = pos - xb
  cov = jnp.einsum("v,vi,vj->ij", qn, x, x)
  v_pa, m2 = _principal_axis(cov)
  proj = x @ v_pa
  m3 = jnp.sum(qn * proj**3)
  scale = jnp.where(use_sqrt, jnp.sqrt(jnp.maximum(m2, 0.0)), m2)
  aproj = jnp.abs(proj)
  region = ((jnp.sign(proj) == jnp.sign(m3)) & (n_sigma_l * scale < aproj)
            & (aproj < n_sigma_h * scale) & (q > 0))
  num_impact = jnp.sum(region)
  q_ir = jnp.where(region, q, 0.0)
  q_ir_sum = jnp.sum(q_ir)
  x_ip = jnp.sum(q_ir[:, None] * x, axis=0) / jnp.where(q_ir_sum > 0, q_ir_sum, 1.0)
  d = x - x_ip
  dist = jnp.sqrt(jnp.sum(d * d, axis=-1))
  w = q_ir * jnp.exp(-dist / w0)
  wsum = jnp.sum(w)
  wn = w / jnp.where(wsum > 0, wsum, 1.0)
  cov_ip = jnp.einsum("v,vi,vj->ij", wn, d, d)
  v_ip, _ = _principal_axis(cov_ip)
  v_pa_ht = -jnp.sign(m3) * v_pa
  ref = jnp.where(use_truth, true_dir, v_pa_ht)
  sgn = jnp.sign(jnp.dot(v_ip, ref))
  direction = sgn * v_ip
  reason = jnp.where(
      ~has_charge, FAILED_NO_CHARGE,
      jnp.where(num_impact < 2, FAILED_IMPACT_REGION,
                jnp.where((wsum > 0) & (sgn != 0) & jnp.all(jnp.isfinite(direction)),
                          OK, FAILED_DEGENERATE)))
  failed = reason != OK
  direction = jnp.where(failed, 0.0, direction)
  return direction, failed, reason, num_impact, m2, m3


@jax.jit
def _batched(pos, q, true_dirs, n_sigma_l, n_sigma_h, w0, use_truth, use_sqrt):
  fn = jax.vmap(_one_event, in_axes=(0, 0, 0, None, None, None, None, None))
  return fn(pos, q, true_dirs, n_sigma_l, n_sigma_h, w0, use_truth, use_sqrt)


def _validate(coords, charges, num_voxels, true_dirs, head_tail, threshold):
  coords = np.asarray(coords)
  charges = np.asarray(charges)
  num_voxels = np.asarray(num_voxels)
  if coords.ndim != 3 or coords.shape[-1] != 3:
    raise ValueError(f"moments: coords must be [N, V, 3] voxel indices, got {coords.shape}")
  n, v = coords.shape[:2]
  if charges.shape != (n, v):
    raise ValueError(f"moments: charges must be [N, V] = {(n, v)}, got {charges.shape}")
  if num_voxels.shape != (n,) or not np.issubdtype(num_voxels.dtype, np.integer):
    raise ValueError(f"moments: num_voxels must be an integer [N] = ({n},) array, got "
                     f"{num_voxels.shape} {num_voxels.dtype}")
  if np.any(num_voxels < 0) or np.any(num_voxels > v):
    raise ValueError(f"moments: num_voxels must lie in [0, {v}], got range "
                     f"[{num_voxels.min()}, {num_voxels.max()}]")
  if not np.all(np.isfinite(charges)) or np.any(charges < 0):
    raise ValueError("moments: charges must be finite and >= 0")
  if not np.all(np.isfinite(coords)):
    raise ValueError("moments: coords must be finite")
  valid = np.arange(v)[None, :] < num_voxels[:, None]
  bad = int(np.count_nonzero(charges[~valid]))
  if bad:
    raise ValueError(f"moments: {bad} padded entries (index >= num_voxels) have non-zero "
                     "charge; padding must have charge 0")
  if head_tail not in HEAD_TAIL_MODES:
    raise ValueError(f"moments: head_tail must be one of {HEAD_TAIL_MODES}, got "
                     f"{head_tail!r}")
  if threshold not in THRESHOLD_MODES:
    raise ValueError(f"moments: threshold must be one of {THRESHOLD_MODES}, got "
                     f"{threshold!r}")
  if true_dirs is None:
    if head_tail == "truth":
      raise ValueError("moments: head_tail='truth' needs true_dirs [N, 3]")
    true_dirs = np.zeros((n, 3), np.float32)
  true_dirs = np.asarray(true_dirs, np.float32)
  if true_dirs.shape != (n, 3):
    raise ValueError(f"moments: true_dirs must be [N, 3] = ({n}, 3), got "
                     f"{true_dirs.shape}")
  return coords, charges, num_voxels, valid, true_dirs


def moments_directions(
    coords: np.ndarray,
    charges: np.ndarray,
    num_voxels: np.ndarray,
    *,
    n_sigma_l: float = DEFAULT_N_SIGMA_L,
    n_sigma_h: float = DEFAULT_N_SIGMA_H,
    w0_cm: float = DEFAULT_W0_CM,
    head_tail: str = "skewness",
    true_dirs: np.ndarray | None = None,
    threshold: str = "m2",
    voxel_size_cm: float = DEFAULT_VOXEL_SIZE_CM,
) -> MomentsResult:
  """Initial directions of voxelised recoil tracks by the moments method.

  Args:
    coords: ``[N, V, 3]`` voxel indices (integers, or floats in voxel units).
    charges: ``[N, V]`` voxel charges (electrons), 0 on padding.
    num_voxels: ``[N]`` int, number of valid voxels per event (the first ones).
    n_sigma_l: lower impact-region bound, multiples of M2 (or √M2).
    n_sigma_h: upper impact-region bound, multiples of M2 (or √M2).
    w0_cm: re-weighting length w₀ in cm (``inf`` disables the re-weighting).
    head_tail: ``"skewness"`` (the method) or ``"truth"`` (sign from ``true_dirs``).
    true_dirs: ``[N, 3]`` true directions; needed only for ``head_tail="truth"``.
    threshold: ``"m2"`` (published: length vs n·M2 in cm²) or ``"sqrt_m2"`` (length vs
      n·√M2; a different, separately labelled baseline).
    voxel_size_cm: voxel edge in cm (0.05 for the source study's 0.5 mm voxels).

  Returns:
    ``MomentsResult`` of numpy arrays (``directions [N, 3]``, ``failed [N]``, ...).
  """
  coords, charges, num_voxels, valid, true_dirs = _validate(
      coords, charges, num_voxels, true_dirs, head_tail, threshold)
  if not w0_cm > 0:
    raise ValueError(f"moments: w0_cm must be > 0, got {w0_cm}")
  if not 0 <= n_sigma_l:
    raise ValueError(f"moments: n_sigma_l must be >= 0, got {n_sigma_l}")
  n = coords.shape[0]
  if n == 0:
    empty = np.zeros((0,), np.float32)
    return MomentsResult(np.zeros((0, 3), np.float32), np.zeros((0,), bool),
                         np.zeros((0,), np.int32), np.zeros((0,), np.int32), empty, empty)
  # Subtract each event's first voxel before converting to float: exact for integer
  # indices (the result is then bit-for-bit translation invariant) and keeps the
  # float32 numbers small.
  base = coords.astype(np.int64) if np.issubdtype(coords.dtype, np.integer) else (
      coords.astype(np.float64))
  rel = base - base[:, :1, :]
  pos = (rel.astype(np.float64) * voxel_size_cm).astype(np.float32)
  q = np.where(valid, charges, 0).astype(np.float32)
  out = _batched(pos, q, true_dirs, np.float32(n_sigma_l), np.float32(n_sigma_h),
                 np.float32(w0_cm), head_tail == "truth", threshold == "sqrt_m2")
  direction, failed, reason, num_impact, m2, m3 = (np.asarray(a) for a in out)
  return MomentsResult(direction, failed, reason.astype(np.int32),
                       num_impact.astype(np.int32), m2, m3)


def failure_fraction(failed: np.ndarray) -> float:
  """Fraction of events on which the method failed (1 − efficiency)."""
  failed = np.asarray(failed, bool)
  if failed.size == 0:
    raise ValueError("failure_fraction: no events")
  return float(failed.mean())


def failure_counts(result: MomentsResult) -> dict[str, int]:
  """Number of events per failure reason (including ``"ok"``)."""
  reason = np.asarray(result.reason)
  return {name: int(np.sum(reason == code)) for code, name in FAILURE_NAMES.items()}


def mean_cosine_loss(directions: np.ndarray, true_dirs: np.ndarray,
                     failed: np.ndarray) -> tuple[float, float]:
  """(mean cosine-similarity loss over non-failed events, efficiency).

  The loss is −mean(ŷ·y/(|ŷ||y|)) over events with ``failed == False``; NaN when every
  event failed.
  """
  directions = np.asarray(directions, np.float64)
  true_dirs = np.asarray(true_dirs, np.float64)
  ok = ~np.asarray(failed, bool)
  eff = float(ok.mean()) if ok.size else float("nan")
  if not ok.any():
    return float("nan"), eff
  a, b = directions[ok], true_dirs[ok]
  cos = np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
  return float(-cos.mean()), eff


def grid_search(
    coords: np.ndarray,
    charges: np.ndarray,
    num_voxels: np.ndarray,
    true_dirs: np.ndarray,
    grid_nsl: Sequence[float],
    grid_nsh: Sequence[float],
    grid_w0: Sequence[float],
    *,
    head_tail: str = "skewness",
    threshold: str = "m2",
    voxel_size_cm: float = DEFAULT_VOXEL_SIZE_CM,
    min_efficiency: float = 0.0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """Tune (n_σL, n_σH, w₀) to minimise the mean cosine loss over non-failed events.

  As in the source study (its Figure 6: "the parameters which minimize the
  CosineSimilarityLoss on the test set via a grid search"), this is an optimistic bound,
  not a fair estimate. Combinations with n_σH ≤ n_σL are skipped (their region is empty)
  and listed with ``skipped=True``. A combination is eligible when its efficiency is
  ≥ ``min_efficiency`` and at least one event succeeded.

  Args:
    coords, charges, num_voxels: as in ``moments_directions``.
    true_dirs: ``[N, 3]`` true directions (scoring; and the sign for ``"truth"``).
    grid_nsl, grid_nsh, grid_w0: candidate values (w₀ in cm).
    head_tail, threshold, voxel_size_cm: as in ``moments_directions``.
    min_efficiency: lower bound on the efficiency of the chosen parameters.

  Returns:
    ``(best, table)``: ``best`` is the table row with the lowest loss (keys
    ``n_sigma_l, n_sigma_h, w0_cm, loss, efficiency, failure_fraction, skipped``);
    ``table`` lists every combination in grid order.
  """
  true_dirs = np.asarray(true_dirs)
  table = []
  for nsl, nsh, w0 in itertools.product(grid_nsl, grid_nsh, grid_w0):
    row = {"n_sigma_l": float(nsl), "n_sigma_h": float(nsh), "w0_cm": float(w0)}
    if nsh <= nsl:
      row.update(loss=float("nan"), efficiency=0.0, failure_fraction=1.0, skipped=True)
      table.append(row)
      continue
    res = moments_directions(coords, charges, num_voxels, n_sigma_l=nsl, n_sigma_h=nsh,
                             w0_cm=w0, head_tail=head_tail, true_dirs=true_dirs,
                             threshold=threshold, voxel_size_cm=voxel_size_cm)
    loss, eff = mean_cosine_loss(res.directions, true_dirs, res.failed)
    row.update(loss=loss, efficiency=eff, failure_fraction=1.0 - eff, skipped=False)
    table.append(row)
  eligible = [r for r in table if not r["skipped"] and np.isfinite(r["loss"])
              and r["efficiency"] >= min_efficiency]
  if not eligible:
    raise ValueError("grid_search: no parameter combination has a successful event with "
                     f"efficiency >= {min_efficiency}")
  best = min(eligible, key=lambda r: r["loss"])
  return dict(best), table
