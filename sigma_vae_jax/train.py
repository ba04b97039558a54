"""Training and evaluation: the train state, jitted data-parallel steps, and
`train_and_evaluate(config, workdir)`.

Data parallelism: a 1-D `jax.sharding.Mesh` over all devices with axis "data".
The train state is replicated, every batch is sharded on its leading axis, and
XLA inserts the cross-device reductions, so `jnp.mean` over the batch (the optimal
sigma) is over the *global* batch. Multi-host runs call
`jax.distributed.initialize()` first (main.py, --multihost); each process then
feeds only its own shard of each batch.

Exact resume by construction: the noise of step t is `fold_in(state.rng, t)`, the
data order of epoch e is a permutation keyed by (seed, e), and the running
average of sigma is part of the state, so a restarted run replays exactly the
steps an uninterrupted one would have taken.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import sys
from typing import Any, Iterator, Optional

from flax import struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax

from sigma_vae_jax import checkpointing
from sigma_vae_jax import configuration
from sigma_vae_jax import decoders
from sigma_vae_jax import input_pipeline
from sigma_vae_jax import losses
from sigma_vae_jax import models
from sigma_vae_jax import reporting

DATA_AXIS = "data"
# Fold-in constants that separate the random streams derived from one seed.
_DATA_ORDER_STREAM = 1
_EVAL_STREAM = 2
_IMAGE_STREAM = 3


class NonFiniteError(RuntimeError):
  """A non-finite loss or gradient stopped training."""


class TrainState(struct.PyTreeNode):
  """Everything a restart needs, all arrays (checkpointed as one pytree).

  step: int32 scalar, optimizer steps taken.
  params: {"vae": network params, "decoder": the decoder's own (e.g. log_sigma)}.
  opt_state: optax state.
  decoder_state: non-trainable decoder state (running average of sigma*^2).
  rng: uint32[2] base key; step t draws its noise from fold_in(rng, t).
  num_skipped: int32, non-finite updates skipped (skip_nonfinite_updates=True).
  nonfinite: first non-finite step (-1: none) and its loss terms.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  decoder_state: Any
  rng: jax.Array
  num_skipped: jax.Array
  nonfinite: Any


def _no_nonfinite() -> dict[str, jax.Array]:
  nan = jnp.array(jnp.nan, jnp.float32)
  return {"step": jnp.array(-1, jnp.int32), "loss": nan, "rec": nan, "kl": nan,
          "grad_norm": nan}


def create_model(config: ml_collections.ConfigDict, image_shape, decoder) -> models.VAE:
  return models.VAE(
      image_shape=tuple(image_shape),
      num_outputs=decoder.num_outputs(image_shape[-1]),
      latent_dim=config.model.latent_dim,
      base_channels=config.model.base_channels,
      fast_encoder=config.model.fast_encoder,
      fast_upsample=config.model.fast_upsample,
      fast_output=config.model.fast_output,
      dtype=jnp.dtype(config.model.dtype))


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return optax.adam(config.learning_rate)


def create_train_state(config, model: models.VAE, decoder: decoders.Decoder,
                       tx: optax.GradientTransformation) -> TrainState:
  """Initial state on the default device (deterministic in config.seed)."""
  rng = jax.random.PRNGKey(config.seed)
  init_rng, noise_rng, state_rng = jax.random.split(rng, 3)
  dummy = jnp.zeros((1,) + tuple(model.image_shape), jnp.float32)
  vae_params = model.init(init_rng, dummy, noise_rng)["params"]
  params = {"vae": vae_params, "decoder": decoder.init_params()}
  return TrainState(
      step=jnp.array(0, jnp.int32), params=params, opt_state=tx.init(params),
      decoder_state=decoder.init_state(model.image_shape), rng=state_rng,
      num_skipped=jnp.array(0, jnp.int32), nonfinite=_no_nonfinite())


def _mean_log_sigma(log_sigma: jax.Array, x: jax.Array) -> jax.Array:
  """Per-example mean of a log sigma that broadcasts against x: [B]."""
  full = jnp.broadcast_to(log_sigma, x.shape)
  return full.reshape(x.shape[0], -1).mean(axis=1)


def loss_fn(params, decoder_state, images: jax.Array, rng: jax.Array, *,
            model: models.VAE, decoder: decoders.Decoder):
  """Training objective: mean over the batch of the per-example (beta-)NELBO.

  images: uint8 or float [B, H, W, C]. Returns (loss, (metrics, DecoderOutput)).
  The NLL and KL are *summed* over data and latent dimensions (nats per example).
  """
  x = input_pipeline.to_float(images)
  out, mean, log_var, _ = model.apply({"params": params["vae"]}, x, rng)
  dec = decoder.nll(x, out, params["decoder"], decoder_state, train=True)
  kl = losses.gaussian_kl(mean, log_var)
  weighted, rec, kl_sum = losses.negative_elbo(dec.nll, kl, beta=decoder.kl_weight)
  loss = weighted.mean()
  metrics = {"loss": loss, "nelbo": (rec + kl_sum).mean(), "rec": rec.mean(),
             "kl": kl_sum.mean()}
  if dec.log_sigma is not None:
    metrics["log_sigma"] = _mean_log_sigma(dec.log_sigma, x).mean()
  return loss, (metrics, dec)


def train_step(state: TrainState, images: jax.Array, *, model, decoder, tx,
               skip_nonfinite: bool) -> tuple[TrainState, dict]:
  """One optimizer step on a (global) batch of images [B, H, W, C].

  A non-finite loss or gradient never reaches the parameters: the update is
  dropped. With skip_nonfinite the run goes on and counts it; otherwise the first
  such step is recorded in `state.nonfinite` and all later updates are frozen
  until the host sees it and stops the run (no per-step host sync needed).
  """
  rng = jax.random.fold_in(state.rng, state.step)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (metrics, dec)), grads = grad_fn(state.params, state.decoder_state, images, rng,
                                          model=model, decoder=decoder)
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  halted = state.nonfinite["step"] >= 0
  apply = finite if skip_nonfinite else finite & ~halted

  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  decoder_state = decoder.update_state(state.decoder_state, dec)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)

  record = ~finite & ~halted
  this_step = {"step": state.step, "loss": loss, "rec": metrics["rec"],
               "kl": metrics["kl"], "grad_norm": grad_norm}
  nonfinite = jax.tree.map(lambda n, o: jnp.where(record, n, o), this_step,
                           state.nonfinite)
  new_state = state.replace(
      step=state.step + 1,
      params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state),
      decoder_state=keep(decoder_state, state.decoder_state),
      num_skipped=state.num_skipped + (~finite).astype(jnp.int32),
      nonfinite=nonfinite)
  metrics = dict(metrics, grad_norm=grad_norm)
  if "variance_ema" in new_state.decoder_state:
    metrics["log_sigma_ema"] = decoder.running_log_sigma(new_state.decoder_state).mean()
  return new_state, metrics


