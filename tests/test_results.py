"""Committed run outputs (``results/<study>/<run>/``) still match today's configs, or say so.

Each run folder has a ``PROVENANCE.md`` (command, commit, machine, wall time, simulated) with
machine-readable lines, e.g.::

  config: configs/tpc.py:cpu_hour
  overrides: none
  status: stale
  stale_keys: model.trunk, task

``config``: today's config file and variant of the run; ``overrides``: ``none`` or
space-separated ``--config.a.b=VALUE`` applied in order; ``status``: ``current`` or ``stale``;
``stale_keys``: ``none`` or, with ``status: stale``, the differing keys, comma-separated.

A folder with ``config.json`` (the run's ``config.to_json_best_effort()``) is compared with
today's config, key by key. A folder with ``ablation.json`` instead (``scripts/sbnd_ablation.py``)
is compared on what it records: the base variant's data sizes and seeds, and per row that the
variant still exists and has the recorded batch size. A folder with ``comparison.json``
(``scripts/kamland_compare.py``) records each row's whole config: each is compared with
today's config of ``config`` + the row's variant + the overrides, its keys named
``ROW:key``. ``status: current`` requires no
difference; ``status: stale`` requires ``stale_keys`` to be exactly the differing keys, so the
mark cannot go stale silently.
"""

from __future__ import annotations

import ast
import json
import os
import re
from typing import Any

import ml_collections
import pytest

from conftest import REPO_ROOT, load_config
from recoil_jax import train

RESULTS = os.path.join(REPO_ROOT, "results")
FIELDS = ("config", "overrides", "status", "stale_keys")
PROSE = ("## Command", "## Commit", "## Machine", "## Wall time")
RUN_DIRS = sorted(
    os.path.relpath(os.path.join(RESULTS, study, run), REPO_ROOT)
    for study in (os.listdir(RESULTS) if os.path.isdir(RESULTS) else [])
    if os.path.isdir(os.path.join(RESULTS, study))
    for run in os.listdir(os.path.join(RESULTS, study))
    if os.path.isdir(os.path.join(RESULTS, study, run)))


def read_provenance(run_dir: str) -> tuple[dict[str, str], str]:
  """(machine-readable fields, full text) of ``run_dir/PROVENANCE.md``."""
  with open(os.path.join(REPO_ROOT, run_dir, "PROVENANCE.md"), encoding="utf-8") as f:
    text = f.read()
  fields = {}
  for key, value in re.findall(rf"^({'|'.join(FIELDS)}):[ \t]*(.*?)[ \t]*$", text, re.M):
    assert key not in fields, f"{run_dir}/PROVENANCE.md: '{key}:' given twice"
    fields[key] = value
  missing = [k for k in FIELDS if k not in fields]
  assert not missing, f"{run_dir}/PROVENANCE.md: no line for {missing}"
  return fields, text


def _none_or_list(value: str) -> list[str]:
  return [] if value.strip().lower() in ("", "none") else value.split()


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
  """``--config.a.b=VALUE`` as the launcher's flags do: VALUE parsed as a Python literal."""
  match = re.fullmatch(r"--config\.([\w.]+)=(.*)", override)
  assert match, f"override {override!r}: expected --config.KEY=VALUE"
  *parents, leaf = match.group(1).split(".")
  node = config
  for name in parents:
    node = node[name]
  old = node[leaf]
  text = match.group(2)
  if isinstance(old, bool):
    value = {"true": True, "false": False}[text.lower()]
  elif isinstance(old, str):
    value = text
  else:
    value = ast.literal_eval(text)
  node[leaf] = value


def todays_config(fields: dict[str, str], extra_variant: str = "") -> ml_collections.ConfigDict:
  """Today's config of ``config: PATH[:VARIANT]`` (+ ``extra_variant``) with the overrides."""
  path, _, variant = fields["config"].partition(":")
  names = [n for n in (variant, extra_variant) if n]
  config = load_config(path, "+".join(names) or None)
  for override in _none_or_list(fields["overrides"]):
    apply_override(config, override)
  return config


def flatten(tree: Any) -> dict[str, Any]:
  """Dotted keys of a config JSON dict (the trainer's own flattening)."""
  return train.flatten_config(tree)


