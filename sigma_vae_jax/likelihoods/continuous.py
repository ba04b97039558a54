"""Continuous decoders: the Gaussian family, which differ only in how sigma is chosen
(unit, beta, learned shared, closed-form sigma* with its running average, sigma* per
image, per-pixel network output), and the Student-t. NLLs in nats (densities)."""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from sigma_vae_jax import losses
from sigma_vae_jax.likelihoods.base import (
    Likelihood, LikelihoodOutput, _bounded, _sigmoid_mean)


class _GaussianFamily(Likelihood):
  """Gaussian decoders: mean = sigmoid(out); they differ in how sigma is chosen."""
  # A continuous Gaussian likelihood with mean `mean(out)`: it can also be evaluated
  # at its maximum-likelihood shared sigma ("calibrated after training", evaluation/elbo.py).
  is_gaussian = True

  def _log_sigma(self, x, mean, out, params, state, train):
    """Returns (log_sigma broadcastable to x, batch variance or None)."""
    raise NotImplementedError

  def nll(self, x, out, params, state, *, train):
    mean = _sigmoid_mean(out, x.shape[-1])
    log_sigma, batch_variance = self._log_sigma(x, mean, out, params, state, train)
    return LikelihoodOutput(losses.gaussian_nll(x, mean, log_sigma), log_sigma, batch_variance)

  def discrete_nll(self, x, out, params, state):
    mean = _sigmoid_mean(out, x.shape[-1])
    log_sigma, _ = self._log_sigma(x, mean, out, params, state, False)
    return losses.discretized_gaussian_nll(x, mean, log_sigma)

  def mean(self, out, params, state):
    del params, state
    return _sigmoid_mean(out, self._channels(out))

  def sample(self, rng, out, params, state):
    mean = self.mean(out, params, state)
    log_sigma, _ = self._log_sigma(None, mean, out, params, state, False)
    noise = jax.random.normal(rng, mean.shape, mean.dtype)
    return jnp.clip(mean + jnp.exp(log_sigma) * noise, 0.0, 1.0)

  def _channels(self, out):
    return out.shape[-1] // (self.num_outputs(1))


class UnitGaussian(_GaussianFamily):
  """N(mean, 1): the MSE loss of most prior work (paper Eq. 2)."""
  name = "gaussian"
  data_independent_sigma = True

  def _log_sigma(self, x, mean, out, params, state, train):
    return jnp.zeros((), mean.dtype), None


class BetaGaussian(UnitGaussian):
  """Unit-variance Gaussian with KL weight beta (paper Eq. 7).

  Trains on 0.5||x - mean||^2 + beta KL. Evaluated as the calibrated model it is
  equivalent to, a Gaussian with sigma^2 = beta (`losses.effective_beta`), with the
  true ELBO (KL weight 1). The paper's Table 1 uses sigma^2 = beta / 2, i.e. its
  beta is twice ours.
  """
  name = "beta"

  def __init__(self, beta: float):
    self.kl_weight = float(beta)

  def eval_nll(self, x, out, params, state):
    mean = _sigmoid_mean(out, x.shape[-1])
    log_sigma = jnp.asarray(0.5 * math.log(self.kl_weight), mean.dtype)
    return LikelihoodOutput(losses.gaussian_nll(x, mean, log_sigma), log_sigma, None)

  def discrete_nll(self, x, out, params, state):
    mean = _sigmoid_mean(out, x.shape[-1])
    log_sigma = jnp.asarray(0.5 * math.log(self.kl_weight), mean.dtype)
    return losses.discretized_gaussian_nll(x, mean, log_sigma)

  def sample(self, rng, out, params, state):
    mean = self.mean(out, params, state)
    noise = jax.random.normal(rng, mean.shape, mean.dtype)
    return jnp.clip(mean + math.sqrt(self.kl_weight) * noise, 0.0, 1.0)


class SharedSigma(_GaussianFamily):
  """One log sigma for all pixels and images, learned by gradient descent.

  The learned parameter is soft-clipped from below at `log_sigma_min` (None: no bound).
  """
  name = "shared_sigma"
  data_independent_sigma = True

  def __init__(self, log_sigma_min: Optional[float] = -6.0):
    self.log_sigma_min = log_sigma_min

  def init_params(self):
    return {"log_sigma": jnp.zeros((), jnp.float32)}

  def _log_sigma(self, x, mean, out, params, state, train):
    return _bounded(params["log_sigma"].astype(mean.dtype), self.log_sigma_min), None


