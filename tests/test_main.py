"""The command-line launcher, run in a subprocess as a user would."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys

from conftest import REPO_ROOT, load_config, subprocess_env


def _launch(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "recoil_jax.main", *args], cwd=REPO_ROOT,
                        env=subprocess_env(), capture_output=True, text=True, timeout=300)


# An absl/orbax INFO log line: "I1206 07:26:37.613069 140144371911552 checkpoint_manager.py:701]".
_INFO_LINE = re.compile(r"^I\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+\.py:\d+\]", re.M)


def test_smoke_run_writes_the_workdir_and_honours_overrides(tmp_path):
  workdir = str(tmp_path / "smoke")
  proc = _launch("--config=configs/toy.py:smoke", f"--workdir={workdir}",
                 "--config.optimizer.learning_rate=0.003")
  assert proc.returncode == 0, proc.stderr[-3000:]
  # Quiet by default: no library INFO lines (orbax alone logs ~200), a short output that ends
  # with the summary (final metrics per split, tables, the workdir).
  output = proc.stdout + proc.stderr
  assert len(output.splitlines()) < 40, output
  assert not _INFO_LINE.search(output) and "orbax" not in output, output
  summary = proc.stdout[proc.stdout.index("Final metrics"):].splitlines()
  assert re.match(r"^  validation: .*loss=-?\d", summary[1]), summary
  assert re.match(r"^  test: .*loss=-?\d", summary[2]), summary
  assert f"Table: {os.path.join(workdir, 'final_metrics.json')}" in summary
  assert summary[-1] == f"Workdir: {workdir}"
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  assert config["task"] == "toy"
  assert config["optimizer"]["learning_rate"] == 0.003
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    events = [json.loads(line) for line in f]
  train_events = [e for e in events if e["event"] == "train"]
  assert train_events and all(
      abs(e["metrics"]["learning_rate"] - 0.003) < 1e-9 for e in train_events)
  assert {e["split"] for e in events if e["event"] == "final"} == {"validation", "test"}
  assert all({"step", "epoch", "split", "metrics", "time"} <= set(e) for e in events)
  tb_files = glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
  assert len(tb_files) == 1
  with open(tb_files[0], "rb") as f:
    tb = f.read()
  assert b"train/loss" in tb and b"validation/loss" in tb and b"final_test/loss" in tb
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["20", "30", "32"]
  assert os.listdir(os.path.join(workdir, "best")) == ["32"]
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    assert json.load(f)["stop_reason"] == "completed 2 epochs"

  # --verbosity=0 (absl's flag) shows the library INFO logs again (here: a resumed,
  # finished run, which evaluates the best checkpoint).
  again = _launch("--config=configs/toy.py:smoke", f"--workdir={workdir}",
                  "--config.optimizer.learning_rate=0.003", "--verbosity=0")
  assert again.returncode == 0, again.stderr[-3000:]
  assert _INFO_LINE.search(again.stderr) and "checkpoint" in again.stderr
  assert "Final metrics" in again.stdout


def _assert_usage_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  lines = proc.stderr.strip().splitlines()
  assert len(lines) <= 2 and "Traceback" not in proc.stderr, proc.stderr
  for fragment in fragments:
    assert fragment in lines[0], (fragment, lines[0])
  return lines[0]


def test_unknown_config_key_is_an_error_naming_it(tmp_path):
  proc = _launch("--config=configs/toy.py:smoke", f"--workdir={tmp_path}",
                 "--config.no_such_key=1")
  _assert_usage_error(proc, "--config.no_such_key=1", "unknown config key 'no_such_key'")
  assert not os.path.exists(os.path.join(tmp_path, "config.json"))
  # A misspelt nested key: the closest known keys are suggested.
  proc = _launch("--config=configs/toy.py:smoke", f"--workdir={tmp_path}",
                 "--config.train.num_epochs=1", "--config.optimizer.learnin_rate=0.1")
  _assert_usage_error(proc, "'optimizer.learnin_rate'", "closest known keys: "
                      "optimizer.learning_rate")
  # The right name in the wrong group.
  proc = _launch("--config=configs/toy.py:smoke", f"--workdir={tmp_path}",
                 "--config.learning_rate=0.1")
  _assert_usage_error(proc, "'learning_rate'", "optimizer.learning_rate")
  assert not os.path.exists(os.path.join(tmp_path, "config.json"))


def test_bad_variant_or_missing_config_file_is_a_short_usage_error(tmp_path):
  proc = _launch("--config=configs/toy.py:no_such_variant", f"--workdir={tmp_path}")
  _assert_usage_error(proc, "configs/toy.py:no_such_variant", "Unknown variant "
                      "'no_such_variant'", "known: smoke")
  proc = _launch("--config=configs/no_such_file.py", f"--workdir={tmp_path}")
  _assert_usage_error(proc, "config file 'configs/no_such_file.py' does not exist")
  proc = _launch("--config=configs/no_such_file.py:smoke", f"--workdir={tmp_path}",
                 "--config.seed=1")
  _assert_usage_error(proc, "'configs/no_such_file.py' does not exist")
  proc = _launch("--config=configs/toy.py:smoke", f"--workdir={tmp_path}",
                 "--config.optimizer.learning_rate=fast")
  _assert_usage_error(proc, "--config.optimizer.learning_rate=fast")
  proc = _launch("--config=configs/toy.py:smoke")
  _assert_usage_error(proc, "--workdir")
  assert not os.listdir(tmp_path)


def test_unknown_key_message_suggests_close_keys():
  from recoil_jax import main  # pylint: disable=g-import-not-at-top
  config = load_config("configs/toy.py", "smoke")
  assert main.unknown_key_message(config, "optimizer.learning_rate") is None
  assert main.unknown_key_message(config, "model.hiden").endswith("closest known keys: "
                                                                  "model.hidden")
  assert "'seed' is a value (int)" in main.unknown_key_message(config, "seed.x")
  message = main.unknown_key_message(config, "optimizer.zzz")
  assert "known keys under 'optimizer': " in message and "learning_rate" in message


def test_summary_lists_metrics_figures_tables_and_the_workdir(tmp_path):
  from recoil_jax import main  # pylint: disable=g-import-not-at-top
  for rel in ("final_metrics.json", "figure6.png", "figure6.md", "metrics.jsonl",
              "plots/calibration.png", "plots/deeper/skipped.png", "checkpoints/32/x.md",
              "best/32/y.png", "tensorboard/z.png", "tables/selection.md"):
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
  results = {"validation": {"loss": -0.61, "angle_deg": 46.51234},
             "test": {"loss": -0.5, "count": 48}, "analysis": {"median": 1.0}}
  lines = main.summary_lines(results, str(tmp_path))
  assert lines == [
      "Final metrics (best weights):",
      "  validation: loss=-0.61, angle_deg=46.512",
      "  test: loss=-0.5, count=48",
      f"Figure: {tmp_path / 'figure6.png'}",
      f"Figure: {tmp_path / 'plots' / 'calibration.png'}",
      f"Table: {tmp_path / 'figure6.md'}",
      f"Table: {tmp_path / 'final_metrics.json'}",
      f"Table: {tmp_path / 'tables' / 'selection.md'}",
      f"Workdir: {tmp_path}",
  ]
