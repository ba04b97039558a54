"""SVG-LP (Denton & Fergus 2018): stochastic video generation with a learned prior.

The model of the sigma-VAE paper's BAIR column (Table 2), as in the authors' public
PyTorch release (edenton/svg, `train_svg_lp.py` with `models/vgg_64.py` and
`models/lstm.py`), written for this package's model contract (`models.base`): the
decoder outputs `num_outputs` raw channels per pixel and a likelihood
(`config.decoder`) scores them, so every registered decoder works. This module holds
the model's config fields, their checks and the model (its time steps); the networks
are in `models.svg_lp_vgg64` (frame encoder/decoder) and `models.svg_lp_lstm` (LSTMs).

Networks (sizes are `config.model` fields, reference defaults in brackets):
* frame encoder (vgg_64): `num_stages` [4] stages of 3x3 conv + norm + LeakyReLU(0.2)
  with (64, 2), (128, 2), (256, 3), (512, 3) (channels x `width`, layers) and a 2x2
  max pool between stages and after the last, then a 4x4 conv (on the 4x4 map) + norm +
  tanh to the `g_dim` [128] frame code. Frames are 4 * 2**num_stages pixels square
  (64 for the reference's 4 stages; 8 or 16 for tiny test models). Each stage's last
  feature map is a skip connection.
* frame decoder: the mirror: code -> 4x4 map (the reference's 4x4 transposed conv on
  1x1, written as the equivalent dense layer), then per stage: nearest 2x upsampling,
  concatenation with the skip, the stage's layers; the last layer is a 3x3 conv to
  `num_outputs` raw channels (no sigmoid: the likelihood's mean applies it).
* frame predictor: dense embed of [g_{t-1}, z_t] -> `predictor_rnn_layers` [2] LSTMs of
  `rnn_size` [256] -> dense + tanh to the next frame code.
* posterior q(z_t | x_1..t): dense embed of g_t -> `posterior_rnn_layers` [1] LSTM ->
  dense heads (mean, log variance) over `z_dim` [64]; learned prior p(z_t | x_1..t-1):
  the same on g_{t-1} with `prior_rnn_layers` [1]. KL(q || p) per step in closed form.

Training (`__call__`, teacher forcing, as the reference's `train`): for every step
i = 1..T-1 of a clip x [B, T, H, W, C] (0-based frames), the code of the true frame
x_{i-1} feeds the predictor and the prior, the code of x_i feeds the posterior, and the
decoder predicts x_i from the predicted code and the skips. The reference's loss covers
all these T - 1 frames, those inside the context included (for n_past=2, n_future=10:
frames 2..12, 11 frames), so `ModelOutput.target` is x[:, 1:] ([B, T-1, H, W, C]) and the
latent group "z" is [B, T-1, z_dim]. Per-frame numbers for the future frames only are
the slices [:, n_past-1:] of the elementwise terms.

Skip connections follow the reference's code: for step i the skips come from frame
i-1 while i < n_past and then stay those of frame n_past-2 (0-based; the reference
updates them only while i < n_past), i.e. from the *first* frame for n_past=2, one
before the last context frame. (`last_frame_skip=True`: always frame i-1, the fed-back
prediction at generation.) For n_past=1 (where the reference has no skip) frame 0.

Generation (`sample`, as the reference's `generate_svg_lp.py`): the context steps
i < n_past run as in training (posterior z from the true frames; the prior LSTM is
stepped too), then each step encodes the previous frame (the last context frame, then
the model's own prediction), draws z from the learned prior and decodes. The prediction
is fed back as a frame: the model cannot apply the likelihood itself, so `sample` takes
`output_to_frame` (raw outputs -> frame in [0, 1], e.g. the likelihood's mean, which is
what the reference feeds back: its decoder's sigmoid output). Without it, decoders with
C or 2C outputs (Gaussian family, Bernoulli, Student-t, discretized) feed back
sigmoid(out[..., :C]), their mean; other decoders need it.

Normalisation: the reference uses BatchNorm, with batch statistics both when training
and in its evaluation script (which puts the encoder and decoder in train mode). The
model contract has no mutable state (no running averages), so `norm="batch"` (the
default) normalises with the statistics of the current batch, per frame: over the
batch and the spatial axes of each frame, never over time, exactly as the reference's
per-frame calls do. Its outputs for a clip then depend on the other clips of the batch:
evaluate with batches of different clips (as the reference: one sample of each of 100
clips per call, repeated for N samples), not N copies of one clip. `norm="group"` is a
per-example alternative (GroupNorm with gcd(32, C) groups; the frame code, a 1x1 map,
uses one group, i.e. LayerNorm), `norm="none"` none.

Initialisation as the reference (`utils.init_weights`): conv and dense kernels
N(0, 0.02), biases 0; norm scales 1 (the reference draws N(1, 0.02)); LSTM cells are
PyTorch's LSTMCell with its initialisation (which the reference keeps): weights and
both biases U(-1/sqrt(H), 1/sqrt(H)).

`dtype="bfloat16"` computes the networks in bfloat16; parameters, normalisation
statistics, LSTM states, the Gaussian heads, the latents and the decoder outputs stay
float32. `remat=True` recomputes the frame encoder's and decoder's activations (and the
recurrent step's) in the backward pass instead of storing them: the same values,
less memory.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sigma_vae_jax import losses
from sigma_vae_jax.models.base import LatentGroup, ModelOutput
from sigma_vae_jax.models.svg_lp_lstm import FramePredictor, GaussianLSTM, zero_carry
from sigma_vae_jax.models.svg_lp_vgg64 import (FrameDecoder, FrameEncoder, frame_size,
                                               stage_sizes, VGG64_STAGES)

NORMS = ("batch", "group", "none")
DTYPES = ("float32", "bfloat16")


def default_config() -> ml_collections.ConfigDict:
  """The `config.model` section of this model (the reference's BAIR settings)."""
  model = ml_collections.ConfigDict()
  model.name = "svg_lp"
  # Frame code size (encoder output, predictor output).
  model.g_dim = 128
  # Latents per time step.
  model.z_dim = 64
  # LSTM width of the predictor, posterior and prior.
  model.rnn_size = 256
  model.predictor_rnn_layers = 2
  model.posterior_rnn_layers = 1
  model.prior_rnn_layers = 1
  # Context frames; frames predicted in training (clips of n_past + n_future frames);
  # clip length at evaluation (n_eval - n_past frames generated by `sample`).
  model.n_past = 2
  model.n_future = 10
  model.n_eval = 30
  # True: skips from the previous (at generation: predicted) frame at every step;
  # False: from the context (see the module docstring).
  model.last_frame_skip = False
  # VGG stages (1..4): frames must be 4 * 2**num_stages pixels square (4: 64x64).
  model.num_stages = 4
  # Channel multiplier of the conv stages (1.0: 64, 128, 256, 512); tiny for tests.
  model.width = 1.0
  # "batch" (batch statistics per frame, as the reference), "group" or "none".
  model.norm = "batch"
  # The networks' compute type: "float32" or "bfloat16".
  model.dtype = "float32"
  # Recompute encoder/decoder activations in the backward pass (less memory).
  model.remat = False
  return model


def validate(model_config, data_shape: Optional[Sequence[int]] = None) -> None:
  """Raises ValueError, its message starting with the config field at fault, if the
  fields are invalid or (given one clip's `data_shape`) SVG-LP cannot take it."""
  stages = model_config.num_stages
  if not isinstance(stages, int) or not 1 <= stages <= len(VGG64_STAGES):
    raise ValueError(f"model.num_stages: must be an integer in 1..{len(VGG64_STAGES)}; "
                     f"got {stages!r}")
  for field in ("g_dim", "z_dim", "rnn_size", "predictor_rnn_layers",
                "posterior_rnn_layers", "prior_rnn_layers", "n_past", "n_future"):
    value = model_config[field]
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"model.{field}: must be a positive integer; got {value!r}")
  if not isinstance(model_config.n_eval, int) or model_config.n_eval <= model_config.n_past:
    raise ValueError(f"model.n_eval: the evaluation clip length must exceed model.n_past="
                     f"{model_config.n_past} (n_eval - n_past frames are generated); got "
                     f"{model_config.n_eval!r}")
  if not model_config.width > 0:
    raise ValueError(f"model.width: must be positive; got {model_config.width!r}")
  if model_config.norm not in NORMS:
    raise ValueError(f"model.norm: must be one of {NORMS}; got {model_config.norm!r}")
  if model_config.dtype not in DTYPES:
    raise ValueError(f"model.dtype: must be one of {DTYPES}; got {model_config.dtype!r}")
  if data_shape is None:
    return
  if len(data_shape) != 4:
    raise ValueError(f"dataset.clip_length: svg_lp takes video clips (T, H, W, C); got "
                     f"examples of shape {tuple(data_shape)} (set dataset.clip_length)")
  t, h, w, c = data_shape
  validate_image_size(model_config, (h, w))
  if c < 1:
    raise ValueError(f"dataset.name: frames need at least one channel; got {c}")
  if t < model_config.n_past + 1:
    raise ValueError(f"dataset.clip_length: clips need the model.n_past={model_config.n_past} "
                     f"context frames and at least one more (n_past + n_future="
                     f"{model_config.n_past + model_config.n_future} in training); got {t}")


