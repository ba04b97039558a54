"""KL / ELBO helpers, input validation, dtypes, jit/vmap and import hygiene of
sigma_vae_jax.losses. References are numpy / scipy in float64."""

import ast
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats

from sigma_vae_jax import losses

REPO = pathlib.Path(__file__).resolve().parents[1]
LOSSES_PACKAGE = REPO / "sigma_vae_jax" / "losses"


# ---------------------------------------------------------------------------
# Import hygiene.
# ---------------------------------------------------------------------------


def test_losses_module_imports_only_allowed_modules():
  paths = sorted(LOSSES_PACKAGE.glob("*.py"))
  assert paths, LOSSES_PACKAGE
  imported = set()
  for path in paths:
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        imported.update(alias.name for alias in node.names)
      elif isinstance(node, ast.ImportFrom):
        imported.add(node.module)
  # JAX, chex, numpy and the standard library's math/dataclasses/typing only, besides
  # the package's own modules.
  imported = {m for m in imported if not m.startswith("sigma_vae_jax.losses.")}
  assert imported <= {"__future__", "math", "dataclasses", "typing", "chex", "jax",
                      "jax.numpy", "numpy"}, imported


def test_import_does_not_load_tensorflow_or_torch_and_is_fast():
  code = (
      "import json, sys, time\n"
      "import math, numpy, jax, jax.numpy, chex\n"
      "before = set(sys.modules)\n"
      "t = time.perf_counter()\n"
      "import sigma_vae_jax.losses\n"
      "dt = time.perf_counter() - t\n"
      "new = sorted({m.split('.')[0] for m in set(sys.modules) - before})\n"
      "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
      "('tensorflow', 'torch', 'tensorflow_datasets', 'flax', 'optax'))\n"
      "print(json.dumps({'new': new, 'heavy': heavy, 'dt': dt}))\n")
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), env=env,
                        capture_output=True, text=True, timeout=120,
                        check=True)
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["heavy"] == [], result
  # On top of jax/chex/numpy the module adds nothing but the package itself.
  assert set(result["new"]) <= {"sigma_vae_jax"}, result
  assert result["dt"] < 1.0, result


# ---------------------------------------------------------------------------
# Input validation.
# ---------------------------------------------------------------------------


def _x(dtype):
  return np.array([[0, 128, 255]], dtype=dtype)


LIKELIHOODS = {
    "gaussian_nll": lambda x: losses.gaussian_nll(x, 0.5, -2.0),
    "optimal_log_sigma": lambda x: losses.optimal_log_sigma(x, 0.5),
    "student_t_nll": lambda x: losses.student_t_nll(x, 0.5, -2.0, 3.0),
    "bernoulli_nll": lambda x: losses.bernoulli_nll(x, 0.0),
    "categorical_nll": lambda x: losses.categorical_nll(x, jnp.zeros(256)),
    "bitwise_categorical_nll":
        lambda x: losses.bitwise_categorical_nll(x, jnp.zeros(8)),
    "discretized_logistic_nll":
        lambda x: losses.discretized_logistic_nll(x, 0.5, -2.0),
    "discretized_gaussian_nll":
        lambda x: losses.discretized_gaussian_nll(x, 0.5, -2.0),
    "discretized_student_t_nll":
        lambda x: losses.discretized_student_t_nll(x, 0.5, -2.0, 3.0),
    "discretized_logistic_mixture_nll":
        lambda x: losses.discretized_logistic_mixture_nll(
            x, jnp.zeros(2), jnp.zeros((3, 2)), jnp.zeros((3, 2))),
    "check_images": losses.check_images,
}


@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
@pytest.mark.parametrize("dtype", ["uint8", "int32", "bool"])
def test_integer_and_bool_images_raise_type_error(name, dtype):
  fn = LIKELIHOODS[name]
  with pytest.raises(TypeError) as err:
    fn(_x(dtype))
  msg = str(err.value)
  assert "expected floating-point images in [0, 1]" in msg
  assert dtype in msg
  if dtype != "bool":
    assert "divide by 255" in msg
  assert name in msg


def test_type_error_also_raised_under_jit():
  with pytest.raises(TypeError, match="got uint8"):
    jax.jit(losses.discretized_logistic_nll)(_x("uint8"), 0.5, -2.0)


