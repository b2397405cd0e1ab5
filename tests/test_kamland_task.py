"""KamLAND study end to end: the launcher's smoke runs (classification, direction), config
validation, every model."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO_ROOT, load_config, subprocess_env
from recoil_jax import tasks
from recoil_jax.studies.kamland import sim
from recoil_jax.studies.kamland import source as kamland_source


def _launch(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "recoil_jax.main", *args], cwd=REPO_ROOT,
                        env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def test_smoke_run_from_the_launcher_writes_the_rejection_table(tmp_path):
  r = _launch("--config=configs/kamland.py:smoke", f"--workdir={tmp_path / 'run'}",
              f"--config.data.data_dir={tmp_path / 'tfds'}")
  assert r.returncode == 0, r.stderr[-3000:]
  run = tmp_path / "run"
  for name in ("kamland_results.json", "kamland_results.md", "rejection.png", "scores.png",
               "test_scores.npz", "metrics.jsonl"):
    assert (run / name).exists(), name
  res = json.loads((run / "kamland_results.json").read_text())
  assert res["data"] == "simulated"
  assert res["num_test_signal"] == res["num_test_background"] == 32
  assert 0 <= res["working_point"]["rejection"] <= 1
  masks = json.loads((run / "mask_direction.json").read_text())  # Regional-mask method.
  assert masks["num_events"] == 8 and masks["data"] == "simulated"
  assert 0 <= masks["regional masks (top 25 %)"]["fraction_within_60deg"] <= 1


def test_direction_analysis_scores_fractions_baseline_and_calibration(tmp_path):
  """The direction analysis on stand-in predictions with known errors (no training)."""
  config = load_config("configs/kamland.py", "smoke+direction")
  config.data.data_dir = str(tmp_path / "tfds")
  task = tasks.get_task(config)
  task.validate()
  test = task.eval_sources()["test"]
  y = np.stack([test[i]["direction"] for i in range(len(test))]).astype(np.float64)
  nhit = np.array([test[i]["nhit"] for i in range(len(test))])
  # Predictions 20° off for the first half, 90° off for the rest.
  perp = np.cross(y, [0.0, 0.0, 1.0])
  perp /= np.linalg.norm(perp, axis=1, keepdims=True)
  ang = np.radians(np.where(np.arange(len(y)) < len(y) // 2, 20.0, 90.0))[:, None]
  pred = np.cos(ang) * y + np.sin(ang) * perp

  def predict(split, outputs=None, fields=None):
    del outputs, fields
    assert split == "test"
    return {"outputs": {"pred_direction": pred, "kappa": np.full(len(y), 5.0)},
            "direction": y, "nhit": nhit}

  trained = tasks.Trained(model=None, variables={}, step=7, predict=predict, apply=None)
  res = task.analyse(trained, str(tmp_path))
  cnn = res["methods"]["spherical CNN + vmf"]
  assert cnn["fraction_within_30deg"] == cnn["fraction_within_60deg"] == 0.5
  assert cnn["median_deg"] == pytest.approx(55.0)  # Between the two halves.
  base = res["methods"]["hit centroid (non-ML)"]  # Recomputed from the hit lists.
  assert 0.3 < base["fraction_within_60deg"] <= 1
  assert len(res["calibration"]["observed"]) == 4 and res["data"] == "simulated"
  for name in ("kamland_direction.json", "kamland_direction.md", "calibration.png",
               "angular_errors.png", "test_directions.npz"):
    assert (tmp_path / name).exists(), name


@pytest.mark.slow  # 13 s: the launcher path of task_mode="direction".
def test_direction_smoke_run_writes_fractions_and_calibration(tmp_path):
  r = _launch("--config=configs/kamland.py:smoke+direction", f"--workdir={tmp_path / 'run'}",
              f"--config.data.data_dir={tmp_path / 'tfds'}")
  assert r.returncode == 0, r.stderr[-3000:]
  run = tmp_path / "run"
  for name in ("kamland_direction.json", "kamland_direction.md", "calibration.png",
               "angular_errors.png", "test_directions.npz"):
    assert (run / name).exists(), name
  res = json.loads((run / "kamland_direction.json").read_text())
  assert res["data"] == "simulated" and res["num_test"] == 32
  for m in res["methods"].values():
    assert 0 <= m["fraction_within_30deg"] <= m["fraction_within_60deg"] <= 1
  assert len(res["calibration"]["observed"]) == 4
  saved = np.load(run / "test_directions.npz")
  np.testing.assert_allclose(np.linalg.norm(saved["direction"], axis=1), 1, rtol=1e-5)


def test_bad_config_values_are_clear_errors():
  for key, value, match in (("model.name", "resnet", "config.model.name"),
                            ("task_mode", "energy", "config.task_mode"),
                            ("data.channels", ("late",), "config.data.channels"),
                            ("data.pmt_table", "/nonexistent.csv", "config.data.pmt_table")):
    config = load_config("configs/kamland.py", "smoke")
    if "." in key:
      parent, leaf = key.split(".")
      config[parent][leaf] = value
    else:
      config[key] = value
    with pytest.raises((ValueError, FileNotFoundError), match=match):
      tasks.get_task(config).validate()
  config = load_config("configs/kamland.py", "smoke+direction")
  config.model.head = "gauss"
  with pytest.raises(ValueError, match="config.model.head"):
    tasks.get_task(config).validate()


# no_early only drops an input channel of the smoke model: slow-marked to keep the default
# suite short (the launcher test and the comparison script cover the variant).
@pytest.mark.parametrize("variant", ["smoke", "smoke+planar",
                                     pytest.param("smoke+no_early", marks=pytest.mark.slow),
                                     "smoke+graph", "smoke+direction"])
def test_models_run_on_source_examples_and_give_loss_terms(variant):
  config = load_config("configs/kamland.py", variant)
  task = tasks.get_task(config)
  task.validate()
  events = sim.simulate_matched(0, 4)
  rows = [dict(events.event(i), vertex=events.vertex[i], label=events.label[i],
               visible_energy=events.visible_energy[i], direction=events.direction[i])
          for i in range(len(events))]
  src = kamland_source.KamlandSource(rows, sim.pmt_table()[0], L=config.data.band_limit,
                                     channels=tuple(config.data.channels),
                                     with_nodes=config.model.name == "graph")
  batch = {k: np.stack([src[i][k] for i in range(len(src))]) for k in src[0]}
  assert batch["sphere"].shape == (8, 16, 15, len(config.data.channels))
  assert batch["planar"].shape == (8, 38, 38, len(config.data.channels))
  batch["mask"] = np.ones(8, np.float32)
  model = task.build_model()
  v = model.init(jax.random.PRNGKey(0), batch, train=False)
  out = model.apply(v, batch, train=False)
  if config.task_mode == "direction":
    assert out["pred_direction"].shape == (8, 3) and out["kappa"].shape == (8,)
  else:
    assert out["logit"].shape == (8,)
  terms = task.loss_terms(out, batch)
  assert float(terms["loss"][1]) == 8 and np.isfinite(float(terms["loss"][0]))
  assert set(v) <= {"params", "batch_stats"}


def test_electron_tracks_switch_reaches_the_simulator_only_when_on(tmp_path):
  """data.electron_tracks (variant ``tracks``) is passed to the simulator; off, the sim
  kwargs stay empty so that default datasets keep their names (and cached data)."""
  from recoil_jax.studies.kamland import dataset as kamland_dataset
  off = tasks.get_task(load_config("configs/kamland.py", "smoke+direction"))
  on = tasks.get_task(load_config("configs/kamland.py", "smoke+direction+tracks"))
  assert off._sim_kwargs({}) == {} and on._sim_kwargs({}) == {"electron_tracks": True}
  names = {kamland_dataset.make_config(num_per_class={"train": 4, "validation": 4, "test": 4},
                                       seed=0, simulator="toy_direction",
                                       sim_kwargs=t._sim_kwargs({})).name for t in (off, on)}
  assert len(names) == 2
  config = load_config("configs/kamland.py", "smoke+tracks")
  (tmp_path / "hits.npz").write_bytes(b"")
  for split in ("train", "validation", "test"):
    config.data.hit_files[split] = str(tmp_path / "hits.npz")
  with pytest.raises(ValueError, match="electron_tracks"):
    tasks.get_task(config).validate()
