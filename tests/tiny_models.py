"""A tiny configuration of every registered model, for the contract tests.

Adding a model to `sigma_vae_jax.models.MODELS` means adding its entry here
(test_model_contract.py fails until then): model fields small enough for a CPU test
and the shape of one input example.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sigma_vae_jax import default_config  # noqa: E402
from sigma_vae_jax import models  # noqa: E402

TINY = {
    "conv_vae": {"fields": {"latent_dim": 4, "base_channels": 4}, "data_shape": (8, 8, 3)},
}


def tiny_config(model_name: str, decoder_name: str = "optimal_sigma", **overrides):
  """The default config with model `model_name` at its tiny size."""
  config = default_config.get_config()
  config.model = models.model_module(model_name).default_config()
  for key, value in TINY[model_name]["fields"].items():
    config.model[key] = value
  config.decoder.name = decoder_name
  if decoder_name == "beta":
    config.decoder.beta = 0.1
  config.batch_size = 8
  for key, value in overrides.items():
    config[key] = value
  return config


def data_shape(model_name: str) -> tuple:
  return TINY[model_name]["data_shape"]


def smooth_data(model_name: str, n: int = 32, seed: int = 0) -> np.ndarray:
  """uint8 [n, *data_shape]: smooth colour ramps (learnable in a few steps); for
  clips [T, H, W, C], the ramp drifts along time."""
  shape = data_shape(model_name)
  rng = np.random.default_rng(seed)
  h, w, c = shape[-3:]
  yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
  a = rng.uniform(0.2, 0.8, (n, 1, 1, c))
  b = rng.uniform(-0.5, 0.5, (n, 1, 1, c))
  if len(shape) == 3:
    images = a + b * (yy[None, ..., None] - 0.5) + b * (xx[None, ..., None] - 0.5)
  else:
    t = np.arange(shape[0])[None, :, None, None, None] / max(shape[0], 1)
    images = (a[:, None] + b[:, None] * (yy[None, None, ..., None] - 0.5 + 0.3 * t)
              + b[:, None] * (xx[None, None, ..., None] - 0.5))
  return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
