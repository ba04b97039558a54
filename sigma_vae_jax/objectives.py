"""The one objective: the negative ELBO, for training, evaluation and IWAE.

    nelbo = sum over the target's dimensions of the likelihood's NLL
            + sum over latent groups of their KL term summed over their dimensions,

each group's `LatentGroup.kl` being an unbiased estimate of E_q[log q - log p]
(closed form where exact, else the one-sample log q - log p), so that nelbo's
expectation is the negative ELBO and the mean of `log_importance_weight` equals
-nelbo (checked for every model in tests/test_model_contract.py),

per example, in nats. Training minimises the batch mean of
`rec + kl_weight * kl` (kl_weight is the beta of the `beta` decoder, else 1);
evaluation always reports the true bound (kl_weight 1, the likelihood's
evaluation form, e.g. the running average of sigma*).
"""

from __future__ import annotations

import functools
import operator
from typing import Mapping, NamedTuple

import jax

from sigma_vae_jax import likelihoods
from sigma_vae_jax import losses
from sigma_vae_jax.models.base import ModelOutput

Array = jax.Array


class ElboTerms(NamedTuple):
  """Per-example terms, each [B] in nats (summed over data / latent dimensions).

  loss: the training objective rec + kl_weight * kl (= nelbo at evaluation).
  nelbo: the true negative ELBO rec + kl.
  rec: reconstruction NLL; kl: total KL; kl_per_group: group name -> its KL.
  likelihood_output: the likelihood's elementwise NLL, scale and batch statistics.
  """
  loss: Array
  nelbo: Array
  rec: Array
  kl: Array
  kl_per_group: Mapping[str, Array]
  likelihood_output: likelihoods.LikelihoodOutput


def sum_groups(per_group: Mapping[str, Array]) -> Array:
  """The sum of per-group terms (e.g. each group's KL [B]), in group order."""
  return functools.reduce(operator.add, per_group.values())


FREE_BITS_RULES = ("per_example", "batch_mean")


def free_bits_kl(kl_per_group: Mapping[str, Array], free_bits: float, rule: str) -> Array:
  """The KL term of the training loss with free bits, a scalar in nats per example.

  kl_per_group: group name -> its KL per example [B] (as `LatentGroup.kl`, e.g. the
  one-sample log q - log p). rule "per_example" (BIVA's `FreeBits` on each layer's
  [B] KL): mean_b sum_g max(KL_gb, free_bits); "batch_mean": sum_g max(mean_b KL_gb,
  free_bits). Either way a group (or example) below the floor gets no KL gradient.
  """
  if rule == "per_example":
    return sum_groups({name: jax.numpy.maximum(kl, free_bits)
                       for name, kl in kl_per_group.items()}).mean()
  if rule == "batch_mean":
    return sum_groups({name: jax.numpy.maximum(kl.mean(), free_bits)
                       for name, kl in kl_per_group.items()})
  raise ValueError(f"free_bits_rule: must be one of {FREE_BITS_RULES}; got {rule!r}")


def kl_per_group(output: ModelOutput) -> dict[str, Array]:
  """Group name -> its KL(q || p) summed over the group's dimensions, [B] nats."""
  return {name: losses.sum_over_data_dims(group.kl) for name, group in output.latents.items()}


def negative_elbo(output: ModelOutput, likelihood: likelihoods.Likelihood,
                  likelihood_params, likelihood_state, *, train: bool) -> ElboTerms:
  """The negative ELBO of one forward pass (`ModelOutput`).

  train=True: the likelihood's training form (batch sigma*) and the training
  objective in `loss` (KL weighted by the likelihood's `kl_weight`); False: its
  evaluation form and loss == nelbo.
  """
  x, out = output.target, output.decoder_outputs
  if train:
    lik = likelihood.nll(x, out, likelihood_params, likelihood_state, train=True)
  else:
    lik = likelihood.eval_nll(x, out, likelihood_params, likelihood_state)
  rec = losses.sum_over_data_dims(lik.nll)
  per_group = kl_per_group(output)
  kl = sum_groups(per_group)
  nelbo = rec + kl
  loss = rec + likelihood.kl_weight * kl if train else nelbo
  return ElboTerms(loss=loss, nelbo=nelbo, rec=rec, kl=kl, kl_per_group=per_group,
                   likelihood_output=lik)


def log_importance_weight(output: ModelOutput, likelihood: likelihoods.Likelihood,
                          likelihood_params, likelihood_state) -> Array:
  """log w = log p(x | z) + log p(z) - log q(z | x) of the drawn latents, [B] nats.

  With the evaluation likelihood. Averaged over z ~ q it is the ELBO; the IWAE
  bound is logsumexp over K draws minus log K (`evaluate.iwae_nll`).
  """
  lik = likelihood.eval_nll(output.target, output.decoder_outputs, likelihood_params,
                            likelihood_state)
  log_px = -losses.sum_over_data_dims(lik.nll)
  log_ratio = sum_groups({name: losses.sum_over_data_dims(g.log_p - g.log_q)
                           for name, g in output.latents.items()})
  return log_px + log_ratio


def mean_log_sigma(log_sigma: Array, x: Array) -> Array:
  """Per-example mean of a log sigma that broadcasts against x: [B]."""
  full = jax.numpy.broadcast_to(log_sigma, x.shape)
  return full.reshape(x.shape[0], -1).mean(axis=1)
