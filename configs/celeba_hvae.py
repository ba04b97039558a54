"""The paper's 15-layer hierarchical VAE on CelebA at 32x32 (App. B, Table 2).

As configs/cifar10_hvae.py (the reference's model and training settings: softplus
log-variances, heads as large as the latent maps, per-example free bits, learning-rate
decay, no clipping or skipped updates), for 40k steps; the data as
configs/celeba.py (148-pixel centre crop resized to 32x32, streamed). Paper, Table 2
(optimal sigma): -8446 nats, FID 60.3.
"""

import os

from sigma_vae_jax import configuration


def get_config():
  # The CIFAR-10 model and training settings, on CelebA's 148-pixel centre crop at 32x32.
  config = configuration.load_config_file(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar10_hvae.py"))
  config.dataset.name = "celeba"
  config.dataset.center_crop = 148
  config.dataset.image_size = (32, 32)
  config.dataset.on_device = False
  config.num_train_steps = 40_000
  return config
