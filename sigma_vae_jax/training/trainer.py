"""The jit and sharding wiring: `Trainer` compiles the step math of `train_step`
and the evaluation passes for one config and one device mesh.

Data parallelism: a 1-D `jax.sharding.Mesh` over all devices with axis "data".
The train state is replicated, every batch is sharded on its leading axis, and
XLA inserts the cross-device reductions, so `jnp.mean` over the batch (the optimal
sigma) is over the *global* batch. Multi-host runs call
`jax.distributed.initialize()` first (main.py, --multihost); each process then
feeds only its own shard of each batch.

Every jitted function is built once per Trainer (its cache lives and dies with it).
"""

from __future__ import annotations

import functools
import math
import os
from typing import Iterator, Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from sigma_vae_jax import configuration
from sigma_vae_jax import likelihoods
from sigma_vae_jax import losses
from sigma_vae_jax import models
from sigma_vae_jax import objectives
from sigma_vae_jax.data import data_source
from sigma_vae_jax.data import preprocessing
from sigma_vae_jax.training import reporting
from sigma_vae_jax.training import train_step as steps

DATA_AXIS = "data"
# Fold-in constants that separate the random streams derived from one seed.
DATA_ORDER_STREAM = 1
EVAL_STREAM = 2
IMAGE_STREAM = 3
EVAL_SIGMA_STREAM = 4

# XLA:CPU (jaxlib 0.10) hands convolutions to its YNNPACK library by default. For
# the conv VAE its own (Eigen) convolutions make a train step ~1.25x faster
# (scripts/benchmark.py; README "Performance"), with YNNPACK kept for elementwise
# and reduction fusions. Only compilation changes, never the computed function.
TUNED_CPU_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type":
        "LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE",
}


@functools.lru_cache(maxsize=None)
def compiler_options(platform: str, tuned: bool = True) -> Optional[dict]:
  """XLA options for jitting this package's steps on `platform` (None: XLA's own).

  On CPU with `tuned`, `TUNED_CPU_OPTIONS`, unless XLA_FLAGS already sets them
  (the user's choice wins) or this XLA does not know them (its defaults then).
  """
  if platform != "cpu" or not tuned:
    return None
  user_flags = os.environ.get("XLA_FLAGS", "")
  if any(name in user_flags for name in TUNED_CPU_OPTIONS):
    return None
  try:
    jax.jit(lambda x: x + 1, compiler_options=TUNED_CPU_OPTIONS).lower(
        jnp.zeros(2)).compile()
  except Exception:  # pylint: disable=broad-except
    return None
  return dict(TUNED_CPU_OPTIONS)


