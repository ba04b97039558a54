"""Helpers for tests that train: run the real CLI (`python -m sigma_vae_jax.main`) on
tiny settings, and compare runs (metrics rows, whole train states)."""

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def xla_flags_with_devices(devices: int, xla_flags: str = "") -> str:
  """`xla_flags` (e.g. the environment's XLA_FLAGS) with `devices` simulated CPU
  devices: any device count there is replaced, the other flags (the suite's compile
  options, tests/conftest.py) kept. As scripts/launch_local.py's `process_env`."""
  kept = [f for f in xla_flags.split() if not f.startswith(DEVICE_COUNT_FLAG)]
  return " ".join(kept + [f"{DEVICE_COUNT_FLAG}={devices}"])

TINY = {
    "model.latent_dim": 4, "model.base_channels": 8, "batch_size": 16,
    "num_train_steps": 12, "log_every_steps": 2, "eval_every_steps": 6,
    "checkpoint_every_steps": 4, "num_image_samples": 8,
}


def tiny_config(data_dir, **overrides):
  """The in-process ConfigDict equal to what `cli_args` passes on the command line."""
  sys.path.insert(0, ROOT)
  from configs import default
  config = default.get_config()
  for key, value in {**TINY, "dataset.data_dir": data_dir, **overrides}.items():
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def cli_args(workdir, data_dir, **overrides):
  flags = {**TINY, "dataset.data_dir": data_dir, **overrides}
  return ([sys.executable, "-m", "sigma_vae_jax.main", "--config=configs/default.py",
           f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in flags.items()])


def run_cli(workdir, data_dir, timeout=300, **overrides):
  return subprocess.run(cli_args(workdir, data_dir, **overrides), cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)


def start_cli(workdir, data_dir, **overrides):
  return subprocess.Popen(cli_args(workdir, data_dir, **overrides), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_checkpoint(workdir, step, process, timeout=240):
  """Blocks until WORKDIR/checkpoints/<step> is finalised (orbax renames it last)."""
  path = os.path.join(workdir, "checkpoints", str(step))
  deadline = time.time() + timeout
  while not os.path.isdir(path):
    if process.poll() is not None:
      raise AssertionError(f"run ended before checkpoint {step}:\n{process.stdout.read()}")
    if time.time() > deadline:
      process.kill()
      raise AssertionError(f"no checkpoint {step} after {timeout}s")
    time.sleep(0.02)


def stop(process, sig, timeout=120):
  process.send_signal(sig)
  out, _ = process.communicate(timeout=timeout)
  return process.returncode, out


def metrics_rows(workdir):
  """WORKDIR/metrics.jsonl rows without `steps_per_sec` (wall-clock, the one field
  two identical runs may differ in)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  for row in rows:
    row.pop("steps_per_sec", None)
  return rows


def assert_same_state(state_a, state_b):
  """Bit-identical pytrees: same structure and every leaf equal (e.g. whole train
  states: params, EMA, optimizer moments, sigma average, rng, counters)."""
  import jax
  import numpy as np
  leaves_a, treedef_a = jax.tree_util.tree_flatten(jax.device_get(state_a))
  leaves_b, treedef_b = jax.tree_util.tree_flatten(jax.device_get(state_b))
  assert treedef_a == treedef_b
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(a, b)
