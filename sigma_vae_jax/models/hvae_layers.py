"""The building blocks of the hierarchical VAE (`models.hvae`), after BIVA's official
PyTorch code: weight-normalised convs, gated residual blocks, the Gaussian heads of
the latents and the inference / generative stages made of them.

Maps are NHWC, [B, H, W, C]. Every conv is weight-normalised (w = g * v / |v| per
output channel, plus a bias), initialised without data: g = 1, and 0.1 for the
Gaussian heads (the reference initialises them from the first batch). Blocks compute
in their `dtype`; the Gaussian heads return float32 means and log-variances.
Dropout keys are explicit arguments (None: no dropout), not Flax rng collections.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sigma_vae_jax import losses

_HEAD_INIT_SCALE = 0.1
# The activation of every block and head (the reference's ELU).
activation = nn.elu


class WNConv(nn.Module):
  """Weight-normalised 2-D conv (or stride-s transposed conv), 'SAME' padding.

  kernel v [kh, kw, C_in, F] (`kernel_size` k or (kh, kw)), scale g [F], bias [F];
  the conv uses g * v / |v|, the norm over each output channel's (kh, kw, C_in)
  weights. 'SAME' pads an even kernel by (k/2 - 1, k/2), as the reference's
  `getSAMEPadding`. Computes in `dtype`.
  """
  features: int
  kernel_size: Any = 3
  stride: int = 1
  transpose: bool = False
  init_scale: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, s = self.kernel_size, self.stride
    kh, kw = (k, k) if isinstance(k, int) else tuple(k)
    v = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, x.shape[-1], self.features))
    g = self.param("scale", nn.initializers.constant(self.init_scale), (self.features,))
    b = self.param("bias", nn.initializers.zeros, (self.features,))
    w = v * (g * jax.lax.rsqrt(jnp.sum(v * v, axis=(0, 1, 2)) + 1e-12))
    x, w = x.astype(self.dtype), w.astype(self.dtype)
    dims = ("NHWC", "HWIO", "NHWC")
    if self.transpose and s > 1:
      y = jax.lax.conv_transpose(x, w, (s, s), "SAME", dimension_numbers=dims)
    else:
      y = jax.lax.conv_general_dilated(x, w, (s, s), "SAME", dimension_numbers=dims)
    return y + b.astype(self.dtype)


def _resize_like(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
  """Nearest-neighbour upsampling of x [B, h, w, C] to [B, *hw, C] (integer factors)."""
  fh, fw = hw[0] // x.shape[1], hw[1] // x.shape[2]
  return jnp.repeat(jnp.repeat(x, fh, axis=1), fw, axis=2)


class GatedResBlock(nn.Module):
  """act -> conv(C->F) [+ conv(act(aux))] -> act -> dropout -> conv(F->2F, stride)
  -> a * sigmoid(b) [+ residual]. `transpose`: the stride upsamples."""
  features: int
  kernel_size: int
  stride: int = 1
  transpose: bool = False
  residual: bool = True
  input_act: bool = True
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, aux, key, train: bool):
    f, k = self.features, self.kernel_size
    y = WNConv(f, k, dtype=self.dtype, name="conv1")(activation(x) if self.input_act else x)
    if aux is not None:
      ratio = aux.shape[1] / y.shape[1]
      if ratio > 1:  # a larger skip input: strided conv
        aux_conv = WNConv(f, k, stride=int(ratio), dtype=self.dtype, name="aux_conv")
      elif ratio < 1:  # a smaller one: transposed conv
        aux_conv = WNConv(f, k, stride=int(round(1 / ratio)), transpose=True,
                          dtype=self.dtype, name="aux_conv")
      else:
        aux_conv = WNConv(f, 1, dtype=self.dtype, name="aux_conv")
      y = y + aux_conv(activation(aux))
    y = activation(y)
    if self.dropout_rate > 0:
      y = nn.Dropout(self.dropout_rate, deterministic=not train)(y, rng=key)
    y = WNConv(2 * f, k, stride=self.stride, transpose=self.transpose, dtype=self.dtype,
               name="conv2")(y)
    a, b = jnp.split(y, 2, axis=-1)
    y = a * jax.nn.sigmoid(b)
    if self.residual:
      r = x.astype(self.dtype)
      if r.shape[1:3] != y.shape[1:3]:
        if self.transpose:
          r = _resize_like(r, y.shape[1:3])
        else:
          r = nn.avg_pool(r, (3, 3), (self.stride, self.stride), padding="SAME")
      if r.shape[-1] != f:
        r = WNConv(f, 1, dtype=self.dtype, name="residual_proj")(r)
      y = y + r
    return y


class GaussianHead(nn.Module):
  """act -> conv -> (mean, log-variance), float32 [B, h, w, channels]; the raw
  log-variance through softplus or soft-clipped (`log_var_activation`)."""
  channels: int
  kernel_size: Any
  log_var_activation: str
  log_var_min: float
  log_var_max: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h):
    y = WNConv(2 * self.channels, self.kernel_size, init_scale=_HEAD_INIT_SCALE,
               dtype=self.dtype, name="conv")(activation(h)).astype(jnp.float32)
    mean, raw = jnp.split(y, 2, axis=-1)
    if self.log_var_activation == "softplus":
      return mean, jax.nn.softplus(raw)
    return mean, losses.softclip(raw, self.log_var_min, self.log_var_max)


def split_keys(key, num):
  """`num` keys from `key` in one call (cheaper to compile than `num` fold_ins), or
  [None] * num without a key (no dropout / no noise)."""
  return [None] * num if key is None else list(jax.random.split(key, num))


class InferenceStage(nn.Module):
  """B gated residual blocks (the last strided if `downsample`) + the posterior head.

  (x, aux, key, train) -> (h, mean, log_var): h the deterministic features (the
  skip input of the next stage), mean/log_var of q(z_s | z_(s-1)).
  """
  filters: int
  kernel_size: int
  num_blocks: int
  downsample: bool
  latent_channels: int
  latent_kernel_size: Any
  input_act: bool
  log_var_activation: str
  log_var_min: float
  log_var_max: float
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, aux, key, train: bool):
    h, keys = x, split_keys(key, self.num_blocks)
    for j in range(self.num_blocks):
      stride = 2 if (self.downsample and j == self.num_blocks - 1) else 1
      h = GatedResBlock(self.filters, self.kernel_size, stride=stride, residual=j > 0,
                        input_act=self.input_act or j > 0, dropout_rate=self.dropout_rate,
                        dtype=self.dtype, name=f"block{j}")(
                            h, None if aux is None else aux[j], keys[j], train)
    mean, log_var = GaussianHead(self.latent_channels, self.latent_kernel_size,
                                 self.log_var_activation, self.log_var_min,
                                 self.log_var_max, self.dtype, name="q_head")(h)
    return h, mean, log_var


class GenerativeStage(nn.Module):
  """The mirrored blocks: z_s -> d_s (the first block a transposed stride-2 conv if
  `upsample`). (z, aux, key, train) -> (d, [each block's output])."""
  filters: int
  kernel_size: int
  num_blocks: int
  upsample: bool
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z, aux, key, train: bool):
    d, hidden, keys = z, [], split_keys(key, self.num_blocks)
    for j in range(self.num_blocks):
      stride = 2 if (self.upsample and j == 0) else 1
      d = GatedResBlock(self.filters, self.kernel_size, stride=stride, transpose=True,
                        residual=j > 0, input_act=j > 0, dropout_rate=self.dropout_rate,
                        dtype=self.dtype, name=f"block{j}")(
                            d, None if aux is None else aux[j], keys[j], train)
      hidden.append(d)
    return d, hidden
