"""The observation-model contract: `Likelihood` (the base class every decoder
subclasses), `LikelihoodOutput` (what its `nll` returns) and the helpers the decoders
share (sigmoid mean, 8-bit quantization, the soft floor on a log sigma).

Shapes: x is float32 [B, *event] in [0, 1], channels last; `out` is the network
output [B, *event[:-1], num_outputs(C)]."""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

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
