"""The discretized Student-t's bin log-masses: tail probabilities from the
incomplete beta function and a log-space series, narrow bins by Gauss-Legendre
quadrature, and an exact custom JVP. Elementwise; results in nats (<= 0)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from sigma_vae_jax.losses._bins import _standardize_bins
from sigma_vae_jax.losses._numerics import _LGAMMA_HALF, _LOG_2, _log1mexp


def _gauss_legendre(n: int):
  """Gauss-Legendre nodes and weights on [-1, 1] (Newton on P_n; the same as
  numpy.polynomial.legendre.leggauss, which would add an import)."""
  nodes, weights = [], []
  for i in range(1, n + 1):
    x = math.cos(math.pi * (i - 0.25) / (n + 0.5))
    for _ in range(100):
      p_prev, p = 1.0, x
      for k in range(2, n + 1):
        p_prev, p = p, ((2 * k - 1) * x * p - (k - 1) * p_prev) / k
      dp = n * (x * p - p_prev) / (x * x - 1.0)
      step = p / dp
      x -= step
      if abs(step) < 1e-15:
        break
    p_prev, p = 1.0, x
    for k in range(2, n + 1):
      p_prev, p = p, ((2 * k - 1) * x * p - (k - 1) * p_prev) / k
    dp = n * (x * p - p_prev) / (x * x - 1.0)
    nodes.append(x)
    weights.append(2.0 / ((1.0 - x * x) * dp * dp))
  return np.array(nodes), np.array(weights)


# Discretized Student-t (see `_student_t_bin_log_mass`).
# Gauss-Legendre nodes/weights on [-1, 1] for bins integrated by quadrature.
_T_QUAD_NODES, _T_QUAD_WEIGHTS = _gauss_legendre(12)
# Bins at most this wide (in units of scale, and at most sqrt(df)) and with at
# most this much change of the log density across them are integrated by
# quadrature (see `_student_t_quad_log_mass`).
_T_QUAD_MAX_WIDTH = 1.0
_T_QUAD_MAX_TILT = 4.0


def _log_beta_half(half_df):
  """log B(df/2, 1/2) (the Student-t normaliser), accurate in either dtype.

  jax's betaln is accurate in float32 (no lgamma cancellation for large df)
  but off by up to 5e-8 in float64 for df/2 ~ 8-50 (jax 0.10), where the
  lgamma difference is exact to ~1e-15 relative instead.
  """
  if half_df.dtype == jnp.float64:
    return (_LGAMMA_HALF + jax.scipy.special.gammaln(half_df) -
            jax.scipy.special.gammaln(half_df + 0.5))
  return jax.scipy.special.betaln(half_df, 0.5)


def _student_t_log1p_sq(t, df):
  """log(1 + t^2 / df) for any finite t, without overflowing t^2."""
  abs_t = jnp.maximum(jnp.abs(t), jnp.finfo(t.dtype).tiny)
  log_u = jnp.log(abs_t) - 0.5 * jnp.log(df)
  return jax.nn.softplus(2.0 * log_u)


def _student_t_log_pdf(t, df, log_norm):
  """log density of the standard Student-t at t (any real).

  log_norm = -log(sqrt(df) B(df/2, 1/2)), passed in to compute it once.
  """
  return log_norm - 0.5 * (df + 1.0) * _student_t_log1p_sq(t, df)


def _student_t_series(x, half_df, num_terms: int):
  """2F1(df/2 + 1/2, 1; df/2 + 1; x) = sum_n c_n x^n, 0 <= x <= 1/2.

  c_0 = 1, c_n / c_{n-1} = (df/2 + n - 1/2) / (df/2 + n) < 1, so the terms
  are below x^n <= 2^-n and `num_terms` fixes the truncation error.
  """
  s = jnp.ones_like(x)
  for n in range(num_terms - 1, 0, -1):
    s = 1.0 + (half_df + n - 0.5) / (half_df + n) * x * s
  return s


def _student_t_tail_terms(log_t, df, num_terms: int):
  """Tail quantities at t >= sqrt(df): v = df / t^2 <= 1, x = df / (df + t^2).

  Returns (log_v, x, log S(t)) with the upper tail probability
  S(t) = I_x(df/2, 1/2) / 2 = x^(df/2) (1 - x)^(1/2) / (df B(df/2, 1/2))
  * 2F1(df/2 + 1/2, 1; df/2 + 1; x)  (DLMF 8.17.8), all in log space so that
  it neither underflows nor loses relative precision for any t.
  """
  half_df = 0.5 * df
  log_v = jnp.log(df) - 2.0 * log_t
  v = jnp.exp(log_v)
  log1p_v = jnp.log1p(v)
  x = v / (1.0 + v)
  log_sf = (-_LOG_2 - jnp.log(half_df) - _log_beta_half(half_df) +
            half_df * (log_v - log1p_v) - 0.5 * log1p_v +
            jnp.log(_student_t_series(x, half_df, num_terms)))
  return log_v, x, log_sf


def _student_t_log_sf(t, df, log_norm, num_terms: int):
  """log S(t) = log P(T > t) of the standard Student-t, for t >= 0.

  * t^2 >= df: the log-space hypergeometric series (`_student_t_tail_terms`),
    exact however far in the tail.
  * t^2 < df: `betainc` in whichever of its two forms it evaluates directly
    (no 1 - I): S = (1 - I_y(1/2, df/2)) / 2 with y = t^2 / (df + t^2) while
    t^2 < 3 df / (df + 2) (there S >= 0.04, so the subtraction is harmless),
    else S = I_x(df/2, 1/2) / 2 with x = 1 - y. Forming x and y as
    1 / (1 + u^2) and u^2 / (1 + u^2), u = t / sqrt(df), rather than one as
    1 minus the other keeps each accurate relative to itself.
  * Only for df above ~250 can S underflow in the second form (t^2 < df but
    S < 1e-38 in float32, 1e-308 in float64); there the Mills-ratio
    asymptote below replaces it, within ~1/t^4 relative (t > 13 there).
  """
  half_df = 0.5 * df
  log_t = jnp.log(jnp.maximum(t, jnp.finfo(t.dtype).tiny))
  tail = 2.0 * log_t >= jnp.log(df)
  _, _, tail_val = _student_t_tail_terms(
      jnp.where(tail, log_t, 0.5 * jnp.log(df)), df, num_terms)
  u2 = jnp.where(tail, 0.0, t * t / df)
  centre = u2 * (df + 2.0) < 3.0
  # One betainc call for both forms (it runs a while loop over all elements).
  i = jax.scipy.special.betainc(jnp.where(centre, 0.5, half_df),
                                jnp.where(centre, half_df, 0.5),
                                jnp.where(centre, u2, 1.0) / (1.0 + u2))
  bulk_val = jnp.where(centre, jnp.log1p(-i), jnp.log(i)) - _LOG_2
  # Integrating by parts with d/dt[(df + t^2) pdf(t)] = -(df - 1) t pdf(t):
  # S(t) = (df + t^2) pdf(t) / (df t) - int_t^inf pdf(s) / s^2 ds, and the
  # integral is S(t) / t^2 (1 + O(1 / t^2)) where S underflows (t > 13).
  ts = jnp.maximum(t, 1.0)
  mills = (_student_t_log_pdf(ts, df, log_norm) + jnp.log1p(ts * ts / df) -
           jnp.log(ts) - jnp.log1p(1.0 / (ts * ts)))
  bulk_val = jnp.where(jnp.isfinite(bulk_val), bulk_val, mills)
  return jnp.where(tail, tail_val, bulk_val)


def _student_t_tail_log_ratio(log_lo, log_w, df, num_terms: int):
  """D = log S(lo) - log S(lo + w) > 0 for lo >= sqrt(df), without cancellation.

  From the series form of `_student_t_tail_terms` with rho = w / lo and
  v = df / lo^2:
    D = (df + 1)/2 l1 - log1p(rho) + log(Sigma(x_lo) / Sigma(x_hi)),
    l1 = log((df + hi^2) / (df + lo^2)) = log1p(rho (2 + rho) / (1 + v)),
  every term exact to a few ulps (the series difference as divided
  differences of x_lo - x_hi, itself formed without subtraction), so D keeps
  its relative precision however narrow the bin is relative to lo (where
  log S(lo) and log S(hi) are equal to many digits). The terms nearly cancel
  only for df = 1 at lo = 1, and then only to a factor of ~2.
  """
  half_df = 0.5 * df
  log_rho = log_w - log_lo
  log1p_rho = jax.nn.softplus(log_rho)
  log_v_lo, x_lo, _ = _student_t_tail_terms(log_lo, df, num_terms)
  v_lo = jnp.exp(log_v_lo)
  l1 = jax.nn.softplus(log_rho + jnp.logaddexp(_LOG_2, log_rho) -
                       jnp.log1p(v_lo))
  v_hi = jnp.exp(log_v_lo - 2.0 * log1p_rho)
  x_hi = v_hi / (1.0 + v_hi)
  # x_lo - x_hi = (v_lo - v_hi) / ((1 + v_lo)(1 + v_hi)),
  # v_lo - v_hi = v_lo (1 - (1 + rho)^-2).
  dx = v_lo * -jnp.expm1(-2.0 * log1p_rho) / ((1.0 + v_lo) * (1.0 + v_hi))
  # Sigma(x_lo) - Sigma(x_hi) = dx * sum_n c_n dd_n with the divided
  # differences dd_n = (x_lo^n - x_hi^n) / (x_lo - x_hi) (positive terms).
  c = jnp.ones_like(x_lo)
  dd = jnp.zeros_like(x_lo)
  x_hi_pow = jnp.ones_like(x_lo)
  acc = jnp.zeros_like(x_lo)
  sigma_hi = jnp.ones_like(x_lo)
  for n in range(1, num_terms):
    c = c * ((half_df + n - 0.5) / (half_df + n))
    dd = x_lo * dd + x_hi_pow
    x_hi_pow = x_hi_pow * x_hi
    acc = acc + c * dd
    sigma_hi = sigma_hi + c * x_hi_pow
  return (half_df + 0.5) * l1 - log1p_rho + jnp.log1p(dx * acc / sigma_hi)


def _student_t_quad_log_mass(m, log_half, half, df, log_norm):
  """log of the integral of the density over [m - half, m + half], by
  12-point Gauss-Legendre quadrature of exp(log pdf) (a logsumexp).

  Used for bins at most min(`_T_QUAD_MAX_WIDTH`, sqrt(df)) scales wide
  across which the log density changes by at most `_T_QUAD_MAX_TILT`: the
  integrand is analytic with poles at +-i sqrt(df), at least one bin width
  from the bin, and nearly exponential across it, so 12 nodes are exact to
  float64 rounding (measured against mpmath).
  """
  nodes = jnp.asarray(_T_QUAD_NODES, m.dtype)
  log_weights = jnp.asarray(np.log(_T_QUAD_WEIGHTS), m.dtype)
  t = m[..., None] + half[..., None] * nodes
  # |t| <= sqrt(df) + 1 here, so t^2 cannot overflow: a plain log1p.
  df = df[..., None]
  log_f = log_norm[..., None] - 0.5 * (df + 1.0) * jnp.log1p(t * t / df)
  return log_half + jax.nn.logsumexp(log_f + log_weights, axis=-1)


def _student_t_bin_log_mass_impl(a, b, m, half, log_delta, first, last, df):
  num_terms = 26 if a.dtype == jnp.float32 else 56
  log_norm = -0.5 * jnp.log(df) - _log_beta_half(0.5 * df)
  edge = first | last
  # By symmetry, put inner bins on the upper side of the mean: [lo, hi] with
  # hi > 0.
  above = m > 0.0
  lo = jnp.where(above, a, -b)
  hi = jnp.where(above, b, -a)
  # Inner bins with both edges in the tail (lo >= sqrt(df)).
  log_lo = jnp.log(jnp.maximum(lo, jnp.finfo(lo.dtype).tiny))
  tail = 2.0 * log_lo >= jnp.log(df)
  # Other inner bins that are narrow: quadrature.
  slope = (df + 1.0) * jnp.abs(m) / (df + m * m)  # |d log pdf / dt| at m
  width = 2.0 * half
  quad = ((width <= _T_QUAD_MAX_WIDTH) & (width * width <= df) &
          (width * slope <= _T_QUAD_MAX_TILT) & ~tail)
  # Log tail probabilities at two points: |edge| of the open bins, |lo| and
  # |hi| of inner bins. One call on both (a single betainc while loop: half
  # the compile time); points whose value is not used are set to 0, where
  # betainc is trivial (its loop runs until every element has converged).
  t1 = jnp.where(first, jnp.abs(b), jnp.where(last, jnp.abs(a), jnp.abs(lo)))
  t1 = jnp.where(quad & ~edge, 0.0, t1)
  t2 = jnp.where(edge | tail | quad, 0.0, jnp.abs(hi))
  log_s1, log_s2 = _student_t_log_sf(jnp.stack([t1, t2]), df, log_norm,
                                     num_terms)
  # Open bins: log F(b) = log S(-b), log S(a).
  edge_t = jnp.where(first, -b, a)
  edge_val = jnp.where(edge_t >= 0.0, log_s1, _log1mexp(-log_s1))
  # Tail bins: log S(lo) + log(1 - e^-D), D exact.
  d_tail = _student_t_tail_log_ratio(jnp.where(tail, log_lo, 0.5 * jnp.log(df)),
                                     log_delta, df, num_terms)
  quad_val = _student_t_quad_log_mass(
      jnp.where(quad, m, 0.0), log_delta - _LOG_2, jnp.where(quad, half, 0.5),
      df, log_norm)
  # Wide bins: tail-probability differences. Straddling the mean:
  # 1 - S(-lo) - S(hi); above it: S(lo) - S(hi) = S(lo)(1 - e^-D).
  straddle = lo < 0.0
  straddle_val = jnp.log1p(-(jnp.exp(log_s1) + jnp.exp(log_s2)))
  d_wide = log_s1 - log_s2
  inner_val = log_s1 + _log1mexp(jnp.where(tail, d_tail, d_wide))
  inner_val = jnp.where(tail, inner_val,
                        jnp.where(quad, quad_val,
                                  jnp.where(straddle, straddle_val, inner_val)))
  return jnp.where(edge, edge_val, inner_val)


@jax.custom_jvp
def _student_t_bin_log_mass(a, b, m, half, log_delta, first, last, df):
  """log P(bin) of the standard Student-t for standardized bins (same shapes).

  Args:
    a, b: bin edges minus the location, in units of scale (a < b).
    m: bin centre, same units; half: half the bin width; log_delta: log of
      the bin width (exact for huge scales, where `half` underflows).
    first, last: masks of the open bins (-inf, b] and [a, +inf).
    df: degrees of freedom (> 0).

  Inner bins, placed by symmetry on the upper side of the mean as [lo, hi]:
  * lo >= sqrt(df) (the tail): log S(lo) + log(1 - e^-D) with D from
    `_student_t_tail_log_ratio`, exact for any bin far in the tail;
  * otherwise narrow bins (width <= 1 scale, log density changing by <= 4):
    Gauss-Legendre quadrature of the density, exact where the difference of
    two tail probabilities would be dominated by their rounding;
  * otherwise wide bins: 1 - S(-lo) - S(hi) when the bin straddles the
    mean, else S(lo) - S(hi) (D >= ~0.6 there, so its rounding is harmless).
  Open bins: S(|edge|) or 1 - S(|edge|) on the side of the mean.
  The gradient is the exact d log P = (pdf(b) db - pdf(a) da) / P (custom
  JVP), finite everywhere, with no derivative through the branches; df gets
  none.
  """
  return _student_t_bin_log_mass_impl(a, b, m, half, log_delta, first, last, df)


@_student_t_bin_log_mass.defjvp
def _student_t_bin_log_mass_jvp(primals, tangents):
  a, b, _, _, _, first, last, df = primals
  da, db = tangents[0], tangents[1]
  log_p = _student_t_bin_log_mass_impl(*primals)
  log_norm = -0.5 * jnp.log(df) - _log_beta_half(0.5 * df)
  # The open bins do not depend on their infinite edge.
  grad_a = jnp.where(first, 0.0,
                     jnp.exp(_student_t_log_pdf(a, df, log_norm) - log_p))
  grad_b = jnp.where(last, 0.0,
                     jnp.exp(_student_t_log_pdf(b, df, log_norm) - log_p))
  return log_p, grad_b * db - grad_a * da


def _discretized_student_t_log_prob(x, loc, log_scale, df, num_bins: int):
  m, a, b, half, log_delta, first, last = _standardize_bins(x, loc, log_scale,
                                                            num_bins)
  return _student_t_bin_log_mass(
      *jnp.broadcast_arrays(a, b, m, half, log_delta, first, last, df))