def device_batch(images: jax.Array, step: jax.Array, data_key: jax.Array,
                 batch_size: int) -> jax.Array:
  """The batch of optimizer step `step` from a device-resident dataset.

  Epoch e visits the examples in the order permutation(fold_in(data_key, e)),
  dropping the last partial batch; so the batch is a pure function of the step.
  """
  n = images.shape[0]
  steps_per_epoch = n // batch_size
  epoch, position = step // steps_per_epoch, step % steps_per_epoch
  order = jax.random.permutation(jax.random.fold_in(data_key, epoch), n)
  index = jax.lax.dynamic_slice_in_dim(order, position * batch_size, batch_size)
  return jnp.take(images, index, axis=0)


# XLA:CPU (jaxlib 0.10) hands convolutions to its YNNPACK library by default. For
# this model its own (Eigen) convolutions make a train step ~1.25x faster
# (scripts/benchmark.py; README "Performance"), with YNNPACK kept for elementwise
# and reduction fusions. Only compilation changes, never the computed function.
_TUNED_CPU_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type":
        "LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE",
}


@functools.lru_cache(maxsize=None)
def compiler_options(platform: str, tuned: bool = True) -> Optional[dict]:
  """XLA options for jitting this package's steps on `platform` (None: XLA's own).

  On CPU with `tuned`, `_TUNED_CPU_OPTIONS`, unless XLA_FLAGS already sets them
  (the user's choice wins) or this XLA does not know them (its defaults then).
  """
  if platform != "cpu" or not tuned:
    return None
  user_flags = os.environ.get("XLA_FLAGS", "")
  if any(name in user_flags for name in _TUNED_CPU_OPTIONS):
    return None
  try:
    jax.jit(lambda x: x + 1, compiler_options=_TUNED_CPU_OPTIONS).lower(
        jnp.zeros(2)).compile()
  except Exception:  # pylint: disable=broad-except
    return None
  return dict(_TUNED_CPU_OPTIONS)


