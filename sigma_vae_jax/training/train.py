"""The training loop: `train_and_evaluate(config, workdir)`, with periodic
evaluation, images and checkpoints, and preemption handling.

The step math is in `train_step`, the jit/sharding wiring in `trainer`.

Exact resume by construction: the noise of step t is `fold_in(state.rng, t)`, the
data order of epoch e is a permutation keyed by (seed, e), and the running
average of sigma (and the EMA parameters) are part of the state, so a restarted
run replays exactly the steps an uninterrupted one would have taken.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from typing import Iterator, Optional

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from sigma_vae_jax import configuration
from sigma_vae_jax import likelihoods
from sigma_vae_jax import models
from sigma_vae_jax.data import dataset_fields
from sigma_vae_jax.data import input_pipeline
from sigma_vae_jax.training import checkpointing
from sigma_vae_jax.training import data_parallel
from sigma_vae_jax.training import progress
from sigma_vae_jax.training import reporting
from sigma_vae_jax.training import train_step
from sigma_vae_jax.training import trainer as trainer_lib
from sigma_vae_jax.training.train_step import TrainState


class NonFiniteError(RuntimeError):
  """A non-finite loss or gradient stopped training."""


def _padded_stream(iterator: Iterator[np.ndarray], batch_size: int, num_batches: int
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Pads a finite stream of process-local batches to exactly num_batches batches,
  so every process runs the same number of (collective) eval steps."""
  shape = None
  for _, batch in zip(range(num_batches), iterator):
    shape = batch.shape[1:]
    yield from trainer_lib.padded_batches(batch, batch_size)
    num_batches -= 1
  for _ in range(num_batches):
    yield np.zeros((batch_size,) + shape, np.uint8), np.zeros(batch_size, bool)


