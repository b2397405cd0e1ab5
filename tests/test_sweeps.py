"""The provenance helpers every table-publishing script shares (``recoil_jax.sweeps``)."""

import os
import subprocess

import pytest

from recoil_jax import sweeps
import test_results


def test_write_provenance_is_read_back_by_the_results_check(tmp_path):
  out = tmp_path / "published"
  out.mkdir()
  path = sweeps.write_provenance(
      str(out), what="**All numbers in this folder are simulated** (a test).",
      config="configs/sbnd.py:smoke", overrides="--config.seed=3",
      command="python scripts/x.py --quick", repo_root=str(tmp_path), wall_time="1.0 min")
  assert path == os.path.join(str(out), "PROVENANCE.md")
  fields, text = test_results.read_provenance(str(out))
  assert fields == {"config": "configs/sbnd.py:smoke", "overrides": "--config.seed=3",
                    "status": "current", "stale_keys": "none"}
  assert "simulated" in text and "python scripts/x.py --quick" in text
  assert "not recorded (no git checkout)" in text  # tmp_path is not a repository.
  assert not [n for n in os.listdir(out) if n != "PROVENANCE.md"]  # No temporary left.


def test_git_commit_marks_uncommitted_changes(tmp_path):
  run = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)
  run("init", "-q")
  (tmp_path / "f.txt").write_text("a")
  run("add", "f.txt")
  run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
  clean = sweeps.git_commit(str(tmp_path))
  assert len(clean) >= 7 and "uncommitted" not in clean
  (tmp_path / "f.txt").write_text("b")
  assert sweeps.git_commit(str(tmp_path)) == clean + " (with uncommitted changes)"


def test_selected_names_and_prepare_workdir(tmp_path):
  assert sweeps.selected_names(" a, c ,", ("a", "b", "c"), "row") == ["a", "c"]
  with pytest.raises(ValueError, match=r"unknown row\(s\) \['d'\]; known: \['a', 'b'\]"):
    sweeps.selected_names("a,d", ("a", "b"), "row")
  with pytest.raises(ValueError, match="unknown variant"):
    sweeps.selected_names(" , ", ("a",), "variant")
  work, data = sweeps.prepare_workdir(str(tmp_path / "w"), "")
  assert os.path.isdir(work) and data == os.path.join(work, "tfds")
  assert sweeps.prepare_workdir(str(tmp_path / "w"), "/d")[1] == "/d"
