r"""Training/eval throughput of the configured VAE on synthetic batches (no dataset).

  python scripts/benchmark.py --config=configs/default.py \
      --image_shape=28,28,3 --config.batch_size=128 [--measure_matmul_peak]
  python scripts/benchmark.py --config=configs/cifar10_hvae.py --measure_matmul_peak
  python scripts/benchmark.py --config=configs/bair_svg.py --measure_matmul_peak

Any model of `sigma_vae_jax.models` runs: image models on [B, H, W, C] batches,
video models (`dataset.as_clips`, e.g. configs/bair_svg.py) on clips
[B, T, H, W, C] (`--image_shape=T,H,W,C` overrides the config's clip shape).

Builds the configured model and decoder (`trainer.Trainer`, all devices in one data
mesh), compiles, warms up, then times `--steps` train steps and `--eval_steps` eval
steps one by one with `block_until_ready` (medians, robust on a shared machine). It
then runs a short training from the device-resident data path (`train_on_device` on
a replicated uint8 dataset of `--num_images` synthetic examples), i.e. steps/s
including batch gathering. Prints ONE JSON line on stdout, with at least
images_per_sec, step_ms, eval_images_per_sec, compile_s, devices, backend, config;
`train_temp_bytes` is the compiled train step's temporary memory (XLA's estimate).

Units: `step_ms` is milliseconds per optimizer step (median), `compile_s` seconds to
compile the train step, `*_per_sec` per second of wall time. An example is one
image for image models and one clip for video models: `examples_per_sec` counts
examples; `images_per_sec` counts images, i.e. clips x frames per clip (input
frames, `frames_per_clip`) for video models, which also report `clips_per_sec`
(likewise `eval_*` and `device_train_*`).

Whole epochs on an accelerator (10 epochs of SVHN: 73,257 images,
batch 128, 572 steps per epoch, one compiled call per epoch):

  python scripts/benchmark.py --config=configs/svhn.py --config.steps_per_call=572 \
      --num_images=73257 --device_train_steps=5720 --warmup=1 --steps=2 --eval_steps=2
  # -> device_train_seconds (after compilation), device_train_epochs

FLOPs (floating-point operations per optimizer step, whole global batch): for the
conv VAE, `flops_per_step` is the analytic count of the model's useful
multiply-adds x 2 (forward, plus both backward passes, minus the unneeded input
gradient of the first layer); it does not depend on how a layer is computed, so
it is the number to compare formulations by. `xla_flops_per_step` is what XLA's
cost analysis (`Compiled.cost_analysis()["flops"]`) of the compiled single train
step says (it counts the zeros of an lhs-dilated convolution, so it is larger for
model.conv_impl=xla); the other models have no hand count and their
`flops_per_step` is XLA's (`flops_source` says which). XLA counts a loop body
once, whatever its trip count, so the recurrent part of a model (SVG-LP's LSTMs,
an `nn.scan` over time) is counted for one time step only. SVG-LP's frame encoder
and decoder run outside the scan (on all frames at once) and are counted in full;
for configs/bair_svg.py the LSTMs' missing 10 of 11 steps are about 0.14 GFLOP of
the ~180 GFLOP per clip (under 0.1%).
`--measure_matmul_peak` times a square fp32 `jnp.dot` and reports the step's
achieved GFLOP/s (`flops_per_step` / step time) as a fraction of it.

`--config.model.dtype=bfloat16` benchmarks bfloat16 compute (meant for GPU/TPU; on
this project's 2-core CPU it ran as fast as float32 for the HVAE and SVG-LP, README
"Performance"). `--config.model.conv_impl=xla` benchmarks the conv VAE's
plain layers (`fast`: the CPU-tuned forms; `auto`: fast on CPU only).
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from sigma_vae_jax import cli  # pylint: disable=g-import-not-at-top
from sigma_vae_jax import process_setup  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
cli.define_config_file(
    "config", os.path.join(ROOT, "configs", "default.py"), "Path to a config file "
    "(configs/*.py); override fields with --config.KEY=VALUE.", sys.argv)
flags.DEFINE_string("image_shape", None,
                    "H,W,C of the synthetic images, or T,H,W,C of the clips of a video "
                    "model; default: from config.dataset (image_size, else the "
                    "dataset's native shape; with dataset.as_clips, clip_length frames).")
flags.DEFINE_integer("steps", 20, "Timed train calls.")
flags.DEFINE_integer("eval_steps", 20, "Timed eval calls.")
flags.DEFINE_integer("warmup", 3, "Untimed calls after compilation.")
flags.DEFINE_integer("device_train_steps", 20,
                     "Optimizer steps of the device-resident training run (0: skip).")
flags.DEFINE_integer("num_images", 4096,
                     "Examples (images, or clips) in the device-resident synthetic dataset.")
flags.DEFINE_bool("measure_matmul_peak", False,
                  "Measure the fp32 matmul GFLOP/s and report the step's fraction of it.")
flags.DEFINE_integer("matmul_size", 2048, "Side of the square matrices for the peak.")
flags.DEFINE_integer("matmul_repeats", 10, "Timed matmuls (median).")

# Native (H, W, C) of the built-in datasets; numpy/folder need --image_shape.
NATIVE_SHAPES = {
    "synthetic_shapes": (32, 32, 3), "mnist": (28, 28, 1), "svhn": (32, 32, 3),
    "cifar10": (32, 32, 3), "celeba": (32, 32, 3), "frey_face": (28, 20, 1),
    "bair": (64, 64, 3),
}


# Datasets whose examples are clips [T, H, W, C] when dataset.as_clips is set.
VIDEO_DATASETS = ("bair",)


def resolve_image_shape(config, flag_value):
  """One example's shape: (H, W, C) for images, (T, H, W, C) for clips."""
  if flag_value:
    try:
      shape = tuple(int(v) for v in flag_value.split(","))
    except ValueError:
      cli.usage_error(f"--image_shape must be H,W,C or T,H,W,C; got {flag_value!r}")
    if len(shape) not in (3, 4):
      cli.usage_error(f"--image_shape must be H,W,C or T,H,W,C; got {flag_value!r}")
    return shape
  name = config.dataset.name
  if name not in NATIVE_SHAPES:
    cli.usage_error(f"dataset {name!r} has no known shape: pass --image_shape=H,W,C "
                    f"(or T,H,W,C for clips)")
  h, w, c = NATIVE_SHAPES[name]
  if config.dataset.image_size is not None:
    h, w = (int(v) for v in config.dataset.image_size)
  if config.dataset.get("as_clips") and name in VIDEO_DATASETS:
    if config.dataset.clip_length is None:
      cli.usage_error("dataset.as_clips needs dataset.clip_length (or pass "
                      "--image_shape=T,H,W,C)")
    return int(config.dataset.clip_length), h, w, c
  return h, w, c


