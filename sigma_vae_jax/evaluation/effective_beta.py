"""The effective beta of a trained decoder: the beta-VAE equivalent of its (mean)
sigma, sigma^2 = beta (Eq. 7 of the paper as printed, `losses.effective_beta`). The
paper's Table 1 uses sigma^2 = beta / 2, i.e. its beta is twice ours; both are
returned.

Takes a `trainer.Trainer`, a `train_step.TrainState` (e.g. from `loading.load_run`)
and, for decoders whose sigma depends on the data, uint8 test images [N, ...].
"""

from __future__ import annotations

import math
from typing import Optional

import jax.numpy as jnp
import numpy as np

from sigma_vae_jax import losses
from sigma_vae_jax.evaluation import batches


def mean_log_sigma(trainer, state, images: Optional[np.ndarray] = None,
                   batch_size: int = 128) -> Optional[float]:
  """Mean over images and data dimensions of the decoder's evaluation log sigma.

  None for decoders without a scale (Bernoulli, categorical, ...). Decoders whose
  sigma depends on the data (per image, per pixel, Student-t) need `images`; for the
  others (unit Gaussian, beta, shared, optimal with any sigma_axes) it may be None.
  For the Student-t and discretized logistic this is the log *scale*. Data-dependent
  sigmas are those of the decoder at the posterior mean z = E[q(z|x)] (deterministic;
  `evaluate_elbo`'s log_sigma uses a sampled z instead, so the two differ slightly).
  """
  if images is None:
    if not trainer.likelihood.data_independent_sigma:
      raise ValueError(f"decoder {trainer.likelihood.name!r} predicts sigma from the "
                       f"data: pass images to get its mean log sigma")
    images = np.zeros((1,) + trainer.data_shape, np.uint8)
  total, count = 0.0, 0
  for batch, mask, n in batches.sharded_batches(trainer, images, batch_size):
    s = trainer.log_sigma_sums(state, batch, mask)
    if s is None:
      return None
    total += float(s)
    count += n
  return total / count


def effective_beta(trainer, state, images: Optional[np.ndarray] = None,
                   batch_size: int = 128) -> Optional[dict[str, float]]:
  """The beta-VAE equivalent of a Gaussian decoder's (mean) sigma.

  Returns {"log_sigma", "sigma", "effective_beta" (= sigma^2, our Eq. 7 convention),
  "effective_beta_paper" (= 2 sigma^2, the paper's Table 1 convention)}, or None
  for decoders without a scale. The `beta` decoder gives its own beta (sigma^2 = beta);
  per-image / per-pixel decoders give exp(2 * mean log sigma) over `images`.
  """
  log_sigma = mean_log_sigma(trainer, state, images, batch_size)
  if log_sigma is None:
    return None
  return effective_beta_from_log_sigma(log_sigma)


def effective_beta_from_log_sigma(log_sigma: float) -> dict[str, float]:
  """From a (mean) log sigma, e.g. the eval `log_sigma` of metrics.jsonl."""
  beta = float(losses.effective_beta(jnp.asarray(log_sigma, jnp.float32)))
  return {"log_sigma": float(log_sigma), "sigma": math.exp(log_sigma),
          "effective_beta": beta, "effective_beta_paper": 2.0 * beta}
