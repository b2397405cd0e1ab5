"""Tests of the non-ML moments direction method (recoil_jax.studies.tpc.moments)."""

import numpy as np
import pytest

from recoil_jax.studies.tpc import moments

VOXEL_CM = 0.05


def make_tracks(n, seed=0, length_cm=2.0, sigma_cm=0.03, electrons=1200, bend_per_cm=0.1,
                bragg_cm=0.3):
  """Synthetic voxelised tracks with Bragg-like charge growth toward the end.

  Electrons along a gently bent path s·d + b s² e, with linear density ∝ 1/(L + a − s)
  (dE/dx ∝ 1/E-like, rising toward the end), Gaussian smearing, 0.5 mm voxels.

  Returns:
    coords [n, V, 3] int32 voxel indices, charges [n, V], num_voxels [n], dirs [n, 3].
  """
  rng = np.random.default_rng(seed)
  dirs = rng.normal(size=(n, 3))
  dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
  tracks = []
  for d in dirs:
    e = np.cross(d, rng.normal(size=3))
    e /= np.linalg.norm(e)
    u = rng.uniform(size=electrons)
    total = length_cm + bragg_cm
    s = total * (1 - (bragg_cm / total) ** u)  # inverse CDF of the 1/(L + a − s) law
    pts = (s[:, None] * d + (bend_per_cm * s**2)[:, None] * e
           + rng.normal(scale=sigma_cm, size=(electrons, 3)) + rng.uniform(-1, 1, size=3))
    idx = np.floor(pts / VOXEL_CM).astype(np.int64) + 60
    tracks.append(np.unique(idx, axis=0, return_counts=True))
  v = max(len(c) for c, _ in tracks)
  coords = np.zeros((n, v, 3), np.int32)
  charges = np.zeros((n, v), np.float32)
  num = np.zeros(n, np.int32)
  for i, (c, q) in enumerate(tracks):
    coords[i, :len(c)] = c
    charges[i, :len(c)] = q
    num[i] = len(c)
  return coords, charges, num, dirs


def reference_moments(pos, q, true_dir, nsl=1.5, nsh=3.0, w0=0.05, truth=False):
  """Slow, obvious per-event numpy version of the moments method (pos in cm).

  Di Marco et al., arXiv 2202.01093, in 3-D as ``mghrear/3D_Heteroscedastic_Convnet:
  mymodels.py`` (``NML``).
  """
  xb = (q[:, None] * pos).sum(0) / q.sum()
  x = pos - xb
  cov = (q[:, None] * x).T @ x / q.sum()
  _, _, vt = np.linalg.svd(cov)
  v_pa, m2 = vt[0], np.linalg.eigvalsh(cov)[-1]
  proj = x @ v_pa
  m3 = np.sum(q * proj**3) / q.sum()
  sel = (np.sign(proj) == np.sign(m3)) & (nsl * m2 < np.abs(proj)) & (np.abs(proj) < nsh * m2)
  if sel.sum() < 2:
    return None
  x_ir, q_ir = x[sel], q[sel]
  x_ip = (q_ir[:, None] * x_ir).sum(0) / q_ir.sum()
  d = x_ir - x_ip
  w = q_ir * np.exp(-np.linalg.norm(d, axis=1) / w0)
  _, _, vt2 = np.linalg.svd((w[:, None] * d).T @ d / w.sum())
  v_ip = vt2[0]
  v_pa = -np.sign(m3) * v_pa
  return np.sign(v_ip @ (true_dir if truth else v_pa)) * v_ip


@pytest.fixture(scope="module")
def tracks():
  return make_tracks(160, seed=1)


def test_recovers_axis_and_head_tail(tracks):
  coords, charges, num, dirs = tracks
  res = moments.moments_directions(coords, charges, num)
  assert res.directions.shape == (160, 3) and res.failed.shape == (160,)
  ok = ~res.failed
  assert ok.mean() > 0.95
  np.testing.assert_allclose(np.linalg.norm(res.directions[ok], axis=1), 1.0, atol=1e-5)
  cos = np.sum(res.directions * dirs, -1)[ok]
  assert np.median(np.abs(cos)) > 0.97
  assert np.mean(np.abs(cos) > 0.9) > 0.9
  assert np.mean(cos > 0) > 0.85  # skewness head/tail right for most
  loss, eff = moments.mean_cosine_loss(res.directions, dirs, res.failed)
  assert loss < -0.8 and eff == ok.mean()


