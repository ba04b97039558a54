"""The vgg_64 frame encoder and decoder of SVG-LP (`models.svg_lp`), as edenton/svg's
`models/vgg_64.py`: stages of 3x3 conv + norm + LeakyReLU(0.2) with skips between
encoder and decoder, and the normalisation layer they use.

Frames are [*lead, H, W, C] with any leading axes (batch, or batch and time), H = W =
4 * 2**num_stages pixels; batch statistics reduce over the first axis and the spatial
axes, never over time. Conv and dense kernels are initialised N(0, 0.02), biases 0
(the reference's `utils.init_weights`); norm scales 1. Layers compute in their
`dtype`; normalisation statistics and the encoder's codes and decoder's outputs are
float32.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# (channels at width 1, conv layers) of the vgg_64 stages, from full resolution down.
VGG64_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3))
_NORM_EPS = 1e-5  # PyTorch BatchNorm2d's
_LEAKY_SLOPE = 0.2

# The reference's initialisation of conv and dense kernels.
weight_init = nn.initializers.normal(0.02)


def frame_size(num_stages: int) -> int:
  """Height and width of the frames a `num_stages`-stage encoder takes."""
  return 4 * 2 ** num_stages


def stage_sizes(num_stages: int, width: float) -> tuple[tuple[int, int], ...]:
  """(channels, layers) of each stage for `num_stages` stages at channel multiplier `width`."""
  return tuple((max(1, int(round(c * width))), n) for c, n in VGG64_STAGES[:num_stages])


class Norm(nn.Module):
  """Normalisation of [*lead, H, W, C] maps with a learned per-channel affine map.

  kind="batch": statistics over axis 0 (the batch) and H, W, separately for the other
  leading axes (time); "group": per example over H, W and `groups` channel groups;
  "none": identity. Statistics in float32; biased variance, eps 1e-5 (as PyTorch).
  """
  kind: str
  groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.kind == "none":
      return x
    c = x.shape[-1]
    h = x.astype(jnp.float32)
    if self.kind == "batch":
      axes = (0, h.ndim - 3, h.ndim - 2)
      mean = h.mean(axes, keepdims=True)
      var = jnp.square(h - mean).mean(axes, keepdims=True)
      h = (h - mean) * jax.lax.rsqrt(var + _NORM_EPS)
    elif self.kind == "group":
      g = math.gcd(self.groups, c)
      hg = h.reshape(h.shape[:-1] + (g, c // g))
      axes = (hg.ndim - 4, hg.ndim - 3, hg.ndim - 1)
      mean = hg.mean(axes, keepdims=True)
      var = jnp.square(hg - mean).mean(axes, keepdims=True)
      h = ((hg - mean) * jax.lax.rsqrt(var + _NORM_EPS)).reshape(h.shape)
    else:
      raise ValueError(f"model.norm: unknown normalisation {self.kind!r}")
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    return (h * scale + bias).astype(self.dtype)


class VGGLayer(nn.Module):
  """3x3 conv (padding 1) + norm + LeakyReLU(0.2): the reference's `vgg_layer`."""
  features: int
  norm: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, (3, 3), padding=1, dtype=self.dtype, kernel_init=weight_init,
                name="conv")(x)
    x = Norm(self.norm, dtype=self.dtype, name="norm")(x)
    return nn.leaky_relu(x, _LEAKY_SLOPE)


def _max_pool2(x):
  """2x2 max pool, stride 2, on [*lead, H, W, C] -> [*lead, H/2, W/2, C].

  The gradient of each window goes to its first maximum in row-major order, as the
  reference's `nn.MaxPool2d` (PyTorch keeps the first of tied maxima). JAX's `max`
  would split it among tied maxima, and the flat backgrounds of video frames tie whole
  windows. Selecting with `where` (not multiplying by a one-hot) keeps the value exact.
  """
  *lead, h, w, c = x.shape
  windows = x.reshape(*lead, h // 2, 2, w // 2, 2, c)
  windows = jnp.moveaxis(windows, -4, -3).reshape(*lead, h // 2, w // 2, 4, c)
  first = jnp.argmax(windows, axis=-2)  # [*lead, H/2, W/2, C]: the first maximum
  chosen = jnp.arange(4)[:, None] == first[..., None, :]
  return jnp.where(chosen, windows, jnp.zeros((), windows.dtype)).sum(axis=-2)


def _upsample2(x):
  """Nearest-neighbour 2x upsampling of [*lead, H, W, C]."""
  return jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)


class FrameEncoder(nn.Module):
  """vgg_64 encoder: frames [*lead, H, W, C] -> (codes [*lead, g_dim] float32,
  skips: one [*lead, h_k, w_k, c_k] map per stage, full resolution first)."""
  g_dim: int
  stages: Sequence[tuple[int, int]]
  norm: str = "batch"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = x.astype(self.dtype)
    skips = []
    for k, (c, n) in enumerate(self.stages):
      if k:
        h = _max_pool2(h)
      for j in range(n):
        h = VGGLayer(c, self.norm, self.dtype, name=f"stage{k}_{j}")(h)
      skips.append(h)
    h = _max_pool2(h)  # [*lead, 4, 4, c]
    # The reference's 4x4 'valid' conv on the 4x4 map: a dense layer on the flattened map.
    h = nn.Dense(self.g_dim, dtype=self.dtype, kernel_init=weight_init, name="code")(
        h.reshape(h.shape[:-3] + (-1,)))
    h = Norm(self.norm, groups=1, dtype=self.dtype, name="code_norm")(h[..., None, None, :])
    return jnp.tanh(h[..., 0, 0, :]).astype(jnp.float32), skips


class FrameDecoder(nn.Module):
  """Mirror of the encoder: (codes [*lead, g_dim], skips) -> raw outputs
  [*lead, H, W, num_outputs] float32."""
  num_outputs: int
  stages: Sequence[tuple[int, int]]
  norm: str = "batch"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, code, skips):
    c_last = self.stages[-1][0]
    # The reference's 4x4 transposed conv on the 1x1 code: a dense layer to a 4x4 map
    # (with the conv's per-channel bias).
    h = nn.Dense(16 * c_last, use_bias=False, dtype=self.dtype, kernel_init=weight_init,
                 name="code")(code.astype(self.dtype))
    bias = self.param("code_bias", nn.initializers.zeros, (c_last,), jnp.float32)
    h = h.reshape(code.shape[:-1] + (4, 4, c_last)) + bias.astype(self.dtype)
    h = nn.leaky_relu(Norm(self.norm, dtype=self.dtype, name="code_norm")(h), _LEAKY_SLOPE)
    for k in reversed(range(len(self.stages))):
      c, n = self.stages[k]
      h = jnp.concatenate([_upsample2(h), skips[k].astype(self.dtype)], axis=-1)
      for j in range(n):
        if j < n - 1:
          h = VGGLayer(c, self.norm, self.dtype, name=f"stage{k}_{j}")(h)
        elif k:
          h = VGGLayer(self.stages[k - 1][0], self.norm, self.dtype, name=f"stage{k}_{j}")(h)
        else:  # the reference's 3x3 transposed conv (stride 1, padding 1) = a 3x3 conv
          h = nn.Conv(self.num_outputs, (3, 3), padding=1, dtype=self.dtype,
                      kernel_init=weight_init, name="output")(h)
    return h.astype(jnp.float32)
