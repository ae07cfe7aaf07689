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


def _install_cell(source: str, cwd: str):
  """Runs the notebook's install cell with PACKAGE_SOURCE=`source` in `cwd`, as on a fresh
  runtime (megabyte_jax not importable) and with pip replaced by a recorder; returns the
  process, whose stdout holds the pip command lines."""
  import subprocess
  nb = nbformat.read(NOTEBOOK, as_version=4)
  cell = nb.cells[1].source.replace('PACKAGE_SOURCE = ""', f"PACKAGE_SOURCE = {source!r}")
  prelude = ("import importlib.util, subprocess, sys\n"
             "_find = importlib.util.find_spec\n"
             "importlib.util.find_spec = lambda n, *a: None if n == 'megabyte_jax' else "
             "_find(n, *a)\n"
             "subprocess.check_call = lambda cmd: print('PIP', ' '.join(cmd))\n")
  return subprocess.run([sys.executable, "-c", prelude + cell], cwd=cwd, capture_output=True,
                        text=True, timeout=120)


def test_notebook_install_cell_says_what_to_do_without_a_source(tmp_path):
  proc = _install_cell("", str(tmp_path))
  assert proc.returncode != 0 and "PIP" not in proc.stdout
  assert "NoPackageSource: megabyte-jax is not installed and PACKAGE_SOURCE is empty" in \
      proc.stderr


def test_notebook_install_cell_keeps_the_runtime_jax(tmp_path):
  import jax
  proc = _install_cell("https://example.org/megabyte-jax.git", str(tmp_path))
  assert proc.returncode == 0, proc.stderr
  pip = [line for line in proc.stdout.splitlines() if line.startswith("PIP")]
  assert len(pip) == 1 and "git+https://example.org/megabyte-jax.git" in pip[0]
  constraint = pip[0].split("--constraint ")[1].split()[0]
  with open(constraint, encoding="utf-8") as f:
    assert f"jax=={jax.__version__}" in f.read()
  proc = _install_cell("", REPO)   # a checkout around the notebook
  assert proc.returncode == 0 and REPO in proc.stdout
