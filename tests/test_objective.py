"""The training objective, the evaluation bound and the non-finite guard, checked
against expectations derived independently of the code under test (issue 16).

Every expected value here comes from numpy float64 formulas written out below (the
Gaussian / categorical / discretized-Gaussian likelihoods, the Gaussian KL, the
debiased running average), from closed forms, or from quadrature over a 1-D latent.
The network itself (tested against explicit convolutions in test_conv_vae.py) is used
only as a black-box function: its encoder and decoder outputs feed the hand
computations. To make answers exact, some tests edit the tiny network's parameters:
a decoder that ignores z (so the likelihood does not depend on the sampled latent),
encoder heads with a constant posterior, or poisoned layers whose gradient overflows.

All calls into internal APIs (train_step.loss_fn, model.apply, the parameter layout, the
decoder state) are in the helpers of the first section, so that a refactor of the
model/objective needs to adapt only those.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from scipy import special, stats

from configs import default as default_config
from sigma_vae_jax.evaluation import evaluate
from sigma_vae_jax.evaluation import fid
from sigma_vae_jax.training import train_step
from sigma_vae_jax.training import trainer as trainer_lib

IMAGE_SHAPE = (4, 4, 1)
NUM_PIXELS = math.prod(IMAGE_SHAPE)
LOG_2PI = math.log(2 * math.pi)
LOG_SIGMA_MIN = -6.0  # the default decoder.log_sigma_min


# ----------------------------------------------------------------------------------
# Helpers: the only code here that knows internal APIs.
# ----------------------------------------------------------------------------------


def _config(decoder_name, *, latent_dim=2, batch_size=8, learning_rate=1e-2,
            skip_nonfinite_updates=False, **decoder):
  config = default_config.get_config()
  config.skip_nonfinite_updates = skip_nonfinite_updates
  config.decoder.name = decoder_name
  for key, value in decoder.items():
    config.decoder[key] = value
  config.model.latent_dim, config.model.base_channels = latent_dim, 2
  config.batch_size = batch_size
  config.learning_rate = learning_rate
  config.steps_per_call = 1
  return config


@functools.lru_cache(maxsize=None)
def _cached_trainer(decoder_name, options):
  config = _config(decoder_name, **dict(options))
  return trainer_lib.Trainer(config, IMAGE_SHAPE, Mesh(np.asarray(jax.devices()[:1]), ("data",)))


def _trainer(decoder_name, **options):
  """A trainer for `_config(decoder_name, **options)`, shared by the tests that use the
  same one (so its jitted functions compile once)."""
  return _cached_trainer(decoder_name, tuple(sorted(options.items())))


_JITTED = {}


def _jit(key, make):
  """One jitted function per (trainer, role), compiled once per shape."""
  if key not in _JITTED:
    _JITTED[key] = make()
  return _JITTED[key]


def _apply(trainer, state_or_params, *args, method=None):
  params = getattr(state_or_params, "params", state_or_params)
  apply = _jit((id(trainer), "apply"), lambda: (trainer, jax.jit(
      lambda p, *a, method: trainer.model.apply({"params": p["model"]}, *a, method=method),
      static_argnames="method")))[1]
  return apply(params, *args, method=method)


def _encode(trainer, state, x):
  """Posterior (mean, log_var) [B, D] of float images x in [0, 1], as float64."""
  mean, log_var = _apply(trainer, state, jnp.asarray(x, jnp.float32),
                         method="encode")
  return np.asarray(mean, np.float64), np.asarray(log_var, np.float64)


def _decode(trainer, state, z):
  """Raw decoder-network outputs [B, H, W, num_outputs] for latents z, as float64."""
  out = _apply(trainer, state, jnp.asarray(z, jnp.float32), method="decode")
  return np.asarray(out, np.float64)


def _forward(trainer, state, x, rng):
  """The training forward pass: (raw outputs, z), z the latent it drew."""
  output, intermediates = jax.jit(lambda p, x, r: trainer.model.apply(
      {"params": p["model"]}, x, r, mutable=["intermediates"]))(
          state.params, jnp.asarray(x, jnp.float32), rng)
  return output.decoder_outputs, intermediates["intermediates"]["z"][0]


def _noise(rng, shape):
  """The standard-normal eps that the training forward pass draws from `rng`."""
  return np.asarray(jax.random.normal(rng, shape, jnp.float32), np.float64)


def _training_loss_and_grads(trainer, state, images, rng):
  """(scalar training loss, gradient pytree w.r.t. the trainable parameters)."""
  fn = _jit((id(trainer), "loss"), lambda: (trainer, jax.jit(jax.value_and_grad(
      functools.partial(train_step.loss_fn, model=trainer.model, likelihood=trainer.likelihood),
      has_aux=True))))[1]
  (loss, _), grads = fn(state.params, state.likelihood_state, images, rng)
  return float(loss), grads


def _differentiable_forward(trainer):
  """params -> (mean, log_var, decode) as jnp functions of the trainable parameters."""
  def forward(params, x):
    mean, log_var = _apply(trainer, params, x, method="encode")
    decode = lambda z: _apply(trainer, params, z, method="decode")
    return mean, log_var, decode
  return forward


def _edit_params(state, edit):
  """A copy of the train state whose network parameters went through `edit`, which
  receives a dict of numpy arrays {"decoder_dense", "decoder_last_upsample",
  "output_conv", "mean_head", "log_var_head"} (each {"kernel", "bias"}) to change in
  place. The optimizer state is left as it is."""
  params = jax.tree.map(np.array, jax.device_get(state.params))
  vae = params["model"]
  layers = {"decoder_dense": vae["decoder"]["Dense_0"],
            "decoder_last_upsample": vae["decoder"]["Upsample2x_1"],
            "output_conv": vae["decoder"]["Conv_0"],
            "mean_head": vae["encoder"]["mean"],
            "log_var_head": vae["encoder"]["log_var"]}
  edit(layers)
  return state.replace(params=jax.tree.map(jnp.asarray, params))


def _running_variance_state(state):
  """The decoder state (running average of sigma^2), as numpy."""
  return jax.device_get(state.likelihood_state)


# Parameter edits (in terms of the layer roles of `_edit_params`).


def _decoder_ignores_z(layers):
  """The decoder's first layer forgets z: its output is the same image for every z."""
  layers["decoder_dense"]["kernel"][:] = 0.0
  layers["decoder_dense"]["bias"][:] = np.linspace(0.2, 1.0, layers["decoder_dense"]["bias"].size)


