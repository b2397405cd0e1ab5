"""The CYGNO study end to end: table cache, classical classifiers, the launcher's smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, load_config, subprocess_env
from recoil_jax.studies.cygno import classical
from recoil_jax.studies.cygno import dataset
from recoil_jax.studies.cygno import observables
from recoil_jax.studies.cygno import reco
from recoil_jax.studies.cygno import sim
from recoil_jax.studies.cygno import task as cygno_task


def test_smoke_run_end_to_end(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "recoil_jax.main", "--config=configs/cygno.py:smoke",
       f"--workdir={workdir}", f"--config.data.data_dir={tmp_path / 'data'}"],
      cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in ("cygno_rejection.md", "cygno_analysis.json", "rejection_curves.png",
               "rejection_per_bin_40.png", "rejection_per_bin_50.png",
               "feature_importances.png", "final_metrics.json"):
    assert (workdir / name).exists(), name
  table = (workdir / "cygno_rejection.md").read_text()
  assert "DNN 3×10 (All)" in table and "RF 10 trees (Variable_5)" in table
  assert "GBC 10 trees (Variable_9)" in table and "simulated" in table and "99.54" in table
  with open(workdir / "cygno_analysis.json") as f:
    res = json.load(f)
  assert res["data"] == "simulated" and set(res["single_variable_cuts"]) == set(
      observables.NAMES)
  for points in res["working_points"].values():
    assert set(points) == {"40", "50"}
    lo, hi = points["50"]["rejection_interval"]
    assert lo <= points["50"]["rejection"] <= hi


def test_table_is_cached_by_its_fields(tmp_path):
  cfg = sim.SimConfig(height=96, width=96, multiplicity="fixed", tracks_per_image=1)
  kw = dict(num_images=6, seed=1, chunk_images=4)
  t1, p1 = dataset.load_or_build(str(tmp_path), cfg, reco.RecoConfig(), **kw)
  t2, p2 = dataset.load_or_build(str(tmp_path), cfg, reco.RecoConfig(), **kw)
  assert p1 == p2 and os.path.exists(p1) and os.path.exists(p1[:-4] + ".json")
  for k in dataset.COLUMNS:
    np.testing.assert_array_equal(t1[k], t2[k])
  assert t2["stats"]["images"] == 6
  assert t1["features"].shape == (len(t1["label"]), 14)
  # Any field (here an observable definition) gives another file.
  _, p3 = dataset.load_or_build(str(tmp_path), cfg, reco.RecoConfig(), **kw,
                                definitions={"LAPA": "cygno_code"})
  assert p3 != p1
  with pytest.raises(ValueError, match="split_fractions"):
    dataset.build_table(cfg, reco.RecoConfig(), num_images=2, seed=0,
                        split_fractions=(0.5, 0.5, 0.5))


def _features(rows):
  x = np.zeros((len(rows), 14))
  for i, r in enumerate(rows):
    for k, v in r.items():
      x[i, observables.NAMES.index(k)] = v
  return x


def test_published_delta_working_points_and_preselection():
  # LAPA in pixels (0.152 mm): 500 px = 76 mm fails l_p < 63 mm.
  x = _features([dict(delta=12, slimness=0.5, LAPA=100),   # NR passes WP50 and WP40
                 dict(delta=10.5, slimness=0.5, LAPA=100),  # NR passes WP50 only
                 dict(delta=12, slimness=0.1, LAPA=100),   # ER: fails slimness
                 dict(delta=12, slimness=0.5, LAPA=500),   # ER: fails l_p
                 dict(delta=4, slimness=0.5, LAPA=10)])    # ER: fails δ > 5
  y = np.array([1, 1, 0, 0, 0])
  res = classical.published_delta(x, y, pixel_mm=0.152)
  assert res["WP50"]["nr_efficiency"] == 1.0 and res["WP40"]["nr_efficiency"] == 0.5
  assert res["WP50"]["er_rejection"] == 1.0
  lo, hi = res["WP40"]["nr_efficiency_interval"]
  assert 0 < lo < 0.5 < hi < 1
  half = classical.published_delta(x, y, pixel_mm=0.152, delta_scale=0.5)
  assert half["WP50"]["nr_efficiency"] == 0.0  # δ halved: nothing passes δ > 10.
  s = classical.delta_score(x, pixel_mm=0.152)
  assert s[0] == 12 and s[2] < x[:, observables.NAMES.index("delta")].min()


def test_cut_orientation_and_trees_separate_a_toy():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 2, 400)
  x = rng.standard_normal((400, 3))
  x[:, 0] += 3 * y  # NR high.
  x[:, 1] -= 3 * y  # NR low.
  orient = classical.cut_orientation(x, y)
  np.testing.assert_array_equal(orient[:2], [1, -1])
  rf = classical.fit_random_forest(x[:300], y[:300], num_trees=20)
  p = classical.nr_probability(rf, x[300:])
  assert np.mean((p > 0.5) == y[300:]) > 0.9
  imp = classical.feature_importances(rf, ["a", "b", "c"])
  assert abs(sum(imp.values()) - 1) < 1e-9 and imp["c"] < min(imp["a"], imp["b"])


def test_config_and_validation(tmp_path):
  config = load_config("configs/cygno.py", "smoke")
  assert config.task == "cygno" and tuple(config.model.hidden) == (10, 10, 10)
  assert load_config("configs/cygno.py", "cpu_hour").data.num_images == 20000
  with pytest.raises(ValueError, match="Unknown variant"):
    load_config("configs/cygno.py", "nope")
  for key, value, match in (("variables", "Variable_7", "config.data.variables"),
                            ("multiplicity", "binomial", "multiplicity"),
                            ("absorption_length_mm", -5.0, "absorption_length_mm")):
    config = load_config("configs/cygno.py", "smoke")
    setattr(config.data, key, value)
    with pytest.raises(ValueError, match=match):
      cygno_task.CygnoTask(config).validate()
  config = load_config("configs/cygno.py", "smoke")
  config.data.definitions.LAPA = "thesis"
  with pytest.raises(ValueError, match="config.data.definitions.LAPA"):
    cygno_task.CygnoTask(config).validate()
