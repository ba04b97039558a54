"""KL and ELBO helpers: the Gaussian KL and log-density of latents, sums over data
dimensions, the negative ELBO, bits/dim, the beta equivalent to a sigma, and any
decoder's mean scored as a Gaussian with one calibrated sigma. All in nats."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from sigma_vae_jax.losses._continuous import gaussian_nll
from sigma_vae_jax.losses._discrete import discretized_gaussian_nll
from sigma_vae_jax.losses._inputs import _as_float, _check_image_dtype, _compute_dtype
from sigma_vae_jax.losses._numerics import _HALF_LOG_2PI, _LOG_2, _expm1_minus_x
from sigma_vae_jax.losses._sigma import optimal_log_sigma


def gaussian_kl(mean, log_var, prior_mean=None, prior_log_var=None):
  """Elementwise KL(N(mean, exp(log_var)) || N(prior_mean, exp(prior_log_var))), nats.

  ``0.5 * ((mean - mp)**2 / vp + expm1_minus_x(log_var - lvp))`` with
  ``expm1_minus_x(t) = exp(t) - 1 - t`` computed from its Taylor series for
  ``|t| < 0.5``, so the result stays accurate to float32 precision (and >= 0) when
  the two variances are close. Without a prior (both None) it is N(0, 1).

  Args:
    mean: posterior mean, shape ``S`` (e.g. ``[B, latent_dim]``).
    log_var: posterior log variance, broadcastable with ``mean``.
    prior_mean: prior mean (None: 0), broadcastable with ``mean``.
    prior_log_var: prior log variance (None: 0), broadcastable with ``mean``.

  Returns:
    KL in nats, broadcast shape of the inputs.
  """
  if prior_mean is None and prior_log_var is None:
    dtype = _compute_dtype(mean, log_var)
    mean, log_var = _as_float(dtype, mean, log_var)
    return 0.5 * (mean * mean + _expm1_minus_x(log_var))
  prior_mean = 0.0 if prior_mean is None else prior_mean
  prior_log_var = 0.0 if prior_log_var is None else prior_log_var
  dtype = _compute_dtype(mean, log_var, prior_mean, prior_log_var)
  mean, log_var, prior_mean, prior_log_var = _as_float(
      dtype, mean, log_var, prior_mean, prior_log_var)
  diff = mean - prior_mean
  return 0.5 * (diff * diff * jnp.exp(-prior_log_var)
                + _expm1_minus_x(log_var - prior_log_var))


def gaussian_log_prob(z, mean=None, log_var=None):
  """Elementwise log N(z; mean, exp(log_var)) in nats (None: mean 0, log_var 0).

  Args:
    z: values, shape ``S``.
    mean, log_var: broadcastable with ``z``.

  Returns:
    log density in nats, broadcast shape (not summed).
  """
  mean = 0.0 if mean is None else mean
  log_var = 0.0 if log_var is None else log_var
  dtype = _compute_dtype(z, mean, log_var)
  z, mean, log_var = _as_float(dtype, z, mean, log_var)
  diff = z - mean
  return -(_HALF_LOG_2PI + 0.5 * log_var + 0.5 * diff * diff * jnp.exp(-log_var))


def sum_over_data_dims(x, num_batch_dims: int = 1):
  """Sum over all non-batch axes: ``[B, ...] -> [B]``.

  Args:
    x: array of rank >= ``num_batch_dims``.
    num_batch_dims: number of leading axes to keep (static int).

  Returns:
    Array of shape ``x.shape[:num_batch_dims]`` (same units as ``x``).
  """
  x = jnp.asarray(x)
  if x.ndim < num_batch_dims:
    raise ValueError(
        f"sum_over_data_dims: x has rank {x.ndim} < num_batch_dims="
        f"{num_batch_dims}")
  return jnp.sum(x, axis=tuple(range(num_batch_dims, x.ndim)))


def effective_beta(log_sigma):
  """The beta of the beta-VAE equivalent to a Gaussian decoder with sigma.

  Convention: Eq. 7 of the paper as printed,
  ``L_beta = D/2 MSE + beta KL = sum 0.5 (x - mu)^2 + beta KL`` (a unit-variance
  Gaussian NLL plus beta times KL), which is exactly the objective of our
  ``beta`` decoder. Multiplying the sigma-VAE loss
  ``sum 0.5 (x - mu)^2 / sigma^2 + D log sigma + KL`` by sigma^2 gives
  ``L_beta`` with ``beta = sigma^2`` plus a term constant in (mu, KL), so

      effective_beta(log_sigma) = exp(2 log_sigma) = sigma^2.

  (The paper's text states sigma^2 = beta / 2, which corresponds to writing
  the reconstruction term as a plain sum of squared errors without the 1/2;
  we follow Eq. 7.)

  Args:
    log_sigma: log standard deviation, any shape.

  Returns:
    beta (dimensionless), same shape.
  """
  log_sigma = jnp.asarray(log_sigma)
  return jnp.exp(2.0 * log_sigma.astype(_compute_dtype(log_sigma)))


def nats_to_bits_per_dim(nats, num_dims):
  """Convert a total NLL in nats to bits per dimension: ``nats / (D ln 2)``.

  Args:
    nats: NLL / negative ELBO in nats, any shape (e.g. ``[B]``).
    num_dims: number of data dimensions D summed over (e.g. H*W*C).

  Returns:
    bits/dim, same shape as ``nats``.
  """
  nats = jnp.asarray(nats)
  nats = nats.astype(_compute_dtype(nats))
  return nats / (num_dims * _LOG_2)


def negative_elbo(nll, kl, beta=1.0, num_batch_dims: int = 1):
  """Per-example (beta-weighted) negative ELBO from elementwise terms.

  ``rec = sum_over_data_dims(nll)``, ``kl = sum_over_data_dims(kl)``,
  ``nelbo = rec + beta * kl``. With ``beta = 1`` this is the true negative
  ELBO (an upper bound on -log p(x)); otherwise it is the beta-weighted
  training objective. Both terms are SUMS over their dimensions.

  Args:
    nll: elementwise reconstruction NLL in nats, e.g. ``[B, H, W, C]`` or
      ``[B, H, W]`` (mixture).
    kl: elementwise KL in nats, e.g. ``[B, latent_dim]``.
    beta: weight of the KL term (scalar or ``[B]``).
    num_batch_dims: leading axes kept (static int).

  Returns:
    ``(nelbo, rec, kl)``, each of shape ``nll.shape[:num_batch_dims]``, nats.
  """
  nll = jnp.asarray(nll)
  kl = jnp.asarray(kl)
  chex.assert_equal_shape_prefix([nll, kl], num_batch_dims)
  rec = sum_over_data_dims(nll, num_batch_dims)
  kl_sum = sum_over_data_dims(kl, num_batch_dims)
  return rec + beta * kl_sum, rec, kl_sum


class CalibratedNelbo(NamedTuple):
  """What `calibrated_gaussian_nelbo` returns.

  nelbo: per-example negative ELBO of the Gaussian N(mean, sigma^2) at the
    calibrated sigma, ``[B]`` nats (a density on data in [0, 1]).
  nelbo_discrete: the same with the discretized Gaussian over the 256 levels
    of 8-bit data, ``[B]`` nats (comparable across all decoders).
  log_sigma: the calibrated shared log sigma (natural log), scalar.
  """
  nelbo: jax.Array
  nelbo_discrete: jax.Array
  log_sigma: jax.Array


def calibrated_gaussian_nelbo(x, mean, kl, log_sigma=None, num_batch_dims: int = 1
                              ) -> CalibratedNelbo:
  """Negative ELBO of any decoder's mean scored as a Gaussian with one calibrated sigma.

  "Calibrated after training" (the CLI's ``*_calibrated`` columns): keep the
  trained encoder and the decoder's mean and replace the decoder's own
  likelihood by N(mean, sigma^2) with one constant sigma. This gives every
  decoder (a Bernoulli, a unit Gaussian, a beta-VAE) a bound on the same
  footing: for a Bernoulli decoder on non-binary data, whose cross-entropy is
  not a density, use ``mean = sigmoid(logits)`` and compare
  ``nelbo_discrete`` (bits/dim of the 8-bit data) with the other models'.

  * ``log_sigma=None``: sigma^2 is the MSE over all of ``x`` (every example
    and dimension): the maximum-likelihood constant sigma of the data scored
    (no floor), which gives the lowest ``nelbo`` any constant sigma can; the
    CLI's column does this on the test set. Its batch mean is then
    ``D/2 (1 + log(2 pi mse)) + mean(KL)``.
  * ``log_sigma`` given: score with it, e.g. fitted on training data,
    ``optimal_log_sigma(x_train, mean_train, log_sigma_min=None)``, so that
    the test data scored never chose its own sigma.

  The MSE is over the arrays given: pass the whole evaluation set (decoder
  means computed batch by batch and concatenated), not one batch.

  Args:
    x: data in [0, 1], floating point, ``[B, ...]`` (8-bit data on the grid
      k/255 for ``nelbo_discrete``).
    mean: the decoder's mean in [0, 1], broadcastable to ``x``.
    kl: KL(q(z|x) || p(z)) in nats, ``[B]`` or elementwise ``[B, ...]``
      (summed over its non-batch axes).
    log_sigma: None, or a scalar log sigma (natural log, data units).
    num_batch_dims: leading axes of ``x`` and ``kl`` kept (static int).

  Returns:
    `CalibratedNelbo` (nelbo and nelbo_discrete ``x.shape[:num_batch_dims]``
    nats, log_sigma a scalar).
  """
  _check_image_dtype(x, "calibrated_gaussian_nelbo")
  if log_sigma is None:
    log_sigma = optimal_log_sigma(x, mean, axis="shared", log_sigma_min=None)
  log_sigma = jnp.asarray(log_sigma)
  if log_sigma.size != 1:
    raise ValueError(f"calibrated_gaussian_nelbo: log_sigma must be one value; got shape "
                     f"{log_sigma.shape}")
  log_sigma = log_sigma.reshape(())
  kl = sum_over_data_dims(kl, num_batch_dims)
  rec = sum_over_data_dims(gaussian_nll(x, mean, log_sigma), num_batch_dims)
  rec_discrete = sum_over_data_dims(discretized_gaussian_nll(x, mean, log_sigma),
                                    num_batch_dims)
  return CalibratedNelbo(nelbo=rec + kl, nelbo_discrete=rec_discrete + kl,
                         log_sigma=log_sigma)
