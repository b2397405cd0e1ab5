"""Tests of recoil_jax.studies.tpc.analysis (efficiency curve, calibration, plots, tables)."""

import json
import math
import os

import jax.numpy as jnp
from matplotlib.figure import Figure
import numpy as np
import pytest

from recoil_jax.losses import direction as direction_losses
from recoil_jax.studies.tpc import analysis as tpc_analysis

N = 20000


def _unit(v):
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


def sample_vmf_np(rng, mu, kappa):
  """Numpy vMF sampler (inverse CDF of u = 1 − μ·y, uniform azimuth)."""
  xi = rng.uniform(size=kappa.shape)
  t = -np.log1p(xi * np.expm1(-2 * kappa)) / kappa
  w = 1 - t
  r = np.sqrt(np.clip(t * (2 - t), 0, 1))
  a = _unit(np.cross(mu, rng.normal(size=mu.shape)))
  b = np.cross(mu, a)
  phi = rng.uniform(0, 2 * np.pi, size=kappa.shape)
  return w[:, None] * mu + r[:, None] * (np.cos(phi)[:, None] * a + np.sin(phi)[:, None] * b)


@pytest.fixture(scope="module")
def calibrated():
  rng = np.random.default_rng(0)
  mu = _unit(rng.normal(size=(N, 3)))
  kappa = np.exp(rng.uniform(np.log(0.5), np.log(200.0), size=N))
  y = sample_vmf_np(rng, mu, kappa)
  return mu, kappa, y


def test_efficiency_curve_monotone_for_calibrated_model(calibrated):
  mu, kappa, y = calibrated
  cos_loss = -np.sum(mu * y, -1)
  cuts = np.arange(0, 0.95, 0.05)
  curve = tpc_analysis.efficiency_curve(cos_loss, kappa, cuts)
  assert curve.shape == cuts.shape
  assert np.all(np.diff(curve) < 0)
  # Value at 0 % cut: the mean, and its expectation −E[coth κ − 1/κ] (5σ).
  assert curve[0] == pytest.approx(cos_loss.mean(), abs=1e-12)
  expect = -np.mean(1 / np.tanh(kappa) - 1 / kappa)
  assert abs(curve[0] - expect) < 5 * cos_loss.std() / math.sqrt(N)
  # Explicit check of one point: drop the 25 % lowest κ.
  keep = np.argsort(kappa)[int(0.25 * N):]
  assert curve[5] == pytest.approx(cos_loss[keep].mean(), abs=1e-12)
  # Negative control: an uninformative κ gives no improvement with the cut.
  shuffled = np.random.default_rng(1).permutation(kappa)
  flat = tpc_analysis.efficiency_curve(cos_loss, shuffled, [0.0, 0.5])
  assert abs(flat[1] - flat[0]) < 5 * cos_loss.std() / math.sqrt(N / 2)
  assert curve[0] - curve[10] > 20 * cos_loss.std() / math.sqrt(N / 2)


def test_efficiency_curve_rejects_bad_input():
  with pytest.raises(ValueError, match="cut fractions"):
    tpc_analysis.efficiency_curve(np.zeros(4), np.ones(4), [1.0])
  with pytest.raises(ValueError, match="kappa"):
    tpc_analysis.efficiency_curve(np.zeros(4), np.ones(3), [0.0])
  with pytest.raises(ValueError, match="non-finite"):
    tpc_analysis.efficiency_curve(np.array([0.0, np.nan]), np.ones(2), [0.0])


def test_cone_coverage_calibrated_and_overconfident(calibrated):
  mu, kappa, y = calibrated
  nominal = np.array(tpc_analysis.DEFAULT_NOMINAL)
  obs = tpc_analysis.cone_coverage(mu, kappa, y)
  err = tpc_analysis.binomial_error(nominal, N)
  assert np.all(np.abs(obs - nominal) < 4 * err), (obs, nominal)
  # Negative control: κ × 4 is over-confident: far too few inside the cones.
  over = tpc_analysis.cone_coverage(mu, 4 * kappa, y)
  assert np.all(nominal - over > 10 * err), over
  # Under-confident κ / 4 covers too much.
  under = tpc_analysis.cone_coverage(mu, kappa / 4, y)
  assert np.all(under - nominal > 10 * err), under


def test_cone_angle_matches_jax_version():
  k = np.geomspace(1e-4, 1e4, 20)
  for p in (0.5, 0.9):
    np.testing.assert_allclose(tpc_analysis.vmf_cone_angle(k, p),
                               np.asarray(direction_losses.vmf_cone_angle(jnp.asarray(k), p)),
                               rtol=2e-5)


def test_angular_errors_deg():
  a = np.array([[1.0, 0, 0], [1, 0, 0], [1, 0, 0], [2, 0, 0]])
  b = np.array([[0.0, 1, 0], [-1, 0, 0], [1, 1e-9, 0], [1, 0, 0]])
  np.testing.assert_allclose(tpc_analysis.angular_errors_deg(a, b),
                             [90.0, 180.0, np.degrees(1e-9), 0.0], rtol=1e-9, atol=1e-12)
  with pytest.raises(ValueError, match="pred"):
    tpc_analysis.angular_errors_deg(np.zeros((2, 2)), np.zeros((2, 2)))


