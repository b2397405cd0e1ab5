"""The colab notebooks: committed without outputs, and each runs end to end on CPU.

Static checks (every notebook, default suite): valid nbformat, no stored outputs or
execution counts, every code cell plain Python. Execution (``slow``: a fresh kernel per
notebook through nbclient, 20–60 s each on 2 cores): no error output, and the study's own
tables, figures and files appear.
"""

from __future__ import annotations

import glob
import json
import os
import sys

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from conftest import REPO_ROOT

COLABS_DIR = os.path.join(REPO_ROOT, "colabs")
NOTEBOOKS = sorted(glob.glob(os.path.join(COLABS_DIR, "*.ipynb")))


def _read(path: str) -> nbformat.NotebookNode:
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  return nb


def _run(name: str, tmp_path, monkeypatch) -> tuple[str, list, str, object]:
  """Executes ``colabs/<name>.ipynb``; returns (stream text, images, markdown, workdir)."""
  base = tmp_path / "colab"
  # The kernel inherits this environment ("python" in the kernelspec is sys.executable).
  monkeypatch.setenv("RECOIL_JAX_ROOT", REPO_ROOT)
  monkeypatch.setenv("RECOIL_JAX_COLAB_DIR", str(base))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep
                     + os.environ.get("PATH", ""))
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  nb = _read(os.path.join(COLABS_DIR, f"{name}.ipynb"))
  client = NotebookClient(nb, timeout=900, kernel_name="python3",
                          resources={"metadata": {"path": COLABS_DIR}})
  client.execute()  # Raises CellExecutionError on the first failing cell.
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.execution_count is not None for c in code)
  outputs = [o for c in code for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "simulated" in text
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  markdown = "".join(o["data"].get("text/markdown", "") for o in outputs if "data" in o)
  return text, images, markdown, base / "workdir"


def test_every_study_has_a_notebook():
  names = {os.path.splitext(os.path.basename(p))[0] for p in NOTEBOOKS}
  assert {"tpc", "sbnd", "kamland", "cygno", "newsdm"} <= names, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_committed_notebook_has_no_outputs(path):
  code = [c for c in _read(path).cells if c.cell_type == "code"]
  assert code
  for i, cell in enumerate(code):
    assert cell.outputs == [], f"code cell {i} has stored outputs"
    assert cell.execution_count is None, f"code cell {i} has an execution count"
    compile(cell.source, f"<cell {i}>", "exec")  # Plain Python, no bare magics.


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_tpc_notebook_runs(tmp_path, monkeypatch):
  text, images, _, workdir = _run("tpc", tmp_path, monkeypatch)
  assert "The loaded weights reproduce the run's saved test predictions." in text
  assert "| test_40keV_200um |" in text  # figure6.md was printed.
  # Raw tracks, voxelised tracks, Figure 6 and calibration.
  assert len(images) >= 4, f"{len(images)} images"
  for name in ("figure6.png", "calibration.png", "figure6.md", "figure6.json",
               "final_metrics.json", "config.json"):
    assert (workdir / name).is_file(), name
  assert any(d.isdigit() for d in os.listdir(workdir / "best"))
  final = json.loads((workdir / "final_metrics.json").read_text())
  assert final["metrics"]["analysis"]["data"] == "simulated"
  for split in ("test_40keV_200um", "test_50keV_443um"):
    assert np.isfinite(final["metrics"][split]["loss"])


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_sbnd_notebook_runs(tmp_path, monkeypatch):
  text, images, _, _ = _run("sbnd", tmp_path, monkeypatch)
  assert "The loaded weights reproduce the run's test metrics." in text
  assert len(images) >= 4, f"{len(images)} images"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kamland_notebook_runs(tmp_path, monkeypatch):
  text, images, _, workdir = _run("kamland", tmp_path, monkeypatch)
  assert "¹⁰C rejection at 90% 0νββ acceptance" in text  # kamland_results.md was printed.
  assert len(images) >= 4, f"{len(images)} images"  # Hit maps, Cherenkov map, ROC, scores.
  res = json.loads((workdir / "kamland_results.json").read_text())
  assert res["data"] == "simulated"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_cygno_notebook_runs(tmp_path, monkeypatch):
  text, images, markdown, workdir = _run("cygno", tmp_path, monkeypatch)
  assert "clusters (simulated)" in text
  assert "| DNN 3×10 (All) |" in text and "99.54" in text  # The rejection table.
  assert len(images) >= 3, f"{len(images)} images"  # Frame + truth, clusters, curves.
  assert "thin_track" in markdown  # The variables table.
  final = json.loads((workdir / "final_metrics.json").read_text())
  assert "test" in final["metrics"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_newsdm_notebook_runs(tmp_path, monkeypatch):
  text, images, _, workdir = _run("newsdm", tmp_path, monkeypatch)
  assert "not isolated" in text  # The cleaning cuts were counted.
  assert "# NEWSdm rejection (simulated)" in text  # newsdm_rejection.md was printed.
  # Polarisation images, barycentre shift, rejection curve, rejection_fog.png, scores.png.
  assert len(images) >= 5, f"{len(images)} images"
  for name in ("newsdm_analysis.json", "final_metrics.json", "scores_test_fog.npz"):
    assert (workdir / name).is_file(), name
