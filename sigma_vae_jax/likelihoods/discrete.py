"""Discrete decoders over the 256 levels of 8-bit images: Bernoulli (intensities as
probabilities), categorical, bitwise-categorical, the logistic mixture, and the
discretized Gaussian / logistic with one scale (closed-form or learned)."""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from sigma_vae_jax import losses
from sigma_vae_jax.likelihoods.base import (
    _NUM_LEVELS, Array, Likelihood, LikelihoodOutput, _bounded, _quantize,
    _sigmoid_mean)
from sigma_vae_jax.likelihoods.continuous import OptimalSigma


class Bernoulli(Likelihood):
  """Intensities as Bernoulli probabilities (Gregor et al. 2015); not normalised on [0,1]."""
  name = "bernoulli"

  def nll(self, x, out, params, state, *, train):
    return LikelihoodOutput(losses.bernoulli_nll(x, out))

  def mean(self, out, params, state):
    return jax.nn.sigmoid(out)

  def sample(self, rng, out, params, state):
    # Sampling bits would give a binary image; like the paper we show the mean.
    return self.mean(out, params, state)


class Categorical(Likelihood):
  """256-way softmax per subpixel."""
  name = "categorical"
  is_discrete = True

  def num_outputs(self, channels):
    return _NUM_LEVELS * channels

  def _logits(self, out):
    return out.reshape(out.shape[:-1] + (-1, _NUM_LEVELS))

  def nll(self, x, out, params, state, *, train):
    return LikelihoodOutput(losses.categorical_nll(x, self._logits(out)))

  def mean(self, out, params, state):
    probs = jax.nn.softmax(self._logits(out), axis=-1)
    return probs @ (jnp.arange(_NUM_LEVELS, dtype=probs.dtype) / (_NUM_LEVELS - 1))

  def sample(self, rng, out, params, state):
    level = jax.random.categorical(rng, self._logits(out), axis=-1)
    return level.astype(jnp.float32) / (_NUM_LEVELS - 1)


class BitwiseCategorical(Likelihood):
  """8 independent Bernoulli bits per subpixel, most significant first (App. E)."""
  name = "bitwise_categorical"
  is_discrete = True

  def num_outputs(self, channels):
    return 8 * channels

  def _logits(self, out):
    return out.reshape(out.shape[:-1] + (-1, 8))

  def nll(self, x, out, params, state, *, train):
    return LikelihoodOutput(losses.bitwise_categorical_nll(x, self._logits(out)))

  def _weights(self, dtype):
    return 2.0 ** jnp.arange(7, -1, -1, dtype=dtype) / (_NUM_LEVELS - 1)

  def mean(self, out, params, state):
    probs = jax.nn.sigmoid(self._logits(out))
    return probs @ self._weights(probs.dtype)  # bits are independent: E[level] = sum 2^k p_k

  def sample(self, rng, out, params, state):
    logits = self._logits(out)
    bits = jax.random.bernoulli(rng, jax.nn.sigmoid(logits)).astype(logits.dtype)
    return bits @ self._weights(logits.dtype)