def _constant_posterior(mean, log_var):
  def edit(layers):
    for name, value in (("mean_head", mean), ("log_var_head", log_var)):
      layers[name]["kernel"][:] = 0.0
      layers[name]["bias"][:] = value
  return edit


def _shift_log_var(delta):
  def edit(layers):
    layers["log_var_head"]["bias"][:] += delta
  return edit


# ----------------------------------------------------------------------------------
# Independent float64 references.
# ----------------------------------------------------------------------------------


def _sigmoid(t):
  return 1.0 / (1.0 + np.exp(-t))


def _gaussian_nll(x, mean, variance):
  return 0.5 * (x - mean) ** 2 / variance + 0.5 * np.log(2 * np.pi * variance)


def _discretized_gaussian_nll(x, mean, sigma):
  """-log P(level) of N(mean, sigma^2) over bins of width 1/255 centred on k/255,
  the outer bins extended to -inf / +inf."""
  k = np.round(x * 255.0)
  lo = np.where(k == 0, -np.inf, (k - 0.5) / 255.0)
  hi = np.where(k == 255, np.inf, (k + 0.5) / 255.0)
  return -np.log(stats.norm.cdf((hi - mean) / sigma) - stats.norm.cdf((lo - mean) / sigma))


def _kl(mean, log_var):
  """KL(N(mean, exp(log_var)) || N(0, 1)) summed over the last axis."""
  return 0.5 * np.sum(mean ** 2 + np.exp(log_var) - 1.0 - log_var, axis=-1)


def _per_example_sum(a):
  return a.reshape(a.shape[0], -1).sum(axis=1)


def _images(n, seed, low=0, high=256):
  return np.random.RandomState(seed).randint(low, high, (n,) + IMAGE_SHAPE).astype(np.uint8)


# ----------------------------------------------------------------------------------
# The training objective.
# ----------------------------------------------------------------------------------


