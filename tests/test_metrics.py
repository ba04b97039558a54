"""Tests for sigma_vae_jax.evaluation.metrics against independent numpy/scipy references."""

import math

import jax
import numpy as np
import pytest
from scipy import special, stats

from sigma_vae_jax.evaluation import metrics


# ----------------------------------------------------------------------------
# IWAE bound.
# ----------------------------------------------------------------------------


def test_iwae_k1_is_elbo_and_jensen():
  rng = np.random.default_rng(2)
  a, b, c = (rng.normal(size=(1, 6)) * 3 for _ in range(3))
  np.testing.assert_allclose(np.asarray(metrics.iwae_bound(a, b, c)), (a + b - c)[0], rtol=1e-6, atol=1e-5)
  # Jensen on a fixed set of weights: log mean exp >= mean log.
  a, b, c = (rng.normal(size=(50, 6)) * 3 for _ in range(3))
  got = np.asarray(metrics.iwae_bound(a, b, c))
  log_w = a + b - c
  assert np.all(got >= log_w.mean(0) - 1e-5)
  np.testing.assert_allclose(got, special.logsumexp(log_w, axis=0) - np.log(50), rtol=1e-5, atol=1e-5)


def test_iwae_on_linear_gaussian_model_approaches_log_px():
  # p(z) = N(0,1), p(x|z) = N(z, s^2) => p(x) = N(0, 1+s^2), p(z|x) = N(x/(1+s^2), s^2/(1+s^2)).
  s = 0.5
  x = np.array([-1.5, 0.0, 0.7, 2.0])
  log_px = stats.norm.logpdf(x, 0, math.sqrt(1 + s * s))
  post_mean, post_std = x / (1 + s * s), math.sqrt(s * s / (1 + s * s))
  q_mean, q_std = 0.8 * post_mean + 0.1, 1.6 * post_std  # Deliberately imperfect encoder.
  # ELBO = log p(x) - KL(q || p(z|x)) in closed form.
  kl = np.log(post_std / q_std) + (q_std ** 2 + (q_mean - post_mean) ** 2) / (2 * post_std ** 2) - 0.5
  elbo = log_px - kl

  rng = np.random.default_rng(3)
  means, ses = {}, {}
  for k, reps in ((1, 20000), (10, 2000), (100, 400), (2000, 50)):
    # [K, reps, B] samples z ~ q(z|x); each of the `reps` columns is one bound.
    z = q_mean + q_std * rng.normal(size=(k, reps, x.size))
    lpxz = stats.norm.logpdf(x, z, s)
    lpz = stats.norm.logpdf(z)
    lqz = stats.norm.logpdf(z, q_mean, q_std)
    flat = lambda t: t.reshape(k, reps * x.size)
    bounds = np.asarray(metrics.iwae_bound(flat(lpxz), flat(lpz), flat(lqz))).reshape(reps, x.size)
    means[k], ses[k] = bounds.mean(0), bounds.std(0) / math.sqrt(reps) + 1e-6
    # Below log p(x) in expectation.
    assert np.all(means[k] - 4 * ses[k] <= log_px)
  np.testing.assert_array_less(np.abs(means[1] - elbo), 4 * ses[1])
  # Non-decreasing in K (the gaps here are many standard errors wide).
  for k0, k1 in ((1, 10), (10, 100), (100, 2000)):
    assert np.all(means[k1] > means[k0] - 3 * np.hypot(ses[k0], ses[k1])), (k0, k1)
  assert np.all(means[10] - means[1] > 5 * np.hypot(ses[1], ses[10]))
  # Large K approaches log p(x).
  np.testing.assert_allclose(means[2000], log_px, atol=0.01)
  assert np.all(log_px - means[1] > 0.1)  # The encoder really is imperfect.


# ----------------------------------------------------------------------------
# Mutual information and marginal KL.
# ----------------------------------------------------------------------------


