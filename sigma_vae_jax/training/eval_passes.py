"""The forward passes of evaluation for one model and likelihood, as functions of a
train state and a batch that `Trainer` jits (and shards).

Data comes in as uint8 batches [B, ...] (images [B, H, W, C], clips [B, T, H, W, C]);
every pass scores the evaluation network: the state's eval parameters
(`TrainState.eval_params`: EMA when kept), no dropout. Sums are over the valid
examples of a batch (bool mask [B]) in nats, so batches add up on device.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sigma_vae_jax import likelihoods
from sigma_vae_jax import losses
from sigma_vae_jax import objectives
from sigma_vae_jax.data import preprocessing
from sigma_vae_jax.training import train_step as steps


class EvalPasses:
  """The evaluation forward passes of `model` scored by `likelihood`.

  target_shape: one example's target (what the likelihood scores, no batch axis).
  model_name: config.model.name, for error messages.
  """

  def __init__(self, model, likelihood: likelihoods.Likelihood,
               target_shape: tuple[int, ...], model_name: str):
    self.model = model
    self.likelihood = likelihood
    self.target_shape = tuple(target_shape)
    self.model_name = model_name

  @property
  def num_context_frames(self) -> int:
    """Frames a video model's samples condition on (0 for image models)."""
    return int(getattr(self.model, "num_context_frames", 0))

  def apply(self, state, method=None, *args, **kwargs):
    variables = {"params": state.eval_params()["model"]}
    return self.model.apply(variables, *args, method=method, **kwargs)

  def likelihood_args(self, state):
    return state.eval_params()["likelihood"], state.likelihood_state

  def eval_sums(self, state: steps.TrainState, data, mask, rng) -> dict:
    """Sums over the valid examples (mask) of per-example eval metrics (nats)."""
    x = preprocessing.to_float(data)
    output = self.apply(state, None, x, rng)
    lik_params, lik_state = self.likelihood_args(state)
    terms = objectives.negative_elbo(output, self.likelihood, lik_params, lik_state,
                                     train=False)
    sums = {"nelbo": terms.nelbo, "rec": terms.rec, "kl": terms.kl}
    if len(terms.kl_per_group) > 1:
      sums.update({f"kl_{name}": kl for name, kl in terms.kl_per_group.items()})
    discrete = self.likelihood.discrete_nll(output.target, output.decoder_outputs,
                                            lik_params, lik_state)
    if discrete is not None:
      sums["nelbo_discrete"] = losses.sum_over_data_dims(discrete) + terms.kl
    lik = terms.likelihood_output
    if lik.log_sigma is not None:
      sums["log_sigma"] = objectives.mean_log_sigma(lik.log_sigma, output.target)
    mask = mask.astype(jnp.float32)
    sums = {k: jnp.sum(v * mask) for k, v in sums.items()}
    sums["count"] = mask.sum()
    return sums

  def frame_nelbo_sums(self, state: steps.TrainState, data, mask, rng) -> dict:
    """A video model's eval terms per predicted frame, summed over the valid clips.

    The forward pass of `eval_sums` (same rng, same likelihood form), split by the
    target's frame axis instead of summed over it. Returns, each [T_pred] in nats
    (T_pred = the target's frames, e.g. T - 1 for SVG-LP): rec (the likelihood's
    elementwise eval NLL summed over each frame's pixels and channels), kl (that step's
    KL(q || p) summed over the latent dimensions of every group), nelbo_discrete (the
    discretized Gaussian NLL of the 8-bit frames + kl, likelihoods that have one), and
    count (valid clips). Sums over frames of rec + kl are `eval_sums`' nelbo.
    """
    if not self.num_context_frames:
      raise ValueError(f"per-frame ELBO: model {self.model_name!r} is an image "
                       f"model; it needs a video model (e.g. svg_lp)")
    x = preprocessing.to_float(data)
    output = self.apply(state, None, x, rng)
    lik_params, lik_state = self.likelihood_args(state)
    target, out = output.target, output.decoder_outputs
    per_frame = functools.partial(losses.sum_over_data_dims, num_batch_dims=2)  # -> [B, T]
    num_frames = target.shape[1]
    for name, group in output.latents.items():
      if group.kl.ndim < 2 or group.kl.shape[1] != num_frames:
        raise ValueError(f"per-frame ELBO: latent group {name!r} has KL of shape "
                         f"{group.kl.shape}, not [B, {num_frames} (frames), ...]")
    kl = objectives.sum_groups({name: per_frame(group.kl)
                                for name, group in output.latents.items()})
    lik = self.likelihood.eval_nll(target, out, lik_params, lik_state)
    sums = {"rec": per_frame(lik.nll), "kl": kl}
    discrete = self.likelihood.discrete_nll(target, out, lik_params, lik_state)
    if discrete is not None:
      sums["nelbo_discrete"] = per_frame(discrete) + kl
    m = mask.astype(jnp.float32)
    sums = {k: jnp.sum(v * m[:, None], axis=0) for k, v in sums.items()}
    sums["count"] = m.sum()
    return sums

  def calibration_sums(self, state, data, mask, rng, log_sigma, discrete: bool):
    """The calibration pass: one forward pass of the evaluation network (eval
    parameters, no dropout; latents drawn with `rng`) and masked sums over the batch
    of the squared error of the likelihood's mean per target position ("sq_err",
    [*target_shape]), the KL, (discrete) the discretized-Gaussian NLL at log_sigma,
    and the count of valid examples. What `evaluate.evaluate_calibrated` (test data,
    the z of `evaluate`: same rng) and `Trainer.evaluation_state` (training data)
    need."""
    x = preprocessing.to_float(data)
    output = self.apply(state, None, x, rng)
    decoded = self.likelihood.mean(output.decoder_outputs, *self.likelihood_args(state))
    target = output.target
    m = mask.astype(jnp.float32)
    kl = objectives.sum_groups(objectives.kl_per_group(output))
    sums = {"kl": jnp.sum(kl * m), "count": jnp.sum(m)}
    sq_err = (target - decoded) ** 2
    sums["sq_err"] = jnp.sum(sq_err * m.reshape((-1,) + (1,) * (sq_err.ndim - 1)), axis=0)
    if discrete:
      rec = losses.sum_over_data_dims(
          losses.discretized_gaussian_nll(target, decoded, log_sigma))
      sums["rec_discrete"] = jnp.sum(rec * m)
    return sums

  def likelihood_state_at_mse(self, sq_err, count):
    """The likelihood state whose evaluation sigma*^2 is the mean squared error
    sq_err / count ([*target_shape] sums of `calibration_sums` over `count`
    examples) averaged over decoder.sigma_axes, as the likelihood's own batch
    sigma*^2 averages (all positions when None): the running average of a fresh
    state after one update with it."""
    mse = (sq_err / count)[None]  # [1, *target_shape]
    axes = getattr(self.likelihood, "axes", None)
    variance = mse.mean() if axes is None else mse.mean(axis=axes, keepdims=True)
    fresh = self.likelihood.init_state(self.target_shape)
    return self.likelihood.update_state(
        fresh, likelihoods.LikelihoodOutput(nll=mse, batch_variance=variance))

  def encode(self, state, data):
    """Posterior (mean, log_var) of models with one Gaussian latent group."""
    return self.apply(state, "encode", preprocessing.to_float(data))

  def log_importance_weights(self, state, data, rng, num_samples: int):
    """log w (`objectives.log_importance_weight`) of num_samples draws per example:
    [K, B] nats, draw k with key fold_in(rng, k)."""
    x = preprocessing.to_float(data)
    lik_params, lik_state = self.likelihood_args(state)

    def one_draw(key):
      output = self.apply(state, None, x, key)
      return objectives.log_importance_weight(output, self.likelihood, lik_params,
                                              lik_state)
    keys = jax.vmap(lambda k: jax.random.fold_in(rng, k))(jnp.arange(num_samples))
    return jax.lax.map(one_draw, keys)

  def log_sigma_sums(self, state, data, mask):
    """Sum over valid examples of the per-example mean eval log sigma at the
    posterior means (None for likelihoods without a scale)."""
    x = preprocessing.to_float(data)
    out = self.apply(state, "reconstruct", x)
    lik_params, lik_state = self.likelihood_args(state)
    target = self.target_of(state, x)
    lik = self.likelihood.eval_nll(target, out, lik_params, lik_state)
    if lik.log_sigma is None:
      return None
    per_example = objectives.mean_log_sigma(lik.log_sigma, target)
    return jnp.sum(per_example * mask.astype(per_example.dtype))

  def target_of(self, state, x):
    """The part of the input the likelihood scores (e.g. a video model's predicted
    frames); the rest of this forward pass is dead code that XLA removes."""
    return self.apply(state, None, x, jax.random.PRNGKey(0)).target

  def reconstruct(self, state, data):
    """Likelihood means of the reconstructions (posterior means), in [0, 1]."""
    out = self.apply(state, "reconstruct", preprocessing.to_float(data))
    return self.likelihood.mean(out, *self.likelihood_args(state))

  def sample(self, state, rng, num: int, context=None, temperature: float = 1.0):
    """Likelihood means of `num` prior samples, in [0, 1]. Video models condition
    on `context` (uint8 or float frames [num, T_context, H, W, C]) and feed each
    generated frame back as the likelihood's mean."""
    lik_args = self.likelihood_args(state)
    kwargs = {}
    if context is not None:
      context = preprocessing.to_float(context)
      kwargs["output_to_frame"] = lambda out: self.likelihood.mean(out, *lik_args)
    out = self.apply(state, "sample", rng, num, context, temperature, **kwargs)
    return self.likelihood.mean(out, *lik_args)
