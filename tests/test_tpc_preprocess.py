"""Tests of the TPC study's preprocessing (smear, rotate, mean-centre, voxelise)."""

import numpy as np
import pytest
from scipy import stats

from recoil_jax.studies.tpc import preprocess as tp


def synthetic_tracks(rng, n_tracks, n_electrons=400, length_mm=(15.0, 30.0)):
  """Noisy straight tracks from the origin along +z whose density grows toward the end."""
  n = rng.integers(n_electrons // 2, n_electrons + 1, n_tracks).astype(np.int32)
  u = np.sqrt(rng.random((n_tracks, n_electrons)))  # density ∝ u: more charge at the end
  length = rng.uniform(*length_mm, n_tracks)
  pos = np.zeros((n_tracks, n_electrons, 3), np.float32)
  pos[..., 2] = u * length[:, None]
  pos[..., :2] = rng.normal(0.0, 0.2, (n_tracks, n_electrons, 2)) * u[..., None]
  pos[np.arange(n_electrons)[None, :] >= n[:, None]] = 0.0
  return pos, n


def voxel_centres_mm(coords):
  return (coords + 0.5) * tp.VOXEL_MM - tp.HALF_WIDTH_MM


def test_rotations_are_proper_and_label_is_rotated_z():
  rot, direction = tp.random_rotations(np.random.default_rng(0), 100)
  np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-12)
  np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape),
                             atol=1e-12)
  np.testing.assert_allclose(rot @ np.array([0.0, 0.0, 1.0]), direction, atol=1e-12)
  # R = Rz(φ) Ry(θ): the rotated x axis has no component along the rotated y axis of Rz only,
  # i.e. R x̂ = (cosθ cosφ, cosθ sinφ, −sinθ).
  cos_t = direction[:, 2]
  phi = np.arctan2(direction[:, 1], direction[:, 0])
  sin_t = np.sqrt(1 - cos_t**2)
  np.testing.assert_allclose(rot[:, :, 0], np.stack([cos_t * np.cos(phi), cos_t * np.sin(phi),
                                                     -sin_t], -1), atol=1e-9)


