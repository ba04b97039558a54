"""The jit and sharding wiring: `Trainer` compiles the step math of `train_step`
and the evaluation passes of `eval_passes` for one config and one device mesh
(`data_parallel`), and runs the host loops of evaluation and image writing over them.

Data parallelism (`data_parallel`): the train state is replicated, every batch is
sharded on its leading axis, and XLA inserts the cross-device reductions, so
`jnp.mean` over the batch (the optimal sigma) is over the *global* batch. Multi-host
runs call `jax.distributed.initialize()` first (main.py, --multihost); each process
then feeds only its own shard of each batch.

Every jitted function is built once per Trainer (its cache lives and dies with it).
"""

from __future__ import annotations

import functools
import math
import os
from typing import Iterator

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from sigma_vae_jax import configuration
from sigma_vae_jax import likelihoods
from sigma_vae_jax import losses
from sigma_vae_jax import models
from sigma_vae_jax.data import data_source
from sigma_vae_jax.training import data_parallel
from sigma_vae_jax.training import eval_passes
from sigma_vae_jax.training import reporting
from sigma_vae_jax.training import train_step as steps
from sigma_vae_jax.training import xla_options
# The README builds a Trainer with `trainer.make_mesh()`.
from sigma_vae_jax.training.data_parallel import make_mesh  # pylint: disable=unused-import

# Fold-in constants that separate the random streams derived from one seed.
DATA_ORDER_STREAM = 1
EVAL_STREAM = 2
IMAGE_STREAM = 3
EVAL_SIGMA_STREAM = 4