def test_shape_checks_with_chex_eager_and_under_jit():
  x = jnp.full((2, 3), 0.5)
  with pytest.raises(AssertionError):
    losses.categorical_nll(x, jnp.zeros((2, 3, 255)))
  with pytest.raises(AssertionError):
    jax.jit(losses.categorical_nll)(x, jnp.zeros((2, 3, 255)))
  with pytest.raises(AssertionError):
    jax.jit(losses.bitwise_categorical_nll)(x, jnp.zeros((2, 3, 7)))
  with pytest.raises(AssertionError):  # logits' leading dims vs x
    losses.categorical_nll(x, jnp.zeros((4, 3, 256)))
  # Mixture: K must agree between logit_probs, means and log_scales ...
  with pytest.raises(AssertionError):
    jax.jit(losses.discretized_logistic_mixture_nll)(
        x, jnp.zeros((2, 5)), jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 4)))
  with pytest.raises(AssertionError):
    losses.discretized_logistic_mixture_nll(
        x, jnp.zeros((2, 4)), jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 5)))
  # ... and C between x and means.
  with pytest.raises(AssertionError):
    losses.discretized_logistic_mixture_nll(
        x, jnp.zeros((2, 4)), jnp.zeros((2, 2, 4)), jnp.zeros((2, 2, 4)))
  # Parameters must broadcast to the data shape (output has x's shape).
  with pytest.raises(AssertionError):
    losses.gaussian_nll(x, jnp.zeros((2, 3, 1)), 0.0)
  with pytest.raises(AssertionError):
    jax.jit(losses.discretized_gaussian_nll)(x, 0.5, jnp.zeros((3, 3)))


def test_check_images():
  good = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
  assert losses.check_images(good) is good
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    losses.check_images(good * 255)
  with pytest.raises(ValueError):
    losses.check_images(good - 0.5)
  bad = good.copy()
  bad[0, 0] = np.nan
  with pytest.raises(ValueError, match="non-finite"):
    losses.check_images(bad)
  bad[0, 0] = np.inf
  with pytest.raises(ValueError, match="non-finite"):
    losses.check_images(bad)
  with pytest.raises(TypeError, match="divide by 255"):
    losses.check_images((good * 255).astype(np.uint8))
  losses.check_images(jnp.asarray(good))  # device arrays are fine too


# ---------------------------------------------------------------------------
# dtypes, jit and vmap.
# ---------------------------------------------------------------------------


def test_float32_by_default():
  x32 = jnp.full((2, 3), 0.5, jnp.float32)
  for x in (x32, x32.astype(jnp.bfloat16), np.full((2, 3), 0.5)):
    assert losses.gaussian_nll(x, 0.4, -1).dtype == jnp.float32
    assert losses.bernoulli_nll(x, 1).dtype == jnp.float32
    assert losses.discretized_logistic_nll(x, 0.4, -3).dtype == jnp.float32
    assert losses.optimal_log_sigma(x, 0.4).dtype == jnp.float32
  assert losses.gaussian_kl(jnp.zeros(3), 0).dtype == jnp.float32
  assert losses.softclip(jnp.arange(3), low=0).dtype == jnp.float32
  assert losses.effective_beta(0).dtype == jnp.float32
  assert losses.nats_to_bits_per_dim(100, 10).dtype == jnp.float32


def test_jit_matches_eager():
  rng = np.random.default_rng(20)
  x = (rng.integers(0, 256, (2, 3, 3, 3)) / 255.0).astype(np.float32)
  mean = rng.uniform(0, 1, x.shape).astype(np.float32)
  ls = rng.uniform(-5, 0, x.shape).astype(np.float32)
  logits = rng.normal(0, 2, x.shape + (256,)).astype(np.float32)
  kl_in = rng.normal(0, 1, (2, 5)).astype(np.float32)
  cases = [
      (losses.gaussian_nll, (x, mean, ls)),
      (losses.optimal_log_sigma, (x, mean)),
      (losses.bernoulli_nll, (x, ls)),
      (losses.categorical_nll, (x, logits)),
      (losses.discretized_logistic_nll, (x, mean, ls)),
      (losses.gaussian_kl, (kl_in, kl_in)),
      (losses.negative_elbo, (ls, kl_in)),
  ]
  for fn, args in cases:
    eager = jax.tree_util.tree_leaves(fn(*args))
    jitted = jax.tree_util.tree_leaves(jax.jit(fn)(*args))
    for e, j in zip(eager, jitted):
      np.testing.assert_allclose(np.asarray(j), np.asarray(e), rtol=2e-6,
                                 atol=2e-6, err_msg=fn.__name__)


