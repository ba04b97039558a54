"""Calibration of the decoders' scales (issue 12): the discretized logistic's closed-form
scale, the soft lower bound on every closed-form / learned sigma, and the evaluation of
each Gaussian model at its own maximum-likelihood sigma ("calibrated after training")."""

import math

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np
import optax
import pytest
from scipy import optimize
from scipy import special

from configs import default as default_config
from sigma_vae_jax import configuration
from sigma_vae_jax import likelihoods
from sigma_vae_jax.evaluation import evaluate
from sigma_vae_jax.training import trainer as trainer_lib

LOW = -6.0


def _decoder(name, **overrides):
  config = default_config.get_config().decoder
  config.name = name
  for key, value in overrides.items():
    config[key] = value
  return likelihoods.get_likelihood(config)


# ----------------------------------------------------------------------------------
# 1. The discretized logistic's closed-form scale.
# ----------------------------------------------------------------------------------


def _discrete_logistic_nll_float64(x, mean, scale):
  """Independent float64 reference: -sum log(CDF(b) - CDF(a)) over 256 open-ended bins."""
  k = np.round(x * 255)
  a = np.where(k <= 0, -np.inf, (k - 0.5) / 255)
  b = np.where(k >= 255, np.inf, (k + 0.5) / 255)
  p = special.expit((b - mean) / scale) - special.expit((a - mean) / scale)
  return -np.sum(np.log(p))


def _logistic_residual_data(scale, shape=(32, 8, 8, 3), seed=0):
  rng = np.random.RandomState(seed)
  mean = rng.uniform(0.3, 0.7, shape)
  x = np.round(np.clip(mean + rng.logistic(0.0, scale, shape), 0, 1) * 255) / 255
  out = special.logit(mean)  # the decoder mean is sigmoid(out)
  return x, mean, out


@pytest.mark.parametrize("true_scale", [0.01, 0.04])
def test_discretized_logistic_closed_form_scale_is_the_nll_argmin(true_scale):
  # The bound is switched off here: it is tested on its own below.
  decoder = _decoder("discretized_logistic", scale="optimal", log_sigma_min=None)
  x, mean, out = _logistic_residual_data(true_scale)
  state = decoder.init_state()
  result = decoder.nll(jnp.asarray(x, jnp.float32), jnp.asarray(out, jnp.float32), {},
                       state, train=True)
  closed_form = float(np.exp(np.asarray(result.log_sigma)).squeeze())
  best = optimize.minimize_scalar(
      lambda log_s: _discrete_logistic_nll_float64(x, mean, math.exp(log_s)),
      bounds=(math.log(1e-3), math.log(1.0)), method="bounded",
      options={"xatol": 1e-6}).x
  assert closed_form == pytest.approx(math.exp(best), rel=0.03)
  assert closed_form == pytest.approx(true_scale, rel=0.05)
  # The running average at evaluation uses the same conversion: after one update it
  # is the batch estimate.
  state = decoder.update_state(state, result)
  evaluated = decoder.eval_nll(jnp.asarray(x, jnp.float32), jnp.asarray(out, jnp.float32),
                               {}, state)
  np.testing.assert_allclose(np.exp(np.asarray(evaluated.log_sigma)), closed_form,
                             rtol=1e-5)
  np.testing.assert_allclose(np.sum(np.asarray(evaluated.nll, np.float64)),
                             _discrete_logistic_nll_float64(x, mean, closed_form),
                             rtol=1e-4)


def test_discretized_logistic_samples_have_the_logistic_spread_of_its_scale():
  decoder = _decoder("discretized_logistic", scale="learned", log_sigma_min=None)
  scale = 0.05
  params = {"log_sigma": jnp.log(jnp.float32(scale))}
  out = jnp.zeros((16, 32, 32, 1))  # mean 0.5: clipping at 0 / 1 is negligible
  sample = np.asarray(decoder.sample(jax.random.PRNGKey(0), out, params, {}), np.float64)
  assert sample.std() == pytest.approx(scale * math.pi / math.sqrt(3), rel=0.03)


# ----------------------------------------------------------------------------------
# 2. A soft lower bound on every closed-form and learned sigma.
# ----------------------------------------------------------------------------------


BOUNDED = [("optimal_sigma", {}), ("optimal_sigma", {"sigma_axes": (0,)}),
           ("optimal_sigma", {"sigma_axes": (0, 3)}), ("optimal_sigma_per_image", {}),
           ("shared_sigma", {}),
           ("discretized_gaussian", {"scale": "optimal"}),
           ("discretized_gaussian", {"scale": "learned"}),
           ("discretized_logistic", {"scale": "optimal"}),
           ("discretized_logistic", {"scale": "learned"})]