def _reference_objective(xp, name, beta, x, mean, log_var, eps, decode):
  """Mean over the batch of rec + beta * KL, written out for numpy (float64 values)
  and jnp (its gradient). `decode(z)` gives the raw network outputs."""
  z = mean + xp.exp(0.5 * log_var) * eps
  out = decode(z)
  if name == "categorical":
    logits = out.reshape(out.shape[:-1] + (IMAGE_SHAPE[-1], 256))
    top = logits.max(axis=-1, keepdims=True)
    log_norm = top[..., 0] + xp.log(xp.exp(logits - top).sum(axis=-1))
    levels = xp.round(x * 255.0)
    onehot = (levels[..., None] == xp.arange(256)).astype(logits.dtype)
    nll = log_norm - (logits * onehot).sum(axis=-1)
  else:
    m = 1.0 / (1.0 + xp.exp(-out))
    if name == "optimal_sigma":
      # sigma*^2: the MSE over the whole batch, its log sigma soft-clipped from below
      # at decoder.log_sigma_min = -6 (paper Sec. 3.1): low + softplus(log_sigma - low).
      log_sigma = 0.5 * xp.log(xp.mean((x - m) ** 2))
      log_sigma = LOG_SIGMA_MIN + xp.logaddexp(0.0, log_sigma - LOG_SIGMA_MIN)
      variance = xp.exp(2.0 * log_sigma)
    else:
      variance = 1.0  # the beta-VAE trains the unit-variance Gaussian
    nll = 0.5 * (x - m) ** 2 / variance + 0.5 * xp.log(2 * xp.pi * variance)
  rec = nll.reshape(nll.shape[0], -1).sum(axis=1)
  kl = 0.5 * (mean ** 2 + xp.exp(log_var) - 1.0 - log_var).sum(axis=-1)
  return xp.mean(rec + beta * kl)


# The same trainers as other tests below, to share their compilations.
_LOSS_OPTIONS = {"beta": {"beta": 0.25},
                 "optimal_sigma": {"sigma_ema_decay": 0.5, "learning_rate": 0.0},
                 "categorical": {}}


@pytest.mark.parametrize("name,beta", [("beta", 0.25), ("optimal_sigma", 1.0),
                                       ("categorical", 1.0)])
def test_training_loss_and_gradient_match_a_hand_computation(name, beta):
  trainer = _trainer(name, **_LOSS_OPTIONS[name])
  # A posterior well away from N(0, 1) (log_var ~ -2), so that the KL and the
  # posterior scale both matter.
  state = _edit_params(trainer.init_state(), _shift_log_var(-2.0))
  images = _images(8, seed=1)
  rng = jax.random.PRNGKey(5)
  loss, grads = _training_loss_and_grads(trainer, state, images, rng)

  x = images.astype(np.float64) / 255.0
  mean, log_var = _encode(trainer, state, x)
  assert np.all(log_var < -1.0)
  eps = _noise(rng, mean.shape)
  expected = _reference_objective(np, name, beta, x, mean, log_var, eps,
                                  lambda z: _decode(trainer, state, z))
  kl = _kl(mean, log_var).mean()
  assert kl > 0.5  # the KL weight is visible at the tolerance below
  np.testing.assert_allclose(loss, expected, rtol=2e-5)

  # The gradient of the same objective, written out in jnp.
  forward = _differentiable_forward(trainer)
  xj, epsj = jnp.asarray(x, jnp.float32), jnp.asarray(eps, jnp.float32)
  def reference(params):
    mean, log_var, decode = forward(params, xj)
    return _reference_objective(jnp, name, beta, xj, mean, log_var, epsj, decode)
  expected_grads = jax.jit(jax.grad(reference))(state.params)
  for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(grads),
                               jax.tree.leaves(expected_grads)):
    got, want = np.asarray(got), np.asarray(want)
    scale = np.abs(want).max() + 1e-6
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-4 * scale,
                               err_msg=jax.tree_util.keystr(path))


