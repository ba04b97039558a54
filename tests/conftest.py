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
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pytest


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory):
  """A TFDS data_dir with the built-in synthetic_shapes dataset prepared (~3 s)."""
  from sigma_vae_jax.data import input_pipeline
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  input_pipeline.get_data_source({"name": "synthetic_shapes", "data_dir": data_dir})
  return data_dir