def test_vmap_matches_batched_call():
  rng = np.random.default_rng(21)
  x = (rng.integers(0, 256, (3, 4, 4, 3)) / 255.0).astype(np.float32)
  mean = rng.uniform(0, 1, x.shape).astype(np.float32)
  ls = rng.uniform(-5, 0, x.shape).astype(np.float32)
  # Per-example optimal sigma via vmap == the per-image axis variant.
  per_ex = jax.jit(jax.vmap(losses.optimal_log_sigma))(x, mean)
  np.testing.assert_allclose(
      np.asarray(per_ex)[:, 0],
      np.asarray(losses.optimal_log_sigma(x, mean, axis=(1, 2, 3)))[:, 0],
      rtol=1e-6)
  for fn in (losses.discretized_gaussian_nll, losses.gaussian_nll):
    batched = jax.jit(fn)(x, mean, ls)
    mapped = jax.jit(jax.vmap(fn))(x, mean, ls)
    np.testing.assert_allclose(np.asarray(mapped), np.asarray(batched),
                               rtol=1e-6, atol=1e-6)
  lp = rng.normal(0, 1, (3, 4, 4, 2)).astype(np.float32)
  mm = rng.uniform(0, 1, (3, 4, 4, 3, 2)).astype(np.float32)
  ms = rng.uniform(-5, -1, (3, 4, 4, 3, 2)).astype(np.float32)
  fn = losses.discretized_logistic_mixture_nll
  batched = jax.jit(fn)(x, lp, mm, ms)
  mapped = jax.jit(jax.vmap(fn))(x, lp, mm, ms)
  np.testing.assert_allclose(np.asarray(mapped), np.asarray(batched),
                             rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# KL and ELBO helpers.
# ---------------------------------------------------------------------------


def test_gaussian_kl_closed_form_and_numerical_integral():
  rng = np.random.default_rng(22)
  mean = rng.normal(0, 2, (4, 6)).astype(np.float32)
  log_var = rng.uniform(-8, 3, (4, 6)).astype(np.float32)
  got = np.asarray(losses.gaussian_kl(mean, log_var))
  assert got.shape == (4, 6)
  m, lv = mean.astype(np.float64), log_var.astype(np.float64)
  ref = 0.5 * (m**2 + np.exp(lv) - 1 - lv)
  np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-6)
  # Independent check by quadrature of q log(q/p) for a few entries.
  for mu, v in ((0.3, -0.7), (-1.5, 1.2), (2.0, -3.0)):
    q = scipy.stats.norm(mu, math.exp(0.5 * v))
    integral, _ = scipy.integrate.quad(
        lambda z: q.pdf(z) * (q.logpdf(z) - scipy.stats.norm.logpdf(z)),
        mu - 40 * q.std(), mu + 40 * q.std(), points=[mu], limit=200)
    np.testing.assert_allclose(
        float(losses.gaussian_kl(np.float32(mu), np.float32(v))), integral,
        rtol=1e-5)
  # Accurate near the prior (no cancellation in exp(lv) - 1 - lv).
  lv = np.float32([1e-4, -1e-4, 1e-3, -0.0999, 0.1001, 0.3, -0.499, 0.501,
                   -0.6, 1e-20, 0.0])
  got = np.asarray(losses.gaussian_kl(np.zeros_like(lv), lv))
  ref = 0.5 * (np.expm1(lv.astype(np.float64)) - lv.astype(np.float64))
  np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-40)
  g = jax.jit(jax.grad(lambda a, b: losses.gaussian_kl(a, b).sum(),
                       argnums=(0, 1)))(jnp.asarray(mean), jnp.asarray(log_var))
  np.testing.assert_allclose(np.asarray(g[0]), m, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(g[1]),
                             0.5 * np.expm1(log_var.astype(np.float64)),
                             rtol=1e-5, atol=1e-6)


