"""The importance-weighted bound (IWAE, Burda et al. 2016) of a trained model: the
log-weights log p(x, z) - log q(z | x) of K posterior samples per example and the
per-example estimate of -log p(x), in nats.

Takes a `trainer.Trainer`, a `train_step.TrainState` (e.g. from `loading.load_run`)
and uint8 test data [N, ...]; samples are drawn in chunks on device (`batches`).
"""

from __future__ import annotations

import math

import jax
import numpy as np

from sigma_vae_jax.evaluation import batches


def iwae_log_weights(trainer, state, images: np.ndarray, num_samples: int,
                     batch_size: int, rng: jax.Array, chunk_size: int = 16) -> np.ndarray:
  """Importance log-weights [K, N] (nats) of uint8 images, K = num_samples.

  log w = log p(x|z) + log p(z) - log q(z|x) summed over all latent groups
  (`objectives.log_importance_weight`). Batch i draws its samples in chunks of
  `chunk_size`: chunk j uses the key fold_in(fold_in(rng, i), j) for
  `Trainer.log_importance_weights`.
  """
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1; got {num_samples}")
  columns = []
  bar = batches.progress_over(f"IWAE (K={num_samples})", trainer, len(images), batch_size)
  for i, (batch, _, n) in enumerate(
      bar.iterate(batches.sharded_batches(trainer, images, batch_size))):
    batch_key = jax.random.fold_in(rng, i)
    chunks, done, j = [], 0, 0
    while done < num_samples:
      k = min(chunk_size, num_samples - done)
      log_w = trainer.log_importance_weights(state, batch,
                                             jax.random.fold_in(batch_key, j), num_samples=k)
      chunks.append(np.asarray(jax.device_get(log_w), np.float64)[:, :n])
      done, j = done + k, j + 1
    columns.append(np.concatenate(chunks, axis=0))
  return np.concatenate(columns, axis=1)


def iwae_nll(trainer, state, images: np.ndarray, num_samples: int, batch_size: int,
             rng: jax.Array, chunk_size: int = 16) -> np.ndarray:
  """Per-example importance-weighted estimate of -log p(x) with K samples, nats [N].

  -L_K with L_K = logsumexp_k log w_k - log K (Burda et al. 2016, `metrics.iwae_bound`):
  an upper bound on -log p(x) in expectation; K = 1 is the single-sample negative
  ELBO (with the Monte Carlo KL, so its mean over draws is the ELBO) and E[-L_K]
  decreases with K.
  """
  log_w = iwae_log_weights(trainer, state, images, num_samples, batch_size, rng,
                           chunk_size)
  k = log_w.shape[0]
  bound = np.logaddexp.reduce(log_w, axis=0) - math.log(k)
  return -bound
