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
    # Two stages (the first strides): a learned conditional prior and N(0, I).
    "hvae": {"fields": {"num_stages": 2, "filters": 8, "blocks_per_stage": 1,
                        "latent_channels": 4, "latent_channel_step": 2,
                        "downsample_stages": (1,)},
             "data_shape": (8, 8, 3)},
    # 8x8 frames (one VGG stage at 1/16 width), 2 context + 2 predicted frames.
    "svg_lp": {"fields": {"num_stages": 1, "width": 1 / 16, "g_dim": 8, "z_dim": 4,
                          "rnn_size": 8, "n_past": 2, "n_future": 2, "n_eval": 4},
               "data_shape": (4, 8, 8, 3),
               # Its convs' biases feed batch norm, so their true gradient is 0 and
               # Adam turns float noise into full-size steps (different on 1 and 8
               # devices); SGD steps are proportional to the gradients compared.
               "sharded_overrides": {"optimizer": "sgd", "learning_rate": 0.1},
               # Batch norm statistics summed in another order on 8 devices.
               "sharded_rtol": 1e-4},
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


def sharded_overrides(model_name: str) -> dict:
  """Config overrides for comparing 8 devices with 1 (tests/sharded_vs_single.py)."""
  return TINY[model_name].get("sharded_overrides", {})


def sharded_rtol(model_name: str) -> float:
  """Relative tolerance of 8 devices against 1 (float reduction order only)."""
  return TINY[model_name].get("sharded_rtol", 1e-5)


def data_shape(model_name: str) -> tuple:
  return TINY[model_name]["data_shape"]


def context(model_name: str, data: np.ndarray):
  """The context frames `sample` conditions on (video models), else None."""
  n = models.model_module(model_name).default_config().get("n_past")
  n = TINY[model_name]["fields"].get("n_past", n)
  return None if n is None else data[:, :n]


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
