"""Discrete decoder likelihoods of sigma_vae_jax.losses vs float64 references.

The references are written independently of the implementation: scipy.stats
log-CDFs / log-survival functions differenced in float64 (choosing the tail
by the side of the mean), the midpoint rule pdf * width for bins far
narrower than the scale, scipy.special.log_softmax / logsumexp, and
np.unpackbits for the bit decomposition. Where mpmath is installed, the
float64 references themselves are checked against 50-digit arithmetic, and
the discretized Student-t also directly against mpmath's incomplete beta
function where scipy's float64 tails give out.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from sigma_vae_jax import losses
from sigma_vae_jax.losses import _student_t  # pylint: disable=protected-access

# Whole-function jit: one compilation per shape, far cheaper than eager
# op-by-op dispatch of these many-primitive functions.
_dlogistic = jax.jit(losses.discretized_logistic_nll, static_argnames="num_bins")
_dgauss = jax.jit(losses.discretized_gaussian_nll, static_argnames="num_bins")
_mixture = jax.jit(losses.discretized_logistic_mixture_nll,
                   static_argnames="num_bins")
_categorical = jax.jit(losses.categorical_nll)
_bitwise = jax.jit(losses.bitwise_categorical_nll)
_dstudent = jax.jit(losses.discretized_student_t_nll,
                    static_argnames="num_bins")

LEVELS = np.arange(256)


def _enable_x64():
  """Context manager enabling float64 (API moved across JAX versions)."""
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64  # pylint: disable=g-import-not-at-top
  return enable_x64()


GRID = (LEVELS / 255.0).astype(np.float32)  # all 8-bit values, float32


def _tol_ok(got, ref):
  """float32 vs float64: 1e-3 nats absolute, or ~8 float32 ulps for values
  so large that a float32 cannot resolve 1e-3 nats."""
  got = np.asarray(got, np.float64)
  return np.abs(got - ref) <= 1e-3 + 1e-6 * np.abs(ref)


def _assert_close(got, ref, msg=""):
  ok = _tol_ok(got, ref)
  if not ok.all():
    i = np.argmax(~ok.reshape(-1))
    raise AssertionError(
        f"{msg}: {int((~ok).sum())} mismatches; e.g. got "
        f"{np.asarray(got).reshape(-1)[i]!r} vs ref {ref.reshape(-1)[i]!r}")


# ---------------------------------------------------------------------------
# float64 references for discretized distributions.
# ---------------------------------------------------------------------------


def _log1mexp64(d):
  d = np.asarray(d, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(d < math.log(2), np.log(-np.expm1(-d)),
                    np.log1p(-np.exp(-d)))


def _ref_discretized_logprob(dist, k, mean, log_scale, num_bins=256,
                             narrow_width=1e-7):
  """log P(level k) for scipy.stats `dist` (loc=mean, scale=exp(log_scale)),
  bins of width 1/(n-1) centred on k/(n-1), outer bins open; float64. Bins
  narrower than `narrow_width` scales use the midpoint rule."""
  k, mean, log_scale = np.broadcast_arrays(
      np.asarray(k, np.float64), np.asarray(mean, np.float64),
      np.asarray(log_scale, np.float64))
  n1 = num_bins - 1
  scale = np.exp(log_scale)
  # Standardized edges, computed in level units to keep float64 precision.
  a = (k - 0.5 - n1 * mean) / (n1 * scale)
  b = (k + 0.5 - n1 * mean) / (n1 * scale)
  m = (k - n1 * mean) / (n1 * scale)
  width = 1.0 / (n1 * scale)
  lcdf_b, lcdf_a = dist.logcdf(b), dist.logcdf(a)
  lsf_a, lsf_b = dist.logsf(a), dist.logsf(b)
  below = m <= 0  # bin below the mean: lower tail form, else upper tail form
  with np.errstate(invalid="ignore"):
    inner = np.where(below, lcdf_b + _log1mexp64(lcdf_b - lcdf_a),
                     lsf_a + _log1mexp64(lsf_a - lsf_b))
  # Bins far narrower than the scale: midpoint rule, relative error
  # ~ width^2 (1 + m^2) / 24 (negligible below 1e-7).
  narrow = width < narrow_width
  inner = np.where(narrow, dist.logpdf(m) + np.log(width), inner)
  return np.where(k <= 0, lcdf_b, np.where(k >= n1, lsf_a, inner))


def _ref_logistic(k, mean, log_scale, num_bins=256):
  return -_ref_discretized_logprob(scipy.stats.logistic, k, mean, log_scale,
                                   num_bins)


def _ref_gauss(k, mean, log_scale, num_bins=256):
  return -_ref_discretized_logprob(scipy.stats.norm, k, mean, log_scale,
                                   num_bins)


DISCRETIZED = [
    pytest.param(_dlogistic, _ref_logistic, id="logistic"),
    pytest.param(_dgauss, _ref_gauss, id="gaussian"),
]


def test_references_agree_with_mpmath():
  mpmath = pytest.importorskip("mpmath")
  mpmath.mp.dps = 60
  cases = [  # (k, mean, log_scale)
      (0, 0.5, -3.0), (255, 0.5, -3.0), (128, 0.5, -3.0), (77, 0.3, -40.0),
      (200, -100.0, -2.0), (10, 0.9, -6.5), (3, 0.2, 20.0), (250, 0.1, -4.9),
      (100, 0.4, -1.0), (128, 0.5019608, -12.0)]

  def mp_norm_cdf(t):
    return mpmath.ncdf(t)

  def mp_logistic_cdf(t):
    return 1 / (1 + mpmath.exp(-t))

  for cdf, ref_fn in ((mp_norm_cdf, _ref_gauss), (mp_logistic_cdf,
                                                  _ref_logistic)):
    for k, mean, ls in cases:
      mean = float(np.float32(mean))
      ls = float(np.float32(ls))
      s = mpmath.exp(mpmath.mpf(ls)) * 255
      a = (mpmath.mpf(k) - mpmath.mpf("0.5") - 255 * mpmath.mpf(mean)) / s
      b = (mpmath.mpf(k) + mpmath.mpf("0.5") - 255 * mpmath.mpf(mean)) / s
      if k == 0:
        p = cdf(b)
      elif k == 255:
        p = 1 - cdf(a)
      else:
        p = cdf(b) - cdf(a)
      expected = float(-mpmath.log(p))
      got = float(ref_fn(k, mean, ls))
      assert abs(got - expected) <= 1e-9 * max(1.0, abs(expected)), (
          ref_fn.__name__, k, mean, ls, got, expected)


# ---------------------------------------------------------------------------
# Discretized logistic / Gaussian.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fn, ref", DISCRETIZED)
def test_discretized_random_inputs(fn, ref):
  rng = np.random.default_rng(10)
  n = 3000
  k = rng.integers(0, 256, n)
  k[:300], k[300:600] = 0, 255  # edge levels
  x = (k / 255.0).astype(np.float32)
  mean = rng.uniform(-0.3, 1.3, n).astype(np.float32)
  log_scale = rng.uniform(-9.0, 3.0, n).astype(np.float32)
  got = fn(x, mean, log_scale)
  assert got.shape == x.shape and got.dtype == jnp.float32
  _assert_close(got, ref(k, mean, log_scale), fn.__name__)


@pytest.mark.parametrize("fn, ref", DISCRETIZED)
def test_discretized_tails_float32_within_1e3_nats(fn, ref):
  # Every level against a grid of extreme parameters: means far outside
  # [0, 1], tiny scales (bins thousands of sigmas wide, means right next to
  # a bin edge) and huge scales (bins a tiny fraction of a sigma).
  means = np.float32([-100.0, -1.0, 0.0, 0.3, 0.5019608, 0.77, 1.0, 2.0, 1e3])
  log_scales = np.float32([-30.0, -16.0, -9.0, -5.0, -4.2, -3.0, 0.0, 4.0,
                           12.0, 40.0, 80.0])
  mm, ll = np.meshgrid(means, log_scales, indexing="ij")
  params_m, params_l = mm.reshape(-1), ll.reshape(-1)     # [P]
  x = np.broadcast_to(GRID[:, None], (256, params_m.size))
  got = np.asarray(fn(x, params_m, params_l), np.float64)
  refv = ref(LEVELS[:, None], params_m[None], params_l[None])
  representable = np.abs(refv) < 1e36  # float32 overflows beyond ~3e38
  assert np.all(np.isfinite(got[representable]))
  _assert_close(got[representable], refv[representable], "tails")
  # In particular the absolute error is below 1e-3 nats whenever the true
  # value is below 1000 nats.
  moderate = np.abs(refv) < 1000
  assert np.max(np.abs(got - refv)[moderate]) < 1e-3


@pytest.mark.parametrize("fn, ref", DISCRETIZED)
def test_discretized_float64_mode_has_no_approximation_error(fn, ref):
  # Run in float64 so rounding is negligible: what remains is the error of
  # the formulas themselves (the narrow-bin expansion is documented < 1e-6).
  rng = np.random.default_rng(19)
  n = 2000
  k = rng.integers(0, 256, n)
  mean = rng.uniform(-0.5, 1.5, n)
  log_scale = rng.uniform(-12.0, 8.0, n)
  with _enable_x64():
    got = fn(jnp.asarray(k / 255.0, jnp.float64), jnp.asarray(mean),
             jnp.asarray(log_scale))
    assert got.dtype == jnp.float64
    got = np.asarray(got)
  refv = ref(k, mean, log_scale)
  np.testing.assert_allclose(got, refv, rtol=1e-11, atol=1e-6)


@pytest.mark.parametrize("fn, ref", DISCRETIZED)
def test_discretized_narrow_bins_pdf_times_width_limit(fn, ref):
  # sigma >> bin width: log P -> log pdf(centre) + log(width), exactly.
  dist = {"_ref_logistic": scipy.stats.logistic,
          "_ref_gauss": scipy.stats.norm}[ref.__name__]
  k = np.array([1, 50, 128, 200, 254])
  x = (k / 255.0).astype(np.float32)
  for ls in (3.0, 10.0, 30.0, 70.0):
    got = np.asarray(fn(x, np.float32(0.25), np.float32(ls)), np.float64)
    scale = math.exp(ls)
    m = (k / 255.0 - float(np.float32(0.25))) / scale
    limit = -(dist.logpdf(m) + math.log(1 / 255.0) - ls)
    np.testing.assert_allclose(got, limit, rtol=0, atol=2e-5 * abs(limit[0]))


def _every_level(num_bins):
  """x [num_bins, 9]: every level k/(num_bins-1) for each of 9 (mean, log scale)
  pairs, from well inside [0, 1] to far outside, tiny to huge scales."""
  grid = (np.arange(num_bins) / (num_bins - 1)).astype(np.float32)
  means = np.float32([0.5, 0.0, 1.0, -3.0, 4.0, 0.3, 0.5, 0.5, 0.123])
  log_scales = np.float32([-2.0, -5.0, -5.0, 0.0, 1.0, -12.0, -30.0, 25.0,
                           -4.0])
  return np.broadcast_to(grid[:, None], (num_bins, means.size)), means, log_scales


@pytest.mark.parametrize("fn, ref", DISCRETIZED)
@pytest.mark.parametrize("num_bins", [256, 32, 100])
def test_discretized_sums_to_one(fn, ref, num_bins):
  x, means, log_scales = _every_level(num_bins)
  nll = np.asarray(fn(x, means, log_scales, num_bins=num_bins), np.float64)
  total = scipy.special.logsumexp(-nll, axis=0)
  np.testing.assert_allclose(total, 0.0, atol=2e-6)
  # and agree with the reference for this num_bins
  refv = ref(np.arange(num_bins)[:, None], means, log_scales, num_bins)
  _assert_close(nll, refv, f"num_bins={num_bins}")


@pytest.mark.parametrize("fn, ref", DISCRETIZED)
def test_discretized_broadcasting(fn, ref):
  rng = np.random.default_rng(11)
  k = rng.integers(0, 256, (2, 3, 3, 3))
  x = (k / 255.0).astype(np.float32)
  mean = rng.uniform(0, 1, (2, 3, 3, 3)).astype(np.float32)
  per_channel = np.float32([-3.0, -4.0, -5.0])
  got = fn(x, mean, per_channel)
  assert got.shape == x.shape
  _assert_close(got, ref(k, mean, per_channel), "per-channel")
  got = fn(x, np.float32(0.4), np.float32(-3.5))  # scalar params
  assert got.shape == x.shape
  _assert_close(got, ref(k, 0.4, -3.5), "scalar")


@pytest.mark.parametrize("fn, ref", DISCRETIZED)
def test_discretized_off_grid_inputs_round_to_nearest_level(fn, ref):
  x = np.float32([0.1 / 255, 0.49 / 255, 1.4 / 255, 254.6 / 255, 1.0 - 1e-7,
                  -0.001, 1.002])
  k = np.array([0, 0, 1, 255, 255, 0, 255])
  _assert_close(fn(x, np.float32(0.5), np.float32(-2.0)),
                ref(k, 0.5, -2.0), "rounding")


@pytest.mark.parametrize("fn, ref", DISCRETIZED)
def test_discretized_gradients_finite(fn, ref):
  del ref
  x = jnp.asarray(np.float32([0.0, 1.0, 0.0, 1.0, 0.5, 0.3, 0.0, 1.0]))
  mean = jnp.asarray(np.float32([0.0, 1.0, 1.0, 0.0, 0.5, -2.0, 0.3, 0.7]))
  ls = jnp.asarray(np.float32([-6.0, -6.0, -3.0, 2.0, -20.0, 30.0, -3.7,
                               -4.3]))
  grads = jax.jit(jax.grad(lambda m, l: fn(x, m, l).sum(), argnums=(0, 1)))(
      mean, ls)
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g)))


def test_discretized_gaussian_gradient_matches_finite_difference():
  # Gradient w.r.t. the mean vs a float64 central difference of the
  # reference, on both sides of the narrow/wide switch (bin = 0.1 sigma).
  k = np.array([3, 60, 128, 200, 250])
  x = (k / 255.0).astype(np.float32)
  grad_fn = jax.jit(jax.grad(lambda m, l: _dgauss(x, m, l).sum()))
  for ls in (-5.0, math.log(1 / 255 / 0.1) - 0.01,
             math.log(1 / 255 / 0.1) + 0.01, -1.0):
    ls = float(np.float32(ls))
    g = grad_fn(jnp.float32(0.45), jnp.float32(ls))
    h = 1e-6
    fd = (_ref_gauss(k, 0.45 + h, ls).sum() -
          _ref_gauss(k, 0.45 - h, ls).sum()) / (2 * h)
    np.testing.assert_allclose(float(g), fd, rtol=2e-4)


# ---------------------------------------------------------------------------
# Discretized Student-t.
# ---------------------------------------------------------------------------

STUDENT_DFS = [1.0, 3.0, 30.0]


def _student_t_tol_ok(got, ref):
  """float32 vs float64, as measured for df <= 30: 2e-4 nats absolute (the
  float32 betainc error in the open edge bins and bins wider than one scale)
  or 1e-6 relative for very large values (measured max 1e-4 and 1.4e-7)."""
  got = np.asarray(got, np.float64)
  return np.abs(got - ref) <= 2e-4 + 1e-6 * np.abs(ref)


def _ref_student_t(k, mean, log_scale, df, num_bins=256):
  """float64 scipy.stats.t reference. Bins narrower than 1e-4 scales use the
  midpoint rule (relative error < width^2 (df + 3) / 96 < 1e-8 for df <= 30),
  where scipy's t CDF differences are less accurate (~1e-6 for df = 1).
  Checked against mpmath below for df <= 30 only: for larger df scipy's
  far tails lose digits (1.5 nats at df = 100, 1e4 scales out)."""
  return -_ref_discretized_logprob(scipy.stats.t(df), k, mean, log_scale,
                                   num_bins, narrow_width=1e-4)


def _mp_student_t_nll(mpmath, k, mean, log_scale, df, num_bins=256):
  """-log P(level k) from mpmath's regularized incomplete beta function at
  60 digits: P = I_{x_hi}^{x_lo}(df/2, 1/2) / 2 integrated between the two
  edges directly (no difference of CDFs), x = df / (df + t^2)."""
  mpmath.mp.dps = 60
  n1 = num_bins - 1
  df = mpmath.mpf(float(df))
  half_df = df / 2
  s = mpmath.exp(mpmath.mpf(float(log_scale))) * n1
  centre = mpmath.mpf(int(k)) - n1 * mpmath.mpf(float(mean))
  a = (centre - mpmath.mpf("0.5")) / s
  b = (centre + mpmath.mpf("0.5")) / s

  def x_of(t):
    return df / (df + t * t)

  def sf(t):  # P(T > t)
    if t < 0:
      return 1 - sf(-t)
    return mpmath.betainc(half_df, 0.5, 0, x_of(t), regularized=True) / 2

  if k == 0:
    p = sf(-b)
  elif k == n1:
    p = sf(a)
  elif a >= 0:
    p = mpmath.betainc(half_df, 0.5, x_of(b), x_of(a), regularized=True) / 2
  elif b <= 0:
    p = mpmath.betainc(half_df, 0.5, x_of(a), x_of(b), regularized=True) / 2
  else:
    p = 1 - sf(-a) - sf(b)
  return float(-mpmath.log(p))


def test_student_t_reference_agrees_with_mpmath():
  mpmath = pytest.importorskip("mpmath")
  cases = [  # (k, mean, log_scale, df)
      (0, 0.5, -3.0, 1.0), (255, 0.5, -3.0, 3.0), (128, 0.5, -3.0, 30.0),
      (77, 0.3, -20.0, 1.0), (200, -100.0, -2.0, 3.0), (10, 0.9, -6.5, 30.0),
      (3, 0.2, 8.0, 1.0), (250, 0.1, -4.9, 30.0), (100, 0.4, -1.0, 3.0),
      (128, 0.5019608, -12.0, 30.0), (40, -100.0, -30.0, 1.0),
      (78, -100.0, -16.0, 30.0), (0, 1.0, -5.0, 3.0)]
  for k, mean, ls, df in cases:
    mean, ls = float(np.float32(mean)), float(np.float32(ls))
    expected = _mp_student_t_nll(mpmath, k, mean, ls, df)
    got = float(_ref_student_t(k, mean, ls, df))
    assert abs(got - expected) <= 1e-9 * max(1.0, abs(expected)), (
        k, mean, ls, df, got, expected)


@pytest.mark.parametrize("n", [2, 5, 12])
def test_student_t_quadrature_rule_is_gauss_legendre(n):
  nodes, weights = _student_t._gauss_legendre(n)  # pylint: disable=protected-access
  order = np.argsort(nodes)
  ref_nodes, ref_weights = np.polynomial.legendre.leggauss(n)
  np.testing.assert_allclose(nodes[order], ref_nodes, rtol=0, atol=1e-14)
  np.testing.assert_allclose(weights[order], ref_weights, rtol=1e-13)


@pytest.mark.parametrize("df", STUDENT_DFS)
def test_discretized_student_t_grid_float32(df):
  # Every level (the open edge bins 0 and 255 included) against a grid of
  # locations far outside [0, 1], tiny scales (bins thousands of scales wide,
  # far-tail bins), typical ones, and huge ones (bins a tiny fraction of a
  # scale).
  means = np.float32([-100.0, -1.0, 0.0, 0.3, 0.5019608, 0.77, 1.0, 2.0, 1e3])
  log_scales = np.float32([-30.0, -16.0, -9.0, -6.0, -5.0, -4.2, -3.0, -1.0,
                           0.0, 4.0, 12.0, 40.0, 80.0])
  mm, ll = np.meshgrid(means, log_scales, indexing="ij")
  params_m, params_l = mm.reshape(-1), ll.reshape(-1)     # [P]
  x = np.broadcast_to(GRID[:, None], (256, params_m.size))
  got = _dstudent(x, params_m, params_l, np.float32(df))
  assert got.shape == x.shape and got.dtype == jnp.float32
  got = np.asarray(got, np.float64)
  assert np.all(np.isfinite(got)) and np.all(got >= 0.0)
  with np.errstate(divide="ignore", invalid="ignore"):
    refv = _ref_student_t(LEVELS[:, None], params_m[None], params_l[None], df)
  # scipy's float64 tail underflows beyond ~1e-300 (df = 30, tiny scales);
  # those bins are checked against mpmath below.
  known = np.isfinite(refv)
  assert known.mean() > 0.9
  ok = _student_t_tol_ok(got[known], refv[known])
  assert ok.all(), (np.abs(got - refv)[known][~ok].max(), refv[known][~ok][0])
  moderate = known & (refv < 1000)
  assert np.max(np.abs(got - refv)[moderate]) < 2e-4


def test_discretized_student_t_far_tails_float32_vs_mpmath():
  # Bins where float64 scipy underflows or loses digits (df = 100), or that
  # are narrow relative to their distance from the location (the two tail
  # probabilities agree to ~5 digits): exact tail formulas, ~1e-7 relative.
  mpmath = pytest.importorskip("mpmath")
  cases = [  # (k, mean, log_scale, df)
      (0, 0.5, -30.0, 30.0), (255, 0.0, -40.0, 30.0), (128, 0.0, -30.0, 30.0),
      (128, -100.0, -9.0, 30.0), (200, 1e3, -20.0, 3.0), (80, 0.3, -40.0, 1.0),
      (250, 0.3, -80.0, 3.0), (126, -1.0, -9.0, 100.0),
      (100, -100.0, -5.0, 30.0), (3, 1e3, -4.0, 3.0), (200, -100.0, -5.0, 1.0),
      (5, 0.9, -12.0, 100.0)]
  k, mean, ls, df = (np.array(c) for c in zip(*cases))
  got = np.asarray(_dstudent((k / 255.0).astype(np.float32), np.float32(mean),
                             np.float32(ls), np.float32(df)), np.float64)
  expected = np.array([
      _mp_student_t_nll(mpmath, kk, np.float32(m), np.float32(l), d)
      for kk, m, l, d in cases])
  assert np.all(expected > 20)
  np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("df", STUDENT_DFS)
def test_discretized_student_t_random_inputs_float64(df):
  # In float64 only the formulas' own error remains (series truncation, the
  # quadrature, betainc): measured ~1e-10 relative against scipy.
  rng = np.random.default_rng(24)
  n = 2000
  k = rng.integers(0, 256, n)
  k[:200], k[200:400] = 0, 255
  mean = rng.uniform(-0.5, 1.5, n)
  log_scale = rng.uniform(-12.0, 8.0, n)
  with _enable_x64():
    got = _dstudent(jnp.asarray(k / 255.0, jnp.float64), jnp.asarray(mean),
                    jnp.asarray(log_scale), jnp.float64(df))
    assert got.dtype == jnp.float64
    got = np.asarray(got)
  refv = _ref_student_t(k, mean, log_scale, df)
  np.testing.assert_allclose(got, refv, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("num_bins", [256, 32])
def test_discretized_student_t_sums_to_one(num_bins):
  x, means, log_scales = _every_level(num_bins)
  for df in STUDENT_DFS:
    nll = np.asarray(_dstudent(x, means, log_scales, np.float32(df),
                               num_bins=num_bins), np.float64)
    total = scipy.special.logsumexp(-nll, axis=0)
    np.testing.assert_allclose(total, 0.0, atol=2e-6)  # measured 5e-7
    with np.errstate(divide="ignore", invalid="ignore"):
      refv = _ref_student_t(np.arange(num_bins)[:, None], means, log_scales,
                            df, num_bins)
    known = np.isfinite(refv)  # scipy underflows at df = 30, log_scale = -30
    assert _student_t_tol_ok(nll[known], refv[known]).all(), (num_bins, df)


def test_discretized_student_t_large_df_approaches_discretized_gaussian():
  # t_df -> N(0, 1) with log pdf_t - log pdf_N = (t^4 - 2 t^2 - 1) / (4 df)
  # + O(1 / df^2): the gap to the discretized Gaussian shrinks as 1 / df.
  # float64, as float32 betainc loses digits for large df (see docstring).
  x = np.arange(256) / 255.0
  with _enable_x64():
    gauss = np.asarray(_dgauss(jnp.asarray(x), 0.5, -2.0))
    gaps = []
    for df in (1e3, 1e4, 1e5, 1e6):
      nll = np.asarray(_dstudent(jnp.asarray(x), 0.5, -2.0, df))
      gaps.append(np.max(np.abs(nll - gauss)) * df)
  np.testing.assert_allclose(gaps, gaps[0], rtol=0.03)
  assert 10 < gaps[0] < 100  # |t| <= 3.7 scales here: gap ~ 52 / df nats


def test_discretized_student_t_broadcasting_and_rounding():
  rng = np.random.default_rng(25)
  k = rng.integers(0, 256, (2, 3, 3, 3))
  x = (k / 255.0).astype(np.float32)
  mean = rng.uniform(0, 1, (2, 3, 3, 3)).astype(np.float32)
  per_channel = np.float32([-3.0, -4.0, -5.0])
  df = np.float32([1.0, 3.0, 30.0])  # per channel too
  got = _dstudent(x, mean, per_channel, df)
  assert got.shape == x.shape
  assert _student_t_tol_ok(got, _ref_student_t(k, mean, per_channel, df)).all()
  got = _dstudent(x, np.float32(0.4), np.float32(-3.5), np.float32(3.0))
  assert got.shape == x.shape
  assert _student_t_tol_ok(got, _ref_student_t(k, 0.4, -3.5, 3.0)).all()
  # Off-grid values round to the nearest level.
  x = np.float32([0.1 / 255, 0.49 / 255, 1.4 / 255, 254.6 / 255, 1.0 - 1e-7,
                  -0.001, 1.002])
  k = np.array([0, 0, 1, 255, 255, 0, 255])
  assert _student_t_tol_ok(_dstudent(x, np.float32(0.5), np.float32(-2.0),
                                     np.float32(3.0)),
                           _ref_student_t(k, 0.5, -2.0, 3.0)).all()
  with pytest.raises(AssertionError, match="df"):
    losses.discretized_student_t_nll(x, 0.5, -2.0, np.ones(3))


def test_discretized_student_t_gradients():
  # Finite everywhere (open bins, tiny/huge scales, far means), also under
  # vmap, and equal to float64 central differences of the reference.
  x = jnp.float32([0.0, 1.0, 0.0, 1.0, 0.5, 0.3, 0.0, 1.0, 0.5, 0.5, 0.2])
  mean = jnp.float32([0.0, 1.0, 1.0, 0.0, 0.5, -2.0, 0.3, 0.7, 0.5, 0.5, 1e3])
  ls = jnp.float32([-6.0, -6.0, -3.0, 2.0, -20.0, 30.0, -3.7, -4.3, -80.0,
                    80.0, -30.0])
  grad_fn = jax.jit(jax.vmap(jax.grad(losses.discretized_student_t_nll,
                                      argnums=(1, 2)), (0, 0, 0, None)))
  for df in STUDENT_DFS:
    for g in grad_fn(x, mean, ls, jnp.float32(df)):
      assert np.all(np.isfinite(np.asarray(g)))
  mapped = jax.jit(jax.vmap(losses.discretized_student_t_nll, (0, 0, 0, None)))
  np.testing.assert_allclose(mapped(x, mean, ls, jnp.float32(3.0)),
                             _dstudent(x, mean, ls, jnp.float32(3.0)), rtol=1e-6)
  k = np.array([0, 3, 60, 128, 200, 250, 255])
  xk = (k / 255.0).astype(np.float32)
  grad_fn = jax.jit(jax.grad(lambda m, l, d: _dstudent(xk, m, l, d).sum(),
                             argnums=(0, 1)))
  h = 1e-6
  for df in STUDENT_DFS:
    for ls0 in (-5.0, -1.0, 1.0):
      g_mean, g_ls = grad_fn(jnp.float32(0.45), jnp.float32(ls0),
                             jnp.float32(df))
      fd_mean = (_ref_student_t(k, 0.45 + h, ls0, df).sum() -
                 _ref_student_t(k, 0.45 - h, ls0, df).sum()) / (2 * h)
      fd_ls = (_ref_student_t(k, 0.45, ls0 + h, df).sum() -
               _ref_student_t(k, 0.45, ls0 - h, df).sum()) / (2 * h)
      np.testing.assert_allclose(float(g_mean), fd_mean, rtol=2e-4, atol=1e-3)
      np.testing.assert_allclose(float(g_ls), fd_ls, rtol=2e-4, atol=1e-3)


# ---------------------------------------------------------------------------
# Categorical and bitwise categorical.
# ---------------------------------------------------------------------------


def test_categorical_nll_matches_log_softmax():
  rng = np.random.default_rng(12)
  k = rng.integers(0, 256, (2, 3, 3, 3))
  k.reshape(-1)[:2] = (0, 255)
  x = (k / 255.0).astype(np.float32)
  logits = rng.normal(0, 3, (2, 3, 3, 3, 256)).astype(np.float32)
  logits[0, 0, 0, 0, 0] = 1e4  # extreme logits stay finite and exact
  logits[0, 0, 0, 1, :] = -1e4
  got = _categorical(x, logits)
  assert got.shape == x.shape
  logp = scipy.special.log_softmax(logits.astype(np.float64), axis=-1)
  ref = -np.take_along_axis(logp, k[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-6, atol=2e-5)
  # Logits shared by every pixel broadcast.
  shared = logits[0, 0, 0, 2]
  got = _categorical(x, shared)
  ref = -scipy.special.log_softmax(shared.astype(np.float64))[k]
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-6, atol=2e-5)


def test_categorical_sums_to_one():
  rng = np.random.default_rng(13)
  logits = np.concatenate([
      rng.normal(0, 1, (2, 256)), rng.normal(0, 50, (2, 256)),
      np.full((1, 256), -3.0), np.where(np.arange(256) == 7, 100.0, -100.0)[None]
  ]).astype(np.float32)                                  # [6, 256]
  x = np.broadcast_to(GRID[:, None], (256, 6))
  nll = np.asarray(_categorical(x, logits), np.float64)
  np.testing.assert_allclose(scipy.special.logsumexp(-nll, axis=0), 0.0,
                             atol=1e-5)


def _bits_msb_first(k):
  return np.unpackbits(np.asarray(k, np.uint8)[..., None], axis=-1)  # [..., 8]


def test_bitwise_categorical_matches_reference_and_msb_first():
  rng = np.random.default_rng(14)
  k = rng.integers(0, 256, (2, 4, 4, 3))
  k.reshape(-1)[:2] = (0, 255)
  x = (k / 255.0).astype(np.float32)
  logits = rng.normal(0, 3, (2, 4, 4, 3, 8)).astype(np.float32)
  logits[0, 0, 0, 0] = [1e4, -1e4, 200, -200, 0, 1, -1, 30]
  got = np.asarray(_bitwise(x, logits))
  bits = _bits_msb_first(k).astype(np.float64)
  lg = logits.astype(np.float64)
  ref = -np.sum(bits * scipy.special.log_expit(lg) +
                (1 - bits) * scipy.special.log_expit(-lg), axis=-1)
  np.testing.assert_allclose(got, ref, rtol=1e-6, atol=2e-5)
  # Explicit bit order: logits[..., 0] is the MSB (value 128).
  confident = np.float32([20, -20, -20, -20, -20, -20, -20, -20])
  nll = np.asarray(_bitwise(GRID, confident))
  assert int(np.argmin(nll)) == 128


def test_bitwise_categorical_sums_to_one():
  rng = np.random.default_rng(15)
  logits = np.concatenate([rng.normal(0, 1, (2, 8)), rng.normal(0, 30, (2, 8)),
                           np.zeros((1, 8))]).astype(np.float32)
  x = np.broadcast_to(GRID[:, None], (256, 5))
  nll = np.asarray(_bitwise(x, logits), np.float64)
  np.testing.assert_allclose(scipy.special.logsumexp(-nll, axis=0), 0.0,
                             atol=1e-5)
  # All-zero logits: uniform over the 256 levels.
  np.testing.assert_allclose(nll[:, 4], 8 * math.log(2), rtol=1e-6)


def test_categorical_and_bitwise_gradients_finite_at_edges():
  x = jnp.float32([0.0, 1.0, 0.5])
  logits = jnp.zeros((3, 256)).at[0, 0].set(1e4).at[1, 255].set(-1e4)
  g = jax.jit(jax.grad(lambda l: _categorical(x, l).sum()))(logits)
  assert np.all(np.isfinite(np.asarray(g)))
  bl = jnp.float32([[1e4] * 8, [-1e4] * 8, [0.0] * 8])
  g = jax.jit(jax.grad(lambda l: _bitwise(x, l).sum()))(bl)
  assert np.all(np.isfinite(np.asarray(g)))


# ---------------------------------------------------------------------------
# Discretized logistic mixture.
# ---------------------------------------------------------------------------


def _ref_mixture(k, logit_probs, means, log_scales):
  """k [..., C]; logit_probs [..., K]; means, log_scales [..., C, K]."""
  comp = -_ref_logistic(np.asarray(k)[..., None], means, log_scales)
  joint = comp.sum(axis=-2) + scipy.special.log_softmax(
      np.asarray(logit_probs, np.float64), axis=-1)
  return -scipy.special.logsumexp(joint, axis=-1)


def test_mixture_matches_reference():
  rng = np.random.default_rng(16)
  b, h, w, c, nk = 2, 3, 3, 3, 4
  k = rng.integers(0, 256, (b, h, w, c))
  k.reshape(-1)[:2] = (0, 255)
  x = (k / 255.0).astype(np.float32)
  logit_probs = rng.normal(0, 2, (b, h, w, nk)).astype(np.float32)
  means = rng.uniform(-0.2, 1.2, (b, h, w, c, nk)).astype(np.float32)
  log_scales = rng.uniform(-7, 0, (b, h, w, c, nk)).astype(np.float32)
  got = _mixture(x, logit_probs, means, log_scales)
  assert got.shape == (b, h, w)
  _assert_close(got, _ref_mixture(k, logit_probs, means, log_scales),
                "mixture")
  # Parameters shared across pixels broadcast.
  got = _mixture(x, logit_probs[0, 0, 0], means[0, 0, 0], log_scales[0, 0, 0])
  assert got.shape == (b, h, w)
  _assert_close(got, _ref_mixture(k, logit_probs[0, 0, 0], means[0, 0, 0],
                                  log_scales[0, 0, 0]), "mixture broadcast")


def test_mixture_shares_indicator_across_channels():
  # Two components, each putting all its mass on one colour: (0, 0) or
  # (255, 255). A shared indicator gives ~zero mass to (0, 255); independent
  # per-channel mixtures would give it 1/4.
  logit_probs = np.float32([0.0, 0.0])
  means = np.float32([[0.0, 1.0], [0.0, 1.0]])          # [C=2, K=2]
  log_scales = np.full((2, 2), -9.0, np.float32)
  x = np.float32([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
  nll = np.asarray(_mixture(x, logit_probs, means, log_scales))
  np.testing.assert_allclose(nll[:2], math.log(2), atol=1e-5)
  assert nll[2] > 100


def test_mixture_with_one_component_equals_discretized_logistic():
  rng = np.random.default_rng(17)
  k = rng.integers(0, 256, (4, 3))
  x = (k / 255.0).astype(np.float32)
  means = rng.uniform(0, 1, (4, 3, 1)).astype(np.float32)
  log_scales = rng.uniform(-6, -1, (4, 3, 1)).astype(np.float32)
  got = np.asarray(_mixture(x, np.zeros((4, 1), np.float32), means,
                            log_scales))
  ref = -(-_ref_logistic(k, means[..., 0], log_scales[..., 0])).sum(-1)
  np.testing.assert_allclose(got, ref, rtol=1e-5)


@pytest.mark.parametrize("setting", ["typical", "tiny_scales", "huge_scales",
                                     "far_means"])
def test_mixture_sums_to_one_over_all_colours(setting):
  rng = np.random.default_rng(18)
  nk = 3
  logit_probs = rng.normal(0, 2, (nk,)).astype(np.float32)
  means = rng.uniform(0, 1, (2, nk)).astype(np.float32)
  log_scales = rng.uniform(-5, -2, (2, nk)).astype(np.float32)
  if setting == "tiny_scales":
    log_scales = np.full((2, nk), -14.0, np.float32)
  elif setting == "huge_scales":
    log_scales = np.full((2, nk), 6.0, np.float32)
  elif setting == "far_means":
    means = np.float32([[-30.0, 0.5, 40.0], [5.0, -2.0, 0.5]])
  # All 256^2 colours of a 2-channel pixel.
  k0, k1 = np.meshgrid(LEVELS, LEVELS, indexing="ij")
  x = np.stack([k0.reshape(-1), k1.reshape(-1)], -1) / 255.0
  nll = np.asarray(_mixture(x.astype(np.float32), logit_probs, means,
                            log_scales), np.float64)
  assert nll.shape == (65536,)
  np.testing.assert_allclose(scipy.special.logsumexp(-nll), 0.0, atol=1e-5)


def test_mixture_gradients_finite():
  x = jnp.float32([[0.0, 1.0, 0.5], [1.0, 1.0, 0.0]])
  lp = jnp.float32([[0.0, 50.0], [-50.0, 0.0]])
  means = jnp.float32([[[0.0, 1.0]] * 3, [[-5.0, 5.0]] * 3])
  ls = jnp.float32([[[-9.0, 3.0]] * 3, [[-20.0, 10.0]] * 3])
  grads = jax.jit(jax.grad(lambda *a: _mixture(x, *a).sum(),
                           argnums=(0, 1, 2)))(lp, means, ls)
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g)))
