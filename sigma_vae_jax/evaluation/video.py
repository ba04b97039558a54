"""Evaluation of video models (`trainer.num_context_frames` > 0, e.g. SVG-LP) as the
SVG papers evaluate them: the ELBO per predicted frame (`evaluate_elbo_per_frame`),
best-of-N PSNR and SSIM per predicted frame of samples conditioned on the context
frames, the best sample chosen as the SVG reference chooses it and the per-frame
maximum (`video_prediction_scores`), and the FID of predicted frames (`video_fid`);
scripts/evaluate_video.py runs them on a workdir.

Every function takes a `trainer.Trainer`, a `train_step.TrainState` (e.g. from
`loading.load_run`) and uint8 clips [N, T, H, W, C]; the per-frame scores are
`video_metrics`', the FID features `fid.fid_feature_fn`'s.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from sigma_vae_jax.data import preprocessing
from sigma_vae_jax.evaluation import batches
from sigma_vae_jax.evaluation import fid
from sigma_vae_jax.evaluation import metrics
from sigma_vae_jax.evaluation import video_metrics
from sigma_vae_jax.training import trainer as trainer_lib


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
  for i, (batch, mask, _) in enumerate(
      batches.sharded_batches(trainer, clips, batch_size)):
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
  batch_size = batches.batch_size_for(trainer, batch_size)
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
  bar = batches.progress_over(f"best-of-{num_samples} PSNR/SSIM", trainer, len(clips),
                              batch_size)
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
  feature_fn = fid.fid_feature_fn(fid_kind, weights_path)
  predicted, reference = [], []
  bar = batches.progress_over(f"FID ({fid_kind}) of predicted frames", trainer,
                              len(clips), batch_size)
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
