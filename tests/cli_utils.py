"""Helpers to run the real CLI (`python -m sigma_vae_jax.main`) on tiny settings."""

import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
