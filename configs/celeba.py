"""CelebA (TFDS `celeb_a`: 162,770 train / 19,962 test, 218x178x3).

Each image is centre-cropped to 148x148 and resized (antialiased) to 32x32 on the host;
`--config=configs/celeba.py:64` gives 64x64 images. The dataset streams through
tf.data (`dataset.on_device=False`): 64x64 CelebA is ~2 GB as uint8.

TFDS's CelebA download (Google Drive) often fails; see the README's Datasets section
for preparing it by hand.
"""

from sigma_vae_jax import default_config


def get_config(image_size=None):
  """image_size: None (32x32) or a side length as a string, e.g. "64"."""
  config = default_config.get_config()
  config.dataset.name = "celeba"
  # Square centre crop (pixels) before resizing: keeps the face, drops the background.
  config.dataset.center_crop = 148
  size = int(image_size) if image_size else 32
  config.dataset.image_size = (size, size)
  config.dataset.on_device = False
  config.batch_size = 128  # Paper App. B: batch 128, 10 epochs, Adam 1e-3, latent 20.
  config.num_train_steps = 12_700  # 10 epochs of 162,770 images.
  config.eval_every_steps = 1_000
  config.checkpoint_every_steps = 1_000
  return config
