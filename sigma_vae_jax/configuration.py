"""Config validation at start-up: every error names the config field at fault.

Runs before any data loading or compilation, so a bad launch fails in seconds.
"""

from __future__ import annotations

import math
import importlib.util
import os
from typing import Sequence

from sigma_vae_jax import likelihoods
from sigma_vae_jax import models
from sigma_vae_jax.objectives import FREE_BITS_RULES

# Fields that define the model and its checkpoint layout: a workdir written with
# other values for any of these cannot be resumed (see `checkpointing`).
STRUCTURAL_FIELDS = ("model", "decoder", "dataset.name", "dataset.image_size")
# ...except these, which change how the networks are computed, not their
# parameters: a run may resume with other values (e.g. bfloat16 on a new machine).
COMPUTE_FIELDS = ("model.conv_impl", "model.dtype", "model.remat",
                  # Earlier versions' spelling of model.conv_impl.
                  "model.fast_encoder", "model.fast_upsample", "model.fast_output")
_LEGACY_CONV_FLAGS = ("fast_encoder", "fast_upsample", "fast_output")
COMPUTE_DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("adam", "adamax", "sgd")
# How the evaluation sigma of the optimal-sigma decoders is set (default_config.py).
EVAL_SIGMA_RULES = ("auto", "fit", "running_average")
# decoder.log_sigma_min below this lets float32 exp(-log_sigma) overflow (losses).
_LOWEST_LOG_SIGMA_MIN = -80.0


# The fields that take None (each documented so in default_config.py); `--config.FIELD=None`
# sets any field to None on the command line and validate_config refuses it elsewhere.
NULLABLE_FIELDS = (
    "dataset.data_dir", "dataset.image_size", "dataset.center_crop", "dataset.manual_dir",
    "dataset.clip_length", "dataset.test_path", "decoder.beta", "decoder.sigma_axes",
    "decoder.log_sigma_min", "decoder.log_sigma_max", "grad_clip_norm",
    "skip_update_grad_norm", "ema_decay", "checkpoint_every_seconds",
    "learning_rate_decay", "learning_rate_floor")


def nullable_fields(config) -> tuple[str, ...]:
  """NULLABLE_FIELDS plus the `model.*` fields that config.model.name's module lists
  in its own NULLABLE_FIELDS (a model's fields live with the model)."""
  module = models.model_module(config.model.name)
  return NULLABLE_FIELDS + tuple(f"model.{name}"
                                 for name in getattr(module, "NULLABLE_FIELDS", ()))


class ConfigError(ValueError):
  """An invalid config value; the message starts with the field name."""


def _require(condition: bool, field: str, message: str) -> None:
  if not condition:
    raise ConfigError(f"{field}: {message}")