def validate_image_size(model_config, size: Sequence[int]) -> None:
  """Frames must be 4 * 2**num_stages pixels square (64x64 for vgg_64)."""
  stages = model_config.num_stages
  frame = frame_size(stages)
  h, w = size
  if (h, w) != (frame, frame):
    raise ValueError(
        f"dataset.image_size: svg_lp with model.num_stages={stages} takes {frame}x{frame} "
        f"frames (4 * 2**num_stages); got {h}x{w}. Set dataset.image_size=({frame}, {frame}) "
        f"or model.num_stages to match (4 for 64x64).")


def build(model_config, data_shape: Sequence[int], num_outputs: int) -> "SVGLP":
  _, h, w, c = data_shape
  return SVGLP(
      frame_shape=(h, w, c), num_outputs=num_outputs,
      stages=stage_sizes(model_config.num_stages, model_config.width),
      g_dim=model_config.g_dim, z_dim=model_config.z_dim, rnn_size=model_config.rnn_size,
      predictor_rnn_layers=model_config.predictor_rnn_layers,
      posterior_rnn_layers=model_config.posterior_rnn_layers,
      prior_rnn_layers=model_config.prior_rnn_layers,
      n_past=model_config.n_past, n_eval=model_config.n_eval,
      last_frame_skip=bool(model_config.last_frame_skip), norm=model_config.norm,
      remat=bool(model_config.remat), dtype=jnp.dtype(model_config.dtype))