def test_sum_over_data_dims():
  x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
  got = losses.sum_over_data_dims(x)
  assert got.shape == (2,)
  np.testing.assert_allclose(np.asarray(got), x.reshape(2, -1).sum(1))
  got2 = losses.sum_over_data_dims(x, num_batch_dims=2)
  assert got2.shape == (2, 3)
  np.testing.assert_allclose(np.asarray(got2), x.reshape(2, 3, -1).sum(-1))
  np.testing.assert_allclose(
      np.asarray(losses.sum_over_data_dims(x[:, 0, 0, 0])), x[:, 0, 0, 0])
  with pytest.raises(ValueError):
    losses.sum_over_data_dims(np.float32(1.0))


def test_nats_to_bits_per_dim():
  d = 32 * 32 * 3
  np.testing.assert_allclose(
      float(losses.nats_to_bits_per_dim(d * math.log(2), d)), 1.0, rtol=1e-6)
  nats = np.float32([100.0, 2500.0])
  np.testing.assert_allclose(np.asarray(losses.nats_to_bits_per_dim(nats, 7)),
                             nats / (7 * np.log(2)), rtol=1e-6)


def test_negative_elbo_sums_not_means():
  rng = np.random.default_rng(23)
  nll = rng.normal(0, 1, (3, 4, 4, 2)).astype(np.float32)
  kl = rng.uniform(0, 1, (3, 5)).astype(np.float32)
  for beta in (1.0, 0.25, np.float32([1.0, 2.0, 3.0])):
    nelbo, rec, kl_sum = losses.negative_elbo(nll, kl, beta=beta)
    assert nelbo.shape == rec.shape == kl_sum.shape == (3,)
    ref_rec = nll.astype(np.float64).reshape(3, -1).sum(1)
    ref_kl = kl.astype(np.float64).sum(1)
    np.testing.assert_allclose(np.asarray(rec), ref_rec, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(kl_sum), ref_kl, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(nelbo), ref_rec + beta * ref_kl,
                               rtol=1e-5, atol=1e-5)
  # Per-pixel (mixture) NLL [B, H, W] and a constant NLL: a sum, not a mean.
  nelbo, rec, _ = losses.negative_elbo(np.ones((3, 4, 4), np.float32),
                                       np.zeros((3, 2), np.float32))
  np.testing.assert_allclose(np.asarray(rec), 16.0)
  # Sequences: [T, B, ...] with two batch dims.
  nelbo, rec, kl_sum = losses.negative_elbo(
      np.ones((2, 3, 4, 4, 1)), np.ones((2, 3, 5)), num_batch_dims=2)
  assert nelbo.shape == (2, 3)
  np.testing.assert_allclose(np.asarray(nelbo), 21.0)
  with pytest.raises(AssertionError):
    losses.negative_elbo(np.ones((3, 4)), np.ones((2, 5)))


def test_effective_beta_value_and_gradient_equivalence():
  np.testing.assert_allclose(
      np.asarray(losses.effective_beta(np.float32([-2.0, 0.0, 0.7]))),
      np.exp(2 * np.float64([-2.0, 0.0, 0.7])), rtol=1e-6)
  rng = np.random.default_rng(24)
  x = jnp.asarray((rng.integers(0, 256, (2, 4, 4, 3)) / 255.0), jnp.float32)
  log_sigma = jnp.float32(-1.3)
  sigma2 = math.exp(2 * float(log_sigma))

  def sigma_vae_loss(mean, mu_z, logvar_z):
    nll = losses.gaussian_nll(x, mean, log_sigma)
    return losses.negative_elbo(nll, losses.gaussian_kl(mu_z, logvar_z))[0].sum()

  def beta_vae_loss(mean, mu_z, logvar_z, beta):
    nll = losses.gaussian_nll(x, mean, 0.0)  # unit variance decoder
    return losses.negative_elbo(nll, losses.gaussian_kl(mu_z, logvar_z),
                                beta=beta)[0].sum()

  beta = losses.effective_beta(log_sigma)
  grad_sigma = jax.jit(jax.grad(lambda *p: sigma2 * sigma_vae_loss(*p),
                                argnums=(0, 1, 2)))
  grad_beta = jax.jit(jax.grad(beta_vae_loss, argnums=(0, 1, 2)))
  diffs = []
  for seed in range(3):
    r = np.random.default_rng(100 + seed)
    params = (jnp.asarray(r.uniform(0, 1, x.shape), jnp.float32),
              jnp.asarray(r.normal(0, 1, (2, 6)), jnp.float32),
              jnp.asarray(r.normal(0, 1, (2, 6)), jnp.float32))
    for gs, gb in zip(grad_sigma(*params), grad_beta(*params, beta)):
      np.testing.assert_allclose(np.asarray(gs), np.asarray(gb), rtol=2e-5,
                                 atol=1e-6)
    # The losses differ by a constant independent of the parameters.
    diffs.append(float(sigma2 * sigma_vae_loss(*params)) -
                 float(beta_vae_loss(*params, beta)))
    # The text's convention (beta = 2 sigma^2) does not match Eq. 7's loss.
    gb_text = grad_beta(*params, 2 * sigma2)
    assert not np.allclose(np.asarray(grad_sigma(*params)[1]),
                           np.asarray(gb_text[1]), rtol=1e-3)
  np.testing.assert_allclose(diffs, diffs[0], rtol=1e-5)


