"""colabs/newsdm.ipynb runs end to end on CPU (nbclient, fresh kernel), as tests/test_colabs.py."""

from __future__ import annotations

import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO_ROOT

COLABS_DIR = os.path.join(REPO_ROOT, "colabs")
NOTEBOOK = os.path.join(COLABS_DIR, "newsdm.ipynb")


def _read(path: str) -> nbformat.NotebookNode:
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  return nb


def test_committed_notebook_has_no_outputs():
  code = [c for c in _read(NOTEBOOK).cells if c.cell_type == "code"]
  assert code
  for i, cell in enumerate(code):
    assert cell.outputs == [], f"code cell {i} has stored outputs"
    assert cell.execution_count is None, f"code cell {i} has an execution count"
    compile(cell.source, f"<cell {i}>", "exec")  # Plain Python, no bare magics.


@pytest.mark.slow  # About a minute on 2 cores (kernel start, simulation, smoke training).
@pytest.mark.timeout(900)
def test_newsdm_notebook_runs(tmp_path, monkeypatch):
  base = tmp_path / "colab"
  # The kernel inherits this environment ("python" in the kernelspec is sys.executable).
  monkeypatch.setenv("RECOIL_JAX_ROOT", REPO_ROOT)
  monkeypatch.setenv("RECOIL_JAX_COLAB_DIR", str(base))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep
                     + os.environ.get("PATH", ""))
  monkeypatch.delenv("XLA_FLAGS", raising=False)

  nb = _read(NOTEBOOK)
  client = NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": COLABS_DIR}})
  client.execute()  # Raises CellExecutionError on the first failing cell.

  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.execution_count is not None for c in code)
  outputs = [o for c in code for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "simulated" in text
  assert "not isolated" in text  # The cleaning cuts were counted.
  assert "# NEWSdm rejection (simulated)" in text  # newsdm_rejection.md was printed.
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  # Polarisation images, barycentre shift, rejection curve, rejection_fog.png, scores.png.
  assert len(images) >= 5, f"{len(images)} images"
  workdir = base / "workdir"
  for name in ("newsdm_analysis.json", "final_metrics.json", "scores_test_fog.npz"):
    assert (workdir / name).is_file(), name
