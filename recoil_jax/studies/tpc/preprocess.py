"""Electron-recoil track preprocessing of the TPC study: smear, rotate, mean-centre, voxelise.

Input is a batch of padded ionisation-electron lists, as written by DEGRAD (and by
``recoil_jax.physics.electron_recoils``): every track starts at the origin along +z, positions
in mm. Per track, exactly as the authors of the source study and of arXiv 2403.15949
(``mghrear/3D_Heteroscedastic_Convnet:process_data.py``, ``make_spares_tensors.py``):

1. Gaussian smearing of every electron, isotropic, with one σ per track: σ ~ U(160, 466) µm
   for training, fixed for the test sets (40 keV with 200 µm, 50 keV with 443 µm).
2. Rotation of the track by R = R_z(φ) · R_y(θ) (ROOT ``TVector3.RotateY(θ)`` then
   ``RotateZ(φ)``), with (θ, φ) of an isotropic random direction; the label is R·ẑ, i.e.
   the direction of the recoil's initial momentum after the rotation.
3. Mean-centring (mean over the smeared, rotated electrons).
4. Binning into 120³ voxels of 0.5 mm spanning ±30 mm: index = ⌊(x + 30 mm)/0.5 mm⌋ per axis
   (axis order x, y, z), voxel value = number of electrons.

Tracks with an electron outside the grid are discarded, tracks with more active voxels
than ``max_voxels`` are discarded (never truncated), tracks without electrons are discarded;
all three are counted in :class:`DiscardCounts`.

One difference from the authors' code, on purpose: they cast (x + 3 cm)/0.05 cm to an
integer (truncation toward zero), which keeps electrons in (−30.5, −30] mm in voxel 0; here
the index is the floor (plain binning on the source study's 120³ grid), so those tracks
are discarded.

Everything is vectorised over the batch with numpy (no Python loop over electrons or
tracks) and seeded by a ``np.random.Generator``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

GRID_SIZE = 120
VOXEL_MM = 0.5
HALF_WIDTH_MM = 30.0

# Linearised voxel key: ix * G² + iy * G + iz; a track offset of G³ separates tracks.
_G = GRID_SIZE
_G3 = GRID_SIZE**3


@dataclasses.dataclass(frozen=True)
class VoxelisedTracks:
  """Sparse (COO) voxelised tracks, padded to ``max_voxels`` rows.

  Attributes:
    coords: int32 [N, V_max, 3], voxel indices (x, y, z) in [0, 120); padding rows are 0.
      Rows of one track are sorted by the linear index ix·120² + iy·120 + iz.
    charges: float32 [N, V_max], electrons per voxel; padding is 0.
    num_voxels: int32 [N], active voxels per track (rows < num_voxels are real).
    direction: float32 [N, 3], unit vector: the label (rotated +z axis).
    energy_kev: float32 [N], recoil energy in keV.
    sigma_um: float32 [N], smearing σ applied to the track, in µm.
    source_index: int32 [N], index of the track in the input batch.
  """

  coords: np.ndarray
  charges: np.ndarray
  num_voxels: np.ndarray
  direction: np.ndarray
  energy_kev: np.ndarray
  sigma_um: np.ndarray
  source_index: np.ndarray

  def __len__(self) -> int:
    return int(self.num_voxels.shape[0])

  @property
  def max_voxels(self) -> int:
    return int(self.coords.shape[1])


@dataclasses.dataclass
class DiscardCounts:
  """How many tracks went in, how many were kept and why the others were dropped.

  The three discard reasons are exclusive and checked in the order empty, outside_grid,
  too_many_voxels, so ``total == kept + empty + outside_grid + too_many_voxels``.
  """

  total: int = 0
  kept: int = 0
  outside_grid: int = 0
  too_many_voxels: int = 0
  empty: int = 0

  @property
  def discarded(self) -> int:
    return self.outside_grid + self.too_many_voxels + self.empty

  def __add__(self, other: "DiscardCounts") -> "DiscardCounts":
    return DiscardCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                            for f in dataclasses.fields(self)})

  def as_dict(self) -> dict[str, int]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "DiscardCounts":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
      raise ValueError(f"DiscardCounts: unknown keys {sorted(unknown)}; known {sorted(names)}")
    return cls(**{k: int(v) for k, v in d.items()})

  def __str__(self) -> str:
    frac = 100.0 * self.discarded / self.total if self.total else 0.0
    return (f"kept {self.kept}/{self.total} tracks; discarded {self.discarded} ({frac:.2f} %): "
            f"outside grid {self.outside_grid}, more than max_voxels "
            f"{self.too_many_voxels}, empty {self.empty}")


def random_rotations(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
  """Proper rotations taking +z to isotropic random directions.

  R = R_z(φ) · R_y(θ) with cos θ ~ U(−1, 1), φ ~ U(0, 2π): R·ẑ = (sinθ cosφ, sinθ sinφ,
  cosθ), the authors' ``RotateY(θ)`` then ``RotateZ(φ)``.

  Args:
    rng: random generator (draws cos θ then φ, each of shape [n]).
    n: number of rotations.

  Returns:
    rotations: float64 [n, 3, 3], det = +1.
    directions: float64 [n, 3], unit vectors R·ẑ (the labels).
  """
  cos_t = rng.uniform(-1.0, 1.0, size=n)
  phi = rng.uniform(0.0, 2.0 * np.pi, size=n)
  sin_t = np.sqrt(np.clip(1.0 - cos_t**2, 0.0, None))
  cp, sp = np.cos(phi), np.sin(phi)
  zero, one = np.zeros(n), np.ones(n)
  rot_y = np.stack([np.stack([cos_t, zero, sin_t], -1),
                    np.stack([zero, one, zero], -1),
                    np.stack([-sin_t, zero, cos_t], -1)], -2)
  rot_z = np.stack([np.stack([cp, -sp, zero], -1),
                    np.stack([sp, cp, zero], -1),
                    np.stack([zero, zero, one], -1)], -2)
  rotations = rot_z @ rot_y
  return rotations, rotations[:, :, 2].copy()


def _draw_sigma_um(rng: np.random.Generator, n: int,
                   sigma_um: float | tuple[float, float]) -> np.ndarray:
  if isinstance(sigma_um, (tuple, list)):
    if len(sigma_um) != 2:
      raise ValueError(f"sigma_um must be a float or a (low, high) pair in µm, got {sigma_um!r}")
    lo, hi = float(sigma_um[0]), float(sigma_um[1])
    if not 0.0 <= lo <= hi or not np.isfinite(hi):
      raise ValueError(f"sigma_um range must satisfy 0 <= low <= high < inf, got {sigma_um!r}")
    return rng.uniform(lo, hi, size=n)
  s = float(sigma_um)
  if not (np.isfinite(s) and s >= 0.0):
    raise ValueError(f"sigma_um must be finite and >= 0 µm, got {sigma_um!r}")
  return np.full(n, s)


def _check_batch(positions_mm: np.ndarray, num_electrons: np.ndarray,
                 energy_kev: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  positions = np.asarray(positions_mm)
  if positions.ndim != 3 or positions.shape[-1] != 3:
    raise ValueError(f"positions_mm must have shape [N, E, 3], got {positions.shape}")
  n_tracks, e_max = positions.shape[:2]
  num = np.asarray(num_electrons)
  if num.shape != (n_tracks,) or not np.issubdtype(num.dtype, np.integer):
    raise ValueError(f"num_electrons must be an integer array of shape [{n_tracks}], "
                     f"got {num.dtype} {num.shape}")
  bad = np.flatnonzero((num < 0) | (num > e_max))
  if bad.size:
    raise ValueError(f"num_electrons[{bad[0]}] = {num[bad[0]]} is outside [0, {e_max}] "
                     f"(E_max of positions_mm)")
  energy = np.broadcast_to(np.asarray(energy_kev, np.float32), (n_tracks,))
  valid = np.arange(e_max)[None, :] < num[:, None]
  finite = np.isfinite(positions).all(-1) | ~valid
  if not finite.all():
    t, e = np.argwhere(~finite)[0]
    raise ValueError(f"positions_mm[{t}, {e}] = {positions[t, e]} is not finite "
                     f"(track {t}, electron {e})")
  return positions, num.astype(np.int64), energy


def transform_tracks(
    positions_mm: np.ndarray,
    num_electrons: np.ndarray,
    rng: np.random.Generator,
    sigma_um: float | tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Steps 1–3 (smear, rotate, mean-centre) on a padded batch.

  Random draws, in this order: σ [N] (only for a range), rotations (cos θ [N], φ [N]),
  unit normal noise [N, E, 3].

  Args:
    positions_mm: float [N, E, 3], electrons in mm; rows >= num_electrons[i] are ignored.
    num_electrons: int [N].
    rng: random generator.
    sigma_um: fixed σ in µm, or a (low, high) range for σ ~ U(low, high).

  Returns:
    points_mm: float64 [N, E, 3], transformed and mean-centred; padding rows are 0.
    direction: float64 [N, 3], labels (R·ẑ).
    sigma_um: float64 [N], σ applied per track.
  """
  positions = np.asarray(positions_mm, np.float64)
  num = np.asarray(num_electrons)
  n_tracks, e_max = positions.shape[:2]
  valid = np.arange(e_max)[None, :] < num[:, None]
  sigma = _draw_sigma_um(rng, n_tracks, sigma_um)
  rotations, direction = random_rotations(rng, n_tracks)
  noise = rng.standard_normal(size=positions.shape)
  smeared = positions + noise * (sigma * 1e-3)[:, None, None]
  # rotated[n, e] = R[n] @ smeared[n, e], as three broadcasts (much faster than einsum).
  rotated = sum(smeared[..., j:j + 1] * rotations[:, None, :, j] for j in range(3))
  rotated = np.where(valid[..., None], rotated, 0.0)  # padding (possibly NaN) -> 0
  mean = rotated.sum(1) / np.maximum(num, 1)[:, None]
  centred = np.where(valid[..., None], rotated - mean[:, None, :], 0.0)
  return centred, direction, sigma


