"""Decoders: each one's mean/sample agree with its own likelihood, the beta-VAE is
evaluated as the Gaussian it is equivalent to, and the sigma running average."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from sigma_vae_jax import likelihoods
from configs import default as default_config

LEVELS = np.arange(256) / 255.0


def _decoder(name, **overrides):
  config = default_config.get_config().decoder
  config.name = name
  if name == "beta":
    config.beta = 0.3
  for key, value in overrides.items():
    config[key] = value
  return likelihoods.get_likelihood(config)


def _outputs(decoder, shape=(2, 4, 4, 3), seed=0, scale=2.0):
  n = decoder.num_outputs(shape[-1])
  return scale * jax.random.normal(jax.random.PRNGKey(seed), shape[:-1] + (n,))


def _level_probabilities(decoder, out, channels, params=None):
  """P(level) for every subpixel by evaluating the decoder's NLL at all 256 levels.

  Returns [256, B, H, W, C] ([256, B, H, W] for the per-pixel mixture, which is
  enumerated for single-channel data only).
  """
  params = decoder.init_params() if params is None else params
  state = decoder.init_state()
  shape = out.shape[:-1] + (channels,)
  def nll_at(level):
    x = jnp.full(shape, level, jnp.float32)
    return decoder.nll(x, out, params, state, train=False).nll
  return np.exp(np.asarray(jax.vmap(nll_at)(jnp.asarray(LEVELS, jnp.float32)),
                           np.float64) * -1)


@pytest.mark.parametrize("name", ["categorical", "bitwise_categorical",
                                  "discretized_logistic", "discretized_gaussian"])
def test_discrete_decoder_mean_is_the_expectation_of_its_distribution(name):
  decoder = _decoder(name, scale="learned")
  out = _outputs(decoder)
  params = {"log_sigma": jnp.log(0.05)} if name.startswith("discretized") else {}
  probs = _level_probabilities(decoder, out, 3, params)
  np.testing.assert_allclose(probs.sum(0), 1.0, rtol=1e-4)
  expected = np.tensordot(LEVELS, probs, axes=(0, 0))
  mean = decoder.mean(out, params, decoder.init_state())
  if name.startswith("discretized"):
    # The decoder mean is the location; the discretized expectation is pulled
    # towards the middle by the clipped edge bins, so compare where it is interior.
    interior = (mean > 0.2) & (mean < 0.8)
    assert interior.sum() > 10
    np.testing.assert_allclose(np.asarray(mean)[interior], expected[interior], atol=2e-3)
  else:
    np.testing.assert_allclose(mean, expected, rtol=1e-4, atol=1e-5)


def test_logistic_mixture_mean_and_normalisation_single_channel():
  decoder = _decoder("logistic_mixture", num_mixtures=3)
  rng = np.random.RandomState(0)
  logits = rng.normal(size=(2, 4, 4, 3))
  raw_means = rng.uniform(-1.5, 1.5, size=(2, 4, 4, 3))  # sigmoid -> (0.18, 0.82)
  raw_log_scales = np.full((2, 4, 4, 3), np.log(0.02))
  out = jnp.asarray(np.concatenate([logits, raw_means, raw_log_scales], -1), jnp.float32)
  probs = _level_probabilities(decoder, out, 1)  # [256, B, H, W]
  np.testing.assert_allclose(probs.sum(0), 1.0, rtol=1e-4)
  expected = np.tensordot(LEVELS, probs, axes=(0, 0))
  mean = decoder.mean(out, decoder.init_params(), decoder.init_state())[..., 0]
  # Narrow interior components: the mixture of locations is the discrete expectation.
  np.testing.assert_allclose(mean, expected, atol=2e-3)


@pytest.mark.parametrize("name", sorted(likelihoods.LIKELIHOODS))
def test_samples_and_means_are_images_in_unit_range(name):
  decoder = _decoder(name)
  out = _outputs(decoder)
  params, state = decoder.init_params(), decoder.init_state()
  mean = decoder.mean(out, params, state)
  sample = decoder.sample(jax.random.PRNGKey(3), out, params, state)
  for image in (mean, sample):
    assert image.shape == (2, 4, 4, 3)
    assert bool(jnp.all((image >= 0) & (image <= 1)))
  if decoder.is_discrete:
    np.testing.assert_allclose(np.asarray(sample) * 255, np.round(np.asarray(sample) * 255),
                               atol=1e-3)


def test_student_t_discrete_nll_is_its_own_distribution_over_the_levels():
  # EvalPasses.eval_sums reports nelbo_discrete / bpd_discrete whenever
  # discrete_nll is not None: for student_t it is the decoder's Student-t
  # (loc = sigmoid, log scale soft-clipped to [log_sigma_min, log_sigma_max],
  # df = student_t_df) integrated over the 256 bins, checked with scipy.
  decoder = _decoder("student_t", student_t_df=3.0, log_sigma_min=-6.0,
                     log_sigma_max=2.0)
  shape = (2, 2, 2, 3)
  out = _outputs(decoder, shape)
  params, state = decoder.init_params(), decoder.init_state()
  discrete = jax.jit(jax.vmap(
      lambda level: decoder.discrete_nll(jnp.full(shape, level), out, params, state)))
  probs = np.exp(-np.asarray(discrete(jnp.asarray(LEVELS, jnp.float32)), np.float64))
  np.testing.assert_allclose(probs.sum(0), 1.0, rtol=1e-5)
  raw = np.asarray(out, np.float64)
  loc = 1.0 / (1.0 + np.exp(-raw[..., :3]))
  log_scale = 2.0 - np.logaddexp(0.0, 2.0 - raw[..., 3:])
  log_scale = -6.0 + np.logaddexp(0.0, log_scale + 6.0)
  edges = np.concatenate([[-np.inf], (np.arange(255) + 0.5) / 255.0, [np.inf]])
  cdf = stats.t.cdf(edges.reshape(-1, 1, 1, 1, 1), 3.0, loc, np.exp(log_scale))
  np.testing.assert_allclose(probs, np.diff(cdf, axis=0), rtol=1e-4, atol=1e-7)


def test_beta_vae_trains_unit_variance_and_evaluates_with_sigma_squared_beta():
  decoder = _decoder("beta")
  assert decoder.kl_weight == pytest.approx(0.3)
  out = _outputs(decoder)
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 4, 4, 3))
  mean = np.asarray(jax.nn.sigmoid(out), np.float64)
  train = decoder.nll(x, out, {}, {}, train=True).nll
  np.testing.assert_allclose(train, -stats.norm.logpdf(x, mean, 1.0), rtol=1e-5)
  evaluated = decoder.eval_nll(x, out, {}, {}).nll
  np.testing.assert_allclose(evaluated, -stats.norm.logpdf(x, mean, np.sqrt(0.3)),
                             rtol=1e-5)


def test_optimal_sigma_uses_batch_sigma_in_training_and_running_average_in_eval():
  # The closed form itself; the soft lower bound is tested in test_calibration.py.
  decoder = _decoder("optimal_sigma", sigma_ema_decay=0.9, log_sigma_min=None)
  out = _outputs(decoder)
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 4, 4, 3))
  mean = np.asarray(jax.nn.sigmoid(out), np.float64)
  mse = np.mean((np.asarray(x, np.float64) - mean) ** 2)
  state = decoder.init_state()
  result = decoder.nll(x, out, {}, state, train=True)
  np.testing.assert_allclose(result.nll, -stats.norm.logpdf(x, mean, np.sqrt(mse)),
                             rtol=1e-4)
  # The debiased running average equals the only estimate after one update...
  state = decoder.update_state(state, result)
  np.testing.assert_allclose(np.exp(2 * decoder.running_log_sigma(state)), mse, rtol=1e-5)
  # ...and is the decay-weighted mean of the estimates after two.
  second = likelihoods.LikelihoodOutput(result.nll, None, jnp.asarray(4 * mse, jnp.float32))
  state = decoder.update_state(state, second)
  expected = (0.9 * 0.1 * mse + 0.1 * 4 * mse) / (1 - 0.81)
  np.testing.assert_allclose(np.exp(2 * decoder.running_log_sigma(state)), expected,
                             rtol=1e-5)
  evaluated = decoder.eval_nll(x, out, {}, state).nll
  np.testing.assert_allclose(evaluated, -stats.norm.logpdf(x, mean, np.sqrt(expected)),
                             rtol=1e-4)


def test_per_image_optimal_sigma_has_one_sigma_per_image():
  decoder = _decoder("optimal_sigma_per_image", log_sigma_min=None)
  out = _outputs(decoder)
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 4, 4, 3))
  log_sigma = decoder.nll(x, out, {}, {}, train=True).log_sigma
  mean = np.asarray(jax.nn.sigmoid(out), np.float64)
  mse = ((np.asarray(x, np.float64) - mean) ** 2).reshape(2, -1).mean(1)
  np.testing.assert_allclose(np.ravel(np.exp(2 * log_sigma)), mse, rtol=1e-5)


def test_per_pixel_sigma_is_soft_clipped():
  decoder = _decoder("per_pixel_sigma", log_sigma_min=-6.0, log_sigma_max=2.0)
  out = jnp.concatenate([jnp.zeros((1, 4, 4, 3)), jnp.full((1, 4, 4, 3), -50.0)], -1)
  log_sigma = decoder.nll(jnp.zeros((1, 4, 4, 3)), out, {}, {}, train=True).log_sigma
  np.testing.assert_allclose(log_sigma, -6.0, atol=1e-4)


def test_unknown_decoder_lists_the_known_ones():
  config = default_config.get_config().decoder
  config.name = "gaussain"
  with pytest.raises(ValueError, match="decoder.name.*optimal_sigma"):
    likelihoods.get_likelihood(config)


@pytest.mark.parametrize("axes,num_params", [(None, 1), ((0,), 4 * 4 * 3), ((0, 3), 16),
                                             ((0, 1, 2), 3)])
def test_partially_shared_optimal_sigma_averages_over_the_given_axes(axes, num_params):
  decoder = _decoder("optimal_sigma", sigma_axes=axes, sigma_ema_decay=0.5,
                     log_sigma_min=None)
  assert decoder.num_variance_parameters((4, 4, 3)) == num_params
  out = _outputs(decoder, shape=(5, 4, 4, 3))
  x = jax.random.uniform(jax.random.PRNGKey(1), (5, 4, 4, 3))
  squared = (np.asarray(x, np.float64) - np.asarray(jax.nn.sigmoid(out), np.float64)) ** 2
  expected = squared.mean(axis=axes, keepdims=True)
  state = decoder.init_state((4, 4, 3))
  result = decoder.nll(x, out, {}, state, train=True)
  np.testing.assert_allclose(np.broadcast_to(np.exp(2 * result.log_sigma), squared.shape),
                             np.broadcast_to(expected, squared.shape), rtol=1e-5)
  state = decoder.update_state(state, result)
  np.testing.assert_allclose(
      np.broadcast_to(np.exp(2 * decoder.running_log_sigma(state)), squared.shape),
      np.broadcast_to(expected, squared.shape), rtol=1e-5)


# ---- the data's rank: clips [B, T, H, W, C] --------------------------------------------


def test_per_image_sigma_on_clips_is_one_sigma_per_clip():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(3, 4, 5, 6, 2)).astype(np.float32)
  out = rng.normal(size=x.shape).astype(np.float32)
  mean = 1 / (1 + np.exp(-out.astype(np.float64)))
  lik = _decoder("optimal_sigma_per_image", log_sigma_min=None)  # the exact closed form
  result = lik.nll(jnp.asarray(x), jnp.asarray(out), {}, lik.init_state(), train=True)
  mse = ((x - mean) ** 2).reshape(3, -1).mean(1)  # over time, pixels and channels
  np.testing.assert_allclose(np.asarray(result.log_sigma).reshape(3),
                             0.5 * np.log(mse), rtol=1e-5)


def test_sigma_axes_per_frame_on_clips_and_the_running_average_shape():
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(3, 4, 5, 6, 2)).astype(np.float32)
  out = rng.normal(size=x.shape).astype(np.float32)
  mean = 1 / (1 + np.exp(-out.astype(np.float64)))
  lik = _decoder("optimal_sigma", sigma_axes=(0, 2, 3, 4), log_sigma_min=None)
  state = lik.init_state((4, 5, 6, 2))
  assert state["variance_ema"].shape == (1, 4, 1, 1, 1)  # one sigma per frame
  result = lik.nll(jnp.asarray(x), jnp.asarray(out), {}, state, train=True)
  per_frame = ((x - mean) ** 2).mean(axis=(0, 2, 3, 4))
  np.testing.assert_allclose(np.asarray(result.log_sigma).reshape(4),
                             0.5 * np.log(per_frame), rtol=1e-5)


def test_sigma_axes_beyond_the_targets_rank_are_refused_naming_the_field():
  from sigma_vae_jax import configuration
  config = default_config.get_config().decoder
  config.sigma_axes = (0, 4)
  with pytest.raises(configuration.ConfigError, match="decoder.sigma_axes"):
    configuration.validate_sigma_axes(config, (8, 8, 3))
  configuration.validate_sigma_axes(config, (2, 8, 8, 3))  # a clip has axis 4


@pytest.mark.parametrize("name", ["beta", "shared_sigma", "optimal_sigma"])
def test_gaussian_samples_have_the_decoder_sigma(name):
  """Samples around mean 0.5 with sigma 0.1 (clipping to [0, 1] is 5 sigma away): the
  sample moments are those of N(0.5, 0.01), with sigma from beta, the learned
  parameter, or the running average (debiased by hand: 0.01 * w / w)."""
  sigma = 0.1
  decoder = _decoder(name, **({"beta": sigma ** 2} if name == "beta" else {}))
  params, state = decoder.init_params(), decoder.init_state()
  if name == "shared_sigma":
    params = {"log_sigma": jnp.asarray(np.log(sigma), jnp.float32)}
  if name == "optimal_sigma":
    weight = 1 - 0.99 ** 3
    state = {"variance_ema": jnp.asarray(sigma ** 2 * weight, jnp.float32),
             "ema_weight": jnp.asarray(weight, jnp.float32)}
  n = 20000
  out = jnp.zeros((n, 1, 1, decoder.num_outputs(1)))
  sample = np.asarray(decoder.sample(jax.random.PRNGKey(4), out, params, state), np.float64)
  if name != "beta":  # learned and closed-form sigmas have the soft floor log_sigma_min
    low = default_config.get_config().decoder.log_sigma_min
    sigma = math.exp(low + np.logaddexp(0.0, math.log(sigma) - low))
  assert abs(sample.mean() - 0.5) < 4 * sigma / np.sqrt(n)
  assert abs(sample.std() / sigma - 1) < 4 * np.sqrt(0.5 / n)


def test_categorical_samples_follow_the_softmax():
  decoder = _decoder("categorical")
  levels, logits_at = np.array([0, 10, 128, 255]), np.array([0.0, 1.0, 2.0, -1.0])
  logits = np.full(256, -30.0)
  logits[levels] = logits_at
  n = 20000
  out = jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (n, 1, 1, 256))
  sample = np.asarray(decoder.sample(jax.random.PRNGKey(5), out, {}, {}))[:, 0, 0, 0]
  np.testing.assert_allclose(sample * 255, np.round(sample * 255), atol=1e-3)
  p = np.exp(logits_at) / np.exp(logits_at).sum()
  freq = np.array([np.mean(np.round(sample * 255) == k) for k in levels])
  assert freq.sum() == 1.0
  np.testing.assert_array_less(np.abs(freq - p), 4 * np.sqrt(p * (1 - p) / n))


@pytest.mark.parametrize("name,log_scale_per_log_sigma", [
    ("optimal_sigma", 0.0),
    ("discretized_gaussian", 0.0),
    # A logistic with scale s has standard deviation s pi / sqrt(3).
    ("discretized_logistic", math.log(math.sqrt(3.0) / math.pi)),
])
def test_decoder_sigma_state_is_the_public_running_sigma(name, log_scale_per_log_sigma):
  from sigma_vae_jax import losses
  decoder = _decoder(name, sigma_ema_decay=0.9)  # log_sigma_min -6 (the default)
  out = _outputs(decoder)
  x = jax.random.uniform(jax.random.PRNGKey(2), (2, 4, 4, 3))
  x = jnp.round(x * 255) / 255
  mean = np.asarray(jax.nn.sigmoid(out), np.float64)
  mse = np.mean((np.asarray(x, np.float64) - mean) ** 2)
  state = decoder.update_state(decoder.init_state(),
                               decoder.nll(x, out, {}, decoder.init_state(), train=True))
  # The trainer's state is a RunningSigmaState as a dict (checkpoints keep the layout).
  public = losses.RunningSigmaState(**state)
  assert set(state) == {"variance_ema", "ema_weight"}
  running = losses.RunningSigma(decay=0.9)
  by_hand = 0.5 * math.log(mse)  # debiased after one update: that batch's sigma*
  np.testing.assert_allclose(float(running.log_sigma(public)),
                             -6.0 + math.log1p(math.exp(by_hand + 6.0)), rtol=1e-5)
  # The decoder floors its own scale parameter: log s = log sigma* + const, then -6.
  scale = by_hand + log_scale_per_log_sigma
  np.testing.assert_allclose(float(decoder.running_log_sigma(state)),
                             -6.0 + math.log1p(math.exp(scale + 6.0)), rtol=1e-5)