def differing_keys(recorded: dict[str, Any], today: dict[str, Any]) -> list[str]:
  missing = object()
  return sorted(k for k in set(recorded) | set(today)
                if recorded.get(k, missing) != today.get(k, missing))


def config_json_diff(run_dir: str, fields: dict[str, str]) -> list[str]:
  """Keys where ``run_dir/config.json`` and today's config (as JSON) differ."""
  with open(os.path.join(REPO_ROOT, run_dir, "config.json"), encoding="utf-8") as f:
    recorded = json.load(f)
  today = json.loads(todays_config(fields).to_json_best_effort())
  return differing_keys(flatten(recorded), flatten(today))


# ablation.json "setup" entries -> config keys of the base variant.
ABLATION_SETUP_KEYS = {"height": "data.height", "width": "data.width",
                       "num_train": "data.num_train", "num_validation": "data.num_validation",
                       "num_test": "data.num_test", "data_seed": "data.seed", "seed": "seed"}


def ablation_diff(run_dir: str, fields: dict[str, str]) -> list[str]:
  """Keys where ``run_dir/ablation.json`` and today's configs of its rows differ.

  Setup keys are named as config keys (``data.height``); a row's batch size as
  ``VARIANT:train.global_batch_size``; a variant that no longer exists as ``VARIANT``.
  """
  with open(os.path.join(REPO_ROOT, run_dir, "ablation.json"), encoding="utf-8") as f:
    ablation = json.load(f)
  setup = ablation["setup"]
  base = setup.get("base_variant", "")
  assert not _none_or_list(fields["overrides"]), "ablation runs take their sizes from setup"
  recorded, today = {}, {}
  config = flatten(json.loads(todays_config(fields, base).to_json_best_effort()))
  for name, key in ABLATION_SETUP_KEYS.items():
    recorded[key] = setup[name]
    today[key] = config.get(key, "<no such key>")
  assert ablation["rows"], f"{run_dir}/ablation.json has no rows"
  for row in ablation["rows"]:
    variant = row["variant"]
    assert not os.path.isabs(row["workdir"]), f"{run_dir}: machine-specific {row['workdir']!r}"
    try:
      config = todays_config(fields, "+".join(
          n for n in (base, "" if variant == "baseline" else variant) if n))
    except ValueError:  # Unknown variant.
      recorded[variant], today[variant] = "exists", "<unknown variant>"
      continue
    key = f"{variant}:train.global_batch_size"
    recorded[key], today[key] = row["batch"], config.train.global_batch_size
  return differing_keys(recorded, today)


def comparison_diff(run_dir: str, fields: dict[str, str]) -> list[str]:
  """``ROW:key`` where a row's config in ``run_dir/comparison.json`` differs from today's
  (``config`` + the row's ``variant`` + the overrides); ``ROW`` alone if the variant is gone."""
  with open(os.path.join(REPO_ROOT, run_dir, "comparison.json"), encoding="utf-8") as f:
    comparison = json.load(f)
  assert comparison["rows"], f"{run_dir}/comparison.json has no rows"
  diff = []
  for row in comparison["rows"]:
    assert not os.path.isabs(row["workdir"]), f"{run_dir}: machine-specific {row['workdir']!r}"
    try:
      config = todays_config(fields, row["variant"])
    except ValueError:  # Unknown variant.
      diff.append(row["name"])
      continue
    today = flatten(json.loads(config.to_json_best_effort()))
    diff += [f"{row['name']}:{k}" for k in differing_keys(flatten(row["config"]), today)]
  return sorted(diff)


RECORDS = ("config.json", "ablation.json", "comparison.json")


def test_results_folders_exist():
  assert RUN_DIRS, f"no run folders under {RESULTS}"


