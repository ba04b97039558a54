"""PSNR / SSIM per frame and best-of-N selection against independent numpy/scipy
references (explicit 11x11 Gaussian window) and known values."""

import numpy as np
import pytest
from scipy import ndimage, signal

from sigma_vae_jax.evaluation import video_metrics as vm


def _window_2d(size=11, sigma=1.5):
  # Built directly in 2-D (as MATLAB's fspecial('gaussian')), not from the module's 1-D one.
  y, x = np.mgrid[-(size // 2):size // 2 + 1, -(size // 2):size // 2 + 1]
  g = np.exp(-(x ** 2 + y ** 2) / (2.0 * sigma ** 2))
  return g / g.sum()


def _ref_ssim_channel_valid(a, b, data_range=1.0):
  a, b = a.astype(np.float64), b.astype(np.float64)
  w = _window_2d()
  f = lambda img: signal.fftconvolve(img, w, mode="valid")
  mu_a, mu_b = f(a), f(b)
  var_a = f(a * a) - mu_a ** 2
  var_b = f(b * b) - mu_b ** 2
  cov = f(a * b) - mu_a * mu_b
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
  return s.mean()


def _ref_ssim_channel_skimage_style(a, b):
  # skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  # use_sample_covariance=False, data_range=1): filter the whole image, crop 5 pixels.
  a, b = a.astype(np.float64), b.astype(np.float64)
  f = lambda img: ndimage.gaussian_filter(img, sigma=1.5, truncate=3.5, mode="reflect")
  mu_a, mu_b = f(a), f(b)
  var_a = f(a * a) - mu_a ** 2
  var_b = f(b * b) - mu_b ** 2
  cov = f(a * b) - mu_a * mu_b
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
  return s[5:-5, 5:-5].mean()


def _ref_frames(fn, x, y):
  """Apply a per-channel reference to [..., H, W, C], averaging over channels."""
  lead = x.shape[:-3]
  xs = x.reshape((-1,) + x.shape[-3:])
  ys = y.reshape((-1,) + y.shape[-3:])
  out = [np.mean([fn(a[..., c], b[..., c]) for c in range(a.shape[-1])])
         for a, b in zip(xs, ys)]
  return np.array(out).reshape(lead)


@pytest.fixture(scope="module")
def clips():
  rng = np.random.default_rng(0)
  # [B=2, T=3, H=16, W=20, C=3]: smooth structure plus noise, and a noisy "prediction".
  base = ndimage.gaussian_filter(rng.uniform(size=(2, 3, 16, 20, 3)), sigma=(0, 0, 2, 2, 0))
  x = np.clip((base - base.min()) / np.ptp(base) + 0.05 * rng.normal(size=base.shape), 0, 1)
  y = np.clip(x + 0.1 * rng.normal(size=x.shape), 0, 1)
  return x.astype(np.float32), y.astype(np.float32)


def test_ssim_matches_scipy_references(clips):
  x, y = clips
  got = np.asarray(vm.ssim(x, y))
  assert got.shape == (2, 3)
  np.testing.assert_allclose(got, _ref_frames(_ref_ssim_channel_valid, x, y), atol=2e-5)
  np.testing.assert_allclose(got, _ref_frames(_ref_ssim_channel_skimage_style, x, y), atol=2e-5)
  # Unrelated frames score far lower than similar ones.
  rng = np.random.default_rng(1)
  z = rng.uniform(size=x.shape).astype(np.float32)
  got_z = np.asarray(vm.ssim(x, z))
  np.testing.assert_allclose(got_z, _ref_frames(_ref_ssim_channel_valid, x, z), atol=2e-5)
  assert np.all(got_z < got)


def _ref_ssim_channel_skimage_defaults(a, b):
  # What skimage's compare_ssim(a, b) computes with its defaults on float32 frames (the
  # SVG reference's utils.eval_seq): 7x7 uniform window over the whole frame, sample
  # (co)variances (x 49/48), data range 2 (float images span [-1, 1]), then the mean
  # over the frame without its 3-pixel border.
  a, b = a.astype(np.float64), b.astype(np.float64)
  f = lambda img: ndimage.uniform_filter(img, size=7, mode="reflect")
  mu_a, mu_b = f(a), f(b)
  norm = 49 / 48
  var_a = norm * (f(a * a) - mu_a ** 2)
  var_b = norm * (f(b * b) - mu_b ** 2)
  cov = norm * (f(a * b) - mu_a * mu_b)
  c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
  s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
  return s[3:-3, 3:-3].mean()


def test_reference_ssim_is_skimage_defaults(clips):
  x, y = clips
  got = np.asarray(vm.frame_metrics(x, y)["ssim"])  # the default kind: "reference"
  np.testing.assert_allclose(got, _ref_frames(_ref_ssim_channel_skimage_defaults, x, y),
                             atol=2e-5)
  gaussian = np.asarray(vm.frame_metrics(x, y, "gaussian")["ssim"])
  np.testing.assert_allclose(gaussian, _ref_frames(_ref_ssim_channel_valid, x, y), atol=2e-5)
  assert np.all(np.abs(got - gaussian) > 1e-3)  # the two kinds are different numbers
  # Constant frames a, b: (2ab + C1) / (a^2 + b^2 + C1) with C1 = (0.01 * 2)^2.
  a, b = 0.3, 0.6
  fa = np.full((1, 8, 8, 1), a, np.float32)
  fb = np.full((1, 8, 8, 1), b, np.float32)
  c1 = 0.02 ** 2
  np.testing.assert_allclose(np.asarray(vm.frame_metrics(fa, fb)["ssim"]),
                             (2 * a * b + c1) / (a * a + b * b + c1), rtol=1e-5)
  with pytest.raises(ValueError, match="ssim_kind"):
    vm.frame_metrics(fa, fb, "uniform")


def test_best_sample_is_chosen_by_mean_ssim_not_per_frame():
  """One clip, 3 samples, 2 frames (hand-made scores): the reference keeps the sample
  with the best mean SSIM (sample 1) and reports its PSNR too; the per-frame maximum
  mixes samples; choosing by mean PSNR would pick sample 2."""
  ssim = np.array([[0.9, 0.1], [0.6, 0.6], [0.2, 0.8]], np.float32)[:, None]  # [N, B, T]
  psnr = np.array([[30., 10.], [20., 21.], [18., 26.]], np.float32)[:, None]
  chosen = vm.best_sequence({"psnr": psnr, "ssim": ssim}, ssim)
  np.testing.assert_allclose(np.asarray(chosen["ssim"]), [[0.6, 0.6]])
  np.testing.assert_allclose(np.asarray(chosen["psnr"]), [[20., 21.]])
  np.testing.assert_allclose(np.asarray(vm.best_of_n(ssim)), [[0.9, 0.8]])
  np.testing.assert_allclose(np.asarray(vm.best_of_n(psnr)), [[30., 26.]])
  np.testing.assert_allclose(np.asarray(vm.best_of_n(psnr, per_frame=False)), [[18., 26.]])


def test_running_best_on_hand_made_frames():
  """Constant frames against a target of 0.5: sample 0 is exact on frame 0 and off by
  0.5 on frame 1, sample 1 off by 0.1 on both. Closed forms (C1 = 0.02^2): SSIM of
  constant a vs b = (2ab + C1) / (a^2 + b^2 + C1); PSNR = -10 log10((a - b)^2)."""
  c1 = 0.02 ** 2
  s = lambda a, b: (2 * a * b + c1) / (a * a + b * b + c1)
  target = np.full((1, 2, 8, 8, 1), 0.5, np.float32)
  sample0 = target.copy()
  sample0[:, 1] = 1.0
  sample1 = target + np.float32(0.1)
  mean0, mean1 = (1 + s(0.5, 1.0)) / 2, s(0.5, 0.6)
  assert mean1 > mean0  # sample 1 is the reference's choice
  best = None
  for sample in (sample0, sample1):
    best = vm.update_best(best, target, sample)
  np.testing.assert_allclose(np.asarray(best["ssim"]), [[s(0.5, 0.6)] * 2], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(best["psnr"]), [[20.0, 20.0]], rtol=1e-4)
  np.testing.assert_allclose(np.asarray(best["mean_ssim"]), [mean1], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(best["ssim_max"]), [[1.0, s(0.5, 0.6)]], rtol=1e-5)
  assert np.isinf(np.asarray(best["psnr_max"])[0, 0])
  np.testing.assert_allclose(np.asarray(best["psnr_max"])[0, 1], 20.0, rtol=1e-4)
  # In the other order the earlier sample 1 stays chosen; the maxima are the same.
  again = vm.update_best(vm.update_best(None, target, sample1), target, sample0)
  for key in ("psnr", "ssim", "ssim_max", "psnr_max"):
    np.testing.assert_allclose(np.asarray(again[key]), np.asarray(best[key]), rtol=1e-6)


def test_ssim_known_values(clips):
  x, _ = clips
  np.testing.assert_allclose(np.asarray(vm.ssim(x, x)), 1.0, atol=1e-6)
  # Two constant frames a, b: SSIM = (2ab + C1) / (a^2 + b^2 + C1) (no variance).
  a, b = 0.3, 0.6
  fa = np.full((1, 12, 12, 1), a, np.float32)
  fb = np.full((1, 12, 12, 1), b, np.float32)
  c1 = 0.01 ** 2
  np.testing.assert_allclose(np.asarray(vm.ssim(fa, fb)), (2 * a * b + c1) / (a * a + b * b + c1),
                             rtol=1e-5)
  with pytest.raises(ValueError, match="window"):
    vm.ssim(np.zeros((1, 8, 8, 1)), np.zeros((1, 8, 8, 1)))


def test_psnr_known_values_and_reference(clips):
  x, y = clips
  # A constant offset of 0.1 everywhere: MSE 0.01 -> 20 dB.
  base = np.full((2, 3, 8, 8, 3), 0.5, np.float32)
  np.testing.assert_allclose(np.asarray(vm.psnr(base, base + 0.1)), 20.0, rtol=1e-5)
  assert np.all(np.isinf(np.asarray(vm.psnr(x, x))))
  # Per-channel PSNR averaged over channels (SVG's eval_seq) vs. PSNR of the frame MSE.
  err = (x.astype(np.float64) - y) ** 2
  ref_per_channel = (10 * np.log10(1.0 / err.mean(axis=(-3, -2)))).mean(-1)
  ref_frame = 10 * np.log10(1.0 / err.mean(axis=(-3, -2, -1)))
  np.testing.assert_allclose(np.asarray(vm.psnr(x, y)), ref_per_channel, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(vm.psnr(x, y, per_channel=False)), ref_frame, rtol=1e-5)
  # Channels with MSE 0.01 and 0.0001: mean of 20 dB and 40 dB.
  z = base[..., :2].copy()
  z[..., 0] += 0.1
  z[..., 1] += 0.01
  np.testing.assert_allclose(np.asarray(vm.psnr(base[..., :2], z)), 30.0, rtol=1e-4)


def test_best_of_n_selection():
  rng = np.random.default_rng(2)
  scores = rng.normal(size=(5, 2, 4)).astype(np.float32)  # [N, B, T]
  np.testing.assert_allclose(np.asarray(vm.best_of_n(scores)), scores.max(0))
  per_seq = np.asarray(vm.best_of_n(scores, per_frame=False))
  best = scores.mean(-1).argmax(0)  # [B]
  np.testing.assert_allclose(per_seq, np.stack([scores[best[b], b] for b in range(2)]))
  # Sample axis elsewhere ([B, N, T]) and NaN scores never win.
  swapped = np.swapaxes(scores, 0, 1).copy()
  swapped[0, 0, :] = np.nan
  ref = np.swapaxes(scores, 0, 1)[:, 1:].max(1)
  ref[1] = scores[:, 1].max(0)
  np.testing.assert_allclose(np.asarray(vm.best_of_n(swapped, axis=1))[0], ref[0])
  with pytest.raises(ValueError, match="frame"):
    vm.best_of_n(scores, axis=-1)


def test_best_of_n_metrics_and_running_best(clips):
  x, y = clips
  rng = np.random.default_rng(3)
  samples = np.stack([np.clip(x + s * rng.normal(size=x.shape), 0, 1)
                      for s in (0.3, 0.02, 0.1)]).astype(np.float32)  # [N=3, B, T, H, W, C]
  best = vm.best_of_n_metrics(x, samples)
  assert best["psnr"].shape == best["ssim"].shape == (2, 3)
  per_sample = vm.frame_metrics(x, samples)
  assert per_sample["ssim"].shape == (3, 2, 3)
  np.testing.assert_allclose(np.asarray(best["ssim"]), np.asarray(per_sample["ssim"]).max(0))
  # The least noisy sample wins everywhere here.
  np.testing.assert_allclose(np.asarray(best["psnr"]), np.asarray(vm.psnr(x, samples[1])),
                             rtol=1e-6)
  by_sequence = vm.best_of_n_metrics(x, samples, per_frame=False)
  chosen = np.asarray(per_sample["ssim"]).mean(-1).argmax(0)  # [B]
  for k in ("psnr", "ssim"):
    np.testing.assert_allclose(np.asarray(by_sequence[k]),
                               np.asarray(per_sample[k])[chosen, np.arange(2)], rtol=1e-6)
  running = None
  for s in samples:
    running = vm.update_best(running, x, s)
  for k in ("psnr", "ssim"):
    np.testing.assert_allclose(np.asarray(running[f"{k}_max"]), np.asarray(best[k]),
                               rtol=1e-6)
    np.testing.assert_allclose(np.asarray(running[k]), np.asarray(by_sequence[k]),
                               rtol=1e-6)
  with pytest.raises(ValueError, match="samples"):
    vm.best_of_n_metrics(x, samples[0])
