"""Tests of recoil_jax.analysis.direction (angular errors, κ-cut efficiency curve, vMF cone
calibration, their plots): numpy references and calibrated / mis-calibrated vMF samples."""

import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from recoil_jax.analysis import direction
from recoil_jax.losses import direction as direction_losses

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
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
  curve = direction.efficiency_curve(cos_loss, kappa, cuts)
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
  flat = direction.efficiency_curve(cos_loss, shuffled, [0.0, 0.5])
  assert abs(flat[1] - flat[0]) < 5 * cos_loss.std() / math.sqrt(N / 2)
  assert curve[0] - curve[10] > 20 * cos_loss.std() / math.sqrt(N / 2)


def test_efficiency_curve_rejects_bad_input():
  with pytest.raises(ValueError, match="cut fractions"):
    direction.efficiency_curve(np.zeros(4), np.ones(4), [1.0])
  with pytest.raises(ValueError, match="kappa"):
    direction.efficiency_curve(np.zeros(4), np.ones(3), [0.0])
  with pytest.raises(ValueError, match="non-finite"):
    direction.efficiency_curve(np.array([0.0, np.nan]), np.ones(2), [0.0])


def test_cone_coverage_calibrated_and_overconfident(calibrated):
  mu, kappa, y = calibrated
  nominal = np.array(direction.DEFAULT_NOMINAL)
  obs = direction.cone_coverage(mu, kappa, y)
  err = direction.binomial_error(nominal, N)
  assert np.all(np.abs(obs - nominal) < 4 * err), (obs, nominal)
  # Negative control: κ × 4 is over-confident: far too few inside the cones.
  over = direction.cone_coverage(mu, 4 * kappa, y)
  assert np.all(nominal - over > 10 * err), over
  # Under-confident κ / 4 covers too much.
  under = direction.cone_coverage(mu, kappa / 4, y)
  assert np.all(under - nominal > 10 * err), under


def test_cone_angle_matches_jax_version():
  k = np.geomspace(1e-4, 1e4, 20)
  for p in (0.5, 0.9):
    np.testing.assert_allclose(direction.vmf_cone_angle(k, p),
                               np.asarray(direction_losses.vmf_cone_angle(jnp.asarray(k), p)),
                               rtol=2e-5)


def test_angular_errors_deg():
  a = np.array([[1.0, 0, 0], [1, 0, 0], [1, 0, 0], [2, 0, 0]])
  b = np.array([[0.0, 1, 0], [-1, 0, 0], [1, 1e-9, 0], [1, 0, 0]])
  np.testing.assert_allclose(direction.angular_errors_deg(a, b),
                             [90.0, 180.0, np.degrees(1e-9), 0.0], rtol=1e-9, atol=1e-12)
  with pytest.raises(ValueError, match="pred"):
    direction.angular_errors_deg(np.zeros((2, 2)), np.zeros((2, 2)))


def test_binomial_error_and_cone_angle_edges():
  np.testing.assert_allclose(direction.binomial_error([0.0, 0.5, 1.0], 100), [0.0, 0.05, 0.0])
  with pytest.raises(ValueError, match="n must be >= 1"):
    direction.binomial_error(0.5, 0)
  # κ = 0 is the uniform sphere: the cone holding p has 1 − cos θ = 2p.
  for p in (0.25, 0.5, 0.9):
    assert direction.vmf_cone_angle(0.0, p) == pytest.approx(np.arccos(1 - 2 * p))
  assert direction.vmf_cone_angle(1e4, 0.0) == 0.0
  assert direction.vmf_cone_angle(0.5, 1.0) == pytest.approx(np.pi)


def test_cone_coverage_rejects_bad_kappa(calibrated):
  mu, kappa, y = calibrated
  with pytest.raises(ValueError, match="kappa"):
    direction.cone_coverage(mu, kappa[:-1], y)
  with pytest.raises(ValueError, match=">= 0"):
    direction.cone_coverage(mu, -kappa, y)


def test_default_cut_fractions():
  fr = direction.DEFAULT_CUT_FRACTIONS
  assert fr[0] == 0.0 and fr[-1] == 0.95 and len(fr) == 96
  assert 0.25 in fr and 0.5 in fr


def test_plots_write_png_atomically(tmp_path, calibrated):
  mu, kappa, y = calibrated
  paths = [
      direction.plot_calibration(tmp_path / "calibration.png", {
          "calibrated": {"nominal": direction.DEFAULT_NOMINAL,
                         "observed": direction.cone_coverage(mu, kappa, y),
                         "num_events": N}}),
      direction.plot_calibration(tmp_path / "sub" / "calibration2.png", {
          "over-confident": direction.cone_coverage(mu, 4 * kappa, y)},
          direction.DEFAULT_NOMINAL, num_events={"over-confident": N}, label="toy"),
      direction.plot_angular_error_histograms(tmp_path / "angles.png", {
          "vMF model": direction.angular_errors_deg(mu, y)}),
  ]
  for p in paths:
    assert os.path.isabs(p) and os.path.getsize(p) > 5000
    with open(p, "rb") as f:
      assert f.read(8) == PNG_MAGIC
  assert sorted(q.name for q in tmp_path.rglob("*") if q.is_file()) == [
      "angles.png", "calibration.png", "calibration2.png"]  # No temporary files left.
  with pytest.raises(ValueError, match="nothing to plot"):
    direction.plot_calibration(tmp_path / "x.png", {})
  with pytest.raises(ValueError, match="pass nominal"):
    direction.plot_calibration(tmp_path / "x.png", {"a": [0.5]})
  with pytest.raises(ValueError, match="non-empty finite"):
    direction.plot_angular_error_histograms(tmp_path / "x.png", {"a": [np.nan]})
  assert not (tmp_path / "x.png").exists()