@pytest.mark.parametrize("name,overrides", BOUNDED)
def test_constant_pixels_keep_log_sigma_above_the_bound(name, overrides):
  decoder = _decoder(name, **overrides)
  shape = (4, 4, 4, 3)
  x = jnp.zeros(shape)
  out = jnp.full(shape, -1e3)  # mean exactly 0: zero error, sigma* = 0
  params = decoder.init_params()
  if "log_sigma" in params:
    params = {"log_sigma": jnp.float32(-50.0)}  # a learned sigma that ran away
  state = decoder.init_state(shape[1:])
  result = decoder.nll(x, out, params, state, train=True)
  log_sigmas = [result.log_sigma]
  if "variance_ema" in state:
    state = decoder.update_state(state, result)
    log_sigmas.append(decoder.running_log_sigma(state))
  log_sigmas.append(decoder.eval_nll(x, out, params, state).log_sigma)
  for log_sigma in log_sigmas:
    assert float(jnp.min(log_sigma)) >= LOW
    np.testing.assert_allclose(np.asarray(log_sigma), LOW, atol=1e-6)
  assert np.all(np.isfinite(np.asarray(result.nll)))
  # The bound is the config field; None removes it.
  unbounded = _decoder(name, log_sigma_min=None, **overrides)
  assert float(jnp.min(unbounded.nll(x, out, params, unbounded.init_state(shape[1:]),
                                     train=True).log_sigma)) < -40


def test_the_bound_is_soft_and_barely_moves_a_typical_sigma():
  decoder = _decoder("optimal_sigma")
  x = jnp.full((2, 4, 4, 3), 0.5)
  out = jnp.full((2, 4, 4, 3), special.logit(0.5 + 0.15))  # sigma* = 0.15
  log_sigma = float(decoder.nll(x, out, {}, decoder.init_state(), train=True).log_sigma
                    .squeeze())
  assert log_sigma == pytest.approx(LOW + math.log1p(math.exp(math.log(0.15) - LOW)),
                                    rel=1e-5)
  assert abs(log_sigma - math.log(0.15)) < 0.02


@pytest.mark.parametrize("name", ["gaussian", "beta"])
def test_fixed_sigma_decoders_are_not_clipped(name):
  decoder = _decoder(name, **({"beta": 1e-8} if name == "beta" else {}))
  x = jnp.zeros((1, 4, 4, 1))
  out = jnp.zeros((1, 4, 4, 1))
  log_sigma = decoder.eval_nll(x, out, {}, {}).log_sigma
  expected = 0.5 * math.log(1e-8) if name == "beta" else 0.0
  np.testing.assert_allclose(float(log_sigma), expected, rtol=1e-6)


def test_per_subpixel_sigma_on_always_black_pixels_stays_bounded_over_many_steps():
  """sigma_axes=(0,) (Fig. 4) on data whose left half is black in every training image.

  The decoder means are free parameters trained by Adam, so the black pixels' means
  run to 0 and their batch sigma* with them. Without the bound the train loss falls
  without limit and the running sigma reaches ~1e-19: the evaluation NLL of a test
  image with one grey level in that region is then astronomically large.
  """
  decoder = _decoder("optimal_sigma", sigma_axes=(0,), sigma_ema_decay=0.99)
  shape = (4, 4, 1)
  black = np.zeros(shape, bool)
  black[:, :2] = True
  black = jnp.asarray(black)
  tx = optax.adam(0.1)

  def batch(key):
    x = jnp.round(jax.random.uniform(key, (16,) + shape) * 255) / 255
    return jnp.where(black, 0.0, x)

  def loss_fn(out, state, x):
    result = decoder.nll(x, out, {}, state, train=True)
    return jnp.sum(result.nll) / x.shape[0], result

  def step(carry, key):
    out, opt_state, state = carry
    (loss, result), grad = jax.value_and_grad(loss_fn, has_aux=True)(out, state,
                                                                     batch(key))
    updates, opt_state = tx.update(grad, opt_state)
    return (out + updates, opt_state, decoder.update_state(state, result)), loss

  num_steps = 3000
  out = jnp.zeros((1,) + shape)
  carry = (out, tx.init(out), decoder.init_state(shape))
  (out, _, state), losses = jax.jit(lambda c: jax.lax.scan(
      step, c, jax.random.split(jax.random.PRNGKey(0), num_steps)))(carry)
  losses = np.asarray(losses)
  num_dims = math.prod(shape)
  assert np.all(np.isfinite(losses))
  # Bounded: every subpixel's NLL is at least log sigma + log(2 pi)/2 >= -6 + 0.92.
  assert losses.min() >= num_dims * (LOW + 0.5 * math.log(2 * math.pi)) - 1e-3
  running = np.asarray(decoder.running_log_sigma(state))
  assert running.min() >= LOW
  assert float(jnp.max(jax.nn.sigmoid(out)[0][black])) < 0.02  # the means did go black
  # Evaluation on test images with one grey level (1/255) in the black region.
  test = np.array(batch(jax.random.PRNGKey(1)))
  test[:, 0, 0, 0] = 1 / 255
  nll = np.asarray(decoder.eval_nll(jnp.asarray(test), out, {}, state).nll)
  per_image = nll.reshape(len(test), -1).sum(1)
  assert np.all(np.isfinite(per_image))
  # Sane: the grey subpixel costs at most 0.5 ((1/255) / e^-6)^2 + 1 nats over a black
  # one, and the other subpixels are bounded below.
  assert per_image.max() < 20 and per_image.min() > num_dims * (LOW + 0.9)


