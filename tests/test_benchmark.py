"""scripts/benchmark.py runs end to end on tiny shapes and prints one JSON line."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("images_per_sec", "step_ms", "eval_images_per_sec", "compile_s", "devices",
        "backend", "config")


def test_benchmark_prints_one_json_line_with_the_expected_keys():
  command = [
      sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"),
      "--config=" + os.path.join(ROOT, "configs", "default.py"),
      "--image_shape=8,8,3", "--config.batch_size=8", "--config.model.base_channels=4",
      "--config.model.latent_dim=4", "--steps=2", "--eval_steps=2", "--warmup=1",
      "--device_train_steps=2", "--num_images=32", "--measure_matmul_peak",
      "--matmul_size=64", "--matmul_repeats=2"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env,
                        cwd=ROOT)
  assert done.returncode == 0, done.stderr[-3000:]
  lines = [line for line in done.stdout.splitlines() if line.strip()]
  assert len(lines) == 1, done.stdout
  result = json.loads(lines[0])
  for key in KEYS:
    assert key in result, key
  assert result["images_per_sec"] > 0 and result["step_ms"] > 0
  assert result["eval_images_per_sec"] > 0 and result["device_train_images_per_sec"] > 0
  assert result["device_train_seconds"] > 0
  assert result["device_train_epochs"] == 2 * 8 / 32  # steps x batch / images
  # conv_impl=auto picks the fast kernels on CPU.
  assert result["model"] == "conv_vae"
  assert result["model_algorithms"] == {
      "fast_encoder": True, "fast_upsample": True, "fast_output": True}
  assert result["backend"] == "cpu" and result["devices"] >= 1
  assert result["config"]["batch_size"] == 8
  assert result["image_shape"] == [8, 8, 3]
  assert 0 < result["fraction_of_matmul_peak"]
  assert result["flops_per_step"] > 0
