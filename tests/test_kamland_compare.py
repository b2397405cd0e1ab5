"""scripts/kamland_compare.py: paired bootstrap, step timing, tables (no training)."""

import json
import os

import numpy as np
import pytest

from conftest import load_module


@pytest.fixture(scope="module")
def compare():
  return load_module("scripts/kamland_compare.py")


def test_paired_bootstrap_differences(compare):
  rng = np.random.default_rng(0)
  label = np.repeat([1, 0], 300)
  good = rng.normal(2.0 * label, 1.0)
  noisy = good + rng.normal(0, 1.5, len(label))
  boot = compare.paired_bootstrap({"a": good, "b": good.copy(), "c": noisy}, label, 0.9,
                                  num_resamples=200)
  np.testing.assert_array_equal(boot["a"]["rejection"], boot["b"]["rejection"])  # Paired.
  diff = boot["a"]["rejection"] - boot["c"]["rejection"]
  assert np.mean(diff > 0) > 0.97
  # Paired differences are tighter than the models' own spread.
  assert np.std(diff) < np.hypot(np.std(boot["a"]["rejection"]), np.std(boot["c"]["rejection"]))
  assert 0.5 < np.mean(boot["a"]["auc"]) <= 1


def test_median_step_seconds_skips_compilation_and_evaluations(compare, tmp_path):
  recs = [{"event": "train", "step": 20, "time": 100.0},   # after compilation
          {"event": "train", "step": 40, "time": 104.0},   # 0.2 s/step
          {"event": "train", "step": 60, "time": 108.0},
          {"event": "eval", "step": 60, "time": 130.0},
          {"event": "train", "step": 80, "time": 150.0},   # spans the evaluation: skipped
          {"event": "train", "step": 100, "time": 154.0},
          {"event": "train", "step": 120, "time": 158.0}]
  (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
  assert compare._median_step_seconds(str(tmp_path)) == pytest.approx(0.2)


def test_tables_label_everything_simulated_and_quote_the_seed(compare, tmp_path):
  wp = {"rejection": 0.95, "rejection_interval": [0.94, 0.96],
        "bootstrap": {"rejection_interval": [0.94, 0.96]}}
  rows = [{"name": n, "variant": v, "working_point": wp, "auc": 0.98,
           "auc_interval": [0.97, 0.99], "num_params": 1234, "steps": 625, "best_step": 375,
           "seconds": 100.0, "step_seconds": 0.2} for n, v in (("spherical", ""),
                                                            ("planar", "planar"))]
  diffs = [{"a": "spherical", "b": "planar", "what": "x", "rejection": 0.02,
            "rejection_68": [0.01, 0.03], "rejection_95": [0.0, 0.04], "auc": 0.01,
            "rejection_fraction_positive": 0.99,
            "auc_68": [0.005, 0.015]}]
  setup = {"signal_efficiency": 0.9, "num_test_signal": 1000, "num_test_background": 1000,
           "num_train_per_class": 2000, "num_validation_per_class": 500, "base_variant": "",
           "num_resamples": 10}
  json_path, md_path = compare.write_tables(str(tmp_path), rows, diffs, setup)
  md = open(md_path, encoding="utf-8").read()
  assert "simulated" in md and "71%" in md and "61%" in md and "+2.0" in md
  assert json.load(open(json_path, encoding="utf-8"))["data"] == "simulated"


def test_publish_writes_tables_and_a_checked_provenance(compare, tmp_path):
  import argparse  # pylint: disable=g-import-not-at-top
  import test_results  # pylint: disable=g-import-not-at-top
  work = tmp_path / "work"
  (work / "spherical").mkdir(parents=True)
  (work / "comparison.json").write_text(json.dumps(
      {"rows": [{"name": "spherical", "seconds": 120.0, "workdir": "spherical"}]}))
  (work / "comparison.md").write_text("| model |\n")
  (work / "roc.png").write_bytes(b"png")
  args = argparse.Namespace(base_variant="smoke", data_dir=str(tmp_path / "tfds"))
  out = compare.publish(str(work), str(tmp_path / "pub"), args, ["--quick"], 90.0)
  assert sorted(os.path.basename(p) for p in out) == [
      "PROVENANCE.md", "comparison.json", "comparison.md", "roc.png"]
  fields, text = test_results.read_provenance(str(tmp_path / "pub"))
  assert fields["config"] == "configs/kamland.py:smoke"
  assert fields["overrides"] == f"--config.data.data_dir={tmp_path / 'tfds'}"
  assert "spherical 2 min (total 2 min); 1.5 min" in text and "simulated" in text
  rows = json.loads((tmp_path / "pub" / "comparison.json").read_text())["rows"]
  assert rows[0]["workdir"] == os.path.join("..", "work", "spherical")
