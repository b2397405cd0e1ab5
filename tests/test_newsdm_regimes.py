"""scripts/newsdm_regimes.py: the talk's three regimes differ only where they should, the
table is built from the analysis output, and the script runs end to end (--quick)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, load_module, subprocess_env
from recoil_jax.analysis import classification as cls_analysis

SCRIPT = os.path.join(REPO_ROOT, "scripts", "newsdm_regimes.py")


def _script():
  return load_module(os.path.relpath(SCRIPT, REPO_ROOT), "newsdm_regimes")


def _args(module, tmp_path, **overrides):
  args = argparse.Namespace(**module.QUICK, data_dir=str(tmp_path), progress=False)
  vars(args).update(overrides)
  return args


def test_regimes_share_sizes_seeds_and_test_sets_and_differ_as_in_the_talk(tmp_path):
  module = _script()
  configs = {r: module.regime_config(r, _args(module, tmp_path)) for r in module.REGIMES}
  flat = {r: json.loads(c.to_json_best_effort()) for r, c in configs.items()}
  physical = flat["physical"]
  assert configs["physical"].data.train_kinds == ("c30", "c60", "c100", "fog")
  assert "nanoparticle" in configs["unphysical"].data.train_kinds
  assert configs["rotational"].model.augment == "source"
  assert configs["cycled"].model.augment == "cycled"
  for regime, c in flat.items():
    # The held-out test sets, seeds and training budget are the same for every regime.
    assert c["analysis"] == physical["analysis"], regime
    assert c["seed"] == physical["seed"] and c["train"] == physical["train"], regime
    assert c["data"]["seed"] == physical["data"]["seed"], regime
    assert c["model"]["architecture"] == "plain3d", regime
  assert physical["analysis"]["test_beam_angles_deg"] == [0.0, 90.0]
  assert 0.3 in physical["analysis"]["signal_efficiencies"]


def test_table_rows_come_from_the_analysis_pairs(tmp_path):
  module = _script()
  rng = np.random.default_rng(0)
  s, b = rng.normal(2.0, 1.0, 300), rng.normal(0.0, 1.0, 1000)
  entry = {m: {"auc": cls_analysis.auc(s, b),
               "working_points": cls_analysis.rejection_curve(s, b, [0.3, 0.5])}
           for m in ("nn", "bar_shift")}
  analysis = {"step": 7, "pairs": {"test_c100_beam0/test_fog": entry,
                                   "test_c60_beam0/test_gamma": entry}}
  row = module.summarise("physical", analysis, [0.0, 90.0], 0.3)
  assert row["auc"]["C100 vs fog"] == pytest.approx(entry["nn"]["auc"])
  assert row["auc"]["C60 vs γ"] == pytest.approx(entry["nn"]["auc"])
  assert row["auc"]["C100 (90° beam) vs fog"] is None  # Not in this analysis: a dash.
  wp = row["rejection"]["fog"]
  assert wp["target_signal_efficiency"] == 0.3 and wp["num_background"] == 1000
  # As read back from JSON: no background passing = an infinite rejection power = null.
  row["rejection"]["γ"] = dict(wp, background_pass=0, rejection_power=None,
                               rejection_power_interval=[wp["rejection_power_interval"][0],
                                                         None])
  row.update(train_kinds=["c30", "fog"], augment="none", steps=7, seconds=1.0,
             barycentre_auc={"C100 vs fog": 0.6})
  setup = dict(module.QUICK, beam_angles_deg=[0.0, 90.0], signal_efficiency=0.3)
  json_path, md_path = module.write_tables(str(tmp_path), [row], setup)
  md = open(md_path, encoding="utf-8").read()
  assert "simulated" in md and "| physical | c30, fog | none |" in md
  assert f"({wp['background_pass']}/1000)" in md and "Clopper–Pearson" in md
  assert "∞ [" in md and "∞] (0/1000)" in md
  assert json.load(open(json_path, encoding="utf-8"))["data"] == "simulated"


@pytest.mark.slow  # About a minute on 2 cores: four smoke-size trainings.
@pytest.mark.timeout(900)
def test_regimes_script_quick_and_resumable(tmp_path):
  cmd = [sys.executable, SCRIPT, f"--workdir={tmp_path}", "--quick"]
  proc = subprocess.run(cmd, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True,
                        text=True, timeout=800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = json.loads((tmp_path / "regimes.json").read_text())
  assert table["data"] == "simulated"
  assert [r["regime"] for r in table["rows"]] == ["physical", "unphysical", "rotational",
                                                   "cycled"]
  for row in table["rows"]:
    assert 0 <= row["auc"]["C100 vs fog"] <= 1 and 0 <= row["auc"]["C100 vs γ"] <= 1
    assert row["rejection"]["fog"]["num_background"] > 0
    assert (tmp_path / row["workdir"] / "newsdm_analysis.json").is_file()
  md = (tmp_path / "regimes.md").read_text()
  assert "simulated" in md and "| unphysical |" in md
  again = subprocess.run(cmd, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True,
                         text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count("already finished") == 4
