"""The 14 discriminating variables on shapes with known values (line, band, disk, blob)."""

from __future__ import annotations

import numpy as np
import pytest

from recoil_jax.studies.cygno import observables as ob


def _line(n, row=10, col0=5):
  return np.full(n, row), np.arange(col0, col0 + n), np.ones(n)


def _disk(radius, centre=40):
  yy, xx = np.mgrid[-radius - 1:radius + 2, -radius - 1:radius + 2]
  inside = xx**2 + yy**2 <= radius**2
  return yy[inside] + centre, xx[inside] + centre, np.ones(inside.sum())


def test_names_and_datasets():
  assert len(ob.NAMES) == 14 and len(set(ob.NAMES)) == 14
  assert set(ob.DATASETS["Variable_5"]) | set(ob.DATASETS["Variable_9"]) == set(ob.NAMES)
  assert not set(ob.DATASETS["Variable_5"]) & set(ob.DATASETS["Variable_9"])


def test_straight_line():
  n = 40
  v = ob.compute(*_line(n))
  assert v["SC_nhits"] == n and v["SC_integral"] == n and v["delta"] == 1.0
  assert v["SC_length"] == n and v["SC_width"] == 1 and v["slimness"] == 1 / n
  assert v["LAPA"] == n - 1
  np.testing.assert_allclose(v["SDCD"], np.sqrt((n**2 - 1) / 12))  # Uniform on n points.
  assert v["CylThick"] == pytest.approx(0.0, abs=1e-9)  # On its own axis.
  assert v["thin_track"] == n and v["curlyness"] == 1.0  # Already thin; < 50: no pruning.
  assert v["MaxDen"] == 2.0 and v["eta"] == 2.0 / n  # A 2×2 block holds 2 line pixels.


def test_long_line_is_pruned_and_charge_uniformity():
  n = 400
  v = ob.compute(*_line(n))
  assert v["thin_track"] == n - 16  # > 50 pixels: 8 end-point passes, 2 ends each.
  # mean_j |x_i − x_j| = L(½ − u + u²) for u = x/L uniform: std L/√180 = L/(6√5).
  np.testing.assert_allclose(v["ChargeUnif"], n / (6 * np.sqrt(5)), rtol=0.01)


def test_band_cylindrical_thickness_both_definitions():
  length, width = 40, 3
  rr, cc = np.meshgrid(np.arange(10, 10 + width), np.arange(5, 5 + length), indexing="ij")
  r, c = rr.ravel(), cc.ravel()
  v = ob.compute(r, c, np.ones(r.size))
  # Σ of squared transverse distances: length · Σ_j (j − 1)² over 3 rows = 40 · 2.
  assert v["CylThick"] == pytest.approx(length * width * (width**2 - 1) / 12)
  assert v["SC_width"] == width and v["SC_length"] == length
  # The CYGNO-code reading: the mean squared *longitudinal* distance, (L² − 1)/12.
  code = ob.compute(r, c, np.ones(r.size), {"CylThick": "cygno_code"})
  assert code["CylThick"] == pytest.approx((length**2 - 1) / 12)
  # A 3-wide band thins to its mid line, shortened at the ends by the blur and thinning.
  assert length - 10 <= v["thin_track"] <= length and v["curlyness"] == 1.0


def test_disk():
  radius = 15
  r, c, q = _disk(radius)
  v = ob.compute(r, c, q)
  np.testing.assert_allclose(v["SDCD"], radius / np.sqrt(2), rtol=0.01)  # √(R²/2).
  np.testing.assert_allclose(v["CylThick"], np.pi * radius**4 / 4, rtol=0.01)  # ∫y² dA.
  assert v["LAPA"] == 2 * radius and v["SC_length"] == v["SC_width"] == 2 * radius + 1
  np.testing.assert_allclose(v["SC_nhits"], np.pi * radius**2, rtol=0.01)
  assert v["slimness"] == 1.0 and v["thin_track"] <= 3  # A disk thins to a point.
  # Mean distance from a point to a unit disk: ⟨m⟩ = 128/(45π) R at the centre ... its
  # spread over the disk is positive and well below the radius.
  assert 0.05 * radius < v["ChargeUnif"] < 0.5 * radius


