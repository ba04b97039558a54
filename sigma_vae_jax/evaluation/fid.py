"""Prior samples of a trained model and their FID against test images.

Takes a `trainer.Trainer`, a `train_step.TrainState` (e.g. from `loading.load_run`);
samples are the likelihood's means, float32 in [0, 1]; the FID features are a fixed
random conv net ('random') or pytorch-fid's InceptionV3 ('inception', `metrics`).
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import numpy as np

from sigma_vae_jax.evaluation import batches
from sigma_vae_jax.evaluation import metrics
from sigma_vae_jax.training import progress


def prior_samples(trainer, state, num_samples: int, rng: jax.Array,
                  batch_size: int = 128, temperature: float = 1.0) -> np.ndarray:
  """Likelihood means of num_samples prior draws: float32 [num_samples, ...] in [0, 1].

  Batch i draws with key fold_in(rng, i); latent noise scaled by `temperature`."""
  batch_size = batches.batch_size_for(trainer, batch_size)
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
