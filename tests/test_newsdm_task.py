"""The NEWSdm task: config variants, the loss as exact (sum, count) terms, the streaming
test source, and the launcher end to end on the smoke config."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO_ROOT, load_config, subprocess_env
from recoil_jax.studies.newsdm import dataset as newsdm_dataset
from recoil_jax.studies.newsdm import sim
from recoil_jax.studies.newsdm import source as newsdm_source
from recoil_jax.studies.newsdm import task as newsdm_task

CONFIG = "configs/newsdm.py"


def test_variants_compose_and_unknown_variant_fails():
  c = load_config(CONFIG, "unphysical+cycled+smoke")
  assert "nanoparticle" in c.data.train_kinds and c.model.augment == "cycled"
  assert c.data.chunk_size % len(c.data.train_kinds) == 0
  assert load_config(CONFIG, "rotational").model.augment == "source"
  assert load_config(CONFIG, "paper").model.width == 1.0
  assert load_config(CONFIG, "plain").model.architecture == "plain3d"
  with pytest.raises(ValueError, match="no_such.*known"):
    load_config(CONFIG, "no_such")
  with pytest.raises(ValueError, match="train_kinds"):
    config = load_config(CONFIG, "smoke")
    config.data.train_kinds = ("c30", "c60")
    newsdm_task.NewsdmTask(config).validate()


def test_loss_terms_are_mu_cce_plus_bce_over_events_passing_the_cuts():
  config = load_config(CONFIG, "smoke")
  task = newsdm_task.NewsdmTask(config)
  logits = jax.random.normal(jax.random.PRNGKey(0), (6, 4)) * 2
  from recoil_jax.studies.newsdm import model as newsdm_model  # pylint: disable=g-import-not-at-top
  outputs = {"logits": logits, "signal_logit": newsdm_model._signal_logit(logits)}
  label = jnp.array([0, 1, 2, 3, 3, 2])
  batch = {"label": label, "signal": (label < 3).astype(jnp.float32),
           "mask": jnp.array([1, 1, 1, 1, 1, 0.0]),
           "passed_cuts": jnp.array([1, 1, 0, 1, 1, 1.0])}
  terms = task.loss_terms(outputs, batch)
  p = np.asarray(jax.nn.softmax(logits))
  keep = np.array([0, 1, 3, 4])
  cce = -np.log(p[keep, np.asarray(label)[keep]])
  p_sig = p[keep, :3].sum(-1)
  y = np.asarray(batch["signal"])[keep]
  bce = -(y * np.log(p_sig) + (1 - y) * np.log(1 - p_sig))
  total, count = terms["loss"]
  assert float(count) == 4
  np.testing.assert_allclose(float(total) / 4, np.mean(0.53 * cce + bce), rtol=1e-5)
  np.testing.assert_allclose(float(terms["multiclass/loss"][0]) / 4, cce.mean(), rtol=1e-5)


def test_streaming_source_generates_event_i_on_demand():
  src = newsdm_source.StreamingSource("fog", 25, seed=3, stream=7, chunk_size=10,
                                      cache_chunks=1)
  assert len(src) == 25
  late = src[23]
  first = src[0]  # Chunk 0 after chunk 2 (cache of one chunk): regenerated, identical.
  np.testing.assert_array_equal(src[23]["image"], late["image"])
  np.testing.assert_array_equal(src[0]["image"], first["image"])
  ev = sim.simulate(sim.chunk_seed(3, 7, 2), 5, "fog")
  images, passed, _ = newsdm_dataset.clean_chunk(ev, {"fog": np.inf}, newsdm_dataset.CutSpec())
  np.testing.assert_array_equal(late["image"], images[3].astype(np.float32) / 256)
  assert late["image"].shape == (40, 40, 9) and late["label"] == 3 and late["signal"] == 0
  assert late["passed_cuts"] == float(passed[3])
  assert src.cut_counts()["events"] == 15  # Chunks 0 and 2 generated so far.
  with pytest.raises(IndexError):
    src[25]


@pytest.mark.parametrize("variant", [
    "smoke+plain",  # The default suite: the launcher path with the small 3D CNN.
    pytest.param("smoke", marks=pytest.mark.slow),  # NEWSnet_3D (its compile costs ~25 s).
])
def test_launcher_smoke_end_to_end(tmp_path, variant):
  workdir = str(tmp_path / "run")
  proc = subprocess.run(
      [sys.executable, "-m", "recoil_jax.main", f"--config={CONFIG}:{variant}",
       f"--workdir={workdir}", f"--config.data.data_dir={tmp_path / 'tfds'}"],
      cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in ("newsdm_rejection.md", "newsdm_analysis.json", "rejection_fog.png",
               "rejection_gamma.png", "scores.png", "scores_test_fog.npz",
               "final_metrics.json"):
    assert os.path.exists(os.path.join(workdir, name)), name
  with open(os.path.join(workdir, "newsdm_analysis.json")) as f:
    analysis = json.load(f)
  assert analysis["data"] == "simulated"
  pair = analysis["pairs"]["test_c100_beam0/test_fog"]
  wp = pair["nn"]["working_points"][0]
  assert wp["num_background"] == analysis["cut_counts"]["test_fog"]["kept"]
  assert 0 <= pair["bar_shift"]["auc"] <= 1
  text = open(os.path.join(workdir, "newsdm_rejection.md")).read()
  assert "simulated" in text and "Clopper–Pearson" in text
  with np.load(os.path.join(workdir, "scores_test_gamma.npz")) as f:
    assert f["signal_logit"].shape == (48,) and np.all(np.isfinite(f["signal_logit"]))
  # The streamed test sets are predicted once, by the analysis: the trainer's closing
  # evaluation covers validation only, and the analysis reports the test sets' loss and
  # accuracies (what final_metrics.json used to hold for them) with its wall time and memory.
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    final = json.load(f)["metrics"]
  assert set(final) == {"validation", "analysis"}
  tm = analysis["test_metrics"]["test_fog"]
  assert tm["events"] == analysis["cut_counts"]["test_fog"]["kept"]
  assert 0 <= tm["accuracy"] <= 1 and tm["loss"] > 0 and "multiclass/accuracy" in tm
  assert final["analysis"]["test_metrics"]["test_fog"] == pytest.approx(tm)
  ev = analysis["evaluation"]["test_gamma"]
  assert ev["events"] == 48 and ev["seconds"] > 0 and ev["peak_rss_mib"] > 0
  assert "streamed prediction" in text
  section = text.split("streamed prediction")[1].splitlines()
  header = next(line for line in section if line.startswith("| test set |"))
  row = next(line for line in section if line.startswith("| test_fog |"))
  assert header.count("|") == row.count("|"), (header, row)


def test_split_metrics_equal_the_trainers_closing_evaluation_terms():
  """``_split_metrics`` (the analysis' loss and accuracies of a test set) = the (sum, count)
  terms of ``loss_terms`` over the same events, as the trainer's evaluation reduces them."""
  task = newsdm_task.NewsdmTask(load_config(CONFIG, "smoke"))
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(30, 4)).astype(np.float32) * 2
  from recoil_jax.studies.newsdm import model as newsdm_model  # pylint: disable=g-import-not-at-top
  signal_logit = np.asarray(newsdm_model._signal_logit(jnp.asarray(logits)))
  label = np.full(30, 3, np.int32)
  passed = (rng.uniform(size=30) > 0.2).astype(np.float32)
  pred = {"outputs": {"logits": logits, "signal_logit": signal_logit}, "label": label,
          "signal": np.zeros(30, np.float32), "passed_cuts": passed}
  m = task._split_metrics(pred)
  keep = passed > 0.5
  assert m["events"] == keep.sum()
  np.testing.assert_allclose(m["accuracy"], np.mean(signal_logit[keep] <= 0), rtol=1e-6)
  np.testing.assert_allclose(m["multiclass/accuracy"],
                             np.mean(np.argmax(logits[keep], -1) == 3), rtol=1e-6)
  p_bkg = np.asarray(jax.nn.softmax(logits))[keep, 3]
  np.testing.assert_allclose(m["binary/loss"], np.mean(-np.log(p_bkg)), rtol=1e-4)


def test_the_trainer_evaluates_only_validation_at_the_end():
  task = newsdm_task.NewsdmTask(load_config(CONFIG, "smoke"))
  from recoil_jax import train  # pylint: disable=g-import-not-at-top
  sources = {"validation": [0], "test_fog": [0], "test_c100_beam0": [0]}
  assert list(train._final_evaluation_sources(task, sources)) == ["validation"]
