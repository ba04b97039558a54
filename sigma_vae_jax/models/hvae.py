"""The paper's 15-layer hierarchical VAE (App. B, Table 2): the deep-VAE baseline of
Maaløe et al. (2019, BIVA's official PyTorch code, model type "vae") without the
skip connections between stages, re-expressed in Flax linen. This module holds the
model's config fields, their checks and the model; its blocks (weight-normalised
convs, gated residual blocks, Gaussian heads, stages) are in `models.hvae_layers`.

Structure (stage s = 1..L, L = `num_stages`; F = `filters`; B = `blocks_per_stage`):

* Inference, bottom-up, q(z_s | z_(s-1)) with z_0 = 2x - 1 (in [-1, 1], as the
  reference's CIFAR-10 transform `x * 2 - 1`): stage s is
  B gated residual blocks (kernel `first_kernel_size` in stage 1, `kernel_size`
  elsewhere; the last block has stride 2 if s is in `downsample_stages`) followed by
  a Gaussian head, ELU -> weight-normalised conv (kernel below) -> mean and
  log-variance of z_s ([B, h_s, w_s, c_s], c_s = latent_channels - (s-1) *
  latent_channel_step). The next stage reads the *sample* z_s.
* Generation, top-down: p(z_L) = N(0, I); stage s maps z_s through the mirrored
  blocks (reversed order, the stride-2 block as a transposed conv) to features d_s;
  the Gaussian head of stage s-1 reads d_s and gives the learned conditional prior
  p(z_(s-1) | z_s). ELU -> 1x1 weight-normalised conv of d_1 gives the likelihood's
  `num_outputs` raw channels per pixel.
* Gated residual block (as the reference): ELU -> conv(C->F) -> [+ skip input] ->
  ELU -> dropout -> conv(F->2F, stride) -> a * sigmoid(b) -> + residual. As in the
  reference, the first block of each stack has no residual (its input is x or a
  latent sample) and its input ELU only in inference stages s > 1 (on z_(s-1));
  a stride-2 block's residual is a 3x3/2 average pool. `GatedResBlock` also handles a residual
  across a transposed stride (nearest-neighbour upsampling) or a channel change
  (1x1 projection), which the stage layouts here never ask for: the strided block
  of the generative path is the first of its stack. All convs are weight-normalised
  (w = g * v / |v| per output channel, plus a bias), initialised without data (g = 1;
  0.1 for the Gaussian heads); the reference initialises them from the first batch
  (README, "Hierarchical VAE").
* `skip_connections=True` adds the reference's "bottom-up / top-down" connections:
  every inference block of stage s also reads the deterministic output of stage
  s-1, every generative block of stage s the block outputs of stage s+1 (through
  ELU -> a conv added after the first conv). Off by default: the paper trains the
  baseline "without the top-down and bottom-up connections" (App. B; the
  reference's `--no_skip`).

Log-variances (`log_var_activation`): "softplus" (the reference's default,
`log_var_act=nn.Softplus` in BIVA's `run_deepvae.py`) maps each head's raw
log-variance to softplus(raw) >= 0, i.e. every posterior and conditional prior has
variance >= 1 per latent dimension; "softclip" bounds it smoothly to (`log_var_min`,
`log_var_max`) instead (`losses.softclip`). Means are unbounded; the top prior
N(0, I) is fixed. Gaussian heads: a weight-normalised conv whose kernel is, by
default, the latent map's size (the reference's `'kernel': 16, 8, 4` at 16x16, 8x8,
4x4 on CIFAR-10); `latent_kernel_size` overrides it.

The bound (the contract of `LatentGroup.kl`: an unbiased estimate of E_q[log q -
log p]). Inference is bottom-up, so z_(s+1) is drawn from q(. | z_s) and the prior
p(z_s | z_(s+1)) is conditioned on a latent drawn from the very z_s it scores: the
closed-form KL(q(z_s | z_(s-1)) || p(z_s | z_(s+1))) integrates z_s out with
z_(s+1) held fixed and has a different expectation. So `kl` of z_1..z_(L-1) is the
one-sample log q(z_s | z_(s-1)) - log p(z_s | z_(s+1)) of the drawn z_s, as the
reference's `ConvNormal.loss`; only the top group's prior, N(0, I), does not
depend on a later draw, and its KL is in closed form (exact, lower variance).

Latent groups "z1".."zL" (bottom to top; an OrderedDict, so that jit keeps the
order), each elementwise [B, h_s, w_s, c_s].
Dropout (`dropout_rate`, both paths, as the reference's 0.5) is on only with
train=True; its keys come from the `rng` argument (no Flax rng collections).
`dtype` is the blocks' compute type; parameters, means/log-variances, latents and
the decoder outputs are float32. `remat=True` rematerialises each stage's blocks
(`nn.remat`) so larger batches fit: the same function and gradients.
"""

