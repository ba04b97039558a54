"""Evaluation math: IWAE bound, mutual information and
marginal KL (paper Sec. 5.2), and Frechet distances (FID).

All densities are in nats. The functions on JAX arrays are pure, batched and
jit-able; `frechet_distance`, `feature_statistics`, `compute_features` and
`fid` run on the host (numpy/scipy, float64), like pytorch-fid.

FID feature networks ("fid kinds"):

* ``'inception'``: the standard pytorch-fid InceptionV3 (`sigma_vae_jax.evaluation.inception`).
  Needs converted weights; numbers are comparable to published FIDs (up to the
  usual implementation differences).
* ``'random'``: `random_feature_fn`, a fixed, randomly initialised conv net
  (deterministic from a seed). Weight-free, for relative comparisons of models
  *within one run/one seed only*; its values are NOT comparable to published
  FIDs nor across seeds, feature dims or resolutions.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from sigma_vae_jax import losses
from sigma_vae_jax.evaluation import inception
from sigma_vae_jax.training import progress

LOG_2PI = math.log(2.0 * math.pi)

Array = jax.Array


# ----------------------------------------------------------------------------
# Gaussian log-densities and KL.
# ----------------------------------------------------------------------------


# ----------------------------------------------------------------------------
# Importance-weighted bound.
# ----------------------------------------------------------------------------


def iwae_bound(log_p_x_given_z: Array, log_p_z: Array, log_q_z: Array) -> Array:
  """Importance-weighted lower bound on log p(x) (Burda et al., 2016).

  Args:
    log_p_x_given_z: [K, B] log p(x_b | z_kb) for K samples z_kb ~ q(z|x_b).
    log_p_z: [K, B] log p(z_kb) under the prior.
    log_q_z: [K, B] log q(z_kb | x_b) under the encoder.

  Returns:
    [B] the bound  L_K = logsumexp_k(log w_k) - log K  with
    log w = log p(x|z) + log p(z) - log q(z|x). This is a LOWER bound on the
    log-likelihood log p(x) (higher is better) in nats; the negative
    log-likelihood reported in papers is `-iwae_bound(...)`. K = 1 gives the
    single-sample ELBO; E[L_K] is non-decreasing in K and -> log p(x).
  """
  log_w = log_p_x_given_z + log_p_z - log_q_z
  k = log_w.shape[0]
  return jax.nn.logsumexp(log_w, axis=0) - math.log(k)


# ----------------------------------------------------------------------------
# Mutual information and marginal KL (Rosca et al., 2018; paper Sec. 5.2).
# ----------------------------------------------------------------------------


def _default_map_batch_size(n: int, d: int, budget_elements: int = 1 << 22) -> int:
  """How many z's to score at once so that the [b, N, D] temporary stays small."""
  return int(max(1, min(n, budget_elements // max(1, n * d))))


def log_aggregate_posterior(
    z: Array, mean: Array, log_var: Array, *, batch_size: Optional[int] = None
) -> Array:
  """log m(z_i) with m(z) = (1/N) sum_n q(z | x_n), for each row of z.

  Args:
    z: [M, D] points at which to evaluate the aggregate posterior.
    mean, log_var: [N, D] the diagonal-Gaussian posteriors q(z|x_n).
    batch_size: how many z's are evaluated together (each against all N
      posteriors, a [batch_size, N, D] temporary); by default chosen to keep
      that temporary at ~4M elements. Memory is O(batch_size * N * D), so N of
      10k+ fits. The difference (z - mean) is formed directly (no expanded
      quadratic form) so small posterior variances do not cancel catastrophically.

  Returns:
    [M] log m(z_i) = logsumexp_n log q(z_i | x_n) - log N.
  """
  n, d = mean.shape
  if batch_size is None:
    batch_size = _default_map_batch_size(n, d)
  inv_var = jnp.exp(-log_var)
  # Per-posterior constant: -0.5 * sum_d (log 2pi + log_var).
  const = -0.5 * jnp.sum(LOG_2PI + log_var, axis=-1)  # [N]

  def one(zi):  # [D] -> scalar
    quad = jnp.sum(jnp.square(zi[None, :] - mean) * inv_var, axis=-1)  # [N]
    return jax.nn.logsumexp(const - 0.5 * quad)

  lse = jax.lax.map(one, z, batch_size=batch_size)
  return lse - math.log(n)


def mutual_information_and_marginal_kl(
    z: Array, mean: Array, log_var: Array, *, batch_size: Optional[int] = None
) -> Dict[str, Array]:
  """Monte Carlo estimates of the rate decomposition (paper Eq. 9).

    E_x KL(q(z|x) || p(z)) = I_e(x; z) + KL(m(z) || p(z)),
    m(z) = (1/N) sum_n q(z | x_n),  p(z) = N(0, I).

  Args:
    z: [N, D] one sample z_i ~ q(z | x_i) per data point.
    mean, log_var: [N, D] the encoder's diagonal-Gaussian posteriors.
    batch_size: see `log_aggregate_posterior`.

  Returns a dict of scalars (nats):
    'mutual_information': mean_i [log q(z_i|x_i) - log m(z_i)]. Because the
      n = i term is part of the sum in m, this estimate is always <= log N
      (the empirical distribution of N points carries at most log N nats), so
      use N large enough that log N is well above the values of interest.
    'marginal_kl': mean_i [log m(z_i) - log p(z_i)].
    'average_kl': mean_n KL(q(z|x_n) || N(0, I)) in closed form.
    'log_n': log N, the upper bound on the MI estimate.
  The first two sum to the single-sample MC estimate of 'average_kl', so
  mutual_information + marginal_kl ~= average_kl up to Monte Carlo error.
  """
  n = mean.shape[0]
  log_q_own = losses.gaussian_log_prob(z, mean, log_var).sum(-1)  # [N]
  log_m = log_aggregate_posterior(z, mean, log_var, batch_size=batch_size)  # [N]
  log_p = losses.gaussian_log_prob(z).sum(-1)  # [N]
  return {
      "mutual_information": jnp.mean(log_q_own - log_m),
      "marginal_kl": jnp.mean(log_m - log_p),
      "average_kl": jnp.mean(losses.gaussian_kl(mean, log_var).sum(-1)),
      "log_n": jnp.asarray(math.log(n), dtype=log_q_own.dtype),
  }


# ----------------------------------------------------------------------------
# Frechet distance (host side, float64, as in pytorch-fid).
# ----------------------------------------------------------------------------


def feature_statistics(features) -> Tuple[np.ndarray, np.ndarray]:
  """(mean [F], covariance [F, F]) of features [N, F] in float64 (unbiased cov)."""
  feats = np.asarray(features, dtype=np.float64)
  if feats.ndim != 2:
    raise ValueError(f"features must be [N, F], got shape {feats.shape}")
  if feats.shape[0] < 2:
    raise ValueError("need at least 2 feature vectors for a covariance")
  return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2):

    ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrtm(sigma1 @ sigma2)).

  Follows pytorch-fid: scipy.linalg.sqrtm of the product; when that is not
  finite (singular product), eps * I is added to both covariances; a small
  imaginary part from numerical error is dropped (a large one raises).
  """
  from scipy import linalg  # Host-side only.

  mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
  mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
  if mu1.shape != mu2.shape:
    raise ValueError(f"mean shapes differ: {mu1.shape} vs {mu2.shape}")
  if sigma1.shape != sigma2.shape:
    raise ValueError(f"covariance shapes differ: {sigma1.shape} vs {sigma2.shape}")

  diff = mu1 - mu2
  with np.errstate(all="ignore"):
    covmean = linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      m = np.max(np.abs(covmean.imag))
      raise ValueError(f"sqrtm has a large imaginary component {m}")
    covmean = covmean.real
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


# ----------------------------------------------------------------------------
# Feature networks and FID glue.
# ----------------------------------------------------------------------------


def random_feature_fn(
    seed: int = 0,
    dim: int = 256,
    resolution: int = 64,
    channels: Sequence[int] = (32, 64, 128, 256),
) -> Callable[[Array], Array]:
  """A fixed random conv network for weight-free "random-network FID" (fid_kind='random').

  Architecture: images in [0,1] -> grayscale tiled to 3 channels -> bilinear
  resize to `resolution` x `resolution` -> x*2-1 -> len(channels) blocks of
  [3x3 conv, stride 2, SAME, + bias, ReLU] with He-normal weights -> flatten
  the final spatial map -> fixed Gaussian projection to `dim` features.
  All weights are drawn once from `numpy.random.default_rng(seed)` (deterministic
  for a given seed and NumPy version); biases are small random values so ReLUs are not
  all gated at exactly zero on constant inputs.

  Use it only to compare models against each other within one run (same seed,
  dim, resolution, number of samples). Its values are not comparable to
  published (Inception) FIDs. Random conv features are sensitive to low-level
  statistics (colour, texture, blur), which is what the sigma-VAE comparisons
  need, but they carry no semantic prior.

  Returns a jitted function images [N,H,W(,C)] -> features [N, dim].
  """
  # Host-side numpy RNG: instant (no per-shape compiles of jax.random ops).
  rng = np.random.default_rng(seed)
  weights = []
  c_in = 3
  size = resolution
  for c_out in channels:
    fan_in = 9 * c_in
    w = rng.standard_normal((3, 3, c_in, c_out)) * math.sqrt(2.0 / fan_in)
    b = 0.1 * rng.standard_normal((c_out,))
    weights.append((jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)))
    c_in = c_out
    size = -(-size // 2)
  flat_dim = size * size * c_in
  projection = jnp.asarray(rng.standard_normal((flat_dim, dim)) / math.sqrt(flat_dim), jnp.float32)
  return functools.partial(_random_network, tuple(weights), projection, resolution=resolution)


@functools.partial(jax.jit, static_argnames=("resolution",))
def _random_network(weights, projection, images, *, resolution):
  """The network of `random_feature_fn`; weights are arguments so seeds share one compile."""
  x = inception.to_rgb(images)
  if x.shape[1:3] != (resolution, resolution):
    x = jax.image.resize(x, (x.shape[0], resolution, resolution, 3), method="bilinear", antialias=True)
  x = 2.0 * x - 1.0
  for w, b in weights:
    x = jax.lax.conv_general_dilated(
        x, w, window_strides=(2, 2), padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST)
    x = jax.nn.relu(x + b)
  x = x.reshape(x.shape[0], -1)
  return jnp.dot(x, projection, precision=jax.lax.Precision.HIGHEST)


def random_features(images, seed: int = 0, dim: int = 256, resolution: int = 64) -> Array:
  """Convenience: `random_feature_fn(seed, dim, resolution)(images)`."""
  return random_feature_fn(seed=seed, dim=dim, resolution=resolution)(images)


def make_feature_fn(fid_kind: str = "random", **kwargs) -> Callable[[Array], Array]:
  """Feature function for `fid` by name.

  'random': `random_feature_fn(**kwargs)` (weight-free; relative comparisons only).
  'inception': pytorch-fid InceptionV3 pool features; kwargs may give
    `weights_path` (default: see `sigma_vae_jax.evaluation.inception.default_weights_path`).
  """
  if fid_kind == "random":
    return random_feature_fn(**kwargs)
  if fid_kind == "inception":

    params = inception.load_params(kwargs.pop("weights_path", None))
    return inception.inception_feature_fn(params, **kwargs)
  raise ValueError(f"unknown fid_kind {fid_kind!r}; expected 'random' or 'inception'")


def compute_features(images, feature_fn: Callable[[Array], Array], batch_size: int = 200) -> np.ndarray:
  """Runs `feature_fn` over images [N, ...] in batches; returns float64 [N, F].

  The last batch is padded (by repeating its final image) to `batch_size` so
  that the jitted feature function compiles only once.
  """
  n = len(images)
  if n == 0:
    raise ValueError("no images")
  batch_size = min(batch_size, n)
  out = []
  bar = progress.Progress("FID features", -(-n // batch_size))
  for start in bar.iterate(range(0, n, batch_size)):
    batch = np.asarray(images[start:start + batch_size])
    m = batch.shape[0]
    if m < batch_size:
      pad = np.repeat(batch[-1:], batch_size - m, axis=0)
      batch = np.concatenate([batch, pad], axis=0)
    feats = np.asarray(feature_fn(batch), dtype=np.float64)
    out.append(feats[:m])
  return np.concatenate(out, axis=0)


def fid(images_a, images_b, feature_fn: Callable[[Array], Array], batch_size: int = 200) -> float:
  """Frechet distance between the feature statistics of two image sets.

  images_a, images_b: [N, H, W(, C)] in [0, 1] (numpy or JAX). feature_fn maps
  a batch of images to [B, F] features, e.g. `make_feature_fn('random')` or
  `inception.inception_feature_fn(params)`. Use the same number of images for
  all models being compared: FID is biased upward for small N.
  """
  return fid_from_features(compute_features(images_a, feature_fn, batch_size),
                           compute_features(images_b, feature_fn, batch_size))


def fid_from_features(features_a, features_b) -> float:
  """Frechet distance between the Gaussian statistics of two feature sets [N, F]
  (e.g. `compute_features` of images gathered batch by batch)."""
  mu1, s1 = feature_statistics(features_a)
  mu2, s2 = feature_statistics(features_b)
  return float(frechet_distance(mu1, s1, mu2, s2))