# ---- general Gaussian KL and log-density (the models' latents) ---------------------


def test_gaussian_log_prob_is_elementwise_and_matches_scipy():
  from scipy import stats
  rng = np.random.default_rng(0)
  mean = rng.normal(size=(3, 4))
  log_var = rng.uniform(-2, 1, size=(3, 4))
  z = rng.normal(size=(5, 3, 4))  # broadcasts against [3, 4]
  got = np.asarray(losses.gaussian_log_prob(z, mean, log_var))
  assert got.shape == (5, 3, 4)
  np.testing.assert_allclose(got, stats.norm.logpdf(z, mean, np.exp(0.5 * log_var)),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(losses.gaussian_log_prob(z)), stats.norm.logpdf(z),
                             rtol=1e-5, atol=1e-5)


def _kl_float64(mq, lvq, mp, lvp):
  """KL(N(mq, e^lvq) || N(mp, e^lvp)) in float64 by the textbook formula."""
  mq, lvq, mp, lvp = (np.asarray(a, np.float64) for a in (mq, lvq, mp, lvp))
  return 0.5 * (lvp - lvq + (np.exp(lvq) + (mq - mp) ** 2) / np.exp(lvp) - 1.0)


def test_general_gaussian_kl_matches_float64_reference_and_integral():
  from scipy import integrate, stats
  rng = np.random.default_rng(1)
  shape = (6, 5)
  mq, mp = rng.normal(size=shape), rng.normal(size=shape)
  lvq, lvp = rng.uniform(-3, 2, size=shape), rng.uniform(-3, 2, size=shape)
  got = np.asarray(losses.gaussian_kl(mq, lvq, mp, lvp))
  np.testing.assert_allclose(got, _kl_float64(mq, lvq, mp, lvp), rtol=1e-5, atol=1e-6)
  # One entry by numerical integration of q log(q / p).
  q = stats.norm(mq[0, 0], np.exp(0.5 * lvq[0, 0]))
  p = stats.norm(mp[0, 0], np.exp(0.5 * lvp[0, 0]))
  integral, _ = integrate.quad(lambda z: q.pdf(z) * (q.logpdf(z) - p.logpdf(z)), -30, 30)
  assert got[0, 0] == pytest.approx(integral, rel=1e-4)
  # A prior of N(0, 1) given explicitly is the default prior.
  np.testing.assert_allclose(np.asarray(losses.gaussian_kl(mq, lvq, 0.0, 0.0)),
                             np.asarray(losses.gaussian_kl(mq, lvq)), rtol=1e-6, atol=1e-7)


def test_general_gaussian_kl_is_accurate_when_posterior_and_prior_nearly_agree():
  # The naive formula loses all digits when the variances are close: the KL of
  # two Gaussians 1e-3 apart in log variance is ~1.25e-7 * D nats.
  lvp = np.full(1000, 1.3, np.float32)
  lvq = lvp + np.float32(1e-3)
  got = np.asarray(losses.gaussian_kl(np.zeros(1000, np.float32), lvq,
                                      np.zeros(1000, np.float32), lvp))
  ref = _kl_float64(0.0, lvq.astype(np.float64), 0.0, lvp.astype(np.float64))
  assert np.all(got >= 0)
  np.testing.assert_allclose(got, ref, rtol=2e-3)
  # Gradients are finite and point the right way (towards the prior).
  g = jax.grad(lambda l: losses.gaussian_kl(0.0, l, 0.0, 1.3).sum())(jnp.asarray(lvq))
  assert np.all(np.asarray(g) > 0)