from __future__ import annotations

import collections
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from sigma_vae_jax import losses
from sigma_vae_jax.models.base import check_image_example, LatentGroup, ModelOutput
from sigma_vae_jax.models.hvae_layers import (activation, GaussianHead, GenerativeStage,
                                              InferenceStage, split_keys, WNConv)

COMPUTE_DTYPES = ("float32", "bfloat16")
LOG_VAR_ACTIVATIONS = ("softplus", "softclip")
# Model fields that take None (configuration.nullable_fields).
NULLABLE_FIELDS = ("latent_kernel_size",)


def default_config() -> ml_collections.ConfigDict:
  """The `config.model` section: the 15-layer CIFAR-10 model of the paper."""
  model = ml_collections.ConfigDict()
  model.name = "hvae"
  # Stochastic layers (stages), each one latent group z_s.
  model.num_stages = 15
  # Channels F of every gated residual block (the gate's conv has 2F).
  model.filters = 96
  # Gated residual blocks per stage, in each path.
  model.blocks_per_stage = 3
  # Conv kernel of stage 1's blocks, and of every other stage's blocks.
  model.first_kernel_size = 5
  model.kernel_size = 3
  # 1-based stages whose last inference block has stride 2 (the generative path
  # upsamples there). 32x32 images: z1-z10 at 16x16, z11-z14 at 8x8, z15 at 4x4.
  model.downsample_stages = (1, 11, 15)
  # Channels of z_1; each following stage has latent_channel_step fewer (38..10).
  model.latent_channels = 38
  model.latent_channel_step = 2
  # Kernel of the convs that give each Gaussian's mean and log-variance; None: the
  # latent map's size at that stage (the reference's 16 / 8 / 4 at 32x32).
  model.latent_kernel_size = ml_collections.config_dict.placeholder(int)
  # Dropout in every block of both paths, only when training.
  model.dropout_rate = 0.5
  # Bottom-up / top-down connections between stages (BIVA's); the paper's baseline
  # has none.
  model.skip_connections = False
  # Activation of every posterior and conditional prior's raw log-variance:
  # "softplus" (the reference's) or "softclip" (to (log_var_min, log_var_max)).
  model.log_var_activation = "softplus"
  # Soft-clip bounds (losses.softclip), used with log_var_activation="softclip".
  model.log_var_min = -8.0
  model.log_var_max = 3.0
  # Compute type of the blocks: "float32" or "bfloat16" (parameters, latents and
  # decoder outputs stay float32).
  model.dtype = "float32"
  # Rematerialise each stage in the backward pass (less memory, ~1/3 more compute).
  model.remat = False
  return model


def _stage_specs(model_config, data_shape):
  """Static per-stage sizes: [(kernel, downsample, latent_channels, (h, w))], (h, w)
  the latent map of the stage."""
  h, w = data_shape[0], data_shape[1]
  specs = []
  for s in range(1, model_config.num_stages + 1):
    kernel = model_config.first_kernel_size if s == 1 else model_config.kernel_size
    down = s in tuple(model_config.downsample_stages)
    if down:
      h, w = h // 2, w // 2
    channels = model_config.latent_channels - (s - 1) * model_config.latent_channel_step
    specs.append((kernel, down, channels, (h, w)))
  return specs


def _positive_int(model_config, field):
  value = model_config[field]
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ValueError(f"model.{field}: must be a positive integer; got {value!r}")