def make_mesh(devices=None) -> Mesh:
  """A 1-D data-parallel mesh over `devices` (default: all)."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA_AXIS,))


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
    self.batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
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

    self.compiler_options = compiler_options(mesh.devices.flat[0].platform,
                                             config.tune_xla_cpu)
    jit = functools.partial(jax.jit, compiler_options=self.compiler_options)
    rep, bat = self.replicated, self.batch_sharding
    # The state is donated: its buffers are reused for the next state.
    self.train_on_device = jit(steps_on_device, in_shardings=(rep, rep),
                               out_shardings=(rep, rep), donate_argnums=0)
    self.train_on_batches = jit(
        steps_on_batches, in_shardings=(rep, NamedSharding(mesh, P(None, DATA_AXIS))),
        out_shardings=(rep, rep), donate_argnums=0)
    self.eval_sums = jit(self._eval_sums, in_shardings=(rep, bat, bat, rep),
                         out_shardings=rep)
    # Evaluation passes (forward only), compiled on first use.
    self.encode = jax.jit(self._encode)
    self.log_importance_weights = jax.jit(self._log_importance_weights,
                                          static_argnames="num_samples")
    self.log_sigma_sums = jax.jit(self._log_sigma_sums)
    self.reconstruct = jax.jit(self._reconstruct)
    self.sample = jax.jit(self._sample, static_argnames=("num", "temperature"))
    self.calibration_sums = jax.jit(self._calibration_sums, static_argnames="discrete")
    self.fits_eval_sigma = fits_eval_sigma(config, self.likelihood)
    self._fitted_likelihood_state = jax.jit(self._likelihood_state_at_mse)
    # Video models only (evaluate.evaluate_elbo_per_frame); sharded as eval_sums.
    self.frame_nelbo_sums = jit(self._frame_nelbo_sums, in_shardings=(rep, bat, bat, rep),
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

  # ---- the forward passes of evaluation (jitted in __init__) -------------------

  def _apply(self, state, method=None, *args, **kwargs):
    variables = {"params": state.eval_params()["model"]}
    return self.model.apply(variables, *args, method=method, **kwargs)

  def _likelihood_args(self, state):
    return state.eval_params()["likelihood"], state.likelihood_state

  def _eval_sums(self, state: steps.TrainState, data, mask, rng) -> dict:
    """Sums over the valid examples (mask) of per-example eval metrics (nats)."""
    x = preprocessing.to_float(data)
    output = self._apply(state, None, x, rng)
    lik_params, lik_state = self._likelihood_args(state)
    terms = objectives.negative_elbo(output, self.likelihood, lik_params, lik_state,
                                     train=False)
    sums = {"nelbo": terms.nelbo, "rec": terms.rec, "kl": terms.kl}
    if len(terms.kl_per_group) > 1:
      sums.update({f"kl_{name}": kl for name, kl in terms.kl_per_group.items()})
    discrete = self.likelihood.discrete_nll(output.target, output.decoder_outputs,
                                            lik_params, lik_state)
    if discrete is not None:
      sums["nelbo_discrete"] = losses.sum_over_data_dims(discrete) + terms.kl
    lik = terms.likelihood_output
    if lik.log_sigma is not None:
      sums["log_sigma"] = objectives.mean_log_sigma(lik.log_sigma, output.target)
    mask = mask.astype(jnp.float32)
    sums = {k: jnp.sum(v * mask) for k, v in sums.items()}
    sums["count"] = mask.sum()
    return sums

  def _frame_nelbo_sums(self, state: steps.TrainState, data, mask, rng) -> dict:
    """A video model's eval terms per predicted frame, summed over the valid clips.

    The forward pass of `_eval_sums` (same rng, same likelihood form), split by the
    target's frame axis instead of summed over it. Returns, each [T_pred] in nats
    (T_pred = the target's frames, e.g. T - 1 for SVG-LP): rec (the likelihood's
    elementwise eval NLL summed over each frame's pixels and channels), kl (that step's
    KL(q || p) summed over the latent dimensions of every group), nelbo_discrete (the
    discretized Gaussian NLL of the 8-bit frames + kl, likelihoods that have one), and
    count (valid clips). Sums over frames of rec + kl are `_eval_sums`' nelbo.
    """
    if not self.num_context_frames:
      raise ValueError(f"per-frame ELBO: model {self.config.model.name!r} is an image "
                       f"model; it needs a video model (e.g. svg_lp)")
    x = preprocessing.to_float(data)
    output = self._apply(state, None, x, rng)
    lik_params, lik_state = self._likelihood_args(state)
    target, out = output.target, output.decoder_outputs
    per_frame = functools.partial(losses.sum_over_data_dims, num_batch_dims=2)  # -> [B, T]
    num_frames = target.shape[1]
    for name, group in output.latents.items():
      if group.kl.ndim < 2 or group.kl.shape[1] != num_frames:
        raise ValueError(f"per-frame ELBO: latent group {name!r} has KL of shape "
                         f"{group.kl.shape}, not [B, {num_frames} (frames), ...]")
    kl = objectives.sum_groups({name: per_frame(group.kl)
                                for name, group in output.latents.items()})
    lik = self.likelihood.eval_nll(target, out, lik_params, lik_state)
    sums = {"rec": per_frame(lik.nll), "kl": kl}
    discrete = self.likelihood.discrete_nll(target, out, lik_params, lik_state)
    if discrete is not None:
      sums["nelbo_discrete"] = per_frame(discrete) + kl
    m = mask.astype(jnp.float32)
    sums = {k: jnp.sum(v * m[:, None], axis=0) for k, v in sums.items()}
    sums["count"] = m.sum()
    return sums

  def _calibration_sums(self, state, data, mask, rng, log_sigma, discrete: bool):
    """The calibration pass: one forward pass of the evaluation network (eval
    parameters, no dropout; latents drawn with `rng`) and masked sums over the batch
    of the squared error of the likelihood's mean per target position ("sq_err",
    [*target_shape]), the KL, (discrete) the discretized-Gaussian NLL at log_sigma,
    and the count of valid examples. What `evaluate.evaluate_calibrated` (test data,
    the z of `evaluate`: same rng) and `evaluation_state` (training data) need."""
    x = preprocessing.to_float(data)
    output = self._apply(state, None, x, rng)
    decoded = self.likelihood.mean(output.decoder_outputs, *self._likelihood_args(state))
    target = output.target
    m = mask.astype(jnp.float32)
    kl = objectives.sum_groups(objectives.kl_per_group(output))
    sums = {"kl": jnp.sum(kl * m), "count": jnp.sum(m)}
    sq_err = (target - decoded) ** 2
    sums["sq_err"] = jnp.sum(sq_err * m.reshape((-1,) + (1,) * (sq_err.ndim - 1)), axis=0)
    if discrete:
      rec = losses.sum_over_data_dims(
          losses.discretized_gaussian_nll(target, decoded, log_sigma))
      sums["rec_discrete"] = jnp.sum(rec * m)
    return sums

  def _likelihood_state_at_mse(self, sq_err, count):
    """The likelihood state whose evaluation sigma*^2 is the mean squared error
    sq_err / count ([*target_shape] sums of `_calibration_sums` over `count`
    examples) averaged over decoder.sigma_axes, as the likelihood's own batch
    sigma*^2 averages (all positions when None): the running average of a fresh
    state after one update with it."""
    mse = (sq_err / count)[None]  # [1, *target_shape]
    axes = getattr(self.likelihood, "axes", None)
    variance = mse.mean() if axes is None else mse.mean(axis=axes, keepdims=True)
    fresh = self.likelihood.init_state(self.target_shape)
    return self.likelihood.update_state(
        fresh, likelihoods.LikelihoodOutput(nll=mse, batch_variance=variance))

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

  def _encode(self, state, data):
    """Posterior (mean, log_var) of models with one Gaussian latent group."""
    return self._apply(state, "encode", preprocessing.to_float(data))

  def _log_importance_weights(self, state, data, rng, num_samples: int):
    """log w (`objectives.log_importance_weight`) of num_samples draws per example:
    [K, B] nats, draw k with key fold_in(rng, k)."""
    x = preprocessing.to_float(data)
    lik_params, lik_state = self._likelihood_args(state)

    def one_draw(key):
      output = self._apply(state, None, x, key)
      return objectives.log_importance_weight(output, self.likelihood, lik_params,
                                              lik_state)
    keys = jax.vmap(lambda k: jax.random.fold_in(rng, k))(jnp.arange(num_samples))
    return jax.lax.map(one_draw, keys)

  def _log_sigma_sums(self, state, data, mask):
    """Sum over valid examples of the per-example mean eval log sigma at the
    posterior means (None for likelihoods without a scale)."""
    x = preprocessing.to_float(data)
    out = self._apply(state, "reconstruct", x)
    lik_params, lik_state = self._likelihood_args(state)
    target = self._target_of(state, x)
    lik = self.likelihood.eval_nll(target, out, lik_params, lik_state)
    if lik.log_sigma is None:
      return None
    per_example = objectives.mean_log_sigma(lik.log_sigma, target)
    return jnp.sum(per_example * mask.astype(per_example.dtype))

  def _target_of(self, state, x):
    """The part of the input the likelihood scores (e.g. a video model's predicted
    frames); the rest of this forward pass is dead code that XLA removes."""
    return self._apply(state, None, x, jax.random.PRNGKey(0)).target

  def _reconstruct(self, state, data):
    """Likelihood means of the reconstructions (posterior means), in [0, 1]."""
    out = self._apply(state, "reconstruct", preprocessing.to_float(data))
    return self.likelihood.mean(out, *self._likelihood_args(state))

  def _sample(self, state, rng, num: int, context=None, temperature: float = 1.0):
    """Likelihood means of `num` prior samples, in [0, 1]. Video models condition
    on `context` (uint8 or float frames [num, T_context, H, W, C]) and feed each
    generated frame back as the likelihood's mean."""
    lik_args = self._likelihood_args(state)
    kwargs = {}
    if context is not None:
      context = preprocessing.to_float(context)
      kwargs["output_to_frame"] = lambda out: self.likelihood.mean(out, *lik_args)
    out = self._apply(state, "sample", rng, num, context, temperature, **kwargs)
    return self.likelihood.mean(out, *lik_args)

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
    return int(getattr(self.model, "num_context_frames", 0))

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
    if jax.process_count() == 1:
      return jax.device_put(local, sharding)
    return jax.make_array_from_process_local_data(sharding, local)

  def shard_batch(self, local: np.ndarray) -> jax.Array:
    """A process-local batch [b, ...] -> global [B, ...] sharded over the mesh."""
    return self.global_array(local, self.batch_sharding)

  def put_replicated(self, array: np.ndarray) -> jax.Array:
    """A host array every process holds in full -> replicated on all devices."""
    return jax.make_array_from_callback(array.shape, self.replicated,
                                        lambda index: array[index])

  def put_batches(self, batches: np.ndarray) -> jax.Array:
    """Stacked process-local batches [S, b, ...] -> global [S, B, ...]."""
    return self.global_array(batches, NamedSharding(self.mesh, P(None, DATA_AXIS)))