@pytest.mark.parametrize("run_dir", RUN_DIRS)
def test_provenance_is_complete(run_dir):
  fields, text = read_provenance(run_dir)
  for heading in PROSE:
    assert re.search(rf"^{re.escape(heading)}\b", text, re.M), f"{run_dir}: no {heading!r}"
  assert "simulated" in text.lower(), f"{run_dir}/PROVENANCE.md must say the data is simulated"
  assert fields["status"] in ("current", "stale"), fields["status"]
  path = fields["config"].partition(":")[0]
  assert os.path.isfile(os.path.join(REPO_ROOT, path)), f"{run_dir}: no config file {path}"
  assert any(os.path.exists(os.path.join(REPO_ROOT, run_dir, n))
             for n in RECORDS), f"{run_dir}: nothing to check"


@pytest.mark.parametrize("run_dir", RUN_DIRS)
def test_recorded_config_matches_todays_or_is_marked_stale(run_dir):
  fields, _ = read_provenance(run_dir)
  if os.path.exists(os.path.join(REPO_ROOT, run_dir, "config.json")):
    diff = config_json_diff(run_dir, fields)
  elif os.path.exists(os.path.join(REPO_ROOT, run_dir, "comparison.json")):
    diff = comparison_diff(run_dir, fields)
  else:
    diff = ablation_diff(run_dir, fields)
  listed = sorted(k.strip() for k in fields["stale_keys"].split(",")
                  if k.strip() and k.strip().lower() != "none")
  if fields["status"] == "current":
    assert not diff, (f"{run_dir}: today's config differs from the recorded one in {diff}; "
                      "mark the folder 'status: stale' with 'stale_keys: "
                      f"{', '.join(diff)}' in PROVENANCE.md, or rerun it")
    assert not listed, f"{run_dir}: status current but stale_keys {listed}"
  else:
    assert diff, f"{run_dir}: marked stale but today's config equals the recorded one"
    assert listed == diff, (f"{run_dir}: PROVENANCE.md lists stale keys {listed}, the "
                            f"differing keys are {diff}")


def test_override_parsing():
  config = ml_collections.ConfigDict(dict(train=dict(num_epochs=4, progress_bar=True),
                                          model=dict(head="vmf", caps=(1, 2))))
  for override in ("--config.train.num_epochs=2", "--config.train.progress_bar=False",
                   "--config.model.head=kent", "--config.model.caps=(3, 4)"):
    apply_override(config, override)
  assert config.train.num_epochs == 2 and config.train.progress_bar is False
  assert config.model.head == "kent" and tuple(config.model.caps) == (3, 4)


def test_stale_check_detects_a_change(tmp_path):
  """Negative control: a run folder whose config.json differs in one more key fails."""
  run_dir = next(d for d in RUN_DIRS if os.path.exists(os.path.join(REPO_ROOT, d, "config.json")))
  fields, _ = read_provenance(run_dir)
  with open(os.path.join(REPO_ROOT, run_dir, "config.json"), encoding="utf-8") as f:
    recorded = json.load(f)
  recorded["train"]["num_epochs"] += 1
  fake = tmp_path / "run"
  fake.mkdir()
  (fake / "config.json").write_text(json.dumps(recorded), encoding="utf-8")
  diff = config_json_diff(str(fake), fields)  # (an absolute path: os.path.join keeps it)
  listed = {k.strip() for k in fields["stale_keys"].split(",") if k.strip() not in ("", "none")}
  assert set(diff) == listed | {"train.num_epochs"}


def test_comparison_check_detects_a_change(tmp_path):
  """Negative control for comparison.json folders: a row whose config differs in one key."""
  config = todays_config({"config": "configs/kamland.py", "overrides": "none"}, "planar")
  recorded = json.loads(config.to_json_best_effort())
  fields = {"config": "configs/kamland.py", "overrides": "none"}
  row = {"name": "planar", "variant": "planar", "config": recorded, "workdir": "../x"}
  fake = tmp_path / "cmp"
  fake.mkdir()
  (fake / "comparison.json").write_text(json.dumps({"rows": [row]}), encoding="utf-8")
  assert comparison_diff(str(fake), fields) == []
  recorded["train"]["num_epochs"] += 1
  row["variant"] = "planar"
  (fake / "comparison.json").write_text(json.dumps({"rows": [row, dict(
      row, name="gone", variant="no_such_variant")]}), encoding="utf-8")
  assert comparison_diff(str(fake), fields) == ["gone", "planar:train.num_epochs"]
