"""Observation models ("decoders" in the paper): name -> how raw network outputs
become a likelihood p(x | z). `config.decoder.name` picks one (`LIKELIHOODS`).

A `Likelihood` declares
  * `num_outputs(C)`: raw channels per pixel the network must produce for C-channel data,
  * `init_params()`: trainable parameters of its own (e.g. one learned log sigma),
  * `init_state()`: non-trainable state (the running average of sigma*: the fields of
    `losses.RunningSigmaState` as a dict, updated with the public `losses.RunningSigma`),
  * `nll(...)`: the elementwise negative log-likelihood in nats (losses.py),
  * `mean(...)` / `sample(...)`: images in [0, 1] for reconstructions and samples.

Adding a likelihood = a function in `losses.py` + a class and a `LIKELIHOODS` entry here.

Shapes: x is float32 [B, *event] in [0, 1] with the channel axis last: an image
[B, H, W, C] or a clip [B, T, H, W, C]; `out` is the network output
[B, *event[:-1], num_outputs(C)]. "Per image" means per example over all its
dimensions (time included for a clip).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp

from sigma_vae_jax import losses

Array = jax.Array
Params = Mapping[str, Array]
State = Mapping[str, Array]

_NUM_LEVELS = 256


@dataclasses.dataclass(frozen=True)
class LikelihoodOutput:
  """What a decoder's `nll` returns.

  nll: elementwise NLL in nats, the shape of x (without C for per-pixel mixtures).
  log_sigma: the scale used, broadcastable to x, or None for scale-free decoders.
  batch_variance: the closed-form sigma*^2 of this batch (scalar), for the running
    average; None for decoders without one.
  """
  nll: Array
  log_sigma: Optional[Array] = None
  batch_variance: Optional[Array] = None


jax.tree_util.register_dataclass(
    LikelihoodOutput, data_fields=["nll", "log_sigma", "batch_variance"], meta_fields=[])


class Likelihood:
  """Base class. Subclasses override what differs; all methods are pure."""
  name: str = ""
  # KL weight used in the *training* objective (beta-VAE); evaluation reports beta=1.
  kl_weight: float = 1.0
  # Whether the likelihood is over the 256 discrete levels (its ELBO is discrete).
  is_discrete: bool = False
  # Whether its state holds a running average of sigma*^2 (`running_log_sigma`).
  has_running_sigma: bool = False
  # Whether its evaluation sigma is one value (or array) independent of the data.
  data_independent_sigma: bool = False
  # Whether it is a continuous Gaussian with mean `mean(out)` (see _GaussianFamily).
  is_gaussian: bool = False

  def num_outputs(self, channels: int) -> int:
    return channels

  def init_params(self) -> dict[str, Array]:
    return {}

  def init_state(self, data_shape=None) -> dict[str, Array]:
    """Non-trainable state; `data_shape` (one example, e.g. (H, W, C)) for state
    that depends on it."""
    del data_shape
    return {}

  def update_state(self, state: State, output: LikelihoodOutput) -> State:
    del output
    return state

  def nll(self, x: Array, out: Array, params: Params, state: State, *,
          train: bool) -> LikelihoodOutput:
    raise NotImplementedError

  def eval_nll(self, x: Array, out: Array, params: Params, state: State) -> LikelihoodOutput:
    """The likelihood reported at evaluation (true ELBO, beta = 1)."""
    return self.nll(x, out, params, state, train=False)

  def discrete_nll(self, x: Array, out: Array, params: Params,
                   state: State) -> Optional[Array]:
    """-log P of the 8-bit data for continuous decoders (paper Table 4), else None."""
    del x, out, params, state
    return None

  def mean(self, out: Array, params: Params, state: State) -> Array:
    raise NotImplementedError

  def sample(self, rng: Array, out: Array, params: Params, state: State) -> Array:
    raise NotImplementedError


def _sigmoid_mean(out: Array, channels: int) -> Array:
  # As in the authors' release, the decoder mean goes through a sigmoid.
  return jax.nn.sigmoid(out[..., :channels])


def _quantize(x: Array) -> Array:
  return jnp.round(jnp.clip(x, 0.0, 1.0) * (_NUM_LEVELS - 1)) / (_NUM_LEVELS - 1)


def _bounded(log_sigma: Array, low: Optional[float]) -> Array:
  """Soft lower bound on a closed-form or learned log sigma (`decoder.log_sigma_min`).

  `losses.softclip(log_sigma, low)` as the paper (Sec. 3.1) and the authors' code do
  for every sigma: without it the closed-form sigma* of pixels that are constant in
  a batch collapses towards 0 (the variance floor is float32 tiny, log sigma -43.7)
  and the likelihood becomes unbounded. None: no bound.
  """
  return log_sigma if low is None else losses.softclip(log_sigma, low=low)


class _GaussianFamily(Likelihood):
  """Gaussian decoders: mean = sigmoid(out); they differ in how sigma is chosen."""
  # A continuous Gaussian likelihood with mean `mean(out)`: it can also be evaluated
  # at its maximum-likelihood shared sigma ("calibrated after training", evaluation/evaluate.py).
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


LIKELIHOODS: dict[str, Callable[[Any], Likelihood]] = {
    "gaussian": lambda cfg: UnitGaussian(),
    "beta": lambda cfg: BetaGaussian(cfg.beta),
    "shared_sigma": lambda cfg: SharedSigma(cfg.log_sigma_min),
    "optimal_sigma": lambda cfg: OptimalSigma(cfg.sigma_ema_decay, cfg.get("sigma_axes"),
                                              cfg.log_sigma_min),
    "optimal_sigma_per_image": lambda cfg: OptimalSigmaPerImage(cfg.log_sigma_min),
    "per_pixel_sigma": lambda cfg: PerPixelSigma(cfg.log_sigma_min, cfg.log_sigma_max),
    "student_t": lambda cfg: StudentT(cfg.student_t_df, cfg.log_sigma_min, cfg.log_sigma_max),
    "bernoulli": lambda cfg: Bernoulli(),
    "categorical": lambda cfg: Categorical(),
    "bitwise_categorical": lambda cfg: BitwiseCategorical(),
    "logistic_mixture": lambda cfg: LogisticMixture(cfg.num_mixtures, cfg.log_sigma_min),
    "discretized_gaussian": lambda cfg: DiscretizedGaussian(cfg.scale, cfg.sigma_ema_decay,
                                                            cfg.log_sigma_min),
    "discretized_logistic": lambda cfg: DiscretizedLogistic(cfg.scale, cfg.sigma_ema_decay,
                                                            cfg.log_sigma_min),
}

# Decoders whose training objective uses a KL weight other than 1.
LIKELIHOODS_WITH_BETA = ("beta",)
SCALE_MODES = ("optimal", "learned")


def get_likelihood(decoder_config) -> Likelihood:
  """Builds the decoder named `decoder_config.name` (see `LIKELIHOODS`)."""
  try:
    factory = LIKELIHOODS[decoder_config.name]
  except KeyError:
    raise ValueError(
        f"decoder.name={decoder_config.name!r} is unknown; choose one of "
        f"{sorted(LIKELIHOODS)}") from None
  return factory(decoder_config)