def validate(model_config, data_shape: Optional[Sequence[int]] = None) -> None:
  """Raises ValueError, its message starting with the config field at fault, if the
  fields are invalid or (given one example's `data_shape`) the model cannot take it."""
  for field in ("num_stages", "filters", "blocks_per_stage", "first_kernel_size",
                "kernel_size", "latent_channels"):
    _positive_int(model_config, field)
  if model_config.latent_kernel_size is not None:
    _positive_int(model_config, "latent_kernel_size")
  for field in ("first_kernel_size", "kernel_size"):
    if model_config[field] % 2 == 0:
      raise ValueError(f"model.{field}: must be odd (same padding); got {model_config[field]}")
  step = model_config.latent_channel_step
  if not isinstance(step, int) or step < 0:
    raise ValueError(f"model.latent_channel_step: must be a non-negative integer; got {step!r}")
  last = model_config.latent_channels - (model_config.num_stages - 1) * step
  if last < 1:
    raise ValueError(
        f"model.latent_channel_step: stage {model_config.num_stages} would have {last} "
        f"latent channels (latent_channels={model_config.latent_channels}, "
        f"num_stages={model_config.num_stages}); lower the step or raise latent_channels")
  stages = tuple(model_config.downsample_stages)
  if (len(set(stages)) != len(stages)
      or any(not isinstance(s, int) or not 1 <= s <= model_config.num_stages for s in stages)):
    raise ValueError(f"model.downsample_stages: distinct stage numbers in 1.."
                     f"{model_config.num_stages}; got {stages}")
  if not 0.0 <= model_config.dropout_rate < 1.0:
    raise ValueError(f"model.dropout_rate: must be in [0, 1); got {model_config.dropout_rate}")
  if model_config.dtype not in COMPUTE_DTYPES:
    raise ValueError(f"model.dtype: must be one of {COMPUTE_DTYPES}; got {model_config.dtype!r}")
  if model_config.log_var_activation not in LOG_VAR_ACTIVATIONS:
    raise ValueError(f"model.log_var_activation: must be one of {LOG_VAR_ACTIVATIONS}; got "
                     f"{model_config.log_var_activation!r}")
  if not model_config.log_var_min < model_config.log_var_max:
    raise ValueError(f"model.log_var_min: must be below model.log_var_max; got "
                     f"{model_config.log_var_min} >= {model_config.log_var_max}")
  if data_shape is None:
    return
  check_image_example(data_shape, "hierarchical VAE", validate_image_size, model_config)


def validate_image_size(model_config, size: Sequence[int]) -> None:
  """(H, W) must be positive multiples of 2 ** (number of downsampling stages)."""
  stages = tuple(model_config.downsample_stages)
  h, w = size
  factor = 2 ** len(stages)
  if h % factor or w % factor or h < factor or w < factor:
    raise ValueError(
        f"dataset.image_size: model.downsample_stages={stages} halves the images "
        f"{len(stages)} times, so height and width must be positive multiples of "
        f"{factor}; got {h}x{w}")


def build(model_config, data_shape: Sequence[int], num_outputs: int) -> "HierarchicalVAE":
  validate(model_config, data_shape)
  specs = _stage_specs(model_config, data_shape)
  return HierarchicalVAE(
      image_shape=tuple(data_shape), num_outputs=num_outputs,
      filters=model_config.filters, blocks_per_stage=model_config.blocks_per_stage,
      kernels=tuple(s[0] for s in specs), downsample=tuple(s[1] for s in specs),
      latent_channels=tuple(s[2] for s in specs),
      top_shape=specs[-1][3] + (specs[-1][2],),
      latent_kernels=tuple(s[3] if model_config.latent_kernel_size is None
                           else (model_config.latent_kernel_size,) * 2 for s in specs),
      dropout_rate=float(model_config.dropout_rate),
      skip_connections=bool(model_config.skip_connections),
      log_var_activation=model_config.log_var_activation,
      log_var_min=float(model_config.log_var_min), log_var_max=float(model_config.log_var_max),
      dtype=jnp.dtype(model_config.dtype), remat=bool(model_config.remat))


