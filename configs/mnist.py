"""MNIST (TFDS `mnist`: 60,000 train / 10,000 test, 28x28x1 grayscale, not binarised)."""

from sigma_vae_jax import default_config


def get_config():
  config = default_config.get_config()
  config.dataset.name = "mnist"
  config.batch_size = 128  # Paper App. B: batch 128, 10 epochs, Adam 1e-3, latent 20.
  config.num_train_steps = 4_680  # 10 epochs of 60,000 images.
  config.eval_every_steps = 1_000
  config.checkpoint_every_steps = 1_000
  return config
