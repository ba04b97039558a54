"""Shared test set-up: the repository root on sys.path (for `configs`), quiet TF, a
persistent JAX compilation cache."""

import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Many tests (and the CLI runs they start) compile the same tiny programs: JAX's
# persistent compilation cache (keyed by the program, so never stale) compiles each
# once per machine. Set before JAX is imported; subprocesses inherit it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "sigma_vae_jax_test_jit_cache"))
# Every program, however quick to compile: the suite's CLI runs and helper processes
# compile many of the same small ones (measured, cold cache, tests/test_scripts.py,
# test_main.py and test_entry_points.py: 165 s at the 0.5 s default, 130 s at 0).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The tests check what the programs compute, not how fast they run. XLA:CPU's LLVM
# passes at the default -O2 cost more compile time than they save on test-sized inputs:
# at -O1 without the expensive passes the suite's most compile-heavy tests take 115 s
# instead of 190 s (with the line above, the whole suite cold: 14.8 instead of 25
# minutes on one 2-core machine). XLA's HLO passes run as usual; only LLVM tunes the
# machine code less. The README's commands, scripts/benchmark.py and every user run
# keep the default. (-O0 compiles faster still but runs slower: the same tests took
# 133 s.) Helper processes that set XLA_FLAGS append to these.
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=1",
                  "--xla_llvm_disable_expensive_passes=true")
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = " ".join(
      [os.environ.get("XLA_FLAGS", ""), *TEST_XLA_FLAGS]).strip()

import pytest

# Test modules whose tests (with their module-scoped fixtures: trained models, CLI
# runs, subprocesses with simulated devices) take longest on a cold compilation cache,
# longest first. setup.cfg runs the suite with `--dist loadscope`: each module on one
# xdist worker (its module fixtures built once, not once per worker) in this order,
# so that the long modules start first and the two workers finish together instead
# of one waiting for the other's last long module.
SLOWEST_MODULES_FIRST = (
    "test_model_contract.py", "test_reliability.py", "test_scripts.py",
    "test_multihost.py", "test_train.py", "test_benchmark.py", "test_configs.py",
    "test_video_evaluation.py", "test_conv_vae.py", "test_eval_sigma.py",
    "test_hvae.py", "test_notebook.py", "test_progress_and_checkpoints.py",
    "test_evaluate.py", "test_main.py", "test_svg_lp.py", "test_console.py",
)


def pytest_collection_modifyitems(config, items):
  """The modules of SLOWEST_MODULES_FIRST first, in that order; then the others in
  their usual order (a stable sort: the order inside a module is kept)."""
  del config
  rank = {name: i for i, name in enumerate(SLOWEST_MODULES_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory):
  """A TFDS data_dir with the built-in synthetic_shapes dataset prepared (~3 s)."""
  from sigma_vae_jax.data import input_pipeline
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  input_pipeline.get_data_source({"name": "synthetic_shapes", "data_dir": data_dir})
  return data_dir
