"""CIFAR-10 (TFDS `cifar10`: 50,000 train / 10,000 test, 32x32x3)."""

from sigma_vae_jax import default_config


def get_config():
  config = default_config.get_config()
  config.dataset.name = "cifar10"
  config.batch_size = 128  # Paper App. B: batch 128, 10 epochs, Adam 1e-3, latent 20.
  config.num_train_steps = 3_900  # 10 epochs of 50,000 images.
  config.eval_every_steps = 1_000
  config.checkpoint_every_steps = 1_000
  return config