class OptimalSigma(_GaussianFamily):
  """Closed-form sigma*^2 = MSE(x, mean) over the (global) batch; paper Sec. 4.

  Training uses the batch estimate (the gradient through sigma* vanishes at the
  optimum); evaluation uses a bias-corrected running average of sigma*^2.

  `axes` (paper Fig. 4): the axes of x ([B, H, W, C], or [B, T, H, W, C] for
  video: (0, 2, 3, 4) is one sigma per frame) the MSE averages over, always
  including the batch axis 0. None (all axes) is the shared sigma of the optimal
  sigma-VAE; (0,) gives one sigma per subpixel, (0, 3) one per pixel location.
  The running average then holds one variance per non-averaged position.

  Both the batch sigma* and the running one are soft-clipped from below at
  `log_sigma_min` (paper Sec. 3.1; None: no bound); the running average is over the
  unclipped sigma*^2 and clipped where it is used.
  """
  name = "optimal_sigma"
  has_running_sigma = True
  data_independent_sigma = True

  def __init__(self, ema_decay: float, axes: Optional[tuple[int, ...]] = None,
               log_sigma_min: Optional[float] = -6.0):
    self.ema_decay = float(ema_decay)
    self.axes = None if axes is None else tuple(sorted(int(a) for a in axes))
    self.log_sigma_min = log_sigma_min
    # The public running average (losses.RunningSigma), unfloored: the floor goes on
    # the likelihood's own scale parameter (`_scale_from_log_sigma`).
    self.running = losses.RunningSigma(axis="shared" if self.axes is None else self.axes,
                                       decay=self.ema_decay, log_sigma_min=None)

  def _scale_from_log_sigma(self, log_sigma):
    """The bounded log scale of the likelihood from an unclipped log sigma*."""
    return _bounded(log_sigma, self.log_sigma_min)

  def variance_shape(self, data_shape) -> tuple[int, ...]:
    """Shape of the running variance: () when shared, else broadcastable to x."""
    return self.running.state_shape(None if data_shape is None else (1,) + tuple(data_shape))

  def num_variance_parameters(self, data_shape) -> int:
    return math.prod(self.variance_shape(data_shape))

  def init_state(self, data_shape=None):
    if self.axes is not None and data_shape is None:
      raise ValueError("optimal sigma with sigma_axes needs the image shape")
    # Debiased EMA: ema / weight, with weight = 1 - decay^n (as Adam's moments).
    return self.running.init(
        None if data_shape is None else (1,) + tuple(data_shape))._asdict()

  def update_state(self, state, output):
    return self.running.update_from_variance(losses.RunningSigmaState(**state),
                                             output.batch_variance)._asdict()

  def running_log_sigma(self, state):
    return self._scale_from_log_sigma(
        self.running.log_sigma(losses.RunningSigmaState(**state)))

  def _log_sigma(self, x, mean, out, params, state, train):
    if train:
      log_sigma = losses.optimal_log_sigma(x, mean, axis=self.running.axis,
                                           log_sigma_min=None)
      variance = jnp.exp(2 * log_sigma)
      variance = variance.reshape(()) if self.axes is None else variance
      return self._scale_from_log_sigma(log_sigma), variance
    return self.running_log_sigma(state).astype(mean.dtype), None


class OptimalSigmaPerImage(_GaussianFamily):
  """sigma*^2 = MSE per image (paper Sec. 4, App. D): also solved on test images."""
  name = "optimal_sigma_per_image"

  def __init__(self, log_sigma_min: Optional[float] = -6.0):
    self.log_sigma_min = log_sigma_min

  def _log_sigma(self, x, mean, out, params, state, train):
    # Every non-batch axis: per image, or per clip for video [B, T, H, W, C]; the
    # floor is optimal_log_sigma's own (softclip at log_sigma_min, None: none).
    return losses.optimal_log_sigma(x, mean, axis="per_example",
                                    log_sigma_min=self.log_sigma_min), None

  def sample(self, rng, out, params, state):
    # No data means no per-image sigma*; samples are shown as the mean image.
    return self.mean(out, params, state)


class PerPixelSigma(_GaussianFamily):
  """The network outputs log sigma per subpixel, soft-clipped (paper Sec. 3.1)."""
  name = "per_pixel_sigma"

  def __init__(self, log_sigma_min: Optional[float], log_sigma_max: Optional[float]):
    self.low, self.high = log_sigma_min, log_sigma_max

  def num_outputs(self, channels):
    return 2 * channels

  def _log_sigma(self, x, mean, out, params, state, train):
    c = out.shape[-1] // 2
    return losses.softclip(out[..., c:], self.low, self.high), None

  def _channels(self, out):
    return out.shape[-1] // 2


class StudentT(Likelihood):
  """Student-t with per-subpixel location and scale, fixed degrees of freedom."""
  name = "student_t"

  def __init__(self, df: float, log_scale_min: Optional[float], log_scale_max: Optional[float]):
    self.df, self.low, self.high = float(df), log_scale_min, log_scale_max

  def num_outputs(self, channels):
    return 2 * channels

  def _split(self, out):
    c = out.shape[-1] // 2
    return jax.nn.sigmoid(out[..., :c]), losses.softclip(out[..., c:], self.low, self.high)

  def nll(self, x, out, params, state, *, train):
    loc, log_scale = self._split(out)
    return LikelihoodOutput(losses.student_t_nll(x, loc, log_scale, self.df), log_scale)

  def discrete_nll(self, x, out, params, state):
    # The same Student-t over the 256 levels, so that its bits/dim compare with
    # the discrete decoders' (as the Gaussians' discretized Gaussian does).
    loc, log_scale = self._split(out)
    return losses.discretized_student_t_nll(x, loc, log_scale, self.df)

  def mean(self, out, params, state):
    return self._split(out)[0]

  def sample(self, rng, out, params, state):
    loc, log_scale = self._split(out)
    t = jax.random.t(rng, self.df, loc.shape, loc.dtype)
    return jnp.clip(loc + jnp.exp(log_scale) * t, 0.0, 1.0)
