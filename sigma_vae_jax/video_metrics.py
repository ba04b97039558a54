"""Per-frame PSNR and SSIM of predicted videos, and best-of-N selection (SVG evaluation).

Video prediction papers (Denton & Fergus 2018 and the works they compare with) draw N
samples (100) per test clip conditioned on its context frames and report, per
predicted frame, the score of the best sample. Frames are float [..., H, W, C] in
[0, 1] (data range 1) with any leading axes ([B, T] for clips); scores are per frame,
averaged over channels as the SVG evaluation (`utils.eval_seq`) does:

* PSNR: 10 log10(data_range^2 / MSE) per channel, averaged over channels
  (`per_channel=False`: from the MSE over all channels). Identical frames give +inf.
* SSIM (Wang et al. 2004): 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
  population (co)variances, per channel, averaged over the positions where the window
  lies inside the frame ('valid'), then over channels. This is `finn_ssim` of the
  SVG repository and skimage's `structural_similarity(..., gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1)` (which filters the whole
  frame and crops the 5-pixel border before averaging: the same numbers). Note: the
  SVG repository's default `eval_seq` calls skimage with its defaults instead (7x7
  uniform window, sample covariance, and data range 2 for float input); numbers from
  that are not comparable with these.

All functions are jitted and batched; the window is applied as two small matrix
products (exact, no FFT).
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
K1, K2 = 0.01, 0.03


def gaussian_window_1d(size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA) -> np.ndarray:
  """The normalised 1-D Gaussian; the 2-D SSIM window is its outer product."""
  r = np.arange(size, dtype=np.float64) - (size - 1) / 2
  w = np.exp(-r ** 2 / (2 * sigma ** 2))
  return w / w.sum()


def _valid_filter_matrix(n: int, size: int, sigma: float) -> np.ndarray:
  """[n - size + 1, n] matrix M with (M @ v)[i] = sum_k w[k] v[i + k] ('valid')."""
  w = gaussian_window_1d(size, sigma)
  m = np.zeros((n - size + 1, n), np.float64)
  for i in range(n - size + 1):
    m[i, i:i + size] = w
  return m


def _check_pair(x, y, fn: str):
  if x.shape != y.shape:
    raise ValueError(f"{fn}: frames must have the same shape; got {x.shape} and {y.shape}")
  if x.ndim < 3:
    raise ValueError(f"{fn}: frames are [..., H, W, C]; got shape {x.shape}")


@functools.partial(jax.jit, static_argnames=("data_range", "per_channel"))
def psnr(x: jax.Array, y: jax.Array, data_range: float = 1.0,
         per_channel: bool = True) -> jax.Array:
  """PSNR in dB of frames x, y [..., H, W, C] -> [...] (channel mean of per-channel PSNR)."""
  _check_pair(x, y, "psnr")
  err = jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32))
  if per_channel:
    mse = err.mean(axis=(-3, -2))  # [..., C]
    return (10.0 * jnp.log10(data_range ** 2 / mse)).mean(axis=-1)
  return 10.0 * jnp.log10(data_range ** 2 / err.mean(axis=(-3, -2, -1)))


@functools.partial(jax.jit, static_argnames=("data_range", "window_size", "sigma"))
def ssim(x: jax.Array, y: jax.Array, data_range: float = 1.0, window_size: int = WINDOW_SIZE,
         sigma: float = WINDOW_SIGMA) -> jax.Array:
  """Mean SSIM of frames x, y [..., H, W, C] -> [...] (mean over channels)."""
  _check_pair(x, y, "ssim")
  h, w = x.shape[-3], x.shape[-2]
  if h < window_size or w < window_size:
    raise ValueError(f"ssim: frames of {h}x{w} are smaller than the {window_size}x"
                     f"{window_size} window")
  mh = jnp.asarray(_valid_filter_matrix(h, window_size, sigma), jnp.float32)
  mw = jnp.asarray(_valid_filter_matrix(w, window_size, sigma), jnp.float32)
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)

  def filt(a):  # [..., H, W, C] -> [..., H', W', C]
    return jnp.einsum("ih,...hwc,jw->...ijc", mh, a, mw,
                      precision=jax.lax.Precision.HIGHEST)

  # (Co)variances are shift invariant: computing them from frames minus their mean
  # (per channel) avoids most of float32's cancellation in E[x^2] - E[x]^2.
  mx = x.mean(axis=(-3, -2), keepdims=True)
  my = y.mean(axis=(-3, -2), keepdims=True)
  x0, y0 = x - mx, y - my
  mu_x0, mu_y0 = filt(x0), filt(y0)
  var_x = filt(x0 * x0) - mu_x0 * mu_x0
  var_y = filt(y0 * y0) - mu_y0 * mu_y0
  cov = filt(x0 * y0) - mu_x0 * mu_y0
  mu_x, mu_y = mu_x0 + mx, mu_y0 + my
  c1 = (K1 * data_range) ** 2
  c2 = (K2 * data_range) ** 2
  s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
      (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
  return s.mean(axis=(-3, -2, -1))


@jax.jit
def frame_metrics(target: jax.Array, prediction: jax.Array) -> dict[str, jax.Array]:
  """{"psnr", "ssim"} of each predicted frame: [..., T, H, W, C] -> [..., T].

  `prediction` may carry extra leading sample axes ([N, B, T, H, W, C] against a
  target [B, T, H, W, C]); the target broadcasts over them.
  """
  target = jnp.broadcast_to(target, prediction.shape)
  return {"psnr": psnr(target, prediction), "ssim": ssim(target, prediction)}


@functools.partial(jax.jit, static_argnames=("axis", "per_frame"))
def best_of_n(scores: jax.Array, axis: int = 0, per_frame: bool = True) -> jax.Array:
  """The best (highest) of N samples' scores, [..., N, ..., T] -> the same without `axis`.

  per_frame=True: for each predicted frame (last axis) its best sample, as the SVG
  papers plot best-of-N PSNR/SSIM per frame. per_frame=False: the per-frame scores of
  the one sample with the best mean over frames (per-sequence selection).
  NaN scores never win.
  """
  axis = axis % scores.ndim
  if axis == scores.ndim - 1:
    raise ValueError("best_of_n: the sample axis cannot be the frame (last) axis")
  clean = jnp.where(jnp.isnan(scores), -jnp.inf, scores)
  if per_frame:
    return clean.max(axis=axis)
  best = jnp.argmax(clean.mean(axis=-1), axis=axis)  # [... without axis and T]
  best = jnp.expand_dims(jnp.expand_dims(best, axis), -1)
  return jnp.take_along_axis(clean, best, axis=axis).squeeze(axis)


@jax.jit
def update_best(best: Optional[dict], target: jax.Array, prediction: jax.Array) -> dict:
  """Running per-frame best over samples drawn one batch at a time.

  best: None or the previous result ({"psnr", "ssim"} [B, T]); target, prediction
  [B, T, H, W, C] (one sample per clip). Returns the elementwise maximum.
  """
  scores = frame_metrics(target, prediction)
  if best is None:
    return scores
  return jax.tree.map(jnp.fmax, best, scores)


def best_of_n_metrics(target: jax.Array, samples: jax.Array,
                      per_frame: bool = True) -> dict[str, jax.Array]:
  """Best-of-N PSNR and SSIM per predicted frame.

  target [B, T, H, W, C]; samples [N, B, T, H, W, C] (N samples per clip).
  Returns {"psnr", "ssim"} each [B, T] (see `best_of_n` for `per_frame`).
  """
  if samples.ndim != target.ndim + 1 or samples.shape[1:] != target.shape:
    raise ValueError(f"best_of_n_metrics: samples must be [N, *target.shape] = "
                     f"[N, {', '.join(map(str, target.shape))}]; got {samples.shape}")
  scores = frame_metrics(target, samples)
  return {k: best_of_n(v, axis=0, per_frame=per_frame) for k, v in scores.items()}