def per_example_rates(prefix, examples_per_sec, example_shape):
  """{prefix}examples_per_sec, {prefix}images_per_sec and, for clips [T, H, W, C],
  {prefix}clips_per_sec (= examples) with images = clips x T frames."""
  rates = {f"{prefix}examples_per_sec": examples_per_sec}
  if len(example_shape) == 4:
    rates[f"{prefix}clips_per_sec"] = examples_per_sec
    rates[f"{prefix}images_per_sec"] = examples_per_sec * example_shape[0]
  else:
    rates[f"{prefix}images_per_sec"] = examples_per_sec
  return rates


def analytic_train_flops(image_shape, batch, latent_dim, base_channels, num_outputs):
  """2 x multiply-adds of one train step of the conv VAE (fwd + bwd), per global batch."""
  h, w, cin = image_shape
  c = base_channels
  conv = lambda ho, wo, k, ci, co: 2 * batch * ho * wo * k * k * ci * co
  flat = (h // 4) * (w // 4) * 4 * c
  first = conv(h, w, 3, cin, c)
  fwd = (first
         + conv(h // 2, w // 2, 4, c, 2 * c)
         + conv(h // 4, w // 4, 5, 2 * c, 4 * c)
         + 2 * (2 * batch * flat * latent_dim)          # mean and log_var heads
         + 2 * batch * latent_dim * flat                # decoder dense
         + conv(h // 4, w // 4, 6, 4 * c, 2 * c)        # transposed conv: per input pixel
         + conv(h // 2, w // 2, 6, 2 * c, c)
         + conv(h, w, 5, c, num_outputs))
  # Backward: input and weight gradients each cost a forward; the data needs no gradient.
  return 3 * fwd - first


def measure_matmul_peak(n, repeats):
  import jax
  import jax.numpy as jnp
  import numpy as np
  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (n, n), jnp.float32)
  b = jax.random.normal(kb, (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  for _ in range(2):
    dot(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    dot(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n ** 3 / float(np.median(times)) / 1e9


def xla_flops(compiled) -> float:
  """FLOPs of one call of a compiled program, from XLA's cost analysis."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # one dict per program in older jax versions
    cost = cost[0]
  if not cost or "flops" not in cost:
    raise ValueError(f"no 'flops' in the cost analysis: {cost!r}")
  return float(cost["flops"])


def memory_bytes(compiled, prefix) -> dict:
  """XLA's memory analysis of a compiled program, in bytes: {prefix}temp_bytes (its
  temporary buffers: the activations kept for the backward pass, which
  model.remat trades for compute) and {prefix}argument_bytes (state and batch)."""
  try:
    stats = compiled.memory_analysis()
    return {f"{prefix}temp_bytes": int(stats.temp_size_in_bytes),
            f"{prefix}argument_bytes": int(stats.argument_size_in_bytes)}
  except Exception as e:  # pylint: disable=broad-except  (not every backend has it)
    print(f"XLA memory analysis unavailable: {e!r}", file=sys.stderr)
    return {}


def _timed_calls(fn, n):
  """Runs fn() n times, each to completion; returns the list of seconds."""
  times = []
  for _ in range(n):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def run(config, image_shape):
  import jax
  import numpy as np
  from sigma_vae_jax import models
  from sigma_vae_jax.training import train_step
  from sigma_vae_jax.training import trainer as trainer_lib

  models.validate(config.model, image_shape)
  devices = jax.devices()
  trainer = trainer_lib.Trainer(config, image_shape, trainer_lib.make_mesh(devices))
  batch, spc = config.batch_size, config.steps_per_call
  rng = np.random.RandomState(config.seed)
  result = {}

  # ---- train step on host-provided batches [steps_per_call, B, H, W, C] ----------
  state = trainer.init_state()
  batches = trainer.put_batches(
      rng.randint(0, 256, (spc, batch) + tuple(image_shape)).astype(np.uint8))
  start = time.perf_counter()
  train_fn = trainer.train_on_batches.lower(state, batches).compile()
  result["compile_s"] = time.perf_counter() - start
  result.update(memory_bytes(train_fn, "train_"))
  for _ in range(FLAGS.warmup):
    state, _ = train_fn(state, batches)
  jax.block_until_ready(state)

  def train_call():
    nonlocal state
    state, metrics = train_fn(state, batches)
    jax.block_until_ready((state, metrics))

  times = np.asarray(_timed_calls(train_call, FLAGS.steps)) / spc
  step_s = float(np.median(times))
  result.update(per_example_rates("", batch / step_s, image_shape))
  result.update(step_ms=1e3 * step_s, step_ms_min=1e3 * float(times.min()),
                step_ms_mean=1e3 * float(times.mean()))

  # ---- eval step -------------------------------------------------------------------
  images = jax.device_put(batches[0], trainer.batch_sharding)
  mask = jax.device_put(np.ones(batch, bool), trainer.batch_sharding)
  eval_rng = jax.random.PRNGKey(1)
  eval_fn = trainer.eval_sums.lower(state, images, mask, eval_rng).compile()
  for _ in range(FLAGS.warmup):
    jax.block_until_ready(eval_fn(state, images, mask, eval_rng))
  times = _timed_calls(lambda: jax.block_until_ready(eval_fn(state, images, mask, eval_rng)),
                       FLAGS.eval_steps)
  result["eval_step_ms"] = 1e3 * float(np.median(times))
  result.update(per_example_rates("eval_", batch / float(np.median(times)), image_shape))

  # ---- short training from the device-resident dataset ------------------------------
  if FLAGS.device_train_steps > 0:
    num_images = max(FLAGS.num_images, batch)
    data = trainer.put_replicated(
        rng.randint(0, 256, (num_images,) + tuple(image_shape)).astype(np.uint8))
    state = trainer.init_state()
    device_fn = trainer.train_on_device.lower(state, data).compile()
    for _ in range(FLAGS.warmup):
      state, _ = device_fn(state, data)
    jax.block_until_ready(state)
    calls = max(1, math.ceil(FLAGS.device_train_steps / spc))
    start = time.perf_counter()
    for _ in range(calls):  # Dispatched back to back, as in train_and_evaluate.
      state, metrics = device_fn(state, data)
    jax.block_until_ready((state, metrics))
    elapsed = time.perf_counter() - start
    result["device_train_steps_per_sec"] = calls * spc / elapsed
    result.update(per_example_rates("device_train_", calls * spc * batch / elapsed,
                                    image_shape))
    result["device_train_steps"] = calls * spc
    result["device_train_seconds"] = elapsed
    result["device_train_epochs"] = calls * spc * batch / num_images

  # ---- FLOPs ------------------------------------------------------------------------
  likelihood = trainer.likelihood
  try:
    if spc == 1:
      # The timed program is one step with no loop around it: its own count, and
      # no second compilation (minutes for the large models).
      compiled = train_fn
    else:
      # XLA counts a loop body once whatever its trip count, so the scan of spc
      # steps would read as one: compile a single step instead.
      one_step = jax.jit(functools.partial(
          train_step.train_step, model=trainer.model, likelihood=likelihood, tx=trainer.tx,
          skip_nonfinite=config.skip_nonfinite_updates, free_bits=config.free_bits,
          free_bits_rule=config.free_bits_rule,
          skip_update_grad_norm=config.skip_update_grad_norm, ema_decay=config.ema_decay),
          compiler_options=trainer.compiler_options)
      compiled = one_step.lower(trainer.init_state(), batches[0]).compile()
    result["xla_flops_per_step"] = xla_flops(compiled)
  except Exception as e:  # pylint: disable=broad-except
    result["xla_flops_per_step"] = None
    print(f"XLA cost analysis unavailable: {e!r}", file=sys.stderr)
  if config.model.name == "conv_vae":
    flops = analytic_train_flops(image_shape, batch, config.model.latent_dim,
                                 config.model.base_channels,
                                 likelihood.num_outputs(image_shape[-1]))
    result["flops_source"] = "analytic"
  else:  # No hand count for the other models: XLA's own count of one step.
    flops = result["xla_flops_per_step"] or float("nan")
    result["flops_source"] = "xla_cost_analysis"
  result["flops_per_step"] = float(flops)
  result["achieved_gflops"] = flops / step_s / 1e9

  if FLAGS.measure_matmul_peak:
    peak = measure_matmul_peak(FLAGS.matmul_size, FLAGS.matmul_repeats)
    result["matmul_peak_gflops"] = peak
    result["matmul_size"] = FLAGS.matmul_size
    result["fraction_of_matmul_peak"] = result["achieved_gflops"] / peak
    # The rates if the step ran at the matmul peak.
    result.update(per_example_rates("ceiling_", batch * peak * 1e9 / flops, image_shape))

  # The algorithms the model actually runs (whatever the config could express).
  result["model"] = config.model.name
  result["model_algorithms"] = {
      name: getattr(trainer.model, name)
      for name in ("fast_encoder", "fast_upsample", "fast_output")
      if hasattr(trainer.model, name)}
  result["compute_dtype"] = config.model.dtype
  result["devices"] = len(devices)
  result["device_kind"] = devices[0].device_kind
  result["backend"] = jax.default_backend()
  result["image_shape"] = list(image_shape)
  if len(image_shape) == 4:
    result["frames_per_clip"] = image_shape[0]
  result["batch_size"] = batch
  result["config"] = config.to_dict()
  return result


def main(argv):
  if len(argv) > 1:
    cli.usage_error(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    # JAX's INFO lines (e.g. "Unable to initialize backend 'tpu'") are not results.
    logging.set_verbosity(logging.WARNING)
  config = FLAGS.config
  image_shape = resolve_image_shape(config, FLAGS.image_shape)
  result = run(config, image_shape)
  print(json.dumps(result, default=str, sort_keys=False), flush=True)


if __name__ == "__main__":
  process_setup.set_tensorflow_env_defaults()
  app.run(main, flags_parser=cli.absl_flags_parser)
