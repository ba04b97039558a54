"""Densities of continuous decoders: the Gaussian and the Student-t NLL
(elementwise, nats; a density on data in [0, 1], so it may be negative)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sigma_vae_jax.losses._inputs import (
    _as_float, _check_broadcast_to, _check_image_dtype, _compute_dtype)
from sigma_vae_jax.losses._numerics import _HALF_LOG_2PI, _LGAMMA_HALF


def gaussian_nll(x, mean, log_sigma):
  """Elementwise Gaussian negative log-likelihood.

  ``0.5 * ((x - mean) / sigma)**2 + log_sigma + 0.5 * log(2 pi)`` with
  ``sigma = exp(log_sigma)``.

  Args:
    x: data, floating point, shape ``S`` (images in [0, 1]).
    mean: decoder mean, broadcastable to ``S``.
    log_sigma: log standard deviation (natural log), broadcastable to ``S``:
      a scalar or ``[1, 1, 1, 1]`` for the shared sigma-VAE, per-channel,
      per-pixel, or the output of :func:`optimal_log_sigma`.

  Returns:
    NLL in nats, shape ``S`` (a density: may be negative).
  """
  _check_image_dtype(x, "gaussian_nll")
  dtype = _compute_dtype(x, mean, log_sigma)
  x, mean, log_sigma = _as_float(dtype, x, mean, log_sigma)
  _check_broadcast_to(x.shape, "gaussian_nll", mean=mean.shape,
                      log_sigma=log_sigma.shape)
  z = (x - mean) * jnp.exp(-log_sigma)
  return jnp.broadcast_to(0.5 * z * z + log_sigma + _HALF_LOG_2PI, x.shape)


def student_t_nll(x, loc, log_scale, df):
  """Elementwise Student-t negative log-likelihood.

  ``-log p(x) = log Gamma(df/2) - log Gamma((df+1)/2) + 0.5 log(df pi)
  + log_scale + (df+1)/2 * log1p(((x - loc) / scale)**2 / df)``.
  The Gamma-function difference uses ``betaln`` (accurate for huge ``df``)
  and ``log1p(t**2)`` is evaluated as ``softplus(2 log|t|)`` so the heavy
  tails stay finite and exact for any distance.

  Args:
    x: data, floating point, shape ``S``.
    loc: location, broadcastable to ``S``.
    log_scale: log of the scale parameter, broadcastable to ``S``.
    df: degrees of freedom (> 0), broadcastable to ``S``.

  Returns:
    NLL in nats, shape ``S``.
  """
  _check_image_dtype(x, "student_t_nll")
  dtype = _compute_dtype(x, loc, log_scale, df)
  x, loc, log_scale, df = _as_float(dtype, x, loc, log_scale, df)
  _check_broadcast_to(x.shape, "student_t_nll", loc=loc.shape,
                      log_scale=log_scale.shape, df=df.shape)
  diff = jnp.abs(x - loc)
  zero = diff <= 0.0
  safe_diff = jnp.where(zero, 1.0, diff)
  # log1p(z^2 / df) = softplus(2 log(|x - loc| / (scale sqrt(df)))).
  log_t = jnp.log(safe_diff) - log_scale - 0.5 * jnp.log(df)
  log1p_t2 = jnp.where(zero, 0.0, jax.nn.softplus(2.0 * log_t))
  # lgamma((df+1)/2) - lgamma(df/2) = lgamma(1/2) - betaln(df/2, 1/2).
  lgamma_ratio = _LGAMMA_HALF - jax.scipy.special.betaln(0.5 * df, 0.5)
  nll = (-lgamma_ratio + 0.5 * jnp.log(df) + _LGAMMA_HALF + log_scale +
         0.5 * (df + 1.0) * log1p_t2)
  return jnp.broadcast_to(nll, x.shape)