def test_reparameterised_latents_follow_the_posterior():
  """z = mean + exp(log_var / 2) * eps: the sample moments of z, for many copies of
  one image, are those of N(mean, exp(log_var)); and the decoder sees that z."""
  trainer = _trainer("gaussian")
  state = _edit_params(trainer.init_state(), _shift_log_var(-1.5))
  n = 4096
  x = np.repeat(_images(1, seed=2).astype(np.float64) / 255.0, n, axis=0)
  out, z = _forward(trainer, state, x, jax.random.PRNGKey(0))
  z = np.asarray(z, np.float64)
  mean, log_var = _encode(trainer, state, x[:1])
  mean, variance = mean[0], np.exp(log_var[0])
  assert np.all(np.abs(np.log(variance)) > 1.0)  # exp(log_var) is far from sqrt of it
  np.testing.assert_array_less(np.abs(z.mean(0) - mean), 4 * np.sqrt(variance / n))
  np.testing.assert_array_less(np.abs(z.var(0) / variance - 1), 4 * math.sqrt(2 / n))
  correlation = np.corrcoef(z.T)[0, 1]
  assert abs(correlation) < 4 / math.sqrt(n)
  np.testing.assert_allclose(np.asarray(out, np.float64)[:64], _decode(trainer, state, z[:64]),
                             rtol=1e-5, atol=1e-6)
  # The evaluation sampler (IWAE, rate decomposition) draws from the same posterior.
  # (Through importance weights: their draws are the forward pass's, checked above.)
  keys = jax.random.split(jax.random.PRNGKey(1), n)
  zs = np.asarray(jax.vmap(lambda k: _forward(trainer, state, x[:1], k)[1][0])(keys),
                  np.float64)
  np.testing.assert_array_less(np.abs(zs.mean(0) - mean), 4 * np.sqrt(variance / n))
  np.testing.assert_array_less(np.abs(zs.var(0) / variance - 1), 4 * math.sqrt(2 / n))


# ----------------------------------------------------------------------------------
# Evaluation: the true ELBO (KL weight 1), with the sigma each metric should use.
# ----------------------------------------------------------------------------------


def _expected_eval(x, decoder_mean, variance, kl):
  """Per-example averages of the evaluation metrics for a decoder that ignores z."""
  rec = _per_example_sum(_gaussian_nll(x, decoder_mean, variance)).mean()
  discrete = _per_example_sum(_discretized_gaussian_nll(x, decoder_mean, math.sqrt(variance)))
  return {"rec": rec, "kl": kl, "nelbo": rec + kl, "nelbo_discrete": discrete.mean() + kl,
          "log_sigma": 0.5 * math.log(variance),
          "bpd": (rec + kl) / (NUM_PIXELS * math.log(2))}


def _check_eval(got, expected, num_examples):
  assert got["num_examples"] == num_examples
  for key, value in expected.items():
    np.testing.assert_allclose(got[key], value, rtol=2e-5, atol=1e-5, err_msg=key)


def test_beta_vae_is_evaluated_with_the_true_elbo_and_sigma_squared_beta():
  """beta weights the KL in training only; evaluation reports rec + KL with the
  Gaussian of variance beta it is equivalent to."""
  beta = 0.25
  trainer = _trainer("beta", beta=beta)
  post_mean, post_log_var = np.array([1.0, -0.5]), np.array([-1.0, 0.5])
  state = _edit_params(trainer.init_state(), _decoder_ignores_z)
  state = _edit_params(state, _constant_posterior(post_mean, post_log_var))
  images = _images(20, seed=3)  # 3 batches of 8, the last one padded
  got = evaluate.evaluate_elbo(trainer, state, images, batch_size=8)
  x = images.astype(np.float64) / 255.0
  decoder_mean = _sigmoid(_decode(trainer, state, np.zeros((1, 2))))
  kl = float(_kl(post_mean, post_log_var))
  _check_eval(got, _expected_eval(x, decoder_mean, beta, kl), 20)
  # ...while training weighs the (same) KL by beta.
  loss, _ = _training_loss_and_grads(trainer, state, images[:8], jax.random.PRNGKey(0))
  rec_train = _per_example_sum(_gaussian_nll(x[:8], decoder_mean, 1.0)).mean()
  np.testing.assert_allclose(loss, rec_train + beta * kl, rtol=2e-5)


