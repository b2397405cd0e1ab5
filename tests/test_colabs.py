"""The colab notebooks run end to end on CPU (executed with nbclient in a fresh kernel)."""

from __future__ import annotations

import json
import os
import sys

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from conftest import REPO_ROOT

COLABS_DIR = os.path.join(REPO_ROOT, "colabs")
TPC_NOTEBOOK = os.path.join(COLABS_DIR, "tpc.ipynb")


def _read(path: str) -> nbformat.NotebookNode:
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  return nb


def test_committed_notebook_has_no_outputs():
  nb = _read(TPC_NOTEBOOK)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code
  for i, cell in enumerate(code):
    assert cell.outputs == [], f"code cell {i} has stored outputs"
    assert cell.execution_count is None, f"code cell {i} has an execution count"
    compile(cell.source, f"<cell {i}>", "exec")  # Plain Python, no bare magics.


@pytest.mark.slow  # ~60 s: the default suite keeps every notebook's static checks.
@pytest.mark.timeout(1200)
def test_tpc_notebook_runs(tmp_path, monkeypatch):
  base = tmp_path / "colab"
  # The kernel inherits this environment ("python" in the kernelspec is sys.executable).
  monkeypatch.setenv("RECOIL_JAX_ROOT", REPO_ROOT)
  monkeypatch.setenv("RECOIL_JAX_COLAB_DIR", str(base))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep
                     + os.environ.get("PATH", ""))
  monkeypatch.delenv("XLA_FLAGS", raising=False)

  nb = _read(TPC_NOTEBOOK)
  client = NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": COLABS_DIR}})
  client.execute()  # Raises CellExecutionError on the first failing cell.

  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.execution_count is not None for c in code)
  outputs = [o for c in code for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "simulated" in text
  assert "The loaded weights reproduce the run's saved test predictions." in text
  assert "| test_40keV_200um |" in text  # figure6.md was printed.
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  # Raw tracks, voxelised tracks, Figure 6 and calibration.
  assert len(images) >= 4, f"{len(images)} images"

  workdir = base / "workdir"
  for name in ("figure6.png", "calibration.png", "figure6.md", "figure6.json",
               "final_metrics.json", "config.json"):
    assert (workdir / name).is_file(), name
  assert any(d.isdigit() for d in os.listdir(workdir / "best"))
  final = json.loads((workdir / "final_metrics.json").read_text())
  assert final["metrics"]["analysis"]["data"] == "simulated"
  for split in ("test_40keV_200um", "test_50keV_443um"):
    assert np.isfinite(final["metrics"][split]["loss"])