class HierarchicalVAE(nn.Module):
  """The hierarchical VAE (contract: `models.base`); see the module docstring.

  Sizes are per stage, bottom (stage 1) to top: `kernels`, `downsample`,
  `latent_channels`, `latent_kernels` ((kh, kw) of the Gaussian heads); `top_shape`
  = (h, w, c) of z_L. Built by `build`.
  """
  image_shape: Sequence[int]
  num_outputs: int
  filters: int
  blocks_per_stage: int
  kernels: Sequence[int]
  downsample: Sequence[bool]
  latent_channels: Sequence[int]
  top_shape: Sequence[int]
  latent_kernels: Sequence[Any]
  dropout_rate: float = 0.5
  skip_connections: bool = False
  log_var_activation: str = "softplus"
  log_var_min: float = -8.0
  log_var_max: float = 3.0
  dtype: Any = jnp.float32
  remat: bool = False

  def setup(self):
    n = len(self.kernels)
    q_cls = nn.remat(InferenceStage, static_argnums=(4,)) if self.remat else InferenceStage
    p_cls = nn.remat(GenerativeStage, static_argnums=(4,)) if self.remat else GenerativeStage
    self.q_stages = [
        q_cls(self.filters, self.kernels[s], self.blocks_per_stage, self.downsample[s],
              self.latent_channels[s], self.latent_kernels[s], input_act=s > 0,
              log_var_activation=self.log_var_activation, log_var_min=self.log_var_min,
              log_var_max=self.log_var_max,
              dropout_rate=self.dropout_rate, dtype=self.dtype)
        for s in range(n)]
    self.p_stages = [
        p_cls(self.filters, self.kernels[s], self.blocks_per_stage, self.downsample[s],
              dropout_rate=self.dropout_rate, dtype=self.dtype)
        for s in range(n)]
    # p(z_s | z_(s+1)) for s < L, read from the generative features of stage s+1.
    self.p_heads = [
        GaussianHead(self.latent_channels[s], self.latent_kernels[s],
                     self.log_var_activation, self.log_var_min, self.log_var_max, self.dtype)
        for s in range(n - 1)]
    self.out_conv = WNConv(self.num_outputs, 1, dtype=self.dtype)

  @property
  def num_stages(self) -> int:
    return len(self.kernels)

  def _infer(self, x, noise_key, drop_keys, train):
    """Bottom-up: [(mean, log_var, z)] per stage; z = mean if noise_key is None."""
    n = self.num_stages
    noise_keys = split_keys(noise_key, n)
    inp, aux, posteriors = 2.0 * x - 1.0, None, []
    for s in range(n):
      h, mean, log_var = self.q_stages[s](inp, aux, drop_keys[s], train)
      if noise_key is None:
        z = mean
      else:
        z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(noise_keys[s], mean.shape)
      posteriors.append((mean, log_var, z))
      inp, aux = z, ([h] * self.blocks_per_stage if self.skip_connections else None)
    return posteriors

  def _generate(self, zs, drop_keys, train):
    """Top-down through the posterior samples zs (bottom to top).

    Returns (decoder outputs, [(prior mean, prior log_var)] per stage, bottom to top).
    """
    n = self.num_stages
    priors = [None] * n
    d, hidden = self.p_stages[n - 1](zs[n - 1], None, drop_keys[n - 1], train)
    for s in range(n - 2, -1, -1):
      priors[s] = self.p_heads[s](d)
      aux = hidden if self.skip_connections else None
      d, hidden = self.p_stages[s](zs[s], aux, drop_keys[s], train)
    return self._output(d), priors

  def _output(self, d):
    return self.out_conv(activation(d)).astype(jnp.float32)

  def __call__(self, x: jax.Array, rng: jax.Array, train: bool = False) -> ModelOutput:
    n = self.num_stages
    noise_key, drop_key = jax.random.split(rng)
    # One dropout key per stage and path (inference: [:n], generative: [n:]).
    drop_keys = split_keys(drop_key if train and self.dropout_rate > 0 else None, 2 * n)
    posteriors = self._infer(x, noise_key, drop_keys[:n], train)
    out, priors = self._generate([p[2] for p in posteriors], drop_keys[n:], train)
    # An OrderedDict keeps z1..zL in order through jit (a dict's keys come back sorted,
    # z1, z10, z11, ..., z2).
    latents = collections.OrderedDict()
    for s, ((q_mean, q_log_var, z), prior) in enumerate(zip(posteriors, priors)):
      p_mean, p_log_var = prior if prior is not None else (None, None)
      log_q = losses.gaussian_log_prob(z, q_mean, q_log_var)
      log_p = losses.gaussian_log_prob(z, p_mean, p_log_var)
      if prior is None:  # the top: N(0, I) depends on no later draw, closed form exact
        kl = losses.gaussian_kl(q_mean, q_log_var)
      else:  # p(z_s | z_(s+1)) with z_(s+1) drawn from z_s: one-sample (module docstring)
        kl = log_q - log_p
      latents[f"z{s + 1}"] = LatentGroup(kl=kl, log_q=log_q, log_p=log_p)
    return ModelOutput(decoder_outputs=out, target=x, latents=latents)

  def reconstruct(self, x: jax.Array) -> jax.Array:
    no_keys = [None] * self.num_stages
    posteriors = self._infer(x, None, no_keys, False)
    return self._generate([p[0] for p in posteriors], no_keys, False)[0]

  def sample(self, rng: jax.Array, num: int, context: Optional[jax.Array] = None,
             temperature: float = 1.0) -> jax.Array:
    del context  # an unconditional image model
    n = self.num_stages
    keys = jax.random.split(rng, n)
    z = temperature * jax.random.normal(keys[n - 1], (num, *self.top_shape))
    d, hidden = self.p_stages[n - 1](z, None, None, False)
    for s in range(n - 2, -1, -1):
      mean, log_var = self.p_heads[s](d)
      z = mean + temperature * jnp.exp(0.5 * log_var) * jax.random.normal(keys[s], mean.shape)
      d, hidden = self.p_stages[s](z, hidden if self.skip_connections else None, None, False)
    return self._output(d)
