"""CelebA (TFDS `celeb_a`: 162,770 train / 19,962 test, 218x178x3).

Each image is centre-cropped to 148x148 and resized (antialiased) to 32x32 on the host;
`--config=configs/celeba.py:64` gives 64x64 images. The dataset streams through
tf.data (`dataset.on_device=False`): 64x64 CelebA is ~2 GB as uint8.

TFDS's CelebA download (Google Drive) often fails; see the README's Datasets section
for preparing it by hand.
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
  """image_size: None (32x32) or a side length as a string, e.g. "64"."""
  config = _default().get_config()
  config.dataset.name = "celeba"
  # Square centre crop (pixels) before resizing: keeps the face, drops the background.
  config.dataset.center_crop = 148
  size = int(image_size) if image_size else 32
  config.dataset.image_size = (size, size)
  config.dataset.on_device = False
  config.num_train_steps = 12_700  # ~5 epochs at batch 64.
  config.eval_every_steps = 1_000
  config.checkpoint_every_steps = 1_000
  return config
