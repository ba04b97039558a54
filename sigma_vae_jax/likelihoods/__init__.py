"""Observation models ("decoders" in the paper): name -> how raw network outputs
become a likelihood p(x | z). `config.decoder.name` picks one (`LIKELIHOODS`).

A `Likelihood` declares
  * `num_outputs(C)`: raw channels per pixel the network must produce for C-channel data,
  * `init_params()`: trainable parameters of its own (e.g. one learned log sigma),
  * `init_state()`: non-trainable state (the running average of sigma*: the fields of
    `losses.RunningSigmaState` as a dict, updated with the public `losses.RunningSigma`),
  * `nll(...)`: the elementwise negative log-likelihood in nats (`losses`),
  * `mean(...)` / `sample(...)`: images in [0, 1] for reconstructions and samples.

Adding a likelihood = a function in `losses` + a class (subclassing `Likelihood`) in
`continuous.py` or `discrete.py` and a `LIKELIHOODS` entry here.

Shapes: x is float32 [B, *event] in [0, 1] with the channel axis last: an image
[B, H, W, C] or a clip [B, T, H, W, C]; `out` is the network output
[B, *event[:-1], num_outputs(C)]. "Per image" means per example over all its
dimensions (time included for a clip).

This module is the registry (`LIKELIHOODS`, `get_likelihood`); the classes live in
`base` (the contract every decoder implements), `continuous` (the Gaussian family
and the Student-t) and `discrete` (decoders over the 256 levels). Their names are
importable from here too (`likelihoods.Likelihood`, `likelihoods.OptimalSigma`, ...).
"""

from __future__ import annotations

from typing import Any, Callable

from sigma_vae_jax.likelihoods.base import Likelihood, LikelihoodOutput
from sigma_vae_jax.likelihoods.continuous import (
    BetaGaussian, OptimalSigma, OptimalSigmaPerImage, PerPixelSigma, SharedSigma,
    StudentT, UnitGaussian)
from sigma_vae_jax.likelihoods.discrete import (
    Bernoulli, BitwiseCategorical, Categorical, DiscretizedGaussian,
    DiscretizedLogistic, LogisticMixture)

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