def _encoder_outputs(seed, n, d, mean_scale=1.0, lv_range=(-3.0, 0.0)):
  rng = np.random.default_rng(seed)
  mean = (rng.normal(size=(n, d)) * mean_scale).astype(np.float32)
  log_var = rng.uniform(*lv_range, size=(n, d)).astype(np.float32)
  z = (mean + np.exp(0.5 * log_var) * rng.normal(size=(n, d))).astype(np.float32)
  return z, mean, log_var


@pytest.mark.parametrize("batch_size", [None, 7, 1000])
def test_log_aggregate_posterior_matches_bruteforce(batch_size):
  z, mean, log_var = _encoder_outputs(4, 301, 5)
  zq = z[:53]
  got = np.asarray(metrics.log_aggregate_posterior(zq, mean, log_var, batch_size=batch_size))
  # Independent float64 reference: scipy logpdf on the full [M, N, D] grid.
  lq = stats.norm.logpdf(zq[:, None, :].astype(np.float64), mean[None], np.exp(0.5 * log_var[None])).sum(-1)
  ref = special.logsumexp(lq, axis=1) - np.log(mean.shape[0])
  assert got.shape == (53,)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)


def test_log_aggregate_posterior_tiny_variances_no_cancellation():
  # Large means and tiny posterior std: an expanded quadratic form would lose precision.
  z, mean, log_var = _encoder_outputs(5, 50, 16, mean_scale=30.0, lv_range=(-14.0, -12.0))
  got = np.asarray(metrics.log_aggregate_posterior(z, mean, log_var))
  lq = stats.norm.logpdf(z[:, None, :].astype(np.float64), mean[None].astype(np.float64),
                         np.exp(0.5 * log_var[None].astype(np.float64))).sum(-1)
  ref = special.logsumexp(lq, axis=1) - np.log(50)
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=0.05)


def test_mi_plus_marginal_kl_equals_average_kl():
  n, d = 3000, 8
  z, mean, log_var = _encoder_outputs(6, n, d)
  out = jax.jit(metrics.mutual_information_and_marginal_kl)(z, mean, log_var)
  out = {k: float(v) for k, v in out.items()}
  # Per-sample terms whose mean is the MC estimate of the average KL.
  per = (stats.norm.logpdf(z, mean, np.exp(0.5 * log_var)) - stats.norm.logpdf(z)).sum(-1)
  se = per.std() / math.sqrt(n)
  ref_kl = np.mean(0.5 * np.sum(mean ** 2 + np.exp(log_var) - 1 - log_var, axis=-1))
  assert out["average_kl"] == pytest.approx(ref_kl, rel=1e-5)
  assert abs(out["mutual_information"] + out["marginal_kl"] - out["average_kl"]) < 4 * se
  assert out["log_n"] == pytest.approx(math.log(n))
  assert 0 < out["mutual_information"] <= math.log(n) + 1e-4
  assert out["marginal_kl"] > 0


def test_mi_on_linear_gaussian_encoder_matches_closed_form():
  # x ~ N(0, I_D), q(z|x) = N(a x, s^2 I) => m(z) = N(0, (a^2+s^2) I),
  # I(x;z) = D/2 log(1 + a^2/s^2), KL(m||p) = D * KL(N(0, a^2+s^2) || N(0,1)).
  n, d, a, s = 4000, 2, 1.0, 1.0
  rng = np.random.default_rng(7)
  mean = (a * rng.normal(size=(n, d))).astype(np.float32)
  log_var = np.full((n, d), 2 * math.log(s), np.float32)
  z = (mean + s * rng.normal(size=(n, d))).astype(np.float32)
  out = metrics.mutual_information_and_marginal_kl(z, mean, log_var)
  v = a * a + s * s
  mi_true = 0.5 * d * math.log(1 + a * a / (s * s))
  mkl_true = d * 0.5 * (v - 1 - math.log(v))
  assert float(out["mutual_information"]) == pytest.approx(mi_true, abs=0.06)
  assert float(out["marginal_kl"]) == pytest.approx(mkl_true, abs=0.06)


