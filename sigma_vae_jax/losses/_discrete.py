"""Discrete decoders over the 256 levels of 8-bit images (paper Sec. 3.2, App. E):
Bernoulli, categorical, bitwise-categorical, discretized logistic / Gaussian /
Student-t and the discretized logistic mixture. Elementwise NLL in nats (>= 0)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from sigma_vae_jax.losses._bins import (
    _discretized_gaussian_log_prob, _discretized_logistic_log_prob)
from sigma_vae_jax.losses._inputs import (
    _as_float, _check_broadcast_to, _check_image_dtype, _compute_dtype, _levels)
from sigma_vae_jax.losses._student_t import _discretized_student_t_log_prob


def bernoulli_nll(x, logits):
  """Elementwise Bernoulli NLL with intensities used as probabilities.

  The "Bernoulli VAE" of the paper: binary cross-entropy with soft targets,
  ``-(x log sigmoid(l) + (1 - x) log sigmoid(-l)) = softplus(l) - x l``.
  Stable for any ``|logits|``. For non-binary ``x`` this is a cross-entropy,
  not a normalized likelihood of ``x``.

  Args:
    x: intensities in [0, 1], floating point, shape ``S``.
    logits: Bernoulli logits, broadcastable to ``S``.

  Returns:
    NLL in nats, shape ``S``.
  """
  _check_image_dtype(x, "bernoulli_nll")
  dtype = _compute_dtype(x, logits)
  x, logits = _as_float(dtype, x, logits)
  _check_broadcast_to(x.shape, "bernoulli_nll", logits=logits.shape)
  return jnp.broadcast_to(jax.nn.softplus(logits) - x * logits, x.shape)


def categorical_nll(x, logits):
  """Elementwise 256-way categorical (softmax) NLL per subpixel.

  ``-log softmax(logits)[round(255 x)]`` (paper Sec. 3.2).

  Args:
    x: images in [0, 1] on the grid k/255, floating point, shape ``S``.
    logits: unnormalized log-probabilities, shape ``[..., 256]`` whose leading
      dims broadcast to ``S``.

  Returns:
    NLL in nats, shape ``S``.
  """
  _check_image_dtype(x, "categorical_nll")
  dtype = _compute_dtype(x, logits)
  x, logits = _as_float(dtype, x, logits)
  chex.assert_axis_dimension(logits, -1, 256)
  _check_broadcast_to(x.shape, "categorical_nll",
                      **{"logits[..., 0]": logits.shape[:-1]})
  logp = jax.nn.log_softmax(logits, axis=-1)
  logp = jnp.broadcast_to(logp, x.shape + (256,))
  idx = _levels(x, 256).astype(jnp.int32)
  return -jnp.take_along_axis(logp, idx[..., None], axis=-1)[..., 0]


def bitwise_categorical_nll(x, logits):
  """Elementwise bitwise-categorical NLL (paper App. E).

  The level ``round(255 x)`` is written in 8 bits, most significant first, and
  each bit is an independent Bernoulli with logit ``logits[..., j]``; the NLL
  is the sum of the 8 binary cross-entropies (a normalized distribution over
  the 256 levels).

  Args:
    x: images in [0, 1] on the grid k/255, floating point, shape ``S``.
    logits: bit logits, shape ``[..., 8]`` whose leading dims broadcast to
      ``S``; ``logits[..., 0]`` is the most significant bit (value 128).

  Returns:
    NLL in nats, shape ``S``.
  """
  _check_image_dtype(x, "bitwise_categorical_nll")
  dtype = _compute_dtype(x, logits)
  x, logits = _as_float(dtype, x, logits)
  chex.assert_axis_dimension(logits, -1, 8)
  _check_broadcast_to(x.shape, "bitwise_categorical_nll",
                      **{"logits[..., 0]": logits.shape[:-1]})
  level = _levels(x, 256).astype(jnp.int32)
  shifts = jnp.arange(7, -1, -1, dtype=jnp.int32)
  bits = (level[..., None] >> shifts) & 1
  # -log p(bit) = softplus(l) for bit 0 and softplus(-l) for bit 1.
  signed = jnp.where(bits == 1, -logits, logits)
  return jnp.sum(jax.nn.softplus(signed), axis=-1)


def discretized_logistic_nll(x, mean, log_scale, num_bins: int = 256):
  """Elementwise discretized logistic NLL (Kingma et al. 2016; Salimans 2017).

  The logistic(mean, scale) distribution integrated over bins of width
  ``1 / (num_bins - 1)`` centred on the levels ``k / (num_bins - 1)``; the
  first bin extends to -inf and the last to +inf, so the probabilities of
  the ``num_bins`` levels sum to one. Uses the exact identity
  ``CDF(b) - CDF(a) = sigmoid(b') sigmoid(-a') (1 - exp(-(b' - a')))``
  (standardized edges), a sum of non-positive logs: exact in both tails, for
  tiny scales and for bins much narrower than the scale.

  Args:
    x: images in [0, 1], floating point, shape ``S``; mapped to the level
      ``round((num_bins - 1) x)``.
    mean: location (in data units, [0, 1] scale), broadcastable to ``S``.
    log_scale: log of the logistic scale, broadcastable to ``S``.
    num_bins: number of levels (static Python int, default 256).

  Returns:
    NLL in nats (>= 0), shape ``S``.
  """
  _check_image_dtype(x, "discretized_logistic_nll")
  dtype = _compute_dtype(x, mean, log_scale)
  x, mean, log_scale = _as_float(dtype, x, mean, log_scale)
  _check_broadcast_to(x.shape, "discretized_logistic_nll", mean=mean.shape,
                      log_scale=log_scale.shape)
  logp = _discretized_logistic_log_prob(x, mean, log_scale, int(num_bins))
  return jnp.broadcast_to(-logp, x.shape)


def discretized_gaussian_nll(x, mean, log_sigma, num_bins: int = 256):
  """Elementwise discretized Gaussian NLL.

  N(mean, sigma^2) integrated over bins of width ``1 / (num_bins - 1)``
  centred on ``k / (num_bins - 1)``; first and last bins extend to -inf and
  +inf. ``log(Phi(b) - Phi(a))`` is computed without cancellation: edge bins
  use ``log_ndtr``; inner bins wider than 0.1 sigma use the log-CDF difference
  on the lower-tail side of the mean (by symmetry) with a stable log1mexp;
  narrower bins use the exact expansion
  ``log phi(m) + log(width) + log sinhc(m width / 2) - E_w[s^2] / 2``
  (error < 1e-6 nats). Accurate far in the tails and for huge/tiny sigma.

  Args:
    x: images in [0, 1], floating point, shape ``S``.
    mean: Gaussian mean (data units), broadcastable to ``S``.
    log_sigma: log standard deviation, broadcastable to ``S``.
    num_bins: number of levels (static Python int, default 256).

  Returns:
    NLL in nats (>= 0), shape ``S``.
  """
  _check_image_dtype(x, "discretized_gaussian_nll")
  dtype = _compute_dtype(x, mean, log_sigma)
  x, mean, log_sigma = _as_float(dtype, x, mean, log_sigma)
  _check_broadcast_to(x.shape, "discretized_gaussian_nll", mean=mean.shape,
                      log_sigma=log_sigma.shape)
  logp = _discretized_gaussian_log_prob(x, mean, log_sigma, int(num_bins))
  return jnp.broadcast_to(-logp, x.shape)


def discretized_student_t_nll(x, loc, log_scale, df, num_bins: int = 256):
  """Elementwise discretized Student-t NLL.

  The Student-t(df, loc, scale) integrated over bins of width
  ``1 / (num_bins - 1)`` centred on ``k / (num_bins - 1)``; first and last
  bins extend to -inf and +inf, so the ``num_bins`` probabilities sum to one.
  The CDF is the regularized incomplete beta function,
  ``S(t) = 1 - F(t) = I_{df / (df + t^2)}(df / 2, 1 / 2) / 2`` for t >= 0,
  and every bin is formed from upper-tail probabilities on its side of
  ``loc`` (no ``1 - F`` cancellation): far-tail bins from a log-space series
  of ``I`` and an exact formula for the log-ratio of the two tail
  probabilities (no underflow, however far out), narrow bins near ``loc`` by
  Gauss-Legendre quadrature of the density, wide ones with
  ``jax.scipy.special.betainc``. See `_student_t_bin_log_mass`.

  Accuracy (float32 against 60-digit mpmath, random and extreme inputs):
  where the NLL is below 1000 nats the error is at most 1.2e-5 nats for
  df <= 3 and 1e-4 nats for df = 30 or 100 (float32 ``betainc``'s own error,
  in the open edge bins and bins wider than one scale; elsewhere ~1e-7
  relative); beyond, at most 2e-7 relative. float32 ``betainc`` loses digits
  as df grows (errors up to 1.3e-3 nats at df = 1e3, 8e-3 at df = 1e4): pass
  float64 inputs there (~1e-13 relative for df <= 100, 1e-9 at df = 1e4).
  Cost: ``betainc`` is a while loop, so on CPU this is several times slower
  than :func:`discretized_gaussian_nll` (meant for evaluation, not training).

  Args:
    x: images in [0, 1], floating point, shape ``S``; mapped to the level
      ``round((num_bins - 1) x)``.
    loc: location (data units), broadcastable to ``S``.
    log_scale: log of the scale parameter, broadcastable to ``S``.
    df: degrees of freedom (> 0), broadcastable to ``S``; treated as a
      constant by gradients.
    num_bins: number of levels (static Python int, default 256).

  Returns:
    NLL in nats (>= 0), shape ``S``.
  """
  _check_image_dtype(x, "discretized_student_t_nll")
  dtype = _compute_dtype(x, loc, log_scale, df)
  x, loc, log_scale, df = _as_float(dtype, x, loc, log_scale, df)
  _check_broadcast_to(x.shape, "discretized_student_t_nll", loc=loc.shape,
                      log_scale=log_scale.shape, df=df.shape)
  # df is a fixed hyperparameter of the decoders; its derivative is not
  # implemented (the custom JVP of `_student_t_bin_log_mass`), so say so.
  logp = _discretized_student_t_log_prob(
      x, loc, log_scale, jax.lax.stop_gradient(df), int(num_bins))
  return jnp.broadcast_to(-logp, x.shape)


def discretized_logistic_mixture_nll(x, logit_probs, means, log_scales,
                                     num_bins: int = 256):
  """Per-pixel NLL of a mixture of discretized logistics (paper App. E).

  PixelCNN++'s mixture without the autoregressive mean-adjusting
  coefficients: one mixture indicator per pixel shared by its channels, the
  channels independent given it::

    p(x) = sum_k pi_k prod_c DiscLogistic(x_c; means[c, k], scales[c, k])

  evaluated with ``logsumexp``.

  Args:
    x: images in [0, 1], floating point, shape ``[..., C]``.
    logit_probs: mixture logits, shape ``[..., K]`` (leading dims broadcast to
      ``x.shape[:-1]``).
    means: component means, shape ``[..., C, K]`` (broadcast to
      ``x.shape + (K,)``).
    log_scales: component log scales, shape ``[..., C, K]``.
    num_bins: number of levels (static Python int, default 256).

  Returns:
    NLL in nats per pixel (channels consumed), shape ``x.shape[:-1]``.
  """
  _check_image_dtype(x, "discretized_logistic_mixture_nll")
  dtype = _compute_dtype(x, logit_probs, means, log_scales)
  x, logit_probs, means, log_scales = _as_float(dtype, x, logit_probs, means,
                                                log_scales)
  if (x.ndim < 1 or logit_probs.ndim < 1 or means.ndim < 2 or
      log_scales.ndim < 2):
    raise AssertionError(
        "discretized_logistic_mixture_nll: expected x [..., C], logit_probs "
        "[..., K], means and log_scales [..., C, K]; got shapes "
        f"{x.shape}, {logit_probs.shape}, {means.shape}, {log_scales.shape}")
  num_k = logit_probs.shape[-1]
  chex.assert_axis_dimension(means, -1, num_k)
  chex.assert_axis_dimension(log_scales, -1, num_k)
  target = x.shape + (num_k,)
  _check_broadcast_to(target, "discretized_logistic_mixture_nll",
                      means=means.shape, log_scales=log_scales.shape)
  _check_broadcast_to(x.shape[:-1] + (num_k,),
                      "discretized_logistic_mixture_nll",
                      logit_probs=logit_probs.shape)
  logp = _discretized_logistic_log_prob(x[..., None], means, log_scales,
                                        int(num_bins))
  logp = jnp.broadcast_to(logp, target)
  log_mix = jax.nn.log_softmax(logit_probs, axis=-1)
  joint = jnp.sum(logp, axis=-2) + log_mix  # [..., K]
  return -jax.nn.logsumexp(joint, axis=-1)
