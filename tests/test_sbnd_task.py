"""The SBND task: config variants and parameter counts, loss terms, launcher runs on
simulated data and on CosmicTagger-format files, the ablation script and the colab."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO_ROOT, load_config, load_module, subprocess_env
from recoil_jax import train
from recoil_jax.studies.sbnd import analysis as seg
from recoil_jax.studies.sbnd import task as sbnd
from recoil_jax.studies.sbnd import model as uresnet

CONFIG = "configs/sbnd.py"


def _config_module():
  return load_module(CONFIG, "_sbnd_cfg")


def _launch(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "recoil_jax.main", *args], cwd=REPO_ROOT,
                        env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------- configs


def test_interaction_names_match_the_simulator():
  from recoil_jax.studies.sbnd import sim as lartpc  # pylint: disable=g-import-not-at-top
  assert seg.INTERACTIONS == lartpc.INTERACTIONS


def test_variants_compose_and_unknown_variant_fails():
  config = load_config(CONFIG, "batch2+paper+adam+full_balance")
  assert config.train.global_batch_size == 16  # "paper" applied first, then doubled.
  assert (config.data.height, config.data.width) == (640, 1024)
  assert config.optimizer.name == "adam" and config.loss.balance == "full"
  assert config.train.strategy == "pmap"
  accum = load_config(CONFIG, "batch2_accum")
  assert accum.train.global_batch_size == 16 and accum.train.grad_accum_steps == 2
  base = load_config(CONFIG)
  assert base.optimizer.name == "rmsprop" and base.optimizer.learning_rate == 3e-4
  assert base.train.global_batch_size == 8 and tuple(base.loss.class_weights) == (1, 1.5, 10)
  assert load_config(CONFIG, "lr_x10").optimizer.learning_rate == pytest.approx(3e-3)
  with pytest.raises(ValueError, match="no_such_variant.*known"):
    load_config(CONFIG, "no_such_variant")
  with pytest.raises(AttributeError):
    load_config(CONFIG, "smoke").model.no_such_key = 1


# Model fields that do not change the parameter tree.
_NUMERIC_ONLY = ("dtype", "cross_replica_bn", "leaky_slope", "bn_momentum", "bn_epsilon")


def test_every_variant_builds_with_the_expected_parameter_count():
  """Every variant's config builds its model; each distinct parameter structure (at the
  default size, and the paper's Table 1 size) has the count of Table 1's rule
  (uresnet.expected_parameter_count, independent of the model code)."""
  module = _config_module()
  counts, seen = {}, {}
  for variant in ("",) + module.VARIANTS + ("paper+concat",):
    config = load_config(CONFIG, variant)
    model = sbnd.SbndCosmicTask(config).build_model()  # Every variant builds.
    structure = tuple(sorted((k, v) for k, v in config.model.items() if k not in _NUMERIC_ONLY))
    if structure in seen:  # e.g. batch2, adam, bf16: the default's parameters.
      counts[variant] = counts[seen[structure]]
      continue
    seen[structure] = variant
    shapes = uresnet.abstract_variables(model, config.data.height, config.data.width)
    counts[variant] = uresnet.parameter_count(shapes)
    assert counts[variant] == uresnet.expected_parameter_count(config.model), variant
    assert "batch_stats" in shapes
  # Table 1 (arXiv 2012.01301, Table 1): 23,839,953 printed; −30 for the final 1×1 conv (27 instead
  # of Table 1's 57, which no code version has).
  assert counts["paper"] == 23_839_953 - 30
  assert counts["paper+concat"] - counts["paper"] == sum(
      f * (2 * f + 3) for f in (8, 16, 32, 64, 128, 256))
  assert counts["filters_half"] < counts[""] < counts["conv_upsample"]
  assert counts["non_residual"] < counts[""]
  for same in ("batch2", "no_balance", "lr_x10", "adam", "full_balance", "focal", "bf16"):
    assert seen.get(tuple(sorted(
        (k, v) for k, v in load_config(CONFIG, same).model.items()
        if k not in _NUMERIC_ONLY))) == "", same  # Training-only variants: default model.


def test_bad_config_values_are_clear_errors(tmp_path):
  config = load_config(CONFIG, "smoke")
  config.model.dtype = "float16"
  with pytest.raises(ValueError, match="config.model.dtype"):
    sbnd.SbndCosmicTask(config).build_model()
  config = load_config(CONFIG, "smoke")
  config.data.files.train = str(tmp_path / "*.h5")
  with pytest.raises(ValueError, match="files.validation, files.test"):
    sbnd.SbndCosmicTask(config)
  config.data.files.validation = config.data.files.test = config.data.files.train
  with pytest.raises(FileNotFoundError, match="config.data.files.train"):
    sbnd.SbndCosmicTask(config)


# ------------------------------------------------------------------------- loss terms


def test_train_and_eval_outputs_give_the_same_loss_terms():
  """The training path (logits only) and the evaluation path (logits + per-event statistics
  computed in the model) reduce to the same (sum, count) terms; padded events count for
  nothing; the model computes no loss."""
  config = load_config(CONFIG, "smoke")
  task = sbnd.SbndCosmicTask(config)
  rng = np.random.default_rng(0)
  h, w = 16, 32  # Smaller than the smoke data: only the code path matters here.
  label = rng.choice(3, size=(3, 3, h, w), p=[0.9, 0.08, 0.02]).astype(np.int32)
  image = np.where(label > 0, rng.uniform(10, 80, label.shape), 0).astype(np.float32)
  batch = {"image": jnp.asarray(image), "label": jnp.asarray(label),
           "mask": jnp.asarray([1.0, 1.0, 0.0])}
  masked = dict(batch, label=batch["label"].at[2].set(2))  # Changes only the padded event.
  model = task.build_model()

  @jax.jit  # One compilation instead of thousands of eager ops.
  def run(batch, masked):
    variables = model.init(jax.random.PRNGKey(0), batch, train=False)
    stats_out = model.apply(variables, batch, train=False)
    logits_out = {"logits": stats_out["logits"]}
    return (stats_out, logits_out, task.loss_terms(stats_out, batch),
            task.loss_terms(logits_out, batch),
            task.loss_terms(model.apply(variables, masked, train=False), masked))

  stats_out, logits_out, a, b, c = run(batch, masked)
  assert set(stats_out) == {"logits", *seg.STAT_KEYS}
  assert set(a) == {"loss", *seg.METRIC_NAMES}
  for name in a:
    np.testing.assert_allclose(np.asarray(a[name]), np.asarray(b[name]), rtol=1e-5,
                               err_msg=name)
  assert float(a["loss"][1]) == 2.0 and float(a["cosmic_iou"][1]) == 6.0  # 2 events × 3.
  np.testing.assert_allclose(np.asarray(c["loss"]), np.asarray(a["loss"]), rtol=1e-6)


# ------------------------------------------------------------------------- launcher


def _check_workdir(workdir: str, *, simulated: bool) -> dict:
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    final = json.load(f)["metrics"]
  for split in ("validation", "test"):
    for name in ("loss", *seg.METRIC_NAMES[:5]):
      assert np.isfinite(final[split][name]), (split, name)
    assert 0.0 <= final[split]["accuracy"] <= 1.0
  analysis = final["analysis"]
  assert analysis["data"] == ("simulated" if simulated else "CosmicTagger files")
  # The analysis recomputes the test metrics from per-event statistics: same numbers.
  for name in seg.METRIC_NAMES[:5]:
    assert analysis["metrics"][name] == pytest.approx(final["test"][name], rel=1e-5)
  files = set(os.listdir(workdir))
  assert {"sbnd_metrics.md", "sbnd_analysis.json", "predictions_test.npz",
          "event_displays_test.npz"} <= files
  displays = [f for f in files if f.startswith("event_display_") and f.endswith(".png")]
  assert len(displays) == 2 * load_config(CONFIG, "smoke").analysis.num_event_displays
  with np.load(os.path.join(workdir, "predictions_test.npz")) as p:
    assert p["selected"].shape == p["interaction"].shape
    assert p["intersection"].shape[1:] == (3, 2)
  return final


def test_smoke_run_from_the_launcher_writes_metrics_tables_and_plots(tmp_path):
  workdir = str(tmp_path / "wd")
  proc = _launch(f"--config={CONFIG}:smoke", f"--workdir={workdir}",
                 f"--config.data.data_dir={tmp_path / 'tfds'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  final = _check_workdir(workdir, simulated=True)
  for name in ("selection.md", "selection.json", "figure9.png", "figure9.md",
               "figure9.json"):
    assert os.path.isfile(os.path.join(workdir, name)), name
  md = open(os.path.join(workdir, "selection.md")).read()
  assert "simulated" in md and "cosmic-only rejection" in md
  table3 = final["analysis"]["selection"]
  n_test = load_config(CONFIG, "smoke").data.num_test
  assert sum(table3[t]["n"] or 0 for t in ("nue_cc", "numu_cc", "nc")) + (
      table3["cosmic_only_rejection"]["n"]) == n_test


@pytest.mark.slow  # ~22 s; the larcv3 reader and its errors are covered in test_sbnd_larcv.py.
def test_cosmictagger_files_train_and_evaluate_from_the_launcher(tmp_path):
  """Files in the CosmicTagger larcv3 layout with the truth groups (written from simulated
  events at 5x4 times the smoke resolution, pooled per axis by the launcher's default
  data.downsample=0) replace the simulator; the truth gives Table 3 and Figure 9 and is
  carried with file / entry / event id into the predictions."""
  from recoil_jax.studies.sbnd import larcv  # pylint: disable=g-import-not-at-top
  from recoil_jax.studies.sbnd import sim as lartpc  # pylint: disable=g-import-not-at-top
  smoke = load_config(CONFIG, "smoke")
  h, w = 5 * smoke.data.height, 4 * smoke.data.width  # 160x256 -> 32x64: 5x4 blocks.
  globs, test_events = {}, None
  for k, (split, n) in enumerate((("train", 8), ("validation", 4), ("test", 4))):
    ev = lartpc.simulate_sbnd_events(100 + k, n, height=h, width=w)
    ids = np.stack([np.full(n, 7), np.full(n, k), 10 + np.arange(n)], axis=1)
    ev = dataclasses.replace(ev, event_id=ids)
    path = tmp_path / f"cosmic_tagging_{split}.h5"
    larcv.write_events(path, ev)
    globs[split] = str(path)
    test_events = ev
  workdir = str(tmp_path / "wd")
  proc = _launch(f"--config={CONFIG}:smoke", f"--workdir={workdir}",
                 f"--config.data.data_dir={tmp_path / 'tfds'}",
                 *(f"--config.data.files.{s}={g}" for s, g in globs.items()))
  assert proc.returncode == 0, proc.stderr[-3000:]
  final = _check_workdir(workdir, simulated=False)
  table3 = final["analysis"]["selection"]  # Interaction types from particle_sbndneutrino.
  expected = np.bincount(test_events.interaction, minlength=4)
  assert [table3[t]["n"] for t in ("nue_cc", "numu_cc", "nc")] == expected[1:].tolist()
  assert table3["cosmic_only_rejection"]["n"] == expected[0]
  for name in ("selection.md", "figure9.png", "figure9.json"):
    assert os.path.isfile(os.path.join(workdir, name)), name
  assert "CosmicTagger files" in open(os.path.join(workdir, "selection.md")).read()
  with np.load(os.path.join(workdir, "predictions_test.npz")) as p:
    np.testing.assert_array_equal(p["interaction"], test_events.interaction)
    np.testing.assert_allclose(p["neutrino_energy_gev"], test_events.neutrino_energy_gev)
    np.testing.assert_array_equal(p["neutrino_pdg"], test_events.neutrino_pdg)
    np.testing.assert_allclose(p["vertex_cm"], test_events.vertex_cm, rtol=1e-6)
    np.testing.assert_array_equal(p["event_id"], test_events.event_id)
    np.testing.assert_array_equal(p["entry"], np.arange(4))
    assert p["file_index"].tolist() == [0] * 4
    assert os.path.basename(str(p["files"][0])) == "cosmic_tagging_test.h5"
  with np.load(os.path.join(workdir, "event_displays_test.npz")) as d:
    assert d["images"].shape[1:] == (3, smoke.data.height, smoke.data.width)
    # The vertex markers, pooled 5x4 like the images: within a pixel of the truth.
    np.testing.assert_allclose(d["vertex_pixel"], test_events.vertex_pixel[d["indices"]]
                               / np.array([5.0, 4.0]), atol=1.0)

  # Evaluation only: the trained weights on a new file of 5 events (< one batch of 8),
  # given alone; the training run's files and outputs are untouched.
  ev = lartpc.simulate_sbnd_events(200, 5, height=h, width=w)
  new_file = tmp_path / "new_events.h5"
  larcv.write_cosmictagger(new_file, ev.images, ev.labels)
  before = os.path.getmtime(os.path.join(workdir, "final_metrics.json"))
  proc = _launch(f"--config={CONFIG}:smoke", f"--workdir={workdir}", "--config.mode=evaluate",
                 f"--config.data.data_dir={tmp_path / 'tfds'}",
                 f"--config.data.files.test={new_file}", "--config.train.eval_batch_size=8")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.path.getmtime(os.path.join(workdir, "final_metrics.json")) == before
  with open(os.path.join(workdir, "evaluation", "final_metrics.json")) as f:
    evaluation = json.load(f)
  assert set(evaluation["metrics"]) == {"test", "analysis"}
  assert evaluation["metrics"]["analysis"]["num_events"] == 5
  # A file without the truth groups: no Table 3, no Figure 9.
  assert "unknown" in evaluation["metrics"]["analysis"]["selection_note"]
  assert not os.path.exists(os.path.join(workdir, "evaluation", "figure9.png"))
  assert "evaluation" in proc.stdout and "Workdir:" in proc.stdout
  # Another model is refused before anything is restored, naming the keys.
  other = load_config(CONFIG, "smoke")
  other.mode, other.model.depth = "evaluate", 3
  other.data.files.test = str(new_file)
  with pytest.raises(ValueError, match=r"model.depth: 2 -> 3"):
    train.train_and_evaluate(other, workdir)


# ------------------------------------------------------------------------- ablation, colab


@pytest.mark.slow
def test_ablation_script_quick_and_resumable(tmp_path):
  """Two variants at the --quick size; a second call skips both (resumable)."""
  cmd = [sys.executable, os.path.join(REPO_ROOT, "scripts", "sbnd_ablation.py"),
         f"--workdir={tmp_path}", "--quick", "--variants=baseline,no_balance",
         f"--results_dir={tmp_path / 'published'}"]
  proc = subprocess.run(cmd, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = json.loads((tmp_path / "ablation.json").read_text())
  assert [r["variant"] for r in table["rows"]] == ["baseline", "no_balance"]
  assert all(np.isfinite(r["metrics"]["mean_iou"]) for r in table["rows"])
  # Run folders are recorded relative to ablation.json (no machine-specific paths).
  assert all(not os.path.isabs(r["workdir"]) and (tmp_path / r["workdir"] / "final_metrics.json").exists()
             for r in table["rows"])
  md = (tmp_path / "ablation.md").read_text()
  assert "simulated" in md and "| No Loss Balance |" in md and "0.544" in md
  published = tmp_path / "published"
  assert {"ablation.json", "ablation.md", "PROVENANCE.md", "selection_baseline.md",
          "figure9_baseline.png"} <= set(os.listdir(published))
  provenance = (published / "PROVENANCE.md").read_text()
  assert "status: current" in provenance and "--quick" in provenance
  again = subprocess.run(cmd, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True,
                         text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count("already finished") == 2