def test_running_sigma_averages_the_batch_sigmas_and_every_metric_uses_it():
  """Optimal sigma: training folds each batch's sigma*^2 = MSE into a debiased running
  average; evaluation (continuous and 8-bit ELBO, effective beta) uses that average,
  not the sigma* of the test batch."""
  decay = 0.5
  # learning_rate 0 keeps the network fixed, so each step's MSE is known by hand.
  trainer = _trainer("optimal_sigma", sigma_ema_decay=decay, learning_rate=0.0)
  assert trainer is _trainer("optimal_sigma", **_GUARD_OPTIONS[False])  # one compile
  post_mean, post_log_var = np.array([0.3, 0.0]), np.array([-0.5, -1.0])
  state = _edit_params(trainer.init_state(), _decoder_ignores_z)
  state = _edit_params(state, _constant_posterior(post_mean, post_log_var))
  decoder_mean = _sigmoid(_decode(trainer, state, np.zeros((1, 2))))
  # Three training batches with very different errors.
  batches = [_images(8, seed=10), _images(8, seed=11, high=40), _images(8, seed=12, low=200)]
  for batch in batches:
    state, _ = trainer.train_on_batches(state, trainer.put_batches(batch[None]))
  mses = [np.mean((b / 255.0 - decoder_mean) ** 2) for b in batches]
  weights = [(1 - decay) * decay ** (len(mses) - 1 - t) for t in range(len(mses))]
  running = np.dot(weights, mses) / (1 - decay ** len(mses))
  assert int(state.step) == 3
  assert _running_variance_state(state)  # optimal sigma keeps state

  # Test images whose own sigma* is far from the running average.
  images = _images(12, seed=13, low=100, high=160)
  x = images.astype(np.float64) / 255.0
  assert abs(math.log(np.mean((x - decoder_mean) ** 2) / running)) > 1.0
  # What evaluation uses: the running sigma, soft-clipped from below at
  # decoder.log_sigma_min (low + softplus(log_sigma - low)), as every sigma is.
  log_sigma = 0.5 * math.log(running)
  used = math.exp(2 * (LOG_SIGMA_MIN + np.logaddexp(0.0, log_sigma - LOG_SIGMA_MIN)))
  got = evaluate.evaluate_elbo(trainer, state, images, batch_size=8)
  kl = float(_kl(post_mean, post_log_var))
  _check_eval(got, _expected_eval(x, decoder_mean, used, kl), 12)
  beta = evaluate.effective_beta(trainer, state)
  np.testing.assert_allclose(beta["effective_beta"], used, rtol=2e-5)
  np.testing.assert_allclose(beta["effective_beta_paper"], 2 * used, rtol=2e-5)


# ----------------------------------------------------------------------------------
# The non-finite guard: a finite loss with a non-finite gradient.
# ----------------------------------------------------------------------------------


def _poison(layers):
  """A huge activation into a zero output kernel: the forward pass (and the loss) stay
  finite, the output kernel's gradient (activation * error) overflows."""
  layers["decoder_last_upsample"]["bias"][:] = 3e38
  layers["output_conv"]["kernel"][:] = 0.0


# Stop mode shares its trainer with the running-sigma test (learning rate 0: the
# optimizer state and the running average still move on a finite step).
_GUARD_OPTIONS = {False: {"sigma_ema_decay": 0.5, "learning_rate": 0.0},
                  True: {"sigma_ema_decay": 0.5, "skip_nonfinite_updates": True}}


@pytest.mark.parametrize("skip", [False, True])
def test_a_finite_loss_with_a_nonfinite_gradient_changes_nothing(skip):
  trainer = _trainer("optimal_sigma", **_GUARD_OPTIONS[skip])
  state = trainer.init_state()
  good = trainer.put_batches(_images(8, seed=20)[None])
  state, _ = trainer.train_on_batches(state, good)  # a running average to protect
  healthy = state.params
  state = _edit_params(state, _poison)
  everything = lambda s: jax.device_get((s.params, s.opt_state, s.likelihood_state))
  before = everything(state)
  state, metrics = trainer.train_on_batches(state, good)
  assert np.isfinite(float(metrics["loss"])) and not np.isfinite(float(metrics["grad_norm"]))
  after = everything(state)
  for what, b, a in zip(("params", "opt_state", "decoder_state"), before, after):
    for leaf_b, leaf_a in zip(jax.tree.leaves(b), jax.tree.leaves(a)):
      np.testing.assert_array_equal(leaf_a, leaf_b, err_msg=what)
  assert int(state.num_skipped) == 1 and int(state.step) == 2
  nonfinite = jax.device_get(state.nonfinite)
  assert int(nonfinite["step"]) == 1
  assert np.isfinite(nonfinite["loss"]) and not np.isfinite(nonfinite["grad_norm"])
  # With healthy parameters again, skip mode trains on; stop mode stays frozen.
  state = state.replace(params=healthy)
  frozen = everything(state)
  state, _ = trainer.train_on_batches(state, good)
  moved = [[not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(part_b),
                                                       jax.tree.leaves(part_a))]
           for part_b, part_a in zip(frozen, everything(state))]
  assert any(sum(moved, [])) == skip
  assert all(moved[2]) == skip  # the running average