def test_mi_zero_for_identical_posteriors_and_marginal_kl_zero_for_prior():
  n, d = 500, 4
  rng = np.random.default_rng(8)
  mean = np.tile(rng.normal(size=(1, d)), (n, 1)).astype(np.float32)
  log_var = np.tile(rng.uniform(-1, 0, size=(1, d)), (n, 1)).astype(np.float32)
  z = (mean + np.exp(0.5 * log_var) * rng.normal(size=(n, d))).astype(np.float32)
  out = metrics.mutual_information_and_marginal_kl(z, mean, log_var)
  assert abs(float(out["mutual_information"])) < 1e-4
  assert float(out["marginal_kl"]) > 0.1  # Not the prior.

  mean0 = np.zeros((n, d), np.float32)
  lv0 = np.zeros((n, d), np.float32)
  z0 = rng.normal(size=(n, d)).astype(np.float32)
  out0 = metrics.mutual_information_and_marginal_kl(z0, mean0, lv0)
  assert abs(float(out0["marginal_kl"])) < 1e-4
  assert abs(float(out0["average_kl"])) < 1e-6


def test_mi_saturates_at_log_n_for_separated_posteriors():
  n, d = 400, 6
  z, mean, log_var = _encoder_outputs(9, n, d, mean_scale=10.0, lv_range=(-12.0, -10.0))
  out = metrics.mutual_information_and_marginal_kl(z, mean, log_var)
  mi = float(out["mutual_information"])
  assert mi <= math.log(n) + 1e-4
  assert mi == pytest.approx(math.log(n), abs=1e-3)


# ----------------------------------------------------------------------------
# Frechet distance.
# ----------------------------------------------------------------------------


def _random_spd(rng, d, scale=1.0):
  a = rng.normal(size=(d, d))
  return scale * (a @ a.T / d + 0.1 * np.eye(d))


def _frechet_reference(mu1, s1, mu2, s2):
  # Symmetric form Tr sqrtm(S1 S2) = Tr sqrt(S1^1/2 S2 S1^1/2), via eigendecompositions.
  w, v = np.linalg.eigh(s1)
  r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  m = r1 @ s2 @ r1
  tr = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)))
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr)


def test_frechet_distance_matches_reference():
  rng = np.random.default_rng(10)
  for d in (1, 5, 32):
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d, 2.0)
    got = metrics.frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(_frechet_reference(mu1, s1, mu2, s2), rel=1e-6, abs=1e-8)


def test_frechet_distance_diagonal_closed_form():
  rng = np.random.default_rng(11)
  a, b = rng.uniform(0.1, 3, size=7), rng.uniform(0.1, 3, size=7)
  mu1, mu2 = rng.normal(size=7), rng.normal(size=7)
  ref = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  assert got == pytest.approx(ref, rel=1e-9)


def test_frechet_self_zero_mean_shift_and_singular():
  rng = np.random.default_rng(12)
  feats = rng.normal(size=(500, 10)) @ rng.normal(size=(10, 10))
  mu, sigma = metrics.feature_statistics(feats)
  np.testing.assert_allclose(mu, feats.mean(0))
  np.testing.assert_allclose(sigma, np.cov(feats.T))
  assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-6
  shift = np.full(10, 0.3)
  assert metrics.frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(0.9, rel=1e-6)
  assert metrics.frechet_distance(mu, sigma, mu + 2 * shift, sigma) > metrics.frechet_distance(
      mu, sigma, mu + shift, sigma)
  # Rank-deficient covariances (fewer samples than features) stay finite.
  f1, f2 = rng.normal(size=(5, 12)), rng.normal(size=(5, 12)) + 1
  m1, c1 = metrics.feature_statistics(f1)
  m2, c2 = metrics.feature_statistics(f2)
  got = metrics.frechet_distance(m1, c1, m2, c2)
  assert np.isfinite(got)
  assert got == pytest.approx(_frechet_reference(m1, c1, m2, c2), rel=1e-3, abs=1e-3)


