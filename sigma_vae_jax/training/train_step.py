"""The step math: train state, loss, one optimizer step, the device-resident batch.

Pure functions of arrays (no jit, no sharding: `trainer.py` wires those):

* `TrainState`: everything a restart needs.
* `loss_fn`: one forward pass through the model contract and the one objective
  (`objectives.negative_elbo`), KL weighted by the likelihood's beta and, for deep
  hierarchies, floored per latent group by free bits (training only;
  `objectives.free_bits_kl`).
* `train_step`: gradient, optional clipping, and an update that is dropped (and
  counted) when the loss or gradient is non-finite or the gradient norm is above
  `skip_update_grad_norm`; the likelihood's state (running sigma*) and the EMA of
  the parameters move only with an applied update.
"""

from __future__ import annotations

import math
from typing import Any

from flax import struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from sigma_vae_jax import likelihoods
from sigma_vae_jax import objectives
from sigma_vae_jax.data import preprocessing

OPTIMIZERS = {"adam": optax.adam, "adamax": optax.adamax, "sgd": optax.sgd}


class TrainState(struct.PyTreeNode):
  """Everything a restart needs, all arrays (checkpointed as one pytree).

  step: int32 scalar, optimizer steps taken.
  params: {"model": the network's params, "likelihood": the likelihood's own
    (e.g. a learned log sigma)}.
  opt_state: optax state.
  likelihood_state: non-trainable likelihood state (running average of sigma*^2).
  ema_params: exponential moving average of `params` used for evaluation
    (config.ema_decay), or {} when disabled.
  rng: uint32[2] base key; step t draws its noise from fold_in(rng, t).
  num_skipped: int32, updates skipped (non-finite, or gradient norm too large).
  nonfinite: first non-finite step (-1: none) and its loss terms.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  likelihood_state: Any
  ema_params: Any
  rng: jax.Array
  num_skipped: jax.Array
  nonfinite: Any

  def eval_params(self):
    """The parameters evaluation uses: the EMA ones when enabled."""
    return self.ema_params if self.ema_params else self.params


def no_nonfinite() -> dict[str, jax.Array]:
  nan = jnp.array(jnp.nan, jnp.float32)
  return {"step": jnp.array(-1, jnp.int32), "loss": nan, "rec": nan, "kl": nan,
          "grad_norm": nan}


def learning_rate_schedule(config: ml_collections.ConfigDict):
  """config.learning_rate, or (config.learning_rate_decay set) the schedule
  lr_t = max(learning_rate * decay ** t, learning_rate_floor) at update t = 0, 1, ...,
  as the reference HVAE's `LowerBoundedExponentialLR(0.999999, 1e-4)` stepped after
  every update."""
  if config.learning_rate_decay is None:
    return config.learning_rate
  # exp(t log decay), log decay taken in float64: optax.exponential_decay's float32
  # decay ** t is 0.04% off at t = 30k for decay = 0.999999 (float32 rounds it to
  # 0.99999899).
  log_decay = math.log(config.learning_rate_decay)
  floor = 0.0 if config.learning_rate_floor is None else config.learning_rate_floor
  lr = config.learning_rate

  def schedule(count):
    return jnp.maximum(lr * jnp.exp(count.astype(jnp.float32) * log_decay), floor)
  return schedule


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """config.optimizer at `learning_rate_schedule(config)`, after clipping the global
  gradient norm to config.grad_clip_norm (None: no clipping)."""
  tx = OPTIMIZERS[config.optimizer](learning_rate_schedule(config))
  if config.grad_clip_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx


def create_train_state(config, model, likelihood: likelihoods.Likelihood,
                       tx: optax.GradientTransformation, data_shape, target_shape
                       ) -> TrainState:
  """Initial state on the default device (deterministic in config.seed).

  data_shape: one input example (e.g. (H, W, C)); target_shape: one example of
  what the likelihood scores (`ModelOutput.target` without its batch axis).
  """
  rng = jax.random.PRNGKey(config.seed)
  init_rng, noise_rng, state_rng = jax.random.split(rng, 3)
  dummy = jnp.zeros((1,) + tuple(data_shape), jnp.float32)
  model_params = model.init(init_rng, dummy, noise_rng)["params"]
  params = {"model": model_params, "likelihood": likelihood.init_params()}
  ema = jax.tree.map(jnp.copy, params) if config.ema_decay else {}
  return TrainState(
      step=jnp.array(0, jnp.int32), params=params, opt_state=tx.init(params),
      likelihood_state=likelihood.init_state(target_shape), ema_params=ema,
      rng=state_rng, num_skipped=jnp.array(0, jnp.int32), nonfinite=no_nonfinite())


def loss_fn(params, likelihood_state, data: jax.Array, rng: jax.Array, *, model,
            likelihood: likelihoods.Likelihood, free_bits: float = 0.0,
            free_bits_rule: str = "per_example"):
  """Training objective: batch mean of the per-example (beta-)negative ELBO.

  data: uint8 or float [B, ...] (images [B, H, W, C], clips [B, T, H, W, C]).
  free_bits > 0: each latent group's KL is floored at free_bits nats in the loss,
  per example or on the batch mean (`free_bits_rule`, `objectives.free_bits_kl`);
  the reported nelbo/kl are always the true ones.
  Returns (loss, (metrics, LikelihoodOutput)); NLL and KL are *summed* over data
  and latent dimensions (nats per example).
  """
  x = preprocessing.to_float(data)
  output = model.apply({"params": params["model"]}, x, rng, train=True)
  terms = objectives.negative_elbo(output, likelihood, params["likelihood"],
                                   likelihood_state, train=True)
  if free_bits:
    floored_kl = objectives.free_bits_kl(terms.kl_per_group, free_bits, free_bits_rule)
    loss = terms.rec.mean() + likelihood.kl_weight * floored_kl
  else:
    loss = terms.loss.mean()
  metrics = {"loss": loss, "nelbo": terms.nelbo.mean(), "rec": terms.rec.mean(),
             "kl": terms.kl.mean()}
  if len(terms.kl_per_group) > 1:
    metrics.update({f"kl_{name}": kl.mean() for name, kl in terms.kl_per_group.items()})
  lik = terms.likelihood_output
  if lik.log_sigma is not None:
    metrics["log_sigma"] = objectives.mean_log_sigma(lik.log_sigma, output.target).mean()
  return loss, (metrics, lik)


def train_step(state: TrainState, data: jax.Array, *, model, likelihood, tx,
               skip_nonfinite: bool, free_bits: float = 0.0,
               free_bits_rule: str = "per_example",
               skip_update_grad_norm=None, ema_decay=None) -> tuple[TrainState, dict]:
  """One optimizer step on a (global) batch [B, ...].

  A non-finite loss or gradient never reaches the parameters: the update is
  dropped. With skip_nonfinite the run goes on and counts it; otherwise the first
  such step is recorded in `state.nonfinite` and all later updates are frozen
  until the host sees it and stops the run (no per-step host sync needed). A
  finite gradient whose norm exceeds skip_update_grad_norm is skipped and counted.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (metrics, lik)), grads = grad_fn(
      state.params, state.likelihood_state, data, rng, model=model,
      likelihood=likelihood, free_bits=free_bits, free_bits_rule=free_bits_rule)
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  halted = state.nonfinite["step"] >= 0
  apply = finite if skip_nonfinite else finite & ~halted
  skipped = ~finite
  if skip_update_grad_norm is not None:
    too_large = finite & (grad_norm > skip_update_grad_norm)
    apply = apply & ~too_large
    skipped = skipped | too_large

  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  likelihood_state = likelihood.update_state(state.likelihood_state, lik)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)
  ema = state.ema_params
  if ema_decay:
    ema = keep(optax.incremental_update(params, ema, 1.0 - ema_decay), ema)

  record = ~finite & ~halted
  this_step = {"step": state.step, "loss": loss, "rec": metrics["rec"],
               "kl": metrics["kl"], "grad_norm": grad_norm}
  nonfinite = jax.tree.map(lambda n, o: jnp.where(record, n, o), this_step,
                           state.nonfinite)
  new_state = state.replace(
      step=state.step + 1,
      params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state),
      likelihood_state=keep(likelihood_state, state.likelihood_state),
      ema_params=ema,
      num_skipped=state.num_skipped + skipped.astype(jnp.int32),
      nonfinite=nonfinite)
  metrics = dict(metrics, grad_norm=grad_norm)
  if likelihood.has_running_sigma:
    metrics["log_sigma_ema"] = likelihood.running_log_sigma(new_state.likelihood_state).mean()
  return new_state, metrics


