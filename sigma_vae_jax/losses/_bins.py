"""Bin log-masses of the discretized logistic and Gaussian: images in [0, 1] mapped
to ``num_bins`` levels, bin edges standardized by the scale (`_standardize_bins`,
also used by the Student-t), and log P(bin) computed without cancellation.
Elementwise; results in nats (log-probabilities, <= 0)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from sigma_vae_jax.losses._inputs import _levels
from sigma_vae_jax.losses._numerics import (
    _HALF_LOG_2PI, _log1mexp, _log1mexp_with_log, _log_sinhc,
    _tilted_uniform_second_moment)

# Discretized Gaussian: bins narrower than this (in units of sigma) use the
# midpoint expansion, wider bins the log-CDF difference (see
# `_gaussian_inner_log_mass`).
_NARROW_BIN = 0.1


def _gaussian_inner_log_mass(m, a, b, half, log_delta):
  """log(Phi(b) - Phi(a)) for a standardized bin [a, b] with centre m.

  Args:
    m: bin centre minus mean, in units of sigma.
    a, b: bin edges minus mean, in units of sigma (computed directly, not as
      m -+ half, so that they keep full relative precision).
    half: half bin width in units of sigma (> 0, may underflow to 0).
    log_delta: log of the full bin width in units of sigma (= log(2 half)),
      computed in log space so that it is exact for huge sigma.

  Two exact forms, chosen so that neither loses precision in float32:

  * wide bins (2 half >= 0.1): by symmetry (Phi(b) - Phi(a) =
    Phi(-a) - Phi(-b)) work on the side of the mean where the bin lies
    below it and use the lower-tail log-CDF difference
    log Phi(hi) + log1mexp(log Phi(hi) - log Phi(lo)). The difference of the
    log CDFs is then at least ~0.08, so it is not dominated by rounding, and
    log_ndtr is accurate far into the tail.
  * narrow bins (2 half < 0.1): with s = t - m,
    P = phi(m) * int_{-half}^{half} exp(-m s - s^2/2) ds
      = phi(m) * Delta * sinhc(m half) * E_w[exp(-s^2 / 2)],
    where w is the density proportional to exp(-m s) on the bin. The last
    factor is 1 - E_w[s^2]/2 + O(half^4) with a closed-form E_w[s^2]; the
    neglected term is below 1e-6 nats. This is exact in the pdf * width
    limit and in the tails (no cancellation between two log CDFs).
  """
  narrow = 2.0 * half < _NARROW_BIN
  # Wide-bin branch (safe dummy inputs where the narrow branch is selected).
  above = m > 0.0
  lo = jnp.where(narrow, -1.0, jnp.where(above, -b, a))
  hi = jnp.where(narrow, 0.0, jnp.where(above, -a, b))
  log_hi = jax.scipy.special.log_ndtr(hi)
  log_lo = jax.scipy.special.log_ndtr(lo)
  wide_val = log_hi + _log1mexp(log_hi - log_lo)
  # Narrow-bin branch.
  mn = jnp.where(narrow, m, 0.0)
  hn = jnp.where(narrow, half, 0.0)
  ld = jnp.where(narrow, log_delta, 0.0)
  k = mn * hn
  narrow_val = (-0.5 * mn**2 - _HALF_LOG_2PI + ld + _log_sinhc(k) -
                0.5 * hn**2 * _tilted_uniform_second_moment(k))
  return jnp.where(narrow, narrow_val, wide_val)


def _standardize_bins(x, mean, log_scale, num_bins: int):
  """Shared set-up of the discretized likelihoods (all in units of scale).

  Returns the standardized bin centre ``m``, lower and upper bin edges
  ``a < b``, the half width ``half``, ``log(b - a)`` and the first/last-bin
  masks.
  """
  level = _levels(x, num_bins)

  # Offsets of the bin centre and edges k +- 1/2 from the mean, in level
  # units: t - (n-1) mean. For n = 2^p, (n-1) mean = n mean - mean where
  # n mean is exact and t - n mean is exact by Sterbenz's lemma when t is near
  # the mean, so each offset is correctly rounded where it matters. Forming
  # k/255 (or the edges) in float32 first would cost ~3e-8 absolute, a
  # relative error of 3e-8/|x - mean| that dominates for tiny scales.
  # Other n: Dekker's split mean = hi + lo into halves of the mantissa makes
  # (n-1) hi and (n-1) lo exact for n <= 4097.
  if num_bins & (num_bins - 1) != 0:
    c = mean * 4097.0
    mean_hi = jnp.where(jnp.isfinite(c), c - (c - mean), mean)
    mean_lo = mean - mean_hi

  def offset(t):
    if num_bins & (num_bins - 1) == 0:
      return (t - num_bins * mean) + mean
    return (t - (num_bins - 1) * mean_hi) - (num_bins - 1) * mean_lo

  inv_scale = jnp.exp(-log_scale) / (num_bins - 1)  # 1 / scale, level units
  m = offset(level) * inv_scale
  a = offset(level - 0.5) * inv_scale
  b = offset(level + 0.5) * inv_scale
  half = 0.5 * inv_scale
  log_delta = -math.log(num_bins - 1) - log_scale  # log(b - a)
  first = level <= 0
  last = level >= num_bins - 1
  return m, a, b, half, log_delta, first, last


def _discretized_logistic_log_prob(x, mean, log_scale, num_bins: int):
  """Elementwise log-probability of the discretized logistic (no checks)."""
  _, a, b, half, log_delta, first, last = _standardize_bins(
      x, mean, log_scale, num_bins)
  # CDF(b) - CDF(a) = sigmoid(b) sigmoid(-a) (1 - exp(-(b - a))) exactly, for
  # standardized edges a < b: three non-positive log terms, no cancellation,
  # accurate in both tails and for arbitrarily narrow bins.
  upper = jax.nn.log_sigmoid(b)    # log CDF(b)
  lower = jax.nn.log_sigmoid(-a)   # log SF(a)
  inner = upper + lower + _log1mexp_with_log(2.0 * half, log_delta)
  return jnp.where(first, upper, jnp.where(last, lower, inner))


def _discretized_gaussian_log_prob(x, mean, log_sigma, num_bins: int):
  m, a, b, half, log_delta, first, last = _standardize_bins(
      x, mean, log_sigma, num_bins)
  edge = first | last
  # First bin: log Phi(b); last bin: log Phi(-a) (survival function).
  edge_arg = jnp.where(first, b, jnp.where(last, -a, 0.0))
  edge_val = jax.scipy.special.log_ndtr(edge_arg)
  inner = _gaussian_inner_log_mass(
      jnp.where(edge, 0.0, m), jnp.where(edge, -half, a),
      jnp.where(edge, half, b), half, log_delta)
  return jnp.where(edge, edge_val, inner)