def _with_exact_moments(rng, n, mean, cov):
  """n samples whose sample mean and (unbiased) covariance are exactly mean and cov."""
  z = rng.normal(size=(n, len(mean)))
  z -= z.mean(0)
  z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # whitened
  return mean + z @ np.linalg.cholesky(cov).T


def test_fid_of_gaussian_features_equals_the_closed_form():
  """Identity features with known moments: commuting covariances Q diag(a) Q^T and
  Q diag(b) Q^T, whose Frechet distance is |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2."""
  rng = np.random.default_rng(15)
  d, n = 6, 50
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))
  a, b = rng.uniform(0.2, 2.0, d), rng.uniform(0.2, 2.0, d)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  f1 = _with_exact_moments(rng, n, mu1, q @ np.diag(a) @ q.T)
  f2 = _with_exact_moments(rng, n + 7, mu2, q @ np.diag(b) @ q.T)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  identity = lambda images: np.asarray(images, np.float64).reshape(len(images), -1)
  # "Images" [N, d, 1, 1]; fid batches them (the last batch padded).
  got = metrics.fid(f1[:, :, None, None], f2[:, :, None, None], identity, batch_size=16)
  assert got == pytest.approx(expected, rel=1e-8)
  # A pure mean shift adds exactly |shift|^2.
  shifted = metrics.fid(f1[:, :, None, None], f1[:, :, None, None] + 0.5, identity)
  assert shifted == pytest.approx(0.25 * d, rel=1e-8)


# ----------------------------------------------------------------------------
# Random-network FID.
# ----------------------------------------------------------------------------


def _blob_images(rng, n, size=16, width=3.0, brightness=1.0):
  yy, xx = np.mgrid[:size, :size]
  cy, cx = rng.uniform(3, size - 3, size=(2, n, 1, 1))
  img = brightness * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width ** 2))
  img = img + 0.05 * rng.normal(size=img.shape)
  return np.clip(img, 0, 1)[..., None].astype(np.float32)


def test_random_features_deterministic_and_shapes():
  rng = np.random.default_rng(13)
  gray = _blob_images(rng, 3)
  f = metrics.random_feature_fn(seed=0, dim=24, resolution=32)
  a = np.asarray(f(gray))
  assert a.shape == (3, 24)
  np.testing.assert_array_equal(a, np.asarray(metrics.random_feature_fn(seed=0, dim=24, resolution=32)(gray)))
  # Grayscale == the same image tiled to RGB.
  np.testing.assert_allclose(np.asarray(f(np.tile(gray, (1, 1, 1, 3)))), a, rtol=1e-6)
  b = np.asarray(metrics.random_features(gray, seed=1, dim=24, resolution=32))
  assert not np.allclose(a, b)
  assert np.all(np.std(a, axis=0) > 0)  # Features actually depend on the image.
  # Batched computation (padded last batch) equals one big batch.
  np.testing.assert_allclose(metrics.compute_features(gray, f, batch_size=2), a, rtol=1e-5, atol=1e-6)


def test_random_feature_fid_separates_distributions():
  rng = np.random.default_rng(14)
  f = metrics.make_feature_fn("random", seed=0, dim=16, resolution=32)
  a1, a2 = _blob_images(rng, 400), _blob_images(rng, 400)
  b = _blob_images(rng, 400, width=1.5, brightness=0.6)
  same = metrics.fid(a1, a1, f, batch_size=200)
  within = metrics.fid(a1, a2, f, batch_size=200)
  between = metrics.fid(a1, b, f, batch_size=200)
  assert abs(same) < 1e-6
  assert between > 5 * within > 0


def test_make_feature_fn_unknown_kind():
  with pytest.raises(ValueError, match="fid_kind"):
    metrics.make_feature_fn("vgg")
