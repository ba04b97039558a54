"""The recurrent networks of SVG-LP (`models.svg_lp`), as edenton/svg's
`models/lstm.py`: PyTorch's LSTM cell, a stack of them behind a dense embedding, the
frame predictor and the Gaussian LSTMs of the posterior and the learned prior.

One call is one time step on [B, D] inputs (the model scans them over time). States
(c, h) are float32 [B, rnn_size], one pair per layer; the cells compute in `dtype`,
the Gaussian heads in float32. LSTM weights and biases are PyTorch's U(-1/sqrt(H),
1/sqrt(H)) (which the reference keeps); the dense embeddings and heads N(0, 0.02).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sigma_vae_jax.models.svg_lp_vgg64 import weight_init


def _uniform_init(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def zero_carry(batch: int, rnn_size: int, layers: int):
  """Initial (c, h) states of `layers` LSTM cells, float32."""
  zeros = jnp.zeros((batch, rnn_size), jnp.float32)
  return tuple((zeros, zeros) for _ in range(layers))


class LSTMCell(nn.Module):
  """PyTorch's nn.LSTMCell: gates (i, f, g, o) = x W_ih + b_ih + h W_hh + b_hh, weights
  and biases U(-1/sqrt(H), 1/sqrt(H)) (the reference keeps PyTorch's initialisation).
  (c, h) -> (c', h'), float32 states."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry, x):
    c, h = carry
    init = _uniform_init(1.0 / math.sqrt(self.features))
    dense = functools.partial(nn.Dense, 4 * self.features, dtype=self.dtype,
                              kernel_init=init, bias_init=init)
    gates = dense(name="ih")(x.astype(self.dtype)) + dense(name="hh")(h.astype(self.dtype))
    i, f, g, o = jnp.split(gates.astype(jnp.float32), 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (c, h), h


class LSTMStack(nn.Module):
  """Dense embed + `layers` LSTM cells; one step: (carry, x [B, D]) -> (carry, h [B, rnn])."""
  rnn_size: int
  layers: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry, x):
    h = nn.Dense(self.rnn_size, dtype=self.dtype, kernel_init=weight_init, name="embed")(
        x.astype(self.dtype))
    new_carry = []
    for layer, state in enumerate(carry):
      state, h = LSTMCell(self.rnn_size, self.dtype, name=f"lstm{layer}")(state, h)
      new_carry.append(state)
    return tuple(new_carry), h


class FramePredictor(nn.Module):
  """The reference's `lstm`: [g_{t-1}, z_t] -> next frame code (dense + tanh), float32."""
  g_dim: int
  rnn_size: int
  layers: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry, x):
    carry, h = LSTMStack(self.rnn_size, self.layers, self.dtype, name="rnn")(carry, x)
    g = nn.Dense(self.g_dim, dtype=self.dtype, kernel_init=weight_init, name="output")(h)
    return carry, jnp.tanh(g).astype(jnp.float32)


class GaussianLSTM(nn.Module):
  """The reference's `gaussian_lstm`: input -> (mean, log variance) over z_dim, float32."""
  z_dim: int
  rnn_size: int
  layers: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry, x):
    carry, h = LSTMStack(self.rnn_size, self.layers, self.dtype, name="rnn")(carry, x)
    h = h.astype(jnp.float32)  # the heads in float32 (exp(log_var) needs the precision)
    mean = nn.Dense(self.z_dim, kernel_init=weight_init, name="mean")(h)
    log_var = nn.Dense(self.z_dim, kernel_init=weight_init, name="log_var")(h)
    return carry, (mean, log_var)