class Trainer:
  """Builds the jitted, sharded train/eval functions for one config and mesh."""

  def __init__(self, config, image_shape, mesh: Mesh):
    self.config = config
    self.mesh = mesh
    self.decoder = decoders.get_decoder(config.decoder)
    self.model = create_model(config, image_shape, self.decoder)
    self.tx = create_optimizer(config)
    self.image_shape = tuple(image_shape)
    self.replicated = NamedSharding(mesh, P())
    self.batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
    self.data_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), _DATA_ORDER_STREAM)
    step = functools.partial(
        train_step, model=self.model, decoder=self.decoder, tx=self.tx,
        skip_nonfinite=config.skip_nonfinite_updates)
    num_steps = config.steps_per_call
    batch_size = config.batch_size

    # Several steps per call run in a lax.scan. With one step per call there is no
    # loop at all: XLA:CPU runs convolution gradients inside a loop body 10-40x
    # slower than at top level, so CPU runs keep steps_per_call=1.
    def steps_on_device(state, images):
      def body(state, _):
        batch = device_batch(images, state.step, self.data_key, batch_size)
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
    # The state is donated: its buffers are reused for the next state.
    self.train_on_device = jit(
        steps_on_device, in_shardings=(self.replicated, self.replicated),
        out_shardings=(self.replicated, self.replicated), donate_argnums=0)
    self.train_on_batches = jit(
        steps_on_batches,
        in_shardings=(self.replicated, NamedSharding(mesh, P(None, DATA_AXIS))),
        out_shardings=(self.replicated, self.replicated), donate_argnums=0)
    self.eval_sums = jit(
        self._eval_sums, in_shardings=(self.replicated, self.batch_sharding,
                                       self.batch_sharding, self.replicated),
        out_shardings=self.replicated)
    self.images = jit(self._images, out_shardings=self.replicated)

  def init_state(self) -> TrainState:
    state = create_train_state(self.config, self.model, self.decoder, self.tx)
    # Leaves may share one buffer (e.g. the same zeros); donation needs distinct ones.
    state = jax.tree.map(lambda x: jnp.array(x, copy=True), state)
    return jax.device_put(state, self.replicated)

  # ---- evaluation -------------------------------------------------------------

  def _eval_sums(self, state: TrainState, images, mask, rng) -> dict:
    """Sums over the valid examples (mask) of per-example eval metrics (nats)."""
    x = input_pipeline.to_float(images)
    model, decoder = self.model, self.decoder
    out, mean, log_var, _ = model.apply({"params": state.params["vae"]}, x, rng)
    dec = decoder.eval_nll(x, out, state.params["decoder"], state.decoder_state)
    kl = losses.gaussian_kl(mean, log_var)
    nelbo, rec, kl_sum = losses.negative_elbo(dec.nll, kl)
    mask = mask.astype(jnp.float32)
    sums = {"nelbo": nelbo, "rec": rec, "kl": kl_sum}
    discrete = decoder.discrete_nll(x, out, state.params["decoder"], state.decoder_state)
    if discrete is not None:
      sums["nelbo_discrete"] = losses.sum_over_data_dims(discrete) + kl_sum
    if dec.log_sigma is not None:
      sums["log_sigma"] = _mean_log_sigma(dec.log_sigma, x)
    sums = {k: jnp.sum(v * mask) for k, v in sums.items()}
    sums["count"] = mask.sum()
    return sums

  def evaluate(self, state: TrainState, batches: Iterator[tuple[np.ndarray, np.ndarray]]
               ) -> dict[str, float]:
    """Average test metrics over all examples: nats per example and bits/dim.

    batches yields process-local (uint8 images [b, H, W, C], bool mask [b]).
    """
    eval_rng = jax.random.fold_in(state.rng, _EVAL_STREAM)
    totals = None
    for i, (images, mask) in enumerate(batches):
      images = self._global(images, self.batch_sharding)
      mask = self._global(mask, self.batch_sharding)
      sums = self.eval_sums(state, images, mask, jax.random.fold_in(eval_rng, i))
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = totals.pop("count")
    metrics = {k: float(v) / count for k, v in totals.items()}
    num_dims = math.prod(self.image_shape)
    metrics["bpd"] = losses.nats_to_bits_per_dim(metrics["nelbo"], num_dims)
    if "nelbo_discrete" in metrics:
      metrics["bpd_discrete"] = losses.nats_to_bits_per_dim(metrics["nelbo_discrete"],
                                                            num_dims)
    metrics["num_examples"] = float(count)
    return {k: float(v) for k, v in metrics.items()}

  def _images(self, state: TrainState, images, rng):
    """(reconstructions of images, samples from the prior), mean images in [0, 1]."""
    model, decoder = self.model, self.decoder
    variables = {"params": state.params["vae"]}
    x = input_pipeline.to_float(images)
    mean, _ = model.apply(variables, x, method=models.VAE.encode)
    recons = decoder.mean(model.apply(variables, mean, method=models.VAE.decode),
                          state.params["decoder"], state.decoder_state)
    z = jax.random.normal(rng, mean.shape, mean.dtype)
    samples = decoder.mean(model.apply(variables, z, method=models.VAE.decode),
                           state.params["decoder"], state.decoder_state)
    return recons, samples

  def write_images(self, state: TrainState, images: np.ndarray, directory: str,
                   step: int) -> None:
    rng = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), _IMAGE_STREAM)
    recons, samples = jax.device_get(self.images(state, images, rng))
    originals = np.asarray(images, np.float32) / 255.0
    # Rows alternate: 8 test images, then their reconstructions.
    pairs = []
    for start in range(0, len(originals), 8):
      pairs += [originals[start:start + 8], recons[start:start + 8]]
    reporting.save_image_grid(os.path.join(directory, f"step_{step}_recons.png"),
                              np.concatenate(pairs))
    reporting.save_image_grid(os.path.join(directory, f"step_{step}_samples.png"), samples)

  def _global(self, local: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Process-local rows -> a global array sharded over all processes' devices."""
    if jax.process_count() == 1:
      return jax.device_put(local, sharding)
    return jax.make_array_from_process_local_data(sharding, local)

  def put_replicated(self, array: np.ndarray) -> jax.Array:
    """A host array every process holds in full -> replicated on all devices."""
    return jax.make_array_from_callback(array.shape, self.replicated,
                                        lambda index: array[index])

  def put_batches(self, batches: np.ndarray) -> jax.Array:
    """Stacked process-local batches [S, b, ...] -> global [S, B, ...]."""
    return self._global(batches, NamedSharding(self.mesh, P(None, DATA_AXIS)))


def _padded_batches(images: np.ndarray, batch_size: int
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Fixed-size batches of an in-memory split; the last one zero-padded and masked."""
  n = len(images)
  for start in range(0, n, batch_size):
    chunk = images[start:start + batch_size]
    mask = np.ones(batch_size, bool)
    if len(chunk) < batch_size:
      mask[len(chunk):] = False
      pad = np.zeros((batch_size - len(chunk),) + chunk.shape[1:], chunk.dtype)
      chunk = np.concatenate([chunk, pad])
    yield chunk, mask


def _padded_stream(iterator: Iterator[np.ndarray], batch_size: int, num_batches: int
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Pads a finite stream of process-local batches to exactly num_batches batches,
  so every process runs the same number of (collective) eval steps."""
  shape = None
  for _, batch in zip(range(num_batches), iterator):
    shape = batch.shape[1:]
    yield from _padded_batches(batch, batch_size)
    num_batches -= 1
  for _ in range(num_batches):
    yield np.zeros((batch_size,) + shape, np.uint8), np.zeros(batch_size, bool)


class _Preemption:
  """SIGTERM/SIGINT: finish the current step, checkpoint, exit 0. A second one: exit now."""

  def __init__(self):
    self.requested: Optional[int] = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. some notebook runners)
        pass
    return self

  def _handle(self, signum, frame):
    if self.requested is not None:
      print(f"Second signal ({signal.Signals(signum).name}): exiting now.", flush=True)
      os._exit(128 + signum)
    self.requested = signum
    print(f"Received {signal.Signals(signum).name}: saving a checkpoint at the current "
          f"step, then exiting. Send it again to exit at once.", flush=True)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _nonfinite_message(nonfinite: dict, config, last_checkpoint: Optional[int]) -> str:
  hints = []
  if config.decoder.name == "per_pixel_sigma" and config.decoder.log_sigma_min is None:
    hints.append("per_pixel_sigma without a lower bound on log sigma lets the variance "
                 "collapse: set decoder.log_sigma_min (the paper uses -6)")
  hints.append(f"the learning rate may be too high (learning_rate={config.learning_rate})")
  where = (f"the last checkpoint (step {last_checkpoint}) is intact"
           if last_checkpoint is not None else "no checkpoint had been written yet")
  return (f"Non-finite loss or gradient at step {int(nonfinite['step'])}: "
          f"loss={float(nonfinite['loss'])}, rec={float(nonfinite['rec'])}, "
          f"kl={float(nonfinite['kl'])}, grad_norm={float(nonfinite['grad_norm'])}. "
          f"Likely cause: {'; or '.join(hints)}. Training stopped; {where} and nothing "
          f"was written after the failure. To skip such updates instead, set "
          f"--config.skip_nonfinite_updates=True.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains and evaluates per `config`, writing everything under `workdir`.

  Writes WORKDIR/checkpoints/, metrics.jsonl, TensorBoard event files,
  images/step_<N>_{samples,recons}.png and config.json. Resumes from the latest
  checkpoint in `workdir` if there is one. Returns the final train state.
  """
  workdir = os.path.abspath(workdir)
  devices = jax.devices()
  configuration.validate_config(config, num_devices=len(devices),
                                dataset_names=input_pipeline.DATASETS)
  source = input_pipeline.get_data_source(config.dataset)
  models.validate_image_shape(source.image_shape)
  os.makedirs(workdir, exist_ok=True)

  checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                            config.max_checkpoints_to_keep)
  checkpointing.check_workdir_config(workdir, config.to_dict(),
                                     has_checkpoints=bool(checkpointer.all_steps()))
  mesh = Mesh(np.asarray(devices), (DATA_AXIS,))
  trainer = Trainer(config, source.image_shape, mesh)
  state = trainer.init_state()
  restored, restored_step = checkpointer.restore_latest(state)
  if restored is not None:
    state = jax.device_put(restored, trainer.replicated)
    print(f"Resumed from the checkpoint at step {restored_step} in {checkpointer.directory}",
          flush=True)
  last_checkpoint = restored_step
  start_step = int(jax.device_get(state.step))

  batch_size = config.batch_size
  local_batch = batch_size // jax.process_count()
  num_test = source.num_examples["test"]
  if config.dataset.on_device:
    train_images = trainer.put_replicated(source.load_split("train"))
    if train_images.shape[0] < batch_size:
      raise configuration.ConfigError(
          f"batch_size: {batch_size} is larger than the training set "
          f"({train_images.shape[0]} examples)")
    test_images = source.load_split("test")
    eval_batches = lambda: _padded_batches(test_images, batch_size)
    image_examples = test_images[:config.num_image_samples]
  else:
    train_iter = source.batch_iterator("train", local_batch, seed=config.seed,
                                       shuffle=True, repeat=True, start_batch=start_step)
    per_process = math.ceil(num_test / jax.process_count())
    eval_batches = lambda: _padded_stream(
        source.batch_iterator("test", local_batch, seed=config.seed, shuffle=False,
                              repeat=False), local_batch,
        math.ceil(per_process / local_batch))
    image_examples = next(source.batch_iterator(
        "test", config.num_image_samples, seed=config.seed, shuffle=False, repeat=False))

  reporter = reporting.Reporter(workdir, config.num_train_steps)
  image_dir = os.path.join(workdir, "images")
  print(f"Training {config.decoder.name} VAE on {config.dataset.name} "
        f"{source.image_shape}, {len(devices)} device(s) ({jax.default_backend()}), "
        f"global batch {batch_size}, steps {start_step}->{config.num_train_steps}.",
        flush=True)

  def check_finite():
    nonfinite = jax.device_get(state.nonfinite)
    if nonfinite["step"] >= 0 and not config.skip_nonfinite_updates:
      raise NonFiniteError(_nonfinite_message(nonfinite, config, last_checkpoint))

  def save_checkpoint(step):
    nonlocal last_checkpoint
    check_finite()
    checkpointer.save(step, state)
    last_checkpoint = step

  step = start_step
  pending = []
  with _Preemption() as preemption:
    while step < config.num_train_steps:
      if config.dataset.on_device:
        state, metrics = trainer.train_on_device(state, train_images)
      else:
        stacked = np.stack([next(train_iter) for _ in range(config.steps_per_call)])
        state, metrics = trainer.train_on_batches(state, trainer.put_batches(stacked))
      step += config.steps_per_call
      pending.append(metrics)

      if step % config.log_every_steps == 0 or step == config.num_train_steps:
        check_finite()
        averaged = jax.tree.map(lambda *m: np.mean(m), *jax.device_get(pending))
        pending = []
        averaged["num_skipped"] = float(jax.device_get(state.num_skipped))
        averaged["steps_per_sec"] = reporter.progress(step, averaged)
        reporter.write(step, "train", averaged)
      if step % config.eval_every_steps == 0 or step == config.num_train_steps:
        check_finite()
        eval_metrics = trainer.evaluate(state, eval_batches())
        reporter.write(step, "eval", eval_metrics)
        print(f"eval step {step}: nelbo {eval_metrics['nelbo']:.2f} nats "
              f"({eval_metrics['bpd']:.4f} bits/dim)"
              + (f", discrete nelbo {eval_metrics['nelbo_discrete']:.2f}"
                 if "nelbo_discrete" in eval_metrics else ""), flush=True)
        if jax.process_index() == 0:
          trainer.write_images(state, image_examples, image_dir, step)
        reporter.flush()
      if step % config.checkpoint_every_steps == 0 or step == config.num_train_steps:
        save_checkpoint(step)
      if preemption.requested is not None:
        if last_checkpoint != step:
          save_checkpoint(step)
        checkpointer.close()
        reporter.close()
        print(f"Checkpoint at step {step} is written; exiting after "
              f"{signal.Signals(preemption.requested).name}. Restart with the same "
              f"--workdir to resume.", flush=True)
        sys.exit(0)

  checkpointer.close()
  reporter.close()
  return state
