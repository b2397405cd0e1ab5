"""SBND segmentation losses, exact metrics, event selection, Figure 9 and displays.

Hand-made arrays with answers known on paper, plus slow per-pixel loop references for the
vectorised code (float32 vs float64 loops: rtol 1e-5 covers float32 sums of ≤ 10³ terms).
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
from jax import test_util as jtu
import numpy as np
import pytest

from recoil_jax import io
from recoil_jax.losses import segmentation as sl
from recoil_jax.studies.sbnd import analysis as seg

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ slow references


def _loss_reference(logits, labels, balance, normalisation, class_weights=(1.0, 1.5, 10.0),
                    gamma=2.0):
  """Per-pixel Python loops in float64 (the definitions of the module docstring)."""
  logits = np.asarray(logits, np.float64)
  b, p, h, w, c = logits.shape
  out = np.zeros(b)
  for i in range(b):
    total_num, total_den = 0.0, 0.0
    for q in range(p):
      counts = [int(np.sum(labels[i, q] == k)) for k in range(c)]
      num = den = 0.0
      for y in range(h):
        for x in range(w):
          z = logits[i, q, y, x]
          lse = math.log(sum(math.exp(v) for v in z))
          t = int(labels[i, q, y, x])
          ce = lse - z[t]
          if balance == "focal":
            wt = (1.0 - math.exp(-ce)) ** gamma
          elif balance == "light":
            wt = class_weights[t]
          elif balance == "full":
            wt = (1.0 / c) / (counts[t] + 1.0)
          else:
            wt = 1.0
          num += wt * ce
          den += 1.0 if balance == "focal" else wt
      if balance == "focal":
        out[i] += num / (h * w)
      elif normalisation == "plane_weighted_mean":
        out[i] += num / den
      else:
        total_num += num
        total_den += h * w
    if balance != "focal" and normalisation == "pixel_mean":
      out[i] = total_num / total_den
  return out


def _stats_reference(pred, label):
  """Per-pixel loops: (accuracy, non-bkg correct/total, ∩/∪ per class, ν count, mean row)."""
  n, p, h, w = pred.shape
  ref = {k: np.zeros((n, p)) for k in ("acc", "nbc", "nbt", "nu_n", "nu_row")}
  ref["inter"] = np.zeros((n, p, 2))
  ref["union"] = np.zeros((n, p, 2))
  for i in range(n):
    for q in range(p):
      rows = []
      for y in range(h):
        for x in range(w):
          a, t = int(pred[i, q, y, x]), int(label[i, q, y, x])
          ref["acc"][i, q] += (a == t) / (h * w)
          if t != 0:
            ref["nbt"][i, q] += 1
            ref["nbc"][i, q] += a == t
          for j, cls in enumerate((1, 2)):
            ref["inter"][i, q, j] += (a == cls) and (t == cls)
            ref["union"][i, q, j] += (a == cls) or (t == cls)
          if a == 2:
            rows.append(y)
      ref["nu_n"][i, q] = len(rows)
      ref["nu_row"][i, q] = np.mean(rows) if rows else np.nan
  return ref


def _random_event(rng, n=3, p=3, h=6, w=8):
  label = rng.choice(3, size=(n, p, h, w), p=[0.7, 0.2, 0.1]).astype(np.uint8)
  pred = np.where(rng.random(label.shape) < 0.7, label,
                  rng.integers(0, 3, label.shape)).astype(np.int32)
  return pred, label


# ------------------------------------------------------------------------ losses


@pytest.mark.parametrize("balance", ["light", "full", "none", "focal"])
@pytest.mark.parametrize("normalisation", ["plane_weighted_mean", "pixel_mean"])
def test_loss_matches_the_per_pixel_loop_reference(balance, normalisation):
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 2, size=(2, 3, 4, 5, 3)).astype(np.float32)
  labels = rng.choice(3, size=(2, 3, 4, 5), p=[0.6, 0.3, 0.1])
  labels[1, 2] = 0  # A plane with only background: full balance must still work.
  got = sl.segmentation_loss(jnp.asarray(logits), jnp.asarray(labels), balance=balance,
                             normalisation=normalisation)
  want = _loss_reference(logits, labels, balance, normalisation)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_loss_known_values():
  """Uniform logits: CE = log 3 everywhere, so weighted means are log 3 per plane."""
  labels = np.zeros((1, 3, 2, 2), np.int32)
  labels[0, 0, 0, 0] = 2  # One neutrino pixel (weight 10) among three background.
  labels[0, 1, 0, 0] = 1  # One cosmic pixel (weight 1.5).
  logits = jnp.zeros((1, 3, 2, 2, 3))
  log3 = math.log(3.0)
  code = sl.segmentation_loss(logits, labels)
  assert float(code[0]) == pytest.approx(3 * log3, rel=1e-6)  # Σ planes of log 3.
  paper = sl.segmentation_loss(logits, labels, normalisation="pixel_mean")
  mean_w = (10 + 3 + 1.5 + 3 + 4) / 12  # Mean weight over the 12 pixels.
  assert float(paper[0]) == pytest.approx(mean_w * log3, rel=1e-6)
  # A confident correct prediction has ~0 loss; the focal factor makes it smaller still.
  good = 20.0 * jax.nn.one_hot(labels, 3)
  assert float(sl.segmentation_loss(good, labels)[0]) < 1e-7
  ce_wrong = sl.segmentation_loss(-good, labels, balance="none")
  focal_wrong = sl.segmentation_loss(-good, labels, balance="focal")
  np.testing.assert_allclose(np.asarray(focal_wrong), np.asarray(ce_wrong), rtol=1e-6)


def test_full_balance_gives_every_present_class_the_same_total_weight():
  labels = np.zeros((1, 1, 10, 10), np.int32)
  labels[0, 0, :2] = 1  # 20 cosmic pixels.
  labels[0, 0, 5, :3] = 2  # 3 neutrino pixels; 77 background.
  w = np.asarray(sl.pixel_weights(jnp.asarray(labels), balance="full"))
  totals = [w[labels == c].sum() for c in range(3)]
  np.testing.assert_allclose(totals, [n / (3 * (n + 1)) for n in (77, 20, 3)], rtol=1e-6)


def test_focal_with_gamma_zero_is_plain_cross_entropy():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(2, 3, 3, 4, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 3, (2, 3, 3, 4)))
  np.testing.assert_allclose(
      np.asarray(sl.segmentation_loss(logits, labels, balance="focal", focal_gamma=0.0)),
      np.asarray(sl.segmentation_loss(logits, labels, balance="none")), rtol=1e-6)


def test_loss_terms_ignore_masked_events():
  per_event = jnp.asarray([1.0, 5.0, 100.0])
  s, c = sl.loss_terms(per_event, jnp.asarray([1.0, 1.0, 0.0]))
  assert float(s) == 6.0 and float(c) == 2.0


def test_bad_loss_arguments_are_clear_errors():
  logits, labels = jnp.zeros((1, 3, 2, 2, 3)), jnp.zeros((1, 3, 2, 2), jnp.int32)
  with pytest.raises(ValueError, match="balance='even'"):
    sl.segmentation_loss(logits, labels, balance="even")
  with pytest.raises(ValueError, match="normalisation"):
    sl.segmentation_loss(logits, labels, normalisation="batch")
  with pytest.raises(ValueError, match="labels shape"):
    sl.segmentation_loss(logits, labels[:, :2])
  with pytest.raises(ValueError, match="class_weights"):
    sl.segmentation_loss(logits, labels, class_weights=(1.0, 2.0))


@pytest.mark.parametrize("balance", ["light", "full", "focal"])
def test_loss_gradients_float64(balance):
  with jax.enable_x64(True):
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(1, 3, 2, 3, 3)), jnp.float64)
    labels = jnp.asarray(rng.integers(0, 3, (1, 3, 2, 3)))
    f = lambda z: sl.segmentation_loss(z, labels, balance=balance).sum()  # noqa: E731
    jtu.check_grads(f, (logits,), order=1, modes=("rev", "fwd"), atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------ metrics


def test_event_statistics_match_the_per_pixel_loops():
  pred, label = _random_event(np.random.default_rng(3))
  ref = _stats_reference(pred, label)
  for xp, p, t in ((np, pred, label), (jnp, jnp.asarray(pred), jnp.asarray(label))):
    st = seg.event_statistics(p, t, xp=xp)
    np.testing.assert_allclose(st["accuracy_per_plane"], ref["acc"], rtol=1e-6)
    np.testing.assert_array_equal(st["nonbkg_correct"], ref["nbc"])
    np.testing.assert_array_equal(st["nonbkg_total"], ref["nbt"])
    np.testing.assert_array_equal(st["intersection"], ref["inter"])
    np.testing.assert_array_equal(st["union"], ref["union"])
    np.testing.assert_array_equal(st["nu_pred_pixels"], ref["nu_n"])
    np.testing.assert_allclose(st["nu_pred_mean_row"], ref["nu_row"], rtol=1e-6)


def test_metrics_on_a_hand_made_event():
  """One event, two planes of 2×4 pixels; every number worked out by hand."""
  label = np.array([[[[0, 1, 1, 0], [0, 0, 2, 2]],
                     [[0, 0, 0, 0], [0, 0, 0, 0]]]], np.uint8)
  pred = np.array([[[[0, 1, 0, 0], [0, 1, 2, 0]],
                    [[0, 0, 0, 0], [0, 0, 0, 0]]]], np.int32)
  m = seg.exact_metrics(seg.event_statistics(pred, label))
  # Plane 0: correct 5/8 (wrong at (0, 2), (1, 1), (1, 3)); plane 1: 8/8 → 13/16.
  assert m["accuracy"] == pytest.approx(13 / 16)
  # Non-background: plane 0 has 4 labelled pixels, 2 correct; plane 1 has none (skipped).
  assert m["non_bkg_accuracy"] == pytest.approx(0.5)
  # Cosmic IoU: plane 0 ∩ = 1, ∪ = 3 → 1/3; plane 1 empty union → 1. Mean 2/3.
  assert m["cosmic_iou"] == pytest.approx((1 / 3 + 1) / 2)
  # Neutrino IoU: plane 0 ∩ = 1, ∪ = 2 → 1/2; plane 1 → 1. Mean 3/4.
  assert m["neutrino_iou"] == pytest.approx(0.75)
  assert m["mean_iou"] == pytest.approx(0.5 * (2 / 3 + 0.75))
  assert m["pooled_cosmic_iou"] == pytest.approx(1 / 3)
  assert m["pooled_neutrino_iou"] == pytest.approx(1 / 2)


def test_metric_terms_are_exact_under_padding_and_batching():
  """Summing (sum, count) over two jitted batches, one padded, equals the whole set."""
  pred, label = _random_event(np.random.default_rng(4), n=5)
  whole = seg.exact_metrics(seg.event_statistics(pred, label))

  @jax.jit
  def terms(p, t, mask):
    return seg.metric_terms(seg.event_statistics(p, t), mask)

  pad = lambda a: np.concatenate([a[3:], a[:1]])  # noqa: E731  2 real + 1 padded row.
  t1 = terms(pred[:3], label[:3], jnp.ones(3))
  t2 = terms(pad(pred), pad(label), jnp.asarray([1.0, 1.0, 0.0]))
  for name in seg.METRIC_NAMES:
    s = float(t1[name][0]) + float(t2[name][0])
    c = float(t1[name][1]) + float(t2[name][1])
    assert s / c == pytest.approx(whole[name], rel=1e-6), name


# ------------------------------------------------------------------------ selection


def test_scaled_selection_thresholds():
  assert seg.scaled_selection_thresholds(640, 1024) == (100.0, 50.0)
  assert seg.scaled_selection_thresholds(320, 512) == pytest.approx((50.0, 25.0))
  # 64×128: rows /10, wires /8 → pixels × √(1/80), rows × 1/10.
  px, rows = seg.scaled_selection_thresholds(64, 128)
  assert px == pytest.approx(100 / math.sqrt(80)) and rows == pytest.approx(5.0)


def test_select_events_hand_made():
  pixels = np.array([[100, 150, 120],   # Passes: enough pixels, rows within 50.
                     [100, 99, 500],    # Plane 1 has 99 < 100 pixels.
                     [200, 200, 200],   # Rows 10, 70, 40: |10 − 70| = 60 > 50.
                     [200, 200, 200],   # Rows 10, 60, 35: largest difference exactly 50.
                     [0, 0, 0]])        # Nothing predicted neutrino (mean rows NaN).
  rows = np.array([[300, 320, 280], [0, 0, 0], [10, 70, 40], [10, 60, 35],
                   [np.nan] * 3])
  sel = seg.select_events(pixels, rows, min_pixels=100, max_row_diff=50)
  np.testing.assert_array_equal(sel, [True, False, False, True, False])


def test_selection_from_predicted_images():
  """Statistics of predicted images feed the selection exactly as the hand-made numbers."""
  pred = np.zeros((2, 3, 40, 20), np.int32)
  pred[0, :, 10:15, :] = 2  # 100 ν pixels per plane, mean row 12 everywhere: selected.
  pred[1, :, 10:15, :] = 2
  pred[1, 2, 10:15, :] = 0
  pred[1, 2, 30:35, :] = 2  # Plane 2 mean row 32: 20 rows off, > 10 allowed.
  st = seg.event_statistics(pred, np.zeros_like(pred))
  sel = seg.select_events(st["nu_pred_pixels"], st["nu_pred_mean_row"], min_pixels=100,
                          max_row_diff=10)
  np.testing.assert_array_equal(sel, [True, False])


def test_selection_table_and_binomial_errors():
  interaction = np.array([0] * 10 + [1] * 4 + [2] * 5 + [3] * 2 + [-1])
  selected = np.array([True] + [False] * 9 + [True] * 4 + [True, True, True, False, False]
                      + [False, False] + [True])
  table = seg.selection_table(selected, interaction)
  assert table["nue_cc"]["fraction"] == 1.0 and table["nue_cc"]["error"] == 0.0
  assert table["nue_cc"]["interval"][0] < 1.0 and table["nue_cc"]["interval"][1] == 1.0
  assert table["numu_cc"]["fraction"] == pytest.approx(0.6)
  assert table["numu_cc"]["error"] == pytest.approx(math.sqrt(0.6 * 0.4 / 5))
  lo, hi = table["numu_cc"]["interval"]
  assert lo < 0.6 < hi
  assert table["nc"]["k"] == 0 and table["nc"]["interval"][0] == 0.0
  assert table["cosmic_only_rejection"]["fraction"] == pytest.approx(0.9)
  assert table["all_neutrino"]["k"] == 7 and table["all_neutrino"]["n"] == 11
  assert table["unknown_events"] == 1
  md = seg.selection_markdown(table, {"min_pixels": 100, "max_row_diff": 50, "height": 640,
                                      "width": 1024})
  assert "simulated" in md and "91.1 %" in md and "60.0 ± 21.9 % (3/5)" in md
  with pytest.raises(ValueError, match="interaction codes"):
    seg.selection_table(selected, np.full_like(interaction, 7))


# ------------------------------------------------------------------------ Figure 9


def test_iou_vs_energy_bins_and_means():
  # Four events, one plane: IoU per event given by ∩/∪ below.
  stats = {"intersection": np.array([[[1, 1]], [[1, 0]], [[2, 3]], [[0, 0]]], float),
           "union": np.array([[[2, 2]], [[1, 4]], [[2, 4]], [[0, 0]]], float)}
  interaction = np.array([1, 1, 2, 0])
  energy = np.array([0.2, 0.4, 1.7, 0.0])
  curves = seg.iou_vs_energy(stats, interaction, energy, [0.0, 0.5, 1.0, 2.0])
  nue = curves["types"]["nue_cc"]
  assert nue["n"] == [2, 0, 0]
  assert nue["neutrino_iou"][0] == pytest.approx(0.25)  # (0.5 + 0) / 2.
  assert nue["cosmic_iou"][0] == pytest.approx(0.75)  # (0.5 + 1) / 2.
  assert nue["neutrino_iou_error"][0] == pytest.approx(0.25)  # std 0.354 / √2.
  numu = curves["types"]["numu_cc"]
  assert numu["n"] == [0, 0, 1] and numu["neutrino_iou"][2] == pytest.approx(0.75)
  assert numu["neutrino_iou_error"][2] is None
  assert curves["types"]["nc"]["n"] == [0, 0, 0]


def test_figure9_plot_and_tables(tmp_path):
  rng = np.random.default_rng(5)
  n = 60
  union = rng.integers(1, 50, (n, 3, 2)).astype(float)
  stats = {"intersection": np.floor(union * rng.random((n, 3, 2))), "union": union}
  curves = seg.iou_vs_energy(stats, rng.integers(0, 4, n), rng.uniform(0, 3, n),
                             np.linspace(0, 3, 7))
  path = seg.plot_figure9(tmp_path / "figure9.png", curves)
  assert open(path, "rb").read(8) == PNG_MAGIC
  md = seg.figure9_markdown(curves)
  assert "simulated" in md and md.count("\n| ") == 6 + 1  # Header + one row per bin.
  io.write_json_atomic(tmp_path / "figure9.json", curves)  # None (empty bins) -> null.
  assert json.loads((tmp_path / "figure9.json").read_text())["bin_edges_gev"][-1] == 3.0
  assert sorted(p.name for p in tmp_path.iterdir()) == ["figure9.json", "figure9.png"]


# ------------------------------------------------------------------------ display


@pytest.mark.parametrize("zoom", [False, True])
def test_event_display_writes_a_png(tmp_path, zoom):
  rng = np.random.default_rng(6)
  label = np.zeros((3, 64, 96), np.uint8)
  label[:, 5:60, 20] = 1  # A vertical cosmic track per plane.
  label[:, 30:34, 50:70] = 2  # A short neutrino track.
  image = np.where(label > 0, rng.uniform(20, 80, label.shape), 0.0).astype(np.float32)
  pred = label.copy()
  pred[2, 30:34, 50:55] = 1  # Part of the ν track tagged cosmic in the collection plane.
  path = seg.plot_event_display(tmp_path / "event.png", image, label, pred,
                                title="νμ CC, 1.2 GeV", zoom=zoom, max_panel_pixels=48)
  assert open(path, "rb").read(8) == PNG_MAGIC
  assert [p.name for p in tmp_path.iterdir()] == ["event.png"]  # No temporary file left.
  with pytest.raises(ValueError, match="must all be"):
    seg.plot_event_display(tmp_path / "bad.png", image, label[:2])


def test_max_pool_keeps_thin_tracks_and_neutrino_priority():
  a = np.zeros((5, 5), np.int32)
  a[0, 0], a[0, 1], a[4, 4] = 1, 2, 1
  np.testing.assert_array_equal(seg._max_pool(a, 2), [[2, 0, 0], [0, 0, 0], [0, 0, 1]])


def test_metrics_markdown_labels_and_paper_row():
  md = seg.metrics_markdown({"test": {k: 0.5 for k in seg.METRIC_NAMES}})
  assert "| test (simulated) |" in md and "| paper baseline (Table 2) |" in md
  assert "0.951" in md