def skip_frame(i: int, n_past: int, last_frame_skip: bool) -> int:
  """0-based frame whose encoder features are the skips when predicting frame i >= 1
  (the reference's rule: refreshed from frame i-1 while i < n_past)."""
  if last_frame_skip or i < n_past:
    return i - 1
  return max(n_past - 2, 0)


# --------------------------------------------------------------------------
# The recurrent steps, scanned over time (nn.scan, parameters broadcast).
# --------------------------------------------------------------------------


def _teacher_forced_step(mdl: "SVGLP", carry, inputs):
  """Step i (predicting frame i) with the true frames' codes g_{i-1}, g_i."""
  post_c, prior_c, pred_c = carry
  g_prev, g_next, eps = inputs
  post_c, (mean_q, log_var_q) = mdl.posterior(post_c, g_next)
  prior_c, (mean_p, log_var_p) = mdl.prior(prior_c, g_prev)
  z = mean_q + jnp.exp(0.5 * log_var_q) * eps
  pred_c, g_pred = mdl.predictor(pred_c, jnp.concatenate([g_prev, z], axis=-1))
  return (post_c, prior_c, pred_c), (mean_q, log_var_q, mean_p, log_var_p, z, g_pred)


def _generation_step(mdl: "SVGLP", carry, eps, *, temperature, output_to_frame):
  """Encode the previous frame, z from the learned prior, decode, feed back the frame."""
  prior_c, pred_c, x_prev, skips = carry
  g_prev, new_skips = mdl.encoder(x_prev)
  if mdl.last_frame_skip:
    skips = new_skips
  prior_c, (mean_p, log_var_p) = mdl.prior(prior_c, g_prev)
  z = mean_p + temperature * jnp.exp(0.5 * log_var_p) * eps
  pred_c, g_pred = mdl.predictor(pred_c, jnp.concatenate([g_prev, z], axis=-1))
  out = mdl.decoder(g_pred, skips)
  frame = output_to_frame(out).astype(x_prev.dtype)
  return (prior_c, pred_c, frame, skips), out


def _scan(fn, remat: bool):
  if remat:
    fn = nn.remat(fn)
  return nn.scan(fn, variable_broadcast="params", split_rngs={"params": False},
                 in_axes=0, out_axes=0)


def _time_major(x):
  return jnp.swapaxes(x, 0, 1)