def test_truth_mode_sign_and_same_axis(tracks):
  coords, charges, num, dirs = tracks
  skew = moments.moments_directions(coords, charges, num)
  truth = moments.moments_directions(coords, charges, num, head_tail="truth", true_dirs=dirs)
  np.testing.assert_array_equal(skew.failed, truth.failed)
  ok = ~truth.failed
  assert np.all(np.sum(truth.directions * dirs, -1)[ok] > 0)
  # Only the sign differs between the modes.
  np.testing.assert_allclose(np.abs(np.sum(truth.directions * skew.directions, -1))[ok],
                             1.0, atol=1e-5)
  with pytest.raises(ValueError, match="true_dirs"):
    moments.moments_directions(coords, charges, num, head_tail="truth")


def test_matches_per_event_reference(tracks):
  coords, charges, num, dirs = tracks
  sub = slice(0, 40)
  res = moments.moments_directions(coords[sub], charges[sub], num[sub], w0_cm=0.1)
  agree = 0
  for i in range(40):
    n = num[i]
    pos = coords[i, :n].astype(np.float64) * VOXEL_CM
    ref = reference_moments(pos, charges[i, :n].astype(np.float64), dirs[i], w0=0.1)
    assert (ref is None) == bool(res.failed[i])
    if ref is not None:
      agree += np.dot(ref, res.directions[i]) > 1 - 1e-4
  assert agree >= 39  # float32 vs float64: a borderline voxel may flip region membership


def test_translation_and_padding_invariance(tracks):
  coords, charges, num, dirs = tracks
  base = moments.moments_directions(coords, charges, num)
  rng = np.random.default_rng(2)
  shift = rng.integers(-40, 40, size=(coords.shape[0], 1, 3)).astype(np.int32)
  moved = moments.moments_directions(coords + shift, charges, num)
  np.testing.assert_array_equal(moved.failed, base.failed)
  np.testing.assert_array_equal(moved.directions, base.directions)
  pad = 7
  coords_p = np.concatenate([coords, np.zeros_like(coords[:, :pad])], axis=1)
  charges_p = np.concatenate([charges, np.zeros_like(charges[:, :pad])], axis=1)
  padded = moments.moments_directions(coords_p, charges_p, num)
  np.testing.assert_array_equal(padded.failed, base.failed)
  np.testing.assert_allclose(padded.directions, base.directions, atol=1e-6)


def test_axis_permutation_equivariance(tracks):
  """Permuting the grid axes and mirroring one permutes/mirrors the direction."""
  coords, charges, num, dirs = tracks
  base = moments.moments_directions(coords, charges, num)
  perm = np.array([2, 0, 1])
  c2 = coords[..., perm].copy()
  c2[..., 1] = 200 - c2[..., 1]
  out = moments.moments_directions(c2, charges, num)
  want = base.directions[:, perm].copy()
  want[:, 1] *= -1
  ok = ~base.failed & ~out.failed
  assert np.mean(np.sum(out.directions * want, -1)[ok] > 1 - 1e-4) > 0.97


