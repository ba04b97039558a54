"""The Colab notebook (notebooks/sigma_vae_colab.ipynb): committed clean, its install
cell picks the right source, and it executes end to end, from a folder outside the
repository, with a few training steps (papermill-style override of its `parameters`
cell) in a kernel of this Python that imports this checkout."""

import json
import os
import sys

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "sigma_vae_colab.ipynb")

# Enough to run every cell; a few training steps of a small network.
QUICK_PARAMETERS = """\
NUM_STEPS = 6
BASE_CHANNELS = 8
BATCH_SIZE = 32
OWN_MODEL_STEPS = 3
"""
CELL_TIMEOUT_S = 300
# Cells whose output must include a figure.
FIGURE_CELLS = ("samples", "sigma-plot")


def _read():
  return nbformat.read(NOTEBOOK, as_version=4)


def _cell(nb, cell_id):
  matches = [c for c in nb.cells if c.get("id") == cell_id]
  assert len(matches) == 1, f"expected one cell with id {cell_id!r}"
  return matches[0]


def test_committed_notebook_is_clean():
  with open(NOTEBOOK) as f:
    raw = json.load(f)
  assert (raw["nbformat"], raw["nbformat_minor"]) >= (4, 5)
  ids = [c.get("id") for c in raw["cells"]]
  assert all(ids) and len(set(ids)) == len(ids), f"cell ids missing or repeated: {ids}"
  nbformat.validate(nbformat.from_dict(raw))
  for cell in raw["cells"]:
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [] and cell["execution_count"] is None, (
          f"cell {cell['id']!r} has outputs: strip them before committing")
  metadata = json.dumps(raw["metadata"])
  assert "accelerator" not in raw["metadata"] and "gpu" not in metadata.lower()
  assert [c["id"] for c in raw["cells"]
          if "parameters" in c.get("metadata", {}).get("tags", [])] == ["parameters"]
  source = "\n".join("".join(c["source"]) for c in raw["cells"])
  assert "from configs" not in source and "import configs" not in source


def _exec_install_cell(monkeypatch, cwd, repo_url=""):
  """Runs the install cell's code here with sigma_vae_jax reported missing and pip
  recorded instead of run; returns the pip commands."""
  source = _cell(_read(), "install").source
  assert 'REPO_URL = ""' in source
  source = source.replace('REPO_URL = ""', f"REPO_URL = {repo_url!r}", 1)
  import importlib.util
  import subprocess
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
      None if name == "sigma_vae_jax" else real_find_spec(name, *a)))
  calls = []
  monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: (
      calls.append(cmd) or subprocess.CompletedProcess(cmd, 0, "", "")))
  monkeypatch.setattr(sys, "path", list(sys.path))
  monkeypatch.chdir(cwd)
  exec(compile(source, "install-cell", "exec"), {"__name__": "__main__"})
  return calls


def test_install_cell_inside_a_clone(monkeypatch):
  calls = _exec_install_cell(monkeypatch, os.path.join(ROOT, "notebooks"))
  assert calls == [[sys.executable, "-m", "pip", "install", "-q", "-e", ROOT + "[train]"]]


def test_install_cell_elsewhere(monkeypatch, tmp_path):
  calls = _exec_install_cell(monkeypatch, tmp_path, repo_url="https://example.org/s.git")
  assert calls == [[sys.executable, "-m", "pip", "install", "-q",
                    "sigma_vae_jax[train] @ git+https://example.org/s.git"]]
  with pytest.raises(RuntimeError, match="REPO_URL is empty"):
    _exec_install_cell(monkeypatch, tmp_path)


def test_notebook_executes(tmp_path, monkeypatch, shapes_data_dir):
  nbclient = pytest.importorskip("nbclient")
  kernelspec = pytest.importorskip("ipykernel.kernelspec")
  from jupyter_client.kernelspec import KernelSpecManager
  from jupyter_client.manager import KernelManager

  nb = _read()
  position = nb.cells.index(_cell(nb, "parameters")) + 1
  nb.cells.insert(position, nbformat.v4.new_code_cell(QUICK_PARAMETERS,
                                                      id="test-parameters"))
  # A kernel of this Python (written to a temp kernel folder, whatever kernels the
  # machine has installed) that imports this checkout: the install cell has nothing
  # to do, so nothing is downloaded.
  kernels = tmp_path / "kernels"
  kernelspec.write_kernel_spec(kernels / "sigma-vae-test")
  km = KernelManager(kernel_name="sigma-vae-test",
                     kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  monkeypatch.setenv("TFDS_DATA_DIR", shapes_data_dir)
  monkeypatch.delenv("MPLBACKEND", raising=False)
  cwd = tmp_path / "elsewhere"
  cwd.mkdir()
  client = nbclient.NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S,
                                   resources={"metadata": {"path": str(cwd)}})
  client.execute()  # raises CellExecutionError on the first failing cell

  for cell in nb.cells:
    for output in cell.get("outputs", []):
      assert output.output_type != "error", f"cell {cell.id!r}: {output}"
  install_text = "".join(o.get("text", "") for o in _cell(nb, "install").outputs)
  assert f"from {ROOT}" in install_text and "pip install" not in install_text
  for cell_id in FIGURE_CELLS:
    assert any("image/png" in o.get("data", {}) for o in _cell(nb, cell_id).outputs), (
        f"cell {cell_id!r} shows no figure")
  table = "".join(o["data"].get("text/markdown", "") for o in _cell(nb, "table").outputs
                  if "data" in o)
  for label in ("unit Gaussian", "β-VAE", "optimal σ"):
    assert label in table
  own_text = "".join(o.get("text", "") for o in _cell(nb, "own-model").outputs)
  assert "step    3" in own_text and "σ*" in own_text
  for decoder in ("gaussian", "beta", "optimal_sigma"):
    assert (cwd / "sigma_vae_runs" / decoder / "metrics.jsonl").exists()
  assert not os.path.exists(os.path.join(ROOT, "notebooks", "sigma_vae_runs"))