def _rows_of_process(batches: Iterator[tuple[np.ndarray, np.ndarray]]
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Global (data [B, ...], mask [B]) batches -> this process's rows [B/P, ...] of
  each: the process-local part `Trainer.global_array` expects (every process holds
  the whole test split with on-device or in-memory data)."""
  count, index = jax.process_count(), jax.process_index()
  for data, mask in batches:
    rows = len(data) // count
    yield (data[index * rows:(index + 1) * rows], mask[index * rows:(index + 1) * rows])


class _Preemption:
  """SIGTERM/SIGINT: finish the step in progress, checkpoint it, exit 0. A second one:
  exit now.

  One process: the loop sets `boundary` to the step its current call ends at *before*
  it checks `should_stop(step)` at the top of an iteration; a signal then records that
  step as `stop_step`, and the loop stops at the first check where step >= stop_step.
  Every check is either at the top of an iteration (step == the previous boundary) or
  after a call (step == boundary), so the loop stops exactly at the announced step.

  Several processes: each is signalled on its own (SLURM and TPU pods signal every
  host) but all must join the same (collective) checkpoint, so they agree at the next
  logging step (one all-gather there, no per-step host sync) and stop there when any
  process was signalled.
  """

  def __init__(self):
    self.requested: Optional[int] = None
    self.stop_step: Optional[int] = None
    self.boundary: int = 0
    self.stopping = False  # set where the loop stops for a signal (to this or any process)
    self._several = jax.process_count() > 1
    self._previous = {}

  def should_stop(self, step: int, at_log_step: bool = False) -> bool:
    """Whether the loop stops at `step` (checkpoint and exit follow)."""
    if not self._several:
      self.stopping = self.stop_step is not None and step >= self.stop_step
    elif at_log_step:
      flags = multihost_utils.process_allgather(np.int32(self.requested is not None))
      self.stopping = bool(np.any(flags))
    return self.stopping

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
    self.requested, self.stop_step = signum, self.boundary
    where = (f"step {self.stop_step} (the end of the step in progress)"
             if not self._several else
             "the next logging step, where all processes agree to stop")
    print(f"Received {signal.Signals(signum).name}: stopping at {where}, saving its "
          f"checkpoint, then exiting. Send it again to exit at once.", flush=True)

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

  Writes WORKDIR/checkpoints/ (the latest), checkpoints_best/ (the best eval ELBO),
  metrics.jsonl, TensorBoard event files, images/step_<N>_{samples,recons}.png and
  config.json. Resumes from the latest checkpoint in `workdir` if there is one.
  Returns the final train state.
  """
  workdir = os.path.abspath(workdir)
  devices = jax.devices()
  configuration.validate_config(config, num_devices=len(devices),
                                dataset_names=dataset_fields.DATASETS)
  source = input_pipeline.get_data_source(config.dataset)
  print(source.description(), flush=True)
  models.validate(config.model, source.image_shape)
  os.makedirs(workdir, exist_ok=True)

  checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                            config.max_checkpoints_to_keep)
  has_checkpoints = bool(checkpointer.all_steps())
  # Read before check_workdir_config rewrites config.json in today's layout.
  legacy = has_checkpoints and checkpointing.is_legacy_workdir(workdir)
  checkpointing.check_workdir_config(workdir, config.to_dict(),
                                     has_checkpoints=has_checkpoints)
  trainer = trainer_lib.Trainer(config, source.image_shape,
                                data_parallel.make_mesh(devices))
  state = trainer.init_state()
  restored, restored_step = train_step.restore_latest(checkpointer, state, legacy=legacy)
  if restored is not None:
    state = jax.device_put(restored, trainer.replicated)
    print(f"Resuming from step {restored_step} (checkpoint in {checkpointer.directory}).",
          flush=True)
  else:
    print(f"No checkpoint in {checkpointer.directory}: starting fresh at step 0.",
          flush=True)
  last_checkpoint = restored_step
  start_step = int(jax.device_get(state.step))
  best = (checkpointing.BestCheckpointer(os.path.join(workdir, checkpointing.BEST_DIRECTORY))
          if config.keep_best_checkpoint else None)

  batch_size = config.batch_size
  local_batch = batch_size // jax.process_count()
  num_test = source.num_examples["test"]
  if config.dataset.on_device:
    train_images = trainer.put_replicated(source.load_split("train"))
    if train_images.shape[0] < batch_size:
      raise configuration.ConfigError(
          f"batch_size: {batch_size} is larger than the training set "
          f"({train_images.shape[0]} examples)")
  else:
    train_iter = source.batch_iterator("train", local_batch, seed=config.seed,
                                       shuffle=True, repeat=True, start_batch=start_step)
  if config.dataset.on_device or source.in_memory:
    # Every process holds the test split: it evaluates its rows of the one-process
    # run's global batches, so each example gets the same evaluation noise (drawn
    # per batch position) whatever the process layout.
    test_images = source.load_split("test")
    eval_batches = lambda: _rows_of_process(
        trainer_lib.padded_batches(test_images, batch_size))
    image_examples = test_images[:config.num_image_samples]
  else:
    per_process = math.ceil(num_test / jax.process_count())
    eval_batches = lambda: _padded_stream(
        source.batch_iterator("test", local_batch, seed=config.seed, shuffle=False,
                              repeat=False), local_batch,
        math.ceil(per_process / local_batch))
    # The same first test images on every process (they are replicated).
    image_examples = next(source.batch_iterator(
        "test", config.num_image_samples, seed=config.seed, shuffle=False, repeat=False,
        process_index=0, process_count=1))

  # The evaluation network's sigma*^2 is fitted on these training batches (kept on
  # device) before each evaluation, where the config asks for it.
  eval_sigma_batches = ([trainer.shard_batch(b) for b in
                         trainer_lib.eval_sigma_train_batches(source, config)]
                        if trainer.fits_eval_sigma else [])

  reporter = reporting.Reporter(workdir, config.num_train_steps, start_step)
  image_dir = os.path.join(workdir, "images")
  print(f"Training {config.model.name} with the {config.decoder.name} decoder on {config.dataset.name} "
        f"{source.image_shape}, {len(devices)} device(s) ({jax.default_backend()}), "
        f"global batch {batch_size}, steps {start_step}->{config.num_train_steps}.",
        flush=True)
  if trainer.fits_eval_sigma:
    print(f"Evaluation sigma: the MSE of the evaluated network (EMA parameters if on, no "
          f"dropout) on {len(eval_sigma_batches)} training batches, refitted before "
          f"each evaluation (eval_sigma={config.eval_sigma!r}).", flush=True)
  if start_step >= config.num_train_steps:
    print(f"Already trained to step {start_step} (num_train_steps="
          f"{config.num_train_steps}): nothing to train; raise --config.num_train_steps "
          f"to train on.", flush=True)
  else:
    print(eval_legend(trainer.likelihood), flush=True)
  run_start = time.monotonic()
  last_eval = None

  def check_finite():
    nonfinite = jax.device_get(state.nonfinite)
    if nonfinite["step"] >= 0 and not config.skip_nonfinite_updates:
      raise NonFiniteError(_nonfinite_message(nonfinite, config, last_checkpoint))

  last_save_time = time.monotonic()

  def save_checkpoint(step):
    nonlocal last_checkpoint, last_save_time
    check_finite()
    checkpointer.save(step, state)
    last_checkpoint, last_save_time = step, time.monotonic()

  def checkpoint_time_due() -> bool:
    """Whether checkpoint_every_seconds have passed; process 0 decides for all, so
    every process joins the same (collective) save."""
    if config.checkpoint_every_seconds is None:
      return False
    due = time.monotonic() - last_save_time >= config.checkpoint_every_seconds
    if jax.process_count() > 1:
      due = bool(multihost_utils.broadcast_one_to_all(np.int32(due)))
    return due

  step = start_step
  pending = []
  with _Preemption() as preemption:
    preemption.boundary = step
    while step < config.num_train_steps:
      preemption.boundary = step + config.steps_per_call
      if preemption.should_stop(step):
        break
      if config.dataset.on_device:
        state, metrics = trainer.train_on_device(state, train_images)
      else:
        stacked = np.stack([next(train_iter) for _ in range(config.steps_per_call)])
        state, metrics = trainer.train_on_batches(state, trainer.put_batches(stacked))
      if step == start_step:
        # One wait after the first (compiling) call, so the first progress line
        # has a rate and an ETA; later steps run without host syncs.
        jax.block_until_ready(metrics)
        reporter.start_clock(step + config.steps_per_call)
      step += config.steps_per_call
      pending.append(metrics)

      at_log_step = step % config.log_every_steps == 0 or step == config.num_train_steps
      if at_log_step:
        check_finite()
        averaged = jax.tree.map(lambda *m: np.mean(m), *jax.device_get(pending))
        pending = []
        averaged["num_skipped"] = float(jax.device_get(state.num_skipped))
        averaged["steps_per_sec"] = reporter.progress(step, averaged)
        reporter.write(step, "train", averaged)
      if step % config.eval_every_steps == 0 or step == config.num_train_steps:
        check_finite()
        eval_state = trainer.evaluation_state(state, eval_sigma_batches)
        eval_metrics = trainer.evaluate(eval_state, eval_batches())
        reporter.write(step, "eval", eval_metrics)
        last_eval = step
        improved = best is not None and best.update(step, state, eval_metrics["nelbo"])
        print(eval_summary(step, eval_metrics, trainer.likelihood)
              + (" (best so far)" if improved else ""), flush=True)
        # Every process runs the (global) image computations; only process 0
        # writes the files (reporting.save_image_grid) and TensorBoard images.
        grids = trainer.write_images(eval_state, image_examples, image_dir, step)
        reporter.write_images(step, grids)
        reporter.flush()
      # Time-based checkpoints only at logging steps: a resumed run then averages
      # the same steps into each metrics row as an uninterrupted one.
      if (step % config.checkpoint_every_steps == 0 or step == config.num_train_steps
          or (at_log_step and checkpoint_time_due())):
        save_checkpoint(step)
      if preemption.should_stop(step, at_log_step):
        break
    if preemption.stopping and step < config.num_train_steps:
      if last_checkpoint != step:
        save_checkpoint(step)
      checkpointer.close()
      if best is not None:
        best.close()
      reporter.close()
      print(f"Checkpoint at step {step} is written in {checkpointer.directory}; exiting "
            f"after {_signal_name(preemption.requested)}. Restart with the same "
            f"--workdir to resume.", flush=True)
      sys.exit(0)

  checkpointer.close()
  if best is not None:
    best.close()
    best_step, best_nelbo = best.best()
    if best_step is not None:
      print(f"Best evaluation at step {best_step} (by the decoder's own -ELBO, "
            f"{best_nelbo:.2f} nats), kept in {best.directory} "
            f"(evaluate.load_run(workdir, checkpoint='best')).", flush=True)
  reporter.close()
  if step > start_step:
    print(outputs_summary(workdir, step, time.monotonic() - run_start, last_eval,
                          image_dir, has_best=best is not None), flush=True)
  return state