# ----------------------------------------------------------------------------------
# The importance-weighted bound.
# ----------------------------------------------------------------------------------


def test_iwae_is_exact_for_every_k_when_the_posterior_is_exact():
  """A decoder that ignores z and an encoder that outputs the prior: q(z|x) = p(z|x),
  so every importance weight is p(x) and -L_K = -log p(x) for every K."""
  trainer = _trainer("gaussian")
  state = _edit_params(trainer.init_state(), _decoder_ignores_z)
  state = _edit_params(state, _constant_posterior(0.0, 0.0))
  images = _images(10, seed=30)
  x = images.astype(np.float64) / 255.0
  decoder_mean = _sigmoid(_decode(trainer, state, np.zeros((1, 2))))
  exact = _per_example_sum(_gaussian_nll(x, decoder_mean, 1.0))
  for k in (1, 3, 20):
    got = evaluate.iwae_nll(trainer, state, images, num_samples=k, batch_size=8,
                            rng=jax.random.PRNGKey(k), chunk_size=8)
    np.testing.assert_allclose(got, exact, rtol=1e-5, err_msg=f"K={k}")


def test_iwae_bound_rises_with_k_towards_log_px_from_quadrature():
  """A 1-D latent: log p(x) = log int p(x|z) p(z) dz by quadrature on a fine grid, and
  the ELBO = E_q log p(x|z) - KL the same way. K = 1 is the ELBO, -L_K falls with K and
  stays above -log p(x), and is close to it at K = 256."""
  trainer = _trainer("beta", beta=0.02, latent_dim=1)
  def edit(layers):  # a decoder that depends strongly on z
    layers["decoder_dense"]["kernel"][:] *= 10.0
  state = _edit_params(trainer.init_state(), edit)
  image = _images(1, seed=31)
  x = image.astype(np.float64) / 255.0
  grid = np.linspace(-9, 9, 3601)[:, None]
  log_lik = -_per_example_sum(_gaussian_nll(x, _sigmoid(_decode(trainer, state, grid)),
                                            0.02))
  dz = grid[1, 0] - grid[0, 0]
  log_px = special.logsumexp(log_lik + stats.norm.logpdf(grid[:, 0])) + math.log(dz)
  mean, log_var = _encode(trainer, state, x)
  q = stats.norm.pdf(grid[:, 0], mean[0, 0], math.exp(0.5 * log_var[0, 0]))
  elbo = np.sum(q * log_lik) * dz - float(_kl(mean, log_var)[0])
  assert -elbo - -log_px > 0.3  # an imperfect encoder: the bounds have room to move

  n = 512  # independent estimates (copies of the image)
  copies = np.repeat(image, n, axis=0)
  estimates = {}
  for k in (1, 8, 256):
    nll = evaluate.iwae_nll(trainer, state, copies, num_samples=k, batch_size=n,
                            rng=jax.random.PRNGKey(k), chunk_size=64)
    estimates[k] = (nll.mean(), nll.std() / math.sqrt(n))
  (m1, s1), (m8, s8), (m256, s256) = estimates[1], estimates[8], estimates[256]
  assert abs(m1 - -elbo) < 4 * s1 + 1e-3, (m1, -elbo, s1)
  assert m1 > m8 + 4 * math.hypot(s1, s8), estimates
  assert m8 > m256 - 4 * math.hypot(s8, s256), estimates
  for k, (m, s) in estimates.items():
    assert m > -log_px - 4 * s - 1e-3, (k, m, -log_px)
  assert m256 - -log_px < 0.1 * (-elbo - -log_px) + 4 * s256, (m256, -log_px, -elbo)


