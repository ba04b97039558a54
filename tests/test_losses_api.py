"""The losses as a library: the floor of `optimal_log_sigma`, sharing by name for any
rank, `RunningSigma`, `logistic_log_scale` and `calibrated_gaussian_nelbo`.

Every expectation is computed here with numpy/scipy from the definitions, not from
the code under test.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from sigma_vae_jax import losses


def _data(shape, seed=0, noise=0.1):
  """8-bit images as floats and a decoder mean near them."""
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, shape).astype(np.float32) / 255.0
  mean = np.clip(x + rng.normal(0.0, noise, shape), 0.0, 1.0).astype(np.float32)
  return x, mean


def _softclip_low(v, low):
  """low + softplus(v - low), float64."""
  return low + np.logaddexp(0.0, np.asarray(v, np.float64) - low)


def _ml_log_sigma(x, mean, axes):
  """0.5 log of the float64 MSE over `axes` (keepdims)."""
  sq = (x.astype(np.float64) - mean.astype(np.float64)) ** 2
  return 0.5 * np.log(np.mean(sq, axis=axes, keepdims=True))


# ---------------------------------------------------------------------------
# The floor is the default.
# ---------------------------------------------------------------------------


def test_optimal_log_sigma_is_floored_by_default_at_minus_6():
  x, mean = _data((4, 5, 5, 3))
  got = np.asarray(losses.optimal_log_sigma(x, mean))
  want = _softclip_low(_ml_log_sigma(x, mean, None), -6.0)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  assert losses.DEFAULT_LOG_SIGMA_MIN == -6.0
  # None: the exact maximum-likelihood value; another floor: that one.
  np.testing.assert_allclose(
      np.asarray(losses.optimal_log_sigma(x, mean, log_sigma_min=None)),
      _ml_log_sigma(x, mean, None), rtol=1e-6)
  np.testing.assert_allclose(
      np.asarray(losses.optimal_log_sigma(x, mean, log_sigma_min=-2.0)),
      _softclip_low(_ml_log_sigma(x, mean, None), -2.0), rtol=1e-6)


def test_per_dim_sigma_of_constant_pixels_stays_at_the_floor():
  # A black border (x = mean = 0 in every image): without the floor sigma* of
  # those pixels collapses to sqrt(float32 tiny); with it, it stays near e^-6.
  x, mean = _data((8, 6, 6, 1), seed=3)
  x[:, 0] = 0.0
  mean[:, 0] = 0.0
  floored = np.asarray(losses.optimal_log_sigma(x, mean, axis="per_dim"))
  raw = np.asarray(losses.optimal_log_sigma(x, mean, axis="per_dim", log_sigma_min=None))
  np.testing.assert_allclose(raw[0, 0], 0.5 * math.log(np.finfo(np.float32).tiny), rtol=1e-6)
  np.testing.assert_allclose(floored[0, 0], -6.0, atol=1e-6)
  np.testing.assert_allclose(floored[0, 1:], _softclip_low(raw[0, 1:], -6.0), rtol=1e-6)
  # So the NLL of those pixels stays bounded: 0 error at sigma = e^-6 is
  # -6 + 0.5 log(2 pi) nats each.
  nll = np.asarray(losses.gaussian_nll(x, mean, floored))[:, 0]
  np.testing.assert_allclose(nll, -6.0 + 0.5 * math.log(2 * math.pi), rtol=1e-5)


# ---------------------------------------------------------------------------
# Sharing by name, any rank.
# ---------------------------------------------------------------------------

# (name, shape, the axes it means for that shape)
SHARINGS = [
    ("shared", (6, 10), (0, 1)),
    ("per_example", (6, 10), (1,)),
    ("per_dim", (6, 10), (0,)),
    ("shared", (3, 4, 4, 2), (0, 1, 2, 3)),
    ("per_example", (3, 4, 4, 2), (1, 2, 3)),
    ("per_dim", (3, 4, 4, 2), (0,)),
    ((0, 3), (3, 4, 4, 2), (0, 3)),
    ((-1,), (3, 4, 4, 2), (3,)),
    ("shared", (2, 3, 4, 4, 1), (0, 1, 2, 3, 4)),
    ("per_example", (2, 3, 4, 4, 1), (1, 2, 3, 4)),
    ("per_dim", (2, 3, 4, 4, 1), (0,)),
    ((0, 2, 3, 4), (2, 3, 4, 4, 1), (0, 2, 3, 4)),  # one sigma per frame
]


@pytest.mark.parametrize("axis,shape,axes", SHARINGS, ids=str)
def test_optimal_log_sigma_sharing_by_name_any_rank(axis, shape, axes):
  x, mean = _data(shape, seed=len(shape))
  got = np.asarray(losses.optimal_log_sigma(x, mean, axis=axis, log_sigma_min=None))
  want = _ml_log_sigma(x, mean, axes)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("axis,ndim", [((1, 2, 3), 2), (4, 4), (-3, 2), ((0, 5), 5),
                                       ("per_pixel", 4), ((0, 0), 4), ((1, -3), 4),
                                       (1.5, 2)])
def test_bad_axis_is_a_one_line_value_error_naming_rank_and_choices(axis, ndim):
  x = np.zeros((2,) * ndim, np.float32)
  with pytest.raises(ValueError) as info:
    losses.optimal_log_sigma(x, x + 0.1, axis=axis)
  message = str(info.value)
  assert "\n" not in message
  assert f"rank {ndim}" in message, message
  for choice in ("'shared'", "'per_example'", "'per_dim'", f"[{-ndim}, {ndim - 1}]"):
    assert choice in message, message


def test_flat_data_per_example_works_under_jit_and_vmap():
  # The case that ended in an IndexError from inside jax: [B, D] data.
  x, mean = _data((5, 784), seed=7)
  want = _softclip_low(_ml_log_sigma(x, mean, (1,)), -6.0)
  got = jax.jit(lambda a, b: losses.optimal_log_sigma(a, b, axis="per_example"))(x, mean)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
  # vmap over examples: each [D] vector is its own "shared" sigma.
  per = jax.vmap(lambda a, b: losses.optimal_log_sigma(a, b))(x, mean)
  np.testing.assert_allclose(np.asarray(per).reshape(-1), want.reshape(-1), rtol=1e-5)


# ---------------------------------------------------------------------------
# RunningSigma.
# ---------------------------------------------------------------------------


def _reference_running_log_sigma(batches, axes, decay, low, batch_mean):
  """The debiased EMA of sigma*^2 over batches, by hand (float64)."""
  ema, weight = 0.0, 0.0
  for x, mean in batches:
    var = np.mean((x.astype(np.float64) - mean) ** 2, axis=axes, keepdims=True)
    if batch_mean:
      var = var.mean(axis=0, keepdims=True)
    ema = decay * ema + (1 - decay) * var
    weight = decay * weight + (1 - decay)
  log_sigma = 0.5 * np.log(ema / weight)
  return log_sigma if low is None else _softclip_low(log_sigma, low)


RUNNING = [
    ("shared", (4, 10), None, ()),
    ("per_dim", (4, 10), (0,), (1, 10)),
    ("per_example", (4, 10), (1,), (1, 1)),
    ("shared", (3, 4, 4, 2), None, ()),
    ("per_dim", (3, 4, 4, 2), (0,), (1, 4, 4, 2)),
    ((0, 3), (3, 4, 4, 2), (0, 3), (1, 4, 4, 1)),
    ((1, 2), (3, 4, 4, 2), (1, 2), (1, 1, 1, 2)),
    ("per_example", (2, 3, 4, 4, 1), (1, 2, 3, 4), (1, 1, 1, 1, 1)),
    ((0, 2, 3, 4), (2, 3, 4, 4, 1), (0, 2, 3, 4), (1, 3, 1, 1, 1)),
]


@pytest.mark.parametrize("axis,shape,axes,state_shape", RUNNING, ids=str)
def test_running_sigma_matches_a_debiased_ema_by_hand(axis, shape, axes, state_shape):
  decay = 0.9
  batches = [_data(shape, seed=s, noise=0.02 + 0.05 * s) for s in range(4)]
  running = losses.RunningSigma(axis=axis, decay=decay)
  state = running.init(shape)
  assert state.variance_ema.shape == state_shape
  assert state.variance_ema.dtype == jnp.float32
  # Before any update: sigma = 1 (log 0), then floored.
  np.testing.assert_allclose(np.asarray(running.log_sigma(state)),
                             _softclip_low(0.0, -6.0), atol=1e-6)
  update = jax.jit(running.update)
  for x, mean in batches:
    state = update(state, x, mean)
  batch_mean = axes is not None and 0 not in axes
  want = _reference_running_log_sigma(batches, axes, decay, -6.0, batch_mean)
  got = np.asarray(jax.jit(running.log_sigma)(state))
  np.testing.assert_allclose(got, np.broadcast_to(want, got.shape) if got.shape else
                             want.reshape(()), rtol=1e-5)
  # Unfloored.
  raw = losses.RunningSigma(axis=axis, decay=decay, log_sigma_min=None)
  np.testing.assert_allclose(
      np.asarray(raw.log_sigma(state)),
      _reference_running_log_sigma(batches, axes, decay, None, batch_mean).reshape(
          state_shape), rtol=1e-5)


def test_running_sigma_under_vmap_over_models_and_in_a_scan():
  decay, shape = 0.99, (4, 6, 6, 1)
  running = losses.RunningSigma(axis="per_dim", decay=decay)
  # Three models' states and batches stacked on a leading axis.
  xs, means = zip(*[_data(shape, seed=s, noise=0.05 * (s + 1)) for s in range(3)])
  xs, means = np.stack(xs), np.stack(means)
  states = jax.vmap(lambda _: running.init(shape))(jnp.arange(3))

  def steps(state, x, mean):
    # Five training steps inside lax.scan (the same batch each step).
    def body(s, _):
      return running.update(s, x, mean), None
    return jax.lax.scan(body, state, None, length=5)[0]
  states = jax.jit(jax.vmap(steps))(states, xs, means)
  got = np.asarray(jax.vmap(running.log_sigma)(states))
  for m in range(3):
    want = _reference_running_log_sigma([(xs[m], means[m])] * 5, (0,), decay, -6.0, False)
    np.testing.assert_allclose(got[m], want, rtol=1e-5)


def test_running_sigma_update_from_variance_and_errors():
  running = losses.RunningSigma(decay=0.5, log_sigma_min=None)
  state = running.init()
  state = running.update_from_variance(state, jnp.full((1, 1, 1, 1), 0.04))  # keepdims
  state = running.update_from_variance(state, 0.01)
  # ema = 0.5 * (0.5 * 0.04) + 0.5 * 0.01 = 0.015; w = 0.75.
  np.testing.assert_allclose(float(running.log_sigma(state)), 0.5 * math.log(0.015 / 0.75),
                             rtol=1e-6)
  # No gradient into the state.
  g = jax.grad(lambda v: running.update_from_variance(running.init(), v).variance_ema)(0.3)
  assert float(g) == 0.0
  with pytest.raises(ValueError, match="needs x_shape"):
    losses.RunningSigma(axis="per_dim").init()
  with pytest.raises(ValueError, match="rank 2"):
    losses.RunningSigma(axis=(1, 2, 3)).init((8, 784))
  per_dim = losses.RunningSigma(axis="per_dim")
  with pytest.raises(ValueError, match="does not fit"):
    per_dim.update_from_variance(per_dim.init((2, 3)), jnp.ones((1, 4)))


# ---------------------------------------------------------------------------
# The logistic scale of a Gaussian's sigma.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.003, 0.05, 0.2, 1.0])
def test_logistic_log_scale_matches_the_standard_deviation(sigma):
  log_scale = float(losses.logistic_log_scale(math.log(sigma)))
  # scipy's logistic with that scale has standard deviation sigma.
  np.testing.assert_allclose(scipy.stats.logistic(scale=math.exp(log_scale)).std(), sigma,
                             rtol=1e-6)


def test_discretized_logistic_from_sigma_matches_bin_masses_by_hand():
  x, mean = _data((2, 3, 3, 1), seed=11, noise=0.05)
  sigma = 0.05
  got = np.asarray(losses.discretized_logistic_nll(
      x=x, mean=mean, log_scale=losses.logistic_log_scale(math.log(sigma))))
  dist = scipy.stats.logistic(loc=mean.astype(np.float64), scale=sigma * math.sqrt(3) / math.pi)
  level = np.round(x.astype(np.float64) * 255)
  upper = np.where(level == 255, 1.0, dist.cdf((level + 0.5) / 255))
  lower = np.where(level == 0, 0.0, dist.cdf((level - 0.5) / 255))
  np.testing.assert_allclose(got, -np.log(upper - lower), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# Calibrated evaluation of any decoder's mean.
# ---------------------------------------------------------------------------


def _discretized_gaussian_nll_by_hand(x, mean, sigma):
  dist = scipy.stats.norm(loc=mean.astype(np.float64), scale=sigma)
  level = np.round(x.astype(np.float64) * 255)
  upper = np.where(level == 255, 1.0, dist.cdf((level + 0.5) / 255))
  lower = np.where(level == 0, 0.0, dist.cdf((level - 0.5) / 255))
  return -np.log(upper - lower)


def test_calibrated_gaussian_nelbo_fits_sigma_on_the_data_given():
  shape = (6, 4, 4, 3)
  x, _ = _data(shape, seed=5)
  rng = np.random.default_rng(5)
  logits = rng.normal(0.0, 2.0, shape).astype(np.float32)   # e.g. a Bernoulli decoder
  mean = (1 / (1 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
  kl = rng.uniform(0.0, 3.0, (6, 5)).astype(np.float32)      # elementwise [B, Z]
  result = jax.jit(losses.calibrated_gaussian_nelbo)(x, jax.nn.sigmoid(logits), kl)
  d = x[0].size
  mse = np.mean((x.astype(np.float64) - mean) ** 2)
  np.testing.assert_allclose(float(result.log_sigma), 0.5 * math.log(mse), rtol=1e-5)
  # The batch mean of the density bound is D/2 (1 + log(2 pi mse)) + mean KL.
  np.testing.assert_allclose(float(result.nelbo.mean()),
                             0.5 * d * (1 + math.log(2 * math.pi * mse)) + kl.sum(1).mean(),
                             rtol=1e-5)
  want_disc = (_discretized_gaussian_nll_by_hand(x, mean, math.sqrt(mse)).reshape(6, -1).sum(1)
               + kl.sum(1))
  assert result.nelbo_discrete.shape == (6,)
  np.testing.assert_allclose(np.asarray(result.nelbo_discrete), want_disc, rtol=1e-5)


def test_calibrated_gaussian_nelbo_with_a_sigma_fitted_elsewhere():
  x, mean = _data((4, 20), seed=9, noise=0.08)
  kl = np.array([1.0, 2.0, 3.0, 4.0], np.float32)                 # [B]
  log_sigma = math.log(0.07)
  result = losses.calibrated_gaussian_nelbo(x, mean, kl, log_sigma=log_sigma)
  z = (x.astype(np.float64) - mean) / 0.07
  want = np.sum(0.5 * z ** 2 + log_sigma + 0.5 * math.log(2 * math.pi), axis=1) + kl
  np.testing.assert_allclose(np.asarray(result.nelbo), want, rtol=1e-5)
  want_disc = _discretized_gaussian_nll_by_hand(x, mean, 0.07).sum(1) + kl
  np.testing.assert_allclose(np.asarray(result.nelbo_discrete), want_disc, rtol=1e-5)
  with pytest.raises(ValueError, match="one value"):
    losses.calibrated_gaussian_nelbo(x, mean, kl, log_sigma=np.zeros((1, 20)))


def test_public_functions_are_listed_and_documented():
  for name in losses.__all__:
    obj = getattr(losses, name)
    if callable(obj):
      assert obj.__doc__ and obj.__doc__.strip(), name
