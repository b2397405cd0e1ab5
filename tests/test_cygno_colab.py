"""colabs/cygno.ipynb runs end to end on CPU (executed with nbclient in a fresh kernel)."""

from __future__ import annotations

import json
import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO_ROOT

NOTEBOOK = os.path.join(REPO_ROOT, "colabs", "cygno.ipynb")


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


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_cygno_notebook_runs(tmp_path, monkeypatch):
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
                          resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
  client.execute()  # Raises CellExecutionError on the first failing cell.

  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.execution_count is not None for c in code)
  outputs = [o for c in code for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "simulated" in text and "clusters (simulated)" in text
  assert "| DNN 3×10 (All) |" in text and "99.54" in text  # The rejection table.
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) >= 3, f"{len(images)} images"  # Frame + truth, clusters, curves.
  markdown = "".join(o["data"].get("text/markdown", "") for o in outputs if "data" in o)
  assert "thin_track" in markdown  # The variables table.
  workdir = base / "workdir"
  final = json.loads((workdir / "final_metrics.json").read_text())
  assert "test" in final["metrics"]