def device_batch(data: jax.Array, step: jax.Array, data_key: jax.Array,
                 batch_size: int) -> jax.Array:
  """The batch of optimizer step `step` from a device-resident dataset [N, ...].

  Epoch e visits the examples in the order permutation(fold_in(data_key, e)),
  dropping the last partial batch; so the batch is a pure function of the step.
  """
  n = data.shape[0]
  steps_per_epoch = n // batch_size
  epoch, position = step // steps_per_epoch, step % steps_per_epoch
  order = jax.random.permutation(jax.random.fold_in(data_key, epoch), n)
  index = jax.lax.dynamic_slice_in_dim(order, position * batch_size, batch_size)
  return jnp.take(data, index, axis=0)


# ---- checkpoints written before the model contract (sigma_vae_jax <= 0.1) -------

_LEGACY_PARAM_KEYS = {"model": "vae", "likelihood": "decoder"}


class LegacyTrainState(struct.PyTreeNode):
  """The checkpoint layout of earlier versions: params {"vae", "decoder"} and the
  likelihood's state under `decoder_state`; no EMA parameters."""
  step: jax.Array
  params: Any
  opt_state: Any
  decoder_state: Any
  rng: jax.Array
  num_skipped: jax.Array
  nonfinite: Any


def _rename_param_keys(tree, mapping: dict[str, str]):
  """Renames the keys of every {model, likelihood}-style dict in `tree` (params,
  and the optimizer's moments, which mirror the params)."""
  is_params = lambda x: isinstance(x, dict) and set(x) == set(mapping)
  rename = lambda x: {mapping[k]: v for k, v in x.items()} if is_params(x) else x
  return jax.tree.map(rename, tree, is_leaf=is_params)


