"""MNIST (TFDS `mnist`: 60,000 train / 10,000 test, 28x28x1 grayscale, not binarised)."""

import importlib.util
import os


def _default():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py")
  spec = importlib.util.spec_from_file_location("sigma_vae_configs_default", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config():
  config = _default().get_config()
  config.dataset.name = "mnist"
  config.num_train_steps = 9_400  # ~10 epochs at batch 64.
  config.eval_every_steps = 1_000
  config.checkpoint_every_steps = 1_000
  return config