@pytest.mark.parametrize("value,ok", [(-6.0, True), (None, True), (-80.0, True),
                                      (-100.0, False), (float("nan"), False)])
def test_log_sigma_min_is_validated(value, ok):
  config = default_config.get_config()
  config.decoder.log_sigma_min = value
  check = lambda: configuration.validate_config(config, num_devices=1,
                                                dataset_names=["synthetic_shapes"])
  if ok:
    check()
  else:
    with pytest.raises(configuration.ConfigError, match="decoder.log_sigma_min"):
      check()


# ----------------------------------------------------------------------------------
# 4. Calibrated after training.
# ----------------------------------------------------------------------------------


def _trainer(name, **decoder):
  config = default_config.get_config()
  config.decoder.name = name
  for key, value in decoder.items():
    config.decoder[key] = value
  config.model.latent_dim, config.model.base_channels = 4, 4
  return trainer_lib.Trainer(config, (8, 8, 3), Mesh(np.asarray(jax.devices()[:1]), ("data",)))


def _images(n=40, seed=0):
  rng = np.random.RandomState(seed)
  base = rng.uniform(0, 1, (n, 1, 1, 3))
  noise = rng.normal(0, 0.1, (n, 8, 8, 3))
  return (np.clip(base + noise, 0, 1) * 255).round().astype(np.uint8)


def test_calibrated_evaluation_is_the_beta_decoder_at_sigma_squared_the_test_mse():
  """Independent check through the ordinary evaluation: the same network evaluated
  as a beta decoder (sigma^2 = beta) with beta = the calibrated mse gives the same
  -ELBO and discrete -ELBO; any other constant sigma gives a worse -ELBO."""
  trainer = _trainer("optimal_sigma")
  state = trainer.init_state()
  images = _images()
  calibrated = evaluate.evaluate_calibrated(trainer, state, images, batch_size=16)
  own = evaluate.evaluate_elbo(trainer, state, images, batch_size=16)
  assert calibrated["nelbo_calibrated"] <= own["nelbo"]
  assert calibrated["sigma_calibrated"] == pytest.approx(math.sqrt(calibrated["mse"]))

  def as_beta(beta):
    beta_trainer = _trainer("beta", beta=beta)
    beta_state = beta_trainer.init_state().replace(
        params={"model": state.params["model"], "likelihood": {}}, rng=state.rng)
    return evaluate.evaluate_elbo(beta_trainer, beta_state, images, batch_size=16)

  at_mse = as_beta(calibrated["mse"])
  assert calibrated["nelbo_calibrated"] == pytest.approx(at_mse["nelbo"], rel=1e-5)
  assert calibrated["nelbo_discrete_calibrated"] == pytest.approx(
      at_mse["nelbo_discrete"], rel=1e-5)
  assert calibrated["bpd_calibrated"] == pytest.approx(at_mse["bpd"], rel=1e-5)
  for factor in (0.8, 1.25):
    assert as_beta(factor * calibrated["mse"])["nelbo"] > calibrated["nelbo_calibrated"]


def test_calibrated_evaluation_only_for_continuous_gaussian_decoders():
  images = _images(8)
  for name in ("bernoulli", "discretized_gaussian"):
    trainer = _trainer(name)
    assert evaluate.evaluate_calibrated(trainer, trainer.init_state(), images, 8) is None
  trainer = _trainer("per_pixel_sigma")
  result = evaluate.evaluate_calibrated(trainer, trainer.init_state(), images, 8)
  assert math.isfinite(result["nelbo_calibrated"])
