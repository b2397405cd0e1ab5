"""Keeps README.md's quickstart true: CI runs its test command, its main job runs (smoke)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, subprocess_env


def quickstart_commands() -> list[str]:
  """The shell lines of the first fenced block under the "Quickstart" heading."""
  with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
    text = f.read()
  match = re.search(r"^## Quickstart.*?```(?:bash|sh)?\n(.*?)```", text, re.S | re.M)
  assert match, "README.md needs a '## Quickstart' section with a fenced code block"
  return [line.strip() for line in match.group(1).splitlines()
          if line.strip() and not line.strip().startswith("#")]


def test_quickstart_has_two_commands_install_and_tests():
  commands = quickstart_commands()
  assert len(commands) == 2, commands
  main_job, tests = commands
  assert "pip install -e ." in main_job and "python -m recoil_jax.main" in main_job
  assert "pip install -e \".[test]\"" in tests
  assert tests.rstrip().endswith("pytest -n 2 --dist loadfile")


def test_ci_runs_the_readme_test_command_in_a_fresh_venv():
  with open(os.path.join(REPO_ROOT, ".ci", "run"), encoding="utf-8") as f:
    ci = f.read()
  assert quickstart_commands()[1] in ci
  assert "rm -rf .venv" in ci  # Fresh environment every time.


def test_main_job_command_runs_in_smoke_mode(tmp_path):
  """The README's main job, in its ``:smoke`` variant, writes Figure 6 and calibration."""
  main_job = quickstart_commands()[0].split("&&")[-1].strip()
  argv = shlex.split(main_job)
  assert argv[:3] == ["python", "-m", "recoil_jax.main"], argv
  args = []
  for arg in argv[3:]:
    if arg.startswith("--config="):
      arg += ":smoke"
    elif arg.startswith("--workdir="):
      arg = f"--workdir={tmp_path / 'work'}"
    args.append(arg)
  args.append(f"--config.data.data_dir={tmp_path / 'data'}")
  proc = subprocess.run([sys.executable, "-m", "recoil_jax.main", *args], cwd=REPO_ROOT,
                        env=subprocess_env(), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  work = tmp_path / "work"
  for name in ("figure6.png", "figure6.md", "figure6.json", "calibration.png",
               "angular_errors.png", "config.json", "metrics.jsonl"):
    assert (work / name).exists(), name
  table = json.loads((work / "figure6.json").read_text())
  assert set(table["test_sets"]) == {"test_40keV_200um", "test_50keV_443um"}
  assert "simulated" in (work / "figure6.md").read_text()
