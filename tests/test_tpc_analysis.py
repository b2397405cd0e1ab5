"""Tests of recoil_jax.studies.tpc.analysis: Figure 6 entries, plot and tables."""

import json
import os

from matplotlib.figure import Figure
import numpy as np
import pytest

from recoil_jax import io
from recoil_jax.analysis import direction
from recoil_jax.studies.tpc import analysis as tpc_analysis

N = 20000


@pytest.fixture(scope="module")
def events():
  """Per-event cosine-similarity loss and κ of a model whose κ is informative: the
  angular error shrinks as 1/√κ (roughly a vMF's), so cutting low κ lowers the loss."""
  rng = np.random.default_rng(0)
  kappa = np.exp(rng.uniform(np.log(0.5), np.log(200.0), size=N))
  cos_loss = -np.clip(1.0 - rng.exponential(1.0 / kappa), -1.0, 1.0)
  return cos_loss, kappa


def _example_results(events):
  cos_loss, kappa = events
  rng = np.random.default_rng(2)
  nml_failed = rng.uniform(size=N) < 0.25
  nml_loss = rng.uniform(-1, 1, size=N) * 0.5 - 0.2
  entry = tpc_analysis.figure6_entry(
      hetero_cos_loss=cos_loss, hetero_kappa=kappa, homo_cos_loss=cos_loss + 0.01,
      nml_cos_loss=nml_loss, nml_failed=nml_failed,
      nml_true_cos_loss=nml_loss - 0.3, nml_true_failed=nml_failed,
      nml_tuned_cos_loss=nml_loss - 0.2, nml_tuned_failed=rng.uniform(size=N) < 0.8,
      nml_tuned_params={"n_sigma_l": 3.0, "n_sigma_h": 11.0, "w0_cm": 1.62})
  return {"40 keV, σ 200 µm": entry, "50 keV, σ 443 µm": entry}


def test_figure6_entry_values(events):
  results = _example_results(events)
  e = results["40 keV, σ 200 µm"]
  assert e["label"] == io.SIMULATED == "simulated"
  assert e["nml"]["efficiency"] == pytest.approx(1 - e["nml"]["failure_fraction"])
  assert 0.7 < e["nml"]["efficiency"] < 0.8
  fr = e["hetero"]["cut_fractions"]
  for c in tpc_analysis.TABLE_CUTS:
    assert any(abs(f - c) < 1e-12 for f in fr)
  # The vMF curve is the core efficiency curve at the default fractions ∪ the table cuts.
  assert fr == sorted(set(direction.DEFAULT_CUT_FRACTIONS) | set(tpc_analysis.TABLE_CUTS))
  np.testing.assert_allclose(e["hetero"]["losses"],
                             direction.efficiency_curve(*events, fr), rtol=0, atol=0)
  assert e["hetero"]["losses"][0] > e["hetero"]["losses"][-1]  # Informative κ.
  assert e["homo"]["num_events"] == N
  with pytest.raises(ValueError, match="needs hetero_kappa"):
    tpc_analysis.figure6_entry(hetero_cos_loss=events[0])
  with pytest.raises(ValueError, match="nml_cos_loss needs nml_failed"):
    tpc_analysis.figure6_entry(nml_cos_loss=events[0])


def test_figure6_plot(tmp_path, events):
  results = _example_results(events)
  path = tpc_analysis.plot_figure6(tmp_path / "figure6.png", results)
  assert path == os.fspath(tmp_path / "figure6.png") and os.path.getsize(path) > 5000
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert [p.name for p in tmp_path.iterdir()] == ["figure6.png"]  # No temporary file left.
  # Drawing on caller-provided Axes.
  fig = Figure()
  ax = fig.subplots()
  assert tpc_analysis.plot_figure6(ax, {"one": results["40 keV, σ 200 µm"]}) is ax
  assert len(ax.lines) >= 4
  with pytest.raises(ValueError, match="one Axes"):
    tpc_analysis.plot_figure6(ax, results)
  with pytest.raises(ValueError, match="unknown keys"):
    tpc_analysis.plot_figure6(tmp_path / "x.png", {"bad": {"hetro": {}}})


def test_write_table(tmp_path, events):
  results = _example_results(events)
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
  assert not (tmp_path / "bad").exists()
  # Non-finite numbers are JSON null (valid JSON), "–" in the markdown.
  nan_entry = {"homo": {"loss": float("nan")}}
  json3, md3 = tpc_analysis.write_table({"nan": nan_entry}, tmp_path / "work3")
  assert json.loads(open(json3).read())["table"]["nan"]["homo"] is None
  assert "| nan | – | – | – | – | – | – |" in open(md3).read()