def validate_config(config, *, num_devices: int, dataset_names: Sequence[str]) -> None:
  """Raises ConfigError naming the first invalid field of `config`."""
  _check_no_unexpected_none(config)
  dec = config.decoder
  _require(dec.name in likelihoods.LIKELIHOODS, "decoder.name",
           f"unknown decoder {dec.name!r}; choose one of {sorted(likelihoods.LIKELIHOODS)}")
  _require(config.dataset.name in dataset_names, "dataset.name",
           f"unknown dataset {config.dataset.name!r}; choose one of {sorted(dataset_names)}")

  if dec.name in likelihoods.LIKELIHOODS_WITH_BETA:
    _require(dec.beta is not None and dec.beta > 0, "decoder.beta",
             f"decoder {dec.name!r} needs a positive KL weight beta; got {dec.beta}")
  else:
    _require(dec.beta is None, "decoder.beta",
             f"beta={dec.beta} is given but decoder {dec.name!r} ignores it (only "
             f"{list(likelihoods.LIKELIHOODS_WITH_BETA)} use a KL weight); unset it or use "
             f"decoder.name='beta'")
  if dec.get("sigma_axes") is not None:
    axes = tuple(dec.sigma_axes)
    _require(dec.name == "optimal_sigma", "decoder.sigma_axes",
             f"only the optimal_sigma decoder shares sigma over chosen axes; got "
             f"decoder {dec.name!r}")
    _require(0 in axes and len(set(axes)) == len(axes)
             and all(isinstance(a, int) and a >= 0 for a in axes), "decoder.sigma_axes",
             f"must be distinct axes of the data ([batch, height, width, channel], or "
             f"[batch, time, height, width, channel] for video) including the batch axis "
             f"0 (one sigma per image is decoder.name='optimal_sigma_per_image'); got "
             f"{axes}")
  _require(dec.scale in likelihoods.SCALE_MODES, "decoder.scale",
           f"must be one of {list(likelihoods.SCALE_MODES)}; got {dec.scale!r}")
  _require(0.0 <= dec.sigma_ema_decay < 1.0, "decoder.sigma_ema_decay",
           f"must be in [0, 1); got {dec.sigma_ema_decay}")
  _require(dec.num_mixtures >= 1, "decoder.num_mixtures",
           f"must be >= 1; got {dec.num_mixtures}")
  _require(dec.student_t_df > 0, "decoder.student_t_df",
           f"must be > 0; got {dec.student_t_df}")
  if dec.log_sigma_min is not None:
    _require(math.isfinite(dec.log_sigma_min) and dec.log_sigma_min >= _LOWEST_LOG_SIGMA_MIN,
             "decoder.log_sigma_min",
             f"the soft lower bound on every learned or closed-form log sigma must be a "
             f"number >= {_LOWEST_LOG_SIGMA_MIN} (float32 needs exp(-log_sigma) finite; "
             f"the paper uses -6) or None for no bound; got {dec.log_sigma_min}")
  if dec.log_sigma_min is not None and dec.log_sigma_max is not None:
    _require(dec.log_sigma_min < dec.log_sigma_max, "decoder.log_sigma_min",
             f"must be below decoder.log_sigma_max ({dec.log_sigma_max}); got "
             f"{dec.log_sigma_min}")

  _require(config.model.name in models.MODELS, "model.name",
           f"unknown model {config.model.name!r}; choose one of {sorted(models.MODELS)}")
  try:
    models.validate(config.model)
  except ValueError as e:  # the message starts with the field's name
    raise ConfigError(str(e)) from None
  _require(config.model.dtype in COMPUTE_DTYPES, "model.dtype",
           f"must be one of {COMPUTE_DTYPES}; got {config.model.dtype!r}")
  _require(config.optimizer in OPTIMIZERS, "optimizer",
           f"must be one of {OPTIMIZERS}; got {config.optimizer!r}")
  for field in ("grad_clip_norm", "skip_update_grad_norm"):
    _require(config[field] is None or config[field] > 0, field,
             f"must be positive or None; got {config[field]}")
  _require(config.ema_decay is None or 0.0 <= config.ema_decay < 1.0, "ema_decay",
           f"must be in [0, 1) or None; got {config.ema_decay}")
  _require(config.free_bits >= 0, "free_bits", f"must be >= 0; got {config.free_bits}")
  _require(config.eval_sigma in EVAL_SIGMA_RULES, "eval_sigma",
           f"must be one of {EVAL_SIGMA_RULES}; got {config.eval_sigma!r}")
  _require(config.free_bits_rule in FREE_BITS_RULES, "free_bits_rule",
           f"must be one of {FREE_BITS_RULES}; got {config.free_bits_rule!r}")
  _require(config.learning_rate_decay is None or 0.0 < config.learning_rate_decay <= 1.0,
           "learning_rate_decay",
           f"must be in (0, 1] or None; got {config.learning_rate_decay}")
  _require(config.learning_rate_floor is None or config.learning_rate_floor >= 0,
           "learning_rate_floor",
           f"must be >= 0 or None; got {config.learning_rate_floor}")

  for field in ("batch_size", "num_train_steps", "log_every_steps", "eval_every_steps",
                "checkpoint_every_steps", "max_checkpoints_to_keep", "steps_per_call",
                "num_image_samples", "eval_sigma_train_batches"):
    value = config[field]
    _require(isinstance(value, int) and value >= 1, field,
             f"must be a positive integer; got {value!r}")
  _require(config.checkpoint_every_seconds is None or config.checkpoint_every_seconds > 0,
           "checkpoint_every_seconds",
           f"must be positive or None; got {config.checkpoint_every_seconds!r}")
  _require(config.learning_rate > 0, "learning_rate",
           f"must be positive; got {config.learning_rate}")
  _require(config.batch_size % num_devices == 0, "batch_size",
           f"the global batch ({config.batch_size}) must be divisible by the number "
           f"of devices ({num_devices})")
  for field in ("num_train_steps", "log_every_steps", "eval_every_steps",
                "checkpoint_every_steps"):
    _require(config[field] % config.steps_per_call == 0, field,
             f"must be a multiple of steps_per_call ({config.steps_per_call}); got "
             f"{config[field]}")

  size = config.dataset.image_size
  if size is not None:
    _require(len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size),
             "dataset.image_size", f"must be (height, width); got {size!r}")
    try:
      models.validate_image_size(config.model, size)
    except ValueError as e:
      raise ConfigError(str(e)) from None
  _require(0.0 < config.dataset.test_fraction < 1.0, "dataset.test_fraction",
           f"must be in (0, 1); got {config.dataset.test_fraction}")


