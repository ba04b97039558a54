"""Per-frame PSNR and SSIM of predicted videos, and best-of-N selection (SVG evaluation).

Video prediction papers (Denton & Fergus 2018 and the works they compare with) draw N
samples (100) per test clip conditioned on its context frames and score each predicted
frame. Frames are float [..., H, W, C] in [0, 1] with any leading axes ([B, T] for
clips); scores are per frame, averaged over channels as the SVG evaluation
(`utils.eval_seq`) does:

* PSNR: 10 log10(data_range^2 / MSE) per channel, averaged over channels
  (`per_channel=False`: from the MSE over all channels), data range 1 (skimage's
  `compare_psnr` on float frames in [0, 1]). Identical frames give +inf.
* SSIM (Wang et al. 2004) per channel, averaged over the positions where the window
  lies inside the frame ('valid'), then over channels. Two kinds (`SSIM_KINDS`):
  - "reference": what the SVG reference's `utils.eval_seq` computes, skimage's
    `compare_ssim` with its defaults on float32 frames: a 7x7 uniform window, sample
    (co)variances (x 49/48), data range 2 (skimage's range of float images, [-1, 1]),
    K1 = 0.01, K2 = 0.03; skimage filters the whole frame and crops 3 pixels, which
    leaves exactly the 'valid' positions.
  - "gaussian": an 11x11 Gaussian window with sigma 1.5, population (co)variances,
    data range 1: `finn_ssim` of the SVG repository, and skimage's
    `structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)`. Not comparable with "reference".

Best of N (`update_best`, `best_of_n_metrics`), two readings: the reference's
(`generate_svg_lp.py`) keeps, per clip, the one sample with the highest SSIM averaged
over the predicted frames and reports that sample's per-frame scores ("best
sequence"); the per-frame maximum over samples takes each frame's best sample
separately, a higher number that no single sample reaches.

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
# SSIM settings by name (see the module docstring); "reference" is the SVG reference's.
SSIM_KINDS = {
    "reference": {"window_size": 7, "sigma": None, "data_range": 2.0,
                  "sample_covariance": True},
    "gaussian": {"window_size": WINDOW_SIZE, "sigma": WINDOW_SIGMA, "data_range": 1.0,
                 "sample_covariance": False},
}
DEFAULT_SSIM_KIND = "reference"


def ssim_window_size(kind: str) -> int:
  """Smallest frame side the SSIM of `kind` takes (its window); ValueError if unknown."""
  if kind not in SSIM_KINDS:
    raise ValueError(f"ssim_kind must be one of {tuple(SSIM_KINDS)}; got {kind!r}")
  return SSIM_KINDS[kind]["window_size"]


def gaussian_window_1d(size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA) -> np.ndarray:
  """The normalised 1-D Gaussian; the 2-D SSIM window is its outer product."""
  r = np.arange(size, dtype=np.float64) - (size - 1) / 2
  w = np.exp(-r ** 2 / (2 * sigma ** 2))
  return w / w.sum()


def _valid_filter_matrix(n: int, size: int, sigma: Optional[float]) -> np.ndarray:
  """[n - size + 1, n] matrix M with (M @ v)[i] = sum_k w[k] v[i + k] ('valid'); w is
  the Gaussian of `sigma`, or uniform (1 / size) for sigma None."""
  w = np.full(size, 1.0 / size) if sigma is None else gaussian_window_1d(size, sigma)
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


@functools.partial(jax.jit, static_argnames=("data_range", "window_size", "sigma",
                                             "sample_covariance"))
def ssim(x: jax.Array, y: jax.Array, data_range: float = 1.0, window_size: int = WINDOW_SIZE,
         sigma: Optional[float] = WINDOW_SIGMA, sample_covariance: bool = False) -> jax.Array:
  """Mean SSIM of frames x, y [..., H, W, C] -> [...] (mean over channels).

  Gaussian window of `sigma` (None: uniform) and `window_size`; sample_covariance
  scales the (co)variances by n / (n - 1), n = window_size^2 (skimage's default).
  Defaults: the "gaussian" kind; `SSIM_KINDS` names both kinds' settings.
  """
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
  if sample_covariance:
    n = window_size * window_size
    var_x, var_y, cov = (v * (n / (n - 1.0)) for v in (var_x, var_y, cov))
  mu_x, mu_y = mu_x0 + mx, mu_y0 + my
  c1 = (K1 * data_range) ** 2
  c2 = (K2 * data_range) ** 2
  s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
      (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
  return s.mean(axis=(-3, -2, -1))


@functools.partial(jax.jit, static_argnames="ssim_kind")
def frame_metrics(target: jax.Array, prediction: jax.Array,
                  ssim_kind: str = DEFAULT_SSIM_KIND) -> dict[str, jax.Array]:
  """{"psnr", "ssim"} of each predicted frame: [..., T, H, W, C] -> [..., T].

  `prediction` may carry extra leading sample axes ([N, B, T, H, W, C] against a
  target [B, T, H, W, C]); the target broadcasts over them. SSIM of `ssim_kind`.
  """
  ssim_window_size(ssim_kind)
  target = jnp.broadcast_to(target, prediction.shape)
  return {"psnr": psnr(target, prediction),
          "ssim": ssim(target, prediction, **SSIM_KINDS[ssim_kind])}


@functools.partial(jax.jit, static_argnames=("axis", "per_frame"))
def best_of_n(scores: jax.Array, axis: int = 0, per_frame: bool = True) -> jax.Array:
  """The best (highest) of N samples' scores, [..., N, ..., T] -> the same without `axis`.

  per_frame=True: for each predicted frame (last axis) its best sample.
  per_frame=False: the per-frame scores of the one sample with the best mean over
  frames of these scores (to select by another score, `best_sequence`).
  NaN scores never win.
  """
  axis = axis % scores.ndim
  if axis == scores.ndim - 1:
    raise ValueError("best_of_n: the sample axis cannot be the frame (last) axis")
  clean = jnp.where(jnp.isnan(scores), -jnp.inf, scores)
  if per_frame:
    return clean.max(axis=axis)
  return best_sequence({"s": clean}, clean, axis)["s"]


@functools.partial(jax.jit, static_argnames="axis")
def best_sequence(scores: dict, by: jax.Array, axis: int = 0) -> dict:
  """The per-frame scores of the one sample per clip whose `by` scores have the highest
  mean over frames, as the SVG reference chooses its best sample (`by` = SSIM).

  scores: {name: [..., N, ..., T]}; by [..., N, ..., T] (same shape); the first best
  sample wins ties, NaN never wins. Returns {name: [... without `axis`, T]}.
  """
  axis = axis % by.ndim
  if axis == by.ndim - 1:
    raise ValueError("best_sequence: the sample axis cannot be the frame (last) axis")
  mean = jnp.where(jnp.isnan(by), -jnp.inf, by).mean(axis=-1)
  best = jnp.expand_dims(jnp.expand_dims(jnp.argmax(mean, axis=axis), axis), -1)
  return {k: jnp.take_along_axis(v, best, axis=axis).squeeze(axis)
          for k, v in scores.items()}


@functools.partial(jax.jit, static_argnames="ssim_kind")
def update_best(best: Optional[dict], target: jax.Array, prediction: jax.Array,
                ssim_kind: str = DEFAULT_SSIM_KIND) -> dict:
  """Running best over samples drawn one batch at a time, both readings.

  best: None or the previous result; target, prediction [B, T, H, W, C] (one sample per
  clip). Returns {"psnr", "ssim": [B, T] the per-frame scores of the sample with the
  highest mean SSIM over the T frames so far (the reference's choice; an earlier sample
  keeps ties), "mean_ssim": [B] that mean, "psnr_max", "ssim_max": [B, T] the per-frame
  maxima over the samples so far}.
  """
  scores = frame_metrics(target, prediction, ssim_kind)
  mean_ssim = jnp.where(jnp.isnan(scores["ssim"]), -jnp.inf, scores["ssim"]).mean(-1)
  new = {"psnr": scores["psnr"], "ssim": scores["ssim"], "mean_ssim": mean_ssim,
         "psnr_max": scores["psnr"], "ssim_max": scores["ssim"]}
  if best is None:
    return new
  better = mean_ssim > best["mean_ssim"]  # [B]
  return {"psnr": jnp.where(better[:, None], new["psnr"], best["psnr"]),
          "ssim": jnp.where(better[:, None], new["ssim"], best["ssim"]),
          "mean_ssim": jnp.where(better, mean_ssim, best["mean_ssim"]),
          "psnr_max": jnp.fmax(best["psnr_max"], new["psnr"]),
          "ssim_max": jnp.fmax(best["ssim_max"], new["ssim"])}


def best_of_n_metrics(target: jax.Array, samples: jax.Array, per_frame: bool = True,
                      ssim_kind: str = DEFAULT_SSIM_KIND) -> dict[str, jax.Array]:
  """Best-of-N PSNR and SSIM per predicted frame.

  target [B, T, H, W, C]; samples [N, B, T, H, W, C] (N samples per clip).
  Returns {"psnr", "ssim"} each [B, T]: per_frame=True, each frame's maximum over the
  samples; per_frame=False, the scores of the sample with the highest mean SSIM over
  the frames (the SVG reference's choice, `best_sequence`).
  """
  if samples.ndim != target.ndim + 1 or samples.shape[1:] != target.shape:
    raise ValueError(f"best_of_n_metrics: samples must be [N, *target.shape] = "
                     f"[N, {', '.join(map(str, target.shape))}]; got {samples.shape}")
  scores = frame_metrics(target, samples, ssim_kind)
  if per_frame:
    return {k: best_of_n(v, axis=0) for k, v in scores.items()}
  return best_sequence(scores, scores["ssim"], axis=0)