def test_failure_handling():
  coords, charges, num, dirs = make_tracks(3, seed=3)
  v = coords.shape[1]
  extra_c = np.zeros((4, v, 3), np.int32)
  extra_q = np.zeros((4, v), np.float32)
  extra_n = np.array([0, 1, 2, 3], np.int32)
  extra_c[1, 0] = [5, 5, 5]  # one voxel
  extra_q[1, 0] = 10.0
  extra_c[2, :2] = [[5, 5, 5], [9, 5, 5]]  # two equal voxels: M3 = 0
  extra_q[2, :2] = 4.0
  extra_c[3, :3] = [[5, 5, 5], [6, 5, 5], [7, 5, 5]]  # zero charge everywhere
  all_c = np.concatenate([coords, extra_c])
  all_q = np.concatenate([charges, extra_q])
  all_n = np.concatenate([num, extra_n])
  res = moments.moments_directions(all_c, all_q, all_n)
  assert np.all(np.isfinite(res.directions)) and np.all(np.isfinite(res.m2))
  np.testing.assert_array_equal(res.failed[3:], True)
  np.testing.assert_array_equal(res.directions[res.failed], 0.0)
  assert list(res.reason[3:]) == [moments.FAILED_NO_CHARGE, moments.FAILED_IMPACT_REGION,
                                  moments.FAILED_IMPACT_REGION, moments.FAILED_NO_CHARGE]
  # The good events are unaffected by the bad ones in the batch.
  alone = moments.moments_directions(coords, charges, num)
  np.testing.assert_array_equal(res.failed[:3], alone.failed)
  np.testing.assert_allclose(res.directions[:3], alone.directions, atol=1e-6)
  counts = moments.failure_counts(res)
  assert counts["no_charge"] == 2 and counts["impact_region"] == 2
  assert sum(counts.values()) == 7
  assert moments.failure_fraction(res.failed) == pytest.approx(4 / 7 + res.failed[:3].sum() / 7)
  # Re-weighting that underflows everywhere is reported as degenerate, not NaN.
  tiny = moments.moments_directions(coords, charges, num, w0_cm=1e-6)
  assert np.all(np.isfinite(tiny.directions))
  assert np.all(tiny.reason[tiny.failed] != moments.OK)


def test_input_validation(tracks):
  coords, charges, num, dirs = tracks
  bad_q = charges.copy()
  i = int(np.argmin(num))  # an event with padding
  assert num[i] < charges.shape[1]
  bad_q[i, num[i]] = 1.0
  with pytest.raises(ValueError, match="padded entries"):
    moments.moments_directions(coords, bad_q, num)
  with pytest.raises(ValueError, match="head_tail"):
    moments.moments_directions(coords, charges, num, head_tail="median")
  with pytest.raises(ValueError, match="threshold"):
    moments.moments_directions(coords, charges, num, threshold="sigma")
  with pytest.raises(ValueError, match="num_voxels"):
    moments.moments_directions(coords, charges, num + 10_000)
  with pytest.raises(ValueError, match="coords"):
    moments.moments_directions(coords[..., :2], charges, num)


def test_sqrt_m2_variant_is_distinct():
  coords, charges, num, dirs = make_tracks(40, seed=4, length_cm=1.0)
  m2 = moments.moments_directions(coords, charges, num)
  sq = moments.moments_directions(coords, charges, num, threshold="sqrt_m2")
  assert not np.array_equal(m2.num_impact, sq.num_impact)
  # For short tracks (M2 < 1 cm²) √M2 > M2, so the √M2 region sits further out.
  ok = ~sq.failed
  assert ok.mean() > 0.9 and np.mean(np.sum(sq.directions * dirs, -1)[ok] > 0) > 0.8


def test_grid_search_returns_best_of_grid(tracks):
  coords, charges, num, dirs = tracks
  sub = slice(0, 60)
  best, table = moments.grid_search(
      coords[sub], charges[sub], num[sub], dirs[sub], grid_nsl=[0.5, 1.5, 3.0],
      grid_nsh=[3.0, 6.0], grid_w0=[0.05, 0.3, np.inf])
  assert len(table) == 18
  assert sum(r["skipped"] for r in table) == 3  # n_σH ≤ n_σL
  losses = [r["loss"] for r in table if not r["skipped"] and np.isfinite(r["loss"])]
  assert best["loss"] == min(losses)
  assert 0 < best["efficiency"] <= 1
  default = moments.moments_directions(coords[sub], charges[sub], num[sub])
  default_loss, _ = moments.mean_cosine_loss(default.directions, dirs[sub], default.failed)
  assert best["loss"] <= default_loss + 1e-12
  row = next(r for r in table if (r["n_sigma_l"], r["n_sigma_h"], r["w0_cm"])
             == (best["n_sigma_l"], best["n_sigma_h"], best["w0_cm"]))
  assert row["loss"] == best["loss"]
  with pytest.raises(ValueError, match="no parameter combination"):
    moments.grid_search(coords[sub], charges[sub], num[sub], dirs[sub], [2.0], [1.0],
                        [0.05])
