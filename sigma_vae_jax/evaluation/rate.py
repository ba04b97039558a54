"""The rate decomposition of a trained model with one Gaussian latent group (paper
Eq. 9, Fig. 3, Fig. 4; Rosca et al.): the average KL(q(z|x) || p(z)) split into the
mutual information I_e(x; z) and the marginal KL(m(z) || p(z)), in nats.

Takes a `trainer.Trainer`, a `train_step.TrainState` (e.g. from `loading.load_run`)
and uint8 test images [N, H, W, C]; the posteriors come from the trainer's jitted
encoder batch by batch (`batches`), the Monte Carlo estimate from
`metrics.mutual_information_and_marginal_kl`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sigma_vae_jax.evaluation import batches
from sigma_vae_jax.evaluation import metrics


def encode(trainer, state, images: np.ndarray, batch_size: int = 128
           ) -> tuple[np.ndarray, np.ndarray]:
  """Posterior parameters of uint8 images: (mean [N, D], log_var [N, D]).

  For models with one Gaussian latent group (`encode` in the model contract)."""
  if not hasattr(trainer.model, "encode"):
    raise ValueError(f"model {trainer.config.model.name!r} has no single Gaussian "
                     f"latent group to encode (the rate decomposition needs one)")
  means, log_vars = [], []
  for batch, _, n in batches.sharded_batches(trainer, images, batch_size):
    mean, log_var = jax.device_get(trainer.encode(state, batch))
    means.append(mean[:n])
    log_vars.append(log_var[:n])
  return np.concatenate(means), np.concatenate(log_vars)



@jax.jit
def _rate(z, mean, log_var):
  return metrics.mutual_information_and_marginal_kl(z, mean, log_var)


def rate_decomposition(trainer, state, images: np.ndarray, rng: jax.Array,
                       batch_size: int = 128) -> dict[str, float]:
  """Monte Carlo I_e(x; z) and D_KL(m(z) || p(z)) over the given images (Rosca et al.).

  One z_i ~ q(z|x_i) per image; m(z) is the aggregate posterior of these N images.
  Returns floats (nats): mutual_information, marginal_kl, average_kl (closed form;
  ~= their sum), log_n (the MI estimate is at most log N).
  """
  mean, log_var = encode(trainer, state, images, batch_size)
  mean, log_var = jnp.asarray(mean), jnp.asarray(log_var)
  z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(rng, mean.shape, mean.dtype)
  return {k: float(v) for k, v in jax.device_get(_rate(z, mean, log_var)).items()}
