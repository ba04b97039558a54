"""The contract every latent-variable model of this package implements.

A model is a Flax linen module that knows nothing about likelihoods: its decoder
network outputs `num_outputs` raw channels per data element and a
`likelihoods.Likelihood` (chosen by `config.decoder.name`) scores them. Training,
evaluation (ELBO, IWAE, FID, sample grids) and checkpoints only use this contract,
so a new model is one module in `models/` plus one entry in `models.MODELS`.

Methods (all outputs float32; `x` is the float input batch in [0, 1]):

* `__call__(x, rng, train=False) -> ModelOutput`: one posterior sample per example.
  `rng` is a PRNG key; the model splits it itself (latent noise, dropout). `train`
  switches training-only behaviour (dropout); the objective is the same either way.
* `reconstruct(x) -> decoder outputs` for the posterior means (no noise), the same
  shape as `ModelOutput.decoder_outputs`.
* `sample(rng, num, context=None, temperature=1.0) -> decoder outputs` of `num`
  draws from the prior (latent noise scaled by `temperature`). Video models
  condition on `context` (the first frames of `num` clips).

Video models also have `num_context_frames` (the frames `sample` conditions on), and
their `sample` takes `output_to_frame` (raw outputs -> the frame fed back, e.g. the
likelihood's mean).

Optional, for models with one Gaussian latent group and a N(0, I) prior:
* `encode(x) -> (mean, log_var)`, each [B, latent_dim] (rate decomposition).

A model's Python module provides `build(model_config, data_shape, num_outputs)` (the
Flax module), `validate(model_config, data_shape=None)` (raises `ValueError` whose
message starts with the config field at fault; without `data_shape` it checks the
fields alone, at start-up), `default_config()` (the `config.model` section, with
`name`) and, optionally, `validate_image_size(model_config, (H, W))`.
"""

from __future__ import annotations

from typing import Mapping

from flax import struct
import jax

Array = jax.Array


@struct.dataclass
class LatentGroup:
  """One group of latents (a layer of a hierarchy, or all time steps of a sequence).

  All three are elementwise over the group's latent dimensions, [B, ...] in nats,
  for the latents drawn in this call:
    kl: KL(q || p), closed form where there is one (the prior may be learned and
      conditional, e.g. p(z_i | z_>i) or p(z_t | x_<t)).
    log_q: log q(z | x) of the drawn z.
    log_p: log p(z) (conditional prior) of the drawn z.
  E_q[log_q - log_p] = kl; the importance weights of IWAE use log_p - log_q.
  """
  kl: Array
  log_q: Array
  log_p: Array


@struct.dataclass
class ModelOutput:
  """What one forward pass returns.

  decoder_outputs: raw outputs the likelihood reads, [B, *target_shape[:-1], K]
    with K = the likelihood's `num_outputs(C)`.
  target: the data they score, float32 in [0, 1], [B, *target_shape] (the input
    images; for video the predicted frames [B, T_pred, H, W, C]).
  latents: group name -> LatentGroup, in a fixed order (e.g. "z", or "z1".."z15").
  """
  decoder_outputs: Array
  target: Array
  latents: Mapping[str, LatentGroup]


def check_image_example(data_shape, model_description: str, validate_image_size,
                        model_config) -> None:
  """Shared `validate` step of image models: one example is (H, W, C), C >= 1, and
  (H, W) passes the model's `validate_image_size`. ValueError names the field."""
  if len(data_shape) != 3:
    raise ValueError(f"dataset.name: the {model_description} takes images (H, W, C); got "
                     f"examples of shape {tuple(data_shape)}")
  validate_image_size(model_config, data_shape[:2])
  if data_shape[2] < 1:
    raise ValueError(f"dataset.name: images need at least one channel; got {data_shape[2]}")