def test_straight_track_lies_along_label_with_end_forward():
  rng = np.random.default_rng(1)
  n_tracks, n_el = 50, 300
  pos = np.zeros((n_tracks, n_el, 3), np.float32)
  pos[:, :, 2] = np.linspace(0.0, 20.0, n_el)
  pos[:, n_el // 2:, 2] = 20.0  # half the charge in a blob at the end of the track
  num = np.full(n_tracks, n_el, np.int32)
  tracks, counts = tp.preprocess_tracks(pos, num, 40.0, rng, 1.0, max_voxels=1000)
  assert counts.kept == n_tracks
  for i in range(n_tracks):
    n = tracks.num_voxels[i]
    centres = voxel_centres_mm(tracks.coords[i, :n])
    label = tracks.direction[i].astype(np.float64)
    along = centres @ label
    perp = np.linalg.norm(centres - along[:, None] * label, axis=-1)
    # Every voxel centre is within half a voxel diagonal (+ smearing) of the label axis.
    assert perp.max() < np.sqrt(3) * tp.VOXEL_MM / 2 + 0.01
    # The end blob (the most charged voxel) lies forward: +10 mm minus the mean offset.
    blob = centres[np.argmax(tracks.charges[i, :n])] @ label
    assert blob > 4.0
    assert along.max() - along.min() > 19.0


def test_centroid_at_grid_centre_and_charge_conserved():
  rng = np.random.default_rng(2)
  pos, num = synthetic_tracks(rng, 64)
  tracks, counts = tp.preprocess_tracks(pos, num, 45.0, rng, (160.0, 466.0), max_voxels=2000)
  assert counts.kept == 64
  np.testing.assert_array_equal(tracks.charges.sum(1), num[tracks.source_index])
  q = tracks.charges
  centroid_idx = (q[..., None] * (tracks.coords + 0.5)).sum(1) / q.sum(1)[:, None]
  # Mean-centred electrons -> charge-weighted centroid at index 60 (grid centre) up to the
  # binning error (< half a voxel, much less on average).
  np.testing.assert_allclose(centroid_idx, 60.0, atol=0.1)
  # Padding rows are zero.
  pad = np.arange(tracks.max_voxels)[None, :] >= tracks.num_voxels[:, None]
  assert (tracks.charges[pad] == 0).all() and (tracks.coords[pad] == 0).all()
  assert (tracks.charges[~pad] > 0).all()
  assert tracks.coords.dtype == np.int32 and tracks.charges.dtype == np.float32


def test_vectorised_binning_matches_per_track_reference():
  pos, num = synthetic_tracks(np.random.default_rng(3), 30)
  tracks, _ = tp.preprocess_tracks(pos, num, 50.0, np.random.default_rng(7), 300.0, 5000)
  points, direction, sigma = tp.transform_tracks(pos, num, np.random.default_rng(7), 300.0)
  for i in range(len(num)):
    coords, charges = tp.voxelise(points[i, :num[i]])
    n = tracks.num_voxels[i]
    np.testing.assert_array_equal(tracks.coords[i, :n], coords)
    np.testing.assert_array_equal(tracks.charges[i, :n], charges)
  np.testing.assert_allclose(tracks.direction, direction, rtol=1e-6)
  np.testing.assert_allclose(tracks.sigma_um, sigma)


def test_track_leaving_grid_is_discarded_and_counted():
  rng = np.random.default_rng(4)
  pos, num = synthetic_tracks(rng, 12)
  # 120 mm long: ±60 mm after centring, outside ±30 mm along any direction (60/√3 > 30).
  long_ids = [2, 5, 11]
  for i in long_ids:
    pos[i, :num[i], 2] = np.linspace(0.0, 120.0, num[i])
  num[7] = 0  # an empty track
  energy = np.arange(12, dtype=np.float32)
  tracks, counts = tp.preprocess_tracks(pos, num, energy, rng, 200.0, max_voxels=5000)
  assert counts.outside_grid == 3 and counts.empty == 1 and counts.too_many_voxels == 0
  assert counts.kept == 8 and counts.total == 12
  assert counts.total == counts.kept + counts.discarded
  kept = [i for i in range(12) if i not in long_ids + [7]]
  np.testing.assert_array_equal(tracks.source_index, kept)
  np.testing.assert_array_equal(tracks.energy_kev, energy[kept])
  assert "outside grid 3" in str(counts)


def test_grid_edge_uses_floor():
  # Index = floor((x + 30)/0.5): −30 mm is voxel 0, +29.999 is 119, +30 and −30.001 are out.
  coords, counts = tp.voxelise(np.array([[-30.0, 0.0, 29.999], [0.0, -0.001, 0.25]]))
  np.testing.assert_array_equal(coords, [[0, 60, 119], [60, 59, 60]])
  np.testing.assert_array_equal(counts, [1, 1])
  for bad in ([30.0, 0, 0], [0, -30.001, 0]):
    with pytest.raises(ValueError, match="outside the grid"):
      tp.voxelise(np.array([bad]))


def test_max_voxels_discards_without_truncating():
  pos, num = synthetic_tracks(np.random.default_rng(5), 40)
  full, c_full = tp.preprocess_tracks(pos, num, 40.0, np.random.default_rng(9), 300.0, 10_000)
  limit = int(np.median(full.num_voxels))
  cut, c_cut = tp.preprocess_tracks(pos, num, 40.0, np.random.default_rng(9), 300.0, limit)
  expected = np.flatnonzero(full.num_voxels <= limit)
  assert c_cut.too_many_voxels == 40 - len(expected) > 0
  assert c_cut.kept == len(expected) and c_full.kept == 40
  np.testing.assert_array_equal(cut.source_index, full.source_index[expected])
  np.testing.assert_array_equal(cut.num_voxels, full.num_voxels[expected])
  np.testing.assert_array_equal(cut.charges, full.charges[expected, :limit])
  assert cut.coords.shape == (len(expected), limit, 3)
  # The boundary: a track with exactly max_voxels voxels is kept, with one more it is not.
  n0 = int(full.num_voxels[0])
  at, _ = tp.preprocess_tracks(pos, num, 40.0, np.random.default_rng(9), 300.0, n0)
  below, _ = tp.preprocess_tracks(pos, num, 40.0, np.random.default_rng(9), 300.0, n0 - 1)
  assert 0 in at.source_index and 0 not in below.source_index


def test_smearing_sigma_statistics():
  # Tracks of n electrons all at the origin: after smearing, rotation and centring every
  # axis has variance σ²(1 − 1/n), and the axes are uncorrelated (isotropic smearing).
  n_tracks, n_el = 200, 1500
  pos = np.zeros((n_tracks, n_el, 3), np.float32)
  num = np.full(n_tracks, n_el, np.int32)
  points, _, sigma = tp.transform_tracks(pos, num, np.random.default_rng(6), (160.0, 466.0))
  cov = np.einsum("nei,nej->nij", points, points) / (n_el - 1)
  est_um = 1e3 * np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
  # Per track and axis within 8 % (statistical error 1/√(2·1500) ≈ 1.8 %).
  np.testing.assert_allclose(est_um, np.broadcast_to(sigma[:, None], est_um.shape), rtol=0.08)
  assert abs((est_um / sigma[:, None]).mean() - 1.0) < 0.005
  corr = cov / (est_um[:, :, None] * est_um[:, None, :] * 1e-6)
  off = corr[:, ~np.eye(3, dtype=bool)]
  assert np.abs(off).max() < 0.12 and abs(off.mean()) < 0.01
  # σ ~ U(160, 466) µm.
  assert sigma.min() >= 160.0 and sigma.max() <= 466.0
  assert stats.kstest(sigma, stats.uniform(160.0, 306.0).cdf).pvalue > 1e-3
  # The full pipeline reports the σ it applied; the spread of the binned charge agrees
  # (loosely: binning at 0.5 mm adds ≈ (0.5 mm)²/12 for wide blobs).
  tracks, _ = tp.preprocess_tracks(pos, num, 40.0, np.random.default_rng(6), (160.0, 466.0),
                                   max_voxels=500)
  np.testing.assert_allclose(tracks.sigma_um, sigma.astype(np.float32))
  wide = tracks.sigma_um > 350.0
  q = tracks.charges[wide][..., None]
  centres = voxel_centres_mm(tracks.coords[wide])
  var = (q * centres**2).sum(1) / q.sum(1)
  binned_um = 1e3 * np.sqrt(np.clip(var - tp.VOXEL_MM**2 / 12, 0, None))
  np.testing.assert_allclose(binned_um, np.broadcast_to(tracks.sigma_um[wide][:, None],
                                                        binned_um.shape), rtol=0.12)
  # Fixed σ for the test sets.
  fixed, _ = tp.preprocess_tracks(pos[:5], num[:5], 50.0, np.random.default_rng(1), 443.0, 500)
  np.testing.assert_array_equal(fixed.sigma_um, 443.0)


def test_rotation_is_isotropic():
  n = 20_000
  pos = np.zeros((n, 1, 3), np.float32)
  tracks, _ = tp.preprocess_tracks(pos, np.ones(n, np.int32), 40.0, np.random.default_rng(8),
                                   200.0, max_voxels=1)
  d = tracks.direction.astype(np.float64)
  np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1.0, atol=1e-6)
  assert np.abs(d.mean(0)).max() < 4 / np.sqrt(3 * n)
  np.testing.assert_allclose(d.T @ d / n, np.eye(3) / 3, atol=0.015)
  assert stats.kstest(d[:, 2], stats.uniform(-1, 2).cdf).pvalue > 1e-3
  phi = np.arctan2(d[:, 1], d[:, 0])
  assert stats.kstest(phi, stats.uniform(-np.pi, 2 * np.pi).cdf).pvalue > 1e-3


