"""SVHN (TFDS `svhn_cropped`: 73,257 train / 26,032 test, 32x32x3).

`--config=configs/svhn.py` trains on 32x32 images; `--config=configs/svhn.py:28`
resizes to 28x28 on the host, as the sigma-VAE authors' release does.
"""

import importlib.util
import os


def _default():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py")
  spec = importlib.util.spec_from_file_location("sigma_vae_configs_default", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(image_size=None):
  """image_size: None (32x32) or a side length as a string, e.g. "28"."""
  config = _default().get_config()
  config.dataset.name = "svhn"
  if image_size:
    config.dataset.image_size = (int(image_size), int(image_size))
  config.num_train_steps = 11_500  # ~10 epochs at batch 64.
  config.eval_every_steps = 1_000
  config.checkpoint_every_steps = 1_000
  return config
