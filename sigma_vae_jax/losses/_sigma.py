"""Choosing the Gaussian sigma: sharing by name (`sharing_axes`), the closed-form
sigma* (`optimal_log_sigma`), soft clipping, the running sigma*^2 average used at
evaluation (`RunningSigma`) and the logistic scale of the same standard deviation.
log sigma is always the natural log of a standard deviation in data units."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sigma_vae_jax.losses._inputs import (
    _as_float, _check_broadcast_to, _check_image_dtype, _compute_dtype)


# The default soft lower bound on every log sigma: the authors' code applies
# `softclip(log_sigma, -6)` to the optimal sigma (and the paper, Sec. 3.1, to
# learned per-pixel variances).
DEFAULT_LOG_SIGMA_MIN = -6.0

# Names of the ways a sigma can be shared (see `sharing_axes`).
SHARINGS = ("shared", "per_example", "per_dim")


def sharing_axes(axis, ndim: int) -> Optional[tuple[int, ...]]:
  """The axes of ``x`` (rank ``ndim``) that one sigma is shared over.

  A sigma shared over an axis is one value along it: its sigma*^2 is the mean
  squared error over those axes. Names work for any rank (flat ``[B, D]``,
  images ``[B, H, W, C]``, clips ``[B, T, H, W, C]``); axis 0 is the batch:

  * ``"shared"`` (or ``None``): one sigma for everything (the optimal
    sigma-VAE); returns ``None`` (all axes).
  * ``"per_example"``: one sigma per example, ``(1, ..., ndim - 1)``.
  * ``"per_dim"``: one sigma per data dimension (subpixel), ``(0,)``.
  * an int or a tuple of ints (negative ones count from the end): partially
    shared variants, e.g. ``(0, 3)`` on ``[B, H, W, C]`` is one sigma per
    pixel location (shared by the batch and the channels), ``(0, 1, 2)`` one
    per channel.

  Returns ``None`` for all axes, else a sorted tuple of non-negative axes.

  Raises:
    ValueError: (one line) for an unknown name, a repeated axis or an axis out
      of range for the rank, naming the rank and the valid choices.
  """
  if axis is None or (isinstance(axis, str) and axis == "shared"):
    return None
  choices = (f"choose 'shared', 'per_example', 'per_dim' or a tuple of axes in "
             f"[{-ndim}, {ndim - 1}]")
  if isinstance(axis, str):
    if axis == "per_example":
      return tuple(range(1, ndim))
    if axis == "per_dim":
      return (0,)
    raise ValueError(f"axis={axis!r} is unknown for data of rank {ndim}; {choices}")
  if isinstance(axis, (int, np.integer)):
    axes = (axis,)
  elif isinstance(axis, (tuple, list)):
    axes = tuple(axis)
  else:
    axes = (axis,)  # rejected just below
  if not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in axes):
    raise ValueError(f"axis={axis!r} must be a name or ints, for data of rank {ndim}; "
                     f"{choices}")
  if any(not -ndim <= a < ndim for a in axes):
    raise ValueError(f"axis={axis!r} is out of range for data of rank {ndim}; {choices}")
  resolved = sorted(int(a) % ndim for a in axes)
  if len(set(resolved)) != len(resolved):
    raise ValueError(f"axis={axis!r} repeats an axis of data of rank {ndim}; {choices}")
  return tuple(resolved)


def _soft_floor(log_sigma, log_sigma_min):
  return log_sigma if log_sigma_min is None else softclip(log_sigma, low=log_sigma_min)


def optimal_log_sigma(x, mean, axis="shared", log_sigma_min=DEFAULT_LOG_SIGMA_MIN):
  """Log of the maximum-likelihood Gaussian sigma (the optimal sigma-VAE), floored.

  ``softclip(0.5 * log(max(mean((x - mean)**2, axis), tiny)), low=log_sigma_min)``
  with keepdims, so the result broadcasts back against ``x``. Without the floor
  it minimises ``sum(gaussian_nll(x, mean, log_sigma), axis)`` over a log_sigma
  shared along ``axis``.

  * ``axis="shared"`` (default, or ``None``): one sigma for everything (the
    paper's optimal sigma-VAE, computed on the batch); shape ``(1,) * x.ndim``.
  * ``axis="per_example"``: one sigma per example (``[B, 1, ...]``), for any
    rank; solved on whatever data it is given, test images included.
  * ``axis="per_dim"``: one sigma per data dimension, shared across the batch.
  * an int or a tuple of axes: partially shared variants (`sharing_axes`).

  The floor: by default the result is soft-clipped from below at
  ``log_sigma_min=-6.0`` (sigma >= 0.0025; `softclip`, as the authors' code
  does): without it the sigma* of data the decoder fits almost exactly (a
  per-pixel sigma* on constant background pixels, or any sigma* late in
  training) collapses and the likelihood becomes unbounded. Where sigma is
  well above the floor it costs little: at sigma* = 0.15 the floored sigma is
  1.6% larger. ``log_sigma_min=None``: no floor, the exact maximum-likelihood
  value. Do not soft-clip the result again.

  Zero error: the variance is floored at ``jnp.finfo(dtype).tiny`` (1.18e-38
  for float32, i.e. log_sigma >= -43.668) with ``jnp.maximum``, so even
  without the soft floor the result is finite (value and gradient, which is
  then 0) when the error is exactly zero. No ``stop_gradient`` is applied: at
  the optimum the gradient through sigma of the summed NLL is zero anyway.

  Args:
    x: data, floating point, shape ``S`` (e.g. ``[B, D]``, ``[B, H, W, C]``).
    mean: decoder mean, broadcastable to ``S``.
    axis: how sigma is shared: ``"shared"``, ``"per_example"``,
      ``"per_dim"``, ``None`` (= ``"shared"``), an int or a tuple of ints.
    log_sigma_min: soft lower bound on the returned log sigma (natural log),
      default -6.0; ``None`` for none.

  Returns:
    log sigma (natural log of a standard deviation in data units), shape
    ``S`` with the shared dimensions set to 1.

  Raises:
    ValueError: (one line) for an ``axis`` that does not fit ``x``'s rank.
  """
  _check_image_dtype(x, "optimal_log_sigma")
  dtype = _compute_dtype(x, mean)
  x, mean = _as_float(dtype, x, mean)
  _check_broadcast_to(x.shape, "optimal_log_sigma", mean=mean.shape)
  try:
    axes = sharing_axes(axis, x.ndim)
  except ValueError as e:
    raise ValueError(f"optimal_log_sigma: {e}") from None
  sq = jnp.broadcast_to((x - mean)**2, x.shape)
  var = jnp.mean(sq, axis=axes, keepdims=True)
  var = jnp.maximum(var, jnp.finfo(dtype).tiny)
  return _soft_floor(0.5 * jnp.log(var), log_sigma_min)


def softclip(x, low=None, high=None):
  """Soft clipping of Chua et al. (2018), as in the sigma-VAE paper (Sec. 3.1).

  ``x := high - softplus(high - x)`` (if ``high`` is given), then
  ``x := low + softplus(x - low)`` (if ``low`` is given). Smooth and strictly
  increasing, with gradient in (0, 1] everywhere; the paper uses
  ``softclip(log_sigma, low=-6)`` for per-pixel variances.

  Args:
    x: array of any shape (typically a log standard deviation).
    low: optional lower bound (scalar or broadcastable array).
    high: optional upper bound.

  Returns:
    Array with the broadcast shape of the inputs.
  """
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(_compute_dtype(x))
  if high is not None:
    x = high - jax.nn.softplus(high - x)
  if low is not None:
    x = low + jax.nn.softplus(x - low)
  return x


class RunningSigmaState(NamedTuple):
  """The state of a `RunningSigma` (a pytree of two float32 arrays).

  variance_ema: the decay-weighted sum of the batch sigma*^2, not yet
    debiased; shape ``()`` for ``axis="shared"``, else the data's shape with
    the batch axis and every shared axis set to 1 (`RunningSigma.state_shape`).
  ema_weight: ``1 - decay**n`` after ``n`` updates, scalar (the debiasing
    divisor; 0 before the first update).
  """
  variance_ema: jax.Array
  ema_weight: jax.Array


@dataclasses.dataclass(frozen=True)
class RunningSigma:
  """A running average of sigma*^2 for evaluation: init / update / log_sigma.

  The optimal sigma-VAE trains with the sigma* of each batch, which is not
  defined for one test image or a sample; it evaluates with the debiased
  exponential moving average of the training batches' sigma*^2 (as Adam's
  moments), floored where it is used:

      ema_n = decay * ema_{n-1} + (1 - decay) * sigma*_n^2,  w_n = 1 - decay^n,
      log_sigma = softclip(0.5 * log(ema_n / w_n), low=log_sigma_min)

  (log sigma 0, i.e. sigma = 1, before the first update). The average is over
  the *unfloored* sigma*^2. The object holds only hyperparameters (hashable,
  close over it in ``jax.jit``); the state is a `RunningSigmaState` pytree to
  carry in your train state. All methods are pure and work under ``jax.jit``
  and ``jax.vmap`` (e.g. over a stack of states of several models).

  Sharing (`sharing_axes`): ``axis="shared"`` keeps one sigma, ``"per_dim"``
  one per data dimension, a tuple of axes with 0 one per non-shared position.
  Axes without the batch axis (``"per_example"``, ``(1, 2)``) average the
  batch's sigma*^2 over its examples too (a test image has no sigma* of its
  own here; to solve sigma* on each test image instead, call
  ``optimal_log_sigma(x, mean, axis="per_example")`` at evaluation).

  Example (a Flax train step; ``mean`` is the decoder mean)::

      running = losses.RunningSigma(axis="shared", decay=0.99)
      sigma_state = running.init(x.shape)                   # in your state
      ...                                                   # in train_step:
      sigma_state = running.update(sigma_state, x=x, mean=mean)
      ...                                                   # at evaluation:
      log_sigma = running.log_sigma(sigma_state)            # floored at -6

  Attributes:
    axis: how sigma is shared (`sharing_axes`): ``"shared"`` (default),
      ``"per_example"``, ``"per_dim"``, ``None`` (= shared), an int or a tuple.
    decay: EMA decay per update (default 0.99, the package's
      ``decoder.sigma_ema_decay``).
    log_sigma_min: soft lower bound on the returned log sigma (default -6.0;
      None: none).
  """
  axis: Any = "shared"
  decay: float = 0.99
  log_sigma_min: Optional[float] = DEFAULT_LOG_SIGMA_MIN

  def state_shape(self, x_shape=None) -> tuple[int, ...]:
    """Shape of the running variance for data of shape ``x_shape`` ([B, ...]).

    ``()`` for ``axis="shared"`` / ``None``; otherwise ``x_shape`` with the
    batch axis and every shared axis set to 1 (it broadcasts against x).
    """
    if self.axis is None or (isinstance(self.axis, str) and self.axis == "shared"):
      return ()
    if x_shape is None:
      raise ValueError(f"RunningSigma(axis={self.axis!r}).init needs x_shape, the shape "
                       f"of a training batch [B, ...]")
    x_shape = tuple(int(d) for d in x_shape)
    try:
      axes = sharing_axes(self.axis, len(x_shape))
    except ValueError as e:
      raise ValueError(f"RunningSigma: {e}") from None
    return tuple(1 if i == 0 or i in axes else d for i, d in enumerate(x_shape))

  def init(self, x_shape=None) -> RunningSigmaState:
    """The state before any update (log_sigma then gives sigma = 1).

    Args:
      x_shape: the shape of a training batch ``[B, ...]`` (B is not stored);
        not needed for ``axis="shared"``.
    """
    return RunningSigmaState(variance_ema=jnp.zeros(self.state_shape(x_shape), jnp.float32),
                             ema_weight=jnp.zeros((), jnp.float32))

  def update(self, state: RunningSigmaState, x, mean) -> RunningSigmaState:
    """Adds one training batch: its unfloored sigma*^2 = MSE over the shared axes.

    Args:
      state: the current `RunningSigmaState`.
      x: the batch, floating point, ``[B, ...]`` (the shape given to `init`,
        any B).
      mean: the decoder mean, broadcastable to ``x``.

    Returns:
      The new state (no gradient flows into it).
    """
    log_sigma = optimal_log_sigma(x, mean, axis=self.axis, log_sigma_min=None)
    return self.update_from_variance(state, jnp.exp(2 * log_sigma))

  def update_from_variance(self, state: RunningSigmaState, variance) -> RunningSigmaState:
    """Adds one batch's sigma*^2 that you computed already (unfloored).

    Args:
      state: the current `RunningSigmaState`.
      variance: the batch's sigma*^2 in squared data units: the state's shape,
        or keepdims-shaped as from `optimal_log_sigma` (``[1, ...]``), or with
        a batch axis ``[B, ...]`` (per-example values, averaged over it).
    """
    variance = jax.lax.stop_gradient(jnp.asarray(variance)).astype(jnp.float32)
    target = state.variance_ema.shape
    if variance.shape != target:
      if variance.ndim and variance.shape[0] != 1:
        variance = jnp.mean(variance, axis=0, keepdims=True)
      if variance.size != math.prod(target):
        raise ValueError(f"RunningSigma.update: a sigma*^2 of shape {variance.shape} does "
                         f"not fit the state's shape {target} (axis={self.axis!r})")
      variance = variance.reshape(target)
    d = float(self.decay)
    return RunningSigmaState(variance_ema=d * state.variance_ema + (1 - d) * variance,
                             ema_weight=d * state.ema_weight + (1 - d))

  def log_sigma(self, state: RunningSigmaState) -> jax.Array:
    """The debiased running log sigma*, floored at ``log_sigma_min``.

    Returns:
      log sigma (natural log, data units), float32, of the state's shape
      (broadcasts against x); 0 (sigma = 1) before the first update.
    """
    variance = state.variance_ema / jnp.maximum(state.ema_weight, 1e-12)
    # Before any training step there is no estimate: fall back to sigma = 1.
    variance = jnp.where(state.ema_weight > 0, variance, 1.0)
    log_sigma = 0.5 * jnp.log(jnp.maximum(variance, jnp.finfo(jnp.float32).tiny))
    return _soft_floor(log_sigma, self.log_sigma_min)


# A logistic with scale s has standard deviation s pi / sqrt(3).
_LOGISTIC_LOG_SCALE_PER_LOG_SIGMA = 0.5 * math.log(3.0) - math.log(math.pi)


def logistic_log_scale(log_sigma):
  """The log-scale of the logistic whose standard deviation is sigma.

  ``log s = log sigma + 0.5 log 3 - log pi`` (s = sqrt(3) sigma / pi, about
  0.55 sigma): moment matching, since a logistic with scale s has standard
  deviation s pi / sqrt(3). Use it to score a Gaussian decoder's sigma (e.g.
  `optimal_log_sigma` or `RunningSigma.log_sigma`) with
  `discretized_logistic_nll`, whose third argument is a logistic log-scale,
  not a log sigma: ``discretized_logistic_nll(x=x, mean=mean,
  log_scale=logistic_log_scale(log_sigma))``. (This is the package's
  ``discretized_logistic`` decoder with ``scale=optimal``; not the
  maximum-likelihood logistic scale, which has no closed form.)

  Args:
    log_sigma: log standard deviation (natural log, data units), any shape.

  Returns:
    log of the logistic scale, same shape.
  """
  log_sigma = jnp.asarray(log_sigma)
  return log_sigma.astype(_compute_dtype(log_sigma)) + _LOGISTIC_LOG_SCALE_PER_LOG_SIGMA