# ----------------------------------------------------------------------------------
# Rate decomposition and FID through the model, with known answers.
# ----------------------------------------------------------------------------------


def test_rate_decomposition_of_two_separated_clusters():
  """Black and white images, posteriors with std 0.0025 whose means differ by far more:
  half the examples share each posterior, so I(x; z) = log 2 and the aggregate
  posterior is the two-component mixture, whose KL to the prior is the average
  component KL minus log 2 (up to exp(-separation^2 / 8))."""
  trainer = _trainer("gaussian")
  def edit(layers):
    layers["mean_head"]["kernel"][:] *= 50.0
    layers["log_var_head"]["kernel"][:] = 0.0
    layers["log_var_head"]["bias"][:] = -12.0
  state = _edit_params(trainer.init_state(), edit)
  n = 200
  images = np.zeros((n,) + IMAGE_SHAPE, np.uint8)
  images[n // 2:] = 255
  mean, log_var = _encode(trainer, state, images / 255.0)
  std = math.exp(-6.0)
  assert np.linalg.norm(mean[0] - mean[-1]) > 100 * std
  r = evaluate.rate_decomposition(trainer, state, images, jax.random.PRNGKey(0), batch_size=64)
  component_kl = _kl(mean[[0, -1]], log_var[[0, -1]])
  np.testing.assert_allclose(r["average_kl"], component_kl.mean(), rtol=1e-5)
  np.testing.assert_allclose(r["mutual_information"], math.log(2), atol=1e-3)
  # MC error: log q(z_i | x_i) varies as -chi^2_D / 2 (variance D / 2).
  tol = 4 * math.sqrt(mean.shape[1] / 2 / n)
  np.testing.assert_allclose(r["marginal_kl"], component_kl.mean() - math.log(2), atol=tol)
  np.testing.assert_allclose(r["log_n"], math.log(n), rtol=1e-6)


@pytest.mark.filterwarnings("ignore:Matrix is singular")
def test_fid_of_a_model_whose_samples_are_all_one_image():
  """Prior samples of a decoder that ignores z are one image: their feature covariance
  is 0, so FID = |f(image) - mean f(test)|^2 + Tr Cov f(test)."""
  trainer = _trainer("gaussian")
  state = _edit_params(trainer.init_state(), _decoder_ignores_z)
  test_images = _images(40, seed=40)
  feature_fn = fid.fid_feature_fn("random")
  sample = _sigmoid(_decode(trainer, state, np.zeros((1, 2)))).astype(np.float32)
  f_sample = np.asarray(feature_fn(np.repeat(sample, 8, axis=0)), np.float64)[0]
  f_test = np.asarray(feature_fn(test_images.astype(np.float32) / 255.0), np.float64)
  expected = (np.sum((f_sample - f_test.mean(0)) ** 2)
              + np.trace(np.cov(f_test, rowvar=False)))
  got = evaluate.fid_score(trainer, state, test_images, 40, "random", jax.random.PRNGKey(0),
                           batch_size=16)
  np.testing.assert_allclose(got, expected, rtol=1e-3)


# --- free bits, by hand --------------------------------------------------------------


class _KLModel:
  """A stand-in model whose latent groups' KL per example are its parameters
  (params["kl"]: [G, B]; each group one latent dimension) and whose decoder output is
  a fixed 0.5: the loss's KL term and its gradient are then known by hand."""

  def apply(self, variables, x, rng, train=False):
    from sigma_vae_jax.models.base import LatentGroup, ModelOutput
    kl = variables["params"]["kl"]
    latents = {f"z{g + 1}": LatentGroup(kl=kl[g][:, None], log_q=kl[g][:, None],
                                        log_p=jnp.zeros_like(kl[g][:, None]))
               for g in range(kl.shape[0])}
    return ModelOutput(decoder_outputs=jnp.full(x.shape, 0.5), target=x, latents=latents)


# 3 groups x 4 examples around a floor of 2 nats: z1 all above, z2 all below (its
# batch mean too), z3 mixed with a batch mean above the floor (2.75), and one entry
# below zero (a one-sample log q - log p can be).
_FLOOR = 2.0
_KL = np.array([[3.0, 2.5, 4.0, 5.0],
                [0.5, 1.0, -0.3, 1.5],
                [1.0, 6.0, 0.5, 3.5]], np.float32)


def _free_bits_by_hand(rule, kl=_KL, floor=_FLOOR):
  """(KL term of the loss, its gradient [G, B]) in numpy."""
  b = kl.shape[1]
  if rule == "per_example":  # mean_b sum_g max(KL_gb, floor)
    return np.maximum(kl, floor).sum(0).mean(), (kl > floor) / b
  means = kl.mean(1)  # batch_mean: sum_g max(mean_b KL_gb, floor)
  return np.maximum(means, floor).sum(), np.repeat((means > floor)[:, None], b, 1) / b


@pytest.mark.parametrize("rule", ["per_example", "batch_mean"])
def test_free_bits_loss_and_gradient_match_a_hand_computation(rule):
  from sigma_vae_jax import likelihoods
  config = default_config.get_config().decoder
  config.name = "gaussian"  # rec does not depend on the KL parameters
  likelihood = likelihoods.get_likelihood(config)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 2, 2, 1)), jnp.float32)
  params = {"model": {"kl": jnp.asarray(_KL)}, "likelihood": likelihood.init_params()}
  state = likelihood.init_state((2, 2, 1))

  def loss(p):
    return train_step.loss_fn(p, state, x, jax.random.PRNGKey(0), model=_KLModel(),
                              likelihood=likelihood, free_bits=_FLOOR, free_bits_rule=rule)
  (value, (metrics, _)), grads = jax.value_and_grad(loss, has_aux=True)(params)
  expected_kl, expected_grad = _free_bits_by_hand(rule)
  np.testing.assert_allclose(float(value) - float(metrics["rec"]), expected_kl, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(grads["model"]["kl"]), expected_grad, atol=1e-7)
  # The reported KL is the true one, without the floor.
  np.testing.assert_allclose(float(metrics["kl"]), _KL.sum(0).mean(), rtol=1e-6)
  # A group (per_example: an example's group) below the floor gets no KL gradient;
  # one above gets the full 1/B.
  below = (_KL <= _FLOOR) if rule == "per_example" else (_KL.mean(1, keepdims=True) <= _FLOOR)
  assert np.all(np.asarray(grads["model"]["kl"])[np.broadcast_to(below, _KL.shape)] == 0)
  # The rules differ on these numbers (and from a floor on the total KL).
  other = "batch_mean" if rule == "per_example" else "per_example"
  assert abs(expected_kl - _free_bits_by_hand(other)[0]) > 0.5
  assert abs(expected_kl - max(_KL.sum(0).mean(), _FLOOR)) > 0.5


