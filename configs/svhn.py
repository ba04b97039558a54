"""SVHN (TFDS `svhn_cropped`: 73,257 train / 26,032 test, 32x32x3).

`--config=configs/svhn.py` trains on 32x32 images; `--config=configs/svhn.py:28`
resizes to 28x28 on the host, as the sigma-VAE authors' release does.
"""

from sigma_vae_jax import default_config


def get_config(image_size=None):
  """image_size: None (32x32) or a side length as a string, e.g. "28"."""
  config = default_config.get_config()
  config.dataset.name = "svhn"
  if image_size:
    config.dataset.image_size = (int(image_size), int(image_size))
  config.batch_size = 128  # Paper App. B: batch 128, 10 epochs, Adam 1e-3, latent 20.
  config.num_train_steps = 5_720  # 10 epochs of 73,257 images.
  config.eval_every_steps = 1_000
  config.checkpoint_every_steps = 1_000
  return config
