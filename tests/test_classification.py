"""Core classification losses and analysis: exact terms, intervals, working points, ROC."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from recoil_jax.analysis import classification as cls
from recoil_jax.losses import classification as closs


def test_binary_cross_entropy_matches_the_formula_and_is_stable():
  z = jnp.asarray([-200.0, -2.0, 0.0, 3.0, 200.0])
  y = jnp.asarray([0, 1, 1, 0, 1])
  p = 1 / (1 + np.exp(-np.asarray([-2.0, 0.0, 3.0])))
  expected = [0.0, -np.log(p[0]), -np.log(p[1]), -np.log(1 - p[2]), 0.0]
  np.testing.assert_allclose(closs.binary_cross_entropy(z, y), expected, rtol=1e-6, atol=1e-6)
  assert np.isfinite(np.asarray(closs.binary_cross_entropy(jnp.asarray([500.0]),
                                                           jnp.asarray([0])))).all()


def test_binary_terms_are_exact_sums_and_ignore_padding():
  z = jnp.asarray([2.0, -1.0, 0.5, -3.0, 9.0])
  y = jnp.asarray([1, 1, 0, 0, 0])
  mask = jnp.asarray([1.0, 1.0, 1.0, 1.0, 0.0])  # The last example is padding.
  t = closs.binary_terms(z, y, mask)
  assert float(t["loss"][1]) == 4.0
  assert float(t["accuracy"][0]) == 2.0  # 2.0 -> 1 ok, -1 -> 0 wrong, 0.5 -> 1 wrong, -3 ok.
  assert (float(t["signal_accuracy"][0]), float(t["signal_accuracy"][1])) == (1.0, 2.0)
  assert (float(t["background_accuracy"][0]), float(t["background_accuracy"][1])) == (1.0, 2.0)
  full = closs.binary_cross_entropy(z[:4], y[:4]).sum()
  assert float(t["loss"][0]) == pytest.approx(float(full), rel=1e-6)


def test_multiclass_terms_weighted_mean():
  logits = jnp.asarray([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
  labels = jnp.asarray([0, 2, 2])
  t = closs.multiclass_terms(logits, labels, jnp.ones(3), class_weights=jnp.asarray([1., 1., 3.]))
  ce = np.asarray(closs.softmax_cross_entropy(logits, labels))
  assert float(t["loss"][0]) == pytest.approx(ce[0] + 3 * ce[1] + 3 * ce[2], rel=1e-6)
  assert float(t["loss"][1]) == 7.0 and float(t["accuracy"][0]) == 2.0


def test_clopper_pearson_known_values():
  lo, hi = cls.clopper_pearson(0, 10)
  assert lo == 0.0 and hi == pytest.approx(1 - ((1 - cls.ONE_SIGMA) / 2) ** (1 / 10), rel=1e-9)
  lo, hi = cls.clopper_pearson(10, 10, confidence=0.9)
  assert hi == 1.0 and lo == pytest.approx(0.05 ** (1 / 10), rel=1e-9)
  lo, hi = cls.clopper_pearson(50, 100)  # Close to the normal approximation ±0.05.
  assert lo == pytest.approx(0.45, abs=0.006) and hi == pytest.approx(0.55, abs=0.006)
  with pytest.raises(ValueError):
    cls.clopper_pearson(3, 2)


def test_clopper_pearson_covers_at_least_nominal():
  """Exact intervals over-cover: check by simulation at p = 0.03, n = 200."""
  rng = np.random.default_rng(0)
  k = rng.binomial(200, 0.03, size=4000)
  lo, hi = cls.clopper_pearson(k, 200)
  assert np.mean((lo <= 0.03) & (0.03 <= hi)) >= cls.ONE_SIGMA


def test_working_point_counts_and_rejection_power():
  signal = np.arange(100, dtype=float)  # Scores 0..99.
  background = np.concatenate([np.full(990, -1.0), np.arange(60.0, 70.0)])  # 10 high ones.
  p = cls.working_point(signal, background, 0.30)  # Keep the top 30 signals: t = 70.
  assert p["threshold"] == 70.0 and p["signal_efficiency"] == pytest.approx(0.30)
  assert p["background_pass"] == 0 and math.isinf(p["rejection_power"])
  assert p["rejection_power_interval"][0] == pytest.approx(
      1 / cls.clopper_pearson(0, 1000)[1], rel=1e-12)
  p = cls.working_point(signal, background, 0.40)  # t = 60: all 10 pass.
  assert p["background_pass"] == 10 and p["rejection_power"] == pytest.approx(100.0)
  lo, hi = p["rejection_power_interval"]
  assert lo < 100 < hi
  assert p["rejection"] == pytest.approx(0.99)


def test_roc_and_auc_match_scikit_learn():
  rng = np.random.default_rng(1)
  s = np.round(rng.normal(1.0, 1.0, 500), 1)  # Rounded: ties between classes.
  b = np.round(rng.normal(0.0, 1.0, 700), 1)
  y = np.r_[np.ones(500), np.zeros(700)]
  x = np.r_[s, b]
  assert cls.auc(s, b) == pytest.approx(sk_metrics.roc_auc_score(y, x), rel=1e-12)
  roc = cls.roc_curve(s, b)
  fpr, tpr, thr = sk_metrics.roc_curve(y, x, drop_intermediate=False)
  np.testing.assert_allclose(roc["signal_efficiency"], tpr[1:], rtol=1e-12)
  np.testing.assert_allclose(roc["background_efficiency"], fpr[1:], rtol=1e-12)
  assert np.all(np.diff(roc["signal_efficiency"]) >= 0)


def test_bootstrap_interval_matches_the_spread_of_independent_samples():
  """The ±1σ bootstrap interval (threshold resampled too) is about as wide as ±1 standard
  deviation of the rejection over independent samples, and wider than the fixed-cut
  Clopper–Pearson interval, which ignores the threshold's own uncertainty."""
  rng = np.random.default_rng(2)
  draw = lambda: (rng.normal(2.0, 1.0, 2000), rng.normal(0.0, 1.0, 5000))  # noqa: E731
  spread = np.std([cls.working_point(*draw(), 0.9)["rejection"] for _ in range(40)])
  p = cls.bootstrap_working_point(*draw(), 0.9, num_resamples=300, seed=0)
  lo, hi = p["bootstrap"]["rejection_interval"]
  assert lo < p["rejection"] < hi
  assert 0.6 < (hi - lo) / (2 * spread) < 1.6
  cp_lo, cp_hi = p["rejection_interval"]
  assert hi - lo > cp_hi - cp_lo


def test_plots_and_table(tmp_path):
  rng = np.random.default_rng(3)
  curves = {"a": {"signal": rng.normal(3, 1, 300), "background": rng.normal(0, 1, 3000)}}
  path = cls.plot_rejection(tmp_path / "rej.png", curves)
  assert (tmp_path / "rej.png").stat().st_size > 1000 and path.endswith("rej.png")
  cls.plot_score_histograms(tmp_path / "h.png", {"signal": curves["a"]["signal"],
                                                 "background": curves["a"]["background"]})
  table = cls.working_points_markdown(
      {"a": cls.working_point(curves["a"]["signal"], curves["a"]["background"], 0.5)})
  assert "| a | 50.0 % |" in table and "Clopper–Pearson" in table


def test_bad_scores_are_errors():
  with pytest.raises(ValueError, match="background: 1 non-finite"):
    cls.working_point([1.0, 2.0], [0.0, np.nan], 0.5)
  with pytest.raises(ValueError, match="signal: no events"):
    cls.auc([], [1.0])