@pytest.mark.parametrize("field, value", [("free_bits_rule", "total"),
                                          ("learning_rate_decay", 1.5),
                                          ("learning_rate_floor", -1.0)])
def test_free_bits_and_learning_rate_decay_fields_are_validated(field, value):
  from sigma_vae_jax import configuration
  config = default_config.get_config()
  config[field] = value
  with pytest.raises(configuration.ConfigError, match=field):
    configuration.validate_config(config, num_devices=1,
                                  dataset_names=(config.dataset.name,))


def test_learning_rate_decays_per_update_to_its_floor():
  """As the reference's LowerBoundedExponentialLR(0.999999, 1e-4), stepped after each
  update: update t uses max(lr * 0.999999 ** t, 1e-4)."""
  config = default_config.get_config()
  config.learning_rate, config.learning_rate_decay, config.learning_rate_floor = (
      2e-3, 0.999999, 1e-4)
  schedule = train_step.learning_rate_schedule(config)
  for t in (0, 1, 30_000, 2_000_000, 3_000_000, 10_000_000):
    np.testing.assert_allclose(float(schedule(jnp.asarray(t))), max(2e-3 * 0.999999 ** t, 1e-4),
                               rtol=1e-5)
  # Through the optimizer: SGD's first two steps move a parameter by lr_0 and lr_1.
  config.optimizer, config.learning_rate_decay = "sgd", 0.5
  tx = train_step.create_optimizer(config)
  params = jnp.zeros(())
  opt_state = tx.init(params)
  steps = []
  for _ in range(3):
    updates, opt_state = tx.update(jnp.ones(()), opt_state, params)
    steps.append(float(updates))
  np.testing.assert_allclose(steps, [-2e-3, -1e-3, -5e-4], rtol=1e-6)
