"""The paper's small convolutional VAE (App. B, as in the authors' PyTorch release).

Encoder: conv 3x3 s1 (c), conv 4x4 s2 (2c), conv 5x5 s2 (4c), ReLU, dense heads to a
diagonal Gaussian posterior over `latent_dim` latents; prior N(0, I). Decoder: dense
to 4c channels at 1/4 resolution, 2x (transposed conv 6x6 s2), conv 5x5 to the
likelihood's raw outputs.

Shapes: images are float32 [B, H, W, C] in [0, 1]; H and W must be divisible by 4
(two stride-2 stages). Latents are [B, latent_dim].

Speed: `conv_impl` picks how some layers are computed: "xla" (the plain layers),
"fast" (`_conv_kernels`: the same function, parameters and gradients in forms XLA:CPU
runs several times faster; forward-mode autodiff (jax.jvp) needs "xla") or "auto"
(fast on CPU, where `scripts/benchmark.py` measured it faster, xla elsewhere).
`dtype` computes the networks in bfloat16 for accelerators; parameters, the
posterior and the decoder outputs stay float32.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from sigma_vae_jax import losses
from sigma_vae_jax.models import _conv_kernels as kernels
from sigma_vae_jax.models.base import check_image_example, LatentGroup, ModelOutput

CONV_IMPLS = ("auto", "xla", "fast")


def default_config() -> ml_collections.ConfigDict:
  """The `config.model` section of this model."""
  model = ml_collections.ConfigDict()
  model.name = "conv_vae"
  # Dimensions of the Gaussian latent z (20 in the paper).
  model.latent_dim = 20
  # Channels of the first conv layer; doubled in each following layer (32, 64, 128).
  model.base_channels = 32
  # The networks' compute type: "float32" or "bfloat16" (for GPU/TPU; parameters,
  # the posterior, the decoder outputs and the loss stay float32).
  model.dtype = "float32"
  # "auto" (fast kernels on CPU, XLA's own elsewhere), "xla" or "fast"; the same
  # function either way. Forward-mode autodiff (jax.jvp) of the model needs "xla".
  model.conv_impl = "auto"
  return model


def resolve_conv_impl(conv_impl: str, platform: Optional[str] = None) -> str:
  """"auto" -> "fast" on CPU (measured ~1.5-2x faster there), else "xla"."""
  if conv_impl != "auto":
    return conv_impl
  return "fast" if (platform or jax.default_backend()) == "cpu" else "xla"


def validate(model_config, data_shape: Optional[Sequence[int]] = None) -> None:
  """Raises ValueError, its message starting with the config field at fault, if the
  fields are invalid or (given `data_shape`, one example) the VAE cannot take it."""
  if model_config.latent_dim < 1:
    raise ValueError(f"model.latent_dim: must be a positive integer; got "
                     f"{model_config.latent_dim}")
  if model_config.base_channels < 1:
    raise ValueError(f"model.base_channels: must be a positive integer; got "
                     f"{model_config.base_channels}")
  if model_config.conv_impl not in CONV_IMPLS:
    raise ValueError(f"model.conv_impl: must be one of {CONV_IMPLS}; got "
                     f"{model_config.conv_impl!r}")
  if data_shape is None:
    return
  check_image_example(data_shape, "conv VAE", validate_image_size, model_config)


def validate_image_size(model_config, size: Sequence[int]) -> None:
  """The conv VAE downsamples twice by 2: (H, W) must be positive multiples of 4."""
  del model_config
  h, w = size
  if h % 4 or w % 4 or h < 4 or w < 4:
    suggestion = (max(4, round(h / 4) * 4), max(4, round(w / 4) * 4))
    raise ValueError(
        f"dataset.image_size: the conv VAE downsamples twice by 2, so height and "
        f"width must be positive multiples of 4; got {h}x{w}. Set dataset.image_size "
        f"to e.g. {suggestion} (images are resized on the host).")


def build(model_config, data_shape: Sequence[int], num_outputs: int) -> "ConvVAE":
  fast = resolve_conv_impl(model_config.conv_impl) == "fast"
  return ConvVAE(
      image_shape=tuple(data_shape), num_outputs=num_outputs,
      latent_dim=model_config.latent_dim, base_channels=model_config.base_channels,
      fast_encoder=fast, fast_upsample=fast, fast_output=fast,
      dtype=jnp.dtype(model_config.dtype))


class ConvEncoder(nn.Module):
  """conv 3x3 s1 (c), conv 4x4 s2 (2c), conv 5x5 s2 (4c), ReLU; dense heads.

  Returns float32 (mean, log_var), each [B, latent_dim].
  """
  latent_dim: int
  base_channels: int = 32
  fast: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    c = self.base_channels
    conv = functools.partial(kernels.EncoderConv, fast=self.fast, dtype=self.dtype)
    # Paddings as in PyTorch (p=1, 1, 2), so sizes are H, H/2, H/4. The names are
    # nn.Conv's, so parameters (and checkpoints) are those of plain nn.Conv layers.
    x = nn.relu(conv(c, 3, stride=1, padding=1, name="Conv_0")(x))
    x = nn.relu(conv(2 * c, 4, stride=2, padding=1, name="Conv_1")(x))
    x = nn.relu(conv(4 * c, 5, stride=2, padding=2, name="Conv_2")(x))
    x = x.reshape(x.shape[0], -1)
    mean = nn.Dense(self.latent_dim, dtype=self.dtype, name="mean")(x)
    log_var = nn.Dense(self.latent_dim, dtype=self.dtype, name="log_var")(x)
    return mean.astype(jnp.float32), log_var.astype(jnp.float32)


class ConvDecoder(nn.Module):
  """dense to 4c channels at 1/4 resolution, 2x (transposed conv 6x6 s2), conv 5x5.

  Returns float32 raw outputs [B, H, W, num_outputs]; a likelihood interprets them.
  """
  image_shape: Sequence[int]
  num_outputs: int
  base_channels: int = 32
  fast_upsample: bool = True
  fast_output: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    h, w, _ = self.image_shape
    c = self.base_channels
    x = nn.relu(nn.Dense((h // 4) * (w // 4) * 4 * c, dtype=self.dtype)(z))
    x = x.reshape(z.shape[0], h // 4, w // 4, 4 * c)
    # Explicit names keep the parameter paths (and checkpoints) of earlier versions.
    x = nn.relu(kernels.Upsample2x(2 * c, fast=self.fast_upsample, name="Upsample2x_0")(x))
    # With both fast paths the last upsampling hands its output on as 2x2 phases
    # (ReLU commutes with depth-to-space) and the output conv works on those.
    phases = self.fast_upsample and self.fast_output
    x = nn.relu(kernels.Upsample2x(c, fast=self.fast_upsample, phase_output=phases,
                                   name="Upsample2x_1")(x))
    out = kernels.OutputConv(self.num_outputs, 5, fast=self.fast_output,
                             phase_input=phases, name="Conv_0")(x)
    return out.astype(jnp.float32)


class ConvVAE(nn.Module):
  """Gaussian-posterior VAE with a standard normal prior (contract: `models.base`).

  `__call__(x, rng)` -> ModelOutput with one latent group "z" [B, latent_dim];
  `encode(x)` -> (mean, log_var); `decode(z)` -> raw decoder outputs
  [B, H, W, num_outputs]. All float32; `dtype` is the networks' compute type.
  """
  image_shape: Sequence[int]
  num_outputs: int
  latent_dim: int = 20
  base_channels: int = 32
  fast_encoder: bool = True
  fast_upsample: bool = True
  fast_output: bool = True
  dtype: Any = jnp.float32

  def setup(self):
    self.encoder = ConvEncoder(self.latent_dim, self.base_channels, self.fast_encoder,
                               self.dtype)
    self.decoder = ConvDecoder(self.image_shape, self.num_outputs, self.base_channels,
                               self.fast_upsample, self.fast_output, self.dtype)

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.encoder(x)

  def decode(self, z: jax.Array) -> jax.Array:
    return self.decoder(z)

  def __call__(self, x: jax.Array, rng: jax.Array, train: bool = False) -> ModelOutput:
    del train  # no dropout or other training-only behaviour
    mean, log_var = self.encode(x)
    z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(rng, mean.shape, mean.dtype)
    # Inspectable with apply(..., mutable=["intermediates"]); free otherwise.
    self.sow("intermediates", "z", z)
    latent = LatentGroup(kl=losses.gaussian_kl(mean, log_var),
                         log_q=losses.gaussian_log_prob(z, mean, log_var),
                         log_p=losses.gaussian_log_prob(z))
    return ModelOutput(decoder_outputs=self.decode(z), target=x, latents={"z": latent})

  def reconstruct(self, x: jax.Array) -> jax.Array:
    return self.decode(self.encode(x)[0])

  def sample(self, rng: jax.Array, num: int, context: Optional[jax.Array] = None,
             temperature: float = 1.0) -> jax.Array:
    del context  # an unconditional image model
    z = jax.random.normal(rng, (num, self.latent_dim), jnp.float32)
    return self.decode(temperature * z)
