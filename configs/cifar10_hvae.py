"""The paper's 15-layer hierarchical VAE on CIFAR-10 (App. B, Table 2).

The deep-VAE baseline of Maaløe et al. (2019) without skip connections
(`sigma_vae_jax/models/hvae.py`) with the optimal sigma decoder, trained as the
paper did with BIVA's defaults: 30k steps of batch 48, Adamax at 2e-3, free bits
2 nats per latent group (training only), dropout 0.5, an EMA of the parameters
(0.9995) for evaluation, gradient-norm clipping, and updates skipped (and counted)
when the gradient norm is non-finite or above a threshold. Paper, Table 2
(optimal sigma): -5677 nats, FID 101.4. Other decoders: `--config.decoder.name=...`
(the original's own is `logistic_mixture`).
"""

from sigma_vae_jax import default_config
from sigma_vae_jax.models import hvae


def get_config():
  config = default_config.get_config()
  config.dataset.name = "cifar10"
  config.model = hvae.default_config()
  config.decoder.name = "optimal_sigma"
  config.batch_size = 48
  config.learning_rate = 2e-3
  config.num_train_steps = 30_000
  # The deep-VAE training options of the reference implementation.
  config.optimizer = "adamax"
  config.ema_decay = 0.9995
  config.free_bits = 2.0  # nats per latent group (z1..z15), training loss only
  config.grad_clip_norm = 200.0
  config.skip_update_grad_norm = 1e4
  config.eval_every_steps = 2_000
  config.checkpoint_every_steps = 2_000
  return config