def test_seeded_and_reproducible():
  pos, num = synthetic_tracks(np.random.default_rng(10), 8)
  a, _ = tp.preprocess_tracks(pos, num, 40.0, np.random.default_rng(3), (160.0, 466.0), 3000)
  b, _ = tp.preprocess_tracks(pos, num, 40.0, np.random.default_rng(3), (160.0, 466.0), 3000)
  c, _ = tp.preprocess_tracks(pos, num, 40.0, np.random.default_rng(4), (160.0, 466.0), 3000)
  np.testing.assert_array_equal(a.coords, b.coords)
  np.testing.assert_array_equal(a.direction, b.direction)
  assert not np.array_equal(a.direction, c.direction)


def test_bad_input_is_named():
  pos, num = synthetic_tracks(np.random.default_rng(11), 3)
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match=r"\[N, E, 3\]"):
    tp.preprocess_tracks(pos[..., :2], num, 40.0, rng, 200.0, 100)
  bad = pos.copy()
  bad[1, 3, 0] = np.nan
  with pytest.raises(ValueError, match=r"positions_mm\[1, 3\].*track 1, electron 3"):
    tp.preprocess_tracks(bad, num, 40.0, rng, 200.0, 100)
  with pytest.raises(ValueError, match="num_electrons"):
    tp.preprocess_tracks(pos, num + 1000, 40.0, rng, 200.0, 100)
  with pytest.raises(ValueError, match="sigma_um"):
    tp.preprocess_tracks(pos, num, 40.0, rng, (466.0, 160.0), 100)
  with pytest.raises(ValueError, match="max_voxels"):
    tp.preprocess_tracks(pos, num, 40.0, rng, 200.0, 0)
  # NaN in padding rows is ignored.
  pad = pos.copy()
  pad[0, num[0]:, :] = np.nan
  tp.preprocess_tracks(pad, num, 40.0, rng, 200.0, 5000)


def test_discard_counts_add_and_roundtrip():
  a = tp.DiscardCounts(total=10, kept=7, outside_grid=2, too_many_voxels=1)
  b = tp.DiscardCounts(total=5, kept=5)
  s = a + b
  assert (s.total, s.kept, s.discarded) == (15, 12, 3)
  assert tp.DiscardCounts.from_dict(s.as_dict()) == s
  with pytest.raises(ValueError, match="unknown keys"):
    tp.DiscardCounts.from_dict({"total": 1, "lost": 2})
