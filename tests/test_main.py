"""The command-line launcher, run in a subprocess as a user would."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

from conftest import REPO_ROOT, subprocess_env


def _launch(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "recoil_jax.main", *args], cwd=REPO_ROOT,
                        env=subprocess_env(), capture_output=True, text=True, timeout=300)


def test_smoke_run_writes_the_workdir_and_honours_overrides(tmp_path):
  workdir = str(tmp_path / "smoke")
  proc = _launch("--config=configs/toy.py:smoke", f"--workdir={workdir}",
                 "--config.optimizer.learning_rate=0.003")
  assert proc.returncode == 0, proc.stderr[-3000:]
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


def test_unknown_config_key_is_an_error_naming_it(tmp_path):
  proc = _launch("--config=configs/toy.py:smoke", f"--workdir={tmp_path}",
                 "--config.no_such_key=1")
  assert proc.returncode != 0
  assert "no_such_key" in proc.stderr
  assert not os.path.exists(os.path.join(tmp_path, "config.json"))
