"""The TPC physics ablation scripts (issue 15).

scripts/tpc_network_ablation.py: each row's command sets exactly its physics switches, and the
table reads the main job's figure6.json in the seed's unit (cosine distance = 1 + loss).
scripts/tpc_physics_ablation.py: row names map to the simulator's switches and elastic scale.
"""

import json
import os

import pytest

from conftest import REPO_ROOT, load_config, load_module

ablation = load_module("scripts/tpc_network_ablation.py")
nml_ablation = load_module("scripts/tpc_physics_ablation.py")


def _overrides(cmd):
  return dict(a[len("--config."):].split("=", 1) for a in cmd if a.startswith("--config."))


@pytest.mark.parametrize("row", list(ablation.ROWS))
def test_row_command_sets_exactly_its_switches(row):
  cmd = ablation.row_command(row, "/tmp/w", "cpu_hour")
  assert "--config=configs/tpc.py:cpu_hour" in cmd and "--workdir=/tmp/w" in cmd
  flags = _overrides(cmd)
  on = {k.rsplit(".", 1)[1] for k, v in flags.items() if v == "True"}
  assert on == set(ablation.ROWS[row])
  assert len(flags) == len(ablation.SWITCHES) + 1  # Every switch set, none left to the default.
  assert flags["data.sim_physics.elastic_scale"] == "1.0"
  cmd = ablation.row_command(f"{row}:elastic=2", "/tmp/w")
  assert _overrides(cmd)["data.sim_physics.elastic_scale"] == "2.0"
  with pytest.raises(ValueError, match="NAME:elastic=S"):
    ablation.row_command(f"{row}:elastic=-1", "/tmp/w")


def test_all_row_is_todays_default_and_toy_row_the_toy_variant():
  default = load_config("configs/tpc.py", None).data.sim_physics
  toy = load_config("configs/tpc.py", "toy").data.sim_physics
  assert {s for s in ablation.SWITCHES if default[s]} == set(ablation.ROWS["all"])
  assert {s for s in ablation.SWITCHES if toy[s]} == set(ablation.ROWS["toy"])


def test_unknown_row_is_named():
  with pytest.raises(ValueError, match="unknown row 'deltas'"):
    ablation.row_command("deltas", "/tmp/w")


def test_scores_from_a_recorded_figure6():
  with open(os.path.join(REPO_ROOT, "results/tpc/cpu_hour_toy/figure6.json"), encoding="utf-8") as f:
    fig = json.load(f)
  scores = ablation.row_scores(fig)
  t = fig["table"]["test_40keV_200um"]
  s = scores["test_40keV_200um"]
  assert s["vmf"] == pytest.approx(1 + t["hetero_cut_0pct"])
  assert s["nml"] == pytest.approx(1 + t["nml"]) and s["nml_eff"] == t["nml_efficiency"]
  assert 0 < s["vmf"] < s["nml_truth"] < 1  # README: vMF −0.924 beats true head/tail −0.894.
  text = ablation.markdown({"toy": dict(label="toy", scores=scores)}, "t")
  assert "| toy (simulated) | 0.076 |" in text
  with pytest.raises(ValueError, match="label is not 'simulated'"):
    ablation.row_scores({**fig, "label": "data"})


def test_nml_rows_map_to_simulator_switches():
  assert nml_ablation.row_physics("baseline") == {}
  assert nml_ablation.row_physics("all") == dict(
      delta_rays=True, straggling=True, electron_spread=True)
  assert nml_ablation.row_physics("all:elastic=2") == dict(
      delta_rays=True, straggling=True, electron_spread=True, elastic_scale=2.0)
  assert nml_ablation.row_label("all:elastic=1.5").endswith("elastic σ × 1.5")
  for bad in ("everything", "all:elastic=0", "all:elastic=x", "all:inelastic=2"):
    with pytest.raises(ValueError, match="--rows"):
      nml_ablation.row_physics(bad)
