"""Model-level evaluation of a trained VAE: ELBO, IWAE bound, rate decomposition
(mutual information and marginal KL, paper Sec. 5.2), effective beta, FID, and video
prediction scores.

Every function takes a `trainer.Trainer` and a `train_step.TrainState` (e.g. from
`load_run(workdir)`) and uint8 test data [N, ...]; the per-batch work is the
trainer's jitted passes through the model contract, batches are sharded over the
trainer's mesh and the last batch is padded (and masked), so every function
compiles once per batch size. Evaluation uses the EMA parameters when enabled.

All log-likelihoods are in nats per example (summed over data dimensions), with the
likelihood's *evaluation* form (`Likelihood.eval_nll`: KL weight 1, the sigma the
state holds for the optimal sigma decoders, which `load_run` fits to the evaluation
network on training data where `config.eval_sigma` says so; the `beta` decoder as the
Gaussian with sigma^2 = beta).

Video models (`trainer.num_context_frames` > 0, e.g. SVG-LP) also have the SVG papers'
evaluation: the ELBO per predicted frame (`evaluate_elbo_per_frame`), best-of-N PSNR
and SSIM per predicted frame of samples conditioned on the context frames, the best
sample chosen as the SVG reference chooses it and the per-frame maximum
(`video_prediction_scores`) and the FID of predicted frames (`video_fid`);
scripts/evaluate_video.py runs them on a workdir.

`evaluate_calibrated` also evaluates each Gaussian model at its own maximum-likelihood
shared sigma (sigma^2 = test MSE of the decoder mean): the bound it would reach with the
best constant sigma, "calibrated after training".

Effective beta convention: Eq. 7 of the paper as printed, sigma^2 = beta
(`losses.effective_beta`). The paper's Table 1 uses sigma^2 = beta / 2, i.e. its
beta is twice ours; `effective_beta` returns both.
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sigma_vae_jax import configuration
from sigma_vae_jax import default_config
from sigma_vae_jax import losses
from sigma_vae_jax import models
from sigma_vae_jax.data import input_pipeline
from sigma_vae_jax.data import preprocessing
from sigma_vae_jax.evaluation import metrics
from sigma_vae_jax.evaluation import video_metrics
from sigma_vae_jax.training import checkpointing
from sigma_vae_jax.training import progress
from sigma_vae_jax.training import train_step
from sigma_vae_jax.training import trainer as trainer_lib

# Which checkpoint of a run `load_run` restores.
CHECKPOINTS = ("latest", "best")

# Config fields saved as JSON lists that the code expects as tuples.
_TUPLE_FIELDS = (("decoder", "sigma_axes"), ("dataset", "image_size"))


# ----------------------------------------------------------------------------------
# Loading a finished run.
# ----------------------------------------------------------------------------------


def config_from_json(path: str) -> ml_collections.ConfigDict:
  """WORKDIR/config.json -> ConfigDict (JSON lists back to tuples where needed).

  Configs of earlier versions are upgraded (`configuration.upgrade_config_dict`);
  fields added to the defaults since the run was written take their defaults.
  """
  with open(path) as f:
    saved = configuration.upgrade_config_dict(json.load(f))
  defaults = default_config.get_config().to_dict()
  defaults["model"] = models.model_module(saved["model"]["name"]).default_config().to_dict()
  d = _with_defaults(saved, defaults)
  for section, key in _TUPLE_FIELDS:
    value = d.get(section, {}).get(key)
    if isinstance(value, list):
      d[section][key] = tuple(value)
  return ml_collections.ConfigDict(d)


def _with_defaults(saved: dict, defaults: dict) -> dict:
  merged = dict(defaults)
  for key, value in saved.items():
    if isinstance(value, dict) and isinstance(defaults.get(key), dict):
      value = _with_defaults(value, defaults[key])
    merged[key] = value
  return merged


def load_run(workdir: str, *, image_shape=None, checkpoint: str = "latest",
             fit_eval_sigma: bool = True
             ) -> tuple[ml_collections.ConfigDict, trainer_lib.Trainer, train_step.TrainState]:
  """Rebuilds (config, trainer, state) from WORKDIR/config.json and a checkpoint.

  checkpoint: "latest" (WORKDIR/checkpoints/) or "best" (WORKDIR/checkpoints_best/,
  the step with the best eval ELBO, written when `keep_best_checkpoint` is on).
  The trainer's mesh spans all devices. image_shape (H, W, C) defaults to the
  dataset's (read from the prepared dataset of config.dataset).
  The returned state is the one training evaluates (`evaluation_state`): where the
  run's config refits the evaluation sigma (`trainer.fits_eval_sigma`), its
  likelihood state holds sigma*^2 fitted to the evaluation network on the run's
  training data, as training's own evaluations do; fit_eval_sigma=False returns
  the checkpoint as saved (sigma: its running average).
  Raises FileNotFoundError without config.json, CheckpointError without a checkpoint,
  ValueError for another `checkpoint`.
  """
  if checkpoint not in CHECKPOINTS:
    raise ValueError(f"checkpoint must be one of {CHECKPOINTS}; got {checkpoint!r}")
  workdir = os.path.abspath(workdir)
  path = os.path.join(workdir, checkpointing.CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: {workdir} is not a training workdir "
                            f"(run sigma_vae_jax.main --workdir={workdir} first).")
  config = config_from_json(path)
  if image_shape is None:
    image_shape = input_pipeline.get_data_source(config.dataset).image_shape
  trainer = trainer_lib.Trainer(config, image_shape, trainer_lib.make_mesh())
  if checkpoint == "best":
    directory = os.path.join(workdir, checkpointing.BEST_DIRECTORY)
    if not os.path.isdir(directory):
      raise checkpointing.CheckpointError(
          f"No best checkpoint in {directory} (written by runs with "
          f"keep_best_checkpoint=True at their evaluations).")
    checkpointer = checkpointing.BestCheckpointer(directory)
    restore = checkpointer.restore
  else:
    directory = os.path.join(workdir, "checkpoints")
    checkpointer = checkpointing.Checkpointer(directory, config.max_checkpoints_to_keep)
    restore = functools.partial(train_step.restore_latest, checkpointer,
                                legacy=checkpointing.is_legacy_workdir(workdir))
  try:
    state, _ = restore(trainer.init_state())
  finally:
    checkpointer.close()
  if state is None:
    raise checkpointing.CheckpointError(f"No checkpoint in {directory}.")
  state = jax.device_put(state, trainer.replicated)
  if fit_eval_sigma:
    state = evaluation_state(config, trainer, state)
  return config, trainer, state


def evaluation_state(config, trainer: trainer_lib.Trainer, state: train_step.TrainState
                     ) -> train_step.TrainState:
  """`state` with the evaluation sigma that training's evaluations use: where
  `trainer.fits_eval_sigma`, fitted to the evaluation network on the
  `trainer_lib.eval_sigma_train_batches` of config.dataset's training split (never
  its test split); otherwise `state` itself."""
  if not trainer.fits_eval_sigma:
    return state
  source = input_pipeline.get_data_source(config.dataset)
  batches = trainer_lib.eval_sigma_train_batches(source, config)
  return trainer.evaluation_state(state, [trainer.shard_batch(b) for b in batches])


def load_test_images(config, num_examples: Optional[int] = None) -> np.ndarray:
  """The first num_examples (all: None) uint8 test images of config.dataset."""
  images = input_pipeline.get_data_source(config.dataset).load_split("test")
  return images if num_examples is None else images[:num_examples]


# ----------------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------------


def _batch_size_for(trainer: trainer_lib.Trainer, batch_size: int) -> int:
  """Rounds up to a multiple of the number of devices (batches are sharded)."""
  n = trainer.mesh.devices.size
  return max(n, -(-batch_size // n) * n)


def _progress(label: str, trainer, num_rows: int, batch_size: int) -> progress.Progress:
  """Progress lines (with a time estimate) over the batches of num_rows rows."""
  return progress.Progress(label, -(-num_rows // _batch_size_for(trainer, batch_size)))


def _batches(trainer, data: np.ndarray, batch_size: int):
  """(sharded uint8 batch, sharded mask, number of valid rows) for each padded batch."""
  batch_size = _batch_size_for(trainer, batch_size)
  for batch, mask in trainer_lib.padded_batches(np.asarray(data), batch_size):
    yield trainer.shard_batch(batch), trainer.shard_batch(mask), int(mask.sum())


def encode(trainer, state, images: np.ndarray, batch_size: int = 128
           ) -> tuple[np.ndarray, np.ndarray]:
  """Posterior parameters of uint8 images: (mean [N, D], log_var [N, D]).

  For models with one Gaussian latent group (`encode` in the model contract)."""
  if not hasattr(trainer.model, "encode"):
    raise ValueError(f"model {trainer.config.model.name!r} has no single Gaussian "
                     f"latent group to encode (the rate decomposition needs one)")
  means, log_vars = [], []
  for batch, _, n in _batches(trainer, images, batch_size):
    mean, log_var = jax.device_get(trainer.encode(state, batch))
    means.append(mean[:n])
    log_vars.append(log_var[:n])
  return np.concatenate(means), np.concatenate(log_vars)


# ----------------------------------------------------------------------------------
# ELBO (Tables 1-4).
# ----------------------------------------------------------------------------------


def evaluate_elbo(trainer, state, images: np.ndarray, batch_size: int = 128
                  ) -> dict[str, float]:
  """Test negative ELBO per example: `Trainer.evaluate` over uint8 images.

  Returns nelbo, rec, kl (nats per example), bpd, plus log_sigma (mean log sigma)
  for decoders with a scale, and nelbo_discrete / bpd_discrete for the continuous
  Gaussian and Student-t decoders (the decoder discretized over the 256 levels of the
  8-bit data, Table 4).
  For discrete decoders (`decoder.is_discrete`) nelbo is already the discrete one.
  """
  batch_size = _batch_size_for(trainer, batch_size)
  return trainer.evaluate(state, trainer_lib.padded_batches(np.asarray(images), batch_size))


# ----------------------------------------------------------------------------------
# Calibrated after training: each Gaussian model at its maximum-likelihood sigma.
# ----------------------------------------------------------------------------------


def evaluate_calibrated(trainer, state, images: np.ndarray, batch_size: int = 128
                        ) -> Optional[dict[str, float]]:
  """Test -ELBO of a Gaussian decoder at its maximum-likelihood shared sigma.

  "Calibrated after training": keep the trained encoder and decoder mean, replace the
  decoder's sigma (fixed, learned, running average, per image or per pixel) by the one
  constant sigma that maximises the test ELBO, sigma^2 = the test MSE of the decoder
  mean (over images and dimensions, at the z of `evaluate_elbo`: the same batches and
  keys as `Trainer.evaluate`). Then the reconstruction term is D/2 (1 + log(2 pi
  sigma^2)) per image, so

    nelbo_calibrated = D/2 (1 + log(2 pi mse)) + KL  <=  nelbo (for any constant sigma).

  Returns {"mse", "sigma_calibrated", "nelbo_calibrated", "bpd_calibrated",
  "nelbo_discrete_calibrated", "bpd_discrete_calibrated" (the discretized Gaussian on
  the 8-bit data at the same sigma)}, or None for decoders that are not continuous
  Gaussians (`Likelihood.is_gaussian`).
  """
  if not trainer.likelihood.is_gaussian:
    return None
  eval_rng = jax.random.fold_in(state.rng, trainer_lib.EVAL_STREAM)

  def sums(log_sigma, discrete):
    totals = None
    for i, (batch, mask, _) in enumerate(_batches(trainer, images, batch_size)):
      s = trainer.calibration_sums(state, batch, mask, jax.random.fold_in(eval_rng, i),
                                   jnp.asarray(log_sigma, jnp.float32), discrete=discrete)
      # sq_err is per target position: its total over them is the per-example one.
      s = {k: float(np.sum(v, dtype=np.float64)) for k, v in jax.device_get(s).items()}
      totals = s if totals is None else {k: totals[k] + s[k] for k in s}
    count = totals.pop("count")
    return {k: v / count for k, v in totals.items()}

  num_dims = trainer.num_target_dims
  first = sums(0.0, False)
  mse = max(first["sq_err"] / num_dims, float(np.finfo(np.float32).tiny))
  log_sigma = 0.5 * math.log(mse)
  nelbo = 0.5 * num_dims * (1.0 + math.log(2 * math.pi * mse)) + first["kl"]
  second = sums(log_sigma, True)
  nelbo_discrete = second["rec_discrete"] + second["kl"]
  bpd = lambda nats: float(losses.nats_to_bits_per_dim(nats, num_dims))
  return {"mse": mse, "sigma_calibrated": math.sqrt(mse), "nelbo_calibrated": nelbo,
          "bpd_calibrated": bpd(nelbo), "nelbo_discrete_calibrated": nelbo_discrete,
          "bpd_discrete_calibrated": bpd(nelbo_discrete)}


# ----------------------------------------------------------------------------------
# Importance-weighted bound.
# ----------------------------------------------------------------------------------


def iwae_log_weights(trainer, state, images: np.ndarray, num_samples: int,
                     batch_size: int, rng: jax.Array, chunk_size: int = 16) -> np.ndarray:
  """Importance log-weights [K, N] (nats) of uint8 images, K = num_samples.

  log w = log p(x|z) + log p(z) - log q(z|x) summed over all latent groups
  (`objectives.log_importance_weight`). Batch i draws its samples in chunks of
  `chunk_size`: chunk j uses the key fold_in(fold_in(rng, i), j) for
  `Trainer.log_importance_weights`.
  """
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1; got {num_samples}")
  columns = []
  bar = _progress(f"IWAE (K={num_samples})", trainer, len(images), batch_size)
  for i, (batch, _, n) in enumerate(bar.iterate(_batches(trainer, images, batch_size))):
    batch_key = jax.random.fold_in(rng, i)
    chunks, done, j = [], 0, 0
    while done < num_samples:
      k = min(chunk_size, num_samples - done)
      log_w = trainer.log_importance_weights(state, batch,
                                             jax.random.fold_in(batch_key, j), num_samples=k)
      chunks.append(np.asarray(jax.device_get(log_w), np.float64)[:, :n])
      done, j = done + k, j + 1
    columns.append(np.concatenate(chunks, axis=0))
  return np.concatenate(columns, axis=1)


def iwae_nll(trainer, state, images: np.ndarray, num_samples: int, batch_size: int,
             rng: jax.Array, chunk_size: int = 16) -> np.ndarray:
  """Per-example importance-weighted estimate of -log p(x) with K samples, nats [N].

  -L_K with L_K = logsumexp_k log w_k - log K (Burda et al. 2016, `metrics.iwae_bound`):
  an upper bound on -log p(x) in expectation; K = 1 is the single-sample negative
  ELBO (with the Monte Carlo KL, so its mean over draws is the ELBO) and E[-L_K]
  decreases with K.
  """
  log_w = iwae_log_weights(trainer, state, images, num_samples, batch_size, rng,
                           chunk_size)
  k = log_w.shape[0]
  bound = np.logaddexp.reduce(log_w, axis=0) - math.log(k)
  return -bound


# ----------------------------------------------------------------------------------
# Rate decomposition (paper Eq. 9, Fig. 3, Fig. 4).
# ----------------------------------------------------------------------------------


@jax.jit
def _rate(z, mean, log_var):
  return metrics.mutual_information_and_marginal_kl(z, mean, log_var)


def rate_decomposition(trainer, state, images: np.ndarray, rng: jax.Array,
                       batch_size: int = 128) -> dict[str, float]:
  """Monte Carlo I_e(x; z) and D_KL(m(z) || p(z)) over the given images (Rosca et al.).

  One z_i ~ q(z|x_i) per image; m(z) is the aggregate posterior of these N images.
  Returns floats (nats): mutual_information, marginal_kl, average_kl (closed form;
  ~= their sum), log_n (the MI estimate is at most log N).
  """
  mean, log_var = encode(trainer, state, images, batch_size)
  mean, log_var = jnp.asarray(mean), jnp.asarray(log_var)
  z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(rng, mean.shape, mean.dtype)
  return {k: float(v) for k, v in jax.device_get(_rate(z, mean, log_var)).items()}


# ----------------------------------------------------------------------------------
# Effective beta.
# ----------------------------------------------------------------------------------


def mean_log_sigma(trainer, state, images: Optional[np.ndarray] = None,
                   batch_size: int = 128) -> Optional[float]:
  """Mean over images and data dimensions of the decoder's evaluation log sigma.

  None for decoders without a scale (Bernoulli, categorical, ...). Decoders whose
  sigma depends on the data (per image, per pixel, Student-t) need `images`; for the
  others (unit Gaussian, beta, shared, optimal with any sigma_axes) it may be None.
  For the Student-t and discretized logistic this is the log *scale*. Data-dependent
  sigmas are those of the decoder at the posterior mean z = E[q(z|x)] (deterministic;
  `evaluate_elbo`'s log_sigma uses a sampled z instead, so the two differ slightly).
  """
  if images is None:
    if not trainer.likelihood.data_independent_sigma:
      raise ValueError(f"decoder {trainer.likelihood.name!r} predicts sigma from the "
                       f"data: pass images to get its mean log sigma")
    images = np.zeros((1,) + trainer.data_shape, np.uint8)
  total, count = 0.0, 0
  for batch, mask, n in _batches(trainer, images, batch_size):
    s = trainer.log_sigma_sums(state, batch, mask)
    if s is None:
      return None
    total += float(s)
    count += n
  return total / count


def effective_beta(trainer, state, images: Optional[np.ndarray] = None,
                   batch_size: int = 128) -> Optional[dict[str, float]]:
  """The beta-VAE equivalent of a Gaussian decoder's (mean) sigma.

  Returns {"log_sigma", "sigma", "effective_beta" (= sigma^2, our Eq. 7 convention),
  "effective_beta_paper" (= 2 sigma^2, the paper's Table 1 convention)}, or None
  for decoders without a scale. The `beta` decoder gives its own beta (sigma^2 = beta);
  per-image / per-pixel decoders give exp(2 * mean log sigma) over `images`.
  """
  log_sigma = mean_log_sigma(trainer, state, images, batch_size)
  if log_sigma is None:
    return None
  return effective_beta_from_log_sigma(log_sigma)


def effective_beta_from_log_sigma(log_sigma: float) -> dict[str, float]:
  """From a (mean) log sigma, e.g. the eval `log_sigma` of metrics.jsonl."""
  beta = float(losses.effective_beta(jnp.asarray(log_sigma, jnp.float32)))
  return {"log_sigma": float(log_sigma), "sigma": math.exp(log_sigma),
          "effective_beta": beta, "effective_beta_paper": 2.0 * beta}


# ----------------------------------------------------------------------------------
# Samples and FID.
# ----------------------------------------------------------------------------------


def prior_samples(trainer, state, num_samples: int, rng: jax.Array,
                  batch_size: int = 128, temperature: float = 1.0) -> np.ndarray:
  """Likelihood means of num_samples prior draws: float32 [num_samples, ...] in [0, 1].

  Batch i draws with key fold_in(rng, i); latent noise scaled by `temperature`."""
  batch_size = _batch_size_for(trainer, batch_size)
  samples = []
  bar = progress.Progress("prior samples", -(-num_samples // batch_size))
  for i, start in enumerate(bar.iterate(range(0, num_samples, batch_size))):
    n = min(batch_size, num_samples - start)
    out = trainer.sample(state, jax.random.fold_in(rng, i), num=batch_size,
                         temperature=temperature)
    samples.append(np.asarray(jax.device_get(out))[:n])
  return np.concatenate(samples)


@functools.lru_cache(maxsize=4)
def fid_feature_fn(fid_kind: str, weights_path: Optional[str] = None):
  """The (cached) FID feature network: 'random' or 'inception' (FileNotFoundError
  with instructions when the Inception weights are missing; call it before a long
  sweep to fail fast)."""
  if fid_kind == "inception":
    return metrics.make_feature_fn("inception", weights_path=weights_path)
  return metrics.make_feature_fn(fid_kind)


def fid_score(trainer, state, test_images: np.ndarray, num_samples: int, fid_kind: str,
              rng: jax.Array, weights_path: Optional[str] = None,
              batch_size: int = 128) -> float:
  """FID between num_samples prior samples (decoder means) and the first
  num_samples test images (all of them if fewer).

  fid_kind: 'random' (weight-free random conv features; compare models only within
  one sweep) or 'inception' (pytorch-fid InceptionV3; raises FileNotFoundError with
  instructions when the converted weights are missing).
  """
  feature_fn = fid_feature_fn(fid_kind, weights_path)
  samples = prior_samples(trainer, state, num_samples, rng, batch_size)
  reference = np.asarray(test_images[:num_samples], np.float32) / 255.0
  return metrics.fid(samples, reference, feature_fn)


# ----------------------------------------------------------------------------------
# Video prediction (SVG-LP): per-frame ELBO, best-of-N PSNR / SSIM, FID of frames.
# ----------------------------------------------------------------------------------


def _require_video_model(trainer, what: str) -> int:
  """The model's context frames; ValueError for image models."""
  if not trainer.num_context_frames:
    raise ValueError(f"{what}: model {trainer.config.model.name!r} is an image model; "
                     f"it needs a video model (e.g. svg_lp)")
  return trainer.num_context_frames


def evaluate_elbo_per_frame(trainer, state, clips: np.ndarray, batch_size: int = 128
                            ) -> dict:
  """Test negative ELBO of a video model per clip and per predicted frame, in nats.

  clips: uint8 [N, T, H, W, C]. The model's target frames (for SVG-LP frames 1..T-1,
  as its training loss: those inside the context after the first included) each get
  nelbo[t] = the likelihood's evaluation NLL summed over the frame's H*W*C values +
  that step's KL summed over the latent dimensions, averaged over the clips. Same
  batches, keys and likelihood form as `evaluate_elbo`, so sum(nelbo) is its nelbo.

  Returns {"frame": int [T_pred] (0-based index of each target frame in the clip),
  "nelbo", "rec", "kl": float64 [T_pred] nats per clip, "nelbo_discrete" [T_pred]
  (continuous Gaussian and Student-t decoders: the discretized likelihood of the
  8-bit frames),
  "nelbo_clip": sum of nelbo (nats per clip), "num_context_frames", "num_examples"}.
  Raises ValueError for image models.
  """
  num_context = _require_video_model(trainer, "evaluate_elbo_per_frame")
  eval_rng = jax.random.fold_in(state.rng, trainer_lib.EVAL_STREAM)  # as Trainer.evaluate
  totals = None
  for i, (batch, mask, _) in enumerate(_batches(trainer, clips, batch_size)):
    sums = trainer.frame_nelbo_sums(state, batch, mask, jax.random.fold_in(eval_rng, i))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = {k: np.asarray(v, np.float64) for k, v in jax.device_get(totals).items()}
  count = float(totals.pop("count"))
  result = {k: v / count for k, v in totals.items()}
  result["nelbo"] = result["rec"] + result["kl"]
  num_frames = len(result["nelbo"])
  # The target is the clip's last num_frames frames (SVG-LP: x[:, 1:]).
  result["frame"] = np.arange(clips.shape[1] - num_frames, clips.shape[1])
  result["nelbo_clip"] = float(result["nelbo"].sum())
  result["num_context_frames"] = num_context
  result["num_examples"] = int(count)
  return result


def _cyclic_batches(trainer, clips: np.ndarray, batch_size: int):
  """(first row, sharded uint8 batch, number of valid rows) per batch of
  `trainer.padded_batches`: the last one is filled with clips from the start of the
  set, not zeros (with batch-statistics normalisation, svg_lp's norm="batch", a clip's
  samples depend on the rest of its batch)."""
  batch_size = _batch_size_for(trainer, batch_size)
  for i, (batch, mask) in enumerate(trainer_lib.padded_batches(np.asarray(clips),
                                                               batch_size)):
    yield i * batch_size, trainer.shard_batch(batch), int(mask.sum())


def _check_clips(trainer, clips: np.ndarray) -> int:
  """The model's context frames, after checking that the clips extend past them."""
  num_context = _require_video_model(trainer, "video prediction")
  if clips.ndim != 5 or clips.shape[1] <= num_context:
    raise ValueError(f"video prediction: clips must be uint8 [N, T > {num_context}, H, W, "
                     f"C] (the model conditions on {num_context} frames); got "
                     f"{clips.shape}")
  return num_context


def video_prediction_scores(trainer, state, clips: np.ndarray, rng: jax.Array,
                            num_samples: int = 100, batch_size: int = 100,
                            temperature: float = 1.0,
                            ssim_kind: str = video_metrics.DEFAULT_SSIM_KIND) -> dict:
  """Best-of-N PSNR and SSIM per predicted frame, as the SVG reference evaluates.

  For each uint8 clip [N, T, H, W, C], `num_samples` continuations are drawn with
  `trainer.sample` conditioned on its first `trainer.num_context_frames` frames (the
  likelihood's mean frames, fed back) and every predicted frame is scored
  (`video_metrics`: PSNR in dB with data range 1, SSIM of `ssim_kind`, by default the
  reference's skimage defaults). Two readings of "best of N" (`video_metrics.update_best`):
  the reference's, the one sample per clip with the highest SSIM averaged over the
  predicted frames (its per-frame scores: "psnr", "ssim"), and the per-frame maximum
  over samples ("psnr_max", "ssim_max", higher). Scored frames are the clip's frames
  num_context .. num_context + F - 1 with F = min(frames the model generates,
  T - num_context). Clips are drawn in batches of different clips (one draw each per
  call, as the reference: batch statistics are over other clips; the last batch is
  filled with clips from the start of the set); draw k of batch i uses the key
  fold_in(fold_in(rng, i), k), so the first draws do not depend on num_samples and
  the per-frame maximum never decreases with N. Memory holds one draw per batch and
  the running best, never N draws.

  Returns {"frame": int [F] (0-based clip frame indices), "psnr", "ssim", "psnr_max",
  "ssim_max": float64 [F] means over clips, "<key>_per_clip": [N_clips, F] for each,
  "num_samples", "ssim_kind"}.
  """
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1; got {num_samples}")
  num_context = _check_clips(trainer, clips)
  window = video_metrics.ssim_window_size(ssim_kind)
  h, w = clips.shape[2:4]
  if min(h, w) < window:
    raise ValueError(f"video prediction: SSIM's {window}x{window} window ({ssim_kind!r}) "
                     f"needs frames of at least that size; got {h}x{w}")
  keys = ("psnr", "ssim", "psnr_max", "ssim_max")
  per_clip = {k: [] for k in keys}
  bar = _progress(f"best-of-{num_samples} PSNR/SSIM", trainer, len(clips), batch_size)
  for i, (_, batch, n) in enumerate(bar.iterate(_cyclic_batches(trainer, clips,
                                                                batch_size))):
    context = batch[:, :num_context]
    batch_key = jax.random.fold_in(rng, i)
    best = None
    for k in range(num_samples):
      frames = trainer.sample(state, jax.random.fold_in(batch_key, k), num=batch.shape[0],
                              context=context, temperature=temperature)
      if best is None:  # the frames the model generates, within the clip
        num_frames = min(frames.shape[1], clips.shape[1] - num_context)
        target = preprocessing.to_float(batch[:, num_context:num_context + num_frames])
      best = video_metrics.update_best(best, target, frames[:, :num_frames], ssim_kind)
    best = jax.device_get(best)
    for key in keys:
      per_clip[key].append(np.asarray(best[key], np.float64)[:n])
  result = {f"{k}_per_clip": np.concatenate(v) for k, v in per_clip.items()}
  result.update({k: result[f"{k}_per_clip"].mean(axis=0) for k in per_clip})
  result["frame"] = np.arange(num_context, num_context + num_frames)
  result["num_samples"] = num_samples
  result["ssim_kind"] = ssim_kind
  return result


def video_fid(trainer, state, clips: np.ndarray, fid_kind: str, rng: jax.Array,
              weights_path: Optional[str] = None, batch_size: int = 100,
              temperature: float = 1.0) -> float:
  """FID between predicted frames and the true frames at the same positions.

  One continuation per uint8 clip [N, T, H, W, C], conditioned on its context frames
  (`trainer.sample`, batch i with key fold_in(rng, i)); its F predicted frames (as in
  `video_prediction_scores`) are N * F images against the clips' N * F true frames
  num_context .. num_context + F - 1. fid_kind: 'random' or 'inception' (see
  `fid_score`). Features are computed batch by batch, so memory holds one batch of
  frames.
  """
  num_context = _check_clips(trainer, clips)
  feature_fn = fid_feature_fn(fid_kind, weights_path)
  predicted, reference = [], []
  bar = _progress(f"FID ({fid_kind}) of predicted frames", trainer, len(clips), batch_size)
  for i, (start, batch, n) in enumerate(bar.iterate(_cyclic_batches(trainer, clips,
                                                                    batch_size))):
    frames = trainer.sample(state, jax.random.fold_in(rng, i), num=batch.shape[0],
                            context=batch[:, :num_context], temperature=temperature)
    num_frames = min(frames.shape[1], clips.shape[1] - num_context)
    frames = np.asarray(jax.device_get(frames))[:n, :num_frames]
    truth = np.asarray(clips[start:start + n, num_context:num_context + num_frames])
    predicted.append(metrics.compute_features(
        frames.reshape((-1,) + frames.shape[2:]), feature_fn))
    reference.append(metrics.compute_features(
        truth.reshape((-1,) + truth.shape[2:]).astype(np.float32) / 255.0, feature_fn))
  return metrics.fid_from_features(np.concatenate(predicted), np.concatenate(reference))
