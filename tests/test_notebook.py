"""The Colab notebook runs top to bottom on a CPU (tiny setting), with this venv's Python."""

import os
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "experiments", "colab.ipynb")


def _text(cell) -> str:
  parts = []
  for output in cell.get("outputs", []):
    if output.get("output_type") == "stream":
      parts.append(output.get("text", ""))
    elif "data" in output:
      parts.append(output["data"].get("text/plain", ""))
  return "".join(parts)


def test_notebook_is_valid_and_names_a_python_kernel():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  assert nb.metadata.kernelspec.name == "python3"
  assert not any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), \
      "commit the notebook without outputs"


def test_notebook_runs_top_to_bottom(monkeypatch, tmp_path):
  monkeypatch.setenv("MEGABYTE_NOTEBOOK_FAST", "1")
  monkeypatch.delenv("MPLBACKEND", raising=False)   # the kernel's inline backend draws PNGs
  monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": REPO}})
  client.execute()   # raises CellExecutionError, with the cell and its traceback, on failure
  outputs = [_text(cell) for cell in nb.cells if cell.cell_type == "code"]
  everything = "\n".join(outputs)
  # The kernel is this venv's interpreter (jupyter_client maps the spec's "python" to it).
  kernel_python = next(line.split(":", 1)[1].strip() for line in everything.splitlines()
                       if line.startswith("python:"))
  assert os.path.realpath(kernel_python) == os.path.realpath(sys.executable)
  assert "held-out:" in everything and "bits per byte by position in the patch" in everything
  assert "trained 12 steps" in everything
  # The loss plot and the structure plot were drawn (PNG outputs).
  images = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
            if "image/png" in o.get("data", {})]
  assert len(images) >= 2