def _example_results(calibrated):
  mu, kappa, y = calibrated
  rng = np.random.default_rng(2)
  cos_loss = -np.sum(mu * y, -1)
  nml_failed = rng.uniform(size=N) < 0.25
  nml_loss = rng.uniform(-1, 1, size=N) * 0.5 - 0.2
  entry = tpc_analysis.figure6_entry(
      hetero_cos_loss=cos_loss, hetero_kappa=kappa, homo_cos_loss=cos_loss + 0.01,
      nml_cos_loss=nml_loss, nml_failed=nml_failed,
      nml_true_cos_loss=nml_loss - 0.3, nml_true_failed=nml_failed,
      nml_tuned_cos_loss=nml_loss - 0.2, nml_tuned_failed=rng.uniform(size=N) < 0.8,
      nml_tuned_params={"n_sigma_l": 3.0, "n_sigma_h": 11.0, "w0_cm": 1.62})
  return {"40 keV, σ 200 µm": entry, "50 keV, σ 443 µm": entry}


def test_figure6_entry_values(calibrated):
  results = _example_results(calibrated)
  e = results["40 keV, σ 200 µm"]
  assert e["label"] == "simulated"
  assert e["nml"]["efficiency"] == pytest.approx(1 - e["nml"]["failure_fraction"])
  assert 0.7 < e["nml"]["efficiency"] < 0.8
  fr = e["hetero"]["cut_fractions"]
  for c in tpc_analysis.TABLE_CUTS:
    assert any(abs(f - c) < 1e-12 for f in fr)


def test_plots_write_png(tmp_path, calibrated):
  results = _example_results(calibrated)
  mu, kappa, y = calibrated
  paths = [
      tpc_analysis.plot_figure6(tmp_path / "figure6.png", results),
      tpc_analysis.plot_calibration(tmp_path / "calibration.png", {
          "calibrated": {"nominal": tpc_analysis.DEFAULT_NOMINAL,
                         "observed": tpc_analysis.cone_coverage(mu, kappa, y),
                         "num_events": N}}),
      tpc_analysis.plot_calibration(tmp_path / "calibration2.png", {
          "over-confident": tpc_analysis.cone_coverage(mu, 4 * kappa, y)},
          tpc_analysis.DEFAULT_NOMINAL, num_events={"over-confident": N}),
      tpc_analysis.plot_angular_error_histograms(tmp_path / "angles.png", {
          "vMF model": tpc_analysis.angular_errors_deg(mu, y)}),
  ]
  for p in paths:
    assert os.path.getsize(p) > 5000
    with open(p, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  # Drawing on caller-provided Axes.
  fig = Figure()
  ax = fig.subplots()
  assert tpc_analysis.plot_figure6(ax, {"one": results["40 keV, σ 200 µm"]}) is ax
  assert len(ax.lines) >= 4
  with pytest.raises(ValueError, match="one Axes"):
    tpc_analysis.plot_figure6(ax, results)
  with pytest.raises(ValueError, match="unknown keys"):
    tpc_analysis.plot_figure6(tmp_path / "x.png", {"bad": {"hetro": {}}})


def test_write_table(tmp_path, calibrated):
  results = _example_results(calibrated)
  json_path, md_path = tpc_analysis.write_table(results, tmp_path / "work")
  with open(json_path) as f:
    doc = json.load(f)
  assert doc["label"] == "simulated"
  row = doc["table"]["40 keV, σ 200 µm"]
  e = results["40 keV, σ 200 µm"]
  assert row["nml"] == pytest.approx(e["nml"]["loss"])
  assert row["nml_tuned_params"]["w0_cm"] == 1.62
  assert row["nml_true_head_tail"] == pytest.approx(e["nml_true_head_tail"]["loss"])
  idx = e["hetero"]["cut_fractions"].index(0.25)
  assert row["hetero_cut_25pct"] == pytest.approx(e["hetero"]["losses"][idx])
  # The vMF loss at the non-ML efficiency lies on the curve at cut = 1 − efficiency.
  cut = 1.0 - e["nml"]["efficiency"]
  expected = np.interp(cut, e["hetero"]["cut_fractions"], e["hetero"]["losses"])
  assert row["hetero_at_nml_efficiency"] == pytest.approx(expected)
  md = open(md_path).read()
  assert "simulated" in md
  assert md.count("| 40 keV, σ 200 µm |") == 1
  assert f"{row['hetero_cut_50pct']:.3f}" in md
  assert f"({row['nml_efficiency']:.3f})" in md
  assert f"({row['nml_tuned_efficiency']:.3f})" in md
  # The wrapper form keeps metadata; the label is configurable.
  json2, md2 = tpc_analysis.write_table({"test_sets": results, "model_head": "vmf"},
                                     tmp_path / "work2", label="simulated (toy)")
  with open(json2) as f:
    doc2 = json.load(f)
  assert doc2["metadata"] == {"model_head": "vmf"} and doc2["label"] == "simulated (toy)"
  assert "simulated (toy)" in open(md2).read()
  # Missing table cut in the hetero curve is an error naming the test set.
  bad = {"x": {"hetero": {"cut_fractions": [0.0, 0.1], "losses": [-0.5, -0.6]}}}
  with pytest.raises(ValueError, match="'x'.*cut 0.25"):
    tpc_analysis.write_table(bad, tmp_path / "bad")