class SVGLP(nn.Module):
  """SVG-LP (contract: `models.base`); see the module docstring.

  `__call__(x [B, T, H, W, C], rng)` -> ModelOutput: decoder outputs and target for
  frames 1..T-1 ([B, T-1, ...]), one latent group "z" [B, T-1, z_dim].
  `reconstruct(x)` -> decoder outputs with the posterior means.
  `sample(rng, num, context [num, >=n_past, H, W, C])` -> decoder outputs of
  n_eval - n_past generated frames [num, n_eval - n_past, H, W, K].
  """
  frame_shape: Sequence[int]
  num_outputs: int
  stages: Sequence[tuple[int, int]] = VGG64_STAGES
  g_dim: int = 128
  z_dim: int = 64
  rnn_size: int = 256
  predictor_rnn_layers: int = 2
  posterior_rnn_layers: int = 1
  prior_rnn_layers: int = 1
  n_past: int = 2
  n_eval: int = 30
  last_frame_skip: bool = False
  norm: str = "batch"
  remat: bool = False
  dtype: Any = jnp.float32

  @property
  def num_context_frames(self) -> int:
    """Frames `sample` conditions on (the model contract's video models)."""
    return self.n_past

  def setup(self):
    encoder_cls = nn.remat(FrameEncoder) if self.remat else FrameEncoder
    decoder_cls = nn.remat(FrameDecoder) if self.remat else FrameDecoder
    self.encoder = encoder_cls(self.g_dim, tuple(self.stages), self.norm, self.dtype)
    self.decoder = decoder_cls(self.num_outputs, tuple(self.stages), self.norm, self.dtype)
    self.predictor = FramePredictor(self.g_dim, self.rnn_size, self.predictor_rnn_layers,
                                    self.dtype)
    self.posterior = GaussianLSTM(self.z_dim, self.rnn_size, self.posterior_rnn_layers,
                                  self.dtype)
    self.prior = GaussianLSTM(self.z_dim, self.rnn_size, self.prior_rnn_layers, self.dtype)

  def _initial_carry(self, batch: int):
    return (zero_carry(batch, self.rnn_size, self.posterior_rnn_layers),
            zero_carry(batch, self.rnn_size, self.prior_rnn_layers),
            zero_carry(batch, self.rnn_size, self.predictor_rnn_layers))

  def _check_frames(self, x, what: str, min_frames: int):
    if x.ndim != 5 or tuple(x.shape[2:]) != tuple(self.frame_shape) or x.shape[1] < min_frames:
      raise ValueError(f"svg_lp: {what} must be [B, T >= {min_frames}, "
                       f"{', '.join(map(str, self.frame_shape))}]; got {tuple(x.shape)}")

  def _recurrence(self, codes, eps):
    """Teacher-forced LSTM steps 1..T-1 on frame codes [B, T, g]; eps [B, T-1, z].

    Returns the final carry and (mean_q, log_var_q, mean_p, log_var_p, z, g_pred),
    each [B, T-1, ...].
    """
    xs = (_time_major(codes[:, :-1]), _time_major(codes[:, 1:]), _time_major(eps))
    carry, ys = _scan(_teacher_forced_step, self.remat)(
        self, self._initial_carry(codes.shape[0]), xs)
    return carry, tuple(_time_major(y) for y in ys)

  def teacher_forced(self, x: jax.Array, eps: jax.Array) -> dict[str, jax.Array]:
    """The training pass with given posterior noise eps [B, T-1, z_dim] (zeros: the
    posterior means). Returns decoder outputs [B, T-1, H, W, K] and the per-step
    posterior/prior means and log variances, z and predicted codes, each [B, T-1, ...]."""
    self._check_frames(x, "x", 2)
    x = x.astype(jnp.float32)
    t = x.shape[1]
    codes, skips = self.encoder(x)  # all frames at once: [B, T, g], [B, T, h, w, c]
    _, (mean_q, log_var_q, mean_p, log_var_p, z, g_pred) = self._recurrence(codes, eps)
    idx = np.array([skip_frame(i, self.n_past, self.last_frame_skip) for i in range(1, t)])
    out = self.decoder(g_pred, [s[:, idx] for s in skips])
    return dict(decoder_outputs=out, mean_q=mean_q, log_var_q=log_var_q, mean_p=mean_p,
                log_var_p=log_var_p, z=z, g_pred=g_pred)

  def __call__(self, x: jax.Array, rng: jax.Array, train: bool = False) -> ModelOutput:
    """x [B, T, H, W, C] in [0, 1]; eps = jax.random.normal(rng, [B, T-1, z_dim])."""
    del train  # no dropout or other training-only behaviour
    self._check_frames(x, "x", 2)
    eps = jax.random.normal(rng, (x.shape[0], x.shape[1] - 1, self.z_dim), jnp.float32)
    r = self.teacher_forced(x, eps)
    latent = LatentGroup(
        kl=losses.gaussian_kl(r["mean_q"], r["log_var_q"], r["mean_p"], r["log_var_p"]),
        log_q=losses.gaussian_log_prob(r["z"], r["mean_q"], r["log_var_q"]),
        log_p=losses.gaussian_log_prob(r["z"], r["mean_p"], r["log_var_p"]))
    return ModelOutput(decoder_outputs=r["decoder_outputs"],
                       target=x[:, 1:].astype(jnp.float32), latents={"z": latent})

  def reconstruct(self, x: jax.Array) -> jax.Array:
    """Decoder outputs [B, T-1, H, W, K] of frames 1..T-1 with the posterior means."""
    self._check_frames(x, "x", 2)
    eps = jnp.zeros((x.shape[0], x.shape[1] - 1, self.z_dim), jnp.float32)
    return self.teacher_forced(x, eps)["decoder_outputs"]

  def default_output_to_frame(self, out: jax.Array) -> jax.Array:
    """sigmoid(out[..., :C]): the mean of decoders with C or 2C outputs (Gaussians,
    Bernoulli, Student-t, discretized); others must pass `output_to_frame`."""
    c = self.frame_shape[-1]
    if self.num_outputs not in (c, 2 * c):
      raise ValueError(
          f"svg_lp.sample: with {self.num_outputs} decoder outputs per pixel for {c} "
          f"channels, pass output_to_frame (e.g. lambda out: likelihood.mean(out, "
          f"likelihood_params, likelihood_state)) to feed predicted frames back")
    return jax.nn.sigmoid(out[..., :c])

  def generate(self, context: jax.Array, eps_context: jax.Array, eps_future: jax.Array,
               temperature: float = 1.0,
               output_to_frame: Optional[Callable[[jax.Array], jax.Array]] = None
               ) -> jax.Array:
    """`sample` with given noise: context [B, n_past, H, W, C], eps_context
    [B, n_past-1, z_dim] (posterior, context steps), eps_future [B, F, z_dim] (prior,
    F generated frames), each scaled by `temperature`. Returns [B, F, H, W, K]."""
    self._check_frames(context, "context", self.n_past)
    context = context[:, :self.n_past].astype(jnp.float32)
    b = context.shape[0]
    if output_to_frame is None:
      output_to_frame = self.default_output_to_frame
    codes, skips = self.encoder(context)
    post_c, prior_c, pred_c = self._initial_carry(b)
    if self.n_past > 1:  # context steps 1..n_past-1, as in training
      (post_c, prior_c, pred_c), _ = self._recurrence(codes, temperature * eps_context)
    first = self.n_past  # the first generated frame
    skips = [s[:, skip_frame(first, self.n_past, self.last_frame_skip)] for s in skips]
    step = functools.partial(_generation_step, temperature=temperature,
                             output_to_frame=output_to_frame)
    _, outs = _scan(step, self.remat)(
        self, (prior_c, pred_c, context[:, -1], skips), _time_major(eps_future))
    return _time_major(outs)

  def sample(self, rng: jax.Array, num: int, context: Optional[jax.Array] = None,
             temperature: float = 1.0,
             output_to_frame: Optional[Callable[[jax.Array], jax.Array]] = None,
             num_frames: Optional[int] = None) -> jax.Array:
    """Decoder outputs [num, F, H, W, K] of F = num_frames (default n_eval - n_past)
    frames generated after `context` [num, >= n_past, H, W, C] (its first n_past frames).

    `temperature` scales all latent noise (the context steps' posterior draws and the
    prior draws); `output_to_frame` maps raw outputs to the frame fed back (see the
    module docstring; default: sigmoid of the first C outputs).
    """
    if context is None:
      raise ValueError("svg_lp.sample: a video model needs context frames "
                       f"[num, n_past={self.n_past}, H, W, C]")
    if context.shape[0] != num:
      raise ValueError(f"svg_lp.sample: context has {context.shape[0]} clips for num={num}")
    f = self.n_eval - self.n_past if num_frames is None else int(num_frames)
    ctx_rng, rng = jax.random.split(rng)
    eps_context = jax.random.normal(ctx_rng, (num, self.n_past - 1, self.z_dim), jnp.float32)
    eps_future = jax.random.normal(rng, (num, f, self.z_dim), jnp.float32)
    return self.generate(context, eps_context, eps_future, temperature, output_to_frame)
