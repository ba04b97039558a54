"""The test negative ELBO of a trained model, at its own evaluation sigma
(`evaluate_elbo`, Tables 1-4) and, for Gaussian decoders, at its maximum-likelihood
shared sigma (`evaluate_calibrated`, "calibrated after training").

Both take a `trainer.Trainer` and a `train_step.TrainState` (e.g. from
`loading.load_run`) and uint8 test data [N, ...] (images or clips), and run the
trainer's jitted passes batch by batch (`batches`). Nats per example (summed over
data dimensions), with the likelihood's *evaluation* form (`Likelihood.eval_nll`: KL
weight 1, the sigma the state holds for the optimal sigma decoders, which `load_run`
fits to the evaluation network on training data where `config.eval_sigma` says so;
the `beta` decoder as the Gaussian with sigma^2 = beta) and the EMA parameters when
enabled.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from sigma_vae_jax import losses
from sigma_vae_jax.evaluation import batches
from sigma_vae_jax.training import trainer as trainer_lib


def evaluate_elbo(trainer, state, images: np.ndarray, batch_size: int = 128
                  ) -> dict[str, float]:
  """Test negative ELBO per example: `Trainer.evaluate` over uint8 images.

  Returns nelbo, rec, kl (nats per example), bpd, plus log_sigma (mean log sigma)
  for decoders with a scale, and nelbo_discrete / bpd_discrete for the continuous
  Gaussian and Student-t decoders (the decoder discretized over the 256 levels of the
  8-bit data, Table 4).
  For discrete decoders (`decoder.is_discrete`) nelbo is already the discrete one.
  """
  batch_size = batches.batch_size_for(trainer, batch_size)
  return trainer.evaluate(state, trainer_lib.padded_batches(np.asarray(images), batch_size))


def evaluate_calibrated(trainer, state, images: np.ndarray, batch_size: int = 128
                        ) -> Optional[dict[str, float]]:
  """Test -ELBO of a Gaussian decoder at its maximum-likelihood shared sigma.

  "Calibrated after training": keep the trained encoder and decoder mean, replace the
  decoder's sigma (fixed, learned, running average, per image or per pixel) by the one
  constant sigma that maximises the test ELBO, sigma^2 = the test MSE of the decoder
  mean (over images and dimensions, at the z of `evaluate_elbo`: the same batches and
  keys as `Trainer.evaluate`). Then the reconstruction term is D/2 (1 + log(2 pi
  sigma^2)) per image, so

    nelbo_calibrated = D/2 (1 + log(2 pi mse)) + KL  <=  nelbo (for any constant sigma).

  Returns {"mse", "sigma_calibrated", "nelbo_calibrated", "bpd_calibrated",
  "nelbo_discrete_calibrated", "bpd_discrete_calibrated" (the discretized Gaussian on
  the 8-bit data at the same sigma)}, or None for decoders that are not continuous
  Gaussians (`Likelihood.is_gaussian`).
  """
  if not trainer.likelihood.is_gaussian:
    return None
  eval_rng = jax.random.fold_in(state.rng, trainer_lib.EVAL_STREAM)

  def sums(log_sigma, discrete):
    totals = None
    for i, (batch, mask, _) in enumerate(
        batches.sharded_batches(trainer, images, batch_size)):
      s = trainer.calibration_sums(state, batch, mask, jax.random.fold_in(eval_rng, i),
                                   jnp.asarray(log_sigma, jnp.float32), discrete=discrete)
      # sq_err is per target position: its total over them is the per-example one.
      s = {k: float(np.sum(v, dtype=np.float64)) for k, v in jax.device_get(s).items()}
      totals = s if totals is None else {k: totals[k] + s[k] for k in s}
    count = totals.pop("count")
    return {k: v / count for k, v in totals.items()}

  num_dims = trainer.num_target_dims
  first = sums(0.0, False)
  mse = max(first["sq_err"] / num_dims, float(np.finfo(np.float32).tiny))
  log_sigma = 0.5 * math.log(mse)
  # The closed form of `losses.calibrated_gaussian_nelbo` (same bound), from the
  # streamed float64 sums: that function needs the whole test set's data and decoder
  # means in memory and sums the NLL elementwise in float32 (on a small model the two
  # differ by ~1e-7 relative, so they are not interchangeable bit for bit).
  nelbo = 0.5 * num_dims * (1.0 + math.log(2 * math.pi * mse)) + first["kl"]
  second = sums(log_sigma, True)
  nelbo_discrete = second["rec_discrete"] + second["kl"]
  bpd = lambda nats: float(losses.nats_to_bits_per_dim(nats, num_dims))
  return {"mse": mse, "sigma_calibrated": math.sqrt(mse), "nelbo_calibrated": nelbo,
          "bpd_calibrated": bpd(nelbo), "nelbo_discrete_calibrated": nelbo_discrete,
          "bpd_discrete_calibrated": bpd(nelbo_discrete)}