class LogisticMixture(Likelihood):
  """Mixture of K discretized logistics, one indicator per pixel (App. E)."""
  name = "logistic_mixture"
  is_discrete = True

  def __init__(self, num_mixtures: int, log_scale_min: Optional[float]):
    self.k = int(num_mixtures)
    self.low = log_scale_min

  def num_outputs(self, channels):
    return self.k + 2 * channels * self.k

  def _split(self, out):
    k = self.k
    c = (out.shape[-1] - k) // (2 * k)
    logit_probs = out[..., :k]
    rest = out[..., k:].reshape(out.shape[:-1] + (2, c, k))
    means = jax.nn.sigmoid(rest[..., 0, :, :])
    log_scales = losses.softclip(rest[..., 1, :, :], low=self.low)
    return logit_probs, means, log_scales

  def nll(self, x, out, params, state, *, train):
    logit_probs, means, log_scales = self._split(out)
    return LikelihoodOutput(
        losses.discretized_logistic_mixture_nll(x, logit_probs, means, log_scales))

  def mean(self, out, params, state):
    logit_probs, means, _ = self._split(out)
    probs = jax.nn.softmax(logit_probs, axis=-1)
    return jnp.einsum("...k,...ck->...c", probs, means)

  def sample(self, rng, out, params, state):
    logit_probs, means, log_scales = self._split(out)
    k_rng, u_rng = jax.random.split(rng)
    idx = jax.random.categorical(k_rng, logit_probs, axis=-1)[..., None, None]
    mean = jnp.take_along_axis(means, idx, axis=-1)[..., 0]
    log_scale = jnp.take_along_axis(log_scales, idx, axis=-1)[..., 0]
    u = jax.random.uniform(u_rng, mean.shape, mean.dtype, 1e-5, 1 - 1e-5)
    return _quantize(mean + jnp.exp(log_scale) * (jnp.log(u) - jnp.log1p(-u)))


class _Discretized(OptimalSigma):
  """Discretized Gaussian/logistic with a scalar scale (paper Table 4).

  scale="optimal": the scale whose distribution has the closed-form standard deviation
  sigma* = sqrt(MSE) (as the optimal sigma-VAE; see each subclass) and its running
  average at evaluation; scale="learned": one log scale by gradient descent. Either
  is soft-clipped from below at `log_sigma_min` (on the log of the likelihood's own
  scale parameter).
  """
  is_discrete = True
  is_gaussian = False
  _nll_fn: Callable[..., Array]

  def __init__(self, scale: str, ema_decay: float, log_sigma_min: Optional[float] = -6.0):
    super().__init__(ema_decay, log_sigma_min=log_sigma_min)
    self.learned = scale == "learned"
    self.has_running_sigma = not self.learned

  def init_params(self):
    return {"log_sigma": jnp.zeros((), jnp.float32)} if self.learned else {}

  def _log_sigma(self, x, mean, out, params, state, train):
    if self.learned:
      return _bounded(params["log_sigma"].astype(mean.dtype), self.log_sigma_min), None
    return super()._log_sigma(x, mean, out, params, state, train)

  def nll(self, x, out, params, state, *, train):
    mean = _sigmoid_mean(out, x.shape[-1])
    log_sigma, batch_variance = self._log_sigma(x, mean, out, params, state, train)
    return LikelihoodOutput(type(self)._nll_fn(x, mean, log_sigma), log_sigma, batch_variance)

  def update_state(self, state, output):
    return state if self.learned else super().update_state(state, output)

  def init_state(self, data_shape=None):
    return {} if self.learned else super().init_state(data_shape)

  def discrete_nll(self, x, out, params, state):
    return None  # its own NLL is already discrete

  def sample(self, rng, out, params, state):
    return _quantize(super().sample(rng, out, params, state))


class DiscretizedGaussian(_Discretized):
  name = "discretized_gaussian"
  _nll_fn = staticmethod(losses.discretized_gaussian_nll)


class DiscretizedLogistic(_Discretized):
  """Discretized logistic with a scalar scale s.

  scale="optimal" uses moment matching: a logistic with scale s has standard deviation
  s pi / sqrt(3), so s* = sqrt(3 MSE) / pi (sigma* sqrt(3) / pi, 0.55 sigma*), for the
  batch MSE in training and its running average at evaluation. (Not the maximum-
  likelihood scale, which has no closed form; for logistic residuals the two agree.)
  """
  name = "discretized_logistic"
  _nll_fn = staticmethod(losses.discretized_logistic_nll)

  def _scale_from_log_sigma(self, log_sigma):
    return _bounded(losses.logistic_log_scale(log_sigma), self.log_sigma_min)

  def sample(self, rng, out, params, state):
    mean = self.mean(out, params, state)
    log_scale, _ = self._log_sigma(None, mean, out, params, state, False)
    noise = jax.random.logistic(rng, mean.shape, mean.dtype)
    return _quantize(mean + jnp.exp(log_scale) * noise)
