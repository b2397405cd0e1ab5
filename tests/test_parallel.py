"""Data parallelism: 8 fake CPU devices and 2 processes give the 1-device result."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO_ROOT, load_config, saved_state, subprocess_env
from recoil_jax import parallel
from recoil_jax import train

# Same trajectory on any device count needs: no dropout (its RNG is per device) and no
# BatchNorm (statistics are per device batch).
DETERMINISTIC = ("--config.model.dropout_rate=0", "--config.model.batch_norm=False",
                 "--config.train.num_epochs=1")

EIGHT_DEVICES = r"""
import json, sys
import jax
from conftest import load_config
from recoil_jax import parallel, train
assert jax.device_count() == 8, jax.devices()
out = {}
for name, deterministic in [("eight", True), ("eight_bn_dropout", False)]:
  config = load_config("configs/toy.py", "smoke")
  config.train.num_epochs = 1
  if deterministic:
    config.model.dropout_rate = 0.0
    config.model.batch_norm = False
  out[name] = train.train_and_evaluate(config, sys.argv[1] + "/" + name)
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
  """(workdir, results) of the deterministic smoke config on one device, in this process."""
  config = load_config("configs/toy.py", "smoke")
  for flag in DETERMINISTIC:
    key, value = flag.removeprefix("--config.").split("=")
    section, field = key.split(".")
    config[section][field] = {"0": 0.0, "False": False, "1": 1}[value]
  workdir = str(tmp_path_factory.mktemp("one_device"))
  return workdir, train.train_and_evaluate(config, workdir,
                                           mesh=parallel.make_mesh(jax.devices()[:1]))


def _assert_same_run(workdir, results, ref_workdir, ref_results):
  for split in ("validation", "test"):
    for k, v in ref_results[split].items():
      assert results[split][k] == pytest.approx(v, rel=1e-4, abs=1e-5), (split, k)
  step, state = saved_state(workdir, "checkpoints")
  ref_step, ref_state = saved_state(ref_workdir, "checkpoints")
  assert step == ref_step == 16
  _assert_close(state["params"], ref_state["params"])
  _assert_close(state["opt_state"], ref_state["opt_state"])


def _leaves(tree):
  return jax.tree.leaves(tree)


def _assert_close(a, b, rtol=2e-4, atol=2e-5):
  la, lb = _leaves(a), _leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def test_eight_devices_match_one_device(tmp_path, one_device_run):
  env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=8",
                       PYTHONPATH=os.path.join(REPO_ROOT, "tests") + os.pathsep + REPO_ROOT)
  proc = subprocess.run([sys.executable, "-c", EIGHT_DEVICES, str(tmp_path)], cwd=REPO_ROOT,
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT", 1)[1])
  _assert_same_run(str(tmp_path / "eight"), out["eight"], *one_device_run)
  # BatchNorm + dropout on 8 devices: runs, finite, batch_stats kept (pmean'd) in the state.
  assert np.isfinite(out["eight_bn_dropout"]["test"]["loss"])
  _, state_bn = saved_state(str(tmp_path / "eight_bn_dropout"), "checkpoints")
  assert "batch_stats" in state_bn["model_state"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path, one_device_run):
  workdir = str(tmp_path / "multi")
  port = _free_port()
  env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
  procs = [
      subprocess.Popen(
          [sys.executable, "-m", "recoil_jax.main", "--config=configs/toy.py:smoke",
           f"--workdir={workdir}", *DETERMINISTIC,
           f"--config.parallel.coordinator_address=127.0.0.1:{port}",
           "--config.parallel.num_processes=2", f"--config.parallel.process_id={i}"],
          cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  # Process 0 reports and writes; process 1 trains and evaluates silently.
  assert "2 processes" in outputs[0][0] and "4 devices" in outputs[0][0]
  assert "validation" not in outputs[1][0] and "Workdir" not in outputs[1][0]
  assert os.path.exists(os.path.join(workdir, "toy_analysis.json"))
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    multi = json.load(f)["metrics"]
  _assert_same_run(workdir, multi, *one_device_run)
  assert multi["analysis"]["num_test"] == one_device_run[1]["analysis"]["num_test"]
  assert multi["analysis"]["test_median_angle_deg"] == pytest.approx(
      one_device_run[1]["analysis"]["test_median_angle_deg"], rel=1e-4)


def _two_process_run(tmp_path, config, extra=()):
  workdir, data_dir = str(tmp_path / "run"), str(tmp_path / "data")
  port = _free_port()
  env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=1")
  procs = [
      subprocess.Popen(
          [sys.executable, "-m", "recoil_jax.main", f"--config={config}",
           f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *extra,
           f"--config.parallel.coordinator_address=127.0.0.1:{port}",
           "--config.parallel.num_processes=2", f"--config.parallel.process_id={i}"],
          cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  return workdir, outputs


def test_two_processes_run_the_cygno_study_and_write_once(tmp_path):
  """A real study on 2 processes sharing one workdir and one data folder: process 0 builds
  the cached variable table, both train, process 0 alone analyses and writes its tables and
  figures (once, no temporary files left, no race at shutdown)."""
  workdir, outputs = _two_process_run(tmp_path, "configs/cygno.py:smoke")
  files = set(os.listdir(workdir))
  assert {"final_metrics.json", "cygno_rejection.md", "cygno_analysis.json",
          "rejection_curves.png"} <= files
  assert not [f for f in files if ".tmp" in f], files
  data_files = os.listdir(tmp_path / "data" / "cygno")
  assert not [f for f in data_files if ".tmp" in f], data_files
  assert "Workdir" in outputs[0][0] and "Workdir" not in outputs[1][0]


@pytest.mark.slow  # ~50 s: the sparse CNN compiled in two processes.
def test_two_processes_run_the_tpc_study_and_write_once(tmp_path):
  """The TPC study on 2 processes sharing one workdir and one dataset folder: process 0
  builds the dataset, both train, process 0 alone analyses and writes (the predictions
  files and figures once, no temporary files left, no race at shutdown)."""
  workdir, data_dir = str(tmp_path / "run"), str(tmp_path / "data")
  port = _free_port()
  env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=1")
  procs = [
      subprocess.Popen(
          [sys.executable, "-m", "recoil_jax.main", "--config=configs/tpc.py:smoke",
           f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
           f"--config.parallel.coordinator_address=127.0.0.1:{port}",
           "--config.parallel.num_processes=2", f"--config.parallel.process_id={i}"],
          cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  files = set(os.listdir(workdir))
  assert {"final_metrics.json", "figure6.png", "figure6.md", "calibration.png",
          "predictions_test_40keV_200um.npz", "predictions_test_50keV_443um.npz"} <= files
  assert not [f for f in files if ".tmp" in f], files
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    final = json.load(f)
  assert set(final["metrics"]["analysis"]["test_sets"]) == {"test_40keV_200um",
                                                           "test_50keV_443um"}
  assert "Workdir" in outputs[0][0] and "Workdir" not in outputs[1][0]
