"""Several training runs side by side (ablations, regimes): one run folder per row, resumable.

Used by the scripts that reproduce a paper's table row by row (``scripts/sbnd_ablation.py``,
``scripts/newsdm_regimes.py``). A row's folder is an ordinary workdir: a finished run of the
same config is read back instead of trained again; a run of another config is an error
naming the keys that differ (through the trainer's own comparison); an interrupted one
resumes from its checkpoint (``train.train_and_evaluate``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from types import ModuleType
from typing import Any

import ml_collections

from recoil_jax import io
from recoil_jax import train

RUN_TIME_FILE = "run_time.json"  # Wall seconds of the call that trained the row.


def load_config_file(path: str) -> ModuleType:
  """The module of a config file (``configs/<study>.py``: ``get_config``, variant tables)."""
  repo_root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if repo_root not in sys.path:  # Config files import recoil_jax.config_lib.
    sys.path.insert(0, repo_root)
  spec = importlib.util.spec_from_file_location(
      f"_recoil_jax_config_{os.path.splitext(os.path.basename(path))[0]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def selected_names(text: str, known, what: str) -> list[str]:
  """The comma-separated names of ``text`` (a script's row/variant flag), checked.

  Raises:
    ValueError: a name is not in ``known``, or none is given; the message lists ``known``.
  """
  names = [n.strip() for n in text.split(",") if n.strip()]
  unknown = [n for n in names if n not in known]
  if unknown or not names:
    raise ValueError(f"unknown {what}(s) {unknown or names}; known: {list(known)}")
  return names


def prepare_workdir(workdir: str, data_dir: str) -> tuple[str, str]:
  """(absolute ``workdir``, created; ``data_dir`` or ``workdir/tfds`` when empty)."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  return workdir, data_dir or os.path.join(workdir, "tfds")


def finished_result(run_dir: str, config: ml_collections.ConfigDict,
                    result_file: str = "final_metrics.json") -> dict[str, Any] | None:
  """``run_dir/result_file`` of a finished run of ``config``; None if not (yet) finished.

  Raises:
    ValueError: ``run_dir`` holds a run of another config; the message names the keys.
  """
  saved = os.path.join(run_dir, "config.json")
  if not os.path.exists(saved):
    return None
  with open(saved, encoding="utf-8") as f:
    diff = train.config_differences(json.load(f), json.loads(config.to_json_best_effort()))
  if diff:
    raise ValueError(f"{run_dir} holds a run with another config (differs in {sorted(diff)}); "
                     "use another --workdir or delete it")
  paths = [os.path.join(run_dir, n) for n in ("final_metrics.json", result_file)]
  if not all(os.path.exists(p) for p in paths):
    return None
  with open(paths[1], encoding="utf-8") as f:
    return json.load(f)


def run_or_reuse(config: ml_collections.ConfigDict, run_dir: str, *, name: str, tag: str,
                 result_file: str = "final_metrics.json"
                 ) -> tuple[dict[str, Any], float | None]:
  """Trains ``config`` into ``run_dir`` unless it is finished there; ``(result, seconds)``.

  ``seconds`` is the wall time of the call that trained the row (recorded in
  :data:`RUN_TIME_FILE`), None if that was not recorded.
  """
  result = finished_result(run_dir, config, result_file)
  timing = os.path.join(run_dir, RUN_TIME_FILE)
  if result is None:
    print(f"[{tag}] training {name!r} in {run_dir}", flush=True)
    start = time.time()
    train.train_and_evaluate(config, run_dir)
    seconds = time.time() - start
    result = finished_result(run_dir, config, result_file)
    if result is None:
      raise RuntimeError(f"{run_dir}: no {result_file} after training {name!r}")
    io.write_json_atomic(timing, {"seconds": seconds})
    return result, seconds
  print(f"[{tag}] {name!r} already finished in {run_dir}; skipped", flush=True)
  if not os.path.exists(timing):
    return result, None
  with open(timing, encoding="utf-8") as f:
    return result, json.load(f)["seconds"]


def git_commit(repo_root: str) -> str:
  """Short HEAD commit of ``repo_root``, marked when the working tree has uncommitted changes."""
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo_root,
                            capture_output=True, text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           cwd=repo_root, capture_output=True, text=True,
                           check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "not recorded (no git checkout)"
  return commit + (" (with uncommitted changes)" if dirty else "")


def write_provenance(results_dir: str, *, what: str, config: str, overrides: str,
                     command: str, repo_root: str, wall_time: str,
                     checked_by: str = "`tests/test_results.py`") -> str:
  """Writes ``results_dir/PROVENANCE.md`` for a published table; returns its path.

  The machine-readable block (config, overrides, status, stale keys) is the one
  ``tests/test_results.py`` parses; ``what`` says where the numbers come from (say
  "simulated" there when they are).
  """
  load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
  text = (f"# Provenance of `{os.path.basename(os.path.normpath(results_dir))}/`\n\n"
          f"{what}\n\nMachine-readable (checked by {checked_by}):\n\n```text\n"
          f"config: {config}\noverrides: {overrides}\nstatus: current\nstale_keys: none\n"
          f"```\n\n## Command\n\n```bash\n{command}\n```\n\n"
          f"## Commit\n\n{git_commit(repo_root)}\n\n## Machine\n\n{platform.machine()}, "
          f"{os.cpu_count()} CPU cores, {platform.platform()}\n\n"
          f"## Wall time\n\n{wall_time} (load average when this was written: {load}).\n")
  return io.write_text_atomic(os.path.join(results_dir, "PROVENANCE.md"), text)

