"""Loading a finished training run for evaluation: its config (WORKDIR/config.json),
a checkpoint (latest or best), the evaluation sigma its training evaluations used, and
its test data.

`load_run(workdir)` returns (config, trainer, state), what every function of
`sigma_vae_jax.evaluation` takes; the state is the one training evaluates (EMA
parameters when enabled, the fitted evaluation sigma where `config.eval_sigma` says so).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Optional

import jax
import ml_collections
import numpy as np

from sigma_vae_jax import configuration
from sigma_vae_jax import default_config
from sigma_vae_jax import models
from sigma_vae_jax.data import input_pipeline
from sigma_vae_jax.training import checkpointing
from sigma_vae_jax.training import train_step
from sigma_vae_jax.training import trainer as trainer_lib

# Which checkpoint of a run `load_run` restores.
CHECKPOINTS = ("latest", "best")

# Config fields saved as JSON lists that the code expects as tuples.
_TUPLE_FIELDS = (("decoder", "sigma_axes"), ("dataset", "image_size"))


def config_from_json(path: str) -> ml_collections.ConfigDict:
  """WORKDIR/config.json -> ConfigDict (JSON lists back to tuples where needed).

  Configs of earlier versions are upgraded (`configuration.upgrade_config_dict`);
  fields added to the defaults since the run was written take their defaults.
  """
  with open(path) as f:
    saved = configuration.upgrade_config_dict(json.load(f))
  defaults = default_config.get_config().to_dict()
  defaults["model"] = models.model_module(saved["model"]["name"]).default_config().to_dict()
  d = _with_defaults(saved, defaults)
  for section, key in _TUPLE_FIELDS:
    value = d.get(section, {}).get(key)
    if isinstance(value, list):
      d[section][key] = tuple(value)
  return ml_collections.ConfigDict(d)


def _with_defaults(saved: dict, defaults: dict) -> dict:
  merged = dict(defaults)
  for key, value in saved.items():
    if isinstance(value, dict) and isinstance(defaults.get(key), dict):
      value = _with_defaults(value, defaults[key])
    merged[key] = value
  return merged


def load_run(workdir: str, *, image_shape=None, checkpoint: str = "latest",
             fit_eval_sigma: bool = True
             ) -> tuple[ml_collections.ConfigDict, trainer_lib.Trainer, train_step.TrainState]:
  """Rebuilds (config, trainer, state) from WORKDIR/config.json and a checkpoint.

  checkpoint: "latest" (WORKDIR/checkpoints/) or "best" (WORKDIR/checkpoints_best/,
  the step with the best eval ELBO, written when `keep_best_checkpoint` is on).
  The trainer's mesh spans all devices. image_shape (H, W, C) defaults to the
  dataset's (read from the prepared dataset of config.dataset).
  The returned state is the one training evaluates (`evaluation_state`): where the
  run's config refits the evaluation sigma (`trainer.fits_eval_sigma`), its
  likelihood state holds sigma*^2 fitted to the evaluation network on the run's
  training data, as training's own evaluations do; fit_eval_sigma=False returns
  the checkpoint as saved (sigma: its running average).
  Raises FileNotFoundError without config.json, CheckpointError without a checkpoint,
  ValueError for another `checkpoint`.
  """
  if checkpoint not in CHECKPOINTS:
    raise ValueError(f"checkpoint must be one of {CHECKPOINTS}; got {checkpoint!r}")
  workdir = os.path.abspath(workdir)
  path = os.path.join(workdir, checkpointing.CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: {workdir} is not a training workdir "
                            f"(run sigma_vae_jax.main --workdir={workdir} first).")
  config = config_from_json(path)
  if image_shape is None:
    image_shape = input_pipeline.get_data_source(config.dataset).image_shape
  trainer = trainer_lib.Trainer(config, image_shape, trainer_lib.make_mesh())
  if checkpoint == "best":
    directory = os.path.join(workdir, checkpointing.BEST_DIRECTORY)
    if not os.path.isdir(directory):
      raise checkpointing.CheckpointError(
          f"No best checkpoint in {directory} (written by runs with "
          f"keep_best_checkpoint=True at their evaluations).")
    checkpointer = checkpointing.BestCheckpointer(directory)
    restore = checkpointer.restore
  else:
    directory = os.path.join(workdir, "checkpoints")
    checkpointer = checkpointing.Checkpointer(directory, config.max_checkpoints_to_keep)
    restore = functools.partial(train_step.restore_latest, checkpointer,
                                legacy=checkpointing.is_legacy_workdir(workdir))
  try:
    state, _ = restore(trainer.init_state())
  finally:
    checkpointer.close()
  if state is None:
    raise checkpointing.CheckpointError(f"No checkpoint in {directory}.")
  state = jax.device_put(state, trainer.replicated)
  if fit_eval_sigma:
    state = evaluation_state(config, trainer, state)
  return config, trainer, state


def evaluation_state(config, trainer: trainer_lib.Trainer, state: train_step.TrainState
                     ) -> train_step.TrainState:
  """`state` with the evaluation sigma that training's evaluations use: where
  `trainer.fits_eval_sigma`, fitted to the evaluation network on the
  `trainer_lib.eval_sigma_train_batches` of config.dataset's training split (never
  its test split); otherwise `state` itself."""
  if not trainer.fits_eval_sigma:
    return state
  source = input_pipeline.get_data_source(config.dataset)
  batches = trainer_lib.eval_sigma_train_batches(source, config)
  return trainer.evaluation_state(state, [trainer.shard_batch(b) for b in batches])


def load_test_images(config, num_examples: Optional[int] = None) -> np.ndarray:
  """The first num_examples (all: None) uint8 test images of config.dataset."""
  images = input_pipeline.get_data_source(config.dataset).load_split("test")
  return images if num_examples is None else images[:num_examples]
