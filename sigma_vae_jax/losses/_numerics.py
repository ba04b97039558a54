"""Numerically stable scalar primitives (elementwise, jnp, any float dtype):
log(1 - e^-t), e^t - 1 - t, log(sinh(k) / k) and the second moment of a tilted
uniform, plus the constants the losses share."""

from __future__ import annotations

import math

import jax.numpy as jnp

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)
_LGAMMA_HALF = 0.5 * math.log(math.pi)  # log Gamma(1/2)


def _log1mexp(t):
  """log(1 - exp(-t)) for t > 0, accurate for all t (Maechler, 2012).

  `t` is floored at the smallest normal number so that neither value nor
  gradient is NaN in unselected `jnp.where` branches.
  """
  t = jnp.maximum(t, jnp.finfo(t.dtype).tiny)
  small = t < _LOG_2
  t_small = jnp.where(small, t, 1.0)
  t_large = jnp.where(small, 1.0, t)
  return jnp.where(small, jnp.log(-jnp.expm1(-t_small)),
                   jnp.log1p(-jnp.exp(-t_large)))


def _log1mexp_with_log(t, log_t):
  """log(1 - exp(-t)) given both t > 0 and log(t) (for t that may underflow)."""
  tiny_t = log_t < -20.0  # t < 2e-9: log(1-e^-t) = log t - t/2 + O(t^2)
  return jnp.where(tiny_t, log_t - 0.5 * jnp.where(tiny_t, t, 0.0),
                   _log1mexp(jnp.where(tiny_t, 1.0, t)))


def _expm1_minus_x(t):
  """exp(t) - 1 - t without cancellation near t = 0."""
  small = jnp.abs(t) < 0.5
  ts = jnp.where(small, t, 0.0)
  # sum_{n>=2} t^n / n! in Horner form, truncated after t^10 / 10!.
  series = 1.0
  for n in range(10, 2, -1):
    series = 1.0 + ts / n * series
  series = 0.5 * ts * ts * series
  return jnp.where(small, series, jnp.expm1(t) - t)


def _log_sinhc(k):
  """log(sinh(k) / k), even in k, stable for all k."""
  a = jnp.abs(k)
  small = a < 1e-2
  a_small = jnp.where(small, a, 0.0)
  a_large = jnp.where(small, 1.0, a)
  series = a_small**2 / 6.0 - a_small**4 / 180.0
  general = a_large - jnp.log(2.0 * a_large) + _log1mexp(2.0 * a_large)
  return jnp.where(small, series, general)


def _tilted_uniform_second_moment(k):
  """E[v^2] for the density proportional to exp(-k v) on [-1, 1]."""
  a = jnp.abs(k)
  small = a < 0.1
  a_small = jnp.where(small, a, 0.0)
  a_large = jnp.where(small, 1.0, a)
  series = 1.0 / 3.0 + 2.0 * a_small**2 / 45.0 - 4.0 * a_small**4 / 945.0
  general = 1.0 - 2.0 / (a_large * jnp.tanh(a_large)) + 2.0 / a_large**2
  return jnp.where(small, series, general)
