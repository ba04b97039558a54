"""Importing the package changes nothing in the host process's environment; the
command-line entry points set TensorFlow's logging defaults themselves, before
TensorFlow is imported."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TF_VARIABLES = ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")


def _clean_env():
  env = {k: v for k, v in os.environ.items() if k not in TF_VARIABLES}
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


def test_importing_the_package_and_its_losses_leaves_os_environ_unchanged():
  # JAX itself sets TF_CPP_MIN_LOG_LEVEL and TPU_SKIP_MDS_QUERY when it is imported
  # (not ours to change): the package alone must change nothing, and importing the
  # losses must change nothing beyond what importing JAX does.
  code = ("import json, os\n"
          "def changed(before):\n"
          "  after = dict(os.environ)\n"
          "  return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))\n"
          "before = dict(os.environ)\n"
          "import sigma_vae_jax\n"
          "package = changed(before)\n"
          "import jax, chex, numpy\n"
          "before = dict(os.environ)\n"
          "import sigma_vae_jax.losses\n"
          "import sigma_vae_jax.likelihoods\n"
          "print(json.dumps([package, changed(before), os.environ.get('TF_ENABLE_ONEDNN_OPTS')]))\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_clean_env(),
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert json.loads(result.stdout.strip().splitlines()[-1]) == [[], [], None]


# Stops the process at the moment anything imports TensorFlow and prints the two
# variables as they are then (TensorFlow reads them on import).
_DRIVER = r"""
import importlib.abc, os, runpy, sys
class StopAtTensorFlow(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name == "tensorflow":
      print("AT_TF_IMPORT", os.environ.get("TF_CPP_MIN_LOG_LEVEL"),
            os.environ.get("TF_ENABLE_ONEDNN_OPTS"), flush=True)
      os._exit(0)
    return None
sys.meta_path.insert(0, StopAtTensorFlow())
target, *argv = sys.argv[1:]
sys.argv = [target] + argv
if target.endswith(".py"):
  runpy.run_path(target, run_name="__main__")
else:
  runpy.run_module(target, run_name="__main__", alter_sys=True)
print("NEVER_IMPORTED_TF", flush=True)
"""

# The scripts on `sweep_cli.run_main` share one structure: two of them stand for all.
ENTRY_POINTS = [
    ["sigma_vae_jax.main", "--config=configs/default.py", "--workdir={tmp}/run"],
    ["sigma_vae_jax.data", "synthetic_shapes", "--data_dir={tmp}/data"],
    ["scripts/benchmark.py"],
    ["scripts/compare_decoders.py", "--output_dir={tmp}/out"],
    ["scripts/beta_sweep.py", "--output_dir={tmp}/out"],
    ["scripts/evaluate_video.py", "--workdir={tmp}/workdir"],
]


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda e: e[0])
def test_entry_points_set_tensorflow_logging_defaults_before_importing_it(entry, tmp_path):
  os.makedirs(tmp_path / "workdir")
  (tmp_path / "workdir" / "config.json").write_text("{}")  # evaluate_video checks it first
  args = [a.format(tmp=tmp_path) for a in entry]
  result = subprocess.run([sys.executable, "-c", _DRIVER] + args, cwd=ROOT,
                          env=_clean_env(), capture_output=True, text=True, timeout=240)
  lines = [l for l in result.stdout.splitlines() if l.startswith("AT_TF_IMPORT")]
  assert lines == ["AT_TF_IMPORT 1 0"], (result.stdout[-2000:], result.stderr[-2000:])
  # A value the user set first wins.
  env = dict(_clean_env(), TF_CPP_MIN_LOG_LEVEL="3")
  if entry[0] == "sigma_vae_jax.main":
    result = subprocess.run([sys.executable, "-c", _DRIVER] + args, cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=240)
    assert "AT_TF_IMPORT 3 0" in result.stdout, result.stderr[-2000:]