def _signal_name(signum: Optional[int]) -> str:
  """The signal's name, or where it went for a process that was not signalled itself."""
  return signal.Signals(signum).name if signum else "a signal to another process"


def outputs_summary(workdir: str, step: int, seconds: float, last_eval: Optional[int],
                    image_dir: str, *, has_best: bool = True) -> str:
  """The last console line of a run: how long it took and where its outputs are."""
  images = ""
  if last_eval is not None and os.path.isdir(image_dir):
    names = sorted(n for n in os.listdir(image_dir) if n.startswith(f"step_{last_eval}_"))
    if names:
      images = f", images/{{{','.join(names)}}}"
  return (f"Done: step {step} in {progress.format_seconds(seconds)}. Outputs in "
          f"{workdir}: checkpoints/{', checkpoints_best/' if has_best else ''}, "
          f"metrics.jsonl{images}, "
          f"config.json, TensorBoard events (tensorboard --logdir {workdir}).")


def eval_legend(likelihood) -> str:
  """One line at the start of a run saying what the eval lines' figures are."""
  chosen = "the best checkpoint is chosen by it"
  if likelihood.is_discrete:
    return (f"Eval lines: the test -ELBO under the decoder's own likelihood of the 8-bit "
            f"data, in nats per example and bits/dim (lower is better); {chosen}.")
  text = (f"Eval lines: the first figure is the test -ELBO under the decoder's own "
          f"likelihood, in nats per example (lower is better; a density of data scaled "
          f"to [0, 1], so its bits/dim can be negative); {chosen}.")
  if type(likelihood).discrete_nll is likelihoods.Likelihood.discrete_nll:
    return text
  return text + (" After '|': the same model discretized over the 256 levels of "
                 "8-bit data, bits/dim comparable across decoders and with the "
                 "literature.")


def eval_summary(step: int, metrics: dict, likelihood) -> str:
  """The console line of an evaluation. First (the headline): the -ELBO under the
  decoder's own likelihood, by which the best checkpoint is chosen (`nelbo`); for
  continuous decoders, the density of data scaled to [0, 1]. Then, for continuous
  decoders with an 8-bit version, that discretized -ELBO (`nelbo_discrete`), which
  compares across decoders and with the literature."""
  head = (f"eval step {step}: -ELBO {metrics['nelbo']:.2f} nats/example, "
          f"{metrics['bpd']:.4f} bits/dim")
  if likelihood.is_discrete:
    return head + " (8-bit data)"
  if "bpd_discrete" in metrics:
    return head + (f" (density, data in [0, 1]) | 8-bit data: "
                   f"{metrics['nelbo_discrete']:.2f} nats, {metrics['bpd_discrete']:.4f} "
                   f"bits/dim (discretized)")
  return head + (f" ({likelihood.name}: continuous, data in [0, 1]; no 8-bit "
                 f"likelihood)")
