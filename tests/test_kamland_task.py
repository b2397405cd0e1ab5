"""KamLAND study end to end: the launcher's smoke run, config validation, both models."""

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


def test_bad_config_values_are_clear_errors():
  for key, value, match in (("model.name", "resnet", "config.model.name"),
                            ("data.channels", ("late",), "config.data.channels"),
                            ("data.pmt_table", "/nonexistent.csv", "config.data.pmt_table")):
    config = load_config("configs/kamland.py", "smoke")
    parent, leaf = key.split(".")
    config[parent][leaf] = value
    with pytest.raises((ValueError, FileNotFoundError), match=match):
      tasks.get_task(config).validate()


@pytest.mark.parametrize("variant", ["smoke", "smoke+planar", "smoke+no_early"])
def test_models_run_on_source_examples_and_give_loss_terms(variant):
  config = load_config("configs/kamland.py", variant)
  task = tasks.get_task(config)
  task.validate()
  events = sim.simulate_matched(0, 4)
  rows = [dict(events.event(i), vertex=events.vertex[i], label=events.label[i],
               visible_energy=events.visible_energy[i]) for i in range(len(events))]
  src = kamland_source.KamlandSource(rows, sim.pmt_table()[0], L=config.data.band_limit,
                                     channels=tuple(config.data.channels))
  batch = {k: np.stack([src[i][k] for i in range(len(src))]) for k in src[0]}
  assert batch["sphere"].shape == (8, 16, 15, len(config.data.channels))
  assert batch["planar"].shape == (8, 38, 38, len(config.data.channels))
  batch["mask"] = np.ones(8, np.float32)
  model = task.build_model()
  v = model.init(jax.random.PRNGKey(0), batch, train=False)
  out = model.apply(v, batch, train=False)
  assert out["logit"].shape == (8,)
  terms = task.loss_terms(out, batch)
  assert float(terms["loss"][1]) == 8 and np.isfinite(float(terms["loss"][0]))
  assert set(v) == {"params", "batch_stats"}