def padded_batches(data: np.ndarray, batch_size: int
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Fixed-size batches (uint8 [batch_size, ...], bool mask [batch_size]) of an
  in-memory split. The last one is filled with real examples from the start of the
  split (cyclically) that the mask removes: never blank ones, because models that
  normalise with batch statistics (svg_lp's norm="batch", as the SVG reference, also
  at evaluation) score each example with the statistics of its whole batch, and
  blank fillers would shift them. The masked sums of every evaluation path then
  equal those of the same examples evaluated in exact batches."""
  n = len(data)
  for start in range(0, n, batch_size):
    rows = np.arange(start, start + batch_size)
    mask = rows < n
    chunk = data[start:start + batch_size]
    if len(chunk) < batch_size:
      chunk = data[rows % n]
    yield chunk, mask


def fits_eval_sigma(config, likelihood: likelihoods.Likelihood) -> bool:
  """Whether evaluation refits sigma*^2 to the evaluation network (config.eval_sigma).

  Only likelihoods whose evaluation sigma is a running average of training sigma*^2
  (`has_running_sigma`: optimal_sigma, discretized_* with scale=optimal) have one to
  refit. "auto" refits when the evaluated network is not the trained one: EMA
  parameters (ema_decay) or dropout (model.dropout_rate > 0) in training only.
  """
  if not likelihood.has_running_sigma or config.eval_sigma == "running_average":
    return False
  if config.eval_sigma == "fit":
    return True
  return bool(config.ema_decay) or config.model.get("dropout_rate", 0.0) > 0


def eval_sigma_train_batches(source: data_source.DataSource, config) -> np.ndarray:
  """The training data of the evaluation sigma's fit: process-local uint8 batches
  [N, batch_size / processes, ...], the first N = min(eval_sigma_train_batches, one
  epoch) batches of the training split shuffled with config.seed (the same ones at
  every evaluation; never the test split)."""
  local_batch = config.batch_size // jax.process_count()
  num = min(config.eval_sigma_train_batches,
            source.batches_per_epoch("train", local_batch))
  stream = source.batch_iterator("train", local_batch, seed=config.seed, shuffle=True,
                                 repeat=True)
  return np.stack([next(stream) for _ in range(num)])


class Trainer:
  """Builds the model, likelihood, optimizer and the jitted, sharded train/eval
  functions for one config, one data shape (one example, no batch axis) and mesh."""

  def __init__(self, config, data_shape, mesh: Mesh):
    self.config = config
    self.mesh = mesh
    self.likelihood = likelihoods.get_likelihood(config.decoder)
    self.data_shape = tuple(data_shape)
    self.model = models.build_model(config.model, self.data_shape,
                                    self.likelihood.num_outputs(self.data_shape[-1]))
    self.tx = steps.create_optimizer(config)
    self.target_shape = self._target_shape()
    configuration.validate_sigma_axes(config.decoder, self.target_shape)
    self.replicated = NamedSharding(mesh, P())
    self.batch_sharding = NamedSharding(mesh, P(data_parallel.DATA_AXIS))
    self.data_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), DATA_ORDER_STREAM)
    step = functools.partial(
        steps.train_step, model=self.model, likelihood=self.likelihood, tx=self.tx,
        skip_nonfinite=config.skip_nonfinite_updates, free_bits=config.free_bits,
        free_bits_rule=config.free_bits_rule,
        skip_update_grad_norm=config.skip_update_grad_norm, ema_decay=config.ema_decay)
    num_steps = config.steps_per_call
    batch_size = config.batch_size

    # Several steps per call run in a lax.scan. With one step per call there is no
    # loop at all: XLA:CPU runs convolution gradients inside a loop body 10-40x
    # slower than at top level, so CPU runs keep steps_per_call=1.
    def steps_on_device(state, data):
      def body(state, _):
        batch = steps.device_batch(data, state.step, self.data_key, batch_size)
        batch = jax.lax.with_sharding_constraint(batch, self.batch_sharding)
        return step(state, batch)
      if num_steps == 1:
        return body(state, None)
      state, metrics = jax.lax.scan(body, state, None, length=num_steps)
      return state, jax.tree.map(lambda m: m.mean(0), metrics)

    def steps_on_batches(state, batches):
      if num_steps == 1:
        return step(state, batches[0])
      state, metrics = jax.lax.scan(step, state, batches)
      return state, jax.tree.map(lambda m: m.mean(0), metrics)

    self.compiler_options = xla_options.compiler_options(mesh.devices.flat[0].platform,
                                                         config.tune_xla_cpu)
    jit = functools.partial(jax.jit, compiler_options=self.compiler_options)
    rep, bat = self.replicated, self.batch_sharding
    # The state is donated: its buffers are reused for the next state.
    self.train_on_device = jit(steps_on_device, in_shardings=(rep, rep),
                               out_shardings=(rep, rep), donate_argnums=0)
    self.train_on_batches = jit(
        steps_on_batches,
        in_shardings=(rep, NamedSharding(mesh, P(None, data_parallel.DATA_AXIS))),
        out_shardings=(rep, rep), donate_argnums=0)
    # Evaluation passes (forward only), compiled on first use.
    self.eval_passes = passes = eval_passes.EvalPasses(
        self.model, self.likelihood, self.target_shape, config.model.name)
    self.eval_sums = jit(passes.eval_sums, in_shardings=(rep, bat, bat, rep),
                         out_shardings=rep)
    self.encode = jax.jit(passes.encode)
    self.log_importance_weights = jax.jit(passes.log_importance_weights,
                                          static_argnames="num_samples")
    self.log_sigma_sums = jax.jit(passes.log_sigma_sums)
    self.reconstruct = jax.jit(passes.reconstruct)
    self.sample = jax.jit(passes.sample, static_argnames=("num", "temperature"))
    self.calibration_sums = jax.jit(passes.calibration_sums, static_argnames="discrete")
    self.fits_eval_sigma = fits_eval_sigma(config, self.likelihood)
    self._fitted_likelihood_state = jax.jit(passes.likelihood_state_at_mse)
    # Video models only (evaluation.video.evaluate_elbo_per_frame); sharded as eval_sums.
    self.frame_nelbo_sums = jit(passes.frame_nelbo_sums, in_shardings=(rep, bat, bat, rep),
                                out_shardings=rep)

  def _target_shape(self) -> tuple[int, ...]:
    key = jax.random.PRNGKey(0)
    dummy = jax.ShapeDtypeStruct((1,) + self.data_shape, jnp.float32)
    variables = jax.eval_shape(lambda x: self.model.init(key, x, key), dummy)
    output = jax.eval_shape(lambda v, x: self.model.apply(v, x, key), variables, dummy)
    return tuple(output.target.shape[1:])

  @property
  def num_target_dims(self) -> int:
    """D: the data dimensions each example's ELBO sums over (bits/dim divide by it)."""
    return math.prod(self.target_shape)

  def init_state(self) -> steps.TrainState:
    state = steps.create_train_state(self.config, self.model, self.likelihood, self.tx,
                                     self.data_shape, self.target_shape)
    # Leaves may share one buffer (e.g. the same zeros); donation needs distinct ones.
    state = jax.tree.map(lambda x: jnp.array(x, copy=True), state)
    if jax.process_count() > 1:
      # device_put onto other processes' devices checks that every process passes
      # equal values, which the state's NaN placeholders (`nonfinite`) never are.
      return jax.tree.map(lambda x: self.put_replicated(np.asarray(x)), state)
    return jax.device_put(state, self.replicated)

  def evaluation_state(self, state: steps.TrainState, train_batches) -> steps.TrainState:
    """The state that evaluation scores: `state` itself, or (`fits_eval_sigma`) a
    copy whose likelihood state holds sigma*^2 = the MSE of the evaluation network
    (eval parameters, no dropout, latents z ~ q) over `train_batches`.

    train_batches: global uint8 training batches [B, ...] sharded as
    `shard_batch` makes them (`eval_sigma_train_batches`), never test data. Batch i
    draws z with fold_in(fold_in(state.rng, EVAL_SIGMA_STREAM), i). Runs the jitted
    calibration pass per batch and sums on device (no host sync). `state` itself
    is not changed: training goes on with its running average.
    """
    if not self.fits_eval_sigma:
      return state
    rng = jax.random.fold_in(state.rng, EVAL_SIGMA_STREAM)
    no_log_sigma = jnp.zeros((), jnp.float32)  # only read by the discrete sums
    totals, mask = None, None
    for i, data in enumerate(train_batches):
      if mask is None:  # every row is a training example
        mask = self.shard_batch(np.ones(data.shape[0] // jax.process_count(), bool))
      sums = self.calibration_sums(state, data, mask, jax.random.fold_in(rng, i),
                                   no_log_sigma, discrete=False)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if totals is None:
      raise ValueError("evaluation_state: no training batches to fit sigma on")
    return state.replace(likelihood_state=self._fitted_likelihood_state(
        totals["sq_err"], totals["count"]))

  # ---- evaluation and images --------------------------------------------------

  def evaluate(self, state: steps.TrainState,
               batches: Iterator[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Average test metrics over all examples: nats per example and bits/dim.

    batches yields process-local (uint8 data [b, ...], bool mask [b]).
    """
    eval_rng = jax.random.fold_in(state.rng, EVAL_STREAM)
    totals = None
    for i, (data, mask) in enumerate(batches):
      data = self.global_array(data, self.batch_sharding)
      mask = self.global_array(mask, self.batch_sharding)
      sums = self.eval_sums(state, data, mask, jax.random.fold_in(eval_rng, i))
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = totals.pop("count")
    metrics = {k: float(v) / count for k, v in totals.items()}
    num_dims = self.num_target_dims
    metrics["bpd"] = losses.nats_to_bits_per_dim(metrics["nelbo"], num_dims)
    if "nelbo_discrete" in metrics:
      metrics["bpd_discrete"] = losses.nats_to_bits_per_dim(metrics["nelbo_discrete"],
                                                            num_dims)
    metrics["num_examples"] = float(count)
    return {k: float(v) for k, v in metrics.items()}

  @property
  def num_context_frames(self) -> int:
    """Frames a video model's samples condition on (0 for image models)."""
    return self.eval_passes.num_context_frames

  def write_images(self, state: steps.TrainState, images: np.ndarray, directory: str,
                   step: int) -> dict[str, np.ndarray]:
    """images/step_<N>_recons.png (rows of 8 test images, then their
    reconstructions) and step_<N>_samples.png (prior samples); for video models
    step_<N>_video.png (context | truth, reconstructions, samples) and
    step_<N>_samples.gif. Returns the written grids by name (uint8 [H, W, 3]), for
    TensorBoard."""
    rng = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), IMAGE_STREAM)
    batch = self.global_array(images, self.replicated)
    if self.num_context_frames:
      clips = batch[:8]
      context = clips[:, :self.num_context_frames]
      recons, samples = jax.device_get((self.reconstruct(state, clips),
                                        self.sample(state, rng, len(clips), context)))
      grid = reporting.save_video_strips(
          os.path.join(directory, f"step_{step}_video.png"),
          os.path.join(directory, f"step_{step}_samples.gif"),
          np.asarray(images[:8], np.float32) / 255.0, recons, samples,
          self.num_context_frames)
      return {"video": grid}
    recons, samples = jax.device_get((self.reconstruct(state, batch),
                                      self.sample(state, rng, len(images))))
    originals = np.asarray(images, np.float32) / 255.0
    pairs = []
    for start in range(0, len(originals), 8):
      pairs += [originals[start:start + 8], recons[start:start + 8]]
    return {
        "recons": reporting.save_image_grid(
            os.path.join(directory, f"step_{step}_recons.png"), np.concatenate(pairs)),
        "samples": reporting.save_image_grid(
            os.path.join(directory, f"step_{step}_samples.png"), samples)}

  # ---- host <-> device -------------------------------------------------------

  def global_array(self, local: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Process-local rows -> a global array sharded over all processes' devices."""
    return data_parallel.global_array(local, sharding)

  def shard_batch(self, local: np.ndarray) -> jax.Array:
    """A process-local batch [b, ...] -> global [B, ...] sharded over the mesh."""
    return self.global_array(local, self.batch_sharding)

  def put_replicated(self, array: np.ndarray) -> jax.Array:
    """A host array every process holds in full -> replicated on all devices."""
    return data_parallel.put_replicated(array, self.replicated)

  def put_batches(self, batches: np.ndarray) -> jax.Array:
    """Stacked process-local batches [S, b, ...] -> global [S, B, ...]."""
    return self.global_array(batches,
                             NamedSharding(self.mesh, P(None, data_parallel.DATA_AXIS)))
