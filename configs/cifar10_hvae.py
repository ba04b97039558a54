"""The paper's 15-layer hierarchical VAE on CIFAR-10 (App. B, Table 2).

The deep-VAE baseline of Maaløe et al. (2019) without skip connections
(`sigma_vae_jax/models/hvae.py`) with the optimal sigma decoder, trained as the
paper did with the defaults of BIVA's `run_deepvae.py`: 30k steps of batch 48,
Adamax at 2e-3 decayed by 0.999999 per update (floor 1e-4), free bits of 2 nats per
latent group on each example's one-sample KL (training only), dropout 0.5, an EMA of
the parameters (0.9995) for evaluation; no gradient clipping and no skipped updates
(the reference has neither; `grad_clip_norm` and `skip_update_grad_norm` turn them
on). Paper, Table 2 (optimal sigma): -5677 nats, FID 101.4. Other decoders:
`--config.decoder.name=...` (the original's own is `logistic_mixture`).
"""

from sigma_vae_jax import default_config
from sigma_vae_jax.models import hvae


def get_config():
  config = default_config.get_config()
  config.dataset.name = "cifar10"
  config.model = hvae.default_config()
  config.decoder.name = "optimal_sigma"
  config.batch_size = 48
  config.num_train_steps = 30_000
  # The deep-VAE training options of the reference (run_deepvae.py's defaults).
  config.optimizer = "adamax"
  config.learning_rate = 2e-3
  config.learning_rate_decay = 0.999999  # LowerBoundedExponentialLR(0.999999, 1e-4)
  config.learning_rate_floor = 1e-4
  config.ema_decay = 0.9995
  config.free_bits = 2.0  # nats per latent group (z1..z15), training loss only
  config.free_bits_rule = "per_example"  # FreeBits on each example's KL of each layer
  config.grad_clip_norm = None
  config.skip_update_grad_norm = None
  config.eval_every_steps = 2_000
  config.checkpoint_every_steps = 2_000
  return config