def test_gaussian_blob_charge_variables():
  sigma, amp = 3.0, 100.0
  yy, xx = np.mgrid[0:41, 0:41]
  # Centred on the corner shared by pixels (20, 20), (20, 21), (21, 20), (21, 21): one 2×2
  # block (even-indexed) holds the four brightest pixels.
  q = amp * np.exp(-((yy - 20.5)**2 + (xx - 20.5)**2) / (2 * sigma**2))
  keep = q > 0.01
  v = ob.compute(yy[keep], xx[keep], q[keep])
  np.testing.assert_allclose(v["MaxDen"], 4 * amp * np.exp(-0.5 / (2 * sigma**2)), rtol=1e-9)
  np.testing.assert_allclose(v["SC_integral"], 2 * np.pi * sigma**2 * amp, rtol=2e-3)
  np.testing.assert_allclose(v["delta"], v["SC_integral"] / keep.sum())
  assert v["eta"] == v["MaxDen"] / v["thin_track"]


def test_lapa_definitions_disagree_only_when_projections_straddle_zero():
  # Along the x axis at positive coordinates: the same.
  r, c, q = _line(30, row=4, col0=10)
  assert ob.compute(r, c, q)["LAPA"] == ob.compute(r, c, q, {"LAPA": "cygno_code"})["LAPA"]
  # The anti-diagonal col + row = 40: projections on (1, −1)/√2 of uncentred pixels run
  # from −40/√2 to +40/√2 through 0; the code's max|p| − min|p| gives half the length.
  t = np.arange(41)
  paper = ob.compute(40 - t, t, np.ones(41))["LAPA"]
  code = ob.compute(40 - t, t, np.ones(41), {"LAPA": "cygno_code"})["LAPA"]
  np.testing.assert_allclose(paper, 40 * np.sqrt(2))
  np.testing.assert_allclose(code, 20 * np.sqrt(2))


def test_charge_uniformity_code_reading():
  r, c, q = _line(20)
  paper = ob.compute(r, c, q)["ChargeUnif"]
  code = ob.compute(r, c, q, {"ChargeUnif": "cygno_code"})["ChargeUnif"]
  xs = np.arange(20.0)
  m = np.abs(xs[:, None] - xs[None]).sum(1) / 19
  np.testing.assert_allclose(paper, np.std(m))
  np.testing.assert_allclose(code, np.std(np.concatenate([[0.0], m[:-1]])))


def test_curled_skeleton_and_min_area_rectangle():
  # An L of two 1-pixel arms of 30 and 12 pixels sharing a corner: 41 skeleton pixels; the
  # minimum-area rectangle is the 30 × 12 box (long side 29 between pixel centres).
  r = np.concatenate([np.full(30, 5), np.arange(6, 17)])
  c = np.concatenate([np.arange(5, 35), np.full(11, 5)])
  v = ob.compute(r, c, np.ones(41))
  assert v["thin_track"] == 41
  np.testing.assert_allclose(v["curlyness"], 30 / 41)
  np.testing.assert_allclose(ob.min_area_rectangle_long_side(
      np.array([[0, 0], [3, 4], [6, 8]])), 10.0)  # Collinear points: their extent.


def test_single_pixel_and_errors():
  v = ob.compute([3], [4], [7.0])
  assert v["SC_nhits"] == 1 and v["SDCD"] == 0 and v["MaxDen"] == 7 and v["thin_track"] == 1
  with pytest.raises(ValueError, match="n >= 1 hits"):
    ob.compute([], [], [])
  with pytest.raises(ValueError, match="unknown definition"):
    ob.compute([1], [1], [1.0], {"LAPA": "other"})
