"""The paper's small convolutional VAE (App. B, as in the authors' PyTorch release).

The networks know nothing about likelihoods: the decoder network outputs
`num_outputs` raw channels per pixel and a `decoders.Decoder` interprets them.

Shapes: images are float32 [B, H, W, C] in [0, 1]; H and W must be divisible by 4
(two stride-2 stages). Latents are [B, latent_dim].
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's ConvTranspose2d(k=6, s=2, p=2) doubles the size; as an lhs-dilated
# convolution that is a padding of k - 1 - p = 3 on each side.
_UPSAMPLE_KERNEL = 6
_UPSAMPLE_PADDING = ((3, 3), (3, 3))


def depth_to_space(x: jax.Array, block: int = 2) -> jax.Array:
  """[B, H, W, block*block*C] -> [B, block*H, block*W, C], phase-major channels."""
  b, h, w, c = x.shape
  c_out = c // (block * block)
  x = x.reshape(b, h, w, block, block, c_out)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * block, w * block, c_out)


def upsample_conv_transpose(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Stride-2, 6x6 transposed convolution as XLA spells it: an lhs-dilated conv.

  Args:
    x: [B, H, W, C_in].
    kernel: [6, 6, C_in, C_out] (HWIO).
  Returns:
    [B, 2H, 2W, C_out].
  """
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding=_UPSAMPLE_PADDING,
      lhs_dilation=(2, 2), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def upsample_depth_to_space(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """The same function as `upsample_conv_transpose`, computed without dilation.

  Output pixel 2t+a (along each axis) of the dilated convolution only meets the
  taps k = 1-a, 3-a, 5-a of the kernel, applied to inputs t-1, t, t+1. So each of
  the four output phases (a, b) is a 3x3 'SAME' convolution with the sub-kernel
  kernel[1-a::2, 1-b::2]; one convolution to 4*C_out channels computes all four
  and depth-to-space interleaves them. XLA:CPU runs this several times faster than
  the lhs-dilated form (forward and backward), for identical results.
  """
  kh, kw, c_in, c_out = kernel.shape
  assert (kh, kw) == (_UPSAMPLE_KERNEL, _UPSAMPLE_KERNEL), kernel.shape
  phases = [kernel[1 - a::2, 1 - b::2] for a in (0, 1) for b in (0, 1)]
  # [3, 3, C_in, 4, C_out] -> [3, 3, C_in, 4*C_out], phase-major as depth_to_space expects.
  stacked = jnp.stack(phases, axis=3).reshape(3, 3, c_in, 4 * c_out)
  y = jax.lax.conv_general_dilated(
      x, stacked, window_strides=(1, 1), padding=((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return depth_to_space(y, 2)


class Upsample2x(nn.Module):
  """ConvTranspose2d(kernel 6, stride 2, padding 2) with a choice of algorithm."""
  features: int
  fast: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
        "kernel", nn.initializers.lecun_normal(),
        (_UPSAMPLE_KERNEL, _UPSAMPLE_KERNEL, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    fn = upsample_depth_to_space if self.fast else upsample_conv_transpose
    return fn(x, kernel.astype(x.dtype)) + bias.astype(x.dtype)


def padded_output_channels(c_out: int) -> int:
  """Output channels the fast final convolution computes (zero kernel columns added).

  XLA:CPU runs the gradients of a 5x5 convolution to an odd number (> 1) of
  channels, e.g. the 3 of an RGB Gaussian decoder, several times slower than to
  the next multiple of 4; the extra outputs are exact zeros and are sliced off.
  """
  return c_out + (-c_out) % 4 if c_out > 1 and c_out % 2 else c_out


class OutputConv(nn.Module):
  """The decoder's last 'SAME' convolution; the same parameters as nn.Conv.

  fast: compute it with the kernel zero-padded to `padded_output_channels`
  output channels and slice them off (the same function and gradients).
  """
  features: int
  kernel_size: int = 5
  fast: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (k, k, x.shape[-1], self.features)).astype(x.dtype)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    padded = padded_output_channels(self.features) if self.fast else self.features
    if padded > self.features:
      kernel = jnp.pad(kernel, ((0, 0), (0, 0), (0, 0), (0, padded - self.features)))
    p = (k - 1) // 2
    y = jax.lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding=((p, k - 1 - p), (p, k - 1 - p)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y[..., :self.features] + bias.astype(x.dtype)


class Encoder(nn.Module):
  """conv 3x3 s1 (c), conv 4x4 s2 (2c), conv 5x5 s2 (4c), ReLU; dense heads.

  Returns (mean, log_var), each [B, latent_dim].
  """
  latent_dim: int
  base_channels: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    c = self.base_channels
    # Paddings as in PyTorch (p=1, 1, 2), so sizes are H, H/2, H/4.
    x = nn.relu(nn.Conv(c, (3, 3), strides=1, padding=((1, 1), (1, 1)))(x))
    x = nn.relu(nn.Conv(2 * c, (4, 4), strides=2, padding=((1, 1), (1, 1)))(x))
    x = nn.relu(nn.Conv(4 * c, (5, 5), strides=2, padding=((2, 2), (2, 2)))(x))
    x = x.reshape(x.shape[0], -1)
    mean = nn.Dense(self.latent_dim, name="mean")(x)
    log_var = nn.Dense(self.latent_dim, name="log_var")(x)
    return mean, log_var


class Decoder(nn.Module):
  """dense to 4c channels at 1/4 resolution, 2x (transposed conv 6x6 s2), conv 5x5.

  Returns raw outputs [B, H, W, num_outputs]; a likelihood interprets them.
  """
  image_shape: Sequence[int]
  num_outputs: int
  base_channels: int = 32
  fast_upsample: bool = True
  fast_output: bool = True

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    h, w, _ = self.image_shape
    c = self.base_channels
    x = nn.relu(nn.Dense((h // 4) * (w // 4) * 4 * c)(z))
    x = x.reshape(z.shape[0], h // 4, w // 4, 4 * c)
    x = nn.relu(Upsample2x(2 * c, fast=self.fast_upsample)(x))
    x = nn.relu(Upsample2x(c, fast=self.fast_upsample)(x))
    return OutputConv(self.num_outputs, 5, fast=self.fast_output, name="Conv_0")(x)


class VAE(nn.Module):
  """Gaussian-posterior VAE with a standard normal prior.

  `__call__(x, rng)` -> (decoder outputs [B, H, W, num_outputs], mean, log_var, z).
  `encode(x)` -> (mean, log_var); `decode(z)` -> decoder outputs.
  """
  image_shape: Sequence[int]
  num_outputs: int
  latent_dim: int = 20
  base_channels: int = 32
  fast_upsample: bool = True
  fast_output: bool = True

  def setup(self):
    self.encoder = Encoder(self.latent_dim, self.base_channels)
    self.decoder = Decoder(self.image_shape, self.num_outputs, self.base_channels,
                           self.fast_upsample, self.fast_output)

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.encoder(x)

  def decode(self, z: jax.Array) -> jax.Array:
    return self.decoder(z)

  def __call__(self, x: jax.Array, rng: jax.Array):
    mean, log_var = self.encode(x)
    z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(rng, mean.shape, mean.dtype)
    return self.decode(z), mean, log_var, z


def validate_image_shape(image_shape: Sequence[int]) -> None:
  """Raises ValueError (naming `dataset.image_size`) if the VAE cannot take it."""
  if len(image_shape) != 3:
    raise ValueError(f"image shape must be (H, W, C); got {tuple(image_shape)}")
  h, w, c = image_shape
  if h % 4 or w % 4 or h < 4 or w < 4:
    suggestion = (max(4, round(h / 4) * 4), max(4, round(w / 4) * 4))
    raise ValueError(
        f"dataset.image_size: the conv VAE downsamples twice by 2, so height and "
        f"width must be positive multiples of 4; got {h}x{w}. Set dataset.image_size "
        f"to e.g. {suggestion} (images are resized on the host).")
  if c < 1:
    raise ValueError(f"images need at least one channel; got {c}")
