"""Continuous decoder likelihoods of sigma_vae_jax.losses vs float64 references.

References are numpy / scipy in float64, never values produced by the code
under test.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.special
import scipy.stats

from sigma_vae_jax import losses

F32_TINY = float(np.finfo(np.float32).tiny)

# Compiling the whole function once is much cheaper than eager op-by-op
# dispatch for functions with many primitives.
_student_t = jax.jit(losses.student_t_nll)


def _f32(*arrays):
  return tuple(np.asarray(a, np.float32) for a in arrays)


def _f64(*arrays):
  return tuple(np.asarray(a, np.float64) for a in arrays)


def _images(rng, shape):
  """8-bit images on the grid k/255 (float32), including both edge levels."""
  k = rng.integers(0, 256, size=shape)
  flat = k.reshape(-1)
  flat[:2] = (0, 255)
  return (k / 255.0).astype(np.float32)


# ---------------------------------------------------------------------------
# gaussian_nll
# ---------------------------------------------------------------------------


def test_gaussian_nll_matches_scipy_random_and_broadcasting():
  rng = np.random.default_rng(0)
  x = _images(rng, (2, 4, 4, 3))
  mean = rng.uniform(-0.2, 1.2, x.shape).astype(np.float32)
  cases = {
      "elementwise": rng.uniform(-5, 1, x.shape),
      "scalar": np.float32(-2.3),
      "per_channel": rng.uniform(-4, 0, (3,)),
      "per_image": rng.uniform(-4, 0, (2, 1, 1, 1)),
  }
  for name, ls in cases.items():
    (ls,) = _f32(ls)
    got = np.asarray(losses.gaussian_nll(x, mean, ls))
    assert got.shape == x.shape, name
    assert got.dtype == np.float32, name
    xd, md, lsd = _f64(x, mean, ls)
    ref = -scipy.stats.norm.logpdf(xd, md, np.exp(lsd))
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=2e-5, err_msg=name)


def test_gaussian_nll_tails_float32_vs_float64():
  x = np.array([0.0, 1.0, 0.5, 0.0, 1.0, 0.25, 0.7, 0.7], np.float32)
  mean = np.array([1.0, 0.0, 30.0, -50.0, 0.5, 0.25, 0.7, 0.1], np.float32)
  ls = np.array([-12.0, -30.0, -3.0, 0.0, 25.0, -40.0, 40.0, -20.0],
                np.float32)
  got = np.asarray(losses.gaussian_nll(x, mean, ls), np.float64)
  xd, md, lsd = _f64(x, mean, ls)
  # log pdf in closed form (scipy's logpdf divides by sigma, fine in f64).
  ref = 0.5 * ((xd - md) / np.exp(lsd))**2 + lsd + 0.5 * math.log(2 * math.pi)
  assert np.all(np.isfinite(got))
  # Within 1e-3 nats where float32 resolves it, else a few float32 ulps.
  np.testing.assert_array_less(np.abs(got - ref), 1e-3 + 1e-6 * np.abs(ref))


def test_gaussian_nll_gradients_finite_at_edges():
  x = jnp.array([0.0, 1.0, 0.0, 1.0, 0.5], jnp.float32)
  mean = jnp.array([0.0, 1.0, 1.0, 0.0, 0.5], jnp.float32)
  ls = jnp.array([-6.0, -6.0, 3.0, -20.0, -40.0], jnp.float32)
  grads = jax.jit(jax.grad(lambda *a: losses.gaussian_nll(*a).sum(),
                           argnums=(0, 1, 2)))(x, mean, ls)
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g)))
  # d/dmean = -(x - mean) / sigma^2, d/dlog_sigma = 1 - z^2.
  xd, md, lsd = _f64(x, mean, ls)
  np.testing.assert_allclose(grads[1], -(xd - md) * np.exp(-2 * lsd),
                             rtol=1e-5)
  np.testing.assert_allclose(grads[2], 1 - ((xd - md) * np.exp(-lsd))**2,
                             rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# optimal_log_sigma
# ---------------------------------------------------------------------------


AXES = [None, (1, 2, 3), 0, (0, 3)]


def _groups(shape, axis):
  """Index arrays of the elements sharing one sigma (reference grouping)."""
  ndim = len(shape)
  if axis is None:
    axis = tuple(range(ndim))
  elif isinstance(axis, int):
    axis = (axis,)
  kept = [d for d in range(ndim) if d not in axis]
  idx = np.indices(shape).reshape(ndim, -1)
  keys = [tuple(idx[d, i] for d in kept) for i in range(idx.shape[1])]
  groups = {}
  for flat, key in enumerate(keys):
    groups.setdefault(key, []).append(flat)
  return [np.array(v) for v in groups.values()]


@pytest.mark.parametrize("axis", AXES, ids=str)
def test_optimal_log_sigma_minimises_gaussian_nll(axis):
  rng = np.random.default_rng(1)
  shape = (3, 4, 4, 2)
  x = _images(rng, shape)
  mean = np.clip(x + rng.normal(0, 0.1, shape) * rng.uniform(0.2, 2, shape),
                 0, 1).astype(np.float32)
  ls = np.asarray(losses.optimal_log_sigma(x, mean, axis=axis,
                                               log_sigma_min=None))
  expected_shape = tuple(
      1 if (axis is None or d in ((axis,) if isinstance(axis, int) else axis))
      else n for d, n in enumerate(shape))
  assert ls.shape == expected_shape
  ls_full = np.broadcast_to(ls, shape).reshape(-1)
  sq = ((x.astype(np.float64) - mean.astype(np.float64))**2).reshape(-1)
  for g in _groups(shape, axis):
    # Independent reference: numerically minimise the float64 summed NLL.
    def total_nll(log_sigma, g=g):
      return np.sum(0.5 * sq[g] * np.exp(-2 * log_sigma) + log_sigma)
    res = scipy.optimize.minimize_scalar(total_nll, bounds=(-20, 5),
                                         method="bounded",
                                         options={"xatol": 1e-10})
    assert np.all(np.abs(ls_full[g] - res.x) < 1e-5)
    # A fine grid never beats it.
    grid = res.x + np.linspace(-0.05, 0.05, 201)
    best = min(total_nll(v) for v in grid)
    assert total_nll(float(ls_full[g][0])) <= best + 1e-6 * abs(best)
  # Stationarity: d/dlog_sigma of the summed (float32) NLL is ~0 per group.
  grad = jax.grad(lambda l: losses.gaussian_nll(x, mean, l).sum())(
      jnp.asarray(ls))
  group_size = x.size / ls.size
  np.testing.assert_allclose(np.asarray(grad), 0.0, atol=2e-5 * group_size)


def test_optimal_log_sigma_closed_form_and_broadcast_mean():
  rng = np.random.default_rng(2)
  x = _images(rng, (2, 3, 3, 3))
  mean = rng.uniform(0, 1, (3,)).astype(np.float32)  # per-channel mean
  got = np.asarray(losses.optimal_log_sigma(x, mean, axis=(0, 1, 2),
                                               log_sigma_min=None))
  ref = 0.5 * np.log(np.mean((x.astype(np.float64) - mean)**2, axis=(0, 1, 2),
                             keepdims=True))
  assert got.shape == (1, 1, 1, 3)
  np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_optimal_log_sigma_zero_error_tiny_floor_value_and_gradients():
  x = jnp.asarray(np.linspace(0, 1, 12, dtype=np.float32).reshape(2, 6))
  floor = 0.5 * math.log(F32_TINY)  # documented: variance floored at tiny
  ls = losses.optimal_log_sigma(x, x, log_sigma_min=None)
  assert np.isfinite(ls).all()
  np.testing.assert_allclose(np.asarray(ls), floor, rtol=1e-6)
  # Gradients w.r.t. data and mean are finite (and zero) at zero error.
  grads = jax.jit(jax.grad(lambda a, b: losses.optimal_log_sigma(a, b, log_sigma_min=None).sum(),
                           argnums=(0, 1)))(x, x)
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_array_equal(np.asarray(g), 0.0)

  # The full optimal sigma-VAE reconstruction term is finite, with finite
  # gradients, when one image is reconstructed perfectly.
  mean = x.at[1].add(0.05)
  def rec(m):
    ls = losses.optimal_log_sigma(x, m, axis=1, log_sigma_min=None)
    return losses.gaussian_nll(x, m, ls).sum()
  val, g = jax.jit(jax.value_and_grad(rec))(mean)
  assert np.isfinite(val) and np.all(np.isfinite(np.asarray(g)))
  per_image = np.asarray(losses.optimal_log_sigma(x, mean, axis=1, log_sigma_min=None))[:, 0]
  np.testing.assert_allclose(per_image[0], floor, rtol=1e-6)
  np.testing.assert_allclose(per_image[1], math.log(0.05), rtol=1e-5)


def test_optimal_log_sigma_exact_above_floor():
  # A tiny but representable error is not affected by the floor.
  x = np.zeros((4,), np.float32)
  mean = np.full((4,), 1e-12, np.float32)
  got = float(losses.optimal_log_sigma(x, mean, log_sigma_min=None)[0])
  np.testing.assert_allclose(got, math.log(float(np.float32(1e-12))),
                             rtol=1e-6)


# ---------------------------------------------------------------------------
# softclip
# ---------------------------------------------------------------------------


def _softplus64(v):
  return np.logaddexp(0.0, v)


def test_softclip_values_and_order():
  v = np.linspace(-30, 30, 241).astype(np.float32)
  got = np.asarray(losses.softclip(v, low=-6.0, high=2.0))
  vd = v.astype(np.float64)
  hi = 2.0 - _softplus64(2.0 - vd)
  ref = -6.0 + _softplus64(hi + 6.0)
  np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
  # Order matters when the bounds are close: high first, then low.
  got_close = np.asarray(losses.softclip(v, low=0.0, high=0.5))
  ref_close = _softplus64(0.5 - _softplus64(0.5 - vd))
  np.testing.assert_allclose(got_close, ref_close, rtol=1e-6, atol=1e-6)
  wrong_order = 0.5 - _softplus64(0.5 - _softplus64(vd))
  assert np.abs(ref_close - wrong_order).max() > 0.1
  # One-sided and identity.
  np.testing.assert_allclose(np.asarray(losses.softclip(v, low=-6.0)),
                             -6.0 + _softplus64(vd + 6.0), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(losses.softclip(v, high=1.0)),
                             1.0 - _softplus64(1.0 - vd), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(losses.softclip(v)), v)


def test_softclip_gradients_finite_at_and_beyond_bounds():
  v = jnp.array([-1e4, -100.0, -6.0, 2.0, 100.0, 1e4, -1e30, 1e30],
                jnp.float32)
  g = jax.vmap(jax.grad(lambda t: losses.softclip(t, low=-6.0, high=2.0)))(v)
  g = np.asarray(g)
  assert np.all(np.isfinite(g))
  assert np.all((g >= 0) & (g <= 1))
  out = np.asarray(losses.softclip(v, low=-6.0, high=2.0))
  # Range: (low, high + softplus(low - high)) since low is applied last.
  assert np.all(np.isfinite(out))
  assert np.all(out >= -6.0)
  assert np.all(out <= 2.0 + _softplus64(-8.0) + 1e-6)


# ---------------------------------------------------------------------------
# student_t_nll
# ---------------------------------------------------------------------------


def test_student_t_nll_matches_scipy():
  rng = np.random.default_rng(3)
  n = 400
  x = _images(rng, (n,))
  loc = rng.uniform(-0.5, 1.5, n).astype(np.float32)
  log_scale = rng.uniform(-6, 2, n).astype(np.float32)
  df = np.exp(rng.uniform(math.log(0.5), math.log(1e7), n)).astype(np.float32)
  got = np.asarray(_student_t(x, loc, log_scale, df), np.float64)
  xd, ld, lsd, dfd = _f64(x, loc, log_scale, df)
  ref = -scipy.stats.t.logpdf(xd, dfd, ld, np.exp(lsd))
  np.testing.assert_allclose(got, ref, rtol=2e-6, atol=2e-5)


def test_student_t_nll_tails_and_broadcasting():
  x = np.array([[0.0, 1.0, 0.5]], np.float32)                 # [1, 3]
  loc = np.array([[0.5], [30.0], [-1e4], [0.5]], np.float32)   # [4, 1]
  x = np.broadcast_to(x, (4, 3))
  log_scale = np.float32(-20.0)
  df = np.array([1.0, 3.0, 1e6], np.float32)                   # per column
  got = np.asarray(_student_t(x, loc, log_scale, df), np.float64)
  assert got.shape == (4, 3) and np.all(np.isfinite(got))
  xd, ld, lsd, dfd = _f64(x, loc, log_scale, df)
  ref = -scipy.stats.t.logpdf(xd, dfd, ld, np.exp(lsd))
  np.testing.assert_array_less(np.abs(got - ref), 1e-3 + 1e-6 * np.abs(ref))


def test_student_t_gradients_finite_including_zero_residual():
  x = jnp.array([0.0, 1.0, 0.5, 0.5], jnp.float32)
  loc = jnp.array([0.0, 1.0, 0.5, -3.0], jnp.float32)
  grads = jax.jit(jax.grad(
      lambda *a: losses.student_t_nll(*a).sum(), argnums=(0, 1, 2, 3)))(
          x, loc, jnp.float32(-3.0), jnp.array([2.0, 5.0, 1e5, 1.0]))
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g)))
  np.testing.assert_allclose(np.asarray(grads[1])[:3], 0.0, atol=1e-6)


# ---------------------------------------------------------------------------
# bernoulli_nll
# ---------------------------------------------------------------------------


def _bernoulli_ref(x, logits):
  x, logits = _f64(x, logits)
  log_p = scipy.special.log_expit(logits)
  log_1mp = scipy.special.log_expit(-logits)
  return -(x * log_p + (1 - x) * log_1mp)


def test_bernoulli_nll_matches_reference_soft_targets_and_tails():
  rng = np.random.default_rng(4)
  x = rng.uniform(0, 1, (3, 5, 5, 1)).astype(np.float32)
  x.reshape(-1)[:4] = (0.0, 1.0, 0.0, 1.0)
  logits = rng.normal(0, 4, x.shape).astype(np.float32)
  logits.reshape(-1)[:4] = (1e4, -1e4, -200.0, 200.0)
  got = np.asarray(losses.bernoulli_nll(x, logits))
  ref = _bernoulli_ref(x, logits)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, ref, rtol=2e-6, atol=2e-6)
  # Per-channel logits broadcast.
  got_b = np.asarray(losses.bernoulli_nll(x, np.float32([0.3])))
  np.testing.assert_allclose(got_b, _bernoulli_ref(x, 0.3), rtol=2e-6)


def test_bernoulli_nll_gradients_finite():
  x = jnp.array([0.0, 1.0, 0.5, 1.0], jnp.float32)
  logits = jnp.array([1e4, -1e4, 0.0, 80.0], jnp.float32)
  g = jax.jit(jax.grad(lambda a, b: losses.bernoulli_nll(a, b).sum(),
                       argnums=(0, 1)))(x, logits)
  for gg in g:
    assert np.all(np.isfinite(np.asarray(gg)))
  # d/dlogit = sigmoid(l) - x.
  np.testing.assert_allclose(np.asarray(g[1]),
                             scipy.special.expit(np.float64(logits)) - x,
                             atol=1e-6)
