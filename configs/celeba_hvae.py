"""The paper's 15-layer hierarchical VAE on CelebA at 32x32 (App. B, Table 2).

As configs/cifar10_hvae.py (model and training settings), for 40k steps; the data as
configs/celeba.py (148-pixel centre crop resized to 32x32, streamed). Paper, Table 2
(optimal sigma): -8446 nats, FID 60.3.
"""

from sigma_vae_jax import default_config
from sigma_vae_jax.models import hvae


def get_config():
  config = default_config.get_config()
  config.dataset.name = "celeba"
  config.dataset.center_crop = 148
  config.dataset.image_size = (32, 32)
  config.dataset.on_device = False
  config.model = hvae.default_config()
  config.decoder.name = "optimal_sigma"
  config.batch_size = 48
  config.learning_rate = 2e-3
  config.num_train_steps = 40_000
  # Trainer fields of the hierarchical VAE (plain assignment creates them where
  # default_config does not have them yet).
  config.optimizer = "adamax"
  config.ema_decay = 0.9995
  config.free_bits = 2.0  # nats per latent group (z1..z15), training loss only
  config.grad_clip_norm = 200.0
  config.skip_update_grad_norm = 1e4
  config.eval_every_steps = 2_000
  config.checkpoint_every_steps = 2_000
  return config