def _check_no_unexpected_none(config) -> None:
  def leaves(node, prefix=""):
    for key, value in node.items():
      if hasattr(value, "items"):
        yield from leaves(value, f"{prefix}{key}.")
      else:
        yield f"{prefix}{key}", value
  nullable = nullable_fields(config)
  for name, value in leaves(config):
    _require(value is not None or name in nullable, name,
             f"needs a value, not None (the fields that take None: "
             f"{', '.join(nullable)})")


def structural_differences(saved: dict, current: dict) -> list[str]:
  """Dotted names of STRUCTURAL_FIELDS leaves that differ between two config dicts."""
  def flatten(d, prefix=""):
    out = {}
    for key, value in d.items():
      name = f"{prefix}{key}"
      if isinstance(value, dict):
        out.update(flatten(value, name + "."))
      else:
        out[name] = list(value) if isinstance(value, tuple) else value
    return out

  a, b = flatten(saved), flatten(current)
  names = sorted(set(a) | set(b))
  return [n for n in names
          if any(n == f or n.startswith(f + ".") for f in STRUCTURAL_FIELDS)
          and n not in COMPUTE_FIELDS and a.get(n) != b.get(n)]


def upgrade_config_dict(saved: dict) -> dict:
  """A config dict written by any version, in today's layout.

  Earlier versions had no `model.name` (always the conv VAE) and spelled
  `model.conv_impl` as three flags (`fast_encoder`, `fast_upsample`,
  `fast_output`): all True is "fast", anything else "xla" (the same function); and
  no `dataset.bair_view` / `dataset.clip_selection` (BAIR's "image_main" camera,
  clips of every window).
  """
  saved = {k: dict(v) if isinstance(v, dict) else v for k, v in saved.items()}
  model = saved.setdefault("model", {})
  model.setdefault("name", models.DEFAULT_MODEL)
  legacy = [model.pop(flag) for flag in _LEGACY_CONV_FLAGS if flag in model]
  if legacy and "conv_impl" not in model:
    model["conv_impl"] = "fast" if all(legacy) else "xla"
  dataset = saved.get("dataset")
  if isinstance(dataset, dict) and "bair_view" not in dataset:
    # Runs written before these fields read BAIR's main camera and every
    # non-overlapping window (numpy_videos too); their evaluation keeps reading that.
    dataset.setdefault("clip_selection", "windows")
    if dataset.get("name") == "bair":
      dataset["bair_view"] = "image_main"
  return saved


def validate_sigma_axes(decoder_config, target_shape) -> None:
  """decoder.sigma_axes against the rank of what the likelihood scores (known once
  the model is built): raises ConfigError naming the field."""
  axes = decoder_config.get("sigma_axes")
  if axes is None:
    return
  rank = 1 + len(target_shape)
  _require(max(axes) < rank, "decoder.sigma_axes",
           f"the model's target is [batch, {', '.join(map(str, target_shape))}] "
           f"(rank {rank}), so axes must be below {rank}; got {tuple(axes)}")


def load_config_file(path: str):
  """`get_config()` of a config file (e.g. configs/svhn.py) loaded by its path, from
  any working directory; config files use it to build on a sibling config."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path} does not exist")
  name = "_sigma_vae_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