def to_legacy_layout(state: TrainState) -> LegacyTrainState:
  """A template in the old checkpoint layout, for restoring an old workdir."""
  return LegacyTrainState(
      step=state.step, params=_rename_param_keys(state.params, _LEGACY_PARAM_KEYS),
      opt_state=_rename_param_keys(state.opt_state, _LEGACY_PARAM_KEYS),
      decoder_state=state.likelihood_state, rng=state.rng,
      num_skipped=state.num_skipped, nonfinite=state.nonfinite)


def restore_latest(checkpointer, template: TrainState, *, legacy: bool
                   ) -> tuple[TrainState | None, int | None]:
  """`checkpointer.restore_latest` into `template`'s layout; `legacy`: the workdir was
  written before the model contract (`checkpointing.is_legacy_workdir`) and its
  checkpoints are converted. Returns (state or None, step or None)."""
  if not legacy:
    return checkpointer.restore_latest(template)
  restored, step = checkpointer.restore_latest(to_legacy_layout(template))
  if restored is None:
    return None, None
  print("Converted a checkpoint written by an earlier version of sigma_vae_jax.", flush=True)
  return from_legacy_layout(restored, template), step


def from_legacy_layout(legacy: LegacyTrainState, template: TrainState) -> TrainState:
  """A restored old-layout state in today's layout (EMA, if enabled, starts at the
  restored parameters)."""
  inverse = {v: k for k, v in _LEGACY_PARAM_KEYS.items()}
  params = _rename_param_keys(legacy.params, inverse)
  return template.replace(
      step=legacy.step, params=params,
      opt_state=_rename_param_keys(legacy.opt_state, inverse),
      likelihood_state=legacy.decoder_state,
      ema_params=jax.tree.map(jnp.copy, params) if template.ema_params else {},
      rng=legacy.rng, num_skipped=legacy.num_skipped, nonfinite=legacy.nonfinite)