def voxel_indices(points_mm: np.ndarray) -> np.ndarray:
  """⌊(x + 30 mm)/0.5 mm⌋ per axis; int64 with the shape of ``points_mm``."""
  return np.floor((np.asarray(points_mm, np.float64) + HALF_WIDTH_MM) / VOXEL_MM).astype(np.int64)


def voxelise(points_mm: np.ndarray, mean_centre: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Bins one track's electrons into the 120³ grid (no smearing, no rotation).

  Args:
    points_mm: float [n, 3], electron positions in mm in the grid frame (grid centre at the
      origin, ±30 mm).
    mean_centre: subtract the electrons' mean position first.

  Returns:
    coords: int32 [m, 3], distinct voxel indices sorted by ix·120² + iy·120 + iz.
    counts: float32 [m], electrons per voxel.

  Raises:
    ValueError: wrong shape, a non-finite position, or an electron outside the grid.
  """
  points = np.asarray(points_mm, np.float64)
  if points.ndim != 2 or points.shape[1] != 3:
    raise ValueError(f"points_mm must have shape [n, 3], got {points.shape}")
  if not np.isfinite(points).all():
    raise ValueError(f"points_mm row {np.argwhere(~np.isfinite(points))[0, 0]} is not finite")
  if mean_centre and len(points):
    points = points - points.mean(0)
  idx = voxel_indices(points)
  outside = ((idx < 0) | (idx >= GRID_SIZE)).any(-1)
  if outside.any():
    i = int(np.flatnonzero(outside)[0])
    raise ValueError(f"{int(outside.sum())} of {len(points)} electrons lie outside the grid "
                     f"±{HALF_WIDTH_MM} mm (first: row {i} at {points[i]} mm)")
  keys = (idx[:, 0] * _G + idx[:, 1]) * _G + idx[:, 2]
  ukeys, counts = np.unique(keys, return_counts=True)
  coords = np.stack([ukeys // (_G * _G), (ukeys // _G) % _G, ukeys % _G], -1)
  return coords.astype(np.int32), counts.astype(np.float32)


def preprocess_tracks(
    positions_mm: np.ndarray,
    num_electrons: np.ndarray,
    energy_kev: np.ndarray | float,
    rng: np.random.Generator,
    sigma_um: float | tuple[float, float],
    max_voxels: int,
) -> tuple[VoxelisedTracks, DiscardCounts]:
  """The source study's full preprocessing on a padded batch of DEGRAD-convention tracks.

  Args:
    positions_mm: float [N, E, 3], electron positions in mm; each track starts at the
      origin along +z. Rows >= num_electrons[i] are ignored.
    num_electrons: int [N], electrons per track.
    energy_kev: float [N] (or a scalar), recoil energies in keV, passed through.
    rng: random generator (see :func:`transform_tracks` for the draw order).
    sigma_um: fixed smearing σ in µm (test sets) or a (low, high) range (training).
    max_voxels: tracks with more active voxels are discarded (and counted).

  Returns:
    (tracks, counts): kept tracks in input order, padded to ``max_voxels`` rows, and the
    discard counts.
  """
  if int(max_voxels) < 1:
    raise ValueError(f"max_voxels must be >= 1, got {max_voxels}")
  max_voxels = int(max_voxels)
  positions, num, energy = _check_batch(positions_mm, num_electrons, energy_kev)
  n_tracks, e_max = positions.shape[:2]
  points, direction, sigma = transform_tracks(positions, num, rng, sigma_um)

  valid = np.arange(e_max)[None, :] < num[:, None]
  idx = voxel_indices(points)
  in_grid = ((idx >= 0) & (idx < GRID_SIZE)).all(-1)
  empty = num == 0
  outside = (valid & ~in_grid).any(-1) & ~empty
  candidate = ~empty & ~outside

  # Voxel occupancy of all candidate tracks at once: one sort of linearised keys.
  cand_ids = np.flatnonzero(candidate)
  sel = valid[cand_ids]
  local_track = np.broadcast_to(np.arange(len(cand_ids))[:, None], sel.shape)[sel]
  cidx = idx[cand_ids][sel]
  keys = local_track * _G3 + (cidx[:, 0] * _G + cidx[:, 1]) * _G + cidx[:, 2]
  ukeys, ucounts = np.unique(keys, return_counts=True)
  key_track = ukeys // _G3
  nvox = np.bincount(key_track, minlength=len(cand_ids))
  ok_local = nvox <= max_voxels
  too_many = int((~ok_local).sum())

  kept_ids = cand_ids[ok_local]
  n_kept = len(kept_ids)
  new_row = np.cumsum(ok_local) - 1  # local candidate index -> output row
  starts = np.cumsum(nvox) - nvox
  keep_key = ok_local[key_track]
  rows = new_row[key_track[keep_key]]
  cols = (np.arange(len(ukeys)) - starts[key_track])[keep_key]
  lin = ukeys[keep_key] % _G3

  coords = np.zeros((n_kept, max_voxels, 3), np.int32)
  charges = np.zeros((n_kept, max_voxels), np.float32)
  coords[rows, cols] = np.stack([lin // (_G * _G), (lin // _G) % _G, lin % _G], -1)
  charges[rows, cols] = ucounts[keep_key]

  tracks = VoxelisedTracks(
      coords=coords,
      charges=charges,
      num_voxels=nvox[ok_local].astype(np.int32),
      direction=direction[kept_ids].astype(np.float32),
      energy_kev=energy[kept_ids].astype(np.float32),
      sigma_um=sigma[kept_ids].astype(np.float32),
      source_index=kept_ids.astype(np.int32),
  )
  counts = DiscardCounts(total=n_tracks, kept=n_kept, outside_grid=int(outside.sum()),
                         too_many_voxels=too_many, empty=int(empty.sum()))
  return tracks, counts
