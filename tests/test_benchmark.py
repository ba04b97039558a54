"""scripts/benchmark.py runs end to end on tiny shapes and prints one JSON line, for
the conv VAE and for the hierarchical VAE and SVG-LP (tiny sizes of
tests/tiny_models.py, FLOPs from XLA's cost analysis)."""

import json
import os
import subprocess
import sys

import pytest

import tiny_models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("images_per_sec", "examples_per_sec", "step_ms", "eval_images_per_sec",
        "compile_s", "devices", "backend", "config", "flops_per_step", "flops_source")


def _run_benchmark(args):
  """Runs scripts/benchmark.py with `args`; returns its one JSON line as a dict."""
  command = [sys.executable, os.path.join(ROOT, "scripts", "benchmark.py")] + args
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env,
                        cwd=ROOT)
  assert done.returncode == 0, done.stderr[-3000:]
  lines = [line for line in done.stdout.splitlines() if line.strip()]
  assert len(lines) == 1, done.stdout
  result = json.loads(lines[0])
  for key in KEYS:
    assert key in result, key
  return result


def test_benchmark_prints_one_json_line_with_the_expected_keys():
  result = _run_benchmark([
      "--config=" + os.path.join(ROOT, "configs", "default.py"),
      "--image_shape=8,8,3", "--config.batch_size=8", "--config.model.base_channels=4",
      "--config.model.latent_dim=4", "--steps=2", "--eval_steps=2", "--warmup=1",
      "--device_train_steps=2", "--num_images=32", "--measure_matmul_peak",
      "--matmul_size=64", "--matmul_repeats=2"])
  assert result["images_per_sec"] > 0 and result["step_ms"] > 0
  assert result["examples_per_sec"] == result["images_per_sec"]
  assert "clips_per_sec" not in result
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
  assert result["flops_per_step"] > 0 and result["flops_source"] == "analytic"
  assert result["xla_flops_per_step"] > 0


def _tiny_model_flags(model_name):
  return [f"--config.model.{key}={value}"
          for key, value in tiny_models.TINY[model_name]["fields"].items()]


@pytest.mark.parametrize("config_name, model_name, expected_shape", [
    ("cifar10_hvae", "hvae", [8, 8, 3]),
    # Clips of n_past + n_future = 4 frames (the config's clip_length follows them).
    ("bair_svg", "svg_lp", [4, 8, 8, 3]),
])
def test_benchmark_runs_the_hvae_and_svg_lp_configs(config_name, model_name,
                                                     expected_shape):
  # The example shape comes from the config (image_size, and clip_length for clips),
  # not from --image_shape.
  result = _run_benchmark(
      ["--config=" + os.path.join(ROOT, "configs", f"{config_name}.py"),
       "--config.dataset.image_size=(8, 8)", "--config.batch_size=8"]
      + _tiny_model_flags(model_name)
      # --warmup=0: no untimed calls at all (a benchmark of a slow model may want none).
      + ["--steps=2", "--eval_steps=1", "--warmup=0", "--num_images=16",
         # The device-resident loop of an image model is the conv VAE test's; the
         # clip gather is the video model's own.
         "--device_train_steps=" + ("2" if model_name == "svg_lp" else "0"),
         "--measure_matmul_peak", "--matmul_size=64", "--matmul_repeats=2"])
  assert result["model"] == model_name
  assert result["image_shape"] == expected_shape
  assert result["step_ms"] > 0 and result["compile_s"] > 0
  assert result["train_temp_bytes"] > 0 and result["train_argument_bytes"] > 0
  # No analytic count for these models: XLA's count of the compiled step.
  assert result["flops_source"] == "xla_cost_analysis"
  assert result["flops_per_step"] == result["xla_flops_per_step"] > 0
  assert result["achieved_gflops"] > 0 and result["fraction_of_matmul_peak"] > 0
  if model_name == "svg_lp":  # a clip is one example of 4 frames
    assert result["frames_per_clip"] == 4
    assert result["clips_per_sec"] == result["examples_per_sec"] > 0
    assert result["images_per_sec"] == 4 * result["clips_per_sec"]
    assert result["eval_images_per_sec"] == 4 * result["eval_clips_per_sec"]
    assert result["device_train_images_per_sec"] == 4 * result["device_train_clips_per_sec"]
    assert result["device_train_epochs"] == 2 * 8 / 16
  else:
    assert result["images_per_sec"] == result["examples_per_sec"] > 0
    assert "clips_per_sec" not in result and "device_train_seconds" not in result
