"""Decoder likelihoods, KL terms and ELBO helpers for sigma-VAEs (pure JAX).

This module implements the decoder distributions of Rybkin et al., "Simple and
Effective VAE Training with Calibrated Decoders" (sigma-VAE): Gaussian decoders
with learned, shared or analytically optimal variance, soft clipping of the
log standard deviation, and the discrete decoders of Sec. 3.2 / App. E
(categorical, bitwise-categorical, discretized logistic / Gaussian and the
discretized logistic mixture without PixelCNN++'s autoregressive mean-adjusting
coefficients).

It imports only ``jax``, ``jax.numpy``, ``chex``, ``numpy`` and the standard
library's ``math``, ``dataclasses`` and ``typing``, so
``from sigma_vae_jax import losses`` adds only milliseconds on top of JAX
(no TensorFlow / torch).

Conventions
-----------
* Units are **nats** everywhere (use :func:`nats_to_bits_per_dim` for bits/dim).
* Argument order: the data first, then the distribution's parameters,
  ``f(x, <parameters>)`` (the opposite of optax's ``(logits, labels)``). Every
  argument has a name that reads unambiguously as a keyword, e.g.
  ``gaussian_nll(x=x, mean=mean, log_sigma=log_sigma)``,
  ``bernoulli_nll(x=x, logits=logits)``.
* ``log_sigma`` is always the natural log of a standard deviation (data units);
  ``log_scale`` the log of the distribution's own scale parameter (logistic s,
  whose standard deviation is s pi / sqrt(3): see :func:`logistic_log_scale`;
  Student-t scale).
* Closed-form sigma: :func:`optimal_log_sigma` (floored at
  ``DEFAULT_LOG_SIGMA_MIN = -6`` unless ``log_sigma_min=None``), shared by name
  for data of any rank (:func:`sharing_axes`); :class:`RunningSigma` keeps the
  running average used at evaluation; :func:`calibrated_gaussian_nelbo` scores
  any decoder's mean as a Gaussian with one calibrated sigma.
* Image data ``x`` enters every likelihood as floating point in ``[0, 1]``;
  8-bit data lies on the grid ``k / 255``. Discrete likelihoods map ``x`` to the
  level ``round((num_bins - 1) * x)`` themselves (``num_bins = 256`` for the
  categorical and bitwise decoders). Integer / bool ``x`` raises ``TypeError``.
* Every ``*_nll`` returns the **elementwise** negative log-likelihood with the
  shape of ``x``; parameters must broadcast to ``x.shape`` (checked with chex
  at trace time, so it also works under ``jit``). A trailing parameter axis
  (categorical logits ``[..., 256]``, bit logits ``[..., 8]``, mixture
  components ``[..., K]``) is consumed.
* Nothing is reduced implicitly: use :func:`sum_over_data_dims` /
  :func:`negative_elbo`. The ELBO is a **sum** over data dimensions, never a
  mean (paper, Sec. 3.1 "Loss implementation details").
* Results are float32 unless an input is float64 (with ``jax_enable_x64``);
  lower precision inputs (bfloat16/float16) are computed in float32.
* All functions are pure and safe under ``jax.jit``, ``jax.vmap`` and
  ``jax.grad``. Log-scales are used throughout; with float32 keep every
  ``log_sigma`` / ``log_scale`` above about ``-80`` (sigma > 1e-35) so that
  ``exp(-log_sigma)`` stays finite (e.g. ``softclip(log_sigma, low=-6)`` as
  in the paper). Values whose true NLL exceeds the float32 range (~3e38
  nats) come out as ``inf``.
* Discrete likelihoods are exact in the tails: the discretized logistic uses
  ``CDF(b) - CDF(a) = sigmoid(b) sigmoid(-a) (1 - e^-(b-a))`` (a sum of
  non-positive logs), the discretized Gaussian a log-CDF difference on the
  lower-tail side of the mean for bins wider than 0.1 sigma and an exact
  midpoint expansion for narrower ones; bin offsets from the mean are formed
  in level units so that tiny scales keep full relative precision. Versus a
  float64 reference the float32 error is below 1e-3 nats wherever the NLL is
  below 1000 nats, and within ~1e-6 relative beyond. The discretized
  Student-t takes its far tails from a log-space series of the incomplete
  beta function and meets these bounds for df <= 100 (see
  :func:`discretized_student_t_nll`).

Where the code lives
--------------------
This package's namespace is the API: import ``from sigma_vae_jax import losses`` and
call ``losses.<name>`` (the names in ``__all__``). The private modules behind it each
hold one kind of thing:

* ``_continuous``: Gaussian and Student-t densities (:func:`gaussian_nll`,
  :func:`student_t_nll`).
* ``_discrete``: the decoders over 8-bit levels: Bernoulli, categorical, bitwise,
  discretized logistic / Gaussian / Student-t, logistic mixture.
* ``_sigma``: sharing by name, sigma*, :func:`softclip`, :class:`RunningSigma`,
  :func:`logistic_log_scale`.
* ``_elbo``: Gaussian KL and log-density, sums, negative ELBO, bits/dim,
  :func:`effective_beta`, :func:`calibrated_gaussian_nelbo`.
* ``_inputs``: dtype and shape checks, levels, :func:`check_images`.
* ``_numerics``, ``_bins``, ``_student_t``: the numerically careful internals
  (stable log1mexp and series, bin log-masses of the discretized logistic and
  Gaussian, the Student-t's incomplete-beta tails and quadrature).
"""

from sigma_vae_jax.losses._continuous import gaussian_nll, student_t_nll
from sigma_vae_jax.losses._discrete import (
    bernoulli_nll, bitwise_categorical_nll, categorical_nll,
    discretized_gaussian_nll, discretized_logistic_mixture_nll,
    discretized_logistic_nll, discretized_student_t_nll)
from sigma_vae_jax.losses._elbo import (
    CalibratedNelbo, calibrated_gaussian_nelbo, effective_beta, gaussian_kl,
    gaussian_log_prob, nats_to_bits_per_dim, negative_elbo, sum_over_data_dims)
from sigma_vae_jax.losses._inputs import check_images
from sigma_vae_jax.losses._sigma import (
    DEFAULT_LOG_SIGMA_MIN, SHARINGS, RunningSigma, RunningSigmaState,
    logistic_log_scale, optimal_log_sigma, sharing_axes, softclip)

__all__ = [
    "gaussian_nll",
    "optimal_log_sigma",
    "sharing_axes",
    "DEFAULT_LOG_SIGMA_MIN",
    "SHARINGS",
    "RunningSigma",
    "RunningSigmaState",
    "softclip",
    "student_t_nll",
    "bernoulli_nll",
    "categorical_nll",
    "bitwise_categorical_nll",
    "discretized_logistic_nll",
    "discretized_gaussian_nll",
    "discretized_student_t_nll",
    "discretized_logistic_mixture_nll",
    "logistic_log_scale",
    "calibrated_gaussian_nelbo",
    "CalibratedNelbo",
    "gaussian_kl",
    "gaussian_log_prob",
    "sum_over_data_dims",
    "effective_beta",
    "nats_to_bits_per_dim",
    "negative_elbo",
    "check_images",
]
