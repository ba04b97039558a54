"""Model registry: `config.model.name` -> the module that builds that model.

Every model implements the contract of `models.base` (one forward pass returning
`ModelOutput`, plus `reconstruct` and `sample`). Adding a model = one module in
this package with `build`, `validate` and `default_config`, plus one entry here.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional, Sequence

import flax.linen as nn

from sigma_vae_jax.models.base import LatentGroup, ModelOutput

# name -> module path (imported on first use, so unused models cost nothing).
MODELS = {
    "conv_vae": "sigma_vae_jax.models.conv_vae",
    "hvae": "sigma_vae_jax.models.hvae",
    "svg_lp": "sigma_vae_jax.models.svg_lp",
}
DEFAULT_MODEL = "conv_vae"


def model_module(name: str) -> ModuleType:
  """The module implementing model `name`; ValueError naming `model.name` if unknown."""
  if name not in MODELS:
    raise ValueError(f"model.name: unknown model {name!r}; choose one of {sorted(MODELS)}")
  return importlib.import_module(MODELS[name])


def build_model(model_config, data_shape: Sequence[int], num_outputs: int) -> nn.Module:
  """The model of `model_config.name` for examples of `data_shape` (no batch axis)
  whose likelihood reads `num_outputs` raw channels per element."""
  return model_module(model_config.name).build(model_config, tuple(data_shape), num_outputs)


def validate(model_config, data_shape: Optional[Sequence[int]] = None) -> None:
  """Raises ValueError, its message starting with the config field at fault, if the
  model's fields are invalid or (given one example's `data_shape`) it cannot take
  this data."""
  model_module(model_config.name).validate(
      model_config, None if data_shape is None else tuple(data_shape))


def validate_image_size(model_config, size: Sequence[int]) -> None:
  """Checks a configured dataset.image_size (H, W) before any data is read, for
  models that constrain it (`validate_image_size` in their module)."""
  check = getattr(model_module(model_config.name), "validate_image_size", None)
  if check is not None:
    check(model_config, tuple(size))


__all__ = ["MODELS", "DEFAULT_MODEL", "LatentGroup", "ModelOutput", "build_model",
           "model_module", "validate"]
